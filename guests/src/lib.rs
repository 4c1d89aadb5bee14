//! kvmconf's guest model: the case and result formats, the guest-physical layout the harness builds,
//! and guest-code assembly helpers.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod asm;
pub mod case;
pub mod r#gen;
pub mod interp;
pub mod layout;
pub mod num;
pub mod result;

pub use case::{Case, CaseError, Located, Mode};
pub use layout::{CpuState, GuestModel, Layout, Segment};
pub use num::{Hex, HexBytes};
pub use result::{CaseResult, Event, Exit};

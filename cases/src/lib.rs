//! kvmconf's conformance catalogue: the registry of checks, the known deviations of specific
//! hosts, and the runners that nextest and `kvmconf run` share.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod catalogue;
pub mod corpus;
pub mod deviations;
pub mod differential;
pub mod fuzz;
pub mod oracle;
pub mod registry;
pub mod runner;
pub mod snapshot;

pub use registry::{Area, Check, Fail, Failure, Outcome, Part};

//! kvmconf's harness: throwaway VMs in real16, prot32 and long64 (CPL0 and CPL3), the run loop and
//! exit trace, the VM pool, state capture, and the requirement checks tests use.
//!
//! ```no_run
//! use kvmconf_guests::{Case, Exit, Mode};
//! use kvmconf_harness::{Host, pool::run_fresh};
//!
//! // mov al, 'H'; out 0xf1, al; hlt — loaded at 0x1000 in real mode.
//! let case = Case::new("hello", Mode::Real16, 0x1000, vec![0xb0, 0x48, 0xe6, 0xf1, 0xf4]);
//! let host = Host::open().expect("/dev/kvm");
//! let result = run_fresh(&host, &case).expect("KVM accepted the VM");
//! assert_eq!(result.exit, Exit::Hlt);
//! assert_eq!(result.trace.len(), 1);
//! ```
#![deny(missing_docs)]

pub mod abi;
pub mod affinity;
pub mod baseline;
pub mod exit;
pub mod fingerprint;
pub mod ioctl;
pub mod kcov;
pub mod kvm;
pub mod memory;
pub mod pool;
pub mod rlimit;
pub mod run;
pub mod skip;
pub mod state;
pub mod touch;
pub mod vcpu;
pub mod vm;
pub mod watchdog;

pub use ioctl::{Errno, IoctlFailure};
pub use kvm::{Host, KvmError, MemslotError, Slot, SystemError, TestVcpu, TestVm};
pub use pool::{Pool, run_fresh};
pub use vcpu::{Vcpu, VcpuError};
pub use vm::{Vm, VmError};

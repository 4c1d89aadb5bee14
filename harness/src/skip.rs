//! Requirement checks for tests: skip loudly when `/dev/kvm` or a capability is truly absent, and
//! fail instead of skipping in CI (`CI=true`) when `/dev/kvm` exists.

use crate::kvm::{Host, KvmError};

/// Whether this run is in CI.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// What a requirement check concluded.
#[derive(Debug)]
pub enum Requirement {
    /// Go ahead.
    Met(Host),
    /// Skip with this reason.
    Skip(String),
}

/// Opens `/dev/kvm` for a test: `Met` when it works, `Skip` when it is absent (ENOENT/ENODEV/
/// EACCES), a panic for any other failure, and a panic in CI when the node exists but a skip was due.
#[track_caller]
pub fn require_kvm() -> Requirement {
    match Host::open() {
        Ok(h) => Requirement::Met(h),
        Err(KvmError::NoKvm(e)) => {
            let exists = std::path::Path::new(&crate::kvm::kvm_path()).exists();
            let reason = format!("/dev/kvm unavailable: {e}");
            if in_ci() && exists {
                panic!("CI=true and /dev/kvm exists, but a KVM test would skip: {reason}");
            }
            Requirement::Skip(reason)
        }
        Err(e) => panic!("opening KVM failed (not a missing requirement): {e}"),
    }
}

/// Prints the selftests-style skip line.
pub fn print_skip(what: &str, reason: &str) {
    eprintln!("SKIP: requirement not met: {reason} [{what}]");
    println!("SKIP: requirement not met: {reason} [{what}]");
}

/// Opens KVM for a test or returns from it after printing a skip line.
#[macro_export]
macro_rules! host_or_skip {
    () => {
        match $crate::skip::require_kvm() {
            $crate::skip::Requirement::Met(h) => h,
            $crate::skip::Requirement::Skip(reason) => {
                $crate::skip::print_skip(module_path!(), &reason);
                return;
            }
        }
    };
}

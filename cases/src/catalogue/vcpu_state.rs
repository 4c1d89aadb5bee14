//! Checks of the vcpu_state area (see the module's CHECKS list for what each covers).

use crate::registry::Check;

/// The vcpu_state checks.
pub const CHECKS: &[Check] = &[];

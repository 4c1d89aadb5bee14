//! Checks of the vm area (see the module's CHECKS list for what each covers).

use crate::registry::Check;

/// The vm checks.
pub const CHECKS: &[Check] = &[];

//! Checks of the system area (see the module's CHECKS list for what each covers).

use crate::registry::Check;

/// The system checks.
pub const CHECKS: &[Check] = &[];

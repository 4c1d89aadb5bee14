//! Checks of the run area (see the module's CHECKS list for what each covers).

use crate::registry::Check;

/// The run checks.
pub const CHECKS: &[Check] = &[];

//! Every check, by area; `all()` is the single list both runners use.

use crate::registry::Check;

pub mod fixture;
pub mod harness;
pub mod run;
pub mod system;
pub mod vcpu_state;
pub mod vm;

/// All checks in report order.
pub fn all() -> Vec<&'static Check> {
    let mut v: Vec<&'static Check> = Vec::new();
    v.extend(harness::CHECKS.iter());
    v.extend(system::CHECKS.iter());
    v.extend(vm::CHECKS.iter());
    v.extend(vcpu_state::CHECKS.iter());
    v.extend(run::CHECKS.iter());
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_unique_and_prefixed_by_their_area() {
        let mut seen = std::collections::HashSet::new();
        for c in super::all() {
            assert!(seen.insert(c.id), "duplicate check id {}", c.id);
            assert!(
                c.id.starts_with(&format!("{}.", c.area.name())),
                "{} is not in area {}",
                c.id,
                c.area.name()
            );
            assert!(!c.doc.trim().is_empty(), "{} cites no documentation", c.id);
        }
    }
}

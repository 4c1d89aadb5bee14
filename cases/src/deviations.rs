//! Known deviations of specific hosts (cases/deviations.toml) and the verdict for a check's outcome.

use crate::registry::{Fail, Outcome, glob};
use kvmconf_harness::fingerprint::Fingerprint;
use serde::Deserialize;

/// The deviations file, compiled in.
pub const FILE: &str = include_str!("../deviations.toml");

/// One known deviation of one kind of host.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Deviation {
    /// Stable id.
    pub id: String,
    /// The check id (or glob) that shows it.
    pub check: String,
    /// Vendor KVM module that must be loaded (kvm_intel, kvm_amd, kvm_pvm).
    pub module: String,
    /// Glob on the kernel release.
    pub kernel: String,
    /// A substring the failure message must contain for the deviation to apply.
    pub expect: String,
    /// What the documentation says.
    pub documented: String,
    /// What the host does.
    pub observed: String,
    /// A case file or command that reproduces it.
    pub reproducer: String,
    /// Where and when it was seen.
    pub seen: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviationFile {
    #[serde(default)]
    deviation: Vec<Deviation>,
}

/// Parses a deviations file.
pub fn parse(text: &str) -> Result<Vec<Deviation>, String> {
    toml::from_str::<DeviationFile>(text)
        .map(|f| f.deviation)
        .map_err(|e| format!("cases/deviations.toml: {e}"))
}

/// The compiled-in deviations.
pub fn known() -> Vec<Deviation> {
    parse(FILE).expect("cases/deviations.toml parses (checked by a unit test)")
}

impl Deviation {
    /// Whether this deviation is about `check` on the host `fp`.
    pub fn applies(&self, check: &str, fp: &Fingerprint) -> bool {
        glob(&self.check, check) && self.on_host(fp)
    }

    /// Whether this deviation is about the host `fp`: its vendor module is loaded and its kernel
    /// matches.
    pub fn on_host(&self, fp: &Fingerprint) -> bool {
        fp.modules.contains_key(&self.module) && glob(&self.kernel, &fp.kernel)
    }
}

/// The judged result of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Behaved as documented.
    Pass,
    /// Did not, and no known deviation explains it.
    Fail(String),
    /// Did not, as a known deviation of this host says.
    KnownDeviation {
        /// The deviation id.
        id: String,
        /// The failure message.
        message: String,
    },
    /// A known deviation of this host no longer shows: the check passed.
    Fixed {
        /// The deviation id.
        id: String,
    },
    /// A documented-optional requirement is absent.
    Skip(String),
}

impl Verdict {
    /// The result word in reports.
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail(_) => "fail",
            Verdict::KnownDeviation { .. } => "known deviation",
            Verdict::Fixed { .. } => "fixed",
            Verdict::Skip(_) => "skip",
        }
    }

    /// Whether this counts as an unexpected failure.
    pub fn is_failure(&self) -> bool {
        matches!(self, Verdict::Fail(_))
    }
}

/// Judges a check's outcome against the known deviations for this host.
pub fn judge(check: &str, outcome: &Outcome, devs: &[Deviation], fp: &Fingerprint) -> Verdict {
    let applicable: Vec<&Deviation> = devs.iter().filter(|d| d.applies(check, fp)).collect();
    match outcome {
        Ok(()) => match applicable.first() {
            Some(d) => Verdict::Fixed { id: d.id.clone() },
            None => Verdict::Pass,
        },
        Err(Fail::Skip(r)) => Verdict::Skip(r.clone()),
        Err(Fail::Failed(f)) => match applicable.iter().find(|d| f.text.contains(&d.expect)) {
            Some(d) => Verdict::KnownDeviation {
                id: d.id.clone(),
                message: f.text.clone(),
            },
            None => Verdict::Fail(match applicable.first() {
                Some(d) => format!(
                    "{f}\n(known deviation {} applies to this host but expects a failure containing {:?})",
                    d.id, d.expect
                ),
                None => f.text.clone(),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(module: &str) -> Fingerprint {
        let mut f = Fingerprint {
            kernel: "6.18.44-fc".into(),
            ..Fingerprint::default()
        };
        f.modules.insert(module.into(), Default::default());
        f
    }

    fn dev() -> Deviation {
        Deviation {
            id: "d1".into(),
            check: "harness.x_*".into(),
            module: "kvm_pvm".into(),
            kernel: "6.18.*".into(),
            expect: "exit kind".into(),
            documented: String::new(),
            observed: String::new(),
            reproducer: String::new(),
            seen: String::new(),
        }
    }

    #[test]
    fn judge_distinguishes_pass_fail_known_fixed_and_wrong_reason() {
        let d = [dev()];
        let fail = |m: &str| Err(Fail::failed(m));
        assert_eq!(
            judge("harness.x_a", &Ok(()), &d, &fp("kvm_intel")),
            Verdict::Pass
        );
        assert_eq!(
            judge("harness.x_a", &Ok(()), &d, &fp("kvm_pvm")),
            Verdict::Fixed { id: "d1".into() }
        );
        assert!(matches!(
            judge(
                "harness.x_a",
                &fail("exit kind: wanted hlt"),
                &d,
                &fp("kvm_pvm")
            ),
            Verdict::KnownDeviation { .. }
        ));
        // Strict elsewhere.
        assert!(
            judge(
                "harness.x_a",
                &fail("exit kind: wanted hlt"),
                &d,
                &fp("kvm_intel")
            )
            .is_failure()
        );
        // A failure for another reason is still a failure.
        assert!(judge("harness.x_a", &fail("rax: wanted 1"), &d, &fp("kvm_pvm")).is_failure());
        assert_eq!(
            judge(
                "harness.x_a",
                &Err(Fail::Skip("no cap".into())),
                &d,
                &fp("kvm_pvm")
            ),
            Verdict::Skip("no cap".into())
        );
    }

    #[test]
    fn compiled_in_file_parses_and_every_entry_is_complete() {
        let all = known();
        let mut ids = std::collections::HashSet::new();
        for d in &all {
            assert!(ids.insert(d.id.clone()), "duplicate deviation id {}", d.id);
            for (field, v) in [
                ("check", &d.check),
                ("module", &d.module),
                ("expect", &d.expect),
                ("documented", &d.documented),
                ("observed", &d.observed),
                ("reproducer", &d.reproducer),
                ("seen", &d.seen),
            ] {
                assert!(!v.trim().is_empty(), "deviation {}: empty {field}", d.id);
            }
        }
    }
}

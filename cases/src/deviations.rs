//! Known deviations of specific hosts (cases/deviations.toml): which hosts an entry applies to
//! (from the host fingerprint), the typed conditions a check's failure or an oracle's mismatch
//! must meet to be that deviation, and the verdict for a check's outcome.

use crate::oracle::Symptom;
use crate::registry::{Fail, Failure, Outcome, Part, glob};
use kvmconf_harness::fingerprint::Fingerprint;
use serde::Deserialize;

/// The deviations file, compiled in.
pub const FILE: &str = include_str!("../deviations.toml");

/// One known deviation of one kind of host: a behaviour, whichever check, target or driver meets
/// it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Deviation {
    /// Stable id.
    pub id: String,
    /// Vendor KVM module that must be loaded (kvm_intel, kvm_amd, kvm_pvm).
    pub module: String,
    /// Glob on the kernel release.
    pub kernel: String,
    /// What the documentation says.
    pub documented: String,
    /// What the host does.
    pub observed: String,
    /// Case files that reproduce it (paths from the source tree's root, `cases/corpus/…`).
    #[serde(default)]
    pub cases: Vec<String>,
    /// The nextest test that reproduces it: `<test binary>:<name filter>` (`vm:dirty_log_cpl3_`).
    #[serde(default)]
    pub test: Option<String>,
    /// Steps beyond the case or test, for the report.
    #[serde(default)]
    pub steps: Option<String>,
    /// Where and when it was seen.
    pub seen: String,
    /// The conditions that show it: a failure or mismatch that meets any one is this deviation.
    pub when: Vec<When>,
}

/// One condition of a deviation, on a catalogue check's failure (`check` set: `field`, `wanted`,
/// `got` are globs on a [`Part`] of the failure) or on an oracle's mismatch (`check` unset: the
/// other fields are conditions on a [`Symptom`]). A field left out is no condition. Globs on
/// values compare with white space removed, so a pretty-printed value can be written on one line.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct When {
    /// Glob on the check id.
    pub check: Option<String>,
    /// Glob on the differing field.
    pub field: Option<String>,
    /// Glob on what was wanted.
    pub wanted: Option<String>,
    /// Glob on what came.
    pub got: Option<String>,
    /// Glob on the culprit instruction's mnemonic (iced's name: `Lzcnt`, `Ins*`).
    pub class: Option<String>,
    /// Whether the culprit is an instruction KVM's emulator refused.
    pub refused: Option<bool>,
    /// Whether that refused instruction is listed in `cases/emulator_refuses.toml`.
    pub listed: Option<bool>,
    /// The modes it shows in (`real16`, `prot32`, `long64`).
    pub modes: Option<Vec<String>>,
    /// The CPL it shows at.
    pub cpl: Option<u8>,
    /// The case's IOPL.
    pub iopl: Option<u8>,
    /// How KVM's run ends: an exit kind, or `exception:<vector>`.
    pub kvm_exit: Option<String>,
    /// How the reference's run ends, likewise.
    pub reference_exit: Option<String>,
    /// A model of KVM's behaviour that explains the whole mismatch (see [`Symptom::models`]).
    pub model: Option<String>,
}

fn glob_value(pattern: &str, value: &str) -> bool {
    let squash = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    glob(&squash(pattern), &squash(value))
}

impl When {
    /// Whether this is a condition on a catalogue check (else on an oracle mismatch).
    pub fn is_check(&self) -> bool {
        self.check.is_some()
    }

    /// Whether one part of a failure meets the field conditions.
    fn part_matches(&self, p: &Part) -> bool {
        self.field.as_ref().is_none_or(|f| glob_value(f, &p.field))
            && self
                .wanted
                .as_ref()
                .is_none_or(|w| glob_value(w, &p.wanted))
            && self.got.as_ref().is_none_or(|g| glob_value(g, &p.got))
    }

    /// Whether the failure `f` of the check `check` meets this condition: the check matches and
    /// some differing field meets the field conditions.
    pub fn matches_failure(&self, check: &str, f: &Failure) -> bool {
        self.check.as_ref().is_some_and(|c| glob(c, check))
            && f.parts.iter().any(|p| self.part_matches(p))
    }

    /// Whether the oracle mismatch `s` meets this condition.
    pub fn matches_symptom(&self, s: &Symptom) -> bool {
        use crate::oracle::Culprit;
        if self.is_check() {
            return false;
        }
        let refused = matches!(s.culprit, Culprit::Refused { .. });
        if matches!(s.culprit, Culprit::Faulted { .. }) && self.kvm_exit.is_none() {
            return false;
        }
        let listed = matches!(s.culprit, Culprit::Refused { listed: true, .. });
        self.class.as_ref().is_none_or(|c| {
            s.culprit
                .mnemonic()
                .is_some_and(|m| glob(c, &format!("{m:?}")))
        }) && self.refused.is_none_or(|r| r == refused)
            && self.listed.is_none_or(|l| l == listed)
            && self
                .modes
                .as_ref()
                .is_none_or(|ms| ms.iter().any(|m| m == s.mode.name()))
            && self.cpl.is_none_or(|c| c == s.cpl)
            && self.iopl.is_none_or(|i| Some(i) == s.iopl)
            && self.kvm_exit.as_ref().is_none_or(|e| s.kvm_exit.matches(e))
            && self
                .reference_exit
                .as_ref()
                .is_none_or(|e| s.reference_exit.matches(e))
            && self.model.as_ref().is_none_or(|m| s.models.contains(m))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviationFile {
    #[serde(default)]
    deviation: Vec<Deviation>,
}

/// Parses a deviations file: every entry needs at least one condition, a check condition needs a
/// field condition, and an oracle condition at least one of `class`, `refused`, `kvm_exit` or
/// `model` (so that no entry explains every mismatch).
pub fn parse(text: &str) -> Result<Vec<Deviation>, String> {
    let devs = toml::from_str::<DeviationFile>(text)
        .map(|f| f.deviation)
        .map_err(|e| format!("cases/deviations.toml: {e}"))?;
    for d in &devs {
        if d.when.is_empty() {
            return Err(format!(
                "cases/deviations.toml: {}: no [[deviation.when]]",
                d.id
            ));
        }
        for w in &d.when {
            let ok = if w.is_check() {
                w.field.is_some()
            } else {
                w.class.is_some()
                    || w.refused.is_some()
                    || w.kvm_exit.is_some()
                    || w.model.is_some()
            };
            if !ok {
                return Err(format!(
                    "cases/deviations.toml: {}: a `when` with `check` needs `field`; one without \
                     needs `class`, `refused`, `kvm_exit` or `model`",
                    d.id
                ));
            }
        }
    }
    Ok(devs)
}

/// The compiled-in deviations.
pub fn known() -> Vec<Deviation> {
    parse(FILE).expect("cases/deviations.toml parses (checked by a unit test)")
}

/// The compiled-in deviations that apply to the host `fp` (see [`Deviation::on_host`]): the one
/// place that decides which entries a host has.
pub fn for_host(fp: &Fingerprint) -> Vec<Deviation> {
    known().into_iter().filter(|d| d.on_host(fp)).collect()
}

/// The deviations of the host this process runs on, from its fingerprint (read once).
pub fn this_host() -> &'static [Deviation] {
    static DEVS: std::sync::OnceLock<Vec<Deviation>> = std::sync::OnceLock::new();
    DEVS.get_or_init(|| for_host(&kvmconf_harness::fingerprint::read(None)))
}

/// Whether the deviation `id` applies to the host this process runs on.
pub fn host_has(id: &str) -> bool {
    this_host().iter().any(|d| d.id == id)
}

/// The first of `devs` on the host `fp` with a condition the oracle mismatch `s` meets.
pub fn explain<'a>(s: &Symptom, devs: &'a [Deviation], fp: &Fingerprint) -> Option<&'a Deviation> {
    devs.iter().find(|d| d.on_host(fp) && d.shows(s))
}

/// The first deviation of the host this process runs on ([`this_host`]) with a condition the
/// oracle mismatch `s` meets.
pub fn explain_here(s: &Symptom) -> Option<&'static Deviation> {
    this_host().iter().find(|d| d.shows(s))
}

impl Deviation {
    /// Whether one of its conditions matches the oracle mismatch `s` (whatever the host).
    pub fn shows(&self, s: &Symptom) -> bool {
        self.when.iter().any(|w| w.matches_symptom(s))
    }

    /// Whether this deviation is about `check` (a condition names it) on the host `fp`.
    pub fn applies(&self, check: &str, fp: &Fingerprint) -> bool {
        self.on_host(fp)
            && self
                .when
                .iter()
                .any(|w| w.check.as_ref().is_some_and(|c| glob(c, check)))
    }

    /// Whether this deviation is about the host `fp`: its vendor module is loaded and its kernel
    /// matches.
    pub fn on_host(&self, fp: &Fingerprint) -> bool {
        fp.modules.contains_key(&self.module) && glob(&self.kernel, &fp.kernel)
    }

    /// Whether an oracle (not a catalogue check) can show it.
    pub fn is_oracle(&self) -> bool {
        self.when.iter().any(|w| !w.is_check())
    }

    /// The commands that reproduce it, for the report: `kvmconf exec` of each case (with
    /// `--oracle both` for an oracle deviation), the nextest command of its test, then its steps.
    pub fn reproducer(&self) -> String {
        let oracle = if self.is_oracle() {
            "--oracle both "
        } else {
            ""
        };
        let mut parts: Vec<String> = self
            .cases
            .iter()
            .map(|c| format!("kvmconf exec {oracle}{c}"))
            .collect();
        if let Some((bin, filter)) = self.test.as_ref().and_then(|t| t.split_once(':')) {
            parts.push(format!(
                "cargo nextest run -p kvmconf-cases --test {bin} -E 'test({filter})'"
            ));
        }
        if let Some(s) = &self.steps {
            parts.push(format!("({s})"));
        }
        parts.join("; ")
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

/// Judges a check's outcome against the known deviations for this host: a failure is a known
/// deviation only when one of an applicable entry's conditions matches its typed parts.
pub fn judge(check: &str, outcome: &Outcome, devs: &[Deviation], fp: &Fingerprint) -> Verdict {
    let applicable: Vec<&Deviation> = devs.iter().filter(|d| d.applies(check, fp)).collect();
    match outcome {
        Ok(()) => match applicable.first() {
            Some(d) => Verdict::Fixed { id: d.id.clone() },
            None => Verdict::Pass,
        },
        Err(Fail::Skip(r)) => Verdict::Skip(r.clone()),
        Err(Fail::Failed(f)) => match applicable
            .iter()
            .find(|d| d.when.iter().any(|w| w.matches_failure(check, f)))
        {
            Some(d) => Verdict::KnownDeviation {
                id: d.id.clone(),
                message: f.text.clone(),
            },
            None => Verdict::Fail(match applicable.first() {
                Some(d) => format!(
                    "{f}\n(known deviation {} applies to this host but expects another failure: {})",
                    d.id,
                    d.when
                        .iter()
                        .filter(|w| w.is_check())
                        .map(describe_when)
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
                None => f.text.clone(),
            }),
        },
    }
}

/// A check condition in words, for the report.
fn describe_when(w: &When) -> String {
    let mut s = format!("field {:?}", w.field.as_deref().unwrap_or("*"));
    if let Some(v) = &w.wanted {
        s.push_str(&format!(" wanted {v:?}"));
    }
    if let Some(v) = &w.got {
        s.push_str(&format!(" got {v:?}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::{Culprit, ExitSig};
    use iced_x86::Mnemonic;
    use kvmconf_guests::case::Mode;

    fn fp(module: &str) -> Fingerprint {
        let mut f = Fingerprint {
            kernel: "6.18.44-fc".into(),
            ..Fingerprint::default()
        };
        f.modules.insert(module.into(), Default::default());
        f
    }

    fn dev(when: Vec<When>) -> Deviation {
        Deviation {
            id: "d1".into(),
            module: "kvm_pvm".into(),
            kernel: "6.18.*".into(),
            documented: String::new(),
            observed: String::new(),
            cases: vec![],
            test: None,
            steps: None,
            seen: String::new(),
            when,
        }
    }

    fn exit_hlt() -> When {
        When {
            check: Some("harness.x_*".into()),
            field: Some("exit".into()),
            wanted: Some("Hlt".into()),
            got: Some("Exception*".into()),
            ..When::default()
        }
    }

    #[test]
    fn judge_distinguishes_pass_fail_known_fixed_and_wrong_reason() {
        let d = [dev(vec![exit_hlt()])];
        let fail = |field: &str, wanted: &str, got: &str| Err(Fail::field(field, wanted, got, ""));
        let exception = "Exception {\n    vector: 0xd,\n}";
        assert_eq!(
            judge("harness.x_a", &Ok(()), &d, &fp("kvm_intel")),
            Verdict::Pass
        );
        // An entry whose check passes is fixed.
        assert_eq!(
            judge("harness.x_a", &Ok(()), &d, &fp("kvm_pvm")),
            Verdict::Fixed { id: "d1".into() }
        );
        assert!(matches!(
            judge(
                "harness.x_a",
                &fail("exit", "Hlt", exception),
                &d,
                &fp("kvm_pvm")
            ),
            Verdict::KnownDeviation { .. }
        ));
        // Strict elsewhere.
        assert!(
            judge(
                "harness.x_a",
                &fail("exit", "Hlt", exception),
                &d,
                &fp("kvm_intel")
            )
            .is_failure()
        );
        // A failure for another reason is still a failure: another field, another value, a
        // reason without fields, or the same parts in another check.
        for f in [
            fail("rax", "0x1", "0x2"),
            fail("exit", "Hlt", "Shutdown"),
            fail("exit", "Shutdown", exception),
            Err(Fail::failed(format!("exit: wanted Hlt, got {exception}"))),
        ] {
            let v = judge("harness.x_a", &f, &d, &fp("kvm_pvm"));
            assert!(v.is_failure(), "{f:?} -> {v:?}");
        }
        assert!(judge("vm.y", &fail("exit", "Hlt", exception), &d, &fp("kvm_pvm")).is_failure());
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
    fn one_differing_part_of_several_is_enough_and_white_space_is_not_compared() {
        let w = When {
            check: Some("vcpu_state.cpuid2_*".into()),
            field: Some("* leaf 0x1.0x0 ecx".into()),
            got: Some("0x[0-9]*".replace("[0-9]", "")),
            ..When::default()
        };
        let part = |field: &str| Part {
            field: field.into(),
            wanted: "0x1".into(),
            got: "0x2".into(),
        };
        let f = Failure::parts(
            vec![
                part("guest CPUID leaf 0x0.0x0 ebx"),
                part("guest CPUID leaf 0x1.0x0 ecx"),
            ],
            12,
        );
        assert!(w.matches_failure("vcpu_state.cpuid2_round_trip", &f));
        let f = Failure::parts(vec![part("guest CPUID leaf 0x7.0x0 ebx")], 12);
        assert!(!w.matches_failure("vcpu_state.cpuid2_round_trip", &f));
        let w = When {
            check: Some("c".into()),
            field: Some("exit".into()),
            got: Some("Exception { vector: 0x6, *".into()),
            ..When::default()
        };
        let pretty = Failure::field(
            "exit",
            "x",
            "Exception {\n    vector: 0x6,\n    error_code: None,\n}",
            "",
        );
        assert!(w.matches_failure("c", &pretty));
        let other = Failure::field("exit", "x", "Exception {\n    vector: 0x7,\n}", "");
        assert!(!w.matches_failure("c", &other));
    }

    fn symptom(culprit: Culprit, cpl: u8, kvm: ExitSig) -> Symptom {
        Symptom {
            mode: Mode::Long64,
            cpl,
            iopl: None,
            culprit,
            kvm_exit: kvm,
            reference_exit: ExitSig {
                kind: "hlt",
                vector: None,
            },
            models: vec![],
        }
    }

    #[test]
    fn oracle_conditions_match_culprit_case_exits_and_models_only() {
        let hlt = ExitSig {
            kind: "hlt",
            vector: None,
        };
        let ud = ExitSig {
            kind: "exception",
            vector: Some(6),
        };
        let class = |c: &str| When {
            class: Some(c.into()),
            ..When::default()
        };
        let lzcnt = Culprit::One {
            mnemonic: Mnemonic::Lzcnt,
            context: vec![Mnemonic::Mov],
        };
        let d = [dev(vec![class("Lzcnt")])];
        let host = fp("kvm_pvm");
        assert!(explain(&symptom(lzcnt.clone(), 0, hlt), &d, &host).is_some());
        assert!(explain(&symptom(lzcnt.clone(), 0, hlt), &d, &fp("kvm_amd")).is_none());
        // Another culprit, several without one singled out, or nothing pinned: not this entry.
        for c in [
            Culprit::One {
                mnemonic: Mnemonic::Tzcnt,
                context: vec![],
            },
            Culprit::Several(vec![Mnemonic::Lzcnt, Mnemonic::Bsr]),
            Culprit::Unknown,
        ] {
            assert!(explain(&symptom(c, 0, hlt), &d, &host).is_none());
        }
        // Prefix globs, CPL and exit conditions, refusals, models.
        assert!(class("Ins*").matches_symptom(&symptom(
            Culprit::One {
                mnemonic: Mnemonic::Insb,
                context: vec![]
            },
            0,
            hlt
        )));
        let int_ud = When {
            class: Some("Int".into()),
            cpl: Some(3),
            kvm_exit: Some("exception:6".into()),
            ..When::default()
        };
        let int = Culprit::One {
            mnemonic: Mnemonic::Int,
            context: vec![],
        };
        assert!(int_ud.matches_symptom(&symptom(int.clone(), 3, ud)));
        assert!(!int_ud.matches_symptom(&symptom(int.clone(), 0, ud)));
        assert!(!int_ud.matches_symptom(&symptom(int, 3, hlt)));
        let listed = When {
            refused: Some(true),
            listed: Some(true),
            ..When::default()
        };
        let refused = |listed| Culprit::Refused {
            mnemonic: Mnemonic::Popcnt,
            listed,
        };
        assert!(listed.matches_symptom(&symptom(refused(true), 0, hlt)));
        assert!(!listed.matches_symptom(&symptom(refused(false), 0, hlt)));
        assert!(!listed.matches_symptom(&symptom(lzcnt.clone(), 0, hlt)));
        let model = When {
            model: Some("m".into()),
            ..When::default()
        };
        let mut s = symptom(Culprit::Unknown, 3, hlt);
        assert!(!model.matches_symptom(&s));
        s.models.push("m".into());
        assert!(model.matches_symptom(&s));
        // A check condition never explains an oracle mismatch.
        assert!(!exit_hlt().matches_symptom(&s));
    }

    #[test]
    fn parse_refuses_entries_that_would_match_anything() {
        let base = "[[deviation]]\nid = \"x\"\nmodule = \"m\"\nkernel = \"*\"\ndocumented = \"d\"\nobserved = \"o\"\nseen = \"s\"\n";
        assert!(parse(base).is_err(), "no condition");
        assert!(parse(&format!("{base}[[deviation.when]]\ncheck = \"a\"\n")).is_err());
        assert!(parse(&format!("{base}[[deviation.when]]\ncpl = 3\n")).is_err());
        assert!(parse(&format!("{base}[[deviation.when]]\nclass = \"Lzcnt\"\n")).is_ok());
        assert!(
            parse(&format!(
                "{base}[[deviation.when]]\nclass = \"Lzcnt\"\nexpect = \"x\"\n"
            ))
            .is_err(),
            "unknown field"
        );
    }

    #[test]
    fn compiled_in_file_parses_and_every_entry_is_complete_with_reproducers_that_exist() {
        let all = known();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut ids = std::collections::HashSet::new();
        for d in &all {
            assert!(ids.insert(d.id.clone()), "duplicate deviation id {}", d.id);
            for (field, v) in [
                ("module", &d.module),
                ("documented", &d.documented),
                ("observed", &d.observed),
                ("seen", &d.seen),
            ] {
                assert!(!v.trim().is_empty(), "deviation {}: empty {field}", d.id);
            }
            assert!(
                !d.cases.is_empty() || d.test.is_some(),
                "deviation {}: no reproducer",
                d.id
            );
            for c in &d.cases {
                assert!(root.join(c).is_file(), "deviation {}: no file {c}", d.id);
            }
            if let Some(t) = &d.test {
                let (bin, filter) = t.split_once(':').expect("test = \"<binary>:<filter>\"");
                let src = root.join("cases/tests").join(format!("{bin}.rs"));
                assert!(src.is_file(), "deviation {}: no test binary {bin}", d.id);
                let area = crate::registry::Area::parse(bin);
                let named = crate::catalogue::all().iter().any(|c| {
                    Some(c.area) == area
                        && c.id
                            .split_once('.')
                            .is_some_and(|(_, n)| n.contains(filter))
                });
                assert!(
                    named,
                    "deviation {}: no check of {bin} matches {filter:?}",
                    d.id
                );
            }
        }
    }
}

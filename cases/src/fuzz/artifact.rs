//! Finding files: the text written to the artifacts folder for every target, its parser (which
//! `kvmconf repro` uses), and atomic writing.
//!
//! Every file opens with `#` header lines (`# kvmconf fuzz finding`, `# target: NAME`,
//! `# signature: …`, notes, then the differences), which are TOML comments. The body depends on
//! the target:
//!
//! - `guest_vs_interp`, `guest_emulated_vs_native`, `case_parser`: a case file (TOML).
//! - `state_entry`: a TOML document `format = "kvmconf-state-entry/1"`, a `[case]` table (a case:
//!   program, mode, stubs, deadline) and a `[state]` table of CPU-state fields that differ from the
//!   state the harness gives that case (`rax`, `rip`, `rflags`, `cr0`, `cr2`, `cr3`, `cr4`,
//!   `efer`, `cs.selector|base|limit|attributes` for `cs ds es fs gs ss tr ldtr`,
//!   `gdt.base|limit`, `idt.base|limit`; values as in case files).
//! - `ioctl_sequence`: a TOML document `format = "kvmconf-ioctl-sequence/1"`, a `[case]` table
//!   (the program KVM_RUN executes) and `[[call]]` tables in order, each with `ioctl =` one of
//!   `KVM_SET_USER_MEMORY_REGION` (`slot flags gpa size offset`), `KVM_SET_REGS` (`reg value`),
//!   `KVM_SET_SREGS` (`changes`, as `[state]` above, applied to the current state),
//!   `KVM_SET_MSRS` (`msr value`), `KVM_SET_GUEST_DEBUG` (`single_step`), `KVM_RUN`,
//!   `KVM_GET_DIRTY_LOG`.
//!
//! A file without a `# target:` header is read by its `format` key, else as a case file.

use super::ioctl_seq::Call;
use super::state_entry::{StateChanges, StateInput};
use super::{Finding, Input, Target, case_to_toml, signal_of};
use kvmconf_guests::Hex;
use kvmconf_guests::case::{Case, CaseError, Located, parse_cases};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The `format` of a state file this version reads and writes.
pub const STATE_FORMAT: &str = "kvmconf-state-entry/1";
/// The `format` of a sequence file this version reads and writes.
pub const SEQUENCE_FORMAT: &str = "kvmconf-ioctl-sequence/1";
/// Most calls a sequence file may hold.
pub const MAX_FILE_CALLS: usize = 1024;

/// A 16-bit value in a file (integer or `"0x…"` string, like [`Hex`]), written as `"0x…"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct H16(pub u16);

/// A 32-bit value in a file (integer or `"0x…"` string, like [`Hex`]), written as `"0x…"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct H32(pub u32);

macro_rules! narrow_hex {
    ($t:ident, $inner:ty, $bits:expr) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                Hex(u64::from(self.0)).serialize(s)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let v = Hex::deserialize(d)?.0;
                <$inner>::try_from(v).map($t).map_err(|_| {
                    D::Error::custom(format!(
                        "expected a {}-bit value (at most {:#x}), got {v:#x}",
                        $bits,
                        <$inner>::MAX
                    ))
                })
            }
        }
    };
}

narrow_hex!(H16, u16, 16);
narrow_hex!(H32, u32, 32);

/// Why a finding file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Io {
        /// The file.
        file: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The case inside (or the case file) is invalid.
    #[error(transparent)]
    Case(#[from] CaseError),
    /// A line of the file does not say what is expected there.
    #[error("{file}:{line}: {message}")]
    At {
        /// The file.
        file: String,
        /// 1-based line (0 when unknown).
        line: usize,
        /// What was expected, and what came.
        message: String,
    },
}

/// What a finding file holds.
#[derive(Clone, Debug)]
pub enum Body {
    /// Cases, replayed under a guest target's oracle.
    Cases(Vec<Located>),
    /// A `state_entry` input.
    State(Box<StateInput>),
    /// An `ioctl_sequence`: the case KVM_RUN executes and the calls.
    Calls {
        /// The case.
        case: Box<Case>,
        /// The calls, in order.
        calls: Vec<Call>,
    },
}

/// A parsed finding file.
#[derive(Clone, Debug)]
pub struct Artifact {
    /// The oracle it replays under.
    pub target: Target,
    /// Its contents.
    pub body: Body,
}

/// The file name of a finding: `<target>-<hash of the signature>.toml`, and
/// `<target>-<hash of the signature>-known.toml` for one a known deviation explains (written with
/// `--keep-known`): findings are told apart by signature and known-ness, so a known one and a new
/// one with the same signature get a file each.
pub fn file_name(f: &Finding) -> String {
    let known = if f.known.is_some() { "-known" } else { "" };
    format!(
        "{}-{:016x}{known}.toml",
        f.target.name(),
        signal_of(&f.signature)
    )
}

/// The `# target:` header of a file, if it has one: `Ok(None)` without, an error (with its line)
/// for an unknown name.
pub fn header_target(file: &str, text: &str) -> Result<Option<Target>, ArtifactError> {
    for (i, l) in text.lines().enumerate() {
        let l = l.trim_end();
        if !(l.starts_with('#') || l.is_empty()) {
            break;
        }
        if let Some(t) = l.strip_prefix("# target:") {
            return Target::from_name(t.trim())
                .map(Some)
                .ok_or_else(|| ArtifactError::At {
                    file: file.to_string(),
                    line: i + 1,
                    message: format!(
                        "# target: expected one of {}, got {:?}",
                        Target::ALL.map(Target::name).join(", "),
                        t.trim()
                    ),
                });
        }
    }
    Ok(None)
}

/// The text of a finding's file: the header (`notes` are extra `#` lines, e.g. the replay command
/// and what minimisation did) and the body for its target.
pub fn render(f: &Finding, notes: &[String]) -> Result<String, String> {
    let mut s = String::new();
    s.push_str("# kvmconf fuzz finding\n");
    s.push_str(&format!("# target: {}\n", f.target.name()));
    s.push_str(&format!("# signature: {}\n", f.signature));
    for n in notes {
        s.push_str(&format!("# {n}\n"));
    }
    s.push_str("# repro: kvmconf repro <this file>\n");
    for d in &f.details {
        for l in d.lines() {
            s.push_str(&format!("#   {l}\n"));
        }
    }
    let mut case = f.case.clone();
    let stem = file_name(f);
    case.name = format!("fuzz_{}", stem.trim_end_matches(".toml"));
    match &f.input {
        Input::Case => s.push_str(&case_to_toml(&case)?),
        Input::State(st) => {
            #[derive(Serialize)]
            struct Out<'a> {
                format: &'a str,
                case: &'a Case,
                state: StateChanges,
            }
            let mut st = st.clone();
            st.case.name = case.name.clone();
            let body = Out {
                format: STATE_FORMAT,
                case: &st.case,
                state: st.changes(),
            };
            s.push_str(&toml::to_string(&body).map_err(|e| e.to_string())?);
        }
        Input::Calls(calls) => {
            #[derive(Serialize)]
            struct Out<'a> {
                format: &'a str,
                case: &'a Case,
                call: &'a [Call],
            }
            let body = Out {
                format: SEQUENCE_FORMAT,
                case: &case,
                call: calls,
            };
            s.push_str(&toml::to_string(&body).map_err(|e| e.to_string())?);
        }
    }
    Ok(s)
}

/// Writes `text` to `dir/name` through a temporary file in the same folder and a rename, so a
/// reader never sees a partial file.
pub fn write_atomic(dir: &Path, name: &str, text: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{name}.{}.{:?}.tmp",
        std::process::id(),
        std::thread::current().id()
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    let path = dir.join(name);
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn syntax(file: &str, text: &str, e: toml::de::Error) -> ArtifactError {
    ArtifactError::At {
        file: file.to_string(),
        line: e.span().map_or(0, |s| line_of(text, s.start)),
        message: e.message().to_string(),
    }
}

fn check_format(
    file: &str,
    text: &str,
    got: &toml::Spanned<String>,
    want: &str,
) -> Result<(), ArtifactError> {
    if got.get_ref() == want {
        return Ok(());
    }
    Err(ArtifactError::At {
        file: file.to_string(),
        line: line_of(text, got.span().start),
        message: format!(
            "format: expected {want:?} (the version this kvmconf reads), got {:?}",
            got.get_ref()
        ),
    })
}

fn check_case(file: &str, text: &str, case: &toml::Spanned<Case>) -> Result<Case, ArtifactError> {
    let c = case.get_ref().clone();
    c.validate().map_err(|error| CaseError::Field {
        file: file.to_string(),
        line: line_of(text, case.span().start),
        case: c.name.clone(),
        error,
    })?;
    Ok(c)
}

/// Which body a file without a `# target:` header has, from its `format` key.
fn sniff(text: &str) -> Option<Target> {
    let f = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("format"))
        .map(|r| {
            r.trim_start()
                .trim_start_matches('=')
                .trim()
                .trim_matches('"')
        })?;
    if f.starts_with("kvmconf-state-entry/") {
        Some(Target::StateEntry)
    } else if f.starts_with("kvmconf-ioctl-sequence/") {
        Some(Target::IoctlSequence)
    } else {
        None
    }
}

/// Parses a finding file (or any case file) named `file`. `target` overrides the header; without
/// either the `format` key decides, else the text is a case file for `guest_vs_interp`.
pub fn parse(file: &str, text: &str, target: Option<Target>) -> Result<Artifact, ArtifactError> {
    let target = match target {
        Some(t) => t,
        None => header_target(file, text)?
            .or_else(|| sniff(text))
            .unwrap_or(Target::GuestVsInterp),
    };
    let body = match target {
        Target::StateEntry => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct In {
                format: toml::Spanned<String>,
                case: toml::Spanned<Case>,
                #[serde(default)]
                state: StateChanges,
            }
            let d: In = toml::from_str(text).map_err(|e| syntax(file, text, e))?;
            check_format(file, text, &d.format, STATE_FORMAT)?;
            let case = check_case(file, text, &d.case)?;
            Body::State(Box::new(StateInput::from_changes(case, &d.state)))
        }
        Target::IoctlSequence => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct In {
                format: toml::Spanned<String>,
                case: toml::Spanned<Case>,
                call: Option<toml::Spanned<Vec<Call>>>,
            }
            let d: In = toml::from_str(text).map_err(|e| syntax(file, text, e))?;
            check_format(file, text, &d.format, SEQUENCE_FORMAT)?;
            let case = check_case(file, text, &d.case)?;
            let n = d.call.as_ref().map_or(0, |c| c.get_ref().len());
            if n == 0 || n > MAX_FILE_CALLS {
                return Err(ArtifactError::At {
                    file: file.to_string(),
                    line: d.call.as_ref().map_or(0, |c| line_of(text, c.span().start)),
                    message: format!(
                        "call: expected 1 to {MAX_FILE_CALLS} [[call]] tables, got {n}"
                    ),
                });
            }
            Body::Calls {
                case: Box::new(case),
                calls: d.call.map(toml::Spanned::into_inner).unwrap_or_default(),
            }
        }
        _ => Body::Cases(parse_cases(file, text)?),
    };
    Ok(Artifact { target, body })
}

/// Reads and parses a finding file.
pub fn load(path: &Path, target: Option<Target>) -> Result<Artifact, ArtifactError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ArtifactError::Io {
        file: file.clone(),
        source,
    })?;
    parse(&file, &text, target)
}

impl Artifact {
    /// The inputs it holds: each case of a case file, or the one state or sequence (with the
    /// case it runs).
    pub fn inputs(&self) -> Vec<(Case, Input)> {
        match &self.body {
            Body::Cases(v) => v.iter().map(|l| (l.case.clone(), Input::Case)).collect(),
            Body::State(s) => vec![(s.case.clone(), Input::State(s.clone()))],
            Body::Calls { case, calls } => vec![(*case.clone(), Input::Calls(calls.clone()))],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::ioctl_seq::{MSRS, Reg, program};
    use crate::fuzz::state_entry::{SegChanges, TableChanges};
    use crate::fuzz::{Extra, Runner, host_has, source_for, state_entry};
    use kvmconf_guests::result::Exit;
    use std::sync::Arc;

    fn finding(target: Target, case: Case, input: Input) -> Finding {
        Finding {
            target,
            signature: format!("{}:test", target.name()),
            known: None,
            case,
            input,
            details: vec!["what broke: one\ntwo".into()],
        }
    }

    fn every_call() -> Vec<Call> {
        vec![
            Call::SetMemoryRegion {
                slot: H32(9),
                flags: H32(1),
                gpa: Hex(0x20_0000),
                size: Hex(0x2000),
                offset: Hex(0x1000),
            },
            Call::SetReg {
                reg: Reg::Rflags,
                value: Hex(0x202),
            },
            Call::SetState {
                changes: Box::new(StateChanges {
                    cr0: Some(Hex(0x8000_0011)),
                    cs: Some(SegChanges {
                        attributes: Some(H32(0xa09b)),
                        ..SegChanges::default()
                    }),
                    idt: Some(TableChanges {
                        limit: Some(H16(0)),
                        ..TableChanges::default()
                    }),
                    ..StateChanges::default()
                }),
            },
            Call::SetMsr {
                msr: H32(0x277),
                value: Hex(u64::MAX),
            },
            Call::GuestDebug { single_step: true },
            Call::Run,
            Call::DirtyLog,
        ]
    }

    #[test]
    fn state_files_round_trip_for_generated_inputs() {
        for i in 0..40 {
            let input = state_entry::generate(&mut source_for(11, i));
            let f = finding(
                Target::StateEntry,
                input.case.clone(),
                Input::State(Box::new(input.clone())),
            );
            let text = render(&f, &["note".into()]).expect("renders");
            assert!(text.starts_with("# kvmconf fuzz finding\n# target: state_entry\n"));
            assert!(text.contains("#   what broke: one\n#   two\n"), "{text}");
            let a = parse("s.toml", &text, None).expect("parses back");
            assert_eq!(a.target, Target::StateEntry);
            let Body::State(back) = a.body else {
                panic!("not a state body: {text}")
            };
            assert_eq!(back.cpu, input.cpu, "{text}");
            assert_eq!(back.case.memory, input.case.memory);
            assert_eq!(back.case.mode, input.case.mode);
        }
    }

    /// A known finding (written with --keep-known) and a new one with the same signature are two
    /// files: neither write replaces the other, and each holds its own finding.
    #[test]
    fn known_and_new_findings_with_one_signature_get_a_file_each() {
        let case = Case::new("c", kvmconf_guests::case::Mode::Prot32, 0x1000, vec![0xf4]);
        let new = finding(Target::GuestVsInterp, case.clone(), Input::Case);
        let mut known = new.clone();
        known.known = Some("some-deviation".into());
        known.details = vec!["the known one".into()];
        let (a, b) = (file_name(&new), file_name(&known));
        assert_ne!(a, b);
        assert!(
            b.ends_with("-known.toml") && !a.contains("-known"),
            "{a} {b}"
        );
        assert_eq!(
            a.trim_end_matches(".toml"),
            b.trim_end_matches("-known.toml")
        );
        let dir = std::env::temp_dir().join(format!("kvmconf-art-names-{}", std::process::id()));
        let pa = write_atomic(&dir, &a, &render(&new, &[]).unwrap()).unwrap();
        let pb = write_atomic(&dir, &b, &render(&known, &[]).unwrap()).unwrap();
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?} (no temporary file left)");
        let (ta, tb) = (
            std::fs::read_to_string(&pa).unwrap(),
            std::fs::read_to_string(&pb).unwrap(),
        );
        assert!(
            ta.contains("#   what broke: one") && !ta.contains("the known one"),
            "{ta}"
        );
        assert!(tb.contains("#   the known one"), "{tb}");
        // Each names its case after its own file.
        assert!(
            tb.contains(&format!("name = \"fuzz_{}\"", b.trim_end_matches(".toml"))),
            "{tb}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn state_file_holds_only_the_changed_fields() {
        let case = state_entry::generate(&mut source_for(1, 1)).case;
        let mut cpu = StateInput::base(&case);
        cpu.gpr[0] = 5;
        cpu.ss.limit = 0x1234;
        let f = finding(
            Target::StateEntry,
            case.clone(),
            Input::State(Box::new(StateInput { case, cpu })),
        );
        let text = render(&f, &[]).unwrap();
        let state = text.split("[state]").nth(1).expect("a [state] table");
        assert!(state.contains("rax = \"0x5\""), "{text}");
        assert!(state.contains("limit = \"0x1234\""), "{text}");
        assert_eq!(state.matches(" = ").count(), 2, "{text}");
    }

    #[test]
    fn sequence_files_round_trip_every_call() {
        let calls = every_call();
        let f = finding(
            Target::IoctlSequence,
            program(),
            Input::Calls(calls.clone()),
        );
        let text = render(&f, &[]).unwrap();
        assert!(text.contains("ioctl = \"KVM_SET_MSRS\""), "{text}");
        let a = parse("q.toml", &text, None).expect("parses back");
        let Body::Calls { case, calls: back } = a.body else {
            panic!("not a sequence: {text}")
        };
        assert_eq!(back, calls);
        assert_eq!(case.memory, program().memory);
        // Without the header, the format key decides.
        let bare: String = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(
            parse("q.toml", &bare, None).unwrap().target,
            Target::IoctlSequence
        );
    }

    fn parse_err(text: &str) -> String {
        match parse("bad.toml", text, None) {
            Ok(a) => panic!("accepted: {:?}", a.body),
            Err(e) => e.to_string(),
        }
    }

    const SEQ_HEAD: &str = "# target: ioctl_sequence\nformat = \"kvmconf-ioctl-sequence/1\"\n\n[case]\nname = \"s\"\nmode = \"long64\"\nregs = { rip = \"0x1000\" }\nmemory = [{ addr = \"0x1000\", hex = \"f4\" }]\n";

    #[test]
    fn bad_files_name_file_line_and_expectation() {
        let e = parse_err("# target: nope\nname = \"x\"\n");
        assert!(
            e.starts_with("bad.toml:1: # target: expected one of"),
            "{e}"
        );
        let e = parse_err(&format!("{SEQ_HEAD}\n[[call]]\nioctl = \"KVM_FROB\"\n"));
        assert!(e.starts_with("bad.toml:"), "{e}");
        assert!(e.contains("KVM_FROB") && e.contains("KVM_SET_MSRS"), "{e}");
        let e = parse_err(&format!(
            "{SEQ_HEAD}\n[[call]]\nioctl = \"KVM_SET_MSRS\"\nmsr = \"0x1_0000_0000\"\nvalue = 1\n"
        ));
        assert!(e.contains("expected a 32-bit value"), "{e}");
        let e = parse_err(&format!(
            "{SEQ_HEAD}\n[[call]]\nioctl = \"KVM_SET_REGS\"\nreg = \"rxx\"\nvalue = 1\n"
        ));
        assert!(e.contains("rxx") && e.contains("rflags"), "{e}");
        let e = parse_err(SEQ_HEAD);
        assert!(
            e.contains("expected 1 to 1024 [[call]] tables, got 0"),
            "{e}"
        );
        let e = parse_err(&SEQ_HEAD.replace("sequence/1", "sequence/9"));
        assert!(
            e.starts_with("bad.toml:2: format: expected \"kvmconf-ioctl-sequence/1\""),
            "{e}"
        );
        let st = SEQ_HEAD
            .replace("ioctl_sequence", "state_entry")
            .replace("kvmconf-ioctl-sequence/1", "kvmconf-state-entry/1");
        let e = parse_err(&format!("{st}\n[state]\ncs.selector = \"0x10000\"\n"));
        assert!(e.starts_with("bad.toml:11:"), "{e}");
        assert!(
            e.contains("expected a 16-bit value (at most 0xffff), got 0x10000"),
            "{e}"
        );
        let e = parse_err(&format!("{st}\n[state]\ncr9 = 1\n"));
        assert!(e.starts_with("bad.toml:11:") && e.contains("cr9"), "{e}");
        let e = parse_err(
            &st.replace("long64", "real16")
                .replace("name = \"s\"", "name = \"s\"\ncpl = 3"),
        );
        assert!(e.contains("bad.toml:4: case \"s\": field `cpl`"), "{e}");
    }

    /// A runner whose extra invariants are fake: they fire on outcomes the test arranges.
    fn fake_runner(host: &kvmconf_harness::Host) -> Runner<'_> {
        let mut r = Runner::new(host);
        r.extra = Extra {
            state: Some(Arc::new(|_, res| {
                (matches!(res.exit, Exit::Hlt) && res.regs.rax.0 == 5)
                    .then(|| "fake oracle: rax is 5 at HLT".to_string())
            })),
            call: Some(Arc::new(|call, outcome| {
                (matches!(call, Call::SetMsr { msr, .. } if msr.0 == MSRS[0])
                    && outcome == "msr 0xc0000081 1")
                    .then(|| "fake oracle: STAR accepted".to_string())
            })),
        };
        r
    }

    /// The whole path of a finding, on KVM: found, shrunk, written, read back, replayed.
    #[test]
    fn state_finding_is_shrunk_written_and_replayed() {
        let host = kvmconf_harness::host_or_skip!();
        let mut r = fake_runner(&host);
        let case = state_entry::generate(&mut source_for(2, 0)).case;
        let mut cpu = StateInput::base(&case);
        cpu.gpr[0] = 5; // what the fake oracle needs
        cpu.gpr[3] = 0x77; // noise
        cpu.cr2 = 0x1234; // noise
        cpu.gpr[6] = 0xffff_0000_0000_0001; // noise
        let input = StateInput { case, cpu };
        let x = r.exec_state(&input).expect("runs");
        let f = x.finding.expect("the fake oracle fires");
        assert_eq!(f.details, ["fake oracle: rax is 5 at HLT"]);
        let small = r.shrink(&f);
        let Input::State(s) = &small.input else {
            panic!("not a state")
        };
        assert_eq!(
            s.changes(),
            StateChanges {
                rax: Some(Hex(5)),
                ..StateChanges::default()
            }
        );
        let dir = std::env::temp_dir().join(format!("kvmconf-art-state-{}", std::process::id()));
        let path = write_atomic(&dir, &file_name(&small), &render(&small, &[]).unwrap()).unwrap();
        let a = load(&path, None).expect("loads");
        assert_eq!(a.target, Target::StateEntry);
        let g = replayed_finding(&mut r, &a).expect("reproduces");
        assert_eq!(g.signature, f.signature);
        // Under the real oracle alone the same file shows nothing on a conforming host path.
        assert!(replayed_finding(&mut Runner::new(&host), &a).is_none());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// What replaying `a`, a file of one input, under `r` finds (the replay must run).
    fn replayed_finding(r: &mut Runner<'_>, a: &Artifact) -> Option<Finding> {
        let mut out = r.replay(a);
        assert_eq!(out.len(), 1, "one input");
        out.remove(0).1.expect("runs").finding
    }

    #[test]
    fn sequence_finding_is_shrunk_written_and_replayed() {
        let host = kvmconf_harness::host_or_skip!();
        let mut r = fake_runner(&host);
        r.check_fds = true;
        let mut calls = every_call();
        calls.insert(
            3,
            Call::SetMsr {
                msr: H32(MSRS[0]),
                value: Hex(0x0023_0010_0000_0000),
            },
        );
        calls.retain(|c| !matches!(c, Call::SetMsr { msr, .. } if msr.0 == 0x277));
        let x = r.exec_calls(&program(), &calls).expect("runs");
        let f = x.finding.expect("the fake oracle fires");
        assert_eq!(f.signature, "ioctl_sequence:extra");
        let small = r.shrink(&f);
        let Input::Calls(c) = &small.input else {
            panic!("not calls")
        };
        assert_eq!(c, &[calls[3].clone()]);
        let dir = std::env::temp_dir().join(format!("kvmconf-art-seq-{}", std::process::id()));
        let path = write_atomic(&dir, &file_name(&small), &render(&small, &[]).unwrap()).unwrap();
        let a = load(&path, None).expect("loads");
        let g = replayed_finding(&mut r, &a).expect("reproduces");
        assert_eq!(g.signature, f.signature);
        assert!(replayed_finding(&mut Runner::new(&host), &a).is_none());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A guest-target finding (a REP INSB into MMIO, which KVM's emulator stores as one write):
    /// shrunk on the runner's pool, its smallest form checked on a fresh VM before it is written,
    /// then replayed from the file by a new runner, as `kvmconf repro` does.
    #[test]
    fn guest_finding_is_shrunk_checked_on_a_fresh_vm_written_and_replayed() {
        let host = kvmconf_harness::host_or_skip!();
        let mut r = Runner::new(&host);
        // mov eax, 1 (noise); mov dx, 0x510; mov edi, 0x4010; mov ecx, 3; rep insb; hlt
        let mut case = Case::new(
            "rep_insb",
            kvmconf_guests::case::Mode::Prot32,
            kvmconf_guests::r#gen::CODE,
            vec![
                0xb8, 1, 0, 0, 0, 0x66, 0xba, 0x10, 0x05, 0xbf, 0x10, 0x40, 0, 0, 0xb9, 3, 0, 0, 0,
                0xf3, 0x6c, 0xf4,
            ],
        );
        case.regs.rsp = Some(Hex(0x8000));
        case.io_in = [0x11, 0x22, 0x33]
            .map(|v| kvmconf_guests::case::IoIn {
                port: Hex(0x510),
                value: Hex(v),
            })
            .to_vec();
        case.mmio.push(kvmconf_guests::case::MmioRegion {
            addr: Hex(0x4000),
            len: Hex(0x1000),
            hex: kvmconf_guests::num::HexBytes(vec![]),
        });
        let x = r.guest_vs_interp(&case).expect("runs");
        let Some(f) = x.finding else {
            // A KVM that stores each element after its read, as the SDM says.
            assert!(!host_has(crate::fuzz::rep_ins::ONE_WRITE));
            return;
        };
        let (small, fresh) = r.shrink_verified(&f);
        assert_eq!(fresh, Some(crate::fuzz::minimise::Fresh::Smallest));
        assert_eq!(small.signature, f.signature);
        let code = &small.case.memory[0].hex.0;
        assert!(
            code.len() < case.memory[0].hex.0.len() && !code.starts_with(&[0xb8]),
            "the MOV EAX is gone: {code:02x?}"
        );
        let dir = std::env::temp_dir().join(format!("kvmconf-art-guest-{}", std::process::id()));
        let path = write_atomic(&dir, &file_name(&small), &render(&small, &[]).unwrap()).unwrap();
        let a = load(&path, None).expect("loads");
        let g = replayed_finding(&mut Runner::new(&host), &a).expect("reproduces");
        assert_eq!(g.signature, f.signature);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// SDM 3A 13.12.2 / api.rst 4.19: a PAT value with a reserved memory type is not set; the
    /// sequence oracle reports it, as a known deviation exactly where one is recorded.
    #[test]
    fn pat_with_reserved_type_is_a_finding_only_where_the_host_deviates() {
        let host = kvmconf_harness::host_or_skip!();
        let mut r = Runner::new(&host);
        let calls = [Call::SetMsr {
            msr: H32(0x277),
            value: Hex(0x0007_0406_0007_0402),
        }];
        let x = r.exec_calls(&program(), &calls).expect("runs");
        let has = host_has("pvm-pat-reserved-type-accepted");
        assert_eq!(x.finding.is_some(), has, "{:?}", x.finding);
        if let Some(f) = x.finding {
            assert_eq!(f.signature, "ioctl_sequence:msr-pat-reserved");
            assert_eq!(f.known.as_deref(), Some("pvm-pat-reserved-type-accepted"));
        }
        // A valid PAT (the reset value) is no finding anywhere.
        let ok = [Call::SetMsr {
            msr: H32(0x277),
            value: Hex(0x0007_0406_0007_0406),
        }];
        assert!(r.exec_calls(&program(), &ok).unwrap().finding.is_none());
    }
}

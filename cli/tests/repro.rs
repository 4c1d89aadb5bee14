//! `kvmconf repro`: finding files of every kind (case, state and sequence files) replay with the
//! broken invariant printed and an exit code saying whether they reproduced; bad files are refused
//! with file, line and expectation. `--emit-c`: the emitted C reproducer compiles with
//! `gcc -O1 -Wall -Werror` and, run on this host, reproduces the expected result of a passing case
//! and reports the mismatch of a known-deviation case (or matches, on a host without that
//! deviation). Also `kvmconf fuzz` end to end: short deterministic runs, written findings, and
//! replay of one input from its seed and index.

#[macro_use]
mod common;

use common::{corpus, text};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn kvmconf(args: &[&str]) -> Output {
    common::run_kvmconf(args, None, &[])
}

/// Runs `kvmconf fuzz --target TARGET --seed SEED EXTRA…`, then `--artifacts ARTS` when given.
fn fuzz(target: &str, seed: &str, extra: &[&str], arts: Option<&Path>) -> Output {
    let mut args = vec!["fuzz", "--target", target, "--seed", seed];
    args.extend_from_slice(extra);
    if let Some(arts) = arts {
        args.extend(["--artifacts", arts.to_str().unwrap()]);
    }
    kvmconf(&args)
}

/// Replays `file` with `kvmconf repro`, asserting that it reproduced a known deviation (exit 1)
/// and that its output contains `want`; returns that output.
fn repro_reproduces(file: &str, want: &str) -> String {
    let r = kvmconf(&["repro", file]);
    let rout = text(&r.stdout);
    assert!(rout.contains(want), "{rout}");
    assert!(
        rout.contains("RESULT reproduced (known deviation "),
        "{rout}"
    );
    assert_eq!(r.status.code(), Some(1), "{rout}");
    rout
}

/// Whether `id` is one of the comma-separated deviation ids in `list` (a closing `)` ignored).
fn lists_known(list: &str, id: &str) -> bool {
    list.trim_end_matches(')').split(',').any(|k| k == id)
}

/// [`fuzz`] into `artifacts/` of a new scratch directory `name`: that directory, the artifacts
/// path, the output and its stdout.
fn fuzz_in(
    name: &str,
    target: &str,
    seed: &str,
    extra: &[&str],
) -> (PathBuf, PathBuf, Output, String) {
    let dir = scratch(name);
    let arts = dir.join("artifacts");
    let o = fuzz(target, seed, extra, Some(&arts));
    let out = text(&o.stdout);
    (dir, arts, o, out)
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kvmconf-repro-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

fn have_gcc() -> bool {
    Command::new("gcc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Emits the C reproducer of the corpus case `case`, compiles it, and returns the binary's path.
fn emit_and_build(case: &str, dir: &Path) -> PathBuf {
    emit_and_build_file(&corpus(case), dir)
}

/// Emits the C reproducer of the case file `file`, compiles it, and returns the binary's path.
fn emit_and_build_file(file: &str, dir: &Path) -> PathBuf {
    let c = dir.join("repro.c");
    let o = kvmconf(&["repro", file, "--emit-c", c.to_str().unwrap()]);
    assert!(c.exists(), "no C written: {}", text(&o.stderr));
    let bin = dir.join("repro");
    let g = Command::new("gcc")
        .args(["-O1", "-Wall", "-Werror", "-o"])
        .arg(&bin)
        .arg(&c)
        .output()
        .expect("gcc runs");
    assert!(g.status.success(), "gcc failed:\n{}", text(&g.stderr));
    bin
}

/// Runs the compiled reproducer `bin`: its output and its stdout.
fn run_reproducer(bin: &Path) -> (Output, String) {
    let o = Command::new(bin).output().expect("reproducer runs");
    let out = text(&o.stdout);
    (o, out)
}

/// Skips (printing why) unless gcc and /dev/kvm are usable.
macro_rules! need_gcc_and_kvm {
    () => {
        if !have_gcc() {
            kvmconf_harness::skip::print_skip(module_path!(), "gcc not found");
            return;
        }
        if let kvmconf_harness::skip::Requirement::Skip(r) = kvmconf_harness::skip::require_kvm() {
            kvmconf_harness::skip::print_skip(module_path!(), &r);
            return;
        }
    };
}

#[test]
fn emit_c_passing_case_compiles_and_matches() {
    need_gcc_and_kvm!();
    let dir = scratch("pass");
    let bin = emit_and_build("seed_hello.toml", &dir);
    let (o, out) = run_reproducer(&bin);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert_contains_all(
        &out,
        &[
            "GOT      exit hlt",
            "GOT      io_out port=0xf1 size=1 value=0x48",
            "RESULT match",
        ],
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// api.rst 4.38 KVM_SET_GUEST_DEBUG (KVM_GUESTDBG_SINGLESTEP): the C reproducer of a
/// single-step case enables stepping, records the pc of every KVM_EXIT_DEBUG as the harness does,
/// and on this host gets what the stepped interpreter expects. The case stops on its exit budget
/// before the HLT, because stepping over HLT is a recorded deviation here (pvm-single-step-hlt).
#[test]
fn emit_c_single_step_case_compiles_and_matches_the_harness() {
    need_gcc_and_kvm!();
    let dir = scratch("step");
    let case = dir.join("jumps_step.toml");
    let body = std::fs::read_to_string(corpus("singlestep/jumps_prot32.toml"))
        .unwrap()
        .replace("max_exits = 40", "max_exits = 5");
    assert!(body.contains("max_exits = 5"), "{body}");
    std::fs::write(&case, body).unwrap();
    let bin = emit_and_build_file(case.to_str().unwrap(), &dir);
    let (o, out) = run_reproducer(&bin);
    assert_contains_all(
        &out,
        &[
            "EXPECTED exit exit_budget",
            "EXPECTED steps 5",
            "EXPECTED step pc=0x1002",
            "EXPECTED step pc=0x100b",
            "GOT      exit exit_budget",
            "GOT      steps 5",
            "GOT      rip=0x100b",
            "RESULT match",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{out}");
    // The C program steps like the harness: the same pcs as `kvmconf exec`.
    let e = kvmconf(&["exec", case.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(text(&e.stdout).trim()).expect("a result");
    let harness: Vec<String> = v["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| format!("GOT      step pc={}", s.as_str().unwrap()))
        .collect();
    let got: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("GOT      step pc="))
        .collect();
    assert_eq!(got, harness);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn emit_c_known_deviation_case_reports_the_mismatch() {
    need_gcc_and_kvm!();
    let dir = scratch("dev");
    let bin = emit_and_build("deviations/pvm_cpl3_iopl3_out.toml", &dir);
    let (o, out) = run_reproducer(&bin);
    assert_contains_all(
        &out,
        &[
            "EXPECTED exit hlt",
            "EXPECTED io_out port=0xf1 size=1 value=0x48",
        ],
    );
    if kvmconf_cases::fuzz::host_has("pvm-cpl3-iopl-ignored") {
        assert_eq!(o.status.code(), Some(1), "{out}");
        assert!(
            out.contains(
                "MISMATCH expected \"exit hlt\", got \"exit exception vector=13 error_code=0x0\""
            ),
            "{out}"
        );
        assert!(out.contains("RESULT mismatch"), "{out}");
    } else {
        // A host without the deviation runs the case as documented.
        assert_eq!(o.status.code(), Some(0), "{out}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn repro_prints_the_diff_and_names_the_known_deviation() {
    need_gcc_and_kvm!();
    let o = kvmconf(&["repro", &corpus("deviations/pvm_cpl3_iopl3_out.toml")]);
    let out = text(&o.stdout);
    assert!(
        out.contains("exit.kind: exception != hlt (kvm != interp)"),
        "{out}"
    );
    if kvmconf_cases::fuzz::host_has("pvm-cpl3-iopl-ignored") {
        assert_contains_all(
            &out,
            &[
                "known deviation pvm-cpl3-iopl-ignored",
                "RESULT reproduced (known deviation pvm-cpl3-iopl-ignored)",
            ],
        );
        assert_eq!(o.status.code(), Some(1), "{out}");
    }
}

const SEQUENCE_HEAD: &str = r#"# kvmconf fuzz finding
# target: ioctl_sequence
format = "kvmconf-ioctl-sequence/1"

[case]
name = "pat"
mode = "long64"
stubs = true
timeout_ms = 50
regs = { rip = "0x1000", rsp = "0x8000" }
memory = [{ addr = "0x1000", hex = "b02ae6f1f4" }]
"#;

const STATE_HEAD: &str = r#"# kvmconf fuzz finding
# target: state_entry
format = "kvmconf-state-entry/1"

[case]
name = "st"
mode = "prot32"
timeout_ms = 100
regs = { rip = "0x1000", rsp = "0x8000" }
memory = [{ addr = "0x1000", hex = "9090f4" }]
"#;

/// A sequence file that runs the guest, then sets IA32_PAT to `value` with KVM_SET_MSRS.
fn pat_sequence(value: &str) -> String {
    format!(
        "{SEQUENCE_HEAD}\n[[call]]\nioctl = \"KVM_RUN\"\n\n[[call]]\nioctl = \"KVM_SET_MSRS\"\nmsr = \"0x277\"\nvalue = \"{value}\"\n"
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

/// api.rst 4.19 (KVM_SET_MSRS returns the number set, stopping at an MSR that fails) and SDM 3A
/// 13.12.2 (PAT types 2, 3, 8-255 are reserved): a hand-written sequence file that sets PAT to a
/// reserved type reproduces exactly on a host with that recorded deviation.
#[test]
fn repro_sequence_file_reports_the_broken_invariant_and_exit_code() {
    need_kvm!();
    let dir = scratch("seq");
    let bad = write(&dir, "pat.toml", &pat_sequence("0x0007040600070402"));
    let o = kvmconf(&["repro", &bad]);
    let out = text(&o.stdout);
    if kvmconf_cases::fuzz::host_has("pvm-pat-reserved-type-accepted") {
        assert_contains_all(
            &out,
            &[
                "pat: ioctl_sequence: ioctl_sequence:msr-pat-reserved (known deviation pvm-pat-reserved-type-accepted)",
                "KVM_SET_MSRS of IA32_PAT = 0x7040600070402 (a reserved memory type): number of MSRs set: wanted 0, got 1",
            ],
        );
        assert_eq!(o.status.code(), Some(1), "{out}");
    } else {
        assert!(out.contains("RESULT not reproduced"), "{out}");
        assert_eq!(o.status.code(), Some(0), "{out}");
    }
    // The same calls with a valid PAT (its reset value) reproduce nothing anywhere.
    let good = write(&dir, "pat_ok.toml", &pat_sequence("0x0007040600070406"));
    let o = kvmconf(&["repro", &good]);
    let out = text(&o.stdout);
    assert_contains_all(
        &out,
        &[
            "pat: ioctl_sequence: no difference",
            "RESULT not reproduced",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{out}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `kvmconf fuzz --keep-known` shrinks a sequence finding to the calls that matter and writes it;
/// `kvmconf repro` replays the file it wrote.
#[test]
fn fuzz_ioctl_sequence_writes_a_shrunk_sequence_file_that_repro_replays() {
    need_kvm!();
    let (dir, arts, o, out) = fuzz_in(
        "seqfuzz",
        "ioctl_sequence",
        "1",
        &["--cases", "300", "--keep-known", "--stats-every", "0"],
    );
    assert!(out.contains("panics 0; harness errors 0"), "{out}");
    let files = files_in(&arts);
    if !kvmconf_cases::fuzz::host_has("pvm-pat-reserved-type-accepted") {
        // Nothing to write on a conforming host (any finding would fail the run).
        assert_eq!(o.status.code(), Some(0), "{out}");
        return;
    }
    assert!(
        out.contains("known    ioctl_sequence:msr-pat-reserved"),
        "{out}"
    );
    assert_eq!(files.len(), 1, "{files:?}");
    let t = std::fs::read_to_string(&files[0]).unwrap();
    assert!(t.contains("# target: ioctl_sequence\n"), "{t}");
    assert!(t.contains("-> 1 calls\n"), "the PAT call alone: {t}");
    assert_eq!(t.matches("[[call]]").count(), 1, "{t}");
    repro_reproduces(
        files[0].to_str().unwrap(),
        "RESULT reproduced (known deviation pvm-pat-reserved-type-accepted)",
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A state file runs through the state_entry oracle (api.rst 4.13 KVM_SET_SREGS, 4.10 KVM_RUN): a
/// plain state, and one the SDM calls invalid (CR0.PG without CR0.PE, SDM 3A 2.5), which KVM may
/// reject with EINVAL or fail on entry; both keep the invariants.
#[test]
fn repro_state_file_runs_the_state_entry_oracle() {
    need_kvm!();
    let dir = scratch("state");
    for (name, state) in [
        ("ok.toml", "rax = \"0x5\"\ncs.limit = \"0xffff\"\n"),
        ("pg_no_pe.toml", "cr0 = \"0x80000010\"\n"),
    ] {
        let f = write(&dir, name, &format!("{STATE_HEAD}\n[state]\n{state}"));
        let o = kvmconf(&["repro", &f]);
        let out = text(&o.stdout);
        assert!(
            out.contains("st: state_entry: no difference"),
            "{name}: {out}"
        );
        assert!(out.contains("RESULT not reproduced"), "{name}: {out}");
        assert_eq!(o.status.code(), Some(0), "{name}: {out}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Bad finding files are refused before anything runs, naming the file, the line and what was
/// expected there.
#[test]
fn repro_bad_files_exit_2_naming_file_line_and_expectation() {
    let dir = scratch("bad");
    let cases = [
        (
            "wide.toml",
            format!("{STATE_HEAD}\n[state]\nrax = 1\ncs.selector = \"0x10000\"\n"),
            ":14: expected a 16-bit value (at most 0xffff), got 0x10000",
        ),
        (
            "field.toml",
            format!("{STATE_HEAD}\n[state]\ncr5 = 1\n"),
            ":13: unknown field `cr5`",
        ),
        (
            "version.toml",
            STATE_HEAD.replace("state-entry/1", "state-entry/2"),
            ":3: format: expected \"kvmconf-state-entry/1\"",
        ),
        (
            "ioctl.toml",
            format!("{SEQUENCE_HEAD}\n[[call]]\nioctl = \"KVM_FROB\"\n"),
            "KVM_FROB",
        ),
        (
            "empty.toml",
            SEQUENCE_HEAD.to_string(),
            "expected 1 to 1024 [[call]] tables, got 0",
        ),
        (
            "target.toml",
            "# target: nope\nname = \"x\"\n".to_string(),
            "target.toml:1: # target: expected one of guest_vs_interp",
        ),
    ];
    for (name, body, want) in cases {
        let f = write(&dir, name, &body);
        let o = kvmconf(&["repro", &f]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(name), "{name}: {err}");
        assert!(err.contains(want), "{name}: wanted {want:?} in {err}");
        assert!(text(&o.stdout).is_empty(), "{name}: ran something");
    }
    let seq = write(
        &dir,
        "seq.toml",
        &format!("{SEQUENCE_HEAD}\n[[call]]\nioctl = \"KVM_RUN\"\n"),
    );
    let o = kvmconf(&["repro", &seq, "--emit-c", dir.join("x.c").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("--emit-c: expected a case file, got a ioctl_sequence file"),
        "{}",
        text(&o.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn fuzz_case_parser_run_is_clean_and_replayable() {
    let (dir, _, o, out) = fuzz_in(
        "fuzz",
        "case_parser",
        "42",
        &["--cases", "2000", "--jobs", "2"],
    );
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", text(&o.stderr));
    assert_contains_all(
        &out,
        &["fuzz case_parser: 2000 execs", "panics 0", "resources: fds"],
    );
    let r = fuzz("case_parser", "42", &["--index", "7"], None);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r.stdout));
    assert!(
        text(&r.stdout).contains("input 7 of seed 42"),
        "{}",
        text(&r.stdout)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn fuzz_guest_vs_interp_short_run_reports_statistics() {
    need_kvm!();
    let (dir, arts, _, out) = fuzz_in("gvi", "guest_vs_interp", "1", &["--cases", "300"]);
    assert_contains_all(
        &out,
        &[
            "fuzz guest_vs_interp: 300 execs",
            "panics 0; harness errors 0",
        ],
    );
    // Every new finding has a minimised artifact that parses as a case file.
    for f in files_in(&arts) {
        let t = std::fs::read_to_string(f).unwrap();
        assert!(t.starts_with("# kvmconf fuzz finding"), "{t}");
        kvmconf_guests::case::parse_cases("artifact.toml", &t).expect("artifact parses");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Asserts that `out` contains each of `wants`.
#[track_caller]
fn assert_contains_all(out: &str, wants: &[&str]) {
    for w in wants {
        assert!(out.contains(w), "{w:?} missing:\n{out}");
    }
}

/// The files in `dir` (none when it does not exist).
fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect()
}

/// The signature `kvmconf fuzz --index` prints for its input (`input N of seed S: SIG …`).
fn replayed_signature(out: &str) -> String {
    out.lines()
        .next()
        .and_then(|l| l.split(": ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_default()
        .to_string()
}

/// `kvmconf fuzz --index` of a finding does what a run does with it: input 8571 of the soak run
/// (seed 2026, long64 CPL0, LZCNT run as BSR by kvm_pvm's emulator: a known deviation there) is
/// not written without --keep-known, and with it minimised and written once; `kvmconf repro`
/// of the file shows the same finding. --no-minimise writes it as generated.
#[test]
fn fuzz_index_of_a_finding_writes_one_minimised_file_that_repro_replays() {
    need_kvm!();
    let dir = scratch("index");
    let arts = dir.join("artifacts");
    let replay = |extra: &[&str], arts: &Path| {
        fuzz(
            "guest_vs_interp",
            "2026",
            &[&["--index", "8571"], extra].concat(),
            Some(arts),
        )
    };
    let o = replay(&[], &arts);
    let out = text(&o.stdout);
    if !kvmconf_cases::fuzz::host_has("kvm-pvm-emulator-lzcnt-as-bsr") {
        // The interpreter's LZCNT is the SDM's: a conforming host shows no difference.
        assert!(out.contains("no difference"), "{out}");
        assert_eq!(o.status.code(), Some(0), "{out}");
        assert!(files_in(&arts).is_empty());
        return;
    }
    // Known: counted, not written, exit 0 (as in a run).
    let sig = replayed_signature(&out);
    assert_eq!(
        sig,
        "guest_vs_interp:long64:cpl0:exception/exception:regs.rax"
    );
    // Named with every known class the explanation used (BSR too, since it has an entry).
    let label = out
        .lines()
        .next()
        .and_then(|l| l.split_once("(known: "))
        .map_or("", |(_, k)| k);
    assert!(lists_known(label, "kvm-pvm-emulator-lzcnt-as-bsr"), "{out}");
    assert!(
        out.contains("not written (--keep-known writes it)"),
        "{out}"
    );
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(files_in(&arts).is_empty(), "{:?}", files_in(&arts));
    // --keep-known: minimised and written, the path and the repro command printed.
    let o = replay(&["--keep-known"], &arts);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", text(&o.stderr));
    let files = files_in(&arts);
    assert_eq!(files.len(), 1, "{files:?}");
    let path = files[0].to_str().unwrap();
    // Marked known, so a new finding with the same signature would not overwrite it.
    assert!(path.ends_with("-known.toml"), "{path}");
    assert_contains_all(
        &out,
        &[
            &format!("\nwritten: {path}\n"),
            &format!("\nrepro: kvmconf repro {path}\n"),
        ],
    );
    let t = std::fs::read_to_string(&files[0]).unwrap();
    assert_contains_all(
        &t,
        &[
            &format!("# signature: {sig}\n"),
            "# replay: kvmconf fuzz --target guest_vs_interp --seed 2026 --index 8571\n",
        ],
    );
    let bytes: Vec<usize> = t
        .lines()
        .find_map(|l| l.strip_prefix("# minimised: code "))
        .and_then(|l| l.strip_suffix(" bytes"))
        .map(|l| l.split(" -> ").filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    assert!(
        bytes.len() == 2 && bytes[1] < bytes[0],
        "shrunk program: {t}"
    );
    // The NOPs the shrinking wrote were taken out again, branches re-aimed: none is left, and the
    // `# minimised:` line counts the bytes of what was written.
    let written = kvmconf_guests::case::parse_cases(path, &t).expect("the file parses");
    let case = &written[0].case;
    assert_eq!(case.memory[0].hex.0.len(), bytes[1], "{t}");
    let nops = kvmconf_cases::oracle::code::instructions(case)
        .iter()
        .filter(|i| i.mnemonic() == iced_x86::Mnemonic::Nop)
        .count();
    assert_eq!(nops, 0, "NOPs left in the minimised program: {t}");
    // The shrunk program was run again on a fresh VM before it was written, and reproduced.
    assert!(
        t.contains("# fresh VM: the minimised case reproduces on a fresh VM\n"),
        "{t}"
    );
    let rout = repro_reproduces(path, &format!(": guest_vs_interp: {sig} "));
    // Every known class the explanation needs is named (on some CPUs BSR's zero-source entry
    // too): LZCNT's among them.
    let known = rout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT reproduced (known deviation "))
        .unwrap_or_default();
    assert!(
        lists_known(known, "kvm-pvm-emulator-lzcnt-as-bsr"),
        "{rout}"
    );
    // --no-minimise: the same file name, the program as generated.
    let raw = dir.join("raw");
    let o = replay(&["--keep-known", "--no-minimise"], &raw);
    let files = files_in(&raw);
    assert_eq!(files.len(), 1, "{files:?}\n{}", text(&o.stdout));
    assert_eq!(files[0].file_name(), Path::new(path).file_name());
    let t = std::fs::read_to_string(&files[0]).unwrap();
    assert!(t.contains("# minimised: no (--no-minimise)\n"), "{t}");
    assert!(!t.contains("# fresh VM"), "{t}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `kvmconf fuzz --index` of a sequence finding (seed 1, input 39: KVM_SET_MSRS sets a PAT with a
/// reserved memory type, SDM 3A 13.12.2; a known deviation on kvm_pvm) with --keep-known writes
/// one sequence file shrunk to that call, which `kvmconf repro` replays to the same finding.
#[test]
fn fuzz_index_of_a_sequence_finding_writes_one_shrunk_sequence_file() {
    need_kvm!();
    let (dir, arts, o, out) = fuzz_in(
        "seqindex",
        "ioctl_sequence",
        "1",
        &["--index", "39", "--keep-known"],
    );
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", text(&o.stderr));
    let files = files_in(&arts);
    if !kvmconf_cases::fuzz::host_has("pvm-pat-reserved-type-accepted") {
        assert!(out.contains("no difference"), "{out}");
        assert!(files.is_empty(), "{files:?}");
        return;
    }
    assert_eq!(replayed_signature(&out), "ioctl_sequence:msr-pat-reserved");
    assert_eq!(files.len(), 1, "{files:?}");
    let t = std::fs::read_to_string(&files[0]).unwrap();
    assert!(t.contains("# minimised: 32 -> 1 calls\n"), "{t}");
    let rout = repro_reproduces(
        files[0].to_str().unwrap(),
        "ioctl_sequence:msr-pat-reserved",
    );
    assert!(
        rout.contains("RESULT reproduced (known deviation pvm-pat-reserved-type-accepted)"),
        "{rout}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `kvmconf fuzz --index` of an input on which KVM and the interpreter agree (seed 2026, input 0)
/// writes nothing, --keep-known or not, and exits 0.
#[test]
fn fuzz_index_without_a_difference_writes_nothing() {
    need_kvm!();
    let (dir, arts, o, out) = fuzz_in(
        "nodiff",
        "guest_vs_interp",
        "2026",
        &["--index", "0", "--keep-known"],
    );
    assert!(
        out.starts_with("input 0 of seed 2026: no difference"),
        "{out}"
    );
    assert!(!out.contains("written:"), "{out}");
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(files_in(&arts).is_empty(), "{:?}", files_in(&arts));
    let _ = std::fs::remove_dir_all(dir);
}

/// guest_vs_interp workers take inputs in batches (generate and interpret, KVM back to back,
/// verdicts): a run of 70 inputs (two full batches and a partial one) executes each index exactly
/// once with one worker and with two, and rejects the same inputs either way (rejection is the
/// interpreter's, so it does not depend on how the work is split).
#[test]
fn fuzz_guest_batches_run_every_index_once_whatever_the_workers() {
    need_kvm!();
    let dir = scratch("batches");
    let mut summaries = Vec::new();
    for jobs in ["1", "2"] {
        let arts = dir.join(format!("artifacts-{jobs}"));
        let o = fuzz(
            "guest_vs_interp",
            "3",
            &[
                "--cases",
                "70",
                "--jobs",
                jobs,
                "--no-minimise",
                "--stats-every",
                "0",
            ],
            Some(&arts),
        );
        let out = text(&o.stdout);
        let line = out
            .lines()
            .find(|l| l.starts_with("fuzz guest_vs_interp: "))
            .unwrap_or_else(|| panic!("no summary line: {out}"))
            .to_string();
        assert_contains_all(&line, &[": 70 execs in ", "panics 0; harness errors 0"]);
        let rejected = line
            .split(", ")
            .find(|p| p.ends_with(" rejected"))
            .unwrap_or_else(|| panic!("no rejected count: {line}"))
            .to_string();
        summaries.push(rejected);
    }
    assert_eq!(
        summaries[0], summaries[1],
        "rejected inputs with 1 and 2 workers"
    );
    let _ = std::fs::remove_dir_all(dir);
}

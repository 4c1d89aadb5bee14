//! `kvmconf repro --emit-c`: the emitted C reproducer compiles with `gcc -O1 -Wall -Werror` and,
//! run on this host, reproduces the expected result of a passing case and reports the mismatch of a
//! known-deviation case (or matches, on a host without that deviation). Also `kvmconf fuzz`
//! end to end: a short deterministic run, and replay of one input from its seed and index.

mod common;

use common::{corpus, text};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn kvmconf(args: &[&str]) -> Output {
    common::run_kvmconf(args, None, &[])
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

/// Emits the C reproducer of `case`, compiles it, and returns the binary's path.
fn emit_and_build(case: &str, dir: &Path) -> PathBuf {
    let c = dir.join("repro.c");
    let o = kvmconf(&["repro", &corpus(case), "--emit-c", c.to_str().unwrap()]);
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
    let o = Command::new(&bin).output().expect("reproducer runs");
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("GOT      exit hlt"), "{out}");
    assert!(
        out.contains("GOT      io_out port=0xf1 size=1 value=0x48"),
        "{out}"
    );
    assert!(out.contains("RESULT match"), "{out}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn emit_c_known_deviation_case_reports_the_mismatch() {
    need_gcc_and_kvm!();
    let dir = scratch("dev");
    let bin = emit_and_build("deviations/pvm_cpl3_iopl3_out.toml", &dir);
    let o = Command::new(&bin).output().expect("reproducer runs");
    let out = text(&o.stdout);
    assert!(out.contains("EXPECTED exit hlt"), "{out}");
    assert!(
        out.contains("EXPECTED io_out port=0xf1 size=1 value=0x48"),
        "{out}"
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
        assert!(
            out.contains("known deviation pvm-cpl3-iopl-ignored"),
            "{out}"
        );
        assert_eq!(o.status.code(), Some(0), "{out}");
    }
}

#[test]
fn fuzz_case_parser_run_is_clean_and_replayable() {
    let dir = scratch("fuzz");
    let arts = dir.join("artifacts");
    let args = [
        "fuzz",
        "--target",
        "case_parser",
        "--seed",
        "42",
        "--cases",
        "2000",
        "--jobs",
        "2",
        "--artifacts",
        arts.to_str().unwrap(),
    ];
    let o = kvmconf(&args);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", text(&o.stderr));
    assert!(out.contains("fuzz case_parser: 2000 execs"), "{out}");
    assert!(out.contains("panics 0"), "{out}");
    assert!(out.contains("resources: fds"), "{out}");
    let r = kvmconf(&[
        "fuzz",
        "--target",
        "case_parser",
        "--seed",
        "42",
        "--index",
        "7",
    ]);
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
    if let kvmconf_harness::skip::Requirement::Skip(r) = kvmconf_harness::skip::require_kvm() {
        kvmconf_harness::skip::print_skip(module_path!(), &r);
        return;
    }
    let dir = scratch("gvi");
    let arts = dir.join("artifacts");
    let o = kvmconf(&[
        "fuzz",
        "--target",
        "guest_vs_interp",
        "--seed",
        "1",
        "--cases",
        "300",
        "--artifacts",
        arts.to_str().unwrap(),
    ]);
    let out = text(&o.stdout);
    assert!(out.contains("fuzz guest_vs_interp: 300 execs"), "{out}");
    assert!(out.contains("panics 0; harness errors 0"), "{out}");
    // Every new finding has a minimised artifact that parses as a case file.
    for e in std::fs::read_dir(&arts).into_iter().flatten().flatten() {
        let t = std::fs::read_to_string(e.path()).unwrap();
        assert!(t.starts_with("# kvmconf fuzz finding"), "{t}");
        kvmconf_guests::case::parse_cases("artifact.toml", &t).expect("artifact parses");
    }
    let _ = std::fs::remove_dir_all(dir);
}

//! The exit codes every subcommand shares (README "Exit codes"): 2 for bad usage and bad input
//! files (with `file:line`), 3 without a usable KVM device, 141 into a closed pipe. None of these
//! tests needs /dev/kvm: the device is pointed elsewhere with `KVMCONF_KVM_PATH`.

mod common;

use common::{corpus, text};
use std::path::PathBuf;
use std::process::Output;

/// Every subcommand.
const SUBCOMMANDS: [&str; 7] = ["run", "exec", "bench", "record", "compare", "fuzz", "repro"];

/// A device path that does not exist.
const NO_KVM: [(&str, &str); 1] = [("KVMCONF_KVM_PATH", "/nonexistent/kvm")];

fn kvmconf(args: &[&str], env: &[(&str, &str)]) -> Output {
    common::run_kvmconf(args, None, env)
}

/// A scratch directory of this test process.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kvmconf-exit-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A baseline file with nothing in it: `compare` reads it before it opens the device.
const EMPTY_BASELINE: &str = r#"{"schema":"kvmconf-baseline/1","kvmconf_version":"0.1.0",
"host":{"kernel":"x","modules":{},"cpu_vendor":"x","cpu_model":"x","cpu_signature":"x","capabilities":{}},
"set":{"seed":1,"programs":0,"checks":null,"corpus":false},"excluded":[],"duration_s":0,"entries":[]}"#;

#[test]
fn every_subcommand_exits_2_on_an_unknown_flag() {
    for sub in SUBCOMMANDS {
        let o = kvmconf(&[sub, "--no-such-flag"], &NO_KVM);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{sub}: {err}");
        assert!(err.contains("--no-such-flag"), "{sub}: {err}");
    }
    let o = kvmconf(&["no-such-subcommand"], &NO_KVM);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
}

#[test]
fn a_bad_argument_value_exits_2_before_the_device_is_opened() {
    let hello = corpus("seed_hello.toml");
    for args in [
        &["run", "--area", "nosuch"][..],
        &["run", "--corpus", "/nonexistent/corpus"][..],
        &["exec", "--oracle", "nosuch", &hello][..],
        &["bench", "--mode", "long128"][..],
        &[
            "record",
            "--out",
            "x.json",
            "--corpus",
            "/nonexistent/corpus",
        ][..],
        &["compare", "/nonexistent/baseline.json"][..],
        &["fuzz", "--target", "nosuch"][..],
        &["repro", "--target", "nosuch", &hello][..],
    ] {
        let o = kvmconf(args, &NO_KVM);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o.stderr));
    }
}

#[test]
fn a_bad_input_file_exits_2_naming_file_and_line() {
    let dir = scratch("bad-input");
    let case = dir.join("bad_case.toml");
    std::fs::write(&case, "name = \"x\"\nmode = \"long64\"\nregs = {\n").unwrap();
    let baseline = dir.join("bad_baseline.json");
    std::fs::write(&baseline, "{\n  \"schema\": ]\n").unwrap();
    let (case, baseline) = (case.to_str().unwrap(), baseline.to_str().unwrap());
    for (args, want) in [
        (&["exec", case][..], format!("{case}:3")),
        (&["repro", case][..], format!("{case}:3")),
        (&["compare", baseline][..], format!("{baseline}:2:")),
    ] {
        let o = kvmconf(args, &NO_KVM);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(&want), "{args:?}: wanted {want:?} in {err}");
        assert!(o.stdout.is_empty(), "{args:?}: nothing runs on bad input");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn without_a_kvm_device_every_subcommand_that_needs_one_exits_3() {
    let dir = scratch("no-kvm");
    let baseline = dir.join("empty.json");
    std::fs::write(&baseline, EMPTY_BASELINE).unwrap();
    let out = dir.join("out.json");
    let arts = dir.join("artifacts");
    let hello = corpus("seed_hello.toml");
    for args in [
        &["run"][..],
        &["exec", &hello][..],
        &["bench"][..],
        &["record", "--out", out.to_str().unwrap()][..],
        &["compare", baseline.to_str().unwrap()][..],
        &[
            "fuzz",
            "--cases",
            "1",
            "--artifacts",
            arts.to_str().unwrap(),
        ][..],
        &["fuzz", "--seed", "1", "--index", "0"][..],
        &["fuzz", "--bench", "--target", "case_parser"][..],
        &["repro", &hello][..],
    ] {
        let o = kvmconf(args, &NO_KVM);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(3), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "kvmconf {}: requirement not met: cannot open /nonexistent/kvm",
                args[0]
            )),
            "{args:?}: {err}"
        );
        assert!(o.stdout.is_empty(), "{args:?}: {}", text(&o.stdout));
    }
    assert!(!out.exists(), "record wrote a baseline without a device");
    // What needs no device still runs.
    let o = kvmconf(&["exec", "--oracle", "interp", &hello], &NO_KVM);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let o = kvmconf(&["run", "--list"], &NO_KVM);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let _ = std::fs::remove_dir_all(dir);
}

/// `kvmconf exec` buffers its results: the closed pipe shows at the flush, and is 141 there too.
#[test]
fn exec_into_a_closed_pipe_exits_141() {
    let o =
        common::run_into_closed_pipe(&["exec", "--oracle", "interp", &corpus("seed_hello.toml")]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(141), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

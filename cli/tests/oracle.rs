//! `kvmconf exec --oracle kvm|interp|both`: the interpreter alone, and KVM compared with it.

#[macro_use]
mod common;

use common::text;
use std::process::Output;

fn kvmconf(args: &[&str], stdin: &str) -> Output {
    common::run_kvmconf(args, Some(stdin), &[])
}

/// `mov al, 0x48; out 0xf1, al; mov ecx, 7; add ecx, 1; hlt` in long mode.
const HELLO: &str = r#"{"name":"hello64","mode":"long64","regs":{"rip":"0x1000"},"memory":[{"addr":"0x1000","hex":"b048e6f1b90700000083c101f4"}]}"#;

/// `cpuid; hlt`: host-dependent, so the interpreter reports it as unsupported on every host.
const CPUID: &str = r#"{"name":"cpuid64","mode":"long64","regs":{"rip":"0x1000","rax":"0x0"},"memory":[{"addr":"0x1000","hex":"0fa2f4"}]}"#;

/// SDM 2 OUT, ADD: the interpreter alone runs a case without KVM and prints the same result format.
#[test]
fn exec_oracle_interp_prints_the_interpreter_result() {
    let o = kvmconf(&["exec", "--oracle", "interp", "-"], HELLO);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", text(&o.stderr));
    let out = text(&o.stdout);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON result");
    assert_eq!(v["name"], "hello64");
    assert_eq!(v["exit"]["kind"], "hlt");
    assert_eq!(v["regs"]["rcx"], "0x8");
    assert_eq!(v["regs"]["rip"], "0x100d");
    assert_eq!(v["trace"][0]["io_out"]["value"], "0x48");
}

/// An unmodelled instruction is reported as such, never guessed (issue 3: "never guessed").
#[test]
fn exec_oracle_interp_reports_cpuid_unsupported() {
    let o = kvmconf(&["exec", "--oracle", "interp", "-"], CPUID);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(text(&o.stdout).trim()).unwrap();
    assert_eq!(v["exit"]["kind"], "unsupported_instruction");
    assert_eq!(v["exit"]["rip"], "0x1000");
}

/// A bad `--oracle` value is a usage error (exit code 2) naming the accepted values.
#[test]
fn exec_oracle_unknown_value_is_a_usage_error() {
    let o = kvmconf(&["exec", "--oracle", "qemu", "-"], HELLO);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(
        err.contains("kvm") && err.contains("interp") && err.contains("both"),
        "{err}"
    );
}

/// api.rst KVM_RUN / KVM_EXIT_IO: KVM and the interpreter agree on a plain program; exit code 0.
#[test]
fn exec_oracle_both_agreeing_case_exits_zero() {
    need_kvm!();
    let o = kvmconf(&["exec", "--oracle", "both", "-"], HELLO);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "stderr: {err}");
    assert!(err.contains("1 cases, 0 mismatches"), "{err}");
    let v: serde_json::Value = serde_json::from_str(text(&o.stdout).trim()).unwrap();
    assert_eq!(v["exit"]["kind"], "hlt");
}

/// A mismatch (CPUID runs on KVM, the interpreter refuses it) is printed field by field with
/// register names and hex values, and the exit code is 1.
#[test]
fn exec_oracle_both_mismatch_prints_diff_and_exits_one() {
    need_kvm!();
    let input = format!("{HELLO}\n{CPUID}\n");
    let o = kvmconf(&["exec", "--oracle", "both", "-"], &input);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(
        err.contains("case \"cpuid64\": KVM and interpreter differ (kvm != interp):"),
        "{err}"
    );
    assert!(
        err.contains("  exit.kind: hlt != unsupported_instruction"),
        "{err}"
    );
    assert!(err.contains("  regs.rip: 0x1003 != 0x1000"), "{err}");
    assert!(!err.contains("hello64"), "{err}");
    assert!(err.contains("2 cases, 1 mismatches"), "{err}");
    // KVM's results are still printed, one per case.
    assert_eq!(text(&o.stdout).lines().count(), 2);
}

/// A reproducer of a known deviation gets the oracle's verdict: the culprit and the entry of
/// `cases/deviations.toml` that explains it on this host (the same as every other driver names,
/// `cases/tests/verdicts.rs`), or `unexplained` where the host behaves otherwise.
#[test]
fn exec_oracle_both_names_the_known_deviation_of_a_reproducer() {
    need_kvm!();
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../cases/corpus/deviations/pvm_int_n_cpl3.toml"
    );
    let o = kvmconf(&["exec", "--oracle", "both", file], "");
    let err = text(&o.stderr);
    if kvmconf_cases::fuzz::host_has("pvm-int-n-cpl3-ud") {
        assert_eq!(o.status.code(), Some(1), "stderr: {err}");
        assert!(
            err.contains("  verdict: class Int: known deviation pvm-int-n-cpl3-ud\n"),
            "{err}"
        );
    } else {
        assert!(!err.contains("known deviation pvm-int-n-cpl3-ud"), "{err}");
    }
}

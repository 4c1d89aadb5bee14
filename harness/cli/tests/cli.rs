//! End-to-end tests of the `kvmconf` command: exit codes, error messages, output formats.

#[macro_use]
mod common;

use common::{corpus, text};
use std::process::Output;

fn kvmconf(args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
    common::run_kvmconf(args, stdin, env)
}

const HELLO_JSON: &str = r#"{"name":"hello64","mode":"long64","regs":{"rip":"0x1000"},"memory":[{"addr":"0x1000","hex":"b048e6f1f4"}]}"#;

#[test]
fn exec_seed_hello_prints_one_result_with_six_outs() {
    need_kvm!();
    let o = kvmconf(&["exec", &corpus("seed_hello.toml")], None, &[]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", text(&o.stderr));
    let out = text(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["exit"]["kind"], "hlt");
    let bytes: Vec<u8> = v["trace"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            u8::from_str_radix(
                e["io_out"]["value"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("0x"),
                16,
            )
            .unwrap()
        })
        .collect();
    assert_eq!(bytes, b"Hello\n");
}

#[test]
fn exec_reads_jsonl_batches_from_stdin_and_pool_matches_fresh() {
    need_kvm!();
    let batch: String = (0..20)
        .map(|i| HELLO_JSON.replace("hello64", &format!("h{i}")) + "\n")
        .collect();
    let pooled = kvmconf(&["exec", "-"], Some(&batch), &[]);
    let fresh = kvmconf(&["exec", "--fresh", "-"], Some(&batch), &[]);
    assert_eq!(pooled.status.code(), Some(0), "{}", text(&pooled.stderr));
    assert_eq!(fresh.status.code(), Some(0), "{}", text(&fresh.stderr));
    assert_eq!(text(&pooled.stdout).lines().count(), 20);
    assert_eq!(text(&pooled.stdout), text(&fresh.stdout));
}

#[test]
fn exec_bad_input_exits_2_naming_file_line_and_expectation_and_runs_nothing() {
    let dir = std::env::temp_dir().join(format!("kvmconf-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "syntax.toml",
            "name = \"x\"\nmode = \"long64\"\nregs = {\n",
            "syntax.toml:",
        ),
        (
            "mode.toml",
            "name = \"x\"\nmode = \"long128\"\n",
            "expected one of",
        ),
        (
            "outside.json",
            r#"{"name":"x","mode":"real16","memory":[{"addr":"0x10000000","hex":"f4"}]}"#,
            "inside guest RAM",
        ),
        (
            "reserved.json",
            r#"{"name":"x","mode":"long64","memory":[{"addr":"0xe00000","hex":"f4"}]}"#,
            "reserved range",
        ),
        (
            "overlap.json",
            r#"{"name":"x","mode":"long64","mmio":[{"addr":"0xd0000000","len":16},{"addr":"0xd0000004","len":4}]}"#,
            "mmio[1]",
        ),
    ];
    for (file, body, want) in cases {
        let p = dir.join(file);
        std::fs::write(&p, body).unwrap();
        let o = kvmconf(&["exec", p.to_str().unwrap()], None, &[]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{file}: {err}");
        assert!(
            err.contains(file),
            "{file}: error does not name the file: {err}"
        );
        assert!(err.contains(want), "{file}: wanted {want:?} in {err}");
        assert!(o.stdout.is_empty(), "{file}: nothing runs on bad input");
    }
    let o = kvmconf(&["exec", "/nonexistent/case.toml"], None, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("/nonexistent/case.toml"));
    let o = kvmconf(&["exec", "--no-such-flag", "x"], None, &[]);
    assert_eq!(o.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn exec_without_kvm_exits_3_and_run_exits_2() {
    let env = [("KVMCONF_KVM_PATH", "/nonexistent/kvm")];
    let o = kvmconf(&["exec", &corpus("seed_hello.toml")], None, &env);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("/nonexistent/kvm"));
    let o = kvmconf(&["run"], None, &env);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
}

#[test]
fn run_list_and_filters() {
    let o = kvmconf(&["run", "--list", "--area", "system"], None, &[]);
    assert_eq!(o.status.code(), Some(0));
    let out = text(&o.stdout);
    assert!(out.lines().count() >= 20, "{out}");
    assert!(out.lines().all(|l| l.starts_with("system ")), "{out}");
    let o = kvmconf(&["run", "--list", "--case", "harness.seed_*"], None, &[]);
    assert_eq!(text(&o.stdout).lines().count(), 1);
    let o = kvmconf(&["run", "--area", "nosuch"], None, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("expected one of harness, system"));
    let o = kvmconf(&["run", "--case", "nothing.matches*"], None, &[]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn run_writes_tap_json_and_junit() {
    need_kvm!();
    let dir = std::env::temp_dir().join(format!("kvmconf-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, junit) = (dir.join("r.json"), dir.join("r.xml"));
    let o = kvmconf(
        &[
            "run",
            "--case",
            "harness.*hello*",
            "--tap",
            "--json",
            json.to_str().unwrap(),
            "--junit",
            junit.to_str().unwrap(),
        ],
        None,
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let tap = text(&o.stdout);
    assert!(tap.starts_with("TAP version 13\n"), "{tap}");
    assert!(tap.contains("\n1..3\n"), "{tap}");
    assert!(
        tap.contains("ok 1 harness.seed_hello_real16_writes_hello_and_halts"),
        "{tap}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["schema"], "kvmconf-run/1");
    assert_eq!(v["results"].as_array().unwrap().len(), 3);
    assert!(v["host"]["kernel"].as_str().is_some_and(|k| !k.is_empty()));
    let x = std::fs::read_to_string(&junit).unwrap();
    assert!(
        x.contains("<testsuite name=\"kvmconf run\" tests=\"3\""),
        "{x}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

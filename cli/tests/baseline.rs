//! `kvmconf record` / `kvmconf compare` end to end: a baseline compared on the same host shows no
//! difference; edited results are reported exactly; a broken file is bad input naming the file.

#[macro_use]
mod common;

use common::text;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

fn kvmconf(args: &[&str]) -> Output {
    common::run_kvmconf(args, None, &[])
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kvmconf-baseline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

/// Records a small baseline: 60 programs, the system-area checks, the corpus.
fn record(out: &Path) {
    let o = kvmconf(&[
        "record",
        "--out",
        out.to_str().unwrap(),
        "--programs",
        "60",
        "--checks",
        "system.*",
    ]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", text(&o.stderr));
}

fn compare_json(file: &Path) -> (Option<i32>, Value, String) {
    let o = kvmconf(&["compare", file.to_str().unwrap(), "--json"]);
    let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (o.status.code(), v, text(&o.stderr))
}

#[test]
fn record_then_compare_same_host_reports_no_difference() {
    need_kvm!();
    let f = tmp("same.json");
    record(&f);
    let (code, v, err) = compare_json(&f);
    assert_eq!(code, Some(0), "{v:#}\nstderr: {err}");
    for g in ["new_failures", "fixed", "changed"] {
        assert_eq!(v[g].as_array().map(Vec::len), Some(0), "{g}: {v:#}");
    }
    let b: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
    let n = b["entries"].as_array().unwrap().len();
    assert_eq!(v["unchanged"].as_u64(), Some(n as u64));
    assert!(n > 60 + 100, "programs, corpus and checks recorded: {n}");
    assert!(v["warnings"].as_array().unwrap().is_empty(), "{v:#}");
    // The text form says so too.
    let o = kvmconf(&["compare", f.to_str().unwrap()]);
    assert!(
        text(&o.stdout).contains("OK: no regression"),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn compare_edited_baseline_reports_exactly_the_edits() {
    need_kvm!();
    let f = tmp("edited.json");
    record(&f);
    let mut b: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
    let entries = b["entries"].as_array_mut().unwrap();
    let hlt = |e: &Value| {
        e["id"].as_str().unwrap().starts_with("program:") && e["result"]["exit"]["kind"] == "hlt"
    };
    let i = entries
        .iter()
        .position(hlt)
        .expect("a program ending in hlt");
    let j = i + 1 + entries[i + 1..].iter().position(hlt).expect("a second one");
    let k = entries
        .iter()
        .position(|e| {
            e["id"].as_str().unwrap().starts_with("catalogue:") && e["result"]["verdict"] == "pass"
        })
        .expect("a passing check");
    let rax = entries[i]["result"]["regs"]["rax"]
        .as_str()
        .unwrap()
        .to_string();
    entries[i]["result"]["regs"]["rax"] = Value::from(if rax == "0x1" { "0x2" } else { "0x1" });
    entries[j]["result"]["exit"] = serde_json::json!({ "kind": "shutdown" });
    entries[k]["result"] = serde_json::json!({ "verdict": "fail", "message": "edited" });
    let ids = [i, j, k].map(|x| entries[x]["id"].as_str().unwrap().to_string());
    std::fs::write(&f, serde_json::to_string(&b).unwrap()).unwrap();

    let (code, v, err) = compare_json(&f);
    assert_eq!(
        code,
        Some(1),
        "a changed result is a regression: {v:#}\nstderr: {err}"
    );
    let group = |g: &str| -> Vec<String> {
        v[g].as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(group("new_failures").is_empty(), "{v:#}");
    assert_eq!(group("fixed"), [ids[2].clone()], "{v:#}");
    let mut changed = group("changed");
    changed.sort();
    let mut want = vec![ids[0].clone(), ids[1].clone()];
    want.sort();
    assert_eq!(changed, want, "{v:#}");
    let fields = |id: &str| -> Vec<String> {
        v["changed"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .unwrap()["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["path"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(fields(&ids[0]), ["regs.rax"], "{v:#}");
    assert_eq!(fields(&ids[1]), ["exit.kind"], "{v:#}");
}

#[test]
fn compare_truncated_baseline_is_bad_input_naming_the_file() {
    let f = tmp("truncated.json");
    let good = r#"{"schema":"kvmconf-baseline/1","kvmconf_version":"0.1.0","host":{"kernel":"x","#;
    std::fs::write(&f, good).unwrap();
    let (code, _, err) = compare_json(&f);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(f.to_str().unwrap()), "{err}");
    assert!(err.contains("truncated"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // Not a baseline at all, and a missing file.
    std::fs::write(&f, "[1, 2]").unwrap();
    let (code, _, err) = compare_json(&f);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not a kvmconf baseline"), "{err}");
    let (code, _, err) = compare_json(&tmp("absent.json"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("absent.json"), "{err}");
}

#[test]
fn compare_other_host_warns_naming_the_difference() {
    need_kvm!();
    let f = tmp("otherhost.json");
    record(&f);
    let mut b: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
    b["host"]["kernel"] = Value::from("1.2.3-other");
    b["kvmconf_version"] = Value::from("0.0.1");
    std::fs::write(&f, serde_json::to_string(&b).unwrap()).unwrap();
    let (code, v, err) = compare_json(&f);
    assert_eq!(code, Some(0), "{v:#}\nstderr: {err}");
    let w = v["warnings"].to_string();
    assert!(w.contains("kernel: baseline 1.2.3-other"), "{w}");
    assert!(w.contains("kvmconf 0.0.1"), "{w}");
}

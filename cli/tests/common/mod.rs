//! Helpers shared by the `kvmconf` end-to-end tests: run the binary, read its output, find corpus
//! files, and skip loudly without /dev/kvm.
// Each test binary uses only some of these helpers.
#![allow(dead_code, unused_macros)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Runs `kvmconf ARGS` with `stdin` (or none) and extra environment variables.
pub fn run_kvmconf(args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kvmconf"));
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().expect("kvmconf starts");
    let input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        // kvmconf may exit (a usage error) before reading: a broken pipe here is not a failure.
        let mut input = input;
        let _ = input.write_all(text.as_bytes());
    }
    child.wait_with_output().expect("kvmconf finishes")
}

/// Runs `kvmconf ARGS` with its stdout closed before it writes anything (a closed pipe).
pub fn run_into_closed_pipe(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvmconf"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kvmconf starts");
    drop(child.stdout.take());
    child.wait_with_output().expect("kvmconf finishes")
}

/// Output bytes as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The path of a file in `cases/corpus/`.
pub fn corpus(name: &str) -> String {
    format!("{}/../cases/corpus/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Skips (printing why) unless /dev/kvm can be opened; panics in CI when it exists.
macro_rules! need_kvm {
    () => {
        match kvmconf_harness::skip::require_kvm() {
            kvmconf_harness::skip::Requirement::Met(_) => {}
            kvmconf_harness::skip::Requirement::Skip(r) => {
                kvmconf_harness::skip::print_skip(module_path!(), &r);
                return;
            }
        }
    };
}

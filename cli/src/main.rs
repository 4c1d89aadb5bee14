//! The `kvmconf` command: the conformance run (`run`), case files on KVM (`exec`), the harness
//! benchmark (`bench`), baselines (`record`, `compare`), fuzzing (`fuzz`) and reproducers
//! (`repro`). Every subcommand exits with the codes of [`common`].
#![forbid(unsafe_code)]

mod baseline;
mod bench;
mod common;
mod emit_c;
mod exec;
mod fuzz;
mod procstat;
mod report;
mod repro;
mod run;

use clap::{Parser, Subcommand};
use common::{EXIT_BAD_INPUT, EXIT_BROKEN_PIPE, EXIT_OK};
use std::process::ExitCode;

/// Makes a print into a closed pipe end the process quietly with [`EXIT_BROKEN_PIPE`]. Rust
/// ignores SIGPIPE, so such a write fails with EPIPE and `println!` panics; restoring the signal's
/// default action would take `unsafe`, which this crate forbids, so the panic is caught instead.
fn exit_quietly_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if is_broken_pipe_panic(info.payload()) {
            std::process::exit(i32::from(EXIT_BROKEN_PIPE));
        }
        default(info);
    }));
}

/// Whether a panic is std's report of a print into a closed pipe (`failed printing to stdout:
/// Broken pipe (os error 32)`; EPIPE is 32 on Linux).
fn is_broken_pipe_panic(payload: &(dyn std::any::Any + Send)) -> bool {
    let msg = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or_default();
    msg.starts_with("failed printing to std") && msg.ends_with("(os error 32)")
}

/// kvmconf: KVM API conformance and fuzzing.
#[derive(Parser)]
#[command(name = "kvmconf", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the conformance catalogue against this host's KVM and report, case by case.
    Run(run::RunArgs),
    /// Run case files (TOML, JSON, JSONL; `-` for stdin) and print one JSON result per case.
    Exec(exec::ExecArgs),
    /// Measure cases/s: harness fresh and pooled against raw kvm-ioctls loops.
    Bench(bench::BenchArgs),
    /// Record a baseline: catalogue verdicts, corpus and generated-program results, host fingerprint.
    Record(baseline::RecordArgs),
    /// Rerun a baseline's set and report new failures, fixes and changed results.
    Compare(baseline::CompareArgs),
    /// Fuzz KVM in-process with the generator and an oracle; findings go to an artifacts folder.
    Fuzz(fuzz::FuzzArgs),
    /// Replay a case file (a fuzz artifact) under its oracle and print the diff; --emit-c writes
    /// a standalone C reproducer.
    Repro(repro::ReproArgs),
}

fn main() -> ExitCode {
    exit_quietly_on_broken_pipe();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                EXIT_BAD_INPUT
            } else {
                EXIT_OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let code = match cli.command {
        Command::Run(a) => run::main(a),
        Command::Exec(a) => exec::main(a),
        Command::Bench(a) => bench::main(a),
        Command::Record(a) => baseline::record(a),
        Command::Compare(a) => baseline::compare(a),
        Command::Fuzz(a) => fuzz::main(a),
        Command::Repro(a) => repro::main(a),
    };
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_print_into_a_closed_pipe_counts_as_a_broken_pipe() {
        let msg = |s: &str| -> Box<dyn std::any::Any + Send> { Box::new(s.to_string()) };
        assert!(is_broken_pipe_panic(&*msg(
            "failed printing to stdout: Broken pipe (os error 32)"
        )));
        assert!(is_broken_pipe_panic(&*msg(
            "failed printing to stderr: Broken pipe (os error 32)"
        )));
        // Another print failure, or a panic of ours that mentions a pipe, is still a panic.
        assert!(!is_broken_pipe_panic(&*msg(
            "failed printing to stdout: No space left on device (os error 28)"
        )));
        assert!(!is_broken_pipe_panic(&*msg("Broken pipe (os error 32)")));
        assert!(!is_broken_pipe_panic(&*Box::new(32u32)));
    }
}

//! The `kvmconf` command: the conformance run (`run`), case files on KVM (`exec`) and the
//! harness benchmark (`bench`).
#![forbid(unsafe_code)]

mod baseline;
mod bench;
mod exec;
mod fuzz;
mod report;
mod repro;
mod run;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Exit code: everything ran (and, with an oracle, agreed).
pub const EXIT_OK: u8 = 0;
/// Exit code: a case failed, an oracle disagreed, or the harness failed.
pub const EXIT_FAIL: u8 = 1;
/// Exit code: bad input or usage.
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit code: no usable /dev/kvm.
pub const EXIT_NO_KVM: u8 = 3;

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

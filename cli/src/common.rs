//! What every subcommand shares: the exit codes (one table for all of them, README "Exit codes"),
//! opening the host (/dev/kvm) with one error, reading case files with `file:line` errors, and
//! writing output files and standard output.
//!
//! Subcommands use these and never each other's helpers.

use kvmconf_guests::case::{Located, load_file};
use kvmconf_harness::{Host, KvmError};
use std::fmt::Display;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Exit code 0: everything ran and nothing failed (an oracle agreed, a case passed or is a known
/// deviation, no new finding, nothing regressed, a repro file did not reproduce).
pub const EXIT_OK: u8 = 0;
/// Exit code 1: a finding or a failure (a case failed, an oracle disagreed, a new fuzz finding, a
/// regression against a baseline, a repro file reproduced).
pub const EXIT_FAIL: u8 = 1;
/// Exit code 2: bad usage or bad input (arguments, an input file, an output path that cannot be
/// written); reported before anything runs where it can be.
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit code 3: no /dev/kvm (`KVMCONF_KVM_PATH`), or it cannot be opened.
pub const EXIT_NO_KVM: u8 = 3;
/// Exit code 4: a harness error, an ioctl or VM setup failure that is not a finding, so the
/// results are incomplete; it wins over 1.
pub const EXIT_HARNESS: u8 = 4;
/// Exit code 141: whoever read standard output (or error) went away, as `kvmconf … | head -1`
/// does: 128 + SIGPIPE, what a shell reports for a command that signal ended.
pub const EXIT_BROKEN_PIPE: u8 = 128 + 13;

/// The exit code of an error opening the host: [`EXIT_NO_KVM`] when the device cannot be opened,
/// [`EXIT_HARNESS`] when an ioctl after that failed.
pub fn host_error_code(e: &KvmError) -> u8 {
    match e {
        KvmError::NoKvm(_) => EXIT_NO_KVM,
        _ => EXIT_HARNESS,
    }
}

/// Opens the host for subcommand `cmd`, or prints why not and returns the exit code: `kvmconf
/// CMD: requirement not met: cannot open /dev/kvm: …` (3) or `kvmconf CMD: harness error: …` (4).
pub fn open_host(cmd: &str) -> Result<Host, u8> {
    Host::open().map_err(|e| {
        let code = host_error_code(&e);
        if code == EXIT_NO_KVM {
            eprintln!("kvmconf {cmd}: requirement not met: {e}");
        } else {
            eprintln!("kvmconf {cmd}: harness error: {e}");
        }
        code
    })
}

/// Prints `kvmconf CMD: MSG` for bad usage or input and returns [`EXIT_BAD_INPUT`].
pub fn bad_input(cmd: &str, msg: impl Display) -> u8 {
    eprintln!("kvmconf {cmd}: {msg}");
    EXIT_BAD_INPUT
}

/// Reads every case file (TOML, JSON, JSON Lines; `-` is standard input) before anything runs;
/// prints every error (`kvmconf CMD: bad input: FILE:LINE: …`) and then returns
/// [`EXIT_BAD_INPUT`], else the cases.
pub fn load_cases(cmd: &str, files: &[PathBuf]) -> Result<Vec<Located>, u8> {
    let mut cases = Vec::new();
    let mut bad = false;
    for f in files {
        match load_file(f) {
            Ok(mut v) => cases.append(&mut v),
            Err(e) => {
                eprintln!("kvmconf {cmd}: bad input: {e}");
                bad = true;
            }
        }
    }
    if bad { Err(EXIT_BAD_INPUT) } else { Ok(cases) }
}

/// Reads an input file whole; the error names the file.
pub fn read_input(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
}

/// Where in an input file a JSON error is and what it is: `FILE:LINE:COLUMN: WHAT: …`.
pub fn json_error(path: &Path, what: &str, e: &serde_json::Error) -> String {
    format!(
        "{}:{}:{}: {what}: {e}",
        path.display(),
        e.line(),
        e.column()
    )
}

/// Writes an output file the user named, atomically (a temporary file, then a rename, so an
/// interrupted run leaves no half file); prints the error and returns [`EXIT_BAD_INPUT`] when the
/// path cannot be written.
pub fn write_output(cmd: &str, path: &Path, text: &str) -> Result<(), u8> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| bad_input(cmd, format_args!("cannot write {}: {e}", path.display())))
}

/// The exit code of a failed write to standard output: [`EXIT_BROKEN_PIPE`] when the reader went
/// away, else [`EXIT_FAIL`].
pub fn stdout_error(e: &std::io::Error) -> u8 {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        EXIT_BROKEN_PIPE
    } else {
        EXIT_FAIL
    }
}

/// Writes `text` to standard output and flushes it; the error is [`stdout_error`]'s code.
pub fn print_out(text: &str) -> Result<(), u8> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| stdout_error(&e))
}

/// The exit code of a run that finished: [`EXIT_HARNESS`] if the harness failed anywhere (the
/// results are incomplete), else [`EXIT_FAIL`] if anything failed or was found, else
/// [`EXIT_OK`].
pub fn outcome(failed: bool, harness_errors: bool) -> u8 {
    if harness_errors {
        EXIT_HARNESS
    } else if failed {
        EXIT_FAIL
    } else {
        EXIT_OK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_device_is_3_and_a_later_ioctl_4() {
        let no = KvmError::NoKvm(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert_eq!(host_error_code(&no), EXIT_NO_KVM);
        let ioctl = KvmError::Ioctl {
            ioctl: "KVM_GET_SUPPORTED_CPUID",
            errno: 12,
        };
        assert_eq!(host_error_code(&ioctl), EXIT_HARNESS);
    }

    #[test]
    fn a_harness_error_wins_over_a_failure() {
        assert_eq!(outcome(false, false), EXIT_OK);
        assert_eq!(outcome(true, false), EXIT_FAIL);
        assert_eq!(outcome(true, true), EXIT_HARNESS);
        assert_eq!(outcome(false, true), EXIT_HARNESS);
    }

    #[test]
    fn a_closed_pipe_is_141_and_another_write_error_1() {
        let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert_eq!(stdout_error(&pipe), 141);
        let full = std::io::Error::from_raw_os_error(28);
        assert_eq!(stdout_error(&full), EXIT_FAIL);
    }

    #[test]
    fn json_errors_name_file_line_and_column() {
        let e = serde_json::from_str::<serde_json::Value>("{\n  \"a\": ]").unwrap_err();
        let m = json_error(Path::new("b.json"), "not valid JSON", &e);
        assert!(m.starts_with("b.json:2:8: not valid JSON: "), "{m}");
    }
}

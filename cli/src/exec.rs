//! `kvmconf exec`: parse every input first, then run each case and print JSON Lines results.
//!
//! `--oracle` picks who runs the cases: KVM (the default), the reference interpreter, or both, in
//! which case every KVM result is compared field by field with the interpreter's and each mismatch
//! is printed to stderr (only the RFLAGS bits the interpreter reports as undefined are masked).

use crate::{EXIT_BAD_INPUT, EXIT_FAIL, EXIT_NO_KVM, EXIT_OK};
use kvmconf_guests::case::{Located, load_file};
use kvmconf_guests::interp;
use kvmconf_guests::result::{CaseResult, DiffMask, diff};
use kvmconf_harness::{Host, KvmError, Pool, run_fresh};
use std::io::Write;
use std::path::PathBuf;

/// Arguments of `kvmconf exec`.
#[derive(clap::Args)]
pub struct ExecArgs {
    /// Case files: .toml, .json, .jsonl (one case a line); `-` reads standard input.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Give every case a new VM instead of reusing pooled VMs.
    #[arg(long)]
    fresh: bool,
    /// Pretty-print each result (no longer one per line).
    #[arg(long)]
    pretty: bool,
    /// With the pool: compare all of guest RAM with a fresh image after every reset (slow).
    #[arg(long)]
    verify_reset: bool,
    /// Who runs the cases: `kvm`, `interp` (the reference interpreter; no KVM needed) or `both`
    /// (KVM's result is printed; a field-by-field diff goes to stderr and the exit code is 1 on any
    /// mismatch).
    #[arg(long, value_enum, default_value_t = Oracle::Kvm)]
    oracle: Oracle,
}

/// Who runs the cases of `kvmconf exec`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Oracle {
    /// This host's KVM.
    Kvm,
    /// The reference interpreter.
    Interp,
    /// Both, compared.
    Both,
}

/// Compares a KVM result with the interpreter's for the same case; returns the diff lines
/// (`path: kvm != interp`), empty when they agree. Only the RFLAGS bits the interpreter reports as
/// undefined at the end are masked.
pub fn oracle_diff(kvm: &CaseResult, case: &kvmconf_guests::case::Case) -> Vec<String> {
    let (model, undefined) = interp::run_with_undefined(case);
    let mask = DiffMask {
        rflags_ignore: undefined,
        ..DiffMask::default()
    };
    diff(kvm, &model, &mask)
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn print_result(out: &mut impl Write, r: &CaseResult, pretty: bool) -> bool {
    let text = if pretty {
        serde_json::to_string_pretty(r)
    } else {
        serde_json::to_string(r)
    }
    .expect("results serialize");
    writeln!(out, "{text}").is_ok()
}

/// Reads every file; prints every error; returns the cases or None.
pub fn load_all(files: &[PathBuf]) -> Option<Vec<Located>> {
    let mut cases = Vec::new();
    let mut bad = false;
    for f in files {
        match load_file(f) {
            Ok(mut v) => cases.append(&mut v),
            Err(e) => {
                eprintln!("kvmconf: bad input: {e}");
                bad = true;
            }
        }
    }
    (!bad).then_some(cases)
}

/// Opens /dev/kvm or explains why not.
pub fn open_host() -> Result<Host, u8> {
    Host::open().map_err(|e| {
        eprintln!("kvmconf: {e}");
        match e {
            KvmError::NoKvm(_) => EXIT_NO_KVM,
            _ => EXIT_FAIL,
        }
    })
}

/// Runs `kvmconf exec`.
pub fn main(a: ExecArgs) -> u8 {
    let Some(cases) = load_all(&a.files) else {
        return EXIT_BAD_INPUT;
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if a.oracle == Oracle::Interp {
        for c in &cases {
            if !print_result(&mut out, &interp::run(&c.case), a.pretty) {
                return EXIT_FAIL;
            }
        }
        let _ = out.flush();
        return EXIT_OK;
    }
    let host = match open_host() {
        Ok(h) => h,
        Err(code) => return code,
    };
    let mut pool = Pool::new(&host, 4);
    pool.verify = a.verify_reset;
    let mut code = EXIT_OK;
    let mut mismatches = 0usize;
    for c in &cases {
        let r = if a.fresh {
            run_fresh(&host, &c.case)
        } else {
            pool.run(&c.case)
        };
        match r {
            Ok(r) => {
                if !print_result(&mut out, &r, a.pretty) {
                    return EXIT_FAIL;
                }
                if a.oracle == Oracle::Both {
                    let d = oracle_diff(&r, &c.case);
                    if !d.is_empty() {
                        let _ = out.flush();
                        mismatches += 1;
                        eprintln!(
                            "kvmconf: {}:{}: case {:?}: KVM and interpreter differ (kvm != interp):",
                            c.file, c.line, c.case.name
                        );
                        for line in d {
                            eprintln!("  {line}");
                        }
                        code = EXIT_FAIL;
                    }
                }
            }
            Err(e) => {
                eprintln!(
                    "kvmconf: {}:{}: case {:?}: harness error: {e}",
                    c.file, c.line, c.case.name
                );
                code = EXIT_FAIL;
            }
        }
    }
    let _ = out.flush();
    if a.oracle == Oracle::Both {
        eprintln!(
            "kvmconf: oracle both: {} cases, {mismatches} mismatches",
            cases.len()
        );
    }
    code
}

//! `kvmconf exec`: parse every input first, then run each case and print JSON Lines results.
//!
//! `--oracle` picks who runs the cases: KVM (the default), the reference interpreter, or both, in
//! which case every KVM result is compared field by field with the interpreter's and each mismatch
//! is printed to stderr (only the RFLAGS bits the interpreter reports as undefined are masked).

use crate::common::{self, EXIT_OK, stdout_error};
use kvmconf_guests::interp;
use kvmconf_guests::result::CaseResult;
use kvmconf_harness::{Pool, run_fresh};
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

/// The fields in which KVM's result differs from the interpreter's for `case` (the differential
/// oracle's comparison, undefined flags masked), one line each.
pub fn oracle_diff(kvm: &CaseResult, case: &kvmconf_guests::case::Case) -> Vec<String> {
    kvmconf_cases::differential::compare(kvm, case)
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// The oracle's judgement of a mismatching case, one line a mismatch: each minimised and pinned
/// on its culprit ([`kvmconf_cases::differential::explain`]), then the known deviation of this
/// host that explains it or `unexplained`.
fn verdict_lines(
    host: &kvmconf_harness::Host,
    kvm: &CaseResult,
    case: &kvmconf_guests::case::Case,
) -> Vec<String> {
    let mut pool = Pool::new(host, 1);
    kvmconf_cases::differential::explain(case, kvm, |c| pool.run(c))
        .iter()
        .map(|m| {
            let class = m.symptom.culprit.describe();
            match kvmconf_cases::deviations::explain_here(&m.symptom) {
                Some(d) => format!("class {class}: known deviation {}", d.id),
                None => format!("class {class}: unexplained"),
            }
        })
        .collect()
}

fn print_result(out: &mut impl Write, r: &CaseResult, pretty: bool) -> Result<(), u8> {
    let text = if pretty {
        serde_json::to_string_pretty(r)
    } else {
        serde_json::to_string(r)
    }
    .expect("results serialize");
    writeln!(out, "{text}").map_err(|e| stdout_error(&e))
}

/// Runs `kvmconf exec`.
pub fn main(a: ExecArgs) -> u8 {
    let cases = match common::load_cases("exec", &a.files) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if a.oracle == Oracle::Interp {
        for c in &cases {
            if let Err(code) = print_result(&mut out, &interp::run(&c.case), a.pretty) {
                return code;
            }
        }
        return out.flush().map_or_else(|e| stdout_error(&e), |()| EXIT_OK);
    }
    let host = match common::open_host("exec") {
        Ok(h) => h,
        Err(code) => return code,
    };
    let mut pool = Pool::new(&host, 4);
    pool.verify = a.verify_reset;
    let (mut differ, mut harness_errors) = (false, false);
    let mut mismatches = 0usize;
    for c in &cases {
        let r = if a.fresh {
            run_fresh(&host, &c.case)
        } else {
            pool.run(&c.case)
        };
        match r {
            Ok(r) => {
                if let Err(code) = print_result(&mut out, &r, a.pretty) {
                    return code;
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
                        for line in verdict_lines(&host, &r, &c.case) {
                            eprintln!("  verdict: {line}");
                        }
                        differ = true;
                    }
                }
            }
            Err(e) => {
                eprintln!(
                    "kvmconf: {}:{}: case {:?}: harness error: {e}",
                    c.file, c.line, c.case.name
                );
                harness_errors = true;
            }
        }
    }
    if let Err(e) = out.flush() {
        return stdout_error(&e);
    }
    if a.oracle == Oracle::Both {
        eprintln!(
            "kvmconf: oracle both: {} cases, {mismatches} mismatches",
            cases.len()
        );
    }
    common::outcome(differ, harness_errors)
}

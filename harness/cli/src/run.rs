//! `kvmconf run`: the conformance catalogue against this host, with a progress line, a per-case
//! timeout, a table and summary, and JSON / TAP / JUnit outputs.

use crate::report::{Report, Row, Summary, junit, table, tap};
use kvmconf_cases::deviations::{self, Verdict};
use kvmconf_cases::registry::{Area, Check, glob};
use kvmconf_cases::runner::run_one;
use kvmconf_harness::{Host, KvmError, fingerprint};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// Exit code of `kvmconf run`: every case passed or is a known deviation.
pub const RUN_OK: u8 = 0;
/// Exit code of `kvmconf run`: an unexpected failure.
pub const RUN_FAIL: u8 = 1;
/// Exit code of `kvmconf run`: bad usage or no /dev/kvm.
pub const RUN_USAGE: u8 = 2;

/// Arguments of `kvmconf run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Only these areas (harness, system, vm, vcpu_state, run); repeatable.
    #[arg(long)]
    area: Vec<String>,
    /// Only checks whose id matches this glob (`*` and `?`), e.g. 'vm.memslot_*'.
    #[arg(long)]
    case: Option<String>,
    /// List the selected checks and exit.
    #[arg(long)]
    list: bool,
    /// Write the report as JSON to FILE (schema "kvmconf-run/1", see README).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Print KTAP / TAP version 13 on standard output instead of the table.
    #[arg(long)]
    tap: bool,
    /// Write a JUnit XML report to FILE.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Per-case wall-clock limit; a case past it is reported as failed and the run goes on.
    #[arg(long, default_value_t = 60_000, value_name = "MS")]
    timeout_ms: u64,
}

/// The checks the filters select, or a usage error.
pub fn select(areas: &[String], case: Option<&str>) -> Result<Vec<&'static Check>, String> {
    let mut want = Vec::new();
    for a in areas {
        match Area::parse(a) {
            Some(x) => want.push(x),
            None => {
                let names: Vec<&str> = Area::ALL.iter().map(|a| a.name()).collect();
                return Err(format!(
                    "unknown area {a:?}: expected one of {}",
                    names.join(", ")
                ));
            }
        }
    }
    let sel: Vec<&'static Check> = kvmconf_cases::catalogue::all()
        .into_iter()
        .filter(|c| want.is_empty() || want.contains(&c.area))
        .filter(|c| case.is_none_or(|g| glob(g, c.id)))
        .collect();
    if sel.is_empty() {
        return Err("no check matches the filters (try --list)".into());
    }
    Ok(sel)
}

fn write_file(path: &PathBuf, text: &str) -> Result<(), String> {
    // Write to a temporary file first so an interrupted run leaves no half report.
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Runs `kvmconf run`.
pub fn main(a: RunArgs) -> u8 {
    let checks = match select(&a.area, a.case.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kvmconf run: {e}");
            return RUN_USAGE;
        }
    };
    if a.list {
        for c in &checks {
            println!("{:<10} {:<70} {}", c.area.name(), c.id, c.doc);
        }
        return RUN_OK;
    }
    let host = match Host::open() {
        Ok(h) => Arc::new(h),
        Err(e) => {
            eprintln!("kvmconf run: {e}");
            return match e {
                KvmError::NoKvm(_) => RUN_USAGE,
                _ => RUN_FAIL,
            };
        }
    };
    let fp = fingerprint::read(Some(&host));
    let devs = Arc::new(deviations::known());
    let fp_arc = Arc::new(fp.clone());
    if !a.tap {
        println!(
            "kvmconf {} — KVM API conformance",
            env!("CARGO_PKG_VERSION")
        );
        for l in fp.describe() {
            println!("{l}");
        }
        println!();
    }
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut rows = Vec::with_capacity(checks.len());
    let limit = Duration::from_millis(a.timeout_ms.max(1));
    for (i, &check) in checks.iter().enumerate() {
        let (tx, rx) = mpsc::channel();
        let (h, d, f) = (Arc::clone(&host), Arc::clone(&devs), Arc::clone(&fp_arc));
        let t0 = Instant::now();
        let spawned = std::thread::Builder::new()
            .name(check.id.into())
            .spawn(move || {
                let _ = tx.send(run_one(check, &h, &d, &f));
            });
        let (verdict, ms) = match spawned {
            Err(e) => (Verdict::Fail(format!("cannot start a thread: {e}")), 0.0),
            Ok(_) => match rx.recv_timeout(limit) {
                Ok(j) => (j.verdict, j.time.as_secs_f64() * 1e3),
                // The thread is left behind with its VM; the run goes on.
                Err(_) => (
                    Verdict::Fail(format!("hung: no result within {} ms", a.timeout_ms)),
                    t0.elapsed().as_secs_f64() * 1e3,
                ),
            },
        };
        let row = Row::new(check.id, check.area.name(), check.doc, &verdict, ms);
        let line = format!("[{}/{}] {} {}", i + 1, checks.len(), row.result, check.id);
        if tty {
            eprint!("\r\x1b[K{line}");
        } else if row.result != "pass" || (i + 1) % 50 == 0 || i + 1 == checks.len() {
            eprintln!("{line}");
        }
        rows.push(row);
    }
    if tty {
        eprintln!();
    }
    let report = Report {
        schema: "kvmconf-run/1",
        kvmconf_version: env!("CARGO_PKG_VERSION"),
        host: fp,
        duration_s: start.elapsed().as_secs_f64(),
        summary: Summary::of(&rows),
        results: rows,
    };
    let mut out = std::io::stdout().lock();
    let text = if a.tap { tap(&report) } else { table(&report) };
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    if let Some(p) = &a.json {
        let j = serde_json::to_string_pretty(&report).expect("reports serialize");
        if let Err(e) = write_file(p, &j) {
            eprintln!("kvmconf run: {e}");
            return RUN_FAIL;
        }
    }
    if let Some(p) = &a.junit
        && let Err(e) = write_file(p, &junit(&report))
    {
        eprintln!("kvmconf run: {e}");
        return RUN_FAIL;
    }
    if report.summary.fail > 0 {
        RUN_FAIL
    } else {
        RUN_OK
    }
}

//! `kvmconf run`: the conformance catalogue, the hand-written corpus against its snapshots and a
//! fixed-seed differential sample against this host, with a progress line, a per-case timeout, a
//! table and summary, and JSON / TAP / JUnit outputs.

use crate::common::{self, EXIT_FAIL, EXIT_OK};
use crate::report::{Report, Row, Summary, junit, table, tap};
use kvmconf_cases::deviations::{self, Verdict};
use kvmconf_cases::registry::{Area, glob};
use kvmconf_cases::runner::{Item, Sources, items, run_item, source_tree_corpus};
use kvmconf_harness::fingerprint;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// Generated programs a mode in the differential sample by default.
pub const DEFAULT_PROGRAMS: u32 = 300;

/// Arguments of `kvmconf run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Only these areas (harness, system, vm, vcpu_state, run, corpus, differential); repeatable.
    #[arg(long)]
    area: Vec<String>,
    /// Only cases whose id matches this glob (`*` and `?`), e.g. 'vm.memslot_*' or 'corpus.arith/*';
    /// repeatable (a case matching any of them).
    #[arg(long, value_name = "GLOB")]
    case: Vec<String>,
    /// Generated programs a mode in the differential sample (the CPL3 and MMIO variants draw a
    /// fifth as many); 0 leaves the sample out.
    #[arg(long, default_value_t = DEFAULT_PROGRAMS, value_name = "N")]
    programs: u32,
    /// Leave the corpus out.
    #[arg(long)]
    no_corpus: bool,
    /// The corpus directory (default: this source tree's cases/corpus).
    #[arg(long, value_name = "DIR")]
    corpus: Option<PathBuf>,
    /// The snapshot directory the corpus is compared with (default: this source tree's snapshots).
    #[arg(long, value_name = "DIR")]
    snapshots: Option<PathBuf>,
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

/// The items the filters select, or a usage error.
pub fn select(areas: &[String], cases: &[String], sources: &Sources) -> Result<Vec<Item>, String> {
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
    let sel: Vec<Item> = items(sources)?
        .into_iter()
        .filter(|c| want.is_empty() || want.contains(&c.area()))
        .filter(|c| cases.is_empty() || cases.iter().any(|g| glob(g, &c.id())))
        .collect();
    if sel.is_empty() {
        return Err("no case matches the filters (try --list)".into());
    }
    Ok(sel)
}

/// What to run besides the catalogue, from the options: a corpus directory that does not exist is
/// an error when given, and left out with a note when it is the default (an installed binary).
fn sources(a: &RunArgs) -> Result<Sources, String> {
    let (default_dir, default_snaps) = source_tree_corpus();
    let corpus = if a.no_corpus {
        None
    } else {
        let dir = a.corpus.clone().unwrap_or(default_dir);
        let snaps = a.snapshots.clone().unwrap_or(default_snaps);
        if dir.is_dir() {
            Some((dir, snaps))
        } else if a.corpus.is_some() {
            return Err(format!("--corpus {}: not a directory", dir.display()));
        } else {
            eprintln!(
                "kvmconf run: no corpus at {}: the corpus area is left out (--corpus DIR)",
                dir.display()
            );
            None
        }
    };
    Ok(Sources {
        corpus,
        programs: a.programs,
    })
}

/// Runs `kvmconf run`.
pub fn main(a: RunArgs) -> u8 {
    let checks = match sources(&a).and_then(|src| select(&a.area, &a.case, &src)) {
        Ok(c) => c,
        Err(e) => return common::bad_input("run", e),
    };
    if a.list {
        for c in &checks {
            println!("{:<12} {:<70} {}", c.area().name(), c.id(), c.doc());
        }
        return EXIT_OK;
    }
    let host = match common::open_host("run") {
        Ok(h) => Arc::new(h),
        Err(code) => return code,
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
    for (i, item) in checks.iter().enumerate() {
        let (tx, rx) = mpsc::channel();
        let (h, d, f) = (Arc::clone(&host), Arc::clone(&devs), Arc::clone(&fp_arc));
        let t0 = Instant::now();
        let id = item.id();
        let job = item.clone();
        let spawned = std::thread::Builder::new().name(id.clone()).spawn(move || {
            let _ = tx.send(run_item(&job, &h, &d, &f));
        });
        let (verdict, ms) = match spawned {
            Err(e) => (Verdict::Fail(format!("cannot start a thread: {e}")), 0.0),
            Ok(_) => match rx.recv_timeout(limit) {
                Ok((v, t)) => (v, t.as_secs_f64() * 1e3),
                // The thread is left behind with its VM; the run goes on.
                Err(_) => (
                    Verdict::Fail(format!("hung: no result within {} ms", a.timeout_ms)),
                    t0.elapsed().as_secs_f64() * 1e3,
                ),
            },
        };
        let mut row = Row::new(&id, item.area().name(), &item.doc(), &verdict, ms);
        row.programs = item.programs();
        let line = format!("[{}/{}] {} {}", i + 1, checks.len(), row.result, id);
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
        areas: Summary::by_area(&rows),
        results: rows,
    };
    let text = if a.tap { tap(&report) } else { table(&report) };
    // The files are written even when nobody reads standard output any more.
    let printed = common::print_out(&text);
    if let Some(p) = &a.json {
        let j = serde_json::to_string_pretty(&report).expect("reports serialize");
        if let Err(code) = common::write_output("run", p, &j) {
            return code;
        }
    }
    if let Some(p) = &a.junit
        && let Err(code) = common::write_output("run", p, &junit(&report))
    {
        return code;
    }
    if let Err(code) = printed {
        return code;
    }
    if report.summary.fail > 0 {
        EXIT_FAIL
    } else {
        EXIT_OK
    }
}

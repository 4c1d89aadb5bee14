//! `kvmconf fuzz`: in-process, generator-driven fuzzing on stable Rust. Worker threads (one VM pool
//! each) take input indices from a shared counter; input `i` of a run is built from
//! `(seed, i)` alone, so `--seed S --index I` replays it anywhere. Findings are deduplicated by
//! signature; known deviations are counted as known; each new finding is minimised and written
//! atomically to the artifacts folder as a case file that `kvmconf repro` replays.

pub(crate) mod bench;

use crate::common::{self, EXIT_BAD_INPUT, EXIT_FAIL, EXIT_HARNESS, EXIT_OK, open_host};
use crate::procstat::{Figure, ThreadUse, rss_kib};
use kvmconf_cases::fuzz::{
    Exec, Finding, Input, Runner, Target, artifact, gen_guest, interpret_guest,
    ioctl_seq::fd_count, kcov_status, source_for,
};
use kvmconf_harness::{Host, KvmError};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Arguments of `kvmconf fuzz`.
#[derive(clap::Args)]
pub struct FuzzArgs {
    /// What to fuzz: guest_vs_interp, guest_emulated_vs_native, state_entry, case_parser,
    /// ioctl_sequence.
    #[arg(long, default_value = "guest_vs_interp")]
    target: String,
    /// Stop after this many seconds (default 60 unless --cases is given).
    #[arg(long)]
    duration: Option<f64>,
    /// Stop after this many inputs (over all workers).
    #[arg(long)]
    cases: Option<u64>,
    /// Parallel workers, each with its own /dev/kvm handle and VM pool.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Seed of the run (default: from the clock; printed so the run can be replayed).
    #[arg(long)]
    seed: Option<u64>,
    /// Replay the single input with this index of the run (with --seed) and print its result; a
    /// finding is minimised and written to --artifacts as in a run.
    #[arg(long)]
    index: Option<u64>,
    /// Where minimised findings are written.
    #[arg(long, default_value = "artifacts")]
    artifacts: PathBuf,
    /// Seconds between statistics lines on stderr (0: none).
    #[arg(long, default_value_t = 1.0)]
    stats_every: f64,
    /// Measure execs/s with one and two workers against the raw pooled case rate and the
    /// interpreter alone, each with one and two threads (--duration: seconds per measurement).
    #[arg(long)]
    bench: bool,
    /// Interleaved rounds of --bench (medians are printed).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Pin every worker (and --bench thread) to this CPU: two workers then time-share one CPU.
    #[arg(long)]
    pin_cpu: Option<usize>,
    /// Write new findings as found, without minimising them (for long soak runs).
    #[arg(long)]
    no_minimise: bool,
    /// Also minimise and write findings a known deviation explains (to get a small reproducer).
    #[arg(long)]
    keep_known: bool,
}

/// One unique finding.
struct Unique {
    count: u64,
    known: Option<String>,
    artifact: Option<PathBuf>,
    index: u64,
    details: Vec<String>,
}

#[derive(Default)]
struct Shared {
    execs: AtomicU64,
    rejected: AtomicU64,
    mismatches: AtomicU64,
    known: AtomicU64,
    panics: AtomicU64,
    errors: AtomicU64,
    next: AtomicU64,
    stop: AtomicBool,
    signals: Mutex<HashSet<u64>>,
    /// By signature and whether a known deviation explains it: an unexplained mismatch is not
    /// absorbed by a known one that happens to share its (coarse) signature.
    findings: Mutex<BTreeMap<(String, bool), Unique>>,
    first_errors: Mutex<Vec<String>>,
    /// Each finished worker's executions and scheduler times (for --bench).
    thread_use: Mutex<Vec<ThreadUse>>,
}

/// What one fuzz run did.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Inputs executed (rejected ones included).
    pub execs: u64,
    /// Inputs out of the oracle's scope.
    pub rejected: u64,
    /// Executions with a broken invariant.
    pub mismatches: u64,
    /// ... of which a known deviation explains.
    pub known: u64,
    /// Harness panics caught.
    pub panics: u64,
    /// Harness errors.
    pub errors: u64,
    /// Distinct KVM-side signals.
    pub signal: usize,
    /// Unique new findings.
    pub unique_new: usize,
    /// Unique known findings.
    pub unique_known: usize,
    /// Seconds.
    pub secs: f64,
}

struct Config {
    target: Target,
    seed: u64,
    cases: Option<u64>,
    duration: Option<Duration>,
    jobs: usize,
    artifacts: PathBuf,
    stats_every: f64,
    quiet: bool,
    minimise: bool,
    keep_known: bool,
    pin_cpu: Option<usize>,
}

/// The `# minimised:` note of an artifact: what shrinking did.
fn shrink_note(before: &Finding, after: &Finding) -> String {
    match (&before.input, &after.input) {
        (Input::State(a), Input::State(b)) => format!(
            "minimised: {} -> {} changed state fields",
            a.changes().count(),
            b.changes().count()
        ),
        (Input::Calls(a), Input::Calls(b)) => {
            format!("minimised: {} -> {} calls", a.len(), b.len())
        }
        _ => format!(
            "minimised: code {} -> {} bytes",
            before.case.memory.first().map_or(0, |m| m.hex.0.len()),
            after.case.memory.first().map_or(0, |m| m.hex.0.len())
        ),
    }
}

fn record(sh: &Shared, cfg: &Config, runner: Option<&mut Runner<'_>>, index: u64, f: Finding) {
    sh.mismatches.fetch_add(1, Ordering::Relaxed);
    if f.known.is_some() {
        sh.known.fetch_add(1, Ordering::Relaxed);
    }
    let key = (f.signature.clone(), f.known.is_some());
    {
        let mut m = sh.findings.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(u) = m.get_mut(&key) {
            u.count += 1;
            return;
        }
        m.insert(
            key.clone(),
            Unique {
                count: 1,
                known: f.known.clone(),
                artifact: None,
                index,
                details: f.details.clone(),
            },
        );
    }
    if f.known.is_some() && !cfg.keep_known {
        return;
    }
    let written = write_finding(runner, &f, cfg.seed, index, &cfg.artifacts, cfg.minimise);
    let mut m = sh.findings.lock().unwrap_or_else(|p| p.into_inner());
    match written {
        Ok(p) => {
            if !cfg.quiet {
                eprintln!("new finding {} -> {}", f.signature, p.display());
            }
            if let Some(u) = m.get_mut(&key) {
                u.artifact = Some(p);
            }
        }
        Err(e) => eprintln!("cannot write artifact for {}: {e}", f.signature),
    }
}

/// Shrinks finding `f` (input `index` of run `seed`) while its signature stays the same, unless
/// `minimise` is off or there is no runner (`case_parser`), and writes it atomically to `dir` as a
/// case, state or sequence file: the file's path.
fn write_finding(
    runner: Option<&mut Runner<'_>>,
    f: &Finding,
    seed: u64,
    index: u64,
    dir: &std::path::Path,
    minimise: bool,
) -> std::io::Result<PathBuf> {
    let (small, note, fresh) = match runner {
        Some(r) if minimise => {
            let (small, fresh) = r.shrink_verified(f);
            let note = shrink_note(f, &small);
            (small, note, fresh)
        }
        Some(_) => (f.clone(), "minimised: no (--no-minimise)".to_string(), None),
        None => (
            f.clone(),
            "minimised: no (case_parser inputs are not shrunk)".to_string(),
            None,
        ),
    };
    let mut notes = vec![
        format!(
            "replay: kvmconf fuzz --target {} --seed {seed} --index {index}",
            f.target.name()
        ),
        note,
    ];
    if let Some(fresh) = fresh {
        if fresh != kvmconf_cases::fuzz::minimise::Fresh::Smallest {
            eprintln!("note: {} (input {index}): {fresh}", f.signature);
        }
        notes.push(fresh.to_string());
    }
    let text = artifact::render(&small, &notes).map_err(std::io::Error::other)?;
    artifact::write_atomic(dir, &artifact::file_name(&small), &text)
}

/// guest_vs_interp inputs a worker takes at a time.
const FUZZ_BATCH: u64 = 32;

fn worker(sh: &Shared, cfg: &Config, deadline: Option<Instant>) {
    if let Some(cpu) = cfg.pin_cpu
        && let Err(e) = kvmconf_harness::affinity::pin_current_thread(cpu)
    {
        sh.errors.fetch_add(1, Ordering::Relaxed);
        sh.first_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("--pin-cpu {cpu}: {e}"));
        sh.stop.store(true, Ordering::Relaxed);
        return;
    }
    let host = if cfg.target.needs_kvm() {
        match Host::open() {
            Ok(h) => Some(h),
            Err(e) => {
                sh.errors.fetch_add(1, Ordering::Relaxed);
                sh.first_errors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(e.to_string());
                sh.stop.store(true, Ordering::Relaxed);
                return;
            }
        }
    } else {
        None
    };
    let mut runner = host.as_ref().map(Runner::new);
    let mut local_signals: Vec<u64> = Vec::new();
    let mark = ThreadUse::start();
    let mut execs = 0u64;
    // What one input's execution came to (a panic, a harness error, or its Exec) is counted and
    // recorded the same way however the input was run; true when the runner must be renewed.
    let mut handle = |index: u64,
                      out: std::thread::Result<Result<Exec, KvmError>>,
                      runner: Option<&mut Runner<'_>>,
                      local_signals: &mut Vec<u64>|
     -> bool {
        sh.execs.fetch_add(1, Ordering::Relaxed);
        execs += 1;
        match out {
            Err(_) => {
                sh.panics.fetch_add(1, Ordering::Relaxed);
                sh.first_errors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(format!("harness panic at index {index}"));
                // The pool may hold a VM in an unknown state after a panic: start a new one.
                true
            }
            Ok(Err(e)) => {
                sh.errors.fetch_add(1, Ordering::Relaxed);
                note_error(sh, index, &e);
                true
            }
            Ok(Ok(x)) => {
                if x.rejected {
                    sh.rejected.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                local_signals.push(x.signal);
                if local_signals.len() >= 256 {
                    let mut s = sh.signals.lock().unwrap_or_else(|p| p.into_inner());
                    s.extend(local_signals.drain(..));
                }
                if let Some(f) = x.finding {
                    record(sh, cfg, runner, index, f);
                }
                false
            }
        }
    };
    // guest_vs_interp inputs go in batches: generated and interpreted, then run on KVM back to
    // back, then judged (see `differential::compare_batch` for why the order matters here). An
    // input is still derived from (seed, index) alone, so replay is unchanged.
    let batch = if cfg.target == Target::GuestVsInterp && runner.is_some() {
        FUZZ_BATCH
    } else {
        1
    };
    loop {
        if sh.stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let first = sh.next.fetch_add(batch, Ordering::Relaxed);
        let end = cfg.cases.map_or(first + batch, |n| (first + batch).min(n));
        if first >= end {
            break;
        }
        if batch == 1 {
            let mut src = source_for(cfg.seed, first);
            let out =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &mut runner {
                    Some(r) => r.exec_source(cfg.target, &mut src),
                    None => Ok(kvmconf_cases::fuzz::case_parser(
                        &kvmconf_cases::fuzz::gen_parser_input(&mut src),
                    )),
                }));
            if handle(first, out, runner.as_mut(), &mut local_signals) {
                runner = host.as_ref().map(Runner::new);
            }
            continue;
        }
        // Generate and interpret.
        let mut interpreted = Vec::with_capacity(batch as usize);
        for index in first..end {
            let mut src = source_for(cfg.seed, index);
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let case = gen_guest(&mut src);
                interpret_guest(&case).map(|o| (case, o))
            }));
            match out {
                Ok(Some((case, o))) => interpreted.push((index, case, o)),
                Ok(None) => {
                    let rejected = Exec {
                        rejected: true,
                        ..Exec::default()
                    };
                    if handle(index, Ok(Ok(rejected)), runner.as_mut(), &mut local_signals) {
                        runner = host.as_ref().map(Runner::new);
                    }
                }
                Err(p) => {
                    if handle(index, Err(p), runner.as_mut(), &mut local_signals) {
                        runner = host.as_ref().map(Runner::new);
                    }
                }
            }
        }
        // KVM runs back to back.
        let mut ran = Vec::with_capacity(interpreted.len());
        for (index, case, o) in interpreted {
            let Some(r) = runner.as_mut() else { break };
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.pool.run(&case)));
            match out {
                Ok(Ok(k)) => ran.push((index, case, o, k)),
                Ok(Err(e)) => {
                    if handle(index, Ok(Err(e)), runner.as_mut(), &mut local_signals) {
                        runner = host.as_ref().map(Runner::new);
                    }
                }
                Err(p) => {
                    if handle(index, Err(p), runner.as_mut(), &mut local_signals) {
                        runner = host.as_ref().map(Runner::new);
                    }
                }
            }
        }
        // Verdicts.
        for (index, case, o, k) in ran {
            let Some(r) = runner.as_mut() else { break };
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                r.judge_guest(&case, &o, &k)
            }));
            if handle(index, out, runner.as_mut(), &mut local_signals) {
                runner = host.as_ref().map(Runner::new);
            }
        }
    }
    sh.signals
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(local_signals);
    sh.thread_use
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(ThreadUse::since(mark, execs));
}

fn note_error(sh: &Shared, index: u64, e: &KvmError) {
    let mut v = sh.first_errors.lock().unwrap_or_else(|p| p.into_inner());
    if v.len() < 10 {
        v.push(format!("harness error at index {index}: {e}"));
    }
}

fn stats_line(sh: &Shared, t: f64) -> String {
    let execs = sh.execs.load(Ordering::Relaxed);
    let (u_new, u_known) = {
        let m = sh.findings.lock().unwrap_or_else(|p| p.into_inner());
        let k = m.values().filter(|u| u.known.is_some()).count();
        (m.len() - k, k)
    };
    format!(
        "[{t:7.1}s] execs {execs} ({:.0}/s)  rejected {}  mismatches {} ({} known)  unique {u_new} new, {u_known} known  signal {}  panics {}  errors {}",
        execs as f64 / t.max(1e-9),
        sh.rejected.load(Ordering::Relaxed),
        sh.mismatches.load(Ordering::Relaxed),
        sh.known.load(Ordering::Relaxed),
        sh.signals.lock().unwrap_or_else(|p| p.into_inner()).len(),
        sh.panics.load(Ordering::Relaxed),
        sh.errors.load(Ordering::Relaxed),
    )
}

fn run(cfg: &Config) -> (Summary, Arc<Shared>) {
    let sh = Arc::new(Shared::default());
    let t0 = Instant::now();
    let deadline = cfg.duration.map(|d| t0 + d);
    std::thread::scope(|s| {
        for _ in 0..cfg.jobs.max(1) {
            let sh = &sh;
            s.spawn(move || worker(sh, cfg, deadline));
        }
        if cfg.stats_every > 0.0 && !cfg.quiet {
            let every = Duration::from_secs_f64(cfg.stats_every);
            let mut next = t0 + every;
            loop {
                std::thread::sleep(Duration::from_millis(20));
                let done = sh.stop.load(Ordering::Relaxed)
                    || deadline.is_some_and(|d| Instant::now() >= d)
                    || cfg
                        .cases
                        .is_some_and(|n| sh.next.load(Ordering::Relaxed) >= n);
                if done {
                    break;
                }
                if Instant::now() >= next {
                    eprintln!("{}", stats_line(&sh, t0.elapsed().as_secs_f64()));
                    next += every;
                }
            }
        }
    });
    let secs = t0.elapsed().as_secs_f64();
    let m = sh.findings.lock().unwrap_or_else(|p| p.into_inner());
    let unique_known = m.values().filter(|u| u.known.is_some()).count();
    let summary = Summary {
        execs: sh.execs.load(Ordering::Relaxed),
        rejected: sh.rejected.load(Ordering::Relaxed),
        mismatches: sh.mismatches.load(Ordering::Relaxed),
        known: sh.known.load(Ordering::Relaxed),
        panics: sh.panics.load(Ordering::Relaxed),
        errors: sh.errors.load(Ordering::Relaxed),
        signal: sh.signals.lock().unwrap_or_else(|p| p.into_inner()).len(),
        unique_new: m.len() - unique_known,
        unique_known,
        secs,
    };
    drop(m);
    (summary, sh)
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

/// Runs `kvmconf fuzz`.
pub fn main(a: FuzzArgs) -> u8 {
    let Some(target) = Target::from_name(&a.target) else {
        eprintln!(
            "kvmconf fuzz: --target: expected one of {}, got {:?}",
            Target::ALL.map(Target::name).join(", "),
            a.target
        );
        return EXIT_BAD_INPUT;
    };
    if (target.needs_kvm() || a.bench)
        && let Err(code) = open_host("fuzz")
    {
        return code;
    }
    let seed = a.seed.unwrap_or_else(clock_seed);
    if a.bench {
        return bench::bench(&a, seed);
    }
    if let Some(index) = a.index {
        return replay(target, seed, index, &a);
    }
    match kcov_status() {
        Ok(()) => eprintln!(
            "KCOV: /sys/kernel/debug/kcov present; kvmconf fuzz uses KVM-side signal only (the cargo-fuzz targets report it too)"
        ),
        Err(why) => eprintln!("KCOV: skipped: {why}; coverage signal is KVM-side only"),
    }
    let cfg = Config {
        target,
        seed,
        cases: a.cases,
        duration: a
            .duration
            .or(if a.cases.is_none() { Some(60.0) } else { None })
            .map(Duration::from_secs_f64),
        jobs: a.jobs.max(1),
        artifacts: a.artifacts.clone(),
        stats_every: a.stats_every,
        quiet: false,
        minimise: !a.no_minimise,
        keep_known: a.keep_known,
        pin_cpu: a.pin_cpu,
    };
    let (fd0, rss0) = (fd_count(), rss_kib());
    eprintln!(
        "kvmconf fuzz: target {} seed {seed} jobs {} artifacts {}; start: {fd0} fds, RSS {rss0} KiB",
        target.name(),
        cfg.jobs,
        cfg.artifacts.display()
    );
    let (s, sh) = run(&cfg);
    let (fd1, rss1) = (fd_count(), rss_kib());
    eprintln!("{}", stats_line(&sh, s.secs));
    println!(
        "fuzz {}: {} execs in {:.1} s ({:.0}/s), {} rejected, {} mismatches ({} known), unique findings: {} new, {} known; signal {}; panics {}; harness errors {}",
        target.name(),
        s.execs,
        s.secs,
        s.execs as f64 / s.secs.max(1e-9),
        s.rejected,
        s.mismatches,
        s.known,
        s.unique_new,
        s.unique_known,
        s.signal,
        s.panics,
        s.errors
    );
    println!(
        "resources: fds {fd0} -> {fd1}; RSS {rss0} KiB -> {rss1} KiB ({:+} KiB)",
        rss1 as i64 - rss0 as i64
    );
    {
        let uses = sh.thread_use.lock().unwrap_or_else(|p| p.into_inner());
        let f = Figure::of(&uses, s.secs, 0.0);
        // Workers waiting for a CPU mean more jobs than free CPUs: on this kind of host two VMs
        // time-sharing one CPU cost more per execution than one (README, fuzz Figures).
        println!(
            "scheduling: {} workers on CPU {:.0}%, waiting for a CPU {:.0}%, blocked {:.0}% of their time; {:.0} CPU us/exec",
            uses.len(),
            f.on_cpu * 100.0,
            f.runq * 100.0,
            f.blocked * 100.0,
            f.us_per_exec
        );
    }
    for e in sh
        .first_errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        println!("error: {e}");
    }
    let m = sh.findings.lock().unwrap_or_else(|p| p.into_inner());
    for ((sig, _), u) in m.iter() {
        match &u.known {
            Some(id) => println!(
                "known    {sig} x{} (deviation {id}){}",
                u.count,
                u.artifact
                    .as_ref()
                    .map_or(String::new(), |p| format!(" -> {}", p.display()))
            ),
            None => {
                println!(
                    "FINDING  {sig} x{} -> {} (replay: --seed {seed} --index {})",
                    u.count,
                    u.artifact
                        .as_ref()
                        .map_or("(not written)".into(), |p| p.display().to_string()),
                    u.index
                );
                for d in u.details.iter().take(4) {
                    println!("           {d}");
                }
            }
        }
    }
    common::outcome(s.unique_new > 0, s.panics > 0 || s.errors > 0)
}

/// `kvmconf fuzz --index`: runs input `index` of run `seed` and prints its result; a finding is
/// then written as the live loop writes it (shrunk unless `--no-minimise`, a known one only with
/// `--keep-known`). Exit code as for a run: 1 for a new finding, 0 otherwise; 4 for a harness
/// error, 2 when the finding cannot be written to `--artifacts`.
fn replay(target: Target, seed: u64, index: u64, a: &FuzzArgs) -> u8 {
    let mut src = source_for(seed, index);
    let host = if target.needs_kvm() {
        match open_host("fuzz") {
            Ok(h) => Some(h),
            Err(code) => return code,
        }
    } else {
        None
    };
    let mut runner = host.as_ref().map(Runner::new);
    let out = match &mut runner {
        Some(r) => r.exec_source(target, &mut src),
        None => Ok(kvmconf_cases::fuzz::case_parser(
            &kvmconf_cases::fuzz::gen_parser_input(&mut src),
        )),
    };
    let f = match out {
        Err(e) => {
            println!("harness error: {e}");
            return EXIT_HARNESS;
        }
        Ok(x) if x.rejected => {
            println!("input {index} of seed {seed} is out of the oracle's scope (rejected)");
            return EXIT_OK;
        }
        Ok(Exec {
            finding: None,
            signal,
            ..
        }) => {
            println!("input {index} of seed {seed}: no difference (signal {signal:016x})");
            return EXIT_OK;
        }
        Ok(Exec {
            finding: Some(f), ..
        }) => f,
    };
    println!(
        "input {index} of seed {seed}: {} {}",
        f.signature,
        f.known
            .as_ref()
            .map_or(String::new(), |k| format!("(known: {k})"))
    );
    for d in &f.details {
        println!("  {d}");
    }
    match artifact::render(&f, &[]) {
        Ok(t) => println!("{t}"),
        Err(e) => println!("(cannot render the input: {e})"),
    }
    let verdict = if f.known.is_some() {
        EXIT_OK
    } else {
        EXIT_FAIL
    };
    if f.known.is_some() && !a.keep_known {
        println!("known finding: not written (--keep-known writes it)");
        return verdict;
    }
    match write_finding(
        runner.as_mut(),
        &f,
        seed,
        index,
        &a.artifacts,
        !a.no_minimise,
    ) {
        Ok(p) => {
            println!("written: {}", p.display());
            println!("repro: kvmconf repro {}", p.display());
            verdict
        }
        Err(e) => {
            eprintln!(
                "kvmconf fuzz: --artifacts: cannot write artifact for {}: {e}",
                f.signature
            );
            EXIT_BAD_INPUT
        }
    }
}

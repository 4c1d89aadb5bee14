//! `kvmconf fuzz --bench`: execs/s of the fuzz loop with one and two workers against the raw pooled
//! case rate and the interpreter alone, each with one and two threads, in interleaved rounds.

use super::{Config, FuzzArgs, run};
use crate::common::{EXIT_HARNESS, EXIT_OK};
use crate::procstat::{Figure, ThreadUse, cpu_ticks};
use kvmconf_cases::fuzz::{Target, source_for};
use kvmconf_guests::case::Case;
use kvmconf_harness::{Host, Pool};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What one bench figure measures, per thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    /// `Pool::run` of the trivial benchmark case (mov, add, out, hlt; long64).
    RawTrivial,
    /// `Pool::run` of the fuzzer's generated cases.
    RawGenerated,
    /// The interpreter alone (`Machine::new(case).run()`) on the generated cases: no KVM.
    Interp,
    /// The whole `kvmconf fuzz --target guest_vs_interp` loop (generate, interpret, run, compare).
    Fuzz,
}

impl Work {
    const ALL: [Work; 4] = [
        Work::RawTrivial,
        Work::RawGenerated,
        Work::Interp,
        Work::Fuzz,
    ];

    fn label(self) -> &'static str {
        match self {
            Work::RawTrivial => "raw pooled rate, trivial case (Pool::run only)",
            Work::RawGenerated => "raw pooled rate, the fuzzer's generated cases",
            Work::Interp => "interpreter only, the generated cases (no KVM)",
            Work::Fuzz => "kvmconf fuzz --target guest_vs_interp",
        }
    }
}

/// The generated cases the bench runs (the first inputs of the fuzzer's run with `seed`).
fn bench_cases(seed: u64) -> Vec<Case> {
    (0..2000)
        .map(|i| kvmconf_cases::fuzz::gen_guest(&mut source_for(seed, i)))
        .collect()
}

fn trivial_case() -> Case {
    let mut c = Case::new(
        "bench",
        kvmconf_guests::case::Mode::Long64,
        0x1000,
        // mov eax, 0x2a; add eax, 1; out 0xf1, al; hlt
        vec![0xb8, 0x2a, 0, 0, 0, 0x83, 0xc0, 0x01, 0xe6, 0xf1, 0xf4],
    );
    c.regs.rsp = Some(0x8000.into());
    c
}

/// Runs `work` on one thread for `secs`, after `start` lets every thread go.
fn bench_thread(
    work: Work,
    cases: &[Case],
    start: &std::sync::Barrier,
    secs: f64,
    pin_cpu: Option<usize>,
) -> Result<ThreadUse, String> {
    if let Some(cpu) = pin_cpu {
        kvmconf_harness::affinity::pin_current_thread(cpu)
            .map_err(|e| format!("--pin-cpu {cpu}: {e}"))?;
    }
    let host = match work {
        Work::Interp => None,
        _ => Some(Host::open().map_err(|e| e.to_string())?),
    };
    let mut pool = host.as_ref().map(|h| Pool::new(h, 4));
    let trivial = trivial_case();
    start.wait();
    let mark = ThreadUse::start();
    let mut n = 0u64;
    while mark.0.elapsed().as_secs_f64() < secs {
        let c = &cases[n as usize % cases.len()];
        match (work, pool.as_mut()) {
            (Work::RawTrivial, Some(p)) => drop(p.run(&trivial).map_err(|e| e.to_string())?),
            (Work::RawGenerated, Some(p)) => drop(p.run(c).map_err(|e| e.to_string())?),
            _ => drop(kvmconf_guests::interp::Machine::new(c).run()),
        }
        n += 1;
    }
    Ok(ThreadUse::since(mark, n))
}

/// Measures `work` on `threads` threads for `secs`.
fn measure(
    work: Work,
    threads: usize,
    secs: f64,
    seed: u64,
    cases: &[Case],
    pin_cpu: Option<usize>,
) -> Result<Figure, String> {
    let (own0, busy0) = cpu_ticks();
    let t = Instant::now();
    let uses: Vec<ThreadUse> = if work == Work::Fuzz {
        let dir = std::env::temp_dir().join(format!("kvmconf-fuzz-bench-{}", std::process::id()));
        let cfg = Config {
            target: Target::GuestVsInterp,
            seed,
            cases: None,
            duration: Some(Duration::from_secs_f64(secs)),
            jobs: threads,
            artifacts: dir.clone(),
            stats_every: 0.0,
            quiet: true,
            minimise: false,
            keep_known: false,
            pin_cpu,
        };
        let (_, sh) = run(&cfg);
        let _ = std::fs::remove_dir_all(&dir);
        sh.thread_use
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    } else {
        let start = std::sync::Barrier::new(threads);
        let results: Vec<Result<ThreadUse, String>> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..threads)
                .map(|_| sc.spawn(|| bench_thread(work, cases, &start, secs, pin_cpu)))
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or(Ok(ThreadUse::default())))
                .collect()
        });
        let mut v = Vec::new();
        for r in results {
            v.push(r?);
        }
        v
    };
    // Rates over the measured loops (thread set-up excluded): the longest loop's wall time.
    let wall = uses
        .iter()
        .map(|u| u.wall_ns)
        .max()
        .map_or(t.elapsed().as_secs_f64(), |ns| ns as f64 / 1e9);
    let (own1, busy1) = cpu_ticks();
    let own = own1.saturating_sub(own0) as f64 / 100.0;
    let busy = busy1.saturating_sub(busy0) as f64 / 100.0;
    let other = (busy - own).max(0.0) / t.elapsed().as_secs_f64();
    Ok(Figure::of(&uses, wall, other))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// `kvmconf fuzz --bench`: each figure with one and with two threads, in interleaved rounds
/// (`--rounds`, `--duration` seconds per measurement), medians printed.
pub fn bench(a: &FuzzArgs, seed: u64) -> u8 {
    let secs = a.duration.unwrap_or(2.0);
    let rounds = a.rounds.max(1);
    let cases = bench_cases(seed);
    let mut figs: BTreeMap<(usize, usize), Vec<Figure>> = BTreeMap::new();
    for _ in 0..rounds {
        for (wi, w) in Work::ALL.into_iter().enumerate() {
            for threads in [1usize, 2] {
                match measure(w, threads, secs, seed, &cases, a.pin_cpu) {
                    Ok(f) => figs.entry((wi, threads)).or_default().push(f),
                    Err(e) => {
                        eprintln!("kvmconf fuzz --bench: {}: {e}", w.label());
                        return EXIT_HARNESS;
                    }
                }
            }
        }
    }
    let pick = |wi: usize, threads: usize, f: fn(&Figure) -> f64| {
        let mut v: Vec<f64> = figs[&(wi, threads)].iter().map(f).collect();
        median(&mut v)
    };
    println!(
        "fuzz bench (seed {seed}; {rounds} interleaved rounds of {secs} s per measurement; medians; minimisation off{}):",
        a.pin_cpu.map_or(String::new(), |c| format!(
            "; every thread pinned to CPU {c}"
        ))
    );
    println!(
        "{:<48} {:>8} {:>8} {:>5} | {:>9} {:>9} {:>9} {:>11} | {:>9}",
        "(1 thread, 2 threads)",
        "1 thr/s",
        "2 thr/s",
        "2/1",
        "on CPU",
        "run queue",
        "blocked",
        "CPU us/exec",
        "others"
    );
    for (wi, w) in Work::ALL.into_iter().enumerate() {
        let pair = |f: fn(&Figure) -> f64, pct: bool| {
            let (a, b) = (pick(wi, 1, f), pick(wi, 2, f));
            if pct {
                format!("{:>3.0}% {:>3.0}%", a * 100.0, b * 100.0)
            } else {
                format!("{a:>5.0} {b:>5.0}")
            }
        };
        let (r1, r2) = (pick(wi, 1, |f| f.rate), pick(wi, 2, |f| f.rate));
        println!(
            "{:<48} {r1:>8.0} {r2:>8.0} {:>5.2} | {:>9} {:>9} {:>9} {:>11} | {:>9}",
            w.label(),
            r2 / r1.max(1e-9),
            pair(|f| f.on_cpu, true),
            pair(|f| f.runq, true),
            pair(|f| f.blocked, true),
            pair(|f| f.us_per_exec, false),
            format!(
                "{:.2} {:.2}",
                pick(wi, 1, |f| f.other),
                pick(wi, 2, |f| f.other)
            ),
        );
    }
    println!(
        "on CPU / run queue / blocked: shares of the measured threads' time (schedstat); others: CPU s/s of other processes"
    );
    let read = |p: &str| std::fs::read_to_string(p).map_or("?".into(), |s| s.trim().to_string());
    println!(
        "host: {} CPUs; sched_autogroup_enabled={}; this process: {} (CFS shares CPU time equally between busy groups)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        read("/proc/sys/kernel/sched_autogroup_enabled"),
        read("/proc/self/autogroup")
    );
    let (fz1, fz2) = (pick(3, 1, |f| f.rate), pick(3, 2, |f| f.rate));
    let (g1, g2) = (pick(1, 1, |f| f.rate), pick(1, 2, |f| f.rate));
    println!(
        "kvmconf fuzz per worker: 1 worker {:.2}x, 2 workers {:.2}x the raw generated rate with as many threads",
        fz1 / g1.max(1e-9),
        fz2 / 2.0 / (g2 / 2.0).max(1e-9)
    );
    EXIT_OK
}

/// One round of `kvmconf bench`'s fuzz figure: seconds for the `guest_vs_interp` fuzz loop (one
/// worker, minimisation off) over inputs `0..n` of `seed`, and seconds for `Pool::run` alone of
/// the same generated programs (generated beforehand, untimed), in that order or the other.
pub(crate) fn guest_vs_interp_round(
    host: &Host,
    seed: u64,
    n: u64,
    fuzz_first: bool,
) -> Result<(f64, f64), String> {
    let cases: Vec<Case> = (0..n)
        .map(|i| kvmconf_cases::fuzz::gen_guest(&mut source_for(seed, i)))
        .collect();
    let fuzz = || -> Result<f64, String> {
        let dir =
            std::env::temp_dir().join(format!("kvmconf-bench-fuzz-{}-{seed}", std::process::id()));
        let cfg = Config {
            target: Target::GuestVsInterp,
            seed,
            cases: Some(n),
            duration: None,
            jobs: 1,
            artifacts: dir.clone(),
            stats_every: 0.0,
            quiet: true,
            minimise: false,
            keep_known: false,
            pin_cpu: None,
        };
        let t = Instant::now();
        let (s, _) = run(&cfg);
        let secs = t.elapsed().as_secs_f64();
        let _ = std::fs::remove_dir_all(&dir);
        if s.errors > 0 || s.panics > 0 {
            return Err(format!(
                "the fuzz loop had {} harness errors and {} panics",
                s.errors, s.panics
            ));
        }
        Ok(secs)
    };
    let pooled = || -> Result<f64, String> {
        let mut pool = Pool::new(host, 4);
        let t = Instant::now();
        for c in &cases {
            // A harness error here is one the fuzz loop counts too; the bench times both alike.
            let _ = std::hint::black_box(pool.run(c));
        }
        Ok(t.elapsed().as_secs_f64())
    };
    if fuzz_first {
        let f = fuzz()?;
        Ok((f, pooled()?))
    } else {
        let p = pooled()?;
        Ok((fuzz()?, p))
    }
}

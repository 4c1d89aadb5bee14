//! What this process and its threads use, read from /proc: resident memory, CPU ticks, scheduler
//! times, and the figure a set of measured threads makes (`kvmconf fuzz` and its `--bench`).

use std::time::Instant;

/// Resident set size of this process in KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// CPU ticks (USER_HZ, 100/s on x86) used by this process (all threads, reaped ones included) and
/// by the whole machine (busy = all but idle and iowait), and the machine's CPU count.
pub fn cpu_ticks() -> (u64, u64) {
    let own = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name, which may hold spaces: utime and stime are 14 and 15.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<u64> = rest
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|x| x.parse().ok())
                .collect();
            Some(f.iter().sum())
        })
        .unwrap_or(0);
    let busy = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let l = s.lines().next()?;
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal: busy excludes idle and iowait.
            Some(v.iter().take(8).sum::<u64>() - v.get(3)? - v.get(4)?)
        })
        .unwrap_or(0);
    (own, busy)
}

/// This thread's scheduler statistics: nanoseconds on a CPU and waiting on a run queue
/// (`/proc/thread-self/schedstat`; zeros when the kernel lacks it).
fn thread_sched() -> (u64, u64) {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| {
            let mut f = s.split_whitespace().map(|x| x.parse::<u64>().ok());
            Some((f.next()??, f.next()??))
        })
        .unwrap_or((0, 0))
}

/// What a measured thread did: executions, and nanoseconds on a CPU, waiting for one, and in all.
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadUse {
    /// Executions.
    pub execs: u64,
    /// Nanoseconds on a CPU.
    pub on_cpu_ns: u64,
    /// Nanoseconds runnable but waiting for a CPU.
    pub runq_ns: u64,
    /// Nanoseconds in all.
    pub wall_ns: u64,
}

/// Where a thread's measurement started.
pub type UseMark = (Instant, (u64, u64));

impl ThreadUse {
    /// Starts measuring the calling thread.
    pub fn start() -> UseMark {
        (Instant::now(), thread_sched())
    }

    /// The calling thread's use since `mark`.
    pub fn since(mark: UseMark, execs: u64) -> ThreadUse {
        let (on, rq) = thread_sched();
        ThreadUse {
            execs,
            on_cpu_ns: on.saturating_sub(mark.1.0),
            runq_ns: rq.saturating_sub(mark.1.1),
            wall_ns: mark.0.elapsed().as_nanos() as u64,
        }
    }
}

/// One measured figure.
#[derive(Clone, Copy, Debug, Default)]
pub struct Figure {
    /// Executions per second over all threads.
    pub rate: f64,
    /// Share of the measured threads' time on a CPU.
    pub on_cpu: f64,
    /// Share of their time runnable but waiting for a CPU (other load).
    pub runq: f64,
    /// Share of their time blocked (neither: asleep in the kernel or on a lock).
    pub blocked: f64,
    /// CPU microseconds per execution.
    pub us_per_exec: f64,
    /// CPU seconds the rest of the machine used per wall second.
    pub other: f64,
}

impl Figure {
    /// The figure of `uses` over `wall` seconds, with `other` CPU s/s used by the rest of the machine.
    pub fn of(uses: &[ThreadUse], wall: f64, other: f64) -> Figure {
        let sum = |f: fn(&ThreadUse) -> u64| uses.iter().map(f).sum::<u64>() as f64;
        let (execs, on, rq, all) = (
            sum(|u| u.execs),
            sum(|u| u.on_cpu_ns),
            sum(|u| u.runq_ns),
            sum(|u| u.wall_ns).max(1.0),
        );
        Figure {
            rate: execs / wall.max(1e-9),
            on_cpu: on / all,
            runq: rq / all,
            blocked: ((all - on - rq) / all).max(0.0),
            us_per_exec: on / 1e3 / execs.max(1.0),
            other,
        }
    }
}

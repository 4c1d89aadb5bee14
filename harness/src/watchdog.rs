//! The per-case wall-clock deadline: one watchdog thread signals a vCPU thread whose deadline has
//! passed; the signal stays blocked in that thread except inside KVM_RUN (KVM_SET_SIGNAL_MASK), so
//! a spinning guest returns EINTR, and a signal that arrives outside KVM_RUN waits for the next one.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

/// The real-time signal the watchdog sends (SIGRTMIN + 5).
pub fn signal() -> i32 {
    libc::SIGRTMIN() + 5
}

/// Errors setting up the watchdog.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    /// A libc call failed.
    #[error("{call} failed: {source}")]
    Sys {
        /// The call.
        call: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

fn sys(call: &'static str) -> WatchdogError {
    WatchdogError::Sys {
        call,
        source: std::io::Error::last_os_error(),
    }
}

extern "C" fn on_signal(_: libc::c_int) {}

static HANDLER: Once = Once::new();

fn install_handler() {
    HANDLER.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler is a
        // plain extern "C" fn that does nothing, which is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = 0; // no SA_RESTART: a blocking call is interrupted
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(signal(), &sa, std::ptr::null_mut());
        }
    });
}

/// A sigset holding only the watchdog signal.
pub fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set we own.
    unsafe {
        let mut s: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut s);
        libc::sigaddset(&mut s, signal());
        s
    }
}

/// The calling thread's kernel thread id.
pub fn thread_id() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// How often the watchdog thread looks at the armed deadlines.
pub const TICK: Duration = Duration::from_millis(2);

/// One vCPU thread's deadline, shared with the watchdog thread.
#[derive(Debug)]
struct Slot {
    tid: i32,
    /// Nanoseconds since [`epoch`] when the deadline passes; 0 = disarmed.
    at_ns: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// The slots of every thread that ever armed a deadline.
static SLOTS: Mutex<Vec<Arc<Slot>>> = Mutex::new(Vec::new());
static STARTED: Once = Once::new();

/// The watchdog thread: every [`TICK`], signals each thread whose deadline has passed (once).
fn watchdog_loop() {
    let pid = std::process::id() as libc::pid_t;
    loop {
        std::thread::sleep(TICK);
        let now = now_ns();
        let slots = SLOTS.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for slot in slots {
            let at = slot.at_ns.load(Ordering::Acquire);
            if at != 0
                && now >= at
                && slot
                    .at_ns
                    .compare_exchange(at, 0, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                // SAFETY: tgkill only sends a signal; a thread that has exited makes it fail
                // with ESRCH, which is ignored.
                unsafe { libc::syscall(libc::SYS_tgkill, pid, slot.tid, signal()) };
            }
        }
    }
}

fn thread_slot() -> Result<Arc<Slot>, WatchdogError> {
    SLOT.with(|cell| {
        if let Some(g) = cell.borrow().as_ref() {
            return Ok(Arc::clone(&g.0));
        }
        install_handler();
        let set = signal_set();
        // SAFETY: blocks the watchdog signal in this thread; `set` is initialised.
        if unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) } != 0 {
            return Err(sys("pthread_sigmask"));
        }
        let slot = Arc::new(Slot {
            tid: current_thread(),
            at_ns: AtomicU64::new(0),
        });
        SLOTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::clone(&slot));
        let mut spawn_err = None;
        STARTED.call_once(|| {
            if let Err(e) = std::thread::Builder::new()
                .name("kvmconf-watchdog".into())
                .spawn(watchdog_loop)
            {
                spawn_err = Some(e);
            }
        });
        if let Some(source) = spawn_err {
            return Err(WatchdogError::Sys {
                call: "spawning the watchdog thread",
                source,
            });
        }
        *cell.borrow_mut() = Some(SlotGuard(Arc::clone(&slot)));
        Ok(slot)
    })
}

/// Unregisters a thread's slot when the thread exits, so its id is never signalled again.
struct SlotGuard(Arc<Slot>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.at_ns.store(0, Ordering::Release);
        SLOTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| !Arc::ptr_eq(s, &self.0));
    }
}

thread_local! {
    static SLOT: RefCell<Option<SlotGuard>> = const { RefCell::new(None) };
    static TID: i32 = thread_id();
}

/// The calling thread's id, cached per thread.
pub fn current_thread() -> i32 {
    TID.with(|t| *t)
}

/// An armed deadline for the current thread; disarms on drop. Arming is an atomic store: the
/// watchdog thread sends the signal within [`TICK`] of the deadline.
#[derive(Debug)]
pub struct Deadline {
    at: Instant,
    slot: Arc<Slot>,
}

impl Deadline {
    /// Arms the calling thread's deadline `after` from now (and blocks the signal in it).
    pub fn arm(after: Duration) -> Result<Deadline, WatchdogError> {
        let slot = thread_slot()?;
        let at = Instant::now() + after;
        let ns = (now_ns() + after.as_nanos().min(u128::from(u64::MAX / 2)) as u64).max(1);
        slot.at_ns.store(ns, Ordering::Release);
        Ok(Deadline { at, slot })
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        Instant::now() >= self.at
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        self.slot.at_ns.store(0, Ordering::Release);
    }
}

/// Whether the watchdog signal is pending (blocked, not yet consumed) in the calling thread.
pub fn pending() -> bool {
    // SAFETY: sigpending writes the pending set into `set`, which we own; sigismember only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigpending(&mut set) == 0 && libc::sigismember(&set, signal()) == 1
    }
}

/// Waits up to `limit` for the watchdog signal to be pending in the calling thread.
pub fn wait_pending(limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if pending() {
            return true;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    pending()
}

/// Consumes a pending watchdog signal of the calling thread, if any; returns whether one was.
pub fn drain() -> bool {
    let set = signal_set();
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `set` is initialised; a null siginfo pointer is allowed; zero timeout never blocks.
    unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) == signal() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_fires_as_a_pending_blocked_signal_and_drains() {
        std::thread::spawn(|| {
            let d = Deadline::arm(Duration::from_millis(5)).unwrap();
            assert!(!pending());
            assert!(wait_pending(Duration::from_secs(1)), "signal within 1 s");
            assert!(d.expired(), "the signal came only after the deadline");
            assert!(
                drain(),
                "the timer signal should be pending (blocked) in this thread"
            );
            assert!(!drain());
            drop(d);
            let d = Deadline::arm(Duration::from_secs(10)).unwrap();
            drop(d); // disarmed: nothing arrives
            std::thread::sleep(Duration::from_millis(5));
            assert!(!drain());
        })
        .join()
        .unwrap();
        // The exited thread's slot is gone.
        let n = SLOTS.lock().unwrap().len();
        std::thread::spawn(|| drop(Deadline::arm(Duration::from_secs(1)).unwrap()))
            .join()
            .unwrap();
        assert_eq!(SLOTS.lock().unwrap().len(), n);
    }
}

//! The per-case wall-clock deadline: a thread-directed POSIX timer whose signal stays blocked in the
//! vCPU thread except inside KVM_RUN (KVM_SET_SIGNAL_MASK), so a spinning guest returns EINTR.

use std::cell::RefCell;
use std::sync::Once;
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

/// The calling thread's signal mask with the watchdog signal removed: the mask for KVM_RUN.
pub fn run_mask() -> libc::sigset_t {
    // SAFETY: pthread_sigmask with a null new set only reads the current mask into `cur`.
    unsafe {
        let mut cur: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur);
        libc::sigdelset(&mut cur, signal());
        cur
    }
}

/// The calling thread's kernel thread id.
pub fn thread_id() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// A one-shot timer that signals the thread that created it.
#[derive(Debug)]
pub struct ThreadTimer {
    id: libc::timer_t,
    tid: i32,
}

impl ThreadTimer {
    fn new() -> Result<ThreadTimer, WatchdogError> {
        install_handler();
        let tid = thread_id();
        let set = signal_set();
        // SAFETY: blocks the watchdog signal in this thread; `set` is initialised.
        if unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) } != 0 {
            return Err(sys("pthread_sigmask"));
        }
        // SAFETY: a zeroed sigevent is valid; we fill in the thread-id notification fields.
        let mut ev: libc::sigevent = unsafe { std::mem::zeroed() };
        ev.sigev_notify = libc::SIGEV_THREAD_ID;
        ev.sigev_signo = signal();
        ev.sigev_notify_thread_id = tid;
        let mut id: libc::timer_t = std::ptr::null_mut();
        // SAFETY: `ev` and `id` are valid for the call; the timer is deleted in Drop.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut ev, &mut id) } != 0 {
            return Err(sys("timer_create"));
        }
        Ok(ThreadTimer { id, tid })
    }

    fn set(&self, after: Duration) -> Result<(), WatchdogError> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `id` is a live timer owned by self; `spec` is a valid itimerspec.
        if unsafe { libc::timer_settime(self.id, 0, &spec, std::ptr::null_mut()) } != 0 {
            return Err(sys("timer_settime"));
        }
        Ok(())
    }
}

impl Drop for ThreadTimer {
    fn drop(&mut self) {
        // SAFETY: `id` was created by timer_create and is deleted once, here.
        unsafe { libc::timer_delete(self.id) };
    }
}

thread_local! {
    static TIMER: RefCell<Option<ThreadTimer>> = const { RefCell::new(None) };
    static TID: i32 = thread_id();
}

/// The calling thread's id, cached per thread.
pub fn current_thread() -> i32 {
    TID.with(|t| *t)
}

/// An armed deadline for the current thread; disarms on drop.
#[derive(Debug)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    /// Arms the calling thread's timer to fire after `after`.
    pub fn arm(after: Duration) -> Result<Deadline, WatchdogError> {
        let at = Instant::now() + after;
        TIMER.with(|t| {
            let mut t = t.borrow_mut();
            if t.as_ref().is_none_or(|x| x.tid != current_thread()) {
                *t = Some(ThreadTimer::new()?);
            }
            t.as_ref()
                .expect("timer just created")
                .set(after.max(Duration::from_nanos(1)))
        })?;
        Ok(Deadline { at })
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        Instant::now() >= self.at
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        TIMER.with(|t| {
            if let Some(t) = t.borrow().as_ref() {
                let _ = t.set(Duration::ZERO);
            }
        });
    }
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
            std::thread::sleep(Duration::from_millis(20));
            assert!(d.expired());
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
    }
}

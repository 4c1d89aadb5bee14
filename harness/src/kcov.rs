//! Kernel coverage (KCOV) around KVM_RUN: detection, one per-thread trace buffer, and folding the
//! kernel PCs a run executed into signal values a fuzzer can use as coverage.
//!
//! With a collector started on a thread ([`start`]), [`crate::TestVcpu::run_once`] enables KCOV
//! (`KCOV_ENABLE`, `KCOV_TRACE_PC`) just before its KVM_RUN and disables it right after, and the
//! PCs of that run are folded into edge hashes that [`take`] hands out. Without
//! `/sys/kernel/debug/kcov` (no debugfs, or a kernel without CONFIG_KCOV) nothing is collected and
//! [`status`] says why. The parsing and hashing are pure functions, tested without KCOV; the
//! ioctl path has not run on a KCOV kernel in this project (the development host has none).

use std::cell::RefCell;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

/// Where the kernel exposes KCOV.
pub const KCOV_PATH: &str = "/sys/kernel/debug/kcov";

/// `KCOV_INIT_TRACE`: `_IOR('c', 1, unsigned long)`.
const KCOV_INIT_TRACE: libc::c_ulong = 0x8008_6301;
/// `KCOV_ENABLE`: `_IO('c', 100)`.
const KCOV_ENABLE: libc::c_ulong = 0x6364;
/// `KCOV_DISABLE`: `_IO('c', 101)`.
const KCOV_DISABLE: libc::c_ulong = 0x6365;
/// `KCOV_TRACE_PC`: collect the PC of every basic block.
const KCOV_TRACE_PC: libc::c_ulong = 0;

/// Words in a thread's trace buffer (the first holds the count): 64 Ki PCs, 512 KiB.
pub const DEFAULT_WORDS: usize = 1 << 16;

/// Errors setting up or using KCOV.
#[derive(Debug, thiserror::Error)]
pub enum KcovError {
    /// Opening /sys/kernel/debug/kcov failed.
    #[error("open {KCOV_PATH} failed: {0}")]
    Open(std::io::Error),
    /// An ioctl on the KCOV fd failed.
    #[error("{ioctl} on {KCOV_PATH} failed: {source}")]
    Ioctl {
        /// The ioctl.
        ioctl: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// Mapping the trace buffer failed.
    #[error("mmap of the KCOV buffer ({bytes:#x} bytes) failed: {source}")]
    Mmap {
        /// Size.
        bytes: usize,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Whether the host exposes KCOV, or why not.
pub fn status() -> Result<(), String> {
    if std::path::Path::new(KCOV_PATH).exists() {
        return Ok(());
    }
    let debugfs_empty =
        std::fs::read_dir("/sys/kernel/debug").map_or(true, |mut d| d.next().is_none());
    if debugfs_empty {
        Err(format!(
            "{KCOV_PATH} absent: debugfs is not mounted (or the kernel lacks CONFIG_KCOV)"
        ))
    } else {
        Err(format!(
            "{KCOV_PATH} absent: the kernel was built without CONFIG_KCOV"
        ))
    }
}

/// The PCs recorded in a KCOV trace buffer: word 0 is the count, PCs follow; a count larger than
/// the buffer (the kernel stops writing when it is full) is clamped.
pub fn recorded(words: &[u64]) -> &[u64] {
    let Some((&n, rest)) = words.split_first() else {
        return &[];
    };
    let n = usize::try_from(n).unwrap_or(usize::MAX).min(rest.len());
    &rest[..n]
}

/// Folds a run's PCs into edge hashes: one per distinct (previous PC, PC) pair, so the same
/// blocks reached along different paths count as different coverage. Sorted, deduplicated.
pub fn edges(pcs: &[u64]) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::with_capacity(pcs.len());
    let mut prev = 0u64;
    for &pc in pcs {
        out.push(mix(prev.rotate_left(1) ^ pc));
        prev = pc;
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// A 64-bit finaliser (splitmix64's): spreads nearby kernel addresses over all bits, so a fold to
/// a few buckets still separates them.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// One thread's KCOV fd and its mapped trace buffer (unmapped and closed on drop).
#[derive(Debug)]
pub struct Kcov {
    fd: OwnedFd,
    area: NonNull<u64>,
    words: usize,
}

impl Kcov {
    /// Opens KCOV with a trace buffer of `words` 64-bit words.
    pub fn open(words: usize) -> Result<Kcov, KcovError> {
        let words = words.max(2);
        let path = c"/sys/kernel/debug/kcov";
        // SAFETY: `path` is a NUL-terminated string; open has no other preconditions and the
        // result is checked before use.
        let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(KcovError::Open(std::io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a file descriptor open() just returned to us and nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: KCOV_INIT_TRACE takes the buffer size in words by value; the fd is a KCOV fd.
        if unsafe { libc::ioctl(fd.as_raw_fd(), KCOV_INIT_TRACE, words as libc::c_ulong) } != 0 {
            return Err(KcovError::Ioctl {
                ioctl: "KCOV_INIT_TRACE",
                source: std::io::Error::last_os_error(),
            });
        }
        let bytes = words * 8;
        // SAFETY: a shared mapping of the KCOV fd with the size KCOV_INIT_TRACE was given, as
        // the kernel's kcov.rst documents; the result is checked against MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(KcovError::Mmap {
                bytes,
                source: std::io::Error::last_os_error(),
            });
        }
        let area = NonNull::new(p.cast::<u64>()).ok_or_else(|| KcovError::Mmap {
            bytes,
            source: std::io::Error::other("mmap returned null"),
        })?;
        Ok(Kcov { fd, area, words })
    }

    fn count_word(&self) -> &std::sync::atomic::AtomicU64 {
        // SAFETY: word 0 of the mapping is an aligned u64 that lives as long as `self`; the kernel
        // writes it from this thread's context only, and atomics make our accesses well-defined.
        unsafe { std::sync::atomic::AtomicU64::from_ptr(self.area.as_ptr()) }
    }

    /// Resets the buffer and enables collection for the calling thread.
    pub fn enable(&self) -> Result<(), KcovError> {
        self.count_word()
            .store(0, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: KCOV_ENABLE takes the trace mode by value on a KCOV fd with a mapped buffer.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), KCOV_ENABLE, KCOV_TRACE_PC) } != 0 {
            return Err(KcovError::Ioctl {
                ioctl: "KCOV_ENABLE",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Disables collection (the calling thread must be the one that enabled it).
    pub fn disable(&self) -> Result<(), KcovError> {
        // SAFETY: KCOV_DISABLE takes no argument; the fd is a KCOV fd.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), KCOV_DISABLE, 0 as libc::c_ulong) } != 0 {
            return Err(KcovError::Ioctl {
                ioctl: "KCOV_DISABLE",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// A copy of the PCs recorded since [`Kcov::enable`] (call after [`Kcov::disable`]).
    pub fn pcs(&self) -> Vec<u64> {
        let n = self.count_word().load(std::sync::atomic::Ordering::Acquire);
        let n = usize::try_from(n).unwrap_or(usize::MAX).min(self.words - 1);
        let mut words = vec![0u64; n + 1];
        words[0] = n as u64;
        // SAFETY: the mapping holds `self.words` u64s and `n + 1 <= self.words`; collection is
        // disabled, so the kernel no longer writes them.
        unsafe {
            std::ptr::copy_nonoverlapping(self.area.as_ptr().add(1), words[1..].as_mut_ptr(), n);
        }
        recorded(&words).to_vec()
    }
}

impl Drop for Kcov {
    fn drop(&mut self) {
        // SAFETY: `area` is the mapping of `words * 8` bytes made in `open`, not used after this.
        unsafe { libc::munmap(self.area.as_ptr().cast(), self.words * 8) };
    }
}

/// A thread's collector: its KCOV and the edge hashes gathered since the last [`take`].
struct Collector {
    kcov: Kcov,
    edges: Vec<u64>,
}

thread_local! {
    static COLLECTOR: RefCell<Option<Collector>> = const { RefCell::new(None) };
}

/// Starts collecting KCOV around every KVM_RUN of the calling thread. `Err` with the reason when
/// the host has no KCOV or setting it up fails (collection then stays off).
pub fn start(words: usize) -> Result<(), String> {
    status()?;
    let kcov = Kcov::open(words).map_err(|e| e.to_string())?;
    COLLECTOR.with(|c| {
        *c.borrow_mut() = Some(Collector {
            kcov,
            edges: Vec::new(),
        })
    });
    Ok(())
}

/// Whether the calling thread collects KCOV.
pub fn active() -> bool {
    COLLECTOR.with(|c| c.borrow().is_some())
}

/// The edge hashes of the calling thread's KVM_RUNs since the last call (sorted, deduplicated).
pub fn take() -> Vec<u64> {
    COLLECTOR.with(|c| {
        c.borrow_mut().as_mut().map_or(Vec::new(), |c| {
            let mut e = std::mem::take(&mut c.edges);
            e.sort_unstable();
            e.dedup();
            e
        })
    })
}

/// Runs `f` (one KVM_RUN) with KCOV enabled when the thread collects; a KCOV error stops
/// collection on this thread rather than failing the run.
pub(crate) fn around<T>(f: impl FnOnce() -> T) -> T {
    let on = COLLECTOR.with(|c| {
        let mut c = c.borrow_mut();
        match c.as_ref().map(|c| c.kcov.enable()) {
            Some(Ok(())) => true,
            Some(Err(_)) => {
                *c = None;
                false
            }
            None => false,
        }
    });
    let out = f();
    if on {
        COLLECTOR.with(|c| {
            let mut c = c.borrow_mut();
            let keep = match c.as_mut() {
                Some(col) => match col.kcov.disable() {
                    Ok(()) => {
                        let e = edges(&col.kcov.pcs());
                        col.edges.extend(e);
                        true
                    }
                    Err(_) => false,
                },
                None => false,
            };
            if !keep {
                *c = None;
            }
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_reads_the_count_then_the_pcs_and_clamps_it() {
        assert_eq!(recorded(&[]), &[] as &[u64]);
        assert_eq!(recorded(&[0, 7, 8]), &[] as &[u64]);
        assert_eq!(recorded(&[2, 0x10, 0x20, 0x30]), &[0x10, 0x20]);
        // A full buffer: the kernel's count runs past it.
        assert_eq!(recorded(&[99, 0x10, 0x20]), &[0x10, 0x20]);
    }

    #[test]
    fn edges_depend_on_the_path_not_only_the_blocks() {
        let a = edges(&[
            0xffff_ffff_8100_0000,
            0xffff_ffff_8100_0010,
            0xffff_ffff_8100_0020,
        ]);
        let b = edges(&[
            0xffff_ffff_8100_0000,
            0xffff_ffff_8100_0020,
            0xffff_ffff_8100_0010,
        ]);
        assert_eq!(a.len(), 3);
        assert_ne!(a, b, "the same blocks in another order are other edges");
        // A loop repeating the same edges adds nothing.
        let looped = edges(&[1, 2, 1, 2, 1, 2]);
        assert_eq!(looped.len(), 3); // (0,1) (1,2) (2,1)
        assert!(edges(&[]).is_empty());
    }

    #[test]
    fn edge_hashes_of_neighbouring_pcs_fall_in_different_buckets() {
        // The fuzz targets fold signals to 1024 buckets: nearby kernel PCs must not collide there.
        let pcs: Vec<u64> = (0..64).map(|i| 0xffff_ffff_8100_0000 + i * 4).collect();
        let buckets: std::collections::BTreeSet<u64> = pcs
            .iter()
            .map(|&pc| edges(&[pc])[0])
            .map(|h| (h ^ (h >> 20) ^ (h >> 40)) % 1024)
            .collect();
        assert!(buckets.len() >= 60, "{} buckets for 64 PCs", buckets.len());
    }

    #[test]
    fn status_explains_a_missing_kcov() {
        match status() {
            Ok(()) => assert!(std::path::Path::new(KCOV_PATH).exists()),
            Err(why) => assert!(why.starts_with("/sys/kernel/debug/kcov absent: "), "{why}"),
        }
    }

    #[test]
    fn open_without_kcov_fails_naming_the_path() {
        if status().is_ok() {
            return; // a KCOV host: opening may well work
        }
        let e = Kcov::open(16).expect_err("no KCOV here");
        assert!(
            e.to_string()
                .starts_with("open /sys/kernel/debug/kcov failed: "),
            "{e}"
        );
        assert!(start(16).is_err());
        assert!(!active());
    }

    #[test]
    fn without_a_collector_nothing_is_taken_and_runs_go_through() {
        assert!(!active());
        assert_eq!(around(|| 5), 5);
        assert!(take().is_empty());
    }
}

//! Process resource limits that checks depend on: reading and raising the open-file limit
//! (RLIMIT_NOFILE) for checks that hold one fd per vCPU.

/// A failed getrlimit/setrlimit call.
#[derive(Debug, thiserror::Error)]
pub enum RlimitError {
    /// getrlimit(RLIMIT_NOFILE) failed.
    #[error("getrlimit(RLIMIT_NOFILE) failed: {0}")]
    Get(std::io::Error),
    /// setrlimit(RLIMIT_NOFILE) failed.
    #[error("setrlimit(RLIMIT_NOFILE, soft {soft}) failed: {err}")]
    Set {
        /// The soft limit asked for.
        soft: u64,
        /// The error.
        err: std::io::Error,
    },
}

/// The open-file limit: soft (in force) and hard (the most an unprivileged process may raise it to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit.
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

/// Reads RLIMIT_NOFILE.
pub fn open_files() -> Result<OpenFiles, RlimitError> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `struct rlimit` through the pointer, which points at a live,
    // properly aligned local of that type.
    let ret = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    if ret != 0 {
        return Err(RlimitError::Get(std::io::Error::last_os_error()));
    }
    Ok(OpenFiles {
        soft: r.rlim_cur,
        hard: r.rlim_max,
    })
}

/// Raises the soft open-file limit to `want`, or to the hard limit if that is lower; never lowers
/// it. Returns the limit now in force.
pub fn raise_open_files(want: u64) -> Result<OpenFiles, RlimitError> {
    let now = open_files()?;
    let soft = want.min(now.hard);
    if soft <= now.soft {
        return Ok(now);
    }
    let r = libc::rlimit {
        rlim_cur: soft,
        rlim_max: now.hard,
    };
    // SAFETY: setrlimit only reads one `struct rlimit` through the pointer, which points at a live,
    // properly aligned local of that type.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
    if ret != 0 {
        return Err(RlimitError::Set {
            soft,
            err: std::io::Error::last_os_error(),
        });
    }
    open_files()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_open_files_never_lowers_and_stops_at_the_hard_limit() {
        let before = open_files().unwrap();
        assert!(before.soft <= before.hard);
        let same = raise_open_files(1).unwrap();
        assert_eq!(same, before);
        let want = before.hard.min(before.soft.saturating_add(16));
        let up = raise_open_files(want).unwrap();
        assert_eq!(up.soft, want);
        assert_eq!(up.hard, before.hard);
    }
}

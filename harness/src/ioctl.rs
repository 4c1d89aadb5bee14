//! What a rejected ioctl leaves behind: the [`Errno`], the [`IoctlFailure`] trait every harness
//! error implements, the `ioctl_errors!` macro that builds each fd level's error enum (one
//! variant per ioctl, naming it), and the raw ioctl numbers kvm-ioctls has no wrapper for.

use std::fmt;

/// An errno a KVM ioctl returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// The errno of the last failed libc call on this thread.
    pub fn last() -> Errno {
        Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (errno {})",
            std::io::Error::from_raw_os_error(self.0),
            self.0
        )
    }
}

impl std::error::Error for Errno {}

impl From<kvm_ioctls::Error> for Errno {
    fn from(e: kvm_ioctls::Error) -> Errno {
        Errno(e.errno())
    }
}

/// A harness error that may come from an ioctl KVM rejected.
pub trait IoctlFailure: std::error::Error {
    /// The errno when an ioctl failed, `None` for failures that are not an ioctl's.
    fn errno(&self) -> Option<i32>;
}

/// Declares an fd level's error enum: one variant per ioctl, each keeping its [`Errno`], shown
/// as `KVM_… failed: <strerror> (errno N)`.
macro_rules! ioctl_errors {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $v:ident => $s:literal,)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
        pub enum $name {
            $(
                $(#[$vm])*
                #[doc = concat!($s, " failed.")]
                #[error("{name} failed: {0}", name = $s)]
                $v($crate::ioctl::Errno),
            )*
        }

        impl $name {
            /// The errno KVM returned.
            pub fn errno(&self) -> i32 {
                match self {
                    $($name::$v(e) => e.0,)*
                }
            }

            /// The errno as an [`std::io::Error`], whose text is the bare strerror.
            pub fn os_error(&self) -> std::io::Error {
                std::io::Error::from_raw_os_error(self.errno())
            }

            /// The ioctl that failed.
            pub fn ioctl(&self) -> &'static str {
                match self {
                    $($name::$v(_) => $s,)*
                }
            }
        }

        impl $crate::ioctl::IoctlFailure for $name {
            fn errno(&self) -> Option<i32> {
                Some($name::errno(self))
            }
        }

        impl From<$name> for $crate::kvm::KvmError {
            fn from(e: $name) -> $crate::kvm::KvmError {
                $crate::kvm::KvmError::Ioctl {
                    ioctl: e.ioctl(),
                    errno: e.errno(),
                }
            }
        }
    };
}
pub(crate) use ioctl_errors;

/// Declares `pub fn NAME(&self, ARGS…) -> Result<R, ERR>`: the kvm-ioctls method `CALL` of
/// `self.fd` with the same arguments, its errno kept in the variant `ERR::V`.
macro_rules! forward {
    (
        $err:ident, $(#[$m:meta])*
        fn $name:ident $(<$g:ident: $bound:path>)? ($($arg:ident: $t:ty),*) -> $r:ty
            = $call:ident, $v:ident
    ) => {
        $(#[$m])*
        pub fn $name $(<$g: $bound>)? (&self, $($arg: $t),*) -> Result<$r, $err> {
            self.fd.$call($($arg),*).map_err(|e| $err::$v(e.into()))
        }
    };
}
pub(crate) use forward;

/// `_IO(KVMIO, nr)`.
pub(crate) const fn io(nr: u32) -> libc::c_ulong {
    (0xae << 8 | nr) as libc::c_ulong
}

/// `_IOWR(KVMIO, nr, size)`.
pub(crate) const fn iowr(nr: u32, size: u32) -> libc::c_ulong {
    ((3 << 30) | (size << 16) | (0xae << 8) | nr) as libc::c_ulong
}

/// `_IOW(KVMIO, nr, size)`.
pub(crate) const fn iow(nr: u32, size: u32) -> libc::c_ulong {
    ((1 << 30) | (size << 16) | (0xae << 8) | nr) as libc::c_ulong
}

/// `_IO(KVMIO, 0xff)`: not assigned to any ioctl in include/uapi/linux/kvm.h (numbers end in the
/// 0xd0s), so KVM can only reject it.
pub const UNASSIGNED_IOCTL: libc::c_ulong = io(0xff);

/// Issues [`UNASSIGNED_IOCTL`] on `fd`; the errno when KVM rejects it.
pub(crate) fn unassigned(fd: std::os::fd::RawFd) -> Result<(), Errno> {
    // SAFETY: the request number is not assigned to any KVM ioctl, so KVM reads or writes no
    // memory for it; the argument is 0 (no pointer).
    let ret = unsafe { libc::ioctl(fd, UNASSIGNED_IOCTL, 0) };
    if ret < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// KVM_GET_STATS_FD = _IO(KVMIO, 0xce).
pub(crate) const KVM_GET_STATS_FD: libc::c_ulong = io(0xce);

/// KVM_GET_STATS_FD on a VM or vCPU fd: the new statistics file.
pub(crate) fn stats_fd(fd: std::os::fd::RawFd) -> Result<std::fs::File, Errno> {
    use std::os::fd::FromRawFd;
    // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd; `fd` is a VM or vCPU fd.
    let ret = unsafe { libc::ioctl(fd, KVM_GET_STATS_FD, 0) };
    if ret < 0 {
        return Err(Errno::last());
    }
    // SAFETY: `ret` is a new file descriptor KVM just created for us; nothing else owns it.
    Ok(unsafe { std::fs::File::from_raw_fd(ret) })
}

#[cfg(test)]
mod tests {
    #[test]
    fn errno_reads_like_the_catalogue_messages() {
        assert_eq!(
            super::Errno(libc::EINVAL).to_string(),
            "Invalid argument (os error 22) (errno 22)"
        );
    }
}

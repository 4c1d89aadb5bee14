//! Guest RAM: an anonymous mmap owned by one VM, unmapped on drop, with bounds-checked access.

use std::ptr::NonNull;

/// Errors from mapping guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap failed.
    #[error("mmap of {size:#x} bytes of guest RAM failed: {source}")]
    Mmap {
        /// Requested size.
        size: u64,
        /// The OS error.
        source: std::io::Error,
    },
    /// An access fell outside the mapping.
    #[error("guest-physical range {addr:#x}+{len:#x} is outside RAM (size {size:#x})")]
    OutOfRange {
        /// Start.
        addr: u64,
        /// Length.
        len: u64,
        /// RAM size.
        size: u64,
    },
}

/// Anonymous, zero-filled guest RAM.
#[derive(Debug)]
pub struct GuestMemory {
    ptr: NonNull<u8>,
    size: usize,
}

// SAFETY: the mapping is plain memory owned by this value; concurrent guest access is by KVM and
// is not a Rust-level data race on this type's invariants (pointer and size never change).
unsafe impl Send for GuestMemory {}

impl GuestMemory {
    /// Maps `size` bytes of zeroed, unreserved memory.
    pub fn new(size: u64) -> Result<GuestMemory, MemoryError> {
        let len = usize::try_from(size).map_err(|_| MemoryError::OutOfRange {
            addr: 0,
            len: size,
            size: 0,
        })?;
        // SAFETY: an anonymous private mapping with no address hint has no preconditions; the
        // result is checked against MAP_FAILED before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(MemoryError::Mmap {
                size,
                source: std::io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| MemoryError::Mmap {
            size,
            source: std::io::Error::other("mmap returned null"),
        })?;
        Ok(GuestMemory { ptr, size: len })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size as u64
    }

    /// Host address of guest-physical 0.
    pub fn host_addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    fn check(&self, addr: u64, len: usize) -> Result<usize, MemoryError> {
        let end = addr.checked_add(len as u64);
        match end {
            Some(e) if e <= self.size as u64 => Ok(addr as usize),
            _ => Err(MemoryError::OutOfRange {
                addr,
                len: len as u64,
                size: self.size as u64,
            }),
        }
    }

    /// Copies `data` to guest-physical `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
        let off = self.check(addr, data.len())?;
        // SAFETY: `off + data.len()` is within the mapping (checked above); the source is a
        // distinct Rust slice, so the regions do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(off), data.len())
        };
        Ok(())
    }

    /// Copies guest-physical `addr..addr+buf.len()` into `buf`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let off = self.check(addr, buf.len())?;
        // SAFETY: the range is within the mapping (checked above) and `buf` is a distinct slice.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(off), buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }

    /// Zeroes `len` bytes at `addr`.
    pub fn zero(&self, addr: u64, len: u64) -> Result<(), MemoryError> {
        let off = self.check(addr, len as usize)?;
        // SAFETY: the range is within the mapping (checked above).
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(off), 0, len as usize) };
        Ok(())
    }

    /// Whether `len` bytes at `addr` equal `data`'s start, or are zero when `data` is `None`.
    pub fn equals(&self, addr: u64, len: usize, data: Option<&[u8]>) -> Result<bool, MemoryError> {
        let mut buf = vec![0u8; len];
        self.read(addr, &mut buf)?;
        Ok(match data {
            Some(d) => buf == d,
            None => buf.iter().all(|&b| b == 0),
        })
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`size` describe exactly the mapping made in `new`, unmapped only here.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.size) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_zero_and_bounds() {
        let m = GuestMemory::new(0x10000).unwrap();
        m.write(0xfff0, &[1, 2, 3]).unwrap();
        let mut b = [0u8; 3];
        m.read(0xfff0, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3]);
        assert!(m.equals(0xfff0, 3, Some(&[1, 2, 3])).unwrap());
        m.zero(0xfff0, 3).unwrap();
        assert!(m.equals(0xfff0, 3, None).unwrap());
        assert!(matches!(
            m.write(0xfffe, &[0; 3]),
            Err(MemoryError::OutOfRange { .. })
        ));
        assert!(m.read(u64::MAX, &mut b).is_err());
    }
}

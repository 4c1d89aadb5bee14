//! Safe wrappers for the vCPU ioctls that kvm-ioctls lacks or marks `unsafe`, for the catalogue's
//! negative and delivery checks: KVM_INTERRUPT, KVM_SET_SIGNAL_MASK and KVM_SET_XSAVE.
//!
//! Each returns the raw errno on failure, because the catalogue checks which errno came.

use kvm_bindings::kvm_xsave;
use kvm_ioctls::{VcpuFd, VmFd};
use std::os::fd::AsRawFd;

/// `KVM_INTERRUPT` = _IOW(KVMIO, 0x86, struct kvm_interrupt).
const KVM_INTERRUPT: libc::c_ulong = 0x4004_ae86;
/// `KVM_SET_SIGNAL_MASK` = _IOW(KVMIO, 0x8b, struct kvm_signal_mask).
const KVM_SET_SIGNAL_MASK: libc::c_ulong = 0x4004_ae8b;
/// `KVM_CAP_XSAVE2`: KVM_CHECK_EXTENSION returns the size KVM_GET/SET_XSAVE2 need.
const KVM_CAP_XSAVE2: libc::c_ulong = 208;

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// KVM_INTERRUPT: queues external interrupt `irq` (a vector) for a vCPU without an in-kernel PIC.
pub fn interrupt(vcpu: &VcpuFd, irq: u32) -> Result<(), i32> {
    #[repr(C)]
    struct KvmInterrupt {
        irq: u32,
    }
    let arg = KvmInterrupt { irq };
    // SAFETY: KVM_INTERRUPT reads one `struct kvm_interrupt` (a u32) from the pointer, which
    // points at `arg` for the whole call; the fd is a vCPU fd.
    let ret = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_INTERRUPT, &arg as *const KvmInterrupt) };
    if ret == 0 { Ok(()) } else { Err(last_errno()) }
}

/// KVM_SET_SIGNAL_MASK with the calling thread's current mask plus `block` (signals to keep
/// blocked while the guest runs) minus `unblock`.
pub fn set_signal_mask(vcpu: &VcpuFd, block: &[i32], unblock: &[i32]) -> Result<(), i32> {
    // SAFETY: a zeroed sigset_t is a valid value to pass to pthread_sigmask as the output; with a
    // null new set, pthread_sigmask only reads the current mask into `cur`.
    let mut cur: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: see above; `cur` is a live, writable sigset_t.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur) };
    for &s in block {
        // SAFETY: `cur` is an initialised sigset_t; sigaddset only writes inside it.
        unsafe { libc::sigaddset(&mut cur, s) };
    }
    for &s in unblock {
        // SAFETY: as above, for sigdelset.
        unsafe { libc::sigdelset(&mut cur, s) };
    }
    #[repr(C)]
    struct SignalMask {
        len: u32,
        sigset: [u8; 8],
    }
    let mut m = SignalMask {
        len: 8,
        sigset: [0; 8],
    };
    // SAFETY: on Linux x86-64 a sigset_t starts with the kernel's 64-bit signal set; we copy its
    // first 8 bytes, the size the kernel expects (len = 8), from `cur` into `m`.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (&cur as *const libc::sigset_t).cast::<u8>(),
            m.sigset.as_mut_ptr(),
            8,
        )
    };
    // SAFETY: KVM_SET_SIGNAL_MASK reads a kvm_signal_mask header and `len` (8) bytes after it,
    // all inside `m`, which lives for the whole call; the fd is a vCPU fd.
    let ret = unsafe {
        libc::ioctl(
            vcpu.as_raw_fd(),
            KVM_SET_SIGNAL_MASK,
            &m as *const SignalMask,
        )
    };
    if ret == 0 { Ok(()) } else { Err(last_errno()) }
}

/// KVM_SET_XSAVE with the legacy 4 KiB `kvm_xsave`.
///
/// KVM copies in `guest_fpu.uabi_size` bytes, which exceeds 4 KiB only for guests granted large
/// state components (AMX); KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) on the VM reports that size, and
/// this refuses (EINVAL, without calling KVM) when it is larger than the buffer.
pub fn set_xsave(vm: &VmFd, vcpu: &VcpuFd, xsave: &kvm_xsave) -> Result<(), i32> {
    let need = vm.check_extension_raw(KVM_CAP_XSAVE2);
    if need > 0 && need as usize > std::mem::size_of::<kvm_xsave>() {
        return Err(libc::EINVAL);
    }
    // SAFETY: KVM reads at most `need` bytes (checked above to fit `kvm_xsave`), or exactly
    // sizeof(kvm_xsave) when KVM_CAP_XSAVE2 is absent; `xsave` is a live reference.
    unsafe { vcpu.set_xsave(xsave) }.map_err(|e| e.errno())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ioctl_numbers_match_the_uapi_encoding() {
        // _IOW(type, nr, size) = (1 << 30) | (size << 16) | (type << 8) | nr, KVMIO = 0xae.
        let iow =
            |nr: libc::c_ulong, size: libc::c_ulong| (1 << 30) | (size << 16) | (0xae << 8) | nr;
        assert_eq!(super::KVM_INTERRUPT, iow(0x86, 4));
        assert_eq!(super::KVM_SET_SIGNAL_MASK, iow(0x8b, 4));
    }
}

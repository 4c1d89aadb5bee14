//! The vCPU fd level: [`Vcpu`], made only by [`crate::vm::Vm::try_create_vcpu`], owns every vCPU
//! ioctl the catalogue issues as a `try_` method returning [`VcpuError`] (the ioctl and its
//! errno), including those kvm-ioctls lacks or marks `unsafe` (KVM_INTERRUPT,
//! KVM_SET_SIGNAL_MASK, KVM_SET_XSAVE, KVM_GET_STATS_FD).

use crate::abi::{
    CpuId, Msrs, kvm_coalesced_mmio, kvm_debugregs, kvm_enable_cap, kvm_fpu, kvm_guest_debug,
    kvm_lapic_state, kvm_mp_state, kvm_regs, kvm_run, kvm_sregs, kvm_sync_regs, kvm_translation,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use crate::ioctl::{Errno, forward, ioctl_errors};
use kvm_ioctls::VcpuFd;
use std::os::fd::AsRawFd;

ioctl_errors! {
    /// A vCPU ioctl KVM rejected.
    pub enum VcpuError {
        GetRegs => "KVM_GET_REGS",
        SetRegs => "KVM_SET_REGS",
        GetSregs => "KVM_GET_SREGS",
        SetSregs => "KVM_SET_SREGS",
        GetFpu => "KVM_GET_FPU",
        SetFpu => "KVM_SET_FPU",
        GetXsave => "KVM_GET_XSAVE",
        SetXsave => "KVM_SET_XSAVE",
        GetXcrs => "KVM_GET_XCRS",
        SetXcrs => "KVM_SET_XCRS",
        GetDebugregs => "KVM_GET_DEBUGREGS",
        SetDebugregs => "KVM_SET_DEBUGREGS",
        GetVcpuEvents => "KVM_GET_VCPU_EVENTS",
        SetVcpuEvents => "KVM_SET_VCPU_EVENTS",
        GetMpState => "KVM_GET_MP_STATE",
        SetMpState => "KVM_SET_MP_STATE",
        GetLapic => "KVM_GET_LAPIC",
        SetLapic => "KVM_SET_LAPIC",
        GetCpuid2 => "KVM_GET_CPUID2",
        SetCpuid2 => "KVM_SET_CPUID2",
        GetMsrs => "KVM_GET_MSRS",
        SetMsrs => "KVM_SET_MSRS",
        Translate => "KVM_TRANSLATE",
        Nmi => "KVM_NMI",
        Interrupt => "KVM_INTERRUPT",
        SetSignalMask => "KVM_SET_SIGNAL_MASK",
        SetGuestDebug => "KVM_SET_GUEST_DEBUG",
        EnableCap => "KVM_ENABLE_CAP",
        Run => "KVM_RUN",
        GetStatsFd => "KVM_GET_STATS_FD",
        CoalescedRing => "mmap of the coalesced MMIO ring",
        CoalescedRead => "coalesced MMIO ring",
        Unassigned => "unassigned ioctl",
    }
}

/// `KVM_INTERRUPT` = _IOW(KVMIO, 0x86, struct kvm_interrupt).
const KVM_INTERRUPT: libc::c_ulong = crate::ioctl::iow(0x86, 4);
/// `KVM_SET_SIGNAL_MASK` = _IOW(KVMIO, 0x8b, struct kvm_signal_mask).
const KVM_SET_SIGNAL_MASK: libc::c_ulong = crate::ioctl::iow(0x8b, 4);

/// One vCPU fd and its mapped `kvm_run` area.
#[derive(Debug)]
pub struct Vcpu {
    pub(crate) fd: VcpuFd,
    /// KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) on the VM at creation: the size KVM_SET_XSAVE reads.
    xsave2: i32,
}

macro_rules! get {
    ($(#[$m:meta])* $name:ident, $call:ident, $t:ty, $v:ident) => {
        forward!(VcpuError, $(#[$m])* fn $name() -> $t = $call, $v);
    };
}

macro_rules! set {
    ($(#[$m:meta])* $name:ident, $call:ident, $t:ty, $v:ident) => {
        forward!(VcpuError, $(#[$m])* fn $name(value: &$t) -> () = $call, $v);
    };
}

impl Vcpu {
    pub(crate) fn new(fd: VcpuFd, xsave2: i32) -> Vcpu {
        Vcpu { fd, xsave2 }
    }

    /// The kvm-ioctls handle, for the harness's own run loop and reset.
    pub(crate) fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    pub(crate) fn fd_mut(&mut self) -> &mut VcpuFd {
        &mut self.fd
    }

    get!(
        /// KVM_GET_REGS.
        try_get_regs, get_regs, kvm_regs, GetRegs
    );
    set!(
        /// KVM_SET_REGS.
        try_set_regs, set_regs, kvm_regs, SetRegs
    );
    get!(
        /// KVM_GET_SREGS.
        try_get_sregs, get_sregs, kvm_sregs, GetSregs
    );
    set!(
        /// KVM_SET_SREGS.
        try_set_sregs, set_sregs, kvm_sregs, SetSregs
    );
    get!(
        /// KVM_GET_FPU.
        try_get_fpu, get_fpu, kvm_fpu, GetFpu
    );
    set!(
        /// KVM_SET_FPU.
        try_set_fpu, set_fpu, kvm_fpu, SetFpu
    );
    get!(
        /// KVM_GET_XSAVE (the legacy 4 KiB area).
        try_get_xsave, get_xsave, kvm_xsave, GetXsave
    );
    get!(
        /// KVM_GET_XCRS.
        try_get_xcrs, get_xcrs, kvm_xcrs, GetXcrs
    );
    set!(
        /// KVM_SET_XCRS.
        try_set_xcrs, set_xcrs, kvm_xcrs, SetXcrs
    );
    get!(
        /// KVM_GET_DEBUGREGS.
        try_get_debugregs, get_debug_regs, kvm_debugregs, GetDebugregs
    );
    set!(
        /// KVM_SET_DEBUGREGS.
        try_set_debugregs, set_debug_regs, kvm_debugregs, SetDebugregs
    );
    get!(
        /// KVM_GET_VCPU_EVENTS.
        try_get_vcpu_events, get_vcpu_events, kvm_vcpu_events, GetVcpuEvents
    );
    set!(
        /// KVM_SET_VCPU_EVENTS.
        try_set_vcpu_events, set_vcpu_events, kvm_vcpu_events, SetVcpuEvents
    );
    get!(
        /// KVM_GET_MP_STATE.
        try_get_mp_state, get_mp_state, kvm_mp_state, GetMpState
    );
    get!(
        /// KVM_GET_LAPIC.
        try_get_lapic, get_lapic, kvm_lapic_state, GetLapic
    );
    set!(
        /// KVM_SET_LAPIC.
        try_set_lapic, set_lapic, kvm_lapic_state, SetLapic
    );
    set!(
        /// KVM_SET_CPUID2.
        try_set_cpuid2, set_cpuid2, CpuId, SetCpuid2
    );
    set!(
        /// KVM_SET_GUEST_DEBUG.
        try_set_guest_debug, set_guest_debug, kvm_guest_debug, SetGuestDebug
    );
    set!(
        /// KVM_ENABLE_CAP on the vCPU.
        try_enable_cap, enable_cap, kvm_enable_cap, EnableCap
    );

    forward!(VcpuError,
        /// KVM_SET_MP_STATE.
        fn try_set_mp_state(value: kvm_mp_state) -> () = set_mp_state, SetMpState
    );

    forward!(VcpuError,
        /// KVM_GET_CPUID2 with room for `entries` entries.
        fn try_get_cpuid2(entries: usize) -> CpuId = get_cpuid2, GetCpuid2
    );

    forward!(VcpuError,
        /// KVM_GET_MSRS: reads the MSRs named in `msrs`; the number read.
        fn try_get_msrs(msrs: &mut Msrs) -> usize = get_msrs, GetMsrs
    );

    forward!(VcpuError,
        /// KVM_SET_MSRS: the number of MSRs KVM set (it stops at the first it rejects).
        fn try_set_msrs(msrs: &Msrs) -> usize = set_msrs, SetMsrs
    );

    forward!(VcpuError,
        /// KVM_TRANSLATE of guest-linear address `gva`.
        fn try_translate(gva: u64) -> kvm_translation = translate_gva, Translate
    );

    forward!(VcpuError,
        /// KVM_NMI.
        fn try_nmi() -> () = nmi, Nmi
    );

    /// KVM_INTERRUPT: queues external interrupt `irq` (a vector) for a vCPU without an in-kernel
    /// PIC.
    pub fn try_interrupt(&self, irq: u32) -> Result<(), VcpuError> {
        #[repr(C)]
        struct KvmInterrupt {
            irq: u32,
        }
        let arg = KvmInterrupt { irq };
        // SAFETY: KVM_INTERRUPT reads one `struct kvm_interrupt` (a u32) from the pointer, which
        // points at `arg` for the whole call.
        unsafe { self.ioctl_with_ref(KVM_INTERRUPT, &arg) }.map_err(VcpuError::Interrupt)
    }

    /// Issues `request` on the vCPU fd with a pointer to `arg`: Ok when the ioctl returns 0, else
    /// its errno.
    ///
    /// # Safety
    ///
    /// `request` must access no memory at the pointer outside `arg`.
    unsafe fn ioctl_with_ref<T>(&self, request: libc::c_ulong, arg: &T) -> Result<(), Errno> {
        // SAFETY: the caller vouches that `request` stays inside `arg`, which lives for the whole
        // call; the fd is a vCPU fd.
        let ret = unsafe { libc::ioctl(self.fd.as_raw_fd(), request, arg as *const T) };
        if ret == 0 { Ok(()) } else { Err(Errno::last()) }
    }

    /// KVM_SET_SIGNAL_MASK with the calling thread's current mask plus `block` (signals to keep
    /// blocked while the guest runs) minus `unblock`.
    pub fn try_set_signal_mask(&self, block: &[i32], unblock: &[i32]) -> Result<(), VcpuError> {
        // SAFETY: a zeroed sigset_t is a valid value to pass to pthread_sigmask as the output;
        // with a null new set, pthread_sigmask only reads the current mask into `cur`.
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
        // SAFETY: on Linux x86-64 a sigset_t starts with the kernel's 64-bit signal set; we copy
        // its first 8 bytes, the size the kernel expects (len = 8), from `cur` into `m`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (&cur as *const libc::sigset_t).cast::<u8>(),
                m.sigset.as_mut_ptr(),
                8,
            )
        };
        // SAFETY: KVM_SET_SIGNAL_MASK reads a kvm_signal_mask header and `len` (8) bytes after
        // it, all inside `m`, which lives for the whole call.
        unsafe { self.ioctl_with_ref(KVM_SET_SIGNAL_MASK, &m) }.map_err(VcpuError::SetSignalMask)
    }

    /// KVM_SET_XSAVE with the legacy 4 KiB `kvm_xsave`.
    ///
    /// KVM copies in `guest_fpu.uabi_size` bytes, which exceeds 4 KiB only for guests granted
    /// large state components (AMX); KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) on the VM reports that
    /// size, and this refuses (EINVAL, without calling KVM) when it is larger than the buffer.
    pub fn try_set_xsave(&self, xsave: &kvm_xsave) -> Result<(), VcpuError> {
        let need = self.xsave2;
        if need > 0 && need as usize > std::mem::size_of::<kvm_xsave>() {
            return Err(VcpuError::SetXsave(Errno(libc::EINVAL)));
        }
        // SAFETY: KVM reads at most `need` bytes (checked above to fit `kvm_xsave`), or exactly
        // sizeof(kvm_xsave) when KVM_CAP_XSAVE2 is absent; `xsave` is a live reference.
        unsafe { self.fd.set_xsave(xsave) }.map_err(|e| VcpuError::SetXsave(e.into()))
    }

    /// KVM_GET_STATS_FD on this vCPU.
    pub fn try_stats_fd(&self) -> Result<std::fs::File, VcpuError> {
        crate::ioctl::stats_fd(self.fd.as_raw_fd()).map_err(VcpuError::GetStatsFd)
    }

    /// Issues [`crate::ioctl::UNASSIGNED_IOCTL`] on this vCPU fd.
    pub fn try_unassigned_ioctl(&self) -> Result<(), VcpuError> {
        crate::ioctl::unassigned(self.fd.as_raw_fd()).map_err(VcpuError::Unassigned)
    }

    /// Maps the coalesced MMIO ring (KVM_CAP_COALESCED_MMIO's page of the vCPU mapping).
    pub fn try_map_coalesced_ring(&mut self) -> Result<(), VcpuError> {
        self.fd
            .map_coalesced_mmio_ring()
            .map_err(|e| VcpuError::CoalescedRing(e.into()))
    }

    /// Takes one entry from the coalesced MMIO ring (`None` when empty; EIO when not mapped).
    pub fn try_coalesced_read(&mut self) -> Result<Option<kvm_coalesced_mmio>, VcpuError> {
        self.fd
            .coalesced_mmio_read()
            .map_err(|e| VcpuError::CoalescedRead(e.into()))
    }

    /// The shared `kvm_run` structure (request_interrupt_window, if_flag, cr8, sync regs…).
    pub fn kvm_run(&mut self) -> &mut kvm_run {
        self.fd.get_kvm_run()
    }

    /// `kvm_run.s.regs` as KVM left them (KVM_CAP_SYNC_REGS).
    pub fn sync_regs(&self) -> kvm_sync_regs {
        self.fd.sync_regs()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ioctl_numbers_match_the_uapi_encoding() {
        assert_eq!(super::KVM_INTERRUPT, 0x4004_ae86);
        assert_eq!(super::KVM_SET_SIGNAL_MASK, 0x4004_ae8b);
    }
}

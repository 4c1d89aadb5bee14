//! The VM fd level: [`Vm`], made only by [`crate::Host::try_create_vm`], owns every VM ioctl the
//! catalogue issues as a `try_` method returning [`VmError`] (the ioctl and its errno), and makes
//! the vCPUs ([`Vm::try_create_vcpu`]). Memslots are set only through [`crate::TestVm`], which
//! owns the memory they point into.

use crate::abi::{
    EventFd, IoEventAddress, MsrFilterDefaultAction, MsrFilterRange, kvm_clock_data,
    kvm_enable_cap, kvm_ioeventfd, kvm_irqchip, kvm_pit_config, kvm_pit_state2,
    kvm_userspace_memory_region,
};
use crate::ioctl::{Errno, forward, ioctl_errors};
use crate::vcpu::Vcpu;
use kvm_ioctls::VmFd;
use std::os::fd::AsRawFd;

ioctl_errors! {
    /// A VM ioctl KVM rejected.
    pub enum VmError {
        CreateVcpu => "KVM_CREATE_VCPU",
        SetUserMemoryRegion => "KVM_SET_USER_MEMORY_REGION",
        GetDirtyLog => "KVM_GET_DIRTY_LOG",
        CreateIrqchip => "KVM_CREATE_IRQCHIP",
        GetIrqchip => "KVM_GET_IRQCHIP",
        SetIrqchip => "KVM_SET_IRQCHIP",
        CreatePit2 => "KVM_CREATE_PIT2",
        GetPit2 => "KVM_GET_PIT2",
        SetPit2 => "KVM_SET_PIT2",
        IrqLine => "KVM_IRQ_LINE",
        Ioeventfd => "KVM_IOEVENTFD",
        Irqfd => "KVM_IRQFD",
        GetClock => "KVM_GET_CLOCK",
        SetClock => "KVM_SET_CLOCK",
        SetTssAddr => "KVM_SET_TSS_ADDR",
        SetIdentityMapAddr => "KVM_SET_IDENTITY_MAP_ADDR",
        EnableCap => "KVM_ENABLE_CAP",
        RegisterCoalescedMmio => "KVM_REGISTER_COALESCED_MMIO",
        UnregisterCoalescedMmio => "KVM_UNREGISTER_COALESCED_MMIO",
        SetMsrFilter => "KVM_X86_SET_MSR_FILTER",
        GetStatsFd => "KVM_GET_STATS_FD",
        Unassigned => "unassigned ioctl",
    }
}

/// KVM_IOEVENTFD = _IOW(KVMIO, 0x79, struct kvm_ioeventfd).
const KVM_IOEVENTFD: libc::c_ulong = crate::ioctl::iow(0x79, 64);
/// `KVM_CAP_XSAVE2`: KVM_CHECK_EXTENSION returns the size KVM_GET/SET_XSAVE2 need.
const KVM_CAP_XSAVE2: u32 = 208;

/// A VM fd.
#[derive(Debug)]
pub struct Vm {
    fd: VmFd,
}

impl Vm {
    pub(crate) fn new(fd: VmFd) -> Vm {
        Vm { fd }
    }

    /// The kvm-ioctls handle: only for the harness's own baseline probe. Catalogue checks use
    /// the `try_` methods.
    pub(crate) fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// KVM_CREATE_VCPU with vCPU id `id` (no CPUID, registers as KVM made them).
    pub fn try_create_vcpu(&self, id: u64) -> Result<Vcpu, VmError> {
        let fd = self
            .fd
            .create_vcpu(id)
            .map_err(|e| VmError::CreateVcpu(e.into()))?;
        Ok(Vcpu::new(fd, self.check_extension_raw(KVM_CAP_XSAVE2)))
    }

    /// KVM_CHECK_EXTENSION on the VM fd, by capability number.
    pub fn check_extension_raw(&self, cap: u32) -> i32 {
        self.fd.check_extension_raw(libc::c_ulong::from(cap))
    }

    /// KVM_SET_USER_MEMORY_REGION.
    ///
    /// # Safety
    /// The userspace range of `region` must stay mapped for as long as KVM may use the slot.
    pub(crate) unsafe fn set_user_memory_region(
        &self,
        region: kvm_userspace_memory_region,
    ) -> Result<(), VmError> {
        // SAFETY: the caller keeps the userspace range mapped while the slot is live.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(|e| VmError::SetUserMemoryRegion(e.into()))
    }

    /// The memory step: one memslot per `(start, end)` RAM range, slot `i` for range `i`,
    /// backed by `mem` at the same offset, logging dirty pages when `dirty_log`.
    ///
    /// Panics if a range lies outside `mem` (a layout bug, not a KVM result).
    ///
    /// # Safety
    /// `mem` must stay mapped for as long as this VM fd lives.
    pub(crate) unsafe fn map_ram(
        &self,
        mem: &crate::memory::GuestMemory,
        slots: &[(u64, u64)],
        dirty_log: bool,
    ) -> Result<(), VmError> {
        for (i, &(start, end)) in slots.iter().enumerate() {
            assert!(
                start <= end && end <= mem.size(),
                "RAM range {start:#x}..{end:#x} outside the {:#x}-byte guest memory",
                mem.size()
            );
            let region = kvm_userspace_memory_region {
                slot: i as u32,
                flags: if dirty_log {
                    crate::abi::KVM_MEM_LOG_DIRTY_PAGES
                } else {
                    0
                },
                guest_phys_addr: start,
                memory_size: end - start,
                userspace_addr: mem.host_addr() + start,
            };
            // SAFETY: the caller keeps `mem` mapped while this VM fd (and so the slot) lives.
            unsafe { self.set_user_memory_region(region) }?;
        }
        Ok(())
    }

    forward!(VmError,
        /// KVM_GET_DIRTY_LOG of `slot` (`size` bytes): one bit per page, bit 0 the slot's first.
        fn try_get_dirty_log(slot: u32, size: usize) -> Vec<u64> = get_dirty_log, GetDirtyLog
    );

    forward!(VmError,
        /// KVM_CREATE_IRQCHIP.
        fn try_create_irqchip() -> () = create_irq_chip, CreateIrqchip
    );

    forward!(VmError,
        /// KVM_GET_IRQCHIP of the chip named by `chip.chip_id`.
        fn try_get_irqchip(chip: &mut kvm_irqchip) -> () = get_irqchip, GetIrqchip
    );

    forward!(VmError,
        /// KVM_SET_IRQCHIP.
        fn try_set_irqchip(chip: &kvm_irqchip) -> () = set_irqchip, SetIrqchip
    );

    forward!(VmError,
        /// KVM_CREATE_PIT2.
        fn try_create_pit2(config: kvm_pit_config) -> () = create_pit2, CreatePit2
    );

    forward!(VmError,
        /// KVM_GET_PIT2.
        fn try_get_pit2() -> kvm_pit_state2 = get_pit2, GetPit2
    );

    forward!(VmError,
        /// KVM_SET_PIT2.
        fn try_set_pit2(state: &kvm_pit_state2) -> () = set_pit2, SetPit2
    );

    forward!(VmError,
        /// KVM_IRQ_LINE: sets `irq` to `active`.
        fn try_irq_line(irq: u32, active: bool) -> () = set_irq_line, IrqLine
    );

    forward!(VmError,
        /// KVM_IOEVENTFD (assign) through kvm-ioctls, which derives `len` from `datamatch`.
        fn try_register_ioevent<T: Into<u64>>(fd: &EventFd, addr: &IoEventAddress, datamatch: T)
            -> () = register_ioevent, Ioeventfd
    );

    forward!(VmError,
        /// KVM_IOEVENTFD with KVM_IOEVENTFD_FLAG_DEASSIGN.
        fn try_unregister_ioevent<T: Into<u64>>(fd: &EventFd, addr: &IoEventAddress, datamatch: T)
            -> () = unregister_ioevent, Ioeventfd
    );

    /// KVM_IOEVENTFD with a caller-built `struct kvm_ioeventfd` (kvm-ioctls derives `len` from
    /// the datamatch type, so it cannot ask for the lengths KVM must reject).
    pub fn try_ioeventfd(&self, args: &kvm_ioeventfd) -> Result<(), VmError> {
        // SAFETY: KVM_IOEVENTFD reads one `struct kvm_ioeventfd` from the pointer, which is
        // `args`; the eventfd it names is looked up (and checked) by the kernel.
        let ret = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                KVM_IOEVENTFD,
                args as *const kvm_ioeventfd,
            )
        };
        if ret < 0 {
            return Err(VmError::Ioeventfd(Errno::last()));
        }
        Ok(())
    }

    forward!(VmError,
        /// KVM_IRQFD (assign) of `fd` to `gsi`.
        fn try_register_irqfd(fd: &EventFd, gsi: u32) -> () = register_irqfd, Irqfd
    );

    forward!(VmError,
        /// KVM_IRQFD with KVM_IRQFD_FLAG_DEASSIGN.
        fn try_unregister_irqfd(fd: &EventFd, gsi: u32) -> () = unregister_irqfd, Irqfd
    );

    forward!(VmError,
        /// KVM_GET_CLOCK.
        fn try_get_clock() -> kvm_clock_data = get_clock, GetClock
    );

    forward!(VmError,
        /// KVM_SET_CLOCK.
        fn try_set_clock(clock: &kvm_clock_data) -> () = set_clock, SetClock
    );

    forward!(VmError,
        /// KVM_SET_TSS_ADDR.
        fn try_set_tss_address(addr: usize) -> () = set_tss_address, SetTssAddr
    );

    forward!(VmError,
        /// KVM_SET_IDENTITY_MAP_ADDR.
        fn try_set_identity_map_address(addr: u64) -> ()
            = set_identity_map_address, SetIdentityMapAddr
    );

    forward!(VmError,
        /// KVM_ENABLE_CAP on the VM.
        fn try_enable_cap(cap: &kvm_enable_cap) -> () = enable_cap, EnableCap
    );

    forward!(VmError,
        /// KVM_REGISTER_COALESCED_MMIO (or PIO, by the address's kind).
        fn try_register_coalesced_mmio(addr: IoEventAddress, size: u32) -> ()
            = register_coalesced_mmio, RegisterCoalescedMmio
    );

    forward!(VmError,
        /// KVM_UNREGISTER_COALESCED_MMIO.
        fn try_unregister_coalesced_mmio(addr: IoEventAddress, size: u32) -> ()
            = unregister_coalesced_mmio, UnregisterCoalescedMmio
    );

    forward!(VmError,
        /// KVM_X86_SET_MSR_FILTER.
        fn try_set_msr_filter(
            default_action: MsrFilterDefaultAction,
            ranges: &[MsrFilterRange<'_>]
        ) -> () = set_msr_filter, SetMsrFilter
    );

    /// KVM_GET_STATS_FD on this VM.
    pub fn try_stats_fd(&self) -> Result<std::fs::File, VmError> {
        crate::ioctl::stats_fd(self.fd.as_raw_fd()).map_err(VmError::GetStatsFd)
    }

    /// Issues [`crate::ioctl::UNASSIGNED_IOCTL`] on this VM fd.
    pub fn try_unassigned_ioctl(&self) -> Result<(), VmError> {
        crate::ioctl::unassigned(self.fd.as_raw_fd()).map_err(VmError::Unassigned)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ioctl_numbers_match_the_uapi_header() {
        assert_eq!(super::KVM_IOEVENTFD, 0x4040_ae79);
        assert_eq!(crate::ioctl::KVM_GET_STATS_FD, 0xaece);
    }
}

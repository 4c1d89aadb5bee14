//! The VM fd level: [`Vm`], made only by [`crate::Host::try_create_vm`], owns every VM ioctl the
//! catalogue issues as a `try_` method returning [`VmError`] (the ioctl and its errno), and makes
//! the vCPUs ([`Vm::try_create_vcpu`]). Memslots are set only through [`crate::TestVm`], which
//! owns the memory they point into.

use crate::abi::{
    EventFd, IoEventAddress, MsrFilterDefaultAction, MsrFilterRange, kvm_clock_data,
    kvm_enable_cap, kvm_ioeventfd, kvm_irqchip, kvm_pit_config, kvm_pit_state2,
    kvm_userspace_memory_region,
};
use crate::ioctl::{Errno, ioctl_errors};
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

    /// KVM_GET_DIRTY_LOG of `slot` (`size` bytes): one bit per page, bit 0 the slot's first.
    pub fn try_get_dirty_log(&self, slot: u32, size: usize) -> Result<Vec<u64>, VmError> {
        self.fd
            .get_dirty_log(slot, size)
            .map_err(|e| VmError::GetDirtyLog(e.into()))
    }

    /// KVM_CREATE_IRQCHIP.
    pub fn try_create_irqchip(&self) -> Result<(), VmError> {
        self.fd
            .create_irq_chip()
            .map_err(|e| VmError::CreateIrqchip(e.into()))
    }

    /// KVM_GET_IRQCHIP of the chip named by `chip.chip_id`.
    pub fn try_get_irqchip(&self, chip: &mut kvm_irqchip) -> Result<(), VmError> {
        self.fd
            .get_irqchip(chip)
            .map_err(|e| VmError::GetIrqchip(e.into()))
    }

    /// KVM_SET_IRQCHIP.
    pub fn try_set_irqchip(&self, chip: &kvm_irqchip) -> Result<(), VmError> {
        self.fd
            .set_irqchip(chip)
            .map_err(|e| VmError::SetIrqchip(e.into()))
    }

    /// KVM_CREATE_PIT2.
    pub fn try_create_pit2(&self, config: kvm_pit_config) -> Result<(), VmError> {
        self.fd
            .create_pit2(config)
            .map_err(|e| VmError::CreatePit2(e.into()))
    }

    /// KVM_GET_PIT2.
    pub fn try_get_pit2(&self) -> Result<kvm_pit_state2, VmError> {
        self.fd.get_pit2().map_err(|e| VmError::GetPit2(e.into()))
    }

    /// KVM_SET_PIT2.
    pub fn try_set_pit2(&self, state: &kvm_pit_state2) -> Result<(), VmError> {
        self.fd
            .set_pit2(state)
            .map_err(|e| VmError::SetPit2(e.into()))
    }

    /// KVM_IRQ_LINE: sets `irq` to `active`.
    pub fn try_irq_line(&self, irq: u32, active: bool) -> Result<(), VmError> {
        self.fd
            .set_irq_line(irq, active)
            .map_err(|e| VmError::IrqLine(e.into()))
    }

    /// KVM_IOEVENTFD (assign) through kvm-ioctls, which derives `len` from `datamatch`.
    pub fn try_register_ioevent<T: Into<u64>>(
        &self,
        fd: &EventFd,
        addr: &IoEventAddress,
        datamatch: T,
    ) -> Result<(), VmError> {
        self.fd
            .register_ioevent(fd, addr, datamatch)
            .map_err(|e| VmError::Ioeventfd(e.into()))
    }

    /// KVM_IOEVENTFD with KVM_IOEVENTFD_FLAG_DEASSIGN.
    pub fn try_unregister_ioevent<T: Into<u64>>(
        &self,
        fd: &EventFd,
        addr: &IoEventAddress,
        datamatch: T,
    ) -> Result<(), VmError> {
        self.fd
            .unregister_ioevent(fd, addr, datamatch)
            .map_err(|e| VmError::Ioeventfd(e.into()))
    }

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

    /// KVM_IRQFD (assign) of `fd` to `gsi`.
    pub fn try_register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(fd, gsi)
            .map_err(|e| VmError::Irqfd(e.into()))
    }

    /// KVM_IRQFD with KVM_IRQFD_FLAG_DEASSIGN.
    pub fn try_unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .unregister_irqfd(fd, gsi)
            .map_err(|e| VmError::Irqfd(e.into()))
    }

    /// KVM_GET_CLOCK.
    pub fn try_get_clock(&self) -> Result<kvm_clock_data, VmError> {
        self.fd.get_clock().map_err(|e| VmError::GetClock(e.into()))
    }

    /// KVM_SET_CLOCK.
    pub fn try_set_clock(&self, clock: &kvm_clock_data) -> Result<(), VmError> {
        self.fd
            .set_clock(clock)
            .map_err(|e| VmError::SetClock(e.into()))
    }

    /// KVM_SET_TSS_ADDR.
    pub fn try_set_tss_address(&self, addr: usize) -> Result<(), VmError> {
        self.fd
            .set_tss_address(addr)
            .map_err(|e| VmError::SetTssAddr(e.into()))
    }

    /// KVM_SET_IDENTITY_MAP_ADDR.
    pub fn try_set_identity_map_address(&self, addr: u64) -> Result<(), VmError> {
        self.fd
            .set_identity_map_address(addr)
            .map_err(|e| VmError::SetIdentityMapAddr(e.into()))
    }

    /// KVM_ENABLE_CAP on the VM.
    pub fn try_enable_cap(&self, cap: &kvm_enable_cap) -> Result<(), VmError> {
        self.fd
            .enable_cap(cap)
            .map_err(|e| VmError::EnableCap(e.into()))
    }

    /// KVM_REGISTER_COALESCED_MMIO (or PIO, by the address's kind).
    pub fn try_register_coalesced_mmio(
        &self,
        addr: IoEventAddress,
        size: u32,
    ) -> Result<(), VmError> {
        self.fd
            .register_coalesced_mmio(addr, size)
            .map_err(|e| VmError::RegisterCoalescedMmio(e.into()))
    }

    /// KVM_UNREGISTER_COALESCED_MMIO.
    pub fn try_unregister_coalesced_mmio(
        &self,
        addr: IoEventAddress,
        size: u32,
    ) -> Result<(), VmError> {
        self.fd
            .unregister_coalesced_mmio(addr, size)
            .map_err(|e| VmError::UnregisterCoalescedMmio(e.into()))
    }

    /// KVM_X86_SET_MSR_FILTER.
    pub fn try_set_msr_filter(
        &self,
        default_action: MsrFilterDefaultAction,
        ranges: &[MsrFilterRange<'_>],
    ) -> Result<(), VmError> {
        self.fd
            .set_msr_filter(default_action, ranges)
            .map_err(|e| VmError::SetMsrFilter(e.into()))
    }

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

//! The KVM layer: one safe type per fd level — [`Host`] (`/dev/kvm`), [`TestVm`] (a VM with its
//! RAM and memslots) and [`TestVcpu`] — and the only place besides `memory` with `unsafe`.

use crate::exit::{self, KvmExit};
use crate::memory::{GuestMemory, MemoryError};
use crate::watchdog;
use kvm_bindings::{
    CpuId, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_MAX_CPUID_ENTRIES,
    KVM_MEM_LOG_DIRTY_PAGES, kvm_debugregs, kvm_guest_debug, kvm_regs, kvm_sregs,
    kvm_userspace_memory_region, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{Cap, Kvm, SyncReg, VcpuFd, VmFd};
use kvmconf_guests::layout::{CpuState, Layout};

/// A failed KVM call, naming the ioctl and keeping the errno.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open {path}: {0}", path = kvm_path())]
    NoKvm(std::io::Error),
    /// An ioctl failed.
    #[error("{ioctl} failed: {} (errno {errno})", std::io::Error::from_raw_os_error(*.errno))]
    Ioctl {
        /// The ioctl's name.
        ioctl: &'static str,
        /// The errno.
        errno: i32,
    },
    /// Guest memory could not be mapped or accessed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The watchdog could not be set up.
    #[error(transparent)]
    Watchdog(#[from] watchdog::WatchdogError),
}

impl KvmError {
    /// The errno, for ioctl failures.
    pub fn errno(&self) -> Option<i32> {
        match self {
            KvmError::Ioctl { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

fn ioctl_err(ioctl: &'static str) -> impl Fn(kvm_ioctls::Error) -> KvmError {
    move |e| KvmError::Ioctl {
        ioctl,
        errno: e.errno(),
    }
}

/// The `/dev/kvm` handle.
#[derive(Debug)]
pub struct Host {
    kvm: Kvm,
    cpuid: CpuId,
}

impl Host {
    /// Opens `/dev/kvm` and reads the supported CPUID.
    pub fn open() -> Result<Host, KvmError> {
        let path = std::ffi::CString::new(kvm_path())
            .map_err(|_| KvmError::NoKvm(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
        let kvm = Kvm::new_with_path(&path)
            .map_err(|e| KvmError::NoKvm(std::io::Error::from_raw_os_error(e.errno())))?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl_err("KVM_GET_SUPPORTED_CPUID"))?;
        Ok(Host { kvm, cpuid })
    }

    /// The underlying kvm-ioctls handle, for catalogue tests that call the API directly.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// KVM_CHECK_EXTENSION.
    pub fn check(&self, cap: Cap) -> i32 {
        self.kvm.check_extension_int(cap)
    }

    /// KVM_CHECK_EXTENSION by number (for capabilities kvm-ioctls has no name for).
    pub fn check_raw(&self, cap: u32) -> i32 {
        self.kvm.check_extension_raw(libc::c_ulong::from(cap))
    }

    /// The CPUID the host supports (given to every vCPU).
    pub fn supported_cpuid(&self) -> &CpuId {
        &self.cpuid
    }

    /// Creates a VM with RAM and memslots for `layout` and one vCPU.
    pub fn create_vm(&self, layout: &Layout, dirty_log: bool) -> Result<TestVm, KvmError> {
        let vm = self.kvm.create_vm().map_err(ioctl_err("KVM_CREATE_VM"))?;
        if layout.ram_size <= TSS_ADDR {
            vm.set_tss_address(TSS_ADDR as usize)
                .map_err(ioctl_err("KVM_SET_TSS_ADDR"))?;
        }
        let mem = GuestMemory::new(layout.ram_size)?;
        let slots = layout.ram_slots();
        for (i, &(start, end)) in slots.iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: i as u32,
                flags: if dirty_log {
                    KVM_MEM_LOG_DIRTY_PAGES
                } else {
                    0
                },
                guest_phys_addr: start,
                memory_size: end - start,
                userspace_addr: mem.host_addr() + start,
            };
            // SAFETY: the userspace range lies inside `mem`, which lives as long as the VM
            // (TestVm drops the VmFd, and with it the slots, before the memory).
            unsafe { vm.set_user_memory_region(region) }
                .map_err(ioctl_err("KVM_SET_USER_MEMORY_REGION"))?;
        }
        let vcpu = TestVcpu::new(&vm, 0, &self.cpuid)?;
        Ok(TestVm {
            vcpu,
            vm,
            mem,
            slots,
            dirty_log,
            layout: layout.clone(),
        })
    }
}

/// The KVM device: `$KVMCONF_KVM_PATH`, else `/dev/kvm`.
pub fn kvm_path() -> String {
    std::env::var("KVMCONF_KVM_PATH").unwrap_or_else(|_| "/dev/kvm".into())
}

/// Where KVM_SET_TSS_ADDR puts its three pages (below 4 GiB, above RAM when RAM allows).
pub const TSS_ADDR: u64 = 0xfffb_d000;

/// A VM with one vCPU, its RAM and memslots. Fields drop in order: vCPU, VM, then RAM.
#[derive(Debug)]
pub struct TestVm {
    /// The vCPU.
    pub vcpu: TestVcpu,
    vm: VmFd,
    /// Guest RAM.
    pub mem: GuestMemory,
    slots: Vec<(u64, u64)>,
    dirty_log: bool,
    layout: Layout,
}

impl TestVm {
    /// The kvm-ioctls VM handle.
    pub fn fd(&self) -> &VmFd {
        &self.vm
    }

    /// The layout the memslots were made for.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Replaces the layout (same memslot shape, other stubs or mode) for the next case.
    pub fn set_layout(&mut self, layout: Layout) {
        debug_assert_eq!(layout.ram_slots(), self.slots);
        self.layout = layout;
    }

    /// Whether memslots log dirty pages.
    pub fn dirty_log(&self) -> bool {
        self.dirty_log
    }

    /// Guest-physical page addresses written since the last call (KVM_GET_DIRTY_LOG, all slots).
    pub fn take_dirty_pages(&self, out: &mut Vec<u64>) -> Result<(), KvmError> {
        for (i, &(start, end)) in self.slots.iter().enumerate() {
            let bitmap = self
                .vm
                .get_dirty_log(i as u32, (end - start) as usize)
                .map_err(ioctl_err("KVM_GET_DIRTY_LOG"))?;
            for (w, &word) in bitmap.iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    let b = bits.trailing_zeros() as u64;
                    out.push(start + ((w as u64) * 64 + b) * 4096);
                    bits &= bits - 1;
                }
            }
        }
        Ok(())
    }
}

/// vCPU state that cases can change and a pooled reset must restore.
#[derive(Debug)]
pub struct AuxState {
    xsave: kvm_xsave,
    xcrs: Option<kvm_xcrs>,
    debugregs: kvm_debugregs,
    events: kvm_vcpu_events,
    msrs: kvm_bindings::Msrs,
    mp_state: kvm_bindings::kvm_mp_state,
}

/// MSRs a case can write with WRMSR that a pooled reset restores.
pub const RESET_MSRS: &[u32] = &[
    0x174,       // SYSENTER_CS
    0x175,       // SYSENTER_ESP
    0x176,       // SYSENTER_EIP
    0x277,       // PAT
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SFMASK
    0xc000_0100, // FS_BASE (also in sregs)
    0xc000_0101, // GS_BASE
    0xc000_0102, // KERNEL_GS_BASE
    0xc000_0103, // TSC_AUX
];

/// The [`RESET_MSRS`] as a KVM_GET_MSRS request.
pub fn reset_msr_list() -> kvm_bindings::Msrs {
    kvm_bindings::Msrs::from_entries(
        &RESET_MSRS
            .iter()
            .map(|&index| kvm_bindings::kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect::<Vec<_>>(),
    )
    .expect("a short MSR list fits")
}

/// Whether KVM_CAP_SYNC_REGS covers regs, sregs and vCPU events on this VM.
pub fn sync_regs_supported(vm: &VmFd) -> bool {
    let want = kvm_bindings::KVM_SYNC_X86_REGS
        | kvm_bindings::KVM_SYNC_X86_SREGS
        | kvm_bindings::KVM_SYNC_X86_EVENTS;
    (vm.check_extension_raw(libc::c_ulong::from(kvm_bindings::KVM_CAP_SYNC_REGS)) as u32 & want)
        == want
}

/// One vCPU and its mapped `kvm_run` area.
#[derive(Debug)]
pub struct TestVcpu {
    fd: VcpuFd,
    run_len: usize,
    mask_tid: i32,
    sregs_base: kvm_sregs,
    aux: AuxState,
    single_step: bool,
    /// KVM_CAP_XCRS is available.
    has_xcrs: bool,
    /// KVM_CAP_SYNC_REGS covers regs, sregs and events.
    sync: bool,
    /// State staged in kvm_run.s that KVM has not applied yet.
    staged: bool,
}

impl TestVcpu {
    fn new(vm: &VmFd, id: u64, cpuid: &CpuId) -> Result<TestVcpu, KvmError> {
        let fd = vm.create_vcpu(id).map_err(ioctl_err("KVM_CREATE_VCPU"))?;
        fd.set_cpuid2(cpuid).map_err(ioctl_err("KVM_SET_CPUID2"))?;
        let sregs_base = fd.get_sregs().map_err(ioctl_err("KVM_GET_SREGS"))?;
        let has_xcrs = vm.check_extension(Cap::Xcrs);
        let mut msrs = reset_msr_list();
        let n = fd.get_msrs(&mut msrs).map_err(ioctl_err("KVM_GET_MSRS"))?;
        let msrs = kvm_bindings::Msrs::from_entries(&msrs.as_slice()[..n]).expect("fits");
        let aux = AuxState {
            xsave: fd.get_xsave().map_err(ioctl_err("KVM_GET_XSAVE"))?,
            xcrs: if has_xcrs {
                Some(fd.get_xcrs().map_err(ioctl_err("KVM_GET_XCRS"))?)
            } else {
                None
            },
            debugregs: fd
                .get_debug_regs()
                .map_err(ioctl_err("KVM_GET_DEBUGREGS"))?,
            events: fd
                .get_vcpu_events()
                .map_err(ioctl_err("KVM_GET_VCPU_EVENTS"))?,
            msrs,
            mp_state: fd.get_mp_state().map_err(ioctl_err("KVM_GET_MP_STATE"))?,
        };
        let sync = !no_sync_regs() && sync_regs_supported(vm);
        let mut v = TestVcpu {
            fd,
            run_len: vm.run_size(),
            mask_tid: 0,
            sregs_base,
            aux,
            single_step: false,
            has_xcrs,
            sync,
            staged: false,
        };
        if sync {
            v.fd.set_sync_valid_reg(SyncReg::Register);
            v.fd.set_sync_valid_reg(SyncReg::SystemRegister);
        }
        v.bind_thread()?;
        Ok(v)
    }

    /// The kvm-ioctls vCPU handle.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// The mutable kvm-ioctls vCPU handle.
    pub fn fd_mut(&mut self) -> &mut VcpuFd {
        &mut self.fd
    }

    /// Sets KVM_SET_SIGNAL_MASK to the calling thread's mask minus the watchdog signal.
    fn bind_thread(&mut self) -> Result<(), KvmError> {
        let tid = watchdog::current_thread();
        if self.mask_tid == tid {
            return Ok(());
        }
        // Register this thread with the watchdog (which blocks the signal) before reading the mask.
        drop(watchdog::Deadline::arm(std::time::Duration::from_secs(
            3600,
        ))?);
        crate::raw_vcpu::set_signal_mask(&self.fd, &[], &[watchdog::signal()]).map_err(
            |errno| KvmError::Ioctl {
                ioctl: "KVM_SET_SIGNAL_MASK",
                errno,
            },
        )?;
        self.mask_tid = tid;
        Ok(())
    }

    /// The whole `kvm_run` mapping.
    pub fn run_area(&mut self) -> &mut [u8] {
        let p = (self.fd.get_kvm_run() as *mut kvm_bindings::kvm_run).cast::<u8>();
        // SAFETY: KVM maps `run_len` (KVM_GET_VCPU_MMAP_SIZE) bytes at the kvm_run pointer for
        // the life of the vCPU fd, and `&mut self` makes this the only live reference.
        unsafe { std::slice::from_raw_parts_mut(p, self.run_len) }
    }

    /// Sets `immediate_exit`.
    pub fn set_immediate_exit(&mut self, on: bool) {
        self.fd.set_kvm_immediate_exit(u8::from(on));
    }

    /// KVM_RUN once; `Err(errno)` when the ioctl fails (EINTR when interrupted).
    pub fn run_once(&mut self) -> Result<KvmExit, i32> {
        let fd = &mut self.fd;
        let r = crate::kcov::around(|| fd.run().map(drop).map_err(|e| e.errno()));
        if r.is_ok() || r == Err(libc::EINTR) {
            // KVM applied (and cleared) the staged sets before running or being interrupted.
            self.staged = false;
        }
        r.map(|()| exit::decode(self.run_area()))
    }

    /// Binds to the calling thread (signal mask) before running there.
    pub fn prepare_thread(&mut self) -> Result<(), KvmError> {
        self.bind_thread()
    }

    /// Loads `cpu` and the creation-time vCPU events for the next KVM_RUN: staged in `kvm_run.s`
    /// when KVM_CAP_SYNC_REGS allows (no ioctls), else with KVM_SET_SREGS/REGS/VCPU_EVENTS.
    pub fn load_state(&mut self, cpu: &CpuState) -> Result<(), KvmError> {
        if !self.sync {
            self.fd
                .set_vcpu_events(&self.aux.events)
                .map_err(ioctl_err("KVM_SET_VCPU_EVENTS"))?;
            return self.set_state(cpu);
        }
        let sregs = crate::state::to_kvm_sregs(cpu, &self.sregs_base);
        let regs = crate::state::to_kvm_regs(cpu);
        let events = self.aux.events;
        let s = self.fd.sync_regs_mut();
        s.regs = regs;
        s.sregs = sregs;
        s.events = events;
        for r in [
            SyncReg::Register,
            SyncReg::SystemRegister,
            SyncReg::VcpuEvents,
        ] {
            self.fd.set_sync_dirty_reg(r);
        }
        self.staged = true;
        Ok(())
    }

    /// Whether state is staged in `kvm_run.s` for the next KVM_RUN.
    pub fn staged(&self) -> bool {
        self.staged
    }

    /// Drops staged state and loads it with explicit ioctls instead, to learn which one KVM
    /// rejects (KVM_RUN reports a rejected sync-regs state only as EINVAL).
    pub fn unstage_and_set(&mut self, cpu: &CpuState) -> Result<(), KvmError> {
        for r in [
            SyncReg::Register,
            SyncReg::SystemRegister,
            SyncReg::VcpuEvents,
        ] {
            self.fd.clear_sync_dirty_reg(r);
        }
        self.staged = false;
        self.fd
            .set_vcpu_events(&self.aux.events)
            .map_err(ioctl_err("KVM_SET_VCPU_EVENTS"))?;
        self.set_state(cpu)
    }

    /// The CPU state after the last exit: from `kvm_run.s` when KVM filled it, else read.
    pub fn exit_state(&self) -> Result<CpuState, KvmError> {
        if self.sync && !self.staged {
            let s = self.fd.sync_regs();
            return Ok(crate::state::from_kvm(&s.regs, &s.sregs));
        }
        self.state()
    }

    /// Loads `cpu` into the vCPU with KVM_SET_REGS and KVM_SET_SREGS.
    pub fn set_state(&mut self, cpu: &CpuState) -> Result<(), KvmError> {
        let sregs = crate::state::to_kvm_sregs(cpu, &self.sregs_base);
        self.fd
            .set_sregs(&sregs)
            .map_err(ioctl_err("KVM_SET_SREGS"))?;
        self.fd
            .set_regs(&crate::state::to_kvm_regs(cpu))
            .map_err(ioctl_err("KVM_SET_REGS"))?;
        Ok(())
    }

    /// Reads the CPU state (KVM_GET_REGS, KVM_GET_SREGS).
    pub fn state(&self) -> Result<CpuState, KvmError> {
        let r: kvm_regs = self.fd.get_regs().map_err(ioctl_err("KVM_GET_REGS"))?;
        let s = self.fd.get_sregs().map_err(ioctl_err("KVM_GET_SREGS"))?;
        Ok(crate::state::from_kvm(&r, &s))
    }

    /// Restores XSAVE, XCRs, debug registers, MSRs and MP state to their values at creation
    /// (vCPU events are restored by [`TestVcpu::load_state`]).
    pub fn reset_aux(&mut self) -> Result<(), KvmError> {
        // SAFETY: `xsave` came from KVM_GET_XSAVE on this vCPU, so its size is the legacy
        // 4 KiB area KVM_SET_XSAVE reads.
        unsafe { self.fd.set_xsave(&self.aux.xsave) }.map_err(ioctl_err("KVM_SET_XSAVE"))?;
        if let Some(x) = &self.aux.xcrs {
            self.fd.set_xcrs(x).map_err(ioctl_err("KVM_SET_XCRS"))?;
        }
        self.fd
            .set_debug_regs(&self.aux.debugregs)
            .map_err(ioctl_err("KVM_SET_DEBUGREGS"))?;
        self.fd
            .set_msrs(&self.aux.msrs)
            .map_err(ioctl_err("KVM_SET_MSRS"))?;
        self.fd
            .set_mp_state(self.aux.mp_state)
            .map_err(ioctl_err("KVM_SET_MP_STATE"))?;
        Ok(())
    }

    /// Turns single-stepping (KVM_SET_GUEST_DEBUG) on or off.
    pub fn set_single_step(&mut self, on: bool) -> Result<(), KvmError> {
        if on == self.single_step {
            return Ok(());
        }
        let dbg = kvm_guest_debug {
            control: if on {
                KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP
            } else {
                0
            },
            ..Default::default()
        };
        self.fd
            .set_guest_debug(&dbg)
            .map_err(ioctl_err("KVM_SET_GUEST_DEBUG"))?;
        self.single_step = on;
        Ok(())
    }

    /// Whether KVM_CAP_XCRS was reported.
    pub fn has_xcrs(&self) -> bool {
        self.has_xcrs
    }

    /// Sync-regs are not used by the run loop; this clears any request a test left behind.
    pub fn clear_sync_regs(&mut self) {
        for r in [
            SyncReg::Register,
            SyncReg::SystemRegister,
            SyncReg::VcpuEvents,
        ] {
            self.fd.clear_sync_valid_reg(r);
            self.fd.clear_sync_dirty_reg(r);
        }
    }
}

/// `KVMCONF_NO_SYNC_REGS=1` makes the harness use explicit ioctls even where sync regs exist.
fn no_sync_regs() -> bool {
    std::env::var_os("KVMCONF_NO_SYNC_REGS").is_some_and(|v| v == "1")
}

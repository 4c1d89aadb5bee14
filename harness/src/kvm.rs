//! The system fd level and the booted test machine: [`Host`] (`/dev/kvm`, its `try_` system
//! ioctls, and the one boot sequence: VM → RAM and memslots → vCPU), [`TestVm`] (a [`Vm`] with
//! its RAM, memslots and one [`TestVcpu`]) and [`TestVcpu`] (a [`Vcpu`] with the state a pooled
//! reset restores).

use crate::exit::{self, KvmExit};
use crate::ioctl::{Errno, ioctl_errors};
use crate::memory::{GuestMemory, MemoryError};
use crate::vcpu::Vcpu;
use crate::vm::{Vm, VmError};
use crate::watchdog;
use kvm_bindings::{
    CpuId, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_MAX_CPUID_ENTRIES, Msrs,
    kvm_cpuid_entry2, kvm_debugregs, kvm_guest_debug, kvm_sregs, kvm_userspace_memory_region,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{Cap, Kvm, SyncReg, VmFd};
use kvmconf_guests::case::{Case, Mode};
use kvmconf_guests::layout::{CpuState, GuestModel, Layout};
use std::os::fd::AsRawFd;

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

impl crate::ioctl::IoctlFailure for KvmError {
    fn errno(&self) -> Option<i32> {
        KvmError::errno(self)
    }
}

ioctl_errors! {
    /// A system ioctl (on `/dev/kvm`) KVM rejected.
    pub enum SystemError {
        CreateVm => "KVM_CREATE_VM",
        GetVcpuMmapSize => "KVM_GET_VCPU_MMAP_SIZE",
        GetMsrs => "KVM_GET_MSRS",
        GetSupportedCpuid => "KVM_GET_SUPPORTED_CPUID",
        Unassigned => "unassigned ioctl",
    }
}

/// KVM_GET_MSR_INDEX_LIST = _IOWR(KVMIO, 0x02, struct kvm_msr_list).
const KVM_GET_MSR_INDEX_LIST: libc::c_ulong = crate::ioctl::iowr(0x02, 4);
/// KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, struct kvm_cpuid2).
const KVM_GET_SUPPORTED_CPUID: libc::c_ulong = crate::ioctl::iowr(0x05, 8);
/// KVM_GET_EMULATED_CPUID = _IOWR(KVMIO, 0x09, struct kvm_cpuid2).
const KVM_GET_EMULATED_CPUID: libc::c_ulong = crate::ioctl::iowr(0x09, 8);
/// KVM_GET_MSR_FEATURE_INDEX_LIST = _IOWR(KVMIO, 0x0a, struct kvm_msr_list).
const KVM_GET_MSR_FEATURE_INDEX_LIST: libc::c_ulong = crate::ioctl::iowr(0x0a, 4);

/// What KVM_GET_MSR_INDEX_LIST / KVM_GET_MSR_FEATURE_INDEX_LIST answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsrListReply {
    /// The errno, `None` on success.
    pub errno: Option<i32>,
    /// `nmsrs` as KVM left it.
    pub nmsrs: u32,
    /// The indices KVM filled in (empty on failure).
    pub indices: Vec<u32>,
}

/// What KVM_GET_SUPPORTED_CPUID / KVM_GET_EMULATED_CPUID answered.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuidReply {
    /// The errno, `None` on success.
    pub errno: Option<i32>,
    /// `nent` as KVM left it.
    pub nent: u32,
    /// The entries KVM filled in (empty on failure).
    pub entries: Vec<kvm_cpuid_entry2>,
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
            .map_err(|e| SystemError::GetSupportedCpuid(e.into()))?;
        Ok(Host { kvm, cpuid })
    }

    /// The kvm-ioctls handle: only for the bench, which has not moved to the typed methods yet.
    /// Catalogue checks use the `try_` methods.
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

    /// KVM_GET_API_VERSION.
    pub fn api_version(&self) -> i32 {
        self.kvm.get_api_version()
    }

    /// KVM_GET_VCPU_MMAP_SIZE.
    pub fn try_vcpu_mmap_size(&self) -> Result<usize, SystemError> {
        self.kvm
            .get_vcpu_mmap_size()
            .map_err(|e| SystemError::GetVcpuMmapSize(e.into()))
    }

    /// KVM_GET_MSRS on `/dev/kvm` (feature MSRs): the number read.
    pub fn try_get_msrs(&self, msrs: &mut Msrs) -> Result<usize, SystemError> {
        self.kvm
            .get_msrs(msrs)
            .map_err(|e| SystemError::GetMsrs(e.into()))
    }

    /// KVM_CREATE_VM (type 0): a VM with no memory and no vCPU, the first construction step.
    pub fn try_create_vm(&self) -> Result<Vm, SystemError> {
        self.kvm
            .create_vm()
            .map(Vm::new)
            .map_err(|e| SystemError::CreateVm(e.into()))
    }

    /// KVM_CREATE_VM with machine type `vm_type`.
    pub fn try_create_vm_with_type(&self, vm_type: u64) -> Result<Vm, SystemError> {
        self.kvm
            .create_vm_with_type(vm_type)
            .map(Vm::new)
            .map_err(|e| SystemError::CreateVm(e.into()))
    }

    /// Issues [`crate::ioctl::UNASSIGNED_IOCTL`] on `/dev/kvm`.
    pub fn try_unassigned_ioctl(&self) -> Result<(), SystemError> {
        crate::ioctl::unassigned(self.kvm.as_raw_fd()).map_err(SystemError::Unassigned)
    }

    /// KVM_GET_MSR_INDEX_LIST (or the feature list) with room for `capacity` indices; the reply
    /// keeps `nmsrs` as KVM left it, also on E2BIG.
    pub fn msr_index_list(&self, feature: bool, capacity: u32) -> MsrListReply {
        let req = if feature {
            KVM_GET_MSR_FEATURE_INDEX_LIST
        } else {
            KVM_GET_MSR_INDEX_LIST
        };
        // struct kvm_msr_list { u32 nmsrs; u32 indices[]; }
        let mut buf = vec![0u32; 1 + capacity as usize];
        buf[0] = capacity;
        // SAFETY: `buf` holds the header and `capacity` indices; KVM writes at most `nmsrs`
        // (= capacity) indices after the header and fails with E2BIG before writing more.
        let ret = unsafe { libc::ioctl(self.kvm.as_raw_fd(), req, buf.as_mut_ptr()) };
        let errno = (ret < 0).then(|| Errno::last().0);
        let nmsrs = buf[0];
        let indices = if errno.is_none() {
            buf[1..1 + (nmsrs.min(capacity) as usize)].to_vec()
        } else {
            Vec::new()
        };
        MsrListReply {
            errno,
            nmsrs,
            indices,
        }
    }

    /// KVM_GET_SUPPORTED_CPUID (or KVM_GET_EMULATED_CPUID) with room for `nent` entries; the
    /// reply keeps `nent` as KVM left it.
    pub fn cpuid(&self, emulated: bool, nent: u32) -> CpuidReply {
        let req = if emulated {
            KVM_GET_EMULATED_CPUID
        } else {
            KVM_GET_SUPPORTED_CPUID
        };
        const WORDS: usize = std::mem::size_of::<kvm_cpuid_entry2>() / 4;
        // struct kvm_cpuid2 { u32 nent; u32 flags; struct kvm_cpuid_entry2 entries[]; }
        let mut buf = vec![0u32; 2 + WORDS * nent as usize];
        buf[0] = nent;
        // SAFETY: `buf` holds the 8-byte header and `nent` 40-byte entries; KVM writes at most
        // the `nent` entries the header announces.
        let ret = unsafe { libc::ioctl(self.kvm.as_raw_fd(), req, buf.as_mut_ptr()) };
        let errno = (ret < 0).then(|| Errno::last().0);
        let got = buf[0];
        let entries = if errno.is_none() {
            (0..got.min(nent) as usize)
                .map(|i| {
                    let w = &buf[2 + i * WORDS..2 + (i + 1) * WORDS];
                    kvm_cpuid_entry2 {
                        function: w[0],
                        index: w[1],
                        flags: w[2],
                        eax: w[3],
                        ebx: w[4],
                        ecx: w[5],
                        edx: w[6],
                        padding: [w[7], w[8], w[9]],
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        CpuidReply {
            errno,
            nent: got,
            entries,
        }
    }

    /// Creates a VM with RAM and memslots for `layout` and one vCPU (see [`TestVm::new`]).
    pub fn create_vm(&self, layout: &Layout, dirty_log: bool) -> Result<TestVm, KvmError> {
        TestVm::new(self, layout, dirty_log)
    }

    /// [`Host::create_vm`] for `model`'s layout with its image loaded into RAM: what a fresh
    /// run, a new pooled VM and the catalogue's fixture all start from.
    pub fn boot(&self, model: &GuestModel, dirty_log: bool) -> Result<TestVm, KvmError> {
        let vm = self.create_vm(&model.layout, dirty_log)?;
        for (addr, bytes) in &model.image {
            vm.mem.write(*addr, bytes)?;
        }
        Ok(vm)
    }

    /// Boots `model` (no dirty log), binds its vCPU to this thread, loads the starting state
    /// and hands the VM and vCPU to `f`: a throwaway VM per check, as the selftests'
    /// `KVM_ONE_VCPU_TEST`.
    pub fn with_model<T, E: From<KvmError>>(
        &self,
        model: &GuestModel,
        f: impl FnOnce(&Vm, &mut TestVcpu) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut vm = self.boot(model, false)?;
        vm.vcpu.prepare_thread()?;
        vm.vcpu.set_state(&model.cpu)?;
        let (vm, vcpu) = vm.split();
        f(vm, vcpu)
    }

    /// [`Host::with_model`] for a guest in `mode` that only halts: `hlt` at [`CODE`] with the
    /// stack at [`STACK`], for checks of vCPU state that need a booted vCPU but no program.
    ///
    /// Setup uses `?` (the error names the ioctl and keeps the errno); a negative test calls the
    /// `try_` form, looks at the errno, then reads the state back:
    ///
    /// ```no_run
    /// use kvmconf_guests::Mode;
    /// use kvmconf_harness::{Host, KvmError, VcpuError};
    ///
    /// #[derive(Debug)]
    /// enum Error {
    ///     Harness(KvmError),
    ///     Vcpu(VcpuError),
    /// }
    /// impl From<KvmError> for Error {
    ///     fn from(e: KvmError) -> Error {
    ///         Error::Harness(e)
    ///     }
    /// }
    /// impl From<VcpuError> for Error {
    ///     fn from(e: VcpuError) -> Error {
    ///         Error::Vcpu(e)
    ///     }
    /// }
    ///
    /// let host = Host::open().expect("/dev/kvm");
    /// host.with_vm(Mode::Long64, |_vm, vcpu| {
    ///     let before = vcpu.try_get_sregs()?;
    ///     let mut bad = before;
    ///     bad.cr4 |= 1 << 63; // reserved
    ///     let errno = vcpu.try_set_sregs(&bad).err().map(|e| e.errno());
    ///     assert_eq!(errno, Some(libc::EINVAL));
    ///     assert_eq!(vcpu.try_get_sregs()?.cr4, before.cr4, "rejected set changed nothing");
    ///     Ok::<(), Error>(())
    /// })
    /// .expect("KVM accepted the VM");
    /// ```
    pub fn with_vm<T, E: From<KvmError>>(
        &self,
        mode: Mode,
        f: impl FnOnce(&Vm, &mut TestVcpu) -> Result<T, E>,
    ) -> Result<T, E> {
        self.with_model(&GuestModel::build(&hlt_case(mode)), f)
    }
}

/// Where fixture and catalogue programs are loaded.
pub const CODE: u64 = 0x1000;
/// Stack top for fixture and catalogue programs.
pub const STACK: u64 = 0x8000;

/// The guest [`Host::with_vm`] boots: `hlt` at [`CODE`] in `mode`, stack at [`STACK`].
pub fn hlt_case(mode: Mode) -> Case {
    let mut c = Case::new("hlt", mode, CODE, vec![0xf4]);
    c.regs.rsp = Some(kvmconf_guests::num::Hex(STACK));
    c
}

/// The KVM device: `$KVMCONF_KVM_PATH`, else `/dev/kvm`.
pub fn kvm_path() -> String {
    std::env::var("KVMCONF_KVM_PATH").unwrap_or_else(|_| "/dev/kvm".into())
}

/// Where KVM_SET_TSS_ADDR puts its three pages (below 4 GiB, above RAM when RAM allows).
pub const TSS_ADDR: u64 = 0xfffb_d000;

/// One memslot request for [`TestVm::try_set_memslot`]: the slot is backed by the VM's own RAM
/// at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// `slot` (bits 0–15 the id, bits 16–31 the address space).
    pub slot: u32,
    /// KVM_MEM_* flags.
    pub flags: u32,
    /// Guest-physical start.
    pub gpa: u64,
    /// Size in bytes (0 deletes the slot).
    pub size: u64,
    /// Offset of the backing memory into the VM's RAM (the userspace address is RAM + offset).
    pub offset: u64,
}

/// A memslot request that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemslotError {
    /// KVM rejected the memslot.
    #[error(transparent)]
    Ioctl(#[from] VmError),
    /// A memslot would map memory outside the VM's own RAM; no ioctl was issued.
    #[error(
        "memslot backing {offset:#x}+{size:#x} is outside the VM's memory ({mem:#x} bytes): not issued"
    )]
    OutsideMemory {
        /// Offset into the VM's memory.
        offset: u64,
        /// Slot size.
        size: u64,
        /// Size of the VM's memory.
        mem: u64,
    },
}

impl MemslotError {
    /// The errno of a rejected memslot, `None` when no ioctl was issued.
    pub fn errno(&self) -> Option<i32> {
        match self {
            MemslotError::Ioctl(e) => Some(e.errno()),
            MemslotError::OutsideMemory { .. } => None,
        }
    }
}

impl crate::ioctl::IoctlFailure for MemslotError {
    fn errno(&self) -> Option<i32> {
        MemslotError::errno(self)
    }
}

/// A VM with one vCPU, its RAM and memslots. Fields drop in order: vCPU, VM, then RAM.
///
/// It dereferences to its [`Vm`], so every VM-level `try_` method applies to it.
#[derive(Debug)]
pub struct TestVm {
    /// The vCPU.
    pub vcpu: TestVcpu,
    vm: Vm,
    /// Guest RAM.
    pub mem: GuestMemory,
    slots: Vec<(u64, u64)>,
    dirty_log: bool,
    layout: Layout,
}

impl std::ops::Deref for TestVm {
    type Target = Vm;
    fn deref(&self) -> &Vm {
        &self.vm
    }
}

impl TestVm {
    /// The one construction sequence, each step made by its parent as in firecracker's vstate:
    /// guest RAM, [`Host::try_create_vm`] (and KVM_SET_TSS_ADDR), [`Vm::map_ram`] (one memslot
    /// per RAM range), then [`Vm::try_create_vcpu`] configured as [`TestVcpu`] id 0.
    pub fn new(host: &Host, layout: &Layout, dirty_log: bool) -> Result<TestVm, KvmError> {
        // RAM first, so that on an early return it is unmapped after the VM fd (and its slots).
        let mem = GuestMemory::new(layout.ram_size)?;
        let vm = host.try_create_vm()?;
        if layout.ram_size <= TSS_ADDR {
            vm.try_set_tss_address(TSS_ADDR as usize)?;
        }
        let slots = layout.ram_slots();
        // SAFETY: `mem` outlives the VM fd: it is declared before `vm` here and is the field
        // after `vm` in TestVm, so it is dropped after it on every path.
        unsafe { vm.map_ram(&mem, &slots, dirty_log) }?;
        let vcpu = TestVcpu::new(&vm, 0, host.supported_cpuid())?;
        Ok(TestVm {
            vcpu,
            vm,
            mem,
            slots,
            dirty_log,
            layout: layout.clone(),
        })
    }

    /// The VM level alone, beside a mutable borrow of the vCPU.
    pub fn split(&mut self) -> (&Vm, &mut TestVcpu) {
        (&self.vm, &mut self.vcpu)
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

    /// KVM_SET_USER_MEMORY_REGION for `s` (add, change or delete), backed by this VM's RAM at
    /// `s.offset` after checking that the whole backing range lies inside it.
    ///
    /// Sound because a `TestVm` drops its vCPU and VM fds (and with them every slot) before its
    /// memory, and `s` can only point inside that memory.
    pub fn try_set_memslot(&self, s: Slot) -> Result<(), MemslotError> {
        let inside = s
            .offset
            .checked_add(s.size)
            .is_some_and(|e| e <= self.mem.size());
        if !inside {
            return Err(MemslotError::OutsideMemory {
                offset: s.offset,
                size: s.size,
                mem: self.mem.size(),
            });
        }
        let region = kvm_userspace_memory_region {
            slot: s.slot,
            flags: s.flags,
            guest_phys_addr: s.gpa,
            memory_size: s.size,
            userspace_addr: self.mem.host_addr() + s.offset,
        };
        // SAFETY: the userspace range [host_addr + offset, + size) lies inside `mem` (checked
        // above), and `mem` outlives the VM fd (field order).
        unsafe { self.vm.set_user_memory_region(region) }?;
        Ok(())
    }

    /// Guest-physical page addresses written since the last call (KVM_GET_DIRTY_LOG, all slots).
    pub fn take_dirty_pages(&self, out: &mut Vec<u64>) -> Result<(), KvmError> {
        for (i, &(start, end)) in self.slots.iter().enumerate() {
            let bitmap = self
                .vm
                .try_get_dirty_log(i as u32, (end - start) as usize)?;
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

/// One vCPU and its mapped `kvm_run` area, with the state a pooled reset restores.
///
/// It dereferences to its [`Vcpu`], so every vCPU-level `try_` method applies to it.
#[derive(Debug)]
pub struct TestVcpu {
    vcpu: Vcpu,
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

impl std::ops::Deref for TestVcpu {
    type Target = Vcpu;
    fn deref(&self) -> &Vcpu {
        &self.vcpu
    }
}

impl std::ops::DerefMut for TestVcpu {
    fn deref_mut(&mut self) -> &mut Vcpu {
        &mut self.vcpu
    }
}

impl TestVcpu {
    /// The vCPU construction step: KVM_CREATE_VCPU on `vm`, KVM_SET_CPUID2, then the state a
    /// pooled reset restores is read and the vCPU is bound to the calling thread.
    fn new(vm: &Vm, id: u64, cpuid: &CpuId) -> Result<TestVcpu, KvmError> {
        let vcpu = vm.try_create_vcpu(id)?;
        vcpu.try_set_cpuid2(cpuid)?;
        let sregs_base = vcpu.try_get_sregs()?;
        let has_xcrs = vm.check_extension_raw(kvm_bindings::KVM_CAP_XCRS) > 0;
        let mut msrs = reset_msr_list();
        let n = vcpu.try_get_msrs(&mut msrs)?;
        let msrs = kvm_bindings::Msrs::from_entries(&msrs.as_slice()[..n]).expect("fits");
        let aux = AuxState {
            xsave: vcpu.try_get_xsave()?,
            xcrs: if has_xcrs {
                Some(vcpu.try_get_xcrs()?)
            } else {
                None
            },
            debugregs: vcpu.try_get_debugregs()?,
            events: vcpu.try_get_vcpu_events()?,
            msrs,
            mp_state: vcpu.try_get_mp_state()?,
        };
        let sync = !no_sync_regs() && sync_regs_supported(vm.fd());
        let mut v = TestVcpu {
            run_len: vm.fd().run_size(),
            vcpu,
            mask_tid: 0,
            sregs_base,
            aux,
            single_step: false,
            has_xcrs,
            sync,
            staged: false,
        };
        if sync {
            v.vcpu.fd_mut().set_sync_valid_reg(SyncReg::Register);
            v.vcpu.fd_mut().set_sync_valid_reg(SyncReg::SystemRegister);
        }
        v.bind_thread()?;
        Ok(v)
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
        self.vcpu.try_set_signal_mask(&[], &[watchdog::signal()])?;
        self.mask_tid = tid;
        Ok(())
    }

    /// The whole `kvm_run` mapping.
    pub fn run_area(&mut self) -> &mut [u8] {
        let p = (self.vcpu.fd_mut().get_kvm_run() as *mut kvm_bindings::kvm_run).cast::<u8>();
        // SAFETY: KVM maps `run_len` (KVM_GET_VCPU_MMAP_SIZE) bytes at the kvm_run pointer for
        // the life of the vCPU fd, and `&mut self` makes this the only live reference.
        unsafe { std::slice::from_raw_parts_mut(p, self.run_len) }
    }

    /// Sets `immediate_exit`.
    pub fn set_immediate_exit(&mut self, on: bool) {
        self.vcpu.fd_mut().set_kvm_immediate_exit(u8::from(on));
    }

    /// KVM_RUN once; `Err(errno)` when the ioctl fails (EINTR when interrupted).
    pub fn run_once(&mut self) -> Result<KvmExit, i32> {
        let fd = self.vcpu.fd_mut();
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
            self.vcpu.try_set_vcpu_events(&self.aux.events)?;
            return self.set_state(cpu);
        }
        let sregs = crate::state::to_kvm_sregs(cpu, &self.sregs_base);
        let regs = crate::state::to_kvm_regs(cpu);
        let events = self.aux.events;
        let s = self.vcpu.fd_mut().sync_regs_mut();
        s.regs = regs;
        s.sregs = sregs;
        s.events = events;
        for r in [
            SyncReg::Register,
            SyncReg::SystemRegister,
            SyncReg::VcpuEvents,
        ] {
            self.vcpu.fd_mut().set_sync_dirty_reg(r);
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
            self.vcpu.fd_mut().clear_sync_dirty_reg(r);
        }
        self.staged = false;
        self.vcpu.try_set_vcpu_events(&self.aux.events)?;
        self.set_state(cpu)
    }

    /// The CPU state after the last exit: from `kvm_run.s` when KVM filled it, else read.
    pub fn exit_state(&self) -> Result<CpuState, KvmError> {
        if self.sync && !self.staged {
            let s = self.vcpu.fd().sync_regs();
            return Ok(crate::state::from_kvm(&s.regs, &s.sregs));
        }
        self.state()
    }

    /// Loads `cpu` into the vCPU with KVM_SET_REGS and KVM_SET_SREGS.
    pub fn set_state(&mut self, cpu: &CpuState) -> Result<(), KvmError> {
        let sregs = crate::state::to_kvm_sregs(cpu, &self.sregs_base);
        self.vcpu.try_set_sregs(&sregs)?;
        self.vcpu.try_set_regs(&crate::state::to_kvm_regs(cpu))?;
        Ok(())
    }

    /// Reads the CPU state (KVM_GET_REGS, KVM_GET_SREGS).
    pub fn state(&self) -> Result<CpuState, KvmError> {
        let r = self.vcpu.try_get_regs()?;
        let s = self.vcpu.try_get_sregs()?;
        Ok(crate::state::from_kvm(&r, &s))
    }

    /// Restores the kinds in `which` of XSAVE, XCRs, debug registers, MSRs and MP state to their
    /// values at creation (vCPU events are restored by [`TestVcpu::load_state`]).
    pub fn reset_aux(&mut self, which: crate::touch::StateKinds) -> Result<(), KvmError> {
        if which.xsave {
            self.vcpu.try_set_xsave(&self.aux.xsave)?;
        }
        if let (true, Some(x)) = (which.xcrs, &self.aux.xcrs) {
            self.vcpu.try_set_xcrs(x)?;
        }
        if which.debugregs {
            self.vcpu.try_set_debugregs(&self.aux.debugregs)?;
        }
        if which.msrs {
            self.vcpu.try_set_msrs(&self.aux.msrs)?;
        }
        if which.mp_state {
            self.vcpu.try_set_mp_state(self.aux.mp_state)?;
        }
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
        self.vcpu.try_set_guest_debug(&dbg)?;
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
            self.vcpu.fd_mut().clear_sync_valid_reg(r);
            self.vcpu.fd_mut().clear_sync_dirty_reg(r);
        }
    }
}

/// `KVMCONF_NO_SYNC_REGS=1` makes the harness use explicit ioctls even where sync regs exist.
fn no_sync_regs() -> bool {
    std::env::var_os("KVMCONF_NO_SYNC_REGS").is_some_and(|v| v == "1")
}

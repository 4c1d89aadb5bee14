//! Safe wrappers for the KVM ioctls that kvm-ioctls marks `unsafe` or does not offer, for the
//! catalogue's positive and negative tests: memslots that only ever map memory their VM owns,
//! KVM_GET_STATS_FD, MSR-list and CPUID queries with a caller-chosen buffer size (to provoke
//! E2BIG), and an ioctl number KVM does not assign (to provoke ENOTTY).
//!
//! Every call returns the raw errno on failure, so negative tests can compare it.

use crate::kvm::{Host, TestVm};
use crate::memory::{GuestMemory, MemoryError};
use kvm_bindings::{
    kvm_coalesced_mmio, kvm_cpuid_entry2, kvm_ioeventfd, kvm_irqchip, kvm_pic_state,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::Mutex;
pub use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// A failed raw call.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    /// The ioctl failed.
    #[error("{ioctl} failed: {} (errno {errno})", std::io::Error::from_raw_os_error(*.errno))]
    Ioctl {
        /// The ioctl's name.
        ioctl: &'static str,
        /// The errno.
        errno: i32,
    },
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
    /// Guest memory could not be mapped.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

impl RawError {
    /// The errno of a failed ioctl, `None` for other failures.
    pub fn errno(&self) -> Option<i32> {
        match self {
            RawError::Ioctl { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `_IO(KVMIO, nr)`.
const fn io(nr: u32) -> libc::c_ulong {
    (0xae << 8 | nr) as libc::c_ulong
}

/// `_IOWR(KVMIO, nr, size)`.
const fn iowr(nr: u32, size: u32) -> libc::c_ulong {
    ((3 << 30) | (size << 16) | (0xae << 8) | nr) as libc::c_ulong
}

/// KVM_GET_MSR_INDEX_LIST = _IOWR(KVMIO, 0x02, struct kvm_msr_list).
const KVM_GET_MSR_INDEX_LIST: libc::c_ulong = iowr(0x02, 4);
/// KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, struct kvm_cpuid2).
const KVM_GET_SUPPORTED_CPUID: libc::c_ulong = iowr(0x05, 8);
/// KVM_GET_EMULATED_CPUID = _IOWR(KVMIO, 0x09, struct kvm_cpuid2).
const KVM_GET_EMULATED_CPUID: libc::c_ulong = iowr(0x09, 8);
/// KVM_GET_MSR_FEATURE_INDEX_LIST = _IOWR(KVMIO, 0x0a, struct kvm_msr_list).
const KVM_GET_MSR_FEATURE_INDEX_LIST: libc::c_ulong = iowr(0x0a, 4);
/// KVM_IOEVENTFD = _IOW(KVMIO, 0x79, struct kvm_ioeventfd).
const KVM_IOEVENTFD: libc::c_ulong = ((1 << 30) | (64 << 16) | (0xae << 8) | 0x79) as libc::c_ulong;
/// KVM_GET_STATS_FD = _IO(KVMIO, 0xce).
const KVM_GET_STATS_FD: libc::c_ulong = io(0xce);
/// `_IO(KVMIO, 0xff)`: not assigned to any ioctl in include/uapi/linux/kvm.h (numbers end in the
/// 0xd0s), so KVM can only reject it.
pub const UNASSIGNED_IOCTL: libc::c_ulong = io(0xff);

/// One memslot request. The slot is backed by the owning VM's memory at `offset`.
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

/// KVM_SET_USER_MEMORY_REGION for `s`, backed by `mem`, after checking that the whole backing
/// range lies inside `mem`.
///
/// The caller guarantees that KVM stops using the slot before `mem` is unmapped.
fn set_region(vm: &VmFd, mem: &GuestMemory, s: &Slot) -> Result<(), RawError> {
    let inside = s
        .offset
        .checked_add(s.size)
        .is_some_and(|e| e <= mem.size());
    if !inside {
        return Err(RawError::OutsideMemory {
            offset: s.offset,
            size: s.size,
            mem: mem.size(),
        });
    }
    let region = kvm_userspace_memory_region {
        slot: s.slot,
        flags: s.flags,
        guest_phys_addr: s.gpa,
        memory_size: s.size,
        userspace_addr: mem.host_addr() + s.offset,
    };
    // SAFETY: the userspace range [host_addr + offset, + size) lies inside `mem` (checked above),
    // and the caller keeps `mem` mapped for as long as KVM may use the slot (see `BareVm::drop`
    // and `map_in`).
    unsafe { vm.set_user_memory_region(region) }.map_err(|e| RawError::Ioctl {
        ioctl: "KVM_SET_USER_MEMORY_REGION",
        errno: e.errno(),
    })
}

/// Adds, changes or deletes a memslot of a [`TestVm`], backed by the test VM's own RAM.
///
/// Sound because a `TestVm` drops its vCPU and VM fds (and with them every slot) before its
/// memory, and `s` can only point inside that memory.
pub fn map_in(vm: &TestVm, s: Slot) -> Result<(), RawError> {
    set_region(vm.fd(), &vm.mem, &s)
}

/// A VM with no vCPU and its own memory, for memslot tests. Every slot it maps lies inside its
/// memory, and dropping it deletes those slots before the memory is unmapped (so even vCPU fds
/// made from [`BareVm::fd`] that outlive it cannot reach freed memory).
#[derive(Debug)]
pub struct BareVm {
    vm: VmFd,
    mem: std::mem::ManuallyDrop<GuestMemory>,
    /// Slot numbers that may be live.
    slots: Mutex<BTreeSet<u32>>,
}

impl BareVm {
    /// KVM_CREATE_VM (type 0) with `ram` bytes of zeroed memory and no slots.
    pub fn new(host: &Host, ram: u64) -> Result<BareVm, RawError> {
        let vm = host.kvm().create_vm().map_err(|e| RawError::Ioctl {
            ioctl: "KVM_CREATE_VM",
            errno: e.errno(),
        })?;
        Ok(BareVm {
            vm,
            mem: std::mem::ManuallyDrop::new(GuestMemory::new(ram)?),
            slots: Mutex::new(BTreeSet::new()),
        })
    }

    /// The kvm-ioctls VM handle.
    pub fn fd(&self) -> &VmFd {
        &self.vm
    }

    /// The VM's memory.
    pub fn mem(&self) -> &GuestMemory {
        &self.mem
    }

    /// KVM_SET_USER_MEMORY_REGION backed by this VM's memory at `s.offset`.
    pub fn map(&self, s: Slot) -> Result<(), RawError> {
        let mut live = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        // Record before the call: a slot KVM accepted must be deleted on drop.
        live.insert(s.slot);
        set_region(&self.vm, &self.mem, &s)
    }
}

impl Drop for BareVm {
    fn drop(&mut self) {
        let live = std::mem::take(self.slots.get_mut().unwrap_or_else(|p| p.into_inner()));
        let mut all_gone = true;
        for slot in live {
            let del = Slot {
                slot,
                flags: 0,
                gpa: 0,
                size: 0,
                offset: 0,
            };
            match set_region(&self.vm, &self.mem, &del) {
                // EINVAL: there was no such slot (never accepted, or already deleted).
                Ok(())
                | Err(RawError::Ioctl {
                    errno: libc::EINVAL,
                    ..
                }) => {}
                Err(_) => all_gone = false,
            }
        }
        if all_gone {
            // SAFETY: no memslot of this VM points into `mem` any more, and `mem` is not used
            // after this point.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.mem) };
        }
        // Otherwise the mapping is leaked rather than unmapped under a live slot.
    }
}

/// The fd levels an ioctl can be issued on.
#[derive(Clone, Copy, Debug)]
pub enum Level<'a> {
    /// `/dev/kvm`.
    System(&'a Kvm),
    /// A VM fd.
    Vm(&'a VmFd),
    /// A vCPU fd.
    Vcpu(&'a VcpuFd),
}

impl Level<'_> {
    fn raw(&self) -> RawFd {
        match self {
            Level::System(k) => k.as_raw_fd(),
            Level::Vm(v) => v.as_raw_fd(),
            Level::Vcpu(v) => v.as_raw_fd(),
        }
    }
}

/// Issues [`UNASSIGNED_IOCTL`] on `fd`; returns the errno (0 if KVM accepted it).
pub fn unassigned_ioctl(fd: Level<'_>) -> i32 {
    // SAFETY: the request number is not assigned to any KVM ioctl, so KVM reads or writes no
    // memory for it; the argument is 0 (no pointer).
    let ret = unsafe { libc::ioctl(fd.raw(), UNASSIGNED_IOCTL, 0) };
    if ret < 0 { last_errno() } else { 0 }
}

/// KVM_GET_STATS_FD on a VM fd.
pub fn vm_stats_fd(vm: &VmFd) -> Result<File, RawError> {
    stats_fd(vm.as_raw_fd())
}

/// KVM_GET_STATS_FD on a vCPU fd.
pub fn vcpu_stats_fd(vcpu: &VcpuFd) -> Result<File, RawError> {
    stats_fd(vcpu.as_raw_fd())
}

fn stats_fd(fd: RawFd) -> Result<File, RawError> {
    // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd; `fd` is a VM or vCPU fd.
    let ret = unsafe { libc::ioctl(fd, KVM_GET_STATS_FD, 0) };
    if ret < 0 {
        return Err(RawError::Ioctl {
            ioctl: "KVM_GET_STATS_FD",
            errno: last_errno(),
        });
    }
    // SAFETY: `ret` is a new file descriptor KVM just created for us; nothing else owns it.
    Ok(unsafe { File::from_raw_fd(ret) })
}

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

/// KVM_GET_MSR_INDEX_LIST (or the feature list) with room for `capacity` indices.
pub fn msr_index_list(kvm: &Kvm, feature: bool, capacity: u32) -> MsrListReply {
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
    let ret = unsafe { libc::ioctl(kvm.as_raw_fd(), req, buf.as_mut_ptr()) };
    let errno = (ret < 0).then(last_errno);
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

/// KVM_GET_SUPPORTED_CPUID (or KVM_GET_EMULATED_CPUID) with room for `nent` entries.
pub fn cpuid(kvm: &Kvm, emulated: bool, nent: u32) -> CpuidReply {
    let req = if emulated {
        KVM_GET_EMULATED_CPUID
    } else {
        KVM_GET_SUPPORTED_CPUID
    };
    const WORDS: usize = std::mem::size_of::<kvm_cpuid_entry2>() / 4;
    // struct kvm_cpuid2 { u32 nent; u32 flags; struct kvm_cpuid_entry2 entries[]; }
    let mut buf = vec![0u32; 2 + WORDS * nent as usize];
    buf[0] = nent;
    // SAFETY: `buf` holds the 8-byte header and `nent` 40-byte entries; KVM writes at most the
    // `nent` entries the header announces.
    let ret = unsafe { libc::ioctl(kvm.as_raw_fd(), req, buf.as_mut_ptr()) };
    let errno = (ret < 0).then(last_errno);
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

/// KVM_IOEVENTFD with a caller-built `struct kvm_ioeventfd` (kvm-ioctls derives `len` from the
/// datamatch type, so it cannot ask for the lengths KVM must reject).
pub fn ioeventfd(vm: &VmFd, args: &kvm_ioeventfd) -> Result<(), RawError> {
    // SAFETY: KVM_IOEVENTFD reads one `struct kvm_ioeventfd` from the pointer, which is `args`;
    // the eventfd it names is looked up (and checked) by the kernel.
    let ret = unsafe { libc::ioctl(vm.as_raw_fd(), KVM_IOEVENTFD, args as *const kvm_ioeventfd) };
    if ret < 0 {
        return Err(RawError::Ioctl {
            ioctl: "KVM_IOEVENTFD",
            errno: last_errno(),
        });
    }
    Ok(())
}

/// The PIC state in a `kvm_irqchip` read with chip_id 0 or 1.
pub fn pic_state(chip: &kvm_irqchip) -> kvm_pic_state {
    // SAFETY: every field of the union is plain integers, so any bit pattern is a valid
    // `kvm_pic_state`; the union is 512 bytes, larger than the PIC state.
    unsafe { chip.chip.pic }
}

/// The `pio` field of a coalesced MMIO ring entry (1 for port I/O, 0 for MMIO).
pub fn coalesced_pio(entry: &kvm_coalesced_mmio) -> u32 {
    // SAFETY: both members of the union are a `u32`; any bit pattern is valid.
    unsafe { entry.__bindgen_anon_1.pio }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_uapi_header() {
        assert_eq!(KVM_GET_MSR_INDEX_LIST, 0xc004_ae02);
        assert_eq!(KVM_GET_SUPPORTED_CPUID, 0xc008_ae05);
        assert_eq!(KVM_GET_EMULATED_CPUID, 0xc008_ae09);
        assert_eq!(KVM_GET_MSR_FEATURE_INDEX_LIST, 0xc004_ae0a);
        assert_eq!(KVM_GET_STATS_FD, 0xaece);
        assert_eq!(KVM_IOEVENTFD, 0x4040_ae79);
        assert_eq!(std::mem::size_of::<kvm_cpuid_entry2>(), 40);
    }
}

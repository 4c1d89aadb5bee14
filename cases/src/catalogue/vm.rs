//! Checks of the vm area: ioctls on a VM fd — vCPU creation limits, memory slots (add, overlap,
//! alignment, flags, limits, delete, move, read-only), the dirty log (exact bitmaps at CPL0 and
//! CPL3 under 4 KiB and 2 MiB guest pages), the in-kernel irqchip and PIT, KVM_IRQ_LINE,
//! ioeventfd and irqfd, the VM clock, TSS and identity-map addresses, KVM_ENABLE_CAP, the
//! coalesced MMIO ring and the binary statistics fd.
//!
//! After KVM rejects an ioctl, each check reads the state back (a guest access, GET ioctl or a
//! follow-up call) to show that nothing changed.

use crate::catalogue::harness::{CODE, case};
use crate::catalogue::system::{UNKNOWN_CAP, expect_errno, max_vcpu_id, max_vcpus};
use crate::registry::{Fail, Outcome, ioctl, require_cap};
use crate::{ensure, ensure_eq};
use iced_x86::code_asm::*;
use kvmconf_guests::case::{Case, Mode, PageSize};
use kvmconf_guests::layout::GuestModel;
use kvmconf_guests::result::{CaseResult, Event, Exit};
use kvmconf_harness::abi::{self, EFD_NONBLOCK, EventFd, IoEventAddress, NoDatamatch};
use kvmconf_harness::abi::{
    KVM_CAP_ADJUST_CLOCK, KVM_CAP_BINARY_STATS_FD, KVM_CAP_COALESCED_MMIO, KVM_CAP_COALESCED_PIO,
    KVM_CAP_ENABLE_CAP_VM, KVM_CAP_IOEVENTFD, KVM_CAP_IRQCHIP, KVM_CAP_IRQFD,
    KVM_CAP_MULTI_ADDRESS_SPACE, KVM_CAP_NR_MEMSLOTS, KVM_CAP_NR_VCPUS, KVM_CAP_PIT_STATE2,
    KVM_CAP_PIT2, KVM_CAP_READONLY_MEM, KVM_CAP_SET_IDENTITY_MAP_ADDR, KVM_CAP_SET_TSS_ADDR,
    KVM_CAP_X86_USER_SPACE_MSR, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY,
    KVM_MSR_EXIT_REASON_UNKNOWN, KVM_PIT_FLAGS_HPET_LEGACY, kvm_clock_data, kvm_enable_cap,
    kvm_ioeventfd, kvm_irqchip, kvm_pit_config,
};
use kvmconf_harness::{Host, MemslotError, Slot, TestVm, Vm};
use std::io::Read;
use std::time::{Duration, Instant};

// ---- helpers ----

/// RAM of the test VMs in this area (MiB): one memslot, id 0, covering [0, 4 MiB).
const RAM_MIB: u32 = 4;
/// Where extra memslots are put in guest-physical space (above RAM, below 4 GiB).
const EXTRA_GPA: u64 = 0x1000_0000;
/// Where their backing lies in the VM's RAM (unused by the cases: code at 0x1000, the harness's
/// tables in the top 2 MiB).
const BACKING: u64 = 0x10_0000;
/// First id used for extra memslots.
const EXTRA_SLOT: u32 = 8;
/// An address with no memslot: guest accesses there are MMIO.
const MMIO_GPA: u64 = 0xd000_0000;
const PAGE: u64 = 4096;
const PATTERN: u32 = 0x5a5a_1234;

fn prog(
    mode: Mode,
    build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Result<Vec<u8>, Fail> {
    crate::catalogue::harness::program(mode, build)
}

fn small_case(name: &str, mode: Mode, code: Vec<u8>) -> Case {
    let mut c = case(name, mode, code);
    c.memory_mib = RAM_MIB;
    c.max_exits = Some(100);
    c
}

/// A test VM for `mode` with [`RAM_MIB`] of RAM.
fn test_vm(host: &Host, mode: Mode, dirty_log: bool) -> Result<TestVm, Fail> {
    let c = small_case("vm", mode, vec![0xf4]);
    Ok(host.create_vm(&GuestModel::build(&c).layout, dirty_log)?)
}

/// Loads `c` into `vm` (same RAM shape).
fn load(vm: &mut TestVm, c: &Case) -> Result<GuestModel, Fail> {
    let model = GuestModel::build(c);
    for (a, b) in &model.image {
        vm.mem
            .write(*a, b)
            .map_err(|e| Fail::failed(format!("loading the case: {e}")))?;
    }
    vm.set_layout(model.layout.clone());
    Ok(model)
}

/// Loads `c` into `vm` (same RAM shape) and runs it.
fn run_on(vm: &mut TestVm, c: &Case) -> Result<CaseResult, Fail> {
    let model = load(vm, c)?;
    Ok(kvmconf_harness::run::execute(vm, &model, c)?)
}

/// Runs a prot32 program (flat 4 GiB segments, no paging) on `vm`; it must end in HLT.
fn run32(
    vm: &mut TestVm,
    what: &str,
    build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Result<CaseResult, Fail> {
    let c = small_case(what, Mode::Prot32, prog(Mode::Prot32, build)?);
    let r = run_on(vm, &c)?;
    ensure_eq!(r.exit, Exit::Hlt, "{what}: exit");
    Ok(r)
}

/// The guest reads the dword at `gpa`: `Ok(value)` from memory, `Err(trace)` if it went to the VMM.
fn guest_read32(vm: &mut TestVm, gpa: u64) -> Result<Result<u32, Vec<Event>>, Fail> {
    let r = run32(vm, &format!("read {gpa:#x}"), |a| {
        a.mov(eax, dword_ptr(gpa))?;
        a.hlt()
    })?;
    if r.trace.is_empty() {
        Ok(Ok(r.regs.rax.0 as u32))
    } else {
        Ok(Err(r.trace))
    }
}

/// Fails unless the guest reads `want` at `gpa` from memory without an exit.
fn ensure_reads(vm: &mut TestVm, gpa: u64, want: u32, what: &str) -> Outcome {
    match guest_read32(vm, gpa)? {
        Ok(v) => {
            ensure_eq!(v, want, "{what}: guest read of {gpa:#x}");
            Ok(())
        }
        Err(t) => Err(Fail::failed(format!(
            "{what}: guest read of {gpa:#x}: wanted {want:#x} from a memslot, got exits {t:?}"
        ))),
    }
}

/// Fails unless a guest read of `gpa` is MMIO (no memslot there).
fn ensure_unmapped(vm: &mut TestVm, gpa: u64, what: &str) -> Outcome {
    match guest_read32(vm, gpa)? {
        Ok(v) => Err(Fail::failed(format!(
            "{what}: guest read of {gpa:#x}: wanted an MMIO exit (no memslot), got {v:#x} from memory"
        ))),
        Err(t) => {
            ensure_eq!(
                t,
                vec![Event::mmio_read(gpa, 4, 0xffff_ffff)],
                "{what}: guest read of {gpa:#x}"
            );
            Ok(())
        }
    }
}

/// The errno of a memslot call (`None` on success); a call that was not issued fails the check.
fn slot_errno(r: Result<(), MemslotError>) -> Result<Option<i32>, Fail> {
    match r {
        Ok(()) => Ok(None),
        Err(MemslotError::Ioctl(e)) => Ok(Some(e.errno())),
        Err(e) => Err(Fail::failed(e.to_string())),
    }
}

fn map(vm: &TestVm, s: Slot) -> Outcome {
    vm.try_set_memslot(s)
        .map_err(|e| Fail::failed(format!("{e} ({s:x?})")))
}

/// The standard extra slot: id [`EXTRA_SLOT`], 64 KiB at [`EXTRA_GPA`] backed at [`BACKING`].
fn extra(flags: u32) -> Slot {
    Slot {
        slot: EXTRA_SLOT,
        flags,
        gpa: EXTRA_GPA,
        size: 0x10000,
        offset: BACKING,
    }
}

/// A VM with the extra slot mapped and [`PATTERN`] at its start.
fn vm_with_extra(host: &Host, flags: u32) -> Result<TestVm, Fail> {
    let vm = test_vm(host, Mode::Prot32, false)?;
    vm.mem
        .write(BACKING, &PATTERN.to_le_bytes())
        .map_err(|e| Fail::failed(e.to_string()))?;
    map(&vm, extra(flags))?;
    Ok(vm)
}

fn expect_rejected(vm: &TestVm, s: Slot, want: i32, what: &str) -> Outcome {
    expect_errno(
        slot_errno(vm.try_set_memslot(s))?,
        want,
        &format!("{what} ({s:x?})"),
    )
}

fn nr_memslots(host: &Host) -> Result<u32, Fail> {
    require_cap(host, KVM_CAP_NR_MEMSLOTS, "NR_MEMSLOTS")?;
    Ok(host.check_raw(KVM_CAP_NR_MEMSLOTS) as u32)
}

// ---- KVM_CREATE_VCPU ----

fn new_vm(host: &Host) -> Result<Vm, Fail> {
    host.try_create_vm().map_err(ioctl("KVM_CREATE_VM"))
}

fn create_vcpu_recommended_count_succeeds(host: &Host) -> Outcome {
    let n = match host.check_raw(KVM_CAP_NR_VCPUS) {
        0 => 4,
        n => n,
    } as u64;
    let vm = new_vm(host)?;
    let mut vcpus = Vec::new();
    for id in 0..n {
        vcpus.push(vm.try_create_vcpu(id).map_err(|e| {
            Fail::failed(format!(
                "KVM_CREATE_VCPU id {id} of the recommended {n}: {}",
                e.os_error()
            ))
        })?);
    }
    Ok(())
}

fn create_vcpu_last_valid_id_succeeds(host: &Host) -> Outcome {
    let last = max_vcpu_id(host) as u64 - 1;
    let vm = new_vm(host)?;
    let v = vm.try_create_vcpu(last).map_err(|e| {
        Fail::failed(format!(
            "KVM_CREATE_VCPU id {last} (max_vcpu_id - 1): {}",
            e.os_error()
        ))
    })?;
    v.try_get_regs()
        .map_err(ioctl("KVM_GET_REGS on the new vCPU"))?;
    Ok(())
}

fn create_vcpu_id_out_of_range_einval(host: &Host) -> Outcome {
    let max = max_vcpu_id(host) as u64;
    let vm = new_vm(host)?;
    for id in [max, max + 1, 1 << 32, u64::from(u32::MAX)] {
        match vm.try_create_vcpu(id) {
            Ok(_) => {
                return Err(Fail::failed(format!(
                    "KVM_CREATE_VCPU id {id:#x} (max_vcpu_id {max}): wanted EINVAL, got a vCPU"
                )));
            }
            Err(e) => expect_errno(
                Some(e.errno()),
                libc::EINVAL,
                &format!("KVM_CREATE_VCPU id {id:#x} (max_vcpu_id {max})"),
            )?,
        }
    }
    // The rejected ids used up nothing: the full recommended count can still be created.
    let n = match host.check_raw(KVM_CAP_NR_VCPUS) {
        0 => 4,
        n => n,
    } as u64;
    let mut vcpus = Vec::new();
    for id in 0..n {
        vcpus.push(
            vm.try_create_vcpu(id)
                .map_err(ioctl("KVM_CREATE_VCPU after the rejected ids"))?,
        );
    }
    Ok(())
}

/// The `i`-th of `n` vCPU ids spread evenly over [0, `max_id`): 0 first, `max_id` - 1 last.
fn spread_id(i: u64, n: u64, max_id: u64) -> u64 {
    if n <= 1 {
        0
    } else {
        i * (max_id - 1) / (n - 1)
    }
}

fn create_vcpu_max_vcpus_succeed_one_more_einval(host: &Host) -> Outcome {
    let (max, max_id) = (max_vcpus(host) as u64, max_vcpu_id(host) as u64);
    // One fd per vCPU, the VM's, /dev/kvm's and the process's own.
    let need = max + 64;
    let limit =
        kvmconf_harness::rlimit::raise_open_files(need).map_err(|e| Fail::failed(e.to_string()))?;
    ensure!(
        limit.soft >= need,
        "RLIMIT_NOFILE: wanted a hard limit of at least {need} for {max} vCPU fds, got {}",
        limit.hard
    );
    let vm = new_vm(host)?;
    let ids: Vec<u64> = (0..max).map(|i| spread_id(i, max, max_id)).collect();
    let mut vcpus = Vec::with_capacity(ids.len());
    for (n, &id) in ids.iter().enumerate() {
        vcpus.push(vm.try_create_vcpu(id).map_err(|e| {
            Fail::failed(format!(
                "KVM_CREATE_VCPU id {id} (vCPU {} of KVM_CAP_MAX_VCPUS = {max}, ids spread over \
                 [0, {max_id})): {}",
                n + 1,
                e.os_error()
            ))
        })?);
    }
    // One more, with an id in range that is not taken (when the ids leave one free).
    if let Some(extra) = (0..max_id).find(|id| ids.binary_search(id).is_err()) {
        match vm.try_create_vcpu(extra) {
            Ok(_) => {
                return Err(Fail::failed(format!(
                    "KVM_CREATE_VCPU id {extra} with KVM_CAP_MAX_VCPUS = {max} vCPUs already \
                     created: wanted EINVAL, got a vCPU"
                )));
            }
            Err(e) => expect_errno(
                Some(e.errno()),
                libc::EINVAL,
                &format!("KVM_CREATE_VCPU id {extra} beyond KVM_CAP_MAX_VCPUS = {max} vCPUs"),
            )?,
        }
    }
    // The rejected creation changed nothing: the first and last vCPUs still answer.
    for (v, id) in [
        (&vcpus[0], ids[0]),
        (&vcpus[vcpus.len() - 1], ids[ids.len() - 1]),
    ] {
        v.try_get_regs().map_err(|e| {
            Fail::failed(format!(
                "KVM_GET_REGS on vCPU id {id} after the rejected creation: {}",
                e.os_error()
            ))
        })?;
    }
    Ok(())
}

fn create_vcpu_duplicate_id_eexist(host: &Host) -> Outcome {
    let vm = new_vm(host)?;
    let first = vm
        .try_create_vcpu(1)
        .map_err(ioctl("KVM_CREATE_VCPU id 1"))?;
    let mut regs = first.try_get_regs().map_err(ioctl("KVM_GET_REGS"))?;
    regs.rax = 0x1234_5678;
    first.try_set_regs(&regs).map_err(ioctl("KVM_SET_REGS"))?;
    match vm.try_create_vcpu(1) {
        Ok(_) => {
            return Err(Fail::failed(
                "second KVM_CREATE_VCPU id 1: wanted EEXIST, got a vCPU",
            ));
        }
        Err(e) => expect_errno(Some(e.errno()), libc::EEXIST, "second KVM_CREATE_VCPU id 1")?,
    }
    let after = first.try_get_regs().map_err(ioctl("KVM_GET_REGS"))?;
    ensure_eq!(
        after.rax,
        0x1234_5678,
        "the first vCPU's rax after the rejected duplicate"
    );
    vm.try_create_vcpu(0)
        .map_err(ioctl("KVM_CREATE_VCPU id 0 after the duplicate"))?;
    Ok(())
}

// ---- KVM_SET_USER_MEMORY_REGION ----

fn memslot_add_guest_reads_backing(host: &Host) -> Outcome {
    let mut vm = vm_with_extra(host, 0)?;
    ensure_reads(&mut vm, EXTRA_GPA, PATTERN, "new slot")?;
    // And guest writes land in the backing memory.
    run32(&mut vm, "write", |a| {
        a.mov(dword_ptr(EXTRA_GPA + 0x104), 0xcafe_f00du32)?;
        a.hlt()
    })?;
    let mut b = [0u8; 4];
    vm.mem
        .read(BACKING + 0x104, &mut b)
        .map_err(|e| Fail::failed(e.to_string()))?;
    ensure_eq!(
        u32::from_le_bytes(b),
        0xcafe_f00d,
        "backing memory after a guest write"
    );
    Ok(())
}

fn memslot_overlap_eexist(host: &Host) -> Outcome {
    let mut vm = vm_with_extra(host, 0)?;
    let base = extra(0);
    // Same range, another id; a range starting inside; one ending inside; one covering it all.
    let tries = [
        (base.gpa, base.size),
        (base.gpa + 0x8000, 0x10000),
        (base.gpa - 0x1000, 0x2000),
        (base.gpa - 0x10000, 0x40000),
    ];
    for (i, (gpa, size)) in tries.into_iter().enumerate() {
        let s = Slot {
            slot: EXTRA_SLOT + 1 + i as u32,
            flags: 0,
            gpa,
            size,
            offset: BACKING + 0x8_0000,
        };
        expect_rejected(&vm, s, libc::EEXIST, "overlapping slot")?;
    }
    ensure_reads(
        &mut vm,
        EXTRA_GPA,
        PATTERN,
        "old slot after the rejected overlaps",
    )?;
    ensure_unmapped(&mut vm, EXTRA_GPA - 0x1000, "the rejected slots' range")?;
    Ok(())
}

fn memslot_overlap_with_ram_eexist(host: &Host) -> Outcome {
    let mut vm = test_vm(host, Mode::Prot32, false)?;
    let s = Slot {
        slot: EXTRA_SLOT,
        flags: 0,
        gpa: 0x1000,
        size: 0x1000,
        offset: BACKING,
    };
    vm.mem
        .write(0x8000, &PATTERN.to_le_bytes())
        .map_err(|e| Fail::failed(e.to_string()))?;
    expect_rejected(&vm, s, libc::EEXIST, "slot over the VM's RAM slot")?;
    ensure_reads(&mut vm, 0x8000, PATTERN, "RAM after the rejected overlap")
}

fn memslot_misaligned_einval(host: &Host, what: &str, tweak: fn(&mut Slot)) -> Outcome {
    let mut vm = test_vm(host, Mode::Prot32, false)?;
    let mut s = extra(0);
    tweak(&mut s);
    expect_rejected(&vm, s, libc::EINVAL, what)?;
    ensure_unmapped(&mut vm, EXTRA_GPA & !0xfff, "the rejected slot's range")?;
    // The same id is still free: a well-formed slot is accepted.
    vm.mem
        .write(BACKING, &PATTERN.to_le_bytes())
        .map_err(|e| Fail::failed(e.to_string()))?;
    map(&vm, extra(0))?;
    ensure_reads(
        &mut vm,
        EXTRA_GPA,
        PATTERN,
        "well-formed slot after the rejected one",
    )
}

fn memslot_misaligned_gpa_einval(host: &Host) -> Outcome {
    memslot_misaligned_einval(host, "slot with guest_phys_addr not page aligned", |s| {
        s.gpa += 0x800
    })
}

fn memslot_misaligned_size_einval(host: &Host) -> Outcome {
    memslot_misaligned_einval(host, "slot with memory_size not a page multiple", |s| {
        s.size += 0x200
    })
}

fn memslot_misaligned_userspace_addr_einval(host: &Host) -> Outcome {
    memslot_misaligned_einval(host, "slot with userspace_addr not page aligned", |s| {
        s.offset += 0x10
    })
}

fn memslot_unknown_flags_einval(host: &Host) -> Outcome {
    let mut vm = vm_with_extra(host, 0)?;
    for flags in [1 << 3, 1 << 15, 1 << 31] {
        // Both for a new slot and as a change of the existing one.
        let mut new = extra(flags);
        new.slot = EXTRA_SLOT + 1;
        new.gpa = EXTRA_GPA + 0x10_0000;
        expect_rejected(
            &vm,
            new,
            libc::EINVAL,
            &format!("new slot with flags {flags:#x}"),
        )?;
        expect_rejected(
            &vm,
            extra(flags),
            libc::EINVAL,
            &format!("existing slot changed to flags {flags:#x}"),
        )?;
    }
    ensure_reads(
        &mut vm,
        EXTRA_GPA,
        PATTERN,
        "old slot after the rejected flags",
    )?;
    ensure_unmapped(
        &mut vm,
        EXTRA_GPA + 0x10_0000,
        "the rejected new slot's range",
    )
}

fn memslot_id_at_nr_memslots_einval(host: &Host) -> Outcome {
    let n = nr_memslots(host)?;
    let mut vm = test_vm(host, Mode::Prot32, false)?;
    for id in [n, n + 1, 0xffff] {
        if id > 0xffff {
            continue;
        }
        let mut s = extra(0);
        s.slot = id;
        expect_rejected(
            &vm,
            s,
            libc::EINVAL,
            &format!("slot id {id} (KVM_CAP_NR_MEMSLOTS {n})"),
        )?;
    }
    ensure_unmapped(&mut vm, EXTRA_GPA, "the rejected slots' range")
}

fn memslot_last_valid_id_succeeds(host: &Host) -> Outcome {
    let n = nr_memslots(host)?;
    let mut vm = test_vm(host, Mode::Prot32, false)?;
    vm.mem
        .write(BACKING, &PATTERN.to_le_bytes())
        .map_err(|e| Fail::failed(e.to_string()))?;
    let mut s = extra(0);
    s.slot = n - 1;
    map(&vm, s)?;
    ensure_reads(
        &mut vm,
        EXTRA_GPA,
        PATTERN,
        &format!("slot id {} (NR_MEMSLOTS - 1)", n - 1),
    )
}

fn memslot_address_space_beyond_cap_einval(host: &Host) -> Outcome {
    let spaces = host.check_raw(KVM_CAP_MULTI_ADDRESS_SPACE).max(1) as u32;
    let mut vm = test_vm(host, Mode::Prot32, false)?;
    let mut s = extra(0);
    s.slot = (spaces << 16) | EXTRA_SLOT;
    expect_rejected(
        &vm,
        s,
        libc::EINVAL,
        &format!("address space {spaces} (KVM_CAP_MULTI_ADDRESS_SPACE {spaces})"),
    )?;
    ensure_unmapped(&mut vm, EXTRA_GPA, "the rejected slot's range")
}

fn memslot_delete_with_size_zero(host: &Host) -> Outcome {
    let mut vm = vm_with_extra(host, 0)?;
    ensure_reads(&mut vm, EXTRA_GPA, PATTERN, "slot before deletion")?;
    let mut del = extra(0);
    del.size = 0;
    map(&vm, del)?;
    ensure_unmapped(&mut vm, EXTRA_GPA, "deleted slot")?;
    // The id and the range are free again.
    vm.mem
        .write(BACKING + 0x1000, &0x7777_7777u32.to_le_bytes())
        .map_err(|e| Fail::failed(e.to_string()))?;
    let mut again = extra(0);
    again.offset = BACKING + 0x1000;
    map(&vm, again)?;
    ensure_reads(
        &mut vm,
        EXTRA_GPA,
        0x7777_7777,
        "slot re-added with the same id",
    )
}

fn memslot_move_changes_gpa(host: &Host) -> Outcome {
    let mut vm = vm_with_extra(host, 0)?;
    let mut moved = extra(0);
    moved.gpa = EXTRA_GPA + 0x100_0000;
    map(&vm, moved)?;
    ensure_reads(&mut vm, moved.gpa, PATTERN, "moved slot at its new address")?;
    ensure_unmapped(&mut vm, EXTRA_GPA, "moved slot's old address")
}

fn memslot_resize_einval(host: &Host) -> Outcome {
    let mut vm = vm_with_extra(host, 0)?;
    for size in [0x20000, 0x8000] {
        let mut s = extra(0);
        s.size = size;
        expect_rejected(
            &vm,
            s,
            libc::EINVAL,
            &format!("existing 64 KiB slot resized to {size:#x}"),
        )?;
    }
    ensure_reads(
        &mut vm,
        EXTRA_GPA + 0xfffc,
        0,
        "old slot's last dword after the rejected resize",
    )?;
    ensure_reads(
        &mut vm,
        EXTRA_GPA,
        PATTERN,
        "old slot after the rejected resize",
    )?;
    ensure_unmapped(&mut vm, EXTRA_GPA + 0x10000, "past the old slot's end")
}

fn memslot_flags_change_dirty_log(host: &Host) -> Outcome {
    let mut vm = vm_with_extra(host, 0)?;
    map(&vm, extra(KVM_MEM_LOG_DIRTY_PAGES))?;
    run32(&mut vm, "write", |a| {
        a.mov(dword_ptr(EXTRA_GPA + 0x2000), 1u32)?;
        a.hlt()
    })?;
    let log = vm.try_get_dirty_log(EXTRA_SLOT, 0x10000).map_err(ioctl(
        "KVM_GET_DIRTY_LOG after turning on KVM_MEM_LOG_DIRTY_PAGES",
    ))?;
    ensure_eq!(
        log,
        vec![1u64 << 2],
        "dirty bitmap after a write to page 2 of the slot"
    );
    ensure_reads(&mut vm, EXTRA_GPA, PATTERN, "slot after the flags change")
}

fn memslot_readonly_flag_change_succeeds(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_READONLY_MEM, "READONLY_MEM")?;
    let mut vm = vm_with_extra(host, 0)?;
    let r = slot_errno(vm.try_set_memslot(extra(KVM_MEM_READONLY)))?;
    let read_back = guest_read32(&mut vm, EXTRA_GPA)?;
    ensure!(
        r.is_none(),
        "changing an existing slot's flags to KVM_MEM_READONLY: wanted success (flags may be modified), got {} (errno {}); the slot then reads {read_back:x?}",
        std::io::Error::from_raw_os_error(r.unwrap_or(0)),
        r.unwrap_or(0)
    );
    // Now read-only: a guest write goes to the VMM.
    let w = run32(&mut vm, "write", |a| {
        a.mov(dword_ptr(EXTRA_GPA), 1u32)?;
        a.hlt()
    })?;
    ensure_eq!(
        w.trace,
        vec![Event::mmio_write(EXTRA_GPA, 4, 1)],
        "guest write to the slot made read-only"
    );
    Ok(())
}

fn memslot_readonly_reads_memory(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_READONLY_MEM, "READONLY_MEM")?;
    let mut vm = vm_with_extra(host, KVM_MEM_READONLY)?;
    ensure_reads(&mut vm, EXTRA_GPA, PATTERN, "read-only slot")
}

fn memslot_readonly_write_exits_mmio(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_READONLY_MEM, "READONLY_MEM")?;
    let mut vm = vm_with_extra(host, KVM_MEM_READONLY)?;
    let r = run32(&mut vm, "write", |a| {
        a.mov(dword_ptr(EXTRA_GPA + 0x10), 0x1122_3344u32)?;
        a.mov(byte_ptr(EXTRA_GPA + 0x21), 0x55u32)?;
        a.hlt()
    })?;
    ensure_eq!(
        r.trace,
        vec![
            Event::mmio_write(EXTRA_GPA + 0x10, 4, 0x1122_3344),
            Event::mmio_write(EXTRA_GPA + 0x21, 1, 0x55)
        ],
        "guest writes to a read-only slot (KVM_EXIT_MMIO, is_write)"
    );
    ensure!(
        vm.mem
            .equals(BACKING + 0x10, 0x20, None)
            .map_err(|e| Fail::failed(e.to_string()))?,
        "the read-only slot's backing memory changed under guest writes"
    );
    ensure_reads(
        &mut vm,
        EXTRA_GPA,
        PATTERN,
        "read-only slot after the writes",
    )
}

// ---- KVM_GET_DIRTY_LOG ----

/// Writes pages 0x20000 (twice), 0x21000, the straddle 0x22ffe..0x23002; reads 0x30000.
fn dirty_program() -> Result<Vec<u8>, Fail> {
    prog(Mode::Long64, |a| {
        a.mov(rax, 0x1122_3344_5566_7788u64)?;
        a.mov(qword_ptr(0x20000u64), rax)?;
        a.mov(qword_ptr(0x21ff8u64), rax)?;
        a.mov(qword_ptr(0x20010u64), rax)?;
        a.mov(rbx, qword_ptr(0x30000u64))?;
        a.mov(dword_ptr(0x22ffeu64), eax)?;
        a.hlt()
    })
}

fn dirty_log_exact(host: &Host, cpl: u8, page: PageSize) -> Outcome {
    let mut c = small_case("dirty", Mode::Long64, dirty_program()?);
    c.cpl = cpl;
    c.page_size = page;
    let model = GuestModel::build(&c);
    let mut vm = host.create_vm(&model.layout, true)?;
    let mut before = Vec::new();
    vm.take_dirty_pages(&mut before)?; // userspace loads are no guest writes; start clean
    let r = run_on(&mut vm, &c)?;
    ensure_eq!(r.exit, Exit::Hlt, "cpl{cpl} {page:?} exit");
    let mut got = Vec::new();
    vm.take_dirty_pages(&mut got)?;
    got.sort();
    let mut want = vec![0x20000, 0x21000, 0x22000, 0x23000];
    if cpl == 3 {
        // kvmconf's CPL3 HLT convention: the #GP frame is pushed on the exception stack.
        want.push((model.layout.stack_top() - 8) & !(PAGE - 1));
    }
    want.sort();
    ensure_eq!(
        got.iter().map(|p| format!("{p:#x}")).collect::<Vec<_>>(),
        want.iter().map(|p| format!("{p:#x}")).collect::<Vec<_>>(),
        "cpl{cpl} {page:?} guest pages: pages in KVM_GET_DIRTY_LOG (written: 0x20000, 0x21000, 0x22ffe..0x23002; read only: 0x30000)"
    );
    let mut again = Vec::new();
    vm.take_dirty_pages(&mut again)?;
    ensure_eq!(
        again,
        Vec::<u64>::new(),
        "cpl{cpl} {page:?}: KVM_GET_DIRTY_LOG read a second time (cleared by the first read)"
    );
    Ok(())
}

fn dirty_log_reads_only(host: &Host, cpl: u8) -> Outcome {
    let code = prog(Mode::Long64, |a| {
        a.mov(rax, qword_ptr(0x20000u64))?;
        a.mov(rbx, qword_ptr(0x31000u64))?;
        a.add(rax, qword_ptr(0x1f_f000u64))?;
        a.hlt()
    })?;
    let mut c = small_case("reads", Mode::Long64, code);
    c.cpl = cpl;
    let model = GuestModel::build(&c);
    let mut vm = host.create_vm(&model.layout, true)?;
    let mut before = Vec::new();
    vm.take_dirty_pages(&mut before)?;
    load(&mut vm, &c)?;
    let mut image = vec![0u8; 0x1000];
    vm.mem
        .read(CODE, &mut image)
        .map_err(|e| Fail::failed(e.to_string()))?;
    let r = kvmconf_harness::run::execute(&mut vm, &model, &c)?;
    ensure_eq!(r.exit, Exit::Hlt, "cpl{cpl} exit");
    let mut got = Vec::new();
    vm.take_dirty_pages(&mut got)?;
    got.sort();
    let mut want = Vec::new();
    if cpl == 3 {
        want.push((model.layout.stack_top() - 8) & !(PAGE - 1));
    }
    let mut after = vec![0u8; 0x1000];
    vm.mem
        .read(CODE, &mut after)
        .map_err(|e| Fail::failed(e.to_string()))?;
    ensure_eq!(
        got.iter().map(|p| format!("{p:#x}")).collect::<Vec<_>>(),
        want.iter().map(|p| format!("{p:#x}")).collect::<Vec<_>>(),
        "cpl{cpl}: pages in KVM_GET_DIRTY_LOG after a guest that only reads (the code page at {CODE:#x} {})",
        if after == image {
            "is byte-for-byte unchanged"
        } else {
            "changed"
        }
    );
    Ok(())
}

fn dirty_log_bit0_is_slot_start(host: &Host) -> Outcome {
    let mut vm = vm_with_extra(host, KVM_MEM_LOG_DIRTY_PAGES)?;
    let empty = vm
        .try_get_dirty_log(EXTRA_SLOT, 0x10000)
        .map_err(ioctl("KVM_GET_DIRTY_LOG"))?;
    ensure_eq!(
        empty,
        vec![0u64],
        "bitmap of a slot the guest has not written"
    );
    run32(&mut vm, "writes", |a| {
        a.mov(dword_ptr(EXTRA_GPA + 0x3000), 1u32)?;
        a.mov(dword_ptr(EXTRA_GPA + 0x3ffc), 2u32)?;
        a.mov(dword_ptr(EXTRA_GPA + 0xf000), 3u32)?;
        a.mov(eax, dword_ptr(EXTRA_GPA + 0x5000))?;
        a.hlt()
    })?;
    let log = vm
        .try_get_dirty_log(EXTRA_SLOT, 0x10000)
        .map_err(ioctl("KVM_GET_DIRTY_LOG"))?;
    ensure_eq!(
        log,
        vec![(1u64 << 3) | (1 << 15)],
        "bitmap after writes to pages 3 and 15 of the slot"
    );
    let log = vm
        .try_get_dirty_log(EXTRA_SLOT, 0x10000)
        .map_err(ioctl("KVM_GET_DIRTY_LOG"))?;
    ensure_eq!(log, vec![0u64], "bitmap read a second time");
    Ok(())
}

// ---- KVM_CREATE_IRQCHIP, KVM_IRQ_LINE, KVM_CREATE_PIT2 ----

fn irqchip_vm(host: &Host) -> Result<Vm, Fail> {
    require_cap(host, KVM_CAP_IRQCHIP, "IRQCHIP")?;
    let vm = new_vm(host)?;
    vm.try_create_irqchip()
        .map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
    Ok(vm)
}

fn chip(vm: &Vm, id: u32) -> Result<kvm_irqchip, Fail> {
    let mut c = kvm_irqchip {
        chip_id: id,
        ..Default::default()
    };
    vm.try_get_irqchip(&mut c)
        .map_err(|e| Fail::failed(format!("KVM_GET_IRQCHIP chip {id}: {}", e.os_error())))?;
    Ok(c)
}

fn pic_irr(vm: &Vm) -> Result<u8, Fail> {
    Ok(abi::pic_state(&chip(vm, 0)?).irr)
}

fn create_irqchip_chips_readable(host: &Host) -> Outcome {
    let vm = irqchip_vm(host)?;
    for id in 0..3 {
        chip(&vm, id)?;
    }
    Ok(())
}

fn create_irqchip_twice_eexist(host: &Host) -> Outcome {
    let vm = irqchip_vm(host)?;
    let mut c = chip(&vm, 0)?;
    let mut pic = abi::pic_state(&c);
    pic.imr = 0xa5;
    c.chip.pic = pic;
    vm.try_set_irqchip(&c).map_err(ioctl("KVM_SET_IRQCHIP"))?;
    match vm.try_create_irqchip() {
        Ok(()) => {
            return Err(Fail::failed(
                "second KVM_CREATE_IRQCHIP: wanted EEXIST, got success",
            ));
        }
        Err(e) => expect_errno(Some(e.errno()), libc::EEXIST, "second KVM_CREATE_IRQCHIP")?,
    }
    ensure_eq!(
        abi::pic_state(&chip(&vm, 0)?).imr,
        0xa5,
        "PIC1 IMR after the rejected second irqchip"
    );
    Ok(())
}

fn set_irqchip_pic_roundtrips(host: &Host) -> Outcome {
    let vm = irqchip_vm(host)?;
    for id in [0u32, 1] {
        let mut c = chip(&vm, id)?;
        let mut pic = abi::pic_state(&c);
        pic.imr = 0x3c ^ id as u8;
        pic.irq_base = 0x20 + 8 * id as u8;
        c.chip.pic = pic;
        vm.try_set_irqchip(&c).map_err(ioctl("KVM_SET_IRQCHIP"))?;
        let back = abi::pic_state(&chip(&vm, id)?);
        ensure_eq!(
            (back.imr, back.irq_base),
            (pic.imr, pic.irq_base),
            "PIC{} (imr, irq_base) read back",
            id + 1
        );
    }
    Ok(())
}

fn irq_line_edge_sets_pic_irr(host: &Host) -> Outcome {
    let vm = irqchip_vm(host)?;
    ensure_eq!(
        pic_irr(&vm)? & (1 << 3),
        0,
        "PIC1 IRR bit 3 before KVM_IRQ_LINE"
    );
    vm.try_irq_line(3, true)
        .map_err(ioctl("KVM_IRQ_LINE gsi 3 level 1"))?;
    vm.try_irq_line(3, false)
        .map_err(ioctl("KVM_IRQ_LINE gsi 3 level 0"))?;
    ensure_eq!(
        pic_irr(&vm)? & (1 << 3),
        1 << 3,
        "PIC1 IRR bit 3 after a 0-1-0 edge on GSI 3"
    );
    Ok(())
}

fn irq_line_without_irqchip_fails(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_IRQCHIP, "IRQCHIP")?;
    let vm = new_vm(host)?;
    ensure!(
        vm.try_irq_line(3, true).is_err(),
        "KVM_IRQ_LINE with no in-kernel irqchip: wanted an error (x86 requires KVM_CREATE_IRQCHIP first), got success"
    );
    // Still no irqchip: creating one works now.
    vm.try_create_irqchip()
        .map_err(ioctl("KVM_CREATE_IRQCHIP after the rejected KVM_IRQ_LINE"))?;
    ensure_eq!(pic_irr(&vm)?, 0, "PIC1 IRR of the new irqchip");
    Ok(())
}

fn create_pit2_after_irqchip(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_PIT2, "PIT2")?;
    let vm = irqchip_vm(host)?;
    vm.try_create_pit2(kvm_pit_config::default())
        .map_err(ioctl("KVM_CREATE_PIT2"))?;
    if host.check_raw(KVM_CAP_PIT_STATE2) > 0 {
        vm.try_get_pit2().map_err(ioctl("KVM_GET_PIT2"))?;
    }
    Ok(())
}

fn create_pit2_without_irqchip_fails(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_PIT2, "PIT2")?;
    let vm = new_vm(host)?;
    ensure!(
        vm.try_create_pit2(kvm_pit_config::default()).is_err(),
        "KVM_CREATE_PIT2 before KVM_CREATE_IRQCHIP: wanted an error (only valid after it), got success"
    );
    if host.check_raw(KVM_CAP_PIT_STATE2) > 0 {
        ensure!(
            vm.try_get_pit2().is_err(),
            "KVM_GET_PIT2 after the rejected KVM_CREATE_PIT2: wanted an error (no PIT), got a state"
        );
    }
    Ok(())
}

fn set_pit2_flags_roundtrip(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_PIT2, "PIT2")?;
    require_cap(host, KVM_CAP_PIT_STATE2, "PIT_STATE2")?;
    let vm = irqchip_vm(host)?;
    vm.try_create_pit2(kvm_pit_config::default())
        .map_err(ioctl("KVM_CREATE_PIT2"))?;
    let mut st = vm.try_get_pit2().map_err(ioctl("KVM_GET_PIT2"))?;
    ensure_eq!(
        st.flags & KVM_PIT_FLAGS_HPET_LEGACY,
        0,
        "KVM_PIT_FLAGS_HPET_LEGACY of a new PIT"
    );
    st.flags |= KVM_PIT_FLAGS_HPET_LEGACY;
    vm.try_set_pit2(&st).map_err(ioctl("KVM_SET_PIT2"))?;
    let back = vm.try_get_pit2().map_err(ioctl("KVM_GET_PIT2"))?;
    ensure_eq!(
        back.flags & KVM_PIT_FLAGS_HPET_LEGACY,
        KVM_PIT_FLAGS_HPET_LEGACY,
        "KVM_PIT_FLAGS_HPET_LEGACY read back"
    );
    Ok(())
}

// ---- KVM_IOEVENTFD ----

fn eventfd() -> Result<EventFd, Fail> {
    EventFd::new(EFD_NONBLOCK).map_err(|e| Fail::failed(format!("eventfd: {e}")))
}

/// The eventfd counter (0 when nothing was signalled); reading resets it.
fn drain(e: &EventFd) -> u64 {
    e.read().unwrap_or(0)
}

const PORT: u16 = 0x1234;

fn out_program(values: &'static [u32]) -> impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError> {
    move |a| {
        a.mov(dx, u32::from(PORT))?;
        for &v in values {
            a.mov(eax, v)?;
            a.out(dx, eax)?;
        }
        a.hlt()
    }
}

fn ioeventfd_pio_signals_without_exit(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_IOEVENTFD, "IOEVENTFD")?;
    let mut vm = test_vm(host, Mode::Prot32, false)?;
    let e = eventfd()?;
    vm.try_register_ioevent(&e, &IoEventAddress::Pio(PORT.into()), NoDatamatch)
        .map_err(ioctl("KVM_IOEVENTFD"))?;
    let r = run32(&mut vm, "out", out_program(&[0x42]))?;
    ensure_eq!(
        r.trace,
        Vec::<Event>::new(),
        "exits for an OUT to a port with an ioeventfd"
    );
    ensure_eq!(drain(&e), 1, "eventfd counter after one guest OUT");
    Ok(())
}

fn ioeventfd_mmio_signals_without_exit(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_IOEVENTFD, "IOEVENTFD")?;
    let mut vm = test_vm(host, Mode::Prot32, false)?;
    let e = eventfd()?;
    vm.try_register_ioevent(&e, &IoEventAddress::Mmio(MMIO_GPA), 0x77u32)
        .map_err(ioctl("KVM_IOEVENTFD"))?;
    let r = run32(&mut vm, "mmio", |a| {
        a.mov(dword_ptr(MMIO_GPA), 0x77u32)?;
        a.mov(dword_ptr(MMIO_GPA), 0x77u32)?;
        a.hlt()
    })?;
    ensure_eq!(
        r.trace,
        Vec::<Event>::new(),
        "exits for MMIO writes to an address with an ioeventfd"
    );
    ensure_eq!(drain(&e), 2, "eventfd counter after two guest MMIO writes");
    Ok(())
}

fn ioeventfd_datamatch_selects(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_IOEVENTFD, "IOEVENTFD")?;
    let mut vm = test_vm(host, Mode::Prot32, false)?;
    let e = eventfd()?;
    vm.try_register_ioevent(&e, &IoEventAddress::Pio(PORT.into()), 0x42u32)
        .map_err(ioctl("KVM_IOEVENTFD"))?;
    let r = run32(&mut vm, "out", out_program(&[0x41, 0x42, 0x4200_0042]))?;
    ensure_eq!(
        r.trace,
        vec![
            Event::io_out(PORT, 4, 0x41),
            Event::io_out(PORT, 4, 0x4200_0042)
        ],
        "OUTs that reach the VMM (datamatch 0x42 takes only 0x42)"
    );
    ensure_eq!(drain(&e), 1, "eventfd counter");
    Ok(())
}

fn ioeventfd_deassign_stops(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_IOEVENTFD, "IOEVENTFD")?;
    let mut vm = test_vm(host, Mode::Prot32, false)?;
    let e = eventfd()?;
    let addr = IoEventAddress::Pio(PORT.into());
    vm.try_register_ioevent(&e, &addr, NoDatamatch)
        .map_err(ioctl("KVM_IOEVENTFD"))?;
    vm.try_unregister_ioevent(&e, &addr, NoDatamatch)
        .map_err(ioctl("KVM_IOEVENTFD (KVM_IOEVENTFD_FLAG_DEASSIGN)"))?;
    let r = run32(&mut vm, "out", out_program(&[0x42]))?;
    ensure_eq!(
        r.trace,
        vec![Event::io_out(PORT, 4, 0x42)],
        "OUT after the ioeventfd was deassigned"
    );
    ensure_eq!(drain(&e), 0, "eventfd counter after deassign");
    Ok(())
}

fn ioeventfd_invalid_len_einval(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_IOEVENTFD, "IOEVENTFD")?;
    let mut vm = test_vm(host, Mode::Prot32, false)?;
    let e = eventfd()?;
    for len in [3u32, 5, 16] {
        let args = kvm_ioeventfd {
            datamatch: 0,
            addr: u64::from(PORT),
            len,
            fd: std::os::fd::AsRawFd::as_raw_fd(&e),
            flags: 1 << kvmconf_harness::abi::kvm_ioeventfd_flag_nr_pio,
            ..Default::default()
        };
        let r = vm.try_ioeventfd(&args).err().map(|e| e.errno());
        expect_errno(
            r,
            libc::EINVAL,
            &format!("KVM_IOEVENTFD with len {len} (0, 1, 2, 4 or 8 allowed)"),
        )?;
    }
    let r = run32(&mut vm, "out", out_program(&[0x42]))?;
    ensure_eq!(
        r.trace,
        vec![Event::io_out(PORT, 4, 0x42)],
        "OUT after the rejected registrations"
    );
    ensure_eq!(drain(&e), 0, "eventfd counter");
    Ok(())
}

// ---- KVM_IRQFD ----

fn wait_irr(vm: &Vm, bit: u8, within: Duration) -> Result<bool, Fail> {
    let start = Instant::now();
    loop {
        if pic_irr(vm)? & (1 << bit) != 0 {
            return Ok(true);
        }
        if start.elapsed() > within {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn irqfd_signal_raises_pic_irr(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_IRQFD, "IRQFD")?;
    let vm = irqchip_vm(host)?;
    let e = eventfd()?;
    vm.try_register_irqfd(&e, 5).map_err(ioctl("KVM_IRQFD"))?;
    e.write(1)
        .map_err(|err| Fail::failed(format!("eventfd write: {err}")))?;
    ensure!(
        wait_irr(&vm, 5, Duration::from_millis(200))?,
        "PIC1 IRR bit 5 within 200 ms of signalling the irqfd for GSI 5: wanted set, got {:#04x}",
        pic_irr(&vm)?
    );
    Ok(())
}

fn irqfd_deassign_stops_injection(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_IRQFD, "IRQFD")?;
    let vm = irqchip_vm(host)?;
    let e = eventfd()?;
    vm.try_register_irqfd(&e, 6).map_err(ioctl("KVM_IRQFD"))?;
    vm.try_unregister_irqfd(&e, 6)
        .map_err(ioctl("KVM_IRQFD (KVM_IRQFD_FLAG_DEASSIGN)"))?;
    e.write(1)
        .map_err(|err| Fail::failed(format!("eventfd write: {err}")))?;
    ensure!(
        !wait_irr(&vm, 6, Duration::from_millis(30))?,
        "PIC1 IRR after signalling a deassigned irqfd for GSI 6: wanted bit 6 clear, got {:#04x}",
        pic_irr(&vm)?
    );
    // The GSI itself still works.
    vm.try_irq_line(6, true).map_err(ioctl("KVM_IRQ_LINE"))?;
    vm.try_irq_line(6, false).map_err(ioctl("KVM_IRQ_LINE"))?;
    ensure_eq!(
        pic_irr(&vm)? & (1 << 6),
        1 << 6,
        "PIC1 IRR bit 6 after KVM_IRQ_LINE"
    );
    Ok(())
}

// ---- KVM_GET_CLOCK / KVM_SET_CLOCK ----

fn clock_vm(host: &Host) -> Result<Vm, Fail> {
    require_cap(host, KVM_CAP_ADJUST_CLOCK, "ADJUST_CLOCK")?;
    new_vm(host)
}

fn get_clock(vm: &Vm) -> Result<kvm_clock_data, Fail> {
    vm.try_get_clock().map_err(ioctl("KVM_GET_CLOCK"))
}

fn get_clock_monotonic(host: &Host) -> Outcome {
    let vm = clock_vm(host)?;
    let mut last = get_clock(&vm)?.clock;
    for i in 0..100 {
        let now = get_clock(&vm)?.clock;
        ensure!(
            now >= last,
            "KVM_GET_CLOCK read {i}: {now} after {last} (went backwards)"
        );
        last = now;
    }
    Ok(())
}

fn get_clock_advances_with_time(host: &Host) -> Outcome {
    let vm = clock_vm(host)?;
    let t0 = Instant::now();
    let c0 = get_clock(&vm)?.clock;
    std::thread::sleep(Duration::from_millis(20));
    let c1 = get_clock(&vm)?.clock;
    let wall = t0.elapsed().as_nanos() as u64;
    let d = c1.saturating_sub(c0);
    ensure!(
        d + 2_000_000 >= 20_000_000 && d <= wall + 2_000_000,
        "kvmclock advanced {d} ns over a 20 ms sleep ({wall} ns of CLOCK_MONOTONIC): wanted 20 ms..{wall} ns ± 2 ms"
    );
    Ok(())
}

fn get_clock_flags_within_cap(host: &Host) -> Outcome {
    let vm = clock_vm(host)?;
    let allowed = host.check_raw(KVM_CAP_ADJUST_CLOCK) as u32;
    let flags = get_clock(&vm)?.flags;
    ensure!(
        flags & !allowed == 0,
        "KVM_GET_CLOCK flags {flags:#x}: wanted a subset of KVM_CHECK_EXTENSION(KVM_CAP_ADJUST_CLOCK) = {allowed:#x}"
    );
    Ok(())
}

fn set_clock_then_get(host: &Host) -> Outcome {
    let vm = clock_vm(host)?;
    for target in [1_000_000_000_000u64, 5_000_000] {
        let t0 = Instant::now();
        vm.try_set_clock(&kvm_clock_data {
            clock: target,
            ..Default::default()
        })
        .map_err(ioctl("KVM_SET_CLOCK"))?;
        let got = get_clock(&vm)?.clock;
        let slack = t0.elapsed().as_nanos() as u64 + 1_000_000;
        ensure!(
            got >= target && got <= target + slack,
            "KVM_GET_CLOCK right after KVM_SET_CLOCK({target}): wanted {target}..{}, got {got}",
            target + slack
        );
    }
    Ok(())
}

// ---- KVM_SET_TSS_ADDR / KVM_SET_IDENTITY_MAP_ADDR ----

fn set_tss_addr_below_4g(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_SET_TSS_ADDR, "SET_TSS_ADDR")?;
    let vm = new_vm(host)?;
    vm.try_set_tss_address(0xfffb_d000)
        .map_err(ioctl("KVM_SET_TSS_ADDR 0xfffbd000"))?;
    Ok(())
}

fn set_identity_map_addr_before_vcpu(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_SET_IDENTITY_MAP_ADDR, "SET_IDENTITY_MAP_ADDR")?;
    let vm = new_vm(host)?;
    vm.try_set_identity_map_address(0xfeff_c000)
        .map_err(ioctl("KVM_SET_IDENTITY_MAP_ADDR 0xfeffc000"))?;
    vm.try_set_identity_map_address(0)
        .map_err(ioctl("KVM_SET_IDENTITY_MAP_ADDR 0 (reset to the default)"))?;
    Ok(())
}

fn set_identity_map_addr_after_vcpu_fails(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_SET_IDENTITY_MAP_ADDR, "SET_IDENTITY_MAP_ADDR")?;
    let vm = new_vm(host)?;
    let _vcpu = vm.try_create_vcpu(0).map_err(ioctl("KVM_CREATE_VCPU"))?;
    ensure!(
        vm.try_set_identity_map_address(0xfeff_c000).is_err(),
        "KVM_SET_IDENTITY_MAP_ADDR after KVM_CREATE_VCPU: wanted an error, got success"
    );
    Ok(())
}

// ---- KVM_ENABLE_CAP ----

fn enable_cap_unknown_cap_einval(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_ENABLE_CAP_VM, "ENABLE_CAP_VM")?;
    let vm = new_vm(host)?;
    let r = vm.try_enable_cap(&kvm_enable_cap {
        cap: UNKNOWN_CAP,
        ..Default::default()
    });
    expect_errno(
        r.err().map(|e| e.errno()),
        libc::EINVAL,
        &format!("KVM_ENABLE_CAP({UNKNOWN_CAP:#x}) on a VM fd"),
    )?;
    vm.try_create_vcpu(0)
        .map_err(ioctl("KVM_CREATE_VCPU after the rejected KVM_ENABLE_CAP"))?;
    Ok(())
}

fn enable_cap_nonzero_flags_einval(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_ENABLE_CAP_VM, "ENABLE_CAP_VM")?;
    require_cap(host, KVM_CAP_X86_USER_SPACE_MSR, "X86_USER_SPACE_MSR")?;
    let vm = new_vm(host)?;
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_X86_USER_SPACE_MSR,
        flags: 1,
        ..Default::default()
    };
    cap.args[0] = u64::from(KVM_MSR_EXIT_REASON_UNKNOWN);
    expect_errno(
        vm.try_enable_cap(&cap).err().map(|e| e.errno()),
        libc::EINVAL,
        "KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR) with flags 1 (must be 0)",
    )?;
    cap.flags = 0;
    vm.try_enable_cap(&cap).map_err(ioctl(
        "KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR) with flags 0",
    ))?;
    Ok(())
}

// ---- KVM_REGISTER_COALESCED_MMIO ----

fn coalesced_vm(host: &Host) -> Result<TestVm, Fail> {
    require_cap(host, KVM_CAP_COALESCED_MMIO, "COALESCED_MMIO")?;
    let mut vm = test_vm(host, Mode::Prot32, false)?;
    vm.vcpu
        .try_map_coalesced_ring()
        .map_err(ioctl("mmap of the coalesced MMIO ring"))?;
    Ok(vm)
}

fn ring(vm: &mut TestVm) -> Result<Vec<(u64, u32, u32, u64)>, Fail> {
    let mut out = Vec::new();
    while let Some(e) = vm
        .vcpu
        .try_coalesced_read()
        .map_err(ioctl("coalesced MMIO ring"))?
    {
        out.push((
            e.phys_addr,
            e.len,
            abi::coalesced_pio(&e),
            u64::from_le_bytes(e.data),
        ));
        if out.len() > 1000 {
            return Err(Fail::failed("coalesced MMIO ring never empties"));
        }
    }
    Ok(out)
}

fn coalesced_mmio_writes_in_ring(host: &Host) -> Outcome {
    let mut vm = coalesced_vm(host)?;
    vm.try_register_coalesced_mmio(IoEventAddress::Mmio(MMIO_GPA), 0x1000)
        .map_err(ioctl("KVM_REGISTER_COALESCED_MMIO"))?;
    let r = run32(&mut vm, "writes", |a| {
        a.mov(dword_ptr(MMIO_GPA), 0x11u32)?;
        a.mov(dword_ptr(MMIO_GPA + 4), 0x2222_2222u32)?;
        a.mov(byte_ptr(MMIO_GPA + 0xff8), 0x33u32)?;
        a.hlt()
    })?;
    ensure_eq!(
        r.trace,
        Vec::<Event>::new(),
        "exits for writes to a coalesced zone"
    );
    ensure_eq!(
        ring(&mut vm)?,
        vec![
            (MMIO_GPA, 4, 0, 0x11),
            (MMIO_GPA + 4, 4, 0, 0x2222_2222),
            (MMIO_GPA + 0xff8, 1, 0, 0x33)
        ],
        "coalesced ring entries (phys_addr, len, pio, data)"
    );
    Ok(())
}

fn coalesced_mmio_reads_exit(host: &Host) -> Outcome {
    let mut vm = coalesced_vm(host)?;
    vm.try_register_coalesced_mmio(IoEventAddress::Mmio(MMIO_GPA), 0x1000)
        .map_err(ioctl("KVM_REGISTER_COALESCED_MMIO"))?;
    let r = run32(&mut vm, "write then read", |a| {
        a.mov(dword_ptr(MMIO_GPA + 8), 0x99u32)?;
        a.mov(eax, dword_ptr(MMIO_GPA))?;
        a.hlt()
    })?;
    ensure_eq!(
        r.trace,
        vec![Event::mmio_read(MMIO_GPA, 4, 0xffff_ffff)],
        "exits: the read of a coalesced zone goes to the VMM"
    );
    ensure_eq!(
        ring(&mut vm)?,
        vec![(MMIO_GPA + 8, 4, 0, 0x99)],
        "coalesced ring entries"
    );
    Ok(())
}

fn coalesced_mmio_unregister_restores_exits(host: &Host) -> Outcome {
    let mut vm = coalesced_vm(host)?;
    let zone = IoEventAddress::Mmio(MMIO_GPA);
    vm.try_register_coalesced_mmio(zone, 0x1000)
        .map_err(ioctl("KVM_REGISTER_COALESCED_MMIO"))?;
    vm.try_unregister_coalesced_mmio(zone, 0x1000)
        .map_err(ioctl("KVM_UNREGISTER_COALESCED_MMIO"))?;
    let r = run32(&mut vm, "write", |a| {
        a.mov(dword_ptr(MMIO_GPA), 0x11u32)?;
        a.hlt()
    })?;
    ensure_eq!(
        r.trace,
        vec![Event::mmio_write(MMIO_GPA, 4, 0x11)],
        "exits after the zone was unregistered"
    );
    ensure_eq!(ring(&mut vm)?, vec![], "coalesced ring entries");
    Ok(())
}

fn coalesced_pio_writes_in_ring(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_COALESCED_PIO, "COALESCED_PIO")?;
    let mut vm = coalesced_vm(host)?;
    vm.try_register_coalesced_mmio(IoEventAddress::Pio(PORT.into()), 4)
        .map_err(ioctl("KVM_REGISTER_COALESCED_MMIO (pio)"))?;
    let r = run32(&mut vm, "out", out_program(&[0x42, 0x43]))?;
    ensure_eq!(
        r.trace,
        Vec::<Event>::new(),
        "exits for OUTs to a coalesced port"
    );
    ensure_eq!(
        ring(&mut vm)?,
        vec![(u64::from(PORT), 4, 1, 0x42), (u64::from(PORT), 4, 1, 0x43)],
        "coalesced ring entries (phys_addr = port, len, pio, data)"
    );
    Ok(())
}

// ---- KVM_GET_STATS_FD ----

struct Stats {
    file: Vec<u8>,
    name_size: usize,
    num_desc: usize,
    id_offset: usize,
    desc_offset: usize,
    data_offset: usize,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn read_stats(mut f: std::fs::File) -> Result<Stats, Fail> {
    let mut file = Vec::new();
    f.read_to_end(&mut file)
        .map_err(|e| Fail::failed(format!("reading the stats fd: {e}")))?;
    ensure!(
        file.len() >= 24,
        "stats fd: wanted at least the 24-byte header, got {} bytes",
        file.len()
    );
    ensure_eq!(u32_at(&file, 0), 0, "stats header flags");
    Ok(Stats {
        name_size: u32_at(&file, 4) as usize,
        num_desc: u32_at(&file, 8) as usize,
        id_offset: u32_at(&file, 12) as usize,
        desc_offset: u32_at(&file, 16) as usize,
        data_offset: u32_at(&file, 20) as usize,
        file,
    })
}

impl Stats {
    fn desc_size(&self) -> usize {
        16 + self.name_size
    }

    /// (name, flags, exponent, size, offset) of each descriptor.
    fn descs(&self) -> Vec<(String, u32, i16, u16, u32)> {
        (0..self.num_desc)
            .map(|i| {
                let at = self.desc_offset + i * self.desc_size();
                let b = &self.file[at..at + self.desc_size()];
                let name = &b[16..];
                let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
                (
                    String::from_utf8_lossy(&name[..end]).into_owned(),
                    u32_at(b, 0),
                    i16::from_le_bytes([b[4], b[5]]),
                    u16::from_le_bytes([b[6], b[7]]),
                    u32_at(b, 8),
                )
            })
            .collect()
    }

    fn data_len(&self) -> usize {
        self.descs()
            .iter()
            .map(|d| usize::from(d.3) * 8 + d.4 as usize)
            .max()
            .unwrap_or(0)
    }

    fn id(&self) -> String {
        let b = &self.file[self.id_offset..self.id_offset + self.name_size];
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    }

    fn value(&self, name: &str) -> Option<u64> {
        let d = self.descs().into_iter().find(|d| d.0 == name)?;
        let at = self.data_offset + d.4 as usize;
        self.file
            .get(at..at + 8)
            .map(|s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
    }

    /// The header's layout rules (api.rst 4.133).
    fn check_layout(&self, what: &str) -> Outcome {
        ensure!(self.name_size > 0, "{what}: name_size 0");
        ensure!(self.num_desc > 0, "{what}: num_desc 0");
        for (n, o) in [
            ("id_offset", self.id_offset),
            ("desc_offset", self.desc_offset),
            ("data_offset", self.data_offset),
        ] {
            ensure_eq!(o % 8, 0, "{what}: {n} {o:#x} modulo 8");
        }
        let id_end = self.id_offset + self.name_size;
        let desc_end = self.desc_offset + self.num_desc * self.desc_size();
        ensure!(
            self.id_offset >= 24,
            "{what}: id block at {:#x} overlaps the 24-byte header",
            self.id_offset
        );
        ensure!(
            id_end <= self.desc_offset,
            "{what}: id block {:#x}..{id_end:#x} overlaps or follows the descriptors at {:#x}",
            self.id_offset,
            self.desc_offset
        );
        ensure!(
            desc_end <= self.data_offset,
            "{what}: descriptors {:#x}..{desc_end:#x} overlap or follow the data at {:#x}",
            self.desc_offset,
            self.data_offset
        );
        ensure!(
            desc_end <= self.file.len(),
            "{what}: descriptors end at {desc_end:#x}, past the file's {:#x} bytes",
            self.file.len()
        );
        let data_end = self.data_offset + self.data_len();
        ensure!(
            data_end <= self.file.len(),
            "{what}: data ends at {data_end:#x}, past the file's {:#x} bytes",
            self.file.len()
        );
        Ok(())
    }

    fn check_descs(&self, what: &str) -> Outcome {
        let mut names = std::collections::BTreeSet::new();
        let mut last_off = None;
        for (name, flags, _exp, size, off) in self.descs() {
            ensure!(!name.is_empty(), "{what}: a descriptor with an empty name");
            ensure!(
                names.insert(name.clone()),
                "{what}: statistic {name} described twice"
            );
            let ty = flags & kvmconf_harness::abi::KVM_STATS_TYPE_MASK;
            let unit = flags & kvmconf_harness::abi::KVM_STATS_UNIT_MASK;
            let base = flags & kvmconf_harness::abi::KVM_STATS_BASE_MASK;
            ensure!(
                ty <= kvmconf_harness::abi::KVM_STATS_TYPE_MAX,
                "{what}: {name}: type {ty:#x} beyond KVM_STATS_TYPE_MAX"
            );
            ensure!(
                unit <= kvmconf_harness::abi::KVM_STATS_UNIT_MAX,
                "{what}: {name}: unit {unit:#x} beyond KVM_STATS_UNIT_MAX"
            );
            ensure!(
                base <= kvmconf_harness::abi::KVM_STATS_BASE_MAX,
                "{what}: {name}: base {base:#x} beyond KVM_STATS_BASE_MAX"
            );
            ensure!(size >= 1, "{what}: {name}: size 0");
            if ty <= kvmconf_harness::abi::KVM_STATS_TYPE_PEAK {
                ensure_eq!(
                    size,
                    1,
                    "{what}: {name}: size of a cumulative/instant/peak statistic"
                );
            }
            ensure_eq!(
                off % 8,
                0,
                "{what}: {name}: data offset modulo 8 (u64 values)"
            );
            if let Some(l) = last_off {
                ensure!(
                    off > l,
                    "{what}: {name}: data offset {off:#x} not after the previous statistic's {l:#x} (same order as the descriptors)"
                );
            }
            last_off = Some(off);
        }
        Ok(())
    }
}

/// "kvm-{pid}{suffix}", where the pid is that of the task that created the VM (the kernel's
/// task pid: this thread's id; the process id is accepted too).
fn ensure_id(got: &str, suffix: &str, what: &str) -> Outcome {
    let tid = format!("kvm-{}{suffix}", kvmconf_harness::watchdog::thread_id());
    let pid = format!("kvm-{}{suffix}", std::process::id());
    ensure!(
        got == tid || got == pid,
        "{what}: wanted {tid:?} (creating task) or {pid:?} (process), got {got:?}"
    );
    Ok(())
}

fn stats_vm(host: &Host) -> Result<(Vm, Stats), Fail> {
    require_cap(host, KVM_CAP_BINARY_STATS_FD, "BINARY_STATS_FD")?;
    let vm = new_vm(host)?;
    let s = read_stats(vm.try_stats_fd().map_err(|e| Fail::failed(e.to_string()))?)?;
    Ok((vm, s))
}

fn stats_fd_vm_header_valid(host: &Host) -> Outcome {
    let (_vm, s) = stats_vm(host)?;
    s.check_layout("VM stats")
}

fn stats_fd_vm_id_string(host: &Host) -> Outcome {
    let (_vm, s) = stats_vm(host)?;
    ensure_id(&s.id(), "", "VM stats id string")?;
    Ok(())
}

fn stats_fd_vm_descriptors_parse(host: &Host) -> Outcome {
    let (_vm, s) = stats_vm(host)?;
    s.check_layout("VM stats")?;
    s.check_descs("VM stats")
}

fn stats_fd_vcpu_header_and_id(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_BINARY_STATS_FD, "BINARY_STATS_FD")?;
    let vm = new_vm(host)?;
    let vcpu = vm.try_create_vcpu(3).map_err(ioctl("KVM_CREATE_VCPU"))?;
    let s = read_stats(
        vcpu.try_stats_fd()
            .map_err(|e| Fail::failed(e.to_string()))?,
    )?;
    s.check_layout("vCPU stats")?;
    s.check_descs("vCPU stats")?;
    ensure_id(&s.id(), "/vcpu-3", "vCPU stats id string")?;
    Ok(())
}

fn stats_fd_vcpu_cumulative_do_not_decrease(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_BINARY_STATS_FD, "BINARY_STATS_FD")?;
    let mut vm = test_vm(host, Mode::Prot32, false)?;
    let read = |vm: &TestVm| -> Result<Stats, Fail> {
        read_stats(
            vm.vcpu
                .try_stats_fd()
                .map_err(|e| Fail::failed(e.to_string()))?,
        )
    };
    let before = read(&vm)?;
    run32(&mut vm, "outs", out_program(&[1, 2, 3]))?;
    let after = read(&vm)?;
    for (name, flags, _, size, off) in before.descs() {
        if flags & kvmconf_harness::abi::KVM_STATS_TYPE_MASK
            != kvmconf_harness::abi::KVM_STATS_TYPE_CUMULATIVE
        {
            continue;
        }
        for k in 0..usize::from(size) {
            let at = before.data_offset + off as usize + 8 * k;
            let b = u64::from_le_bytes(before.file[at..at + 8].try_into().unwrap_or([0; 8]));
            let a = u64::from_le_bytes(after.file[at..at + 8].try_into().unwrap_or([0; 8]));
            ensure!(
                a >= b,
                "cumulative vCPU statistic {name}[{k}] went from {b} to {a} across a guest run"
            );
        }
    }
    if let (Some(b), Some(a)) = (before.value("exits"), after.value("exits")) {
        ensure!(
            a >= b + 4,
            "vCPU statistic exits: wanted +4 or more (3 OUTs and a HLT), went {b} -> {a}"
        );
    }
    Ok(())
}

// ---- registry ----

const VCPU: &str = "api.rst 4.7 KVM_CREATE_VCPU";
const MEM: &str = "api.rst 4.35 KVM_SET_USER_MEMORY_REGION";
const DIRTY: &str =
    "api.rst 4.8 KVM_GET_DIRTY_LOG, 4.35 KVM_SET_USER_MEMORY_REGION (KVM_MEM_LOG_DIRTY_PAGES)";
const IOEVENTFD: &str = "api.rst 4.59 KVM_IOEVENTFD";
const IRQFD: &str = "api.rst 4.75 KVM_IRQFD";
const COALESCED: &str = "api.rst 4.116 KVM_(UN)REGISTER_COALESCED_MMIO";
const STATS: &str = "api.rst 4.133 KVM_GET_STATS_FD";

crate::checks! {
    Vm;
    "vm.create_vcpu_recommended_count_succeeds", VCPU, create_vcpu_recommended_count_succeeds;
    "vm.create_vcpu_last_valid_id_succeeds", VCPU, create_vcpu_last_valid_id_succeeds;
    "vm.create_vcpu_id_at_or_above_max_vcpu_id_einval", VCPU, create_vcpu_id_out_of_range_einval;
    "vm.create_vcpu_duplicate_id_eexist", VCPU, create_vcpu_duplicate_id_eexist;
    "vm.create_vcpu_max_vcpus_succeed_and_one_more_einval", "api.rst 4.7 KVM_CREATE_VCPU (no more than max_vcpus; KVM_CAP_MAX_VCPUS, KVM_CAP_MAX_VCPU_ID)", create_vcpu_max_vcpus_succeed_one_more_einval;
    "vm.memslot_add_guest_reads_and_writes_backing", MEM, memslot_add_guest_reads_backing;
    "vm.memslot_overlap_eexist", MEM, memslot_overlap_eexist;
    "vm.memslot_overlap_with_ram_slot_eexist", MEM, memslot_overlap_with_ram_eexist;
    "vm.memslot_misaligned_gpa_einval", MEM, memslot_misaligned_gpa_einval;
    "vm.memslot_misaligned_size_einval", MEM, memslot_misaligned_size_einval;
    "vm.memslot_misaligned_userspace_addr_einval", MEM, memslot_misaligned_userspace_addr_einval;
    "vm.memslot_unknown_flags_einval", MEM, memslot_unknown_flags_einval;
    "vm.memslot_id_at_nr_memslots_einval", "api.rst 4.35 KVM_SET_USER_MEMORY_REGION (slot id < KVM_CAP_NR_MEMSLOTS)", memslot_id_at_nr_memslots_einval;
    "vm.memslot_last_valid_id_succeeds", "api.rst 4.35 KVM_SET_USER_MEMORY_REGION (slot id < KVM_CAP_NR_MEMSLOTS)", memslot_last_valid_id_succeeds;
    "vm.memslot_address_space_beyond_cap_einval", "api.rst 4.35 KVM_SET_USER_MEMORY_REGION (bits 16-31 < KVM_CAP_MULTI_ADDRESS_SPACE)", memslot_address_space_beyond_cap_einval;
    "vm.memslot_delete_with_size_zero_unmaps", "api.rst 4.35 KVM_SET_USER_MEMORY_REGION (deleting: memory_size 0)", memslot_delete_with_size_zero;
    "vm.memslot_move_changes_gpa", "api.rst 4.35 KVM_SET_USER_MEMORY_REGION (a slot may be moved)", memslot_move_changes_gpa;
    "vm.memslot_resize_einval", "api.rst 4.35 KVM_SET_USER_MEMORY_REGION (a slot may not be resized)", memslot_resize_einval;
    "vm.memslot_flags_change_enables_dirty_log", "api.rst 4.35 KVM_SET_USER_MEMORY_REGION (its flags may be modified), 4.8 KVM_GET_DIRTY_LOG", memslot_flags_change_dirty_log;
    "vm.memslot_flags_change_to_readonly_succeeds", "api.rst 4.35 KVM_SET_USER_MEMORY_REGION (its flags may be modified; KVM_MEM_READONLY)", memslot_readonly_flag_change_succeeds;
    "vm.memslot_readonly_guest_reads_memory", "api.rst 4.35 KVM_SET_USER_MEMORY_REGION (KVM_MEM_READONLY)", memslot_readonly_reads_memory;
    "vm.memslot_readonly_guest_write_exits_mmio", "api.rst 4.35 KVM_SET_USER_MEMORY_REGION (KVM_MEM_READONLY: writes posted as KVM_EXIT_MMIO)", memslot_readonly_write_exits_mmio;
    "vm.dirty_log_cpl0_4k_pages_exact", DIRTY, dirty_log_exact(0, PageSize::Small);
    "vm.dirty_log_cpl0_2m_pages_exact", DIRTY, dirty_log_exact(0, PageSize::Large);
    "vm.dirty_log_cpl3_4k_pages_exact", DIRTY, dirty_log_exact(3, PageSize::Small);
    "vm.dirty_log_cpl3_2m_pages_exact", DIRTY, dirty_log_exact(3, PageSize::Large);
    "vm.dirty_log_cpl0_guest_reads_log_nothing", DIRTY, dirty_log_reads_only(0);
    "vm.dirty_log_cpl3_guest_reads_log_nothing", DIRTY, dirty_log_reads_only(3);
    "vm.dirty_log_bit0_is_first_page_of_slot", "api.rst 4.8 KVM_GET_DIRTY_LOG (bit 0 is the first page in the memory slot; cleared on read)", dirty_log_bit0_is_slot_start;
    "vm.create_irqchip_chips_readable", "api.rst 4.24 KVM_CREATE_IRQCHIP, 4.26 KVM_GET_IRQCHIP", create_irqchip_chips_readable;
    "vm.create_irqchip_twice_eexist", "api.rst 4.24 KVM_CREATE_IRQCHIP", create_irqchip_twice_eexist;
    "vm.set_irqchip_pic_roundtrips", "api.rst 4.26 KVM_GET_IRQCHIP, 4.27 KVM_SET_IRQCHIP", set_irqchip_pic_roundtrips;
    "vm.irq_line_edge_sets_pic_irr", "api.rst 4.25 KVM_IRQ_LINE, 4.24 KVM_CREATE_IRQCHIP (GSIs 0-15 routed to the PIC)", irq_line_edge_sets_pic_irr;
    "vm.irq_line_without_irqchip_fails", "api.rst 4.25 KVM_IRQ_LINE (irqchip created first)", irq_line_without_irqchip_fails;
    "vm.create_pit2_after_irqchip_succeeds", "api.rst 4.71 KVM_CREATE_PIT2, 4.72 KVM_GET_PIT2", create_pit2_after_irqchip;
    "vm.create_pit2_without_irqchip_fails", "api.rst 4.71 KVM_CREATE_PIT2 (only valid after KVM_CREATE_IRQCHIP)", create_pit2_without_irqchip_fails;
    "vm.set_pit2_flags_roundtrip", "api.rst 4.72 KVM_GET_PIT2, 4.73 KVM_SET_PIT2", set_pit2_flags_roundtrip;
    "vm.ioeventfd_pio_write_signals_without_exit", IOEVENTFD, ioeventfd_pio_signals_without_exit;
    "vm.ioeventfd_mmio_write_signals_without_exit", IOEVENTFD, ioeventfd_mmio_signals_without_exit;
    "vm.ioeventfd_datamatch_selects_value", IOEVENTFD, ioeventfd_datamatch_selects;
    "vm.ioeventfd_deassign_stops_signalling", IOEVENTFD, ioeventfd_deassign_stops;
    "vm.ioeventfd_invalid_length_einval", "api.rst 4.59 KVM_IOEVENTFD (len 0, 1, 2, 4 or 8)", ioeventfd_invalid_len_einval;
    "vm.irqfd_signal_raises_pic_irr", IRQFD, irqfd_signal_raises_pic_irr;
    "vm.irqfd_deassign_stops_injection", IRQFD, irqfd_deassign_stops_injection;
    "vm.get_clock_monotonic", "api.rst 4.29 KVM_GET_CLOCK", get_clock_monotonic;
    "vm.get_clock_advances_with_monotonic_time", "api.rst 4.29 KVM_GET_CLOCK (CLOCK_MONOTONIC plus a constant offset)", get_clock_advances_with_time;
    "vm.get_clock_flags_within_adjust_clock_cap", "api.rst 4.29 KVM_GET_CLOCK (KVM_CAP_ADJUST_CLOCK returns the flags KVM can return)", get_clock_flags_within_cap;
    "vm.set_clock_then_get_returns_value", "api.rst 4.30 KVM_SET_CLOCK, 4.29 KVM_GET_CLOCK", set_clock_then_get;
    "vm.set_tss_addr_below_4g_succeeds", "api.rst 4.36 KVM_SET_TSS_ADDR", set_tss_addr_below_4g;
    "vm.set_identity_map_addr_before_vcpu_succeeds", "api.rst 4.40 KVM_SET_IDENTITY_MAP_ADDR", set_identity_map_addr_before_vcpu;
    "vm.set_identity_map_addr_after_vcpu_fails", "api.rst 4.40 KVM_SET_IDENTITY_MAP_ADDR (fails if any VCPU has been created)", set_identity_map_addr_after_vcpu_fails;
    "vm.enable_cap_unknown_cap_einval", "api.rst 4.37 KVM_ENABLE_CAP (only works for extensions supported for enablement)", enable_cap_unknown_cap_einval;
    "vm.enable_cap_nonzero_flags_einval", "api.rst 4.37 KVM_ENABLE_CAP (flags has to be 0)", enable_cap_nonzero_flags_einval;
    "vm.coalesced_mmio_writes_land_in_ring_without_exit", COALESCED, coalesced_mmio_writes_in_ring;
    "vm.coalesced_mmio_reads_still_exit", COALESCED, coalesced_mmio_reads_exit;
    "vm.coalesced_mmio_unregister_restores_exits", COALESCED, coalesced_mmio_unregister_restores_exits;
    "vm.coalesced_pio_writes_land_in_ring_without_exit", "api.rst 4.116 KVM_(UN)REGISTER_COALESCED_MMIO (KVM_CAP_COALESCED_PIO, pio = 1)", coalesced_pio_writes_in_ring;
    "vm.stats_fd_vm_header_valid", STATS, stats_fd_vm_header_valid;
    "vm.stats_fd_vm_id_string_names_process", STATS, stats_fd_vm_id_string;
    "vm.stats_fd_vm_descriptors_parse", STATS, stats_fd_vm_descriptors_parse;
    "vm.stats_fd_vcpu_header_descriptors_and_id_valid", STATS, stats_fd_vcpu_header_and_id;
    "vm.stats_fd_vcpu_cumulative_counters_do_not_decrease", STATS, stats_fd_vcpu_cumulative_do_not_decrease;
}

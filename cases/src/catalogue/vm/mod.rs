//! Checks of the vm area: ioctls on a VM fd — vCPU creation limits, memory slots (add, overlap,
//! alignment, flags, limits, delete, move, read-only), the dirty log (exact bitmaps at CPL0 and
//! CPL3 under 4 KiB and 2 MiB guest pages), the in-kernel irqchip and PIT, KVM_IRQ_LINE,
//! ioeventfd and irqfd, the VM clock, TSS and identity-map addresses, KVM_ENABLE_CAP, the
//! coalesced MMIO ring and the binary statistics fd.
//!
//! After KVM rejects an ioctl, each check reads the state back (a guest access, GET ioctl or a
//! follow-up call) to show that nothing changed.

use crate::catalogue::harness::{CODE, case};
use crate::catalogue::system::{
    UNKNOWN_CAP, expect_einval_not_made, expect_errno, max_vcpu_id, max_vcpus,
};
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

mod clock;
mod coalesced;
mod dirty_log;
mod eventfd;
mod irqchip;
mod memslot;
mod stats;
mod vcpu;
use clock::*;
use coalesced::*;
use dirty_log::*;
use eventfd::*;
use irqchip::*;
use memslot::*;
use stats::*;
use vcpu::*;

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

/// Fails unless a guest dword write of `value` to `gpa` exits to the VMM as that MMIO write (and
/// nothing else); `what` names the exits in a failure.
fn ensure_write_exits(vm: &mut TestVm, gpa: u64, value: u32, what: &str) -> Outcome {
    let r = run32(vm, "write", |a| {
        a.mov(dword_ptr(gpa), value)?;
        a.hlt()
    })?;
    ensure_eq!(
        r.trace,
        vec![Event::mmio_write(gpa, 4, value.into())],
        "{what}"
    );
    Ok(())
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

//! KVM_RUN checks: every exit reason provoked and checked with its payload (IO, MMIO, HLT,
//! SHUTDOWN, DEBUG, INTERNAL_ERROR, X86_RDMSR/WRMSR, IRQ_WINDOW_OPEN), the kvm_run fields
//! (immediate_exit, if_flag, cr8, apic_base, sync regs), signals, interrupt and NMI injection and
//! KVM_TRANSLATE.

use crate::catalogue::fixture::{Guest, describe, expect_exit, mem};
use crate::catalogue::harness::{CODE, case, program};
use crate::catalogue::vcpu_state::{MSR_UNKNOWN, hex};
use crate::registry::{Fail, Outcome, ioctl, require_cap};
use crate::{ensure, ensure_eq};
use iced_x86::code_asm::*;
use kvmconf_guests::case::{Case, MmioRegion, Mode};
use kvmconf_guests::num::{Hex, HexBytes};
use kvmconf_harness::Host;
use kvmconf_harness::abi::{
    KVM_CAP_GUEST_DEBUG_HW_BPS, KVM_CAP_IRQCHIP, KVM_CAP_SET_GUEST_DEBUG, KVM_CAP_SYNC_REGS,
    KVM_CAP_USER_NMI, KVM_CAP_X86_MSR_FILTER, KVM_CAP_X86_USER_SPACE_MSR, KVM_GUESTDBG_ENABLE,
    KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP, KVM_GUESTDBG_USE_SW_BP,
    KVM_MSR_EXIT_REASON_FILTER, KVM_MSR_EXIT_REASON_UNKNOWN, KVM_SYNC_X86_EVENTS,
    KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS, kvm_enable_cap, kvm_guest_debug,
};
use kvmconf_harness::abi::{MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags};
use kvmconf_harness::exit::{KvmExit, off};
use kvmconf_harness::watchdog::{self, Deadline};
use std::time::{Duration, Instant};
mod debug;
mod fields;
mod interrupts;
mod io;
mod mmio;
mod msr;
mod signals;
mod sync_regs;
mod translate;
use debug::*;
use fields::*;
use interrupts::*;
use io::*;
use mmio::*;
use msr::*;
use signals::*;
use sync_regs::*;
use translate::*;

const MMIO: u64 = 0xd000_0000;
const BUF: u64 = 0x3000;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_APIC_BASE: u32 = 0x1b;
/// DR6.BS (single step).
const DR6_BS: u64 = 1 << 14;

fn guest(
    host: &Host,
    mode: Mode,
    build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Result<Guest, Fail> {
    Guest::boot(host, &case("run", mode, program(mode, build)?))
}

/// A long64 guest that runs `out 0x80, al; hlt`.
fn out_hlt_guest(host: &Host) -> Result<Guest, Fail> {
    guest(host, Mode::Long64, |a| {
        a.out(0x80, al)?;
        a.hlt()
    })
}

fn with_mmio(mut c: Case) -> Case {
    c.mmio = vec![MmioRegion {
        addr: Hex(MMIO),
        len: Hex(0x1000),
        hex: HexBytes(vec![]),
    }];
    c
}

fn with_stubs(mut c: Case) -> Case {
    c.stubs = true;
    c
}

fn long64_case(
    build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Result<Case, Fail> {
    Ok(case("run", Mode::Long64, program(Mode::Long64, build)?))
}

fn set_rflags(g: &Guest, rflags: u64) -> Outcome {
    let mut r = g.regs()?;
    r.rflags = rflags;
    g.set_regs(&r)
}

fn io_exit(e: &KvmExit, input: bool, size: u8, port: u16) -> Result<(u32, u64), Fail> {
    match *e {
        KvmExit::Io {
            input: i,
            size: s,
            port: p,
            count,
            data_offset,
        } if i == input && s == size && p == port => Ok((count, data_offset)),
        _ => Err(Fail::failed(format!(
            "exit: wanted IO {} {size} bytes on port {port:#x}, got {}",
            if input { "in" } else { "out" },
            describe(e)
        ))),
    }
}

crate::checks! {
    Run;
    "run.io_out_sizes_1_2_4_report_port_count_and_data",
        "api.rst 5 kvm_run KVM_EXIT_IO (direction, size, port, count, data_offset)", io_out_sizes;
    "run.io_in_sizes_1_2_4_fill_the_register",
        "api.rst 5 KVM_EXIT_IO (KVM_EXIT_IO_IN: data placed at data_offset for the next KVM_RUN); SDM 2 IN", io_in_sizes;
    "run.io_rep_outsb_counts_and_data_in_order",
        "api.rst 5 KVM_EXIT_IO (count, packed data); SDM 2 OUTS/REP", io_rep_outsb;
    "run.io_rep_outsb_with_df_set_writes_backwards",
        "api.rst 5 KVM_EXIT_IO; SDM 2 OUTS (DF = 1 decrements)", io_rep_outsb_backwards;
    "run.io_rep_insw_fills_memory_from_exits",
        "api.rst 5 KVM_EXIT_IO (IN: data for the next KVM_RUN); SDM 2 INS/REP", io_rep_insw;
    "run.io_in_completed_by_immediate_exit_run",
        "api.rst 5 kvm_run (note: IO completes on re-entry; immediate_exit completes pending operations)", immediate_exit_completes_in;
    "run.mmio_write_sizes_1_2_4_8_report_address_and_data",
        "api.rst 5 KVM_EXIT_MMIO (phys_addr, data in its first len bytes, len, is_write)", mmio_write_sizes;
    "run.mmio_read_sizes_fill_registers_from_data",
        "api.rst 5 KVM_EXIT_MMIO (data filled by application code for reads); SDM 2 MOV/MOVSX", mmio_read_sizes;
    "run.mmio_instruction_fetch_exits_internal_error",
        "api.rst 5 kvm_run KVM_EXIT_INTERNAL_ERROR (KVM_INTERNAL_ERROR_EMULATION)", mmio_fetch_internal_error;
    "run.fail_entry_cs_long_and_default_size_both_set_reported_or_rejected",
        "api.rst 5 kvm_run KVM_EXIT_FAIL_ENTRY (hardware_entry_failure_reason), KVM_EXIT_INTERNAL_ERROR, 4.14 KVM_SET_SREGS; SDM 3C 28.3.1.2 (CS.L = 1 needs CS.D = 0)", fail_entry_cs_l_and_d;
    "run.hlt_exits_in_every_mode_with_rip_past_hlt",
        "api.rst 5 kvm_run KVM_EXIT_HLT; SDM 2 HLT", hlt_every_mode;
    "run.if_flag_reports_rflags_if",
        "api.rst 5 kvm_run if_flag (without in-kernel LAPIC)", if_flag_reported;
    "run.cr8_reports_guest_cr8_at_exit",
        "api.rst 5 kvm_run cr8 (out; without in-kernel LAPIC)", cr8_out;
    "run.cr8_set_before_run_read_by_guest",
        "api.rst 5 kvm_run cr8 (in; without in-kernel LAPIC)", cr8_in;
    "run.apic_base_matches_ia32_apic_base",
        "api.rst 5 kvm_run apic_base (without in-kernel LAPIC)", apic_base_field;
    "run.shutdown_on_triple_fault",
        "api.rst 5 kvm_run KVM_EXIT_SHUTDOWN; SDM 3A 7.15 (#DF, triple fault)", shutdown_triple_fault;
    "run.immediate_exit_returns_eintr_without_running",
        "api.rst 5 kvm_run immediate_exit (KVM_RUN exits immediately, returning -EINTR)", immediate_exit_eintr;
    "run.signal_during_spinning_guest_returns_eintr",
        "api.rst 4.10 KVM_RUN (EINTR), 4.21 KVM_SET_SIGNAL_MASK", signal_interrupts_spin;
    "run.signal_pending_before_run_returns_eintr_without_running",
        "api.rst 4.10 KVM_RUN (EINTR: an unmasked signal is pending), 4.21 KVM_SET_SIGNAL_MASK", signal_pending_eintr;
    "run.signal_mask_blocked_signal_does_not_interrupt",
        "api.rst 4.21 KVM_SET_SIGNAL_MASK (signals blocked during KVM_RUN)", signal_mask_blocks;
    "run.debug_single_step_long64_exits_after_each_instruction_with_bs",
        "api.rst 4.87 KVM_SET_GUEST_DEBUG (KVM_GUESTDBG_SINGLESTEP), 5 KVM_EXIT_DEBUG; SDM 3B 19.2.3 (DR6.BS)", single_step(Mode::Long64);
    "run.debug_single_step_prot32_exits_after_each_instruction_with_bs",
        "api.rst 4.87 KVM_SET_GUEST_DEBUG (KVM_GUESTDBG_SINGLESTEP), 5 KVM_EXIT_DEBUG", single_step(Mode::Prot32);
    "run.debug_single_step_real16_exits_after_each_instruction_with_bs",
        "api.rst 4.87 KVM_SET_GUEST_DEBUG (KVM_GUESTDBG_SINGLESTEP), 5 KVM_EXIT_DEBUG", single_step(Mode::Real16);
    "run.debug_sw_bp_int3_exits_with_exception_3_at_int3",
        "api.rst 4.87 KVM_SET_GUEST_DEBUG (KVM_GUESTDBG_USE_SW_BP), 5 KVM_EXIT_DEBUG", sw_bp_exit;
    "run.debug_int3_without_sw_bp_goes_to_guest_idt",
        "api.rst 4.87 KVM_SET_GUEST_DEBUG (only with USE_SW_BP does #BP exit); SDM 3A 7.15 #BP", sw_bp_off_goes_to_guest;
    "run.debug_hw_bp_execute_breakpoint_exits",
        "api.rst 4.87 KVM_SET_GUEST_DEBUG (KVM_GUESTDBG_USE_HW_BP, debugreg), KVM_CAP_GUEST_DEBUG_HW_BPS", hw_bp_exec;
    "run.x86_rdmsr_unknown_exits_and_userspace_data_reaches_guest",
        "api.rst 5 KVM_EXIT_X86_RDMSR, 7.21 KVM_CAP_X86_USER_SPACE_MSR (KVM_MSR_EXIT_REASON_UNKNOWN)", user_msr_rdmsr;
    "run.x86_rdmsr_error_injects_gp",
        "api.rst 5 KVM_EXIT_X86_RDMSR (error = 1 injects #GP)", user_msr_rdmsr_error_gp;
    "run.x86_wrmsr_unknown_exits_with_index_and_data",
        "api.rst 5 KVM_EXIT_X86_WRMSR, 7.21 KVM_CAP_X86_USER_SPACE_MSR", user_msr_wrmsr;
    "run.msr_filter_denied_read_exits_with_reason_filter",
        "api.rst 4.126 KVM_X86_SET_MSR_FILTER, 5 KVM_EXIT_X86_RDMSR (KVM_MSR_EXIT_REASON_FILTER)", msr_filter_exit;
    "run.msr_filter_denied_read_raises_gp_without_user_space_msr",
        "api.rst 4.126 KVM_X86_SET_MSR_FILTER (a denied access generates #GP)", msr_filter_gp;
    "run.msr_filter_leaves_other_msrs_to_kvm",
        "api.rst 4.126 KVM_X86_SET_MSR_FILTER (KVM_MSR_FILTER_DEFAULT_ALLOW)", msr_filter_allows_others;
    "run.msr_filter_default_deny_without_ranges_einval",
        "api.rst 4.126 KVM_X86_SET_MSR_FILTER (DEFAULT_DENY with no ranges is invalid)", msr_filter_default_deny_empty;
    "run.kvm_interrupt_delivered_to_guest_handler",
        "api.rst 4.16 KVM_INTERRUPT; SDM 3A 7.12", kvm_interrupt_delivered;
    "run.kvm_interrupt_invalid_vector_einval",
        "api.rst 4.16 KVM_INTERRUPT (-EINVAL the irq number is invalid)", kvm_interrupt_invalid_einval;
    "run.kvm_interrupt_with_in_kernel_pic_enxio",
        "api.rst 4.16 KVM_INTERRUPT (-ENXIO if the PIC is in the kernel)", kvm_interrupt_irqchip_enxio;
    "run.request_interrupt_window_exits_when_if_set",
        "api.rst 5 kvm_run request_interrupt_window, ready_for_interrupt_injection, KVM_EXIT_IRQ_WINDOW_OPEN", every_attempt(irq_window_immediate_once);
    "run.request_interrupt_window_exits_right_after_sti_shadow",
        "api.rst 5 kvm_run request_interrupt_window (return when it becomes possible to inject); SDM 2 STI", every_attempt(irq_window_after_sti_shadow_once);
    "run.kvm_nmi_delivered_with_if_clear",
        "api.rst 4.64 KVM_NMI; SDM 3A 7.7 (NMI not masked by IF)", kvm_nmi_delivered;
    "run.translate_mapped_address_identity_in_every_mode",
        "api.rst 4.15 KVM_TRANSLATE (current address translation mode)", translate_mapped;
    "run.translate_unmapped_address_not_valid",
        "api.rst 4.15 KVM_TRANSLATE (valid)", translate_unmapped;
    "run.sync_regs_valid_regs_filled_at_exit",
        "api.rst 5 kvm_run kvm_valid_regs, 6.74 KVM_CAP_SYNC_REGS", sync_regs_filled;
    "run.sync_regs_dirty_regs_take_effect",
        "api.rst 5 kvm_run kvm_dirty_regs, 6.74 KVM_CAP_SYNC_REGS", sync_regs_dirty;
    "run.sync_regs_unknown_bits_rejected_einval",
        "api.rst 6.74 KVM_CAP_SYNC_REGS (unused bits must be zero; EINVAL)", sync_regs_invalid;
}

//! vCPU state checks: every GET/SET pair round-trips, the guest sees what was set (registers,
//! FPU/XSAVE, MSRs, debug registers, events, CPUID), and invalid states are rejected with the
//! state re-read to prove the rejected call changed nothing.

use crate::catalogue::fixture::{Guest, expect_exit};
use crate::catalogue::harness::{CODE, case, program};
use crate::registry::{Fail, Failure, Outcome, Part, ioctl, require_cap};
use crate::{ensure, ensure_eq};
use iced_x86::code_asm::*;
use kvmconf_guests::case::Mode;
use kvmconf_guests::layout::{Layout, cr0, cr4};
use kvmconf_harness::Host;
use kvmconf_harness::Vcpu;
use kvmconf_harness::abi::{
    CpuId, KVM_CAP_INTR_SHADOW, KVM_CAP_IRQCHIP, KVM_CAP_X86_SMM, KVM_MAX_CPUID_ENTRIES,
    KVM_MP_STATE_HALTED, KVM_MP_STATE_RUNNABLE, KVM_VCPUEVENT_VALID_NMI_PENDING,
    KVM_VCPUEVENT_VALID_SHADOW, KVM_VCPUEVENT_VALID_SMM, Msrs, kvm_cpuid_entry2, kvm_lapic_state,
    kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_xcrs,
};
use kvmconf_harness::exit::KvmExit;
mod cpuid;
mod debugregs;
mod events;
mod fpu;
mod mp_state;
mod msrs;
mod regs;
mod xcrs;
use cpuid::*;
use debugregs::*;
use events::*;
use fpu::*;
use mp_state::*;
use msrs::*;
use regs::*;
use xcrs::*;

// MSR indices (SDM 4 / AMD APM 2).
const MSR_TSC: u32 = 0x10;
const MSR_APIC_BASE: u32 = 0x1b;
const MSR_SYSENTER_CS: u32 = 0x174;
const MSR_SYSENTER_ESP: u32 = 0x175;
const MSR_SYSENTER_EIP: u32 = 0x176;
const MSR_PAT: u32 = 0x277;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SFMASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// An index no x86 CPU or KVM defines (KVM's own MSRs are at 0x4b564d00..).
pub const MSR_UNKNOWN: u32 = 0xdead_beef;

/// Where test programs store what they read.
const OUT: u64 = 0x10000;

fn einval_or_fail(what: &str, r: Result<(), i32>) -> Outcome {
    match r {
        Ok(()) => Err(Fail::failed(format!("{what}: wanted EINVAL, got success"))),
        Err(e) => {
            ensure_eq!(e, libc::EINVAL, "{what}: errno (EINVAL = {})", libc::EINVAL);
            Ok(())
        }
    }
}

fn hlt_guest(host: &Host, mode: Mode) -> Result<Guest, Fail> {
    Guest::boot(host, &case("hlt", mode, program(mode, |a| a.hlt())?))
}

/// A fresh VM whose vCPU has only been created (KVM_SET_CPUID2 with the supported CPUID).
fn fresh_vm(host: &Host) -> Result<kvmconf_harness::TestVm, Fail> {
    let c = case("fresh", Mode::Long64, vec![0xf4]);
    Ok(host.create_vm(&Layout::for_case(&c), false)?)
}

fn regs_fields(r: &kvm_regs) -> [(&'static str, u64); 18] {
    [
        ("rax", r.rax),
        ("rbx", r.rbx),
        ("rcx", r.rcx),
        ("rdx", r.rdx),
        ("rsi", r.rsi),
        ("rdi", r.rdi),
        ("rsp", r.rsp),
        ("rbp", r.rbp),
        ("r8", r.r8),
        ("r9", r.r9),
        ("r10", r.r10),
        ("r11", r.r11),
        ("r12", r.r12),
        ("r13", r.r13),
        ("r14", r.r14),
        ("r15", r.r15),
        ("rip", r.rip),
        ("rflags", r.rflags),
    ]
}

fn regs_diff(got: &kvm_regs, want: &kvm_regs) -> Vec<String> {
    regs_fields(got)
        .iter()
        .zip(regs_fields(want).iter())
        .filter(|(g, w)| g.1 != w.1)
        .map(|(g, w)| format!("{}: wanted {:#x}, got {:#x}", g.0, w.1, g.1))
        .collect()
}

fn sregs_diff(got: &kvm_sregs, want: &kvm_sregs) -> Vec<String> {
    let mut d = Vec::new();
    for (name, g, w) in [
        ("cs", &got.cs, &want.cs),
        ("ds", &got.ds, &want.ds),
        ("es", &got.es, &want.es),
        ("fs", &got.fs, &want.fs),
        ("gs", &got.gs, &want.gs),
        ("ss", &got.ss, &want.ss),
        ("tr", &got.tr, &want.tr),
        ("ldt", &got.ldt, &want.ldt),
    ] {
        if g != w {
            d.push(format!("{name}: wanted {w:x?}, got {g:x?}"));
        }
    }
    for (name, g, w) in [
        ("gdt.base", got.gdt.base, want.gdt.base),
        (
            "gdt.limit",
            u64::from(got.gdt.limit),
            u64::from(want.gdt.limit),
        ),
        ("idt.base", got.idt.base, want.idt.base),
        (
            "idt.limit",
            u64::from(got.idt.limit),
            u64::from(want.idt.limit),
        ),
        ("cr0", got.cr0, want.cr0),
        ("cr2", got.cr2, want.cr2),
        ("cr3", got.cr3, want.cr3),
        ("cr4", got.cr4, want.cr4),
        ("cr8", got.cr8, want.cr8),
        ("efer", got.efer, want.efer),
        ("apic_base", got.apic_base, want.apic_base),
    ] {
        if g != w {
            d.push(format!("{name}: wanted {w:#x}, got {g:#x}"));
        }
    }
    if got.interrupt_bitmap != want.interrupt_bitmap {
        d.push(format!(
            "interrupt_bitmap: wanted {:x?}, got {:x?}",
            want.interrupt_bitmap, got.interrupt_bitmap
        ));
    }
    d
}

/// Bytes as one hex string, for failure messages.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn no_diff(what: &str, d: Vec<String>) -> Outcome {
    ensure!(d.is_empty(), "{what}:\n  {}", d.join("\n  "));
    Ok(())
}

crate::checks! {
    VcpuState;
    "vcpu_state.regs_set_then_get_round_trips_every_register",
        "api.rst 4.11 KVM_GET_REGS, 4.12 KVM_SET_REGS", regs_round_trip;
    "vcpu_state.regs_rflags_bit1_reads_one_whatever_was_set",
        "api.rst 4.12 KVM_SET_REGS; SDM 1 3.4.3 (EFLAGS bit 1 reserved, set)", regs_rflags_fixed_bit;
    "vcpu_state.regs_sregs_new_vcpu_in_reset_state",
        "api.rst 4.11 KVM_GET_REGS, 4.13 KVM_GET_SREGS; SDM 3A 10.1.1 (state after reset)", regs_fresh_reset_state;
    "vcpu_state.sregs_prot32_set_then_get_round_trips",
        "api.rst 4.13 KVM_GET_SREGS, 4.14 KVM_SET_SREGS", sregs_round_trip(Mode::Prot32);
    "vcpu_state.sregs_long64_set_then_get_round_trips",
        "api.rst 4.13 KVM_GET_SREGS, 4.14 KVM_SET_SREGS", sregs_round_trip(Mode::Long64);
    "vcpu_state.sregs_cr8_set_then_get_round_trips",
        "api.rst 4.13 KVM_GET_SREGS (cr8), 4.14 KVM_SET_SREGS", sregs_cr8_round_trip;
    "vcpu_state.sregs_interrupt_bitmap_pending_vector_round_trips",
        "api.rst 4.13 KVM_GET_SREGS (interrupt_bitmap: at most one pending external interrupt)", sregs_interrupt_bitmap_round_trip;
    "vcpu_state.sregs_cr0_high_bits_rejected_einval_unchanged",
        "api.rst 4.14 KVM_SET_SREGS (EINVAL); SDM 3A 2.5 (CR0 bits 63:32 reserved)", sregs_rejected(Mode::Long64, "cr0 bit 32 set", |s| s.cr0 |= 1 << 32);
    "vcpu_state.sregs_cr0_pg_without_pe_rejected_einval_unchanged",
        "api.rst 4.14 KVM_SET_SREGS (EINVAL); SDM 3A 2.5 (PG requires PE)", sregs_cr0_pg_without_pe;
    "vcpu_state.sregs_cr0_nw_without_cd_rejected_einval_unchanged",
        "api.rst 4.14 KVM_SET_SREGS (EINVAL); SDM 3A 2.5 (NW=1 with CD=0 is invalid)", sregs_cr0_nw_without_cd;
    "vcpu_state.sregs_cr4_reserved_bit_rejected_einval_unchanged",
        "api.rst 4.14 KVM_SET_SREGS (EINVAL); SDM 3A 2.5 (CR4 reserved bits)", sregs_rejected(Mode::Long64, "cr4 bit 63 set", |s| s.cr4 |= 1 << 63);
    "vcpu_state.sregs_efer_lme_cr0_pg_without_cr4_pae_rejected_einval_unchanged",
        "api.rst 4.14 KVM_SET_SREGS (EINVAL); SDM 3A 10.8.5 (IA-32e mode needs PAE)", sregs_rejected(Mode::Long64, "efer.LME = 1, cr0.PG = 1 and cr4.PAE = 0", |s| s.cr4 &= !cr4::PAE);
    "vcpu_state.sregs_efer_lma_without_paging_rejected_einval_unchanged",
        "api.rst 4.14 KVM_SET_SREGS (EINVAL); SDM 3A 2.2.1 (LMA = LME and PG)", sregs_lma_without_paging;
    "vcpu_state.sregs_cs_l_outside_long_mode_rejected_einval_unchanged",
        "api.rst 4.14 KVM_SET_SREGS (EINVAL); SDM 3A 5.2.1 (CS.L only in IA-32e mode)", sregs_cs_l_outside_long_mode;
    "vcpu_state.fpu_set_then_get_round_trips_x87_and_sse",
        "api.rst 4.22 KVM_GET_FPU, 4.23 KVM_SET_FPU", fpu_round_trip;
    "vcpu_state.fpu_mxcsr_reset_value_and_set_then_get_round_trips",
        "api.rst 4.22 KVM_GET_FPU, 4.23 KVM_SET_FPU (mxcsr); SDM 1 10.2.3.1", fpu_mxcsr_round_trip;
    "vcpu_state.fpu_set_xmm_guest_cpl0_stores_it",
        "api.rst 4.23 KVM_SET_FPU; SDM 2 MOVDQU", fpu_guest_reads_xmm(0);
    "vcpu_state.fpu_set_xmm_guest_cpl3_stores_it",
        "api.rst 4.23 KVM_SET_FPU; SDM 2 MOVDQU", fpu_guest_reads_xmm(3);
    "vcpu_state.xsave_set_then_get_round_trips_legacy_area",
        "api.rst 4.42 KVM_GET_XSAVE, 4.43 KVM_SET_XSAVE; SDM 1 13.4 (XSAVE area layout)", xsave_round_trip;
    "vcpu_state.xsave_set_xmm_guest_cpl3_stores_it",
        "api.rst 4.43 KVM_SET_XSAVE; SDM 1 13.4.1", xsave_guest_reads_xmm_cpl3;
    "vcpu_state.xsave_xstate_bv_unsupported_bit_rejected_einval_unchanged",
        "api.rst 4.43 KVM_SET_XSAVE (EINVAL); SDM 1 13.8 (XRSTOR #GP on XSTATE_BV bits outside XCR0)", xsave_bad_xstate_bv;
    "vcpu_state.xcrs_set_then_get_round_trips_xcr0",
        "api.rst 4.44 KVM_GET_XCRS, 4.45 KVM_SET_XCRS; SDM 1 13.3 (XCR0 after reset = 1)", xcrs_round_trip;
    "vcpu_state.xcrs_xcr0_without_x87_rejected_einval_unchanged",
        "api.rst 4.45 KVM_SET_XCRS (EINVAL); SDM 1 13.3 (XCR0 bit 0 must be 1)", xcrs_rejected("XCR0 = 0x2 (SSE without x87)", 0x2);
    "vcpu_state.xcrs_xcr0_avx_without_sse_rejected_einval_unchanged",
        "api.rst 4.45 KVM_SET_XCRS (EINVAL); SDM 1 13.3 (XCR0[2] requires XCR0[1])", xcrs_avx_without_sse;
    "vcpu_state.xcrs_xcr0_unsupported_bit_rejected_einval_unchanged",
        "api.rst 4.45 KVM_SET_XCRS (EINVAL); SDM 1 13.3 (bits not in CPUID.0DH:EAX/EDX)", xcrs_rejected("XCR0 bit 62 set (not supported)", 0x3 | (1 << 62));
    "vcpu_state.msrs_set_then_get_round_trips",
        "api.rst 4.18 KVM_GET_MSRS, 4.19 KVM_SET_MSRS", msrs_round_trip;
    "vcpu_state.msrs_get_unknown_msr_stops_at_its_index",
        "api.rst 4.18 KVM_GET_MSRS (returns the number of MSRs read)", msrs_get_stops_at_unknown;
    "vcpu_state.msrs_set_unknown_msr_stops_at_its_index",
        "api.rst 4.19 KVM_SET_MSRS (stops at the first MSR that fails, returns the count set)", msrs_set_stops_at_unknown;
    "vcpu_state.msrs_set_reserved_bits_stops_at_its_index_unchanged",
        "api.rst 4.19 KVM_SET_MSRS (reserved bits); SDM 3A 13.12.2 (PAT type 2 reserved)", msrs_set_stops_at_reserved_bits;
    "vcpu_state.msrs_guest_rdmsr_reads_values_set_by_ioctl",
        "api.rst 4.19 KVM_SET_MSRS; SDM 2 RDMSR", msrs_guest_rdmsr;
    "vcpu_state.msrs_guest_wrmsr_values_read_by_ioctl",
        "api.rst 4.18 KVM_GET_MSRS; SDM 2 WRMSR", msrs_guest_wrmsr;
    "vcpu_state.msrs_guest_rdmsr_unknown_raises_gp",
        "api.rst 4.19 / 7.21 (without KVM_CAP_X86_USER_SPACE_MSR, KVM raises #GP); SDM 2 RDMSR", msrs_guest_rdmsr_unknown_gp;
    "vcpu_state.msrs_tsc_set_then_get_counts_from_the_value_set",
        "api.rst 4.18 KVM_GET_MSRS, 4.19 KVM_SET_MSRS (IA32_TSC); SDM 3B 18.17", msrs_tsc_round_trip;
    "vcpu_state.msrs_rdtsc_cpl0_consistent_with_ia32_tsc",
        "api.rst 4.19 KVM_SET_MSRS (IA32_TSC); SDM 2 RDTSC, SDM 3B 18.17", rdtsc_matches_msr(0);
    "vcpu_state.msrs_rdtsc_cpl3_consistent_with_ia32_tsc",
        "api.rst 4.19 KVM_SET_MSRS (IA32_TSC); SDM 2 RDTSC, SDM 3B 18.17", rdtsc_matches_msr(3);
    "vcpu_state.msrs_apic_base_reset_value_bsp_enabled",
        "api.rst 4.18 KVM_GET_MSRS; SDM 3A 11.4.4 (IA32_APIC_BASE after reset)", apic_base_reset;
    "vcpu_state.debugregs_set_then_get_round_trips",
        "api.rst 4.33 KVM_GET_DEBUGREGS, 4.34 KVM_SET_DEBUGREGS", debugregs_round_trip;
    "vcpu_state.debugregs_flags_nonzero_rejected_einval_unchanged",
        "api.rst 4.34 KVM_SET_DEBUGREGS (flags must be cleared on entry)", debugregs_rejected("flags = 1", |d| d.flags = 1);
    "vcpu_state.debugregs_dr7_high_bits_rejected_einval_unchanged",
        "api.rst 4.34 KVM_SET_DEBUGREGS (EINVAL); SDM 3B 19.2.4 (DR7 bits 63:32 reserved, #GP)", debugregs_rejected("dr7 bit 32 set", |d| d.dr7 |= 1 << 32);
    "vcpu_state.debugregs_dr6_high_bits_rejected_einval_unchanged",
        "api.rst 4.34 KVM_SET_DEBUGREGS (EINVAL); SDM 3B 19.2.3 (DR6 bits 63:32 reserved, #GP)", debugregs_rejected("dr6 bit 32 set", |d| d.dr6 |= 1 << 32);
    "vcpu_state.debugregs_guest_mov_from_dr_reads_values_set",
        "api.rst 4.34 KVM_SET_DEBUGREGS; SDM 2 MOV (debug registers)", debugregs_guest_reads;
    "vcpu_state.vcpu_events_nmi_masked_round_trips",
        "api.rst 4.31 KVM_GET_VCPU_EVENTS, 4.32 KVM_SET_VCPU_EVENTS (nmi.masked)", events_nmi_masked_round_trip;
    "vcpu_state.vcpu_events_interrupt_shadow_round_trips",
        "api.rst 4.32 KVM_SET_VCPU_EVENTS (KVM_VCPUEVENT_VALID_SHADOW, KVM_CAP_INTR_SHADOW)", events_shadow_round_trip;
    "vcpu_state.vcpu_events_unknown_flags_rejected_einval_unchanged",
        "api.rst 4.32 KVM_SET_VCPU_EVENTS (defined flag bits; EINVAL)", events_bad_flags;
    "vcpu_state.vcpu_events_smm_state_needs_cap_x86_smm",
        "api.rst 4.32 KVM_SET_VCPU_EVENTS (KVM_VCPUEVENT_VALID_SMM only with KVM_CAP_X86_SMM)", events_smm_flag;
    "vcpu_state.vcpu_events_injected_exception_delivered_to_guest",
        "api.rst 4.32 KVM_SET_VCPU_EVENTS (exception.injected); SDM 3A 7.12", events_exception_delivered;
    "vcpu_state.vcpu_events_injected_exception_error_code_delivered",
        "api.rst 4.32 KVM_SET_VCPU_EVENTS (exception.has_error_code); SDM 3A 7.13", events_exception_error_code_delivered;
    "vcpu_state.vcpu_events_pending_nmi_delivered_and_masks_nmis",
        "api.rst 4.32 KVM_SET_VCPU_EVENTS (KVM_VCPUEVENT_VALID_NMI_PENDING); SDM 3A 7.7 (NMI blocks NMIs)", events_nmi_pending_delivered;
    "vcpu_state.vcpu_events_masked_nmi_stays_pending",
        "api.rst 4.31/4.32 KVM_*_VCPU_EVENTS (nmi.pending, nmi.masked); SDM 3A 7.7", events_nmi_masked_holds_pending;
    "vcpu_state.vcpu_events_injected_interrupt_delivered_to_guest",
        "api.rst 4.32 KVM_SET_VCPU_EVENTS (interrupt.injected, nr); SDM 3A 7.12", events_interrupt_delivered;
    "vcpu_state.mp_state_new_bsp_is_runnable",
        "api.rst 4.38 KVM_GET_MP_STATE (KVM_MP_STATE_RUNNABLE)", mp_state_fresh_runnable;
    "vcpu_state.mp_state_halted_set_then_get_round_trips",
        "api.rst 4.38 KVM_GET_MP_STATE, 4.39 KVM_SET_MP_STATE (after KVM_CREATE_IRQCHIP)", mp_state_halted_round_trip;
    "vcpu_state.mp_state_invalid_value_rejected_einval_unchanged",
        "api.rst 4.39 KVM_SET_MP_STATE (possible values; EINVAL)", mp_state_invalid;
    "vcpu_state.lapic_get_reports_vcpu_id_and_integrated_version",
        "api.rst 4.57 KVM_GET_LAPIC (xAPIC ID in bits 31:24 of offset 0x20); SDM 3A 11.4.6, 11.4.8", lapic_id_and_version;
    "vcpu_state.lapic_set_then_get_round_trips",
        "api.rst 4.57 KVM_GET_LAPIC, 4.58 KVM_SET_LAPIC", lapic_round_trip;
    "vcpu_state.cpuid2_set_then_get_round_trips",
        "api.rst 4.20 KVM_SET_CPUID(2), 4.46 (kvm_cpuid_entry2 fields); KVM_GET_CPUID2", cpuid2_round_trip;
    "vcpu_state.cpuid2_guest_cpuid_cpl0_returns_values_set",
        "api.rst 4.20 KVM_SET_CPUID(2) (defines the vcpu responses to the cpuid instruction)", cpuid2_guest_sees(0);
    "vcpu_state.cpuid2_guest_cpuid_cpl3_returns_values_set",
        "api.rst 4.20 KVM_SET_CPUID(2) (defines the vcpu responses to the cpuid instruction)", cpuid2_guest_sees(3);
}

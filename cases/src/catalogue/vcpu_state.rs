//! vCPU state checks: every GET/SET pair round-trips, the guest sees what was set (registers,
//! FPU/XSAVE, MSRs, debug registers, events, CPUID), and invalid states are rejected with the
//! state re-read to prove the rejected call changed nothing.

use crate::catalogue::fixture::{Guest, expect_exit};
use crate::catalogue::harness::{CODE, case, program};
use crate::registry::{Fail, Outcome, ioctl, require_cap};
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

// ---------------------------------------------------------------------------------------------
// REGS

fn regs_round_trip(host: &Host) -> Outcome {
    let g = hlt_guest(host, Mode::Long64)?;
    let want = kvm_regs {
        rax: 0x0101_0101_0101_0101,
        rbx: 0x0202_0202_0202_0202,
        rcx: 0x0303_0303_0303_0303,
        rdx: 0x0404_0404_0404_0404,
        rsi: 0x0505_0505_0505_0505,
        rdi: 0x0606_0606_0606_0606,
        rsp: 0x0000_0000_0000_7ff8,
        rbp: 0x0808_0808_0808_0808,
        r8: 0x8888_8888_8888_8888,
        r9: 0x9999_9999_9999_9999,
        r10: 0xaaaa_aaaa_aaaa_aaaa,
        r11: 0xbbbb_bbbb_bbbb_bbbb,
        r12: 0xcccc_cccc_cccc_cccc,
        r13: 0xdddd_dddd_dddd_dddd,
        r14: 0xeeee_eeee_eeee_eeee,
        r15: 0xffff_ffff_ffff_fff0,
        rip: 0x1234,
        // CF, PF, ZF, SF, OF and the fixed bit 1.
        rflags: 0x8c7,
    };
    g.set_regs(&want)?;
    no_diff(
        "KVM_GET_REGS after KVM_SET_REGS",
        regs_diff(&g.regs()?, &want),
    )
}

fn regs_rflags_fixed_bit(host: &Host) -> Outcome {
    let g = hlt_guest(host, Mode::Long64)?;
    let mut r = g.regs()?;
    r.rflags = 0x1; // CF only, bit 1 clear
    g.set_regs(&r)?;
    ensure_eq!(
        g.regs()?.rflags,
        0x3u64,
        "rflags after KVM_SET_REGS with rflags = 0x1 (bit 1 is reserved and always 1)"
    );
    Ok(())
}

fn regs_fresh_reset_state(host: &Host) -> Outcome {
    let vm = fresh_vm(host)?;
    let r = vm.vcpu.try_get_regs().map_err(ioctl("KVM_GET_REGS"))?;
    ensure_eq!(r.rip, 0xfff0u64, "rip of a new vCPU");
    ensure_eq!(r.rflags, 0x2u64, "rflags of a new vCPU");
    let s = vm.vcpu.try_get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
    ensure_eq!(s.cs.selector, 0xf000u16, "cs.selector of a new vCPU");
    ensure_eq!(s.cs.base, 0xffff_0000u64, "cs.base of a new vCPU");
    ensure_eq!(s.cr0, 0x6000_0010u64, "cr0 of a new vCPU");
    ensure_eq!(s.efer, 0u64, "efer of a new vCPU");
    ensure_eq!(s.idt.limit, 0xffffu16, "idt.limit of a new vCPU");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// SREGS

fn sregs_round_trip(host: &Host, mode: Mode) -> Outcome {
    let g = hlt_guest(host, mode)?;
    let want = g.sregs()?;
    // Write what we read, with a few fields changed that do not affect validity.
    let mut set = want;
    set.cr2 = 0xdead_b000;
    set.gdt.limit = 0x3f;
    set.idt.base = 0x7000;
    set.fs.base = 0x1234_5000;
    set.gs.base = 0x5678_9000;
    g.vcpu()
        .try_set_sregs(&set)
        .map_err(ioctl("KVM_SET_SREGS"))?;
    no_diff(
        &format!("{mode:?} KVM_GET_SREGS after KVM_SET_SREGS"),
        sregs_diff(&g.sregs()?, &set),
    )
}

fn sregs_cr8_round_trip(host: &Host) -> Outcome {
    let g = hlt_guest(host, Mode::Long64)?;
    let mut s = g.sregs()?;
    s.cr8 = 0x9;
    g.vcpu().try_set_sregs(&s).map_err(ioctl("KVM_SET_SREGS"))?;
    ensure_eq!(
        g.sregs()?.cr8,
        0x9u64,
        "cr8 after KVM_SET_SREGS with cr8 = 0x9"
    );
    Ok(())
}

fn sregs_interrupt_bitmap_round_trip(host: &Host) -> Outcome {
    let g = hlt_guest(host, Mode::Long64)?;
    let mut s = g.sregs()?;
    s.interrupt_bitmap = [0, 1 << (0x51 - 64), 0, 0];
    g.vcpu().try_set_sregs(&s).map_err(ioctl("KVM_SET_SREGS"))?;
    ensure_eq!(
        g.sregs()?.interrupt_bitmap,
        [0u64, 1 << (0x51 - 64), 0, 0],
        "interrupt_bitmap after setting pending vector 0x51"
    );
    Ok(())
}

/// KVM_SET_SREGS with `mutate` applied to a valid `mode` state fails with EINVAL, and neither
/// sregs nor regs change.
fn sregs_rejected(host: &Host, mode: Mode, what: &str, mutate: impl Fn(&mut kvm_sregs)) -> Outcome {
    let g = hlt_guest(host, mode)?;
    let (regs0, sregs0) = (g.regs()?, g.sregs()?);
    let mut bad = sregs0;
    mutate(&mut bad);
    einval_or_fail(
        &format!("KVM_SET_SREGS with {what}"),
        g.vcpu().try_set_sregs(&bad).map_err(|e| e.errno()),
    )?;
    no_diff(
        &format!("sregs re-read after the rejected KVM_SET_SREGS ({what})"),
        sregs_diff(&g.sregs()?, &sregs0),
    )?;
    no_diff(
        &format!("regs re-read after the rejected KVM_SET_SREGS ({what})"),
        regs_diff(&g.regs()?, &regs0),
    )
}

fn sregs_cr0_pg_without_pe(host: &Host) -> Outcome {
    sregs_rejected(host, Mode::Prot32, "cr0.PG = 1 and cr0.PE = 0", |s| {
        s.cr0 = (s.cr0 | cr0::PG) & !cr0::PE;
    })
}

fn sregs_cr0_nw_without_cd(host: &Host) -> Outcome {
    sregs_rejected(host, Mode::Prot32, "cr0.NW = 1 and cr0.CD = 0", |s| {
        s.cr0 = (s.cr0 | (1 << 29)) & !(1 << 30);
    })
}

fn sregs_lma_without_paging(host: &Host) -> Outcome {
    sregs_rejected(host, Mode::Long64, "efer.LMA = 1 with cr0.PG = 0", |s| {
        s.cr0 &= !cr0::PG;
    })
}

fn sregs_cs_l_outside_long_mode(host: &Host) -> Outcome {
    sregs_rejected(host, Mode::Prot32, "cs.l = 1 with efer.LMA = 0", |s| {
        s.cs.l = 1;
        s.cs.db = 0;
    })
}

// ---------------------------------------------------------------------------------------------
// FPU and XSAVE

fn pattern(seed: u8) -> [u8; 16] {
    std::array::from_fn(|i| seed.wrapping_mul(17).wrapping_add(i as u8 * 3))
}

fn fpu_round_trip(host: &Host) -> Outcome {
    let g = hlt_guest(host, Mode::Long64)?;
    let mut f = g.vcpu().try_get_fpu().map_err(ioctl("KVM_GET_FPU"))?;
    f.fcw = 0x027f;
    f.fsw = 0x3800;
    f.ftwx = 0x81;
    for (i, r) in f.fpr.iter_mut().enumerate() {
        // 80-bit values in the low 10 bytes; the rest of each slot is padding.
        let p = pattern(i as u8);
        r[..10].copy_from_slice(&p[..10]);
        r[10..].fill(0);
    }
    for (i, x) in f.xmm.iter_mut().enumerate() {
        *x = pattern(0x40 + i as u8);
    }
    g.vcpu().try_set_fpu(&f).map_err(ioctl("KVM_SET_FPU"))?;
    let got = g.vcpu().try_get_fpu().map_err(ioctl("KVM_GET_FPU"))?;
    ensure_eq!(got.fcw, f.fcw, "fcw");
    ensure_eq!(got.fsw, f.fsw, "fsw");
    ensure_eq!(got.ftwx, f.ftwx, "ftwx");
    for i in 0..8 {
        ensure_eq!(
            hex(&got.fpr[i][..10]),
            hex(&f.fpr[i][..10]),
            "fpr[{i}] (80 bits)"
        );
    }
    for i in 0..16 {
        ensure_eq!(hex(&got.xmm[i]), hex(&f.xmm[i]), "xmm{i}");
    }
    Ok(())
}

fn fpu_mxcsr_round_trip(host: &Host) -> Outcome {
    let g = hlt_guest(host, Mode::Long64)?;
    let mut f = g.vcpu().try_get_fpu().map_err(ioctl("KVM_GET_FPU"))?;
    ensure_eq!(
        f.mxcsr,
        0x1f80u32,
        "mxcsr of a new vCPU (SDM 1 10.2.3.1: 0x1f80 after reset)"
    );
    f.mxcsr = 0x7f81; // round toward zero, IE flag
    g.vcpu().try_set_fpu(&f).map_err(ioctl("KVM_SET_FPU"))?;
    let got = g.vcpu().try_get_fpu().map_err(ioctl("KVM_GET_FPU"))?;
    ensure_eq!(got.mxcsr, 0x7f81u32, "mxcsr after KVM_SET_FPU");
    Ok(())
}

/// The guest stores xmm0 and xmm1 to OUT with movdqu and halts.
fn store_xmm_guest(host: &Host, cpl: u8) -> Result<Guest, Fail> {
    Guest::long64(host, cpl, |a| {
        a.movdqu(xmmword_ptr(OUT), xmm0)?;
        a.movdqu(xmmword_ptr(OUT + 16), xmm1)?;
        a.hlt()
    })
}

fn run_store_xmm(g: &mut Guest, cpl: u8) -> Result<Vec<u8>, Fail> {
    let e = g.run()?;
    expect_exit(
        &e,
        &KvmExit::Hlt,
        &format!("cpl{cpl} exit after movdqu; hlt"),
    )?;
    if cpl == 3 {
        ensure_eq!(
            g.stub_vector()?,
            Some(13),
            "cpl3: the HLT ends in the #GP stub (kvmconf's CPL3 HLT convention)"
        );
    }
    g.read(OUT, 32)
}

fn fpu_guest_reads_xmm(host: &Host, cpl: u8) -> Outcome {
    let mut g = store_xmm_guest(host, cpl)?;
    let mut f = g.vcpu().try_get_fpu().map_err(ioctl("KVM_GET_FPU"))?;
    f.xmm[0] = pattern(1);
    f.xmm[1] = pattern(2);
    g.vcpu().try_set_fpu(&f).map_err(ioctl("KVM_SET_FPU"))?;
    let got = run_store_xmm(&mut g, cpl)?;
    ensure_eq!(
        hex(&got[..16]),
        hex(&pattern(1)),
        "cpl{cpl} xmm0 as the guest stores it"
    );
    ensure_eq!(
        hex(&got[16..]),
        hex(&pattern(2)),
        "cpl{cpl} xmm1 as the guest stores it"
    );
    Ok(())
}

/// XSAVE legacy-area offsets (SDM 1 10.5.1, 13.4.1).
const XSAVE_XMM0: usize = 160;
const XSAVE_XSTATE_BV: usize = 512;

fn xsave_bytes(x: &kvmconf_harness::abi::kvm_xsave) -> Vec<u8> {
    x.region.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn xsave_from(bytes: &[u8]) -> kvmconf_harness::abi::kvm_xsave {
    let mut x = kvmconf_harness::abi::kvm_xsave::default();
    for (w, c) in x.region.iter_mut().zip(bytes.chunks(4)) {
        *w = u32::from_le_bytes(c.try_into().expect("4 bytes"));
    }
    x
}

fn xsave_round_trip(host: &Host) -> Outcome {
    let g = hlt_guest(host, Mode::Long64)?;
    let mut b = xsave_bytes(&g.vcpu().try_get_xsave().map_err(ioctl("KVM_GET_XSAVE"))?);
    b[0..2].copy_from_slice(&0x037eu16.to_le_bytes()); // fcw
    for i in 0..2 {
        b[XSAVE_XMM0 + 16 * i..XSAVE_XMM0 + 16 * (i + 1)].copy_from_slice(&pattern(9 + i as u8));
    }
    // XSTATE_BV: x87 and SSE state present.
    let mut bv = u64::from_le_bytes(
        b[XSAVE_XSTATE_BV..XSAVE_XSTATE_BV + 8]
            .try_into()
            .expect("8"),
    );
    bv |= 0x3;
    b[XSAVE_XSTATE_BV..XSAVE_XSTATE_BV + 8].copy_from_slice(&bv.to_le_bytes());
    let want = xsave_from(&b);
    g.vcpu()
        .try_set_xsave(&want)
        .map_err(|e| e.errno())
        .map_err(|e| {
            Fail::failed(format!(
                "KVM_SET_XSAVE failed: {} (errno {e})",
                std::io::Error::from_raw_os_error(e)
            ))
        })?;
    let got = xsave_bytes(&g.vcpu().try_get_xsave().map_err(ioctl("KVM_GET_XSAVE"))?);
    ensure_eq!(hex(&got[0..2]), hex(&b[0..2]), "fcw (xsave bytes 0..2)");
    ensure_eq!(
        hex(&got[XSAVE_XMM0..XSAVE_XMM0 + 32]),
        hex(&b[XSAVE_XMM0..XSAVE_XMM0 + 32]),
        "xmm0..xmm1 (xsave bytes 160..192)"
    );
    Ok(())
}

fn xsave_guest_reads_xmm_cpl3(host: &Host) -> Outcome {
    let mut g = store_xmm_guest(host, 3)?;
    let mut b = xsave_bytes(&g.vcpu().try_get_xsave().map_err(ioctl("KVM_GET_XSAVE"))?);
    b[XSAVE_XMM0..XSAVE_XMM0 + 16].copy_from_slice(&pattern(0x21));
    b[XSAVE_XMM0 + 16..XSAVE_XMM0 + 32].copy_from_slice(&pattern(0x22));
    let mut bv = u64::from_le_bytes(
        b[XSAVE_XSTATE_BV..XSAVE_XSTATE_BV + 8]
            .try_into()
            .expect("8"),
    );
    bv |= 0x2;
    b[XSAVE_XSTATE_BV..XSAVE_XSTATE_BV + 8].copy_from_slice(&bv.to_le_bytes());
    g.vcpu()
        .try_set_xsave(&xsave_from(&b))
        .map_err(|e| e.errno())
        .map_err(|e| Fail::failed(format!("KVM_SET_XSAVE failed: errno {e}")))?;
    let got = run_store_xmm(&mut g, 3)?;
    ensure_eq!(
        hex(&got[..16]),
        hex(&pattern(0x21)),
        "xmm0 as the guest stores it"
    );
    ensure_eq!(
        hex(&got[16..]),
        hex(&pattern(0x22)),
        "xmm1 as the guest stores it"
    );
    Ok(())
}

fn xsave_bad_xstate_bv(host: &Host) -> Outcome {
    let g = hlt_guest(host, Mode::Long64)?;
    let before = xsave_bytes(&g.vcpu().try_get_xsave().map_err(ioctl("KVM_GET_XSAVE"))?);
    let mut b = before.clone();
    b[0..2].copy_from_slice(&0x0272u16.to_le_bytes());
    let mut bv = u64::from_le_bytes(
        b[XSAVE_XSTATE_BV..XSAVE_XSTATE_BV + 8]
            .try_into()
            .expect("8"),
    );
    bv |= 1 << 62;
    b[XSAVE_XSTATE_BV..XSAVE_XSTATE_BV + 8].copy_from_slice(&bv.to_le_bytes());
    einval_or_fail(
        "KVM_SET_XSAVE with XSTATE_BV bit 62 (no such state component)",
        g.vcpu()
            .try_set_xsave(&xsave_from(&b))
            .map_err(|e| e.errno()),
    )?;
    let after = xsave_bytes(&g.vcpu().try_get_xsave().map_err(ioctl("KVM_GET_XSAVE"))?);
    ensure!(
        after == before,
        "XSAVE area re-read after the rejected KVM_SET_XSAVE differs at byte {:#x}",
        after
            .iter()
            .zip(&before)
            .position(|(a, b)| a != b)
            .unwrap_or(0)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// XCRS

/// XCR0 bits the host lets a guest enable (CPUID.(EAX=0DH,ECX=0):EAX).
fn supported_xcr0(host: &Host) -> u64 {
    host.supported_cpuid()
        .as_slice()
        .iter()
        .find(|e| e.function == 0xd && e.index == 0)
        .map_or(0, |e| u64::from(e.eax) | (u64::from(e.edx) << 32))
}

fn xcrs_of(value: u64, xcr: u32) -> kvm_xcrs {
    let mut x = kvm_xcrs {
        nr_xcrs: 1,
        ..Default::default()
    };
    x.xcrs[0].xcr = xcr;
    x.xcrs[0].value = value;
    x
}

fn xcr0(v: &Vcpu) -> Result<u64, Fail> {
    let x = v.try_get_xcrs().map_err(ioctl("KVM_GET_XCRS"))?;
    x.xcrs[..x.nr_xcrs as usize]
        .iter()
        .find(|x| x.xcr == 0)
        .map(|x| x.value)
        .ok_or_else(|| Fail::failed(format!("KVM_GET_XCRS reports no XCR0: {x:x?}")))
}

fn xcrs_round_trip(host: &Host) -> Outcome {
    require_cap(host, kvmconf_harness::abi::KVM_CAP_XCRS, "XCRS")?;
    let sup = supported_xcr0(host);
    ensure!(sup & 3 == 3, "supported XCR0 {sup:#x} lacks x87|SSE");
    let g = hlt_guest(host, Mode::Long64)?;
    ensure_eq!(xcr0(g.vcpu())?, 1u64, "XCR0 of a new vCPU (x87 only)");
    let want = if sup & 4 != 0 { 7 } else { 3 };
    g.vcpu()
        .try_set_xcrs(&xcrs_of(want, 0))
        .map_err(ioctl("KVM_SET_XCRS"))?;
    ensure_eq!(xcr0(g.vcpu())?, want, "XCR0 after KVM_SET_XCRS");
    Ok(())
}

fn xcrs_rejected(host: &Host, what: &str, value: u64) -> Outcome {
    require_cap(host, kvmconf_harness::abi::KVM_CAP_XCRS, "XCRS")?;
    let g = hlt_guest(host, Mode::Long64)?;
    g.vcpu()
        .try_set_xcrs(&xcrs_of(3, 0))
        .map_err(ioctl("KVM_SET_XCRS"))?;
    einval_or_fail(
        &format!("KVM_SET_XCRS with {what}"),
        g.vcpu()
            .try_set_xcrs(&xcrs_of(value, 0))
            .map_err(|e| e.errno()),
    )?;
    ensure_eq!(
        xcr0(g.vcpu())?,
        3u64,
        "XCR0 re-read after the rejected KVM_SET_XCRS ({what})"
    );
    Ok(())
}

fn xcrs_avx_without_sse(host: &Host) -> Outcome {
    if supported_xcr0(host) & 4 == 0 {
        return Err(Fail::Skip("AVX state (XCR0 bit 2) not supported".into()));
    }
    xcrs_rejected(host, "XCR0 = 0x5 (AVX without SSE)", 0x5)
}

// ---------------------------------------------------------------------------------------------
// MSRS

fn msrs(entries: &[(u32, u64)]) -> Msrs {
    Msrs::from_entries(
        &entries
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect::<Vec<_>>(),
    )
    .expect("a short MSR list fits")
}

fn get_msr(v: &Vcpu, index: u32) -> Result<u64, Fail> {
    let mut m = msrs(&[(index, 0)]);
    let n = v.try_get_msrs(&mut m).map_err(ioctl("KVM_GET_MSRS"))?;
    ensure_eq!(n, 1usize, "KVM_GET_MSRS({index:#x}) count");
    Ok(m.as_slice()[0].data)
}

fn set_msrs_all(v: &Vcpu, entries: &[(u32, u64)]) -> Outcome {
    let n = v
        .try_set_msrs(&msrs(entries))
        .map_err(ioctl("KVM_SET_MSRS"))?;
    ensure_eq!(n, entries.len(), "KVM_SET_MSRS count for {entries:x?}");
    Ok(())
}

const MSR_VALUES: [(u32, u64); 9] = [
    (MSR_SYSENTER_CS, 0x10),
    (MSR_SYSENTER_ESP, 0xffff_8000_0000_8000),
    (MSR_SYSENTER_EIP, 0xffff_8000_0000_1230),
    (MSR_PAT, 0x0001_0405_0607_0406),
    (MSR_STAR, 0x0023_0010_0000_0000),
    (MSR_LSTAR, 0xffff_8000_1234_5670),
    (MSR_CSTAR, 0xffff_8000_1234_6780),
    (MSR_SFMASK, 0x4700),
    (MSR_KERNEL_GS_BASE, 0xffff_8880_0000_1000),
];

fn msrs_round_trip(host: &Host) -> Outcome {
    let g = hlt_guest(host, Mode::Long64)?;
    set_msrs_all(g.vcpu(), &MSR_VALUES)?;
    let mut m = msrs(&MSR_VALUES.map(|(i, _)| (i, 0)));
    let n = g
        .vcpu()
        .try_get_msrs(&mut m)
        .map_err(ioctl("KVM_GET_MSRS"))?;
    ensure_eq!(n, MSR_VALUES.len(), "KVM_GET_MSRS count");
    for (e, (index, want)) in m.as_slice().iter().zip(MSR_VALUES) {
        ensure_eq!(e.data, want, "MSR {index:#x} after KVM_SET_MSRS");
    }
    Ok(())
}

fn msrs_get_stops_at_unknown(host: &Host) -> Outcome {
    let g = hlt_guest(host, Mode::Long64)?;
    let mut m = msrs(&[(MSR_STAR, 0), (MSR_UNKNOWN, 0), (MSR_LSTAR, 0)]);
    let n = g
        .vcpu()
        .try_get_msrs(&mut m)
        .map_err(ioctl("KVM_GET_MSRS"))?;
    ensure_eq!(
        n,
        1usize,
        "KVM_GET_MSRS of [STAR, {MSR_UNKNOWN:#x} (unknown), LSTAR]: number of MSRs returned"
    );
    Ok(())
}

fn msrs_set_stops_at_unknown(host: &Host) -> Outcome {
    let g = hlt_guest(host, Mode::Long64)?;
    set_msrs_all(g.vcpu(), &[(MSR_STAR, 0), (MSR_LSTAR, 0x1000)])?;
    let n = g
        .vcpu()
        .try_set_msrs(&msrs(&[
            (MSR_STAR, 0x0023_0010_0000_0000),
            (MSR_UNKNOWN, 1),
            (MSR_LSTAR, 0x2000),
        ]))
        .map_err(ioctl("KVM_SET_MSRS"))?;
    ensure_eq!(
        n,
        1usize,
        "KVM_SET_MSRS of [STAR, {MSR_UNKNOWN:#x} (unknown), LSTAR]: number of MSRs set"
    );
    ensure_eq!(
        get_msr(g.vcpu(), MSR_STAR)?,
        0x0023_0010_0000_0000u64,
        "STAR (entry 0, before the unknown MSR) was set"
    );
    ensure_eq!(
        get_msr(g.vcpu(), MSR_LSTAR)?,
        0x1000u64,
        "LSTAR (entry 2, after the unknown MSR) is unchanged"
    );
    Ok(())
}

fn msrs_set_stops_at_reserved_bits(host: &Host) -> Outcome {
    let g = hlt_guest(host, Mode::Long64)?;
    let pat0 = get_msr(g.vcpu(), MSR_PAT)?;
    // Memory type 2 is reserved in every PAT entry (SDM 3A 13.12.2).
    let n = g
        .vcpu()
        .try_set_msrs(&msrs(&[(MSR_PAT, 0x0007_0406_0007_0402), (MSR_STAR, 0x1)]))
        .map_err(ioctl("KVM_SET_MSRS"))?;
    ensure_eq!(
        n,
        0usize,
        "KVM_SET_MSRS of [PAT with reserved type 2, STAR]: number of MSRs set"
    );
    ensure_eq!(get_msr(g.vcpu(), MSR_PAT)?, pat0, "PAT re-read");
    ensure_eq!(get_msr(g.vcpu(), MSR_STAR)?, 0u64, "STAR re-read");
    Ok(())
}

fn msrs_guest_rdmsr(host: &Host) -> Outcome {
    let list = [
        MSR_STAR,
        MSR_LSTAR,
        MSR_SYSENTER_EIP,
        MSR_PAT,
        MSR_KERNEL_GS_BASE,
    ];
    let mut g = Guest::long64(host, 0, |a| {
        for (i, &m) in list.iter().enumerate() {
            a.mov(ecx, m)?;
            a.rdmsr()?;
            a.mov(dword_ptr(OUT + 8 * i as u64), eax)?;
            a.mov(dword_ptr(OUT + 8 * i as u64 + 4), edx)?;
        }
        a.hlt()
    })?;
    set_msrs_all(g.vcpu(), &MSR_VALUES)?;
    g.run_to_hlt()?;
    for (i, &m) in list.iter().enumerate() {
        let want = MSR_VALUES.iter().find(|v| v.0 == m).expect("listed").1;
        ensure_eq!(
            g.read_u64(OUT + 8 * i as u64)?,
            want,
            "edx:eax from guest RDMSR {m:#x}"
        );
    }
    Ok(())
}

fn msrs_guest_wrmsr(host: &Host) -> Outcome {
    let mut g = Guest::long64(host, 0, |a| {
        for &(m, v) in &MSR_VALUES {
            a.mov(ecx, m)?;
            a.mov(eax, v as u32)?;
            a.mov(edx, (v >> 32) as u32)?;
            a.wrmsr()?;
        }
        a.hlt()
    })?;
    g.run_to_hlt()?;
    for (m, want) in MSR_VALUES {
        ensure_eq!(
            get_msr(g.vcpu(), m)?,
            want,
            "KVM_GET_MSRS({m:#x}) after the guest's WRMSR"
        );
    }
    Ok(())
}

fn msrs_guest_rdmsr_unknown_gp(host: &Host) -> Outcome {
    let mut c = case(
        "rdmsr_unknown",
        Mode::Long64,
        program(Mode::Long64, |a| {
            a.mov(ecx, MSR_UNKNOWN)?;
            a.rdmsr()?;
            a.hlt()
        })?,
    );
    c.stubs = true;
    let mut g = Guest::boot(host, &c)?;
    g.run_to_hlt()?;
    ensure_eq!(
        g.stub_vector()?,
        Some(13),
        "stub the guest halted in after RDMSR of unknown MSR {MSR_UNKNOWN:#x} (#GP = 13)"
    );
    Ok(())
}

const TSC_SET: u64 = 1 << 40;
/// Generous: 100 s of a 5 GHz TSC.
const TSC_SLACK: u64 = 500_000_000_000;

fn msrs_tsc_round_trip(host: &Host) -> Outcome {
    let g = hlt_guest(host, Mode::Long64)?;
    set_msrs_all(g.vcpu(), &[(MSR_TSC, TSC_SET)])?;
    let t = get_msr(g.vcpu(), MSR_TSC)?;
    ensure!(
        (TSC_SET..TSC_SET + TSC_SLACK).contains(&t),
        "IA32_TSC read after setting IA32_TSC to {TSC_SET:#x}: wanted a value in [{TSC_SET:#x}, +{TSC_SLACK:#x}), got {t:#x}"
    );
    Ok(())
}

fn rdtsc_matches_msr(host: &Host, cpl: u8) -> Outcome {
    let mut g = Guest::long64(host, cpl, |a| {
        a.rdtsc()?;
        a.mov(dword_ptr(OUT), eax)?;
        a.mov(dword_ptr(OUT + 4), edx)?;
        a.hlt()
    })?;
    set_msrs_all(g.vcpu(), &[(MSR_TSC, TSC_SET)])?;
    g.run_to_hlt()?;
    let guest = g.read_u64(OUT)?;
    let after = get_msr(g.vcpu(), MSR_TSC)?;
    ensure!(
        (TSC_SET..TSC_SET + TSC_SLACK).contains(&guest),
        "cpl{cpl} RDTSC after setting IA32_TSC to {TSC_SET:#x}: wanted a value in [{TSC_SET:#x}, +{TSC_SLACK:#x}), got {guest:#x}"
    );
    ensure!(
        guest <= after,
        "cpl{cpl} RDTSC {guest:#x} is past IA32_TSC read after the exit ({after:#x})"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// DEBUGREGS

fn debugregs_want() -> kvmconf_harness::abi::kvm_debugregs {
    kvmconf_harness::abi::kvm_debugregs {
        db: [0x1000, 0x2008, 0x3010, 0xffff_8000_0000_4018],
        dr6: 0xffff_0ff1,
        dr7: 0x0000_0401,
        ..Default::default()
    }
}

fn debugregs_round_trip(host: &Host) -> Outcome {
    let g = hlt_guest(host, Mode::Long64)?;
    let want = debugregs_want();
    g.vcpu()
        .try_set_debugregs(&want)
        .map_err(ioctl("KVM_SET_DEBUGREGS"))?;
    let got = g
        .vcpu()
        .try_get_debugregs()
        .map_err(ioctl("KVM_GET_DEBUGREGS"))?;
    ensure_eq!(got.db, want.db, "db[0..4]");
    ensure_eq!(got.dr6, want.dr6, "dr6");
    ensure_eq!(got.dr7, want.dr7, "dr7");
    Ok(())
}

fn debugregs_rejected(
    host: &Host,
    what: &str,
    mutate: impl Fn(&mut kvmconf_harness::abi::kvm_debugregs),
) -> Outcome {
    let g = hlt_guest(host, Mode::Long64)?;
    let before = g
        .vcpu()
        .try_get_debugregs()
        .map_err(ioctl("KVM_GET_DEBUGREGS"))?;
    let mut bad = debugregs_want();
    mutate(&mut bad);
    einval_or_fail(
        &format!("KVM_SET_DEBUGREGS with {what}"),
        g.vcpu().try_set_debugregs(&bad).map_err(|e| e.errno()),
    )?;
    let after = g
        .vcpu()
        .try_get_debugregs()
        .map_err(ioctl("KVM_GET_DEBUGREGS"))?;
    ensure_eq!(
        (after.db, after.dr6, after.dr7),
        (before.db, before.dr6, before.dr7),
        "debug registers (db, dr6, dr7) re-read after the rejected KVM_SET_DEBUGREGS ({what})"
    );
    Ok(())
}

fn debugregs_guest_reads(host: &Host) -> Outcome {
    let mut g = Guest::long64(host, 0, |a| {
        a.mov(rax, dr0)?;
        a.mov(qword_ptr(OUT), rax)?;
        a.mov(rax, dr3)?;
        a.mov(qword_ptr(OUT + 8), rax)?;
        a.mov(rax, dr7)?;
        a.mov(qword_ptr(OUT + 16), rax)?;
        a.hlt()
    })?;
    // Breakpoints defined but not enabled: dr7 = 0x400 (bit 10 is fixed 1).
    let mut want = debugregs_want();
    want.dr7 = 0x400;
    g.vcpu()
        .try_set_debugregs(&want)
        .map_err(ioctl("KVM_SET_DEBUGREGS"))?;
    g.run_to_hlt()?;
    ensure_eq!(g.read_u64(OUT)?, want.db[0], "guest MOV from DR0");
    ensure_eq!(g.read_u64(OUT + 8)?, want.db[3], "guest MOV from DR3");
    ensure_eq!(g.read_u64(OUT + 16)?, want.dr7, "guest MOV from DR7");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// VCPU_EVENTS

fn events(v: &Vcpu) -> Result<kvmconf_harness::abi::kvm_vcpu_events, Fail> {
    v.try_get_vcpu_events()
        .map_err(ioctl("KVM_GET_VCPU_EVENTS"))
}

fn events_nmi_masked_round_trip(host: &Host) -> Outcome {
    require_cap(
        host,
        kvmconf_harness::abi::KVM_CAP_VCPU_EVENTS,
        "VCPU_EVENTS",
    )?;
    let g = hlt_guest(host, Mode::Long64)?;
    let mut e = events(g.vcpu())?;
    ensure_eq!(e.nmi.masked, 0u8, "nmi.masked of a new vCPU");
    e.nmi.masked = 1;
    e.flags = 0;
    g.vcpu()
        .try_set_vcpu_events(&e)
        .map_err(ioctl("KVM_SET_VCPU_EVENTS"))?;
    ensure_eq!(
        events(g.vcpu())?.nmi.masked,
        1u8,
        "nmi.masked after setting it"
    );
    Ok(())
}

fn events_shadow_round_trip(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_INTR_SHADOW, "INTR_SHADOW")?;
    let g = hlt_guest(host, Mode::Long64)?;
    let mut e = events(g.vcpu())?;
    e.flags = KVM_VCPUEVENT_VALID_SHADOW;
    e.interrupt.shadow = 1; // KVM_X86_SHADOW_INT_MOV_SS
    g.vcpu()
        .try_set_vcpu_events(&e)
        .map_err(ioctl("KVM_SET_VCPU_EVENTS"))?;
    let got = events(g.vcpu())?;
    ensure!(
        got.flags & KVM_VCPUEVENT_VALID_SHADOW != 0,
        "KVM_GET_VCPU_EVENTS flags {:#x}: wanted KVM_VCPUEVENT_VALID_SHADOW",
        got.flags
    );
    ensure_eq!(
        got.interrupt.shadow,
        1u8,
        "interrupt.shadow after setting MOV SS shadow"
    );
    Ok(())
}

fn events_bad_flags(host: &Host) -> Outcome {
    require_cap(
        host,
        kvmconf_harness::abi::KVM_CAP_VCPU_EVENTS,
        "VCPU_EVENTS",
    )?;
    let g = hlt_guest(host, Mode::Long64)?;
    let before = events(g.vcpu())?;
    let mut bad = before;
    bad.flags = 1 << 31;
    bad.nmi.masked = 1;
    einval_or_fail(
        "KVM_SET_VCPU_EVENTS with flags bit 31 (undefined)",
        g.vcpu().try_set_vcpu_events(&bad).map_err(|e| e.errno()),
    )?;
    ensure_eq!(
        events(g.vcpu())?,
        before,
        "vCPU events re-read after the rejected KVM_SET_VCPU_EVENTS"
    );
    Ok(())
}

fn events_smm_flag(host: &Host) -> Outcome {
    require_cap(
        host,
        kvmconf_harness::abi::KVM_CAP_VCPU_EVENTS,
        "VCPU_EVENTS",
    )?;
    let g = hlt_guest(host, Mode::Long64)?;
    let before = events(g.vcpu())?;
    let mut e = before;
    e.flags = KVM_VCPUEVENT_VALID_SMM;
    e.smi.smm = 1;
    let r = g.vcpu().try_set_vcpu_events(&e).map_err(|e| e.errno());
    if host.check_raw(KVM_CAP_X86_SMM) > 0 {
        ensure!(
            r.is_ok(),
            "KVM_SET_VCPU_EVENTS with KVM_VCPUEVENT_VALID_SMM, smi.smm = 1 and KVM_CAP_X86_SMM present: wanted success, got errno {r:?}"
        );
        ensure_eq!(events(g.vcpu())?.smi.smm, 1u8, "smi.smm after entering SMM");
        return Ok(());
    }
    einval_or_fail(
        "KVM_SET_VCPU_EVENTS with KVM_VCPUEVENT_VALID_SMM and smi.smm = 1 while KVM_CAP_X86_SMM is absent",
        r,
    )?;
    ensure_eq!(
        events(g.vcpu())?,
        before,
        "vCPU events re-read after the rejected KVM_SET_VCPU_EVENTS"
    );
    Ok(())
}

/// A long64 CPL0 guest with the harness's exception stubs: `nop; nop; hlt`.
fn stub_guest(host: &Host) -> Result<Guest, Fail> {
    let mut c = case(
        "stubs",
        Mode::Long64,
        program(Mode::Long64, |a| {
            a.nop()?;
            a.nop()?;
            a.hlt()
        })?,
    );
    c.stubs = true;
    Guest::boot(host, &c)
}

/// After a HLT in a harness stub: (vector, error code if `with_error`, interrupted rip).
fn stub_frame(g: &Guest, with_error: bool) -> Result<(Option<u8>, Option<u64>, u64), Fail> {
    let v = g.stub_vector()?;
    let top = g.regs()?.rsp;
    let (err, rip) = if with_error {
        (Some(g.read_u64(top)?), g.read_u64(top + 8)?)
    } else {
        (None, g.read_u64(top)?)
    };
    Ok((v, err, rip))
}

fn events_exception_delivered(host: &Host) -> Outcome {
    require_cap(
        host,
        kvmconf_harness::abi::KVM_CAP_VCPU_EVENTS,
        "VCPU_EVENTS",
    )?;
    let mut g = stub_guest(host)?;
    let mut e = events(g.vcpu())?;
    e.flags = 0;
    e.exception.injected = 1;
    e.exception.nr = 6;
    g.vcpu()
        .try_set_vcpu_events(&e)
        .map_err(ioctl("KVM_SET_VCPU_EVENTS"))?;
    g.run_to_hlt()?;
    let (v, _, rip) = stub_frame(&g, false)?;
    ensure_eq!(v, Some(6u8), "stub reached after injecting #UD (vector 6)");
    ensure_eq!(rip, CODE, "rip in the #UD frame (the first instruction)");
    Ok(())
}

fn events_exception_error_code_delivered(host: &Host) -> Outcome {
    require_cap(
        host,
        kvmconf_harness::abi::KVM_CAP_VCPU_EVENTS,
        "VCPU_EVENTS",
    )?;
    let mut g = stub_guest(host)?;
    let mut e = events(g.vcpu())?;
    e.flags = 0;
    e.exception.injected = 1;
    e.exception.nr = 13;
    e.exception.has_error_code = 1;
    e.exception.error_code = 0x1238;
    g.vcpu()
        .try_set_vcpu_events(&e)
        .map_err(ioctl("KVM_SET_VCPU_EVENTS"))?;
    g.run_to_hlt()?;
    let (v, err, rip) = stub_frame(&g, true)?;
    ensure_eq!(
        v,
        Some(13u8),
        "stub reached after injecting #GP (vector 13)"
    );
    ensure_eq!(err, Some(0x1238u64), "error code in the #GP frame");
    ensure_eq!(rip, CODE, "rip in the #GP frame");
    Ok(())
}

fn events_nmi_pending_delivered(host: &Host) -> Outcome {
    require_cap(
        host,
        kvmconf_harness::abi::KVM_CAP_VCPU_EVENTS,
        "VCPU_EVENTS",
    )?;
    let mut g = stub_guest(host)?;
    let mut e = events(g.vcpu())?;
    e.flags = KVM_VCPUEVENT_VALID_NMI_PENDING;
    e.nmi.pending = 1;
    g.vcpu()
        .try_set_vcpu_events(&e)
        .map_err(ioctl("KVM_SET_VCPU_EVENTS"))?;
    g.run_to_hlt()?;
    let (v, _, rip) = stub_frame(&g, false)?;
    ensure_eq!(
        v,
        Some(2u8),
        "stub reached with nmi.pending = 1 (NMI = vector 2)"
    );
    ensure_eq!(rip, CODE, "rip in the NMI frame");
    ensure_eq!(
        events(g.vcpu())?.nmi.masked,
        1u8,
        "nmi.masked inside the NMI handler"
    );
    Ok(())
}

fn events_nmi_masked_holds_pending(host: &Host) -> Outcome {
    require_cap(
        host,
        kvmconf_harness::abi::KVM_CAP_VCPU_EVENTS,
        "VCPU_EVENTS",
    )?;
    let mut g = stub_guest(host)?;
    let mut e = events(g.vcpu())?;
    e.flags = KVM_VCPUEVENT_VALID_NMI_PENDING;
    e.nmi.pending = 1;
    e.nmi.masked = 1;
    g.vcpu()
        .try_set_vcpu_events(&e)
        .map_err(ioctl("KVM_SET_VCPU_EVENTS"))?;
    g.run_to_hlt()?;
    let v = g.stub_vector()?;
    ensure_eq!(v, None, "stub the guest halted in while NMIs are masked");
    ensure_eq!(g.regs()?.rip, CODE + 3, "rip after the guest's own hlt");
    let after = events(g.vcpu())?;
    ensure_eq!(after.nmi.pending, 1u8, "nmi.pending while masked");
    Ok(())
}

fn events_interrupt_delivered(host: &Host) -> Outcome {
    require_cap(
        host,
        kvmconf_harness::abi::KVM_CAP_VCPU_EVENTS,
        "VCPU_EVENTS",
    )?;
    let mut g = Guest::long64(host, 0, |a| {
        a.nop()?;
        a.hlt()
    })?;
    g.install_idt()?;
    let mut e = events(g.vcpu())?;
    e.flags = 0;
    e.interrupt.injected = 1;
    e.interrupt.nr = 0x41;
    e.interrupt.soft = 0;
    g.vcpu()
        .try_set_vcpu_events(&e)
        .map_err(ioctl("KVM_SET_VCPU_EVENTS"))?;
    g.run_to_hlt()?;
    let (v, rip, _) = g.handled()?;
    ensure_eq!(v, 0x41u8, "vector of the handler reached");
    ensure_eq!(rip, CODE, "rip in the interrupt frame");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// MP_STATE and LAPIC (in-kernel irqchip)

/// A VM with KVM_CREATE_IRQCHIP and one vCPU `id` (no memory: state ioctls only).
fn irqchip_vcpu(host: &Host, id: u64) -> Result<(kvmconf_harness::Vm, Vcpu), Fail> {
    require_cap(host, KVM_CAP_IRQCHIP, "IRQCHIP")?;
    let vm = host.try_create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
    vm.try_create_irqchip()
        .map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
    let v = vm.try_create_vcpu(id).map_err(ioctl("KVM_CREATE_VCPU"))?;
    v.try_set_cpuid2(host.supported_cpuid())
        .map_err(ioctl("KVM_SET_CPUID2"))?;
    Ok((vm, v))
}

fn mp_state(v: &Vcpu) -> Result<u32, Fail> {
    Ok(v.try_get_mp_state()
        .map_err(ioctl("KVM_GET_MP_STATE"))?
        .mp_state)
}

fn mp_state_fresh_runnable(host: &Host) -> Outcome {
    require_cap(host, kvmconf_harness::abi::KVM_CAP_MP_STATE, "MP_STATE")?;
    let vm = fresh_vm(host)?;
    ensure_eq!(
        mp_state(&vm.vcpu)?,
        KVM_MP_STATE_RUNNABLE,
        "mp_state of vCPU 0 (the BSP)"
    );
    Ok(())
}

fn mp_state_halted_round_trip(host: &Host) -> Outcome {
    require_cap(host, kvmconf_harness::abi::KVM_CAP_MP_STATE, "MP_STATE")?;
    let (_vm, v) = irqchip_vcpu(host, 0)?;
    v.try_set_mp_state(kvm_mp_state {
        mp_state: KVM_MP_STATE_HALTED,
    })
    .map_err(ioctl("KVM_SET_MP_STATE"))?;
    ensure_eq!(
        mp_state(&v)?,
        KVM_MP_STATE_HALTED,
        "mp_state after setting HALTED"
    );
    v.try_set_mp_state(kvm_mp_state {
        mp_state: KVM_MP_STATE_RUNNABLE,
    })
    .map_err(ioctl("KVM_SET_MP_STATE"))?;
    ensure_eq!(
        mp_state(&v)?,
        KVM_MP_STATE_RUNNABLE,
        "mp_state after setting RUNNABLE"
    );
    Ok(())
}

fn mp_state_invalid(host: &Host) -> Outcome {
    require_cap(host, kvmconf_harness::abi::KVM_CAP_MP_STATE, "MP_STATE")?;
    let (_vm, v) = irqchip_vcpu(host, 0)?;
    let before = mp_state(&v)?;
    einval_or_fail(
        "KVM_SET_MP_STATE with mp_state = 0x42 (no such state)",
        v.try_set_mp_state(kvm_mp_state { mp_state: 0x42 })
            .map_err(|e| e.errno()),
    )?;
    ensure_eq!(
        mp_state(&v)?,
        before,
        "mp_state re-read after the rejected KVM_SET_MP_STATE"
    );
    Ok(())
}

fn lapic_u32(l: &kvm_lapic_state, off: usize) -> u32 {
    u32::from_le_bytes(std::array::from_fn(|i| l.regs[off + i] as u8))
}

fn lapic_set_u32(l: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().into_iter().enumerate() {
        l.regs[off + i] = b as _;
    }
}

fn lapic_id_and_version(host: &Host) -> Outcome {
    let (_vm, v) = irqchip_vcpu(host, 5)?;
    let l = v.try_get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?;
    ensure_eq!(
        lapic_u32(&l, 0x20) >> 24,
        5u32,
        "APIC ID register (offset 0x20) bits 31:24 of vCPU 5 (xAPIC format)"
    );
    let ver = lapic_u32(&l, 0x30);
    ensure!(
        ver & 0xf0 == 0x10 && (ver >> 16) & 0xff >= 3,
        "APIC version register (offset 0x30) {ver:#x}: wanted an integrated APIC (version 0x1X) with at least 4 LVT entries"
    );
    Ok(())
}

fn lapic_round_trip(host: &Host) -> Outcome {
    let (_vm, v) = irqchip_vcpu(host, 0)?;
    let mut l = v.try_get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?;
    let fields = [
        (0x80, 0x30u32, "TPR"),
        (0xf0, 0x1ff, "spurious vector (APIC enabled, vector 0xff)"),
        (0x320, 0x1_00ef, "LVT timer (masked, vector 0xef)"),
        (0x350, 0x700, "LVT LINT0 (ExtINT)"),
        (0x360, 0x400, "LVT LINT1 (NMI)"),
        (0x380, 0x1234_5678, "timer initial count"),
        (0x3e0, 0xb, "timer divide configuration (divide by 1)"),
    ];
    for &(off, val, _) in &fields {
        lapic_set_u32(&mut l, off, val);
    }
    v.try_set_lapic(&l).map_err(ioctl("KVM_SET_LAPIC"))?;
    let got = v.try_get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?;
    for (off, val, name) in fields {
        ensure_eq!(
            lapic_u32(&got, off),
            val,
            "LAPIC {name} (offset {off:#x}) after KVM_SET_LAPIC"
        );
    }
    Ok(())
}

fn apic_base_reset(host: &Host) -> Outcome {
    let (_vm, v) = irqchip_vcpu(host, 0)?;
    ensure_eq!(
        get_msr(&v, MSR_APIC_BASE)?,
        0xfee0_0900u64,
        "IA32_APIC_BASE of vCPU 0: base 0xfee00000, global enable (bit 11), BSP (bit 8)"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// CPUID2

/// Bits KVM keeps in step with other state (SDM 2 CPUID): leaf 1 ECX.OSXSAVE mirrors CR4.OSXSAVE,
/// leaf 1 EDX.APIC mirrors IA32_APIC_BASE.EN, leaf 7 ECX.OSPKE mirrors CR4.PKE, leaf 0xD EBX is
/// the XSAVE size for the current XCR0.
fn dynamic_mask(e: &kvm_cpuid_entry2) -> [u32; 4] {
    match (e.function, e.index) {
        (1, _) => [0, 0, 1 << 27, 1 << 9],
        (7, 0) => [0, 0, 1 << 4, 0],
        (0xd, 0 | 1) => [0, u32::MAX, 0, 0],
        _ => [0; 4],
    }
}

/// The supported CPUID with a custom vendor string and family/model, so values differ from the
/// host's.
fn custom_cpuid(host: &Host) -> Vec<kvm_cpuid_entry2> {
    let mut v: Vec<kvm_cpuid_entry2> = host.supported_cpuid().as_slice().to_vec();
    for e in &mut v {
        match e.function {
            0 => {
                // "KvmConfCheck" in EBX, EDX, ECX order.
                e.ebx = u32::from_le_bytes(*b"KvmC");
                e.edx = u32::from_le_bytes(*b"onfC");
                e.ecx = u32::from_le_bytes(*b"heck");
            }
            1 => {
                e.eax = 0x000a_0f12;
                e.ebx = (e.ebx & 0xff00_0000) | 0x0001_0a00;
            }
            0x8000_0002 => {
                e.eax = u32::from_le_bytes(*b"kvmc");
                e.ebx = u32::from_le_bytes(*b"onf ");
                e.ecx = u32::from_le_bytes(*b"test");
                e.edx = u32::from_le_bytes(*b" cpu");
            }
            _ => {}
        }
    }
    v
}

fn set_cpuid(v: &Vcpu, entries: &[kvm_cpuid_entry2]) -> Outcome {
    let c = CpuId::from_entries(entries)
        .map_err(|e| Fail::failed(format!("building kvm_cpuid2: {e:?}")))?;
    v.try_set_cpuid2(&c).map_err(ioctl("KVM_SET_CPUID2"))
}

fn cpuid_diffs(
    what: &str,
    want: &[kvm_cpuid_entry2],
    got: impl Fn(&kvm_cpuid_entry2) -> Option<[u32; 4]>,
    expect: impl Fn(&kvm_cpuid_entry2) -> ([u32; 4], [u32; 4]),
) -> Vec<String> {
    let mut d = Vec::new();
    for w in want {
        let Some(r) = got(w) else {
            d.push(format!(
                "{what} lacks leaf {:#x}.{:#x}",
                w.function, w.index
            ));
            continue;
        };
        let (e, m) = expect(w);
        for (k, name) in ["eax", "ebx", "ecx", "edx"].iter().enumerate() {
            if r[k] & !m[k] != e[k] & !m[k] {
                d.push(format!(
                    "{what} leaf {:#x}.{:#x} {name}: wanted {:#x}, got {:#x}{}",
                    w.function,
                    w.index,
                    e[k],
                    r[k],
                    if m[k] != 0 {
                        format!(" (bits {:#x} not compared)", m[k])
                    } else {
                        String::new()
                    }
                ));
            }
        }
    }
    d
}

fn report_diffs(d: Vec<String>) -> Outcome {
    ensure!(
        d.is_empty(),
        "{} difference(s):\n  {}",
        d.len(),
        d.iter().take(12).cloned().collect::<Vec<_>>().join("\n  ")
    );
    Ok(())
}

fn cpuid2_round_trip(host: &Host) -> Outcome {
    let g = hlt_guest(host, Mode::Long64)?;
    let want = custom_cpuid(host);
    set_cpuid(g.vcpu(), &want)?;
    let got = g
        .vcpu()
        .try_get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(ioctl("KVM_GET_CPUID2"))?;
    let got = got.as_slice();
    let mut d = cpuid_diffs(
        "KVM_GET_CPUID2",
        &want,
        |w| {
            got.iter()
                .find(|g| g.function == w.function && g.index == w.index)
                .map(|g| [g.eax, g.ebx, g.ecx, g.edx])
        },
        |w| ([w.eax, w.ebx, w.ecx, w.edx], dynamic_mask(w)),
    );
    if got.len() != want.len() {
        d.push(format!(
            "KVM_GET_CPUID2 entry count: wanted {}, got {}",
            want.len(),
            got.len()
        ));
    }
    report_diffs(d)
}

fn cpuid2_guest_sees(host: &Host, cpl: u8) -> Outcome {
    let want = custom_cpuid(host);
    let leaves: Vec<(u32, u32)> = want.iter().map(|e| (e.function, e.index)).collect();
    let mut g = Guest::long64(host, cpl, |a| {
        for (i, &(f, idx)) in leaves.iter().enumerate() {
            let at = OUT + 16 * i as u64;
            a.mov(eax, f)?;
            a.mov(ecx, idx)?;
            a.cpuid()?;
            a.mov(dword_ptr(at), eax)?;
            a.mov(dword_ptr(at + 4), ebx)?;
            a.mov(dword_ptr(at + 8), ecx)?;
            a.mov(dword_ptr(at + 12), edx)?;
        }
        a.hlt()
    })?;
    set_cpuid(g.vcpu(), &want)?;
    let apic_en = get_msr(g.vcpu(), MSR_APIC_BASE)? & (1 << 11) != 0;
    g.run_to_hlt()?;
    let out = g.read(OUT, 16 * want.len())?;
    let word = |i: usize, k: usize| {
        u32::from_le_bytes(
            out[16 * i + 4 * k..16 * i + 4 * k + 4]
                .try_into()
                .expect("4"),
        )
    };
    let d = cpuid_diffs(
        &format!("cpl{cpl} guest CPUID"),
        &want,
        |w| {
            let i = want
                .iter()
                .position(|e| e.function == w.function && e.index == w.index)?;
            Some(std::array::from_fn(|k| word(i, k)))
        },
        |w| {
            let mut e = [w.eax, w.ebx, w.ecx, w.edx];
            if w.function == 1 {
                // CR4.OSXSAVE is 0 in kvmconf's states; APIC mirrors IA32_APIC_BASE.EN.
                e[2] &= !(1 << 27);
                e[3] = (e[3] & !(1 << 9)) | (u32::from(apic_en) << 9);
                (e, [0; 4])
            } else {
                (e, dynamic_mask(w))
            }
        },
    );
    report_diffs(d)
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

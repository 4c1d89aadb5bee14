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

// ---------------------------------------------------------------------------------------------
// KVM_EXIT_IO

fn io_out_sizes(host: &Host) -> Outcome {
    for mode in [Mode::Real16, Mode::Prot32, Mode::Long64] {
        let mut g = guest(host, mode, |a| {
            a.mov(eax, 0x1122_3344u32)?;
            a.out(0x80, al)?;
            a.mov(dx, 0x3f8u32)?;
            a.out(dx, ax)?;
            a.out(dx, eax)?;
            a.hlt()
        })?;
        for (size, port, want) in [
            (1u8, 0x80u16, vec![0x44u8]),
            (2, 0x3f8, vec![0x44, 0x33]),
            (4, 0x3f8, vec![0x44, 0x33, 0x22, 0x11]),
        ] {
            let e = g.run()?;
            let (count, off) = io_exit(&e, false, size, port)?;
            ensure_eq!(count, 1u32, "{mode:?} OUT {size} bytes: count");
            ensure_eq!(
                hex(&g.io_data(size, count, off)?),
                hex(&want),
                "{mode:?} OUT {size} bytes: data at data_offset"
            );
        }
        g.run_to_hlt()?;
    }
    Ok(())
}

fn io_in_sizes(host: &Host) -> Outcome {
    let mut g = guest(host, Mode::Long64, |a| {
        a.mov(rax, 0x1122_3344_5566_7788u64)?;
        a.in_(al, 0x60)?;
        a.mov(rbx, rax)?;
        a.mov(dx, 0x64u32)?;
        a.in_(ax, dx)?;
        a.mov(rcx, rax)?;
        a.in_(eax, dx)?;
        a.hlt()
    })?;
    for (size, port, data) in [
        (1u8, 0x60u16, vec![0xabu8]),
        (2, 0x64, vec![0xef, 0xcd]),
        (4, 0x64, vec![0x67, 0x45, 0x23, 0x01]),
    ] {
        let e = g.run()?;
        let (count, off) = io_exit(&e, true, size, port)?;
        ensure_eq!(count, 1u32, "IN {size} bytes: count");
        g.set_io_data(off, &data)?;
    }
    g.run_to_hlt()?;
    let r = g.regs()?;
    ensure_eq!(
        r.rbx,
        0x1122_3344_5566_77abu64,
        "rbx = rax after IN al (upper 56 bits kept)"
    );
    ensure_eq!(
        r.rcx,
        0x1122_3344_5566_cdefu64,
        "rcx = rax after IN ax (upper 48 bits kept)"
    );
    ensure_eq!(
        r.rax,
        0x0123_4567u64,
        "rax after IN eax (zero-extended to 64 bits)"
    );
    Ok(())
}

/// Runs a string-I/O guest to HLT, serving each IO exit; returns (bytes out, exits).
fn serve_string_io(
    g: &mut Guest,
    input: bool,
    size: u8,
    port: u16,
    mut feed: Vec<u8>,
) -> Result<(Vec<u8>, u32), Fail> {
    let (mut out, mut total) = (Vec::new(), 0u32);
    for _ in 0..64 {
        let e = g.run()?;
        if e == KvmExit::Hlt {
            return Ok((out, total));
        }
        let (count, off) = io_exit(&e, input, size, port)?;
        total += count;
        let n = usize::from(size) * count as usize;
        if input {
            ensure!(
                feed.len() >= n,
                "the guest asked for {total} elements, more than the string's"
            );
            let chunk: Vec<u8> = feed.drain(..n).collect();
            g.set_io_data(off, &chunk)?;
        } else {
            out.extend(g.io_data(size, count, off)?);
        }
    }
    Err(Fail::failed(
        "string I/O did not reach the HLT within 64 exits",
    ))
}

fn io_rep_outsb(host: &Host) -> Outcome {
    let mut c = long64_case(|a| {
        a.mov(esi, BUF as u32)?;
        a.mov(ecx, 4u32)?;
        a.mov(dx, 0xe9u32)?;
        a.rep().outsb()?;
        a.hlt()
    })?;
    c.memory.push(mem(BUF, b"abcd".to_vec()));
    let mut g = Guest::boot(host, &c)?;
    let (out, total) = serve_string_io(&mut g, false, 1, 0xe9, vec![])?;
    ensure_eq!(
        total,
        4u32,
        "sum of KVM_EXIT_IO counts for rep outsb with rcx = 4"
    );
    ensure_eq!(
        String::from_utf8_lossy(&out),
        "abcd",
        "bytes written by rep outsb"
    );
    let r = g.regs()?;
    ensure_eq!(
        (r.rcx, r.rsi),
        (0u64, BUF + 4),
        "(rcx, rsi) after rep outsb"
    );
    Ok(())
}

fn io_rep_outsb_backwards(host: &Host) -> Outcome {
    let mut c = long64_case(|a| {
        a.std()?;
        a.mov(esi, BUF as u32 + 3)?;
        a.mov(ecx, 4u32)?;
        a.mov(dx, 0xe9u32)?;
        a.rep().outsb()?;
        a.cld()?;
        a.hlt()
    })?;
    c.memory.push(mem(BUF, b"abcd".to_vec()));
    let mut g = Guest::boot(host, &c)?;
    let (out, total) = serve_string_io(&mut g, false, 1, 0xe9, vec![])?;
    ensure_eq!(total, 4u32, "sum of KVM_EXIT_IO counts for std; rep outsb");
    ensure_eq!(
        String::from_utf8_lossy(&out),
        "dcba",
        "bytes written by rep outsb with DF = 1"
    );
    ensure_eq!(g.regs()?.rsi, BUF - 1, "rsi after rep outsb with DF = 1");
    Ok(())
}

fn io_rep_insw(host: &Host) -> Outcome {
    let mut g = guest(host, Mode::Long64, |a| {
        a.mov(edi, BUF as u32)?;
        a.mov(ecx, 3u32)?;
        a.mov(dx, 0x70u32)?;
        a.rep().insw()?;
        a.hlt()
    })?;
    let data = vec![0x11, 0x12, 0x21, 0x22, 0x31, 0x32];
    let (_, total) = serve_string_io(&mut g, true, 2, 0x70, data.clone())?;
    ensure_eq!(
        total,
        3u32,
        "sum of KVM_EXIT_IO counts for rep insw with rcx = 3"
    );
    ensure_eq!(
        hex(&g.read(BUF, 6)?),
        hex(&data),
        "memory written by rep insw"
    );
    let r = g.regs()?;
    ensure_eq!((r.rcx, r.rdi), (0u64, BUF + 6), "(rcx, rdi) after rep insw");
    Ok(())
}

fn immediate_exit_completes_in(host: &Host) -> Outcome {
    let mut g = guest(host, Mode::Long64, |a| {
        a.xor(eax, eax)?;
        a.in_(al, 0x61)?;
        a.out(0x80, al)?;
        a.hlt()
    })?;
    let e = g.run()?;
    let (_, off) = io_exit(&e, true, 1, 0x61)?;
    g.set_io_data(off, &[0x5a])?;
    g.vm.vcpu.set_immediate_exit(true);
    let r = g.vm.vcpu.run_once();
    g.vm.vcpu.set_immediate_exit(false);
    ensure_eq!(
        r,
        Err(libc::EINTR),
        "KVM_RUN with immediate_exit after an IN exit"
    );
    let regs = g.regs()?;
    ensure_eq!(
        regs.rax & 0xff,
        0x5au64,
        "al: the IN completed on the KVM_RUN that returned EINTR"
    );
    ensure_eq!(regs.rip, CODE + 4, "rip past the IN (and not past the OUT)");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// KVM_EXIT_MMIO

fn mmio_exit(e: &KvmExit, write: bool, len: u32) -> Result<(u64, [u8; 8]), Fail> {
    match *e {
        KvmExit::Mmio {
            addr,
            data,
            len: l,
            write: w,
        } if w == write && l == len => Ok((addr, data)),
        _ => Err(Fail::failed(format!(
            "exit: wanted MMIO {} {len} bytes, got {}",
            if write { "write" } else { "read" },
            describe(e)
        ))),
    }
}

fn mmio_write_sizes(host: &Host) -> Outcome {
    let c = with_mmio(long64_case(|a| {
        a.mov(rbx, MMIO)?;
        a.mov(byte_ptr(rbx), 0x11u32)?;
        a.mov(word_ptr(rbx + 2), 0x2233u32)?;
        a.mov(dword_ptr(rbx + 4), 0x4455_6677u32)?;
        a.mov(rax, 0x8899_aabb_ccdd_eeffu64)?;
        a.mov(qword_ptr(rbx + 8), rax)?;
        a.hlt()
    })?);
    let mut g = Guest::boot(host, &c)?;
    for (len, at, want) in [
        (1u32, 0u64, vec![0x11u8]),
        (2, 2, vec![0x33, 0x22]),
        (4, 4, vec![0x77, 0x66, 0x55, 0x44]),
        (8, 8, vec![0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa, 0x99, 0x88]),
    ] {
        let e = g.run()?;
        let (addr, data) = mmio_exit(&e, true, len)?;
        ensure_eq!(addr, MMIO + at, "MMIO write {len} bytes: phys_addr");
        ensure_eq!(
            hex(&data[..len as usize]),
            hex(&want),
            "MMIO write {len} bytes: data (little-endian)"
        );
    }
    g.run_to_hlt()
}

fn mmio_read_sizes(host: &Host) -> Outcome {
    let c = with_mmio(long64_case(|a| {
        a.mov(rax, u64::MAX)?;
        a.mov(rbx, rax)?;
        a.mov(rcx, rax)?;
        a.mov(rsi, MMIO)?;
        a.mov(al, byte_ptr(rsi))?;
        a.mov(bx, word_ptr(rsi + 2))?;
        a.mov(ecx, dword_ptr(rsi + 4))?;
        a.mov(rdx, qword_ptr(rsi + 8))?;
        a.movsx(edi, byte_ptr(rsi + 16))?;
        a.hlt()
    })?);
    let mut g = Guest::boot(host, &c)?;
    let feed: [(u32, u64, &[u8]); 5] = [
        (1, 0, &[0x5a]),
        (2, 2, &[0x34, 0x12]),
        (4, 4, &[0x78, 0x56, 0x34, 0x12]),
        (8, 8, &[8, 7, 6, 5, 4, 3, 2, 1]),
        (1, 16, &[0x80]),
    ];
    for (len, at, data) in feed {
        let e = g.run()?;
        let (addr, _) = mmio_exit(&e, false, len)?;
        ensure_eq!(addr, MMIO + at, "MMIO read {len} bytes: phys_addr");
        let area = g.vm.vcpu.run_area();
        area[off::UNION + 8..off::UNION + 8 + data.len()].copy_from_slice(data);
    }
    g.run_to_hlt()?;
    let r = g.regs()?;
    ensure_eq!(
        r.rax,
        0xffff_ffff_ffff_ff5au64,
        "rax after mov al, [mmio] (upper bits kept)"
    );
    ensure_eq!(r.rbx, 0xffff_ffff_ffff_1234u64, "rbx after mov bx, [mmio]");
    ensure_eq!(
        r.rcx,
        0x1234_5678u64,
        "rcx after mov ecx, [mmio] (zero-extended)"
    );
    ensure_eq!(r.rdx, 0x0102_0304_0506_0708u64, "rdx after mov rdx, [mmio]");
    ensure_eq!(
        r.rdi,
        0xffff_ff80u64,
        "rdi after movsx edi, byte [mmio] = 0x80"
    );
    Ok(())
}

fn mmio_fetch_internal_error(host: &Host) -> Outcome {
    let c = with_mmio(long64_case(|a| {
        a.mov(rax, MMIO)?;
        a.jmp(rax)
    })?);
    let mut g = Guest::boot(host, &c)?;
    let e = g.run()?;
    match e {
        KvmExit::InternalError { suberror, .. } => {
            ensure_eq!(
                suberror,
                1u32,
                "KVM_EXIT_INTERNAL_ERROR suberror (KVM_INTERNAL_ERROR_EMULATION = 1)"
            );
            Ok(())
        }
        other => Err(Fail::failed(format!(
            "exit after jumping into MMIO: wanted InternalError (emulation), got {}",
            describe(&other)
        ))),
    }
}

/// The hardware_entry_failure_reason KVM reports for a VM entry the CPU refused, by vendor module:
/// VMX's basic exit reason 33 ("VM-entry failure due to invalid guest state", SDM 3C 28.8 and
/// appendix C) with bit 31 set, or SVM's VMEXIT_INVALID (-1, APM 2 15.5.1). None for a module
/// without a hardware VM entry of its own.
fn entry_failure_reason(module: Option<&str>) -> Option<u64> {
    match module {
        Some("kvm_intel") => Some(0x8000_0021),
        Some("kvm_amd") => Some(u64::MAX),
        _ => None,
    }
}

/// A 64-bit code segment with D set as well as L: the SDM's VM-entry checks (3C 28.3.1.2, CS bit
/// 14: "if the guest will be in IA-32e mode and the L bit is 1, then the D bit must be 0") and
/// AMD's VMRUN consistency checks (APM 2 15.5.1) refuse it, while KVM_SET_SREGS only validates
/// CR0/CR4/EFER/CR3. The documented outcomes: KVM_SET_SREGS rejects the state (EINVAL, the vCPU
/// unchanged), or KVM_RUN ends in KVM_EXIT_FAIL_ENTRY with the vendor's
/// hardware_entry_failure_reason, or in KVM_EXIT_INTERNAL_ERROR (KVM_INTERNAL_ERROR_EMULATION)
/// when KVM emulates the invalid state and cannot; in every case no guest instruction runs.
fn fail_entry_cs_l_and_d(host: &Host) -> Outcome {
    const RAX: u64 = 0x1111;
    let mut g = guest(host, Mode::Long64, |a| {
        a.mov(rax, 0x2222u64)?;
        a.hlt()
    })?;
    let mut r = g.regs()?;
    r.rax = RAX;
    g.set_regs(&r)?;
    let before = g.sregs()?;
    let mut bad = before;
    bad.cs.l = 1;
    bad.cs.db = 1;
    if let Err(e) = g.vcpu().try_set_sregs(&bad) {
        crate::catalogue::system::expect_errno(
            Some(e.errno()),
            libc::EINVAL,
            "KVM_SET_SREGS with CS.L = CS.D = 1 in IA-32e mode",
        )?;
        let after = g.sregs()?;
        ensure!(
            after == before,
            "KVM_SET_SREGS rejected CS.L = CS.D = 1 but the vCPU changed: before {before:x?}, after {after:x?}"
        );
        return Ok(());
    }
    let e = g.run()?;
    let module = kvmconf_harness::fingerprint::vendor_module();
    match &e {
        KvmExit::FailEntry { reason, .. } => match entry_failure_reason(module.as_deref()) {
            Some(want) => ensure_eq!(
                *reason,
                want,
                "hardware_entry_failure_reason on {}",
                module.as_deref().unwrap_or("?")
            ),
            None => ensure!(
                *reason != 0,
                "hardware_entry_failure_reason: wanted a reason, got 0"
            ),
        },
        KvmExit::InternalError { suberror, .. } => ensure_eq!(
            *suberror,
            1u32,
            "KVM_EXIT_INTERNAL_ERROR suberror (KVM_INTERNAL_ERROR_EMULATION = 1) for the invalid state"
        ),
        other => {
            return Err(Fail::failed(format!(
                "exit with CS.L = CS.D = 1 in IA-32e mode (accepted by KVM_SET_SREGS): wanted \
                 FailEntry (hardware_entry_failure_reason {}) or InternalError, got {}",
                entry_failure_reason(module.as_deref())
                    .map_or("non-zero".to_string(), |r| format!("{r:#x}")),
                describe(other)
            )));
        }
    }
    let r = g.regs()?;
    ensure_eq!(
        r.rip,
        CODE,
        "rip after the failed entry (no instruction ran)"
    );
    ensure_eq!(
        r.rax,
        RAX,
        "rax after the failed entry (mov rax, 0x2222 did not run)"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// HLT, SHUTDOWN, kvm_run fields

fn hlt_every_mode(host: &Host) -> Outcome {
    for mode in [Mode::Real16, Mode::Prot32, Mode::Long64] {
        let mut g = guest(host, mode, |a| {
            a.nop()?;
            a.hlt()
        })?;
        let e = g.run()?;
        expect_exit(&e, &KvmExit::Hlt, &format!("{mode:?} exit"))?;
        ensure_eq!(
            g.regs()?.rip,
            CODE + 2,
            "{mode:?} rip after the HLT exit (past the HLT)"
        );
    }
    Ok(())
}

fn if_flag_reported(host: &Host) -> Outcome {
    for (rflags, want) in [(0x202u64, 1u8), (0x2, 0)] {
        let mut g = guest(host, Mode::Long64, |a| a.hlt())?;
        set_rflags(&g, rflags)?;
        g.run_to_hlt()?;
        let got = g.vm.vcpu.kvm_run().if_flag;
        ensure_eq!(
            got,
            want,
            "kvm_run.if_flag at the HLT exit with rflags {rflags:#x}"
        );
    }
    Ok(())
}

fn cr8_out(host: &Host) -> Outcome {
    let mut g = guest(host, Mode::Long64, |a| {
        a.mov(eax, 5u32)?;
        a.mov(cr8, rax)?;
        a.out(0x80, al)?;
        a.hlt()
    })?;
    let e = g.run()?;
    io_exit(&e, false, 1, 0x80)?;
    ensure_eq!(
        g.vm.vcpu.kvm_run().cr8,
        5u64,
        "kvm_run.cr8 after the guest's mov cr8, 5"
    );
    Ok(())
}

fn cr8_in(host: &Host) -> Outcome {
    let mut g = guest(host, Mode::Long64, |a| {
        a.mov(rax, cr8)?;
        a.hlt()
    })?;
    g.vm.vcpu.kvm_run().cr8 = 7;
    g.run_to_hlt()?;
    ensure_eq!(
        g.regs()?.rax,
        7u64,
        "rax from mov rax, cr8 after kvm_run.cr8 = 7"
    );
    Ok(())
}

fn apic_base_field(host: &Host) -> Outcome {
    let mut g = guest(host, Mode::Long64, |a| a.hlt())?;
    g.run_to_hlt()?;
    let mut m = kvmconf_harness::abi::Msrs::from_entries(&[kvmconf_harness::abi::kvm_msr_entry {
        index: MSR_APIC_BASE,
        ..Default::default()
    }])
    .expect("one entry");
    g.vcpu()
        .try_get_msrs(&mut m)
        .map_err(ioctl("KVM_GET_MSRS"))?;
    let msr = m.as_slice()[0].data;
    ensure_eq!(
        g.vm.vcpu.kvm_run().apic_base,
        msr,
        "kvm_run.apic_base vs KVM_GET_MSRS(IA32_APIC_BASE)"
    );
    Ok(())
}

fn shutdown_triple_fault(host: &Host) -> Outcome {
    for mode in [Mode::Prot32, Mode::Long64] {
        let mut g = guest(host, mode, |a| {
            a.ud2()?;
            a.hlt()
        })?;
        let e = g.run()?;
        expect_exit(
            &e,
            &KvmExit::Shutdown,
            &format!("{mode:?} exit after #UD with an empty IDT"),
        )?;
    }
    Ok(())
}

fn immediate_exit_eintr(host: &Host) -> Outcome {
    let mut g = guest(host, Mode::Long64, |a| {
        a.out(0x80, al)?;
        a.hlt()
    })?;
    g.vm.vcpu.set_immediate_exit(true);
    let r = g.vm.vcpu.run_once();
    g.vm.vcpu.set_immediate_exit(false);
    ensure_eq!(r, Err(libc::EINTR), "KVM_RUN with immediate_exit = 1");
    ensure_eq!(
        g.regs()?.rip,
        CODE,
        "rip after KVM_RUN returned EINTR (nothing ran)"
    );
    let e = g.run()?;
    io_exit(&e, false, 1, 0x80)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Signals

fn spin_guest(host: &Host) -> Result<Guest, Fail> {
    guest(host, Mode::Long64, |a| {
        let mut l = a.create_label();
        a.set_label(&mut l)?;
        a.jmp(l)
    })
}

fn signal_interrupts_spin(host: &Host) -> Outcome {
    let mut g = spin_guest(host)?;
    let start = Instant::now();
    let d = Deadline::arm(Duration::from_millis(30))
        .map_err(|e| Fail::failed(format!("watchdog: {e}")))?;
    let r = g.vm.vcpu.run_once();
    drop(d);
    let took = start.elapsed();
    watchdog::drain();
    ensure_eq!(
        r,
        Err(libc::EINTR),
        "KVM_RUN of `jmp $` when a signal unblocked by KVM_SET_SIGNAL_MASK arrives"
    );
    ensure!(
        took >= Duration::from_millis(25) && took < Duration::from_secs(1),
        "KVM_RUN returned EINTR after {took:?}: wanted about 30 ms, when the signal came"
    );
    ensure_eq!(g.regs()?.rip, CODE, "rip of the spinning jmp");
    Ok(())
}

/// Makes the watchdog signal pending (blocked in this thread) before KVM_RUN starts.
fn signal_pending() -> Result<Deadline, Fail> {
    let d = Deadline::arm(Duration::from_nanos(1))
        .map_err(|e| Fail::failed(format!("watchdog: {e}")))?;
    ensure!(
        watchdog::wait_pending(Duration::from_secs(1)),
        "the watchdog signal was not pending within 1 s of an expired deadline"
    );
    Ok(d)
}

fn signal_pending_eintr(host: &Host) -> Outcome {
    let mut g = guest(host, Mode::Long64, |a| {
        a.out(0x80, al)?;
        a.hlt()
    })?;
    let d = signal_pending()?;
    let r = g.vm.vcpu.run_once();
    drop(d);
    watchdog::drain();
    ensure_eq!(
        r,
        Err(libc::EINTR),
        "KVM_RUN with a signal pending that KVM_SET_SIGNAL_MASK unblocks"
    );
    ensure_eq!(
        g.regs()?.rip,
        CODE,
        "rip after the EINTR (the OUT did not run)"
    );
    Ok(())
}

fn signal_mask_blocks(host: &Host) -> Outcome {
    let mut g = guest(host, Mode::Long64, |a| {
        a.out(0x80, al)?;
        a.hlt()
    })?;
    g.vcpu()
        .try_set_signal_mask(&[watchdog::signal()], &[])
        .map_err(|e| e.errno())
        .map_err(|e| Fail::failed(format!("KVM_SET_SIGNAL_MASK failed: errno {e}")))?;
    let d = signal_pending()?;
    let r = g.vm.vcpu.run_once();
    drop(d);
    watchdog::drain();
    ensure!(
        matches!(r, Ok(KvmExit::Io { .. })),
        "KVM_RUN with a pending signal that KVM_SET_SIGNAL_MASK blocks: wanted the guest's OUT exit, got {r:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// KVM_SET_GUEST_DEBUG and KVM_EXIT_DEBUG

fn set_debug(g: &Guest, control: u32, debugreg: [u64; 8]) -> Outcome {
    let d = kvm_guest_debug {
        control,
        pad: 0,
        arch: kvmconf_harness::abi::kvm_guest_debug_arch { debugreg },
    };
    g.vcpu()
        .try_set_guest_debug(&d)
        .map_err(ioctl("KVM_SET_GUEST_DEBUG"))
}

fn single_step(host: &Host, mode: Mode) -> Outcome {
    require_cap(host, KVM_CAP_SET_GUEST_DEBUG, "SET_GUEST_DEBUG")?;
    let mut pcs = Vec::new();
    let code = program(mode, |a| {
        let mut target = a.create_label();
        a.nop()?;
        a.mov(eax, 1u32)?;
        a.add(eax, eax)?;
        a.jmp(target)?;
        a.nop()?;
        a.set_label(&mut target)?;
        a.nop()?;
        a.hlt()
    })?;
    // nop(1) mov eax,imm32(5) add eax,eax(2) jmp rel8(2) nop(1) | nop hlt; real16 adds a 66
    // operand-size prefix to the mov and the add.
    let p = u64::from(mode == Mode::Real16);
    let (mov, add) = (5 + p, 2 + p);
    let want = [
        CODE + 1,
        CODE + 1 + mov,
        CODE + 1 + mov + add,
        CODE + 4 + mov + add,
    ];
    let mut g = Guest::boot(host, &case("ss", mode, code))?;
    set_debug(&g, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP, [0; 8])?;
    for _ in 0..want.len() {
        match g.run()? {
            KvmExit::Debug {
                exception,
                pc,
                dr6: status,
                ..
            } => {
                ensure_eq!(exception, 1u32, "{mode:?} single-step exit exception (#DB)");
                ensure!(
                    status & DR6_BS != 0,
                    "{mode:?} single-step exit at pc {pc:#x}: dr6 {status:#x} lacks BS (bit 14)"
                );
                pcs.push(pc);
            }
            other => {
                return Err(Fail::failed(format!(
                    "{mode:?} single-step: wanted Debug, got {} after pcs {pcs:x?}",
                    describe(&other)
                )));
            }
        }
    }
    ensure_eq!(
        pcs,
        want.to_vec(),
        "{mode:?} pcs of the single-step exits (the jmp's is its target)"
    );
    set_debug(&g, 0, [0; 8])?;
    g.run_to_hlt()
}

fn sw_bp_exit(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_SET_GUEST_DEBUG, "SET_GUEST_DEBUG")?;
    let mut g = guest(host, Mode::Long64, |a| {
        a.nop()?;
        a.int3()?;
        a.hlt()
    })?;
    set_debug(&g, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP, [0; 8])?;
    match g.run()? {
        KvmExit::Debug { exception, pc, .. } => {
            ensure_eq!(
                exception,
                3u32,
                "exception of the KVM_EXIT_DEBUG for INT3 (#BP)"
            );
            ensure_eq!(pc, CODE + 1, "pc of the KVM_EXIT_DEBUG for INT3 (the INT3)");
            Ok(())
        }
        other => Err(Fail::failed(format!(
            "INT3 with KVM_GUESTDBG_USE_SW_BP: wanted Debug, got {}",
            describe(&other)
        ))),
    }
}

fn sw_bp_off_goes_to_guest(host: &Host) -> Outcome {
    let c = with_stubs(long64_case(|a| {
        a.nop()?;
        a.int3()?;
        a.hlt()
    })?);
    let mut g = Guest::boot(host, &c)?;
    g.run_to_hlt()?;
    ensure_eq!(
        g.stub_vector()?,
        Some(3u8),
        "stub reached by INT3 without guest debugging (#BP = 3)"
    );
    ensure_eq!(
        g.read_u64(g.regs()?.rsp)?,
        CODE + 2,
        "rip in the #BP frame (after the INT3, a trap)"
    );
    Ok(())
}

fn hw_bp_exec(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_GUEST_DEBUG_HW_BPS, "GUEST_DEBUG_HW_BPS")?;
    let mut g = guest(host, Mode::Long64, |a| {
        a.nop()?;
        a.nop()?;
        a.hlt()
    })?;
    let mut dr = [0u64; 8];
    dr[0] = CODE + 1;
    dr[7] = 0x1 | 0x400; // L0, execute, 1 byte
    set_debug(&g, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP, dr)?;
    match g.run()? {
        KvmExit::Debug {
            exception,
            pc,
            dr6: status,
            ..
        } => {
            ensure_eq!(exception, 1u32, "exception of the hardware-breakpoint exit");
            ensure_eq!(pc, CODE + 1, "pc of the execute breakpoint");
            ensure!(status & 1 != 0, "dr6 {status:#x} lacks B0");
            Ok(())
        }
        other => Err(Fail::failed(format!(
            "execute breakpoint on DR0: wanted Debug, got {}",
            describe(&other)
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// KVM_EXIT_X86_RDMSR / WRMSR and MSR filters

fn enable_user_msr(g: &Guest, mask: u32) -> Outcome {
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_X86_USER_SPACE_MSR,
        ..Default::default()
    };
    cap.args[0] = u64::from(mask);
    g.vm.try_enable_cap(&cap)
        .map_err(ioctl("KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR)"))
}

fn rdmsr_guest(host: &Host, index: u32) -> Result<Guest, Fail> {
    let c = with_stubs(long64_case(|a| {
        a.mov(ecx, index)?;
        a.rdmsr()?;
        a.hlt()
    })?);
    Guest::boot(host, &c)
}

fn msr_exit(e: &KvmExit, write: bool) -> Result<(u32, u32, u64), Fail> {
    match *e {
        KvmExit::Msr {
            write: w,
            reason,
            index,
            data,
        } if w == write => Ok((reason, index, data)),
        _ => Err(Fail::failed(format!(
            "exit: wanted {}, got {}",
            if write { "X86_WRMSR" } else { "X86_RDMSR" },
            describe(e)
        ))),
    }
}

fn answer_msr(g: &mut Guest, error: u8, data: u64) {
    let area = g.vm.vcpu.run_area();
    area[off::UNION] = error;
    area[off::UNION + 16..off::UNION + 24].copy_from_slice(&data.to_le_bytes());
}

fn user_msr_rdmsr(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_X86_USER_SPACE_MSR, "X86_USER_SPACE_MSR")?;
    let mut g = rdmsr_guest(host, MSR_UNKNOWN)?;
    enable_user_msr(&g, KVM_MSR_EXIT_REASON_UNKNOWN)?;
    let (reason, index, _) = msr_exit(&g.run()?, false)?;
    ensure_eq!(
        reason,
        KVM_MSR_EXIT_REASON_UNKNOWN,
        "msr.reason of the RDMSR exit"
    );
    ensure_eq!(index, MSR_UNKNOWN, "msr.index of the RDMSR exit");
    answer_msr(&mut g, 0, 0x1122_3344_5566_7788);
    g.run_to_hlt()?;
    ensure_eq!(
        g.stub_vector()?,
        None,
        "stub reached (none: the read succeeded)"
    );
    let r = g.regs()?;
    ensure_eq!(
        (r.rdx, r.rax),
        (0x1122_3344u64, 0x5566_7788u64),
        "(rdx, rax) after userspace answered the RDMSR"
    );
    Ok(())
}

fn user_msr_rdmsr_error_gp(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_X86_USER_SPACE_MSR, "X86_USER_SPACE_MSR")?;
    let mut g = rdmsr_guest(host, MSR_UNKNOWN)?;
    enable_user_msr(&g, KVM_MSR_EXIT_REASON_UNKNOWN)?;
    msr_exit(&g.run()?, false)?;
    answer_msr(&mut g, 1, 0);
    g.run_to_hlt()?;
    ensure_eq!(
        g.stub_vector()?,
        Some(13u8),
        "stub reached after userspace set msr.error = 1 (#GP = 13)"
    );
    Ok(())
}

fn user_msr_wrmsr(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_X86_USER_SPACE_MSR, "X86_USER_SPACE_MSR")?;
    let c = with_stubs(long64_case(|a| {
        a.mov(ecx, MSR_UNKNOWN)?;
        a.mov(eax, 0xaabb_ccddu32)?;
        a.mov(edx, 0x1020_3040u32)?;
        a.wrmsr()?;
        a.hlt()
    })?);
    let mut g = Guest::boot(host, &c)?;
    enable_user_msr(&g, KVM_MSR_EXIT_REASON_UNKNOWN)?;
    let (reason, index, data) = msr_exit(&g.run()?, true)?;
    ensure_eq!(
        reason,
        KVM_MSR_EXIT_REASON_UNKNOWN,
        "msr.reason of the WRMSR exit"
    );
    ensure_eq!(index, MSR_UNKNOWN, "msr.index of the WRMSR exit");
    ensure_eq!(
        data,
        0x1020_3040_aabb_ccddu64,
        "msr.data of the WRMSR exit (edx:eax)"
    );
    answer_msr(&mut g, 0, 0);
    g.run_to_hlt()?;
    ensure_eq!(
        g.stub_vector()?,
        None,
        "stub reached (none: the write succeeded)"
    );
    Ok(())
}

fn deny_star_read(g: &Guest) -> Outcome {
    let bitmap = [0u8];
    g.vm.try_set_msr_filter(
        MsrFilterDefaultAction::ALLOW,
        &[MsrFilterRange {
            flags: MsrFilterRangeFlags::READ,
            base: MSR_STAR,
            msr_count: 1,
            bitmap: &bitmap,
        }],
    )
    .map_err(ioctl("KVM_X86_SET_MSR_FILTER"))
}

fn msr_filter_exit(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_X86_MSR_FILTER, "X86_MSR_FILTER")?;
    require_cap(host, KVM_CAP_X86_USER_SPACE_MSR, "X86_USER_SPACE_MSR")?;
    let mut g = rdmsr_guest(host, MSR_STAR)?;
    enable_user_msr(&g, KVM_MSR_EXIT_REASON_FILTER)?;
    deny_star_read(&g)?;
    let (reason, index, _) = msr_exit(&g.run()?, false)?;
    ensure_eq!(
        reason,
        KVM_MSR_EXIT_REASON_FILTER,
        "msr.reason of the exit for a filtered RDMSR"
    );
    ensure_eq!(
        index,
        MSR_STAR,
        "msr.index of the exit for a filtered RDMSR"
    );
    Ok(())
}

fn msr_filter_gp(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_X86_MSR_FILTER, "X86_MSR_FILTER")?;
    let mut g = rdmsr_guest(host, MSR_STAR)?;
    deny_star_read(&g)?;
    g.run_to_hlt()?;
    ensure_eq!(
        g.stub_vector()?,
        Some(13u8),
        "stub reached by RDMSR of a filtered MSR (#GP = 13)"
    );
    Ok(())
}

fn msr_filter_allows_others(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_X86_MSR_FILTER, "X86_MSR_FILTER")?;
    let mut g = rdmsr_guest(host, MSR_LSTAR)?;
    let m = kvmconf_harness::abi::Msrs::from_entries(&[kvmconf_harness::abi::kvm_msr_entry {
        index: MSR_LSTAR,
        data: 0xffff_8000_0000_1230,
        ..Default::default()
    }])
    .expect("one entry");
    g.vcpu().try_set_msrs(&m).map_err(ioctl("KVM_SET_MSRS"))?;
    deny_star_read(&g)?;
    g.run_to_hlt()?;
    ensure_eq!(
        g.stub_vector()?,
        None,
        "stub reached by RDMSR of LSTAR, outside the filter's denied bit"
    );
    let r = g.regs()?;
    ensure_eq!(
        (r.rdx << 32) | (r.rax & 0xffff_ffff),
        0xffff_8000_0000_1230u64,
        "edx:eax from RDMSR LSTAR"
    );
    Ok(())
}

fn msr_filter_default_deny_empty(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_X86_MSR_FILTER, "X86_MSR_FILTER")?;
    let vm = host.try_create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
    match vm.try_set_msr_filter(MsrFilterDefaultAction::DENY, &[]) {
        Ok(()) => Err(Fail::failed(
            "KVM_X86_SET_MSR_FILTER with KVM_MSR_FILTER_DEFAULT_DENY and no ranges: wanted an error, got success",
        )),
        Err(e) => {
            ensure_eq!(
                e.errno(),
                libc::EINVAL,
                "errno of KVM_X86_SET_MSR_FILTER(DEFAULT_DENY, no ranges)"
            );
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// KVM_INTERRUPT, KVM_NMI, request_interrupt_window

fn interrupt(g: &Guest, irq: u32) -> Outcome {
    g.vcpu()
        .try_interrupt(irq)
        .map_err(|e| e.errno())
        .map_err(|e| {
            Fail::failed(format!(
                "KVM_INTERRUPT({irq:#x}) failed: {} (errno {e})",
                std::io::Error::from_raw_os_error(e)
            ))
        })
}

/// `mov ebx, 1; sti; mov ebx, 2; mov ebx, 3; hlt` with IF = 0 and the hand-written IDT.
/// Returns the guest and the address of `mov ebx, 3` (the first instruction after the STI shadow).
fn sti_guest(host: &Host) -> Result<(Guest, u64), Fail> {
    let g = guest(host, Mode::Long64, |a| {
        a.mov(ebx, 1u32)?;
        a.sti()?;
        a.mov(ebx, 2u32)?;
        a.mov(ebx, 3u32)?;
        a.hlt()
    })?;
    g.install_idt()?;
    set_rflags(&g, 0x2)?;
    Ok((g, CODE + 5 + 1 + 5))
}

fn kvm_interrupt_delivered(host: &Host) -> Outcome {
    let mut g = guest(host, Mode::Long64, |a| {
        a.nop()?;
        a.hlt()
    })?;
    g.install_idt()?;
    set_rflags(&g, 0x202)?;
    interrupt(&g, 0x40)?;
    g.run_to_hlt()?;
    let (v, rip, rflags) = g.handled()?;
    ensure_eq!(
        v,
        0x40u8,
        "vector of the handler reached after KVM_INTERRUPT(0x40)"
    );
    ensure_eq!(rip, CODE, "rip in the interrupt frame");
    ensure!(
        rflags & 0x200 != 0,
        "rflags {rflags:#x} in the frame lacks IF"
    );
    Ok(())
}

fn kvm_interrupt_invalid_einval(host: &Host) -> Outcome {
    let g = guest(host, Mode::Long64, |a| a.hlt())?;
    ensure_eq!(
        g.vcpu().try_interrupt(256).map_err(|e| e.errno()),
        Err(libc::EINVAL),
        "KVM_INTERRUPT(256), not a vector (EINVAL = {})",
        libc::EINVAL
    );
    Ok(())
}

fn kvm_interrupt_irqchip_enxio(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_IRQCHIP, "IRQCHIP")?;
    let vm = host.try_create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
    vm.try_create_irqchip()
        .map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
    let v = vm.try_create_vcpu(0).map_err(ioctl("KVM_CREATE_VCPU"))?;
    ensure_eq!(
        v.try_interrupt(0x40).map_err(|e| e.errno()),
        Err(libc::ENXIO),
        "KVM_INTERRUPT with the PIC in the kernel (ENXIO = {})",
        libc::ENXIO
    );
    Ok(())
}

fn irq_window_immediate_once(host: &Host) -> Outcome {
    let mut g = guest(host, Mode::Long64, |a| {
        a.mov(ebx, 1u32)?;
        a.hlt()
    })?;
    set_rflags(&g, 0x202)?;
    g.vm.vcpu.kvm_run().request_interrupt_window = 1;
    let e = g.run()?;
    g.vm.vcpu.kvm_run().request_interrupt_window = 0;
    expect_exit(
        &e,
        &KvmExit::IrqWindowOpen,
        "exit with request_interrupt_window and IF = 1",
    )?;
    let run = g.vm.vcpu.kvm_run();
    ensure_eq!(
        run.ready_for_interrupt_injection,
        1u8,
        "kvm_run.ready_for_interrupt_injection"
    );
    ensure_eq!(run.if_flag, 1u8, "kvm_run.if_flag");
    Ok(())
}

fn irq_window_after_sti_shadow_once(host: &Host) -> Outcome {
    let (mut g, after_shadow) = sti_guest(host)?;
    g.vm.vcpu.kvm_run().request_interrupt_window = 1;
    let e = g.run()?;
    g.vm.vcpu.kvm_run().request_interrupt_window = 0;
    expect_exit(
        &e,
        &KvmExit::IrqWindowOpen,
        "exit with request_interrupt_window while IF = 0, then sti",
    )?;
    let r = g.regs()?;
    ensure_eq!(
        r.rip,
        after_shadow,
        "rip at KVM_EXIT_IRQ_WINDOW_OPEN: right after the STI shadow"
    );
    ensure_eq!(r.rbx, 2u64, "rbx: the instruction in the STI shadow ran");
    ensure_eq!(
        g.vm.vcpu.kvm_run().ready_for_interrupt_injection,
        1u8,
        "ready_for_interrupt_injection"
    );
    interrupt(&g, 0x43)?;
    g.run_to_hlt()?;
    let (v, rip, _) = g.handled()?;
    ensure_eq!(
        (v, rip),
        (0x43u8, after_shadow),
        "(vector, frame rip) of the interrupt injected at the window"
    );
    Ok(())
}

/// Fresh guests per check: the documented exit must come every time (on kvm_pvm it comes only
/// sometimes, depending on when the host interrupts the vCPU).
const WINDOW_ATTEMPTS: u32 = 100;

/// Runs `once` on [`WINDOW_ATTEMPTS`] fresh guests; the first failure fails the check.
fn every_attempt(host: &Host, once: fn(&Host) -> Outcome) -> Outcome {
    for k in 1..=WINDOW_ATTEMPTS {
        once(host).map_err(|f| match f {
            Fail::Failed(mut m) => {
                m.text = format!("attempt {k}/{WINDOW_ATTEMPTS}: {}", m.text);
                Fail::Failed(m)
            }
            skip => skip,
        })?;
    }
    Ok(())
}

fn kvm_nmi_delivered(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_USER_NMI, "USER_NMI")?;
    let c = with_stubs(long64_case(|a| {
        a.nop()?;
        a.hlt()
    })?);
    let mut g = Guest::boot(host, &c)?;
    set_rflags(&g, 0x2)?; // IF = 0 does not block NMIs
    g.vcpu().try_nmi().map_err(ioctl("KVM_NMI"))?;
    g.run_to_hlt()?;
    ensure_eq!(
        g.stub_vector()?,
        Some(2u8),
        "stub reached after KVM_NMI with IF = 0 (NMI = 2)"
    );
    ensure_eq!(g.read_u64(g.regs()?.rsp)?, CODE, "rip in the NMI frame");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// KVM_TRANSLATE

fn translate(g: &Guest, la: u64) -> Result<kvmconf_harness::abi::kvm_translation, Fail> {
    g.vcpu().try_translate(la).map_err(ioctl("KVM_TRANSLATE"))
}

fn translate_mapped(host: &Host) -> Outcome {
    for mode in [Mode::Real16, Mode::Prot32, Mode::Long64] {
        let g = guest(host, mode, |a| a.hlt())?;
        let t = translate(&g, 0x12345)?;
        ensure_eq!(t.valid, 1u8, "{mode:?} KVM_TRANSLATE(0x12345).valid");
        ensure_eq!(
            t.physical_address,
            0x12345u64,
            "{mode:?} physical address of 0x12345 (identity)"
        );
    }
    Ok(())
}

fn translate_unmapped(host: &Host) -> Outcome {
    let g = guest(host, Mode::Long64, |a| a.hlt())?;
    let t = translate(&g, 0x1_0000_0010)?;
    ensure_eq!(
        t.valid,
        0u8,
        "KVM_TRANSLATE(0x100000010).valid (no page maps it)"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// KVM_CAP_SYNC_REGS

fn sync_regs_filled(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_SYNC_REGS, "SYNC_REGS")?;
    let mut g = guest(host, Mode::Long64, |a| {
        a.mov(ebx, 0x1234u32)?;
        a.hlt()
    })?;
    g.vm.vcpu.kvm_run().kvm_valid_regs =
        u64::from(KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS);
    g.run_to_hlt()?;
    let (regs, sregs) = (g.regs()?, g.sregs()?);
    let s = g.vm.vcpu.sync_regs();
    g.vm.vcpu.clear_sync_regs();
    ensure_eq!(s.regs.rbx, regs.rbx, "kvm_run.s.regs.rbx vs KVM_GET_REGS");
    ensure_eq!(s.regs.rip, regs.rip, "kvm_run.s.regs.rip vs KVM_GET_REGS");
    ensure_eq!(
        s.sregs.cr0,
        sregs.cr0,
        "kvm_run.s.sregs.cr0 vs KVM_GET_SREGS"
    );
    ensure_eq!(
        s.sregs.cr3,
        sregs.cr3,
        "kvm_run.s.sregs.cr3 vs KVM_GET_SREGS"
    );
    ensure_eq!(
        s.sregs.efer,
        sregs.efer,
        "kvm_run.s.sregs.efer vs KVM_GET_SREGS"
    );
    Ok(())
}

fn sync_regs_dirty(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_SYNC_REGS, "SYNC_REGS")?;
    let mut g = guest(host, Mode::Long64, |a| {
        a.out(0x80, al)?;
        a.hlt()
    })?;
    let mut r = g.regs()?;
    r.rax = 0x77;
    r.rbx = 0xabcd;
    let run = g.vm.vcpu.kvm_run();
    run.s.regs.regs = r;
    run.kvm_dirty_regs = u64::from(KVM_SYNC_X86_REGS);
    let e = g.run()?;
    g.vm.vcpu.clear_sync_regs();
    let (count, off) = io_exit(&e, false, 1, 0x80)?;
    ensure_eq!(
        hex(&g.io_data(1, count, off)?),
        "77",
        "OUT data: al written through kvm_run.s.regs"
    );
    ensure_eq!(
        g.regs()?.rbx,
        0xabcdu64,
        "rbx written through kvm_run.s.regs"
    );
    Ok(())
}

fn sync_regs_invalid(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_SYNC_REGS, "SYNC_REGS")?;
    for field in ["kvm_valid_regs", "kvm_dirty_regs"] {
        let mut g = guest(host, Mode::Long64, |a| a.hlt())?;
        let run = g.vm.vcpu.kvm_run();
        if field == "kvm_valid_regs" {
            run.kvm_valid_regs = 1 << 3;
        } else {
            run.kvm_dirty_regs = 1 << 3;
        }
        let r = g.try_run();
        g.vm.vcpu.clear_sync_regs();
        let run = g.vm.vcpu.kvm_run();
        run.kvm_valid_regs = 0;
        run.kvm_dirty_regs = 0;
        ensure!(
            matches!(r, Err(libc::EINVAL)),
            "KVM_RUN with {field} bit 3 (not a sync-regs set): wanted EINVAL, got {r:?}"
        );
        ensure_eq!(
            g.regs()?.rip,
            CODE,
            "rip after the rejected KVM_RUN ({field})"
        );
    }
    Ok(())
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

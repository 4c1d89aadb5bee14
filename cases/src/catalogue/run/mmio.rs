//! KVM_EXIT_MMIO: writes and reads of every size, instruction fetch from MMIO, and entry failures.

use super::*;

pub(super) fn mmio_exit(e: &KvmExit, write: bool, len: u32) -> Result<(u64, [u8; 8]), Fail> {
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

pub(super) fn mmio_write_sizes(host: &Host) -> Outcome {
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

pub(super) fn mmio_read_sizes(host: &Host) -> Outcome {
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

pub(super) fn mmio_fetch_internal_error(host: &Host) -> Outcome {
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
pub(super) fn entry_failure_reason(module: Option<&str>) -> Option<u64> {
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
pub(super) fn fail_entry_cs_l_and_d(host: &Host) -> Outcome {
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
            return Err(Fail::field(
                "exit with CS.L = CS.D = 1 in IA-32e mode (accepted by KVM_SET_SREGS)",
                format!(
                    "FailEntry (hardware_entry_failure_reason {}) or InternalError",
                    entry_failure_reason(module.as_deref())
                        .map_or("non-zero".to_string(), |r| format!("{r:#x}"))
                ),
                describe(other),
                "",
            ));
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

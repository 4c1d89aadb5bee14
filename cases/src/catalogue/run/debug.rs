//! KVM_SET_GUEST_DEBUG and KVM_EXIT_DEBUG: single-stepping in every mode and debug exits.

use super::*;

pub(super) fn set_debug(g: &Guest, control: u32, debugreg: [u64; 8]) -> Outcome {
    let d = kvm_guest_debug {
        control,
        pad: 0,
        arch: kvmconf_harness::abi::kvm_guest_debug_arch { debugreg },
    };
    g.vcpu()
        .try_set_guest_debug(&d)
        .map_err(ioctl("KVM_SET_GUEST_DEBUG"))
}

/// The (exception, pc, dr6) of a KVM_EXIT_DEBUG; any other exit is the failure `fail` makes of
/// its description.
fn debug_exit(e: KvmExit, fail: impl FnOnce(String) -> Fail) -> Result<(u32, u64, u64), Fail> {
    match e {
        // `dr6: status`: iced's register `dr6` is in scope.
        KvmExit::Debug {
            exception,
            pc,
            dr6: status,
            ..
        } => Ok((exception, pc, status)),
        other => Err(fail(describe(&other))),
    }
}

pub(super) fn single_step(host: &Host, mode: Mode) -> Outcome {
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
        let (exception, pc, status) = debug_exit(g.run()?, |got| {
            Fail::failed(format!(
                "{mode:?} single-step: wanted Debug, got {got} after pcs {pcs:x?}"
            ))
        })?;
        ensure_eq!(exception, 1u32, "{mode:?} single-step exit exception (#DB)");
        ensure!(
            status & DR6_BS != 0,
            "{mode:?} single-step exit at pc {pc:#x}: dr6 {status:#x} lacks BS (bit 14)"
        );
        pcs.push(pc);
    }
    ensure_eq!(
        pcs,
        want.to_vec(),
        "{mode:?} pcs of the single-step exits (the jmp's is its target)"
    );
    set_debug(&g, 0, [0; 8])?;
    g.run_to_hlt()
}

/// `nop; int3; hlt`: the INT3 at CODE + 1.
fn nop_int3_hlt(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.nop()?;
    a.int3()?;
    a.hlt()
}

pub(super) fn sw_bp_exit(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_SET_GUEST_DEBUG, "SET_GUEST_DEBUG")?;
    let mut g = guest(host, Mode::Long64, nop_int3_hlt)?;
    set_debug(&g, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP, [0; 8])?;
    let (exception, pc, _) = debug_exit(g.run()?, |got| {
        Fail::field("INT3 with KVM_GUESTDBG_USE_SW_BP", "Debug", got, "")
    })?;
    ensure_eq!(
        exception,
        3u32,
        "exception of the KVM_EXIT_DEBUG for INT3 (#BP)"
    );
    ensure_eq!(pc, CODE + 1, "pc of the KVM_EXIT_DEBUG for INT3 (the INT3)");
    Ok(())
}

pub(super) fn sw_bp_off_goes_to_guest(host: &Host) -> Outcome {
    let c = with_stubs(long64_case(nop_int3_hlt)?);
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

pub(super) fn hw_bp_exec(host: &Host) -> Outcome {
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
    let (exception, pc, status) = debug_exit(g.run()?, |got| {
        Fail::failed(format!(
            "execute breakpoint on DR0: wanted Debug, got {got}"
        ))
    })?;
    ensure_eq!(exception, 1u32, "exception of the hardware-breakpoint exit");
    ensure_eq!(pc, CODE + 1, "pc of the execute breakpoint");
    ensure!(status & 1 != 0, "dr6 {status:#x} lacks B0");
    Ok(())
}

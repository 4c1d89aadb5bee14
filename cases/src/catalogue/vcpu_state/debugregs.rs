//! KVM_GET/SET_DEBUGREGS: round trips and rejected flags, DR6 and DR7.

use super::*;

pub(super) fn debugregs_want() -> kvmconf_harness::abi::kvm_debugregs {
    kvmconf_harness::abi::kvm_debugregs {
        db: [0x1000, 0x2008, 0x3010, 0xffff_8000_0000_4018],
        dr6: 0xffff_0ff1,
        dr7: 0x0000_0401,
        ..Default::default()
    }
}

pub(super) fn debugregs_round_trip(host: &Host) -> Outcome {
    host.with_vm(Mode::Long64, |_vm, vcpu| {
        let want = debugregs_want();
        vcpu.try_set_debugregs(&want)?;
        let got = vcpu.try_get_debugregs()?;
        ensure_eq!(got.db, want.db, "db[0..4]");
        ensure_eq!(got.dr6, want.dr6, "dr6");
        ensure_eq!(got.dr7, want.dr7, "dr7");
        Ok(())
    })
}

pub(super) fn debugregs_rejected(
    host: &Host,
    what: &str,
    mutate: impl Fn(&mut kvmconf_harness::abi::kvm_debugregs),
) -> Outcome {
    let g = hlt_guest(host, Mode::Long64)?;
    let before = g.vcpu().try_get_debugregs()?;
    let mut bad = debugregs_want();
    mutate(&mut bad);
    einval_or_fail(
        &format!("KVM_SET_DEBUGREGS with {what}"),
        g.vcpu().try_set_debugregs(&bad).map_err(|e| e.errno()),
    )?;
    let after = g.vcpu().try_get_debugregs()?;
    ensure_eq!(
        (after.db, after.dr6, after.dr7),
        (before.db, before.dr6, before.dr7),
        "debug registers (db, dr6, dr7) re-read after the rejected KVM_SET_DEBUGREGS ({what})"
    );
    Ok(())
}

pub(super) fn debugregs_guest_reads(host: &Host) -> Outcome {
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
    g.vcpu().try_set_debugregs(&want)?;
    g.run_to_hlt()?;
    ensure_eq!(g.read_u64(OUT)?, want.db[0], "guest MOV from DR0");
    ensure_eq!(g.read_u64(OUT + 8)?, want.db[3], "guest MOV from DR3");
    ensure_eq!(g.read_u64(OUT + 16)?, want.dr7, "guest MOV from DR7");
    Ok(())
}

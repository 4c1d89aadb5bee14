//! KVM_CAP_SYNC_REGS: kvm_valid_regs filled at exit, kvm_dirty_regs applied, unknown bits rejected.

use super::*;

pub(super) fn sync_regs_filled(host: &Host) -> Outcome {
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

pub(super) fn sync_regs_dirty(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_SYNC_REGS, "SYNC_REGS")?;
    let mut g = out_hlt_guest(host)?;
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

pub(super) fn sync_regs_invalid(host: &Host) -> Outcome {
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

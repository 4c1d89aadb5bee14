//! KVM_GET/SET_REGS and KVM_GET/SET_SREGS: round trips in every mode, what the guest sees, and
//! rejected special registers.

use super::*;

pub(super) fn regs_round_trip(host: &Host) -> Outcome {
    host.with_vm(Mode::Long64, |_vm, vcpu| {
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
        vcpu.try_set_regs(&want)?;
        no_diff(
            "KVM_GET_REGS after KVM_SET_REGS",
            regs_diff(&vcpu.try_get_regs()?, &want),
        )
    })
}

pub(super) fn regs_rflags_fixed_bit(host: &Host) -> Outcome {
    host.with_vm(Mode::Long64, |_vm, vcpu| {
        let mut r = vcpu.try_get_regs()?;
        r.rflags = 0x1; // CF only, bit 1 clear
        vcpu.try_set_regs(&r)?;
        ensure_eq!(
            vcpu.try_get_regs()?.rflags,
            0x3u64,
            "rflags after KVM_SET_REGS with rflags = 0x1 (bit 1 is reserved and always 1)"
        );
        Ok(())
    })
}

pub(super) fn regs_fresh_reset_state(host: &Host) -> Outcome {
    let vm = fresh_vm(host)?;
    let r = vm.vcpu.try_get_regs()?;
    ensure_eq!(r.rip, 0xfff0u64, "rip of a new vCPU");
    ensure_eq!(r.rflags, 0x2u64, "rflags of a new vCPU");
    let s = vm.vcpu.try_get_sregs()?;
    ensure_eq!(s.cs.selector, 0xf000u16, "cs.selector of a new vCPU");
    ensure_eq!(s.cs.base, 0xffff_0000u64, "cs.base of a new vCPU");
    ensure_eq!(s.cr0, 0x6000_0010u64, "cr0 of a new vCPU");
    ensure_eq!(s.efer, 0u64, "efer of a new vCPU");
    ensure_eq!(s.idt.limit, 0xffffu16, "idt.limit of a new vCPU");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// SREGS

pub(super) fn sregs_round_trip(host: &Host, mode: Mode) -> Outcome {
    host.with_vm(mode, |_vm, vcpu| {
        let want = vcpu.try_get_sregs()?;
        // Write what we read, with a few fields changed that do not affect validity.
        let mut set = want;
        set.cr2 = 0xdead_b000;
        set.gdt.limit = 0x3f;
        set.idt.base = 0x7000;
        set.fs.base = 0x1234_5000;
        set.gs.base = 0x5678_9000;
        vcpu.try_set_sregs(&set)?;
        no_diff(
            &format!("{mode:?} KVM_GET_SREGS after KVM_SET_SREGS"),
            sregs_diff(&vcpu.try_get_sregs()?, &set),
        )
    })
}

pub(super) fn sregs_cr8_round_trip(host: &Host) -> Outcome {
    host.with_vm(Mode::Long64, |_vm, vcpu| {
        let mut s = vcpu.try_get_sregs()?;
        s.cr8 = 0x9;
        vcpu.try_set_sregs(&s)?;
        ensure_eq!(
            vcpu.try_get_sregs()?.cr8,
            0x9u64,
            "cr8 after KVM_SET_SREGS with cr8 = 0x9"
        );
        Ok(())
    })
}

pub(super) fn sregs_interrupt_bitmap_round_trip(host: &Host) -> Outcome {
    host.with_vm(Mode::Long64, |_vm, vcpu| {
        let mut s = vcpu.try_get_sregs()?;
        s.interrupt_bitmap = [0, 1 << (0x51 - 64), 0, 0];
        vcpu.try_set_sregs(&s)?;
        ensure_eq!(
            vcpu.try_get_sregs()?.interrupt_bitmap,
            [0u64, 1 << (0x51 - 64), 0, 0],
            "interrupt_bitmap after setting pending vector 0x51"
        );
        Ok(())
    })
}

/// KVM_SET_SREGS with `mutate` applied to a valid `mode` state fails with EINVAL, and neither
/// sregs nor regs change.
pub(super) fn sregs_rejected(
    host: &Host,
    mode: Mode,
    what: &str,
    mutate: impl Fn(&mut kvm_sregs),
) -> Outcome {
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

pub(super) fn sregs_cr0_pg_without_pe(host: &Host) -> Outcome {
    sregs_rejected(host, Mode::Prot32, "cr0.PG = 1 and cr0.PE = 0", |s| {
        s.cr0 = (s.cr0 | cr0::PG) & !cr0::PE;
    })
}

pub(super) fn sregs_cr0_nw_without_cd(host: &Host) -> Outcome {
    sregs_rejected(host, Mode::Prot32, "cr0.NW = 1 and cr0.CD = 0", |s| {
        s.cr0 = (s.cr0 | (1 << 29)) & !(1 << 30);
    })
}

pub(super) fn sregs_lma_without_paging(host: &Host) -> Outcome {
    sregs_rejected(host, Mode::Long64, "efer.LMA = 1 with cr0.PG = 0", |s| {
        s.cr0 &= !cr0::PG;
    })
}

pub(super) fn sregs_cs_l_outside_long_mode(host: &Host) -> Outcome {
    sregs_rejected(host, Mode::Prot32, "cs.l = 1 with efer.LMA = 0", |s| {
        s.cs.l = 1;
        s.cs.db = 0;
    })
}

//! KVM_EXIT_HLT and KVM_EXIT_SHUTDOWN, and the kvm_run fields if_flag, cr8, apic_base and
//! immediate_exit.

use super::*;

pub(super) fn hlt_every_mode(host: &Host) -> Outcome {
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

pub(super) fn if_flag_reported(host: &Host) -> Outcome {
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

pub(super) fn cr8_out(host: &Host) -> Outcome {
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

pub(super) fn cr8_in(host: &Host) -> Outcome {
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

pub(super) fn apic_base_field(host: &Host) -> Outcome {
    let mut g = guest(host, Mode::Long64, |a| a.hlt())?;
    g.run_to_hlt()?;
    let mut m = kvmconf_harness::abi::Msrs::from_entries(&[kvmconf_harness::abi::kvm_msr_entry {
        index: MSR_APIC_BASE,
        ..Default::default()
    }])
    .expect("one entry");
    g.vcpu().try_get_msrs(&mut m)?;
    let msr = m.as_slice()[0].data;
    ensure_eq!(
        g.vm.vcpu.kvm_run().apic_base,
        msr,
        "kvm_run.apic_base vs KVM_GET_MSRS(IA32_APIC_BASE)"
    );
    Ok(())
}

pub(super) fn shutdown_triple_fault(host: &Host) -> Outcome {
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

pub(super) fn immediate_exit_eintr(host: &Host) -> Outcome {
    let mut g = out_hlt_guest(host)?;
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

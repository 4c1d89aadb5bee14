//! KVM_INTERRUPT, KVM_NMI and request_interrupt_window.

use super::*;

pub(super) fn interrupt(g: &Guest, irq: u32) -> Outcome {
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
pub(super) fn sti_guest(host: &Host) -> Result<(Guest, u64), Fail> {
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

pub(super) fn kvm_interrupt_delivered(host: &Host) -> Outcome {
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

pub(super) fn kvm_interrupt_invalid_einval(host: &Host) -> Outcome {
    let g = guest(host, Mode::Long64, |a| a.hlt())?;
    ensure_eq!(
        g.vcpu().try_interrupt(256).map_err(|e| e.errno()),
        Err(libc::EINVAL),
        "KVM_INTERRUPT(256), not a vector (EINVAL = {})",
        libc::EINVAL
    );
    Ok(())
}

pub(super) fn kvm_interrupt_irqchip_enxio(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_IRQCHIP, "IRQCHIP")?;
    let vm = host.try_create_vm()?;
    vm.try_create_irqchip()?;
    let v = vm.try_create_vcpu(0)?;
    ensure_eq!(
        v.try_interrupt(0x40).map_err(|e| e.errno()),
        Err(libc::ENXIO),
        "KVM_INTERRUPT with the PIC in the kernel (ENXIO = {})",
        libc::ENXIO
    );
    Ok(())
}

/// Runs `g` once with kvm_run.request_interrupt_window set (cleared again after the exit) and
/// expects KVM_EXIT_IRQ_WINDOW_OPEN; `what` names that exit in a failure.
fn run_requesting_irq_window(g: &mut Guest, what: &str) -> Outcome {
    g.vm.vcpu.kvm_run().request_interrupt_window = 1;
    let e = g.run()?;
    g.vm.vcpu.kvm_run().request_interrupt_window = 0;
    expect_exit(&e, &KvmExit::IrqWindowOpen, what)
}

pub(super) fn irq_window_immediate_once(host: &Host) -> Outcome {
    let mut g = guest(host, Mode::Long64, |a| {
        a.mov(ebx, 1u32)?;
        a.hlt()
    })?;
    set_rflags(&g, 0x202)?;
    run_requesting_irq_window(&mut g, "exit with request_interrupt_window and IF = 1")?;
    let run = g.vm.vcpu.kvm_run();
    ensure_eq!(
        run.ready_for_interrupt_injection,
        1u8,
        "kvm_run.ready_for_interrupt_injection"
    );
    ensure_eq!(run.if_flag, 1u8, "kvm_run.if_flag");
    Ok(())
}

pub(super) fn irq_window_after_sti_shadow_once(host: &Host) -> Outcome {
    let (mut g, after_shadow) = sti_guest(host)?;
    run_requesting_irq_window(
        &mut g,
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
pub(super) const WINDOW_ATTEMPTS: u32 = 100;

/// Runs `once` on [`WINDOW_ATTEMPTS`] fresh guests; the first failure fails the check.
pub(super) fn every_attempt(host: &Host, once: fn(&Host) -> Outcome) -> Outcome {
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

pub(super) fn kvm_nmi_delivered(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_USER_NMI, "USER_NMI")?;
    let c = with_stubs(long64_case(|a| {
        a.nop()?;
        a.hlt()
    })?);
    let mut g = Guest::boot(host, &c)?;
    set_rflags(&g, 0x2)?; // IF = 0 does not block NMIs
    g.vcpu().try_nmi()?;
    g.run_to_hlt()?;
    ensure_eq!(
        g.stub_vector()?,
        Some(2u8),
        "stub reached after KVM_NMI with IF = 0 (NMI = 2)"
    );
    ensure_eq!(g.read_u64(g.regs()?.rsp)?, CODE, "rip in the NMI frame");
    Ok(())
}

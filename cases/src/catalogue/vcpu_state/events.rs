//! KVM_GET/SET_VCPU_EVENTS: NMI, interrupt shadow and SMM state, injected exceptions and NMIs.

use super::*;

pub(super) fn events(v: &Vcpu) -> Result<kvmconf_harness::abi::kvm_vcpu_events, Fail> {
    v.try_get_vcpu_events()
        .map_err(ioctl("KVM_GET_VCPU_EVENTS"))
}

/// Skips unless KVM_CHECK_EXTENSION reports KVM_CAP_VCPU_EVENTS.
fn require_vcpu_events(host: &Host) -> Outcome {
    require_cap(
        host,
        kvmconf_harness::abi::KVM_CAP_VCPU_EVENTS,
        "VCPU_EVENTS",
    )
}

/// Boots [`stub_guest`], changes its vCPU events with `change` (flags included), sets them with
/// KVM_SET_VCPU_EVENTS and runs the guest to a HLT.
fn stub_guest_after_events(
    host: &Host,
    change: impl FnOnce(&mut kvmconf_harness::abi::kvm_vcpu_events),
) -> Result<Guest, Fail> {
    require_vcpu_events(host)?;
    let mut g = stub_guest(host)?;
    let mut e = events(g.vcpu())?;
    change(&mut e);
    g.vcpu().try_set_vcpu_events(&e)?;
    g.run_to_hlt()?;
    Ok(g)
}

/// Checks that the vCPU events re-read after a rejected KVM_SET_VCPU_EVENTS are still `before`.
fn events_unchanged(vcpu: &Vcpu, before: &kvmconf_harness::abi::kvm_vcpu_events) -> Outcome {
    ensure_eq!(
        events(vcpu)?,
        *before,
        "vCPU events re-read after the rejected KVM_SET_VCPU_EVENTS"
    );
    Ok(())
}

pub(super) fn events_nmi_masked_round_trip(host: &Host) -> Outcome {
    require_vcpu_events(host)?;
    host.with_vm(Mode::Long64, |_vm, vcpu| {
        let mut e = events(vcpu)?;
        ensure_eq!(e.nmi.masked, 0u8, "nmi.masked of a new vCPU");
        e.nmi.masked = 1;
        e.flags = 0;
        vcpu.try_set_vcpu_events(&e)?;
        ensure_eq!(events(vcpu)?.nmi.masked, 1u8, "nmi.masked after setting it");
        Ok(())
    })
}

pub(super) fn events_shadow_round_trip(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_INTR_SHADOW, "INTR_SHADOW")?;
    host.with_vm(Mode::Long64, |_vm, vcpu| {
        let mut e = events(vcpu)?;
        e.flags = KVM_VCPUEVENT_VALID_SHADOW;
        e.interrupt.shadow = 1; // KVM_X86_SHADOW_INT_MOV_SS
        vcpu.try_set_vcpu_events(&e)?;
        let got = events(vcpu)?;
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
    })
}

pub(super) fn events_bad_flags(host: &Host) -> Outcome {
    require_vcpu_events(host)?;
    host.with_vm(Mode::Long64, |_vm, vcpu| {
        let before = events(vcpu)?;
        let mut bad = before;
        bad.flags = 1 << 31;
        bad.nmi.masked = 1;
        einval_or_fail(
            "KVM_SET_VCPU_EVENTS with flags bit 31 (undefined)",
            vcpu.try_set_vcpu_events(&bad).map_err(|e| e.errno()),
        )?;
        events_unchanged(vcpu, &before)
    })
}

pub(super) fn events_smm_flag(host: &Host) -> Outcome {
    require_vcpu_events(host)?;
    host.with_vm(Mode::Long64, |_vm, vcpu| {
        let before = events(vcpu)?;
        let mut e = before;
        e.flags = KVM_VCPUEVENT_VALID_SMM;
        e.smi.smm = 1;
        let r = vcpu.try_set_vcpu_events(&e).map_err(|e| e.errno());
        if host.check_raw(KVM_CAP_X86_SMM) > 0 {
            ensure!(
                r.is_ok(),
                "KVM_SET_VCPU_EVENTS with KVM_VCPUEVENT_VALID_SMM, smi.smm = 1 and KVM_CAP_X86_SMM present: wanted success, got errno {r:?}"
            );
            ensure_eq!(events(vcpu)?.smi.smm, 1u8, "smi.smm after entering SMM");
            return Ok(());
        }
        einval_or_fail(
            "KVM_SET_VCPU_EVENTS with KVM_VCPUEVENT_VALID_SMM and smi.smm = 1 while KVM_CAP_X86_SMM is absent",
            r,
        )?;
        events_unchanged(vcpu, &before)
    })
}

/// A long64 CPL0 guest with the harness's exception stubs: `nop; nop; hlt`.
pub(super) fn stub_guest(host: &Host) -> Result<Guest, Fail> {
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
pub(super) fn stub_frame(
    g: &Guest,
    with_error: bool,
) -> Result<(Option<u8>, Option<u64>, u64), Fail> {
    let v = g.stub_vector()?;
    let top = g.regs()?.rsp;
    let (err, rip) = if with_error {
        (Some(g.read_u64(top)?), g.read_u64(top + 8)?)
    } else {
        (None, g.read_u64(top)?)
    };
    Ok((v, err, rip))
}

pub(super) fn events_exception_delivered(host: &Host) -> Outcome {
    let g = stub_guest_after_events(host, |e| {
        e.flags = 0;
        e.exception.injected = 1;
        e.exception.nr = 6;
    })?;
    let (v, _, rip) = stub_frame(&g, false)?;
    ensure_eq!(v, Some(6u8), "stub reached after injecting #UD (vector 6)");
    ensure_eq!(rip, CODE, "rip in the #UD frame (the first instruction)");
    Ok(())
}

pub(super) fn events_exception_error_code_delivered(host: &Host) -> Outcome {
    let g = stub_guest_after_events(host, |e| {
        e.flags = 0;
        e.exception.injected = 1;
        e.exception.nr = 13;
        e.exception.has_error_code = 1;
        e.exception.error_code = 0x1238;
    })?;
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

pub(super) fn events_nmi_pending_delivered(host: &Host) -> Outcome {
    let g = stub_guest_after_events(host, |e| {
        e.flags = KVM_VCPUEVENT_VALID_NMI_PENDING;
        e.nmi.pending = 1;
    })?;
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

pub(super) fn events_nmi_masked_holds_pending(host: &Host) -> Outcome {
    let g = stub_guest_after_events(host, |e| {
        e.flags = KVM_VCPUEVENT_VALID_NMI_PENDING;
        e.nmi.pending = 1;
        e.nmi.masked = 1;
    })?;
    let v = g.stub_vector()?;
    ensure_eq!(v, None, "stub the guest halted in while NMIs are masked");
    ensure_eq!(g.regs()?.rip, CODE + 3, "rip after the guest's own hlt");
    let after = events(g.vcpu())?;
    ensure_eq!(after.nmi.pending, 1u8, "nmi.pending while masked");
    Ok(())
}

pub(super) fn events_interrupt_delivered(host: &Host) -> Outcome {
    require_vcpu_events(host)?;
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
    g.vcpu().try_set_vcpu_events(&e)?;
    g.run_to_hlt()?;
    let (v, rip, _) = g.handled()?;
    ensure_eq!(v, 0x41u8, "vector of the handler reached");
    ensure_eq!(rip, CODE, "rip in the interrupt frame");
    Ok(())
}

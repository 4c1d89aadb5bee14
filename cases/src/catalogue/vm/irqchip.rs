//! KVM_CREATE_IRQCHIP, KVM_GET/SET_IRQCHIP, KVM_IRQ_LINE and KVM_CREATE_PIT2 / KVM_GET/SET_PIT2.

use super::*;

pub(super) fn irqchip_vm(host: &Host) -> Result<Vm, Fail> {
    require_cap(host, KVM_CAP_IRQCHIP, "IRQCHIP")?;
    let vm = new_vm(host)?;
    vm.try_create_irqchip()?;
    Ok(vm)
}

pub(super) fn chip(vm: &Vm, id: u32) -> Result<kvm_irqchip, Fail> {
    let mut c = kvm_irqchip {
        chip_id: id,
        ..Default::default()
    };
    vm.try_get_irqchip(&mut c)
        .map_err(|e| Fail::failed(format!("KVM_GET_IRQCHIP chip {id}: {}", e.os_error())))?;
    Ok(c)
}

pub(super) fn pic_irr(vm: &Vm) -> Result<u8, Fail> {
    Ok(abi::pic_state(&chip(vm, 0)?).irr)
}

pub(super) fn create_irqchip_chips_readable(host: &Host) -> Outcome {
    let vm = irqchip_vm(host)?;
    for id in 0..3 {
        chip(&vm, id)?;
    }
    Ok(())
}

pub(super) fn create_irqchip_twice_eexist(host: &Host) -> Outcome {
    let vm = irqchip_vm(host)?;
    let mut c = chip(&vm, 0)?;
    let mut pic = abi::pic_state(&c);
    pic.imr = 0xa5;
    c.chip.pic = pic;
    vm.try_set_irqchip(&c)?;
    match vm.try_create_irqchip() {
        Ok(()) => {
            return Err(Fail::failed(
                "second KVM_CREATE_IRQCHIP: wanted EEXIST, got success",
            ));
        }
        Err(e) => expect_errno(Some(e.errno()), libc::EEXIST, "second KVM_CREATE_IRQCHIP")?,
    }
    ensure_eq!(
        abi::pic_state(&chip(&vm, 0)?).imr,
        0xa5,
        "PIC1 IMR after the rejected second irqchip"
    );
    Ok(())
}

pub(super) fn set_irqchip_pic_roundtrips(host: &Host) -> Outcome {
    let vm = irqchip_vm(host)?;
    for id in [0u32, 1] {
        let mut c = chip(&vm, id)?;
        let mut pic = abi::pic_state(&c);
        pic.imr = 0x3c ^ id as u8;
        pic.irq_base = 0x20 + 8 * id as u8;
        c.chip.pic = pic;
        vm.try_set_irqchip(&c)?;
        let back = abi::pic_state(&chip(&vm, id)?);
        ensure_eq!(
            (back.imr, back.irq_base),
            (pic.imr, pic.irq_base),
            "PIC{} (imr, irq_base) read back",
            id + 1
        );
    }
    Ok(())
}

pub(super) fn irq_line_edge_sets_pic_irr(host: &Host) -> Outcome {
    let vm = irqchip_vm(host)?;
    ensure_eq!(
        pic_irr(&vm)? & (1 << 3),
        0,
        "PIC1 IRR bit 3 before KVM_IRQ_LINE"
    );
    vm.try_irq_line(3, true)
        .map_err(ioctl("KVM_IRQ_LINE gsi 3 level 1"))?;
    vm.try_irq_line(3, false)
        .map_err(ioctl("KVM_IRQ_LINE gsi 3 level 0"))?;
    ensure_eq!(
        pic_irr(&vm)? & (1 << 3),
        1 << 3,
        "PIC1 IRR bit 3 after a 0-1-0 edge on GSI 3"
    );
    Ok(())
}

pub(super) fn irq_line_without_irqchip_fails(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_IRQCHIP, "IRQCHIP")?;
    let vm = new_vm(host)?;
    ensure!(
        vm.try_irq_line(3, true).is_err(),
        "KVM_IRQ_LINE with no in-kernel irqchip: wanted an error (x86 requires KVM_CREATE_IRQCHIP first), got success"
    );
    // Still no irqchip: creating one works now.
    vm.try_create_irqchip()
        .map_err(ioctl("KVM_CREATE_IRQCHIP after the rejected KVM_IRQ_LINE"))?;
    ensure_eq!(pic_irr(&vm)?, 0, "PIC1 IRR of the new irqchip");
    Ok(())
}

pub(super) fn create_pit2_after_irqchip(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_PIT2, "PIT2")?;
    let vm = irqchip_vm(host)?;
    vm.try_create_pit2(kvm_pit_config::default())?;
    if host.check_raw(KVM_CAP_PIT_STATE2) > 0 {
        vm.try_get_pit2()?;
    }
    Ok(())
}

pub(super) fn create_pit2_without_irqchip_fails(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_PIT2, "PIT2")?;
    let vm = new_vm(host)?;
    ensure!(
        vm.try_create_pit2(kvm_pit_config::default()).is_err(),
        "KVM_CREATE_PIT2 before KVM_CREATE_IRQCHIP: wanted an error (only valid after it), got success"
    );
    if host.check_raw(KVM_CAP_PIT_STATE2) > 0 {
        ensure!(
            vm.try_get_pit2().is_err(),
            "KVM_GET_PIT2 after the rejected KVM_CREATE_PIT2: wanted an error (no PIT), got a state"
        );
    }
    Ok(())
}

pub(super) fn set_pit2_flags_roundtrip(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_PIT2, "PIT2")?;
    require_cap(host, KVM_CAP_PIT_STATE2, "PIT_STATE2")?;
    let vm = irqchip_vm(host)?;
    vm.try_create_pit2(kvm_pit_config::default())?;
    let mut st = vm.try_get_pit2()?;
    ensure_eq!(
        st.flags & KVM_PIT_FLAGS_HPET_LEGACY,
        0,
        "KVM_PIT_FLAGS_HPET_LEGACY of a new PIT"
    );
    st.flags |= KVM_PIT_FLAGS_HPET_LEGACY;
    vm.try_set_pit2(&st)?;
    let back = vm.try_get_pit2()?;
    ensure_eq!(
        back.flags & KVM_PIT_FLAGS_HPET_LEGACY,
        KVM_PIT_FLAGS_HPET_LEGACY,
        "KVM_PIT_FLAGS_HPET_LEGACY read back"
    );
    Ok(())
}

//! KVM_GET/SET_MP_STATE and KVM_GET/SET_LAPIC with the in-kernel irqchip.

use super::*;

/// A VM with KVM_CREATE_IRQCHIP and one vCPU `id` (no memory: state ioctls only).
pub(super) fn irqchip_vcpu(host: &Host, id: u64) -> Result<(kvmconf_harness::Vm, Vcpu), Fail> {
    require_cap(host, KVM_CAP_IRQCHIP, "IRQCHIP")?;
    let vm = host.try_create_vm()?;
    vm.try_create_irqchip()?;
    let v = vm.try_create_vcpu(id)?;
    v.try_set_cpuid2(host.supported_cpuid())?;
    Ok((vm, v))
}

pub(super) fn mp_state(v: &Vcpu) -> Result<u32, Fail> {
    Ok(v.try_get_mp_state()?.mp_state)
}

pub(super) fn mp_state_fresh_runnable(host: &Host) -> Outcome {
    require_cap(host, kvmconf_harness::abi::KVM_CAP_MP_STATE, "MP_STATE")?;
    let vm = fresh_vm(host)?;
    ensure_eq!(
        mp_state(&vm.vcpu)?,
        KVM_MP_STATE_RUNNABLE,
        "mp_state of vCPU 0 (the BSP)"
    );
    Ok(())
}

pub(super) fn mp_state_halted_round_trip(host: &Host) -> Outcome {
    require_cap(host, kvmconf_harness::abi::KVM_CAP_MP_STATE, "MP_STATE")?;
    let (_vm, v) = irqchip_vcpu(host, 0)?;
    for (state, name) in [
        (KVM_MP_STATE_HALTED, "HALTED"),
        (KVM_MP_STATE_RUNNABLE, "RUNNABLE"),
    ] {
        v.try_set_mp_state(kvm_mp_state { mp_state: state })?;
        ensure_eq!(mp_state(&v)?, state, "mp_state after setting {name}");
    }
    Ok(())
}

pub(super) fn mp_state_invalid(host: &Host) -> Outcome {
    require_cap(host, kvmconf_harness::abi::KVM_CAP_MP_STATE, "MP_STATE")?;
    let (_vm, v) = irqchip_vcpu(host, 0)?;
    let before = mp_state(&v)?;
    einval_or_fail(
        "KVM_SET_MP_STATE with mp_state = 0x42 (no such state)",
        v.try_set_mp_state(kvm_mp_state { mp_state: 0x42 })
            .map_err(|e| e.errno()),
    )?;
    ensure_eq!(
        mp_state(&v)?,
        before,
        "mp_state re-read after the rejected KVM_SET_MP_STATE"
    );
    Ok(())
}

pub(super) fn lapic_u32(l: &kvm_lapic_state, off: usize) -> u32 {
    u32::from_le_bytes(std::array::from_fn(|i| l.regs[off + i] as u8))
}

pub(super) fn lapic_set_u32(l: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().into_iter().enumerate() {
        l.regs[off + i] = b as _;
    }
}

pub(super) fn lapic_id_and_version(host: &Host) -> Outcome {
    let (_vm, v) = irqchip_vcpu(host, 5)?;
    let l = v.try_get_lapic()?;
    ensure_eq!(
        lapic_u32(&l, 0x20) >> 24,
        5u32,
        "APIC ID register (offset 0x20) bits 31:24 of vCPU 5 (xAPIC format)"
    );
    let ver = lapic_u32(&l, 0x30);
    ensure!(
        ver & 0xf0 == 0x10 && (ver >> 16) & 0xff >= 3,
        "APIC version register (offset 0x30) {ver:#x}: wanted an integrated APIC (version 0x1X) with at least 4 LVT entries"
    );
    Ok(())
}

pub(super) fn lapic_round_trip(host: &Host) -> Outcome {
    let (_vm, v) = irqchip_vcpu(host, 0)?;
    let mut l = v.try_get_lapic()?;
    let fields = [
        (0x80, 0x30u32, "TPR"),
        (0xf0, 0x1ff, "spurious vector (APIC enabled, vector 0xff)"),
        (0x320, 0x1_00ef, "LVT timer (masked, vector 0xef)"),
        (0x350, 0x700, "LVT LINT0 (ExtINT)"),
        (0x360, 0x400, "LVT LINT1 (NMI)"),
        (0x380, 0x1234_5678, "timer initial count"),
        (0x3e0, 0xb, "timer divide configuration (divide by 1)"),
    ];
    for &(off, val, _) in &fields {
        lapic_set_u32(&mut l, off, val);
    }
    v.try_set_lapic(&l)?;
    let got = v.try_get_lapic()?;
    for (off, val, name) in fields {
        ensure_eq!(
            lapic_u32(&got, off),
            val,
            "LAPIC {name} (offset {off:#x}) after KVM_SET_LAPIC"
        );
    }
    Ok(())
}

pub(super) fn apic_base_reset(host: &Host) -> Outcome {
    let (_vm, v) = irqchip_vcpu(host, 0)?;
    ensure_eq!(
        get_msr(&v, MSR_APIC_BASE)?,
        0xfee0_0900u64,
        "IA32_APIC_BASE of vCPU 0: base 0xfee00000, global enable (bit 11), BSP (bit 8)"
    );
    Ok(())
}

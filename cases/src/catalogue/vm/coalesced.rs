//! KVM_REGISTER/UNREGISTER_COALESCED_MMIO: the coalesced MMIO and PIO ring.

use super::*;

pub(super) fn coalesced_vm(host: &Host) -> Result<TestVm, Fail> {
    require_cap(host, KVM_CAP_COALESCED_MMIO, "COALESCED_MMIO")?;
    let mut vm = test_vm(host, Mode::Prot32, false)?;
    vm.vcpu.try_map_coalesced_ring()?;
    Ok(vm)
}

pub(super) fn ring(vm: &mut TestVm) -> Result<Vec<(u64, u32, u32, u64)>, Fail> {
    let mut out = Vec::new();
    while let Some(e) = vm.vcpu.try_coalesced_read()? {
        out.push((
            e.phys_addr,
            e.len,
            abi::coalesced_pio(&e),
            u64::from_le_bytes(e.data),
        ));
        if out.len() > 1000 {
            return Err(Fail::failed("coalesced MMIO ring never empties"));
        }
    }
    Ok(out)
}

pub(super) fn coalesced_mmio_writes_in_ring(host: &Host) -> Outcome {
    let mut vm = coalesced_vm(host)?;
    vm.try_register_coalesced_mmio(IoEventAddress::Mmio(MMIO_GPA), 0x1000)?;
    let r = run32(&mut vm, "writes", |a| {
        a.mov(dword_ptr(MMIO_GPA), 0x11u32)?;
        a.mov(dword_ptr(MMIO_GPA + 4), 0x2222_2222u32)?;
        a.mov(byte_ptr(MMIO_GPA + 0xff8), 0x33u32)?;
        a.hlt()
    })?;
    ensure_eq!(
        r.trace,
        Vec::<Event>::new(),
        "exits for writes to a coalesced zone"
    );
    ensure_eq!(
        ring(&mut vm)?,
        vec![
            (MMIO_GPA, 4, 0, 0x11),
            (MMIO_GPA + 4, 4, 0, 0x2222_2222),
            (MMIO_GPA + 0xff8, 1, 0, 0x33)
        ],
        "coalesced ring entries (phys_addr, len, pio, data)"
    );
    Ok(())
}

pub(super) fn coalesced_mmio_reads_exit(host: &Host) -> Outcome {
    let mut vm = coalesced_vm(host)?;
    vm.try_register_coalesced_mmio(IoEventAddress::Mmio(MMIO_GPA), 0x1000)?;
    let r = run32(&mut vm, "write then read", |a| {
        a.mov(dword_ptr(MMIO_GPA + 8), 0x99u32)?;
        a.mov(eax, dword_ptr(MMIO_GPA))?;
        a.hlt()
    })?;
    ensure_eq!(
        r.trace,
        vec![Event::mmio_read(MMIO_GPA, 4, 0xffff_ffff)],
        "exits: the read of a coalesced zone goes to the VMM"
    );
    ensure_eq!(
        ring(&mut vm)?,
        vec![(MMIO_GPA + 8, 4, 0, 0x99)],
        "coalesced ring entries"
    );
    Ok(())
}

pub(super) fn coalesced_mmio_unregister_restores_exits(host: &Host) -> Outcome {
    let mut vm = coalesced_vm(host)?;
    let zone = IoEventAddress::Mmio(MMIO_GPA);
    vm.try_register_coalesced_mmio(zone, 0x1000)?;
    vm.try_unregister_coalesced_mmio(zone, 0x1000)?;
    ensure_write_exits(
        &mut vm,
        MMIO_GPA,
        0x11,
        "exits after the zone was unregistered",
    )?;
    ensure_eq!(ring(&mut vm)?, vec![], "coalesced ring entries");
    Ok(())
}

pub(super) fn coalesced_pio_writes_in_ring(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_COALESCED_PIO, "COALESCED_PIO")?;
    let mut vm = coalesced_vm(host)?;
    vm.try_register_coalesced_mmio(IoEventAddress::Pio(PORT.into()), 4)
        .map_err(ioctl("KVM_REGISTER_COALESCED_MMIO (pio)"))?;
    let r = run32(&mut vm, "out", out_program(&[0x42, 0x43]))?;
    ensure_eq!(
        r.trace,
        Vec::<Event>::new(),
        "exits for OUTs to a coalesced port"
    );
    ensure_eq!(
        ring(&mut vm)?,
        vec![(u64::from(PORT), 4, 1, 0x42), (u64::from(PORT), 4, 1, 0x43)],
        "coalesced ring entries (phys_addr = port, len, pio, data)"
    );
    Ok(())
}

//! KVM_SET_USER_MEMORY_REGION: adding, overlapping, misaligned, flagged, out-of-range, deleted,
//! moved, resized and read-only memslots.

use super::*;

pub(super) fn memslot_add_guest_reads_backing(host: &Host) -> Outcome {
    let mut vm = vm_with_extra(host, 0)?;
    ensure_reads(&mut vm, EXTRA_GPA, PATTERN, "new slot")?;
    // And guest writes land in the backing memory.
    run32(&mut vm, "write", |a| {
        a.mov(dword_ptr(EXTRA_GPA + 0x104), 0xcafe_f00du32)?;
        a.hlt()
    })?;
    let mut b = [0u8; 4];
    vm.mem
        .read(BACKING + 0x104, &mut b)
        .map_err(|e| Fail::failed(e.to_string()))?;
    ensure_eq!(
        u32::from_le_bytes(b),
        0xcafe_f00d,
        "backing memory after a guest write"
    );
    Ok(())
}

pub(super) fn memslot_overlap_eexist(host: &Host) -> Outcome {
    let mut vm = vm_with_extra(host, 0)?;
    let base = extra(0);
    // Same range, another id; a range starting inside; one ending inside; one covering it all.
    let tries = [
        (base.gpa, base.size),
        (base.gpa + 0x8000, 0x10000),
        (base.gpa - 0x1000, 0x2000),
        (base.gpa - 0x10000, 0x40000),
    ];
    for (i, (gpa, size)) in tries.into_iter().enumerate() {
        let s = Slot {
            slot: EXTRA_SLOT + 1 + i as u32,
            flags: 0,
            gpa,
            size,
            offset: BACKING + 0x8_0000,
        };
        expect_rejected(&vm, s, libc::EEXIST, "overlapping slot")?;
    }
    ensure_reads(
        &mut vm,
        EXTRA_GPA,
        PATTERN,
        "old slot after the rejected overlaps",
    )?;
    ensure_unmapped(&mut vm, EXTRA_GPA - 0x1000, "the rejected slots' range")?;
    Ok(())
}

pub(super) fn memslot_overlap_with_ram_eexist(host: &Host) -> Outcome {
    let mut vm = test_vm(host, Mode::Prot32, false)?;
    let s = Slot {
        slot: EXTRA_SLOT,
        flags: 0,
        gpa: 0x1000,
        size: 0x1000,
        offset: BACKING,
    };
    vm.mem
        .write(0x8000, &PATTERN.to_le_bytes())
        .map_err(|e| Fail::failed(e.to_string()))?;
    expect_rejected(&vm, s, libc::EEXIST, "slot over the VM's RAM slot")?;
    ensure_reads(&mut vm, 0x8000, PATTERN, "RAM after the rejected overlap")
}

pub(super) fn memslot_misaligned_einval(host: &Host, what: &str, tweak: fn(&mut Slot)) -> Outcome {
    let mut vm = test_vm(host, Mode::Prot32, false)?;
    let mut s = extra(0);
    tweak(&mut s);
    expect_rejected(&vm, s, libc::EINVAL, what)?;
    ensure_unmapped(&mut vm, EXTRA_GPA & !0xfff, "the rejected slot's range")?;
    // The same id is still free: a well-formed slot is accepted.
    vm.mem
        .write(BACKING, &PATTERN.to_le_bytes())
        .map_err(|e| Fail::failed(e.to_string()))?;
    map(&vm, extra(0))?;
    ensure_reads(
        &mut vm,
        EXTRA_GPA,
        PATTERN,
        "well-formed slot after the rejected one",
    )
}

pub(super) fn memslot_misaligned_gpa_einval(host: &Host) -> Outcome {
    memslot_misaligned_einval(host, "slot with guest_phys_addr not page aligned", |s| {
        s.gpa += 0x800
    })
}

pub(super) fn memslot_misaligned_size_einval(host: &Host) -> Outcome {
    memslot_misaligned_einval(host, "slot with memory_size not a page multiple", |s| {
        s.size += 0x200
    })
}

pub(super) fn memslot_misaligned_userspace_addr_einval(host: &Host) -> Outcome {
    memslot_misaligned_einval(host, "slot with userspace_addr not page aligned", |s| {
        s.offset += 0x10
    })
}

pub(super) fn memslot_unknown_flags_einval(host: &Host) -> Outcome {
    let mut vm = vm_with_extra(host, 0)?;
    for flags in [1 << 3, 1 << 15, 1 << 31] {
        // Both for a new slot and as a change of the existing one.
        let mut new = extra(flags);
        new.slot = EXTRA_SLOT + 1;
        new.gpa = EXTRA_GPA + 0x10_0000;
        expect_rejected(
            &vm,
            new,
            libc::EINVAL,
            &format!("new slot with flags {flags:#x}"),
        )?;
        expect_rejected(
            &vm,
            extra(flags),
            libc::EINVAL,
            &format!("existing slot changed to flags {flags:#x}"),
        )?;
    }
    ensure_reads(
        &mut vm,
        EXTRA_GPA,
        PATTERN,
        "old slot after the rejected flags",
    )?;
    ensure_unmapped(
        &mut vm,
        EXTRA_GPA + 0x10_0000,
        "the rejected new slot's range",
    )
}

pub(super) fn memslot_id_at_nr_memslots_einval(host: &Host) -> Outcome {
    let n = nr_memslots(host)?;
    let mut vm = test_vm(host, Mode::Prot32, false)?;
    for id in [n, n + 1, 0xffff] {
        if id > 0xffff {
            continue;
        }
        let mut s = extra(0);
        s.slot = id;
        expect_rejected(
            &vm,
            s,
            libc::EINVAL,
            &format!("slot id {id} (KVM_CAP_NR_MEMSLOTS {n})"),
        )?;
    }
    ensure_unmapped(&mut vm, EXTRA_GPA, "the rejected slots' range")
}

pub(super) fn memslot_last_valid_id_succeeds(host: &Host) -> Outcome {
    let n = nr_memslots(host)?;
    let mut vm = test_vm(host, Mode::Prot32, false)?;
    vm.mem
        .write(BACKING, &PATTERN.to_le_bytes())
        .map_err(|e| Fail::failed(e.to_string()))?;
    let mut s = extra(0);
    s.slot = n - 1;
    map(&vm, s)?;
    ensure_reads(
        &mut vm,
        EXTRA_GPA,
        PATTERN,
        &format!("slot id {} (NR_MEMSLOTS - 1)", n - 1),
    )
}

pub(super) fn memslot_address_space_beyond_cap_einval(host: &Host) -> Outcome {
    let spaces = host.check_raw(KVM_CAP_MULTI_ADDRESS_SPACE).max(1) as u32;
    let mut vm = test_vm(host, Mode::Prot32, false)?;
    let mut s = extra(0);
    s.slot = (spaces << 16) | EXTRA_SLOT;
    expect_rejected(
        &vm,
        s,
        libc::EINVAL,
        &format!("address space {spaces} (KVM_CAP_MULTI_ADDRESS_SPACE {spaces})"),
    )?;
    ensure_unmapped(&mut vm, EXTRA_GPA, "the rejected slot's range")
}

pub(super) fn memslot_delete_with_size_zero(host: &Host) -> Outcome {
    let mut vm = vm_with_extra(host, 0)?;
    ensure_reads(&mut vm, EXTRA_GPA, PATTERN, "slot before deletion")?;
    let mut del = extra(0);
    del.size = 0;
    map(&vm, del)?;
    ensure_unmapped(&mut vm, EXTRA_GPA, "deleted slot")?;
    // The id and the range are free again.
    vm.mem
        .write(BACKING + 0x1000, &0x7777_7777u32.to_le_bytes())
        .map_err(|e| Fail::failed(e.to_string()))?;
    let mut again = extra(0);
    again.offset = BACKING + 0x1000;
    map(&vm, again)?;
    ensure_reads(
        &mut vm,
        EXTRA_GPA,
        0x7777_7777,
        "slot re-added with the same id",
    )
}

pub(super) fn memslot_move_changes_gpa(host: &Host) -> Outcome {
    let mut vm = vm_with_extra(host, 0)?;
    let mut moved = extra(0);
    moved.gpa = EXTRA_GPA + 0x100_0000;
    map(&vm, moved)?;
    ensure_reads(&mut vm, moved.gpa, PATTERN, "moved slot at its new address")?;
    ensure_unmapped(&mut vm, EXTRA_GPA, "moved slot's old address")
}

pub(super) fn memslot_resize_einval(host: &Host) -> Outcome {
    let mut vm = vm_with_extra(host, 0)?;
    for size in [0x20000, 0x8000] {
        let mut s = extra(0);
        s.size = size;
        expect_rejected(
            &vm,
            s,
            libc::EINVAL,
            &format!("existing 64 KiB slot resized to {size:#x}"),
        )?;
    }
    ensure_reads(
        &mut vm,
        EXTRA_GPA + 0xfffc,
        0,
        "old slot's last dword after the rejected resize",
    )?;
    ensure_reads(
        &mut vm,
        EXTRA_GPA,
        PATTERN,
        "old slot after the rejected resize",
    )?;
    ensure_unmapped(&mut vm, EXTRA_GPA + 0x10000, "past the old slot's end")
}

pub(super) fn memslot_flags_change_dirty_log(host: &Host) -> Outcome {
    let mut vm = vm_with_extra(host, 0)?;
    map(&vm, extra(KVM_MEM_LOG_DIRTY_PAGES))?;
    run32(&mut vm, "write", |a| {
        a.mov(dword_ptr(EXTRA_GPA + 0x2000), 1u32)?;
        a.hlt()
    })?;
    let log = vm.try_get_dirty_log(EXTRA_SLOT, 0x10000).map_err(ioctl(
        "KVM_GET_DIRTY_LOG after turning on KVM_MEM_LOG_DIRTY_PAGES",
    ))?;
    ensure_eq!(
        log,
        vec![1u64 << 2],
        "dirty bitmap after a write to page 2 of the slot"
    );
    ensure_reads(&mut vm, EXTRA_GPA, PATTERN, "slot after the flags change")
}

pub(super) fn memslot_readonly_flag_change_succeeds(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_READONLY_MEM, "READONLY_MEM")?;
    let mut vm = vm_with_extra(host, 0)?;
    let r = slot_errno(vm.try_set_memslot(extra(KVM_MEM_READONLY)))?;
    let read_back = guest_read32(&mut vm, EXTRA_GPA)?;
    if let Some(e) = r {
        return Err(Fail::field(
            "changing an existing slot's flags to KVM_MEM_READONLY",
            "success (flags may be modified)",
            format!(
                "{} (errno {e}); the slot then reads {read_back:x?}",
                std::io::Error::from_raw_os_error(e)
            ),
            "",
        ));
    }
    // Now read-only: a guest write goes to the VMM.
    ensure_write_exits(
        &mut vm,
        EXTRA_GPA,
        1,
        "guest write to the slot made read-only",
    )
}

pub(super) fn memslot_readonly_reads_memory(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_READONLY_MEM, "READONLY_MEM")?;
    let mut vm = vm_with_extra(host, KVM_MEM_READONLY)?;
    ensure_reads(&mut vm, EXTRA_GPA, PATTERN, "read-only slot")
}

pub(super) fn memslot_readonly_write_exits_mmio(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_READONLY_MEM, "READONLY_MEM")?;
    let mut vm = vm_with_extra(host, KVM_MEM_READONLY)?;
    let r = run32(&mut vm, "write", |a| {
        a.mov(dword_ptr(EXTRA_GPA + 0x10), 0x1122_3344u32)?;
        a.mov(byte_ptr(EXTRA_GPA + 0x21), 0x55u32)?;
        a.hlt()
    })?;
    ensure_eq!(
        r.trace,
        vec![
            Event::mmio_write(EXTRA_GPA + 0x10, 4, 0x1122_3344),
            Event::mmio_write(EXTRA_GPA + 0x21, 1, 0x55)
        ],
        "guest writes to a read-only slot (KVM_EXIT_MMIO, is_write)"
    );
    ensure!(
        vm.mem
            .equals(BACKING + 0x10, 0x20, None)
            .map_err(|e| Fail::failed(e.to_string()))?,
        "the read-only slot's backing memory changed under guest writes"
    );
    ensure_reads(
        &mut vm,
        EXTRA_GPA,
        PATTERN,
        "read-only slot after the writes",
    )
}

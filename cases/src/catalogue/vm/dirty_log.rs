//! KVM_GET_DIRTY_LOG: exact bitmaps at CPL0 and CPL3 under 4 KiB and 2 MiB guest pages, reads that
//! log nothing, bit 0.

use super::*;

/// Writes pages 0x20000 (twice), 0x21000, the straddle 0x22ffe..0x23002; reads 0x30000.
pub(super) fn dirty_program() -> Result<Vec<u8>, Fail> {
    prog(Mode::Long64, |a| {
        a.mov(rax, 0x1122_3344_5566_7788u64)?;
        a.mov(qword_ptr(0x20000u64), rax)?;
        a.mov(qword_ptr(0x21ff8u64), rax)?;
        a.mov(qword_ptr(0x20010u64), rax)?;
        a.mov(rbx, qword_ptr(0x30000u64))?;
        a.mov(dword_ptr(0x22ffeu64), eax)?;
        a.hlt()
    })
}

pub(super) fn dirty_log_exact(host: &Host, cpl: u8, page: PageSize) -> Outcome {
    let mut c = small_case("dirty", Mode::Long64, dirty_program()?);
    c.cpl = cpl;
    c.page_size = page;
    let model = GuestModel::build(&c);
    let mut vm = host.create_vm(&model.layout, true)?;
    let mut before = Vec::new();
    vm.take_dirty_pages(&mut before)?; // userspace loads are no guest writes; start clean
    let r = run_on(&mut vm, &c)?;
    ensure_eq!(r.exit, Exit::Hlt, "cpl{cpl} {page:?} exit");
    let mut got = Vec::new();
    vm.take_dirty_pages(&mut got)?;
    got.sort();
    let mut want = vec![0x20000, 0x21000, 0x22000, 0x23000];
    if cpl == 3 {
        // kvmconf's CPL3 HLT convention: the #GP frame is pushed on the exception stack.
        want.push((model.layout.stack_top() - 8) & !(PAGE - 1));
    }
    want.sort();
    ensure_eq!(
        got.iter().map(|p| format!("{p:#x}")).collect::<Vec<_>>(),
        want.iter().map(|p| format!("{p:#x}")).collect::<Vec<_>>(),
        "cpl{cpl} {page:?} guest pages: pages in KVM_GET_DIRTY_LOG (written: 0x20000, 0x21000, 0x22ffe..0x23002; read only: 0x30000)"
    );
    let mut again = Vec::new();
    vm.take_dirty_pages(&mut again)?;
    ensure_eq!(
        again,
        Vec::<u64>::new(),
        "cpl{cpl} {page:?}: KVM_GET_DIRTY_LOG read a second time (cleared by the first read)"
    );
    Ok(())
}

pub(super) fn dirty_log_reads_only(host: &Host, cpl: u8) -> Outcome {
    let code = prog(Mode::Long64, |a| {
        a.mov(rax, qword_ptr(0x20000u64))?;
        a.mov(rbx, qword_ptr(0x31000u64))?;
        a.add(rax, qword_ptr(0x1f_f000u64))?;
        a.hlt()
    })?;
    let mut c = small_case("reads", Mode::Long64, code);
    c.cpl = cpl;
    let model = GuestModel::build(&c);
    let mut vm = host.create_vm(&model.layout, true)?;
    let mut before = Vec::new();
    vm.take_dirty_pages(&mut before)?;
    load(&mut vm, &c)?;
    let mut image = vec![0u8; 0x1000];
    vm.mem
        .read(CODE, &mut image)
        .map_err(|e| Fail::failed(e.to_string()))?;
    let r = kvmconf_harness::run::execute(&mut vm, &model, &c)?;
    ensure_eq!(r.exit, Exit::Hlt, "cpl{cpl} exit");
    let mut got = Vec::new();
    vm.take_dirty_pages(&mut got)?;
    got.sort();
    let mut want = Vec::new();
    if cpl == 3 {
        want.push((model.layout.stack_top() - 8) & !(PAGE - 1));
    }
    let mut after = vec![0u8; 0x1000];
    vm.mem
        .read(CODE, &mut after)
        .map_err(|e| Fail::failed(e.to_string()))?;
    ensure_eq!(
        got.iter().map(|p| format!("{p:#x}")).collect::<Vec<_>>(),
        want.iter().map(|p| format!("{p:#x}")).collect::<Vec<_>>(),
        "cpl{cpl}: pages in KVM_GET_DIRTY_LOG after a guest that only reads (the code page at {CODE:#x} {})",
        if after == image {
            "is byte-for-byte unchanged"
        } else {
            "changed"
        }
    );
    Ok(())
}

pub(super) fn dirty_log_bit0_is_slot_start(host: &Host) -> Outcome {
    let mut vm = vm_with_extra(host, KVM_MEM_LOG_DIRTY_PAGES)?;
    let empty = vm.try_get_dirty_log(EXTRA_SLOT, 0x10000)?;
    ensure_eq!(
        empty,
        vec![0u64],
        "bitmap of a slot the guest has not written"
    );
    run32(&mut vm, "writes", |a| {
        a.mov(dword_ptr(EXTRA_GPA + 0x3000), 1u32)?;
        a.mov(dword_ptr(EXTRA_GPA + 0x3ffc), 2u32)?;
        a.mov(dword_ptr(EXTRA_GPA + 0xf000), 3u32)?;
        a.mov(eax, dword_ptr(EXTRA_GPA + 0x5000))?;
        a.hlt()
    })?;
    let log = vm.try_get_dirty_log(EXTRA_SLOT, 0x10000)?;
    ensure_eq!(
        log,
        vec![(1u64 << 3) | (1 << 15)],
        "bitmap after writes to pages 3 and 15 of the slot"
    );
    let log = vm.try_get_dirty_log(EXTRA_SLOT, 0x10000)?;
    ensure_eq!(log, vec![0u64], "bitmap read a second time");
    Ok(())
}

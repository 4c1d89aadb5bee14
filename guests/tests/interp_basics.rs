//! The interpreter on small programs in each mode: exits, registers, stack, I/O and MMIO traces.

mod common;

use common::*;
use iced_x86::code_asm::*;
use kvmconf_guests::case::{IoIn, MmioRegion, Mode};
use kvmconf_guests::result::{Event, Exit};

/// SDM Vol. 1 §7.3: MOV/ADD and OUT; the trace holds the port write, rip is past the HLT.
#[test]
fn hello_out_then_hlt_in_every_mode() {
    for mode in [Mode::Real16, Mode::Prot32, Mode::Long64] {
        let c = case(mode, |a| {
            a.mov(al, 0x41u32)?;
            a.add(al, 1u32)?;
            a.out(0xf1, al)?;
            a.hlt()
        });
        let o = run(&c);
        assert_eq!(o.result.exit, Exit::Hlt, "{mode:?}");
        assert_eq!(
            o.result.trace,
            vec![Event::io_out(0xf1, 1, 0x42)],
            "{mode:?}"
        );
        assert_eq!(o.result.regs.rip.0, CODE + 7, "{mode:?}");
        assert_eq!(o.result.regs.rax.0, 0x42);
    }
}

/// IN takes the scripted values in order, then all-ones.
#[test]
fn in_uses_script_then_all_ones() {
    let mut c = case(Mode::Prot32, |a| {
        a.in_(al, 0x60)?;
        a.mov(bl, al)?;
        a.mov(dx, 0x61u32)?;
        a.in_(ax, dx)?;
        a.hlt()
    });
    c.io_in.push(IoIn {
        port: 0x60.into(),
        value: 0x1234.into(),
    });
    let o = run(&c);
    assert_eq!(o.result.regs.rbx.0, 0x34);
    assert_eq!(o.result.regs.rax.0, 0xffff);
    assert_eq!(
        o.result.trace,
        vec![Event::io_in(0x60, 1, 0x34), Event::io_in(0x61, 2, 0xffff)]
    );
}

/// Every MMIO access is an event; a read-modify-write is a read then a write; a page-crossing
/// access splits at the boundary.
#[test]
fn mmio_accesses_are_traced_and_split_at_pages() {
    let mut c = case(Mode::Long64, |a| {
        a.mov(rbx, 0x20_0000u64)?;
        a.mov(eax, dword_ptr(rbx))?;
        a.add(dword_ptr(rbx + 4), 5)?;
        a.mov(rcx, 0x20_0ffeu64)?;
        a.mov(dword_ptr(rcx), 0x1122_3344u32)?;
        a.mov(rdx, 0x30_0000u64)?;
        a.mov(esi, dword_ptr(rdx))?;
        a.hlt()
    });
    c.mmio.push(MmioRegion {
        addr: 0x20_0000.into(),
        len: 0x2000.into(),
        hex: kvmconf_guests::HexBytes(vec![1, 2, 3, 4, 10, 0, 0, 0]),
    });
    c.mmio.push(MmioRegion {
        addr: 0x30_0000.into(),
        len: 2.into(),
        hex: kvmconf_guests::HexBytes(vec![0xaa, 0xbb]),
    });
    let o = run(&c);
    assert_eq!(o.result.exit, Exit::Hlt);
    assert_eq!(o.result.regs.rax.0, 0x0403_0201);
    assert_eq!(
        o.result.regs.rsi.0, 0xffff_bbaa,
        "bytes past the region read as ones"
    );
    assert_eq!(
        o.result.trace,
        vec![
            Event::mmio_read(0x20_0000, 4, 0x0403_0201),
            Event::mmio_read(0x20_0004, 4, 10),
            Event::mmio_write(0x20_0004, 4, 15),
            Event::mmio_write(0x20_0ffe, 2, 0x3344),
            Event::mmio_write(0x20_1000, 2, 0x1122),
            Event::mmio_read(0x30_0000, 4, 0xffff_bbaa),
        ]
    );
}

/// Non-RAM addresses outside any region read as all-ones (prot32, paging off).
#[test]
fn unbacked_physical_reads_all_ones() {
    let c = case(Mode::Prot32, |a| {
        a.mov(eax, dword_ptr(0xfee0_0000u32))?;
        a.hlt()
    });
    let o = run(&c);
    assert_eq!(o.result.regs.rax.0, 0xffff_ffff);
    assert_eq!(
        o.result.trace,
        vec![Event::mmio_read(0xfee0_0000, 4, 0xffff_ffff)]
    );
}

/// CALL/RET, PUSH/POP and a loop in every mode.
#[test]
fn call_ret_push_pop_loop() {
    for mode in [Mode::Real16, Mode::Prot32, Mode::Long64] {
        let c = case(mode, |a| {
            let mut f = a.create_label();
            let mut top = a.create_label();
            a.mov(ecx, 5u32)?;
            a.xor(edx, edx)?;
            a.set_label(&mut top)?;
            a.add(edx, ecx)?;
            a.loop_(top)?;
            a.call(f)?;
            a.hlt()?;
            a.set_label(&mut f)?;
            a.mov(eax, 7u32)?;
            a.ret()
        });
        let o = run(&c);
        assert_eq!(o.result.exit, Exit::Hlt, "{mode:?}: {:?}", o.result.exit);
        assert_eq!(o.result.regs.rdx.0, 15, "{mode:?}");
        assert_eq!(o.result.regs.rax.0, 7, "{mode:?}");
        assert_eq!(o.result.regs.rsp.0, STACK, "{mode:?}");
    }
}

/// Dumps read memory without trace events.
#[test]
fn dump_reads_ram_without_events() {
    let mut c = case(Mode::Long64, |a| {
        a.mov(rax, 0x1122_3344_5566_7788u64)?;
        a.push(rax)?;
        a.hlt()
    });
    c.dump.push(kvmconf_guests::case::Dump {
        addr: (STACK - 8).into(),
        len: 8.into(),
    });
    let o = run(&c);
    assert_eq!(
        o.result.memory[0].hex.0,
        0x1122_3344_5566_7788u64.to_le_bytes()
    );
    assert!(o.result.trace.is_empty());
}

//! Instruction families end to end: string ops, 16-bit address wrap, flags through real programs.

mod common;

use common::*;
use iced_x86::code_asm::*;
use kvmconf_guests::case::{MemInit, Mode};
use kvmconf_guests::num::HexBytes;
use kvmconf_guests::result::Exit;

/// SDM "REP": with (E/R)CX = 0 a REP string op does nothing, flags included.
#[test]
fn rep_with_zero_count_is_a_no_op() {
    let mut c = case(Mode::Long64, |a| {
        a.xor(ecx, ecx)?; // ZF=1, PF=1
        a.mov(rsi, DATA)?;
        a.mov(rdi, DATA + 0x100)?;
        a.repe().cmpsb()?;
        a.rep().stosq()?;
        a.hlt()
    });
    c.regs.rax = Some(0x1234.into());
    let o = run(&c);
    assert_eq!(o.result.exit, Exit::Hlt);
    assert_eq!(o.result.regs.rsi.0, DATA);
    assert_eq!(o.result.regs.rdi.0, DATA + 0x100);
    assert_eq!(
        o.result.regs.rflags.0 & 0x44,
        0x44,
        "ZF and PF from the XOR survive"
    );
}

/// DF=1 walks downwards; REP MOVSW copies backwards; REPNE SCASB stops at the match.
#[test]
fn string_ops_with_df_set_and_repne() {
    let mut c = case(Mode::Prot32, |a| {
        a.std()?;
        a.mov(esi, (DATA + 6) as u32)?;
        a.mov(edi, (DATA + 0x106) as u32)?;
        a.mov(ecx, 4u32)?;
        a.rep().movsw()?;
        a.cld()?;
        a.mov(edi, DATA as u32)?;
        a.mov(al, 0x33u32)?;
        a.mov(ecx, 100u32)?;
        a.repne().scasb()?;
        a.hlt()
    });
    c.memory.push(MemInit {
        addr: DATA.into(),
        hex: HexBytes(vec![0x11, 0x11, 0x22, 0x22, 0x33, 0x33, 0x44, 0x44]),
    });
    c.dump.push(kvmconf_guests::case::Dump {
        addr: (DATA + 0x100).into(),
        len: 8.into(),
    });
    let o = run(&c);
    assert_eq!(o.result.exit, Exit::Hlt);
    assert_eq!(
        o.result.memory[0].hex.0,
        vec![0x11, 0x11, 0x22, 0x22, 0x33, 0x33, 0x44, 0x44]
    );
    assert_eq!(
        o.result.regs.rdi.0,
        DATA + 5,
        "stops one past the first 0x33"
    );
    assert_eq!(o.result.regs.rcx.0, 95);
    assert_eq!(o.result.regs.rflags.0 & 0x400, 0);
}

/// 16-bit addressing: [bx+si] wraps at 64 KiB (SDM Vol. 1 §3.7.5).
#[test]
fn sixteen_bit_address_wraps() {
    let mut c = case(Mode::Real16, |a| {
        a.mov(bx, 0xf000u32)?;
        a.mov(si, 0x1010u32)?; // 0xf000 + 0x1010 = 0x10010 → 0x0010
        a.mov(ax, word_ptr(bx + si))?;
        a.hlt()
    });
    c.memory.push(MemInit {
        addr: 0x10.into(),
        hex: HexBytes(vec![0xcd, 0xab]),
    });
    let o = run(&c);
    assert_eq!(o.result.regs.rax.0, 0xabcd);
    // The same with a 32-bit address size does not wrap: offset 0x10010 > limit → #GP.
    let mut c = case(Mode::Real16, |a| {
        a.mov(ebx, 0xf000u32)?;
        a.mov(esi, 0x1010u32)?;
        a.mov(ax, word_ptr(ebx + esi))?;
        a.hlt()
    });
    c.stubs = true;
    assert!(matches!(
        run(&c).result.exit,
        Exit::Exception { vector: 13, .. }
    ));
}

/// Segment arithmetic in real mode: DS base = selector × 16.
#[test]
fn real_mode_segments() {
    let mut c = case(Mode::Real16, |a| {
        a.mov(ax, 0x200u32)?;
        a.mov(ds, ax)?;
        a.mov(al, byte_ptr(0x5))?; // 0x2005
        a.push(ds)?;
        a.pop(es)?;
        a.hlt()
    });
    c.memory.push(MemInit {
        addr: 0x2005.into(),
        hex: HexBytes(vec![0x77]),
    });
    let o = run(&c);
    assert_eq!(o.result.regs.rax.0 & 0xff, 0x77);
    assert_eq!(o.result.segs.es.base.0, 0x2000);
}

/// Shifts end to end: masked counts leave flags alone; undefined flags are reported.
#[test]
fn shift_count_masking_and_undefined_mask() {
    let c = case(Mode::Long64, |a| {
        a.stc()?;
        a.mov(eax, 0x80u32)?;
        a.mov(cl, 32u32)?;
        a.shl(eax, cl)?; // count masks to 0: nothing changes
        a.hlt()
    });
    let o = run(&c);
    assert_eq!(o.result.regs.rax.0, 0x80);
    assert_eq!(o.result.regs.rflags.0 & 1, 1);
    assert_eq!(o.undefined, 0);
    let c = case(Mode::Long64, |a| {
        a.mov(eax, 0x80u32)?;
        a.shl(eax, 3)?;
        a.hlt()
    });
    let o = run(&c);
    assert_eq!(o.result.regs.rax.0, 0x400);
    assert_eq!(
        o.undefined, 0x810,
        "OF and AF undefined after a multi-bit SHL"
    );
}

/// ENTER/LEAVE, XCHG/XADD/CMPXCHG, BSWAP, MOVSX/MOVZX, CMOV/SETcc.
#[test]
fn data_movement_mix() {
    let c = case(Mode::Long64, |a| {
        a.mov(rbp, 0x1111u64)?;
        a.enter(16, 0)?;
        a.mov(rbx, rbp)?;
        a.leave()?;
        a.mov(eax, 5u32)?;
        a.mov(ecx, 7u32)?;
        a.xadd(eax, ecx)?; // eax=12, ecx=5
        a.mov(edx, 12u32)?;
        a.mov(r8d, 99u32)?;
        a.cmpxchg(edx, r8d)?; // eax==edx → edx=99, ZF
        a.sete(r9b)?;
        a.mov(r10d, 0x1234_5678u32)?;
        a.bswap(r10d)?;
        a.mov(r11b, 0x80u32)?;
        a.movsx(r12, r11b)?;
        a.movzx(r13d, r11b)?;
        a.hlt()
    });
    let o = run(&c);
    let r = &o.result.regs;
    assert_eq!(r.rbx.0, STACK - 8);
    assert_eq!(r.rbp.0, 0x1111);
    assert_eq!(r.rsp.0, STACK);
    assert_eq!((r.rax.0, r.rcx.0, r.rdx.0, r.r9.0), (12, 5, 99, 1));
    assert_eq!(r.r10.0, 0x7856_3412);
    assert_eq!(r.r12.0, u64::MAX - 0x7f);
    assert_eq!(r.r13.0, 0x80);
}

/// MUL/IMUL/DIV register pairs and DAA in 32-bit mode.
#[test]
fn mul_div_and_bcd() {
    let c = case(Mode::Prot32, |a| {
        a.mov(eax, 0x8000_0000u32)?;
        a.mov(ecx, 4u32)?;
        a.mul(ecx)?; // edx:eax = 2:0
        a.mov(ebx, eax)?;
        a.mov(esi, edx)?;
        a.mov(eax, 100u32)?;
        a.xor(edx, edx)?;
        a.mov(ecx, 7u32)?;
        a.div(ecx)?; // 14 r 2
        a.imul_3(edi, ecx, -3)?;
        a.mov(al, 0x79u32)?;
        a.add(al, 0x35u32)?;
        a.daa()?;
        a.hlt()
    });
    let o = run(&c);
    let r = &o.result.regs;
    assert_eq!((r.rbx.0, r.rsi.0, r.rdx.0), (0, 2, 2));
    assert_eq!(r.rdi.0, (-21i32) as u32 as u64);
    assert_eq!(r.rax.0 & 0xff, 0x14);
}

/// Found by the KVM differential at CPL3 (native): a failed CMPXCHG leaves a 32-bit register
/// destination alone (no zero-extension); a shift by 0 still writes (zero-extends) it.
#[test]
fn cmpxchg_failure_and_shift_by_zero_on_32_bit_registers() {
    let mut c = case(Mode::Long64, |a| {
        a.cmpxchg(r12d, r11d)?; // eax = 1 ≠ r12d = 0: fails
        a.shrd(r13d, r10d, 0)?;
        a.hlt()
    });
    c.regs.rax = Some(1.into());
    c.regs.r12 = Some(0x8000_0000_0000_0000.into());
    c.regs.r13 = Some(0xffff_ffff_ffff_ff00.into());
    let o = run(&c);
    assert_eq!(o.result.regs.r12.0, 0x8000_0000_0000_0000);
    assert_eq!(o.result.regs.rax.0, 0);
    assert_eq!(o.result.regs.r13.0, 0xffff_ff00);
}

/// SDM 2 CMPXCHG: "the destination operand is written back if the comparison fails" — found by the
/// differential with the data region as MMIO: the failed compare reads and then writes the old
/// value, both visible in the trace.
#[test]
fn cmpxchg_failure_writes_memory_destination_back() {
    let mut c = case(Mode::Long64, |a| {
        a.mov(ebx, 0xd000_0000u32)?;
        a.cmpxchg(dword_ptr(rbx), ecx)?; // eax = 1 ≠ 0x0a: fails
        a.hlt()
    });
    c.regs.rax = Some(1.into());
    c.mmio.push(kvmconf_guests::case::MmioRegion {
        addr: 0xd000_0000.into(),
        len: 0x10.into(),
        hex: HexBytes(vec![0x0a, 0, 0, 0]),
    });
    let o = run(&c);
    assert_eq!(o.result.exit, Exit::Hlt);
    assert_eq!(o.result.regs.rax.0, 0x0a);
    use kvmconf_guests::result::Event;
    assert_eq!(
        o.result.trace,
        vec![
            Event::mmio_read(0xd000_0000, 4, 0x0a),
            Event::mmio_write(0xd000_0000, 4, 0x0a)
        ]
    );
}

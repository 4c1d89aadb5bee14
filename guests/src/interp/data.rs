//! MOV/MOVZX/MOVSX/MOVSXD/LEA/XCHG/XADD/CMPXCHG, CMOVcc/SETcc, CBW-family and CWD-family
//! conversions, LAHF/SAHF, XLAT, and moves to and from segment registers.

use super::decode::{DataOp, FastFn};
use super::flags::{self, AF, CF, FIXED, PF, SF, STATUS, ZF, mask, sext};
use super::{Fault, Machine, Res};
use crate::case::Mode;
use iced_x86::{Instruction, Mnemonic, OpKind, Register};

/// The flags SAHF loads from AH and LAHF stores into it.
pub const AH_FLAGS: u64 = SF | ZF | AF | PF | CF;

/// MOV between registers, or of an immediate into one, on `SIZE`-byte operands: the decode-time
/// specialised form of [`DataOp::Mov`].
fn mov_fast<const SIZE: u32, const IMM: bool>(m: &mut Machine, d: usize, s: usize, imm: u64) {
    let (d, s) = (d % 16, s % 16); // register numbers: lets the compiler drop the bounds checks
    let v = if IMM { imm } else { m.cpu.gpr[s] } & mask(SIZE);
    m.set_gpr(d, SIZE, v);
}

/// The [`mov_fast`] instance for `size`-byte registers, with an immediate source if `imm`.
pub(crate) fn mov_fast_fn(size: u32, imm: bool) -> Option<FastFn> {
    Some(match (size, imm) {
        (1, false) => mov_fast::<1, false>,
        (2, false) => mov_fast::<2, false>,
        (4, false) => mov_fast::<4, false>,
        (8, false) => mov_fast::<8, false>,
        (1, true) => mov_fast::<1, true>,
        (2, true) => mov_fast::<2, true>,
        (4, true) => mov_fast::<4, true>,
        (8, true) => mov_fast::<8, true>,
        _ => return None,
    })
}

impl Machine {
    pub(crate) fn data(&mut self, ins: &Instruction, op: DataOp) -> Res {
        match op {
            DataOp::Mov => {
                let size = Self::op_size(ins, 0);
                let v = self.read_op(ins, 1, size, false)?;
                self.write_op(ins, 0, size, v)?;
            }
            DataOp::Movzx | DataOp::Movsx => {
                let (ds, ss) = (Self::op_size(ins, 0), Self::op_size(ins, 1));
                let v = self.read_op(ins, 1, ss, false)?;
                let v = if op == DataOp::Movsx { sext(v, ss) } else { v };
                self.set_reg(ins.op0_register(), v & mask(ds));
            }
            DataOp::Lea => {
                let v = self.ea(ins);
                let ds = Self::op_size(ins, 0);
                self.set_reg(ins.op0_register(), v & mask(ds));
            }
            DataOp::Xchg => {
                let size = Self::op_size(ins, 0);
                let (mi, ri) = if ins.op0_kind() == OpKind::Memory {
                    (0, 1)
                } else {
                    (1, 0)
                };
                let rv = self.reg(ins.op_register(ri));
                if ins.op_kind(mi) == OpKind::Memory {
                    let m = self.mem_op(ins);
                    let mv = self.read_m(m, size, true)?;
                    self.write_m(m, size, rv)?;
                    self.set_reg(ins.op_register(ri), mv);
                } else {
                    let (a, b) = (ins.op0_register(), ins.op1_register());
                    let (va, vb) = (self.reg(a), self.reg(b));
                    self.set_reg(a, vb);
                    self.set_reg(b, va);
                }
            }
            DataOp::Xadd => {
                let size = Self::op_size(ins, 0);
                let d = self.read_op(ins, 0, size, true)?;
                let s = self.reg(ins.op1_register());
                let (sum, f) = flags::add(d, s, 0, size);
                if ins.op0_kind() == OpKind::Memory {
                    self.write_op(ins, 0, size, sum)?;
                    self.set_reg(ins.op1_register(), d);
                } else {
                    self.set_reg(ins.op1_register(), d);
                    self.set_reg(ins.op0_register(), sum);
                }
                self.set_flags(STATUS, f);
            }
            DataOp::Cmpxchg => {
                let size = Self::op_size(ins, 0);
                let d = self.read_op(ins, 0, size, true)?;
                let acc = self.cpu.gpr[0] & mask(size);
                let (_, f) = flags::sub(acc, d, 0, size);
                let src = self.reg(ins.op1_register());
                if acc == d {
                    self.write_op(ins, 0, size, src)?;
                } else {
                    // On failure a memory destination gets a write cycle with its own value (SDM 2
                    // CMPXCHG: "the destination operand is written back if the comparison fails"),
                    // visible as an MMIO write. A register destination is left alone: a 32-bit
                    // register keeps its upper half, as the CPU does at CPL3 (the SDM pseudo-code's
                    // `DEST := TEMP` would clear it; KVM's emulator does, a recorded deviation).
                    if ins.op0_kind() == OpKind::Memory {
                        self.write_op(ins, 0, size, d)?;
                    }
                    self.set_gpr(0, size, d);
                }
                self.set_flags(STATUS, f);
            }
            DataOp::Cmov => {
                let size = Self::op_size(ins, 0);
                let v = self.read_op(ins, 1, size, false)?;
                let r = ins.op0_register();
                if flags::cond(ins.condition_code(), self.cpu.rflags) {
                    self.set_reg(r, v);
                } else if size == 4 {
                    let old = self.reg(r);
                    self.set_reg(r, old);
                }
            }
            DataOp::Setcc => {
                let v = u64::from(flags::cond(ins.condition_code(), self.cpu.rflags));
                self.write_op(ins, 0, 1, v)?;
            }
            DataOp::ExtendAcc => {
                let (from, to) = match ins.mnemonic() {
                    Mnemonic::Cbw => (1, 2),
                    Mnemonic::Cwde => (2, 4),
                    _ => (4, 8),
                };
                let v = sext(self.cpu.gpr[0] & mask(from), from);
                self.set_gpr(0, to, v);
            }
            DataOp::ExtendDx => {
                let size = match ins.mnemonic() {
                    Mnemonic::Cwd => 2,
                    Mnemonic::Cdq => 4,
                    _ => 8,
                };
                let neg = self.cpu.gpr[0] & flags::sign(size) != 0;
                self.set_gpr(2, size, if neg { u64::MAX } else { 0 });
            }
            DataOp::Lahf => {
                let v = (self.cpu.rflags & AH_FLAGS) | FIXED;
                self.set_reg(Register::AH, v);
            }
            DataOp::Sahf => {
                let ah = self.reg(Register::AH);
                self.set_flags(AH_FLAGS, ah);
            }
            DataOp::Xlat => {
                let m = self.mem_op(ins);
                let v = self.read_m(m, 1, false)?;
                self.set_reg(Register::AL, v);
            }
            DataOp::MovFromSeg => {
                let sel = u64::from(self.seg(ins.op1_register()).selector);
                if ins.op0_kind() == OpKind::Memory {
                    let m = self.mem_op(ins);
                    self.write_m(m, 2, sel)?;
                } else {
                    self.set_reg(ins.op0_register(), sel);
                }
            }
            DataOp::MovToSeg => {
                let sel = self.read_op(ins, 1, 2, false)? as u16;
                self.load_seg(ins.op0_register(), sel)?;
            }
        }
        Ok(())
    }

    /// Loads segment register `r` with selector `sel` (real mode: base = sel × 16; otherwise the GDT
    /// descriptor, with the SDM's type, privilege and presence checks).
    pub(crate) fn load_seg(&mut self, r: Register, sel: u16) -> Res {
        if self.mode == Mode::Real16 {
            let s = self.seg_mut(r);
            s.selector = sel;
            s.base = u64::from(sel) << 4;
            return Ok(());
        }
        if sel & 0xfffc == 0 {
            return Err(Fault::unsupported(
                "loading a null selector (KVM's unusable-segment state is not modelled)",
            ));
        }
        let err = Fault::Exc(13, Some(u32::from(sel & 0xfffc)));
        let d = self.load_descriptor(sel)?;
        let (rpl, dpl) = ((sel & 3) as u8, d.dpl());
        let typ = d.attributes & 0xf;
        let code = typ & 0x8 != 0;
        if d.attributes & 0x10 == 0 {
            return Err(err);
        }
        let present = d.attributes & crate::layout::attr::P != 0;
        if r == Register::SS {
            if rpl != self.cpl || dpl != self.cpl || code || typ & 0x2 == 0 {
                return Err(err);
            }
            if !present {
                return Err(Fault::Exc(12, Some(u32::from(sel & 0xfffc))));
            }
        } else {
            if code && typ & 0x2 == 0 {
                return Err(err);
            }
            let conforming = code && typ & 0x4 != 0;
            if !conforming && (rpl > dpl || self.cpl > dpl) {
                return Err(err);
            }
            if !present {
                return Err(Fault::Exc(11, Some(u32::from(sel & 0xfffc))));
            }
        }
        let mut d = d;
        d.attributes |= 1; // accessed
        *self.seg_mut(r) = d;
        Ok(())
    }
}

//! ADD/ADC/SUB/SBB/CMP/AND/OR/XOR/TEST and INC/DEC/NEG/NOT.

use super::decode::{AluOp, FastFn, UnOp};
use super::flags::{self, CF, STATUS, mask};
use super::{Machine, Res};
use iced_x86::Instruction;

/// The ALU operations in declaration order, so a const generic `AluOp as u8` maps back.
const ALU_OPS: [AluOp; 9] = [
    AluOp::Add,
    AluOp::Adc,
    AluOp::Sub,
    AluOp::Sbb,
    AluOp::Cmp,
    AluOp::And,
    AluOp::Or,
    AluOp::Xor,
    AluOp::Test,
];

/// The one-operand operations in declaration order (see [`ALU_OPS`]).
const UN_OPS: [UnOp; 4] = [UnOp::Inc, UnOp::Dec, UnOp::Neg, UnOp::Not];

/// Result and status flags of a two-operand ALU operation (`cf` is the incoming carry).
#[inline(always)]
pub fn alu(op: AluOp, a: u64, b: u64, cf: bool, size: u32) -> (u64, u64) {
    match op {
        AluOp::Add => flags::add(a, b, 0, size),
        AluOp::Adc => flags::add(a, b, u64::from(cf), size),
        AluOp::Sub | AluOp::Cmp => flags::sub(a, b, 0, size),
        AluOp::Sbb => flags::sub(a, b, u64::from(cf), size),
        AluOp::And | AluOp::Test => {
            let r = a & b & flags::mask(size);
            (r, flags::logic(r, size))
        }
        AluOp::Or => {
            let r = (a | b) & flags::mask(size);
            (r, flags::logic(r, size))
        }
        AluOp::Xor => {
            let r = (a ^ b) & flags::mask(size);
            (r, flags::logic(r, size))
        }
    }
}

/// Result and flags of a one-operand operation; `fl` is the old RFLAGS (INC/DEC keep CF).
#[inline(always)]
pub fn unary(op: UnOp, a: u64, fl: u64, size: u32) -> (u64, u64) {
    match op {
        UnOp::Inc => {
            let (r, f) = flags::add(a, 1, 0, size);
            (r, (f & !CF) | (fl & CF))
        }
        UnOp::Dec => {
            let (r, f) = flags::sub(a, 1, 0, size);
            (r, (f & !CF) | (fl & CF))
        }
        UnOp::Neg => {
            let (r, f) = flags::sub(0, a, 0, size);
            (r, f)
        }
        UnOp::Not => (!a & flags::mask(size), fl),
    }
}

/// [`Machine::alu`] on registers: `OP d, s` (or `OP d, imm` with `IMM`) with `OP` an `AluOp as u8`
/// and `SIZE`-byte operands.
fn alu_fast<const OP: u8, const SIZE: u32, const IMM: bool>(
    m: &mut Machine,
    d: usize,
    s: usize,
    imm: u64,
) {
    let (d, s) = (d % 16, s % 16); // register numbers: lets the compiler drop the bounds checks
    let op = ALU_OPS[OP as usize];
    let a = m.cpu.gpr[d] & mask(SIZE);
    let b = if IMM { imm } else { m.cpu.gpr[s] } & mask(SIZE);
    let (r, f) = alu(op, a, b, m.flag(CF), SIZE);
    if !matches!(op, AluOp::Cmp | AluOp::Test) {
        m.set_gpr(d, SIZE, r);
    }
    m.set_flags(STATUS, f);
}

/// The [`alu_fast`] instance for `op` on `size`-byte registers, with an immediate source if `imm`.
pub(crate) fn alu_fast_fn(op: AluOp, size: u32, imm: bool) -> Option<FastFn> {
    fn by_op<const SIZE: u32, const IMM: bool>(op: AluOp) -> FastFn {
        match op {
            AluOp::Add => alu_fast::<{ AluOp::Add as u8 }, SIZE, IMM>,
            AluOp::Adc => alu_fast::<{ AluOp::Adc as u8 }, SIZE, IMM>,
            AluOp::Sub => alu_fast::<{ AluOp::Sub as u8 }, SIZE, IMM>,
            AluOp::Sbb => alu_fast::<{ AluOp::Sbb as u8 }, SIZE, IMM>,
            AluOp::Cmp => alu_fast::<{ AluOp::Cmp as u8 }, SIZE, IMM>,
            AluOp::And => alu_fast::<{ AluOp::And as u8 }, SIZE, IMM>,
            AluOp::Or => alu_fast::<{ AluOp::Or as u8 }, SIZE, IMM>,
            AluOp::Xor => alu_fast::<{ AluOp::Xor as u8 }, SIZE, IMM>,
            AluOp::Test => alu_fast::<{ AluOp::Test as u8 }, SIZE, IMM>,
        }
    }
    Some(match (size, imm) {
        (1, false) => by_op::<1, false>(op),
        (2, false) => by_op::<2, false>(op),
        (4, false) => by_op::<4, false>(op),
        (8, false) => by_op::<8, false>(op),
        (1, true) => by_op::<1, true>(op),
        (2, true) => by_op::<2, true>(op),
        (4, true) => by_op::<4, true>(op),
        (8, true) => by_op::<8, true>(op),
        _ => return None,
    })
}

/// [`Machine::unary`] on a register: `OP d` with `OP` a `UnOp as u8` and a `SIZE`-byte operand.
fn unary_fast<const OP: u8, const SIZE: u32>(m: &mut Machine, d: usize, _: usize, _: u64) {
    let d = d % 16; // a register number: lets the compiler drop the bounds checks
    let op = UN_OPS[OP as usize];
    let a = m.cpu.gpr[d] & mask(SIZE);
    let (r, f) = unary(op, a, m.cpu.rflags, SIZE);
    m.set_gpr(d, SIZE, r);
    if op != UnOp::Not {
        m.set_flags(STATUS, f);
    }
}

/// The [`unary_fast`] instance for `op` on a `size`-byte register.
pub(crate) fn unary_fast_fn(op: UnOp, size: u32) -> Option<FastFn> {
    fn by_op<const SIZE: u32>(op: UnOp) -> FastFn {
        match op {
            UnOp::Inc => unary_fast::<{ UnOp::Inc as u8 }, SIZE>,
            UnOp::Dec => unary_fast::<{ UnOp::Dec as u8 }, SIZE>,
            UnOp::Neg => unary_fast::<{ UnOp::Neg as u8 }, SIZE>,
            UnOp::Not => unary_fast::<{ UnOp::Not as u8 }, SIZE>,
        }
    }
    Some(match size {
        1 => by_op::<1>(op),
        2 => by_op::<2>(op),
        4 => by_op::<4>(op),
        8 => by_op::<8>(op),
        _ => return None,
    })
}

impl Machine {
    pub(crate) fn alu(&mut self, ins: &Instruction, op: AluOp) -> Res {
        // One copy per operand size, so the flag arithmetic works on a constant size.
        match self.size0(ins) {
            1 => self.alu_sized(ins, op, 1),
            2 => self.alu_sized(ins, op, 2),
            4 => self.alu_sized(ins, op, 4),
            8 => self.alu_sized(ins, op, 8),
            size => self.alu_sized(ins, op, size),
        }
    }

    /// [`Machine::alu`] with the operand size as an argument that is a constant at each call.
    #[inline(always)]
    fn alu_sized(&mut self, ins: &Instruction, op: AluOp, size: u32) -> Res {
        let writes = !matches!(op, AluOp::Cmp | AluOp::Test);
        let a = self.read_op(ins, 0, size, writes)?;
        let b = self.read_op(ins, 1, size, false)?;
        let (r, f) = alu(op, a, b, self.flag(CF), size);
        if writes {
            self.write_op(ins, 0, size, r)?;
        }
        self.set_flags(STATUS, f);
        Ok(())
    }

    pub(crate) fn unary(&mut self, ins: &Instruction, op: UnOp) -> Res {
        let size = self.size0(ins);
        let a = self.read_op(ins, 0, size, true)?;
        let (r, f) = unary(op, a, self.cpu.rflags, size);
        self.write_op(ins, 0, size, r)?;
        if op != UnOp::Not {
            self.set_flags(STATUS, f);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::flags::*;

    #[test]
    fn op_tables_follow_declaration_order() {
        for (i, op) in ALU_OPS.iter().enumerate() {
            assert_eq!(*op as usize, i);
        }
        for (i, op) in UN_OPS.iter().enumerate() {
            assert_eq!(*op as usize, i);
        }
    }

    #[test]
    fn adc_sbb_use_carry_in() {
        assert_eq!(alu(AluOp::Adc, 0xff, 0, true, 1), (0, CF | ZF | PF | AF));
        assert_eq!(
            alu(AluOp::Sbb, 0, 0, true, 4),
            (0xffff_ffff, CF | SF | PF | AF)
        );
    }

    #[test]
    fn logic_clears_cf_of() {
        assert_eq!(alu(AluOp::Xor, 0x5a, 0x5a, true, 1), (0, ZF | PF));
        assert_eq!(alu(AluOp::Or, 0x8000, 0, false, 2), (0x8000, SF | PF));
    }

    #[test]
    fn inc_dec_keep_cf_neg_sets_it() {
        assert_eq!(unary(UnOp::Inc, 0x7f, CF, 1), (0x80, CF | OF | SF | AF));
        assert_eq!(unary(UnOp::Dec, 0, 0, 2), (0xffff, SF | PF | AF));
        assert_eq!(unary(UnOp::Neg, 0, 0, 4).1 & CF, 0, "NEG 0 clears CF");
        assert_eq!(unary(UnOp::Neg, 0x80, 0, 1), (0x80, CF | OF | SF));
    }
}

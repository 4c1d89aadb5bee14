//! ADD/ADC/SUB/SBB/CMP/AND/OR/XOR/TEST and INC/DEC/NEG/NOT.

use super::decode::{AluOp, UnOp};
use super::flags::{self, CF, STATUS};
use super::{Machine, Res};
use iced_x86::Instruction;

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
#[inline]
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

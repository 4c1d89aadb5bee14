//! MUL, IMUL (one, two and three operands), DIV and IDIV with #DE on a zero divisor or overflow.

use super::decode::{FastFn, MulOp};
use super::flags::{CF, OF, STATUS, mask, sext, szp};
use super::{DE, Machine, Res};
use iced_x86::Instruction;

/// Unsigned `a × b` of `size`-byte operands: (low, high, flags with CF = OF = high ≠ 0).
pub fn mul(a: u64, b: u64, size: u32) -> (u64, u64, u64) {
    let full = u128::from(a & mask(size)) * u128::from(b & mask(size));
    let bits = size * 8;
    let lo = (full as u64) & mask(size);
    let hi = ((full >> bits) as u64) & mask(size);
    let f = if hi != 0 { CF | OF } else { 0 };
    (lo, hi, f | szp(lo, size))
}

/// Signed `a × b`: (low, high, flags with CF = OF = the product does not fit in `size` bytes).
#[inline(always)]
pub fn imul(a: u64, b: u64, size: u32) -> (u64, u64, u64) {
    let full = i128::from(sext(a, size) as i64) * i128::from(sext(b, size) as i64);
    let bits = size * 8;
    let lo = (full as u64) & mask(size);
    let hi = ((full >> bits) as u64) & mask(size);
    let fits = i128::from(sext(lo, size) as i64) == full;
    let f = if fits { 0 } else { CF | OF };
    (lo, hi, f | szp(lo, size))
}

/// Unsigned `(hi:lo) ÷ d`: (quotient, remainder), or `None` for #DE.
pub fn div(lo: u64, hi: u64, d: u64, size: u32) -> Option<(u64, u64)> {
    let m = mask(size);
    let d = u128::from(d & m);
    if d == 0 {
        return None;
    }
    let n = (u128::from(hi & m) << (size * 8)) | u128::from(lo & m);
    let q = n / d;
    (q <= u128::from(m)).then(|| (q as u64, (n % d) as u64))
}

/// Signed `(hi:lo) ÷ d`: (quotient, remainder), or `None` for #DE.
pub fn idiv(lo: u64, hi: u64, d: u64, size: u32) -> Option<(u64, u64)> {
    let m = mask(size);
    let bits = size * 8;
    let d = i128::from(sext(d, size) as i64);
    if d == 0 {
        return None;
    }
    let n = ((u128::from(hi & m) << bits) | u128::from(lo & m)) as i128;
    let n = (n << (128 - 2 * bits)) >> (128 - 2 * bits);
    let q = n.checked_div(d)?;
    let r = n % d;
    let (min, max) = (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1);
    (q >= min && q <= max).then_some(((q as u64) & m, (r as u64) & m))
}

/// Two- and three-operand IMUL on registers: `imul d, s` or, with `IMM`, `imul d, s, imm`, on
/// `SIZE`-byte operands (the decode-time specialised form of [`Machine::muldiv`]).
fn imul_fast<const SIZE: u32, const IMM: bool>(m: &mut Machine, d: usize, s: usize, imm: u64) {
    let (d, s) = (d % 16, s % 16); // register numbers: lets the compiler drop the bounds checks
    let g = &m.cpu.gpr;
    let (x, y) = if IMM {
        (g[s] & mask(SIZE), imm & mask(SIZE))
    } else {
        (g[d] & mask(SIZE), g[s] & mask(SIZE))
    };
    let (lo, _, f) = imul(x, y, SIZE);
    m.set_gpr(d, SIZE, lo);
    m.set_flags(STATUS, f);
}

/// The [`imul_fast`] instance for `size`-byte registers, three-operand if `imm`.
pub(crate) fn imul_fast_fn(size: u32, imm: bool) -> Option<FastFn> {
    Some(match (size, imm) {
        (2, false) => imul_fast::<2, false>,
        (4, false) => imul_fast::<4, false>,
        (8, false) => imul_fast::<8, false>,
        (2, true) => imul_fast::<2, true>,
        (4, true) => imul_fast::<4, true>,
        (8, true) => imul_fast::<8, true>,
        _ => return None,
    })
}

impl Machine {
    /// Reads the implicit accumulator pair for `size`: (low, high).
    fn acc_pair(&self, size: u32) -> (u64, u64) {
        let g = &self.cpu.gpr;
        match size {
            1 => (g[0] & 0xff, (g[0] >> 8) & 0xff),
            _ => (g[0] & mask(size), g[2] & mask(size)),
        }
    }

    fn set_acc_pair(&mut self, size: u32, lo: u64, hi: u64) {
        if size == 1 {
            self.set_gpr(0, 2, (hi << 8) | lo);
        } else {
            self.set_gpr(0, size, lo);
            self.set_gpr(2, size, hi);
        }
    }

    pub(crate) fn muldiv(&mut self, ins: &Instruction, op: MulOp) -> Res {
        match op {
            MulOp::Mul | MulOp::Imul1 => {
                let size = Self::op_size(ins, 0);
                let src = self.read_op(ins, 0, size, false)?;
                let a = self.acc_pair(size).0;
                let (lo, hi, f) = if op == MulOp::Mul {
                    mul(a, src, size)
                } else {
                    imul(a, src, size)
                };
                self.set_acc_pair(size, lo, hi);
                self.set_flags(STATUS, f);
            }
            MulOp::Imul2 | MulOp::Imul3 => {
                let size = Self::op_size(ins, 0);
                let (x, y) = if op == MulOp::Imul2 {
                    (
                        self.reg(ins.op0_register()),
                        self.read_op(ins, 1, size, false)?,
                    )
                } else {
                    (
                        self.read_op(ins, 1, size, false)?,
                        ins.immediate(2) & mask(size),
                    )
                };
                let (lo, _, f) = imul(x, y, size);
                self.set_reg(ins.op0_register(), lo);
                self.set_flags(STATUS, f);
            }
            MulOp::Div | MulOp::Idiv => {
                let size = Self::op_size(ins, 0);
                let d = self.read_op(ins, 0, size, false)?;
                let (lo, hi) = self.acc_pair(size);
                let r = if op == MulOp::Div {
                    div(lo, hi, d, size)
                } else {
                    idiv(lo, hi, d, size)
                };
                let (q, r) = r.ok_or(DE)?;
                self.set_acc_pair(size, q, r);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mul_sets_cf_of_when_high_half_is_nonzero() {
        assert_eq!(mul(0x80, 2, 1).1, 1);
        assert_eq!(mul(0x80, 2, 1).2 & (CF | OF), CF | OF);
        assert_eq!(mul(u64::MAX, u64::MAX, 8).0, 1);
        assert_eq!(mul(u64::MAX, u64::MAX, 8).1, u64::MAX - 1);
    }

    #[test]
    fn imul_overflow_detects_signed_range() {
        assert_eq!(imul(0xff, 0xff, 1).2 & CF, 0, "-1 * -1 = 1 fits");
        assert_eq!(
            imul(0x40, 2, 1).2 & CF,
            CF,
            "64 * 2 = 128 does not fit in i8"
        );
        assert_eq!(
            imul(0xffff_ffff, 0x8000_0000, 4).2 & OF,
            OF,
            "-1 * INT_MIN overflows"
        );
    }

    #[test]
    fn div_overflow_and_zero_raise_de() {
        assert_eq!(
            div(0, 1, 1, 1),
            None,
            "AX=0x100 / 1 = 0x100 does not fit AL"
        );
        assert_eq!(div(5, 0, 0, 4), None);
        assert_eq!(div(7, 0, 2, 2), Some((3, 1)));
        assert_eq!(
            idiv(0x8000_0000, 0xffff_ffff, 0xffff_ffff, 4),
            None,
            "INT_MIN / -1"
        );
        assert_eq!(
            idiv(0xfff9, 0xffff, 2, 2),
            Some((0xfffd, 0xffff)),
            "-7 / 2 = -3 r -1"
        );
        assert_eq!(
            idiv(0x80, 0xff, 0xff, 1),
            None,
            "AX=-128 / -1 = 128 does not fit AL"
        );
        assert_eq!(idiv(0x80, 0xff, 0x02, 1), Some((0xc0, 0)), "-128 / 2 = -64");
    }
}

//! SHL/SAL/SHR/SAR/ROL/ROR/RCL/RCR and SHLD/SHRD, with the SDM's count masking and flag rules.

use super::decode::{FastFn, ShOp};
use super::flags::{AF, CF, OF, STATUS, mask, sext, szp};
use super::{Fault, Machine, Res};
use iced_x86::Instruction;

/// The shift operations in declaration order, so a const generic `ShOp as u8` maps back.
const SH_OPS: [ShOp; 7] = [
    ShOp::Rol,
    ShOp::Ror,
    ShOp::Rcl,
    ShOp::Rcr,
    ShOp::Shl,
    ShOp::Shr,
    ShOp::Sar,
];

/// The effect of a shift: result, new flag values, flags modified, flags left undefined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shifted {
    /// The result.
    pub res: u64,
    /// Flag values (only bits in `modified` matter).
    pub flags: u64,
    /// Flags the instruction writes.
    pub modified: u64,
    /// Flags whose value is undefined afterwards.
    pub undefined: u64,
}

/// The count mask: 0x3f for 64-bit operands, 0x1f otherwise.
#[inline]
pub fn count_mask(size: u32) -> u64 {
    if size == 8 { 0x3f } else { 0x1f }
}

/// A shift or rotate of the `size`-byte `a` by `count` (before masking); `None` if the masked count
/// is 0 (nothing changes, flags included).
#[inline(always)]
pub fn shift(op: ShOp, a: u64, count: u64, cf_in: bool, size: u32) -> Option<Shifted> {
    let m = mask(size);
    let a = a & m;
    let bits = u64::from(size) * 8;
    let cnt = count & count_mask(size);
    if cnt == 0 {
        return None;
    }
    let msb = |v: u64| (v >> (bits - 1)) & 1;
    let of_undef = if cnt == 1 { 0 } else { OF };
    let s = match op {
        ShOp::Shl => {
            let res = if cnt < bits { (a << cnt) & m } else { 0 };
            let cf = if cnt <= bits {
                (a >> (bits - cnt)) & 1
            } else {
                0
            };
            let of = if cnt == 1 { (msb(res) ^ cf) * OF } else { 0 };
            Shifted {
                res,
                flags: szp(res, size) | cf | of,
                modified: STATUS,
                undefined: AF | of_undef | if cnt >= bits { CF } else { 0 },
            }
        }
        ShOp::Shr => {
            let res = if cnt < bits { a >> cnt } else { 0 };
            let cf = if cnt <= bits { (a >> (cnt - 1)) & 1 } else { 0 };
            let of = if cnt == 1 { msb(a) * OF } else { 0 };
            Shifted {
                res,
                flags: szp(res, size) | cf | of,
                modified: STATUS,
                undefined: AF | of_undef | if cnt >= bits { CF } else { 0 },
            }
        }
        ShOp::Sar => {
            let sa = sext(a, size) as i64;
            let res = (sa >> cnt.min(63)) as u64 & m;
            let cf = ((sa >> (cnt - 1).min(63)) as u64) & 1;
            Shifted {
                res,
                flags: szp(res, size) | cf,
                modified: STATUS,
                undefined: AF | of_undef,
            }
        }
        ShOp::Rol | ShOp::Ror => {
            let rc = cnt % bits;
            let res = if rc == 0 {
                a
            } else if op == ShOp::Rol {
                ((a << rc) | (a >> (bits - rc))) & m
            } else {
                ((a >> rc) | (a << (bits - rc))) & m
            };
            let (cf, of) = if op == ShOp::Rol {
                let cf = res & 1;
                (cf, msb(res) ^ cf)
            } else {
                (msb(res), msb(res) ^ ((res >> (bits - 2)) & 1))
            };
            Shifted {
                res,
                flags: cf | if cnt == 1 { of * OF } else { 0 },
                modified: CF | OF,
                undefined: of_undef,
            }
        }
        ShOp::Rcl | ShOp::Rcr => {
            let tmp = match size {
                1 => cnt % 9,
                2 => cnt % 17,
                _ => cnt,
            };
            let w = bits + 1;
            let v = u128::from(a) | (u128::from(cf_in) << bits);
            let wm = (1u128 << w) - 1;
            let r = if tmp == 0 {
                v
            } else if op == ShOp::Rcl {
                ((v << tmp) | (v >> (w - tmp))) & wm
            } else {
                ((v >> tmp) | (v << (w - tmp))) & wm
            };
            let res = (r as u64) & m;
            let cf = ((r >> bits) & 1) as u64;
            let of = if op == ShOp::Rcl {
                msb(res) ^ cf
            } else {
                msb(a) ^ u64::from(cf_in)
            };
            Shifted {
                res,
                flags: cf | if cnt == 1 { of * OF } else { 0 },
                modified: CF | OF,
                undefined: of_undef,
            }
        }
    };
    Some(s)
}

/// SHLD (`left`) or SHRD of `a` filled from `b` by `count` (before masking). `None` when the masked
/// count is 0; `Err(())` when it exceeds the operand size (16-bit only: result undefined).
#[allow(clippy::result_unit_err)]
pub fn shift_double(
    left: bool,
    a: u64,
    b: u64,
    count: u64,
    size: u32,
) -> Result<Option<Shifted>, ()> {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    let bits = u64::from(size) * 8;
    let cnt = count & count_mask(size);
    if cnt == 0 {
        return Ok(None);
    }
    if cnt > bits {
        return Err(());
    }
    let msb = |v: u64| (v >> (bits - 1)) & 1;
    let (res, cf) = if left {
        let v = (u128::from(a) << bits) | u128::from(b);
        ((((v << cnt) >> bits) as u64) & m, (a >> (bits - cnt)) & 1)
    } else {
        let v = (u128::from(b) << bits) | u128::from(a);
        (((v >> cnt) as u64) & m, (a >> (cnt - 1)) & 1)
    };
    let of = if cnt == 1 {
        (msb(res) ^ msb(a)) * OF
    } else {
        0
    };
    Ok(Some(Shifted {
        res,
        flags: szp(res, size) | cf | of,
        modified: STATUS,
        undefined: AF | if cnt == 1 { 0 } else { OF },
    }))
}

/// [`Machine::shift`] of a register by an immediate count (non-zero once masked, which the decoder
/// checks): `OP d, count` with `OP` a `ShOp as u8` and a `SIZE`-byte operand. The flags it writes
/// and leaves undefined depend only on the count, so the decoder records them in the entry.
fn shift_fast<const OP: u8, const SIZE: u32>(m: &mut Machine, d: usize, _: usize, count: u64) {
    let d = d % 16; // a register number: lets the compiler drop the bounds checks
    let a = m.cpu.gpr[d] & mask(SIZE);
    let s =
        shift(SH_OPS[OP as usize], a, count & 0xff, m.flag(CF), SIZE).expect("count is not zero");
    m.set_gpr(d, SIZE, s.res);
    m.set_flags(s.modified, s.flags);
}

/// The [`shift_fast`] instance for `op` on a `size`-byte register.
pub(crate) fn shift_fast_fn(op: ShOp, size: u32) -> Option<FastFn> {
    fn by_op<const SIZE: u32>(op: ShOp) -> FastFn {
        match op {
            ShOp::Rol => shift_fast::<{ ShOp::Rol as u8 }, SIZE>,
            ShOp::Ror => shift_fast::<{ ShOp::Ror as u8 }, SIZE>,
            ShOp::Rcl => shift_fast::<{ ShOp::Rcl as u8 }, SIZE>,
            ShOp::Rcr => shift_fast::<{ ShOp::Rcr as u8 }, SIZE>,
            ShOp::Shl => shift_fast::<{ ShOp::Shl as u8 }, SIZE>,
            ShOp::Shr => shift_fast::<{ ShOp::Shr as u8 }, SIZE>,
            ShOp::Sar => shift_fast::<{ ShOp::Sar as u8 }, SIZE>,
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
    pub(crate) fn shift(&mut self, ins: &Instruction, op: ShOp) -> Res {
        let size = self.size0(ins);
        let count = self.read_op(ins, 1, 1, false)?;
        if count & count_mask(size) == 0 {
            // The value is unchanged; a memory operand is still read and written back, as KVM's
            // emulator does (visible only for MMIO).
            // A 32-bit register is still written, which zero-extends it (checked on this host's
            // CPU at CPL3).
            let a = self.read_op(ins, 0, size, true)?;
            self.write_op(ins, 0, size, a)?;
            self.fl_override = Some((0, 0));
            return Ok(());
        }
        let a = self.read_op(ins, 0, size, true)?;
        let s = shift(op, a, count, self.flag(CF), size).expect("count is not zero");
        self.write_op(ins, 0, size, s.res)?;
        self.set_flags(s.modified, s.flags);
        self.fl_override = Some((s.modified, s.undefined));
        Ok(())
    }

    pub(crate) fn shift_double(&mut self, ins: &Instruction, left: bool) -> Res {
        let size = self.size0(ins);
        let count = self.read_op(ins, 2, 1, false)?;
        let a = self.read_op(ins, 0, size, true)?;
        let b = self.read_op(ins, 1, size, false)?;
        match shift_double(left, a, b, count, size) {
            Err(()) => Err(Fault::unsupported(
                "16-bit shld/shrd with count > 16 (result undefined)",
            )),
            Ok(None) => {
                self.write_op(ins, 0, size, a)?;
                self.fl_override = Some((0, 0));
                Ok(())
            }
            Ok(Some(s)) => {
                self.write_op(ins, 0, size, s.res)?;
                self.set_flags(s.modified, s.flags);
                self.fl_override = Some((s.modified, s.undefined));
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::flags::*;

    fn sh(op: ShOp, a: u64, c: u64, cf: bool, size: u32) -> (u64, u64) {
        let s = shift(op, a, c, cf, size).unwrap();
        (s.res, s.flags & s.modified & !s.undefined)
    }

    #[test]
    fn op_table_follows_declaration_order() {
        for (i, op) in SH_OPS.iter().enumerate() {
            assert_eq!(*op as usize, i);
        }
    }

    #[test]
    fn shift_count_zero_changes_nothing() {
        assert_eq!(shift(ShOp::Shl, 0x80, 0, true, 1), None);
        // Masked to 5 bits: 32 is 0 for 8/16/32-bit operands, but 64-bit uses 6 bits.
        assert_eq!(shift(ShOp::Shr, 0x80, 32, true, 4), None);
        assert!(shift(ShOp::Shr, 0x80, 32, true, 8).is_some());
    }

    #[test]
    fn shl_by_one_sets_of_from_msb_xor_cf() {
        assert_eq!(sh(ShOp::Shl, 0x40, 1, false, 1), (0x80, SF | OF));
        assert_eq!(sh(ShOp::Shl, 0xc0, 1, false, 1), (0x80, SF | CF));
    }

    #[test]
    fn shift_by_width_minus_one_and_masked_counts() {
        assert_eq!(sh(ShOp::Shr, 0x8000_0000, 31, false, 4), (1, 0));
        assert_eq!(sh(ShOp::Sar, 0x8000, 15, false, 2), (0xffff, SF | PF));
        // 8-bit SHL by 9: result 0; CF undefined (count ≥ width).
        let s = shift(ShOp::Shl, 0xff, 9, false, 1).unwrap();
        assert_eq!(s.res, 0);
        assert_eq!(s.undefined & CF, CF);
        // 64-bit count 65 masks to 1.
        assert_eq!(sh(ShOp::Shl, 1, 65, false, 8).0, 2);
    }

    #[test]
    fn sar_fills_with_sign_past_width() {
        assert_eq!(sh(ShOp::Sar, 0x80, 20, false, 1), (0xff, SF | PF | CF));
    }

    #[test]
    fn rcl_rcr_8_and_16_bit_rotate_mod_9_and_17() {
        // RCL AL=0x80 by 1 with CF=0: AL=0, CF=1, OF=0^1=1.
        assert_eq!(sh(ShOp::Rcl, 0x80, 1, false, 1), (0, CF | OF));
        // By 9 (≡ 0 mod 9): unchanged, CF unchanged.
        assert_eq!(shift(ShOp::Rcl, 0x80, 9, true, 1).unwrap().res, 0x80);
        assert_eq!(shift(ShOp::Rcl, 0x80, 9, true, 1).unwrap().flags & CF, CF);
        // By 10 ≡ 1: rotates once.
        assert_eq!(shift(ShOp::Rcl, 0x80, 10, false, 1).unwrap().res, 0);
        // RCR 16-bit by 17 ≡ 0; by 1 with CF=1: 0x0001 → 0x8000, CF=1, OF = msb(0x0001)^1 = 1.
        assert_eq!(shift(ShOp::Rcr, 0x1234, 17, false, 2).unwrap().res, 0x1234);
        assert_eq!(sh(ShOp::Rcr, 1, 1, true, 2), (0x8000, CF | OF));
    }

    #[test]
    fn rol_ror_flags() {
        assert_eq!(sh(ShOp::Rol, 0x81, 1, false, 1), (0x03, CF | OF));
        assert_eq!(sh(ShOp::Ror, 0x01, 1, false, 1), (0x80, CF | OF));
        // ROL 8-bit by 8: value unchanged, CF = LSB.
        assert_eq!(shift(ShOp::Rol, 0x81, 8, false, 1).unwrap().flags & CF, CF);
    }

    #[test]
    fn shld_shrd_per_sdm() {
        let s = shift_double(true, 0x1234, 0xabcd, 4, 2).unwrap().unwrap();
        assert_eq!(s.res, 0x234a);
        let s = shift_double(false, 0x1234, 0xabcd, 4, 2).unwrap().unwrap();
        assert_eq!(s.res, 0xd123);
        assert_eq!(s.flags & CF, 0);
        assert_eq!(shift_double(true, 1, 2, 16, 2).unwrap().unwrap().res, 2);
        assert!(shift_double(true, 1, 2, 17, 2).is_err());
        assert_eq!(shift_double(true, 1, 2, 32, 4), Ok(None));
    }
}

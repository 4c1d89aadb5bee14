//! BT/BTS/BTR/BTC (register and memory bit offsets), BSF/BSR/TZCNT/LZCNT/POPCNT and BSWAP.

use super::decode::BitOp;
use super::flags::{CF, STATUS, ZF, mask, sext};
use super::{Fault, Machine, Res};
use iced_x86::{Instruction, OpKind};

/// The byte displacement and bit index a register bit offset selects for a `size`-byte memory
/// operand (the offset is signed, SDM "BT—Bit Test").
pub fn bit_offset(offset: u64, size: u32) -> (i64, u32) {
    let bits = i64::from(size * 8);
    let o = sext(offset, size) as i64;
    (
        o.div_euclid(bits) * i64::from(size),
        o.rem_euclid(bits) as u32,
    )
}

/// BSF/BSR/TZCNT/LZCNT/POPCNT: the new destination (`None` = unchanged) and the flag values.
pub fn scan(op: BitOp, src: u64, size: u32) -> (Option<u64>, u64) {
    let src = src & mask(size);
    let bits = size * 8;
    match op {
        BitOp::Bsf if src == 0 => (None, ZF),
        BitOp::Bsf => (Some(u64::from(src.trailing_zeros())), 0),
        BitOp::Bsr if src == 0 => (None, ZF),
        BitOp::Bsr => (Some(u64::from(63 - src.leading_zeros())), 0),
        BitOp::Tzcnt => {
            let r = if src == 0 { bits } else { src.trailing_zeros() };
            (
                Some(u64::from(r)),
                if src == 0 { CF } else { 0 } | if r == 0 { ZF } else { 0 },
            )
        }
        BitOp::Lzcnt => {
            let r = src.leading_zeros() - (64 - bits);
            (
                Some(u64::from(r)),
                if src == 0 { CF } else { 0 } | if r == 0 { ZF } else { 0 },
            )
        }
        BitOp::Popcnt => (
            Some(u64::from(src.count_ones())),
            if src == 0 { ZF } else { 0 },
        ),
        _ => unreachable!("not a scan"),
    }
}

impl Machine {
    pub(crate) fn bits(&mut self, ins: &Instruction, op: BitOp) -> Res {
        match op {
            BitOp::Bt | BitOp::Bts | BitOp::Btr | BitOp::Btc => {
                let size = Self::op_size(ins, 0);
                let write = op != BitOp::Bt;
                let (val, bit, mem) = match (ins.op0_kind(), ins.op1_kind()) {
                    (OpKind::Memory, OpKind::Register) => {
                        let (disp, bit) = bit_offset(self.reg(ins.op1_register()), size);
                        let mut m = self.mem_op(ins);
                        m.off = self.ea_plus(ins, disp as u64);
                        (self.read_m(m, size, write)?, bit, Some(m))
                    }
                    (OpKind::Memory, _) => {
                        let m = self.mem_op(ins);
                        let bit = (ins.immediate(1) as u32) & (size * 8 - 1);
                        (self.read_m(m, size, write)?, bit, Some(m))
                    }
                    _ => {
                        let bit = (self.read_op(ins, 1, size, false)? as u32) & (size * 8 - 1);
                        (self.reg(ins.op0_register()), bit, None)
                    }
                };
                let cf = (val >> bit) & 1;
                let b = 1u64 << bit;
                let new = match op {
                    BitOp::Bts => val | b,
                    BitOp::Btr => val & !b,
                    BitOp::Btc => val ^ b,
                    _ => val,
                };
                if write {
                    match mem {
                        Some(m) => self.write_m(m, size, new)?,
                        None => self.set_reg(ins.op0_register(), new),
                    }
                }
                self.set_flags(CF, cf);
            }
            BitOp::Bswap => {
                let r = ins.op0_register();
                let v = self.reg(r);
                match r.size() {
                    4 => self.set_reg(r, u64::from((v as u32).swap_bytes())),
                    8 => self.set_reg(r, v.swap_bytes()),
                    _ => return Err(Fault::unsupported("16-bit bswap (result undefined)")),
                }
            }
            _ => {
                let size = Self::op_size(ins, 0);
                let src = self.read_op(ins, 1, size, false)?;
                let (dst, f) = scan(op, src, size);
                if let Some(d) = dst {
                    self.set_reg(ins.op0_register(), d);
                }
                let defined = match op {
                    BitOp::Bsf | BitOp::Bsr => ZF,
                    BitOp::Tzcnt | BitOp::Lzcnt => ZF | CF,
                    _ => STATUS,
                };
                self.set_flags(defined, f);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_offset_is_signed_and_scaled() {
        assert_eq!(bit_offset(35, 4), (4, 3));
        assert_eq!(bit_offset(0xffff_ffff, 4), (-4, 31), "offset -1");
        assert_eq!(bit_offset(0x8000, 2), (-4096, 0));
    }

    #[test]
    fn scans_per_sdm() {
        assert_eq!(scan(BitOp::Bsf, 0, 4), (None, ZF));
        assert_eq!(scan(BitOp::Bsr, 0x8001, 2), (Some(15), 0));
        assert_eq!(scan(BitOp::Tzcnt, 0, 2), (Some(16), CF));
        assert_eq!(scan(BitOp::Lzcnt, 1, 4), (Some(31), 0));
        assert_eq!(scan(BitOp::Lzcnt, 0x8000_0000, 4), (Some(0), ZF));
        assert_eq!(scan(BitOp::Popcnt, 0, 8), (Some(0), ZF));
    }
}

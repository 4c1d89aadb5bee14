//! DAA/DAS/AAA/AAS/AAM/AAD (not valid in 64-bit mode, where iced decodes them as invalid → #UD).

use super::decode::BcdOp;
use super::flags::{AF, CF, PF, SF, ZF, szp};
use super::{DE, Machine, Res};
use iced_x86::Instruction;

/// New AX and flags (`fl` is the old RFLAGS) of a decimal adjustment with immediate `imm` (AAM/AAD),
/// or `None` for #DE (AAM 0).
pub fn bcd(op: BcdOp, ax: u64, fl: u64, imm: u64) -> Option<(u64, u64)> {
    let al = ax & 0xff;
    let ah = (ax >> 8) & 0xff;
    let (af, cf) = (fl & AF != 0, fl & CF != 0);
    let low_adjust = (al & 0xf) > 9 || af;
    Some(match op {
        BcdOp::Daa | BcdOp::Das => {
            let mut a = al;
            let mut f = 0;
            if low_adjust {
                if op == BcdOp::Daa {
                    f |= if cf || a + 6 > 0xff { CF } else { 0 };
                    a = (a + 6) & 0xff;
                } else {
                    f |= if cf || a < 6 { CF } else { 0 };
                    a = a.wrapping_sub(6) & 0xff;
                }
                f |= AF;
            }
            if al > 0x99 || cf {
                a = if op == BcdOp::Daa {
                    a + 0x60
                } else {
                    a.wrapping_sub(0x60)
                } & 0xff;
                f |= CF;
            } else if op == BcdOp::Daa {
                f &= !CF;
            }
            ((ah << 8) | a, f | szp(a, 1))
        }
        BcdOp::Aaa | BcdOp::Aas => {
            if low_adjust {
                let ax2 = if op == BcdOp::Aaa {
                    (ax + 0x106) & 0xffff
                } else {
                    let t = ax.wrapping_sub(6) & 0xffff;
                    t.wrapping_sub(0x100) & 0xffff
                };
                ((ax2 & 0xff00) | (ax2 & 0xf), AF | CF)
            } else {
                ((ax & 0xff00) | (al & 0xf), 0)
            }
        }
        BcdOp::Aam => {
            if imm == 0 {
                return None;
            }
            let (h, l) = (al / imm, al % imm);
            ((h << 8) | l, szp(l, 1))
        }
        BcdOp::Aad => {
            let l = (al + ah * imm) & 0xff;
            (l, szp(l, 1))
        }
    })
}

/// The flags each adjustment defines (the others it modifies are undefined).
pub fn bcd_defined(op: BcdOp) -> u64 {
    match op {
        BcdOp::Daa | BcdOp::Das => CF | AF | SF | ZF | PF,
        BcdOp::Aaa | BcdOp::Aas => AF | CF,
        BcdOp::Aam | BcdOp::Aad => SF | ZF | PF,
    }
}

impl Machine {
    pub(crate) fn bcd(&mut self, ins: &Instruction, op: BcdOp) -> Res {
        let imm = if ins.op_count() > 0 {
            ins.immediate(0) & 0xff
        } else {
            10
        };
        let ax = self.cpu.gpr[0] & 0xffff;
        let (new, f) = bcd(op, ax, self.cpu.rflags, imm).ok_or(DE)?;
        self.set_gpr(0, 2, new);
        self.set_flags(bcd_defined(op), f);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daa_das_sdm_examples() {
        // SDM DAA example: ADD 0x79 + 0x35 = 0xAE → DAA → 0x14, CF=1, AF=1.
        let (ax, f) = bcd(BcdOp::Daa, 0xae, 0, 0).unwrap();
        assert_eq!((ax, f & (CF | AF)), (0x14, CF | AF));
        // SDM DAS example: SUB 0x35 - 0x47 = 0xEE (CF=1, AF=1) → DAS → 0x88, CF=1.
        let (ax, f) = bcd(BcdOp::Das, 0xee, CF | AF, 0).unwrap();
        assert_eq!((ax, f & CF), (0x88, CF));
    }

    #[test]
    fn aaa_aas_aam_aad() {
        assert_eq!(bcd(BcdOp::Aaa, 0x000b, 0, 0), Some((0x0101, AF | CF)));
        assert_eq!(bcd(BcdOp::Aas, 0x0200, AF, 0), Some((0x000a, AF | CF)));
        assert_eq!(bcd(BcdOp::Aam, 0x3f, 0, 10).unwrap().0, 0x0603);
        assert_eq!(bcd(BcdOp::Aam, 0x3f, 0, 0), None);
        assert_eq!(bcd(BcdOp::Aad, 0x0603, 0, 10).unwrap().0, 0x3f);
    }
}

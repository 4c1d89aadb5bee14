//! PUSH/POP (registers, memory, immediates, segment registers), PUSHF/POPF, ENTER/LEAVE.

use super::decode::StackOp;
use super::flags::{AC, AF, CF, DF, FIXED, ID, IF, IOPL, NT, OF, PF, RF, SF, TF, VM, ZF, mask};
use super::{Fault, Machine, Res};
use iced_x86::{Code, Instruction, OpKind};

/// The RFLAGS bits POPF may change, before the privilege rules for IF and IOPL.
pub fn popf_writable(size: u32) -> u64 {
    let low = CF | PF | AF | ZF | SF | TF | IF | DF | OF | IOPL | NT;
    if size >= 4 { low | AC | ID } else { low }
}

/// RFLAGS after POPF of `v` (`size` bytes) from `old`, at privilege `cpl` (0 in real mode).
pub fn popf_value(old: u64, v: u64, size: u32, cpl: u8) -> u64 {
    let mut w = popf_writable(size);
    let iopl = ((old & IOPL) >> 12) as u8;
    if cpl > 0 {
        w &= !IOPL;
    }
    if cpl > iopl {
        w &= !IF;
    }
    ((old & !w) | (v & w & mask(size)) | FIXED) & !RF
}

impl Machine {
    /// Operand size of an instruction that pushes or pops, from iced's stack-pointer increment.
    fn stack_size(ins: &Instruction) -> u32 {
        ins.stack_pointer_increment().unsigned_abs()
    }

    pub(crate) fn stack(&mut self, ins: &Instruction, op: StackOp) -> Res {
        match op {
            StackOp::Push => {
                let size = Self::stack_size(ins);
                let v = self.read_op(ins, 0, size, false)?;
                self.push(v, size)?;
            }
            StackOp::Pop => {
                let size = Self::stack_size(ins);
                let sp = self.sp();
                let v = self.stack_read(sp, size)?;
                if ins.op0_kind() == OpKind::Register {
                    self.set_sp(sp.wrapping_add(u64::from(size)));
                    self.set_reg(ins.op0_register(), v);
                } else {
                    // The destination address uses the incremented stack pointer.
                    let old = self.cpu.gpr[4];
                    self.set_sp(sp.wrapping_add(u64::from(size)));
                    let m = self.mem_op(ins);
                    if let Err(e) = self.write_m(m, size, v) {
                        self.cpu.gpr[4] = old;
                        return Err(e);
                    }
                }
            }
            StackOp::PushSeg => {
                let size = Self::stack_size(ins);
                let sel = u64::from(self.seg(ins.op0_register()).selector);
                // Recent Intel cores write only the selector's 16 bits (SDM "PUSH").
                let sp = self.sp().wrapping_sub(u64::from(size));
                self.stack_write(sp, 2, sel)?;
                self.set_sp(sp);
            }
            StackOp::PopSeg => {
                let size = Self::stack_size(ins);
                let sp = self.sp();
                let v = self.stack_read(sp, size)?;
                self.load_seg(ins.op0_register(), v as u16)?;
                self.set_sp(sp.wrapping_add(u64::from(size)));
            }
            StackOp::Pushf => {
                let size = Self::stack_size(ins);
                let v = self.cpu.rflags & !(RF | VM);
                self.push(v, size)?;
            }
            StackOp::Popf => {
                let size = Self::stack_size(ins);
                let sp = self.sp();
                let v = self.stack_read(sp, size)?;
                let new = popf_value(self.cpu.rflags, v, size, self.cpl);
                if new & TF != 0 {
                    return Err(Fault::unsupported("popf setting TF (single-step trap)"));
                }
                self.set_sp(sp.wrapping_add(u64::from(size)));
                self.cpu.rflags = new;
            }
            StackOp::Enter => {
                let osize = match ins.code() {
                    Code::Enterw_imm16_imm8 => 2,
                    Code::Enterd_imm16_imm8 => 4,
                    _ => 8,
                };
                let alloc = ins.immediate(0) & 0xffff;
                let level = ins.immediate(1) & 31;
                let ssize = self.sp_size();
                let mut sp = self.sp().wrapping_sub(osize);
                self.stack_write(sp, osize as u32, self.cpu.gpr[5])?;
                let frame = sp & mask(ssize);
                let mut bp = self.cpu.gpr[5] & mask(ssize);
                if level > 0 {
                    for _ in 1..level {
                        bp = bp.wrapping_sub(osize) & mask(ssize);
                        let v = self.stack_read(bp, osize as u32)?;
                        sp = sp.wrapping_sub(osize);
                        self.stack_write(sp, osize as u32, v)?;
                    }
                    sp = sp.wrapping_sub(osize);
                    self.stack_write(sp, osize as u32, frame)?;
                }
                let new_sp = sp.wrapping_sub(alloc);
                if self.mode == crate::case::Mode::Long64 && !super::addr::canonical(new_sp) {
                    return Err(super::SS0);
                }
                self.set_gpr(5, osize as u32, frame);
                self.set_sp(new_sp);
            }
            StackOp::Leave => {
                let osize = match ins.code() {
                    Code::Leavew => 2,
                    Code::Leaved => 4,
                    _ => 8,
                };
                let sp = self.cpu.gpr[5] & mask(self.sp_size());
                let v = self.stack_read(sp, osize)?;
                self.set_sp(sp.wrapping_add(u64::from(osize)));
                self.set_gpr(5, osize, v);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn popf_respects_iopl_and_cpl() {
        // CPL3, IOPL0: IF and IOPL cannot change; RF always cleared; bit 1 always set.
        assert_eq!(popf_value(0x202, 0x3000 | 0x10000 | 0x1, 8, 3), 0x203);
        assert_eq!(popf_value(0x2, 0x3200, 8, 3) & IF, 0);
        assert_eq!(popf_value(0x2, 0x3200, 8, 0), 0x3202);
        // 16-bit POPF cannot touch AC.
        assert_eq!(popf_value(0x2, 0x4_0000, 2, 0), 0x2);
        assert_eq!(popf_value(0x2, 0x4_0000, 4, 0), 0x4_0002);
    }
}

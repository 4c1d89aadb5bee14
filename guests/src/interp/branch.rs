//! Jcc/JMP/CALL/RET (incl. RET imm16), LOOP/LOOPE/LOOPNE, JCXZ/JECXZ/JRCXZ, and INT3/INT n/INTO.

use super::decode::BranchOp;
use super::flags::{self, OF, ZF, mask};
use super::{Fault, Machine, Res};
use iced_x86::{Code, Instruction};

/// The width in bytes of the count register LOOP/JCXZ use (from the address size).
pub fn count_size(code: Code) -> u32 {
    use Code as C;
    match code {
        C::Loop_rel8_16_CX
        | C::Loop_rel8_32_CX
        | C::Loope_rel8_16_CX
        | C::Loope_rel8_32_CX
        | C::Loopne_rel8_16_CX
        | C::Loopne_rel8_32_CX
        | C::Jcxz_rel8_16
        | C::Jcxz_rel8_32 => 2,
        C::Loop_rel8_16_RCX
        | C::Loop_rel8_64_RCX
        | C::Loope_rel8_16_RCX
        | C::Loope_rel8_64_RCX
        | C::Loopne_rel8_16_RCX
        | C::Loopne_rel8_64_RCX
        | C::Jrcxz_rel8_16
        | C::Jrcxz_rel8_64 => 8,
        _ => 4,
    }
}

impl Machine {
    fn jump(&mut self, target: u64) -> Res {
        self.check_target(target)?;
        self.next_rip = target;
        Ok(())
    }

    /// Raises a software interrupt (a trap: the frame holds the next instruction's address).
    fn soft_int(&mut self, vector: u8) -> Res {
        match self.deliver(vector, None, Some(self.next_rip)) {
            Ok(()) => {
                self.next_rip = self.cpu.rip;
                Ok(())
            }
            Err(s) => Err(Fault::Stop(Box::new(s))),
        }
    }

    pub(crate) fn branch(&mut self, ins: &Instruction, op: BranchOp) -> Res {
        match op {
            BranchOp::Jcc => {
                if flags::cond(ins.condition_code(), self.cpu.rflags) {
                    self.jump(ins.near_branch_target())?;
                }
            }
            BranchOp::Jmp => self.jump(ins.near_branch_target())?,
            BranchOp::JmpIndirect => {
                let size = Self::op_size(ins, 0);
                let t = self.read_op(ins, 0, size, false)?;
                self.jump(t)?;
            }
            BranchOp::Call | BranchOp::CallIndirect => {
                let size = ins.stack_pointer_increment().unsigned_abs();
                let t = if op == BranchOp::Call {
                    ins.near_branch_target()
                } else {
                    self.read_op(ins, 0, Self::op_size(ins, 0), false)?
                };
                self.check_target(t)?;
                self.push(self.next_rip, size)?;
                self.next_rip = t;
            }
            BranchOp::Ret => {
                let size = match ins.code() {
                    Code::Retnw | Code::Retnw_imm16 => 2,
                    Code::Retnd | Code::Retnd_imm16 => 4,
                    _ => 8,
                };
                let imm = if ins.op_count() == 1 {
                    ins.immediate(0) & 0xffff
                } else {
                    0
                };
                let sp = self.sp();
                let t = self.stack_read(sp, size)?;
                self.check_target(t)?;
                self.set_sp(sp.wrapping_add(u64::from(size)).wrapping_add(imm));
                self.next_rip = t;
            }
            BranchOp::Loop | BranchOp::Loope | BranchOp::Loopne => {
                let cs = count_size(ins.code());
                let c = (self.cpu.gpr[1].wrapping_sub(1)) & mask(cs);
                let zf = self.flag(ZF);
                let taken = c != 0
                    && match op {
                        BranchOp::Loope => zf,
                        BranchOp::Loopne => !zf,
                        _ => true,
                    };
                if taken {
                    self.check_target(ins.near_branch_target())?;
                    self.next_rip = ins.near_branch_target();
                }
                self.set_gpr(1, cs, c);
            }
            BranchOp::Jcxz => {
                let cs = count_size(ins.code());
                if self.cpu.gpr[1] & mask(cs) == 0 {
                    self.jump(ins.near_branch_target())?;
                }
            }
            BranchOp::Int3 => self.soft_int(3)?,
            BranchOp::IntN => self.soft_int(ins.immediate(0) as u8)?,
            BranchOp::Into => {
                if self.flag(OF) {
                    self.soft_int(4)?;
                }
            }
        }
        Ok(())
    }
}

//! MOVS/CMPS/SCAS/LODS/STOS/INS/OUTS with REP/REPE/REPNE in every address size; each iteration
//! commits on its own, so a fault or exit mid-way leaves the registers where the CPU leaves them.

use super::decode::StrOp;
use super::flags::{self, DF, STATUS, ZF, mask};
use super::{Fault, Machine, Res, Stop};
use iced_x86::{Instruction, OpKind, Register};

/// Address size in bytes of a string instruction, from its string operand kinds.
fn string_addr_size(ins: &Instruction) -> u32 {
    for i in 0..ins.op_count() {
        match ins.op_kind(i) {
            OpKind::MemorySegSI | OpKind::MemoryESDI => return 2,
            OpKind::MemorySegESI | OpKind::MemoryESEDI => return 4,
            OpKind::MemorySegRSI | OpKind::MemoryESRDI => return 8,
            _ => {}
        }
    }
    unreachable!("string instruction without a string operand")
}

impl Machine {
    pub(crate) fn string(&mut self, ins: &Instruction, op: StrOp) -> Res {
        let asz = string_addr_size(ins);
        let am = mask(asz);
        let size = ins.memory_size().size() as u32;
        let rep = ins.has_rep_prefix() || ins.has_repne_prefix();
        let delta = if self.flag(DF) {
            (size as u64).wrapping_neg()
        } else {
            u64::from(size)
        };
        let src_seg = ins.memory_segment();
        let compares = matches!(op, StrOp::Cmps | StrOp::Scas);
        if matches!(op, StrOp::Ins | StrOp::Outs) {
            // The I/O permission check comes first, even for a REP with count 0.
            self.io_check()?;
        }
        if rep && self.cpu.gpr[1] & am == 0 {
            self.fl_override = Some((0, 0));
            return Ok(());
        }
        loop {
            let si = self.cpu.gpr[6] & am;
            let di = self.cpu.gpr[7] & am;
            match op {
                StrOp::Movs => {
                    let l = self.linear(src_seg, si, size, false)?;
                    let v = self.read_lin(l, size, self.acc(false))?;
                    let d = self.linear(Register::ES, di, size, true)?;
                    self.write_lin(d, size, v, self.acc(true))?;
                }
                StrOp::Cmps => {
                    let l = self.linear(src_seg, si, size, false)?;
                    let a = self.read_lin(l, size, self.acc(false))?;
                    let d = self.linear(Register::ES, di, size, false)?;
                    let b = self.read_lin(d, size, self.acc(false))?;
                    let (_, f) = flags::sub(a, b, 0, size);
                    self.set_flags(STATUS, f);
                }
                StrOp::Scas => {
                    let d = self.linear(Register::ES, di, size, false)?;
                    let b = self.read_lin(d, size, self.acc(false))?;
                    let (_, f) = flags::sub(self.cpu.gpr[0], b, 0, size);
                    self.set_flags(STATUS, f);
                }
                StrOp::Lods => {
                    let l = self.linear(src_seg, si, size, false)?;
                    let v = self.read_lin(l, size, self.acc(false))?;
                    self.set_gpr(0, size, v);
                }
                StrOp::Stos => {
                    let d = self.linear(Register::ES, di, size, true)?;
                    self.write_lin(d, size, self.cpu.gpr[0], self.acc(true))?;
                }
                StrOp::Ins => {
                    let d = self.linear(Register::ES, di, size, true)?;
                    self.translate(d, self.acc(true))?;
                    let port = self.cpu.gpr[2] as u16;
                    self.io_check()?;
                    let v = self.port_in(port, size)?;
                    self.write_lin(d, size, v, self.acc(true))?;
                }
                StrOp::Outs => {
                    let l = self.linear(src_seg, si, size, false)?;
                    self.io_check()?;
                    let v = self.read_lin(l, size, self.acc(false))?;
                    let port = self.cpu.gpr[2] as u16;
                    self.port_out(port, size, v)?;
                }
            }
            let uses_si = matches!(op, StrOp::Movs | StrOp::Cmps | StrOp::Lods | StrOp::Outs);
            let uses_di = !matches!(op, StrOp::Lods | StrOp::Outs);
            if uses_si {
                self.set_gpr(6, asz, si.wrapping_add(delta));
            }
            if uses_di {
                self.set_gpr(7, asz, di.wrapping_add(delta));
            }
            if !rep {
                return Ok(());
            }
            let c = (self.cpu.gpr[1] & am).wrapping_sub(1) & am;
            self.set_gpr(1, asz, c);
            if c == 0 {
                return Ok(());
            }
            if self.over_budget {
                // The harness stops here; the REP resumes at this instruction.
                return Err(Fault::Stop(Box::new(Stop::Budget)));
            }
            if compares {
                let zf = self.flag(ZF);
                if (ins.has_repe_prefix() && !zf) || (ins.has_repne_prefix() && zf) {
                    return Ok(());
                }
            }
            self.count += 1;
            if self.count >= self.cap {
                return Err(Fault::Stop(Box::new(Stop::Timeout)));
            }
        }
    }
}

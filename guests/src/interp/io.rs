//! IN/OUT with immediate and DX ports, the scripted `io_in` answers, and the CPL/IOPL check.

use super::decode::IoOp;
use super::flags::{IOPL, mask};
use super::{GP0, Machine, Res};
use crate::result::Event;
use iced_x86::{Instruction, OpKind};

impl Machine {
    /// #GP(0) when CPL > IOPL (the TSS has no I/O bitmap).
    pub(crate) fn io_check(&self) -> Res {
        let iopl = ((self.cpu.rflags & IOPL) >> 12) as u8;
        if self.cpl > iopl { Err(GP0) } else { Ok(()) }
    }

    /// One IN of `size` bytes: the next scripted value (all-ones when the script is exhausted).
    pub(crate) fn port_in(&mut self, port: u16, size: u32) -> Res<u64> {
        let v = match self.io_in.get(self.io_pos) {
            Some(&v) => {
                self.io_pos += 1;
                v & mask(size)
            }
            None => mask(size),
        };
        self.event(Event::io_in(port, size as u8, v))?;
        Ok(v)
    }

    /// One OUT of `size` bytes.
    pub(crate) fn port_out(&mut self, port: u16, size: u32, v: u64) -> Res {
        self.event(Event::io_out(port, size as u8, v & mask(size)))
    }

    pub(crate) fn io(&mut self, ins: &Instruction, op: IoOp) -> Res {
        self.io_check()?;
        let (port_op, data_op) = if op == IoOp::In { (1, 0) } else { (0, 1) };
        let port = match ins.op_kind(port_op) {
            OpKind::Register => self.cpu.gpr[2] as u16,
            _ => ins.immediate(port_op) as u16,
        };
        let r = ins.op_register(data_op);
        let size = r.size() as u32;
        if op == IoOp::In {
            let v = self.port_in(port, size)?;
            self.set_reg(r, v);
        } else {
            let v = self.reg(r);
            self.port_out(port, size, v)?;
        }
        Ok(())
    }
}

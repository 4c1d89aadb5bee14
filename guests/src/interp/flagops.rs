//! CLC/STC/CMC/CLD/STD and CLI/STI (the latter #GP(0) outside real mode when CPL > IOPL).

use super::decode::FlagOp;
use super::flags::{CF, DF, IF};
use super::{Machine, Res};
use crate::case::Mode;
use iced_x86::Instruction;

impl Machine {
    pub(crate) fn flagop(&mut self, _ins: &Instruction, op: FlagOp) -> Res {
        let fl = &mut self.cpu.rflags;
        match op {
            FlagOp::Clc => *fl &= !CF,
            FlagOp::Stc => *fl |= CF,
            FlagOp::Cmc => *fl ^= CF,
            FlagOp::Cld => *fl &= !DF,
            FlagOp::Std => *fl |= DF,
            FlagOp::Cli | FlagOp::Sti => {
                if self.mode != Mode::Real16 {
                    self.io_check()?;
                }
                if op == FlagOp::Cli {
                    self.cpu.rflags &= !IF;
                } else {
                    self.cpu.rflags |= IF;
                }
            }
        }
        Ok(())
    }
}

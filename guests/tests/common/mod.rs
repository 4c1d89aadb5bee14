//! Helpers shared by the interpreter's integration tests: assemble a program and run it.
#![allow(dead_code)]

use iced_x86::code_asm::CodeAssembler;
use kvmconf_guests::case::{Case, Mode};
use kvmconf_guests::interp::{self, Outcome};

/// Where test programs are loaded.
pub const CODE: u64 = 0x1000;
/// Initial stack pointer.
pub const STACK: u64 = 0x8000;
/// A data area.
pub const DATA: u64 = 0x4000;

/// A case running the assembled program in `mode`, stack at `STACK`.
pub fn case(
    mode: Mode,
    build: impl FnOnce(&mut CodeAssembler) -> Result<(), iced_x86::IcedError>,
) -> Case {
    let code = kvmconf_guests::asm::assemble(mode.bitness(), CODE, build).expect("assembles");
    let mut c = Case::new("t", mode, CODE, code);
    c.regs.rsp = Some(STACK.into());
    c
}

/// Runs a case in the interpreter.
pub fn run(c: &Case) -> Outcome {
    c.validate().expect("valid case");
    interp::Machine::new(c).run()
}

/// A case from raw bytes at `CODE`.
pub fn raw(mode: Mode, bytes: &[u8]) -> Case {
    let mut c = Case::new("t", mode, CODE, bytes.to_vec());
    c.regs.rsp = Some(STACK.into());
    c
}

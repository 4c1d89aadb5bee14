//! Interpreter speed on straight-line ALU code, in instructions per second, next to a baseline
//! measured in the same run: iced-x86 decoding the same bytes (what a decode-every-time interpreter
//! would pay before executing anything). Target: ≥ 50M instructions/s.

use iced_x86::code_asm::*;
use iced_x86::{Decoder, DecoderOptions};
use kvmconf_guests::case::{Case, Mode};
use kvmconf_guests::interp::Machine;
use std::time::Instant;

const BODY: usize = 512;
const LOOPS: u64 = 4000;

/// A loop around 512 register-only ALU instructions (add/sub/xor/and/or/adc/shl/ror/inc/imul/lea…).
fn alu_case() -> (Case, Vec<u8>) {
    let regs = [rax, rcx, rdx, rsi, rdi, r8, r9, r10, r11, r12];
    let mut body = Vec::new();
    let code = kvmconf_guests::asm::assemble(64, 0x1000, |a| {
        let mut top = a.create_label();
        a.mov(r15, LOOPS)?;
        a.set_label(&mut top)?;
        for i in 0..BODY {
            let d = regs[i % regs.len()];
            let s = regs[(i * 7 + 3) % regs.len()];
            match i % 10 {
                0 => a.add(d, s)?,
                1 => a.sub(d, s)?,
                2 => a.xor(d, s)?,
                3 => a.and(d, 0x7fff_ffff)?,
                4 => a.or(d, s)?,
                5 => a.adc(d, s)?,
                6 => a.shl(d, 3)?,
                7 => a.ror(d, 5)?,
                8 => a.inc(d)?,
                _ => a.imul_2(d, s)?,
            }
        }
        a.dec(r15)?;
        a.jnz(top)?;
        a.hlt()
    })
    .expect("assembles");
    // The body alone, for the decode baseline.
    let start = 10; // mov r15, imm64
    body.extend_from_slice(&code[start..code.len() - 1 - 2 - 3 - 1]);
    let mut case = Case::new("bench-alu", Mode::Long64, 0x1000, code);
    case.regs.rsp = Some(0x8000.into());
    case.regs.rax = Some(0x1234_5678.into());
    (case, body)
}

fn main() {
    let (case, body) = alu_case();
    // Interpreter.
    let mut best = f64::MAX;
    let mut insns = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let mut m = Machine::new(&case);
        m.set_cap(u64::MAX);
        let o = m.run();
        let dt = t.elapsed().as_secs_f64();
        assert_eq!(o.result.exit.kind(), "hlt");
        insns = o.instructions;
        best = best.min(dt);
    }
    let interp_rate = insns as f64 / best;
    // Baseline: iced decoding the body, repeatedly.
    let mut dbest = f64::MAX;
    let mut decoded = 0u64;
    for _ in 0..5 {
        let t = Instant::now();
        let mut n = 0u64;
        let mut sink = 0u64;
        for _ in 0..LOOPS {
            let mut d = Decoder::with_ip(64, &body, 0x100a, DecoderOptions::NONE);
            for ins in &mut d {
                sink = sink.wrapping_add(ins.len() as u64);
                n += 1;
            }
        }
        std::hint::black_box(sink);
        dbest = dbest.min(t.elapsed().as_secs_f64());
        decoded = n;
    }
    let decode_rate = decoded as f64 / dbest;
    println!(
        "interpreter: {insns} instructions in {:.3} s = {:.1}M instructions/s (target >= 50M)",
        best,
        interp_rate / 1e6
    );
    println!(
        "baseline (iced decode only): {decoded} instructions in {:.3} s = {:.1}M instructions/s",
        dbest,
        decode_rate / 1e6
    );
    println!(
        "interpreter / decode-only = {:.2}x",
        interp_rate / decode_rate
    );
}

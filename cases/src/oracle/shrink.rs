//! Shrinking a mismatching program for the oracle: one mnemonic kept alone first, then
//! bisection, each trial overwriting instructions with NOPs of the same length; at the end the
//! NOPs are taken out ([`compact`]), branches re-aimed at the instructions they reached.

use crate::oracle::code::{code_index, instructions, is_live, live_mnemonics, nop_where};
use iced_x86::{
    BlockEncoder, BlockEncoderOptions, Decoder, DecoderOptions, Instruction, InstructionBlock,
    Mnemonic, OpKind,
};
use kvmconf_guests::case::{Case, Mode};
use kvmconf_guests::r#gen::CODE;

thread_local! {
    /// How often keeping one mnemonic alone reproduced a mismatch in this thread: the classes
    /// seen so far are tried first.
    static FOCUS_HITS: std::cell::RefCell<std::collections::HashMap<Mnemonic, u32>> =
        std::cell::RefCell::default();
}

/// A first, cheap shrinking step: for each mnemonic of the program (those that reproduced a
/// mismatch before first), the program with every other live instruction NOPed; the first such
/// trial for which `still_differs` holds, or the case itself. Most mismatches on a host come from
/// a few instruction classes, so one or two trials usually replace the dozens of bisection steps
/// [`minimise`] would take; [`minimise`] then finishes from there.
pub fn focus(case: &Case, mut still_differs: impl FnMut(&Case) -> bool) -> Case {
    let mut mnemonics = live_mnemonics(case);
    if mnemonics.len() < 2 {
        return case.clone();
    }
    FOCUS_HITS.with(|h| {
        let h = h.borrow();
        mnemonics.sort_by_key(|m| std::cmp::Reverse(h.get(m).copied().unwrap_or(0)));
    });
    for m in mnemonics {
        let trial = nop_where(case, |i| i.mnemonic() != m);
        if still_differs(&trial) {
            FOCUS_HITS.with(|h| *h.borrow_mut().entry(m).or_default() += 1);
            return trial;
        }
    }
    case.clone()
}

/// Shrinks a mismatching case: runs of instructions, halving in length down to one, are replaced by
/// NOPs (last run first) and each replacement kept while `still_differs` holds; single instructions
/// get a second pass. Returns the smallest case found.
pub fn minimise(case: &Case, mut still_differs: impl FnMut(&Case) -> bool) -> Case {
    let live = |c: &Case| -> Vec<u64> {
        instructions(c)
            .iter()
            .filter(|i| is_live(i))
            .map(Instruction::ip)
            .collect()
    };
    let mut best = case.clone();
    let mut chunk = live(&best).len().div_ceil(2).max(1);
    let mut single_passes = 0;
    loop {
        let ins = live(&best);
        let mut end = ins.len();
        while end > 0 {
            let start = end.saturating_sub(chunk);
            let run_ips = &ins[start..end];
            let trial = nop_where(&best, |i| run_ips.contains(&i.ip()));
            if still_differs(&trial) {
                best = trial;
            }
            end = start;
        }
        if chunk == 1 {
            single_passes += 1;
            if single_passes == 2 {
                break;
            }
        }
        chunk = (chunk / 2).max(1);
    }
    best
}

/// `case` with every NOP of its code image at [`CODE`] removed and the rest re-encoded at the
/// same address by iced-x86's `BlockEncoder`, relative branches (Jcc, JMP, CALL, LOOP/JCXZ) and
/// 64-bit RIP-relative operands fixed up: a branch still reaches the instruction it reached, a
/// branch into a removed instruction the next one left after it, and a target outside the image
/// keeps its absolute address; an entry RIP inside the image moves with its instruction. `None`
/// when there is no NOP to remove, or the program cannot be kept instruction for instruction:
/// a branch into the middle of an instruction or past the last one left, a RIP-relative operand
/// into the image (its bytes move), a real-mode CS other than 0, or a branch the encoder must
/// replace by a longer sequence (a LOOP/JCXZ out of rel8 reach).
pub fn compact(case: &Case) -> Option<Case> {
    if case.mode == Mode::Real16 && case.segs.cs.is_some_and(|cs| cs.0 != 0) {
        return None;
    }
    let image = code_index(case)?;
    let all = instructions(case);
    let end = CODE + case.memory[image].hex.0.len() as u64;
    if all.iter().any(Instruction::is_invalid) || all.last().is_none_or(|i| i.next_ip() != end) {
        return None;
    }
    let kept: Vec<Instruction> = all
        .iter()
        .filter(|i| i.mnemonic() != Mnemonic::Nop)
        .copied()
        .collect();
    if kept.len() == all.len() {
        return None;
    }
    // The instruction an original address inside the image leads to: the first one kept at or
    // after it; `None` for the middle of an instruction or past the last kept one.
    let survivor = |at: u64| -> Option<u64> {
        let k = all.partition_point(|i| i.ip() < at);
        if all.get(k)?.ip() != at {
            return None;
        }
        all[k..]
            .iter()
            .find(|i| i.mnemonic() != Mnemonic::Nop)
            .map(Instruction::ip)
    };
    let inside = |at: u64| (CODE..end).contains(&at);
    let bytes = &case.memory[image].hex.0;
    let mut block = Vec::with_capacity(kept.len());
    for ins in &kept {
        let rip_rel = ins.is_ip_rel_memory_operand();
        if rip_rel && inside(ins.ip_rel_memory_address()) {
            return None;
        }
        let mut ins = *ins;
        if ins.op_count() > 0 && is_near_branch(ins.op0_kind()) {
            let target = ins.near_branch_target();
            if inside(target) {
                let to = survivor(target)?;
                match ins.op0_kind() {
                    OpKind::NearBranch16 => ins.set_near_branch16(to as u16),
                    OpKind::NearBranch32 => ins.set_near_branch32(to as u32),
                    _ => ins.set_near_branch64(to),
                }
            }
        } else if !rip_rel {
            // Position-independent: its own bytes, so the encoding KVM sees stays the same.
            let off = (ins.ip() - CODE) as usize;
            let ip = ins.ip();
            ins = Instruction::with_declare_byte(&bytes[off..off + ins.len()]).ok()?;
            ins.set_ip(ip);
        }
        block.push(ins);
    }
    let bits = case.mode.bitness();
    let out = BlockEncoder::encode(
        bits,
        InstructionBlock::new(&block, CODE),
        BlockEncoderOptions::NONE,
    )
    .ok()?
    .code_buffer;
    // Instruction for instruction: a branch the encoder had to replace by a sequence would add
    // instructions (and change what the program counts and traces).
    let mut d = Decoder::with_ip(bits, &out, CODE, DecoderOptions::NONE);
    let mut placed = Vec::with_capacity(block.len());
    while d.can_decode() {
        placed.push(d.decode());
    }
    if placed.len() != kept.len()
        || placed
            .iter()
            .zip(&kept)
            .any(|(p, b)| p.mnemonic() != b.mnemonic())
    {
        return None;
    }
    let mut c = case.clone();
    if let Some(rip) = c.regs.rip.as_mut().filter(|r| inside(r.0)) {
        let old = survivor(rip.0)?;
        rip.0 = placed[kept.iter().position(|i| i.ip() == old)?].ip();
    }
    c.memory[image].hex.0 = out;
    Some(c)
}

/// Whether an operand is a relative near branch target.
fn is_near_branch(k: OpKind) -> bool {
    matches!(
        k,
        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Code, MemoryOperand, Register};
    use kvmconf_guests::r#gen::source::{Source, SplitMix};
    use kvmconf_guests::r#gen::{DATA, Options, STACK_TOP, generate};
    use kvmconf_guests::interp::Machine;
    use kvmconf_guests::result::CaseResult;
    use std::collections::HashMap;

    /// Where each instruction boundary of `before` (NOPs included) went in `after`: to the
    /// address of the first instruction kept at or after it.
    fn moved(before: &Case, after: &Case) -> HashMap<u64, u64> {
        let all = instructions(before);
        let placed = instructions(after);
        let kept: Vec<u64> = all
            .iter()
            .filter(|i| i.mnemonic() != Mnemonic::Nop)
            .map(Instruction::ip)
            .collect();
        let mut out = HashMap::new();
        for (k, i) in all.iter().enumerate() {
            if let Some(s) = all[k..].iter().find(|i| i.mnemonic() != Mnemonic::Nop) {
                let n = kept.iter().position(|&ip| ip == s.ip()).expect("kept");
                out.insert(i.ip(), placed[n].ip());
            }
        }
        out
    }

    /// `after` is `before` without its NOPs, instruction for instruction, each branch reaching the
    /// instruction (by index among those left) it reached, or the next one left after it, and
    /// each target outside the image and each RIP-relative address unchanged.
    fn assert_same_program(before: &Case, after: &Case) {
        let end = CODE + before.memory[code_index(before).unwrap()].hex.0.len() as u64;
        let kept: Vec<Instruction> = instructions(before)
            .into_iter()
            .filter(|i| i.mnemonic() != Mnemonic::Nop)
            .collect();
        let placed = instructions(after);
        let m = moved(before, after);
        let names = |v: &[Instruction]| v.iter().map(|i| i.mnemonic()).collect::<Vec<_>>();
        assert_eq!(names(&kept), names(&placed), "{:?}", before.name);
        assert!(placed.iter().all(|i| i.mnemonic() != Mnemonic::Nop));
        for (b, a) in kept.iter().zip(&placed) {
            if b.op_count() > 0 && is_near_branch(b.op0_kind()) {
                let t = b.near_branch_target();
                let want = if (CODE..end).contains(&t) { m[&t] } else { t };
                assert_eq!(
                    a.near_branch_target(),
                    want,
                    "{b} at {:#x} became {a}",
                    b.ip()
                );
            } else if b.is_ip_rel_memory_operand() {
                assert_eq!(
                    a.ip_rel_memory_address(),
                    b.ip_rel_memory_address(),
                    "{b} -> {a}"
                );
            } else {
                let bytes = |c: &Case, i: &Instruction| {
                    let off = (i.ip() - CODE) as usize;
                    c.memory[0].hex.0[off..off + i.len()].to_vec()
                };
                assert_eq!(bytes(before, b), bytes(after, a), "{b} keeps its bytes");
            }
        }
    }

    /// A program in `mode` with forward and backward Jcc/JMP, a CALL and a LOOP over instructions
    /// that are then NOPed, and (long64) a RIP-relative operand.
    fn branchy(mode: Mode) -> Case {
        use iced_x86::code_asm::*;
        let mut a = CodeAssembler::new(mode.bitness()).unwrap();
        let (mut back, mut fwd, mut func, mut out, mut gone) = (
            a.create_label(),
            a.create_label(),
            a.create_label(),
            a.create_label(),
            a.create_label(),
        );
        a.mov(ecx, 3u32).unwrap();
        a.mov(eax, 0u32).unwrap();
        a.set_label(&mut back).unwrap();
        a.mov(edx, 0x11u32).unwrap(); // NOPed: the backward branches land on the ADD
        a.add(eax, 1u32).unwrap();
        a.mov(esi, 0x22u32).unwrap(); // NOPed
        a.cmp(eax, 2u32).unwrap();
        a.je(fwd).unwrap();
        a.mov(edi, 0x33u32).unwrap(); // NOPed
        a.loop_(back).unwrap();
        a.set_label(&mut fwd).unwrap();
        a.call(func).unwrap();
        a.jmp(gone).unwrap();
        a.mov(ebp, 0x44u32).unwrap(); // NOPed
        a.set_label(&mut gone).unwrap();
        a.mov(edx, 0x55u32).unwrap(); // NOPed: the JMP lands on the next instruction left
        a.xor(edi, edi).unwrap();
        a.jmp(out).unwrap();
        a.set_label(&mut func).unwrap();
        a.mov(esi, 0x66u32).unwrap(); // NOPed
        if mode == Mode::Long64 {
            let m = MemoryOperand::with_base_displ(Register::RIP, (DATA + 0x10) as i64);
            a.add_instruction(Instruction::with2(Code::Add_rm32_imm32, m, 7u32).unwrap())
                .unwrap();
        }
        match mode {
            Mode::Real16 => a.add_instruction(Instruction::with(Code::Retnw)).unwrap(),
            Mode::Prot32 => a.add_instruction(Instruction::with(Code::Retnd)).unwrap(),
            Mode::Long64 => a.add_instruction(Instruction::with(Code::Retnq)).unwrap(),
        }
        a.set_label(&mut out).unwrap();
        a.hlt().unwrap();
        let mut c = Case::new("branchy", mode, CODE, a.assemble(CODE).unwrap());
        c.regs.rsp = Some(STACK_TOP.into());
        c.memory.push(kvmconf_guests::case::MemInit {
            addr: DATA.into(),
            hex: kvmconf_guests::num::HexBytes(vec![1; 0x20]),
        });
        c.dump.push(kvmconf_guests::case::Dump {
            addr: DATA.into(),
            len: 0x20u64.into(),
        });
        nop_where(&c, |i| {
            matches!(i.immediate32(), 0x11 | 0x22 | 0x33 | 0x44 | 0x55 | 0x66)
                && i.mnemonic() == Mnemonic::Mov
        })
    }

    /// Compacting keeps every branch on its target instruction in all three modes, a branch into
    /// a removed instruction goes to the next one left, and the program computes the same.
    #[test]
    fn compact_keeps_every_branch_on_its_target_instruction() {
        for mode in [Mode::Real16, Mode::Prot32, Mode::Long64] {
            let before = branchy(mode);
            let after = compact(&before).unwrap_or_else(|| panic!("{mode:?}: not compacted"));
            let (b, a) = (&before.memory[0].hex.0, &after.memory[0].hex.0);
            assert!(
                a.len() < b.len() && !a.contains(&0x90),
                "{mode:?}: {a:02x?}"
            );
            assert_same_program(&before, &after);
            // The JMP over the NOPed MOVs now goes straight to the XOR after them.
            let placed = instructions(&after);
            let jmp = placed
                .iter()
                .find(|i| i.mnemonic() == Mnemonic::Jmp)
                .unwrap();
            let xor = placed
                .iter()
                .find(|i| i.mnemonic() == Mnemonic::Xor)
                .unwrap();
            assert_eq!(jmp.near_branch_target(), xor.ip(), "{mode:?}");
            let (rb, ra) = (
                kvmconf_guests::interp::run(&before),
                kvmconf_guests::interp::run(&after),
            );
            assert_same_result(&before, &after, &rb, &ra, &[]);
            assert_eq!(rb.regs.rax.0 & 0xffff, 2, "{mode:?}: the loop ran");
            if mode == Mode::Long64 {
                assert_eq!(
                    ra.memory[0].hex.0[0x10], 8,
                    "RIP-relative ADD hit DATA + 0x10"
                );
            }
            // Nothing to take out: no change.
            assert_eq!(compact(&after), None);
        }
    }

    /// Out of reach or into the middle of an instruction: no compacted form.
    #[test]
    fn compact_declines_what_it_cannot_keep_instruction_for_instruction() {
        // jmp short into the middle of the MOV's immediate.
        let code = vec![0xeb, 0x01, 0xb8, 0x90, 0x90, 0x90, 0x90, 0x90, 0xf4];
        let c = Case::new("mid", Mode::Prot32, CODE, code);
        assert_eq!(compact(&c), None);
        // LOOP to a target outside the image, at the end of rel8 reach: 10 bytes earlier it is
        // out of reach, and the encoder's replacement sequence would add instructions.
        let mut code = vec![0x90; 10];
        code.extend([0xe2, 0x7f, 0xf4]);
        let c = Case::new("loop", Mode::Prot32, CODE, code);
        assert_eq!(compact(&c), None);
        // A JMP there gets its near form instead.
        let mut code = vec![0x90; 10];
        code.extend([0xeb, 0x7f, 0xf4]);
        let c = Case::new("jmp", Mode::Prot32, CODE, code);
        let after = compact(&c).expect("compacted");
        assert_same_program(&c, &after);
        assert_eq!(after.memory[0].hex.0[0], 0xe9, "JMP rel32");
        // A NOP-free program.
        let c = Case::new("none", Mode::Prot32, CODE, vec![0x40, 0xf4]);
        assert_eq!(compact(&c), None);
    }

    /// The interpreter's result of `after`, with `before`'s RIP, and any code address pushed on
    /// the stack (a CALL's return address, an exception frame) mapped back to `before`'s.
    /// `pushed`: where code addresses were pushed (a CALL's return address: a later push may
    /// have overwritten all but a byte of it, so those bytes may differ).
    fn assert_same_result(
        before: &Case,
        after: &Case,
        rb: &CaseResult,
        ra: &CaseResult,
        pushed: &[u64],
    ) {
        let m = moved(before, after);
        let w = match before.mode {
            Mode::Real16 => 2,
            Mode::Prot32 => 4,
            Mode::Long64 => 8,
        };
        let mut ra = ra.clone();
        ra.regs.rip = rb.regs.rip;
        if let (
            kvmconf_guests::result::Exit::UnsupportedInstruction { rip: b, .. },
            kvmconf_guests::result::Exit::UnsupportedInstruction { rip: a, .. },
        ) = (&rb.exit, &mut ra.exit)
            && m.get(&b.0) == Some(&a.0)
        {
            *a = *b;
        }
        // A later push may have overwritten the upper part of a pushed address: its low 2 or 4
        // bytes are compared too.
        for (db, da) in rb.memory.iter().zip(ra.memory.iter_mut()) {
            let (b, a) = (&db.hex.0, &mut da.hex.0);
            for w in [2, 4, 8].into_iter().filter(|&n| n <= w) {
                for j in 0..b.len().saturating_sub(w - 1) {
                    let word = |x: &[u8]| {
                        let mut v = [0u8; 8];
                        v[..w].copy_from_slice(&x[j..j + w]);
                        u64::from_le_bytes(v)
                    };
                    if let Some(&to) = m.get(&word(b))
                        && word(a) == to
                    {
                        a[j..j + w].copy_from_slice(&b[j..j + w]);
                    }
                }
            }
            for &at in pushed {
                if let Some(k) = at.checked_sub(db.addr.0).filter(|&k| k < b.len() as u64) {
                    a[k as usize] = b[k as usize];
                }
            }
        }
        let d = kvmconf_guests::result::diff(rb, &ra, &Default::default());
        assert!(
            d.is_empty(),
            "{}: {:?} / {:?}: {:02x?} -> {:02x?}: {}",
            before.name,
            rb.exit,
            ra.exit,
            before.memory[0].hex.0,
            after.memory[0].hex.0,
            d.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    /// Generated programs in every mode with random instructions NOPed: the compacted program is
    /// the same program, and the interpreter's result is the same but for RIP (and code
    /// addresses on the stack, which move with the code).
    #[test]
    fn compacted_generated_programs_run_as_their_noped_originals() {
        let (mut done, mut total, mut compared) = (0, 0, 0);
        for mode in [Mode::Real16, Mode::Prot32, Mode::Long64] {
            for seed in 0..200u64 {
                let mut src = SplitMix(seed ^ 0xc0ffee);
                let opts = Options {
                    mode,
                    stubs: seed % 4 != 0,
                    data_mmio: false,
                    len: 4 + (seed % 50) as usize,
                };
                let case = generate(&opts, &mut src, &format!("c-{mode:?}-{seed}"));
                let noped = nop_where(&case, |_| src.chance(40));
                total += 1;
                let Some(after) = compact(&noped) else {
                    continue;
                };
                done += 1;
                assert_same_program(&noped, &after);
                // The result, and whether the program wrote to its own code (once NOPing took
                // away a pointer's set-up, a string store can land there): such a program runs
                // other code once its image moves.
                let run = |c: &Case| {
                    let mut c = c.clone();
                    let image = c.memory[0].hex.0.clone();
                    c.dump.push(kvmconf_guests::case::Dump {
                        addr: CODE.into(),
                        len: (image.len() as u64).into(),
                    });
                    let mut m = Machine::new(&c);
                    m.set_cap(20_000);
                    let (mut path, mut pushed) = (Vec::new(), Vec::new());
                    let w = u64::from(mode.bitness() / 8);
                    let mut r = m
                        .run_with(|m| {
                            path.push(m.cpu.rip);
                            if m.next_instruction()
                                .is_some_and(|i| i.mnemonic() == Mnemonic::Call)
                            {
                                let sp = m.cpu.gpr[4].wrapping_sub(w);
                                let sp = if mode == Mode::Real16 {
                                    sp & 0xffff
                                } else {
                                    sp
                                };
                                pushed.extend(sp..sp + w);
                            }
                            Ok(false)
                        })
                        .result;
                    if let kvmconf_guests::result::Exit::Exception { .. } = r.exit {
                        // The exception frame: RIP, CS, RFLAGS (and RSP, SS; an error code).
                        pushed.extend(r.regs.rsp.0..r.regs.rsp.0 + 6 * w);
                    }
                    let code = r.memory.pop().expect("code dump");
                    (r, code.hex.0 != image, path, pushed)
                };
                let ((rb, wrote, pb, pushed), (ra, _, pa, _)) = (run(&noped), run(&after));
                // The cap counts NOPs too: a program cut off by it stops at another point. And
                // a program that returns through a stack its NOPed set-up left behind leaves the
                // image for addresses that do not move with it.
                let end = CODE + noped.memory[0].hex.0.len() as u64;
                if rb.exit.kind() == "timeout"
                    || wrote
                    || pb.iter().any(|&r| !(CODE..end).contains(&r))
                {
                    continue;
                }
                // The same path through the program, less the NOPs.
                let m = moved(&noped, &after);
                let nops: Vec<u64> = instructions(&noped)
                    .iter()
                    .filter(|i| i.mnemonic() == Mnemonic::Nop)
                    .map(Instruction::ip)
                    .collect();
                let want: Vec<u64> = pb
                    .iter()
                    .filter(|r| !nops.contains(r))
                    .map(|r| m[r])
                    .collect();
                assert_eq!(want, pa, "{}: the path", noped.name);
                assert_same_result(&noped, &after, &rb, &ra, &pushed);
                compared += 1;
            }
        }
        assert!(done * 100 >= total * 95, "compacted {done} of {total}");
        // The rest timed out, wrote to their code or left it (NOPing took away their set-up).
        assert!(compared * 2 >= done, "compared {compared} of {done}");
    }
}

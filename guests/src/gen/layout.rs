//! Lays out and encodes a generated program without iced-x86's `BlockEncoder`: instruction bytes come
//! from the generator's one encode of each instruction, and each branch gets the form (rel8 or
//! rel16/rel32) the `BlockEncoder` would pick, with its rules, so the bytes are the same.
//!
//! The `BlockEncoder` sizes every branch for its longest form first, then walks the program up to
//! five times: a branch whose target is in rel8 reach becomes short (and is final); one that is not
//! becomes near, and is final once the target is more than 15×128 bytes away. Forward targets use
//! the previous pass's addresses, corrected by the bytes already saved in this pass. The same rules
//! are applied here; anything this module does not model (a LOOP/JCXZ that needs its long
//! replacement sequence) returns `None`, and the caller falls back to iced's assembler. A unit test
//! compares both on generated and on synthetic branch-heavy programs.

use super::CODE;
use super::program::{CONDS, Step, code};
use crate::case::Mode;
use iced_x86::{Code, Encoder, Instruction};
use std::sync::OnceLock;

/// What one laid-out item is.
#[derive(Clone, Copy)]
enum Kind {
    /// An instruction whose pooled bytes are position-independent.
    Bytes { at: u32 },
    /// An instruction with a RIP-relative operand: encoded again at its address.
    RipRel(Instruction),
    /// A Jcc, JMP or LOOP/JCXZ: `short` and `near` codes, and whether it is LOOP/JCXZ (no near form
    /// of its own; its near size is a replacement sequence this module does not write).
    Branch {
        short: Code,
        near: Code,
        loop_like: bool,
    },
    /// A CALL rel16/rel32 (one form).
    Call(Code),
    /// The final HLT.
    Hlt,
}

/// Branch-form state, as the `BlockEncoder` keeps it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    Undecided,
    Short,
    Near,
}

#[derive(Clone, Copy)]
struct Item {
    kind: Kind,
    size: u32,
    done: bool,
    form: Form,
    short_len: u32,
    near_len: u32,
    /// The item a branch goes to.
    target: usize,
}

/// Codes for one mode: Jcc short by condition (the order of `CONDS` in the generator), JMP short,
/// CALL, LOOP/LOOPE/LOOPNE/JCXZ-family; and the encoded sizes of their forms.
struct Codes {
    jcc: [Code; 16],
    jmp: Code,
    call: Code,
    short: [Code; 4],
    /// Short and near Jcc.
    jcc_len: (u32, u32),
    /// Short and near JMP.
    jmp_len: (u32, u32),
    call_len: u32,
    /// LOOP/JCXZ (all rel8).
    short_len: u32,
}

fn codes(mode: Mode) -> &'static Codes {
    static TABLES: OnceLock<[Codes; 3]> = OnceLock::new();
    let tables = TABLES.get_or_init(|| {
        let make = |bits: u32| {
            let by_name =
                |name: String| code(&name).unwrap_or_else(|| panic!("iced-x86 has no code {name}"));
            let (cx, jcx, near) = match bits {
                16 => ("CX", "Jcxz", "16".to_string()),
                32 => ("ECX", "Jecxz", "32_32".to_string()),
                _ => ("RCX", "Jrcxz", "32_64".to_string()),
            };
            let jcc = CONDS.map(|c| by_name(format!("J{c}_rel8_{bits}")));
            let jmp = by_name(format!("Jmp_rel8_{bits}"));
            let call = by_name(format!("Call_rel{near}"));
            let short = [
                by_name(format!("Loop_rel8_{bits}_{cx}")),
                by_name(format!("Loope_rel8_{bits}_{cx}")),
                by_name(format!("Loopne_rel8_{bits}_{cx}")),
                by_name(format!("{jcx}_rel8_{bits}")),
            ];
            let mut enc = Encoder::new(bits);
            let mut len = |code: Code| size_of(&mut enc, code);
            let jcc_len = (len(jcc[0]), len(jcc[0].as_near_branch()));
            assert!(
                jcc.iter().all(|&c| len(c) == jcc_len.0),
                "Jcc rel8 sizes differ"
            );
            Codes {
                jcc_len,
                jmp_len: (len(jmp), len(jmp.as_near_branch())),
                call_len: len(call),
                short_len: len(short[0]),
                jcc,
                jmp,
                call,
                short,
            }
        };
        [make(16), make(32), make(64)]
    });
    &tables[match mode {
        Mode::Real16 => 0,
        Mode::Prot32 => 1,
        Mode::Long64 => 2,
    }]
}

/// Size of an encoded branch form (the `BlockEncoder` sizes it with a target of 0 at address 0).
fn size_of(enc: &mut Encoder, code: Code) -> u32 {
    let ins = Instruction::with_branch(code, 0).expect("branch code");
    let len = enc.encode(&ins, 0).expect("branch encodes") as u32;
    drop(enc.take_buffer());
    len
}

/// The program's bytes at `CODE`, or `None` where iced's assembler must do it.
pub(super) fn assemble(mode: Mode, steps: &[Step], labels: usize, pool: &[u8]) -> Option<Vec<u8>> {
    let bits = mode.bitness();
    let long = bits == 64;
    let codes = codes(mode);
    let mut enc = Encoder::new(bits);
    // The BlockEncoder's size for the 64-bit "long" forms (through a pointer) of JMP/CALL, and of
    // Jcc/LOOP (a reversed short branch over it).
    const POINTER_FORM: u32 = 6;
    let mut label_at = vec![usize::MAX; labels];
    let mut items: Vec<Item> = Vec::with_capacity(steps.len() + 1);
    let mut targets: Vec<usize> = Vec::with_capacity(steps.len() + 1);
    let blank = Item {
        kind: Kind::Hlt,
        size: 1,
        done: true,
        form: Form::Undecided,
        short_len: 0,
        near_len: 0,
        target: 0,
    };
    for step in steps {
        let (item, label) = match *step {
            Step::Label(l) => {
                label_at[l] = items.len();
                continue;
            }
            Step::Ins(ins, at, len) => {
                let kind = if ins.is_ip_rel_memory_operand() {
                    Kind::RipRel(ins)
                } else {
                    Kind::Bytes { at }
                };
                let item = Item {
                    kind,
                    size: u32::from(len),
                    ..blank
                };
                (item, usize::MAX)
            }
            Step::Jcc(cc, l) => {
                let short = codes.jcc[cc];
                let (s, n) = codes.jcc_len;
                let size = if long { n.max(s + POINTER_FORM) } else { n };
                (
                    branch(short, short.as_near_branch(), false, (s, n), size),
                    l,
                )
            }
            Step::Jmp(l) => {
                let (s, n) = codes.jmp_len;
                let size = if long { n.max(POINTER_FORM) } else { n };
                (
                    branch(codes.jmp, codes.jmp.as_near_branch(), false, (s, n), size),
                    l,
                )
            }
            Step::Short(kind, l) => {
                let short = codes.short[usize::from(kind.min(3))];
                // Out of rel8 reach iced replaces it: LOOP rel8 over a JMP short, then a JMP near
                // (64-bit mode: a JMP through a pointer).
                let s = codes.short_len;
                let n = s + 2 + if bits == 16 { 3 } else { 5 };
                let size = if long {
                    s.max(n).max(s + 2 + POINTER_FORM)
                } else {
                    s.max(n)
                };
                (branch(short, short, true, (s, n), size), l)
            }
            Step::Call(l) => {
                let len = codes.call_len;
                let size = if long { len.max(POINTER_FORM) } else { len };
                let item = Item {
                    kind: Kind::Call(codes.call),
                    size,
                    done: false,
                    near_len: len,
                    ..blank
                };
                (item, l)
            }
        };
        items.push(item);
        targets.push(label);
    }
    items.push(blank);
    targets.push(usize::MAX);
    for (item, label) in items.iter_mut().zip(&targets) {
        if *label != usize::MAX {
            item.target = label_at[*label];
            if item.target == usize::MAX {
                return None;
            }
        }
    }
    // Start addresses with every branch at its longest.
    let mut ips = Vec::with_capacity(items.len());
    let mut ip = CODE;
    for item in &items {
        ips.push(ip);
        ip = ip.wrapping_add(u64::from(item.size));
    }
    for _ in 0..5 {
        let mut updated = false;
        let mut gained = 0u64;
        let mut ip = CODE;
        for i in 0..items.len() {
            ips[i] = ip;
            let target_ip = ips[items[i].target];
            let item = &mut items[i];
            if !item.done {
                let old = item.size;
                match item.kind {
                    Kind::Call(_) => {
                        item.size = item.near_len;
                        item.done = true;
                    }
                    Kind::Branch { .. } if item.form == Form::Short => item.done = true,
                    Kind::Branch { .. } => {
                        let next = ip.wrapping_add(u64::from(item.short_len));
                        let mut diff = target_ip.wrapping_sub(next) as i64;
                        if diff >= 0 {
                            diff -= gained as i64;
                        }
                        let diff = match bits {
                            16 => i64::from(diff as i16),
                            32 => i64::from(diff as i32),
                            _ => diff,
                        };
                        if (-128..=127).contains(&diff) {
                            item.form = Form::Short;
                            item.size = item.short_len;
                            item.done = true;
                        } else {
                            if !(15 * -128..=15 * 127).contains(&diff) {
                                item.done = true;
                            }
                            item.form = Form::Near;
                            item.size = item.near_len;
                        }
                    }
                    _ => {}
                }
                if item.size < old {
                    gained += u64::from(old - item.size);
                    updated = true;
                }
            }
            ip = ip.wrapping_add(u64::from(item.size));
        }
        if !updated {
            break;
        }
    }
    // Encode at the final addresses (targets as the last pass left them, as iced does); the
    // encoder appends straight to the output.
    let mut out = Vec::with_capacity(items.iter().map(|i| i.size as usize).sum());
    let mut ip = CODE;
    for item in &items {
        let start = out.len();
        let ins = match item.kind {
            Kind::Bytes { at } => {
                let at = at as usize;
                out.extend_from_slice(pool.get(at..at + item.size as usize)?);
                None
            }
            Kind::RipRel(ins) => Some(ins),
            Kind::Branch {
                short,
                near,
                loop_like,
            } => {
                let code = match item.form {
                    Form::Short => short,
                    Form::Near if !loop_like => near,
                    _ => return None,
                };
                Some(Instruction::with_branch(code, ips[item.target]).ok()?)
            }
            Kind::Call(code) => Some(Instruction::with_branch(code, ips[item.target]).ok()?),
            Kind::Hlt => {
                out.push(0xf4);
                None
            }
        };
        if let Some(ins) = ins {
            enc.set_buffer(std::mem::take(&mut out));
            let encoded = enc.encode(&ins, ip);
            out = enc.take_buffer();
            encoded.ok()?;
        }
        if out.len() - start != item.size as usize {
            return None;
        }
        ip = ip.wrapping_add(u64::from(item.size));
    }
    Some(out)
}

/// A Jcc/JMP/LOOP item, undecided, at `size` (its longest form).
fn branch(short: Code, near: Code, loop_like: bool, lens: (u32, u32), size: u32) -> Item {
    Item {
        kind: Kind::Branch {
            short,
            near,
            loop_like,
        },
        size,
        done: false,
        form: Form::Undecided,
        short_len: lens.0,
        near_len: lens.1,
        target: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::super::program::{Step, assemble_iced, steps_of};
    use super::super::source::{Source, SplitMix};
    use super::super::{CODE, Options};
    use super::*;
    use iced_x86::Register;

    /// Generated programs in every mode and shape: the fast layout declines or matches iced byte
    /// for byte, and declines rarely.
    #[test]
    fn layout_matches_iced_block_encoder_on_generated_programs() {
        let mut fast = 0;
        let mut total = 0;
        for mode in [Mode::Real16, Mode::Prot32, Mode::Long64] {
            for i in 0..1500u64 {
                let opts = Options {
                    mode,
                    stubs: i % 4 != 0,
                    data_mmio: i % 5 == 0,
                    len: 1 + (i % 70) as usize,
                };
                let (steps, labels, pool) = steps_of(&opts, &mut SplitMix(i ^ 0xa55a));
                let want = assemble_iced(mode, &steps, labels);
                total += 1;
                if let Some(got) = assemble(mode, &steps, labels, &pool) {
                    fast += 1;
                    assert_eq!(
                        Some(&got),
                        want.as_ref().ok(),
                        "{mode:?} program {i}: {steps:?}"
                    );
                }
            }
        }
        assert!(fast * 100 >= total * 99, "fast layout on {fast} of {total}");
    }

    /// Synthetic branch-heavy programs: forward and backward Jcc/JMP/CALL/LOOP over padding of
    /// 1–15-byte instructions, so branches need near forms, shrink over several passes, and LOOPs
    /// fall out of rel8 reach (where the fast layout must decline).
    #[test]
    fn layout_matches_iced_block_encoder_on_branch_heavy_programs() {
        let mut src = SplitMix(7);
        let (mut fast, mut near, mut declined) = (0, 0, 0);
        for case in 0..3000u64 {
            let mode = [Mode::Real16, Mode::Prot32, Mode::Long64][(case % 3) as usize];
            let mut enc = Encoder::new(mode.bitness());
            let mut pool = Vec::new();
            let mut ins = |i: Instruction, pool: &mut Vec<u8>| {
                let at = pool.len();
                let len = enc.encode(&i, CODE).expect("encodes");
                pool.extend_from_slice(&enc.take_buffer());
                Step::Ins(i, at as u32, len as u8)
            };
            let labels = 1 + src.below(12) as usize;
            let n = 5 + src.below(120) as usize;
            // Every label is placed exactly once, at a random position.
            let mut places: Vec<usize> = (0..labels)
                .map(|_| src.below(n as u64 + 1) as usize)
                .collect();
            let mut steps = Vec::new();
            for at in 0..=n {
                for (l, p) in places.iter_mut().enumerate() {
                    if *p == at {
                        steps.push(Step::Label(l));
                        *p = usize::MAX;
                    }
                }
                if at == n {
                    break;
                }
                let l = src.below(labels as u64) as usize;
                // LOOP/JCXZ rarely: one out of rel8 reach makes the whole case decline.
                let step = match src.below(40) {
                    0..=3 => Step::Jcc(src.below(16) as usize, l),
                    4..=6 => Step::Jmp(l),
                    7..=8 => Step::Call(l),
                    9 => Step::Short(src.below(4) as u8, l),
                    10..=19 => {
                        let r = if mode == Mode::Real16 {
                            Register::AX
                        } else {
                            Register::EAX
                        };
                        let c = if mode == Mode::Real16 {
                            Code::Mov_r16_imm16
                        } else {
                            Code::Mov_r32_imm32
                        };
                        ins(Instruction::with2(c, r, 5u32).expect("mov"), &mut pool)
                    }
                    20..=24 if mode == Mode::Long64 => {
                        // RIP-relative: encoded again at its final address.
                        let m = iced_x86::MemoryOperand::with_base_displ(Register::RIP, 0x4010);
                        ins(
                            Instruction::with2(Code::Add_rm32_imm32, m, 7u32).expect("add"),
                            &mut pool,
                        )
                    }
                    25..=29 if mode == Mode::Long64 => ins(
                        Instruction::with2(Code::Mov_r64_imm64, Register::R9, 0x1122_3344_5566u64)
                            .expect("mov"),
                        &mut pool,
                    ),
                    _ => {
                        // A long instruction: 32-bit displacement and immediate.
                        let base = match mode {
                            Mode::Real16 => Register::BX,
                            _ => Register::EBX,
                        };
                        let m = iced_x86::MemoryOperand::with_base_displ(base, 0x1234);
                        let c = match mode {
                            Mode::Real16 => Code::Add_rm16_imm16,
                            _ => Code::Add_rm32_imm32,
                        };
                        ins(Instruction::with2(c, m, 0x3456u32).expect("add"), &mut pool)
                    }
                };
                steps.push(step);
            }
            let want = assemble_iced(mode, &steps, labels);
            match assemble(mode, &steps, labels, &pool) {
                Some(got) => {
                    fast += 1;
                    assert_eq!(
                        Some(&got),
                        want.as_ref().ok(),
                        "{mode:?} case {case}: {steps:?}"
                    );
                    // A near Jcc (0F 8x) or JMP/CALL rel16/32 somewhere in a long program.
                    if got.len() > 300
                        && got.windows(2).any(|w| w[0] == 0x0f && w[1] & 0xf0 == 0x80)
                    {
                        near += 1;
                    }
                }
                None => declined += 1,
            }
        }
        assert!(
            fast > 1000,
            "fast layout on {fast} cases, declined {declined}"
        );
        assert!(near > 100, "near forms in {near} cases");
        assert!(declined > 10, "LOOP out of reach in {declined} cases");
    }
}

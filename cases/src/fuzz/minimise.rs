//! A delta-debugging minimiser over a case's program: instructions are replaced by NOPs of the
//! same length (so branch targets stay put) in shrinking chunks while the finding keeps its
//! signature; then the NOPs are dropped if that still reproduces, registers are zeroed one by
//! one, the data image is cleared in halves and I/O answers are dropped.

use kvmconf_guests::case::Case;
use kvmconf_guests::r#gen::CODE;

/// Most candidate runs one minimisation may spend.
pub const MAX_TRIES: usize = 400;

/// Most wall-clock time one minimisation may spend.
pub const MAX_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Deadline of a candidate run: removing an instruction can make a loop endless, and the
/// original's full deadline per candidate would make minimising take minutes.
pub const CANDIDATE_TIMEOUT_MS: u64 = 100;

/// Instruction boundaries `(offset, len)` of the code image at `CODE`.
fn instructions(case: &Case) -> Option<(usize, Vec<(usize, usize)>)> {
    let i = case.memory.iter().position(|m| m.addr.0 == CODE)?;
    let code = &case.memory[i].hex.0;
    let mut dec = iced_x86::Decoder::with_ip(
        case.mode.bitness(),
        code,
        CODE,
        iced_x86::DecoderOptions::NONE,
    );
    let mut out = Vec::new();
    let mut off = 0usize;
    while dec.can_decode() && out.len() < 4096 {
        let ins = dec.decode();
        out.push((off, ins.len()));
        off += ins.len();
    }
    Some((i, out))
}

/// Shrinks `case` while `reproduces` holds; returns the smallest case found (at worst `case`).
pub fn minimise(case: &Case, reproduces: &mut dyn FnMut(&Case) -> bool) -> Case {
    let mut best = case.clone();
    best.timeout_ms = Some(case.deadline_ms().min(CANDIDATE_TIMEOUT_MS));
    if !reproduces(&best) {
        // Needs the full deadline (a timeout finding): minimise with it.
        best.timeout_ms = case.timeout_ms;
    }
    let started = std::time::Instant::now();
    let mut tries = 0usize;
    let mut attempt = |c: &Case, best: &mut Case, tries: &mut usize| -> bool {
        if *tries >= MAX_TRIES || started.elapsed() > MAX_TIME || c.validate().is_err() {
            return false;
        }
        *tries += 1;
        if reproduces(c) {
            *best = c.clone();
            true
        } else {
            false
        }
    };
    // 1. NOP out chunks of instructions (never the last one, the final HLT).
    if let Some((mi, ins)) = instructions(&best) {
        let body = ins.len().saturating_sub(1);
        let mut live: Vec<bool> = vec![true; body];
        let mut chunk = body.div_ceil(2).max(1);
        loop {
            let mut start = 0;
            while start < body {
                let end = (start + chunk).min(body);
                if live[start..end].iter().any(|&l| l) {
                    let mut c = best.clone();
                    for (k, &(off, len)) in ins.iter().enumerate().take(end).skip(start) {
                        if live[k] {
                            c.memory[mi].hex.0[off..off + len].fill(0x90);
                        }
                    }
                    if attempt(&c, &mut best, &mut tries) {
                        live[start..end].fill(false);
                    }
                }
                start = end;
            }
            if chunk == 1 {
                break;
            }
            chunk = chunk.div_ceil(2);
        }
        // 2. Drop the NOPs we wrote (targets move: keep only if it still reproduces).
        let mut c = best.clone();
        let code = &best.memory[mi].hex.0;
        let mut kept = Vec::new();
        for (k, &(off, len)) in ins.iter().enumerate() {
            if k >= body || live[k] {
                kept.extend_from_slice(&code[off..off + len]);
            }
        }
        if kept.len() < code.len() {
            c.memory[mi].hex.0 = kept;
            attempt(&c, &mut best, &mut tries);
        }
    }
    // 3. Zero registers (rip, rsp and rbx, the data pointer, stay).
    for r in 0..16 {
        let mut c = best.clone();
        let g = &mut c.regs;
        let slot = match r {
            0 => &mut g.rax,
            1 => &mut g.rcx,
            2 => &mut g.rdx,
            3 => &mut g.rbp,
            4 => &mut g.rsi,
            5 => &mut g.rdi,
            6 => &mut g.r8,
            7 => &mut g.r9,
            8 => &mut g.r10,
            9 => &mut g.r11,
            10 => &mut g.r12,
            11 => &mut g.r13,
            12 => &mut g.r14,
            13 => &mut g.r15,
            14 => &mut g.rflags,
            _ => continue,
        };
        if slot.is_some() {
            *slot = None;
            attempt(&c, &mut best, &mut tries);
        }
    }
    // 4. Clear the other images (data, then stack) in halves, and the MMIO buffers.
    for which in 0..2 {
        let n = if which == 0 {
            best.memory.len()
        } else {
            best.mmio.len()
        };
        for i in 0..n {
            let len = if which == 0 {
                best.memory[i].hex.0.len()
            } else {
                best.mmio[i].hex.0.len()
            };
            if which == 0 && best.memory[i].addr.0 == CODE {
                continue;
            }
            let mut piece = len.div_ceil(2).max(1);
            while piece >= 64 || piece == len {
                let mut s = 0;
                while s < len {
                    let e = (s + piece).min(len);
                    let mut c = best.clone();
                    let buf = if which == 0 {
                        &mut c.memory[i].hex.0
                    } else {
                        &mut c.mmio[i].hex.0
                    };
                    if buf[s..e].iter().any(|&b| b != 0) {
                        buf[s..e].fill(0);
                        attempt(&c, &mut best, &mut tries);
                    }
                    s = e;
                }
                if piece == 1 {
                    break;
                }
                piece /= 2;
            }
        }
    }
    // 5. Trim trailing zeros of the data images (RAM is zero anyway) and MMIO buffers.
    {
        let mut c = best.clone();
        c.memory
            .retain(|m| m.addr.0 == CODE || m.hex.0.iter().any(|&b| b != 0));
        for m in c.memory.iter_mut().filter(|m| m.addr.0 != CODE) {
            let n = m.hex.0.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            m.hex.0.truncate(n);
        }
        for m in &mut c.mmio {
            let n = m.hex.0.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            m.hex.0.truncate(n);
        }
        if c != best {
            attempt(&c, &mut best, &mut tries);
        }
    }
    // 6. Drop I/O answers.
    if !best.io_in.is_empty() {
        let mut c = best.clone();
        c.io_in.clear();
        attempt(&c, &mut best, &mut tries);
    }
    best.timeout_ms = case.timeout_ms;
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmconf_guests::case::Mode;

    #[test]
    fn minimise_keeps_only_the_instruction_that_matters() {
        // mov eax,1; mov ecx,2; mov edx,3; hlt — the "finding" is rdx = 3 at the end.
        let code = vec![0xb8, 1, 0, 0, 0, 0xb9, 2, 0, 0, 0, 0xba, 3, 0, 0, 0, 0xf4];
        let mut c = Case::new("m", Mode::Prot32, CODE, code);
        c.regs.rsp = Some(0x8000.into());
        let mut repro = |c: &Case| kvmconf_guests::interp::run(c).regs.rdx.0 == 3;
        let m = minimise(&c, &mut repro);
        assert_eq!(m.memory[0].hex.0, vec![0xba, 3, 0, 0, 0, 0xf4]);
    }
}

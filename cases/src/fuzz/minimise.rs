//! A delta-debugging minimiser over a case's program, driving the oracle's shrinker
//! ([`crate::oracle::shrink`]): instructions are replaced by NOPs of the same length (so branch
//! targets stay put) while the finding keeps its signature; then the NOPs are taken out with the
//! branches re-aimed ([`shrink::compact`]) if that still reproduces, registers are zeroed one by
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

use crate::oracle::shrink;

/// A minimisation under way: the smallest case yet, the candidates kept, and the budget spent.
struct Shrink<'a> {
    best: Case,
    steps: Vec<Case>,
    tries: usize,
    started: std::time::Instant,
    /// The deadline the kept steps get (the original's).
    timeout_ms: Option<u64>,
    reproduces: &'a mut dyn FnMut(&Case) -> bool,
}

impl Shrink<'_> {
    /// Runs candidate `c` within the budget; keeps it (as the best and a step) if it reproduces.
    fn attempt(&mut self, c: &Case) -> bool {
        if self.tries >= MAX_TRIES || self.started.elapsed() > MAX_TIME || c.validate().is_err() {
            return false;
        }
        self.tries += 1;
        if !(self.reproduces)(c) {
            return false;
        }
        self.best = c.clone();
        let mut step = c.clone();
        step.timeout_ms = self.timeout_ms;
        self.steps.push(step);
        true
    }
}

/// Shrinks `case` while `reproduces` holds; returns the smallest case found (at worst `case`).
pub fn minimise(case: &Case, reproduces: &mut dyn FnMut(&Case) -> bool) -> Case {
    minimise_steps(case, reproduces)
        .pop()
        .unwrap_or_else(|| case.clone())
}

/// Shrinks `case` while `reproduces` holds, as [`minimise`]: every candidate it kept, in order
/// (each smaller than the one before; the last is the smallest), with `case`'s deadline. Empty
/// when nothing could be taken away.
pub fn minimise_steps(case: &Case, reproduces: &mut dyn FnMut(&Case) -> bool) -> Vec<Case> {
    let mut best = case.clone();
    best.timeout_ms = Some(case.deadline_ms().min(CANDIDATE_TIMEOUT_MS));
    if !reproduces(&best) {
        // Needs the full deadline (a timeout finding): minimise with it.
        best.timeout_ms = case.timeout_ms;
    }
    let mut s = Shrink {
        best,
        steps: Vec::new(),
        tries: 0,
        started: std::time::Instant::now(),
        timeout_ms: case.timeout_ms,
        reproduces,
    };
    // 1. NOP out instructions as the oracle's shrinker does: one mnemonic kept alone, then runs of
    //    instructions halving down to one (never the final HLT).
    let start = s.best.clone();
    let focused = shrink::focus(&start, |c| s.attempt(c));
    shrink::minimise(&focused, |c| s.attempt(c));
    // 2. Take the NOPs out, branches re-aimed at the instructions they reached (kept only if it
    //    still reproduces).
    if let Some(c) = shrink::compact(&s.best) {
        s.attempt(&c);
    }
    // 3. Zero registers (rip, rsp and rbx, the data pointer, stay).
    for r in 0..16 {
        let mut c = s.best.clone();
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
            s.attempt(&c);
        }
    }
    // 4. Clear the other images (data, then stack) in halves, and the MMIO buffers.
    for which in 0..2 {
        let n = if which == 0 {
            s.best.memory.len()
        } else {
            s.best.mmio.len()
        };
        for i in 0..n {
            let len = if which == 0 {
                s.best.memory[i].hex.0.len()
            } else {
                s.best.mmio[i].hex.0.len()
            };
            if which == 0 && s.best.memory[i].addr.0 == CODE {
                continue;
            }
            let mut piece = len.div_ceil(2).max(1);
            while piece >= 64 || piece == len {
                let mut from = 0;
                while from < len {
                    let e = (from + piece).min(len);
                    let mut c = s.best.clone();
                    let buf = if which == 0 {
                        &mut c.memory[i].hex.0
                    } else {
                        &mut c.mmio[i].hex.0
                    };
                    if buf[from..e].iter().any(|&b| b != 0) {
                        buf[from..e].fill(0);
                        s.attempt(&c);
                    }
                    from = e;
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
        let mut c = s.best.clone();
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
        if c != s.best {
            s.attempt(&c);
        }
    }
    // 6. Drop I/O answers.
    if !s.best.io_in.is_empty() {
        let mut c = s.best.clone();
        c.io_in.clear();
        s.attempt(&c);
    }
    s.steps
}

/// What re-running a shrunk case on a fresh VM found ([`verify_fresh`]). Shrinking runs its
/// candidates on pooled VMs, reset between cases; a finding that depends on what the pool's VM
/// did before does not reproduce in `kvmconf repro`, which starts from a fresh one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fresh {
    /// The smallest candidate reproduces on a fresh VM.
    Smallest,
    /// It does not: step `kept` of `of` (counting from 1) does, and step `kept + 1` does not.
    Fallback {
        /// The step kept.
        kept: usize,
        /// Steps in all.
        of: usize,
    },
    /// No step checked reproduces on a fresh VM (`steps` is 0 when nothing shrank): the original
    /// input is kept, and `reproduces` says whether it does there itself.
    Original {
        /// Shrinking steps there were.
        steps: usize,
        /// Whether the original input reproduces on a fresh VM.
        reproduces: bool,
    },
}

impl std::fmt::Display for Fresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let original = |reproduces: bool| {
            if reproduces {
                "which reproduces there"
            } else {
                "which does not reproduce there either (it depends on the pooled VM it ran on)"
            }
        };
        match self {
            Fresh::Smallest => write!(f, "fresh VM: the minimised case reproduces on a fresh VM"),
            Fresh::Fallback { kept, of } => write!(
                f,
                "fresh VM: the smallest candidate (step {of} of {of}) does not reproduce on a \
                 fresh VM, only on the pooled one it was shrunk on; kept step {kept}, which \
                 does (step {} does not)",
                kept + 1
            ),
            Fresh::Original {
                steps: 0,
                reproduces,
            } => write!(
                f,
                "fresh VM: nothing shrank; kept the input, {}",
                original(*reproduces)
            ),
            Fresh::Original { steps, reproduces } => write!(
                f,
                "fresh VM: none of the {steps} shrinking steps checked reproduces on a fresh VM; \
                 kept the original input, {}",
                original(*reproduces)
            ),
        }
    }
}

/// The case to write for a finding shrunk from `original` through `steps` (what
/// [`minimise_steps`] kept, each smaller than the one before): the smallest if `fresh` (a run on
/// a fresh VM) reproduces it; else a step that does, where the next one does not, found by
/// bisection (the steps after one that lost what the finding needs on a fresh VM have usually
/// lost it too, so this is the last that does, in about log2(steps) runs); else the original
/// input. And what was found.
pub fn verify_fresh(
    original: &Case,
    steps: &[Case],
    fresh: &mut dyn FnMut(&Case) -> bool,
) -> (Case, Fresh) {
    let Some(last) = steps.last() else {
        let reproduces = fresh(original);
        return (
            original.clone(),
            Fresh::Original {
                steps: 0,
                reproduces,
            },
        );
    };
    if fresh(last) {
        return (last.clone(), Fresh::Smallest);
    }
    // Invariant: step `hi` does not reproduce; step `good - 1` does (`good` 0: none known to,
    // the original unchecked).
    let (mut good, mut hi) = (0usize, steps.len() - 1);
    while good < hi {
        let mid = good + (hi - good) / 2;
        if fresh(&steps[mid]) {
            good = mid + 1;
        } else {
            hi = mid;
        }
    }
    match good.checked_sub(1) {
        Some(i) => (
            steps[i].clone(),
            Fresh::Fallback {
                kept: i + 1,
                of: steps.len(),
            },
        ),
        None => {
            let reproduces = fresh(original);
            (
                original.clone(),
                Fresh::Original {
                    steps: steps.len(),
                    reproduces,
                },
            )
        }
    }
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

    /// The NOPs are taken out with the loop's branch re-aimed: what is left is the three
    /// instructions the finding needs and the HLT, and it still reproduces.
    #[test]
    fn minimise_takes_the_nops_out_and_keeps_the_loop_on_its_target() {
        // mov ecx,3; xor edx,edx; L: add edx,1; mov eax,7; loop L; hlt — the "finding" is rdx = 3.
        let code = vec![
            0xb9, 3, 0, 0, 0, 0x31, 0xd2, 0x83, 0xc2, 0x01, 0xb8, 7, 0, 0, 0, 0xe2, 0xf6, 0xf4,
        ];
        let mut c = Case::new("m", Mode::Prot32, CODE, code);
        c.regs.rsp = Some(0x8000.into());
        let mut repro = |c: &Case| {
            let r = kvmconf_guests::interp::run(c);
            r.exit == kvmconf_guests::result::Exit::Hlt && r.regs.rdx.0 == 3
        };
        let m = minimise(&c, &mut repro);
        assert_eq!(
            m.memory[0].hex.0,
            vec![0xb9, 3, 0, 0, 0, 0x83, 0xc2, 0x01, 0xe2, 0xfb, 0xf4]
        );
        assert!(repro(&m));
    }

    /// A shrink whose candidates ran on a "pool" that leaks RDX from one run into the next (a
    /// stale register, as a pooled VM could leak state): the predicate of the finding, rdx = 3 at
    /// the end, then holds for candidates that no longer set it, and only a fresh run tells.
    #[test]
    fn a_step_that_reproduces_only_on_the_pool_falls_back_to_the_last_fresh_one() {
        // mov edx,3; mov eax,1; mov ecx,2; hlt: the last run is NOPed first, so the first step
        // keeps the MOV to EDX and the next ones lose it.
        let code = vec![0xba, 3, 0, 0, 0, 0xb8, 1, 0, 0, 0, 0xb9, 2, 0, 0, 0, 0xf4];
        let mut c = Case::new("m", Mode::Prot32, CODE, code);
        c.regs.rsp = Some(0x8000.into());
        let sets_rdx = |c: &Case| c.memory[0].hex.0.windows(2).any(|w| w == [0xba, 3]);
        let fresh = |c: &Case| kvmconf_guests::interp::run(c).regs.rdx.0 == 3;
        let mut stale_rdx = 0u64;
        let mut pooled = |c: &Case| {
            let mut r = kvmconf_guests::interp::run(c);
            if !sets_rdx(c) {
                r.regs.rdx.0 = stale_rdx;
            }
            stale_rdx = r.regs.rdx.0;
            r.regs.rdx.0 == 3
        };
        let steps = minimise_steps(&c, &mut pooled);
        let last = steps.last().expect("something shrank");
        assert!(!sets_rdx(last), "the pool let the MOV go: {last:?}");
        assert!(!fresh(last));
        let mut runs = 0;
        let (kept, how) = verify_fresh(&c, &steps, &mut |c| {
            runs += 1;
            fresh(c)
        });
        assert!(fresh(&kept) && sets_rdx(&kept), "{kept:?}");
        let i = steps
            .iter()
            .rposition(fresh)
            .expect("a step reproduces fresh");
        assert_eq!(
            how,
            Fresh::Fallback {
                kept: i + 1,
                of: steps.len()
            }
        );
        assert_eq!(kept, steps[i]);
        assert!(runs <= 2 + steps.len().ilog2() as usize, "{runs} runs");
        assert!(
            how.to_string().contains("does not reproduce on a fresh VM"),
            "{how}"
        );
    }

    #[test]
    fn verify_fresh_keeps_the_smallest_else_bisects_else_the_original() {
        let step = |n: u8| Case::new("m", Mode::Prot32, CODE, vec![n, 0xf4]);
        let n_of = |c: &Case| c.memory[0].hex.0[0];
        let original = step(0);
        let steps: Vec<Case> = (1..=12).map(step).collect();
        let check = |ok: &dyn Fn(u8) -> bool| {
            let mut runs = 0;
            let (kept, how) = verify_fresh(&original, &steps, &mut |c| {
                runs += 1;
                ok(n_of(c))
            });
            (n_of(&kept), how, runs)
        };
        // Every step reproduces: the smallest, after one run.
        assert_eq!(check(&|_| true), (12, Fresh::Smallest, 1));
        // Steps 1 to 5 do: step 5, found in a few runs.
        let (kept, how, runs) = check(&|n| n <= 5);
        assert_eq!((kept, how), (5, Fresh::Fallback { kept: 5, of: 12 }));
        assert!(runs <= 5, "{runs} runs");
        // Only step 1 does: still found.
        let (kept, how, _) = check(&|n| n == 1);
        assert_eq!((kept, how), (1, Fresh::Fallback { kept: 1, of: 12 }));
        // None does: the original, checked too.
        let (kept, how, _) = check(&|n| n == 0);
        assert_eq!(
            (kept, how),
            (
                0,
                Fresh::Original {
                    steps: 12,
                    reproduces: true
                }
            )
        );
        // Nothing shrank, and the input itself depends on the pool: said so.
        let (kept, how) = verify_fresh(&original, &[], &mut |_| false);
        assert_eq!(kept, original);
        assert_eq!(
            how,
            Fresh::Original {
                steps: 0,
                reproduces: false
            }
        );
        assert!(how.to_string().contains("does not reproduce"), "{how}");
    }
}

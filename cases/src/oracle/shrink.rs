//! Shrinking a mismatching program for the oracle: one mnemonic kept alone first, then
//! bisection, each trial overwriting instructions with NOPs of the same length.

use crate::oracle::code::{instructions, is_live, live_mnemonics, nop_where};
use iced_x86::{Instruction, Mnemonic};
use kvmconf_guests::case::Case;

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

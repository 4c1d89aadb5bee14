//! The oracle's predictions: the interpreter's run of a program (capped, in scope or not), and the
//! run with KVM's own observed effect substituted for chosen instructions.

use crate::oracle::code::{instructions, is_live, nop_where};
use iced_x86::{Instruction, Mnemonic};
use kvmconf_guests::case::Case;
use kvmconf_guests::interp::{self, Machine};
use kvmconf_guests::result::{CaseResult, Event, Exit};
use kvmconf_harness::KvmError;

/// The instruction cap of a shrinking trial of a program the interpreter ran in `n` instructions:
/// a trial that runs far longer has lost a loop bound and is a runaway (it ends as a timeout, so
/// it cannot show the original mismatch); stopping it early saves running it to the full cap.
pub fn trial_cap(n: u64) -> u64 {
    n.saturating_mul(8).clamp(100_000, interp::INSTRUCTION_CAP)
}

/// The interpreter's run of `case`, stopped as a timeout after `cap` instructions.
pub fn run_capped(case: &Case, cap: u64) -> interp::Outcome {
    let mut m = Machine::new(case);
    m.set_cap(cap);
    m.run()
}

/// The interpreter's prediction for a program derived from a generated one by NOPing some of its
/// instructions, or `None` when there is nothing to compare: NOPing the set-up of a later
/// instruction can leave it out of the interpreter's scope (a flag read while undefined, a 16-bit
/// SHRD count above 16), and one that lost its loop bound runs away (KVM would spin to the
/// deadline).
pub fn predict(case: &Case, cap: u64) -> Option<interp::Outcome> {
    let o = run_capped(case, cap);
    let out_of_scope = o.tainted
        || matches!(
            o.result.exit,
            Exit::Timeout { .. } | Exit::UnsupportedInstruction { .. }
        );
    (!out_of_scope).then_some(o)
}

/// At most this many executions of instructions are observed on KVM per prediction
/// ([`predict_observed`]): a loop over one is not worth hundreds of VM runs.
const MAX_OBSERVED: usize = 32;

/// The interpreter's prediction for `case` itself with KVM's own effect substituted for every
/// execution of a live instruction `take` selects — what the program would do if KVM were right
/// about everything else — and the mnemonics substituted. Each such execution is observed on KVM
/// (`run`) in a *probe*: the case in the interpreter's state at that instruction (registers,
/// RFLAGS, its memory images and MMIO buffers as the run has changed them), every other live
/// instruction NOPed, so KVM runs that one instruction and slides to the final HLT. Its general
/// registers, status flags and MMIO reads become the instruction's outcome. A status flag undefined before the instruction is
/// inverted in a second probe: the flags that follow it stay undefined, and a register that
/// follows it makes the run depend on an undefined flag (out of scope).
///
/// A selected execution that cannot be observed alone is executed by the interpreter like any
/// other instruction, so if KVM deviates there the comparison fails: it writes memory or works on
/// strings, reads memory outside the case's images and MMIO regions, does I/O or writes MMIO,
/// faults, the program changed it or its segments and control registers, it is past the first
/// [`MAX_OBSERVED`] executions, or a probe fails to run. `None` when there is nothing to compare,
/// as for [`predict`] (a flag read while undefined, a runaway, an unmodelled instruction), or
/// when nothing was substituted.
pub fn predict_observed(
    case: &Case,
    cap: u64,
    take: impl FnMut(&Instruction) -> bool,
    run: impl FnMut(&Case) -> Result<CaseResult, KvmError>,
) -> Option<(interp::Outcome, Vec<Mnemonic>)> {
    let (o, substituted) = predict_observed_by(case, cap, take, run, &mut |_| {});
    if substituted.is_empty() {
        return None;
    }
    let out_of_scope = o.tainted
        || matches!(
            o.result.exit,
            Exit::Timeout { .. } | Exit::UnsupportedInstruction { .. }
        );
    (!out_of_scope).then_some((o, substituted))
}

/// The run behind [`predict_observed`], calling `before` with the machine before each instruction
/// (what the fuzzer's model of KVM's INS records, `crate::fuzz::rep_ins`): the outcome and the
/// mnemonics substituted, whether or not the run is in the interpreter's scope (the caller
/// judges that, as [`predict_observed`] does).
pub fn predict_observed_by(
    case: &Case,
    cap: u64,
    mut take: impl FnMut(&Instruction) -> bool,
    mut run: impl FnMut(&Case) -> Result<CaseResult, KvmError>,
    before: &mut dyn FnMut(&Machine),
) -> (interp::Outcome, Vec<Mnemonic>) {
    let image = instructions(case);
    let mut m = Machine::new(case);
    m.set_cap(cap);
    let start = m.cpu.clone();
    let mut substituted: Vec<Mnemonic> = Vec::new();
    let mut observed = 0usize;
    let o = m.run_with(|m| {
        before(m);
        let Some(ins) = m.next_instruction() else {
            return Ok(false);
        };
        if !is_live(&ins) || !take(&ins) {
            return Ok(false);
        }
        // The instruction the program was generated with (not code it rewrote), within budget.
        observed += 1;
        let as_generated = image
            .iter()
            .any(|i| i.ip() == ins.ip() && i == &ins && i.len() == ins.len());
        let fx = (as_generated && observed <= MAX_OBSERVED)
            .then(|| observe(case, &start, m, &ins, &mut run))
            .flatten();
        let Some((gpr, rflags, undefined, events)) = fx else {
            // Not observable alone: the interpreter executes it as the SDM says, so where KVM
            // deviates there the comparison fails and nothing is explained.
            return Ok(false);
        };
        if !substituted.contains(&ins.mnemonic()) {
            substituted.push(ins.mnemonic());
        }
        m.retire(&ins, gpr, rflags, undefined, &events)
            .map(|()| true)
    });
    (o, substituted)
}

/// KVM's outcome of `ins`, the instruction at the machine's RIP, in the machine's state: general
/// registers, RFLAGS, the status flags left undefined and its MMIO reads (see
/// [`predict_observed`]); `None` when it cannot be observed alone.
fn observe(
    case: &Case,
    start: &kvmconf_guests::layout::CpuState,
    m: &Machine,
    ins: &Instruction,
    run: &mut impl FnMut(&Case) -> Result<CaseResult, KvmError>,
) -> Option<([u64; 16], u64, u64, Vec<Event>)> {
    use iced_x86::{OpAccess, OpKind};
    use kvmconf_guests::interp::flags::STATUS;
    let c = &m.cpu;
    // Same segments and paging as at the start, so the probe's case describes the same machine.
    let same = (
        c.cs, c.ds, c.es, c.fs, c.gs, c.ss, c.cr0, c.cr3, c.cr4, c.efer,
    ) == (
        start.cs, start.ds, start.es, start.fs, start.gs, start.ss, start.cr0, start.cr3,
        start.cr4, start.efer,
    );
    // Writes general registers and flags only (no memory, stack, segment or RIP change), reads
    // memory only through its explicit operands, and has no string operands.
    let info = iced_x86::InstructionInfoFactory::new().info(ins).clone();
    let explicit = (0..ins.op_count())
        .filter(|&k| ins.op_kind(k) == OpKind::Memory)
        .count();
    let effects_ok = ins.flow_control() == iced_x86::FlowControl::Next
        && info.used_registers().iter().all(|r| {
            r.register().is_gpr()
                || !matches!(
                    r.access(),
                    OpAccess::Write
                        | OpAccess::CondWrite
                        | OpAccess::ReadWrite
                        | OpAccess::ReadCondWrite
                )
        })
        && info
            .used_memory()
            .iter()
            .all(|u| matches!(u.access(), OpAccess::Read | OpAccess::NoMemAccess))
        && info.used_memory().len() <= explicit;
    let operands_ok = effects_ok
        && ins.op_count() > 0
        && (0..ins.op_count()).all(|k| {
            matches!(
                ins.op_kind(k),
                OpKind::Register
                    | OpKind::Memory
                    | OpKind::Immediate8
                    | OpKind::Immediate16
                    | OpKind::Immediate32
                    | OpKind::Immediate64
                    | OpKind::Immediate8to16
                    | OpKind::Immediate8to32
                    | OpKind::Immediate8to64
                    | OpKind::Immediate32to64
            )
        });
    if !same || !operands_ok {
        return None;
    }
    // The memory images and MMIO buffers as the run has changed them; the code must be unchanged.
    let mut probe = case.clone();
    for (k, img) in probe.memory.iter_mut().enumerate() {
        let now = m.peek_physical(img.addr.0, img.hex.0.len() as u64);
        if Some(k) == crate::oracle::code::code_index(case) && now != img.hex.0 {
            return None;
        }
        img.hex.0 = now;
    }
    for r in probe.mmio.iter_mut() {
        r.hex.0 = m.peek_physical(r.addr.0, r.len.0);
    }
    // A memory source must lie inside those images or buffers (what the probe holds as the run
    // left it).
    for k in 0..ins.op_count() {
        if ins.op_kind(k) == OpKind::Memory {
            let lin = m.operand_linear(ins, k)?;
            let pa = m.physical(lin)?;
            let size = ins.memory_size().size() as u64;
            let within = |at: u64, len: u64| pa >= at && pa + size <= at + len;
            let inside = probe
                .memory
                .iter()
                .any(|img| within(img.addr.0, img.hex.0.len() as u64))
                || probe.mmio.iter().any(|r| within(r.addr.0, r.len.0));
            if !inside || m.physical(lin + size.max(1) - 1)? != pa + size.max(1) - 1 {
                return None;
            }
        }
    }
    let mut probe = nop_where(&probe, |i| i.ip() != ins.ip());
    let gpr = c.gpr;
    let set = |p: &mut Case, rflags: u64| {
        let r = &mut p.regs;
        for (slot, v) in [
            &mut r.rax, &mut r.rcx, &mut r.rdx, &mut r.rbx, &mut r.rsp, &mut r.rbp, &mut r.rsi,
            &mut r.rdi, &mut r.r8, &mut r.r9, &mut r.r10, &mut r.r11, &mut r.r12, &mut r.r13,
            &mut r.r14, &mut r.r15,
        ]
        .into_iter()
        .zip(gpr)
        {
            *slot = Some(v.into());
        }
        r.rip = Some(ins.ip().into());
        r.rflags = Some(rflags.into());
    };
    let mut once = |rflags: u64, run: &mut dyn FnMut(&Case) -> Result<CaseResult, KvmError>| {
        set(&mut probe, rflags);
        let r = run(&probe).ok()?;
        let reads_only = r.trace.iter().all(|e| matches!(e, Event::MmioRead(_)));
        (r.exit == Exit::Hlt && reads_only).then_some(r)
    };
    let a = once(c.rflags, run)?;
    let regs = |r: &CaseResult| {
        let g = &r.regs;
        [
            g.rax, g.rcx, g.rdx, g.rbx, g.rsp, g.rbp, g.rsi, g.rdi, g.r8, g.r9, g.r10, g.r11,
            g.r12, g.r13, g.r14, g.r15,
        ]
        .map(|h| h.0)
    };
    let before = m.undefined_flags() & STATUS;
    let undefined = if before == 0 {
        0
    } else {
        let b = once(c.rflags ^ before, run)?;
        if regs(&b) != regs(&a) || b.trace != a.trace {
            return None;
        }
        (a.regs.rflags.0 ^ b.regs.rflags.0) & STATUS
    };
    let rflags = (c.rflags & !STATUS) | (a.regs.rflags.0 & STATUS);
    Some((regs(&a), rflags, undefined, a.trace))
}

/// Deadline per exit the interpreter predicts, in µs: ten times the ≈11 µs an I/O round trip
/// costs on the slowest host measured (`../shared/HOST.md`), so a program that makes tens of
/// thousands of port or MMIO exits is not cut short on a slow or loaded host.
pub const DEADLINE_US_PER_EXIT: u64 = 100;

/// The longest deadline [`with_deadline_for_exits`] gives, in ms: a fuzz input must stay well
/// inside libFuzzer's per-input limit (10 s in the CI smoke) with its reruns.
pub const DEADLINE_MAX_MS: u64 = 5_000;

/// `case` with a deadline that allows for the exits the interpreter predicts (`model`: one per
/// trace event, [`DEADLINE_US_PER_EXIT`] each, plus a second; at most [`DEADLINE_MAX_MS`]), when
/// KVM's run `kvm` timed out where the interpreter's did not; `None` when that is not so or the
/// case's deadline already allows for them. A timeout is a result only when it outlasts that
/// deadline.
pub fn with_deadline_for_exits(case: &Case, kvm: &CaseResult, model: &CaseResult) -> Option<Case> {
    if !matches!(kvm.exit, Exit::Timeout { .. }) || matches!(model.exit, Exit::Timeout { .. }) {
        return None;
    }
    let need = (model.trace.len() as u64)
        .saturating_mul(DEADLINE_US_PER_EXIT)
        .div_ceil(1000)
        .saturating_add(1000)
        .min(DEADLINE_MAX_MS);
    if case.deadline_ms() >= need {
        return None;
    }
    let mut c = case.clone();
    c.timeout_ms = Some(need);
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmconf_guests::case::Mode;

    #[test]
    fn a_timeout_gets_a_deadline_for_its_predicted_exits_once() {
        let c = Case::new("t", Mode::Long64, 0x1000, vec![0xf4]);
        let mut model = kvmconf_guests::interp::run(&c);
        let mut kvm = model.clone();
        kvm.exit = Exit::Timeout { ms: 1000 };
        // Few exits: the case's own second suffices.
        assert!(with_deadline_for_exits(&c, &kvm, &model).is_none());
        // out 0xf1, al: one I/O exit each.
        let out = kvmconf_guests::interp::run(&Case::new(
            "o",
            Mode::Long64,
            0x1000,
            vec![0xe6, 0xf1, 0xf4],
        ));
        model.trace = vec![out.trace[0]; 20_000];
        let longer = with_deadline_for_exits(&c, &kvm, &model).expect("20,000 exits");
        assert_eq!(
            longer.timeout_ms,
            Some(20_000 * DEADLINE_US_PER_EXIT / 1000 + 1000)
        );
        // Once: the longer deadline already allows for them.
        assert!(with_deadline_for_exits(&longer, &kvm, &model).is_none());
        // Never past the cap, however many exits.
        model.trace = vec![out.trace[0]; 5_000_000];
        let capped = with_deadline_for_exits(&c, &kvm, &model).expect("more exits");
        assert_eq!(capped.timeout_ms, Some(DEADLINE_MAX_MS));
        // Not for a run that did not time out, or that the interpreter also times out.
        assert!(with_deadline_for_exits(&c, &model, &model).is_none());
        assert!(with_deadline_for_exits(&c, &kvm, &kvm).is_none());
    }
}

//! The differential oracle: generated programs on KVM against the reference interpreter, a
//! minimiser for mismatching programs, and the classifier that ties a minimised mismatch to a known
//! deviation of this host (`cases/deviations.toml`, checks named `differential.*`).
//!
//! The comparison itself masks nothing but the RFLAGS bits the interpreter reports as undefined at
//! the end. A mismatch is minimised by overwriting instructions with NOPs of the same length (so
//! branch offsets stay valid) while it persists, then pinned on its culprit instruction
//! ([`crate::oracle::Culprit`]): `Popcnt`, for example, when only a POPCNT and the final HLT
//! remain. Its [`Symptom`] (culprit, mode, CPL, exits) is what a deviation's oracle conditions
//! match, so on any other host (or for any other culprit) the same mismatch is a plain failure.

use crate::deviations::{self, Deviation, Verdict};
use crate::oracle::{Culprit, Symptom};
use iced_x86::{Instruction, Mnemonic};
use kvmconf_guests::case::{Case, MemInit, Mode};
use kvmconf_guests::r#gen::source::SplitMix;
use kvmconf_guests::r#gen::{Options, generate};
use kvmconf_guests::interp::{self, Machine};
use kvmconf_guests::result::{CaseResult, DiffMask, Event, Exit, FieldDiff, diff};
use kvmconf_harness::fingerprint::Fingerprint;
use kvmconf_harness::{Host, KvmError, Pool};
use proptest::strategy::{BoxedStrategy, Strategy};
use proptest::test_runner::{
    Config, FileFailurePersistence, RngAlgorithm, TestCaseError, TestRng, TestRunner,
};
use std::cell::RefCell;
use std::collections::BTreeMap;

/// Compares a KVM result with the interpreter's for `case`: every field that differs, with only
/// the RFLAGS bits the interpreter reports as undefined masked.
pub fn compare(kvm: &CaseResult, case: &Case) -> Vec<FieldDiff> {
    let (model, undefined) = interp::run_with_undefined(case);
    diff(kvm, &model, &undefined_masked(undefined))
}

/// Programs per batch in [`compare_batch`].
pub const BATCH: usize = 64;

/// The differential loop over a batch: runs every case on KVM back to back, then runs each in the
/// interpreter and compares. The same work as [`compare`] per case; grouping the phases matters on
/// hosts like this one, where each return from `KVM_RUN` leaves the next stretch of user code
/// running cold (measured here with per-phase timers in `kvmconf bench`'s loop: generating a
/// program took 54–87 µs interleaved with KVM runs against 38–51 µs in batches; `kvmconf bench`
/// reports both orders).
pub fn compare_batch(
    pool: &mut Pool<'_>,
    cases: &[Case],
) -> Result<Vec<(CaseResult, Vec<FieldDiff>)>, KvmError> {
    let kvm = cases
        .iter()
        .map(|c| pool.run(c))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(kvm
        .into_iter()
        .zip(cases)
        .map(|(k, c)| {
            let d = compare(&k, c);
            (k, d)
        })
        .collect())
}

/// The comparison mask of KVM against the interpreter: only the undefined RFLAGS bits.
fn undefined_masked(undefined: u64) -> DiffMask {
    DiffMask {
        rflags_ignore: undefined,
        ..DiffMask::default()
    }
}

/// Compares two KVM results of the same program (e.g. CPL0 against CPL3, or RAM against MMIO data):
/// segments and the trace's MMIO-versus-memory shape are left to the interpreter comparisons, so only
/// exit, registers and memory are compared here, undefined flags masked.
pub fn compare_runs(a: &CaseResult, b: &CaseResult, undefined: u64) -> Vec<FieldDiff> {
    let strip = |r: &CaseResult| {
        let mut r = r.clone();
        r.trace.clear();
        r
    };
    diff(
        &strip(a),
        &strip(b),
        &DiffMask {
            rflags_ignore: undefined,
            skip_segs: true,
            ..DiffMask::default()
        },
    )
}

pub use crate::oracle::code::{instructions, is_live, live_mnemonics, nop_where};

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

/// The culprit of a minimised mismatch: when KVM refused to emulate, the instruction at KVM's
/// RIP; else the one instruction left (NOPs and HLT excluded), or all of them in program order,
/// deduplicated, when several are left ([`minimise_mismatch`] then singles one out if it can).
pub fn classify(minimised: &Case, kvm: &CaseResult) -> Culprit {
    let ins = instructions(minimised);
    if let Exit::InternalError { .. } = kvm.exit
        && let Some(at) = ins.iter().find(|i| i.ip() == kvm.regs.rip.0)
    {
        return Culprit::refused(minimised, at.mnemonic());
    }
    match live_mnemonics(minimised).as_slice() {
        [] => Culprit::Unknown,
        [m] => Culprit::One {
            mnemonic: *m,
            context: vec![],
        },
        ms => Culprit::Several(ms.to_vec()),
    }
}

/// A program, the listing of its minimised form, and what differed.
#[derive(Clone, Debug)]
pub struct Mismatch {
    /// The generated case.
    pub case: Case,
    /// Its minimised form.
    pub minimised: Case,
    /// What the known deviations are matched against: the culprit, the case, the exits.
    pub symptom: Symptom,
    /// The differing fields of the minimised case, `left != right`.
    pub diffs: Vec<String>,
}

impl Mismatch {
    /// The failure message: name, class (the culprit in words), the minimised program's listing,
    /// the diff, and the minimised case as JSON for replay.
    pub fn message(&self, what: &str) -> String {
        let mut listing = String::new();
        for i in instructions(&self.minimised) {
            if i.mnemonic() != Mnemonic::Nop {
                listing.push_str(&format!("    {:#x}: {i}\n", i.ip()));
            }
        }
        format!(
            "{what}: case {:?}: class: {};\n  minimised program:\n{listing}  diff:\n    {}\n  minimised case: {}",
            self.case.name,
            self.symptom.culprit.describe(),
            self.diffs.join("\n    "),
            serde_json::to_string(&self.minimised).expect("cases serialize")
        )
    }

    /// Judges this mismatch against the known deviations of the host `fp`: the first whose oracle
    /// conditions its symptom meets, else a failure.
    pub fn judge(&self, what: &str, devs: &[Deviation], fp: &Fingerprint) -> Verdict {
        match deviations::explain(&self.symptom, devs, fp) {
            Some(d) => Verdict::KnownDeviation {
                id: d.id.clone(),
                message: self.message(what),
            },
            None => Verdict::Fail(self.message(what)),
        }
    }
}

/// The mnemonic of the instruction at KVM's RIP when KVM ended `case` with an emulation failure
/// (KVM_EXIT_INTERNAL_ERROR), if it did.
pub fn refused_mnemonic(case: &Case, kvm: &CaseResult) -> Option<Mnemonic> {
    if !matches!(kvm.exit, Exit::InternalError { .. }) {
        return None;
    }
    instructions(case)
        .into_iter()
        .find(|i| i.ip() == kvm.regs.rip.0)
        .map(|i| i.mnemonic())
}

/// Minimises a case whose KVM result `kvm` disagrees with the interpreter, running trials with
/// `run` (a failing trial run counts as "no longer differs").
pub fn minimise_mismatch(
    case: &Case,
    kvm: &CaseResult,
    mut run: impl FnMut(&Case) -> Result<CaseResult, KvmError>,
) -> Mismatch {
    let refused = matches!(kvm.exit, Exit::InternalError { .. });
    if refused {
        // The refused instruction is the one at KVM's RIP: no need to minimise on KVM. Keep it and
        // the final HLT (the rest NOPed) as the minimised case.
        let minimised = nop_where(case, |i| i.ip() != kvm.regs.rip.0);
        let culprit = classify(case, kvm);
        let model = Machine::new(case).run().result;
        return Mismatch {
            case: case.clone(),
            symptom: crate::oracle::symptom(case, culprit, kvm, &model),
            minimised,
            diffs: compare(kvm, case).iter().map(ToString::to_string).collect(),
        };
    }
    // A trial still shows the mismatch when KVM and the interpreter still differ and each ends the
    // way it did on the original (so removing a loop bound cannot turn the mismatch into a timeout).
    // Nor may a trial read a flag that is undefined at that point (the generator's fix-ups can be
    // NOPed away): the interpreter reports that as `tainted`.
    // And a trial must differ only in fields the original differs in, so that removing set-up code
    // (say, the bounds of a string operation) cannot trade the mismatch for another one.
    let original = Machine::new(case).run();
    let (model_kind, cap) = (
        original.result.exit.kind(),
        trial_cap(original.instructions),
    );
    let paths: std::collections::HashSet<String> =
        diff(kvm, &original.result, &undefined_masked(original.undefined))
            .into_iter()
            .map(|d| d.path)
            .collect();
    let mut still_differs = |trial: &Case| {
        let o = run_capped(trial, cap);
        if o.tainted || o.result.exit.kind() != model_kind {
            return false;
        }
        match run(trial) {
            Ok(r) => {
                let d = diff(&r, &o.result, &undefined_masked(o.undefined));
                r.exit.kind() == kvm.exit.kind()
                    && !d.is_empty()
                    && d.iter().all(|f| paths.contains(&f.path))
            }
            Err(_) => false,
        }
    };
    let start = focus(case, &mut still_differs);
    let minimised = minimise(&start, &mut still_differs);
    let (symptom, diffs) = match run(&minimised) {
        Ok(r) => {
            let mut pinned = classify(&minimised, &r);
            // When the minimised program still needs context (set-up of an operand, a DIV that
            // keeps the exit the same), name the culprit: the instruction that ends the shortest
            // prefix on which KVM and the interpreter disagree (see `culprit`). The class
            // is then that mnemonic and the rest is context, so a deviation naming one mnemonic
            // cannot absorb a mismatch another instruction causes.
            let names = live_mnemonics(&minimised);
            if names.len() > 1
                && let Some(m) = culprit(&minimised, cap, &mut run)
            {
                pinned = Culprit::One {
                    mnemonic: m,
                    context: names.into_iter().filter(|&x| x != m).collect(),
                };
            }
            let (model, undefined) = interp::run_with_undefined(&minimised);
            let d = diff(&r, &model, &undefined_masked(undefined));
            (
                crate::oracle::symptom(&minimised, pinned, &r, &model),
                d.iter().map(ToString::to_string).collect(),
            )
        }
        Err(e) => (
            Symptom::new(
                &minimised,
                Culprit::Unknown,
                &kvm.exit,
                &original.result.exit,
            ),
            vec![e.to_string()],
        ),
    };
    Mismatch {
        case: case.clone(),
        minimised,
        symptom,
        diffs,
    }
}

/// The first divergent instruction of `case`: the mnemonic of the instruction that ends the
/// shortest prefix in address order (the later live instructions NOPed, so a branch into them
/// slides to the final HLT) on which KVM and the interpreter disagree. A prefix runs only its own
/// instructions, and the one before it agreed, so the disagreement starts with that instruction
/// (or what it feeds when a loop runs it again). `None` when no prefix the interpreter can predict
/// (and that does not run away) disagrees.
fn culprit(
    case: &Case,
    cap: u64,
    mut run: impl FnMut(&Case) -> Result<CaseResult, KvmError>,
) -> Option<Mnemonic> {
    let live: Vec<Instruction> = instructions(case).into_iter().filter(is_live).collect();
    for (k, last) in live.iter().enumerate() {
        let prefix = nop_where(case, |i| live[k + 1..].iter().any(|l| l.ip() == i.ip()));
        let Some(o) = predict(&prefix, cap) else {
            continue;
        };
        let Ok(r) = run(&prefix) else { return None };
        if !agrees(&r, &o) {
            return Some(last.mnemonic());
        }
    }
    None
}

/// The instruction cap of a shrinking trial of a program the interpreter ran in `n` instructions:
/// a trial that runs far longer has lost a loop bound and is a runaway (it ends as a timeout, so
/// it cannot show the original mismatch); stopping it early saves running it to the full cap.
fn trial_cap(n: u64) -> u64 {
    n.saturating_mul(8).clamp(100_000, interp::INSTRUCTION_CAP)
}

/// The interpreter's run of `case`, stopped as a timeout after `cap` instructions.
fn run_capped(case: &Case, cap: u64) -> interp::Outcome {
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

/// Whether KVM's result agrees with the interpreter's outcome (undefined flags masked).
pub fn agrees(kvm: &CaseResult, model: &interp::Outcome) -> bool {
    diff(kvm, &model.result, &undefined_masked(model.undefined)).is_empty()
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

/// Explains a mismatching case completely: minimises it ([`minimise_mismatch`]), then runs the
/// *residual* program — the original with every instruction of the minimised mnemonics NOPed —
/// and, while that still disagrees with the interpreter, explains the residual the same way (at
/// most four rounds). So a known deviation in a program cannot hide a second, unexplained one in
/// the rest of it, and a program KVM refuses to emulate is still checked past the refusal. A
/// residual the interpreter cannot predict (it times out, reads an undefined flag or reaches an
/// instruction whose result is undefined), or that ends another way than the original, is not run.
pub fn explain(
    case: &Case,
    kvm: &CaseResult,
    mut run: impl FnMut(&Case) -> Result<CaseResult, KvmError>,
) -> Vec<Mismatch> {
    let mut out: Vec<Mismatch> = Vec::new();
    let (mut cur, mut cur_kvm) = (case.clone(), kvm.clone());
    let original = Machine::new(case).run();
    let (model_kind, cap) = (
        original.result.exit.kind(),
        trial_cap(original.instructions),
    );
    for _ in 0..4 {
        let m = minimise_mismatch(&cur, &cur_kvm, &mut run);
        let names = live_mnemonics(&m.minimised);
        out.push(m);
        if names.is_empty() {
            break;
        }
        let residual = nop_where(&cur, |i| names.contains(&i.mnemonic()));
        // A residual that ends differently from the original in the interpreter (its loop bound
        // or its pointer set-up was NOPed: it may now run away through memory, page tables
        // included) checks nothing the original program asked for.
        let Some(o) = predict(&residual, cap).filter(|o| o.result.exit.kind() == model_kind) else {
            break;
        };
        let Ok(r) = run(&residual) else { break };
        if agrees(&r, &o) {
            break;
        }
        cur = residual;
        cur_kvm = r;
    }
    out
}

/// One differential test: which generated programs, how they run on KVM, and what they are compared
/// with. The nextest tests (`cases/tests/differential.rs`) and `kvmconf run` run the same variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Real-mode programs at CPL0 against the interpreter.
    Real16,
    /// Flat 32-bit protected-mode programs at CPL0 against the interpreter.
    Prot32,
    /// 64-bit programs at CPL0 against the interpreter.
    Long64Cpl0,
    /// 64-bit programs at CPL3 against the interpreter, and against their CPL0 run where the
    /// interpreter predicts the same result for both rings.
    Long64Cpl3,
    /// 64-bit programs at CPL3 with their data region as MMIO, against the interpreter and against
    /// the same program with its data in RAM.
    Long64Mmio,
}

impl Variant {
    /// Every variant, in report order.
    pub const ALL: [Variant; 5] = [
        Variant::Real16,
        Variant::Prot32,
        Variant::Long64Cpl0,
        Variant::Long64Cpl3,
        Variant::Long64Mmio,
    ];

    /// The check id: what `differential.*` entries of `cases/deviations.toml` match, and the row
    /// `kvmconf run` reports.
    pub fn check(self) -> &'static str {
        match self {
            Variant::Real16 => "differential.real16",
            Variant::Prot32 => "differential.prot32",
            Variant::Long64Cpl0 => "differential.long64_cpl0",
            Variant::Long64Cpl3 => "differential.long64_cpl3",
            Variant::Long64Mmio => "differential.long64_mmio",
        }
    }

    /// What it checks.
    pub fn doc(self) -> &'static str {
        match self {
            Variant::Real16 => {
                "SDM 1 ch. 7, SDM 3A ch. 6 (IVT delivery): real-mode programs agree with the interpreter"
            }
            Variant::Prot32 => {
                "SDM 1 ch. 7, SDM 3A ch. 6 (IDT delivery): 32-bit programs at CPL0 agree with the interpreter"
            }
            Variant::Long64Cpl0 => {
                "SDM 1 ch. 7, SDM 3A ch. 4-6: 64-bit programs at CPL0 agree with the interpreter"
            }
            Variant::Long64Cpl3 => {
                "SDM 1 ch. 7: 64-bit programs at CPL3 agree with the interpreter and with their CPL0 run"
            }
            Variant::Long64Mmio => {
                "SDM 1 ch. 7, api.rst 5 KVM_EXIT_MMIO: 64-bit programs with MMIO data agree with the interpreter and the RAM run"
            }
        }
    }

    /// The seed whose programs passed a full `.ci/run` on this project's host (2026-11-22): the
    /// default of the nextest tests and the sample `kvmconf run` draws.
    pub fn known_seed(self) -> u64 {
        match self {
            Variant::Real16 => 0x1891_216b_d752_9a02,
            Variant::Prot32 => 0x1891_2542_38f1_ff71,
            Variant::Long64Cpl0 => 0x1891_7439_1d82_4ff6,
            Variant::Long64Cpl3 => 0x1891_7339_1dbc_1d94,
            Variant::Long64Mmio => 0x1891_1a41_35d8_6f3b,
        }
    }

    /// Programs drawn when a run asks for `n` a mode: the CPL3 and MMIO variants run every
    /// program three times and draw a fifth as many (at least one).
    pub fn programs(self, n: u32) -> u32 {
        match self {
            Variant::Long64Cpl3 | Variant::Long64Mmio => (n / 5).max(1),
            _ => n,
        }
    }

    /// The nextest test that runs this variant in `cases/tests/differential.rs`.
    pub fn test_name(self) -> &'static str {
        match self {
            Variant::Real16 => "generated_real16_programs_kvm_matches_interpreter",
            Variant::Prot32 => "generated_prot32_programs_kvm_matches_interpreter",
            Variant::Long64Cpl0 => "generated_long64_cpl0_programs_kvm_matches_interpreter",
            Variant::Long64Cpl3 => "generated_long64_cpl3_native_matches_interpreter_and_cpl0",
            Variant::Long64Mmio => {
                "generated_long64_mmio_data_emulated_matches_native_and_interpreter"
            }
        }
    }

    /// The command that replays a run of `programs` programs (as drawn, after
    /// [`Variant::programs`]) from `seed` under nextest.
    pub fn replay(self, programs: u32, seed: u64) -> String {
        let per_mode = match self {
            Variant::Long64Cpl3 | Variant::Long64Mmio => programs * 5,
            _ => programs,
        };
        format!(
            "KVMCONF_DIFF_SEED={seed:#x} PROPTEST_CASES={per_mode} cargo nextest run -p \
             kvmconf-cases --test differential -E 'test({})'",
            self.test_name()
        )
    }

    fn mode(self) -> Mode {
        match self {
            Variant::Real16 => Mode::Real16,
            Variant::Prot32 => Mode::Prot32,
            _ => Mode::Long64,
        }
    }

    /// The programs it draws, the proptest way (a seed, a length of 1 to 40 instructions, stubs
    /// or not; real16 always has stubs), shrinking toward short programs.
    pub fn strategy(self) -> BoxedStrategy<Case> {
        let mode = self.mode();
        let data_mmio = self == Variant::Long64Mmio;
        (proptest::num::u64::ANY, 1usize..=40, proptest::bool::ANY)
            .prop_map(move |(s, len, nostubs)| {
                let o = Options {
                    mode,
                    stubs: !nostubs || mode == Mode::Real16,
                    data_mmio,
                    len,
                };
                generate(
                    &o,
                    &mut SplitMix(s),
                    &format!("prop-{}-{s:x}-{len}", mode.name()),
                )
            })
            .boxed()
    }

    /// Runs one program on KVM through `pool` and returns what disagreed, each mismatch minimised
    /// and labelled with what was compared (`KVM != interpreter`, …).
    pub fn check_program(
        self,
        pool: &RefCell<Pool<'_>>,
        case: &Case,
    ) -> Result<Vec<(String, Mismatch)>, KvmError> {
        match self {
            Variant::Real16 | Variant::Prot32 | Variant::Long64Cpl0 => {
                against_interp(pool, case, "KVM != interpreter")
            }
            Variant::Long64Cpl3 => {
                let mut c3 = case.clone();
                c3.cpl = 3;
                c3.name.push_str("-cpl3");
                let mut out = against_interp(pool, &c3, "native CPL3 run != interpreter")?;
                if !out.is_empty() {
                    return Ok(out);
                }
                let (m0, u0) = interp::run_with_undefined(case);
                let (m3, u3) = interp::run_with_undefined(&c3);
                if !compare_runs(&m0, &m3, u0 | u3).is_empty() {
                    return Ok(out); // the rings legitimately differ (I/O, CLI/STI at CPL3)
                }
                let k0 = pool.borrow_mut().run(case)?;
                let k3 = pool.borrow_mut().run(&c3)?;
                if !compare_runs(&k0, &k3, u0 | u3).is_empty() {
                    out.push((
                        "KVM CPL0 (emulated) != KVM CPL3 (native)".into(),
                        minimise_mismatch(case, &k0, |x| pool.borrow_mut().run(x)),
                    ));
                }
                Ok(out)
            }
            Variant::Long64Mmio => {
                let mut c3 = case.clone();
                c3.cpl = 3;
                c3.name.push_str("-cpl3");
                let mut out = against_interp(pool, &c3, "MMIO-data CPL3 run != interpreter")?;
                if !out.is_empty() {
                    return Ok(out);
                }
                let ram = with_data_in_ram(&c3);
                let (_, u) = interp::run_with_undefined(&c3);
                let k = pool.borrow_mut().run(&c3)?;
                let n = pool.borrow_mut().run(&ram)?;
                if !compare_runs(&k, &n, u).is_empty() {
                    out.push((
                        "MMIO-data run != RAM-data native run".into(),
                        minimise_mismatch(&ram, &n, |x| pool.borrow_mut().run(x)),
                    ));
                }
                Ok(out)
            }
        }
    }
}

/// KVM's result for `case` against the interpreter's; when they differ, every mismatch in the
/// program, each minimised and classified ([`explain`]: the rest of the program is checked again
/// without the first mismatch's instructions).
fn against_interp(
    pool: &RefCell<Pool<'_>>,
    case: &Case,
    what: &str,
) -> Result<Vec<(String, Mismatch)>, KvmError> {
    let kvm = pool.borrow_mut().run(case)?;
    if compare(&kvm, case).is_empty() {
        return Ok(vec![]);
    }
    Ok(explain(case, &kvm, |c| pool.borrow_mut().run(c))
        .into_iter()
        .map(|m| (what.to_string(), m))
        .collect())
}

/// The case with its MMIO data region turned into RAM.
pub fn with_data_in_ram(c: &Case) -> Case {
    let mut r = c.clone();
    for m in std::mem::take(&mut r.mmio) {
        r.memory.push(MemInit {
            addr: m.addr,
            hex: m.hex,
        });
    }
    r
}

/// How [`run_programs`] draws and reports.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Programs to draw.
    pub programs: u32,
    /// The seed of proptest's ChaCha generator.
    pub seed: u64,
    /// Where proptest keeps the seeds of failing programs (replayed first), if anywhere.
    pub persistence: Option<&'static str>,
    /// Go on after an unexplained mismatch (else stop at the first).
    pub keep_going: bool,
    /// Print each known deviation (in full the first time) and each unexplained mismatch.
    pub verbose: bool,
}

/// What a run of programs found.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Programs run.
    pub programs: u64,
    /// Known deviations seen: id, how often, and the first message.
    pub known: BTreeMap<String, (u64, String)>,
    /// Failure messages of mismatches (and harness errors) no known deviation explains.
    pub unexplained: Vec<String>,
}

impl Tally {
    /// The verdict of the whole run for `kvmconf run`: fail on any unexplained mismatch, known
    /// deviation when every mismatch is one (the ids joined by `, `, most frequent first), else
    /// pass. A sample never reports `fixed`: not meeting a deviation's class does not show it gone.
    pub fn verdict(&self, variant: Variant, opts: &RunOptions) -> Verdict {
        let what = format!(
            "{} programs from seed {:#x} (replay: {})",
            self.programs,
            opts.seed,
            variant.replay(opts.programs, opts.seed)
        );
        let mut known: Vec<(&String, &(u64, String))> = self.known.iter().collect();
        known.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(b.0)));
        let counts = known
            .iter()
            .map(|(id, (n, _))| format!("{id} x{n}"))
            .collect::<Vec<_>>()
            .join(", ");
        if let Some(first) = self.unexplained.first() {
            return Verdict::Fail(format!(
                "{}: {what}: {} unexplained mismatches{}; the first: {first}",
                variant.check(),
                self.unexplained.len(),
                if counts.is_empty() {
                    String::new()
                } else {
                    format!(" (and known deviations {counts})")
                }
            ));
        }
        if known.is_empty() {
            return Verdict::Pass;
        }
        Verdict::KnownDeviation {
            id: known
                .iter()
                .map(|(id, _)| id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            message: format!(
                "{what}: {} mismatches, all known deviations: {counts}",
                known.iter().map(|(_, (n, _))| n).sum::<u64>()
            ),
        }
    }
}

/// Runs `opts.programs` programs of `variant` drawn from proptest's ChaCha generator seeded with
/// `opts.seed` — the programs the nextest test draws with that seed, in the same order — on a pool
/// of `host`'s VMs, and judges every mismatch against `devs` for the check `variant.check()` on the
/// host `fp`.
pub fn run_programs(
    host: &Host,
    variant: Variant,
    opts: &RunOptions,
    devs: &[Deviation],
    fp: &Fingerprint,
) -> Tally {
    let check = variant.check();
    let pool = RefCell::new(Pool::new(host, 2));
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&opts.seed.to_le_bytes());
    let config = Config {
        cases: opts.programs,
        failure_persistence: opts
            .persistence
            .map(|p| Box::new(FileFailurePersistence::Direct(p)) as _),
        max_shrink_iters: 0,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
    let tally = RefCell::new(Tally::default());
    // The proptest error repeats what the tally holds; the tally is the result.
    let _ = runner.run(&variant.strategy(), |case| {
        tally.borrow_mut().programs += 1;
        let found = match variant.check_program(&pool, &case) {
            Ok(f) => f,
            Err(e) => {
                let msg = format!("{check}: case {:?}: harness error: {e}", case.name);
                tally.borrow_mut().unexplained.push(msg.clone());
                return if opts.keep_going {
                    Ok(())
                } else {
                    Err(TestCaseError::fail(msg))
                };
            }
        };
        for (what, m) in found {
            let verdict = m.judge(&what, devs, fp);
            let mut t = tally.borrow_mut();
            match verdict {
                Verdict::KnownDeviation { id, message } => {
                    let first = !t.known.contains_key(&id);
                    if opts.verbose {
                        let shown = if first {
                            message.as_str()
                        } else {
                            message.lines().next().unwrap_or_default()
                        };
                        println!("KNOWN DEVIATION {id} [{check}]: {shown}");
                    }
                    t.known.entry(id).or_insert((0, message)).0 += 1;
                }
                other => {
                    let msg = match other {
                        Verdict::Fail(m) => m,
                        v => format!("unexpected verdict {v:?}"),
                    };
                    if opts.verbose {
                        println!("UNEXPLAINED [{check}]: {msg}");
                    }
                    t.unexplained.push(msg.clone());
                    if !opts.keep_going {
                        return Err(TestCaseError::fail(msg));
                    }
                }
            }
        }
        Ok(())
    });
    tally.into_inner()
}

/// The list of instructions this host's KVM refuses to emulate, compiled in.
pub const REFUSALS_FILE: &str = include_str!("../emulator_refuses.toml");

/// One instruction KVM's emulator is known to refuse on some host, in one mode.
#[derive(Clone, Debug, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Refusal {
    /// iced-x86 mnemonic, as `{:?}` prints it (`Popcnt`).
    pub mnemonic: String,
    /// `real16`, `prot32` or `long64`.
    pub mode: String,
    /// Bytes of one instance (a probe: these bytes, then HLT, at CPL0).
    pub hex: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RefusalFile {
    refuses: Vec<Refusal>,
}

/// The parsed refusal list.
pub fn refusals() -> &'static [Refusal] {
    static LIST: std::sync::OnceLock<Vec<Refusal>> = std::sync::OnceLock::new();
    LIST.get_or_init(|| {
        toml::from_str::<RefusalFile>(REFUSALS_FILE)
            .expect("cases/emulator_refuses.toml parses (checked by a test)")
            .refuses
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmconf_guests::case::Mode;
    use kvmconf_guests::r#gen::case_from_seed;

    #[test]
    fn minimise_keeps_only_what_the_predicate_needs() {
        let c = case_from_seed(Mode::Long64, 7, 3);
        let n = instructions(&c)
            .iter()
            .filter(|i| i.mnemonic() != Mnemonic::Nop)
            .count();
        assert!(n > 2);
        // "Still differs" while the code still ends in HLT: everything else can go.
        let m = minimise(&c, |_| true);
        let left: Vec<Mnemonic> = instructions(&m)
            .iter()
            .map(|i| i.mnemonic())
            .filter(|&x| x != Mnemonic::Nop)
            .collect();
        assert!(left.iter().all(|&x| x == Mnemonic::Hlt), "{left:?}");
        assert_eq!(classify(&m, &interp::run(&m)), Culprit::Unknown);
    }

    /// A long64 program: mov eax,5; bswap eax; mov ebx,7; lzcnt ecx,ebx; add eax,ebx; hlt.
    fn two_class_program() -> Case {
        let code = vec![
            0xb8, 5, 0, 0, 0, // mov eax, 5
            0x0f, 0xc8, // bswap eax
            0xbb, 7, 0, 0, 0, // mov ebx, 7
            0xf3, 0x0f, 0xbd, 0xcb, // lzcnt ecx, ebx
            0x01, 0xd8, // add eax, ebx
            0xf4, // hlt
        ];
        Case::new(
            "two-classes",
            Mode::Long64,
            kvmconf_guests::r#gen::CODE,
            code,
        )
    }

    /// A fake KVM: the interpreter, except that a program with a live BSWAP gets RDX flipped and
    /// one with a live LZCNT gets RSI flipped (two independent "deviations").
    fn fake_kvm(c: &Case) -> Result<CaseResult, KvmError> {
        let mut r = interp::run(c);
        let live = live_mnemonics(c);
        if live.contains(&Mnemonic::Bswap) {
            r.regs.rdx.0 ^= 1;
        }
        if live.contains(&Mnemonic::Lzcnt) {
            r.regs.rsi.0 ^= 1;
        }
        Ok(r)
    }

    #[test]
    fn focus_keeps_the_one_mnemonic_the_mismatch_needs() {
        let c = two_class_program();
        let f = focus(&c, |t| live_mnemonics(t).contains(&Mnemonic::Lzcnt));
        assert_eq!(live_mnemonics(&f), vec![Mnemonic::Lzcnt]);
        // Nothing reproduces: the case comes back unchanged.
        let same = focus(&c, |_| false);
        assert_eq!(same.memory, c.memory);
    }

    #[test]
    fn explain_finds_a_second_deviation_behind_the_first() {
        let c = two_class_program();
        let kvm = fake_kvm(&c).unwrap();
        let found = explain(&c, &kvm, fake_kvm);
        let classes: Vec<String> = found.iter().map(|m| m.symptom.culprit.describe()).collect();
        assert_eq!(found.len(), 2, "{classes:?}");
        assert!(
            classes.iter().any(|c| c == "Bswap") && classes.iter().any(|c| c == "Lzcnt"),
            "{classes:?}"
        );
        for m in &found {
            assert_eq!(m.diffs.len(), 1, "{:?}", m.diffs);
        }
        // One deviation only: one mismatch, and the residual agrees.
        let one = |c: &Case| {
            let mut r = interp::run(c);
            if live_mnemonics(c).contains(&Mnemonic::Lzcnt) {
                r.regs.rsi.0 ^= 1;
            }
            Ok(r)
        };
        let found = explain(&c, &one(&c).unwrap(), one);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].symptom.culprit.describe(), "Lzcnt");
    }

    #[test]
    fn culprit_is_the_instruction_ending_the_shortest_disagreeing_prefix() {
        let c = two_class_program();
        let only_lzcnt = |c: &Case| {
            let mut r = interp::run(c);
            if live_mnemonics(c).contains(&Mnemonic::Lzcnt) {
                r.regs.rsi.0 ^= 1;
            }
            Ok(r)
        };
        assert_eq!(culprit(&c, 1000, only_lzcnt), Some(Mnemonic::Lzcnt));
        assert_eq!(culprit(&c, 1000, fake_kvm), Some(Mnemonic::Bswap));
        assert_eq!(culprit(&c, 1000, |c| Ok(interp::run(c))), None);
    }

    #[test]
    fn tally_verdict_fails_on_unexplained_and_joins_known_ids_by_count() {
        let opts = RunOptions {
            programs: 60,
            seed: 0x12,
            persistence: None,
            keep_going: true,
            verbose: false,
        };
        let mut t = Tally {
            programs: 60,
            ..Tally::default()
        };
        assert_eq!(t.verdict(Variant::Long64Cpl3, &opts), Verdict::Pass);
        t.known.insert("a".into(), (1, "m".into()));
        t.known.insert("b".into(), (3, "m".into()));
        let Verdict::KnownDeviation { id, message } = t.verdict(Variant::Long64Cpl3, &opts) else {
            panic!("known mismatches only: a known deviation");
        };
        assert_eq!(id, "b, a");
        assert!(
            message.contains("4 mismatches, all known deviations: b x3, a x1"),
            "{message}"
        );
        assert!(
            message.contains("KVMCONF_DIFF_SEED=0x12 PROPTEST_CASES=300"),
            "{message}"
        );
        t.unexplained.push("class: Add;".into());
        let v = t.verdict(Variant::Long64Cpl3, &opts);
        assert!(
            matches!(&v, Verdict::Fail(m) if m.contains("1 unexplained mismatches (and known deviations b x3, a x1); the first: class: Add;")),
            "{v:?}"
        );
    }

    #[test]
    fn interpreter_agrees_with_itself() {
        let c = case_from_seed(Mode::Prot32, 1, 1);
        let r = interp::run(&c);
        assert!(compare(&r, &c).is_empty());
    }
}

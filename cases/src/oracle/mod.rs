//! The one oracle core for guest programs: what a mismatch between KVM and the reference is, as
//! data ([`Symptom`]), which every driver (the nextest differential tests, `kvmconf run`,
//! `kvmconf exec --oracle both`, `kvmconf fuzz` and the cargo-fuzz targets) builds the same way and
//! judges against the known deviations with [`crate::deviations::explain`].

pub mod code;

use iced_x86::Mnemonic;
use kvmconf_guests::case::{Case, Mode};
use kvmconf_guests::interp::Machine;
use kvmconf_guests::result::{CaseResult, Exit};

/// How a run ended, as a deviation's `kvm_exit`/`reference_exit` condition names it: the exit
/// kind (`hlt`, `exception`, `timeout`, …) and, for an exception, its vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitSig {
    /// [`Exit::kind`].
    pub kind: &'static str,
    /// The vector of an exception exit.
    pub vector: Option<u8>,
}

impl ExitSig {
    /// The signature of `e`.
    pub fn of(e: &Exit) -> ExitSig {
        ExitSig {
            kind: e.kind(),
            vector: match e {
                Exit::Exception { vector, .. } => Some(*vector),
                _ => None,
            },
        }
    }

    /// Whether a condition `kind` or `kind:vector` (decimal) holds.
    pub fn matches(&self, cond: &str) -> bool {
        match cond.split_once(':') {
            Some((k, v)) => k == self.kind && v.parse::<u8>().ok() == self.vector,
            None => cond == self.kind,
        }
    }
}

/// The instruction a mismatch is pinned on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Culprit {
    /// KVM ended the program with an emulation failure at this instruction.
    Refused {
        /// Its mnemonic.
        mnemonic: Mnemonic,
        /// Whether `cases/emulator_refuses.toml` lists it for the case's mode.
        listed: bool,
    },
    /// This instruction; the others were needed as context (set-up of its operands).
    One {
        /// Its mnemonic.
        mnemonic: Mnemonic,
        /// The other mnemonics left in the minimised program.
        context: Vec<Mnemonic>,
    },
    /// KVM's run stopped with an exception at this instruction, where the reference's ended
    /// otherwise (a driver that does not minimise pins a fault this way). Only a condition that
    /// also names KVM's exit matches it: the instruction faulted, which says nothing of its result.
    Faulted {
        /// Its mnemonic.
        mnemonic: Mnemonic,
    },
    /// Several instructions, none singled out.
    Several(Vec<Mnemonic>),
    /// Nothing could be pinned (the minimised program has no live instruction, or a harness
    /// error stopped the minimisation).
    Unknown,
}

impl Culprit {
    /// KVM refused `mnemonic` in `case`: listed or not in `cases/emulator_refuses.toml` for the
    /// case's mode.
    pub fn refused(case: &Case, mnemonic: Mnemonic) -> Culprit {
        let name = format!("{mnemonic:?}");
        Culprit::Refused {
            mnemonic,
            listed: crate::differential::refusals()
                .iter()
                .any(|r| r.mnemonic == name && r.mode == case.mode.name()),
        }
    }

    /// The mnemonic a deviation's `class` matches: the refused one or the one singled out.
    pub fn mnemonic(&self) -> Option<Mnemonic> {
        match self {
            Culprit::Refused { mnemonic, .. }
            | Culprit::One { mnemonic, .. }
            | Culprit::Faulted { mnemonic } => Some(*mnemonic),
            _ => None,
        }
    }

    /// The class in words, as reports show it (`Lzcnt`, `Popcnt refused`, `Bsr; context: Mov`).
    pub fn describe(&self) -> String {
        match self {
            Culprit::Refused { mnemonic, listed } => format!(
                "{mnemonic:?} refused{}",
                if *listed {
                    " (listed in cases/emulator_refuses.toml)"
                } else {
                    ""
                }
            ),
            Culprit::One { mnemonic, context } if context.is_empty() => format!("{mnemonic:?}"),
            Culprit::One { mnemonic, context } => format!(
                "{mnemonic:?}; context: {}",
                context
                    .iter()
                    .map(|m| format!("{m:?}"))
                    .collect::<Vec<_>>()
                    .join("+")
            ),
            Culprit::Faulted { mnemonic } => format!("{mnemonic:?} faulted"),
            Culprit::Several(ms) => ms
                .iter()
                .map(|m| format!("{m:?}"))
                .collect::<Vec<_>>()
                .join("+"),
            Culprit::Unknown => "unknown".into(),
        }
    }
}

/// A mismatch between KVM and the reference (the interpreter, or KVM's other execution path), as
/// data a known deviation's `[[deviation.when]]` conditions match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symptom {
    /// The case's mode.
    pub mode: Mode,
    /// The case's CPL.
    pub cpl: u8,
    /// The case's IOPL, if it sets one.
    pub iopl: Option<u8>,
    /// The instruction it is pinned on.
    pub culprit: Culprit,
    /// How KVM's run ended.
    pub kvm_exit: ExitSig,
    /// How the reference's run ended.
    pub reference_exit: ExitSig,
    /// The models of KVM's behaviour (named in `cases/deviations.toml` as `model`) that explain
    /// the whole mismatch: `split_locked_xchg`, the REP INS ones (`fuzz::rep_ins`).
    pub models: Vec<String>,
}

impl Symptom {
    /// A symptom of `case` with KVM and reference exits `kvm` and `reference`.
    pub fn new(case: &Case, culprit: Culprit, kvm: &Exit, reference: &Exit) -> Symptom {
        Symptom {
            mode: case.mode,
            cpl: case.cpl,
            iopl: case.iopl,
            culprit,
            kvm_exit: ExitSig::of(kvm),
            reference_exit: ExitSig::of(reference),
            models: vec![],
        }
    }
}

/// The symptom of a mismatch of `case` pinned on `culprit`, KVM's result `kvm` against the
/// reference's `reference`, with the models of KVM's behaviour that explain it: a split-locked
/// XCHG at CPL3 that outlasted the deadline (`split_locked_xchg`), a CPL3 run as if IOPL were 0
/// (`iopl_ignored`), and KVM's ways of running a REP INS into MMIO (`crate::fuzz::rep_ins`, named
/// by their deviation ids).
pub fn symptom(case: &Case, culprit: Culprit, kvm: &CaseResult, reference: &CaseResult) -> Symptom {
    let mut s = Symptom::new(case, culprit, &kvm.exit, &reference.exit);
    if case.cpl == 3
        && matches!(kvm.exit, Exit::Timeout { .. })
        && !matches!(reference.exit, Exit::Timeout { .. })
        && runs_split_locked_xchg(case)
    {
        s.models.push(SPLIT_LOCKED_XCHG.into());
    }
    if case.cpl == 3 && case.iopl.is_some_and(|i| i > 0) {
        let mut without = case.clone();
        without.iopl = None;
        if crate::differential::predict(&without, kvmconf_guests::interp::INSTRUCTION_CAP)
            .is_some_and(|o| crate::differential::agrees(kvm, &o))
        {
            s.models.push(IOPL_IGNORED.into());
        }
    }
    if has_ins(case)
        && let Some(ids) = crate::fuzz::rep_ins::explain(case, kvm)
    {
        s.models.extend(ids.into_iter().map(String::from));
    }
    s
}

/// The model name of a CPL3 run whose RFLAGS.IOPL was not applied: KVM's result is the
/// interpreter's for the same case with IOPL 0.
pub const IOPL_IGNORED: &str = "iopl_ignored";

/// The model name of a split-locked XCHG that outlasted the deadline.
pub const SPLIT_LOCKED_XCHG: &str = "split_locked_xchg";

/// Whether the case's code has a live INS instruction.
pub fn has_ins(case: &Case) -> bool {
    use iced_x86::Mnemonic::{Insb, Insd, Insw};
    code::live_mnemonics(case)
        .iter()
        .any(|m| matches!(m, Insb | Insw | Insd))
}

/// Whether the interpreter's run of `case` executes an XCHG whose memory operand crosses a 64-byte
/// line: a split lock (XCHG with memory is locked, SDM 2 XCHG), which a host with bus-lock
/// detection traps and may throttle.
pub fn runs_split_locked_xchg(case: &Case) -> bool {
    const LINE: u64 = 64;
    let mut found = false;
    let mut m = Machine::new(case);
    // Generated programs end far sooner; past this the answer is no (nothing is explained).
    m.set_cap(1_000_000);
    m.run_with(|m| {
        if let Some(ins) = m.next_instruction()
            && ins.mnemonic() == iced_x86::Mnemonic::Xchg
        {
            for k in 0..ins.op_count() {
                if ins.op_kind(k) == iced_x86::OpKind::Memory
                    && let Some(lin) = m.operand_linear(&ins, k)
                {
                    let last = lin + (ins.memory_size().size() as u64).max(1) - 1;
                    found |= lin / LINE != last / LINE;
                }
            }
        }
        if found {
            return Err(kvmconf_guests::interp::Stop::Hlt);
        }
        Ok(false)
    });
    found
}

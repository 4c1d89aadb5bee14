//! The differential oracle: generated programs on KVM against the reference interpreter, a
//! minimiser for mismatching programs, and the classifier that ties a minimised mismatch to a known
//! deviation of this host (`cases/deviations.toml`, checks named `differential.*`).
//!
//! The comparison itself masks nothing but the RFLAGS bits the interpreter reports as undefined at
//! the end. A mismatch is minimised by overwriting instructions with NOPs of the same length (so
//! branch offsets stay valid) while it persists, then classified by the mnemonics left: the class
//! `Popcnt`, for example, when only a POPCNT and the final HLT remain. The failure message carries
//! `class: <mnemonics>;`, which is what a deviation's `expect` matches, so on any other host (or for
//! any other class) the same mismatch is a plain failure.

use crate::deviations::{Deviation, Verdict, judge};
use crate::registry::Fail;
use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic};
use kvmconf_guests::case::Case;
use kvmconf_guests::r#gen::CODE;
use kvmconf_guests::interp::{self, Machine};
use kvmconf_guests::result::{CaseResult, DiffMask, Exit, FieldDiff, diff};
use kvmconf_harness::fingerprint::Fingerprint;
use kvmconf_harness::{KvmError, Pool};

/// Compares a KVM result with the interpreter's for `case`: every field that differs, with only
/// the RFLAGS bits the interpreter reports as undefined masked.
pub fn compare(kvm: &CaseResult, case: &Case) -> Vec<FieldDiff> {
    let (model, undefined) = interp::run_with_undefined(case);
    diff(
        kvm,
        &model,
        &DiffMask {
            rflags_ignore: undefined,
            ..DiffMask::default()
        },
    )
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

/// The code image of a generated case (the memory image at [`CODE`]).
fn code_index(case: &Case) -> Option<usize> {
    case.memory.iter().position(|m| m.addr.0 == CODE)
}

/// The instructions of a generated case's code image, in address order.
pub fn instructions(case: &Case) -> Vec<Instruction> {
    let Some(i) = code_index(case) else {
        return vec![];
    };
    let bytes = &case.memory[i].hex.0;
    let mut d = Decoder::with_ip(case.mode.bitness(), bytes, CODE, DecoderOptions::NONE);
    let mut out = Vec::new();
    while d.can_decode() {
        out.push(d.decode());
    }
    out
}

/// `case` with the instruction at `ip` (`len` bytes) overwritten by NOPs.
fn nop_out(case: &Case, ip: u64, len: usize) -> Case {
    let mut c = case.clone();
    if let Some(i) = code_index(&c) {
        let off = (ip - CODE) as usize;
        c.memory[i].hex.0[off..off + len].fill(0x90);
    }
    c
}

/// Shrinks a mismatching case: runs of instructions, halving in length down to one, are replaced by
/// NOPs (last run first) and each replacement kept while `still_differs` holds; single instructions
/// get a second pass. Returns the smallest case found.
pub fn minimise(case: &Case, mut still_differs: impl FnMut(&Case) -> bool) -> Case {
    let live = |c: &Case| -> Vec<(u64, usize)> {
        instructions(c)
            .iter()
            .filter(|i| !matches!(i.mnemonic(), Mnemonic::Nop | Mnemonic::Hlt))
            .map(|i| (i.ip(), i.len()))
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
            let mut trial = best.clone();
            for &(ip, len) in &ins[start..end] {
                trial = nop_out(&trial, ip, len);
            }
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

/// The class of a minimised mismatch: the mnemonics of the instructions left (NOPs and HLT
/// excluded), in program order, deduplicated, joined with `+`; when KVM refused to emulate, the
/// mnemonic at KVM's RIP followed by ` refused`.
pub fn classify(minimised: &Case, kvm: &CaseResult) -> String {
    let ins = instructions(minimised);
    if let Exit::InternalError { .. } = kvm.exit
        && let Some(at) = ins.iter().find(|i| i.ip() == kvm.regs.rip.0)
    {
        return format!("{:?} refused", at.mnemonic());
    }
    let mut names: Vec<String> = Vec::new();
    for i in &ins {
        if matches!(i.mnemonic(), Mnemonic::Nop | Mnemonic::Hlt) {
            continue;
        }
        let n = format!("{:?}", i.mnemonic());
        if !names.contains(&n) {
            names.push(n);
        }
    }
    if names.is_empty() {
        "empty".into()
    } else {
        names.join("+")
    }
}

/// A program, the listing of its minimised form, and what differed.
#[derive(Clone, Debug)]
pub struct Mismatch {
    /// The generated case.
    pub case: Case,
    /// Its minimised form.
    pub minimised: Case,
    /// The class (see [`classify`]).
    pub class: String,
    /// The differing fields of the minimised case, `left != right`.
    pub diffs: Vec<String>,
}

impl Mismatch {
    /// The failure message: name, class (`class: …;`, what deviations match), the minimised
    /// program's listing, the diff, and the minimised case as JSON for replay.
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
            self.class,
            self.diffs.join("\n    "),
            serde_json::to_string(&self.minimised).expect("cases serialize")
        )
    }

    /// Judges this mismatch as a failure of the check `check` against the known deviations.
    pub fn judge(&self, check: &str, what: &str, devs: &[Deviation], fp: &Fingerprint) -> Verdict {
        judge(check, &Err(Fail::Failed(self.message(what))), devs, fp)
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

/// Runs `case` on KVM through `pool` and, when it disagrees with the interpreter, minimises it
/// (each trial on KVM again) and returns the mismatch. A refusal to emulate (KVM_EXIT_INTERNAL_ERROR)
/// is minimised while KVM keeps refusing. Harness errors are returned as errors.
pub fn check_one(pool: &mut Pool<'_>, case: &Case) -> Result<Option<Mismatch>, KvmError> {
    let kvm = pool.run(case)?;
    if compare(&kvm, case).is_empty() {
        return Ok(None);
    }
    Ok(Some(minimise_mismatch(case, &kvm, |c| pool.run(c))))
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
        let mut minimised = case.clone();
        for i in instructions(case) {
            if i.ip() != kvm.regs.rip.0 && !matches!(i.mnemonic(), Mnemonic::Nop | Mnemonic::Hlt) {
                minimised = nop_out(&minimised, i.ip(), i.len());
            }
        }
        let mut class = classify(case, kvm);
        if let Some(m) = class.strip_suffix(" refused")
            && refusals()
                .iter()
                .any(|r| r.mnemonic == m && r.mode == case.mode.name())
        {
            class = format!("{m} refused (listed in cases/emulator_refuses.toml)");
        }
        return Mismatch {
            case: case.clone(),
            minimised,
            class,
            diffs: compare(kvm, case).iter().map(ToString::to_string).collect(),
        };
    }
    // A trial still shows the mismatch when KVM and the interpreter still differ and each ends the
    // way it did on the original (so removing a loop bound cannot turn the mismatch into a timeout).
    // Nor may a trial read a flag that is undefined at that point (the generator's fix-ups can be
    // NOPed away): the interpreter reports that as `tainted`.
    // And a trial must differ only in fields the original differs in, so that removing set-up code
    // (say, the bounds of a string operation) cannot trade the mismatch for another one.
    let model_kind = interp::run(case).exit.kind();
    let paths: Vec<String> = compare(kvm, case).into_iter().map(|d| d.path).collect();
    let minimised = minimise(case, |trial| {
        let o = Machine::new(trial).run();
        if o.tainted || o.result.exit.kind() != model_kind {
            return false;
        }
        match run(trial) {
            Ok(r) => {
                let d = compare(&r, trial);
                r.exit.kind() == kvm.exit.kind()
                    && !d.is_empty()
                    && d.iter().all(|f| paths.contains(&f.path))
            }
            Err(_) => false,
        }
    });
    let (class, diffs) = match run(&minimised) {
        Ok(r) => {
            let class = classify(&minimised, &r);
            let d = compare(&r, &minimised);
            (class, d.iter().map(ToString::to_string).collect())
        }
        Err(e) => ("harness error".into(), vec![e.to_string()]),
    };
    Mismatch {
        case: case.clone(),
        minimised,
        class,
        diffs,
    }
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
        assert_eq!(classify(&m, &interp::run(&m)), "empty");
    }

    #[test]
    fn interpreter_agrees_with_itself() {
        let c = case_from_seed(Mode::Prot32, 1, 1);
        let r = interp::run(&c);
        assert!(compare(&r, &c).is_empty());
    }
}

//! Explanations of a whole mismatch by the known deviations of this host that name one
//! instruction class: the program with those instructions NOPed, KVM's observed effect
//! substituted for them, or KVM's modelled behaviour (LZCNT/TZCNT as BSR/BSF) agrees with the
//! reference. The fuzz targets use them where the differential tests minimise.

use crate::fuzz::{data_as_mmio, rep_ins};
use crate::oracle::compare::paths_differ;
use kvmconf_guests::case::{Case, Mode};
use kvmconf_guests::interp::Machine;
use kvmconf_guests::result::{CaseResult, Exit};
use kvmconf_harness::KvmError;

/// The deviations of this host that name one instruction class and nothing else a run must show
/// (no exit, refusal or model condition: `class = "Lzcnt"`, or a glob such as `"Ins*"`), for a
/// case of `mode` at `cpl`: (id, class glob).
pub fn host_class_deviations(mode: Mode, cpl: u8) -> Vec<(String, String)> {
    crate::deviations::this_host()
        .iter()
        .flat_map(|d| d.when.iter().map(move |w| (d, w)))
        .filter(|(_, w)| {
            !w.is_check()
                && w.refused.is_none()
                && w.listed.is_none()
                && w.kvm_exit.is_none()
                && w.reference_exit.is_none()
                && w.model.is_none()
                && w.iopl.is_none()
                && w.cpl.is_none_or(|c| c == cpl)
                && w.modes
                    .as_ref()
                    .is_none_or(|ms| ms.iter().any(|m| m == mode.name()))
        })
        .filter_map(|(d, w)| Some((d.id.clone(), w.class.clone()?)))
        .collect()
}

/// Whether a known instruction-class deviation of this host explains a mismatch of `case`
/// completely: the ids of the classes present in the program whose instructions, NOPed, make KVM
/// (`run`) and the interpreter agree. At CPL0 the instructions this host's emulator refuses
/// (`cases/emulator_refuses.toml`, deviation `kvm-pvm-emulator-refuses`) count as a class too.
/// When that residual is out of the interpreter's scope (NOPing them left a later flag read
/// undefined, or a loop without its bound), the program itself is judged with KVM's observed
/// effect substituted for each execution of a class instruction
/// ([`crate::differential::predict_observed`]) and must then agree with `run` of the whole case.
/// INS is not NOPed as a class (its `class = "Ins*"` condition, [`rep_ins::REREADS`], is for the
/// differential tests' minimised culprits): an INS left in the program is judged by KVM's modelled behaviour
/// ([`rep_ins::predict_by`]), whose deviations join the ids when they were needed.
/// `None` when no class is present, neither check can be made, or KVM and the interpreter still
/// differ (a finding of its own).
pub fn explained_by_known_classes(
    case: &Case,
    classes: &[(String, String)],
    mut run: impl FnMut(&Case) -> Result<CaseResult, KvmError>,
) -> Option<String> {
    const REFUSES: &str = "kvm-pvm-emulator-refuses";
    let refused: Vec<String> = if case.cpl == 0 && crate::deviations::host_has(REFUSES) {
        crate::differential::refusals()
            .iter()
            .filter(|r| r.mode == case.mode.name())
            .map(|r| r.mnemonic.clone())
            .collect()
    } else {
        vec![]
    };
    let classes: Vec<&(String, String)> = classes
        .iter()
        .filter(|(id, _)| id != rep_ins::REREADS)
        .collect();
    // (id, mnemonic name) of every known class an instruction of the program belongs to: a class
    // deviation matches its mnemonic or, written without the closing `;`, any that starts with it;
    // a refusal matches its mnemonic exactly.
    let class_of = |name: &str| -> Option<String> {
        classes
            .iter()
            .find(|(_, c)| crate::registry::glob(c, name))
            .map(|(id, _)| id.clone())
            .or_else(|| {
                refused
                    .iter()
                    .any(|m| m == name)
                    .then(|| REFUSES.to_string())
            })
    };
    // The program's mnemonics of known classes, and those classes' ids.
    let (mut known, mut present) = (Vec::new(), Vec::<String>::new());
    let mut has_ins = false;
    for m in crate::differential::live_mnemonics(case) {
        use iced_x86::Mnemonic::{Insb, Insd, Insw};
        has_ins |= matches!(m, Insb | Insw | Insd);
        if let Some(id) = class_of(&format!("{m:?}")) {
            known.push(m);
            if !present.contains(&id) {
                present.push(id);
            }
        }
    }
    if present.is_empty() {
        return None;
    }
    // The ids of `ids`, then those of the INS model that are not among them.
    let joined = |ids: Vec<String>, ins: &[&str]| {
        let mut all = ids;
        for id in ins {
            if !all.iter().any(|a| a == id) {
                all.push(id.to_string());
            }
        }
        all.join(",")
    };
    let cap = kvmconf_guests::interp::INSTRUCTION_CAP;
    let residual = crate::differential::nop_where(case, |i| known.contains(&i.mnemonic()));
    let predicted = if has_ins {
        rep_ins::predict(&residual)
    } else {
        crate::differential::predict(&residual, cap).map(|o| (o, vec![]))
    };
    if let Some((o, ins)) = predicted {
        let k = run(&residual).ok()?;
        return (crate::differential::agrees(&k, &o)
            && ins.iter().all(|id| crate::deviations::host_has(id)))
        .then(|| joined(present, &ins));
    }
    // Without them the program left the interpreter's scope: the class instructions set up what
    // later ones read (a flag a BSR before left undefined, a loop bound). Judge the program itself
    // instead, with KVM's observed effect substituted for each execution of a class instruction
    // (refused instructions cannot be observed: KVM stops at them).
    let mut take = |i: &iced_x86::Instruction| {
        known.contains(&i.mnemonic())
            && classes
                .iter()
                .any(|(_, c)| crate::registry::glob(c, &format!("{:?}", i.mnemonic())))
    };
    let (o, substituted, ins) = if has_ins {
        rep_ins::predict_by(case, |c, before| {
            crate::differential::predict_observed_by(c, cap, &mut take, &mut run, before)
        })
        .filter(|(_, s, _)| !s.is_empty())?
    } else {
        let (o, s) = crate::differential::predict_observed(case, cap, &mut take, &mut run)?;
        (o, s, vec![])
    };
    let k = run(case).ok()?;
    if !crate::differential::agrees(&k, &o) || !ins.iter().all(|id| crate::deviations::host_has(id))
    {
        return None;
    }
    let ids: Vec<String> = present
        .into_iter()
        .filter(|id| {
            substituted
                .iter()
                .any(|m| class_of(&format!("{m:?}")).as_deref() == Some(id.as_str()))
        })
        .collect();
    Some(joined(ids, &ins))
}

/// Whether known instruction-class deviations of this host's emulator explain a mismatch between
/// the native and the emulated run of `case` completely: with every instruction of those classes
/// NOPed, both paths (`run`, the data region in RAM and as MMIO) agree. The ids of the classes
/// present, or `None` when none is, when the residual leaves the interpreter's scope or ends
/// otherwise than the original (NOPing removed a loop bound or a pointer's set-up: what it would
/// run checks nothing the program asked for), or when the paths still differ.
pub fn classes_explain_paths(
    case: &Case,
    classes: &[(String, String)],
    mut run: impl FnMut(&Case) -> Result<CaseResult, KvmError>,
) -> Option<String> {
    let (mut ids, mut known) = (Vec::<String>::new(), Vec::new());
    for m in crate::oracle::code::live_mnemonics(case) {
        let name = format!("{m:?}");
        if let Some((id, _)) = classes
            .iter()
            .find(|(_, c)| crate::registry::glob(c, &name))
        {
            known.push(m);
            if !ids.contains(id) {
                ids.push(id.clone());
            }
        }
    }
    if ids.is_empty() {
        return None;
    }
    let original = Machine::new(case).run();
    let cap = kvmconf_guests::interp::INSTRUCTION_CAP;
    let residual = crate::oracle::code::nop_where(case, |i| known.contains(&i.mnemonic()));
    let predicted = crate::differential::predict(&residual, cap)?;
    if predicted.result.exit.kind() != original.result.exit.kind() {
        return None;
    }
    let emu = data_as_mmio(&residual)?;
    let (native, emulated) = (run(&residual).ok()?, run(&emu).ok()?);
    paths_differ(&residual, &native, &emulated)
        .is_empty()
        .then(|| ids.join(","))
}

/// Whether this host's LZCNT-as-BSR / TZCNT-as-BSF deviations explain a mismatch between the
/// native and the emulated run of `case` completely: the native run of the program with those
/// instructions written as BSR/BSF ([`crate::oracle::code::lzcnt_tzcnt_as_bsr_bsf`]) equals the
/// emulated run `emulated`. The ids of those deviations, or `None` (neither is a known class of
/// this host, the program has neither instruction, or the runs still differ).
pub fn lzcnt_tzcnt_explain_paths(
    case: &Case,
    emulated: &CaseResult,
    classes: &[(String, String)],
    mut run: impl FnMut(&Case) -> Result<CaseResult, KvmError>,
) -> Option<String> {
    let ids = lzcnt_tzcnt_ids(case, classes)?;
    let as_kvm = crate::oracle::code::lzcnt_tzcnt_as_bsr_bsf(case)?;
    let native = run(&as_kvm).ok()?;
    paths_differ(case, &native, emulated)
        .is_empty()
        .then(|| ids.join(","))
}

/// Whether this host's LZCNT-as-BSR / TZCNT-as-BSF deviations explain KVM's result `kvm` for
/// `case` (a program the interpreter predicts: it reads no undefined flag): the interpreter's run
/// of the program with those instructions written as BSR/BSF
/// ([`crate::oracle::code::lzcnt_tzcnt_as_bsr_bsf`]) agrees with it, or reads a flag that BSR/BSF
/// leave undefined. In the second case KVM's known behaviour makes the program's outcome
/// undefined (an ADC after an LZCNT reads the CF that LZCNT defines and BSR does not; some CPUs
/// keep the CF of the instruction before, itself undefined), so, as for any program that reads an
/// undefined flag, nothing else in it can be judged: the mismatch is that deviation's. The ids of
/// those deviations, or `None` (neither is a known class here, the rewritten program leaves the
/// interpreter's scope otherwise, or it still differs).
pub fn lzcnt_tzcnt_explain_interp(
    case: &Case,
    kvm: &CaseResult,
    classes: &[(String, String)],
) -> Option<String> {
    let ids = lzcnt_tzcnt_ids(case, classes)?;
    let as_kvm = crate::oracle::code::lzcnt_tzcnt_as_bsr_bsf(case)?;
    let mut m = Machine::new(&as_kvm);
    m.set_cap(kvmconf_guests::interp::INSTRUCTION_CAP);
    let o = m.run();
    if o.tainted {
        return Some(ids.join(","));
    }
    if matches!(
        o.result.exit,
        Exit::Timeout { .. } | Exit::UnsupportedInstruction { .. }
    ) {
        return None;
    }
    crate::differential::agrees(kvm, &o).then(|| ids.join(","))
}

/// The ids of this host's class deviations (`classes`, see [`host_class_deviations`]) for every
/// LZCNT and TZCNT of `case`; `None` when one of them has none (or the case has neither).
fn lzcnt_tzcnt_ids(case: &Case, classes: &[(String, String)]) -> Option<Vec<String>> {
    let mut ids: Vec<String> = Vec::new();
    for m in crate::oracle::code::live_mnemonics(case) {
        if !matches!(m, iced_x86::Mnemonic::Lzcnt | iced_x86::Mnemonic::Tzcnt) {
            continue;
        }
        let (id, _) = classes
            .iter()
            .find(|(_, c)| crate::registry::glob(c, &format!("{m:?}")))?;
        if !ids.contains(id) {
            ids.push(id.clone());
        }
    }
    (!ids.is_empty()).then_some(ids)
}

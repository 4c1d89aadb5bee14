//! The guest targets: `guest_vs_interp` (KVM against the interpreter) and
//! `guest_emulated_vs_native` (the data region in RAM against the same region as MMIO), their
//! inputs, and the classification of their mismatches into a signature and a known deviation.

use super::{Exec, Finding, Input, Runner, Target, result_signal, signal_of};
use crate::oracle::compare::{agree, paths_differ, without_mmio};
use crate::oracle::known::{
    classes_explain_paths, explained_by_known_classes, host_class_deviations,
    lzcnt_tzcnt_explain_interp, lzcnt_tzcnt_explain_paths,
};
use kvmconf_guests::case::{Case, Mode};
use kvmconf_guests::r#gen::source::Source;
use kvmconf_guests::r#gen::{DATA, Options, generate};
use kvmconf_guests::interp::{self, Machine};
use kvmconf_guests::result::{CaseResult, DiffMask, Exit, diff};
use kvmconf_harness::KvmError;

impl Runner<'_> {
    /// KVM against the interpreter.
    pub fn guest_vs_interp(&mut self, case: &Case) -> Result<Exec, KvmError> {
        let Some(o) = interpret_guest(case) else {
            return Ok(Exec {
                rejected: true,
                ..Exec::default()
            });
        };
        let k = self.pool.run(case)?;
        self.judge_guest(case, &o, &k)
    }

    /// The verdict of `guest_vs_interp` on `case`, given the interpreter's outcome (from
    /// [`interpret_guest`]) and KVM's result: split out so a worker can run a batch's KVM runs back
    /// to back between the interpreter runs and the verdicts.
    pub fn judge_guest(
        &mut self,
        case: &Case,
        o: &interp::Outcome,
        k: &CaseResult,
    ) -> Result<Exec, KvmError> {
        let signal = result_signal(case.mode, case.cpl, k);
        if agree(k, &o.result, o.undefined) {
            return Ok(Exec {
                signal,
                rejected: false,
                finding: None,
            });
        }
        if let Some(longer) = crate::oracle::predict::with_deadline_for_exits(case, k, &o.result) {
            // A timeout is a result only when it outlasts the exits the program makes; one that
            // does is judged on the case as it came (its reruns keep the case's own deadline).
            let k2 = self.pool.run(&longer)?;
            if !matches!(k2.exit, Exit::Timeout { .. }) {
                return self.judge_guest(&longer, o, &k2);
            }
        }
        if let Exit::InternalError { suberror: 1, .. } = k.exit {
            // KVM's emulator gave up: classified by the instruction, no field diff needed.
            let (signature, known) = classify(Target::GuestVsInterp, case, k, &o.result, &[]);
            return Ok(Exec {
                signal,
                rejected: false,
                finding: Some(Finding {
                    target: Target::GuestVsInterp,
                    signature,
                    known,
                    case: case.clone(),
                    input: Input::Case,
                    details: vec![format!(
                        "exit.kind: internal_error (emulation failure at rip {:#x}) != {} (kvm != interp)",
                        k.regs.rip.0,
                        o.result.exit.kind()
                    )],
                }),
            });
        }
        let mask = DiffMask {
            rflags_ignore: o.undefined,
            ..DiffMask::default()
        };
        let d = diff(k, &o.result, &mask);
        let finding = (!d.is_empty()).then(|| {
            let (signature, mut known) = classify(Target::GuestVsInterp, case, k, &o.result, &d);
            if known.is_none() {
                // A mismatch the host's known instruction-class deviations (LZCNT as BSR, …)
                // explain completely is known; anything left without them stays a finding.
                let classes = host_class_deviations(case.mode, case.cpl);
                known = explained_by_known_classes(case, &classes, |c| self.pool.run(c))
                    .or_else(|| lzcnt_tzcnt_explain_interp(case, k, &classes));
            }
            Finding {
                target: Target::GuestVsInterp,
                signature,
                known,
                case: case.clone(),
                input: Input::Case,
                details: d.iter().map(|f| format!("{f} (kvm != interp)")).collect(),
            }
        });
        Ok(Exec {
            signal,
            rejected: false,
            finding,
        })
    }

    /// The case as given (data in RAM: native where the host runs the mode natively) against the
    /// same case with its data region declared as MMIO (every access through KVM's emulator).
    pub fn emulated_vs_native(&mut self, case: &Case) -> Result<Exec, KvmError> {
        let Some(emu) = data_as_mmio(case) else {
            return Ok(Exec {
                rejected: true,
                ..Exec::default()
            });
        };
        if case.validate().is_err() || emu.validate().is_err() || case.single_step {
            return Ok(Exec {
                rejected: true,
                ..Exec::default()
            });
        }
        let native = self.pool.run(case)?;
        let emulated = self.pool.run(&emu)?;
        let signal = signal_of((
            result_signal(case.mode, case.cpl, &native),
            result_signal(case.mode, case.cpl, &emulated),
        ));
        if agree(&without_mmio(&native), &without_mmio(&emulated), 0) {
            return Ok(Exec {
                signal,
                rejected: false,
                finding: None,
            });
        }
        let d = paths_differ(case, &native, &emulated);
        if d.is_empty() {
            return Ok(Exec {
                signal,
                rejected: false,
                finding: None,
            });
        }
        let (signature, mut known) =
            classify(Target::GuestEmulatedVsNative, case, &emulated, &native, &d);
        if known.is_none() {
            // The host's known instruction-class deviations of KVM's emulator (LZCNT as BSR, …)
            // explain it when the rest of the program agrees on both paths, when the native run
            // of the program as KVM's emulator runs it is the emulated run, or when each path
            // agrees with the interpreter or differs from it only by known deviations
            // (guest_vs_interp's own judgement of each run).
            let classes = host_class_deviations(case.mode, case.cpl);
            known = classes_explain_paths(case, &classes, |c| self.pool.run(c)).or_else(|| {
                lzcnt_tzcnt_explain_paths(case, &emulated, &classes, |c| self.pool.run(c))
            });
        }
        if known.is_none() {
            known = self.each_path_explained(case, &native, &emu, &emulated)?;
        }
        let finding = Some(Finding {
            target: Target::GuestEmulatedVsNative,
            signature,
            known,
            case: case.clone(),
            input: Input::Case,
            details: d
                .iter()
                .map(|f| format!("{f} (native != emulated)"))
                .collect(),
        });
        Ok(Exec {
            signal,
            rejected: false,
            finding,
        })
    }

    /// The known deviations that explain both runs of an emulated-versus-native pair against the
    /// interpreter: each run agrees with it or is a known `guest_vs_interp` finding, and at least
    /// one is known (their ids, joined). `None` when either run is out of the interpreter's scope
    /// or differs from it in a way no known deviation explains.
    fn each_path_explained(
        &mut self,
        case: &Case,
        native: &CaseResult,
        emu: &Case,
        emulated: &CaseResult,
    ) -> Result<Option<String>, KvmError> {
        let mut ids: Vec<String> = Vec::new();
        for (c, k) in [(case, native), (emu, emulated)] {
            let Some(o) = interpret_guest(c) else {
                return Ok(None);
            };
            match self.judge_guest(c, &o, k)?.finding {
                None => {}
                Some(Finding {
                    known: Some(id), ..
                }) => ids.push(id),
                Some(_) => return Ok(None),
            }
        }
        Ok((!ids.is_empty()).then(|| ids.join(",")))
    }
}

/// `case` with its RAM image at [`DATA`] turned into an MMIO region of the same contents (`None`
/// when it has no such image). A shorter image is padded with zeros to the end of its page (or to
/// the next image), as the guest RAM it stands for reads there: otherwise an access or a dump past
/// the image would read the VMM's answer for unmapped MMIO on one path and RAM on the other.
pub fn data_as_mmio(case: &Case) -> Option<Case> {
    const PAGE: u64 = 0x1000;
    let i = case.memory.iter().position(|m| m.addr.0 == DATA)?;
    let mut c = case.clone();
    let mut m = c.memory.remove(i);
    let end = DATA + m.hex.0.len() as u64;
    let next = c
        .memory
        .iter()
        .map(|x| x.addr.0)
        .chain(c.mmio.iter().map(|x| x.addr.0))
        .filter(|&a| a >= end)
        .min()
        .unwrap_or(u64::MAX);
    let to = end.next_multiple_of(PAGE).min(next);
    m.hex.0.resize((to - DATA) as usize, 0);
    c.mmio.push(kvmconf_guests::case::MmioRegion {
        addr: m.addr,
        len: kvmconf_guests::Hex(m.hex.0.len() as u64),
        hex: m.hex,
    });
    Some(c)
}

/// The interpreter's outcome for a `guest_vs_interp` input, or `None` when the input is out of the
/// oracle's scope (invalid, single-step, tainted by an undefined input, or an instruction the
/// interpreter does not model): such inputs are rejected without running KVM.
pub fn interpret_guest(case: &Case) -> Option<interp::Outcome> {
    if case.validate().is_err() || case.single_step {
        return None;
    }
    let o = Machine::new(case).run();
    if o.tainted || matches!(o.result.exit, Exit::UnsupportedInstruction { .. }) {
        return None;
    }
    Some(o)
}

/// A generated program in any mode (long64 at CPL0 or CPL3), data in RAM or MMIO.
pub fn gen_guest(src: &mut dyn Source) -> Case {
    let mode = [Mode::Real16, Mode::Prot32, Mode::Long64][src.below(3) as usize];
    let opts = Options {
        mode,
        stubs: src.below(100) < 75,
        data_mmio: src.below(100) < 20,
        len: 1 + src.below(40) as usize,
    };
    let mut c = generate(&opts, src, "fuzz");
    if mode == Mode::Long64 && src.below(2) == 0 {
        c.cpl = 3;
    }
    c
}

/// A generated long64 program with data in RAM, mostly at CPL3 (run natively on hosts that run
/// ring 0 in the emulator).
pub fn gen_native(src: &mut dyn Source) -> Case {
    let opts = Options {
        mode: Mode::Long64,
        stubs: src.below(100) < 75,
        data_mmio: false,
        len: 1 + src.below(40) as usize,
    };
    let mut c = generate(&opts, src, "fuzz");
    if src.below(4) != 0 {
        c.cpl = 3;
    }
    c
}

/// The signature and known-deviation id of a mismatch. `kvm` is the side that ran under KVM's
/// emulator (or the only KVM side), `reference` the other. The id is that of the first deviation
/// of this host whose oracle conditions the mismatch's [`Symptom`](crate::oracle::Symptom) meets
/// (an emulation failure is pinned on the refused instruction; anything else on no instruction:
/// class deviations are judged by [`explained_by_known_classes`]). An emulation failure no entry
/// names is `class:kvm-emulator-refuses:<Code>` on every host: KVM_EXIT_INTERNAL_ERROR with
/// KVM_INTERNAL_ERROR_EMULATION is how api.rst says KVM reports an instruction it cannot emulate,
/// a limitation rather than a wrong result.
pub fn classify(
    target: Target,
    case: &Case,
    kvm: &CaseResult,
    reference: &CaseResult,
    d: &[kvmconf_guests::result::FieldDiff],
) -> (String, Option<String>) {
    use crate::oracle::{self, Culprit};
    let head = format!("{}:{}:cpl{}", target.name(), case.mode.name(), case.cpl);
    if let Exit::InternalError { suberror: 1, .. } = kvm.exit {
        let at = crate::oracle::code::decode_at(case, kvm.regs.rip.0);
        let code = at.map_or_else(|| "unknown".into(), |i| format!("{:?}", i.code()));
        let culprit = at.map_or(Culprit::Unknown, |i| Culprit::refused(case, i.mnemonic()));
        let s = oracle::symptom(case, culprit, kvm, reference);
        let known = crate::deviations::explain_here(&s).map_or_else(
            || format!("class:kvm-emulator-refuses:{code}"),
            |d| d.id.clone(),
        );
        return (format!("{head}:emulation-failure:{code}"), Some(known));
    }
    // A fault the reference does not take is pinned on the faulting instruction.
    let culprit = match kvm.exit {
        Exit::Exception { .. }
            if oracle::ExitSig::of(&kvm.exit) != oracle::ExitSig::of(&reference.exit) =>
        {
            crate::oracle::code::decode_at(case, kvm.regs.rip.0).map_or(Culprit::Unknown, |i| {
                Culprit::Faulted {
                    mnemonic: i.mnemonic(),
                }
            })
        }
        _ => Culprit::Unknown,
    };
    let s = oracle::symptom(case, culprit, kvm, reference);
    let known = crate::deviations::explain_here(&s).map(|d| d.id.clone());
    let sig = if case.mode == Mode::Real16
        && matches!(kvm.exit, Exit::Timeout { .. })
        && matches!(reference.exit, Exit::Shutdown)
    {
        Some("timeout-not-shutdown")
    } else if case.cpl == 3
        && case.iopl == Some(3)
        && matches!(kvm.exit, Exit::Exception { vector: 13, .. })
    {
        Some("iopl3-io-gp")
    } else if s.models.iter().any(|m| m == oracle::SPLIT_LOCKED_XCHG) {
        Some("split-lock-timeout")
    } else {
        None
    };
    if let Some(sig) = sig {
        return (format!("{head}:{sig}"), known);
    }
    let first = d
        .first()
        .map(|f| {
            let p = f.path.split('[').next().unwrap_or(&f.path);
            if p.starts_with("regs") || p.starts_with("segs") || p.starts_with("cr") {
                f.path.split('.').take(2).collect::<Vec<_>>().join(".")
            } else {
                p.to_string()
            }
        })
        .unwrap_or_default();
    (
        format!(
            "{head}:{}/{}:{first}",
            kvm.exit.kind(),
            reference.exit.kind()
        ),
        known,
    )
}

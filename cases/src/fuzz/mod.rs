//! Fuzzing oracles shared by `kvmconf fuzz` (stable, in-process) and the cargo-fuzz targets in
//! `fuzz/`: generate an input, run it on KVM and the reference, and say whether they agree.
//!
//! Every execution returns an [`Exec`]: a *signal* (a hash of what KVM did — exit reason, exception
//! vector, emulation failure, rejected ioctl and errno — used as coverage) and, when an invariant
//! broke, a [`Finding`] with a coarse *signature* for deduplication. Findings that match a known
//! deviation of the host (`cases/deviations.toml`) or an instruction class KVM's emulator is known
//! to refuse carry that id in [`Finding::known`] and must not be reported as new.
//!
//! Targets: [`Target::GuestVsInterp`] (KVM against the interpreter),
//! [`Target::GuestEmulatedVsNative`] (data in RAM against data in MMIO, so KVM's instruction emulator
//! does every access), [`Target::StateEntry`] (random register and special-register states),
//! [`Target::CaseParser`] (mutated case text into the parser) and [`Target::IoctlSequence`] (a
//! sequence of API calls on one VM). This module holds what every target shares (the target list,
//! findings, executions, the runner and its shrinking); the targets live in `guest`, `parser`,
//! `state_entry` and `ioctl_seq`, their judgements in the oracle core (`crate::oracle`).

pub mod artifact;
pub mod guest;
pub mod ioctl_seq;
pub mod minimise;
pub mod parser;
pub mod rep_ins;
pub mod state_entry;

use kvmconf_guests::case::{Case, Mode, parse_cases};
use kvmconf_guests::r#gen::source::{Source, SplitMix};

use kvmconf_guests::result::{CaseResult, Event, Exit};
use kvmconf_harness::{Host, KvmError, Pool};
use std::hash::{Hash, Hasher};

/// What a fuzzing run exercises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// A generated program on KVM against the reference interpreter.
    GuestVsInterp,
    /// A generated program with its data region in RAM against the same region as MMIO.
    GuestEmulatedVsNative,
    /// Random CPU states into KVM_SET_SREGS/REGS and KVM_RUN.
    StateEntry,
    /// Mutated case text into the case parser.
    CaseParser,
    /// A sequence of API calls on one VM.
    IoctlSequence,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 5] = [
        Target::GuestVsInterp,
        Target::GuestEmulatedVsNative,
        Target::StateEntry,
        Target::CaseParser,
        Target::IoctlSequence,
    ];

    /// The name used on the command line and in artifacts.
    pub fn name(self) -> &'static str {
        match self {
            Target::GuestVsInterp => "guest_vs_interp",
            Target::GuestEmulatedVsNative => "guest_emulated_vs_native",
            Target::StateEntry => "state_entry",
            Target::CaseParser => "case_parser",
            Target::IoctlSequence => "ioctl_sequence",
        }
    }

    /// The target called `name`.
    pub fn from_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Whether the target runs guests (and needs `/dev/kvm`).
    pub fn needs_kvm(self) -> bool {
        self != Target::CaseParser
    }
}

/// A broken invariant.
#[derive(Clone, Debug)]
pub struct Finding {
    /// The target that found it.
    pub target: Target,
    /// Coarse identity for deduplication: findings with the same signature are one finding.
    pub signature: String,
    /// The id of the known deviation or known instruction class that explains it, if any.
    pub known: Option<String>,
    /// The case that shows it (for targets that run a case; a stand-in otherwise).
    pub case: Case,
    /// What replays it, beyond the case.
    pub input: Input,
    /// What differed, one line each (`field: kvm != reference`).
    pub details: Vec<String>,
}

/// The input that shows a finding, in the form its artifact file holds.
#[derive(Clone, Debug)]
pub enum Input {
    /// The finding's case alone (the guest targets; a stand-in for `case_parser`).
    Case,
    /// A case entered with a CPU state (`state_entry`).
    State(Box<state_entry::StateInput>),
    /// The calls issued on a VM made for the finding's case (`ioctl_sequence`).
    Calls(Vec<ioctl_seq::Call>),
}

/// An extra invariant on an accepted `state_entry` state's run: `Some(what broke)` is a finding.
/// The built-in invariants always apply; tests inject fake oracles through this.
pub type StateCheck = dyn Fn(&state_entry::StateInput, &CaseResult) -> Option<String> + Send + Sync;

/// An extra invariant on one `ioctl_sequence` call and its outcome (the signal string, e.g.
/// `msr 0x277 1`): `Some(what broke)` is a finding.
pub type CallCheck = dyn Fn(&ioctl_seq::Call, &str) -> Option<String> + Send + Sync;

/// Extra invariants a [`Runner`] checks besides the built-in ones (none by default).
#[derive(Clone, Default)]
pub struct Extra {
    /// For `state_entry`.
    pub state: Option<std::sync::Arc<StateCheck>>,
    /// For `ioctl_sequence`.
    pub call: Option<std::sync::Arc<CallCheck>>,
}

/// The outcome of one execution.
#[derive(Clone, Debug, Default)]
pub struct Exec {
    /// A hash of what KVM did, used as coverage signal.
    pub signal: u64,
    /// The input was out of scope (the oracle cannot judge it): not counted, not a finding.
    pub rejected: bool,
    /// A broken invariant.
    pub finding: Option<Finding>,
}

/// Hashes anything into a signal value.
pub fn signal_of(v: impl Hash) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// The signal of a KVM result: exit kind and its distinguishing fields, event kinds in the trace.
pub fn result_signal(mode: Mode, cpl: u8, r: &CaseResult) -> u64 {
    let exit = match &r.exit {
        Exit::Exception { vector, .. } => format!("exception {vector}"),
        Exit::InternalError { suberror, .. } => format!("internal {suberror}"),
        Exit::FailEntry { reason, .. } => format!("fail_entry {}", reason.0),
        Exit::Rejected { ioctl, errno } => format!("rejected {ioctl} {errno}"),
        Exit::Unsupported { reason } => format!("unsupported {reason}"),
        e => e.kind().to_string(),
    };
    let kinds: Vec<u8> = r
        .trace
        .iter()
        .take(8)
        .map(|e| match e {
            Event::IoOut(_) => 0,
            Event::IoIn(_) => 1,
            Event::MmioRead(_) => 2,
            Event::MmioWrite(_) => 3,
        })
        .collect();
    signal_of((mode.name(), cpl, exit, kinds))
}

/// Where a worker runs its cases: a VM pool on one `/dev/kvm` handle.
pub struct Runner<'h> {
    /// The host.
    pub host: &'h Host,
    /// The pool.
    pub pool: Pool<'h>,
    /// Extra invariants (none by default).
    pub extra: Extra,
    /// Whether `ioctl_sequence` checks that the VM's fds are closed (only meaningful when no
    /// other thread of the process opens or closes fds meanwhile).
    pub check_fds: bool,
}

impl<'h> Runner<'h> {
    /// A runner with a pool of a few VM shapes.
    pub fn new(host: &'h Host) -> Runner<'h> {
        Runner {
            host,
            pool: Pool::new(host, 4),
            extra: Extra::default(),
            check_fds: false,
        }
    }

    /// Enters a `state_entry` input.
    pub fn exec_state(&mut self, input: &state_entry::StateInput) -> Result<Exec, KvmError> {
        state_entry::exec_with(self.host, input, self.extra.state.as_deref())
    }

    /// Issues an `ioctl_sequence` on a new VM made for `case`.
    pub fn exec_calls(&mut self, case: &Case, calls: &[ioctl_seq::Call]) -> Result<Exec, KvmError> {
        ioctl_seq::exec_calls(
            self.host,
            case,
            calls,
            self.check_fds,
            self.extra.call.as_deref(),
        )
    }

    /// Runs an input (a case, a state or calls on a VM made for `case`) under `target`'s oracle.
    pub fn exec_input(
        &mut self,
        target: Target,
        case: &Case,
        input: &Input,
    ) -> Result<Exec, KvmError> {
        match input {
            Input::Case if target == Target::CaseParser => Ok(case_parser(
                case_to_toml(case).unwrap_or_default().as_bytes(),
            )),
            Input::Case => self.exec_case(target, case),
            Input::State(s) => self.exec_state(s),
            Input::Calls(c) => self.exec_calls(case, c),
        }
    }

    /// Reruns what a finding holds (its case, state or calls) under its target's oracle.
    pub fn exec_finding(&mut self, f: &Finding) -> Result<Exec, KvmError> {
        self.exec_input(f.target, &f.case, &f.input)
    }

    /// Replays every input of a finding file, in order.
    pub fn replay(&mut self, a: &artifact::Artifact) -> Vec<(String, Result<Exec, KvmError>)> {
        a.inputs()
            .into_iter()
            .map(|(case, input)| {
                let r = self.exec_input(a.target, &case, &input);
                (case.name, r)
            })
            .collect()
    }

    /// Shrinks a finding while it keeps its signature: the guest targets' programs with
    /// [`minimise::minimise`], a state's changes with [`state_entry::shrink`], a sequence's calls
    /// with [`ioctl_seq::shrink`]. The result's details are those of the shrunk input; targets
    /// with nothing to shrink (`case_parser`) come back unchanged. See [`Runner::shrink_verified`].
    pub fn shrink(&mut self, f: &Finding) -> Finding {
        self.shrink_verified(f).0
    }

    /// [`Runner::shrink`], and for the guest targets what checking the result on a fresh VM
    /// found. Their candidates run on this runner's pooled VMs, so a shrunk program can depend on
    /// what an earlier case left in the pool and not reproduce in `kvmconf repro`: the smallest
    /// candidate is run again by a new runner (a fresh VM, as a replay has), and if it does not
    /// reproduce there a shrinking step that does is kept (bisected), or the original input
    /// ([`minimise::verify_fresh`]). `None` for the other targets, whose inputs run on a new VM
    /// each time anyway.
    pub fn shrink_verified(&mut self, f: &Finding) -> (Finding, Option<minimise::Fresh>) {
        let sig = f.signature.clone();
        let target = f.target;
        let same = |x: Result<Exec, KvmError>| matches!(x, Ok(Exec { finding: Some(g), .. }) if g.signature == sig);
        let mut small = f.clone();
        let mut fresh = None;
        match (&f.input, target) {
            (Input::Case, Target::GuestVsInterp | Target::GuestEmulatedVsNative) => {
                let steps =
                    minimise::minimise_steps(&f.case, &mut |c| same(self.exec_case(target, c)));
                let (host, extra, check_fds) = (self.host, self.extra.clone(), self.check_fds);
                let (case, how) = minimise::verify_fresh(&f.case, &steps, &mut |c| {
                    let mut r = Runner {
                        host,
                        pool: Pool::new(host, 4),
                        extra: extra.clone(),
                        check_fds,
                    };
                    same(r.exec_case(target, c))
                });
                small.case = case;
                fresh = Some(how);
            }
            (Input::State(s), _) => {
                small.input = Input::State(Box::new(state_entry::shrink(s, &mut |c| {
                    same(self.exec_state(c))
                })));
            }
            (Input::Calls(calls), _) => {
                let case = f.case.clone();
                small.input = Input::Calls(ioctl_seq::shrink(calls, &mut |c| {
                    same(self.exec_calls(&case, c))
                }));
            }
            _ => return (small, None),
        }
        if let Ok(Exec {
            finding: Some(g), ..
        }) = self.exec_finding(&small)
            && g.signature == f.signature
        {
            small.details = g.details;
            if let (Input::Calls(_), Input::Calls(issued)) = (&small.input, g.input) {
                small.input = Input::Calls(issued);
            }
        }
        (small, fresh)
    }

    /// Runs one input of `target` built from `src`.
    pub fn exec_source(&mut self, target: Target, src: &mut dyn Source) -> Result<Exec, KvmError> {
        match target {
            Target::GuestVsInterp => self.guest_vs_interp(&gen_guest(src)),
            Target::GuestEmulatedVsNative => self.emulated_vs_native(&gen_native(src)),
            Target::StateEntry => self.exec_state(&state_entry::generate(src)),
            Target::CaseParser => Ok(case_parser(&gen_parser_input(src))),
            Target::IoctlSequence => {
                let mut bytes = vec![0u8; 512];
                for chunk in bytes.chunks_mut(8) {
                    let v = src.next_u64().to_le_bytes();
                    chunk.copy_from_slice(&v[..chunk.len()]);
                }
                let mut u = arbitrary::Unstructured::new(&bytes);
                match <ioctl_seq::Ops as arbitrary::Arbitrary>::arbitrary(&mut u) {
                    Ok(ops) => ioctl_seq::exec_checked(self.host, &ops, self.check_fds),
                    Err(_) => Ok(Exec {
                        rejected: true,
                        ..Exec::default()
                    }),
                }
            }
        }
    }

    /// Runs a case under the oracle of `target` (the guest targets only; others are rejected).
    pub fn exec_case(&mut self, target: Target, case: &Case) -> Result<Exec, KvmError> {
        match target {
            Target::GuestVsInterp => self.guest_vs_interp(case),
            Target::GuestEmulatedVsNative => self.emulated_vs_native(case),
            _ => Ok(Exec {
                rejected: true,
                ..Exec::default()
            }),
        }
    }
}

pub use crate::deviations::host_has;
pub use crate::oracle::compare::agree;
pub use crate::oracle::known::{
    classes_explain_paths, explained_by_known_classes, host_class_deviations,
    lzcnt_tzcnt_explain_interp, lzcnt_tzcnt_explain_paths,
};
pub use guest::{classify, data_as_mmio, gen_guest, gen_native, interpret_guest};
pub use parser::{case_parser, gen_parser_input};

/// The state_entry/ioctl_sequence deviation a PAT write with a reserved memory type shows.
pub const PAT_RESERVED: &str = "pvm-pat-reserved-type-accepted";

/// Opens the host for a fuzz worker, once per thread.
pub fn open_host() -> Result<Host, KvmError> {
    Host::open()
}

/// The source of the `index`-th input of a run seeded with `seed` (the same on every host).
pub fn source_for(seed: u64, index: u64) -> SplitMix {
    let mut s = SplitMix(seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    s.next_u64();
    s
}

/// KCOV: whether the host exposes kernel coverage, or why not (see `kvmconf_harness::kcov`).
pub fn kcov_status() -> Result<(), String> {
    kvmconf_harness::kcov::status()
}

/// A case as TOML that parses back to the same case (the artifact format).
pub fn case_to_toml(case: &Case) -> Result<String, String> {
    let text = toml::to_string(case).map_err(|e| e.to_string())?;
    match parse_cases("artifact.toml", &text) {
        Ok(back) if back.len() == 1 && back[0].case == *case => Ok(text),
        Ok(_) => Err("the TOML does not parse back to the same case".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmconf_guests::r#gen::DATA;
    use kvmconf_guests::interp::Machine;

    /// long64: mov eax,5; bswap eax; mov ebx,7; lzcnt ecx,ebx; add eax,ebx; hlt.
    fn lzcnt_and_bswap() -> Case {
        let code = vec![
            0xb8, 5, 0, 0, 0, 0x0f, 0xc8, 0xbb, 7, 0, 0, 0, 0xf3, 0x0f, 0xbd, 0xcb, 0x01, 0xd8,
            0xf4,
        ];
        Case::new("classes", Mode::Long64, kvmconf_guests::r#gen::CODE, code)
    }

    /// A fake KVM: the interpreter, with RSI flipped while an LZCNT is live and RDX flipped while
    /// a BSWAP is (when `bswap_too`).
    fn fake(bswap_too: bool) -> impl FnMut(&Case) -> Result<CaseResult, KvmError> {
        move |c: &Case| {
            let mut r = kvmconf_guests::interp::run(c);
            let live: Vec<_> = crate::differential::instructions(c)
                .iter()
                .map(|i| i.mnemonic())
                .collect();
            if live.contains(&iced_x86::Mnemonic::Lzcnt) {
                r.regs.rsi.0 ^= 1;
            }
            if bswap_too && live.contains(&iced_x86::Mnemonic::Bswap) {
                r.regs.rdx.0 ^= 1;
            }
            Ok(r)
        }
    }

    #[test]
    fn known_class_explains_a_mismatch_only_when_nothing_else_differs() {
        let c = lzcnt_and_bswap();
        let classes = vec![("dev-lzcnt".to_string(), "Lzcnt".to_string())];
        assert_eq!(
            explained_by_known_classes(&c, &classes, fake(false)).as_deref(),
            Some("dev-lzcnt")
        );
        // A second, unknown deviation (BSWAP) survives without the LZCNT: not explained.
        assert_eq!(explained_by_known_classes(&c, &classes, fake(true)), None);
        // No instruction of a known class in the program: not explained.
        let other = vec![("dev-tzcnt".to_string(), "Tzcnt".to_string())];
        assert_eq!(explained_by_known_classes(&c, &other, fake(false)), None);
    }

    /// long64: mov eax, 0x80000000; bsr ecx, eax; lzcnt edx, eax; cmova esi, eax; hlt. The BSR
    /// leaves CF undefined (SDM 2 BSR) and the LZCNT defines it again (SDM 2 LZCNT), so without
    /// the LZCNT the CMOVA reads an undefined flag.
    fn bsr_lzcnt_cmova() -> Case {
        let code = vec![
            0xb8, 0, 0, 0, 0x80, 0x0f, 0xbd, 0xc8, 0xf3, 0x0f, 0xbd, 0xd0, 0x0f, 0x47, 0xf0, 0xf4,
        ];
        Case::new("bsr_lzcnt", Mode::Long64, kvmconf_guests::r#gen::CODE, code)
    }

    /// A fake KVM that runs every LZCNT (F3 first) as BSR followed by `then` (CLC: CF cleared, or
    /// CMC: CF inverted), and flips RDI while an instruction `flip_with` names is live.
    fn lzcnt_as_bsr(
        then: u8,
        flip_with: Option<iced_x86::Mnemonic>,
    ) -> impl FnMut(&Case) -> Result<CaseResult, KvmError> {
        move |c: &Case| {
            let mut k = c.clone();
            let code = k
                .memory
                .iter_mut()
                .find(|m| m.addr.0 == kvmconf_guests::r#gen::CODE)
                .expect("code image");
            let live = crate::differential::instructions(c);
            for i in &live {
                let at = (i.ip() - kvmconf_guests::r#gen::CODE) as usize;
                let bytes = &mut code.hex.0[at..at + i.len()];
                if i.mnemonic() == iced_x86::Mnemonic::Lzcnt && bytes[0] == 0xf3 {
                    // Drop the F3 prefix (BSR is left) and append `then`.
                    bytes.rotate_left(1);
                    *bytes.last_mut().expect("not empty") = then;
                }
            }
            let mut r = kvmconf_guests::interp::run(&k);
            if live.iter().any(|i| Some(i.mnemonic()) == flip_with) {
                r.regs.rdi.0 ^= 1;
            }
            Ok(r)
        }
    }

    /// A fake KVM that runs every LZCNT as BSR (the rewrite model) and flips RDI while an
    /// instruction `flip_with` names is live.
    fn as_bsr(
        flip_with: Option<iced_x86::Mnemonic>,
    ) -> impl FnMut(&Case) -> Result<CaseResult, KvmError> {
        move |c: &Case| {
            let k = crate::oracle::code::lzcnt_tzcnt_as_bsr_bsf(c).unwrap_or_else(|| c.clone());
            let mut r = kvmconf_guests::interp::run(&k);
            if crate::differential::live_mnemonics(c)
                .iter()
                .any(|m| Some(*m) == flip_with)
            {
                r.regs.rdi.0 ^= 1;
            }
            Ok(r)
        }
    }

    /// long64: mov eax, 0x80000000; lzcnt edx, eax; adc esi, 0; hlt: the ADC reads the CF that
    /// LZCNT defines (SDM 2 LZCNT) and BSR leaves undefined (SDM 2 BSR).
    fn lzcnt_adc() -> Case {
        let code = vec![
            0xb8, 0, 0, 0, 0x80, 0xf3, 0x0f, 0xbd, 0xd0, 0x83, 0xd6, 0x00, 0xf4,
        ];
        Case::new("lzcnt_adc", Mode::Long64, kvmconf_guests::r#gen::CODE, code)
    }

    #[test]
    fn lzcnt_tzcnt_rewrite_keeps_length_and_operands_and_selects_bsr_bsf() {
        // lzcnt edx, eax; tzcnt ecx, [ebp+8] (prot32: SS is the default segment); hlt.
        let code = vec![0xf3, 0x0f, 0xbd, 0xd0, 0xf3, 0x0f, 0xbc, 0x4d, 0x08, 0xf4];
        let c = Case::new("rw", Mode::Prot32, kvmconf_guests::r#gen::CODE, code);
        let r = crate::oracle::code::lzcnt_tzcnt_as_bsr_bsf(&c).expect("has both");
        let (a, b) = (
            crate::oracle::code::instructions(&c),
            crate::oracle::code::instructions(&r),
        );
        assert_eq!(a.len(), b.len());
        let names: Vec<String> = b.iter().map(|i| format!("{:?}", i.mnemonic())).collect();
        assert_eq!(names, ["Bsr", "Bsf", "Hlt"]);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(
                (x.ip(), x.len(), x.op0_register()),
                (y.ip(), y.len(), y.op0_register())
            );
            assert_eq!(x.memory_segment(), y.memory_segment(), "{x} / {y}");
        }
        // The F3 became the override of the segment the operand uses: SS for [ebp+8].
        assert_eq!(r.memory[0].hex.0[4], 0x36);
        assert!(
            crate::oracle::code::lzcnt_tzcnt_as_bsr_bsf(&bsr_lzcnt_cmova_without_lzcnt()).is_none()
        );
    }

    fn bsr_lzcnt_cmova_without_lzcnt() -> Case {
        crate::oracle::code::nop_where(&bsr_lzcnt_cmova(), |i| {
            i.mnemonic() == iced_x86::Mnemonic::Lzcnt
        })
    }

    #[test]
    fn lzcnt_as_bsr_model_explains_kvm_only_when_nothing_else_differs() {
        let classes = vec![("dev-lzcnt".to_string(), "Lzcnt".to_string())];
        let c = lzcnt_and_bswap();
        let k = as_bsr(None)(&c).unwrap();
        assert_ne!(
            k,
            kvmconf_guests::interp::run(&c),
            "the model changes the result"
        );
        assert_eq!(
            lzcnt_tzcnt_explain_interp(&c, &k, &classes).as_deref(),
            Some("dev-lzcnt")
        );
        let mut other = k.clone();
        other.regs.rdi.0 ^= 1;
        assert_eq!(lzcnt_tzcnt_explain_interp(&c, &other, &classes), None);
        let none = vec![("dev-tzcnt".to_string(), "Tzcnt".to_string())];
        assert_eq!(lzcnt_tzcnt_explain_interp(&c, &k, &none), None);
        // An ADC after the LZCNT reads the CF BSR leaves undefined: the outcome is undefined under
        // the model, so the mismatch is the deviation's whatever KVM gives.
        let c = lzcnt_adc();
        assert!(!kvmconf_guests::interp::Machine::new(&c).run().tainted);
        let mut k = as_bsr(None)(&c).unwrap();
        k.regs.rsi.0 = 0x1234;
        assert_eq!(
            lzcnt_tzcnt_explain_interp(&c, &k, &classes).as_deref(),
            Some("dev-lzcnt")
        );
    }

    #[test]
    fn paths_differing_by_a_known_class_only_are_explained() {
        let classes = vec![("dev-lzcnt".to_string(), "Lzcnt".to_string())];
        let mut c = lzcnt_and_bswap();
        c.memory.push(kvmconf_guests::case::MemInit {
            addr: kvmconf_guests::Hex(DATA),
            hex: kvmconf_guests::num::HexBytes(vec![0; 16]),
        });
        // KVM's two paths through a fake: the emulated one (data as MMIO) runs LZCNT as BSR.
        let paths = |flip: Option<iced_x86::Mnemonic>| {
            move |x: &Case| {
                if x.mmio.is_empty() {
                    Ok(kvmconf_guests::interp::run(x))
                } else {
                    as_bsr(flip)(x)
                }
            }
        };
        let emu = data_as_mmio(&c).expect("a data image");
        let emulated = paths(None)(&emu).unwrap();
        assert_eq!(
            classes_explain_paths(&c, &classes, paths(None)).as_deref(),
            Some("dev-lzcnt")
        );
        assert_eq!(
            lzcnt_tzcnt_explain_paths(&c, &emulated, &classes, paths(None)).as_deref(),
            Some("dev-lzcnt")
        );
        // A second difference on the emulated path (BSWAP) is not explained either way.
        let emulated = paths(Some(iced_x86::Mnemonic::Bswap))(&emu).unwrap();
        assert_eq!(
            classes_explain_paths(&c, &classes, paths(Some(iced_x86::Mnemonic::Bswap))),
            None
        );
        assert_eq!(
            lzcnt_tzcnt_explain_paths(&c, &emulated, &classes, paths(None)),
            None
        );
    }

    #[test]
    fn a_known_class_whose_nop_leaves_scope_is_judged_with_kvms_observed_effect() {
        const CLC: u8 = 0xf8;
        const CMC: u8 = 0xf5;
        let c = bsr_lzcnt_cmova();
        let classes = vec![("dev-lzcnt".to_string(), "Lzcnt".to_string())];
        // The fake disagrees with the interpreter, and without the LZCNT the program reads an
        // undefined CF: the NOP residual cannot judge it.
        let k = lzcnt_as_bsr(CLC, None)(&c).unwrap();
        assert!(!crate::differential::agrees(&k, &Machine::new(&c).run()));
        let residual =
            crate::differential::nop_where(&c, |i| i.mnemonic() == iced_x86::Mnemonic::Lzcnt);
        assert!(crate::differential::predict(&residual, 1000).is_none());
        // With the fake's own LZCNT effect (BSR, CF cleared) substituted, nothing else differs.
        assert_eq!(
            explained_by_known_classes(&c, &classes, lzcnt_as_bsr(CLC, None)).as_deref(),
            Some("dev-lzcnt")
        );
        // A second, unknown deviation (in CMOVA) is not hidden by the substitution.
        assert_eq!(
            explained_by_known_classes(
                &c,
                &classes,
                lzcnt_as_bsr(CLC, Some(iced_x86::Mnemonic::Cmova))
            ),
            None
        );
        // When KVM's CF after the LZCNT follows the undefined CF before it, the CMOVA's outcome
        // depends on an undefined flag: out of scope, not explained.
        assert_eq!(
            explained_by_known_classes(&c, &classes, lzcnt_as_bsr(CMC, None)),
            None
        );
    }

    #[test]
    fn a_class_instruction_that_cannot_be_observed_is_interpreted_and_not_named() {
        // cmpxchg [0x4000], ecx (writes memory: not observable alone), then the BSR/LZCNT/CMOVA
        // program; both LZCNT and CMPXCHG are known classes.
        let mut code = vec![0x0f, 0xb1, 0x0c, 0x25, 0x00, 0x40, 0x00, 0x00];
        code.extend(&bsr_lzcnt_cmova().memory[0].hex.0);
        let mut c = Case::new(
            "cmpxchg_mem",
            Mode::Long64,
            kvmconf_guests::r#gen::CODE,
            code,
        );
        c.memory.push(kvmconf_guests::case::MemInit {
            addr: DATA.into(),
            hex: kvmconf_guests::num::HexBytes(vec![0; 16]),
        });
        c.validate().expect("a valid case");
        let classes = vec![
            ("dev-lzcnt".to_string(), "Lzcnt".to_string()),
            ("dev-cmpxchg".to_string(), "Cmpxchg".to_string()),
        ];
        // The fake runs the CMPXCHG as the interpreter does: explained by the LZCNT alone.
        assert_eq!(
            explained_by_known_classes(&c, &classes, lzcnt_as_bsr(0xf8, None)).as_deref(),
            Some("dev-lzcnt")
        );
        // Where KVM deviates at the interpreted CMPXCHG, nothing is explained.
        assert_eq!(
            explained_by_known_classes(
                &c,
                &classes,
                lzcnt_as_bsr(0xf8, Some(iced_x86::Mnemonic::Cmpxchg))
            ),
            None
        );
    }

    #[test]
    fn an_observed_class_instruction_reading_mmio_brings_its_read_into_the_trace() {
        // long64: mov eax, 0x80000000; bsr ecx, eax; lzcnt edx, [0x4000]; cmova esi, eax; hlt,
        // with 0x4000 an MMIO region holding 0x80 (LZCNT 24, BSR 7).
        let code = vec![
            0xb8, 0, 0, 0, 0x80, 0x0f, 0xbd, 0xc8, 0xf3, 0x0f, 0xbd, 0x14, 0x25, 0x00, 0x40, 0x00,
            0x00, 0x0f, 0x47, 0xf0, 0xf4,
        ];
        let mut c = Case::new(
            "lzcnt_mmio",
            Mode::Long64,
            kvmconf_guests::r#gen::CODE,
            code,
        );
        c.mmio.push(kvmconf_guests::case::MmioRegion {
            addr: DATA.into(),
            len: 0x1000.into(),
            hex: kvmconf_guests::num::HexBytes(vec![0x80, 0, 0, 0]),
        });
        c.validate().expect("a valid case");
        let k = lzcnt_as_bsr(0xf8, None)(&c).unwrap();
        assert_eq!(k.trace.len(), 1, "one MMIO read: {:?}", k.trace);
        assert!(!crate::differential::agrees(&k, &Machine::new(&c).run()));
        let classes = vec![("dev-lzcnt".to_string(), "Lzcnt".to_string())];
        assert_eq!(
            explained_by_known_classes(&c, &classes, lzcnt_as_bsr(0xf8, None)).as_deref(),
            Some("dev-lzcnt")
        );
        assert_eq!(
            explained_by_known_classes(
                &c,
                &classes,
                lzcnt_as_bsr(0xf8, Some(iced_x86::Mnemonic::Cmova))
            ),
            None
        );
    }

    /// `case`'s code with `mov dx, 0x510; mov edi, 0x4010; mov ecx, 3; rep insb` before its final
    /// HLT, three answers for port 0x510 and 0x4000 as MMIO.
    fn with_rep_insb(mut c: Case) -> Case {
        let code = &mut c.memory[0].hex.0;
        assert_eq!(code.pop(), Some(0xf4));
        code.extend([
            0x66, 0xba, 0x10, 0x05, 0xbf, 0x10, 0x40, 0, 0, 0xb9, 3, 0, 0, 0, 0xf3, 0x6c, 0xf4,
        ]);
        c.io_in = [0x11, 0x22, 0x33]
            .map(|v| kvmconf_guests::case::IoIn {
                port: 0x510.into(),
                value: v.into(),
            })
            .to_vec();
        c.mmio.push(kvmconf_guests::case::MmioRegion {
            addr: DATA.into(),
            len: 0x1000.into(),
            hex: kvmconf_guests::num::HexBytes(vec![]),
        });
        c.dump.push(kvmconf_guests::case::Dump {
            addr: DATA.into(),
            len: 0x20.into(),
        });
        c.validate().expect("a valid case");
        c
    }

    /// A fake KVM's REP INSB into MMIO: each run of byte reads, each followed by its MMIO write
    /// to the next address, becomes the reads and then one write of them all (`plus` added to
    /// its value).
    fn merge_rep_insb(trace: &[Event], plus: u64) -> Vec<Event> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < trace.len() {
            let mut n = 0;
            while let (Some(Event::IoIn(r)), Some(Event::MmioWrite(w))) =
                (trace.get(i + 2 * n), trace.get(i + 2 * n + 1))
            {
                let at = trace.get(i + 1).and_then(|e| match e {
                    Event::MmioWrite(f) => f.addr,
                    _ => None,
                });
                if r.size != 1
                    || w.value != r.value
                    || w.addr.map(|a| a.0) != at.map(|a| a.0 + n as u64)
                    || n == 8
                {
                    break;
                }
                n += 1;
            }
            if n < 2 {
                out.push(trace[i]);
                i += 1;
                continue;
            }
            let Event::MmioWrite(first) = trace[i + 1] else {
                unreachable!("checked above")
            };
            let mut v = 0u64;
            for k in 0..n {
                out.push(trace[i + 2 * k]);
                if let Event::IoIn(r) = trace[i + 2 * k] {
                    v |= r.value.0 << (8 * k);
                }
            }
            out.push(Event::mmio_write(
                first.addr.expect("mmio").0,
                n as u8,
                v + plus,
            ));
            i += 2 * n;
        }
        out
    }

    #[test]
    fn a_rep_ins_with_a_known_class_is_judged_by_kvms_modelled_ins() {
        let one_write = rep_ins::ONE_WRITE;
        let on_host = host_has(one_write);
        let ins_class = (rep_ins::REREADS.to_string(), "Ins".to_string());
        // The LZCNT NOPed leaves the program in scope (the residual check): KVM's LZCNT flips
        // RSI and its REP INSB makes one write.
        let c = with_rep_insb(lzcnt_and_bswap());
        let classes = vec![
            ("dev-lzcnt".to_string(), "Lzcnt".to_string()),
            ins_class.clone(),
        ];
        let kvm = |bswap_too: bool, plus: u64| {
            let mut inner = fake(bswap_too);
            move |c: &Case| {
                let mut r = inner(c)?;
                r.trace = merge_rep_insb(&r.trace, plus);
                Ok(r)
            }
        };
        let want = on_host.then(|| format!("dev-lzcnt,{one_write}"));
        assert_eq!(
            explained_by_known_classes(&c, &classes, kvm(false, 0)),
            want
        );
        // Something else differs too (the BSWAP), or the merged write holds another value: the
        // INS is not NOPed as a class, so neither is explained.
        assert_eq!(explained_by_known_classes(&c, &classes, kvm(true, 0)), None);
        assert_eq!(
            explained_by_known_classes(&c, &classes, kvm(false, 1)),
            None
        );
        // Without the LZCNT the CMOVA reads an undefined flag (the observed-effect check).
        let c = with_rep_insb(bsr_lzcnt_cmova());
        let kvm = |flip: Option<iced_x86::Mnemonic>, plus: u64| {
            let mut inner = lzcnt_as_bsr(0xf8, flip);
            move |c: &Case| {
                let mut r = inner(c)?;
                r.trace = merge_rep_insb(&r.trace, plus);
                Ok(r)
            }
        };
        assert_eq!(explained_by_known_classes(&c, &classes, kvm(None, 0)), want);
        assert_eq!(
            explained_by_known_classes(&c, &classes, kvm(Some(iced_x86::Mnemonic::Cmova), 0)),
            None
        );
        assert_eq!(explained_by_known_classes(&c, &classes, kvm(None, 1)), None);
    }

    #[test]
    fn a_rep_ins_alone_is_known_only_when_kvms_model_explains_all_of_it() {
        let c = with_rep_insb(Case::new(
            "rep_insb",
            Mode::Long64,
            kvmconf_guests::r#gen::CODE,
            vec![0xf4],
        ));
        let sdm = kvmconf_guests::interp::run(&c);
        let mut k = sdm.clone();
        k.trace = merge_rep_insb(&sdm.trace, 0);
        assert_ne!(k.trace, sdm.trace, "the fake merges the writes");
        let want = host_has(rep_ins::ONE_WRITE).then(|| rep_ins::ONE_WRITE.to_string());
        let known = |k: &CaseResult| classify(Target::GuestVsInterp, &c, k, &sdm, &[]).1;
        assert_eq!(known(&k), want);
        k.regs.rbp.0 ^= 1;
        assert_eq!(known(&k), None);
        assert_eq!(known(&sdm), None);
    }

    #[test]
    fn refused_instructions_count_as_a_known_class_at_cpl0_on_the_refusing_host() {
        // mov eax, 5; int 4; hlt — a fake KVM flips RSI while the INT is live.
        let mut c = Case::new(
            "int4",
            Mode::Long64,
            kvmconf_guests::r#gen::CODE,
            vec![0xb8, 5, 0, 0, 0, 0xcd, 0x04, 0xf4],
        );
        let fake = |c: &Case| {
            let mut r = kvmconf_guests::interp::run(c);
            if crate::differential::instructions(c)
                .iter()
                .any(|i| i.mnemonic() == iced_x86::Mnemonic::Int)
            {
                r.regs.rsi.0 ^= 1;
            }
            Ok(r)
        };
        let got = explained_by_known_classes(&c, &[], fake);
        if host_has("kvm-pvm-emulator-refuses") {
            assert_eq!(got.as_deref(), Some("kvm-pvm-emulator-refuses"));
        } else {
            assert_eq!(got, None);
        }
        // At CPL3 the emulator's refusals do not apply.
        c.cpl = 3;
        assert_eq!(explained_by_known_classes(&c, &[], fake), None);
    }

    #[test]
    fn a_cpl3_timeout_is_the_split_lock_deviation_only_when_an_xchg_splits_a_line() {
        // long64 CPL3: mov ebx, 0x4000; xchg [rbx+OFF], eax; hlt (data in RAM).
        let case = |off: u8| {
            let code = vec![0xbb, 0, 0x40, 0, 0, 0x87, 0x43, off, 0xf4];
            let mut c = Case::new("xchg", Mode::Long64, kvmconf_guests::r#gen::CODE, code);
            c.cpl = 3;
            c.memory.push(kvmconf_guests::case::MemInit {
                addr: DATA.into(),
                hex: kvmconf_guests::num::HexBytes(vec![0; 0x80]),
            });
            c.validate().expect("a valid case");
            c
        };
        let (split, aligned) = (case(0x3e), case(0x3c));
        assert!(
            crate::oracle::runs_split_locked_xchg(&split),
            "0x403e..0x4041 crosses 0x4040"
        );
        assert!(!crate::oracle::runs_split_locked_xchg(&aligned));
        let reference = kvmconf_guests::interp::run(&split);
        let mut kvm = reference.clone();
        kvm.exit = Exit::Timeout { ms: 1000 };
        let (sig, known) = classify(Target::GuestVsInterp, &split, &kvm, &reference, &[]);
        assert_eq!(sig, "guest_vs_interp:long64:cpl3:split-lock-timeout");
        assert_eq!(known.is_some(), host_has("pvm-cpl3-xchg-timeout"));
        let (sig, known) = classify(Target::GuestVsInterp, &aligned, &kvm, &reference, &[]);
        assert!(!sig.contains("split-lock"), "{sig}");
        assert_eq!(known, None);
    }

    #[test]
    fn named_ids_exist_in_the_deviations_file() {
        let devs = crate::deviations::known();
        for id in [PAT_RESERVED, rep_ins::ONE_WRITE, rep_ins::REREADS] {
            assert!(
                devs.iter().any(|d| d.id == id),
                "{id} not in cases/deviations.toml"
            );
        }
    }

    #[test]
    fn generated_cases_round_trip_through_toml() {
        for i in 0..50 {
            let c = gen_guest(&mut source_for(3, i));
            case_to_toml(&c).expect("TOML round trip");
        }
    }

    #[test]
    fn target_names_round_trip() {
        for t in Target::ALL {
            assert_eq!(Target::from_name(t.name()), Some(t));
        }
    }

    #[test]
    fn case_parser_accepts_generated_text_and_survives_edits() {
        for i in 0..300 {
            let bytes = gen_parser_input(&mut source_for(7, i));
            let e = case_parser(&bytes);
            assert!(e.finding.is_none(), "{:?}", e.finding);
        }
    }

    #[test]
    fn data_as_mmio_moves_the_data_image() {
        let c = gen_native(&mut source_for(1, 1));
        let m = data_as_mmio(&c).expect("generated cases have a data image");
        assert_eq!(m.mmio.len(), 1);
        assert_eq!(m.mmio[0].addr.0, DATA);
        assert!(m.memory.iter().all(|x| x.addr.0 != DATA));
        m.validate().expect("still valid");
        // A short image is padded with zeros to its page's end, as the RAM it replaces reads.
        let mut short = c.clone();
        let d = short.memory.iter_mut().find(|x| x.addr.0 == DATA).unwrap();
        d.hex.0 = vec![0xab; 0x10];
        let m = data_as_mmio(&short).unwrap();
        assert_eq!(m.mmio[0].len.0, 0x1000);
        assert_eq!(
            &m.mmio[0].hex.0[..0x11],
            &[[0xab; 0x10].as_slice(), &[0]].concat()[..]
        );
        // Up to the next image only.
        short.memory.push(kvmconf_guests::case::MemInit {
            addr: kvmconf_guests::Hex(DATA + 0x800),
            hex: kvmconf_guests::num::HexBytes(vec![1; 8]),
        });
        assert_eq!(data_as_mmio(&short).unwrap().mmio[0].len.0, 0x800);
    }
}

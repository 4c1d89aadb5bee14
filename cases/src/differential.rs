//! The differential tests' driver over the oracle core (`crate::oracle`): which generated
//! programs each variant draws (real16, prot32, long64 at CPL0 and CPL3, MMIO data), how they run
//! on KVM against the interpreter and against each other, and the tally of a run. Comparison,
//! shrinking, the culprit and the match against `cases/deviations.toml` are the oracle's; the
//! names it re-exports below keep the older paths working.

use crate::deviations::{Deviation, Verdict};
use crate::oracle::compare::undefined_masked;
use kvmconf_guests::case::{Case, MemInit, Mode};
use kvmconf_guests::r#gen::source::SplitMix;
use kvmconf_guests::r#gen::{Options, generate};
use kvmconf_guests::interp;
use kvmconf_guests::result::{CaseResult, FieldDiff, diff};
use kvmconf_harness::fingerprint::Fingerprint;
use kvmconf_harness::{Host, KvmError, Pool};
use proptest::strategy::{BoxedStrategy, Strategy};
use proptest::test_runner::{
    Config, FileFailurePersistence, RngAlgorithm, TestCaseError, TestRng, TestRunner,
};
use std::cell::RefCell;
use std::collections::BTreeMap;

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

pub use crate::oracle::code::{instructions, is_live, live_mnemonics, nop_where};
pub use crate::oracle::compare::{agrees, compare, compare_runs};
pub use crate::oracle::explain::{
    Mismatch, classify, explain, minimise_mismatch, refused_mnemonic,
};
pub use crate::oracle::predict::{predict, predict_observed, predict_observed_by};
pub use crate::oracle::refusals::{REFUSALS_FILE, Refusal, refusals};
pub use crate::oracle::shrink::{focus, minimise};

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
    let mut kvm = pool.borrow_mut().run(case)?;
    let (model, undefined) = interp::run_with_undefined(case);
    if diff(&kvm, &model, &undefined_masked(undefined)).is_empty() {
        return Ok(vec![]);
    }
    let longer = crate::oracle::predict::with_deadline_for_exits(case, &kvm, &model);
    let case = match &longer {
        Some(c) => {
            kvm = pool.borrow_mut().run(c)?;
            if compare(&kvm, c).is_empty() {
                return Ok(vec![]);
            }
            c
        }
        None => case,
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::Culprit;
    use crate::oracle::explain::culprit;
    use iced_x86::Mnemonic;
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

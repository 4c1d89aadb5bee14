//! `kvmconf bench`: cases/s for a trivial case (a few instructions, one OUT, HLT), measured in one
//! run four ways — harness fresh, harness pooled, raw kvm-ioctls fresh, raw reuse — in interleaved
//! rounds, reported as medians with the harness/raw ratios. The differential loop (generate a
//! program, run it on KVM, run it in the interpreter, compare) is measured in the same rounds,
//! against the pooled rate for the same generated programs without the interpreter: in batches
//! (`differential::compare_batch`, as the library's loops run) and one program at a time. The
//! three generated-program loops alternate a batch at a time, and each ratio is the median of the
//! rounds' ratios, so a drift in the host's speed hits both sides of a ratio alike.

use crate::common::{EXIT_FAIL, EXIT_HARNESS, EXIT_OK, open_host};
use kvmconf_cases::differential::{BATCH, compare, compare_batch};
use kvmconf_guests::asm::assemble;
use kvmconf_guests::case::{Case, Mode};
use kvmconf_guests::r#gen::case_from_seed;
use kvmconf_guests::layout::GuestModel;
use kvmconf_harness::{Pool, baseline, run_fresh};
use serde::Serialize;
use std::time::Instant;

/// Arguments of `kvmconf bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
    /// Interleaved rounds (the median is reported).
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Cases per round for the reuse loops (fresh loops run a tenth as many).
    #[arg(long, default_value_t = 4000)]
    cases: u64,
    /// CPU mode of the trivial case.
    #[arg(long, default_value = "long64", value_parser = ["real16", "prot32", "long64"])]
    mode: String,
}

/// The figures `kvmconf bench` prints.
#[derive(Serialize)]
pub struct Figures {
    mode: String,
    rounds: u32,
    harness_fresh_cases_per_s: f64,
    harness_pooled_cases_per_s: f64,
    raw_fresh_cases_per_s: f64,
    raw_reuse_cases_per_s: f64,
    raw_minimal_reuse_cases_per_s: f64,
    pooled_over_raw_reuse: f64,
    fresh_over_raw_fresh: f64,
    pooled_over_raw_minimal: f64,
    /// Generated programs/s on the pool alone (pre-generated, KVM only).
    generated_pooled_cases_per_s: f64,
    /// Generated programs/s through generate + KVM + interpreter + compare, in batches.
    differential_cases_per_s: f64,
    /// Differential over pooled rate, the median of the rounds' ratios (target >= 0.5).
    differential_over_pooled: f64,
    /// Each round's differential over pooled ratio, batched (the spread shows the host's drift).
    differential_over_pooled_rounds: Vec<f64>,
    /// The same loop one program at a time (generate, KVM, interpreter, compare, next).
    differential_interleaved_cases_per_s: f64,
    /// The same for the loop one program at a time.
    differential_interleaved_over_pooled: f64,
    /// Harness pooled over the raw regs+sregs-only loop, the median of the rounds' ratios.
    pooled_reset_over_raw_regs_sregs: f64,
    /// Each round's pooled over raw regs+sregs-only ratio.
    pooled_reset_over_raw_regs_sregs_rounds: Vec<f64>,
    /// Execs/s of the `kvmconf fuzz --target guest_vs_interp` loop (one worker, no minimising).
    fuzz_guest_vs_interp_cases_per_s: f64,
    /// Execs/s of `Pool::run` alone on the same generated programs.
    fuzz_pooled_cases_per_s: f64,
    /// Fuzz loop over KVM-only pooled rate on the same programs, the median of the rounds' ratios.
    fuzz_guest_vs_interp_over_pooled: f64,
    /// Each round's fuzz over pooled ratio.
    fuzz_guest_vs_interp_over_pooled_rounds: Vec<f64>,
}

fn trivial_case(mode: Mode) -> Case {
    let code = assemble(mode.bitness(), 0x1000, |a| {
        use iced_x86::code_asm::*;
        a.mov(eax, 0x2au32)?;
        a.add(eax, 1u32)?;
        a.out(0xf1, al)?;
        a.hlt()
    })
    .expect("the trivial case assembles");
    let mut c = Case::new("bench", mode, 0x1000, code);
    c.regs.rsp = Some(0x8000.into());
    c
}

/// Why a measurement stopped: the exit code ([`EXIT_FAIL`] for a case that did not end as
/// expected, [`EXIT_HARNESS`] for a harness error) and what happened.
type Failure = (u8, String);

/// A harness error as a [`Failure`].
fn harness(e: impl std::fmt::Display) -> Failure {
    (EXIT_HARNESS, e.to_string())
}

/// Per-round ratios for the human output.
fn fmt_rounds(v: &[f64]) -> String {
    v.iter()
        .map(|r| format!("{r:.2}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn rate(n: u64, f: impl FnOnce() -> Result<(), Failure>) -> Result<f64, Failure> {
    Ok(n as f64 / secs(f)?)
}

fn secs(f: impl FnOnce() -> Result<(), Failure>) -> Result<f64, Failure> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

/// Runs `kvmconf bench`.
pub fn main(a: BenchArgs) -> u8 {
    let host = match open_host("bench") {
        Ok(h) => h,
        Err(code) => return code,
    };
    let mode = match a.mode.as_str() {
        "real16" => Mode::Real16,
        "prot32" => Mode::Prot32,
        _ => Mode::Long64,
    };
    let case = trivial_case(mode);
    let model = GuestModel::build(&case);
    let (n, nf) = (a.cases.max(10), (a.cases / 10).max(10));
    let kvm = host.kvm();
    let cpuid = host.supported_cpuid();
    let mut pool = Pool::new(&host, 1);
    let mut cols: [Vec<f64>; 10] = Default::default();
    // Per round: differential over pooled, batched and one at a time; pooled over the raw
    // regs+sregs floor; the fuzz loop over pooled.
    let mut ratios: [Vec<f64>; 4] = Default::default();
    let ng = (a.cases / 4).max(10);
    let nz = (a.cases / 2).max(10);
    let check = |r: &kvmconf_guests::CaseResult| -> Result<(), Failure> {
        if r.exit != kvmconf_guests::Exit::Hlt || r.trace.len() != 1 {
            return Err((
                EXIT_FAIL,
                format!("the trivial case did not end as expected: {r:?}"),
            ));
        }
        Ok(())
    };
    let rounds = a.rounds.max(1);
    for round in 0..rounds {
        let res: Result<(), Failure> = (|| {
            cols[0].push(rate(nf, || {
                for _ in 0..nf {
                    check(&run_fresh(&host, &case).map_err(harness)?)?;
                }
                Ok(())
            })?);
            cols[1].push(rate(n, || {
                for _ in 0..n {
                    check(&pool.run(&case).map_err(harness)?)?;
                }
                Ok(())
            })?);
            cols[2].push(rate(nf, || {
                baseline::fresh_loop(kvm, cpuid, &model, nf)
                    .map(drop)
                    .map_err(harness)
            })?);
            cols[3].push(rate(n, || {
                baseline::reuse_loop(kvm, cpuid, &model, n)
                    .map(drop)
                    .map_err(harness)
            })?);
            cols[4].push(rate(n, || {
                baseline::minimal_reuse_loop(kvm, cpuid, &model, n)
                    .map(drop)
                    .map_err(harness)
            })?);
            // The generated programs three ways, interleaved a batch at a time so that all three
            // see the same host (its speed drifts within a round): KVM only on the pool (the
            // programs generated beforehand, untimed), the batched differential loop, and the
            // loop one program at a time. Which goes first rotates from batch to batch.
            let seed = u64::from(round);
            let (mut t_pooled, mut t_batched, mut t_single) = (0.0, 0.0, 0.0);
            let mut i = 0;
            while i < ng {
                let end = (i + BATCH as u64).min(ng);
                for k in 0..3 {
                    match (k + i / BATCH as u64) % 3 {
                        0 => {
                            let pre: Vec<Case> =
                                (i..end).map(|j| case_from_seed(mode, seed, j)).collect();
                            t_pooled += secs(|| {
                                for c in &pre {
                                    pool.run(c).map_err(harness)?;
                                }
                                Ok(())
                            })?;
                        }
                        1 => {
                            t_batched += secs(|| {
                                let batch: Vec<Case> =
                                    (i..end).map(|j| case_from_seed(mode, seed, j)).collect();
                                std::hint::black_box(
                                    compare_batch(&mut pool, &batch).map_err(harness)?,
                                );
                                Ok(())
                            })?;
                        }
                        _ => {
                            t_single += secs(|| {
                                for j in i..end {
                                    let c = case_from_seed(mode, seed, j);
                                    let r = pool.run(&c).map_err(harness)?;
                                    std::hint::black_box(compare(&r, &c));
                                }
                                Ok(())
                            })?;
                        }
                    }
                }
                i = end;
            }
            let n = ng as f64;
            cols[5].push(n / t_pooled);
            cols[6].push(n / t_batched);
            cols[7].push(n / t_single);
            ratios[0].push(t_pooled / t_batched);
            ratios[1].push(t_pooled / t_single);
            let (hp, rm) = (cols[1][cols[1].len() - 1], cols[4][cols[4].len() - 1]);
            ratios[2].push(hp / rm);
            // The fuzz loop and the pool alone on the same generated programs, alternating
            // which goes first.
            let (t_fuzz, t_fpool) =
                crate::fuzz::bench::guest_vs_interp_round(&host, seed, nz, round % 2 == 0)
                    .map_err(|e| (EXIT_HARNESS, e))?;
            cols[8].push(nz as f64 / t_fuzz);
            cols[9].push(nz as f64 / t_fpool);
            ratios[3].push(t_fpool / t_fuzz);
            Ok(())
        })();
        if let Err((code, e)) = res {
            eprintln!("kvmconf bench: {e}");
            return code;
        }
        if !a.json {
            eprintln!("round {}/{rounds} done", round + 1);
        }
    }
    let [hf, hp, rf, rr, rm, gp, dl, di, fz, fp] = cols.map(median);
    let rounds_ratios = ratios[0].clone();
    let reset_rounds = ratios[2].clone();
    let fuzz_rounds = ratios[3].clone();
    let [dl_ratio, di_ratio, reset_ratio, fuzz_ratio] = ratios.map(median);
    let f = Figures {
        mode: mode.name().into(),
        rounds,
        harness_fresh_cases_per_s: hf,
        harness_pooled_cases_per_s: hp,
        raw_fresh_cases_per_s: rf,
        raw_reuse_cases_per_s: rr,
        raw_minimal_reuse_cases_per_s: rm,
        pooled_over_raw_reuse: hp / rr,
        fresh_over_raw_fresh: hf / rf,
        pooled_over_raw_minimal: hp / rm,
        generated_pooled_cases_per_s: gp,
        differential_cases_per_s: dl,
        differential_over_pooled: dl_ratio,
        differential_over_pooled_rounds: rounds_ratios,
        differential_interleaved_cases_per_s: di,
        differential_interleaved_over_pooled: di_ratio,
        pooled_reset_over_raw_regs_sregs: reset_ratio,
        pooled_reset_over_raw_regs_sregs_rounds: reset_rounds,
        fuzz_guest_vs_interp_cases_per_s: fz,
        fuzz_pooled_cases_per_s: fp,
        fuzz_guest_vs_interp_over_pooled: fuzz_ratio,
        fuzz_guest_vs_interp_over_pooled_rounds: fuzz_rounds,
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&f).expect("figures serialize")
        );
    } else {
        println!(
            "kvmconf bench: trivial {} case (mov, add, out, hlt), median of {rounds} interleaved rounds",
            f.mode
        );
        println!("  harness, fresh VM per case   {:>10.0} cases/s", hf);
        println!("  raw kvm-ioctls, fresh VM     {:>10.0} cases/s", rf);
        println!("  harness, pooled VM           {:>10.0} cases/s", hp);
        println!(
            "  raw kvm-ioctls, reused VM    {:>10.0} cases/s  (same reset ioctls as the pool)",
            rr
        );
        println!(
            "  raw, regs+sregs only         {:>10.0} cases/s  (floor: no reset of other state)",
            rm
        );
        println!(
            "  pooled / raw reuse           {:>10.2}   (target >= 0.8)",
            f.pooled_over_raw_reuse
        );
        println!(
            "  fresh / raw fresh            {:>10.2}   (target >= 0.9)",
            f.fresh_over_raw_fresh
        );
        println!(
            "  pooled / raw floor           {:>10.2}   (ratio of medians)",
            f.pooled_over_raw_minimal
        );
        println!(
            "  pooled reset / raw regs+sregs{:>10.2}   (median of the rounds' ratios; target >= 0.8)",
            f.pooled_reset_over_raw_regs_sregs
        );
        println!(
            "    each round                 {:>10}",
            fmt_rounds(&f.pooled_reset_over_raw_regs_sregs_rounds)
        );
        println!(
            "  generated programs, pooled   {:>10.0} cases/s  (KVM only, {ng} a round, alternating with the loops below)",
            gp
        );
        println!(
            "  differential loop            {:>10.0} cases/s  (generate + KVM + interpreter + compare, batches of {BATCH})",
            dl
        );
        println!(
            "  differential / pooled        {:>10.2}   (median of the rounds' ratios; target >= 0.5)",
            f.differential_over_pooled
        );
        println!(
            "    each round                 {:>10}",
            fmt_rounds(&f.differential_over_pooled_rounds)
        );
        println!(
            "  differential, one at a time  {:>10.0} cases/s  ({:.2} of pooled)",
            di, f.differential_interleaved_over_pooled
        );
        println!(
            "  fuzz guest_vs_interp         {:>10.0} cases/s  (kvmconf fuzz loop, 1 worker, {nz} inputs a round)",
            fz
        );
        println!(
            "  the same programs, pooled    {:>10.0} cases/s  (KVM only)",
            fp
        );
        println!(
            "  fuzz / pooled                {:>10.2}   (median of the rounds' ratios; target >= 0.9)",
            f.fuzz_guest_vs_interp_over_pooled
        );
        println!(
            "    each round                 {:>10}",
            fmt_rounds(&f.fuzz_guest_vs_interp_over_pooled_rounds)
        );
    }
    EXIT_OK
}

//! Where the differential loop's time goes: generate, GuestModel, interpret, diff (release build).
use kvmconf_guests::case::Mode;
use kvmconf_guests::r#gen::case_from_seed;
use kvmconf_guests::interp;
use kvmconf_guests::layout::GuestModel;
use kvmconf_guests::result::{DiffMask, diff};
use std::time::Instant;

fn main() {
    let n = 1000;
    // Generated and dropped one at a time, as the differential loop does (collecting them first
    // would also time the page faults of a fresh heap).
    let t = Instant::now();
    for i in 0..n {
        std::hint::black_box(case_from_seed(Mode::Long64, 1, i));
    }
    println!(
        "generate   {:>8.1} us  (each case dropped)",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let t = Instant::now();
    let cases: Vec<_> = (0..n).map(|i| case_from_seed(Mode::Long64, 1, i)).collect();
    println!(
        "generate   {:>8.1} us  (all kept)",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let t = Instant::now();
    for c in &cases {
        std::hint::black_box(GuestModel::build(c));
    }
    println!(
        "model      {:>8.1} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let t = Instant::now();
    for c in &cases {
        std::hint::black_box(interp::Machine::new(c));
    }
    println!(
        "machine    {:>8.1} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let t = Instant::now();
    let steps: u64 = cases
        .iter()
        .map(|c| interp::Machine::new(c).run().instructions)
        .sum();
    println!(
        "run        {:>8.1} us  ({:.1} instructions a program, {:.1}M instructions/s incl. set-up)",
        t.elapsed().as_secs_f64() * 1e6 / n as f64,
        steps as f64 / n as f64,
        steps as f64 / t.elapsed().as_secs_f64() / 1e6
    );
    let t = Instant::now();
    let rs: Vec<_> = cases.iter().map(interp::run_with_undefined).collect();
    println!(
        "interp     {:>8.1} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let t = Instant::now();
    for (r, _) in &rs {
        std::hint::black_box(diff(r, &r.clone(), &DiffMask::default()));
    }
    println!(
        "diff       {:>8.1} us  (equal results)",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let t = Instant::now();
    for (r, _) in &rs {
        let mut o = r.clone();
        o.regs.rax.0 ^= 1;
        if let Some(m) = o.memory.first_mut() {
            m.hex.0[17] ^= 1;
        }
        std::hint::black_box(diff(r, &o, &DiffMask::default()));
    }
    println!(
        "diff       {:>8.1} us  (rax and one dumped byte differ)",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
}

//! Fingerprints the generator's output (every case field, code bytes included) over a fixed set of
//! seeds and options, so a change meant to make the generator faster can show it changed nothing:
//! `cargo run --release -p kvmconf-guests --example gen_hash -- [COUNT]`.
use kvmconf_guests::case::Mode;
use kvmconf_guests::r#gen::source::SplitMix;
use kvmconf_guests::r#gen::{Options, case_from_seed, generate};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Instant;

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map_or(30_000, |s| s.parse().expect("COUNT is a number"));
    let mut h = DefaultHasher::new();
    let t = Instant::now();
    let mut programs = 0u64;
    for mode in [Mode::Real16, Mode::Prot32, Mode::Long64] {
        for i in 0..n {
            let c = case_from_seed(mode, 1, i);
            serde_json::to_string(&c)
                .expect("case serialises")
                .hash(&mut h);
            programs += 1;
        }
        // The fuzzer's shapes: data as MMIO, no stubs, long programs.
        for i in 0..n / 3 {
            let mut src = SplitMix(i ^ 0x5eed);
            let opts = Options {
                mode,
                stubs: i % 2 == 0,
                data_mmio: i % 3 == 0,
                len: 1 + (i % 60) as usize,
            };
            let c = generate(&opts, &mut src, "h");
            serde_json::to_string(&c)
                .expect("case serialises")
                .hash(&mut h);
            programs += 1;
        }
    }
    println!(
        "{programs} programs, hash {:016x} ({:.1} s)",
        h.finish(),
        t.elapsed().as_secs_f64()
    );
}

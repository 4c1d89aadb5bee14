//! One hash over the interpreter's full outcome on 60,000 generated programs, to prove an interpreter
//! change kept every result bit-identical: `cargo run --release --example interp_hash [COUNT]`.
//!
//! Six sets of COUNT / 6 programs each (default COUNT 60,000): the fixed-seed sets for real16,
//! prot32 and long64, a long64 set at CPL3, long programs (48–197 instructions, modes in turn, half without stubs), and
//! programs whose data region is MMIO (modes in turn). Each run's result JSON, undefined-flag mask, taint bit and instruction count feed one
//! FNV-1a hash; equal hashes before and after a change mean equal outcomes on every program.
use kvmconf_guests::case::{Case, Mode};
use kvmconf_guests::r#gen::{Options, case_from_seed, generate, source::SplitMix};
use kvmconf_guests::interp::Machine;
use std::collections::BTreeMap;

const SEED: u64 = 0x006b_766d_636f_6e66;

/// 64-bit FNV-1a.
struct Fnv(u64);

impl Fnv {
    fn eat(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

fn cases(set: u32, n: u64) -> impl Iterator<Item = Case> {
    (0..n).map(move |i| match set {
        0 => case_from_seed(Mode::Real16, SEED, i),
        1 => case_from_seed(Mode::Prot32, SEED, i),
        2 => case_from_seed(Mode::Long64, SEED, i),
        3 => {
            let mut c = case_from_seed(Mode::Long64, SEED ^ 3, i);
            c.cpl = 3;
            c
        }
        4 => {
            let mode = [Mode::Real16, Mode::Prot32, Mode::Long64][(i % 3) as usize];
            let o = Options {
                stubs: i % 2 == 0,
                len: 48 + (i % 150) as usize,
                ..Options::new(mode)
            };
            let mut src = SplitMix(SEED ^ 4 ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            generate(&o, &mut src, &format!("long-{}-{i}", mode.name()))
        }
        _ => {
            let mode = [Mode::Real16, Mode::Prot32, Mode::Long64][(i % 3) as usize];
            let o = Options {
                data_mmio: true,
                stubs: i % 4 != 0,
                len: 4 + (i % 40) as usize,
                ..Options::new(mode)
            };
            let mut src = SplitMix(SEED ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            generate(&o, &mut src, &format!("mmio-{}-{i}", mode.name()))
        }
    })
}

fn main() {
    let count: u64 = std::env::args()
        .nth(1)
        .map_or(60_000, |s| s.parse().expect("COUNT is a number"));
    let mut all = Fnv(0xcbf2_9ce4_8422_2325);
    let mut insns = 0u64;
    for set in 0..6 {
        let mut h = Fnv(0xcbf2_9ce4_8422_2325);
        let mut exits: BTreeMap<&str, u64> = BTreeMap::new();
        for c in cases(set, count / 6) {
            let o = Machine::new(&c).run();
            let json = serde_json::to_vec(&o.result).expect("results serialize");
            h.eat(&json);
            h.eat(&o.undefined.to_le_bytes());
            h.eat(&[u8::from(o.tainted)]);
            h.eat(&o.instructions.to_le_bytes());
            insns += o.instructions;
            *exits.entry(o.result.exit.kind()).or_default() += 1;
        }
        println!("set {set}: {:016x} {exits:?}", h.0);
        all.eat(&h.0.to_le_bytes());
    }
    println!("{insns} instructions");
    println!("hash {:016x}", all.0);
}

//! Runs the fixed-seed set in the interpreter and prints exit kinds, slow cases and unsupported
//! ones: `cargo run --release --example gen_scan -- SEED COUNT`.
use kvmconf_guests::case::Mode;
use kvmconf_guests::r#gen::case_from_seed;
use kvmconf_guests::interp::Machine;
use std::collections::BTreeMap;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let seed: u64 = a.get(1).map_or(1, |s| s.parse().unwrap());
    let n: u64 = a.get(2).map_or(1000, |s| s.parse().unwrap());
    let mut kinds = BTreeMap::new();
    for mode in [Mode::Real16, Mode::Prot32, Mode::Long64] {
        for i in 0..n {
            let c = case_from_seed(mode, seed, i);
            let o = Machine::new(&c).run();
            let k = o.result.exit.kind();
            *kinds.entry((mode.name(), k)).or_insert(0u64) += 1;
            if o.instructions > 10_000 || k == "unsupported_instruction" || o.tainted {
                println!(
                    "{} {} insns={} tainted={} {:?}",
                    mode.name(),
                    i,
                    o.instructions,
                    o.tainted,
                    o.result.exit
                );
            }
        }
    }
    println!("{kinds:?}");
}

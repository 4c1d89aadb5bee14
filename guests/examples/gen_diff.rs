//! Differential helper against `kvmconf exec`:
//! `gen_diff write MODE SEED COUNT [cpl3|mmio]... > cases.jsonl` writes a fixed-seed set;
//! `gen_diff compare cases.jsonl results.jsonl` runs the interpreter and prints every mismatch
//! (undefined flags masked) with the case JSON.
use kvmconf_guests::case::{Case, Mode};
use kvmconf_guests::r#gen::{Options, case_from_seed, generate, source::SplitMix};
use kvmconf_guests::interp::Machine;
use kvmconf_guests::result::{CaseResult, DiffMask, diff};
use std::collections::BTreeMap;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    match a[1].as_str() {
        "write" => {
            let mode = match a[2].as_str() {
                "real16" => Mode::Real16,
                "prot32" => Mode::Prot32,
                _ => Mode::Long64,
            };
            let seed: u64 = a[3].parse().unwrap();
            let n: u64 = a[4].parse().unwrap();
            let flags: Vec<&str> = a[5..].iter().map(String::as_str).collect();
            for i in 0..n {
                let mut c = if flags.contains(&"mmio") {
                    let mut src = SplitMix(seed ^ i.wrapping_mul(0x9e37_79b9));
                    let o = Options {
                        data_mmio: true,
                        len: 4 + (i % 40) as usize,
                        ..Options::new(mode)
                    };
                    generate(&o, &mut src, &format!("mmio-{}-{seed}-{i}", mode.name()))
                } else {
                    case_from_seed(mode, seed, i)
                };
                if flags.contains(&"cpl3") {
                    c.cpl = 3;
                    c.name.push_str("-cpl3");
                }
                println!("{}", serde_json::to_string(&c).unwrap());
            }
        }
        _ => {
            let cases: Vec<Case> = std::fs::read_to_string(&a[2])
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            let results: Vec<CaseResult> = std::fs::read_to_string(&a[3])
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            let mut bad = 0;
            let mut refused: BTreeMap<String, usize> = BTreeMap::new();
            let mut fields: BTreeMap<String, usize> = BTreeMap::new();
            for (c, k) in cases.iter().zip(&results) {
                let o = Machine::new(c).run();
                let mask = DiffMask {
                    rflags_ignore: o.undefined,
                    ..DiffMask::default()
                };
                let d = diff(k, &o.result, &mask);
                if let kvmconf_guests::result::Exit::InternalError { .. } = k.exit {
                    // KVM's emulator refused an instruction: name it, do not count it as ours.
                    let rip = k.regs.rip.0;
                    let code = &c.memory[0].hex.0;
                    let off = (rip - c.memory[0].addr.0) as usize;
                    let mut dec = iced_x86::Decoder::with_ip(
                        c.mode.bitness(),
                        &code[off.min(code.len())..],
                        rip,
                        iced_x86::DecoderOptions::NONE,
                    );
                    let ins = dec.decode();
                    *refused.entry(format!("{:?}", ins.code())).or_default() += 1;
                    continue;
                }
                if !d.is_empty() {
                    bad += 1;
                    for f in &d {
                        let key = f.path.split('[').next().unwrap().to_string();
                        *fields.entry(key).or_default() += 1;
                    }
                    if bad <= 8 {
                        println!("MISMATCH {} (kvm != interp):", c.name);
                        for f in d.iter().take(12) {
                            if f.left.len() > 64 {
                                let at = f
                                    .left
                                    .bytes()
                                    .zip(f.right.bytes())
                                    .position(|(x, y)| x != y)
                                    .unwrap_or(0)
                                    & !1;
                                let lo = at.saturating_sub(8);
                                let hi = (at + 24).min(f.left.len()).min(f.right.len());
                                println!(
                                    "  {}: byte {:#x}: {} != {}",
                                    f.path,
                                    at / 2,
                                    &f.left[lo..hi],
                                    &f.right[lo..hi]
                                );
                            } else {
                                println!("  {f}");
                            }
                        }
                        if a.len() > 4 {
                            println!("  case: {}", serde_json::to_string(c).unwrap());
                        }
                    }
                }
            }
            println!("KVM refused to emulate (internal error, not counted): {refused:?}");
            println!(
                "{} cases, {} mismatches; fields: {:?}",
                results.len(),
                bad,
                fields
            );
        }
    }
}

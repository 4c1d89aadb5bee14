//! Prints a generated case's disassembly and interpreter result: `cargo run --example gen_dump -- MODE SEED INDEX`.
use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
use kvmconf_guests::case::Mode;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let mode = match a[1].as_str() {
        "real16" => Mode::Real16,
        "prot32" => Mode::Prot32,
        _ => Mode::Long64,
    };
    let c =
        kvmconf_guests::r#gen::case_from_seed(mode, a[2].parse().unwrap(), a[3].parse().unwrap());
    let code = &c.memory[0].hex.0;
    let mut d = Decoder::with_ip(mode.bitness(), code, 0x1000, DecoderOptions::NONE);
    let mut f = IntelFormatter::new();
    for ins in &mut d {
        let mut s = String::new();
        f.format(&ins, &mut s);
        println!("{:x}: {s}", ins.ip());
    }
    if std::env::var("TRACE").is_ok() {
        let mut m = kvmconf_guests::interp::Machine::new(&c);
        for _ in 0..200 {
            println!(
                "rip={:x} rsp={:x} fl={:x}",
                m.cpu.rip, m.cpu.gpr[4], m.cpu.rflags
            );
            if m.step().is_err() {
                break;
            }
        }
    }
    let o = kvmconf_guests::interp::Machine::new(&c).run();
    println!("{}", serde_json::to_string(&o.result.exit).unwrap());
    if a.len() > 4 {
        println!("{}", serde_json::to_string(&c).unwrap());
    }
}

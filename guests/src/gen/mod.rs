//! The program generator: random guest programs for real16, prot32 and long64 over the instruction
//! forms the interpreter models, as `Case`s (proptest strategies, `arbitrary::Arbitrary`, and a
//! fixed-seed entry point for tools).
//!
//! Every program has the same shape: code at [`CODE`], a 4 KiB data region at [`DATA`] (preset with
//! random bytes; optionally declared as MMIO so KVM must emulate every access), a stack below
//! [`STACK_TOP`], and a final HLT. `rbx`/`ebx`/`bx` holds [`DATA`] throughout and is never written,
//! so memory operands stay inside the data region. Flags the SDM leaves undefined are tracked and
//! never read by a later instruction (a `cmp reg, imm` is inserted first when one would be). long64
//! programs are valid at CPL0 and CPL3 alike (all addresses are user pages; I/O and CLI/STI raise
//! #GP(0) at CPL3 since IOPL is 0).

mod layout;
mod program;
pub mod source;

use crate::case::{Case, Mode};
use source::{BytesSource, Source, SplitMix};

/// Where generated code is loaded (rip; real16 with CS = 0).
pub const CODE: u64 = 0x1000;
/// The data region every memory operand points into.
pub const DATA: u64 = 0x4000;
/// Length of the data region.
pub const DATA_LEN: u64 = 0x1000;
/// Initial stack pointer; pushes stay within 4 KiB below it.
pub const STACK_TOP: u64 = 0x8000;
/// Lowest stack address a program may touch.
pub const STACK_LOW: u64 = 0x7000;

/// What to generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// CPU mode.
    pub mode: Mode,
    /// Install exception stubs (programs may then contain faulting instructions: DIV, INT n, …).
    pub stubs: bool,
    /// Declare the data region as MMIO instead of RAM.
    pub data_mmio: bool,
    /// Number of random instructions (preludes and fix-ups come on top).
    pub len: usize,
}

impl Options {
    /// Default options for `mode`.
    pub fn new(mode: Mode) -> Options {
        Options {
            mode,
            stubs: true,
            data_mmio: false,
            len: 24,
        }
    }
}

/// Generates one case from `src`, named `name`.
pub fn generate(opts: &Options, src: &mut dyn Source, name: &str) -> Case {
    program::build(opts, src, name)
}

/// The `index`-th case of the fixed-seed set for `mode` and `seed` (same bytes on every host).
pub fn case_from_seed(mode: Mode, seed: u64, index: u64) -> Case {
    let mut src = SplitMix(
        seed ^ index.wrapping_mul(0xd134_2543_de82_ef95) ^ (u64::from(mode.bitness()) << 56),
    );
    let opts = Options {
        mode,
        stubs: src.chance(75),
        data_mmio: false,
        len: 4 + src.below(40) as usize,
    };
    generate(
        &opts,
        &mut src,
        &format!("gen-{}-{seed:x}-{index}", mode.name()),
    )
}

/// A proptest strategy for cases in `mode` built from `opts` (the mode field is overridden).
pub fn strategy(opts: Options) -> impl proptest::strategy::Strategy<Value = Case> {
    use proptest::prelude::*;
    (any::<u64>(), 1usize..=opts.len.max(1)).prop_map(move |(seed, len)| {
        let o = Options {
            len,
            ..opts.clone()
        };
        generate(
            &o,
            &mut SplitMix(seed),
            &format!("prop-{}-{seed:x}", o.mode.name()),
        )
    })
}

/// A proptest strategy over all three modes with default options.
pub fn any_case() -> impl proptest::strategy::Strategy<Value = Case> {
    use proptest::prelude::*;
    prop_oneof![
        strategy(Options::new(Mode::Real16)),
        strategy(Options::new(Mode::Prot32)),
        strategy(Options::new(Mode::Long64)),
    ]
}

/// A generated case for fuzzers: `arbitrary` bytes drive every choice.
#[derive(Clone, Debug)]
pub struct ArbitraryCase(pub Case);

impl<'a> arbitrary::Arbitrary<'a> for ArbitraryCase {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        let mode = *u.choose(&[Mode::Real16, Mode::Prot32, Mode::Long64])?;
        let stubs = u.arbitrary()?;
        let data_mmio = u.ratio(1, 4)?;
        let len = u.int_in_range(1..=48)?;
        let opts = Options {
            mode,
            stubs,
            data_mmio,
            len,
        };
        let mut src = BytesSource::new(u);
        Ok(ArbitraryCase(generate(&opts, &mut src, "arbitrary")))
    }
}

//! The one decoder of a case's code for the oracle: the instructions of a generated case's code
//! image, the instruction at an address of any case, and the NOP rewrite the shrinkers use.

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic};
use kvmconf_guests::case::{Case, Mode};
use kvmconf_guests::r#gen::CODE;

/// The index of the code image of a generated case (the memory image at [`CODE`]).
pub fn code_index(case: &Case) -> Option<usize> {
    case.memory.iter().position(|m| m.addr.0 == CODE)
}

/// The instructions of a generated case's code image, in address order.
pub fn instructions(case: &Case) -> Vec<Instruction> {
    let Some(i) = code_index(case) else {
        return vec![];
    };
    let bytes = &case.memory[i].hex.0;
    let mut d = Decoder::with_ip(case.mode.bitness(), bytes, CODE, DecoderOptions::NONE);
    let mut out = Vec::new();
    while d.can_decode() {
        out.push(d.decode());
    }
    out
}

/// Whether `i` is live code: neither a NOP (what minimising writes) nor HLT (how programs end).
pub fn is_live(i: &Instruction) -> bool {
    !matches!(i.mnemonic(), Mnemonic::Nop | Mnemonic::Hlt)
}

/// `case` with every live instruction (not NOP or HLT) for which `drop` holds overwritten by NOPs.
pub fn nop_where(case: &Case, mut drop: impl FnMut(&Instruction) -> bool) -> Case {
    let mut c = case.clone();
    if let Some(i) = code_index(&c) {
        for ins in instructions(case) {
            if is_live(&ins) && drop(&ins) {
                let off = (ins.ip() - CODE) as usize;
                c.memory[i].hex.0[off..off + ins.len()].fill(0x90);
            }
        }
    }
    c
}

/// The distinct mnemonics of the live instructions (not NOP or HLT) of `case`, in program order.
pub fn live_mnemonics(case: &Case) -> Vec<Mnemonic> {
    let mut out = Vec::new();
    for i in instructions(case).iter().filter(|i| is_live(i)) {
        if !out.contains(&i.mnemonic()) {
            out.push(i.mnemonic());
        }
    }
    out
}

/// The instruction at `rip` in the case's memory images (real mode adds CS.base), if one decodes
/// there.
pub fn decode_at(case: &Case, rip: u64) -> Option<Instruction> {
    let cs_base = if case.mode == Mode::Real16 {
        case.segs.cs.map_or(0, |h| h.0) << 4
    } else {
        0
    };
    let lin = cs_base + rip;
    let m = case
        .memory
        .iter()
        .find(|m| lin >= m.addr.0 && lin < m.addr.0 + m.hex.0.len() as u64)?;
    let off = (lin - m.addr.0) as usize;
    let ins = Decoder::with_ip(
        case.mode.bitness(),
        &m.hex.0[off..],
        rip,
        DecoderOptions::NONE,
    )
    .decode();
    (!ins.is_invalid()).then_some(ins)
}

/// Instruction boundaries `(offset, len)` of the code image at [`CODE`] (at most 4096), with the
/// image's index.
pub fn boundaries(case: &Case) -> Option<(usize, Vec<(usize, usize)>)> {
    let i = code_index(case)?;
    let mut out = Vec::new();
    let mut off = 0usize;
    for ins in instructions(case).into_iter().take(4096) {
        out.push((off, ins.len()));
        off += ins.len();
    }
    Some((i, out))
}

/// `case` with every LZCNT and TZCNT of its code image turned into the BSR and BSF of the same
/// operands, length and address (the F3 prefix that selects LZCNT/TZCNT becomes an override of
/// the segment the operand uses anyway, which changes nothing): how a host whose emulator runs
/// them as BSR/BSF (SDM 2 LZCNT, TZCNT: on a CPU without ABM/BMI1 the same bytes are BSR/BSF)
/// executes the program. `None` when the image has neither.
pub fn lzcnt_tzcnt_as_bsr_bsf(case: &Case) -> Option<Case> {
    use iced_x86::Register;
    let i = code_index(case)?;
    let mut c = case.clone();
    let mut changed = false;
    for ins in instructions(case) {
        if !matches!(ins.mnemonic(), Mnemonic::Lzcnt | Mnemonic::Tzcnt) {
            continue;
        }
        let off = (ins.ip() - CODE) as usize;
        let bytes = &mut c.memory[i].hex.0[off..off + ins.len()];
        let Some(f3) = bytes.iter().position(|&b| b == 0xf3) else {
            continue;
        };
        bytes[f3] = match ins.memory_segment() {
            Register::ES => 0x26,
            Register::CS => 0x2e,
            Register::SS => 0x36,
            Register::FS => 0x64,
            Register::GS => 0x65,
            _ => 0x3e,
        };
        changed = true;
    }
    changed.then_some(c)
}

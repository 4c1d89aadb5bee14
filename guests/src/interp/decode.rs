//! Instruction fetch, decoding and classification: each iced-x86 `Code` the interpreter models maps
//! to one family operation ([`Op`]); decoded instructions are cached by linear address.

use super::{Fault, GP0, Machine, Res, UD, addr::canonical, flags, mem::PAGE};
use crate::case::Mode;
use iced_x86::{
    Code, ConditionCode, Decoder, DecoderError, DecoderOptions, Instruction, Mnemonic as M, OpKind,
};

/// ADD-like two-operand arithmetic and logic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum AluOp {
    Add,
    Adc,
    Sub,
    Sbb,
    Cmp,
    And,
    Or,
    Xor,
    Test,
}

/// One-operand arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum UnOp {
    Inc,
    Dec,
    Neg,
    Not,
}

/// Shifts and rotates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum ShOp {
    Rol,
    Ror,
    Rcl,
    Rcr,
    Shl,
    Shr,
    Sar,
}

/// Multiplication and division.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum MulOp {
    Mul,
    Imul1,
    Imul2,
    Imul3,
    Div,
    Idiv,
}

/// Bit tests, scans and counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum BitOp {
    Bt,
    Bts,
    Btr,
    Btc,
    Bsf,
    Bsr,
    Tzcnt,
    Lzcnt,
    Popcnt,
    Bswap,
}

/// Data movement and conversions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum DataOp {
    Mov,
    Movzx,
    Movsx,
    Lea,
    Xchg,
    Xadd,
    Cmpxchg,
    Cmov,
    Setcc,
    /// CBW/CWDE/CDQE: sign-extend the low half of the accumulator into all of it.
    ExtendAcc,
    /// CWD/CDQ/CQO: sign of the accumulator into DX/EDX/RDX.
    ExtendDx,
    Lahf,
    Sahf,
    Xlat,
    MovFromSeg,
    MovToSeg,
}

/// Stack operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum StackOp {
    Push,
    Pop,
    PushSeg,
    PopSeg,
    Pushf,
    Popf,
    Enter,
    Leave,
}

/// Control transfers and software interrupts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum BranchOp {
    Jcc,
    Jmp,
    JmpIndirect,
    Call,
    CallIndirect,
    Ret,
    Loop,
    Loope,
    Loopne,
    Jcxz,
    Int3,
    IntN,
    Into,
}

/// String instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum StrOp {
    Movs,
    Cmps,
    Scas,
    Lods,
    Stos,
    Ins,
    Outs,
}

/// Port I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum IoOp {
    In,
    Out,
}

/// Decimal adjustments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum BcdOp {
    Daa,
    Das,
    Aaa,
    Aas,
    Aam,
    Aad,
}

/// Single-flag instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum FlagOp {
    Clc,
    Stc,
    Cmc,
    Cld,
    Std,
    Cli,
    Sti,
}

/// The family operation an instruction executes as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Op {
    Alu(AluOp),
    Unary(UnOp),
    Shift(ShOp),
    /// SHLD (true) or SHRD (false).
    ShiftDouble(bool),
    Mul(MulOp),
    Bit(BitOp),
    Data(DataOp),
    Stack(StackOp),
    Branch(BranchOp),
    Str(StrOp),
    Io(IoOp),
    Bcd(BcdOp),
    Flag(FlagOp),
    Hlt,
    /// UD0/UD1/UD2: raise #UD.
    Ud,
    Nop,
}

fn is_string_kind(k: OpKind) -> bool {
    matches!(
        k,
        OpKind::MemorySegSI
            | OpKind::MemorySegESI
            | OpKind::MemorySegRSI
            | OpKind::MemoryESDI
            | OpKind::MemoryESEDI
            | OpKind::MemoryESRDI
    )
}

/// Whether every operand is a general register, a plain memory operand, an immediate, a near branch
/// or a string operand (segment registers only when `sreg`).
fn integer_operands(ins: &Instruction, sreg: bool) -> bool {
    (0..ins.op_count()).all(|i| match ins.op_kind(i) {
        OpKind::Register => {
            let r = ins.op_register(i);
            r.is_gpr() || (sreg && r.is_segment_register())
        }
        OpKind::Memory => !matches!(
            ins.memory_size(),
            iced_x86::MemorySize::SegPtr16
                | iced_x86::MemorySize::SegPtr32
                | iced_x86::MemorySize::SegPtr64
        ),
        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => true,
        OpKind::FarBranch16 | OpKind::FarBranch32 => false,
        k => is_string_kind(k) || !matches!(k, OpKind::Register),
    })
}

/// Classifies a decoded instruction, or `None` if the interpreter does not model it.
pub fn classify(ins: &Instruction) -> Option<Op> {
    use AluOp as A;
    let has_sreg = (0..ins.op_count())
        .any(|i| ins.op_kind(i) == OpKind::Register && ins.op_register(i).is_segment_register());
    if !integer_operands(ins, true) {
        return None;
    }
    let op = match ins.mnemonic() {
        M::Add => Op::Alu(A::Add),
        M::Adc => Op::Alu(A::Adc),
        M::Sub => Op::Alu(A::Sub),
        M::Sbb => Op::Alu(A::Sbb),
        M::Cmp => Op::Alu(A::Cmp),
        M::And => Op::Alu(A::And),
        M::Or => Op::Alu(A::Or),
        M::Xor => Op::Alu(A::Xor),
        M::Test => Op::Alu(A::Test),
        M::Inc => Op::Unary(UnOp::Inc),
        M::Dec => Op::Unary(UnOp::Dec),
        M::Neg => Op::Unary(UnOp::Neg),
        M::Not => Op::Unary(UnOp::Not),
        M::Rol => Op::Shift(ShOp::Rol),
        M::Ror => Op::Shift(ShOp::Ror),
        M::Rcl => Op::Shift(ShOp::Rcl),
        M::Rcr => Op::Shift(ShOp::Rcr),
        M::Shl | M::Sal => Op::Shift(ShOp::Shl),
        M::Shr => Op::Shift(ShOp::Shr),
        M::Sar => Op::Shift(ShOp::Sar),
        M::Shld => Op::ShiftDouble(true),
        M::Shrd => Op::ShiftDouble(false),
        M::Mul => Op::Mul(MulOp::Mul),
        M::Imul => Op::Mul(match ins.op_count() {
            1 => MulOp::Imul1,
            2 => MulOp::Imul2,
            _ => MulOp::Imul3,
        }),
        M::Div => Op::Mul(MulOp::Div),
        M::Idiv => Op::Mul(MulOp::Idiv),
        M::Bt => Op::Bit(BitOp::Bt),
        M::Bts => Op::Bit(BitOp::Bts),
        M::Btr => Op::Bit(BitOp::Btr),
        M::Btc => Op::Bit(BitOp::Btc),
        M::Bsf => Op::Bit(BitOp::Bsf),
        M::Bsr => Op::Bit(BitOp::Bsr),
        M::Tzcnt => Op::Bit(BitOp::Tzcnt),
        M::Lzcnt => Op::Bit(BitOp::Lzcnt),
        M::Popcnt => Op::Bit(BitOp::Popcnt),
        M::Bswap => Op::Bit(BitOp::Bswap),
        M::Mov if has_sreg => {
            if ins.op0_kind() == OpKind::Register && ins.op0_register().is_segment_register() {
                if ins.op0_register() == iced_x86::Register::CS {
                    return None;
                }
                Op::Data(DataOp::MovToSeg)
            } else {
                Op::Data(DataOp::MovFromSeg)
            }
        }
        M::Mov => Op::Data(DataOp::Mov),
        M::Movzx => Op::Data(DataOp::Movzx),
        M::Movsx | M::Movsxd => Op::Data(DataOp::Movsx),
        M::Lea => Op::Data(DataOp::Lea),
        M::Xchg => Op::Data(DataOp::Xchg),
        M::Xadd => Op::Data(DataOp::Xadd),
        M::Cmpxchg => Op::Data(DataOp::Cmpxchg),
        M::Cbw | M::Cwde | M::Cdqe => Op::Data(DataOp::ExtendAcc),
        M::Cwd | M::Cdq | M::Cqo => Op::Data(DataOp::ExtendDx),
        M::Lahf => Op::Data(DataOp::Lahf),
        M::Sahf => Op::Data(DataOp::Sahf),
        M::Xlatb => Op::Data(DataOp::Xlat),
        M::Push if has_sreg => Op::Stack(StackOp::PushSeg),
        M::Pop if has_sreg => {
            if ins.op0_register() == iced_x86::Register::CS {
                return None;
            }
            Op::Stack(StackOp::PopSeg)
        }
        M::Push => Op::Stack(StackOp::Push),
        M::Pop => Op::Stack(StackOp::Pop),
        M::Pushf | M::Pushfd | M::Pushfq => Op::Stack(StackOp::Pushf),
        M::Popf | M::Popfd | M::Popfq => Op::Stack(StackOp::Popf),
        M::Enter => Op::Stack(StackOp::Enter),
        M::Leave => Op::Stack(StackOp::Leave),
        M::Jmp => match ins.op0_kind() {
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
                Op::Branch(BranchOp::Jmp)
            }
            _ => Op::Branch(BranchOp::JmpIndirect),
        },
        M::Call => match ins.op0_kind() {
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
                Op::Branch(BranchOp::Call)
            }
            _ => Op::Branch(BranchOp::CallIndirect),
        },
        M::Ret => Op::Branch(BranchOp::Ret),
        M::Loop => Op::Branch(BranchOp::Loop),
        M::Loope => Op::Branch(BranchOp::Loope),
        M::Loopne => Op::Branch(BranchOp::Loopne),
        M::Jcxz | M::Jecxz | M::Jrcxz => Op::Branch(BranchOp::Jcxz),
        M::Int3 => Op::Branch(BranchOp::Int3),
        M::Int => Op::Branch(BranchOp::IntN),
        M::Into => Op::Branch(BranchOp::Into),
        M::Movsb | M::Movsw | M::Movsd | M::Movsq => Op::Str(StrOp::Movs),
        M::Cmpsb | M::Cmpsw | M::Cmpsd | M::Cmpsq => Op::Str(StrOp::Cmps),
        M::Scasb | M::Scasw | M::Scasd | M::Scasq => Op::Str(StrOp::Scas),
        M::Lodsb | M::Lodsw | M::Lodsd | M::Lodsq => Op::Str(StrOp::Lods),
        M::Stosb | M::Stosw | M::Stosd | M::Stosq => Op::Str(StrOp::Stos),
        M::Insb | M::Insw | M::Insd => Op::Str(StrOp::Ins),
        M::Outsb | M::Outsw | M::Outsd => Op::Str(StrOp::Outs),
        M::In => Op::Io(IoOp::In),
        M::Out => Op::Io(IoOp::Out),
        M::Daa => Op::Bcd(BcdOp::Daa),
        M::Das => Op::Bcd(BcdOp::Das),
        M::Aaa => Op::Bcd(BcdOp::Aaa),
        M::Aas => Op::Bcd(BcdOp::Aas),
        M::Aam => Op::Bcd(BcdOp::Aam),
        M::Aad => Op::Bcd(BcdOp::Aad),
        M::Clc => Op::Flag(FlagOp::Clc),
        M::Stc => Op::Flag(FlagOp::Stc),
        M::Cmc => Op::Flag(FlagOp::Cmc),
        M::Cld => Op::Flag(FlagOp::Cld),
        M::Std => Op::Flag(FlagOp::Std),
        M::Cli => Op::Flag(FlagOp::Cli),
        M::Sti => Op::Flag(FlagOp::Sti),
        M::Hlt => Op::Hlt,
        M::Ud0 | M::Ud1 | M::Ud2 => Op::Ud,
        M::Nop | M::Pause => Op::Nop,
        m => {
            let cc = ins.condition_code();
            if cc == ConditionCode::None {
                return None;
            }
            // By mnemonic, not by formatting its name: this runs for every decoded Jcc/SETcc/CMOVcc.
            match m {
                M::Seto
                | M::Setno
                | M::Setb
                | M::Setae
                | M::Sete
                | M::Setne
                | M::Setbe
                | M::Seta
                | M::Sets
                | M::Setns
                | M::Setp
                | M::Setnp
                | M::Setl
                | M::Setge
                | M::Setle
                | M::Setg => Op::Data(DataOp::Setcc),
                M::Cmovo
                | M::Cmovno
                | M::Cmovb
                | M::Cmovae
                | M::Cmove
                | M::Cmovne
                | M::Cmovbe
                | M::Cmova
                | M::Cmovs
                | M::Cmovns
                | M::Cmovp
                | M::Cmovnp
                | M::Cmovl
                | M::Cmovge
                | M::Cmovle
                | M::Cmovg => Op::Data(DataOp::Cmov),
                _ if ins.is_jcc_short_or_near() => Op::Branch(BranchOp::Jcc),
                _ => return None,
            }
        }
    };
    if has_sreg
        && !matches!(
            op,
            Op::Data(DataOp::MovToSeg | DataOp::MovFromSeg)
                | Op::Stack(StackOp::PushSeg | StackOp::PopSeg)
        )
    {
        return None;
    }
    // Far forms, bound/arpl-like oddities and anything with a non-integer operand were rejected
    // above; a few codes share a mnemonic with a form we do not model.
    if matches!(
        ins.code(),
        Code::Jmp_m1616
            | Code::Jmp_m1632
            | Code::Jmp_m1664
            | Code::Call_m1616
            | Code::Call_m1632
            | Code::Call_m1664
    ) {
        return None;
    }
    Some(op)
}

/// Where an operand lives, resolved once at decode time for the hot path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loc {
    /// General register: index in `CpuState::gpr`, size in bytes, bit shift (8 for AH–BH).
    Reg(u8, u8, u8),
    /// An immediate (its value is `Entry::imm`).
    Imm,
    /// Anything else (memory, string, branch, segment register): resolved when executed.
    Other,
}

fn loc(ins: &Instruction, i: u32) -> Loc {
    if i >= ins.op_count() {
        return Loc::Other;
    }
    match ins.op_kind(i) {
        OpKind::Register if ins.op_register(i).is_gpr() => {
            let (idx, size, shift) = super::gpr_loc(ins.op_register(i));
            Loc::Reg(idx as u8, size as u8, shift as u8)
        }
        OpKind::Immediate8
        | OpKind::Immediate8_2nd
        | OpKind::Immediate16
        | OpKind::Immediate32
        | OpKind::Immediate64
        | OpKind::Immediate8to16
        | OpKind::Immediate8to32
        | OpKind::Immediate8to64
        | OpKind::Immediate32to64 => Loc::Imm,
        _ => Loc::Other,
    }
}

/// A handler specialised at decode time for one register/immediate instruction form: operation
/// and operand size are compile-time constants in it, it cannot fault, and it takes the
/// destination and source register numbers and the immediate.
pub(crate) type FastFn = fn(&mut Machine, usize, usize, u64);

/// A [`FastFn`] with its register operands.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fast {
    /// The handler.
    pub run: FastFn,
    /// Destination register number.
    pub dst: u8,
    /// Source register number (0 when the form has none).
    pub src: u8,
}

/// The specialised handler for `ins` if it is a form that has one: ALU, MOV, INC/DEC/NEG/NOT,
/// shift-by-immediate (non-zero count) and two/three-operand IMUL on registers that are not AH–BH,
/// with a register or immediate source.
fn fast(ins: &Instruction, op: Op, locs: &[Loc; 3], imm: u64) -> Option<Fast> {
    let reg = |i: usize| match locs[i] {
        Loc::Reg(r, size, 0) => Some((r, u32::from(size))),
        _ => None,
    };
    let (dst, size) = reg(0)?;
    let src_reg = |i: usize| reg(i).filter(|&(_, s)| s == size).map(|(r, _)| r);
    let (run, src) = match (op, ins.op_count()) {
        (Op::Alu(k), 2) => match locs[1] {
            Loc::Imm => (super::alu::alu_fast_fn(k, size, true)?, 0),
            _ => (super::alu::alu_fast_fn(k, size, false)?, src_reg(1)?),
        },
        (Op::Data(DataOp::Mov), 2) => match locs[1] {
            Loc::Imm => (super::data::mov_fast_fn(size, true)?, 0),
            _ => (super::data::mov_fast_fn(size, false)?, src_reg(1)?),
        },
        (Op::Unary(k), 1) => (super::alu::unary_fast_fn(k, size)?, 0),
        (Op::Shift(k), 2)
            if locs[1] == Loc::Imm && imm & 0xff & super::shift::count_mask(size) != 0 =>
        {
            (super::shift::shift_fast_fn(k, size)?, 0)
        }
        (Op::Mul(MulOp::Imul2), 2) => (super::muldiv::imul_fast_fn(size, false)?, src_reg(1)?),
        (Op::Mul(MulOp::Imul3), 3) if locs[2] == Loc::Imm => {
            (super::muldiv::imul_fast_fn(size, true)?, src_reg(1)?)
        }
        _ => return None,
    };
    Some(Fast { run, dst, src })
}

/// A decoded, classified instruction with its flag effects (architectural bit positions).
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    /// The instruction.
    pub ins: Instruction,
    /// What it executes as.
    pub op: Op,
    /// Flags it reads.
    pub reads: u32,
    /// Flags it writes (incl. undefined ones).
    pub modified: u32,
    /// Flags it leaves undefined.
    pub undefined: u32,
    /// Operands 0–2, resolved.
    pub locs: [Loc; 3],
    /// The value of the (last) immediate operand, extended as its kind says.
    pub imm: u64,
    /// The decode-time specialised handler, for forms that have one.
    pub(crate) fast: Option<Fast>,
}

impl Entry {
    /// Classifies `ins` and records its flag effects, or `None` if it is not modelled.
    pub fn new(ins: Instruction) -> Option<Entry> {
        let op = classify(&ins)?;
        let mut reads = flags::from_iced(ins.rflags_read());
        if matches!(op, Op::Stack(StackOp::Pushf) | Op::Data(DataOp::Lahf)) {
            reads |= flags::STATUS;
        }
        let locs = [loc(&ins, 0), loc(&ins, 1), loc(&ins, 2)];
        let imm = (0..3)
            .filter(|&i| locs[i as usize] == Loc::Imm)
            .map(|i| ins.immediate(i))
            .next_back()
            .unwrap_or(0);
        let mut modified = flags::from_iced(ins.rflags_modified());
        let mut undefined = flags::from_iced(ins.rflags_undefined());
        let fast = fast(&ins, op, &locs, imm);
        if let (Some(_), Op::Shift(k), Loc::Reg(_, size, _)) = (fast, op, locs[0]) {
            // What the general path reports through `fl_override`: with the count known, so are
            // the flags a shift writes and leaves undefined.
            let s = super::shift::shift(k, 0, imm & 0xff, false, u32::from(size))
                .expect("fast shifts have a non-zero count");
            (modified, undefined) = (s.modified, s.undefined);
        }
        Some(Entry {
            ins,
            op,
            reads: reads as u32,
            modified: modified as u32,
            undefined: undefined as u32,
            locs,
            imm,
            fast,
        })
    }
}

const SLOTS: usize = 1 << 12;

#[derive(Clone, Copy)]
struct Slot {
    lin: u64,
    ip: u64,
    entry: Entry,
}

/// A direct-mapped cache of decoded instructions keyed by linear address and IP: a small index
/// (slot number + 1, 0 = empty) into a dense list that grows with the code actually run, so a new
/// machine costs an 8 KiB zeroed index rather than thousands of initialised slots.
pub struct ICache {
    /// Fixed-size, so indexing with a masked address needs no bounds check.
    index: Box<[u16; SLOTS]>,
    slots: Vec<Slot>,
}

impl ICache {
    /// An empty cache.
    pub fn new() -> ICache {
        ICache {
            index: Box::new([0; SLOTS]),
            slots: Vec::new(),
        }
    }

    /// Forgets everything (code or page tables were written).
    pub fn flush(&mut self) {
        if !self.slots.is_empty() {
            self.index.fill(0);
            self.slots.clear();
        }
    }

    #[inline]
    fn slot_of(&self, lin: u64) -> Option<usize> {
        match self.index[(lin as usize) & (SLOTS - 1)] {
            0 => None,
            n => Some(usize::from(n) - 1),
        }
    }

    #[inline]
    fn hit(&self, lin: u64, ip: u64) -> Option<usize> {
        let i = self.slot_of(lin)?;
        let s = &self.slots[i];
        (s.lin == lin && s.ip == ip).then_some(i)
    }

    fn put(&mut self, lin: u64, ip: u64, entry: Entry) -> &Entry {
        let slot = Slot { lin, ip, entry };
        let i = match self.slot_of(lin) {
            Some(i) => {
                self.slots[i] = slot;
                i
            }
            None => {
                // At most SLOTS entries exist (one per index position), so the number fits a u16.
                self.slots.push(slot);
                let i = self.slots.len() - 1;
                self.index[(lin as usize) & (SLOTS - 1)] = (i + 1) as u16;
                i
            }
        };
        &self.slots[i].entry
    }
}

impl Default for ICache {
    fn default() -> Self {
        ICache::new()
    }
}

impl Machine {
    /// Fetches, decodes and classifies the instruction at `rip` (linear `lin`), via the cache.
    #[inline]
    pub(crate) fn fetch(&mut self, lin: u64, rip: u64) -> Res<&Entry> {
        match self.icache.hit(lin, rip) {
            Some(i) => Ok(&self.icache.slots[i].entry),
            None => {
                let e = self.fetch_slow(lin, rip)?;
                Ok(self.icache.put(lin, rip, e))
            }
        }
    }

    fn fetch_slow(&mut self, _lin: u64, rip: u64) -> Res<Entry> {
        let mut buf = [0u8; 15];
        let mut n = 0usize;
        let mut fault: Option<Fault> = None;
        let mut pages = [u64::MAX; 2];
        let acc = self.acc(false);
        // A run of bytes at a time: the checks below are made for a run's first byte, and a run
        // ends where any of them could change (a page end, the CS limit, real mode's 64 KiB
        // offset wrap), so each byte is checked exactly as if it were fetched alone.
        while n < 15 {
            let off = rip.wrapping_add(n as u64);
            let mut run = 15 - n;
            let a = match self.mode {
                Mode::Long64 => {
                    if !canonical(off) {
                        fault = Some(GP0);
                        break;
                    }
                    off
                }
                _ => {
                    let limit = u64::from(self.cpu.cs.limit);
                    if off > limit {
                        fault = Some(GP0);
                        break;
                    }
                    run = run.min((limit - off + 1).min(15) as usize);
                    if self.mode == Mode::Real16 {
                        run = run.min((0x1_0000 - (off & 0xffff)) as usize);
                    }
                    self.code_linear(off)
                }
            };
            let pa = if self.cpu.cr0 & crate::layout::cr0::PG != 0 {
                match self.walk(a, acc) {
                    Ok(pa) => pa,
                    Err(code) => {
                        fault = Some(Fault::Exc(14, Some(code)));
                        pages[1] = a; // remembered for CR2
                        break;
                    }
                }
            } else {
                a
            };
            if !self.mem.is_ram(pa) {
                fault = Some(Fault::unsupported(
                    "instruction fetch from MMIO (KVM cannot emulate it)",
                ));
                break;
            }
            if n == 0 {
                pages[0] = pa;
            }
            run = run.min((PAGE - (a % PAGE)) as usize);
            self.mem.read_ram(pa, &mut buf[n..n + run]);
            n += run;
        }
        let mut d = Decoder::with_ip(self.mode.bitness(), &buf[..n], rip, DecoderOptions::NONE);
        let ins = d.decode();
        if ins.is_invalid() {
            if d.last_error() == DecoderError::NoMoreBytes
                && let Some(f) = fault
            {
                if let Fault::Exc(14, _) = f {
                    self.cpu.cr2 = pages[1];
                }
                return Err(f);
            }
            return Err(UD);
        }
        let Some(e) = Entry::new(ins) else {
            return Err(Fault::unsupported(
                format!("{:?}", ins.mnemonic()).to_lowercase(),
            ));
        };
        // Watch the pages the bytes came from, so writes to them flush the cache.
        let last = self.code_linear(rip.wrapping_add(ins.len() as u64 - 1));
        let last_pa = self.translate_peek(last).unwrap_or(pages[0]);
        self.mem.watch(pages[0]);
        self.mem.watch(last_pa);
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(bits: u32, bytes: &[u8]) -> Instruction {
        Decoder::with_ip(bits, bytes, 0, DecoderOptions::NONE).decode()
    }

    #[test]
    fn classify_accepts_integer_forms_and_rejects_others() {
        assert_eq!(
            classify(&dec(64, &[0x48, 0x01, 0xd8])),
            Some(Op::Alu(AluOp::Add))
        );
        assert_eq!(
            classify(&dec(64, &[0x0f, 0x94, 0xc0])),
            Some(Op::Data(DataOp::Setcc))
        );
        assert_eq!(
            classify(&dec(64, &[0x0f, 0x44, 0xc1])),
            Some(Op::Data(DataOp::Cmov))
        );
        assert_eq!(
            classify(&dec(64, &[0x74, 0x00])),
            Some(Op::Branch(BranchOp::Jcc))
        );
        assert_eq!(classify(&dec(64, &[0x0f, 0xa2])), None, "cpuid");
        assert_eq!(classify(&dec(64, &[0x0f, 0x31])), None, "rdtsc");
        assert_eq!(
            classify(&dec(64, &[0x0f, 0x20, 0xc0])),
            None,
            "mov from cr0"
        );
        assert_eq!(
            classify(&dec(64, &[0xf2, 0x0f, 0x10, 0xc1])),
            None,
            "sse movsd"
        );
        assert_eq!(
            classify(&dec(32, &[0xea, 0, 0, 0, 0, 8, 0])),
            None,
            "far jmp"
        );
        assert_eq!(
            classify(&dec(16, &[0x8e, 0xd8])),
            Some(Op::Data(DataOp::MovToSeg))
        );
    }
}

//! Builds one generated program: picks instruction forms, keeps memory operands in the data region,
//! tracks undefined flags across straight-line code and forward branches, and assembles the result
//! with iced-x86's `CodeAssembler`.

use super::source::Source;
use super::{CODE, DATA, DATA_LEN, Options, STACK_LOW, STACK_TOP};
use crate::case::{Case, Dump, IoIn, MemInit, MmioRegion, Mode};
use crate::interp::flags::{self as fl, AF, CF, DF, OF, STATUS};
use crate::interp::mem::PageHasher;
use crate::num::{Hex, HexBytes};
use iced_x86::code_asm::{CodeAssembler, CodeLabel};
use iced_x86::{Code, ConditionCode, Encoder, Instruction, MemoryOperand, RepPrefixKind};
use iced_x86::{Mnemonic, Register as R};
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::OnceLock;

/// Looks an iced-x86 `Code` up by its name (`"Add_rm32_r32"`).
pub(super) fn code(name: &str) -> Option<Code> {
    // The interpreter's cheap multiplicative hasher: SipHash showed in the generator's profile.
    static CODES: OnceLock<HashMap<String, Code, BuildHasherDefault<PageHasher>>> = OnceLock::new();
    CODES
        .get_or_init(|| Code::values().map(|c| (format!("{c:?}"), c)).collect())
        .get(name)
        .copied()
}

/// A `Code` name built on the stack from pieces (`name!(op, "_rm", 32)`), without `format!`.
#[derive(Clone, Copy)]
struct Name {
    buf: [u8; 40],
    len: usize,
}

impl Name {
    fn new() -> Name {
        Name {
            buf: [0; 40],
            len: 0,
        }
    }
    fn text(&mut self, t: &str) {
        self.buf[self.len..self.len + t.len()].copy_from_slice(t.as_bytes());
        self.len += t.len();
    }
    fn number(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut n = 0;
        loop {
            digits[n] = b'0' + (v % 10) as u8;
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for i in (0..n).rev() {
            self.buf[self.len] = digits[i];
            self.len += 1;
        }
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        // Built only from `&str` pieces and ASCII digits.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

/// One piece of a `name!`: text or a decimal number.
trait Piece {
    fn put(self, n: &mut Name);
}

impl Piece for &str {
    fn put(self, n: &mut Name) {
        n.text(self);
    }
}

impl Piece for u64 {
    fn put(self, n: &mut Name) {
        n.number(self);
    }
}

/// Concatenates text and numbers into a `Name`.
macro_rules! name {
    ($($p:expr),+ $(,)?) => {{
        let mut n = Name::new();
        $( Piece::put($p, &mut n); )+
        n
    }};
}

/// General register `i` (encoding order) of `size` bytes; `high` picks AH–BH for i < 4.
fn gpr(i: usize, size: u64, high: bool) -> R {
    static REGS: OnceLock<Vec<R>> = OnceLock::new();
    let regs = REGS.get_or_init(|| R::values().collect());
    let n = match size {
        8 => 53 + i,
        4 => 37 + i,
        2 => 21 + i,
        _ if high => 5 + i,
        _ if i < 4 => 1 + i,
        _ => 5 + i,
    };
    regs[n]
}

/// Condition-code suffixes in encoding order (the `cc` of Jcc/SETcc/CMOVcc names).
pub(super) const CONDS: [&str; 16] = [
    "o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g",
];

#[derive(Clone, Debug)]
pub(super) enum Step {
    /// An instruction, and where its bytes (encoded at `CODE`) lie in the generator's byte pool.
    Ins(Instruction, u32, u8),
    Jcc(usize, usize),
    Jmp(usize),
    Call(usize),
    /// LOOP (0), LOOPE (1), LOOPNE (2), JCXZ-family (3).
    Short(u8, usize),
    Label(usize),
}

struct Pending {
    label: usize,
    at: usize,
    undef: u64,
}

struct Gen<'a> {
    src: &'a mut dyn Source,
    mode: Mode,
    opts: Options,
    steps: Vec<Step>,
    undef: u64,
    labels: usize,
    pending: Vec<Pending>,
    depth: u64,
    plain: bool,
    protect_bp: bool,
    /// A register (encoding number) memory-operand preludes must not load.
    avoid: Option<usize>,
    io_in: Vec<IoIn>,
    count: usize,
    /// Encodes each instruction once, when it is picked (which also proves iced can encode it);
    /// its buffer is the byte pool the final layout copies from.
    enc: Encoder,
    /// Bytes in the pool that belong to pushed instructions.
    pooled: usize,
}

/// The biased values starting registers and immediates are drawn from.
fn interesting(size: u64, r: u64, pick: u64) -> u64 {
    let m = fl::mask(size as u32);
    let s = fl::sign(size as u32);
    match pick % 10 {
        0 => 0,
        1 => 1,
        2 => m,
        3 => s,
        4 => s - 1,
        5 => s + 1,
        6 => r & 0xff,
        _ => r & m,
    }
}

impl Gen<'_> {
    fn below(&mut self, n: u64) -> u64 {
        self.src.below(n)
    }
    fn chance(&mut self, p: u64) -> bool {
        self.src.chance(p)
    }
    fn sizes(&self) -> &'static [u64] {
        if self.mode == Mode::Long64 {
            &[1, 2, 4, 8]
        } else {
            &[1, 2, 4]
        }
    }
    fn size(&mut self) -> u64 {
        let s = self.sizes();
        s[self.src.below(s.len() as u64) as usize]
    }
    fn size_min16(&mut self) -> u64 {
        loop {
            let s = self.size();
            if s >= 2 {
                return s;
            }
        }
    }
    fn imm(&mut self, size: u64) -> u64 {
        let r = self.src.next_u64();
        let p = self.src.next_u64();
        interesting(size, r, p)
    }

    /// A writable general register of `size` bytes (never rbx or rsp).
    fn wreg(&mut self, size: u64) -> R {
        let long = self.mode == Mode::Long64;
        loop {
            let i = self.below(if long { 16 } else { 8 }) as usize;
            if i == 3 || i == 4 || (i == 5 && self.protect_bp) || self.avoid == Some(i) {
                continue;
            }
            if size == 1 && !long {
                // AL, CL, DL, AH, CH, DH (no BL/BH: they are part of the data pointer).
                if i >= 4 {
                    continue;
                }
                let high = self.chance(30);
                return gpr(i, 1, high);
            }
            return gpr(i, size, false);
        }
    }

    /// A readable register: any writable one, or the data pointer.
    fn rreg(&mut self, size: u64) -> R {
        if size > 1 && self.chance(10) {
            return gpr(3, size, false);
        }
        self.wreg(size)
    }

    /// Encodes `ins` (at `CODE`) into the byte pool: its step, or `None` if iced cannot encode it.
    fn encoded(&mut self, ins: Instruction) -> Option<Step> {
        let at = self.pooled;
        match self.enc.encode(&ins, CODE) {
            Ok(len) => {
                self.pooled += len;
                Some(Step::Ins(ins, at as u32, len as u8))
            }
            Err(_) => {
                // Drop whatever the failed attempt left in the buffer.
                let mut pool = self.enc.take_buffer();
                pool.truncate(at);
                self.enc.set_buffer(pool);
                None
            }
        }
    }

    fn push_ins(&mut self, ins: Instruction) -> bool {
        match self.encoded(ins) {
            Some(step) => {
                self.steps.push(step);
                true
            }
            None => false,
        }
    }

    /// `mov reg, v` without touching flags.
    fn set(&mut self, r: R, v: u64) {
        let size = r.size() as u64;
        let ins = match size {
            8 if v <= 0xffff_ffff => {
                let e = gpr(r.number(), 4, false);
                Instruction::with2(Code::Mov_r32_imm32, e, v as u32)
            }
            8 => Instruction::with2(Code::Mov_r64_imm64, r, v),
            4 => Instruction::with2(Code::Mov_r32_imm32, r, v as u32),
            2 => Instruction::with2(Code::Mov_r16_imm16, r, v as u32),
            _ => Instruction::with2(Code::Mov_r8_imm8, r, v as u32),
        };
        self.push_ins(ins.expect("mov reg, imm"));
    }

    /// A memory operand `size` bytes long inside the data region, at least `margin` bytes from its
    /// ends; may emit preludes that load an index register.
    fn mem(&mut self, size: u64, margin: u64) -> MemoryOperand {
        let span = DATA_LEN - size - 2 * margin;
        let off = margin + self.below(span + 1);
        let seg = if self.chance(15) {
            *[R::ES, R::SS, R::FS, R::GS]
                .get(self.below(4) as usize)
                .unwrap()
        } else {
            R::None
        };
        let with = |m: MemoryOperand| MemoryOperand {
            segment_prefix: seg,
            ..m
        };
        let small = |g: &mut Self| g.below(off.min(0x100) + 1);
        let real_form = match self.avoid {
            Some(5..=7) => 0,
            _ => self.below(5),
        };
        let prot_form = if self.avoid == Some(6) {
            0
        } else {
            self.below(4)
        };
        match self.mode {
            Mode::Real16 => match real_form {
                0 => with(MemoryOperand::with_base_displ_size(R::BX, off as i64, 2)),
                1 => {
                    let idx = if self.chance(50) { R::SI } else { R::DI };
                    let v = small(self);
                    self.set(idx, v);
                    with(MemoryOperand::with_base_index_scale_displ_size(
                        R::BX,
                        idx,
                        1,
                        (off - v) as i64,
                        2,
                    ))
                }
                2 if !self.protect_bp => {
                    let idx = if self.chance(50) { R::SI } else { R::DI };
                    let a = small(self);
                    let b = self.below(off - a + 1).min(0x40);
                    self.set(R::BP, DATA + a);
                    self.set(idx, b);
                    with(MemoryOperand::with_base_index_scale_displ_size(
                        R::BP,
                        idx,
                        1,
                        (off - a - b) as i64,
                        2,
                    ))
                }
                3 => {
                    let idx = if self.chance(50) { R::SI } else { R::DI };
                    let a = small(self);
                    self.set(idx, DATA + off - a);
                    with(MemoryOperand::with_base_displ_size(idx, a as i64, 2))
                }
                _ => with(MemoryOperand::with_base_displ_size(R::EBX, off as i64, 4)),
            },
            Mode::Prot32 => match prot_form {
                0 => with(MemoryOperand::with_base_displ_size(R::EBX, off as i64, 4)),
                1 => {
                    let idx = self.wreg(4);
                    let scale = 1u64 << self.below(4);
                    let v = small(self) / scale;
                    self.set(idx, v);
                    with(MemoryOperand::with_base_index_scale_displ_size(
                        R::EBX,
                        idx,
                        scale as u32,
                        (off - v * scale) as i64,
                        4,
                    ))
                }
                2 => with(MemoryOperand::with_displ(DATA + off, 4)),
                _ => {
                    let v = small(self);
                    self.set(R::SI, v);
                    with(MemoryOperand::with_base_index_scale_displ_size(
                        R::BX,
                        R::SI,
                        1,
                        (off - v) as i64,
                        2,
                    ))
                }
            },
            Mode::Long64 => match self.below(5) {
                0 => with(MemoryOperand::with_base_displ_size(R::RBX, off as i64, 8)),
                1 => {
                    let idx = self.wreg(8);
                    let scale = 1u64 << self.below(4);
                    let v = small(self) / scale;
                    self.set(idx, v);
                    with(MemoryOperand::with_base_index_scale_displ_size(
                        R::RBX,
                        idx,
                        scale as u32,
                        (off - v * scale) as i64,
                        8,
                    ))
                }
                2 => with(MemoryOperand::with_base_displ_size(
                    R::RIP,
                    (DATA + off) as i64,
                    8,
                )),
                3 => with(MemoryOperand::with_displ(DATA + off, 8)),
                _ => with(MemoryOperand::with_base_displ_size(R::EBX, off as i64, 4)),
            },
        }
    }

    /// Emits an instruction with flag tracking: fixes up undefined flags it would read, then records
    /// what it leaves undefined (`extra`: value-dependent undefined bits; `effect`: whether it
    /// touches flags at all for the values it will see).
    fn emit(&mut self, ins: Instruction, extra: u64, effect: bool) {
        let Some(step) = self.encoded(ins) else {
            return;
        };
        let mut reads = fl::from_iced(ins.rflags_read());
        if matches!(
            ins.mnemonic(),
            Mnemonic::Pushf | Mnemonic::Pushfd | Mnemonic::Pushfq | Mnemonic::Lahf
        ) {
            reads |= STATUS;
        }
        // An instruction that may raise an exception pushes RFLAGS into the frame, where it is
        // compared (prot32/real16 frames land on the dumped stack): undefined flags must not reach it.
        let faulting = self.opts.stubs && may_fault(ins.mnemonic());
        if faulting {
            reads |= STATUS;
        }
        if (effect || faulting) && reads & self.undef != 0 {
            self.fixup();
        }
        self.steps.push(step);
        if effect {
            let modified = fl::from_iced(ins.rflags_modified());
            let undefined = fl::from_iced(ins.rflags_undefined()) | extra;
            self.undef = (self.undef & !modified) | undefined;
        }
    }

    /// `cmp reg, imm`: defines all six status flags, writes nothing else.
    fn fixup(&mut self) {
        let r = self.rreg(4);
        let v = self.imm(4) as u32;
        let ins = Instruction::with2(Code::Cmp_rm32_imm32, r, v).expect("cmp");
        self.push_ins(ins);
        self.undef &= !STATUS;
    }

    fn new_label(&mut self, within: usize) -> usize {
        let l = self.labels;
        self.labels += 1;
        let at = self.count + 1 + self.below(within as u64) as usize;
        self.pending.push(Pending {
            label: l,
            at,
            undef: self.undef,
        });
        l
    }

    fn place_due(&mut self, all: bool) {
        let count = self.count;
        let mut i = 0;
        while i < self.pending.len() {
            if all || self.pending[i].at <= count {
                let p = self.pending.remove(i);
                self.undef |= p.undef;
                self.steps.push(Step::Label(p.label));
            } else {
                i += 1;
            }
        }
    }

    fn with2(&mut self, name: &str, a: impl Into<O>, b: impl Into<O>) -> Option<Instruction> {
        make(code(name)?, &[a.into(), b.into()])
    }

    /// Register or memory operand of `size` bytes, as the instruction's r/m.
    fn rm2(&mut self, name: &str, size: u64, b: impl Into<O>, mem_pct: u64) -> Option<Instruction> {
        let b = b.into();
        if self.chance(mem_pct) {
            let m = self.mem(size, 0);
            self.with2(name, m, b)
        } else {
            let r = self.wreg(size);
            self.with2(name, r, b)
        }
    }

    fn one(&mut self) {
        let bits = |s: u64| s * 8;
        let long = self.mode == Mode::Long64;
        let pick = self.below(100);
        match pick {
            // ALU
            0..=24 => {
                let op = *[
                    "Add", "Or", "Adc", "Sbb", "And", "Sub", "Xor", "Cmp", "Test",
                ]
                .get(self.below(9) as usize)
                .unwrap();
                let s = self.size();
                let b = bits(s);
                let form = self.below(4);
                let ins = match form {
                    0 => {
                        let src = self.rreg(s);
                        self.rm2(&name!(op, "_rm", b, "_r", b), s, src, 35)
                    }
                    1 if op != "Test" => {
                        let d = self.wreg(s);
                        if self.chance(40) {
                            let m = self.mem(s, 0);
                            self.with2(&name!(op, "_r", b, "_rm", b), d, m)
                        } else {
                            let r = self.rreg(s);
                            self.with2(&name!(op, "_r", b, "_rm", b), d, r)
                        }
                    }
                    2 if op != "Test" && s > 1 && self.chance(50) => {
                        let v = self.imm(1) as i8 as i32;
                        self.rm2(&name!(op, "_rm", b, "_imm8"), s, v, 30)
                    }
                    _ => {
                        let ib = b.min(32);
                        let v = self.imm(s.min(4)) as u32;
                        let v = if s == 8 {
                            v as i32 as i64 as u64
                        } else {
                            u64::from(v)
                        };
                        if self.chance(20) {
                            let acc = gpr(0, s, false);
                            let accn = ["AL", "AX", "EAX", "RAX"][s.trailing_zeros() as usize];
                            self.with2(&name!(op, "_", accn, "_imm", ib), acc, v as i64 as i32)
                        } else {
                            self.rm2(&name!(op, "_rm", b, "_imm", ib), s, v as i64 as i32, 30)
                        }
                    }
                };
                if let Some(i) = ins {
                    self.emit(i, 0, true);
                }
            }
            25..=30 => {
                let op = *["Inc", "Dec", "Neg", "Not"]
                    .get(self.below(4) as usize)
                    .unwrap();
                let s = self.size();
                let name = name!(op, "_rm", bits(s));
                let ins = if self.chance(30) {
                    let m = self.mem(s, 0);
                    Instruction::with1(code(&name).unwrap(), m).ok()
                } else {
                    let r = self.wreg(s);
                    Instruction::with1(code(&name).unwrap(), r).ok()
                };
                if let Some(i) = ins {
                    self.emit(i, 0, true);
                }
            }
            // Shifts and rotates with 1, imm8 and CL counts.
            31..=38 => {
                let op = *["Rol", "Ror", "Rcl", "Rcr", "Shl", "Shr", "Sar"]
                    .get(self.below(7) as usize)
                    .unwrap();
                let s = self.size();
                let b = bits(s);
                let count = match self.below(4) {
                    0 => 1,
                    1 => b - 1,
                    2 => self.below(b + 2),
                    _ => self.below(70),
                };
                let form = self.below(3);
                let name = match form {
                    0 => name!(op, "_rm", b, "_1"),
                    1 => name!(op, "_rm", b, "_imm8"),
                    _ => name!(op, "_rm", b, "_CL"),
                };
                let count = if form == 0 { 1 } else { count };
                let masked = count & if s == 8 { 0x3f } else { 0x1f };
                let mut extra = 0;
                if masked != 1 {
                    extra |= OF;
                }
                if matches!(op, "Shl" | "Shr" | "Sar") {
                    extra |= AF;
                    if masked >= b && op != "Sar" {
                        extra |= CF;
                    }
                }
                self.avoid = Some(1);
                let dst: O = if self.chance(30) {
                    self.mem(s, 0).into()
                } else {
                    self.wreg(s).into()
                };
                self.avoid = None;
                let ins = match form {
                    0 => make(code(&name).unwrap(), &[dst, O::I(1)]),
                    1 => make(code(&name).unwrap(), &[dst, O::I(count as i32)]),
                    _ => {
                        self.set(R::CL, count);
                        make(code(&name).unwrap(), &[dst, O::R(R::CL)])
                    }
                };
                if let Some(i) = ins {
                    self.emit(i, extra, masked != 0);
                }
            }
            39..=41 => {
                let op = if self.chance(50) { "Shld" } else { "Shrd" };
                let s = self.size_min16();
                let b = bits(s);
                let count = self.below(if s == 2 { 17 } else { b });
                let cl = self.chance(50);
                self.avoid = Some(1);
                let src = self.rreg(s);
                let dst: O = if self.chance(30) {
                    self.mem(s, 0).into()
                } else {
                    self.wreg(s).into()
                };
                self.avoid = None;
                if cl {
                    self.set(R::CL, count);
                }
                let name = name!(op, "_rm", b, "_r", b, "_", if cl { "CL" } else { "imm8" });
                let c = code(&name).unwrap();
                let ins = match dst {
                    O::M(m) if cl => Instruction::with3(c, m, src, R::CL),
                    O::M(m) => Instruction::with3(c, m, src, count as i32),
                    O::R(d) if cl => Instruction::with3(c, d, src, R::CL),
                    O::R(d) => Instruction::with3(c, d, src, count as i32),
                    _ => return,
                };
                let extra = AF | if count == 1 { 0 } else { OF };
                if let Ok(i) = ins {
                    self.emit(i, extra, count != 0);
                }
            }
            // Multiply and divide (division only with stubs: it may fault).
            42..=47 => {
                let s = self.size();
                let b = bits(s);
                let k = self.below(if self.opts.stubs { 5 } else { 3 });
                let ins = match k {
                    0 | 3 | 4 => {
                        let op = ["Mul", "", "", "Div", "Idiv"][k as usize];
                        let name = name!(op, "_rm", b);
                        if self.chance(30) {
                            let m = self.mem(s, 0);
                            Instruction::with1(code(&name).unwrap(), m).ok()
                        } else {
                            let r = self.rreg(s);
                            Instruction::with1(code(&name).unwrap(), r).ok()
                        }
                    }
                    1 if s > 1 => {
                        let d = self.wreg(s);
                        let r = self.rreg(s);
                        self.with2(&name!("Imul_r", b, "_rm", b), d, r)
                    }
                    2 if s > 1 => {
                        let d = self.wreg(s);
                        let r = self.rreg(s);
                        let v = self.imm(1) as i8 as i32;
                        Instruction::with3(
                            code(&name!("Imul_r", b, "_rm", b, "_imm8")).unwrap(),
                            d,
                            r,
                            v,
                        )
                        .ok()
                    }
                    _ => {
                        let name = name!("Imul_rm", b);
                        let r = self.rreg(s);
                        Instruction::with1(code(&name).unwrap(), r).ok()
                    }
                };
                if let Some(i) = ins {
                    self.emit(i, 0, true);
                }
            }
            // Bit tests.
            48..=52 => {
                let op = *["Bt", "Bts", "Btr", "Btc"]
                    .get(self.below(4) as usize)
                    .unwrap();
                let s = self.size_min16();
                let b = bits(s);
                let ins = if self.chance(50) {
                    let v = self.below(256) as i32;
                    self.rm2(&name!(op, "_rm", b, "_imm8"), s, v, 40)
                } else if self.chance(50) {
                    // Register bit offset into memory: signed, may reach ±32 bytes.
                    let r = self.wreg(s);
                    let v = (self.below(512) as i64 - 256) as u64 & fl::mask(s as u32);
                    self.avoid = Some(r.number());
                    let m = self.mem(s, 48);
                    self.avoid = None;
                    self.set(r, v);
                    self.with2(&name!(op, "_rm", b, "_r", b), m, r)
                } else {
                    let d = self.wreg(s);
                    let r = self.rreg(s);
                    self.with2(&name!(op, "_rm", b, "_r", b), d, r)
                };
                if let Some(i) = ins {
                    self.emit(i, 0, true);
                }
            }
            53..=55 => {
                let op = *["Bsf", "Bsr", "Tzcnt", "Lzcnt", "Popcnt"]
                    .get(self.below(5) as usize)
                    .unwrap();
                let s = self.size_min16();
                let b = bits(s);
                let d = self.wreg(s);
                let ins = if self.chance(30) {
                    let m = self.mem(s, 0);
                    self.with2(&name!(op, "_r", b, "_rm", b), d, m)
                } else {
                    let r = self.rreg(s);
                    self.with2(&name!(op, "_r", b, "_rm", b), d, r)
                };
                if let Some(i) = ins {
                    self.emit(i, 0, true);
                }
            }
            // MOV family.
            56..=69 => {
                let s = self.size();
                let b = bits(s);
                let ins = match self.below(8) {
                    0 => {
                        let src = self.rreg(s);
                        self.rm2(&name!("Mov_rm", b, "_r", b), s, src, 50)
                    }
                    1 => {
                        let d = self.wreg(s);
                        let m = self.mem(s, 0);
                        self.with2(&name!("Mov_r", b, "_rm", b), d, m)
                    }
                    2 => {
                        let d = self.wreg(s);
                        let v = self.imm(s);
                        if s == 8 {
                            self.with2("Mov_r64_imm64", d, v)
                        } else {
                            self.with2(&name!("Mov_r", b, "_imm", b), d, v as u32)
                        }
                    }
                    3 => {
                        let v = self.imm(s.min(4)) as u32;
                        self.rm2(&name!("Mov_rm", b, "_imm", b.min(32)), s, v as i32, 60)
                    }
                    4 | 5 => {
                        let (d, from) = *[(2u64, 1u64), (4, 1), (8, 1), (4, 2), (8, 2), (8, 4)]
                            .get(self.below(if long { 6 } else { 4 }) as usize)
                            .unwrap();
                        let zx = self.chance(50) && from < 4;
                        let name = match (zx, from) {
                            (true, _) => name!("Movzx_r", bits(d), "_rm", bits(from)),
                            (false, 4) => name!("Movsxd_r64_rm32"),
                            (false, _) => name!("Movsx_r", bits(d), "_rm", bits(from)),
                        };
                        let dr = self.wreg(d);
                        if self.chance(30) {
                            let m = self.mem(from, 0);
                            self.with2(&name, dr, m)
                        } else {
                            let r = self.rreg(from);
                            self.with2(&name, dr, r)
                        }
                    }
                    6 => {
                        let s = self.size_min16();
                        let d = self.wreg(s);
                        let m = self.mem(1, 0);
                        self.with2(&name!("Lea_r", bits(s), "_m"), d, m)
                    }
                    _ => {
                        let op = *["Xchg", "Xadd", "Cmpxchg"]
                            .get(self.below(3) as usize)
                            .unwrap();
                        let src = self.wreg(s);
                        self.rm2(&name!(op, "_rm", b, "_r", b), s, src, 40)
                    }
                };
                if let Some(i) = ins {
                    self.emit(i, 0, true);
                }
            }
            70..=74 => {
                let cc = CONDS[self.below(16) as usize];
                let ins = if self.chance(50) {
                    self.rm2(&name!("Set", cc, "_rm8"), 1, O::N, 30)
                } else {
                    let s = self.size_min16();
                    let b = bits(s);
                    let d = self.wreg(s);
                    if self.chance(30) {
                        let m = self.mem(s, 0);
                        self.with2(&name!("Cmov", cc, "_r", b, "_rm", b), d, m)
                    } else {
                        let r = self.rreg(s);
                        self.with2(&name!("Cmov", cc, "_r", b, "_rm", b), d, r)
                    }
                };
                if let Some(i) = ins {
                    self.emit(i, 0, true);
                }
            }
            75..=77 => {
                let names: &[&str] = if long {
                    &[
                        "Cbw",
                        "Cwde",
                        "Cdqe",
                        "Cwd",
                        "Cdq",
                        "Cqo",
                        "Lahf",
                        "Sahf",
                        "Bswap_r32",
                        "Bswap_r64",
                    ]
                } else {
                    &[
                        "Cbw",
                        "Cwde",
                        "Cwd",
                        "Cdq",
                        "Lahf",
                        "Sahf",
                        "Bswap_r32",
                        "Daa",
                        "Das",
                        "Aaa",
                        "Aas",
                        "Aam_imm8",
                        "Aad_imm8",
                    ]
                };
                let name = names[self.below(names.len() as u64) as usize];
                let c = code(name).unwrap();
                let ins = match name {
                    "Bswap_r32" => Instruction::with1(c, self.wreg(4)).ok(),
                    "Bswap_r64" => Instruction::with1(c, self.wreg(8)).ok(),
                    "Aam_imm8" | "Aad_imm8" => {
                        let v = if self.opts.stubs {
                            self.below(20)
                        } else {
                            1 + self.below(19)
                        };
                        Instruction::with1(c, v as u32).ok()
                    }
                    _ => Some(Instruction::with(c)),
                };
                if let Some(i) = ins {
                    self.emit(i, 0, true);
                }
            }
            // Stack.
            78..=83 if !self.plain => self.stack_op(),
            // Control flow.
            84..=89 if !self.plain => self.branch(),
            90..=93 => self.string_op(),
            94..=96 => self.io_op(),
            97..=98 => {
                let name = *["Clc", "Stc", "Cmc", "Cld", "Std", "Cli", "Sti", "Nopd"]
                    .get(self.below(8) as usize)
                    .unwrap();
                self.emit(Instruction::with(code(name).unwrap()), 0, true);
            }
            _ if self.opts.stubs && !self.plain && self.chance(30) => {
                let ins = match self.below(3) {
                    0 => Instruction::with(Code::Int3),
                    1 if !long => Instruction::with(Code::Into),
                    _ => {
                        // INT n other than 3 and 4 raises #UD at CPL3 on this host (see the
                        // report); INT 3 / INT 4 through CD ib still exercise the imm8 form.
                        let v = if self.mode == Mode::Real16 {
                            self.below(32)
                        } else {
                            3 + self.below(2)
                        };
                        Instruction::with1(Code::Int_imm8, v as u32).expect("int n")
                    }
                };
                self.emit(ins, 0, true);
            }
            _ => {}
        }
    }

    fn stack_op(&mut self) {
        let long = self.mode == Mode::Long64;
        let word = if long {
            8
        } else if self.chance(50) {
            4
        } else {
            2
        };
        let b = word * 8;
        let k = self.below(8);
        match k {
            0..=2 if self.depth + word <= STACK_TOP - STACK_LOW - 0x100 => {
                let ins = match self.below(3) {
                    0 => {
                        let r = self.rreg(word);
                        Instruction::with1(code(&name!("Push_r", b)).unwrap(), r).ok()
                    }
                    1 => {
                        let m = self.mem(word, 0);
                        Instruction::with1(code(&name!("Push_rm", b)).unwrap(), m).ok()
                    }
                    _ => {
                        let name = match word {
                            8 => "Pushq_imm32",
                            4 => "Pushd_imm32",
                            _ => "Push_imm16",
                        };
                        let v = self.imm(word.min(4)) as u32;
                        Instruction::with1(code(name).unwrap(), v as i32).ok()
                    }
                };
                if let Some(i) = ins {
                    self.depth += word;
                    self.emit(i, 0, true);
                }
            }
            3 | 4 if self.depth >= word => {
                let ins = if self.chance(50) {
                    let r = self.wreg(word);
                    Instruction::with1(code(&name!("Pop_r", b)).unwrap(), r).ok()
                } else {
                    let m = self.mem(word, 0);
                    Instruction::with1(code(&name!("Pop_rm", b)).unwrap(), m).ok()
                };
                if let Some(i) = ins {
                    self.depth -= word;
                    self.emit(i, 0, true);
                }
            }
            5 => {
                // PUSHF; POP reg (reads every status flag).
                let name = match word {
                    8 => "Pushfq",
                    4 => "Pushfd",
                    _ => "Pushfw",
                };
                self.emit(Instruction::with(code(name).unwrap()), 0, true);
                let r = self.wreg(word);
                self.emit(
                    Instruction::with1(code(&name!("Pop_r", b)).unwrap(), r).unwrap(),
                    0,
                    true,
                );
            }
            6 => {
                // PUSH imm; POPF: every status flag and DF from a known value, TF clear.
                let v = (self.src.next_u64() & (STATUS | DF)) | 2;
                let name = match word {
                    8 => "Pushq_imm32",
                    4 => "Pushd_imm32",
                    _ => "Push_imm16",
                };
                self.emit(
                    Instruction::with1(code(name).unwrap(), v as i32).unwrap(),
                    0,
                    true,
                );
                let popf = match word {
                    8 => "Popfq",
                    4 => "Popfd",
                    _ => "Popfw",
                };
                self.emit(Instruction::with(code(popf).unwrap()), 0, true);
            }
            _ => {
                // ENTER n, 0; a few plain instructions that keep rbp; LEAVE. The operand size is
                // the stack width: a 16-bit LEAVE on a 32-bit stack would load ESP from a
                // half-written EBP.
                let word = match self.mode {
                    Mode::Real16 => 2,
                    Mode::Prot32 => 4,
                    Mode::Long64 => 8,
                };
                let name = match word {
                    8 => "Enterq_imm16_imm8",
                    4 => "Enterd_imm16_imm8",
                    _ => "Enterw_imm16_imm8",
                };
                let alloc = self.below(64) as u32 * 2;
                if self.depth + u64::from(alloc) + 2 * word > STACK_TOP - STACK_LOW - 0x100 {
                    return;
                }
                self.emit(
                    Instruction::with2(code(name).unwrap(), alloc, 0u32).unwrap(),
                    0,
                    true,
                );
                let (plain, bp) = (self.plain, self.protect_bp);
                self.plain = true;
                self.protect_bp = true;
                for _ in 0..self.below(4) {
                    self.one();
                }
                self.plain = plain;
                self.protect_bp = bp;
                let leave = match word {
                    8 => "Leaveq",
                    4 => "Leaved",
                    _ => "Leavew",
                };
                self.emit(Instruction::with(code(leave).unwrap()), 0, true);
            }
        }
    }

    fn branch(&mut self) {
        match self.below(6) {
            0..=2 => {
                let cc = self.below(16) as usize;
                let reads = fl::cond_reads(cond_code(cc));
                if reads & self.undef != 0 {
                    self.fixup();
                }
                let l = self.new_label(6);
                self.steps.push(Step::Jcc(cc, l));
            }
            3 => {
                let l = self.new_label(4);
                self.steps.push(Step::Jmp(l));
            }
            4 => {
                // LOOP/LOOPE/LOOPNE/JCXZ forward over at most one instruction (rel8 reach).
                let kind = self.below(4) as u8;
                let cx = match self.mode {
                    Mode::Real16 => R::CX,
                    _ => R::ECX,
                };
                let v = self.below(3);
                self.set(cx, v);
                if matches!(kind, 1 | 2) && self.undef & fl::ZF != 0 {
                    self.fixup();
                }
                let l = self.new_label(1);
                self.steps.push(Step::Short(kind, l));
            }
            _ => {
                // CALL f; JMP over; f: plain instructions; RET; over:
                self.place_due(true);
                let f = self.labels;
                let over = self.labels + 1;
                self.labels += 2;
                self.steps.push(Step::Call(f));
                self.steps.push(Step::Jmp(over));
                self.steps.push(Step::Label(f));
                let plain = self.plain;
                self.plain = true;
                for _ in 0..1 + self.below(3) {
                    self.one();
                }
                self.plain = plain;
                let ret = if self.mode == Mode::Long64 || self.chance(50) {
                    Instruction::with(Code::Retnq)
                } else {
                    Instruction::with(Code::Retnw)
                };
                let ret = match self.mode {
                    Mode::Long64 => ret,
                    Mode::Prot32 => Instruction::with(Code::Retnd),
                    Mode::Real16 => Instruction::with(Code::Retnw),
                };
                self.push_ins(ret);
                self.steps.push(Step::Label(over));
            }
        }
    }

    fn string_op(&mut self) {
        let long = self.mode == Mode::Long64;
        let esz = *[1u64, 2, 4, 8]
            .get(self.below(if long { 4 } else { 3 }) as usize)
            .unwrap();
        let asz = match self.mode {
            Mode::Real16 => {
                if self.chance(20) {
                    32
                } else {
                    16
                }
            }
            Mode::Prot32 => {
                if self.chance(20) {
                    16
                } else {
                    32
                }
            }
            Mode::Long64 => {
                if self.chance(20) {
                    32
                } else {
                    64
                }
            }
        };
        let rep = self.chance(60);
        let count = if rep { self.below(9) } else { 1 };
        let reg = |i: usize| gpr(i, if asz == 16 { 2 } else { 4 }, false);
        let si = DATA + 0x700 + self.below(0x200);
        let di = DATA + 0x700 + self.below(0x200);
        self.set(reg(6), si);
        self.set(reg(7), di);
        if rep {
            self.set(reg(1), count);
        }
        let kind = self.below(7);
        let port = *[0x80u64, 0xe9, 0x3f8, 0x510]
            .get(self.below(4) as usize)
            .unwrap();
        if kind >= 5 {
            self.set(R::DX, port);
        }
        let rk = if rep {
            if self.chance(50) {
                RepPrefixKind::Repe
            } else {
                RepPrefixKind::Repne
            }
        } else {
            RepPrefixKind::None
        };
        let seg = R::None;
        let e = esz;
        let ins = match kind {
            0 => match e {
                1 => Instruction::with_movsb(asz, seg, rk),
                2 => Instruction::with_movsw(asz, seg, rk),
                4 => Instruction::with_movsd(asz, seg, rk),
                _ => Instruction::with_movsq(asz, seg, rk),
            },
            1 => match e {
                1 => Instruction::with_cmpsb(asz, seg, rk),
                2 => Instruction::with_cmpsw(asz, seg, rk),
                4 => Instruction::with_cmpsd(asz, seg, rk),
                _ => Instruction::with_cmpsq(asz, seg, rk),
            },
            2 => match e {
                1 => Instruction::with_scasb(asz, rk),
                2 => Instruction::with_scasw(asz, rk),
                4 => Instruction::with_scasd(asz, rk),
                _ => Instruction::with_scasq(asz, rk),
            },
            3 => match e {
                1 => Instruction::with_lodsb(asz, seg, rk),
                2 => Instruction::with_lodsw(asz, seg, rk),
                4 => Instruction::with_lodsd(asz, seg, rk),
                _ => Instruction::with_lodsq(asz, seg, rk),
            },
            4 => match e {
                1 => Instruction::with_stosb(asz, rk),
                2 => Instruction::with_stosw(asz, rk),
                4 => Instruction::with_stosd(asz, rk),
                _ => Instruction::with_stosq(asz, rk),
            },
            5 => {
                for _ in 0..count {
                    let v = self.src.next_u64() & fl::mask(e.min(4) as u32);
                    self.io_in.push(IoIn {
                        port: Hex(port),
                        value: Hex(v),
                    });
                }
                match e {
                    1 => Instruction::with_insb(asz, rk),
                    2 => Instruction::with_insw(asz, rk),
                    _ => Instruction::with_insd(asz, rk),
                }
            }
            _ => match e {
                1 => Instruction::with_outsb(asz, seg, rk),
                2 => Instruction::with_outsw(asz, seg, rk),
                _ => Instruction::with_outsd(asz, seg, rk),
            },
        };
        if let Ok(i) = ins {
            self.emit(i, 0, !(rep && count == 0));
        }
    }

    fn io_op(&mut self) {
        let s = *[1u64, 2, 4].get(self.below(3) as usize).unwrap();
        let acc = gpr(0, s, false);
        let accn = ["AL", "AX", "EAX"][s.trailing_zeros() as usize];
        let port = *[0x80u64, 0xe9, 0x3f8, 0x510]
            .get(self.below(4) as usize)
            .unwrap();
        let dx = self.chance(50);
        if dx {
            self.set(R::DX, port);
        }
        let input = self.chance(50);
        if input && self.chance(80) {
            let v = self.imm(s);
            self.io_in.push(IoIn {
                port: Hex(port),
                value: Hex(v),
            });
        }
        let ins = match (input, dx) {
            (true, true) => self.with2(&name!("In_", accn, "_DX"), acc, R::DX),
            (true, false) => self.with2(&name!("In_", accn, "_imm8"), acc, port as u32),
            (false, true) => self.with2(&name!("Out_DX_", accn), R::DX, acc),
            (false, false) => self.with2(&name!("Out_imm8_", accn), port as u32, acc),
        };
        if let Some(i) = ins {
            self.emit(i, 0, true);
        }
    }
}

/// An operand for `make`.
#[derive(Clone, Copy, Debug)]
enum O {
    R(R),
    M(MemoryOperand),
    I(i32),
    U(u32),
    Q(u64),
    N,
}

impl From<R> for O {
    fn from(r: R) -> O {
        O::R(r)
    }
}
impl From<MemoryOperand> for O {
    fn from(m: MemoryOperand) -> O {
        O::M(m)
    }
}
impl From<i32> for O {
    fn from(v: i32) -> O {
        O::I(v)
    }
}
impl From<u32> for O {
    fn from(v: u32) -> O {
        O::U(v)
    }
}
impl From<u64> for O {
    fn from(v: u64) -> O {
        O::Q(v)
    }
}

/// Builds an instruction from a code and up to two operands (`O::N` ends the list).
fn make(c: Code, ops: &[O]) -> Option<Instruction> {
    use O::*;
    let r = match ops {
        [N, ..] | [] => Ok(Instruction::with(c)),
        [a, N] | [a] => match *a {
            R(x) => Instruction::with1(c, x),
            M(x) => Instruction::with1(c, x),
            I(x) => Instruction::with1(c, x),
            U(x) => Instruction::with1(c, x),
            _ => return None,
        },
        [a, b] => match (*a, *b) {
            (R(x), R(y)) => Instruction::with2(c, x, y),
            (R(x), M(y)) => Instruction::with2(c, x, y),
            (M(x), R(y)) => Instruction::with2(c, x, y),
            (R(x), I(y)) => Instruction::with2(c, x, y),
            (M(x), I(y)) => Instruction::with2(c, x, y),
            (R(x), U(y)) => Instruction::with2(c, x, y),
            (M(x), U(y)) => Instruction::with2(c, x, y),
            (R(x), Q(y)) => Instruction::with2(c, x, y),
            (U(x), R(y)) => Instruction::with2(c, x, y),
            _ => return None,
        },
        _ => return None,
    };
    r.ok()
}

fn cond_code(i: usize) -> ConditionCode {
    use ConditionCode as C;
    [
        C::o,
        C::no,
        C::b,
        C::ae,
        C::e,
        C::ne,
        C::be,
        C::a,
        C::s,
        C::ns,
        C::p,
        C::np,
        C::l,
        C::ge,
        C::le,
        C::g,
    ][i]
}

/// Lays out and encodes the steps with iced-x86's `CodeAssembler` (and so its `BlockEncoder`): the
/// reference for `layout::assemble`, and the fallback where that declines.
pub(super) fn assemble_iced(
    mode: Mode,
    steps: &[Step],
    labels: usize,
) -> Result<Vec<u8>, iced_x86::IcedError> {
    // Labels placed back to back share one position: alias them to the first.
    let mut alias: Vec<usize> = (0..labels).collect();
    let mut run: Option<usize> = None;
    for s in steps {
        match s {
            Step::Label(l) => match run {
                Some(first) => alias[*l] = first,
                None => run = Some(*l),
            },
            _ => run = None,
        }
    }
    let mut a = CodeAssembler::new(mode.bitness())?;
    let mut ls: Vec<CodeLabel> = (0..labels).map(|_| a.create_label()).collect();
    let mut prev_label = false;
    for s in steps {
        match s {
            Step::Label(l) => {
                if !prev_label {
                    a.set_label(&mut ls[alias[*l]])?;
                }
                prev_label = true;
                continue;
            }
            Step::Ins(i, ..) => a.add_instruction(*i)?,
            Step::Jmp(l) => a.jmp(ls[alias[*l]])?,
            Step::Call(l) => a.call(ls[alias[*l]])?,
            Step::Jcc(cc, l) => {
                let t = ls[alias[*l]];
                match cc {
                    0 => a.jo(t)?,
                    1 => a.jno(t)?,
                    2 => a.jb(t)?,
                    3 => a.jae(t)?,
                    4 => a.je(t)?,
                    5 => a.jne(t)?,
                    6 => a.jbe(t)?,
                    7 => a.ja(t)?,
                    8 => a.js(t)?,
                    9 => a.jns(t)?,
                    10 => a.jp(t)?,
                    11 => a.jnp(t)?,
                    12 => a.jl(t)?,
                    13 => a.jge(t)?,
                    14 => a.jle(t)?,
                    _ => a.jg(t)?,
                }
            }
            Step::Short(kind, l) => {
                let t = ls[alias[*l]];
                match (kind, mode) {
                    (0, _) => a.loop_(t)?,
                    (1, _) => a.loope(t)?,
                    (2, _) => a.loopne(t)?,
                    (_, Mode::Real16) => a.jcxz(t)?,
                    (_, Mode::Prot32) => a.jecxz(t)?,
                    _ => a.jrcxz(t)?,
                }
            }
        }
        prev_label = false;
    }
    a.hlt()?;
    a.assemble(CODE)
}

/// Whether a generated instruction may deliver an exception (#DE, #BP, #OF, or #GP for I/O and
/// CLI/STI at CPL3), which pushes RFLAGS.
fn may_fault(m: Mnemonic) -> bool {
    matches!(
        m,
        Mnemonic::Div
            | Mnemonic::Idiv
            | Mnemonic::Int
            | Mnemonic::Int3
            | Mnemonic::Into
            | Mnemonic::In
            | Mnemonic::Out
            | Mnemonic::Insb
            | Mnemonic::Insw
            | Mnemonic::Insd
            | Mnemonic::Outsb
            | Mnemonic::Outsw
            | Mnemonic::Outsd
            | Mnemonic::Cli
            | Mnemonic::Sti
            | Mnemonic::Aam
    )
}

/// The starting registers and the program's steps (placed labels included), before layout.
fn program<'a>(opts: &Options, src: &'a mut dyn Source) -> (Gen<'a>, crate::case::RegsInit) {
    let mode = opts.mode;
    let mut g = Gen {
        src,
        mode,
        opts: opts.clone(),
        steps: Vec::new(),
        undef: 0,
        labels: 0,
        pending: Vec::new(),
        depth: 0,
        plain: false,
        protect_bp: false,
        avoid: None,
        io_in: Vec::new(),
        count: 0,
        enc: Encoder::new(mode.bitness()),
        pooled: 0,
    };
    // Starting state.
    let wide = if mode == Mode::Long64 { 8 } else { 4 };
    let mut regs = crate::case::RegsInit::default();
    let mut vals = [0u64; 16];
    for (i, v) in vals.iter_mut().enumerate() {
        let r = g.src.next_u64();
        let p = g.src.next_u64();
        let size = *[1u64, 2, 4, 8].get(g.below(4) as usize).unwrap();
        *v = interesting(size.min(wide), r, p);
        if i >= 8 && mode != Mode::Long64 {
            *v = 0;
        }
    }
    vals[3] = DATA;
    vals[4] = STACK_TOP;
    let set = |v: u64| Some(Hex(v));
    regs.rax = set(vals[0]);
    regs.rcx = set(vals[1]);
    regs.rdx = set(vals[2]);
    regs.rbx = set(vals[3]);
    regs.rsp = set(vals[4]);
    regs.rbp = set(vals[5]);
    regs.rsi = set(vals[6]);
    regs.rdi = set(vals[7]);
    if mode == Mode::Long64 {
        regs.r8 = set(vals[8]);
        regs.r9 = set(vals[9]);
        regs.r10 = set(vals[10]);
        regs.r11 = set(vals[11]);
        regs.r12 = set(vals[12]);
        regs.r13 = set(vals[13]);
        regs.r14 = set(vals[14]);
        regs.r15 = set(vals[15]);
    }
    // IF is set in long64: the harness enters CPL3 with IF=1 whatever the case says (see the report).
    let mut flags = (g.src.next_u64() & (STATUS | DF | fl::IF)) | 2;
    if mode == Mode::Long64 {
        flags |= fl::IF;
    }
    regs.rflags = set(flags);
    regs.rip = set(CODE);
    // The program.
    for _ in 0..opts.len {
        g.place_due(false);
        g.one();
        g.count += 1;
    }
    g.place_due(true);
    (g, regs)
}

/// A program's steps, label count and byte pool, for the layout tests.
#[cfg(test)]
pub(super) fn steps_of(opts: &Options, src: &mut dyn Source) -> (Vec<Step>, usize, Vec<u8>) {
    let (mut g, _) = program(opts, src);
    let pool = g.enc.take_buffer();
    (std::mem::take(&mut g.steps), g.labels, pool)
}

/// Builds one case.
pub(super) fn build(opts: &Options, src: &mut dyn Source, name: &str) -> Case {
    let mode = opts.mode;
    let (mut g, regs) = program(opts, src);
    let pool = g.enc.take_buffer();
    let fast = super::layout::assemble(mode, &g.steps, g.labels, &pool);
    let code_bytes = match fast.map_or_else(|| assemble_iced(mode, &g.steps, g.labels), Ok) {
        Ok(b) => b,
        Err(e) => {
            if std::env::var("GEN_DEBUG").is_ok() {
                eprintln!("assemble: {e}");
            }
            // A short branch out of reach (rare): drop the branches and assemble straight code.
            let straight: Vec<Step> = g
                .steps
                .iter()
                .filter(|s| matches!(s, Step::Ins(i, ..) if i.mnemonic() != Mnemonic::Ret))
                .cloned()
                .collect();
            assemble_iced(mode, &straight, 0).unwrap_or_else(|_| vec![0xf4])
        }
    };
    // Data: zeros, ones and random bytes in runs.
    let mut data = vec![0u8; DATA_LEN as usize];
    let mut i = 0;
    while i < data.len() {
        let run = 1 + g.below(64) as usize;
        let kind = g.below(3);
        let end = (i + run).min(data.len());
        match kind {
            0 => {} // already zero
            1 => data[i..end].fill(0xff),
            _ => g.src.fill_low_bytes(&mut data[i..end]),
        }
        i += run;
    }
    let mut case = Case::new(name, mode, CODE, code_bytes);
    case.regs = regs;
    case.stubs = opts.stubs;
    case.io_in = std::mem::take(&mut g.io_in);
    if opts.data_mmio {
        case.mmio.push(MmioRegion {
            addr: Hex(DATA),
            len: Hex(DATA_LEN),
            hex: HexBytes(data),
        });
    } else {
        case.memory.push(MemInit {
            addr: Hex(DATA),
            hex: HexBytes(data),
        });
    }
    case.dump.push(Dump {
        addr: Hex(DATA),
        len: Hex(DATA_LEN),
    });
    case.dump.push(Dump {
        addr: Hex(STACK_LOW),
        len: Hex(STACK_TOP - STACK_LOW),
    });
    case
}

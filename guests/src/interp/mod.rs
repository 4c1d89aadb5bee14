//! The reference x86 interpreter: runs a case on a model of the harness's VM (same image, CPU state,
//! MMIO and I/O rules) and returns the result KVM should produce, field for field.
//!
//! Instructions are decoded by iced-x86, classified once per decoded `Code` into a family
//! ([`decode::Op`]) and cached by linear address; each family lives in its own module with its flag
//! arithmetic as small pure functions ([`flags`]). The commonest register/immediate forms (ALU,
//! MOV, INC/DEC/NEG/NOT, shifts by an immediate, IMUL) also get a handler specialised at decode
//! time for their operation and operand size, which the run loop calls directly. Exceptions are
//! delivered the way the CPU does it (IVT or IDT gates read from guest memory, frames pushed into
//! guest memory), and the case ends the way the harness sees it: a HLT, maybe in an exception stub
//! whose frame is then decoded.
//!
//! Limits: at most [`INSTRUCTION_CAP`] instructions (then `Exit::Timeout`); host-dependent
//! instructions (CPUID, RDTSC, RDMSR, …) and everything else outside issue 3's list end the case
//! with `Exit::UnsupportedInstruction`.

pub mod flags;

mod addr;
mod alu;
mod bcd;
mod bits;
mod branch;
mod data;
pub mod decode;
mod except;
mod flagops;
mod io;
pub mod mem;
mod muldiv;
mod shift;
mod stack;
mod string;

use crate::case::{Case, Mode};
use crate::layout::{CpuState, GuestModel, Layout, Segment};
use crate::num::{Hex, HexBytes};
use crate::result::{CaseResult, Event, Exit, MemDump};
use decode::{Entry, ICache, Loc, Op};
use iced_x86::{Instruction, Register};
use mem::{PhysMem, Touch};

/// Instructions (string-op iterations count one each) after which a case ends in `Exit::Timeout`.
///
/// 20 million: about 0.2–0.5 s of interpretation, far more than any generated program runs, and a
/// loop that runs this long in the interpreter would also outlast KVM's default 1 s deadline only if
/// it never ends, which is what the cap is for.
pub const INSTRUCTION_CAP: u64 = 20_000_000;

/// Why execution stopped (not an exception: those are delivered to the guest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// HLT executed at CPL0 (rip is past it).
    Hlt,
    /// Triple fault.
    Shutdown,
    /// The exit budget ran out.
    Budget,
    /// The instruction cap ran out.
    Timeout,
    /// An instruction or situation the interpreter does not model.
    Unsupported {
        /// Linear address of the instruction.
        rip: u64,
        /// Its bytes.
        bytes: Vec<u8>,
        /// Mnemonic, or what is not modelled.
        what: String,
    },
}

/// An exception raised by an instruction, or a reason to stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Exception `vector` with an optional error code.
    Exc(u8, Option<u32>),
    /// Stop the case (boxed: results stay two words wide on the hot path).
    Stop(Box<Stop>),
    /// Not modelled: the string says what.
    Unsupported(Box<str>),
}

impl Fault {
    /// A `Fault::Unsupported` saying what is not modelled.
    pub(crate) fn unsupported(what: impl Into<String>) -> Fault {
        Fault::Unsupported(what.into().into_boxed_str())
    }
}

/// Shorthand for an instruction's outcome.
pub(crate) type Res<T = ()> = Result<T, Fault>;

/// #GP(0).
pub(crate) const GP0: Fault = Fault::Exc(13, Some(0));
/// #UD.
pub(crate) const UD: Fault = Fault::Exc(6, None);
/// #DE.
pub(crate) const DE: Fault = Fault::Exc(0, None);
/// #SS(0).
pub(crate) const SS0: Fault = Fault::Exc(12, Some(0));

/// Everything a finished run reports.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The result, comparable with the harness's.
    pub result: CaseResult,
    /// RFLAGS bits whose final value is architecturally undefined (mask them when comparing).
    pub undefined: u64,
    /// Whether some instruction read a flag that was undefined at the time (the run's outcome may then
    /// depend on the CPU vendor).
    pub tainted: bool,
    /// Instructions executed (string iterations counted one each).
    pub instructions: u64,
}

/// Runs `case` in the interpreter.
pub fn run(case: &Case) -> CaseResult {
    Machine::new(case).run().result
}

/// Runs `case` and also returns the mask of RFLAGS bits that are undefined at the end.
pub fn run_with_undefined(case: &Case) -> (CaseResult, u64) {
    let o = Machine::new(case).run();
    (o.result, o.undefined)
}

/// A steppable model of one vCPU and its memory.
pub struct Machine {
    /// Architectural state.
    pub cpu: CpuState,
    mode: Mode,
    cpl: u8,
    mem: PhysMem,
    name: String,
    io_in: Vec<u64>,
    io_pos: usize,
    trace: Vec<Event>,
    budget: u64,
    cap: u64,
    count: u64,
    undef: u64,
    tainted: bool,
    /// Per-instruction override of (modified, undefined) flags for dynamic cases.
    fl_override: Option<(u64, u64)>,
    next_rip: u64,
    /// The current instruction's resolved operands.
    locs: [Loc; 3],
    imm: u64,
    icache: ICache,
    tlb: addr::Tlb,
    initial_cs: Segment,
    initial_ss: Segment,
    over_budget: bool,
    dumps: Vec<(u64, u64)>,
    deadline_ms: u64,
    budget_cfg: u32,
}

impl Machine {
    /// A machine in the state the harness starts `case` in.
    pub fn new(case: &Case) -> Machine {
        let model = GuestModel::build(case);
        let mut mem = PhysMem::new(model.layout.clone(), model.mmio);
        for (a, b) in &model.image {
            mem.load(*a, b);
        }
        // Page tables are watched: writes to them flush the decode cache.
        if case.mode == Mode::Long64 {
            for (a, b) in &model.image {
                if *a >= model.layout.reserved + crate::layout::PT_OFF {
                    let mut p = *a;
                    while p < a + b.len() as u64 {
                        mem.watch(p);
                        p += mem::PAGE;
                    }
                }
            }
        }
        Machine {
            cpu: model.cpu.clone(),
            mode: case.mode,
            cpl: case.cpl,
            mem,
            name: case.name.clone(),
            io_in: case.io_in.iter().map(|i| i.value.0).collect(),
            io_pos: 0,
            trace: Vec::new(),
            budget: u64::from(case.exit_budget()),
            cap: INSTRUCTION_CAP,
            count: 0,
            undef: 0,
            tainted: false,
            fl_override: None,
            next_rip: 0,
            locs: [Loc::Other; 3],
            imm: 0,
            icache: ICache::new(),
            tlb: addr::Tlb::default(),
            initial_cs: model.cpu.cs,
            initial_ss: model.cpu.ss,
            over_budget: false,
            dumps: case.dump.iter().map(|d| (d.addr.0, d.len.0)).collect(),
            deadline_ms: case.deadline_ms(),
            budget_cfg: case.exit_budget(),
        }
    }

    /// Sets the instruction cap (default [`INSTRUCTION_CAP`]).
    pub fn set_cap(&mut self, cap: u64) {
        self.cap = cap;
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.mem.layout
    }

    /// The trace so far.
    pub fn trace(&self) -> &[Event] {
        &self.trace
    }

    /// Runs to the end and builds the result.
    pub fn run(mut self) -> Outcome {
        let stop = loop {
            if let Err(s) = self.step() {
                break s;
            }
        };
        self.finish(stop)
    }

    /// Executes one instruction (delivering any exception it raises).
    #[inline]
    pub fn step(&mut self) -> Result<(), Stop> {
        if self.count >= self.cap {
            return Err(Stop::Timeout);
        }
        self.count += 1;
        match self.exec_one() {
            Ok(()) if self.over_budget => Err(Stop::Budget),
            Ok(()) => Ok(()),
            Err(Fault::Stop(s)) => Err(*s),
            Err(Fault::Unsupported(what)) => Err(self.unsupported(&what)),
            Err(Fault::Exc(v, e)) => self.deliver(v, e, None),
        }
    }

    /// Runs to the end like [`Machine::run`], but before each instruction `take` may execute it
    /// itself (with [`Machine::retire`]): `Ok(true)` when it did, `Ok(false)` to let the
    /// interpreter execute it, `Err(stop)` to end the run there.
    pub fn run_with(mut self, mut take: impl FnMut(&mut Machine) -> Result<bool, Stop>) -> Outcome {
        let stop = loop {
            let r = match take(&mut self) {
                Ok(true) => Ok(()),
                Ok(false) => self.step(),
                Err(s) => Err(s),
            };
            if let Err(s) = r {
                break s;
            }
        };
        self.finish(stop)
    }

    /// The instruction at RIP, decoded without side effects (`None` when it does not decode).
    pub fn next_instruction(&self) -> Option<Instruction> {
        self.peek_instruction(self.code_linear(self.cpu.rip)).0
    }

    /// The RFLAGS bits that are undefined now: left undefined by an instruction and not written
    /// since. Reading one taints the run.
    pub fn undefined_flags(&self) -> u64 {
        self.undef
    }

    /// The linear address of memory operand `op` of `ins` (the instruction at RIP) in the current
    /// state (segment base included), or `None` when the operand has none.
    pub fn operand_linear(&self, ins: &Instruction, op: u32) -> Option<u64> {
        ins.virtual_address(op, 0, |r, _, _| {
            Some(match r {
                Register::ES => self.cpu.es.base,
                Register::CS => self.cpu.cs.base,
                Register::SS => self.cpu.ss.base,
                Register::DS => self.cpu.ds.base,
                Register::FS => self.cpu.fs.base,
                Register::GS => self.cpu.gs.base,
                r if r.is_gpr() => self.reg(r),
                _ => return None,
            })
        })
    }

    /// The guest-physical address of linear address `lin`, translated without side effects.
    pub fn physical(&self, lin: u64) -> Option<u64> {
        self.translate_peek(lin)
    }

    /// `len` bytes of guest-physical memory from `pa` as a dump would read them (no trace).
    pub fn peek_physical(&self, pa: u64, len: u64) -> Vec<u8> {
        self.mem.dump(pa, len)
    }

    /// Retires `ins`, the instruction at RIP, with an outcome computed elsewhere: the general
    /// registers become `gpr`, RFLAGS `rflags`, the RFLAGS bits in `undefined` (and only those)
    /// are undefined afterwards, `events` (its MMIO or port accesses) join the trace, and RIP
    /// moves past it. Counts as one instruction; `Err` when the instruction cap has run out or
    /// the events used up the exit budget.
    pub fn retire(
        &mut self,
        ins: &Instruction,
        gpr: [u64; 16],
        rflags: u64,
        undefined: u64,
        events: &[Event],
    ) -> Result<(), Stop> {
        if self.count >= self.cap {
            return Err(Stop::Timeout);
        }
        self.count += 1;
        for e in events {
            // Recording an event cannot fault.
            let _ = self.event(*e);
        }
        self.cpu.gpr = gpr;
        self.cpu.rflags = rflags;
        self.undef = undefined;
        self.cpu.rip = ins.next_ip() & self.ip_mask();
        if self.over_budget {
            return Err(Stop::Budget);
        }
        Ok(())
    }

    fn unsupported(&mut self, what: &str) -> Stop {
        let lin = self.code_linear(self.cpu.rip);
        let mut bytes = Vec::new();
        let (ins, _) = self.peek_instruction(lin);
        if let Some(ins) = ins {
            for i in 0..ins.len() as u64 {
                bytes.push(self.peek_linear(lin + i).unwrap_or(0));
            }
        }
        Stop::Unsupported {
            rip: lin,
            bytes,
            what: what.to_string(),
        }
    }

    /// Decodes the instruction at linear `lin` for reporting, without side effects.
    fn peek_instruction(&self, lin: u64) -> (Option<Instruction>, usize) {
        let mut buf = [0u8; 15];
        let mut n = 0;
        while n < 15 {
            match self.peek_linear(lin + n as u64) {
                Some(b) => buf[n] = b,
                None => break,
            }
            n += 1;
        }
        let mut d = iced_x86::Decoder::with_ip(
            self.mode.bitness(),
            &buf[..n],
            self.cpu.rip,
            iced_x86::DecoderOptions::NONE,
        );
        let ins = d.decode();
        (Some(ins).filter(|i| !i.is_invalid()), n)
    }

    #[inline(always)]
    fn exec_one(&mut self) -> Res {
        let rip = self.cpu.rip;
        let lin = self.code_linear(rip);
        let e = self.fetch(lin, rip)?;
        if let Some(f) = e.fast {
            // A register/immediate form with a specialised handler: it cannot fault and sets no
            // flag override, so only the bookkeeping remains. Only the few fields it needs are
            // read from the cache; the general path copies the whole entry.
            let (imm, reads, modified, undefined) = (e.imm, e.reads, e.modified, e.undefined);
            let next_ip = e.ins.next_ip();
            let reads_undefined = u64::from(reads) & self.undef != 0;
            (f.run)(self, usize::from(f.dst), usize::from(f.src), imm);
            self.tainted |= reads_undefined;
            self.undef = (self.undef & !u64::from(modified)) | u64::from(undefined);
            self.cpu.rip = next_ip & self.ip_mask();
            return Ok(());
        }
        let e: Entry = *e;
        self.exec(&e)
    }

    /// Executes the decoded instruction `e` at `cpu.rip` by the general path (its specialised
    /// handler, if any, is not used).
    #[inline(always)]
    fn exec(&mut self, e: &Entry) -> Res {
        let ins = &e.ins;
        let reads_undefined = u64::from(e.reads) & self.undef != 0;
        self.next_rip = ins.next_ip() & self.ip_mask();
        self.fl_override = None;
        self.locs = e.locs;
        self.imm = e.imm;
        self.dispatch(ins, e.op)?;
        // A shift by 0 or a REP with count 0 neither reads nor writes flags.
        if reads_undefined && self.fl_override != Some((0, 0)) {
            self.tainted = true;
        }
        let (modified, undefined) = self
            .fl_override
            .unwrap_or((u64::from(e.modified), u64::from(e.undefined)));
        self.undef = (self.undef & !modified) | undefined;
        self.cpu.rip = self.next_rip;
        Ok(())
    }

    #[inline(always)]
    fn dispatch(&mut self, ins: &Instruction, op: Op) -> Res {
        match op {
            Op::Alu(k) => self.alu(ins, k),
            Op::Unary(k) => self.unary(ins, k),
            Op::Shift(k) => self.shift(ins, k),
            Op::ShiftDouble(left) => self.shift_double(ins, left),
            Op::Mul(k) => self.muldiv(ins, k),
            Op::Bit(k) => self.bits(ins, k),
            Op::Data(k) => self.data(ins, k),
            Op::Stack(k) => self.stack(ins, k),
            Op::Branch(k) => self.branch(ins, k),
            Op::Str(k) => self.string(ins, k),
            Op::Io(k) => self.io(ins, k),
            Op::Bcd(k) => self.bcd(ins, k),
            Op::Flag(k) => self.flagop(ins, k),
            Op::Hlt => self.hlt(),
            Op::Ud => Err(UD),
            Op::Nop => Ok(()),
        }
    }

    fn hlt(&mut self) -> Res {
        if self.cpl != 0 {
            return Err(GP0);
        }
        self.cpu.rip = self.next_rip;
        Err(Fault::Stop(Box::new(Stop::Hlt)))
    }

    /// Mask of the instruction pointer in the current mode.
    #[inline]
    fn ip_mask(&self) -> u64 {
        match self.mode {
            Mode::Real16 => 0xffff,
            Mode::Prot32 => 0xffff_ffff,
            Mode::Long64 => u64::MAX,
        }
    }

    #[inline]
    fn code_linear(&self, rip: u64) -> u64 {
        match self.mode {
            Mode::Long64 => rip,
            Mode::Prot32 => (self.cpu.cs.base.wrapping_add(rip)) & 0xffff_ffff,
            Mode::Real16 => self.cpu.cs.base + (rip & 0xffff),
        }
    }

    /// Records a port or MMIO event. Like the harness, which stops once `events + 1` exceeds the
    /// budget and then lets KVM complete the pending access without recording it, the instruction
    /// (or string iteration) in flight completes and later events are not recorded.
    fn event(&mut self, e: Event) -> Res {
        if !self.over_budget {
            self.trace.push(e);
            if self.trace.len() as u64 + 1 > self.budget {
                self.over_budget = true;
            }
        }
        Ok(())
    }

    // ---- general registers ----

    /// Reads a general register (any size, incl. AH–BH).
    #[inline]
    pub(crate) fn reg(&self, r: Register) -> u64 {
        let (i, size, shift) = gpr_loc(r);
        (self.cpu.gpr[i] >> shift) & flags::mask(size)
    }

    /// Writes a general register with x86 rules: 8/16-bit merge, 32-bit zero-extends.
    #[inline]
    pub(crate) fn set_reg(&mut self, r: Register, v: u64) {
        let (i, size, shift) = gpr_loc(r);
        let g = &mut self.cpu.gpr[i];
        match size {
            1 | 2 => {
                let m = flags::mask(size) << shift;
                *g = (*g & !m) | ((v << shift) & m);
            }
            4 => *g = v & 0xffff_ffff,
            _ => *g = v,
        }
    }

    /// Writes general register number `i` with `size` bytes (no high-byte registers).
    #[inline]
    pub(crate) fn set_gpr(&mut self, i: usize, size: u32, v: u64) {
        let g = &mut self.cpu.gpr[i];
        match size {
            1 | 2 => {
                let m = flags::mask(size);
                *g = (*g & !m) | (v & m);
            }
            4 => *g = v & 0xffff_ffff,
            _ => *g = v,
        }
    }

    /// Sets the status flags in `mask` to `f`.
    #[inline]
    pub(crate) fn set_flags(&mut self, mask: u64, f: u64) {
        self.cpu.rflags = (self.cpu.rflags & !mask) | (f & mask);
    }

    #[inline]
    pub(crate) fn flag(&self, f: u64) -> bool {
        self.cpu.rflags & f != 0
    }

    fn finish(mut self, stop: Stop) -> Outcome {
        let exit = match &stop {
            Stop::Hlt => Exit::Hlt,
            Stop::Shutdown => Exit::Shutdown,
            Stop::Budget => Exit::ExitBudget {
                exits: self.budget_cfg,
            },
            Stop::Timeout => Exit::Timeout {
                ms: self.deadline_ms,
            },
            Stop::Unsupported { rip, bytes, what } => Exit::UnsupportedInstruction {
                rip: Hex(*rip),
                bytes: HexBytes(bytes.clone()),
                mnemonic: what.clone(),
            },
        };
        let mut cpu = self.cpu.clone();
        let mut exit = exit;
        if stop == Stop::Hlt
            && let Some((e, c)) = self.stub_exit()
        {
            exit = e;
            cpu = c;
        }
        let mut result = CaseResult::from_state(&self.name, exit, &cpu);
        result.trace = std::mem::take(&mut self.trace);
        for &(a, l) in &self.dumps {
            let hex = self.mem.dump(a, l);
            result.memory.push(MemDump {
                addr: Hex(a),
                hex: HexBytes(hex),
            });
        }
        Outcome {
            result,
            undefined: self.undef,
            tainted: self.tainted,
            instructions: self.count,
        }
    }

    /// A HLT in an exception stub: the exit and state the harness reports, rebuilt from the frame
    /// the way `harness/src/run.rs` (`interrupted_context`) does it.
    fn stub_exit(&self) -> Option<(Exit, CpuState)> {
        use crate::layout::{decode_descriptor, decode_frame, frame_len};
        let l = &self.mem.layout;
        let v = l.stub_vector(self.cpu.cs.selector, self.cpu.cs.base, self.cpu.rip)?;
        let mut cpu = self.cpu.clone();
        let sp_mask = self.ip_mask();
        let sp = cpu.gpr[4] & sp_mask;
        let at = cpu.ss.base.wrapping_add(sp);
        let bytes: Vec<u8> = (0..frame_len(self.mode, v) as u64)
            .map(|i| self.mem.peek(at.wrapping_add(i)))
            .collect();
        let f = decode_frame(self.mode, v, sp, &bytes);
        let gdt = |sel: u16| {
            let d = (0..8u64).fold(0u64, |acc, i| {
                acc | (u64::from(self.mem.peek(cpu.gdt.base + u64::from(sel & !7) + i)) << (8 * i))
            });
            decode_descriptor(sel, d)
        };
        cpu.rip = f.rip;
        cpu.gpr[4] = match self.mode {
            Mode::Long64 => f.rsp,
            _ => (cpu.gpr[4] & !sp_mask) | f.rsp,
        };
        if self.mode == Mode::Real16 {
            cpu.rflags = (cpu.rflags & !0xffff) | (f.rflags & 0xffff);
            cpu.cs = Segment {
                selector: f.cs,
                base: u64::from(f.cs) << 4,
                limit: 0xffff,
                attributes: self.initial_cs.attributes,
            };
        } else {
            cpu.rflags = f.rflags;
            cpu.cs = gdt(f.cs);
            if let Some(ss) = f.ss {
                cpu.ss = if ss & !3 == 0 {
                    Segment {
                        selector: ss,
                        ..self.initial_ss
                    }
                } else {
                    gdt(ss)
                };
            }
        }
        if f.cs & 3 == 3 && v == 13 && f.error_code == Some(0) {
            let b = self.mem.peek(cpu.cs.base.wrapping_add(f.rip));
            if b == 0xf4 {
                cpu.rip = f.rip + 1;
                cpu.rflags &= !flags::RF;
                return Some((Exit::Hlt, cpu));
            }
        }
        let exit = Exit::Exception {
            vector: v,
            error_code: f.error_code.map(Hex),
            cr2: (v == 14).then_some(Hex(self.cpu.cr2)),
        };
        Some((exit, cpu))
    }

    /// The byte at a linear address, translated without side effects (None if unmapped).
    fn peek_linear(&self, lin: u64) -> Option<u8> {
        let pa = self.translate_peek(lin)?;
        Some(self.mem.peek(pa))
    }

    /// Records a RAM or MMIO touch: events for MMIO, cache flushes for watched pages.
    #[inline]
    fn touched(&mut self, t: Touch, pa: u64, size: u32, val: u64, write: bool) -> Res {
        match t {
            Touch::Ram { watched } => {
                if watched {
                    self.icache.flush();
                    self.tlb.flush();
                }
                Ok(())
            }
            Touch::Mmio => self.event(if write {
                Event::mmio_write(pa, size as u8, val)
            } else {
                Event::mmio_read(pa, size as u8, val)
            }),
        }
    }
}

/// The size in bytes of a register (general registers by arithmetic, others via iced).
#[inline]
pub(crate) fn gpr_size(r: Register) -> u32 {
    match r as usize {
        1..=20 => 1,
        21..=36 => 2,
        37..=52 => 4,
        53..=68 => 8,
        _ => r.size() as u32,
    }
}

/// (index, size, shift) of a general register in `CpuState::gpr`.
#[inline]
pub(crate) fn gpr_loc(r: Register) -> (usize, u32, u32) {
    let v = r as usize;
    match v {
        1..=4 => (v - 1, 1, 0),
        5..=8 => (v - 5, 1, 8),
        9..=20 => (v - 5, 1, 0),
        21..=36 => (v - 21, 2, 0),
        37..=52 => (v - 37, 4, 0),
        53..=68 => (v - 53, 8, 0),
        _ => panic!("not a general register: {r:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decode-time specialised handlers against the general path, on random register forms
    /// (random bytes, kept when they decode to a form with a handler) and random states.
    #[test]
    fn fast_handlers_match_the_general_path() {
        use crate::r#gen::source::{Source, SplitMix};
        let mut rng = SplitMix(0xfa57);
        let openers: &[&[u8]] = &[
            &[],
            &[0x66],
            &[0x48],
            &[0x4d],
            &[0x41],
            &[0x40],
            &[0x66, 0x45],
            &[0x0f, 0xaf],
            &[0x48, 0x0f, 0xaf],
            &[0x66, 0x0f, 0xaf],
        ];
        let mut seen = std::collections::BTreeSet::new();
        let mut checked = 0;
        for mode in [Mode::Real16, Mode::Prot32, Mode::Long64] {
            for _ in 0..20_000 {
                let mut code: Vec<u8> = rng.pick(openers).to_vec();
                let first = *rng.pick(&[
                    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x08, 0x11, 0x18, 0x21, 0x29, 0x31, 0x38,
                    0x3d, 0x69, 0x6b, 0x80, 0x81, 0x83, 0x84, 0x85, 0xa8, 0xc0, 0xc1, 0xd0, 0xd1,
                    0xf6, 0xf7, 0xfe, 0xff, 0x40, 0x48, 0x88, 0x89, 0x8a, 0x8b, 0xb0, 0xb4, 0xb8,
                    0xbc, 0xc6, 0xc7,
                ]);
                code.push(first);
                // ModRM with mod = 3 mostly (register operands), then immediate bytes.
                let modrm = rng.next_u64() as u8;
                code.push(if rng.chance(90) { modrm | 0xc0 } else { modrm });
                code.extend((0..8).map(|_| rng.next_u64() as u8));
                code.push(0xf4);
                let case = Case::new("fast", mode, 0x1000, code);
                let mut a = Machine::new(&case);
                let mut b = Machine::new(&case);
                let lin = a.code_linear(a.cpu.rip);
                let Ok(e) = a.fetch(lin, a.cpu.rip).copied() else {
                    continue;
                };
                let Some(f) = e.fast else { continue };
                seen.insert(f.run as usize);
                for (i, g) in a.cpu.gpr.iter_mut().enumerate() {
                    *g = if i == 4 { 0x8000 } else { rng.next_u64() };
                }
                a.cpu.rflags = flags::FIXED | (rng.next_u64() & flags::STATUS);
                a.undef = rng.next_u64() & flags::STATUS;
                b.cpu = a.cpu.clone();
                b.undef = a.undef;
                a.step().expect("runs");
                b.count += 1;
                b.exec(&e).expect("runs");
                assert_eq!(a.cpu, b.cpu, "{mode:?} {:?}", e.ins);
                assert_eq!((a.undef, a.tainted), (b.undef, b.tainted), "{:?}", e.ins);
                assert_eq!(a.count, b.count);
                checked += 1;
            }
        }
        assert!(checked > 10_000, "only {checked} fast instructions checked");
        assert!(seen.len() > 100, "only {} handlers reached", seen.len());
    }

    #[test]
    fn gpr_loc_matches_iced_numbering() {
        for r in Register::values().filter(|r| r.is_gpr()) {
            let (i, size, shift) = gpr_loc(r);
            assert_eq!(size as usize, r.size(), "{r:?}");
            let hi = matches!(r, Register::AH | Register::CH | Register::DH | Register::BH);
            assert_eq!(shift, if hi { 8 } else { 0 }, "{r:?}");
            let want = if hi {
                r.number() - 4
            } else {
                r.full_register().number()
            };
            assert_eq!(i, want, "{r:?}");
        }
    }

    /// long64: mov eax, 5; bsr ecx, eax; cmova edx, eax; hlt. BSR leaves CF undefined (SDM 2
    /// BSR), so CMOVA reads an undefined flag.
    fn bsr_then_cmova() -> Case {
        let code = vec![0xb8, 5, 0, 0, 0, 0x0f, 0xbd, 0xc8, 0x0f, 0x47, 0xd0, 0xf4];
        Case::new("bsr_cmova", Mode::Long64, crate::r#gen::CODE, code)
    }

    #[test]
    fn run_with_retires_a_taken_over_instruction_with_the_given_state_and_flags() {
        let plain = Machine::new(&bsr_then_cmova()).run();
        assert!(plain.tainted, "CMOVA after BSR reads an undefined CF");
        assert_eq!(plain.result.regs.rcx.0, 2, "bsr of 5");
        // Take over the BSR: rcx = 0x77, CF and ZF clear and defined.
        let take_bsr = |undefined: u64| {
            move |m: &mut Machine| {
                let ins = m.next_instruction().expect("decodes");
                if ins.mnemonic() != iced_x86::Mnemonic::Bsr {
                    return Ok(false);
                }
                let mut gpr = m.cpu.gpr;
                gpr[1] = 0x77;
                let fl = m.cpu.rflags & !(flags::CF | flags::ZF);
                m.retire(&ins, gpr, fl, undefined, &[]).map(|()| true)
            }
        };
        let o = Machine::new(&bsr_then_cmova()).run_with(take_bsr(0));
        assert!(!o.tainted, "every flag CMOVA reads is defined");
        assert_eq!(o.result.exit, Exit::Hlt);
        assert_eq!(o.result.regs.rcx.0, 0x77);
        assert_eq!(o.result.regs.rdx.0, 5, "CMOVA taken: CF = ZF = 0");
        assert_eq!(o.instructions, plain.instructions);
        // The same with CF left undefined: CMOVA's read taints the run again.
        let o = Machine::new(&bsr_then_cmova()).run_with(take_bsr(flags::CF));
        assert!(o.tainted);
    }
}

//! The guest-physical layout and initial CPU state the harness builds for a case (GDT, TSS, IDT,
//! exception stubs, page tables), as plain data shared by the harness and the reference interpreter.
//!
//! Guest-physical map (R = top of RAM − 2 MiB, the reserved range):
//!
//! | range | owner | contents |
//! |---|---|---|
//! | `0 .. R` | the case | its `memory` images; everything else zero |
//! | `R+0x0000` | harness | GDT (9 slots, see `SEL_*`) |
//! | `R+0x1000` | harness | TSS (64-bit in long64, 32-bit in prot32) |
//! | `R+0x2000` | harness | IDT (32 gates, present only with `stubs` or at CPL3) |
//! | `R+0x3000` | harness | 32 stub handlers, 8 bytes apart: `hlt; jmp $-1` |
//! | `R+0x4000 .. R+0x8000` | harness | exception stack (RSP0 and IST1 point at its top) |
//! | `R+0x8000 ..` | harness | long64 page tables: PML4, PDPT, PDs, PTs |
//! | MMIO regions | harness (userspace) | page-rounded holes with no memslot |
//!
//! real16 puts nothing below 0x110000 unless `stubs` is set; then IVT vectors 0–31 (0x0–0x7f) point
//! at 32 one-byte `hlt` handlers at 0x10ffc0–0x10ffdf (CS=0xffff, IP=0xffd0+vector).

use crate::case::{Case, Mode, PageSize};
use serde::{Deserialize, Serialize};

/// Smallest guest RAM.
pub const MIN_MEMORY_MIB: u32 = 4;
/// Largest guest RAM.
pub const MAX_MEMORY_MIB: u32 = 16_384;
/// Largest RAM with 4 KiB pages everywhere (page tables must fit the reserved range).
pub const MAX_SMALL_PAGE_MIB: u64 = 512;
/// Guest-physical addresses must be below this (one PML4 entry).
pub const ADDRESS_LIMIT: u64 = 1 << 39;
/// Largest MMIO region.
pub const MAX_MMIO_LEN: u64 = 16 << 20;
/// Largest memory dump.
pub const MAX_DUMP_LEN: u64 = 16 << 20;
/// Size of the harness's reserved range at the top of RAM.
pub const RESERVED_SIZE: u64 = 2 << 20;
/// Offset of the GDT in the reserved range.
pub const GDT_OFF: u64 = 0x0;
/// Offset of the TSS in the reserved range.
pub const TSS_OFF: u64 = 0x1000;
/// Offset of the IDT in the reserved range.
pub const IDT_OFF: u64 = 0x2000;
/// Offset of the stub handlers in the reserved range.
pub const STUB_OFF: u64 = 0x3000;
/// Distance between two stub handlers.
pub const STUB_STRIDE: u64 = 8;
/// Offset of the top of the exception stack in the reserved range.
pub const STACK_TOP_OFF: u64 = 0x8000;
/// Offset of the first page-table page (the PML4) in the reserved range.
pub const PT_OFF: u64 = 0x8000;
/// real16 stub handlers' code segment.
pub const REAL_STUB_CS: u16 = 0xffff;
/// real16 stub handler for vector 0 is at CS:this; vector v at CS:this+v.
pub const REAL_STUB_IP: u16 = 0xffd0;
/// Linear address of the real16 stub for vector 0.
pub const REAL_STUB_BASE: u64 = ((REAL_STUB_CS as u64) << 4) + REAL_STUB_IP as u64;
/// The lowest address real16 cases own without restriction when `stubs` is off.
pub const REAL_LOW_LIMIT: u64 = 0x11_0000;

/// GDT selector: 64-bit ring-0 code.
pub const SEL_CODE64: u16 = 0x08;
/// GDT selector: flat ring-0 data.
pub const SEL_DATA: u16 = 0x10;
/// GDT selector: flat 32-bit ring-0 code.
pub const SEL_CODE32: u16 = 0x18;
/// GDT selector: flat ring-3 data (RPL 3).
pub const SEL_DATA3: u16 = 0x23;
/// GDT selector: 64-bit ring-3 code (RPL 3).
pub const SEL_CODE64_3: u16 = 0x2b;
/// GDT selector: flat 32-bit ring-3 code (RPL 3).
pub const SEL_CODE32_3: u16 = 0x33;
/// GDT selector: the TSS (16 bytes in long64).
pub const SEL_TSS: u16 = 0x38;
/// GDT limit (9 eight-byte slots).
pub const GDT_LIMIT: u16 = 9 * 8 - 1;

/// Segment attribute bits, in the VMX access-rights layout used in results.
pub mod attr {
    /// Accessed bit of the type field.
    pub const ACCESSED: u32 = 1;
    /// Descriptor type S (code/data).
    pub const S: u32 = 1 << 4;
    /// Present.
    pub const P: u32 = 1 << 7;
    /// Available to software.
    pub const AVL: u32 = 1 << 12;
    /// 64-bit code.
    pub const L: u32 = 1 << 13;
    /// Default operand size 32 / big.
    pub const DB: u32 = 1 << 14;
    /// 4 KiB limit granularity.
    pub const G: u32 = 1 << 15;
    /// Unusable (VMX) / null selector loaded.
    pub const UNUSABLE: u32 = 1 << 16;
    /// Descriptor privilege level shifted into place.
    pub const fn dpl(d: u32) -> u32 {
        (d & 3) << 5
    }
    /// Code, execute/read, accessed.
    pub const CODE: u32 = 0xb | S | P;
    /// Data, read/write, accessed.
    pub const DATA: u32 = 0x3 | S | P;
}

/// A segment register's selector and hidden part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Segment {
    /// Selector.
    pub selector: u16,
    /// Base address.
    pub base: u64,
    /// Limit in bytes (already scaled by G).
    pub limit: u32,
    /// Attributes (type, S, DPL, P, AVL, L, D/B, G, unusable) in the VMX access-rights layout.
    pub attributes: u32,
}

impl Segment {
    /// Descriptor privilege level.
    pub fn dpl(&self) -> u8 {
        ((self.attributes >> 5) & 3) as u8
    }
    /// Whether this is a 64-bit code segment.
    pub fn long(&self) -> bool {
        self.attributes & attr::L != 0
    }
    /// Whether D/B is set.
    pub fn big(&self) -> bool {
        self.attributes & attr::DB != 0
    }
}

/// A descriptor-table register.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TableReg {
    /// Linear base.
    pub base: u64,
    /// Limit.
    pub limit: u16,
}

/// General registers in x86 encoding order.
pub const GPR_NAMES: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];

/// The architectural state the case starts in (and, in results, ends in).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CpuState {
    /// General registers in encoding order (rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8–r15).
    pub gpr: [u64; 16],
    /// Instruction pointer.
    pub rip: u64,
    /// Flags.
    pub rflags: u64,
    /// CS.
    pub cs: Segment,
    /// DS.
    pub ds: Segment,
    /// ES.
    pub es: Segment,
    /// FS.
    pub fs: Segment,
    /// GS.
    pub gs: Segment,
    /// SS.
    pub ss: Segment,
    /// Task register.
    pub tr: Segment,
    /// LDT register.
    pub ldtr: Segment,
    /// GDTR.
    pub gdt: TableReg,
    /// IDTR.
    pub idt: TableReg,
    /// CR0.
    pub cr0: u64,
    /// CR2.
    pub cr2: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
}

/// CR0 bits.
pub mod cr0 {
    /// Protection enable.
    pub const PE: u64 = 1;
    /// Monitor coprocessor.
    pub const MP: u64 = 1 << 1;
    /// Extension type.
    pub const ET: u64 = 1 << 4;
    /// Numeric error.
    pub const NE: u64 = 1 << 5;
    /// Write protect.
    pub const WP: u64 = 1 << 16;
    /// Paging.
    pub const PG: u64 = 1 << 31;
}

/// CR4 bits.
pub mod cr4 {
    /// Physical address extension.
    pub const PAE: u64 = 1 << 5;
    /// OS supports FXSAVE/SSE.
    pub const OSFXSR: u64 = 1 << 9;
    /// OS supports SIMD exceptions.
    pub const OSXMMEXCPT: u64 = 1 << 10;
}

/// EFER bits.
pub mod efer {
    /// Long mode enable.
    pub const LME: u64 = 1 << 8;
    /// Long mode active.
    pub const LMA: u64 = 1 << 10;
}

/// Page-table entry bits.
pub mod pte {
    /// Present.
    pub const P: u64 = 1;
    /// Writable.
    pub const RW: u64 = 1 << 1;
    /// User.
    pub const US: u64 = 1 << 2;
    /// Accessed (preset so the CPU never writes page tables).
    pub const A: u64 = 1 << 5;
    /// Dirty (preset likewise).
    pub const D: u64 = 1 << 6;
    /// Large page.
    pub const PS: u64 = 1 << 7;
    /// Address bits of an entry.
    pub const ADDR: u64 = 0x000f_ffff_ffff_f000;
}

/// Rounds `[a, end)` out to whole 4 KiB pages.
pub fn page_span(a: u64, end: u64) -> (u64, u64) {
    (a & !0xfff, end.saturating_add(0xfff) & !0xfff)
}

/// Whether exception `vector` pushes an error code (in protected and long mode).
pub fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

/// The guest-physical layout of one case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The CPU mode.
    pub mode: Mode,
    /// Bytes of RAM.
    pub ram_size: u64,
    /// Start of the harness's reserved range.
    pub reserved: u64,
    /// Page-rounded MMIO holes `[start, end)`, sorted.
    pub holes: Vec<(u64, u64)>,
    /// Whether stubs are installed.
    pub stubs: bool,
    /// Privilege level of the case code.
    pub cpl: u8,
    /// Page size policy.
    pub page_size: PageSize,
}

impl Layout {
    /// The layout for `case` (valid or not; validation uses it).
    pub fn for_case(case: &Case) -> Layout {
        let ram_size = u64::from(case.memory_mib) << 20;
        let mut holes: Vec<(u64, u64)> = case
            .mmio
            .iter()
            .map(|m| page_span(m.addr.0, m.addr.0.saturating_add(m.len.0)))
            .collect();
        holes.sort();
        Layout {
            mode: case.mode,
            ram_size,
            reserved: ram_size.saturating_sub(RESERVED_SIZE),
            holes,
            stubs: case.stubs,
            cpl: case.cpl,
            page_size: case.page_size,
        }
    }

    /// The reserved range `[start, end)`.
    pub fn reserved_range(&self) -> (u64, u64) {
        (self.reserved, self.ram_size)
    }

    /// The first harness-owned range that `[a, end)` touches, if any.
    pub fn overlaps_harness(&self, a: u64, end: u64) -> Option<(u64, u64)> {
        let mut owned = vec![self.reserved_range()];
        if self.mode == Mode::Real16 && self.stubs {
            owned.push((0, 32 * 4));
            owned.push((REAL_STUB_BASE, REAL_STUB_BASE + 32));
        }
        owned.into_iter().find(|&(s, e)| a < e && end > s)
    }

    /// RAM ranges backed by memslots: `[0, ram_size)` minus the MMIO holes.
    pub fn ram_slots(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut cur = 0u64;
        for &(hs, he) in &self.holes {
            if hs >= self.ram_size {
                break;
            }
            if hs > cur {
                out.push((cur, hs));
            }
            cur = cur.max(he);
        }
        if cur < self.ram_size {
            out.push((cur, self.ram_size));
        }
        out
    }

    /// Whether a guest-physical address is backed by RAM (a memslot).
    pub fn is_ram(&self, gpa: u64) -> bool {
        gpa < self.ram_size && !self.holes.iter().any(|&(s, e)| gpa >= s && gpa < e)
    }

    /// Linear address of the stub handler for `vector` (prot32/long64).
    pub fn stub_addr(&self, vector: u8) -> u64 {
        self.reserved + STUB_OFF + u64::from(vector) * STUB_STRIDE
    }

    /// Top of the exception stack.
    pub fn stack_top(&self) -> u64 {
        self.reserved + STACK_TOP_OFF
    }

    /// Whether the IDT (or IVT entries) for vectors 0–31 are installed.
    pub fn idt_installed(&self) -> bool {
        self.stubs || self.cpl == 3
    }

    /// The vector whose stub a HLT exit came from: `cs_base`, `selector` and `rip` are as KVM
    /// reports them after the HLT (rip past it).
    pub fn stub_vector(&self, selector: u16, cs_base: u64, rip: u64) -> Option<u8> {
        if !self.idt_installed() {
            return None;
        }
        let at = cs_base.wrapping_add(rip).wrapping_sub(1);
        match self.mode {
            Mode::Real16 => (selector == REAL_STUB_CS
                && (REAL_STUB_BASE..REAL_STUB_BASE + 32).contains(&at))
            .then(|| (at - REAL_STUB_BASE) as u8),
            _ => {
                let base = self.reserved + STUB_OFF;
                let off = at.wrapping_sub(base);
                (at >= base && off < 32 * STUB_STRIDE && off % STUB_STRIDE == 0)
                    .then_some((off / STUB_STRIDE) as u8)
            }
        }
    }
}

/// The frame a stub found on its stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Error code, for vectors that push one (never in real16).
    pub error_code: Option<u64>,
    /// Interrupted RIP.
    pub rip: u64,
    /// Interrupted CS selector.
    pub cs: u16,
    /// Interrupted RFLAGS (low 16 bits in real16).
    pub rflags: u64,
    /// Stack pointer of the interrupted context.
    pub rsp: u64,
    /// SS selector of the interrupted context (long64 only).
    pub ss: Option<u16>,
}

/// Bytes the CPU pushes for `vector` in `mode` (read at SS:RSP when the stub halts).
pub fn frame_len(mode: Mode, vector: u8) -> usize {
    let err = usize::from(has_error_code(vector) && mode != Mode::Real16);
    match mode {
        Mode::Real16 => 6,
        Mode::Prot32 => 4 * (3 + err),
        Mode::Long64 => 8 * (5 + err),
    }
}

/// Decodes a stub's frame from `bytes` (at least `frame_len` long) found at stack pointer `rsp`.
pub fn decode_frame(mode: Mode, vector: u8, rsp: u64, bytes: &[u8]) -> Frame {
    let w = match mode {
        Mode::Real16 => 2,
        Mode::Prot32 => 4,
        Mode::Long64 => 8,
    };
    let word = |i: usize| -> u64 {
        let mut v = [0u8; 8];
        v[..w].copy_from_slice(&bytes[i * w..i * w + w]);
        u64::from_le_bytes(v)
    };
    let e = usize::from(has_error_code(vector) && mode != Mode::Real16);
    let error_code = (e == 1).then(|| word(0));
    let (rip, cs, rflags) = (word(e), word(e + 1) as u16, word(e + 2));
    match mode {
        Mode::Long64 => Frame {
            error_code,
            rip,
            cs,
            rflags,
            rsp: word(e + 3),
            ss: Some(word(e + 4) as u16),
        },
        _ => Frame {
            error_code,
            rip,
            cs,
            rflags,
            rsp: (rsp + frame_len(mode, vector) as u64)
                & if mode == Mode::Real16 {
                    0xffff
                } else {
                    0xffff_ffff
                },
            ss: None,
        },
    }
}

/// Encodes a GDT descriptor from base, byte limit and attributes.
pub fn descriptor(base: u32, limit: u32, attributes: u32) -> u64 {
    let (lim, g) = if attributes & attr::G != 0 {
        (limit >> 12, 1u64)
    } else {
        (limit, 0u64)
    };
    let base = u64::from(base);
    let lim = u64::from(lim);
    (lim & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (u64::from(attributes & 0xff) << 40)
        | (((lim >> 16) & 0xf) << 48)
        | (u64::from((attributes >> 12) & 0x7) << 52)
        | (g << 55)
        | (((base >> 24) & 0xff) << 56)
}

/// Decodes a code/data GDT descriptor as the CPU loads it for `selector` (base, byte limit, attributes).
pub fn decode_descriptor(selector: u16, d: u64) -> Segment {
    let g = (d >> 55) & 1 == 1;
    let raw_limit = ((d & 0xffff) | (((d >> 48) & 0xf) << 16)) as u32;
    let limit = if g {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let base = ((d >> 16) & 0xff_ffff) | (((d >> 56) & 0xff) << 24);
    let attributes = ((d >> 40) & 0xff) as u32 | ((((d >> 52) & 0xf) as u32) << 12);
    Segment {
        selector,
        base,
        limit,
        attributes: if selector & !3 == 0 {
            attr::UNUSABLE
        } else {
            attributes
        },
    }
}

fn flat(sel: u16, attributes: u32) -> Segment {
    Segment {
        selector: sel,
        base: 0,
        limit: 0xffff_ffff,
        attributes,
    }
}

/// What the harness loads before the case starts: RAM contents, CPU state and MMIO buffers.
#[derive(Clone, Debug)]
pub struct GuestModel {
    /// The layout.
    pub layout: Layout,
    /// Byte runs to write into RAM (case images and harness structures), non-overlapping.
    pub image: Vec<(u64, Vec<u8>)>,
    /// The starting CPU state.
    pub cpu: CpuState,
    /// MMIO regions `(addr, initial contents of len bytes)`.
    pub mmio: Vec<(u64, Vec<u8>)>,
}

const TSS_SEG_ATTR: u32 = 0xb | attr::P;

impl GuestModel {
    /// Builds the model for a validated case.
    pub fn build(case: &Case) -> GuestModel {
        let layout = Layout::for_case(case);
        let r = layout.reserved;
        let mut image: Vec<(u64, Vec<u8>)> = case
            .memory
            .iter()
            .filter(|m| !m.hex.0.is_empty())
            .map(|m| (m.addr.0, m.hex.0.clone()))
            .collect();
        let mut gpr = [0u64; 16];
        let g = &case.regs;
        for (i, v) in [
            g.rax, g.rcx, g.rdx, g.rbx, g.rsp, g.rbp, g.rsi, g.rdi, g.r8, g.r9, g.r10, g.r11,
            g.r12, g.r13, g.r14, g.r15,
        ]
        .into_iter()
        .enumerate()
        {
            gpr[i] = v.map_or(0, |h| h.0);
        }
        let mut rflags = g.rflags.map_or(0x2, |h| h.0) | 0x2;
        if let Some(iopl) = case.iopl {
            rflags = (rflags & !0x3000) | (u64::from(iopl) << 12);
        }
        let mut cpu = CpuState {
            gpr,
            rip: g.rip.map_or(0, |h| h.0),
            rflags,
            ..CpuState::default()
        };
        match case.mode {
            Mode::Real16 => {
                let seg = |sel: Option<crate::num::Hex>, a: u32| {
                    let s = sel.map_or(0, |h| h.0) as u16;
                    Segment {
                        selector: s,
                        base: u64::from(s) << 4,
                        limit: 0xffff,
                        attributes: a,
                    }
                };
                let s = &case.segs;
                cpu.cs = seg(s.cs, attr::CODE);
                cpu.ds = seg(s.ds, attr::DATA);
                cpu.es = seg(s.es, attr::DATA);
                cpu.fs = seg(s.fs, attr::DATA);
                cpu.gs = seg(s.gs, attr::DATA);
                cpu.ss = seg(s.ss, attr::DATA);
                cpu.tr = Segment {
                    selector: 0,
                    base: 0,
                    limit: 0xffff,
                    attributes: TSS_SEG_ATTR,
                };
                cpu.ldtr = Segment {
                    selector: 0,
                    base: 0,
                    limit: 0xffff,
                    attributes: 0x2 | attr::P,
                };
                cpu.gdt = TableReg {
                    base: 0,
                    limit: 0xffff,
                };
                cpu.idt = TableReg {
                    base: 0,
                    limit: 0x3ff,
                };
                cpu.cr0 = cr0::ET | cr0::NE;
                cpu.cr4 = cr4::OSFXSR | cr4::OSXMMEXCPT;
                if case.stubs {
                    let mut ivt = Vec::with_capacity(128);
                    for v in 0..32u16 {
                        ivt.extend_from_slice(&(REAL_STUB_IP + v).to_le_bytes());
                        ivt.extend_from_slice(&REAL_STUB_CS.to_le_bytes());
                    }
                    image.push((0, ivt));
                    image.push((REAL_STUB_BASE, vec![0xf4; 32]));
                }
            }
            Mode::Prot32 | Mode::Long64 => {
                let long = case.mode == Mode::Long64;
                let code0 = attr::CODE | attr::G | if long { attr::L } else { attr::DB };
                let data0 = attr::DATA | attr::G | attr::DB;
                let dpl3 = attr::dpl(3);
                // GDT.
                let mut gdt = vec![0u64; 9];
                gdt[(SEL_CODE64 >> 3) as usize] =
                    descriptor(0, 0xffff_ffff, attr::CODE | attr::G | attr::L);
                gdt[(SEL_DATA >> 3) as usize] = descriptor(0, 0xffff_ffff, data0);
                gdt[(SEL_CODE32 >> 3) as usize] =
                    descriptor(0, 0xffff_ffff, attr::CODE | attr::G | attr::DB);
                gdt[(SEL_DATA3 >> 3) as usize] = descriptor(0, 0xffff_ffff, data0 | dpl3);
                gdt[(SEL_CODE64_3 >> 3) as usize] =
                    descriptor(0, 0xffff_ffff, attr::CODE | attr::G | attr::L | dpl3);
                gdt[(SEL_CODE32_3 >> 3) as usize] =
                    descriptor(0, 0xffff_ffff, attr::CODE | attr::G | attr::DB | dpl3);
                let tss_base = r + TSS_OFF;
                gdt[(SEL_TSS >> 3) as usize] = descriptor(tss_base as u32, 0x67, TSS_SEG_ATTR);
                gdt[(SEL_TSS >> 3) as usize + 1] = tss_base >> 32;
                let mut gdt_bytes = Vec::with_capacity(gdt.len() * 8);
                for d in &gdt {
                    gdt_bytes.extend_from_slice(&d.to_le_bytes());
                }
                image.push((r + GDT_OFF, gdt_bytes));
                // TSS: stack pointers at the top of the exception stack, no I/O bitmap.
                let top = layout.stack_top();
                let mut tss = vec![0u8; 0x68];
                if long {
                    tss[4..12].copy_from_slice(&top.to_le_bytes()); // RSP0
                    tss[36..44].copy_from_slice(&top.to_le_bytes()); // IST1
                } else {
                    tss[4..8].copy_from_slice(&(top as u32).to_le_bytes()); // ESP0
                    tss[8..10].copy_from_slice(&SEL_DATA.to_le_bytes()); // SS0
                }
                tss[102..104].copy_from_slice(&0x68u16.to_le_bytes());
                image.push((tss_base, tss));
                // IDT and stubs.
                let installed = layout.idt_installed();
                let gate_size = if long { 16 } else { 8 };
                if installed {
                    let mut idt = Vec::with_capacity(32 * gate_size);
                    for v in 0..32u8 {
                        let off = layout.stub_addr(v);
                        let present = case.stubs || v == 13;
                        let type_attr: u64 = if present { 0x8e | (3 << 5) } else { 0x0e };
                        let sel = u64::from(if long { SEL_CODE64 } else { SEL_CODE32 });
                        let lo = (off & 0xffff)
                            | (sel << 16)
                            | (u64::from(long) << 32) // IST1 in long mode
                            | (type_attr << 40)
                            | (((off >> 16) & 0xffff) << 48);
                        idt.extend_from_slice(&lo.to_le_bytes());
                        if long {
                            idt.extend_from_slice(&(off >> 32).to_le_bytes());
                        }
                    }
                    image.push((r + IDT_OFF, idt));
                    let mut stubs = Vec::with_capacity(32 * STUB_STRIDE as usize);
                    for _ in 0..32 {
                        stubs.extend_from_slice(&[0xf4, 0xeb, 0xfd, 0x90, 0x90, 0x90, 0x90, 0x90]);
                    }
                    image.push((r + STUB_OFF, stubs));
                }
                cpu.gdt = TableReg {
                    base: r + GDT_OFF,
                    limit: GDT_LIMIT,
                };
                cpu.idt = TableReg {
                    base: r + IDT_OFF,
                    limit: if installed {
                        (32 * gate_size - 1) as u16
                    } else {
                        0
                    },
                };
                cpu.tr = Segment {
                    selector: SEL_TSS,
                    base: tss_base,
                    limit: 0x67,
                    attributes: TSS_SEG_ATTR,
                };
                cpu.ldtr = Segment {
                    selector: 0,
                    base: 0,
                    limit: 0,
                    attributes: attr::UNUSABLE,
                };
                let (cs, data) = if case.cpl == 3 {
                    (
                        flat(SEL_CODE64_3, attr::CODE | attr::G | attr::L | dpl3),
                        flat(SEL_DATA3, data0 | dpl3),
                    )
                } else if long {
                    (flat(SEL_CODE64, code0), flat(SEL_DATA, data0))
                } else {
                    (flat(SEL_CODE32, code0), flat(SEL_DATA, data0))
                };
                cpu.cs = cs;
                cpu.ds = data;
                cpu.es = data;
                cpu.fs = data;
                cpu.gs = data;
                cpu.ss = data;
                cpu.cr4 = cr4::OSFXSR | cr4::OSXMMEXCPT;
                if long {
                    cpu.cr0 = cr0::PE | cr0::MP | cr0::ET | cr0::NE | cr0::WP | cr0::PG;
                    cpu.cr4 |= cr4::PAE;
                    cpu.efer = efer::LME | efer::LMA;
                    let (pt, cr3) = build_page_tables(&layout, case);
                    cpu.cr3 = cr3;
                    image.push((r + PT_OFF, pt));
                } else {
                    cpu.cr0 = cr0::PE | cr0::MP | cr0::ET | cr0::NE;
                }
            }
        }
        let o = &case.cr;
        for (reg, v) in [
            (&mut cpu.cr0, o.cr0),
            (&mut cpu.cr3, o.cr3),
            (&mut cpu.cr4, o.cr4),
            (&mut cpu.efer, o.efer),
        ] {
            if let Some(v) = v {
                *reg = v.0;
            }
        }
        image.sort_by_key(|(a, _)| *a);
        let mmio = case
            .mmio
            .iter()
            .map(|m| {
                let mut buf = m.hex.0.clone();
                buf.resize(m.len.0 as usize, 0);
                (m.addr.0, buf)
            })
            .collect();
        GuestModel {
            layout,
            image,
            cpu,
            mmio,
        }
    }
}

/// What the page tables depend on.
type PtKey = (u64, PageSize, Vec<(u64, u64)>);

thread_local! {
    /// The last few page-table images built on this thread: cases of one shape share them.
    static PT_CACHE: std::cell::RefCell<Vec<(PtKey, std::rc::Rc<Vec<u8>>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Identity-mapping page tables at `reserved + PT_OFF` (memoised per thread); bytes and CR3.
fn build_page_tables(layout: &Layout, case: &Case) -> (Vec<u8>, u64) {
    let spans = case
        .mmio
        .iter()
        .map(|m| page_span(m.addr.0, m.addr.0 + m.len.0))
        .collect();
    let key: PtKey = (layout.ram_size, layout.page_size, spans);
    let cr3 = layout.reserved + PT_OFF;
    if let Some(hit) = PT_CACHE.with(|c| {
        c.borrow()
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| std::rc::Rc::clone(v))
    }) {
        return (hit.as_ref().clone(), cr3);
    }
    let (bytes, cr3) = make_page_tables(layout, case);
    PT_CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= 4 {
            c.remove(0);
        }
        c.push((key, std::rc::Rc::new(bytes.clone())));
    });
    (bytes, cr3)
}

/// Builds identity-mapping page tables at `reserved + PT_OFF`; returns their bytes and CR3.
fn make_page_tables(layout: &Layout, case: &Case) -> (Vec<u8>, u64) {
    use std::collections::BTreeMap;
    let base = layout.reserved + PT_OFF;
    let mut pages: Vec<[u64; 512]> = vec![[0; 512], [0; 512]]; // PML4, PDPT
    let nonleaf = pte::P | pte::RW | pte::US | pte::A;
    pages[0][0] = (base + 0x1000) | nonleaf;
    let mut pds: BTreeMap<u64, usize> = BTreeMap::new();
    let mut pts: BTreeMap<u64, usize> = BTreeMap::new();
    // Ranges to map, page-aligned, each with its user bit.
    let (rs, re) = layout.reserved_range();
    let mut ranges = vec![(0, rs, true), (rs, re, false)];
    for m in &case.mmio {
        let (a, e) = page_span(m.addr.0, m.addr.0 + m.len.0);
        if e > layout.ram_size {
            ranges.push((a.max(layout.ram_size), e, true));
        }
    }
    let large_ok = layout.page_size == PageSize::Large;
    for (start, end, user) in ranges {
        let leaf = pte::P | pte::RW | pte::A | pte::D | if user { pte::US } else { 0 };
        let mut a = start;
        while a < end {
            let chunk = a >> 21;
            let gib = a >> 30;
            let pd = *pds.entry(gib).or_insert_with(|| {
                pages.push([0; 512]);
                let i = pages.len() - 1;
                pages[1][gib as usize] = (base + 0x1000 * i as u64) | nonleaf;
                i
            });
            let chunk_end = (chunk + 1) << 21;
            if large_ok && a == chunk << 21 && end >= chunk_end && !pts.contains_key(&chunk) {
                pages[pd][(chunk & 511) as usize] = (chunk << 21) | leaf | pte::PS;
                a = chunk_end;
                continue;
            }
            let pt = *pts.entry(chunk).or_insert_with(|| {
                pages.push([0; 512]);
                let i = pages.len() - 1;
                pages[pd][(chunk & 511) as usize] = (base + 0x1000 * i as u64) | nonleaf;
                i
            });
            let stop = end.min(chunk_end);
            while a < stop {
                pages[pt][((a >> 12) & 511) as usize] = a | leaf;
                a += 0x1000;
            }
        }
    }
    let mut bytes = Vec::with_capacity(pages.len() * 4096);
    for p in &pages {
        for e in p {
            bytes.extend_from_slice(&e.to_le_bytes());
        }
    }
    (bytes, base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::Case;

    fn walk(image: &[(u64, Vec<u8>)], cr3: u64, va: u64) -> Option<(u64, bool)> {
        let read = |pa: u64| -> u64 {
            for (a, b) in image {
                if pa >= *a && pa + 8 <= *a + b.len() as u64 {
                    let o = (pa - a) as usize;
                    return u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
                }
            }
            0
        };
        let mut table = cr3;
        let mut user = true;
        for (level, shift) in [(4, 39), (3, 30), (2, 21), (1, 12)] {
            let e = read(table + ((va >> shift) & 511) * 8);
            if e & pte::P == 0 {
                return None;
            }
            user &= e & pte::US != 0;
            if level == 2 && e & pte::PS != 0 {
                return Some(((e & pte::ADDR & !0x1f_ffff) | (va & 0x1f_ffff), user));
            }
            table = e & pte::ADDR;
        }
        Some((table | (va & 0xfff), user))
    }

    #[test]
    fn long64_page_tables_identity_map_ram_and_mmio_and_protect_reserved() {
        let mut case = Case::new("t", Mode::Long64, 0x1000, vec![0xf4]);
        case.memory_mib = 17; // odd size: the last 2 MiB chunk is split
        case.mmio.push(crate::case::MmioRegion {
            addr: 0xd000_0000.into(),
            len: 0x10.into(),
            hex: Default::default(),
        });
        let m = GuestModel::build(&case);
        for va in [0u64, 0x1000, 0x20_0000, 0xe0_0000, 0xef_f000] {
            assert_eq!(walk(&m.image, m.cpu.cr3, va), Some((va, true)), "{va:#x}");
        }
        let r = m.layout.reserved;
        assert_eq!(r, 15 << 20);
        assert_eq!(
            walk(&m.image, m.cpu.cr3, r + 0x3000),
            Some((r + 0x3000, false))
        );
        assert_eq!(
            walk(&m.image, m.cpu.cr3, 0xd000_0008),
            Some((0xd000_0008, true))
        );
        assert_eq!(walk(&m.image, m.cpu.cr3, 0xd000_1000), None);
        assert_eq!(walk(&m.image, m.cpu.cr3, 17 << 20), None);
        assert_eq!(walk(&m.image, m.cpu.cr3, 1 << 32), None);
    }

    #[test]
    fn memoised_page_tables_equal_fresh_ones() {
        let mut a = Case::new("t", Mode::Long64, 0x1000, vec![0xf4]);
        a.mmio.push(crate::case::MmioRegion {
            addr: 0xd000_0000.into(),
            len: 0x10.into(),
            hex: Default::default(),
        });
        let l = Layout::for_case(&a);
        let built = make_page_tables(&l, &a);
        assert_eq!(build_page_tables(&l, &a), built);
        assert_eq!(
            build_page_tables(&l, &a),
            built,
            "second call is served from the cache"
        );
        // Another shape is not confused with the cached one.
        let b = Case::new("u", Mode::Long64, 0x1000, vec![0xf4]);
        let lb = Layout::for_case(&b);
        assert_eq!(build_page_tables(&lb, &b), make_page_tables(&lb, &b));
        assert_ne!(build_page_tables(&lb, &b).0, built.0);
    }

    #[test]
    fn small_pages_map_every_page_with_a_pte() {
        let mut case = Case::new("t", Mode::Long64, 0x1000, vec![0xf4]);
        case.page_size = PageSize::Small;
        let m = GuestModel::build(&case);
        let pt = &m.image.iter().find(|(a, _)| *a == m.cpu.cr3).unwrap().1;
        // PML4 + PDPT + 1 PD + 8 PTs for 16 MiB.
        assert_eq!(pt.len(), 11 * 4096);
        assert_eq!(walk(&m.image, m.cpu.cr3, 0x5123), Some((0x5123, true)));
    }

    #[test]
    fn descriptor_encodes_flat_code64() {
        assert_eq!(
            descriptor(0, 0xffff_ffff, attr::CODE | attr::G | attr::L),
            0x00af_9b00_0000_ffff
        );
        assert_eq!(
            descriptor(0, 0xffff_ffff, attr::DATA | attr::G | attr::DB),
            0x00cf_9300_0000_ffff
        );
    }

    #[test]
    fn decode_descriptor_inverts_descriptor() {
        for a in [
            attr::CODE | attr::G | attr::L | attr::dpl(3),
            attr::DATA | attr::G | attr::DB,
        ] {
            let s = decode_descriptor(0x2b, descriptor(0x1234_5000, 0xffff_ffff, a));
            assert_eq!(
                (s.base, s.limit, s.attributes),
                (0x1234_5000, 0xffff_ffff, a)
            );
        }
        assert_eq!(decode_descriptor(0, 0).attributes, attr::UNUSABLE);
    }

    #[test]
    fn stub_vector_recognises_only_stub_halts() {
        let mut case = Case::new("t", Mode::Long64, 0x1000, vec![0xf4]);
        case.stubs = true;
        let l = Layout::for_case(&case);
        assert_eq!(l.stub_vector(SEL_CODE64, 0, l.stub_addr(14) + 1), Some(14));
        assert_eq!(l.stub_vector(SEL_CODE64, 0, l.stub_addr(14) + 2), None);
        assert_eq!(l.stub_vector(SEL_CODE64, 0, 0x1001), None);
        let mut real = Case::new("r", Mode::Real16, 0x1000, vec![0xf4]);
        real.stubs = true;
        let l = Layout::for_case(&real);
        assert_eq!(l.stub_vector(0xffff, 0xffff0, 0xffd0 + 6 + 1), Some(6));
        assert_eq!(l.stub_vector(0, 0, 0x1001), None);
    }

    #[test]
    fn decode_frame_reads_long64_frame_with_error_code() {
        let words: [u64; 6] = [0x4, 0x1234, 0x2b, 0x202, 0x8000, 0x23];
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let f = decode_frame(Mode::Long64, 14, 0x7fd0, &bytes);
        assert_eq!(f.error_code, Some(4));
        assert_eq!(
            (f.rip, f.cs, f.rflags, f.rsp, f.ss),
            (0x1234, 0x2b, 0x202, 0x8000, Some(0x23))
        );
        let real: Vec<u8> = [0x10u16, 0x20, 0x2]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let f = decode_frame(Mode::Real16, 0, 0xfffa, &real);
        assert_eq!((f.rip, f.cs, f.rflags, f.rsp), (0x10, 0x20, 0x2, 0x0));
    }

    #[test]
    fn ram_slots_skip_holes() {
        let mut case = Case::new("t", Mode::Long64, 0x1000, vec![0xf4]);
        case.mmio.push(crate::case::MmioRegion {
            addr: 0x10_0010.into(),
            len: 0x20.into(),
            hex: Default::default(),
        });
        let l = Layout::for_case(&case);
        assert_eq!(l.ram_slots(), vec![(0, 0x10_0000), (0x10_1000, 16 << 20)]);
        assert!(!l.is_ram(0x10_0ff0));
        assert!(l.is_ram(0x10_1000));
    }
}

//! Addressing: effective addresses, segmentation and canonical checks, the 4-level page walk, and
//! linear/operand reads and writes that split at page boundaries and trace MMIO.

use super::{Fault, GP0, Machine, Res, SS0, flags::mask};
use crate::case::Mode;
use crate::layout::{Segment, cr0, pte};
use iced_x86::{Instruction, OpKind, Register};

/// The kind of a memory access, for the page walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Acc {
    /// A write (or the read of a read-modify-write).
    pub write: bool,
    /// A user-mode access (CPL3 and not an implicit supervisor access).
    pub user: bool,
}

impl Acc {
    /// A supervisor read (IDT, GDT).
    pub const SUP_R: Acc = Acc {
        write: false,
        user: false,
    };
    /// A supervisor write (exception frames).
    pub const SUP_W: Acc = Acc {
        write: true,
        user: false,
    };
}

/// A memory operand: its segment register and offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MemOp {
    /// Segment register.
    pub seg: Register,
    /// Offset (effective address) within the segment.
    pub off: u64,
}

/// Whether a 64-bit linear address is canonical (48-bit).
#[inline]
pub(crate) fn canonical(a: u64) -> bool {
    ((a as i64) << 16 >> 16) as u64 == a
}

impl Machine {
    /// Access kind for the case's own reads (`write` for writes and read-modify-writes).
    #[inline]
    pub(crate) fn acc(&self, write: bool) -> Acc {
        Acc {
            write,
            user: self.cpl == 3,
        }
    }

    /// A segment register's state.
    #[inline]
    pub(crate) fn seg(&self, r: Register) -> &Segment {
        match r {
            Register::ES => &self.cpu.es,
            Register::CS => &self.cpu.cs,
            Register::SS => &self.cpu.ss,
            Register::FS => &self.cpu.fs,
            Register::GS => &self.cpu.gs,
            _ => &self.cpu.ds,
        }
    }

    /// A segment register's state, for writing.
    pub(crate) fn seg_mut(&mut self, r: Register) -> &mut Segment {
        match r {
            Register::ES => &mut self.cpu.es,
            Register::CS => &mut self.cpu.cs,
            Register::SS => &mut self.cpu.ss,
            Register::FS => &mut self.cpu.fs,
            Register::GS => &mut self.cpu.gs,
            _ => &mut self.cpu.ds,
        }
    }

    /// The effective address plus `extra`, wrapped to the address size (BT's bit-offset bytes).
    pub(crate) fn ea_plus(&self, ins: &Instruction, extra: u64) -> u64 {
        let asz = self.addr_size(ins);
        (self.ea(ins).wrapping_add(extra)) & mask(asz)
    }

    /// The address size of the instruction's memory operand in bytes.
    pub(crate) fn addr_size(&self, ins: &Instruction) -> u32 {
        let base = ins.memory_base();
        if base != Register::None {
            return base.size() as u32;
        }
        let index = ins.memory_index();
        if index != Register::None {
            return index.size() as u32;
        }
        match ins.memory_displ_size() {
            2 => 2,
            4 => 4,
            8 => 8,
            _ => self.mode.bitness() / 8,
        }
    }

    /// The effective address of the instruction's memory operand, wrapped to the address size.
    #[inline]
    pub(crate) fn ea(&self, ins: &Instruction) -> u64 {
        let base = ins.memory_base();
        let index = ins.memory_index();
        let disp = ins.memory_displacement64();
        match base {
            Register::RIP => return disp,
            Register::EIP => return disp & 0xffff_ffff,
            _ => {}
        }
        let mut a = disp;
        let mut asz = match ins.memory_displ_size() {
            2 => 2,
            4 => 4,
            8 => 8,
            _ => 0,
        };
        if base != Register::None {
            a = a.wrapping_add(self.reg(base));
            asz = base.size() as u32;
        }
        if index != Register::None {
            a = a.wrapping_add(self.reg(index) << ins.memory_index_scale().trailing_zeros());
            if base == Register::None {
                asz = index.size() as u32;
            }
        }
        if asz == 0 {
            asz = self.mode.bitness() / 8;
        }
        a & mask(asz)
    }

    /// The instruction's memory operand.
    #[inline]
    pub(crate) fn mem_op(&self, ins: &Instruction) -> MemOp {
        MemOp {
            seg: ins.memory_segment(),
            off: self.ea(ins),
        }
    }

    /// The linear address of `seg:off` for a `size`-byte access, after limit or canonical checks.
    #[inline]
    pub(crate) fn linear(&self, seg: Register, off: u64, size: u32, write: bool) -> Res<u64> {
        let stack = seg == Register::SS;
        let fault = if stack { SS0 } else { GP0 };
        match self.mode {
            Mode::Long64 => {
                let lin = if matches!(seg, Register::FS | Register::GS) {
                    self.seg(seg).base.wrapping_add(off)
                } else {
                    off
                };
                if !canonical(lin) || !canonical(lin.wrapping_add(u64::from(size) - 1)) {
                    return Err(fault);
                }
                Ok(lin)
            }
            Mode::Prot32 | Mode::Real16 => {
                let s = self.seg(seg);
                if s.attributes & crate::layout::attr::UNUSABLE != 0 {
                    return Err(fault);
                }
                if off + u64::from(size) - 1 > u64::from(s.limit) {
                    return Err(fault);
                }
                if self.mode == Mode::Prot32 {
                    // Code segments are not writable in protected mode.
                    if write && s.attributes & 0x8 != 0 {
                        return Err(GP0);
                    }
                    Ok(s.base.wrapping_add(off) & 0xffff_ffff)
                } else {
                    Ok(s.base + off)
                }
            }
        }
    }

    /// Translates a linear address to physical (raising #PF with CR2 in long64).
    #[inline]
    pub(crate) fn translate(&mut self, lin: u64, acc: Acc) -> Res<u64> {
        if self.cpu.cr0 & cr0::PG == 0 {
            return Ok(if self.mode == Mode::Prot32 {
                lin & 0xffff_ffff
            } else {
                lin
            });
        }
        match self.walk(lin, acc) {
            Ok(pa) => Ok(pa),
            Err(code) => {
                self.cpu.cr2 = lin;
                Err(Fault::Exc(14, Some(code)))
            }
        }
    }

    /// The 4-level walk from CR3: the physical address, or the #PF error code (P, W, U; the I bit
    /// is never set because neither EFER.NXE nor CR4.SMEP is on). Present translations are
    /// remembered in a small TLB that any write to a page table empties (see [`Tlb`]), so the
    /// result is always that of a fresh walk.
    pub(crate) fn walk(&self, lin: u64, acc: Acc) -> Result<u64, u32> {
        let err = |present: bool| {
            u32::from(present) | (u32::from(acc.write) << 1) | (u32::from(acc.user) << 2)
        };
        let (page, user_ok, write_ok) = match self.tlb.get(lin, self.cpu.cr3) {
            Some(hit) => hit,
            None => {
                let t = self.walk_tables(lin).ok_or_else(|| err(false))?;
                self.tlb.put(lin, self.cpu.cr3, t);
                t
            }
        };
        if acc.user && !user_ok {
            return Err(err(true));
        }
        if acc.write && !write_ok && (acc.user || self.cpu.cr0 & cr0::WP != 0) {
            return Err(err(true));
        }
        Ok(page | (lin & 0xfff))
    }

    /// Walks the tables for `lin`: the physical 4 KiB frame and whether every level allows user
    /// and write access, or `None` when an entry is not present.
    fn walk_tables(&self, lin: u64) -> Option<(u64, bool, bool)> {
        let mut table = self.cpu.cr3 & pte::ADDR;
        let (mut user_ok, mut write_ok) = (true, true);
        for (level, shift) in [(4u32, 39u32), (3, 30), (2, 21), (1, 12)] {
            let slot = table + ((lin >> shift) & 511) * 8;
            let e = self.mem.read(slot, 8).0;
            if e & pte::P == 0 {
                return None;
            }
            user_ok &= e & pte::US != 0;
            write_ok &= e & pte::RW != 0;
            if (level == 2 || level == 3) && e & pte::PS != 0 {
                let size = 1u64 << shift;
                let pa = (e & pte::ADDR & !(size - 1)) | (lin & (size - 1));
                return Some((pa & !0xfff, user_ok, write_ok));
            }
            table = e & pte::ADDR;
        }
        Some((table, user_ok, write_ok))
    }

    /// Translation for inspection (dumps, frames, reports): no faults, no CR2.
    pub(crate) fn translate_peek(&self, lin: u64) -> Option<u64> {
        if self.cpu.cr0 & cr0::PG == 0 {
            Some(lin)
        } else {
            self.walk(lin, Acc::SUP_R).ok()
        }
    }

    #[inline]
    fn lin_wrap(&self, lin: u64) -> u64 {
        match self.mode {
            Mode::Prot32 => lin & 0xffff_ffff,
            _ => lin,
        }
    }

    /// Reads `size` bytes at a linear address, splitting at a page boundary.
    #[inline]
    pub(crate) fn read_lin(&mut self, lin: u64, size: u32, acc: Acc) -> Res<u64> {
        let off = lin & 0xfff;
        if off + u64::from(size) <= 0x1000 {
            let pa = self.translate(lin, acc)?;
            let (v, t) = self.mem.read(pa, size);
            self.touched(t, pa, size, v, false)?;
            Ok(v)
        } else {
            let n1 = (0x1000 - off) as u32;
            let pa1 = self.translate(lin, acc)?;
            let pa2 = self.translate(self.lin_wrap(lin + u64::from(n1)), acc)?;
            let (v1, t1) = self.mem.read(pa1, n1);
            self.touched(t1, pa1, n1, v1, false)?;
            let (v2, t2) = self.mem.read(pa2, size - n1);
            self.touched(t2, pa2, size - n1, v2, false)?;
            Ok(v1 | (v2 << (8 * n1)))
        }
    }

    /// Writes `size` bytes at a linear address, splitting at a page boundary (both pages are
    /// translated before either is written).
    #[inline]
    pub(crate) fn write_lin(&mut self, lin: u64, size: u32, val: u64, acc: Acc) -> Res {
        let val = val & mask(size);
        let off = lin & 0xfff;
        if off + u64::from(size) <= 0x1000 {
            let pa = self.translate(lin, acc)?;
            let t = self.mem.write(pa, size, val);
            self.touched(t, pa, size, val, true)
        } else {
            let n1 = (0x1000 - off) as u32;
            let pa1 = self.translate(lin, acc)?;
            let pa2 = self.translate(self.lin_wrap(lin + u64::from(n1)), acc)?;
            let v1 = val & mask(n1);
            let t1 = self.mem.write(pa1, n1, v1);
            self.touched(t1, pa1, n1, v1, true)?;
            let v2 = val >> (8 * n1);
            let t2 = self.mem.write(pa2, size - n1, v2);
            self.touched(t2, pa2, size - n1, v2, true)
        }
    }

    /// Reads a memory operand (`rmw`: the read of a read-modify-write, checked as a write).
    #[inline]
    pub(crate) fn read_m(&mut self, m: MemOp, size: u32, rmw: bool) -> Res<u64> {
        let lin = self.linear(m.seg, m.off, size, rmw)?;
        self.read_lin(lin, size, self.acc(rmw))
    }

    /// Writes a memory operand.
    #[inline]
    pub(crate) fn write_m(&mut self, m: MemOp, size: u32, val: u64) -> Res {
        let lin = self.linear(m.seg, m.off, size, true)?;
        self.write_lin(lin, size, val, self.acc(true))
    }

    /// The size of operand 0, from the resolved location when it is a register.
    #[inline]
    pub(crate) fn size0(&self, ins: &Instruction) -> u32 {
        match self.locs[0] {
            super::decode::Loc::Reg(_, size, _) => u32::from(size),
            _ => Self::op_size(ins, 0),
        }
    }

    /// The size in bytes of operand `i` (register or memory).
    #[inline]
    pub(crate) fn op_size(ins: &Instruction, i: u32) -> u32 {
        let k = ins.op_kind(i);
        if k == OpKind::Register {
            return super::gpr_size(ins.op_register(i));
        }
        match k {
            OpKind::Register => ins.op_register(i).size() as u32,
            OpKind::Memory => ins.memory_size().size() as u32,
            OpKind::Immediate8 | OpKind::Immediate8_2nd => 1,
            OpKind::Immediate16 | OpKind::Immediate8to16 => 2,
            OpKind::Immediate32 | OpKind::Immediate8to32 => 4,
            _ => 8,
        }
    }

    /// Reads operand `i` (register, memory or immediate), truncated to `size` bytes.
    ///
    /// Registers and immediates resolved at decode time are read inline; everything else goes
    /// through the out-of-line [`Machine::read_op_slow`], which keeps this small enough to inline.
    #[inline(always)]
    pub(crate) fn read_op(&mut self, ins: &Instruction, i: u32, size: u32, rmw: bool) -> Res<u64> {
        match self.locs[i as usize] {
            super::decode::Loc::Reg(idx, _, shift) => {
                Ok((self.cpu.gpr[idx as usize] >> shift) & mask(size))
            }
            super::decode::Loc::Imm => Ok(self.imm & mask(size)),
            super::decode::Loc::Other => self.read_op_slow(ins, i, size, rmw),
        }
    }

    /// [`Machine::read_op`] for operands not resolved at decode time (memory, mostly).
    #[inline(never)]
    fn read_op_slow(&mut self, ins: &Instruction, i: u32, size: u32, rmw: bool) -> Res<u64> {
        match ins.op_kind(i) {
            OpKind::Register => Ok(self.reg(ins.op_register(i)) & mask(size)),
            OpKind::Memory => {
                let m = self.mem_op(ins);
                self.read_m(m, size, rmw)
            }
            _ => Ok(ins.immediate(i) & mask(size)),
        }
    }

    /// Writes operand `i` (register or memory); like [`Machine::read_op`], only registers resolved
    /// at decode time are handled inline.
    #[inline(always)]
    pub(crate) fn write_op(&mut self, ins: &Instruction, i: u32, size: u32, v: u64) -> Res {
        if let super::decode::Loc::Reg(idx, rsize, shift) = self.locs[i as usize] {
            let g = &mut self.cpu.gpr[idx as usize];
            match rsize {
                1 | 2 => {
                    let m = mask(u32::from(rsize)) << shift;
                    *g = (*g & !m) | ((v << shift) & m);
                }
                4 => *g = v & 0xffff_ffff,
                _ => *g = v,
            }
            return Ok(());
        }
        self.write_op_slow(ins, i, size, v)
    }

    /// [`Machine::write_op`] for operands not resolved at decode time (memory, mostly).
    #[inline(never)]
    fn write_op_slow(&mut self, ins: &Instruction, i: u32, size: u32, v: u64) -> Res {
        match ins.op_kind(i) {
            OpKind::Register => {
                self.set_reg(ins.op_register(i), v);
                Ok(())
            }
            _ => {
                let m = self.mem_op(ins);
                self.write_m(m, size, v)
            }
        }
    }

    // ---- the stack ----

    /// Stack-pointer width in bytes.
    #[inline]
    pub(crate) fn sp_size(&self) -> u32 {
        match self.mode {
            Mode::Long64 => 8,
            _ if self.cpu.ss.big() => 4,
            _ => 2,
        }
    }

    /// The stack pointer, masked to its width.
    #[inline]
    pub(crate) fn sp(&self) -> u64 {
        self.cpu.gpr[4] & mask(self.sp_size())
    }

    /// Sets the stack pointer (only its width's bits change).
    #[inline]
    pub(crate) fn set_sp(&mut self, v: u64) {
        let m = mask(self.sp_size());
        self.cpu.gpr[4] = (self.cpu.gpr[4] & !m) | (v & m);
    }

    /// Reads `size` bytes at stack offset `sp` (no pointer update).
    #[inline]
    pub(crate) fn stack_read(&mut self, sp: u64, size: u32) -> Res<u64> {
        let sp = sp & mask(self.sp_size());
        let lin = self.linear(Register::SS, sp, size, false)?;
        self.read_lin(lin, size, self.acc(false))
    }

    /// Writes `size` bytes at stack offset `sp` (no pointer update).
    #[inline]
    pub(crate) fn stack_write(&mut self, sp: u64, size: u32, v: u64) -> Res {
        let sp = sp & mask(self.sp_size());
        let lin = self.linear(Register::SS, sp, size, true)?;
        self.write_lin(lin, size, v, self.acc(true))
    }

    /// Pushes `size` bytes and commits the stack pointer.
    #[inline]
    pub(crate) fn push(&mut self, v: u64, size: u32) -> Res {
        let sp = self.sp().wrapping_sub(u64::from(size));
        self.stack_write(sp, size, v)?;
        self.set_sp(sp);
        Ok(())
    }

    /// Checks a near branch target: the CS limit outside long64, canonical form in it.
    #[inline]
    pub(crate) fn check_target(&self, target: u64) -> Res {
        match self.mode {
            Mode::Long64 if !canonical(target) => Err(GP0),
            Mode::Long64 => Ok(()),
            _ if target > u64::from(self.cpu.cs.limit) => Err(GP0),
            _ => Ok(()),
        }
    }
}

const TLB_SLOTS: usize = 16;

/// One TLB entry: linear page number, CR3, 4 KiB frame, user allowed, write allowed.
type TlbEntry = Option<(u64, u64, u64, bool, bool)>;

/// A direct-mapped cache of present translations `(linear page, CR3) -> (frame, user ok, write
/// ok)`. Interior mutability lets `&self` walks (inspection, fetch) fill it; the interpreter empties
/// it whenever a write lands on a watched page (page tables are watched), so it never serves a
/// translation a fresh walk would not give.
#[derive(Default)]
pub struct Tlb {
    slots: [std::cell::Cell<TlbEntry>; TLB_SLOTS],
}

impl Tlb {
    #[inline]
    fn get(&self, lin: u64, cr3: u64) -> Option<(u64, bool, bool)> {
        let vpn = lin >> 12;
        match self.slots[(vpn as usize) % TLB_SLOTS].get() {
            Some((v, c, frame, u, w)) if v == vpn && c == cr3 => Some((frame, u, w)),
            _ => None,
        }
    }

    #[inline]
    fn put(&self, lin: u64, cr3: u64, (frame, u, w): (u64, bool, bool)) {
        let vpn = lin >> 12;
        self.slots[(vpn as usize) % TLB_SLOTS].set(Some((vpn, cr3, frame, u, w)));
    }

    /// Forgets every translation.
    pub fn flush(&self) {
        for s in &self.slots {
            s.set(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_accepts_sign_extended_48_bit() {
        assert!(canonical(0x7fff_ffff_ffff));
        assert!(canonical(0xffff_8000_0000_0000));
        assert!(!canonical(0x8000_0000_0000));
        assert!(!canonical(0x0001_0000_0000_0000));
    }
}

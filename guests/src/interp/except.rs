//! Exception and interrupt delivery through the real-mode IVT or the protected/long-mode IDT read
//! from guest memory, with double-fault escalation and triple-fault shutdown; GDT descriptor loads.

use super::{Fault, Machine, Res, Stop, addr::Acc, flags};
use crate::case::Mode;
use crate::layout::{Segment, attr, decode_descriptor};

/// Faults whose nesting makes a double fault (SDM Vol. 3 Table 6-4, "contributory").
fn contributory(v: u8) -> bool {
    matches!(v, 0 | 10 | 11 | 12 | 13)
}

impl Machine {
    /// Delivers exception `vector`; `soft_next` is the return address of INT n / INT3 / INTO (traps),
    /// `None` for faults (which return to the faulting instruction, `cpu.rip`).
    pub(crate) fn deliver(
        &mut self,
        vector: u8,
        error: Option<u32>,
        soft_next: Option<u64>,
    ) -> Result<(), Stop> {
        // The frame holds RFLAGS; outside long mode (where every gate uses IST1, off the case's
        // stack) it lands in the case's memory, so an undefined status flag there is a read of it.
        if self.mode != Mode::Long64 && self.undef & flags::STATUS != 0 {
            self.tainted = true;
        }
        let (mut v, mut e, mut soft) = (vector, error, soft_next);
        loop {
            match self.deliver_once(v, e, soft) {
                Ok(()) => return Ok(()),
                Err(Fault::Stop(s)) => return Err(*s),
                Err(Fault::Unsupported(w)) => return Err(self.unsupported(&w)),
                Err(Fault::Exc(v2, e2)) => {
                    if v == 8 {
                        // The SDM defines no register state in shutdown, and KVM sets RF in the
                        // live RFLAGS when it injects a fault-class exception (so the pushed image
                        // carries it): after a triple fault RF is whatever the last injection
                        // left. Report it as undefined rather than guess.
                        self.undef |= flags::RF;
                        return Err(Stop::Shutdown);
                    }
                    let double = (contributory(v) && contributory(v2))
                        || (v == 14 && (contributory(v2) || v2 == 14));
                    (v, e) = if double { (8, Some(0)) } else { (v2, e2) };
                    soft = None;
                }
            }
        }
    }

    /// Writes one word of an exception frame (a supervisor access that must land in RAM).
    fn frame_write(&mut self, lin: u64, size: u32, val: u64) -> Res {
        let pa = self.translate(lin, Acc::SUP_W)?;
        let last = self.translate(lin + u64::from(size) - 1, Acc::SUP_W)?;
        if !self.mem.is_ram(pa) || !self.mem.is_ram(last) {
            return Err(Fault::unsupported(
                "exception frame pushed to MMIO (KVM cannot deliver it)",
            ));
        }
        self.write_lin(lin, size, val, Acc::SUP_W)
    }

    fn deliver_once(&mut self, v: u8, err: Option<u32>, soft: Option<u64>) -> Res {
        let ret = soft.unwrap_or(self.cpu.rip);
        let ext = u32::from(soft.is_none());
        let idt_err = Fault::Exc(13, Some(u32::from(v) * 8 + 2 + ext));
        let idt = self.cpu.idt;
        match self.mode {
            Mode::Real16 => {
                if u64::from(v) * 4 + 3 > u64::from(idt.limit) {
                    return Err(idt_err);
                }
                let ent = self.read_lin(idt.base + u64::from(v) * 4, 4, Acc::SUP_R)?;
                let sp = self.sp();
                for (i, w) in [self.cpu.rflags, u64::from(self.cpu.cs.selector), ret]
                    .into_iter()
                    .enumerate()
                {
                    let at = sp.wrapping_sub(2 * (i as u64 + 1)) & 0xffff;
                    let lin = self.linear(iced_x86::Register::SS, at, 2, true)?;
                    self.frame_write(lin, 2, w)?;
                }
                self.set_sp(sp.wrapping_sub(6));
                self.cpu.rflags &= !(flags::IF | flags::TF | flags::AC | flags::RF);
                let sel = (ent >> 16) as u16;
                self.cpu.cs.selector = sel;
                self.cpu.cs.base = u64::from(sel) << 4;
                self.cpu.rip = ent & 0xffff;
            }
            Mode::Prot32 | Mode::Long64 => {
                let long = self.mode == Mode::Long64;
                let gsz: u64 = if long { 16 } else { 8 };
                if u64::from(v) * gsz + gsz - 1 > u64::from(idt.limit) {
                    return Err(idt_err);
                }
                let at = idt.base + u64::from(v) * gsz;
                let lo = self.read_lin(at, 8, Acc::SUP_R)?;
                let hi = if long {
                    self.read_lin(at + 8, 8, Acc::SUP_R)?
                } else {
                    0
                };
                let typ = (lo >> 40) & 0xf;
                let dpl = ((lo >> 45) & 3) as u8;
                let present = lo >> 47 & 1 != 0;
                if typ != 0xe && typ != 0xf {
                    return Err(idt_err);
                }
                if soft.is_some() && dpl < self.cpl {
                    return Err(Fault::Exc(13, Some(u32::from(v) * 8 + 2)));
                }
                if !present {
                    return Err(Fault::Exc(11, Some(u32::from(v) * 8 + 2 + ext)));
                }
                let offset =
                    (lo & 0xffff) | (((lo >> 48) & 0xffff) << 16) | ((hi & 0xffff_ffff) << 32);
                let sel = ((lo >> 16) & 0xffff) as u16;
                let target = self.load_descriptor(sel)?;
                if target.attributes & 0x18 != 0x18 || target.attributes & attr::P == 0 {
                    return Err(Fault::Exc(13, Some(u32::from(sel & 0xfffc) + ext)));
                }
                let new_cpl = target.dpl();
                let word: u32 = if long { 8 } else { 4 };
                let mut sp = self.cpu.gpr[4];
                if long {
                    let ist = (lo >> 32) & 7;
                    let tss = self.cpu.tr.base;
                    if ist != 0 {
                        sp = self.read_lin(tss + 36 + (ist - 1) * 8, 8, Acc::SUP_R)?;
                    } else if new_cpl < self.cpl {
                        sp = self.read_lin(tss + 4, 8, Acc::SUP_R)?;
                    }
                    sp &= !0xf;
                } else if new_cpl < self.cpl {
                    return Err(Fault::unsupported("32-bit privilege-changing interrupt"));
                }
                let mut words = vec![];
                if long {
                    words.push(u64::from(self.cpu.ss.selector));
                    words.push(self.cpu.gpr[4]);
                }
                // A fault's frame has RF set (SDM Vol. 3 §18.3.1.1); traps and INT n do not.
                words.push(if soft.is_none() {
                    self.cpu.rflags | flags::RF
                } else {
                    self.cpu.rflags
                });
                words.push(u64::from(self.cpu.cs.selector));
                words.push(ret);
                if let Some(e) = err {
                    words.push(u64::from(e));
                }
                for w in words {
                    sp = sp.wrapping_sub(u64::from(word));
                    let lin = if long {
                        if !super::addr::canonical(sp) {
                            return Err(super::SS0);
                        }
                        sp
                    } else {
                        self.linear(iced_x86::Register::SS, sp & 0xffff_ffff, 4, true)?
                    };
                    self.frame_write(lin, word, w)?;
                }
                if long {
                    self.cpu.gpr[4] = sp;
                    if new_cpl < self.cpl {
                        self.cpu.ss = Segment {
                            selector: u16::from(new_cpl),
                            base: 0,
                            limit: 0,
                            attributes: attr::UNUSABLE,
                        };
                    }
                } else {
                    self.set_sp(sp);
                }
                self.cpu.rflags &= !(flags::TF | flags::NT | flags::RF | flags::VM);
                if typ == 0xe {
                    self.cpu.rflags &= !flags::IF;
                }
                self.cpu.cs = target;
                self.cpl = new_cpl;
                self.cpu.rip = offset;
            }
        }
        Ok(())
    }

    /// Reads a GDT descriptor into a segment (selector `sel`); LDT selectors and selectors past the
    /// GDT limit raise #GP(selector).
    pub(crate) fn load_descriptor(&mut self, sel: u16) -> Res<Segment> {
        let index = u64::from(sel >> 3);
        if sel & 4 != 0 || index * 8 + 7 > u64::from(self.cpu.gdt.limit) {
            return Err(Fault::Exc(13, Some(u32::from(sel & 0xfffc))));
        }
        let d = self.read_lin(self.cpu.gdt.base + index * 8, 8, Acc::SUP_R)?;
        Ok(decode_descriptor(sel, d))
    }
}

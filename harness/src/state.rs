//! Conversion between the guest model's [`CpuState`] and KVM's `kvm_regs`/`kvm_sregs`.

use kvm_bindings::{kvm_dtable, kvm_regs, kvm_segment, kvm_sregs};
use kvmconf_guests::layout::{CpuState, Segment, TableReg, attr};

/// A guest-model segment as a `kvm_segment`.
pub fn to_kvm_segment(s: &Segment) -> kvm_segment {
    let a = s.attributes;
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: (a & 0xf) as u8,
        present: u8::from(a & attr::P != 0),
        dpl: ((a >> 5) & 3) as u8,
        db: u8::from(a & attr::DB != 0),
        s: u8::from(a & attr::S != 0),
        l: u8::from(a & attr::L != 0),
        g: u8::from(a & attr::G != 0),
        avl: u8::from(a & attr::AVL != 0),
        unusable: u8::from(a & attr::UNUSABLE != 0),
        padding: 0,
    }
}

/// A `kvm_segment` as a guest-model segment.
pub fn from_kvm_segment(k: &kvm_segment) -> Segment {
    let mut a = u32::from(k.type_ & 0xf) | (u32::from(k.dpl & 3) << 5);
    for (bit, on) in [
        (attr::S, k.s),
        (attr::P, k.present),
        (attr::AVL, k.avl),
        (attr::L, k.l),
        (attr::DB, k.db),
        (attr::G, k.g),
        (attr::UNUSABLE, k.unusable),
    ] {
        if on != 0 {
            a |= bit;
        }
    }
    Segment {
        selector: k.selector,
        base: k.base,
        limit: k.limit,
        attributes: a,
    }
}

fn dtable(t: &TableReg) -> kvm_dtable {
    kvm_dtable {
        base: t.base,
        limit: t.limit,
        padding: [0; 3],
    }
}

/// General registers of `cpu` as `kvm_regs`.
pub fn to_kvm_regs(cpu: &CpuState) -> kvm_regs {
    let g = &cpu.gpr;
    kvm_regs {
        rax: g[0],
        rcx: g[1],
        rdx: g[2],
        rbx: g[3],
        rsp: g[4],
        rbp: g[5],
        rsi: g[6],
        rdi: g[7],
        r8: g[8],
        r9: g[9],
        r10: g[10],
        r11: g[11],
        r12: g[12],
        r13: g[13],
        r14: g[14],
        r15: g[15],
        rip: cpu.rip,
        rflags: cpu.rflags,
    }
}

/// Special registers of `cpu` as `kvm_sregs`, starting from `base` (which keeps apic_base etc.).
pub fn to_kvm_sregs(cpu: &CpuState, base: &kvm_sregs) -> kvm_sregs {
    let mut s = *base;
    s.cs = to_kvm_segment(&cpu.cs);
    s.ds = to_kvm_segment(&cpu.ds);
    s.es = to_kvm_segment(&cpu.es);
    s.fs = to_kvm_segment(&cpu.fs);
    s.gs = to_kvm_segment(&cpu.gs);
    s.ss = to_kvm_segment(&cpu.ss);
    s.tr = to_kvm_segment(&cpu.tr);
    s.ldt = to_kvm_segment(&cpu.ldtr);
    s.gdt = dtable(&cpu.gdt);
    s.idt = dtable(&cpu.idt);
    s.cr0 = cpu.cr0;
    s.cr2 = cpu.cr2;
    s.cr3 = cpu.cr3;
    s.cr4 = cpu.cr4;
    s.efer = cpu.efer;
    s.cr8 = 0;
    s.interrupt_bitmap = [0; 4];
    s
}

/// The CPU state KVM reports.
pub fn from_kvm(r: &kvm_regs, s: &kvm_sregs) -> CpuState {
    CpuState {
        gpr: [
            r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15,
        ],
        rip: r.rip,
        rflags: r.rflags,
        cs: from_kvm_segment(&s.cs),
        ds: from_kvm_segment(&s.ds),
        es: from_kvm_segment(&s.es),
        fs: from_kvm_segment(&s.fs),
        gs: from_kvm_segment(&s.gs),
        ss: from_kvm_segment(&s.ss),
        tr: from_kvm_segment(&s.tr),
        ldtr: from_kvm_segment(&s.ldt),
        gdt: TableReg {
            base: s.gdt.base,
            limit: s.gdt.limit,
        },
        idt: TableReg {
            base: s.idt.base,
            limit: s.idt.limit,
        },
        cr0: s.cr0,
        cr2: s.cr2,
        cr3: s.cr3,
        cr4: s.cr4,
        efer: s.efer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmconf_guests::{Case, GuestModel, Mode};

    #[test]
    fn state_round_trips_through_kvm_structs() {
        for mode in [Mode::Real16, Mode::Prot32, Mode::Long64] {
            let mut case = Case::new("t", mode, 0x1000, vec![0xf4]);
            case.regs.rbx = Some(0x1234.into());
            let m = GuestModel::build(&case);
            let back = from_kvm(
                &to_kvm_regs(&m.cpu),
                &to_kvm_sregs(&m.cpu, &kvm_sregs::default()),
            );
            assert_eq!(back, m.cpu, "{mode:?}");
        }
    }
}

//! Exception delivery as the harness sees it: stubs, frames, IVT delivery, triple faults, #PF codes.

mod common;

use common::*;
use iced_x86::code_asm::*;
use kvmconf_guests::case::{Case, Mode};
use kvmconf_guests::layout::Layout;
use kvmconf_guests::num::Hex;
use kvmconf_guests::result::Exit;

fn exc(vector: u8, error_code: Option<u64>, fault_addr: Option<u64>) -> Exit {
    Exit::Exception {
        vector,
        error_code: error_code.map(Hex),
        cr2: fault_addr.map(Hex),
    }
}

/// SDM Vol. 3 §6.15 (#DE): DIV by zero faults with rip at the DIV, in every mode.
#[test]
fn div_by_zero_reaches_stub_with_faulting_rip() {
    for mode in [Mode::Real16, Mode::Prot32, Mode::Long64] {
        let mut c = case(mode, |a| {
            a.mov(eax, 1u32)?;
            a.xor(ecx, ecx)?;
            a.div(ecx)?;
            a.hlt()
        });
        c.stubs = true;
        let o = run(&c);
        assert_eq!(o.result.exit, exc(0, None, None), "{mode:?}");
        let div_at = if mode == Mode::Real16 {
            CODE + 6 + 3
        } else {
            CODE + 5 + 2
        };
        assert_eq!(o.result.regs.rip.0, div_at, "{mode:?}");
        assert_eq!(o.result.regs.rsp.0, STACK, "{mode:?}");
        assert_eq!(o.result.regs.rax.0, 1, "{mode:?}");
    }
}

/// Division overflow (quotient too large) is #DE too.
#[test]
fn div_overflow_is_de() {
    let mut c = case(Mode::Long64, |a| {
        a.mov(edx, 1u32)?;
        a.mov(ecx, 1u32)?;
        a.div(ecx)?;
        a.hlt()
    });
    c.stubs = true;
    assert_eq!(run(&c).result.exit, exc(0, None, None));
}

/// The long64 frame lands on IST1 at the exception stack top: SS, RSP, RFLAGS, CS, RIP, error.
#[test]
fn long64_ud2_frame_is_written_to_ist_stack() {
    let mut c = case(Mode::Long64, |a| {
        a.mov(eax, 0x55u32)?;
        a.ud2()
    });
    c.stubs = true;
    let l = Layout::for_case(&c);
    c.dump.push(kvmconf_guests::case::Dump {
        addr: (l.stack_top() - 40).into(),
        len: 40.into(),
    });
    let o = run(&c);
    assert_eq!(o.result.exit, exc(6, None, None));
    let words: Vec<u64> = o.result.memory[0]
        .hex
        .0
        .chunks(8)
        .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
        .collect();
    assert_eq!(
        words,
        vec![CODE + 5, 0x8, 0x1_0002, STACK, 0x10],
        "RF set in a fault frame"
    );
}

/// #PF from a write to an unmapped page: error code W (not P), CR2 = the address (§4.7).
#[test]
fn page_fault_error_codes_and_cr2() {
    let mut c = case(Mode::Long64, |a| {
        a.mov(rbx, 0x1_0000_0000u64)?;
        a.mov(qword_ptr(rbx), 1)?;
        a.hlt()
    });
    c.stubs = true;
    let o = run(&c);
    assert_eq!(o.result.exit, exc(14, Some(0b010), Some(0x1_0000_0000)));
    assert_eq!(o.result.cr.cr2.0, 0x1_0000_0000);
    // CPL3 read of a supervisor page (the reserved range): P | U.
    let mut c = case(Mode::Long64, |a| {
        a.mov(rbx, 0xe0_0000u64)?;
        a.mov(rax, qword_ptr(rbx))?;
        a.hlt()
    });
    c.stubs = true;
    c.cpl = 3;
    let o = run(&c);
    assert_eq!(o.result.exit, exc(14, Some(0b101), Some(0xe0_0000)));
    assert_eq!(o.result.segs.cs.selector.0, 0x2b);
}

/// Non-canonical data addresses raise #GP(0); stack references raise #SS(0).
#[test]
fn non_canonical_is_gp_or_ss() {
    let mut c = case(Mode::Long64, |a| {
        a.mov(rbx, 0x8000_0000_0000u64)?;
        a.mov(rax, qword_ptr(rbx))?;
        a.hlt()
    });
    c.stubs = true;
    assert_eq!(run(&c).result.exit, exc(13, Some(0), None));
    let mut c = case(Mode::Long64, |a| {
        a.mov(rbp, 0x8000_0000_0000u64)?;
        a.mov(rax, qword_ptr(rbp))?;
        a.hlt()
    });
    c.stubs = true;
    assert_eq!(run(&c).result.exit, exc(12, Some(0), None));
}

/// HLT at CPL3 raises #GP(0); the harness reports it as a HLT with rip past it.
#[test]
fn cpl3_hlt_is_reported_as_hlt() {
    let mut c = case(Mode::Long64, |a| {
        a.mov(eax, 3u32)?;
        a.hlt()
    });
    c.cpl = 3;
    let o = run(&c);
    assert_eq!(o.result.exit, Exit::Hlt);
    assert_eq!(o.result.regs.rip.0, CODE + 6);
    assert_eq!(o.result.regs.rsp.0, STACK);
    assert_eq!(o.result.segs.cs.selector.0, 0x2b);
    assert_eq!(o.result.segs.ss.selector.0, 0x23);
}

/// Without stubs outside real mode the IDT limit is 0: any exception triple-faults.
#[test]
fn no_stubs_means_shutdown() {
    for mode in [Mode::Prot32, Mode::Long64] {
        let c = case(mode, |a| {
            a.int3()?;
            a.hlt()
        });
        assert_eq!(run(&c).result.exit, Exit::Shutdown, "{mode:?}");
    }
    // At CPL3 only vector 13 is present: #DE → #NP → #DF → shutdown.
    let mut c = case(Mode::Long64, |a| {
        a.xor(ecx, ecx)?;
        a.div(ecx)?;
        a.hlt()
    });
    c.cpl = 3;
    assert_eq!(run(&c).result.exit, Exit::Shutdown);
    // INT3 at CPL3 to a DPL-0 (absent) gate fails the gate DPL check first: #GP(3*8+2).
    let mut c = case(Mode::Long64, |a| {
        a.int3()?;
        a.hlt()
    });
    c.cpl = 3;
    assert_eq!(run(&c).result.exit, exc(13, Some(26), None));
}

/// INT3 and INT n are traps: rip after them. INT n ≥ 32 hits the IDT limit: #GP(n*8+2).
#[test]
fn int3_int_n_and_idt_limit() {
    let mut c = case(Mode::Long64, |a| {
        a.int3()?;
        a.hlt()
    });
    c.stubs = true;
    let o = run(&c);
    assert_eq!(o.result.exit, exc(3, None, None));
    assert_eq!(o.result.regs.rip.0, CODE + 1);
    let mut c = case(Mode::Prot32, |a| {
        a.int(0x40)?;
        a.hlt()
    });
    c.stubs = true;
    let o = run(&c);
    assert_eq!(o.result.exit, exc(13, Some(0x40 * 8 + 2), None));
    assert_eq!(
        o.result.regs.rip.0, CODE,
        "a fault during INT n delivery reports the INT"
    );
    let mut c = case(Mode::Prot32, |a| {
        a.mov(al, 0x7fu32)?;
        a.add(al, 1u32)?;
        a.into()?;
        a.hlt()
    });
    c.stubs = true;
    let o = run(&c);
    assert_eq!(o.result.exit, exc(4, None, None));
    assert_eq!(o.result.regs.rip.0, CODE + 5);
}

/// Real mode without stubs: delivery through the case's own IVT (push FLAGS, CS, IP; clear IF/TF).
#[test]
fn real_mode_ivt_delivery_continues_in_handler() {
    let handler = 0x2000u64;
    let mut c = case(Mode::Real16, |a| {
        a.sti()?;
        a.int(0x21)?;
        a.hlt()
    });
    // IVT[0x21] = 0000:2000; the handler reads its frame and halts.
    c.memory.push(kvmconf_guests::case::MemInit {
        addr: (0x21 * 4).into(),
        hex: kvmconf_guests::HexBytes(vec![0x00, 0x20, 0x00, 0x00]),
    });
    let h = kvmconf_guests::asm::assemble(16, handler, |a| {
        a.pop(bx)?; // IP
        a.pop(cx)?; // CS
        a.pop(dx)?; // FLAGS
        a.pushf()?;
        a.pop(si)?;
        a.hlt()
    })
    .unwrap();
    c.memory.push(kvmconf_guests::case::MemInit {
        addr: handler.into(),
        hex: kvmconf_guests::HexBytes(h),
    });
    let o = run(&c);
    assert_eq!(o.result.exit, Exit::Hlt);
    assert_eq!(o.result.regs.rbx.0, CODE + 3, "return IP after INT 21h");
    assert_eq!(o.result.regs.rcx.0, 0);
    assert_eq!(o.result.regs.rdx.0 & 0x200, 0x200, "IF was set when pushed");
    assert_eq!(o.result.regs.rsi.0 & 0x200, 0, "IF cleared in the handler");
}

/// Real mode: an operand past the 0xffff segment limit is #GP; with stubs the frame is 6 bytes.
#[test]
fn real_mode_limit_gp_through_stub() {
    let mut c = case(Mode::Real16, |a| {
        a.mov(bx, 0xffffu32)?;
        a.mov(ax, word_ptr(bx))?;
        a.hlt()
    });
    c.stubs = true;
    let o = run(&c);
    assert_eq!(o.result.exit, exc(13, None, None));
    assert_eq!(o.result.regs.rip.0, CODE + 3);
    assert_eq!(o.result.regs.rsp.0, STACK);
}

/// I/O at CPL3 with IOPL 0 is #GP(0); with IOPL 3 it is allowed.
#[test]
fn io_permission_at_cpl3() {
    let mut c = case(Mode::Long64, |a| {
        a.out(0x80, al)?;
        a.hlt()
    });
    c.cpl = 3;
    c.stubs = true;
    assert_eq!(run(&c).result.exit, exc(13, Some(0), None));
    c.iopl = Some(3);
    let o = run(&c);
    assert_eq!(o.result.exit, Exit::Hlt);
    assert_eq!(o.result.trace.len(), 1);
}

/// Bad LOCK prefix is #UD.
#[test]
fn lock_on_register_operand_is_ud() {
    let mut c = raw(Mode::Long64, &[0xf0, 0x01, 0xd8, 0xf4]); // lock add eax, ebx
    c.stubs = true;
    assert_eq!(run(&c).result.exit, exc(6, None, None));
}

/// CPUID and RDTSC are host-dependent: not modelled.
#[test]
fn host_dependent_instructions_are_unsupported() {
    for bytes in [[0x0f, 0xa2], [0x0f, 0x31]] {
        let c = raw(Mode::Long64, &bytes);
        assert!(matches!(
            run(&c).result.exit,
            Exit::UnsupportedInstruction { .. }
        ));
    }
}

/// An instruction fetched across a page boundary reads both pages; one whose bytes run past the
/// CS limit (real mode, 0xffff) is #GP(0) at its first byte; one running into an MMIO page is not
/// emulated (KVM cannot fetch from MMIO), while the same bytes in RAM run.
#[test]
fn fetch_across_page_boundary_limit_and_into_mmio() {
    // mov eax, 0x44332211 (5 bytes, the last two on the next page), then HLT.
    let bytes32 = [0xb8, 0x11, 0x22, 0x33, 0x44, 0xf4];
    for mode in [Mode::Prot32, Mode::Long64] {
        let mut c = Case::new("t", mode, 0x1ffd, bytes32.to_vec());
        c.regs.rsp = Some(STACK.into());
        let o = run(&c);
        assert_eq!(o.result.exit, Exit::Hlt, "{mode:?}");
        assert_eq!(o.result.regs.rax.0, 0x4433_2211, "{mode:?}");
        // The second page as MMIO: the fetch stops there.
        let mut m = Case::new("t", mode, 0x1ffd, bytes32[..3].to_vec());
        m.regs.rsp = Some(STACK.into());
        m.mmio.push(kvmconf_guests::case::MmioRegion {
            addr: Hex(0x2000),
            len: Hex(0x1000),
            hex: kvmconf_guests::num::HexBytes(vec![0x33, 0x44, 0xf4]),
        });
        let o = run(&m);
        assert!(
            matches!(o.result.exit, Exit::UnsupportedInstruction { .. }),
            "{mode:?}: {:?}",
            o.result.exit
        );
    }
    // Real mode: mov ax, 0x2211 at 0xfffe ends at 0x10000, past the limit.
    let mut c = Case::new("t", Mode::Real16, 0xfff0, vec![0x90; 14]);
    c.memory[0].hex.0.extend([0xb8, 0x11, 0x22]);
    c.regs.rsp = Some(STACK.into());
    c.stubs = true;
    let o = run(&c);
    assert_eq!(o.result.exit, exc(13, None, None));
    assert_eq!(o.result.regs.rip.0, 0xfffe);
    // Two bytes earlier it fits, and the HLT after it is the segment's last byte.
    let mut c = Case::new("t", Mode::Real16, 0xfff0, vec![0x90; 12]);
    c.memory[0].hex.0.extend([0xb8, 0x11, 0x22, 0xf4]);
    c.regs.rsp = Some(STACK.into());
    let o = run(&c);
    assert_eq!(o.result.exit, Exit::Hlt);
    assert_eq!(o.result.regs.rax.0 & 0xffff, 0x2211);
}

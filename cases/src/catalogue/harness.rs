//! Harness checks: each CPU mode boots and reports its exits, the run loop serves I/O and MMIO,
//! stubs report exceptions, the watchdog stops spinning guests, and pooled VMs equal fresh ones.

use crate::registry::{Fail, Outcome};
use crate::{ensure, ensure_eq};
use iced_x86::code_asm::*;
use kvmconf_guests::asm::assemble;
use kvmconf_guests::case::{Case, IoIn, MmioRegion, Mode};
use kvmconf_guests::layout::GuestModel;
use kvmconf_guests::num::Hex;
use kvmconf_guests::result::{CaseResult, DiffMask, Event, Exit, diff};
use kvmconf_harness::{Host, Pool, run_fresh};
use std::time::{Duration, Instant};

pub use kvmconf_harness::kvm::{CODE, STACK};

/// Assembles a program for `mode` at [`CODE`].
pub fn program(
    mode: Mode,
    build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Result<Vec<u8>, Fail> {
    assemble(mode.bitness(), CODE, build).map_err(|e| Fail::failed(format!("test program: {e}")))
}

/// A case running `code` at [`CODE`] with a stack at [`STACK`].
pub fn case(name: &str, mode: Mode, code: Vec<u8>) -> Case {
    let mut c = Case::new(name, mode, CODE, code);
    c.regs.rsp = Some(Hex(STACK));
    c
}

fn run(host: &Host, c: &Case) -> Result<CaseResult, Fail> {
    run_fresh(host, c).map_err(Fail::from)
}

fn outs(r: &CaseResult, port: u16) -> Vec<u8> {
    r.trace
        .iter()
        .filter_map(|e| match e {
            Event::IoOut(a) if a.port == Some(port) => Some(a.value.0 as u8),
            _ => None,
        })
        .collect()
}

fn hello(mode: Mode) -> Result<Vec<u8>, Fail> {
    program(mode, |a| {
        for b in b"Hello\n" {
            a.mov(al, u32::from(*b))?;
            a.out(0xf1, al)?;
        }
        a.hlt()
    })
}

fn check_hello(r: &CaseResult, end: u64) -> Outcome {
    ensure_eq!(r.exit, Exit::Hlt, "exit");
    ensure_eq!(
        String::from_utf8_lossy(&outs(r, 0xf1)),
        "Hello\n",
        "bytes on port 0xf1"
    );
    ensure_eq!(r.trace.len(), 6, "trace length");
    ensure!(
        r.trace
            .iter()
            .all(|e| matches!(e, Event::IoOut(a) if a.size == 1)),
        "every event is a 1-byte OUT: {:?}",
        r.trace
    );
    ensure_eq!(r.regs.rip.0, end, "rip past the hlt");
    Ok(())
}

fn seed_hello_real16(host: &Host) -> Outcome {
    let text = include_str!("../../corpus/seed_hello.toml");
    let cases = kvmconf_guests::case::parse_cases("cases/corpus/seed_hello.toml", text)
        .map_err(|e| Fail::failed(e.to_string()))?;
    let c = &cases[0].case;
    ensure_eq!(c.mode, Mode::Real16, "mode");
    let r = run(host, c)?;
    check_hello(&r, CODE + c.memory[0].hex.0.len() as u64)
}

fn hello_prot32(host: &Host) -> Outcome {
    let code = hello(Mode::Prot32)?;
    let end = CODE + code.len() as u64;
    check_hello(&run(host, &case("hello32", Mode::Prot32, code))?, end)
}

fn hello_long64(host: &Host) -> Outcome {
    let code = hello(Mode::Long64)?;
    let end = CODE + code.len() as u64;
    check_hello(&run(host, &case("hello64", Mode::Long64, code))?, end)
}

fn io_in_scripted(host: &Host) -> Outcome {
    for mode in [Mode::Real16, Mode::Prot32, Mode::Long64] {
        let code = program(mode, |a| {
            a.in_(al, 0x60)?;
            a.mov(bl, al)?;
            a.mov(dx, 0x64u32)?;
            a.in_(ax, dx)?;
            a.hlt()
        })?;
        let mut c = case("in", mode, code);
        c.io_in = vec![IoIn {
            port: Hex(0x60),
            value: Hex(0x1234),
        }];
        let r = run(host, &c)?;
        ensure_eq!(r.exit, Exit::Hlt, "{mode:?} exit");
        ensure_eq!(
            r.trace,
            vec![Event::io_in(0x60, 1, 0x34), Event::io_in(0x64, 2, 0xffff)],
            "{mode:?} trace: scripted value truncated to the size, then all-ones"
        );
        ensure_eq!(r.regs.rbx.0 & 0xff, 0x34, "{mode:?} bl");
        ensure_eq!(r.regs.rax.0 & 0xffff, 0xffff, "{mode:?} ax");
    }
    Ok(())
}

fn mmio_read_modify_write(host: &Host) -> Outcome {
    const MMIO: u64 = 0xd000_0000;
    for mode in [Mode::Prot32, Mode::Long64] {
        let code = program(mode, |a| {
            a.mov(eax, 5u32)?;
            if mode == Mode::Long64 {
                a.mov(rbx, MMIO)?;
                a.add(dword_ptr(rbx), eax)?;
            } else {
                a.mov(ebx, MMIO as u32)?;
                a.add(dword_ptr(ebx), eax)?;
            }
            a.hlt()
        })?;
        let mut c = case("mmio", mode, code);
        c.mmio = vec![MmioRegion {
            addr: Hex(MMIO),
            len: Hex(16),
            hex: kvmconf_guests::HexBytes(vec![0x0a, 0, 0, 0]),
        }];
        c.dump = vec![kvmconf_guests::case::Dump {
            addr: Hex(MMIO),
            len: Hex(4),
        }];
        let r = run(host, &c)?;
        ensure_eq!(r.exit, Exit::Hlt, "{mode:?} exit");
        ensure_eq!(
            r.trace,
            vec![
                Event::mmio_read(MMIO, 4, 0x0a),
                Event::mmio_write(MMIO, 4, 0x0f)
            ],
            "{mode:?} trace: the read is served from the region, the sum is written back"
        );
        ensure_eq!(
            r.memory[0].hex.0,
            vec![0x0f, 0, 0, 0],
            "{mode:?} region after the write"
        );
    }
    Ok(())
}

fn triple_fault_shutdown(host: &Host) -> Outcome {
    // real16 last: a deviation there must not hide the other modes.
    for mode in [Mode::Prot32, Mode::Long64, Mode::Real16] {
        // No stubs: prot32/long64 have an empty IDT; real16 gets an IVT limit of 0 first.
        let code = program(mode, |a| {
            if mode == Mode::Real16 {
                a.lidt(ptr(0x900u64))?;
            }
            a.xor(ecx, ecx)?;
            a.div(ecx)?;
            a.hlt()
        })?;
        let mut c = case("triple", mode, code);
        c.memory.push(kvmconf_guests::case::MemInit {
            addr: Hex(0x900),
            hex: kvmconf_guests::HexBytes(vec![0; 6]),
        });
        let r = run(host, &c)?;
        ensure_eq!(
            r.exit,
            Exit::Shutdown,
            "{mode:?} exit after #DE with no usable IDT"
        );
    }
    Ok(())
}

fn spin(host: &Host, mode: Mode, cpl: u8) -> Outcome {
    let code = program(mode, |a| {
        let mut l = a.create_label();
        a.set_label(&mut l)?;
        a.jmp(l)
    })?;
    let mut c = case("spin", mode, code);
    c.cpl = cpl;
    c.timeout_ms = Some(100);
    let mut pool = Pool::new(host, 1);
    let start = Instant::now();
    let r = pool.run(&c)?;
    let took = start.elapsed();
    ensure_eq!(
        r.exit,
        Exit::Timeout { ms: 100 },
        "{mode:?} cpl{cpl} exit of `jmp $`"
    );
    ensure!(
        took < Duration::from_millis(150),
        "{mode:?} cpl{cpl}: timeout after {took:?}, wanted within deadline 100 ms + 50 ms"
    );
    ensure_eq!(
        r.regs.rip.0,
        CODE,
        "{mode:?} cpl{cpl} rip of the spinning jmp"
    );
    // The same VM runs the next case normally.
    let code = hello(mode)?;
    let end = CODE + code.len() as u64;
    let r = pool.run(&case("after", mode, code))?;
    ensure_eq!(pool.stats().reused, 1, "the second case reused the VM");
    check_hello(&r, end)
}

fn spin_cpl0_timeout(host: &Host) -> Outcome {
    spin(host, Mode::Long64, 0)?;
    spin(host, Mode::Prot32, 0)?;
    spin(host, Mode::Real16, 0)
}

fn stub_case(
    name: &str,
    cpl: u8,
    build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Result<Case, Fail> {
    let mut c = case(name, Mode::Long64, program(Mode::Long64, build)?);
    c.stubs = true;
    c.cpl = cpl;
    Ok(c)
}

fn stubs_report_exceptions(host: &Host) -> Outcome {
    for cpl in [0u8, 3] {
        // #DE at the div.
        let c = stub_case("de", cpl, |a| {
            a.mov(eax, 1u32)?;
            a.xor(ecx, ecx)?;
            a.div(ecx)?;
            a.hlt()
        })?;
        let r = run(host, &c)?;
        ensure_eq!(
            r.exit,
            Exit::Exception {
                vector: 0,
                error_code: None,
                cr2: None
            },
            "cpl{cpl} #DE exit"
        );
        ensure_eq!(r.regs.rip.0, CODE + 7, "cpl{cpl} #DE rip is the div");
        ensure_eq!(
            r.regs.rsp.0,
            STACK,
            "cpl{cpl} #DE rsp of the interrupted context"
        );
        ensure_eq!(r.regs.rax.0, 1, "cpl{cpl} rax unchanged");
        // #UD.
        let r = run(
            host,
            &stub_case("ud", cpl, |a| {
                a.ud2()?;
                a.hlt()
            })?,
        )?;
        ensure_eq!(
            r.exit,
            Exit::Exception {
                vector: 6,
                error_code: None,
                cr2: None
            },
            "cpl{cpl} #UD exit"
        );
        ensure_eq!(r.regs.rip.0, CODE, "cpl{cpl} #UD rip");
        // #GP(0) on a non-canonical address.
        let r = run(
            host,
            &stub_case("gp", cpl, |a| {
                a.mov(rax, 0x8000_0000_0000_0000u64)?;
                a.mov(byte_ptr(rax), 1u32)?;
                a.hlt()
            })?,
        )?;
        ensure_eq!(
            r.exit,
            Exit::Exception {
                vector: 13,
                error_code: Some(Hex(0)),
                cr2: None
            },
            "cpl{cpl} non-canonical write exit"
        );
        ensure_eq!(r.regs.rip.0, CODE + 10, "cpl{cpl} #GP rip is the store");
        // #PF on an unmapped page: write, not present; user bit at CPL3.
        let r = run(
            host,
            &stub_case("pf", cpl, |a| {
                a.mov(rax, 0x1_0000_0010u64)?;
                a.mov(byte_ptr(rax), 1u32)?;
                a.hlt()
            })?,
        )?;
        let want_err = 0x2 | if cpl == 3 { 0x4 } else { 0 };
        ensure_eq!(
            r.exit,
            Exit::Exception {
                vector: 14,
                error_code: Some(Hex(want_err)),
                cr2: Some(Hex(0x1_0000_0010))
            },
            "cpl{cpl} #PF exit (error code W{}, CR2 = the address)",
            if cpl == 3 { "|U" } else { "" }
        );
        ensure_eq!(r.cr.cr2.0, 0x1_0000_0010, "cpl{cpl} cr2 in the final state");
    }
    // #DE in prot32 and real16 too (2-byte `div`, so the faulting rip is CODE + 2).
    for mode in [Mode::Prot32, Mode::Real16] {
        let code = program(mode, |a| {
            if mode == Mode::Real16 {
                a.xor(cx, cx)?;
                a.div(cx)?;
            } else {
                a.xor(ecx, ecx)?;
                a.div(ecx)?;
            }
            a.hlt()
        })?;
        let mut c = case("de", mode, code);
        c.stubs = true;
        let r = run(host, &c)?;
        ensure_eq!(
            r.exit,
            Exit::Exception {
                vector: 0,
                error_code: None,
                cr2: None
            },
            "{mode:?} #DE"
        );
        ensure_eq!(
            (r.regs.rip.0, r.regs.rsp.0),
            (CODE + 2, STACK),
            "{mode:?} #DE rip/rsp"
        );
    }
    Ok(())
}

/// An ALU program whose every flag is defined: the CPL0/CPL3 comparison may include RFLAGS.
pub fn alu_program() -> Result<Vec<u8>, Fail> {
    program(Mode::Long64, |a| {
        a.mov(rax, 0x0123_4567_89ab_cdefu64)?;
        a.mov(rbx, 0xfedc_ba98_7654_3210u64)?;
        a.add(rax, rbx)?;
        a.adc(rcx, rax)?;
        a.sub(rdx, rbx)?;
        a.sbb(esi, 0x7fff_ffff)?;
        a.neg(rdi)?;
        a.inc(r8)?;
        a.dec(r9d)?;
        a.imul_3(r10, rbx, 0x1234)?;
        a.lea(r11, qword_ptr(rax + rbx * 4 + 0x40))?;
        a.mov(word_ptr(0x3000u64), 0xbeefu32)?;
        a.movzx(r12d, word_ptr(0x3000u64))?;
        a.xadd(qword_ptr(0x3008u64), r12)?;
        a.bswap(r13)?;
        a.cmp(rax, rbx)?;
        a.hlt()
    })
}

fn alu_cpl0_equals_cpl3(host: &Host) -> Outcome {
    let code = alu_program()?;
    let mut c0 = case("alu", Mode::Long64, code);
    c0.regs.r13 = Some(Hex(0x1122_3344_5566_7788));
    c0.dump = vec![kvmconf_guests::case::Dump {
        addr: Hex(0x3000),
        len: Hex(16),
    }];
    let mut c3 = c0.clone();
    c3.cpl = 3;
    let (r0, r3) = (run(host, &c0)?, run(host, &c3)?);
    ensure_eq!(r0.exit, Exit::Hlt, "cpl0 exit");
    ensure_eq!(r3.exit, Exit::Hlt, "cpl3 exit (HLT convention)");
    let d = diff(
        &r0,
        &r3,
        &DiffMask {
            skip_segs: true,
            ..DiffMask::default()
        },
    );
    ensure!(
        d.is_empty(),
        "the same ALU program differs at CPL0 (emulated here) and CPL3 (native here):\n{}",
        d.iter()
            .map(|f| format!("  {f}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}

fn single_step_records_each_instruction(host: &Host, mode: Mode, cpl: u8) -> Outcome {
    let code = program(mode, |a| {
        a.nop()?;
        a.mov(eax, 1u32)?;
        a.add(eax, eax)?;
        a.hlt()
    })?;
    let mut c = case("ss", mode, code);
    c.single_step = true;
    c.cpl = cpl;
    c.max_exits = Some(50);
    let r = run(host, &c)?;
    // One debug exit after each instruction before the HLT; the HLT ends the case.
    let want: Vec<Hex> = [CODE + 1, CODE + 6, CODE + 8]
        .into_iter()
        .map(Hex)
        .collect();
    ensure_eq!(r.exit.kind(), "hlt", "{mode:?} cpl{cpl} exit kind");
    ensure_eq!(r.steps, want, "{mode:?} cpl{cpl} single-step pcs");
    ensure_eq!(r.regs.rax.0, 2, "{mode:?} cpl{cpl} rax");
    Ok(())
}

fn single_step_cpl0(host: &Host) -> Outcome {
    for mode in [Mode::Long64, Mode::Prot32, Mode::Real16] {
        single_step_records_each_instruction(host, mode, 0)?;
    }
    Ok(())
}

fn cpl3_port_io_with_iopl3(host: &Host) -> Outcome {
    let code = hello(Mode::Long64)?;
    let end = CODE + code.len() as u64;
    let mut c = case("hello64_cpl3", Mode::Long64, code);
    c.cpl = 3;
    c.iopl = Some(3);
    check_hello(&run(host, &c)?, end)
}

fn cpl3_iopl0_port_io_gp(host: &Host) -> Outcome {
    let mut c = stub_case("io3", 3, |a| {
        a.out(0xf1, al)?;
        a.hlt()
    })?;
    c.iopl = Some(0);
    let r = run(host, &c)?;
    ensure_eq!(
        r.exit,
        Exit::Exception {
            vector: 13,
            error_code: Some(Hex(0)),
            cr2: None
        },
        "OUT at CPL3 > IOPL"
    );
    ensure!(
        r.trace.is_empty(),
        "no port write reached the VMM: {:?}",
        r.trace
    );
    Ok(())
}

fn exit_budget_stops_chatty_guest(host: &Host) -> Outcome {
    let code = program(Mode::Long64, |a| {
        let mut l = a.create_label();
        a.set_label(&mut l)?;
        a.out(0x80, al)?;
        a.jmp(l)
    })?;
    let mut c = case("chatty", Mode::Long64, code);
    c.max_exits = Some(10);
    let r = run(host, &c)?;
    ensure_eq!(r.exit, Exit::ExitBudget { exits: 10 }, "exit");
    ensure_eq!(
        r.trace.len(),
        10,
        "trace length (the case ends when the trace reaches max_exits)"
    );
    Ok(())
}

/// A varied case for the pool equivalence check: a few stores, port writes and an ending.
pub fn varied_case(i: u64) -> Result<Case, Fail> {
    let mut s = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mode = [Mode::Real16, Mode::Prot32, Mode::Long64][(next() % 3) as usize];
    let cpl = if mode == Mode::Long64 && next() % 3 == 0 {
        3
    } else {
        0
    };
    let stores: Vec<(u32, u32)> = (0..next() % 6)
        .map(|_| ((0x2000 + (next() % 0x6000) as u32) & !3, next() as u32))
        .collect();
    let ending = next() % 6;
    let outs = next() % 3;
    let seed_reg = next();
    let code = program(mode, |a| {
        if ending == 4 {
            // A case that times out is only deterministic if it does nothing before spinning:
            // how far a guest gets before a deadline depends on the host's load.
            let mut l = a.create_label();
            a.set_label(&mut l)?;
            return a.jmp(l);
        }
        for &(addr, v) in &stores {
            match mode {
                Mode::Real16 => {
                    a.mov(bx, addr & 0xffff)?;
                    a.mov(word_ptr(bx), v & 0xffff)?;
                }
                Mode::Prot32 => a.mov(dword_ptr(addr as u64), v)?,
                Mode::Long64 => {
                    a.mov(ebx, addr)?;
                    a.mov(dword_ptr(rbx), v)?;
                }
            }
        }
        for k in 0..outs {
            if cpl == 0 {
                a.mov(al, k as u32)?;
                a.out(0xf1, al)?;
            }
        }
        match (mode, ending) {
            (_, 0) => {
                a.xor(ecx, ecx)?;
                a.div(ecx)?;
            }
            (Mode::Long64, 1) => {
                a.mov(rax, 0x40_0000_0000u64)?;
                a.mov(byte_ptr(rax), 1u32)?;
            }
            _ => {}
        }
        a.add(eax, seed_reg as u32)?;
        a.hlt()
    })?;
    let mut c = case(&format!("varied{i}"), mode, code);
    c.cpl = cpl;
    c.memory_mib = 4;
    c.stubs = ending != 3;
    if ending == 4 {
        c.timeout_ms = Some(3);
    }
    // Single-stepping leaves debug state (and, on some hosts, a halted vCPU) behind.
    c.single_step = ending == 5;
    c.max_exits = Some(if c.single_step { 40 } else { 1000 });
    c.regs.rax = Some(Hex(seed_reg & 0xffff));
    c.dump = vec![kvmconf_guests::case::Dump {
        addr: Hex(0x2000),
        len: Hex(0x6000),
    }];
    if mode == Mode::Long64 {
        // The exception stack, where frames land, is part of the state compared.
        let top = GuestModel::build(&c).layout.stack_top();
        c.dump.push(kvmconf_guests::case::Dump {
            addr: Hex(top - 0x100),
            len: Hex(0x100),
        });
    }
    Ok(c)
}

/// Pairs of long64 CPL0 cases for each vCPU state kind a pooled reset restores only when the
/// last case could have changed it: the first changes the kind without writing RAM and ends in
/// HLT (so the reset narrows by its code), the second reads it; with `the value written`, which
/// a fresh vCPU's reader must not see.
fn stale_state_pairs() -> Result<Vec<(&'static str, Case, Case, u64)>, Fail> {
    const STAR: u32 = 0xc000_0081;
    const KERNEL_GS_BASE: u32 = 0xc000_0102;
    const V: u64 = 0x0000_7f23_1234_5678; // canonical: GS_BASE and DR0 take it
    let pair = |name: &'static str,
                write: &dyn Fn(&mut CodeAssembler) -> Result<(), IcedError>,
                read: &dyn Fn(&mut CodeAssembler) -> Result<(), IcedError>|
     -> Result<(&'static str, Case, Case), Fail> {
        let mut w = case(
            name,
            Mode::Long64,
            program(Mode::Long64, |a| {
                write(a)?;
                a.hlt()
            })?,
        );
        let mut r = case(
            name,
            Mode::Long64,
            program(Mode::Long64, |a| {
                read(a)?;
                a.hlt()
            })?,
        );
        // PAE, OSFXSR, OSXMMEXCPT and OSXSAVE: SSE and XSETBV/XGETBV run.
        for c in [&mut w, &mut r] {
            c.cr.cr4 = Some(Hex(0x20 | 0x200 | 0x400 | 0x4_0000));
        }
        Ok((name, w, r))
    };
    let wrmsr = |msr: u32| {
        move |a: &mut CodeAssembler| {
            a.mov(ecx, msr)?;
            a.mov(eax, V as u32)?;
            a.mov(edx, (V >> 32) as u32)?;
            a.wrmsr()
        }
    };
    let rdmsr = |msr: u32| {
        move |a: &mut CodeAssembler| {
            a.mov(ecx, msr)?;
            a.rdmsr()?;
            a.shl(rdx, 32)?;
            a.or(rax, rdx)
        }
    };
    let v = [
        (pair("msr_star", &wrmsr(STAR), &rdmsr(STAR))?, V),
        (
            pair(
                "msr_kernel_gs_base_by_swapgs",
                &|a| {
                    a.mov(ecx, 0xc000_0101u32)?; // GS_BASE, swapped into KERNEL_GS_BASE
                    a.mov(eax, V as u32)?;
                    a.mov(edx, (V >> 32) as u32)?;
                    a.wrmsr()?;
                    a.swapgs()
                },
                &rdmsr(KERNEL_GS_BASE),
            )?,
            V,
        ),
        (
            // KVM's emulator (CPL0 here) runs MOVDQU but not register-only SSE moves.
            pair(
                "xmm3",
                &|a| {
                    let mut data = a.create_label();
                    a.movdqu(xmm3, xmmword_ptr(data))?;
                    a.hlt()?;
                    a.set_label(&mut data)?;
                    a.dq(&[V, 0])
                },
                &|a| {
                    a.mov(ebx, 0x6000u32)?;
                    a.movdqu(xmmword_ptr(rbx), xmm3)?;
                    a.mov(rax, qword_ptr(rbx))
                },
            )?,
            V,
        ),
        (
            pair(
                "dr0",
                &|a| {
                    a.mov(rax, V)?;
                    a.mov(dr0, rax)
                },
                &|a| a.mov(rax, dr0),
            )?,
            V,
        ),
        (
            pair(
                "xcr0",
                &|a| {
                    a.xor(ecx, ecx)?;
                    a.xor(edx, edx)?;
                    a.mov(eax, 1u32)?; // x87 only
                    a.xsetbv()
                },
                &|a| {
                    a.xor(ecx, ecx)?;
                    a.xgetbv()
                },
            )?,
            1,
        ),
    ];
    let mut v: Vec<_> = v.into_iter().map(|((n, w, r), x)| (n, w, r, x)).collect();
    // KVM's emulator does not run XGETBV: read XCR0 natively at CPL3 (its HLT ends at the #GP
    // stub, reported as HLT).
    if let Some((_, _, r, _)) = v.iter_mut().find(|p| p.0 == "xcr0") {
        r.cpl = 3;
        r.stubs = true;
    }
    Ok(v)
}

/// For each kind the pool may leave alone, a case that changes it then one that reads it give
/// fresh-VM results on one pooled VM, and the narrowed reset was taken (kinds were skipped).
fn pool_after_state_changes_equals_fresh(host: &Host, pool: &mut Pool<'_>) -> Outcome {
    let plain = case("plain", Mode::Long64, hello(Mode::Long64)?);
    for (name, write, read, value) in stale_state_pairs()? {
        let fresh_read = run(host, &read)?;
        ensure_eq!(
            fresh_read.exit,
            Exit::Hlt,
            "{name}: the reader's exit on a fresh VM"
        );
        ensure!(
            fresh_read.regs.rax.0 != value,
            "{name}: a fresh vCPU's reader already sees the value the writer sets ({value:#x})"
        );
        for c in [&plain, &write, &read] {
            let pooled = pool.run(c)?;
            let fresh = run(host, c)?;
            ensure_eq!(
                fresh.exit,
                Exit::Hlt,
                "{name}: {} exit on a fresh VM",
                c.name
            );
            let d = diff(&pooled, &fresh, &DiffMask::default());
            ensure!(
                d.is_empty(),
                "{name}: after a case that changes it, the pooled result differs from a fresh VM's:\n{}",
                diff_lines(&d)
            );
        }
    }
    let s = pool.stats();
    ensure!(
        s.kinds_skipped > 0,
        "the pool narrowed no reset for cases that change no state: {s:?}"
    );
    Ok(())
}

/// The differing fields, one indented line each.
fn diff_lines(d: &[kvmconf_guests::result::FieldDiff]) -> String {
    d.iter()
        .map(|f| format!("  {f}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn pool_equals_fresh(host: &Host) -> Outcome {
    let mut pool = Pool::new(host, 2);
    pool_after_state_changes_equals_fresh(host, &mut pool)?;
    let n = 1000u64;
    let mut stepped = 0;
    for i in 0..n {
        let c = varied_case(i)?;
        stepped += u64::from(c.single_step);
        pool.verify = i % 25 == 0;
        let pooled = pool.run(&c)?;
        let fresh = run(host, &c)?;
        let d = diff(&pooled, &fresh, &DiffMask::default());
        ensure!(
            d.is_empty(),
            "case {i} ({:?} cpl{}): pooled VM result differs from a fresh VM:\n{}",
            c.mode,
            c.cpl,
            diff_lines(&d)
        );
    }
    let s = pool.stats();
    // Every case reuses a VM except the first of each shape and those after a single-step case.
    ensure!(
        s.reused + 10 >= n - stepped,
        "the pool reused VMs for all but {stepped} single-step cases: {s:?}"
    );
    Ok(())
}

fn reset_after_single_stepped_hlt(host: &Host) -> Outcome {
    let step = {
        let mut c = case(
            "stepped_hlt",
            Mode::Long64,
            program(Mode::Long64, |a| {
                a.nop()?;
                a.hlt()
            })?,
        );
        c.single_step = true;
        c.max_exits = Some(10);
        c
    };
    let next = case("next", Mode::Long64, hello(Mode::Long64)?);
    let fresh = run(host, &next)?;
    let mut pool = Pool::new(host, 1);
    pool.reuse_after_single_step = true;
    pool.run(&step)?;
    let reused = pool.run(&next)?;
    ensure_eq!(pool.stats().reused, 1, "the second case reused the VM");
    let d = diff(&reused, &fresh, &DiffMask::default());
    if !d.is_empty() {
        return Err(Fail::field(
            "the next case's result after a single-stepped HLT and a reset of REGS, SREGS, \
             MP_STATE, VCPU_EVENTS, GUEST_DEBUG, XSAVE, XCRS, DEBUGREGS and MSRS",
            "a fresh VM's result",
            format!("{} differing fields", d.len()),
            &format!(
                ":\n{}",
                d.iter()
                    .take(8)
                    .map(|f| format!("  {f}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        ));
    }
    Ok(())
}

fn rejected_state_is_a_result(host: &Host) -> Outcome {
    // CR0.PG without CR0.PE: KVM_SET_SREGS must fail with EINVAL (api.rst 4.14).
    let mut bad = case("pg_without_pe", Mode::Long64, vec![0xf4]);
    bad.cr.cr0 = Some(Hex(0x8000_0010));
    let want = Exit::Rejected {
        ioctl: "KVM_SET_SREGS".into(),
        errno: libc::EINVAL,
    };
    let fresh = run(host, &bad)?;
    ensure_eq!(fresh.exit, want, "fresh VM exit");
    ensure!(fresh.trace.is_empty(), "nothing ran: {:?}", fresh.trace);
    let mut pool = Pool::new(host, 1);
    let pooled = pool.run(&bad)?;
    ensure_eq!(pooled.exit, want, "pooled VM exit");
    // The VM that refused the state runs the next case normally.
    let code = hello(Mode::Long64)?;
    let end = CODE + code.len() as u64;
    let r = pool.run(&case("after", Mode::Long64, code))?;
    ensure_eq!(pool.stats().reused, 1, "the VM was reused");
    check_hello(&r, end)
}

fn four_gib_guest_runs(host: &Host) -> Outcome {
    const AT: u64 = 0xf000_0000;
    for mode in [Mode::Prot32, Mode::Long64] {
        let code = program(mode, |a| {
            if mode == Mode::Long64 {
                a.mov(rax, AT)?;
                a.mov(qword_ptr(rax), 0x1234_5678)?;
                a.mov(rcx, qword_ptr(rax))?;
            } else {
                a.mov(eax, AT as u32)?;
                a.mov(dword_ptr(eax), 0x1234_5678u32)?;
                a.mov(ecx, dword_ptr(eax))?;
            }
            a.hlt()
        })?;
        let mut c = case("big", mode, code);
        c.memory_mib = 4096;
        c.dump = vec![kvmconf_guests::case::Dump {
            addr: Hex(AT),
            len: Hex(4),
        }];
        let r = run(host, &c)?;
        ensure_eq!(r.exit, Exit::Hlt, "{mode:?} exit with 4 GiB of RAM");
        ensure_eq!(
            r.regs.rcx.0 & 0xffff_ffff,
            0x1234_5678,
            "{mode:?} rcx read back from {AT:#x}"
        );
        ensure_eq!(
            r.memory[0].hex.0,
            vec![0x78, 0x56, 0x34, 0x12],
            "{mode:?} dump at {AT:#x}"
        );
    }
    Ok(())
}

fn int_n_reaches_its_gate(host: &Host, cpl: u8) -> Outcome {
    {
        // INT 7 through a DPL-3 gate reaches the vector-7 stub, rip after the INT (a trap).
        let r = run(
            host,
            &stub_case("int7", cpl, |a| {
                a.int(7)?;
                a.hlt()
            })?,
        )?;
        ensure_eq!(
            r.exit,
            Exit::Exception {
                vector: 7,
                error_code: None,
                cr2: None
            },
            "cpl{cpl} `int 7` exit"
        );
        ensure_eq!(
            r.regs.rip.0,
            CODE + 2,
            "cpl{cpl} `int 7` frame rip (after the INT)"
        );
        // INT 0x20 is past the 32-gate IDT limit: #GP with error code 0x20*8+2 (IDT, EXT=0).
        let r = run(
            host,
            &stub_case("int20", cpl, |a| {
                a.int(0x20)?;
                a.hlt()
            })?,
        )?;
        ensure_eq!(
            r.exit,
            Exit::Exception {
                vector: 13,
                error_code: Some(Hex(0x102)),
                cr2: None
            },
            "cpl{cpl} `int 0x20` past the IDT limit"
        );
        ensure_eq!(
            r.regs.rip.0,
            CODE,
            "cpl{cpl} `int 0x20` #GP rip (the INT itself)"
        );
    }
    Ok(())
}

crate::checks! {
    Harness;
    "harness.seed_hello_real16_writes_hello_and_halts", "api.rst 4.10 KVM_RUN, 5. kvm_run KVM_EXIT_IO/KVM_EXIT_HLT; seed program", seed_hello_real16;
    "harness.hello_prot32_writes_hello_and_halts", "api.rst KVM_EXIT_IO; SDM 3A 9.9 protected mode", hello_prot32;
    "harness.hello_long64_writes_hello_and_halts", "api.rst KVM_EXIT_IO; SDM 3A 9.8.5 IA-32e mode", hello_long64;
    "harness.io_in_scripted_value_then_all_ones", "api.rst KVM_EXIT_IO (direction IN, data_offset)", io_in_scripted;
    "harness.mmio_read_modify_write_served_by_vmm", "api.rst KVM_EXIT_MMIO", mmio_read_modify_write;
    "harness.triple_fault_exits_shutdown", "api.rst KVM_EXIT_SHUTDOWN; SDM 3A 6.15 #DF", triple_fault_shutdown;
    "harness.spinning_guest_cpl0_times_out_and_vm_stays_usable", "api.rst KVM_SET_SIGNAL_MASK, KVM_RUN EINTR, immediate_exit", spin_cpl0_timeout;
    "harness.spinning_guest_cpl3_times_out_and_vm_stays_usable", "api.rst KVM_SET_SIGNAL_MASK, KVM_RUN EINTR, immediate_exit", spin(Mode::Long64, 3);
    "harness.stubs_report_de_ud_gp_pf_with_error_code_and_cr2", "SDM 3A 6.15 exception reference (#DE, #UD, #GP, #PF error code)", stubs_report_exceptions;
    "harness.alu_program_cpl0_equals_cpl3", "SDM 2 instruction reference; kvmconf CPL3 HLT convention", alu_cpl0_equals_cpl3;
    "harness.single_step_cpl0_one_exit_per_instruction", "api.rst 4.38 KVM_SET_GUEST_DEBUG (KVM_GUESTDBG_SINGLESTEP), KVM_EXIT_DEBUG", single_step_cpl0;
    "harness.single_step_cpl3_one_exit_per_instruction", "api.rst 4.38 KVM_SET_GUEST_DEBUG (KVM_GUESTDBG_SINGLESTEP), KVM_EXIT_DEBUG", single_step_records_each_instruction(Mode::Long64, 3);
    "harness.cpl3_port_io_with_iopl3_reaches_vmm", "api.rst KVM_SET_REGS (rflags); SDM 1 18.5.1 I/O privilege level", cpl3_port_io_with_iopl3;
    "harness.cpl3_port_io_with_iopl0_raises_gp", "SDM 1 18.5 protected-mode I/O; SDM 3A 6.15 #GP", cpl3_iopl0_port_io_gp;
    "harness.exit_budget_stops_chatty_guest", "kvmconf case format: max_exits", exit_budget_stops_chatty_guest;
    "harness.vcpu_reset_after_single_stepped_hlt_behaves_fresh", "api.rst KVM_SET_REGS, KVM_SET_SREGS, KVM_SET_MP_STATE, KVM_SET_VCPU_EVENTS, KVM_SET_GUEST_DEBUG", reset_after_single_stepped_hlt;
    "harness.rejected_state_is_a_result_and_vm_stays_usable", "api.rst 4.14 KVM_SET_SREGS (invalid CR0: EINVAL); kvmconf rejected exit", rejected_state_is_a_result;
    "harness.four_gib_guest_runs_prot32_and_long64", "api.rst 4.35 KVM_SET_USER_MEMORY_REGION; kvmconf memory_mib up to 16384", four_gib_guest_runs;
    "harness.int_n_cpl0_reaches_its_gate_or_gp_past_idt_limit", "SDM 2 INT n (gate DPL, IDT limit -> #GP(vector*8+2)); SDM 3A 6.12", int_n_reaches_its_gate(0);
    "harness.int_n_cpl3_reaches_its_gate_or_gp_past_idt_limit", "SDM 2 INT n (gate DPL, IDT limit -> #GP(vector*8+2)); SDM 3A 6.12", int_n_reaches_its_gate(3);
    "harness.pooled_vm_results_equal_fresh_vm_results", "api.rst 4.8 KVM_GET_DIRTY_LOG; kvmconf pool reset", pool_equals_fresh;
}

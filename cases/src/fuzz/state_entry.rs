//! `state_entry`: random register and special-register states into a fresh VM. KVM must either
//! reject the state (EINVAL, leaving the vCPU unchanged), fail the entry, or run it; the run ends
//! within its deadline.

use super::{Exec, Finding, Target, signal_of};
use kvmconf_guests::case::{Case, Mode};
use kvmconf_guests::r#gen::source::Source;
use kvmconf_guests::layout::{CpuState, GuestModel};
use kvmconf_guests::result::Exit;
use kvmconf_harness::{Host, KvmError, run};
use std::time::{Duration, Instant};

/// One input: a small case (its memory and mode) and the CPU state to enter it with.
#[derive(Clone, Debug)]
pub struct StateInput {
    /// The case (image, mode, deadline).
    pub case: Case,
    /// The state loaded instead of the case's own start state.
    pub cpu: CpuState,
}

impl<'a> arbitrary::Arbitrary<'a> for StateInput {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut src = kvmconf_guests::r#gen::source::BytesSource::new(u);
        Ok(generate(&mut src))
    }
}

const CR0_BITS: [u64; 11] = [0, 1, 2, 3, 4, 5, 16, 18, 29, 30, 31];
const CR4_BITS: [u64; 19] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 16, 17, 18, 20, 21,
];
const EFER_BITS: [u64; 6] = [0, 8, 10, 11, 12, 14];

/// A state near the harness's start state for a random mode, with 1–4 random changes.
pub fn generate(src: &mut dyn Source) -> StateInput {
    let mode = [Mode::Real16, Mode::Prot32, Mode::Long64][src.below(3) as usize];
    // nop; nop; hlt — something to run if KVM accepts the state.
    let mut case = Case::new("state_entry", mode, 0x1000, vec![0x90, 0x90, 0xf4]);
    case.regs.rsp = Some(0x8000.into());
    case.stubs = src.below(2) == 0;
    case.timeout_ms = Some(100);
    case.max_exits = Some(64);
    let mut cpu = GuestModel::build(&case).cpu;
    for _ in 0..1 + src.below(4) {
        mutate(&mut cpu, src);
    }
    StateInput { case, cpu }
}

pub(crate) fn mutate(cpu: &mut CpuState, src: &mut dyn Source) {
    let bit = |src: &mut dyn Source, list: &[u64]| {
        if src.below(8) == 0 {
            1u64 << src.below(64)
        } else {
            1u64 << list[src.below(list.len() as u64) as usize]
        }
    };
    match src.below(10) {
        0 => cpu.cr0 ^= bit(src, &CR0_BITS),
        1 => cpu.cr4 ^= bit(src, &CR4_BITS),
        2 => cpu.efer ^= bit(src, &EFER_BITS),
        3 | 4 => {
            let seg = match src.below(8) {
                0 => &mut cpu.cs,
                1 => &mut cpu.ds,
                2 => &mut cpu.es,
                3 => &mut cpu.fs,
                4 => &mut cpu.gs,
                5 => &mut cpu.ss,
                6 => &mut cpu.tr,
                _ => &mut cpu.ldtr,
            };
            match src.below(4) {
                0 | 1 => seg.attributes ^= 1 << src.below(17),
                2 => seg.limit = src.next_u64() as u32,
                _ => {
                    seg.base = if src.below(2) == 0 {
                        src.next_u64()
                    } else {
                        src.below(1 << 20)
                    };
                    seg.selector = src.next_u64() as u16;
                }
            }
        }
        5 => cpu.rflags ^= 1 << src.below(23),
        6 => {
            cpu.rip = if src.below(2) == 0 {
                src.next_u64()
            } else {
                src.below(0x10000)
            }
        }
        7 => cpu.cr3 = src.next_u64() & !0xfff & if src.below(2) == 0 { 0xffff_ffff } else { !0 },
        8 => {
            if src.below(2) == 0 {
                cpu.gdt.limit = src.next_u64() as u16;
            } else {
                cpu.idt.limit = src.next_u64() as u16;
            }
        }
        _ => cpu.gpr[src.below(16) as usize] = src.next_u64(),
    }
}

/// Enters `input` on a fresh VM and checks the invariants.
pub fn exec(host: &Host, input: &StateInput) -> Result<Exec, KvmError> {
    let mut model = GuestModel::build(&input.case);
    model.cpu = input.cpu.clone();
    let mut vm = host.create_vm(&model.layout, false)?;
    for (addr, bytes) in &model.image {
        vm.mem.write(*addr, bytes)?;
    }
    // The invariant of a rejected call: KVM_SET_SREGS (then KVM_SET_REGS) by ioctl, and on a
    // rejection the state read back must be the state before that call.
    let before = vm.vcpu.state()?;
    if let Err(e) = vm.vcpu.set_state(&model.cpu) {
        let after = vm.vcpu.state()?;
        let mut details = Vec::new();
        if e.errno() != Some(libc::EINVAL) {
            details.push(format!("{e}: wanted EINVAL for a rejected state"));
        }
        let same = if e.to_string().starts_with("KVM_SET_REGS") {
            // KVM_SET_SREGS went through before it; only the registers must be unchanged.
            after.gpr == before.gpr && after.rip == before.rip && after.rflags == before.rflags
        } else {
            after == before
        };
        if !same {
            details.push(format!(
                "{e}, but the vCPU changed: before {before:x?}, after {after:x?}"
            ));
        }
        let signal = signal_of(("set_state rejected", e.to_string()));
        return Ok(finish(input, signal, details));
    }
    let t = Instant::now();
    let r = run::execute(&mut vm, &model, &input.case);
    let took = t.elapsed();
    let mut details = Vec::new();
    let signal = match &r {
        Err(e) => {
            details.push(format!("harness error: {e}"));
            signal_of(("harness error", e.to_string()))
        }
        Ok(res) => {
            if let Exit::Rejected { ioctl, errno } = &res.exit {
                // api.rst: an invalid state is rejected with EINVAL (KVM_RUN may also report
                // EFAULT/ENOEXEC for an entry it cannot perform).
                if !matches!(*errno, libc::EINVAL | libc::EFAULT | libc::ENOEXEC) {
                    details.push(format!(
                        "{ioctl}: wanted EINVAL for a rejected state, got errno {errno}"
                    ));
                }
            }
            super::result_signal(input.case.mode, 0, res)
        }
    };
    let limit = Duration::from_millis(input.case.deadline_ms() + 1000);
    if took > limit {
        details.push(format!(
            "KVM_RUN did not return within the deadline: {took:?}"
        ));
    }
    Ok(finish(input, signal, details))
}

fn finish(input: &StateInput, signal: u64, mut details: Vec<String>) -> Exec {
    let finding = (!details.is_empty()).then(|| Finding {
        target: Target::StateEntry,
        signature: format!(
            "state_entry:{}:{}",
            input.case.mode.name(),
            details[0].split(':').next().unwrap_or("")
        ),
        known: None,
        case: input.case.clone(),
        details: {
            details.push(format!("state: {:x?}", input.cpu));
            details
        },
    });
    Exec {
        signal,
        rejected: false,
        finding,
    }
}

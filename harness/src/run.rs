//! The run loop: executes a loaded case on a vCPU until a final exit, serving port I/O and MMIO,
//! recording the exit trace, enforcing the exit budget and the wall-clock deadline.

use crate::exit::KvmExit;
use crate::kvm::{KvmError, TestVm};
use crate::watchdog::{self, Deadline};
use kvmconf_guests::case::{Case, Mode};
use kvmconf_guests::layout::{self, CpuState, GuestModel, Segment};
use kvmconf_guests::num::{Hex, HexBytes};
use kvmconf_guests::result::{CaseResult, Event, Exit, MemDump};
use std::time::Duration;

/// The harness's view of guest memory outside RAM: the case's MMIO buffers.
#[derive(Clone, Debug)]
pub struct MmioSpace {
    regions: Vec<(u64, Vec<u8>)>,
}

impl MmioSpace {
    /// MMIO buffers from the model.
    pub fn new(model: &GuestModel) -> MmioSpace {
        MmioSpace {
            regions: model.mmio.clone(),
        }
    }

    fn byte(&self, addr: u64) -> Option<u8> {
        self.regions.iter().find_map(|(a, b)| {
            addr.checked_sub(*a)
                .and_then(|o| b.get(o as usize).copied())
        })
    }

    /// Reads `data.len()` bytes: declared bytes from their region, all-ones elsewhere.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        for (i, d) in data.iter_mut().enumerate() {
            *d = self.byte(addr.wrapping_add(i as u64)).unwrap_or(0xff);
        }
    }

    /// Writes bytes into declared regions; bytes elsewhere are dropped.
    pub fn write(&mut self, addr: u64, data: &[u8]) {
        for (i, &d) in data.iter().enumerate() {
            let at = addr.wrapping_add(i as u64);
            for (a, b) in &mut self.regions {
                if let Some(slot) = at.checked_sub(*a).and_then(|o| b.get_mut(o as usize)) {
                    *slot = d;
                }
            }
        }
    }
}

fn le(bytes: &[u8]) -> u64 {
    let mut v = [0u8; 8];
    let n = bytes.len().min(8);
    v[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(v)
}

/// Reads guest-physical memory the way a dump does: RAM from the mapping, the rest from MMIO.
pub fn read_phys(vm: &TestVm, mmio: &MmioSpace, addr: u64, buf: &mut [u8]) {
    // A page at a time: RAM and MMIO holes are page-granular, so a page is all one or the other.
    let lay = vm.layout();
    let mut done = 0usize;
    while done < buf.len() {
        let a = addr.wrapping_add(done as u64);
        let n = (0x1000 - (a & 0xfff) as usize).min(buf.len() - done);
        let chunk = &mut buf[done..done + n];
        if lay.is_ram(a) {
            if vm.mem.read(a, chunk).is_err() {
                chunk.fill(0);
            }
        } else {
            mmio.read(a, chunk);
        }
        done += n;
    }
}

fn segment_from_gdt(vm: &TestVm, mmio: &MmioSpace, cpu: &CpuState, selector: u16) -> Segment {
    let mut d = [0u8; 8];
    read_phys(vm, mmio, cpu.gdt.base + u64::from(selector & !7), &mut d);
    layout::decode_descriptor(selector, u64::from_le_bytes(d))
}

/// RFLAGS.RF.
const RFLAGS_RF: u64 = 1 << 16;

/// What the loop ended with, before the final state is read.
enum End {
    Exit(Exit),
    Stub(u8),
}

/// Runs a case whose RAM image is already loaded into `vm`; `model` must be the case's model.
pub fn execute(vm: &mut TestVm, model: &GuestModel, case: &Case) -> Result<CaseResult, KvmError> {
    let mut mmio = MmioSpace::new(model);
    let mut trace: Vec<Event> = Vec::new();
    let mut steps: Vec<Hex> = Vec::new();
    vm.vcpu.prepare_thread()?;
    // Guest debug first: KVM_SET_GUEST_DEBUG adjusts RFLAGS.TF, which set_state then overwrites.
    if let Err(e) = vm.vcpu.set_single_step(case.single_step) {
        return rejected(&e, &model.cpu, case);
    }
    if let Err(e) = vm.vcpu.load_state(&model.cpu) {
        return rejected(&e, &model.cpu, case);
    }
    let budget = case.exit_budget() as usize;
    let mut io_script = case.io_in.iter();
    let deadline = Deadline::arm(Duration::from_millis(case.deadline_ms()))?;
    let mut pending_io = false;
    let mut final_state: Option<CpuState> = None;
    let end = loop {
        let exit = match vm.vcpu.run_once() {
            Ok(e) => e,
            Err(libc::EINTR) => {
                watchdog::drain();
                if deadline.expired() {
                    break End::Exit(Exit::Timeout {
                        ms: case.deadline_ms(),
                    });
                }
                continue;
            }
            Err(errno) => {
                if vm.vcpu.staged() {
                    // KVM refused the staged state: load it by ioctl to name what it rejects.
                    if let Err(e) = vm.vcpu.unstage_and_set(&model.cpu) {
                        drop(deadline);
                        return rejected(&e, &model.cpu, case);
                    }
                    continue;
                }
                break End::Exit(Exit::Rejected {
                    ioctl: "KVM_RUN".into(),
                    errno,
                });
            }
        };
        pending_io = false;
        match exit {
            KvmExit::Io {
                input,
                size,
                port,
                count,
                data_offset,
            } => {
                pending_io = true;
                let area = vm.vcpu.run_area();
                let sz = usize::from(size);
                for i in 0..count as usize {
                    let at = data_offset as usize + i * sz;
                    let Some(slot) = area.get_mut(at..at + sz) else {
                        break;
                    };
                    if input {
                        let v = io_script.next().map_or(u64::MAX, |x| x.value.0);
                        slot.copy_from_slice(&v.to_le_bytes()[..sz]);
                        trace.push(Event::io_in(port, size, le(slot)));
                    } else {
                        trace.push(Event::io_out(port, size, le(slot)));
                    }
                }
            }
            KvmExit::Mmio {
                addr,
                data,
                len,
                write,
            } => {
                pending_io = true;
                let n = (len as usize).min(8);
                if write {
                    mmio.write(addr, &data[..n]);
                    trace.push(Event::mmio_write(addr, n as u8, le(&data[..n])));
                } else {
                    let mut buf = [0u8; 8];
                    mmio.read(addr, &mut buf[..n]);
                    // The MMIO data field is at the start of the exit union + 8.
                    let area = vm.vcpu.run_area();
                    area[crate::exit::off::UNION + 8..crate::exit::off::UNION + 16]
                        .copy_from_slice(&buf);
                    trace.push(Event::mmio_read(addr, n as u8, le(&buf[..n])));
                }
            }
            KvmExit::Debug {
                exception: 1, pc, ..
            } if case.single_step => {
                steps.push(Hex(pc));
            }
            KvmExit::Hlt => {
                let st = vm.vcpu.exit_state()?;
                let end = match model.layout.stub_vector(st.cs.selector, st.cs.base, st.rip) {
                    Some(v) => End::Stub(v),
                    None => End::Exit(Exit::Hlt),
                };
                final_state = Some(st);
                break end;
            }
            KvmExit::Shutdown => break End::Exit(Exit::Shutdown),
            KvmExit::FailEntry { reason, cpu } => {
                break End::Exit(Exit::FailEntry {
                    reason: Hex(reason),
                    cpu,
                });
            }
            KvmExit::InternalError { suberror, data } => {
                break End::Exit(Exit::InternalError {
                    suberror,
                    data: data.into_iter().map(Hex).collect(),
                });
            }
            KvmExit::Debug {
                exception,
                pc,
                dr6,
                dr7,
            } => {
                break End::Exit(Exit::Debug {
                    pc: Hex(pc),
                    exception,
                    dr6: Hex(dr6),
                    dr7: Hex(dr7),
                });
            }
            KvmExit::Intr | KvmExit::IrqWindowOpen => {}
            KvmExit::Msr { .. } | KvmExit::SystemEvent { .. } | KvmExit::Other(_) => {
                let raw = crate::exit::raw_reason(vm.vcpu.run_area());
                break End::Exit(Exit::Unsupported { reason: raw });
            }
        }
        if trace.len() + steps.len() + 1 > budget {
            break End::Exit(Exit::ExitBudget {
                exits: case.exit_budget(),
            });
        }
        if deadline.expired() {
            break End::Exit(Exit::Timeout {
                ms: case.deadline_ms(),
            });
        }
    };
    // A timer signal can only be pending once the deadline has passed.
    let expired = deadline.expired();
    drop(deadline);
    if expired {
        watchdog::drain();
    }
    if pending_io {
        flush_pending(vm);
    }
    let mut cpu = match final_state {
        Some(st) => st,
        None => vm.vcpu.exit_state()?,
    };
    let exit = match end {
        End::Exit(e) => e,
        End::Stub(v) => interrupted_context(vm, &mmio, model, case, &mut cpu, v),
    };
    let mut result = CaseResult::from_state(&case.name, exit, &cpu);
    result.trace = trace;
    result.steps = steps;
    result.memory = case
        .dump
        .iter()
        .map(|d| {
            let mut buf = vec![0u8; d.len.0 as usize];
            read_phys(vm, &mmio, d.addr.0, &mut buf);
            MemDump {
                addr: d.addr,
                hex: HexBytes(buf),
            }
        })
        .collect();
    Ok(result)
}

/// Completes an I/O or MMIO exit KVM is still waiting on (immediate_exit), so a reused vCPU
/// carries no pending emulation into the next case.
fn flush_pending(vm: &mut TestVm) {
    vm.vcpu.set_immediate_exit(true);
    let _ = vm.vcpu.run_once();
    vm.vcpu.set_immediate_exit(false);
    watchdog::drain();
}

/// Rebuilds the interrupted context from a stub's frame; returns the exit to report.
fn interrupted_context(
    vm: &TestVm,
    mmio: &MmioSpace,
    model: &GuestModel,
    case: &Case,
    cpu: &mut CpuState,
    vector: u8,
) -> Exit {
    let mode = case.mode;
    let sp_mask = match mode {
        Mode::Real16 => 0xffff,
        Mode::Prot32 => 0xffff_ffff,
        Mode::Long64 => u64::MAX,
    };
    let sp = cpu.gpr[4] & sp_mask;
    let mut bytes = vec![0u8; layout::frame_len(mode, vector)];
    read_phys(vm, mmio, cpu.ss.base.wrapping_add(sp), &mut bytes);
    let f = layout::decode_frame(mode, vector, sp, &bytes);
    cpu.rip = f.rip;
    cpu.gpr[4] = match mode {
        Mode::Long64 => f.rsp,
        _ => (cpu.gpr[4] & !sp_mask) | f.rsp,
    };
    match mode {
        Mode::Real16 => {
            cpu.rflags = (cpu.rflags & !0xffff) | (f.rflags & 0xffff);
            cpu.cs = Segment {
                selector: f.cs,
                base: u64::from(f.cs) << 4,
                limit: 0xffff,
                attributes: model.cpu.cs.attributes,
            };
        }
        _ => {
            cpu.rflags = f.rflags;
            cpu.cs = segment_from_gdt(vm, mmio, cpu, f.cs);
            if let Some(ss) = f.ss {
                cpu.ss = if ss & !3 == 0 {
                    Segment {
                        selector: ss,
                        ..model.cpu.ss
                    }
                } else {
                    segment_from_gdt(vm, mmio, cpu, ss)
                };
            }
        }
    }
    let ring3 = f.cs & 3 == 3;
    if ring3 && vector == 13 && f.error_code == Some(0) {
        let mut insn = [0u8];
        read_phys(vm, mmio, cpu.cs.base.wrapping_add(f.rip), &mut insn);
        if insn[0] == 0xf4 {
            // Reported as a completed HLT: rip past it, and RF (set in a fault's frame) clear,
            // as it is after any instruction completes.
            cpu.rip = f.rip + 1;
            cpu.rflags &= !RFLAGS_RF;
            return Exit::Hlt;
        }
    }
    Exit::Exception {
        vector,
        error_code: f.error_code.map(Hex),
        cr2: (vector == 14).then_some(Hex(cpu.cr2)),
    }
}

fn rejected(e: &KvmError, cpu: &CpuState, case: &Case) -> Result<CaseResult, KvmError> {
    match e {
        KvmError::Ioctl { ioctl, errno } => Ok(CaseResult::from_state(
            &case.name,
            Exit::Rejected {
                ioctl: (*ioctl).to_string(),
                errno: *errno,
            },
            cpu,
        )),
        _ => Err(KvmError::Ioctl {
            ioctl: "setup",
            errno: e.errno().unwrap_or(0),
        }),
    }
}

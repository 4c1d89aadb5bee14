//! `ioctl_sequence`: an arbitrary sequence of API calls on one VM. Invariants: every error is one
//! api.rst allows for that call; a rejected KVM_SET_SREGS leaves the vCPU unchanged; accepted
//! registers, special registers and MSRs read back as set; KVM_RUN ends in a documented exit; the
//! harness does not fail; the VM's fds are all closed afterwards.

use super::{Exec, Finding, Target, signal_of, state_entry};
use kvm_bindings::{Msrs, kvm_msr_entry};
use kvmconf_guests::case::{Case, Mode};
use kvmconf_guests::r#gen::source::SplitMix;
use kvmconf_guests::layout::GuestModel;
use kvmconf_guests::result::Exit;
use kvmconf_harness::raw::{Slot, map_in};
use kvmconf_harness::{Host, KvmError, run};

/// Longest sequence run (longer inputs are cut).
pub const MAX_OPS: usize = 32;

/// MSRs the sequence writes; the first three must read back as written when KVM accepts them.
const MSRS: [u32; 8] = [
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0102, // KERNEL_GS_BASE
    0x174,       // SYSENTER_CS
    0xc000_0084, // SFMASK
    0xc000_0103, // TSC_AUX
    0x277,       // PAT
    0x1b,        // APIC_BASE
];

/// One API call.
#[derive(Clone, Debug, arbitrary::Arbitrary)]
pub enum Op {
    /// KVM_SET_USER_MEMORY_REGION (add, move, change flags, or delete with `pages` = 0).
    Slot {
        /// Slot id (the harness's own slots are 0 and up).
        slot: u8,
        /// KVM_MEM_* flags (bit 0 LOG_DIRTY_PAGES, bit 1 READONLY, others invalid).
        flags: u8,
        /// Guest-physical page.
        gpa_page: u16,
        /// Size in pages.
        pages: u8,
        /// Page offset into the VM's RAM.
        offset_page: u16,
    },
    /// KVM_SET_REGS with one general register changed.
    SetReg {
        /// Register index 0–15 (mod 16), 16 = rip, 17 = rflags.
        reg: u8,
        /// Value.
        value: u64,
    },
    /// KVM_SET_SREGS of the current state with random changes.
    SetSregs {
        /// Seed of the changes.
        seed: u64,
    },
    /// KVM_SET_MSRS of one MSR.
    SetMsr {
        /// Index into the MSR list (or, past it, a raw index).
        which: u8,
        /// Raw index used when `which` is past the list.
        raw: u32,
        /// Value.
        value: u64,
    },
    /// KVM_SET_GUEST_DEBUG single-step on or off.
    GuestDebug {
        /// Single-step.
        on: bool,
    },
    /// KVM_RUN of the VM's small program (a deadline and an exit budget).
    Run,
    /// KVM_GET_DIRTY_LOG of every RAM slot.
    DirtyLog,
}

/// A capped list of calls.
#[derive(Clone, Debug)]
pub struct Ops(pub Vec<Op>);

impl<'a> arbitrary::Arbitrary<'a> for Ops {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut v = Vec::new();
        while v.len() < MAX_OPS && !u.is_empty() {
            v.push(u.arbitrary()?);
        }
        Ok(Ops(v))
    }
}

fn program() -> Case {
    // mov al, 0x2a; out 0xf1, al; mov [0x2000], al; hlt
    let mut c = Case::new(
        "ioctl_sequence",
        Mode::Long64,
        0x1000,
        vec![
            0xb0, 0x2a, 0xe6, 0xf1, 0x88, 0x04, 0x25, 0x00, 0x20, 0, 0, 0xf4,
        ],
    );
    c.regs.rsp = Some(0x8000.into());
    c.timeout_ms = Some(50);
    c.max_exits = Some(16);
    c.stubs = true;
    c
}

/// Counts this process's open fds.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Runs `ops` on a new VM. With `check_fds`, the process's fd count after the VM is dropped must
/// equal the count before it was created (only meaningful when no other thread opens fds).
pub fn exec_checked(host: &Host, ops: &Ops, check_fds: bool) -> Result<Exec, KvmError> {
    let case = program();
    let model = GuestModel::build(&case);
    let fds_before = fd_count();
    let mut bad: Vec<String> = Vec::new();
    let mut sig: Vec<String> = Vec::new();
    {
        let mut vm = host.create_vm(&model.layout, true)?;
        for (addr, bytes) in &model.image {
            vm.mem.write(*addr, bytes)?;
        }
        let ram_pages = vm.mem.size() / 4096;
        for op in ops.0.iter().take(MAX_OPS) {
            match op {
                Op::Slot {
                    slot,
                    flags,
                    gpa_page,
                    pages,
                    offset_page,
                } => {
                    let s = Slot {
                        slot: u32::from(*slot % 8) + if slot & 0x80 != 0 { 0 } else { 8 },
                        flags: u32::from(*flags & 0x7),
                        gpa: u64::from(*gpa_page) * 4096,
                        size: u64::from(*pages) * 4096,
                        offset: (u64::from(*offset_page) % ram_pages) * 4096,
                    };
                    match map_in(&vm, s) {
                        Ok(()) => sig.push("slot ok".into()),
                        Err(e) => match e.errno() {
                            // api.rst 4.35 and kvm_set_memory_region: bad flags, size or
                            // alignment (EINVAL), overlap with another slot (EEXIST), no memory.
                            Some(libc::EINVAL | libc::EEXIST | libc::ENOMEM) => {
                                sig.push(format!("slot {:?}", e.errno()))
                            }
                            Some(n) => bad.push(format!(
                                "KVM_SET_USER_MEMORY_REGION {s:?}: undocumented errno {n}"
                            )),
                            None => {} // outside our memory: not issued
                        },
                    }
                }
                Op::SetReg { reg, value } => {
                    let fd = vm.vcpu.fd();
                    let mut r = fd.get_regs().map_err(|e| KvmError::Ioctl {
                        ioctl: "KVM_GET_REGS",
                        errno: e.errno(),
                    })?;
                    let slot: &mut u64 = match reg % 18 {
                        0 => &mut r.rax,
                        1 => &mut r.rcx,
                        2 => &mut r.rdx,
                        3 => &mut r.rbx,
                        4 => &mut r.rsp,
                        5 => &mut r.rbp,
                        6 => &mut r.rsi,
                        7 => &mut r.rdi,
                        8 => &mut r.r8,
                        9 => &mut r.r9,
                        10 => &mut r.r10,
                        11 => &mut r.r11,
                        12 => &mut r.r12,
                        13 => &mut r.r13,
                        14 => &mut r.r14,
                        15 => &mut r.r15,
                        16 => &mut r.rip,
                        _ => &mut r.rflags,
                    };
                    *slot = *value;
                    if reg % 18 == 17 {
                        // Status flags, DF and IF (bit 1 reads as 1): the bits KVM_SET_REGS must
                        // keep as given in any mode (TF belongs to guest debug, VM/RF to the mode).
                        r.rflags = (r.rflags & 0xed5) | 2;
                    }
                    match fd.set_regs(&r) {
                        Ok(()) => {
                            let back = fd.get_regs().map_err(|e| KvmError::Ioctl {
                                ioctl: "KVM_GET_REGS",
                                errno: e.errno(),
                            })?;
                            if back != r {
                                bad.push(format!(
                                    "KVM_SET_REGS then KVM_GET_REGS: wanted {r:x?}, got {back:x?}"
                                ));
                            }
                            sig.push("regs ok".into());
                        }
                        Err(e) => bad.push(format!("KVM_SET_REGS failed: errno {}", e.errno())),
                    }
                }
                Op::SetSregs { seed } => {
                    let before = vm.vcpu.state()?;
                    let mut cpu = before.clone();
                    let mut src = SplitMix(*seed);
                    state_entry::mutate(&mut cpu, &mut src);
                    match vm.vcpu.set_state(&cpu) {
                        Ok(()) => {
                            let after = vm.vcpu.state()?;
                            if after.cr3 != cpu.cr3 || after.gdt != cpu.gdt || after.idt != cpu.idt
                            {
                                bad.push(format!(
                                    "KVM_SET_SREGS then KVM_GET_SREGS: cr3/gdt/idt wanted {:#x} {:x?} {:x?}, got {:#x} {:x?} {:x?}",
                                    cpu.cr3, cpu.gdt, cpu.idt, after.cr3, after.gdt, after.idt
                                ));
                            }
                            sig.push("sregs ok".into());
                        }
                        Err(e) => {
                            let errno = e.errno();
                            if errno != Some(libc::EINVAL) {
                                bad.push(format!("{e}: wanted EINVAL"));
                            }
                            let after = vm.vcpu.state()?;
                            let same = if e.to_string().starts_with("KVM_SET_REGS") {
                                after.gpr == before.gpr
                            } else {
                                after == before
                            };
                            if !same {
                                bad.push(format!(
                                    "{e}, but the vCPU changed: before {before:x?}, after {after:x?}"
                                ));
                            }
                            sig.push(format!("sregs {errno:?}"));
                        }
                    }
                }
                Op::SetMsr { which, raw, value } => {
                    let index = MSRS.get(usize::from(*which)).copied().unwrap_or(*raw);
                    let fd = vm.vcpu.fd();
                    let entries = [kvm_msr_entry {
                        index,
                        data: *value,
                        ..Default::default()
                    }];
                    let Ok(msrs) = Msrs::from_entries(&entries) else {
                        continue;
                    };
                    match fd.set_msrs(&msrs) {
                        Ok(n) => {
                            sig.push(format!("msr {index:#x} {n}"));
                            if n == 1 && MSRS[..3].contains(&index) {
                                let mut get = msrs.clone();
                                get.as_mut_slice()[0].data = 0;
                                if let Ok(1) = fd.get_msrs(&mut get) {
                                    let got = get.as_slice()[0].data;
                                    if got != *value {
                                        bad.push(format!(
                                            "KVM_SET_MSRS {index:#x} = {value:#x} accepted, KVM_GET_MSRS gives {got:#x}"
                                        ));
                                    }
                                }
                            }
                        }
                        Err(e) => bad.push(format!(
                            "KVM_SET_MSRS of one entry failed with errno {} (api.rst: returns the number set)",
                            e.errno()
                        )),
                    }
                }
                Op::GuestDebug { on } => match vm.vcpu.set_single_step(*on) {
                    Ok(()) => sig.push(format!("debug {on}")),
                    Err(e) if e.errno() == Some(libc::EINVAL) => sig.push("debug EINVAL".into()),
                    Err(e) => bad.push(format!("{e}: undocumented error")),
                },
                Op::Run => {
                    let r = run::execute(&mut vm, &model, &case)?;
                    match &r.exit {
                        Exit::Unsupported { reason } if *reason > 64 => {
                            bad.push(format!("KVM_RUN: exit reason {reason} is not a KVM_EXIT_*"))
                        }
                        Exit::Rejected { ioctl, errno }
                            if !matches!(*errno, libc::EINVAL | libc::EFAULT | libc::ENOEXEC) =>
                        {
                            bad.push(format!("{ioctl}: undocumented errno {errno}"))
                        }
                        _ => {}
                    }
                    sig.push(format!("run {}", super::result_signal(Mode::Long64, 0, &r)));
                }
                Op::DirtyLog => {
                    let mut pages = Vec::new();
                    match vm.take_dirty_pages(&mut pages) {
                        Ok(()) => sig.push("dirty ok".into()),
                        Err(e) if matches!(e.errno(), Some(libc::EINVAL | libc::ENOENT)) => {
                            sig.push("dirty err".into())
                        }
                        Err(e) => bad.push(format!("{e}: undocumented error")),
                    }
                }
            }
        }
    }
    let fds_after = fd_count();
    if check_fds && fds_after != fds_before {
        bad.push(format!(
            "fd count {fds_before} before the VM, {fds_after} after it was dropped"
        ));
    }
    let finding = (!bad.is_empty()).then(|| Finding {
        target: Target::IoctlSequence,
        signature: format!(
            "ioctl_sequence:{}",
            bad[0].split([':', ' ']).next().unwrap_or("")
        ),
        known: None,
        case: case.clone(),
        details: {
            bad.push(format!("ops: {:?}", ops.0));
            bad
        },
    });
    // Coverage is the set of outcomes seen, not their order.
    sig.sort();
    sig.dedup();
    Ok(Exec {
        signal: signal_of(&sig),
        rejected: false,
        finding,
    })
}

/// Runs `ops` without the fd check (safe with other threads running).
pub fn exec(host: &Host, ops: &Ops) -> Result<Exec, KvmError> {
    exec_checked(host, ops, false)
}

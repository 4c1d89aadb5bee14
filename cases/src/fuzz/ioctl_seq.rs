//! `ioctl_sequence`: an arbitrary sequence of API calls on one VM. Invariants: every error is one
//! api.rst allows for that call; a rejected KVM_SET_SREGS leaves the vCPU unchanged; accepted
//! registers, special registers and MSRs read back as set; KVM_RUN ends in a documented exit; the
//! harness does not fail; the VM's fds are all closed afterwards.
//!
//! A generated [`Op`] is turned into a [`Call`] when it runs (the call as issued: slot numbers,
//! masked flags, the special-register values set); a finding keeps the calls, which is what a
//! sequence file holds and what [`shrink`] removes calls from.

use super::artifact::H32;
use super::state_entry::StateChanges;
use super::{Exec, Finding, Input, Target, host_has, signal_of, state_entry};
use kvmconf_guests::Hex;
use kvmconf_guests::case::{Case, Mode};
use kvmconf_guests::r#gen::source::SplitMix;
use kvmconf_guests::layout::GuestModel;
use kvmconf_guests::result::Exit;
use kvmconf_harness::abi::{Msrs, kvm_msr_entry, kvm_regs};
use kvmconf_harness::kvm::Slot;
use kvmconf_harness::{Host, KvmError, TestVm, run};
use serde::{Deserialize, Serialize};

/// Longest sequence run (longer inputs are cut).
pub const MAX_OPS: usize = 32;

/// MSRs the sequence writes; the first three must read back as written when KVM accepts them.
pub const MSRS: [u32; 8] = [
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
        /// Below 128: the MSR list's entry `which % 8`; from 128: the raw index.
        which: u8,
        /// Raw index used when `which` is 128 or more.
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

/// A general register KVM_SET_REGS changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum Reg {
    Rax,
    Rcx,
    Rdx,
    Rbx,
    Rsp,
    Rbp,
    Rsi,
    Rdi,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
    Rip,
    Rflags,
}

impl Reg {
    const ALL: [Reg; 18] = [
        Reg::Rax,
        Reg::Rcx,
        Reg::Rdx,
        Reg::Rbx,
        Reg::Rsp,
        Reg::Rbp,
        Reg::Rsi,
        Reg::Rdi,
        Reg::R8,
        Reg::R9,
        Reg::R10,
        Reg::R11,
        Reg::R12,
        Reg::R13,
        Reg::R14,
        Reg::R15,
        Reg::Rip,
        Reg::Rflags,
    ];

    fn slot(self, r: &mut kvm_regs) -> &mut u64 {
        match self {
            Reg::Rax => &mut r.rax,
            Reg::Rcx => &mut r.rcx,
            Reg::Rdx => &mut r.rdx,
            Reg::Rbx => &mut r.rbx,
            Reg::Rsp => &mut r.rsp,
            Reg::Rbp => &mut r.rbp,
            Reg::Rsi => &mut r.rsi,
            Reg::Rdi => &mut r.rdi,
            Reg::R8 => &mut r.r8,
            Reg::R9 => &mut r.r9,
            Reg::R10 => &mut r.r10,
            Reg::R11 => &mut r.r11,
            Reg::R12 => &mut r.r12,
            Reg::R13 => &mut r.r13,
            Reg::R14 => &mut r.r14,
            Reg::R15 => &mut r.r15,
            Reg::Rip => &mut r.rip,
            Reg::Rflags => &mut r.rflags,
        }
    }
}

/// One API call as issued (the form sequence files hold, tagged by the ioctl's name).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ioctl", deny_unknown_fields)]
pub enum Call {
    /// KVM_SET_USER_MEMORY_REGION of a slot backed by the VM's RAM at `offset` (`size` 0 deletes).
    #[serde(rename = "KVM_SET_USER_MEMORY_REGION")]
    SetMemoryRegion {
        /// Slot id (the harness's own RAM slots are the lowest ids).
        slot: H32,
        /// KVM_MEM_* flags.
        flags: H32,
        /// Guest-physical start.
        gpa: Hex,
        /// Size in bytes.
        size: Hex,
        /// Offset of the backing memory into the VM's RAM.
        offset: Hex,
    },
    /// KVM_GET_REGS, one register changed, KVM_SET_REGS.
    #[serde(rename = "KVM_SET_REGS")]
    SetReg {
        /// The register.
        reg: Reg,
        /// Its new value.
        value: Hex,
    },
    /// KVM_SET_SREGS then KVM_SET_REGS of the current state with `changes` applied.
    #[serde(rename = "KVM_SET_SREGS")]
    SetState {
        /// Fields set, by `CpuState` name (`cr0`, `cs.attributes`, `gdt.limit`, …).
        #[serde(default)]
        changes: Box<StateChanges>,
    },
    /// KVM_SET_MSRS of one MSR.
    #[serde(rename = "KVM_SET_MSRS")]
    SetMsr {
        /// MSR index.
        msr: H32,
        /// Value.
        value: Hex,
    },
    /// KVM_SET_GUEST_DEBUG with single-step on (ENABLE|SINGLESTEP) or off.
    #[serde(rename = "KVM_SET_GUEST_DEBUG")]
    GuestDebug {
        /// Single-step.
        single_step: bool,
    },
    /// KVM_RUN of the sequence's case (start state reloaded; its deadline and exit budget).
    #[serde(rename = "KVM_RUN")]
    Run,
    /// KVM_GET_DIRTY_LOG of every RAM slot.
    #[serde(rename = "KVM_GET_DIRTY_LOG")]
    DirtyLog,
}

/// The program every sequence's KVM_RUN executes (long64 CPL0, stubs, 50 ms, 16 exits).
pub fn program() -> Case {
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

/// The call `op` stands for on `vm` now (memslot numbers and offsets fitted to the VM, flags
/// masked, the special-register changes drawn against the current state).
fn call_of(op: &Op, vm: &TestVm) -> Result<Call, KvmError> {
    let ram_pages = (vm.mem.size() / 4096).max(1);
    Ok(match op {
        Op::Slot {
            slot,
            flags,
            gpa_page,
            pages,
            offset_page,
        } => Call::SetMemoryRegion {
            slot: H32(u32::from(*slot % 8) + if slot & 0x80 != 0 { 0 } else { 8 }),
            flags: H32(u32::from(*flags & 0x7)),
            gpa: Hex(u64::from(*gpa_page) * 4096),
            size: Hex(u64::from(*pages) * 4096),
            offset: Hex((u64::from(*offset_page) % ram_pages) * 4096),
        },
        Op::SetReg { reg, value } => {
            let reg = Reg::ALL[usize::from(reg % 18)];
            let value = if reg == Reg::Rflags {
                // Status flags, DF and IF (bit 1 reads as 1): the bits KVM_SET_REGS must keep as
                // given in any mode (TF belongs to guest debug, VM/RF to the mode).
                (value & 0xed5) | 2
            } else {
                *value
            };
            Call::SetReg {
                reg,
                value: Hex(value),
            }
        }
        Op::SetSregs { seed } => {
            let before = vm.vcpu.state()?;
            let mut cpu = before.clone();
            state_entry::mutate(&mut cpu, &mut SplitMix(*seed));
            Call::SetState {
                changes: Box::new(StateChanges::between(&before, &cpu)),
            }
        }
        Op::SetMsr { which, raw, value } => Call::SetMsr {
            msr: H32(if *which < 128 {
                MSRS[usize::from(*which) % MSRS.len()]
            } else {
                *raw
            }),
            value: Hex(*value),
        },
        Op::GuestDebug { on } => Call::GuestDebug { single_step: *on },
        Op::Run => Call::Run,
        Op::DirtyLog => Call::DirtyLog,
    })
}

/// Whether a PAT value has a reserved memory type (2, 3 or 8–255) in any of its eight entries.
pub fn pat_reserved(value: u64) -> bool {
    value
        .to_le_bytes()
        .iter()
        .any(|&t| !matches!(t, 0 | 1 | 4 | 5 | 6 | 7))
}

/// The id of the known deviation that explains a broken invariant, when one does on this host.
const KNOWN_PAT: &str = super::PAT_RESERVED;

/// A broken invariant: a short id (the finding's signature) and what happened.
struct Bad {
    id: &'static str,
    what: String,
}

/// Issues `call` on `vm` and checks its invariants; returns the outcome's signal string.
fn issue(
    call: &Call,
    vm: &mut TestVm,
    model: &GuestModel,
    case: &Case,
    bad: &mut Vec<Bad>,
) -> Result<String, KvmError> {
    let mut fail = |id: &'static str, what: String| bad.push(Bad { id, what });
    Ok(match call {
        Call::SetMemoryRegion {
            slot,
            flags,
            gpa,
            size,
            offset,
        } => {
            let s = Slot {
                slot: slot.0,
                flags: flags.0,
                gpa: gpa.0,
                size: size.0,
                offset: offset.0,
            };
            match vm.try_set_memslot(s) {
                Ok(()) => "slot ok".into(),
                Err(e) => match e.errno() {
                    // api.rst 4.35 and kvm_set_memory_region: bad flags, size or alignment
                    // (EINVAL), overlap with another slot (EEXIST), no memory.
                    Some(libc::EINVAL | libc::EEXIST | libc::ENOMEM) => {
                        format!("slot {:?}", e.errno())
                    }
                    Some(n) => {
                        fail(
                            "slot-errno",
                            format!("KVM_SET_USER_MEMORY_REGION {s:?}: undocumented errno {n}"),
                        );
                        format!("slot {n}")
                    }
                    None => "slot outside RAM (not issued)".into(),
                },
            }
        }
        Call::SetReg { reg, value } => {
            let mut r = vm.vcpu.try_get_regs()?;
            *reg.slot(&mut r) = value.0;
            match vm.vcpu.try_set_regs(&r) {
                Ok(()) => {
                    let back = vm.vcpu.try_get_regs()?;
                    if back != r {
                        fail(
                            "regs-roundtrip",
                            format!("KVM_SET_REGS then KVM_GET_REGS: wanted {r:x?}, got {back:x?}"),
                        );
                    }
                    "regs ok".into()
                }
                Err(e) => {
                    fail(
                        "regs-errno",
                        format!("KVM_SET_REGS failed: errno {}", e.errno()),
                    );
                    format!("regs {}", e.errno())
                }
            }
        }
        Call::SetState { changes } => {
            let before = vm.vcpu.state()?;
            let cpu = changes.apply(&before);
            match vm.vcpu.set_state(&cpu) {
                Ok(()) => {
                    let after = vm.vcpu.state()?;
                    if after.cr3 != cpu.cr3 || after.gdt != cpu.gdt || after.idt != cpu.idt {
                        fail(
                            "sregs-roundtrip",
                            format!(
                                "KVM_SET_SREGS then KVM_GET_SREGS: cr3/gdt/idt wanted {:#x} {:x?} {:x?}, got {:#x} {:x?} {:x?}",
                                cpu.cr3, cpu.gdt, cpu.idt, after.cr3, after.gdt, after.idt
                            ),
                        );
                    }
                    "sregs ok".into()
                }
                Err(e) => {
                    let errno = e.errno();
                    if errno != Some(libc::EINVAL) {
                        fail("sregs-errno", format!("{e}: wanted EINVAL"));
                    }
                    let after = vm.vcpu.state()?;
                    let same = if e.to_string().starts_with("KVM_SET_REGS") {
                        after.gpr == before.gpr
                    } else {
                        after == before
                    };
                    if !same {
                        fail(
                            "sregs-changed",
                            format!(
                                "{e}, but the vCPU changed: before {before:x?}, after {after:x?}"
                            ),
                        );
                    }
                    format!("sregs {errno:?}")
                }
            }
        }
        Call::SetMsr { msr, value } => {
            let (index, value) = (msr.0, value.0);
            let entries = [kvm_msr_entry {
                index,
                data: value,
                ..Default::default()
            }];
            let Ok(msrs) = Msrs::from_entries(&entries) else {
                return Ok("msr not issued".into());
            };
            match vm.vcpu.try_set_msrs(&msrs) {
                Ok(n) => {
                    if n == 1 && MSRS[..3].contains(&index) {
                        let mut get = msrs.clone();
                        get.as_mut_slice()[0].data = 0;
                        if let Ok(1) = vm.vcpu.try_get_msrs(&mut get) {
                            let got = get.as_slice()[0].data;
                            if got != value {
                                fail(
                                    "msr-roundtrip",
                                    format!(
                                        "KVM_SET_MSRS {index:#x} = {value:#x} accepted, KVM_GET_MSRS gives {got:#x}"
                                    ),
                                );
                            }
                        }
                    }
                    if n != 0 && index == 0x277 && pat_reserved(value) {
                        // api.rst 4.19: KVM_SET_MSRS stops at an MSR that fails, e.g. for
                        // reserved bits; SDM 3A 13.12.2: PAT types 2, 3 and 8-255 are reserved.
                        fail(
                            "msr-pat-reserved",
                            format!(
                                "KVM_SET_MSRS of IA32_PAT = {value:#x} (a reserved memory type): number of MSRs set: wanted 0, got {n}"
                            ),
                        );
                    }
                    format!("msr {index:#x} {n}")
                }
                Err(e) => {
                    fail(
                        "msr-errno",
                        format!(
                            "KVM_SET_MSRS of one entry failed with errno {} (api.rst: returns the number set)",
                            e.errno()
                        ),
                    );
                    format!("msr {index:#x} errno {}", e.errno())
                }
            }
        }
        Call::GuestDebug { single_step } => match vm.vcpu.set_single_step(*single_step) {
            Ok(()) => format!("debug {single_step}"),
            Err(e) if e.errno() == Some(libc::EINVAL) => "debug EINVAL".into(),
            Err(e) => {
                fail("debug-errno", format!("{e}: undocumented error"));
                "debug error".into()
            }
        },
        Call::Run => {
            let r = run::execute(vm, model, case)?;
            match &r.exit {
                Exit::Unsupported { reason } if *reason > 64 => fail(
                    "run-exit-reason",
                    format!("KVM_RUN: exit reason {reason} is not a KVM_EXIT_*"),
                ),
                Exit::Rejected { ioctl, errno }
                    if !matches!(*errno, libc::EINVAL | libc::EFAULT | libc::ENOEXEC) =>
                {
                    fail("run-errno", format!("{ioctl}: undocumented errno {errno}"))
                }
                _ => {}
            }
            format!("run {}", super::result_signal(case.mode, case.cpl, &r))
        }
        Call::DirtyLog => {
            let mut pages = Vec::new();
            match vm.take_dirty_pages(&mut pages) {
                Ok(()) => "dirty ok".into(),
                Err(e) if matches!(e.errno(), Some(libc::EINVAL | libc::ENOENT)) => {
                    "dirty err".into()
                }
                Err(e) => {
                    fail("dirty-log-errno", format!("{e}: undocumented error"));
                    "dirty error".into()
                }
            }
        }
    })
}

/// Where the calls of a run come from.
enum Calls<'a> {
    Generated(&'a [Op]),
    Given(&'a [Call]),
}

/// Runs `ops` on a new VM. With `check_fds`, the process's fd count after the VM is dropped must
/// equal the count before it was created (only meaningful when no other thread opens fds).
pub fn exec_checked(host: &Host, ops: &Ops, check_fds: bool) -> Result<Exec, KvmError> {
    sequence(host, &program(), Calls::Generated(&ops.0), check_fds, None)
}

/// Runs `calls` (a sequence file's) on a new VM made for `case`; `check_fds` as in
/// [`exec_checked`], `extra` an additional invariant (see [`super::Extra`]).
pub fn exec_calls(
    host: &Host,
    case: &Case,
    calls: &[Call],
    check_fds: bool,
    extra: Option<&super::CallCheck>,
) -> Result<Exec, KvmError> {
    sequence(host, case, Calls::Given(calls), check_fds, extra)
}

fn sequence(
    host: &Host,
    case: &Case,
    calls: Calls<'_>,
    check_fds: bool,
    extra: Option<&super::CallCheck>,
) -> Result<Exec, KvmError> {
    let model = GuestModel::build(case);
    let fds_before = fd_count();
    let mut bad: Vec<Bad> = Vec::new();
    let mut sig: Vec<String> = Vec::new();
    let mut issued: Vec<Call> = Vec::new();
    {
        let mut vm = host.create_vm(&model.layout, true)?;
        for (addr, bytes) in &model.image {
            vm.mem.write(*addr, bytes)?;
        }
        let n = match calls {
            Calls::Generated(ops) => ops.len(),
            Calls::Given(cs) => cs.len(),
        };
        for i in 0..n.min(MAX_OPS) {
            let call = match calls {
                Calls::Generated(ops) => call_of(&ops[i], &vm)?,
                Calls::Given(cs) => cs[i].clone(),
            };
            let outcome = issue(&call, &mut vm, &model, case, &mut bad)?;
            if let Some(why) = extra.and_then(|f| f(&call, &outcome)) {
                bad.push(Bad {
                    id: "extra",
                    what: why,
                });
            }
            sig.push(outcome);
            issued.push(call);
        }
    }
    let fds_after = fd_count();
    if check_fds && fds_after != fds_before {
        bad.push(Bad {
            id: "fd-leak",
            what: format!("fd count {fds_before} before the VM, {fds_after} after it was dropped"),
        });
    }
    let finding = bad.first().map(|first| Finding {
        target: Target::IoctlSequence,
        signature: format!("ioctl_sequence:{}", first.id),
        known: (first.id == "msr-pat-reserved" && host_has(KNOWN_PAT))
            .then(|| KNOWN_PAT.to_string()),
        case: case.clone(),
        input: Input::Calls(issued),
        details: bad.iter().map(|b| b.what.clone()).collect(),
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

/// Shrinks a sequence while `still` holds: chunks of calls are removed, halving the chunk size
/// down to single calls. At most [`super::minimise::MAX_TRIES`] candidates and
/// [`super::minimise::MAX_TIME`].
pub fn shrink(calls: &[Call], still: &mut dyn FnMut(&[Call]) -> bool) -> Vec<Call> {
    let mut best = calls.to_vec();
    let started = std::time::Instant::now();
    let mut tries = 0usize;
    let mut chunk = best.len().div_ceil(2).max(1);
    loop {
        let mut start = 0;
        while start < best.len() {
            if tries >= super::minimise::MAX_TRIES || started.elapsed() > super::minimise::MAX_TIME
            {
                return best;
            }
            let end = (start + chunk).min(best.len());
            let mut cand = best.clone();
            cand.drain(start..end);
            tries += 1;
            if !cand.is_empty() && still(&cand) {
                best = cand;
            } else {
                start = end;
            }
        }
        if chunk == 1 {
            break;
        }
        chunk = chunk.div_ceil(2);
    }
    best
}

/// Runs `ops` without the fd check (safe with other threads running).
pub fn exec(host: &Host, ops: &Ops) -> Result<Exec, KvmError> {
    exec_checked(host, ops, false)
}

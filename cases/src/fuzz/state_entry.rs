//! `state_entry`: random register and special-register states into a fresh VM. KVM must either
//! reject the state (EINVAL, leaving the vCPU unchanged), fail the entry, or run it; the run ends
//! within its deadline. Also the file form of an input: the case plus [`StateChanges`], the
//! fields that differ from the case's own start state, and the shrinker that reverts them.

use super::artifact::{H16, H32};
use super::{Exec, Finding, Input, Target, signal_of};
use kvmconf_guests::Hex;
use kvmconf_guests::case::{Case, Mode};
use kvmconf_guests::r#gen::source::Source;
use kvmconf_guests::layout::{CpuState, GPR_NAMES, GuestModel, Segment, TableReg};
use kvmconf_guests::result::Exit;
use kvmconf_harness::{Host, KvmError, run};
use serde::{Deserialize, Serialize};
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
    exec_with(host, input, None)
}

/// [`exec`] with an extra invariant on the run's result (see [`super::Extra`]).
pub fn exec_with(
    host: &Host,
    input: &StateInput,
    extra: Option<&super::StateCheck>,
) -> Result<Exec, KvmError> {
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
            if let Some(why) = extra.and_then(|f| f(input, res)) {
                details.push(why);
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

fn finish(input: &StateInput, signal: u64, details: Vec<String>) -> Exec {
    let finding = (!details.is_empty()).then(|| Finding {
        target: Target::StateEntry,
        signature: format!(
            "state_entry:{}:{}",
            input.case.mode.name(),
            details[0].split(':').next().unwrap_or("")
        ),
        known: None,
        case: input.case.clone(),
        input: Input::State(Box::new(input.clone())),
        details,
    });
    Exec {
        signal,
        rejected: false,
        finding,
    }
}

/// Changes to one segment register (absent parts keep the start state's value).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegChanges {
    /// Selector (16 bits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<H16>,
    /// Base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Hex>,
    /// Limit in bytes (32 bits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<H32>,
    /// Attributes in the VMX access-rights layout (32 bits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<H32>,
}

/// Changes to a descriptor-table register.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableChanges {
    /// Base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Hex>,
    /// Limit (16 bits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<H16>,
}

impl SegChanges {
    fn apply(&self, s: &mut Segment) {
        if let Some(v) = self.selector {
            s.selector = v.0;
        }
        if let Some(v) = self.base {
            s.base = v.0;
        }
        if let Some(v) = self.limit {
            s.limit = v.0;
        }
        if let Some(v) = self.attributes {
            s.attributes = v.0;
        }
    }

    fn between(a: &Segment, b: &Segment) -> Option<SegChanges> {
        let c = SegChanges {
            selector: (a.selector != b.selector).then_some(H16(b.selector)),
            base: (a.base != b.base).then_some(Hex(b.base)),
            limit: (a.limit != b.limit).then_some(H32(b.limit)),
            attributes: (a.attributes != b.attributes).then_some(H32(b.attributes)),
        };
        (c != SegChanges::default()).then_some(c)
    }

    fn count(&self) -> usize {
        usize::from(self.selector.is_some())
            + usize::from(self.base.is_some())
            + usize::from(self.limit.is_some())
            + usize::from(self.attributes.is_some())
    }
}

impl TableChanges {
    fn apply(&self, t: &mut TableReg) {
        if let Some(v) = self.base {
            t.base = v.0;
        }
        if let Some(v) = self.limit {
            t.limit = v.0;
        }
    }

    fn between(a: &TableReg, b: &TableReg) -> Option<TableChanges> {
        let c = TableChanges {
            base: (a.base != b.base).then_some(Hex(b.base)),
            limit: (a.limit != b.limit).then_some(H16(b.limit)),
        };
        (c != TableChanges::default()).then_some(c)
    }

    fn count(&self) -> usize {
        usize::from(self.base.is_some()) + usize::from(self.limit.is_some())
    }
}

/// Declares [`StateChanges`] with one optional field per 64-bit register, segment register and
/// table register of [`CpuState`], and the code that walks them.
macro_rules! state_changes {
    (gpr: [$($g:ident = $gi:expr),*], num: [$($n:ident),*], seg: [$($s:ident = $sf:ident),*],
     table: [$($t:ident),*]) => {
        /// CPU-state fields that differ from a case's start state, each set to an absolute value.
        /// In files: `rax = "0x1"`, `cs.attributes = "0xa09b"`, `gdt.limit = "0x0"`, … — the names
        /// of `CpuState` (`ldtr` is the LDT register).
        #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct StateChanges {
            $(
                #[doc = concat!("`", stringify!($g), "`.")]
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $g: Option<Hex>,
            )*
            $(
                #[doc = concat!("`", stringify!($n), "`.")]
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $n: Option<Hex>,
            )*
            $(
                #[doc = concat!("`", stringify!($s), "`.")]
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $s: Option<SegChanges>,
            )*
            $(
                #[doc = concat!("`", stringify!($t), "`.")]
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $t: Option<TableChanges>,
            )*
        }

        impl StateChanges {
            /// `base` with these changes applied.
            pub fn apply(&self, base: &CpuState) -> CpuState {
                let mut c = base.clone();
                $( if let Some(v) = self.$g { c.gpr[$gi] = v.0; } )*
                $( if let Some(v) = self.$n { c.$n = v.0; } )*
                $( if let Some(v) = &self.$s { v.apply(&mut c.$sf); } )*
                $( if let Some(v) = &self.$t { v.apply(&mut c.$t); } )*
                c
            }

            /// The changes that turn `base` into `cpu`.
            pub fn between(base: &CpuState, cpu: &CpuState) -> StateChanges {
                StateChanges {
                    $( $g: (base.gpr[$gi] != cpu.gpr[$gi]).then_some(Hex(cpu.gpr[$gi])), )*
                    $( $n: (base.$n != cpu.$n).then_some(Hex(cpu.$n)), )*
                    $( $s: SegChanges::between(&base.$sf, &cpu.$sf), )*
                    $( $t: TableChanges::between(&base.$t, &cpu.$t), )*
                }
            }

            /// How many values are changed (each part of a segment or table register counts).
            pub fn count(&self) -> usize {
                0 $( + usize::from(self.$g.is_some()) )*
                  $( + usize::from(self.$n.is_some()) )*
                  $( + self.$s.as_ref().map_or(0, SegChanges::count) )*
                  $( + self.$t.as_ref().map_or(0, TableChanges::count) )*
            }
        }
    };
}

state_changes!(
    gpr: [rax = 0, rcx = 1, rdx = 2, rbx = 3, rsp = 4, rbp = 5, rsi = 6, rdi = 7, r8 = 8, r9 = 9,
          r10 = 10, r11 = 11, r12 = 12, r13 = 13, r14 = 14, r15 = 15],
    num: [rip, rflags, cr0, cr2, cr3, cr4, efer],
    seg: [cs = cs, ds = ds, es = es, fs = fs, gs = gs, ss = ss, tr = tr, ldtr = ldtr],
    table: [gdt, idt]
);

/// Reads the field `path` (`rax`, `rip`, `cs.base`, `gdt.limit`, …) of `cpu`.
pub fn field(cpu: &CpuState, path: &str) -> Option<u64> {
    let (head, tail) = path.split_once('.').unwrap_or((path, ""));
    if let Some(i) = GPR_NAMES.iter().position(|g| *g == head) {
        return tail.is_empty().then_some(cpu.gpr[i]);
    }
    let seg = match head {
        "cs" => Some(&cpu.cs),
        "ds" => Some(&cpu.ds),
        "es" => Some(&cpu.es),
        "fs" => Some(&cpu.fs),
        "gs" => Some(&cpu.gs),
        "ss" => Some(&cpu.ss),
        "tr" => Some(&cpu.tr),
        "ldtr" => Some(&cpu.ldtr),
        _ => None,
    };
    if let Some(s) = seg {
        return match tail {
            "selector" => Some(u64::from(s.selector)),
            "base" => Some(s.base),
            "limit" => Some(u64::from(s.limit)),
            "attributes" => Some(u64::from(s.attributes)),
            _ => None,
        };
    }
    let table = match head {
        "gdt" => Some(&cpu.gdt),
        "idt" => Some(&cpu.idt),
        _ => None,
    };
    if let Some(t) = table {
        return match tail {
            "base" => Some(t.base),
            "limit" => Some(u64::from(t.limit)),
            _ => None,
        };
    }
    if !tail.is_empty() {
        return None;
    }
    match head {
        "rip" => Some(cpu.rip),
        "rflags" => Some(cpu.rflags),
        "cr0" => Some(cpu.cr0),
        "cr2" => Some(cpu.cr2),
        "cr3" => Some(cpu.cr3),
        "cr4" => Some(cpu.cr4),
        "efer" => Some(cpu.efer),
        _ => None,
    }
}

/// Every field path of a CPU state, in file order.
pub fn field_paths() -> Vec<String> {
    let mut v: Vec<String> = GPR_NAMES.iter().map(|g| g.to_string()).collect();
    v.extend(["rip", "rflags"].map(String::from));
    for s in ["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldtr"] {
        for p in ["selector", "base", "limit", "attributes"] {
            v.push(format!("{s}.{p}"));
        }
    }
    for t in ["gdt", "idt"] {
        v.push(format!("{t}.base"));
        v.push(format!("{t}.limit"));
    }
    v.extend(["cr0", "cr2", "cr3", "cr4", "efer"].map(String::from));
    v
}

/// Writes the field `path` of `cpu` (narrower fields take the low bits); false for an unknown path.
pub fn set_field(cpu: &mut CpuState, path: &str, v: u64) -> bool {
    let (head, tail) = path.split_once('.').unwrap_or((path, ""));
    if let Some(i) = GPR_NAMES.iter().position(|g| *g == head) {
        if !tail.is_empty() {
            return false;
        }
        cpu.gpr[i] = v;
        return true;
    }
    let seg = match head {
        "cs" => Some(&mut cpu.cs),
        "ds" => Some(&mut cpu.ds),
        "es" => Some(&mut cpu.es),
        "fs" => Some(&mut cpu.fs),
        "gs" => Some(&mut cpu.gs),
        "ss" => Some(&mut cpu.ss),
        "tr" => Some(&mut cpu.tr),
        "ldtr" => Some(&mut cpu.ldtr),
        _ => None,
    };
    if let Some(s) = seg {
        match tail {
            "selector" => s.selector = v as u16,
            "base" => s.base = v,
            "limit" => s.limit = v as u32,
            "attributes" => s.attributes = v as u32,
            _ => return false,
        }
        return true;
    }
    let table = match head {
        "gdt" => Some(&mut cpu.gdt),
        "idt" => Some(&mut cpu.idt),
        _ => None,
    };
    if let Some(t) = table {
        match tail {
            "base" => t.base = v,
            "limit" => t.limit = v as u16,
            _ => return false,
        }
        return true;
    }
    if !tail.is_empty() {
        return false;
    }
    let r = match head {
        "rip" => &mut cpu.rip,
        "rflags" => &mut cpu.rflags,
        "cr0" => &mut cpu.cr0,
        "cr2" => &mut cpu.cr2,
        "cr3" => &mut cpu.cr3,
        "cr4" => &mut cpu.cr4,
        "efer" => &mut cpu.efer,
        _ => return false,
    };
    *r = v;
    true
}

impl StateInput {
    /// The start state the harness would give the case (what [`StateChanges`] are relative to).
    pub fn base(case: &Case) -> CpuState {
        GuestModel::build(case).cpu
    }

    /// The input of `case` entered with `changes` applied to its start state.
    pub fn from_changes(case: Case, changes: &StateChanges) -> StateInput {
        let cpu = changes.apply(&StateInput::base(&case));
        StateInput { case, cpu }
    }

    /// This input's state as changes to the case's start state.
    pub fn changes(&self) -> StateChanges {
        StateChanges::between(&StateInput::base(&self.case), &self.cpu)
    }
}

/// Shrinks `input` while `still` holds: each changed field is reverted to the start state's value
/// in turn, then each differing bit of the fields left (highest first). At most
/// [`super::minimise::MAX_TRIES`] candidates and [`super::minimise::MAX_TIME`].
pub fn shrink(input: &StateInput, still: &mut dyn FnMut(&StateInput) -> bool) -> StateInput {
    let base = StateInput::base(&input.case);
    let mut best = input.clone();
    let started = Instant::now();
    let mut tries = 0usize;
    let mut attempt = |cand: StateInput, best: &mut StateInput| -> bool {
        if tries >= super::minimise::MAX_TRIES || started.elapsed() > super::minimise::MAX_TIME {
            return false;
        }
        tries += 1;
        if still(&cand) {
            *best = cand;
            true
        } else {
            false
        }
    };
    let paths = field_paths();
    for p in &paths {
        let (Some(b), Some(v)) = (field(&base, p), field(&best.cpu, p)) else {
            continue;
        };
        if b != v {
            let mut c = best.clone();
            set_field(&mut c.cpu, p, b);
            attempt(c, &mut best);
        }
    }
    for p in &paths {
        let (Some(b), Some(v)) = (field(&base, p), field(&best.cpu, p)) else {
            continue;
        };
        let mut diff = b ^ v;
        while diff != 0 {
            let bit = 63 - diff.leading_zeros();
            diff &= !(1u64 << bit);
            let cur = field(&best.cpu, p).unwrap_or(v);
            let mut c = best.clone();
            set_field(&mut c.cpu, p, cur ^ (1u64 << bit));
            attempt(c, &mut best);
        }
    }
    best
}

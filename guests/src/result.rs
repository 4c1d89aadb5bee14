//! The result format: exit, trace and final state of one case, shared by KVM runs and the interpreter.

use crate::layout::{CpuState, GPR_NAMES, Segment};
use crate::num::{Hex, HexBytes};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How a case ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Exit {
    /// The guest executed HLT (at CPL3: the #GP it raised, reported as a HLT).
    Hlt,
    /// Triple fault.
    Shutdown,
    /// An exception reached a stub.
    Exception {
        /// Vector 0–31.
        vector: u8,
        /// Error code, for vectors that push one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error_code: Option<Hex>,
        /// CR2, for #PF.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cr2: Option<Hex>,
    },
    /// KVM_EXIT_FAIL_ENTRY.
    FailEntry {
        /// hardware_entry_failure_reason.
        reason: Hex,
        /// The CPU it failed on.
        cpu: u32,
    },
    /// KVM_EXIT_INTERNAL_ERROR.
    InternalError {
        /// Suberror (1 = emulation failure).
        suberror: u32,
        /// The data words KVM supplied.
        data: Vec<Hex>,
    },
    /// KVM_EXIT_DEBUG that the harness did not ask for.
    Debug {
        /// Guest PC.
        pc: Hex,
        /// Exception vector (1 = #DB, 3 = #BP).
        exception: u32,
        /// DR6.
        dr6: Hex,
        /// DR7.
        dr7: Hex,
    },
    /// An exit reason the harness does not handle.
    Unsupported {
        /// The raw exit reason.
        reason: u32,
    },
    /// More exits than `max_exits`.
    ExitBudget {
        /// The budget.
        exits: u32,
    },
    /// The wall-clock deadline passed.
    Timeout {
        /// The deadline.
        ms: u64,
    },
    /// KVM refused the state or an ioctl failed.
    Rejected {
        /// The ioctl.
        ioctl: String,
        /// errno.
        errno: i32,
    },
    /// The interpreter met an instruction it does not model.
    UnsupportedInstruction {
        /// Linear address of the instruction.
        rip: Hex,
        /// Its bytes.
        bytes: HexBytes,
        /// Its mnemonic as iced-x86 decodes it.
        mnemonic: String,
    },
}

impl Exit {
    /// A short name for tables.
    pub fn kind(&self) -> &'static str {
        match self {
            Exit::Hlt => "hlt",
            Exit::Shutdown => "shutdown",
            Exit::Exception { .. } => "exception",
            Exit::FailEntry { .. } => "fail_entry",
            Exit::InternalError { .. } => "internal_error",
            Exit::Debug { .. } => "debug",
            Exit::Unsupported { .. } => "unsupported",
            Exit::ExitBudget { .. } => "exit_budget",
            Exit::Timeout { .. } => "timeout",
            Exit::Rejected { .. } => "rejected",
            Exit::UnsupportedInstruction { .. } => "unsupported_instruction",
        }
    }
}

/// A port or MMIO access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// Port number (for I/O).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Guest-physical address (for MMIO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<Hex>,
    /// Bytes.
    pub size: u8,
    /// Value (little-endian bytes as a number).
    pub value: Hex,
}

/// One thing the guest did at the VMM boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// OUT/OUTS element.
    IoOut(Access),
    /// IN/INS element, with the value supplied.
    IoIn(Access),
    /// MMIO read, with the value supplied.
    MmioRead(Access),
    /// MMIO write.
    MmioWrite(Access),
}

impl Event {
    /// An I/O write.
    pub fn io_out(port: u16, size: u8, value: u64) -> Event {
        Event::IoOut(Access {
            port: Some(port),
            addr: None,
            size,
            value: Hex(value),
        })
    }
    /// An I/O read.
    pub fn io_in(port: u16, size: u8, value: u64) -> Event {
        Event::IoIn(Access {
            port: Some(port),
            addr: None,
            size,
            value: Hex(value),
        })
    }
    /// An MMIO read.
    pub fn mmio_read(addr: u64, size: u8, value: u64) -> Event {
        Event::MmioRead(Access {
            port: None,
            addr: Some(Hex(addr)),
            size,
            value: Hex(value),
        })
    }
    /// An MMIO write.
    pub fn mmio_write(addr: u64, size: u8, value: u64) -> Event {
        Event::MmioWrite(Access {
            port: None,
            addr: Some(Hex(addr)),
            size,
            value: Hex(value),
        })
    }
}

/// General registers by name plus rip and rflags.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Regs {
    pub rax: Hex,
    pub rbx: Hex,
    pub rcx: Hex,
    pub rdx: Hex,
    pub rsi: Hex,
    pub rdi: Hex,
    pub rsp: Hex,
    pub rbp: Hex,
    pub r8: Hex,
    pub r9: Hex,
    pub r10: Hex,
    pub r11: Hex,
    pub r12: Hex,
    pub r13: Hex,
    pub r14: Hex,
    pub r15: Hex,
    pub rip: Hex,
    pub rflags: Hex,
}

impl Regs {
    /// Every register as `(name, value)`, in the order the result lists (and serialises) them.
    pub fn fields(&self) -> [(&'static str, u64); 18] {
        [
            ("rax", self.rax.0),
            ("rbx", self.rbx.0),
            ("rcx", self.rcx.0),
            ("rdx", self.rdx.0),
            ("rsi", self.rsi.0),
            ("rdi", self.rdi.0),
            ("rsp", self.rsp.0),
            ("rbp", self.rbp.0),
            ("r8", self.r8.0),
            ("r9", self.r9.0),
            ("r10", self.r10.0),
            ("r11", self.r11.0),
            ("r12", self.r12.0),
            ("r13", self.r13.0),
            ("r14", self.r14.0),
            ("r15", self.r15.0),
            ("rip", self.rip.0),
            ("rflags", self.rflags.0),
        ]
    }
}

/// A segment in a result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seg {
    /// Selector.
    pub selector: Hex,
    /// Base.
    pub base: Hex,
    /// Limit in bytes.
    pub limit: Hex,
    /// Attributes in the VMX access-rights layout.
    pub attributes: Hex,
}

impl From<Segment> for Seg {
    fn from(s: Segment) -> Seg {
        Seg {
            selector: Hex(s.selector.into()),
            base: Hex(s.base),
            limit: Hex(s.limit.into()),
            attributes: Hex(s.attributes.into()),
        }
    }
}

/// Segment registers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Segs {
    pub cs: Seg,
    pub ds: Seg,
    pub es: Seg,
    pub fs: Seg,
    pub gs: Seg,
    pub ss: Seg,
}

/// Control registers and EFER.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Cr {
    pub cr0: Hex,
    pub cr2: Hex,
    pub cr3: Hex,
    pub cr4: Hex,
    pub efer: Hex,
}

/// A dumped memory range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemDump {
    /// Start.
    pub addr: Hex,
    /// Contents.
    pub hex: HexBytes,
}

/// The result of one case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseResult {
    /// The case name.
    pub name: String,
    /// How it ended.
    pub exit: Exit,
    /// Port and MMIO traffic in order.
    pub trace: Vec<Event>,
    /// Final general registers.
    pub regs: Regs,
    /// Final segment registers.
    pub segs: Segs,
    /// Final control registers.
    pub cr: Cr,
    /// The `dump` ranges.
    pub memory: Vec<MemDump>,
    /// RIP before each instruction, with `single_step`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Hex>,
}

impl CaseResult {
    /// A result carrying `exit` and the given final state.
    pub fn from_state(name: &str, exit: Exit, cpu: &CpuState) -> CaseResult {
        let g = &cpu.gpr;
        CaseResult {
            name: name.to_string(),
            exit,
            trace: vec![],
            regs: Regs {
                rax: Hex(g[0]),
                rcx: Hex(g[1]),
                rdx: Hex(g[2]),
                rbx: Hex(g[3]),
                rsp: Hex(g[4]),
                rbp: Hex(g[5]),
                rsi: Hex(g[6]),
                rdi: Hex(g[7]),
                r8: Hex(g[8]),
                r9: Hex(g[9]),
                r10: Hex(g[10]),
                r11: Hex(g[11]),
                r12: Hex(g[12]),
                r13: Hex(g[13]),
                r14: Hex(g[14]),
                r15: Hex(g[15]),
                rip: Hex(cpu.rip),
                rflags: Hex(cpu.rflags),
            },
            segs: Segs {
                cs: cpu.cs.into(),
                ds: cpu.ds.into(),
                es: cpu.es.into(),
                fs: cpu.fs.into(),
                gs: cpu.gs.into(),
                ss: cpu.ss.into(),
            },
            cr: Cr {
                cr0: Hex(cpu.cr0),
                cr2: Hex(cpu.cr2),
                cr3: Hex(cpu.cr3),
                cr4: Hex(cpu.cr4),
                efer: Hex(cpu.efer),
            },
            memory: vec![],
            steps: vec![],
        }
    }
}

/// One field that differs between two results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldDiff {
    /// Dotted path, e.g. `regs.rax` or `trace[2]`.
    pub path: String,
    /// The left value, rendered.
    pub left: String,
    /// The right value, rendered.
    pub right: String,
}

/// Shortens a long rendered value (memory dumps) to its first differing region.
fn clip(v: &str, other: &str) -> String {
    const MAX: usize = 48;
    if v.len() <= MAX {
        return v.to_string();
    }
    let at = v
        .bytes()
        .zip(other.bytes())
        .position(|(a, b)| a != b)
        .unwrap_or(0);
    let start = at.saturating_sub(8) & !1;
    let end = (start + MAX).min(v.len());
    format!(
        "{}{}{} ({} chars, first difference at {at})",
        if start > 0 { "…" } else { "" },
        &v[start..end],
        if end < v.len() { "…" } else { "" },
        v.len()
    )
}

impl std::fmt::Display for FieldDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} != {}",
            self.path,
            clip(&self.left, &self.right),
            clip(&self.right, &self.left)
        )
    }
}

/// Which parts of two results to compare.
#[derive(Clone, Debug, Default)]
pub struct DiffMask {
    /// Skip segment registers (e.g. CPL0 versus CPL3).
    pub skip_segs: bool,
    /// Skip control registers.
    pub skip_cr: bool,
    /// RFLAGS bits to ignore (undefined flags).
    pub rflags_ignore: u64,
    /// Skip the single-step list.
    pub skip_steps: bool,
}

/// Flattens a JSON value into dotted paths (`regs.rax`, `trace[0].io_out.port`) and their values
/// (strings as they are, an empty array as `[]`): the one flattener of results and snapshots.
pub fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, x, out);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), x, out);
            }
            if a.is_empty() {
                out.insert(prefix.to_string(), "[]".into());
            }
        }
        serde_json::Value::String(x) => {
            out.insert(prefix.to_string(), x.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// A part of a result as a JSON value.
fn json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).expect("results serialize")
}

/// Lists every field where `a` and `b` differ, register names and hex values included.
pub fn diff(a: &CaseResult, b: &CaseResult, mask: &DiffMask) -> Vec<FieldDiff> {
    // The masked parts are compared in place: cloning whole results (two memory dumps) cost more
    // than comparing them.
    let regs = |r: &CaseResult| {
        let mut g = r.regs.clone();
        g.rflags.0 &= !mask.rflags_ignore;
        g
    };
    let (ra, rb) = (regs(a), regs(b));
    let segs = !mask.skip_segs && a.segs != b.segs;
    let cr = !mask.skip_cr && a.cr != b.cr;
    let steps = !mask.skip_steps && a.steps != b.steps;
    // Equal results (the common case) need no rendering.
    if a.exit == b.exit
        && a.trace == b.trace
        && ra == rb
        && !segs
        && !cr
        && a.memory == b.memory
        && !steps
    {
        return vec![];
    }
    // Render only the parts that differ (a memory dump renders to thousands of characters); the
    // paths are those of the whole result flattened, as `diff_whole` (the tests' reference) gives.
    let (mut fa, mut fb) = (BTreeMap::new(), BTreeMap::new());
    // Entries rendered without JSON (differing registers, dumps whose bytes alone differ):
    // (path, left, right), added after the JSON parts.
    let mut direct = Vec::new();
    let mut part = |path: &str, x: Option<serde_json::Value>, y: Option<serde_json::Value>| {
        if let Some(x) = x {
            flatten(path, &x, &mut fa);
        }
        if let Some(y) = y {
            flatten(path, &y, &mut fb);
        }
    };
    if a.exit != b.exit {
        part("exit", Some(json(&a.exit)), Some(json(&b.exit)));
    }
    if a.trace != b.trace {
        part("trace", Some(json(&a.trace)), Some(json(&b.trace)));
    }
    if ra != rb {
        // Only the registers that differ, rendered as their JSON strings flatten to: an equal
        // register would be dropped by `field_diffs` anyway.
        for ((name, x), (_, y)) in ra.fields().into_iter().zip(rb.fields()) {
            if x != y {
                direct.push((format!("regs.{name}"), format!("{x:#x}"), format!("{y:#x}")));
            }
        }
    }
    if segs {
        part("segs", Some(json(&a.segs)), Some(json(&b.segs)));
    }
    if cr {
        part("cr", Some(json(&a.cr)), Some(json(&b.cr)));
    }
    if a.memory.len() != b.memory.len() {
        part("memory", Some(json(&a.memory)), Some(json(&b.memory)));
    } else {
        for (i, (x, y)) in a.memory.iter().zip(&b.memory).enumerate() {
            if x.addr == y.addr && x.hex != y.hex {
                // Only the bytes differ: the hex text directly, as flattening its JSON would give
                // it (a JSON round trip of a 4 KiB dump costs more than the rest of the diff).
                direct.push((
                    format!("memory[{i}].hex"),
                    crate::num::encode_hex(&x.hex.0),
                    crate::num::encode_hex(&y.hex.0),
                ));
            } else if x != y {
                part(&format!("memory[{i}]"), Some(json(x)), Some(json(y)));
            }
        }
    }
    if steps {
        // An empty list is not serialised at all (absent), as in the whole result.
        let steps = |r: &CaseResult| (!r.steps.is_empty()).then(|| json(&r.steps));
        part("steps", steps(a), steps(b));
    }
    for (path, x, y) in direct {
        fa.insert(path.clone(), x);
        fb.insert(path, y);
    }
    field_diffs(fa, fb)
}

/// The differing entries of two flattened results, in report order: exit, trace, registers (in
/// encoding order), segments, control registers, memory, steps.
fn field_diffs(
    mut fa: BTreeMap<String, String>,
    mut fb: BTreeMap<String, String>,
) -> Vec<FieldDiff> {
    let mut keys: Vec<String> = fa.keys().chain(fb.keys()).cloned().collect();
    keys.sort();
    keys.dedup();
    let order = |k: &str| -> usize {
        ["exit", "trace", "regs", "segs", "cr", "memory", "steps"]
            .iter()
            .position(|p| k.starts_with(p))
            .unwrap_or(9)
    };
    let key = |k: &str| {
        (
            order(k),
            GPR_NAMES.iter().position(|g| k.ends_with(g)).unwrap_or(99),
        )
    };
    keys.sort_by(|a, b| key(a).cmp(&key(b)).then_with(|| a.cmp(b)));
    // The values move out of the maps: a dump's hex runs to thousands of characters.
    keys.into_iter()
        .filter_map(|k| {
            let (l, r) = (fa.remove(&k), fb.remove(&k));
            (l != r).then(|| FieldDiff {
                path: k,
                left: l.unwrap_or_else(|| "(absent)".into()),
                right: r.unwrap_or_else(|| "(absent)".into()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CaseResult {
        let mut cpu = CpuState::default();
        cpu.gpr[0] = 0x48;
        cpu.rip = 0x1008;
        cpu.rflags = 0x2;
        let mut r = CaseResult::from_state("a", Exit::Hlt, &cpu);
        r.trace.push(Event::io_out(0xf1, 1, 0x48));
        r
    }

    /// Renders the differences of `a` and `b` from the whole flattened results (the reference the
    /// part-wise rendering of `diff` must equal).
    fn diff_whole(a: &CaseResult, b: &CaseResult, mask: &DiffMask) -> Vec<FieldDiff> {
        let (ma, mb) = (masked(a, mask), masked(b, mask));
        let flat = |r: &CaseResult| {
            let mut m = BTreeMap::new();
            flatten("", &json(r), &mut m);
            m
        };
        field_diffs(flat(&ma), flat(&mb))
    }

    /// `r` as the comparison sees it: no name, and what `mask` leaves out cleared.
    fn masked(r: &CaseResult, mask: &DiffMask) -> CaseResult {
        let mut r = r.clone();
        r.name.clear();
        r.regs.rflags.0 &= !mask.rflags_ignore;
        if mask.skip_segs {
            r.segs = Segs::default();
        }
        if mask.skip_cr {
            r.cr = Cr::default();
        }
        if mask.skip_steps {
            r.steps.clear();
        }
        r
    }

    #[test]
    fn partwise_diff_equals_whole_result_diff() {
        let base = {
            let mut r = sample();
            r.memory.push(MemDump {
                addr: Hex(0x4000),
                hex: HexBytes((0..4096u32).map(|i| (i * 7) as u8).collect()),
            });
            r.memory.push(MemDump {
                addr: Hex(0x7000),
                hex: HexBytes(vec![0; 64]),
            });
            r
        };
        type Edit = fn(&mut CaseResult);
        let edits: &[Edit] = &[
            |r| r.regs.rax.0 ^= 1,
            |r| r.regs.rflags.0 ^= 0x800,
            |r| r.exit = Exit::Shutdown,
            |r| r.trace.push(Event::io_out(0x80, 2, 7)),
            |r| r.trace.clear(),
            |r| r.segs.cs.selector.0 ^= 8,
            |r| r.cr.cr2.0 = 0xdead,
            |r| r.memory[0].hex.0[100] ^= 0xff,
            |r| {
                if let Some(m) = r.memory.get_mut(1) {
                    m.hex.0[63] = 1;
                }
            },
            |r| {
                r.memory.pop();
            },
            |r| {
                if let Some(m) = r.memory.get_mut(1) {
                    m.addr.0 += 1;
                }
            },
            |r| r.steps.push(Hex(0x1000)),
            |r| r.name.push_str(" (renamed)"),
        ];
        for (i, e) in edits.iter().enumerate() {
            for (j, f) in edits.iter().enumerate() {
                let mut b = base.clone();
                e(&mut b);
                f(&mut b);
                let mut a = base.clone();
                if i % 3 == 0 {
                    a.steps.push(Hex(0x2000));
                }
                for mask in [
                    DiffMask::default(),
                    DiffMask {
                        rflags_ignore: 0x800,
                        skip_segs: true,
                        ..DiffMask::default()
                    },
                    DiffMask {
                        skip_cr: true,
                        skip_steps: true,
                        ..DiffMask::default()
                    },
                ] {
                    let whole = diff_whole(&a, &b, &mask);
                    assert_eq!(diff(&a, &b, &mask), whole, "edits {i} and {j}");
                    assert_eq!(
                        diff(&b, &a, &mask),
                        diff_whole(&b, &a, &mask),
                        "edits {j} and {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn result_json_uses_documented_names() {
        let v = serde_json::to_value(sample()).unwrap();
        assert_eq!(v["exit"]["kind"], "hlt");
        assert_eq!(v["trace"][0]["io_out"]["port"], 0xf1);
        assert_eq!(v["trace"][0]["io_out"]["value"], "0x48");
        assert_eq!(v["regs"]["rax"], "0x48");
        assert_eq!(v["regs"]["rip"], "0x1008");
        let back: CaseResult = serde_json::from_value(v).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn long_values_are_clipped_around_the_first_difference() {
        let a = "00".repeat(100) + "ab" + &"00".repeat(100);
        let b = "00".repeat(201);
        let d = FieldDiff {
            path: "memory[0].hex".into(),
            left: a,
            right: b,
        };
        let text = d.to_string();
        assert!(text.len() < 300, "{text}");
        assert!(text.contains("ab"), "{text}");
        assert!(text.contains("first difference at 200"), "{text}");
    }

    #[test]
    fn diff_names_registers_and_masks_flags() {
        let a = sample();
        let mut b = sample();
        b.regs.rax = Hex(0x49);
        b.regs.rflags = Hex(0x2 | 0x10);
        b.trace.push(Event::io_out(0xf1, 1, 0x0a));
        let d = diff(&a, &b, &DiffMask::default());
        let paths: Vec<&str> = d.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "trace[1].io_out.port",
                "trace[1].io_out.size",
                "trace[1].io_out.value",
                "regs.rax",
                "regs.rflags"
            ]
        );
        assert_eq!(d[3].to_string(), "regs.rax: 0x48 != 0x49");
        let masked = diff(
            &a,
            &b,
            &DiffMask {
                rflags_ignore: 0x10,
                ..DiffMask::default()
            },
        );
        assert!(masked.iter().all(|f| f.path != "regs.rflags"));
        assert!(diff(&a, &a.clone(), &DiffMask::default()).is_empty());
    }
}

//! The case format: what a test case says about a VM, read from TOML, JSON or JSON Lines and validated.

use crate::layout::{self, Layout};
use crate::num::{Hex, HexBytes};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// The CPU mode the harness sets up before the case's first instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Real mode, 16-bit code, segment base = selector × 16.
    Real16,
    /// 32-bit protected mode, flat segments, paging off.
    Prot32,
    /// 64-bit long mode with identity-mapped 4-level paging.
    Long64,
}

impl Mode {
    /// The code size in bits (16, 32 or 64).
    pub fn bitness(self) -> u32 {
        match self {
            Mode::Real16 => 16,
            Mode::Prot32 => 32,
            Mode::Long64 => 64,
        }
    }

    /// The name used in case files.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Real16 => "real16",
            Mode::Prot32 => "prot32",
            Mode::Long64 => "long64",
        }
    }
}

/// Guest page size for the long64 identity map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PageSize {
    /// 2 MiB pages wherever a 2 MiB chunk is uniform, 4 KiB elsewhere (the default).
    #[default]
    #[serde(rename = "2m")]
    Large,
    /// 4 KiB pages everywhere (RAM up to 512 MiB).
    #[serde(rename = "4k")]
    Small,
}

/// Bytes loaded into guest RAM before the case starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemInit {
    /// Guest-physical address of the first byte.
    pub addr: Hex,
    /// The bytes, as hex.
    pub hex: HexBytes,
}

/// A scripted answer to the guest's next `IN` (consumed in order).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoIn {
    /// The port the `IN` is expected on; a mismatch is recorded in the trace but the value is still used.
    pub port: Hex,
    /// The value returned (truncated to the access size).
    pub value: Hex,
}

/// A guest-physical region with no memslot, served by the harness from a userspace buffer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmioRegion {
    /// Guest-physical start.
    pub addr: Hex,
    /// Length in bytes.
    pub len: Hex,
    /// Initial contents (zero-filled to `len`).
    #[serde(default)]
    pub hex: HexBytes,
}

/// A memory range to return in the result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dump {
    /// Guest-physical start.
    pub addr: Hex,
    /// Length in bytes.
    pub len: Hex,
}

/// Starting general registers; a missing register is 0, a missing `rflags` is 0x2.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RegsInit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rax: Option<Hex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rbx: Option<Hex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rcx: Option<Hex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdx: Option<Hex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rsi: Option<Hex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdi: Option<Hex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rsp: Option<Hex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rbp: Option<Hex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r8: Option<Hex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r9: Option<Hex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r10: Option<Hex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r11: Option<Hex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r12: Option<Hex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r13: Option<Hex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r14: Option<Hex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r15: Option<Hex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rip: Option<Hex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rflags: Option<Hex>,
}

/// Starting segment selectors (real16 only: base = selector × 16).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct SegsInit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cs: Option<Hex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ds: Option<Hex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub es: Option<Hex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<Hex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gs: Option<Hex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ss: Option<Hex>,
}

impl SegsInit {
    fn is_empty(&self) -> bool {
        *self == SegsInit::default()
    }
}

/// Control-register overrides applied after the mode's set-up (for state-entry tests).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct CrInit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cr0: Option<Hex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cr3: Option<Hex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cr4: Option<Hex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub efer: Option<Hex>,
}

impl CrInit {
    fn is_empty(&self) -> bool {
        *self == CrInit::default()
    }
}

/// Default guest RAM in MiB.
pub const DEFAULT_MEMORY_MIB: u32 = 16;
/// Default exit budget.
pub const DEFAULT_MAX_EXITS: u32 = 100_000;
/// Default wall-clock deadline in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 1_000;

fn default_memory_mib() -> u32 {
    DEFAULT_MEMORY_MIB
}

fn is_default_memory(v: &u32) -> bool {
    *v == DEFAULT_MEMORY_MIB
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// One test case: a VM, its starting state and what to return. See the README for the schema.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// A name, unique within a batch.
    pub name: String,
    /// What the case checks, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// CPU mode.
    pub mode: Mode,
    /// Privilege level of the case's code: 0, or 3 (long64 only).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cpl: u8,
    /// RFLAGS.IOPL (0–3); overrides bits 12–13 of `regs.rflags` when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iopl: Option<u8>,
    /// Guest RAM in MiB.
    #[serde(
        default = "default_memory_mib",
        skip_serializing_if = "is_default_memory"
    )]
    pub memory_mib: u32,
    /// Guest page size for long64.
    #[serde(default, skip_serializing_if = "is_default_page_size")]
    pub page_size: PageSize,
    /// Bytes loaded before start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memory: Vec<MemInit>,
    /// Starting registers.
    #[serde(default)]
    pub regs: RegsInit,
    /// Starting selectors (real16).
    #[serde(default, skip_serializing_if = "SegsInit::is_empty")]
    pub segs: SegsInit,
    /// Control-register overrides (KVM may reject the result: a `rejected` exit).
    #[serde(default, skip_serializing_if = "CrInit::is_empty")]
    pub cr: CrInit,
    /// Answers to `IN`, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub io_in: Vec<IoIn>,
    /// MMIO regions served by the harness.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mmio: Vec<MmioRegion>,
    /// Install exception stubs for vectors 0–31.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stubs: bool,
    /// Exit after every instruction and record its RIP.
    #[serde(default, skip_serializing_if = "is_false")]
    pub single_step: bool,
    /// Exit budget (default 100000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_exits: Option<u32>,
    /// Wall-clock deadline (default 1000 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Memory to return in the result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dump: Vec<Dump>,
}

fn is_default_page_size(p: &PageSize) -> bool {
    *p == PageSize::Large
}

impl Case {
    /// A minimal case in `mode` running `code` loaded at `addr` (rip = addr).
    pub fn new(name: &str, mode: Mode, addr: u64, code: Vec<u8>) -> Case {
        Case {
            name: name.to_string(),
            description: None,
            mode,
            cpl: 0,
            iopl: None,
            memory_mib: DEFAULT_MEMORY_MIB,
            page_size: PageSize::Large,
            memory: vec![MemInit {
                addr: Hex(addr),
                hex: HexBytes(code),
            }],
            regs: RegsInit {
                rip: Some(Hex(addr)),
                ..RegsInit::default()
            },
            segs: SegsInit::default(),
            cr: CrInit::default(),
            io_in: vec![],
            mmio: vec![],
            stubs: false,
            single_step: false,
            max_exits: None,
            timeout_ms: None,
            dump: vec![],
        }
    }

    /// The effective exit budget.
    pub fn exit_budget(&self) -> u32 {
        self.max_exits.unwrap_or(DEFAULT_MAX_EXITS)
    }

    /// The effective deadline in milliseconds.
    pub fn deadline_ms(&self) -> u64 {
        self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS)
    }

    /// Checks everything the serde layer cannot: ranges, overlaps, mode rules.
    pub fn validate(&self) -> Result<(), FieldError> {
        let err = |field: &str, msg: String| Err(FieldError::new(field, msg));
        if self.name.trim().is_empty() {
            return err("name", "a non-empty name".into());
        }
        if self.cpl != 0 && self.cpl != 3 {
            return err("cpl", format!("0 or 3, got {}", self.cpl));
        }
        if self.cpl == 3 && self.mode != Mode::Long64 {
            return err(
                "cpl",
                format!("cpl 3 only in long64 mode, not {}", self.mode.name()),
            );
        }
        if let Some(iopl) = self.iopl
            && iopl > 3
        {
            return err("iopl", format!("0 to 3, got {iopl}"));
        }
        if !(layout::MIN_MEMORY_MIB..=layout::MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return err(
                "memory_mib",
                format!(
                    "{} to {}, got {}",
                    layout::MIN_MEMORY_MIB,
                    layout::MAX_MEMORY_MIB,
                    self.memory_mib
                ),
            );
        }
        if self.page_size == PageSize::Small
            && u64::from(self.memory_mib) > layout::MAX_SMALL_PAGE_MIB
        {
            return err(
                "page_size",
                format!(
                    "\"4k\" pages only with memory_mib <= {}, got {}",
                    layout::MAX_SMALL_PAGE_MIB,
                    self.memory_mib
                ),
            );
        }
        if self.mode != Mode::Real16 && !self.segs.is_empty() {
            return err(
                "segs",
                format!(
                    "no segs in {}: the harness owns the selectors outside real16",
                    self.mode.name()
                ),
            );
        }
        if self.max_exits == Some(0) {
            return err("max_exits", "at least 1".into());
        }
        if let Some(t) = self.timeout_ms
            && !(1..=3_600_000).contains(&t)
        {
            return err("timeout_ms", format!("1 to 3600000, got {t}"));
        }
        let lay = Layout::for_case(self);
        let ram = lay.ram_size;
        // MMIO regions: non-empty, inside the mappable space, no overlaps, clear of the harness.
        for (i, m) in self.mmio.iter().enumerate() {
            let f = format!("mmio[{i}]");
            let (a, l) = (m.addr.0, m.len.0);
            if l == 0 {
                return err(&f, "len > 0".into());
            }
            if l > layout::MAX_MMIO_LEN {
                return err(
                    &f,
                    format!("len <= {:#x}, got {l:#x}", layout::MAX_MMIO_LEN),
                );
            }
            let Some(end) = a.checked_add(l).filter(|&e| e <= layout::ADDRESS_LIMIT) else {
                return err(
                    &f,
                    format!(
                        "a region below {:#x}, got {a:#x}+{l:#x}",
                        layout::ADDRESS_LIMIT
                    ),
                );
            };
            if m.hex.0.len() as u64 > l {
                return err(
                    &f,
                    format!("at most len ({l}) bytes of hex, got {}", m.hex.0.len()),
                );
            }
            let (rs, re) = lay.reserved_range();
            if a < re && end > rs {
                return err(
                    &f,
                    format!(
                        "a region clear of the harness's reserved range {rs:#x}..{re:#x}, got {a:#x}..{end:#x}"
                    ),
                );
            }
            for (j, o) in self.mmio.iter().enumerate().take(i) {
                // Holes are whole pages, so regions may not share a page either.
                let (pa, pe) = layout::page_span(a, end);
                let (qa, qe) = layout::page_span(o.addr.0, o.addr.0 + o.len.0);
                if pa < qe && qa < pe {
                    return err(
                        &f,
                        format!(
                            "a region that shares no 4 KiB page with mmio[{j}] ({:#x}+{:#x}), got {a:#x}+{l:#x}",
                            o.addr.0, o.len.0
                        ),
                    );
                }
            }
        }
        // Memory images: inside RAM, outside MMIO holes and the reserved range, no overlaps.
        let mut spans: Vec<(u64, u64, usize)> = Vec::new();
        for (i, m) in self.memory.iter().enumerate() {
            let f = format!("memory[{i}]");
            let a = m.addr.0;
            let n = m.hex.0.len() as u64;
            if n == 0 {
                continue;
            }
            let end = match a.checked_add(n) {
                Some(e) if e <= ram => e,
                _ => {
                    return err(
                        &f,
                        format!(
                            "bytes inside guest RAM 0x0..{ram:#x}, got {a:#x}..{:#x}",
                            a.saturating_add(n)
                        ),
                    );
                }
            };
            if let Some((rs, re)) = lay.overlaps_harness(a, end) {
                return err(
                    &f,
                    format!(
                        "bytes clear of the harness's reserved range {rs:#x}..{re:#x}, got {a:#x}..{end:#x}"
                    ),
                );
            }
            for (j, h) in lay.holes.iter().enumerate() {
                if a < h.1 && end > h.0 {
                    return err(
                        &f,
                        format!(
                            "bytes outside MMIO hole {j} ({:#x}..{:#x}); put initial MMIO contents in mmio[].hex",
                            h.0, h.1
                        ),
                    );
                }
            }
            for &(sa, se, j) in &spans {
                if a < se && end > sa {
                    return err(
                        &f,
                        format!(
                            "no overlap with memory[{j}] ({sa:#x}..{se:#x}), got {a:#x}..{end:#x}"
                        ),
                    );
                }
            }
            spans.push((a, end, i));
        }
        let rip = self.regs.rip.map_or(0, |h| h.0);
        let lin_rip = if self.mode == Mode::Real16 {
            (self.segs.cs.map_or(0, |h| h.0) << 4) + (rip & 0xffff)
        } else {
            rip
        };
        if let Some((rs, re)) = lay.overlaps_harness(lin_rip, lin_rip + 1) {
            return err(
                "regs.rip",
                format!(
                    "code outside the harness's reserved range {rs:#x}..{re:#x}, got {lin_rip:#x}"
                ),
            );
        }
        if self.mode != Mode::Long64 && rip > u64::from(u32::MAX) {
            return err(
                "regs.rip",
                format!("a 32-bit rip in {}, got {rip:#x}", self.mode.name()),
            );
        }
        for (name, v) in [
            ("cs", self.segs.cs),
            ("ds", self.segs.ds),
            ("es", self.segs.es),
            ("fs", self.segs.fs),
            ("gs", self.segs.gs),
            ("ss", self.segs.ss),
        ] {
            if let Some(v) = v
                && v.0 > 0xffff
            {
                return err(
                    &format!("segs.{name}"),
                    format!("a 16-bit selector, got {:#x}", v.0),
                );
            }
        }
        for (i, d) in self.dump.iter().enumerate() {
            let f = format!("dump[{i}]");
            let (a, l) = (d.addr.0, d.len.0);
            if l == 0 || l > layout::MAX_DUMP_LEN {
                return err(
                    &f,
                    format!("len 1 to {:#x}, got {l:#x}", layout::MAX_DUMP_LEN),
                );
            }
            let end = a.saturating_add(l);
            let in_ram = end <= ram;
            let in_mmio = self
                .mmio
                .iter()
                .any(|m| a >= m.addr.0 && end <= m.addr.0 + m.len.0);
            if !in_ram && !in_mmio {
                return err(
                    &f,
                    format!(
                        "a range inside guest RAM (0x0..{ram:#x}) or one mmio region, got {a:#x}..{end:#x}"
                    ),
                );
            }
        }
        Ok(())
    }
}

/// A problem with one field of a case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field path, e.g. `mmio[1]`.
    pub field: String,
    /// What was expected, and what came.
    pub expected: String,
}

impl FieldError {
    /// A field error with a path and an expectation.
    pub fn new(field: &str, expected: String) -> Self {
        FieldError {
            field: field.to_string(),
            expected,
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field `{}`: expected {}", self.field, self.expected)
    }
}

/// Why a case file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Io {
        /// The file.
        file: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The text is not valid TOML/JSON for the schema.
    #[error("{file}:{line}: {message}")]
    Syntax {
        /// The file.
        file: String,
        /// 1-based line (0 when unknown).
        line: usize,
        /// The parser's message, including what it expected.
        message: String,
    },
    /// A field has a value the harness cannot use.
    #[error("{file}:{line}: case {case:?}: {error}")]
    Field {
        /// The file.
        file: String,
        /// 1-based line of the case (JSONL) or 0 for a whole file.
        line: usize,
        /// The case name.
        case: String,
        /// The field problem.
        error: FieldError,
    },
    /// Two cases in one batch share a name.
    #[error("{file}:{line}: case name {name:?} already used at line {first}")]
    DuplicateName {
        /// The file.
        file: String,
        /// Line of the second use.
        line: usize,
        /// The first use.
        first: usize,
        /// The name.
        name: String,
    },
}

/// The text formats a case can come in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One case in TOML.
    Toml,
    /// One case in JSON.
    Json,
    /// One JSON case per line.
    JsonLines,
}

impl Format {
    /// Guesses the format from a file name, then from the text itself.
    pub fn detect(file: &str, text: &str) -> Format {
        if file.ends_with(".toml") {
            return Format::Toml;
        }
        if file.ends_with(".jsonl") || file.ends_with(".ndjson") {
            return Format::JsonLines;
        }
        if file.ends_with(".json") {
            return Format::Json;
        }
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        match lines.first() {
            Some(l) if l.starts_with('{') => {
                if lines.len() > 1 && lines.iter().all(|l| l.starts_with('{') && l.ends_with('}')) {
                    Format::JsonLines
                } else {
                    Format::Json
                }
            }
            _ => Format::Toml,
        }
    }
}

/// A case together with where it came from.
#[derive(Clone, Debug)]
pub struct Located {
    /// The case.
    pub case: Case,
    /// The file it was read from.
    pub file: String,
    /// Its 1-based line (JSONL) or 1.
    pub line: usize,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Parses one or more cases from `text`, naming `file` in every error.
pub fn parse_cases(file: &str, text: &str) -> Result<Vec<Located>, CaseError> {
    let one = |case: Case, line: usize| -> Result<Located, CaseError> {
        case.validate().map_err(|error| CaseError::Field {
            file: file.to_string(),
            line,
            case: case.name.clone(),
            error,
        })?;
        Ok(Located {
            case,
            file: file.to_string(),
            line,
        })
    };
    let out = match Format::detect(file, text) {
        Format::Toml => {
            let case: Case = toml::from_str(text).map_err(|e| CaseError::Syntax {
                file: file.to_string(),
                line: e.span().map_or(0, |s| line_of(text, s.start)),
                message: e.message().to_string(),
            })?;
            vec![one(case, 1)?]
        }
        Format::Json => {
            let case: Case = serde_json::from_str(text).map_err(|e| CaseError::Syntax {
                file: file.to_string(),
                line: e.line(),
                message: format!("column {}: {e}", e.column()),
            })?;
            vec![one(case, 1)?]
        }
        Format::JsonLines => {
            let mut v = Vec::new();
            for (i, l) in text.lines().enumerate() {
                let l = l.trim();
                if l.is_empty() || l.starts_with("//") {
                    continue;
                }
                let case: Case = serde_json::from_str(l).map_err(|e| CaseError::Syntax {
                    file: file.to_string(),
                    line: i + 1,
                    message: format!("column {}: {e}", e.column()),
                })?;
                v.push(one(case, i + 1)?);
            }
            v
        }
    };
    let mut seen = std::collections::HashMap::new();
    for c in &out {
        if let Some(first) = seen.insert(c.case.name.clone(), c.line) {
            return Err(CaseError::DuplicateName {
                file: file.to_string(),
                line: c.line,
                first,
                name: c.case.name.clone(),
            });
        }
    }
    Ok(out)
}

/// Reads and parses a case file (`-` reads standard input).
pub fn load_file(path: &Path) -> Result<Vec<Located>, CaseError> {
    let file = path.display().to_string();
    let text = if file == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map(|_| s)
            .map_err(|source| CaseError::Io {
                file: "<stdin>".into(),
                source,
            })?
    } else {
        std::fs::read_to_string(path).map_err(|source| CaseError::Io {
            file: file.clone(),
            source,
        })?
    };
    let name = if file == "-" { "<stdin>" } else { &file };
    parse_cases(name, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "ok"
mode = "long64"
regs = { rip = "0x1000" }
memory = [{ addr = "0x1000", hex = "f4" }]
"#;

    fn err(file: &str, text: &str) -> String {
        parse_cases(file, text).unwrap_err().to_string()
    }

    #[test]
    fn good_toml_json_and_jsonl_parse() {
        let t = parse_cases("a.toml", GOOD).unwrap();
        assert_eq!(t[0].case.mode, Mode::Long64);
        let json = serde_json::to_string(&t[0].case).unwrap();
        let j = parse_cases("a.json", &json).unwrap();
        assert_eq!(j[0].case, t[0].case);
        let mut second = t[0].case.clone();
        second.name = "two".into();
        let lines = format!("{json}\n\n{}\n", serde_json::to_string(&second).unwrap());
        let l = parse_cases("b.jsonl", &lines).unwrap();
        assert_eq!((l.len(), l[1].line), (2, 3));
        // Detected without an extension too.
        assert_eq!(parse_cases("-", &lines).unwrap().len(), 2);
    }

    #[test]
    fn malformed_toml_names_file_and_line() {
        let e = err(
            "cases/x.toml",
            "name = \"x\"\nmode = \"long64\"\nregs = { rip = }\n",
        );
        assert!(e.starts_with("cases/x.toml:3:"), "{e}");
    }

    #[test]
    fn malformed_json_names_file_line_and_column() {
        let e = err("x.json", "{\n\"name\": \"x\",\n\"mode\": long64}\n");
        assert!(e.starts_with("x.json:3:"), "{e}");
        assert!(e.contains("column"), "{e}");
    }

    #[test]
    fn bad_jsonl_line_is_named() {
        let good = serde_json::to_string(&parse_cases("a.toml", GOOD).unwrap()[0].case).unwrap();
        let e = err("b.jsonl", &format!("{good}\n{{\"name\": 1}}\n"));
        assert!(e.starts_with("b.jsonl:2:"), "{e}");
    }

    #[test]
    fn unknown_mode_lists_the_modes() {
        let e = err("m.toml", &GOOD.replace("long64", "long32"));
        assert!(e.contains("m.toml:3:"), "{e}");
        assert!(e.contains("real16") && e.contains("prot32"), "{e}");
    }

    #[test]
    fn unknown_field_is_an_error() {
        let e = err("f.toml", &format!("{GOOD}stubz = true\n"));
        assert!(e.contains("stubz"), "{e}");
    }

    #[test]
    fn overlapping_memory_images_are_named() {
        let e = err(
            "o.toml",
            &GOOD.replace(
                r#"memory = [{ addr = "0x1000", hex = "f4" }]"#,
                r#"memory = [{ addr = "0x1000", hex = "f4f4" }, { addr = "0x1001", hex = "90" }]"#,
            ),
        );
        assert!(e.contains("field `memory[1]`"), "{e}");
        assert!(e.contains("no overlap with memory[0]"), "{e}");
    }

    #[test]
    fn memory_outside_ram_is_named() {
        let e = err(
            "r.toml",
            &GOOD.replace(r#"addr = "0x1000", hex"#, r#"addr = "0x5000000", hex"#),
        );
        assert!(
            e.contains("field `memory[0]`") && e.contains("inside guest RAM"),
            "{e}"
        );
    }

    #[test]
    fn code_in_the_reserved_range_is_refused() {
        // 16 MiB of RAM: the reserved range is 0xe00000..0x1000000.
        let e = err("c.toml", &GOOD.replace("0x1000", "0xe00100"));
        assert!(e.contains("reserved range 0xe00000..0x1000000"), "{e}");
    }

    #[test]
    fn overlapping_mmio_regions_are_named() {
        let e = err(
            "mm.toml",
            &format!(
                "{GOOD}mmio = [{{ addr = \"0xd0000000\", len = 16 }}, {{ addr = \"0xd0000008\", len = 4 }}]\n"
            ),
        );
        assert!(
            e.contains("field `mmio[1]`") && e.contains("mmio[0]"),
            "{e}"
        );
    }

    #[test]
    fn mode_rules_are_checked() {
        let e = err(
            "p.toml",
            &format!("{}cpl = 3\n", GOOD.replace("long64", "prot32")),
        );
        assert!(
            e.contains("field `cpl`") && e.contains("only in long64"),
            "{e}"
        );
        let e = err("s.toml", &format!("{GOOD}segs = {{ cs = 1 }}\n"));
        assert!(e.contains("field `segs`"), "{e}");
        let e = err("z.toml", &format!("{GOOD}memory_mib = 2\n"));
        assert!(e.contains("field `memory_mib`"), "{e}");
        let e = err("h.toml", &GOOD.replace("hex = \"f4\"", "hex = \"f\""));
        assert!(e.contains("even number of hex digits"), "{e}");
    }

    #[test]
    fn duplicate_names_in_a_batch_are_refused() {
        let good = serde_json::to_string(&parse_cases("a.toml", GOOD).unwrap()[0].case).unwrap();
        let e = err("d.jsonl", &format!("{good}\n{good}\n"));
        assert!(e.contains("already used at line 1"), "{e}");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut s = 0x1234_5678_u64;
        for _ in 0..2000 {
            let n = (s % 200) as usize;
            let bytes: Vec<u8> = (0..n)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    let alphabet = b"{}[]\"=,:0x123abcname mode long64 memory hex addr\n";
                    alphabet[(s % alphabet.len() as u64) as usize]
                })
                .collect();
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse_cases("fuzz.toml", &text);
            let _ = parse_cases("fuzz.jsonl", &text);
        }
    }
}

//! The one registry of conformance checks: each [`Check`] runs under `cargo nextest` (one test
//! each, via libtest-mimic) and under `kvmconf run`, with no second copy anywhere.

use kvmconf_harness::{Errno, Host, IoctlFailure};
use std::fmt;

/// The area a check belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Area {
    /// The harness itself: VM modes, exit trace, stubs, watchdog, pool.
    Harness,
    /// /dev/kvm system ioctls.
    System,
    /// VM ioctls.
    Vm,
    /// vCPU state get/set.
    VcpuState,
    /// KVM_RUN and exits.
    Run,
    /// The hand-written corpus (`cases/corpus/`) against its snapshots (`kvmconf run` only; nextest
    /// runs it as the `corpus` test binary).
    Corpus,
    /// Fixed-seed samples of the differential oracle (`kvmconf run` only; nextest runs the full
    /// `differential` test binary).
    Differential,
}

impl Area {
    /// Every area, in report order.
    pub const ALL: [Area; 7] = [
        Area::Harness,
        Area::System,
        Area::Vm,
        Area::VcpuState,
        Area::Run,
        Area::Corpus,
        Area::Differential,
    ];

    /// The name used in ids, filters and reports.
    pub fn name(self) -> &'static str {
        match self {
            Area::Harness => "harness",
            Area::System => "system",
            Area::Vm => "vm",
            Area::VcpuState => "vcpu_state",
            Area::Run => "run",
            Area::Corpus => "corpus",
            Area::Differential => "differential",
        }
    }

    /// Parses an area name.
    pub fn parse(s: &str) -> Option<Area> {
        Area::ALL.into_iter().find(|a| a.name() == s)
    }
}

/// One field that differed: what was looked at, what was wanted and what came, each rendered.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Part {
    /// What was looked at (`exit`, `rax`, `KVM_SET_MSRS of [PAT …]: number of MSRs set`).
    pub field: String,
    /// What was wanted (`Hlt`, `0x1f80`).
    pub wanted: String,
    /// What came, rendered the same way.
    pub got: String,
}

/// A failed expectation as data: the fields that differed (none when the check only gives a
/// reason) and the sentence for the report. Known deviations match on the parts
/// (`cases/deviations.toml`, `[[deviation.when]]`), never on the sentence.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Failure {
    /// The fields that differed.
    pub parts: Vec<Part>,
    /// The sentence for the report.
    pub text: String,
}

impl Failure {
    /// A failure with only a reason (no field compared).
    pub fn reason(text: impl Into<String>) -> Failure {
        Failure {
            parts: vec![],
            text: text.into(),
        }
    }

    /// `field: wanted W, got G`, with `note` appended to the report's sentence.
    pub fn field(
        field: impl Into<String>,
        wanted: impl Into<String>,
        got: impl Into<String>,
        note: &str,
    ) -> Failure {
        let part = Part {
            field: field.into(),
            wanted: wanted.into(),
            got: got.into(),
        };
        Failure {
            text: format!(
                "{}: wanted {}, got {}{note}",
                part.field, part.wanted, part.got
            ),
            parts: vec![part],
        }
    }

    /// Several differing fields: `N difference(s):` and a line each (the first `shown`).
    pub fn parts(parts: Vec<Part>, shown: usize) -> Failure {
        let lines: Vec<String> = parts
            .iter()
            .take(shown)
            .map(|p| format!("{}: wanted {}, got {}", p.field, p.wanted, p.got))
            .collect();
        Failure {
            text: format!("{} difference(s):\n  {}", parts.len(), lines.join("\n  ")),
            parts,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why a check did not pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fail {
    /// The documented behaviour did not happen: what was wanted and what came.
    Failed(Failure),
    /// A documented-optional requirement is absent on this host.
    Skip(String),
}

impl Fail {
    /// A failure with only a reason (see [`Failure::reason`]).
    pub fn failed(text: impl Into<String>) -> Fail {
        Fail::Failed(Failure::reason(text))
    }

    /// A failure of `field` (see [`Failure::field`]).
    pub fn field(
        field: impl Into<String>,
        wanted: impl Into<String>,
        got: impl Into<String>,
        note: &str,
    ) -> Fail {
        Fail::Failed(Failure::field(field, wanted, got, note))
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fail::Failed(m) => write!(f, "{m}"),
            Fail::Skip(m) => write!(f, "SKIP: requirement not met: {m}"),
        }
    }
}

impl From<kvmconf_harness::watchdog::WatchdogError> for Fail {
    fn from(e: kvmconf_harness::watchdog::WatchdogError) -> Fail {
        Fail::failed(format!("watchdog error: {e}"))
    }
}

impl From<kvmconf_harness::KvmError> for Fail {
    fn from(e: kvmconf_harness::KvmError) -> Fail {
        Fail::failed(format!("harness error: {e}"))
    }
}

macro_rules! ioctl_fail {
    ($($t:ty),*) => {$(
        impl From<$t> for Fail {
            fn from(e: $t) -> Fail {
                Fail::failed(e.to_string())
            }
        }
    )*};
}
// `KVM_… failed: <strerror> (errno N)`, the text `ioctl("KVM_…")` gives.
ioctl_fail!(
    kvmconf_harness::SystemError,
    kvmconf_harness::VmError,
    kvmconf_harness::VcpuError
);

/// What a check returns.
pub type Outcome = Result<(), Fail>;

/// One documented behaviour and the code that checks it.
#[derive(Clone, Copy)]
pub struct Check {
    /// `<area>.<ioctl or feature>_<condition>_<expectation>`.
    pub id: &'static str,
    /// The area.
    pub area: Area,
    /// The api.rst section or SDM chapter it checks.
    pub doc: &'static str,
    /// The check.
    pub run: fn(&Host) -> Outcome,
}

impl fmt::Debug for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Check({})", self.id)
    }
}

/// Declares an area's `CHECKS`, in report order: `checks! { Vm; "vm.id", DOC, run; … }`. A run
/// is a check function `fn(&Host) -> Outcome`, or `f(arg, …)` for one function registered with
/// several parameters (CPL, mode, page size), which runs as `f(host, arg, …)`.
#[macro_export]
macro_rules! checks {
    ($area:ident; $($id:literal, $doc:expr, $f:ident $(($($arg:expr),* $(,)?))?;)*) => {
        /// This area's checks, in report order.
        pub const CHECKS: &[$crate::registry::Check] = &[$($crate::registry::Check {
            id: $id,
            area: $crate::registry::Area::$area,
            doc: $doc,
            run: $crate::checks!(@run $f $(($($arg),*))?),
        },)*];
    };
    (@run $f:ident) => {
        $f
    };
    (@run $f:ident ($($arg:expr),*)) => {
        |host: &kvmconf_harness::Host| $f(host, $($arg),*)
    };
}

/// Fails with a message unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::registry::Fail::failed(format!($($fmt)+)));
        }
    };
}

/// Fails with "what: wanted W, got G" unless `got == want` (values shown with `{:#x?}`): the
/// failure's field is `what`, its wanted and got parts the rendered values.
#[macro_export]
macro_rules! ensure_eq {
    ($got:expr, $want:expr, $($what:tt)+) => {{
        match (&$got, &$want) {
            (g, w) => if g != w {
            return Err($crate::registry::Fail::field(
                format!($($what)+),
                format!("{:#x?}", w),
                format!("{:#x?}", g),
                "",
            ));
        }}
    }};
}

/// Skips unless KVM_CHECK_EXTENSION reports `cap` (a documented-optional capability).
pub fn require_cap(host: &Host, cap: u32, name: &str) -> Outcome {
    if host.check_raw(cap) > 0 {
        Ok(())
    } else {
        Err(Fail::Skip(format!(
            "KVM_CAP_{name} not reported by KVM_CHECK_EXTENSION"
        )))
    }
}

/// Maps a typed harness error to a failure naming the ioctl as the check calls it
/// (`"{name} failed: <strerror> (errno N)"`); an error that is no ioctl's is shown as it is.
pub fn ioctl<E: IoctlFailure>(name: &'static str) -> impl Fn(E) -> Fail {
    move |e| match e.errno() {
        Some(n) => Fail::failed(format!("{name} failed: {}", Errno(n))),
        None => Fail::failed(format!("{name} failed: {e}")),
    }
}

/// Matches `text` against a glob with `*` (any run) and `?` (one character).
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_ioctl_errors_read_like_ioctl_name() {
        use kvmconf_harness::{VcpuError, VmError};
        let e = VcpuError::GetRegs(Errno(libc::EINVAL));
        assert_eq!(
            Fail::from(e).to_string(),
            ioctl("KVM_GET_REGS")(e).to_string()
        );
        assert_eq!(
            Fail::from(e).to_string(),
            "KVM_GET_REGS failed: Invalid argument (os error 22) (errno 22)"
        );
        let v = VmError::CreateVcpu(Errno(libc::EEXIST));
        assert_eq!(
            ioctl("KVM_CREATE_VCPU id 1")(v).to_string(),
            "KVM_CREATE_VCPU id 1 failed: File exists (os error 17) (errno 17)"
        );
    }

    #[test]
    fn glob_matches_stars_and_questions() {
        assert!(glob("vm.*", "vm.memslot_overlap_eexist"));
        assert!(glob("*dirty*", "vm.dirty_log_exact"));
        assert!(glob("6.18.?4-*", "6.18.44-fc-v445"));
        assert!(!glob("vm.*", "system.api_version"));
        assert!(glob("*", ""));
        assert!(!glob("a", ""));
    }
}

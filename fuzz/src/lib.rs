//! Shared plumbing of kvmconf's cargo-fuzz targets: one `/dev/kvm` handle and VM pool per process,
//! the KVM-side coverage signal, KCOV detection, case inputs, and turning a finding into a case
//! file plus a crash.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod signal;

use kvmconf_cases::fuzz::{Exec, Runner, Target, artifact, kcov_status};
use kvmconf_guests::case::{Case, parse_cases};
use kvmconf_guests::r#gen::ArbitraryCase;
use kvmconf_harness::Host;
use libfuzzer_sys::Corpus;
use std::cell::RefCell;
use std::path::Path;
use std::sync::OnceLock;

/// Most cases taken from one text input.
pub const MAX_TEXT_CASES: usize = 4;

/// The process's KVM handle (opened once; leaked so pooled VMs can borrow it for the process's
/// life). Panics when `/dev/kvm` cannot be opened: a fuzz target without KVM cannot run.
pub fn host() -> &'static Host {
    static HOST: OnceLock<&'static Host> = OnceLock::new();
    HOST.get_or_init(|| {
        if let Err(why) = kcov_status() {
            eprintln!("kvmconf-fuzz: KCOV skipped: {why}; using KVM-side signal only");
        }
        match Host::open() {
            Ok(h) => Box::leak(Box::new(h)),
            Err(e) => panic!("SKIP: requirement not met: {e}"),
        }
    })
}

thread_local! {
    static RUNNER: RefCell<Option<Runner<'static>>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's runner (a VM pool on [`host`]).
pub fn with_runner<T>(f: impl FnOnce(&mut Runner<'static>) -> T) -> T {
    RUNNER.with(|r| {
        let mut r = r.borrow_mut();
        f(r.get_or_insert_with(|| {
            // KCOV around this thread's KVM_RUNs when the host has it (its edges are fed in judge).
            if kvmconf_harness::kcov::status().is_ok() {
                match kvmconf_harness::kcov::start(kvmconf_harness::kcov::DEFAULT_WORDS) {
                    Ok(()) => {
                        eprintln!("kvmconf-fuzz: KCOV: collecting kernel edges around KVM_RUN")
                    }
                    Err(e) => eprintln!("kvmconf-fuzz: KCOV present but not usable: {e}"),
                }
            }
            let mut r = Runner::new(host());
            // libFuzzer runs inputs on one thread: the sequence oracle's fd check holds.
            r.check_fds = true;
            r
        }))
    })
}

/// The cases an input stands for: a case file's text (TOML/JSON/JSONL, as in `cases/corpus/`), or
/// else a generated case built from the bytes. `None` when neither works.
pub fn cases_of(data: &[u8]) -> Option<Vec<Case>> {
    if let Ok(text) = std::str::from_utf8(data) {
        let file = if text.trim_start().starts_with('{') {
            "input.json"
        } else {
            "input.toml"
        };
        if let Ok(cs) = parse_cases(file, text) {
            return Some(
                cs.into_iter()
                    .take(MAX_TEXT_CASES)
                    .map(|l| l.case)
                    .collect(),
            );
        }
    }
    let mut u = arbitrary::Unstructured::new(data);
    <ArbitraryCase as arbitrary::Arbitrary>::arbitrary(&mut u)
        .ok()
        .map(|c| vec![c.0])
}

/// Feeds the signal, and turns a new finding into a minimised finding file (in
/// `$KVMCONF_FUZZ_CASES`, default `artifacts/cases`; the format `kvmconf repro` reads) and a crash
/// with a readable diff; known deviations are kept, not crashed on.
pub fn judge(x: Exec) -> Corpus {
    // Kernel edges of this input's KVM_RUNs (empty without KCOV), then the KVM-side signal.
    for e in kvmconf_harness::kcov::take() {
        signal::feed(e);
    }
    if x.rejected {
        return Corpus::Reject;
    }
    signal::feed(x.signal);
    let Some(f) = x.finding else {
        return Corpus::Keep;
    };
    signal::feed(kvmconf_cases::fuzz::signal_of(&f.signature));
    if f.known.is_some() {
        return Corpus::Keep;
    }
    let dir = std::env::var("KVMCONF_FUZZ_CASES").unwrap_or_else(|_| "artifacts/cases".into());
    let small = with_runner(|r| r.shrink(&f));
    let saved = artifact::render(
        &small,
        &["found by cargo-fuzz (libFuzzer keeps the crash input)".into()],
    )
    .map_err(std::io::Error::other)
    .and_then(|text| artifact::write_atomic(Path::new(&dir), &artifact::file_name(&small), &text));
    let at = match saved {
        Ok(p) => p.display().to_string(),
        Err(e) => format!("(not saved: {e})"),
    };
    panic!(
        "kvmconf finding {}: finding file {at}\n{}",
        f.signature,
        small.details.join("\n")
    );
}

/// Runs a guest target on every case an input stands for.
pub fn guest_target(target: Target, data: &[u8]) -> Corpus {
    let Some(cases) = cases_of(data) else {
        return Corpus::Reject;
    };
    let mut keep = Corpus::Reject;
    for c in &cases {
        let x = with_runner(|r| r.exec_case(target, c))
            .unwrap_or_else(|e| panic!("harness error on case {}: {e}", c.name));
        if let Corpus::Keep = judge(x) {
            keep = Corpus::Keep;
        }
    }
    keep
}

//! Running checks: the libtest-mimic entry point the per-area nextest binaries call, and the
//! judged run `kvmconf run` uses.

use crate::deviations::{self, Deviation, Verdict, judge};
use crate::registry::{Area, Check, Fail};
use kvmconf_harness::Host;
use kvmconf_harness::fingerprint::{self, Fingerprint};
use kvmconf_harness::skip::{Requirement, in_ci, require_kvm};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A check's verdict and how long it took.
#[derive(Clone, Debug)]
pub struct Judged {
    /// The check.
    pub check: &'static Check,
    /// Its verdict.
    pub verdict: Verdict,
    /// Wall time.
    pub time: Duration,
}

/// Runs one check on `host` (catching panics as failures) and judges it.
pub fn run_one(check: &'static Check, host: &Host, devs: &[Deviation], fp: &Fingerprint) -> Judged {
    let start = Instant::now();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (check.run)(host)))
        .unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "panic".into());
            Err(Fail::Failed(format!("panicked: {msg}")))
        });
    Judged {
        check,
        verdict: judge(check.id, &outcome, devs, fp),
        time: start.elapsed(),
    }
}

fn shared_fingerprint() -> &'static Fingerprint {
    static FP: OnceLock<Fingerprint> = OnceLock::new();
    FP.get_or_init(|| {
        let host = Host::open().ok();
        fingerprint::read(host.as_ref())
    })
}

/// The nextest entry point for one area: one libtest-mimic trial per check.
pub fn nextest_main(area: Area) -> std::process::ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let trials = crate::catalogue::all()
        .into_iter()
        .filter(|c| c.area == area)
        .map(|check| {
            let name = check
                .id
                .strip_prefix(&format!("{}.", area.name()))
                .unwrap_or(check.id);
            libtest_mimic::Trial::test(name, move || {
                let host = match require_kvm() {
                    Requirement::Met(h) => h,
                    Requirement::Skip(reason) => {
                        println!("SKIP: requirement not met: {reason} [{}]", check.id);
                        return Ok(());
                    }
                };
                let devs = deviations::known();
                let j = run_one(check, &host, &devs, shared_fingerprint());
                match j.verdict {
                    Verdict::Pass => Ok(()),
                    Verdict::Skip(r) => {
                        println!("SKIP: requirement not met: {r} [{}]", check.id);
                        Ok(())
                    }
                    Verdict::KnownDeviation { id, message } => {
                        println!("KNOWN DEVIATION {id} [{}]: {message}", check.id);
                        Ok(())
                    }
                    Verdict::Fixed { id } => Err(format!(
                        "known deviation {id} no longer shows on this host: the check passes; \
                         review and remove it from cases/deviations.toml"
                    )
                    .into()),
                    Verdict::Fail(m) => Err(format!("{m}\n(doc: {})", check.doc).into()),
                }
            })
        })
        .collect();
    let _ = in_ci;
    libtest_mimic::run(&args, trials).exit_code()
}

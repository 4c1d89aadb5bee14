//! Running checks: the libtest-mimic entry point the per-area nextest binaries call, and the
//! judged run `kvmconf run` uses — catalogue checks, corpus files against their snapshots, and
//! fixed-seed differential samples, each an [`Item`].

use crate::corpus::{self, CorpusFile};
use crate::deviations::{self, Deviation, Verdict, judge};
use crate::differential::{self, RunOptions, Variant};
use crate::registry::{Area, Check, Fail, Outcome};
use kvmconf_harness::Host;
use kvmconf_harness::fingerprint::{self, Fingerprint};
use kvmconf_harness::skip::{Requirement, in_ci, require_kvm};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
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

/// Runs `f`, turning a panic into a failure.
fn catching(f: impl FnOnce() -> Outcome) -> Outcome {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_string()))
            .unwrap_or_else(|| "panic".into());
        Err(Fail::failed(format!("panicked: {msg}")))
    })
}

/// Runs one check on `host` (catching panics as failures) and judges it.
pub fn run_one(check: &'static Check, host: &Host, devs: &[Deviation], fp: &Fingerprint) -> Judged {
    let start = Instant::now();
    let outcome = catching(|| (check.run)(host));
    Judged {
        check,
        verdict: judge(check.id, &outcome, devs, fp),
        time: start.elapsed(),
    }
}

/// Something `kvmconf run` runs and reports as one row.
#[derive(Clone, Debug)]
pub enum Item {
    /// A catalogue check.
    Check(&'static Check),
    /// A corpus file, compared with its snapshot.
    Corpus {
        /// Path relative to the corpus directory.
        rel: PathBuf,
        /// The loaded file, or why it could not be loaded (reported as a failure).
        file: Arc<Result<CorpusFile, String>>,
        /// The snapshot directory.
        snapshots: Arc<PathBuf>,
    },
    /// A fixed-seed sample of one differential variant.
    Differential {
        /// The variant.
        variant: Variant,
        /// Programs to draw and the seed.
        programs: u32,
    },
}

impl Item {
    /// The row id: the check id, `corpus.<path without .toml>`, or the variant's check id.
    pub fn id(&self) -> String {
        match self {
            Item::Check(c) => c.id.to_string(),
            Item::Corpus { rel, .. } => corpus::check_id(rel),
            Item::Differential { variant, .. } => variant.check().to_string(),
        }
    }

    /// The area.
    pub fn area(&self) -> Area {
        match self {
            Item::Check(c) => c.area,
            Item::Corpus { .. } => Area::Corpus,
            Item::Differential { .. } => Area::Differential,
        }
    }

    /// What it checks: the documentation a check cites, a corpus case's description, or a
    /// variant's.
    pub fn doc(&self) -> String {
        match self {
            Item::Check(c) => c.doc.to_string(),
            Item::Corpus { file, .. } => match file.as_ref() {
                Ok(f) => f
                    .cases
                    .first()
                    .and_then(|c| c.description.clone())
                    .unwrap_or_default(),
                Err(_) => "(unreadable case file)".into(),
            },
            Item::Differential { variant, programs } => format!(
                "{} ({} programs, seed {:#x})",
                variant.doc(),
                variant.programs(*programs),
                variant.known_seed()
            ),
        }
    }

    /// Generated programs it runs (differential samples only).
    pub fn programs(&self) -> Option<u64> {
        match self {
            Item::Differential { variant, programs } => {
                Some(u64::from(variant.programs(*programs)))
            }
            _ => None,
        }
    }
}

/// What `kvmconf run` may run besides the catalogue.
#[derive(Clone, Debug)]
pub struct Sources {
    /// The corpus and snapshot directories, if the corpus is to run.
    pub corpus: Option<(PathBuf, PathBuf)>,
    /// Programs a mode for the differential samples (0: none).
    pub programs: u32,
}

/// Every item, in report order: the catalogue, the corpus files, the differential variants.
pub fn items(sources: &Sources) -> Result<Vec<Item>, String> {
    let mut out: Vec<Item> = crate::catalogue::all()
        .into_iter()
        .map(Item::Check)
        .collect();
    if let Some((dir, snaps)) = &sources.corpus {
        let snapshots = Arc::new(snaps.clone());
        let files = corpus::files(dir)
            .map_err(|e| format!("cannot read the corpus {}: {e}", dir.display()))?;
        for rel in files {
            let file = Arc::new(corpus::load(dir, &rel));
            out.push(Item::Corpus {
                rel,
                file,
                snapshots: Arc::clone(&snapshots),
            });
        }
    }
    if sources.programs > 0 {
        out.extend(Variant::ALL.into_iter().map(|variant| Item::Differential {
            variant,
            programs: sources.programs,
        }));
    }
    Ok(out)
}

/// Runs one item on `host` (catching panics as failures) and judges it; returns the verdict and
/// the wall time.
pub fn run_item(
    item: &Item,
    host: &Host,
    devs: &[Deviation],
    fp: &Fingerprint,
) -> (Verdict, Duration) {
    let start = Instant::now();
    let verdict = match item {
        Item::Check(c) => run_one(c, host, devs, fp).verdict,
        Item::Corpus {
            rel,
            file,
            snapshots,
        } => {
            let outcome = match file.as_ref() {
                Ok(f) => catching(|| corpus::check(host, snapshots, f)),
                Err(e) => Err(Fail::failed(e.clone())),
            };
            corpus::judge(rel, &outcome, devs, fp)
        }
        Item::Differential { variant, programs } => {
            let opts = RunOptions {
                programs: variant.programs(*programs),
                seed: variant.known_seed(),
                persistence: None,
                keep_going: true,
                verbose: false,
            };
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                differential::run_programs(host, *variant, &opts, devs, fp)
            }));
            match run {
                Ok(t) => t.verdict(*variant, &opts),
                Err(_) => Verdict::Fail(format!("{}: panicked", variant.check())),
            }
        }
    };
    (verdict, start.elapsed())
}

/// The corpus and snapshot directories of this source tree.
pub fn source_tree_corpus() -> (PathBuf, PathBuf) {
    (corpus::dir(), corpus::snapshot_dir())
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

//! The hand-written corpus (`cases/corpus/`): every file parses, every case's result on this host
//! matches its insta snapshot in `snapshots/`, and no snapshot lacks a case.
//!
//! A snapshot records what *this project's host* does (known deviations included). On another
//! host a failing snapshot is the signal: its KVM behaves differently. Record a host's own
//! snapshots with `INSTA_UPDATE=always cargo nextest run -p kvmconf-cases --test corpus` or review
//! them one by one with `cargo insta review` (see README).

use kvmconf_cases::corpus;
use kvmconf_guests::case::Case;
use kvmconf_harness::run_fresh;
use kvmconf_harness::skip::{Requirement, require_kvm};
use libtest_mimic::{Arguments, Failed, Trial};
use std::path::{Path, PathBuf};

fn load(rel: &Path) -> Result<(String, Vec<Case>), String> {
    let f = corpus::load(&corpus::dir(), rel)?;
    Ok((f.text, f.cases))
}

/// Every corpus file parses, holds one case with a description, and opens with a comment saying
/// what it checks.
fn all_parse(files: &[PathBuf]) -> Result<(), Failed> {
    let mut bad = Vec::new();
    for rel in files {
        match load(rel) {
            Ok((text, cases)) => {
                if cases.len() != 1 {
                    bad.push(format!(
                        "{}: {} cases, wanted 1",
                        rel.display(),
                        cases.len()
                    ));
                } else if cases[0].description.as_deref().unwrap_or("").is_empty() {
                    bad.push(format!("{}: no description", rel.display()));
                }
                if !text.starts_with('#') {
                    bad.push(format!(
                        "{}: wanted a leading comment saying what it checks",
                        rel.display()
                    ));
                }
            }
            Err(e) => bad.push(e),
        }
    }
    if files.len() < 100 {
        bad.push(format!("{} corpus files, wanted at least 100", files.len()));
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("\n").into())
    }
}

/// Every file in `snapshots/` belongs to a corpus case (CI runs without cargo-insta, so stale
/// snapshots must fail here).
fn no_unreferenced(files: &[PathBuf]) -> Result<(), Failed> {
    let want: std::collections::BTreeSet<String> =
        files.iter().map(|f| corpus::snapshot_file(f)).collect();
    let dir = corpus::snapshot_dir();
    let mut stray = Vec::new();
    for e in std::fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))? {
        let name = e.map_err(|e| e.to_string())?.file_name();
        let name = name.to_string_lossy();
        if !want.contains(name.as_ref()) {
            stray.push(name.into_owned());
        }
    }
    if stray.is_empty() {
        Ok(())
    } else {
        stray.sort();
        Err(format!(
            "files in snapshots/ with no corpus case (delete them, or accept pending ones with \
             `cargo insta review`):\n  {}",
            stray.join("\n  ")
        )
        .into())
    }
}

/// Runs one corpus case on a fresh VM and asserts its snapshot.
fn snapshot(rel: &Path) -> Result<(), Failed> {
    let host = match require_kvm() {
        Requirement::Met(h) => h,
        Requirement::Skip(reason) => {
            println!("SKIP: requirement not met: {reason} [{}]", rel.display());
            return Ok(());
        }
    };
    let (text, cases) = load(rel).map_err(Failed::from)?;
    let case = &cases[0];
    let result =
        run_fresh(&host, case).map_err(|e| format!("{}: harness error: {e}", rel.display()))?;
    let result = corpus::mask_undefined(case, &text, &result)
        .map_err(|e| format!("{}: {e}", rel.display()))?;
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(corpus::snapshot_dir());
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings.set_input_file(corpus::dir().join(rel));
    settings.set_description(case.description.clone().unwrap_or_default());
    for field in corpus::redactions(&text) {
        settings.add_redaction(&format!(".{field}"), "[host-dependent]");
    }
    settings.bind(|| insta::assert_yaml_snapshot!(corpus::snapshot_name(rel), result));
    // `kvmconf run` judges the same snapshot without insta: it must agree.
    corpus::compare_snapshot(&corpus::snapshot_dir(), rel, &text, &result).map_err(|e| {
        format!(
            "{}: insta accepts the snapshot but kvmconf's reader does not: {e}",
            rel.display()
        )
    })?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Arguments::from_args();
    let files = corpus::files(&corpus::dir()).expect("cases/corpus is readable");
    let mut trials = vec![
        Trial::test("corpus_files_all_parse", {
            let f = files.clone();
            move || all_parse(&f)
        }),
        Trial::test("snapshots_without_case_rejected", {
            let f = files.clone();
            move || no_unreferenced(&f)
        }),
    ];
    for rel in files {
        let name = format!("snapshot::{}", rel.with_extension("").display());
        trials.push(Trial::test(name, move || snapshot(&rel)));
    }
    libtest_mimic::run(&args, trials).exit_code()
}

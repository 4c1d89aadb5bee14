//! One verdict per behaviour: every reproducer case of `cases/corpus/deviations/` gets the same
//! judgement from each guest oracle that can run it (the fuzz targets `guest_vs_interp` and
//! `guest_emulated_vs_native`, which the cargo-fuzz targets call unchanged, and the differential
//! explanation the nextest tests and `kvmconf run` use): no finding, or a known deviation of this
//! host, never a new finding (cases/deviations.toml, the oracle-core issue).

use kvmconf_cases::deviations::{self, Verdict};
use kvmconf_cases::fuzz::{Runner, Target};
use kvmconf_cases::{corpus, differential};
use kvmconf_guests::case::parse_cases;
use kvmconf_harness::skip::{Requirement, require_kvm};
use std::cell::RefCell;

/// Each deviation reproducer through each guest target and the differential explanation: every
/// mismatch a known deviation; the entry that lists the file, when it applies to this host and
/// has an oracle condition, among the ids named.
#[test]
fn deviation_reproducers_same_verdict_from_every_guest_oracle() {
    let host = match require_kvm() {
        Requirement::Met(h) => h,
        Requirement::Skip(r) => {
            println!("SKIP: requirement not met: {r}");
            return;
        }
    };
    let root = corpus::dir();
    let files = corpus::files(&root).expect("cases/corpus is readable");
    let fp = kvmconf_harness::fingerprint::read(Some(&host));
    let devs = deviations::known();
    let mut runner = Runner::new(&host);
    let pool = RefCell::new(kvmconf_harness::Pool::new(&host, 1));
    let mut judged = 0;
    let mut problems = Vec::new();
    for rel in files.iter().filter(|r| r.starts_with("deviations")) {
        let text = std::fs::read_to_string(root.join(rel)).expect("readable");
        let cases = parse_cases(&rel.display().to_string(), &text).expect("corpus parses");
        let path = format!("cases/corpus/{}", rel.display());
        let own: Vec<&str> = devs
            .iter()
            .filter(|d| d.cases.contains(&path) && d.on_host(&fp) && d.is_oracle())
            .map(|d| d.id.as_str())
            .collect();
        for loaded in &cases {
            let case = &loaded.case;
            for target in [Target::GuestVsInterp, Target::GuestEmulatedVsNative] {
                let x = runner
                    .exec_case(target, case)
                    .expect("harness runs the case");
                if x.rejected {
                    continue;
                }
                judged += 1;
                match &x.finding {
                    None => {}
                    Some(f) if f.known.is_none() => problems.push(format!(
                        "{path}: {}: new finding {}: {}",
                        target.name(),
                        f.signature,
                        f.details.join("; ")
                    )),
                    Some(f) => {
                        let known = f.known.as_deref().unwrap_or_default();
                        let ids: Vec<&str> = known.split(',').collect();
                        if target == Target::GuestVsInterp
                            && !own.is_empty()
                            && !own.iter().any(|o| ids.contains(o))
                        {
                            problems.push(format!(
                                "{path}: guest_vs_interp names {known}, not its own entry {own:?}"
                            ));
                        }
                    }
                }
            }
            // The differential oracle's explanation of the same run.
            if kvmconf_cases::fuzz::interpret_guest(case).is_none() {
                continue;
            }
            let kvm = pool.borrow_mut().run(case).expect("harness runs the case");
            if differential::compare(&kvm, case).is_empty() {
                continue;
            }
            judged += 1;
            for m in differential::explain(case, &kvm, |c| pool.borrow_mut().run(c)) {
                match m.judge("KVM != interpreter", &devs, &fp) {
                    Verdict::KnownDeviation { .. } => {}
                    v => problems.push(format!(
                        "{path}: differential: {}",
                        match v {
                            Verdict::Fail(msg) =>
                                msg.lines().next().unwrap_or_default().to_string(),
                            other => format!("{other:?}"),
                        }
                    )),
                }
            }
        }
    }
    assert!(judged > 0, "no reproducer was judged");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

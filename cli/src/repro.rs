//! `kvmconf repro FILE`: replays a finding file (a case file, a `state_entry` state file or an
//! `ioctl_sequence` sequence file; see `kvmconf_cases::fuzz::artifact`) under the oracle its header
//! names (`# target: …`; default KVM against the interpreter), prints the diff or the broken
//! invariant, and says by its exit code whether it reproduced.
//! `--emit-c OUT.c` writes a standalone C reproducer (only `<linux/kvm.h>` and libc; see
//! [`crate::emit_c`]) that sets up the same VM, runs it, serves I/O and MMIO like the harness, and
//! prints EXPECTED (the reference interpreter's result) and GOT lines.

use crate::common::{EXIT_BAD_INPUT, EXIT_FAIL, EXIT_HARNESS, EXIT_OK, open_host};
use crate::emit_c::emit_c;
use kvmconf_cases::fuzz::artifact::{self, Body};
use kvmconf_cases::fuzz::{Exec, Runner, Target, data_as_mmio};
use std::path::PathBuf;

/// Arguments of `kvmconf repro`.
#[derive(clap::Args)]
pub struct ReproArgs {
    /// The finding file: a case file (TOML, JSON or JSON Lines; the first case is used for
    /// --emit-c), a state_entry state file or an ioctl_sequence sequence file.
    file: PathBuf,
    /// The oracle (default: the file's `# target:` header, else its `format` key, else
    /// guest_vs_interp).
    #[arg(long)]
    target: Option<String>,
    /// Write a standalone C reproducer of the case to this file (case files only).
    #[arg(long)]
    emit_c: Option<PathBuf>,
}

/// Exit code of `kvmconf repro`: the file reproduced a finding (new or a known deviation). A
/// harness error ([`EXIT_HARNESS`]) means it neither reproduced nor not.
const EXIT_REPRODUCED: u8 = EXIT_FAIL;

/// Runs `kvmconf repro`.
pub fn main(a: ReproArgs) -> u8 {
    let name = a.file.display().to_string();
    let target = match &a.target {
        Some(t) => match Target::from_name(t) {
            Some(t) => Some(t),
            None => {
                eprintln!(
                    "kvmconf repro: --target: expected one of {}, got {t:?}",
                    Target::ALL.map(Target::name).join(", ")
                );
                return EXIT_BAD_INPUT;
            }
        },
        None => None,
    };
    let art = match artifact::load(&a.file, target) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("kvmconf repro: {e}");
            return EXIT_BAD_INPUT;
        }
    };
    let target = art.target;
    if let Some(out) = &a.emit_c {
        let Body::Cases(cases) = &art.body else {
            eprintln!(
                "kvmconf repro: {name}: --emit-c: expected a case file, got a {} file (its calls are not a single guest run)",
                target.name()
            );
            return EXIT_BAD_INPUT;
        };
        let case = &cases[0].case;
        let run_case = match target {
            Target::GuestEmulatedVsNative => data_as_mmio(case).unwrap_or_else(|| case.clone()),
            _ => case.clone(),
        };
        let c = emit_c(&run_case);
        if let Err(e) = std::fs::write(out, c) {
            eprintln!("kvmconf repro: {}: {e}", out.display());
            return EXIT_BAD_INPUT;
        }
        eprintln!(
            "wrote {} (build: gcc -O1 -Wall -Werror -o repro {0}; run: ./repro)",
            out.display()
        );
    }
    if target == Target::CaseParser {
        println!(
            "{name}: case_parser findings replay from their seed: use the `# replay:` command in the file's header"
        );
        return EXIT_OK;
    }
    let host = match open_host("repro") {
        Ok(h) => h,
        Err(code) => return code,
    };
    let mut runner = Runner::new(&host);
    // repro runs one thread: the sequence oracle can check that the VM's fds are closed.
    runner.check_fds = true;
    let results = runner.replay(&art);
    let (mut new, mut known, mut errors) = (0, Vec::new(), 0);
    for (case, r) in results {
        match r {
            Err(e) => {
                println!("{case}: harness error: {e}");
                errors += 1;
            }
            Ok(x) if x.rejected => println!(
                "{case}: out of the {} oracle's scope (the interpreter does not model it, or the case is invalid)",
                target.name()
            ),
            Ok(Exec { finding: None, .. }) => {
                println!("{case}: {}: no difference", target.name())
            }
            Ok(Exec {
                finding: Some(f), ..
            }) => {
                println!(
                    "{case}: {}: {}{}",
                    target.name(),
                    f.signature,
                    f.known
                        .as_ref()
                        .map_or(String::new(), |k| format!(" (known deviation {k})"))
                );
                for d in &f.details {
                    println!("  {d}");
                }
                match f.known {
                    Some(k) => known.push(k),
                    None => new += 1,
                }
            }
        }
    }
    known.sort();
    known.dedup();
    if errors > 0 {
        println!("RESULT harness error");
        EXIT_HARNESS
    } else if new > 0 {
        println!("RESULT reproduced");
        EXIT_REPRODUCED
    } else if !known.is_empty() {
        println!("RESULT reproduced (known deviation {})", known.join(", "));
        EXIT_REPRODUCED
    } else {
        println!("RESULT not reproduced");
        EXIT_OK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_the_target() {
        let t = "# kvmconf fuzz finding\n# target: guest_emulated_vs_native\nname = \"x\"\n";
        assert_eq!(
            artifact::header_target("f", t).unwrap(),
            Some(Target::GuestEmulatedVsNative)
        );
        assert_eq!(
            artifact::header_target("f", "name = \"x\"\n").unwrap(),
            None
        );
    }
}

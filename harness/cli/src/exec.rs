//! `kvmconf exec`: parse every input first, then run each case and print JSON Lines results.

use crate::{EXIT_BAD_INPUT, EXIT_FAIL, EXIT_NO_KVM, EXIT_OK};
use kvmconf_guests::case::{Located, load_file};
use kvmconf_harness::{Host, KvmError, Pool, run_fresh};
use std::io::Write;
use std::path::PathBuf;

/// Arguments of `kvmconf exec`.
#[derive(clap::Args)]
pub struct ExecArgs {
    /// Case files: .toml, .json, .jsonl (one case a line); `-` reads standard input.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Give every case a new VM instead of reusing pooled VMs.
    #[arg(long)]
    fresh: bool,
    /// Pretty-print each result (no longer one per line).
    #[arg(long)]
    pretty: bool,
    /// With the pool: compare all of guest RAM with a fresh image after every reset (slow).
    #[arg(long)]
    verify_reset: bool,
}

/// Reads every file; prints every error; returns the cases or None.
pub fn load_all(files: &[PathBuf]) -> Option<Vec<Located>> {
    let mut cases = Vec::new();
    let mut bad = false;
    for f in files {
        match load_file(f) {
            Ok(mut v) => cases.append(&mut v),
            Err(e) => {
                eprintln!("kvmconf: bad input: {e}");
                bad = true;
            }
        }
    }
    (!bad).then_some(cases)
}

/// Opens /dev/kvm or explains why not.
pub fn open_host() -> Result<Host, u8> {
    Host::open().map_err(|e| {
        eprintln!("kvmconf: {e}");
        match e {
            KvmError::NoKvm(_) => EXIT_NO_KVM,
            _ => EXIT_FAIL,
        }
    })
}

/// Runs `kvmconf exec`.
pub fn main(a: ExecArgs) -> u8 {
    let Some(cases) = load_all(&a.files) else {
        return EXIT_BAD_INPUT;
    };
    let host = match open_host() {
        Ok(h) => h,
        Err(code) => return code,
    };
    let mut pool = Pool::new(&host, 4);
    pool.verify = a.verify_reset;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut code = EXIT_OK;
    for c in &cases {
        let r = if a.fresh {
            run_fresh(&host, &c.case)
        } else {
            pool.run(&c.case)
        };
        match r {
            Ok(r) => {
                let text = if a.pretty {
                    serde_json::to_string_pretty(&r)
                } else {
                    serde_json::to_string(&r)
                }
                .expect("results serialize");
                if writeln!(out, "{text}").is_err() {
                    return EXIT_FAIL;
                }
            }
            Err(e) => {
                eprintln!(
                    "kvmconf: {}:{}: case {:?}: harness error: {e}",
                    c.file, c.line, c.case.name
                );
                code = EXIT_FAIL;
            }
        }
    }
    let _ = out.flush();
    code
}

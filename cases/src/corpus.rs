//! The hand-written corpus in `cases/corpus/`: listing and loading its files, naming their
//! snapshots, the `# redact:` comments that mark host-dependent result fields, and judging a case's
//! result against its snapshot (for `kvmconf run`; the corpus test binary asserts the same snapshots
//! with insta).

use crate::deviations::{self, Deviation, Verdict};
use crate::registry::{Fail, Outcome};
use kvmconf_guests::case::{Case, parse_cases};
use kvmconf_guests::result::{CaseResult, Exit};
use kvmconf_harness::Host;
use kvmconf_harness::fingerprint::Fingerprint;
use std::path::{Path, PathBuf};

/// The corpus directory of this source tree.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// The snapshot directory of this source tree (top-level `snapshots/`).
pub fn snapshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../snapshots")
}

/// Every `.toml` file under `root`, sorted, as paths relative to `root`.
pub fn files(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    fn walk(root: &Path, sub: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for e in std::fs::read_dir(root.join(sub))? {
            let e = e?;
            let rel = sub.join(e.file_name());
            if e.file_type()?.is_dir() {
                walk(root, &rel, out)?;
            } else if rel.extension().is_some_and(|x| x == "toml") {
                out.push(rel);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, Path::new(""), &mut out)?;
    out.sort();
    Ok(out)
}

/// The insta snapshot name of a corpus file: `corpus__` and its relative path without `.toml`,
/// with `/` as `__` (`arith/sub_borrow_real16.toml` → `corpus__arith__sub_borrow_real16`).
pub fn snapshot_name(rel: &Path) -> String {
    let stem = rel.with_extension("");
    let parts: Vec<String> = stem
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    format!("corpus__{}", parts.join("__"))
}

/// The snapshot file (`<name>.snap`) a corpus file is stored in.
pub fn snapshot_file(rel: &Path) -> String {
    format!("{}.snap", snapshot_name(rel))
}

/// Result fields a case marks as host-dependent with a `# redact: regs.rax regs.rdx` comment
/// (CPUID values, the TSC): dotted paths into the result.
pub fn redactions(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("# redact:"))
        .flat_map(|r| r.split_whitespace().map(str::to_string))
        .collect()
}

/// Result fields whose bits a case declares undefined by the SDM with a
/// `# undefined: regs.rsi=0xd4` comment (flags a PUSHF copied into a register after an instruction
/// that leaves them undefined): dotted paths and the bits that are not compared. `Err` names a
/// malformed entry.
pub fn undefined_bits(text: &str) -> Result<Vec<(String, u64)>, String> {
    let mut out = Vec::new();
    for (n, l) in text.lines().enumerate() {
        let Some(r) = l.trim().strip_prefix("# undefined:") else {
            continue;
        };
        for item in r.split_whitespace() {
            let parsed = item.split_once('=').and_then(|(f, m)| {
                let m = m.strip_prefix("0x")?;
                Some((f.to_string(), u64::from_str_radix(m, 16).ok()?))
            });
            out.push(parsed.ok_or_else(|| {
                format!(
                    "line {}: `# undefined:` wants FIELD=0xMASK items, got {item:?}",
                    n + 1
                )
            })?);
        }
    }
    Ok(out)
}

/// `result` with the bits the SDM leaves undefined cleared, so that a snapshot records only what
/// the architecture defines (undefined flags differ between CPU vendors, and KVM's emulator takes
/// them from the host CPU): the RFLAGS bits the interpreter reports undefined when `case` reaches
/// its HLT (when it models the case), and the bits `text` declares with `# undefined:`.
pub fn mask_undefined(case: &Case, text: &str, result: &CaseResult) -> Result<CaseResult, String> {
    let mut r = result.clone();
    let (model, undefined) = kvmconf_guests::interp::run_with_undefined(case);
    if model.exit == Exit::Hlt {
        r.regs.rflags.0 &= !undefined;
    }
    let declared = undefined_bits(text)?;
    if declared.is_empty() {
        return Ok(r);
    }
    let mut v = serde_json::to_value(&r).expect("results serialize");
    for (field, mask) in declared {
        let at = field.split('.').try_fold(&mut v, |cur, p| cur.get_mut(p));
        let value = at
            .as_ref()
            .and_then(|x| x.as_str())
            .and_then(|x| u64::from_str_radix(x.strip_prefix("0x")?, 16).ok())
            .ok_or_else(|| {
                format!("`# undefined: {field}=…`: no hex field {field} in the result")
            })?;
        *at.expect("checked above") = serde_json::Value::String(format!("{:#x}", value & !mask));
    }
    serde_json::from_value(v).map_err(|e| format!("`# undefined:`: {e}"))
}

/// One corpus file: its path relative to the corpus directory, its text and its cases.
#[derive(Clone, Debug)]
pub struct CorpusFile {
    /// Path relative to the corpus directory (`arith/sub_borrow_real16.toml`).
    pub rel: PathBuf,
    /// The file's text (its comments carry `# redact:`).
    pub text: String,
    /// The cases it holds (one, for a well-formed corpus file).
    pub cases: Vec<Case>,
}

/// Reads and parses `root/rel`; an error names the file, the line or field, and what was expected.
pub fn load(root: &Path, rel: &Path) -> Result<CorpusFile, String> {
    let path = root.join(rel);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let cases = parse_cases(&path.display().to_string(), &text).map_err(|e| e.to_string())?;
    Ok(CorpusFile {
        rel: rel.to_path_buf(),
        text,
        cases: cases.into_iter().map(|l| l.case).collect(),
    })
}

/// Every corpus file under `root`, loaded, in path order; the first unreadable or invalid file is
/// the error.
pub fn load_all(root: &Path) -> Result<Vec<CorpusFile>, String> {
    let files =
        files(root).map_err(|e| format!("cannot read the corpus {}: {e}", root.display()))?;
    files.iter().map(|rel| load(root, rel)).collect()
}

/// The id of a corpus file in `kvmconf run`: `corpus.` and its path without `.toml`
/// (`corpus.arith/sub_borrow_real16`).
pub fn check_id(rel: &Path) -> String {
    format!("corpus.{}", rel.with_extension("").display())
}

/// Compares `result` with the snapshot of `rel` in `snapshots` (fields `text` marks `# redact:`
/// stand as `[host-dependent]` on both sides): a failure names the snapshot and the fields that
/// differ.
pub fn compare_snapshot(snapshots: &Path, rel: &Path, text: &str, result: &CaseResult) -> Outcome {
    let path = snapshots.join(snapshot_file(rel));
    if !path.exists() {
        return Err(Fail::failed(format!(
            "no snapshot {} (record it: INSTA_UPDATE=always cargo nextest run -p kvmconf-cases \
             --test corpus)",
            path.display()
        )));
    }
    let want = crate::snapshot::read(&path).map_err(Fail::failed)?;
    let mut got = serde_json::to_value(result).expect("results serialize");
    crate::snapshot::redact(&mut got, &redactions(text));
    let diffs = crate::snapshot::field_diffs(&want, &got);
    if diffs.is_empty() {
        return Ok(());
    }
    const SHOWN: usize = 8;
    let mut lines: Vec<String> = diffs
        .iter()
        .take(SHOWN)
        .map(|(p, w, g)| format!("{p}: wanted {w}, got {g}"))
        .collect();
    if diffs.len() > SHOWN {
        lines.push(format!("… {} more fields", diffs.len() - SHOWN));
    }
    Err(Fail::failed(format!(
        "result differs from the snapshot {} in {} fields: {}",
        path.display(),
        diffs.len(),
        lines.join("; ")
    )))
}

/// Runs `file`'s case on a fresh VM (as the corpus test does) and compares the result with its
/// snapshot in `snapshots`.
pub fn check(host: &Host, snapshots: &Path, file: &CorpusFile) -> Outcome {
    let [case] = file.cases.as_slice() else {
        return Err(Fail::failed(format!(
            "{}: {} cases, wanted 1",
            file.rel.display(),
            file.cases.len()
        )));
    };
    let result = kvmconf_harness::run_fresh(host, case)?;
    let result = mask_undefined(case, &file.text, &result)
        .map_err(|e| Fail::failed(format!("{}: {e}", file.rel.display())))?;
    compare_snapshot(snapshots, &file.rel, &file.text, &result)
}

/// The known deviations of the host `fp` whose reproducer is the corpus file `rel`.
pub fn reproduced<'a>(rel: &Path, devs: &'a [Deviation], fp: &Fingerprint) -> Vec<&'a Deviation> {
    let path = format!("cases/corpus/{}", rel.display());
    devs.iter()
        .filter(|d| d.on_host(fp) && d.cases.contains(&path))
        .collect()
}

/// The verdict on a corpus file's outcome. The snapshots record this project's host, its known
/// deviations included; a file that is the reproducer of a known deviation of this host and
/// matches its snapshot is that known deviation, and any other match is a pass. A mismatch is a
/// failure (a `corpus.*` entry of `cases/deviations.toml` can explain it like any check's).
pub fn judge(rel: &Path, outcome: &Outcome, devs: &[Deviation], fp: &Fingerprint) -> Verdict {
    let id = check_id(rel);
    let verdict = deviations::judge(&id, outcome, devs, fp);
    let repro = reproduced(rel, devs, fp);
    match (verdict, repro.first()) {
        (Verdict::Pass, Some(d)) => Verdict::KnownDeviation {
            id: d.id.clone(),
            message: format!(
                "matches its snapshot, which records known deviation {}: {}",
                d.id, d.observed
            ),
        },
        (Verdict::Fail(m), Some(d)) => Verdict::Fail(format!(
            "{m}\n(this case reproduces known deviation {}, which its snapshot records: has the \
             host changed?)",
            d.id
        )),
        (v, _) => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_follow_the_path() {
        assert_eq!(
            snapshot_name(Path::new("arith/sub_borrow_real16.toml")),
            "corpus__arith__sub_borrow_real16"
        );
        assert_eq!(
            snapshot_file(Path::new("seed_hello.toml")),
            "corpus__seed_hello.snap"
        );
    }

    #[test]
    fn undefined_bits_are_cleared_from_rflags_and_declared_fields_only() {
        use kvmconf_guests::case::Mode;
        // mov eax, 0x10000; imul ebx, eax, 0x10000; pushfd; pop esi; hlt (prot32): IMUL leaves
        // SF, ZF, AF and PF undefined, and PUSHFD copies them into esi.
        let code = vec![
            0xb8, 0x00, 0x00, 0x01, 0x00, 0x69, 0xd8, 0x00, 0x00, 0x01, 0x00, 0x9c, 0x5e, 0xf4,
        ];
        let mut case = Case::new("imul", Mode::Prot32, 0x1000, code);
        case.regs.rsp = Some(kvmconf_guests::Hex(0x8000));
        let mut r = kvmconf_guests::interp::run(&case);
        assert_eq!(r.exit, Exit::Hlt);
        r.regs.rflags.0 |= 0xd4;
        r.regs.rsi.0 |= 0xd4;
        r.regs.rdi.0 = 0xd4;
        let text = "# undefined: regs.rsi=0xd4\n";
        let m = mask_undefined(&case, text, &r).unwrap();
        assert_eq!(m.regs.rflags.0 & 0xd4, 0, "IMUL's undefined flags");
        assert_eq!(m.regs.rsi.0 & 0xd4, 0, "declared");
        assert_eq!(m.regs.rdi.0, 0xd4, "not declared: compared as it is");
        assert_eq!(
            m.regs.rflags.0 & 0x801,
            r.regs.rflags.0 & 0x801,
            "CF and OF are defined"
        );
        assert!(mask_undefined(&case, "# undefined: regs.rsi=d4\n", &r).is_err());
        assert!(mask_undefined(&case, "# undefined: regs.nosuch=0x1\n", &r).is_err());
        assert!(
            undefined_bits("x\n# undefined: regs.rsi\n")
                .unwrap_err()
                .starts_with("line 2:")
        );
    }

    #[test]
    fn compare_snapshot_accepts_the_recorded_result_and_names_a_changed_field() {
        let rel = Path::new("seed_hello.toml");
        let text = std::fs::read_to_string(dir().join(rel)).unwrap();
        let snap = crate::snapshot::read(&snapshot_dir().join(snapshot_file(rel))).unwrap();
        let mut r: CaseResult = serde_json::from_value(snap).unwrap();
        assert_eq!(compare_snapshot(&snapshot_dir(), rel, &text, &r), Ok(()));
        r.regs.rax.0 = 0x99;
        let Err(Fail::Failed(m)) = compare_snapshot(&snapshot_dir(), rel, &text, &r) else {
            panic!("a changed rax must fail");
        };
        assert!(
            m.text
                .contains("in 1 fields: regs.rax: wanted 0xa, got 0x99"),
            "{m}"
        );
    }

    #[test]
    fn redact_comments_list_fields() {
        let t = "# what\n# redact: regs.rax regs.rdx\nname = \"x\"\n";
        assert_eq!(redactions(t), ["regs.rax", "regs.rdx"]);
        assert!(redactions("name = \"x\"").is_empty());
    }
}

//! The hand-written corpus in `cases/corpus/`: listing its files, naming their snapshots, and the
//! `# redact:` comments that mark host-dependent result fields.

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
    fn redact_comments_list_fields() {
        let t = "# what\n# redact: regs.rax regs.rdx\nname = \"x\"\n";
        assert_eq!(redactions(t), ["regs.rax", "regs.rdx"]);
        assert!(redactions("name = \"x\"").is_empty());
    }
}

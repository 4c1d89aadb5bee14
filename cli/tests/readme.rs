//! The README's tables against the code: the exit-code table lists exactly the codes of
//! `cli/src/common.rs`, and the layout table names every top-level folder of the tree and no
//! folder that is not there.

use std::collections::BTreeSet;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn readme() -> String {
    std::fs::read_to_string(root().join("README.md")).expect("README.md")
}

/// The table rows (first cells) of the README section headed `## {heading}`.
fn first_cells(text: &str, heading: &str) -> Vec<String> {
    let start = text
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("README has no ## {heading}"));
    let body = &text[start + heading.len() + 5..];
    let body = &body[..body.find("\n## ").unwrap_or(body.len())];
    body.lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---"))
        .filter_map(|l| l.split('|').nth(1).map(|c| c.trim().to_string()))
        .skip(1) // the header row
        .collect()
}

#[test]
fn readme_exit_code_table_lists_the_codes_of_common_rs() {
    let src = std::fs::read_to_string(root().join("cli/src/common.rs")).expect("common.rs");
    let mut code: BTreeSet<u32> = BTreeSet::new();
    for l in src.lines() {
        let Some(rest) = l.trim().strip_prefix("pub const EXIT_") else {
            continue;
        };
        let expr = rest
            .split_once("u8 = ")
            .expect("pub const EXIT_X: u8 = …;")
            .1;
        let value: u32 = expr
            .trim_end_matches(';')
            .split('+')
            .map(|t| t.trim().parse::<u32>().expect("a sum of numbers"))
            .sum();
        code.insert(value);
    }
    let table: BTreeSet<u32> = first_cells(&readme(), "Exit codes")
        .iter()
        .map(|c| c.parse().unwrap_or_else(|_| panic!("exit code cell {c:?}")))
        .collect();
    assert!(code.len() >= 6, "{code:?}");
    assert_eq!(table, code, "README exit codes vs cli/src/common.rs");
}

#[test]
fn readme_layout_table_names_every_top_level_folder() {
    let table: BTreeSet<String> = first_cells(&readme(), "Layout")
        .iter()
        .map(|c| c.trim_matches('`').trim_end_matches('/').to_string())
        .collect();
    for t in &table {
        assert!(
            root().join(t).exists(),
            "README layout names {t}, which does not exist"
        );
    }
    let ignored = ["target", "artifacts"];
    for e in std::fs::read_dir(root()).expect("the tree") {
        let e = e.expect("entry");
        let name = e.file_name().to_string_lossy().to_string();
        if e.path().is_dir() && !name.starts_with('.') && !ignored.contains(&name.as_str()) {
            assert!(
                table.contains(&name),
                "top-level folder {name}/ is not in the README layout table"
            );
        }
    }
}

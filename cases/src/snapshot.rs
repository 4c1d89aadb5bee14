//! Corpus snapshots outside insta: reading a `snapshots/*.snap` file (insta's YAML) into a JSON
//! value, redacting host-dependent result fields, and listing the fields two results differ in —
//! what `kvmconf run` and `kvmconf compare` use to judge results without the test harness.
//!
//! The reader takes the block YAML that insta writes for serde data (mappings, `- ` sequences,
//! quoted and plain scalars, `[]` and `{}`) and rejects anything else with the file, the line and
//! what it expected, so a snapshot it cannot read is never judged.

use serde_json::{Map, Number, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// Replaces each dotted `field` of `v` (e.g. `regs.rax`) with `"[host-dependent]"`, as insta's
/// redactions do; fields `v` lacks are left alone.
pub fn redact(v: &mut Value, fields: &[String]) {
    for field in fields {
        let mut cur = &mut *v;
        let parts: Vec<&str> = field.split('.').collect();
        for (i, p) in parts.iter().enumerate() {
            let Some(next) = cur.get_mut(*p) else { break };
            if i + 1 == parts.len() {
                *next = Value::String("[host-dependent]".into());
                break;
            }
            cur = next;
        }
    }
}

pub use kvmconf_guests::result::flatten;

/// The fields in which `a` and `b` differ, in path order: (path, value in `a`, value in `b`),
/// `(absent)` for a field one side lacks.
pub fn field_diffs(a: &Value, b: &Value) -> Vec<(String, String, String)> {
    let (mut fa, mut fb) = (BTreeMap::new(), BTreeMap::new());
    flatten("", a, &mut fa);
    flatten("", b, &mut fb);
    let mut keys: Vec<&String> = fa.keys().chain(fb.keys()).collect();
    keys.sort();
    keys.dedup();
    let absent = || "(absent)".to_string();
    keys.into_iter()
        .filter(|k| fa.get(*k) != fb.get(*k))
        .map(|k| {
            (
                k.clone(),
                fa.get(k).cloned().unwrap_or_else(absent),
                fb.get(k).cloned().unwrap_or_else(absent),
            )
        })
        .collect()
}

/// Reads a snapshot file: its body (the part after insta's `---` header) as a JSON value.
pub fn read(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text).map_err(|(line, what)| format!("{}:{line}: {what}", path.display()))
}

/// One body line: its number in the file, its indentation and its text.
#[derive(Clone, Copy)]
struct Line<'a> {
    no: usize,
    indent: usize,
    text: &'a str,
}

type ParseError = (usize, String);

/// Parses a snapshot's text; an error is (line number, what was expected).
pub fn parse(text: &str) -> Result<Value, ParseError> {
    let mut all = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    let mut body_start = None;
    if let Some((_, first)) = all.next() {
        if first.trim_end() != "---" {
            return Err((1, "expected insta's `---` header line".into()));
        }
        for (no, l) in all.by_ref() {
            if l.trim_end() == "---" {
                body_start = Some(no + 1);
                break;
            }
        }
    }
    let Some(start) = body_start else {
        return Err((1, "expected a header closed by a `---` line".into()));
    };
    let lines: Vec<Line> = text
        .lines()
        .enumerate()
        .skip(start - 1)
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let t = l.trim_start_matches(' ');
            Line {
                no: i + 1,
                indent: l.len() - t.len(),
                text: t.trim_end(),
            }
        })
        .collect();
    if lines.is_empty() {
        return Ok(Value::Null);
    }
    if lines.len() == 1 && !is_key(lines[0].text) && !is_item(lines[0].text) {
        return scalar(lines[0].text, lines[0].no);
    }
    let mut lines = lines;
    let mut i = 0;
    let v = block(&mut lines, &mut i, 0)?;
    match lines.get(i) {
        None => Ok(v),
        Some(l) => Err((
            l.no,
            "expected the end of the snapshot (inconsistent indentation)".into(),
        )),
    }
}

fn is_item(t: &str) -> bool {
    t == "-" || t.starts_with("- ")
}

/// Whether `t` starts with `key:` (a plain key followed by `:` and a space or the line's end).
fn split_key(t: &str) -> Option<(&str, &str)> {
    let end = t.find(':')?;
    let key = &t[..end];
    let rest = &t[end + 1..];
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    (plain && (rest.is_empty() || rest.starts_with(' '))).then(|| (key, rest.trim_start()))
}

fn is_key(t: &str) -> bool {
    split_key(t).is_some()
}

/// A mapping or a sequence whose lines are indented by `indent`.
fn block(lines: &mut [Line], i: &mut usize, indent: usize) -> Result<Value, ParseError> {
    let first = lines[*i];
    if first.indent != indent {
        return Err((first.no, format!("expected indentation {indent}")));
    }
    if is_item(first.text) {
        sequence(lines, i, indent)
    } else {
        mapping(lines, i, indent)
    }
}

/// The value after `key:` or `-` with nothing else on the line: a nested block, or null.
fn nested(lines: &mut [Line], i: &mut usize, indent: usize) -> Result<Value, ParseError> {
    match lines.get(*i) {
        Some(l) if l.indent > indent => {
            let n = l.indent;
            block(lines, i, n)
        }
        _ => Ok(Value::Null),
    }
}

fn mapping(lines: &mut [Line], i: &mut usize, indent: usize) -> Result<Value, ParseError> {
    let mut m = Map::new();
    while let Some(&l) = lines.get(*i) {
        if l.indent < indent {
            break;
        }
        if l.indent > indent || is_item(l.text) {
            return Err((l.no, "expected a `key: value` line of the mapping".into()));
        }
        let Some((key, rest)) = split_key(l.text) else {
            return Err((l.no, "expected a `key: value` line of the mapping".into()));
        };
        *i += 1;
        let v = if rest.is_empty() {
            nested(lines, i, indent)?
        } else {
            scalar(rest, l.no)?
        };
        if m.insert(key.to_string(), v).is_some() {
            return Err((l.no, format!("duplicate key {key:?}")));
        }
    }
    Ok(Value::Object(m))
}

fn sequence(lines: &mut [Line], i: &mut usize, indent: usize) -> Result<Value, ParseError> {
    let mut items = Vec::new();
    while let Some(&l) = lines.get(*i) {
        if l.indent < indent {
            break;
        }
        if l.indent > indent || !is_item(l.text) {
            return Err((l.no, "expected a `- ` item of the sequence".into()));
        }
        let rest = l.text[1..].trim_start();
        if rest.is_empty() {
            *i += 1;
            items.push(nested(lines, i, indent)?);
        } else if is_key(rest) || is_item(rest) {
            // `- key: value` opens a mapping (or `- - x` a sequence) whose lines are indented to
            // where its first entry starts.
            let inner = indent + (l.text.len() - rest.len());
            lines[*i] = Line {
                no: l.no,
                indent: inner,
                text: rest,
            };
            items.push(block(lines, i, inner)?);
        } else {
            *i += 1;
            items.push(scalar(rest, l.no)?);
        }
    }
    Ok(Value::Array(items))
}

fn scalar(t: &str, no: usize) -> Result<Value, ParseError> {
    if let Some(body) = t.strip_prefix('"') {
        return double_quoted(body, no).map(Value::String);
    }
    if let Some(body) = t.strip_prefix('\'') {
        let body = body
            .strip_suffix('\'')
            .ok_or((no, "expected a closing `'`".to_string()))?;
        return Ok(Value::String(body.replace("''", "'")));
    }
    Ok(match t {
        "[]" => Value::Array(vec![]),
        "{}" => Value::Object(Map::new()),
        "~" | "null" => Value::Null,
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => {
            if let Ok(n) = t.parse::<u64>() {
                Value::Number(n.into())
            } else if let Ok(n) = t.parse::<i64>() {
                Value::Number(n.into())
            } else if let Some(n) = t
                .parse::<f64>()
                .ok()
                .filter(|_| t.contains('.'))
                .and_then(Number::from_f64)
            {
                Value::Number(n)
            } else if t.starts_with(['[', '{', '&', '*', '!', '|', '>', '%', '@', '`']) {
                return Err((no, format!("expected a plain scalar, got {t:?}")));
            } else {
                Value::String(t.to_string())
            }
        }
    })
}

fn double_quoted(body: &str, no: usize) -> Result<String, ParseError> {
    let mut out = String::new();
    let mut chars = body.chars();
    loop {
        match chars.next() {
            None => return Err((no, "expected a closing `\"`".into())),
            Some('"') => break,
            Some('\\') => match chars.next() {
                Some('"') => out.push('"'),
                Some('\\') => out.push('\\'),
                Some('/') => out.push('/'),
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some('0') => out.push('\0'),
                Some(c @ ('x' | 'u' | 'U')) => {
                    let n = match c {
                        'x' => 2,
                        'u' => 4,
                        _ => 8,
                    };
                    let hex: String = chars.by_ref().take(n).collect();
                    let ch = u32::from_str_radix(&hex, 16)
                        .ok()
                        .and_then(char::from_u32)
                        .ok_or((no, format!("bad escape \\{c}{hex}")))?;
                    out.push(ch);
                }
                other => return Err((no, format!("unknown escape \\{other:?}"))),
            },
            Some(c) => out.push(c),
        }
    }
    if !chars.as_str().is_empty() {
        return Err((no, "expected the line to end after the closing `\"`".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SNAP: &str = "---\nsource: cases/tests/corpus.rs\ndescription: \"x: \\\"y\\\"\"\n---\nname: seed\nexit:\n  kind: internal_error\n  suberror: 1\n  data:\n    - \"0x1\"\n    - \"0xf4\"\ntrace:\n  - io_out:\n      port: 241\n      size: 1\n      value: \"0x48\"\n  - mmio_read:\n      addr: \"0xd0000000\"\nregs:\n  rax: \"[host-dependent]\"\nmemory: []\nsteps:\n  - \"0x1001\"\n";

    #[test]
    fn parses_insta_yaml_bodies() {
        let v = parse(SNAP).unwrap();
        assert_eq!(
            v,
            json!({
                "name": "seed",
                "exit": {"kind": "internal_error", "suberror": 1, "data": ["0x1", "0xf4"]},
                "trace": [
                    {"io_out": {"port": 241, "size": 1, "value": "0x48"}},
                    {"mmio_read": {"addr": "0xd0000000"}}
                ],
                "regs": {"rax": "[host-dependent]"},
                "memory": [],
                "steps": ["0x1001"]
            })
        );
    }

    #[test]
    fn rejects_what_it_cannot_read_with_the_line() {
        assert_eq!(parse("name: x\n").unwrap_err().0, 1);
        let bad = "---\na: 1\n---\nname: x\n regs: 1\n";
        assert_eq!(parse(bad).unwrap_err().0, 5);
        let anchor = "---\n---\nname: &a x\n";
        assert!(parse(anchor).unwrap_err().1.contains("plain scalar"));
        let open = "---\n---\nname: \"x\n";
        assert!(parse(open).unwrap_err().1.contains("closing"));
    }

    #[test]
    fn redaction_and_field_diffs_name_paths() {
        let mut a = json!({"regs": {"rax": "0x1", "rbx": "0x2"}, "trace": []});
        redact(
            &mut a,
            &["regs.rax".to_string(), "nosuch.field".to_string()],
        );
        assert_eq!(a["regs"]["rax"], "[host-dependent]");
        let b = json!({"regs": {"rax": "[host-dependent]", "rbx": "0x3"}, "trace": [1]});
        let d = field_diffs(&a, &b);
        assert_eq!(
            d,
            [
                ("regs.rbx".to_string(), "0x2".to_string(), "0x3".to_string()),
                (
                    "trace".to_string(),
                    "[]".to_string(),
                    "(absent)".to_string()
                ),
                (
                    "trace[0]".to_string(),
                    "(absent)".to_string(),
                    "1".to_string()
                ),
            ]
        );
    }
}

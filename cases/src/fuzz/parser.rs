//! The `case_parser` target: mutated case text into the parser, which must not panic and must
//! keep what it accepts through a JSON round trip.

use super::guest::gen_guest;
use super::{Exec, Finding, Input, Target, signal_of};
use kvmconf_guests::case::{Case, Mode, parse_cases};
use kvmconf_guests::r#gen::source::Source;

/// Text for the parser: a generated case as TOML or JSON, then a few random edits.
pub fn gen_parser_input(src: &mut dyn Source) -> Vec<u8> {
    let case = gen_guest(src);
    let mut text = if src.below(2) == 0 {
        toml::to_string(&case).unwrap_or_default().into_bytes()
    } else {
        serde_json::to_vec(&case).unwrap_or_default()
    };
    const TOKENS: [&[u8]; 14] = [
        b"\"0x",
        b"0xffffffffffffffff",
        b"-1",
        b"[",
        b"]",
        b"{",
        b"}",
        b"\n",
        b"=",
        b"\"",
        b"1e309",
        b"mode = \"long64\"",
        b"cpl = 3",
        b"memory_mib = 16384",
    ];
    let edits = src.below(6);
    for _ in 0..edits {
        if text.is_empty() {
            break;
        }
        let at = src.below(text.len() as u64) as usize;
        match src.below(4) {
            0 => text[at] ^= 1 << src.below(8),
            1 => {
                let end = (at + 1 + src.below(16) as usize).min(text.len());
                text.drain(at..end);
            }
            2 => {
                let t = TOKENS[src.below(TOKENS.len() as u64) as usize];
                text.splice(at..at, t.iter().copied());
            }
            _ => {
                let end = (at + 1 + src.below(32) as usize).min(text.len());
                let dup: Vec<u8> = text[at..end].to_vec();
                text.splice(at..at, dup);
            }
        }
    }
    text
}

/// Arbitrary bytes into the case parser: it must not panic, and a case it accepts must survive
/// a JSON round trip unchanged.
pub fn case_parser(bytes: &[u8]) -> Exec {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Exec {
            rejected: true,
            ..Exec::default()
        };
    };
    let file = if text.trim_start().starts_with('{') {
        "fuzz.json"
    } else {
        "fuzz.toml"
    };
    let parsed = std::panic::catch_unwind(|| parse_cases(file, text));
    let stand_in = || Case::new("case_parser", Mode::Real16, 0x1000, vec![0xf4]);
    match parsed {
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Exec {
                signal: signal_of("panic"),
                rejected: false,
                finding: Some(Finding {
                    target: Target::CaseParser,
                    signature: format!("case_parser:panic:{}", msg.lines().next().unwrap_or("")),
                    known: None,
                    case: stand_in(),
                    input: Input::Case,
                    details: vec![
                        format!("parse_cases panicked: {msg}"),
                        format!("input: {text:?}"),
                    ],
                }),
            }
        }
        Ok(Err(e)) => Exec {
            signal: signal_of(("error", e.to_string().split(':').nth(2).map(str::to_owned))),
            ..Exec::default()
        },
        Ok(Ok(cases)) => {
            let mut finding = None;
            for l in &cases {
                let back = serde_json::to_string(&l.case)
                    .ok()
                    .and_then(|j| parse_cases("roundtrip.json", &j).ok());
                let same = back.is_some_and(|b| b.len() == 1 && b[0].case == l.case);
                if !same {
                    finding = Some(Finding {
                        target: Target::CaseParser,
                        signature: "case_parser:roundtrip".into(),
                        known: None,
                        case: l.case.clone(),
                        input: Input::Case,
                        details: vec![format!(
                            "case {:?} does not survive a JSON round trip; input: {text:?}",
                            l.case.name
                        )],
                    });
                    break;
                }
            }
            Exec {
                signal: signal_of(("ok", cases.len().min(4))),
                rejected: false,
                finding,
            }
        }
    }
}

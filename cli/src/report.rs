//! Report formats of `kvmconf run`: the human table, JSON, KTAP/TAP 13 and JUnit XML.

use kvmconf_cases::deviations::Verdict;
use kvmconf_harness::fingerprint::Fingerprint;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One check's row in every report.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Check id.
    pub id: String,
    /// Area name.
    pub area: String,
    /// The documentation it checks.
    pub doc: String,
    /// pass, fail, known deviation, fixed, skip.
    pub result: String,
    /// Failure message, skip reason, or deviation message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The known deviation involved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deviation: Option<String>,
    /// Wall time in milliseconds.
    pub time_ms: f64,
    /// Generated programs run (differential samples only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub programs: Option<u64>,
}

impl Row {
    /// A row from a verdict.
    pub fn new(id: &str, area: &str, doc: &str, verdict: &Verdict, time_ms: f64) -> Row {
        let (message, deviation) = match verdict {
            Verdict::Pass => (None, None),
            Verdict::Fail(m) => (Some(m.clone()), None),
            Verdict::KnownDeviation { id, message } => (Some(message.clone()), Some(id.clone())),
            Verdict::Fixed { id } => (
                Some(format!("known deviation {id} no longer shows here")),
                Some(id.clone()),
            ),
            Verdict::Skip(r) => (Some(r.clone()), None),
        };
        Row {
            id: id.into(),
            area: area.into(),
            doc: doc.into(),
            result: verdict.word().into(),
            message,
            deviation,
            time_ms,
            programs: None,
        }
    }
}

/// Counts by result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Passed.
    pub pass: usize,
    /// Failed unexpectedly.
    pub fail: usize,
    /// Failed as a known deviation of this host says.
    pub known_deviation: usize,
    /// Known deviations that no longer show.
    pub fixed: usize,
    /// Skipped (requirement absent).
    pub skip: usize,
}

impl Summary {
    /// Counts the rows.
    pub fn of(rows: &[Row]) -> Summary {
        let mut s = Summary::default();
        for r in rows {
            match r.result.as_str() {
                "pass" => s.pass += 1,
                "fail" => s.fail += 1,
                "known deviation" => s.known_deviation += 1,
                "fixed" => s.fixed += 1,
                _ => s.skip += 1,
            }
        }
        s
    }

    /// Counts the rows of each area.
    pub fn by_area(rows: &[Row]) -> BTreeMap<String, Summary> {
        let mut by: BTreeMap<String, Vec<Row>> = BTreeMap::new();
        for r in rows {
            by.entry(r.area.clone()).or_default().push(r.clone());
        }
        by.into_iter()
            .map(|(a, rs)| (a, Summary::of(&rs)))
            .collect()
    }
}

/// The whole report (the `--json` schema).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Always "kvmconf-run/1".
    pub schema: &'static str,
    /// kvmconf's version.
    pub kvmconf_version: &'static str,
    /// Where it ran.
    pub host: Fingerprint,
    /// Wall time of the whole run in seconds.
    pub duration_s: f64,
    /// Counts.
    pub summary: Summary,
    /// Counts by area.
    pub areas: BTreeMap<String, Summary>,
    /// One row per check, corpus case or differential sample, in run order.
    pub results: Vec<Row>,
}

impl Report {
    /// Generated programs run by the differential samples.
    pub fn programs(&self) -> u64 {
        self.results.iter().filter_map(|r| r.programs).sum()
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// The human table and summary.
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    let widest =
        |len: fn(&Row) -> usize, none: usize| r.results.iter().map(len).max().unwrap_or(none);
    let w = widest(|x| x.id.len(), 10).min(78);
    let aw = widest(|x| x.area.len(), 4).max(4);
    let _ = writeln!(
        out,
        "{:<aw$} {:<w$} {:<16} {:>9}",
        "area", "case", "result", "time"
    );
    for x in &r.results {
        let _ = writeln!(
            out,
            "{:<aw$} {:<w$} {:<16} {:>7.1}ms",
            x.area, x.id, x.result, x.time_ms
        );
        if x.result != "pass" {
            if let Some(d) = &x.deviation {
                let _ = writeln!(out, "{:<aw$}   deviation: {d}", "");
            }
            if let Some(m) = &x.message {
                let _ = writeln!(out, "{:<aw$}   {}", "", first_line(m));
            }
        }
    }
    let s = &r.summary;
    let _ = writeln!(out);
    for (area, a) in &r.areas {
        let n = a.pass + a.fail + a.known_deviation + a.fixed + a.skip;
        let _ = writeln!(
            out,
            "{area:<12} {n:>4}: {} passed, {} failed, {} known deviations, {} fixed, {} skipped",
            a.pass, a.fail, a.known_deviation, a.fixed, a.skip
        );
    }
    let programs = r.programs();
    let _ = writeln!(
        out,
        "{} cases in {:.1} s: {} passed, {} failed, {} known deviations, {} fixed, {} skipped{}",
        r.results.len(),
        r.duration_s,
        s.pass,
        s.fail,
        s.known_deviation,
        s.fixed,
        s.skip,
        if programs > 0 {
            format!(" ({programs} generated programs in the differential samples)")
        } else {
            String::new()
        }
    );
    out
}

/// KTAP / TAP version 13: known deviations are `not ok … # TODO`, skips `ok … # SKIP`.
pub fn tap(r: &Report) -> String {
    let mut out = String::from("TAP version 13\n");
    for l in r.host.describe() {
        let _ = writeln!(out, "# {l}");
    }
    let _ = writeln!(out, "1..{}", r.results.len());
    for (i, x) in r.results.iter().enumerate() {
        let n = i + 1;
        let msg = x.message.as_deref().map(first_line).unwrap_or("");
        match x.result.as_str() {
            "pass" => {
                let _ = writeln!(out, "ok {n} {}", x.id);
            }
            "skip" => {
                let _ = writeln!(out, "ok {n} {} # SKIP {msg}", x.id);
            }
            "known deviation" => {
                let _ = writeln!(
                    out,
                    "not ok {n} {} # TODO known deviation {}",
                    x.id,
                    x.deviation.as_deref().unwrap_or("")
                );
                let _ = writeln!(out, "# {msg}");
            }
            "fixed" => {
                let _ = writeln!(out, "ok {n} {} # TODO fixed: {msg}", x.id);
            }
            _ => {
                let _ = writeln!(out, "not ok {n} {}", x.id);
                for l in x.message.as_deref().unwrap_or("").lines() {
                    let _ = writeln!(out, "# {l}");
                }
            }
        }
    }
    let s = &r.summary;
    let _ = writeln!(
        out,
        "# totals: pass:{} fail:{} xfail:{} fixed:{} skip:{}",
        s.pass, s.fail, s.known_deviation, s.fixed, s.skip
    );
    out
}

fn xml_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".into(),
            '<' => "&lt;".into(),
            '>' => "&gt;".into(),
            '"' => "&quot;".into(),
            '\'' => "&apos;".into(),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => " ".into(),
            c => c.to_string(),
        })
        .collect()
}

/// JUnit XML: failures as `<failure>`, skips and known deviations as `<skipped>`.
pub fn junit(r: &Report) -> String {
    let s = &r.summary;
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    // The one suite holds every case: it and the whole report carry the same counts.
    let counts = format!(
        "tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{:.3}\"",
        r.results.len(),
        s.fail,
        s.skip + s.known_deviation,
        r.duration_s
    );
    let _ = writeln!(out, "<testsuites name=\"kvmconf\" {counts}>");
    let _ = writeln!(out, "  <testsuite name=\"kvmconf run\" {counts}>");
    let _ = writeln!(out, "    <properties>");
    for l in r.host.describe() {
        let (k, v) = l.split_once(' ').unwrap_or((&l, ""));
        let _ = writeln!(
            out,
            "      <property name=\"{}\" value=\"{}\"/>",
            xml_escape(k),
            xml_escape(v.trim())
        );
    }
    let _ = writeln!(out, "    </properties>");
    for x in &r.results {
        let _ = write!(
            out,
            "    <testcase classname=\"kvmconf.{}\" name=\"{}\" time=\"{:.4}\"",
            xml_escape(&x.area),
            xml_escape(&x.id),
            x.time_ms / 1000.0
        );
        let msg = xml_escape(x.message.as_deref().unwrap_or(""));
        match x.result.as_str() {
            "pass" => {
                let _ = writeln!(out, "/>");
            }
            "fail" => {
                let _ = writeln!(
                    out,
                    ">\n      <failure message=\"{}\">{msg}</failure>\n    </testcase>",
                    xml_escape(first_line(x.message.as_deref().unwrap_or("")))
                );
            }
            other => {
                let _ = writeln!(
                    out,
                    ">\n      <skipped message=\"{}: {}\"/>\n    </testcase>",
                    other,
                    xml_escape(first_line(x.message.as_deref().unwrap_or("")))
                );
            }
        }
    }
    let _ = writeln!(out, "  </testsuite>\n</testsuites>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let rows = vec![
            Row::new("system.a", "system", "api.rst 4.1", &Verdict::Pass, 1.0),
            Row::new(
                "vm.b",
                "vm",
                "api.rst 4.35",
                &Verdict::Fail("wanted <1>, got 2".into()),
                2.0,
            ),
            Row::new(
                "run.c",
                "run",
                "api.rst 5",
                &Verdict::KnownDeviation {
                    id: "d1".into(),
                    message: "exit kind".into(),
                },
                3.0,
            ),
            Row::new(
                "run.d",
                "run",
                "api.rst 5",
                &Verdict::Skip("no cap".into()),
                0.1,
            ),
        ];
        Report {
            schema: "kvmconf-run/1",
            kvmconf_version: "0",
            host: Fingerprint::default(),
            duration_s: 0.5,
            summary: Summary::of(&rows),
            areas: Summary::by_area(&rows),
            results: rows,
        }
    }

    #[test]
    fn summary_counts_each_result() {
        let s = report().summary;
        assert_eq!(
            (s.pass, s.fail, s.known_deviation, s.fixed, s.skip),
            (1, 1, 1, 0, 1)
        );
    }

    #[test]
    fn tap_marks_failures_todos_and_skips() {
        let t = tap(&report());
        assert!(t.starts_with("TAP version 13\n"));
        assert!(t.contains("\n1..4\n"));
        assert!(t.contains("ok 1 system.a\n"));
        assert!(t.contains("not ok 2 vm.b\n# wanted <1>, got 2\n"));
        assert!(t.contains("not ok 3 run.c # TODO known deviation d1\n"));
        assert!(t.contains("ok 4 run.d # SKIP no cap\n"));
    }

    #[test]
    fn junit_escapes_and_counts() {
        let j = junit(&report());
        assert!(j.contains("tests=\"4\" failures=\"1\" skipped=\"2\""));
        assert!(j.contains("<failure message=\"wanted &lt;1&gt;, got 2\">"));
        assert!(j.contains("<skipped message=\"known deviation: exit kind\"/>"));
        assert!(!j.contains("<1>"));
    }

    #[test]
    fn table_counts_each_area_and_the_generated_programs() {
        let mut r = report();
        let mut d = Row::new(
            "differential.real16",
            "differential",
            "SDM 1",
            &Verdict::Pass,
            9.0,
        );
        d.programs = Some(300);
        r.results.push(d);
        r.summary = Summary::of(&r.results);
        r.areas = Summary::by_area(&r.results);
        let t = table(&r);
        assert!(t.contains("differential    1: 1 passed, 0 failed"), "{t}");
        assert!(
            t.contains(
                "run             2: 0 passed, 0 failed, 1 known deviations, 0 fixed, 1 skipped"
            ),
            "{t}"
        );
        assert!(
            t.contains("5 cases in 0.5 s: 2 passed, 1 failed, 1 known deviations, 0 fixed, 1 skipped (300 generated programs in the differential samples)"),
            "{t}"
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["areas"]["run"]["skip"], 1);
        assert_eq!(v["results"][4]["programs"], 300);
        assert!(v["results"][0].get("programs").is_none());
    }

    #[test]
    fn json_uses_documented_fields() {
        let v = serde_json::to_value(report()).unwrap();
        assert_eq!(v["schema"], "kvmconf-run/1");
        assert_eq!(v["summary"]["known_deviation"], 1);
        assert_eq!(v["results"][2]["deviation"], "d1");
        assert_eq!(v["results"][0]["result"], "pass");
        assert!(v["results"][0].get("message").is_none());
    }
}

//! `kvmconf record` and `kvmconf compare`: store every result of a fixed set (the catalogue's
//! verdicts, the corpus, and generated programs from a fixed seed) with the host fingerprint, and
//! later rerun the same set and report what changed — for kernel and VMM upgrades.

use crate::common::{self, EXIT_BAD_INPUT, EXIT_FAIL, EXIT_OK};
use crate::report::Row;
use kvmconf_cases::deviations::{self, Verdict};
use kvmconf_cases::registry::glob;
use kvmconf_cases::runner::run_one;
use kvmconf_guests::case::{Case, Mode};
use kvmconf_guests::r#gen::case_from_seed;
use kvmconf_guests::result::CaseResult;
use kvmconf_harness::fingerprint::{self, Fingerprint};
use kvmconf_harness::{Host, Pool};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// The baseline file's schema name.
pub const SCHEMA: &str = "kvmconf-baseline/1";
/// The default seed of the generated programs.
pub const DEFAULT_SEED: u64 = 0x6b76_6d63_6f6e_6600;
/// The default number of generated programs.
pub const DEFAULT_PROGRAMS: u64 = 20_000;
/// Per-check wall-clock limit for catalogue checks.
const CHECK_LIMIT: Duration = Duration::from_secs(60);

/// What a result that legitimately varies between runs leaves out of the comparison.
pub const EXCLUDED: &[&str] = &[
    "duration_s (wall time of the run)",
    "catalogue time_ms (not recorded)",
    "catalogue message (failure texts carry measured values such as TSC readings; the verdict and \
     the deviation id are compared)",
    "host and kvmconf_version (compared separately: a warning, not a difference)",
    "corpus fields marked `# redact:` in the case file (CPUID values, the TSC)",
    "regs, segs, cr, trace, memory and steps of a case that ended in timeout (where the deadline \
     stopped the guest)",
];

/// Arguments of `kvmconf record`.
#[derive(clap::Args)]
pub struct RecordArgs {
    /// Where to write the baseline (JSON).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Generated programs, spread over real16, prot32 and long64.
    #[arg(long, default_value_t = DEFAULT_PROGRAMS, value_name = "N")]
    programs: u64,
    /// Seed of the generated programs.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Only catalogue checks whose id matches this glob.
    #[arg(long, default_value = "*", value_name = "GLOB")]
    checks: String,
    /// Leave the catalogue out.
    #[arg(long)]
    no_catalogue: bool,
    /// The corpus directory (default: this source tree's cases/corpus).
    #[arg(long, value_name = "DIR")]
    corpus: Option<PathBuf>,
}

/// Arguments of `kvmconf compare`.
#[derive(clap::Args)]
pub struct CompareArgs {
    /// A baseline written by `kvmconf record`.
    baseline: PathBuf,
    /// Print the comparison as JSON.
    #[arg(long)]
    json: bool,
    /// The corpus directory (default: this source tree's cases/corpus).
    #[arg(long, value_name = "DIR")]
    corpus: Option<PathBuf>,
    /// Show a field-level diff for this many changed results.
    #[arg(long, default_value_t = 5, value_name = "N")]
    diffs: usize,
}

/// What was run: enough to rerun the same set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetSpec {
    /// Seed of the generated programs.
    pub seed: u64,
    /// Number of generated programs.
    pub programs: u64,
    /// Glob of catalogue check ids, or None for no catalogue.
    pub checks: Option<String>,
    /// Whether the corpus was included.
    pub corpus: bool,
}

/// One stored result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// `catalogue:<check id>`, `corpus:<relative path>`, or `program:<case name>`.
    pub id: String,
    /// The result: a catalogue verdict or a case result (memory as changes from the image).
    pub result: Value,
}

/// A baseline file.
#[derive(Debug, Serialize, Deserialize)]
pub struct Baseline {
    /// [`SCHEMA`].
    pub schema: String,
    /// The kvmconf version that recorded it.
    pub kvmconf_version: String,
    /// Where it was recorded.
    pub host: Fingerprint,
    /// What was run.
    pub set: SetSpec,
    /// Fields that legitimately vary and are not compared.
    pub excluded: Vec<String>,
    /// Wall time of the run.
    pub duration_s: f64,
    /// Every result, in run order.
    pub entries: Vec<Entry>,
}

/// A catalogue verdict as stored.
fn verdict_value(id: &str, verdict: &Verdict) -> Value {
    let row = Row::new(id, "", "", verdict, 0.0);
    let mut v = json!({ "verdict": row.result });
    if let Some(m) = row.message {
        v["message"] = json!(m);
    }
    if let Some(d) = row.deviation {
        v["deviation"] = json!(d);
    }
    v
}

/// The bytes a dump range held before the guest ran: zero outside the case's memory images.
fn initial(case: &Case, addr: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    for m in &case.memory {
        let (a, bytes) = (m.addr.0, &m.hex.0);
        for (i, b) in bytes.iter().enumerate() {
            let at = a + i as u64;
            if at >= addr && at < addr + len as u64 {
                out[(at - addr) as usize] = *b;
            }
        }
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A case result as stored: without the name (the id carries it), memory dumps as the runs of
/// bytes that differ from the case's image, redacted fields replaced, and only the exit of a
/// timeout kept.
pub fn case_value(case: &Case, r: &CaseResult, redact: &[String]) -> Value {
    let mut v = serde_json::to_value(r).expect("results serialize");
    let obj = v.as_object_mut().expect("a result is an object");
    obj.remove("name");
    let mem: Vec<Value> = r
        .memory
        .iter()
        .map(|d| {
            let before = initial(case, d.addr.0, d.hex.0.len());
            let after = &d.hex.0;
            let mut runs = Vec::new();
            let mut i = 0;
            while i < after.len() {
                if after[i] == before[i] {
                    i += 1;
                    continue;
                }
                // A run ends after 8 equal bytes in a row.
                let start = i;
                let mut end = i + 1;
                let mut j = end;
                while j < after.len() && j < end + 8 {
                    if after[j] != before[j] {
                        end = j + 1;
                    }
                    j += 1;
                }
                runs.push(json!({
                    "at": format!("{:#x}", d.addr.0 + start as u64),
                    "hex": hex(&after[start..end]),
                }));
                i = end;
            }
            json!({ "addr": format!("{:#x}", d.addr.0), "len": after.len(), "changed": runs })
        })
        .collect();
    obj.insert("memory".into(), Value::Array(mem));
    if r.exit.kind() == "timeout" {
        obj.retain(|k, _| k == "exit");
    }
    kvmconf_cases::snapshot::redact(&mut v, redact);
    v
}

/// Whether a stored result counts as a failure: a catalogue check that failed (or whose known
/// deviation is fixed), or a case KVM refused or could not run.
pub fn failing(id: &str, v: &Value) -> bool {
    if id.starts_with("catalogue:") {
        return matches!(v["verdict"].as_str(), Some("fail" | "fixed"));
    }
    v.get("harness_error").is_some()
        || matches!(
            v["exit"]["kind"].as_str(),
            Some("internal_error" | "rejected" | "fail_entry" | "unsupported")
        )
}

fn corpus_dir(arg: &Option<PathBuf>) -> PathBuf {
    arg.clone().unwrap_or_else(kvmconf_cases::corpus::dir)
}

/// Loads the corpus files (relative path, redactions, case).
fn load_corpus(dir: &Path) -> Result<Vec<(String, Vec<String>, Case)>, String> {
    let mut out = Vec::new();
    for f in kvmconf_cases::corpus::load_all(dir)? {
        let redact = kvmconf_cases::corpus::redactions(&f.text);
        for case in f.cases {
            out.push((f.rel.display().to_string(), redact.clone(), case));
        }
    }
    Ok(out)
}

/// Runs the set; prints progress on stderr.
fn run_set(
    host: &Arc<Host>,
    fp: &Fingerprint,
    set: &SetSpec,
    corpus: &Path,
) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    if let Some(g) = &set.checks {
        let devs = Arc::new(deviations::known());
        let fp = Arc::new(fp.clone());
        let checks: Vec<_> = kvmconf_cases::catalogue::all()
            .into_iter()
            .filter(|c| glob(g, c.id))
            .collect();
        eprintln!("kvmconf: {} catalogue checks", checks.len());
        for check in checks {
            let (tx, rx) = mpsc::channel();
            let (h, d, f) = (Arc::clone(host), Arc::clone(&devs), Arc::clone(&fp));
            let spawned = std::thread::Builder::new()
                .name(check.id.into())
                .spawn(move || {
                    let _ = tx.send(run_one(check, &h, &d, &f));
                });
            let verdict = match spawned {
                Err(e) => Verdict::Fail(format!("cannot start a thread: {e}")),
                Ok(_) => match rx.recv_timeout(CHECK_LIMIT) {
                    Ok(j) => j.verdict,
                    Err(_) => Verdict::Fail(format!(
                        "hung: no result within {} s",
                        CHECK_LIMIT.as_secs()
                    )),
                },
            };
            entries.push(Entry {
                id: format!("catalogue:{}", check.id),
                result: verdict_value(check.id, &verdict),
            });
        }
    }
    let mut pool = Pool::new(host, 4);
    let mut run = |case: &Case, redact: &[String]| match pool.run(case) {
        Ok(r) => case_value(case, &r, redact),
        Err(e) => json!({ "harness_error": e.to_string() }),
    };
    if set.corpus {
        let cases = load_corpus(corpus)?;
        eprintln!("kvmconf: {} corpus cases", cases.len());
        for (rel, redact, case) in cases {
            let v = run(&case, &redact);
            entries.push(Entry {
                id: format!("corpus:{rel}#{}", case.name),
                result: v,
            });
        }
    }
    eprintln!("kvmconf: {} generated programs", set.programs);
    const MODES: [Mode; 3] = [Mode::Real16, Mode::Prot32, Mode::Long64];
    for i in 0..set.programs {
        let case = case_from_seed(MODES[(i % 3) as usize], set.seed, i / 3);
        let v = run(&case, &[]);
        entries.push(Entry {
            id: format!("program:{}", case.name),
            result: v,
        });
    }
    Ok(entries)
}

fn open(cmd: &str) -> Result<(Arc<Host>, Fingerprint), u8> {
    let host = common::open_host(cmd)?;
    let fp = fingerprint::read(Some(&host));
    Ok((Arc::new(host), fp))
}

/// Runs `kvmconf record`.
pub fn record(a: RecordArgs) -> u8 {
    let dir = corpus_dir(&a.corpus);
    let with_corpus = dir.is_dir();
    if !with_corpus {
        if a.corpus.is_some() {
            eprintln!("kvmconf record: {}: not a directory", dir.display());
            return EXIT_BAD_INPUT;
        }
        eprintln!(
            "kvmconf record: no corpus at {}: recording without it",
            dir.display()
        );
    }
    let (host, fp) = match open("record") {
        Ok(x) => x,
        Err(code) => return code,
    };
    let set = SetSpec {
        seed: a.seed,
        programs: a.programs,
        checks: (!a.no_catalogue).then_some(a.checks),
        corpus: with_corpus,
    };
    let start = Instant::now();
    let entries = match run_set(&host, &fp, &set, &dir) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("kvmconf record: {e}");
            return EXIT_BAD_INPUT;
        }
    };
    let b = Baseline {
        schema: SCHEMA.into(),
        kvmconf_version: env!("CARGO_PKG_VERSION").into(),
        host: fp,
        set,
        excluded: EXCLUDED.iter().map(|s| (*s).to_string()).collect(),
        duration_s: start.elapsed().as_secs_f64(),
        entries,
    };
    let text = serde_json::to_string(&b).expect("baselines serialize");
    if let Err(code) = common::write_output("record", &a.out, &text) {
        return code;
    }
    eprintln!(
        "kvmconf record: {} results in {:.1} s, {} bytes written to {}",
        b.entries.len(),
        b.duration_s,
        text.len(),
        a.out.display()
    );
    EXIT_OK
}

/// Reads and checks a baseline; the error names the file and what is wrong.
pub fn load(path: &Path) -> Result<Baseline, String> {
    let f = path.display();
    let text = common::read_input(path)?;
    let v: Value = serde_json::from_str(&text).map_err(|e| {
        let what = if e.is_eof() {
            "truncated (the JSON ends early)"
        } else {
            "not valid JSON"
        };
        common::json_error(path, what, &e)
    })?;
    match v.get("schema").and_then(Value::as_str) {
        Some(SCHEMA) => {}
        Some(other) => {
            return Err(format!(
                "{f}: field `schema`: expected {SCHEMA:?}, got {other:?}"
            ));
        }
        None => return Err(format!("{f}: not a kvmconf baseline (no `schema` field)")),
    }
    let b: Baseline =
        serde_json::from_value(v).map_err(|e| format!("{f}: not a kvmconf baseline: {e}"))?;
    let mut seen = std::collections::BTreeSet::new();
    for (i, e) in b.entries.iter().enumerate() {
        if !seen.insert(&e.id) {
            return Err(format!(
                "{f}: field `entries[{i}].id`: duplicate id {:?}",
                e.id
            ));
        }
    }
    Ok(b)
}

/// One field that differs.
#[derive(Clone, Debug, Serialize)]
pub struct Field {
    /// Dotted path.
    pub path: String,
    /// In the baseline.
    pub baseline: String,
    /// Now.
    pub now: String,
}

/// Lists the fields in which two stored results differ.
pub fn field_diff(old: &Value, new: &Value) -> Vec<Field> {
    kvmconf_cases::snapshot::field_diffs(old, new)
        .into_iter()
        .map(|(path, baseline, now)| Field {
            path,
            baseline,
            now,
        })
        .collect()
}

/// One reported difference.
#[derive(Clone, Debug, Serialize)]
pub struct Change {
    /// The entry id.
    pub id: String,
    /// A one-line summary: old → new.
    pub summary: String,
    /// Field-level diff (only for the first few changed results).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<Field>>,
}

/// The outcome of a comparison.
#[derive(Debug, Serialize)]
pub struct Comparison {
    /// "kvmconf-compare/1".
    pub schema: &'static str,
    /// The baseline file.
    pub baseline: String,
    /// Warnings: other kvmconf version, fingerprint differences.
    pub warnings: Vec<String>,
    /// Fields not compared, and why.
    pub excluded: Vec<String>,
    /// Results that passed (or ran) in the baseline and fail now.
    pub new_failures: Vec<Change>,
    /// Results that failed in the baseline and pass now.
    pub fixed: Vec<Change>,
    /// Results that differ otherwise (including entries only on one side).
    pub changed: Vec<Change>,
    /// Results that are the same.
    pub unchanged: usize,
}

impl Comparison {
    /// Whether anything regressed: a new failure or a changed result.
    pub fn regressed(&self) -> bool {
        !self.new_failures.is_empty() || !self.changed.is_empty()
    }
}

fn summary_of(id: &str, v: Option<&Value>) -> String {
    let Some(v) = v else {
        return "(absent)".into();
    };
    if id.starts_with("catalogue:") {
        let verdict = v["verdict"].as_str().unwrap_or("?");
        return match v["message"].as_str() {
            Some(m) => format!("{verdict} ({})", m.chars().take(80).collect::<String>()),
            None => verdict.into(),
        };
    }
    if let Some(e) = v.get("harness_error") {
        return format!("harness error {e}");
    }
    let exit = &v["exit"];
    let mut s = exit["kind"].as_str().unwrap_or("?").to_string();
    if let Some(vec) = exit.get("vector") {
        s += &format!(" vector {vec}");
    }
    s
}

/// Names what differs between two fingerprints.
pub fn fingerprint_diff(old: &Fingerprint, new: &Fingerprint) -> Vec<String> {
    let mut out = Vec::new();
    let mut cmp = |what: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{what}: baseline {a}, now {b}"));
        }
    };
    cmp("kernel", old.kernel.clone(), new.kernel.clone());
    cmp("cpu vendor", old.cpu_vendor.clone(), new.cpu_vendor.clone());
    cmp("cpu model", old.cpu_model.clone(), new.cpu_model.clone());
    cmp(
        "cpu signature",
        old.cpu_signature.clone(),
        new.cpu_signature.clone(),
    );
    let mods: std::collections::BTreeSet<&String> =
        old.modules.keys().chain(new.modules.keys()).collect();
    for m in mods {
        match (old.modules.get(m), new.modules.get(m)) {
            (Some(a), Some(b)) => {
                let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for k in keys {
                    let (x, y) = (a.get(k), b.get(k));
                    if x != y {
                        out.push(format!(
                            "module {m} parameter {k}: baseline {}, now {}",
                            x.map_or("(absent)", |s| s.as_str()),
                            y.map_or("(absent)", |s| s.as_str())
                        ));
                    }
                }
            }
            (a, _) => out.push(format!(
                "module {m}: {}",
                if a.is_some() {
                    "loaded in the baseline, not now"
                } else {
                    "loaded now, not in the baseline"
                }
            )),
        }
    }
    let caps: std::collections::BTreeSet<&String> = old
        .capabilities
        .keys()
        .chain(new.capabilities.keys())
        .collect();
    for c in caps {
        let (x, y) = (old.capabilities.get(c), new.capabilities.get(c));
        if x != y {
            out.push(format!(
                "capability {c}: baseline {}, now {}",
                x.map_or("absent".into(), |v| v.to_string()),
                y.map_or("absent".into(), |v| v.to_string())
            ));
        }
    }
    out
}

/// The part of a stored result that is compared: a catalogue verdict without its message.
fn comparable(id: &str, v: &Value) -> Value {
    let mut v = v.clone();
    if id.starts_with("catalogue:")
        && let Some(o) = v.as_object_mut()
    {
        o.remove("message");
    }
    v
}

/// Compares stored results with fresh ones.
pub fn compare_entries(
    old: &[Entry],
    new: &[Entry],
    diffs: usize,
) -> (Vec<Change>, Vec<Change>, Vec<Change>, usize) {
    let newmap: BTreeMap<&str, &Value> = new.iter().map(|e| (e.id.as_str(), &e.result)).collect();
    let oldmap: BTreeMap<&str, &Value> = old.iter().map(|e| (e.id.as_str(), &e.result)).collect();
    let mut ids: Vec<&str> = old.iter().map(|e| e.id.as_str()).collect();
    ids.extend(
        new.iter()
            .map(|e| e.id.as_str())
            .filter(|id| !oldmap.contains_key(id)),
    );
    let (mut nf, mut fx, mut ch, mut same) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for id in ids {
        let (a, b) = (oldmap.get(id).copied(), newmap.get(id).copied());
        if a.map(|v| comparable(id, v)) == b.map(|v| comparable(id, v)) {
            same += 1;
            continue;
        }
        let summary = format!("{} -> {}", summary_of(id, a), summary_of(id, b));
        let fails = |v: Option<&Value>| v.is_some_and(|v| failing(id, v));
        let mut c = Change {
            id: id.into(),
            summary,
            fields: None,
        };
        if a.is_some() && b.is_some() && !fails(a) && fails(b) {
            nf.push(c);
        } else if a.is_some() && b.is_some() && fails(a) && !fails(b) {
            fx.push(c);
        } else {
            if ch.len() < diffs {
                c.fields = Some(field_diff(
                    &a.map_or(Value::Null, |v| comparable(id, v)),
                    &b.map_or(Value::Null, |v| comparable(id, v)),
                ));
            }
            ch.push(c);
        }
    }
    (nf, fx, ch, same)
}

fn print_text(c: &Comparison) {
    for w in &c.warnings {
        println!("warning: {w}");
    }
    if !c.warnings.is_empty() {
        println!();
    }
    let group = |title: &str, v: &[Change]| {
        println!("{title}: {}", v.len());
        for x in v {
            println!("  {}  {}", x.id, x.summary);
            for f in x.fields.iter().flatten().take(12) {
                println!("      {}: {} -> {}", f.path, f.baseline, f.now);
            }
            if let Some(f) = &x.fields
                && f.len() > 12
            {
                println!("      … {} more fields", f.len() - 12);
            }
        }
    };
    group("new failures", &c.new_failures);
    group("fixed", &c.fixed);
    group("changed results", &c.changed);
    println!("unchanged: {}", c.unchanged);
    println!("not compared:");
    for e in &c.excluded {
        println!("  {e}");
    }
    println!(
        "{}",
        if c.regressed() {
            "REGRESSED: results differ from the baseline"
        } else {
            "OK: no regression against the baseline"
        }
    );
}

/// Runs `kvmconf compare`.
pub fn compare(a: CompareArgs) -> u8 {
    let base = match load(&a.baseline) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("kvmconf compare: {e}");
            return EXIT_BAD_INPUT;
        }
    };
    let (host, fp) = match open("compare") {
        Ok(x) => x,
        Err(code) => return code,
    };
    let mut warnings = Vec::new();
    if base.kvmconf_version != env!("CARGO_PKG_VERSION") {
        warnings.push(format!(
            "baseline recorded by kvmconf {}, this is {}",
            base.kvmconf_version,
            env!("CARGO_PKG_VERSION")
        ));
    }
    let fpd = fingerprint_diff(&base.host, &fp);
    if !fpd.is_empty() {
        warnings.push(format!(
            "baseline recorded on another host or configuration: {}",
            fpd.join("; ")
        ));
    }
    let dir = corpus_dir(&a.corpus);
    if base.set.corpus && !dir.is_dir() {
        eprintln!(
            "kvmconf compare: the baseline includes the corpus but {} is not a directory (--corpus DIR)",
            dir.display()
        );
        return EXIT_BAD_INPUT;
    }
    let now = match run_set(&host, &fp, &base.set, &dir) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("kvmconf compare: {e}");
            return EXIT_BAD_INPUT;
        }
    };
    let (new_failures, fixed, changed, unchanged) = compare_entries(&base.entries, &now, a.diffs);
    let c = Comparison {
        schema: "kvmconf-compare/1",
        baseline: a.baseline.display().to_string(),
        warnings,
        excluded: EXCLUDED.iter().map(|s| (*s).to_string()).collect(),
        new_failures,
        fixed,
        changed,
        unchanged,
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&c).expect("comparisons serialize")
        );
    } else {
        print_text(&c);
    }
    if c.regressed() { EXIT_FAIL } else { EXIT_OK }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: &str, v: Value) -> Entry {
        Entry {
            id: id.into(),
            result: v,
        }
    }

    #[test]
    fn compare_groups_failures_fixes_and_changes() {
        let old = vec![
            e("catalogue:a", json!({"verdict": "pass"})),
            e("catalogue:b", json!({"verdict": "fail", "message": "x"})),
            e(
                "program:c",
                json!({"exit": {"kind": "hlt"}, "regs": {"rax": "0x1"}}),
            ),
            e("program:d", json!({"exit": {"kind": "hlt"}})),
            e("program:e", json!({"exit": {"kind": "hlt"}})),
        ];
        let new = vec![
            e("catalogue:a", json!({"verdict": "fail", "message": "y"})),
            e("catalogue:b", json!({"verdict": "pass"})),
            e(
                "program:c",
                json!({"exit": {"kind": "hlt"}, "regs": {"rax": "0x2"}}),
            ),
            e("program:d", json!({"exit": {"kind": "hlt"}})),
            e("program:f", json!({"exit": {"kind": "hlt"}})),
        ];
        let (nf, fx, ch, same) = compare_entries(&old, &new, 5);
        assert_eq!(nf.len(), 1);
        assert_eq!(nf[0].id, "catalogue:a");
        assert_eq!(fx[0].id, "catalogue:b");
        let ids: Vec<&str> = ch.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["program:c", "program:e", "program:f"]);
        let f = ch[0].fields.as_ref().unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].path, "regs.rax");
        assert_eq!((f[0].baseline.as_str(), f[0].now.as_str()), ("0x1", "0x2"));
        assert_eq!(same, 1);
    }

    #[test]
    fn memory_is_stored_as_changes_from_the_image() {
        let mut case = Case::new("m", Mode::Long64, 0x1000, vec![0xf4]);
        case.memory.push(kvmconf_guests::case::MemInit {
            addr: kvmconf_guests::num::Hex(0x2000),
            hex: kvmconf_guests::num::HexBytes(vec![1, 2, 3, 4]),
        });
        let mut r =
            CaseResult::from_state("m", kvmconf_guests::result::Exit::Hlt, &Default::default());
        let mut after = vec![0u8; 64];
        after[..4].copy_from_slice(&[1, 2, 9, 4]);
        after[40] = 7;
        r.memory.push(kvmconf_guests::result::MemDump {
            addr: kvmconf_guests::num::Hex(0x2000),
            hex: kvmconf_guests::num::HexBytes(after),
        });
        let v = case_value(&case, &r, &["regs.rax".to_string()]);
        assert_eq!(
            v["memory"][0]["changed"],
            json!([{"at": "0x2002", "hex": "09"}, {"at": "0x2028", "hex": "07"}])
        );
        assert_eq!(v["regs"]["rax"], "[host-dependent]");
        assert!(v.get("name").is_none());
    }

    #[test]
    fn fingerprint_differences_are_named() {
        let a = Fingerprint {
            kernel: "6.1".into(),
            ..Default::default()
        };
        let mut b = a.clone();
        b.kernel = "6.2".into();
        b.capabilities.insert("SYNC_REGS".into(), 7);
        let d = fingerprint_diff(&a, &b);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].contains("kernel: baseline 6.1, now 6.2"));
        assert!(d[1].contains("capability SYNC_REGS"));
    }
}

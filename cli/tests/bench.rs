//! `kvmconf bench --json`: every figure is a measured, finite rate, and the differential, pooled
//! reset and fuzz ratios are the medians of the per-round ratios they list.

#[macro_use]
mod common;

use common::{run_kvmconf, text};

#[test]
fn bench_json_reports_rates_and_the_median_of_round_ratios() {
    need_kvm!();
    let o = run_kvmconf(
        &["bench", "--json", "--rounds", "3", "--cases", "200"],
        None,
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "stderr: {}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON figures");
    assert_eq!(v["rounds"], 3);
    for key in [
        "harness_fresh_cases_per_s",
        "harness_pooled_cases_per_s",
        "raw_fresh_cases_per_s",
        "raw_reuse_cases_per_s",
        "generated_pooled_cases_per_s",
        "differential_cases_per_s",
        "differential_interleaved_cases_per_s",
        "fuzz_guest_vs_interp_cases_per_s",
        "fuzz_pooled_cases_per_s",
    ] {
        let r = v[key].as_f64().unwrap_or(f64::NAN);
        assert!(r.is_finite() && r > 0.0, "{key} = {}", v[key]);
    }
    let mut each: Vec<f64> = v["differential_over_pooled_rounds"]
        .as_array()
        .expect("per-round ratios")
        .iter()
        .map(|r| r.as_f64().expect("a number"))
        .collect();
    assert_eq!(each.len(), 3, "one ratio a round");
    // The differential loop does strictly more than the KVM-only loop on the same programs.
    assert!(each.iter().all(|r| *r > 0.0 && *r < 1.0), "{each:?}");
    each.sort_by(f64::total_cmp);
    assert_eq!(v["differential_over_pooled"].as_f64(), Some(each[1]));
    // The pooled-reset and fuzz ratios: finite, positive, the median of the rounds they list.
    for key in [
        "pooled_reset_over_raw_regs_sregs",
        "fuzz_guest_vs_interp_over_pooled",
    ] {
        let mut each: Vec<f64> = v[format!("{key}_rounds")]
            .as_array()
            .unwrap_or_else(|| panic!("{key}_rounds: per-round ratios"))
            .iter()
            .map(|r| r.as_f64().expect("a number"))
            .collect();
        assert_eq!(each.len(), 3, "{key}: one ratio a round");
        assert!(
            each.iter().all(|r| r.is_finite() && *r > 0.0),
            "{key}: {each:?}"
        );
        each.sort_by(f64::total_cmp);
        assert_eq!(v[key].as_f64(), Some(each[1]), "{key} is the median");
    }
}

//! The host fingerprint: kernel release, loaded KVM modules and their parameters, CPU identity and
//! KVM capabilities, read from /proc and /sys so reports and baselines say where they came from.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// KVM modules kvmconf knows to look for under /sys/module.
pub const KVM_MODULES: &[&str] = &["kvm", "kvm_intel", "kvm_amd", "kvm_pvm"];

/// Where a report or baseline was produced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// `uname -r`.
    pub kernel: String,
    /// Loaded KVM modules, each with its parameters.
    pub modules: BTreeMap<String, BTreeMap<String, String>>,
    /// CPU vendor id.
    pub cpu_vendor: String,
    /// CPU model name.
    pub cpu_model: String,
    /// CPU family/model/stepping.
    pub cpu_signature: String,
    /// Capabilities KVM_CHECK_EXTENSION reports non-zero, with their values.
    pub capabilities: BTreeMap<String, i32>,
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The kernel release.
pub fn kernel_release() -> String {
    read_trim("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into())
}

/// Loaded KVM modules (those with a /sys/module entry) and their readable parameters.
pub fn kvm_modules() -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for m in KVM_MODULES {
        let dir = format!("/sys/module/{m}");
        if !std::path::Path::new(&dir).exists() {
            continue;
        }
        let mut params = BTreeMap::new();
        if let Ok(rd) = std::fs::read_dir(format!("{dir}/parameters")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(v) = read_trim(&e.path().to_string_lossy()) {
                    params.insert(name, v);
                }
            }
        }
        out.insert((*m).to_string(), params);
    }
    out
}

/// The vendor-specific KVM module in use (kvm_intel, kvm_amd, kvm_pvm), if any.
pub fn vendor_module() -> Option<String> {
    kvm_modules().into_keys().find(|m| m != "kvm")
}

fn cpuinfo() -> (String, String, String) {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |k: &str| {
        text.lines()
            .find(|l| l.split(':').next().is_some_and(|n| n.trim() == k))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    (
        field("vendor_id"),
        field("model name"),
        format!(
            "family {} model {} stepping {}",
            field("cpu family"),
            field("model"),
            field("stepping")
        ),
    )
}

/// Named capabilities included in fingerprints (KVM_CAP_* numbers).
pub fn capability_list() -> Vec<(&'static str, u32)> {
    use kvm_bindings::*;
    vec![
        ("IRQCHIP", KVM_CAP_IRQCHIP),
        ("HLT", KVM_CAP_HLT),
        ("USER_MEMORY", KVM_CAP_USER_MEMORY),
        ("SET_TSS_ADDR", KVM_CAP_SET_TSS_ADDR),
        ("EXT_CPUID", KVM_CAP_EXT_CPUID),
        ("NR_VCPUS", KVM_CAP_NR_VCPUS),
        ("NR_MEMSLOTS", KVM_CAP_NR_MEMSLOTS),
        ("PIT2", KVM_CAP_PIT2),
        ("COALESCED_MMIO", KVM_CAP_COALESCED_MMIO),
        ("SYNC_MMU", KVM_CAP_SYNC_MMU),
        ("IOEVENTFD", KVM_CAP_IOEVENTFD),
        ("IRQFD", KVM_CAP_IRQFD),
        ("SET_IDENTITY_MAP_ADDR", KVM_CAP_SET_IDENTITY_MAP_ADDR),
        ("XSAVE", KVM_CAP_XSAVE),
        ("XCRS", KVM_CAP_XCRS),
        ("DEBUGREGS", KVM_CAP_DEBUGREGS),
        ("VCPU_EVENTS", KVM_CAP_VCPU_EVENTS),
        ("SET_GUEST_DEBUG", KVM_CAP_SET_GUEST_DEBUG),
        ("MP_STATE", KVM_CAP_MP_STATE),
        ("READONLY_MEM", KVM_CAP_READONLY_MEM),
        ("IMMEDIATE_EXIT", KVM_CAP_IMMEDIATE_EXIT),
        ("MAX_VCPUS", KVM_CAP_MAX_VCPUS),
        ("MAX_VCPU_ID", KVM_CAP_MAX_VCPU_ID),
        ("TSC_CONTROL", KVM_CAP_TSC_CONTROL),
        ("X86_SMM", KVM_CAP_X86_SMM),
        ("MULTI_ADDRESS_SPACE", KVM_CAP_MULTI_ADDRESS_SPACE),
        ("GUEST_DEBUG_HW_BPS", KVM_CAP_GUEST_DEBUG_HW_BPS),
        ("COALESCED_PIO", KVM_CAP_COALESCED_PIO),
        ("USER_NMI", KVM_CAP_USER_NMI),
        ("SYNC_REGS", KVM_CAP_SYNC_REGS),
        ("SPLIT_IRQCHIP", KVM_CAP_SPLIT_IRQCHIP),
        ("X86_USER_SPACE_MSR", KVM_CAP_X86_USER_SPACE_MSR),
        ("X86_MSR_FILTER", KVM_CAP_X86_MSR_FILTER),
        ("BINARY_STATS_FD", KVM_CAP_BINARY_STATS_FD),
        (
            "MANUAL_DIRTY_LOG_PROTECT2",
            KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
        ),
        ("TSC_DEADLINE_TIMER", KVM_CAP_TSC_DEADLINE_TIMER),
    ]
}

/// Reads the fingerprint; `host` adds the capability list.
pub fn read(host: Option<&crate::Host>) -> Fingerprint {
    let (cpu_vendor, cpu_model, cpu_signature) = cpuinfo();
    let capabilities = host
        .map(|h| {
            capability_list()
                .into_iter()
                .filter_map(|(n, c)| {
                    let v = h.check_raw(c);
                    (v > 0).then(|| (n.to_string(), v))
                })
                .collect()
        })
        .unwrap_or_default();
    Fingerprint {
        kernel: kernel_release(),
        modules: kvm_modules(),
        cpu_vendor,
        cpu_model,
        cpu_signature,
        capabilities,
    }
}

impl Fingerprint {
    /// Lines for the top of a human report.
    pub fn describe(&self) -> Vec<String> {
        let mut v = vec![
            format!("kernel   {}", self.kernel),
            format!(
                "cpu      {} {} ({})",
                self.cpu_vendor, self.cpu_model, self.cpu_signature
            ),
        ];
        for (m, p) in &self.modules {
            let params: Vec<String> = p.iter().map(|(k, v)| format!("{k}={v}")).collect();
            v.push(format!("module   {m}: {}", params.join(" ")));
        }
        let caps: Vec<String> = self
            .capabilities
            .iter()
            .map(|(k, v)| {
                if *v == 1 {
                    k.clone()
                } else {
                    format!("{k}={v}")
                }
            })
            .collect();
        v.push(format!("caps     {}", caps.join(" ")));
        v
    }
}

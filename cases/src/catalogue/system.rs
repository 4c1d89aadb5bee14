//! Checks of the system area: ioctls on `/dev/kvm` — the API version, KVM_CHECK_EXTENSION and the
//! limits it reports, KVM_GET_VCPU_MMAP_SIZE, the supported and emulated CPUID, the MSR index
//! lists and the feature MSRs, unknown ioctls at every fd level, and KVM_CREATE_VM's type.

use crate::registry::{Fail, Outcome, ioctl, require_cap};
use crate::{ensure, ensure_eq};
use kvmconf_harness::Host;
use kvmconf_harness::abi::{
    KVM_CAP_CHECK_EXTENSION_VM, KVM_CAP_COALESCED_MMIO, KVM_CAP_EXT_CPUID, KVM_CAP_EXT_EMUL_CPUID,
    KVM_CAP_GET_MSR_FEATURES, KVM_CAP_IOEVENTFD, KVM_CAP_IRQCHIP, KVM_CAP_IRQFD,
    KVM_CAP_MAX_VCPU_ID, KVM_CAP_MAX_VCPUS, KVM_CAP_NR_MEMSLOTS, KVM_CAP_NR_VCPUS,
    KVM_CAP_READONLY_MEM, KVM_CAP_SET_TSS_ADDR, KVM_CAP_USER_MEMORY, KVM_CAP_VM_TYPES,
    KVM_CPUID_FLAG_SIGNIFCANT_INDEX, kvm_cpuid_entry2, kvm_msr_entry, kvm_run,
};
use kvmconf_harness::kvm::CpuidReply;
use std::collections::{BTreeMap, BTreeSet};

const PAGE: usize = 4096;

/// A capability number no kernel assigns (the numbers are small and dense).
pub const UNKNOWN_CAP: u32 = 0x00ff_f00d;

/// Capabilities the system and vm areas depend on, by name.
pub const CATALOGUE_CAPS: &[(u32, &str)] = &[
    (KVM_CAP_USER_MEMORY, "USER_MEMORY"),
    (KVM_CAP_NR_VCPUS, "NR_VCPUS"),
    (KVM_CAP_MAX_VCPUS, "MAX_VCPUS"),
    (KVM_CAP_MAX_VCPU_ID, "MAX_VCPU_ID"),
    (KVM_CAP_NR_MEMSLOTS, "NR_MEMSLOTS"),
    (KVM_CAP_READONLY_MEM, "READONLY_MEM"),
    (KVM_CAP_EXT_CPUID, "EXT_CPUID"),
    (KVM_CAP_EXT_EMUL_CPUID, "EXT_EMUL_CPUID"),
    (KVM_CAP_GET_MSR_FEATURES, "GET_MSR_FEATURES"),
    (KVM_CAP_IRQCHIP, "IRQCHIP"),
    (KVM_CAP_IOEVENTFD, "IOEVENTFD"),
    (KVM_CAP_IRQFD, "IRQFD"),
    (KVM_CAP_COALESCED_MMIO, "COALESCED_MMIO"),
    (KVM_CAP_SET_TSS_ADDR, "SET_TSS_ADDR"),
    (KVM_CAP_CHECK_EXTENSION_VM, "CHECK_EXTENSION_VM"),
    (kvmconf_harness::abi::KVM_CAP_ADJUST_CLOCK, "ADJUST_CLOCK"),
    (kvmconf_harness::abi::KVM_CAP_PIT2, "PIT2"),
    (kvmconf_harness::abi::KVM_CAP_PIT_STATE2, "PIT_STATE2"),
    (
        kvmconf_harness::abi::KVM_CAP_SET_IDENTITY_MAP_ADDR,
        "SET_IDENTITY_MAP_ADDR",
    ),
    (kvmconf_harness::abi::KVM_CAP_COALESCED_PIO, "COALESCED_PIO"),
    (
        kvmconf_harness::abi::KVM_CAP_MULTI_ADDRESS_SPACE,
        "MULTI_ADDRESS_SPACE",
    ),
    (
        kvmconf_harness::abi::KVM_CAP_BINARY_STATS_FD,
        "BINARY_STATS_FD",
    ),
    (kvmconf_harness::abi::KVM_CAP_ENABLE_CAP_VM, "ENABLE_CAP_VM"),
    (
        kvmconf_harness::abi::KVM_CAP_X86_USER_SPACE_MSR,
        "X86_USER_SPACE_MSR",
    ),
];

fn errno_name(e: Option<i32>) -> String {
    match e {
        None => "success".into(),
        Some(n) => format!("{} (errno {n})", std::io::Error::from_raw_os_error(n)),
    }
}

/// Fails unless `got` is the errno `want`: "what: wanted EINVAL (22), got success".
pub fn expect_errno(got: Option<i32>, want: i32, what: &str) -> Outcome {
    if got == Some(want) {
        return Ok(());
    }
    Err(Fail::field(
        what,
        errno_name(Some(want)),
        errno_name(got),
        "",
    ))
}

/// Checks that a creating ioctl was refused with EINVAL (`what` names it); when it made something
/// instead, the failure is `made()`.
pub fn expect_einval_not_made(
    r: Result<(), i32>,
    what: &str,
    made: impl FnOnce() -> String,
) -> Outcome {
    match r {
        Ok(()) => Err(Fail::failed(made())),
        Err(e) => expect_errno(Some(e), libc::EINVAL, what),
    }
}

// ---- KVM_GET_API_VERSION ----

fn api_version_is_12(host: &Host) -> Outcome {
    ensure_eq!(host.api_version(), 12, "KVM_GET_API_VERSION");
    let again = kvmconf_harness::Host::open()?;
    ensure_eq!(
        again.api_version(),
        12,
        "KVM_GET_API_VERSION on a second /dev/kvm handle"
    );
    Ok(())
}

// ---- KVM_CHECK_EXTENSION ----

fn check_extension_unknown_cap_returns_0(host: &Host) -> Outcome {
    for cap in [UNKNOWN_CAP, 0x7fff_ffff, 100_000] {
        ensure_eq!(
            host.check_raw(cap),
            0,
            "KVM_CHECK_EXTENSION({cap:#x}), an unassigned capability"
        );
    }
    Ok(())
}

fn check_extension_user_memory_reported(host: &Host) -> Outcome {
    // KVM_SET_MEMORY_REGION is removed (api.rst 4.6): without KVM_CAP_USER_MEMORY a VM has no way
    // to get memory.
    ensure!(
        host.check_raw(KVM_CAP_USER_MEMORY) > 0,
        "KVM_CHECK_EXTENSION(KVM_CAP_USER_MEMORY): wanted > 0, got {}",
        host.check_raw(KVM_CAP_USER_MEMORY)
    );
    Ok(())
}

fn check_extension_values_stable_and_non_negative(host: &Host) -> Outcome {
    let first: Vec<i32> = CATALOGUE_CAPS
        .iter()
        .map(|&(c, _)| host.check_raw(c))
        .collect();
    for (&(_, name), &v) in CATALOGUE_CAPS.iter().zip(&first) {
        ensure!(
            v >= 0,
            "KVM_CHECK_EXTENSION(KVM_CAP_{name}): wanted 0 or a positive value, got {v}"
        );
    }
    let other = kvmconf_harness::Host::open()?;
    for (&(cap, name), &v) in CATALOGUE_CAPS.iter().zip(&first) {
        ensure_eq!(
            other.check_raw(cap),
            v,
            "KVM_CHECK_EXTENSION(KVM_CAP_{name}) asked again on another /dev/kvm handle"
        );
    }
    Ok(())
}

fn nr_vcpus(host: &Host) -> i32 {
    match host.check_raw(KVM_CAP_NR_VCPUS) {
        0 => 4, // api.rst 4.7: assume 4 when the capability is absent
        n => n,
    }
}

/// The most vCPUs a VM may have (api.rst 4.7 defaults).
pub fn max_vcpus(host: &Host) -> i32 {
    match host.check_raw(KVM_CAP_MAX_VCPUS) {
        0 => nr_vcpus(host),
        n => n,
    }
}

/// The exclusive upper bound of vCPU ids (api.rst 4.7 defaults).
pub fn max_vcpu_id(host: &Host) -> i32 {
    match host.check_raw(KVM_CAP_MAX_VCPU_ID) {
        0 => max_vcpus(host),
        n => n,
    }
}

fn check_extension_nr_vcpus_at_most_max_vcpus(host: &Host) -> Outcome {
    let (nr, max) = (nr_vcpus(host), max_vcpus(host));
    ensure!(nr >= 1, "KVM_CAP_NR_VCPUS: wanted >= 1, got {nr}");
    ensure!(
        nr <= max,
        "recommended vCPUs (KVM_CAP_NR_VCPUS = {nr}) wanted <= the maximum (KVM_CAP_MAX_VCPUS = {max})"
    );
    Ok(())
}

fn check_extension_max_vcpu_id_at_least_max_vcpus(host: &Host) -> Outcome {
    let (max, id) = (max_vcpus(host), max_vcpu_id(host));
    ensure!(
        id >= max,
        "KVM_CAP_MAX_VCPU_ID ({id}) wanted >= KVM_CAP_MAX_VCPUS ({max}): ids are [0, max_vcpu_id) and max_vcpus of them must fit"
    );
    Ok(())
}

fn check_extension_nr_memslots_positive(host: &Host) -> Outcome {
    let n = host.check_raw(KVM_CAP_NR_MEMSLOTS);
    ensure!(n > 0, "KVM_CAP_NR_MEMSLOTS: wanted > 0, got {n}");
    ensure!(
        n <= 0x1_0000,
        "KVM_CAP_NR_MEMSLOTS: wanted a slot count that fits the 16-bit slot id, got {n}"
    );
    Ok(())
}

fn check_extension_on_vm_fd_matches_the_api(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_CHECK_EXTENSION_VM, "CHECK_EXTENSION_VM")?;
    let vm = host.try_create_vm()?;
    ensure_eq!(
        vm.check_extension_raw(UNKNOWN_CAP),
        0,
        "KVM_CHECK_EXTENSION on a VM fd for an unassigned capability"
    );
    let v = vm.check_extension_raw(KVM_CAP_USER_MEMORY);
    ensure!(
        v > 0,
        "KVM_CHECK_EXTENSION(KVM_CAP_USER_MEMORY) on a VM fd: wanted > 0, got {v}"
    );
    Ok(())
}

// ---- KVM_GET_VCPU_MMAP_SIZE ----

fn mmap_size(host: &Host) -> Result<usize, Fail> {
    host.try_vcpu_mmap_size()
        .map_err(ioctl("KVM_GET_VCPU_MMAP_SIZE"))
}

fn vcpu_mmap_size_whole_pages(host: &Host) -> Outcome {
    let n = mmap_size(host)?;
    ensure!(
        n >= PAGE,
        "KVM_GET_VCPU_MMAP_SIZE: wanted at least one page ({PAGE:#x}), got {n:#x}"
    );
    ensure_eq!(
        n % PAGE,
        0,
        "KVM_GET_VCPU_MMAP_SIZE {n:#x} modulo the page size"
    );
    Ok(())
}

fn vcpu_mmap_size_fits_kvm_run(host: &Host) -> Outcome {
    let n = mmap_size(host)?;
    let need = std::mem::size_of::<kvm_run>();
    ensure!(
        n >= need,
        "KVM_GET_VCPU_MMAP_SIZE {n:#x}: wanted room for struct kvm_run ({need:#x} bytes)"
    );
    ensure_eq!(
        mmap_size(host)?,
        n,
        "KVM_GET_VCPU_MMAP_SIZE asked a second time"
    );
    Ok(())
}

// ---- KVM_GET_SUPPORTED_CPUID / KVM_GET_EMULATED_CPUID ----

/// Asks with a buffer of `KVM_MAX_CPUID_ENTRIES` (the kernel's limit, 256) and returns the reply.
fn cpuid_full(host: &Host, emulated: bool) -> Result<CpuidReply, Fail> {
    let r = host.cpuid(emulated, 256);
    let name = cpuid_name(emulated);
    if let Some(e) = r.errno {
        return Err(Fail::failed(format!(
            "{name} with room for 256 entries: wanted success, got {}",
            errno_name(Some(e))
        )));
    }
    Ok(r)
}

fn cpuid_name(emulated: bool) -> &'static str {
    if emulated {
        "KVM_GET_EMULATED_CPUID"
    } else {
        "KVM_GET_SUPPORTED_CPUID"
    }
}

fn require_cpuid(host: &Host, emulated: bool) -> Outcome {
    if emulated {
        require_cap(host, KVM_CAP_EXT_EMUL_CPUID, "EXT_EMUL_CPUID")
    } else {
        require_cap(host, KVM_CAP_EXT_CPUID, "EXT_CPUID")
    }
}

fn cpuid_short_buffer_e2big(host: &Host, emulated: bool) -> Outcome {
    require_cpuid(host, emulated)?;
    let name = cpuid_name(emulated);
    let full = cpuid_full(host, emulated)?;
    let n = full.entries.len() as u32;
    ensure!(n >= 1, "{name}: wanted at least one entry, got none");
    let mut sizes = vec![0, 1, n - 1];
    sizes.dedup();
    for nent in sizes {
        if nent >= n {
            continue;
        }
        let r = host.cpuid(emulated, nent);
        expect_errno(
            r.errno,
            libc::E2BIG,
            &format!("{name} with room for {nent} of {n} entries"),
        )?;
    }
    Ok(())
}

fn cpuid_exact_buffer_succeeds(host: &Host, emulated: bool) -> Outcome {
    require_cpuid(host, emulated)?;
    let name = cpuid_name(emulated);
    let full = cpuid_full(host, emulated)?;
    let n = full.nent;
    ensure_eq!(
        full.entries.len() as u32,
        n,
        "{name}: entries filled vs nent"
    );
    let exact = host.cpuid(emulated, n);
    ensure_eq!(
        errno_name(exact.errno),
        "success",
        "{name} with room for exactly the {n} entries"
    );
    ensure_eq!(exact.nent, n, "{name}: nent with an exact buffer");
    ensure_eq!(
        exact.entries,
        full.entries,
        "{name}: entries with an exact buffer vs a large one"
    );
    Ok(())
}

fn cpuid_no_duplicates(host: &Host, emulated: bool) -> Outcome {
    require_cpuid(host, emulated)?;
    let name = cpuid_name(emulated);
    let full = cpuid_full(host, emulated)?;
    ensure!(
        full.nent <= 256,
        "{name}: nent {} exceeds the buffer of 256",
        full.nent
    );
    let mut seen = BTreeSet::new();
    for e in &full.entries {
        let key = (e.function, sig_index(e));
        ensure!(
            seen.insert(key),
            "{name}: function {:#x} index {:#x} appears twice",
            e.function,
            key.1
        );
    }
    Ok(())
}

fn sig_index(e: &kvm_cpuid_entry2) -> u32 {
    if e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX != 0 {
        e.index
    } else {
        0
    }
}

fn cpuid_multi_entry_functions_have_significant_index(host: &Host, emulated: bool) -> Outcome {
    require_cpuid(host, emulated)?;
    let name = cpuid_name(emulated);
    let full = cpuid_full(host, emulated)?;
    let mut by_fn: BTreeMap<u32, Vec<&kvm_cpuid_entry2>> = BTreeMap::new();
    for e in &full.entries {
        by_fn.entry(e.function).or_default().push(e);
    }
    for (f, es) in by_fn {
        if es.len() > 1 {
            for e in es {
                ensure!(
                    e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX != 0,
                    "{name}: function {f:#x} has several entries, but the one with index {:#x} lacks KVM_CPUID_FLAG_SIGNIFCANT_INDEX (flags {:#x})",
                    e.index,
                    e.flags
                );
            }
        }
    }
    Ok(())
}

fn cpuid_repeated_calls_identical(host: &Host, emulated: bool) -> Outcome {
    require_cpuid(host, emulated)?;
    let name = cpuid_name(emulated);
    let a = cpuid_full(host, emulated)?;
    let b = cpuid_full(host, emulated)?;
    ensure_eq!(b.entries, a.entries, "{name} asked twice");
    Ok(())
}

fn supported_cpuid_leaf0_max_leaf_covers_entries(host: &Host) -> Outcome {
    require_cpuid(host, false)?;
    let full = cpuid_full(host, false)?;
    let find = |f: u32| full.entries.iter().find(|e| e.function == f);
    let Some(l0) = find(0) else {
        return Err(Fail::failed("KVM_GET_SUPPORTED_CPUID: no entry for leaf 0"));
    };
    let max_basic = l0.eax;
    ensure!(
        max_basic >= 1,
        "leaf 0 eax (max basic leaf): wanted >= 1, got {max_basic:#x}"
    );
    let ext = find(0x8000_0000).map(|e| e.eax);
    for e in &full.entries {
        let f = e.function;
        if f < 0x4000_0000 {
            ensure!(
                f <= max_basic,
                "entry for leaf {f:#x} beyond the max basic leaf {max_basic:#x} reported by leaf 0"
            );
        } else if (0x8000_0000..0x9000_0000).contains(&f) {
            let Some(max_ext) = ext else {
                return Err(Fail::failed(format!(
                    "entry for extended leaf {f:#x} but no leaf 0x80000000"
                )));
            };
            ensure!(
                f <= max_ext,
                "entry for extended leaf {f:#x} beyond the max extended leaf {max_ext:#x} reported by 0x80000000"
            );
        }
    }
    ensure!(
        find(1).is_some(),
        "KVM_GET_SUPPORTED_CPUID: no entry for leaf 1 although leaf 0 reports max leaf {max_basic:#x}"
    );
    Ok(())
}

fn supported_cpuid_vendor_string_present(host: &Host) -> Outcome {
    require_cpuid(host, false)?;
    let full = cpuid_full(host, false)?;
    let Some(l0) = full.entries.iter().find(|e| e.function == 0) else {
        return Err(Fail::failed("KVM_GET_SUPPORTED_CPUID: no entry for leaf 0"));
    };
    let mut v = Vec::new();
    for r in [l0.ebx, l0.edx, l0.ecx] {
        v.extend_from_slice(&r.to_le_bytes());
    }
    let s = String::from_utf8_lossy(&v).into_owned();
    ensure!(
        v.iter().all(|b| b.is_ascii_graphic() || *b == b' ') && v.iter().any(|b| *b != b' '),
        "leaf 0 vendor string (ebx, edx, ecx): wanted 12 printable characters, got {v:02x?} ({s:?})"
    );
    // The host's own CPUID leaf 0 names the same vendor (entries are the host cpuid, masked).
    let host_vendor = host_vendor();
    ensure_eq!(s, host_vendor, "leaf 0 vendor vs the host CPU's");
    Ok(())
}

fn host_vendor() -> String {
    let r = std::arch::x86_64::__cpuid(0);
    let mut v = Vec::new();
    for x in [r.ebx, r.edx, r.ecx] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    String::from_utf8_lossy(&v).into_owned()
}

// ---- KVM_GET_MSR_INDEX_LIST / KVM_GET_MSR_FEATURE_INDEX_LIST ----

fn list_name(feature: bool) -> &'static str {
    if feature {
        "KVM_GET_MSR_FEATURE_INDEX_LIST"
    } else {
        "KVM_GET_MSR_INDEX_LIST"
    }
}

fn require_list(host: &Host, feature: bool) -> Outcome {
    if feature {
        require_cap(host, KVM_CAP_GET_MSR_FEATURES, "GET_MSR_FEATURES")
    } else {
        Ok(())
    }
}

fn msr_list_full(host: &Host, feature: bool) -> Result<Vec<u32>, Fail> {
    let name = list_name(feature);
    let r = host.msr_index_list(feature, 4096);
    if r.errno.is_some() {
        return Err(Fail::failed(format!(
            "{name} with room for 4096 indices: wanted success, got {}",
            errno_name(r.errno)
        )));
    }
    ensure_eq!(r.indices.len() as u32, r.nmsrs, "{name}: indices vs nmsrs");
    Ok(r.indices)
}

fn msr_list_short_buffer_e2big_reports_count(host: &Host, feature: bool) -> Outcome {
    require_list(host, feature)?;
    let name = list_name(feature);
    let full = msr_list_full(host, feature)?;
    let n = full.len() as u32;
    ensure!(n >= 1, "{name}: wanted at least one MSR, got none");
    let mut sizes = vec![0, n - 1];
    sizes.dedup();
    for cap in sizes {
        let r = host.msr_index_list(feature, cap);
        expect_errno(
            r.errno,
            libc::E2BIG,
            &format!("{name} with room for {cap} of {n} indices"),
        )?;
        ensure_eq!(
            r.nmsrs,
            n,
            "{name} with room for {cap}: nmsrs adjusted to the actual number of MSRs"
        );
    }
    let exact = host.msr_index_list(feature, n);
    ensure_eq!(
        errno_name(exact.errno),
        "success",
        "{name} with room for exactly {n} indices"
    );
    ensure_eq!(exact.indices, full, "{name} with an exact buffer");
    Ok(())
}

fn msr_list_no_duplicates(host: &Host, feature: bool) -> Outcome {
    require_list(host, feature)?;
    let name = list_name(feature);
    let full = msr_list_full(host, feature)?;
    let mut seen = BTreeSet::new();
    for i in &full {
        ensure!(seen.insert(*i), "{name}: MSR {i:#x} listed twice");
    }
    Ok(())
}

fn msr_list_repeated_calls_identical(host: &Host, feature: bool) -> Outcome {
    require_list(host, feature)?;
    let name = list_name(feature);
    let a = msr_list_full(host, feature)?;
    let b = msr_list_full(host, feature)?;
    ensure_eq!(b, a, "{name} asked twice (the list does not change)");
    Ok(())
}

fn feature_msrs_readable_with_system_get_msrs(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_GET_MSR_FEATURES, "GET_MSR_FEATURES")?;
    let list = msr_list_full(host, true)?;
    let entries: Vec<kvm_msr_entry> = list
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut msrs = kvmconf_harness::abi::Msrs::from_entries(&entries)
        .map_err(|e| Fail::failed(format!("building kvm_msrs: {e:?}")))?;
    let n = host
        .try_get_msrs(&mut msrs)
        .map_err(ioctl("KVM_GET_MSRS (system)"))?;
    ensure_eq!(
        n,
        list.len(),
        "system KVM_GET_MSRS of every feature MSR: number returned (first failing index {:#x?})",
        list.get(n)
    );
    // One at a time as well: each index alone reads.
    for &index in &list {
        let mut one = kvmconf_harness::abi::Msrs::from_entries(&[kvm_msr_entry {
            index,
            ..Default::default()
        }])
        .map_err(|e| Fail::failed(format!("building kvm_msrs: {e:?}")))?;
        let n = host
            .try_get_msrs(&mut one)
            .map_err(ioctl("KVM_GET_MSRS (system)"))?;
        ensure_eq!(n, 1, "system KVM_GET_MSRS of feature MSR {index:#x} alone");
    }
    Ok(())
}

fn system_get_msrs_stops_at_non_feature_msr(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_GET_MSR_FEATURES, "GET_MSR_FEATURES")?;
    let list = msr_list_full(host, true)?;
    let Some(&first) = list.first() else {
        return Err(Fail::failed("KVM_GET_MSR_FEATURE_INDEX_LIST is empty"));
    };
    // 0xdeadbeef is no MSR at all, let alone a feature MSR.
    let bogus = 0xdead_beef;
    ensure!(
        !list.contains(&bogus),
        "{bogus:#x} is listed as a feature MSR"
    );
    let mut msrs = kvmconf_harness::abi::Msrs::from_entries(&[
        kvm_msr_entry {
            index: first,
            ..Default::default()
        },
        kvm_msr_entry {
            index: bogus,
            ..Default::default()
        },
        kvm_msr_entry {
            index: first,
            ..Default::default()
        },
    ])
    .map_err(|e| Fail::failed(format!("building kvm_msrs: {e:?}")))?;
    let n = host
        .try_get_msrs(&mut msrs)
        .map_err(ioctl("KVM_GET_MSRS (system)"))?;
    ensure_eq!(
        n,
        1,
        "system KVM_GET_MSRS of [{first:#x}, {bogus:#x}, {first:#x}]: number of MSRs successfully returned"
    );
    Ok(())
}

// ---- unknown ioctls ----

fn unknown_ioctl_on_dev_kvm_enotty(host: &Host) -> Outcome {
    let e = host.try_unassigned_ioctl().err().map(|e| e.errno());
    expect_errno(
        e,
        libc::ENOTTY,
        &format!(
            "unassigned ioctl {:#x} on /dev/kvm",
            kvmconf_harness::ioctl::UNASSIGNED_IOCTL
        ),
    )?;
    ensure_eq!(
        host.api_version(),
        12,
        "KVM_GET_API_VERSION after the rejected ioctl"
    );
    Ok(())
}

fn unknown_ioctl_on_vm_fd_enotty(host: &Host) -> Outcome {
    let vm = host.try_create_vm()?;
    let e = vm.try_unassigned_ioctl().err().map(|e| e.errno());
    expect_errno(
        e,
        libc::ENOTTY,
        &format!(
            "unassigned ioctl {:#x} on a VM fd",
            kvmconf_harness::ioctl::UNASSIGNED_IOCTL
        ),
    )?;
    vm.try_create_vcpu(0)
        .map_err(ioctl("KVM_CREATE_VCPU after the rejected ioctl"))?;
    Ok(())
}

fn unknown_ioctl_on_vcpu_fd_enotty(host: &Host) -> Outcome {
    let vm = host.try_create_vm()?;
    let vcpu = vm.try_create_vcpu(0)?;
    let before = vcpu.try_get_regs()?;
    let e = vcpu.try_unassigned_ioctl().err().map(|e| e.errno());
    expect_errno(
        e,
        libc::ENOTTY,
        &format!(
            "unassigned ioctl {:#x} on a vCPU fd",
            kvmconf_harness::ioctl::UNASSIGNED_IOCTL
        ),
    )?;
    let after = vcpu.try_get_regs()?;
    ensure_eq!(
        format!("{after:?}"),
        format!("{before:?}"),
        "registers after the rejected ioctl"
    );
    Ok(())
}

// ---- KVM_CREATE_VM ----

fn create_vm_invalid_type_einval(host: &Host) -> Outcome {
    // KVM_CAP_VM_TYPES (where reported) is the bit mask of valid types; pick types outside it.
    let types = host.check_raw(KVM_CAP_VM_TYPES) as u32;
    let mut bad: Vec<u64> = vec![0xdead_0000, u64::from(u32::MAX)];
    if let Some(t) = (1u32..32).rev().find(|t| types & (1 << t) == 0) {
        bad.push(u64::from(t));
    }
    for t in bad {
        expect_einval_not_made(
            host.try_create_vm_with_type(t)
                .map(drop)
                .map_err(|e| e.errno()),
            &format!("KVM_CREATE_VM type {t:#x}"),
            || {
                format!(
                    "KVM_CREATE_VM type {t:#x} (KVM_CAP_VM_TYPES {types:#x}): wanted EINVAL, got a VM"
                )
            },
        )?;
    }
    // The system fd still works.
    host.try_create_vm()
        .map_err(ioctl("KVM_CREATE_VM type 0 after the rejected ones"))?;
    Ok(())
}

const API: &str = "api.rst 4.1 KVM_GET_API_VERSION";
const CHECK_EXT: &str = "api.rst 4.4 KVM_CHECK_EXTENSION";
const CPUID: &str = "api.rst 4.46 KVM_GET_SUPPORTED_CPUID";
const EMUL: &str = "api.rst 4.88 KVM_GET_EMULATED_CPUID";
const MSRLIST: &str = "api.rst 4.3 KVM_GET_MSR_INDEX_LIST, KVM_GET_MSR_FEATURE_INDEX_LIST";

crate::checks! {
    System;
    "system.api_version_is_12", API, api_version_is_12;
    "system.check_extension_unknown_cap_returns_0", "api.rst 4.4 KVM_CHECK_EXTENSION (0 if unsupported)", check_extension_unknown_cap_returns_0;
    "system.check_extension_user_memory_reported", "api.rst 4.35 KVM_SET_USER_MEMORY_REGION (KVM_CAP_USER_MEMORY), 4.6 KVM_SET_MEMORY_REGION removed", check_extension_user_memory_reported;
    "system.check_extension_catalogue_caps_non_negative_and_stable", CHECK_EXT, check_extension_values_stable_and_non_negative;
    "system.check_extension_nr_vcpus_at_most_max_vcpus", "api.rst 4.7 KVM_CREATE_VCPU (KVM_CAP_NR_VCPUS, KVM_CAP_MAX_VCPUS)", check_extension_nr_vcpus_at_most_max_vcpus;
    "system.check_extension_max_vcpu_id_at_least_max_vcpus", "api.rst 4.7 KVM_CREATE_VCPU (KVM_CAP_MAX_VCPU_ID)", check_extension_max_vcpu_id_at_least_max_vcpus;
    "system.check_extension_nr_memslots_positive", "api.rst 4.35 KVM_SET_USER_MEMORY_REGION (KVM_CAP_NR_MEMSLOTS, 16-bit slot id)", check_extension_nr_memslots_positive;
    "system.check_extension_on_vm_fd_answers_like_system_fd", "api.rst 4.4 KVM_CHECK_EXTENSION (KVM_CAP_CHECK_EXTENSION_VM for vm ioctl)", check_extension_on_vm_fd_matches_the_api;
    "system.vcpu_mmap_size_whole_pages", "api.rst 4.5 KVM_GET_VCPU_MMAP_SIZE, 4.10 KVM_RUN (mmap of the vcpu fd)", vcpu_mmap_size_whole_pages;
    "system.vcpu_mmap_size_fits_kvm_run", "api.rst 4.5 KVM_GET_VCPU_MMAP_SIZE, 5. The kvm_run structure", vcpu_mmap_size_fits_kvm_run;
    "system.supported_cpuid_short_buffer_e2big", CPUID, cpuid_short_buffer_e2big(false);
    "system.supported_cpuid_exact_buffer_succeeds", CPUID, cpuid_exact_buffer_succeeds(false);
    "system.supported_cpuid_no_duplicate_function_index", CPUID, cpuid_no_duplicates(false);
    "system.supported_cpuid_repeated_function_has_significant_index", "api.rst 4.46 KVM_GET_SUPPORTED_CPUID (KVM_CPUID_FLAG_SIGNIFCANT_INDEX)", cpuid_multi_entry_functions_have_significant_index(false);
    "system.supported_cpuid_repeated_calls_identical", CPUID, cpuid_repeated_calls_identical(false);
    "system.supported_cpuid_leaf0_max_leaf_covers_entries", "api.rst 4.46 KVM_GET_SUPPORTED_CPUID (entries are the host cpuid); SDM 2 CPUID leaf 0, 0x80000000", supported_cpuid_leaf0_max_leaf_covers_entries;
    "system.supported_cpuid_vendor_string_present", "api.rst 4.46 KVM_GET_SUPPORTED_CPUID (entries are the host cpuid); SDM 2 CPUID leaf 0", supported_cpuid_vendor_string_present;
    "system.emulated_cpuid_short_buffer_e2big", EMUL, cpuid_short_buffer_e2big(true);
    "system.emulated_cpuid_exact_buffer_succeeds", EMUL, cpuid_exact_buffer_succeeds(true);
    "system.emulated_cpuid_no_duplicate_function_index", EMUL, cpuid_no_duplicates(true);
    "system.emulated_cpuid_repeated_function_has_significant_index", "api.rst 4.88 KVM_GET_EMULATED_CPUID (KVM_CPUID_FLAG_SIGNIFCANT_INDEX)", cpuid_multi_entry_functions_have_significant_index(true);
    "system.emulated_cpuid_repeated_calls_identical", EMUL, cpuid_repeated_calls_identical(true);
    "system.msr_index_list_short_buffer_e2big_reports_count", MSRLIST, msr_list_short_buffer_e2big_reports_count(false);
    "system.msr_index_list_no_duplicates", MSRLIST, msr_list_no_duplicates(false);
    "system.msr_index_list_repeated_calls_identical", "api.rst 4.3 KVM_GET_MSR_INDEX_LIST (does not change otherwise)", msr_list_repeated_calls_identical(false);
    "system.msr_feature_index_list_short_buffer_e2big_reports_count", MSRLIST, msr_list_short_buffer_e2big_reports_count(true);
    "system.msr_feature_index_list_no_duplicates", MSRLIST, msr_list_no_duplicates(true);
    "system.msr_feature_index_list_repeated_calls_identical", "api.rst 4.3 KVM_GET_MSR_FEATURE_INDEX_LIST (does not change otherwise)", msr_list_repeated_calls_identical(true);
    "system.get_msrs_every_feature_msr_reads", "api.rst 4.18 KVM_GET_MSRS (system ioctl), 4.3 KVM_GET_MSR_FEATURE_INDEX_LIST", feature_msrs_readable_with_system_get_msrs;
    "system.get_msrs_non_feature_msr_stops_count", "api.rst 4.18 KVM_GET_MSRS (returns the number of msrs successfully returned)", system_get_msrs_stops_at_non_feature_msr;
    "system.unknown_ioctl_on_dev_kvm_enotty", "api.rst 4. API description (ioctls a kernel does not support return -ENOTTY)", unknown_ioctl_on_dev_kvm_enotty;
    "system.unknown_ioctl_on_vm_fd_enotty", "api.rst 4. API description (ioctls a kernel does not support return -ENOTTY)", unknown_ioctl_on_vm_fd_enotty;
    "system.unknown_ioctl_on_vcpu_fd_enotty", "api.rst 4. API description (ioctls a kernel does not support return -ENOTTY)", unknown_ioctl_on_vcpu_fd_enotty;
    "system.create_vm_invalid_type_einval", "api.rst 4.2 KVM_CREATE_VM (machine type identifier; EINVAL general error)", create_vm_invalid_type_einval;
}

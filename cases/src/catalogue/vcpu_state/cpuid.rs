//! KVM_SET_CPUID2 and KVM_GET_CPUID2: what the guest sees at CPL0 and CPL3, and round trips.

use super::*;

/// Bits KVM keeps in step with other state (SDM 2 CPUID): leaf 1 ECX.OSXSAVE mirrors CR4.OSXSAVE,
/// leaf 1 EDX.APIC mirrors IA32_APIC_BASE.EN, leaf 7 ECX.OSPKE mirrors CR4.PKE, leaf 0xD EBX is
/// the XSAVE size for the current XCR0.
pub(super) fn dynamic_mask(e: &kvm_cpuid_entry2) -> [u32; 4] {
    match (e.function, e.index) {
        (1, _) => [0, 0, 1 << 27, 1 << 9],
        (7, 0) => [0, 0, 1 << 4, 0],
        (0xd, 0 | 1) => [0, u32::MAX, 0, 0],
        _ => [0; 4],
    }
}

/// The supported CPUID with a custom vendor string and family/model, so values differ from the
/// host's.
pub(super) fn custom_cpuid(host: &Host) -> Vec<kvm_cpuid_entry2> {
    let mut v: Vec<kvm_cpuid_entry2> = host.supported_cpuid().as_slice().to_vec();
    for e in &mut v {
        match e.function {
            0 => {
                // "KvmConfCheck" in EBX, EDX, ECX order.
                e.ebx = u32::from_le_bytes(*b"KvmC");
                e.edx = u32::from_le_bytes(*b"onfC");
                e.ecx = u32::from_le_bytes(*b"heck");
            }
            1 => {
                e.eax = 0x000a_0f12;
                e.ebx = (e.ebx & 0xff00_0000) | 0x0001_0a00;
            }
            0x8000_0002 => {
                e.eax = u32::from_le_bytes(*b"kvmc");
                e.ebx = u32::from_le_bytes(*b"onf ");
                e.ecx = u32::from_le_bytes(*b"test");
                e.edx = u32::from_le_bytes(*b" cpu");
            }
            _ => {}
        }
    }
    v
}

pub(super) fn set_cpuid(v: &Vcpu, entries: &[kvm_cpuid_entry2]) -> Outcome {
    let c = CpuId::from_entries(entries)
        .map_err(|e| Fail::failed(format!("building kvm_cpuid2: {e:?}")))?;
    v.try_set_cpuid2(&c).map_err(ioctl("KVM_SET_CPUID2"))
}

pub(super) fn cpuid_diffs(
    what: &str,
    want: &[kvm_cpuid_entry2],
    got: impl Fn(&kvm_cpuid_entry2) -> Option<[u32; 4]>,
    expect: impl Fn(&kvm_cpuid_entry2) -> ([u32; 4], [u32; 4]),
) -> Vec<Part> {
    let mut d = Vec::new();
    for w in want {
        let Some(r) = got(w) else {
            d.push(Part {
                field: format!("{what} leaf {:#x}.{:#x}", w.function, w.index),
                wanted: "present".into(),
                got: "absent".into(),
            });
            continue;
        };
        let (e, m) = expect(w);
        for (k, name) in ["eax", "ebx", "ecx", "edx"].iter().enumerate() {
            if r[k] & !m[k] != e[k] & !m[k] {
                d.push(Part {
                    field: format!("{what} leaf {:#x}.{:#x} {name}", w.function, w.index),
                    wanted: format!("{:#x}", e[k]),
                    got: if m[k] != 0 {
                        format!("{:#x} (bits {:#x} not compared)", r[k], m[k])
                    } else {
                        format!("{:#x}", r[k])
                    },
                });
            }
        }
    }
    d
}

pub(super) fn report_diffs(d: Vec<Part>) -> Outcome {
    if d.is_empty() {
        return Ok(());
    }
    Err(Fail::Failed(Failure::parts(d, 12)))
}

pub(super) fn cpuid2_round_trip(host: &Host) -> Outcome {
    let g = hlt_guest(host, Mode::Long64)?;
    let want = custom_cpuid(host);
    set_cpuid(g.vcpu(), &want)?;
    let got = g.vcpu().try_get_cpuid2(KVM_MAX_CPUID_ENTRIES)?;
    let got = got.as_slice();
    let mut d = cpuid_diffs(
        "KVM_GET_CPUID2",
        &want,
        |w| {
            got.iter()
                .find(|g| g.function == w.function && g.index == w.index)
                .map(|g| [g.eax, g.ebx, g.ecx, g.edx])
        },
        |w| ([w.eax, w.ebx, w.ecx, w.edx], dynamic_mask(w)),
    );
    if got.len() != want.len() {
        d.push(Part {
            field: "KVM_GET_CPUID2 entry count".into(),
            wanted: want.len().to_string(),
            got: got.len().to_string(),
        });
    }
    report_diffs(d)
}

pub(super) fn cpuid2_guest_sees(host: &Host, cpl: u8) -> Outcome {
    let want = custom_cpuid(host);
    let leaves: Vec<(u32, u32)> = want.iter().map(|e| (e.function, e.index)).collect();
    let mut g = Guest::long64(host, cpl, |a| {
        for (i, &(f, idx)) in leaves.iter().enumerate() {
            let at = OUT + 16 * i as u64;
            a.mov(eax, f)?;
            a.mov(ecx, idx)?;
            a.cpuid()?;
            a.mov(dword_ptr(at), eax)?;
            a.mov(dword_ptr(at + 4), ebx)?;
            a.mov(dword_ptr(at + 8), ecx)?;
            a.mov(dword_ptr(at + 12), edx)?;
        }
        a.hlt()
    })?;
    set_cpuid(g.vcpu(), &want)?;
    let apic_en = get_msr(g.vcpu(), MSR_APIC_BASE)? & (1 << 11) != 0;
    g.run_to_hlt()?;
    let out = g.read(OUT, 16 * want.len())?;
    let word = |i: usize, k: usize| {
        u32::from_le_bytes(
            out[16 * i + 4 * k..16 * i + 4 * k + 4]
                .try_into()
                .expect("4"),
        )
    };
    let d = cpuid_diffs(
        &format!("cpl{cpl} guest CPUID"),
        &want,
        |w| {
            let i = want
                .iter()
                .position(|e| e.function == w.function && e.index == w.index)?;
            Some(std::array::from_fn(|k| word(i, k)))
        },
        |w| {
            let mut e = [w.eax, w.ebx, w.ecx, w.edx];
            if w.function == 1 {
                // CR4.OSXSAVE is 0 in kvmconf's states; APIC mirrors IA32_APIC_BASE.EN.
                e[2] &= !(1 << 27);
                e[3] = (e[3] & !(1 << 9)) | (u32::from(apic_en) << 9);
                (e, [0; 4])
            } else {
                (e, dynamic_mask(w))
            }
        },
    );
    report_diffs(d)
}

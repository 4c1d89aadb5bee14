//! KVM_GET/SET_MSRS: round trips, counts that stop at the first unknown MSR, the TSC, and what the
//! guest reads.

use super::*;

pub(super) fn msrs(entries: &[(u32, u64)]) -> Msrs {
    Msrs::from_entries(
        &entries
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect::<Vec<_>>(),
    )
    .expect("a short MSR list fits")
}

pub(super) fn get_msr(v: &Vcpu, index: u32) -> Result<u64, Fail> {
    let mut m = msrs(&[(index, 0)]);
    let n = v.try_get_msrs(&mut m)?;
    ensure_eq!(n, 1usize, "KVM_GET_MSRS({index:#x}) count");
    Ok(m.as_slice()[0].data)
}

pub(super) fn set_msrs_all(v: &Vcpu, entries: &[(u32, u64)]) -> Outcome {
    let n = v.try_set_msrs(&msrs(entries))?;
    ensure_eq!(n, entries.len(), "KVM_SET_MSRS count for {entries:x?}");
    Ok(())
}

pub(super) const MSR_VALUES: [(u32, u64); 9] = [
    (MSR_SYSENTER_CS, 0x10),
    (MSR_SYSENTER_ESP, 0xffff_8000_0000_8000),
    (MSR_SYSENTER_EIP, 0xffff_8000_0000_1230),
    (MSR_PAT, 0x0001_0405_0607_0406),
    (MSR_STAR, 0x0023_0010_0000_0000),
    (MSR_LSTAR, 0xffff_8000_1234_5670),
    (MSR_CSTAR, 0xffff_8000_1234_6780),
    (MSR_SFMASK, 0x4700),
    (MSR_KERNEL_GS_BASE, 0xffff_8880_0000_1000),
];

pub(super) fn msrs_round_trip(host: &Host) -> Outcome {
    host.with_vm(Mode::Long64, |_vm, vcpu| {
        set_msrs_all(vcpu, &MSR_VALUES)?;
        let mut m = msrs(&MSR_VALUES.map(|(i, _)| (i, 0)));
        let n = vcpu.try_get_msrs(&mut m)?;
        ensure_eq!(n, MSR_VALUES.len(), "KVM_GET_MSRS count");
        for (e, (index, want)) in m.as_slice().iter().zip(MSR_VALUES) {
            ensure_eq!(e.data, want, "MSR {index:#x} after KVM_SET_MSRS");
        }
        Ok(())
    })
}

pub(super) fn msrs_get_stops_at_unknown(host: &Host) -> Outcome {
    host.with_vm(Mode::Long64, |_vm, vcpu| {
        let mut m = msrs(&[(MSR_STAR, 0), (MSR_UNKNOWN, 0), (MSR_LSTAR, 0)]);
        let n = vcpu.try_get_msrs(&mut m)?;
        ensure_eq!(
            n,
            1usize,
            "KVM_GET_MSRS of [STAR, {MSR_UNKNOWN:#x} (unknown), LSTAR]: number of MSRs returned"
        );
        Ok(())
    })
}

pub(super) fn msrs_set_stops_at_unknown(host: &Host) -> Outcome {
    host.with_vm(Mode::Long64, |_vm, vcpu| {
        set_msrs_all(vcpu, &[(MSR_STAR, 0), (MSR_LSTAR, 0x1000)])?;
        let n = vcpu.try_set_msrs(&msrs(&[
            (MSR_STAR, 0x0023_0010_0000_0000),
            (MSR_UNKNOWN, 1),
            (MSR_LSTAR, 0x2000),
        ]))?;
        ensure_eq!(
            n,
            1usize,
            "KVM_SET_MSRS of [STAR, {MSR_UNKNOWN:#x} (unknown), LSTAR]: number of MSRs set"
        );
        ensure_eq!(
            get_msr(vcpu, MSR_STAR)?,
            0x0023_0010_0000_0000u64,
            "STAR (entry 0, before the unknown MSR) was set"
        );
        ensure_eq!(
            get_msr(vcpu, MSR_LSTAR)?,
            0x1000u64,
            "LSTAR (entry 2, after the unknown MSR) is unchanged"
        );
        Ok(())
    })
}

pub(super) fn msrs_set_stops_at_reserved_bits(host: &Host) -> Outcome {
    host.with_vm(Mode::Long64, |_vm, vcpu| {
        let pat0 = get_msr(vcpu, MSR_PAT)?;
        // Memory type 2 is reserved in every PAT entry (SDM 3A 13.12.2).
        let n = vcpu.try_set_msrs(&msrs(&[(MSR_PAT, 0x0007_0406_0007_0402), (MSR_STAR, 0x1)]))?;
        ensure_eq!(
            n,
            0usize,
            "KVM_SET_MSRS of [PAT with reserved type 2, STAR]: number of MSRs set"
        );
        ensure_eq!(get_msr(vcpu, MSR_PAT)?, pat0, "PAT re-read");
        ensure_eq!(get_msr(vcpu, MSR_STAR)?, 0u64, "STAR re-read");
        Ok(())
    })
}

pub(super) fn msrs_guest_rdmsr(host: &Host) -> Outcome {
    let list = [
        MSR_STAR,
        MSR_LSTAR,
        MSR_SYSENTER_EIP,
        MSR_PAT,
        MSR_KERNEL_GS_BASE,
    ];
    let mut g = Guest::long64(host, 0, |a| {
        for (i, &m) in list.iter().enumerate() {
            a.mov(ecx, m)?;
            a.rdmsr()?;
            a.mov(dword_ptr(OUT + 8 * i as u64), eax)?;
            a.mov(dword_ptr(OUT + 8 * i as u64 + 4), edx)?;
        }
        a.hlt()
    })?;
    set_msrs_all(g.vcpu(), &MSR_VALUES)?;
    g.run_to_hlt()?;
    for (i, &m) in list.iter().enumerate() {
        let want = MSR_VALUES.iter().find(|v| v.0 == m).expect("listed").1;
        ensure_eq!(
            g.read_u64(OUT + 8 * i as u64)?,
            want,
            "edx:eax from guest RDMSR {m:#x}"
        );
    }
    Ok(())
}

pub(super) fn msrs_guest_wrmsr(host: &Host) -> Outcome {
    let mut g = Guest::long64(host, 0, |a| {
        for &(m, v) in &MSR_VALUES {
            a.mov(ecx, m)?;
            a.mov(eax, v as u32)?;
            a.mov(edx, (v >> 32) as u32)?;
            a.wrmsr()?;
        }
        a.hlt()
    })?;
    g.run_to_hlt()?;
    for (m, want) in MSR_VALUES {
        ensure_eq!(
            get_msr(g.vcpu(), m)?,
            want,
            "KVM_GET_MSRS({m:#x}) after the guest's WRMSR"
        );
    }
    Ok(())
}

pub(super) fn msrs_guest_rdmsr_unknown_gp(host: &Host) -> Outcome {
    let mut c = case(
        "rdmsr_unknown",
        Mode::Long64,
        program(Mode::Long64, |a| {
            a.mov(ecx, MSR_UNKNOWN)?;
            a.rdmsr()?;
            a.hlt()
        })?,
    );
    c.stubs = true;
    let mut g = Guest::boot(host, &c)?;
    g.run_to_hlt()?;
    ensure_eq!(
        g.stub_vector()?,
        Some(13),
        "stub the guest halted in after RDMSR of unknown MSR {MSR_UNKNOWN:#x} (#GP = 13)"
    );
    Ok(())
}

pub(super) const TSC_SET: u64 = 1 << 40;
/// Generous: 100 s of a 5 GHz TSC.
pub(super) const TSC_SLACK: u64 = 500_000_000_000;

pub(super) fn msrs_tsc_round_trip(host: &Host) -> Outcome {
    host.with_vm(Mode::Long64, |_vm, vcpu| {
        set_msrs_all(vcpu, &[(MSR_TSC, TSC_SET)])?;
        let t = get_msr(vcpu, MSR_TSC)?;
        in_tsc_window("IA32_TSC read", t)
    })
}

/// Fails unless `v`, read as `what` after IA32_TSC was set to [`TSC_SET`], lies in the window of
/// [`TSC_SLACK`] above it.
pub(super) fn in_tsc_window(what: &str, v: u64) -> Outcome {
    if (TSC_SET..TSC_SET + TSC_SLACK).contains(&v) {
        return Ok(());
    }
    Err(Fail::field(
        format!("{what} after setting IA32_TSC to {TSC_SET:#x}"),
        format!("a value in [{TSC_SET:#x}, +{TSC_SLACK:#x})"),
        format!("{v:#x}"),
        "",
    ))
}

pub(super) fn rdtsc_matches_msr(host: &Host, cpl: u8) -> Outcome {
    let mut g = Guest::long64(host, cpl, |a| {
        a.rdtsc()?;
        a.mov(dword_ptr(OUT), eax)?;
        a.mov(dword_ptr(OUT + 4), edx)?;
        a.hlt()
    })?;
    set_msrs_all(g.vcpu(), &[(MSR_TSC, TSC_SET)])?;
    g.run_to_hlt()?;
    let guest = g.read_u64(OUT)?;
    let after = get_msr(g.vcpu(), MSR_TSC)?;
    in_tsc_window(&format!("cpl{cpl} RDTSC"), guest)?;
    ensure!(
        guest <= after,
        "cpl{cpl} RDTSC {guest:#x} is past IA32_TSC read after the exit ({after:#x})"
    );
    Ok(())
}

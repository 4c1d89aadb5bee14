//! KVM_GET/SET_XCRS: XCR0 round trips and rejected values.

use super::*;

/// XCR0 bits the host lets a guest enable (CPUID.(EAX=0DH,ECX=0):EAX).
pub(super) fn supported_xcr0(host: &Host) -> u64 {
    host.supported_cpuid()
        .as_slice()
        .iter()
        .find(|e| e.function == 0xd && e.index == 0)
        .map_or(0, |e| u64::from(e.eax) | (u64::from(e.edx) << 32))
}

pub(super) fn xcrs_of(value: u64, xcr: u32) -> kvm_xcrs {
    let mut x = kvm_xcrs {
        nr_xcrs: 1,
        ..Default::default()
    };
    x.xcrs[0].xcr = xcr;
    x.xcrs[0].value = value;
    x
}

pub(super) fn xcr0(v: &Vcpu) -> Result<u64, Fail> {
    let x = v.try_get_xcrs()?;
    x.xcrs[..x.nr_xcrs as usize]
        .iter()
        .find(|x| x.xcr == 0)
        .map(|x| x.value)
        .ok_or_else(|| Fail::failed(format!("KVM_GET_XCRS reports no XCR0: {x:x?}")))
}

pub(super) fn xcrs_round_trip(host: &Host) -> Outcome {
    require_cap(host, kvmconf_harness::abi::KVM_CAP_XCRS, "XCRS")?;
    let sup = supported_xcr0(host);
    ensure!(sup & 3 == 3, "supported XCR0 {sup:#x} lacks x87|SSE");
    host.with_vm(Mode::Long64, |_vm, vcpu| {
        ensure_eq!(xcr0(vcpu)?, 1u64, "XCR0 of a new vCPU (x87 only)");
        let want = if sup & 4 != 0 { 7 } else { 3 };
        vcpu.try_set_xcrs(&xcrs_of(want, 0))?;
        ensure_eq!(xcr0(vcpu)?, want, "XCR0 after KVM_SET_XCRS");
        Ok(())
    })
}

pub(super) fn xcrs_rejected(host: &Host, what: &str, value: u64) -> Outcome {
    require_cap(host, kvmconf_harness::abi::KVM_CAP_XCRS, "XCRS")?;
    host.with_vm(Mode::Long64, |_vm, vcpu| {
        vcpu.try_set_xcrs(&xcrs_of(3, 0))?;
        einval_or_fail(
            &format!("KVM_SET_XCRS with {what}"),
            vcpu.try_set_xcrs(&xcrs_of(value, 0)).map_err(|e| e.errno()),
        )?;
        ensure_eq!(
            xcr0(vcpu)?,
            3u64,
            "XCR0 re-read after the rejected KVM_SET_XCRS ({what})"
        );
        Ok(())
    })
}

pub(super) fn xcrs_avx_without_sse(host: &Host) -> Outcome {
    if supported_xcr0(host) & 4 == 0 {
        return Err(Fail::Skip("AVX state (XCR0 bit 2) not supported".into()));
    }
    xcrs_rejected(host, "XCR0 = 0x5 (AVX without SSE)", 0x5)
}

//! KVM_TRANSLATE of guest-linear addresses.

use super::*;

pub(super) fn translate(g: &Guest, la: u64) -> Result<kvmconf_harness::abi::kvm_translation, Fail> {
    g.vcpu().try_translate(la).map_err(ioctl("KVM_TRANSLATE"))
}

pub(super) fn translate_mapped(host: &Host) -> Outcome {
    for mode in [Mode::Real16, Mode::Prot32, Mode::Long64] {
        let g = guest(host, mode, |a| a.hlt())?;
        let t = translate(&g, 0x12345)?;
        ensure_eq!(t.valid, 1u8, "{mode:?} KVM_TRANSLATE(0x12345).valid");
        ensure_eq!(
            t.physical_address,
            0x12345u64,
            "{mode:?} physical address of 0x12345 (identity)"
        );
    }
    Ok(())
}

pub(super) fn translate_unmapped(host: &Host) -> Outcome {
    let g = guest(host, Mode::Long64, |a| a.hlt())?;
    let t = translate(&g, 0x1_0000_0010)?;
    ensure_eq!(
        t.valid,
        0u8,
        "KVM_TRANSLATE(0x100000010).valid (no page maps it)"
    );
    Ok(())
}

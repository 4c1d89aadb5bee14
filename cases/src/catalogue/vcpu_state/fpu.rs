//! KVM_GET/SET_FPU and KVM_GET/SET_XSAVE: round trips, what the guest reads at CPL0 and CPL3, and a
//! rejected XSTATE_BV.

use super::*;

pub(super) fn pattern(seed: u8) -> [u8; 16] {
    std::array::from_fn(|i| seed.wrapping_mul(17).wrapping_add(i as u8 * 3))
}

pub(super) fn fpu_round_trip(host: &Host) -> Outcome {
    host.with_vm(Mode::Long64, |_vm, vcpu| {
        let mut f = vcpu.try_get_fpu()?;
        f.fcw = 0x027f;
        f.fsw = 0x3800;
        f.ftwx = 0x81;
        for (i, r) in f.fpr.iter_mut().enumerate() {
            // 80-bit values in the low 10 bytes; the rest of each slot is padding.
            let p = pattern(i as u8);
            r[..10].copy_from_slice(&p[..10]);
            r[10..].fill(0);
        }
        for (i, x) in f.xmm.iter_mut().enumerate() {
            *x = pattern(0x40 + i as u8);
        }
        vcpu.try_set_fpu(&f)?;
        let got = vcpu.try_get_fpu()?;
        ensure_eq!(got.fcw, f.fcw, "fcw");
        ensure_eq!(got.fsw, f.fsw, "fsw");
        ensure_eq!(got.ftwx, f.ftwx, "ftwx");
        for i in 0..8 {
            ensure_eq!(
                hex(&got.fpr[i][..10]),
                hex(&f.fpr[i][..10]),
                "fpr[{i}] (80 bits)"
            );
        }
        for i in 0..16 {
            ensure_eq!(hex(&got.xmm[i]), hex(&f.xmm[i]), "xmm{i}");
        }
        Ok(())
    })
}

pub(super) fn fpu_mxcsr_round_trip(host: &Host) -> Outcome {
    host.with_vm(Mode::Long64, |_vm, vcpu| {
        let mut f = vcpu.try_get_fpu()?;
        ensure_eq!(
            f.mxcsr,
            0x1f80u32,
            "mxcsr of a new vCPU (SDM 1 10.2.3.1: 0x1f80 after reset)"
        );
        f.mxcsr = 0x7f81; // round toward zero, IE flag
        vcpu.try_set_fpu(&f)?;
        let got = vcpu.try_get_fpu()?;
        ensure_eq!(got.mxcsr, 0x7f81u32, "mxcsr after KVM_SET_FPU");
        Ok(())
    })
}

/// The guest stores xmm0 and xmm1 to OUT with movdqu and halts.
pub(super) fn store_xmm_guest(host: &Host, cpl: u8) -> Result<Guest, Fail> {
    Guest::long64(host, cpl, |a| {
        a.movdqu(xmmword_ptr(OUT), xmm0)?;
        a.movdqu(xmmword_ptr(OUT + 16), xmm1)?;
        a.hlt()
    })
}

pub(super) fn run_store_xmm(g: &mut Guest, cpl: u8) -> Result<Vec<u8>, Fail> {
    let e = g.run()?;
    expect_exit(
        &e,
        &KvmExit::Hlt,
        &format!("cpl{cpl} exit after movdqu; hlt"),
    )?;
    if cpl == 3 {
        ensure_eq!(
            g.stub_vector()?,
            Some(13),
            "cpl3: the HLT ends in the #GP stub (kvmconf's CPL3 HLT convention)"
        );
    }
    g.read(OUT, 32)
}

pub(super) fn fpu_guest_reads_xmm(host: &Host, cpl: u8) -> Outcome {
    let mut g = store_xmm_guest(host, cpl)?;
    let mut f = g.vcpu().try_get_fpu()?;
    f.xmm[0] = pattern(1);
    f.xmm[1] = pattern(2);
    g.vcpu().try_set_fpu(&f)?;
    let got = run_store_xmm(&mut g, cpl)?;
    stored_xmm(&got, [1, 2], &format!("cpl{cpl} "))
}

/// Checks the xmm0 and xmm1 that the guest of [`run_store_xmm`] stored (`got`) against
/// `pattern(seeds[0])` and `pattern(seeds[1])`; `prefix` begins each failure's field.
fn stored_xmm(got: &[u8], seeds: [u8; 2], prefix: &str) -> Outcome {
    ensure_eq!(
        hex(&got[..16]),
        hex(&pattern(seeds[0])),
        "{prefix}xmm0 as the guest stores it"
    );
    ensure_eq!(
        hex(&got[16..]),
        hex(&pattern(seeds[1])),
        "{prefix}xmm1 as the guest stores it"
    );
    Ok(())
}

/// XSAVE legacy-area offsets (SDM 1 10.5.1, 13.4.1).
pub(super) const XSAVE_XMM0: usize = 160;
pub(super) const XSAVE_XSTATE_BV: usize = 512;

/// Sets `bits` in the XSTATE_BV of the XSAVE area `b` (its header, SDM 1 13.4.2).
fn set_xstate_bv_bits(b: &mut [u8], bits: u64) {
    let field = &mut b[XSAVE_XSTATE_BV..XSAVE_XSTATE_BV + 8];
    let bv = u64::from_le_bytes(field.try_into().expect("8")) | bits;
    field.copy_from_slice(&bv.to_le_bytes());
}

pub(super) fn xsave_bytes(x: &kvmconf_harness::abi::kvm_xsave) -> Vec<u8> {
    x.region.iter().flat_map(|w| w.to_le_bytes()).collect()
}

pub(super) fn xsave_from(bytes: &[u8]) -> kvmconf_harness::abi::kvm_xsave {
    let mut x = kvmconf_harness::abi::kvm_xsave::default();
    for (w, c) in x.region.iter_mut().zip(bytes.chunks(4)) {
        *w = u32::from_le_bytes(c.try_into().expect("4 bytes"));
    }
    x
}

pub(super) fn xsave_round_trip(host: &Host) -> Outcome {
    host.with_vm(Mode::Long64, |_vm, vcpu| {
        let mut b = xsave_bytes(&vcpu.try_get_xsave()?);
        b[0..2].copy_from_slice(&0x037eu16.to_le_bytes()); // fcw
        for i in 0..2 {
            b[XSAVE_XMM0 + 16 * i..XSAVE_XMM0 + 16 * (i + 1)]
                .copy_from_slice(&pattern(9 + i as u8));
        }
        // XSTATE_BV: x87 and SSE state present.
        let mut bv = u64::from_le_bytes(
            b[XSAVE_XSTATE_BV..XSAVE_XSTATE_BV + 8]
                .try_into()
                .expect("8"),
        );
        bv |= 0x3;
        b[XSAVE_XSTATE_BV..XSAVE_XSTATE_BV + 8].copy_from_slice(&bv.to_le_bytes());
        let want = xsave_from(&b);
        vcpu.try_set_xsave(&want)
            .map_err(|e| e.errno())
            .map_err(|e| {
                Fail::failed(format!(
                    "KVM_SET_XSAVE failed: {} (errno {e})",
                    std::io::Error::from_raw_os_error(e)
                ))
            })?;
        let got = xsave_bytes(&vcpu.try_get_xsave()?);
        ensure_eq!(hex(&got[0..2]), hex(&b[0..2]), "fcw (xsave bytes 0..2)");
        ensure_eq!(
            hex(&got[XSAVE_XMM0..XSAVE_XMM0 + 32]),
            hex(&b[XSAVE_XMM0..XSAVE_XMM0 + 32]),
            "xmm0..xmm1 (xsave bytes 160..192)"
        );
        Ok(())
    })
}

pub(super) fn xsave_guest_reads_xmm_cpl3(host: &Host) -> Outcome {
    let mut g = store_xmm_guest(host, 3)?;
    let mut b = xsave_bytes(&g.vcpu().try_get_xsave()?);
    b[XSAVE_XMM0..XSAVE_XMM0 + 16].copy_from_slice(&pattern(0x21));
    b[XSAVE_XMM0 + 16..XSAVE_XMM0 + 32].copy_from_slice(&pattern(0x22));
    set_xstate_bv_bits(&mut b, 0x2);
    g.vcpu()
        .try_set_xsave(&xsave_from(&b))
        .map_err(|e| e.errno())
        .map_err(|e| Fail::failed(format!("KVM_SET_XSAVE failed: errno {e}")))?;
    let got = run_store_xmm(&mut g, 3)?;
    stored_xmm(&got, [0x21, 0x22], "")
}

pub(super) fn xsave_bad_xstate_bv(host: &Host) -> Outcome {
    host.with_vm(Mode::Long64, |_vm, vcpu| {
        let before = xsave_bytes(&vcpu.try_get_xsave()?);
        let mut b = before.clone();
        b[0..2].copy_from_slice(&0x0272u16.to_le_bytes());
        set_xstate_bv_bits(&mut b, 1 << 62);
        einval_or_fail(
            "KVM_SET_XSAVE with XSTATE_BV bit 62 (no such state component)",
            vcpu.try_set_xsave(&xsave_from(&b)).map_err(|e| e.errno()),
        )?;
        let after = xsave_bytes(&vcpu.try_get_xsave()?);
        ensure!(
            after == before,
            "XSAVE area re-read after the rejected KVM_SET_XSAVE differs at byte {:#x}",
            after
                .iter()
                .zip(&before)
                .position(|(a, b)| a != b)
                .unwrap_or(0)
        );
        Ok(())
    })
}

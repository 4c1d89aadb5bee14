//! KVM_EXIT_X86_RDMSR / WRMSR (KVM_CAP_X86_USER_SPACE_MSR) and KVM_X86_SET_MSR_FILTER.

use super::*;

pub(super) fn enable_user_msr(g: &Guest, mask: u32) -> Outcome {
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_X86_USER_SPACE_MSR,
        ..Default::default()
    };
    cap.args[0] = u64::from(mask);
    g.vm.try_enable_cap(&cap)
        .map_err(ioctl("KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR)"))
}

pub(super) fn rdmsr_guest(host: &Host, index: u32) -> Result<Guest, Fail> {
    let c = with_stubs(long64_case(|a| {
        a.mov(ecx, index)?;
        a.rdmsr()?;
        a.hlt()
    })?);
    Guest::boot(host, &c)
}

pub(super) fn msr_exit(e: &KvmExit, write: bool) -> Result<(u32, u32, u64), Fail> {
    match *e {
        KvmExit::Msr {
            write: w,
            reason,
            index,
            data,
        } if w == write => Ok((reason, index, data)),
        _ => Err(Fail::failed(format!(
            "exit: wanted {}, got {}",
            if write { "X86_WRMSR" } else { "X86_RDMSR" },
            describe(e)
        ))),
    }
}

pub(super) fn answer_msr(g: &mut Guest, error: u8, data: u64) {
    let area = g.vm.vcpu.run_area();
    area[off::UNION] = error;
    area[off::UNION + 16..off::UNION + 24].copy_from_slice(&data.to_le_bytes());
}

/// Enables KVM_MSR_EXIT_REASON_UNKNOWN exits on `g`, runs it to the exit of its RDMSR (or WRMSR,
/// `write`) of MSR_UNKNOWN and checks that exit's reason and index; returns its data.
fn unknown_msr_exit(g: &mut Guest, write: bool) -> Result<u64, Fail> {
    enable_user_msr(g, KVM_MSR_EXIT_REASON_UNKNOWN)?;
    let (reason, index, data) = msr_exit(&g.run()?, write)?;
    let insn = if write { "WRMSR" } else { "RDMSR" };
    ensure_eq!(
        reason,
        KVM_MSR_EXIT_REASON_UNKNOWN,
        "msr.reason of the {insn} exit"
    );
    ensure_eq!(index, MSR_UNKNOWN, "msr.index of the {insn} exit");
    Ok(data)
}

pub(super) fn user_msr_rdmsr(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_X86_USER_SPACE_MSR, "X86_USER_SPACE_MSR")?;
    let mut g = rdmsr_guest(host, MSR_UNKNOWN)?;
    unknown_msr_exit(&mut g, false)?;
    answer_msr(&mut g, 0, 0x1122_3344_5566_7788);
    g.run_to_hlt()?;
    ensure_eq!(
        g.stub_vector()?,
        None,
        "stub reached (none: the read succeeded)"
    );
    let r = g.regs()?;
    ensure_eq!(
        (r.rdx, r.rax),
        (0x1122_3344u64, 0x5566_7788u64),
        "(rdx, rax) after userspace answered the RDMSR"
    );
    Ok(())
}

pub(super) fn user_msr_rdmsr_error_gp(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_X86_USER_SPACE_MSR, "X86_USER_SPACE_MSR")?;
    let mut g = rdmsr_guest(host, MSR_UNKNOWN)?;
    enable_user_msr(&g, KVM_MSR_EXIT_REASON_UNKNOWN)?;
    msr_exit(&g.run()?, false)?;
    answer_msr(&mut g, 1, 0);
    g.run_to_hlt()?;
    ensure_eq!(
        g.stub_vector()?,
        Some(13u8),
        "stub reached after userspace set msr.error = 1 (#GP = 13)"
    );
    Ok(())
}

pub(super) fn user_msr_wrmsr(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_X86_USER_SPACE_MSR, "X86_USER_SPACE_MSR")?;
    let c = with_stubs(long64_case(|a| {
        a.mov(ecx, MSR_UNKNOWN)?;
        a.mov(eax, 0xaabb_ccddu32)?;
        a.mov(edx, 0x1020_3040u32)?;
        a.wrmsr()?;
        a.hlt()
    })?);
    let mut g = Guest::boot(host, &c)?;
    let data = unknown_msr_exit(&mut g, true)?;
    ensure_eq!(
        data,
        0x1020_3040_aabb_ccddu64,
        "msr.data of the WRMSR exit (edx:eax)"
    );
    answer_msr(&mut g, 0, 0);
    g.run_to_hlt()?;
    ensure_eq!(
        g.stub_vector()?,
        None,
        "stub reached (none: the write succeeded)"
    );
    Ok(())
}

pub(super) fn deny_star_read(g: &Guest) -> Outcome {
    let bitmap = [0u8];
    g.vm.try_set_msr_filter(
        MsrFilterDefaultAction::ALLOW,
        &[MsrFilterRange {
            flags: MsrFilterRangeFlags::READ,
            base: MSR_STAR,
            msr_count: 1,
            bitmap: &bitmap,
        }],
    )
    .map_err(ioctl("KVM_X86_SET_MSR_FILTER"))
}

pub(super) fn msr_filter_exit(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_X86_MSR_FILTER, "X86_MSR_FILTER")?;
    require_cap(host, KVM_CAP_X86_USER_SPACE_MSR, "X86_USER_SPACE_MSR")?;
    let mut g = rdmsr_guest(host, MSR_STAR)?;
    enable_user_msr(&g, KVM_MSR_EXIT_REASON_FILTER)?;
    deny_star_read(&g)?;
    let (reason, index, _) = msr_exit(&g.run()?, false)?;
    ensure_eq!(
        reason,
        KVM_MSR_EXIT_REASON_FILTER,
        "msr.reason of the exit for a filtered RDMSR"
    );
    ensure_eq!(
        index,
        MSR_STAR,
        "msr.index of the exit for a filtered RDMSR"
    );
    Ok(())
}

pub(super) fn msr_filter_gp(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_X86_MSR_FILTER, "X86_MSR_FILTER")?;
    let mut g = rdmsr_guest(host, MSR_STAR)?;
    deny_star_read(&g)?;
    g.run_to_hlt()?;
    ensure_eq!(
        g.stub_vector()?,
        Some(13u8),
        "stub reached by RDMSR of a filtered MSR (#GP = 13)"
    );
    Ok(())
}

pub(super) fn msr_filter_allows_others(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_X86_MSR_FILTER, "X86_MSR_FILTER")?;
    let mut g = rdmsr_guest(host, MSR_LSTAR)?;
    let m = kvmconf_harness::abi::Msrs::from_entries(&[kvmconf_harness::abi::kvm_msr_entry {
        index: MSR_LSTAR,
        data: 0xffff_8000_0000_1230,
        ..Default::default()
    }])
    .expect("one entry");
    g.vcpu().try_set_msrs(&m)?;
    deny_star_read(&g)?;
    g.run_to_hlt()?;
    ensure_eq!(
        g.stub_vector()?,
        None,
        "stub reached by RDMSR of LSTAR, outside the filter's denied bit"
    );
    let r = g.regs()?;
    ensure_eq!(
        (r.rdx << 32) | (r.rax & 0xffff_ffff),
        0xffff_8000_0000_1230u64,
        "edx:eax from RDMSR LSTAR"
    );
    Ok(())
}

pub(super) fn msr_filter_default_deny_empty(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_X86_MSR_FILTER, "X86_MSR_FILTER")?;
    let vm = host.try_create_vm()?;
    match vm.try_set_msr_filter(MsrFilterDefaultAction::DENY, &[]) {
        Ok(()) => Err(Fail::failed(
            "KVM_X86_SET_MSR_FILTER with KVM_MSR_FILTER_DEFAULT_DENY and no ranges: wanted an error, got success",
        )),
        Err(e) => {
            ensure_eq!(
                e.errno(),
                libc::EINVAL,
                "errno of KVM_X86_SET_MSR_FILTER(DEFAULT_DENY, no ranges)"
            );
            Ok(())
        }
    }
}

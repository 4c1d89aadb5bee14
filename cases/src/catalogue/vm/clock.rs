//! KVM_GET/SET_CLOCK, KVM_SET_TSS_ADDR, KVM_SET_IDENTITY_MAP_ADDR and KVM_ENABLE_CAP on a VM fd.

use super::*;

pub(super) fn clock_vm(host: &Host) -> Result<Vm, Fail> {
    require_cap(host, KVM_CAP_ADJUST_CLOCK, "ADJUST_CLOCK")?;
    new_vm(host)
}

pub(super) fn get_clock(vm: &Vm) -> Result<kvm_clock_data, Fail> {
    vm.try_get_clock().map_err(ioctl("KVM_GET_CLOCK"))
}

pub(super) fn get_clock_monotonic(host: &Host) -> Outcome {
    let vm = clock_vm(host)?;
    let mut last = get_clock(&vm)?.clock;
    for i in 0..100 {
        let now = get_clock(&vm)?.clock;
        ensure!(
            now >= last,
            "KVM_GET_CLOCK read {i}: {now} after {last} (went backwards)"
        );
        last = now;
    }
    Ok(())
}

pub(super) fn get_clock_advances_with_time(host: &Host) -> Outcome {
    let vm = clock_vm(host)?;
    let t0 = Instant::now();
    let c0 = get_clock(&vm)?.clock;
    std::thread::sleep(Duration::from_millis(20));
    let c1 = get_clock(&vm)?.clock;
    let wall = t0.elapsed().as_nanos() as u64;
    let d = c1.saturating_sub(c0);
    ensure!(
        d + 2_000_000 >= 20_000_000 && d <= wall + 2_000_000,
        "kvmclock advanced {d} ns over a 20 ms sleep ({wall} ns of CLOCK_MONOTONIC): wanted 20 ms..{wall} ns ± 2 ms"
    );
    Ok(())
}

pub(super) fn get_clock_flags_within_cap(host: &Host) -> Outcome {
    let vm = clock_vm(host)?;
    let allowed = host.check_raw(KVM_CAP_ADJUST_CLOCK) as u32;
    let flags = get_clock(&vm)?.flags;
    ensure!(
        flags & !allowed == 0,
        "KVM_GET_CLOCK flags {flags:#x}: wanted a subset of KVM_CHECK_EXTENSION(KVM_CAP_ADJUST_CLOCK) = {allowed:#x}"
    );
    Ok(())
}

pub(super) fn set_clock_then_get(host: &Host) -> Outcome {
    let vm = clock_vm(host)?;
    for target in [1_000_000_000_000u64, 5_000_000] {
        let t0 = Instant::now();
        vm.try_set_clock(&kvm_clock_data {
            clock: target,
            ..Default::default()
        })?;
        let got = get_clock(&vm)?.clock;
        let slack = t0.elapsed().as_nanos() as u64 + 1_000_000;
        ensure!(
            got >= target && got <= target + slack,
            "KVM_GET_CLOCK right after KVM_SET_CLOCK({target}): wanted {target}..{}, got {got}",
            target + slack
        );
    }
    Ok(())
}

// ---- KVM_SET_TSS_ADDR / KVM_SET_IDENTITY_MAP_ADDR ----

pub(super) fn set_tss_addr_below_4g(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_SET_TSS_ADDR, "SET_TSS_ADDR")?;
    let vm = new_vm(host)?;
    vm.try_set_tss_address(0xfffb_d000)
        .map_err(ioctl("KVM_SET_TSS_ADDR 0xfffbd000"))?;
    Ok(())
}

pub(super) fn set_identity_map_addr_before_vcpu(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_SET_IDENTITY_MAP_ADDR, "SET_IDENTITY_MAP_ADDR")?;
    let vm = new_vm(host)?;
    vm.try_set_identity_map_address(0xfeff_c000)
        .map_err(ioctl("KVM_SET_IDENTITY_MAP_ADDR 0xfeffc000"))?;
    vm.try_set_identity_map_address(0)
        .map_err(ioctl("KVM_SET_IDENTITY_MAP_ADDR 0 (reset to the default)"))?;
    Ok(())
}

pub(super) fn set_identity_map_addr_after_vcpu_fails(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_SET_IDENTITY_MAP_ADDR, "SET_IDENTITY_MAP_ADDR")?;
    let vm = new_vm(host)?;
    let _vcpu = vm.try_create_vcpu(0)?;
    ensure!(
        vm.try_set_identity_map_address(0xfeff_c000).is_err(),
        "KVM_SET_IDENTITY_MAP_ADDR after KVM_CREATE_VCPU: wanted an error, got success"
    );
    Ok(())
}

// ---- KVM_ENABLE_CAP ----

pub(super) fn enable_cap_unknown_cap_einval(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_ENABLE_CAP_VM, "ENABLE_CAP_VM")?;
    let vm = new_vm(host)?;
    let r = vm.try_enable_cap(&kvm_enable_cap {
        cap: UNKNOWN_CAP,
        ..Default::default()
    });
    expect_errno(
        r.err().map(|e| e.errno()),
        libc::EINVAL,
        &format!("KVM_ENABLE_CAP({UNKNOWN_CAP:#x}) on a VM fd"),
    )?;
    vm.try_create_vcpu(0)
        .map_err(ioctl("KVM_CREATE_VCPU after the rejected KVM_ENABLE_CAP"))?;
    Ok(())
}

pub(super) fn enable_cap_nonzero_flags_einval(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_ENABLE_CAP_VM, "ENABLE_CAP_VM")?;
    require_cap(host, KVM_CAP_X86_USER_SPACE_MSR, "X86_USER_SPACE_MSR")?;
    let vm = new_vm(host)?;
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_X86_USER_SPACE_MSR,
        flags: 1,
        ..Default::default()
    };
    cap.args[0] = u64::from(KVM_MSR_EXIT_REASON_UNKNOWN);
    expect_errno(
        vm.try_enable_cap(&cap).err().map(|e| e.errno()),
        libc::EINVAL,
        "KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR) with flags 1 (must be 0)",
    )?;
    cap.flags = 0;
    vm.try_enable_cap(&cap).map_err(ioctl(
        "KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR) with flags 0",
    ))?;
    Ok(())
}

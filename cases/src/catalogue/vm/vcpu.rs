//! KVM_CREATE_VCPU on a VM fd: the recommended count, the id range, the max_vcpus limit and
//! duplicate ids.

use super::*;

pub(super) fn new_vm(host: &Host) -> Result<Vm, Fail> {
    host.try_create_vm().map_err(ioctl("KVM_CREATE_VM"))
}

pub(super) fn create_vcpu_recommended_count_succeeds(host: &Host) -> Outcome {
    let n = match host.check_raw(KVM_CAP_NR_VCPUS) {
        0 => 4,
        n => n,
    } as u64;
    let vm = new_vm(host)?;
    let mut vcpus = Vec::new();
    for id in 0..n {
        vcpus.push(vm.try_create_vcpu(id).map_err(|e| {
            Fail::failed(format!(
                "KVM_CREATE_VCPU id {id} of the recommended {n}: {}",
                e.os_error()
            ))
        })?);
    }
    Ok(())
}

pub(super) fn create_vcpu_last_valid_id_succeeds(host: &Host) -> Outcome {
    let last = max_vcpu_id(host) as u64 - 1;
    let vm = new_vm(host)?;
    let v = vm.try_create_vcpu(last).map_err(|e| {
        Fail::failed(format!(
            "KVM_CREATE_VCPU id {last} (max_vcpu_id - 1): {}",
            e.os_error()
        ))
    })?;
    v.try_get_regs()
        .map_err(ioctl("KVM_GET_REGS on the new vCPU"))?;
    Ok(())
}

pub(super) fn create_vcpu_id_out_of_range_einval(host: &Host) -> Outcome {
    let max = max_vcpu_id(host) as u64;
    let vm = new_vm(host)?;
    for id in [max, max + 1, 1 << 32, u64::from(u32::MAX)] {
        let what = format!("KVM_CREATE_VCPU id {id:#x} (max_vcpu_id {max})");
        expect_einval_not_made(
            vm.try_create_vcpu(id).map(drop).map_err(|e| e.errno()),
            &what,
            || format!("{what}: wanted EINVAL, got a vCPU"),
        )?;
    }
    // The rejected ids used up nothing: the full recommended count can still be created.
    let n = match host.check_raw(KVM_CAP_NR_VCPUS) {
        0 => 4,
        n => n,
    } as u64;
    let mut vcpus = Vec::new();
    for id in 0..n {
        vcpus.push(
            vm.try_create_vcpu(id)
                .map_err(ioctl("KVM_CREATE_VCPU after the rejected ids"))?,
        );
    }
    Ok(())
}

/// The `i`-th of `n` vCPU ids spread evenly over [0, `max_id`): 0 first, `max_id` - 1 last.
pub(super) fn spread_id(i: u64, n: u64, max_id: u64) -> u64 {
    if n <= 1 {
        0
    } else {
        i * (max_id - 1) / (n - 1)
    }
}

pub(super) fn create_vcpu_max_vcpus_succeed_one_more_einval(host: &Host) -> Outcome {
    let (max, max_id) = (max_vcpus(host) as u64, max_vcpu_id(host) as u64);
    // One fd per vCPU, the VM's, /dev/kvm's and the process's own.
    let need = max + 64;
    let limit =
        kvmconf_harness::rlimit::raise_open_files(need).map_err(|e| Fail::failed(e.to_string()))?;
    ensure!(
        limit.soft >= need,
        "RLIMIT_NOFILE: wanted a hard limit of at least {need} for {max} vCPU fds, got {}",
        limit.hard
    );
    let vm = new_vm(host)?;
    let ids: Vec<u64> = (0..max).map(|i| spread_id(i, max, max_id)).collect();
    let mut vcpus = Vec::with_capacity(ids.len());
    for (n, &id) in ids.iter().enumerate() {
        vcpus.push(vm.try_create_vcpu(id).map_err(|e| {
            Fail::failed(format!(
                "KVM_CREATE_VCPU id {id} (vCPU {} of KVM_CAP_MAX_VCPUS = {max}, ids spread over \
                 [0, {max_id})): {}",
                n + 1,
                e.os_error()
            ))
        })?);
    }
    // One more, with an id in range that is not taken (when the ids leave one free).
    if let Some(extra) = (0..max_id).find(|id| ids.binary_search(id).is_err()) {
        match vm.try_create_vcpu(extra) {
            Ok(_) => {
                return Err(Fail::failed(format!(
                    "KVM_CREATE_VCPU id {extra} with KVM_CAP_MAX_VCPUS = {max} vCPUs already \
                     created: wanted EINVAL, got a vCPU"
                )));
            }
            Err(e) => expect_errno(
                Some(e.errno()),
                libc::EINVAL,
                &format!("KVM_CREATE_VCPU id {extra} beyond KVM_CAP_MAX_VCPUS = {max} vCPUs"),
            )?,
        }
    }
    // The rejected creation changed nothing: the first and last vCPUs still answer.
    for (v, id) in [
        (&vcpus[0], ids[0]),
        (&vcpus[vcpus.len() - 1], ids[ids.len() - 1]),
    ] {
        v.try_get_regs().map_err(|e| {
            Fail::failed(format!(
                "KVM_GET_REGS on vCPU id {id} after the rejected creation: {}",
                e.os_error()
            ))
        })?;
    }
    Ok(())
}

pub(super) fn create_vcpu_duplicate_id_eexist(host: &Host) -> Outcome {
    let vm = new_vm(host)?;
    let first = vm
        .try_create_vcpu(1)
        .map_err(ioctl("KVM_CREATE_VCPU id 1"))?;
    let mut regs = first.try_get_regs()?;
    regs.rax = 0x1234_5678;
    first.try_set_regs(&regs)?;
    match vm.try_create_vcpu(1) {
        Ok(_) => {
            return Err(Fail::failed(
                "second KVM_CREATE_VCPU id 1: wanted EEXIST, got a vCPU",
            ));
        }
        Err(e) => expect_errno(Some(e.errno()), libc::EEXIST, "second KVM_CREATE_VCPU id 1")?,
    }
    let after = first.try_get_regs()?;
    ensure_eq!(
        after.rax,
        0x1234_5678,
        "the first vCPU's rax after the rejected duplicate"
    );
    vm.try_create_vcpu(0)
        .map_err(ioctl("KVM_CREATE_VCPU id 0 after the duplicate"))?;
    Ok(())
}

//! Raw kvm-ioctls loops for `kvmconf bench`: the ioctls the harness issues for a trivial case, with
//! none of its bookkeeping, so the benchmark can say what the harness itself costs.

use crate::kvm::{KvmError, TSS_ADDR};
use crate::memory::GuestMemory;
use kvm_bindings::{
    CpuId, KVM_MEM_LOG_DIRTY_PAGES, kvm_regs, kvm_sregs, kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use kvmconf_guests::layout::GuestModel;

fn err(ioctl: &'static str) -> impl Fn(kvm_ioctls::Error) -> KvmError {
    move |e| KvmError::Ioctl {
        ioctl,
        errno: e.errno(),
    }
}

fn run_to_hlt(vcpu: &mut VcpuFd) -> Result<u64, KvmError> {
    let mut outs = 0;
    loop {
        match vcpu.run().map_err(err("KVM_RUN"))? {
            VcpuExit::IoOut(..) => outs += 1,
            VcpuExit::Hlt => return Ok(outs),
            other => {
                return Err(KvmError::Ioctl {
                    ioctl: "KVM_RUN (unexpected exit in baseline)",
                    errno: format!("{other:?}").len() as i32,
                });
            }
        }
    }
}

/// Stages regs, sregs and events in kvm_run.s (the harness's path when KVM_CAP_SYNC_REGS allows).
fn stage(v: &mut RawVm, events: &kvm_bindings::kvm_vcpu_events) {
    use kvm_ioctls::SyncReg;
    let (regs, sregs) = (v.regs, v.sregs);
    let s = v.vcpu.sync_regs_mut();
    s.regs = regs;
    s.sregs = sregs;
    s.events = *events;
    for r in [
        SyncReg::Register,
        SyncReg::SystemRegister,
        SyncReg::VcpuEvents,
    ] {
        v.vcpu.set_sync_dirty_reg(r);
    }
}

struct RawVm {
    vcpu: VcpuFd,
    vm: VmFd,
    mem: GuestMemory,
    sregs: kvm_sregs,
    regs: kvm_regs,
    aux: Option<RawAux>,
}

struct RawAux {
    xsave: kvm_bindings::kvm_xsave,
    xcrs: kvm_bindings::kvm_xcrs,
    debugregs: kvm_bindings::kvm_debugregs,
    events: kvm_bindings::kvm_vcpu_events,
    msrs: kvm_bindings::Msrs,
    mp: kvm_bindings::kvm_mp_state,
}

fn create(kvm: &Kvm, cpuid: &CpuId, model: &GuestModel, dirty: bool) -> Result<RawVm, KvmError> {
    let vm = kvm.create_vm().map_err(err("KVM_CREATE_VM"))?;
    vm.set_tss_address(TSS_ADDR as usize)
        .map_err(err("KVM_SET_TSS_ADDR"))?;
    let mem = GuestMemory::new(model.layout.ram_size)?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: if dirty { KVM_MEM_LOG_DIRTY_PAGES } else { 0 },
        guest_phys_addr: 0,
        memory_size: model.layout.ram_size,
        userspace_addr: mem.host_addr(),
    };
    // SAFETY: the region is exactly `mem`, which this RawVm owns and drops after `vm`.
    unsafe { vm.set_user_memory_region(region) }.map_err(err("KVM_SET_USER_MEMORY_REGION"))?;
    let vcpu = vm.create_vcpu(0).map_err(err("KVM_CREATE_VCPU"))?;
    vcpu.set_cpuid2(cpuid).map_err(err("KVM_SET_CPUID2"))?;
    let base = vcpu.get_sregs().map_err(err("KVM_GET_SREGS"))?;
    let sregs = crate::state::to_kvm_sregs(&model.cpu, &base);
    let regs = crate::state::to_kvm_regs(&model.cpu);
    for (a, b) in &model.image {
        mem.write(*a, b)?;
    }
    Ok(RawVm {
        vcpu,
        vm,
        mem,
        sregs,
        regs,
        aux: None,
    })
}

/// Creates, runs and closes one VM per case, issuing the harness's ioctls for a fresh VM.
pub fn fresh_loop(kvm: &Kvm, cpuid: &CpuId, model: &GuestModel, n: u64) -> Result<u64, KvmError> {
    let mut outs = 0;
    for _ in 0..n {
        let mut v = create(kvm, cpuid, model, false)?;
        // The harness reads these at creation to restore them in a pool.
        v.vcpu.get_xsave().map_err(err("KVM_GET_XSAVE"))?;
        v.vcpu.get_xcrs().map_err(err("KVM_GET_XCRS"))?;
        v.vcpu.get_debug_regs().map_err(err("KVM_GET_DEBUGREGS"))?;
        let mut msrs = crate::kvm::reset_msr_list();
        v.vcpu.get_msrs(&mut msrs).map_err(err("KVM_GET_MSRS"))?;
        v.vcpu.get_mp_state().map_err(err("KVM_GET_MP_STATE"))?;
        let events = v
            .vcpu
            .get_vcpu_events()
            .map_err(err("KVM_GET_VCPU_EVENTS"))?;
        if crate::kvm::sync_regs_supported(&v.vm) {
            v.vcpu.set_sync_valid_reg(kvm_ioctls::SyncReg::Register);
            v.vcpu
                .set_sync_valid_reg(kvm_ioctls::SyncReg::SystemRegister);
            stage(&mut v, &events);
            outs += run_to_hlt(&mut v.vcpu)?;
        } else {
            v.vcpu
                .set_vcpu_events(&events)
                .map_err(err("KVM_SET_VCPU_EVENTS"))?;
            v.vcpu.set_sregs(&v.sregs).map_err(err("KVM_SET_SREGS"))?;
            v.vcpu.set_regs(&v.regs).map_err(err("KVM_SET_REGS"))?;
            outs += run_to_hlt(&mut v.vcpu)?;
            v.vcpu.get_regs().map_err(err("KVM_GET_REGS"))?;
            v.vcpu.get_sregs().map_err(err("KVM_GET_SREGS"))?;
        }
        drop(v);
    }
    Ok(outs)
}

/// Reruns the case on one VM, issuing the harness's reset ioctls between runs.
pub fn reuse_loop(kvm: &Kvm, cpuid: &CpuId, model: &GuestModel, n: u64) -> Result<u64, KvmError> {
    let mut v = create(kvm, cpuid, model, true)?;
    let mut msrs = crate::kvm::reset_msr_list();
    let got = v.vcpu.get_msrs(&mut msrs).map_err(err("KVM_GET_MSRS"))?;
    let msrs = kvm_bindings::Msrs::from_entries(&msrs.as_slice()[..got]).expect("fits");
    v.aux = Some(RawAux {
        xsave: v.vcpu.get_xsave().map_err(err("KVM_GET_XSAVE"))?,
        xcrs: v.vcpu.get_xcrs().map_err(err("KVM_GET_XCRS"))?,
        debugregs: v.vcpu.get_debug_regs().map_err(err("KVM_GET_DEBUGREGS"))?,
        events: v
            .vcpu
            .get_vcpu_events()
            .map_err(err("KVM_GET_VCPU_EVENTS"))?,
        msrs,
        mp: v.vcpu.get_mp_state().map_err(err("KVM_GET_MP_STATE"))?,
    });
    let aux = v.aux.take().expect("set above");
    let sync = crate::kvm::sync_regs_supported(&v.vm);
    if sync {
        v.vcpu.set_sync_valid_reg(kvm_ioctls::SyncReg::Register);
        v.vcpu
            .set_sync_valid_reg(kvm_ioctls::SyncReg::SystemRegister);
    }
    let mut outs = 0;
    for _ in 0..n {
        v.vm.get_dirty_log(0, model.layout.ram_size as usize)
            .map_err(err("KVM_GET_DIRTY_LOG"))?;
        for (a, b) in &model.image {
            v.mem.write(*a, b)?;
        }
        // SAFETY: `xsave` came from KVM_GET_XSAVE on this vCPU.
        unsafe { v.vcpu.set_xsave(&aux.xsave) }.map_err(err("KVM_SET_XSAVE"))?;
        v.vcpu.set_xcrs(&aux.xcrs).map_err(err("KVM_SET_XCRS"))?;
        v.vcpu
            .set_debug_regs(&aux.debugregs)
            .map_err(err("KVM_SET_DEBUGREGS"))?;
        v.vcpu.set_msrs(&aux.msrs).map_err(err("KVM_SET_MSRS"))?;
        v.vcpu
            .set_mp_state(aux.mp)
            .map_err(err("KVM_SET_MP_STATE"))?;
        if sync {
            stage(&mut v, &aux.events);
            outs += run_to_hlt(&mut v.vcpu)?;
        } else {
            v.vcpu
                .set_vcpu_events(&aux.events)
                .map_err(err("KVM_SET_VCPU_EVENTS"))?;
            v.vcpu.set_sregs(&v.sregs).map_err(err("KVM_SET_SREGS"))?;
            v.vcpu.set_regs(&v.regs).map_err(err("KVM_SET_REGS"))?;
            outs += run_to_hlt(&mut v.vcpu)?;
            v.vcpu.get_regs().map_err(err("KVM_GET_REGS"))?;
            v.vcpu.get_sregs().map_err(err("KVM_GET_SREGS"))?;
        }
    }
    Ok(outs)
}

/// Reruns the case on one VM with only KVM_SET_REGS and KVM_SET_SREGS between runs: the least a
/// VMM can do to rerun a case that is known not to touch other state (a floor, not a peer).
pub fn minimal_reuse_loop(
    kvm: &Kvm,
    cpuid: &CpuId,
    model: &GuestModel,
    n: u64,
) -> Result<u64, KvmError> {
    let mut v = create(kvm, cpuid, model, false)?;
    let mut outs = 0;
    for _ in 0..n {
        v.vcpu.set_sregs(&v.sregs).map_err(err("KVM_SET_SREGS"))?;
        v.vcpu.set_regs(&v.regs).map_err(err("KVM_SET_REGS"))?;
        outs += run_to_hlt(&mut v.vcpu)?;
    }
    Ok(outs)
}

//! Signals and KVM_RUN: a signal interrupts a spinning guest, a pending signal makes KVM_RUN
//! return EINTR, and KVM_SET_SIGNAL_MASK keeps a signal blocked while the guest runs.

use super::*;

pub(super) fn spin_guest(host: &Host) -> Result<Guest, Fail> {
    guest(host, Mode::Long64, |a| {
        let mut l = a.create_label();
        a.set_label(&mut l)?;
        a.jmp(l)
    })
}

pub(super) fn signal_interrupts_spin(host: &Host) -> Outcome {
    let mut g = spin_guest(host)?;
    let start = Instant::now();
    let d = Deadline::arm(Duration::from_millis(30))
        .map_err(|e| Fail::failed(format!("watchdog: {e}")))?;
    let r = g.vm.vcpu.run_once();
    drop(d);
    let took = start.elapsed();
    watchdog::drain();
    ensure_eq!(
        r,
        Err(libc::EINTR),
        "KVM_RUN of `jmp $` when a signal unblocked by KVM_SET_SIGNAL_MASK arrives"
    );
    ensure!(
        took >= Duration::from_millis(25) && took < Duration::from_secs(1),
        "KVM_RUN returned EINTR after {took:?}: wanted about 30 ms, when the signal came"
    );
    ensure_eq!(g.regs()?.rip, CODE, "rip of the spinning jmp");
    Ok(())
}

/// Makes the watchdog signal pending (blocked in this thread) before KVM_RUN starts.
pub(super) fn signal_pending() -> Result<Deadline, Fail> {
    let d = Deadline::arm(Duration::from_nanos(1))
        .map_err(|e| Fail::failed(format!("watchdog: {e}")))?;
    ensure!(
        watchdog::wait_pending(Duration::from_secs(1)),
        "the watchdog signal was not pending within 1 s of an expired deadline"
    );
    Ok(d)
}

pub(super) fn signal_pending_eintr(host: &Host) -> Outcome {
    let mut g = out_hlt_guest(host)?;
    let d = signal_pending()?;
    let r = g.vm.vcpu.run_once();
    drop(d);
    watchdog::drain();
    ensure_eq!(
        r,
        Err(libc::EINTR),
        "KVM_RUN with a signal pending that KVM_SET_SIGNAL_MASK unblocks"
    );
    ensure_eq!(
        g.regs()?.rip,
        CODE,
        "rip after the EINTR (the OUT did not run)"
    );
    Ok(())
}

pub(super) fn signal_mask_blocks(host: &Host) -> Outcome {
    let mut g = out_hlt_guest(host)?;
    g.vcpu()
        .try_set_signal_mask(&[watchdog::signal()], &[])
        .map_err(|e| e.errno())
        .map_err(|e| Fail::failed(format!("KVM_SET_SIGNAL_MASK failed: errno {e}")))?;
    let d = signal_pending()?;
    let r = g.vm.vcpu.run_once();
    drop(d);
    watchdog::drain();
    ensure!(
        matches!(r, Ok(KvmExit::Io { .. })),
        "KVM_RUN with a pending signal that KVM_SET_SIGNAL_MASK blocks: wanted the guest's OUT exit, got {r:?}"
    );
    Ok(())
}

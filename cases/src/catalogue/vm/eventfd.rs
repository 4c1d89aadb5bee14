//! KVM_IOEVENTFD and KVM_IRQFD: guest accesses that signal an eventfd, and eventfds that raise an
//! interrupt.

use super::*;

pub(super) fn eventfd() -> Result<EventFd, Fail> {
    EventFd::new(EFD_NONBLOCK).map_err(|e| Fail::failed(format!("eventfd: {e}")))
}

/// The eventfd counter (0 when nothing was signalled); reading resets it.
pub(super) fn drain(e: &EventFd) -> u64 {
    e.read().unwrap_or(0)
}

pub(super) const PORT: u16 = 0x1234;

pub(super) fn out_program(
    values: &'static [u32],
) -> impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError> {
    move |a| {
        a.mov(dx, u32::from(PORT))?;
        for &v in values {
            a.mov(eax, v)?;
            a.out(dx, eax)?;
        }
        a.hlt()
    }
}

/// A prot32 test VM, once KVM_CHECK_EXTENSION reports KVM_CAP_IOEVENTFD, and an eventfd.
fn ioeventfd_vm(host: &Host) -> Result<(TestVm, EventFd), Fail> {
    require_cap(host, KVM_CAP_IOEVENTFD, "IOEVENTFD")?;
    Ok((test_vm(host, Mode::Prot32, false)?, eventfd()?))
}

/// Checks the exits that reached the VMM in `r`, then the counter of `e` (`what` and
/// `count_what` name them in a failure).
fn exits_and_count(
    r: &CaseResult,
    exits: Vec<Event>,
    what: &str,
    e: &EventFd,
    count: u64,
    count_what: &str,
) -> Outcome {
    ensure_eq!(r.trace, exits, "{what}");
    ensure_eq!(drain(e), count, "{count_what}");
    Ok(())
}

pub(super) fn ioeventfd_pio_signals_without_exit(host: &Host) -> Outcome {
    let (mut vm, e) = ioeventfd_vm(host)?;
    vm.try_register_ioevent(&e, &IoEventAddress::Pio(PORT.into()), NoDatamatch)?;
    let r = run32(&mut vm, "out", out_program(&[0x42]))?;
    exits_and_count(
        &r,
        Vec::<Event>::new(),
        "exits for an OUT to a port with an ioeventfd",
        &e,
        1,
        "eventfd counter after one guest OUT",
    )
}

pub(super) fn ioeventfd_mmio_signals_without_exit(host: &Host) -> Outcome {
    let (mut vm, e) = ioeventfd_vm(host)?;
    vm.try_register_ioevent(&e, &IoEventAddress::Mmio(MMIO_GPA), 0x77u32)?;
    let r = run32(&mut vm, "mmio", |a| {
        a.mov(dword_ptr(MMIO_GPA), 0x77u32)?;
        a.mov(dword_ptr(MMIO_GPA), 0x77u32)?;
        a.hlt()
    })?;
    exits_and_count(
        &r,
        Vec::<Event>::new(),
        "exits for MMIO writes to an address with an ioeventfd",
        &e,
        2,
        "eventfd counter after two guest MMIO writes",
    )
}

pub(super) fn ioeventfd_datamatch_selects(host: &Host) -> Outcome {
    let (mut vm, e) = ioeventfd_vm(host)?;
    vm.try_register_ioevent(&e, &IoEventAddress::Pio(PORT.into()), 0x42u32)?;
    let r = run32(&mut vm, "out", out_program(&[0x41, 0x42, 0x4200_0042]))?;
    exits_and_count(
        &r,
        vec![
            Event::io_out(PORT, 4, 0x41),
            Event::io_out(PORT, 4, 0x4200_0042),
        ],
        "OUTs that reach the VMM (datamatch 0x42 takes only 0x42)",
        &e,
        1,
        "eventfd counter",
    )
}

pub(super) fn ioeventfd_deassign_stops(host: &Host) -> Outcome {
    let (mut vm, e) = ioeventfd_vm(host)?;
    let addr = IoEventAddress::Pio(PORT.into());
    vm.try_register_ioevent(&e, &addr, NoDatamatch)?;
    vm.try_unregister_ioevent(&e, &addr, NoDatamatch)
        .map_err(ioctl("KVM_IOEVENTFD (KVM_IOEVENTFD_FLAG_DEASSIGN)"))?;
    let r = run32(&mut vm, "out", out_program(&[0x42]))?;
    exits_and_count(
        &r,
        vec![Event::io_out(PORT, 4, 0x42)],
        "OUT after the ioeventfd was deassigned",
        &e,
        0,
        "eventfd counter after deassign",
    )
}

pub(super) fn ioeventfd_invalid_len_einval(host: &Host) -> Outcome {
    let (mut vm, e) = ioeventfd_vm(host)?;
    for len in [3u32, 5, 16] {
        let args = kvm_ioeventfd {
            datamatch: 0,
            addr: u64::from(PORT),
            len,
            fd: std::os::fd::AsRawFd::as_raw_fd(&e),
            flags: 1 << kvmconf_harness::abi::kvm_ioeventfd_flag_nr_pio,
            ..Default::default()
        };
        let r = vm.try_ioeventfd(&args).err().map(|e| e.errno());
        expect_errno(
            r,
            libc::EINVAL,
            &format!("KVM_IOEVENTFD with len {len} (0, 1, 2, 4 or 8 allowed)"),
        )?;
    }
    let r = run32(&mut vm, "out", out_program(&[0x42]))?;
    exits_and_count(
        &r,
        vec![Event::io_out(PORT, 4, 0x42)],
        "OUT after the rejected registrations",
        &e,
        0,
        "eventfd counter",
    )
}

// ---- KVM_IRQFD ----

/// Signals `e` once (adds 1 to its counter).
fn signal(e: &EventFd) -> Outcome {
    e.write(1)
        .map_err(|err| Fail::failed(format!("eventfd write: {err}")))
}

pub(super) fn wait_irr(vm: &Vm, bit: u8, within: Duration) -> Result<bool, Fail> {
    let start = Instant::now();
    loop {
        if pic_irr(vm)? & (1 << bit) != 0 {
            return Ok(true);
        }
        if start.elapsed() > within {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub(super) fn irqfd_signal_raises_pic_irr(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_IRQFD, "IRQFD")?;
    let vm = irqchip_vm(host)?;
    let e = eventfd()?;
    vm.try_register_irqfd(&e, 5)?;
    signal(&e)?;
    ensure!(
        wait_irr(&vm, 5, Duration::from_millis(200))?,
        "PIC1 IRR bit 5 within 200 ms of signalling the irqfd for GSI 5: wanted set, got {:#04x}",
        pic_irr(&vm)?
    );
    Ok(())
}

pub(super) fn irqfd_deassign_stops_injection(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_IRQFD, "IRQFD")?;
    let vm = irqchip_vm(host)?;
    let e = eventfd()?;
    vm.try_register_irqfd(&e, 6)?;
    vm.try_unregister_irqfd(&e, 6)
        .map_err(ioctl("KVM_IRQFD (KVM_IRQFD_FLAG_DEASSIGN)"))?;
    signal(&e)?;
    ensure!(
        !wait_irr(&vm, 6, Duration::from_millis(30))?,
        "PIC1 IRR after signalling a deassigned irqfd for GSI 6: wanted bit 6 clear, got {:#04x}",
        pic_irr(&vm)?
    );
    // The GSI itself still works.
    vm.try_irq_line(6, true)?;
    vm.try_irq_line(6, false)?;
    ensure_eq!(
        pic_irr(&vm)? & (1 << 6),
        1 << 6,
        "PIC1 IRR bit 6 after KVM_IRQ_LINE"
    );
    Ok(())
}

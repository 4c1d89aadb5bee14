//! KVM_EXIT_IO: OUT and IN of every size, REP OUTS/INS in both directions, and IN completed by an
//! immediate_exit run.

use super::*;

pub(super) fn io_out_sizes(host: &Host) -> Outcome {
    for mode in [Mode::Real16, Mode::Prot32, Mode::Long64] {
        let mut g = guest(host, mode, |a| {
            a.mov(eax, 0x1122_3344u32)?;
            a.out(0x80, al)?;
            a.mov(dx, 0x3f8u32)?;
            a.out(dx, ax)?;
            a.out(dx, eax)?;
            a.hlt()
        })?;
        for (size, port, want) in [
            (1u8, 0x80u16, vec![0x44u8]),
            (2, 0x3f8, vec![0x44, 0x33]),
            (4, 0x3f8, vec![0x44, 0x33, 0x22, 0x11]),
        ] {
            let e = g.run()?;
            let (count, off) = io_exit(&e, false, size, port)?;
            ensure_eq!(count, 1u32, "{mode:?} OUT {size} bytes: count");
            ensure_eq!(
                hex(&g.io_data(size, count, off)?),
                hex(&want),
                "{mode:?} OUT {size} bytes: data at data_offset"
            );
        }
        g.run_to_hlt()?;
    }
    Ok(())
}

pub(super) fn io_in_sizes(host: &Host) -> Outcome {
    let mut g = guest(host, Mode::Long64, |a| {
        a.mov(rax, 0x1122_3344_5566_7788u64)?;
        a.in_(al, 0x60)?;
        a.mov(rbx, rax)?;
        a.mov(dx, 0x64u32)?;
        a.in_(ax, dx)?;
        a.mov(rcx, rax)?;
        a.in_(eax, dx)?;
        a.hlt()
    })?;
    for (size, port, data) in [
        (1u8, 0x60u16, vec![0xabu8]),
        (2, 0x64, vec![0xef, 0xcd]),
        (4, 0x64, vec![0x67, 0x45, 0x23, 0x01]),
    ] {
        let e = g.run()?;
        let (count, off) = io_exit(&e, true, size, port)?;
        ensure_eq!(count, 1u32, "IN {size} bytes: count");
        g.set_io_data(off, &data)?;
    }
    g.run_to_hlt()?;
    let r = g.regs()?;
    ensure_eq!(
        r.rbx,
        0x1122_3344_5566_77abu64,
        "rbx = rax after IN al (upper 56 bits kept)"
    );
    ensure_eq!(
        r.rcx,
        0x1122_3344_5566_cdefu64,
        "rcx = rax after IN ax (upper 48 bits kept)"
    );
    ensure_eq!(
        r.rax,
        0x0123_4567u64,
        "rax after IN eax (zero-extended to 64 bits)"
    );
    Ok(())
}

/// Runs a string-I/O guest to HLT, serving each IO exit; returns (bytes out, exits).
pub(super) fn serve_string_io(
    g: &mut Guest,
    input: bool,
    size: u8,
    port: u16,
    mut feed: Vec<u8>,
) -> Result<(Vec<u8>, u32), Fail> {
    let (mut out, mut total) = (Vec::new(), 0u32);
    for _ in 0..64 {
        let e = g.run()?;
        if e == KvmExit::Hlt {
            return Ok((out, total));
        }
        let (count, off) = io_exit(&e, input, size, port)?;
        total += count;
        let n = usize::from(size) * count as usize;
        if input {
            ensure!(
                feed.len() >= n,
                "the guest asked for {total} elements, more than the string's"
            );
            let chunk: Vec<u8> = feed.drain(..n).collect();
            g.set_io_data(off, &chunk)?;
        } else {
            out.extend(g.io_data(size, count, off)?);
        }
    }
    Err(Fail::failed(
        "string I/O did not reach the HLT within 64 exits",
    ))
}

pub(super) fn io_rep_outsb(host: &Host) -> Outcome {
    let mut c = long64_case(|a| {
        a.mov(esi, BUF as u32)?;
        a.mov(ecx, 4u32)?;
        a.mov(dx, 0xe9u32)?;
        a.rep().outsb()?;
        a.hlt()
    })?;
    c.memory.push(mem(BUF, b"abcd".to_vec()));
    let mut g = Guest::boot(host, &c)?;
    let (out, total) = serve_string_io(&mut g, false, 1, 0xe9, vec![])?;
    ensure_eq!(
        total,
        4u32,
        "sum of KVM_EXIT_IO counts for rep outsb with rcx = 4"
    );
    ensure_eq!(
        String::from_utf8_lossy(&out),
        "abcd",
        "bytes written by rep outsb"
    );
    let r = g.regs()?;
    ensure_eq!(
        (r.rcx, r.rsi),
        (0u64, BUF + 4),
        "(rcx, rsi) after rep outsb"
    );
    Ok(())
}

pub(super) fn io_rep_outsb_backwards(host: &Host) -> Outcome {
    let mut c = long64_case(|a| {
        a.std()?;
        a.mov(esi, BUF as u32 + 3)?;
        a.mov(ecx, 4u32)?;
        a.mov(dx, 0xe9u32)?;
        a.rep().outsb()?;
        a.cld()?;
        a.hlt()
    })?;
    c.memory.push(mem(BUF, b"abcd".to_vec()));
    let mut g = Guest::boot(host, &c)?;
    let (out, total) = serve_string_io(&mut g, false, 1, 0xe9, vec![])?;
    ensure_eq!(total, 4u32, "sum of KVM_EXIT_IO counts for std; rep outsb");
    ensure_eq!(
        String::from_utf8_lossy(&out),
        "dcba",
        "bytes written by rep outsb with DF = 1"
    );
    ensure_eq!(g.regs()?.rsi, BUF - 1, "rsi after rep outsb with DF = 1");
    Ok(())
}

pub(super) fn io_rep_insw(host: &Host) -> Outcome {
    let mut g = guest(host, Mode::Long64, |a| {
        a.mov(edi, BUF as u32)?;
        a.mov(ecx, 3u32)?;
        a.mov(dx, 0x70u32)?;
        a.rep().insw()?;
        a.hlt()
    })?;
    let data = vec![0x11, 0x12, 0x21, 0x22, 0x31, 0x32];
    let (_, total) = serve_string_io(&mut g, true, 2, 0x70, data.clone())?;
    ensure_eq!(
        total,
        3u32,
        "sum of KVM_EXIT_IO counts for rep insw with rcx = 3"
    );
    ensure_eq!(
        hex(&g.read(BUF, 6)?),
        hex(&data),
        "memory written by rep insw"
    );
    let r = g.regs()?;
    ensure_eq!((r.rcx, r.rdi), (0u64, BUF + 6), "(rcx, rdi) after rep insw");
    Ok(())
}

pub(super) fn immediate_exit_completes_in(host: &Host) -> Outcome {
    let mut g = guest(host, Mode::Long64, |a| {
        a.xor(eax, eax)?;
        a.in_(al, 0x61)?;
        a.out(0x80, al)?;
        a.hlt()
    })?;
    let e = g.run()?;
    let (_, off) = io_exit(&e, true, 1, 0x61)?;
    g.set_io_data(off, &[0x5a])?;
    g.vm.vcpu.set_immediate_exit(true);
    let r = g.vm.vcpu.run_once();
    g.vm.vcpu.set_immediate_exit(false);
    ensure_eq!(
        r,
        Err(libc::EINTR),
        "KVM_RUN with immediate_exit after an IN exit"
    );
    let regs = g.regs()?;
    ensure_eq!(
        regs.rax & 0xff,
        0x5au64,
        "al: the IN completed on the KVM_RUN that returned EINTR"
    );
    ensure_eq!(regs.rip, CODE + 4, "rip past the IN (and not past the OUT)");
    Ok(())
}

//! KVM_GET_STATS_FD on VM and vCPU fds: the binary statistics header, descriptors, id string and
//! counters.

use super::*;

pub(super) struct Stats {
    file: Vec<u8>,
    name_size: usize,
    num_desc: usize,
    id_offset: usize,
    desc_offset: usize,
    data_offset: usize,
}

pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

pub(super) fn read_stats(mut f: std::fs::File) -> Result<Stats, Fail> {
    let mut file = Vec::new();
    f.read_to_end(&mut file)
        .map_err(|e| Fail::failed(format!("reading the stats fd: {e}")))?;
    ensure!(
        file.len() >= 24,
        "stats fd: wanted at least the 24-byte header, got {} bytes",
        file.len()
    );
    ensure_eq!(u32_at(&file, 0), 0, "stats header flags");
    Ok(Stats {
        name_size: u32_at(&file, 4) as usize,
        num_desc: u32_at(&file, 8) as usize,
        id_offset: u32_at(&file, 12) as usize,
        desc_offset: u32_at(&file, 16) as usize,
        data_offset: u32_at(&file, 20) as usize,
        file,
    })
}

impl Stats {
    fn desc_size(&self) -> usize {
        16 + self.name_size
    }

    /// (name, flags, exponent, size, offset) of each descriptor.
    fn descs(&self) -> Vec<(String, u32, i16, u16, u32)> {
        (0..self.num_desc)
            .map(|i| {
                let at = self.desc_offset + i * self.desc_size();
                let b = &self.file[at..at + self.desc_size()];
                let name = &b[16..];
                let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
                (
                    String::from_utf8_lossy(&name[..end]).into_owned(),
                    u32_at(b, 0),
                    i16::from_le_bytes([b[4], b[5]]),
                    u16::from_le_bytes([b[6], b[7]]),
                    u32_at(b, 8),
                )
            })
            .collect()
    }

    fn data_len(&self) -> usize {
        self.descs()
            .iter()
            .map(|d| usize::from(d.3) * 8 + d.4 as usize)
            .max()
            .unwrap_or(0)
    }

    fn id(&self) -> String {
        let b = &self.file[self.id_offset..self.id_offset + self.name_size];
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    }

    fn value(&self, name: &str) -> Option<u64> {
        let d = self.descs().into_iter().find(|d| d.0 == name)?;
        let at = self.data_offset + d.4 as usize;
        self.file
            .get(at..at + 8)
            .map(|s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
    }

    /// The header's layout rules (api.rst 4.133).
    fn check_layout(&self, what: &str) -> Outcome {
        ensure!(self.name_size > 0, "{what}: name_size 0");
        ensure!(self.num_desc > 0, "{what}: num_desc 0");
        for (n, o) in [
            ("id_offset", self.id_offset),
            ("desc_offset", self.desc_offset),
            ("data_offset", self.data_offset),
        ] {
            ensure_eq!(o % 8, 0, "{what}: {n} {o:#x} modulo 8");
        }
        let id_end = self.id_offset + self.name_size;
        let desc_end = self.desc_offset + self.num_desc * self.desc_size();
        ensure!(
            self.id_offset >= 24,
            "{what}: id block at {:#x} overlaps the 24-byte header",
            self.id_offset
        );
        ensure!(
            id_end <= self.desc_offset,
            "{what}: id block {:#x}..{id_end:#x} overlaps or follows the descriptors at {:#x}",
            self.id_offset,
            self.desc_offset
        );
        ensure!(
            desc_end <= self.data_offset,
            "{what}: descriptors {:#x}..{desc_end:#x} overlap or follow the data at {:#x}",
            self.desc_offset,
            self.data_offset
        );
        ensure!(
            desc_end <= self.file.len(),
            "{what}: descriptors end at {desc_end:#x}, past the file's {:#x} bytes",
            self.file.len()
        );
        let data_end = self.data_offset + self.data_len();
        ensure!(
            data_end <= self.file.len(),
            "{what}: data ends at {data_end:#x}, past the file's {:#x} bytes",
            self.file.len()
        );
        Ok(())
    }

    fn check_descs(&self, what: &str) -> Outcome {
        let mut names = std::collections::BTreeSet::new();
        let mut last_off = None;
        for (name, flags, _exp, size, off) in self.descs() {
            ensure!(!name.is_empty(), "{what}: a descriptor with an empty name");
            ensure!(
                names.insert(name.clone()),
                "{what}: statistic {name} described twice"
            );
            let ty = flags & kvmconf_harness::abi::KVM_STATS_TYPE_MASK;
            let unit = flags & kvmconf_harness::abi::KVM_STATS_UNIT_MASK;
            let base = flags & kvmconf_harness::abi::KVM_STATS_BASE_MASK;
            ensure!(
                ty <= kvmconf_harness::abi::KVM_STATS_TYPE_MAX,
                "{what}: {name}: type {ty:#x} beyond KVM_STATS_TYPE_MAX"
            );
            ensure!(
                unit <= kvmconf_harness::abi::KVM_STATS_UNIT_MAX,
                "{what}: {name}: unit {unit:#x} beyond KVM_STATS_UNIT_MAX"
            );
            ensure!(
                base <= kvmconf_harness::abi::KVM_STATS_BASE_MAX,
                "{what}: {name}: base {base:#x} beyond KVM_STATS_BASE_MAX"
            );
            ensure!(size >= 1, "{what}: {name}: size 0");
            if ty <= kvmconf_harness::abi::KVM_STATS_TYPE_PEAK {
                ensure_eq!(
                    size,
                    1,
                    "{what}: {name}: size of a cumulative/instant/peak statistic"
                );
            }
            ensure_eq!(
                off % 8,
                0,
                "{what}: {name}: data offset modulo 8 (u64 values)"
            );
            if let Some(l) = last_off {
                if off <= l {
                    return Err(Fail::field(
                        format!("{what}: {name}: data offset"),
                        format!("after the previous statistic's {l:#x}"),
                        format!("{off:#x}"),
                        " (same order as the descriptors)",
                    ));
                }
            }
            last_off = Some(off);
        }
        Ok(())
    }
}

/// "kvm-{pid}{suffix}", where the pid is that of the task that created the VM (the kernel's
/// task pid: this thread's id; the process id is accepted too).
pub(super) fn ensure_id(got: &str, suffix: &str, what: &str) -> Outcome {
    let tid = format!("kvm-{}{suffix}", kvmconf_harness::watchdog::thread_id());
    let pid = format!("kvm-{}{suffix}", std::process::id());
    ensure!(
        got == tid || got == pid,
        "{what}: wanted {tid:?} (creating task) or {pid:?} (process), got {got:?}"
    );
    Ok(())
}

pub(super) fn stats_vm(host: &Host) -> Result<(Vm, Stats), Fail> {
    require_cap(host, KVM_CAP_BINARY_STATS_FD, "BINARY_STATS_FD")?;
    let vm = new_vm(host)?;
    let s = read_stats(vm.try_stats_fd().map_err(|e| Fail::failed(e.to_string()))?)?;
    Ok((vm, s))
}

pub(super) fn stats_fd_vm_header_valid(host: &Host) -> Outcome {
    let (_vm, s) = stats_vm(host)?;
    s.check_layout("VM stats")
}

pub(super) fn stats_fd_vm_id_string(host: &Host) -> Outcome {
    let (_vm, s) = stats_vm(host)?;
    ensure_id(&s.id(), "", "VM stats id string")?;
    Ok(())
}

pub(super) fn stats_fd_vm_descriptors_parse(host: &Host) -> Outcome {
    let (_vm, s) = stats_vm(host)?;
    s.check_layout("VM stats")?;
    s.check_descs("VM stats")
}

pub(super) fn stats_fd_vcpu_header_and_id(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_BINARY_STATS_FD, "BINARY_STATS_FD")?;
    let vm = new_vm(host)?;
    let vcpu = vm.try_create_vcpu(3)?;
    let s = read_stats(
        vcpu.try_stats_fd()
            .map_err(|e| Fail::failed(e.to_string()))?,
    )?;
    s.check_layout("vCPU stats")?;
    s.check_descs("vCPU stats")?;
    ensure_id(&s.id(), "/vcpu-3", "vCPU stats id string")?;
    Ok(())
}

pub(super) fn stats_fd_vcpu_cumulative_do_not_decrease(host: &Host) -> Outcome {
    require_cap(host, KVM_CAP_BINARY_STATS_FD, "BINARY_STATS_FD")?;
    let mut vm = test_vm(host, Mode::Prot32, false)?;
    let read = |vm: &TestVm| -> Result<Stats, Fail> {
        read_stats(
            vm.vcpu
                .try_stats_fd()
                .map_err(|e| Fail::failed(e.to_string()))?,
        )
    };
    let before = read(&vm)?;
    run32(&mut vm, "outs", out_program(&[1, 2, 3]))?;
    let after = read(&vm)?;
    for (name, flags, _, size, off) in before.descs() {
        if flags & kvmconf_harness::abi::KVM_STATS_TYPE_MASK
            != kvmconf_harness::abi::KVM_STATS_TYPE_CUMULATIVE
        {
            continue;
        }
        for k in 0..usize::from(size) {
            let at = before.data_offset + off as usize + 8 * k;
            let b = u64::from_le_bytes(before.file[at..at + 8].try_into().unwrap_or([0; 8]));
            let a = u64::from_le_bytes(after.file[at..at + 8].try_into().unwrap_or([0; 8]));
            ensure!(
                a >= b,
                "cumulative vCPU statistic {name}[{k}] went from {b} to {a} across a guest run"
            );
        }
    }
    if let (Some(b), Some(a)) = (before.value("exits"), after.value("exits")) {
        ensure!(
            a >= b + 4,
            "vCPU statistic exits: wanted +4 or more (3 OUTs and a HLT), went {b} -> {a}"
        );
    }
    Ok(())
}

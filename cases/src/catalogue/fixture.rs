//! A guest run by hand, for the vcpu_state and run checks: the harness builds the VM and loads a
//! case's model, then the check drives KVM_RUN itself and looks at every exit.

use crate::catalogue::harness::{case, program};
use crate::registry::{Fail, ioctl};
use iced_x86::code_asm::{CodeAssembler, IcedError};
use kvmconf_guests::case::{Case, MemInit, Mode};
use kvmconf_guests::layout::GuestModel;
use kvmconf_guests::num::HexBytes;
use kvmconf_harness::abi::{kvm_regs, kvm_sregs};
use kvmconf_harness::exit::KvmExit;
use kvmconf_harness::watchdog::{self, Deadline};
use kvmconf_harness::{Host, TestVcpu, TestVm};
use std::time::Duration;

/// How long one KVM_RUN may take before a check gives up on it.
pub const RUN_LIMIT: Duration = Duration::from_secs(2);

/// A guest-physical address for a hand-written IDT (256 long-mode gates).
pub const IDT_ADDR: u64 = 0x5000;
/// Where the hand-written handlers start, [`HANDLER_STRIDE`] bytes apart.
pub const HANDLERS: u64 = 0x6000;
/// Bytes per handler: `mov eax, vector; hlt; jmp $-1`.
pub const HANDLER_STRIDE: u64 = 8;

/// A case's guest loaded into a fresh VM, its vCPU set to the case's starting state.
pub struct Guest {
    /// The VM.
    pub vm: TestVm,
    /// The model it was loaded from.
    pub model: GuestModel,
}

impl Guest {
    /// Creates the VM for `c`, loads its image and sets its starting state.
    pub fn boot(host: &Host, c: &Case) -> Result<Guest, Fail> {
        let model = GuestModel::build(c);
        let mut vm = host.boot(&model, false)?;
        vm.vcpu.prepare_thread()?;
        vm.vcpu.set_state(&model.cpu)?;
        Ok(Guest { vm, model })
    }

    /// Boots a long64 program at the harness's code address with its stack.
    pub fn long64(
        host: &Host,
        cpl: u8,
        build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
    ) -> Result<Guest, Fail> {
        let mut c = case("guest", Mode::Long64, program(Mode::Long64, build)?);
        c.cpl = cpl;
        Guest::boot(host, &c)
    }

    /// The vCPU.
    pub fn vcpu(&self) -> &TestVcpu {
        &self.vm.vcpu
    }

    /// The vCPU, mutably (for `kvm_run` and the coalesced ring).
    pub fn vcpu_mut(&mut self) -> &mut TestVcpu {
        &mut self.vm.vcpu
    }

    /// KVM_RUN once, with a deadline of [`RUN_LIMIT`]; the raw errno on failure.
    pub fn try_run(&mut self) -> Result<KvmExit, i32> {
        let deadline = Deadline::arm(RUN_LIMIT).map_err(|_| libc::EIO)?;
        let r = self.vm.vcpu.run_once();
        drop(deadline);
        watchdog::drain();
        r
    }

    /// KVM_RUN once; any failure (including the deadline) fails the check.
    pub fn run(&mut self) -> Result<KvmExit, Fail> {
        self.try_run().map_err(|errno| {
            Fail::failed(if errno == libc::EINTR {
                format!("KVM_RUN: the guest made no exit within {RUN_LIMIT:?}")
            } else {
                format!(
                    "KVM_RUN failed: {} (errno {errno})",
                    std::io::Error::from_raw_os_error(errno)
                )
            })
        })
    }

    /// Runs and wants a HLT exit.
    pub fn run_to_hlt(&mut self) -> Result<(), Fail> {
        let e = self.run()?;
        expect_exit(&e, &KvmExit::Hlt, "exit")
    }

    /// KVM_GET_REGS.
    pub fn regs(&self) -> Result<kvm_regs, Fail> {
        self.vcpu().try_get_regs().map_err(ioctl("KVM_GET_REGS"))
    }

    /// KVM_SET_REGS.
    pub fn set_regs(&self, r: &kvm_regs) -> Result<(), Fail> {
        self.vcpu().try_set_regs(r).map_err(ioctl("KVM_SET_REGS"))
    }

    /// KVM_GET_SREGS.
    pub fn sregs(&self) -> Result<kvm_sregs, Fail> {
        self.vcpu().try_get_sregs().map_err(ioctl("KVM_GET_SREGS"))
    }

    /// The harness stub (vector) a HLT exit came from, if it came from one.
    pub fn stub_vector(&self) -> Result<Option<u8>, Fail> {
        let s = self.sregs()?;
        let r = self.regs()?;
        Ok(self
            .model
            .layout
            .stub_vector(s.cs.selector, s.cs.base, r.rip))
    }

    /// Reads guest-physical RAM.
    pub fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>, Fail> {
        let mut b = vec![0u8; len];
        self.vm
            .mem
            .read(addr, &mut b)
            .map_err(|e| Fail::failed(format!("reading guest memory at {addr:#x}: {e}")))?;
        Ok(b)
    }

    /// Reads a little-endian u64 of guest RAM.
    pub fn read_u64(&self, addr: u64) -> Result<u64, Fail> {
        let b = self.read(addr, 8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// Writes guest RAM.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), Fail> {
        self.vm
            .mem
            .write(addr, data)
            .map_err(|e| Fail::failed(format!("writing guest memory at {addr:#x}: {e}")))
    }

    /// The I/O data of the last KVM_EXIT_IO: `size * count` bytes at `data_offset`.
    pub fn io_data(&mut self, size: u8, count: u32, data_offset: u64) -> Result<Vec<u8>, Fail> {
        let area = self.vm.vcpu.run_area();
        let (at, n) = (data_offset as usize, usize::from(size) * count as usize);
        area.get(at..at + n).map(<[u8]>::to_vec).ok_or_else(|| {
            Fail::failed(format!(
                "KVM_EXIT_IO data_offset {data_offset:#x} + {n} bytes lies outside the {:#x}-byte kvm_run mapping",
                area.len()
            ))
        })
    }

    /// Fills the data of the last KVM_EXIT_IO (an IN) for the next KVM_RUN.
    pub fn set_io_data(&mut self, data_offset: u64, data: &[u8]) -> Result<(), Fail> {
        let area = self.vm.vcpu.run_area();
        let at = data_offset as usize;
        let len = area.len();
        area.get_mut(at..at + data.len())
            .ok_or_else(|| {
                Fail::failed(format!(
                    "KVM_EXIT_IO data_offset {data_offset:#x} lies outside the {len:#x}-byte mapping"
                ))
            })?
            .copy_from_slice(data);
        Ok(())
    }

    /// Installs the hand-written long-mode IDT: vector v's handler sets eax = v and halts.
    pub fn install_idt(&self) -> Result<(), Fail> {
        self.write(IDT_ADDR, &idt64())?;
        self.write(HANDLERS, &handlers())?;
        let mut s = self.sregs()?;
        s.idt.base = IDT_ADDR;
        s.idt.limit = 256 * 16 - 1;
        self.vcpu()
            .try_set_sregs(&s)
            .map_err(ioctl("KVM_SET_SREGS"))
    }

    /// After a HLT in a hand-written handler: (vector, interrupted rip, interrupted rflags).
    pub fn handled(&self) -> Result<(u8, u64, u64), Fail> {
        let r = self.regs()?;
        let at = r.rip.wrapping_sub(1);
        ensure_in_handlers(at)?;
        let vector = ((at - HANDLERS) / HANDLER_STRIDE) as u8;
        crate::ensure_eq!(
            r.rax & 0xff,
            u64::from(vector),
            "eax set by the handler the guest halted in"
        );
        Ok((vector, self.read_u64(r.rsp)?, self.read_u64(r.rsp + 16)?))
    }
}

fn ensure_in_handlers(at: u64) -> Result<(), Fail> {
    let end = HANDLERS + 256 * HANDLER_STRIDE;
    if at < HANDLERS || at >= end || (at - HANDLERS) % HANDLER_STRIDE != 5 {
        return Err(Fail::failed(format!(
            "HLT at rip {:#x}: wanted the HLT of a hand-written handler in {HANDLERS:#x}..{end:#x}",
            at + 1
        )));
    }
    Ok(())
}

fn idt64() -> Vec<u8> {
    let mut idt = Vec::with_capacity(256 * 16);
    for v in 0..256u64 {
        let off = HANDLERS + v * HANDLER_STRIDE;
        let sel = u64::from(kvmconf_guests::layout::SEL_CODE64);
        let lo = (off & 0xffff) | (sel << 16) | (0x8eu64 << 40) | (((off >> 16) & 0xffff) << 48);
        idt.extend_from_slice(&lo.to_le_bytes());
        idt.extend_from_slice(&(off >> 32).to_le_bytes());
    }
    idt
}

fn handlers() -> Vec<u8> {
    let mut h = Vec::with_capacity(256 * HANDLER_STRIDE as usize);
    for v in 0..256u32 {
        h.push(0xb8); // mov eax, imm32
        h.extend_from_slice(&v.to_le_bytes());
        h.extend_from_slice(&[0xf4, 0xeb, 0xfd]); // hlt; jmp back to the hlt
    }
    h
}

/// A memory image for a case (data the guest reads).
pub fn mem(addr: u64, bytes: Vec<u8>) -> MemInit {
    MemInit {
        addr: kvmconf_guests::num::Hex(addr),
        hex: HexBytes(bytes),
    }
}

/// Fails unless `got` is `want`, naming both exits.
pub fn expect_exit(got: &KvmExit, want: &KvmExit, what: &str) -> Result<(), Fail> {
    if got == want {
        Ok(())
    } else {
        Err(Fail::field(what, format!("{want:?}"), describe(got), ""))
    }
}

/// An exit in words, for failure messages.
pub fn describe(e: &KvmExit) -> String {
    match e {
        KvmExit::Io {
            input,
            size,
            port,
            count,
            ..
        } => format!(
            "IO {} {size} bytes x{count} on port {port:#x}",
            if *input { "in" } else { "out" }
        ),
        KvmExit::Mmio {
            addr,
            len,
            write,
            data,
        } => format!(
            "MMIO {} {len} bytes at {addr:#x} (data {:02x?})",
            if *write { "write" } else { "read" },
            &data[..(*len as usize).min(8)]
        ),
        other => format!("{other:?}"),
    }
}

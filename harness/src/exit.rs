//! Decoding of the `kvm_run` exit area into a typed [`KvmExit`]: a pure function over bytes,
//! unit-tested with synthetic exits and no `/dev/kvm`.

/// Offsets into `struct kvm_run` (include/uapi/linux/kvm.h, x86-64).
pub mod off {
    /// `immediate_exit` (u8).
    pub const IMMEDIATE_EXIT: usize = 1;
    /// `exit_reason` (u32).
    pub const EXIT_REASON: usize = 8;
    /// The exit union.
    pub const UNION: usize = 32;
}

/// What KVM_RUN reported, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvmExit {
    /// KVM_EXIT_IO.
    Io {
        /// true for IN.
        input: bool,
        /// Element size.
        size: u8,
        /// Port.
        port: u16,
        /// Element count (string I/O).
        count: u32,
        /// Offset of the data in the run area.
        data_offset: u64,
    },
    /// KVM_EXIT_MMIO.
    Mmio {
        /// Guest-physical address.
        addr: u64,
        /// Data (writes) or room for it (reads).
        data: [u8; 8],
        /// Access size.
        len: u32,
        /// true for a write.
        write: bool,
    },
    /// KVM_EXIT_HLT.
    Hlt,
    /// KVM_EXIT_SHUTDOWN.
    Shutdown,
    /// KVM_EXIT_FAIL_ENTRY.
    FailEntry {
        /// hardware_entry_failure_reason.
        reason: u64,
        /// CPU.
        cpu: u32,
    },
    /// KVM_EXIT_INTERNAL_ERROR.
    InternalError {
        /// Suberror.
        suberror: u32,
        /// data[..ndata].
        data: Vec<u64>,
    },
    /// KVM_EXIT_DEBUG.
    Debug {
        /// Exception (1 #DB, 3 #BP).
        exception: u32,
        /// PC.
        pc: u64,
        /// DR6.
        dr6: u64,
        /// DR7.
        dr7: u64,
    },
    /// KVM_EXIT_IRQ_WINDOW_OPEN.
    IrqWindowOpen,
    /// KVM_EXIT_INTR.
    Intr,
    /// KVM_EXIT_X86_RDMSR / KVM_EXIT_X86_WRMSR.
    Msr {
        /// true for WRMSR.
        write: bool,
        /// KVM_MSR_EXIT_REASON_*.
        reason: u32,
        /// MSR index.
        index: u32,
        /// Data (WRMSR) .
        data: u64,
    },
    /// KVM_EXIT_SYSTEM_EVENT.
    SystemEvent {
        /// Type.
        kind: u32,
    },
    /// Any other exit reason.
    Other(u32),
}

/// KVM exit reason numbers used here.
pub mod reason {
    /// KVM_EXIT_UNKNOWN.
    pub const UNKNOWN: u32 = 0;
    /// KVM_EXIT_IO.
    pub const IO: u32 = 2;
    /// KVM_EXIT_DEBUG.
    pub const DEBUG: u32 = 4;
    /// KVM_EXIT_HLT.
    pub const HLT: u32 = 5;
    /// KVM_EXIT_MMIO.
    pub const MMIO: u32 = 6;
    /// KVM_EXIT_IRQ_WINDOW_OPEN.
    pub const IRQ_WINDOW_OPEN: u32 = 7;
    /// KVM_EXIT_SHUTDOWN.
    pub const SHUTDOWN: u32 = 8;
    /// KVM_EXIT_FAIL_ENTRY.
    pub const FAIL_ENTRY: u32 = 9;
    /// KVM_EXIT_INTR.
    pub const INTR: u32 = 10;
    /// KVM_EXIT_INTERNAL_ERROR.
    pub const INTERNAL_ERROR: u32 = 17;
    /// KVM_EXIT_SYSTEM_EVENT.
    pub const SYSTEM_EVENT: u32 = 24;
    /// KVM_EXIT_X86_RDMSR.
    pub const X86_RDMSR: u32 = 29;
    /// KVM_EXIT_X86_WRMSR.
    pub const X86_WRMSR: u32 = 30;
}

fn u8_at(b: &[u8], o: usize) -> u8 {
    b[o]
}
fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// Decodes the exit in a `kvm_run` area (at least 304 bytes: header and exit union).
pub fn decode(run: &[u8]) -> KvmExit {
    let u = off::UNION;
    match u32_at(run, off::EXIT_REASON) {
        reason::IO => KvmExit::Io {
            input: u8_at(run, u) == 0,
            size: u8_at(run, u + 1),
            port: u16_at(run, u + 2),
            count: u32_at(run, u + 4),
            data_offset: u64_at(run, u + 8),
        },
        reason::MMIO => KvmExit::Mmio {
            addr: u64_at(run, u),
            data: run[u + 8..u + 16].try_into().expect("8 bytes"),
            len: u32_at(run, u + 16),
            write: u8_at(run, u + 20) != 0,
        },
        reason::HLT => KvmExit::Hlt,
        reason::SHUTDOWN => KvmExit::Shutdown,
        reason::FAIL_ENTRY => KvmExit::FailEntry {
            reason: u64_at(run, u),
            cpu: u32_at(run, u + 8),
        },
        reason::INTERNAL_ERROR => {
            let ndata = u32_at(run, u + 4).min(16) as usize;
            KvmExit::InternalError {
                suberror: u32_at(run, u),
                data: (0..ndata).map(|i| u64_at(run, u + 8 + 8 * i)).collect(),
            }
        }
        reason::DEBUG => KvmExit::Debug {
            exception: u32_at(run, u),
            pc: u64_at(run, u + 8),
            dr6: u64_at(run, u + 16),
            dr7: u64_at(run, u + 24),
        },
        reason::IRQ_WINDOW_OPEN => KvmExit::IrqWindowOpen,
        reason::INTR => KvmExit::Intr,
        r @ (reason::X86_RDMSR | reason::X86_WRMSR) => KvmExit::Msr {
            write: r == reason::X86_WRMSR,
            reason: u32_at(run, u + 8),
            index: u32_at(run, u + 12),
            data: u64_at(run, u + 16),
        },
        reason::SYSTEM_EVENT => KvmExit::SystemEvent {
            kind: u32_at(run, u),
        },
        other => KvmExit::Other(other),
    }
}

/// The size of the header plus exit union that [`decode`] reads.
pub const DECODE_LEN: usize = off::UNION + 256;

/// The raw exit reason number in a `kvm_run` area.
pub fn raw_reason(run: &[u8]) -> u32 {
    u32_at(run, off::EXIT_REASON)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_run;

    fn area(reason: u32) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[off::EXIT_REASON..off::EXIT_REASON + 4].copy_from_slice(&reason.to_le_bytes());
        b
    }

    #[test]
    fn offsets_match_kvm_bindings() {
        assert_eq!(
            std::mem::offset_of!(kvm_run, immediate_exit),
            off::IMMEDIATE_EXIT
        );
        assert_eq!(std::mem::offset_of!(kvm_run, exit_reason), off::EXIT_REASON);
        assert_eq!(std::mem::offset_of!(kvm_run, __bindgen_anon_1), off::UNION);
        assert!(std::mem::size_of::<kvm_run>() >= DECODE_LEN);
    }

    #[test]
    fn decodes_io_out() {
        let mut b = area(reason::IO);
        b[32] = 1; // out
        b[33] = 2;
        b[34..36].copy_from_slice(&0x3f8u16.to_le_bytes());
        b[36..40].copy_from_slice(&3u32.to_le_bytes());
        b[40..48].copy_from_slice(&4096u64.to_le_bytes());
        assert_eq!(
            decode(&b),
            KvmExit::Io {
                input: false,
                size: 2,
                port: 0x3f8,
                count: 3,
                data_offset: 4096
            }
        );
    }

    #[test]
    fn decodes_mmio_write_and_internal_error_and_unknown() {
        let mut b = area(reason::MMIO);
        b[32..40].copy_from_slice(&0xfee0_0000u64.to_le_bytes());
        b[40..44].copy_from_slice(&[1, 2, 3, 4]);
        b[48..52].copy_from_slice(&4u32.to_le_bytes());
        b[52] = 1;
        assert_eq!(
            decode(&b),
            KvmExit::Mmio {
                addr: 0xfee0_0000,
                data: [1, 2, 3, 4, 0, 0, 0, 0],
                len: 4,
                write: true
            }
        );
        let mut b = area(reason::INTERNAL_ERROR);
        b[32..36].copy_from_slice(&1u32.to_le_bytes());
        b[36..40].copy_from_slice(&40u32.to_le_bytes()); // absurd ndata is clamped to 16
        b[40..48].copy_from_slice(&7u64.to_le_bytes());
        match decode(&b) {
            KvmExit::InternalError { suberror, data } => {
                assert_eq!(suberror, 1);
                assert_eq!(data.len(), 16);
                assert_eq!(data[0], 7);
            }
            e => panic!("wanted internal error, got {e:?}"),
        }
        assert_eq!(decode(&area(77)), KvmExit::Other(77));
        assert_eq!(decode(&area(reason::HLT)), KvmExit::Hlt);
    }

    #[test]
    fn decodes_debug_with_dr6() {
        let mut b = area(reason::DEBUG);
        b[32..36].copy_from_slice(&1u32.to_le_bytes());
        b[40..48].copy_from_slice(&0x1003u64.to_le_bytes());
        b[48..56].copy_from_slice(&0xffff_4ff0u64.to_le_bytes());
        b[56..64].copy_from_slice(&0x400u64.to_le_bytes());
        assert_eq!(
            decode(&b),
            KvmExit::Debug {
                exception: 1,
                pc: 0x1003,
                dr6: 0xffff_4ff0,
                dr7: 0x400
            }
        );
    }
}

//! Which vCPU state kinds a finished case could have changed, so that a pooled reset restores only
//! those (api.rst 4.42 KVM_SET_XSAVE, 4.44 KVM_SET_XCRS, 4.32 KVM_SET_DEBUGREGS, 4.19
//! KVM_SET_MSRS, 4.39 KVM_SET_MP_STATE).
//!
//! The harness sets none of these kinds from a case's fields; only the guest's instructions can
//! change them. The rule is conservative:
//!
//! - **Everything** is restored unless the case ended in a plain `HLT` ([`Exit::Hlt`]), was not
//!   single-stepped, and the guest dirtied no RAM page (`KVM_GET_DIRTY_LOG`). So the bytes the
//!   guest could execute are exactly the image it started from: no self-modifying or generated
//!   code, no exception frame written (a delivered exception ends a case at a stub, as
//!   `Exit::Exception`, or writes its frame), no guest-built descriptor table.
//! - Otherwise the code reachable from the start RIP is decoded, following direct branches, in
//!   16-, 32- and 64-bit mode ([`reachable_kinds`]), and each instruction found names the kinds
//!   it can change: x87/MMX/SSE/AVX/XSAVE-family instructions XSAVE (XSAVE-family and XSETBV also
//!   the XCRs); WRMSR and SWAPGS the MSRs; MOV DRn and ICEBP the debug registers, as does anything
//!   that can set RFLAGS.TF or switch task (a trap then writes DR6: POPF, IRET, SYSRET, far
//!   branches, RSM, LIDT/LTR/LGDT/LLDT) or a start RFLAGS with TF set. An instruction whose CPUID
//!   feature is outside a known list of integer and system features, and any control flow the
//!   search cannot follow (indirect branches, returns, interrupts, CR writes, leaving the image),
//!   changes everything.
//! - MP state is restored only with everything: the pool's VMs have no in-kernel irqchip, and
//!   without one KVM leaves the MP state to userspace (api.rst 4.38: "only valid after
//!   KVM_CREATE_IRQCHIP"); a HLT exits to userspace without changing it.
//!
//! vCPU events are staged with the registers on every case (no ioctl), so they are not tracked.

use iced_x86::{Code, CpuidFeature, Decoder, DecoderOptions, FlowControl, Mnemonic};
use kvmconf_guests::layout::CpuState;
use kvmconf_guests::result::Exit;

/// State kinds a pooled reset can restore, as a set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateKinds {
    /// x87/SSE/AVX state (KVM_SET_XSAVE).
    pub xsave: bool,
    /// XCR0 (KVM_SET_XCRS).
    pub xcrs: bool,
    /// DR0–DR3, DR6, DR7 (KVM_SET_DEBUGREGS).
    pub debugregs: bool,
    /// The MSRs in [`crate::kvm::RESET_MSRS`] (KVM_SET_MSRS).
    pub msrs: bool,
    /// The MP state (KVM_SET_MP_STATE).
    pub mp_state: bool,
}

impl StateKinds {
    /// Every kind.
    pub const ALL: StateKinds = StateKinds {
        xsave: true,
        xcrs: true,
        debugregs: true,
        msrs: true,
        mp_state: true,
    };
    /// No kind.
    pub const NONE: StateKinds = StateKinds {
        xsave: false,
        xcrs: false,
        debugregs: false,
        msrs: false,
        mp_state: false,
    };

    /// The union of two sets.
    pub fn union(self, o: StateKinds) -> StateKinds {
        StateKinds {
            xsave: self.xsave | o.xsave,
            xcrs: self.xcrs | o.xcrs,
            debugregs: self.debugregs | o.debugregs,
            msrs: self.msrs | o.msrs,
            mp_state: self.mp_state | o.mp_state,
        }
    }

    /// How many kinds the set holds.
    pub fn count(self) -> u64 {
        [
            self.xsave,
            self.xcrs,
            self.debugregs,
            self.msrs,
            self.mp_state,
        ]
        .iter()
        .map(|&b| u64::from(b))
        .sum()
    }
}

/// RFLAGS.TF.
const RFLAGS_TF: u64 = 1 << 8;

/// What the pool remembers of a finished case to decide its reset.
#[derive(Clone, Copy, Debug)]
pub struct Finished {
    /// It ended in a plain HLT.
    hlt: bool,
    /// It was single-stepped (KVM_SET_GUEST_DEBUG).
    single_step: bool,
    /// Its start RFLAGS had TF set.
    start_tf: bool,
    /// Its start CS base.
    cs_base: u64,
    /// Its start RIP.
    rip: u64,
}

impl Finished {
    /// The record of a case that ended with `exit` and started in `cpu`.
    pub fn new(exit: &Exit, single_step: bool, cpu: &CpuState) -> Finished {
        Finished {
            hlt: *exit == Exit::Hlt,
            single_step,
            start_tf: cpu.rflags & RFLAGS_TF != 0,
            cs_base: cpu.cs.base,
            rip: cpu.rip,
        }
    }

    /// Whether the kinds can be narrowed by the image's instructions at all: a plain HLT, no
    /// single-stepping, and `dirtied` RAM pages none.
    pub fn narrowable(&self, dirtied: usize) -> bool {
        self.hlt && !self.single_step && dirtied == 0
    }

    /// For a [`Finished::narrowable`] case that ran `image`: the kinds its start state (TF set:
    /// a trap writes DR6) and its reachable code can change, and XCR0 always (one ioctl): the
    /// pooled-equals-fresh test cannot show a stale XCR0 on a host where a later XGETBV does not
    /// see what XSETBV wrote, so nothing would prove skipping it safe.
    pub fn kinds(&self, image: &[(u64, Vec<u8>)]) -> StateKinds {
        let start = StateKinds {
            debugregs: self.start_tf,
            xcrs: true,
            ..StateKinds::NONE
        };
        start.union(reachable_kinds(image, self.cs_base, self.rip))
    }
}

/// CPUID features of instructions that touch only general registers, flags, memory, segments,
/// control registers and descriptor tables (all restored or rewritten by every reset).
const INTEGER: &[CpuidFeature] = &[
    CpuidFeature::INTEL8086,
    CpuidFeature::INTEL8086_ONLY,
    CpuidFeature::INTEL186,
    CpuidFeature::INTEL286,
    CpuidFeature::INTEL286_ONLY,
    CpuidFeature::INTEL386,
    CpuidFeature::INTEL386_ONLY,
    CpuidFeature::INTEL486,
    CpuidFeature::X64,
    CpuidFeature::ADX,
    CpuidFeature::BMI1,
    CpuidFeature::BMI2,
    CpuidFeature::CMOV,
    CpuidFeature::CMPXCHG16B,
    CpuidFeature::CPUID,
    CpuidFeature::CX8,
    CpuidFeature::LZCNT,
    CpuidFeature::POPCNT,
    CpuidFeature::MOVBE,
    CpuidFeature::MULTIBYTENOP,
    CpuidFeature::PAUSE,
    CpuidFeature::TSC,
    CpuidFeature::RDTSCP,
    CpuidFeature::MSR,
    CpuidFeature::SYSCALL,
    CpuidFeature::SEP,
    CpuidFeature::FSGSBASE,
    CpuidFeature::CLFSH,
    CpuidFeature::TBM,
];

/// CPUID features of instructions that change XSAVE-managed state (x87, MMX, SSE, AVX, …).
const FPU: &[CpuidFeature] = &[
    CpuidFeature::FPU,
    CpuidFeature::FPU287,
    CpuidFeature::FPU287XL_ONLY,
    CpuidFeature::FPU387,
    CpuidFeature::FPU387SL_ONLY,
    CpuidFeature::FXSR,
    CpuidFeature::MMX,
    CpuidFeature::SSE,
    CpuidFeature::SSE2,
    CpuidFeature::SSE3,
    CpuidFeature::SSSE3,
    CpuidFeature::SSE4_1,
    CpuidFeature::SSE4_2,
    CpuidFeature::SSE4A,
    CpuidFeature::AVX,
    CpuidFeature::AVX2,
    CpuidFeature::F16C,
    CpuidFeature::FMA,
    CpuidFeature::FMA4,
    CpuidFeature::AES,
    CpuidFeature::PCLMULQDQ,
    CpuidFeature::SHA,
    CpuidFeature::AVX512F,
    CpuidFeature::AVX512VL,
    CpuidFeature::AVX512BW,
    CpuidFeature::AVX512DQ,
    CpuidFeature::AVX512CD,
];

/// The kinds one decoded instruction can change.
fn instruction_kinds(i: &iced_x86::Instruction) -> StateKinds {
    let mut k = StateKinds::NONE;
    for f in i.cpuid_features() {
        if FPU.contains(f) {
            k.xsave = true;
        } else if matches!(
            f,
            CpuidFeature::XSAVE
                | CpuidFeature::XSAVEOPT
                | CpuidFeature::XSAVEC
                | CpuidFeature::XSAVES
        ) {
            k.xsave = true;
            k.xcrs = true;
        } else if !INTEGER.contains(f) {
            return StateKinds::ALL;
        }
    }
    match i.mnemonic() {
        Mnemonic::Wrmsr | Mnemonic::Swapgs => k.msrs = true,
        Mnemonic::Int1
        | Mnemonic::Popf
        | Mnemonic::Popfd
        | Mnemonic::Popfq
        | Mnemonic::Iret
        | Mnemonic::Iretd
        | Mnemonic::Iretq
        | Mnemonic::Sysret
        | Mnemonic::Sysretq
        | Mnemonic::Sysexit
        | Mnemonic::Sysexitq
        | Mnemonic::Rsm
        | Mnemonic::Lidt
        | Mnemonic::Lgdt
        | Mnemonic::Lldt
        | Mnemonic::Ltr
        | Mnemonic::Loadall => k.debugregs = true,
        _ => {}
    }
    if matches!(
        i.code(),
        Code::Mov_r32_dr | Code::Mov_r64_dr | Code::Mov_dr_r32 | Code::Mov_dr_r64
    ) || i.is_jmp_far()
        || i.is_jmp_far_indirect()
        || i.is_call_far()
        || i.is_call_far_indirect()
    {
        k.debugregs = true;
    }
    k
}

/// Instructions followed from the entry before giving up (and restoring everything).
const MAX_INSNS: usize = 4096;

/// The kinds the code reachable from `cs_base + rip` in `image` can change, following direct
/// branches in each of the three bitnesses (the case's start mode is one of them; one that
/// changes mode needs a far branch, IRET, SYSCALL-like instruction or a CR write, which end the
/// search). Anything the search cannot follow — an indirect branch or return, a far branch, an
/// interrupt instruction, a CR write (it can remap the code), an instruction that leaves the
/// image — gives [`StateKinds::ALL`]. A path ends at HLT or an instruction that always faults;
/// addresses are taken as physical (the harness identity-maps RAM).
pub fn reachable_kinds(image: &[(u64, Vec<u8>)], cs_base: u64, rip: u64) -> StateKinds {
    let mut k = StateKinds::NONE;
    for bitness in [16u32, 32, 64] {
        match path_kinds(image, cs_base, rip, bitness) {
            Some(p) => k = k.union(p),
            None => return StateKinds::ALL,
        }
    }
    k
}

/// [`reachable_kinds`] in one bitness; `None` where the search gives up.
fn path_kinds(
    image: &[(u64, Vec<u8>)],
    cs_base: u64,
    rip: u64,
    bitness: u32,
) -> Option<StateKinds> {
    let ip_mask = match bitness {
        16 => 0xffff,
        32 => 0xffff_ffff,
        _ => u64::MAX,
    };
    let mut k = StateKinds::NONE;
    let mut todo = vec![rip & ip_mask];
    let mut seen = std::collections::BTreeSet::new();
    let mut insn = iced_x86::Instruction::default();
    while let Some(ip) = todo.pop() {
        if !seen.insert(ip) {
            continue;
        }
        if seen.len() > MAX_INSNS {
            return None;
        }
        let at = cs_base.wrapping_add(ip);
        let (start, bytes) = image
            .iter()
            .find(|(a, b)| at >= *a && at - *a < b.len() as u64)?;
        let off = (at - start) as usize;
        let mut d = Decoder::with_ip(bitness, &bytes[off..], ip, DecoderOptions::NONE);
        d.decode_out(&mut insn);
        if insn.is_invalid() {
            if d.last_error() == iced_x86::DecoderError::NoMoreBytes {
                // It runs past the run into bytes the search does not see.
                return None;
            }
            continue; // #UD: delivering it ends the case at a stub.
        }
        k = k.union(instruction_kinds(&insn));
        if k == StateKinds::ALL || writes_cr(&insn) {
            return None;
        }
        let next = insn.next_ip() & ip_mask;
        match insn.flow_control() {
            FlowControl::Next if insn.mnemonic() == Mnemonic::Hlt => {}
            FlowControl::Next => todo.push(next),
            FlowControl::ConditionalBranch if is_near_branch(&insn) => {
                todo.push(next);
                todo.push(insn.near_branch_target() & ip_mask);
            }
            FlowControl::UnconditionalBranch if is_near_branch(&insn) => {
                todo.push(insn.near_branch_target() & ip_mask);
            }
            FlowControl::Call if is_near_branch(&insn) => {
                todo.push(next);
                todo.push(insn.near_branch_target() & ip_mask);
            }
            FlowControl::Exception => {}
            _ => return None,
        }
    }
    Some(k)
}

/// A branch with a near target operand (Jcc, LOOPcc, JCXZ-family, JMP/CALL rel).
fn is_near_branch(i: &iced_x86::Instruction) -> bool {
    matches!(
        i.op0_kind(),
        iced_x86::OpKind::NearBranch16
            | iced_x86::OpKind::NearBranch32
            | iced_x86::OpKind::NearBranch64
    )
}

/// MOV to CR0/CR3/CR4 (and any CR): it can change paging or the mode under the code.
fn writes_cr(i: &iced_x86::Instruction) -> bool {
    matches!(i.code(), Code::Mov_cr_r32 | Code::Mov_cr_r64) || i.mnemonic() == Mnemonic::Lmsw
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(code: &[u8]) -> StateKinds {
        reachable_kinds(&[(0x1000, code.to_vec())], 0, 0x1000)
    }

    /// Integer code changes nothing a reset restores beyond registers and RAM; bytes that are
    /// never executed (the port number 0xf1 = ICEBP) do not count.
    #[test]
    fn reachable_kinds_of_integer_code_is_none() {
        // mov eax, 0x2a; add eax, 1; out 0xf1, al; hlt
        let code = [0xb8, 0x2a, 0, 0, 0, 0x83, 0xc0, 0x01, 0xe6, 0xf1, 0xf4];
        assert_eq!(at(&code), StateKinds::NONE);
    }

    /// Each instruction class names its state kind, also behind a conditional branch.
    #[test]
    fn reachable_kinds_names_each_class() {
        // jz +2; hlt; hlt; wrmsr; hlt
        let wrmsr = at(&[0x74, 0x02, 0xf4, 0xf4, 0x0f, 0x30, 0xf4]);
        assert!(wrmsr.msrs && !wrmsr.xsave, "{wrmsr:?}");
        assert!(at(&[0x0f, 0x01, 0xf8, 0xf4]).msrs, "swapgs");
        // movq xmm0, rax
        let sse = at(&[0x66, 0x48, 0x0f, 0x6e, 0xc0, 0xf4]);
        assert!(sse.xsave && !sse.msrs, "{sse:?}");
        assert!(at(&[0x0f, 0x01, 0xd1, 0xf4]).xcrs, "xsetbv");
        assert!(at(&[0x0f, 0x23, 0xf8, 0xf4]).debugregs, "mov dr7, eax");
        assert!(at(&[0x9d, 0xf4]).debugregs, "popf");
        assert!(at(&[0xf1, 0xf4]).debugregs, "icebp");
        assert_eq!(at(&[0x0f, 0x01, 0xc4, 0xf4]), StateKinds::ALL, "vmxoff");
    }

    /// What the search cannot follow restores everything.
    #[test]
    fn reachable_kinds_gives_up_on_indirect_flow_and_leaving_the_image() {
        assert_eq!(at(&[0xff, 0xe0]), StateKinds::ALL, "jmp rax");
        assert_eq!(at(&[0xc3]), StateKinds::ALL, "ret");
        assert_eq!(at(&[0x90, 0x90]), StateKinds::ALL, "runs off the end");
        assert_eq!(
            at(&[0x0f, 0x22, 0xd8, 0xf4]),
            StateKinds::ALL,
            "mov cr3, eax"
        );
        assert_eq!(at(&[0xcd, 0x03]), StateKinds::ALL, "int 3");
    }
}

//! The oracle's one comparison: KVM's result against the interpreter's (only the RFLAGS bits the
//! interpreter reports undefined masked), and two KVM runs of one program against each other.

use kvmconf_guests::case::Case;
use kvmconf_guests::interp;
use kvmconf_guests::interp::Machine;
use kvmconf_guests::result::{CaseResult, DiffMask, Event, FieldDiff, diff};

/// Compares a KVM result with the interpreter's for `case`: every field that differs, with only
/// the RFLAGS bits the interpreter reports as undefined masked.
pub fn compare(kvm: &CaseResult, case: &Case) -> Vec<FieldDiff> {
    let (model, undefined) = interp::run_with_undefined(case);
    diff(kvm, &model, &undefined_masked(undefined))
}

/// The comparison mask of KVM against the interpreter: only the undefined RFLAGS bits.
pub fn undefined_masked(undefined: u64) -> DiffMask {
    DiffMask {
        rflags_ignore: undefined,
        ..DiffMask::default()
    }
}

/// Compares two KVM results of the same program (e.g. CPL0 against CPL3, or RAM against MMIO data):
/// segments and the trace's MMIO-versus-memory shape are left to the interpreter comparisons, so only
/// exit, registers and memory are compared here, undefined flags masked.
pub fn compare_runs(a: &CaseResult, b: &CaseResult, undefined: u64) -> Vec<FieldDiff> {
    let strip = |r: &CaseResult| {
        let mut r = r.clone();
        r.trace.clear();
        r
    };
    diff(
        &strip(a),
        &strip(b),
        &DiffMask {
            rflags_ignore: undefined,
            skip_segs: true,
            ..DiffMask::default()
        },
    )
}

/// Whether KVM's result agrees with the interpreter's outcome (undefined flags masked).
pub fn agrees(kvm: &CaseResult, model: &interp::Outcome) -> bool {
    diff(kvm, &model.result, &undefined_masked(model.undefined)).is_empty()
}

/// Whether `a` and `b` agree everywhere `diff` with a mask of `rflags_ignore` would look (a cheap
/// structural test: `diff` formats every field and is only worth running on a mismatch).
pub fn agree(a: &CaseResult, b: &CaseResult, rflags_ignore: u64) -> bool {
    a.exit == b.exit
        && a.trace == b.trace
        && a.segs == b.segs
        && a.cr == b.cr
        && a.memory == b.memory
        && a.steps == b.steps
        && {
            let (mut ra, mut rb) = (a.regs.clone(), b.regs.clone());
            ra.rflags.0 &= !rflags_ignore;
            rb.rflags.0 &= !rflags_ignore;
            ra == rb
        }
}

/// A result without its MMIO accesses: the one trace shape the native and the emulated path may
/// differ in (the emulated path's data accesses are MMIO exits).
pub fn without_mmio(r: &CaseResult) -> CaseResult {
    let mut r = r.clone();
    r.trace
        .retain(|e| !matches!(e, Event::MmioRead(_) | Event::MmioWrite(_)));
    r
}

/// The fields in which the native run of `case` and its run with the data region as MMIO differ,
/// MMIO accesses and the RFLAGS bits the program leaves undefined (which may differ between the
/// CPU and KVM's emulator) left out.
pub fn paths_differ(
    case: &Case,
    native: &CaseResult,
    emulated: &CaseResult,
) -> Vec<kvmconf_guests::result::FieldDiff> {
    let mask = DiffMask {
        rflags_ignore: Machine::new(case).run().undefined,
        ..DiffMask::default()
    };
    diff(&without_mmio(native), &without_mmio(emulated), &mask)
}

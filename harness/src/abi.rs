//! The KVM ABI the checks speak: the kvm-bindings structures and constants, the few kvm-ioctls
//! argument types the typed methods take, eventfds, and safe readers of the ABI's unions, so no
//! crate outside the harness imports a kvm crate.

pub use kvm_bindings::*;
pub use kvm_ioctls::{
    IoEventAddress, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, NoDatamatch,
};
pub use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// The PIC state in a `kvm_irqchip` read with chip_id 0 or 1.
pub fn pic_state(chip: &kvm_irqchip) -> kvm_pic_state {
    // SAFETY: every field of the union is plain integers, so any bit pattern is a valid
    // `kvm_pic_state`; the union is 512 bytes, larger than the PIC state.
    unsafe { chip.chip.pic }
}

/// Replaces the PIC state in a `kvm_irqchip` (chip_id 0 or 1).
pub fn set_pic_state(chip: &mut kvm_irqchip, pic: kvm_pic_state) {
    chip.chip.pic = pic;
}

/// The `pio` field of a coalesced MMIO ring entry (1 for port I/O, 0 for MMIO).
pub fn coalesced_pio(entry: &kvm_coalesced_mmio) -> u32 {
    // SAFETY: both members of the union are a `u32`; any bit pattern is valid.
    unsafe { entry.__bindgen_anon_1.pio }
}

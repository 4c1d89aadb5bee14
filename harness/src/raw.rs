//! The memslot call the ioctl-sequence fuzzer issues by free function; it forwards to
//! [`TestVm::try_set_memslot`], which owns the ioctl.

use crate::kvm::TestVm;
pub use crate::kvm::{MemslotError, Slot};

/// Adds, changes or deletes a memslot of a [`TestVm`], backed by the test VM's own RAM (see
/// [`TestVm::try_set_memslot`]).
pub fn map_in(vm: &TestVm, s: Slot) -> Result<(), MemslotError> {
    vm.try_set_memslot(s)
}

//! `ioctl_sequence`: an arbitrary sequence of API calls (memslot add/delete/move/flags, SET_REGS,
//! SET_SREGS, SET_MSRS, SET_GUEST_DEBUG, KVM_RUN with an exit budget, dirty-log reads) on one new
//! VM. Invariants (see `kvmconf_cases::fuzz::ioctl_seq`): documented errors only, a rejected call
//! changes no state, round trips hold, documented exit reasons, no fd leak; at most 32 calls.
#![no_main]
#![forbid(unsafe_code)]

use kvmconf_cases::fuzz::ioctl_seq::{Ops, exec_checked};
use libfuzzer_sys::{Corpus, fuzz_target};

fuzz_target!(|ops: Ops| -> Corpus {
    if ops.0.is_empty() {
        return Corpus::Reject;
    }
    let x = exec_checked(kvmconf_fuzz::host(), &ops, true)
        .unwrap_or_else(|e| panic!("harness error: {e}"));
    kvmconf_fuzz::judge(x)
});

//! `state_entry`: random register and special-register states (segments, CR0/CR4/EFER
//! combinations, RFLAGS, RIP) entered on a new VM: KVM rejects them (EINVAL, vCPU unchanged),
//! fails the entry, or runs them within the deadline.
#![no_main]
#![forbid(unsafe_code)]

use kvmconf_cases::fuzz::state_entry::{StateInput, exec};
use libfuzzer_sys::{Corpus, fuzz_target};

fuzz_target!(|input: StateInput| -> Corpus {
    let x = exec(kvmconf_fuzz::host(), &input).unwrap_or_else(|e| panic!("harness error: {e}"));
    kvmconf_fuzz::judge(x)
});

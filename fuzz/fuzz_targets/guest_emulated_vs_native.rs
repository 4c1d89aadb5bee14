//! `guest_emulated_vs_native`: a program and starting state (a case file's text, or a generated case built from the
//! fuzzer's bytes) run under the oracle of `kvmconf fuzz --target guest_emulated_vs_native`; a difference that no
//! known deviation explains is a crash whose message is the diff, with the case saved as a file.
#![no_main]
#![forbid(unsafe_code)]

use kvmconf_cases::fuzz::Target;
use libfuzzer_sys::{Corpus, fuzz_target};

fuzz_target!(|data: &[u8]| -> Corpus {
    kvmconf_fuzz::guest_target(Target::GuestEmulatedVsNative, data)
});

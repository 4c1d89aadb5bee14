//! `case_parser`: arbitrary bytes into the TOML/JSON case parser never panic, and every case it
//! accepts survives a JSON round trip. Needs no `/dev/kvm`.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::{Corpus, fuzz_target};

fuzz_target!(|data: &[u8]| -> Corpus {
    if data.len() > 64 * 1024 {
        return Corpus::Reject;
    }
    kvmconf_fuzz::judge(kvmconf_cases::fuzz::case_parser(data))
});

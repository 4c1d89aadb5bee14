//! Harness checks (VM modes, exit trace, stubs, watchdog, pool), one nextest test each.
fn main() -> std::process::ExitCode {
    kvmconf_cases::runner::nextest_main(kvmconf_cases::Area::Harness)
}

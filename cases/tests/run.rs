//! run checks from the catalogue, one nextest test each.
fn main() -> std::process::ExitCode {
    kvmconf_cases::runner::nextest_main(kvmconf_cases::Area::Run)
}

//! Generated programs are valid cases, survive a JSON round trip, and run in the interpreter to an
//! exit other than `unsupported_instruction`, without reading an undefined flag.

use kvmconf_guests::case::{Case, Mode};
use kvmconf_guests::r#gen::{self as generator, Options};
use kvmconf_guests::interp::Machine;
use kvmconf_guests::result::Exit;
use proptest::prelude::*;

fn check(case: &Case) -> Result<(), TestCaseError> {
    case.validate()
        .map_err(|e| TestCaseError::fail(format!("invalid case: {e}")))?;
    let json = serde_json::to_string(case).expect("cases serialize");
    let back: Case = serde_json::from_str(&json).expect("cases parse");
    prop_assert_eq!(&back, case);
    let o = Machine::new(case).run();
    prop_assert!(
        !matches!(o.result.exit, Exit::UnsupportedInstruction { .. }),
        "unsupported: {:?}\n{}",
        o.result.exit,
        json
    );
    prop_assert!(!o.tainted, "an undefined flag was read\n{}", json);
    Ok(())
}

proptest! {
    /// Every mode, default options.
    #[test]
    fn generated_cases_are_valid_and_run(case in generator::any_case()) {
        check(&case)?;
    }

    /// long64 programs also run at CPL3, and with the data region as MMIO.
    #[test]
    fn long64_cases_run_at_cpl3_and_over_mmio(case in generator::strategy(Options { data_mmio: true, ..Options::new(Mode::Long64) })) {
        check(&case)?;
        let mut user = case.clone();
        user.cpl = 3;
        check(&user)?;
    }
}

/// The fixed-seed set is deterministic and every case in it runs.
#[test]
fn case_from_seed_is_deterministic() {
    for mode in [Mode::Real16, Mode::Prot32, Mode::Long64] {
        let a = generator::case_from_seed(mode, 42, 7);
        let b = generator::case_from_seed(mode, 42, 7);
        assert_eq!(a, b);
        assert_ne!(a, generator::case_from_seed(mode, 42, 8));
    }
    let mut exits = std::collections::BTreeMap::new();
    for mode in [Mode::Real16, Mode::Prot32, Mode::Long64] {
        for i in 0..300 {
            let c = generator::case_from_seed(mode, 1, i);
            let o = Machine::new(&c).run();
            assert!(
                !matches!(o.result.exit, Exit::UnsupportedInstruction { .. }),
                "{}: {:?}",
                c.name,
                o.result.exit
            );
            assert!(!o.tainted, "{} read an undefined flag", c.name);
            *exits
                .entry((mode.name(), o.result.exit.kind()))
                .or_insert(0) += 1;
        }
    }
    eprintln!("exit kinds over the fixed-seed set: {exits:?}");
}

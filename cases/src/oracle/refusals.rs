//! The instructions KVM's emulator is known to refuse on some host (`cases/emulator_refuses.toml`).

/// The list of instructions this host's KVM refuses to emulate, compiled in.
pub const REFUSALS_FILE: &str = include_str!("../../emulator_refuses.toml");

/// One instruction KVM's emulator is known to refuse on some host, in one mode.
#[derive(Clone, Debug, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Refusal {
    /// iced-x86 mnemonic, as `{:?}` prints it (`Popcnt`).
    pub mnemonic: String,
    /// `real16`, `prot32` or `long64`.
    pub mode: String,
    /// Bytes of one instance (a probe: these bytes, then HLT, at CPL0).
    pub hex: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RefusalFile {
    refuses: Vec<Refusal>,
}

/// The parsed refusal list.
pub fn refusals() -> &'static [Refusal] {
    static LIST: std::sync::OnceLock<Vec<Refusal>> = std::sync::OnceLock::new();
    LIST.get_or_init(|| {
        toml::from_str::<RefusalFile>(REFUSALS_FILE)
            .expect("cases/emulator_refuses.toml parses (checked by a test)")
            .refuses
    })
}

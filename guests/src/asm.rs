//! Guest-code assembly with iced-x86's `CodeAssembler`, for tests, the generator and the CLI.

use iced_x86::code_asm::CodeAssembler;

/// Why a program could not be assembled.
#[derive(Debug, thiserror::Error)]
#[error("assembling {bitness}-bit code at {base:#x}: {message}")]
pub struct AsmError {
    /// Code size.
    pub bitness: u32,
    /// Load address.
    pub base: u64,
    /// iced-x86's message.
    pub message: String,
}

/// Assembles the instructions `build` emits as `bitness`-bit code to run at `base`.
pub fn assemble(
    bitness: u32,
    base: u64,
    build: impl FnOnce(&mut CodeAssembler) -> Result<(), iced_x86::IcedError>,
) -> Result<Vec<u8>, AsmError> {
    let err = |e: iced_x86::IcedError| AsmError {
        bitness,
        base,
        message: e.to_string(),
    };
    let mut a = CodeAssembler::new(bitness).map_err(err)?;
    build(&mut a).map_err(err)?;
    a.assemble(base).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::code_asm::*;

    #[test]
    fn assembles_hello_fragment_in_each_mode() {
        for bits in [16, 32, 64] {
            let code = assemble(bits, 0x1000, |a| {
                a.mov(al, b'H' as u32)?;
                a.out(0xf1, al)?;
                a.hlt()
            })
            .unwrap();
            assert_eq!(code, [0xb0, 0x48, 0xe6, 0xf1, 0xf4]);
        }
    }
}

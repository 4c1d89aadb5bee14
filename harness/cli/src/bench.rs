//! `kvmconf bench`: cases/s for a trivial case, harness against raw kvm-ioctls loops.

/// Arguments of `kvmconf bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `kvmconf bench`.
pub fn main(_a: BenchArgs) -> u8 {
    eprintln!("kvmconf bench: not built yet");
    1
}

//! The `vakt` binary: the allocator, the crypto provider, and the command line (`cli/`).

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// See Cargo.toml: the allocator is on every request's path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    cli::Cli::parse().run()
}

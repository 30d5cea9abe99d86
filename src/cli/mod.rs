//! The `vakt` command line: one module per command, each an `Args` struct (clap) with a `run`
//! method that turns errors into a message on stderr and an exit code.
//!
//! Exit codes: 0 success; 1 a negative answer (a failing policy test, a broken audit chain, a
//! demo expectation that did not hold, a sidecar that could not start); 2 bad input (an invalid
//! config, policy, flag or file); 3 `vakt net` could not change the network rules.

mod audit;
mod check;
#[cfg(feature = "dev")]
mod dev;
mod explain;
mod net;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "vakt",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("VAKT_COMMIT"), ")"),
    about = "Zero-trust service-mesh sidecar (mTLS, SPIFFE, OIDC, policy, audit)"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar.
    Run(run::RunArgs),
    /// Validate a sidecar config and/or a policy file without starting anything (non-zero
    /// exit on any error, so it can run in a service's CI).
    Check(check::CheckArgs),
    /// Show how the policy decides one request: canonical path, route, each rule, decision.
    Explain(explain::ExplainArgs),
    /// Run a policy test file (cases: request -> expected decision and reason).
    Test(explain::TestArgs),
    /// The audit trail: verify the hash chain, or summarise for the security team.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Transparent capture: install, show or remove the nftables rules that send the app's
    /// connections through vakt (run in the pod's network namespace, e.g. an init container).
    Net {
        #[command(subcommand)]
        command: net::NetCommand,
    },
    /// Development PKI: a throwaway CA and workload certificates (never for production).
    #[cfg(feature = "dev")]
    Certs {
        #[command(subcommand)]
        command: dev::CertsCommand,
    },
    /// Start a mesh on loopback, send requests through it and explain what happened.
    #[cfg(feature = "dev")]
    Demo,
    /// Development OIDC issuer on loopback: serve discovery + JWKS, mint tokens, rotate keys.
    #[cfg(feature = "dev")]
    DevIdp {
        #[command(subcommand)]
        command: dev::DevIdpCommand,
    },
}

impl Cli {
    pub fn run(self) -> ExitCode {
        match self.command {
            Command::Run(args) => args.run(),
            Command::Check(args) => args.run(),
            Command::Explain(args) => args.run(),
            Command::Test(args) => args.run(),
            Command::Audit { command } => command.run(),
            Command::Net { command } => command.run(),
            #[cfg(feature = "dev")]
            Command::Certs { command } => command.run(),
            #[cfg(feature = "dev")]
            Command::Demo => dev::demo(),
            #[cfg(feature = "dev")]
            Command::DevIdp { command } => command.run(),
        }
    }
}

/// Print `vakt <command>: <error>` and return the exit code for bad input.
fn bad_input(command: &str, error: impl std::fmt::Display) -> ExitCode {
    eprintln!("vakt {command}: {error}");
    ExitCode::from(2)
}

/// Says why the policy at `path` was refused, with the lines where parsing stopped (exit 2).
fn invalid_policy(path: &std::path::Path, error: &vakt::policy::PolicyError) -> ExitCode {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    eprintln!("vakt: invalid policy:\n{error}\n{}", error.excerpt(&text));
    ExitCode::from(2)
}

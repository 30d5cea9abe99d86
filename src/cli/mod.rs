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
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print vakt's man page (roff): `vakt man > vakt.1 && man ./vakt.1`.
    Man,
    /// Development PKI: a throwaway CA and workload certificates (never for production).
    #[cfg(feature = "dev")]
    Certs {
        #[command(subcommand)]
        command: dev::CertsCommand,
    },
    /// Start a mesh on loopback, send requests through it and explain what happened.
    #[cfg(feature = "dev")]
    Demo {
        /// Keep the demo's audit trail, its checkpoints and chain key in this directory.
        #[arg(long, value_name = "DIR")]
        keep: Option<std::path::PathBuf>,
    },
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
            Command::Completions { shell } => {
                let mut command = <Cli as clap::CommandFactory>::command();
                clap_complete::generate(shell, &mut command, "vakt", &mut std::io::stdout());
                ExitCode::SUCCESS
            }
            Command::Man => {
                let page = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
                match page.render(&mut std::io::stdout()) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => bad_input("man", e),
                }
            }
            #[cfg(feature = "dev")]
            Command::Certs { command } => command.run(),
            #[cfg(feature = "dev")]
            Command::Demo { keep } => dev::demo(keep.as_deref()),
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command and every flag has help text (what `--help`, the completions and the man
    /// page show).
    #[test]
    fn every_command_and_flag_says_what_it_does() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", command.get_name());
            if command.get_about().is_none() && path != " vakt" {
                missing.push(format!("{path}: no about"));
            }
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if ["help", "version"].contains(&id) {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}: no help"));
                }
            }
            for sub in command.get_subcommands() {
                if sub.get_name() != "help" {
                    walk(sub, &path, missing);
                }
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "{missing:#?}");
    }
}

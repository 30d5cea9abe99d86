//! `vakt audit verify` and `vakt audit report`: the trail, for the security team.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use vakt::audit::Timestamp;

use super::bad_input;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Walk audit files (oldest first, across rotation) and report the first broken link.
    Verify {
        /// The audit files, oldest first (`audit.log.2 audit.log.1 audit.log`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Accesses per route and action, denials by reason and peer, distinct subjects.
    Report {
        /// The audit files, oldest first.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// RFC 3339 start of the window (inclusive).
        #[arg(long)]
        from: Option<String>,
        /// RFC 3339 end of the window (exclusive).
        #[arg(long)]
        to: Option<String>,
    },
}

impl AuditCommand {
    pub fn run(self) -> ExitCode {
        match self {
            Self::Verify { files } => match vakt::audit::verify(&files) {
                Ok(report) => {
                    println!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("vakt audit verify: {e}");
                    ExitCode::FAILURE
                }
            },
            Self::Report { files, from, to } => {
                let parse = |flag: &str, v: Option<String>| {
                    v.map(|t| {
                        Timestamp::parse_rfc3339(&t).map_err(|e| format!("{flag} {t:?}: {e}"))
                    })
                    .transpose()
                };
                let window = parse("--from", from).and_then(|f| parse("--to", to).map(|t| (f, t)));
                match window
                    .and_then(|(f, t)| vakt::audit::report(&files, f, t).map_err(|e| e.to_string()))
                {
                    Ok(report) => {
                        print!("{report}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => bad_input("audit report", e),
                }
            }
        }
    }
}

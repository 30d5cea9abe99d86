//! `vakt explain` (one request against a policy) and `vakt test` (a file of expected decisions),
//! on the same code path as the sidecar's decisions.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use vakt::authn::Profile;
use vakt::identity::SpiffeId;
use vakt::policy::explain::RequestSpec;
use vakt::policy::{Policy, PolicyContext};

use super::bad_input;

#[derive(Args)]
pub struct ExplainArgs {
    /// The policy file.
    #[arg(long, short)]
    policy: PathBuf,
    /// The request method.
    #[arg(long, short, default_value = "GET")]
    method: String,
    /// The request path as sent (it is canonicalised first, as the sidecar does).
    #[arg(long)]
    path: String,
    /// The request's host.
    #[arg(long)]
    host: Option<String>,
    /// The caller's SPIFFE ID.
    #[arg(long)]
    peer: Option<String>,
    /// A JSON file with the access token's claims.
    #[arg(long)]
    claims: Option<PathBuf>,
    /// How to read the claims: helseid, bankid, signicat, idporten, generic.
    #[arg(long, default_value = "generic")]
    profile: String,
    /// The sidecar's OIDC issuers (repeatable); routes then default to token: required.
    #[arg(long = "issuer")]
    issuers: Vec<String>,
    /// text (for a terminal) or json (every step and condition, for scripts).
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

/// How a report is printed.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// `vakt explain`'s exit code for an outcome: 0 allowed, 1 denied, 3 would be denied (a dry-run
/// route lets it through). 2 is bad input, as for every command.
fn outcome_code(outcome: &str) -> ExitCode {
    match outcome {
        "allow" => ExitCode::SUCCESS,
        "would_deny" => ExitCode::from(3),
        _ => ExitCode::FAILURE,
    }
}

impl ExplainArgs {
    pub fn run(self) -> ExitCode {
        let claims = match self
            .claims
            .map(|f| {
                std::fs::read(&f)
                    .map_err(|e| e.to_string())
                    .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
                    .map_err(|e| format!("--claims {}: {e}", f.display()))
            })
            .transpose()
        {
            Ok(c) => c,
            Err(e) => return bad_input("explain", e),
        };
        let Some(profile) = Profile::ALL
            .into_iter()
            .find(|p| p.as_str() == self.profile)
        else {
            return bad_input(
                "explain",
                format!(
                    "--profile {:?}: expected helseid, bankid, signicat, idporten or generic",
                    self.profile
                ),
            );
        };
        let peer = match self
            .peer
            .map(|p| p.parse::<SpiffeId>().map_err(|e| (p, e)))
            .transpose()
        {
            Ok(peer) => peer,
            Err((p, e)) => return bad_input("explain", format!("--peer {p:?}: {e}")),
        };
        let context = PolicyContext {
            trust_domains: Vec::new(),
            issuers: (!self.issuers.is_empty()).then_some(self.issuers),
            dpop_public_url: None,
        };
        let policy = match Policy::from_file(&self.policy, &context) {
            Ok(p) => p,
            Err(e) => return super::invalid_policy(&self.policy, &e),
        };
        let request = RequestSpec {
            method: self.method,
            path: self.path,
            host: self.host,
            peer,
            claims,
            profile: Some(profile),
        };
        match vakt::policy::explain::explanation(&policy, &request) {
            Ok(explained) => {
                match self.output {
                    Output::Text => print!("{}", explained.text()),
                    Output::Json => println!(
                        "{}",
                        serde_json::to_string_pretty(&explained).unwrap_or_default()
                    ),
                }
                outcome_code(explained.decision.outcome)
            }
            Err(e) => bad_input("explain", e),
        }
    }
}

#[derive(Args)]
pub struct TestArgs {
    /// The test file (it names the policy it tests).
    file: PathBuf,
    /// Run only the cases whose name contains this text (route coverage is then not reported).
    #[arg(long = "run", value_name = "PATTERN")]
    run: Option<String>,
    /// text (for a terminal), json, or junit (JUnit XML for CI).
    #[arg(long, value_enum, default_value = "text")]
    output: TestOutput,
}

/// How `vakt test` reports.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TestOutput {
    Text,
    Json,
    Junit,
}

impl TestArgs {
    /// Exit codes: 0 every case passed, 1 a case failed, 2 the test file (or its policy) is
    /// wrong: unreadable, invalid, or an expectation no decision can meet.
    pub fn run(self) -> ExitCode {
        let report = match vakt::policy::explain::run_tests(&self.file, self.run.as_deref()) {
            Ok(report) => report,
            Err(e) => return bad_input("test", e),
        };
        match self.output {
            TestOutput::Text => print!("{}", report.text()),
            TestOutput::Json => println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            ),
            TestOutput::Junit => print!("{}", report.junit()),
        }
        if report.failed() == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

//! `vakt check`: a sidecar config and/or a policy file, checked without starting anything.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use vakt::identity::TrustDomain;
use vakt::policy::{Policy, PolicyContext};

use super::run::load;

#[derive(Args)]
pub struct CheckArgs {
    /// Sidecar config; its policy file is checked too.
    #[arg(long, short, env = "VAKT_CONFIG", required_unless_present = "policy")]
    config: Option<PathBuf>,
    /// A policy file on its own.
    #[arg(long, short)]
    policy: Option<PathBuf>,
    /// With --policy: the trust domains peers may come from (repeatable).
    #[arg(long = "trust-domain")]
    trust_domains: Vec<String>,
    /// With --policy: the sidecar's OIDC issuers (repeatable); token conditions are checked
    /// against them.
    #[arg(long = "issuer")]
    issuers: Vec<String>,
    /// Also load the certificate files the config names.
    #[arg(long)]
    with_certs: bool,
    /// Exit 1 when there are warnings (errors always exit 2).
    #[arg(long)]
    fail_on_warn: bool,
}

impl CheckArgs {
    pub fn run(self) -> ExitCode {
        let mut policy_checks: Vec<(PathBuf, PolicyContext)> = Vec::new();
        let mut warnings = 0usize;
        if let Some(path) = self.config {
            let config = match load(&path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if self.with_certs
                && let Err(e) = vakt::tls::TlsMaterial::load(&config.identity)
            {
                eprintln!("vakt: certificates: {e}");
                return ExitCode::from(2);
            }
            if self.with_certs
                && let Some(file) = &config.audit.file
                && let Err(e) = writable_dir(&file.path)
            {
                eprintln!("vakt: audit.file.path: {e}");
                return ExitCode::from(2);
            }
            if let Some(inbound) = &config.inbound {
                policy_checks.push((inbound.policy.clone(), config.policy_context()));
                for name in &inbound.keep_headers {
                    warnings += 1;
                    println!(
                        "{}: warning[kept-identity-header]: inbound.keep_headers lets clients send {name}, which other proxies set as identity (docs/HEADERS.md); the app must not trust it",
                        path.display()
                    );
                }
            }
            if !self.with_certs {
                println!(
                    "{}: note: the certificate, key and trust bundle files were not read (--with-certs reads them)",
                    path.display()
                );
            }
            println!(
                "{}: OK (inbound: {}, outbound: {} upstream(s))",
                path.display(),
                if config.inbound.is_some() {
                    "on"
                } else {
                    "off"
                },
                config.outbound.as_ref().map_or(0, |o| o.upstreams.len()),
            );
        }
        if let Some(path) = self.policy {
            let mut tds = Vec::new();
            for td in &self.trust_domains {
                match td.parse::<TrustDomain>() {
                    Ok(td) => tds.push(td),
                    Err(e) => {
                        eprintln!("vakt: --trust-domain {td:?}: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            let issuers = (!self.issuers.is_empty()).then_some(self.issuers);
            policy_checks.push((
                path,
                PolicyContext {
                    trust_domains: tds,
                    issuers,
                    dpop_public_url: None,
                },
            ));
        }
        for (path, context) in policy_checks {
            match Policy::from_file(&path, &context) {
                Ok(policy) => {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let lints = vakt::policy::text_lints(&text)
                        .into_iter()
                        .chain(vakt::policy::lint(&policy, &context));
                    for warning in lints {
                        warnings += 1;
                        println!(
                            "{}: warning[{}]: {}",
                            path.display(),
                            warning.code,
                            warning.message
                        );
                    }
                    println!("{}: OK ({} route(s))", path.display(), policy.routes.len())
                }
                Err(e) => return super::invalid_policy(&path, &e),
            }
        }
        if warnings > 0 && self.fail_on_warn {
            eprintln!("vakt check: {warnings} warning(s) and --fail-on-warn");
            return ExitCode::FAILURE;
        }
        ExitCode::SUCCESS
    }
}

/// The directory of `file` exists and this user may create files in it (what the audit sink
/// needs at start): tried with a file created and removed at once.
fn writable_dir(file: &std::path::Path) -> Result<(), String> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!("{}: the directory does not exist", dir.display()));
    }
    let probe = dir.join(format!(".vakt-check-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| format!("{}: cannot create files there: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

//! The `vakt` command line: run the sidecar, check a config, manage the dev PKI, run the demo.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use vakt::app::App;
use vakt::certs::{CertificateAuthority, LeafSpec};
use vakt::config::{Config, LogFormat};
use vakt::identity::{SpiffeId, TrustDomain};
use vakt::policy::explain::RequestSpec;
use vakt::policy::{Policy, PolicyContext};

/// See Cargo.toml: the allocator is on every request's path. Its options come from the
/// environment (`MIMALLOC_PURGE_DELAY=0` in the image and the chart).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "vakt",
    version,
    about = "Zero-trust service-mesh sidecar (mTLS, SPIFFE, OIDC, policy, audit)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar.
    Run {
        #[arg(long, short, env = "VAKT_CONFIG")]
        config: PathBuf,
    },
    /// Validate a sidecar config and/or a policy file without starting anything (non-zero
    /// exit on any error, so it can run in a service's CI).
    Check {
        /// Sidecar config; its policy file is checked too.
        #[arg(long, short, required_unless_present = "policy")]
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
    },
    /// Show how the policy decides one request: canonical path, route, each rule, decision.
    Explain {
        #[arg(long, short)]
        policy: PathBuf,
        #[arg(long, short, default_value = "GET")]
        method: String,
        #[arg(long)]
        path: String,
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
    },
    /// Run a policy test file (cases: request -> expected decision and reason).
    Test {
        /// The test file (it names the policy it tests).
        file: PathBuf,
    },
    /// Development PKI: a throwaway CA and workload certificates (never for production).
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Start a mesh on loopback, send requests through it and explain what happened.
    Demo,
    /// The audit trail: verify the hash chain, or summarise for the security team.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Development OIDC issuer on loopback: serve discovery + JWKS, mint tokens, rotate keys.
    DevIdp {
        #[command(subcommand)]
        command: DevIdpCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk audit files (oldest first, across rotation) and report the first broken link.
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Accesses per route and action, denials by reason and peer, distinct subjects.
    Report {
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

#[derive(Subcommand)]
enum DevIdpCommand {
    /// Serve discovery and JWKS for the keys in DIR (prints the issuer URL; Ctrl-C stops).
    Serve {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: std::net::SocketAddr,
        #[arg(long)]
        dir: PathBuf,
        /// Path prefix of the issuer, e.g. /auth/realms/current (BankID style).
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Print an access token with a provider's claims, signed by the current key in DIR.
    Mint {
        #[arg(long)]
        dir: PathBuf,
        /// The issuer URL `serve` printed.
        #[arg(long)]
        issuer: String,
        /// helseid, bankid, signicat, idporten or generic.
        #[arg(long, default_value = "helseid")]
        profile: String,
        #[arg(long, default_value = "dev-user")]
        sub: String,
        /// National identity number to carry (test numbers only).
        #[arg(long)]
        national_id: Option<String>,
        /// low, substantial or high.
        #[arg(long, default_value = "high")]
        level: String,
        #[arg(long, default_value = "dev-client")]
        client_id: String,
        /// Scopes (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        #[arg(long, default_value = "vakt")]
        audience: String,
        /// RS256, PS256 or ES256.
        #[arg(long, default_value = "RS256")]
        alg: String,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
        lifetime: Duration,
        /// Mint this many tokens, one per line, for subjects `<sub>-0`, `<sub>-1`, ... (load tests).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        count: u32,
    },
    /// Make a new key current for ALG; the previous one stays published.
    Rotate {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "RS256")]
        alg: String,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a development CA (ca.pem, ca-key.pem) in DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        trust_domain: String,
        /// CA validity, e.g. 365d.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "365d")]
        validity: Duration,
        /// Replace an existing CA in DIR.
        #[arg(long)]
        force: bool,
    },
    /// Issue a workload certificate (X509-SVID, ECDSA P-256) into OUT: cert.pem, key.pem, bundle.pem.
    Issue {
        /// Directory of the CA made by `vakt certs init`.
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        spiffe_id: String,
        #[arg(long)]
        out: PathBuf,
        /// Certificate validity, e.g. 24h (short-lived by default).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "24h")]
        validity: Duration,
    },
}

fn main() -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(config),
        Command::Check {
            config,
            policy,
            trust_domains,
            issuers,
            with_certs,
        } => check(config, policy, trust_domains, issuers, with_certs),
        Command::Explain {
            policy,
            method,
            path,
            host,
            peer,
            claims,
            profile,
            issuers,
        } => explain(policy, method, path, host, peer, claims, profile, issuers),
        Command::Test { file } => policy_test(file),
        Command::Certs { command } => certs(command),
        Command::Demo => demo(),
        Command::DevIdp { command } => dev_idp(command),
        Command::Audit { command } => audit(command),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    sidecar_runtime(&vakt::config::RuntimeConfig::default())
}

/// One worker: a current-thread runtime (no work stealing, no cross-thread wake-ups); more: a
/// multi-thread runtime with that many workers.
fn sidecar_runtime(config: &vakt::config::RuntimeConfig) -> tokio::runtime::Runtime {
    let workers = config.worker_threads();
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vakt: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    }
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::from_file(path).map_err(|e| {
        eprintln!("vakt: invalid configuration: {e}");
        ExitCode::from(2)
    })
}

fn run(path: PathBuf) -> ExitCode {
    let config = match load(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_logging(config.log.format, &config.log.level);
    sidecar_runtime(&config.runtime).block_on(async move {
        let app = match App::start(config).await {
            Ok(app) => app,
            Err(e) => {
                tracing::error!(error = %e, "vakt cannot start");
                eprintln!("vakt: cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        wait_for_shutdown_signal(&app).await;
        tracing::info!("shutting down: draining in-flight requests");
        // A drain that outlasts the grace period is still a clean, requested stop.
        app.shutdown().await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_shutdown_signal(app: &App) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stopping");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading certificates and policy");
                app.reload().await;
            }
        }
    }
}

fn check(
    config: Option<PathBuf>,
    policy: Option<PathBuf>,
    trust_domains: Vec<String>,
    issuers: Vec<String>,
    with_certs: bool,
) -> ExitCode {
    let mut policy_checks: Vec<(PathBuf, PolicyContext)> = Vec::new();
    if let Some(path) = config {
        let config = match load(&path) {
            Ok(c) => c,
            Err(code) => return code,
        };
        if with_certs && let Err(e) = vakt::tls::TlsMaterial::load(&config.identity) {
            eprintln!("vakt: certificates: {e}");
            return ExitCode::from(2);
        }
        if let Some(inbound) = &config.inbound {
            policy_checks.push((inbound.policy.clone(), config.policy_context()));
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
    if let Some(path) = policy {
        let mut tds = Vec::new();
        for td in &trust_domains {
            match td.parse::<TrustDomain>() {
                Ok(td) => tds.push(td),
                Err(e) => {
                    eprintln!("vakt: --trust-domain {td:?}: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        let issuers = (!issuers.is_empty()).then_some(issuers);
        policy_checks.push((
            path,
            PolicyContext {
                trust_domains: tds,
                issuers,
            },
        ));
    }
    for (path, context) in policy_checks {
        match Policy::from_file(&path, &context) {
            Ok(policy) => println!("{}: OK ({} route(s))", path.display(), policy.routes.len()),
            Err(e) => {
                eprintln!("vakt: invalid policy:\n{e}");
                return ExitCode::from(2);
            }
        }
    }
    ExitCode::SUCCESS
}

#[allow(clippy::too_many_arguments)]
fn explain(
    policy: PathBuf,
    method: String,
    path: String,
    host: Option<String>,
    peer: Option<String>,
    claims: Option<PathBuf>,
    profile: String,
    issuers: Vec<String>,
) -> ExitCode {
    let claims = match claims
        .map(|f| {
            std::fs::read(&f)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
                .map_err(|e| format!("--claims {}: {e}", f.display()))
        })
        .transpose()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vakt explain: {e}");
            return ExitCode::from(2);
        }
    };
    let profile = match serde_json::from_value::<vakt::authn::Profile>(serde_json::Value::String(
        profile.clone(),
    )) {
        Ok(p) => p,
        Err(_) => {
            eprintln!(
                "vakt explain: --profile {profile:?}: expected helseid, bankid, signicat, idporten or generic"
            );
            return ExitCode::from(2);
        }
    };
    let peer = match peer
        .map(|p| p.parse::<SpiffeId>().map_err(|e| (p, e)))
        .transpose()
    {
        Ok(peer) => peer,
        Err((p, e)) => {
            eprintln!("vakt explain: --peer {p:?}: {e}");
            return ExitCode::from(2);
        }
    };
    let context = PolicyContext {
        trust_domains: Vec::new(),
        issuers: (!issuers.is_empty()).then_some(issuers),
    };
    let policy = match Policy::from_file(&policy, &context) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("vakt: invalid policy:\n{e}");
            return ExitCode::from(2);
        }
    };
    let request = RequestSpec {
        method,
        path,
        host,
        peer,
        claims,
        profile: Some(profile),
    };
    match vakt::policy::explain::explain(&policy, &request) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vakt explain: {e}");
            ExitCode::from(2)
        }
    }
}

fn policy_test(file: PathBuf) -> ExitCode {
    let mut report = String::new();
    let result = vakt::policy::explain::run_tests(&file, &mut report);
    print!("{report}");
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("vakt test: {e}");
            ExitCode::from(2)
        }
    }
}

fn certs(command: CertsCommand) -> ExitCode {
    let result = match command {
        CertsCommand::Init {
            dir,
            trust_domain,
            validity,
            force,
        } => trust_domain
            .parse::<TrustDomain>()
            .map_err(|e| format!("--trust-domain {trust_domain:?}: {e}"))
            .and_then(|td| {
                let ca = CertificateAuthority::generate(td.as_str(), validity)
                    .map_err(|e| e.to_string())?;
                ca.save(&dir, force).map_err(|e| e.to_string())?;
                Ok(format!(
                    "created development CA for trust domain {td} in {} (ca.pem, ca-key.pem); never use it in production",
                    dir.display()
                ))
            }),
        CertsCommand::Issue {
            ca,
            spiffe_id,
            out,
            validity,
        } => spiffe_id
            .parse::<SpiffeId>()
            .map_err(|e| format!("--spiffe-id {spiffe_id:?}: {e}"))
            .and_then(|id| {
                let ca = CertificateAuthority::load(&ca).map_err(|e| e.to_string())?;
                let issued = ca
                    .issue(&LeafSpec::svid(id.as_str(), validity))
                    .map_err(|e| e.to_string())?;
                issued.save(&out, &ca).map_err(|e| e.to_string())?;
                Ok(format!(
                    "issued {id} valid for {} into {} (cert.pem, key.pem, bundle.pem)",
                    humantime::format_duration(validity),
                    out.display()
                ))
            }),
    };
    match result {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vakt certs: {e}");
            ExitCode::from(2)
        }
    }
}

fn demo() -> ExitCode {
    init_logging(LogFormat::Text, "warn");
    let mut stdout = std::io::stdout();
    match runtime().block_on(vakt::demo::run(&mut stdout)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("vakt demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dev_idp(command: DevIdpCommand) -> ExitCode {
    use vakt::authn::devidp;
    let result: Result<String, String> = match command {
        DevIdpCommand::Serve {
            listen,
            dir,
            prefix,
        } => runtime()
            .block_on(devidp::serve_forever(listen, &dir, &prefix))
            .map(|()| String::new())
            .map_err(|e| e.to_string()),
        DevIdpCommand::Mint {
            dir,
            issuer,
            profile,
            sub,
            national_id,
            level,
            client_id,
            scopes,
            audience,
            alg,
            lifetime,
            count,
        } => (|| {
            let profile: devidp::Profile =
                profile.parse().map_err(|e| format!("--profile: {e}"))?;
            let level: devidp::Level = level.parse().map_err(|e| format!("--level: {e}"))?;
            let alg: devidp::Alg = alg.parse().map_err(|e| format!("--alg: {e}"))?;
            let person = devidp::Person {
                sub,
                national_id,
                level,
                client_id,
                scopes,
                audience,
                ..devidp::Person::default()
            };
            devidp::mint_cli(
                &dir,
                &issuer,
                profile,
                person,
                alg,
                lifetime,
                count as usize,
            )
            .map_err(|e| e.to_string())
        })(),
        DevIdpCommand::Rotate { dir, alg } => (|| {
            let alg: devidp::Alg = alg.parse().map_err(|e| format!("--alg: {e}"))?;
            let keys = devidp::KeyStore::open_or_create(&dir).map_err(|e| e.to_string())?;
            keys.rotate(alg)
                .map(|kid| format!("new current {alg} key: {kid}"))
                .map_err(|e| e.to_string())
        })(),
    };
    match result {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vakt dev-idp: {e}");
            ExitCode::from(2)
        }
    }
}

fn audit(command: AuditCommand) -> ExitCode {
    use vakt::audit::Timestamp;
    match command {
        AuditCommand::Verify { files } => match vakt::audit::verify(&files) {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vakt audit verify: {e}");
                ExitCode::FAILURE
            }
        },
        AuditCommand::Report { files, from, to } => {
            let parse = |flag: &str, v: Option<String>| {
                v.map(|t| Timestamp::parse_rfc3339(&t).map_err(|e| format!("{flag} {t:?}: {e}")))
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
                Err(e) => {
                    eprintln!("vakt audit report: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

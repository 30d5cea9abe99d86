//! The development commands (cargo feature `dev`): `vakt certs`, `vakt demo`, `vakt dev-idp`.
//! The production build has none of them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use vakt::config::{LogFormat, RuntimeConfig};
use vakt::dev::certs::{CertificateAuthority, LeafSpec};
use vakt::dev::idp;
use vakt::identity::{SpiffeId, TrustDomain};

use super::bad_input;
use super::run::{init_logging, runtime};

#[derive(Subcommand)]
pub enum CertsCommand {
    /// Create a development CA (ca.pem, ca-key.pem) in DIR.
    Init {
        /// The directory to write the CA into.
        #[arg(long)]
        dir: PathBuf,
        /// The CA's trust domain, e.g. cluster.local.
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
        /// The workload's SPIFFE ID (its URI SAN).
        #[arg(long)]
        spiffe_id: String,
        /// The directory to write the certificate, key and bundle into.
        #[arg(long)]
        out: PathBuf,
        /// Certificate validity, e.g. 24h (short-lived by default).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "24h")]
        validity: Duration,
    },
}

impl CertsCommand {
    pub fn run(self) -> ExitCode {
        let result = match self {
            Self::Init {
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
            Self::Issue {
                ca,
                spiffe_id,
                out,
                validity,
            } => spiffe_id
                .parse::<SpiffeId>()
                .map_err(|e| format!("--spiffe-id {spiffe_id:?}: {e}"))
                .and_then(|id| {
                    let ca = CertificateAuthority::load(&ca).map_err(|e| e.to_string())?;
                    // A peer's identity is checked against the CA of its own trust domain: an
                    // SVID for another trust domain from this CA would be refused everywhere.
                    if let Some(td) = ca.trust_domain()
                        && td != id.trust_domain_str()
                    {
                        return Err(format!(
                            "--spiffe-id {id} is outside the CA's trust domain {td}; make a CA for {} (vakt certs init --trust-domain {} --dir DIR)",
                            id.trust_domain_str(),
                            id.trust_domain_str()
                        ));
                    }
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
            Err(e) => bad_input("certs", e),
        }
    }
}

/// `vakt demo`: a mesh on loopback with a throwaway PKI and issuer, explained.
pub fn demo(keep: Option<&std::path::Path>) -> ExitCode {
    init_logging(LogFormat::Text, "warn");
    let mut stdout = std::io::stdout();
    match runtime(&RuntimeConfig::default()).block_on(vakt::dev::demo::run(&mut stdout, keep)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("vakt demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Subcommand)]
pub enum DevIdpCommand {
    /// Serve discovery and JWKS for the keys in DIR (prints the issuer URL; Ctrl-C stops).
    Serve {
        /// The loopback address to serve on.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: std::net::SocketAddr,
        /// The key directory (made on first use).
        #[arg(long)]
        dir: PathBuf,
        /// Path prefix of the issuer, e.g. /auth/realms/current (BankID style).
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Print an access token with a provider's claims, signed by the current key in DIR.
    Mint(MintArgs),
    /// Print a DPoP proof (RFC 9449) for a method and URL, signed by a client key.
    Proof(ProofArgs),
    /// Make a new key current for ALG; the previous one stays published.
    Rotate {
        /// The key directory.
        #[arg(long)]
        dir: PathBuf,
        /// RS256, PS256 or ES256.
        #[arg(long, default_value = "RS256")]
        alg: String,
    },
}

#[derive(clap::Args)]
pub struct MintArgs {
    /// The key directory.
    #[arg(long)]
    dir: PathBuf,
    /// The issuer URL `serve` printed.
    #[arg(long)]
    issuer: String,
    /// helseid, bankid, signicat, idporten or generic.
    #[arg(long, default_value = "helseid")]
    profile: String,
    /// The subject.
    #[arg(long, default_value = "dev-user")]
    sub: String,
    /// National identity number to carry (test numbers only).
    #[arg(long)]
    national_id: Option<String>,
    /// low, substantial or high.
    #[arg(long, default_value = "high")]
    level: String,
    /// The client id the token names.
    #[arg(long, default_value = "dev-client")]
    client_id: String,
    /// Scopes (repeatable).
    #[arg(long = "scope")]
    scopes: Vec<String>,
    /// The audience.
    #[arg(long, default_value = "vakt")]
    audience: String,
    /// RS256, PS256 or ES256.
    #[arg(long, default_value = "RS256")]
    alg: String,
    /// How long the token is valid.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    lifetime: Duration,
    /// Mint this many tokens, one per line, for subjects `<sub>-0`, `<sub>-1`, ... (load tests).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    count: u32,
    /// Bind the token to this DPoP client key (`cnf.jkt`; PKCS#8 file, made if missing).
    #[arg(long)]
    dpop_key: Option<PathBuf>,
    /// The DPoP client key's algorithm (as `dev-idp proof --alg`).
    #[arg(long, default_value = "ES256")]
    dpop_alg: String,
}

#[derive(clap::Args)]
pub struct ProofArgs {
    /// The DPoP client key (PKCS#8 file, made if missing; the one the token is bound to).
    #[arg(long)]
    dpop_key: PathBuf,
    /// The key's algorithm: ES256, ES384, RS256, PS256, ...
    #[arg(long, default_value = "ES256")]
    alg: String,
    /// The request method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// The URL as the client calls it (scheme, host, path; no query).
    #[arg(long)]
    url: String,
    /// The access token the proof goes with (its hash becomes `ath`).
    #[arg(long)]
    token: Option<String>,
    /// A nonce from a `DPoP-Nonce` header.
    #[arg(long)]
    nonce: Option<String>,
    /// Make this many proofs, one per line, each with its own `jti` (load tests).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    count: u32,
    /// A file of tokens, one per line: proof i goes with token i mod n (instead of --token).
    #[arg(long, conflicts_with = "token")]
    tokens: Option<PathBuf>,
}

impl ProofArgs {
    fn proof(self) -> Result<String, String> {
        let alg = idp::parse_proof_alg(&self.alg).map_err(|e| format!("--alg: {e}"))?;
        let key = vakt::dev::dpop::DpopClientKey::load_or_create(&self.dpop_key, alg)
            .map_err(|e| e.to_string())?;
        let tokens: Vec<String> = match &self.tokens {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("--tokens {}: {e}", path.display()))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
            None => self.token.into_iter().collect(),
        };
        let mut lines = Vec::with_capacity(self.count as usize);
        for i in 0..self.count as usize {
            let token = (!tokens.is_empty()).then(|| tokens[i % tokens.len()].as_str());
            lines.push(
                key.proof(&self.method, &self.url, token, self.nonce.as_deref())
                    .map_err(|e| e.to_string())?,
            );
        }
        Ok(lines.join("\n"))
    }
}

impl MintArgs {
    fn mint(self) -> Result<String, String> {
        let profile = idp::parse_profile(&self.profile).map_err(|e| format!("--profile: {e}"))?;
        let level = idp::parse_level(&self.level).map_err(|e| format!("--level: {e}"))?;
        let alg = idp::parse_alg(&self.alg).map_err(|e| format!("--alg: {e}"))?;
        let person = idp::Person {
            sub: self.sub,
            national_id: self.national_id,
            level,
            client_id: self.client_id,
            scopes: self.scopes,
            audience: self.audience,
            ..idp::Person::default()
        };
        let cnf = match &self.dpop_key {
            Some(path) => Some(
                vakt::dev::dpop::DpopClientKey::load_or_create(
                    path,
                    idp::parse_proof_alg(&self.dpop_alg).map_err(|e| format!("--dpop-alg: {e}"))?,
                )
                .map_err(|e| format!("--dpop-key: {e}"))?
                .cnf(),
            ),
            None => None,
        };
        idp::mint_cli(
            &self.dir,
            &self.issuer,
            profile,
            person,
            &idp::CliMint {
                alg,
                lifetime: self.lifetime,
                count: self.count as usize,
                cnf,
            },
        )
        .map_err(|e| e.to_string())
    }
}

impl DevIdpCommand {
    pub fn run(self) -> ExitCode {
        let result: Result<String, String> = match self {
            Self::Serve {
                listen,
                dir,
                prefix,
            } => runtime(&RuntimeConfig::default())
                .block_on(idp::serve_forever(listen, &dir, &prefix))
                .map(|()| String::new())
                .map_err(|e| e.to_string()),
            Self::Mint(args) => args.mint(),
            Self::Proof(args) => args.proof(),
            Self::Rotate { dir, alg } => (|| {
                let alg = idp::parse_alg(&alg).map_err(|e| format!("--alg: {e}"))?;
                let keys = idp::KeyStore::open_or_create(&dir).map_err(|e| e.to_string())?;
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
            Err(e) => bad_input("dev-idp", e),
        }
    }
}

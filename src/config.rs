//! The sidecar configuration: one YAML file, strict (`deny_unknown_fields`), parsed straight into
//! domain types (SPIFFE IDs, socket addresses, durations) and then checked as a whole.
//!
//! Each module owns the types of its own section (`tls`, `limits`, `upstream`, `authn`,
//! `audit`, `admin`, `pseudonym`) and checks its own values; this file composes them into the
//! file format, holds the process-level sections (runtime, shutdown, log), and checks keys
//! against each other. Only the composition root and the command line read it.
//!
//! Every key is documented in `config/vakt.example.yaml`; a test parses each example so they
//! never rot. Relative file paths are resolved against the directory of the config file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

// The sections' types, named here for users of the file format whose modules are internal.
pub use crate::admin::AdminConfig;
pub use crate::audit::AuditSettings;
pub use crate::authn::OidcConfig;
pub use crate::capture::CaptureMode;
pub use crate::hygiene::{ForwardedHeaders, HygieneConfig, UnderscoreHeaders};
use crate::identity::TrustDomain;
pub use crate::limits::Limits;
use crate::policy::PolicyContext;
pub use crate::pseudonym::PseudonymConfig;
use crate::serde_helpers::{de_duration, de_header_names};
pub use crate::tls::{IdentityConfig, TlsSettings};
pub use crate::upstream::{AppProtocol, Authority, Passthrough, UpstreamConfig};

/// Largest config file we read; a sidecar config is a few KiB.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: PathBuf },
    /// The file is not YAML of the config's shape.
    #[error("{}: {error}", path.display())]
    Parse {
        path: PathBuf,
        error: crate::serde_helpers::YamlError,
    },
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This workload's certificate, key and the mesh trust bundle.
    pub identity: IdentityConfig,
    #[serde(default)]
    pub tls: TlsSettings,
    /// Traffic from other pods to the local app (mTLS in, plaintext to the app).
    #[serde(default)]
    pub inbound: Option<InboundConfig>,
    /// Traffic from the local app to other services (plaintext in, mTLS out).
    #[serde(default)]
    pub outbound: Option<OutboundConfig>,
    /// End-user access tokens: trusted OIDC issuers (omit for mTLS-only services).
    #[serde(default)]
    pub oidc: Option<OidcConfig>,
    /// Keyed pseudonyms for national ids (a Kubernetes Secret). Without it a random per-process
    /// key is used: nothing leaves in clear, but pseudonyms are not stable.
    #[serde(default)]
    pub pseudonymisation: Option<PseudonymConfig>,
    /// The audit trail: one event per decision, refused handshake and refused egress.
    #[serde(default)]
    pub audit: AuditSettings,
    /// Which client header names reach the other side, and the `Forwarded` family.
    #[serde(default)]
    pub hygiene: HygieneConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
}

/// The threads that serve traffic.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Worker threads. Default: the CPUs this process may use (its affinity and cgroup CPU
    /// quota, i.e. the pod's CPU limit rounded up). With one, every connection is served on one
    /// thread: no work stealing and no cross-thread wake-ups, the common case for a sidecar.
    #[serde(default)]
    pub workers: Option<std::num::NonZeroUsize>,
}

impl RuntimeConfig {
    /// The number of worker threads to start.
    pub fn worker_threads(&self) -> usize {
        self.workers.map(|n| n.get()).unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    #[serde(default = "defaults::inbound_listen")]
    pub listen: SocketAddr,
    /// Where the local app listens (plaintext; keep it on loopback).
    #[serde(default = "defaults::app")]
    pub app: SocketAddr,
    #[serde(default)]
    pub app_protocol: AppProtocol,
    /// The per-route policy file (a YAML file of its own, e.g. from a ConfigMap). Watched and
    /// hot-reloaded; requests matching no route are denied.
    pub policy: PathBuf,
    /// Further client-sent headers removed before forwarding (identity headers the app trusts),
    /// besides vakt's own and the default strip list (`docs/HEADERS.md`).
    #[serde(default, deserialize_with = "de_header_names")]
    pub strip_headers: Vec<HeaderName>,
    /// Names of the default strip list the app may receive from clients after all (`vakt
    /// check` warns about each). Headers only vakt sets cannot be listed.
    #[serde(default, deserialize_with = "de_header_names")]
    pub keep_headers: Vec<HeaderName>,
    /// The app's health endpoint (a path such as `/healthz`): `/ready` is true only while it
    /// answers 2xx (asked every 2 s).
    #[serde(default)]
    pub app_health: Option<String>,
    /// Paths of the app the admin port answers at `/app-health/<path>` with the app's status,
    /// for the kubelet's `httpGet` probes of an app bound to loopback. Only these, GET only, no
    /// body.
    #[serde(default)]
    pub app_probe_paths: Vec<String>,
}

impl InboundConfig {
    /// The header-name rules of the inbound direction.
    pub fn header_rules(&self, hygiene: &HygieneConfig) -> crate::hygiene::HeaderRules {
        crate::hygiene::HeaderRules::new(
            hygiene,
            self.strip_headers.clone(),
            self.keep_headers.clone(),
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// Loopback address the local app sends its outbound requests to (HTTP_PROXY), and where
    /// transparent capture redirects the app's connections.
    #[serde(default = "defaults::outbound_listen")]
    pub listen: SocketAddr,
    /// `proxy`: the app sends through `HTTP_PROXY`. `transparent`: `vakt net setup` redirects
    /// every TCP connection of the app here, and vakt reads where it was going
    /// (`docs/CAPTURE.md`).
    #[serde(default)]
    pub capture: CaptureMode,
    /// The egress allow-list: every destination the app may reach, and who must answer there.
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long the drain after SIGTERM may take: inbound first, then outbound once the app has
    /// let go of it.
    #[serde(default = "defaults::grace_period", deserialize_with = "de_duration")]
    pub grace_period: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace_period: defaults::grace_period(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter such as `info` or `vakt=debug,info`; `RUST_LOG` overrides it.
    #[serde(default = "defaults::log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            level: defaults::log_level(),
        }
    }
}

mod defaults {
    use std::net::SocketAddr;
    use std::time::Duration;

    pub fn inbound_listen() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 15443))
    }
    pub fn app() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8080))
    }
    pub fn outbound_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 15001))
    }
    pub fn grace_period() -> Duration {
        Duration::from_secs(30)
    }
    pub fn log_level() -> String {
        "info".to_owned()
    }
}

impl Config {
    /// The policy-check context this sidecar gives its policy file.
    pub fn policy_context(&self) -> PolicyContext {
        PolicyContext {
            trust_domains: self.identity.trust_domains(),
            issuers: Some(
                self.oidc
                    .iter()
                    .flat_map(|o| o.issuers.iter().map(|i| i.issuer.clone()))
                    .collect(),
            ),
            dpop_public_url: self.oidc.as_ref().map(|o| {
                !o.dpop.public_url.is_empty()
                    || o.issuers.iter().any(|i| !i.dpop.public_url.is_empty())
            }),
        }
    }

    /// Read, parse and check a config file. Relative paths inside it are resolved against the
    /// file's directory.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let io = |source| ConfigError::Io {
            path: path.to_owned(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let mut config = Self::from_yaml(&text).map_err(|e| match e {
            ConfigError::Parse { error, .. } => ConfigError::Parse {
                path: path.to_owned(),
                error,
            },
            other => other,
        })?;
        if let Some(dir) = path.parent() {
            config.resolve_paths(dir);
        }
        Ok(config)
    }

    /// Parse and check YAML text (paths stay as written).
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let config: Config =
            crate::serde_helpers::from_yaml(text).map_err(|error| ConfigError::Parse {
                path: PathBuf::from("config"),
                error,
            })?;
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let policy = self.inbound.as_mut().map(|i| &mut i.policy);
        let key = self.pseudonymisation.as_mut().map(|p| &mut p.key_file);
        let audit = self.audit.file.as_mut().map(|f| &mut f.path);
        let chain_key = self.audit.chain_key.as_mut().map(|k| &mut k.key_file);
        let checkpoints = self.audit.checkpoint_file.as_mut();
        let nonce_secret = self
            .oidc
            .as_mut()
            .and_then(|o| o.dpop.nonce_secret_file.as_mut());
        let federation = self.identity.federation.iter_mut().map(|f| &mut f.bundle);
        for p in [
            &mut self.identity.cert,
            &mut self.identity.key,
            &mut self.identity.trust_bundle,
        ]
        .into_iter()
        .chain(federation)
        .chain(policy)
        .chain(key)
        .chain(audit)
        .chain(chain_key)
        .chain(checkpoints)
        .chain(nonce_secret)
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Checks that span several keys. Field syntax is checked while parsing.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.inbound.is_none() && self.outbound.is_none() {
            return Err(ConfigError::invalid(
                "inbound/outbound",
                "neither is configured; vakt would carry no traffic (configure at least one)",
            ));
        }
        self.identity
            .validate()
            .map_err(|(key, problem)| ConfigError::invalid(key, problem))?;
        let accepted = self.identity.trust_domains();
        let mut listeners = vec![("admin.listen", self.admin.listen)];
        if let Some(inbound) = &self.inbound {
            listeners.push(("inbound.listen", inbound.listen));
            for (i, name) in inbound.keep_headers.iter().enumerate() {
                if crate::hygiene::names::is_protected(name) {
                    return Err(ConfigError::invalid(
                        format!("inbound.keep_headers[{i}]"),
                        format!("{name} is set only by vakt and is never passed from a client"),
                    ));
                }
                if inbound.strip_headers.contains(name) {
                    return Err(ConfigError::invalid(
                        format!("inbound.keep_headers[{i}]"),
                        format!("{name} is also in inbound.strip_headers"),
                    ));
                }
            }
            let paths = inbound.app_health.iter().map(|p| ("inbound.app_health", p));
            let probes = inbound
                .app_probe_paths
                .iter()
                .map(|p| ("inbound.app_probe_paths", p));
            for (key, path) in paths.chain(probes) {
                if !is_plain_path(path) {
                    return Err(ConfigError::invalid(
                        key,
                        format!(
                            "\"{path}\" is not a plain path (it starts with /, has no query, no dot segments and only visible ASCII)"
                        ),
                    ));
                }
            }
            if inbound.app == inbound.listen {
                return Err(ConfigError::invalid(
                    "inbound.app",
                    "is the same address as inbound.listen (requests would loop)",
                ));
            }
        }
        if let Some(outbound) = &self.outbound {
            listeners.push(("outbound.listen", outbound.listen));
            if !outbound.listen.ip().is_loopback() {
                return Err(ConfigError::invalid(
                    "outbound.listen",
                    format!(
                        "{} is not a loopback address; the plaintext outbound listener must only be reachable by the local app (use 127.0.0.1)",
                        outbound.listen
                    ),
                ));
            }
            for (i, up) in outbound.upstreams.iter().enumerate() {
                let key = format!("outbound.upstreams[{i}]");
                if outbound.upstreams[..i]
                    .iter()
                    .any(|u| u.authority == up.authority)
                {
                    return Err(ConfigError::invalid(
                        format!("{key}.authority"),
                        format!("{} is listed twice", up.authority),
                    ));
                }
                let Some(target) = up.mesh() else {
                    self.check_passthrough(&key, up, outbound.capture)?;
                    continue;
                };
                if Authority::parse(target.address, 0)
                    .filter(|a| !a.as_str().ends_with(":0"))
                    .is_none()
                {
                    return Err(ConfigError::invalid(
                        format!("{key}.address"),
                        format!(
                            "\"{}\" is not host:port with an explicit port",
                            target.address
                        ),
                    ));
                }
                if !accepted.contains(&target.spiffe_id.trust_domain()) {
                    return Err(ConfigError::invalid(
                        format!("{key}.spiffe_id"),
                        format!(
                            "{} is outside the accepted trust domains ({}); a federated trust domain needs an entry with its bundle in identity.federation",
                            target.spiffe_id,
                            join(&accepted)
                        ),
                    ));
                }
            }
        }
        for (i, (name, addr)) in listeners.iter().enumerate() {
            if addr.port() != 0
                && let Some((other, _)) = listeners[..i].iter().find(|(_, a)| a == addr)
            {
                return Err(ConfigError::invalid(
                    *name,
                    format!("{addr} is already used by {other}"),
                ));
            }
        }
        self.limits
            .validate()
            .map_err(|(key, problem)| ConfigError::invalid(key, problem))?;
        self.admin
            .validate()
            .map_err(|(key, problem)| ConfigError::invalid(key, problem))?;
        self.audit
            .validate()
            .map_err(|(key, problem)| ConfigError::invalid(key, problem))?;
        if let Some(oidc) = &self.oidc {
            oidc.validate()
                .map_err(|(key, problem)| ConfigError::invalid(key, problem))?;
            if self.inbound.is_none() {
                return Err(ConfigError::invalid(
                    "oidc",
                    "tokens are checked on inbound requests; configure inbound or remove oidc",
                ));
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(ConfigError::invalid(
                "log.level",
                format!("\"{}\" is not a valid filter: {e}", self.log.level),
            ));
        }
        Ok(())
    }

    /// An egress entry without a mesh target: it must be a whole passthrough entry, and only
    /// transparent capture can see the connections it is for.
    fn check_passthrough(
        &self,
        key: &str,
        up: &UpstreamConfig,
        capture: CaptureMode,
    ) -> Result<(), ConfigError> {
        match (up.passthrough, &up.address, &up.spiffe_id) {
            (None, None, _) => Err(ConfigError::invalid(
                format!("{key}.address"),
                "is missing: a mesh destination needs the address and spiffe_id of its sidecar (or mark an external TLS service passthrough: tls)",
            )),
            (None, Some(_), _) => Err(ConfigError::invalid(
                format!("{key}.spiffe_id"),
                "is missing: the SPIFFE ID the destination's sidecar must present",
            )),
            (Some(_), Some(_), _) => Err(ConfigError::invalid(
                format!("{key}.address"),
                "a passthrough destination is reached at the address the app dialed; remove address",
            )),
            (Some(_), None, Some(_)) => Err(ConfigError::invalid(
                format!("{key}.spiffe_id"),
                "a passthrough destination keeps its own TLS, vakt sees no SPIFFE ID there; remove spiffe_id",
            )),
            (Some(Passthrough::Tls), None, None) if capture != CaptureMode::Transparent => {
                Err(ConfigError::invalid(
                    format!("{key}.passthrough"),
                    "needs outbound.capture: transparent (in proxy mode the app's TLS connections do not pass through vakt)",
                ))
            }
            (Some(Passthrough::Tls), None, None) => {
                if up.authority.port() == Some(80) {
                    return Err(ConfigError::invalid(
                        format!("{key}.authority"),
                        "port 80 (the default when none is given): give the service's TLS port, e.g. idp.example:443",
                    ));
                }
                let host = up.authority.host();
                if host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() {
                    return Err(ConfigError::invalid(
                        format!("{key}.authority"),
                        "a passthrough destination is checked by the name in its TLS ClientHello (SNI): give a DNS name, not an address",
                    ));
                }
                Ok(())
            }
        }
    }
}

/// A path the admin port may ask the app for: absolute, no query or fragment, no dot segment,
/// visible ASCII only.
fn is_plain_path(path: &str) -> bool {
    path.starts_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#' && b != b'%')
        && !path
            .split('/')
            .any(|segment| segment == "." || segment == "..")
}

fn join(tds: &[TrustDomain]) -> String {
    tds.iter()
        .map(TrustDomain::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::TlsVersion;

    const MINIMAL: &str = "
identity:
  trust_domain: cluster.local
  cert: cert.pem
  key: key.pem
  trust_bundle: bundle.pem
inbound:
  policy: policy.yaml
";

    #[test]
    fn minimal_config_gets_safe_defaults() {
        let c = Config::from_yaml(MINIMAL).unwrap();
        let inbound = c.inbound.unwrap();
        assert_eq!(inbound.listen.to_string(), "0.0.0.0:15443");
        assert_eq!(inbound.app.to_string(), "127.0.0.1:8080");
        assert_eq!(c.admin.listen.to_string(), "0.0.0.0:15021");
        assert_eq!(c.tls.min_version, TlsVersion::Tls13);
        assert_eq!(c.limits.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.request_body_timeout, Duration::from_secs(30));
        assert_eq!(c.limits.tunnel_idle_timeout, Duration::from_secs(300));
        assert_eq!(c.limits.request_body_min_rate, None);
        assert!(c.outbound.is_none());
        assert_eq!(c.hygiene.underscore_headers, UnderscoreHeaders::Drop);
        assert_eq!(c.hygiene.forwarded, ForwardedHeaders::Set);
    }

    #[test]
    fn hygiene_keys_parse() {
        for (value, want) in [
            ("drop", UnderscoreHeaders::Drop),
            ("reject", UnderscoreHeaders::Reject),
            ("allow", UnderscoreHeaders::Allow),
        ] {
            let c = Config::from_yaml(&format!(
                "{MINIMAL}  keep_headers: [X-Forwarded-User]\nhygiene:\n  underscore_headers: {value}\n  forwarded: strip\n"
            ))
            .unwrap();
            assert_eq!(c.hygiene.underscore_headers, want);
            assert_eq!(c.hygiene.forwarded, ForwardedHeaders::Strip);
            assert_eq!(c.inbound.unwrap().keep_headers, ["x-forwarded-user"]);
        }
    }

    #[test]
    fn federation_entries_parse_and_resolve_against_the_config_directory() {
        let yaml = MINIMAL.replace(
            "  trust_bundle: bundle.pem\n",
            "  trust_bundle: bundle.pem\n  federation:\n  - trust_domain: partner.example\n    bundle: partner/ca.pem\n",
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vakt.yaml");
        std::fs::write(&path, format!("{yaml}outbound:\n  upstreams:\n  - authority: p\n    address: p:1\n    spiffe_id: spiffe://partner.example/ns/a/sa/b\n")).unwrap();
        let c = Config::from_file(&path).unwrap();
        let names: Vec<String> = c
            .identity
            .trust_domains()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(names, ["cluster.local", "partner.example"]);
        assert_eq!(
            c.identity.federation[0].bundle,
            dir.path().join("partner/ca.pem")
        );
        assert_eq!(c.policy_context().trust_domains, c.identity.trust_domains());
    }

    fn err(yaml: &str) -> String {
        Config::from_yaml(yaml).unwrap_err().to_string()
    }

    #[test]
    fn runtime_workers_default_to_the_usable_cpus_and_zero_is_refused() {
        let c = Config::from_yaml(MINIMAL).unwrap();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(c.runtime.worker_threads(), cpus);
        let one = Config::from_yaml(&format!("{MINIMAL}runtime:\n  workers: 1\n")).unwrap();
        assert_eq!(one.runtime.worker_threads(), 1);
        let zero = err(&format!("{MINIMAL}runtime:\n  workers: 0\n"));
        assert!(zero.contains("workers"), "{zero}");
        let unknown = err(&format!("{MINIMAL}runtime:\n  threads: 2\n"));
        assert!(unknown.contains("unknown field `threads`"), "{unknown}");
    }

    #[test]
    fn the_https_proxy_is_scheme_host_and_port_only() {
        let with = |proxy: &str| {
            format!(
                "{MINIMAL}oidc:\n  https_proxy: \"{proxy}\"\n  issuers:\n  - issuer: https://idp.example\n    profile: helseid\n    audiences: [journal]\n    dpop:\n      required: false\n"
            )
        };
        let ok = Config::from_yaml(&with("http://proxy.internal:3128")).unwrap();
        let uri = ok.oidc.unwrap().https_proxy_uri().unwrap();
        assert_eq!(uri.host(), Some("proxy.internal"));
        for (proxy, why) in [
            ("proxy.internal:3128", "must be an http:// URL"),
            ("https://proxy.internal:3128", "must be an http:// URL"),
            (
                "http://user:secret@proxy.internal:3128",
                "must not carry credentials",
            ),
            ("http://proxy.internal", "names no port"),
            (
                "http://proxy.internal:3128/path",
                "just scheme, host and port",
            ),
            (
                "http://proxy.internal:3128/?a=b",
                "just scheme, host and port",
            ),
            ("http://", "is not a URL"),
        ] {
            let e = err(&with(proxy));
            assert!(
                e.contains("oidc.https_proxy") && e.contains(why),
                "{proxy}: {e}"
            );
            assert!(!e.contains("secret"), "the password is repeated: {e}");
        }
    }

    #[test]
    fn rejects_bad_configs_with_precise_messages() {
        let cases: &[(String, &str)] = &[
            (format!("{MINIMAL}bogus: 1\n"), "unknown field `bogus`"),
            (
                MINIMAL.replace("key: key.pem", "key: key.pem\n  colour: red"),
                "unknown field `colour`",
            ),
            (
                format!(
                    "{MINIMAL}outbound:\n  upstreams:\n  - authority: a\n    address: x:1\n    spiffe_id: spiffe://cluster.local/ns/x/sa/y/\n"
                ),
                "is not a valid SPIFFE ID",
            ),
            (
                format!(
                    "{MINIMAL}outbound:\n  upstreams:\n  - authority: a\n    address: x:1\n    spiffe_id: spiffe://other.td/ns/x/sa/y\n"
                ),
                "outbound.upstreams[0].spiffe_id: spiffe://other.td/ns/x/sa/y is outside the accepted trust domains",
            ),
            (
                MINIMAL.replace("  policy: policy.yaml\n", "  app: 127.0.0.1:8080\n"),
                "missing field `policy`",
            ),
            (
                format!("{MINIMAL}limits:\n  handshake_timeout: soon\n"),
                "\"soon\" is not a duration",
            ),
            (
                format!("{MINIMAL}limits:\n  idle_timeout: 0s\n"),
                "limits.idle_timeout: must be greater than zero",
            ),
            (
                format!("{MINIMAL}limits:\n  request_body_timeout: 0s\n"),
                "limits.request_body_timeout: must be greater than zero",
            ),
            (
                format!("{MINIMAL}limits:\n  tunnel_idle_timeout: 0ms\n"),
                "limits.tunnel_idle_timeout: must be greater than zero",
            ),
            (
                format!("{MINIMAL}limits:\n  request_body_rate_window: 0s\n"),
                "limits.request_body_rate_window: must be greater than zero",
            ),
            (
                format!("{MINIMAL}limits:\n  request_body_min_rate: 0\n"),
                "limits.request_body_min_rate: must be at least 1",
            ),
            (
                format!("{MINIMAL}outbound:\n  listen: 0.0.0.0:15001\n"),
                "outbound.listen: 0.0.0.0:15001 is not a loopback address",
            ),
            (
                format!(
                    "{MINIMAL}outbound:\n  upstreams:\n  - authority: a:80\n    address: x\n    spiffe_id: spiffe://cluster.local/ns/x/sa/y\n"
                ),
                "outbound.upstreams[0].address: \"x\" is not host:port",
            ),
            (
                format!(
                    "{MINIMAL}outbound:\n  upstreams:\n  - authority: A\n    address: x:1\n    spiffe_id: spiffe://cluster.local/ns/x/sa/y\n  - authority: a:80\n    address: x:1\n    spiffe_id: spiffe://cluster.local/ns/x/sa/y\n"
                ),
                "outbound.upstreams[1].authority: a:80 is listed twice",
            ),
            (
                format!("{MINIMAL}outbound:\n  upstreams:\n  - authority: a\n    spiffe_id: spiffe://cluster.local/ns/x/sa/y\n"),
                "outbound.upstreams[0].address: is missing",
            ),
            (
                format!("{MINIMAL}outbound:\n  upstreams:\n  - authority: a\n    address: x:1\n"),
                "outbound.upstreams[0].spiffe_id: is missing",
            ),
            (
                format!("{MINIMAL}outbound:\n  upstreams:\n  - authority: idp.example:443\n    passthrough: tls\n"),
                "outbound.upstreams[0].passthrough: needs outbound.capture: transparent",
            ),
            (
                format!("{MINIMAL}outbound:\n  capture: transparent\n  upstreams:\n  - authority: idp.example:443\n    passthrough: tls\n    address: x:1\n"),
                "outbound.upstreams[0].address: a passthrough destination is reached at the address the app dialed",
            ),
            (
                format!("{MINIMAL}outbound:\n  capture: transparent\n  upstreams:\n  - authority: idp.example:443\n    passthrough: tls\n    spiffe_id: spiffe://cluster.local/ns/x/sa/y\n"),
                "outbound.upstreams[0].spiffe_id: a passthrough destination keeps its own TLS",
            ),
            (
                format!("{MINIMAL}outbound:\n  capture: transparent\n  upstreams:\n  - authority: 10.0.0.1:443\n    passthrough: tls\n"),
                "outbound.upstreams[0].authority: a passthrough destination is checked by the name in its TLS ClientHello",
            ),
            (
                format!("{MINIMAL}outbound:\n  capture: transparent\n  upstreams:\n  - authority: \"[fd00::1]:443\"\n    passthrough: tls\n"),
                "outbound.upstreams[0].authority: a passthrough destination is checked by the name in its TLS ClientHello",
            ),
            (
                format!("{MINIMAL}outbound:\n  capture: transparent\n  upstreams:\n  - authority: idp.example\n    passthrough: tls\n"),
                "outbound.upstreams[0].authority: port 80 (the default when none is given)",
            ),
            (
                format!("{MINIMAL}  app_health: healthz\n"),
                "inbound.app_health: \"healthz\" is not a plain path",
            ),
            (
                format!("{MINIMAL}  app_probe_paths: [/healthz, /a/../admin]\n"),
                "inbound.app_probe_paths: \"/a/../admin\" is not a plain path",
            ),
            (
                format!("{MINIMAL}  app_probe_paths: [\"/healthz?x=1\"]\n"),
                "inbound.app_probe_paths: \"/healthz?x=1\" is not a plain path",
            ),
            (
                format!("{MINIMAL}admin:\n  listen: 0.0.0.0:15443\n"),
                "inbound.listen: 0.0.0.0:15443 is already used by admin.listen",
            ),
            (
                MINIMAL.replace("inbound:\n  policy: policy.yaml\n", ""),
                "neither is configured",
            ),
            (format!("{MINIMAL}tls:\n  min_version: \"1.1\"\n"), "1.1"),
            (
                format!("{MINIMAL}hygiene:\n  underscore_headers: keep\n"),
                "unknown variant `keep`, expected one of drop, reject, allow",
            ),
            (
                format!("{MINIMAL}hygiene:\n  forwarded: append\n"),
                "unknown variant `append`, expected one of set, strip",
            ),
            (
                format!("{MINIMAL}hygiene:\n  strip: all\n"),
                "unknown field `strip`",
            ),
            (
                format!("{MINIMAL}audit:\n  redact_patterns: ['MRN-[0-9]+', 'x(']\n"),
                "audit.redact_patterns[1]: not a valid regular expression",
            ),
            (
                format!("{MINIMAL}audit:\n  redact_patterns: ['[0-9]*']\n"),
                "audit.redact_patterns[0]: matches the empty string",
            ),
            (
                format!("{MINIMAL}  keep_headers: [X_Vakt_LoA]\n"),
                "inbound.keep_headers[0]: x_vakt_loa is set only by vakt",
            ),
            (
                format!("{MINIMAL}  keep_headers: [x-forwarded-host]\n"),
                "inbound.keep_headers[0]: x-forwarded-host is set only by vakt",
            ),
            (
                format!(
                    "{MINIMAL}  strip_headers: [x-forwarded-user]\n  keep_headers: [x-forwarded-user]\n"
                ),
                "inbound.keep_headers[0]: x-forwarded-user is also in inbound.strip_headers",
            ),
            (
                format!("{MINIMAL}  keep_headers: [\"bad name\"]\n"),
                "\"bad name\" is not a valid HTTP header name",
            ),
            (
                format!("{MINIMAL}limits:\n  max_header_bytes: 100\n"),
                "limits.max_header_bytes: 100 is out of range",
            ),
            (
                MINIMAL.replace(
                    "  trust_bundle: bundle.pem\n",
                    "  trust_bundle: bundle.pem\n  federation:\n  - trust_domain: cluster.local\n    bundle: b.pem\n",
                ),
                "identity.federation[0].trust_domain: cluster.local is our own trust domain",
            ),
            (
                MINIMAL.replace(
                    "  trust_bundle: bundle.pem\n",
                    "  trust_bundle: bundle.pem\n  federation:\n  - trust_domain: p.example\n    bundle: b.pem\n  - trust_domain: p.example\n    bundle: c.pem\n",
                ),
                "identity.federation[1].trust_domain: p.example is already listed in identity.federation[0]",
            ),
            (
                MINIMAL.replace(
                    "  trust_bundle: bundle.pem\n",
                    "  trust_bundle: bundle.pem\n  federation:\n  - trust_domain: p.example\n    bundle: ''\n",
                ),
                "identity.federation[0].bundle: is empty",
            ),
            (
                MINIMAL.replace("  trust_bundle: bundle.pem\n", "  trust_bundle: ''\n"),
                "identity.trust_bundle: is empty",
            ),
            (
                MINIMAL.replace(
                    "  trust_bundle: bundle.pem\n",
                    "  trust_bundle: bundle.pem\n  federation:\n  - trust_domain: p.example\n    bundle: b.pem\n    trust_bundle: c.pem\n",
                ),
                "unknown field `trust_bundle`",
            ),
            (
                MINIMAL.replace(
                    "  trust_bundle: bundle.pem\n",
                    "  trust_bundle: bundle.pem\n  accepted_trust_domains: [p.example]\n",
                ),
                "unknown field `accepted_trust_domains`",
            ),
            (
                MINIMAL.replace("  trust_bundle: bundle.pem\n", "  trust_bundle: bundle.pem\n  reload_interval: 0s\n"),
                "identity.reload_interval: must be greater than zero",
            ),
            (
                format!("{MINIMAL}limits:\n  max_connections: 0\n"),
                "limits.max_connections: must be at least 1",
            ),
            (
                format!(
                    "{MINIMAL}limits:\n  max_connections: 10\n  max_connections_per_peer: 11\n"
                ),
                "limits.max_connections_per_peer: 11 is more than limits.max_connections (10)",
            ),
        ];
        for (yaml, expected) in cases {
            let msg = err(yaml);
            assert!(msg.contains(expected), "expected {expected:?} in {msg:?}");
        }
    }
}

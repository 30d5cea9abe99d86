//! The sidecar configuration: one YAML file, strict (`deny_unknown_fields`), parsed straight into
//! domain types (SPIFFE IDs, socket addresses, durations) and then checked as a whole.
//!
//! Every key is documented in `config/vakt.example.yaml`; a test parses each example so they
//! never rot. Relative file paths are resolved against the directory of the config file.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use serde::{Deserialize, Deserializer};

use crate::identity::{SpiffeId, TrustDomain};

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
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
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
    pub oidc: Option<crate::authn::OidcConfig>,
    /// Keyed pseudonyms for national ids (a Kubernetes Secret). Without it a random per-process
    /// key is used: nothing leaves in clear, but pseudonyms are not stable.
    #[serde(default)]
    pub pseudonymisation: Option<crate::pseudonym::PseudonymConfig>,
    /// The audit trail: one event per decision, refused handshake and refused egress.
    #[serde(default)]
    pub audit: AuditSettings,
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
pub struct IdentityConfig {
    /// Our own trust domain; peers from it are accepted.
    pub trust_domain: TrustDomain,
    /// Further trust domains whose peers are accepted (federation). Their CAs must be in the bundle.
    #[serde(default)]
    pub accepted_trust_domains: Vec<TrustDomain>,
    /// PEM certificate chain, leaf first (an X509-SVID).
    pub cert: PathBuf,
    /// PEM private key of the leaf (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// PEM file with one or more CA certificates (several during a CA rotation).
    pub trust_bundle: PathBuf,
    /// How often the files are re-read as a safety net besides file-change notifications.
    #[serde(
        default = "defaults::reload_interval",
        deserialize_with = "de_duration"
    )]
    pub reload_interval: Duration,
}

impl IdentityConfig {
    /// Own trust domain first, then the federated ones.
    pub fn accepted(&self) -> Vec<TrustDomain> {
        let mut all = vec![self.trust_domain.clone()];
        for td in &self.accepted_trust_domains {
            if !all.contains(td) {
                all.push(td.clone());
            }
        }
        all
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    Tls12,
    #[default]
    #[serde(rename = "1.3")]
    Tls13,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// Lowest TLS version offered and accepted: "1.3" (default) or "1.2".
    #[serde(default)]
    pub min_version: TlsVersion,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// HTTP/1.1 to the app (HTTP/2 from peers is translated).
    #[default]
    Http1,
    /// HTTP/2 over cleartext (prior knowledge), e.g. for gRPC apps.
    H2c,
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
    /// Further client-sent headers removed before forwarding (identity headers the app trusts).
    #[serde(default, deserialize_with = "de_header_names")]
    pub strip_headers: Vec<HeaderName>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// Loopback address the local app sends its outbound requests to (HTTP_PROXY).
    #[serde(default = "defaults::outbound_listen")]
    pub listen: SocketAddr,
    /// The egress allow-list: every destination the app may reach, and who must answer there.
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `host[:port]` as the app addresses it (port 80 when omitted).
    #[serde(deserialize_with = "de_authority")]
    pub authority: Authority,
    /// `host:port` of that service's vakt inbound listener.
    pub address: String,
    /// The SPIFFE ID the server must present; anything else is refused.
    pub spiffe_id: SpiffeId,
}

/// A normalised `host:port` (lowercase host, explicit port) used as the egress table key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Authority(String);

impl Authority {
    /// Normalise `host[:port]`; `None` when it is not a plain authority.
    pub fn parse(s: &str, default_port: u16) -> Option<Self> {
        Self::parse_plain(s, default_port).or_else(|| Self::parse_general(s, default_port))
    }

    /// The common case on the request path, without a URI parser: a lowercase DNS name or IPv4
    /// address, no trailing dot, and a port (if any) of plain decimal digits. `None` sends
    /// everything else through [`Self::parse_general`], which gives the same answer for these.
    fn parse_plain(s: &str, default_port: u16) -> Option<Self> {
        let (host, port) = match s.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        };
        let host_is_plain = !host.is_empty()
            && !host.ends_with('.')
            && host
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        if !host_is_plain {
            return None;
        }
        match port {
            None => Some(Self(format!("{host}:{default_port}"))),
            Some(p)
                if !p.is_empty()
                    && p.len() <= 5
                    && !(p.len() > 1 && p.starts_with('0'))
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && p.parse::<u16>().is_ok() =>
            {
                Some(Self(s.to_owned()))
            }
            Some(_) => None,
        }
    }

    fn parse_general(s: &str, default_port: u16) -> Option<Self> {
        let auth: http::uri::Authority = s.parse().ok()?;
        if auth.as_str().contains('@') || auth.host().is_empty() {
            return None;
        }
        let port = auth.port_u16().unwrap_or(default_port);
        Some(Self(format!(
            "{}:{port}",
            auth.host().trim_end_matches('.').to_ascii_lowercase()
        )))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn host(&self) -> &str {
        self.0.rsplit_once(':').map_or(&self.0, |(h, _)| h)
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditSink {
    /// JSON lines on stdout, for the cluster's log pipeline.
    #[default]
    Stdout,
    /// A hash-chained file with size-based rotation.
    File,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    #[serde(default)]
    pub sink: AuditSink,
    /// With `sink: file`.
    #[serde(default)]
    pub file: Option<AuditFileSettings>,
    /// Events accepted and not yet written; when full, `on_audit_failure` applies.
    #[serde(default = "defaults::audit_queue")]
    pub queue_capacity: usize,
    /// `deny` (default: no access without a record) or `allow` (serve, count every lost event).
    #[serde(default)]
    pub on_audit_failure: crate::observe::OnAuditFailure,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            sink: AuditSink::default(),
            file: None,
            queue_capacity: defaults::audit_queue(),
            on_audit_failure: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFileSettings {
    pub path: PathBuf,
    /// Rotate when the file reaches this size (bytes).
    #[serde(default = "defaults::audit_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept (`audit.log.1` ... `.N`).
    #[serde(default = "defaults::audit_max_files")]
    pub max_files: usize,
    /// `always` (fsync every batch), `never`, or a duration such as `1s`.
    #[serde(default = "defaults::audit_fsync")]
    pub fsync: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `/live`, `/ready`, `/metrics` (plaintext; restrict with a NetworkPolicy).
    #[serde(default = "defaults::admin_listen")]
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: defaults::admin_listen(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(
        default = "defaults::handshake_timeout",
        deserialize_with = "de_duration"
    )]
    pub handshake_timeout: Duration,
    #[serde(
        default = "defaults::header_read_timeout",
        deserialize_with = "de_duration"
    )]
    pub header_read_timeout: Duration,
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: usize,
    #[serde(default = "defaults::idle_timeout", deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    #[serde(
        default = "defaults::connect_timeout",
        deserialize_with = "de_duration"
    )]
    pub upstream_connect_timeout: Duration,
    #[serde(
        default = "defaults::response_timeout",
        deserialize_with = "de_duration"
    )]
    pub upstream_response_timeout: Duration,
    #[serde(default = "defaults::max_concurrent_streams")]
    pub http2_max_concurrent_streams: u32,
    #[serde(
        default = "defaults::pool_idle_timeout",
        deserialize_with = "de_duration"
    )]
    pub upstream_pool_idle_timeout: Duration,
    #[serde(default = "defaults::pool_max_idle")]
    pub upstream_pool_max_idle_per_host: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: defaults::handshake_timeout(),
            header_read_timeout: defaults::header_read_timeout(),
            max_header_bytes: defaults::max_header_bytes(),
            idle_timeout: defaults::idle_timeout(),
            upstream_connect_timeout: defaults::connect_timeout(),
            upstream_response_timeout: defaults::response_timeout(),
            http2_max_concurrent_streams: defaults::max_concurrent_streams(),
            upstream_pool_idle_timeout: defaults::pool_idle_timeout(),
            upstream_pool_max_idle_per_host: defaults::pool_max_idle(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long in-flight requests may take to finish after SIGTERM.
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

    pub fn reload_interval() -> Duration {
        Duration::from_secs(30)
    }
    pub fn inbound_listen() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 15443))
    }
    pub fn app() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8080))
    }
    pub fn outbound_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 15001))
    }
    pub fn admin_listen() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 15021))
    }
    pub fn handshake_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn header_read_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn max_header_bytes() -> usize {
        64 * 1024
    }
    pub fn idle_timeout() -> Duration {
        Duration::from_secs(300)
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn response_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn max_concurrent_streams() -> u32 {
        256
    }
    pub fn pool_idle_timeout() -> Duration {
        Duration::from_secs(90)
    }
    pub fn pool_max_idle() -> usize {
        64
    }
    pub fn grace_period() -> Duration {
        Duration::from_secs(30)
    }
    pub fn audit_queue() -> usize {
        8192
    }
    pub fn audit_max_bytes() -> u64 {
        64 * 1024 * 1024
    }
    pub fn audit_max_files() -> usize {
        10
    }
    pub fn audit_fsync() -> String {
        "1s".to_owned()
    }
    pub fn log_level() -> String {
        "info".to_owned()
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|e| {
            serde::de::Error::custom(format!(
                "\"{s}\" is not a valid SPIFFE ID: {e} (expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)"
            ))
        })
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|e| {
            serde::de::Error::custom(format!(
                "\"{s}\" is not a valid trust domain: {e} (expected e.g. cluster.local)"
            ))
        })
    }
}

pub(crate) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "\"{s}\" is not a duration: {e} (expected e.g. 500ms, 10s, 5m)"
        ))
    })
}

fn de_header_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<HeaderName>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    names
        .iter()
        .map(|n| {
            HeaderName::from_bytes(n.as_bytes()).map_err(|_| {
                serde::de::Error::custom(format!("\"{n}\" is not a valid HTTP header name"))
            })
        })
        .collect()
}

fn de_authority<'de, D: Deserializer<'de>>(d: D) -> Result<Authority, D::Error> {
    let s = String::deserialize(d)?;
    Authority::parse(&s, 80).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "\"{s}\" is not a host[:port] authority (expected e.g. billing.billing.svc:8080)"
        ))
    })
}

impl Config {
    /// The fsync policy of the audit file.
    pub fn audit_fsync(&self) -> Result<crate::audit::FsyncPolicy, String> {
        let raw = self.audit.file.as_ref().map_or("1s", |f| f.fsync.as_str());
        match raw {
            "always" => Ok(crate::audit::FsyncPolicy::Always),
            "never" => Ok(crate::audit::FsyncPolicy::Never),
            other => humantime::parse_duration(other)
                .map(crate::audit::FsyncPolicy::Interval)
                .map_err(|_| format!("\"{other}\" is not always, never or a duration such as 1s")),
        }
    }

    /// The policy-check context this sidecar gives its policy file.
    pub fn policy_context(&self) -> crate::policy::PolicyContext {
        crate::policy::PolicyContext {
            trust_domains: self.identity.accepted(),
            issuers: Some(
                self.oidc
                    .iter()
                    .flat_map(|o| o.issuers.iter().map(|i| i.issuer.clone()))
                    .collect(),
            ),
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
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
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
        let config: Config = serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let policy = self.inbound.as_mut().map(|i| &mut i.policy);
        let key = self.pseudonymisation.as_mut().map(|p| &mut p.key_file);
        let audit = self.audit.file.as_mut().map(|f| &mut f.path);
        for p in [
            &mut self.identity.cert,
            &mut self.identity.key,
            &mut self.identity.trust_bundle,
        ]
        .into_iter()
        .chain(policy)
        .chain(key)
        .chain(audit)
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
        let accepted = self.identity.accepted();
        let mut listeners = vec![("admin.listen", self.admin.listen)];
        if let Some(inbound) = &self.inbound {
            listeners.push(("inbound.listen", inbound.listen));
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
                if Authority::parse(&up.address, 0)
                    .filter(|a| !a.as_str().ends_with(":0"))
                    .is_none()
                {
                    return Err(ConfigError::invalid(
                        format!("{key}.address"),
                        format!("\"{}\" is not host:port with an explicit port", up.address),
                    ));
                }
                if !accepted.contains(&up.spiffe_id.trust_domain()) {
                    return Err(ConfigError::invalid(
                        format!("{key}.spiffe_id"),
                        format!(
                            "{} is outside the accepted trust domains ({})",
                            up.spiffe_id,
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
        let l = &self.limits;
        for (key, value) in [
            ("limits.handshake_timeout", l.handshake_timeout),
            ("limits.header_read_timeout", l.header_read_timeout),
            ("limits.idle_timeout", l.idle_timeout),
            (
                "limits.upstream_connect_timeout",
                l.upstream_connect_timeout,
            ),
            (
                "limits.upstream_response_timeout",
                l.upstream_response_timeout,
            ),
            ("identity.reload_interval", self.identity.reload_interval),
        ] {
            if value.is_zero() {
                return Err(ConfigError::invalid(key, "must be greater than zero"));
            }
        }
        if !(8 * 1024..=1024 * 1024).contains(&l.max_header_bytes) {
            return Err(ConfigError::invalid(
                "limits.max_header_bytes",
                format!(
                    "{} is out of range (expected 8192 to 1048576)",
                    l.max_header_bytes
                ),
            ));
        }
        if l.http2_max_concurrent_streams == 0 {
            return Err(ConfigError::invalid(
                "limits.http2_max_concurrent_streams",
                "must be at least 1",
            ));
        }
        match (self.audit.sink, &self.audit.file) {
            (AuditSink::File, None) => {
                return Err(ConfigError::invalid(
                    "audit.file",
                    "sink: file needs file.path",
                ));
            }
            (AuditSink::Stdout, Some(_)) => {
                return Err(ConfigError::invalid(
                    "audit.file",
                    "set sink: file to use it (the sink is stdout)",
                ));
            }
            _ => {}
        }
        if let Some(file) = &self.audit.file {
            self.audit_fsync()
                .map_err(|problem| ConfigError::invalid("audit.file.fsync", problem))?;
            if file.max_bytes < 4096 || file.max_files == 0 {
                return Err(ConfigError::invalid(
                    "audit.file",
                    "max_bytes must be at least 4096 and max_files at least 1",
                ));
            }
        }
        if self.audit.queue_capacity == 0 {
            return Err(ConfigError::invalid(
                "audit.queue_capacity",
                "must be at least 1",
            ));
        }
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
        assert!(c.outbound.is_none());
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
                format!("{MINIMAL}admin:\n  listen: 0.0.0.0:15443\n"),
                "inbound.listen: 0.0.0.0:15443 is already used by admin.listen",
            ),
            (
                MINIMAL.replace("inbound:\n  policy: policy.yaml\n", ""),
                "neither is configured",
            ),
            (format!("{MINIMAL}tls:\n  min_version: \"1.1\"\n"), "1.1"),
            (
                format!("{MINIMAL}limits:\n  max_header_bytes: 100\n"),
                "limits.max_header_bytes: 100 is out of range",
            ),
        ];
        for (yaml, expected) in cases {
            let msg = err(yaml);
            assert!(msg.contains(expected), "expected {expected:?} in {msg:?}");
        }
    }

    #[test]
    fn authority_is_normalised() {
        assert_eq!(
            Authority::parse("Billing.SVC.", 80).unwrap().as_str(),
            "billing.svc:80"
        );
        assert_eq!(
            Authority::parse("billing:8080", 80).unwrap().as_str(),
            "billing:8080"
        );
        assert_eq!(
            Authority::parse("billing:8080", 80).unwrap().host(),
            "billing"
        );
        assert!(Authority::parse("user@billing", 80).is_none());
        // The plain fast path answers exactly as the general parser wherever it answers.
        for raw in [
            "billing",
            "billing:8080",
            "billing:80",
            "billing.svc.cluster.local:443",
            "10.0.0.1",
            "10.0.0.1:9",
            "a-b.c:65535",
            "b:0",
            "b:00",
            "b:080",
            "b:65536",
            "b:",
            ":80",
            "b.:80",
            "B:80",
            "b_c:80",
            "[::1]:80",
            "b:8a",
            "b::80",
            "",
        ] {
            if let Some(fast) = Authority::parse_plain(raw, 80) {
                assert_eq!(Some(fast), Authority::parse_general(raw, 80), "{raw:?}");
            }
        }
        assert!(Authority::parse_plain("billing:8080", 80).is_some());
        assert!(Authority::parse_plain("billing", 80).is_some());
        assert!(Authority::parse("bill ing", 80).is_none());
    }
}

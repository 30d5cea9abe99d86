//! Per-route least-privilege policy: the file format, its validation, and the pure decision
//! function [`evaluate`].
//!
//! A policy is a list of routes (methods + path pattern + optional host). A request that matches
//! no route is denied. A route allows the request if any of its `allow` rules holds; a rule holds
//! when all of its conditions hold. A route with `public: true` allows every (mTLS-verified)
//! caller and has no rules. Each route runs in `enforce` or `dry-run` mode; dry-run lets the
//! request through but records that it would have been denied and why.

pub mod explain;
pub mod path;
pub mod reload;
pub mod router;
pub mod stage;

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use http::Method;
use serde::{Deserialize, Deserializer};

use crate::identity::{SpiffeId, TrustDomain};
use crate::ratelimit::{RateLimitSpec, RateLimits};
use path::CanonicalPath;
use router::{Captures, Lookup, PathPattern, Router};

/// Largest policy file read.
const MAX_POLICY_BYTES: u64 = 4 << 20;

// ------------------------------------------------------------------------------ the file format

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Mode {
    #[default]
    #[serde(rename = "enforce")]
    Enforce,
    #[serde(rename = "dry-run")]
    DryRun,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::DryRun => "dry-run",
        }
    }
}

/// The policy file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Format version; only 1 exists.
    #[serde(default = "one")]
    pub version: u32,
    /// Mode for routes that do not set one, and for requests that match no route.
    #[serde(default)]
    pub default_mode: Mode,
    pub routes: Vec<RouteSpec>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Stable name: in audit events, metrics labels and denial bodies.
    pub id: String,
    /// HTTP methods this route covers (at least one).
    #[serde(deserialize_with = "de_methods")]
    pub methods: Vec<Method>,
    /// `/exact`, `/with/{param}/segments`, or a trailing `/prefix/**`.
    pub path: String,
    /// Only requests for this host (`Host` / `:authority`, port ignored).
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Allow every verified peer. Must be said explicitly; no `allow` rules then.
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub allow: Vec<RuleSpec>,
    #[serde(default)]
    pub rate_limit: Option<RateLimitSpec>,
}

/// A rule: every condition it names must hold. Token conditions join here later.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// SPIFFE IDs, or patterns where a `*` segment matches any one segment
    /// (`spiffe://td/ns/billing/sa/*`).
    #[serde(default)]
    pub peers: Option<Vec<PeerPattern>>,
}

fn de_methods<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Method>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    names
        .iter()
        .map(|m| {
            let upper = m.to_ascii_uppercase();
            match upper.as_str() {
                "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" => {
                    Method::from_str(&upper).map_err(serde::de::Error::custom)
                }
                _ => Err(serde::de::Error::custom(format!(
                    "\"{m}\" is not a method a route can allow (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS)"
                ))),
            }
        })
        .collect()
}

/// A peer condition: an exact SPIFFE ID or a pattern with `*` segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPattern {
    raw: String,
    trust_domain: TrustDomain,
    /// `None` for a `*` segment.
    segments: Vec<Option<String>>,
}

impl PeerPattern {
    pub fn matches(&self, id: &SpiffeId) -> bool {
        if id.trust_domain_str() != self.trust_domain.as_str() {
            return false;
        }
        let mut path = id.path()[1..].split('/');
        for want in &self.segments {
            match (path.next(), want) {
                (None, _) => return false,
                (Some(_), None) => {}
                (Some(got), Some(want)) if got == want => {}
                _ => return false,
            }
        }
        path.next().is_none()
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }
}

impl fmt::Display for PeerPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl FromStr for PeerPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        // Validate by replacing each `*` segment with a placeholder and parsing as a SPIFFE ID.
        let placeholder = s
            .split('/')
            .enumerate()
            .map(|(i, seg)| if i >= 3 && seg == "*" { "x" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        let id: SpiffeId = placeholder.parse().map_err(|e| format!("{e}"))?;
        if s.contains('*')
            && s.split('/')
                .skip(3)
                .any(|seg| seg.contains('*') && seg != "*")
        {
            return Err("'*' must be a whole path segment".into());
        }
        let segments = s
            .split('/')
            .skip(3)
            .map(|seg| (seg != "*").then(|| seg.to_owned()))
            .collect();
        Ok(Self {
            raw: s.to_owned(),
            trust_domain: id.trust_domain(),
            segments,
        })
    }
}

impl<'de> Deserialize<'de> for PeerPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|e| {
            serde::de::Error::custom(format!(
                "\"{s}\" is not a SPIFFE ID or pattern: {e} (expected spiffe://<td>/ns/<ns>/sa/<sa>, '*' for a whole segment)"
            ))
        })
    }
}

// --------------------------------------------------------------------------- the checked policy

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("policy file {path} is larger than {MAX_POLICY_BYTES} bytes")]
    TooLarge { path: std::path::PathBuf },
    #[error("{0}")]
    Parse(String),
    /// One or more semantic problems, each naming its route.
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

impl PolicyError {
    /// Prefix messages with the file they are about.
    pub fn in_file(self, path: &Path) -> Self {
        match self {
            Self::Parse(m) => Self::Parse(format!("{}: {m}", path.display())),
            Self::Invalid(problems) => Self::Invalid(
                problems
                    .into_iter()
                    .map(|p| format!("{}: {p}", path.display()))
                    .collect(),
            ),
            other => other,
        }
    }
}

/// Read a policy file (size-limited).
pub(crate) fn read_policy_file(path: &Path) -> Result<String, PolicyError> {
    let io = |source| PolicyError::Io {
        path: path.to_owned(),
        source,
    };
    if std::fs::metadata(path).map_err(io)?.len() > MAX_POLICY_BYTES {
        return Err(PolicyError::TooLarge {
            path: path.to_owned(),
        });
    }
    std::fs::read_to_string(path).map_err(io)
}

/// A route, checked and compiled.
#[derive(Debug)]
pub struct Route {
    pub id: Arc<str>,
    pub methods: Vec<Method>,
    pub host: Option<String>,
    pub pattern: PathPattern,
    pub mode: Mode,
    pub public: bool,
    pub rules: Vec<Rule>,
    pub rate_limit: Option<RateLimitSpec>,
}

#[derive(Debug)]
pub struct Rule {
    pub peers: Option<Vec<PeerPattern>>,
}

/// What a request brings to a decision.
#[derive(Debug, Clone, Copy)]
pub struct RequestCtx<'a> {
    pub method: &'a Method,
    /// Lowercase host without port, if any.
    pub host: Option<&'a str>,
    pub path: &'a CanonicalPath,
    pub peer: Option<&'a SpiffeId>,
}

impl Rule {
    /// Do all of this rule's conditions hold?
    pub fn holds(&self, ctx: &RequestCtx<'_>) -> bool {
        self.peers_hold(ctx)
    }

    pub fn peers_hold(&self, ctx: &RequestCtx<'_>) -> bool {
        match (&self.peers, ctx.peer) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(patterns), Some(peer)) => patterns.iter().any(|p| p.matches(peer)),
        }
    }
}

/// A checked, compiled policy. Immutable; replaced whole on reload.
pub struct Policy {
    pub routes: Vec<Route>,
    pub default_mode: Mode,
    router: Router,
    pub limits: RateLimits<SpiffeId>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("routes", &self.routes.len())
            .field("default_mode", &self.default_mode)
            .finish()
    }
}

impl Policy {
    pub fn from_file(path: &Path, trust_domains: &[TrustDomain]) -> Result<Self, PolicyError> {
        let text = read_policy_file(path)?;
        Self::from_yaml(&text, trust_domains).map_err(|e| e.in_file(path))
    }

    /// Parse and check. `trust_domains`: the peers' trust domains this sidecar accepts; a peer
    /// pattern outside them could never match and is an error. Empty: not checked.
    pub fn from_yaml(text: &str, trust_domains: &[TrustDomain]) -> Result<Self, PolicyError> {
        let file: PolicyFile =
            serde_saphyr::from_str(text).map_err(|e| PolicyError::Parse(e.to_string()))?;
        Self::compile(file, trust_domains)
    }

    pub fn compile(file: PolicyFile, trust_domains: &[TrustDomain]) -> Result<Self, PolicyError> {
        let mut problems = Vec::new();
        if file.version != 1 {
            problems.push(format!(
                "version: {} is not supported (expected 1)",
                file.version
            ));
        }
        if file.routes.is_empty() {
            problems.push(
                "routes: empty; every request would be denied (add at least one route)".into(),
            );
        }
        let mut ids = HashSet::new();
        let mut router = Router::default();
        let mut routes = Vec::with_capacity(file.routes.len());
        for (index, spec) in file.routes.into_iter().enumerate() {
            let at = format!("routes[{index}] ({})", spec.id);
            if spec.id.is_empty()
                || !spec
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                problems.push(format!("{at}.id: must be letters, digits, '-', '_' or '.'"));
            }
            if !ids.insert(spec.id.clone()) {
                problems.push(format!("{at}.id: duplicate route id"));
            }
            if spec.methods.is_empty() {
                problems.push(format!("{at}.methods: empty; the route could never match"));
            }
            let mut methods = spec.methods.clone();
            methods.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            methods.dedup();
            let host = spec
                .host
                .as_deref()
                .map(|h| h.trim_end_matches('.').to_ascii_lowercase());
            if let Some(h) = &host
                && (h.is_empty() || h.contains(['/', ':', ' ', '*']))
            {
                problems.push(format!(
                    "{at}.host: \"{h}\" is not a host name (no port, no wildcard)"
                ));
            }
            let pattern = match PathPattern::parse(&spec.path) {
                Ok(p) => p,
                Err(e) => {
                    problems.push(format!("{at}.path: \"{}\" {e}", spec.path));
                    continue;
                }
            };
            if spec.public && !spec.allow.is_empty() {
                problems.push(format!(
                    "{at}: public: true allows every peer; remove the allow rules or public"
                ));
            }
            if !spec.public && spec.allow.is_empty() {
                problems.push(format!(
                    "{at}.allow: no rules, so nobody is allowed; add a rule or remove the route"
                ));
            }
            let mut rules = Vec::with_capacity(spec.allow.len());
            for (r, rule) in spec.allow.into_iter().enumerate() {
                let rule_at = format!("{at}.allow[{r}]");
                match &rule.peers {
                    None => problems.push(format!(
                        "{rule_at}: a rule with no conditions allows everybody; say public: true on the route if that is meant"
                    )),
                    Some(peers) if peers.is_empty() => problems.push(format!(
                        "{rule_at}.peers: empty list; this rule can never match"
                    )),
                    Some(peers) => {
                        for (p, peer) in peers.iter().enumerate() {
                            if !trust_domains.is_empty() && !trust_domains.contains(peer.trust_domain()) {
                                problems.push(format!(
                                    "{rule_at}.peers[{p}]: {peer} is outside the accepted trust domains ({}); it can never match",
                                    trust_domains.iter().map(TrustDomain::as_str).collect::<Vec<_>>().join(", ")
                                ));
                            }
                            if peers[..p].contains(peer) {
                                problems.push(format!("{rule_at}.peers[{p}]: {peer} is listed twice"));
                            }
                        }
                    }
                }
                rules.push(Rule { peers: rule.peers });
            }
            if let Err(conflict) = router.insert(host.as_deref(), &pattern, &methods, routes.len())
            {
                let other: &Route = &routes[conflict.existing];
                problems.push(format!(
                    "{at}: {} {} duplicates route {} (same host, method and path shape {}), so one of them could never be selected; merge them",
                    conflict.method,
                    pattern,
                    other.id,
                    pattern.shape()
                ));
            }
            routes.push(Route {
                id: spec.id.into(),
                methods,
                host,
                pattern,
                mode: spec.mode.unwrap_or(file.default_mode),
                public: spec.public,
                rules,
                rate_limit: spec.rate_limit,
            });
        }
        if !problems.is_empty() {
            return Err(PolicyError::Invalid(problems));
        }
        let limits = RateLimits::new(
            routes
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r.rate_limit.as_ref().map(|s| (i, s))),
        );
        Ok(Self {
            routes,
            default_mode: file.default_mode,
            router,
            limits,
        })
    }

    pub fn lookup(&self, ctx: &RequestCtx<'_>) -> Lookup {
        self.router.lookup(ctx.host, ctx.method, ctx.path.as_str())
    }
}

// ------------------------------------------------------------------------------------ decisions

/// Why a decision came out as it did: a bounded set, for audit, metrics and denial bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A rule of the route held.
    RuleMatched,
    /// The route is public.
    Public,
    NoRoute,
    MethodNotAllowed,
    PeerNotAllowed,
    NoPeerIdentity,
}

impl Reason {
    pub fn code(self) -> &'static str {
        match self {
            Self::RuleMatched => "rule_matched",
            Self::Public => "public_route",
            Self::NoRoute => "no_route",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PeerNotAllowed => "peer_not_allowed",
            Self::NoPeerIdentity => "no_peer_identity",
        }
    }

    pub fn is_allow(self) -> bool {
        matches!(self, Self::RuleMatched | Self::Public)
    }
}

/// The outcome of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Does the request go through?
    pub allowed: bool,
    pub reason: Reason,
    /// Index of the matched route in [`Policy::routes`].
    pub route: Option<usize>,
    /// Index of the rule that held.
    pub rule: Option<usize>,
    pub mode: Mode,
    /// Dry-run: the request passed, but this is why it would have been denied.
    pub would_deny: Option<Reason>,
    /// Path parameters of the matched route.
    pub captures: Captures,
}

/// Decide on a request. Pure: no I/O, no clock, no state (rate limits come after).
pub fn evaluate(policy: &Policy, ctx: &RequestCtx<'_>) -> Decision {
    let (route, captures) = match policy.lookup(ctx) {
        Lookup::Found { route, captures } => (route, captures),
        Lookup::NoRoute => {
            return finish(
                policy.default_mode,
                Reason::NoRoute,
                None,
                None,
                Captures::default(),
            );
        }
        Lookup::MethodNotAllowed => {
            return finish(
                policy.default_mode,
                Reason::MethodNotAllowed,
                None,
                None,
                Captures::default(),
            );
        }
    };
    let spec = &policy.routes[route];
    if spec.public {
        return finish(spec.mode, Reason::Public, Some(route), None, captures);
    }
    if let Some(rule) = spec.rules.iter().position(|r| r.holds(ctx)) {
        return finish(
            spec.mode,
            Reason::RuleMatched,
            Some(route),
            Some(rule),
            captures,
        );
    }
    let reason = if ctx.peer.is_none() {
        Reason::NoPeerIdentity
    } else {
        Reason::PeerNotAllowed
    };
    finish(spec.mode, reason, Some(route), None, captures)
}

fn finish(
    mode: Mode,
    reason: Reason,
    route: Option<usize>,
    rule: Option<usize>,
    captures: Captures,
) -> Decision {
    let allowed = reason.is_allow();
    match (allowed, mode) {
        (false, Mode::DryRun) => Decision {
            allowed: true,
            reason,
            route,
            rule,
            mode,
            would_deny: Some(reason),
            captures,
        },
        _ => Decision {
            allowed,
            reason,
            route,
            rule,
            mode,
            would_deny: None,
            captures,
        },
    }
}

#[cfg(test)]
mod tests;

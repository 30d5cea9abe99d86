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

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use http::Method;
use serde::{Deserialize, Deserializer};

use crate::authn::{Loa, Principal};
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
    /// A token for client X is accepted only when it arrives from one of these SPIFFE IDs
    /// (checked on every route, before the rules).
    #[serde(default)]
    pub client_bindings: BTreeMap<String, Vec<PeerPattern>>,
    pub routes: Vec<RouteSpec>,
}

/// Whether a route needs an end-user access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenRequirement {
    /// No token: refused with 401 before the rules.
    Required,
    /// Rules with token conditions need one; others do not.
    Optional,
    /// Tokens are ignored on this route.
    None,
}

/// What a route policy is checked against: the sidecar's trust domains and OIDC issuers.
#[derive(Debug, Clone, Default)]
pub struct PolicyContext {
    /// Peer trust domains accepted; empty: not checked.
    pub trust_domains: Vec<TrustDomain>,
    /// Configured issuers: `None` when unknown (standalone `vakt check --policy`), `Some(empty)`
    /// when the sidecar has no OIDC section (token conditions are then errors).
    pub issuers: Option<Vec<String>>,
}

impl PolicyContext {
    pub fn with_trust_domains(trust_domains: &[TrustDomain]) -> Self {
        Self {
            trust_domains: trust_domains.to_vec(),
            issuers: None,
        }
    }

    fn oidc_configured(&self) -> bool {
        self.issuers.as_ref().is_some_and(|i| !i.is_empty())
    }
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
    /// `required` (default when the sidecar has OIDC issuers), `optional` or `none`.
    #[serde(default)]
    pub token: Option<TokenRequirement>,
    /// Pass the caller's `Authorization` header to the app (removed by default).
    #[serde(default)]
    pub forward_token: bool,
    /// Send the national id to the app in clear (default: only its pseudonym).
    #[serde(default)]
    pub forward_national_id: bool,
}

/// What a path parameter may be bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BindTarget {
    NationalId,
    Subject,
    ClientId,
}

/// One value or a list of accepted values for a claim.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ClaimMatch {
    OneOf(Vec<serde_json::Value>),
    Equals(serde_json::Value),
}

impl ClaimMatch {
    fn accepts(&self, value: &serde_json::Value) -> bool {
        match self {
            Self::Equals(v) => v == value,
            Self::OneOf(vs) => vs.contains(value),
        }
    }
}

/// A rule: every condition it names must hold.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// SPIFFE IDs, or patterns where a `*` segment matches any one segment
    /// (`spiffe://td/ns/billing/sa/*`).
    #[serde(default)]
    pub peers: Option<Vec<PeerPattern>>,
    /// Token issuers accepted by this rule (configured issuer URLs).
    #[serde(default)]
    pub issuers: Option<Vec<String>>,
    /// `client_id` / `azp` values accepted.
    #[serde(default)]
    pub clients: Option<Vec<String>>,
    /// Every one of these scopes.
    #[serde(default)]
    pub scopes_all: Option<Vec<String>>,
    /// At least one of these scopes.
    #[serde(default)]
    pub scopes_any: Option<Vec<String>>,
    /// Lowest level of assurance (low, substantial, high); lower asks for step-up.
    #[serde(default)]
    pub min_loa: Option<Loa>,
    /// At least one of these authentication methods.
    #[serde(default)]
    pub amr_any: Option<Vec<String>>,
    /// The login must be at most this old (step-up for sensitive routes), e.g. 10m.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub max_auth_age: Option<std::time::Duration>,
    /// Claims that must equal a value, or be one of a list.
    #[serde(default)]
    pub claims: Option<BTreeMap<String, ClaimMatch>>,
    /// Path parameters bound to the principal (`pid: national_id`).
    #[serde(default)]
    pub bind: Option<BTreeMap<String, BindTarget>>,
}

impl RuleSpec {
    fn has_token_conditions(&self) -> bool {
        self.issuers.is_some()
            || self.clients.is_some()
            || self.scopes_all.is_some()
            || self.scopes_any.is_some()
            || self.min_loa.is_some()
            || self.amr_any.is_some()
            || self.max_auth_age.is_some()
            || self.claims.is_some()
            || self.bind.is_some()
    }
}

fn de_opt_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<std::time::Duration>, D::Error> {
    crate::config::de_duration(d).map(Some)
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
    /// `pattern` as written, for audit events (rendered once, not per request).
    pub template: Arc<str>,
    pub mode: Mode,
    pub public: bool,
    pub rules: Vec<Rule>,
    pub rate_limit: Option<RateLimitSpec>,
    pub token: TokenRequirement,
    pub forward_token: bool,
    pub forward_national_id: bool,
    /// Path parameters bound to a national id in any rule: personal data, pseudonymised in audit.
    pub personal_params: Arc<[String]>,
}

#[derive(Debug)]
pub struct Rule {
    pub peers: Option<Vec<PeerPattern>>,
    pub spec: RuleSpec,
    /// Bound path parameters as (index among the route's parameters, target).
    pub bind: Vec<(usize, BindTarget)>,
}

/// What a request brings to a decision.
#[derive(Debug, Clone, Copy)]
pub struct RequestCtx<'a> {
    pub method: &'a Method,
    /// Lowercase host without port, if any.
    pub host: Option<&'a str>,
    pub path: &'a CanonicalPath,
    pub peer: Option<&'a SpiffeId>,
    /// The verified end user, if a token was presented and verified.
    pub principal: Option<&'a Principal>,
    /// Unix seconds, for `max_auth_age` (an argument, so decisions stay pure).
    pub now: i64,
}

impl Rule {
    /// `Ok` when every condition holds, else the first failing condition's reason.
    pub fn check(
        &self,
        ctx: &RequestCtx<'_>,
        principal: Option<&Principal>,
        captures: &Captures,
    ) -> Result<(), Reason> {
        if !self.peers_hold(ctx) {
            return Err(if ctx.peer.is_none() {
                Reason::NoPeerIdentity
            } else {
                Reason::PeerNotAllowed
            });
        }
        let r = &self.spec;
        if !r.has_token_conditions() {
            return Ok(());
        }
        let Some(p) = principal else {
            return Err(Reason::TokenRequired);
        };
        if let Some(issuers) = &r.issuers
            && !issuers.iter().any(|i| **i == *p.issuer)
        {
            return Err(Reason::IssuerNotAllowed);
        }
        if let Some(clients) = &r.clients
            && !p
                .client_id
                .as_deref()
                .is_some_and(|c| clients.iter().any(|allowed| allowed == c))
        {
            return Err(Reason::ClientNotAllowed);
        }
        if let Some(all) = &r.scopes_all
            && !all.iter().all(|s| p.scopes.contains(s))
        {
            return Err(Reason::InsufficientScope);
        }
        if let Some(any) = &r.scopes_any
            && !any.iter().any(|s| p.scopes.contains(s))
        {
            return Err(Reason::InsufficientScope);
        }
        if let Some(min) = r.min_loa
            && p.loa < min
        {
            return Err(Reason::InsufficientAssurance);
        }
        if let Some(max_age) = r.max_auth_age {
            let fresh = p
                .auth_time
                .is_some_and(|t| ctx.now - t <= max_age.as_secs() as i64);
            if !fresh {
                return Err(Reason::AuthenticationTooOld);
            }
        }
        if let Some(amr) = &r.amr_any
            && !amr.iter().any(|m| p.amr.contains(m))
        {
            return Err(Reason::AmrNotAllowed);
        }
        if let Some(claims) = &r.claims {
            for (name, want) in claims {
                if !p.claims.get(name).is_some_and(|v| want.accepts(v)) {
                    return Err(Reason::ClaimMismatch);
                }
            }
        }
        for (param, target) in &self.bind {
            let value = captures
                .params
                .get(*param)
                .map(|(_, range)| &ctx.path.as_str()[range.clone()]);
            let bound = match target {
                BindTarget::NationalId => p.national_id.as_deref(),
                BindTarget::Subject => p.subject.as_deref(),
                BindTarget::ClientId => p.client_id.as_deref(),
            };
            if value.is_none() || value != bound {
                return Err(Reason::BindingMismatch);
            }
        }
        Ok(())
    }

    /// Do all of this rule's conditions hold? (Test and tool helper.)
    pub fn holds(&self, ctx: &RequestCtx<'_>) -> bool {
        self.check(ctx, ctx.principal, &Captures::default()).is_ok()
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
    pub client_bindings: BTreeMap<String, Vec<PeerPattern>>,
    router: Router,
    pub limits: RateLimits<Arc<str>>,
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
    pub fn from_file(path: &Path, ctx: &PolicyContext) -> Result<Self, PolicyError> {
        let text = read_policy_file(path)?;
        Self::from_yaml(&text, ctx).map_err(|e| e.in_file(path))
    }

    /// Parse and check. `trust_domains`: the peers' trust domains this sidecar accepts; a peer
    /// pattern outside them could never match and is an error. Empty: not checked.
    pub fn from_yaml(text: &str, ctx: &PolicyContext) -> Result<Self, PolicyError> {
        let file: PolicyFile =
            serde_saphyr::from_str(text).map_err(|e| PolicyError::Parse(e.to_string()))?;
        Self::compile(file, ctx)
    }

    pub fn compile(file: PolicyFile, ctx: &PolicyContext) -> Result<Self, PolicyError> {
        let trust_domains = &ctx.trust_domains[..];
        let mut problems = Vec::new();
        let no_oidc = ctx.issuers.as_ref().is_some_and(Vec::is_empty);
        if no_oidc && !file.client_bindings.is_empty() {
            problems.push(
                "client_bindings: the sidecar has no oidc issuers, so no token can name a client"
                    .into(),
            );
        }
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
            let token = spec.token.unwrap_or(if ctx.oidc_configured() {
                TokenRequirement::Required
            } else {
                TokenRequirement::None
            });
            if no_oidc && token != TokenRequirement::None {
                problems.push(format!(
                    "{at}.token: the sidecar has no oidc issuers; a route cannot require a token"
                ));
            }
            let param_names: Vec<&str> = pattern
                .segments
                .iter()
                .filter_map(|s| match s {
                    router::PatternSegment::Param(n) => Some(n.as_str()),
                    _ => None,
                })
                .collect();
            let mut rules = Vec::with_capacity(spec.allow.len());
            for (r, rule) in spec.allow.into_iter().enumerate() {
                let rule_at = format!("{at}.allow[{r}]");
                if rule.has_token_conditions() {
                    if token == TokenRequirement::None {
                        problems.push(format!(
                            "{rule_at}: token conditions on a route with token: none can never hold"
                        ));
                    }
                    if no_oidc {
                        problems.push(format!(
                            "{rule_at}: token conditions need an oidc issuer in the sidecar config"
                        ));
                    }
                }
                if let (Some(known), Some(wanted)) = (&ctx.issuers, &rule.issuers) {
                    for issuer in wanted {
                        if !known.contains(issuer) {
                            problems.push(format!(
                                "{rule_at}.issuers: {issuer} is not a configured issuer; it can never match"
                            ));
                        }
                    }
                }
                for (name, list) in [
                    ("issuers", &rule.issuers),
                    ("clients", &rule.clients),
                    ("scopes_all", &rule.scopes_all),
                    ("scopes_any", &rule.scopes_any),
                    ("amr_any", &rule.amr_any),
                ] {
                    if list.as_ref().is_some_and(Vec::is_empty) {
                        problems.push(format!(
                            "{rule_at}.{name}: empty list; this rule can never match"
                        ));
                    }
                }
                let mut bind = Vec::new();
                for (param, target) in rule.bind.iter().flatten() {
                    match param_names.iter().position(|n| n == param) {
                        Some(i) => bind.push((i, *target)),
                        None => problems.push(format!(
                            "{rule_at}.bind: {{{param}}} is not a parameter of {}",
                            pattern
                        )),
                    }
                }
                match &rule.peers {
                    None if !rule.has_token_conditions() => problems.push(format!(
                        "{rule_at}: a rule with no conditions allows everybody; say public: true on the route if that is meant"
                    )),
                    None => {}
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
                rules.push(Rule {
                    peers: rule.peers.clone(),
                    spec: rule,
                    bind,
                });
            }
            // Parameters bound to a national id hold personal data: pseudonymised in audit.
            let mut personal_params: Vec<String> = rules
                .iter()
                .flat_map(|r: &Rule| r.spec.bind.iter().flatten())
                .filter(|(_, t)| **t == BindTarget::NationalId)
                .map(|(p, _)| p.clone())
                .collect();
            personal_params.sort();
            personal_params.dedup();
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
                template: pattern.to_string().into(),
                pattern,
                mode: spec.mode.unwrap_or(file.default_mode),
                public: spec.public,
                rules,
                rate_limit: spec.rate_limit,
                token,
                forward_token: spec.forward_token,
                forward_national_id: spec.forward_national_id,
                personal_params: personal_params.into(),
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
        for (client, peers) in &file.client_bindings {
            if peers.is_empty() {
                problems.push(format!(
                    "client_bindings.{client}: empty; no request could use this client"
                ));
            }
        }
        if !problems.is_empty() {
            return Err(PolicyError::Invalid(problems));
        }
        Ok(Self {
            routes,
            default_mode: file.default_mode,
            client_bindings: file.client_bindings,
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
    /// The route needs an access token and none was presented.
    TokenRequired,
    IssuerNotAllowed,
    ClientNotAllowed,
    /// The token's client is bound to other SPIFFE IDs than this peer.
    ClientPeerMismatch,
    InsufficientScope,
    /// Level of assurance too low: step-up.
    InsufficientAssurance,
    /// Login too old: step-up.
    AuthenticationTooOld,
    AmrNotAllowed,
    ClaimMismatch,
    /// A path parameter is bound to the principal and does not match (someone else's record).
    BindingMismatch,
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
            Self::TokenRequired => "token_required",
            Self::IssuerNotAllowed => "issuer_not_allowed",
            Self::ClientNotAllowed => "client_not_allowed",
            Self::ClientPeerMismatch => "client_peer_mismatch",
            Self::InsufficientScope => "insufficient_scope",
            Self::InsufficientAssurance => "insufficient_assurance",
            Self::AuthenticationTooOld => "authentication_too_old",
            Self::AmrNotAllowed => "amr_not_allowed",
            Self::ClaimMismatch => "claim_mismatch",
            Self::BindingMismatch => "binding_mismatch",
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
    /// For step-up denials: what the failing rule asked for.
    pub step_up: Option<StepUp>,
}

/// RFC 9470 step-up details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepUp {
    pub min_loa: Option<Loa>,
    pub max_age_secs: Option<u64>,
}

/// Decide on a request. Pure: no I/O, no clock (`now` is in the context), no state (rate
/// limits come after).
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
                None,
            );
        }
        Lookup::MethodNotAllowed => {
            return finish(
                policy.default_mode,
                Reason::MethodNotAllowed,
                None,
                None,
                Captures::default(),
                None,
            );
        }
    };
    let spec = &policy.routes[route];
    let principal = match spec.token {
        TokenRequirement::None => None,
        _ => ctx.principal,
    };
    if spec.token == TokenRequirement::Required && principal.is_none() {
        return finish(
            spec.mode,
            Reason::TokenRequired,
            Some(route),
            None,
            captures,
            None,
        );
    }
    if let (Some(p), Some(peer)) = (principal, ctx.peer)
        && let Some(client) = p.client_id.as_deref()
        && let Some(bound) = policy.client_bindings.get(client)
        && !bound.iter().any(|b| b.matches(peer))
    {
        return finish(
            spec.mode,
            Reason::ClientPeerMismatch,
            Some(route),
            None,
            captures,
            None,
        );
    }
    if spec.public {
        return finish(spec.mode, Reason::Public, Some(route), None, captures, None);
    }
    // The reason reported is the first failure of the first rule whose peers matched (the right
    // workload, but its token lacks something); failing that, the peer was not allowed.
    let mut failure: Option<(Reason, usize)> = None;
    for (index, rule) in spec.rules.iter().enumerate() {
        match rule.check(ctx, principal, &captures) {
            Ok(()) => {
                return finish(
                    spec.mode,
                    Reason::RuleMatched,
                    Some(route),
                    Some(index),
                    captures,
                    None,
                );
            }
            Err(Reason::PeerNotAllowed | Reason::NoPeerIdentity) => {}
            Err(reason) => {
                failure.get_or_insert((reason, index));
            }
        }
    }
    let (reason, step_up) = match failure {
        Some((reason, index)) => {
            let rule = &spec.rules[index].spec;
            let step_up = match reason {
                Reason::InsufficientAssurance => Some(StepUp {
                    min_loa: rule.min_loa,
                    max_age_secs: None,
                }),
                Reason::AuthenticationTooOld => Some(StepUp {
                    min_loa: rule.min_loa,
                    max_age_secs: rule.max_auth_age.map(|d| d.as_secs()),
                }),
                _ => None,
            };
            (reason, step_up)
        }
        None if ctx.peer.is_none() => (Reason::NoPeerIdentity, None),
        None => (Reason::PeerNotAllowed, None),
    };
    finish(spec.mode, reason, Some(route), None, captures, step_up)
}

fn finish(
    mode: Mode,
    reason: Reason,
    route: Option<usize>,
    rule: Option<usize>,
    captures: Captures,
    step_up: Option<StepUp>,
) -> Decision {
    let allowed = reason.is_allow();
    let would_deny = (!allowed && mode == Mode::DryRun).then_some(reason);
    Decision {
        allowed: allowed || would_deny.is_some(),
        reason,
        route,
        rule,
        mode,
        would_deny,
        captures,
        step_up,
    }
}

#[cfg(test)]
mod tests;

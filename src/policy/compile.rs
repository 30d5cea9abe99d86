//! A policy file checked and compiled into a [`Policy`]: routes in a router, rules with their
//! peer patterns and bindings, rate limiters. Every problem is reported with its route.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use http::Method;

use super::file::{
    BindTarget, ClientBindingsSpec, ClientRef, Mode, PeerPattern, PolicyContext, PolicyFile,
    RuleSpec, TokenRequirement,
};
use super::router::{NearMiss, PathPattern, Router};
use crate::hygiene::host::CanonicalHost;
use crate::identity::TrustDomain;
use crate::ratelimit::{RateLimitSpec, RateLimits};

/// Largest policy file read.
const MAX_POLICY_BYTES: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("policy file {path} is larger than {MAX_POLICY_BYTES} bytes")]
    TooLarge { path: std::path::PathBuf },
    /// The file is not YAML of the policy's shape.
    #[error("{}{error}", file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default())]
    Parse {
        file: Option<std::path::PathBuf>,
        error: crate::serde_helpers::YamlError,
    },
    /// One or more semantic problems, each naming its route.
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

impl PolicyError {
    /// For a terminal: the lines of `text` where parsing stopped (empty for other errors).
    pub fn excerpt(&self, text: &str) -> String {
        match self {
            Self::Parse { file, error } => error.excerpt(
                &file
                    .as_ref()
                    .map_or_else(|| "policy".to_owned(), |f| f.display().to_string()),
                text,
            ),
            _ => String::new(),
        }
    }

    /// The whole error on one line (several problems separated by `; `), for a log line.
    pub fn one_line(&self) -> String {
        match self {
            Self::Invalid(problems) => problems.join("; "),
            other => other.to_string(),
        }
    }

    /// Prefix messages with the file they are about.
    pub fn in_file(self, path: &Path) -> Self {
        match self {
            Self::Parse { error, .. } => Self::Parse {
                file: Some(path.to_owned()),
                error,
            },
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
    pub require_dpop: bool,
    pub forward_token: bool,
    pub forward_national_id: bool,
    /// Protocols this route tunnels after an `Upgrade`, lower case.
    pub upgrade: Vec<String>,
    /// Path parameters bound to a national id in any rule: personal data, pseudonymised in audit.
    pub personal_params: Arc<[String]>,
}

#[derive(Debug)]
pub struct Rule {
    pub peers: Option<Vec<PeerPattern>>,
    /// The clients accepted, each with its issuer (`spec.clients` as written may leave the
    /// issuer implied; this is what decisions compare).
    pub clients: Option<Vec<ClientKey>>,
    pub spec: RuleSpec,
    /// Bound path parameters as (index among the route's parameters, target).
    pub bind: Vec<(usize, BindTarget)>,
}

/// An OAuth client as issued by one issuer: client ids are only unique per issuer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientKey {
    pub issuer: Arc<str>,
    pub id: Arc<str>,
}

impl ClientKey {
    /// Is this the client of a token from `issuer` naming `client_id`?
    pub fn is(&self, issuer: &str, client_id: &str) -> bool {
        *self.issuer == *issuer && *self.id == *client_id
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{issuer: {}, id: {}}}", self.issuer, self.id)
    }
}

/// Client bindings by issuer, then client id. An issuer listed here has at least one bound
/// client, so its tokens must name a client (else the binding could be dodged).
#[derive(Debug, Default)]
pub struct ClientBindings(BTreeMap<Arc<str>, BTreeMap<Arc<str>, Vec<PeerPattern>>>);

impl ClientBindings {
    /// The bound clients of `issuer`; `None` when it has none.
    pub fn of_issuer(&self, issuer: &str) -> Option<&BTreeMap<Arc<str>, Vec<PeerPattern>>> {
        self.0.get(issuer)
    }

    /// Every binding, as (client, peers).
    pub fn iter(&self) -> impl Iterator<Item = (ClientKey, &[PeerPattern])> {
        self.0.iter().flat_map(|(issuer, clients)| {
            clients.iter().map(|(id, peers)| {
                (
                    ClientKey {
                        issuer: issuer.clone(),
                        id: id.clone(),
                    },
                    &peers[..],
                )
            })
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A checked, compiled policy. Immutable; replaced whole on reload.
pub struct Policy {
    pub routes: Vec<Route>,
    pub default_mode: Mode,
    pub client_bindings: ClientBindings,
    /// What a near miss of a literal route gets (the router applies it; `vakt check` reports
    /// what falling back would grant).
    pub path_near_miss: NearMiss,
    pub(super) router: Router,
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
        let file: PolicyFile = crate::serde_helpers::from_yaml(text)
            .map_err(|error| PolicyError::Parse { file: None, error })?;
        Self::compile(file, ctx)
    }

    pub fn compile(file: PolicyFile, ctx: &PolicyContext) -> Result<Self, PolicyError> {
        let trust_domains = &ctx.trust_domains[..];
        let mut problems = Vec::new();
        let no_oidc = ctx.issuers.as_ref().is_some_and(Vec::is_empty);
        if no_oidc && !file.client_bindings.entries.is_empty() {
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
        let mut router = Router::new(file.path_near_miss);
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
            // Metrics and audit events say `none` (and reports `-`) where no route matched.
            if ["none", "-"].contains(&spec.id.as_str()) {
                problems.push(format!(
                    "{at}.id: \"{}\" is what metrics and audit events say when no route matched; choose another id",
                    spec.id
                ));
            }
            if spec.methods.is_empty() {
                problems.push(format!("{at}.methods: empty; the route could never match"));
            }
            let mut upgrade = Vec::with_capacity(spec.upgrade.len());
            for protocol in &spec.upgrade {
                let name = protocol.to_ascii_lowercase();
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b))
                {
                    problems.push(format!("{at}.upgrade: {protocol:?} is not a protocol name"));
                } else if name.starts_with("h2c") {
                    problems.push(format!(
                        "{at}.upgrade: h2c is never tunnelled (an h2c upgrade through a proxy bypasses its checks of every later request)"
                    ));
                } else if !spec.methods.contains(&Method::GET) {
                    problems.push(format!(
                        "{at}.upgrade: needs GET among the methods (upgrades start with a GET)"
                    ));
                } else if !upgrade.contains(&name) {
                    upgrade.push(name);
                }
            }
            if spec.methods.contains(&Method::HEAD) && !spec.methods.contains(&Method::GET) {
                problems.push(format!(
                    "{at}.methods: HEAD is authorised as GET (apps run the GET handler for it); list GET"
                ));
            }
            let mut methods = spec.methods.clone();
            methods.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            methods.dedup();
            // The same parser as requests' hosts, so a route names a host in the form it is matched.
            let host = match spec.host.as_deref() {
                None => None,
                Some(h) => match CanonicalHost::parse(h.as_bytes(), 0) {
                    Ok(c) if c.name() == c.as_str() => Some(c.name().to_owned()),
                    Ok(_) => {
                        problems.push(format!(
                            "{at}.host: \"{h}\" has a port; a route names the host only"
                        ));
                        None
                    }
                    Err(e) => {
                        problems.push(format!(
                            "{at}.host: \"{h}\" is not a host name (no wildcard): {e}"
                        ));
                        None
                    }
                },
            };
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
            if spec.require_dpop {
                if token == TokenRequirement::None || no_oidc {
                    problems.push(format!(
                        "{at}.require_dpop: needs a token (token: required or optional, and oidc issuers in the sidecar config)"
                    ));
                } else if ctx.dpop_public_url == Some(false) {
                    problems.push(format!(
                        "{at}.require_dpop: no DPoP public URL is configured (oidc.dpop.public_url), so no proof's htu could be checked"
                    ));
                }
            }
            let param_names: Vec<&str> = pattern.param_names().collect();
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
                if let Some(known) = ctx.issuers.as_ref().filter(|k| k.len() > 1)
                    && rule.has_token_conditions()
                    && rule.issuers.is_none()
                {
                    problems.push(format!(
                        "{rule_at}: the sidecar trusts {} issuers ({}); a rule with token conditions must name its issuers, so that one issuer's tokens cannot pass for another's",
                        known.len(),
                        known.join(", ")
                    ));
                }
                let clients = rule.clients.as_ref().map(|written| {
                    let mut keys: Vec<ClientKey> = Vec::with_capacity(written.len());
                    for (c, client) in written.iter().enumerate() {
                        match resolve_client(
                            client,
                            rule.issuers.as_deref(),
                            ctx.issuers.as_deref(),
                        ) {
                            Ok(Some(key)) if keys.contains(&key) => problems
                                .push(format!("{rule_at}.clients[{c}]: {key} is listed twice")),
                            Ok(Some(key)) => keys.push(key),
                            Ok(None) => {}
                            Err(e) => problems.push(format!("{rule_at}.clients[{c}]: {e}")),
                        }
                    }
                    keys
                });
                for (name, empty) in [
                    ("issuers", rule.issuers.as_ref().map(Vec::is_empty)),
                    ("clients", rule.clients.as_ref().map(Vec::is_empty)),
                    ("scopes_all", rule.scopes_all.as_ref().map(Vec::is_empty)),
                    ("scopes_any", rule.scopes_any.as_ref().map(Vec::is_empty)),
                    ("amr_any", rule.amr_any.as_ref().map(Vec::is_empty)),
                ] {
                    if empty == Some(true) {
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
                    clients,
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
                require_dpop: spec.require_dpop,
                forward_token: spec.forward_token,
                forward_national_id: spec.forward_national_id,
                upgrade,
                personal_params: personal_params.into(),
            });
        }
        let client_bindings = compile_bindings(&file.client_bindings, ctx, &mut problems);
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
            client_bindings,
            path_near_miss: file.path_near_miss,
            router,
            limits,
        })
    }
}

/// `client_bindings` keyed by (issuer, client id); problems are added to `problems`.
fn compile_bindings(
    spec: &ClientBindingsSpec,
    ctx: &PolicyContext,
    problems: &mut Vec<String>,
) -> ClientBindings {
    let mut bindings: BTreeMap<Arc<str>, BTreeMap<Arc<str>, Vec<PeerPattern>>> = BTreeMap::new();
    for (index, binding) in spec.entries.iter().enumerate() {
        let at = spec.location(index);
        if binding.peers.is_empty() {
            problems.push(format!("{at}: empty; no request could use this client"));
        }
        match resolve_client(&binding.client, None, ctx.issuers.as_deref()) {
            Ok(Some(key)) => {
                let by_client = bindings.entry(key.issuer.clone()).or_default();
                if by_client
                    .insert(key.id.clone(), binding.peers.clone())
                    .is_some()
                {
                    problems.push(format!("{at}: {key} is bound twice; merge its peer lists"));
                }
            }
            Ok(None) => {}
            Err(e) => problems.push(format!("{at}: {e}")),
        }
    }
    ClientBindings(bindings)
}

/// The (issuer, client id) a client as written means. A client id alone is resolved to the one
/// issuer that can be meant: the rule's only issuer, else the sidecar's only issuer.
/// `rule_issuers`: the issuers the rule names (`None` for bindings or a rule naming none);
/// `sidecar`: the configured issuers, `None` when not known. `Ok(None)`: the sidecar has no
/// issuers at all, which is reported on its own.
fn resolve_client(
    client: &ClientRef,
    rule_issuers: Option<&[String]>,
    sidecar: Option<&[String]>,
) -> Result<Option<ClientKey>, String> {
    let key = |issuer: &str, id: &str| {
        Some(ClientKey {
            issuer: issuer.into(),
            id: id.into(),
        })
    };
    match client {
        ClientRef::Qualified { issuer, id } => {
            if issuer.is_empty() || id.is_empty() {
                return Err(format!("{client}: issuer and id must not be empty"));
            }
            match sidecar {
                Some([]) => return Ok(None),
                Some(known) if !known.contains(issuer) => {
                    return Err(format!(
                        "issuer {issuer} is not a configured issuer; it can never match"
                    ));
                }
                _ => {}
            }
            if let Some(named) = rule_issuers
                && !named.is_empty()
                && !named.contains(issuer)
            {
                return Err(format!(
                    "issuer {issuer} is not among the rule's issuers ({}); it can never match",
                    named.join(", ")
                ));
            }
            Ok(key(issuer, id))
        }
        ClientRef::Plain(id) => {
            if id.is_empty() {
                return Err("empty client id".into());
            }
            let ambiguous = |among: &str, issuers: &[String]| {
                format!(
                    "\"{id}\" names no issuer, and {among} {} ({}); write {{issuer: <issuer URL>, id: {id}}}",
                    issuers.len(),
                    issuers.join(", ")
                )
            };
            match (rule_issuers, sidecar) {
                (Some([one]), _) => Ok(key(one, id)),
                (Some([]), _) => Ok(None),
                (Some(named), _) => Err(ambiguous("the rule names", named)),
                (None, Some([one])) => Ok(key(one, id)),
                (None, Some([])) => Ok(None),
                (None, Some(known)) => Err(ambiguous("the sidecar trusts", known)),
                (None, None) => Err(format!(
                    "\"{id}\" names no issuer, and the sidecar's issuers are not known here (pass them with --issuer); write {{issuer: <issuer URL>, id: {id}}}"
                )),
            }
        }
    }
}

//! The pure decision: [`evaluate`] a request against a [`Policy`], and the record of what was
//! decided that travels to the outer layers (metrics, audit).

use std::sync::Arc;

use http::Method;

use super::compile::{ClientBindings, ClientKey, Policy, Route, Rule};
use super::file::{BindTarget, ClaimMatch, Mode, PeerPattern, TokenRequirement};
use super::router::{Captures, Lookup};
use crate::authn::{Loa, Principal};
use crate::hygiene::path::CanonicalPath;
use crate::identity::SpiffeId;

/// What a request brings to a decision.
#[derive(Debug, Clone, Copy)]
pub struct RequestCtx<'a> {
    pub method: &'a Method,
    /// The canonical host name, without port; `None` only where a tool explains a request that
    /// names no host.
    pub host: Option<&'a str>,
    pub path: &'a CanonicalPath,
    pub peer: Option<&'a SpiffeId>,
    /// The verified end user, if a token was presented and verified.
    pub principal: Option<&'a Principal>,
    /// Unix seconds, for `max_auth_age` (an argument, so decisions stay pure).
    pub now: i64,
    /// The protocol an HTTP/1.1 request asks to upgrade to (`Upgrade`), lower case.
    pub upgrade: Option<&'a str>,
}

/// One condition a rule names, in the order rules are checked.
#[derive(Debug, Clone, Copy)]
pub enum Condition<'r> {
    /// The caller's workload is one of these.
    Peers(&'r [PeerPattern]),
    /// The token comes from one of these issuers.
    Issuers(&'r [String]),
    /// The token names one of these clients (each with its issuer).
    Clients(&'r [ClientKey]),
    /// The token has every one of these scopes.
    ScopesAll(&'r [String]),
    /// The token has at least one of these scopes.
    ScopesAny(&'r [String]),
    /// The login's level of assurance is at least this.
    MinLoa(Loa),
    /// The login is at most this old.
    MaxAuthAge(std::time::Duration),
    /// The login used one of these methods.
    AmrAny(&'r [String]),
    /// The token's claim has this value.
    Claim(&'r str, &'r ClaimMatch),
    /// The path parameter (index among the route's) equals this part of the principal.
    Bind(usize, BindTarget),
}

impl Condition<'_> {
    /// The denial reason when this condition does not hold.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Peers(_) => Reason::PeerNotAllowed,
            Self::Issuers(_) => Reason::IssuerNotAllowed,
            Self::Clients(_) => Reason::ClientNotAllowed,
            Self::ScopesAll(_) | Self::ScopesAny(_) => Reason::InsufficientScope,
            Self::MinLoa(_) => Reason::InsufficientAssurance,
            Self::MaxAuthAge(_) => Reason::AuthenticationTooOld,
            Self::AmrAny(_) => Reason::AmrNotAllowed,
            Self::Claim(..) => Reason::ClaimMismatch,
            Self::Bind(..) => Reason::BindingMismatch,
        }
    }

    /// Is it about the token (as opposed to the peer)?
    pub fn needs_token(&self) -> bool {
        !matches!(self, Self::Peers(_))
    }
}

impl Rule {
    /// `Ok` when every condition holds, else the first failing condition's reason
    /// (`token_required` when a token condition meets a request without a token).
    pub fn check(
        &self,
        ctx: &RequestCtx<'_>,
        principal: Option<&Principal>,
        captures: &Captures,
    ) -> Result<(), Reason> {
        let mut failed = None;
        self.each_condition(ctx, principal, captures, |condition, held| {
            if held {
                return std::ops::ControlFlow::Continue(());
            }
            failed = Some(match condition {
                Condition::Peers(_) if ctx.peer.is_none() => Reason::NoPeerIdentity,
                c if c.needs_token() && principal.is_none() => Reason::TokenRequired,
                c => c.reason(),
            });
            std::ops::ControlFlow::Break(())
        });
        failed.map_or(Ok(()), Err)
    }

    /// Visit each condition this rule names, in order, with whether it holds for the request;
    /// stops when `visit` breaks. A token condition does not hold without a token.
    pub fn each_condition<'r>(
        &'r self,
        ctx: &RequestCtx<'_>,
        principal: Option<&Principal>,
        captures: &Captures,
        mut visit: impl FnMut(Condition<'r>, bool) -> std::ops::ControlFlow<()>,
    ) {
        use std::ops::ControlFlow::Break;
        macro_rules! visit {
            ($condition:expr, $held:expr) => {
                if let Break(()) = visit($condition, $held) {
                    return;
                }
            };
        }
        if let Some(patterns) = &self.peers {
            visit!(Condition::Peers(patterns), self.peers_hold(ctx));
        }
        let r = &self.spec;
        let p = principal;
        if let Some(issuers) = &r.issuers {
            let held = p.is_some_and(|p| issuers.iter().any(|i| **i == *p.issuer));
            visit!(Condition::Issuers(issuers), held);
        }
        // A client id is compared together with its issuer: two issuers may use the same id.
        if let Some(clients) = &self.clients {
            let held = p.is_some_and(|p| {
                p.client_id
                    .as_deref()
                    .is_some_and(|c| clients.iter().any(|allowed| allowed.is(&p.issuer, c)))
            });
            visit!(Condition::Clients(clients), held);
        }
        if let Some(all) = &r.scopes_all {
            let held = p.is_some_and(|p| all.iter().all(|s| p.scopes.contains(s)));
            visit!(Condition::ScopesAll(all), held);
        }
        if let Some(any) = &r.scopes_any {
            let held = p.is_some_and(|p| any.iter().any(|s| p.scopes.contains(s)));
            visit!(Condition::ScopesAny(any), held);
        }
        if let Some(min) = r.min_loa {
            visit!(Condition::MinLoa(min), p.is_some_and(|p| p.loa >= min));
        }
        if let Some(max_age) = r.max_auth_age {
            let held = p.is_some_and(|p| {
                p.auth_time
                    .is_some_and(|t| ctx.now - t <= max_age.as_secs() as i64)
            });
            visit!(Condition::MaxAuthAge(max_age), held);
        }
        if let Some(amr) = &r.amr_any {
            let held = p.is_some_and(|p| amr.iter().any(|m| p.amr.contains(m)));
            visit!(Condition::AmrAny(amr), held);
        }
        if let Some(claims) = &r.claims {
            for (name, want) in claims {
                let held = p.is_some_and(|p| p.claims.get(name).is_some_and(|v| want.accepts(v)));
                visit!(Condition::Claim(name, want), held);
            }
        }
        for (param, target) in &self.bind {
            let value = captures
                .params
                .get(*param)
                .map(|(_, range)| &ctx.path.as_str()[range.clone()]);
            let held = p.is_some_and(|p| {
                let bound = match target {
                    BindTarget::NationalId => p.national_id.as_deref(),
                    BindTarget::Subject => p.subject.as_deref(),
                    BindTarget::ClientId => p.client_id.as_deref(),
                };
                value.is_some() && value == bound
            });
            visit!(Condition::Bind(*param, *target), held);
        }
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

impl Route {
    /// Why the request's peer is refused before anything else is checked: on a route that is
    /// not public, when no rule admits it.
    pub fn peer_refusal(&self, ctx: &RequestCtx<'_>) -> Option<Reason> {
        if self.public || self.rules.iter().any(|rule| rule.peers_hold(ctx)) {
            return None;
        }
        Some(if ctx.peer.is_none() {
            Reason::NoPeerIdentity
        } else {
            Reason::PeerNotAllowed
        })
    }
}

impl ClientBindings {
    /// Does a token of `principal` arriving from `peer` satisfy the bindings? Fails closed: a
    /// token from an issuer with bound clients must name its client, and a bound client's token
    /// needs a peer identity that matches.
    pub fn check(&self, principal: &Principal, peer: Option<&SpiffeId>) -> Result<(), Reason> {
        let Some(bound) = self.of_issuer(&principal.issuer) else {
            return Ok(());
        };
        let Some(client) = principal.client_id.as_deref() else {
            return Err(Reason::ClientIdMissing);
        };
        match (bound.get(client), peer) {
            (None, _) => Ok(()),
            (Some(peers), Some(peer)) if peers.iter().any(|b| b.matches(peer)) => Ok(()),
            (Some(_), _) => Err(Reason::ClientPeerMismatch),
        }
    }
}

impl Policy {
    /// The route (and its captures) the request's host, method and path select.
    pub fn lookup(&self, ctx: &RequestCtx<'_>) -> Lookup {
        self.router.lookup(ctx.host, ctx.method, ctx.path.as_str())
    }
}

/// Does the route tunnel every protocol the `Upgrade` header names (`name[/version]`, comma
/// separated, lower case)? An empty or unreadable list is not allowed.
pub(crate) fn upgrade_allowed(allowed: &[String], protocols: &str) -> bool {
    let mut named = protocols
        .split(',')
        .map(|p| p.trim().split('/').next().unwrap_or("").trim())
        .peekable();
    named.peek().is_some()
        && named.all(|name| !name.is_empty() && allowed.iter().any(|a| a == name))
}

/// Why a decision came out as it did: a bounded set, for audit, metrics and denial bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A rule of the route held.
    RuleMatched,
    /// The route is public.
    Public,
    NoRoute,
    /// The most specific route for the path does not accept the method (405 with `Allow`).
    MethodNotAllowed,
    /// The path misses a more specific route only by letter case or a trailing `/`.
    PathNearMiss,
    /// A protocol upgrade (`Upgrade: websocket`, ...) the route does not list.
    UpgradeNotAllowed,
    PeerNotAllowed,
    NoPeerIdentity,
    /// The route needs an access token and none was presented.
    TokenRequired,
    /// The route needs a DPoP-bound token with its proof (`require_dpop: true`), and the token
    /// came as Bearer or not at all.
    DpopRequired,
    IssuerNotAllowed,
    ClientNotAllowed,
    /// The token's client is bound to other SPIFFE IDs than this peer.
    ClientPeerMismatch,
    /// The token names no client, and its issuer has clients bound to peers: without a client
    /// id the binding cannot be checked, so the token is refused.
    ClientIdMissing,
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
    /// Every reason, in declaration order.
    pub const ALL: [Reason; 20] = [
        Self::RuleMatched,
        Self::Public,
        Self::NoRoute,
        Self::MethodNotAllowed,
        Self::PathNearMiss,
        Self::UpgradeNotAllowed,
        Self::PeerNotAllowed,
        Self::NoPeerIdentity,
        Self::TokenRequired,
        Self::DpopRequired,
        Self::IssuerNotAllowed,
        Self::ClientNotAllowed,
        Self::ClientPeerMismatch,
        Self::ClientIdMissing,
        Self::InsufficientScope,
        Self::InsufficientAssurance,
        Self::AuthenticationTooOld,
        Self::AmrNotAllowed,
        Self::ClaimMismatch,
        Self::BindingMismatch,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Self::RuleMatched => "rule_matched",
            Self::Public => "public_route",
            Self::NoRoute => "no_route",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PathNearMiss => "path_near_miss",
            Self::UpgradeNotAllowed => "upgrade_not_allowed",
            Self::PeerNotAllowed => "peer_not_allowed",
            Self::NoPeerIdentity => "no_peer_identity",
            Self::TokenRequired => "token_required",
            Self::DpopRequired => "dpop_required",
            Self::IssuerNotAllowed => "issuer_not_allowed",
            Self::ClientNotAllowed => "client_not_allowed",
            Self::ClientPeerMismatch => "client_peer_mismatch",
            Self::ClientIdMissing => "client_id_missing",
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
    /// For `method_not_allowed`: the methods the route accepts (the `Allow` header).
    pub allowed_methods: Vec<Method>,
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
        Lookup::MethodNotAllowed { allowed } => {
            let mut decision = finish(
                policy.default_mode,
                Reason::MethodNotAllowed,
                None,
                None,
                Captures::default(),
                None,
            );
            decision.allowed_methods = allowed;
            return decision;
        }
        Lookup::NearMiss => {
            return finish(
                policy.default_mode,
                Reason::PathNearMiss,
                None,
                None,
                Captures::default(),
                None,
            );
        }
    };
    let spec = &policy.routes[route];
    if let Some(protocols) = ctx.upgrade
        && !upgrade_allowed(&spec.upgrade, protocols)
    {
        return finish(
            spec.mode,
            Reason::UpgradeNotAllowed,
            Some(route),
            None,
            captures,
            None,
        );
    }
    // The peer comes before any token: a workload no rule admits is refused as such, and is
    // not told that a token is what it lacks.
    if let Some(reason) = spec.peer_refusal(ctx) {
        return finish(spec.mode, reason, Some(route), None, captures, None);
    }
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
    if spec.require_dpop && principal.is_none_or(|p| p.dpop_jkt.is_none()) {
        return finish(
            spec.mode,
            Reason::DpopRequired,
            Some(route),
            None,
            captures,
            None,
        );
    }
    if let Some(p) = principal
        && let Err(reason) = policy.client_bindings.check(p, ctx.peer)
    {
        return finish(spec.mode, reason, Some(route), None, captures, None);
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
        allowed_methods: Vec::new(),
    }
}

/// What was decided about a request, for the outer layers (metrics, audit). Written into the
/// request's exchange (`crate::exchange`) by the policy and rate-limit stages.
#[derive(Debug, Clone)]
pub struct DecisionRecord {
    pub route_id: Option<Arc<str>>,
    /// The matched route's path pattern, for the audit event.
    pub route_template: Option<Arc<str>>,
    /// Path parameters that hold personal data (bound to a national id): pseudonymised in audit.
    pub personal_params: Arc<[String]>,
    pub rule: Option<usize>,
    pub mode: Mode,
    pub outcome: Outcome,
    /// The reason code of the outcome (`rule_matched`, `no_route`, `rate_limited`, ...).
    pub reason: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Allow,
    Deny,
    /// Dry-run: let through, but would have been denied.
    WouldDeny,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::WouldDeny => "would_deny",
        }
    }
}

impl DecisionRecord {
    /// What the policy stage records for `decision` (public for the audit benchmark).
    pub fn from_decision(policy: &Policy, decision: &Decision) -> Self {
        let outcome = match (decision.allowed, decision.would_deny) {
            (true, None) => Outcome::Allow,
            (true, Some(_)) => Outcome::WouldDeny,
            (false, _) => Outcome::Deny,
        };
        let route = decision.route.map(|r| &policy.routes[r]);
        Self::for_route(
            route,
            decision.rule,
            decision.mode,
            outcome,
            decision.reason.code(),
        )
    }

    /// A record about `route` (what the audit event needs of it) and the outcome.
    pub(crate) fn for_route(
        route: Option<&Route>,
        rule: Option<usize>,
        mode: Mode,
        outcome: Outcome,
        reason: &'static str,
    ) -> Self {
        Self {
            route_template: route.map(|r| r.template.clone()),
            personal_params: route.map_or_else(|| Arc::from([]), |r| r.personal_params.clone()),
            route_id: route.map(|r| r.id.clone()),
            rule,
            mode,
            outcome,
            reason,
        }
    }
}

/// The route the policy matched, for the rate-limit stage (same policy generation).
#[derive(Clone)]
pub struct MatchedRoute {
    pub policy: Arc<Policy>,
    pub route: usize,
}

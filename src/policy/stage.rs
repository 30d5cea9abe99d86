//! The policy and rate-limit stages of the inbound stack.

use std::sync::Arc;

use http::header::HOST;

use super::path::CanonicalPath;
use super::reload::PolicyStore;
use super::{Decision, Mode, Policy, RequestCtx, evaluate};
use crate::authn::Principal;
use crate::error::DenyReason;
use crate::hygiene::RequestIds;
use crate::identity::PeerIdentity;
use crate::metrics as m;
use crate::pseudonym::Pseudonymiser;
use crate::ratelimit::retry_after_secs;
use crate::stack::{Next, Req, Resp, Stage};

/// What was decided about a request, for the outer layers (metrics, audit). Travels in the
/// response extensions.
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
    fn for_route(
        route: Option<&super::Route>,
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

/// Lowercase host without port, from `Host` or the URI authority.
fn request_host(req: &Req) -> Option<String> {
    let raw = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))?;
    let authority: http::uri::Authority = raw.parse().ok()?;
    Some(authority.host().trim_end_matches('.').to_ascii_lowercase())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The verified principal as headers for the app, set after the client's own `x-vakt-*`
/// headers were stripped. The national id leaves only as a pseudonym unless the route says
/// `forward_national_id: true`; the `Authorization` header only with `forward_token: true`.
pub struct IdentityHeaders {
    pub pseudonyms: Arc<Pseudonymiser>,
}

impl IdentityHeaders {
    fn apply(&self, req: &mut Req, principal: Option<&Principal>, route: Option<&super::Route>) {
        if let Some(original) = req
            .extensions_mut()
            .remove::<crate::authn::stage::OriginalAuthorization>()
            && route.is_some_and(|r| r.forward_token)
        {
            req.headers_mut()
                .insert(http::header::AUTHORIZATION, original.0);
        }
        let Some(p) = principal else {
            return;
        };
        if route.is_some_and(|r| r.token == super::TokenRequirement::None) {
            return;
        }
        let key_id = self.pseudonyms.key_id();
        let rendered = match p.identity_headers.get() {
            Some((made_with, values)) if made_with == key_id => values.clone(),
            _ => {
                let values: crate::authn::IdentityHeaderValues = self.render(p).into();
                let _ = p.identity_headers.set((key_id.to_owned(), values.clone()));
                values
            }
        };
        let headers = req.headers_mut();
        headers.reserve(rendered.len() + 1);
        for (name, value) in rendered.iter() {
            headers.insert(name.clone(), value.clone());
        }
        if let Some(nid) = &p.national_id
            && route.is_some_and(|r| r.forward_national_id)
            && let Ok(value) = http::HeaderValue::from_str(nid)
        {
            headers.insert(http::HeaderName::from_static("x-vakt-national-id"), value);
        }
    }

    /// The principal's headers that do not depend on the route (the raw national id does).
    fn render(&self, p: &Principal) -> Vec<(http::HeaderName, http::HeaderValue)> {
        let mut out = Vec::with_capacity(9);
        let mut set = |name: &'static str, value: &str| {
            if let Ok(v) = http::HeaderValue::from_str(value) {
                out.push((http::HeaderName::from_static(name), v));
            }
        };
        set("x-vakt-issuer", &p.issuer);
        set("x-vakt-loa", p.loa.as_str());
        if let Some(s) = &p.subject {
            set("x-vakt-subject", s);
        }
        if let Some(c) = &p.client_id {
            set("x-vakt-client-id", c);
        }
        if !p.scopes.is_empty() {
            set("x-vakt-scopes", &p.scopes.join(" "));
        }
        if !p.amr.is_empty() {
            set("x-vakt-amr", &p.amr.join(" "));
        }
        if let Some(t) = p.auth_time {
            set("x-vakt-auth-time", &t.to_string());
        }
        if let Some(org) = p.org_numbers.first() {
            set("x-vakt-org-number", org);
        }
        if let Some(pseudonym) = &p.pseudonyms(&self.pseudonyms).national_id {
            set("x-vakt-national-id-pseudonym", pseudonym);
        }
        out
    }
}

/// Deny by default: evaluate the request against the current policy.
pub struct PolicyStage {
    store: Arc<PolicyStore>,
    identity_headers: IdentityHeaders,
}

impl PolicyStage {
    pub fn new(store: Arc<PolicyStore>, pseudonyms: Arc<Pseudonymiser>) -> Self {
        Self {
            store,
            identity_headers: IdentityHeaders { pseudonyms },
        }
    }
}

impl Stage for PolicyStage {
    async fn handle(&self, mut req: Req, next: Next) -> Resp {
        let policy = self.store.current();
        // Taken, not copied: nothing after this stage reads it from the request (the URI holds
        // the same path); it goes back out in the response for the audit event.
        let Some(path) = req.extensions_mut().remove::<CanonicalPath>() else {
            // Hygiene always sets it inbound; without it nothing can be decided: fail closed.
            return DenyReason::Policy(super::Reason::NoRoute)
                .into_response(req.extensions().get::<RequestIds>());
        };
        let host = request_host(&req);
        let principal = req.extensions().get::<Arc<Principal>>().cloned();
        let decision = {
            let peer = req.extensions().get::<PeerIdentity>().map(|p| &p.spiffe_id);
            let ctx = RequestCtx {
                method: req.method(),
                host: host.as_deref(),
                path: &path,
                peer,
                principal: principal.as_deref(),
                now: unix_now(),
            };
            evaluate(&policy, &ctx)
        };
        let record = DecisionRecord::from_decision(&policy, &decision);
        if record.outcome == Outcome::WouldDeny {
            tracing::info!(route = ?record.route_id, reason = record.reason, "dry-run: request would have been denied");
        }
        if !decision.allowed {
            let deny = match (decision.step_up, principal.as_deref()) {
                (Some(step_up), Some(p)) => DenyReason::StepUp {
                    reason: decision.reason,
                    acr_values: step_up.min_loa.map(|l| p.profile.acr_value(l)),
                    max_age: step_up.max_age_secs,
                },
                _ => DenyReason::Policy(decision.reason),
            };
            let mut response = deny.into_response(req.extensions().get::<RequestIds>());
            response.extensions_mut().insert(record);
            response.extensions_mut().insert(path);
            if let Some(p) = principal {
                response.extensions_mut().insert(p);
            }
            return response;
        }
        let route = decision.route.map(|r| &policy.routes[r]);
        self.identity_headers
            .apply(&mut req, principal.as_deref(), route);
        if let Some(route) = decision.route {
            req.extensions_mut().insert(MatchedRoute {
                policy: policy.clone(),
                route,
            });
        }
        let mut response = next.run(req).await;
        response.extensions_mut().get_or_insert_with(|| record);
        response.extensions_mut().insert(path);
        if let Some(p) = principal {
            response.extensions_mut().insert(p);
        }
        response
    }
}

/// Per-route, per-peer rate limits of the matched route (429 with `Retry-After` when over).
pub struct RateLimitStage;

impl Stage for RateLimitStage {
    async fn handle(&self, req: Req, next: Next) -> Resp {
        let Some(matched) = req.extensions().get::<MatchedRoute>().cloned() else {
            return next.run(req).await;
        };
        let route = &matched.policy.routes[matched.route];
        if route.rate_limit.is_none() {
            return next.run(req).await;
        }
        // Only the key this route counts by is built (one allocation, not two).
        let key = {
            let subject = || {
                req.extensions()
                    .get::<Arc<Principal>>()
                    .and_then(|p| p.subject.as_ref().map(|s| format!("sub:{}|{s}", p.issuer)))
            };
            let peer = || {
                req.extensions()
                    .get::<PeerIdentity>()
                    .map(|p| format!("peer:{}", p.spiffe_id))
            };
            match route.rate_limit.as_ref().map(|l| l.key) {
                Some(crate::ratelimit::LimitKey::Subject) => subject().or_else(peer),
                _ => peer(),
            }
        };
        let Some(key) = key else {
            return next.run(req).await;
        };
        let key: Arc<str> = key.into();
        let Err(wait) = matched.policy.limits.check(matched.route, &key) else {
            return next.run(req).await;
        };
        metrics::counter!(m::RATE_LIMITED, "route" => route.id.to_string()).increment(1);
        let outcome = if route.mode == Mode::DryRun {
            Outcome::WouldDeny
        } else {
            Outcome::Deny
        };
        let record =
            DecisionRecord::for_route(Some(route), None, route.mode, outcome, "rate_limited");
        if route.mode == Mode::DryRun {
            let mut response = next.run(req).await;
            response.extensions_mut().insert(record);
            return response;
        }
        let mut response = DenyReason::RateLimited {
            retry_after_secs: retry_after_secs(wait),
        }
        .into_response(req.extensions().get::<RequestIds>());
        response.extensions_mut().insert(record);
        response
    }
}

//! The policy and rate-limit stages of the inbound stack.

use std::sync::Arc;

use super::compile::Route;
use super::decide::{DecisionRecord, MatchedRoute, Outcome};
use super::decide::{RequestCtx, evaluate};
use super::file::{Mode, TokenRequirement};
use super::reload::PolicyStore;
use super::router::Lookup;
use crate::authn::Principal;
use crate::authn::headers::IdentityHeaders;
use crate::authn::stage::TokenGate;
use crate::error::DenyReason;
use crate::exchange::{self, Target};
use crate::hygiene::RequestIds;
use crate::hygiene::host::{CanonicalHost, HostError};
use crate::hygiene::path::CanonicalPath;
use crate::identity::PeerIdentity;
use crate::metrics as m;
use crate::pseudonym::Pseudonymiser;
use crate::ratelimit::retry_after_secs;
use crate::stack::{Next, Req, Resp, Stage};

/// The `Allow` header of a 405: the methods of the route that covers the path.
fn allow_header(methods: &[http::Method]) -> Option<http::HeaderValue> {
    if methods.is_empty() {
        return None;
    }
    let list: Vec<&str> = methods.iter().map(http::Method::as_str).collect();
    http::HeaderValue::from_str(&list.join(", ")).ok()
}

/// The protocols an HTTP/1.1 upgrade request names (`Upgrade`), lower case, comma-separated.
fn upgrade_protocols(req: &Req) -> Option<String> {
    if !crate::hygiene::is_upgrade_request(req) {
        return None;
    }
    let names: Vec<String> = req
        .headers()
        .get_all(http::header::UPGRADE)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase())
        .collect();
    Some(names.join(","))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Sets the principal's identity headers on a request the policy let through. The national id
/// leaves only as a pseudonym unless the route says `forward_national_id: true`; the
/// `Authorization` header only with `forward_token: true`.
fn apply_identity_headers(
    identity_headers: &IdentityHeaders,
    req: &mut Req,
    principal: Option<&Principal>,
    route: Option<&Route>,
) {
    if let Some(original) = req
        .extensions_mut()
        .remove::<crate::authn::stage::OriginalAuthorization>()
        && route.is_some_and(|r| r.forward_token)
    {
        req.headers_mut()
            .insert(http::header::AUTHORIZATION, original.0);
        if let Some(proof) = req
            .extensions_mut()
            .remove::<crate::authn::stage::OriginalDpopProof>()
        {
            req.headers_mut().insert(crate::authn::stage::DPOP, proof.0);
        }
    }
    let Some(p) = principal else {
        return;
    };
    if route.is_some_and(|r| r.token == TokenRequirement::None) {
        return;
    }
    let rendered = identity_headers.values(p);
    let headers = req.headers_mut();
    headers.reserve(rendered.len() + 1);
    for (name, value) in rendered.headers() {
        headers.insert(name, value);
    }
    if let Some(nid) = &p.national_id
        && route.is_some_and(|r| r.forward_national_id)
        && let Ok(value) = http::HeaderValue::from_str(nid)
    {
        headers.insert(http::HeaderName::from_static("x-vakt-national-id"), value);
    }
}

impl TokenGate for PolicyStore {
    /// False only for a request to an enforced route whose rules admit none of its peer: it is
    /// denied for that whatever its token. Anything else (no route yet known, dry-run, public)
    /// has its token checked as usual.
    fn token_matters(&self, req: &Req) -> bool {
        let (Some(path), Some(host)) = (
            req.extensions().get::<CanonicalPath>(),
            req.extensions().get::<CanonicalHost>(),
        ) else {
            return true;
        };
        let policy = self.current();
        let ctx = RequestCtx {
            method: req.method(),
            host: Some(host.name()),
            path,
            peer: req.extensions().get::<PeerIdentity>().map(|p| &p.spiffe_id),
            principal: None,
            now: 0,
            upgrade: None,
        };
        match policy.lookup(&ctx) {
            Lookup::Found { route, .. } => {
                let route = &policy.routes[route];
                route.mode == Mode::DryRun || route.peer_refusal(&ctx).is_none()
            }
            _ => true,
        }
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
        // the same path); it goes into the request's exchange for the audit event.
        let Some(path) = req.extensions_mut().remove::<CanonicalPath>() else {
            // Hygiene always sets it inbound; without it nothing can be decided: fail closed.
            return DenyReason::Policy(super::decide::Reason::NoRoute)
                .into_response(req.extensions().get::<RequestIds>());
        };
        // Hygiene sets it on every request; without it no host-specific route can be chosen.
        let Some(host) = req.extensions_mut().remove::<CanonicalHost>() else {
            return DenyReason::InvalidHost(HostError::Missing)
                .into_response(req.extensions().get::<RequestIds>());
        };
        let upgrade = upgrade_protocols(&req);
        let principal = req.extensions().get::<Arc<Principal>>().cloned();
        let decision = {
            let peer = req.extensions().get::<PeerIdentity>().map(|p| &p.spiffe_id);
            let ctx = RequestCtx {
                method: req.method(),
                host: Some(host.name()),
                path: &path,
                peer,
                principal: principal.as_deref(),
                now: unix_now(),
                upgrade: upgrade.as_deref(),
            };
            evaluate(&policy, &ctx)
        };
        let record = DecisionRecord::from_decision(&policy, &decision);
        if record.outcome == Outcome::WouldDeny {
            tracing::info!(
                route = record.route_id.as_deref().unwrap_or("none"),
                reason = record.reason,
                "dry-run: request would have been denied"
            );
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
            if let Some(allow) = allow_header(&decision.allowed_methods) {
                response.headers_mut().insert(http::header::ALLOW, allow);
            }
            learn(&req, record, path, principal);
            return response;
        }
        let route = decision.route.map(|r| &policy.routes[r]);
        apply_identity_headers(
            &self.identity_headers,
            &mut req,
            principal.as_deref(),
            route,
        );
        if let Some(route) = decision.route {
            req.extensions_mut().insert(MatchedRoute {
                policy: policy.clone(),
                route,
            });
        }
        // Known before the app is called, so a request the client abandons while the app works
        // is still recorded as what it was.
        learn(&req, record, path, principal);
        next.run(req).await
    }
}

/// Write down the decision, the path it was made on and the principal in the request's
/// exchange, for the audit event and the decision metrics.
fn learn(
    req: &Req,
    record: DecisionRecord,
    path: CanonicalPath,
    principal: Option<Arc<Principal>>,
) {
    if let Some(exchange) = exchange::of(req) {
        exchange.learn(|k| {
            k.record = Some(record);
            k.target = Some(Target::Canonical(path));
            k.principal = principal;
        });
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
        // The keys are made once per cached principal and per connection, not per request.
        let key = {
            let subject = || {
                req.extensions()
                    .get::<Arc<Principal>>()
                    .and_then(|p| p.rate_limit_key().cloned())
            };
            let peer = || {
                req.extensions()
                    .get::<PeerIdentity>()
                    .map(|p| p.rate_limit_key().clone())
            };
            match route.rate_limit.as_ref().map(|l| l.key) {
                Some(crate::ratelimit::LimitKey::Subject) => subject().or_else(peer),
                _ => peer(),
            }
        };
        let Some(key) = key else {
            return next.run(req).await;
        };
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
        // Replaces the policy's record: this is the decision that held.
        if let Some(exchange) = exchange::of(&req) {
            exchange.learn(|k| k.record = Some(record));
        }
        if route.mode == Mode::DryRun {
            return next.run(req).await;
        }
        DenyReason::RateLimited {
            retry_after_secs: retry_after_secs(wait),
        }
        .into_response(req.extensions().get::<RequestIds>())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::{Value, json};

    use super::*;
    use crate::authn::Profile;
    use crate::authn::rendered::RenderedIdentity;

    fn helseid_principal(claims: Value) -> Principal {
        let claims: BTreeMap<String, Value> = serde_json::from_value(claims).unwrap();
        Profile::Helseid.principal("https://helseid.example".into(), claims, 0)
    }

    fn identity_headers() -> IdentityHeaders {
        IdentityHeaders {
            pseudonyms: Arc::new(Pseudonymiser::from_secret("k1", &[1; 32])),
        }
    }

    fn rendered(values: &RenderedIdentity) -> Vec<(String, String)> {
        values
            .headers()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect()
    }

    #[test]
    fn identity_headers_carry_the_principal_with_lists_joined_by_spaces() {
        let p = helseid_principal(json!({
            "sub": "s-1",
            "client_id": "journal-web",
            "scope": ["journal.read", "journal.write"],
            "amr": ["pwd", "otp"],
            "auth_time": 1_700_000_000,
            "helseid://claims/identity/security_level": "4",
            "helseid://claims/identity/pid": "01010112345",
            "helseid://claims/client/claims/orgnr_parent": "974703471",
        }));
        let ih = identity_headers();
        let values = ih.values(&p);
        let pseudonym = ih
            .pseudonyms
            .pseudonym(crate::pseudonym::KIND_NATIONAL_ID, "01010112345");
        let want: Vec<(String, String)> = [
            ("x-vakt-issuer", "https://helseid.example"),
            ("x-vakt-loa", "high"),
            ("x-vakt-subject", "s-1"),
            ("x-vakt-client-id", "journal-web"),
            ("x-vakt-scopes", "journal.read journal.write"),
            ("x-vakt-amr", "pwd otp"),
            ("x-vakt-auth-time", "1700000000"),
            ("x-vakt-org-number", "974703471"),
            ("x-vakt-national-id-pseudonym", &pseudonym),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        assert_eq!(rendered(&values), want);
        assert!(
            !rendered(&values)
                .iter()
                .any(|(_, v)| v.contains("01010112345"))
        );
        // Rendered once: the next request of the principal gets the same values.
        assert!(Arc::ptr_eq(&values, &ih.values(&p)));
    }

    #[test]
    fn an_identity_value_with_a_control_character_is_left_out_and_the_rest_kept() {
        let p = helseid_principal(json!({
            "sub": "s-1\r\nx-vakt-loa: high",
            "client_id": "journal-web",
            "helseid://claims/identity/security_level": "2",
        }));
        let values = identity_headers().values(&p);
        assert_eq!(
            rendered(&values),
            [
                ("x-vakt-issuer", "https://helseid.example"),
                ("x-vakt-loa", "low"),
                ("x-vakt-client-id", "journal-web"),
            ]
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect::<Vec<_>>()
        );
    }
}

//! The policy and rate-limit stages of the inbound stack.

use std::sync::Arc;

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderName, HeaderValue};

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
        let rendered = self.values(p);
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

    /// The principal's headers that do not depend on the route (the raw national id does),
    /// rendered on the principal's first request and kept with it in the verified-token cache.
    pub fn values(&self, p: &Principal) -> Arc<RenderedIdentity> {
        let key_id = self.pseudonyms.key_id();
        match p.identity_headers.get() {
            Some((made_with, values)) if made_with == key_id => values.clone(),
            _ => {
                let values = Arc::new(self.render(p));
                let _ = p.identity_headers.set((key_id.to_owned(), values.clone()));
                values
            }
        }
    }

    fn render(&self, p: &Principal) -> RenderedIdentity {
        let mut text = Vec::with_capacity(256);
        let mut spans = Vec::with_capacity(IDENTITY_HEADER_NAMES.len());
        let mut put = |name: IdentityHeader, parts: &mut dyn Iterator<Item = &str>| {
            let start = text.len();
            for (i, part) in parts.enumerate() {
                if i > 0 {
                    text.push(b' ');
                }
                text.extend_from_slice(part.as_bytes());
            }
            // A value with a control character is left out, as `HeaderValue::from_str` would.
            if HeaderValue::from_bytes(&text[start..]).is_ok() {
                spans.push((name as u8, start as u32, text.len() as u32));
            } else {
                text.truncate(start);
            }
        };
        put(IdentityHeader::Issuer, &mut std::iter::once(&*p.issuer));
        put(IdentityHeader::Loa, &mut std::iter::once(p.loa.as_str()));
        if let Some(s) = &p.subject {
            put(IdentityHeader::Subject, &mut std::iter::once(s.as_str()));
        }
        if let Some(c) = &p.client_id {
            put(IdentityHeader::ClientId, &mut std::iter::once(&**c));
        }
        if !p.scopes.is_empty() {
            put(
                IdentityHeader::Scopes,
                &mut p.scopes.iter().map(String::as_str),
            );
        }
        if !p.amr.is_empty() {
            put(IdentityHeader::Amr, &mut p.amr.iter().map(String::as_str));
        }
        if let Some(t) = p.auth_time {
            let mut digits = itoa::Buffer::new();
            put(
                IdentityHeader::AuthTime,
                &mut std::iter::once(digits.format(t)),
            );
        }
        if let Some(org) = p.org_numbers.first() {
            put(
                IdentityHeader::OrgNumber,
                &mut std::iter::once(org.as_str()),
            );
        }
        if let Some(pseudonym) = &p.pseudonyms(&self.pseudonyms).national_id {
            put(
                IdentityHeader::NationalIdPseudonym,
                &mut std::iter::once(&**pseudonym),
            );
        }
        RenderedIdentity {
            text: Bytes::copy_from_slice(&text),
            spans: spans.into_boxed_slice(),
        }
    }
}

/// The identity headers vakt sets for the app, in [`IDENTITY_HEADER_NAMES`]' order.
#[derive(Clone, Copy)]
enum IdentityHeader {
    Issuer,
    Loa,
    Subject,
    ClientId,
    Scopes,
    Amr,
    AuthTime,
    OrgNumber,
    NationalIdPseudonym,
}

static IDENTITY_HEADER_NAMES: [HeaderName; 9] = [
    HeaderName::from_static("x-vakt-issuer"),
    HeaderName::from_static("x-vakt-loa"),
    HeaderName::from_static("x-vakt-subject"),
    HeaderName::from_static("x-vakt-client-id"),
    HeaderName::from_static("x-vakt-scopes"),
    HeaderName::from_static("x-vakt-amr"),
    HeaderName::from_static("x-vakt-auth-time"),
    HeaderName::from_static("x-vakt-org-number"),
    HeaderName::from_static("x-vakt-national-id-pseudonym"),
];

/// A principal's identity headers, rendered once and cached with it: every value's text in one
/// buffer and, per header, the name's index and the value's span. Up to `verified_token_cache`
/// principals hold one, so it is kept small: ~300 bytes where a `[(HeaderName, HeaderValue)]`
/// took ~800 (`cargo bench --bench memory`).
#[derive(Debug)]
pub struct RenderedIdentity {
    text: Bytes,
    spans: Box<[(u8, u32, u32)]>,
}

impl RenderedIdentity {
    /// The headers; a value is a slice of the shared text (a reference count, not a copy).
    pub fn headers(&self) -> impl Iterator<Item = (HeaderName, HeaderValue)> + '_ {
        self.spans.iter().filter_map(|&(name, start, end)| {
            // Checked when rendered; checked again rather than trusted.
            let value =
                HeaderValue::from_maybe_shared(self.text.slice(start as usize..end as usize))
                    .ok()?;
            Some((IDENTITY_HEADER_NAMES[name as usize].clone(), value))
        })
    }

    /// How many headers.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::{Value, json};

    use super::*;
    use crate::authn::Profile;

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
            .pseudonym(crate::audit::KIND_NATIONAL_ID, "01010112345");
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

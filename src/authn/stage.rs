//! The authentication stage: the bearer token, if any, is verified before the policy runs. A
//! presented token that fails verification is refused (401) whatever the route says; a request
//! without a token goes on, and the policy decides whether the route needs one. Where the
//! policy refuses the caller's peer whatever the token ([`TokenGate`]), the token is not looked
//! at: the peer is refused as such.

use std::sync::Arc;

use http::HeaderValue;

use super::TokenError;
use super::dpop::{self, ProofContext};
use super::verify::{Scheme, Verifier, extract_token};
use crate::error::DenyReason;
use crate::exchange;
use crate::hygiene::RequestIds;
use crate::metrics as m;
use crate::stack::{Next, Req, Resp, Stage};

/// The caller's `Authorization` header, taken off the request; the policy stage puts it back
/// only for routes with `forward_token: true`.
#[derive(Clone)]
pub struct OriginalAuthorization(pub HeaderValue);

/// Whether a request's token is checked at all. The policy answers no only where the request
/// is refused for its peer whatever the token says (an enforced route that admits no such
/// peer): the caller is then denied as a peer, and a forged token costs no signature check.
pub trait TokenGate: Send + Sync {
    fn token_matters(&self, req: &Req) -> bool;
}

/// Verifies bearer tokens; without OIDC issuers configured it passes requests through untouched
/// (the `Authorization` header is then the app's business).
pub struct Authenticate {
    verifier: Option<Arc<Verifier>>,
    gate: Option<Arc<dyn TokenGate>>,
}

impl Authenticate {
    pub fn new(verifier: Option<Arc<Verifier>>, gate: Option<Arc<dyn TokenGate>>) -> Self {
        Self { verifier, gate }
    }
}

impl Stage for Authenticate {
    async fn handle(&self, req: Req, next: Next) -> Resp {
        // The gate is asked only when there is a token to skip: a request without one pays
        // no second route lookup.
        let presented = req.headers().contains_key(http::header::AUTHORIZATION)
            || req.headers().contains_key(DPOP);
        match &self.verifier {
            Some(_) if presented && self.gate.as_ref().is_some_and(|g| !g.token_matters(&req)) => {
                next.run(req).await
            }
            Some(verifier) => authenticate(verifier, req, next).await,
            None => next.run(req).await,
        }
    }
}

/// The `DPoP` request header (RFC 9449 §4.1).
pub const DPOP: http::HeaderName = http::HeaderName::from_static("dpop");
/// The `DPoP-Nonce` response header (RFC 9449 §8).
pub const DPOP_NONCE: http::HeaderName = http::HeaderName::from_static("dpop-nonce");

/// The caller's `DPoP` proof, taken off the request with its token and put back with it.
#[derive(Clone)]
pub struct OriginalDpopProof(pub HeaderValue);

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn authenticate(verifier: &Verifier, mut req: Req, next: Next) -> Resp {
    let refuse = |req: &mut Req, issuer: &str, error: TokenError, dpop: bool| {
        metrics::counter!(m::AUTHN_FAILURES, "issuer" => issuer.to_owned(), "reason" => error.code())
                .increment(1);
        tracing::info!(issuer, reason = error.code(), "access token refused");
        // The refused request's path stays on record (never the token).
        exchange::keep_target(req);
        let mut response =
            DenyReason::Token(error).into_response(req.extensions().get::<RequestIds>());
        // A DPoP request, or one that should have been, is answered in DPoP's terms.
        if response.status() == http::StatusCode::UNAUTHORIZED
            && (dpop || error.wants_dpop_challenge())
        {
            let (challenge, with_nonce) = dpop::challenge(error, verifier.proof_algs());
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                response
                    .headers_mut()
                    .insert(http::header::WWW_AUTHENTICATE, value);
            }
            if with_nonce
                && let Ok(value) =
                    HeaderValue::from_str(&verifier.proofs().current_nonce(unix_now()))
            {
                response.headers_mut().insert(DPOP_NONCE, value);
            }
        }
        response
    };
    let presented = match extract_token(req.headers(), req.uri(), verifier.max_token_bytes) {
        Ok(presented) => presented,
        Err(error) => return refuse(&mut req, "none", error, false),
    };
    let mut proofs = req.headers().get_all(DPOP).iter();
    let (proof, more_proofs) = (proofs.next(), proofs.next().is_some());
    let Some((scheme, token)) = presented else {
        if proof.is_some() {
            return refuse(&mut req, "none", TokenError::DpopProofWithoutToken, true);
        }
        return next.run(req).await;
    };
    let dpop = scheme == Scheme::Dpop;
    let shape = match (scheme, proof, more_proofs) {
        (Scheme::Bearer, Some(_), _) => Err(TokenError::DpopProofWithoutToken),
        (Scheme::Dpop, None, _) => Err(TokenError::DpopProofMissing),
        (Scheme::Dpop, Some(_), true) => Err(TokenError::DpopMultipleProofs),
        _ => Ok(()),
    };
    if let Err(error) = shape {
        return refuse(&mut req, "none", error, true);
    }
    // Verified where it lies (no copy of the token).
    let (issuer, principal) = match verifier.verify(token).await {
        Ok(verified) => verified,
        Err((issuer, error)) => {
            let issuer = issuer
                .map(|i| verifier.issuers()[i].config.issuer.clone())
                .unwrap_or_else(|| "unknown".to_owned());
            return refuse(&mut req, &issuer, error, dpop);
        }
    };
    let rules = verifier.proof_rules(issuer);
    let checked = match (scheme, principal.dpop_jkt.as_deref(), proof) {
        (Scheme::Bearer, Some(_), _) => Err(TokenError::BoundToken),
        (Scheme::Bearer, None, _) if rules.required => Err(TokenError::DpopRequired),
        (Scheme::Bearer, None, _) => Ok(None),
        (Scheme::Dpop, None, _) => Err(TokenError::DpopTokenNotBound),
        (Scheme::Dpop, Some(jkt), Some(proof)) => proof
            .to_str()
            .ok()
            .filter(|p| p.len() <= verifier.max_token_bytes)
            .ok_or(TokenError::DpopMalformed)
            .and_then(|proof| {
                let request = ProofContext {
                    method: req.method(),
                    path: req.uri().path(),
                    token,
                    token_jkt: jkt,
                    now: unix_now(),
                };
                verifier.proofs().check(proof, rules, &request)
            })
            .map(|accepted| accepted.next_nonce),
        (Scheme::Dpop, Some(_), None) => Err(TokenError::DpopProofMissing),
    };
    let next_nonce = match checked {
        Ok(next_nonce) => next_nonce,
        Err(error) => {
            let issuer = verifier.issuers()[issuer].config.issuer.clone();
            return refuse(&mut req, &issuer, error, dpop);
        }
    };
    if let Some(original) = req.headers_mut().remove(http::header::AUTHORIZATION) {
        req.extensions_mut().insert(OriginalAuthorization(original));
    }
    if let Some(proof) = req.headers_mut().remove(DPOP) {
        req.extensions_mut().insert(OriginalDpopProof(proof));
    }
    req.extensions_mut().insert(principal);
    let mut response = next.run(req).await;
    // The proof used the previous nonce: here is the current one (RFC 9449 §8.2).
    if let Some(value) = next_nonce.and_then(|n| HeaderValue::from_str(&n).ok()) {
        response.headers_mut().insert(DPOP_NONCE, value);
    }
    response
}

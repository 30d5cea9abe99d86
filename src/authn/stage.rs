//! The authentication stage: the bearer token, if any, is verified before the policy runs. A
//! presented token that fails verification is refused (401) whatever the route says; a request
//! without a token goes on, and the policy decides whether the route needs one.

use std::sync::Arc;

use http::HeaderValue;

use super::verify::{Verifier, extract_bearer};
use crate::error::DenyReason;
use crate::exchange;
use crate::hygiene::RequestIds;
use crate::metrics as m;
use crate::stack::{Next, Req, Resp, Stage};

/// The caller's `Authorization` header, taken off the request; the policy stage puts it back
/// only for routes with `forward_token: true`.
#[derive(Clone)]
pub struct OriginalAuthorization(pub HeaderValue);

/// Verifies bearer tokens; without OIDC issuers configured it passes requests through untouched
/// (the `Authorization` header is then the app's business).
pub struct Authenticate {
    verifier: Option<Arc<Verifier>>,
}

impl Authenticate {
    pub fn new(verifier: Option<Arc<Verifier>>) -> Self {
        Self { verifier }
    }
}

impl Stage for Authenticate {
    async fn handle(&self, req: Req, next: Next) -> Resp {
        match &self.verifier {
            Some(verifier) => authenticate(verifier, req, next).await,
            None => next.run(req).await,
        }
    }
}

async fn authenticate(verifier: &Verifier, mut req: Req, next: Next) -> Resp {
    let refuse = |req: &mut Req, issuer: &str, error: super::TokenError| {
        metrics::counter!(m::AUTHN_FAILURES, "issuer" => issuer.to_owned(), "reason" => error.code())
                .increment(1);
        tracing::info!(issuer, reason = error.code(), "access token refused");
        // The refused request's path stays on record (never the token).
        exchange::keep_target(req);
        DenyReason::Token(error).into_response(req.extensions().get::<RequestIds>())
    };
    let verified = match extract_bearer(req.headers(), req.uri(), verifier.max_token_bytes) {
        // Verified where it lies (no copy of the token).
        Ok(Some(token)) => verifier.verify(token).await,
        Ok(None) => return next.run(req).await,
        Err(error) => return refuse(&mut req, "none", error),
    };
    match verified {
        Ok(principal) => {
            if let Some(original) = req.headers_mut().remove(http::header::AUTHORIZATION) {
                req.extensions_mut().insert(OriginalAuthorization(original));
            }
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err((issuer, error)) => {
            let issuer = issuer
                .map(|i| verifier.issuers()[i].config.issuer.clone())
                .unwrap_or_else(|| "unknown".to_owned());
            refuse(&mut req, &issuer, error)
        }
    }
}

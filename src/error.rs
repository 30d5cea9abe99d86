//! Every way vakt refuses a request, in one place: reason code, HTTP status, message.
//!
//! Layers never return errors: a refusal is a response built by [`DenyReason::into_response`],
//! which carries the reason in the response extensions so the outer layers (metrics, later
//! audit) record exactly why. Messages never hold tokens, keys or personal data; inbound
//! messages do not reveal policy internals.

use std::borrow::Cow;

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};

use crate::audit::fields::Outcome;
use crate::authn::TokenError;
use crate::authn::dpop::SUPPORTED_PROOF_ALGS;
use crate::body::{ProxyBody, full};
use crate::hygiene::host::HostError;
use crate::hygiene::path::PathError;
use crate::hygiene::{FramingError, RequestIds};
use crate::identity::SpiffeId;
use crate::policy::Reason;

/// Why vakt itself answered instead of the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// The request's framing is ambiguous (request smuggling risk).
    BadFraming(FramingError),
    /// A header name vakt refuses (`hygiene.underscore_headers: reject` and a name with `_`):
    /// the app might read it as one of the headers vakt sets.
    InvalidHeaderName,
    /// The request path is ambiguous or malformed (path-confusion risk).
    InvalidPath(PathError),
    /// The request's host is missing, repeated, malformed or names two different hosts.
    InvalidHost(HostError),
    /// The request arrived without a verified peer identity (should not happen behind mTLS).
    NoPeerIdentity,
    /// The policy denied the request (no route, method, peer, ...).
    Policy(Reason),
    /// A presented access token was refused (401 `invalid_token`; 503 when keys are unavailable).
    Token(TokenError),
    /// The token is valid but its assurance or login age is not enough: RFC 9470 step-up.
    StepUp {
        reason: Reason,
        acr_values: Option<&'static str>,
        max_age: Option<u64>,
    },
    /// The audit trail cannot take the event and `on_audit_failure: deny`: no access without a
    /// record.
    AuditUnavailable,
    /// Over the route's rate limit for this caller.
    RateLimited { retry_after_secs: u64 },
    /// Outbound: the request names no destination (no absolute URI, no Host).
    MissingDestination,
    /// Outbound: the destination is not in the egress table.
    UnknownDestination { authority: String },
    /// Outbound: CONNECT tunnels are not offered; vakt originates mTLS itself.
    ConnectNotSupported,
    /// Connecting to the app / the remote sidecar took too long.
    UpstreamConnectTimeout,
    /// The app / the remote sidecar could not be reached or broke the connection.
    UpstreamUnavailable,
    /// Outbound: the TLS handshake with the remote sidecar failed.
    UpstreamTlsFailed { reason: &'static str },
    /// Outbound: the remote sidecar is not the identity the egress table names.
    UpstreamIdentityMismatch {
        expected: SpiffeId,
        presented: Option<SpiffeId>,
    },
    /// The app / the remote sidecar did not answer in time.
    UpstreamTimeout,
    /// The client stopped sending the request body for longer than
    /// `limits.request_body_timeout`; the forwarded request was aborted.
    RequestBodyTimeout,
    /// The client sent the request body slower than `limits.request_body_min_rate`; the
    /// forwarded request was aborted.
    RequestBodyTooSlow,
}

impl DenyReason {
    /// Stable reason code: metric label, audit reason, JSON `error` field. A bounded set.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadFraming(_) => "bad_framing",
            Self::InvalidPath(_) => "invalid_path",
            Self::InvalidHost(_) => "invalid_host",
            Self::InvalidHeaderName => "invalid_header_name",
            Self::NoPeerIdentity => "no_peer_identity",
            Self::Policy(reason) | Self::StepUp { reason, .. } => reason.code(),
            Self::Token(e) => e.code(),
            Self::RateLimited { .. } => "rate_limited",
            Self::AuditUnavailable => "audit_unavailable",
            Self::MissingDestination => "missing_destination",
            Self::UnknownDestination { .. } => "unknown_destination",
            Self::ConnectNotSupported => "connect_not_supported",
            Self::UpstreamConnectTimeout => "upstream_connect_timeout",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::UpstreamTlsFailed { .. } => "upstream_tls_failed",
            Self::UpstreamIdentityMismatch { .. } => "upstream_identity_mismatch",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::RequestBodyTimeout => "request_body_timeout",
            Self::RequestBodyTooSlow => "request_body_too_slow",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadFraming(_)
            | Self::InvalidPath(_)
            | Self::InvalidHost(_)
            | Self::InvalidHeaderName
            | Self::MissingDestination => StatusCode::BAD_REQUEST,
            Self::Token(
                TokenError::KeysUnavailable
                | TokenError::UnknownKeyPending
                | TokenError::DpopReplayCacheFull,
            ) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Token(_)
            | Self::StepUp { .. }
            | Self::Policy(Reason::TokenRequired | Reason::DpopRequired) => {
                StatusCode::UNAUTHORIZED
            }
            Self::Policy(Reason::MethodNotAllowed) => StatusCode::METHOD_NOT_ALLOWED,
            Self::NoPeerIdentity | Self::Policy(_) | Self::UnknownDestination { .. } => {
                StatusCode::FORBIDDEN
            }
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::AuditUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::ConnectNotSupported => StatusCode::METHOD_NOT_ALLOWED,
            Self::UpstreamUnavailable
            | Self::UpstreamTlsFailed { .. }
            | Self::UpstreamIdentityMismatch { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamConnectTimeout | Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::RequestBodyTimeout | Self::RequestBodyTooSlow => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// How an exchange vakt answered with this refusal ended, for the audit event: the app or
    /// the remote sidecar failing is told apart from vakt refusing.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::UpstreamUnavailable
            | Self::UpstreamTlsFailed { .. }
            | Self::UpstreamIdentityMismatch { .. } => Outcome::UpstreamError,
            Self::UpstreamConnectTimeout | Self::UpstreamTimeout => Outcome::Timeout,
            Self::BadFraming(_)
            | Self::InvalidHeaderName
            | Self::InvalidPath(_)
            | Self::InvalidHost(_)
            | Self::NoPeerIdentity
            | Self::Policy(_)
            | Self::Token(_)
            | Self::StepUp { .. }
            | Self::AuditUnavailable
            | Self::RateLimited { .. }
            | Self::MissingDestination
            | Self::UnknownDestination { .. }
            | Self::ConnectNotSupported
            | Self::RequestBodyTimeout
            | Self::RequestBodyTooSlow => Outcome::Refused,
        }
    }

    /// A plain-words message for the caller.
    pub fn message(&self) -> Cow<'static, str> {
        match self {
            Self::BadFraming(e) => format!("ambiguous request framing: {e}").into(),
            Self::InvalidPath(e) => format!("invalid request path: {e}").into(),
            Self::InvalidHost(e) => format!("invalid host: {e}").into(),
            Self::InvalidHeaderName => {
                "a request header name contains an underscore; use '-' instead".into()
            }
            Self::NoPeerIdentity => "no verified peer identity".into(),
            // Deliberately vague: the caller learns the reason code, not the policy.
            Self::Policy(Reason::TokenRequired) => "an access token is required".into(),
            Self::Policy(Reason::DpopRequired) => {
                "this route needs a DPoP-bound access token with its proof".into()
            }
            Self::Policy(Reason::MethodNotAllowed) => {
                "the route does not accept this method (see Allow)".into()
            }
            Self::Policy(_) => "access denied by policy".into(),
            Self::Token(TokenError::KeysUnavailable) => {
                "token verification is temporarily unavailable".into()
            }
            Self::Token(TokenError::UnknownKeyPending) => {
                "the token's signing key is not known yet; retry shortly (see Retry-After)".into()
            }
            Self::Token(TokenError::DpopReplayCacheFull) => {
                "DPoP proofs cannot be checked for replay right now; retry shortly".into()
            }
            Self::Token(TokenError::DpopNonceRequired | TokenError::DpopNonceInvalid) => {
                "the DPoP proof needs the nonce in the DPoP-Nonce header".into()
            }

            // No detail that helps an attacker: the code says which check failed.
            Self::Token(_) => "the access token was refused".into(),
            Self::StepUp { .. } => "a stronger or more recent authentication is required".into(),
            Self::RateLimited { retry_after_secs } => {
                format!("rate limit exceeded; retry after {retry_after_secs} s").into()
            }
            Self::AuditUnavailable => "access cannot be recorded right now".into(),
            Self::MissingDestination => {
                "no destination: send an absolute URI (HTTP proxy form) or a Host header".into()
            }
            // The authority comes from the app's request: a national id in it is not echoed.
            Self::UnknownDestination { authority } => format!(
                "destination {} is not in this sidecar's egress table (outbound.upstreams)",
                crate::nid::mask(authority)
            )
            .into(),
            Self::ConnectNotSupported => {
                "CONNECT is not supported: send plain HTTP to vakt, which originates mutual TLS"
                    .into()
            }
            Self::UpstreamConnectTimeout => "timed out connecting to the upstream".into(),
            Self::UpstreamUnavailable => "the upstream is unavailable".into(),
            Self::UpstreamTlsFailed { reason } => {
                format!("mutual TLS with the upstream sidecar failed: {reason}").into()
            }
            Self::UpstreamIdentityMismatch {
                expected,
                presented: Some(p),
            } => format!("the upstream presented identity {p}, expected {expected}").into(),
            Self::UpstreamIdentityMismatch {
                expected,
                presented: None,
            } => format!("the upstream did not present the expected identity {expected}").into(),
            Self::UpstreamTimeout => "the upstream did not answer in time".into(),
            Self::RequestBodyTimeout => "the request body stopped arriving".into(),
            Self::RequestBodyTooSlow => "the request body arrived too slowly".into(),
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 6750, RFC 9470) for token-related answers.
    fn www_authenticate(&self) -> Option<HeaderValue> {
        let value = match self {
            Self::Token(
                TokenError::KeysUnavailable
                | TokenError::UnknownKeyPending
                | TokenError::DpopReplayCacheFull,
            ) => {
                return None;
            }
            Self::Token(_) => r#"Bearer realm="vakt", error="invalid_token""#.to_owned(),
            Self::Policy(Reason::TokenRequired) => r#"Bearer realm="vakt""#.to_owned(),
            Self::Policy(Reason::DpopRequired) => {
                format!(r#"DPoP realm="vakt", algs="{SUPPORTED_PROOF_ALGS}""#)
            }
            Self::Policy(Reason::InsufficientScope) => {
                r#"Bearer realm="vakt", error="insufficient_scope""#.to_owned()
            }
            Self::StepUp {
                acr_values,
                max_age,
                ..
            } => {
                let mut v = r#"Bearer realm="vakt", error="insufficient_user_authentication", error_description="A different authentication level is required""#.to_owned();
                if let Some(acr) = acr_values {
                    v.push_str(&format!(r#", acr_values="{acr}""#));
                }
                if let Some(age) = max_age {
                    v.push_str(&format!(r#", max_age="{age}""#));
                }
                v
            }
            _ => return None,
        };
        HeaderValue::from_str(&value).ok()
    }

    /// The response vakt sends: status, small JSON body (reason code, message, request and
    /// decision ids), and the reason itself in the extensions for the outer layers.
    pub fn into_response(self, ids: Option<&RequestIds>) -> Response<ProxyBody> {
        let request_id = ids.map(|i| &i.request_id);
        let body = serde_json::json!({
            "error": self.code(),
            "message": self.message(),
            "request_id": request_id.and_then(|v| v.to_str().ok()),
            "decision_id": ids.map(|i| i.decision_id.hyphenated().to_string()),
        });
        let mut response = Response::new(full(body.to_string()));
        *response.status_mut() = self.status();
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(id) = request_id {
            response
                .headers_mut()
                .insert(crate::hygiene::X_REQUEST_ID, id.clone());
        }
        if let Some(challenge) = self.www_authenticate() {
            response
                .headers_mut()
                .insert(http::header::WWW_AUTHENTICATE, challenge);
        }
        let retry_after = match self {
            Self::RateLimited { retry_after_secs } => Some(retry_after_secs),
            Self::Token(TokenError::UnknownKeyPending) => {
                Some(crate::authn::jwks::UNKNOWN_KEY_RETRY_AFTER_SECS)
            }
            Self::Token(TokenError::DpopReplayCacheFull) => Some(1),
            _ => None,
        };
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(
            self,
            Self::BadFraming(_) | Self::RequestBodyTimeout | Self::RequestBodyTooSlow
        ) {
            // After ambiguous framing the rest of the byte stream cannot be trusted; after a
            // stalled body, the unread rest of it would have to be read to reuse the connection.
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        response.extensions_mut().insert(self);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_do_not_echo_a_national_id() {
        // A valid fødselsnummer as a host label.
        let reason = DenyReason::UnknownDestination {
            authority: "31129956715.shop:80".to_owned(),
        };
        let message = reason.message();
        assert!(!message.contains("31129956715"), "{message}");
        assert!(message.contains("[national-id].shop:80"), "{message}");
        let other = DenyReason::UnknownDestination {
            authority: "orders.shop:80".to_owned(),
        };
        assert!(other.message().contains("orders.shop:80"));
    }
}

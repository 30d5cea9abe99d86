//! The hygiene stage: runs before any decision, on every request in both directions.

use std::sync::Arc;

use http::header::TRANSFER_ENCODING;
use http::{HeaderValue, Version};
use http_body_util::BodyExt;

use super::host::{request_host, set_canonical_host};
use super::names::{ForwardedHeaders, HeaderRules};
use super::{
    FORWARDED_HEADERS, X_FORWARDED_CLIENT_CERT, X_REQUEST_ID, check_request_framing,
    ensure_request_id, ensure_traceparent, insert_forwarded, render_forwarded, xfcc_value,
};
use crate::Direction;
use crate::audit::fields::Label;
use crate::body;
use crate::error::DenyReason;
use crate::exchange;
use crate::hygiene::path::{CanonicalPath, canonicalize};
use crate::identity::PeerIdentity;
use crate::stack::{Next, Req, Resp, Stage};
use crate::tls::CertStore;

/// The framing verdict on this request's raw HTTP/1 head, set by the listener from the byte
/// stream before hyper parsed it (hyper silently resolves `Content-Length` + `Transfer-Encoding`).
#[derive(Debug, Clone, Copy)]
pub struct FramingVerdict(pub Result<(), super::FramingError>);

/// The TCP peer address of the connection a request came on, set by the listener.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::SocketAddr);

/// Ids of one request, in its extensions: the request id in effect (kept from the client when
/// valid, else new) and a fresh decision id (in denial bodies and, later, the audit event).
#[derive(Debug, Clone)]
pub struct RequestIds {
    pub request_id: HeaderValue,
    /// Rendered (hyphenated) only when a denial body shows it.
    pub decision_id: uuid::Uuid,
    /// The W3C trace id in effect (kept or created), for the audit event.
    pub trace_id: String,
}

/// Request id and trace context, framing checks, header-name rules (in headers and trailers)
/// and, inbound, `x-forwarded-client-cert` and the `Forwarded` family from what was verified.
pub struct Hygiene {
    direction: Direction,
    /// Shared with the trailer filter of each request body that may carry trailers.
    rules: Arc<HeaderRules>,
    forwarded: ForwardedHeaders,
    /// Inbound only: our own identity, the `By=` of `x-forwarded-client-cert`.
    certs: Option<Arc<CertStore>>,
}

impl Hygiene {
    pub fn inbound(rules: HeaderRules, forwarded: ForwardedHeaders, certs: Arc<CertStore>) -> Self {
        Self {
            direction: Direction::Inbound,
            rules: Arc::new(rules),
            forwarded,
            certs: Some(certs),
        }
    }

    /// Outbound, the `Forwarded` family is only removed (the local app is the client).
    pub fn outbound(rules: HeaderRules) -> Self {
        Self {
            direction: Direction::Outbound,
            rules: Arc::new(rules),
            forwarded: ForwardedHeaders::Strip,
            certs: None,
        }
    }

    /// Trailers follow the same rules as headers; one that would be refused is removed (the
    /// request is already on its way). Only bodies that can carry trailers are wrapped.
    fn filter_trailers(&self, req: &mut Req) {
        // A body already at its end (a GET over HTTP/2, say) has no trailers to come.
        let may_have_trailers = !http_body::Body::is_end_stream(req.body())
            && (req.version() >= Version::HTTP_2
                || (req.version() == Version::HTTP_11
                    && req.headers().contains_key(TRANSFER_ENCODING)));
        if !may_have_trailers {
            return;
        }
        let rules = self.rules.clone();
        let taken = std::mem::replace(req.body_mut(), body::empty());
        *req.body_mut() = body::boxed(taken.map_frame(move |frame| match frame.into_trailers() {
            Ok(mut trailers) => {
                rules.strip_all(&mut trailers);
                http_body::Frame::trailers(trailers)
            }
            Err(frame) => frame,
        }));
    }

    /// `Err` is the reason to refuse the request; the request is rewritten in place otherwise.
    fn prepare(&self, req: &mut Req) -> Result<(), DenyReason> {
        // The raw HTTP/1 head as the client sent it (hyper hides CL+TE from us).
        // Every HTTP/1 request carries the scanner's verdict; one without it was never checked.
        match req.extensions().get::<FramingVerdict>() {
            Some(FramingVerdict(Err(e))) => return Err(DenyReason::BadFraming(*e)),
            None if req.version() <= Version::HTTP_11 => {
                return Err(DenyReason::BadFraming(super::FramingError::Unverified));
            }
            _ => {}
        }
        check_request_framing(req.version(), req.headers()).map_err(DenyReason::BadFraming)?;
        // One host, one spelling: the policy matches it and the app receives exactly it.
        let default_port = match (req.uri().scheme_str(), self.direction) {
            (Some("https"), _) | (None, Direction::Inbound) => 443,
            _ => 80,
        };
        let host = request_host(req.uri(), req.headers(), default_port)
            .map_err(DenyReason::InvalidHost)?;
        let mut uri = std::mem::take(req.uri_mut());
        let rewritten = set_canonical_host(&mut uri, req.headers_mut(), &host);
        *req.uri_mut() = uri;
        rewritten.map_err(DenyReason::InvalidHost)?;
        if self.direction == Direction::Inbound {
            // One canonical path: the policy decides on it and the app receives exactly it.
            let canonical = canonicalize(req.uri().path()).map_err(DenyReason::InvalidPath)?;
            set_path(req, &canonical)?;
            req.extensions_mut().insert(canonical);
        }
        self.rules
            .apply(req.headers_mut())
            .map_err(|_| DenyReason::InvalidHeaderName)?;
        self.filter_trailers(req);
        if self.direction == Direction::Inbound {
            let peer = req
                .extensions()
                .get::<PeerIdentity>()
                .ok_or(DenyReason::NoPeerIdentity)?;
            // The connection's derived values, borrowed while the headers are written.
            let derived = peer.derived.clone();
            let by = self
                .certs
                .as_ref()
                .map(|c| c.current().material.identity.clone())
                .ok_or(DenyReason::NoPeerIdentity)?;
            let xfcc = match derived.xfcc.get() {
                Some((made_by, value)) if *made_by == by => value.clone(),
                _ => {
                    let value = xfcc_value(by.as_str(), &peer.cert_sha256, peer.spiffe_id.as_str());
                    // First request of the connection (a changed local identity is not kept).
                    let _ = derived.xfcc.set((by, value.clone()));
                    value
                }
            };
            let rendered;
            let forwarded = match req.extensions().get::<ClientAddr>() {
                Some(ClientAddr(addr)) if self.forwarded == ForwardedHeaders::Set => {
                    let cached = derived
                        .forwarded
                        .get()
                        .filter(|v| v.host.as_ref() == Some(host.header_value()));
                    Some(match cached {
                        Some(values) => values,
                        None => {
                            rendered =
                                render_forwarded(addr.ip(), Some(host.header_value().clone()));
                            // Kept for the connection's first host; others are rendered anew.
                            let _ = derived.forwarded.set(rendered.clone());
                            &rendered
                        }
                    })
                }
                _ => None,
            };
            let headers = req.headers_mut();
            // Room for all of vakt's headers at once: at most one growth of the map.
            headers.reserve(1 + FORWARDED_HEADERS);
            headers.insert(X_FORWARDED_CLIENT_CERT, xfcc);
            if let Some(values) = forwarded {
                insert_forwarded(headers, values);
            }
            // For the policy, which matches routes on the canonical name. Outbound nothing
            // reads it: the upstream is found from the host vakt just wrote into the request.
            req.extensions_mut().insert(host);
        }
        Ok(())
    }
}

/// Replace the request's path with the canonical one, keeping the query exactly as sent.
fn set_path(req: &mut Req, canonical: &CanonicalPath) -> Result<(), DenyReason> {
    if req.uri().path() == canonical.as_str() {
        return Ok(());
    }
    let mut parts = req.uri().clone().into_parts();
    let path_and_query = match req.uri().query() {
        Some(query) => format!("{canonical}?{query}"),
        None => canonical.to_string(),
    };
    parts.path_and_query = Some(
        path_and_query
            .parse()
            .map_err(|_| DenyReason::InvalidPath(crate::hygiene::path::PathError::NotAbsolute))?,
    );
    *req.uri_mut() = http::Uri::from_parts(parts)
        .map_err(|_| DenyReason::InvalidPath(crate::hygiene::path::PathError::NotAbsolute))?;
    Ok(())
}

impl Stage for Hygiene {
    async fn handle(&self, mut req: Req, next: Next) -> Resp {
        let request_id = ensure_request_id(req.headers_mut());
        let trace_id = ensure_traceparent(req.headers_mut());
        let ids = RequestIds {
            request_id: request_id.clone(),
            decision_id: uuid::Uuid::new_v4(),
            trace_id,
        };
        if let Some(exchange) = exchange::of(&req) {
            exchange.learn(|k| {
                k.decision_id = Some(ids.decision_id);
                k.request_id = request_id.to_str().ok().map(Label::sanitized);
                k.trace_id = Some(Label::sanitized(&ids.trace_id));
            });
        }
        let mut response = match self.prepare(&mut req) {
            Ok(()) => {
                req.extensions_mut().insert(ids);
                next.run(req).await
            }
            Err(reason) => {
                // Who asked for what stays on record, in a form that is safe to log.
                exchange::keep_target(&mut req);
                reason.into_response(Some(&ids))
            }
        };
        // Back over HTTP/2 (server to client sidecar), the id is a never-indexed literal too.
        response
            .headers_mut()
            .entry(X_REQUEST_ID)
            .or_insert(request_id)
            .set_sensitive(true);
        response
    }
}

#[cfg(test)]
mod tests {
    use http::{Request, Version};

    use super::*;
    use crate::hygiene::FramingError;

    fn request(version: Version, verdict: Option<Result<(), FramingError>>) -> Req {
        let mut req = Request::get("http://orders.shop/x")
            .version(version)
            .header(http::header::HOST, "orders.shop")
            .body(body::empty())
            .unwrap();
        if let Some(v) = verdict {
            req.extensions_mut().insert(FramingVerdict(v));
        }
        req
    }

    /// An HTTP/1 request is forwarded only with the byte scanner's verdict, and only a clean one.
    #[test]
    fn http1_requests_need_a_clean_scanner_verdict() {
        let hygiene = Hygiene::outbound(HeaderRules::new(
            &crate::hygiene::names::HygieneConfig::default(),
            Vec::new(),
            Vec::new(),
        ));
        let unverified = Err(DenyReason::BadFraming(FramingError::Unverified));
        let cases = [
            (Version::HTTP_11, None, unverified.clone()),
            (Version::HTTP_10, None, unverified),
            (
                Version::HTTP_11,
                Some(Err(FramingError::ContentLengthAndTransferEncoding)),
                Err(DenyReason::BadFraming(
                    FramingError::ContentLengthAndTransferEncoding,
                )),
            ),
            (Version::HTTP_11, Some(Ok(())), Ok(())),
            // HTTP/2 has no HTTP/1 framing to scan.
            (Version::HTTP_2, None, Ok(())),
        ];
        for (version, verdict, expected) in cases {
            let mut req = request(version, verdict);
            assert_eq!(
                hygiene.prepare(&mut req),
                expected,
                "{version:?} {verdict:?}"
            );
        }
    }
}

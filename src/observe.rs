//! The outermost stage: every request is counted, timed and audited here, whoever answered it
//! (the app, or vakt with a denial). The audit event is emitted exactly once, when the response
//! body has been sent or the exchange is dropped (client gone, panic unwinding), so no early
//! return or disconnect can skip it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::Direction;
use crate::audit::{self, AuditEvent, Auditor, Label, OnAuditFailure, Text};
use crate::authn::Principal;
use crate::body::{BoxError, ProxyBody};
use crate::error::DenyReason;
use crate::hygiene::RequestIds;
use crate::hygiene::path::CanonicalPath;
use crate::identity::PeerIdentity;
use crate::metrics as m;
use crate::policy::decide::{DecisionRecord, Outcome};
use crate::pseudonym::Pseudonymiser;
use crate::stack::{Next, Req, Resp, Stage};

pub struct Observe {
    direction: Direction,
    auditor: Option<Arc<Auditor>>,
    metrics: RequestMetrics,
}

impl Observe {
    /// Call after [`crate::metrics::install`]: the metric handles are registered here.
    pub fn new(direction: Direction, auditor: Option<Arc<Auditor>>) -> Self {
        Self {
            direction,
            auditor,
            metrics: RequestMetrics::new(direction),
        }
    }
}

/// The handles of the per-request metrics of one direction, registered once.
struct RequestMetrics {
    /// `vakt_requests_total` by status class ([`m::STATUS_CLASSES`]).
    requests: [metrics::Counter; 5],
    duration: metrics::Histogram,
    /// `vakt_policy_decisions_total` by (route, decision, reason).
    decisions: m::CounterCache<(Option<Arc<str>>, Outcome, &'static str)>,
    /// `vakt_requests_denied_total` by reason code.
    denials: m::CounterCache<&'static str>,
}

impl RequestMetrics {
    fn new(direction: Direction) -> Self {
        let direction = direction.as_str();
        Self {
            requests: m::STATUS_CLASSES.map(|class| {
                metrics::counter!(m::REQUESTS, "direction" => direction, "status_class" => class)
            }),
            duration: metrics::histogram!(m::REQUEST_DURATION, "direction" => direction),
            decisions: m::CounterCache::default(),
            denials: m::CounterCache::default(),
        }
    }
}

/// Counts body bytes as they stream.
struct Counted {
    inner: ProxyBody,
    bytes: Arc<AtomicU64>,
    /// Emits the audit event when the body ends or is dropped.
    guard: Option<AuditGuard>,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                // End of the exchange: emit now rather than when hyper drops the body.
                self.guard.take();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Emits one audit event on drop, with what is known by then.
struct AuditGuard {
    auditor: Arc<Auditor>,
    /// The exchange's event once the response exists; until then the guard stands for a client
    /// that went away, and builds that event only if it is dropped that early.
    event: Option<AuditEvent>,
    unanswered: Option<(Direction, http::Method)>,
    started: Instant,
    bytes_in: Arc<AtomicU64>,
    bytes_out: Arc<AtomicU64>,
}

impl AuditGuard {
    fn answered(mut self, event: AuditEvent) -> Self {
        self.event = Some(event);
        self.unanswered = None;
        self
    }
}

/// The event of an exchange dropped before any response existed.
fn disconnected_event(direction: Direction, method: &http::Method) -> AuditEvent {
    let mut event = AuditEvent::new(
        audit_direction(direction),
        audit::Decision::Refused,
        Label::sanitized_static("client_disconnected"),
    );
    event.set_http_method(method);
    event
}

impl Drop for AuditGuard {
    fn drop(&mut self) {
        let event = self.event.take().or_else(|| {
            self.unanswered
                .take()
                .map(|(direction, method)| disconnected_event(direction, &method))
        });
        if let Some(mut event) = event {
            event.bytes_in = Some(self.bytes_in.load(Ordering::Relaxed));
            event.bytes_out = Some(self.bytes_out.load(Ordering::Relaxed));
            event.duration_ms = Some(self.started.elapsed().as_millis() as u64);
            self.auditor.record(event);
        }
    }
}

fn audit_direction(direction: Direction) -> audit::Direction {
    match direction {
        Direction::Outbound => audit::Direction::Outbound,
        _ => audit::Direction::Inbound,
    }
}

/// The audit event for a finished exchange, from what the stages left in the extensions
/// (public so `benches/audit.rs` measures this very function).
pub fn build_event(
    direction: Direction,
    method: &http::Method,
    peer: Option<&PeerIdentity>,
    response: &Resp,
    pseudonyms: &Pseudonymiser,
) -> AuditEvent {
    let record = response.extensions().get::<DecisionRecord>();
    let deny = response.extensions().get::<DenyReason>();
    let (decision, reason) = match (record, deny) {
        (Some(r), _) => (
            match r.outcome {
                Outcome::Allow => audit::Decision::Allow,
                Outcome::Deny => audit::Decision::Deny,
                Outcome::WouldDeny => audit::Decision::WouldDeny,
            },
            r.reason,
        ),
        (None, Some(d)) => (audit::Decision::Refused, d.code()),
        (None, None) => (audit::Decision::Allow, "forwarded"),
    };
    let mut event = AuditEvent::new(
        audit_direction(direction),
        decision,
        Label::sanitized_static(reason),
    );
    event.set_http_method(method);
    event.status = Some(response.status().as_u16());
    if let Some(r) = record {
        event.route = r.route_id.as_ref().map(Label::sanitized_shared);
        event.rule = r.rule.and_then(|i| u32::try_from(i).ok());
        event.route_template = r.route_template.as_ref().map(Text::sanitized_shared);
    }
    if let Some(ids) = response.extensions().get::<RequestIds>() {
        event.request_id = ids.request_id.to_str().ok().map(Label::sanitized);
        event.trace_id = Some(Label::sanitized(&ids.trace_id));
    }
    if let Some(path) = response.extensions().get::<CanonicalPath>() {
        let hidden = record.map(|r| &r.personal_params[..]).unwrap_or(&[]);
        let template = record.and_then(|r| r.route_template.as_deref());
        event.path = Some(match template {
            Some(t) if !hidden.is_empty() => {
                let hidden: Vec<&str> = hidden.iter().map(String::as_str).collect();
                Text::sanitized(&audit::pseudonymise_path(
                    t,
                    path.as_str(),
                    &hidden,
                    pseudonyms,
                ))
            }
            _ => Text::sanitized(path.as_str()),
        });
    }
    if let Some(peer) = peer {
        event.peer = Some(Text::sanitized_shared(peer.spiffe_id.shared_str()));
    }
    if let Some(p) = response.extensions().get::<Arc<Principal>>() {
        event.issuer = Some(Text::sanitized_shared(&p.issuer));
        event.client_id = p.client_id.as_ref().map(Label::sanitized_shared);
        let made = p.pseudonyms(pseudonyms);
        event.subject_pseudonym = made
            .subject
            .as_ref()
            .map(audit::Pseudonym::sanitized_shared);
        event.national_id_pseudonym = made
            .national_id
            .as_ref()
            .map(audit::Pseudonym::sanitized_shared);
        event.loa = Some(Label::sanitized_static(p.loa.as_str()));
        event.amr = p.amr.iter().map(|a| Label::sanitized(a)).collect();
    }
    event
}

impl Stage for Observe {
    async fn handle(&self, req: Req, next: Next) -> Resp {
        let started = Instant::now();
        let method = req.method().clone();
        let direction = self.direction.as_str();

        let (parts, body) = req.into_parts();
        let bytes_in = Arc::new(AtomicU64::new(0));
        let bytes_out = Arc::new(AtomicU64::new(0));
        // Only the verified peer is known this early (the listener set it); request and decision
        // ids, path and principal come back in the response extensions from the inner stages.
        let peer = parts.extensions.get::<PeerIdentity>().cloned();
        // A body that has already ended (GET, HEAD, ...) has no bytes to count.
        let body = if body.is_end_stream() {
            body
        } else {
            crate::body::boxed(Counted {
                inner: body,
                bytes: bytes_in.clone(),
                guard: None,
            })
        };
        let req = Req::from_parts(parts, body);

        // A guard for the exchange: if this future is dropped before a response exists
        // (client gone), the event still goes out.
        let mut pending_guard = self.auditor.as_ref().map(|auditor| AuditGuard {
            auditor: auditor.clone(),
            event: None,
            unanswered: Some((self.direction, method.clone())),
            started,
            bytes_in: bytes_in.clone(),
            bytes_out: bytes_out.clone(),
        });

        let unavailable = self
            .auditor
            .as_ref()
            .is_some_and(|a| a.on_failure == OnAuditFailure::Deny && !a.can_record());
        let response = if unavailable {
            DenyReason::AuditUnavailable.into_response(None)
        } else {
            next.run(req).await
        };

        let status = response.status();
        self.metrics.requests[m::status_class_index(status)].increment(1);
        self.metrics
            .duration
            .record(started.elapsed().as_secs_f64());
        if let Some(record) = response.extensions().get::<DecisionRecord>() {
            let key = (record.route_id.clone(), record.outcome, record.reason);
            self.metrics.decisions.increment(&key, |(route, outcome, reason)| {
                let route = route.as_deref().unwrap_or("none").to_owned();
                metrics::counter!(m::POLICY_DECISIONS, "route" => route, "decision" => outcome.as_str(), "reason" => *reason)
            });
        }
        if let Some(reason) = response.extensions().get::<DenyReason>() {
            self.metrics.denials.increment(
                &reason.code(),
                |code| metrics::counter!(m::DENIALS, "direction" => direction, "reason" => *code),
            );
            tracing::info!(
                direction,
                %method,
                status = status.as_u16(),
                reason = reason.code(),
                "request refused by vakt"
            );
        }

        let guard = pending_guard.take().map(|guard| {
            let event = build_event(
                self.direction,
                &method,
                peer.as_ref(),
                &response,
                &guard.auditor.pseudonyms,
            );
            guard.answered(event)
        });
        let (parts, body) = response.into_parts();
        Resp::from_parts(
            parts,
            crate::body::boxed(Counted {
                inner: body,
                bytes: bytes_out,
                guard,
            }),
        )
    }
}

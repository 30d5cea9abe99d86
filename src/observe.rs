//! The outermost stage: every request is counted, timed and audited here, whoever answered it
//! (the app, or vakt with a denial). The audit event is emitted exactly once, when the response
//! body has been sent or the exchange is dropped (client gone, panic unwinding), so no early
//! return or disconnect can skip it. The event is built from the request's [`Exchange`], which
//! the inner stages fill in as they learn about the request, so an exchange abandoned while the
//! app works is recorded with who asked for what. With `on_audit_failure: deny` the guard holds
//! the event's place in the audit queue before the request goes further: without a place, the
//! request is refused (503 `audit_unavailable`) and nothing is served unrecorded.
//!
//! When responses wait for their events (the file sink with `fsync: always`), the last frame of
//! a response — or the response itself, when it has no content — is held back until the
//! exchange's event is on disk, so whatever a client received in full is in the trail even if
//! vakt is killed the next moment. In `deny` mode a response whose event can no longer be written
//! is broken off instead of finished.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::Direction;
use crate::audit::auditor::Slot;
use crate::audit::log::Written;
use crate::audit::redact::Redactor;
use crate::audit::{self, AuditEvent, Auditor, Label, Text};
use crate::body::{BoxError, ProxyBody};
use crate::error::DenyReason;
use crate::exchange::{Exchange, Known, Target};
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

/// Which body of the exchange a [`Counted`] wraps.
#[derive(Clone, Copy)]
enum Side {
    Request,
    Response,
}

/// Counts body bytes as they stream, and sees how the body ends.
struct Counted {
    inner: ProxyBody,
    exchange: Arc<Exchange>,
    side: Side,
    /// Response side: emits the audit event when the body ends or is dropped.
    guard: Option<AuditGuard>,
    /// Response side, when responses wait for their events: the end held back.
    hold: Option<Hold>,
}

impl Counted {
    fn request(inner: ProxyBody, exchange: Arc<Exchange>) -> Self {
        Self {
            inner,
            exchange,
            side: Side::Request,
            guard: None,
            hold: None,
        }
    }
}

/// The end of a response that waits for its event to be written.
enum Hold {
    /// Streaming; the response's `Content-Length`, if any, tells the last data frame.
    Until { content_length: Option<u64> },
    /// The body's end came: `last` (a frame, or the end itself) goes out once the event is
    /// written.
    Waiting {
        written: Written,
        fail_closed: bool,
        last: Option<Frame<Bytes>>,
    },
    /// The event is written: the rest passes.
    Released,
}

/// What a body's `poll_frame` returns when ready.
type Polled = Option<Result<Frame<Bytes>, BoxError>>;

/// The client may not have a response unless its event is written: the event could not be.
#[derive(Debug, thiserror::Error)]
#[error("the audit event of this exchange could not be written")]
struct EventNotWritten;

impl Counted {
    /// Whether `frame` (just read, `None` for the end) completes the response as the client
    /// sees it: then it waits for the event.
    fn completes(&self, frame: Option<&Frame<Bytes>>) -> bool {
        match (&self.hold, frame) {
            (Some(Hold::Until { .. }), None) => true,
            (Some(Hold::Until { content_length }), Some(_)) => {
                self.inner.is_end_stream()
                    || content_length
                        .is_some_and(|n| self.exchange.bytes_out.load(Ordering::Relaxed) >= n)
            }
            _ => false,
        }
    }

    /// Emit the event now and hold `last` until it is written: `None` when it waits (the
    /// caller polls again), else what to return right away.
    fn hold_back(&mut self, last: Option<Frame<Bytes>>) -> Option<Polled> {
        self.hold = Some(Hold::Released);
        let Some(mut guard) = self.guard.take() else {
            return Some(last.map(Ok));
        };
        guard.body = BodyEnd::Ended;
        match guard.emit_written() {
            EventWritten::Wait(written, fail_closed) => {
                self.hold = Some(Hold::Waiting {
                    written,
                    fail_closed,
                    last,
                });
                None
            }
            EventWritten::Never { fail_closed: true } => Some(Some(Err(EventNotWritten.into()))),
            EventWritten::Never { fail_closed: false } => Some(last.map(Ok)),
        }
    }
}

impl Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(Hold::Waiting {
            written,
            fail_closed,
            last,
        }) = &mut self.hold
        {
            let released = match std::task::ready!(Pin::new(written).poll(cx)) {
                Ok(()) => Ok(last.take()),
                Err(_) if *fail_closed => Err(EventNotWritten),
                // `allow` mode: availability first.
                Err(_) => Ok(last.take()),
            };
            self.hold = Some(Hold::Released);
            return Poll::Ready(match released {
                Ok(last) => last.map(Ok),
                Err(e) => Some(Err(e.into())),
            });
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let bytes = match self.side {
                        Side::Request => &self.exchange.bytes_in,
                        Side::Response => &self.exchange.bytes_out,
                    };
                    bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            // End of the exchange: emit now rather than when hyper drops the body.
            Poll::Ready(None) => {
                if self.completes(None) {
                    return match self.hold_back(None) {
                        Some(now) => Poll::Ready(now),
                        None => self.poll_frame(cx),
                    };
                }
                self.finish(BodyEnd::Ended)
            }
            Poll::Ready(Some(Err(_))) => match self.side {
                // The client's request body broke off: the client went away.
                Side::Request => self.exchange.set_request_aborted(),
                // The response body broke off on its way from the app or the remote sidecar.
                Side::Response => self.finish(BodyEnd::Broken),
            },
            Poll::Pending => {}
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) if self.completes(Some(&frame)) => {
                match self.hold_back(Some(frame)) {
                    Some(now) => Poll::Ready(now),
                    None => self.poll_frame(cx),
                }
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        match self.hold {
            Some(Hold::Until { .. } | Hold::Waiting { .. }) => false,
            None | Some(Hold::Released) => self.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Counted {
    fn finish(&mut self, end: BodyEnd) {
        if let Some(mut guard) = self.guard.take() {
            guard.body = end;
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        // Dropped before its end was read: done if nothing was left to send (hyper need not poll
        // an empty or fully sent body), else the client stopped reading.
        let end = if self.inner.is_end_stream() {
            BodyEnd::Ended
        } else {
            BodyEnd::Abandoned
        };
        self.finish(end);
    }
}

/// How the response body ended, as far as the guard knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyEnd {
    /// Not seen yet (no response, or the guard dropped with the stage's future).
    Unknown,
    Ended,
    /// It broke off with an error from upstream.
    Broken,
    /// Dropped unfinished: the client went away.
    Abandoned,
}

/// What vakt knows of the response when the event is built.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub status: http::StatusCode,
    /// vakt's own refusal, when vakt answered: its reason code and the outcome it stands for.
    pub refusal: Option<(&'static str, audit::Outcome)>,
}

impl Answer {
    pub fn of(response: &Resp) -> Self {
        Self {
            status: response.status(),
            refusal: response
                .extensions()
                .get::<DenyReason>()
                .map(|d| (d.code(), d.outcome())),
        }
    }
}

/// Emits one audit event on drop, with everything learnt about the exchange by then: the
/// request side from the exchange the stages fill in, the response once it exists, how its
/// body ended.
struct AuditGuard {
    auditor: Arc<Auditor>,
    /// The place in the queue held for this event (`on_audit_failure: deny`).
    slot: Option<Slot>,
    exchange: Arc<Exchange>,
    direction: Direction,
    method: http::Method,
    peer: Option<PeerIdentity>,
    started: Instant,
    answer: Option<Answer>,
    body: BodyEnd,
    /// The event went out before the guard was dropped ([`AuditGuard::emit_written`]).
    emitted: bool,
}

/// Whether and when the event of a held-back response is written.
enum EventWritten {
    /// Wait for it; if it then fails, break the response off when `fail_closed`.
    Wait(Written, bool),
    /// It was not queued.
    Never { fail_closed: bool },
}

/// How an exchange ended, from the response (if any), how its body ended and whether the
/// client broke off its request body.
fn outcome(answer: Option<&Answer>, body: BodyEnd, request_aborted: bool) -> audit::Outcome {
    use audit::Outcome as O;
    let Some(answer) = answer else {
        // Dropped before any response existed: the client went away.
        return O::ClientAborted;
    };
    let outcome = match (answer.refusal, body) {
        (Some((_, outcome)), _) => outcome,
        (None, BodyEnd::Ended) => O::Completed,
        (None, BodyEnd::Broken) => O::UpstreamError,
        (None, BodyEnd::Abandoned | BodyEnd::Unknown) => O::ClientAborted,
    };
    // An upstream that failed because the client broke off its request body did not fail on
    // its own.
    match outcome {
        O::UpstreamError | O::Timeout if request_aborted => O::ClientAborted,
        other => other,
    }
}

impl AuditGuard {
    /// Emit the event now, and learn when it is written.
    fn emit_written(mut self) -> EventWritten {
        let event = self.event();
        self.emitted = true;
        let fail_closed = self.auditor.on_failure == audit::OnAuditFailure::Deny;
        let written = match self.slot.take() {
            Some(slot) => slot.record_written(event).ok(),
            None => self.auditor.record_written(event),
        };
        match written {
            Some(written) => EventWritten::Wait(written, fail_closed),
            None => EventWritten::Never { fail_closed },
        }
    }

    /// The event, from everything learnt about the exchange by now.
    fn event(&self) -> AuditEvent {
        let outcome = outcome(
            self.answer.as_ref(),
            self.body,
            self.exchange.request_aborted(),
        );
        let mut event = build_event(
            self.direction,
            &self.method,
            self.peer.as_ref(),
            &self.exchange.known(),
            self.answer.as_ref(),
            &self.auditor.pseudonyms,
            &self.auditor.redactor,
        );
        event.outcome = Some(outcome);
        event.bytes_in = Some(self.exchange.bytes_in.load(Ordering::Relaxed));
        event.bytes_out = Some(self.exchange.bytes_out.load(Ordering::Relaxed));
        event.duration_ms = Some(self.started.elapsed().as_millis() as u64);
        event
    }
}

impl Drop for AuditGuard {
    fn drop(&mut self) {
        if self.emitted {
            return;
        }
        let event = self.event();
        match self.slot.take() {
            Some(slot) => slot.record(event),
            None => self.auditor.record(event),
        }
    }
}

fn audit_direction(direction: Direction) -> audit::Direction {
    match direction {
        Direction::Outbound => audit::Direction::Outbound,
        _ => audit::Direction::Inbound,
    }
}

/// The request target as the event holds it: the canonical path with the route's personal
/// parameters pseudonymised, or the redacted target of a request whose path could not be read.
fn logged_path(
    target: Option<&Target>,
    record: Option<&DecisionRecord>,
    pseudonyms: &Pseudonymiser,
) -> Option<Text> {
    let path = match target? {
        Target::Redacted(text) => return Some(text.clone()),
        Target::Canonical(path) => path,
    };
    let hidden = record.map(|r| &r.personal_params[..]).unwrap_or(&[]);
    let template = record.and_then(|r| r.route_template.as_deref());
    Some(match template {
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
    })
}

/// The audit event of an exchange from what the stages learnt of it (`known`) and the response,
/// if one exists (public so `benches/audit.rs` measures this very function). The caller adds
/// the outcome, byte counts and duration.
pub fn build_event(
    direction: Direction,
    method: &http::Method,
    peer: Option<&PeerIdentity>,
    known: &Known,
    answer: Option<&Answer>,
    pseudonyms: &Pseudonymiser,
    redactor: &Redactor,
) -> AuditEvent {
    let record = known.record.as_ref();
    let refusal = answer.and_then(|a| a.refusal);
    let (decision, reason) = match (record, refusal) {
        (Some(r), _) => (
            match r.outcome {
                Outcome::Allow => audit::Decision::Allow,
                Outcome::Deny => audit::Decision::Deny,
                Outcome::WouldDeny => audit::Decision::WouldDeny,
            },
            r.reason,
        ),
        (None, Some((code, _))) => (audit::Decision::Refused, code),
        (None, None) if answer.is_some() => (audit::Decision::Allow, "forwarded"),
        // Gone before anything was decided.
        (None, None) => (audit::Decision::Refused, "client_disconnected"),
    };
    let mut event = AuditEvent::new(
        audit_direction(direction),
        decision,
        Label::sanitized_static(reason),
    );
    event.set_http_method(method);
    event.status = answer.map(|a| a.status.as_u16());
    if let Some(r) = record {
        event.route = r.route_id.as_ref().map(Label::sanitized_shared);
        event.rule = r.rule.and_then(|i| u32::try_from(i).ok());
        event.route_template = r.route_template.as_ref().map(Text::sanitized_shared);
    }
    if let Some(id) = known.decision_id {
        event.id = audit::EventId(id);
    }
    event.request_id = known.request_id.clone();
    event.trace_id = known.trace_id.clone();

    event.path = logged_path(known.target.as_ref(), record, pseudonyms)
        // Whatever the route bound: national ids and configured identifiers left anywhere in
        // the path (no route, `/**` rests, other parameters, refused targets) become pseudonyms.
        .map(|path| match redactor.redact(path.as_str()) {
            std::borrow::Cow::Borrowed(_) => path,
            std::borrow::Cow::Owned(redacted) => Text::sanitized(&redacted),
        });

    if let Some(peer) = peer {
        event.peer = Some(Text::sanitized_shared(peer.spiffe_id.shared_str()));
    }
    if let Some(d) = &known.destination {
        event.destination = Some(Text::sanitized_shared(&d.authority));
        event.expected_peer = Some(Text::sanitized_shared(&d.spiffe_id));
        // A response from upstream came over a handshake that proved this identity.
        if answer.is_some_and(|a| a.refusal.is_none()) {
            event.peer = Some(Text::sanitized_shared(&d.spiffe_id));
        }
    }
    if let Some(p) = &known.principal {
        event.issuer = Some(Text::sanitized_shared(&p.issuer));
        event.client_id = p.client_id.as_ref().map(Label::sanitized_shared);
        event.dpop_jkt = p.dpop_jkt.as_ref().map(Label::sanitized_shared);
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

        let (mut parts, body) = req.into_parts();
        // Filled in by the inner stages as they learn about the request; read by the guard.
        let exchange = Arc::new(Exchange::default());
        parts.extensions.insert(exchange.clone());
        // Only the verified peer is known this early (the listener set it).
        let peer = parts.extensions.get::<PeerIdentity>().cloned();
        // A body that has already ended (GET, HEAD, ...) has no bytes to count.
        let body = if body.is_end_stream() {
            body
        } else {
            crate::body::boxed(Counted::request(body, exchange.clone()))
        };
        let req = Req::from_parts(parts, body);

        // The guard of the exchange: if this future is dropped before a response exists (client
        // gone), the event still goes out with what the stages learnt. With
        // `on_audit_failure: deny` it holds the event's place in the queue before anything is
        // served; without one, nothing is.
        let mut unavailable = false;
        let mut guard = match &self.auditor {
            None => None,
            Some(auditor) => match auditor.reserve() {
                Ok(slot) => Some(AuditGuard {
                    auditor: auditor.clone(),
                    slot,
                    exchange: exchange.clone(),
                    direction: self.direction,
                    method: method.clone(),
                    peer,
                    started,
                    answer: None,
                    body: BodyEnd::Unknown,
                    emitted: false,
                }),
                Err(why) => {
                    auditor.refused_unrecorded(why);
                    unavailable = true;
                    None
                }
            },
        };
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
        {
            let known = exchange.known();
            if let Some(record) = &known.record {
                let key = (record.route_id.clone(), record.outcome, record.reason);
                self.metrics.decisions.increment(&key, |(route, outcome, reason)| {
                    let route = route.as_deref().unwrap_or("none").to_owned();
                    metrics::counter!(m::POLICY_DECISIONS, "route" => route, "decision" => outcome.as_str(), "reason" => *reason)
                });
            }
        }
        if let Some(reason) = response.extensions().get::<DenyReason>() {
            self.metrics.denials.increment(
                &reason.code(),
                |code| metrics::counter!(m::DENIALS, "direction" => direction, "reason" => *code),
            );
            // Debug only: every refusal is in the audit trail and the metrics already, and a
            // flood of refused requests must not become a flood of log lines.
            tracing::debug!(
                direction,
                %method,
                status = status.as_u16(),
                reason = reason.code(),
                "request refused by vakt"
            );
        }

        if let Some(guard) = guard.as_mut() {
            guard.answer = Some(Answer::of(&response));
        }
        let (mut parts, mut body) = response.into_parts();
        // A response to HEAD has no content (RFC 9110 §9.3.2); over HTTP/2 DATA frames after it
        // are a protocol error. vakt's own refusals carry a JSON body: it is left out here.
        if method == http::Method::HEAD && parts.extensions.get::<DenyReason>().is_some() {
            body = crate::body::empty();
            parts.headers.remove(http::header::CONTENT_LENGTH);
        }
        let mut hold = None;
        if self
            .auditor
            .as_ref()
            .is_some_and(|a| a.responses_wait_for_events)
            && let Some(mut held) = guard.take()
        {
            let content_length = parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if body.is_end_stream() || content_length == Some(0) {
                // The head is the whole response: it waits for the event.
                held.body = BodyEnd::Ended;
                let written = match held.emit_written() {
                    EventWritten::Wait(written, fail_closed) => {
                        written.await.is_ok() || !fail_closed
                    }
                    EventWritten::Never { fail_closed } => !fail_closed,
                };
                if !written {
                    return DenyReason::AuditUnavailable.into_response(None);
                }
            } else {
                guard = Some(held);
                hold = Some(Hold::Until { content_length });
            }
        }
        Resp::from_parts(
            parts,
            crate::body::boxed(Counted {
                inner: body,
                exchange,
                side: Side::Response,
                guard,
                hold,
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Outcome as O;
    use crate::policy::file::Mode;

    fn answer(status: u16, refusal: Option<&DenyReason>) -> Answer {
        Answer {
            status: http::StatusCode::from_u16(status).unwrap(),
            refusal: refusal.map(|d| (d.code(), d.outcome())),
        }
    }

    #[test]
    fn outcomes() {
        let ok = answer(200, None);
        let denied = answer(403, Some(&DenyReason::NoPeerIdentity));
        let bad_gateway = answer(502, Some(&DenyReason::UpstreamUnavailable));
        let gateway_timeout = answer(504, Some(&DenyReason::UpstreamTimeout));
        let table = [
            (None, BodyEnd::Unknown, false, O::ClientAborted),
            (Some(&ok), BodyEnd::Ended, false, O::Completed),
            (Some(&ok), BodyEnd::Broken, false, O::UpstreamError),
            (Some(&ok), BodyEnd::Abandoned, false, O::ClientAborted),
            (Some(&ok), BodyEnd::Ended, true, O::Completed),
            (Some(&denied), BodyEnd::Abandoned, false, O::Refused),
            (Some(&denied), BodyEnd::Ended, false, O::Refused),
            (Some(&bad_gateway), BodyEnd::Ended, false, O::UpstreamError),
            (Some(&gateway_timeout), BodyEnd::Ended, false, O::Timeout),
            // The app failed because the client broke off its request body.
            (Some(&bad_gateway), BodyEnd::Ended, true, O::ClientAborted),
            (
                Some(&gateway_timeout),
                BodyEnd::Ended,
                true,
                O::ClientAborted,
            ),
        ];
        for (answer, body, aborted, want) in table {
            assert_eq!(
                outcome(answer, body, aborted),
                want,
                "{answer:?} {body:?} {aborted}"
            );
        }
    }

    fn allowed() -> DecisionRecord {
        DecisionRecord::for_route(None, Some(0), Mode::Enforce, Outcome::Allow, "rule_matched")
    }

    /// Who and what, from what the stages learnt, whether or not a response exists.
    #[test]
    fn events_from_what_was_learnt() {
        let p = Pseudonymiser::from_secret("k1", &[3; 32]);
        let r = Redactor::national_ids(Arc::new(Pseudonymiser::from_secret("k1", &[3; 32])));
        let path = crate::hygiene::path::canonicalize("/a/b").unwrap();
        let known = Known {
            decision_id: None,
            request_id: Some(Label::sanitized("r-1")),
            trace_id: None,
            target: Some(Target::Canonical(path)),
            record: Some(allowed()),
            principal: None,
            destination: None,
        };
        let get = http::Method::GET;
        // Gone while the app worked: still allowed, with its path and rule.
        let e = build_event(Direction::Inbound, &get, None, &known, None, &p, &r);
        assert_eq!(
            (e.decision, e.reason.as_str(), e.status),
            (audit::Decision::Allow, "rule_matched", None)
        );
        assert_eq!(e.path.as_ref().map(Text::as_str), Some("/a/b"));
        assert_eq!(
            (e.rule, e.request_id.as_ref().map(Label::as_str)),
            (Some(0), Some("r-1"))
        );
        // Gone before anything was decided.
        let e = build_event(
            Direction::Inbound,
            &get,
            None,
            &Known::default(),
            None,
            &p,
            &r,
        );
        assert_eq!(
            (e.decision, e.reason.as_str(), e.path),
            (audit::Decision::Refused, "client_disconnected", None)
        );
        // Refused by hygiene: the redacted target.
        let known = Known {
            decision_id: None,
            target: Some(Target::Redacted(audit::redact_target("/x/%2e/y?q"))),
            ..Known::default()
        };
        let refused = answer(400, Some(&DenyReason::InvalidHeaderName));
        let e = build_event(
            Direction::Inbound,
            &get,
            None,
            &known,
            Some(&refused),
            &p,
            &r,
        );
        assert_eq!(
            (e.decision, e.reason.as_str(), e.status),
            (audit::Decision::Refused, "invalid_header_name", Some(400))
        );
        assert_eq!(e.path.as_ref().map(Text::as_str), Some("/x/*/y"));
        // Outbound, forwarded: allowed with nothing decided by a policy.
        let ok = answer(200, None);
        let e = build_event(
            Direction::Outbound,
            &get,
            None,
            &Known::default(),
            Some(&ok),
            &p,
            &r,
        );
        assert_eq!(
            (e.decision, e.reason.as_str()),
            (audit::Decision::Allow, "forwarded")
        );
    }

    /// A national id anywhere in the logged path, canonical or a refused target, becomes the
    /// person's pseudonym; a path without one is shared as it was.
    #[test]
    fn national_ids_never_reach_the_event_path() {
        let p = Pseudonymiser::from_secret("k1", &[3; 32]);
        let r = Redactor::national_ids(Arc::new(Pseudonymiser::from_secret("k1", &[3; 32])));
        let fnr = "31129956715";
        let pseudonym = p.pseudonym(audit::KIND_NATIONAL_ID, fnr);
        let get = http::Method::GET;
        let path_of = |target: Target| {
            let known = Known {
                decision_id: None,
                target: Some(target),
                ..Known::default()
            };
            build_event(Direction::Inbound, &get, None, &known, None, &p, &r).path
        };
        let canonical = crate::hygiene::path::canonicalize(&format!("/records/{fnr}")).unwrap();
        assert_eq!(
            path_of(Target::Canonical(canonical)).unwrap().as_str(),
            format!("/records/{pseudonym}")
        );
        let refused = audit::redact_target(&format!("/files/{fnr}/%2e?pid={fnr}"));
        assert_eq!(
            path_of(Target::Redacted(refused)).unwrap().as_str(),
            format!("/files/{pseudonym}/*")
        );
        let plain = crate::hygiene::path::canonicalize("/records/12345").unwrap();
        assert_eq!(
            path_of(Target::Canonical(plain)).unwrap().as_str(),
            "/records/12345"
        );
    }
}

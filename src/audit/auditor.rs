//! The audit trail as the request path sees it: the log, the pseudonymiser for personal data,
//! and what to do when an event cannot be recorded.

use std::sync::Arc;

use super::config::OnAuditFailure;
use super::event::AuditEvent;
use super::fields::{Decision, Direction, Label, Text};
use super::log::AuditLog;
use crate::metrics as m;
use crate::pseudonym::Pseudonymiser;

/// The audit trail as the stages see it.
pub struct Auditor {
    pub log: AuditLog,
    pub pseudonyms: Arc<Pseudonymiser>,
    pub on_failure: OnAuditFailure,
    /// The queue's capacity: a full queue could not take this request's event.
    pub capacity: usize,
}

impl Auditor {
    /// Could an event be recorded now? (Sink healthy and room in the queue.)
    pub fn can_record(&self) -> bool {
        self.log.healthy() && (self.log.queue_depth() as usize) < self.capacity
    }

    pub fn record(&self, event: AuditEvent) {
        if let Err(why) = self.log.try_record(event) {
            metrics::counter!(m::AUDIT_DROPPED, "reason" => why.as_str()).increment(1);
            tracing::error!(reason = why.as_str(), "audit event dropped");
        }
    }

    /// A refused TLS handshake: who tried, and why.
    pub fn handshake_refused(&self, reason: &'static str, peer: Option<&str>) {
        let mut event = AuditEvent::new(
            Direction::Handshake,
            Decision::Refused,
            Label::sanitized_static(reason),
        );
        event.peer = peer.map(Text::sanitized);
        self.record(event);
    }
}

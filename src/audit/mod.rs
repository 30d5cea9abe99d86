//! The audit trail: one event per request decision, refused handshake and refused egress;
//! pseudonymised, hash-chained (tamper-evident), and never silently lost.
//!
//! - [`event`]: the [`AuditEvent`] type, its checked [`fields`], [`time`]s and JSON line, (schema `vakt.audit/1`, documented in
//!   `docs/audit-event.schema.json`); it cannot hold a token, a raw national id or a body.
//!   Personal identifiers go in as keyed pseudonyms from [`crate::pseudonym::Pseudonymiser`].
//! - [`chain`]: [`ChainWriter`] seals events into lines carrying `seq` and `prev`.
//! - [`sink`]: [`StdoutSink`] and [`FileSink`] (size-based rotation, fsync policy; the chain
//!   continues across rotation and restarts).
//! - [`log`]: [`AuditLog`], the non-blocking front with a bounded queue and one writer thread (batches, linger, retry).
//! - [`auditor`]: [`Auditor`], the trail as the request path sees it, and [`config`], the
//!   `audit` section with what happens when an event cannot be recorded.
//! - [`target`]: the redacted request target of a request refused before its path could be
//!   canonicalised.
//! - [`verify`](mod@verify): `vakt audit verify`; [`report`](mod@report): `vakt audit report`.

pub mod auditor;
pub mod chain;
pub mod config;
pub mod event;
pub mod fields;
mod json;
pub mod log;
pub mod report;
pub mod sink;
#[cfg(feature = "test-support")]
pub mod slow;
pub mod target;
pub mod time;
pub mod verify;

pub use auditor::Auditor;
pub use chain::{ChainPosition, ChainWriter, FIRST_SEQ, SealedLine, line_hash};
pub use config::{AuditFileSettings, AuditSettings, AuditSink, OnAuditFailure};
pub use event::{
    AuditEvent, KIND_NATIONAL_ID, KIND_SUBJECT, SCHEMA, pseudonymise_path, pseudonymise_path_with,
};
pub use fields::{
    Action, ChainHash, Decision, Direction, EventId, FieldError, Label, Outcome, Pseudonym, Text,
};
pub use log::{AuditConfig, AuditLog, AuditUnavailable, ShutdownError};
pub use report::{Counts, Report, ReportError, report};
pub use sink::{
    FileSink, FileSinkConfig, FsyncPolicy, Sink, SinkError, StdoutSink, WriteFailure, WriterSink,
};
pub use target::redact_target;
pub use time::Timestamp;
pub use verify::{BreakKind, BrokenLink, VerifyError, VerifyReport, verify};

#[cfg(test)]
pub(crate) mod testutil {
    use std::ops::RangeInclusive;

    use super::*;

    /// A deterministic event (id and time from `n`), about 500 bytes serialised.
    pub(crate) fn event(n: u64) -> AuditEvent {
        let denied = n.is_multiple_of(7);
        let (decision, reason) = if denied {
            (Decision::Deny, "peer_not_allowed")
        } else {
            (Decision::Allow, "rule_matched")
        };
        let mut e = AuditEvent::new(Direction::Inbound, decision, Label::new(reason).unwrap());
        e.id = EventId(uuid::Uuid::from_u128(
            0x4000_8000_0000_0000_0000 + u128::from(n),
        ));
        e.time =
            Timestamp::from_unix_millis(1_740_000_000_000 + i64::try_from(n).unwrap()).unwrap();
        e.request_id = Some(Label::new(format!("req-{n}")).unwrap());
        e.trace_id = Some(Label::new(format!("{n:032x}")).unwrap());
        e.route = Some(Label::new("journal-read").unwrap());
        e.rule = Some(0);
        e.set_method("GET");
        e.route_template = Some(Text::new("/patients/{pid}/journal").unwrap());
        e.path = Some(Text::new(format!("/patients/k1:{:0>43}/journal", n)).unwrap());
        e.peer = Some(Text::new("spiffe://cluster.local/ns/records/sa/web").unwrap());
        e.status = Some(if denied { 403 } else { 200 });
        e.bytes_in = Some(0);
        e.bytes_out = Some(1000 + n);
        e.duration_ms = Some(n % 50);
        e
    }

    /// Events `range`, sealed in order by `chain`.
    pub(crate) fn lines(mut chain: ChainWriter, range: RangeInclusive<u64>) -> Vec<SealedLine> {
        range.map(|n| chain.seal(event(n))).collect()
    }
}

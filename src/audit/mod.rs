//! The audit trail: one event per request decision, refused handshake and refused egress;
//! pseudonymised, chained under a key kept outside the audit volume (tamper-evident), anchored by
//! checkpoints, and never silently lost.
//!
//! - [`event`]: the [`AuditEvent`] type, its checked [`fields`], [`time`]s and JSON line, (schema `vakt.audit/2`, documented in
//!   `docs/audit-event.schema.json`); it cannot hold a token, a raw national id or a body.
//!   Personal identifiers go in as keyed pseudonyms from [`crate::pseudonym::Pseudonymiser`].
//! - [`chain`]: [`ChainWriter`] seals events into lines carrying `seq`, `epoch`, `prev` and an
//!   HMAC under the [`ChainKey`]; [`checkpoint`]: the chain's head recorded outside the audit
//!   volume, and how a start resumes from it or opens a new epoch (docs/AUDIT.md).
//! - [`sink`]: [`StdoutSink`] and [`FileSink`] (size-based rotation, fsync policy; the chain
//!   continues across rotation and restarts).
//! - [`log`]: [`AuditLog`], the non-blocking front with a bounded queue and one writer thread (batches, linger, retry).
//! - [`redact`]: national ids ([`crate::nid`]) and `audit.redact_patterns` matches in logged
//!   paths replaced by pseudonyms.
//! - [`auditor`]: [`Auditor`], the trail as the request path sees it, and [`config`], the
//!   `audit` section with what happens when an event cannot be recorded.
//! - [`target`]: the redacted request target of a request refused before its path could be
//!   canonicalised.
//! - [`trail`]: `vakt audit verify` (keyed trails, checkpoints, epochs; [`verify`](mod@verify)
//!   for `vakt.audit/1` trails); [`report`](mod@report): `vakt audit report`.

pub mod auditor;
pub mod chain;
pub mod checkpoint;
pub mod config;
pub mod event;
pub mod fields;
mod json;
pub mod log;
pub mod redact;
pub mod report;
pub mod sink;
#[cfg(feature = "test-support")]
pub mod slow;
pub mod target;
pub mod time;
pub mod trail;
pub mod verify;

pub use auditor::Auditor;
pub use chain::{
    ChainKey, ChainKeyError, ChainNote, ChainPosition, ChainWriter, EpochStart, FIRST_EPOCH,
    FIRST_SEQ, SchemaVersion, SealedLine, line_hash, parse_line,
};
pub use checkpoint::{Checkpoint, CheckpointError, CheckpointFile, CheckpointSettings};
pub use config::{AuditFileSettings, AuditSettings, AuditSink, ChainKeySettings, OnAuditFailure};
pub use event::{
    AuditEvent, KIND_NATIONAL_ID, KIND_SUBJECT, SCHEMA, pseudonymise_path, pseudonymise_path_with,
};
pub use fields::{
    Action, ChainHash, Decision, Direction, EventId, FieldError, Label, Outcome, Pseudonym, Text,
};
pub use log::{AuditConfig, AuditLog, AuditUnavailable, ChainSettings, ShutdownError};
pub use report::{Counts, Report, ReportError, report};
pub use sink::{
    FileSink, FileSinkConfig, FsyncPolicy, Sink, SinkError, StdoutSink, WriteFailure, WriterSink,
};
pub use target::redact_target;
pub use time::Timestamp;
pub use trail::{
    Finding, FindingKind, Segment, TrailReport, VerifyKey, VerifyOptions, verify_trail,
};
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

    /// The chain key of unit tests (id `t1`).
    pub(crate) fn test_key() -> std::sync::Arc<ChainKey> {
        std::sync::Arc::new(ChainKey::new("t1", &[3; 32]).unwrap())
    }

    /// The test key, and checkpoints only where a test asks for them.
    pub(crate) fn unanchored_chain() -> ChainSettings {
        ChainSettings {
            key: test_key(),
            checkpoints: CheckpointSettings {
                stdout: false,
                ..CheckpointSettings::default()
            },
        }
    }

    /// `vakt.audit/1` lines of events `range` (SHA-256 links), as vakt wrote them before keyed
    /// chains, continuing after `after` (a v1 line) or from the start.
    pub(crate) fn v1_lines_after(after: Option<&str>, range: RangeInclusive<u64>) -> Vec<String> {
        let mut prev = after.map_or(ChainHash::ZERO, |l| line_hash(l.as_bytes()));
        let mut seq = after.map_or(0, |l| serde_json::from_str::<AuditEvent>(l).unwrap().seq);
        range
            .map(|n| {
                let mut e = event(n);
                seq += 1;
                e.seq = seq;
                e.prev = prev;
                let mut text = String::new();
                e.write_json(&mut text);
                let text =
                    text.replacen(SCHEMA, event::SCHEMA_V1, 1)
                        .replacen(",\"epoch\":0", "", 1);
                prev = line_hash(text.as_bytes());
                text
            })
            .collect()
    }

    /// `vakt.audit/1` lines of events `range`, from the start.
    pub(crate) fn v1_lines(range: RangeInclusive<u64>) -> Vec<String> {
        v1_lines_after(None, range)
    }

    /// [`verify_trail`] of `files` with [`test_key`] and no checkpoints.
    pub(crate) fn verified(files: &[std::path::PathBuf]) -> TrailReport {
        let options = VerifyOptions {
            keys: vec![VerifyKey {
                id: None,
                key: ChainKey::new("t1", &[3; 32]).unwrap(),
            }],
            checkpoints: None,
        };
        verify_trail(files, &options).unwrap()
    }

    /// Events `range`, sealed in order by `chain`.
    pub(crate) fn lines(mut chain: ChainWriter, range: RangeInclusive<u64>) -> Vec<SealedLine> {
        range.map(|n| chain.seal(event(n))).collect()
    }
}

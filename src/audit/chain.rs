//! The keyed chain (schema `vakt.audit/2`). Every line carries `seq` (+1 per line), `epoch`,
//! `prev` (the previous line's `mac`; zeros for the first line of an epoch), `chain_key_id`, and
//! last of all `mac`:
//!
//! ```text
//! mac = HMAC-SHA-256(chain key, prev (32 raw bytes) || line without mac)
//! ```
//!
//! where "line without mac" is the line with its final `,"mac":"<64 hex>"` member removed (the
//! event's own JSON object, ending in `}`). Editing, deleting, inserting or reordering a line
//! breaks a mac or a link, and whoever owns the audit volume cannot compute a new mac without the
//! key, which lives elsewhere (a Kubernetes Secret). `vakt.audit/1` lines (plain SHA-256 links,
//! [`line_hash`]) are still read by `verify`.

use super::event::{AuditEvent, SCHEMA, SCHEMA_V1};
use super::fields::{ChainHash, Decision, Direction, Label};
pub use super::fields::{ChainNote, EpochStart};
use aws_lc_rs::{digest, hmac};

/// `seq` of the first event of a trail.
pub const FIRST_SEQ: u64 = 1;
/// `epoch` of a new trail.
pub const FIRST_EPOCH: u64 = 1;

/// The member a sealed line ends with, before the hex digits and `"}`.
const MAC_KEY: &str = ",\"mac\":\"";
/// Bytes of `,"mac":"<64 hex>"}` at the end of a v2 line.
const MAC_SUFFIX_LEN: usize = MAC_KEY.len() + 64 + 2;

/// Reason code of the event that opens an epoch vakt cannot link to the one before.
pub const REASON_EPOCH_STARTED: &str = "chain_epoch_started";
/// Reason code of the event recording that rotation deleted the oldest audit file.
pub const REASON_FILE_ROTATED_OUT: &str = "audit_file_rotated_out";
/// Reason code of the event recording that the audit file being written was deleted or
/// replaced by someone else (its lines are lost to the trail).
pub const REASON_FILE_DELETED: &str = "audit_file_deleted";

/// SHA-256 of one line's bytes (without the newline): the `prev` of `vakt.audit/1`.
pub fn line_hash(line: &[u8]) -> ChainHash {
    let d = digest::digest(&digest::SHA256, line);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    ChainHash(out)
}

/// Why a chain key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ChainKeyError {
    #[error("chain key id must be 1-16 characters of A-Z a-z 0-9 - _")]
    BadKeyId,
    #[error("cannot read chain key {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("chain key {path} is shorter than 32 bytes")]
    TooShort { path: std::path::PathBuf },
    #[error("chain key secret is shorter than 32 bytes")]
    SecretTooShort,
}

/// The HMAC key of the chain and its id (written into every line, so a rotated key is
/// recognisable). Never printed: `Debug` shows the id only.
pub struct ChainKey {
    id: Label,
    key: hmac::Key,
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainKey")
            .field("id", &self.id.as_str())
            .finish_non_exhaustive()
    }
}

impl ChainKey {
    /// A key from its secret (at least 32 bytes).
    pub fn new(id: &str, secret: &[u8]) -> Result<Self, ChainKeyError> {
        let valid_id = !id.is_empty()
            && id.len() <= 16
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let id = match Label::new(id) {
            Ok(label) if valid_id => label,
            _ => return Err(ChainKeyError::BadKeyId),
        };
        if secret.len() < 32 {
            return Err(ChainKeyError::SecretTooShort);
        }
        Ok(Self {
            id,
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        })
    }

    /// The secret is the file's bytes (surrounding ASCII whitespace trimmed, so a Secret written
    /// with a trailing newline works), at least 32 of them.
    pub fn from_file(id: &str, path: &std::path::Path) -> Result<Self, ChainKeyError> {
        let secret = std::fs::read(path).map_err(|source| ChainKeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        match Self::new(id, secret.trim_ascii()) {
            Err(ChainKeyError::SecretTooShort) => Err(ChainKeyError::TooShort {
                path: path.to_path_buf(),
            }),
            other => other,
        }
    }

    /// A random key for this process only, id `ephemeral`: for a stdout trail without a
    /// configured key. Its macs can never be verified, and `verify` says so.
    pub fn ephemeral() -> Self {
        let mut secret = [0u8; 32];
        let _ = aws_lc_rs::rand::fill(&mut secret);
        Self {
            id: Label::sanitized_static("ephemeral"),
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
        }
    }

    pub fn id(&self) -> &Label {
        &self.id
    }

    /// `HMAC(key, prev || body)`, `body` being the line without its mac member.
    pub fn mac(&self, prev: &ChainHash, body: &[u8]) -> ChainHash {
        self.mac_parts(prev, &[body])
    }

    fn mac_parts(&self, prev: &ChainHash, parts: &[&[u8]]) -> ChainHash {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&prev.0);
        for part in parts {
            ctx.update(part);
        }
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        ChainHash(out)
    }

    /// Does the sealed v2 `line` carry the mac this key gives it (with its own `prev`)?
    /// Compared in constant time.
    pub fn verifies(&self, line: &SealedParts<'_>, prev: &ChainHash) -> bool {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&prev.0);
        ctx.update(line.body_open);
        ctx.update(b"}");
        let tag = ctx.sign();
        aws_lc_rs::constant_time::verify_slices_are_equal(tag.as_ref(), &line.mac.0).is_ok()
    }
}

/// A v2 line split at its mac: `body_open` is the line up to (without) `,"mac":"`; the line
/// without mac is `body_open` followed by `}`.
#[derive(Debug, Clone, Copy)]
pub struct SealedParts<'a> {
    pub body_open: &'a [u8],
    pub mac: ChainHash,
}

impl<'a> SealedParts<'a> {
    /// Split a line that ends with `,"mac":"<64 hex>"}`.
    pub fn split(line: &'a [u8]) -> Option<Self> {
        let cut = line.len().checked_sub(MAC_SUFFIX_LEN)?;
        let (body_open, suffix) = line.split_at(cut);
        let hex = suffix
            .strip_prefix(MAC_KEY.as_bytes())?
            .strip_suffix(b"\"}")?;
        let mac = ChainHash::parse_hex(std::str::from_utf8(hex).ok()?)?;
        Some(Self { body_open, mac })
    }

    /// The line without its mac member, as JSON (a copy, for parsing).
    pub fn body(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.body_open.len() + 1);
        body.extend_from_slice(self.body_open);
        body.push(b'}');
        body
    }
}

/// The schema version of a line, from its first member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SchemaVersion {
    /// `vakt.audit/1`: `prev` is the SHA-256 of the previous line; no key.
    V1,
    /// `vakt.audit/2`: keyed macs, epochs.
    V2,
}

impl SchemaVersion {
    /// Read from the line's opening bytes (every line starts with its schema tag).
    pub fn of_line(line: &[u8]) -> Option<Self> {
        let tagged = |schema: &str| {
            line.strip_prefix(b"{\"schema\":\"")
                .and_then(|rest| rest.strip_prefix(schema.as_bytes()))
                .is_some_and(|rest| rest.starts_with(b"\""))
        };
        if tagged(SCHEMA) {
            Some(Self::V2)
        } else if tagged(SCHEMA_V1) {
            Some(Self::V1)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => SCHEMA_V1,
            Self::V2 => SCHEMA,
        }
    }
}

/// Why a line is not a chained audit event.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("not a vakt.audit/1 or vakt.audit/2 event (schema tag missing or different)")]
    Schema,
    #[error("a vakt.audit/2 line without its mac member at the end")]
    NoMac,
    #[error("not a valid audit event (problem at column {0})")]
    Event(usize),
    #[error("a vakt.audit/2 line without chain_key_id or epoch")]
    NoKeyId,
}

/// A line read back: the event, its schema and (v2) its mac.
#[derive(Debug, Clone)]
pub struct ParsedLine {
    pub schema: SchemaVersion,
    pub event: AuditEvent,
    /// v2 only.
    pub mac: Option<ChainHash>,
}

impl ParsedLine {
    /// What the next line's `prev` is: the mac (v2) or the line's SHA-256 (v1).
    pub fn link(&self, raw: &[u8]) -> ChainHash {
        self.mac.unwrap_or_else(|| line_hash(raw))
    }
}

/// Parse one line (without its newline) of either schema.
pub fn parse_line(raw: &[u8]) -> Result<ParsedLine, LineError> {
    let schema = SchemaVersion::of_line(raw).ok_or(LineError::Schema)?;
    let event_of = |json: &[u8]| {
        serde_json::from_slice::<AuditEvent>(json).map_err(|e| LineError::Event(e.column()))
    };
    match schema {
        SchemaVersion::V1 => {
            let event = event_of(raw)?;
            if event.chain_key_id.is_some() || event.epoch != 0 || event.chain.is_some() {
                return Err(LineError::Schema);
            }
            Ok(ParsedLine {
                schema,
                event,
                mac: None,
            })
        }
        SchemaVersion::V2 => {
            let parts = SealedParts::split(raw).ok_or(LineError::NoMac)?;
            let event = event_of(&parts.body())?;
            if event.chain_key_id.is_none() || event.epoch == 0 {
                return Err(LineError::NoKeyId);
            }
            Ok(ParsedLine {
                schema,
                event,
                mac: Some(parts.mac),
            })
        }
    }
}

/// Where a trail stands: the `seq`, `prev` and `epoch` the next line gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainPosition {
    pub next_seq: u64,
    pub prev: ChainHash,
    pub epoch: u64,
}

impl ChainPosition {
    /// A new trail.
    pub const GENESIS: Self = Self {
        next_seq: FIRST_SEQ,
        prev: ChainHash::ZERO,
        epoch: FIRST_EPOCH,
    };

    /// The position after `line`, a v2 line (its mac is the next `prev`).
    pub fn after(line: &ParsedLine) -> Option<Self> {
        Some(Self {
            next_seq: line.event.seq.saturating_add(1),
            prev: line.mac?,
            epoch: line.event.epoch,
        })
    }

    /// The `seq` of the last line written, if any.
    pub fn head_seq(&self) -> Option<u64> {
        self.next_seq.checked_sub(1).filter(|s| *s >= FIRST_SEQ)
    }
}

/// The trail's own event carrying `note`: an epoch start or a rotated-out file.
pub fn note_event(note: ChainNote) -> AuditEvent {
    let reason = if note.epoch_start.is_some() {
        REASON_EPOCH_STARTED
    } else {
        REASON_FILE_ROTATED_OUT
    };
    recorded(reason, note)
}

/// The trail's own event recording that the file holding `note`'s seq range was deleted or
/// replaced while vakt wrote to it.
pub fn deleted_file_event(note: ChainNote) -> AuditEvent {
    recorded(REASON_FILE_DELETED, note)
}

fn recorded(reason: &'static str, note: ChainNote) -> AuditEvent {
    let mut event = AuditEvent::new(
        Direction::Audit,
        Decision::Recorded,
        Label::sanitized_static(reason),
    );
    event.chain = Some(note);
    event
}

/// One serialised, chained line (without the newline), ready for a sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedLine {
    pub seq: u64,
    pub text: String,
    /// This line's mac: the next line's `prev`.
    pub mac: ChainHash,
}

/// Owns the chain state of one trail and seals events into lines. Runs on the audit writer
/// thread: one HMAC over each line, written into the line's own buffer.
#[derive(Debug, Clone)]
pub struct ChainWriter {
    position: ChainPosition,
    key: std::sync::Arc<ChainKey>,
}

impl ChainWriter {
    /// A new trail (first `seq` 1, `prev` zeros, epoch 1).
    pub fn new(key: std::sync::Arc<ChainKey>) -> Self {
        Self::resume(ChainPosition::GENESIS, key)
    }

    /// Continue a trail from `position`.
    pub fn resume(position: ChainPosition, key: std::sync::Arc<ChainKey>) -> Self {
        Self { position, key }
    }

    pub fn position(&self) -> ChainPosition {
        self.position
    }

    pub fn key_id(&self) -> &Label {
        self.key.id()
    }

    /// Set the chain fields, write the event's JSON line with its mac, and advance.
    pub fn seal(&mut self, mut event: AuditEvent) -> SealedLine {
        event.seq = self.position.next_seq;
        event.prev = self.position.prev;
        event.epoch = self.position.epoch;
        event.chain_key_id = Some(self.key.id().clone());
        // Sized for a typical event (~700-1000 bytes) so writing does not regrow the buffer.
        let mut text = String::with_capacity(1024);
        event.write_json(&mut text);
        let mac = self.key.mac(&event.prev, text.as_bytes());
        // The object's closing brace makes way for the mac member.
        text.pop();
        text.push_str(MAC_KEY);
        text.push_str(mac.hex(&mut [0; 64]));
        text.push_str("\"}");
        self.position = ChainPosition {
            next_seq: event.seq.saturating_add(1),
            prev: mac,
            epoch: event.epoch,
        };
        SealedLine {
            seq: event.seq,
            text,
            mac,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::audit::testutil::{event, test_key};

    #[test]
    fn lines_link_by_mac_and_seq() {
        let key = test_key();
        let mut w = ChainWriter::new(key.clone());
        let a = w.seal(event(1));
        let b = w.seal(event(2));
        let pa = parse_line(a.text.as_bytes()).unwrap();
        let pb = parse_line(b.text.as_bytes()).unwrap();
        assert_eq!(pa.schema, SchemaVersion::V2);
        assert_eq!((pa.event.seq, pa.event.prev), (1, ChainHash::ZERO));
        assert_eq!((pb.event.seq, pb.event.epoch), (2, FIRST_EPOCH));
        assert_eq!(pb.event.prev, a.mac);
        assert_eq!(pa.mac, Some(a.mac));
        assert_eq!(
            pa.event.chain_key_id.as_ref().map(Label::as_str),
            Some("t1")
        );
        // The mac is HMAC(key, prev || line without the mac member), as documented.
        let body = SealedParts::split(b.text.as_bytes()).unwrap().body();
        assert_eq!(key.mac(&a.mac, &body), b.mac);
        assert!(b.text.ends_with(&format!(",\"mac\":\"{}\"}}", b.mac)));
        assert!(key.verifies(&SealedParts::split(b.text.as_bytes()).unwrap(), &a.mac));
        assert_eq!(
            w.position(),
            ChainPosition {
                next_seq: 3,
                prev: b.mac,
                epoch: FIRST_EPOCH
            }
        );
        // SHA-256 test vector (the v1 link).
        assert_eq!(
            line_hash(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn another_key_or_an_edit_does_not_verify() {
        let key = test_key();
        let other = Arc::new(ChainKey::new("t1", &[9; 32]).unwrap());
        let line = ChainWriter::new(key.clone()).seal(event(1));
        let parts = SealedParts::split(line.text.as_bytes()).unwrap();
        assert!(key.verifies(&parts, &ChainHash::ZERO));
        assert!(!other.verifies(&parts, &ChainHash::ZERO));
        let edited = line.text.replace("\"status\":200", "\"status\":201");
        assert_ne!(edited, line.text);
        let parts = SealedParts::split(edited.as_bytes()).unwrap();
        assert!(!key.verifies(&parts, &ChainHash::ZERO));
    }

    #[test]
    fn resume_continues_after_a_line() {
        let key = test_key();
        let mut w = ChainWriter::new(key.clone());
        let a = w.seal(event(1));
        let pos = ChainPosition::after(&parse_line(a.text.as_bytes()).unwrap()).unwrap();
        assert_eq!(pos, w.position());
        let mut resumed = ChainWriter::resume(pos, key);
        assert_eq!(resumed.seal(event(2)), w.seal(event(2)));
        assert!(parse_line(b"{not json").is_err());
        assert!(matches!(
            parse_line(a.text.trim_end_matches('}').as_bytes()),
            Err(LineError::NoMac)
        ));
    }

    #[test]
    fn keys_are_checked_and_never_printed() {
        assert!(matches!(
            ChainKey::new("bad id", &[1; 32]),
            Err(ChainKeyError::BadKeyId)
        ));
        assert!(matches!(
            ChainKey::new("k1", &[1; 31]),
            Err(ChainKeyError::SecretTooShort)
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, format!("{}\n", "s".repeat(40))).unwrap();
        let key = ChainKey::from_file("k2", &path).unwrap();
        assert_eq!(format!("{key:?}"), "ChainKey { id: \"k2\", .. }");
        std::fs::write(&path, "short\n").unwrap();
        assert!(matches!(
            ChainKey::from_file("k2", &path),
            Err(ChainKeyError::TooShort { .. })
        ));
        assert!(matches!(
            ChainKey::from_file("k2", &dir.path().join("missing")),
            Err(ChainKeyError::Read { .. })
        ));
    }

    #[test]
    fn notes_write_json_as_serde_does() {
        let notes = [
            ChainNote::default(),
            ChainNote {
                epoch_start: Some(EpochStart::Truncated),
                prev_epoch: Some(2),
                checkpoint_seq: Some(120),
                found_seq: Some(99),
                ..ChainNote::default()
            },
            ChainNote {
                rotated_first_seq: Some(1),
                rotated_last_seq: Some(40),
                ..ChainNote::default()
            },
        ];
        for note in notes {
            let mut out = String::new();
            note.write_json(&mut out);
            assert_eq!(out, serde_json::to_string(&note).unwrap());
        }
    }
}

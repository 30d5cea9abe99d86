//! The hash chain: every line carries `seq` (+1 per line) and `prev`, the SHA-256 of the
//! previous line's bytes (without the newline); the first line of a stream has `prev` = zeros.
//! Deleting, editing, inserting or reordering a line breaks a link that `verify` finds.

use aws_lc_rs::digest;

use super::event::AuditEvent;
use super::fields::ChainHash;

/// `seq` of the first event of a stream.
pub const FIRST_SEQ: u64 = 1;

/// SHA-256 of one line's bytes (without the newline).
pub fn line_hash(line: &[u8]) -> ChainHash {
    let d = digest::digest(&digest::SHA256, line);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    ChainHash(out)
}

/// Where a stream stands: the `seq` and `prev` the next line gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainPosition {
    pub next_seq: u64,
    pub prev: ChainHash,
}

impl ChainPosition {
    /// A new stream.
    pub const GENESIS: Self = Self {
        next_seq: FIRST_SEQ,
        prev: ChainHash::ZERO,
    };

    /// The position after `line`, an existing last line of the stream.
    pub fn after_line(line: &[u8]) -> Result<Self, serde_json::Error> {
        let event: AuditEvent = serde_json::from_slice(line)?;
        Ok(Self {
            next_seq: event.seq.saturating_add(1),
            prev: line_hash(line),
        })
    }
}

/// One serialised, chained line (without the newline), ready for a sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedLine {
    pub seq: u64,
    pub text: String,
    /// SHA-256 of `text`: the next line's `prev`.
    pub hash: ChainHash,
}

/// Owns the chain state of one stream and seals events into lines.
#[derive(Debug, Clone)]
pub struct ChainWriter {
    position: ChainPosition,
}

impl Default for ChainWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainWriter {
    /// A new stream (first `seq` 1, `prev` zeros).
    pub fn new() -> Self {
        Self::resume(ChainPosition::GENESIS)
    }

    /// Continue a stream, e.g. after the last line of an existing file.
    pub fn resume(position: ChainPosition) -> Self {
        Self { position }
    }

    pub fn position(&self) -> ChainPosition {
        self.position
    }

    /// Set `seq` and `prev`, write the event's JSON line, and advance.
    pub fn seal(&mut self, mut event: AuditEvent) -> SealedLine {
        event.seq = self.position.next_seq;
        event.prev = self.position.prev;
        // Sized for a typical event (~600-900 bytes) so writing does not regrow the buffer.
        let mut text = String::with_capacity(1024);
        event.write_json(&mut text);
        let hash = line_hash(text.as_bytes());
        self.position = ChainPosition {
            next_seq: event.seq.saturating_add(1),
            prev: hash,
        };
        SealedLine {
            seq: event.seq,
            text,
            hash,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::testutil::event;

    #[test]
    fn lines_link_by_hash_and_seq() {
        let mut w = ChainWriter::new();
        let a = w.seal(event(1));
        let b = w.seal(event(2));
        let ea: AuditEvent = serde_json::from_str(&a.text).unwrap();
        let eb: AuditEvent = serde_json::from_str(&b.text).unwrap();
        assert_eq!((ea.seq, ea.prev), (1, ChainHash::ZERO));
        assert_eq!(eb.seq, 2);
        assert_eq!(eb.prev, line_hash(a.text.as_bytes()));
        assert_eq!(a.hash, line_hash(a.text.as_bytes()));
        assert_eq!(
            w.position(),
            ChainPosition {
                next_seq: 3,
                prev: b.hash
            }
        );
        assert!(a.text.contains(&format!("\"prev\":\"{}\"", "0".repeat(64))));
        // SHA-256 test vector.
        assert_eq!(
            line_hash(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn resume_continues_after_a_line() {
        let mut w = ChainWriter::new();
        let a = w.seal(event(1));
        let pos = ChainPosition::after_line(a.text.as_bytes()).unwrap();
        assert_eq!(pos, w.position());
        let mut resumed = ChainWriter::resume(pos);
        assert_eq!(resumed.seal(event(2)), w.seal(event(2)));
        assert!(ChainPosition::after_line(b"{not json").is_err());
    }
}

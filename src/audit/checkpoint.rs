//! Checkpoints: the chain's head (epoch, `seq`, mac, key id, time) written on a schedule and at
//! shutdown to places the audit volume's owner cannot rewrite: one JSON line on stdout
//! (`"type":"vakt.audit.checkpoint"`, for the cluster's log pipeline) and an append-only JSONL
//! file on its own volume. On start, [`resume`] compares the audit files with the last
//! checkpoint: it continues the epoch only when the files hold the checkpointed line and every
//! line after it verifies; otherwise a new epoch begins whose first event names the gap.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::chain::{
    ChainKey, ChainNote, ChainPosition, EpochStart, FIRST_EPOCH, FIRST_SEQ, SchemaVersion,
    SealedParts, parse_line,
};
use super::fields::{ChainHash, Label};
use super::time::Timestamp;

/// The `type` of a checkpoint line.
pub const CHECKPOINT_TYPE: &str = "vakt.audit.checkpoint";
/// How a checkpoint line starts (to tell it from audit lines in a stdout capture).
pub const CHECKPOINT_PREFIX: &str = "{\"type\":\"vakt.audit.checkpoint\"";

/// How far back the last checkpoint is looked for (a line is about 250 bytes).
const TAIL_WINDOW: u64 = 64 * 1024;

/// The `type` tag: serialises as [`CHECKPOINT_TYPE`], refuses any other value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointTag;

impl Serialize for CheckpointTag {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(CHECKPOINT_TYPE)
    }
}

impl<'de> Deserialize<'de> for CheckpointTag {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == CHECKPOINT_TYPE {
            Ok(Self)
        } else {
            Err(serde::de::Error::custom("not a vakt.audit.checkpoint"))
        }
    }
}

/// The head of the chain at one moment: the line `seq` of `epoch` has mac `head`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    #[serde(rename = "type")]
    pub kind: CheckpointTag,
    pub epoch: u64,
    pub seq: u64,
    pub head: ChainHash,
    pub chain_key_id: Label,
    pub time: Timestamp,
}

impl Checkpoint {
    /// The checkpoint of `position` (after its last line), or `None` before the first line.
    pub fn of(position: &ChainPosition, key_id: &Label) -> Option<Self> {
        Some(Self {
            kind: CheckpointTag,
            epoch: position.epoch,
            seq: position.head_seq()?,
            head: position.prev,
            chain_key_id: key_id.clone(),
            time: Timestamp::now(),
        })
    }

    pub fn to_line(&self) -> String {
        // Serialising these types cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot write checkpoint file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read checkpoint file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
}

/// When and where checkpoints are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointSettings {
    /// The append-only checkpoint file (on another volume than the audit files).
    pub file: Option<PathBuf>,
    /// Also one JSON line on stdout per checkpoint.
    pub stdout: bool,
    /// At most this long after a line is written, it is checkpointed.
    pub interval: Duration,
    /// And after this many lines.
    pub every: u64,
}

impl Default for CheckpointSettings {
    fn default() -> Self {
        Self {
            file: None,
            stdout: true,
            interval: Duration::from_secs(60),
            every: 10_000,
        }
    }
}

/// The append-only checkpoint file: one JSON line per checkpoint, synced on every append.
#[derive(Debug)]
pub struct CheckpointFile {
    path: PathBuf,
    file: Option<File>,
}

impl CheckpointFile {
    pub fn new(path: PathBuf) -> Self {
        Self { path, file: None }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append `checkpoint` and sync it to disk.
    pub fn append(&mut self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let err = |source| CheckpointError::Write {
            path: self.path.clone(),
            source,
        };
        if self.file.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(err)?;
            self.file = Some(file);
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        let mut line = checkpoint.to_line();
        line.push('\n');
        let result = file
            .write_all(line.as_bytes())
            .and_then(|()| file.sync_data());
        if result.is_err() {
            // Reopened on the next attempt.
            self.file = None;
        }
        result.map_err(err)
    }

    /// The last complete, readable checkpoint of the file (`None` if it is missing or holds
    /// none). A torn last line (a crash while appending) is passed over.
    pub fn last(path: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
        let err = |source| CheckpointError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(e)),
        };
        let len = file.metadata().map_err(err)?.len();
        let start = len.saturating_sub(TAIL_WINDOW);
        file.seek(SeekFrom::Start(start)).map_err(err)?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail).map_err(err)?;
        Ok(tail
            .split(|&b| b == b'\n')
            .rev()
            .find_map(|line| serde_json::from_slice::<Checkpoint>(line).ok()))
    }

    /// Every readable checkpoint of `path`, in file order (for `verify`).
    pub fn read_all(path: &Path) -> Result<Vec<Checkpoint>, CheckpointError> {
        let text = std::fs::read(path).map_err(|source| CheckpointError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(text
            .split(|&b| b == b'\n')
            .filter_map(|line| serde_json::from_slice::<Checkpoint>(line).ok())
            .collect())
    }
}

/// How a start continues the trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumption {
    pub position: ChainPosition,
    /// The first event of a new epoch, when the trail cannot be continued as it is.
    pub note: Option<ChainNote>,
}

/// Decide how to go on from the last `checkpoint` and `tail`: the complete lines at the end of
/// the audit files, oldest first, from the checkpointed line when the files still hold it (else
/// only the last line; empty when there is none). Lines after the checkpoint must verify under
/// `key`; a checkpoint names its line by `seq` and mac, so no key is needed for that one.
pub fn resume(checkpoint: Option<&Checkpoint>, tail: &[Vec<u8>], key: &ChainKey) -> Resumption {
    let new_epoch =
        |start: EpochStart, epoch: u64, after_seq: u64, found: Option<u64>| Resumption {
            position: ChainPosition {
                next_seq: after_seq.saturating_add(1).max(FIRST_SEQ),
                prev: ChainHash::ZERO,
                epoch: epoch.saturating_add(1).max(FIRST_EPOCH),
            },
            note: Some(ChainNote {
                epoch_start: Some(start),
                prev_epoch: Some(epoch).filter(|e| *e > 0),
                checkpoint_seq: checkpoint.map(|c| c.seq),
                found_seq: found,
                ..ChainNote::default()
            }),
        };
    let Some(last_raw) = tail.last() else {
        return match checkpoint {
            None => Resumption {
                position: ChainPosition::GENESIS,
                note: None,
            },
            Some(c) => new_epoch(EpochStart::FilesMissing, c.epoch, c.seq, None),
        };
    };
    let cp_epoch = checkpoint.map_or(0, |c| c.epoch);
    let cp_seq = checkpoint.map_or(0, |c| c.seq);
    let Ok(last) = parse_line(last_raw) else {
        // An unreadable last line: nothing to continue from.
        return new_epoch(EpochStart::HeadMismatch, cp_epoch, cp_seq, None);
    };
    let found = Some(last.event.seq);
    let after = last.event.seq.max(cp_seq);
    let epoch = last.event.epoch.max(cp_epoch);
    let Some(c) = checkpoint else {
        return match last.schema {
            SchemaVersion::V1 => new_epoch(EpochStart::UpgradedFromV1, 0, after, found),
            SchemaVersion::V2 => new_epoch(EpochStart::CheckpointMissing, epoch, after, found),
        };
    };
    if last.event.seq < c.seq {
        return new_epoch(EpochStart::Truncated, epoch, after, found);
    }
    if continues(c, tail, key)
        && let Some(position) = ChainPosition::after(&last)
    {
        return Resumption {
            position,
            note: None,
        };
    }
    new_epoch(EpochStart::HeadMismatch, epoch, after, found)
}

/// `tail` starts with the checkpointed line and every later line links and verifies.
fn continues(c: &Checkpoint, tail: &[Vec<u8>], key: &ChainKey) -> bool {
    let Some((first, rest)) = tail.split_first() else {
        return false;
    };
    let Ok(head) = parse_line(first) else {
        return false;
    };
    if head.event.seq != c.seq || head.event.epoch != c.epoch || head.mac != Some(c.head) {
        return false;
    }
    let (mut seq, mut prev) = (c.seq, c.head);
    for raw in rest {
        let Ok(line) = parse_line(raw) else {
            return false;
        };
        let verified = SealedParts::split(raw).is_some_and(|parts| key.verifies(&parts, &prev));
        let same_key = line.event.chain_key_id.as_ref() == Some(key.id());
        if !verified
            || !same_key
            || line.event.seq != seq.saturating_add(1)
            || line.event.prev != prev
            || line.event.epoch != c.epoch
        {
            return false;
        }
        let Some(mac) = line.mac else {
            return false;
        };
        (seq, prev) = (line.event.seq, mac);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::ChainWriter;
    use crate::audit::testutil::{event, test_key};

    fn texts(lines: &[crate::audit::SealedLine]) -> Vec<Vec<u8>> {
        lines.iter().map(|l| l.text.clone().into_bytes()).collect()
    }

    /// 10 lines, checkpointed after line 6.
    fn trail() -> (Vec<Vec<u8>>, Checkpoint) {
        let key = test_key();
        let mut w = ChainWriter::new(key.clone());
        let mut lines = Vec::new();
        let mut cp = None;
        for n in 1..=10 {
            lines.push(w.seal(event(n)));
            if n == 6 {
                cp = Checkpoint::of(&w.position(), key.id());
            }
        }
        (texts(&lines), cp.unwrap())
    }

    fn start_of(r: &Resumption) -> Option<EpochStart> {
        r.note.as_ref().and_then(|n| n.epoch_start)
    }

    #[test]
    fn resume_table() {
        let key = test_key();
        let (lines, cp) = trail();
        let other_key = ChainKey::new("t1", &[4; 32]).unwrap();
        let mut edited = lines.clone();
        edited[8] = String::from_utf8(edited[8].clone())
            .unwrap()
            .replace("\"status\":200", "\"status\":201")
            .into_bytes();
        let v1_line = br#"{"schema":"vakt.audit/1","seq":7,"prev":"0000000000000000000000000000000000000000000000000000000000000000","id":"00000000-0000-4000-8000-000000000001","time":"2025-01-01T00:00:00.000Z","direction":"inbound","decision":"allow","reason":"rule_matched"}"#.to_vec();
        struct Row<'a> {
            name: &'a str,
            checkpoint: Option<&'a Checkpoint>,
            tail: Vec<Vec<u8>>,
            key: &'a ChainKey,
            start: Option<EpochStart>,
            next_seq: u64,
            epoch: u64,
        }
        let rows = [
            Row {
                name: "a new trail",
                checkpoint: None,
                tail: vec![],
                key: &key,
                start: None,
                next_seq: 1,
                epoch: 1,
            },
            Row {
                name: "normal restart from the checkpointed line",
                checkpoint: Some(&cp),
                tail: lines[5..].to_vec(),
                key: &key,
                start: None,
                next_seq: 11,
                epoch: 1,
            },
            Row {
                name: "files deleted",
                checkpoint: Some(&cp),
                tail: vec![],
                key: &key,
                start: Some(EpochStart::FilesMissing),
                next_seq: 7,
                epoch: 2,
            },
            Row {
                name: "tail cut before the checkpoint",
                checkpoint: Some(&cp),
                tail: lines[3..4].to_vec(),
                key: &key,
                start: Some(EpochStart::Truncated),
                next_seq: 7,
                epoch: 2,
            },
            Row {
                name: "a line after the checkpoint edited",
                checkpoint: Some(&cp),
                tail: edited[5..].to_vec(),
                key: &key,
                start: Some(EpochStart::HeadMismatch),
                next_seq: 11,
                epoch: 2,
            },
            Row {
                name: "lines after the checkpoint under another key",
                checkpoint: Some(&cp),
                tail: lines[5..].to_vec(),
                key: &other_key,
                start: Some(EpochStart::HeadMismatch),
                next_seq: 11,
                epoch: 2,
            },
            Row {
                name: "checkpointed line replaced",
                checkpoint: Some(&cp),
                tail: lines[6..].to_vec(),
                key: &key,
                start: Some(EpochStart::HeadMismatch),
                next_seq: 11,
                epoch: 2,
            },
            Row {
                name: "no checkpoint for existing lines",
                checkpoint: None,
                tail: lines[9..].to_vec(),
                key: &key,
                start: Some(EpochStart::CheckpointMissing),
                next_seq: 11,
                epoch: 2,
            },
            Row {
                name: "a v1 trail upgraded",
                checkpoint: None,
                tail: vec![v1_line],
                key: &key,
                start: Some(EpochStart::UpgradedFromV1),
                next_seq: 8,
                epoch: 1,
            },
            Row {
                name: "garbage at the end",
                checkpoint: Some(&cp),
                tail: vec![b"garbage".to_vec()],
                key: &key,
                start: Some(EpochStart::HeadMismatch),
                next_seq: 7,
                epoch: 2,
            },
        ];
        for row in rows {
            let r = resume(row.checkpoint, &row.tail, row.key);
            assert_eq!(start_of(&r), row.start, "{}", row.name);
            assert_eq!(r.position.next_seq, row.next_seq, "{}", row.name);
            assert_eq!(r.position.epoch, row.epoch, "{}", row.name);
            if row.start.is_some() {
                assert_eq!(r.position.prev, ChainHash::ZERO, "{}", row.name);
            }
        }
        // The note names the gap.
        let r = resume(Some(&cp), &lines[3..4], &key);
        let note = r.note.unwrap();
        assert_eq!(
            (note.prev_epoch, note.checkpoint_seq, note.found_seq),
            (Some(1), Some(6), Some(4))
        );
    }

    #[test]
    fn checkpoint_file_appends_and_reads_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoints.jsonl");
        assert_eq!(CheckpointFile::last(&path).unwrap(), None);
        let key = test_key();
        let mut w = ChainWriter::new(key.clone());
        let mut file = CheckpointFile::new(path.clone());
        let mut written = Vec::new();
        for n in 1..=3 {
            w.seal(event(n));
            let c = Checkpoint::of(&w.position(), key.id()).unwrap();
            file.append(&c).unwrap();
            written.push(c);
        }
        assert_eq!(
            CheckpointFile::last(&path).unwrap().as_ref(),
            written.last()
        );
        // A torn append is passed over.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"type\":\"vakt.audit.checkpoint\",\"ep")
            .unwrap();
        assert_eq!(
            CheckpointFile::last(&path).unwrap().as_ref(),
            written.last()
        );
        assert_eq!(CheckpointFile::read_all(&path).unwrap(), written);
        let line = written[0].to_line();
        assert!(
            line.starts_with("{\"type\":\"vakt.audit.checkpoint\""),
            "{line}"
        );
        assert!(!line.contains("[3,"), "no key material: {line}");
    }
}

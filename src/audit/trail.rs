//! `vakt audit verify --key KEY --checkpoints FILE`: every line of a trail of either schema,
//! and every problem with its `seq` range: edited lines (a mac that does not verify, a broken
//! link), gaps, epochs vakt started without being able to vouch for what came before, a tail
//! cut off after a checkpoint, a line that differs from its checkpoint, lines under a key that
//! was not given or does not verify. Key-id changes, rotated-out files and the schema, epoch and
//! key of each segment are reported as information. A trail with only `vakt.audit/1` lines and
//! no checkpoints is checked by [`super::verify::verify`] as before.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use super::chain::{
    ChainKey, EpochStart, FIRST_SEQ, REASON_FILE_ROTATED_OUT, SchemaVersion, SealedParts,
    parse_line,
};
use super::checkpoint::{CHECKPOINT_PREFIX, Checkpoint};
use super::fields::ChainHash;
use super::verify::{VerifyError, VerifyReport, verify};

/// Longest line read (events are far smaller).
const MAX_LINE: u64 = 1 << 20;

/// A verification key: with an id it verifies only lines of that id; without, it is tried on
/// lines of any id (the first id it verifies is then bound to it).
#[derive(Debug)]
pub struct VerifyKey {
    pub id: Option<String>,
    pub key: ChainKey,
}

/// What to verify with.
#[derive(Debug, Default)]
pub struct VerifyOptions {
    pub keys: Vec<VerifyKey>,
    /// The checkpoints recorded outside the audit volume, when given.
    pub checkpoints: Option<Vec<Checkpoint>>,
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FindingKind {
    /// A line changed after it was written (mac or link).
    Edited,
    /// Lines missing between two lines of an epoch.
    Gap,
    /// An epoch begun after a break (`problem`) or an upgrade from v1 (information).
    Epoch,
    /// Lines cut off at the end: a checkpoint names later lines.
    TruncatedTail,
    /// The line at a checkpointed `seq` is not the line checkpointed.
    CheckpointMismatch,
    /// Lines out of order, repeated, or a new chain started mid-trail.
    Reordered,
    /// Not a line of either schema, or incomplete.
    Unreadable,
    /// No key given for these lines' key id: their macs were not checked.
    UnknownKey,
    /// The key given for these lines verifies none of them.
    WrongKey,
    /// The trail starts after seq 1 and no rotation record covers the lines before.
    MissingStart,
    /// The chain key id changes (information: a key rotation).
    KeyChange,
    /// The lines before the trail's first line were rotated out, as recorded (information).
    RotatedOut,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Edited => "edited",
            Self::Gap => "gap",
            Self::Epoch => "epoch",
            Self::TruncatedTail => "truncated_tail",
            Self::CheckpointMismatch => "checkpoint_mismatch",
            Self::Reordered => "reordered",
            Self::Unreadable => "unreadable",
            Self::UnknownKey => "unknown_key",
            Self::WrongKey => "wrong_key",
            Self::MissingStart => "missing_start",
            Self::KeyChange => "key_change",
            Self::RotatedOut => "rotated_out",
        }
    }
}

/// One finding: what, where (`seq` range, file and line), whether it is a problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: FindingKind,
    pub seqs: Option<(u64, u64)>,
    pub at: Option<(PathBuf, u64)>,
    pub problem: bool,
    /// A sentence for people: never echoes line content or key material.
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.seqs {
            Some((a, b)) if a == b => write!(f, "seq {a}: ")?,
            Some((a, b)) => write!(f, "seq {a} to {b}: ")?,
            None => {}
        }
        write!(f, "{}: {}", self.kind.as_str(), self.detail)?;
        if let Some((file, line)) = &self.at {
            write!(f, " ({} line {line})", file.display())?;
        }
        Ok(())
    }
}

/// A run of lines with one schema, epoch and key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub schema: SchemaVersion,
    /// 0 for `vakt.audit/1`.
    pub epoch: u64,
    pub key_id: Option<String>,
    pub first_seq: u64,
    pub last_seq: u64,
    pub events: u64,
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.schema.as_str())?;
        if self.schema == SchemaVersion::V2 {
            write!(
                f,
                " epoch {} key {}",
                self.epoch,
                self.key_id.as_deref().unwrap_or("-")
            )?;
        }
        write!(
            f,
            ": seq {} to {} ({} event{})",
            self.first_seq,
            self.last_seq,
            self.events,
            if self.events == 1 { "" } else { "s" }
        )
    }
}

/// The result of [`verify_trail`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrailReport {
    pub files: usize,
    pub events: u64,
    pub segments: Vec<Segment>,
    pub findings: Vec<Finding>,
    pub checkpoints: usize,
    /// The mac (v2) or SHA-256 (v1) of the last line.
    pub last_link: Option<ChainHash>,
    /// For a trail of `vakt.audit/1` lines alone, checked as before.
    pub v1: Option<VerifyReport>,
}

impl TrailReport {
    pub fn problems(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.problem)
    }

    pub fn is_intact(&self) -> bool {
        self.problems().next().is_none()
    }

    /// The findings of one kind.
    pub fn of_kind(&self, kind: FindingKind) -> Vec<&Finding> {
        self.findings.iter().filter(|f| f.kind == kind).collect()
    }
}

impl fmt::Display for TrailReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(v1) = &self.v1 {
            writeln!(f, "{v1}")?;
            return writeln!(f, "schema: vakt.audit/1 (SHA-256 links, no key)");
        }
        writeln!(
            f,
            "{} events in {} file{}, {} checkpoint{} given",
            self.events,
            self.files,
            if self.files == 1 { "" } else { "s" },
            self.checkpoints,
            if self.checkpoints == 1 { "" } else { "s" }
        )?;
        writeln!(f, "segments:")?;
        for s in &self.segments {
            writeln!(f, "  {s}")?;
        }
        let notes: Vec<&Finding> = self.findings.iter().filter(|f| !f.problem).collect();
        if !notes.is_empty() {
            writeln!(f, "notes:")?;
            for n in notes {
                writeln!(f, "  {n}")?;
            }
        }
        let problems: Vec<&Finding> = self.problems().collect();
        if problems.is_empty() {
            write!(f, "intact: {} events", self.events)?;
            if let Some(h) = &self.last_link {
                write!(f, "; last line mac {h}")?;
            }
            writeln!(f)
        } else {
            writeln!(f, "problems:")?;
            for p in &problems {
                writeln!(f, "  {p}")?;
            }
            writeln!(
                f,
                "BROKEN: {} problem{}",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            )
        }
    }
}

/// The previous line that was read as an event.
#[derive(Clone)]
struct Prev {
    seq: u64,
    epoch: u64,
    link: ChainHash,
    key_id: Option<String>,
    /// Its own mac did not verify (a broken link after it is the same edit).
    bad: bool,
}

/// Per key id: lines whose mac verified, and `seq`s of those that did not.
#[derive(Default)]
struct KeyStats {
    ok: u64,
    bad: Vec<u64>,
    unchecked: Vec<u64>,
    /// Where each bad `seq` is.
    at: HashMap<u64, (PathBuf, u64)>,
}

/// Check the trail in `paths` (rotated files oldest first, then the active one).
pub fn verify_trail(
    paths: &[PathBuf],
    options: &VerifyOptions,
) -> Result<TrailReport, VerifyError> {
    if paths.is_empty() {
        return Err(VerifyError::NoFiles);
    }
    if options.checkpoints.is_none() && only_v1(paths)? {
        let mut report = TrailReport {
            files: paths.len(),
            events: 0,
            segments: Vec::new(),
            findings: Vec::new(),
            checkpoints: 0,
            last_link: None,
            v1: None,
        };
        match verify(paths) {
            Ok(v1) => {
                report.events = v1.events;
                report.last_link = v1.last_hash;
                report.v1 = Some(v1);
            }
            Err(VerifyError::Broken(b)) => report.findings.push(Finding {
                kind: FindingKind::Edited,
                seqs: None,
                at: Some((b.file.clone(), b.line)),
                problem: true,
                detail: format!("vakt.audit/1 chain {}: {}", b.kind.as_str(), b.detail),
            }),
            Err(e) => return Err(e),
        }
        return Ok(report);
    }
    Walk::new(options).run(paths)
}

/// Do the files hold `vakt.audit/1` lines only? (After an upgrade, keyed lines follow them in
/// the same file.)
fn only_v1(paths: &[PathBuf]) -> Result<bool, VerifyError> {
    for path in paths {
        let io_err = |source| VerifyError::Io {
            path: path.clone(),
            source,
        };
        let mut reader = BufReader::new(File::open(path).map_err(io_err)?);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader
                .by_ref()
                .take(MAX_LINE + 1)
                .read_until(b'\n', &mut line)
                .map_err(io_err)?;
            if n == 0 {
                break;
            }
            if SchemaVersion::of_line(&line) == Some(SchemaVersion::V2) {
                return Ok(false);
            }
            if line.last() != Some(&b'\n') {
                // The rest of an overlong line.
                reader.read_until(b'\n', &mut Vec::new()).map_err(io_err)?;
            }
        }
    }
    Ok(true)
}

struct Walk<'a> {
    options: &'a VerifyOptions,
    /// Key id → index into `options.keys`.
    bound: HashMap<String, usize>,
    stats: BTreeMap<String, KeyStats>,
    checkpoints: HashMap<u64, Vec<&'a Checkpoint>>,
    report: TrailReport,
    prev: Option<Prev>,
    first: Option<(u64, ChainHash)>,
    /// (first seq, last seq, the seq of the record) of rotated-out files.
    rotated: Vec<(Option<u64>, Option<u64>, u64)>,
}

impl<'a> Walk<'a> {
    fn new(options: &'a VerifyOptions) -> Self {
        let mut checkpoints: HashMap<u64, Vec<&Checkpoint>> = HashMap::new();
        for c in options.checkpoints.iter().flatten() {
            checkpoints.entry(c.seq).or_default().push(c);
        }
        let mut bound = HashMap::new();
        for (i, k) in options.keys.iter().enumerate() {
            if let Some(id) = &k.id {
                bound.insert(id.clone(), i);
            }
        }
        Self {
            options,
            bound,
            stats: BTreeMap::new(),
            checkpoints,
            report: TrailReport {
                files: 0,
                events: 0,
                segments: Vec::new(),
                findings: Vec::new(),
                checkpoints: options.checkpoints.as_ref().map_or(0, Vec::len),
                last_link: None,
                v1: None,
            },
            prev: None,
            first: None,
            rotated: Vec::new(),
        }
    }

    fn finding(
        &mut self,
        kind: FindingKind,
        seqs: Option<(u64, u64)>,
        at: Option<(PathBuf, u64)>,
        problem: bool,
        detail: String,
    ) {
        self.report.findings.push(Finding {
            kind,
            seqs,
            at,
            problem,
            detail,
        });
    }

    fn run(mut self, paths: &[PathBuf]) -> Result<TrailReport, VerifyError> {
        self.report.files = paths.len();
        for path in paths {
            let io_err = |source| VerifyError::Io {
                path: path.clone(),
                source,
            };
            let mut reader = BufReader::new(File::open(path).map_err(io_err)?);
            let mut n = 0u64;
            loop {
                let mut raw = Vec::new();
                let read = reader
                    .by_ref()
                    .take(MAX_LINE + 1)
                    .read_until(b'\n', &mut raw)
                    .map_err(io_err)?;
                if read == 0 {
                    break;
                }
                n += 1;
                let terminated = raw.last() == Some(&b'\n');
                if terminated {
                    raw.pop();
                }
                self.line(path, n, &raw, terminated);
            }
        }
        self.finish();
        Ok(self.report)
    }

    /// The key index for `id` checking `parts`; `None` when no key verifies it.
    fn key_for(&mut self, id: &str, parts: &SealedParts<'_>, prev: &ChainHash) -> Option<bool> {
        if let Some(&i) = self.bound.get(id) {
            return Some(self.options.keys[i].key.verifies(parts, prev));
        }
        let unbound: Vec<usize> = (0..self.options.keys.len())
            .filter(|i| self.options.keys[*i].id.is_none())
            .collect();
        if unbound.is_empty() {
            return None;
        }
        for i in unbound {
            if self.options.keys[i].key.verifies(parts, prev) {
                self.bound.insert(id.to_owned(), i);
                return Some(true);
            }
        }
        Some(false)
    }

    fn line(&mut self, path: &Path, n: u64, raw: &[u8], terminated: bool) {
        let at = || Some((path.to_path_buf(), n));
        if raw.starts_with(CHECKPOINT_PREFIX.as_bytes()) {
            // A checkpoint line from a stdout capture: not part of the chain.
            return;
        }
        if !terminated {
            let after = self.prev.as_ref().map(|p| p.seq + 1);
            self.finding(
                FindingKind::Unreadable,
                after.map(|s| (s, s)),
                at(),
                true,
                "the last line is incomplete: the file was cut in the middle of a line".into(),
            );
            return;
        }
        let parsed = match parse_line(raw) {
            Ok(p) => p,
            Err(e) => {
                let after = self.prev.as_ref().map(|p| p.seq + 1);
                self.finding(
                    FindingKind::Unreadable,
                    after.map(|s| (s, s)),
                    at(),
                    true,
                    format!("{e}: edited or corrupted"),
                );
                if let Some(p) = self.prev.as_mut() {
                    // The next line cannot link to what was read here.
                    p.bad = true;
                }
                return;
            }
        };
        let e = &parsed.event;
        let seq = e.seq;
        let key_id = e.chain_key_id.as_ref().map(|k| k.as_str().to_owned());
        let link = parsed.link(raw);
        self.report.events += 1;

        // The line's own mac.
        let mut bad = false;
        if let (Some(id), Some(parts)) = (&key_id, SealedParts::split(raw)) {
            let verdict = self.key_for(id, &parts, &e.prev);
            let stats = self.stats.entry(id.clone()).or_default();
            match verdict {
                Some(true) => stats.ok += 1,
                Some(false) => {
                    stats.bad.push(seq);
                    stats.at.insert(seq, (path.to_path_buf(), n));
                    bad = true;
                }
                None => stats.unchecked.push(seq),
            }
        }

        // Checkpoints naming this seq.
        if let Some(cps) = self.checkpoints.get(&seq) {
            let differs = cps
                .iter()
                .any(|c| c.epoch != e.epoch || Some(c.head) != parsed.mac);
            if differs {
                self.finding(
                    FindingKind::CheckpointMismatch,
                    Some((seq, seq)),
                    at(),
                    true,
                    "this line is not the line the checkpoint recorded for its seq: replaced or edited".into(),
                );
            }
        }

        // Rotation records.
        if e.reason.as_str() == REASON_FILE_ROTATED_OUT
            && let Some(note) = &e.chain
        {
            self.rotated
                .push((note.rotated_first_seq, note.rotated_last_seq, seq));
        }

        // The link to the line before.
        let starts_epoch = parsed.schema == SchemaVersion::V2
            && e.prev == ChainHash::ZERO
            && e.chain.as_ref().is_some_and(|c| c.epoch_start.is_some());
        match self.prev.clone() {
            None => self.first = Some((seq, e.prev)),
            Some(p) => {
                let expected = p.seq.saturating_add(1);
                // The first keyed line after `vakt.audit/1` lines links to nothing before it.
                let after_v1 = p.epoch == 0 && e.epoch > 0;
                let link_checked = !(p.bad || bad || after_v1);
                if starts_epoch && e.epoch > p.epoch {
                    // Judged below with the epoch note.
                } else if e.prev == ChainHash::ZERO && !after_v1 {
                    self.finding(
                        FindingKind::Reordered,
                        Some((seq, seq)),
                        at(),
                        true,
                        format!(
                            "starts a new chain (prev is zeros) after seq {} without an epoch start",
                            p.seq
                        ),
                    );
                } else if seq <= p.seq {
                    self.finding(
                        FindingKind::Reordered,
                        Some((seq, seq)),
                        at(),
                        true,
                        format!(
                            "seq {seq} after seq {}: inserted, repeated or reordered",
                            p.seq
                        ),
                    );
                } else if seq > expected {
                    self.finding(
                        FindingKind::Gap,
                        Some((expected, seq - 1)),
                        at(),
                        true,
                        format!(
                            "{} line{} missing before seq {seq} (deleted; no epoch start or rotation record explains them)",
                            seq - expected,
                            if seq - expected == 1 { "" } else { "s" }
                        ),
                    );
                } else if e.prev != p.link && link_checked {
                    self.finding(
                        FindingKind::Edited,
                        Some((p.seq, seq)),
                        at(),
                        true,
                        format!(
                            "seq {seq} does not link to seq {}: one of the two was edited or replaced",
                            p.seq
                        ),
                    );
                }
                if p.key_id.is_some() && key_id.is_some() && p.key_id != key_id {
                    self.finding(
                        FindingKind::KeyChange,
                        Some((seq, seq)),
                        at(),
                        false,
                        format!(
                            "chain key id changes from {} to {}",
                            p.key_id.as_deref().unwrap_or("-"),
                            key_id.as_deref().unwrap_or("-")
                        ),
                    );
                }
            }
        }
        if starts_epoch && let Some(note) = &e.chain {
            let start = note.epoch_start.unwrap_or(EpochStart::HeadMismatch);
            let missing = match (note.found_seq, note.checkpoint_seq) {
                (found, Some(cp)) if found.unwrap_or(0) < cp => {
                    format!(
                        "; seq {} to {cp} were checkpointed and are gone",
                        found.unwrap_or(0) + 1
                    )
                }
                _ => String::new(),
            };
            let gap = self
                .prev
                .as_ref()
                .map(|p| p.seq + 1)
                .filter(|from| *from < seq)
                .map(|from| (from, seq - 1));
            self.finding(
                FindingKind::Epoch,
                Some(gap.unwrap_or((seq, seq))),
                at(),
                start.is_break(),
                format!(
                    "epoch {} starts at seq {seq} ({}): previous epoch {}, last checkpointed seq {}, last seq found {}{missing}",
                    e.epoch,
                    start.as_str(),
                    opt(note.prev_epoch),
                    opt(note.checkpoint_seq),
                    opt(note.found_seq),
                ),
            );
        }

        // Segments.
        let epoch = e.epoch;
        let same =
            self.report.segments.last().is_some_and(|s| {
                s.schema == parsed.schema && s.epoch == epoch && s.key_id == key_id
            });
        if same {
            if let Some(s) = self.report.segments.last_mut() {
                s.last_seq = seq;
                s.events += 1;
            }
        } else {
            self.report.segments.push(Segment {
                schema: parsed.schema,
                epoch,
                key_id: key_id.clone(),
                first_seq: seq,
                last_seq: seq,
                events: 1,
            });
        }
        self.report.last_link = Some(link);
        self.prev = Some(Prev {
            seq,
            epoch,
            link,
            key_id,
            bad,
        });
    }

    fn finish(&mut self) {
        // Macs, per key id.
        let stats = std::mem::take(&mut self.stats);
        for (id, s) in stats {
            if !s.unchecked.is_empty() {
                let (a, b) = (s.unchecked[0], s.unchecked[s.unchecked.len() - 1]);
                self.finding(
                    FindingKind::UnknownKey,
                    Some((a, b)),
                    None,
                    true,
                    format!(
                        "{} line{} under chain key id {id} not verified: give its key with --key",
                        s.unchecked.len(),
                        if s.unchecked.len() == 1 { "" } else { "s" }
                    ),
                );
            }
            if s.ok == 0 && !s.bad.is_empty() {
                let (a, b) = (s.bad[0], s.bad[s.bad.len() - 1]);
                self.finding(
                    FindingKind::WrongKey,
                    Some((a, b)),
                    None,
                    true,
                    format!(
                        "the key given for chain key id {id} verifies none of its {} lines: wrong key file{}",
                        s.bad.len(),
                        if id == "ephemeral" {
                            " (a per-process key: these lines can never be verified)"
                        } else {
                            ""
                        }
                    ),
                );
                continue;
            }
            for (a, b) in ranges(&s.bad) {
                let at = s.at.get(&a).cloned();
                self.finding(
                    FindingKind::Edited,
                    Some((a, b)),
                    at,
                    true,
                    "the mac does not verify: the line was edited after it was written".into(),
                );
            }
        }
        // The start of the trail.
        if let Some((first, prev)) = self.first
            && !(first == FIRST_SEQ && prev == ChainHash::ZERO)
        {
            let covered = self
                .rotated
                .iter()
                .find(|(_, last, _)| *last == Some(first - 1));
            match covered {
                Some((from, _, at)) => {
                    let from = from.map_or_else(|| "?".to_owned(), |f| f.to_string());
                    self.finding(
                        FindingKind::RotatedOut,
                        Some((FIRST_SEQ, first - 1)),
                        None,
                        false,
                        format!(
                            "rotated out: the record at seq {at} names the file of seq {from} to {} (earlier seqs were in files rotated out before it)",
                            first - 1
                        ),
                    );
                }
                None if prev == ChainHash::ZERO => {}
                None => self.finding(
                    FindingKind::MissingStart,
                    Some((FIRST_SEQ, first - 1)),
                    None,
                    true,
                    "the trail starts here, and no rotation record covers the lines before: deleted, or files not given (give rotated files oldest first)".into(),
                ),
            }
        }
        // The end of the trail.
        let last = self.prev.as_ref().map_or(0, |p| p.seq);
        if let Some(newest) = self
            .options
            .checkpoints
            .iter()
            .flatten()
            .max_by_key(|c| c.seq)
            && newest.seq > last
        {
            self.finding(
                FindingKind::TruncatedTail,
                Some((last + 1, newest.seq)),
                None,
                true,
                format!(
                    "the trail ends at seq {last}, but epoch {} was checkpointed at seq {} ({}): lines cut off at the end",
                    newest.epoch, newest.seq, newest.time
                ),
            );
        }
        self.report
            .findings
            .sort_by_key(|f| (f.seqs.map_or(0, |s| s.0), f.kind));
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// Consecutive runs of sorted `seqs`.
fn ranges(seqs: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &s in seqs {
        match out.last_mut() {
            Some((_, b)) if *b + 1 == s => *b = s,
            _ => out.push((s, s)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::audit::chain::{ChainNote, ChainPosition, ChainWriter, note_event, parse_line};
    use crate::audit::testutil::{event, test_key, v1_lines};

    fn options(keys: &[(&str, u8)], checkpoints: Option<Vec<Checkpoint>>) -> VerifyOptions {
        VerifyOptions {
            keys: keys
                .iter()
                .map(|(id, byte)| VerifyKey {
                    id: None,
                    key: ChainKey::new(id, &[*byte; 32]).unwrap(),
                })
                .collect(),
            checkpoints,
        }
    }

    /// The test key (`t1`, bytes 3).
    fn keyed() -> VerifyOptions {
        options(&[("t1", 3)], None)
    }

    fn save(path: &Path, lines: &[String]) {
        fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    /// 100 lines with a checkpoint after line 80.
    fn trail(dir: &Path) -> (PathBuf, Vec<String>, Checkpoint) {
        let key = test_key();
        let mut w = ChainWriter::new(key.clone());
        let mut lines = Vec::new();
        let mut cp = None;
        for n in 1..=100 {
            lines.push(w.seal(event(n)).text);
            if n == 80 {
                cp = Checkpoint::of(&w.position(), key.id());
            }
        }
        let path = dir.join("audit.log");
        save(&path, &lines);
        (path, lines, cp.unwrap())
    }

    fn kinds(r: &TrailReport) -> Vec<(FindingKind, Option<(u64, u64)>)> {
        r.problems().map(|f| (f.kind, f.seqs)).collect()
    }

    #[test]
    fn intact_trail_with_its_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _, cp) = trail(dir.path());
        let r = verify_trail(&[path], &options(&[("t1", 3)], Some(vec![cp]))).unwrap();
        assert!(r.is_intact(), "{r}");
        assert_eq!(r.events, 100);
        assert_eq!(r.segments.len(), 1);
        let text = r.to_string();
        assert!(
            text.contains("vakt.audit/2 epoch 1 key t1: seq 1 to 100 (100 events)"),
            "{text}"
        );
        assert!(text.contains("intact: 100 events"), "{text}");
    }

    #[test]
    fn an_edited_line_is_named_by_its_seq() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut lines, _) = trail(dir.path());
        // A status changed: valid JSON, prev and seq untouched. A plain hash chain would need
        // only the next line's prev rewritten; the mac cannot be recomputed without the key.
        let edited = lines[40].replace("\"status\":200", "\"status\":403");
        assert_ne!(edited, lines[40]);
        lines[40] = edited;
        save(&path, &lines);
        let r = verify_trail(std::slice::from_ref(&path), &keyed()).unwrap();
        assert_eq!(kinds(&r), [(FindingKind::Edited, Some((41, 41)))], "{r}");
        let f = r.problems().next().unwrap();
        assert_eq!(f.at, Some((path, 41)));
        assert!(r.to_string().contains("seq 41: edited"), "{r}");
    }

    #[test]
    fn a_tail_cut_at_a_line_boundary_after_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (path, lines, cp) = trail(dir.path());
        save(&path, &lines[..70]);
        // Without the checkpoint, a clean cut cannot be seen.
        let r = verify_trail(std::slice::from_ref(&path), &keyed()).unwrap();
        assert!(r.is_intact(), "{r}");
        let r = verify_trail(&[path], &options(&[("t1", 3)], Some(vec![cp]))).unwrap();
        assert_eq!(
            kinds(&r),
            [(FindingKind::TruncatedTail, Some((71, 80)))],
            "{r}"
        );
        assert!(
            r.to_string().contains("seq 71 to 80: truncated_tail"),
            "{r}"
        );
    }

    #[test]
    fn a_replaced_checkpointed_line_and_a_deleted_run() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut lines, cp) = trail(dir.path());
        // Lines 80-100 rewritten from line 79 on by someone without the key but with another
        // one: the checkpointed line differs, and no mac verifies there.
        let forger = Arc::new(ChainKey::new("t1", &[8; 32]).unwrap());
        let head = parse_line(lines[78].as_bytes()).unwrap();
        let mut w = ChainWriter::resume(ChainPosition::after(&head).unwrap(), forger);
        for (i, n) in (80..=100).enumerate() {
            lines[79 + i] = w.seal(event(n + 1000)).text;
        }
        lines.drain(9..12);
        save(&path, &lines);
        let r = verify_trail(&[path], &options(&[("t1", 3)], Some(vec![cp]))).unwrap();
        assert_eq!(
            kinds(&r),
            [
                (FindingKind::Gap, Some((10, 12))),
                (FindingKind::Edited, Some((80, 100))),
                (FindingKind::CheckpointMismatch, Some((80, 80))),
            ],
            "{r}"
        );
    }

    #[test]
    fn a_wrong_key_fails_clearly_and_no_key_is_not_intact() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _, _) = trail(dir.path());
        let r = verify_trail(std::slice::from_ref(&path), &options(&[("t1", 9)], None)).unwrap();
        assert_eq!(kinds(&r), [(FindingKind::WrongKey, Some((1, 100)))], "{r}");
        assert!(r.to_string().contains("wrong key file"), "{r}");
        let r = verify_trail(&[path], &VerifyOptions::default()).unwrap();
        assert_eq!(
            kinds(&r),
            [(FindingKind::UnknownKey, Some((1, 100)))],
            "{r}"
        );
    }

    #[test]
    fn a_key_rotation_is_reported_and_both_keys_verify() {
        let dir = tempfile::tempdir().unwrap();
        let old = test_key();
        let new = Arc::new(ChainKey::new("t2", &[5; 32]).unwrap());
        let mut w = ChainWriter::new(old);
        let mut lines: Vec<String> = (1..=5).map(|n| w.seal(event(n)).text).collect();
        let mut w = ChainWriter::resume(w.position(), new);
        lines.extend((6..=9).map(|n| w.seal(event(n)).text));
        let path = dir.path().join("audit.log");
        save(&path, &lines);
        let both = options(&[("t1", 3), ("t2", 5)], None);
        let r = verify_trail(std::slice::from_ref(&path), &both).unwrap();
        assert!(r.is_intact(), "{r}");
        let changes = r.of_kind(FindingKind::KeyChange);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].seqs, Some((6, 6)));
        assert!(changes[0].detail.contains("from t1 to t2"), "{r}");
        assert_eq!(r.segments.len(), 2);
        // Only the old key: the new lines are not verified.
        let r = verify_trail(&[path], &keyed()).unwrap();
        assert_eq!(kinds(&r), [(FindingKind::WrongKey, Some((6, 9)))], "{r}");
    }

    #[test]
    fn epochs_rotation_and_gaps_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let key = test_key();
        // seq 1 to 10 were in a file rotation deleted (the record below says so): the first
        // kept line links to that file's last line.
        let mut lines: Vec<String> = Vec::new();
        let pos = ChainPosition {
            next_seq: 11,
            prev: ChainHash([1; 32]),
            epoch: 1,
        };
        let mut w = ChainWriter::resume(pos, key.clone());
        lines.extend((11..=20).map(|n| w.seal(event(n)).text));
        lines.push(
            w.seal(note_event(ChainNote {
                rotated_first_seq: Some(1),
                rotated_last_seq: Some(10),
                ..ChainNote::default()
            }))
            .text,
        );
        // Then a restart found the files cut back to seq 21 while seq 30 was checkpointed.
        let mut w = ChainWriter::resume(
            ChainPosition {
                next_seq: 31,
                prev: ChainHash::ZERO,
                epoch: 2,
            },
            key,
        );
        lines.push(
            w.seal(note_event(ChainNote {
                epoch_start: Some(EpochStart::Truncated),
                prev_epoch: Some(1),
                checkpoint_seq: Some(30),
                found_seq: Some(21),
                ..ChainNote::default()
            }))
            .text,
        );
        lines.extend((32..=35).map(|n| w.seal(event(n)).text));
        let path = dir.path().join("audit.log");
        save(&path, &lines);
        let r = verify_trail(std::slice::from_ref(&path), &keyed()).unwrap();
        let text = r.to_string();
        // The rotated-out start is a note; the epoch is a problem with its gap.
        assert_eq!(kinds(&r), [(FindingKind::Epoch, Some((22, 30)))], "{text}");
        let rotated = r.of_kind(FindingKind::RotatedOut);
        assert_eq!(rotated[0].seqs, Some((1, 10)), "{text}");
        assert!(!rotated[0].problem);
        assert!(
            text.contains("epoch 2 starts at seq 31 (truncated): previous epoch 1, last checkpointed seq 30, last seq found 21; seq 22 to 30 were checkpointed and are gone"),
            "{text}"
        );
        assert_eq!(r.segments.len(), 2, "{text}");
        // Without the rotation record, the missing start is a problem.
        lines.remove(10);
        save(&path, &lines);
        let r = verify_trail(&[path], &keyed()).unwrap();
        assert!(
            r.problems()
                .any(|f| f.kind == FindingKind::MissingStart && f.seqs == Some((1, 10))),
            "{r}"
        );
    }

    #[test]
    fn v1_trails_still_verify_and_v1_then_v2_is_two_segments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log.1");
        let old = v1_lines(1..=20);
        save(&path, &old);
        let r = verify_trail(std::slice::from_ref(&path), &VerifyOptions::default()).unwrap();
        assert!(r.is_intact(), "{r}");
        assert!(r.to_string().contains("intact: 20 events"), "{r}");
        assert!(r.to_string().contains("schema: vakt.audit/1"), "{r}");
        // An edit in a v1 trail is still found.
        let mut edited = old.clone();
        edited[4] = edited[4].replace("\"status\":200", "\"status\":201");
        let bad = dir.path().join("bad.log");
        save(&bad, &edited);
        let r = verify_trail(&[bad], &VerifyOptions::default()).unwrap();
        assert!(!r.is_intact());
        assert!(r.to_string().contains("line 5"), "{r}");
        // But whoever can write the files can re-hash every line after an edit, and a v1 trail
        // then verifies: what the keyed chain is for.
        let mut rehashed = old.clone();
        rehashed[4] = rehashed[4].replace("\"status\":200", "\"status\":201");
        for i in 5..rehashed.len() {
            let prev = crate::audit::line_hash(rehashed[i - 1].as_bytes()).to_hex();
            let at = rehashed[i].find("\"prev\":\"").unwrap() + 8;
            rehashed[i].replace_range(at..at + 64, &prev);
        }
        let forged = dir.path().join("forged.log");
        save(&forged, &rehashed);
        let r = verify_trail(&[forged], &VerifyOptions::default()).unwrap();
        assert!(r.is_intact(), "{r}");
        // The upgrade: the keyed chain starts after the v1 lines, in a new file.
        let mut w = ChainWriter::resume(
            ChainPosition {
                next_seq: 21,
                prev: ChainHash::ZERO,
                epoch: 1,
            },
            test_key(),
        );
        let mut new = vec![
            w.seal(note_event(ChainNote {
                epoch_start: Some(EpochStart::UpgradedFromV1),
                found_seq: Some(20),
                ..ChainNote::default()
            }))
            .text,
        ];
        new.extend((22..=30).map(|n| w.seal(event(n)).text));
        let active = dir.path().join("audit.log");
        save(&active, &new);
        let r = verify_trail(&[path.clone(), active], &keyed()).unwrap();
        assert!(r.is_intact(), "{r}");
        // vakt goes on writing into the file that holds the v1 lines.
        let same = dir.path().join("upgraded.log");
        save(&same, &[old.clone(), new.clone()].concat());
        let both = verify_trail(&[same], &keyed()).unwrap();
        assert!(both.is_intact(), "{both}");
        assert_eq!(both.segments, r.segments);
        let schemas: Vec<SchemaVersion> = r.segments.iter().map(|s| s.schema).collect();
        assert_eq!(schemas, [SchemaVersion::V1, SchemaVersion::V2]);
        assert!(r.to_string().contains("vakt.audit/1: seq 1 to 20"), "{r}");
        assert!(r.to_string().contains("upgraded_from_v1"), "{r}");
    }
}

//! `vakt audit verify FILE…` over a `vakt.audit/1` trail (keyed trails: [`super::trail`]): walk audit files in order (rotated files oldest first, then the
//! active one) and check every line: an audit event of this schema, `seq` +1, `prev` = SHA-256
//! of the previous line. Reports the first broken link, naming the file, the line and what most
//! likely happened (edited, deleted, reordered, inserted, truncated), or that all is intact.
//!
//! What a hash chain cannot show on its own: lines cut off at the very end of the stream, or
//! the first lines when the oldest file is missing. The report gives the first `seq` and the
//! last line's hash so they can be compared with what was recorded elsewhere.

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use super::chain::{FIRST_SEQ, line_hash};
use super::event::{AuditEvent, SCHEMA_V1 as SCHEMA};
use super::fields::ChainHash;

/// Longest line accepted (events are a few hundred bytes).
const MAX_LINE: u64 = 1 << 20;
/// How far ahead to look for a missing `seq` to tell reordering from deletion.
const LOOKAHEAD: usize = 4096;

/// All links held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub files: usize,
    pub events: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// The first line is a stream's first line (`prev` zeros). When false, earlier lines were
    /// rotated away or are in files not given.
    pub starts_at_genesis: bool,
    /// SHA-256 of the last line: compare with a copy kept elsewhere to detect lines cut off at
    /// the end.
    pub last_hash: Option<ChainHash>,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "intact: {} events in {} file{}",
            self.events,
            self.files,
            if self.files == 1 { "" } else { "s" }
        )?;
        if let (Some(first), Some(last)) = (self.first_seq, self.last_seq) {
            write!(f, " (seq {first} to {last}")?;
            if !self.starts_at_genesis {
                write!(
                    f,
                    "; the chain starts after seq 1: earlier lines were rotated away or are in files not given"
                )?;
            }
            write!(f, ")")?;
        }
        if let Some(h) = &self.last_hash {
            write!(f, "; last line sha256 {h}")?;
        }
        Ok(())
    }
}

/// What the first broken link most likely is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakKind {
    /// Not JSON, or not a valid event.
    Unparseable,
    /// An event of another schema version.
    WrongSchema,
    /// The last line of a file is incomplete (no newline).
    Truncated,
    /// The line's bytes changed after it was written (hash mismatch).
    Edited,
    /// Lines are missing before this one (sequence gap).
    Deleted,
    /// Lines are out of order.
    Reordered,
    /// A line that was not written by the stream (repeats or goes back in sequence, or starts
    /// a new chain mid-stream).
    Inserted,
}

impl BreakKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unparseable => "unparseable",
            Self::WrongSchema => "wrong_schema",
            Self::Truncated => "truncated",
            Self::Edited => "edited",
            Self::Deleted => "deleted",
            Self::Reordered => "reordered",
            Self::Inserted => "inserted",
        }
    }
}

/// The first broken link: `file`, `line` (1-based) and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    pub file: PathBuf,
    pub line: u64,
    pub kind: BreakKind,
    /// A sentence for people: never echoes line content.
    pub detail: String,
}

impl fmt::Display for BrokenLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "broken at {}:{}: {}",
            self.file.display(),
            self.line,
            self.detail
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("no audit files given")]
    NoFiles,
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Broken(BrokenLink),
}

impl VerifyError {
    /// The broken link, if that is what this is.
    pub fn broken_link(&self) -> Option<&BrokenLink> {
        match self {
            Self::Broken(b) => Some(b),
            _ => None,
        }
    }
}

/// One line as read.
struct Item {
    file: usize,
    line: u64,
    hash: ChainHash,
    terminated: bool,
    parsed: Result<(u64, ChainHash), (BreakKind, String)>,
}

fn parse(raw: &[u8]) -> Result<(u64, ChainHash), (BreakKind, String)> {
    match serde_json::from_slice::<AuditEvent>(raw) {
        Ok(e) => Ok((e.seq, e.prev)),
        Err(e) => {
            // Name the problem without echoing the line's content.
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(raw) {
                let schema = v.get("schema").and_then(|s| s.as_str());
                if schema.is_some_and(|s| s != SCHEMA) {
                    return Err((
                        BreakKind::WrongSchema,
                        format!("not a {SCHEMA} event (schema tag differs)"),
                    ));
                }
                Err((
                    BreakKind::Unparseable,
                    format!(
                        "JSON but not a valid {SCHEMA} event (problem at column {}): edited or corrupted",
                        e.column()
                    ),
                ))
            } else {
                Err((
                    BreakKind::Unparseable,
                    format!(
                        "not valid JSON (column {}): edited or corrupted",
                        e.column()
                    ),
                ))
            }
        }
    }
}

/// Lines of all files in order, with lookahead.
struct Lines<'a> {
    paths: &'a [PathBuf],
    file: usize,
    reader: Option<BufReader<File>>,
    line: u64,
    ahead: VecDeque<Item>,
    done: bool,
}

impl<'a> Lines<'a> {
    fn new(paths: &'a [PathBuf]) -> Self {
        Self {
            paths,
            file: 0,
            reader: None,
            line: 0,
            ahead: VecDeque::new(),
            done: false,
        }
    }

    fn read(&mut self) -> Result<Option<Item>, VerifyError> {
        loop {
            if self.done {
                return Ok(None);
            }
            let Some(path) = self.paths.get(self.file) else {
                self.done = true;
                return Ok(None);
            };
            let io_err = |source| VerifyError::Io {
                path: path.clone(),
                source,
            };
            if self.reader.is_none() {
                self.reader = Some(BufReader::new(File::open(path).map_err(io_err)?));
                self.line = 0;
            }
            let Some(reader) = self.reader.as_mut() else {
                continue;
            };
            let mut raw = Vec::new();
            let n = reader
                .by_ref()
                .take(MAX_LINE + 1)
                .read_until(b'\n', &mut raw)
                .map_err(io_err)?;
            if n == 0 {
                self.reader = None;
                self.file += 1;
                continue;
            }
            self.line += 1;
            let terminated = raw.last() == Some(&b'\n');
            if terminated {
                raw.pop();
            }
            let parsed = if raw.len() as u64 > MAX_LINE {
                // Skip the rest of an overlong line.
                let mut rest = Vec::new();
                reader.read_until(b'\n', &mut rest).map_err(io_err)?;
                Err((BreakKind::Unparseable, "line longer than 1 MiB".to_owned()))
            } else {
                parse(&raw)
            };
            return Ok(Some(Item {
                file: self.file,
                line: self.line,
                hash: line_hash(&raw),
                terminated: terminated || raw.len() as u64 > MAX_LINE,
                parsed,
            }));
        }
    }

    fn next(&mut self) -> Result<Option<Item>, VerifyError> {
        match self.ahead.pop_front() {
            Some(item) => Ok(Some(item)),
            None => self.read(),
        }
    }

    /// The item `k` places ahead of the last one returned (0 = the next).
    fn peek(&mut self, k: usize) -> Result<Option<&Item>, VerifyError> {
        while self.ahead.len() <= k {
            match self.read()? {
                Some(item) => self.ahead.push_back(item),
                None => return Ok(None),
            }
        }
        Ok(self.ahead.get(k))
    }
}

/// Where a line is, for messages.
#[derive(Clone, Copy)]
struct Seen {
    file: usize,
    line: u64,
    seq: u64,
    hash: ChainHash,
}

/// Check the chain over `paths`, in the order given (rotated files oldest first).
pub fn verify(paths: &[PathBuf]) -> Result<VerifyReport, VerifyError> {
    if paths.is_empty() {
        return Err(VerifyError::NoFiles);
    }
    let broken = |file: usize, line: u64, kind: BreakKind, detail: String| {
        VerifyError::Broken(BrokenLink {
            file: paths.get(file).cloned().unwrap_or_default(),
            line,
            kind,
            detail,
        })
    };
    let mut lines = Lines::new(paths);
    let mut report = VerifyReport {
        files: paths.len(),
        events: 0,
        first_seq: None,
        last_seq: None,
        starts_at_genesis: false,
        last_hash: None,
    };
    // The last two lines that passed.
    let mut last: Option<Seen> = None;
    let mut before_last: Option<Seen> = None;
    while let Some(cur) = lines.next()? {
        let n = cur.line;
        let (seq, prev) = match &cur.parsed {
            Ok(v) => *v,
            Err(_) if !cur.terminated => {
                return Err(broken(
                    cur.file,
                    n,
                    BreakKind::Truncated,
                    format!("line {n} is incomplete: the file was truncated"),
                ));
            }
            Err((kind, why)) => return Err(broken(cur.file, n, *kind, format!("line {n}: {why}"))),
        };
        if !cur.terminated {
            return Err(broken(
                cur.file,
                n,
                BreakKind::Truncated,
                format!("line {n} has no newline: the file was truncated"),
            ));
        }
        let here = Seen {
            file: cur.file,
            line: n,
            seq,
            hash: cur.hash,
        };
        let Some(p) = last else {
            report.starts_at_genesis = prev == ChainHash::ZERO;
            if report.starts_at_genesis && seq != FIRST_SEQ {
                return Err(broken(
                    cur.file,
                    n,
                    BreakKind::Edited,
                    format!(
                        "sequence gap at line {n}: the stream starts with seq {seq}, expected {FIRST_SEQ}"
                    ),
                ));
            }
            report.first_seq = Some(seq);
            report.events = 1;
            last = Some(here);
            continue;
        };
        let expected = p.seq.saturating_add(1);
        let link_ok = prev == p.hash;
        let hint = if n == 1 && cur.file > 0 {
            " (or the files are not in order: give rotated files oldest first)"
        } else {
            ""
        };
        if prev == ChainHash::ZERO {
            return Err(broken(
                cur.file,
                n,
                BreakKind::Inserted,
                format!(
                    "hash mismatch at line {n}: it starts a new chain (prev is zeros) in the middle of the stream{hint}"
                ),
            ));
        }
        if seq == expected && link_ok {
            report.events += 1;
            before_last = last;
            last = Some(here);
            continue;
        }
        if seq == expected {
            // The link to the previous line is broken: the previous line changed, or this
            // line's own `prev` did. The next line tells which: it still links to this line
            // only if this line is as written.
            let next_links_here = match lines.peek(0)? {
                Some(next) => next.parsed.as_ref().is_ok_and(|(_, np)| *np == cur.hash),
                None => true,
            };
            return Err(if next_links_here {
                broken(
                    p.file,
                    p.line,
                    BreakKind::Edited,
                    format!(
                        "hash mismatch at line {}: line {} was edited (its hash no longer matches prev in {})",
                        p.line,
                        p.line,
                        describe(paths, p.file, cur.file, n)
                    ),
                )
            } else {
                broken(
                    cur.file,
                    n,
                    BreakKind::Edited,
                    format!(
                        "hash mismatch at line {n}: line {n} was edited (its prev does not match the line before it)"
                    ),
                )
            });
        }
        if link_ok {
            // Linked correctly, but the seq is wrong: this line's seq field was changed.
            return Err(broken(
                cur.file,
                n,
                BreakKind::Edited,
                format!(
                    "sequence gap at line {n}: seq {seq} where {expected} was expected, yet it links to the line before: line {n} was edited"
                ),
            ));
        }
        if seq > expected {
            // Missing lines, or lines moved. Is the expected seq further on?
            let next = lines
                .peek(0)?
                .map(|i| (i.parsed.as_ref().ok().copied(), i.line));
            if let Some((Some((next_seq, next_prev)), next_line)) = next
                && next_seq == expected
                && next_prev == p.hash
            {
                // The next line is the expected one and links to the previous line: this line
                // was put between them. Swapped with its neighbour if the line after that links
                // back to this one.
                let after = lines
                    .peek(1)?
                    .map(|i| i.parsed.as_ref().ok().map(|(_, pr)| *pr));
                let swapped = match after {
                    Some(Some(after_prev)) => after_prev == cur.hash,
                    Some(None) => false,
                    None => seq == expected + 1,
                };
                return Err(if swapped {
                    broken(
                        cur.file,
                        n,
                        BreakKind::Reordered,
                        format!(
                            "sequence gap at line {n}: seq {seq} comes before seq {expected} (line {next_line}): lines {n} and {next_line} were swapped"
                        ),
                    )
                } else {
                    broken(
                        cur.file,
                        n,
                        BreakKind::Inserted,
                        format!(
                            "hash mismatch at line {n}: line {n} was inserted (the next line links to the line before it)"
                        ),
                    )
                });
            }
            let mut found = None;
            for k in 0..LOOKAHEAD {
                match lines.peek(k)? {
                    Some(item) => {
                        if item.parsed.as_ref().is_ok_and(|(s, _)| *s == expected) {
                            found = Some(describe(paths, item.file, cur.file, item.line));
                            break;
                        }
                    }
                    None => break,
                }
            }
            return Err(match found {
                Some(at) => broken(
                    cur.file,
                    n,
                    BreakKind::Reordered,
                    format!(
                        "sequence gap at line {n}: seq {seq} comes before seq {expected} ({at}): lines were reordered"
                    ),
                ),
                None => {
                    let missing = seq - expected;
                    broken(
                        cur.file,
                        n,
                        BreakKind::Deleted,
                        format!(
                            "sequence gap at line {n}: expected seq {expected}, found {seq}: {missing} line{} deleted before line {n}",
                            if missing == 1 { "" } else { "s" }
                        ),
                    )
                }
            });
        }
        // seq < expected: a repeat or a step back.
        if let Some(pp) = before_last
            && prev == pp.hash
            && seq == p.seq
        {
            return Err(broken(
                p.file,
                p.line,
                BreakKind::Inserted,
                format!(
                    "sequence gap at line {}: line {} was inserted (the line after it links to the line before it)",
                    p.line, p.line
                ),
            ));
        }
        return Err(broken(
            cur.file,
            n,
            BreakKind::Inserted,
            format!(
                "sequence gap at line {n}: seq {seq} after seq {}: a line was inserted or lines reordered{hint}",
                p.seq
            ),
        ));
    }
    if let Some(l) = last {
        report.last_seq = Some(l.seq);
        report.last_hash = Some(l.hash);
    }
    Ok(report)
}

/// "line N" in the same file, "FILE line N" in another.
fn describe(paths: &[PathBuf], file: usize, current: usize, line: u64) -> String {
    if file == current {
        format!("line {line}")
    } else {
        let name = paths.get(file).map_or(Path::new(""), PathBuf::as_path);
        format!("{} line {line}", name.display())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::audit::testutil::{v1_lines, v1_lines_after};

    /// 1,000 chained `vakt.audit/1` lines in a file.
    fn write_chain(dir: &Path) -> (PathBuf, Vec<String>) {
        let path = dir.join("audit.log");
        let lines = v1_lines(1..=1000);
        fs::write(&path, lines.join("\n") + "\n").unwrap();
        (path, lines)
    }

    fn save(path: &Path, lines: &[String]) {
        fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    fn broken(path: &Path) -> BrokenLink {
        match verify(&[path.to_path_buf()]) {
            Err(VerifyError::Broken(b)) => b,
            other => panic!("expected a broken link, got {other:?}"),
        }
    }

    #[test]
    fn thousand_events_intact() {
        let dir = tempfile::tempdir().unwrap();
        let (path, lines) = write_chain(dir.path());
        let report = verify(&[path]).unwrap();
        assert_eq!(report.events, 1000);
        assert_eq!((report.first_seq, report.last_seq), (Some(1), Some(1000)));
        assert!(report.starts_at_genesis);
        assert_eq!(report.last_hash, Some(line_hash(lines[999].as_bytes())));
        assert!(
            report
                .to_string()
                .starts_with("intact: 1000 events in 1 file")
        );
    }

    #[test]
    fn one_edited_byte_in_a_middle_line() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut lines) = write_chain(dir.path());
        // Change one digit of the status of line 500 (still valid JSON).
        let l = &mut lines[499];
        let at = l.find("\"status\":").unwrap() + "\"status\":".len();
        let digit = l.as_bytes()[at];
        let new = if digit == b'2' { '3' } else { '2' };
        l.replace_range(at..=at, &new.to_string());
        save(&path, &lines);
        let b = broken(&path);
        assert_eq!((b.line, b.kind), (500, BreakKind::Edited), "{b}");
        assert!(b.to_string().contains("hash mismatch at line 500"), "{b}");
        assert_eq!(b.file, path);
    }

    #[test]
    fn edits_that_break_json_or_seq_or_prev() {
        let dir = tempfile::tempdir().unwrap();
        let (path, original) = write_chain(dir.path());
        // A byte that breaks the JSON.
        let mut lines = original.clone();
        lines[299].replace_range(0..1, "[");
        save(&path, &lines);
        let b = broken(&path);
        assert_eq!((b.line, b.kind), (300, BreakKind::Unparseable), "{b}");
        // The seq field.
        let mut lines = original.clone();
        lines[299] = lines[299].replace("\"seq\":300,", "\"seq\":310,");
        save(&path, &lines);
        let b = broken(&path);
        assert_eq!((b.line, b.kind), (300, BreakKind::Edited), "{b}");
        assert!(b.detail.contains("sequence gap at line 300"), "{b}");
        // The prev field.
        let mut lines = original.clone();
        let at = lines[299].find("\"prev\":\"").unwrap() + 8;
        let c = if lines[299].as_bytes()[at] == b'a' {
            "b"
        } else {
            "a"
        };
        lines[299].replace_range(at..=at, c);
        save(&path, &lines);
        let b = broken(&path);
        assert_eq!((b.line, b.kind), (300, BreakKind::Edited), "{b}");
        // Another schema.
        let mut lines = original;
        lines[9] = lines[9].replace("vakt.audit/1", "vakt.audit/9");
        save(&path, &lines);
        let b = broken(&path);
        assert_eq!((b.line, b.kind), (10, BreakKind::WrongSchema), "{b}");
    }

    #[test]
    fn deleted_line() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut lines) = write_chain(dir.path());
        lines.remove(499);
        save(&path, &lines);
        let b = broken(&path);
        assert_eq!((b.line, b.kind), (500, BreakKind::Deleted), "{b}");
        assert!(b.to_string().contains("sequence gap at line 500"), "{b}");
        assert!(b.detail.contains("1 line deleted"), "{b}");
        // Several lines.
        let (path, mut lines) = write_chain(dir.path());
        lines.drain(99..110);
        save(&path, &lines);
        let b = broken(&path);
        assert_eq!((b.line, b.kind), (100, BreakKind::Deleted), "{b}");
        assert!(b.detail.contains("11 lines deleted"), "{b}");
    }

    #[test]
    fn swapped_lines() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut lines) = write_chain(dir.path());
        lines.swap(499, 500);
        save(&path, &lines);
        let b = broken(&path);
        assert_eq!((b.line, b.kind), (500, BreakKind::Reordered), "{b}");
        assert!(b.detail.contains("lines 500 and 501 were swapped"), "{b}");
        // Far apart.
        let (path, mut lines) = write_chain(dir.path());
        lines.swap(199, 699);
        save(&path, &lines);
        let b = broken(&path);
        assert_eq!((b.line, b.kind), (200, BreakKind::Reordered), "{b}");
        assert!(b.detail.contains("(line 700)"), "{b}");
        // The last two.
        let (path, mut lines) = write_chain(dir.path());
        lines.swap(998, 999);
        save(&path, &lines);
        let b = broken(&path);
        assert_eq!((b.line, b.kind), (999, BreakKind::Reordered), "{b}");
    }

    #[test]
    fn inserted_lines() {
        let dir = tempfile::tempdir().unwrap();
        // A copy of an earlier line.
        let (path, mut lines) = write_chain(dir.path());
        let copy = lines[100].clone();
        lines.insert(500, copy);
        save(&path, &lines);
        let b = broken(&path);
        assert_eq!((b.line, b.kind), (501, BreakKind::Inserted), "{b}");
        // A forged line that links correctly to the one before it.
        let (path, mut lines) = write_chain(dir.path());
        let forged = v1_lines_after(Some(&lines[499]), 9999..=9999).remove(0);
        lines.insert(500, forged);
        save(&path, &lines);
        let b = broken(&path);
        assert_eq!((b.line, b.kind), (501, BreakKind::Inserted), "{b}");
        // A line from another stream.
        let (path, mut lines) = write_chain(dir.path());
        let other = v1_lines(1..=1);
        lines.insert(500, other[0].clone());
        save(&path, &lines);
        let b = broken(&path);
        assert_eq!((b.line, b.kind), (501, BreakKind::Inserted), "{b}");
    }

    #[test]
    fn truncated_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write_chain(dir.path());
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 40]).unwrap();
        let b = broken(&path);
        assert_eq!((b.line, b.kind), (1000, BreakKind::Truncated), "{b}");
        // Only the newline gone.
        fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let b = broken(&path);
        assert_eq!((b.line, b.kind), (1000, BreakKind::Truncated), "{b}");
        // Whole lines cut at the end: intact, but the report shows where the chain ends.
        let text = String::from_utf8(bytes).unwrap();
        let kept: Vec<&str> = text.lines().take(990).collect();
        fs::write(&path, kept.join("\n") + "\n").unwrap();
        let r = verify(&[path]).unwrap();
        assert_eq!(r.last_seq, Some(990));
    }

    #[test]
    fn across_files_in_order_only() {
        let dir = tempfile::tempdir().unwrap();
        let (_, lines) = write_chain(dir.path());
        let a = dir.path().join("audit.log.1");
        let b = dir.path().join("audit.log.0");
        save(&a, &lines[..400]);
        save(&b, &lines[400..]);
        let r = verify(&[a.clone(), b.clone()]).unwrap();
        assert_eq!((r.events, r.files), (1000, 2));
        // Only the newer file: intact, but not from the start.
        let r = verify(std::slice::from_ref(&b)).unwrap();
        assert!(!r.starts_at_genesis);
        assert!(r.to_string().contains("rotated away"), "{r}");
        // Newest first: caught at the first line of the second file.
        let err = verify(&[b, a.clone()]).unwrap_err();
        let link = err.broken_link().unwrap();
        assert_eq!((link.file.clone(), link.line), (a, 1), "{link}");
        assert!(link.detail.contains("oldest first"), "{link}");
        assert!(matches!(verify(&[]), Err(VerifyError::NoFiles)));
        assert!(matches!(
            verify(&[dir.path().join("missing")]),
            Err(VerifyError::Io { .. })
        ));
    }

    #[test]
    fn messages_never_echo_content() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut lines) = write_chain(dir.path());
        lines[10] = lines[10].replace("\"status\":", "\"token\":\"eyJsecret\",\"status\":");
        save(&path, &lines);
        let b = broken(&path);
        assert_eq!((b.line, b.kind), (11, BreakKind::Unparseable));
        assert!(!b.to_string().contains("eyJsecret"), "{b}");
    }
}

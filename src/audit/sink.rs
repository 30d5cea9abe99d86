//! Where chained lines go: stdout (JSON lines, for Kubernetes log pipelines) or a file with
//! size-based rotation and an fsync policy. Sinks are synchronous; the audit log's writer thread
//! owns its sink and calls it directly. Errors are returned, typed, never swallowed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::chain::SealedLine;

/// Why a sink could not take lines.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("audit sink misconfigured: {0}")]
    Config(&'static str),
    #[error("cannot open audit file {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot write audit file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot sync audit file {path} to disk: {source}")]
    Sync { path: PathBuf, source: io::Error },
    #[error("cannot rotate audit file {from} to {to}: {source}")]
    Rotate {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("cannot remove the oldest rotated audit file {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
    #[error("cannot read audit file {path} to continue its chain: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "audit file {path} ends with a line that is not an audit event ({detail}); move it aside to start a new chain"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error("cannot write audit lines to {what}: {source}")]
    Stream {
        what: &'static str,
        source: io::Error,
    },
}

/// A failed [`Sink::write`]: the first `written` lines are in the sink, the others are not (and
/// no partial line is left behind), so the same remaining lines can be retried.
#[derive(Debug, thiserror::Error)]
#[error("{error} ({written} lines written before the failure)")]
pub struct WriteFailure {
    pub written: usize,
    #[source]
    pub error: SinkError,
}

/// A destination for chained audit lines.
pub trait Sink: Send + 'static {
    /// The complete lines at the end of the trail this sink holds, oldest first: from the line
    /// with `seq` `since` when the sink still has it, else only the last line; empty when it holds
    /// none. `None` when the sink cannot be read back (stdout): each start is a new trail. Called
    /// once, before the first write.
    fn tail(&mut self, since: Option<u64>) -> Result<Option<Vec<Vec<u8>>>, SinkError>;

    /// Append `lines` in order, each followed by a newline.
    fn write(&mut self, lines: &[SealedLine]) -> Result<(), WriteFailure>;

    /// Make written lines durable as far as the sink's policy asks; `force` syncs regardless of
    /// the policy's interval (at shutdown).
    fn flush(&mut self, force: bool) -> Result<(), SinkError>;

    /// When a sync is due for lines written but not yet synced (interval policy), if ever.
    fn sync_deadline(&self) -> Option<Instant> {
        None
    }

    /// Files rotation deleted since the last call (each is recorded in the trail).
    fn take_rotated_out(&mut self) -> Vec<RotatedOut> {
        Vec::new()
    }
}

/// An audit file that is gone: the `seq` of its first and last lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotatedOut {
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Deleted or replaced by someone else while vakt wrote to it, rather than by rotation.
    pub deleted: bool,
}

impl Sink for Box<dyn Sink> {
    fn tail(&mut self, since: Option<u64>) -> Result<Option<Vec<Vec<u8>>>, SinkError> {
        (**self).tail(since)
    }
    fn write(&mut self, lines: &[SealedLine]) -> Result<(), WriteFailure> {
        (**self).write(lines)
    }
    fn flush(&mut self, force: bool) -> Result<(), SinkError> {
        (**self).flush(force)
    }
    fn sync_deadline(&self) -> Option<Instant> {
        (**self).sync_deadline()
    }
    fn take_rotated_out(&mut self) -> Vec<RotatedOut> {
        (**self).take_rotated_out()
    }
}

// ------------------------------------------------------------------------------------- stdout

/// JSON lines to any writer; [`StdoutSink`] for standard output. Each stream starts at genesis
/// (log pipelines keep one stream per container start). A batch is written with one call and
/// flushed; if that fails the whole batch is retried (a pipe may then see part of it twice).
pub struct WriterSink<W: Write + Send + 'static> {
    out: W,
    what: &'static str,
    buf: Vec<u8>,
}

/// The default sink: JSON lines on standard output.
pub type StdoutSink = WriterSink<io::Stdout>;

impl StdoutSink {
    pub fn stdout() -> Self {
        WriterSink::new(io::stdout(), "stdout")
    }
}

impl<W: Write + Send + 'static> WriterSink<W> {
    /// `what` names the destination in errors.
    pub fn new(out: W, what: &'static str) -> Self {
        Self {
            out,
            what,
            buf: Vec::new(),
        }
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write + Send + 'static> Sink for WriterSink<W> {
    fn tail(&mut self, _since: Option<u64>) -> Result<Option<Vec<Vec<u8>>>, SinkError> {
        Ok(None)
    }

    fn write(&mut self, lines: &[SealedLine]) -> Result<(), WriteFailure> {
        self.buf.clear();
        for line in lines {
            self.buf.extend_from_slice(line.text.as_bytes());
            self.buf.push(b'\n');
        }
        self.out
            .write_all(&self.buf)
            .and_then(|()| self.out.flush())
            .map_err(|source| WriteFailure {
                written: 0,
                error: SinkError::Stream {
                    what: self.what,
                    source,
                },
            })
    }

    fn flush(&mut self, _force: bool) -> Result<(), SinkError> {
        self.out.flush().map_err(|source| SinkError::Stream {
            what: self.what,
            source,
        })
    }
}

// --------------------------------------------------------------------------------------- file

/// When the file sink calls `fsync` (`File::sync_data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After every batch, before the batch counts as written: no accepted event is lost on a
    /// power failure once it is counted.
    Always,
    /// At most this long after a batch was written (and at rotation and shutdown).
    Interval(Duration),
    /// Leave it to the kernel (except at shutdown).
    Never,
}

/// Settings of a [`FileSink`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSinkConfig {
    /// The active file, e.g. `/var/log/vakt/audit.log`. Its directory must exist.
    pub path: PathBuf,
    /// Rotate before a line would take the active file past this size (a single larger line
    /// still goes into an empty file).
    pub max_bytes: u64,
    /// Rotated files kept: `audit.log.1` (newest) … `audit.log.<max_files>` (oldest); older ones
    /// are deleted. At least 1.
    pub max_files: usize,
    pub fsync: FsyncPolicy,
}

/// Append-only JSON lines in a file, rotated by size (`audit.log` → `audit.log.1` → …). The
/// chain continues across rotation and across restarts: [`Sink::tail`] reads the end of the
/// trail (from the active file back into rotated ones as far as asked) and the writer decides
/// from it and the last checkpoint how to go on. A partial last line (a crash in the middle of a
/// write) is cut off, with a warning. Deleting the oldest file is reported
/// ([`Sink::take_rotated_out`]) so the trail records it.
pub struct FileSink {
    config: FileSinkConfig,
    file: Option<File>,
    /// Bytes of complete lines in the active file, when known.
    len: Option<u64>,
    /// Written since the last sync.
    dirty: bool,
    last_sync: Instant,
    rotated_out: Vec<RotatedOut>,
    /// Device and inode of the open file, to see it deleted or replaced under us.
    opened_id: Option<(u64, u64)>,
    /// `seq` of the first and the last line in the open file, as far as known.
    file_seqs: (Option<u64>, Option<u64>),
    /// When the path was last compared with the open file.
    last_check: Instant,
}

/// How often the audit file's path is compared with the open file (as log shippers do).
const REPLACED_CHECK_INTERVAL: Duration = Duration::from_secs(1);

impl std::fmt::Debug for FileSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSink")
            .field("config", &self.config)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// Longest line looked at when resuming (events are far smaller).
const MAX_LINE: u64 = 1 << 20;
/// Most bytes of lines read back after the last checkpoint when resuming.
const MAX_TAIL: usize = 64 << 20;

impl FileSink {
    /// Nothing is opened yet (the first write or [`Sink::resume`] does), so a missing or
    /// unwritable directory shows as a write error the writer retries, not as a start failure.
    pub fn new(config: FileSinkConfig) -> Result<Self, SinkError> {
        if config.max_bytes == 0 {
            return Err(SinkError::Config("max_bytes must be positive"));
        }
        if config.max_files == 0 {
            return Err(SinkError::Config(
                "max_files must be at least 1 (rotation would delete audit records)",
            ));
        }
        if config.path.file_name().is_none() {
            return Err(SinkError::Config("path must name a file"));
        }
        if let FsyncPolicy::Interval(d) = config.fsync
            && d.is_zero()
        {
            return Err(SinkError::Config("fsync interval must be positive"));
        }
        Ok(Self {
            config,
            file: None,
            len: None,
            dirty: false,
            last_sync: Instant::now(),
            rotated_out: Vec::new(),
            opened_id: None,
            file_seqs: (None, None),
            last_check: Instant::now(),
        })
    }

    pub fn config(&self) -> &FileSinkConfig {
        &self.config
    }

    /// `audit.log.<n>`.
    pub fn rotated_path(&self, n: usize) -> PathBuf {
        rotated_path(&self.config.path, n)
    }

    /// All files of the stream, oldest first (for `verify`): `audit.log.<max>` … `audit.log.1`,
    /// `audit.log`, those that exist.
    pub fn files_oldest_first(path: &Path, max_files: usize) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = (1..=max_files)
            .rev()
            .map(|n| rotated_path(path, n))
            .filter(|p| p.exists())
            .collect();
        if path.exists() {
            out.push(path.to_path_buf());
        }
        out
    }

    fn open(&mut self) -> Result<(), SinkError> {
        if self.file.is_some() {
            return Ok(());
        }
        let path = &self.config.path;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| SinkError::Open {
                path: path.clone(),
                source,
            })?;
        let actual = file
            .metadata()
            .map_err(|source| SinkError::Open {
                path: path.clone(),
                source,
            })?
            .len();
        match self.len {
            // Left over from a failed write whose clean-up failed: cut the partial tail.
            Some(expected) if actual > expected => {
                file.set_len(expected).map_err(|source| SinkError::Write {
                    path: path.clone(),
                    source,
                })?;
            }
            Some(expected) if actual < expected => {
                tracing::warn!(
                    path = %path.display(),
                    expected,
                    actual,
                    "audit file is shorter than written; it was truncated by someone else"
                );
                self.len = Some(actual);
            }
            Some(_) => {}
            None => self.len = Some(actual),
        }
        if let Ok(meta) = file.metadata() {
            use std::os::unix::fs::MetadataExt;
            self.opened_id = Some((meta.dev(), meta.ino()));
        }
        if self.file_seqs.0.is_none() && self.len.is_some_and(|l| l > 0) {
            self.file_seqs = (first_seq(path), self.file_seqs.1);
        }
        self.file = Some(file);
        Ok(())
    }

    /// Whether the path still names the open file; if it was deleted or replaced (by hand, by a
    /// careless log cleaner), record what it held and open the path anew. Checked at most once
    /// per [`REPLACED_CHECK_INTERVAL`].
    fn check_replaced(&mut self) {
        if self.file.is_none() || self.last_check.elapsed() < REPLACED_CHECK_INTERVAL {
            return;
        }
        self.last_check = Instant::now();
        let current = fs::metadata(&self.config.path).ok().map(|meta| {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino())
        });
        if current.is_some() && current == self.opened_id {
            return;
        }
        tracing::error!(
            path = %self.config.path.display(),
            first_seq = self.file_seqs.0,
            last_seq = self.file_seqs.1,
            "the audit file was deleted or replaced while vakt wrote to it; recording the gap and writing to a new file"
        );
        self.rotated_out.push(RotatedOut {
            first_seq: self.file_seqs.0,
            last_seq: self.file_seqs.1,
            deleted: true,
        });
        self.file = None;
        self.opened_id = None;
        self.len = None;
        self.file_seqs = (None, None);
        self.dirty = false;
    }

    /// `lines` are now in the open file.
    fn wrote_seqs(&mut self, lines: &[SealedLine]) {
        if let (Some(first), Some(last)) = (lines.first(), lines.last()) {
            self.file_seqs.0.get_or_insert(first.seq);
            self.file_seqs.1 = Some(last.seq);
        }
    }

    /// Append one chunk; on failure, cut back to the last complete line.
    fn append(&mut self, chunk: &[u8]) -> Result<(), SinkError> {
        self.open()?;
        let path = &self.config.path;
        let Some(file) = self.file.as_mut() else {
            return Err(SinkError::Config("audit file not open"));
        };
        let before = self.len.unwrap_or(0);
        match file.write_all(chunk) {
            Ok(()) => {
                self.len = Some(before + chunk.len() as u64);
                self.dirty = true;
                Ok(())
            }
            Err(source) => {
                // Remove a partial write so the retry does not leave a broken line. If that
                // fails too, `open` cuts it before the next attempt (len stays `before`).
                if file.set_len(before).is_err() {
                    self.file = None;
                }
                Err(SinkError::Write {
                    path: path.clone(),
                    source,
                })
            }
        }
    }

    fn sync(&mut self) -> Result<(), SinkError> {
        if let Some(file) = &self.file
            && self.dirty
        {
            file.sync_data().map_err(|source| SinkError::Sync {
                path: self.config.path.clone(),
                source,
            })?;
        }
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    fn sync_dir(&self) -> Result<(), SinkError> {
        let dir = match self.config.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| SinkError::Sync {
                path: dir.to_path_buf(),
                source,
            })
    }

    /// `audit.log` → `audit.log.1`, shifting older files up and deleting the oldest. Safe to
    /// retry after a failure part-way: only the contiguous run `.1 … .n` is shifted, so a gap
    /// left by an interrupted shift is filled, never overwritten.
    fn rotate(&mut self) -> Result<(), SinkError> {
        if self.config.fsync != FsyncPolicy::Never {
            self.sync()?;
        }
        self.file = None;
        let max = self.config.max_files;
        let exists = |p: &Path| fs::symlink_metadata(p).is_ok();
        let mut n = 0;
        while n < max && exists(&self.rotated_path(n + 1)) {
            n += 1;
        }
        if n == max {
            let oldest = self.rotated_path(max);
            let range = RotatedOut {
                first_seq: first_seq(&oldest),
                last_seq: Self::last_line(&oldest, false)
                    .ok()
                    .flatten()
                    .and_then(|line| line_seq(&line)),
                deleted: false,
            };
            fs::remove_file(&oldest).map_err(|source| SinkError::Remove {
                path: oldest.clone(),
                source,
            })?;
            self.rotated_out.push(range);
            n -= 1;
        }
        for i in (1..=n).rev() {
            let (from, to) = (self.rotated_path(i), self.rotated_path(i + 1));
            fs::rename(&from, &to).map_err(|source| SinkError::Rotate { from, to, source })?;
        }
        let (from, to) = (self.config.path.clone(), self.rotated_path(1));
        fs::rename(&from, &to).map_err(|source| SinkError::Rotate { from, to, source })?;
        self.len = Some(0);
        self.file_seqs = (None, None);
        if self.config.fsync != FsyncPolicy::Never {
            self.sync_dir()?;
        }
        Ok(())
    }

    /// The last complete line of `path`, cutting a partial tail if `repair`.
    fn last_line(path: &Path, repair: bool) -> Result<Option<Vec<u8>>, SinkError> {
        let read_err = |source| SinkError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut file = match OpenOptions::new().read(true).write(repair).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_err(e)),
        };
        let len = file.metadata().map_err(read_err)?.len();
        if len == 0 {
            return Ok(None);
        }
        let window = len.min(MAX_LINE + 1);
        file.seek(SeekFrom::Start(len - window)).map_err(read_err)?;
        let mut tail = Vec::with_capacity(usize::try_from(window).unwrap_or(0));
        file.read_to_end(&mut tail).map_err(read_err)?;
        let mut end = tail.len();
        if tail.last() != Some(&b'\n') {
            // A partial line: a crash in the middle of a write.
            let cut = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if !repair {
                end = cut;
            } else {
                let keep = len - window + cut as u64;
                tracing::warn!(
                    path = %path.display(),
                    bytes = len - keep,
                    "audit file ends with a partial line (interrupted write); cutting it off"
                );
                file.set_len(keep).map_err(|source| SinkError::Write {
                    path: path.to_path_buf(),
                    source,
                })?;
                end = cut;
            }
            if end == 0 && window == len {
                return Ok(None);
            }
        }
        // `tail[..end]` ends with '\n'; the line is between the previous '\n' and that one.
        let body = &tail[..end.saturating_sub(1)];
        match body.iter().rposition(|&b| b == b'\n') {
            Some(i) => Ok(Some(body[i + 1..].to_vec())),
            None if window == len => Ok(Some(body.to_vec())),
            None => Err(SinkError::Corrupt {
                path: path.to_path_buf(),
                detail: "last line longer than 1 MiB".into(),
            }),
        }
    }
}

fn rotated_path(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

impl Sink for FileSink {
    fn tail(&mut self, since: Option<u64>) -> Result<Option<Vec<Vec<u8>>>, SinkError> {
        // Cut a partial last line of the active file before anything is appended to it.
        let active_last = Self::last_line(&self.config.path, true)?;
        // The active file's length is read again when it is opened.
        self.len = None;
        let last = match active_last {
            Some(line) => Some(line),
            None => Self::last_line(&self.rotated_path(1), false)?,
        };
        let Some(last) = last else {
            return Ok(Some(Vec::new()));
        };
        let Some(since) = since else {
            return Ok(Some(vec![last]));
        };
        // Newest file first, back to the one holding `since`. More than MAX_TAIL bytes after
        // the checkpoint cannot be a tail a checkpoint schedule leaves: only the last line is
        // returned, and the checkpointed line is then not found (a new epoch begins).
        let mut found: Vec<Vec<u8>> = Vec::new();
        let mut bytes = 0;
        let files = Self::files_oldest_first(&self.config.path, self.config.max_files);
        for path in files.iter().rev() {
            let (lines, reached) = lines_since(path, since)?;
            bytes += lines.iter().map(Vec::len).sum::<usize>();
            found.splice(0..0, lines);
            if reached || bytes > MAX_TAIL {
                break;
            }
        }
        if found.is_empty() || bytes > MAX_TAIL {
            found = vec![last];
        }
        Ok(Some(found))
    }

    fn write(&mut self, lines: &[SealedLine]) -> Result<(), WriteFailure> {
        let failed = |written: usize| move |error: SinkError| WriteFailure { written, error };
        self.check_replaced();
        self.open().map_err(failed(0))?;
        let mut chunk: Vec<u8> =
            Vec::with_capacity(lines.iter().map(|l| l.text.len() + 1).sum::<usize>());
        // Lines from index `first` are in `chunk`; all before it are in a file.
        let mut first = 0;
        for (i, line) in lines.iter().enumerate() {
            let fill = self.len.unwrap_or(0) + chunk.len() as u64;
            if fill > 0 && fill + line.text.len() as u64 + 1 > self.config.max_bytes {
                if !chunk.is_empty() {
                    self.append(&chunk).map_err(failed(first))?;
                    self.wrote_seqs(&lines[first..i]);
                    chunk.clear();
                    first = i;
                }
                self.rotate().map_err(failed(first))?;
                self.open().map_err(failed(first))?;
            }
            chunk.extend_from_slice(line.text.as_bytes());
            chunk.push(b'\n');
        }
        if !chunk.is_empty() {
            self.append(&chunk).map_err(failed(first))?;
            self.wrote_seqs(&lines[first..]);
        }
        Ok(())
    }

    fn flush(&mut self, force: bool) -> Result<(), SinkError> {
        self.check_replaced();
        let due = match self.config.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Interval(d) => force || self.last_sync.elapsed() >= d,
            FsyncPolicy::Never => force,
        };
        if due && self.dirty {
            self.sync()
        } else {
            Ok(())
        }
    }

    fn sync_deadline(&self) -> Option<Instant> {
        match self.config.fsync {
            FsyncPolicy::Interval(d) if self.dirty => Some(self.last_sync + d),
            _ => None,
        }
    }

    fn take_rotated_out(&mut self) -> Vec<RotatedOut> {
        std::mem::take(&mut self.rotated_out)
    }
}

/// The `seq` of a line, read without parsing the whole event.
fn line_seq(line: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: u64,
    }
    serde_json::from_slice::<Seq>(line).ok().map(|s| s.seq)
}

/// The `seq` of the first line of `path`.
fn first_seq(path: &Path) -> Option<u64> {
    let file = File::open(path).ok()?;
    let mut first = Vec::new();
    io::BufRead::read_until(
        &mut io::BufReader::new(file).take(MAX_LINE),
        b'\n',
        &mut first,
    )
    .ok()?;
    line_seq(first.strip_suffix(b"\n")?)
}

/// The complete lines of `path` from the one with `seq` `since` on (lines whose `seq` cannot be
/// read are kept: they belong to the tail under scrutiny), and whether `path` reaches back to
/// `since` or before it.
fn lines_since(path: &Path, since: u64) -> Result<(Vec<Vec<u8>>, bool), SinkError> {
    let read_err = |source| SinkError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), false)),
        Err(e) => return Err(read_err(e)),
    };
    let mut reader = io::BufReader::new(file);
    let (mut kept, mut reached) = (Vec::new(), false);
    loop {
        let mut line = Vec::new();
        let n = io::BufRead::read_until(&mut reader, b'\n', &mut line).map_err(read_err)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        line.pop();
        match line_seq(&line) {
            Some(seq) if seq < since => reached = true,
            Some(seq) => {
                reached |= seq == since;
                kept.push(line);
            }
            None => kept.push(line),
        }
    }
    Ok((kept, reached))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::{ChainPosition, ChainWriter, parse_line};
    use crate::audit::testutil::{event, lines, test_key, verified};
    use crate::audit::trail::FindingKind;

    fn config(dir: &Path, max_bytes: u64, max_files: usize) -> FileSinkConfig {
        FileSinkConfig {
            path: dir.join("audit.log"),
            max_bytes,
            max_files,
            fsync: FsyncPolicy::Always,
        }
    }

    #[test]
    fn rotation_keeps_the_chain_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileSink::new(config(dir.path(), 4096, 5)).unwrap();
        assert_eq!(sink.tail(None).unwrap(), Some(vec![]));
        let mut chain = ChainWriter::new(test_key());
        // Uneven batches, so rotation falls inside and between batches.
        let mut n = 0u64;
        for batch in [1usize, 7, 30, 3, 50, 2, 40] {
            let batch: Vec<SealedLine> = (0..batch)
                .map(|_| {
                    n += 1;
                    chain.seal(event(n))
                })
                .collect();
            sink.write(&batch).unwrap();
            sink.flush(false).unwrap();
        }
        let files = FileSink::files_oldest_first(&dir.path().join("audit.log"), 5);
        assert_eq!(files.len(), 6, "active + 5 rotated: {files:?}");
        for f in &files {
            assert!(fs::metadata(f).unwrap().len() <= 4096, "{}", f.display());
        }
        let on_disk: usize = files
            .iter()
            .map(|f| fs::read_to_string(f).unwrap().lines().count())
            .sum();
        let first_kept = n - on_disk as u64 + 1;
        // Each deleted file was reported with its range, oldest first, up to the first kept line.
        let rotated = sink.take_rotated_out();
        assert!(!rotated.is_empty());
        assert_eq!(rotated[0].first_seq, Some(1));
        assert_eq!(rotated.last().unwrap().last_seq, Some(first_kept - 1));
        for pair in rotated.windows(2) {
            assert_eq!(pair[1].first_seq, pair[0].last_seq.map(|s| s + 1));
        }
        assert!(sink.take_rotated_out().is_empty());
        // The sink alone writes no rotation record (the writer does), so the start is missing.
        let report = verified(&files);
        assert_eq!(report.events, on_disk as u64, "{report}");
        let problems: Vec<_> = report.problems().collect();
        assert_eq!(problems.len(), 1, "{report}");
        assert_eq!(problems[0].kind, FindingKind::MissingStart);
        assert_eq!(problems[0].seqs, Some((1, first_kept - 1)));
        // The first line of every file links to the last line of the previous one.
        for pair in files.windows(2) {
            let older = fs::read_to_string(&pair[0]).unwrap();
            let newer = fs::read_to_string(&pair[1]).unwrap();
            let last = parse_line(older.lines().last().unwrap().as_bytes()).unwrap();
            let first = parse_line(newer.lines().next().unwrap().as_bytes()).unwrap();
            assert_eq!(Some(first.event.prev), last.mac);
        }
        assert!(!dir.path().join("audit.log.6").exists());
    }

    #[test]
    fn resume_continues_the_chain_and_cuts_a_partial_line() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 1 << 20, 3);
        let written = lines(ChainWriter::new(test_key()), 1..=10);
        {
            let mut sink = FileSink::new(cfg.clone()).unwrap();
            assert_eq!(sink.tail(None).unwrap(), Some(vec![]));
            sink.write(&written).unwrap();
        }
        // A crash in the middle of line 11.
        let mut f = OpenOptions::new().append(true).open(&cfg.path).unwrap();
        f.write_all(br#"{"schema":"vakt.audit/2","seq":11,"pr"#)
            .unwrap();
        drop(f);
        let mut sink = FileSink::new(cfg.clone()).unwrap();
        // The last line, or every line from a given seq on.
        let tail = sink.tail(None).unwrap().unwrap();
        assert_eq!(tail, vec![written[9].text.clone().into_bytes()]);
        let tail = sink.tail(Some(7)).unwrap().unwrap();
        assert_eq!(tail.len(), 4);
        assert_eq!(tail[0], written[6].text.clone().into_bytes());
        let pos = ChainPosition::after(&parse_line(tail.last().unwrap()).unwrap()).unwrap();
        assert_eq!(pos.next_seq, 11);
        let mut chain = ChainWriter::resume(pos, test_key());
        let more: Vec<SealedLine> = (11..=20).map(|n| chain.seal(event(n))).collect();
        sink.write(&more).unwrap();
        let report = verified(std::slice::from_ref(&cfg.path));
        assert!(report.is_intact(), "{report}");
        assert_eq!(report.events, 20);
    }

    #[test]
    fn resume_after_rotation_reads_the_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 1 << 20, 3);
        let mut sink = FileSink::new(cfg.clone()).unwrap();
        sink.tail(None).unwrap();
        let written = lines(ChainWriter::new(test_key()), 1..=5);
        sink.write(&written).unwrap();
        sink.rotate().unwrap();
        drop(sink);
        assert!(!cfg.path.exists());
        let mut sink = FileSink::new(cfg.clone()).unwrap();
        assert_eq!(
            sink.tail(None).unwrap(),
            Some(vec![written[4].text.clone().into_bytes()])
        );
        // From seq 2 on: back into the rotated file.
        assert_eq!(sink.tail(Some(2)).unwrap().unwrap().len(), 4);
        // A last line that is not an event is handed over as it is (the writer opens a new
        // epoch on it).
        fs::write(&cfg.path, "garbage\n").unwrap();
        let mut sink = FileSink::new(cfg).unwrap();
        assert_eq!(sink.tail(None).unwrap(), Some(vec![b"garbage".to_vec()]));
    }

    #[test]
    fn rotation_failure_reports_lines_written_and_retry_completes() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        fs::create_dir(&logs).unwrap();
        let all = lines(ChainWriter::new(test_key()), 1..=30);
        // Three lines to a file.
        let cfg = config(&logs, 3 * (all[0].text.len() as u64 + 8), 2);
        let mut sink = FileSink::new(cfg.clone()).unwrap();
        sink.tail(None).unwrap();
        sink.write(&all[..2]).unwrap();
        // Replace the directory by a file: the open handle still writes, rotation cannot.
        let moved = dir.path().join("moved");
        fs::rename(&logs, &moved).unwrap();
        fs::write(&logs, "not a directory").unwrap();
        let failure = sink.write(&all[2..]).unwrap_err();
        assert!(failure.written > 0 && failure.written < 28, "{failure}");
        assert!(
            matches!(failure.error, SinkError::Rotate { .. }),
            "{failure}"
        );
        fs::remove_file(&logs).unwrap();
        fs::rename(&moved, &logs).unwrap();
        sink.write(&all[2 + failure.written..]).unwrap();
        let files = FileSink::files_oldest_first(&cfg.path, 2);
        let report = verified(&files);
        assert_eq!(report.segments.last().map(|s| s.last_seq), Some(30));
        assert!(
            report
                .problems()
                .all(|p| p.kind == FindingKind::MissingStart),
            "{report}"
        );
    }

    #[test]
    fn config_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        assert!(FileSink::new(config(dir.path(), 0, 1)).is_err());
        assert!(FileSink::new(config(dir.path(), 10, 0)).is_err());
        let mut cfg = config(dir.path(), 10, 1);
        cfg.fsync = FsyncPolicy::Interval(Duration::ZERO);
        assert!(FileSink::new(cfg).is_err());
    }

    #[test]
    fn interval_policy_reports_a_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), 1 << 20, 1);
        cfg.fsync = FsyncPolicy::Interval(Duration::from_secs(3600));
        let mut sink = FileSink::new(cfg).unwrap();
        sink.tail(None).unwrap();
        assert_eq!(sink.sync_deadline(), None);
        sink.write(&lines(ChainWriter::new(test_key()), 1..=3))
            .unwrap();
        sink.flush(false).unwrap();
        assert!(sink.sync_deadline().is_some(), "not due yet");
        sink.flush(true).unwrap();
        assert_eq!(sink.sync_deadline(), None);
    }

    #[test]
    fn writer_sink_writes_json_lines() {
        let mut sink = WriterSink::new(Vec::new(), "memory");
        assert_eq!(sink.tail(None).unwrap(), None);
        sink.write(&lines(ChainWriter::new(test_key()), 1..=3))
            .unwrap();
        let out = String::from_utf8(sink.into_inner()).unwrap();
        assert_eq!(out.lines().count(), 3);
        assert!(out.ends_with('\n'));
    }
}

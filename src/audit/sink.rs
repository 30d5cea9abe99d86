//! Where chained lines go: stdout (JSON lines, for Kubernetes log pipelines) or a file with
//! size-based rotation and an fsync policy. Sinks are synchronous; the audit log's writer thread
//! owns its sink and calls it directly. Errors are returned, typed, never swallowed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::chain::{ChainPosition, SealedLine};

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
    /// Where the stream this sink holds stands (after its last line), or `None` to start a new
    /// stream. Called once, before the first write.
    fn resume(&mut self) -> Result<Option<ChainPosition>, SinkError>;

    /// Append `lines` in order, each followed by a newline.
    fn write(&mut self, lines: &[SealedLine]) -> Result<(), WriteFailure>;

    /// Make written lines durable as far as the sink's policy asks; `force` syncs regardless of
    /// the policy's interval (at shutdown).
    fn flush(&mut self, force: bool) -> Result<(), SinkError>;

    /// When a sync is due for lines written but not yet synced (interval policy), if ever.
    fn sync_deadline(&self) -> Option<Instant> {
        None
    }
}

impl Sink for Box<dyn Sink> {
    fn resume(&mut self) -> Result<Option<ChainPosition>, SinkError> {
        (**self).resume()
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
    fn resume(&mut self) -> Result<Option<ChainPosition>, SinkError> {
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
/// chain continues across rotation and across restarts: [`Sink::resume`] reads the last line of
/// the active file (or of `audit.log.1` if the active file is empty) and the stream goes on from
/// there. A partial last line (a crash in the middle of a write) is cut off, with a warning.
pub struct FileSink {
    config: FileSinkConfig,
    file: Option<File>,
    /// Bytes of complete lines in the active file, when known.
    len: Option<u64>,
    /// Written since the last sync.
    dirty: bool,
    last_sync: Instant,
}

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
        self.file = Some(file);
        Ok(())
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
            fs::remove_file(&oldest).map_err(|source| SinkError::Remove {
                path: oldest.clone(),
                source,
            })?;
            n -= 1;
        }
        for i in (1..=n).rev() {
            let (from, to) = (self.rotated_path(i), self.rotated_path(i + 1));
            fs::rename(&from, &to).map_err(|source| SinkError::Rotate { from, to, source })?;
        }
        let (from, to) = (self.config.path.clone(), self.rotated_path(1));
        fs::rename(&from, &to).map_err(|source| SinkError::Rotate { from, to, source })?;
        self.len = Some(0);
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
    fn resume(&mut self) -> Result<Option<ChainPosition>, SinkError> {
        let active = self.config.path.clone();
        let (path, line) = match Self::last_line(&active, true)? {
            Some(line) => (active, line),
            None => {
                let rotated = self.rotated_path(1);
                match Self::last_line(&rotated, false)? {
                    Some(line) => (rotated, line),
                    None => return Ok(None),
                }
            }
        };
        // The active file's length is read again when it is opened.
        self.len = None;
        ChainPosition::after_line(&line)
            .map(Some)
            .map_err(|e| SinkError::Corrupt {
                path,
                detail: e.to_string(),
            })
    }

    fn write(&mut self, lines: &[SealedLine]) -> Result<(), WriteFailure> {
        let failed = |written: usize| move |error: SinkError| WriteFailure { written, error };
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
        }
        Ok(())
    }

    fn flush(&mut self, force: bool) -> Result<(), SinkError> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::ChainWriter;
    use crate::audit::testutil::{event, lines};
    use crate::audit::verify::verify;

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
        assert_eq!(sink.resume().unwrap(), None);
        let mut chain = ChainWriter::new();
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
        // The oldest files were deleted, so the chain starts after genesis.
        let report = verify(&files).unwrap();
        assert!(!report.starts_at_genesis);
        assert_eq!(report.last_seq, Some(n));
        let on_disk: usize = files
            .iter()
            .map(|f| fs::read_to_string(f).unwrap().lines().count())
            .sum();
        assert_eq!(report.events, on_disk as u64, "{report}");
        assert_eq!(report.first_seq, Some(n - on_disk as u64 + 1));
        // The first line of every file links to the last line of the previous one.
        for pair in files.windows(2) {
            let older = fs::read_to_string(&pair[0]).unwrap();
            let newer = fs::read_to_string(&pair[1]).unwrap();
            let last = older.lines().last().unwrap();
            let first: crate::audit::AuditEvent =
                serde_json::from_str(newer.lines().next().unwrap()).unwrap();
            assert_eq!(first.prev, crate::audit::line_hash(last.as_bytes()));
        }
        assert!(!dir.path().join("audit.log.6").exists());
    }

    #[test]
    fn resume_continues_the_chain_and_cuts_a_partial_line() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 1 << 20, 3);
        {
            let mut sink = FileSink::new(cfg.clone()).unwrap();
            assert_eq!(sink.resume().unwrap(), None);
            sink.write(&lines(ChainWriter::new(), 1..=10)).unwrap();
        }
        // A crash in the middle of line 11.
        let mut f = OpenOptions::new().append(true).open(&cfg.path).unwrap();
        f.write_all(br#"{"schema":"vakt.audit/1","seq":11,"pr"#)
            .unwrap();
        drop(f);
        let mut sink = FileSink::new(cfg.clone()).unwrap();
        let pos = sink.resume().unwrap().unwrap();
        assert_eq!(pos.next_seq, 11);
        let mut chain = ChainWriter::resume(pos);
        let more: Vec<SealedLine> = (11..=20).map(|n| chain.seal(event(n))).collect();
        sink.write(&more).unwrap();
        let report = verify(std::slice::from_ref(&cfg.path)).unwrap();
        assert_eq!((report.events, report.starts_at_genesis), (20, true));
    }

    #[test]
    fn resume_after_rotation_reads_the_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 1 << 20, 3);
        let mut sink = FileSink::new(cfg.clone()).unwrap();
        sink.resume().unwrap();
        sink.write(&lines(ChainWriter::new(), 1..=5)).unwrap();
        sink.rotate().unwrap();
        drop(sink);
        assert!(!cfg.path.exists());
        let mut sink = FileSink::new(cfg.clone()).unwrap();
        assert_eq!(sink.resume().unwrap().unwrap().next_seq, 6);
        // A last line that is not an event: refused, never silently restarted.
        fs::write(&cfg.path, "garbage\n").unwrap();
        let mut sink = FileSink::new(cfg).unwrap();
        assert!(matches!(sink.resume(), Err(SinkError::Corrupt { .. })));
    }

    #[test]
    fn rotation_failure_reports_lines_written_and_retry_completes() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        fs::create_dir(&logs).unwrap();
        let cfg = config(&logs, 2048, 2);
        let mut sink = FileSink::new(cfg.clone()).unwrap();
        sink.resume().unwrap();
        let all = lines(ChainWriter::new(), 1..=30);
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
        let report = verify(&files).unwrap();
        assert_eq!(report.last_seq, Some(30));
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
        sink.resume().unwrap();
        assert_eq!(sink.sync_deadline(), None);
        sink.write(&lines(ChainWriter::new(), 1..=3)).unwrap();
        sink.flush(false).unwrap();
        assert!(sink.sync_deadline().is_some(), "not due yet");
        sink.flush(true).unwrap();
        assert_eq!(sink.sync_deadline(), None);
    }

    #[test]
    fn writer_sink_writes_json_lines() {
        let mut sink = WriterSink::new(Vec::new(), "memory");
        assert_eq!(sink.resume().unwrap(), None);
        sink.write(&lines(ChainWriter::new(), 1..=3)).unwrap();
        let out = String::from_utf8(sink.into_inner()).unwrap();
        assert_eq!(out.lines().count(), 3);
        assert!(out.ends_with('\n'));
    }
}

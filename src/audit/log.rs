//! The front the request path talks to: [`AuditLog::try_record`] never blocks. Events go into a
//! bounded queue drained by one writer task, which seals them into the hash chain and writes
//! them in batches (everything available, then flush/fsync per the sink's policy).
//!
//! No silent loss: an event is either refused at `try_record` (queue full, sink known broken,
//! shut down — counted as dropped, and the caller applies `on_audit_failure`) or accepted, and
//! an accepted event is written: on a sink error the writer marks the log unhealthy and retries
//! the same lines with backoff until the sink takes them, then marks it healthy again.
//! [`AuditLog::shutdown`] waits until every accepted event is written.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use super::chain::{ChainPosition, ChainWriter, SealedLine};
use super::event::AuditEvent;
use super::sink::{Sink, SinkError, WriteFailure};

/// Queue and retry settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditConfig {
    /// Events accepted but not yet taken by the writer (at least 1).
    pub capacity: usize,
    /// Most events written in one batch (at least 1).
    pub max_batch: usize,
    /// First wait after a sink error; doubles up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            capacity: 8192,
            max_batch: 512,
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_secs(2),
        }
    }
}

/// Why an event was not accepted. The caller decides: refuse the request (`audit_unavailable`)
/// or serve it anyway; either way the event is counted as dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuditUnavailable {
    #[error("the audit queue is full")]
    QueueFull,
    #[error("the audit sink is failing")]
    SinkFailing,
    #[error("the audit log is shut down")]
    Closed,
}

impl AuditUnavailable {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::SinkFailing => "sink_failing",
            Self::Closed => "closed",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    #[error(
        "the audit log did not finish within {timeout:?}: {unwritten} accepted events were not written"
    )]
    TimedOut { timeout: Duration, unwritten: u64 },
    #[error("the audit writer stopped: {0}")]
    WriterFailed(String),
}

#[derive(Debug, Default)]
struct Shared {
    accepted: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
    /// Accepted but impossible to serialise (counted in `dropped` too).
    discarded: AtomicU64,
    failures: AtomicU64,
    healthy: AtomicBool,
    closed: AtomicBool,
}

impl Shared {
    fn fail(&self, error: &SinkError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if self.healthy.swap(false, Ordering::AcqRel) {
            tracing::error!(%error, "audit sink failed; refusing new audit events until it recovers");
        } else {
            tracing::warn!(%error, "audit sink still failing");
        }
    }

    fn recovered(&self) {
        if !self.healthy.swap(true, Ordering::AcqRel) {
            tracing::info!("audit sink recovered");
        }
    }
}

struct Inner {
    tx: mpsc::Sender<AuditEvent>,
    shared: Arc<Shared>,
    close: Arc<Notify>,
    writer: Mutex<Option<JoinHandle<Result<(), String>>>>,
}

/// The audit log. Cheap to clone; all clones feed one queue and one writer.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("healthy", &self.healthy())
            .field("queue_depth", &self.queue_depth())
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Start the writer task on the current tokio runtime.
    pub fn start<S: Sink>(sink: S, config: AuditConfig) -> Self {
        let config = AuditConfig {
            capacity: config.capacity.max(1),
            max_batch: config.max_batch.max(1),
            ..config
        };
        let (tx, rx) = mpsc::channel(config.capacity);
        let shared = Arc::new(Shared::default());
        shared.healthy.store(true, Ordering::Release);
        let close = Arc::new(Notify::new());
        let writer = tokio::spawn(run(sink, rx, shared.clone(), close.clone(), config));
        Self {
            inner: Arc::new(Inner {
                tx,
                shared,
                close,
                writer: Mutex::new(Some(writer)),
            }),
        }
    }

    /// Queue an event without waiting. Fails when the queue is full, the sink is known to be
    /// failing, or the log is shut down; every failure counts as dropped.
    pub fn try_record(&self, event: AuditEvent) -> Result<(), AuditUnavailable> {
        let s = &self.inner.shared;
        let refuse = |why| {
            s.dropped.fetch_add(1, Ordering::Relaxed);
            Err(why)
        };
        if s.closed.load(Ordering::Acquire) {
            return refuse(AuditUnavailable::Closed);
        }
        if !s.healthy.load(Ordering::Acquire) {
            return refuse(AuditUnavailable::SinkFailing);
        }
        // Counted before the send, so the writer never sees more written than accepted.
        s.accepted.fetch_add(1, Ordering::AcqRel);
        match self.inner.tx.try_send(event) {
            Ok(()) => Ok(()),
            Err(e) => {
                s.accepted.fetch_sub(1, Ordering::AcqRel);
                refuse(match e {
                    mpsc::error::TrySendError::Full(_) => AuditUnavailable::QueueFull,
                    mpsc::error::TrySendError::Closed(_) => AuditUnavailable::Closed,
                })
            }
        }
    }

    /// Events written to the sink.
    pub fn written(&self) -> u64 {
        self.inner.shared.written.load(Ordering::Acquire)
    }

    /// Events refused by [`try_record`](Self::try_record) (plus any accepted event that could
    /// not be serialised, which does not happen with the event type as it is).
    pub fn dropped(&self) -> u64 {
        self.inner.shared.dropped.load(Ordering::Acquire)
    }

    /// Failed sink operations (each failed attempt, retries included).
    pub fn failures(&self) -> u64 {
        self.inner.shared.failures.load(Ordering::Acquire)
    }

    /// Events accepted and not yet written (queued, or in the batch being written or retried).
    pub fn queue_depth(&self) -> u64 {
        let s = &self.inner.shared;
        let done = s.written.load(Ordering::Acquire) + s.discarded.load(Ordering::Acquire);
        s.accepted.load(Ordering::Acquire).saturating_sub(done)
    }

    /// False from a sink error until the sink takes lines again.
    pub fn healthy(&self) -> bool {
        self.inner.shared.healthy.load(Ordering::Acquire)
    }

    /// Stop accepting events and wait until every accepted event is written and synced, for at
    /// most `timeout` (then the writer is stopped and the unwritten count is reported). Other
    /// clones see [`AuditUnavailable::Closed`] afterwards.
    pub async fn shutdown(self, timeout: Duration) -> Result<(), ShutdownError> {
        self.inner.shared.closed.store(true, Ordering::Release);
        self.inner.close.notify_one();
        let handle = match self.inner.writer.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let Some(mut handle) = handle else {
            // Another clone shut it down already.
            return Ok(());
        };
        match tokio::time::timeout(timeout, &mut handle).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(ShutdownError::WriterFailed(e)),
            Ok(Err(join)) => Err(ShutdownError::WriterFailed(join.to_string())),
            Err(_) => {
                handle.abort();
                Err(ShutdownError::TimedOut {
                    timeout,
                    unwritten: self.queue_depth(),
                })
            }
        }
    }
}

/// Run `f` on the sink on the blocking pool (sinks do file I/O), handing sink and data back.
async fn blocking<S, T, R>(
    mut sink: S,
    data: T,
    f: impl FnOnce(&mut S, &T) -> R + Send + 'static,
) -> Result<(S, T, R), String>
where
    S: Sink,
    T: Send + 'static,
    R: Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let r = f(&mut sink, &data);
        (sink, data, r)
    })
    .await
    .map_err(|e| format!("audit sink task failed: {e}"))
}

struct Backoff {
    next: Duration,
    initial: Duration,
    max: Duration,
}

impl Backoff {
    fn new(config: &AuditConfig) -> Self {
        Self {
            next: config.retry_initial,
            initial: config.retry_initial,
            max: config.retry_max,
        }
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = self.next.checked_mul(2).unwrap_or(self.max).min(self.max);
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// The writer task.
async fn run<S: Sink>(
    sink: S,
    rx: mpsc::Receiver<AuditEvent>,
    shared: Arc<Shared>,
    close: Arc<Notify>,
    config: AuditConfig,
) -> Result<(), String> {
    let result = write_loop(sink, rx, &shared, &close, config).await;
    if let Err(e) = &result {
        // Nothing can be written any more: refuse events from now on.
        shared.healthy.store(false, Ordering::Release);
        shared.closed.store(true, Ordering::Release);
        tracing::error!(error = %e, "audit writer stopped");
    }
    result
}

async fn write_loop<S: Sink>(
    mut sink: S,
    mut rx: mpsc::Receiver<AuditEvent>,
    shared: &Shared,
    close: &Notify,
    config: AuditConfig,
) -> Result<(), String> {
    let mut backoff = Backoff::new(&config);

    // Where the stream stands (a file sink continues its chain).
    let mut chain = loop {
        let (s, (), r) = blocking(sink, (), |s, ()| s.resume()).await?;
        sink = s;
        match r {
            Ok(position) => {
                shared.recovered();
                break ChainWriter::resume(position.unwrap_or(ChainPosition::GENESIS));
            }
            Err(e) => {
                shared.fail(&e);
                backoff.wait().await;
            }
        }
    };
    backoff.reset();

    let mut pending: Vec<SealedLine> = Vec::new();
    // Lines in the sink but not yet counted (a partial batch, or a batch whose flush failed).
    let mut unsynced: u64 = 0;
    let mut closing = false;
    loop {
        if pending.is_empty() {
            let deadline = sink.sync_deadline();
            let event = tokio::select! {
                biased;
                event = rx.recv() => event,
                () = close.notified(), if !closing => {
                    // Accept nothing more; what is queued is still received.
                    rx.close();
                    closing = true;
                    continue;
                }
                () = sleep_until(deadline), if deadline.is_some() => {
                    sink = flush(sink, false, &mut unsynced, shared, &mut backoff).await?;
                    continue;
                }
            };
            let Some(event) = event else { break };
            seal(&mut chain, event, &mut pending, shared);
            while pending.len() < config.max_batch {
                match rx.try_recv() {
                    Ok(event) => seal(&mut chain, event, &mut pending, shared),
                    Err(_) => break,
                }
            }
            if pending.is_empty() {
                continue;
            }
        }
        let (s, lines, r) = blocking(sink, pending, |s, lines| s.write(lines)).await?;
        sink = s;
        pending = lines;
        match r {
            Ok(()) => {
                unsynced += pending.len() as u64;
                pending.clear();
                sink = flush(sink, false, &mut unsynced, shared, &mut backoff).await?;
            }
            Err(WriteFailure { written, error }) => {
                // The first `written` lines are in; retry the rest, unchanged.
                let written = written.min(pending.len());
                pending.drain(..written);
                unsynced += written as u64;
                shared.fail(&error);
                backoff.wait().await;
                if pending.is_empty() {
                    // Nothing left to retry: probe the sink so health is restored.
                    sink = flush(sink, false, &mut unsynced, shared, &mut backoff).await?;
                }
            }
        }
    }
    // Closed and drained: everything accepted is in the sink; make it durable.
    flush(sink, true, &mut unsynced, shared, &mut backoff)
        .await
        .map(drop)
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await;
    }
}

fn seal(
    chain: &mut ChainWriter,
    event: AuditEvent,
    pending: &mut Vec<SealedLine>,
    shared: &Shared,
) {
    match chain.seal(event) {
        Ok(line) => pending.push(line),
        Err(error) => {
            // Not reachable with the event type as it is; the chain does not advance.
            shared.discarded.fetch_add(1, Ordering::AcqRel);
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%error, "audit event could not be serialised; dropped");
        }
    }
}

/// Flush per policy (or `force`), retrying until it succeeds; then count the lines written.
async fn flush<S: Sink>(
    mut sink: S,
    force: bool,
    unsynced: &mut u64,
    shared: &Shared,
    backoff: &mut Backoff,
) -> Result<S, String> {
    loop {
        let (s, (), r) = blocking(sink, (), move |s, ()| s.flush(force)).await?;
        sink = s;
        match r {
            Ok(()) => break,
            Err(e) => {
                shared.fail(&e);
                backoff.wait().await;
            }
        }
    }
    shared.written.fetch_add(*unsynced, Ordering::AcqRel);
    *unsynced = 0;
    shared.recovered();
    backoff.reset();
    Ok(sink)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::sync::mpsc as std_mpsc;

    use super::*;
    use crate::audit::event::AuditEvent;
    use crate::audit::sink::{FileSink, FileSinkConfig, FsyncPolicy};
    use crate::audit::testutil::event;
    use crate::audit::verify::verify;

    fn fast_retry(capacity: usize) -> AuditConfig {
        AuditConfig {
            capacity,
            max_batch: 256,
            retry_initial: Duration::from_millis(5),
            retry_max: Duration::from_millis(40),
        }
    }

    fn file_sink(path: &Path, max_bytes: u64, fsync: FsyncPolicy) -> FileSink {
        FileSink::new(FileSinkConfig {
            path: path.to_path_buf(),
            max_bytes,
            max_files: 1000,
            fsync,
        })
        .unwrap()
    }

    async fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting: {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn files(path: &Path) -> Vec<PathBuf> {
        FileSink::files_oldest_first(path, 1000)
    }

    #[tokio::test]
    async fn shutdown_writes_every_accepted_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::start(
            file_sink(
                &path,
                1 << 30,
                FsyncPolicy::Interval(Duration::from_millis(20)),
            ),
            fast_retry(10_000),
        );
        for n in 1..=10_000 {
            log.try_record(event(n)).unwrap();
        }
        // Single-threaded runtime: the writer has not run yet, everything is queued.
        assert_eq!(log.queue_depth(), 10_000);
        assert_eq!(log.written(), 0);
        let probe = log.clone();
        log.shutdown(Duration::from_secs(60)).await.unwrap();
        assert_eq!(probe.written(), 10_000);
        assert_eq!((probe.dropped(), probe.queue_depth()), (0, 0));
        assert_eq!(probe.try_record(event(1)), Err(AuditUnavailable::Closed));
        assert_eq!(probe.dropped(), 1);
        let report = verify(&[path]).unwrap();
        assert_eq!((report.events, report.starts_at_genesis), (10_000, true));
        // A second shutdown (another clone) has nothing left to do.
        probe.shutdown(Duration::from_secs(1)).await.unwrap();
    }

    /// A sink whose writes wait for the test.
    struct GateSink {
        entered: std_mpsc::Sender<usize>,
        release: std_mpsc::Receiver<()>,
        out: Arc<Mutex<Vec<String>>>,
    }

    impl Sink for GateSink {
        fn resume(&mut self) -> Result<Option<ChainPosition>, SinkError> {
            Ok(None)
        }
        fn write(&mut self, lines: &[SealedLine]) -> Result<(), WriteFailure> {
            let _ = self.entered.send(lines.len());
            // Blocks until released (or the test drops the sender).
            let _ = self.release.recv();
            let mut out = self.out.lock().unwrap();
            out.extend(lines.iter().map(|l| l.text.clone()));
            Ok(())
        }
        fn flush(&mut self, _force: bool) -> Result<(), SinkError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn full_queue_refuses_and_counts_drops() {
        let (entered_tx, entered) = std_mpsc::channel();
        let (release, release_rx) = std_mpsc::channel();
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = GateSink {
            entered: entered_tx,
            release: release_rx,
            out: out.clone(),
        };
        let log = AuditLog::start(sink, fast_retry(4));
        log.try_record(event(1)).unwrap();
        // The writer takes event 1 and blocks in the sink.
        wait_for("the writer to enter the sink", || {
            entered.try_recv().is_ok()
        })
        .await;
        for n in 2..=5 {
            log.try_record(event(n)).unwrap();
        }
        assert_eq!(log.try_record(event(6)), Err(AuditUnavailable::QueueFull));
        assert_eq!(log.try_record(event(7)), Err(AuditUnavailable::QueueFull));
        assert_eq!(log.dropped(), 2);
        assert_eq!(log.queue_depth(), 5);
        assert!(log.healthy(), "a full queue is not a broken sink");
        drop(release);
        let probe = log.clone();
        log.shutdown(Duration::from_secs(10)).await.unwrap();
        assert_eq!((probe.written(), probe.dropped()), (5, 2));
        let out = out.lock().unwrap();
        let seqs: Vec<u64> = out
            .iter()
            .map(|l| serde_json::from_str::<AuditEvent>(l).unwrap().seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn broken_sink_keeps_accepted_events_until_it_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        // The sink's directory is a file: nothing can be opened (works as root too, where a
        // chmod 000 directory would still be writable).
        fs::write(&logs, "not a directory").unwrap();
        let path = logs.join("audit.log");
        let log = AuditLog::start(
            file_sink(&path, 1 << 20, FsyncPolicy::Always),
            fast_retry(100),
        );
        // Accepted before the writer first tried the sink.
        for n in 1..=20 {
            log.try_record(event(n)).unwrap();
        }
        wait_for("the sink to be marked unhealthy", || !log.healthy()).await;
        assert!(log.failures() >= 1);
        assert_eq!(
            log.try_record(event(99)),
            Err(AuditUnavailable::SinkFailing)
        );
        assert_eq!(log.dropped(), 1);
        // The writer keeps retrying; nothing accepted is dropped meanwhile.
        let failures = log.failures();
        wait_for("more retries", || log.failures() > failures + 2).await;
        assert_eq!((log.written(), log.queue_depth()), (0, 20));
        // Repair: the accepted events land.
        fs::remove_file(&logs).unwrap();
        fs::create_dir(&logs).unwrap();
        wait_for("the accepted events to be written", || log.written() == 20).await;
        assert!(log.healthy());
        for n in 21..=25 {
            log.try_record(event(n)).unwrap();
        }
        let probe = log.clone();
        log.shutdown(Duration::from_secs(10)).await.unwrap();
        assert_eq!((probe.written(), probe.dropped()), (25, 1));
        let report = verify(&[path]).unwrap();
        assert_eq!((report.events, report.starts_at_genesis), (25, true));
    }

    #[tokio::test]
    async fn write_failure_mid_stream_is_retried_without_loss() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        fs::create_dir(&logs).unwrap();
        let path = logs.join("audit.log");
        // About two lines per file: every other line rotates.
        let log = AuditLog::start(file_sink(&path, 1600, FsyncPolicy::Always), fast_retry(100));
        for n in 1..=3 {
            log.try_record(event(n)).unwrap();
        }
        wait_for("the first events", || log.written() == 3).await;
        // Swap the directory for a file: the open file still takes lines, rotation fails.
        let moved = dir.path().join("moved");
        fs::rename(&logs, &moved).unwrap();
        fs::write(&logs, "not a directory").unwrap();
        for n in 4..=9 {
            log.try_record(event(n)).unwrap();
        }
        wait_for("the sink to be marked unhealthy", || !log.healthy()).await;
        assert_eq!(
            log.try_record(event(99)),
            Err(AuditUnavailable::SinkFailing)
        );
        assert!(log.written() < 9);
        fs::remove_file(&logs).unwrap();
        fs::rename(&moved, &logs).unwrap();
        wait_for("all accepted events", || log.written() == 9).await;
        assert!(log.healthy());
        log.shutdown(Duration::from_secs(10)).await.unwrap();
        let files = files(&path);
        assert!(files.len() >= 4, "{files:?}");
        let report = verify(&files).unwrap();
        assert_eq!((report.events, report.starts_at_genesis), (9, true));
    }

    /// Fails `failures` times, each time after taking the first two lines of the batch.
    struct FlakySink {
        failures: usize,
        out: Arc<Mutex<Vec<String>>>,
    }

    impl Sink for FlakySink {
        fn resume(&mut self) -> Result<Option<ChainPosition>, SinkError> {
            Ok(None)
        }
        fn write(&mut self, lines: &[SealedLine]) -> Result<(), WriteFailure> {
            let mut out = self.out.lock().unwrap();
            if self.failures > 0 {
                self.failures -= 1;
                let written = lines.len().min(2);
                out.extend(lines[..written].iter().map(|l| l.text.clone()));
                return Err(WriteFailure {
                    written,
                    error: SinkError::Stream {
                        what: "flaky",
                        source: std::io::Error::other("disk full"),
                    },
                });
            }
            out.extend(lines.iter().map(|l| l.text.clone()));
            Ok(())
        }
        fn flush(&mut self, _force: bool) -> Result<(), SinkError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn partial_writes_are_retried_in_order_without_duplicates() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = FlakySink {
            failures: 5,
            out: out.clone(),
        };
        let mut config = fast_retry(100);
        config.max_batch = 8;
        let log = AuditLog::start(sink, config);
        for n in 1..=50 {
            log.try_record(event(n)).unwrap();
        }
        let probe = log.clone();
        log.shutdown(Duration::from_secs(10)).await.unwrap();
        assert_eq!(probe.failures(), 5);
        assert_eq!(probe.written(), 50);
        assert!(probe.healthy());
        let out = out.lock().unwrap();
        let events: Vec<AuditEvent> = out
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=50).collect::<Vec<u64>>());
        // The chain holds line to line.
        for pair in out.windows(2) {
            let next: AuditEvent = serde_json::from_str(&pair[1]).unwrap();
            assert_eq!(next.prev, crate::audit::line_hash(pair[0].as_bytes()));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_producers_every_accepted_event_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::start(
            file_sink(&path, 256 * 1024, FsyncPolicy::Never),
            fast_retry(64),
        );
        let mut tasks = Vec::new();
        for t in 0..4u64 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let (mut accepted, mut refused) = (0u64, 0u64);
                for n in 0..2500 {
                    match log.try_record(event(t * 10_000 + n)) {
                        Ok(()) => accepted += 1,
                        Err(AuditUnavailable::QueueFull) => refused += 1,
                        Err(other) => panic!("unexpected {other}"),
                    }
                    if n % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                (accepted, refused)
            }));
        }
        let (mut accepted, mut refused) = (0, 0);
        for t in tasks {
            let (a, r) = t.await.unwrap();
            accepted += a;
            refused += r;
        }
        assert_eq!(accepted + refused, 10_000);
        let probe = log.clone();
        log.shutdown(Duration::from_secs(60)).await.unwrap();
        assert_eq!(probe.written(), accepted);
        assert_eq!(probe.dropped(), refused);
        let report = verify(&files(&path)).unwrap();
        assert_eq!(report.events, accepted);
    }

    #[tokio::test]
    async fn shutdown_times_out_on_a_sink_that_never_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        fs::write(&logs, "not a directory").unwrap();
        let log = AuditLog::start(
            file_sink(&logs.join("audit.log"), 1 << 20, FsyncPolicy::Always),
            fast_retry(10),
        );
        for n in 1..=3 {
            log.try_record(event(n)).unwrap();
        }
        let err = log.shutdown(Duration::from_millis(200)).await.unwrap_err();
        assert!(
            matches!(err, ShutdownError::TimedOut { unwritten: 3, .. }),
            "{err}"
        );
    }
}

//! The front the request path talks to: [`AuditLog::try_record`] never blocks. Events go into a
//! bounded queue drained by one dedicated writer thread (`vakt-audit`), which owns the sink: it
//! waits for the first event, takes everything else available (up to `max_batch`), seals the
//! batch into the hash chain, writes it and flushes/fsyncs per the sink's policy, all on that
//! thread, with no hand-off to another thread per batch. After a batch smaller than `max_batch`
//! it lingers briefly ([`AuditConfig::linger`]) before collecting the next one, so under load it
//! wakes about once per `linger` instead of once per event. While idle it still wakes when the
//! sink has a sync due ([`Sink::sync_deadline`]).
//!
//! No silent loss: an event is either refused at `try_record` (queue full, sink known broken,
//! shut down — counted as dropped, and the caller applies `on_audit_failure`) or accepted, and
//! an accepted event is written: on a sink error the writer marks the log unhealthy and retries
//! the same lines with backoff until the sink takes them, then marks it healthy again.
//! [`AuditLog::shutdown`] waits until every accepted event is written.
//!
//! A caller that must not let a response finish before its event is written (the file sink with
//! `fsync: always`) queues it with [`AuditLog::try_record_written`] and waits on the returned
//! [`Written`]: it resolves once the line is in the sink and synced per the sink's policy, and
//! fails if that can no longer happen (the writer stopped).
//!
//! The writer also keeps the chain anchored ([`ChainSettings`]): on start it resumes from the
//! last checkpoint or opens a new epoch whose first event names the gap
//! ([`super::checkpoint::resume`]); it records each file rotation deletes; and it writes a
//! checkpoint after `every` lines or `interval`, whichever comes first, and at shutdown, each
//! time after syncing the sink.

use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::oneshot;

use super::chain::{ChainKey, ChainNote, ChainWriter, SealedLine, deleted_file_event, note_event};
use super::checkpoint::{Checkpoint, CheckpointFile, CheckpointSettings};
use super::event::AuditEvent;
use super::sink::{Sink, SinkError, WriteFailure};
use crate::metrics as m;

/// Name of the writer thread.
const THREAD_NAME: &str = "vakt-audit";

/// Queue, batching and retry settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditConfig {
    /// Events accepted but not yet taken by the writer (at least 1).
    pub capacity: usize,
    /// Most events written in one batch (at least 1).
    pub max_batch: usize,
    /// After writing a batch smaller than `max_batch`, wait this long before collecting the next
    /// one, so events arriving meanwhile are written together: under load the writer wakes at
    /// most about once per `linger` (plus once per full batch) instead of once per event. An
    /// event waits at most about this much longer to be written. Zero disables it.
    pub linger: Duration,
    /// First wait after a sink error; doubles up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            capacity: 8192,
            max_batch: 512,
            linger: Duration::from_millis(1),
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_secs(2),
        }
    }
}

/// The chain's key and where and when its head is checkpointed.
#[derive(Debug, Clone)]
pub struct ChainSettings {
    pub key: Arc<ChainKey>,
    pub checkpoints: CheckpointSettings,
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

/// The chain-break reason of a live audit file deleted under vakt.
pub const FILE_DELETED: &str = "file_deleted";

impl AuditUnavailable {
    pub const ALL: [Self; 3] = [Self::QueueFull, Self::SinkFailing, Self::Closed];

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
    failures: AtomicU64,
    healthy: AtomicBool,
    closed: AtomicBool,
    /// Set when a shutdown timed out: the writer gives up at its next wait.
    stop: AtomicBool,
    /// `seq` of the last line written (0 before the first).
    head_seq: AtomicU64,
    /// Failed attempts since the last "still failing" line, and when that was (the writer
    /// thread's alone).
    failing: Mutex<(u64, Option<Instant>)>,
}

/// At most one "still failing" line per this interval while the sink fails.
const STILL_FAILING_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Shared {
    fn fail(&self, error: &SinkError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        if self.healthy.swap(false, Ordering::AcqRel) {
            tracing::error!(%error, "audit sink failed; refusing new audit events until it recovers");
            *failing = (0, Some(Instant::now()));
            return;
        }
        failing.0 += 1;
        if failing
            .1
            .is_none_or(|t| t.elapsed() >= STILL_FAILING_LOG_INTERVAL)
        {
            tracing::warn!(%error, failed_attempts = failing.0, "audit sink still failing");
            *failing = (0, Some(Instant::now()));
        }
    }

    fn recovered(&self) {
        if !self.healthy.swap(true, Ordering::AcqRel) {
            tracing::info!("audit sink recovered");
        }
    }
}

/// What the writer thread reports when it ends.
type Outcome = Result<(), String>;

/// Resolves when an event queued by [`AuditLog::try_record_written`] is written and synced per
/// the sink's policy; an error when it never will be.
pub type Written = oneshot::Receiver<()>;

/// One accepted event and, if its caller waits for it, who to tell once it is written.
struct Queued {
    event: Box<AuditEvent>,
    written: Option<oneshot::Sender<()>>,
}

struct Inner {
    /// The queue's only sender; taken out at shutdown. The writer sees the queue disconnected,
    /// after draining it, once the last `try_record` still holding the sender is done with it, so
    /// an event accepted concurrently with `shutdown` is still written.
    // The event is boxed: the channel preallocates `capacity` slots, and a slot the size of an
    // event (~460 bytes) would keep megabytes resident once the ring has wrapped.
    tx: ArcSwapOption<SyncSender<Queued>>,
    shared: Arc<Shared>,
    /// The writer thread (to wake it from a backoff wait when a shutdown times out).
    writer: Option<Thread>,
    /// Completion of the writer thread; taken by the first `shutdown`.
    done: Mutex<Option<oneshot::Receiver<Outcome>>>,
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
    /// Start the writer thread (`vakt-audit`), which owns `sink` from now on. Needs no tokio
    /// runtime ([`shutdown`](Self::shutdown) does). If the thread cannot be started the log is
    /// closed from the start: every event is refused ([`AuditUnavailable::Closed`]).
    pub fn start<S: Sink>(sink: S, config: AuditConfig, chain: ChainSettings) -> Self {
        let config = AuditConfig {
            capacity: config.capacity.max(1),
            max_batch: config.max_batch.max(1),
            ..config
        };
        let (tx, rx) = mpsc::sync_channel(config.capacity);
        let shared = Arc::new(Shared::default());
        shared.healthy.store(true, Ordering::Release);
        let (done_tx, done_rx) = oneshot::channel();
        let writer_shared = shared.clone();
        let spawned = thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || {
                let outcome = run(sink, rx, &writer_shared, config, chain);
                // Nobody waits if no shutdown was called.
                let _ = done_tx.send(outcome);
            });
        let writer = match spawned {
            Ok(handle) => Some(handle.thread().clone()),
            Err(error) => {
                // The sink, the receiver and `done_tx` went with the closure: the queue is
                // disconnected and `shutdown` reports the writer as failed.
                shared.healthy.store(false, Ordering::Release);
                shared.closed.store(true, Ordering::Release);
                tracing::error!(%error, "cannot start the audit writer thread; refusing audit events");
                None
            }
        };
        Self {
            inner: Arc::new(Inner {
                tx: ArcSwapOption::from_pointee(tx),
                shared,
                writer,
                done: Mutex::new(Some(done_rx)),
            }),
        }
    }

    /// Queue an event without waiting. Fails when the queue is full, the sink is known to be
    /// failing, or the log is shut down; every failure counts as dropped.
    pub fn try_record(&self, event: AuditEvent) -> Result<(), AuditUnavailable> {
        self.enqueue(event, true, None)
    }

    /// As [`try_record`](Self::try_record), for an event whose place in the queue its caller
    /// has held since before the exchange was served ([`crate::audit::auditor::Slot`]): taken
    /// while the sink is failing too (the writer retries it until it is written), refused only
    /// once the log is shut down.
    pub fn try_record_reserved(&self, event: AuditEvent) -> Result<(), AuditUnavailable> {
        self.enqueue(event, false, None)
    }

    /// As [`try_record`](Self::try_record) (`reserved: false`) or
    /// [`try_record_reserved`](Self::try_record_reserved), and tell the caller when the event is
    /// written.
    pub fn try_record_written(
        &self,
        event: AuditEvent,
        reserved: bool,
    ) -> Result<Written, AuditUnavailable> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(event, !reserved, Some(tx))?;
        Ok(rx)
    }

    fn enqueue(
        &self,
        event: AuditEvent,
        refuse_if_failing: bool,
        written: Option<oneshot::Sender<()>>,
    ) -> Result<(), AuditUnavailable> {
        let s = &self.inner.shared;
        let refuse = |why| {
            s.dropped.fetch_add(1, Ordering::Relaxed);
            Err(why)
        };
        if s.closed.load(Ordering::Acquire) {
            return refuse(AuditUnavailable::Closed);
        }
        if refuse_if_failing && !s.healthy.load(Ordering::Acquire) {
            return refuse(AuditUnavailable::SinkFailing);
        }
        let tx = self.inner.tx.load();
        let Some(tx) = tx.as_ref() else {
            return refuse(AuditUnavailable::Closed);
        };
        // Counted before the send, so the writer never sees more written than accepted.
        s.accepted.fetch_add(1, Ordering::AcqRel);
        let queued = Queued {
            event: Box::new(event),
            written,
        };
        match tx.try_send(queued) {
            Ok(()) => Ok(()),
            Err(e) => {
                s.accepted.fetch_sub(1, Ordering::AcqRel);
                refuse(match e {
                    TrySendError::Full(_) => AuditUnavailable::QueueFull,
                    TrySendError::Disconnected(_) => AuditUnavailable::Closed,
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
        let written = s.written.load(Ordering::Acquire);
        s.accepted.load(Ordering::Acquire).saturating_sub(written)
    }

    /// `seq` of the last line written (0 before the first).
    pub fn head_seq(&self) -> u64 {
        self.inner.shared.head_seq.load(Ordering::Acquire)
    }

    /// False from a sink error until the sink takes lines again.
    pub fn healthy(&self) -> bool {
        self.inner.shared.healthy.load(Ordering::Acquire)
    }

    /// Stop accepting events and wait until every accepted event is written and synced, for at
    /// most `timeout` (then the writer is stopped and the unwritten count is reported). Other
    /// clones see [`AuditUnavailable::Closed`] afterwards.
    pub async fn shutdown(self, timeout: Duration) -> Result<(), ShutdownError> {
        let inner = &self.inner;
        inner.shared.closed.store(true, Ordering::Release);
        // Accept nothing more; what is queued is still written.
        drop(inner.tx.swap(None));
        let done = match inner.done.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let Some(done) = done else {
            // Another clone shut it down already.
            return Ok(());
        };
        match tokio::time::timeout(timeout, done).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(ShutdownError::WriterFailed(e)),
            Ok(Err(_)) => Err(ShutdownError::WriterFailed(
                "the audit writer thread is not running".into(),
            )),
            Err(_) => {
                inner.shared.stop.store(true, Ordering::Release);
                if let Some(writer) = &inner.writer {
                    writer.unpark();
                }
                Err(ShutdownError::TimedOut {
                    timeout,
                    unwritten: self.queue_depth(),
                })
            }
        }
    }
}

/// Log and count an epoch that starts without a link to the one before.
fn note_epoch_start(note: &ChainNote) {
    let Some(start) = note.epoch_start else {
        return;
    };
    if start.is_break() {
        metrics::counter!(m::AUDIT_CHAIN_BREAKS, "reason" => start.as_str()).increment(1);
        tracing::error!(
            reason = start.as_str(),
            prev_epoch = note.prev_epoch,
            checkpoint_seq = note.checkpoint_seq,
            found_seq = note.found_seq,
            "the audit trail does not continue its last checkpoint; a new epoch begins"
        );
    } else {
        tracing::info!(
            reason = start.as_str(),
            "the keyed audit chain begins after the vakt.audit/1 lines"
        );
    }
}

/// A shutdown timed out: the writer gives up.
#[derive(Debug)]
struct Stopped;

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

    /// Sleep before a retry; cut short when a shutdown gives up on the writer.
    fn wait(&mut self, shared: &Shared) -> Result<(), Stopped> {
        let until = Instant::now() + self.next;
        loop {
            if shared.stop.load(Ordering::Acquire) {
                return Err(Stopped);
            }
            let now = Instant::now();
            if now >= until {
                break;
            }
            // `shutdown` unparks the thread when it sets `stop`.
            thread::park_timeout(until - now);
        }
        self.next = self.next.checked_mul(2).unwrap_or(self.max).min(self.max);
        Ok(())
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// The writer thread's body: write until the queue is closed and drained (or a shutdown gives
/// up), then report.
fn run<S: Sink>(
    sink: S,
    rx: Receiver<Queued>,
    shared: &Shared,
    config: AuditConfig,
    chain: ChainSettings,
) -> Outcome {
    let result = panic::catch_unwind(AssertUnwindSafe(move || {
        let checkpoints = Checkpoints {
            file: chain.checkpoints.file.clone().map(CheckpointFile::new),
            settings: chain.checkpoints,
            lines: 0,
            since: None,
        };
        Writer {
            sink,
            rx,
            shared,
            config,
            backoff: Backoff::new(&config),
            unsynced: 0,
            unsynced_waiting: Vec::new(),
            key: chain.key,
            checkpoints,
        }
        .write_loop()
    }));
    // The sink and the receiver are dropped by now: a `try_record` from now on is refused.
    let outcome = match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(Stopped)) => Err("stopped by a shutdown that timed out".to_owned()),
        Err(panic) => Err(format!(
            "the audit writer panicked: {}",
            panic_message(&*panic)
        )),
    };
    if let Err(e) = &outcome {
        // Nothing can be written any more: refuse events from now on.
        shared.healthy.store(false, Ordering::Release);
        shared.closed.store(true, Ordering::Release);
        tracing::error!(error = %e, "audit writer stopped");
    }
    outcome
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

/// Why the writer woke without an event.
enum Idle {
    /// The sink has a sync or a checkpoint due.
    SyncDue,
    /// The queue is closed and drained.
    Closed,
}

/// Sealed lines not yet in the sink, each with whoever waits for it.
#[derive(Default)]
struct Pending {
    lines: Vec<SealedLine>,
    waiting: Vec<Option<oneshot::Sender<()>>>,
}

impl Pending {
    fn push(&mut self, line: SealedLine, waiting: Option<oneshot::Sender<()>>) {
        self.lines.push(line);
        self.waiting.push(waiting);
    }

    fn len(&self) -> usize {
        self.lines.len()
    }

    fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// The state of the writer thread; it owns the sink.
struct Writer<'a, S> {
    sink: S,
    rx: Receiver<Queued>,
    shared: &'a Shared,
    config: AuditConfig,
    backoff: Backoff,
    /// Lines in the sink but not yet counted (a partial batch, or a batch whose flush failed).
    unsynced: u64,
    /// Callers waiting for some of those lines ([`AuditLog::try_record_written`]).
    unsynced_waiting: Vec<oneshot::Sender<()>>,
    key: Arc<ChainKey>,
    checkpoints: Checkpoints,
}

/// The checkpoint schedule's state.
struct Checkpoints {
    settings: CheckpointSettings,
    file: Option<CheckpointFile>,
    /// Lines written since the last checkpoint.
    lines: u64,
    /// When the first of them was written.
    since: Option<Instant>,
}

impl Checkpoints {
    fn wrote(&mut self, lines: u64) {
        if lines > 0 {
            self.lines += lines;
            self.since.get_or_insert_with(Instant::now);
        }
    }

    /// When the next checkpoint is due by time, if lines wait for one.
    fn deadline(&self) -> Option<Instant> {
        Some(self.since? + self.settings.interval)
    }

    fn due(&self) -> bool {
        self.lines >= self.settings.every.max(1)
            || self.deadline().is_some_and(|d| Instant::now() >= d)
    }

    /// Record `checkpoint` on stdout and in the checkpoint file. A failure is logged and the
    /// next checkpoint tries again; the audit lines themselves are already written.
    fn write(&mut self, checkpoint: &Checkpoint) {
        if self.settings.stdout {
            let mut line = checkpoint.to_line();
            line.push('\n');
            let mut out = std::io::stdout().lock();
            if let Err(error) = out.write_all(line.as_bytes()).and_then(|()| out.flush()) {
                tracing::error!(%error, "cannot write the audit checkpoint to stdout");
            }
        }
        if let Some(file) = &mut self.file
            && let Err(error) = file.append(checkpoint)
        {
            tracing::error!(%error, "cannot write the audit checkpoint file");
        }
        self.lines = 0;
        self.since = None;
    }
}

impl<S: Sink> Writer<'_, S> {
    fn write_loop(mut self) -> Result<(), Stopped> {
        // Where the trail stands: resumed from the last checkpoint, or a new epoch.
        let checkpoint = match &self.checkpoints.settings.file {
            Some(path) => loop {
                match CheckpointFile::last(path) {
                    Ok(c) => break c,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the audit checkpoint file");
                        self.shared.healthy.store(false, Ordering::Release);
                        self.backoff.wait(self.shared)?;
                    }
                }
            },
            None => None,
        };
        let tail = loop {
            match self.sink.tail(checkpoint.as_ref().map(|c| c.seq)) {
                Ok(tail) => {
                    self.shared.recovered();
                    break tail;
                }
                Err(e) => {
                    self.shared.fail(&e);
                    self.backoff.wait(self.shared)?;
                }
            }
        };
        self.backoff.reset();
        let resumption = match tail {
            Some(tail) => super::checkpoint::resume(checkpoint.as_ref(), &tail, &self.key),
            // A sink that cannot be read back starts a new trail every time.
            None => super::checkpoint::resume(None, &[], &self.key),
        };
        let mut chain = ChainWriter::resume(resumption.position, self.key.clone());
        let mut pending = Pending::default();
        // Checkpoint the new epoch as soon as its first event is written.
        let mut checkpoint_now = false;
        if let Some(note) = resumption.note {
            note_epoch_start(&note);
            pending.push(chain.seal(note_event(note)), None);
            checkpoint_now = true;
        }

        loop {
            if self.shared.stop.load(Ordering::Acquire) {
                return Err(Stopped);
            }
            if pending.is_empty() {
                let event = match self.wait() {
                    Ok(event) => event,
                    Err(Idle::SyncDue) => {
                        self.flush(false)?;
                        if self.checkpoints.due() {
                            self.checkpoint(&chain)?;
                        }
                        continue;
                    }
                    Err(Idle::Closed) => break,
                };
                pending.push(chain.seal(*event.event), event.written);
                while pending.len() < self.config.max_batch {
                    match self.rx.try_recv() {
                        Ok(event) => pending.push(chain.seal(*event.event), event.written),
                        Err(_) => break,
                    }
                }
                if pending.is_empty() {
                    continue;
                }
            }
            match self.sink.write(&pending.lines) {
                Ok(()) => {
                    let full = pending.len() >= self.config.max_batch;
                    self.wrote(&mut pending, usize::MAX);
                    self.shared
                        .head_seq
                        .store(chain.position().head_seq().unwrap_or(0), Ordering::Release);
                    self.flush(false)?;
                    if std::mem::take(&mut checkpoint_now) || self.checkpoints.due() {
                        self.checkpoint(&chain)?;
                    }
                    // Files rotation deleted, or someone else deleted, go into the trail next.
                    for out in self.sink.take_rotated_out() {
                        let note = ChainNote {
                            rotated_first_seq: out.first_seq,
                            rotated_last_seq: out.last_seq,
                            ..ChainNote::default()
                        };
                        let event = if out.deleted {
                            metrics::counter!(m::AUDIT_CHAIN_BREAKS, "reason" => FILE_DELETED)
                                .increment(1);
                            deleted_file_event(note)
                        } else {
                            note_event(note)
                        };
                        pending.push(chain.seal(event), None);
                    }
                    if !pending.is_empty() {
                        continue;
                    }
                    // Not after a full batch (there is a backlog), nor when closing.
                    if !full && !self.shared.closed.load(Ordering::Acquire) {
                        self.linger();
                    }
                }
                Err(WriteFailure { written, error }) => {
                    // The first `written` lines are in; retry the rest, unchanged.
                    self.wrote(&mut pending, written);
                    // Failing before anyone is told: a caller told its line was not written
                    // finds the sink unhealthy.
                    self.shared.fail(&error);
                    // Whoever holds a response back for one of the rest is told now, not when
                    // the sink comes back (deny mode breaks that response off); the lines stay
                    // pending and are written on recovery.
                    pending.waiting.iter_mut().for_each(|w| drop(w.take()));
                    self.settle_written();
                    self.backoff.wait(self.shared)?;
                    if pending.is_empty() {
                        // Nothing left to retry: probe the sink so health is restored.
                        self.flush(false)?;
                    }
                }
            }
        }
        // Closed and drained: everything accepted is in the sink; make it durable and record
        // where the trail ends.
        self.flush(true)?;
        self.checkpoint(&chain)
    }

    /// The first `n` lines of `pending` are in the sink: count them once flushed.
    fn wrote(&mut self, pending: &mut Pending, n: usize) {
        let n = n.min(pending.len());
        pending.lines.drain(..n);
        self.unsynced_waiting
            .extend(pending.waiting.drain(..n).flatten());
        self.unsynced += n as u64;
        self.checkpoints.wrote(n as u64);
    }

    /// Sync the sink, then record the chain's head (nothing before the first line).
    fn checkpoint(&mut self, chain: &ChainWriter) -> Result<(), Stopped> {
        self.flush(true)?;
        if let Some(checkpoint) = Checkpoint::of(&chain.position(), chain.key_id()) {
            self.checkpoints.write(&checkpoint);
        }
        Ok(())
    }

    /// Let events gather for `linger` rather than wake for each one, but not past a due sync.
    fn linger(&self) {
        let mut pause = self.config.linger;
        if let Some(deadline) = self.sink.sync_deadline() {
            pause = pause.min(deadline.saturating_duration_since(Instant::now()));
        }
        if !pause.is_zero() {
            thread::sleep(pause);
        }
    }

    /// Block until an event arrives, a sync is due, or the queue is closed and drained.
    fn wait(&self) -> Result<Queued, Idle> {
        let deadline = match (self.sink.sync_deadline(), self.checkpoints.deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match deadline {
            None => self.rx.recv().map_err(|_| Idle::Closed),
            Some(deadline) => self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .map_err(|e| match e {
                    RecvTimeoutError::Timeout => Idle::SyncDue,
                    RecvTimeoutError::Disconnected => Idle::Closed,
                }),
        }
    }

    /// Flush per policy (or `force`), retrying until it succeeds; then count the lines written.
    fn flush(&mut self, force: bool) -> Result<(), Stopped> {
        while let Err(e) = self.sink.flush(force) {
            self.shared.fail(&e);
            // Lines not known to be durable: whoever waits for them is told now.
            self.unsynced_waiting.clear();
            self.backoff.wait(self.shared)?;
        }
        self.synced();
        self.shared.recovered();
        self.backoff.reset();
        Ok(())
    }

    /// After a failed write: the lines that did go in are made durable if the sink lets us and
    /// their callers told; if not, they are told the lines are not known to be durable.
    fn settle_written(&mut self) {
        match self.sink.flush(false) {
            Ok(()) => self.synced(),
            Err(_) => self.unsynced_waiting.clear(),
        }
    }

    /// The lines in the sink are durable (per its policy): count them and tell their callers.
    fn synced(&mut self) {
        self.shared
            .written
            .fetch_add(self.unsynced, Ordering::AcqRel);
        self.unsynced = 0;
        for waiting in self.unsynced_waiting.drain(..) {
            // The caller may have gone (the client left): nothing to tell.
            let _ = waiting.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::sync::Condvar;
    use std::sync::mpsc as std_mpsc;
    use std::thread::ThreadId;

    use super::*;
    use crate::audit::event::AuditEvent;
    use crate::audit::sink::{FileSink, FileSinkConfig, FsyncPolicy};
    use crate::audit::testutil::{event, test_key, verified};

    fn chain() -> ChainSettings {
        crate::audit::testutil::unanchored_chain()
    }

    fn fast_retry(capacity: usize) -> AuditConfig {
        AuditConfig {
            capacity,
            max_batch: 256,
            linger: Duration::from_millis(1),
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

    /// Lets the test hold the writer thread: while held, the writer waits at its next sink
    /// `resume` or `write`. The writer runs on its own thread, so a test that needs events
    /// accepted before the writer gets to the sink holds it until they are.
    struct Gate {
        held: Mutex<bool>,
        changed: Condvar,
    }

    impl Gate {
        fn held() -> Arc<Self> {
            Arc::new(Self {
                held: Mutex::new(true),
                changed: Condvar::new(),
            })
        }

        fn hold(&self) {
            *self.held.lock().unwrap() = true;
        }

        fn release(&self) {
            *self.held.lock().unwrap() = false;
            self.changed.notify_all();
        }

        fn pass(&self) {
            let mut held = self.held.lock().unwrap();
            while *held {
                held = self.changed.wait(held).unwrap();
            }
        }
    }

    /// `S` behind a [`Gate`].
    struct Gated<S> {
        inner: S,
        gate: Arc<Gate>,
    }

    impl<S: Sink> Gated<S> {
        /// Held from the start: the writer waits before its first `resume`.
        fn held(inner: S) -> (Self, Arc<Gate>) {
            let gate = Gate::held();
            (
                Self {
                    inner,
                    gate: gate.clone(),
                },
                gate,
            )
        }
    }

    impl<S: Sink> Sink for Gated<S> {
        fn tail(&mut self, since: Option<u64>) -> Result<Option<Vec<Vec<u8>>>, SinkError> {
            self.gate.pass();
            self.inner.tail(since)
        }
        fn write(&mut self, lines: &[SealedLine]) -> Result<(), WriteFailure> {
            self.gate.pass();
            self.inner.write(lines)
        }
        fn flush(&mut self, force: bool) -> Result<(), SinkError> {
            self.inner.flush(force)
        }
        fn sync_deadline(&self) -> Option<Instant> {
            self.inner.sync_deadline()
        }
        fn take_rotated_out(&mut self) -> Vec<crate::audit::sink::RotatedOut> {
            self.inner.take_rotated_out()
        }
    }

    #[tokio::test]
    async fn shutdown_writes_every_accepted_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (sink, gate) = Gated::held(file_sink(
            &path,
            1 << 30,
            FsyncPolicy::Interval(Duration::from_millis(20)),
        ));
        let log = AuditLog::start(sink, fast_retry(10_000), chain());
        for n in 1..=10_000 {
            log.try_record(event(n)).unwrap();
        }
        // The writer is held before the sink: everything is queued.
        assert_eq!(log.queue_depth(), 10_000);
        assert_eq!(log.written(), 0);
        gate.release();
        let probe = log.clone();
        log.shutdown(Duration::from_secs(60)).await.unwrap();
        assert_eq!(probe.written(), 10_000);
        assert_eq!((probe.dropped(), probe.queue_depth()), (0, 0));
        assert_eq!(probe.try_record(event(1)), Err(AuditUnavailable::Closed));
        assert_eq!(probe.dropped(), 1);
        let report = verified(&[path]);
        assert!(report.is_intact(), "{report}");
        assert_eq!(report.events, 10_000);
        // A second shutdown (another clone) has nothing left to do.
        probe.shutdown(Duration::from_secs(1)).await.unwrap();
    }

    /// A sink whose writes wait for the test.
    struct GateSink {
        entered: std_mpsc::Sender<usize>,
        release: Receiver<()>,
        out: Arc<Mutex<Vec<String>>>,
    }

    impl Sink for GateSink {
        fn tail(&mut self, _since: Option<u64>) -> Result<Option<Vec<Vec<u8>>>, SinkError> {
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

    /// A caller waiting for its event learns of it once the line is in the sink, not before;
    /// and of a refusal at once.
    #[tokio::test]
    async fn a_waiting_caller_learns_when_its_event_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (sink, gate) = Gated::held(file_sink(&path, 1 << 30, FsyncPolicy::Always));
        let log = AuditLog::start(sink, fast_retry(1), chain());
        let mut written = log.try_record_written(event(1), false).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            written.try_recv().is_err(),
            "told before the line was written"
        );
        assert_eq!(
            log.try_record_written(event(2), false).err(),
            Some(AuditUnavailable::QueueFull)
        );
        gate.release();
        tokio::time::timeout(Duration::from_secs(10), written)
            .await
            .expect("told once written")
            .unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1);
        log.shutdown(Duration::from_secs(10)).await.unwrap();
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
        let log = AuditLog::start(sink, fast_retry(4), chain());
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
            .map(|l| crate::audit::parse_line(l.as_bytes()).unwrap().event.seq)
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
        let (sink, gate) = Gated::held(file_sink(&path, 1 << 20, FsyncPolicy::Always));
        let log = AuditLog::start(sink, fast_retry(100), chain());
        // Accepted before the writer first tried the sink.
        for n in 1..=20 {
            log.try_record(event(n)).unwrap();
        }
        gate.release();
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
        let report = verified(&[path]);
        assert!(report.is_intact(), "{report}");
        assert_eq!(report.events, 25);
    }

    #[tokio::test]
    async fn write_failure_mid_stream_is_retried_without_loss() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        fs::create_dir(&logs).unwrap();
        let path = logs.join("audit.log");
        // About two lines per file: every other line rotates.
        let (sink, gate) = Gated::held(file_sink(&path, 1600, FsyncPolicy::Always));
        // Held again below, around the failure.
        gate.release();
        let log = AuditLog::start(sink, fast_retry(100), chain());
        for n in 1..=3 {
            log.try_record(event(n)).unwrap();
        }
        wait_for("the first events", || log.written() == 3).await;
        // Swap the directory for a file: the open file still takes lines, rotation fails.
        let moved = dir.path().join("moved");
        fs::rename(&logs, &moved).unwrap();
        fs::write(&logs, "not a directory").unwrap();
        // All accepted before the writer tries the sink again.
        gate.hold();
        for n in 4..=9 {
            log.try_record(event(n)).unwrap();
        }
        gate.release();
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
        let report = verified(&files);
        assert!(report.is_intact(), "{report}");
        assert_eq!(report.events, 9);
    }

    /// Fails `failures` times, each time after taking the first two lines of the batch.
    struct FlakySink {
        failures: usize,
        out: Arc<Mutex<Vec<String>>>,
    }

    impl Sink for FlakySink {
        fn tail(&mut self, _since: Option<u64>) -> Result<Option<Vec<Vec<u8>>>, SinkError> {
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

    /// A failing sink does not keep callers waiting for it to recover: the one whose line was
    /// written learns it was written, the one whose line was not learns at once that it was not;
    /// the line is still written once the sink works again.
    #[tokio::test]
    async fn a_waiting_caller_is_told_at_once_when_its_line_cannot_be_written() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let (sink, gate) = Gated::held(FlakySink {
            failures: 1_000,
            out: out.clone(),
        });
        let mut config = fast_retry(10);
        config.retry_initial = Duration::from_secs(30);
        config.retry_max = Duration::from_secs(30);
        let log = AuditLog::start(sink, config, chain());
        let first = log.try_record_written(event(1), false).unwrap();
        let second = log.try_record_written(event(2), false).unwrap();
        let third = log.try_record_written(event(3), false).unwrap();
        gate.release();
        // The first two lines went in before the failure; the third did not.
        for written in [first, second] {
            tokio::time::timeout(Duration::from_secs(5), written)
                .await
                .expect("told")
                .expect("written");
        }
        tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("told long before the 30 s retry")
            .expect_err("not written");
        assert_eq!(out.lock().unwrap().len(), 2);
        assert!(!log.healthy());
    }

    #[tokio::test]
    async fn partial_writes_are_retried_in_order_without_duplicates() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let (sink, gate) = Gated::held(FlakySink {
            failures: 5,
            out: out.clone(),
        });
        let mut config = fast_retry(100);
        config.max_batch = 8;
        let log = AuditLog::start(sink, config, chain());
        for n in 1..=50 {
            log.try_record(event(n)).unwrap();
        }
        gate.release();
        let probe = log.clone();
        log.shutdown(Duration::from_secs(10)).await.unwrap();
        assert_eq!(probe.failures(), 5);
        assert_eq!(probe.written(), 50);
        assert!(probe.healthy());
        let out = out.lock().unwrap();
        let lines: Vec<crate::audit::chain::ParsedLine> = out
            .iter()
            .map(|l| crate::audit::parse_line(l.as_bytes()).unwrap())
            .collect();
        let seqs: Vec<u64> = lines.iter().map(|l| l.event.seq).collect();
        assert_eq!(seqs, (1..=50).collect::<Vec<u64>>());
        // The chain holds line to line.
        for pair in lines.windows(2) {
            assert_eq!(Some(pair[1].event.prev), pair[0].mac);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_producers_every_accepted_event_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::start(
            file_sink(&path, 256 * 1024, FsyncPolicy::Never),
            fast_retry(64),
            chain(),
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
        let report = verified(&files(&path));
        assert!(report.is_intact(), "{report}");
        assert_eq!(report.events, accepted);
    }

    #[tokio::test]
    async fn shutdown_times_out_on_a_sink_that_never_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        fs::write(&logs, "not a directory").unwrap();
        let (sink, gate) = Gated::held(file_sink(
            &logs.join("audit.log"),
            1 << 20,
            FsyncPolicy::Always,
        ));
        let log = AuditLog::start(sink, fast_retry(10), chain());
        for n in 1..=3 {
            log.try_record(event(n)).unwrap();
        }
        gate.release();
        let probe = log.clone();
        let err = log.shutdown(Duration::from_millis(200)).await.unwrap_err();
        assert!(
            matches!(err, ShutdownError::TimedOut { unwritten: 3, .. }),
            "{err}"
        );
        // The writer gave up: no more retries (they would come every 40 ms at most).
        tokio::time::sleep(Duration::from_millis(50)).await;
        let failures = probe.failures();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(probe.failures(), failures);
        assert_eq!(probe.try_record(event(4)), Err(AuditUnavailable::Closed));
    }

    /// What a [`MemorySink`] saw.
    #[derive(Debug, Default)]
    struct Record {
        /// Lines per `write` call.
        batches: Vec<usize>,
        lines: u64,
        flushes: usize,
        /// When a due sync happened.
        syncs: Vec<Instant>,
        /// Every thread that called the sink.
        threads: Vec<(ThreadId, Option<String>)>,
    }

    /// Keeps nothing but a [`Record`]; with `sync_every`, reports a sync deadline that long
    /// after the first write since the last sync (like the file sink's interval policy).
    struct MemorySink {
        record: Arc<Mutex<Record>>,
        sync_every: Option<Duration>,
        dirty_since: Option<Instant>,
    }

    impl MemorySink {
        fn new(sync_every: Option<Duration>) -> (Self, Arc<Mutex<Record>>) {
            let record = Arc::new(Mutex::new(Record::default()));
            let sink = Self {
                record: record.clone(),
                sync_every,
                dirty_since: None,
            };
            (sink, record)
        }
    }

    /// Note the calling thread.
    fn called(record: &Mutex<Record>) -> std::sync::MutexGuard<'_, Record> {
        let mut record = record.lock().unwrap();
        let me = thread::current();
        let me = (me.id(), me.name().map(str::to_owned));
        if !record.threads.contains(&me) {
            record.threads.push(me);
        }
        record
    }

    impl Sink for MemorySink {
        fn tail(&mut self, _since: Option<u64>) -> Result<Option<Vec<Vec<u8>>>, SinkError> {
            drop(called(&self.record));
            Ok(None)
        }
        fn write(&mut self, lines: &[SealedLine]) -> Result<(), WriteFailure> {
            let mut record = called(&self.record);
            record.batches.push(lines.len());
            record.lines += lines.len() as u64;
            drop(record);
            if self.sync_every.is_some() && self.dirty_since.is_none() {
                self.dirty_since = Some(Instant::now());
            }
            Ok(())
        }
        fn flush(&mut self, force: bool) -> Result<(), SinkError> {
            let mut record = called(&self.record);
            record.flushes += 1;
            if let (Some(every), Some(since)) = (self.sync_every, self.dirty_since)
                && (force || since.elapsed() >= every)
            {
                record.syncs.push(Instant::now());
                self.dirty_since = None;
            }
            Ok(())
        }
        fn sync_deadline(&self) -> Option<Instant> {
            Some(self.dirty_since? + self.sync_every?)
        }
    }

    #[tokio::test]
    async fn a_burst_is_written_in_few_batches_by_one_named_thread() {
        let (sink, record) = MemorySink::new(None);
        let log = AuditLog::start(sink, fast_retry(2000), chain());
        let events: Vec<AuditEvent> = (1..=1000).map(event).collect();
        for e in events {
            log.try_record(e).unwrap();
        }
        let probe = log.clone();
        log.shutdown(Duration::from_secs(10)).await.unwrap();
        assert_eq!((probe.written(), probe.dropped()), (1000, 0));
        let record = record.lock().unwrap();
        assert_eq!(record.lines, 1000);
        assert!(
            record.batches.iter().all(|&n| n <= 256),
            "{:?}",
            record.batches
        );
        // Not one write per event: the writer takes what has gathered while it was busy or
        // lingering.
        assert!(record.batches.len() < 50, "{:?}", record.batches);
        // Resume, writes and flushes all on the writer's own thread: no hand-off per batch.
        assert_eq!(record.threads.len(), 1, "{:?}", record.threads);
        let (id, name) = &record.threads[0];
        assert_eq!(name.as_deref(), Some(THREAD_NAME));
        assert_ne!(*id, thread::current().id());
    }

    #[tokio::test]
    async fn under_steady_load_the_writer_wakes_at_most_once_per_linger() {
        let (sink, record) = MemorySink::new(None);
        let linger = Duration::from_millis(5);
        let config = AuditConfig {
            max_batch: 100_000, // never full: every batch is followed by a linger
            linger,
            ..fast_retry(100_000)
        };
        let log = AuditLog::start(sink, config, chain());
        let events: Vec<AuditEvent> = (1..=400).map(event).collect();
        let start = Instant::now();
        // One event every 250 µs (4,000/s), for 100 ms or more: slower than the writer seals
        // them (even unoptimised), so without lingering it would wake for about every event.
        for (i, e) in events.into_iter().enumerate() {
            let at = start + Duration::from_micros(250) * u32::try_from(i).unwrap();
            while Instant::now() < at {
                std::hint::spin_loop();
            }
            log.try_record(e).unwrap();
        }
        let probe = log.clone();
        log.shutdown(Duration::from_secs(10)).await.unwrap();
        let elapsed = start.elapsed();
        assert_eq!(probe.written(), 400);
        let record = record.lock().unwrap();
        assert_eq!(record.lines, 400);
        // Batches are at least `linger` apart.
        let bound = elapsed.as_millis() / linger.as_millis() + 1;
        assert!(
            record.batches.len() as u128 <= bound,
            "{} batches in {elapsed:?}: {:?}",
            record.batches.len(),
            record.batches
        );
        assert!(record.batches.len() < 400, "{:?}", record.batches);
    }

    #[tokio::test]
    async fn a_due_sync_happens_without_new_events() {
        let every = Duration::from_millis(250);
        let (sink, record) = MemorySink::new(Some(every));
        let log = AuditLog::start(sink, fast_retry(10), chain());
        let start = Instant::now();
        log.try_record(event(1)).unwrap();
        wait_for("the event to be written", || log.written() == 1).await;
        assert!(record.lock().unwrap().syncs.is_empty(), "not due yet");
        // No more events: the writer wakes for the deadline by itself.
        wait_for("the due sync", || !record.lock().unwrap().syncs.is_empty()).await;
        {
            let record = record.lock().unwrap();
            assert!(record.syncs[0] >= start + every, "synced before it was due");
            // One flush after the batch, one at the deadline: no spinning in between.
            assert_eq!(record.flushes, 2, "{record:?}");
        }
        log.shutdown(Duration::from_secs(10)).await.unwrap();
        assert_eq!(record.lock().unwrap().syncs.len(), 1);
    }

    #[test]
    fn events_accepted_while_shutting_down_are_written() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let (sink, record) = MemorySink::new(None);
        let log = AuditLog::start(sink, fast_retry(64), chain());
        // Producers record until the log is closed under them.
        let producers: Vec<_> = (0..2u64)
            .map(|t| {
                let log = log.clone();
                thread::spawn(move || {
                    let (mut accepted, mut n) = (0u64, 0u64);
                    loop {
                        n += 1;
                        match log.try_record(event(t * 1_000_000 + n)) {
                            Ok(()) => accepted += 1,
                            Err(AuditUnavailable::QueueFull) => {}
                            Err(AuditUnavailable::Closed) => return accepted,
                            Err(other) => panic!("unexpected {other}"),
                        }
                    }
                })
            })
            .collect();
        let probe = log.clone();
        runtime.block_on(async {
            wait_for("events to flow", || probe.written() > 1000).await;
            log.shutdown(Duration::from_secs(30)).await.unwrap();
        });
        let accepted: u64 = producers.into_iter().map(|p| p.join().unwrap()).sum();
        assert_eq!(probe.written(), accepted);
        assert_eq!(record.lock().unwrap().lines, accepted);
        assert_eq!(probe.queue_depth(), 0);
    }

    /// A file trail anchored in `dir`: checkpoints after `every` lines, into `checkpoints.jsonl`.
    fn anchored(dir: &Path, every: u64) -> ChainSettings {
        ChainSettings {
            key: test_key(),
            checkpoints: CheckpointSettings {
                file: Some(dir.join("checkpoints.jsonl")),
                stdout: false,
                interval: Duration::from_secs(3600),
                every,
            },
        }
    }

    fn options_with_checkpoints(dir: &Path) -> crate::audit::VerifyOptions {
        crate::audit::VerifyOptions {
            keys: vec![crate::audit::VerifyKey {
                id: None,
                key: ChainKey::new("t1", &[3; 32]).unwrap(),
            }],
            checkpoints: Some(
                CheckpointFile::read_all(&dir.join("checkpoints.jsonl")).unwrap_or_default(),
            ),
        }
    }

    async fn run_once(dir: &Path, sink: FileSink, range: std::ops::RangeInclusive<u64>) {
        let log = AuditLog::start(sink, fast_retry(1000), anchored(dir, 7));
        for n in range {
            log.try_record(event(n)).unwrap();
        }
        let probe = log.clone();
        log.shutdown(Duration::from_secs(10)).await.unwrap();
        assert_eq!(probe.head_seq(), probe_head(dir));
    }

    /// The head of the last checkpoint.
    fn probe_head(dir: &Path) -> u64 {
        CheckpointFile::last(&dir.join("checkpoints.jsonl"))
            .unwrap()
            .map_or(0, |c| c.seq)
    }

    #[tokio::test]
    async fn a_normal_restart_continues_the_epoch_and_checkpoints_on_schedule() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        // One event at a time, so each batch is one line.
        let log = AuditLog::start(
            file_sink(&path, 1 << 20, FsyncPolicy::Never),
            fast_retry(10),
            anchored(dir.path(), 7),
        );
        for n in 1..=20 {
            log.try_record(event(n)).unwrap();
            wait_for("the event", || log.written() == n).await;
        }
        log.shutdown(Duration::from_secs(10)).await.unwrap();
        // Every 7 lines and at shutdown.
        let checkpoints = CheckpointFile::read_all(&dir.path().join("checkpoints.jsonl")).unwrap();
        let seqs: Vec<u64> = checkpoints.iter().map(|c| c.seq).collect();
        assert_eq!(seqs, [7, 14, 20]);
        run_once(
            dir.path(),
            file_sink(&path, 1 << 20, FsyncPolicy::Never),
            21..=30,
        )
        .await;
        let r = crate::audit::verify_trail(
            std::slice::from_ref(&path),
            &options_with_checkpoints(dir.path()),
        )
        .unwrap();
        assert!(r.is_intact(), "{r}");
        assert_eq!(r.events, 30);
        assert_eq!(r.segments.len(), 1, "one epoch: {r}");
        assert!(
            r.of_kind(crate::audit::FindingKind::Epoch).is_empty(),
            "{r}"
        );
    }

    #[tokio::test]
    async fn deleted_files_start_a_new_epoch_that_names_the_gap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        run_once(
            dir.path(),
            file_sink(&path, 1 << 20, FsyncPolicy::Never),
            1..=20,
        )
        .await;
        fs::remove_file(&path).unwrap();
        run_once(
            dir.path(),
            file_sink(&path, 1 << 20, FsyncPolicy::Never),
            21..=25,
        )
        .await;
        let text = fs::read_to_string(&path).unwrap();
        let first = crate::audit::parse_line(text.lines().next().unwrap().as_bytes()).unwrap();
        let note = first.event.chain.clone().unwrap();
        assert_eq!(first.event.reason.as_str(), "chain_epoch_started");
        assert_eq!(
            (first.event.epoch, first.event.seq, first.event.prev),
            (2, 21, crate::audit::ChainHash::ZERO)
        );
        assert_eq!(
            note.epoch_start,
            Some(crate::audit::EpochStart::FilesMissing)
        );
        assert_eq!(
            (note.prev_epoch, note.checkpoint_seq, note.found_seq),
            (Some(1), Some(20), None)
        );
        let r = crate::audit::verify_trail(
            std::slice::from_ref(&path),
            &options_with_checkpoints(dir.path()),
        )
        .unwrap();
        let epochs = r.of_kind(crate::audit::FindingKind::Epoch);
        assert_eq!(epochs.len(), 1, "{r}");
        assert!(epochs[0].problem);
        assert!(epochs[0].detail.contains("files_missing"), "{r}");
        // Checkpoints of epoch 1 name seqs the files no longer hold: no truncated tail is
        // claimed for them, the epoch start accounts for it; the trail is still not intact.
        assert!(!r.is_intact());
    }

    #[tokio::test]
    async fn rotation_deleting_a_file_is_recorded_in_the_trail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let sink = FileSink::new(FileSinkConfig {
            path: path.clone(),
            max_bytes: 8 * 1024,
            max_files: 2,
            fsync: FsyncPolicy::Never,
        })
        .unwrap();
        run_once(dir.path(), sink, 1..=120).await;
        let files = FileSink::files_oldest_first(&path, 2);
        let r = crate::audit::verify_trail(&files, &options_with_checkpoints(dir.path())).unwrap();
        assert!(r.is_intact(), "{r}");
        let rotated = r.of_kind(crate::audit::FindingKind::RotatedOut);
        assert_eq!(rotated.len(), 1, "{r}");
        assert_eq!(
            rotated[0].seqs,
            Some((1, r.segments[0].first_seq - 1)),
            "{r}"
        );
        // The records themselves are in the trail.
        let records = files
            .iter()
            .flat_map(|f| {
                fs::read_to_string(f)
                    .unwrap()
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .filter(|l| l.contains("\"reason\":\"audit_file_rotated_out\""))
            .count();
        assert!(records >= 1);
        // Without the records, the deletion reads as a missing start.
        let stripped: Vec<PathBuf> = files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let kept: Vec<String> = fs::read_to_string(f)
                    .unwrap()
                    .lines()
                    .filter(|l| !l.contains("audit_file_rotated_out"))
                    .map(str::to_owned)
                    .collect();
                let out = dir.path().join(format!("stripped.{i}"));
                fs::write(&out, kept.join("\n") + "\n").unwrap();
                out
            })
            .collect();
        let r =
            crate::audit::verify_trail(&stripped, &options_with_checkpoints(dir.path())).unwrap();
        assert!(
            r.problems()
                .any(|f| f.kind == crate::audit::FindingKind::MissingStart),
            "{r}"
        );
    }

    #[tokio::test]
    async fn an_idle_writer_checkpoints_after_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut chain = anchored(dir.path(), 1_000_000);
        chain.checkpoints.interval = Duration::from_millis(100);
        let log = AuditLog::start(
            file_sink(&path, 1 << 20, FsyncPolicy::Never),
            fast_retry(10),
            chain,
        );
        for n in 1..=3 {
            log.try_record(event(n)).unwrap();
        }
        wait_for("a checkpoint without new events", || {
            probe_head(dir.path()) == 3
        })
        .await;
        assert_eq!(log.head_seq(), 3);
        log.shutdown(Duration::from_secs(10)).await.unwrap();
    }

    #[tokio::test]
    async fn the_first_start_after_v1_lines_opens_the_keyed_chain_without_a_break() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let old = crate::audit::testutil::v1_lines(1..=4);
        fs::write(&path, old.join("\n") + "\n").unwrap();
        run_once(
            dir.path(),
            file_sink(&path, 1 << 20, FsyncPolicy::Never),
            5..=7,
        )
        .await;
        let text = fs::read_to_string(&path).unwrap();
        let first_keyed =
            crate::audit::parse_line(text.lines().nth(4).unwrap().as_bytes()).unwrap();
        let note = first_keyed.event.chain.unwrap();
        assert_eq!(
            note.epoch_start,
            Some(crate::audit::EpochStart::UpgradedFromV1)
        );
        assert_eq!((first_keyed.event.seq, note.found_seq), (5, Some(4)));
        let r = crate::audit::verify_trail(
            std::slice::from_ref(&path),
            &options_with_checkpoints(dir.path()),
        )
        .unwrap();
        assert!(r.is_intact(), "{r}");
        assert_eq!(r.events, 8);
        assert_eq!(r.segments.len(), 2, "{r}");
    }
}

//! The audit trail as the request path sees it: the log, the pseudonymiser for personal data,
//! and what to do when an event cannot be recorded.
//!
//! With `on_audit_failure: deny` an exchange is served only with a place in the queue held for
//! its event: [`Auditor::reserve`] takes a [`Slot`] when the request starts, and the slot is
//! used when the event is queued (or given back if it never is). Places are counted with three
//! ever-growing counters — slots taken, slots given back unused, events written — so the events
//! queued or being written plus the slots held never exceed the queue's capacity, and an event
//! with a slot always finds room.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::config::OnAuditFailure;
use super::event::AuditEvent;
use super::fields::{Decision, Direction, Label, Text};
use super::log::{AuditLog, AuditUnavailable, Written};
use super::redact::Redactor;
use crate::metrics as m;
use crate::pseudonym::Pseudonymiser;

/// At most one log line per this interval about refusals whose own event could not be queued.
const UNRECORDED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The audit trail as the stages see it.
pub struct Auditor {
    pub log: AuditLog,
    pub pseudonyms: Arc<Pseudonymiser>,
    pub on_failure: OnAuditFailure,
    /// The queue's capacity: events queued or being written plus slots held never exceed it.
    pub capacity: usize,
    /// Keeps national ids and the configured identifiers out of logged paths.
    pub redactor: Redactor,
    /// A response may reach its client in full only once its event is written (the file sink
    /// with `fsync: always`): the request path holds back its end until then.
    pub responses_wait_for_events: bool,
    /// Slots ever taken.
    taken: AtomicU64,
    /// Slots ever given back without an event queued in them.
    released: AtomicU64,
    /// When the last line about unrecorded refusals was logged (ms since `started`), and how
    /// many there were since.
    unrecorded_logged_ms: AtomicU64,
    unrecorded_since_log: AtomicU64,
    started: Instant,
}

/// A place in the audit queue held for one exchange's event. Used by [`Slot::record`]; given
/// back when dropped unused.
#[must_use = "a slot holds a place in the audit queue until it is used or dropped"]
pub struct Slot {
    auditor: Arc<Auditor>,
    used: bool,
}

impl Slot {
    /// Queue `event` in the place held for it.
    pub fn record(mut self, event: AuditEvent) {
        // Queued before the slot is counted as used: for a moment the event is counted twice,
        // never zero times.
        let queued = self.auditor.log.try_record_reserved(event);
        self.used = queued.is_ok();
        if let Err(why) = queued {
            self.auditor.dropped(why);
        }
    }

    /// As [`record`](Self::record), and learn when the event is written. An error (the log is
    /// shut down) means it never will be.
    pub fn record_written(mut self, event: AuditEvent) -> Result<Written, AuditUnavailable> {
        let queued = self.auditor.log.try_record_written(event, true);
        self.used = queued.is_ok();
        if let Err(why) = queued {
            self.auditor.dropped(why);
        }
        queued
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.used {
            self.auditor.released.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl Auditor {
    pub fn new(
        log: AuditLog,
        pseudonyms: Arc<Pseudonymiser>,
        on_failure: OnAuditFailure,
        capacity: usize,
    ) -> Self {
        Self {
            log,
            redactor: Redactor::national_ids(pseudonyms.clone()),
            responses_wait_for_events: false,
            pseudonyms,
            on_failure,
            capacity,
            taken: AtomicU64::new(0),
            released: AtomicU64::new(0),
            unrecorded_logged_ms: AtomicU64::new(0),
            unrecorded_since_log: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// Responses finish only once their event is written (see `responses_wait_for_events`).
    pub fn with_responses_waiting_for_events(mut self, wait: bool) -> Self {
        self.responses_wait_for_events = wait;
        self
    }

    /// With `redactor` (for `audit.redact_patterns`) instead of national ids only.
    pub fn with_redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = redactor;
        self
    }

    /// Hold a place in the queue for the event of an exchange about to be served.
    /// `on_audit_failure: allow`: `Ok(None)`, events are recorded best effort. `deny`: a slot,
    /// or why none is free (the sink is failing, or the queue is full counting the places held).
    pub fn reserve(self: &Arc<Self>) -> Result<Option<Slot>, AuditUnavailable> {
        if self.on_failure == OnAuditFailure::Allow {
            return Ok(None);
        }
        if !self.log.healthy() {
            return Err(AuditUnavailable::SinkFailing);
        }
        let capacity = self.capacity as u64;
        let mut taken = self.taken.load(Ordering::Acquire);
        loop {
            // Read after `taken`: if no slot is taken before the exchange below, everything
            // given back or written was in a slot counted in `taken`, so the count is exact or
            // too high, never too low. The counters only grow, so an exchange that succeeds saw
            // no slot taken in between.
            let released = self.released.load(Ordering::Acquire);
            let written = self.log.written();
            let in_use = taken.saturating_sub(released).saturating_sub(written);
            if in_use >= capacity {
                return Err(AuditUnavailable::QueueFull);
            }
            match self.taken.compare_exchange_weak(
                taken,
                taken + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Ok(Some(Slot {
                        auditor: self.clone(),
                        used: false,
                    }));
                }
                Err(now) => taken = now,
            }
        }
    }

    /// Record an event that has no slot: in `deny` mode it takes one now (so it never uses a
    /// place held for a served exchange), in `allow` mode it is queued best effort.
    pub fn record(self: &Arc<Self>, event: AuditEvent) {
        match self.reserve() {
            Ok(Some(slot)) => slot.record(event),
            Ok(None) => {
                if let Err(why) = self.log.try_record(event) {
                    self.dropped(why);
                }
            }
            Err(why) => self.dropped(why),
        }
    }

    /// As [`record`](Self::record), and learn when the event is written. `allow` mode only (in
    /// `deny` mode a served exchange holds a [`Slot`]): `None` when the event was dropped.
    pub fn record_written(self: &Arc<Self>, event: AuditEvent) -> Option<Written> {
        match self.log.try_record_written(event, false) {
            Ok(written) => Some(written),
            Err(why) => {
                self.dropped(why);
                None
            }
        }
    }

    /// An event that could not be queued: counted, and logged at most once per
    /// [`UNRECORDED_LOG_INTERVAL`] with the count since the last line (a failing sink would
    /// otherwise log once per request).
    fn dropped(&self, why: AuditUnavailable) {
        metrics::counter!(m::AUDIT_DROPPED, "reason" => why.as_str()).increment(1);
        self.log_unrecorded(why, "audit events dropped");
    }

    /// A request refused with 503 `audit_unavailable` because no slot was free: its own event
    /// cannot be queued either. Counted as a dropped event and logged as [`Auditor::dropped`]
    /// is.
    pub fn refused_unrecorded(&self, why: AuditUnavailable) {
        metrics::counter!(m::AUDIT_DROPPED, "reason" => why.as_str()).increment(1);
        self.log_unrecorded(
            why,
            "requests refused (503 audit_unavailable) without an audit event of their own",
        );
    }

    /// One ERROR line per [`UNRECORDED_LOG_INTERVAL`] at most, with how many events went
    /// unrecorded since the last one.
    fn log_unrecorded(&self, why: AuditUnavailable, message: &'static str) {
        self.unrecorded_since_log.fetch_add(1, Ordering::Relaxed);
        // Zero stands for "never logged", so the clock reads at least 1.
        let now = u64::try_from(self.started.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let last = self.unrecorded_logged_ms.load(Ordering::Relaxed);
        let interval = UNRECORDED_LOG_INTERVAL.as_millis() as u64;
        let due = last == 0 || now.saturating_sub(last) >= interval;
        // One caller wins the exchange and logs the count so far.
        if due
            && self
                .unrecorded_logged_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let unrecorded = self.unrecorded_since_log.swap(0, Ordering::Relaxed);
            tracing::error!(reason = why.as_str(), unrecorded, "{message}");
        }
    }

    /// The trail's failure counters at zero (`metrics::register_at_zero`): dropped events by
    /// reason, chain breaks by reason.
    pub fn register_failure_series() {
        for why in AuditUnavailable::ALL {
            m::register_at_zero(m::AUDIT_DROPPED, &[("reason", why.as_str())]);
        }
        for start in super::fields::EpochStart::ALL {
            if start.is_break() {
                m::register_at_zero(m::AUDIT_CHAIN_BREAKS, &[("reason", start.as_str())]);
            }
        }
        m::register_at_zero(
            m::AUDIT_CHAIN_BREAKS,
            &[("reason", super::log::FILE_DELETED)],
        );
    }

    /// A refused TLS handshake: who tried, and why.
    pub fn handshake_refused(
        self: &Arc<Self>,
        reason: &'static str,
        peer: Option<&str>,
        source: Option<std::net::SocketAddr>,
    ) {
        let mut event = AuditEvent::new(
            Direction::Handshake,
            Decision::Refused,
            Label::sanitized_static(reason),
        );
        event.peer = peer.map(Text::sanitized);
        event.source = source.map(|a| Text::sanitized(&a.to_string()));
        self.record(event);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::audit::log::AuditConfig;
    use crate::audit::sink::{Sink, SinkError, WriteFailure};
    use crate::audit::{SealedLine, testutil};

    /// A sink that writes nothing until told to, then counts what it was given.
    struct Gate {
        open: mpsc::Receiver<()>,
        lines: Arc<AtomicU64>,
    }

    impl Sink for Gate {
        fn tail(&mut self, _since: Option<u64>) -> Result<Option<Vec<Vec<u8>>>, SinkError> {
            Ok(None)
        }
        fn write(&mut self, lines: &[SealedLine]) -> Result<(), WriteFailure> {
            let _ = self.open.recv();
            self.lines.fetch_add(lines.len() as u64, Ordering::AcqRel);
            Ok(())
        }
        fn flush(&mut self, _force: bool) -> Result<(), SinkError> {
            Ok(())
        }
    }

    fn auditor(on_failure: OnAuditFailure, capacity: usize) -> (Arc<Auditor>, mpsc::Sender<()>) {
        let (open, gate) = mpsc::channel();
        let sink = Gate {
            open: gate,
            lines: Arc::default(),
        };
        let log = AuditLog::start(
            sink,
            AuditConfig {
                capacity,
                ..AuditConfig::default()
            },
            testutil::unanchored_chain(),
        );
        let pseudonyms = Arc::new(Pseudonymiser::from_secret("k1", &[1; 32]));
        (
            Arc::new(Auditor::new(log, pseudonyms, on_failure, capacity)),
            open,
        )
    }

    #[test]
    fn slots_held_and_events_queued_never_exceed_the_capacity() {
        let (auditor, open) = auditor(OnAuditFailure::Deny, 3);
        let a = auditor.reserve().unwrap().unwrap();
        let b = auditor.reserve().unwrap().unwrap();
        let c = auditor.reserve().unwrap().unwrap();
        assert_eq!(
            auditor.reserve().err(),
            Some(AuditUnavailable::QueueFull),
            "three places held"
        );
        // Given back unused: the place is free again.
        drop(c);
        let c = auditor.reserve().unwrap().unwrap();
        // Used: the place stays taken until the event is written.
        a.record(testutil::event(1));
        b.record(testutil::event(2));
        assert_eq!(auditor.reserve().err(), Some(AuditUnavailable::QueueFull));
        // An event without a slot (a refused handshake) does not take a place held for another.
        auditor.handshake_refused("unknown_ca", None, None);
        c.record(testutil::event(3));
        assert_eq!(
            auditor.log.dropped(),
            0,
            "every event with a slot was queued"
        );
        // Once written, the places are free.
        for _ in 0..3 {
            open.send(()).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while auditor.log.written() < 3 {
            assert!(Instant::now() < deadline, "events not written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(auditor.reserve().unwrap().is_some());
    }

    #[test]
    fn allow_mode_holds_no_places() {
        let (auditor, _open) = auditor(OnAuditFailure::Allow, 1);
        for _ in 0..5 {
            assert!(auditor.reserve().unwrap().is_none());
        }
    }

    /// Many threads reserving and recording at once never queue more than the capacity, and
    /// never drop an event that had a slot.
    #[test]
    fn concurrent_reservations_are_exact() {
        let (auditor, open) = auditor(OnAuditFailure::Deny, 50);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let auditor = auditor.clone();
                std::thread::spawn(move || {
                    let mut served = 0u64;
                    for n in 0..100u64 {
                        if let Ok(Some(slot)) = auditor.reserve() {
                            // Some exchanges end without an event queued (slot given back).
                            if n % 5 == 0 {
                                drop(slot);
                            } else {
                                slot.record(testutil::event(t * 1000 + n));
                                served += 1;
                            }
                        }
                    }
                    served
                })
            })
            .collect();
        let served: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(auditor.log.dropped(), 0);
        assert!(served <= 50, "{served} events queued in a queue of 50");
        assert!(served > 0);
        drop(open);
    }
}

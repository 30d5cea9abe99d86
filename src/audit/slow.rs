//! A sink that waits before every write: a slow disk, for the tests of a full audit queue
//! (feature `test-support`; never in the production build).

use std::time::{Duration, Instant};

use super::chain::SealedLine;
use super::sink::{RotatedOut, Sink, SinkError, WriteFailure};

/// `inner`, with `delay` before each write.
pub struct SlowSink<S> {
    inner: S,
    delay: Duration,
}

impl<S: Sink> SlowSink<S> {
    pub fn new(inner: S, delay: Duration) -> Self {
        Self { inner, delay }
    }
}

impl<S: Sink> Sink for SlowSink<S> {
    fn tail(&mut self, since: Option<u64>) -> Result<Option<Vec<Vec<u8>>>, SinkError> {
        self.inner.tail(since)
    }

    fn write(&mut self, lines: &[SealedLine]) -> Result<(), WriteFailure> {
        std::thread::sleep(self.delay);
        self.inner.write(lines)
    }

    fn flush(&mut self, force: bool) -> Result<(), SinkError> {
        self.inner.flush(force)
    }

    fn sync_deadline(&self) -> Option<Instant> {
        self.inner.sync_deadline()
    }

    fn take_rotated_out(&mut self) -> Vec<RotatedOut> {
        self.inner.take_rotated_out()
    }
}

//! A sink that waits before every write: a slow disk, for the tests of a full audit queue
//! (feature `test-support`; never in the production build).

use std::time::{Duration, Instant};

use super::chain::{ChainPosition, SealedLine};
use super::sink::{Sink, SinkError, WriteFailure};

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
    fn resume(&mut self) -> Result<Option<ChainPosition>, SinkError> {
        self.inner.resume()
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
}

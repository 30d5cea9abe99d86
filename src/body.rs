//! The one body type that flows through vakt's stacks: a boxed, streaming body. Bodies are never
//! buffered whole; vakt only makes small bodies of its own (denials, admin pages).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Box any streaming body (the incoming request, the app's response).
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Why a forwarded request body was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyStalled {
    /// The client sent nothing for `limits.request_body_timeout` while vakt waited for more.
    #[error("no request body data within limits.request_body_timeout")]
    Idle,
    /// Over `limits.request_body_rate_window` of waiting, the client sent less than
    /// `limits.request_body_min_rate` bytes per second.
    #[error("request body slower than limits.request_body_min_rate")]
    TooSlow,
}

/// What a forwarded request body must keep up, and the counters of its firings.
#[derive(Clone)]
pub struct BodyPace {
    /// Longest wait for the next frame.
    pub idle_timeout: Duration,
    pub idle_fired: metrics::Counter,
    /// The slowest the client may send, if checked.
    pub min_rate: Option<MinRate>,
    pub too_slow_fired: metrics::Counter,
}

/// A minimum sending rate, measured over each `window` of time spent waiting for the client.
#[derive(Debug, Clone, Copy)]
pub struct MinRate {
    pub bytes_per_second: u64,
    pub window: Duration,
}

/// Which limit cut a body wrapped by [`with_pace`] off, if any.
#[derive(Debug, Clone, Default)]
pub struct PaceVerdict(Arc<AtomicU8>);

const NOT_STALLED: u8 = 0;
const STALLED_IDLE: u8 = 1;
const STALLED_TOO_SLOW: u8 = 2;

impl PaceVerdict {
    pub fn fired(&self) -> Option<BodyStalled> {
        match self.0.load(Ordering::Relaxed) {
            NOT_STALLED => None,
            STALLED_IDLE => Some(BodyStalled::Idle),
            _ => Some(BodyStalled::TooSlow),
        }
    }

    /// Record the firing; the body answers with its error from now on.
    fn set(&self, stalled: BodyStalled) {
        let code = match stalled {
            BodyStalled::Idle => STALLED_IDLE,
            BodyStalled::TooSlow => STALLED_TOO_SLOW,
        };
        self.0.store(code, Ordering::Relaxed);
    }
}

/// Wrap a request body so that it ends with a [`BodyStalled`] error once its sender has sent
/// nothing for the idle timeout, or (with a minimum rate) has sent too little over a window.
/// Both clocks run only while the reader waits for the client, so an upstream that reads slowly
/// never counts against the client; the rate is checked as each frame arrives, so the first
/// window is the grace period and a client that stops altogether meets the idle timeout.
pub fn with_pace(body: ProxyBody, pace: BodyPace) -> (ProxyBody, PaceVerdict) {
    let verdict = PaceVerdict::default();
    let body = Paced {
        inner: body,
        sleep: tokio::time::sleep(pace.idle_timeout),
        waiting_since: None,
        window_waited: Duration::ZERO,
        window_bytes: 0,
        pace,
        verdict: verdict.clone(),
    };
    (body.boxed_unsync(), verdict)
}

pin_project_lite::pin_project! {
    /// One timer per body: armed when the inner body first has nothing to give, disarmed by the
    /// next frame, and reset in place (no allocation) when armed again.
    struct Paced {
        inner: ProxyBody,
        #[pin]
        sleep: Sleep,
        // When the reader started waiting for the client; `None` while frames are at hand.
        waiting_since: Option<Instant>,
        // Time spent waiting and bytes received in the current rate window.
        window_waited: Duration,
        window_bytes: u64,
        pace: BodyPace,
        verdict: PaceVerdict,
    }
}

/// Whether `bytes` received over `waited` are fewer than `rate` allows, once a whole window
/// has been waited; `None` while the window is still open.
fn below_rate(rate: &MinRate, bytes: u64, waited: Duration) -> Option<bool> {
    (waited >= rate.window)
        .then(|| u128::from(bytes) * 1000 < u128::from(rate.bytes_per_second) * waited.as_millis())
}

impl Body for Paced {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Some(stalled) = this.verdict.fired() {
            return Poll::Ready(Some(Err(stalled.into())));
        }
        if let Poll::Ready(frame) = Pin::new(&mut *this.inner).poll_frame(cx) {
            let waited_since = this.waiting_since.take();
            if let (Some(rate), Some(Ok(frame))) = (&this.pace.min_rate, &frame) {
                if let Some(since) = waited_since {
                    *this.window_waited += since.elapsed();
                }
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                *this.window_bytes = this.window_bytes.saturating_add(len);
                match below_rate(rate, *this.window_bytes, *this.window_waited) {
                    Some(true) => {
                        this.verdict.set(BodyStalled::TooSlow);
                        this.pace.too_slow_fired.increment(1);
                        return Poll::Ready(Some(Err(BodyStalled::TooSlow.into())));
                    }
                    Some(false) => {
                        *this.window_waited = Duration::ZERO;
                        *this.window_bytes = 0;
                    }
                    None => {}
                }
            }
            return Poll::Ready(frame);
        }
        if this.waiting_since.is_none() {
            let now = Instant::now();
            *this.waiting_since = Some(now);
            this.sleep.as_mut().reset(now + this.pace.idle_timeout);
        }
        if this.sleep.poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.verdict.set(BodyStalled::Idle);
        this.pace.idle_fired.increment(1);
        Poll::Ready(Some(Err(BodyStalled::Idle.into())))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn pace(min_rate: Option<MinRate>) -> BodyPace {
        BodyPace {
            idle_timeout: TIMEOUT,
            idle_fired: metrics::Counter::noop(),
            min_rate,
            too_slow_fired: metrics::Counter::noop(),
        }
    }

    /// A body fed frame by frame through a channel; dropping the sender ends it.
    fn channel_body() -> (mpsc::Sender<Bytes>, ProxyBody) {
        let (tx, rx) = mpsc::channel::<Bytes>(8);
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            let data = rx.recv().await?;
            Some((Ok::<_, BoxError>(Frame::data(data)), rx))
        });
        (tx, boxed(http_body_util::StreamBody::new(frames)))
    }

    async fn next_data(body: &mut ProxyBody) -> Option<Result<Bytes, BoxError>> {
        let frame = body.frame().await?;
        Some(frame.map(|f| f.into_data().expect("a data frame")))
    }

    fn stalled(error: &BoxError) -> Option<BodyStalled> {
        error.downcast_ref::<BodyStalled>().copied()
    }

    /// Send `count` frames of `len` bytes, `gap` apart, then end the body.
    fn trickle(tx: mpsc::Sender<Bytes>, count: usize, len: usize, gap: Duration) {
        tokio::spawn(async move {
            for _ in 0..count {
                tokio::time::sleep(gap).await;
                if tx.send(Bytes::from(vec![b'x'; len])).await.is_err() {
                    return;
                }
            }
        });
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_ends_with_the_idle_error() {
        let (tx, body) = channel_body();
        let (mut body, verdict) = with_pace(body, pace(None));
        tx.send(Bytes::from_static(b"part")).await.unwrap();
        assert_eq!(next_data(&mut body).await.unwrap().unwrap(), "part");
        let waited = Instant::now();
        let error = next_data(&mut body).await.unwrap().unwrap_err();
        assert!(waited.elapsed() >= TIMEOUT && waited.elapsed() < TIMEOUT * 2);
        assert_eq!(stalled(&error), Some(BodyStalled::Idle), "{error}");
        assert_eq!(verdict.fired(), Some(BodyStalled::Idle));
        // Never an end that could pass for a complete body.
        assert!(next_data(&mut body).await.unwrap().is_err());
        // The sender stalled: it was open (not finished) all along.
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn frames_closer_than_the_timeout_pass_whatever_the_total_time() {
        let (tx, body) = channel_body();
        let (mut body, verdict) = with_pace(body, pace(None));
        trickle(tx, 10, 1, TIMEOUT - Duration::from_secs(1));
        let mut received = 0;
        while let Some(data) = next_data(&mut body).await {
            received += data.unwrap().len();
        }
        assert_eq!(received, 10);
        assert_eq!(verdict.fired(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_pauses_is_not_counted_against_the_sender() {
        let rate = MinRate {
            bytes_per_second: 1000,
            window: Duration::from_secs(2),
        };
        let (tx, body) = channel_body();
        let (mut body, verdict) = with_pace(body, pace(Some(rate)));
        tx.send(Bytes::from_static(b"a")).await.unwrap();
        assert_eq!(next_data(&mut body).await.unwrap().unwrap(), "a");
        // The reader (a slow upstream) looks again only after three timeouts; the next frame
        // comes shortly after it does, and is big enough for the rate over the time waited.
        tokio::time::sleep(TIMEOUT * 3).await;
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            tx.send(Bytes::from(vec![b'b'; 2000])).await.unwrap();
        });
        assert_eq!(next_data(&mut body).await.unwrap().unwrap().len(), 2000);
        assert_eq!(verdict.fired(), None);
        sender.await.unwrap();
        assert!(next_data(&mut body).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_under_the_minimum_rate_is_cut_off_after_a_window() {
        // 10 bytes a second against a minimum of 100, every frame within the idle timeout.
        let rate = MinRate {
            bytes_per_second: 100,
            window: Duration::from_secs(5),
        };
        let (tx, body) = channel_body();
        let (mut body, verdict) = with_pace(body, pace(Some(rate)));
        trickle(tx, 100, 10, Duration::from_secs(1));
        let started = Instant::now();
        let mut frames = 0;
        let error = loop {
            match next_data(&mut body).await.expect("cut off before the end") {
                Ok(_) => frames += 1,
                Err(error) => break error,
            }
        };
        assert_eq!(stalled(&error), Some(BodyStalled::TooSlow), "{error}");
        assert_eq!(verdict.fired(), Some(BodyStalled::TooSlow));
        // The first window is the grace period: five frames in, the check falls on the fifth.
        assert_eq!(frames, 4);
        assert!(started.elapsed() >= rate.window);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_at_the_minimum_rate_passes_window_after_window() {
        let rate = MinRate {
            bytes_per_second: 100,
            window: Duration::from_secs(5),
        };
        let (tx, body) = channel_body();
        let (mut body, verdict) = with_pace(body, pace(Some(rate)));
        // 150 bytes a second for 60 s: twelve windows.
        trickle(tx, 60, 150, Duration::from_secs(1));
        let mut received = 0;
        while let Some(data) = next_data(&mut body).await {
            received += data.unwrap().len();
        }
        assert_eq!(received, 60 * 150);
        assert_eq!(verdict.fired(), None);
    }

    #[test]
    fn the_rate_is_judged_on_whole_windows_only() {
        let rate = MinRate {
            bytes_per_second: 100,
            window: Duration::from_secs(10),
        };
        assert_eq!(below_rate(&rate, 0, Duration::from_secs(9)), None);
        assert_eq!(below_rate(&rate, 999, Duration::from_secs(10)), Some(true));
        assert_eq!(
            below_rate(&rate, 1000, Duration::from_secs(10)),
            Some(false)
        );
        // No overflow at the extremes: 1 byte a second is under 100.
        let forever = Duration::from_secs(u64::MAX);
        assert_eq!(below_rate(&rate, u64::MAX, forever), Some(true));
    }
}

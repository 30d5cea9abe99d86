//! The one body type that flows through vakt's stacks: a boxed, streaming body. Bodies are never
//! buffered whole; vakt only makes small bodies of its own (denials, admin pages).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// A forwarded request body whose client went quiet for longer than
/// `limits.request_body_timeout` while vakt waited for the next frame.
#[derive(Debug, thiserror::Error)]
#[error("no request body data for {0:?}")]
pub struct RequestBodyTimeout(pub Duration);

/// Whether a body wrapped by [`with_idle_timeout`] was cut off by its timeout.
#[derive(Debug, Clone, Default)]
pub struct BodyTimedOut(Arc<AtomicBool>);

impl BodyTimedOut {
    pub fn fired(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Wrap a request body so that it ends with [`RequestBodyTimeout`] once its sender has sent
/// nothing for `timeout` while the reader waits. The clock runs only while the reader waits, so
/// an upstream that reads slowly never counts against the client. Each firing adds 1 to
/// `fired`.
pub fn with_idle_timeout(
    body: ProxyBody,
    timeout: Duration,
    fired: metrics::Counter,
) -> (ProxyBody, BodyTimedOut) {
    let timed_out = BodyTimedOut::default();
    let body = IdleTimeout {
        inner: body,
        sleep: tokio::time::sleep(timeout),
        waiting: false,
        timeout,
        fired,
        timed_out: timed_out.clone(),
    };
    (body.boxed_unsync(), timed_out)
}

pin_project_lite::pin_project! {
    /// One timer per body: armed when the inner body first has nothing to give, disarmed by the
    /// next frame, and reset in place (no allocation) when armed again.
    struct IdleTimeout {
        inner: ProxyBody,
        #[pin]
        sleep: Sleep,
        waiting: bool,
        timeout: Duration,
        fired: metrics::Counter,
        timed_out: BodyTimedOut,
    }
}

impl Body for IdleTimeout {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let timeout = *this.timeout;
        let timed_out = || Poll::Ready(Some(Err(RequestBodyTimeout(timeout).into())));
        if this.timed_out.fired() {
            return timed_out();
        }
        if let Poll::Ready(frame) = Pin::new(&mut *this.inner).poll_frame(cx) {
            *this.waiting = false;
            return Poll::Ready(frame);
        }
        if !*this.waiting {
            *this.waiting = true;
            this.sleep.as_mut().reset(Instant::now() + timeout);
        }
        if this.sleep.poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.timed_out.0.store(true, Ordering::Relaxed);
        this.fired.increment(1);
        timed_out()
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

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_ends_with_the_timeout_error() {
        let (tx, body) = channel_body();
        let (mut body, timed_out) = with_idle_timeout(body, TIMEOUT, metrics::Counter::noop());
        tx.send(Bytes::from_static(b"part")).await.unwrap();
        assert_eq!(next_data(&mut body).await.unwrap().unwrap(), "part");
        let waited = Instant::now();
        let error = next_data(&mut body).await.unwrap().unwrap_err();
        assert!(waited.elapsed() >= TIMEOUT && waited.elapsed() < TIMEOUT * 2);
        assert!(
            error.downcast_ref::<RequestBodyTimeout>().is_some(),
            "{error}"
        );
        assert!(timed_out.fired());
        // Never an end that could pass for a complete body.
        assert!(next_data(&mut body).await.unwrap().is_err());
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn frames_closer_than_the_timeout_pass_whatever_the_total_time() {
        let (tx, body) = channel_body();
        let (mut body, timed_out) = with_idle_timeout(body, TIMEOUT, metrics::Counter::noop());
        let sender = tokio::spawn(async move {
            for i in 0..10u8 {
                tokio::time::sleep(TIMEOUT - Duration::from_secs(1)).await;
                tx.send(Bytes::from(vec![i])).await.unwrap();
            }
        });
        let mut received = Vec::new();
        while let Some(data) = next_data(&mut body).await {
            received.extend_from_slice(&data.unwrap());
        }
        assert_eq!(received, (0..10).collect::<Vec<u8>>());
        assert!(!timed_out.fired());
        sender.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_pauses_is_not_counted_against_the_sender() {
        let (tx, body) = channel_body();
        let (mut body, timed_out) = with_idle_timeout(body, TIMEOUT, metrics::Counter::noop());
        tx.send(Bytes::from_static(b"a")).await.unwrap();
        assert_eq!(next_data(&mut body).await.unwrap().unwrap(), "a");
        // The reader (a slow upstream) looks again only after three timeouts; the next frame
        // comes shortly after it does.
        tokio::time::sleep(TIMEOUT * 3).await;
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tx.send(Bytes::from_static(b"b")).await.unwrap();
        });
        assert_eq!(next_data(&mut body).await.unwrap().unwrap(), "b");
        assert!(!timed_out.fired());
        sender.await.unwrap();
        assert!(next_data(&mut body).await.is_none());
    }
}

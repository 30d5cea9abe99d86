//! Relaying an upgraded connection (WebSocket, raw `Upgrade`) byte for byte, and closing it
//! when no byte has moved either way for `limits.tunnel_idle_timeout`: without that, a tunnel
//! both ends forgot would hold two sockets and a task until one end's TCP stack gave up.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::activity::{ActivityClock, ActivityIo};

/// How long closing an idle tunnel may wait for each side to take its close (a TLS
/// close_notify, a FIN) before the sockets are dropped anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How a tunnel ended.
#[derive(Debug, PartialEq, Eq)]
pub enum TunnelEnd {
    /// One side closed (or failed) and the other was told.
    Closed,
    /// Nothing moved for the idle timeout; vakt closed both sides.
    Idle,
}

/// Copy bytes both ways between `client` and `upstream` until either side closes, or until no
/// byte has moved for `idle_timeout`; then both sides are closed. An idle close is counted in
/// `vakt_limits_exceeded_total{limit="tunnel_idle_timeout"}` for `direction` and logged.
pub async fn relay<A, B>(
    client: A,
    upstream: B,
    idle_timeout: Duration,
    direction: &'static str,
) -> TunnelEnd
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let clock = ActivityClock::new();
    let mut client = ActivityIo {
        inner: client,
        clock: &clock,
    };
    let mut upstream = ActivityIo {
        inner: upstream,
        clock: &clock,
    };
    let ended = {
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        tokio::pin!(copy);
        loop {
            // Sleep until the current deadline; traffic since then moves it, so look again.
            let deadline = clock.last_activity() + idle_timeout;
            tokio::select! {
                result = &mut copy => {
                    if let Err(error) = result {
                        tracing::debug!(%error, direction, "upgraded connection ended with an error");
                    }
                    break TunnelEnd::Closed;
                }
                () = tokio::time::sleep_until(deadline) => {
                    if clock.last_activity() + idle_timeout <= Instant::now() {
                        break TunnelEnd::Idle;
                    }
                }
            }
        }
    };
    if ended == TunnelEnd::Idle {
        metrics::counter!(crate::metrics::LIMITS_EXCEEDED,
            "direction" => direction, "limit" => "tunnel_idle_timeout")
        .increment(1);
        tracing::info!(
            direction,
            idle_timeout = ?idle_timeout,
            "upgraded connection closed: no traffic for the idle timeout"
        );
        // Closed politely where the peer takes it; dropping the streams closes the sockets.
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            let _ = tokio::join!(client.inner.shutdown(), upstream.inner.shutdown());
        })
        .await;
    }
    ended
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test(start_paused = true)]
    async fn an_idle_tunnel_is_closed_and_an_active_one_is_not() {
        let idle = Duration::from_secs(10);
        let (client, mut client_far) = tokio::io::duplex(64);
        let (upstream, mut upstream_far) = tokio::io::duplex(64);
        let relay = tokio::spawn(relay(client, upstream, idle, "inbound"));

        // Traffic every 6 s keeps it open past 10 s (30 s in all).
        for round in 0..5u8 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            client_far.write_all(&[round]).await.unwrap();
            let mut got = [0u8; 1];
            upstream_far.read_exact(&mut got).await.unwrap();
            assert_eq!(got, [round]);
        }
        assert!(!relay.is_finished(), "closed while traffic was flowing");

        // Then silence: closed after the idle timeout, both far ends read EOF.
        assert_eq!(relay.await.unwrap(), TunnelEnd::Idle);
        let mut rest = Vec::new();
        assert_eq!(client_far.read_to_end(&mut rest).await.unwrap(), 0);
        assert_eq!(upstream_far.read_to_end(&mut rest).await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_closed_by_one_side_ends_without_waiting() {
        let (client, client_far) = tokio::io::duplex(64);
        let (upstream, mut upstream_far) = tokio::io::duplex(64);
        let relay = tokio::spawn(relay(
            client,
            upstream,
            Duration::from_secs(3600),
            "outbound",
        ));
        drop(client_far);
        let mut rest = Vec::new();
        assert_eq!(upstream_far.read_to_end(&mut rest).await.unwrap(), 0);
        drop(upstream_far);
        assert_eq!(relay.await.unwrap(), TunnelEnd::Closed);
    }
}

//! The `limits` section: timeouts and sizes that bound what one connection or request can hold,
//! for the listeners and the upstream clients.

use std::time::Duration;

use serde::Deserialize;

use crate::serde_helpers::de_duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(
        default = "defaults::handshake_timeout",
        deserialize_with = "de_duration"
    )]
    pub handshake_timeout: Duration,
    #[serde(
        default = "defaults::header_read_timeout",
        deserialize_with = "de_duration"
    )]
    pub header_read_timeout: Duration,
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: usize,
    #[serde(default = "defaults::idle_timeout", deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// A connection must begin its first request within this long of being accepted (after
    /// the TLS handshake inbound): one that sends nothing, or an HTTP/2 preface and no request,
    /// is closed instead of held for `idle_timeout`.
    #[serde(
        default = "defaults::first_request_timeout",
        deserialize_with = "de_duration"
    )]
    pub first_request_timeout: Duration,
    #[serde(
        default = "defaults::connect_timeout",
        deserialize_with = "de_duration"
    )]
    pub upstream_connect_timeout: Duration,
    #[serde(
        default = "defaults::response_timeout",
        deserialize_with = "de_duration"
    )]
    pub upstream_response_timeout: Duration,
    #[serde(default = "defaults::max_concurrent_streams")]
    pub http2_max_concurrent_streams: u32,
    #[serde(
        default = "defaults::pool_idle_timeout",
        deserialize_with = "de_duration"
    )]
    pub upstream_pool_idle_timeout: Duration,
    #[serde(default = "defaults::pool_max_idle")]
    pub upstream_pool_max_idle_per_host: usize,
    /// Connections one listener serves at once; more are closed at accept. Keep it below the
    /// process's file-descriptor limit.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Inbound connections one peer identity holds at once; more are closed after the handshake.
    #[serde(default = "defaults::max_connections_per_peer")]
    pub max_connections_per_peer: usize,
    /// How long vakt waits for the next piece of a request body it forwards; a client that
    /// stalls longer gets 408 (or, once the app answered, the forwarded request is aborted).
    #[serde(
        default = "defaults::request_body_timeout",
        deserialize_with = "de_duration"
    )]
    pub request_body_timeout: Duration,
    /// The slowest a client may send a request body, in bytes per second over each
    /// `request_body_rate_window` of waiting for it (408 or an aborted exchange below it).
    /// Absent: only `request_body_timeout` applies.
    #[serde(default)]
    pub request_body_min_rate: Option<u64>,
    /// The time spent waiting for a request body over which its rate is judged; the first window
    /// is the grace period.
    #[serde(
        default = "defaults::request_body_rate_window",
        deserialize_with = "de_duration"
    )]
    pub request_body_rate_window: Duration,
    /// An upgraded connection (WebSocket, raw upgrade) with no bytes moving either way for this
    /// long is closed on both sides.
    #[serde(
        default = "defaults::tunnel_idle_timeout",
        deserialize_with = "de_duration"
    )]
    pub tunnel_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: defaults::handshake_timeout(),
            header_read_timeout: defaults::header_read_timeout(),
            max_header_bytes: defaults::max_header_bytes(),
            idle_timeout: defaults::idle_timeout(),
            first_request_timeout: defaults::first_request_timeout(),
            upstream_connect_timeout: defaults::connect_timeout(),
            upstream_response_timeout: defaults::response_timeout(),
            http2_max_concurrent_streams: defaults::max_concurrent_streams(),
            upstream_pool_idle_timeout: defaults::pool_idle_timeout(),
            upstream_pool_max_idle_per_host: defaults::pool_max_idle(),
            max_connections: defaults::max_connections(),
            max_connections_per_peer: defaults::max_connections_per_peer(),
            request_body_timeout: defaults::request_body_timeout(),
            request_body_min_rate: None,
            request_body_rate_window: defaults::request_body_rate_window(),
            tunnel_idle_timeout: defaults::tunnel_idle_timeout(),
        }
    }
}

impl Limits {
    /// Checks of the values themselves; `Err((key, problem))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (key, value) in [
            ("limits.handshake_timeout", self.handshake_timeout),
            ("limits.header_read_timeout", self.header_read_timeout),
            ("limits.idle_timeout", self.idle_timeout),
            ("limits.first_request_timeout", self.first_request_timeout),
            (
                "limits.upstream_connect_timeout",
                self.upstream_connect_timeout,
            ),
            (
                "limits.upstream_response_timeout",
                self.upstream_response_timeout,
            ),
            ("limits.request_body_timeout", self.request_body_timeout),
            (
                "limits.request_body_rate_window",
                self.request_body_rate_window,
            ),
            ("limits.tunnel_idle_timeout", self.tunnel_idle_timeout),
        ] {
            if value.is_zero() {
                return Err((key.into(), "must be greater than zero".into()));
            }
        }
        if !(8 * 1024..=1024 * 1024).contains(&self.max_header_bytes) {
            return Err((
                "limits.max_header_bytes".into(),
                format!(
                    "{} is out of range (expected 8192 to 1048576)",
                    self.max_header_bytes
                ),
            ));
        }
        for (key, value) in [
            ("limits.max_connections", self.max_connections),
            (
                "limits.max_connections_per_peer",
                self.max_connections_per_peer,
            ),
        ] {
            if value == 0 {
                return Err((key.into(), "must be at least 1".into()));
            }
        }
        if self.max_connections_per_peer > self.max_connections {
            return Err((
                "limits.max_connections_per_peer".into(),
                format!(
                    "{} is more than limits.max_connections ({})",
                    self.max_connections_per_peer, self.max_connections
                ),
            ));
        }
        if self.request_body_min_rate == Some(0) {
            return Err((
                "limits.request_body_min_rate".into(),
                "must be at least 1 (leave it out to check no rate)".into(),
            ));
        }
        if self.http2_max_concurrent_streams == 0 {
            return Err((
                "limits.http2_max_concurrent_streams".into(),
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

mod defaults {
    use std::time::Duration;

    pub fn handshake_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn header_read_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn max_header_bytes() -> usize {
        64 * 1024
    }
    pub fn idle_timeout() -> Duration {
        Duration::from_secs(300)
    }
    pub fn first_request_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn response_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn max_concurrent_streams() -> u32 {
        256
    }
    pub fn pool_idle_timeout() -> Duration {
        Duration::from_secs(90)
    }
    pub fn pool_max_idle() -> usize {
        64
    }
    pub fn max_connections() -> usize {
        4096
    }
    pub fn max_connections_per_peer() -> usize {
        512
    }
    pub fn request_body_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn request_body_rate_window() -> Duration {
        Duration::from_secs(10)
    }
    // WebSocket clients ping every 30-60 s: five silent minutes means abandoned, not quiet.
    pub fn tunnel_idle_timeout() -> Duration {
        Duration::from_secs(300)
    }
}

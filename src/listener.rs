//! Accept loops and per-connection serving: TLS handshake (inbound), peer identity, HTTP/1.1 and
//! HTTP/2 with limits, idle timeout and graceful drain.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::Direction;
use crate::activity::{ActivityClock, ActivityIo};
use crate::body;
use crate::capture::{self, Captured, EgressTable};
use crate::hygiene::h1_framing::{ScannedIo, ScannerConfig};
use crate::hygiene::{ClientAddr, FramingError, FramingVerdict};
use crate::identity::{PeerIdentity, SpiffeId};
use crate::limits::Limits;
use crate::metrics as m;
use crate::stack::BoxStack;
use crate::tls::{ALPN_H2, CertStore, handshake_failure_reason};

/// What every connection of one listener shares.
#[derive(Clone)]
pub struct ListenerContext {
    pub direction: Direction,
    pub stack: BoxStack,
    pub limits: Arc<Limits>,
    pub shutdown: watch::Receiver<bool>,
    pub tracker: TaskTracker,
    /// Refused handshakes are audited too.
    pub auditor: Option<Arc<crate::audit::Auditor>>,
    /// This listener's connection caps.
    pub connections: Arc<ConnectionLimits>,
}

/// The connection caps of one listener: its own (`limits.max_connections`), and each peer
/// identity's (`limits.max_connections_per_peer`, inbound). A connection over a cap is closed
/// and counted in `vakt_limits_exceeded_total`.
pub struct ConnectionLimits {
    listener: Arc<Semaphore>,
    cap: usize,
    per_peer_max: usize,
    per_peer: Mutex<HashMap<SpiffeId, usize>>,
}

/// The admin listener's own connection cap (probes and scrapes need few).
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

impl ConnectionLimits {
    /// `cap` connections on the listener (`limits.max_connections`, or less when the
    /// file-descriptor limit is lower: [`fit_connection_cap`]).
    pub fn new(limits: &Limits, cap: usize) -> Arc<Self> {
        Arc::new(Self {
            listener: Arc::new(Semaphore::new(cap.max(1))),
            cap: cap.max(1),
            per_peer_max: limits.max_connections_per_peer,
            per_peer: Mutex::new(HashMap::new()),
        })
    }

    /// Connections open on this listener now.
    pub fn open(&self) -> usize {
        self.cap.saturating_sub(self.listener.available_permits())
    }

    /// A place for one more connection on this listener, held until the connection ends.
    fn try_accept(&self) -> Option<OwnedSemaphorePermit> {
        self.listener.clone().try_acquire_owned().ok()
    }

    /// A place for one more connection of `peer`, held until the connection ends.
    fn try_open_for(self: &Arc<Self>, peer: &SpiffeId) -> Option<PeerSlot> {
        let mut open = self.per_peer.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(peer.clone()).or_insert(0);
        if *count >= self.per_peer_max {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            limits: self.clone(),
            peer: peer.clone(),
        })
    }
}

/// One open connection of a peer; gives its place back when dropped.
struct PeerSlot {
    limits: Arc<ConnectionLimits>,
    peer: SpiffeId,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self
            .limits
            .per_peer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

/// Raise the soft file-descriptor limit as far as the hard one allows, and return the connection
/// cap of each of `data_listeners` listeners that fits under it: `configured`, or less when the
/// descriptors would not suffice. A data connection may hold two descriptors (the client's and
/// one towards the app or the remote sidecar); a quarter of the limit (16 to 256) stays free for
/// the admin listener, files and the issuers' clients, so probes are answered and files read
/// however many connections the data listeners hold.
pub fn fit_connection_cap(configured: usize, data_listeners: usize) -> usize {
    let soft = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => soft,
        Err(error) => {
            tracing::warn!(%error, "cannot read the file-descriptor limit; keeping limits.max_connections");
            return configured;
        }
    };
    let reserve = (soft / 4).clamp(16, 256);
    let per_listener = soft.saturating_sub(reserve) / (2 * data_listeners.max(1) as u64);
    let cap = usize::try_from(per_listener).unwrap_or(usize::MAX).max(1);
    if cap < configured {
        tracing::warn!(
            file_descriptor_limit = soft,
            configured,
            cap,
            "limits.max_connections does not fit under the file-descriptor limit; each listener takes at most `cap` connections"
        );
        cap
    } else {
        configured
    }
}

/// Accept connections until shutdown; each one is served on its own task in `tracker`.
async fn accept_loop<F, Fut>(listener: TcpListener, mut ctx: ListenerContext, on_accept: F)
where
    F: Fn(TcpStream, SocketAddr, ListenerContext) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = ctx.shutdown.changed() => break,
        };
        match accepted {
            Ok((tcp, remote)) => {
                let direction = ctx.direction.as_str();
                let Some(place) = ctx.connections.try_accept() else {
                    metrics::counter!(m::LIMITS_EXCEEDED, "direction" => direction, "limit" => "max_connections")
                        .increment(1);
                    tracing::debug!(%remote, direction, "connection refused: listener full");
                    drop(tcp);
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                metrics::counter!(m::CONNECTIONS, "direction" => direction).increment(1);
                let connection = on_accept(tcp, remote, ctx.clone());
                ctx.tracker.spawn(async move {
                    connection.await;
                    drop(place);
                });
            }
            Err(error) => {
                // Usually EMFILE/ENFILE: back off instead of spinning.
                tracing::warn!(%error, direction = ctx.direction.as_str(), "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Inbound mTLS listener: handshake (with timeout), SVID of the peer, then HTTP.
pub async fn serve_tls(listener: TcpListener, certs: Arc<CertStore>, ctx: ListenerContext) {
    accept_loop(listener, ctx, move |tcp, remote, ctx| {
        // A new acceptor per connection: a reloaded certificate or trust bundle applies to the
        // next handshake, while established connections keep theirs.
        let acceptor = TlsAcceptor::from(certs.current().server_config.clone());
        async move {
            let direction = ctx.direction.as_str();
            let auditor = ctx.auditor.clone();
            let refuse = |reason: &'static str| {
                metrics::counter!(m::HANDSHAKE_FAILURES, "direction" => direction, "reason" => reason)
                    .increment(1);
                tracing::info!(%remote, direction, reason, "TLS handshake refused");
                if let Some(auditor) = &auditor {
                    auditor.handshake_refused(reason, None, Some(remote));
                }
            };
            let tls = match tokio::time::timeout(ctx.limits.handshake_timeout, acceptor.accept(tcp)).await {
                Err(_) => return refuse("handshake_timeout"),
                Ok(Err(error)) => return refuse(handshake_failure_reason(&error)),
                Ok(Ok(tls)) => tls,
            };
            let (_, session) = tls.get_ref();
            let Some(leaf) = session.peer_certificates().and_then(|c| c.first()) else {
                return refuse("no_client_certificate");
            };
            // Already checked by the verifier during the handshake; parsed once more into a type.
            let spiffe_id = match SpiffeId::from_svid_der(leaf) {
                Ok(id) => id,
                Err(e) => return refuse(e.reason_code()),
            };
            let mut cert_sha256 = [0u8; 32];
            cert_sha256.copy_from_slice(
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf).as_ref(),
            );
            let h2 = session.alpn_protocol() == Some(ALPN_H2);
            let Some(_slot) = ctx.connections.try_open_for(&spiffe_id) else {
                metrics::counter!(m::LIMITS_EXCEEDED, "direction" => direction, "limit" => "max_connections_per_peer")
                    .increment(1);
                tracing::info!(%remote, peer = %spiffe_id, "connection refused: the peer's connection limit");
                if let Some(auditor) = &auditor {
                    auditor.handshake_refused("peer_connection_limit", Some(spiffe_id.as_str()), Some(remote));
                }
                return;
            };
            let peer = PeerIdentity::new(spiffe_id, cert_sha256);
            tracing::debug!(%remote, peer = %peer.spiffe_id, h2, "mTLS connection established");
            serve_connection(tls, Some((peer, remote)), None, ctx).await;
        }
    })
    .await;
}

/// Plaintext listener (outbound from the local app, admin).
pub async fn serve_plain(listener: TcpListener, ctx: ListenerContext) {
    accept_loop(listener, ctx, |tcp, _remote, ctx| async move {
        serve_connection(tcp, None, None, ctx).await;
    })
    .await;
}

/// The outbound listener in transparent capture: each connection is sorted by where the app was
/// connecting. Not redirected (the app dialed the listener itself): served as [`serve_plain`].
/// A mesh destination: served as HTTP, sent on to that destination only. A passthrough TLS
/// destination: relayed after its SNI check. Any other address: closed at once with a reset,
/// and audited.
pub async fn serve_transparent(
    listener: TcpListener,
    egress: Arc<EgressTable>,
    ctx: ListenerContext,
) {
    accept_loop(listener, ctx, move |tcp, _remote, ctx| {
        let egress = egress.clone();
        async move {
            let Some(destination) = capture::original_destination(&tcp) else {
                metrics::counter!(m::CAPTURED_CONNECTIONS, "destination" => "direct").increment(1);
                return serve_connection(tcp, None, None, ctx).await;
            };
            let Some(captured) = egress.lookup(destination) else {
                if let Some(auditor) = &ctx.auditor {
                    capture::refuse_unknown(destination, auditor);
                }
                // A reset, so the app fails at once instead of reading an empty response.
                let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
                return;
            };
            if is_passthrough(&tcp, &captured, ctx.limits.handshake_timeout).await {
                if let Some(auditor) = ctx.auditor.clone() {
                    // Boxed: its state (the ClientHello being read, the relay) would otherwise
                    // make every connection's future larger, and each move of it dearer.
                    Box::pin(capture::passthrough::serve(
                        tcp,
                        captured,
                        auditor,
                        ctx.limits.clone(),
                    ))
                    .await;
                }
                return;
            }
            metrics::counter!(m::CAPTURED_CONNECTIONS, "destination" => "mesh").increment(1);
            serve_connection(tcp, None, Some(captured), ctx).await;
        }
    })
    .await;
}

/// Whether a captured connection is for a passthrough entry: yes when its address has only
/// those; when it has both kinds, when the first byte is a TLS handshake record's.
async fn is_passthrough(tcp: &TcpStream, captured: &Captured, wait: Duration) -> bool {
    match (captured.mesh().next(), captured.passthrough().next()) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(_), Some(_)) => {
            let mut first = [0u8; 1];
            matches!(
                tokio::time::timeout(wait, tcp.peek(&mut first)).await,
                Ok(Ok(1)) if first[0] == TLS_HANDSHAKE_RECORD
            )
        }
    }
}

/// The content type of a TLS handshake record: the first byte of a ClientHello.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Serve HTTP/1.1 or HTTP/2 on one connection until it closes, idles out or is drained.
async fn serve_connection<I>(
    io: I,
    peer: Option<(PeerIdentity, SocketAddr)>,
    captured: Option<Captured>,
    mut ctx: ListenerContext,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let direction = ctx.direction.as_str();
    let _active = ActiveConnection::open(direction);
    let activity = Arc::new(Activity::new());
    let io = ActivityIo {
        inner: io,
        clock: activity.clock.clone(),
    };
    // Every connection is scanned, whatever ALPN said: hyper picks HTTP/1 or HTTP/2 by the first
    // bytes, so a client that negotiated h2 can still speak HTTP/1. On an HTTP/2 preface the
    // scanner gives up at once.
    let scanner = ScannerConfig {
        // The scanner must follow every head hyper accepts.
        max_head_size: ctx.limits.max_header_bytes.max(8192),
        ..ScannerConfig::default()
    };
    let (io, verdicts) = ScannedIo::with_config(io, scanner);
    let request_index = Arc::new(AtomicU64::new(0));
    let stack = ctx.stack.clone();
    let service = {
        let activity = activity.clone();
        service_fn(move |req: Request<Incoming>| {
            let mut req = req.map(body::boxed);
            if let Some((peer, remote)) = &peer {
                req.extensions_mut().insert(peer.clone());
                req.extensions_mut().insert(ClientAddr(*remote));
            }
            if let Some(captured) = &captured {
                req.extensions_mut().insert(captured.clone());
            }
            if req.version() <= http::Version::HTTP_11 {
                let index = request_index.fetch_add(1, Ordering::Relaxed);
                // No verdict for an HTTP/1 request means the scanner gave up on this
                // connection: refuse rather than forward what nobody checked.
                let verdict = verdicts
                    .take(index)
                    .unwrap_or(Err(FramingError::Unverified));
                req.extensions_mut().insert(FramingVerdict(verdict));
            }
            let in_flight = activity.begin_request();
            let response = stack.call_shared(req);
            async move {
                let response = response.await;
                drop(in_flight);
                response
            }
        })
    };

    let limits = &ctx.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);

    let idle_timeout = limits.idle_timeout;
    let mut idle_check = tokio::time::interval((idle_timeout / 4).max(Duration::from_millis(100)));
    let first_request = tokio::time::sleep(limits.first_request_timeout);
    tokio::pin!(first_request);
    let mut waiting_for_first = true;
    let mut draining = false;
    loop {
        tokio::select! {
            _ = &mut first_request, if waiting_for_first => {
                waiting_for_first = false;
                if !activity.started.load(Ordering::Relaxed) {
                    // Nothing asked of us: close at once (a graceful shutdown would wait for an
                    // HTTP/2 preface that may never come).
                    metrics::counter!(m::LIMITS_EXCEEDED, "direction" => direction, "limit" => "first_request_timeout").increment(1);
                    tracing::debug!(direction, "connection closed: no request within the first-request timeout");
                    break;
                }
            }
            result = connection.as_mut() => {
                if let Err(error) = result {
                    record_connection_error(direction, &*error);
                }
                break;
            }
            _ = ctx.shutdown.changed(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = idle_check.tick(), if !draining => {
                if activity.idle_for() >= idle_timeout {
                    draining = true;
                    metrics::counter!(m::LIMITS_EXCEEDED, "direction" => direction, "limit" => "idle_timeout").increment(1);
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Count what hyper refused on its own (it answers 400/431 or closes before our stack runs).
fn record_connection_error(direction: &'static str, error: &(dyn std::error::Error + 'static)) {
    let Some(hyper_error) = error.downcast_ref::<hyper::Error>() else {
        tracing::debug!(%error, direction, "connection ended with an error");
        return;
    };
    let limit = if hyper_error.is_parse_too_large() {
        Some("max_header_bytes")
    } else if hyper_error.is_timeout() {
        Some("header_read_timeout")
    } else {
        None
    };
    if let Some(limit) = limit {
        metrics::counter!(m::LIMITS_EXCEEDED, "direction" => direction, "limit" => limit)
            .increment(1);
    } else if hyper_error.is_parse() {
        metrics::counter!(m::DENIALS, "direction" => direction, "reason" => "malformed_request")
            .increment(1);
    }
    tracing::debug!(error = %hyper_error, direction, "connection ended with an error");
}

/// Keeps the active-connections gauge right however the connection ends.
struct ActiveConnection(&'static str);

impl ActiveConnection {
    fn open(direction: &'static str) -> Self {
        metrics::gauge!(m::ACTIVE_CONNECTIONS, "direction" => direction).increment(1.0);
        Self(direction)
    }
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        metrics::gauge!(m::ACTIVE_CONNECTIONS, "direction" => self.0).decrement(1.0);
    }
}

/// When the connection last moved bytes, and how many requests are in flight on it.
struct Activity {
    clock: Arc<ActivityClock>,
    in_flight: Arc<AtomicUsize>,
    /// A request has begun on the connection.
    started: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            clock: Arc::new(ActivityClock::new()),
            in_flight: Arc::new(AtomicUsize::new(0)),
            started: AtomicBool::new(false),
        }
    }

    fn begin_request(&self) -> InFlight {
        self.started.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.in_flight.clone())
    }

    /// Zero while a request is being handled.
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        self.clock.idle_for()
    }
}

struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

//! Pooled clients: to the local app (plaintext HTTP/1.1 or h2c) and to other sidecars (mTLS,
//! HTTP/2 when both offer it). Errors are mapped to a [`DenyReason`] here, once.

pub mod config;

pub use config::{AppProtocol, Authority, Passthrough, UpstreamConfig};

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Uri};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::body::{self, BodyPace, BodyStalled, MinRate, ProxyBody};
use crate::limits::Limits;

use crate::error::DenyReason;
use crate::exchange::OutboundDestination;
use crate::identity::SpiffeId;
use crate::tls::{CertStore, OutboundAlpn, UnexpectedServerIdentity, tls_error_reason};

/// The per-request deadlines of one client.
#[derive(Clone)]
struct Deadlines {
    response: Duration,
    /// What the request bodies it sends must keep up, with the counters of this direction.
    request_body: BodyPace,
}

impl Deadlines {
    /// Call after [`crate::metrics::install`]: the counters are registered here.
    fn new(limits: &Limits, direction: &'static str) -> Self {
        let exceeded = |limit: &'static str| {
            metrics::counter!(crate::metrics::LIMITS_EXCEEDED,
                "direction" => direction, "limit" => limit)
        };
        Self {
            response: limits.upstream_response_timeout,
            request_body: BodyPace {
                idle_timeout: limits.request_body_timeout,
                idle_fired: exceeded("request_body_timeout"),
                min_rate: limits
                    .request_body_min_rate
                    .map(|bytes_per_second| MinRate {
                        bytes_per_second,
                        window: limits.request_body_rate_window,
                    }),
                too_slow_fired: exceeded("request_body_min_rate"),
            },
        }
    }
}

/// Send a request and map every failure to the reason vakt answers with. A request body that
/// stalls or crawls is cut off (the upstream sees it aborted, never ended early): before the
/// response that is a 408, after it the response stream breaks off.
async fn send<C>(
    client: &Client<C, ProxyBody>,
    request: Request<ProxyBody>,
    deadlines: &Deadlines,
) -> Result<Response<Incoming>, DenyReason>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let (parts, body) = request.into_parts();
    // A body that has already ended (GET, HEAD, ...) needs no timer.
    let (body, pace) = if body.is_end_stream() {
        (body, None)
    } else {
        let (body, pace) = body::with_pace(body, deadlines.request_body.clone());
        (body, Some(pace))
    };
    let request = Request::from_parts(parts, body);
    let result = tokio::time::timeout(deadlines.response, client.request(request)).await;
    // HTTP/2 reports the aborted stream, not why: the verdict says it was the body's limits.
    if !matches!(result, Ok(Ok(_)))
        && let Some(stalled) = pace.and_then(|p| p.fired())
    {
        return Err(match stalled {
            BodyStalled::Idle => DenyReason::RequestBodyTimeout,
            BodyStalled::TooSlow => DenyReason::RequestBodyTooSlow,
        });
    }
    match result {
        Err(_) => Err(DenyReason::UpstreamTimeout),
        Ok(Ok(response)) => Ok(response),
        Ok(Err(error)) => Err(classify(&error)),
    }
}

fn classify(error: &hyper_util::client::legacy::Error) -> DenyReason {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(mesh) = e.downcast_ref::<MeshConnectError>() {
            return mesh.to_deny_reason();
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::TimedOut {
                return DenyReason::UpstreamConnectTimeout;
            }
            // TLS 1.3: the server checks our certificate after our side of the handshake has
            // finished, so its refusal arrives as an alert on the first read.
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return DenyReason::UpstreamTlsFailed {
                    reason: tls_error_reason(tls),
                };
            }
        }
        source = e.source();
    }
    tracing::debug!(%error, "upstream request failed");
    DenyReason::UpstreamUnavailable
}

/// Point `uri` at `scheme://authority`, keeping its path and query (`/` when it has none). Built
/// from parts: the authority was parsed once, and the path was checked when the request came in.
fn retarget(uri: &mut Uri, scheme: http::uri::Scheme, authority: &http::uri::Authority) -> bool {
    let mut parts = std::mem::take(uri).into_parts();
    parts.scheme = Some(scheme);
    parts.authority = Some(authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    match Uri::from_parts(parts) {
        Ok(target) => {
            *uri = target;
            true
        }
        Err(_) => false,
    }
}

/// Dials the local app whatever authority a request names: requests to an h2c app keep the
/// verified host in `:authority`, which is what HTTP/2 servers read as the host.
#[derive(Clone)]
struct AppConnector {
    http: HttpConnector,
    app: Uri,
}

impl tower::Service<Uri> for AppConnector {
    type Response = <HttpConnector as tower::Service<Uri>>::Response;
    type Error = <HttpConnector as tower::Service<Uri>>::Error;
    type Future = <HttpConnector as tower::Service<Uri>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx)
    }

    fn call(&mut self, _named: Uri) -> Self::Future {
        self.http.call(self.app.clone())
    }
}

/// The pooled plaintext client to the local app.
#[derive(Clone)]
pub struct AppClient {
    client: Client<AppConnector, ProxyBody>,
    /// The app's `ip:port`: the authority of requests to an HTTP/1.1 app (which reads `Host`),
    /// so that they share one pool.
    authority: http::uri::Authority,
    protocol: AppProtocol,
    deadlines: Deadlines,
}

impl AppClient {
    pub fn new(app: SocketAddr, protocol: AppProtocol, limits: &Limits) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(limits.upstream_connect_timeout));
        connector.set_nodelay(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(limits.upstream_pool_idle_timeout)
            .pool_max_idle_per_host(limits.upstream_pool_max_idle_per_host)
            .http2_only(protocol == AppProtocol::H2c);
        let authority: http::uri::Authority = app
            .to_string()
            .parse()
            .expect("a socket address is a valid URI authority");
        let connector = AppConnector {
            http: connector,
            app: Uri::from_parts({
                let mut parts = http::uri::Parts::default();
                parts.scheme = Some(http::uri::Scheme::HTTP);
                parts.authority = Some(authority.clone());
                parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
                parts
            })
            .expect("scheme, authority and path make a URI"),
        };
        Self {
            client: builder.build(connector),
            authority,
            protocol,
            deadlines: Deadlines::new(limits, crate::metrics::INBOUND),
        }
    }

    /// Send `request` (origin-form path already canonical) to the app.
    pub async fn send(
        &self,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, DenyReason> {
        // HTTP/2 carries the host in `:authority` alone, so the app cannot read two of them.
        let authority = match self.protocol {
            AppProtocol::Http1 => Some(self.authority.clone()),
            AppProtocol::H2c => request
                .headers_mut()
                .remove(http::header::HOST)
                .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok()),
        };
        let retargeted =
            authority.is_some_and(|a| retarget(request.uri_mut(), http::uri::Scheme::HTTP, &a));
        if !retargeted {
            return Err(DenyReason::UpstreamUnavailable);
        }
        *request.version_mut() = match self.protocol {
            AppProtocol::Http1 => http::Version::HTTP_11,
            AppProtocol::H2c => http::Version::HTTP_2,
        };
        send(&self.client, request, &self.deadlines).await
    }
}

/// Why an outbound mTLS connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MeshConnectError {
    #[error("destination {0} is not in the egress table")]
    UnknownDestination(String),
    #[error("connecting to {address} timed out")]
    ConnectTimeout { address: String },
    #[error("connecting to {address} failed: {source}")]
    Connect { address: String, source: io::Error },
    #[error("TLS client configuration unavailable: {0}")]
    Config(String),
    #[error("TLS handshake with {address} failed ({reason})")]
    Handshake {
        address: String,
        reason: &'static str,
        expected: SpiffeId,
        presented: Option<SpiffeId>,
    },
}

impl MeshConnectError {
    fn to_deny_reason(&self) -> DenyReason {
        match self {
            Self::UnknownDestination(authority) => DenyReason::UnknownDestination {
                authority: authority.clone(),
            },
            Self::ConnectTimeout { .. } => DenyReason::UpstreamConnectTimeout,
            Self::Connect { .. } | Self::Config(_) => DenyReason::UpstreamUnavailable,
            Self::Handshake {
                reason: "unexpected_server_identity",
                expected,
                presented,
                ..
            } => DenyReason::UpstreamIdentityMismatch {
                expected: expected.clone(),
                presented: presented.clone(),
            },
            Self::Handshake { reason, .. } => DenyReason::UpstreamTlsFailed { reason },
        }
    }
}

/// One egress table entry, resolved for connecting.
#[derive(Debug, Clone)]
struct Destination {
    /// The authority the app addressed, as the request to the remote sidecar names it in both
    /// the target and `Host` (the table key, port 80 left implicit as in a plain-HTTP `Host`).
    authority: http::uri::Authority,
    /// The same authority as the `Host` value.
    host: http::HeaderValue,
    address: String,
    server_name: ServerName<'static>,
    spiffe_id: SpiffeId,
    /// The entry as audit events name it.
    audited: OutboundDestination,
}

/// Dials the sidecar of a destination and performs mTLS, checking its SPIFFE ID. The pool keys
/// connections by the request URI's authority, which names one egress table entry.
#[derive(Clone)]
struct MeshConnector {
    table: Arc<HashMap<String, Destination>>,
    certs: Arc<CertStore>,
    alpn: OutboundAlpn,
    connect_timeout: Duration,
    handshake_timeout: Duration,
}

impl tower::Service<Uri> for MeshConnector {
    type Response = TokioIo<MeshStream>;
    type Error = MeshConnectError;
    type Future =
        Pin<Box<dyn Future<Output = Result<TokioIo<MeshStream>, MeshConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let named = uri.authority().map(|a| a.as_str()).unwrap_or_default();
            let key = Authority::parse(named, 80)
                .map(|a| a.as_str().to_owned())
                .unwrap_or_default();
            let dest = this
                .table
                .get(&key)
                .cloned()
                .ok_or(MeshConnectError::UnknownDestination(key))?;
            let config = this
                .certs
                .client_config(&dest.spiffe_id, this.alpn)
                .map_err(|e| MeshConnectError::Config(e.to_string()))?;
            let tcp = tokio::time::timeout(this.connect_timeout, TcpStream::connect(&dest.address))
                .await
                .map_err(|_| MeshConnectError::ConnectTimeout {
                    address: dest.address.clone(),
                })?
                .map_err(|source| MeshConnectError::Connect {
                    address: dest.address.clone(),
                    source,
                })?;
            let _ = tcp.set_nodelay(true);
            let handshake = TlsConnector::from(config).connect(dest.server_name.clone(), tcp);
            let handshake_error = |reason, presented| MeshConnectError::Handshake {
                address: dest.address.clone(),
                reason,
                expected: dest.spiffe_id.clone(),
                presented,
            };
            let tls = match tokio::time::timeout(this.handshake_timeout, handshake).await {
                Err(_) => return Err(handshake_error("handshake_timeout", None)),
                Ok(Err(e)) => {
                    let rustls_error = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
                    let presented = rustls_error.and_then(presented_identity);
                    let reason = rustls_error.map_or("connection_closed", tls_error_reason);
                    metrics::counter!(crate::metrics::HANDSHAKE_FAILURES,
                        "direction" => crate::metrics::OUTBOUND, "reason" => reason)
                    .increment(1);
                    return Err(handshake_error(reason, presented));
                }
                Ok(Ok(tls)) => tls,
            };
            Ok(TokioIo::new(MeshStream(tls)))
        })
    }
}

fn presented_identity(error: &rustls::Error) -> Option<SpiffeId> {
    match error {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => other
            .0
            .downcast_ref::<UnexpectedServerIdentity>()
            .map(|e| e.presented.clone()),
        _ => None,
    }
}

/// An outbound mTLS stream; tells the pool whether h2 was negotiated.
pub struct MeshStream(TlsStream<TcpStream>);

impl Connection for MeshStream {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        if self.0.get_ref().1.alpn_protocol() == Some(crate::tls::ALPN_H2) {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl AsyncRead for MeshStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for MeshStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// Pooled mTLS clients to other sidecars: one preferring h2 for ordinary requests, one on
/// HTTP/1.1 for requests that upgrade the connection.
#[derive(Clone)]
pub struct MeshClient {
    multiplexed: Client<MeshConnector, ProxyBody>,
    upgradable: Client<MeshConnector, ProxyBody>,
    table: Arc<HashMap<String, Destination>>,
    deadlines: Deadlines,
}

impl MeshClient {
    pub fn new(upstreams: &[UpstreamConfig], certs: Arc<CertStore>, limits: &Limits) -> Self {
        let table: Arc<HashMap<String, Destination>> = Arc::new(
            upstreams
                .iter()
                .filter_map(|u| Some((u, u.mesh()?)))
                .map(|(u, target)| {
                    let host = Authority::parse(target.address, 0)
                        .map(|a| a.host().to_owned())
                        .unwrap_or_default();
                    let server_name = ServerName::try_from(host).unwrap_or_else(|_| {
                        ServerName::try_from("vakt.invalid").expect("valid name")
                    });
                    let named = u
                        .authority
                        .as_str()
                        .strip_suffix(":80")
                        .unwrap_or(u.authority.as_str());
                    (
                        u.authority.as_str().to_owned(),
                        Destination {
                            authority: named
                                .parse()
                                .expect("a normalised authority is a valid URI authority"),
                            host: http::HeaderValue::from_str(named)
                                .expect("a normalised authority is a valid header value"),
                            address: target.address.to_owned(),
                            server_name,
                            spiffe_id: target.spiffe_id.clone(),
                            audited: OutboundDestination {
                                authority: Arc::from(u.authority.as_str()),
                                spiffe_id: Arc::from(target.spiffe_id.as_str()),
                            },
                        },
                    )
                })
                .collect(),
        );
        let client = |alpn| {
            let connector = MeshConnector {
                table: table.clone(),
                certs: certs.clone(),
                alpn,
                connect_timeout: limits.upstream_connect_timeout,
                handshake_timeout: limits.handshake_timeout,
            };
            Client::builder(TokioExecutor::new())
                .timer(TokioTimer::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(limits.upstream_pool_idle_timeout)
                .pool_max_idle_per_host(limits.upstream_pool_max_idle_per_host)
                .build(connector)
        };
        Self {
            multiplexed: client(OutboundAlpn::H2OrHttp11),
            upgradable: client(OutboundAlpn::Http11Only),
            table,
            deadlines: Deadlines::new(limits, crate::metrics::OUTBOUND),
        }
    }

    /// Is `authority` (normalised) in the egress table?
    pub fn knows(&self, authority: &Authority) -> bool {
        self.table.contains_key(authority.as_str())
    }

    /// The entry of `authority` as audit events name it; under transparent capture, by the
    /// connection's own label (the entry and the address dialed).
    pub fn audited(
        &self,
        authority: &Authority,
        label: Option<Arc<str>>,
    ) -> Option<OutboundDestination> {
        let entry = &self.table.get(authority.as_str())?.audited;
        Some(match label {
            None => entry.clone(),
            Some(authority) => OutboundDestination {
                authority,
                spiffe_id: entry.spiffe_id.clone(),
            },
        })
    }

    pub async fn send(
        &self,
        authority: &Authority,
        mut request: Request<ProxyBody>,
        upgrade: bool,
    ) -> Result<Response<Incoming>, DenyReason> {
        let Some(dest) = self.table.get(authority.as_str()) else {
            return Err(DenyReason::MissingDestination);
        };
        if !retarget(request.uri_mut(), http::uri::Scheme::HTTPS, &dest.authority) {
            return Err(DenyReason::MissingDestination);
        }
        // The remote sidecar refuses a `Host` that names another host than the target.
        request
            .headers_mut()
            .insert(http::header::HOST, dest.host.clone());
        *request.version_mut() = http::Version::HTTP_11;
        let client = if upgrade {
            &self.upgradable
        } else {
            &self.multiplexed
        };
        send(client, request, &self.deadlines).await
    }
}

//! Passthrough TLS: a redirected connection to an external service the app reaches over its own
//! TLS. vakt reads the ClientHello (without answering it), checks that its SNI names a
//! passthrough entry of the address the app dialed, then relays the bytes as they are, the
//! ClientHello first. Every connection leaves one audit event: refused (and why) or relayed
//! (with its byte counts and how it ended).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::egress::Captured;
use crate::audit::{AuditEvent, Auditor, Decision, Outcome, Text};
use crate::limits::Limits;

/// A ClientHello larger than one TLS record (16 KiB and its header) is refused: real ones are a
/// few hundred bytes to a few KiB, post-quantum key shares included, and a connection's buffer
/// must stay small.
const MAX_CLIENT_HELLO: usize = 16 * 1024 + 5;

/// Why a passthrough connection was refused (its audit reason and metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The first bytes are not a TLS ClientHello.
    NotTls,
    /// The ClientHello names no server (no SNI).
    SniMissing,
    /// The SNI names no passthrough entry of the address dialed.
    SniMismatch,
    /// No complete ClientHello within the handshake timeout.
    HelloTimeout,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotTls => "passthrough_not_tls",
            Self::SniMissing => "passthrough_sni_missing",
            Self::SniMismatch => "passthrough_sni_mismatch",
            Self::HelloTimeout => "passthrough_hello_timeout",
        }
    }
}

/// The ClientHello as read, and the name it asks for.
pub struct ClientHello {
    pub server_name: Option<String>,
    /// Every byte read so far, to be sent on first.
    pub bytes: Vec<u8>,
}

/// Read from `io` until a whole ClientHello has arrived.
pub async fn read_client_hello<R: AsyncRead + Unpin>(io: &mut R) -> Result<ClientHello, Refusal> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut bytes = Vec::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    loop {
        let n = io.read(&mut chunk).await.map_err(|_| Refusal::NotTls)?;
        if n == 0 || bytes.len() + n > MAX_CLIENT_HELLO {
            return Err(Refusal::NotTls);
        }
        bytes.extend_from_slice(&chunk[..n]);
        let mut fed = &chunk[..n];
        while !fed.is_empty() {
            acceptor.read_tls(&mut fed).map_err(|_| Refusal::NotTls)?;
        }
        match acceptor.accept() {
            Ok(None) => continue,
            Ok(Some(accepted)) => {
                let server_name = accepted
                    .client_hello()
                    .server_name()
                    .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
                return Ok(ClientHello { server_name, bytes });
            }
            Err(_) => return Err(Refusal::NotTls),
        }
    }
}

/// Check the ClientHello of a redirected connection against the passthrough entries of its
/// destination, and relay it there. Returns when the connection is over; audits it.
pub async fn serve(
    mut client: TcpStream,
    captured: Captured,
    auditor: Arc<Auditor>,
    limits: Arc<Limits>,
) {
    let started = Instant::now();
    // `on_audit_failure: deny`: no relay that could not be recorded.
    let slot = match auditor.reserve() {
        Ok(slot) => slot,
        Err(why) => {
            auditor.refused_unrecorded(why);
            return;
        }
    };
    let record = |event: AuditEvent| match slot {
        Some(slot) => slot.record(event),
        None => auditor.record(event),
    };
    let hello = match tokio::time::timeout(limits.handshake_timeout, read_client_hello(&mut client))
        .await
    {
        Err(_) => Err(Refusal::HelloTimeout),
        Ok(result) => result,
    };
    let matched = hello.and_then(|hello| {
        let name = hello.server_name.as_deref().ok_or(Refusal::SniMissing)?;
        let entry = captured
            .passthrough()
            .find(|e| e.authority.host() == name)
            .ok_or(Refusal::SniMismatch)?;
        Ok((entry.authority.clone(), hello))
    });
    let (authority, hello) = match matched {
        Ok(found) => found,
        Err(refusal) => {
            super::count_refusal(refusal.as_str());
            tracing::info!(destination = %captured.destination, reason = refusal.as_str(), "passthrough connection refused");
            let mut event = super::egress_event(Decision::Refused, refusal.as_str());
            event.destination = Some(Text::sanitized(&captured.destination.to_string()));
            event.outcome = Some(Outcome::Refused);
            record(event);
            return;
        }
    };
    let mut event = super::egress_event(Decision::Allow, "passthrough_tls");
    event.destination = Some(Text::sanitized(&format!(
        "{authority}({})",
        captured.destination
    )));
    let upstream = match tokio::time::timeout(
        limits.upstream_connect_timeout,
        connect(captured.destination, &hello.bytes),
    )
    .await
    {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(_)) | Err(_) => {
            tracing::info!(destination = %captured.destination, %authority, "passthrough destination unreachable");
            event.outcome = Some(Outcome::UpstreamError);
            event.bytes_in = Some(hello.bytes.len() as u64);
            event.bytes_out = Some(0);
            event.duration_ms = Some(started.elapsed().as_millis() as u64);
            record(event);
            return;
        }
    };
    metrics::counter!(crate::metrics::CAPTURED_CONNECTIONS, "destination" => "passthrough")
        .increment(1);
    let counts = Arc::new(Counts::default());
    let client = Counted {
        inner: client,
        counts: counts.clone(),
    };
    crate::tunnel::relay(
        client,
        upstream,
        limits.tunnel_idle_timeout,
        crate::metrics::OUTBOUND,
    )
    .await;
    event.outcome = Some(Outcome::Completed);
    event.bytes_in = Some(hello.bytes.len() as u64 + counts.read.load(Ordering::Relaxed));
    event.bytes_out = Some(counts.written.load(Ordering::Relaxed));
    event.duration_ms = Some(started.elapsed().as_millis() as u64);
    record(event);
}

async fn connect(destination: SocketAddr, hello: &[u8]) -> io::Result<TcpStream> {
    let mut upstream = TcpStream::connect(destination).await?;
    let _ = upstream.set_nodelay(true);
    upstream.write_all(hello).await?;
    Ok(upstream)
}

#[derive(Default)]
struct Counts {
    read: AtomicU64,
    written: AtomicU64,
}

/// A stream that counts the bytes read from and written to it.
struct Counted<I> {
    inner: I,
    counts: Arc<Counts>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.counts.read.fetch_add(n, Ordering::Relaxed);
        result
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            self.counts.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as a real client sends it, made by rustls.
    fn client_hello(server_name: &str) -> Vec<u8> {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[tokio::test]
    async fn the_sni_is_read_and_every_byte_kept() {
        let hello = client_hello("IdP.Example");
        // Arrives in small pieces.
        let (mut near, mut far) = tokio::io::duplex(64);
        let sent = hello.clone();
        tokio::spawn(async move {
            for piece in sent.chunks(50) {
                far.write_all(piece).await.unwrap();
            }
            // Keep the stream open: the reader must not need EOF.
            std::future::pending::<()>().await;
        });
        let read = read_client_hello(&mut near).await.unwrap();
        assert_eq!(read.server_name.as_deref(), Some("idp.example"));
        assert_eq!(read.bytes, hello);
    }

    #[tokio::test]
    async fn plaintext_and_truncated_hellos_are_not_tls() {
        let mut http: &[u8] = b"GET / HTTP/1.1\r\nHost: idp.example\r\n\r\n";
        assert_eq!(
            read_client_hello(&mut http).await.err(),
            Some(Refusal::NotTls)
        );
        let hello = client_hello("idp.example");
        let mut cut: &[u8] = &hello[..hello.len() / 2];
        assert_eq!(
            read_client_hello(&mut cut).await.err(),
            Some(Refusal::NotTls)
        );
    }

    #[tokio::test]
    async fn an_address_as_server_name_sends_no_sni() {
        let hello = client_hello("10.0.0.1");
        let mut io: &[u8] = &hello;
        let read = read_client_hello(&mut io).await.unwrap();
        assert_eq!(read.server_name, None);
    }
}

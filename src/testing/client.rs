//! TLS and HTTP clients for tests: present any certificate (or none), speak HTTP/1.1 or HTTP/2
//! over any stream.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::dev::certs::{BUNDLE_FILE, CERT_FILE, KEY_FILE};

/// A raw rustls client config from the files in `dir` (cert.pem, key.pem, bundle.pem), with no
/// checks of vakt's own, so tests can present broken certificates on purpose. `None` for `dir`
/// means no client certificate. The server must be `server_id`.
pub fn raw_client_config(
    dir: Option<&Path>,
    roots_from: &Path,
    server_id: &str,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    Arc::new(client_config_with_versions(
        dir,
        roots_from,
        server_id,
        alpn,
        rustls::DEFAULT_VERSIONS,
    ))
}

/// [`raw_client_config`] offering only `versions`, unwrapped so a test can change more of it
/// (a session store, say).
pub fn client_config_with_versions(
    dir: Option<&Path>,
    roots_from: &Path,
    server_id: &str,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(roots_from.join(BUNDLE_FILE)).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let verifier = crate::tls::SpiffeServerVerifier::new(
        Arc::new(roots),
        server_id.parse().unwrap(),
        &provider,
    );
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match dir {
        Some(dir) => {
            let chain: Vec<_> = CertificateDer::pem_file_iter(dir.join(CERT_FILE))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_file(dir.join(KEY_FILE)).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

pub async fn mtls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config)
        .connect(ServerName::try_from("orders.shop").unwrap(), tcp)
        .await
}

pub type TestBody = Full<Bytes>;

/// Send one request on a fresh HTTP/1.1 connection over `io`.
pub async fn h1_send<I>(io: I, req: Request<TestBody>) -> hyper::Result<Response<Incoming>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn.with_upgrades());
    sender.send_request(req).await
}

/// Send one request on a fresh HTTP/2 connection over `io`.
pub async fn h2_send<I>(io: I, req: Request<TestBody>) -> hyper::Result<Response<Incoming>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
    tokio::spawn(conn);
    sender.send_request(req).await
}

pub fn get(path: &str, host: &str) -> Request<TestBody> {
    Request::get(path)
        .header(http::header::HOST, host)
        .body(Full::default())
        .unwrap()
}

pub async fn body_string(response: Response<Incoming>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Plain HTTP/1.1 request to a vakt listener (outbound or admin).
pub async fn plain_send(addr: SocketAddr, req: Request<TestBody>) -> Response<Incoming> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    h1_send(tcp, req).await.unwrap()
}

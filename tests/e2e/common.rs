//! Helpers for the end-to-end tests: real sidecars on 127.0.0.1 (port 0), a real PKI made with
//! rcgen, real TLS clients. Nothing on the request path is mocked.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

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
use vakt::app::App;
use vakt::certs::{BUNDLE_FILE, CERT_FILE, KEY_FILE};
use vakt::config::Config;
use vakt::devmesh::{DevPki, EchoApp, allow_peers_policy_yaml, base_config_yaml, write_policy};

pub const TD: &str = "test.vakt.local";

pub fn init() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A server-side vakt in front of an echo app, with its PKI.
pub struct Server {
    pub pki: DevPki,
    pub app: EchoApp,
    pub vakt: App,
    pub id: String,
    pub dir: std::path::PathBuf,
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        self.vakt.inbound_addr.expect("inbound listener")
    }
}

/// Start an echo app and a server-side vakt for `spiffe://TD/ns/shop/sa/orders` allowing
/// `allowed` (service-account names in ns `shop`). `extra` is appended to the YAML (limits...).
pub async fn server(allowed: &[&str], extra: &str) -> Server {
    init();
    let pki = DevPki::new(TD).unwrap();
    let app = EchoApp::start().await.unwrap();
    let id = pki.spiffe_id("shop", "orders");
    let dir = pki.workload("orders", &id).unwrap();
    let peers: Vec<String> = allowed.iter().map(|sa| pki.spiffe_id("shop", sa)).collect();
    let policy = write_policy(&dir, &allow_peers_policy_yaml(&peers)).unwrap();
    let yaml = format!(
        "{}inbound:\n  listen: 127.0.0.1:0\n  app: {}\n  policy: {}\n{extra}",
        base_config_yaml(&dir, TD),
        app.addr,
        policy.display()
    );
    let vakt = App::start(Config::from_yaml(&yaml).unwrap()).await.unwrap();
    Server {
        pki,
        app,
        vakt,
        id,
        dir,
    }
}

/// A client-side vakt for `spiffe://TD/ns/shop/<sa>` whose egress table maps `orders.shop:80`
/// to `server_addr`, expecting `server_id` there.
pub async fn client_sidecar(
    pki: &DevPki,
    sa: &str,
    server_addr: SocketAddr,
    server_id: &str,
) -> App {
    let dir = pki.workload(sa, &pki.spiffe_id("shop", sa)).unwrap();
    let yaml = format!(
        "{}outbound:\n  listen: 127.0.0.1:0\n  upstreams:\n  - authority: orders.shop\n    address: {server_addr}\n    spiffe_id: {server_id}\n",
        base_config_yaml(&dir, TD)
    );
    App::start(Config::from_yaml(&yaml).unwrap()).await.unwrap()
}

/// A raw rustls client config from the files in `dir` (cert.pem, key.pem, bundle.pem), with no
/// checks of vakt's own, so tests can present broken certificates on purpose. `None` for `dir`
/// means no client certificate. The server must be `server_id`.
pub fn raw_client_config(
    dir: Option<&Path>,
    roots_from: &Path,
    server_id: &str,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(roots_from.join(BUNDLE_FILE)).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let verifier = vakt::tls::SpiffeServerVerifier::new(
        Arc::new(roots),
        server_id.parse().unwrap(),
        &provider,
    );
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
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
    Arc::new(config)
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

pub async fn metrics_text(admin: SocketAddr) -> String {
    body_string(plain_send(admin, get("/metrics", "admin")).await).await
}

/// Sum of the samples of `name` whose labels include every `labels` pair.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Wait (up to 5 s) until `name{labels}` on `admin` reaches at least `at_least`.
pub async fn wait_for_metric(
    admin: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    at_least: f64,
) -> f64 {
    let mut value = 0.0;
    for _ in 0..100 {
        value = metric_sum(&metrics_text(admin).await, name, labels);
        if value >= at_least {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    value
}

/// Run the real `vakt` binary: (exit code, stdout, stderr).
pub fn run_vakt(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vakt"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An mTLS client config for the allowed peer `spiffe://TD/ns/shop/sa/web` of `server`.
pub fn web_client_config(server: &Server) -> Arc<rustls::ClientConfig> {
    let dir = server
        .pki
        .workload("web-client", &server.pki.spiffe_id("shop", "web"))
        .unwrap();
    raw_client_config(Some(&dir), &server.dir, &server.id, &[b"http/1.1"])
}

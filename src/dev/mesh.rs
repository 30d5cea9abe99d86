//! A throwaway mesh on loopback for `vakt demo` and the tests: a development PKI in a temporary
//! directory, sidecar configs on port 0, and an echo app that records what reached it.
//! Nothing here is for production.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::body::{self, ProxyBody};
use crate::dev::certs::{CertificateAuthority, IssuedCert, LeafSpec, PkiError};

/// A development CA whose files live in a temporary directory (removed on drop).
pub struct DevPki {
    dir: tempfile::TempDir,
    pub ca: CertificateAuthority,
    pub trust_domain: String,
}

impl DevPki {
    pub fn new(trust_domain: &str) -> Result<Self, PkiError> {
        let dir = tempfile::tempdir().map_err(|source| PkiError::Io {
            path: std::env::temp_dir(),
            source,
        })?;
        let ca = CertificateAuthority::generate(trust_domain, Duration::from_secs(24 * 3600))?;
        Ok(Self {
            dir,
            ca,
            trust_domain: trust_domain.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `spiffe://<trust domain>/ns/<ns>/sa/<sa>`.
    pub fn spiffe_id(&self, ns: &str, sa: &str) -> String {
        format!("spiffe://{}/ns/{ns}/sa/{sa}", self.trust_domain)
    }

    /// Issue a correct SVID into `<tmp>/<name>/` (cert.pem, key.pem, bundle.pem).
    pub fn workload(&self, name: &str, spiffe_id: &str) -> Result<PathBuf, PkiError> {
        self.workload_with(name, &LeafSpec::svid(spiffe_id, Duration::from_secs(3600)))
    }

    /// Issue a leaf made to `spec` (possibly broken on purpose) into `<tmp>/<name>/`.
    pub fn workload_with(&self, name: &str, spec: &LeafSpec) -> Result<PathBuf, PkiError> {
        let dir = self.dir.path().join(name);
        self.ca.issue(spec)?.save(&dir, &self.ca)?;
        Ok(dir)
    }

    /// Issue without writing, e.g. to rotate files in place.
    pub fn issue(&self, spec: &LeafSpec) -> Result<IssuedCert, PkiError> {
        self.ca.issue(spec)
    }

    /// Write the CA certificate alone as `<tmp>/ca-bundle.pem`: the bundle another trust domain
    /// configures for this one (`identity.federation`).
    pub fn bundle_file(&self) -> Result<PathBuf, PkiError> {
        let path = self.dir.path().join("ca-bundle.pem");
        crate::dev::certs::write_atomically(&path, self.ca.cert_pem().as_bytes(), 0o644)?;
        Ok(path)
    }
}

/// The `identity:` section, a file audit trail and loopback port-0 admin for a sidecar whose
/// files are in `dir`. Callers append `inbound:` / `outbound:` sections.
pub fn base_config_yaml(dir: &Path, trust_domain: &str) -> String {
    federated_config_yaml(dir, trust_domain, &[])
}

/// Id of the development audit chain key.
pub const DEV_CHAIN_KEY_ID: &str = "dev";
/// File name of the development audit chain key in a sidecar's directory.
pub const DEV_CHAIN_KEY_FILE: &str = "audit-chain.key";
/// File name of the checkpoint file in a sidecar's directory.
pub const DEV_CHECKPOINT_FILE: &str = "audit-checkpoints.jsonl";

/// Write a random development chain key into `dir` unless one is there (a failure shows when
/// the sidecar reads it). Development only: a real key is a Secret outside the audit volume.
pub fn dev_chain_key(dir: &Path) -> PathBuf {
    let path = dir.join(DEV_CHAIN_KEY_FILE);
    if !path.exists() {
        let mut secret = [0u8; 32];
        if aws_lc_rs::rand::fill(&mut secret).is_ok() {
            let _ =
                crate::dev::certs::write_atomically(&path, hex::encode(secret).as_bytes(), 0o600);
        }
    }
    path
}

/// [`base_config_yaml`] with `identity.federation` entries: (trust domain, bundle file).
pub fn federated_config_yaml(
    dir: &Path,
    trust_domain: &str,
    federation: &[(&str, &Path)],
) -> String {
    let federation: String = federation
        .iter()
        .map(|(td, bundle)| format!("  - trust_domain: {td}\n    bundle: {}\n", bundle.display()))
        .collect();
    let federation = if federation.is_empty() {
        federation
    } else {
        format!("  federation:\n{federation}")
    };
    format!(
        "identity:\n  trust_domain: {trust_domain}\n  cert: {cert}\n  key: {key}\n  trust_bundle: {bundle}\n{federation}  reload_interval: 1s\naudit:\n  sink: file\n  file:\n    path: {audit}\n    fsync: never\n  chain_key:\n    key_file: {chain_key}\n    key_id: {DEV_CHAIN_KEY_ID}\n  checkpoint_file: {checkpoints}\n  checkpoint_stdout: false\nadmin:\n  listen: 127.0.0.1:0\nshutdown:\n  grace_period: 5s\n",
        audit = dir.join("audit.log").display(),
        chain_key = dev_chain_key(dir).display(),
        checkpoints = dir.join(DEV_CHECKPOINT_FILE).display(),
        cert = dir.join(crate::dev::certs::CERT_FILE).display(),
        key = dir.join(crate::dev::certs::KEY_FILE).display(),
        bundle = dir.join(crate::dev::certs::BUNDLE_FILE).display(),
    )
}

/// A policy allowing `peers` every method on every path (`/**`), and WebSocket upgrades, for
/// tests and the demo.
pub fn allow_peers_policy_yaml(peers: &[String]) -> String {
    let list = peers
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "routes:\n  - id: everything\n    methods: [GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS]\n    path: /**\n    upgrade: [websocket]\n    allow:\n      - peers: [{list}]\n"
    )
}

/// Write `yaml` as `<dir>/policy.yaml` and return its path.
pub fn write_policy(dir: &Path, yaml: &str) -> std::io::Result<PathBuf> {
    let path = dir.join("policy.yaml");
    std::fs::write(&path, yaml)?;
    Ok(path)
}

/// What the echo app saw of one request.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: http::Method,
    pub path_and_query: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body_len: usize,
    /// The request's trailers, for requests whose body the app reads whole (the default path).
    pub trailers: Option<HeaderMap>,
    /// The body broke off with an error instead of ending (the client or a sidecar aborted
    /// it), for requests whose body the app reads whole; `body_len` is then 0.
    pub body_aborted: bool,
}

/// A small app: answers every request with what it saw, and records it.
///
/// - `/echo` (any method): streams the request body back unchanged.
/// - `/slow?ms=N`: answers after N milliseconds.
/// - `/bytes?n=N`: answers with N bytes, streamed.
/// - `/trailers`: a body followed by gRPC-style trailers.
/// - `/upgrade`: accepts `Upgrade: echo` with 101 and echoes raw bytes.
/// - anything else: a short text naming the caller from `x-forwarded-client-cert`.
pub struct EchoApp {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<SeenRequest>>>,
    task: JoinHandle<()>,
}

impl Drop for EchoApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoApp {
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen: Arc<Mutex<Vec<SeenRequest>>> = Arc::default();
        let recorded = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let seen = recorded.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let seen = seen.clone();
                        async move { Ok::<_, Infallible>(echo(req, seen).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, seen, task })
    }

    pub fn seen(&self) -> Vec<SeenRequest> {
        self.seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

fn query_number(req: &Request<Incoming>, key: &str) -> u64 {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

async fn echo(
    mut req: Request<Incoming>,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
) -> Response<ProxyBody> {
    let mut record = SeenRequest {
        method: req.method().clone(),
        path_and_query: req
            .uri()
            .path_and_query()
            .map_or("/".to_owned(), |pq| pq.as_str().to_owned()),
        version: req.version(),
        headers: req.headers().clone(),
        body_len: 0,
        trailers: None,
        body_aborted: false,
    };
    let path = req.uri().path().to_owned();
    let response = match path.as_str() {
        "/echo" => {
            let push = seen.clone();
            let rec = record.clone();
            // Record first (the body streams back, it is not buffered here).
            push.lock().unwrap_or_else(|p| p.into_inner()).push(rec);
            return Response::new(body::boxed(req.into_body()));
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(query_number(&req, "ms"))).await;
            Response::new(body::full("slow answer\n"))
        }
        "/trailers" => {
            // A gRPC-style answer: data, then trailers.
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            trailers.insert("grpc-message", http::HeaderValue::from_static("ok"));
            let frames = [
                http_body::Frame::data(Bytes::from_static(b"payload")),
                http_body::Frame::trailers(trailers),
            ]
            .map(Ok::<_, Infallible>);
            Response::new(body::boxed(http_body_util::StreamBody::new(
                futures_util::stream::iter(frames),
            )))
        }
        "/bytes" => {
            let n = query_number(&req, "n") as usize;
            Response::new(lazy_bytes(n))
        }
        "/upgrade" => {
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = on_upgrade.await {
                    let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            let mut response = Response::new(body::empty());
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            response.headers_mut().insert(
                http::header::UPGRADE,
                http::HeaderValue::from_static("echo"),
            );
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("upgrade"),
            );
            response
        }
        _ => {
            let caller = req
                .headers()
                .get(crate::hygiene::X_FORWARDED_CLIENT_CERT)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').find_map(|p| p.strip_prefix("URI=")))
                .unwrap_or("an unknown caller")
                .to_owned();
            let collected = req.into_body().collect().await.ok();
            record.body_aborted = collected.is_none();
            record.trailers = collected.as_ref().and_then(|c| c.trailers().cloned());
            let body = collected.map(|c| c.to_bytes()).unwrap_or_default();
            record.body_len = body.len();
            Response::new(body::full(format!("hello {caller}, this is the app\n")))
        }
    };
    seen.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(record);
    response
}

/// `n` bytes in 64 KiB frames, produced lazily as the client reads.
fn lazy_bytes(n: usize) -> ProxyBody {
    const CHUNK: usize = 64 * 1024;
    let frames = (0..n.div_ceil(CHUNK)).map(move |i| {
        let len = CHUNK.min(n - i * CHUNK);
        Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(vec![b'x'; len])))
    });
    body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
        frames,
    )))
}

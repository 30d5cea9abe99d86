//! Identity providers behind an egress proxy (`oidc.https_proxy`): discovery and JWKS go through
//! the proxy's CONNECT tunnel to an HTTPS provider with a name only the proxy resolves, TLS end
//! to end; a proxy that refuses the tunnel leaves vakt unready and says so.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use http_body_util::Full;
use hyper::body::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vakt::authn::Loa;
use vakt::dev::certs::LeafSpec;
use vakt::dev::idp::{self as devidp, KeyStore, MintOptions, Person};

const PROVIDER: &str = "idp.test";

/// An HTTPS identity provider on 127.0.0.1 whose certificate (from the mesh's dev CA) names
/// [`PROVIDER`]: its issuer URL and the task serving it.
async fn https_provider(
    pki: &vakt::dev::mesh::DevPki,
    keys: Arc<KeyStore>,
) -> (String, SocketAddr, tokio::task::JoinHandle<()>) {
    let mut spec = LeafSpec::svid("spiffe://unused", Duration::from_secs(3600));
    spec.common_name = PROVIDER.into();
    spec.uris.clear();
    spec.dns_names = vec![PROVIDER.into()];
    spec.client_auth = false;
    let leaf = pki.issue(&spec).unwrap();
    use rustls::pki_types::pem::PemObject;
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let issuer = format!("https://{PROVIDER}:{}", addr.port());
    let served = issuer.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, keys, issuer) = (acceptor.clone(), keys.clone(), served.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req: http::Request<_>| {
                    let body = match req.uri().path() {
                        "/.well-known/openid-configuration" => {
                            Some(devidp::discovery_document(&issuer))
                        }
                        "/jwks" => Some(keys.jwks()),
                        _ => None,
                    };
                    let response = match body {
                        Some(json) => http::Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(json.to_string()))),
                        None => http::Response::builder()
                            .status(404)
                            .body(Full::new(Bytes::new())),
                    };
                    async move { response }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (issuer, addr, task)
}

/// A CONNECT proxy on 127.0.0.1 that opens tunnels to `routes` (authority → address) only,
/// answers anything else 403, and records every CONNECT target it was asked for.
struct ConnectProxy {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn connect_proxy(routes: HashMap<String, SocketAddr>) -> ConnectProxy {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = asked.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            let (routes, log) = (routes.clone(), log.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    if client.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let mut words = head.split_whitespace();
                let (Some("CONNECT"), Some(target)) = (words.next(), words.next()) else {
                    let _ = client
                        .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                        .await;
                    return;
                };
                log.lock().unwrap().push(target.to_owned());
                let Some(upstream) = routes.get(target) else {
                    let _ = client.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
                    return;
                };
                let Ok(mut upstream) = tokio::net::TcpStream::connect(upstream).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                let _ = client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    ConnectProxy { addr, asked, task }
}

const POLICY: &str = r#"
routes:
  - id: journal
    methods: [GET]
    path: /journal
    allow:
      - peers: [spiffe://test.vakt.local/ns/shop/sa/web]
        scopes_any: [journal.read]
"#;

/// A `vakt run` child in front of the workload's app whose one issuer is `issuer`, reached
/// through `proxy`, trusting the dev CA for the provider's certificate (SSL_CERT_FILE, which
/// the system trust store honours).
fn child(w: &ChildWorkload, name: &str, issuer: &str, proxy: SocketAddr) -> (Process, SocketAddr) {
    std::fs::write(w.dir.join("policy.yaml"), POLICY).unwrap();
    let (yaml, inbound, admin) = w.child_config();
    let yaml = format!(
        "{yaml}oidc:\n  https_proxy: http://{proxy}\n  issuers:\n    - issuer: {issuer}\n      profile: helseid\n      audiences: [journal-api]\n      algorithms: [RS256, ES256]\n      dpop:\n        required: false\n"
    );
    let ca = w.dir.join(vakt::dev::certs::BUNDLE_FILE);
    let process = spawn_vakt_with_env(
        name,
        &w.dir,
        &yaml,
        admin,
        &[("SSL_CERT_FILE", ca.to_str().unwrap())],
    );
    (process, inbound)
}

async fn get_journal(
    w: &ChildWorkload,
    inbound: SocketAddr,
    bearer: Option<&str>,
) -> (u16, String) {
    let tls = mtls_connect(inbound, w.web_h1.clone()).await.unwrap();
    let mut req = http::Request::builder()
        .uri("/journal")
        .header("host", "orders.shop");
    if let Some(token) = bearer {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let response = h1_send(tls, req.body(Full::default()).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, body_string(response).await)
}

/// A token of `issuer` for [`person`], signed with `keys`.
fn mint(keys: &KeyStore, issuer: &str) -> String {
    keys.mint(
        issuer,
        devidp::claims(vakt::authn::Profile::Helseid, &person()),
        &MintOptions::default(),
    )
    .unwrap()
}

fn person() -> Person {
    Person {
        sub: "clinician-1".into(),
        national_id: None,
        level: Loa::High,
        amr: vec!["BankID".into()],
        auth_time: None,
        client_id: "journal-web".into(),
        scopes: vec!["journal.read".into()],
        audience: "journal-api".into(),
        org_number: None,
        hpr_number: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_keys_come_through_the_proxy_tunnel_and_its_tokens_verify() {
    let w = ChildWorkload::new("proxy-web").await;
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(KeyStore::open_or_create(keys_dir.path()).unwrap());
    let (issuer, provider, _serving) = https_provider(&w.pki, keys.clone()).await;
    let target = format!("{PROVIDER}:{}", provider.port());
    let proxy = connect_proxy(HashMap::from([(target.clone(), provider)])).await;
    let (mut vakt, inbound) = child(&w, "proxied", &issuer, proxy.addr);
    // Ready means the provider's keys are loaded (a readiness condition).
    wait_ready(&vakt).await;
    let asked = proxy.asked.lock().unwrap().clone();
    assert!(!asked.is_empty(), "vakt did not use the proxy");
    assert!(asked.iter().all(|t| *t == target), "{asked:?}");
    // The issuer's watched refusals are scraped at 0 before any token came.
    let text = metrics_text(vakt.admin).await;
    for reason in ["bad_signature", "unknown_key", "dpop_replayed"] {
        let line =
            format!("vakt_authn_failures_total{{issuer=\"{issuer}\",reason=\"{reason}\"}} 0");
        assert!(text.lines().any(|l| l == line), "{line}?\n{text}");
    }

    let token = mint(&keys, &issuer);
    let (status, body) = get_journal(&w, inbound, Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(w.app.seen().len(), 1);
    let (status, body) = get_journal(&w, inbound, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        w.app.seen().len(),
        1,
        "a request without a token reached the app"
    );
    let text = metrics_text(vakt.admin).await;
    let fetched = metric_sum(
        &text,
        "vakt_jwks_fetches_total",
        &[("issuer", issuer.as_str()), ("result", "success")],
    );
    assert!(fetched >= 1.0, "{text}");
    stop(&mut vakt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_refuses_the_tunnel_leaves_vakt_unready_and_tokens_refused() {
    let w = ChildWorkload::new("refused-proxy-web").await;
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(KeyStore::open_or_create(keys_dir.path()).unwrap());
    let (issuer, _provider, _serving) = https_provider(&w.pki, keys.clone()).await;
    let proxy = connect_proxy(HashMap::new()).await;
    let (mut vakt, inbound) = child(&w, "refused", &issuer, proxy.addr);
    let admin = vakt.admin;
    let mut failed = 0.0;
    for _ in 0..100 {
        if let Ok(tcp) = tokio::net::TcpStream::connect(admin).await
            && let Ok(r) = h1_send(tcp, get("/metrics", "admin")).await
        {
            failed = metric_sum(
                &body_string(r).await,
                "vakt_jwks_fetches_total",
                &[("issuer", issuer.as_str()), ("result", "failure")],
            );
            if failed >= 1.0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(failed >= 1.0, "no failed fetch was counted");
    assert!(!proxy.asked.lock().unwrap().is_empty());

    let ready = plain_send(admin, get("/ready", "admin")).await;
    assert_eq!(ready.status(), 503);
    let body = body_string(ready).await;
    assert!(body.contains("signing keys"), "{body}");
    let token = mint(&keys, &issuer);
    let (status, body) = get_journal(&w, inbound, Some(&token)).await;
    assert_ne!(status, 200, "{body}");
    assert!(
        w.app.seen().is_empty(),
        "a token reached the app without its keys"
    );
    stop(&mut vakt).await;
    let log = std::fs::read_to_string(&vakt.stderr).unwrap();
    let line = log
        .lines()
        .find(|l| {
            l.contains(&issuer)
                && l.contains(&format!("through the proxy {}", proxy.addr))
                && l.contains("tunnel")
        })
        .unwrap_or_else(|| panic!("no log line names the refused tunnel:\n{log}"));
    assert!(!line.contains(&token), "{line}");
}

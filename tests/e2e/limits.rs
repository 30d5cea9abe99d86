//! End-to-end tests of vakt's limits: header size, slow and idle clients, upstream timeouts and
//! failures, and HTTP/2 stream concurrency. Every client is an allowed mTLS peer, so whatever
//! refuses it is the limit under test and not the policy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{
    Server, TD, TestBody, body_string, client_sidecar_with, echo_once, get, h1_send, metric_sum,
    metrics_text, mtls_connect, raw_client_config, raw_upgrade_app, server, server_in_front_of,
    upgrade_to_websocket, wait_for_metric,
};
use http::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vakt::app::App;
use vakt::config::Config;
use vakt::dev::mesh::{DevPki, base_config_yaml};
use vakt::metrics::{DENIALS, LIMITS_EXCEEDED};

/// A client config for the allowed peer `sa/web`, offering `alpn`.
fn web_client(server: &Server, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let dir = server
        .pki
        .workload("web", &server.pki.spiffe_id("shop", "web"))
        .unwrap();
    raw_client_config(Some(&dir), &server.dir, &server.id, alpn)
}

async fn counter(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_sum(&metrics_text(admin).await, name, labels)
}

/// Wait until `name{labels}` reached `before + 1`, and fail with the related samples otherwise.
async fn assert_counted(admin: SocketAddr, name: &str, labels: &[(&str, &str)], before: f64) {
    let after = wait_for_metric(admin, name, labels, before + 1.0).await;
    if after < before + 1.0 {
        let text = metrics_text(admin).await;
        let related: Vec<_> = text.lines().filter(|l| l.starts_with(name)).collect();
        panic!(
            "expected {name}{labels:?} to go up by 1 (before {before}, after {after}); now:\n{}",
            related.join("\n")
        );
    }
}

async fn json_error(response: hyper::Response<hyper::body::Incoming>) -> serde_json::Value {
    let text = body_string(response).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

/// Read from `stream` until the peer closes it (EOF or error), up to `limit`. Returns what was
/// read, or `None` if it was still open at the deadline.
async fn read_until_closed<S>(stream: &mut S, limit: Duration) -> Option<Vec<u8>>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut received = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    closed.ok().map(|()| received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_gets_431() {
    let server = server(&["web"], "limits:\n  max_header_bytes: 8192\n").await;
    let admin = server.vakt.admin_addr;
    let labels = [("direction", "inbound"), ("limit", "max_header_bytes")];
    let before = counter(admin, LIMITS_EXCEEDED, &labels).await;

    let tls = mtls_connect(server.addr(), web_client(&server, &[b"http/1.1"]))
        .await
        .unwrap();
    let mut request = get("/big", "orders.shop");
    request
        .headers_mut()
        .insert("x-big", "a".repeat(20 * 1024).parse().unwrap());
    let response = tokio::time::timeout(Duration::from_secs(3), h1_send(tls, request))
        .await
        .expect("no answer within 3 s")
        .expect("vakt should answer 431, not break the connection");
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );

    assert!(server.app.seen().is_empty(), "{:?}", server.app.seen());
    assert_counted(admin, LIMITS_EXCEEDED, &labels, before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_off_by_the_header_read_timeout() {
    let server = server(&["web"], "limits:\n  header_read_timeout: 500ms\n").await;
    let admin = server.vakt.admin_addr;
    let labels = [("direction", "inbound"), ("limit", "header_read_timeout")];
    let before = counter(admin, LIMITS_EXCEEDED, &labels).await;

    let mut tls = mtls_connect(server.addr(), web_client(&server, &[b"http/1.1"]))
        .await
        .unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let started = Instant::now();

    let received = read_until_closed(&mut tls, Duration::from_secs(3))
        .await
        .expect("vakt kept a connection with unfinished headers open for more than 3 s");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400),
        "closed after {waited:?}, before the 500 ms header timeout"
    );
    let text = String::from_utf8_lossy(&received);
    assert!(
        !text.starts_with("HTTP/1.1 2"),
        "an unfinished request must not be answered with success: {text:?}"
    );

    assert!(server.app.seen().is_empty(), "{:?}", server.app.seen());
    assert_counted(admin, LIMITS_EXCEEDED, &labels, before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_app_gets_504_upstream_timeout() {
    let server = server(&["web"], "limits:\n  upstream_response_timeout: 300ms\n").await;
    let admin = server.vakt.admin_addr;
    let labels = [("direction", "inbound"), ("reason", "upstream_timeout")];
    let before = counter(admin, DENIALS, &labels).await;

    let tls = mtls_connect(server.addr(), web_client(&server, &[b"http/1.1"]))
        .await
        .unwrap();
    let started = Instant::now();
    let response = h1_send(tls, get("/slow?ms=2000", "orders.shop"))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        waited < Duration::from_millis(1500),
        "the 504 came after {waited:?}: the 300 ms response timeout did not cut the wait"
    );
    let body = json_error(response).await;
    assert_eq!(body["error"], "upstream_timeout", "{body}");

    assert_counted(admin, DENIALS, &labels, before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_down_gets_502_upstream_unavailable() {
    crate::common::init();
    let pki = DevPki::new(TD).unwrap();
    let id = pki.spiffe_id("shop", "orders");
    let dir = pki.workload("orders", &id).unwrap();
    // A port nobody listens on any more.
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let policy = vakt::dev::mesh::write_policy(
        &dir,
        &vakt::dev::mesh::allow_peers_policy_yaml(&[pki.spiffe_id("shop", "web")]),
    )
    .unwrap();
    let yaml = format!(
        "{}inbound:\n  listen: 127.0.0.1:0\n  app: {closed_port}\n  policy: {}\n",
        base_config_yaml(&dir, TD),
        policy.display(),
    );
    let vakt = App::start(Config::from_yaml(&yaml).unwrap()).await.unwrap();
    let admin = vakt.admin_addr;
    let labels = [("direction", "inbound"), ("reason", "upstream_unavailable")];
    let before = counter(admin, DENIALS, &labels).await;

    let client_dir = pki.workload("web", &pki.spiffe_id("shop", "web")).unwrap();
    let config = raw_client_config(Some(&client_dir), &dir, &id, &[b"http/1.1"]);
    let tls = mtls_connect(vakt.inbound_addr.unwrap(), config)
        .await
        .unwrap();
    let response = h1_send(tls, get("/", "orders.shop")).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body = json_error(response).await;
    assert_eq!(body["error"], "upstream_unavailable", "{body}");
    assert!(
        !body.to_string().contains(&closed_port.to_string()),
        "the caller should not learn the app's address: {body}"
    );

    assert_counted(admin, DENIALS, &labels, before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_is_closed_after_the_idle_timeout() {
    let server = server(&["web"], "limits:\n  idle_timeout: 500ms\n").await;
    let admin = server.vakt.admin_addr;
    let labels = [("direction", "inbound"), ("limit", "idle_timeout")];
    let before = counter(admin, LIMITS_EXCEEDED, &labels).await;

    let tls = mtls_connect(server.addr(), web_client(&server, &[b"http/1.1"]))
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let response = sender
        .send_request(get("/first", "orders.shop"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    body_string(response).await;
    let idle_since = Instant::now();

    // We keep `sender`, so the client never closes the connection: only vakt can end it.
    let ended = tokio::time::timeout(Duration::from_secs(3), connection).await;
    let waited = idle_since.elapsed();
    assert!(
        ended.is_ok(),
        "vakt kept an idle connection open for more than 3 s (idle_timeout 500ms)"
    );
    assert!(
        waited >= Duration::from_millis(400),
        "closed after {waited:?} of idleness, before the 500 ms idle timeout"
    );
    assert!(sender.is_closed(), "the connection should be unusable now");
    assert_eq!(server.app.seen().len(), 1);

    assert_counted(admin, LIMITS_EXCEEDED, &labels, before).await;
}

/// A connection that sends nothing, or after the mTLS handshake only the HTTP/2 preface, is
/// closed after `first_request_timeout`, on both listeners; one that asks promptly is served and
/// kept past it (only the idle timeout ends it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_ask_are_closed_after_the_first_request_timeout() {
    let limits = "limits:\n  first_request_timeout: 300ms\n";
    let server = server(&["web"], limits).await;
    let web = client_sidecar_with(&server.pki, "web", server.addr(), &server.id, limits).await;
    let admin = server.vakt.admin_addr;
    let inbound = [("direction", "inbound"), ("limit", "first_request_timeout")];
    let outbound = [
        ("direction", "outbound"),
        ("limit", "first_request_timeout"),
    ];
    let before = counter(admin, LIMITS_EXCEEDED, &inbound).await;
    let before_out = counter(web.admin_addr, LIMITS_EXCEEDED, &outbound).await;

    // Plaintext from the app, not a byte sent.
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(web.outbound_addr.unwrap())
        .await
        .unwrap();
    let got = read_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert_eq!(got.as_deref(), Some(&[][..]), "closed without an answer");
    assert!(started.elapsed() >= Duration::from_millis(250));
    // mTLS done, nothing after it; and mTLS with h2 and only the preface.
    let mut quiet = mtls_connect(server.addr(), web_client(&server, &[b"http/1.1"]))
        .await
        .unwrap();
    assert!(
        read_until_closed(&mut quiet, Duration::from_secs(5))
            .await
            .is_some()
    );
    let mut preface_only = mtls_connect(server.addr(), web_client(&server, &[b"h2"]))
        .await
        .unwrap();
    preface_only
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    assert!(
        read_until_closed(&mut preface_only, Duration::from_secs(5))
            .await
            .is_some(),
        "an HTTP/2 connection with a preface and no request was kept"
    );
    assert_counted(admin, LIMITS_EXCEEDED, &inbound, before + 1.0).await;
    assert_counted(web.admin_addr, LIMITS_EXCEEDED, &outbound, before_out).await;

    // A connection that asks at once is served, and kept past the first-request timeout.
    let tls = mtls_connect(server.addr(), web_client(&server, &[b"http/1.1"]))
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    let response = sender.send_request(get("/", "orders.shop")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    body_string(response).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let response = sender.send_request(get("/", "orders.shop")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

fn h2_get(path: &str) -> Request<TestBody> {
    // HTTP/2 needs :scheme and :authority, so an absolute URI.
    Request::get(format!("https://orders.shop{path}"))
        .body(TestBody::default())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_stream_limit_throttles_without_failing() {
    let server = server(&["web"], "limits:\n  http2_max_concurrent_streams: 2\n").await;
    let tls = mtls_connect(server.addr(), web_client(&server, &[b"h2"]))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);

    // One request first: once it is answered, the client has vakt's SETTINGS (with the stream
    // limit). Streams opened before that could be refused by h2 itself, which is not the point.
    let response = sender
        .clone()
        .send_request(h2_get("/warm-up"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let started = Instant::now();
    let requests: Vec<_> = (0..5)
        .map(|i| {
            let mut sender = sender.clone();
            tokio::spawn(async move {
                let response = sender
                    .send_request(h2_get(&format!("/slow?ms=500&i={i}")))
                    .await?;
                let status = response.status();
                Ok::<_, hyper::Error>((status, body_string(response).await))
            })
        })
        .collect();
    for (i, request) in requests.into_iter().enumerate() {
        let (status, body) = request
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("request {i} failed instead of waiting for a stream: {e}"));
        assert_eq!(status, StatusCode::OK, "request {i}: {body}");
        assert_eq!(body, "slow answer\n");
    }
    let took = started.elapsed();
    // At most 2 of the 5 run at once: 3 rounds of 500 ms.
    assert!(
        took >= Duration::from_millis(1400),
        "5 x 500 ms took only {took:?}: more than 2 streams ran at once"
    );
    assert!(took < Duration::from_secs(4), "took {took:?}");

    let mut slow: Vec<_> = server
        .app
        .seen()
        .into_iter()
        .map(|s| s.path_and_query)
        .filter(|p| p.starts_with("/slow"))
        .collect();
    slow.sort();
    let expected: Vec<_> = (0..5).map(|i| format!("/slow?ms=500&i={i}")).collect();
    assert_eq!(slow, expected);
}

/// A listener serves at most `limits.max_connections` connections and a peer identity at most
/// `limits.max_connections_per_peer`; one over a cap is closed and counted, the others go on,
/// and a freed place is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_per_listener_and_per_peer() {
    let server = server(
        &["web", "batch"],
        "limits:\n  max_connections: 3\n  max_connections_per_peer: 2\n",
    )
    .await;
    let admin = server.vakt.admin_addr;
    let web = web_client(&server, &[b"http/1.1"]);
    let batch_dir = server
        .pki
        .workload("batch", &server.pki.spiffe_id("shop", "batch"))
        .unwrap();
    let batch = raw_client_config(Some(&batch_dir), &server.dir, &server.id, &[b"http/1.1"]);
    let served = |config: Arc<rustls::ClientConfig>| {
        let addr = server.addr();
        async move {
            let tls = mtls_connect(addr, config).await.ok()?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .ok()?;
            tokio::spawn(conn);
            let response = sender.send_request(get("/", "orders.shop")).await.ok()?;
            (response.status() == StatusCode::OK).then_some(sender)
        }
    };

    let peer_labels = [
        ("direction", "inbound"),
        ("limit", "max_connections_per_peer"),
    ];
    let before = counter(admin, LIMITS_EXCEEDED, &peer_labels).await;
    let web1 = served(web.clone()).await.expect("first web connection");
    let web2 = served(web.clone()).await.expect("second web connection");
    assert!(
        served(web.clone()).await.is_none(),
        "a third web connection was served"
    );
    assert_counted(admin, LIMITS_EXCEEDED, &peer_labels, before).await;

    // Another peer is not held back by web's cap; the listener's cap then applies to all.
    let listener_labels = [("direction", "inbound"), ("limit", "max_connections")];
    let before = counter(admin, LIMITS_EXCEEDED, &listener_labels).await;
    let batch1 = served(batch.clone()).await.expect("a batch connection");
    assert!(
        served(batch.clone()).await.is_none(),
        "a fourth connection was served"
    );
    assert_counted(admin, LIMITS_EXCEEDED, &listener_labels, before).await;

    // Places come back when connections close.
    drop((web1, batch1));
    let mut again = None;
    for _ in 0..50 {
        again = served(web.clone()).await;
        if again.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        again.is_some(),
        "a closed connection's place was not given back"
    );
    drop(web2);
    // The admin listener has its own caps: probes are answered while inbound is full.
    let live = crate::common::plain_send(admin, get("/live", "admin")).await;
    assert_eq!(live.status(), StatusCode::OK);
}

/// Read an HTTP/1.1 answer until the peer closes the connection (up to 5 s) and return it as
/// text; fails if the connection was still open by then.
async fn answer_until_closed<S>(stream: &mut S) -> String
where
    S: tokio::io::AsyncRead + Unpin,
{
    let received = read_until_closed(stream, Duration::from_secs(5))
        .await
        .expect("vakt kept the connection open for more than 5 s");
    String::from_utf8_lossy(&received).into_owned()
}

/// Wait (up to 3 s) until the app has recorded a request for `path`, and return its records.
async fn app_records(server: &Server, path: &str) -> Vec<vakt::dev::mesh::SeenRequest> {
    for _ in 0..60 {
        let seen: Vec<_> = server
            .app
            .seen()
            .into_iter()
            .filter(|s| s.path_and_query == path)
            .collect();
        if !seen.is_empty() {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Vec::new()
}

/// The app got the request (its head went ahead of the body) and then saw the body break off
/// with an error: a stalled body is never presented to it as complete.
pub(crate) async fn assert_app_saw_the_body_aborted(server: &Server, path: &str) {
    let seen = app_records(server, path).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].body_aborted && seen[0].body_len == 0,
        "the app read a stalled body as complete: {:?}",
        seen[0]
    );
}

/// Headers and 10 of 100 announced body bytes, then nothing: 408 `request_body_timeout` (the
/// usual denial body), counted as a limit and as a denial; the app sees the body aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_body_gets_408_and_the_app_sees_it_aborted() {
    let server = server(&["web"], "limits:\n  request_body_timeout: 300ms\n").await;
    let admin = server.vakt.admin_addr;
    let limit = [("direction", "inbound"), ("limit", "request_body_timeout")];
    let denial = [("direction", "inbound"), ("reason", "request_body_timeout")];
    let limit_before = counter(admin, LIMITS_EXCEEDED, &limit).await;
    let denial_before = counter(admin, DENIALS, &denial).await;

    let mut tls = mtls_connect(server.addr(), web_client(&server, &[b"http/1.1"]))
        .await
        .unwrap();
    tls.write_all(
        b"POST /upload HTTP/1.1\r\nHost: orders.shop\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    tls.flush().await.unwrap();
    let started = Instant::now();
    let answer = answer_until_closed(&mut tls).await;
    let waited = started.elapsed();

    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(
        answer.contains(r#""error":"request_body_timeout""#),
        "{answer}"
    );
    assert!(
        waited >= Duration::from_millis(250),
        "answered after {waited:?}, before the 300 ms body timeout"
    );
    assert_counted(admin, LIMITS_EXCEEDED, &limit, limit_before).await;
    assert_counted(admin, DENIALS, &denial, denial_before).await;
    assert_app_saw_the_body_aborted(&server, "/upload").await;
}

/// The control: a body trickling in 12 pieces 150 ms apart (1.8 s in all, longer than the
/// 1 s timeout) arrives whole, because the timeout is between pieces, not for the whole body;
/// at ~660 bytes a second it is also well over the 50 bytes a second minimum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_but_steady_request_body_passes_intact() {
    let server = server(
        &["web"],
        "limits:\n  request_body_timeout: 1s\n  request_body_min_rate: 50\n  request_body_rate_window: 500ms\n",
    )
    .await;
    let mut tls = mtls_connect(server.addr(), web_client(&server, &[b"http/1.1"]))
        .await
        .unwrap();
    tls.write_all(
        b"POST /upload HTTP/1.1\r\nHost: orders.shop\r\nContent-Length: 1200\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        tls.write_all(&[b'x'; 100]).await.unwrap();
        tls.flush().await.unwrap();
    }
    let answer = answer_until_closed(&mut tls).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("this is the app"), "{answer}");

    let seen = app_records(&server, "/upload").await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].body_len, 1200);
    assert!(!seen[0].body_aborted);
}

type BoxedBody = http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>;

/// A body that never stalls long enough for the idle timeout but crawls at ~10 bytes a second
/// against a minimum of 1000 is cut off once a 500 ms window of waiting has passed: 408
/// `request_body_too_slow`, counted; the app sees the body aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_under_the_minimum_rate_gets_408() {
    let server = server(
        &["web"],
        "limits:\n  request_body_timeout: 2s\n  request_body_min_rate: 1000\n  request_body_rate_window: 500ms\n",
    )
    .await;
    let admin = server.vakt.admin_addr;
    let limit = [("direction", "inbound"), ("limit", "request_body_min_rate")];
    let denial = [
        ("direction", "inbound"),
        ("reason", "request_body_too_slow"),
    ];
    let limit_before = counter(admin, LIMITS_EXCEEDED, &limit).await;
    let denial_before = counter(admin, DENIALS, &denial).await;

    let tls = mtls_connect(server.addr(), web_client(&server, &[b"http/1.1"]))
        .await
        .unwrap();
    let (mut reader, mut writer) = tokio::io::split(tls);
    writer
        .write_all(b"POST /crawl HTTP/1.1\r\nHost: orders.shop\r\nContent-Length: 1000\r\n\r\n")
        .await
        .unwrap();
    let crawl = tokio::spawn(async move {
        for _ in 0..1000 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if writer.write_all(b"x").await.is_err() || writer.flush().await.is_err() {
                return;
            }
        }
    });
    let answer = answer_until_closed(&mut reader).await;
    crawl.abort();

    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(
        answer.contains(r#""error":"request_body_too_slow""#),
        "{answer}"
    );
    assert_counted(admin, LIMITS_EXCEEDED, &limit, limit_before).await;
    assert_counted(admin, DENIALS, &denial, denial_before).await;
    assert_app_saw_the_body_aborted(&server, "/crawl").await;
}

/// A request body that sends `first` and then nothing, without ever ending.
pub(crate) fn stalling_body(first: &'static [u8]) -> BoxedBody {
    use futures_util::StreamExt;
    use http_body_util::BodyExt;
    let frames =
        futures_util::stream::iter([Ok(http_body::Frame::data(bytes::Bytes::from_static(first)))])
            .chain(futures_util::stream::pending());
    BodyExt::boxed(http_body_util::StreamBody::new(frames))
}

/// The HTTP/2 variant: one DATA frame, then a stream that stays open with nothing on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_http2_request_body_gets_408() {
    let server = server(&["web"], "limits:\n  request_body_timeout: 300ms\n").await;
    let admin = server.vakt.admin_addr;
    let limit = [("direction", "inbound"), ("limit", "request_body_timeout")];
    let denial = [("direction", "inbound"), ("reason", "request_body_timeout")];
    let limit_before = counter(admin, LIMITS_EXCEEDED, &limit).await;
    let denial_before = counter(admin, DENIALS, &denial).await;

    let tls = mtls_connect(server.addr(), web_client(&server, &[b"h2"]))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = Request::post("https://orders.shop/upload-h2")
        .body(stalling_body(b"the first part"))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
        .await
        .expect("no answer within 5 s")
        .expect("vakt should answer 408, not reset the stream");
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    let body = json_error(response).await;
    assert_eq!(body["error"], "request_body_timeout", "{body}");

    assert_counted(admin, LIMITS_EXCEEDED, &limit, limit_before).await;
    assert_counted(admin, DENIALS, &denial, denial_before).await;
    assert_app_saw_the_body_aborted(&server, "/upload-h2").await;
    // Only the stream was given up: the connection serves the next request.
    let next = Request::get("https://orders.shop/after")
        .body(http_body_util::BodyExt::boxed(TestBody::default()))
        .unwrap();
    let response = sender.send_request(next).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// A body that stalls after the app has started answering (`/echo` streams the body back):
/// too late for a 408, so the exchange is broken off both ways. The client's response ends
/// with the connection closed before the response was complete, and the firing is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_stalling_after_the_response_started_aborts_the_exchange() {
    let server = server(&["web"], "limits:\n  request_body_timeout: 1s\n").await;
    let admin = server.vakt.admin_addr;
    let limit = [("direction", "inbound"), ("limit", "request_body_timeout")];
    let before = counter(admin, LIMITS_EXCEEDED, &limit).await;

    let mut tls = mtls_connect(server.addr(), web_client(&server, &[b"http/1.1"]))
        .await
        .unwrap();
    tls.write_all(
        b"POST /echo HTTP/1.1\r\nHost: orders.shop\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    tls.flush().await.unwrap();
    let answer = answer_until_closed(&mut tls).await;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response head: {answer:?}"));
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    // Fewer than the announced bytes, or a chunked body without its last chunk.
    let lower = head.to_ascii_lowercase();
    if let Some(length) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
    {
        assert!(body.len() < length.trim().parse().unwrap(), "{answer:?}");
    } else {
        assert!(lower.contains("transfer-encoding: chunked"), "{head}");
        assert!(!body.ends_with("0\r\n\r\n"), "{answer:?}");
    }
    assert_counted(admin, LIMITS_EXCEEDED, &limit, before).await;
}

/// Start a server-side vakt with `extra` YAML in front of [`raw_upgrade_app`], and open an
/// upgraded tunnel through it as the allowed peer `sa/web`.
async fn tunnel_through_inbound(
    extra: &str,
) -> (
    DevPki,
    App,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let pki = DevPki::new(TD).unwrap();
    let (app, app_closed) = raw_upgrade_app().await;
    let (vakt, id, dir) = server_in_front_of(&pki, app, extra).await;
    let client_dir = pki.workload("web", &pki.spiffe_id("shop", "web")).unwrap();
    let config = raw_client_config(Some(&client_dir), &dir, &id, &[b"http/1.1"]);
    let mut tls = mtls_connect(vakt.inbound_addr.unwrap(), config)
        .await
        .unwrap();
    upgrade_to_websocket(&mut tls).await;
    (pki, vakt, tls, app_closed)
}

/// An upgraded tunnel with no traffic for `tunnel_idle_timeout` is closed on both sides: the
/// client reads EOF, the app's connection is closed, and the close is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upgraded_tunnel_is_closed_on_both_sides() {
    let (_pki, vakt, mut tls, mut app_closed) =
        tunnel_through_inbound("limits:\n  tunnel_idle_timeout: 300ms\n").await;
    let admin = vakt.admin_addr;
    let labels = [("direction", "inbound"), ("limit", "tunnel_idle_timeout")];
    let before = counter(admin, LIMITS_EXCEEDED, &labels).await;

    echo_once(&mut tls, b"hello through the tunnel").await;
    let idle_since = Instant::now();
    let rest = read_until_closed(&mut tls, Duration::from_secs(5))
        .await
        .expect("vakt kept an idle tunnel open for more than 5 s (tunnel_idle_timeout 300ms)");
    let waited = idle_since.elapsed();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        waited >= Duration::from_millis(250),
        "closed after {waited:?} of idleness, before the 300 ms timeout"
    );
    tokio::time::timeout(Duration::from_secs(5), app_closed.recv())
        .await
        .expect("the app's side of the tunnel was still open 5 s later")
        .expect("the app stopped");
    assert_counted(admin, LIMITS_EXCEEDED, &labels, before).await;
}

/// The control: a tunnel that moves a few bytes every 100 ms stays open well past its 1 s idle
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_upgraded_tunnel_outlives_the_idle_timeout() {
    let (_pki, _vakt, mut tls, mut app_closed) =
        tunnel_through_inbound("limits:\n  tunnel_idle_timeout: 1s\n").await;
    let started = Instant::now();
    let mut round = 0u32;
    while started.elapsed() < Duration::from_millis(2500) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        echo_once(&mut tls, format!("round {round}").as_bytes()).await;
        round += 1;
    }
    assert!(
        app_closed.try_recv().is_err(),
        "the app's side was closed while traffic flowed"
    );
    echo_once(&mut tls, b"still open").await;
}

//! Traffic through the real two-hop mesh: app -> client vakt (plaintext in, mTLS out) ->
//! server vakt (mTLS in) -> app, over 127.0.0.1.

use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vakt::app::App;
use vakt::dev::mesh::allow_peers_policy_yaml;

fn xfcc_uri(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all("x-forwarded-client-cert")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_peer_reaches_the_app_over_http1_and_http2() {
    let server = server(&["web"], "").await;
    let web = client_sidecar(&server.pki, "web", server.addr(), &server.id).await;
    let web_id = server.pki.spiffe_id("shop", "web");

    // HTTP/1.1 from the app to its sidecar; the sidecars talk h2 between them.
    let response = plain_send(
        web.outbound_addr.unwrap(),
        get("/orders/1?x=1", "orders.shop"),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(
        body_string(response).await,
        format!("hello {web_id}, this is the app\n")
    );

    // HTTP/2 (prior knowledge) from the app to its sidecar.
    let tcp = TcpStream::connect(web.outbound_addr.unwrap())
        .await
        .unwrap();
    let req = Request::get("http://orders.shop/orders/2")
        .body(Full::default())
        .unwrap();
    let response = h2_send(tcp, req).await.unwrap();
    assert_eq!(response.status(), 200);

    // HTTP/2 straight to the server's inbound listener, as another sidecar would.
    let tls = mtls_connect(
        server.addr(),
        raw_client_config(
            Some(&server.pki.workload("web2", &web_id).unwrap()),
            &server.dir,
            &server.id,
            &[b"h2"],
        ),
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // Hybrid post-quantum key exchange is what two aws-lc-rs peers agree on by default.
    assert_eq!(
        tls.get_ref()
            .1
            .negotiated_key_exchange_group()
            .unwrap()
            .name(),
        rustls::NamedGroup::X25519MLKEM768
    );
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let req = Request::get("https://orders.shop/orders/3")
        .body(Full::default())
        .unwrap();
    assert_eq!(h2_send(tls, req).await.unwrap().status(), 200);

    let seen = server.app.seen();
    assert_eq!(seen.len(), 3);
    for request in &seen {
        // The app speaks HTTP/1.1, with Host preserved and the query untouched.
        assert_eq!(request.version, http::Version::HTTP_11);
        assert_eq!(request.headers.get("host").unwrap(), "orders.shop");
        let xfcc = xfcc_uri(&request.headers);
        assert_eq!(xfcc.len(), 1);
        assert!(
            xfcc[0].starts_with(&format!("By={};Hash=", server.id)),
            "{xfcc:?}"
        );
        assert!(xfcc[0].ends_with(&format!(";URI={web_id}")), "{xfcc:?}");
        assert!(request.headers.contains_key("x-request-id"));
        assert!(request.headers.contains_key("traceparent"));
    }
    assert_eq!(seen[0].path_and_query, "/orders/1?x=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_headers_never_reach_the_app() {
    let server = server(&["web"], "  strip_headers: [x-user-id]\n").await;
    let web = client_sidecar(&server.pki, "web", server.addr(), &server.id).await;
    let req = Request::get("/admin")
        .header("host", "orders.shop")
        .header(
            "x-forwarded-client-cert",
            "By=spiffe://test.vakt.local/ns/x/sa/y;URI=spiffe://test.vakt.local/ns/kube-system/sa/root",
        )
        .header("X-Vakt-Peer", "spiffe://test.vakt.local/ns/kube-system/sa/root")
        .header("x-user-id", "admin")
        .header("x-request-id", "keep-me-123")
        .body(Full::default())
        .unwrap();
    let response = plain_send(web.outbound_addr.unwrap(), req).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers().get("x-request-id").unwrap(),
        "keep-me-123"
    );
    let seen = server.app.seen();
    assert_eq!(seen.len(), 1);
    let headers = &seen[0].headers;
    let xfcc = xfcc_uri(headers);
    assert_eq!(xfcc.len(), 1, "{xfcc:?}");
    assert!(xfcc[0].ends_with(";URI=spiffe://test.vakt.local/ns/shop/sa/web"));
    assert!(!xfcc[0].contains("kube-system"));
    assert!(!headers.contains_key("x-vakt-peer"));
    assert!(!headers.contains_key("x-user-id"));
    assert_eq!(headers.get("x-request-id").unwrap(), "keep-me-123");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_bodies_of_several_megabytes_pass_intact_both_ways() {
    let server = server(&["web"], "").await;
    let web = client_sidecar(&server.pki, "web", server.addr(), &server.id).await;
    let upload: Vec<u8> = (0..6 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let req = Request::post("/echo")
        .header("host", "orders.shop")
        .body(Full::new(Bytes::from(upload.clone())))
        .unwrap();
    let response = plain_send(web.outbound_addr.unwrap(), req).await;
    assert_eq!(response.status(), 200);
    let echoed = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(echoed.len(), upload.len());
    assert!(echoed == upload, "echoed body differs");

    let response = plain_send(
        web.outbound_addr.unwrap(),
        get("/bytes?n=8388608", "orders.shop"),
    )
    .await;
    assert_eq!(response.status(), 200);
    let downloaded = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(downloaded.len(), 8 * 1024 * 1024);
    assert!(downloaded.iter().all(|b| *b == b'x'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_style_trailers_cross_the_mesh_over_http2() {
    let server = server(&["web"], "  app_protocol: h2c\n").await;
    let web = client_sidecar(&server.pki, "web", server.addr(), &server.id).await;
    let tcp = TcpStream::connect(web.outbound_addr.unwrap())
        .await
        .unwrap();
    let req = Request::post("http://orders.shop/trailers")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"request")))
        .unwrap();
    let response = h2_send(tcp, req).await.unwrap();
    assert_eq!(response.status(), 200);
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers forwarded");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"payload"));
    let seen = server.app.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].version, http::Version::HTTP_2);
    assert_eq!(seen[0].headers.get("te").unwrap(), "trailers");
}

/// A WebSocket app: echoes every message.
async fn websocket_app() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        ws.send(msg).await.unwrap();
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_mesh() {
    init();
    let pki = vakt::dev::mesh::DevPki::new(TD).unwrap();
    let app = websocket_app().await;
    let orders = pki.spiffe_id("shop", "orders");
    let dir = pki.workload("orders", &orders).unwrap();
    let policy = vakt::dev::mesh::write_policy(
        &dir,
        &allow_peers_policy_yaml(&[pki.spiffe_id("shop", "web")]),
    )
    .unwrap();
    let yaml = format!(
        "{}inbound:\n  listen: 127.0.0.1:0\n  app: {app}\n  policy: {}\n",
        vakt::dev::mesh::base_config_yaml(&dir, TD),
        policy.display()
    );
    let server = App::start(vakt::config::Config::from_yaml(&yaml).unwrap())
        .await
        .unwrap();
    let web = client_sidecar(&pki, "web", server.inbound_addr.unwrap(), &orders).await;

    let tcp = TcpStream::connect(web.outbound_addr.unwrap())
        .await
        .unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async("ws://orders.shop/chat", tcp)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    for text in ["hei", "hallo verden", &"x".repeat(100_000)] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    ws.close(None).await.unwrap();
}

/// An upgrade to a protocol the route does not list is refused before the app sees it; one it
/// lists is tunnelled. `h2c` can never be listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_upgrades_only_on_routes_that_list_them() {
    let server = server(&["web"], "").await;
    let web = client_sidecar(&server.pki, "web", server.addr(), &server.id).await;
    let upgrade = |protocol: &str| {
        let mut req = get("/upgrade", "orders.shop");
        req.headers_mut()
            .insert(http::header::CONNECTION, "upgrade".parse().unwrap());
        req.headers_mut()
            .insert(http::header::UPGRADE, protocol.parse().unwrap());
        plain_send(web.outbound_addr.unwrap(), req)
    };
    // The default test policy lists websocket only.
    for protocol in ["echo", "h2c", "websocket, echo", "Echo/1.0"] {
        let response = upgrade(protocol).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{protocol}");
        let body = body_string(response).await;
        assert!(body.contains("upgrade_not_allowed"), "{protocol}: {body}");
    }
    assert!(server.app.seen().is_empty(), "{:?}", server.app.seen());
    let h2c = allow_peers_policy_yaml(&[server.pki.spiffe_id("shop", "web")])
        .replace("upgrade: [websocket]", "upgrade: [websocket, h2c]");
    server.set_policy(&h2c, "failure").await;
    let echo = allow_peers_policy_yaml(&[server.pki.spiffe_id("shop", "web")])
        .replace("upgrade: [websocket]", "upgrade: [websocket, echo]");
    server.set_policy(&echo, "success").await;
    raw_protocol_upgrade_is_tunnelled(&server, &web).await;
}

async fn raw_protocol_upgrade_is_tunnelled(server: &Server, web: &App) {
    let seen_before = server.app.seen().len();
    let mut tcp = TcpStream::connect(web.outbound_addr.unwrap())
        .await
        .unwrap();
    tcp.write_all(b"GET /upgrade HTTP/1.1\r\nHost: orders.shop\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: echo"),
        "{head}"
    );
    tcp.write_all(b"ping through two sidecars").await.unwrap();
    let mut echoed = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"ping through two sidecars");
    assert_eq!(server.app.seen().len(), seen_before + 1);
}

/// Send raw bytes and read the whole answer until the peer closes (or 3 s pass).
async fn raw_exchange<S>(mut stream: S, request: &[u8]) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

const SMUGGLE: &[u8] = b"POST /echo HTTP/1.1\r\nHost: orders.shop\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: orders.shop\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_refused_outbound() {
    let server = server(&["web"], "").await;
    let web = client_sidecar(&server.pki, "web", server.addr(), &server.id).await;
    let tcp = TcpStream::connect(web.outbound_addr.unwrap())
        .await
        .unwrap();
    let answer = raw_exchange(tcp, SMUGGLE).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("bad_framing"), "{answer}");
    assert!(!answer.contains("HTTP/1.1 200"), "{answer}");
    assert!(
        server.app.seen().is_empty(),
        "the app saw {:?}",
        server.app.seen()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_refused_inbound() {
    let server = server(&["web"], "").await;
    let config = web_client_config(&server);
    // A normal request first on the same connection, then the ambiguous one.
    let tls = mtls_connect(server.addr(), config).await.unwrap();
    first_served_then_smuggling_refused(&server, tls).await;
}

/// On one connection: a normal request (served), then [`SMUGGLE`] (400 `bad_framing`); the app
/// sees only the first.
async fn first_served_then_smuggling_refused<S>(server: &Server, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut request = b"GET /first HTTP/1.1\r\nHost: orders.shop\r\n\r\n".to_vec();
    request.extend_from_slice(SMUGGLE);
    let answer = raw_exchange(stream, &request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("bad_framing"), "{answer}");
    let seen: Vec<_> = server
        .app
        .seen()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect();
    assert_eq!(
        seen,
        vec!["/first".to_owned()],
        "the smuggled request got through"
    );
}

/// hyper serves HTTP/1 or HTTP/2 by the first bytes, not by ALPN: a client that negotiated h2
/// and then speaks HTTP/1 is scanned all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_after_alpn_h2_is_scanned_for_ambiguous_framing() {
    let server = server(&["web"], "").await;
    let web_id = server.pki.spiffe_id("shop", "web");
    let config = raw_client_config(
        Some(&server.pki.workload("web-h2", &web_id).unwrap()),
        &server.dir,
        &server.id,
        &[b"h2"],
    );
    let tls = mtls_connect(server.addr(), config.clone()).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    first_served_then_smuggling_refused(&server, tls).await;

    // HTTP/2 on such a connection is served as before.
    let tls = mtls_connect(server.addr(), config).await.unwrap();
    let response = h2_send(tls, get("https://orders.shop/h2", "orders.shop"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_destination_and_connect_are_refused_outbound() {
    let server = server(&["web"], "").await;
    let web = client_sidecar(&server.pki, "web", server.addr(), &server.id).await;
    let admin = web.admin_addr;
    let before = metric_sum(
        &metrics_text(admin).await,
        "vakt_requests_denied_total",
        &[("direction", "outbound"), ("reason", "unknown_destination")],
    );
    // Absolute-form (HTTP_PROXY style) to a host that is not in the egress table.
    let req = Request::get("http://payments.shop:8080/pay")
        .body(Full::default())
        .unwrap();
    let response = plain_send(web.outbound_addr.unwrap(), req).await;
    assert_eq!(response.status(), 403);
    let body: serde_json::Value = serde_json::from_str(&body_string(response).await).unwrap();
    assert_eq!(body["error"], "unknown_destination");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("payments.shop:8080")
    );
    assert!(body["request_id"].is_string());
    wait_for_metric(
        admin,
        "vakt_requests_denied_total",
        &[("direction", "outbound"), ("reason", "unknown_destination")],
        before + 1.0,
    )
    .await;

    // The absolute form of a known destination works (HTTP_PROXY=http://127.0.0.1:15001).
    let req = Request::get("http://orders.shop/via-proxy")
        .body(Full::default())
        .unwrap();
    assert_eq!(
        plain_send(web.outbound_addr.unwrap(), req).await.status(),
        200
    );

    let tcp = TcpStream::connect(web.outbound_addr.unwrap())
        .await
        .unwrap();
    let answer = raw_exchange(
        tcp,
        b"CONNECT orders.shop:443 HTTP/1.1\r\nHost: orders.shop:443\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(answer.contains("connect_not_supported"), "{answer}");
    assert_eq!(server.app.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_report_liveness_readiness_and_metrics() {
    let server = server(&["web"], "").await;
    let web = client_sidecar(&server.pki, "web", server.addr(), &server.id).await;
    assert_eq!(
        plain_send(web.outbound_addr.unwrap(), get("/m", "orders.shop"))
            .await
            .status(),
        200
    );
    let admin = server.vakt.admin_addr;
    let live = plain_send(admin, get("/live", "admin")).await;
    assert_eq!(live.status(), 200);
    let ready = plain_send(admin, get("/ready", "admin")).await;
    assert_eq!(ready.status(), 200);
    assert_eq!(plain_send(admin, get("/nope", "admin")).await.status(), 404);
    let text = metrics_text(admin).await;
    for name in [
        "vakt_requests_total",
        "vakt_request_duration_seconds_bucket",
        "vakt_active_connections",
        "vakt_certificate_expiry_timestamp_seconds",
        "vakt_build_info",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    assert!(
        metric_sum(
            &text,
            "vakt_requests_total",
            &[("direction", "inbound"), ("status_class", "2xx")]
        ) >= 1.0
    );
    let expiry = metric_sum(
        &text,
        "vakt_certificate_expiry_timestamp_seconds",
        &[("certificate", "workload")],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expiry > now && expiry < now + 2.0 * 3600.0,
        "expiry {expiry}"
    );
    // No identity, path or token in any label.
    assert!(!text.contains("spiffe://"));
    assert!(!text.contains("/m\""));
}

/// What a client sidecar sent on the wire: the HPACK block of each request's HEADERS frame, read
/// by a bare HTTP/2-over-mTLS server (the egress destination) that answers every request 200.
async fn capturing_h2_destination(
    dir: &std::path::Path,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
) {
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<_> =
        rustls::pki_types::CertificateDer::pem_file_iter(dir.join(vakt::dev::certs::CERT_FILE))
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(dir.join(vakt::dev::certs::KEY_FILE))
        .unwrap();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (blocks, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut preface = [0u8; 24];
        tls.read_exact(&mut preface).await.unwrap();
        assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        tls.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap(); // SETTINGS, none
        loop {
            let mut head = [0u8; 9];
            if tls.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let (kind, flags, stream) = (head[3], head[4], &head[5..9]);
            let mut payload = vec![0u8; len];
            tls.read_exact(&mut payload).await.unwrap();
            match kind {
                // SETTINGS without ACK: acknowledge.
                4 if flags & 1 == 0 => tls.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await.unwrap(),
                // HEADERS, complete in one frame (END_HEADERS): keep the block, answer
                // `:status: 200` (static index 8) with END_STREAM.
                1 => {
                    assert_eq!(flags & 0x4, 0x4, "headers split over CONTINUATION frames");
                    assert_eq!(flags & 0x28, 0, "padding or priority not expected");
                    blocks.send(payload).unwrap();
                    let mut answer = vec![0, 0, 1, 1, 0x5];
                    answer.extend_from_slice(stream);
                    answer.push(0x88);
                    tls.write_all(&answer).await.unwrap();
                }
                _ => {}
            }
        }
    });
    (addr, rx)
}

/// A credential crosses the mesh as an HPACK never-indexed literal (RFC 7541 §6.2.3), every
/// time: never as a reference into the connection's compression table, even when the same token
/// was sent a moment before on the same connection (where a compression side channel could
/// otherwise probe for it). Its value is a raw literal (H bit clear, the patched h2 of
/// vendor/README.md): no Huffman coding to spend CPU on at either sidecar. Read off the wire by a
/// bare HTTP/2 destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_cross_the_mesh_as_never_indexed_raw_literals_every_time() {
    init();
    let pki = vakt::dev::mesh::DevPki::new(TD).unwrap();
    let server_id = pki.spiffe_id("shop", "orders");
    let server_dir = pki.workload("orders", &server_id).unwrap();
    let (addr, mut blocks) = capturing_h2_destination(&server_dir).await;
    let web = client_sidecar(&pki, "web", addr, &server_id).await;
    // Token-sized, and the same value twice.
    let token = format!("Bearer {}", "eyJhbGciOiJSUzI1NiJ9".repeat(30));
    let cookie = "session=s3cr3t";
    for _ in 0..2 {
        let mut req = get("/journal", "orders.shop");
        req.headers_mut()
            .insert(http::header::AUTHORIZATION, token.parse().unwrap());
        req.headers_mut()
            .insert(http::header::COOKIE, cookie.parse().unwrap());
        let response = plain_send(web.outbound_addr.unwrap(), req).await;
        assert_eq!(response.status(), 200);
    }
    // `authorization` is static-table name 23: a never-indexed literal with an indexed name is
    // 0001_1111 then 23 - 15 = 8; `cookie` (32) is 0001_1111 then 17. Then the value: its length
    // as an HPACK integer with a 7-bit prefix and the H bit clear, then its octets as they are.
    let authorization = never_indexed_raw_literal(&[0x1f, 0x08], token.as_bytes());
    let cookie = never_indexed_raw_literal(&[0x1f, 0x11], cookie.as_bytes());
    for n in 0..2 {
        let block = blocks.recv().await.unwrap();
        assert!(
            contains(&block, &authorization),
            "request {n}: no never-indexed raw authorization literal in {block:02x?}"
        );
        assert!(
            contains(&block, &cookie),
            "request {n}: no never-indexed raw cookie literal in {block:02x?}"
        );
    }
}

/// `representation` (the never-indexed literal's first octets), then `value` as a raw string
/// literal (RFC 7541 §5.1, §5.2).
fn never_indexed_raw_literal(representation: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = representation.to_vec();
    let mut length = value.len();
    if length < 0x7f {
        out.push(length as u8);
    } else {
        out.push(0x7f);
        length -= 0x7f;
        while length >= 0x80 {
            out.push((length & 0x7f) as u8 | 0x80);
            length >>= 7;
        }
        out.push(length as u8);
    }
    out.extend_from_slice(value);
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Outbound over HTTP/2: the app's own request body stalls on its way out; its sidecar answers
/// 408 `request_body_timeout` and aborts the stream to the other sidecar, whose app sees the
/// body break off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_outbound_http2_body_gets_408_from_the_local_sidecar() {
    let server = server(&["web"], "").await;
    let web = client_sidecar_with(
        &server.pki,
        "web",
        server.addr(),
        &server.id,
        "limits:\n  request_body_timeout: 300ms\n",
    )
    .await;
    let admin = web.admin_addr;
    let limit = [("direction", "outbound"), ("limit", "request_body_timeout")];
    let denial = [
        ("direction", "outbound"),
        ("reason", "request_body_timeout"),
    ];
    let text = metrics_text(admin).await;
    let limit_before = metric_sum(&text, vakt::metrics::LIMITS_EXCEEDED, &limit);
    let denial_before = metric_sum(&text, vakt::metrics::DENIALS, &denial);

    let tcp = TcpStream::connect(web.outbound_addr.unwrap())
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = Request::post("http://orders.shop/upload-out")
        .body(crate::limits::stalling_body(b"the first part"))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
        .await
        .expect("no answer within 5 s")
        .expect("the sidecar should answer 408, not reset the stream");
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    let body = body_string(response).await;
    assert!(body.contains(r#""error":"request_body_timeout""#), "{body}");

    for (name, labels, before) in [
        (vakt::metrics::LIMITS_EXCEEDED, &limit, limit_before),
        (vakt::metrics::DENIALS, &denial, denial_before),
    ] {
        let after = wait_for_metric(admin, name, labels, before + 1.0).await;
        assert!(after >= before + 1.0, "{name}{labels:?} did not grow");
    }
    crate::limits::assert_app_saw_the_body_aborted(&server, "/upload-out").await;
}

/// Outbound: the app's own upgraded tunnel, idle past its sidecar's `tunnel_idle_timeout`, is
/// closed by that sidecar; the app reads EOF and the far app's connection is closed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_outbound_tunnel_is_closed_by_the_local_sidecar() {
    let pki = vakt::dev::mesh::DevPki::new(TD).unwrap();
    let (app, mut app_closed) = raw_upgrade_app().await;
    let (server, server_id, _dir) = server_in_front_of(&pki, app, "").await;
    let web = client_sidecar_with(
        &pki,
        "web",
        server.inbound_addr.unwrap(),
        &server_id,
        "limits:\n  tunnel_idle_timeout: 300ms\n",
    )
    .await;
    let admin = web.admin_addr;
    let labels = [("direction", "outbound"), ("limit", "tunnel_idle_timeout")];
    let before = metric_sum(
        &metrics_text(admin).await,
        vakt::metrics::LIMITS_EXCEEDED,
        &labels,
    );

    let mut tcp = TcpStream::connect(web.outbound_addr.unwrap())
        .await
        .unwrap();
    upgrade_to_websocket(&mut tcp).await;
    echo_once(&mut tcp, b"through two sidecars").await;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest))
        .await
        .expect("the idle tunnel was still open 5 s later (tunnel_idle_timeout 300ms)")
        .expect("EOF, not an error");
    assert!(rest.is_empty(), "{rest:?}");
    tokio::time::timeout(Duration::from_secs(5), app_closed.recv())
        .await
        .expect("the far app's side of the tunnel was still open 5 s later")
        .expect("the app stopped");
    let after = wait_for_metric(admin, vakt::metrics::LIMITS_EXCEEDED, &labels, before + 1.0).await;
    assert!(after >= before + 1.0, "the idle close was not counted");
}

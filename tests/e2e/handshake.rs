//! End-to-end tests of the inbound mTLS handshake: which client certificates vakt accepts, which
//! it refuses (and under which reason code), and the outbound check of the server's identity.
//!
//! A refusal is asserted three ways: the client gets no HTTP response, the server counts the
//! failure under the expected reason, and the app never sees a request.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{
    Server, TD, TestBody, attempt, body_string, client_config_with_versions, client_sidecar, get,
    h1_send, h2_send, metric_sum, metrics_text, mtls_connect, plain_send, raw_client_config,
    server, wait_for_metric,
};
use http::{Request, StatusCode};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use vakt::dev::certs::LeafSpec;
use vakt::dev::mesh::DevPki;
use vakt::metrics::{DENIALS, HANDSHAKE_FAILURES};

const HTTP11: &[&[u8]] = &[b"http/1.1"];

fn svid(spiffe_id: &str) -> LeafSpec {
    LeafSpec::svid(spiffe_id, Duration::from_secs(3600))
}

fn web_id(server: &Server) -> String {
    server.pki.spiffe_id("shop", "web")
}

/// Inbound handshake failures with `reason` (every reason when `None`).
async fn handshake_failures(admin: SocketAddr, reason: Option<&str>) -> f64 {
    let mut labels = vec![("direction", "inbound")];
    labels.extend(reason.map(|r| ("reason", r)));
    metric_sum(&metrics_text(admin).await, HANDSHAKE_FAILURES, &labels)
}

/// The inbound handshake-failure samples, for assertion messages.
async fn handshake_failure_lines(admin: SocketAddr) -> String {
    metrics_text(admin)
        .await
        .lines()
        .filter(|l| l.starts_with(HANDSHAKE_FAILURES) && l.contains("direction=\"inbound\""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `config` must be refused: no HTTP response, the failure counted as `reason`, nothing reached
/// the app.
async fn assert_refused_with(server: &Server, config: Arc<rustls::ClientConfig>, reason: &str) {
    let admin = server.vakt.admin_addr;
    let labels = [("direction", "inbound"), ("reason", reason)];
    let before = handshake_failures(admin, Some(reason)).await;

    let outcome = attempt(server.addr(), config).await;
    assert!(
        outcome.is_err(),
        "expected the client to be refused ({reason}), but got HTTP {outcome:?}"
    );

    let after = wait_for_metric(admin, HANDSHAKE_FAILURES, &labels, before + 1.0).await;
    assert!(
        after >= before + 1.0,
        "expected {HANDSHAKE_FAILURES}{{direction=\"inbound\",reason=\"{reason}\"}} to go up \
         (before {before}, after {after}); client saw: {outcome:?}; inbound failures now:\n{}",
        handshake_failure_lines(admin).await
    );
    assert!(
        server.app.seen().is_empty(),
        "the app must not see requests from a refused client: {:?}",
        server.app.seen()
    );
}

/// A client presenting the certificate in `client_dir` (none when `None`) must be refused.
async fn assert_refused(server: &Server, client_dir: Option<&Path>, reason: &str) {
    let config = raw_client_config(client_dir, &server.dir, &server.id, HTTP11);
    assert_refused_with(server, config, reason).await;
}

/// A client certificate issued by the server's CA to `spec`, then refused as `reason`.
async fn assert_leaf_refused(spec: &LeafSpec, reason: &str) {
    let server = server(&["web"], "").await;
    let dir = server.pki.workload_with("client", spec).unwrap();
    assert_refused(&server, Some(&dir), reason).await;
}

// ---------------------------------------------------------------- accepted

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_peer_reaches_the_app_over_http1() {
    let server = server(&["web"], "").await;
    let dir = server.pki.workload("web", &web_id(&server)).unwrap();
    let config = raw_client_config(Some(&dir), &server.dir, &server.id, HTTP11);

    let tls = mtls_connect(server.addr(), config).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let response = h1_send(tls, get("/hello", "orders.shop")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = body_string(response).await;
    assert!(
        body.contains(&format!("hello {}", web_id(&server))),
        "the app should name the verified caller: {body:?}"
    );

    let seen = server.app.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path_and_query, "/hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_peer_reaches_the_app_over_http2() {
    let server = server(&["web"], "").await;
    let dir = server.pki.workload("web", &web_id(&server)).unwrap();
    let config = raw_client_config(Some(&dir), &server.dir, &server.id, &[b"h2"]);

    let tls = mtls_connect(server.addr(), config).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let request: Request<TestBody> = Request::get("https://orders.shop/hello-h2")
        .body(TestBody::default())
        .unwrap();
    let response = h2_send(tls, request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = body_string(response).await;
    assert!(
        body.contains(&format!("hello {}", web_id(&server))),
        "the app should name the verified caller: {body:?}"
    );

    let seen = server.app.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path_and_query, "/hello-h2");
}

// ---------------------------------------------------------------- refused at the handshake

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_certificate_is_refused() {
    let server = server(&["web"], "").await;
    assert_refused(&server, None, "no_client_certificate").await;
}

/// One test for both foreign-CA cases: they count under the same reason label, and metrics are
/// process-global, so as two parallel tests each could pass on the other's increment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_is_refused() {
    // Control: a foreign CA whose subject name differs from the trusted CA's.
    let server_a = server(&["web"], "").await;
    let elsewhere = DevPki::new("elsewhere.example").unwrap();
    let dir = elsewhere.workload("web", &web_id(&server_a)).unwrap();
    assert_refused(&server_a, Some(&dir), "unknown_ca").await;

    // The impostor case: a second CA for the same trust domain (say, another cluster that
    // also calls itself test.vakt.local). Same SPIFFE ID, an allowed peer: only the CA is wrong.
    let server_b = server(&["web"], "").await;
    let twin = DevPki::new(TD).unwrap();
    let dir = twin.workload("web", &web_id(&server_b)).unwrap();
    assert_refused(&server_b, Some(&dir), "unknown_ca").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificate_is_refused() {
    let mut spec = svid(&format!("spiffe://{TD}/ns/shop/sa/web"));
    let now = time::OffsetDateTime::now_utc();
    spec.not_before = now - time::Duration::days(2);
    spec.not_after = now - time::Duration::days(1);
    assert_leaf_refused(&spec, "expired").await;
}

/// A session is never resumed: every connection's certificate is verified afresh, so a client
/// whose SVID expired cannot go on with a session (or ticket) from before. The client keeps its
/// default resumption store to try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_not_resumed_past_an_expired_svid() {
    let server = server(&["web"], "").await;
    let mut spec = svid(&web_id(&server));
    spec.not_after = time::OffsetDateTime::now_utc() + time::Duration::seconds(3);
    let dir = server.pki.workload_with("short-lived", &spec).unwrap();
    // rustls clients keep sessions and tickets for resumption by default.
    let config = raw_client_config(Some(&dir), &server.dir, &server.id, HTTP11);

    for _ in 0..2 {
        let tls = mtls_connect(server.addr(), config.clone()).await.unwrap();
        let kind = tls.get_ref().1.handshake_kind();
        assert_eq!(
            kind,
            Some(rustls::HandshakeKind::Full),
            "a session was resumed"
        );
        let response = h1_send(tls, get("/", "orders.shop")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    // Past the certificate's notAfter (X.509 times have whole seconds).
    let expiry = Instant::now() + Duration::from_secs(4);
    tokio::time::sleep_until(expiry.into()).await;
    let admin = server.vakt.admin_addr;
    let before = handshake_failures(admin, Some("expired")).await;
    let outcome = attempt(server.addr(), config).await;
    assert!(
        outcome.is_err(),
        "the expired client was served: {outcome:?}"
    );
    let labels = [("direction", "inbound"), ("reason", "expired")];
    let after = wait_for_metric(admin, HANDSHAKE_FAILURES, &labels, before + 1.0).await;
    assert!(
        after >= before + 1.0,
        "the refusal was not counted as expired"
    );
    assert_eq!(
        server.app.seen().len(),
        2,
        "the expired client reached the app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_trust_domain_is_refused() {
    // Signed by the server's own CA, but for a trust domain the server does not accept.
    let spec = svid("spiffe://other.td/ns/shop/sa/web");
    assert_leaf_refused(&spec, "trust_domain_not_accepted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_uri_sans_are_refused() {
    let mut spec = svid(&format!("spiffe://{TD}/ns/shop/sa/web"));
    spec.uris.push(format!("spiffe://{TD}/ns/shop/sa/orders"));
    assert_leaf_refused(&spec, "multiple_uri_sans").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_uri_san_is_refused() {
    let mut spec = svid(&format!("spiffe://{TD}/ns/shop/sa/web"));
    spec.uris.clear();
    spec.dns_names = vec!["web.shop.svc".to_owned()];
    assert_leaf_refused(&spec, "no_spiffe_id").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_certificate_as_leaf_is_refused() {
    let mut spec = svid(&format!("spiffe://{TD}/ns/shop/sa/web"));
    spec.is_ca = true;
    assert_leaf_refused(&spec, "ca_used_as_leaf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_auth_only_certificate_is_refused() {
    let mut spec = svid(&format!("spiffe://{TD}/ns/shop/sa/web"));
    spec.client_auth = false;
    spec.server_auth = true;
    assert_leaf_refused(&spec, "wrong_key_usage").await;
}

/// A client that offers only TLS 1.2, with an otherwise valid certificate of an allowed peer.
fn tls12_only_client_config(client_dir: &Path, server: &Server) -> Arc<rustls::ClientConfig> {
    Arc::new(client_config_with_versions(
        Some(client_dir),
        &server.dir,
        &server.id,
        &[b"http/1.1"],
        &[&rustls::version::TLS12],
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_client_is_refused_when_13_is_required() {
    let server = server(&["web"], "").await;
    let admin = server.vakt.admin_addr;
    let dir = server.pki.workload("web", &web_id(&server)).unwrap();
    let before = handshake_failures(admin, None).await;
    let specific_before = handshake_failures(admin, Some("peer_incompatible")).await;

    let connected = mtls_connect(server.addr(), tls12_only_client_config(&dir, &server)).await;
    assert!(
        connected.is_err(),
        "a TLS 1.2-only client must not complete a handshake with a TLS 1.3-only server"
    );

    // Counted at all (the total over reasons)...
    let after = wait_for_metric(
        admin,
        HANDSHAKE_FAILURES,
        &[("direction", "inbound")],
        before + 1.0,
    )
    .await;
    assert!(
        after >= before + 1.0,
        "the TLS 1.2 attempt should be counted (before {before}, after {after}):\n{}",
        handshake_failure_lines(admin).await
    );
    // ...and under its own reason: the total alone could be moved by the tests running in
    // parallel, since metrics are process-global.
    let labels = [("direction", "inbound"), ("reason", "peer_incompatible")];
    let after = wait_for_metric(admin, HANDSHAKE_FAILURES, &labels, specific_before + 1.0).await;
    assert!(
        after >= specific_before + 1.0,
        "the TLS 1.2 attempt should count as peer_incompatible ({specific_before} -> {after}):\n{}",
        handshake_failure_lines(admin).await
    );
    assert!(server.app.seen().is_empty(), "{:?}", server.app.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_cut_off_by_the_handshake_timeout() {
    let server = server(&["web"], "limits:\n  handshake_timeout: 300ms\n").await;
    let admin = server.vakt.admin_addr;
    let labels = [("direction", "inbound"), ("reason", "handshake_timeout")];
    let before = handshake_failures(admin, Some("handshake_timeout")).await;

    let mut tcp = TcpStream::connect(server.addr()).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut buf)).await {
        Err(_) => panic!("vakt kept a silent connection open for more than 2 s"),
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("vakt sent {n} bytes to a client that never said hello"),
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "closed after {waited:?}, before the 300 ms handshake timeout could have fired"
    );

    let after = wait_for_metric(admin, HANDSHAKE_FAILURES, &labels, before + 1.0).await;
    assert!(
        after >= before + 1.0,
        "handshake_timeout not counted (before {before}, after {after}):\n{}",
        handshake_failure_lines(admin).await
    );
    assert!(server.app.seen().is_empty());
}

// ---------------------------------------------------------------- refused after the handshake

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_peer_not_in_allowed_peers_gets_403() {
    let server = server(&["web"], "").await;
    let admin = server.vakt.admin_addr;
    let labels = [("direction", "inbound"), ("reason", "peer_not_allowed")];
    let before = metric_sum(&metrics_text(admin).await, DENIALS, &labels);

    let batch = server.pki.spiffe_id("shop", "batch");
    let dir = server.pki.workload("batch", &batch).unwrap();
    let config = raw_client_config(Some(&dir), &server.dir, &server.id, HTTP11);
    let tls = mtls_connect(server.addr(), config).await.unwrap();
    let response = h1_send(tls, get("/orders", "orders.shop")).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = serde_json::from_str(&body_string(response).await).unwrap();
    assert_eq!(body["error"], "peer_not_allowed", "{body}");
    assert!(
        !body.to_string().contains(&batch) && !body.to_string().contains("allowed_peers"),
        "inbound denials must not reveal policy internals: {body}"
    );

    assert!(server.app.seen().is_empty(), "{:?}", server.app.seen());
    let after = wait_for_metric(admin, DENIALS, &labels, before + 1.0).await;
    assert!(
        after >= before + 1.0,
        "denial not counted: {before} -> {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_refuses_a_server_with_the_wrong_identity() {
    let server = server(&["web"], "").await;
    let expected = format!("spiffe://{TD}/ns/shop/sa/NOT-orders");
    let client = client_sidecar(&server.pki, "web", server.addr(), &expected).await;
    let outbound = client.outbound_addr.unwrap();

    let response = plain_send(outbound, get("/x", "orders.shop")).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body: serde_json::Value = serde_json::from_str(&body_string(response).await).unwrap();
    assert_eq!(body["error"], "upstream_identity_mismatch", "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&expected),
        "the message should name the expected ID {expected}: {message:?}"
    );
    assert!(
        message.contains(&format!("presented identity {}", server.id)),
        "the message should name the presented ID {}: {message:?}",
        server.id
    );
    assert!(server.app.seen().is_empty(), "{:?}", server.app.seen());
    // The client's trail names where the request went and whom it expected there; no peer,
    // since none proved the expected identity.
    client.shutdown().await;
    let trail = std::fs::read_to_string(server.pki.path().join("web/audit.log")).unwrap();
    let event: serde_json::Value = trail
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["direction"] == "outbound")
        .unwrap_or_else(|| panic!("no outbound event:\n{trail}"));
    assert_eq!(event["reason"], "upstream_identity_mismatch", "{event}");
    assert_eq!(event["destination"], "orders.shop:80", "{event}");
    assert_eq!(event["expected_peer"], expected.as_str(), "{event}");
    assert!(event.get("peer").is_none(), "{event}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_refuses_an_unknown_destination() {
    let server = server(&["web"], "").await;
    let client = client_sidecar(&server.pki, "web", server.addr(), &server.id).await;
    let outbound = client.outbound_addr.unwrap();

    let response = plain_send(outbound, get("/x", "payments.shop")).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = serde_json::from_str(&body_string(response).await).unwrap();
    assert_eq!(body["error"], "unknown_destination", "{body}");
    assert!(server.app.seen().is_empty(), "{:?}", server.app.seen());

    // Positive control: the same sidecar reaches the known destination.
    let response = plain_send(outbound, get("/x", "orders.shop")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.app.seen().len(), 1);
}

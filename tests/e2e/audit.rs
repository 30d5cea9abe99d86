//! The audit trail on the real request path: one event per decision and per refused handshake,
//! under concurrency; the keyed chain verifies with the `vakt` binary; a failing sink is handled
//! as configured; restarts resume the epoch or open a new one that names the gap; rotation is
//! recorded; edits, cut tails, wrong keys and `vakt.audit/1` files are told apart.

use std::collections::HashMap;
use std::time::Duration;

use std::path::Path;

use crate::common::*;
use serde_json::Value;

fn events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_per_request_and_refused_handshake_under_concurrency() {
    let server = server(&["web"], "").await;
    let web = client_sidecar(&server.pki, "web", server.addr(), &server.id).await;
    let batch = client_sidecar(&server.pki, "batch", server.addr(), &server.id).await;
    let (web_addr, batch_addr) = (web.outbound_addr.unwrap(), batch.outbound_addr.unwrap());

    // 2,000 requests with a mix of outcomes, 8 at a time, plus refused handshakes.
    let mut tasks = Vec::new();
    for i in 0..2000usize {
        let (addr, path) = match i % 4 {
            0 => (web_addr, "/orders/1".to_owned()),
            1 => (batch_addr, "/orders/1".to_owned()),
            2 => (web_addr, "/orders%2F1".to_owned()),
            _ => (web_addr, format!("/o/{i}")),
        };
        tasks.push(tokio::spawn(async move {
            plain_send(addr, get(&path, "orders.shop"))
                .await
                .status()
                .as_u16()
        }));
        if tasks.len() == 8 {
            for t in tasks.drain(..) {
                t.await.unwrap();
            }
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let refused_handshakes = 5;
    for _ in 0..refused_handshakes {
        let config = raw_client_config(None, &server.dir, &server.id, &[b"http/1.1"]);
        if let Ok(tls) = mtls_connect(server.addr(), config).await {
            let _ = h1_send(tls, get("/", "orders.shop")).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let audit_file = server.dir.join("audit.log");
    let vakt = server.vakt;
    vakt.shutdown().await; // flushes every accepted event

    let events = events(&audit_file);
    let mut by_outcome: HashMap<(String, String), usize> = HashMap::new();
    for e in &events {
        let key = (
            e["decision"].as_str().unwrap().to_owned(),
            e["reason"].as_str().unwrap().to_owned(),
        );
        *by_outcome.entry(key).or_default() += 1;
        // Never a token, a body or a raw Authorization in an event.
        assert!(!e.to_string().to_lowercase().contains("authorization"));
    }
    let count = |d: &str, r: &str| by_outcome.get(&(d.into(), r.into())).copied().unwrap_or(0);
    // /orders/1 from web and /o/{i} (inside the test policy's /** route) are both allowed.
    assert_eq!(count("allow", "rule_matched"), 1000, "{by_outcome:?}");
    assert_eq!(count("deny", "peer_not_allowed"), 500, "{by_outcome:?}");
    assert_eq!(count("refused", "invalid_path"), 500, "{by_outcome:?}");
    // Every request event carries its request and trace ids.
    for e in events.iter().filter(|e| e["direction"] == "inbound") {
        assert_eq!(e["trace_id"].as_str().unwrap().len(), 32, "{e}");
        assert!(e["request_id"].is_string(), "{e}");
    }
    assert_eq!(
        count("refused", "no_client_certificate"),
        refused_handshakes,
        "{by_outcome:?}"
    );
    assert_eq!(events.len(), 2000 + refused_handshakes, "{by_outcome:?}");

    let (code, stdout, stderr) = verify_cli(&server.dir, &[&audit_file]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("intact: {} events", 2000 + refused_handshakes)),
        "{stdout}"
    );
    let (code, stdout, _) = run_vakt(&["audit", "report", audit_file.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(stdout.contains("peer_not_allowed"), "{stdout}");
    assert!(stdout.starts_with("trail: not verified"), "{stdout}");
    // With the key, the report verifies the trail as it reads it, and has the reviewer's tables.
    let key = server.dir.join(vakt::dev::mesh::DEV_CHAIN_KEY_FILE);
    let checkpoints = server.dir.join(vakt::dev::mesh::DEV_CHECKPOINT_FILE);
    let report_args = |json: bool| {
        let mut args: Vec<String> = vec![
            "audit".into(),
            "report".into(),
            "--key".into(),
            key.display().to_string(),
            "--checkpoints".into(),
            checkpoints.display().to_string(),
            audit_file.display().to_string(),
        ];
        if json {
            args.extend(["--output".into(), "json".into()]);
        }
        args
    };
    let (code, stdout, stderr) = run_vakt_owned(&report_args(false));
    assert_eq!(code, 0, "{stderr}");
    let batch_id = server.pki.spiffe_id("shop", "batch");
    for expected in [
        format!(
            "trail: intact ({} events verified)",
            2000 + refused_handshakes
        ),
        "Denials by peer, route and reason".to_owned(),
        format!("  {batch_id}  everything  peer_not_allowed       500"),
        "By hour (UTC)".to_owned(),
        "every event in the files".to_owned(),
    ] {
        assert!(
            stdout.contains(&expected),
            "{expected:?} missing in:\n{stdout}"
        );
    }
    let (code, stdout, _) = run_vakt_owned(&report_args(true));
    assert_eq!(code, 0);
    let json: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["trail"]["intact"], true);
    assert_eq!(json["decisions"]["deny"], 500);
    assert_eq!(
        json["denials_by_peer_route_reason"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["peer"] == batch_id.as_str())
            .unwrap()["count"],
        500
    );
    assert!(!json["by_hour"].as_array().unwrap().is_empty());

    // Tampering is caught: delete one line.
    let text = std::fs::read_to_string(&audit_file).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(10);
    std::fs::write(&audit_file, lines.join("\n") + "\n").unwrap();
    let (code, _, stderr) = verify_cli(&server.dir, &[&audit_file]);
    assert_ne!(code, 0);
    assert!(stderr.contains("line 11"), "{stderr}");
    // A report over it says so before anything else, and exits 1.
    let (code, stdout, _) = run_vakt_owned(&report_args(false));
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.starts_with("trail: TAMPERED OR INCOMPLETE"),
        "{stdout}"
    );
}

/// A sink that cannot write (its rotation target is blocked by a directory) makes vakt refuse
/// requests with 503 audit_unavailable — no access without a record — and recover once the sink
/// does, with every accepted event written and the chain intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sink_refuses_access_then_recovers_without_losing_events() {
    let server = server(&["web"], "").await;
    let dir = server.dir.clone();
    let config = web_client_config_for(&server, &dir);
    let _ = server.vakt.shutdown().await;
    // A second server on the same files, with a tiny rotation size and one rotated file.
    let blocked = dir.join("audit-small.log.1");
    std::fs::create_dir_all(blocked.join("in-the-way")).unwrap();
    let policy = dir.join("policy.yaml");
    let yaml = vakt::dev::mesh::base_config_yaml(&dir, TD)
        .replace(
            &format!(
                "    path: {}\n    fsync: never\n",
                dir.join("audit.log").display()
            ),
            &format!(
                "    path: {}\n    fsync: never\n    max_bytes: 4096\n    max_files: 1\n",
                dir.join("audit-small.log").display()
            ),
        )
        .replace(
            vakt::dev::mesh::DEV_CHECKPOINT_FILE,
            "audit-small-checkpoints.jsonl",
        )
        + &format!(
            "inbound:\n  listen: 127.0.0.1:0\n  app: {}\n  policy: {}\n",
            server.app.addr,
            policy.display()
        );
    let vakt = vakt::app::App::start(vakt::config::Config::from_yaml(&yaml).unwrap())
        .await
        .unwrap();
    let addr = vakt.inbound_addr.unwrap();
    let mut statuses = Vec::new();
    for _ in 0..60 {
        let tls = mtls_connect(addr, config.clone()).await.unwrap();
        let status = h1_send(tls, get("/x", "orders.shop"))
            .await
            .unwrap()
            .status()
            .as_u16();
        statuses.push(status);
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(statuses.last(), Some(&503), "never refused: {statuses:?}");
    let text = metrics_text(vakt.admin_addr).await;
    assert!(
        metric_sum(
            &text,
            "vakt_requests_denied_total",
            &[("reason", "audit_unavailable")]
        ) >= 1.0
    );

    // The sink recovers: requests pass again and nothing accepted was lost.
    std::fs::remove_dir_all(&blocked).unwrap();
    let mut recovered = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let tls = mtls_connect(addr, config.clone()).await.unwrap();
        if h1_send(tls, get("/x", "orders.shop"))
            .await
            .unwrap()
            .status()
            == 200
        {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "vakt never recovered after the sink did");
    let accepted = statuses.iter().filter(|s| **s == 200).count() + 1;
    vakt.shutdown().await;
    let files = [dir.join("audit-small.log.1"), dir.join("audit-small.log")];
    let files: Vec<&Path> = files
        .iter()
        .filter(|f| f.exists())
        .map(|f| f.as_path())
        .collect();
    let (code, stdout, stderr) = run_vakt_owned(&verify_args(
        &dir,
        &files,
        Some(&dir.join("audit-small-checkpoints.jsonl")),
    ));
    assert_eq!(code, 0, "{stdout}{stderr}");
    let written: usize = stdout
        .rsplit("intact: ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    // Every allowed request was recorded (refused-while-failing ones are counted as dropped).
    assert!(
        written >= accepted,
        "written {written}, accepted {accepted}; {stdout}"
    );
}

fn web_client_config_for(server: &Server, dir: &Path) -> std::sync::Arc<rustls::ClientConfig> {
    let web_dir = server
        .pki
        .workload("web-audit", &server.pki.spiffe_id("shop", "web"))
        .unwrap();
    raw_client_config(Some(&web_dir), dir, &server.id, &[b"http/1.1"])
}

/// The exposition parses, and every label set stays within the catalogue's bounded labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_exposition_parses_and_labels_stay_bounded() {
    let server = server(&["web"], "").await;
    let web = client_sidecar(&server.pki, "web", server.addr(), &server.id).await;
    for path in ["/orders/1", "/orders%2F1", "/o/2"] {
        plain_send(web.outbound_addr.unwrap(), get(path, "orders.shop")).await;
    }
    let catalogue =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/METRICS.md")).unwrap();
    let allowed_labels = [
        "direction",
        "status_class",
        "reason",
        "route",
        "decision",
        "issuer",
        "result",
        "trigger",
        "certificate",
        // Our own and the federated trust domains: as many as the config names, like `issuer`.
        "trust_domain",
        "limit",
        "version",
        "le",
        "quantile",
    ];
    let mut samples = 0;
    let text = metrics_text(server.vakt.admin_addr).await;
    // Every family says what it counts.
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let family = line.split_whitespace().nth(2).unwrap();
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family}: no # HELP"
        );
    }
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad sample value in {line}"));
        let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            catalogue.contains(&format!("`{base}`")),
            "{base} is not catalogued"
        );
        let labels = labels.strip_suffix('}').unwrap();
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap();
            assert!(
                allowed_labels.contains(&key),
                "unbounded label {key} in {line}"
            );
            assert!(
                !value.contains("spiffe://") && !value.contains("/orders"),
                "{line}"
            );
        }
        samples += 1;
    }
    assert!(samples > 20);
}

// ------------------------------------------------------------------ who and what, however it ends

/// The events in `path` once one matches `found`, waiting up to 10 s for the writer.
async fn wait_for_event(path: &Path, found: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(e) = events(path).into_iter().find(&found) {
            return e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no such event in {}:\n{}",
            path.display(),
            std::fs::read_to_string(path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn inbound_event_for(path: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["direction"] == "inbound" && e["path"] == path
}

/// The fields every inbound event of the allowed peer `web` carries, however the exchange ended.
fn assert_who_and_what(e: &Value, server: &Server, method: &str, path: &str) {
    assert_eq!(e["peer"], server.pki.spiffe_id("shop", "web"), "{e}");
    assert_eq!(e["method"], method, "{e}");
    assert_eq!(e["path"], path, "{e}");
    assert!(e["request_id"].is_string(), "{e}");
    assert_eq!(e["trace_id"].as_str().map(str::len), Some(32), "{e}");
}

fn web_config(server: &Server, alpn: &[&[u8]]) -> std::sync::Arc<rustls::ClientConfig> {
    let dir = server
        .pki
        .workload("web-outcomes", &server.pki.spiffe_id("shop", "web"))
        .unwrap();
    raw_client_config(Some(&dir), &server.dir, &server.id, alpn)
}

/// An allowed HTTP/2 request whose client resets the stream while the app is still working is
/// recorded as allowed, with its peer, path, route and rule, and as aborted by the client: not
/// as a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_h2_request_reset_by_the_client_is_allowed_and_client_aborted() {
    let server = server(&["web"], "").await;
    let tls = mtls_connect(server.addr(), web_config(&server, &[b"h2"]))
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    // The app answers after 5 s; the client gives up after 300 ms, which resets the stream
    // (RST_STREAM CANCEL) and keeps the connection open.
    let waited = tokio::time::timeout(
        Duration::from_millis(300),
        sender.send_request(get("/slow?ms=5000", "orders.shop")),
    )
    .await;
    assert!(waited.is_err(), "the app answered too early: {waited:?}");

    let audit_file = server.dir.join("audit.log");
    let e = wait_for_event(&audit_file, |e| e["direction"] == "inbound").await;
    assert_eq!(e["decision"], "allow", "{e}");
    assert_eq!(e["reason"], "rule_matched", "{e}");
    assert_eq!(e["outcome"], "client_aborted", "{e}");
    assert_eq!(e["route"], "everything", "{e}");
    assert_eq!(e["rule"], 0, "{e}");
    assert!(e["status"].is_null(), "no response was sent: {e}");
    assert_who_and_what(&e, &server, "GET", "/slow");
    // Recorded when the client left, not when the app answered.
    assert!(e["duration_ms"].as_u64().unwrap() < 4000, "{e}");
    drop(sender);
}

/// The same over HTTP/1.1: the client closes its connection while the app is working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_h1_request_whose_client_closes_the_connection_is_allowed_and_client_aborted() {
    use tokio::io::AsyncWriteExt;
    let server = server(&["web"], "").await;
    let mut tls = mtls_connect(server.addr(), web_config(&server, &[b"http/1.1"]))
        .await
        .unwrap();
    tls.write_all(b"GET /slow?ms=5000 HTTP/1.1\r\nHost: orders.shop\r\n\r\n")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tls.shutdown().await.unwrap();
    drop(tls);

    let audit_file = server.dir.join("audit.log");
    let e = wait_for_event(&audit_file, |e| e["direction"] == "inbound").await;
    assert_eq!(e["decision"], "allow", "{e}");
    assert_eq!(e["outcome"], "client_aborted", "{e}");
    assert_eq!(e["route"], "everything", "{e}");
    assert_eq!(e["rule"], 0, "{e}");
    assert_who_and_what(&e, &server, "GET", "/slow");
}

/// A normal exchange is `completed`; the app being down is an `upstream_error` of an allowed
/// request, with who and what.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_and_upstream_error_outcomes() {
    let server = server(&["web"], "").await;
    let config = web_config(&server, &[b"http/1.1"]);
    let tls = mtls_connect(server.addr(), config.clone()).await.unwrap();
    let response = h1_send(tls, get("/orders/1", "orders.shop")).await.unwrap();
    assert_eq!(response.status(), 200);
    body_string(response).await;
    let audit_file = server.dir.join("audit.log");
    let e = wait_for_event(&audit_file, inbound_event_for("/orders/1")).await;
    assert_eq!(
        (&e["decision"], &e["outcome"], &e["status"]),
        (&"allow".into(), &"completed".into(), &200.into()),
        "{e}"
    );
    assert_who_and_what(&e, &server, "GET", "/orders/1");

    // The app goes away: a sidecar in front of a port nobody listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nobody = closed.local_addr().unwrap();
    drop(closed);
    let (down, down_id, down_dir) = server_in_front_of(&server.pki, nobody, "").await;
    let config = raw_client_config(
        Some(
            &server
                .pki
                .workload("web-down", &server.pki.spiffe_id("shop", "web"))
                .unwrap(),
        ),
        &down_dir,
        &down_id,
        &[b"http/1.1"],
    );
    let tls = mtls_connect(down.inbound_addr.unwrap(), config)
        .await
        .unwrap();
    let response = h1_send(tls, get("/orders/2", "orders.shop")).await.unwrap();
    assert_eq!(response.status(), 502);
    body_string(response).await;
    let e = wait_for_event(&down_dir.join("audit.log"), inbound_event_for("/orders/2")).await;
    assert_eq!(e["decision"], "allow", "{e}");
    assert_eq!(e["outcome"], "upstream_error", "{e}");
    assert_eq!(e["status"], 502, "{e}");
    assert_eq!(e["route"], "everything", "{e}");
    assert_eq!(e["peer"], server.pki.spiffe_id("shop", "web"), "{e}");
    assert_eq!(e["method"], "GET", "{e}");
}

/// A refused token keeps the method, the peer and the path (and never the token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_recorded_with_method_peer_and_path() {
    // An issuer nobody serves: a malformed token is refused before any key is needed.
    let oidc = "oidc:\n  issuers:\n    - issuer: http://127.0.0.1:9/realm\n      profile: helseid\n      audiences: [journal-api]\n      allow_insecure_loopback: true\n      dpop:\n        required: false\n";
    let server = server(&["web"], oidc).await;
    let tls = mtls_connect(server.addr(), web_config(&server, &[b"http/1.1"]))
        .await
        .unwrap();
    let token = "not-a-jwt-but-secret";
    let mut req = get("/orders/7", "orders.shop");
    *req.method_mut() = http::Method::DELETE;
    req.headers_mut().insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    let response = h1_send(tls, req).await.unwrap();
    assert_eq!(response.status(), 401);
    body_string(response).await;

    let audit_file = server.dir.join("audit.log");
    let e = wait_for_event(&audit_file, inbound_event_for("/orders/7")).await;
    assert_eq!(e["decision"], "refused", "{e}");
    assert_eq!(e["reason"], "malformed_token", "{e}");
    assert_eq!(e["outcome"], "refused", "{e}");
    assert_eq!(e["status"], 401, "{e}");
    assert_eq!(e["action"], "delete", "{e}");
    assert_who_and_what(&e, &server, "DELETE", "/orders/7");
    assert!(!e.to_string().contains(token), "{e}");
}

/// A path or host vakt cannot read is refused and recorded with the method, the peer and a
/// redacted target: unreadable segments as `*`, no query, never the raw bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_paths_and_hosts_are_recorded_with_a_redacted_target() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = server(&["web"], "").await;
    let config = web_config(&server, &[b"http/1.1"]);
    let tls = mtls_connect(server.addr(), config.clone()).await.unwrap();
    let response = h1_send(
        tls,
        get(
            "/records/%2e%2e/12%2F34/notes?nid=12345678901",
            "orders.shop",
        ),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 400);
    body_string(response).await;

    // Two different hosts: refused before the path is read.
    let mut tls = mtls_connect(server.addr(), config).await.unwrap();
    tls.write_all(
        b"GET /hosts/a%20b/x?q=1 HTTP/1.1\r\nHost: orders.shop\r\nHost: other.shop\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = [0u8; 12];
    tls.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 400");

    let audit_file = server.dir.join("audit.log");
    let e = wait_for_event(&audit_file, |e| e["reason"] == "invalid_path").await;
    assert_eq!(e["decision"], "refused", "{e}");
    assert_eq!(e["outcome"], "refused", "{e}");
    assert_who_and_what(&e, &server, "GET", "/records/*/*/notes");
    let e = wait_for_event(&audit_file, |e| e["reason"] == "invalid_host").await;
    assert_eq!(e["outcome"], "refused", "{e}");
    assert_who_and_what(&e, &server, "GET", "/hosts/*/x");
    let trail = std::fs::read_to_string(&audit_file).unwrap();
    assert!(
        !trail.contains("12345678901") && !trail.contains("%2") && !trail.contains("other.shop"),
        "{trail}"
    );
}

// ------------------------------------------------------------------------------ deny mode, exact

/// With `on_audit_failure: deny`, a burst of 200 concurrent requests against a queue of 50
/// behind a slow disk: every request served has its event written, exactly, and every other
/// one was refused with 503 `audit_unavailable` without reaching the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_mode_serves_exactly_the_requests_whose_events_are_written() {
    let pki = vakt::dev::mesh::DevPki::new(TD).unwrap();
    let app = vakt::dev::mesh::EchoApp::start().await.unwrap();
    let id = pki.spiffe_id("shop", "orders");
    let dir = pki.workload("orders", &id).unwrap();
    let policy = vakt::dev::mesh::write_policy(
        &dir,
        &vakt::dev::mesh::allow_peers_policy_yaml(&[pki.spiffe_id("shop", "web")]),
    )
    .unwrap();
    let base = vakt::dev::mesh::base_config_yaml(&dir, TD);
    assert!(base.contains("audit:\n  sink: file\n"), "{base}");
    let yaml = base.replace(
        "audit:\n  sink: file\n",
        "audit:\n  sink: file\n  queue_capacity: 50\n  on_audit_failure: deny\n",
    ) + &format!(
        "inbound:\n  listen: 127.0.0.1:0\n  app: {}\n  policy: {}\n",
        app.addr,
        policy.display()
    );
    let vakt = vakt::app::App::start_with_slow_audit_sink(
        vakt::config::Config::from_yaml(&yaml).unwrap(),
        Duration::from_millis(400),
    )
    .await
    .unwrap();
    let addr = vakt.inbound_addr.unwrap();
    let web_dir = pki.workload("web", &pki.spiffe_id("shop", "web")).unwrap();
    let config = raw_client_config(Some(&web_dir), &dir, &id, &[b"http/1.1"]);
    let dropped = [("reason", "queue_full")];
    let dropped_before = metric_sum(
        &metrics_text(vakt.admin_addr).await,
        "vakt_audit_events_dropped_total",
        &dropped,
    );

    // Connect all 200 first, then send at once.
    let mut streams = Vec::new();
    for _ in 0..200 {
        streams.push(mtls_connect(addr, config.clone()).await.unwrap());
    }
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(200));
    let tasks: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, tls)| {
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                let response = h1_send(tls, get(&format!("/burst/{i}"), "orders.shop"))
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                (i, status, body_string(response).await)
            })
        })
        .collect();
    let mut served = std::collections::BTreeSet::new();
    let mut refused = 0;
    for t in tasks {
        let (i, status, body) = t.await.unwrap();
        match status {
            200 => {
                served.insert(format!("/burst/{i}"));
            }
            503 => {
                assert!(body.contains(r#""error":"audit_unavailable""#), "{body}");
                refused += 1;
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert_eq!(served.len() + refused, 200);
    assert!(
        refused > 0,
        "the queue never filled: the test proves nothing"
    );
    assert!(!served.is_empty(), "nothing was served");
    // Nothing refused reached the app.
    let at_app: std::collections::BTreeSet<String> =
        app.seen().into_iter().map(|s| s.path_and_query).collect();
    assert_eq!(at_app, served);
    let text = metrics_text(vakt.admin_addr).await;
    let dropped_after = metric_sum(&text, "vakt_audit_events_dropped_total", &dropped);
    assert!(
        dropped_after >= dropped_before + refused as f64,
        "{dropped_before} -> {dropped_after}, {refused} refused"
    );

    let audit_file = dir.join("audit.log");
    vakt.shutdown().await; // writes every accepted event
    let events = events(&audit_file);
    let recorded: std::collections::BTreeSet<String> = events
        .iter()
        .filter(|e| e["decision"] == "allow" && e["status"] == 200)
        .map(|e| e["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        recorded.len(),
        served.len(),
        "served {} requests, recorded {}",
        served.len(),
        recorded.len()
    );
    assert_eq!(recorded, served, "served and recorded differ");
    assert_eq!(
        events.len(),
        served.len(),
        "one event per served request, none for the refusals"
    );
}

/// `vakt audit verify --key <dev key> --checkpoints <dev checkpoints>` over `files` of the
/// sidecar whose files are in `dir`.
fn verify_cli(dir: &Path, files: &[&Path]) -> (i32, String, String) {
    let checkpoints = dir.join(vakt::dev::mesh::DEV_CHECKPOINT_FILE);
    run_vakt_owned(&verify_args(dir, files, Some(&checkpoints)))
}

fn verify_args(dir: &Path, files: &[&Path], checkpoints: Option<&Path>) -> Vec<String> {
    let key = dir.join(vakt::dev::mesh::DEV_CHAIN_KEY_FILE);
    let mut args: Vec<String> = vec![
        "audit".into(),
        "verify".into(),
        "--key".into(),
        key.display().to_string(),
    ];
    if let Some(c) = checkpoints {
        args.extend(["--checkpoints".into(), c.display().to_string()]);
    }
    args.extend(files.iter().map(|f| f.display().to_string()));
    args
}

fn run_vakt_owned(args: &[String]) -> (i32, String, String) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_vakt(&args)
}

/// A server sidecar on the files of `dir` (its certificates, key, policy and audit trail), in
/// front of `app`, with `audit_file` settings replacing the defaults' `fsync: never` line.
async fn sidecar_on(dir: &Path, app: std::net::SocketAddr, audit_file: &str) -> vakt::app::App {
    let yaml = vakt::dev::mesh::base_config_yaml(dir, TD).replace("    fsync: never\n", audit_file)
        + &format!(
            "inbound:\n  listen: 127.0.0.1:0\n  app: {app}\n  policy: {}\n",
            dir.join("policy.yaml").display()
        );
    vakt::app::App::start(vakt::config::Config::from_yaml(&yaml).unwrap())
        .await
        .unwrap()
}

/// `n` requests from web, each on its own connection.
async fn send(addr: std::net::SocketAddr, config: &std::sync::Arc<rustls::ClientConfig>, n: usize) {
    for _ in 0..n {
        let tls = mtls_connect(addr, config.clone()).await.unwrap();
        let status = h1_send(tls, get("/x", "orders.shop"))
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn save(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// A trail written by a real sidecar, checked by the real binary after an edit, a tail cut
/// after the last checkpoint, with a wrong key; and a `vakt.audit/1` file still verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_edits_cut_tails_and_wrong_keys() {
    let server = server(&["web"], "").await;
    let dir = server.dir.clone();
    let config = web_client_config_for(&server, &dir);
    send(server.addr(), &config, 30).await;
    server.vakt.shutdown().await;
    let audit = dir.join("audit.log");
    let original = lines_of(&audit);
    assert_eq!(original.len(), 30);
    let (code, stdout, stderr) = verify_cli(&dir, &[&audit]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("vakt.audit/2 epoch 1 key dev: seq 1 to 30"),
        "{stdout}"
    );

    // (a) One line edited (its status): verify names its seq.
    let mut edited = original.clone();
    edited[11] = edited[11].replace("\"status\":200", "\"status\":500");
    assert_ne!(edited[11], original[11]);
    save(&audit, &edited);
    let (code, stdout, _) = verify_cli(&dir, &[&audit]);
    assert_eq!(code, 1, "tampered: exit 1");
    assert!(stdout.contains("seq 12: edited"), "{stdout}");
    // The same as JSON, for a SIEM or a script.
    let mut args = verify_args(
        &dir,
        &[&audit],
        Some(&dir.join(vakt::dev::mesh::DEV_CHECKPOINT_FILE)),
    );
    args.extend(["--output".into(), "json".into()]);
    let (code, stdout, _) = run_vakt_owned(&args);
    assert_eq!(code, 1);
    let json: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["intact"], false);
    let edit = json["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "edited")
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(
        (edit["first_seq"].as_u64(), edit["problem"].as_bool()),
        (Some(12), Some(true))
    );
    // Unreadable input is told apart from tampering: exit 2.
    let missing = dir.join("no-such-audit.log");
    let (code, _, stderr) = verify_cli(&dir, &[&missing]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no-such-audit.log"), "{stderr}");

    // (b) The tail cut at a line boundary after the shutdown checkpoint (seq 30).
    save(&audit, &original[..25]);
    let (code, stdout, _) = verify_cli(&dir, &[&audit]);
    assert_ne!(code, 0);
    assert!(stdout.contains("seq 26 to 30: truncated_tail"), "{stdout}");

    // (f) A wrong key.
    save(&audit, &original);
    let wrong = dir.join("wrong.key");
    std::fs::write(&wrong, "w".repeat(32)).unwrap();
    let (code, stdout, stderr) = run_vakt(&[
        "audit",
        "verify",
        "--key",
        wrong.to_str().unwrap(),
        audit.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(
        stdout.contains("wrong_key") && stdout.contains("wrong key file"),
        "{stdout}"
    );
    assert!(stderr.contains("seq 1 to 30"), "{stderr}");
    assert!(
        !stdout.contains(&"w".repeat(32)),
        "no key material in the output"
    );
    // No key at all: not verified, not intact.
    let (code, stdout, _) = run_vakt(&["audit", "verify", audit.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(stdout.contains("unknown_key"), "{stdout}");

    // (g) A vakt.audit/1 file (SHA-256 links, as vakt wrote before keyed chains).
    let v1 = dir.join("audit-v1.log");
    let mut prev = vakt::audit::ChainHash::ZERO;
    let mut v1_lines = Vec::new();
    for seq in 1..=5u64 {
        let mut e = vakt::audit::AuditEvent::new(
            vakt::audit::Direction::Inbound,
            vakt::audit::Decision::Allow,
            vakt::audit::Label::new("rule_matched").unwrap(),
        );
        (e.seq, e.prev) = (seq, prev);
        let mut line = String::new();
        e.write_json(&mut line);
        let line = line
            .replacen("vakt.audit/2", "vakt.audit/1", 1)
            .replacen(",\"epoch\":0", "", 1);
        prev = vakt::audit::line_hash(line.as_bytes());
        v1_lines.push(line);
    }
    save(&v1, &v1_lines);
    let (code, stdout, stderr) = run_vakt(&["audit", "verify", v1.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("intact: 5 events"), "{stdout}");
    assert!(stdout.contains("schema: vakt.audit/1"), "{stdout}");
}

/// (d) A normal restart resumes the epoch; (c) after the audit files are deleted the restarted
/// sidecar opens epoch 2, whose first event names the gap, and counts the break.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_resume_the_epoch_or_name_the_gap() {
    let server = server(&["web"], "").await;
    let dir = server.dir.clone();
    let app = server.app.addr;
    let config = web_client_config_for(&server, &dir);
    send(server.addr(), &config, 5).await;
    server.vakt.shutdown().await;
    let audit = dir.join("audit.log");

    // (d) Normal restart.
    let vakt = sidecar_on(&dir, app, "    fsync: never\n").await;
    send(vakt.inbound_addr.unwrap(), &config, 5).await;
    let breaks = |text: &str| {
        metric_sum(
            text,
            "vakt_audit_chain_breaks_total",
            &[("reason", "files_missing")],
        )
    };
    vakt.shutdown().await;
    let (code, stdout, stderr) = verify_cli(&dir, &[&audit]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("vakt.audit/2 epoch 1 key dev: seq 1 to 10 (10 events)"),
        "{stdout}"
    );
    assert!(!stdout.contains("epoch 2"), "{stdout}");

    // (c) The audit files deleted while the sidecar was down. A `vakt run` child, so that its
    // gauges are its own and not those of other sidecars in this test process.
    std::fs::remove_file(&audit).unwrap();
    let (inbound, admin) = (free_port(), free_port());
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let yaml = vakt::dev::mesh::base_config_yaml(&dir, TD)
        .replace("127.0.0.1:0", &admin.to_string())
        + &format!(
            "inbound:\n  listen: 127.0.0.1:{inbound}\n  app: {app}\n  policy: {}\n",
            dir.join("policy.yaml").display()
        );
    let mut child = spawn_vakt("restarted", &dir, &yaml, admin);
    wait_ready(&child).await;
    send(format!("127.0.0.1:{inbound}").parse().unwrap(), &config, 3).await;
    let text = metrics_text(admin).await;
    assert_eq!(breaks(&text), 1.0, "{text}");
    // The gauge is mirrored once a second.
    let mut head = 0.0;
    for _ in 0..30 {
        head = metric_sum(&metrics_text(admin).await, "vakt_audit_chain_head_seq", &[]);
        if head >= 14.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop(&mut child).await;
    let lines = lines_of(&audit);
    let first: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["reason"], "chain_epoch_started", "{first}");
    assert_eq!(
        (first["epoch"].as_u64(), first["seq"].as_u64()),
        (Some(2), Some(11))
    );
    assert_eq!(first["chain"]["epoch_start"], "files_missing");
    assert_eq!(first["chain"]["prev_epoch"], 1);
    assert_eq!(first["chain"]["checkpoint_seq"], 10);
    assert_eq!(head, 14.0, "head gauge");
    let (code, stdout, _) = verify_cli(&dir, &[&audit]);
    assert_ne!(code, 0, "a break is a problem: {stdout}");
    assert!(
        stdout.contains("epoch: epoch 2 starts at seq 11 (files_missing): previous epoch 1, last checkpointed seq 10"),
        "{stdout}"
    );
    assert!(
        stdout.contains("vakt.audit/2 epoch 2 key dev: seq 11 to 14"),
        "{stdout}"
    );
}

/// (e) Rotation deleting the oldest file writes a record into the trail: verify reports the
/// rotated-out range and passes; a file deleted by hand is a missing start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_is_recorded_and_told_apart_from_deletion() {
    let server = server(&["web"], "").await;
    let dir = server.dir.clone();
    let app = server.app.addr;
    let config = web_client_config_for(&server, &dir);
    server.vakt.shutdown().await;
    std::fs::remove_file(dir.join("audit.log")).ok();
    std::fs::remove_file(dir.join(vakt::dev::mesh::DEV_CHECKPOINT_FILE)).ok();
    let vakt = sidecar_on(
        &dir,
        app,
        "    fsync: never\n    max_bytes: 4096\n    max_files: 2\n",
    )
    .await;
    send(vakt.inbound_addr.unwrap(), &config, 40).await;
    vakt.shutdown().await;
    let audit = dir.join("audit.log");
    let (r2, r1) = (dir.join("audit.log.2"), dir.join("audit.log.1"));
    assert!(r2.exists(), "rotation kept two files");
    let all: Vec<String> = [&r2, &r1, &audit]
        .iter()
        .flat_map(|f| lines_of(f))
        .collect();
    assert!(
        all.iter()
            .any(|l| l.contains("\"reason\":\"audit_file_rotated_out\"")),
        "no rotation record"
    );
    let (code, stdout, stderr) = verify_cli(&dir, &[&r2, &r1, &audit]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains(": rotated_out: rotated out"), "{stdout}");
    // The oldest kept file deleted by hand: no record covers it.
    let (code, stdout, _) = verify_cli(&dir, &[&r1, &audit]);
    assert_ne!(code, 0);
    assert!(stdout.contains("missing_start"), "{stdout}");
}

/// A configured chain key that cannot be read stops the start (never an unkeyed trail instead),
/// and `vakt check` refuses a file trail without a key.
#[tokio::test]
async fn a_missing_chain_key_fails_closed() {
    let server = server(&["web"], "").await;
    let dir = server.dir.clone();
    server.vakt.shutdown().await;
    let base = vakt::dev::mesh::base_config_yaml(&dir, TD)
        + &format!(
            "inbound:\n  listen: 127.0.0.1:0\n  app: {}\n  policy: {}\n",
            server.app.addr,
            dir.join("policy.yaml").display()
        );
    let missing = base.replace(vakt::dev::mesh::DEV_CHAIN_KEY_FILE, "no-such.key");
    let err = vakt::app::App::start(vakt::config::Config::from_yaml(&missing).unwrap())
        .await
        .err()
        .expect("started without its chain key");
    assert!(err.to_string().contains("audit chain key"), "{err}");
    let keyless: String = base
        .lines()
        .filter(|l| !l.contains("chain_key") && !l.contains("key_file") && !l.contains("key_id"))
        .map(|l| format!("{l}\n"))
        .collect();
    let config = dir.join("keyless.yaml");
    std::fs::write(&config, keyless).unwrap();
    let (code, _, stderr) = run_vakt(&["check", "--config", config.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(stderr.contains("audit.chain_key"), "{stderr}");
}

/// The `decision_id` of a denial body finds its audit event with `vakt audit show`; an id no
/// file has exits 1, something that is not an id exits 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denials_decision_id_finds_its_event() {
    let server = server(&["web"], "").await;
    let dir = server.dir.clone();
    let batch_dir = server
        .pki
        .workload("batch-show", &server.pki.spiffe_id("shop", "batch"))
        .unwrap();
    let batch = raw_client_config(Some(&batch_dir), &dir, &server.id, &[b"http/1.1"]);
    let tls = mtls_connect(server.addr(), batch).await.unwrap();
    let response = h1_send(tls, get("/refused/here", "orders.shop"))
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let body: Value = serde_json::from_str(&body_string(response).await).unwrap();
    let id = body["decision_id"].as_str().unwrap().to_owned();
    let audit = dir.join("audit.log");
    wait_for_event(&audit, |e| e["id"] == id.as_str()).await;

    let (code, stdout, stderr) = run_vakt(&["audit", "show", &id, audit.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let (place, event) = stdout.split_once('\n').unwrap();
    assert!(
        place.starts_with(&format!("{}:", audit.display())),
        "{place}"
    );
    let event: Value = serde_json::from_str(event).unwrap();
    assert_eq!(event["id"], id.as_str());
    assert_eq!(event["decision"], "deny");
    assert_eq!(event["reason"], "peer_not_allowed");
    assert_eq!(event["path"], "/refused/here");

    let other = uuid::Uuid::new_v4().to_string();
    let (code, _, stderr) = run_vakt(&["audit", "show", &other, audit.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(&other), "{stderr}");
    let (code, _, stderr) = run_vakt(&["audit", "show", "not-an-id", audit.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
}

/// With `sink: stdout` the audit lines share the container's output with the logs (stderr,
/// merged by the runtime). Lines that begin `{"schema":"vakt.audit/` are events, lines that begin
/// `{"type":"vakt.audit.checkpoint"` checkpoints, and `vakt audit verify -` reads such a mixed
/// stream: intact as written, tampered after one edit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_container_stream_is_verified_from_stdin() {
    let workload = ChildWorkload::new("web-stdout").await;
    let (yaml, inbound, admin) = workload.child_config();
    let audit_path = workload.dir.join("audit.log").display().to_string();
    let yaml = yaml
        .replace(
            &format!("  sink: file\n  file:\n    path: {audit_path}\n    fsync: never\n"),
            "  sink: stdout\n",
        )
        .replace("checkpoint_stdout: false", "checkpoint_stdout: true");
    assert!(yaml.contains("sink: stdout"), "{yaml}");
    let mut child = spawn_vakt_with_env(
        "stdout-sink",
        &workload.dir,
        &yaml,
        admin,
        &[("RUST_LOG", "info")],
    );
    wait_ready(&child).await;
    for _ in 0..5 {
        let tls = mtls_connect(inbound, workload.web_h1.clone())
            .await
            .unwrap();
        assert_eq!(
            h1_send(tls, get("/x", "orders.shop"))
                .await
                .unwrap()
                .status(),
            200
        );
    }
    stop(&mut child).await;
    let out = std::fs::read_to_string(&child.stdout).unwrap();
    let err = std::fs::read_to_string(&child.stderr).unwrap();
    // As a container runtime merges them: log lines between the audit lines.
    let mut mixed = String::new();
    let mut logs = err.lines();
    for line in out.lines() {
        if let Some(log) = logs.next() {
            mixed.push_str(log);
            mixed.push('\n');
        }
        mixed.push_str(line);
        mixed.push('\n');
    }
    for log in logs {
        mixed.push_str(log);
        mixed.push('\n');
    }
    let key = workload.dir.join(vakt::dev::mesh::DEV_CHAIN_KEY_FILE);
    let verify = |input: &str| {
        use std::io::Write as _;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vakt"))
            .args(["audit", "verify", "--key"])
            .arg(&key)
            .arg("-")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = verify(&mixed);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("intact: 5 events"), "{stdout}");
    assert!(stderr.contains("stdin: 5 audit line(s)"), "{stderr}");
    assert!(
        !stderr.contains(" 0 other line(s)"),
        "no log line was mixed in: {stderr}"
    );
    // One event edited in the stream: tampered.
    let tampered = mixed.replacen("\"status\":200", "\"status\":500", 1);
    let (code, stdout, _) = verify(&tampered);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("edited"), "{stdout}");
}

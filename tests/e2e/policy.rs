//! The policy on the real request path: canonical paths end to end, dry-run, rate limits,
//! hot reload under load, denial bodies, and the policy CLI.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn set_policy(server: &Server, yaml: &str, result: &str) {
    server.set_policy(yaml, result).await;
}

/// One raw HTTP/1.1 request on a fresh mTLS connection; returns the status line and body.
async fn raw_get(server: &Server, config: Arc<rustls::ClientConfig>, target: &[u8]) -> String {
    let mut tls = mtls_connect(server.addr(), config).await.unwrap();
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(target);
    request.extend_from_slice(b" HTTP/1.1\r\nHost: orders.shop\r\nConnection: close\r\n\r\n");
    tls.write_all(&request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn unescape(field: &str) -> Vec<u8> {
    // `\xNN` is a raw byte; `{N*x}` is x repeated N times (see the corpus header).
    let mut out = Vec::new();
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"\\x") && i + 4 <= bytes.len() {
            out.push(u8::from_str_radix(&field[i + 2..i + 4], 16).unwrap());
            i += 4;
        } else if bytes[i] == b'{'
            && let Some(end) = field[i..].find('}')
            && let Some((n, x)) = field[i + 1..i + end].split_once('*')
            && let Ok(n) = n.parse::<usize>()
        {
            for _ in 0..n {
                out.extend_from_slice(x.as_bytes());
            }
            i += end + 1;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_receives_exactly_the_canonical_path_for_every_vector() {
    let server = server(&["web"], "").await;
    let config = web_client_config(&server);
    let corpus = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/path_vectors.tsv"
    ))
    .unwrap();
    let (mut accepted, mut refused) = (0, 0);
    for line in corpus.lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (raw, expected) = line.split_once('\t').unwrap();
        let raw = unescape(raw);
        let seen_before = server.app.seen().len();
        // Rows that are not an origin-form request target (empty, `*`, absolute-form, or with
        // bytes that end the request line) are hyper's to parse, not the canonicaliser's: the
        // unit tests cover them; on the wire hyper splits absolute-form into authority + path.
        if !raw.starts_with(b"/")
            || raw.contains(&b' ')
            || raw.contains(&b'\r')
            || raw.contains(&b'\n')
        {
            continue;
        }
        // On the wire, `?` starts the query (forwarded untouched, not matched) and hyper's URI
        // parser drops a fragment (`#...`) before vakt sees the target; vakt decides on, and
        // forwards, the path part. The unit tests hold the canonicaliser's own verdicts on those.
        let target = match raw.iter().position(|b| *b == b'#') {
            Some(hash) => &raw[..hash],
            None => &raw[..],
        };
        let expected = match target.iter().position(|b| *b == b'?') {
            _ if target.len() == raw.len() && !raw.contains(&b'?') => expected.to_owned(),
            split => {
                let (path, query) = match split {
                    Some(q) => (&target[..q], Some(&target[q..])),
                    None => (target, None),
                };
                match vakt::hygiene::path::canonicalize_bytes(path) {
                    Ok(c) => format!(
                        "{}{}",
                        c.as_str(),
                        query
                            .map(|q| String::from_utf8_lossy(q).into_owned())
                            .unwrap_or_default()
                    ),
                    Err(e) => format!("!{}", e.reason_code()),
                }
            }
        };
        let expected = expected.as_str();
        let answer = raw_get(&server, config.clone(), &raw).await;
        let status = answer.split(' ').nth(1).unwrap_or("none").to_owned();
        let label = String::from_utf8_lossy(&raw).into_owned();
        if let Some(reason) = expected.strip_prefix('!') {
            refused += 1;
            // vakt answers 400 invalid_path; bytes hyper cannot parse are refused by hyper (400).
            assert_eq!(status, "400", "{label} ({reason}): {answer}");
            assert_eq!(
                server.app.seen().len(),
                seen_before,
                "{label} reached the app"
            );
        } else {
            accepted += 1;
            assert_eq!(status, "200", "{label}: {answer}");
            let seen = server.app.seen();
            assert_eq!(seen.len(), seen_before + 1, "{label}");
            let expected = if raw.contains(&b'?') || raw.contains(&b'#') {
                expected.to_owned()
            } else {
                String::from_utf8(unescape(expected)).unwrap()
            };
            assert_eq!(seen.last().unwrap().path_and_query, expected, "{label}");
        }
    }
    assert!(
        accepted >= 40 && refused >= 40,
        "accepted {accepted}, refused {refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_is_forwarded_untouched_and_not_matched() {
    let server = server(&["web"], "").await;
    let answer = raw_get(
        &server,
        web_client_config(&server),
        b"/a/./b/../c?x=%2F..%2f&y=/../z",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        server.app.seen().last().unwrap().path_and_query,
        "/a/c?x=%2F..%2f&y=/../z"
    );
}

const POLICY: &str = "routes:
  - id: orders-read
    methods: [GET]
    path: /orders/{id}
    allow:
      - peers: [spiffe://test.vakt.local/ns/shop/sa/web]
  - id: orders-write
    methods: [POST]
    path: /orders/{id}
    mode: dry-run
    allow:
      - peers: [spiffe://test.vakt.local/ns/shop/sa/admin]
  - id: limited
    methods: [GET]
    path: /limited/**
    rate_limit: { per_second: 1, burst: 2 }
    allow:
      - peers: [spiffe://test.vakt.local/ns/shop/sa/*]
";

async fn policy_server() -> (Server, App, App) {
    let server = server(&["web"], "").await;
    set_policy(&server, POLICY, "success").await;
    let web = client_sidecar(&server.pki, "web", server.addr(), &server.id).await;
    let batch = client_sidecar(&server.pki, "batch", server.addr(), &server.id).await;
    (server, web, batch)
}

use vakt::app::App;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_carry_a_decision_id_and_the_reason_code_only() {
    let (server, web, batch) = policy_server().await;
    let cases = [
        (&web, "/orders/1", 200, None),
        (&batch, "/orders/1", 403, Some("peer_not_allowed")),
        (&web, "/admin", 403, Some("no_route")),
        (&web, "/orders", 403, Some("no_route")),
        (&web, "/orders/1/../../admin", 403, Some("no_route")),
        (&web, "/orders/../../admin", 400, Some("invalid_path")),
        (&web, "/orders/%2e%2e/admin", 403, Some("no_route")),
        (&web, "/orders%2F1", 400, Some("invalid_path")),
    ];
    for (client, path, status, reason) in cases {
        let response = plain_send(client.outbound_addr.unwrap(), get(path, "orders.shop")).await;
        assert_eq!(response.status(), status, "{path}");
        let body = body_string(response).await;
        if let Some(reason) = reason {
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(json["error"], reason, "{path}");
            assert_eq!(json["decision_id"].as_str().unwrap().len(), 36, "{body}");
            // No policy internals: no route ids, no rules, no peer lists.
            for internal in [
                "orders-read",
                "spiffe://",
                "peers",
                "rule_matched",
                "/orders/{id}",
            ] {
                assert!(!body.contains(internal), "{path}: {body}");
            }
        }
    }
    let seen: Vec<String> = server
        .app
        .seen()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect();
    assert_eq!(seen, vec!["/orders/1".to_owned()]);
    let text = metrics_text(server.vakt.admin_addr).await;
    assert!(
        metric_sum(
            &text,
            "vakt_policy_decisions_total",
            &[("route", "orders-read"), ("decision", "allow")]
        ) >= 1.0
    );
    assert!(
        metric_sum(
            &text,
            "vakt_policy_decisions_total",
            &[
                ("route", "orders-read"),
                ("decision", "deny"),
                ("reason", "peer_not_allowed")
            ]
        ) >= 1.0
    );
    assert!(
        metric_sum(
            &text,
            "vakt_policy_decisions_total",
            &[("route", "none"), ("reason", "no_route")]
        ) >= 2.0
    );
}

/// A refusal of a HEAD request has no content: over HTTP/2, straight to the server and through
/// the mesh, the client gets the status cleanly (DATA after a HEAD response would be a protocol
/// error), and the decision is the same as for GET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_head_requests_get_a_status_without_content_over_http2() {
    let (server, web, batch) = policy_server().await;
    let h2_config = {
        let dir = server
            .pki
            .workload("web-h2", &server.pki.spiffe_id("shop", "web"))
            .unwrap();
        raw_client_config(Some(&dir), &server.dir, &server.id, &[b"h2"])
    };
    let head = |uri: &str| {
        http::Request::head(uri)
            .header(http::header::HOST, "orders.shop")
            .body(TestBody::default())
            .unwrap()
    };
    for (uri, status) in [
        ("https://orders.shop/admin", 403),
        ("https://orders.shop/orders%2F1", 400),
        ("https://orders.shop/orders/1", 200),
    ] {
        let tls = mtls_connect(server.addr(), h2_config.clone())
            .await
            .unwrap();
        let response = h2_send(tls, head(uri)).await.unwrap();
        assert_eq!(response.status(), status, "{uri}");
        assert_eq!(body_string(response).await, "", "{uri}");
    }
    // Through the mesh: the app speaks HTTP/2 (prior knowledge) to its sidecar.
    for (client, path, status) in [(&batch, "/orders/1", 403), (&web, "/admin", 403)] {
        let tcp = tokio::net::TcpStream::connect(client.outbound_addr.unwrap())
            .await
            .unwrap();
        let response = h2_send(tcp, head(&format!("http://orders.shop{path}")))
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{path}");
        assert_eq!(body_string(response).await, "", "{path}");
    }
}

/// The most specific route decides: a method it does not accept is answered 405 with its
/// methods, never granted by a wildcard route; HEAD is authorised as GET; a path that misses a
/// specific route only by case or a trailing slash is refused, not left to the wildcard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn specific_routes_are_not_bypassed_through_wildcards() {
    let server = server(&["web"], "").await;
    set_policy(
        &server,
        "routes:
  - id: records-read
    methods: [GET]
    path: /records/{id}
    allow:
      - peers: [spiffe://test.vakt.local/ns/shop/sa/web]
  - id: admin
    methods: [GET]
    path: /admin
    allow:
      - peers: [spiffe://test.vakt.local/ns/shop/sa/ops]
  - id: everything-else
    methods: [GET, DELETE]
    path: /**
    public: true
",
        "success",
    )
    .await;
    let web = client_sidecar(&server.pki, "web", server.addr(), &server.id).await;
    let send = |method: http::Method, path: &str| {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "orders.shop")
            .body(TestBody::default())
            .unwrap();
        plain_send(web.outbound_addr.unwrap(), req)
    };

    let refused = send(http::Method::DELETE, "/records/1").await;
    assert_eq!(refused.status(), 405);
    assert_eq!(refused.headers()["allow"], "GET, HEAD");
    let body = body_string(refused).await;
    assert!(body.contains("method_not_allowed"), "{body}");

    let head = send(http::Method::HEAD, "/records/1").await;
    assert_eq!(head.status(), 200);

    for near_miss in ["/Admin", "/admin/", "/ADMIN"] {
        let response = send(http::Method::GET, near_miss).await;
        assert_eq!(response.status(), 403, "{near_miss}");
        let body = body_string(response).await;
        assert!(body.contains("path_near_miss"), "{near_miss}: {body}");
    }
    // The wildcard still serves what no specific route covers.
    assert_eq!(send(http::Method::GET, "/elsewhere").await.status(), 200);
    assert_eq!(send(http::Method::DELETE, "/elsewhere").await.status(), 200);

    let seen: Vec<(String, String)> = server
        .app
        .seen()
        .into_iter()
        .map(|r| (r.method.to_string(), r.path_and_query))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("HEAD".to_owned(), "/records/1".to_owned()),
            ("GET".to_owned(), "/elsewhere".to_owned()),
            ("DELETE".to_owned(), "/elsewhere".to_owned()),
        ]
    );
    let text = metrics_text(server.vakt.admin_addr).await;
    for reason in ["method_not_allowed", "path_near_miss"] {
        assert!(
            metric_sum(
                &text,
                "vakt_requests_denied_total",
                &[("direction", "inbound"), ("reason", reason)]
            ) >= 1.0,
            "{reason}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_lets_traffic_through_and_records_the_would_deny() {
    let (server, web, _batch) = policy_server().await;
    let labels = [
        ("route", "orders-write"),
        ("decision", "would_deny"),
        ("reason", "peer_not_allowed"),
    ];
    let before = metric_sum(
        &metrics_text(server.vakt.admin_addr).await,
        "vakt_policy_decisions_total",
        &labels,
    );
    let request = http::Request::post("/orders/7")
        .header("host", "orders.shop")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    let response = plain_send(web.outbound_addr.unwrap(), request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        server.app.seen().last().unwrap().path_and_query,
        "/orders/7"
    );
    wait_for_metric(
        server.vakt.admin_addr,
        "vakt_policy_decisions_total",
        &labels,
        before + 1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after_per_peer() {
    let (server, web, batch) = policy_server().await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let response =
            plain_send(web.outbound_addr.unwrap(), get("/limited/x", "orders.shop")).await;
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            let retry = response
                .headers()
                .get("retry-after")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            assert!(retry.parse::<u64>().unwrap() >= 1, "{retry}");
            let json: serde_json::Value =
                serde_json::from_str(&body_string(response).await).unwrap();
            assert_eq!(json["error"], "rate_limited");
        }
    }
    // Burst of 2, refill 1/s: the first two pass, then 429 (a refill may land between).
    assert_eq!(&statuses[..2], &[200, 200]);
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    // Another peer has its own budget.
    let response = plain_send(
        batch.outbound_addr.unwrap(),
        get("/limited/x", "orders.shop"),
    )
    .await;
    assert_eq!(response.status(), 200);
    let text = metrics_text(server.vakt.admin_addr).await;
    assert!(metric_sum(&text, "vakt_rate_limited_total", &[("route", "limited")]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_drops_nothing_and_a_bad_policy_is_refused() {
    let (server, web, _batch) = policy_server().await;
    let addr = web.outbound_addr.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let traffic = {
        let (stop, failures, done) = (stop.clone(), failures.clone(), done.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let status = plain_send(addr, get("/orders/1", "orders.shop"))
                    .await
                    .status();
                if status == 200 {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        plain_send(addr, get("/reports/1", "orders.shop"))
            .await
            .status(),
        403
    );

    // A valid change takes effect.
    let extended = format!(
        "{POLICY}  - id: reports\n    methods: [GET]\n    path: /reports/{{id}}\n    allow:\n      - peers: [spiffe://test.vakt.local/ns/shop/sa/web]\n"
    );
    set_policy(&server, &extended, "success").await;
    assert_eq!(
        plain_send(addr, get("/reports/1", "orders.shop"))
            .await
            .status(),
        200
    );

    // An invalid one is rejected; the running policy keeps answering; still ready.
    set_policy(
        &server,
        "routes:\n  - id: everyone\n    methods: [GET]\n    path: /**\n    allow:\n      - {}\n",
        "failure",
    )
    .await;
    assert_eq!(
        plain_send(addr, get("/reports/1", "orders.shop"))
            .await
            .status(),
        200
    );
    assert_eq!(
        plain_send(addr, get("/admin", "orders.shop"))
            .await
            .status(),
        403
    );
    set_policy(&server, "routes: [", "failure").await;
    assert_eq!(
        plain_send(addr, get("/reports/1", "orders.shop"))
            .await
            .status(),
        200
    );
    assert_eq!(
        plain_send(server.vakt.admin_addr, get("/ready", "admin"))
            .await
            .status(),
        200
    );

    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert!(done.load(Ordering::Relaxed) > 10);
}

#[test]
fn policy_cli_check_explain_and_test() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = tmp.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let p = policy.to_str().unwrap();

    let (code, stdout, stderr) =
        run_vakt(&["check", "--policy", p, "--trust-domain", "test.vakt.local"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("OK (3 route(s))"), "{stdout}");
    let (code, _, stderr) = run_vakt(&["check", "--policy", p, "--trust-domain", "cluster.local"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("outside the accepted trust domains"),
        "{stderr}"
    );

    let broken = tmp.path().join("broken.yaml");
    std::fs::write(
        &broken,
        format!("{POLICY}  - id: x\n    methods: [GET]\n    path: /y\n    alow: []\n"),
    )
    .unwrap();
    let (code, _, stderr) = run_vakt(&["check", "--policy", broken.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("unknown field `alow`") && stderr.contains("line 22"),
        "{stderr}"
    );

    let (code, stdout, _) = run_vakt(&[
        "explain",
        "--policy",
        p,
        "--method",
        "get",
        "--path",
        "/orders/./42",
        "--peer",
        "spiffe://test.vakt.local/ns/shop/sa/batch",
    ]);
    assert_eq!(code, 1, "a denial exits 1: {stdout}");
    for expected in [
        "canonical: /orders/42",
        "route:     orders-read (GET /orders/{id}, mode enforce)",
        "param:   id = 42",
        "peer:    no rule admits it: refused before any token check (peer_not_allowed)",
        "rule 0:  does not hold (peer_not_allowed)",
        "did not hold  peers [spiffe://test.vakt.local/ns/shop/sa/web]: spiffe://test.vakt.local/ns/shop/sa/batch is not one of them",
        "decision:  DENY (peer_not_allowed) — answered 403",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing in:\n{stdout}"
        );
    }
    for jargon in ["Some(", "Required", "None"] {
        assert!(
            !stdout.contains(jargon),
            "debug text {jargon:?} in:\n{stdout}"
        );
    }
    // Exit codes: 0 allowed, 3 let through by a dry-run route that would deny it, 2 bad input;
    // --output json carries the same account.
    let explain = |method: &str, path: &str, sa: &str, json: bool| {
        let peer = format!("spiffe://test.vakt.local/ns/shop/sa/{sa}");
        let mut args = vec![
            "explain", "--policy", p, "--method", method, "--path", path, "--peer", &peer,
        ];
        if json {
            args.extend(["--output", "json"]);
        }
        run_vakt(&args)
    };
    let (code, stdout, _) = explain("GET", "/orders/7", "web", false);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("decision:  ALLOW (rule_matched)"),
        "{stdout}"
    );
    let (code, stdout, _) = explain("POST", "/orders/7", "web", false);
    assert_eq!(code, 3, "{stdout}");
    assert!(
        stdout.contains("decision:  WOULD_DENY (peer_not_allowed) — dry-run: it goes through"),
        "{stdout}"
    );
    let (code, stdout, stderr) = explain("GET", "/orders/7", "batch", true);
    assert_eq!(code, 1, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["decision"]["outcome"], "deny");
    assert_eq!(json["decision"]["reason"], "peer_not_allowed");
    assert_eq!(json["decision"]["status"], 403);
    assert_eq!(json["route"]["id"], "orders-read");
    assert_eq!(json["route"]["peer_admitted"], false);
    assert_eq!(
        json["route"]["params"][0],
        serde_json::json!({"name": "id", "value": "7"})
    );
    assert_eq!(json["rules"][0]["conditions"][0]["held"], false);
    let (code, _, stderr) = explain("GET", "/orders/7", "batch", false);
    assert_eq!(code, 1, "{stderr}");
    let (code, _, stderr) = run_vakt(&[
        "explain",
        "--policy",
        p,
        "--path",
        "/x",
        "--peer",
        "not-spiffe",
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--peer"), "{stderr}");

    let tests = tmp.path().join("policy.test.yaml");
    std::fs::write(
        &tests,
        "policy: policy.yaml\ncases:\n  - name: web reads\n    request: { method: GET, path: /orders/1, peer: spiffe://test.vakt.local/ns/shop/sa/web }\n    expect: { decision: allow, route: orders-read }\n  - name: wrong on purpose\n    request: { method: GET, path: /orders/1, peer: spiffe://test.vakt.local/ns/shop/sa/batch }\n    expect: { decision: allow }\n",
    )
    .unwrap();
    let t = tests.to_str().unwrap();
    let (code, stdout, _) = run_vakt(&["test", t]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("ok    web reads"), "{stdout}");
    // A failure says where the case is, what was expected and what came, reason and route
    // included, and how the decision came about.
    for expected in [
        format!("FAIL  wrong on purpose ({t}:6): decision deny (expected allow)"),
        "      expected: allow (any reason), route any".to_owned(),
        "      actual:   deny (peer_not_allowed), route orders-read".to_owned(),
        "      |   rule 0:  does not hold (peer_not_allowed)".to_owned(),
        "1 passed, 1 failed".to_owned(),
        // Two of the three routes were never reached by a case.
        "routes no case reached: orders-write, limited".to_owned(),
    ] {
        assert!(
            stdout.contains(&expected),
            "{expected:?} missing in:\n{stdout}"
        );
    }
    // --run picks cases by name; coverage is then not claimed.
    let (code, stdout, _) = run_vakt(&["test", t, "--run", "web"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("1 passed, 0 failed, 1 not run (--run)"),
        "{stdout}"
    );
    assert!(!stdout.contains("routes no case reached"), "{stdout}");
    // JSON and JUnit carry the same.
    let (code, stdout, _) = run_vakt(&["test", t, "--output", "json"]);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["cases"][1]["line"], 6);
    assert_eq!(report["cases"][1]["actual"]["reason"], "peer_not_allowed");
    assert_eq!(
        report["routes_not_covered"],
        serde_json::json!(["orders-write", "limited"])
    );
    let (code, stdout, _) = run_vakt(&["test", t, "--output", "junit"]);
    assert_eq!(code, 1);
    assert!(
        stdout.contains("<testsuite name=") && stdout.contains("tests=\"2\" failures=\"1\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("name=\"wrong on purpose\"")
            && stdout.contains("line=\"6\"><failure message=\"decision deny (expected allow)\">"),
        "{stdout}"
    );

    // Expectations no decision can meet are mistakes in the test file: exit 2, naming the case.
    for (expect, message) in [
        (
            "{ decision: denied }",
            "expect.decision \"denied\" is not allow, deny or would_deny",
        ),
        (
            "{ decision: deny, reason: peer_denied }",
            "expect.reason \"peer_denied\" is not a reason vakt gives",
        ),
        (
            "{ decision: deny, route: order-read }",
            "expect.route \"order-read\" is not a route of",
        ),
    ] {
        let bad = tmp.path().join("bad.test.yaml");
        std::fs::write(
            &bad,
            format!("policy: policy.yaml\ncases:\n  - name: typo\n    request: {{ method: GET, path: /orders/1 }}\n    expect: {expect}\n"),
        )
        .unwrap();
        let (code, stdout, stderr) = run_vakt(&["test", bad.to_str().unwrap()]);
        assert_eq!(code, 2, "{expect}: {stdout}{stderr}");
        assert!(
            stderr.contains(&format!("{}:3: case \"typo\": {message}", bad.display())),
            "{expect}: {stderr}"
        );
    }
}

#[test]
fn the_example_policy_has_a_matching_json_schema() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/policy.schema.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(schema["additionalProperties"], false);
    let route = &schema["$defs"]["route"];
    assert_eq!(route["additionalProperties"], false);
    for key in [
        "id",
        "methods",
        "path",
        "host",
        "mode",
        "public",
        "allow",
        "rate_limit",
    ] {
        assert!(
            route["properties"].get(key).is_some(),
            "schema lacks route.{key}"
        );
    }
    assert_eq!(schema["$defs"]["rule"]["additionalProperties"], false);
    for key in [
        "peers",
        "issuers",
        "clients",
        "scopes_all",
        "scopes_any",
        "min_loa",
        "amr_any",
        "max_auth_age",
        "claims",
        "bind",
    ] {
        assert!(
            schema["$defs"]["rule"]["properties"].get(key).is_some(),
            "schema lacks rule.{key}"
        );
    }
}

/// `vakt check` warns (and still passes) where a wildcard route lists methods or admits peers
/// that a more specific route on the same paths withholds.
#[test]
fn check_warns_where_a_wildcard_grants_what_a_specific_route_withholds() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = tmp.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "path_near_miss: fall_back
routes:
  - id: admin
    methods: [GET]
    path: /admin
    allow:
      - peers: [spiffe://test.vakt.local/ns/ops/sa/admin]
  - id: catch-all
    methods: [GET, POST]
    path: /**
    allow:
      - peers: [spiffe://test.vakt.local/ns/shop/sa/web]
",
    )
    .unwrap();
    let p = policy.to_str().unwrap();
    let (code, stdout, stderr) =
        run_vakt(&["check", "--policy", p, "--trust-domain", "test.vakt.local"]);
    assert_eq!(code, 0, "{stderr}");
    let warnings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with(&format!("{p}: warning[route-overlap]: ")))
        .collect();
    assert_eq!(
        warnings,
        [
            format!(
                "{p}: warning[route-overlap]: routes[1] (catch-all) /** lists POST but does not apply to the paths of routes[0] (admin) /admin: there those methods are answered 405 (method_not_allowed); add them to the specific route or narrow the wildcard; with path_near_miss: fall_back a near miss (letter case, trailing /) of those paths reaches catch-all and is granted them"
            ),
            format!(
                "{p}: warning[route-overlap]: with path_near_miss: fall_back a near miss (letter case, trailing /) of the paths of routes[0] (admin) /admin reaches routes[1] (catch-all) /**, which admits spiffe://test.vakt.local/ns/shop/sa/web for GET where admin does not"
            ),
        ],
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{p}: OK (2 route(s))")),
        "{stdout}"
    );
}

/// A broken policy or config is refused (exit 2) with one line that names the file, the line and
/// column, and the keys leading there, in plain words (not the parser's `expected sequence
/// start` or `invalid u32`, no `<input>`), followed by the lines where it stopped. YAML 1.1
/// booleans (`yes`, `on`, `y`) are refused rather than read as true.
#[test]
fn broken_files_are_refused_naming_file_line_and_key_in_plain_words() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str)] = &[
        (
            "version: 1\nroutes:\n  id: a\n",
            "line 3 column 3, routes: expected a list here",
            "3 |   id: a",
        ),
        (
            "version: 1\nroutes:\n  - id: a\n    methods: GET\n    path: /a\n    public: true\n",
            "line 4 column 14, routes[0].methods: expected a list here",
            "4 |     methods: GET",
        ),
        (
            "version: 1\nroutes:\n  - id: a\n    methods: [GET]\n    path: /a\n    public: yes\n",
            "line 6 column 13, routes[0].public: invalid boolean",
            "6 |     public: yes",
        ),
        (
            "version: 1\nroutes:\n  - id: a\n    methods: [GET]\n    path: /a\n    public: true\n  - id: b\n    methods: [GET]\n    path: /b\n    rate_limit: {per_second: -1, burst: 2}\n    allow:\n      - peers: [spiffe://cluster.local/ns/a/sa/b]\n",
            "line 10 column 30, routes[1].rate_limit.per_second: expected a whole number, 0 or more",
            "10 |     rate_limit: {per_second: -1, burst: 2}",
        ),
        (
            "version: 1\nroutes:\n  - id: a\n    methods: [GET]\n    path: /a\n    allow:\n      - peers: [spiffe://cluster.local/ns/a/sa/b]\n        min_loa: ultra\n",
            "line 8 column 18, routes[0].allow[0].min_loa: unknown variant `ultra`",
            "8 |         min_loa: ultra",
        ),
    ];
    for (i, (text, message, excerpt)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("policy-{i}.yaml"));
        std::fs::write(&file, text).unwrap();
        let (code, stdout, stderr) = run_vakt(&["check", "--policy", file.to_str().unwrap()]);
        assert_eq!(code, 2, "{text}\n{stdout}{stderr}");
        let first = stderr.lines().nth(1).unwrap_or_default();
        assert!(
            first.starts_with(&format!("{}: {message}", file.display())),
            "{stderr}"
        );
        assert!(
            stderr.contains(&format!("--> {}:", file.display())),
            "{stderr}"
        );
        assert!(stderr.contains(excerpt), "{stderr}");
        assert_eq!(stderr.matches("line ").count(), 1, "said once: {stderr}");
        for jargon in [
            "<input>",
            "expected sequence start",
            "invalid u32",
            "mapping start",
        ] {
            assert!(!stderr.contains(jargon), "{jargon}: {stderr}");
        }
        assert!(stdout.is_empty(), "{stdout}");
    }
    let config = dir.path().join("vakt.yaml");
    std::fs::write(
        &config,
        "identity:\n  trust_domain: cluster.local\n  cert: c.pem\n  key: k.pem\n  trust_bundle: b.pem\nruntime:\n  workers: 0\n",
    )
    .unwrap();
    let (code, _, stderr) = run_vakt(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}: line 7 column 3, runtime.workers: expected a whole number, 1 or more (not 0)",
            config.display()
        )),
        "{stderr}"
    );
}

/// The test-file schema knows every reason a decision can give and every key of the format,
/// and the example test file is an instance of it (checked with jsonschema where the chart
/// tools' Python has it).
#[test]
fn the_policy_test_format_has_a_matching_json_schema() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("docs/policy-test.schema.json")).unwrap(),
    )
    .unwrap();
    let reasons: Vec<&str> = schema["$defs"]["expect"]["properties"]["reason"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(reasons, vakt::policy::explain::reason_codes());
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&schema),
        ["cases", "issuers", "policy", "trust_domains"]
    );
    assert_eq!(
        keys(&schema["$defs"]["case"]),
        ["expect", "name", "request"]
    );
    assert_eq!(
        keys(&schema["$defs"]["request"]),
        ["claims", "host", "method", "path", "peer", "profile"]
    );
    assert_eq!(
        keys(&schema["$defs"]["expect"]),
        ["decision", "reason", "route"]
    );
    let python = std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
        .join(".cache/vakt-tools/venv/bin/python3");
    if !python.exists() {
        eprintln!("skipped the instance check: no {}", python.display());
        return;
    }
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import json,sys,yaml,jsonschema; jsonschema.Draft202012Validator(json.load(open(sys.argv[1]))).validate(yaml.safe_load(open(sys.argv[2])))",
        ])
        .arg(root.join("docs/policy-test.schema.json"))
        .arg(root.join("config/policy.test.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// docs/DECISIONS.md has a row for every policy reason, with the status vakt answers it with.
#[test]
fn every_policy_reason_is_documented_with_its_status() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/DECISIONS.md")).unwrap();
    for reason in vakt::policy::Reason::ALL {
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` |", reason.code())))
            .unwrap_or_else(|| panic!("docs/DECISIONS.md: no row for {}", reason.code()));
        let status: u16 = row.split('|').nth(2).unwrap().trim().parse().unwrap();
        // Step-up denials (a login too weak or too old) are answered 401 with what to log in
        // with (RFC 9470).
        let step_up = matches!(
            reason,
            vakt::policy::Reason::InsufficientAssurance
                | vakt::policy::Reason::AuthenticationTooOld
        );
        let answered = if reason.is_allow() {
            200
        } else {
            vakt::policy::explain::denial_status(reason, step_up)
        };
        assert_eq!(status, answered, "{row}");
    }
}

/// Lint warnings have stable codes: a peer pattern admitting every workload on a route that is
/// not public, a personal-looking path parameter no rule binds, trust domains not checked; the
/// placeholder route ids are errors. `--fail-on-warn` turns warnings into exit 1.
#[test]
fn lint_warns_with_codes_and_fail_on_warn_fails() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "version: 1\nroutes:\n  - id: journal\n    methods: [GET]\n    path: /patients/{fnr}/journal\n    allow:\n      - peers: [spiffe://cluster.local/ns/*/sa/*]\n        min_loa: high\n  - id: health\n    methods: [GET]\n    path: /health\n    public: true\n",
    )
    .unwrap();
    let p = policy.to_str().unwrap();
    let (code, stdout, stderr) =
        run_vakt(&["check", "--policy", p, "--issuer", "https://idp.example"]);
    assert_eq!(code, 0, "{stderr}");
    for expected in [
        format!(
            "{p}: warning[peers-admit-everyone]: routes[0] (journal).allow[0]: peers spiffe://cluster.local/ns/*/sa/* admits every workload of cluster.local"
        ),
        format!(
            "{p}: warning[unbound-personal-param]: routes[0] (journal): {{fnr}} looks like a personal identifier but no rule binds it"
        ),
        format!(
            "{p}: warning[trust-domains-not-checked]: the peers name trust domains cluster.local"
        ),
    ] {
        assert!(
            stdout.contains(&expected),
            "{expected:?} missing in:\n{stdout}"
        );
    }
    // Everything given that check compares against, and warnings fail.
    let strict_check = || {
        run_vakt(&[
            "check",
            "--policy",
            p,
            "--trust-domain",
            "cluster.local",
            "--issuer",
            "https://idp.example",
            "--fail-on-warn",
        ])
    };
    let (code, _, stderr) = strict_check();
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("2 warning(s) and --fail-on-warn"),
        "{stderr}"
    );
    // A specific list of peers and a bound parameter: no warning, even with --fail-on-warn.
    std::fs::write(
        &policy,
        "version: 1\nroutes:\n  - id: journal\n    methods: [GET]\n    path: /patients/{fnr}/journal\n    allow:\n      - peers: [spiffe://cluster.local/ns/web/sa/web]\n        bind: { fnr: national_id }\n",
    )
    .unwrap();
    let (code, stdout, stderr) = strict_check();
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(!stdout.contains("warning"), "{stdout}");
    // A boolean spelt True is read, and warned about.
    std::fs::write(
        &policy,
        "version: 1\nroutes:\n  - id: health\n    methods: [GET]\n    path: /health\n    public: True\n",
    )
    .unwrap();
    let (code, stdout, stderr) = run_vakt(&["check", "--policy", p]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!(
            "{p}: warning[boolean-spelling]: line 6: True: write true"
        )),
        "{stdout}"
    );
    // Route ids metrics and audit use as placeholders are refused.
    for id in ["none", "-"] {
        std::fs::write(
            &policy,
            format!("version: 1\nroutes:\n  - id: \"{id}\"\n    methods: [GET]\n    path: /x\n    public: true\n"),
        )
        .unwrap();
        let (code, _, stderr) = run_vakt(&["check", "--policy", p]);
        assert_eq!(code, 2, "{id}: {stderr}");
        assert!(
            stderr.contains("is what metrics and audit events say when no route matched"),
            "{stderr}"
        );
    }
}

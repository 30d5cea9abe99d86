//! The audit trail on the real request path: one event per decision and per refused handshake,
//! under concurrency; the chain verifies; a failing sink is handled as configured.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use serde_json::Value;

fn events(path: &std::path::Path) -> Vec<Value> {
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

    let (code, stdout, stderr) = run_vakt(&["audit", "verify", audit_file.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!("intact: {} events", 2000 + refused_handshakes)),
        "{stdout}"
    );
    let (code, stdout, _) = run_vakt(&["audit", "report", audit_file.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(stdout.contains("peer_not_allowed"), "{stdout}");

    // Tampering is caught: delete one line.
    let text = std::fs::read_to_string(&audit_file).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(10);
    std::fs::write(&audit_file, lines.join("\n") + "\n").unwrap();
    let (code, _, stderr) = run_vakt(&["audit", "verify", audit_file.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(stderr.contains("line 11"), "{stderr}");
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
    let yaml = vakt::dev::mesh::base_config_yaml(&dir, TD).replace(
        &format!(
            "    path: {}\n    fsync: never\n",
            dir.join("audit.log").display()
        ),
        &format!(
            "    path: {}\n    fsync: never\n    max_bytes: 4096\n    max_files: 1\n",
            dir.join("audit-small.log").display()
        ),
    ) + &format!(
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
    let files: Vec<&str> = files
        .iter()
        .filter(|f| f.exists())
        .map(|f| f.to_str().unwrap())
        .collect();
    let mut args = vec!["audit", "verify"];
    args.extend(files.iter().copied());
    let (code, stdout, stderr) = run_vakt(&args);
    assert_eq!(code, 0, "{stderr}");
    let written: usize = stdout
        .split("intact: ")
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

fn web_client_config_for(
    server: &Server,
    dir: &std::path::Path,
) -> std::sync::Arc<rustls::ClientConfig> {
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
    for line in metrics_text(server.vakt.admin_addr).await.lines() {
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

//! The audit trail on the real request path: one event per decision and per refused handshake,
//! under concurrency; the chain verifies; a failing sink is handled as configured.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
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

    // 400 requests with a mix of outcomes, 8 at a time, plus refused handshakes.
    let mut tasks = Vec::new();
    for i in 0..400usize {
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
    assert_eq!(count("allow", "rule_matched"), 200, "{by_outcome:?}");
    assert_eq!(count("deny", "peer_not_allowed"), 100, "{by_outcome:?}");
    assert_eq!(count("refused", "invalid_path"), 100, "{by_outcome:?}");
    assert_eq!(
        count("refused", "no_client_certificate"),
        refused_handshakes,
        "{by_outcome:?}"
    );
    assert_eq!(events.len(), 400 + refused_handshakes, "{by_outcome:?}");

    let (code, stdout, stderr) = run_vakt(&["audit", "verify", audit_file.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!("intact: {} events", 400 + refused_handshakes)),
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

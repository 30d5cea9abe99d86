//! `kill -9` under load. With `fsync: always` every response a client received in full has its
//! event in the audit file: vakt holds back the end of each response until its event is on disk.
//! With `fsync: never` (the same for an interval: a killed process loses no written line, only
//! what it had not written yet) the events lost are measured, and each belongs to a response
//! received in the last moments before the kill.
//!
//! The sidecar's audit file sink is slowed by 20 ms per write (a slow disk), so that a kill finds
//! events waiting; `VAKT_CRASH_WRITE_DELAY_MS` changes that (0: the disk as it is), and
//! `VAKT_CRASH_ROUNDS=N` repeats each mode N times and prints the figures (`benches/audit-crash`
//! runs it that way).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

use crate::common::*;

/// Concurrent clients: half on HTTP/1.1 keep-alive connections, half on HTTP/2.
const CLIENTS: usize = 16;

/// What one round saw.
struct Round {
    /// Responses received in full: request id, and when the body's end arrived.
    received: Vec<(String, Instant)>,
    killed_at: Instant,
    /// Request ids of the events in the audit file.
    on_disk: HashSet<String>,
    /// Lines that did not parse (at most the last one, cut by the kill).
    torn_lines: usize,
}

impl Round {
    /// Received responses without an event on disk, each with how long before the kill it
    /// arrived.
    fn lost(&self) -> Vec<Duration> {
        self.received
            .iter()
            .filter(|(id, _)| !self.on_disk.contains(id))
            .map(|(_, at)| self.killed_at.saturating_duration_since(*at))
            .collect()
    }
}

/// One client: requests with ids `c<n>-<i>` until the sidecar is gone, each on the same
/// connection, each recorded once its body has arrived in full.
async fn client(
    n: usize,
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    received: Arc<Mutex<Vec<(String, Instant)>>>,
) {
    let h2 = n % 2 == 1;
    let Ok(tls) = mtls_connect(addr, config).await else {
        return;
    };
    let io = TokioIo::new(tls);
    enum Sender {
        H1(hyper::client::conn::http1::SendRequest<TestBody>),
        H2(hyper::client::conn::http2::SendRequest<TestBody>),
    }
    let mut sender = if h2 {
        let Ok((s, conn)) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await
        else {
            return;
        };
        tokio::spawn(conn);
        Sender::H2(s)
    } else {
        let Ok((s, conn)) = hyper::client::conn::http1::handshake(io).await else {
            return;
        };
        tokio::spawn(conn);
        Sender::H1(s)
    };
    for i in 0.. {
        let id = format!("c{n}-{i}");
        let uri = if h2 {
            "https://orders.shop/crash"
        } else {
            "/crash"
        };
        let req = Request::get(uri)
            .header(http::header::HOST, "orders.shop")
            .header("x-request-id", &id)
            .body(Full::default())
            .unwrap();
        let response = match &mut sender {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        };
        let Ok(response) = response else { return };
        assert_eq!(response.status(), 200);
        if response.into_body().collect().await.is_err() {
            return;
        }
        received.lock().unwrap().push((id, Instant::now()));
    }
}

/// Start a `vakt run` child with `fsync`, load it for `load`, `kill -9` it, read its trail.
async fn crash_round(fsync: &str, load: Duration) -> Round {
    let workload = ChildWorkload::new("web-crash").await;
    let (dir, h1, h2) = (&workload.dir, &workload.web_h1, &workload.web_h2);
    let audit = dir.join("audit.log");
    std::fs::remove_file(&audit).ok();
    let (yaml, addr, admin) = workload.child_config();
    let yaml = yaml.replace("    fsync: never\n", &format!("    fsync: {fsync}\n"));
    // A slow disk: events wait ~20 ms to be written, so a kill finds some unwritten.
    let delay = std::env::var("VAKT_CRASH_WRITE_DELAY_MS").unwrap_or_else(|_| "20".into());
    let mut child = spawn_vakt_with_env(
        "crash",
        dir,
        &yaml,
        admin,
        &[("VAKT_TEST_AUDIT_WRITE_DELAY_MS", &delay)],
    );
    wait_ready(&child).await;

    let received = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let config = if n % 2 == 1 { h2.clone() } else { h1.clone() };
            tokio::spawn(client(n, addr, config, received.clone()))
        })
        .collect();
    tokio::time::sleep(load).await;
    child.child.start_kill().unwrap();
    let killed_at = Instant::now();
    child.child.wait().await.unwrap();
    for c in clients {
        tokio::time::timeout(Duration::from_secs(10), c)
            .await
            .expect("clients end once the sidecar is gone")
            .unwrap();
    }
    let (on_disk, torn_lines) = trail_request_ids(&audit);
    let received = std::mem::take(&mut *received.lock().unwrap());
    Round {
        received,
        killed_at,
        on_disk,
        torn_lines,
    }
}

fn trail_request_ids(audit: &Path) -> (HashSet<String>, usize) {
    let text = std::fs::read_to_string(audit).unwrap();
    let mut ids = HashSet::new();
    let mut torn = 0;
    for line in text.lines() {
        match serde_json::from_str::<Value>(line) {
            Ok(event) => {
                if let Some(id) = event["request_id"].as_str() {
                    ids.insert(id.to_owned());
                }
            }
            Err(_) => torn += 1,
        }
    }
    (ids, torn)
}

fn rounds() -> usize {
    std::env::var("VAKT_CRASH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

/// `fsync: always`: nothing a client received is missing from the trail after `kill -9`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_fsync_always_keeps_the_event_of_every_received_response() {
    for round in 0..rounds() {
        let r = crash_round("always", Duration::from_millis(1500)).await;
        assert!(
            r.received.len() >= 100,
            "too little load to show anything: {} responses",
            r.received.len()
        );
        assert!(r.torn_lines <= 1, "{} lines did not parse", r.torn_lines);
        let lost = r.lost();
        eprintln!(
            "fsync always, round {round}: {} responses received, {} events on disk, {} lost",
            r.received.len(),
            r.on_disk.len(),
            lost.len()
        );
        assert!(
            lost.is_empty(),
            "{} received responses have no event",
            lost.len()
        );
    }
}

/// `fsync: never`: the events lost in a `kill -9` are counted, and each belongs to a response
/// received just before it (in the writer's queue or batch at the moment of the kill).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_fsync_never_loses_only_the_last_moments() {
    let mut all_lost = Vec::new();
    let mut received = 0;
    for round in 0..rounds() {
        let r = crash_round("never", Duration::from_millis(1500)).await;
        assert!(r.received.len() >= 100, "{} responses", r.received.len());
        let lost = r.lost();
        let window = lost.iter().max().copied().unwrap_or_default();
        eprintln!(
            "fsync never, round {round}: {} responses received, {} lost, the oldest {window:?} before the kill",
            r.received.len(),
            lost.len()
        );
        received += r.received.len();
        all_lost.extend(lost);
    }
    let window = all_lost.iter().max().copied().unwrap_or_default();
    eprintln!(
        "fsync never: {} of {received} received responses lost their event; the oldest was received {window:?} before the kill",
        all_lost.len()
    );
    assert!(
        window < Duration::from_millis(500),
        "an event lost for a response received {window:?} before the kill"
    );
}

/// With `fsync: always`, the event is in the file by the time the client has the response, for
/// every shape of response: content with a length (HTTP/1.1) or in a stream (HTTP/2), no content
/// (HEAD), and vakt's own refusal. The sink is slowed so an event written after the response
/// would be missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fsync_always_the_event_is_on_disk_when_the_response_arrives() {
    let workload = ChildWorkload::new("web-held").await;
    let (dir, h1, h2) = (&workload.dir, &workload.web_h1, &workload.web_h2);
    let audit = dir.join("audit.log");
    let (yaml, _, _) = workload.child_config();
    let yaml = yaml.replace("    fsync: never\n", "    fsync: always\n");
    let vakt = vakt::app::App::start_with_slow_audit_sink(
        vakt::config::Config::from_yaml(&yaml).unwrap(),
        Duration::from_millis(150),
    )
    .await
    .unwrap();
    let addr = vakt.inbound_addr.unwrap();
    let request = |method: &str, uri: &str, id: &str| {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::HOST, "orders.shop")
            .header("x-request-id", id)
            .body(Full::default())
            .unwrap()
    };
    let cases = [
        ("h1-get", "GET", "/held", false, 200),
        ("h2-get", "GET", "https://orders.shop/held", true, 200),
        ("h1-head", "HEAD", "/held", false, 200),
        ("h2-head", "HEAD", "https://orders.shop/held", true, 200),
        // Encoded slash: refused by vakt with its JSON body.
        ("h1-refused", "GET", "/a%2Fb", false, 400),
        ("h2-refused", "GET", "https://orders.shop/a%2Fb", true, 400),
    ];
    for (id, method, uri, h2_case, status) in cases {
        let config = if h2_case { h2.clone() } else { h1.clone() };
        let tls = mtls_connect(addr, config).await.unwrap();
        let req = request(method, uri, id);
        let response = if h2_case {
            h2_send(tls, req).await
        } else {
            h1_send(tls, req).await
        }
        .unwrap();
        assert_eq!(response.status(), status, "{id}");
        response.into_body().collect().await.unwrap();
        let (ids, _) = trail_request_ids(&audit);
        assert!(
            ids.contains(id),
            "{id}: the response arrived before its event was written"
        );
    }
    vakt.shutdown().await;
}

//! Faults an operator meets, on a real `vakt run` process: files that do not change, files that
//! change to something broken.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;

/// `vakt_policy_reloads_total` and `vakt_certificate_reloads_total` by result.
async fn reloads(admin: SocketAddr) -> [f64; 4] {
    let text = metrics_text(admin).await;
    let count = |name: &str, result: &str| metric_sum(&text, name, &[("result", result)]);
    [
        count("vakt_policy_reloads_total", "success"),
        count("vakt_policy_reloads_total", "failure"),
        count("vakt_certificate_reloads_total", "success"),
        count("vakt_certificate_reloads_total", "failure"),
    ]
}

fn lines_with(path: &std::path::Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// An idle sidecar re-reads nothing it has not seen change (its own reads of the files are no
/// change), and a broken policy or certificate is rejected, logged and counted once, however long
/// it stays. The periodic re-read runs every second here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_files_are_not_reloaded_and_a_broken_version_is_reported_once() {
    let workload = ChildWorkload::new("web-reloads").await;
    let dir = &workload.dir;
    let policy = dir.join("policy.yaml");
    let (yaml, _, admin) = workload.child_config();
    let mut child = spawn_vakt("faults", dir, &yaml, admin);
    wait_ready(&child).await;

    // Idle: nothing is reloaded or rejected, and the certificates are not even parsed again.
    let parsed = "certificate files read and parsed";
    let parsed_at_start = lines_with(&child.stderr, parsed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(reloads(admin).await, [0.0; 4], "an idle sidecar reloaded");
    assert_eq!(
        lines_with(&child.stderr, parsed),
        parsed_at_start,
        "an idle sidecar parsed its certificates again"
    );

    // A broken policy: one rejection in 3 s (the watch event and three periodic re-reads).
    std::fs::write(&policy, "routes: [ this is not a policy").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(reloads(admin).await, [0.0, 1.0, 0.0, 0.0]);
    let rejected = "new policy rejected";
    assert_eq!(lines_with(&child.stderr, rejected), 1, "logged once");
    // In one line that says where: no excerpt lines follow it in the log.
    assert_eq!(lines_with(&child.stderr, "policy.yaml: line 1 column 9"), 1);
    assert_eq!(
        lines_with(&child.stderr, " | routes: ["),
        0,
        "an excerpt in the log"
    );

    // A broken certificate: the same.
    let cert = dir.join(vakt::dev::certs::CERT_FILE);
    let good_cert = std::fs::read(&cert).unwrap();
    std::fs::write(&cert, b"-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(reloads(admin).await, [0.0, 1.0, 0.0, 1.0]);
    assert_eq!(
        lines_with(&child.stderr, "new certificate material rejected"),
        1
    );

    // Both put right: one successful reload each (the certificate's bytes are back, but they
    // differ from the broken ones last seen; the material is unchanged, so no swap).
    std::fs::write(&cert, good_cert).unwrap();
    std::fs::write(
        &policy,
        vakt::dev::mesh::allow_peers_policy_yaml(&[format!("spiffe://{TD}/ns/shop/sa/web")]),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let [policy_ok, policy_failed, cert_ok, cert_failed] = reloads(admin).await;
    assert_eq!((policy_failed, cert_failed), (1.0, 1.0));
    assert!(policy_ok <= 1.0 && cert_ok == 0.0, "{policy_ok} {cert_ok}");
    assert_eq!(lines_with(&child.stderr, rejected), 1);
    stop(&mut child).await;
}

/// A failing audit sink in deny mode: requests are refused 503 and the sidecar reports itself
/// not ready (naming the condition) until the sink writes again; the logs get a handful of lines
/// with counts, not one or two per refused request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_audit_sink_makes_the_sidecar_unready_without_flooding_the_logs() {
    let workload = ChildWorkload::new("web-faults").await;
    let (dir, client) = (&workload.dir, workload.web_h1.clone());
    let blocked = dir.join("audit-small.log.1");
    let (yaml, addr, admin) = workload.child_config();
    let yaml = yaml
        .replace(
            &format!("    path: {}\n", dir.join("audit.log").display()),
            &format!(
                "    path: {}\n    max_bytes: 4096\n    max_files: 1\n",
                dir.join("audit-small.log").display()
            ),
        )
        .replace("audit:\n", "audit:\n  on_audit_failure: deny\n");
    let mut child = spawn_vakt_with_env("sink", dir, &yaml, admin, &[("RUST_LOG", "info")]);
    wait_ready(&child).await;
    // The first rotation's target becomes a non-empty directory: rotation, and so the sink,
    // fails after 4 KiB of events.
    std::fs::create_dir_all(blocked.join("in-the-way")).unwrap();

    // Requests until the sink fails, then 300 more, all refused.
    let refusing_from = std::time::Instant::now();
    let mut refused = 0;
    for _ in 0..2_000 {
        match attempt(addr, client.clone()).await {
            Ok(status) if status == 503 => refused += 1,
            Ok(status) => assert_eq!(status, 200),
            Err(e) => panic!("{e}"),
        }
        if refused == 300 {
            break;
        }
    }
    assert_eq!(refused, 300, "the sink never failed");
    let ready = plain_send(admin, get("/ready", "admin")).await;
    let ready_status = ready.status();
    let why = body_string(ready).await;
    // Logs go to stderr; stdout is counted too, so a build that logs there (run through
    // VAKT_TEST_BINARY) is measured the same way.
    let log = std::fs::read_to_string(&child.stderr).unwrap()
        + &std::fs::read_to_string(&child.stdout).unwrap();
    let lines = log.lines().count();
    eprintln!(
        "failing audit sink: {} log bytes ({lines} lines) over {:?} and 300 refused requests; /ready {}",
        log.len(),
        refusing_from.elapsed(),
        ready_status.as_u16()
    );
    assert_eq!(ready_status, 503);
    assert!(why.contains("audit sink writing"), "{why}");
    assert!(
        lines < 40,
        "{lines} log lines for 300 refused requests:\n{log}"
    );
    assert_eq!(lines_with(&child.stderr, "request refused by vakt"), 0);

    // The sink writes again: ready, and requests pass.
    std::fs::remove_dir_all(&blocked).unwrap();
    let mut ready = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if plain_send(admin, get("/ready", "admin")).await.status() == 200 {
            ready = true;
            break;
        }
    }
    assert!(ready, "never ready again after the sink recovered");
    assert_eq!(attempt(addr, client).await, Ok(http::StatusCode::OK));
    stop(&mut child).await;
}

/// The live audit file deleted under a running sidecar: vakt notices within a second, writes to
/// a new file whose trail records the lost range (`audit_file_deleted`), counts the break, and
/// loses nothing written after it noticed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_audit_file_is_noticed_reopened_and_recorded() {
    let workload = ChildWorkload::new("web-deleted").await;
    let (dir, client) = (&workload.dir, workload.web_h1.clone());
    let audit = dir.join("audit.log");
    std::fs::remove_file(&audit).ok();
    std::fs::remove_file(dir.join(vakt::dev::mesh::DEV_CHECKPOINT_FILE)).ok();
    let (yaml, addr, admin) = workload.child_config();
    let mut child = spawn_vakt("deleted", dir, &yaml, admin);
    wait_ready(&child).await;
    for _ in 0..20 {
        assert_eq!(
            attempt(addr, client.clone()).await,
            Ok(http::StatusCode::OK)
        );
    }
    // Written and out of the queue: the file holds the first 20 (plus the epoch's first event).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last_before = before.last().unwrap()["seq"].as_u64().unwrap();
    std::fs::remove_file(&audit).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut sent = Vec::new();
    for i in 0..10 {
        let id = format!("after-delete-{i}");
        let tls = mtls_connect(addr, client.clone()).await.unwrap();
        let req = http::Request::get("/x")
            .header("host", "orders.shop")
            .header("x-request-id", &id)
            .body(http_body_util::Full::default())
            .unwrap();
        assert_eq!(h1_send(tls, req).await.unwrap().status(), 200);
        sent.push(id);
    }
    let text = metrics_text(admin).await;
    assert_eq!(
        metric_sum(
            &text,
            "vakt_audit_chain_breaks_total",
            &[("reason", "file_deleted")]
        ),
        1.0
    );
    stop(&mut child).await;

    let after: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .expect("a new audit file")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let record = after
        .iter()
        .find(|e| e["reason"] == "audit_file_deleted")
        .expect("the deletion is recorded");
    assert_eq!(record["chain"]["rotated_first_seq"], 1, "{record}");
    assert_eq!(record["chain"]["rotated_last_seq"], last_before, "{record}");
    for id in &sent {
        assert!(
            after.iter().any(|e| e["request_id"] == id.as_str()),
            "{id} lost"
        );
    }
    // The chain goes on: seqs continue after the lost range, and verify names the lost lines.
    assert_eq!(after[0]["seq"].as_u64(), Some(last_before + 1));
    let (code, stdout, _) = run_vakt(&[
        "audit",
        "verify",
        "--key",
        &format!(
            "{}={}",
            vakt::dev::mesh::DEV_CHAIN_KEY_ID,
            dir.join(vakt::dev::mesh::DEV_CHAIN_KEY_FILE).display()
        ),
        audit.to_str().unwrap(),
    ]);
    assert_ne!(code, 0, "lost lines are a problem: {stdout}");
    assert!(
        stdout.contains(&format!("seq 1 to {last_before}")),
        "{stdout}"
    );
}

/// Started with only 64 file descriptors (`ulimit -n 64`) and the default 4,096-connection cap, a
/// sidecar caps its listener to fit, so 80 connections held open leave `/live` and `/ready`
/// answering at once and the held connections usable; the excess is closed at accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_when_the_data_listener_holds_all_it_can() {
    let workload = ChildWorkload::new("web-fds").await;
    let (dir, client) = (&workload.dir, workload.web_h1.clone());
    let (yaml, addr, admin) = workload.child_config();
    let config = dir.join("fds.yaml");
    std::fs::write(&config, yaml).unwrap();
    let stderr = dir.join("fds.stderr");
    let child = tokio::process::Command::new("bash")
        .args([
            "-c",
            "ulimit -n 64 && exec \"$0\" run --config \"$1\"",
            env!("CARGO_BIN_EXE_vakt"),
        ])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(
            std::fs::File::create(&stderr).unwrap(),
        ))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut child = Process {
        child,
        stdout: dir.join("fds.stdout"),
        stderr: stderr.clone(),
        admin,
    };
    wait_ready(&child).await;
    assert_eq!(
        lines_with(&stderr, "does not fit under the file-descriptor limit"),
        1
    );

    let mut held = Vec::new();
    let mut refused = 0;
    let started = std::time::Instant::now();
    for _ in 0..80 {
        match tokio::time::timeout(Duration::from_secs(3), mtls_connect(addr, client.clone())).await
        {
            Ok(Ok(tls)) => held.push(tls),
            _ => refused += 1,
        }
    }
    assert!(refused > 0, "all 80 accepted under a 64-descriptor limit");
    // The excess is closed at accept, not left waiting for a descriptor until the client
    // gives up.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?} for 80 connections: the excess was not refused at once",
        started.elapsed()
    );
    for probe in ["/live", "/ready"] {
        let answered = tokio::time::timeout(
            Duration::from_secs(2),
            plain_send(admin, get(probe, "admin")),
        )
        .await
        .unwrap_or_else(|_| panic!("{probe} did not answer with the listener full"));
        assert_eq!(answered.status(), 200, "{probe}");
    }
    // A held connection still serves a request.
    let tls = held.pop().unwrap();
    assert_eq!(
        h1_send(tls, get("/x", "orders.shop"))
            .await
            .unwrap()
            .status(),
        200
    );
    drop(held);
    stop(&mut child).await;
}

/// The long version (`benches/faults-long`, not in CI): 10,000 connections that never send a
/// byte against a sidecar with the default limits. Prints the sidecar's peak RSS, `/live`
/// latency while they are held, and how many vakt closed within the handshake timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by benches/faults-long"]
async fn long_ten_thousand_silent_connections() {
    let workload = ChildWorkload::new("web-long").await;
    let (yaml, addr, admin) = workload.child_config();
    let mut child =
        spawn_vakt_with_env("long", &workload.dir, &yaml, admin, &[("RUST_LOG", "warn")]);
    wait_ready(&child).await;
    let pid = child.child.id().unwrap();
    let rss_kib = || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let idle_rss = rss_kib();
    let started = std::time::Instant::now();
    let mut silent = Vec::new();
    for _ in 0..10_000 {
        if let Ok(Ok(tcp)) =
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await
        {
            silent.push(tcp);
        }
    }
    let opened = silent.len();
    let mut live = Vec::new();
    let mut live_failed = 0;
    for _ in 0..20 {
        let t = std::time::Instant::now();
        match tokio::time::timeout(Duration::from_secs(5), async {
            let tcp = tokio::net::TcpStream::connect(admin).await.ok()?;
            h1_send(tcp, get("/live", "admin")).await.ok()
        })
        .await
        {
            Ok(Some(r)) if r.status() == 200 => live.push(t.elapsed()),
            _ => live_failed += 1,
        }
    }
    live.sort();
    let quantile = |q: f64| live.get((live.len() as f64 * q) as usize).copied();
    let peak_rss = rss_kib();
    // After the 10 s handshake timeout every silent connection is closed by vakt.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let mut closed = 0;
    for tcp in &silent {
        let mut buf = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), tcp.peek(&mut buf)).await
        {
            closed += 1;
        }
    }
    eprintln!(
        "10,000 silent connections: {opened} opened in {:?}; sidecar RSS {} MB idle, {} MB with them held; /live median {:?}, max {:?}, {live_failed} of 20 unanswered within 5 s; {closed} of {opened} closed by vakt 12 s later",
        started.elapsed(),
        idle_rss / 1024,
        peak_rss / 1024,
        quantile(0.5),
        live.last(),
    );
    assert_eq!(live_failed, 0);
    assert!(live[live.len() - 1] < Duration::from_secs(1));
    drop(silent);
    stop(&mut child).await;
}

/// The long version of reloads under load (`benches/faults-long`, not in CI): 20 s of requests
/// on 16 keep-alive HTTP/2 connections (each reconnecting every 500 requests, so new handshakes
/// meet every certificate), the policy changed every 500 ms, alternately to a new valid version
/// and to a new broken one, and the certificate re-issued every 2 s. Prints the request rate,
/// failed requests and the reload counts against the changes made; then 10 s idle, which must
/// reload nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by benches/faults-long"]
async fn long_reloads_and_certificate_swaps_under_load() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let workload = ChildWorkload::new("web-swaps").await;
    let (yaml, addr, admin) = workload.child_config();
    let mut child = spawn_vakt_with_env(
        "swaps",
        &workload.dir,
        &yaml,
        admin,
        &[("RUST_LOG", "warn")],
    );
    wait_ready(&child).await;
    let start_counts = reloads(admin).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..16 {
        let (stop, ok, failed, config) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            workload.web_h2.clone(),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(tls) = mtls_connect(addr, config.clone()).await else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let Ok((mut sender, conn)) = hyper::client::conn::http2::handshake(
                    hyper_util::rt::TokioExecutor::new(),
                    hyper_util::rt::TokioIo::new(tls),
                )
                .await
                else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                tokio::spawn(conn);
                for _ in 0..500 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let answer = match sender.send_request(get("/", "orders.shop")).await {
                        Ok(r) if r.status() == 200 => !body_string(r).await.is_empty(),
                        _ => false,
                    };
                    let counter = if answer { &ok } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    let policy = workload.dir.join("policy.yaml");
    let valid = std::fs::read_to_string(&policy).unwrap();
    let started = std::time::Instant::now();
    let (mut valid_writes, mut broken_writes, mut cert_swaps) = (0.0, 0.0, 0.0);
    for step in 1..=40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if step % 2 == 0 {
            // A new valid version (a comment makes its content new).
            std::fs::write(&policy, format!("{valid}# version {step}\n")).unwrap();
            valid_writes += 1.0;
        } else {
            std::fs::write(&policy, format!("routes: [ # broken version {step}\n")).unwrap();
            broken_writes += 1.0;
        }
        if step % 4 == 0 {
            workload
                .pki
                .issue(&vakt::dev::certs::LeafSpec::svid(
                    &workload.id,
                    Duration::from_secs(3600),
                ))
                .unwrap()
                .save(&workload.dir, &workload.pki.ca)
                .unwrap();
            cert_swaps += 1.0;
        }
    }
    // The last change is a valid policy; let the last reloads land, then stop the load.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let loaded = reloads(admin).await;
    let got = |i: usize| loaded[i] - start_counts[i];
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle = reloads(admin).await;
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "reloads under load: {ok} requests in {elapsed:?} ({:.0}/s) on 16 HTTP/2 connections, {failed} failed; policy reloads {} success / {} failure for {valid_writes} valid and {broken_writes} broken versions; certificate reloads {} success / {} failure for {cert_swaps} re-issues; {} reloads in 10 s idle afterwards",
        ok as f64 / elapsed.as_secs_f64(),
        got(0),
        got(1),
        got(2),
        got(3),
        idle.iter().sum::<f64>() - loaded.iter().sum::<f64>(),
    );
    assert_eq!(failed, 0, "requests failed during reloads");
    assert_eq!((got(0), got(1)), (valid_writes, broken_writes));
    assert_eq!((got(2), got(3)), (cert_swaps, 0.0));
    assert_eq!(idle, loaded, "reloads while idle");
    self::stop(&mut child).await;
}

/// A tmpfs mounted for one test, unmounted (lazily) when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `dir`; `None` (with the reason printed) where this machine
    /// cannot mount, unless CI asks for every test to run.
    fn mount(dir: &std::path::Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .unwrap();
        if out.status.success() {
            return Some(Self(dir.to_owned()));
        }
        let why = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root and must mount a tmpfs: {why}"
        );
        eprintln!("skipped: cannot mount a tmpfs here ({why})");
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The audit trail on a tiny tmpfs that fills up, with `fsync: always` and deny mode: once the
/// disk is full every request is refused (503) and the sidecar is not ready; every response a
/// client received whole has its event in the file, and no event was written for a request that
/// was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_audit_disk_refuses_requests_and_every_served_response_has_its_event() {
    let workload = ChildWorkload::new("web-full-disk").await;
    let (dir, client) = (&workload.dir, workload.web_h1.clone());
    let Some(disk) = Tmpfs::mount(&dir.join("audit-disk"), "64k") else {
        return;
    };
    let audit = disk.0.join("audit.log");
    let (yaml, addr, admin) = workload.child_config();
    let yaml = yaml
        .replace(
            &format!(
                "    path: {}\n    fsync: never\n",
                dir.join("audit.log").display()
            ),
            &format!("    path: {}\n    fsync: always\n", audit.display()),
        )
        .replace("audit:\n", "audit:\n  on_audit_failure: deny\n");
    assert!(yaml.contains("fsync: always"), "{yaml}");
    let mut child = spawn_vakt_with_env("full-disk", dir, &yaml, admin, &[("RUST_LOG", "info")]);
    wait_ready(&child).await;

    // A response counts as served when its body arrived whole: with `fsync: always` the last
    // frame waits for the event, and an event that cannot be written breaks the response off.
    let (mut served, mut broken_off, mut refused) = (0, 0, 0);
    for _ in 0..5_000 {
        let tls = mtls_connect(addr, client.clone()).await.unwrap();
        let response = tokio::time::timeout(RESPONSE_WAIT, h1_send(tls, get("/", "orders.shop")))
            .await
            .unwrap_or_else(|_| panic!("no response head ({served} served, {refused} refused)"));
        let Ok(response) = response else {
            // Broken off before its head was out.
            broken_off += 1;
            continue;
        };
        let status = response.status();
        let whole = tokio::time::timeout(
            RESPONSE_WAIT,
            http_body_util::BodyExt::collect(response.into_body()),
        )
        .await
        .unwrap_or_else(|_| panic!("the body of a {status} never ended ({served} served)"))
        .is_ok();
        match (status.as_u16(), whole) {
            (503, true) => refused += 1,
            (200, true) => served += 1,
            (200, false) => broken_off += 1,
            other => panic!("{other:?}"),
        }
        if refused == 50 {
            break;
        }
    }
    assert_eq!(refused, 50, "the disk never filled ({served} served)");
    assert!(broken_off <= 1, "{broken_off} responses broken off");
    assert!(served > 20, "{served}");
    let ready = plain_send(admin, get("/ready", "admin")).await;
    assert_eq!(ready.status(), 503);
    assert!(body_string(ready).await.contains("audit sink writing"));

    // Every served request is in the trail, as a whole line; no refused one is.
    let text = std::fs::read_to_string(&audit).unwrap();
    let allowed = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["direction"] == "inbound" && e["decision"] == "allow")
        .count();
    assert_eq!(allowed, served, "served responses against their events");
    assert!(!text.contains("audit_unavailable"));
    eprintln!(
        "full audit disk (64 KiB tmpfs, fsync always): {served} served, each with its event; {broken_off} broken off when its event could not be written; then refused"
    );
    let _ = child.child.kill().await;
}

//! The sidecar's life: config checks with the real binary, certificate rotation under traffic,
//! SIGTERM drain, the dev-PKI commands.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::*;
use vakt::dev::certs::LeafSpec;

fn vakt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vakt"))
}

fn run_check(config: &Path, extra: &[&str]) -> (i32, String, String) {
    let config = config.to_str().unwrap();
    let mut args = vec!["check", "--config", config];
    args.extend_from_slice(extra);
    run_vakt(&args)
}

#[test]
fn every_example_config_policy_and_policy_test_passes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let (mut configs, mut policies, mut tests) = (0, 0, 0);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let args: Vec<String> = if name.ends_with(".test.yaml") {
            tests += 1;
            vec!["test".into(), path.display().to_string()]
        } else if name.starts_with("policy") && name.ends_with(".yaml") {
            policies += 1;
            vec![
                "check".into(),
                "--policy".into(),
                path.display().to_string(),
            ]
        } else if name.ends_with(".yaml") {
            configs += 1;
            vec![
                "check".into(),
                "--config".into(),
                path.display().to_string(),
            ]
        } else {
            continue;
        };
        let out = vakt().args(&args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("OK") || stdout.contains(" 0 failed"),
            "{stdout}"
        );
    }
    assert!(
        configs >= 3 && policies >= 1 && tests >= 1,
        "expected the examples in config/"
    );
}

#[test]
fn check_rejects_broken_configs_with_the_key_and_the_problem() {
    let base = "identity:\n  trust_domain: cluster.local\n  cert: c.pem\n  key: k.pem\n  trust_bundle: b.pem\n";
    let inbound = "inbound:\n  policy: policy.yaml\n";
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{base}{inbound}listen: 1\n"),
            "unknown field `listen`",
        ),
        (
            format!("{base}inbound:\n  policy: policy.yaml\n  alowed_peers: []\n"),
            "unknown field `alowed_peers`",
        ),
        (
            format!(
                "{base}outbound:\n  upstreams:\n  - authority: a\n    address: a:1\n    spiffe_id: spiffe://Cluster.local/ns/a\n"
            ),
            "is not a valid SPIFFE ID",
        ),
        (
            format!("{base}{inbound}outbound:\n  listen: 0.0.0.0:15001\n"),
            "outbound.listen: 0.0.0.0:15001 is not a loopback address",
        ),
        (
            format!("{base}{inbound}limits:\n  header_read_timeout: ten seconds\n"),
            "is not a duration",
        ),
        (
            format!("{base}{inbound}tls:\n  min_version: 1.0\n"),
            "min_version",
        ),
        (base.to_string(), "neither is configured"),
        ("identity: [unclosed\n".to_owned(), "config.yaml"),
    ];
    let tmp = tempfile::tempdir().unwrap();
    for (yaml, expected) in cases {
        let path = tmp.path().join("config.yaml");
        std::fs::write(&path, &yaml).unwrap();
        let (code, _, stderr) = run_check(&path, &[]);
        assert_eq!(code, 2, "expected failure for {yaml:?}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in {stderr:?} for {yaml:?}"
        );
    }
    let (code, _, stderr) = run_check(&tmp.path().join("missing.yaml"), &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("cannot read config file"), "{stderr}");
}

#[test]
fn check_warns_about_each_kept_header_and_refuses_a_protected_one() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = tmp.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "version: 1\nroutes:\n  - id: all\n    methods: [GET]\n    path: /**\n    allow:\n      - peers: [\"spiffe://cluster.local/ns/a/sa/b\"]\n",
    )
    .unwrap();
    let base = "identity:\n  trust_domain: cluster.local\n  cert: c.pem\n  key: k.pem\n  trust_bundle: b.pem\ninbound:\n  policy: policy.yaml\n";
    let path = tmp.path().join("config.yaml");
    std::fs::write(
        &path,
        format!("{base}  keep_headers: [X-Forwarded-User, l5d-client-id]\n"),
    )
    .unwrap();
    let (code, stdout, stderr) = run_check(&path, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    for name in ["x-forwarded-user", "l5d-client-id"] {
        assert!(
            stdout.contains(&format!(
                "warning[kept-identity-header]: inbound.keep_headers lets clients send {name}"
            )),
            "{stdout}"
        );
    }
    std::fs::write(&path, format!("{base}  keep_headers: [x_real_ip]\n")).unwrap();
    let (code, _, stderr) = run_check(&path, &[]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("inbound.keep_headers[0]: x_real_ip is set only by vakt"),
        "{stderr}"
    );
}

#[test]
fn certs_commands_make_an_identity_that_check_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let out = tmp.path().join("web");
    let status = vakt()
        .args(["certs", "init", "--trust-domain", "cluster.local", "--dir"])
        .arg(&ca)
        .status()
        .unwrap();
    assert!(status.success());
    // A second init must not overwrite the CA.
    let again = vakt()
        .args(["certs", "init", "--trust-domain", "cluster.local", "--dir"])
        .arg(&ca)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    let issue = vakt()
        .args([
            "certs",
            "issue",
            "--spiffe-id",
            "spiffe://cluster.local/ns/frontend/sa/web",
            "--ca",
        ])
        .arg(&ca)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        issue.status.success(),
        "{}",
        String::from_utf8_lossy(&issue.stderr)
    );
    let bad = vakt()
        .args([
            "certs",
            "issue",
            "--spiffe-id",
            "spiffe://cluster.local/",
            "--ca",
        ])
        .arg(&ca)
        .arg("--out")
        .arg(tmp.path().join("bad"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--spiffe-id"));
    // An identity of another trust domain: this CA cannot vouch for it.
    let foreign = vakt()
        .args([
            "certs",
            "issue",
            "--spiffe-id",
            "spiffe://partner.example/ns/a/sa/b",
            "--ca",
        ])
        .arg(&ca)
        .arg("--out")
        .arg(tmp.path().join("foreign"))
        .output()
        .unwrap();
    assert_eq!(foreign.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&foreign.stderr);
    assert!(
        stderr.contains("is outside the CA's trust domain cluster.local"),
        "{stderr}"
    );
    assert!(
        !tmp.path().join("foreign").exists(),
        "a certificate was written anyway"
    );

    let config = tmp.path().join("vakt.yaml");
    std::fs::write(
        tmp.path().join("policy.yaml"),
        vakt::dev::mesh::allow_peers_policy_yaml(&["spiffe://cluster.local/ns/shop/sa/web".into()]),
    )
    .unwrap();
    std::fs::write(
        &config,
        "identity:\n  trust_domain: cluster.local\n  cert: web/cert.pem\n  key: web/key.pem\n  trust_bundle: web/bundle.pem\ninbound:\n  policy: policy.yaml\n",
    )
    .unwrap();
    let (code, _, stderr) = run_check(&config, &["--with-certs"]);
    assert_eq!(code, 0, "{stderr}");
    // A file audit sink: --with-certs also checks that its directory can take files.
    std::fs::write(tmp.path().join("chain.key"), "k".repeat(32)).unwrap();
    let with_audit = |dir: &str| {
        format!(
            "identity:\n  trust_domain: cluster.local\n  cert: web/cert.pem\n  key: web/key.pem\n  trust_bundle: web/bundle.pem\ninbound:\n  policy: policy.yaml\naudit:\n  sink: file\n  file:\n    path: {dir}/audit.log\n  chain_key:\n    key_file: chain.key\n    key_id: k1\n  checkpoint_file: checkpoints.jsonl\n"
        )
    };
    std::fs::write(&config, with_audit("no-such-dir")).unwrap();
    let (code, _, _) = run_check(&config, &[]);
    assert_eq!(code, 0, "without --with-certs the files are not looked at");
    let (code, _, stderr) = run_check(&config, &["--with-certs"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("audit.file.path")
            && stderr.contains("no-such-dir: the directory does not exist"),
        "{stderr}"
    );
    std::fs::create_dir(tmp.path().join("logs")).unwrap();
    std::fs::write(&config, with_audit("logs")).unwrap();
    let (code, _, stderr) = run_check(&config, &["--with-certs"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        std::fs::read_dir(tmp.path().join("logs")).unwrap().count(),
        0,
        "the probe stayed"
    );
    // The same config with the wrong trust domain is refused once the certificate is read.
    std::fs::write(
        &config,
        "identity:\n  trust_domain: other.local\n  cert: web/cert.pem\n  key: web/key.pem\n  trust_bundle: web/bundle.pem\ninbound:\n  policy: policy.yaml\n",
    )
    .unwrap();
    let (code, _, stderr) = run_check(&config, &["--with-certs"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("trust domain cluster.local"), "{stderr}");
}

/// The server's leaf certificate as seen by a fresh client connection, after one request.
async fn one_request(
    server: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<Vec<u8>, String> {
    let tls = mtls_connect(server, config)
        .await
        .map_err(|e| e.to_string())?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let response = h1_send(tls, get("/rotation", "orders.shop"))
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(format!("status {}", response.status()));
    }
    Ok(leaf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_under_traffic_drops_nothing() {
    let server = server(&["web"], "").await;
    let config = web_client_config(&server);
    let addr = server.addr();
    let old_leaf = one_request(addr, config.clone()).await.unwrap();
    let admin = server.vakt.admin_addr;
    let reloads = |text: &str, result| {
        metric_sum(
            text,
            "vakt_certificate_reloads_total",
            &[("result", result)],
        )
    };
    let before = metrics_text(admin).await;

    let traffic = Traffic::start(addr, config.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A broken file first: rejected, the running certificate stays.
    std::fs::write(
        server.dir.join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    )
    .unwrap();
    wait_for_metric(
        admin,
        "vakt_certificate_reloads_total",
        &[("result", "failure")],
        reloads(&before, "failure") + 1.0,
    )
    .await;
    assert_eq!(one_request(addr, config.clone()).await.unwrap(), old_leaf);
    assert_eq!(
        plain_send(admin, get("/ready", "admin")).await.status(),
        200
    );

    // Then a real rotation, as cert-manager does it.
    let new = server
        .pki
        .issue(&LeafSpec::svid(&server.id, Duration::from_secs(3600)))
        .unwrap();
    new.save(&server.dir, &server.pki.ca).unwrap();
    wait_for_metric(
        admin,
        "vakt_certificate_reloads_total",
        &[("result", "success")],
        reloads(&before, "success") + 1.0,
    )
    .await;
    let mut rotated = false;
    for _ in 0..50 {
        if one_request(addr, config.clone()).await.unwrap() == new.cert_der {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rotated, "new connections never got the new certificate");
    traffic.stop_and_check().await;
}

/// Requests on new connections, one after the other, until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicUsize>,
    done: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(addr: std::net::SocketAddr, config: Arc<rustls::ClientConfig>) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let task = {
            let (stop, failures, done) = (stop.clone(), failures.clone(), done.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match one_request(addr, config.clone()).await {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            eprintln!("request failed during rotation: {e}");
                            failures.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        };
        Traffic {
            stop,
            failures,
            done,
            task,
        }
    }

    /// Let it run a little longer, stop it, and assert that nothing failed and enough ran.
    async fn stop_and_check(self) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        assert_eq!(
            self.failures.load(Ordering::Relaxed),
            0,
            "requests failed during rotation"
        );
        assert!(
            self.done.load(Ordering::Relaxed) > 10,
            "too little traffic to mean anything"
        );
    }
}

/// Writes `files` into `dir` the way the kubelet's AtomicWriter does for Secret volumes and
/// cert-manager's csi-lib does for csi-driver-spiffe: a new `..<timestamp>` directory, a
/// `..data` symlink swapped to it in one rename, the visible names as symlinks through `..data`,
/// then the old directory removed. Files are 0440, as the driver writes them.
fn atomic_writer_update(dir: &Path, files: &[(&str, &[u8])]) {
    use std::os::unix::fs::{PermissionsExt, symlink};
    std::fs::create_dir_all(dir).unwrap();
    let old = std::fs::read_link(dir.join("..data")).ok();
    let stamp = format!(
        "..{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let version = dir.join(&stamp);
    std::fs::create_dir(&version).unwrap();
    for (name, data) in files {
        let path = version.join(name);
        std::fs::write(&path, data).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    symlink(&stamp, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for (name, _) in files {
        let visible = dir.join(name);
        if std::fs::symlink_metadata(&visible).is_err() {
            symlink(format!("..data/{name}"), &visible).unwrap();
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }
}

/// csi-driver-spiffe renews a pod's certificate by swapping the `..data` symlink of its volume;
/// vakt watches `tls.crt` through that symlink and serves the new certificate on new connections
/// while requests keep going. A republish with the same files (the driver does that
/// periodically) is not a rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_in_the_csi_driver_layout_drops_nothing() {
    init();
    let pki = vakt::dev::mesh::DevPki::new(TD).unwrap();
    let app = vakt::dev::mesh::EchoApp::start().await.unwrap();
    let id = pki.spiffe_id("shop", "orders");
    let dir = pki.workload("orders", &id).unwrap();
    let csi = dir.join("spiffe");
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let bundle = read(vakt::dev::certs::BUNDLE_FILE);
    atomic_writer_update(
        &csi,
        &[
            ("tls.crt", &read(vakt::dev::certs::CERT_FILE)),
            ("tls.key", &read(vakt::dev::certs::KEY_FILE)),
            ("ca.crt", &bundle),
        ],
    );
    let policy = vakt::dev::mesh::write_policy(
        &dir,
        &vakt::dev::mesh::allow_peers_policy_yaml(&[pki.spiffe_id("shop", "web")]),
    )
    .unwrap();
    let identity = vakt::dev::mesh::federated_config_yaml(&dir, TD, &[])
        .replace(
            &dir.join(vakt::dev::certs::CERT_FILE).display().to_string(),
            &csi.join("tls.crt").display().to_string(),
        )
        .replace(
            &dir.join(vakt::dev::certs::KEY_FILE).display().to_string(),
            &csi.join("tls.key").display().to_string(),
        );
    assert!(identity.contains("spiffe/tls.crt") && identity.contains("spiffe/tls.key"));
    let yaml = format!(
        "{identity}inbound:\n  listen: 127.0.0.1:0\n  app: {}\n  policy: {}\n",
        app.addr,
        policy.display()
    );
    let vakt = vakt::app::App::start(vakt::config::Config::from_yaml(&yaml).unwrap())
        .await
        .unwrap();
    let server = Server {
        pki,
        app,
        vakt,
        id,
        dir,
    };
    let (addr, admin) = (server.addr(), server.vakt.admin_addr);
    let config = web_client_config(&server);
    let first = one_request(addr, config.clone()).await.unwrap();
    let reloads = |text: &str| {
        metric_sum(
            text,
            "vakt_certificate_reloads_total",
            &[("result", "success")],
        )
    };
    let traffic = Traffic::start(addr, config.clone());

    // Two renewals, each a new key and certificate swapped in at once.
    let mut previous = first;
    for _ in 0..2 {
        let before = reloads(&metrics_text(admin).await);
        let new = server
            .pki
            .issue(&LeafSpec::svid(&server.id, Duration::from_secs(3600)))
            .unwrap();
        atomic_writer_update(
            &csi,
            &[
                ("tls.crt", new.cert_pem.as_bytes()),
                ("tls.key", new.key_pem.as_bytes()),
                ("ca.crt", &bundle),
            ],
        );
        wait_for_metric(
            admin,
            "vakt_certificate_reloads_total",
            &[("result", "success")],
            before + 1.0,
        )
        .await;
        let mut served = Vec::new();
        for _ in 0..50 {
            served = one_request(addr, config.clone()).await.unwrap();
            if served == new.cert_der {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            served, new.cert_der,
            "new connections never got the renewed certificate"
        );
        assert_ne!(served, previous);
        previous = served;
    }
    traffic.stop_and_check().await;

    // The driver republishes the same content: written again, nothing reloaded.
    let loaded = server.vakt.certs.current();
    let current = std::fs::read(csi.join("tls.crt")).unwrap();
    let key = std::fs::read(csi.join("tls.key")).unwrap();
    atomic_writer_update(
        &csi,
        &[
            ("tls.crt", &current),
            ("tls.key", &key),
            ("ca.crt", &bundle),
        ],
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        Arc::ptr_eq(&loaded, &server.vakt.certs.current()),
        "reloaded the same files"
    );
    assert_eq!(one_request(addr, config).await.unwrap(), previous);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_in_flight_request_finish_then_exits_zero() {
    init();
    let pki = vakt::dev::mesh::DevPki::new(TD).unwrap();
    let app = vakt::dev::mesh::EchoApp::start().await.unwrap();
    let id = pki.spiffe_id("shop", "orders");
    let dir = pki.workload("orders", &id).unwrap();
    let web_dir = pki.workload("web", &pki.spiffe_id("shop", "web")).unwrap();
    let (inbound, admin) = (free_port(), free_port());
    let config_path = pki.path().join("vakt.yaml");
    let policy = vakt::dev::mesh::write_policy(
        &dir,
        &vakt::dev::mesh::allow_peers_policy_yaml(&[pki.spiffe_id("shop", "web")]),
    )
    .unwrap();
    let yaml = format!(
        "{}inbound:\n  listen: 127.0.0.1:{inbound}\n  app: {}\n  policy: {}\n",
        vakt::dev::mesh::base_config_yaml(&dir, TD)
            .replace("127.0.0.1:0", &format!("127.0.0.1:{admin}")),
        app.addr,
        policy.display()
    );
    std::fs::write(&config_path, yaml).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vakt"))
        .arg("run")
        .arg("--config")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let admin_addr: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let mut ready = false;
    for _ in 0..100 {
        if let Ok(tcp) = tokio::net::TcpStream::connect(admin_addr).await
            && let Ok(r) = h1_send(tcp, get("/ready", "admin")).await
            && r.status() == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "vakt did not become ready");

    let config = raw_client_config(Some(&web_dir), &dir, &id, &[b"http/1.1"]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{inbound}").parse().unwrap();
    let tls = mtls_connect(addr, config.clone()).await.unwrap();
    let slow = tokio::spawn(h1_send(tls, get("/slow?ms=1500", "orders.shop")));
    tokio::time::sleep(Duration::from_millis(400)).await;
    sigterm(child.id().unwrap());

    let response = slow.await.unwrap().expect("in-flight request completed");
    assert_eq!(response.status(), 200);
    assert_eq!(body_string(response).await, "slow answer\n");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("vakt exited after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        mtls_connect(addr, config).await.is_err(),
        "still accepting after exit"
    );
}

/// SIGTERM on a `vakt run` child in front of an app that is still working: `/ready` turns false
/// and the inbound listener closes at once, while the outbound listener keeps serving the app,
/// on its open connection and on new ones, for as long as the app holds a connection to it;
/// once the app has let go, vakt stops without waiting out its grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigterm_inbound_stops_first_and_outbound_serves_the_app_until_it_lets_go() {
    let upstream = server(&["web"], "").await;
    let dir = upstream
        .pki
        .workload("web-sigterm", &upstream.pki.spiffe_id("shop", "web"))
        .unwrap();
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        vakt::dev::mesh::allow_peers_policy_yaml(&[upstream.pki.spiffe_id("shop", "web")]),
    )
    .unwrap();
    let inbound: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let outbound: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let yaml = vakt::dev::mesh::base_config_yaml(&dir, TD)
        .replace("127.0.0.1:0", &admin.to_string())
        .replace("grace_period: 5s", "grace_period: 20s")
        + &format!(
            "inbound:\n  listen: {inbound}\n  app: {}\n  policy: {}\noutbound:\n  listen: {outbound}\n  upstreams:\n  - authority: orders.shop\n    address: {}\n    spiffe_id: {}\n",
            upstream.app.addr,
            policy.display(),
            upstream.vakt.inbound_addr.unwrap(),
            upstream.id,
        );
    let mut child = spawn_vakt("sigterm", &dir, &yaml, admin);
    wait_ready(&child).await;

    // The app holds a keep-alive connection to the outbound listener.
    let tcp = tokio::net::TcpStream::connect(outbound).await.unwrap();
    let (mut app, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let call = |path: &str| get(path, "orders.shop");
    assert_eq!(
        app.send_request(call("/before")).await.unwrap().status(),
        200
    );

    let signalled = std::time::Instant::now();
    sigterm(child.child.id().unwrap());
    // Inbound first: not ready, and no new connection is taken.
    let mut inbound_closed = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(inbound).await.is_err() {
            inbound_closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        inbound_closed,
        "the inbound listener still accepts after SIGTERM"
    );
    let ready = h1_send(
        tokio::net::TcpStream::connect(admin).await.unwrap(),
        get("/ready", "admin"),
    )
    .await
    .unwrap();
    assert_eq!(ready.status(), 503, "/ready after SIGTERM");

    // Outbound still serves the app: on its connection, and on a new one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        app.send_request(call("/after")).await.unwrap().status(),
        200
    );
    let fresh = tokio::net::TcpStream::connect(outbound).await.unwrap();
    assert_eq!(h1_send(fresh, call("/fresh")).await.unwrap().status(), 200);
    assert!(
        child.child.try_wait().unwrap().is_none(),
        "vakt exited while the app was working"
    );

    // The app lets go: vakt stops, long before its 20 s grace period.
    drop(app);
    let status = tokio::time::timeout(Duration::from_secs(10), child.child.wait())
        .await
        .expect("vakt exited once the app closed its connections")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(signalled.elapsed() < Duration::from_secs(15));
    let seen: Vec<String> = upstream
        .app
        .seen()
        .iter()
        .map(|r| r.path_and_query.clone())
        .collect();
    for path in ["/before", "/after", "/fresh"] {
        assert!(
            seen.iter().any(|p| p == path),
            "{path} did not reach the app: {seen:?}"
        );
    }
}

/// An app on loopback whose health endpoint says what the test wants; records what it was asked.
async fn health_app(
    healthy: Arc<AtomicBool>,
    asked: Arc<std::sync::Mutex<Vec<String>>>,
) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (healthy, asked) = (healthy.clone(), asked.clone());
            let service = hyper::service::service_fn(move |req: http::Request<_>| {
                let path = req.uri().path().to_owned();
                asked.lock().unwrap().push(path.clone());
                let status = match path.as_str() {
                    "/healthz" if !healthy.load(Ordering::Relaxed) => 503,
                    _ => 200,
                };
                let response = http::Response::builder()
                    .status(status)
                    .body(http_body_util::Full::new(bytes::Bytes::from_static(b"ok")))
                    .unwrap();
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service),
            );
        }
    });
    addr
}

/// `inbound.app_health` makes `/ready` follow the app's own health endpoint, and the admin port
/// answers the kubelet's probes for the listed paths of an app bound to loopback, and no others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_the_app_health_and_the_admin_port_answers_only_its_probe_paths() {
    let healthy = Arc::new(AtomicBool::new(true));
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let app = health_app(healthy.clone(), asked.clone()).await;
    let workload = ChildWorkload::new("web-app-health").await;
    let (yaml, _, admin) = workload.child_config();
    let yaml = yaml.replace(
        &format!("  app: {}\n", workload.app.addr),
        &format!("  app: {app}\n"),
    ) + "  app_health: /healthz\n  app_probe_paths: [/healthz, /livez]\n";
    let mut child = spawn_vakt("app-health", &workload.dir, &yaml, admin);
    wait_ready(&child).await;
    let admin_get = |path: &'static str| async move {
        let tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
        let response = h1_send(tcp, get(path, "admin")).await.unwrap();
        let status = response.status().as_u16();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    };

    // The listed probe paths are asked of the app; anything else is not.
    assert_eq!(
        admin_get("/app-health/livez").await,
        (200, "app: 200\n".into())
    );
    let (status, _) = admin_get("/app-health/secret/records").await;
    assert_eq!(status, 404);
    assert!(
        !asked.lock().unwrap().iter().any(|p| p.contains("secret")),
        "the app was asked for an unlisted path"
    );

    // The app turns unhealthy: /ready follows within a few seconds, naming why; then back.
    healthy.store(false, Ordering::Relaxed);
    let mut unready = None;
    for _ in 0..60 {
        let (status, body) = admin_get("/ready").await;
        if status == 503 {
            unready = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = unready.expect("/ready stayed 200 with the app unhealthy");
    assert!(body.contains("app health endpoint answering 2xx"), "{body}");
    assert_eq!(
        admin_get("/app-health/healthz").await,
        (503, "app: 503\n".into())
    );
    healthy.store(true, Ordering::Relaxed);
    wait_ready(&child).await;
    stop(&mut child).await;
}

//! Transparent capture in real network namespaces: two "pods" (A calls B) joined by a veth pair
//! with private addresses that exist only inside them. In each, `vakt net setup` installs the
//! nftables rules, vakt runs as its own UID and the app as another; the apps and clients are
//! `tests/capture/pod.py` processes that know nothing of vakt (no proxy settings).
//!
//! Needs root, `ip`, `nft`, `setpriv` and `/usr/bin/python3`. Without them the tests print why and pass,
//! unless `VAKT_REQUIRE_NETNS=1` (set by `scripts/test`, so CI always runs them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vakt::dev::certs::LeafSpec;
use vakt::dev::mesh::{DevPki, allow_peers_policy_yaml, base_config_yaml};

const PROXY_UID: u32 = 1337;
const APP_UID: u32 = 1000;
const TD: &str = "cluster.local";
const A_ADDR: &str = "10.231.0.1";
const B_ADDR: &str = "10.231.0.2";
const B_ADDR6: &str = "fd31::2";
/// An address inside the pods' network that no entry of A's egress table resolves to.
const UNLISTED: &str = "10.231.0.77";
/// Debian's Python, which any UID may run (an interpreter under root's home may not be).
const PYTHON: &str = "/usr/bin/python3";

/// Why these tests cannot run here, if they cannot.
fn unavailable() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not root (network namespaces and nftables need it)".into());
    }
    for tool in ["ip", "nft", "setpriv", PYTHON] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    let probe = format!("vktprobe{}", std::process::id());
    let made = Command::new("ip")
        .args(["netns", "add", &probe])
        .output()
        .ok()?;
    if !made.status.success() {
        return Some(format!(
            "cannot create a network namespace: {}",
            String::from_utf8_lossy(&made.stderr).trim()
        ));
    }
    let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    None
}

/// `true` when the tests may run; prints why not, or fails when they are required.
fn may_run(test: &str) -> bool {
    match unavailable() {
        None => true,
        Some(why) if std::env::var_os("VAKT_REQUIRE_NETNS").is_some() => {
            panic!("{test}: required (VAKT_REQUIRE_NETNS) but cannot run: {why}")
        }
        Some(why) => {
            eprintln!("{test}: skipped: {why}");
            false
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn vakt_bin() -> &'static str {
    env!("CARGO_BIN_EXE_vakt")
}

fn pod_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/capture/pod.py")
}

/// A network namespace (a pod's), removed with its resolver file when dropped.
struct Netns {
    name: String,
    children: Vec<Child>,
}

impl Netns {
    fn new(name: String, nameserver: &str) -> Self {
        run(Command::new("ip").args(["netns", "add", &name]));
        // `ip netns exec` puts /etc/netns/<name>/resolv.conf over /etc/resolv.conf.
        let etc = Path::new("/etc/netns").join(&name);
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("resolv.conf"),
            format!("nameserver {nameserver}\noptions timeout:2 attempts:2\n"),
        )
        .unwrap();
        run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        Self {
            name,
            children: Vec::new(),
        }
    }

    /// A command run inside the namespace as `uid` (root when `None`).
    fn command(&self, uid: Option<u32>, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]);
        if let Some(uid) = uid {
            let uid = uid.to_string();
            cmd.args([
                "setpriv",
                "--reuid",
                &uid,
                "--regid",
                &uid,
                "--clear-groups",
                "--",
            ]);
        }
        cmd.arg(program);
        cmd
    }

    fn vakt(&self, uid: Option<u32>, args: &[&str]) -> Output {
        self.command(uid, vakt_bin()).args(args).output().unwrap()
    }

    /// A long-running process in the namespace, its output in `<log>.out`/`.err`; stopped by
    /// pid when the namespace is dropped.
    fn spawn(&mut self, uid: Option<u32>, program: &str, args: &[&str], log: &Path) {
        let child = self
            .command(uid, program)
            .args(args)
            .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .unwrap();
        self.children.push(child);
    }

    /// A long-running `pod.py` process (a server) in the namespace.
    fn pod(&mut self, uid: Option<u32>, args: &[&str], log: &Path) {
        let script = pod_py();
        let mut all = vec![script.to_str().unwrap()];
        all.extend_from_slice(args);
        self.spawn(uid, PYTHON, &all, log);
    }

    /// Run a `pod.py` client as the app's UID (or `uid`) and read its JSON line.
    fn client(&self, uid: u32, args: &[&str]) -> Value {
        let out = self
            .command(Some(uid), PYTHON)
            .arg(pod_py())
            .args(args)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "pod.py {args:?}: {} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    fn ruleset(&self) -> String {
        let out = run(self.command(None, "nft").args(["list", "ruleset"]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&self.name));
    }
}

/// Two pods joined by a veth pair: A (10.231.0.1, fd31::1) and B (10.231.0.2, fd31::2). B
/// hosts the DNS server both use.
fn two_pods(tag: &str) -> (Netns, Netns) {
    let id = std::process::id() % 100_000;
    let a = Netns::new(format!("vkt{id}{tag}a"), B_ADDR);
    let b = Netns::new(format!("vkt{id}{tag}b"), B_ADDR);
    let (va, vb) = (format!("vk{id}{tag}a"), format!("vk{id}{tag}b"));
    run(Command::new("ip").args([
        "link", "add", &va, "netns", &a.name, "type", "veth", "peer", "name", &vb, "netns", &b.name,
    ]));
    for (ns, dev, v4, v6) in [(&a, &va, A_ADDR, "fd31::1"), (&b, &vb, B_ADDR, B_ADDR6)] {
        run(Command::new("ip").args([
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{v4}/24"),
            "dev",
            dev,
        ]));
        run(Command::new("ip").args([
            "-n",
            &ns.name,
            "-6",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            dev,
            "nodad",
        ]));
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", dev, "up"]));
    }
    (a, b)
}

/// Hand a directory tree to vakt's UID (it runs as that user and reads its keys), and let the
/// app's UID read the public parts.
fn give_to_vakt(dir: &Path) {
    run(Command::new("chown")
        .args(["-R", &format!("{PROXY_UID}:{PROXY_UID}")])
        .arg(dir));
    run(Command::new("chmod").args(["-R", "go+rX"]).arg(dir));
    run(Command::new("find")
        .arg(dir)
        .args(["-name", "key.pem", "-exec", "chmod", "600", "{}", ";"]));
}

/// The audit events in `file`, once at least `want(events)` holds (or after 10 s).
fn audit_events(file: &Path, want: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events: Vec<Value> = std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if want(&events) || Instant::now() > deadline {
            return events;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn has(events: &[Value], pred: impl Fn(&Value) -> bool) -> bool {
    events.iter().any(pred)
}

/// The trail in `audit` has a connection to `destination` refused as `unknown_destination`.
fn assert_refused_unknown(audit: &Path, destination: &str) {
    let events = audit_events(audit, |e| has(e, |v| v["destination"] == destination));
    assert!(
        has(&events, |v| v["decision"] == "refused"
            && v["reason"] == "unknown_destination"
            && v["destination"] == destination),
        "no refusal of {destination} in {events:?}"
    );
}

/// Wait until vakt in `ns` answers `/ready` on its admin port.
fn wait_ready(ns: &Netns, log: &Path) {
    for _ in 0..100 {
        let r = ns.client(
            APP_UID,
            &[
                "get",
                "--host",
                "127.0.0.1",
                "--port",
                "15021",
                "--path",
                "/ready",
            ],
        );
        if r["status"] == 200 {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "vakt in {} did not become ready: {}",
        ns.name,
        std::fs::read_to_string(log.with_extension("err")).unwrap_or_default()
    );
}

#[test]
fn an_app_reaches_the_network_only_through_vakt() {
    if !may_run("an_app_reaches_the_network_only_through_vakt") {
        return;
    }
    let (mut a, mut b) = two_pods("m");
    let pki = DevPki::new(TD).unwrap();
    let web_id = pki.spiffe_id("shop", "web");
    let billing_id = pki.spiffe_id("shop", "billing");
    let dir_a = pki.workload("a", &web_id).unwrap();
    let dir_b = pki.workload("b", &billing_id).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let idp_dir = pki
        .workload_with(
            "idp",
            &LeafSpec {
                common_name: "idp.test".into(),
                uris: Vec::new(),
                dns_names: vec!["idp.test".into()],
                not_before: now - time::Duration::minutes(1),
                not_after: now + time::Duration::hours(1),
                is_ca: false,
                server_auth: true,
                client_auth: false,
            },
        )
        .unwrap();
    let config_a = base_config_yaml(&dir_a, TD).replace("127.0.0.1:0", "127.0.0.1:15021")
        + &format!(
            "outbound:\n  listen: 127.0.0.1:15001\n  capture: transparent\n  upstreams:\n  - authority: billing.test:8080\n    address: billing.test:15443\n    spiffe_id: {billing_id}\n  - authority: idp.test:9443\n    passthrough: tls\n  - authority: moving.test:8081\n    address: billing.test:15443\n    spiffe_id: {billing_id}\n"
        );
    std::fs::write(
        dir_b.join("policy.yaml"),
        allow_peers_policy_yaml(std::slice::from_ref(&web_id)),
    )
    .unwrap();
    let config_b = base_config_yaml(&dir_b, TD).replace("127.0.0.1:0", "127.0.0.1:15021")
        + &format!(
            "inbound:\n  listen: 0.0.0.0:15443\n  app: 127.0.0.1:8080\n  policy: {}\n",
            dir_b.join("policy.yaml").display()
        );
    std::fs::write(dir_a.join("vakt.yaml"), config_a).unwrap();
    std::fs::write(dir_b.join("vakt.yaml"), config_b).unwrap();
    give_to_vakt(pki.path());

    // The rules: set up twice (the same rules), shown, in both pods; B captures its app's port.
    let setup_a = ["net", "setup", "--proxy-uid", "1337"];
    let setup_b = [
        "net",
        "setup",
        "--proxy-uid",
        "1337",
        "--inbound-ports",
        "8080",
    ];
    for _ in 0..2 {
        let out = a.vakt(None, &setup_a);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let once = a.ruleset();
    assert_eq!(once.matches("table inet vakt").count(), 1, "{once}");
    assert!(once.contains("redirect to :15001"), "{once}");
    assert!(b.vakt(None, &setup_b).status.success());
    let shown = b.vakt(None, &["net", "show"]);
    assert!(shown.status.success());
    assert!(String::from_utf8_lossy(&shown.stdout).contains("tcp dport 8080 redirect to :15443"));

    // Without NET_ADMIN (the app's UID): a clear error, exit 3, nothing changed.
    let denied = a.vakt(Some(APP_UID), &["net", "cleanup"]);
    assert_eq!(denied.status.code(), Some(3));
    let message = String::from_utf8_lossy(&denied.stderr);
    assert!(message.contains("NET_ADMIN"), "{message}");
    assert_eq!(a.ruleset(), once);

    // B: DNS for both pods, an external TLS service, the app on 0.0.0.0, vakt.
    let logs = pki.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let records = logs.join("dns-records");
    std::fs::write(
        &records,
        format!("billing.test={B_ADDR}\nidp.test={B_ADDR}\nmoving.test={UNLISTED}\n"),
    )
    .unwrap();
    b.pod(
        None,
        &[
            "dns",
            "--addr",
            B_ADDR,
            "--records",
            records.to_str().unwrap(),
        ],
        &logs.join("dns"),
    );
    b.pod(
        None,
        &[
            "tls-server",
            "--addr",
            B_ADDR,
            "--port",
            "9443",
            "--cert",
            idp_dir.join("cert.pem").to_str().unwrap(),
            "--key",
            idp_dir.join("key.pem").to_str().unwrap(),
        ],
        &logs.join("idp"),
    );
    b.pod(
        None,
        &["udp-echo", "--addr", B_ADDR, "--port", "5353"],
        &logs.join("udp-echo"),
    );
    let v6_log = logs.join("v6-accepted");
    std::fs::write(&v6_log, "").unwrap();
    b.pod(
        None,
        &[
            "tcp6-listen",
            "--port",
            "8080",
            "--port",
            "9080",
            "--log",
            v6_log.to_str().unwrap(),
        ],
        &logs.join("v6"),
    );
    let app_log = logs.join("app-requests.jsonl");
    std::fs::write(&app_log, "").unwrap();
    run(Command::new("chmod").arg("666").arg(&app_log));
    b.pod(
        Some(APP_UID),
        &["app", "--port", "8080", "--log", app_log.to_str().unwrap()],
        &logs.join("app"),
    );
    let vakt_b_log = logs.join("vakt-b");
    b.spawn(
        Some(PROXY_UID),
        vakt_bin(),
        &["run", "--config", dir_b.join("vakt.yaml").to_str().unwrap()],
        &vakt_b_log,
    );
    let vakt_a_log = logs.join("vakt-a");
    a.spawn(
        Some(PROXY_UID),
        vakt_bin(),
        &["run", "--config", dir_a.join("vakt.yaml").to_str().unwrap()],
        &vakt_a_log,
    );
    wait_ready(&b, &vakt_b_log);
    wait_ready(&a, &vakt_a_log);
    let audit_a = dir_a.join("audit.log");
    let audit_b = dir_b.join("audit.log");

    // DNS still resolves from the app, over UDP and over TCP.
    let dns = a.client(
        APP_UID,
        &["resolve", "--host", "billing.test", "--server", B_ADDR],
    );
    assert_eq!(dns["udp"], B_ADDR, "{dns}");
    assert_eq!(dns["tcp"], B_ADDR, "{dns}");

    // 1. A's app connects straight to B's address and app port, no proxy settings: it goes
    //    through both vakts over mTLS (vakt's own dials are not redirected, or this would
    //    loop), and B's app sees A's verified identity.
    let got = a.client(
        APP_UID,
        &[
            "get",
            "--host",
            "billing.test",
            "--port",
            "8080",
            "--path",
            "/journal/1",
        ],
    );
    assert_eq!(got["address"], B_ADDR, "{got}");
    assert_eq!(got["status"], 200, "{got}");
    let seen: Value = serde_json::from_str(got["body"].as_str().unwrap()).unwrap();
    let xfcc = seen["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default();
    assert!(
        xfcc.contains(&web_id),
        "B's app did not see A's identity: {seen}"
    );
    let events_a = audit_events(&audit_a, |e| {
        has(e, |v| v["direction"] == "outbound" && v["status"] == 200)
    });
    assert!(
        has(&events_a, |v| v["direction"] == "outbound"
            && v["decision"] == "allow"
            && v["peer"] == billing_id.as_str()
            && v["destination"]
                == format!("billing.test:8080({B_ADDR}:8080)").as_str()
            && v["status"] == 200),
        "A's trail lacks the exchange: {events_a:?}"
    );
    let events_b = audit_events(&audit_b, |e| has(e, |v| v["path"] == "/journal/1"));
    assert!(
        has(&events_b, |v| v["direction"] == "inbound"
            && v["decision"] == "allow"
            && v["peer"] == web_id.as_str()
            && v["path"] == "/journal/1"),
        "B's trail lacks the exchange: {events_b:?}"
    );

    // 2a. An unlisted address: refused at once, audited with where it was going.
    let refused = a.client(
        APP_UID,
        &["get", "--host", UNLISTED, "--port", "80", "--path", "/x"],
    );
    assert!(refused.get("status").is_none(), "{refused}");
    assert_refused_unknown(&audit_a, &format!("{UNLISTED}:80"));

    // 2b. A listed external name over TLS: relayed after the SNI check (the app verifies the
    //     service's own certificate end to end), audited.
    let bundle = idp_dir.join("bundle.pem");
    let bundle = bundle.to_str().unwrap();
    let relayed = a.client(
        APP_UID,
        &[
            "tls",
            "--connect",
            B_ADDR,
            "--port",
            "9443",
            "--sni",
            "idp.test",
            "--ca",
            bundle,
        ],
    );
    assert_eq!(relayed["reply"], "echo: hello\n", "{relayed}");
    let via = format!("idp.test:9443({B_ADDR}:9443)");
    let events_a = audit_events(&audit_a, |e| has(e, |v| v["destination"] == via.as_str()));
    assert!(
        has(&events_a, |v| v["decision"] == "allow"
            && v["reason"] == "passthrough_tls"
            && v["destination"] == via.as_str()
            && v["outcome"] == "completed"
            && v["bytes_out"].as_u64() > Some(0)),
        "{events_a:?}"
    );

    // 2c. The same address with another name in the ClientHello, or no TLS at all: refused.
    let wrong = a.client(
        APP_UID,
        &[
            "tls",
            "--connect",
            B_ADDR,
            "--port",
            "9443",
            "--sni",
            "evil.test",
            "--ca",
            bundle,
            "--no-check",
        ],
    );
    assert!(wrong.get("reply").is_none(), "{wrong}");
    let plain = a.client(APP_UID, &["get", "--host", "idp.test", "--port", "9443"]);
    assert!(plain.get("status").is_none(), "{plain}");
    let events_a = audit_events(&audit_a, |e| {
        has(e, |v| v["reason"] == "passthrough_sni_mismatch")
            && has(e, |v| v["reason"] == "passthrough_not_tls")
    });
    for reason in ["passthrough_sni_mismatch", "passthrough_not_tls"] {
        assert!(
            has(&events_a, |v| v["decision"] == "refused"
                && v["reason"] == reason),
            "{reason}: {events_a:?}"
        );
    }

    // 2d. The table follows DNS: moving.test first resolves elsewhere, so B's address on its
    //     port is refused; once the record points at B and its TTL (5 s) has run out, the same
    //     connection goes through.
    let moved = [
        "get",
        "--host",
        "moving.test",
        "--connect",
        B_ADDR,
        "--port",
        "8081",
        "--path",
        "/moved",
    ];
    let before = a.client(APP_UID, &moved);
    assert!(before.get("status").is_none(), "{before}");
    assert_refused_unknown(&audit_a, &format!("{B_ADDR}:8081"));
    std::fs::write(
        &records,
        format!("billing.test={B_ADDR}\nidp.test={B_ADDR}\nmoving.test={B_ADDR}\n"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let r = a.client(APP_UID, &moved);
        if r["status"] == 200 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        after["status"], 200,
        "the egress table did not follow DNS: {after}"
    );

    // 3. A process with vakt's UID in A is not captured there: its plaintext to B's app port
    //    meets B's inbound capture, which sends it to the mTLS listener; refused, the app never
    //    sees it.
    let handshakes_before = audit_events(&audit_b, |_| true)
        .iter()
        .filter(|v| v["direction"] == "handshake")
        .count();
    let bypass = a.client(
        PROXY_UID,
        &[
            "get",
            "--host",
            "billing.test",
            "--connect",
            B_ADDR,
            "--port",
            "8080",
            "--path",
            "/bypass",
        ],
    );
    assert!(
        bypass.get("status").is_none() || bypass["status"] != 200,
        "{bypass}"
    );
    let events_b = audit_events(&audit_b, |e| {
        e.iter().filter(|v| v["direction"] == "handshake").count() > handshakes_before
    });
    assert!(
        events_b
            .iter()
            .filter(|v| v["direction"] == "handshake" && v["decision"] == "refused")
            .count()
            > handshakes_before,
        "B did not refuse the plaintext: {events_b:?}"
    );
    let app_saw = std::fs::read_to_string(&app_log).unwrap();
    assert!(
        !app_saw.contains("/bypass"),
        "B's app saw plaintext: {app_saw}"
    );
    assert!(app_saw.contains("/journal/1"));

    // IPv6 is not a way around it: B listens on IPv6 (8080 and 9080). vakt's UID reaches 9080
    // (IPv6 works); the app is refused, and so is anyone at B's captured app port.
    let v6 = |uid, port| a.client(uid, &["connect6", "--connect", B_ADDR6, "--port", port]);
    assert_eq!(v6(PROXY_UID, "9080")["connected"], true);
    for (uid, port) in [(APP_UID, "9080"), (APP_UID, "8080"), (PROXY_UID, "8080")] {
        let r = v6(uid, port);
        assert!(
            r["error"].as_str().unwrap_or_default().contains("Refused"),
            "uid {uid} to [{B_ADDR6}]:{port}: {r}"
        );
    }
    assert_eq!(std::fs::read_to_string(&v6_log).unwrap(), "9080\n");

    // DNS passes only to the pod's nameserver: DNS-shaped traffic to another address is
    // captured like the rest (TCP: refused as an unknown destination; UDP: refused).
    let tunnel = a.client(APP_UID, &["get", "--host", UNLISTED, "--port", "53"]);
    assert!(tunnel.get("status").is_none(), "{tunnel}");
    assert_refused_unknown(&audit_a, &format!("{UNLISTED}:53"));
    let udp53 = a.client(APP_UID, &["udp", "--connect", UNLISTED, "--port", "53"]);
    assert!(
        udp53["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("PermissionError"),
        "{udp53}"
    );

    // UDP is not captured: the app's is refused but DNS (above); vakt's UID is not touched. A
    // datagram rejected on its way out fails the send itself (EPERM).
    let udp = a.client(APP_UID, &["udp", "--connect", B_ADDR, "--port", "5353"]);
    assert!(
        udp["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("PermissionError"),
        "{udp}"
    );
    let udp = a.client(PROXY_UID, &["udp", "--connect", B_ADDR, "--port", "5353"]);
    assert_eq!(udp["reply"], "echo: ping", "{udp}");

    // 4. Cleanup leaves no rule behind, and show says so.
    for ns in [&a, &b] {
        let out = ns.vakt(None, &["net", "cleanup"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rules = ns.ruleset();
        assert!(
            rules.trim().is_empty(),
            "left behind in {}: {rules}",
            ns.name
        );
        let shown = ns.vakt(None, &["net", "show"]);
        assert_eq!(shown.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&shown.stdout).contains("no vakt capture rules"));
    }
}

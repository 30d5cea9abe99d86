//! SPIFFE federation over real handshakes: each trust domain has its own bundle, and a
//! certificate is verified only against the bundle of the trust domain its SPIFFE ID names.
//!
//! Our trust domain is `TD` (A); the partner is `partner.vakt.local` (B). A refusal is asserted
//! as in `handshake`: no HTTP response, the failure counted under its reason, nothing reaching
//! the app; inbound refusals also appear in the server's own audit trail under that reason.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::{
    Server, TD, attempt, body_string, client_config_with_versions, federated_client_sidecar,
    federated_server, get, h1_send, metric_sum, metrics_text, mtls_connect, plain_send,
    raw_client_config, run_vakt, wait_for_metric,
};
use http::StatusCode;
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore};
use rustls::pki_types::ServerName;
use vakt::dev::certs::{BUNDLE_FILE, CERT_FILE, KEY_FILE};
use vakt::dev::mesh::DevPki;
use vakt::metrics::HANDSHAKE_FAILURES;

const PARTNER: &str = "partner.vakt.local";
const HTTP11: &[&[u8]] = &[b"http/1.1"];

/// Our server (`spiffe://TD/ns/shop/sa/orders`) federated with `partner`, allowing `peers`.
async fn server_federated_with(partner: &DevPki, peers: &[String], extra: &str) -> Server {
    let bundle = partner.bundle_file().unwrap();
    federated_server(
        DevPki::new(TD).unwrap(),
        peers,
        &[(PARTNER, bundle.as_path())],
        extra,
    )
    .await
}

/// Refused handshakes in `server`'s own audit trail with `reason`, waiting up to 5 s for
/// `at_least` of them (the trail is written in batches).
async fn audited_refusals(server: &Server, reason: &str, at_least: usize) -> usize {
    let path = server.dir.join("audit.log");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let count = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| {
                e["direction"] == "handshake" && e["decision"] == "refused" && e["reason"] == reason
            })
            .inspect(|e| {
                // Who tried: the address it came from (the test's clients are on loopback).
                let source = e["source"].as_str().unwrap_or_default();
                assert!(source.starts_with("127.0.0.1:"), "no source address: {e}");
            })
            .count();
        if count >= at_least || Instant::now() > deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `config` must be refused inbound as `reason`: no HTTP response, the metric and this
/// server's audit trail both record `reason`, and nothing reached the app.
async fn assert_refused_with(server: &Server, config: Arc<rustls::ClientConfig>, reason: &str) {
    let admin = server.vakt.admin_addr;
    let labels = [("direction", "inbound"), ("reason", reason)];
    let before = metric_sum(&metrics_text(admin).await, HANDSHAKE_FAILURES, &labels);
    let audited_before = audited_refusals(server, reason, 0).await;

    let outcome = attempt(server.addr(), config).await;
    assert!(
        outcome.is_err(),
        "expected the client to be refused ({reason}), but got HTTP {outcome:?}"
    );
    let after = wait_for_metric(admin, HANDSHAKE_FAILURES, &labels, before + 1.0).await;
    assert!(
        after >= before + 1.0,
        "{HANDSHAKE_FAILURES}{{direction=\"inbound\",reason=\"{reason}\"}} did not go up \
         (before {before}, after {after}); client saw: {outcome:?}"
    );
    // The audit trail is this server's alone, so it also shows that this refusal was ours.
    let audited = audited_refusals(server, reason, audited_before + 1).await;
    assert_eq!(
        audited,
        audited_before + 1,
        "this server's audit trail should hold one more refused handshake with reason {reason}"
    );
    assert!(
        server.app.seen().is_empty(),
        "the app must not see requests from a refused client: {:?}",
        server.app.seen()
    );
}

// ---------------------------------------------------------------- inbound

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_ca_issuing_an_id_of_our_domain_is_refused_inbound() {
    let partner = DevPki::new(PARTNER).unwrap();
    let ours_web = format!("spiffe://{TD}/ns/shop/sa/web");
    let server = server_federated_with(&partner, std::slice::from_ref(&ours_web), "").await;

    // The partner's CA is trusted for the partner's domain, but it signs an allowed ID of ours.
    let forged = partner.workload("forged-web", &ours_web).unwrap();
    let config = raw_client_config(Some(&forged), &server.dir, &server.id, HTTP11);
    assert_refused_with(&server, config, "unknown_ca").await;

    // Control: the same ID issued by our own CA gets through.
    let genuine = server.pki.workload("web", &ours_web).unwrap();
    let config = raw_client_config(Some(&genuine), &server.dir, &server.id, HTTP11);
    assert_eq!(attempt(server.addr(), config).await, Ok(StatusCode::OK));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_ca_issuing_an_id_of_its_own_domain_is_accepted_inbound() {
    let partner = DevPki::new(PARTNER).unwrap();
    let partner_web = partner.spiffe_id("shop", "web");
    let server = server_federated_with(&partner, std::slice::from_ref(&partner_web), "").await;

    let dir = partner.workload("web", &partner_web).unwrap();
    let config = raw_client_config(Some(&dir), &server.dir, &server.id, HTTP11);
    let tls = mtls_connect(server.addr(), config).await.unwrap();
    let response = h1_send(tls, get("/hello", "orders.shop")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = body_string(response).await;
    assert!(
        body.contains(&format!("hello {partner_web}")),
        "the app should name the verified partner workload: {body:?}"
    );
    assert_eq!(server.app.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_from_a_trust_domain_without_a_bundle_is_refused() {
    let partner = DevPki::new(PARTNER).unwrap();
    let stranger = DevPki::new("stranger.vakt.local").unwrap();
    let stranger_web = stranger.spiffe_id("shop", "web");
    // Even listed in the policy's peers, a domain with no bundle cannot get in: it fails at the
    // handshake. (The policy check refuses such a peer, so it is listed as a partner peer.)
    let server = server_federated_with(&partner, &[partner.spiffe_id("shop", "web")], "").await;

    let dir = stranger.workload("web", &stranger_web).unwrap();
    let config = raw_client_config(Some(&dir), &server.dir, &server.id, HTTP11);
    assert_refused_with(&server, config, "trust_domain_not_accepted").await;
}

// ---------------------------------------------------------------- outbound

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_refuses_our_id_signed_by_the_partner_ca() {
    let ours = DevPki::new(TD).unwrap();
    let mut partner = DevPki::new(PARTNER).unwrap();
    let partner_bundle = partner.bundle_file().unwrap();
    let web = ours.spiffe_id("shop", "web");

    // An impostor: a sidecar whose SVID is exactly the expected ID of our domain, issued by the
    // partner's CA (the bundle it is configured with is the partner's, so it starts).
    partner.trust_domain = TD.to_owned();
    let expected = ours.spiffe_id("shop", "orders");
    let impostor = federated_server(partner, std::slice::from_ref(&web), &[], "").await;
    assert_eq!(impostor.id, expected);

    let client = federated_client_sidecar(
        &ours,
        "web",
        impostor.addr(),
        &expected,
        &[(PARTNER, partner_bundle.as_path())],
    )
    .await;
    let labels = [("direction", "outbound"), ("reason", "unknown_ca")];
    let before = metric_sum(
        &metrics_text(client.admin_addr).await,
        HANDSHAKE_FAILURES,
        &labels,
    );

    let response = plain_send(client.outbound_addr.unwrap(), get("/x", "orders.shop")).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body: serde_json::Value = serde_json::from_str(&body_string(response).await).unwrap();
    assert_eq!(body["error"], "upstream_tls_failed", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("unknown_ca"),
        "the impostor's chain must not lead to our bundle: {body}"
    );
    let after = wait_for_metric(client.admin_addr, HANDSHAKE_FAILURES, &labels, before + 1.0).await;
    assert!(after >= before + 1.0, "not counted: {before} -> {after}");
    assert!(impostor.app.seen().is_empty(), "{:?}", impostor.app.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_accepts_a_partner_server_expected_by_the_egress_table() {
    let ours = DevPki::new(TD).unwrap();
    let partner = DevPki::new(PARTNER).unwrap();
    let (our_bundle, partner_bundle) =
        (ours.bundle_file().unwrap(), partner.bundle_file().unwrap());
    let web = ours.spiffe_id("shop", "web");

    // The partner's server, federated with us, allowing our web workload.
    let partner_server = federated_server(
        partner,
        std::slice::from_ref(&web),
        &[(TD, our_bundle.as_path())],
        "",
    )
    .await;
    let client = federated_client_sidecar(
        &ours,
        "web",
        partner_server.addr(),
        &partner_server.id,
        &[(PARTNER, partner_bundle.as_path())],
    )
    .await;

    let response = plain_send(client.outbound_addr.unwrap(), get("/x", "orders.shop")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = body_string(response).await;
    assert!(body.contains(&format!("hello {web}")), "{body}");
    assert_eq!(partner_server.app.seen().len(), 1);
}

// ---------------------------------------------------------------- bundle change, no resumption

/// A client session store that records what the client looked up and what the server let it
/// keep, around rustls's own in-memory cache.
#[derive(Debug)]
struct RecordingStore {
    inner: ClientSessionMemoryCache,
    lookups: AtomicUsize,
    found: AtomicUsize,
    saved: AtomicUsize,
}

impl RecordingStore {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: ClientSessionMemoryCache::new(32),
            lookups: AtomicUsize::new(0),
            found: AtomicUsize::new(0),
            saved: AtomicUsize::new(0),
        })
    }

    fn looked_up<T>(&self, value: Option<T>) -> Option<T> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        if value.is_some() {
            self.found.fetch_add(1, Ordering::SeqCst);
        }
        value
    }
}

impl ClientSessionStore for RecordingStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(server_name)
    }

    fn set_tls12_session(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.saved.fetch_add(1, Ordering::SeqCst);
        self.inner.set_tls12_session(server_name, value);
    }

    fn tls12_session(
        &self,
        server_name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.looked_up(self.inner.tls12_session(server_name))
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.saved.fetch_add(1, Ordering::SeqCst);
        self.inner.insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.looked_up(self.inner.take_tls13_ticket(server_name))
    }
}

/// A client presenting the certificate in `dir`, offering only `version`, keeping sessions in
/// `store` so that it tries to resume on every reconnect.
fn resuming_client_config(
    dir: &Path,
    server: &Server,
    version: &'static rustls::SupportedProtocolVersion,
    store: Arc<RecordingStore>,
) -> Arc<rustls::ClientConfig> {
    let mut config = client_config_with_versions(
        Some(dir),
        &server.dir,
        &server.id,
        &[b"http/1.1"],
        &[version],
    );
    config.resumption = rustls::client::Resumption::store(store);
    Arc::new(config)
}

/// When a partner's CA leaves its bundle (the file rewritten, the reloader picks it up), the
/// partner's next connection is refused, and no earlier session lets it back in: the clients
/// try to resume over TLS 1.3 and TLS 1.2, and the server never gives them anything to resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_ca_removed_from_its_bundle_is_refused_and_nothing_resumes() {
    let partner = DevPki::new(PARTNER).unwrap();
    let partner_web = partner.spiffe_id("shop", "web");
    let bundle = partner.bundle_file().unwrap();
    let server = federated_server(
        DevPki::new(TD).unwrap(),
        std::slice::from_ref(&partner_web),
        &[(PARTNER, bundle.as_path())],
        "tls:\n  min_version: \"1.2\"\n",
    )
    .await;
    let dir = partner.workload("web", &partner_web).unwrap();
    let clients: Vec<_> = [&rustls::version::TLS13, &rustls::version::TLS12]
        .into_iter()
        .map(|version| {
            let store = RecordingStore::new();
            let config = resuming_client_config(&dir, &server, version, store.clone());
            (format!("{:?}", version.version), store, config)
        })
        .collect();

    for (version, _, config) in &clients {
        for _ in 0..2 {
            let tls = mtls_connect(server.addr(), config.clone()).await.unwrap();
            assert_eq!(
                tls.get_ref().1.handshake_kind(),
                Some(rustls::HandshakeKind::Full),
                "{version}: a session was resumed"
            );
            let response = h1_send(tls, get("/", "orders.shop")).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{version}");
        }
    }

    // The partner's CA leaves the bundle: the file now holds another CA of the partner's domain.
    let replacement = DevPki::new(PARTNER).unwrap();
    vakt::dev::certs::write_atomically(&bundle, replacement.ca.cert_pem().as_bytes(), 0o644)
        .unwrap();

    // Until the reloader has swapped the bundle, connections still succeed (each a full
    // handshake); after it, every one is refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut served_meanwhile = 0;
    let (_, _, tls13) = &clients[0];
    while attempt(server.addr(), tls13.clone()).await.is_ok() {
        served_meanwhile += 1;
        assert!(
            Instant::now() < deadline,
            "still served 10 s after the partner's CA left its bundle"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (version, _, config) in &clients {
        let outcome = attempt(server.addr(), config.clone()).await;
        assert!(
            outcome.is_err(),
            "{version}: served after its CA left the bundle: {outcome:?}"
        );
    }
    // The loop's refusal and one per client, each for the CA the bundle no longer holds.
    assert_eq!(audited_refusals(&server, "unknown_ca", 3).await, 3);
    assert_eq!(server.app.seen().len(), 4 + served_meanwhile);

    for (version, store, _) in &clients {
        assert!(
            store.lookups.load(Ordering::SeqCst) > 0,
            "{version}: the client never tried to resume"
        );
        assert_eq!(
            store.saved.load(Ordering::SeqCst),
            0,
            "{version}: the server gave the client a session ticket or id to resume with"
        );
        assert_eq!(store.found.load(Ordering::SeqCst), 0, "{version}");
    }
}

// ---------------------------------------------------------------- configuration

/// `vakt check` on `yaml` (written to a temp dir): (exit code, stdout + stderr).
fn check(dir: &Path, yaml: &str, extra: &[&str]) -> (i32, String) {
    let path = dir.join("vakt.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut args = vec!["check", "--config", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = run_vakt(&args);
    (code, format!("{stdout}{stderr}"))
}

#[test]
fn check_refuses_bad_federation_entries_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let identity = "identity:\n  trust_domain: cluster.local\n  cert: c.pem\n  key: k.pem\n  trust_bundle: b.pem\n";
    let outbound = "outbound:\n  upstreams: []\n";
    let cases = [
        (
            "  federation:\n  - trust_domain: cluster.local\n    bundle: own.pem\n",
            "identity.federation[0].trust_domain: cluster.local is our own trust domain",
        ),
        (
            "  federation:\n  - trust_domain: partner.example\n    bundle: p.pem\n  - trust_domain: partner.example\n    bundle: p2.pem\n",
            "identity.federation[1].trust_domain: partner.example is already listed in identity.federation[0]",
        ),
        (
            "  federation:\n  - trust_domain: partner.example\n    bundle: \"\"\n",
            "identity.federation[0].bundle: is empty",
        ),
        (
            "  federation:\n  - trust_domain: partner.example\n    bundle: p.pem\n    ca: p.pem\n",
            "unknown field `ca`",
        ),
        (
            "  federation:\n  - trust_domain: partner.example\n",
            "missing field `bundle`",
        ),
        (
            "  federation:\n  - trust_domain: Partner.Example\n    bundle: p.pem\n",
            "trust domain may hold only lowercase letters",
        ),
        // The former list of accepted domains (no bundles of their own) is gone.
        (
            "  accepted_trust_domains: [partner.example]\n",
            "unknown field `accepted_trust_domains`",
        ),
    ];
    for (federation, expected) in cases {
        let (code, out) = check(
            tmp.path(),
            &format!("{identity}{federation}{outbound}"),
            &[],
        );
        assert_eq!(code, 2, "expected a refusal for {federation:?}: {out}");
        assert!(
            out.contains(expected),
            "expected {expected:?} for {federation:?} in: {out}"
        );
    }

    // An egress destination in a trust domain with no bundle.
    let (code, out) = check(
        tmp.path(),
        &format!(
            "{identity}outbound:\n  upstreams:\n  - authority: a\n    address: a:1\n    spiffe_id: spiffe://partner.example/ns/a/sa/b\n"
        ),
        &[],
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("outbound.upstreams[0].spiffe_id: spiffe://partner.example/ns/a/sa/b is outside the accepted trust domains (cluster.local)"),
        "{out}"
    );
}

#[test]
fn check_with_certs_loads_every_bundle_and_names_the_bad_one() {
    let ours = DevPki::new(TD).unwrap();
    let partner = DevPki::new(PARTNER).unwrap();
    let dir = ours
        .workload("orders", &ours.spiffe_id("shop", "orders"))
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let identity = |bundle: &Path| {
        format!(
            "identity:\n  trust_domain: {TD}\n  cert: {}\n  key: {}\n  trust_bundle: {}\n  federation:\n  - trust_domain: {PARTNER}\n    bundle: {}\noutbound:\n  upstreams:\n  - authority: partner\n    address: partner:15443\n    spiffe_id: spiffe://{PARTNER}/ns/shop/sa/orders\n",
            dir.join(CERT_FILE).display(),
            dir.join(KEY_FILE).display(),
            dir.join(BUNDLE_FILE).display(),
            bundle.display()
        )
    };

    let good = partner.bundle_file().unwrap();
    let (code, out) = check(tmp.path(), &identity(&good), &["--with-certs"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK"), "{out}");

    let missing = tmp.path().join("missing.pem");
    for (bundle, problem) in [
        (missing.as_path(), "cannot read"),
        (empty.as_path(), "no certificate found"),
    ] {
        let (code, out) = check(tmp.path(), &identity(bundle), &["--with-certs"]);
        assert_eq!(code, 2, "{out}");
        let expected = format!(
            "identity.federation[0].bundle: {problem} {}",
            bundle.display()
        );
        let expected_alt = format!(
            "identity.federation[0].bundle: {}: {problem}",
            bundle.display()
        );
        assert!(
            out.contains(&expected) || out.contains(&expected_alt),
            "expected the key, the file and {problem:?} in: {out}"
        );
    }
}

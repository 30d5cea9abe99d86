//! The whole inbound request stack in process: observe (metrics, audit event to a real file
//! audit log), hygiene, authentication (verified-token cache), policy, rate limit, and a tiny
//! app service in place of the pooled client to the app. No sockets on the request path: each
//! iteration is `ServiceExt::oneshot` on the stack plus reading the response body to its end
//! (which is when the audit event is handed to the log). `cargo bench --bench stack`.
//!
//! The stages are built as `App::start` builds them, from a `Config`: `CertStore::load`,
//! `Pseudonymiser::from_config`, an `AuditLog` on a `FileSink` (the config's fsync policy, 1s;
//! its own writer thread), `IssuerKeys` refreshed once from the dev issuer's JWKS (instead of
//! the background refresher), `PolicyStore::load`, and the Prometheus recorder installed. The
//! request is what
//! the mTLS listener hands the stack for an HTTP/1.1 connection: the peer's `PeerIdentity`
//! (from a real SVID of the dev PKI) and the framing scanner's verdict (`Ok`) in the
//! extensions, HTTP/1.1, a `Host` header and `Authorization: Bearer <token>` from the dev
//! issuer.
//!
//! Setup asserts that the measured requests really take the allowed path (200 from the app, an
//! `allow` line in the audit file) or, for the contrast, the `no_route` denial; every iteration
//! checks the status, and at the end no audit event may have been dropped (a full queue would
//! turn requests into 503s) and no token verification may have missed the cache. A last
//! contrast runs the same stack with `Observe` given no auditor.
//!
//! The runtime is current-thread (the sidecar's runtime when the pod has one CPU); the audit
//! writer thread runs beside it, so on a small machine it competes with the measured loop for
//! CPU: compare figures from the same run.

mod common;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use metrics_exporter_prometheus::PrometheusHandle;
use tower::ServiceExt;
use vakt::Direction;
use vakt::audit::{
    AuditConfig, AuditLog, ChainKey, ChainSettings, CheckpointSettings, FileSink, FileSinkConfig,
    FsyncPolicy,
};
use vakt::audit::{AuditSink, Auditor};
use vakt::authn::http_client::IdpClient;
use vakt::authn::jwks::IssuerKeys;
use vakt::authn::stage::Authenticate;
use vakt::authn::verify::Verifier;
use vakt::config::Config;
use vakt::dev::certs::LeafSpec;
use vakt::dev::idp::{self as devidp, DevIdp, KeyStore, MintOptions};
use vakt::dev::mesh::{DevPki, write_policy};
use vakt::hygiene::{FramingVerdict, Hygiene};
use vakt::identity::{PeerIdentity, SpiffeId};
use vakt::observe::Observe;
use vakt::policy::reload::PolicyStore;
use vakt::policy::stage::{PolicyStage, RateLimitStage};
use vakt::pseudonym::Pseudonymiser;
use vakt::stack::{self, BoxStack, Req, Resp};
use vakt::tls::CertStore;

const TD: &str = "cluster.local";
const NATIONAL_ID: &str = "12345678901";
const ALLOWED_PATH: &str = "/patients/12345678901/journal";
const NO_ROUTE_PATH: &str = "/nowhere/at/all";
const ROTATION: usize = 1000;

/// One route: the caller's sidecar identity, a token with the scope and a high level, the
/// `{pid}` bound to the token's national id, and a rate limit that never triggers here.
const POLICY: &str = r#"
routes:
  - id: journal
    methods: [GET]
    path: /patients/{pid}/journal
    rate_limit: { per_second: 1000000, burst: 1000000 }
    allow:
      - peers: [spiffe://cluster.local/ns/shop/sa/web]
        min_loa: high
        scopes_any: [journal.read]
        bind: { pid: national_id }
"#;

/// Everything the stack needs kept alive, and what the checks read.
struct Bench {
    stack: BoxStack,
    /// The same stack with `Observe` given no auditor (contrast only).
    unaudited: BoxStack,
    peer: PeerIdentity,
    auditor: Arc<Auditor>,
    audit_file: PathBuf,
    metrics: PrometheusHandle,
    app_calls: Arc<AtomicU64>,
    /// `Bearer <token>` values, distinct tokens (different `jti`).
    bearers: Vec<HeaderValue>,
    _idp: DevIdp,
    _pki: DevPki,
    _keys_dir: tempfile::TempDir,
    _audit_dir: tempfile::TempDir,
}

/// The SVID of the calling workload, as the listener turns it into a `PeerIdentity`.
fn peer_identity(pki: &DevPki) -> PeerIdentity {
    let web = pki.spiffe_id("shop", "web");
    let leaf = pki
        .issue(&LeafSpec::svid(&web, Duration::from_secs(3600)))
        .expect("peer SVID");
    let mut cert_sha256 = [0u8; 32];
    cert_sha256.copy_from_slice(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &leaf.cert_der).as_ref(),
    );
    PeerIdentity::new(
        SpiffeId::from_svid_der(&leaf.cert_der).expect("SVID"),
        cert_sha256,
    )
}

fn config_yaml(
    dir: &Path,
    audit_file: &Path,
    policy: &Path,
    key_file: &Path,
    issuer: &str,
) -> String {
    format!(
        "identity:
  trust_domain: {TD}
  cert: {cert}
  key: {key}
  trust_bundle: {bundle}
audit:
  sink: file
  file:
    path: {audit}
admin:
  listen: 127.0.0.1:0
inbound:
  listen: 127.0.0.1:0
  app: 127.0.0.1:9
  policy: {policy}
pseudonymisation:
  key_file: {key_file}
  key_id: k1
oidc:
  issuers:
    - issuer: {issuer}
      profile: helseid
      audiences: [journal-api]
      algorithms: [RS256]
      allow_insecure_loopback: true
      dpop:
        required: false
",
        cert = dir.join(vakt::dev::certs::CERT_FILE).display(),
        key = dir.join(vakt::dev::certs::KEY_FILE).display(),
        bundle = dir.join(vakt::dev::certs::BUNDLE_FILE).display(),
        audit = audit_file.display(),
        policy = policy.display(),
        key_file = key_file.display(),
    )
}

/// Where the audit file goes: a temporary directory in `$VAKT_BENCH_AUDIT_DIR` if set, else in
/// `/dev/shm` (tmpfs) when there is one, else in the default temporary directory.
///
/// tmpfs by default because the loop runs at saturation (tens of thousands of requests a
/// second, ~860 bytes of audit each): on a VM disk, with the default 1s fsync and 64 MiB
/// rotation, the writer thread stalls long enough for the 8,192-event queue to fill, and
/// `on_audit_failure: deny` then answers 503 `audit_unavailable` (the per-iteration status
/// check stops the benchmark). That is the disk's cost, not the request path's; point
/// `VAKT_BENCH_AUDIT_DIR` at a disk directory to see it.
fn audit_dir() -> tempfile::TempDir {
    let builder = {
        let mut b = tempfile::Builder::new();
        b.prefix("vakt-bench-audit");
        b
    };
    match std::env::var_os("VAKT_BENCH_AUDIT_DIR") {
        Some(dir) => builder.tempdir_in(dir),
        None if Path::new("/dev/shm").is_dir() => builder.tempdir_in("/dev/shm"),
        None => builder.tempdir(),
    }
    .expect("audit tempdir")
}

/// `app::start_audit_log` (private) for `sink: file`.
fn start_audit_log(config: &Config) -> AuditLog {
    assert_eq!(config.audit.sink, AuditSink::File);
    let file = config.audit.file.as_ref().expect("audit file");
    AuditLog::start(
        FileSink::new(FileSinkConfig {
            path: file.path.clone(),
            max_bytes: file.max_bytes,
            max_files: file.max_files,
            fsync: config.audit.fsync().unwrap_or(FsyncPolicy::Always),
        })
        .expect("audit file sink"),
        AuditConfig {
            capacity: config.audit.queue_capacity,
            ..AuditConfig::default()
        },
        chain_settings(config),
    )
}

/// `app::start_audit_log`'s chain key and checkpoints.
fn chain_settings(config: &Config) -> ChainSettings {
    let key = config.audit.chain_key.as_ref().expect("audit chain key");
    ChainSettings {
        key: Arc::new(ChainKey::from_file(&key.key_id, &key.key_file).expect("chain key")),
        checkpoints: CheckpointSettings {
            file: config.audit.checkpoint_file.clone(),
            stdout: config.audit.checkpoint_stdout,
            interval: config.audit.checkpoint_interval,
            every: config.audit.checkpoint_every,
        },
    }
}

/// Build the stack as `App::start` does (inside the runtime: the dev issuer serves from it).
async fn setup() -> Bench {
    let metrics = vakt::metrics::install(None);
    let keys_dir = tempfile::tempdir().expect("tempdir");
    let keys = Arc::new(KeyStore::open_or_create(keys_dir.path()).expect("keys"));
    let idp = DevIdp::start(([127, 0, 0, 1], 0).into(), keys, "")
        .await
        .expect("dev idp");
    let pki = DevPki::new(TD).expect("dev pki");
    let dir = pki
        .workload("journal", &pki.spiffe_id("records", "journal"))
        .expect("own SVID");
    let policy = write_policy(&dir, POLICY).expect("policy file");
    let key_file = dir.join("pseudonym.key");
    std::fs::write(&key_file, [0x42u8; 32]).expect("pseudonym key");
    let audit_dir = audit_dir();
    let audit_file = audit_dir.path().join("audit.log");
    let config = Config::from_yaml(&config_yaml(
        &dir,
        &audit_file,
        &policy,
        &key_file,
        &idp.issuer,
    ))
    .expect("bench config");

    let certs =
        Arc::new(CertStore::load(&config.identity, config.tls.min_version).expect("certificates"));
    let pseudonyms = Arc::new(
        Pseudonymiser::from_config(config.pseudonymisation.as_ref().expect("key"))
            .expect("pseudonymiser"),
    );
    let auditor = Arc::new(Auditor::new(
        start_audit_log(&config),
        pseudonyms.clone(),
        config.audit.on_audit_failure,
        config.audit.queue_capacity,
    ));
    let oidc = config.oidc.as_ref().expect("oidc");
    let client = IdpClient::new(None).expect("idp client");
    let mut issuers = Vec::new();
    for issuer in &oidc.issuers {
        let keys = Arc::new(IssuerKeys::new(
            Arc::new(issuer.clone()),
            oidc,
            client.clone(),
        ));
        keys.refresh("scheduled").await.expect("JWKS fetched");
        issuers.push(keys);
    }
    let verifier = Arc::new(Verifier::new(issuers, oidc));
    let inbound = config.inbound.as_ref().expect("inbound");
    let store =
        Arc::new(PolicyStore::load(&inbound.policy, config.policy_context()).expect("policy"));

    // The local app: 200 with a small JSON body (boxed, as `stack::inbound` takes it).
    let app_calls = Arc::new(AtomicU64::new(0));
    let calls = app_calls.clone();
    let app = tower::service_fn(move |_req: Req| {
        calls.fetch_add(1, Ordering::Relaxed);
        async {
            let mut response = Response::new(vakt::body::full(&b"{\"entries\":[]}"[..]));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok::<Resp, Infallible>(response)
        }
    });
    let stack = stack::inbound(
        Observe::new(Direction::Inbound, Some(auditor.clone())),
        Hygiene::inbound(
            inbound.header_rules(&config.hygiene),
            config.hygiene.forwarded,
            certs.clone(),
        ),
        Authenticate::new(Some(verifier.clone()), Some(store.clone())),
        PolicyStage::new(store.clone(), pseudonyms.clone()),
        RateLimitStage,
        BoxStack::new(app.clone()),
    );
    // The same stages without an audit log, to see what the audit trail costs in this setup.
    let unaudited = stack::inbound(
        Observe::new(Direction::Inbound, None),
        Hygiene::inbound(
            inbound.header_rules(&config.hygiene),
            config.hygiene.forwarded,
            certs.clone(),
        ),
        Authenticate::new(Some(verifier), Some(store.clone())),
        PolicyStage::new(store, pseudonyms),
        RateLimitStage,
        BoxStack::new(app),
    );

    let person = common::citizen(NATIONAL_ID, "journal-api");
    let claims = devidp::claims(vakt::authn::Profile::Helseid, &person);
    let options = MintOptions {
        lifetime: Duration::from_secs(3600),
        ..MintOptions::default()
    };
    let bearers = (0..ROTATION)
        .map(|i| {
            let mut claims = claims.clone();
            claims["jti"] = serde_json::json!(format!("bench-{i}"));
            let token = idp.mint(claims, &options).expect("mint");
            HeaderValue::from_str(&format!("Bearer {token}")).expect("header value")
        })
        .collect();

    Bench {
        stack,
        unaudited,
        peer: peer_identity(&pki),
        auditor,
        audit_file,
        _audit_dir: audit_dir,
        metrics,
        app_calls,
        bearers,
        _idp: idp,
        _pki: pki,
        _keys_dir: keys_dir,
    }
}

impl Bench {
    /// A request as the mTLS listener hands it to the stack (HTTP/1.1 connection).
    fn request(&self, path: &str, bearer: &HeaderValue) -> Req {
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(path)
            .version(Version::HTTP_11)
            .header(HOST, "journal.records.svc")
            .header(AUTHORIZATION, bearer.clone())
            .body(vakt::body::empty())
            .expect("request");
        req.extensions_mut().insert(self.peer.clone());
        req.extensions_mut().insert(FramingVerdict(Ok(())));
        req
    }

    /// One exchange: the stack, then the response body read to its end (the audit event is
    /// recorded then). Returns the status.
    async fn exchange(&self, path: &str, bearer: &HeaderValue) -> StatusCode {
        self.exchange_on(&self.stack, path, bearer).await
    }

    async fn exchange_on(&self, stack: &BoxStack, path: &str, bearer: &HeaderValue) -> StatusCode {
        let response = stack
            .clone()
            .oneshot(self.request(path, bearer))
            .await
            .unwrap_or_else(|never| match never {});
        let status = response.status();
        let body = response.into_body().collect().await.expect("body");
        std::hint::black_box(body.to_bytes());
        status
    }

    /// Wait until the audit log has written `n` events, then return the file's lines.
    async fn audit_lines(&self, n: u64) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.auditor.log.written() < n {
            assert!(Instant::now() < deadline, "audit events not written");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        std::fs::read_to_string(&self.audit_file)
            .expect("audit file")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Wait until every accepted audit event is written.
    async fn drain_audit(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.auditor.log.queue_depth() > 0 {
            assert!(Instant::now() < deadline, "audit queue not drained");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `vakt_token_cache_lookups_total{result="miss"}` so far.
    fn token_cache_misses(&self) -> u64 {
        self.metrics
            .render()
            .lines()
            .find(|l| {
                l.starts_with("vakt_token_cache_lookups_total") && l.contains("result=\"miss\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }

    /// Nothing refused by the audit log (a full queue would turn requests into 503s).
    fn assert_no_audit_loss(&self) {
        assert_eq!(self.auditor.log.dropped(), 0, "audit events were dropped");
        assert!(self.auditor.log.healthy(), "audit sink unhealthy");
    }
}

/// Prove the measured requests take the intended paths, and warm the token cache.
async fn check(bench: &Bench) {
    let first = &bench.bearers[0];
    assert_eq!(bench.exchange(ALLOWED_PATH, first).await, StatusCode::OK);
    assert_eq!(
        bench.app_calls.load(Ordering::Relaxed),
        1,
        "app not reached"
    );
    let lines = bench.audit_lines(1).await;
    let line = lines.last().expect("an audit line");
    for expected in [
        "\"decision\":\"allow\"",
        "\"reason\":\"rule_matched\"",
        "\"route\":\"journal\"",
        "\"status\":200",
        "\"peer\":\"spiffe://cluster.local/ns/shop/sa/web\"",
        "\"national_id_pseudonym\":\"k1:",
    ] {
        assert!(line.contains(expected), "{expected} not in {line}");
    }
    assert!(!line.contains(NATIONAL_ID), "national id in clear: {line}");
    eprintln!(
        "allowed request's audit line ({} bytes): {line}",
        line.len()
    );

    assert_eq!(
        bench.exchange(NO_ROUTE_PATH, first).await,
        StatusCode::FORBIDDEN
    );
    let lines = bench.audit_lines(2).await;
    let line = lines.last().expect("an audit line");
    assert!(
        line.contains("\"decision\":\"deny\"") && line.contains("\"reason\":\"no_route\""),
        "{line}"
    );
    assert_eq!(
        bench.app_calls.load(Ordering::Relaxed),
        1,
        "denial reached app"
    );

    // Every token of the rotation verified once (signature), so the benchmark sees cache hits.
    for bearer in &bench.bearers {
        assert_eq!(bench.exchange(ALLOWED_PATH, bearer).await, StatusCode::OK);
    }
    bench.audit_lines(2 + ROTATION as u64).await;
    bench.assert_no_audit_loss();
}

/// Run `iters` exchanges inside one `block_on` (what criterion's `to_async` does; its
/// `async_tokio` feature is not enabled here), cycling through `bearers`.
fn run(
    rt: &tokio::runtime::Runtime,
    bench: &Bench,
    stack: &BoxStack,
    path: &'static str,
    bearers: &[HeaderValue],
    expected: StatusCode,
    iters: u64,
) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for i in 0..iters {
            let bearer = &bearers[i as usize % bearers.len()];
            let status = bench.exchange_on(stack, path, bearer).await;
            if status != expected {
                let log = &bench.auditor.log;
                panic!(
                    "status {status}, expected {expected} (audit log: healthy {}, queue depth {}, \
                     written {}, dropped {}, sink failures {})",
                    log.healthy(),
                    log.queue_depth(),
                    log.written(),
                    log.dropped(),
                    log.failures()
                );
            }
        }
        start.elapsed()
    })
}

fn inbound_stack(c: &mut Criterion) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // Nothing on the request path waits on another task (the audit writer is a thread of its
    // own), so the whole exchange runs on the `block_on` thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let bench = rt.block_on(setup());
    rt.block_on(check(&bench));

    let mut group = c.benchmark_group("stack");
    let misses = bench.token_cache_misses();
    let allowed = (ALLOWED_PATH, StatusCode::OK);
    let denied = (NO_ROUTE_PATH, StatusCode::FORBIDDEN);
    // (name, path and the status it must get, how many tokens in rotation)
    let audited = [
        ("allowed, token cached (1 token)", allowed, 1),
        ("allowed, 1,000 tokens in rotation", allowed, ROTATION),
        ("denied no_route", denied, 1),
    ];
    for (name, (path, expected), tokens) in audited {
        let bearers = &bench.bearers[..tokens];
        group.bench_function(name, |b| {
            b.iter_custom(|iters| run(&rt, &bench, &bench.stack, path, bearers, expected, iters))
        });
        bench.assert_no_audit_loss();
    }
    // Let the audit writer catch up first, so it does not run during the contrast.
    rt.block_on(bench.drain_audit());
    let (path, expected) = allowed;
    let (bearers, unaudited) = (&bench.bearers[..1], &bench.unaudited);
    group.bench_function("allowed, token cached, no audit log (contrast)", |b| {
        b.iter_custom(|iters| run(&rt, &bench, unaudited, path, bearers, expected, iters))
    });
    group.finish();
    bench.assert_no_audit_loss();
    assert_eq!(
        bench.token_cache_misses(),
        misses,
        "a token verification missed the cache"
    );
    // Write out what is queued before the temporary directories go.
    rt.block_on(bench.auditor.log.clone().shutdown(Duration::from_secs(30)))
        .expect("audit log shut down");
    eprintln!(
        "audit events written: {}, dropped: {}",
        bench.auditor.log.written(),
        bench.auditor.log.dropped()
    );
}

criterion_group!(benches, inbound_stack);
criterion_main!(benches);

//! End-user tokens end to end: a real test issuer serving discovery and JWKS over HTTP, tokens
//! minted by it, sent over real mTLS to a server-side vakt in front of the echo app.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};
use vakt::app::App;
use vakt::authn::{Alg, Loa};
use vakt::config::Config;
use vakt::dev::idp::{self as devidp, DevIdp, KeyStore, MintOptions, Person};
use vakt::dev::mesh::{DevPki, EchoApp, base_config_yaml, write_policy};

const PID: &str = "12345678901";
const OTHER_PID: &str = "10987654321";

const POLICY: &str = r#"
routes:
  - id: health
    methods: [GET]
    path: /healthz
    token: none
    public: true
  - id: journal
    methods: [GET]
    path: /patients/{pid}/journal
    allow:
      - peers: [spiffe://test.vakt.local/ns/shop/sa/web]
        min_loa: high
        scopes_any: [journal.read]
        bind: { pid: national_id }
  - id: fresh
    methods: [POST]
    path: /patients/{pid}/consent
    allow:
      - peers: [spiffe://test.vakt.local/ns/shop/sa/web]
        max_auth_age: 5m
  - id: forwarded
    methods: [GET]
    path: /raw/{pid}
    forward_token: true
    forward_national_id: true
    allow:
      - peers: [spiffe://test.vakt.local/ns/shop/sa/web]
"#;

struct Setup {
    _pki: DevPki,
    app: EchoApp,
    vakt: App,
    idp: DevIdp,
    _keys_dir: tempfile::TempDir,
    web: Arc<rustls::ClientConfig>,
    /// A workload of the mesh that no rule of [`POLICY`] admits.
    batch: Arc<rustls::ClientConfig>,
}

async fn setup_with(down_at_start: bool) -> Setup {
    init();
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(KeyStore::open_or_create(keys_dir.path()).unwrap());
    let idp = DevIdp::start("127.0.0.1:0".parse().unwrap(), keys, "/auth/realms/test")
        .await
        .unwrap();
    idp.set_down(down_at_start);
    let pki = DevPki::new(TD).unwrap();
    let app = EchoApp::start().await.unwrap();
    let id = pki.spiffe_id("shop", "orders");
    let dir = pki.workload("orders", &id).unwrap();
    let policy = write_policy(&dir, POLICY).unwrap();
    let yaml = format!(
        "{}inbound:\n  listen: 127.0.0.1:0\n  app: {}\n  policy: {}\noidc:\n  jwks_refresh_min: 1h\n  jwks_refresh_max: 2h\n  issuers:\n    - issuer: {}\n      profile: helseid\n      audiences: [journal-api]\n      algorithms: [RS256, ES256]\n      max_token_lifetime: 1h\n      allow_insecure_loopback: true\n      dpop:\n        required: false\n",
        base_config_yaml(&dir, TD),
        app.addr,
        policy.display(),
        idp.issuer
    );
    let vakt = App::start(Config::from_yaml(&yaml).unwrap()).await.unwrap();
    let web_dir = pki.workload("web", &pki.spiffe_id("shop", "web")).unwrap();
    let web = raw_client_config(Some(&web_dir), &dir, &id, &[b"http/1.1"]);
    let batch_dir = pki
        .workload("batch", &pki.spiffe_id("shop", "batch"))
        .unwrap();
    let batch = raw_client_config(Some(&batch_dir), &dir, &id, &[b"http/1.1"]);
    if !down_at_start {
        wait_ready(vakt.admin_addr).await;
    }
    Setup {
        _pki: pki,
        app,
        vakt,
        idp,
        _keys_dir: keys_dir,
        web,
        batch,
    }
}

async fn wait_ready(admin: std::net::SocketAddr) {
    for _ in 0..200 {
        if plain_send(admin, get("/ready", "admin")).await.status() == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("vakt never became ready");
}

fn citizen(level: Loa, pid: &str) -> Person {
    Person {
        sub: "citizen-1".into(),
        national_id: Some(pid.into()),
        level,
        amr: vec!["BankID".into()],
        auth_time: Some(now() - 60),
        client_id: "journal-web".into(),
        scopes: vec!["journal.read".into()],
        audience: "journal-api".into(),
        org_number: None,
        hpr_number: None,
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn token(s: &Setup, person: &Person, opts: &MintOptions) -> String {
    s.idp
        .mint(devidp::claims(vakt::authn::Profile::Helseid, person), opts)
        .unwrap()
}

async fn send(
    s: &Setup,
    method: &str,
    path: &str,
    authorization: &[&str],
) -> (u16, http::HeaderMap, String) {
    let tls = mtls_connect(s.vakt.inbound_addr.unwrap(), s.web.clone())
        .await
        .unwrap();
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "orders.shop");
    for a in authorization {
        req = req.header("authorization", *a);
    }
    let response = h1_send(tls, req.body(Full::default()).unwrap())
        .await
        .unwrap();
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (status, headers, body_string(response).await)
}

fn error_code(body: &str) -> String {
    serde_json::from_str::<Value>(body).unwrap()["error"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A GET of `path` with `token` as Bearer must be refused with 401 `code`, and reach no app.
async fn assert_token_refused(s: &Setup, path: &str, token: &str, code: &str, what: &str) {
    let seen = s.app.seen().len();
    let (status, _, body) = send(s, "GET", path, &[&format!("Bearer {token}")]).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (401, code),
        "{what}: {body}"
    );
    assert_eq!(
        s.app.seen().len(),
        seen,
        "{what}: the token reached the app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_reaches_the_app_as_a_pseudonymised_principal() {
    let s = setup_with(false).await;
    let t = token(&s, &citizen(Loa::High, PID), &MintOptions::default());
    let (status, _, body) = send(
        &s,
        "GET",
        &format!("/patients/{PID}/journal"),
        &[&format!("Bearer {t}")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = s.app.seen();
    let h = &seen[0].headers;
    assert!(
        !h.contains_key("authorization"),
        "the token must not reach the app"
    );
    assert_eq!(h.get("x-vakt-loa").unwrap(), "high");
    assert_eq!(h.get("x-vakt-client-id").unwrap(), "journal-web");
    assert_eq!(
        h.get("x-vakt-issuer").unwrap().to_str().unwrap(),
        s.idp.issuer
    );
    let pseudonym = h
        .get("x-vakt-national-id-pseudonym")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(pseudonym.starts_with("ephemeral:") && !pseudonym.contains(PID));
    assert!(!h.contains_key("x-vakt-national-id"));
    for (_, v) in h.iter() {
        assert!(
            !v.to_str().unwrap_or_default().contains(&t),
            "raw token leaked"
        );
    }

    // The audit trail has the citizen as a pseudonym only: no token, no raw national id.
    let audit_file = s._pki.path().join("orders").join("audit.log");
    let mut trail = String::new();
    for _ in 0..100 {
        trail = std::fs::read_to_string(&audit_file).unwrap_or_default();
        if trail.contains("national_id_pseudonym") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        trail.contains(&format!("\"national_id_pseudonym\":\"{pseudonym}\"")),
        "{trail}"
    );
    assert!(!trail.contains(PID) && !trail.contains(&t[..40]), "{trail}");

    // The same token again is a cache hit (no signature check).
    let before = metric_sum(
        &metrics_text(s.vakt.admin_addr).await,
        "vakt_token_cache_lookups_total",
        &[("result", "hit")],
    );
    let (status, _, _) = send(
        &s,
        "GET",
        &format!("/patients/{PID}/journal"),
        &[&format!("bearer {t}")],
    )
    .await;
    assert_eq!(status, 200);
    let after = metric_sum(
        &metrics_text(s.vakt.admin_addr).await,
        "vakt_token_cache_lookups_total",
        &[("result", "hit")],
    );
    assert!(after >= before + 1.0);

    // A route that forwards explicitly gets the token and the national id.
    let (status, _, _) = send(&s, "GET", "/raw/x", &[&format!("Bearer {t}")]).await;
    assert_eq!(status, 200);
    let seen = s.app.seen();
    let h = &seen.last().unwrap().headers;
    assert_eq!(
        h.get("authorization").unwrap().to_str().unwrap(),
        format!("Bearer {t}")
    );
    assert_eq!(h.get("x-vakt-national-id").unwrap(), PID);
}

fn tamper_payload(token: &str, edit: impl Fn(&str) -> String) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(edit(&payload)),
        parts[2]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_refused_with_its_reason_and_reaches_nothing() {
    let s = setup_with(false).await;
    let person = citizen(Loa::High, PID);
    let good = token(&s, &person, &MintOptions::default());
    let with = |f: &dyn Fn(&mut MintOptions)| {
        let mut o = MintOptions::default();
        f(&mut o);
        token(&s, &person, &o)
    };
    let claims_with = |edit: &dyn Fn(&mut Value)| {
        let mut c = devidp::claims(vakt::authn::Profile::Helseid, &person);
        edit(&mut c);
        s.idp.mint(c, &MintOptions::default()).unwrap()
    };
    let rs_kid = s.idp.keys.current_kid(Alg::RS256).unwrap();
    // Flip a character in the middle of the signature (the last one also carries padding bits,
    // so changing it may make the base64 non-canonical rather than the signature wrong).
    let mut sig_flipped = good.clone().into_bytes();
    let at = sig_flipped.len() - 20;
    sig_flipped[at] = if sig_flipped[at] == b'A' { b'B' } else { b'A' };
    let sig_flipped = String::from_utf8(sig_flipped).unwrap();

    let cases: Vec<(&str, Vec<String>, String)> = vec![
        (
            "token_expired",
            vec![format!(
                "Bearer {}",
                with(&|o| o.issued_at_offset = Some(-3600))
            )],
            "".into(),
        ),
        (
            "token_not_yet_valid",
            vec![format!(
                "Bearer {}",
                with(&|o| o.not_before_offset = Some(600))
            )],
            "".into(),
        ),
        (
            "wrong_audience",
            vec![format!(
                "Bearer {}",
                claims_with(&|c| c["aud"] = json!("other-api"))
            )],
            "".into(),
        ),
        (
            "unknown_issuer",
            vec![format!(
                "Bearer {}",
                claims_with(&|c| c["iss"] = json!("https://evil.example"))
            )],
            "".into(),
        ),
        (
            "alg_not_allowed",
            vec![format!("Bearer {}", with(&|o| o.alg = Alg::PS256))],
            "".into(),
        ),
        (
            "header_not_allowed",
            vec![format!(
                "Bearer {}",
                with(&|o| {
                    o.extra_header
                        .insert("jku".into(), json!("https://evil.example/jwks"));
                })
            )],
            "".into(),
        ),
        (
            "header_not_allowed",
            vec![format!(
                "Bearer {}",
                with(&|o| {
                    o.extra_header
                        .insert("jwk".into(), json!({"kty": "oct", "k": "AA"}));
                })
            )],
            "".into(),
        ),
        (
            "crit_header",
            vec![format!(
                "Bearer {}",
                with(&|o| {
                    o.extra_header.insert("crit".into(), json!(["exp"]));
                })
            )],
            "".into(),
        ),
        (
            "wrong_token_type",
            vec![format!("Bearer {}", with(&|o| o.typ = Some("JWT".into())))],
            "".into(),
        ),
        (
            "wrong_token_type",
            vec![format!("Bearer {}", with(&|o| o.typ = None))],
            "".into(),
        ),
        (
            "id_token",
            vec![format!(
                "Bearer {}",
                claims_with(&|c| c["nonce"] = json!("n-0S6_WzA2Mj"))
            )],
            "".into(),
        ),
        (
            "bound_token",
            vec![format!(
                "Bearer {}",
                claims_with(&|c| c["cnf"] = json!({"jkt": "0ZcOCORZNYy"}))
            )],
            "".into(),
        ),
        (
            "unknown_key",
            vec![format!(
                "Bearer {}",
                with(&|o| o.kid = Some("no-such-kid".into()))
            )],
            "".into(),
        ),
        (
            "key_alg_mismatch",
            vec![format!(
                "Bearer {}",
                with(&|o| {
                    o.alg = Alg::ES256;
                    o.kid = Some(rs_kid.clone());
                })
            )],
            "".into(),
        ),
        (
            "bad_signature",
            vec![format!("Bearer {sig_flipped}")],
            "".into(),
        ),
        (
            "bad_signature",
            vec![format!(
                "Bearer {}",
                tamper_payload(&good, |p| p.replace("citizen-1", "citizen-2"))
            )],
            "".into(),
        ),
        (
            "duplicate_member",
            vec![format!(
                "Bearer {}",
                tamper_payload(&good, |p| p.replacen('{', "{\"sub\":\"admin\",", 1))
            )],
            "".into(),
        ),
        (
            "lifetime_too_long",
            vec![format!(
                "Bearer {}",
                with(&|o| o.lifetime = Duration::from_secs(7200))
            )],
            "".into(),
        ),
        (
            "issued_in_future",
            vec![format!(
                "Bearer {}",
                claims_with(&|c| {
                    c["iat"] = json!(now() + 600);
                    c["nbf"] = json!(now() - 10);
                    c["exp"] = json!(now() + 900);
                })
            )],
            "".into(),
        ),
        (
            "missing_claim",
            vec![format!(
                "Bearer {}",
                claims_with(&|c| c["exp"] = Value::Null)
            )],
            "".into(),
        ),
        (
            "malformed_token",
            vec![format!("Bearer {}", good.rsplit_once('.').unwrap().0)],
            "".into(),
        ),
        (
            "malformed_token",
            vec!["Bearer not-a-jwt".into()],
            "".into(),
        ),
        (
            "not_bearer",
            vec!["Basic d2ViOnNlY3JldA==".into()],
            "".into(),
        ),
        (
            "multiple_authorization",
            vec![format!("Bearer {good}"), format!("Bearer {good}")],
            "".into(),
        ),
        (
            "token_too_large",
            vec![format!("Bearer {}", "a".repeat(9000))],
            "".into(),
        ),
        ("token_in_query", vec![], format!("?access_token={good}")),
    ];
    for (expected, auth, query) in cases {
        let auth: Vec<&str> = auth.iter().map(String::as_str).collect();
        let (status, headers, body) =
            send(&s, "GET", &format!("/patients/{PID}/journal{query}"), &auth).await;
        assert_eq!(status, 401, "{expected}: {body}");
        assert_eq!(error_code(&body), expected, "{body}");
        assert!(
            headers
                .get("www-authenticate")
                .unwrap()
                .to_str()
                .unwrap()
                .contains(r#"error="invalid_token""#)
        );
        assert!(!body.contains(&good[..40]), "the token must not be echoed");
    }
    assert!(s.app.seen().is_empty(), "a refused token reached the app");
    let text = metrics_text(s.vakt.admin_addr).await;
    assert!(
        metric_sum(
            &text,
            "vakt_authn_failures_total",
            &[("reason", "bad_signature")]
        ) >= 2.0
    );
    assert!(!text.contains(&good[..40]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_conditions_step_up_scope_binding_and_missing_token() {
    let s = setup_with(false).await;
    let path = format!("/patients/{PID}/journal");
    // No token on a route that requires one.
    let (status, headers, body) = send(&s, "GET", &path, &[]).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (401, "token_required")
    );
    assert_eq!(
        headers.get("www-authenticate").unwrap(),
        r#"Bearer realm="vakt""#
    );
    // Level 3 where 4 is needed: RFC 9470 step-up.
    let t = token(&s, &citizen(Loa::Substantial, PID), &MintOptions::default());
    let (status, headers, body) = send(&s, "GET", &path, &[&format!("Bearer {t}")]).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (401, "insufficient_assurance")
    );
    let challenge = headers.get("www-authenticate").unwrap().to_str().unwrap();
    assert!(
        challenge.contains(r#"error="insufficient_user_authentication""#)
            && challenge.contains(r#"acr_values="idporten-loa-high""#),
        "{challenge}"
    );
    // A citizen reading someone else's record.
    let t = token(&s, &citizen(Loa::High, PID), &MintOptions::default());
    let (status, _, body) = send(
        &s,
        "GET",
        &format!("/patients/{OTHER_PID}/journal"),
        &[&format!("Bearer {t}")],
    )
    .await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (403, "binding_mismatch")
    );
    // Missing scope.
    let mut no_scope = citizen(Loa::High, PID);
    no_scope.scopes = vec!["profile".into()];
    let t = token(&s, &no_scope, &MintOptions::default());
    let (status, headers, body) = send(&s, "GET", &path, &[&format!("Bearer {t}")]).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (403, "insufficient_scope")
    );
    assert!(
        headers
            .get("www-authenticate")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("insufficient_scope")
    );
    // A login that is too old for a sensitive action: step-up with max_age.
    let mut old = citizen(Loa::High, PID);
    old.auth_time = Some(now() - 3600);
    let t = token(&s, &old, &MintOptions::default());
    let (status, headers, body) = send(
        &s,
        "POST",
        &format!("/patients/{PID}/consent"),
        &[&format!("Bearer {t}")],
    )
    .await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (401, "authentication_too_old")
    );
    assert!(
        headers
            .get("www-authenticate")
            .unwrap()
            .to_str()
            .unwrap()
            .contains(r#"max_age="300""#)
    );
    // Public route without a token.
    assert_eq!(send(&s, "GET", "/healthz", &[]).await.0, 200);
    assert_eq!(
        s.app.seen().len(),
        1,
        "only the health check reached the app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_is_picked_up_on_first_use_with_one_fetch_and_random_kids_cost_one_fetch() {
    let s = setup_with(false).await;
    let path = format!("/patients/{PID}/journal");
    let fetches = s.idp.jwks_fetches();
    s.idp.keys.rotate(Alg::RS256).unwrap();
    let t = token(&s, &citizen(Loa::High, PID), &MintOptions::default());
    assert_eq!(
        send(&s, "GET", &path, &[&format!("Bearer {t}")]).await.0,
        200
    );
    assert_eq!(
        s.idp.jwks_fetches(),
        fetches + 1,
        "rotation costs exactly one fetch"
    );

    // A flood of random kids: no fetch looked for them yet, and the refetch is held back for
    // 10 s after the last one, so each gets the retryable 503; at most one more fetch.
    let fetches = s.idp.jwks_fetches();
    let tls = mtls_connect(s.vakt.inbound_addr.unwrap(), s.web.clone())
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<bytes::Bytes>>(
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let person = citizen(Loa::High, PID);
    let base = token(&s, &person, &MintOptions::default());
    let (header, rest) = base.split_once('.').unwrap();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    // Within the 10 s hold only (a slow machine may not get through all of them in time; after
    // it, one refetch is allowed and kids it lacks are then refused 401 unknown_key).
    let hold = std::time::Instant::now() + Duration::from_secs(8);
    let mut sent = 0;
    for i in 0..10_000 {
        if std::time::Instant::now() > hold {
            break;
        }
        sent += 1;
        let mut h = header.clone();
        h["kid"] = json!(format!("random-{i}"));
        let forged = format!("{}.{rest}", URL_SAFE_NO_PAD.encode(h.to_string()));
        sender.ready().await.unwrap();
        let response = sender
            .send_request(
                Request::get(&path)
                    .header("host", "orders.shop")
                    .header("authorization", format!("Bearer {forged}"))
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "10");
    }
    assert!(
        sent >= 500,
        "only {sent} requests in the hold: too few to mean anything"
    );
    assert!(
        s.idp.jwks_fetches() <= fetches + 1,
        "{} fetches for {sent} random kids",
        s.idp.jwks_fetches() - fetches
    );
}

/// A token with a bogus kid does not delay a real rotation: the new key's first token within the
/// refetch interval gets a retryable 503 (never a 401 for a key the issuer did publish), and the
/// first one after it is verified. A kid that a fetch made after it arrived did not contain is
/// refused 401 `unknown_key` without another fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bogus_kid_does_not_delay_a_rotation_beyond_the_refetch_interval() {
    let s = setup_with(false).await;
    let path = format!("/patients/{PID}/journal");
    let person = citizen(Loa::High, PID);
    let with_kid = |kid: &str| {
        let base = token(&s, &person, &MintOptions::default());
        let (header, rest) = base.split_once('.').unwrap();
        let mut h: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
        h["kid"] = json!(kid);
        format!("{}.{rest}", URL_SAFE_NO_PAD.encode(h.to_string()))
    };
    // The bogus kid triggers the one fetch, which does not contain it: 401, remembered.
    let fetches = s.idp.jwks_fetches();
    let (status, _, body) = send(
        &s,
        "GET",
        &path,
        &[&format!("Bearer {}", with_kid("bogus"))],
    )
    .await;
    assert_eq!((status, error_code(&body).as_str()), (401, "unknown_key"));
    assert_eq!(s.idp.jwks_fetches(), fetches + 1);
    let (status, _, _) = send(
        &s,
        "GET",
        &path,
        &[&format!("Bearer {}", with_kid("bogus"))],
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(
        s.idp.jwks_fetches(),
        fetches + 1,
        "a remembered kid costs no fetch"
    );

    // The issuer rotates right after: its first token is answered with the retryable 503.
    s.idp.keys.rotate(Alg::RS256).unwrap();
    let rotated = token(&s, &person, &MintOptions::default());
    let started = std::time::Instant::now();
    let (status, headers, body) = send(&s, "GET", &path, &[&format!("Bearer {rotated}")]).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (503, "unknown_key_pending")
    );
    assert_eq!(headers["retry-after"], "10");
    assert!(s.app.seen().is_empty());
    // Retried as told, it is verified: the delay is bounded by the refetch interval.
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (status, _, _) = send(&s, "GET", &path, &[&format!("Bearer {rotated}")]).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "still refused after 15 s"
        );
    }
    eprintln!(
        "rotation after a bogus kid: the new key verified {:?} after its first token",
        started.elapsed()
    );
    assert_eq!(s.idp.jwks_fetches(), fetches + 2);
}

/// A sidecar started while its issuer is down finds it back within seconds once it returns,
/// however long the outage was: while it has no keys it retries at least every ~2 s, rather than
/// on a doubling backoff that a long outage would stretch to a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_started_during_an_issuer_outage_is_ready_seconds_after_it_ends() {
    let s = setup_with(true).await;
    tokio::time::sleep(Duration::from_secs(16)).await;
    let ready = plain_send(s.vakt.admin_addr, get("/ready", "admin")).await;
    assert_eq!(ready.status(), 503);
    s.idp.set_down(false);
    let back = std::time::Instant::now();
    wait_ready(s.vakt.admin_addr).await;
    let took = back.elapsed();
    eprintln!("issuer outage of 16 s at start: ready {took:?} after the issuer came back");
    assert!(
        took < Duration::from_secs(4),
        "ready {took:?} after the issuer came back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_down_at_start_means_not_ready_and_refused_then_cached_keys_survive_an_outage() {
    let s = setup_with(true).await;
    let admin = s.vakt.admin_addr;
    let ready = plain_send(admin, get("/ready", "admin")).await;
    assert_eq!(ready.status(), 503);
    assert!(body_string(ready).await.contains("signing keys"));
    let t = token(&s, &citizen(Loa::High, PID), &MintOptions::default());
    let path = format!("/patients/{PID}/journal");
    let (status, _, body) = send(&s, "GET", &path, &[&format!("Bearer {t}")]).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (503, "keys_unavailable")
    );
    // Asked again while the refetch is held back: still no keys at all, not a pending kid.
    let (status, _, body) = send(&s, "GET", &path, &[&format!("Bearer {t}")]).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (503, "keys_unavailable")
    );
    assert!(s.app.seen().is_empty());

    s.idp.set_down(false);
    wait_ready(admin).await;
    assert_eq!(
        send(&s, "GET", &path, &[&format!("Bearer {t}")]).await.0,
        200
    );
    // Down again: the cached keys keep verifying new tokens signed with a known key.
    s.idp.set_down(true);
    let fresh = token(
        &s,
        &citizen(Loa::High, PID),
        &MintOptions {
            alg: Alg::ES256,
            ..MintOptions::default()
        },
    );
    assert_eq!(
        send(&s, "GET", &path, &[&format!("Bearer {fresh}")])
            .await
            .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_and_unusable_keys_are_dropped_and_counted() {
    let s = setup_with(true).await;
    s.idp.set_extra_jwks(vec![
        json!({"kty": "oct", "kid": "sym", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}),
        json!({"kty": "RSA", "kid": "small", "n": URL_SAFE_NO_PAD.encode([0xC3u8; 128]), "e": "AQAB"}),
        json!({"kty": "RSA", "kid": "enc", "use": "enc", "n": URL_SAFE_NO_PAD.encode([0xC3u8; 256]), "e": "AQAB"}),
    ]);
    s.idp.set_down(false);
    wait_ready(s.vakt.admin_addr).await;
    let text = metrics_text(s.vakt.admin_addr).await;
    for reason in ["symmetric", "weak_rsa", "not_for_signing"] {
        assert!(
            metric_sum(&text, "vakt_jwks_keys_dropped_total", &[("reason", reason)]) >= 1.0,
            "{reason}"
        );
    }
    let t = token(
        &s,
        &citizen(Loa::High, PID),
        &MintOptions {
            kid: Some("sym".into()),
            ..MintOptions::default()
        },
    );
    let (status, _, body) = send(
        &s,
        "GET",
        &format!("/patients/{PID}/journal"),
        &[&format!("Bearer {t}")],
    )
    .await;
    assert_eq!((status, error_code(&body).as_str()), (401, "unknown_key"));
}

/// The same segment with a non-zero unused low bit in its last character (a lenient decoder
/// reads the same bytes); `None` when the segment's length leaves no unused bits.
fn with_trailing_bits(segment: &str) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    if segment.len() % 4 < 2 {
        return None;
    }
    let (head, last) = segment.split_at(segment.len() - 1);
    let value = ALPHABET
        .iter()
        .position(|c| *c == last.as_bytes()[0])
        .unwrap();
    Some(format!("{head}{}", ALPHABET[value | 1] as char))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_canonical_base64url_in_any_segment_is_refused_even_with_the_canonical_token_cached() {
    let s = setup_with(false).await;
    let person = citizen(Loa::High, PID);
    let path = format!("/patients/{PID}/journal");
    // A token whose header and payload both leave unused bits in their last character.
    let mut good = None;
    'search: for h in 0..3 {
        for p in 0..3 {
            let mut claims = devidp::claims(vakt::authn::Profile::Helseid, &person);
            claims["pad"] = json!("x".repeat(p));
            let mut opts = MintOptions::default();
            opts.extra_header.insert("cty".into(), json!("y".repeat(h)));
            let t = s.idp.mint(claims, &opts).unwrap();
            let parts: Vec<&str> = t.split('.').collect();
            if parts[..2].iter().all(|p| p.len() % 4 >= 2) {
                good = Some(t);
                break 'search;
            }
        }
    }
    let good = good.expect("a token with trailing bits in header and payload");
    // The RS256 signature (256 bytes) always leaves four unused bits.
    let (status, _, body) = send(&s, "GET", &path, &[&format!("Bearer {good}")]).await;
    assert_eq!(status, 200, "{body}");
    let seen = s.app.seen().len();

    let segments: Vec<String> = good.split('.').map(str::to_owned).collect();
    let with_segment = |i: usize, segment: String| {
        let mut parts = segments.clone();
        parts[i] = segment;
        parts.join(".")
    };
    let mut variants = Vec::new();
    for (i, segment) in segments.iter().enumerate() {
        let bytes = URL_SAFE_NO_PAD.decode(segment).unwrap();
        // Padding, as the padded alphabet writes it, and a stray `=`.
        let padded = base64::engine::general_purpose::URL_SAFE.encode(&bytes);
        assert!(padded.ends_with('='), "segment {i} needs padding");
        variants.push((i, "padding", with_segment(i, padded)));
        variants.push((i, "stray =", with_segment(i, format!("{segment}="))));
        // The same bytes in the standard alphabet (`+`, `/`) where the segment has `-` or `_`.
        let standard = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&bytes);
        if standard != *segment {
            variants.push((i, "standard alphabet", with_segment(i, standard)));
        }
        variants.push((
            i,
            "plus sign",
            with_segment(i, format!("{}+{}", &segment[..4], &segment[5..])),
        ));
        variants.push((
            i,
            "tab",
            with_segment(i, format!("{}\t{}", &segment[..8], &segment[8..])),
        ));
        variants.push((
            i,
            "trailing bits",
            with_segment(i, with_trailing_bits(segment).unwrap()),
        ));
    }
    // A random 256-byte signature all but certainly has a `-` or `_`: its standard-alphabet
    // form is the one a lenient decoder would verify.
    assert!(
        variants
            .iter()
            .any(|(i, what, _)| *i == 2 && *what == "standard alphabet")
    );
    for (i, what, token) in &variants {
        let (status, headers, body) = send(&s, "GET", &path, &[&format!("Bearer {token}")]).await;
        assert_eq!(
            (status, error_code(&body).as_str()),
            (401, "non_canonical_encoding"),
            "segment {i}, {what}: {body}"
        );
        assert!(
            headers
                .get("www-authenticate")
                .unwrap()
                .to_str()
                .unwrap()
                .contains(r#"error="invalid_token""#)
        );
        assert!(!body.contains(&good[..40]), "the token must not be echoed");
    }
    assert_eq!(
        s.app.seen().len(),
        seen,
        "a non-canonical token reached the app"
    );
    let text = metrics_text(s.vakt.admin_addr).await;
    // The registry is shared by this binary's tests: at least these refusals are counted.
    assert!(
        metric_sum(
            &text,
            "vakt_authn_failures_total",
            &[("reason", "non_canonical_encoding")]
        ) >= variants.len() as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_keys_whose_exponent_is_not_65537_are_dropped_at_load_and_counted() {
    let s = setup_with(true).await;
    // The issuer's own RSA public key, republished under other kids: once as it is, and with
    // the same modulus but other exponents (3, 65539, 65537 with a leading zero byte).
    let rs_kid = s.idp.keys.current_kid(Alg::RS256).unwrap();
    let jwks = s.idp.keys.jwks();
    let rsa = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == rs_kid.as_str())
        .unwrap()
        .clone();
    let republished = |kid: &str, e: &str| {
        let mut k = rsa.clone();
        k["kid"] = json!(kid);
        k["e"] = json!(e);
        k
    };
    s.idp.set_extra_jwks(vec![
        republished("copy", "AQAB"),
        republished("e3", "Aw"),
        republished("e65539", "AQAD"),
        republished("e-leading-zero", "AAEAAQ"),
    ]);
    s.idp.set_down(false);
    wait_ready(s.vakt.admin_addr).await;
    let text = metrics_text(s.vakt.admin_addr).await;
    assert_eq!(
        metric_sum(
            &text,
            "vakt_jwks_keys_dropped_total",
            &[
                ("issuer", s.idp.issuer.as_str()),
                ("reason", "rsa_exponent")
            ]
        ),
        3.0,
        "{text}"
    );

    let path = format!("/patients/{PID}/journal");
    let signed_as = |kid: &str| {
        token(
            &s,
            &citizen(Loa::High, PID),
            &MintOptions {
                kid: Some(kid.into()),
                ..MintOptions::default()
            },
        )
    };
    // The key with exponent 65537 is kept: the current key signs, its copy verifies.
    let (status, _, body) = send(
        &s,
        "GET",
        &path,
        &[&format!("Bearer {}", signed_as("copy"))],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for kid in ["e3", "e65539", "e-leading-zero"] {
        assert_token_refused(&s, &path, &signed_as(kid), "unknown_key", kid).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_token_is_refused_once_its_kid_is_republished_with_other_key_material() {
    let s = setup_with(true).await;
    // Key A (the current RS256 key) published under kid K; key B is another RSA key.
    let key_a = s.idp.keys.current_kid(Alg::RS256).unwrap();
    let key_b = s.idp.keys.rotate(Alg::RS256).unwrap();
    let jwk_of = |kid: &str| {
        let mut jwk = s.idp.keys.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid)
            .unwrap()
            .clone();
        jwk["kid"] = json!("K");
        jwk
    };
    let (a_under_k, b_under_k) = (jwk_of(&key_a), jwk_of(&key_b));
    assert_ne!(a_under_k["n"], b_under_k["n"]);
    s.idp.set_extra_jwks(vec![a_under_k]);
    s.idp.set_down(false);
    wait_ready(s.vakt.admin_addr).await;

    // Signed by key A, its header naming kid K.
    let t = token(
        &s,
        &citizen(Loa::High, PID),
        &MintOptions {
            kid: Some(key_a.clone()),
            extra_header: [("kid".to_owned(), json!("K"))].into_iter().collect(),
            ..MintOptions::default()
        },
    );
    let path = format!("/patients/{PID}/journal");
    // The metrics registry is shared by the tests of this binary: hits only ever add up.
    let hits = || async {
        metric_sum(
            &metrics_text(s.vakt.admin_addr).await,
            "vakt_token_cache_lookups_total",
            &[("result", "hit")],
        )
    };
    let (status, _, body) = send(&s, "GET", &path, &[&format!("Bearer {t}")]).await;
    assert_eq!(status, 200, "{body}");
    let before = hits().await;
    let (status, _, body) = send(&s, "GET", &path, &[&format!("Bearer {t}")]).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        hits().await >= before + 1.0,
        "the second request was a cache hit"
    );
    let seen = s.app.seen().len();

    // Re-key K to key B. An unknown kid makes vakt fetch the set again (the first such
    // refetch is never rate-limited).
    s.idp.set_extra_jwks(vec![b_under_k]);
    let fetches = s.idp.jwks_fetches();
    let unknown = token(
        &s,
        &citizen(Loa::High, PID),
        &MintOptions {
            kid: Some("not-published".into()),
            ..MintOptions::default()
        },
    );
    let (status, _, body) = send(&s, "GET", &path, &[&format!("Bearer {unknown}")]).await;
    assert_eq!((status, error_code(&body).as_str()), (401, "unknown_key"));
    assert_eq!(s.idp.jwks_fetches(), fetches + 1);

    // The same token, still in the cache, is verified again against key B and refused.
    for _ in 0..2 {
        assert_token_refused(&s, &path, &t, "bad_signature", "re-keyed kid").await;
    }
    assert_eq!(s.app.seen().len(), seen, "a refused token reached the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_token_query_parameter_is_refused_however_its_name_is_encoded() {
    let s = setup_with(false).await;
    let good = token(&s, &citizen(Loa::High, PID), &MintOptions::default());
    let path = format!("/patients/{PID}/journal");
    // Even next to a valid Authorization header, a token in the query is refused.
    for query in [
        format!("access%5Ftoken={good}"),
        format!("x=1&ACCESS_TOKEN={good}"),
        format!("%61ccess_token+={good}"),
        "access_token".to_owned(),
    ] {
        let (status, _, body) = send(
            &s,
            "GET",
            &format!("{path}?{query}"),
            &[&format!("Bearer {good}")],
        )
        .await;
        assert_eq!(
            (status, error_code(&body).as_str()),
            (401, "token_in_query"),
            "{body}"
        );
        assert!(!body.contains(&good[..40]), "the token must not be echoed");
    }
    assert!(
        s.app.seen().is_empty(),
        "a request with a query token reached the app"
    );
    // A parameter that only resembles the name is the app's business.
    let (status, _, body) = send(
        &s,
        "GET",
        &format!("{path}?access-token=x"),
        &[&format!("Bearer {good}")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// Two issuers that may hand out the same client id: issuer A's `journal-web` is accepted on
/// `/records` and bound to the web frontend; issuer B's only listed client is `partner-portal`.
const TWO_ISSUER_POLICY: &str = r#"
client_bindings:
  - client: {issuer: "{A}", id: journal-web}
    peers: [spiffe://test.vakt.local/ns/shop/sa/web]
routes:
  - id: records
    methods: [GET]
    path: /records
    allow:
      - peers: [spiffe://test.vakt.local/ns/shop/sa/web, spiffe://test.vakt.local/ns/shop/sa/batch]
        issuers: ["{A}", "{B}"]
        clients:
          - {issuer: "{A}", id: journal-web}
          - {issuer: "{B}", id: partner-portal}
"#;

/// A GET of `path` over mTLS as the workload of `client`, with `token` as Bearer: (status, the
/// denial body's error code or "" when allowed).
async fn get_as(
    vakt: &App,
    client: Arc<rustls::ClientConfig>,
    path: &str,
    token: &str,
) -> (u16, String) {
    let tls = mtls_connect(vakt.inbound_addr.unwrap(), client)
        .await
        .unwrap();
    let req = Request::builder()
        .uri(path)
        .header("host", "orders.shop")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::default())
        .unwrap();
    let response = h1_send(tls, req).await.unwrap();
    let status = response.status().as_u16();
    let body = body_string(response).await;
    let code = if status == 200 {
        String::new()
    } else {
        error_code(&body)
    };
    (status, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_counts_only_with_its_issuer_and_bindings_fail_closed() {
    init();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let idp_a = DevIdp::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(KeyStore::open_or_create(dir_a.path()).unwrap()),
        "/helseid",
    )
    .await
    .unwrap();
    let idp_b = DevIdp::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(KeyStore::open_or_create(dir_b.path()).unwrap()),
        "/auth/open",
    )
    .await
    .unwrap();
    let pki = DevPki::new(TD).unwrap();
    let app = EchoApp::start().await.unwrap();
    let id = pki.spiffe_id("shop", "orders");
    let dir = pki.workload("orders", &id).unwrap();
    let policy = write_policy(
        &dir,
        &TWO_ISSUER_POLICY
            .replace("{A}", &idp_a.issuer)
            .replace("{B}", &idp_b.issuer),
    )
    .unwrap();
    let issuer = |url: &str, profile: &str| {
        format!(
            "    - issuer: {url}\n      profile: {profile}\n      audiences: [journal-api]\n      algorithms: [RS256]\n      max_token_lifetime: 1h\n      allow_insecure_loopback: true\n      dpop:\n        required: false\n"
        )
    };
    let yaml = format!(
        "{}inbound:\n  listen: 127.0.0.1:0\n  app: {}\n  policy: {}\noidc:\n  issuers:\n{}{}",
        base_config_yaml(&dir, TD),
        app.addr,
        policy.display(),
        issuer(&idp_a.issuer, "helseid"),
        issuer(&idp_b.issuer, "signicat"),
    );
    let vakt = App::start(Config::from_yaml(&yaml).unwrap()).await.unwrap();
    wait_ready(vakt.admin_addr).await;
    let client = |name: &str| {
        let workload = pki.workload(name, &pki.spiffe_id("shop", name)).unwrap();
        raw_client_config(Some(&workload), &dir, &id, &[b"http/1.1"])
    };
    let (web, batch) = (client("web"), client("batch"));

    let person = |client_id: &str| Person {
        client_id: client_id.into(),
        audience: "journal-api".into(),
        ..Person::default()
    };
    let mint = |idp: &DevIdp, profile, client_id: Option<&str>| {
        let mut claims = devidp::claims(profile, &person(client_id.unwrap_or("-")));
        if client_id.is_none() {
            claims.as_object_mut().unwrap().remove("client_id");
        }
        idp.mint(claims, &MintOptions::default()).unwrap()
    };
    use vakt::authn::Profile::{Helseid, Signicat};
    let a_web = mint(&idp_a, Helseid, Some("journal-web"));
    let b_web = mint(&idp_b, Signicat, Some("journal-web"));
    let b_partner = mint(&idp_b, Signicat, Some("partner-portal"));
    let a_none = mint(&idp_a, Helseid, None);
    let b_none = mint(&idp_b, Signicat, None);

    let seen = app.seen().len();
    for (who, via, token, expected) in [
        ("A's journal-web", &web, &a_web, (200, "")),
        // The same client id from issuer B is another client, not listed on the route.
        ("B's journal-web", &web, &b_web, (403, "client_not_allowed")),
        ("B's partner-portal", &web, &b_partner, (200, "")),
        // A's journal-web is bound to the web frontend.
        (
            "A's journal-web via batch",
            &batch,
            &a_web,
            (403, "client_peer_mismatch"),
        ),
        // A binds a client, so A's tokens must name theirs; B binds none.
        (
            "A without a client",
            &web,
            &a_none,
            (403, "client_id_missing"),
        ),
        (
            "B without a client",
            &web,
            &b_none,
            (403, "client_not_allowed"),
        ),
    ] {
        let (status, code) = get_as(&vakt, via.clone(), "/records", token).await;
        assert_eq!((status, code.as_str()), expected, "{who}");
    }
    assert_eq!(
        app.seen().len(),
        seen + 2,
        "only the two allowed requests reached the app"
    );
}

/// A workload no rule of the route admits is refused as a peer (403 `peer_not_allowed`) whether
/// it sends no token, a valid one or a forged one: it is not told to fetch a token, and its
/// token is not even verified (no authentication failure is counted). An admitted peer is still
/// told what its token lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_no_rule_admits_is_refused_as_a_peer_before_any_token_check() {
    let s = setup_with(false).await;
    let path = format!("/patients/{PID}/journal");
    let good = token(&s, &citizen(Loa::High, PID), &MintOptions::default());
    let forged = tamper_payload(&good, |p| p.replace("journal.read", "journal.rite"));
    let failures = |text: &str| {
        metric_sum(
            text,
            "vakt_authn_failures_total",
            &[("reason", "bad_signature")],
        )
    };
    let before = failures(&metrics_text(s.vakt.admin_addr).await);
    for (what, bearer) in [
        ("no token", None),
        ("a valid token", Some(&good)),
        ("a forged token", Some(&forged)),
    ] {
        let tls = mtls_connect(s.vakt.inbound_addr.unwrap(), s.batch.clone())
            .await
            .unwrap();
        let mut req = Request::builder().uri(&path).header("host", "orders.shop");
        if let Some(t) = bearer {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let response = h1_send(tls, req.body(Full::default()).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let www = response.headers().get("www-authenticate").cloned();
        let body = body_string(response).await;
        assert_eq!(
            (status, error_code(&body).as_str()),
            (403, "peer_not_allowed"),
            "{what}: {body}"
        );
        assert!(
            www.is_none(),
            "{what}: a peer refusal asks for no token: {www:?}"
        );
    }
    assert!(s.app.seen().is_empty(), "a refused peer reached the app");
    assert_eq!(
        failures(&metrics_text(s.vakt.admin_addr).await),
        before,
        "the refused peer's forged token was verified"
    );
    // The admitted workload: no token is a token problem, a forged one is refused as forged.
    let (status, _, body) = send(&s, "GET", &path, &[]).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (401, "token_required"),
        "{body}"
    );
    assert_token_refused(&s, &path, &forged, "bad_signature", "forged, admitted peer").await;
}

/// docs/CLAIMS.md names every step-up `acr_values` the profiles ask for.
#[test]
fn the_claims_document_names_every_profiles_step_up_values() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/CLAIMS.md")).unwrap();
    for profile in vakt::authn::Profile::ALL {
        assert!(
            doc.contains(&format!("`{}`", profile.as_str())),
            "{}",
            profile.as_str()
        );
        for level in [Loa::Substantial, Loa::High] {
            let value = profile.acr_value(level);
            if profile != vakt::authn::Profile::Generic {
                assert!(
                    doc.contains(&format!("`{value}`")),
                    "{}: {value}",
                    profile.as_str()
                );
            }
        }
    }
}

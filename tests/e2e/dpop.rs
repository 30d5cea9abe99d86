//! DPoP-bound tokens (RFC 9449) through a real two-hop mesh: the app's request goes in plain
//! HTTP to the client sidecar, over mTLS to the server sidecar, which checks token and proof
//! against the development issuer's JWKS and its public URL. Every proof vector is refused with
//! its own reason, and nothing of a refused request reaches the app.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::Request;
use http_body_util::Full;
use serde_json::{Map, Value, json};
use vakt::app::App;
use vakt::authn::dpop::Nonces;
use vakt::authn::{Alg, Loa, Profile};
use vakt::config::Config;
use vakt::dev::dpop::DpopClientKey;
use vakt::dev::idp::{self as devidp, DevIdp, KeyStore, MintOptions, Person};
use vakt::dev::mesh::{DevPki, EchoApp, base_config_yaml, write_policy};

const PUBLIC: &str = "http://orders.shop";
const NONCE_SECRET: [u8; 32] = [42; 32];

/// Issuers: `helseid` (DPoP required, the profile's default), `generic` (Bearer allowed) and
/// `nonce` (DPoP with nonces).
fn policy(helseid: &str, generic: &str, nonce: &str) -> String {
    format!(
        r#"
routes:
  - id: records-v2
    methods: [GET, POST]
    path: /v2/records/{{id}}
    require_dpop: true
    allow:
      - peers: [spiffe://test.vakt.local/ns/shop/sa/web]
        issuers: ["{helseid}", "{generic}", "{nonce}"]
        scopes_any: [journal.read]
  - id: records-v1
    methods: [GET]
    path: /v1/records/{{id}}
    allow:
      - peers: [spiffe://test.vakt.local/ns/shop/sa/web]
        issuers: ["{helseid}", "{generic}", "{nonce}"]
        scopes_any: [journal.read]
  - id: raw
    methods: [GET]
    path: /raw/{{id}}
    require_dpop: true
    forward_token: true
    allow:
      - peers: [spiffe://test.vakt.local/ns/shop/sa/web]
        issuers: ["{helseid}", "{generic}", "{nonce}"]
"#
    )
}

struct Mesh {
    _pki: DevPki,
    app: EchoApp,
    server: App,
    client: App,
    helseid: DevIdp,
    generic: DevIdp,
    nonce: DevIdp,
    dir: std::path::PathBuf,
    keys: Vec<tempfile::TempDir>,
}

async fn issuer(prefix: &str) -> (DevIdp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(KeyStore::open_or_create(dir.path()).unwrap());
    let idp = DevIdp::start("127.0.0.1:0".parse().unwrap(), keys, prefix)
        .await
        .unwrap();
    (idp, dir)
}

async fn mesh() -> Mesh {
    mesh_with("").await
}

/// [`mesh`] with `dpop_extra` appended to the server's `oidc.dpop` section.
async fn mesh_with(dpop_extra: &str) -> Mesh {
    init();
    let (helseid, k1) = issuer("/helseid").await;
    let (generic, k2) = issuer("/generic").await;
    let (nonce, k3) = issuer("/nonce").await;
    let pki = DevPki::new(TD).unwrap();
    let app = EchoApp::start().await.unwrap();
    let id = pki.spiffe_id("shop", "orders");
    let dir = pki.workload("orders", &id).unwrap();
    let policy = write_policy(
        &dir,
        &policy(&helseid.issuer, &generic.issuer, &nonce.issuer),
    )
    .unwrap();
    let nonce_key = dir.join("dpop-nonce.key");
    std::fs::write(&nonce_key, NONCE_SECRET).unwrap();
    let issuer_yaml = |url: &str, profile: &str, dpop: &str| {
        format!(
            "    - issuer: {url}\n      profile: {profile}\n      audiences: [journal-api]\n      algorithms: [RS256, ES256]\n      max_token_lifetime: 1h\n      allow_insecure_loopback: true\n{dpop}"
        )
    };
    let yaml = format!(
        "{}inbound:\n  listen: 127.0.0.1:0\n  app: {}\n  policy: {}\noidc:\n  jwks_refresh_min: 1h\n  jwks_refresh_max: 2h\n  dpop:\n    public_url: {PUBLIC}\n    nonce_secret_file: {}\n    nonce_lifetime: 60s\n{dpop_extra}  issuers:\n{}{}{}",
        base_config_yaml(&dir, TD),
        app.addr,
        policy.display(),
        nonce_key.display(),
        issuer_yaml(&helseid.issuer, "helseid", ""),
        issuer_yaml(&generic.issuer, "generic", ""),
        issuer_yaml(
            &nonce.issuer,
            "generic",
            "      dpop:\n        required: true\n        require_nonce: true\n"
        ),
    );
    let server = App::start(Config::from_yaml(&yaml).unwrap()).await.unwrap();
    wait_ready(server.admin_addr).await;
    let client = client_sidecar(&pki, "web", server.inbound_addr.unwrap(), &id).await;
    Mesh {
        _pki: pki,
        app,
        server,
        client,
        helseid,
        generic,
        nonce,
        dir,
        keys: vec![k1, k2, k3],
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

fn person() -> Person {
    Person {
        sub: "clinician-1".into(),
        national_id: Some("13097248022".into()),
        level: Loa::High,
        client_id: "journal-web".into(),
        scopes: vec!["journal.read".into()],
        audience: "journal-api".into(),
        ..Person::default()
    }
}

/// A token from `idp`, bound to `key` when one is given.
fn token(idp: &DevIdp, key: Option<&DpopClientKey>) -> String {
    let mut claims = devidp::claims(Profile::Helseid, &person());
    if let Some(key) = key {
        claims["cnf"] = key.cnf();
    }
    idp.mint(claims, &MintOptions::default()).unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

impl Answer {
    fn code(&self) -> String {
        serde_json::from_str::<Value>(&self.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    fn challenge(&self) -> String {
        self.headers
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }
}

/// `method path` from the app through both sidecars, with these headers.
async fn send(m: &Mesh, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "orders.shop");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let response = plain_send(
        m.client.outbound_addr.unwrap(),
        req.body(Full::default()).unwrap(),
    )
    .await;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    Answer {
        status,
        headers,
        body: body_string(response).await,
    }
}

/// A DPoP request: `DPoP <token>` and one proof.
async fn send_dpop(m: &Mesh, method: &str, path: &str, token: &str, proof: &str) -> Answer {
    let authorization = format!("DPoP {token}");
    send(
        m,
        method,
        path,
        &[("authorization", &authorization), ("dpop", proof)],
    )
    .await
}

/// A proof by `key` for `GET <PUBLIC><path>` bound to `token`, with header and claims edited.
fn proof_with(
    key: &DpopClientKey,
    path: &str,
    token: &str,
    edit: impl FnOnce(&mut Map<String, Value>, &mut Map<String, Value>),
) -> String {
    let mut header = key.header();
    let mut claims = DpopClientKey::claims("GET", &format!("{PUBLIC}{path}"), Some(token), None);
    edit(&mut header, &mut claims);
    key.sign(&header, &claims).unwrap()
}

/// Swaps a proof's signature for another (same length, other bytes).
fn with_flipped_signature(proof: &str) -> String {
    let (signed, sig) = proof.rsplit_once('.').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(sig).unwrap();
    bytes[4] ^= 0x55;
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// A proof with its header replaced by `header` and no valid signature (`alg: none` style).
fn unsigned(header: Value, claims: &Map<String, Value>, sig: &str) -> String {
    format!(
        "{}.{}.{sig}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(Value::Object(claims.clone()).to_string())
    )
}

/// A request-level vector: what, headers, and the reason it is refused with (401).
type HeaderVector<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);

/// The server sidecar's audit events, once at least `inbound` inbound ones are written (the
/// writer thread writes them a moment after the answers).
async fn audit_events(m: &Mesh, inbound: usize) -> Vec<Value> {
    for _ in 0..100 {
        let events: Vec<Value> = std::fs::read_to_string(m.dir.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if events
            .iter()
            .filter(|e| e["direction"] == "inbound")
            .count()
            >= inbound
        {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {inbound} inbound audit events were written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_helseid_shaped_dpop_request_reaches_the_app_with_its_key_and_without_credentials() {
    let m = mesh().await;
    let key = DpopClientKey::generate(Alg::ES256).unwrap();
    let token = token(&m.helseid, Some(&key));
    let path = "/v2/records/7";
    let proof = key
        .proof("GET", &format!("{PUBLIC}{path}"), Some(&token), None)
        .unwrap();
    let answer = send_dpop(&m, "GET", path, &token, &proof).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let seen = m.app.seen();
    assert_eq!(seen.len(), 1);
    let h = &seen[0].headers;
    assert_eq!(h["x-vakt-dpop-jkt"], key.jkt());
    assert_eq!(h["x-vakt-issuer"], m.helseid.issuer.as_str());
    // The credentials stop at the sidecar, unless the route forwards them.
    assert!(h.get("authorization").is_none() && h.get("dpop").is_none());

    // A route with forward_token passes token and proof on, unchanged.
    let path = "/raw/1";
    let proof = key
        .proof("GET", &format!("{PUBLIC}{path}"), Some(&token), None)
        .unwrap();
    let answer = send_dpop(&m, "GET", path, &token, &proof).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let seen = m.app.seen();
    let h = &seen[1].headers;
    assert_eq!(h["authorization"], format!("DPoP {token}").as_str());
    assert_eq!(h["dpop"], proof.as_str());

    // The audit event names the proof key; no token or proof is in the trail.
    let events = audit_events(&m, 2).await;
    let allowed: Vec<&Value> = events
        .iter()
        .filter(|e| e["decision"] == "allow" && e["route"] == "records-v2")
        .collect();
    assert_eq!(allowed.len(), 1);
    assert_eq!(allowed[0]["dpop_jkt"], key.jkt());
    let trail = std::fs::read_to_string(m.dir.join("audit.log")).unwrap();
    assert!(!trail.contains(&token[..40]) && !trail.contains(&proof[..40]));

    // Proofs made with RSA (PKCS#1 and PSS) and P-384 keys pass as well.
    for alg in [Alg::RS256, Alg::PS256, Alg::ES384] {
        let key = DpopClientKey::generate(alg).unwrap();
        let token = self::token(&m.helseid, Some(&key));
        let path = "/v2/records/8";
        let proof = key
            .proof("GET", &format!("{PUBLIC}{path}"), Some(&token), None)
            .unwrap();
        let answer = send_dpop(&m, "GET", path, &token, &proof).await;
        assert_eq!(answer.status, 200, "{alg}: {}", answer.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_proof_is_refused_with_its_reason_and_reaches_nothing() {
    let m = mesh().await;
    let key = DpopClientKey::generate(Alg::ES256).unwrap();
    let other_key = DpopClientKey::generate(Alg::ES256).unwrap();
    let bound = token(&m.helseid, Some(&key));
    let bound_to_other = token(&m.helseid, Some(&other_key));
    let unbound = token(&m.generic, None);
    let path = "/v2/records/1";
    let url = format!("{PUBLIC}{path}");
    let good = |edit: fn(&mut Map<String, Value>, &mut Map<String, Value>)| {
        proof_with(&key, path, &bound, edit)
    };
    // A good proof with one claim or header parameter set to `value` (or removed: `None`).
    let claim = |name: &str, value: Option<Value>| {
        proof_with(&key, path, &bound, |_, c| match value {
            Some(v) => drop(c.insert(name.into(), v)),
            None => drop(c.remove(name)),
        })
    };
    let header = |name: &str, value: Option<Value>| {
        proof_with(&key, path, &bound, |h, _| match value {
            Some(v) => drop(h.insert(name.into(), v)),
            None => drop(h.remove(name)),
        })
    };
    let htu = |value: &str| claim("htu", Some(json!(value)));
    let plain_claims = DpopClientKey::claims("GET", &url, Some(&bound), None);
    let ok_sig = good(|_, _| {}).rsplit_once('.').unwrap().1.to_owned();

    // (what, proof, expected reason); each sent as `DPoP <bound>` with that proof.
    let vectors: Vec<(&str, String, &str)> = vec![
        ("not a JWS", "abc".into(), "dpop_malformed_proof"),
        ("two segments", "abc.def".into(), "dpop_malformed_proof"),
        (
            "padded base64 in the header",
            format!("{}=", good(|_, _| {})),
            "dpop_malformed_proof",
        ),
        (
            "header is not JSON",
            format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode("not json"),
                good(|_, _| {}).split_once('.').unwrap().1
            ),
            "dpop_malformed_proof",
        ),
        (
            "typ jwt",
            header("typ", Some(json!("jwt"))),
            "dpop_wrong_type",
        ),
        (
            "typ at+jwt",
            header("typ", Some(json!("at+jwt"))),
            "dpop_wrong_type",
        ),
        ("typ missing", header("typ", None), "dpop_wrong_type"),
        (
            "typ in upper case",
            header("typ", Some(json!("DPOP+JWT"))),
            "dpop_wrong_type",
        ),
        (
            "alg none",
            unsigned(
                json!({"typ": "dpop+jwt", "alg": "none", "jwk": key.jwk()}),
                &plain_claims,
                "",
            ),
            "dpop_alg_not_allowed",
        ),
        (
            "alg HS256",
            unsigned(
                json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": {"kty": "oct", "k": "c2VjcmV0"}}),
                &plain_claims,
                &ok_sig,
            ),
            "dpop_alg_not_allowed",
        ),
        ("alg missing", header("alg", None), "dpop_alg_not_allowed"),
        (
            "alg RS256 over an EC key",
            header("alg", Some(json!("RS256"))),
            "dpop_key_alg_mismatch",
        ),
        (
            "jwk with the private key",
            good(|h, _| {
                h["jwk"]["d"] = json!("AAAA");
            }),
            "dpop_private_key",
        ),
        ("jwk missing", header("jwk", None), "dpop_bad_key"),
        (
            "jwk on another curve name",
            good(|h, _| {
                h["jwk"]["crv"] = json!("P-521");
            }),
            "dpop_bad_key",
        ),
        (
            "kid in the header",
            header("kid", Some(json!("k1"))),
            "dpop_header_not_allowed",
        ),
        (
            "jku in the header",
            header("jku", Some(json!("https://evil.example/jwks"))),
            "dpop_header_not_allowed",
        ),
        (
            "crit in the header",
            header("crit", Some(json!(["exp"]))),
            "dpop_header_not_allowed",
        ),
        (
            "signature altered",
            with_flipped_signature(&good(|_, _| {})),
            "dpop_bad_signature",
        ),
        (
            "signed by another key than its jwk",
            {
                let mut header = key.header();
                header.insert("jwk".into(), other_key.jwk().clone());
                key.sign(&header, &plain_claims).unwrap()
            },
            "dpop_bad_signature",
        ),
        (
            "htm POST on a GET",
            claim("htm", Some(json!("POST"))),
            "dpop_wrong_method",
        ),
        (
            "htm in lower case",
            claim("htm", Some(json!("get"))),
            "dpop_wrong_method",
        ),
        (
            "htu with a query",
            htu("http://orders.shop/v2/records/1?full=1"),
            "dpop_wrong_uri",
        ),
        (
            "htu with a fragment",
            htu("http://orders.shop/v2/records/1#x"),
            "dpop_wrong_uri",
        ),
        (
            "htu with a trailing slash",
            htu("http://orders.shop/v2/records/1/"),
            "dpop_wrong_uri",
        ),
        (
            "htu path in another case",
            htu("http://orders.shop/V2/records/1"),
            "dpop_wrong_uri",
        ),
        (
            "htu on another port",
            htu("http://orders.shop:8080/v2/records/1"),
            "dpop_wrong_uri",
        ),
        (
            "htu with https",
            htu("https://orders.shop/v2/records/1"),
            "dpop_wrong_uri",
        ),
        (
            "htu on another host",
            htu("http://payments.shop/v2/records/1"),
            "dpop_wrong_uri",
        ),
        (
            "htu for another record",
            htu("http://orders.shop/v2/records/2"),
            "dpop_wrong_uri",
        ),
        (
            "htu with userinfo",
            htu("http://a@orders.shop/v2/records/1"),
            "dpop_wrong_uri",
        ),
        ("htu relative", htu("/v2/records/1"), "dpop_wrong_uri"),
        (
            "iat 10 minutes old",
            claim("iat", Some(json!(now() - 600))),
            "dpop_proof_expired",
        ),
        (
            "iat 10 minutes ahead",
            claim("iat", Some(json!(now() + 600))),
            "dpop_proof_in_future",
        ),
        (
            "iat as a string",
            claim("iat", Some(json!(now().to_string()))),
            "dpop_missing_claim",
        ),
        ("jti missing", claim("jti", None), "dpop_missing_claim"),
        ("htm missing", claim("htm", None), "dpop_missing_claim"),
        ("htu missing", claim("htu", None), "dpop_missing_claim"),
        ("ath missing", claim("ath", None), "dpop_missing_claim"),
        (
            "ath of another token",
            claim("ath", Some(json!(URL_SAFE_NO_PAD.encode([7u8; 32])))),
            "dpop_wrong_ath",
        ),
        (
            "token bound to another key (cnf.jkt)",
            proof_with(&key, path, &bound_to_other, |_, _| {}),
            "dpop_key_mismatch",
        ),
    ];
    let seen = m.app.seen().len();
    for (what, proof, reason) in &vectors {
        let token = if *reason == "dpop_key_mismatch" {
            &bound_to_other
        } else {
            &bound
        };
        let answer = send_dpop(&m, "GET", path, token, proof).await;
        assert_eq!(
            (answer.status, answer.code().as_str()),
            (401, *reason),
            "{what}: {}",
            answer.body
        );
        assert!(
            answer
                .challenge()
                .starts_with(r#"DPoP error="invalid_dpop_proof", algs=""#),
            "{what}: {}",
            answer.challenge()
        );
    }

    // Header-level vectors.
    let proof = good(|_, _| {});
    let dpop_bound = format!("DPoP {bound}");
    let bearer_bound = format!("Bearer {bound}");
    let bearer_unbound = format!("Bearer {unbound}");
    let dpop_unbound = format!("DPoP {unbound}");
    let unbound_proof = proof_with(&key, path, &unbound, |_, _| {});
    let header_vectors: Vec<HeaderVector> = vec![
        (
            "two proofs",
            vec![
                ("authorization", &dpop_bound),
                ("dpop", &proof),
                ("dpop", &proof),
            ],
            "dpop_multiple_proofs",
        ),
        (
            "a DPoP token without a proof",
            vec![("authorization", &dpop_bound)],
            "dpop_proof_missing",
        ),
        (
            "a proof without any token",
            vec![("dpop", &proof)],
            "dpop_proof_without_token",
        ),
        (
            "a proof with a Bearer token",
            vec![("authorization", &bearer_unbound), ("dpop", &unbound_proof)],
            "dpop_proof_without_token",
        ),
        (
            "the DPoP-bound token as Bearer (stolen, downgraded)",
            vec![("authorization", &bearer_bound)],
            "bound_token",
        ),
        (
            "an unbound token with the DPoP scheme",
            vec![("authorization", &dpop_unbound), ("dpop", &unbound_proof)],
            "dpop_token_not_bound",
        ),
        (
            "a Bearer token on a route that requires DPoP",
            vec![("authorization", &bearer_unbound)],
            "dpop_required",
        ),
    ];
    for (what, headers, reason) in &header_vectors {
        let answer = send(&m, "GET", path, headers).await;
        assert_eq!(
            (answer.status, answer.code().as_str()),
            (401, *reason),
            "{what}: {}",
            answer.body
        );
        assert!(
            answer.challenge().starts_with("DPoP "),
            "{what}: {}",
            answer.challenge()
        );
    }
    // HelseID requires DPoP: its unbound token is refused as Bearer even where the route
    // would take Bearer.
    let helseid_unbound = format!("Bearer {}", token(&m.helseid, None));
    let answer = send(
        &m,
        "GET",
        "/v1/records/1",
        &[("authorization", &helseid_unbound)],
    )
    .await;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (401, "dpop_required")
    );

    assert_eq!(
        m.app.seen().len(),
        seen,
        "a refused request reached the app"
    );
    // Each refusal is on record with its reason; the trail holds no token or proof.
    let events = audit_events(&m, vectors.len() + header_vectors.len() + 1).await;
    for (what, _, reason) in &vectors {
        assert!(
            events
                .iter()
                .any(|e| e["reason"] == *reason && e["decision"] == "refused"),
            "{what}: no audit event with reason {reason}"
        );
    }
    let trail = std::fs::read_to_string(m.dir.join("audit.log")).unwrap();
    assert!(!trail.contains(&bound[..60]) && !trail.contains(&proof[..60]));
    let metrics = metrics_text(m.server.admin_addr).await;
    assert!(
        metric_sum(
            &metrics,
            "vakt_authn_failures_total",
            &[("reason", "dpop_wrong_uri")]
        ) >= 10.0,
        "{metrics}"
    );
    assert!(vectors.len() + header_vectors.len() >= 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_is_accepted_once_on_any_connection_and_normalised_uris_match() {
    let m = mesh().await;
    let key = DpopClientKey::generate(Alg::ES256).unwrap();
    let token = token(&m.helseid, Some(&key));
    let path = "/v2/records/3";
    let proof = key
        .proof("GET", &format!("{PUBLIC}{path}"), Some(&token), None)
        .unwrap();

    // Two requests on one keep-alive connection to the client sidecar: the second is a replay.
    let tcp = tokio::net::TcpStream::connect(m.client.outbound_addr.unwrap())
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let authorization = format!("DPoP {token}");
    let request = || {
        Request::get(path)
            .header("host", "orders.shop")
            .header("authorization", &authorization)
            .header("dpop", &proof)
            .body(Full::<bytes::Bytes>::default())
            .unwrap()
    };
    let first = sender.send_request(request()).await.unwrap();
    assert_eq!(first.status(), 200);
    body_string(first).await;
    sender.ready().await.unwrap();
    let replay = sender.send_request(request()).await.unwrap();
    assert_eq!(replay.status(), 401);
    assert!(body_string(replay).await.contains("dpop_replayed"));
    // And on a new connection.
    let answer = send_dpop(&m, "GET", path, &token, &proof).await;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (401, "dpop_replayed")
    );
    // The same jti from another key is another proof.
    let other = DpopClientKey::generate(Alg::ES256).unwrap();
    let other_token = self::token(&m.helseid, Some(&other));
    let jti = {
        let claims = proof.split('.').nth(1).unwrap();
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
        claims["jti"].clone()
    };
    let same_jti = proof_with(&other, path, &other_token, |_, c| {
        c.insert("jti".into(), jti.clone());
    });
    let answer = send_dpop(&m, "GET", path, &other_token, &same_jti).await;
    assert_eq!(answer.status, 200, "{}", answer.body);

    // RFC 3986 normalisation: host case, the default port and escaped unreserved characters.
    for htu in [
        "HTTP://ORDERS.SHOP/v2/records/3",
        "http://orders.shop:80/v2/records/3",
        "http://orders.shop/%762/records/%33",
        "http://orders.shop/v2/x/../records/3",
    ] {
        let proof = proof_with(&key, path, &token, |_, c| {
            c.insert("htu".into(), json!(htu));
        });
        let answer = send_dpop(&m, "GET", path, &token, &proof).await;
        assert_eq!(answer.status, 200, "{htu}: {}", answer.body);
    }
    // The method the proof names is the request's, for POST as for GET.
    let proof = proof_with(&key, path, &token, |_, c| {
        c.insert("htm".into(), json!("POST"));
    });
    let answer = send_dpop(&m, "POST", path, &token, &proof).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonces_are_handed_out_required_and_checked() {
    let m = mesh().await;
    let key = DpopClientKey::generate(Alg::ES256).unwrap();
    let token = token(&m.nonce, Some(&key));
    let path = "/v2/records/5";
    let url = format!("{PUBLIC}{path}");

    // No nonce: 401 use_dpop_nonce, with one to use.
    let proof = key.proof("GET", &url, Some(&token), None).unwrap();
    let answer = send_dpop(&m, "GET", path, &token, &proof).await;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (401, "dpop_nonce_required")
    );
    assert!(
        answer
            .challenge()
            .starts_with(r#"DPoP error="use_dpop_nonce""#)
    );
    let nonce = answer.headers["dpop-nonce"].to_str().unwrap().to_owned();

    // With it: through.
    let proof = key.proof("GET", &url, Some(&token), Some(&nonce)).unwrap();
    let answer = send_dpop(&m, "GET", path, &token, &proof).await;
    assert_eq!(answer.status, 200, "{}", answer.body);

    // A forged nonce, and one two lifetimes old (made with the shared secret, as another
    // replica would have): refused, with a fresh one.
    let forged = Nonces::new(&[1; 32], Duration::from_secs(60)).current(now());
    let stale = Nonces::new(&NONCE_SECRET, Duration::from_secs(60)).current(now() - 180);
    for (what, bad) in [("forged", forged), ("expired", stale)] {
        let proof = key.proof("GET", &url, Some(&token), Some(&bad)).unwrap();
        let answer = send_dpop(&m, "GET", path, &token, &proof).await;
        assert_eq!(
            (answer.status, answer.code().as_str()),
            (401, "dpop_nonce_invalid"),
            "{what}"
        );
        assert!(answer.headers.contains_key("dpop-nonce"), "{what}");
    }
    // The previous lifetime's nonce still passes, and the answer carries the current one.
    let previous = Nonces::new(&NONCE_SECRET, Duration::from_secs(60)).current(now() - 60);
    let proof = key
        .proof("GET", &url, Some(&token), Some(&previous))
        .unwrap();
    let answer = send_dpop(&m, "GET", path, &token, &proof).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.headers["dpop-nonce"], nonce.as_str());
    // Bearer from an issuer that requires DPoP stays refused.
    let bearer = format!("Bearer {}", self::token(&m.nonce, None));
    let answer = send(&m, "GET", "/v1/records/5", &[("authorization", &bearer)]).await;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (401, "dpop_required")
    );
    assert_eq!(m.app.seen().len(), 2);
}

#[tokio::test]
async fn dpop_config_without_a_public_url_is_refused_with_the_reason() {
    init();
    let yaml = "identity:\n  trust_domain: td\n  cert: c\n  key: k\n  trust_bundle: b\ninbound:\n  app: 127.0.0.1:8080\n  policy: p.yaml\noidc:\n  issuers:\n    - issuer: https://helseid-sts.nhn.no\n      profile: helseid\n      audiences: [api]\n";
    let err = Config::from_yaml(yaml).unwrap_err().to_string();
    assert!(
        err.contains("oidc.issuers[0].dpop") && err.contains("public URL"),
        "{err}"
    );
    // Said explicitly, Bearer-only HelseID is accepted; so is a public URL.
    let off = yaml.replace(
        "audiences: [api]\n",
        "audiences: [api]\n      dpop:\n        required: false\n",
    );
    Config::from_yaml(&off).unwrap();
    let with_url = yaml.replace(
        "oidc:\n",
        "oidc:\n  dpop:\n    public_url: https://api.example.no\n",
    );
    Config::from_yaml(&with_url).unwrap();
    let bad_url = yaml.replace(
        "oidc:\n",
        "oidc:\n  dpop:\n    public_url: https://api.example.no/?q=1\n",
    );
    let err = Config::from_yaml(&bad_url).unwrap_err().to_string();
    assert!(err.contains("has a query"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_idp_mints_bound_tokens_and_makes_proofs_the_mesh_accepts() {
    let m = mesh().await;
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("client.key");
    let key_arg = key.to_str().unwrap();
    let (code, token, err) = run_vakt(&[
        "dev-idp",
        "mint",
        "--dir",
        m.keys[0].path().to_str().unwrap(),
        "--issuer",
        &m.helseid.issuer,
        "--audience",
        "journal-api",
        "--scope",
        "journal.read",
        "--dpop-key",
        key_arg,
    ]);
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_owned();
    let path = "/v2/records/9";
    let url = format!("{PUBLIC}{path}");
    let (code, proof, err) = run_vakt(&[
        "dev-idp",
        "proof",
        "--dpop-key",
        key_arg,
        "--method",
        "GET",
        "--url",
        &url,
        "--token",
        &token,
    ]);
    assert_eq!(code, 0, "{err}");
    let answer = send_dpop(&m, "GET", path, &token, proof.trim()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);

    // Many proofs at once (load tests): distinct, each accepted once.
    let tokens = work.path().join("tokens");
    std::fs::write(&tokens, format!("{token}\n")).unwrap();
    let (code, proofs, err) = run_vakt(&[
        "dev-idp",
        "proof",
        "--dpop-key",
        key_arg,
        "--url",
        &url,
        "--tokens",
        tokens.to_str().unwrap(),
        "--count",
        "3",
    ]);
    assert_eq!(code, 0, "{err}");
    let proofs: Vec<&str> = proofs.lines().collect();
    assert_eq!(proofs.len(), 3);
    for proof in &proofs {
        let answer = send_dpop(&m, "GET", path, &token, proof).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    // A bad algorithm name is a usage error that names the choices.
    let (code, _, err) = run_vakt(&[
        "dev-idp",
        "proof",
        "--dpop-key",
        key_arg,
        "--alg",
        "HS256",
        "--url",
        &url,
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown algorithm \"HS256\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_replay_cache_refuses_dpop_requests_rather_than_forget_a_proof() {
    let m = mesh_with("    replay_cache: 1000\n").await;
    let key = DpopClientKey::generate(Alg::ES256).unwrap();
    let token = token(&m.helseid, Some(&key));
    let path = "/v2/records/4";
    let url = format!("{PUBLIC}{path}");
    // Proofs until one is refused: the cache holds 1,000 ids in 16 shards of 63.
    let mut accepted = 0;
    let refused = loop {
        let batch: Vec<String> = (0..50)
            .map(|_| key.proof("GET", &url, Some(&token), None).unwrap())
            .collect();
        let answers = futures_util::future::join_all(
            batch
                .iter()
                .map(|proof| send_dpop(&m, "GET", path, &token, proof)),
        )
        .await;
        accepted += answers.iter().filter(|a| a.status == 200).count();
        if let Some(refused) = answers.into_iter().find(|a| a.status != 200) {
            break refused;
        }
        assert!(accepted <= 1008, "the cache never filled");
    };
    assert_eq!(
        (refused.status, refused.code().as_str()),
        (503, "dpop_replay_cache_full"),
        "{}",
        refused.body
    );
    assert_eq!(refused.headers["retry-after"], "1");
    assert!(accepted >= 16, "{accepted}");
    assert_eq!(
        m.app.seen().len(),
        accepted,
        "only accepted proofs reached the app"
    );
    // Gauges are process-wide in this test binary (other sidecars set them too); the refusal
    // counter, by reason, is this test's own to grow.
    let metrics = metrics_text(m.server.admin_addr).await;
    assert!(
        metric_sum(
            &metrics,
            "vakt_authn_failures_total",
            &[("reason", "dpop_replay_cache_full")]
        ) >= 1.0
    );
}

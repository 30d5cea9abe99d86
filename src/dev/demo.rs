//! `vakt demo`: a mesh on loopback that a newcomer can watch. A throwaway PKI, a small app, a
//! server-side vakt in front of it, and client-side vakts for an allowed workload, a workload
//! with another identity, and an impostor with a certificate from another CA. Each request's
//! outcome is printed in plain words; the demo succeeds when every expectation held.

use std::io::Write;

use anyhow::Context as _;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::app::App;
use crate::authn::{Loa, Profile};
use crate::body::{self, ProxyBody};
use crate::config::Config;
use crate::dev::idp::{self as devidp, DevIdp, KeyStore, MintOptions, Person};
use crate::dev::mesh::{DevPki, EchoApp, base_config_yaml};

const TRUST_DOMAIN: &str = "demo.vakt.local";

struct Expectation {
    what: &'static str,
    via: &'static str,
    host: &'static str,
    path: &'static str,
    /// The `Authorization` header value.
    authorization: Option<String>,
    /// The `DPoP` proof header value.
    proof: Option<String>,
    status: StatusCode,
    reason: Option<&'static str>,
}

/// Run the demo; with `keep`, copy orders' audit trail, its checkpoints and the (throwaway)
/// chain key into that directory before the temporary files go.
pub async fn run(out: &mut impl Write, keep: Option<&std::path::Path>) -> anyhow::Result<bool> {
    writeln!(
        out,
        "vakt demo — a service mesh on 127.0.0.1, built from scratch\n"
    )?;
    let pki = DevPki::new(TRUST_DOMAIN).context("creating the demo CA")?;
    let rogue = DevPki::new(TRUST_DOMAIN).context("creating a second, untrusted CA")?;
    let orders_id = pki.spiffe_id("shop", "orders");
    let web_id = pki.spiffe_id("shop", "web");
    let batch_id = pki.spiffe_id("shop", "batch");
    writeln!(
        out,
        "1. A throwaway CA for trust domain {TRUST_DOMAIN} issued workload certificates:"
    )?;
    for id in [&orders_id, &web_id, &batch_id] {
        writeln!(out, "     {id}")?;
    }
    writeln!(
        out,
        "   and an impostor got a certificate for {web_id} from ANOTHER CA.\n"
    )?;

    let app = EchoApp::start().await.context("starting the demo app")?;
    let orders_dir = pki.workload("orders", &orders_id)?;
    let keys_dir = tempfile::tempdir().context("a directory for the demo issuer's keys")?;
    let keys = std::sync::Arc::new(KeyStore::open_or_create(keys_dir.path())?);
    let idp = DevIdp::start(([127, 0, 0, 1], 0).into(), keys, "/auth/realms/demo")
        .await
        .context("starting the demo identity provider")?;
    let policy = crate::dev::mesh::write_policy(
        &orders_dir,
        &format!(
            "routes:\n  - id: orders-read\n    methods: [GET]\n    path: /orders/{{id}}\n    token: none\n    allow:\n      - peers: [\"{web_id}\"]\n  - id: journal-read\n    methods: [GET]\n    path: /patients/{{pid}}/journal\n    allow:\n      - peers: [\"{web_id}\"]\n        min_loa: high\n        scopes_any: [journal.read]\n        bind: {{ pid: national_id }}\n  - id: journal-read-v2\n    methods: [GET]\n    path: /v2/patients/{{pid}}/journal\n    require_dpop: true\n    allow:\n      - peers: [\"{web_id}\"]\n        min_loa: high\n        scopes_any: [journal.read]\n        bind: {{ pid: national_id }}\n"
        ),
    )?;
    let server = App::start(Config::from_yaml(&format!(
        "{}inbound:\n  listen: 127.0.0.1:0\n  app: {}\n  policy: {}\noidc:\n  dpop:\n    public_url: http://orders.shop\n  issuers:\n    - issuer: {}\n      profile: helseid\n      audiences: [orders-api]\n      allow_insecure_loopback: true\n      dpop:\n        required: false\n",
        base_config_yaml(&orders_dir, TRUST_DOMAIN),
        app.addr,
        policy.display(),
        idp.issuer
    ))?)
    .await
    .context("starting the server-side vakt")?;
    let server_addr = server.inbound_addr.context("server inbound address")?;
    writeln!(
        out,
        "2. The app 'orders' listens on {} (plaintext, loopback only); its vakt accepts mTLS on {server_addr}.\n   Its policy: GET /orders/{{id}} for {web_id} only; GET /patients/{{pid}}/journal for web\n   with a HelseID-style token at level 4 (high), scope journal.read, and only the citizen's own pid;\n   GET /v2/patients/{{pid}}/journal the same, with a DPoP-bound token and its proof (RFC 9449).\n   A development issuer serves discovery and keys at {}.\n",
        app.addr, idp.issuer
    )?;

    let client_yaml = |dir: &std::path::Path| {
        format!(
            "{}outbound:\n  listen: 127.0.0.1:0\n  upstreams:\n  - authority: orders.shop:80\n    address: {server_addr}\n    spiffe_id: {orders_id}\n",
            base_config_yaml(dir, TRUST_DOMAIN)
        )
    };
    let web = App::start(Config::from_yaml(&client_yaml(
        &pki.workload("web", &web_id)?,
    ))?)
    .await?;
    let batch = App::start(Config::from_yaml(&client_yaml(
        &pki.workload("batch", &batch_id)?,
    ))?)
    .await?;
    // The impostor trusts the real CA too (so it would accept the real server); its own
    // certificate is what the server must refuse.
    let impostor_dir = rogue.workload("impostor", &web_id)?;
    std::fs::write(
        impostor_dir.join(crate::dev::certs::BUNDLE_FILE),
        format!("{}{}", rogue.ca.cert_pem(), pki.ca.cert_pem()),
    )?;
    let impostor = App::start(Config::from_yaml(&client_yaml(&impostor_dir))?).await;
    writeln!(
        out,
        "3. Client-side vakts for 'web', 'batch' and the impostor take plaintext from their app and\n   originate mTLS to orders.shop, checking that the server really is {orders_id}.\n"
    )?;

    let client: Client<_, ProxyBody> = Client::builder(TokioExecutor::new()).build_http();
    let mut all_held = true;
    let cases = [
        (
            Expectation {
                what: "web reads an order (allowed)",
                via: "web",
                host: "orders.shop",
                path: "/orders/42",
                authorization: None,
                proof: None,
                status: StatusCode::OK,
                reason: None,
            },
            web.outbound_addr,
        ),
        (
            Expectation {
                what: "batch reads an order (valid certificate, but not an allowed peer)",
                via: "batch",
                host: "orders.shop",
                path: "/orders/42",
                authorization: None,
                proof: None,
                status: StatusCode::FORBIDDEN,
                reason: Some("peer_not_allowed"),
            },
            batch.outbound_addr,
        ),
        (
            Expectation {
                what: "web calls payments.shop (not in web's egress table)",
                via: "web",
                host: "payments.shop",
                path: "/orders/42",
                authorization: None,
                proof: None,
                status: StatusCode::FORBIDDEN,
                reason: Some("unknown_destination"),
            },
            web.outbound_addr,
        ),
        (
            Expectation {
                what: "web asks for /admin (no route in the policy: deny by default)",
                via: "web",
                host: "orders.shop",
                path: "/admin",
                authorization: None,
                proof: None,
                status: StatusCode::FORBIDDEN,
                reason: Some("no_route"),
            },
            web.outbound_addr,
        ),
        (
            Expectation {
                what: "web hides a path behind an encoded slash (/orders%2F..%2Fadmin)",
                via: "web",
                host: "orders.shop",
                path: "/orders%2F..%2Fadmin",
                authorization: None,
                proof: None,
                status: StatusCode::BAD_REQUEST,
                reason: Some("invalid_path"),
            },
            web.outbound_addr,
        ),
    ];
    let client_key = crate::dev::dpop::DpopClientKey::generate(crate::authn::Alg::ES256)?;
    let mint = |level, lifetime_offset: i64, bound: bool| {
        let person = Person {
            sub: "demo-citizen".into(),
            // Synthetic (test-register) fødselsnummer: month + 80, valid check digits.
            national_id: Some("01819012446".into()),
            level,
            client_id: "journal-web".into(),
            scopes: vec!["journal.read".into()],
            audience: "orders-api".into(),
            ..Person::default()
        };
        let opts = MintOptions {
            issued_at_offset: Some(lifetime_offset),
            ..MintOptions::default()
        };
        let mut claims = devidp::claims(Profile::Helseid, &person);
        if bound {
            claims["cnf"] = client_key.cnf();
        }
        idp.mint(claims, &opts)
    };
    let citizen = |level, lifetime_offset| mint(level, lifetime_offset, false);
    let v2 = "/v2/patients/01819012446/journal";
    let v2_url = format!("http://orders.shop{v2}");
    let bound = mint(Loa::High, 0, true)?;
    let proof = client_key.proof("GET", &v2_url, Some(&bound), None)?;
    let dpop_cases = [
        Expectation {
            what: "the citizen reads the v2 journal with a DPoP-bound token and a fresh proof",
            via: "web",
            host: "orders.shop",
            path: v2,
            authorization: Some(format!("DPoP {bound}")),
            proof: Some(proof.clone()),
            status: StatusCode::OK,
            reason: None,
        },
        Expectation {
            what: "someone replays that same proof (and token)",
            via: "web",
            host: "orders.shop",
            path: v2,
            authorization: Some(format!("DPoP {bound}")),
            proof: Some(proof),
            status: StatusCode::UNAUTHORIZED,
            reason: Some("dpop_replayed"),
        },
        Expectation {
            what: "a proof made for another URL (/v2/patients/15838545626/journal)",
            via: "web",
            host: "orders.shop",
            path: v2,
            authorization: Some(format!("DPoP {bound}")),
            proof: Some(client_key.proof(
                "GET",
                "http://orders.shop/v2/patients/15838545626/journal",
                Some(&bound),
                None,
            )?),
            status: StatusCode::UNAUTHORIZED,
            reason: Some("dpop_wrong_uri"),
        },
        Expectation {
            what: "the DPoP-bound token stolen and sent as a plain Bearer token",
            via: "web",
            host: "orders.shop",
            path: "/patients/01819012446/journal",
            authorization: Some(format!("Bearer {bound}")),
            proof: None,
            status: StatusCode::UNAUTHORIZED,
            reason: Some("bound_token"),
        },
        Expectation {
            what: "a Bearer token on the v2 route, which takes DPoP only",
            via: "web",
            host: "orders.shop",
            path: v2,
            authorization: Some(format!("Bearer {}", citizen(Loa::High, 0)?)),
            proof: None,
            status: StatusCode::UNAUTHORIZED,
            reason: Some("dpop_required"),
        },
    ];
    let token_cases = [
        (
            Expectation {
                what: "a citizen (level 4) reads their own journal with a valid token",
                via: "web",
                host: "orders.shop",
                path: "/patients/01819012446/journal",
                authorization: Some(format!("Bearer {}", citizen(Loa::High, 0)?)),
                proof: None,
                status: StatusCode::OK,
                reason: None,
            },
            web.outbound_addr,
        ),
        (
            Expectation {
                what: "the same citizen with an expired token",
                via: "web",
                host: "orders.shop",
                path: "/patients/01819012446/journal",
                authorization: Some(format!("Bearer {}", citizen(Loa::High, -3600)?)),
                proof: None,
                status: StatusCode::UNAUTHORIZED,
                reason: Some("token_expired"),
            },
            web.outbound_addr,
        ),
        (
            Expectation {
                what: "a token at level 3 (too low: step-up to level 4 asked)",
                via: "web",
                host: "orders.shop",
                path: "/patients/01819012446/journal",
                authorization: Some(format!("Bearer {}", citizen(Loa::Substantial, 0)?)),
                proof: None,
                status: StatusCode::UNAUTHORIZED,
                reason: Some("insufficient_assurance"),
            },
            web.outbound_addr,
        ),
        (
            Expectation {
                what: "the citizen tries to read someone else's journal",
                via: "web",
                host: "orders.shop",
                path: "/patients/15838545626/journal",
                authorization: Some(format!("Bearer {}", citizen(Loa::High, 0)?)),
                proof: None,
                status: StatusCode::FORBIDDEN,
                reason: Some("binding_mismatch"),
            },
            web.outbound_addr,
        ),
    ];
    writeln!(out, "4. Requests through the mesh:")?;
    let dpop_cases = dpop_cases.into_iter().map(|e| (e, web.outbound_addr));
    for (expect, addr) in cases.into_iter().chain(token_cases).chain(dpop_cases) {
        let addr = addr.context("client outbound address")?;
        let (status, body) = get(
            &client,
            addr,
            expect.host,
            expect.path,
            expect.authorization.as_deref(),
            expect.proof.as_deref(),
        )
        .await?;
        let held = status == expect.status
            && expect
                .reason
                .is_none_or(|r| body.contains(&format!("\"error\":\"{r}\"")));
        all_held &= held;
        writeln!(
            out,
            "   [{}] {} (via {}'s vakt)\n         -> {} {}",
            if held { "ok" } else { "UNEXPECTED" },
            expect.what,
            expect.via,
            status.as_u16(),
            summarize(&body)
        )?;
    }

    match impostor {
        Ok(impostor) => {
            let addr = impostor
                .outbound_addr
                .context("impostor outbound address")?;
            let before = handshake_refusals(&server).await;
            let (status, body) =
                get(&client, addr, "orders.shop", "/orders/42", None, None).await?;
            let after = handshake_refusals(&server).await;
            let held = !status.is_success() && after > before;
            all_held &= held;
            writeln!(
                out,
                "   [{}] impostor with a certificate from another CA calls orders\n         -> {} {}\n         -> orders' vakt refused the TLS handshake (unknown CA); nothing reached the app",
                if held { "ok" } else { "UNEXPECTED" },
                status.as_u16(),
                summarize(&body)
            )?;
            impostor.shutdown().await;
        }
        Err(e) => {
            all_held = false;
            writeln!(
                out,
                "   [UNEXPECTED] the impostor's vakt did not start: {e}"
            )?;
        }
    }

    let seen = app.seen();
    let paths: Vec<&str> = seen.iter().map(|r| r.path_and_query.as_str()).collect();
    let only_web = paths == ["/orders/42", "/patients/01819012446/journal", v2];
    all_held &= only_web;
    writeln!(
        out,
        "\n5. The app saw {} request(s), all from {web_id} (the allowed ones above): {}",
        seen.len(),
        if only_web {
            "as expected"
        } else {
            "UNEXPECTED"
        }
    )?;

    for app in [web, batch, server] {
        app.shutdown().await;
    }

    // The audit trail of orders' vakt: one event per decision and refused handshake, national ids
    // only as pseudonyms, hash-chained.
    let audit_file = orders_dir.join("audit.log");
    let text = std::fs::read_to_string(&audit_file).unwrap_or_default();
    writeln!(
        out,
        "\n6. orders' vakt wrote {} audit event(s) to {}:",
        text.lines().count(),
        audit_file.display()
    )?;
    for line in text.lines() {
        let e: serde_json::Value = serde_json::from_str(line)?;
        writeln!(
            out,
            "   #{:<2} {:<9} {:<10} {:<22} {} {}{}{}",
            e["seq"],
            e["direction"].as_str().unwrap_or("-"),
            e["decision"].as_str().unwrap_or("-"),
            e["reason"].as_str().unwrap_or("-"),
            e["method"].as_str().unwrap_or(""),
            e["path"].as_str().unwrap_or(""),
            e["national_id_pseudonym"]
                .as_str()
                .map_or(String::new(), |p| format!("  (citizen {p})")),
            e["dpop_jkt"]
                .as_str()
                .map_or(String::new(), |k| format!("  (DPoP key {k})"))
        )?;
    }
    let leaked = text.contains("01819012446") || text.contains("15838545626");
    all_held &= !leaked && !text.is_empty();
    match verify_demo_trail(&orders_dir, &audit_file) {
        // The chain is also held against the checkpoints written beside it.
        Ok(report) if report.is_intact() && report.checkpoints > 0 => {
            writeln!(
                out,
                "   vakt audit verify: intact, {} events, keyed chain matches {} checkpoint(s)",
                report.events, report.checkpoints
            )?;
        }
        Ok(report) => {
            all_held = false;
            writeln!(out, "   vakt audit verify: BROKEN:\n{report}")?;
        }
        Err(e) => {
            all_held = false;
            writeln!(out, "   vakt audit verify: BROKEN: {e}")?;
        }
    }
    writeln!(
        out,
        "   raw national ids in the trail: {}",
        if leaked { "FOUND (UNEXPECTED)" } else { "none" }
    )?;
    if let Some(dir) = keep {
        std::fs::create_dir_all(dir).with_context(|| format!("--keep {}", dir.display()))?;
        for name in [
            "audit.log",
            crate::dev::mesh::DEV_CHECKPOINT_FILE,
            crate::dev::mesh::DEV_CHAIN_KEY_FILE,
        ] {
            std::fs::copy(orders_dir.join(name), dir.join(name))
                .with_context(|| format!("keeping {name} in {}", dir.display()))?;
        }
        writeln!(
            out,
            "   kept in {d}: audit.log, {c}, {k} (a throwaway key); check it with\n     vakt audit verify --key {d}/{k} --checkpoints {d}/{c} {d}/audit.log",
            d = dir.display(),
            c = crate::dev::mesh::DEV_CHECKPOINT_FILE,
            k = crate::dev::mesh::DEV_CHAIN_KEY_FILE,
        )?;
    }
    writeln!(
        out,
        "\n{}",
        if all_held {
            "Every expectation held. Next: `vakt certs init`, a config from config/, `vakt run`."
        } else {
            "Some expectations did NOT hold (see above)."
        }
    )?;
    Ok(all_held)
}

async fn get(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, ProxyBody>,
    proxy: std::net::SocketAddr,
    host: &str,
    path: &str,
    authorization: Option<&str>,
    proof: Option<&str>,
) -> anyhow::Result<(StatusCode, String)> {
    let mut request =
        Request::get(format!("http://{proxy}{path}")).header(http::header::HOST, host);
    if let Some(authorization) = authorization {
        request = request.header(http::header::AUTHORIZATION, authorization);
    }
    if let Some(proof) = proof {
        request = request.header("dpop", proof);
    }
    let request = request.body(body::empty())?;
    let response = client.request(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).trim().to_owned()))
}

fn summarize(body: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v) => format!(
            "refused by vakt: {} ({})",
            v["error"].as_str().unwrap_or("?"),
            v["message"].as_str().unwrap_or("")
        ),
        Err(_) => format!("app answered: {body:?}"),
    }
}

async fn handshake_refusals(server: &App) -> u64 {
    let Ok(text) = admin_get(server.admin_addr, "/metrics").await else {
        return 0;
    };
    text.lines()
        .filter(|l| l.starts_with(crate::metrics::HANDSHAKE_FAILURES) && l.contains("inbound"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn admin_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
    let client: Client<_, ProxyBody> = Client::builder(TokioExecutor::new()).build_http();
    let response = client
        .request(Request::get(format!("http://{addr}{path}")).body(body::empty())?)
        .await?;
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// `vakt audit verify --key --checkpoints` on the demo sidecar's trail, with its development key.
fn verify_demo_trail(
    dir: &std::path::Path,
    audit_file: &std::path::Path,
) -> Result<crate::audit::TrailReport, String> {
    let key = crate::audit::ChainKey::from_file(
        crate::dev::mesh::DEV_CHAIN_KEY_ID,
        &dir.join(crate::dev::mesh::DEV_CHAIN_KEY_FILE),
    )
    .map_err(|e| e.to_string())?;
    let checkpoints =
        crate::audit::CheckpointFile::read_all(&dir.join(crate::dev::mesh::DEV_CHECKPOINT_FILE))
            .map_err(|e| e.to_string())?;
    let options = crate::audit::VerifyOptions {
        keys: vec![crate::audit::VerifyKey { id: None, key }],
        checkpoints: Some(checkpoints),
    };
    crate::audit::verify_trail(&[audit_file.to_path_buf()], &options).map_err(|e| e.to_string())
}

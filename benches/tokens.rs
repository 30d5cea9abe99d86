//! Access-token verification cost per algorithm: cold (signature + all checks) and from the
//! verified-token cache; and the DPoP proof check every DPoP request pays on top (RFC 9449: parse,
//! signature under the proof's key, htm/htu/iat/ath/jkt, replay-cache insert).
//! `cargo bench --bench tokens`.

use std::hint::black_box;
use std::sync::Arc;

mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use vakt::authn::Alg;
use vakt::dev::idp::{self as devidp, DevIdp, KeyStore, MintOptions, Person};

fn tokens(c: &mut Criterion) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = Arc::new(KeyStore::open_or_create(dir.path()).expect("keys"));
    let idp = rt
        .block_on(DevIdp::start(([127, 0, 0, 1], 0).into(), keys, ""))
        .expect("dev idp");
    let person = Person {
        national_id: Some("12345678901".into()),
        scopes: vec!["journal.read".into()],
        audience: "bench".into(),
        ..Person::default()
    };
    let claims = devidp::claims(vakt::authn::Profile::Helseid, &person);
    let cold = common::verifier(&rt, &idp, 1);
    let warm = common::verifier(&rt, &idp, 1000);
    let mut group = c.benchmark_group("verify");
    for alg in [Alg::RS256, Alg::PS256, Alg::ES256] {
        let minted: Vec<String> = (0..64)
            .map(|i| {
                let mut claims = claims.clone();
                claims["jti"] = serde_json::json!(format!("bench-{i}"));
                idp.mint(
                    claims,
                    &MintOptions {
                        alg,
                        ..MintOptions::default()
                    },
                )
                .expect("mint")
            })
            .collect();
        let mut i = 0;
        group.bench_function(format!("{alg}_cold"), |b| {
            b.iter(|| {
                // A different token each time; the one-entry cache never hits.
                i = (i + 1) % minted.len();
                let r = cold
                    .verify(black_box(&minted[i]))
                    .now_or_never()
                    .expect("no await on known keys");
                assert!(r.is_ok());
            })
        });
        let token = &minted[0];
        warm.verify(token)
            .now_or_never()
            .expect("ready")
            .expect("valid");
        group.bench_function(format!("{alg}_cache_hit"), |b| {
            b.iter(|| {
                let r = warm
                    .verify(black_box(token))
                    .now_or_never()
                    .expect("no await");
                assert!(r.is_ok());
            })
        });
    }
    group.finish();
}

fn dpop_proofs(c: &mut Criterion) {
    use criterion::BatchSize;
    use vakt::authn::dpop::{DpopConfig, IssuerProofRules, ProofChecker, ProofContext, PublicUrl};
    use vakt::dev::dpop::DpopClientKey;

    let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2lnbmF0dXJl";
    let rules = IssuerProofRules {
        required: true,
        algorithms: vec![Alg::ES256, Alg::RS256, Alg::PS256],
        require_nonce: false,
        public_urls: vec![PublicUrl::parse("https://api.example.no").expect("url")],
        leeway_secs: 10,
    };
    let mut group = c.benchmark_group("dpop_proof");
    for alg in [Alg::ES256, Alg::RS256, Alg::PS256] {
        let key = DpopClientKey::generate(alg).expect("key");
        let proof = key
            .proof("GET", "https://api.example.no/records/1", Some(token), None)
            .expect("proof");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        // A fresh checker per check (made and dropped outside the timing), so the proof's jti
        // is new each time, as on a real request.
        group.bench_function(format!("{alg}_check"), |b| {
            b.iter_batched(
                || ProofChecker::new(&DpopConfig::default(), Some(&[7; 32])),
                |checker| {
                    let request = ProofContext {
                        method: &http::Method::GET,
                        path: "/records/1",
                        token,
                        token_jkt: key.jkt(),
                        now,
                    };
                    let r = checker.check(black_box(&proof), &rules, &request);
                    assert!(r.is_ok());
                    checker
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, tokens, dpop_proofs);
criterion_main!(benches);

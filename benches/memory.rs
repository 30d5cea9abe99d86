//! Memory held per verified token: the verified-token cache keeps one principal per token (up to
//! `oidc.verified_token_cache`, 10,000 by default), so this is what a sidecar's heap grows by as
//! distinct users call it. And memory held per DPoP proof id in the replay cache (up to
//! `oidc.dpop.replay_cache`). Counted exactly by a counting allocator, not sampled from RSS.
//! `cargo bench --bench memory`.

use std::sync::Arc;

mod common;

use futures_util::FutureExt;
use vakt::authn::headers::IdentityHeaders;
use vakt::dev::idp::{self as devidp, DevIdp, KeyStore, MintOptions};
use vakt::pseudonym::Pseudonymiser;

#[path = "counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::{Counting, live_bytes};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const TOKENS: usize = 1000;

fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = Arc::new(KeyStore::open_or_create(dir.path()).expect("keys"));
    let idp = rt
        .block_on(DevIdp::start(([127, 0, 0, 1], 0).into(), keys, ""))
        .expect("dev idp");
    let pseudonyms = Pseudonymiser::from_secret("bench", &[7; 32]);
    let verifier = common::verifier(&rt, &idp, TOKENS);
    // HelseID access tokens of distinct citizens, as the mesh benchmark's load carries.
    let tokens: Vec<String> = (0..TOKENS)
        .map(|i| {
            let person = common::citizen(&format!("{:011}", 10_000_000_000u64 + i as u64), "bench");
            let mut claims = devidp::claims(vakt::authn::Profile::Helseid, &person);
            claims["sub"] = serde_json::json!(format!("citizen-{i}"));
            idp.mint(claims, &MintOptions::default()).expect("mint")
        })
        .collect();
    let bytes_per_token = |label: &str, before: isize| {
        let held = live_bytes() - before;
        println!(
            "{label}: {TOKENS} tokens hold {held} bytes, {:.0} bytes per token",
            held as f64 / TOKENS as f64
        );
    };

    let before = live_bytes();
    let principals: Vec<_> = tokens
        .iter()
        .map(|t| {
            verifier
                .verify(t)
                .now_or_never()
                .expect("keys known: no await")
                .expect("valid token")
                .1
        })
        .collect();
    bytes_per_token("verified-token cache, principals as verified", before);
    let before = live_bytes();
    for p in &principals {
        // The audit event and the app's identity headers memoise the pseudonyms on first use.
        let _ = p.pseudonyms(&pseudonyms);
    }
    bytes_per_token("  + pseudonyms memoised on first use", before);
    let identity_headers = IdentityHeaders {
        pseudonyms: Arc::new(pseudonyms),
    };
    let before = live_bytes();
    for p in &principals {
        // Rendered on a principal's first allowed request and kept with it; each request
        // takes the values as `HeaderValue`s for its headers (dropped with the request).
        let values = identity_headers.values(p);
        assert!(
            values.len() >= 6,
            "issuer, loa, subject, scopes, amr, auth time at least"
        );
        assert_eq!(values.headers().count(), values.len());
    }
    bytes_per_token(
        "  + the app's identity headers, after a first request",
        before,
    );
    drop(principals);
    // All tokens still cached (the cache holds the principals, not the Vec).
    let hits = tokens
        .iter()
        .filter(|t| verifier.verify(t).now_or_never().is_some_and(|r| r.is_ok()))
        .count();
    assert_eq!(hits, TOKENS, "every token verified and answered");

    // The DPoP replay cache full to its default capacity: one id per accepted proof.
    let ids = 100_000u64;
    let before = live_bytes();
    let cache = vakt::authn::dpop::ReplayCache::new(ids as usize);
    for i in 0..ids {
        // Spread as the ids (hashes) spread in use.
        let id = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        cache.insert(id, 1_000, 1_070).expect("room for every id");
    }
    let held = live_bytes() - before;
    println!(
        "DPoP replay cache: {ids} proof ids hold {held} bytes, {:.1} bytes per id",
        held as f64 / ids as f64
    );
    assert_eq!(cache.len(), ids as usize);
}

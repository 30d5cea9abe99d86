//! Policy decision and path canonicalisation costs.
//!
//! `cargo bench --bench policy`. Decision time is measured for 10, 100 and 1,000 routes; the
//! router is a segment trie, so the cost should follow path depth, not route count. Report
//! ratios against the 10-route baseline of the same run (the machine is shared and noisy).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::Method;
use vakt::hygiene::path::canonicalize;
use vakt::identity::SpiffeId;
use vakt::policy::{Policy, RequestCtx, evaluate};

/// `n` routes of three shapes (exact, parameter, wildcard) across `n / 3` services.
fn policy(n: usize) -> Policy {
    let mut yaml = String::from("routes:\n");
    for i in 0..n {
        let path = match i % 3 {
            0 => format!("/svc{i}/health"),
            1 => format!("/svc{i}/patients/{{pid}}/journal"),
            _ => format!("/svc{i}/static/**"),
        };
        yaml.push_str(&format!(
            "  - id: r{i}\n    methods: [GET, POST]\n    path: {path}\n    allow:\n      - peers: [spiffe://cluster.local/ns/a/sa/web, spiffe://cluster.local/ns/b/sa/*]\n"
        ));
    }
    Policy::from_yaml(&yaml, &vakt::policy::PolicyContext::default())
        .expect("bench policy is valid")
}

fn decisions(c: &mut Criterion) {
    let peer: SpiffeId = "spiffe://cluster.local/ns/b/sa/reader".parse().unwrap();
    let mut group = c.benchmark_group("decision");
    for n in [10usize, 100, 1000] {
        let policy = policy(n);
        // A parameter route in the middle of the table, allowed by the second (pattern) peer.
        let target = (n / 2) / 3 * 3 + 1;
        let path = canonicalize(&format!("/svc{target}/patients/12345678901/journal")).unwrap();
        let miss = canonicalize("/nowhere/at/all").unwrap();
        group.bench_function(format!("{n}_routes_allow"), |b| {
            b.iter(|| {
                let d = evaluate(
                    black_box(&policy),
                    black_box(&RequestCtx {
                        method: &Method::GET,
                        host: None,
                        path: &path,
                        peer: Some(&peer),
                        principal: None,
                        now: 0,
                        upgrade: None,
                    }),
                );
                assert!(d.allowed);
                d
            })
        });
        group.bench_function(format!("{n}_routes_no_route"), |b| {
            b.iter(|| {
                evaluate(
                    black_box(&policy),
                    black_box(&RequestCtx {
                        method: &Method::GET,
                        host: None,
                        path: &miss,
                        peer: Some(&peer),
                        principal: None,
                        now: 0,
                        upgrade: None,
                    }),
                )
            })
        });
    }
    group.finish();
}

fn canonicalisation(c: &mut Criterion) {
    let mut group = c.benchmark_group("canonicalize");
    for (name, raw) in [
        ("clean", "/api/v1/patients/12345678901/journal"),
        (
            "dots_and_escapes",
            "/api/./v1//patients/%31%32/../12345678901/journal%7e",
        ),
        (
            "refused_encoded_slash",
            "/api/v1/patients%2F12345678901/journal",
        ),
    ] {
        group.bench_function(name, |b| b.iter(|| canonicalize(black_box(raw))));
    }
    group.finish();
}

criterion_group!(benches, decisions, canonicalisation);
criterion_main!(benches);

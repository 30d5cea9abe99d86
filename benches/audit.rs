//! Cost of one audit event on the request path: build it from what the stages learnt of the
//! exchange, pseudonymise the personal identifiers, serialise it to its JSON line,
//! and (on the audit writer thread, off the request path) seal it into the hash chain and hand
//! it to a sink. `cargo bench --bench audit`.
//!
//! The event is the one of an allowed inbound request on a route whose `{pid}` is bound to the
//! token's national id: peer SPIFFE id, route id and template, method, path (pseudonymised),
//! principal from a real token of the dev issuer (issuer, client id, subject and national id
//! pseudonymised, level, amr), decision and reason, request and trace ids.
//!
//! Every build calls `vakt::observe::build_event` itself, the request path's own function, which
//! pseudonymises as it builds; the pseudonymisation steps are also timed on their own.
//! Serialisation is what `ChainWriter::seal` does per event
//! (`serde_json::to_string`); "audit/chain + write to an in-memory buffer" is the writer
//! thread's per-event work (seal: chain fields, serialise, HMAC-SHA-256; then `Sink::write`).

mod common;

use std::hint::black_box;
use std::io::Write;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use http::{HeaderMap, Method, StatusCode};
use vakt::Direction;
use vakt::audit::redact::Redactor;
use vakt::audit::{
    self, AuditEvent, ChainHash, ChainKey, ChainWriter, Label, Sink, WriterSink, pseudonymise_path,
};
use vakt::authn::Principal;
use vakt::dev::idp::{self as devidp, DevIdp, KeyStore, MintOptions};
use vakt::exchange::{Known, Target};
use vakt::hygiene::path::{CanonicalPath, canonicalize};
use vakt::hygiene::{ensure_request_id, ensure_traceparent};
use vakt::identity::PeerIdentity;
use vakt::observe::{self, Answer};
use vakt::policy::decide::{DecisionRecord, Outcome};
use vakt::policy::{Policy, PolicyContext, RequestCtx, evaluate};
use vakt::pseudonym::Pseudonymiser;

const NATIONAL_ID: &str = "12345678901";
const PEER: &str = "spiffe://cluster.local/ns/shop/sa/web";

const POLICY: &str = "routes:\n  - id: journal\n    methods: [GET]\n    path: /patients/{pid}/journal\n    allow:\n      - peers: [spiffe://cluster.local/ns/shop/sa/web]\n        scopes_any: [journal.read]\n        bind: { pid: national_id }\n";

/// A verified principal as the authentication stage leaves it: a real token of the dev issuer
/// (HelseID claims, RS256) through the real verifier.
fn principal(rt: &tokio::runtime::Runtime) -> Arc<Principal> {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = Arc::new(KeyStore::open_or_create(dir.path()).expect("keys"));
    let idp = rt
        .block_on(DevIdp::start(([127, 0, 0, 1], 0).into(), keys, ""))
        .expect("dev idp");
    let verifier = common::verifier(rt, &idp, 1000);
    let person = common::citizen(NATIONAL_ID, "bench");
    let token = idp
        .mint(
            devidp::claims(vakt::authn::Profile::Helseid, &person),
            &MintOptions::default(),
        )
        .expect("mint");
    verifier
        .verify(&token)
        .now_or_never()
        .expect("keys are loaded")
        .expect("valid token")
        .1
}

/// What the inner stages learnt of an allowed request (decision record, canonical path,
/// principal, request ids) and the app's 200, as the observe stage's guard sees them.
fn allowed_exchange(principal: Arc<Principal>, peer: &PeerIdentity) -> (Known, Answer) {
    let context = PolicyContext {
        issuers: Some(vec![principal.issuer.to_string()]),
        ..PolicyContext::default()
    };
    let policy = Policy::from_yaml(POLICY, &context).expect("bench policy");
    let path: CanonicalPath =
        canonicalize(&format!("/patients/{NATIONAL_ID}/journal")).expect("canonical path");
    let decision = evaluate(
        &policy,
        &RequestCtx {
            method: &Method::GET,
            host: None,
            path: &path,
            peer: Some(&peer.spiffe_id),
            principal: Some(&principal),
            now: 0,
            upgrade: None,
        },
    );
    assert!(decision.allowed, "bench request must be allowed");
    let record = DecisionRecord::from_decision(&policy, &decision);
    assert_eq!(record.outcome, Outcome::Allow);
    assert!(!record.personal_params.is_empty(), "{{pid}} is personal");
    let mut headers = HeaderMap::new();
    let request_id = ensure_request_id(&mut headers);
    let trace_id = ensure_traceparent(&mut headers);
    let known = Known {
        decision_id: Some(uuid::Uuid::new_v4()),
        request_id: request_id.to_str().ok().map(Label::sanitized),
        trace_id: Some(Label::sanitized(&trace_id)),
        target: Some(Target::Canonical(path)),
        record: Some(record),
        principal: Some(principal),
        destination: None,
    };
    let answer = Answer {
        status: StatusCode::OK,
        refusal: None,
    };
    (known, answer)
}

fn finish(event: &mut AuditEvent) {
    event.bytes_in = Some(0);
    event.bytes_out = Some(14);
    event.duration_ms = Some(0);
}

/// An in-memory writer for the sink that keeps its memory bounded over millions of lines.
struct Buffer(Vec<u8>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() > 1 << 20 {
            self.0.clear();
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn audit_event(c: &mut Criterion) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pseudonyms = Pseudonymiser::from_secret("k1", &[7; 32]);
    let redactor = Redactor::national_ids(Arc::new(Pseudonymiser::from_secret("k1", &[7; 32])));
    let peer = PeerIdentity::new(PEER.parse().expect("peer id"), [0xab; 32]);
    let principal = principal(&rt);
    assert_eq!(principal.national_id.as_deref(), Some(NATIONAL_ID));
    let (known, answer) = allowed_exchange(principal.clone(), &peer);
    let method = Method::GET;

    // The complete event, checked once: allowed, and nothing personal in clear.
    let build = || {
        observe::build_event(
            Direction::Inbound,
            black_box(&method),
            Some(black_box(&peer)),
            black_box(&known),
            Some(black_box(&answer)),
            &pseudonyms,
            &redactor,
        )
    };
    let mut sample = build();
    finish(&mut sample);
    sample.seq = 42;
    sample.prev = ChainHash([0x5a; 32]);
    let mut line = String::new();
    sample.write_json(&mut line);
    assert_eq!(line, serde_json::to_string(&sample).expect("serialise"));
    assert!(line.contains("\"decision\":\"allow\""), "{line}");
    assert!(line.contains("\"national_id_pseudonym\":\"k1:"), "{line}");
    assert!(!line.contains(NATIONAL_ID), "national id in clear: {line}");
    eprintln!("audit line: {} bytes", line.len());

    let mut group = c.benchmark_group("audit");
    group.bench_function("build (pseudonyms included)", |b| b.iter(build));
    group.bench_function("pseudonymise national id", |b| {
        let mut event = build();
        b.iter(|| event.set_national_id(black_box(&pseudonyms), black_box(NATIONAL_ID)))
    });
    group.bench_function("pseudonymise path", |b| {
        b.iter(|| {
            pseudonymise_path(
                black_box("/patients/{pid}/journal"),
                black_box("/patients/12345678901/journal"),
                &["pid"],
                &pseudonyms,
            )
        })
    });
    // Every logged path goes through the national-id detector: a path without an id (the
    // common case, nothing allocated) and one with an id to pseudonymise.
    group.bench_function("redact path (no national id)", |b| {
        b.iter(|| {
            redactor
                .redact(black_box("/patients/k1:abc/journal/2026-01-15/items/12345"))
                .len()
        })
    });
    group.bench_function("redact path (one national id)", |b| {
        b.iter(|| {
            redactor
                .redact(black_box("/records/31129956715/journal"))
                .len()
        })
    });
    // The writer thread's encoder, and serde_json on the same event for comparison (they make
    // the same bytes; the writer used serde_json until 2026-12-04).
    group.bench_function("serialise (JSON line writer)", |b| {
        b.iter(|| {
            let mut line = String::with_capacity(1024);
            black_box(&sample).write_json(&mut line);
            line
        })
    });
    group.bench_function("serialise with serde_json (before 2026-12-04)", |b| {
        b.iter(|| serde_json::to_string(black_box(&sample)).expect("serialise"))
    });
    group.bench_function("build+pseudonymise+serialise", |b| {
        b.iter(|| {
            let mut event = observe::build_event(
                Direction::Inbound,
                black_box(&method),
                Some(black_box(&peer)),
                black_box(&known),
                Some(black_box(&answer)),
                black_box(&pseudonyms),
                black_box(&redactor),
            );
            finish(&mut event);
            let mut line = String::with_capacity(1024);
            event.write_json(&mut line);
            line
        })
    });
    // Observe also builds a `client_disconnected` stand-in per request (replaced once the
    // response exists): one more event id, timestamp and method label.
    group.bench_function("stand-in event (client_disconnected guard)", |b| {
        b.iter(|| {
            let mut event = AuditEvent::new(
                audit::Direction::Inbound,
                audit::Decision::Refused,
                Label::sanitized("client_disconnected"),
            );
            event.set_method(black_box(&method).as_str());
            event
        })
    });
    // The chain's share of sealing: the HMAC of the line, and the plain SHA-256 link of
    // `vakt.audit/1` over the same line for comparison.
    let key = Arc::new(ChainKey::new("bench", &[7; 32]).expect("chain key"));
    group.bench_function("line mac (HMAC-SHA-256)", |b| {
        b.iter(|| key.mac(&ChainHash::ZERO, black_box(line.as_bytes())))
    });
    group.bench_function("line hash (SHA-256, vakt.audit/1)", |b| {
        b.iter(|| audit::line_hash(black_box(line.as_bytes())))
    });
    // The writer thread, per event: seal (chain fields, serialise, HMAC), then the sink's write
    // (one line per batch here; the real writer batches whatever is queued, up to 512).
    group.bench_function("chain + write to an in-memory buffer", |b| {
        let mut chain = ChainWriter::new(key.clone());
        let mut sink = WriterSink::new(Buffer(Vec::with_capacity(2 << 20)), "memory");
        b.iter_batched(
            || sample.clone(),
            |event| {
                let line = chain.seal(event);
                sink.write(std::slice::from_ref(&line)).expect("write");
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, audit_event);
criterion_main!(benches);

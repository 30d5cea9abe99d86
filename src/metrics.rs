//! Metric names, their descriptions and the Prometheus exporter.
//!
//! Every label has a bounded set of values (direction, status class, reason codes, result):
//! never a peer identity, path, subject or token. The catalogue lives in `docs/METRICS.md`.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{OnceLock, PoisonError, RwLock};
use std::time::Duration;

use metrics::{Counter, Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS: &str = "vakt_requests_total";
pub const REQUEST_DURATION: &str = "vakt_request_duration_seconds";
pub const DENIALS: &str = "vakt_requests_denied_total";
pub const HANDSHAKE_FAILURES: &str = "vakt_tls_handshake_failures_total";
pub const ACTIVE_CONNECTIONS: &str = "vakt_active_connections";
pub const CONNECTIONS: &str = "vakt_connections_total";
pub const LIMITS_EXCEEDED: &str = "vakt_limits_exceeded_total";
pub const CERT_EXPIRY: &str = "vakt_certificate_expiry_timestamp_seconds";
pub const CERT_RELOADS: &str = "vakt_certificate_reloads_total";
pub const BUILD_INFO: &str = "vakt_build_info";
pub const POLICY_DECISIONS: &str = "vakt_policy_decisions_total";
pub const POLICY_RELOADS: &str = "vakt_policy_reloads_total";
pub const POLICY_ROUTES: &str = "vakt_policy_routes";
pub const RATE_LIMITED: &str = "vakt_rate_limited_total";
pub const AUDIT_WRITTEN: &str = "vakt_audit_events_written_total";
pub const AUDIT_DROPPED: &str = "vakt_audit_events_dropped_total";
pub const AUDIT_QUEUE: &str = "vakt_audit_queue_depth";
pub const AUDIT_QUEUE_CAPACITY: &str = "vakt_audit_queue_capacity";
pub const AUDIT_HEALTHY: &str = "vakt_audit_sink_healthy";
pub const AUDIT_CHAIN_HEAD: &str = "vakt_audit_chain_head_seq";
pub const AUDIT_CHAIN_BREAKS: &str = "vakt_audit_chain_breaks_total";
pub const AUTHN_FAILURES: &str = "vakt_authn_failures_total";
pub const TOKEN_CACHE: &str = "vakt_token_cache_lookups_total";
pub const JWKS_FETCHES: &str = "vakt_jwks_fetches_total";
pub const JWKS_LAST_SUCCESS: &str = "vakt_jwks_last_success_timestamp_seconds";
pub const JWKS_KEYS_DROPPED: &str = "vakt_jwks_keys_dropped_total";
pub const DPOP_REPLAY_ENTRIES: &str = "vakt_dpop_replay_cache_entries";
pub const DPOP_REPLAY_CAPACITY: &str = "vakt_dpop_replay_cache_capacity";
pub const CAPTURED_CONNECTIONS: &str = "vakt_captured_connections_total";
pub const EGRESS_DNS_FAILURES: &str = "vakt_egress_dns_failures_total";

/// Traffic direction label values.
pub const INBOUND: &str = "inbound";
pub const OUTBOUND: &str = "outbound";

const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Register a counter series at zero, without changing it if it exists. Alerts watch some
/// counters for their first increment: a series that appears at 1 has no `increase()` in
/// Prometheus, one that was scraped at 0 before does.
pub fn register_at_zero(name: &'static str, labels: &[(&'static str, &'static str)]) {
    let labels: Vec<metrics::Label> = labels
        .iter()
        .map(|(k, v)| metrics::Label::new(*k, *v))
        .collect();
    metrics::counter!(name, labels).increment(0);
}

/// The label every metric carries when `admin.workload` is set.
pub const WORKLOAD_LABEL: &str = "vakt_workload";

/// Install the process-wide recorder once and return its handle (for `/metrics`), with
/// `workload` as a label on every metric. Later calls (a second vakt in the same test process,
/// the demo) share the first one.
pub fn install(workload: Option<&str>) -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = match workload {
                Some(w) => PrometheusBuilder::new().add_global_label(WORKLOAD_LABEL, w),
                None => PrometheusBuilder::new(),
            };
            let recorder = builder
                .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), DURATION_BUCKETS)
                .map(PrometheusBuilder::build_recorder)
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only if another recorder was installed first (not done anywhere in vakt);
            // the handle then renders an empty page rather than lying.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

/// How often recorded histogram samples are folded into their buckets, scraped or not.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Fold recorded histogram samples into their buckets every `period` until `shutdown`. The
/// exporter keeps every sample until an upkeep (~16 bytes each in `tests/metrics_upkeep.rs`),
/// and without this task only a scrape of `/metrics` ran one: a sidecar nobody scrapes grew with
/// every request for good (~8 GB a day at 6,000 req/s), and one scraped every 30 s held 30 s of
/// samples.
pub fn spawn_upkeep(
    handle: PrometheusHandle,
    period: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => handle.run_upkeep(),
                _ = shutdown.changed() => return,
            }
        }
    })
}

fn describe() {
    describe_counter!(REQUESTS, "Requests answered, by direction and status class");
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Time from request received to response headers sent, by direction"
    );
    describe_counter!(
        DENIALS,
        "Requests refused by vakt itself, by direction and reason code"
    );
    describe_counter!(
        HANDSHAKE_FAILURES,
        "TLS handshakes refused or failed, by direction and reason"
    );
    describe_gauge!(
        ACTIVE_CONNECTIONS,
        "Connections currently open, by direction"
    );
    describe_counter!(CONNECTIONS, "Connections accepted, by direction");
    describe_counter!(
        LIMITS_EXCEEDED,
        "Requests or connections cut off by a configured limit, by direction and limit"
    );
    describe_gauge!(
        CERT_EXPIRY,
        Unit::Seconds,
        "Expiry (Unix time) of the workload certificate and of the earliest trust anchor of each trust domain's bundle"
    );
    describe_counter!(
        CERT_RELOADS,
        "Certificate reloads after a file change, by result (success, failure)"
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label says which build runs"
    );
    describe_gauge!(
        AUDIT_CHAIN_HEAD,
        "seq of the last audit line written (the chain's head)"
    );
    describe_gauge!(
        DPOP_REPLAY_ENTRIES,
        "DPoP proof ids remembered against replay (each until its proof could no longer be accepted)"
    );
    describe_gauge!(
        DPOP_REPLAY_CAPACITY,
        "oidc.dpop.replay_cache: when the entries reach it, DPoP requests are refused (503)"
    );
    describe_counter!(
        CAPTURED_CONNECTIONS,
        "Connections redirected by transparent capture, by what they were found to be: mesh, passthrough, direct (sent to the listener itself) or refused"
    );
    describe_counter!(
        EGRESS_DNS_FAILURES,
        "Failed DNS lookups of egress destinations (their last addresses are kept)"
    );
    describe_counter!(
        POLICY_DECISIONS,
        "Policy decisions, by route, decision (allow, deny, would_deny) and reason"
    );
    describe_counter!(
        POLICY_RELOADS,
        "Policy reloads after a file change or SIGHUP, by result (success, failure)"
    );
    describe_gauge!(POLICY_ROUTES, "Routes in the running policy");
    describe_counter!(
        RATE_LIMITED,
        "Requests over a route's per-peer rate limit, by route"
    );
    describe_counter!(AUDIT_WRITTEN, "Audit events written to the sink");
    describe_counter!(
        AUDIT_DROPPED,
        "Audit events that could not be recorded, by reason"
    );
    describe_gauge!(
        AUDIT_QUEUE,
        "Audit events accepted and waiting for the writer"
    );
    describe_gauge!(
        AUDIT_QUEUE_CAPACITY,
        "audit.queue_capacity: a full queue refuses requests (on_audit_failure: deny) or drops events"
    );
    describe_gauge!(
        AUDIT_HEALTHY,
        "1 while the audit sink accepts writes, 0 while it fails"
    );
    describe_counter!(
        AUTHN_FAILURES,
        "Access tokens refused before the policy, by issuer and reason"
    );
    describe_counter!(
        TOKEN_CACHE,
        "Lookups in the verified-token cache, by result (hit, miss)"
    );
    describe_counter!(
        JWKS_FETCHES,
        "Key-set fetches from the identity providers, by issuer, result and trigger"
    );
    describe_gauge!(
        JWKS_LAST_SUCCESS,
        Unit::Seconds,
        "Unix time of an issuer's last successful key-set fetch"
    );
    describe_counter!(
        JWKS_KEYS_DROPPED,
        "Published keys vakt does not use (weak or unusable), by issuer and reason"
    );
    describe_counter!(
        AUDIT_CHAIN_BREAKS,
        "Starts that opened a new audit chain epoch because the trail did not continue its last checkpoint, by reason"
    );
}

/// The status class label values, indexed by [`status_class_index`].
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Index into [`STATUS_CLASSES`].
pub fn status_class_index(status: http::StatusCode) -> usize {
    match status.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// `2xx`, `4xx`, ... for the status class label.
pub fn status_class(status: http::StatusCode) -> &'static str {
    STATUS_CLASSES[status_class_index(status)]
}

/// Counter handles by label values, registered on first use. A labelled `counter!` builds its
/// key and a fresh handle on every call (several allocations and a hash of every label), which
/// is too much for once per request; this keeps the handle. Keys are label values from bounded
/// sets (route ids of the policy, reason codes); past [`CounterCache::MAX`] entries (many
/// policy generations with renamed routes) counting still works, uncached.
pub struct CounterCache<K> {
    handles: RwLock<HashMap<K, Counter>>,
}

impl<K: Hash + Eq + Clone> Default for CounterCache<K> {
    fn default() -> Self {
        Self {
            handles: RwLock::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone> CounterCache<K> {
    pub const MAX: usize = 4096;

    /// Add 1 to the counter for `key`; `register` makes its handle the first time.
    pub fn increment(&self, key: &K, register: impl FnOnce(&K) -> Counter) {
        let full = {
            let handles = self.handles.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(counter) = handles.get(key) {
                counter.increment(1);
                return;
            }
            handles.len() >= Self::MAX
        };
        let counter = register(key);
        counter.increment(1);
        // Once full, no write lock on the request path: uncached keys just count.
        if !full {
            let mut handles = self.handles.write().unwrap_or_else(PoisonError::into_inner);
            if handles.len() < Self::MAX {
                handles.insert(key.clone(), counter);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(page: &str, line_start: &str) -> Option<u64> {
        page.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn counter_cache_counts_every_call_registers_once_and_stays_bounded() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let cache: CounterCache<String> = CounterCache::default();
        let registered = std::sync::atomic::AtomicUsize::new(0);
        metrics::with_local_recorder(&recorder, || {
            let register = |key: &String| {
                registered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                metrics::counter!("cache_test_total", "key" => key.clone())
            };
            for _ in 0..3 {
                cache.increment(&"a".to_owned(), register);
            }
            cache.increment(&"b".to_owned(), register);
            // Past the bound: still counted, just not kept.
            for i in 0..CounterCache::<String>::MAX + 10 {
                cache.increment(&format!("k{i}"), register);
            }
            cache.increment(&"k4100".to_owned(), register);
        });
        let page = handle.render();
        assert_eq!(
            count(&page, r#"cache_test_total{key="a"}"#),
            Some(3),
            "{page}"
        );
        assert_eq!(count(&page, r#"cache_test_total{key="b"}"#), Some(1));
        assert_eq!(count(&page, r#"cache_test_total{key="k4100"}"#), Some(2));
        let kept = cache.handles.read().unwrap().len();
        assert_eq!(kept, CounterCache::<String>::MAX);
        // "a" and "b" registered once each; every key past the bound on each call.
        assert_eq!(
            registered.load(std::sync::atomic::Ordering::Relaxed),
            CounterCache::<String>::MAX + 10 + 2 + 1
        );
    }
}

//! Per-route, per-identity rate limits on `governor` (GCRA). The clock is a type parameter so
//! tests drive time by hand; keyed state is pruned periodically so it stays bounded however many
//! identities pass (governor evicts nothing by itself).

use std::collections::HashMap;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use serde::Deserialize;

/// What a rate limit counts requests by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKey {
    /// The caller's SPIFFE ID.
    #[default]
    Peer,
    /// The token's subject (issuer + subject); requests without one count under the peer.
    Subject,
}

/// A route's limit as written in the policy file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Sustained requests per second per key.
    pub per_second: NonZeroU32,
    /// Requests allowed at once above the sustained rate (default: `per_second`).
    #[serde(default)]
    pub burst: Option<NonZeroU32>,
    #[serde(default)]
    pub key: LimitKey,
}

impl RateLimitSpec {
    fn quota(&self) -> Quota {
        Quota::per_second(self.per_second).allow_burst(self.burst.unwrap_or(self.per_second))
    }
}

type Keyed<K, C> = RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The limiters of one policy generation: one keyed limiter per limited route.
pub struct RateLimits<K: Hash + Eq + Clone, C: Clock = DefaultClock> {
    by_route: HashMap<usize, Keyed<K, C>>,
    clock: C,
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> RateLimits<K, C> {
    /// `specs`: (route index, spec) for every route with a limit.
    pub fn with_clock<'a>(
        specs: impl IntoIterator<Item = (usize, &'a RateLimitSpec)>,
        clock: C,
    ) -> Self {
        let by_route = specs
            .into_iter()
            .map(|(route, spec)| {
                (
                    route,
                    RateLimiter::dashmap_with_clock(spec.quota(), clock.clone()),
                )
            })
            .collect();
        Self { by_route, clock }
    }

    /// `Ok` when the request may pass; `Err(retry_after)` when over the limit. Routes without a
    /// limit always pass.
    pub fn check(&self, route: usize, key: &K) -> Result<(), Duration> {
        match self.by_route.get(&route) {
            None => Ok(()),
            Some(limiter) => limiter
                .check_key(key)
                .map_err(|not_until| not_until.wait_time_from(self.clock.now())),
        }
    }

    /// Forget keys whose state has fully recovered, and give the memory back.
    pub fn prune(&self) {
        for limiter in self.by_route.values() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Keys currently tracked (for tests and a gauge).
    pub fn tracked_keys(&self) -> usize {
        self.by_route.values().map(|l| l.len()).sum()
    }
}

impl<K: Hash + Eq + Clone> RateLimits<K, DefaultClock> {
    pub fn new<'a>(specs: impl IntoIterator<Item = (usize, &'a RateLimitSpec)>) -> Self {
        Self::with_clock(specs, DefaultClock::default())
    }
}

/// `Retry-After` in whole seconds, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// Prune on an interval until shutdown.
pub fn spawn_pruner<F>(
    every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    prune: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn() + Send + 'static,
{
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => prune(),
                _ = shutdown.changed() => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn spec(per_second: u32, burst: u32) -> RateLimitSpec {
        RateLimitSpec {
            per_second: NonZeroU32::new(per_second).unwrap(),
            burst: NonZeroU32::new(burst),
            key: LimitKey::Peer,
        }
    }

    #[test]
    fn burst_then_refill_with_a_fake_clock() {
        let clock = FakeRelativeClock::default();
        let s = spec(2, 3);
        let limits: RateLimits<&str, _> = RateLimits::with_clock([(0, &s)], clock.clone());
        for _ in 0..3 {
            assert_eq!(limits.check(0, &"a"), Ok(()));
        }
        let wait = limits.check(0, &"a").unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(retry_after_secs(wait), 1);
        // Another key has its own budget; a route without a limit always passes.
        assert_eq!(limits.check(0, &"b"), Ok(()));
        assert_eq!(limits.check(7, &"a"), Ok(()));
        clock.advance(Duration::from_millis(500));
        assert_eq!(limits.check(0, &"a"), Ok(()));
        assert!(limits.check(0, &"a").is_err());
    }

    #[test]
    fn idle_keys_are_pruned() {
        let clock = FakeRelativeClock::default();
        let s = spec(10, 10);
        let limits: RateLimits<u32, _> = RateLimits::with_clock([(0, &s)], clock.clone());
        for key in 0..10_000 {
            limits.check(0, &key).unwrap();
        }
        assert_eq!(limits.tracked_keys(), 10_000);
        clock.advance(Duration::from_secs(2));
        limits.prune();
        assert_eq!(limits.tracked_keys(), 0);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    }
}

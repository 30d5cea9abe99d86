//! The admin port's Prometheus text, read the way the tests assert on it.

use std::net::SocketAddr;
use std::time::Duration;

use super::client::{body_string, get, plain_send};

pub async fn metrics_text(admin: SocketAddr) -> String {
    body_string(plain_send(admin, get("/metrics", "admin")).await).await
}

/// Sum of the samples of `name` whose labels include every `labels` pair.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Wait (up to 5 s) until `name{labels}` on `admin` reaches at least `at_least`.
pub async fn wait_for_metric(
    admin: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    at_least: f64,
) -> f64 {
    let mut value = 0.0;
    for _ in 0..100 {
        value = metric_sum(&metrics_text(admin).await, name, labels);
        if value >= at_least {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    value
}

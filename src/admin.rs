//! The admin listener: `/live`, `/ready` and `/metrics` (Prometheus text format).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;

use crate::body::full;
use crate::stack::{BoxStack, Req, Resp};

/// The `admin` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `/live`, `/ready`, `/metrics` (plaintext; restrict with a NetworkPolicy).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 15021))
}

type Condition = Box<dyn Fn() -> bool + Send + Sync>;

/// Conditions for `/ready`. Each is set by the part of vakt that owns it.
#[derive(Default)]
pub struct Readiness {
    certificates_loaded: AtomicBool,
    listeners_bound: AtomicBool,
    draining: AtomicBool,
    conditions: std::sync::Mutex<Vec<(&'static str, Condition)>>,
}

impl Readiness {
    pub fn set_certificates_loaded(&self) {
        self.certificates_loaded.store(true, Ordering::SeqCst);
    }
    pub fn set_listeners_bound(&self) {
        self.listeners_bound.store(true, Ordering::SeqCst);
    }
    /// Shutting down: tell Kubernetes to stop sending traffic while requests drain.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// A further condition, asked on every `/ready` (e.g. signing keys loaded).
    pub fn add_condition(
        &self,
        name: &'static str,
        check: impl Fn() -> bool + Send + Sync + 'static,
    ) {
        self.conditions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name, Box::new(check)));
    }

    /// The conditions not met, in words; empty when ready.
    pub fn unmet(&self) -> Vec<&'static str> {
        let mut unmet = Vec::new();
        if !self.certificates_loaded.load(Ordering::SeqCst) {
            unmet.push("certificates not loaded");
        }
        if !self.listeners_bound.load(Ordering::SeqCst) {
            unmet.push("listeners not bound");
        }
        if self.draining.load(Ordering::SeqCst) {
            unmet.push("shutting down");
        }
        for (name, check) in self
            .conditions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            if !check() {
                unmet.push(name);
            }
        }
        unmet
    }
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Resp {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn handle(req: &Req, readiness: &Readiness, metrics: &PrometheusHandle) -> Resp {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into(), PLAIN);
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n".into(), PLAIN),
        "/ready" => match readiness.unmet().as_slice() {
            [] => text(StatusCode::OK, "ready\n".into(), PLAIN),
            unmet => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {}\n", unmet.join(", ")),
                PLAIN,
            ),
        },
        "/metrics" => {
            metrics.run_upkeep();
            text(
                StatusCode::OK,
                metrics.render(),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /live, /ready, /metrics\n".into(),
            PLAIN,
        ),
    }
}

pub fn stack(readiness: Arc<Readiness>, metrics: PrometheusHandle) -> BoxStack {
    BoxStack::new(tower::service_fn(move |req: Req| {
        let response = handle(&req, &readiness, &metrics);
        async move { Ok::<_, Infallible>(response) }
    }))
}

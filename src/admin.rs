//! The admin listener: `/live`, `/ready` and `/metrics` (Prometheus text format), and the
//! app's own health for the kubelet (`/app-health/<path>`, only the paths configured).

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

/// How long the app has to answer a health request.
const APP_HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// How often `/ready` asks the app's health endpoint.
const APP_HEALTH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);
/// Where the admin port answers for the app's probe paths.
const APP_HEALTH_PREFIX: &str = "/app-health";

/// The app's health as the admin port serves it: `/ready` includes `health_path` answering 2xx
/// (asked every 2 s), and `/app-health/<path>` answers with the app's own status for the listed
/// probe paths, so the kubelet's `httpGet` probes reach an app bound to loopback. GET only, no
/// body, nothing but the listed paths: the admin port is no way around the policy.
pub struct AppHealth {
    app: SocketAddr,
    health_path: Option<String>,
    probe_paths: Vec<String>,
    healthy: AtomicBool,
}

impl AppHealth {
    pub fn new(app: SocketAddr, health_path: Option<String>, probe_paths: Vec<String>) -> Self {
        Self {
            app,
            health_path,
            probe_paths,
            healthy: AtomicBool::new(false),
        }
    }

    /// The status of `GET <path>` at the app, or `None` when it does not answer in time.
    async fn ask(&self, path: &str) -> Option<StatusCode> {
        let request = async {
            let tcp = tokio::net::TcpStream::connect(self.app).await.ok()?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .ok()?;
            tokio::spawn(connection);
            let request = http::Request::get(path)
                .header(http::header::HOST, self.app.to_string())
                .body(crate::body::empty())
                .ok()?;
            Some(sender.send_request(request).await.ok()?.status())
        };
        tokio::time::timeout(APP_HEALTH_TIMEOUT, request)
            .await
            .ok()
            .flatten()
    }

    /// With a health path: ask it now and every [`APP_HEALTH_INTERVAL`], and make `/ready`
    /// depend on the last answer being 2xx.
    pub fn watch(
        self: &Arc<Self>,
        readiness: &Readiness,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let path = self.health_path.clone()?;
        let me = self.clone();
        readiness.add_condition("app health endpoint answering 2xx", move || {
            me.healthy.load(Ordering::Relaxed)
        });
        let me = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(APP_HEALTH_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.changed() => return,
                }
                let healthy = me.ask(&path).await.is_some_and(|s| s.is_success());
                me.healthy.store(healthy, Ordering::Relaxed);
            }
        }))
    }

    /// `/app-health/<path>`: the app's status for a listed path; 404 for any other.
    async fn probe(&self, path: &str) -> Resp {
        const PLAIN: &str = "text/plain; charset=utf-8";
        if !self.probe_paths.iter().any(|p| p == path) {
            return text(
                StatusCode::NOT_FOUND,
                "not a probe path of the app (inbound.app_probe_paths)\n".into(),
                PLAIN,
            );
        }
        match self.ask(path).await {
            Some(status) => text(status, format!("app: {}\n", status.as_u16()), PLAIN),
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "app: no answer\n".into(),
                PLAIN,
            ),
        }
    }
}

/// The `admin` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `/live`, `/ready`, `/metrics` (plaintext; restrict with a NetworkPolicy).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The workload this sidecar belongs to (e.g. `shop/orders`): a `vakt_workload` label on
    /// every metric, so alerts select a workload's series however they were scraped.
    #[serde(default)]
    pub workload: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            workload: None,
        }
    }
}

impl AdminConfig {
    /// The workload name, if set, must be a short plain label value.
    pub fn validate(&self) -> Result<(), (String, String)> {
        match &self.workload {
            Some(w)
                if w.is_empty()
                    || w.len() > 253
                    || !w.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-')
                    }) =>
            {
                Err((
                    "admin.workload".into(),
                    format!(
                        "\"{w}\" is not a workload name (letters, digits, . _ / -; at most 253)"
                    ),
                ))
            }
            _ => Ok(()),
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

/// What the admin port answers: at once, or after asking the app.
enum Answer {
    Now(Resp),
    AskApp(Arc<AppHealth>, String),
}

pub fn stack(
    readiness: Arc<Readiness>,
    metrics: PrometheusHandle,
    app_health: Option<Arc<AppHealth>>,
) -> BoxStack {
    BoxStack::new(tower::service_fn(move |req: Req| {
        let probe = app_health.clone().and_then(|health| {
            let path = req.uri().path().strip_prefix(APP_HEALTH_PREFIX)?;
            (req.method() == Method::GET && path.starts_with('/'))
                .then(|| Answer::AskApp(health, path.to_owned()))
        });
        let answer = probe.unwrap_or_else(|| Answer::Now(handle(&req, &readiness, &metrics)));
        async move {
            Ok::<_, Infallible>(match answer {
                Answer::Now(response) => response,
                Answer::AskApp(health, path) => health.probe(&path).await,
            })
        }
    }))
}

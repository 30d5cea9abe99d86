//! The composition root: builds everything from a [`Config`], binds the listeners and returns
//! their addresses (tests bind port 0 and read them here), and drains on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::Direction;
use crate::admin::{self, Readiness};
use crate::audit::redact::{RedactPatternError, Redactor};
use crate::audit::{
    AuditConfig, AuditLog, AuditSink, Auditor, ChainKey, ChainKeyError, ChainSettings,
    CheckpointSettings, FileSink, FileSinkConfig, SinkError, StdoutSink,
};
use crate::authn::http_client::IdpClient;
use crate::authn::jwks::IssuerKeys;
use crate::authn::stage::Authenticate;
use crate::authn::verify::Verifier;
use crate::capture::{CaptureMode, EgressTable};
use crate::config::Config;
use crate::forward::{ToApp, ToMesh, Tunnels};
use crate::hygiene::{HeaderRules, Hygiene};
use crate::listener::{
    ConnectionLimits, ListenerContext, serve_plain, serve_tls, serve_transparent,
};
use crate::observe::Observe;
use crate::policy::PolicyError;
use crate::policy::reload::PolicyStore;
use crate::policy::stage::{PolicyStage, RateLimitStage};
use crate::pseudonym::{PseudonymError, Pseudonymiser};
use crate::stack;
use crate::tls::{CertStore, TlsError, spawn_reloader};
use crate::upstream::{AppClient, MeshClient};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("certificates: {0}")]
    Tls(#[from] TlsError),
    #[error("policy: {0}")]
    Policy(#[from] PolicyError),
    #[error("pseudonymisation: {0}")]
    Pseudonym(#[from] PseudonymError),
    #[error("DNS resolver for the egress table: {0}")]
    Resolver(std::io::Error),
    #[error("oidc client: {0}")]
    Oidc(std::io::Error),
    #[error("oidc.dpop.nonce_secret_file {path}: {reason}")]
    NonceSecret {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("audit sink: {0}")]
    Audit(#[from] SinkError),
    #[error("audit chain key: {0}")]
    ChainKey(#[from] ChainKeyError),
    #[error("audit.redact_patterns[{index}]: {error}")]
    RedactPattern {
        index: usize,
        error: RedactPatternError,
    },
    #[error("cannot listen on {addr} ({name}): {source}")]
    Bind {
        name: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// How often shutdown looks whether the app still holds connections to the outbound listener.
const OUTBOUND_CHECK: Duration = Duration::from_millis(100);

/// A running vakt.
pub struct App {
    pub inbound_addr: Option<SocketAddr>,
    pub outbound_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub readiness: Arc<Readiness>,
    pub certs: Arc<CertStore>,
    pub policy: Option<Arc<PolicyStore>>,
    pub auditor: Arc<Auditor>,
    grace_period: Duration,
    /// Inbound and outbound are stopped one after the other (`App::shutdown`).
    inbound: Option<Serving>,
    outbound: Option<Serving>,
    /// Everything else: reloaders, refreshers, gauges.
    shutdown: watch::Sender<bool>,
    admin_shutdown: watch::Sender<bool>,
    listeners: Vec<JoinHandle<()>>,
    admin: JoinHandle<()>,
}

/// One data listener, and what stops and drains it.
struct Serving {
    shutdown: watch::Sender<bool>,
    listener: JoinHandle<()>,
    tracker: TaskTracker,
    connections: Arc<ConnectionLimits>,
}

impl Serving {
    /// Stop accepting, ask every connection to finish, and wait for them until `deadline`;
    /// `true` when they all finished.
    async fn drain(self, deadline: tokio::time::Instant) -> bool {
        let _ = self.shutdown.send(true);
        let _ = self.listener.await;
        self.tracker.close();
        tokio::time::timeout_at(deadline, self.tracker.wait())
            .await
            .is_ok()
    }
}

async fn bind(name: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { name, addr, source })
}

impl App {
    /// Load certificates, bind every listener and start serving. Fails (and serves nothing)
    /// if the certificates are unusable or an address cannot be bound.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        Self::start_with(config, Duration::ZERO).await
    }

    /// [`App::start`] with an audit file sink that waits `delay` before each write: a slow disk
    /// for the tests of what happens when the audit queue fills up.
    #[cfg(feature = "test-support")]
    pub async fn start_with_slow_audit_sink(
        config: Config,
        delay: Duration,
    ) -> Result<Self, StartError> {
        Self::start_with(config, delay).await
    }

    async fn start_with(config: Config, audit_write_delay: Duration) -> Result<Self, StartError> {
        let metrics = crate::metrics::install(config.admin.workload.as_deref());
        // Counters that alerts watch for a first failure start at zero.
        Auditor::register_failure_series();
        CertStore::register_failure_series();
        if config.inbound.is_some() {
            PolicyStore::register_failure_series();
        }
        let readiness = Arc::new(Readiness::default());
        let certs = Arc::new(CertStore::load(&config.identity, config.tls.min_version)?);
        readiness.set_certificates_loaded();

        let limits = Arc::new(config.limits.clone());
        let data_listeners =
            usize::from(config.inbound.is_some()) + usize::from(config.outbound.is_some());
        let connection_cap =
            crate::listener::fit_connection_cap(limits.max_connections, data_listeners);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (admin_shutdown, admin_shutdown_rx) = watch::channel(false);
        // Each data listener with its own stop signal and connection tracker (its tunnels
        // included), so that shutdown can drain inbound while outbound still serves the app.
        let serving = |direction: Direction| {
            let (stop, stop_rx) = watch::channel(false);
            let tracker = TaskTracker::new();
            let tunnels = Tunnels {
                tracker: tracker.clone(),
                idle_timeout: limits.tunnel_idle_timeout,
                direction: direction.as_str(),
            };
            (stop, stop_rx, tracker, tunnels)
        };
        let context = |direction, stack, shutdown, tracker, auditor| ListenerContext {
            direction,
            stack,
            limits: limits.clone(),
            shutdown,
            tracker,
            auditor,
            connections: ConnectionLimits::new(&limits, connection_cap),
        };

        let mut listeners = Vec::new();
        let pseudonyms = Arc::new(match &config.pseudonymisation {
            Some(p) => Pseudonymiser::from_config(p)?,
            None => {
                tracing::warn!(
                    "no pseudonymisation key configured: using a random per-process key"
                );
                Pseudonymiser::ephemeral()
            }
        });
        let redactor = Redactor::new(pseudonyms.clone(), &config.audit.redact_patterns)
            .map_err(|(index, error)| StartError::RedactPattern { index, error })?;
        let auditor = Arc::new(
            Auditor::new(
                start_audit_log(&config, audit_write_delay)?,
                pseudonyms.clone(),
                config.audit.on_audit_failure,
                config.audit.queue_capacity,
            )
            .with_redactor(redactor)
            .with_responses_waiting_for_events(config.audit.responses_wait_for_events()),
        );
        // Alerts compare the queue's depth with its capacity (a full queue refuses requests).
        metrics::gauge!(crate::metrics::AUDIT_QUEUE_CAPACITY).set(auditor.capacity as f64);
        if auditor.on_failure == crate::audit::OnAuditFailure::Deny {
            // Every request would be refused 503 while the sink fails: take no traffic.
            let log = auditor.log.clone();
            readiness.add_condition("audit sink writing (on_audit_failure: deny)", move || {
                log.healthy()
            });
        }
        listeners.push(spawn_audit_gauges(auditor.log.clone(), shutdown_rx.clone()));
        listeners.push(crate::metrics::spawn_upkeep(
            metrics.clone(),
            crate::metrics::UPKEEP_INTERVAL,
            shutdown_rx.clone(),
        ));
        let verifier = match &config.oidc {
            None => None,
            Some(oidc) => {
                let client =
                    IdpClient::new(oidc.https_proxy_uri().as_ref()).map_err(StartError::Oidc)?;
                let issuers: Vec<Arc<IssuerKeys>> = oidc
                    .issuers
                    .iter()
                    .map(|i| Arc::new(IssuerKeys::new(Arc::new(i.clone()), oidc, client.clone())))
                    .collect();
                for keys in &issuers {
                    listeners.push(keys.clone().spawn_refresher(shutdown_rx.clone()));
                }
                let ready_keys = issuers.clone();
                readiness.add_condition("signing keys of every issuer loaded", move || {
                    ready_keys.iter().all(|k| k.is_ready())
                });
                let mut verifier = Verifier::new(issuers, oidc);
                if let Some(path) = &oidc.dpop.nonce_secret_file {
                    let fail = |reason: String| StartError::NonceSecret {
                        path: path.clone(),
                        reason,
                    };
                    let secret = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
                    if secret.len() < 32 {
                        return Err(fail(format!(
                            "{} bytes; at least 32 are needed",
                            secret.len()
                        )));
                    }
                    verifier = verifier.with_nonce_secret(oidc, &secret);
                }
                let verifier = Arc::new(verifier);
                listeners.push(spawn_dpop_gauges(verifier.clone(), shutdown_rx.clone()));
                Some(verifier)
            }
        };
        let mut inbound_addr = None;
        let mut inbound_serving = None;
        let mut policy = None;
        if let Some(inbound) = &config.inbound {
            let store = Arc::new(PolicyStore::load(&inbound.policy, config.policy_context())?);
            listeners
                .extend(store.spawn_reloader(config.identity.reload_interval, shutdown_rx.clone()));
            policy = Some(store.clone());
            let listener = bind("inbound.listen", inbound.listen).await?;
            inbound_addr = listener.local_addr().ok();
            let (stop, stop_rx, tracker, tunnels) = serving(Direction::Inbound);
            let stack = stack::inbound(
                Observe::new(Direction::Inbound, Some(auditor.clone())),
                Hygiene::inbound(
                    inbound.header_rules(&config.hygiene),
                    config.hygiene.forwarded,
                    certs.clone(),
                ),
                Authenticate::new(verifier.clone(), Some(store.clone())),
                PolicyStage::new(store, pseudonyms.clone()),
                RateLimitStage,
                ToApp::new(
                    AppClient::new(inbound.app, inbound.app_protocol, &limits),
                    tunnels,
                ),
            );
            let ctx = context(
                Direction::Inbound,
                stack,
                stop_rx,
                tracker.clone(),
                Some(auditor.clone()),
            );
            let connections = ctx.connections.clone();
            inbound_serving = Some(Serving {
                shutdown: stop,
                listener: tokio::spawn(serve_tls(listener, certs.clone(), ctx)),
                tracker,
                connections,
            });
        }
        let mut outbound_addr = None;
        let mut outbound_serving = None;
        if let Some(outbound) = &config.outbound {
            let listener = bind("outbound.listen", outbound.listen).await?;
            outbound_addr = listener.local_addr().ok();
            let (stop, stop_rx, tracker, tunnels) = serving(Direction::Outbound);
            let stack = stack::outbound(
                Observe::new(Direction::Outbound, Some(auditor.clone())),
                Hygiene::outbound(HeaderRules::new(&config.hygiene, Vec::new(), Vec::new())),
                ToMesh::new(
                    MeshClient::new(&outbound.upstreams, certs.clone(), &limits),
                    tunnels,
                ),
            );
            let ctx = context(
                Direction::Outbound,
                stack,
                stop_rx,
                tracker.clone(),
                Some(auditor.clone()),
            );
            let connections = ctx.connections.clone();
            let serve = match outbound.capture {
                CaptureMode::Proxy => tokio::spawn(serve_plain(listener, ctx)),
                CaptureMode::Transparent => {
                    crate::capture::register_failure_series();
                    // The table is filled before the first connection is taken.
                    let egress = Arc::new(EgressTable::new(&outbound.upstreams));
                    listeners.push(
                        egress
                            .clone()
                            .start_resolver(shutdown_rx.clone())
                            .await
                            .map_err(StartError::Resolver)?,
                    );
                    tokio::spawn(serve_transparent(listener, egress, ctx))
                }
            };
            outbound_serving = Some(Serving {
                shutdown: stop,
                listener: serve,
                tracker,
                connections,
            });
        }
        // The app's health for /ready and the kubelet's probes (`inbound.app_health`).
        let app_health = config.inbound.as_ref().and_then(|inbound| {
            if inbound.app_health.is_none() && inbound.app_probe_paths.is_empty() {
                return None;
            }
            let health = Arc::new(admin::AppHealth::new(
                inbound.app,
                inbound.app_health.clone(),
                inbound.app_probe_paths.clone(),
            ));
            listeners.extend(health.watch(&readiness, shutdown_rx.clone()));
            Some(health)
        });
        let admin_listener = bind("admin.listen", config.admin.listen).await?;
        let admin_addr = admin_listener.local_addr().unwrap_or(config.admin.listen);
        let admin_ctx = ListenerContext {
            direction: Direction::Admin,
            stack: admin::stack(readiness.clone(), metrics, app_health),
            limits: limits.clone(),
            shutdown: admin_shutdown_rx.clone(),
            tracker: TaskTracker::new(),
            auditor: None,
            // Its own caps, within the descriptors kept free: saturated data listeners leave
            // the probes answered.
            connections: ConnectionLimits::new(&limits, crate::listener::ADMIN_MAX_CONNECTIONS),
        };
        let admin = tokio::spawn(serve_plain(admin_listener, admin_ctx));
        listeners.push(spawn_reloader(certs.clone(), shutdown_rx));
        readiness.set_listeners_bound();

        tracing::info!(
            identity = %certs.current().material.identity,
            inbound = ?inbound_addr,
            outbound = ?outbound_addr,
            admin = %admin_addr,
            "vakt started"
        );
        Ok(Self {
            inbound_addr,
            outbound_addr,
            admin_addr,
            readiness,
            certs,
            policy,
            auditor,
            grace_period: config.shutdown.grace_period,
            inbound: inbound_serving,
            outbound: outbound_serving,
            shutdown,
            admin_shutdown,
            listeners,
            admin,
        })
    }

    /// Re-read certificates and policy now (SIGHUP).
    pub async fn reload(&self) {
        let certs = self.certs.clone();
        let policy = self.policy.clone();
        let _ = tokio::task::spawn_blocking(move || {
            certs.reload();
            if let Some(policy) = policy {
                policy.reload();
            }
        })
        .await;
    }

    /// Stop within the grace period, in the order a pod needs: `/ready` turns false; inbound
    /// stops accepting and its requests finish; the outbound listener keeps serving the app
    /// meanwhile, and until the app has closed its connections to it (the app may still be
    /// finishing work that calls other services); then outbound drains and everything stops.
    /// Returns `true` when everything drained in time.
    pub async fn shutdown(self) -> bool {
        self.readiness.set_draining();
        let deadline = tokio::time::Instant::now() + self.grace_period;
        let mut drained = true;
        if let Some(inbound) = self.inbound {
            drained &= inbound.drain(deadline).await;
            tracing::info!(drained, "inbound stopped");
        }
        if let Some(outbound) = self.outbound {
            while outbound.connections.open() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(OUTBOUND_CHECK).await;
            }
            drained &= outbound.drain(deadline).await;
            tracing::info!(drained, "outbound stopped");
        }
        let _ = self.shutdown.send(true);
        for listener in self.listeners {
            let _ = listener.await;
        }
        if drained {
            tracing::info!("all connections drained");
        } else {
            tracing::warn!(
                grace_period = ?self.grace_period,
                "grace period over; closing the remaining connections"
            );
        }
        // Every event already accepted is written before the process ends.
        if let Err(error) = self.auditor.log.clone().shutdown(self.grace_period).await {
            tracing::error!(%error, "audit events could not all be written before shutdown");
        }
        let _ = self.admin_shutdown.send(true);
        let _ = self.admin.await;
        drained
    }
}

/// `write_delay` is zero but in the tests (feature `test-support`), which slow the file sink.
#[cfg_attr(
    not(feature = "test-support"),
    allow(unused_variables, reason = "only the tests slow the sink")
)]
fn start_audit_log(config: &Config, write_delay: Duration) -> Result<AuditLog, StartError> {
    let queue = AuditConfig {
        capacity: config.audit.queue_capacity,
        ..AuditConfig::default()
    };
    // A configured key that cannot be read stops the start: never an unkeyed trail instead.
    let key = match &config.audit.chain_key {
        Some(k) => ChainKey::from_file(&k.key_id, &k.key_file)?,
        None => {
            tracing::warn!(
                "no audit chain key configured: the stdout trail is keyed with a random per-process key and cannot be verified"
            );
            ChainKey::ephemeral()
        }
    };
    let chain = ChainSettings {
        key: Arc::new(key),
        checkpoints: CheckpointSettings {
            file: config.audit.checkpoint_file.clone(),
            stdout: config.audit.checkpoint_stdout,
            interval: config.audit.checkpoint_interval,
            every: config.audit.checkpoint_every,
        },
    };
    Ok(match (config.audit.sink, &config.audit.file) {
        (AuditSink::File, Some(file)) => {
            let sink = FileSink::new(FileSinkConfig {
                path: file.path.clone(),
                max_bytes: file.max_bytes,
                max_files: file.max_files,
                fsync: config
                    .audit
                    .fsync()
                    .unwrap_or(crate::audit::FsyncPolicy::Always),
            })?;
            #[cfg(feature = "test-support")]
            if !write_delay.is_zero() {
                return Ok(AuditLog::start(
                    crate::audit::slow::SlowSink::new(sink, write_delay),
                    queue,
                    chain,
                ));
            }
            AuditLog::start(sink, queue, chain)
        }
        _ => AuditLog::start(StdoutSink::stdout(), queue, chain),
    })
}

/// Mirror the DPoP replay cache's size into metrics once a second.
fn spawn_dpop_gauges(
    verifier: Arc<Verifier>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let proofs = verifier.proofs();
        metrics::gauge!(crate::metrics::DPOP_REPLAY_CAPACITY).set(proofs.replay_capacity() as f64);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            metrics::gauge!(crate::metrics::DPOP_REPLAY_ENTRIES)
                .set(proofs.replay_entries() as f64);
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
        }
    })
}

/// Mirror the audit log's counters into metrics once a second.
fn spawn_audit_gauges(log: AuditLog, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            metrics::counter!(crate::metrics::AUDIT_WRITTEN).absolute(log.written());
            metrics::gauge!(crate::metrics::AUDIT_QUEUE).set(log.queue_depth() as f64);
            metrics::gauge!(crate::metrics::AUDIT_CHAIN_HEAD).set(log.head_seq() as f64);
            metrics::gauge!(crate::metrics::AUDIT_HEALTHY).set(if log.healthy() {
                1.0
            } else {
                0.0
            });
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
        }
    })
}

//! A server-side vakt in front of the recording app, and client-side vakts, on 127.0.0.1 (port
//! 0) with a PKI made for the test.

use std::net::SocketAddr;
use std::sync::Arc;

use super::client::raw_client_config;
use super::metrics::{metric_sum, metrics_text, wait_for_metric};
use crate::app::App;
use crate::config::Config;
use crate::dev::mesh::{
    DevPki, EchoApp, allow_peers_policy_yaml, federated_config_yaml, write_policy,
};

pub const TD: &str = "test.vakt.local";

pub fn init() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A server-side vakt in front of an echo app, with its PKI.
pub struct Server {
    pub pki: DevPki,
    pub app: EchoApp,
    pub vakt: App,
    pub id: String,
    pub dir: std::path::PathBuf,
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        self.vakt.inbound_addr.expect("inbound listener")
    }

    /// Replace the policy file (atomically, as a ConfigMap update does) and wait until a reload
    /// with `result` (`success` or `failure`) has been counted; after a success, until this
    /// sidecar runs the new policy (the counter is shared by every sidecar in the process).
    pub async fn set_policy(&self, yaml: &str, result: &str) {
        let store = self
            .vakt
            .policy
            .as_ref()
            .expect("an inbound sidecar has a policy");
        let running = store.current();
        let admin = self.vakt.admin_addr;
        let labels = [("result", result)];
        let before = metric_sum(
            &metrics_text(admin).await,
            "vakt_policy_reloads_total",
            &labels,
        );
        let tmp = self.dir.join("policy.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.dir.join("policy.yaml")).unwrap();
        let after =
            wait_for_metric(admin, "vakt_policy_reloads_total", &labels, before + 1.0).await;
        assert!(
            after >= before + 1.0,
            "no policy reload with result {result} was counted"
        );
        if result == "success" {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            while Arc::ptr_eq(&running, &store.current()) {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "this sidecar did not take the new policy"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}

/// Start an echo app and a server-side vakt for `spiffe://TD/ns/shop/sa/orders` allowing
/// `allowed` (service-account names in ns `shop`). `extra` is appended to the YAML (limits...).
pub async fn server(allowed: &[&str], extra: &str) -> Server {
    init();
    let pki = DevPki::new(TD).unwrap();
    let peers: Vec<String> = allowed.iter().map(|sa| pki.spiffe_id("shop", sa)).collect();
    federated_server(pki, &peers, &[], extra).await
}

/// Start an echo app and a server-side vakt for `spiffe://<pki's trust domain>/ns/shop/sa/orders`
/// issued by `pki`, allowing the SPIFFE IDs `peers`, with `federation` entries (trust domain,
/// bundle file) in its identity section.
pub async fn federated_server(
    pki: DevPki,
    peers: &[String],
    federation: &[(&str, &std::path::Path)],
    extra: &str,
) -> Server {
    init();
    let app = EchoApp::start().await.unwrap();
    let id = pki.spiffe_id("shop", "orders");
    let dir = pki.workload("orders", &id).unwrap();
    let policy = write_policy(&dir, &allow_peers_policy_yaml(peers)).unwrap();
    let yaml = format!(
        "{}inbound:\n  listen: 127.0.0.1:0\n  app: {}\n  policy: {}\n{extra}",
        federated_config_yaml(&dir, &pki.trust_domain, federation),
        app.addr,
        policy.display()
    );
    let vakt = App::start(Config::from_yaml(&yaml).unwrap()).await.unwrap();
    Server {
        pki,
        app,
        vakt,
        id,
        dir,
    }
}

/// A server-side vakt for `spiffe://TD/ns/shop/sa/orders` in front of `app` (any app of the
/// test's own), allowing `spiffe://TD/ns/shop/sa/web` everything the default test policy allows.
/// `extra` is appended to the YAML. Returns the sidecar, its SPIFFE ID and its files' directory.
pub async fn server_in_front_of(
    pki: &DevPki,
    app: SocketAddr,
    extra: &str,
) -> (App, String, std::path::PathBuf) {
    init();
    let id = pki.spiffe_id("shop", "orders");
    let dir = pki.workload("orders", &id).unwrap();
    let policy = write_policy(
        &dir,
        &allow_peers_policy_yaml(&[pki.spiffe_id("shop", "web")]),
    )
    .unwrap();
    let yaml = format!(
        "{}inbound:\n  listen: 127.0.0.1:0\n  app: {app}\n  policy: {}\n{extra}",
        federated_config_yaml(&dir, &pki.trust_domain, &[]),
        policy.display()
    );
    let vakt = App::start(Config::from_yaml(&yaml).unwrap()).await.unwrap();
    (vakt, id, dir)
}

/// A client-side vakt for `spiffe://TD/ns/shop/<sa>` whose egress table maps `orders.shop:80`
/// to `server_addr`, expecting `server_id` there.
pub async fn client_sidecar(
    pki: &DevPki,
    sa: &str,
    server_addr: SocketAddr,
    server_id: &str,
) -> App {
    start_client_sidecar(pki, sa, server_addr, server_id, &[], "").await
}

/// [`client_sidecar`] with `extra` appended to its YAML (limits...).
pub async fn client_sidecar_with(
    pki: &DevPki,
    sa: &str,
    server_addr: SocketAddr,
    server_id: &str,
    extra: &str,
) -> App {
    start_client_sidecar(pki, sa, server_addr, server_id, &[], extra).await
}

/// [`client_sidecar`] for `spiffe://<pki's trust domain>/ns/shop/<sa>`, with `federation`
/// entries (trust domain, bundle file) in its identity section.
pub async fn federated_client_sidecar(
    pki: &DevPki,
    sa: &str,
    server_addr: SocketAddr,
    server_id: &str,
    federation: &[(&str, &std::path::Path)],
) -> App {
    start_client_sidecar(pki, sa, server_addr, server_id, federation, "").await
}

async fn start_client_sidecar(
    pki: &DevPki,
    sa: &str,
    server_addr: SocketAddr,
    server_id: &str,
    federation: &[(&str, &std::path::Path)],
    extra: &str,
) -> App {
    let dir = pki.workload(sa, &pki.spiffe_id("shop", sa)).unwrap();
    let yaml = format!(
        "{}outbound:\n  listen: 127.0.0.1:0\n  upstreams:\n  - authority: orders.shop\n    address: {server_addr}\n    spiffe_id: {server_id}\n{extra}",
        federated_config_yaml(&dir, &pki.trust_domain, federation)
    );
    App::start(Config::from_yaml(&yaml).unwrap()).await.unwrap()
}

/// An mTLS client config for the allowed peer `spiffe://TD/ns/shop/sa/web` of `server`.
pub fn web_client_config(server: &Server) -> Arc<rustls::ClientConfig> {
    let dir = server
        .pki
        .workload("web-client", &server.pki.spiffe_id("shop", "web"))
        .unwrap();
    raw_client_config(Some(&dir), &server.dir, &server.id, &[b"http/1.1"])
}

//! The current certificate material, swapped atomically when the files change.
//!
//! cert-manager rotates by rewriting files and Kubernetes Secrets swap a `..data` symlink, so we
//! watch the directories (not the files) and also re-read on a slow interval as a safety net. A
//! new set is loaded and checked completely before it replaces the old one; a broken set is
//! rejected, logged and counted, and the running one stays. The federated trust domains' bundles
//! are part of the set: one bad bundle keeps every running one. Existing connections keep the
//! config they were accepted with; new connections get the new certificate and bundles.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::{ClientConfig, ServerConfig};

use super::config::{IdentityConfig, TlsVersion};
use super::{OutboundAlpn, TlsError, TlsMaterial, client_config, server_config};
use crate::identity::SpiffeId;
use crate::metrics as m;
/// One loaded generation of TLS material with the configs built from it.
#[derive(Debug)]
pub struct LoadedTls {
    pub material: TlsMaterial,
    pub server_config: Arc<ServerConfig>,
    /// Outbound client configs per expected server identity, built on first use. Each generation
    /// starts empty, so a rotation never mixes old and new certificates; within a generation the
    /// config (and its TLS session cache) is reused.
    client_configs: Mutex<HashMap<(SpiffeId, OutboundAlpn), Arc<ClientConfig>>>,
}

/// Holds the current [`LoadedTls`] and knows how to reload it.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<LoadedTls>,
    identity: IdentityConfig,
    min_version: TlsVersion,
    /// The files' bytes as last read by a watcher reload (SHA-256 over each file in turn, or why
    /// one could not be read): unchanged files are neither parsed nor, when rejected, logged again.
    last_seen: Mutex<Option<Result<[u8; 32], String>>>,
}

/// Handshake refusals that point at a peer outside the mesh or a broken identity rather than
/// at the network; each has a series from the start.
const REFUSALS_WATCHED: [&str; 8] = [
    "no_client_certificate",
    "unknown_ca",
    "expired",
    "not_yet_valid",
    "trust_domain_not_accepted",
    "wrong_key_usage",
    "ca_used_as_leaf",
    "unexpected_server_identity",
];

const RELOAD_SUCCESS: &str = "success";
const RELOAD_FAILURE: &str = "failure";

impl CertStore {
    /// The reload counters, and the handshakes refused for a reason that says who is trying
    /// what (an unknown CA, a certificate out of its time, another trust domain, ...), both ways,
    /// at zero (`metrics::register_at_zero`).
    pub fn register_failure_series() {
        for result in [RELOAD_SUCCESS, RELOAD_FAILURE] {
            m::register_at_zero(m::CERT_RELOADS, &[("result", result)]);
        }
        for direction in [m::INBOUND, m::OUTBOUND] {
            for reason in REFUSALS_WATCHED {
                m::register_at_zero(
                    m::HANDSHAKE_FAILURES,
                    &[("direction", direction), ("reason", reason)],
                );
            }
        }
    }

    /// Load the initial material; an error here stops vakt from starting.
    pub fn load(identity: &IdentityConfig, min_version: TlsVersion) -> Result<Self, TlsError> {
        let loaded = Self::assemble(TlsMaterial::load(identity)?, min_version)?;
        record_expiry(&loaded.material);
        let store = Self {
            current: ArcSwap::from_pointee(loaded),
            identity: identity.clone(),
            min_version,
            last_seen: Mutex::new(None),
        };
        *store.last_seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(store.sources());
        Ok(store)
    }

    fn assemble(material: TlsMaterial, min_version: TlsVersion) -> Result<LoadedTls, TlsError> {
        let server_config = server_config(&material, min_version)?;
        Ok(LoadedTls {
            material,
            server_config,
            client_configs: Mutex::default(),
        })
    }

    pub fn current(&self) -> Arc<LoadedTls> {
        self.current.load_full()
    }

    /// The client config for connecting to a server that must be `expected`.
    pub fn client_config(
        &self,
        expected: &SpiffeId,
        alpn: OutboundAlpn,
    ) -> Result<Arc<ClientConfig>, TlsError> {
        let loaded = self.current.load();
        let key = (expected.clone(), alpn);
        let mut cache = loaded
            .client_configs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(config) = cache.get(&key) {
            return Ok(config.clone());
        }
        let config = client_config(&loaded.material, expected.clone(), self.min_version, alpn)?;
        cache.insert(key, config.clone());
        Ok(config)
    }

    /// After a change was seen or on the periodic re-read: reload only when the files' bytes
    /// differ from the last read, so an unchanged set is not parsed and a rejected one is
    /// logged and counted once.
    /// A writer that replaces the files one at a time (the key, then the certificate) is given
    /// a moment: the set is read once its bytes stopped changing, so the periodic re-read
    /// landing between two writes does not reject a half-replaced pair.
    pub fn reload_changed(&self) -> ReloadOutcome {
        let sources = self.sources();
        let mut last_seen = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
        if last_seen.as_ref() == Some(&sources) {
            return ReloadOutcome::Unchanged;
        }
        let sources = crate::watch::settled(sources, || self.sources());
        *last_seen = Some(sources);
        self.reload()
    }

    /// Digest of the files the material is read from, in order, or why one cannot be read.
    fn sources(&self) -> Result<[u8; 32], String> {
        let bundles = self.identity.bundle_files();
        let files = [self.identity.cert.as_path(), self.identity.key.as_path()]
            .into_iter()
            .chain(bundles.iter().map(|(_, _, path)| *path));
        let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for file in files {
            let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
            digest.update(&(bytes.len() as u64).to_be_bytes());
            digest.update(&bytes);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.finish().as_ref());
        Ok(out)
    }

    /// Re-read the files now (SIGHUP); swap only if they changed and the new set is valid.
    pub fn reload(&self) -> ReloadOutcome {
        tracing::debug!("certificate files read and parsed");
        match TlsMaterial::load(&self.identity) {
            Ok(material) if material.fingerprint == self.current.load().material.fingerprint => {
                ReloadOutcome::Unchanged
            }
            Ok(material) => match Self::assemble(material, self.min_version) {
                Ok(loaded) => {
                    record_expiry(&loaded.material);
                    tracing::info!(
                        identity = %loaded.material.identity,
                        not_after = loaded.material.leaf_not_after,
                        "certificate material reloaded"
                    );
                    self.current.store(Arc::new(loaded));
                    metrics::counter!(m::CERT_RELOADS, "result" => RELOAD_SUCCESS).increment(1);
                    ReloadOutcome::Reloaded
                }
                Err(e) => self.rejected(e),
            },
            Err(e) => self.rejected(e),
        }
    }

    fn rejected(&self, error: TlsError) -> ReloadOutcome {
        tracing::error!(%error, "new certificate material rejected; keeping the current one");
        metrics::counter!(m::CERT_RELOADS, "result" => RELOAD_FAILURE).increment(1);
        ReloadOutcome::Rejected(error)
    }

    /// The directories of every file the material is read from, federation bundles included.
    fn watched_dirs(&self) -> Vec<PathBuf> {
        let bundles = self.identity.bundle_files();
        [self.identity.cert.as_path(), self.identity.key.as_path()]
            .into_iter()
            .chain(bundles.iter().map(|(_, _, path)| *path))
            .map(crate::watch::parent_dir)
            .collect()
    }
}

#[derive(Debug)]
pub enum ReloadOutcome {
    Unchanged,
    Reloaded,
    Rejected(TlsError),
}

/// The expiry gauges: the workload certificate, and each trust domain's bundle. The trust
/// domain label is bounded by the config (our own plus the federated ones); the workload
/// certificate is always of our own domain and needs none.
fn record_expiry(material: &TlsMaterial) {
    metrics::gauge!(m::CERT_EXPIRY, "certificate" => "workload")
        .set(material.leaf_not_after as f64);
    for bundle in material.bundles.iter() {
        metrics::gauge!(m::CERT_EXPIRY, "certificate" => "trust_bundle",
            "trust_domain" => bundle.trust_domain.as_str().to_owned())
        .set(bundle.not_after as f64);
    }
}

/// Watch the certificate directories and reload on change (debounced) and on every
/// `reload_interval`. Ends when `shutdown` fires.
pub fn spawn_reloader(
    store: Arc<CertStore>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let dirs = store.watched_dirs();
    let interval = store.identity.reload_interval;
    crate::watch::spawn_watcher("certificates", dirs, interval, shutdown, move || {
        store.reload_changed();
    })
}

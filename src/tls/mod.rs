//! TLS for the mesh: the workload certificate and trust bundle loaded from PEM files, the rustls
//! server config for the inbound listener and client configs for outbound mTLS.
//!
//! One TLS stack, one provider: rustls on aws-lc-rs (hybrid post-quantum key exchange
//! X25519MLKEM768 preferred by default). Configs are always built with the explicit provider.

pub mod config;
mod reload;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::{SpiffeId, TrustDomain};
pub use config::{IdentityConfig, TlsSettings, TlsVersion};

pub use reload::{CertStore, spawn_reloader};
pub use verify::{
    SpiffeClientVerifier, SpiffeServerVerifier, UnexpectedServerIdentity, handshake_failure_reason,
    tls_error_reason,
};

/// ALPN identifiers offered and accepted between sidecars.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Largest PEM file we read (a chain or bundle is a few KiB).
const MAX_PEM_BYTES: u64 = 1 << 20;

/// The process-wide crypto provider (aws-lc-rs). Installed as the default in `main` too, so a
/// stray `builder()` anywhere cannot pick another one.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_PEM_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path}: {problem}")]
    Pem { path: PathBuf, problem: String },
    #[error("{path}: no certificate found (expected PEM \"BEGIN CERTIFICATE\" blocks)")]
    NoCertificate { path: PathBuf },
    #[error("{path}: certificate {index} of the file is not a valid X.509 certificate: {problem}")]
    BadCertificate {
        path: PathBuf,
        /// 1-based position of the PEM block in the file.
        index: usize,
        problem: String,
    },
    #[error("{path}: the private key does not belong to the certificate: {source}")]
    KeyMismatch {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{path}: unusable private key: {source}")]
    BadKey {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{path}: the workload certificate is not a valid X509-SVID: {source}")]
    NotSvid {
        path: PathBuf,
        source: crate::identity::IdentityError,
    },
    #[error(
        "{path}: the workload certificate is for trust domain {found}, but the config says {expected}"
    )]
    WrongTrustDomain {
        path: PathBuf,
        found: String,
        expected: TrustDomain,
    },
    #[error(
        "{path}: the workload certificate does not chain to the trust bundle or is not valid now: {source}"
    )]
    Untrusted {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{path}: not a valid CA certificate: {source}")]
    BadCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{key}: {source}")]
    Bundle {
        key: String,
        #[source]
        source: Box<TlsError>,
    },
    #[error("no trust bundle is configured for trust domain {0}")]
    NoTrustBundle(TrustDomain),
    #[error("building the TLS configuration failed: {0}")]
    Build(String),
}

/// The CA certificates of one trust domain.
#[derive(Debug)]
pub struct TrustBundle {
    pub trust_domain: TrustDomain,
    pub roots: Arc<RootCertStore>,
    /// Earliest expiry among its anchors, seconds since the epoch.
    pub not_after: i64,
}

/// One trust bundle per trust domain, our own first. A peer's chain is verified only against
/// the bundle of the trust domain its SPIFFE ID names (SPIFFE federation), so a federated CA
/// cannot vouch for identities of our domain or of any other.
#[derive(Debug)]
pub struct TrustBundles(Vec<TrustBundle>);

impl TrustBundles {
    /// The bundle of `trust_domain`, if one is configured.
    pub fn get(&self, trust_domain: &str) -> Option<&TrustBundle> {
        self.0
            .iter()
            .find(|b| b.trust_domain.as_str() == trust_domain)
    }

    /// Our own trust domain's bundle.
    pub fn own(&self) -> &TrustBundle {
        &self.0[0]
    }

    pub fn iter(&self) -> impl Iterator<Item = &TrustBundle> {
        self.0.iter()
    }
}

/// The workload's certificate material, checked for consistency.
#[derive(Debug)]
pub struct TlsMaterial {
    pub identity: SpiffeId,
    pub certified_key: Arc<CertifiedKey>,
    pub bundles: Arc<TrustBundles>,
    /// Expiry of the leaf, seconds since the epoch.
    pub leaf_not_after: i64,
    /// SHA-256 over the files as read, to notice real changes.
    pub fingerprint: [u8; 32],
}

fn read_pem_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read = |source| TlsError::Read {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge {
            path: path.to_owned(),
        });
    }
    std::fs::read(path).map_err(read)
}

fn parse_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            problem: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    // Each block must be a certificate, or a broken file shows up later as a confusing error
    // about something else (such as the key not matching).
    for (i, der) in certs.iter().enumerate() {
        if let Err(e) = X509Certificate::from_der(der) {
            return Err(TlsError::BadCertificate {
                path: path.to_owned(),
                index: i + 1,
                problem: e.to_string(),
            });
        }
    }
    Ok(certs)
}

fn not_after(der: &[u8]) -> i64 {
    X509Certificate::from_der(der)
        .map(|(_, c)| c.validity().not_after.timestamp())
        .unwrap_or(0)
}

/// Read one bundle file into a root store; errors name the config key.
fn load_bundle(
    key: String,
    trust_domain: &TrustDomain,
    path: &Path,
) -> Result<(TrustBundle, Vec<u8>), TlsError> {
    let load = || {
        let pem = read_pem_file(path)?;
        let anchors = parse_certs(path, &pem)?;
        let mut roots = RootCertStore::empty();
        for ca in &anchors {
            roots.add(ca.clone()).map_err(|source| TlsError::BadCa {
                path: path.to_owned(),
                source,
            })?;
        }
        let bundle = TrustBundle {
            trust_domain: trust_domain.clone(),
            roots: Arc::new(roots),
            not_after: anchors.iter().map(|c| not_after(c)).min().unwrap_or(0),
        };
        Ok((bundle, pem))
    };
    load().map_err(|source| TlsError::Bundle {
        key,
        source: Box::new(source),
    })
}

impl TlsMaterial {
    /// Read and check the files named in the identity config. Nothing is half-loaded: either
    /// every file is valid and consistent, or an error says which one is wrong and why.
    pub fn load(cfg: &IdentityConfig) -> Result<Self, TlsError> {
        let cert_pem = read_pem_file(&cfg.cert)?;
        let key_pem = read_pem_file(&cfg.key)?;

        let chain = parse_certs(&cfg.cert, &cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
            path: cfg.key.clone(),
            problem: format!("no usable private key: {e}"),
        })?;
        let provider = provider();
        let signing_key = provider
            .key_provider
            .load_private_key(key)
            .map_err(|source| TlsError::BadKey {
                path: cfg.key.clone(),
                source,
            })?;
        let certified_key = CertifiedKey::new(chain.clone(), signing_key);
        certified_key
            .keys_match()
            .map_err(|source| TlsError::KeyMismatch {
                path: cfg.key.clone(),
                source,
            })?;

        let identity = SpiffeId::from_svid_der(&chain[0]).map_err(|source| TlsError::NotSvid {
            path: cfg.cert.clone(),
            source,
        })?;
        if identity.trust_domain() != cfg.trust_domain {
            return Err(TlsError::WrongTrustDomain {
                path: cfg.cert.clone(),
                found: identity.trust_domain_str().to_owned(),
                expected: cfg.trust_domain.clone(),
            });
        }

        let mut bundles = Vec::with_capacity(1 + cfg.federation.len());
        let mut bundle_pems = Vec::with_capacity(1 + cfg.federation.len());
        for (key, trust_domain, path) in cfg.bundle_files() {
            let (bundle, pem) = load_bundle(key, trust_domain, path)?;
            bundles.push(bundle);
            bundle_pems.push(pem);
        }
        let bundles = TrustBundles(bundles);

        // Our own SVID must chain to our own trust domain's bundle, never to a federated one.
        let leaf =
            ParsedCertificate::try_from(&chain[0]).map_err(|source| TlsError::Untrusted {
                path: cfg.cert.clone(),
                source,
            })?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &leaf,
            &bundles.own().roots,
            &chain[1..],
            UnixTime::now(),
            provider.signature_verification_algorithms.all,
        )
        .map_err(|source| TlsError::Untrusted {
            path: cfg.cert.clone(),
            source,
        })?;

        let fingerprint = {
            let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
            for part in [&cert_pem, &key_pem].into_iter().chain(&bundle_pems) {
                ctx.update(&(part.len() as u64).to_be_bytes());
                ctx.update(part);
            }
            let mut out = [0u8; 32];
            out.copy_from_slice(ctx.finish().as_ref());
            out
        };

        Ok(Self {
            identity,
            leaf_not_after: not_after(&chain[0]),
            certified_key: Arc::new(certified_key),
            bundles: Arc::new(bundles),
            fingerprint,
        })
    }
}

fn versions(min: TlsVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    static TLS13_AND_12: &[&rustls::SupportedProtocolVersion] =
        &[&rustls::version::TLS13, &rustls::version::TLS12];
    match min {
        TlsVersion::Tls13 => TLS13_ONLY,
        TlsVersion::Tls12 => TLS13_AND_12,
    }
}

/// Inbound server config: client certificate required, checked as an X509-SVID against the
/// bundle of the trust domain it names; ALPN h2 and http/1.1.
pub fn server_config(
    material: &TlsMaterial,
    min_version: TlsVersion,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = SpiffeClientVerifier::new(&material.bundles, provider.clone())
        .map_err(|e| TlsError::Build(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(min_version))
        .map_err(|e| TlsError::Build(e.to_string()))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(SingleCert(material.certified_key.clone())));
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    // No session resumption: a resumed session skips the client-certificate check, so a peer
    // whose SVID has expired (or whose CA left the bundle) could go on with its old session.
    // Connections between sidecars are long-lived and pooled, so every new one pays a full
    // handshake at little cost.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Serves one certified key (chain + key) whatever the client asks for.
#[derive(Debug)]
struct SingleCert(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for SingleCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Which application protocols an outbound connection offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutboundAlpn {
    /// h2 preferred, http/1.1 accepted: normal requests, multiplexed between sidecars.
    H2OrHttp11,
    /// http/1.1 only: requests that upgrade the connection (WebSocket).
    Http11Only,
}

/// Outbound client config: our workload certificate as client certificate, the server must be
/// exactly `expected` and its chain must lead to the bundle of `expected`'s trust domain.
pub fn client_config(
    material: &TlsMaterial,
    expected: SpiffeId,
    min_version: TlsVersion,
    alpn: OutboundAlpn,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let roots = material
        .bundles
        .get(expected.trust_domain_str())
        .ok_or_else(|| TlsError::NoTrustBundle(expected.trust_domain()))?
        .roots
        .clone();
    let verifier = SpiffeServerVerifier::new(roots, expected, &provider);
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(min_version))
        .map_err(|e| TlsError::Build(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(ClientCert(material.certified_key.clone())));
    config.alpn_protocols = match alpn {
        OutboundAlpn::H2OrHttp11 => vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()],
        OutboundAlpn::Http11Only => vec![ALPN_HTTP11.to_vec()],
    };
    // Every connection verifies the server's SVID afresh (the inbound side offers no
    // resumption either).
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

// The development PKI (feature `dev`) makes the certificates.
#[cfg(all(test, feature = "dev"))]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::dev::mesh::DevPki;
    use crate::tls::config::FederatedDomain;

    const OURS: &str = "ours.test";
    const PARTNER: &str = "partner.test";

    fn identity(dir: &Path, federation: Vec<FederatedDomain>) -> IdentityConfig {
        IdentityConfig {
            trust_domain: OURS.parse().unwrap(),
            cert: dir.join(crate::dev::certs::CERT_FILE),
            key: dir.join(crate::dev::certs::KEY_FILE),
            trust_bundle: dir.join(crate::dev::certs::BUNDLE_FILE),
            federation,
            reload_interval: std::time::Duration::from_secs(1),
        }
    }

    fn federated(bundle: &Path) -> Vec<FederatedDomain> {
        vec![FederatedDomain {
            trust_domain: PARTNER.parse().unwrap(),
            bundle: bundle.to_owned(),
        }]
    }

    #[test]
    fn one_bundle_per_trust_domain_own_first() {
        let ours = DevPki::new(OURS).unwrap();
        let partner = DevPki::new(PARTNER).unwrap();
        let dir = ours.workload("w", &ours.spiffe_id("a", "b")).unwrap();
        let material =
            TlsMaterial::load(&identity(&dir, federated(&partner.bundle_file().unwrap()))).unwrap();
        let domains: Vec<&str> = material
            .bundles
            .iter()
            .map(|b| b.trust_domain.as_str())
            .collect();
        assert_eq!(domains, [OURS, PARTNER]);
        assert_eq!(material.bundles.own().trust_domain.as_str(), OURS);
        assert!(material.bundles.get("elsewhere.test").is_none());
        for bundle in material.bundles.iter() {
            assert_eq!(bundle.roots.len(), 1, "{}", bundle.trust_domain);
            assert!(bundle.not_after > 0, "{}", bundle.trust_domain);
        }
    }

    #[test]
    fn own_svid_must_chain_to_the_own_bundle_not_a_federated_one() {
        // Our SVID issued by a CA that is only in the federated bundle.
        let ours = DevPki::new(OURS).unwrap();
        let mut rogue = DevPki::new(PARTNER).unwrap();
        let rogue_bundle = rogue.bundle_file().unwrap();
        rogue.trust_domain = OURS.to_owned();
        let dir = rogue.workload("w", &ours.spiffe_id("a", "b")).unwrap();
        // The own bundle is ours, not the issuing CA.
        std::fs::copy(
            ours.bundle_file().unwrap(),
            dir.join(crate::dev::certs::BUNDLE_FILE),
        )
        .unwrap();
        let err = TlsMaterial::load(&identity(&dir, federated(&rogue_bundle))).unwrap_err();
        assert!(matches!(err, TlsError::Untrusted { .. }), "{err}");
    }

    #[test]
    fn a_bad_federated_bundle_is_reported_under_its_key() {
        let ours = DevPki::new(OURS).unwrap();
        let dir = ours.workload("w", &ours.spiffe_id("a", "b")).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        for (bundle, problem) in [
            (dir.join("missing.pem"), "cannot read"),
            (empty, "no certificate found"),
        ] {
            let err = TlsMaterial::load(&identity(&dir, federated(&bundle))).unwrap_err();
            let message = err.to_string();
            assert!(
                message.starts_with("identity.federation[0].bundle: ") && message.contains(problem),
                "{message}"
            );
        }
    }

    /// A certificate file whose PEM block holds no certificate is reported as that file and its
    /// parse error, not as a key that does not match.
    #[test]
    fn a_broken_certificate_names_its_file_and_the_parse_error() {
        let ours = DevPki::new(OURS).unwrap();
        let dir = ours.workload("w", &ours.spiffe_id("a", "b")).unwrap();
        let cert = dir.join(crate::dev::certs::CERT_FILE);
        let good = std::fs::read_to_string(&cert).unwrap();
        // The same PEM framing around bytes that are not DER (a truncated or corrupted file).
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = TlsMaterial::load(&identity(&dir, Vec::new())).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, TlsError::BadCertificate { index: 1, .. }),
            "{message}"
        );
        assert!(
            message.starts_with(&format!("{}: certificate 1 of the file", cert.display())),
            "{message}"
        );
        assert!(!message.contains("private key"), "{message}");
        // The second block of a chain broken the same way.
        let leaf_only = good
            .split_inclusive("-----END CERTIFICATE-----\n")
            .next()
            .unwrap();
        std::fs::write(
            &cert,
            format!("{leaf_only}-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n"),
        )
        .unwrap();
        let err = TlsMaterial::load(&identity(&dir, Vec::new())).unwrap_err();
        assert!(
            matches!(err, TlsError::BadCertificate { index: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn outbound_config_needs_a_bundle_for_the_expected_trust_domain() {
        let ours = DevPki::new(OURS).unwrap();
        let dir = ours.workload("w", &ours.spiffe_id("a", "b")).unwrap();
        let material = TlsMaterial::load(&identity(&dir, Vec::new())).unwrap();
        let expected: SpiffeId = "spiffe://partner.test/ns/a/sa/b".parse().unwrap();
        let err = client_config(
            &material,
            expected,
            TlsVersion::Tls13,
            OutboundAlpn::H2OrHttp11,
        )
        .unwrap_err();
        assert!(
            matches!(&err, TlsError::NoTrustBundle(td) if td.as_str() == PARTNER),
            "{err}"
        );
    }

    /// A writer replacing key and certificate one at a time, with a re-read landing between the
    /// two writes: the half-replaced pair is never read, the new pair is taken once whole.
    #[test]
    fn a_pair_replaced_file_by_file_is_read_once_it_stopped_changing() {
        let pki = DevPki::new(OURS).unwrap();
        let id = pki.spiffe_id("a", "b");
        let dir = pki.workload("w", &id).unwrap();
        let store = CertStore::load(&identity(&dir, Vec::new()), TlsVersion::Tls13).unwrap();
        let old = store.current().material.fingerprint;
        let new = pki
            .issue(&crate::dev::certs::LeafSpec::svid(
                &id,
                std::time::Duration::from_secs(3600),
            ))
            .unwrap();
        std::fs::write(dir.join(crate::dev::certs::KEY_FILE), &new.key_pem).unwrap();
        let late_cert = {
            let (path, pem) = (dir.join(crate::dev::certs::CERT_FILE), new.cert_pem.clone());
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(100));
                std::fs::write(path, pem).unwrap();
            })
        };
        // The re-read between the key and the certificate.
        let outcome = store.reload_changed();
        late_cert.join().unwrap();
        assert!(
            matches!(outcome, reload::ReloadOutcome::Reloaded),
            "{outcome:?}"
        );
        assert_ne!(store.current().material.fingerprint, old);
        assert!(matches!(
            store.reload_changed(),
            reload::ReloadOutcome::Unchanged
        ));
    }
}

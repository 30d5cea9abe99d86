//! Certificate verifiers that add the SPIFFE rules to webpki's chain validation.
//!
//! Each trust domain has a bundle of its own, and a chain is verified only against the bundle of
//! the trust domain its leaf's SPIFFE ID names: a federated CA that issues an ID of our domain
//! (or of a third one) is an unknown CA for that ID.
//!
//! Inbound: the leaf must be an X509-SVID (exactly one `spiffe://` URI SAN, not a CA) from a
//! trust domain with a bundle; then webpki checks the chain against that bundle, validity and
//! the clientAuth EKU. Failing any of it fails the handshake, so no request from such a peer is
//! ever read.
//!
//! Outbound: a URI-SAN-only SVID has no DNS name, so rustls's default name check cannot apply;
//! the chain must lead to the bundle of the expected ID's trust domain, and the server must
//! present exactly the SPIFFE ID the egress table names.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    AlertDescription, CertificateError, DigitallySignedStruct, DistinguishedName, Error,
    OtherError, RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::TrustBundles;
use crate::identity::{IdentityError, SpiffeId, TrustDomain};

fn identity_error(e: IdentityError) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// The mismatch between the SPIFFE ID the egress table expects and what the server presented.
#[derive(Debug, thiserror::Error)]
#[error("server presented {presented}, expected {expected}")]
pub struct UnexpectedServerIdentity {
    pub expected: SpiffeId,
    pub presented: SpiffeId,
}

/// Client-certificate verifier for the inbound listener: SPIFFE X509-SVID rules, then webpki
/// against the bundle of the SVID's trust domain.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    /// One webpki verifier per trust domain, each over that domain's roots only.
    by_domain: Vec<(TrustDomain, Arc<dyn ClientCertVerifier>)>,
    /// The CA subjects of every bundle, sent as hints in the certificate request.
    root_hints: Vec<DistinguishedName>,
}

impl SpiffeClientVerifier {
    /// One webpki verifier per bundle. `bundles` always holds our own, so there is at least one.
    pub fn new(
        bundles: &TrustBundles,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, rustls::server::VerifierBuilderError> {
        let mut by_domain = Vec::new();
        let mut root_hints = Vec::new();
        for bundle in bundles.iter() {
            let webpki =
                WebPkiClientVerifier::builder_with_provider(bundle.roots.clone(), provider.clone())
                    .build()?;
            root_hints.extend_from_slice(webpki.root_hint_subjects());
            by_domain.push((bundle.trust_domain.clone(), webpki));
        }
        Ok(Self {
            by_domain,
            root_hints,
        })
    }

    /// Any of the per-domain verifiers: they differ only in their roots, so handshake
    /// signatures and schemes are the same for all.
    fn any(&self) -> &dyn ClientCertVerifier {
        &*self.by_domain[0].1
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.root_hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        // The ID picks the bundle, so it is read before the chain is checked; nothing about the
        // peer is trusted until the chain to that bundle is verified.
        let id = SpiffeId::from_svid_der(end_entity).map_err(identity_error)?;
        let webpki = self
            .by_domain
            .iter()
            .find(|(td, _)| td.as_str() == id.trust_domain_str())
            .map(|(_, verifier)| verifier)
            .ok_or_else(|| {
                identity_error(IdentityError::TrustDomainNotAccepted(id.trust_domain()))
            })?;
        webpki.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.any().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.any().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.any().supported_verify_schemes()
    }
}

/// Server-certificate verifier for outbound mTLS: chain to `roots` (the bundle of the expected
/// ID's trust domain), SVID rules, and the exact SPIFFE ID the egress table expects. The TLS
/// server name is not consulted.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: SpiffeId,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    pub fn new(roots: Arc<RootCertStore>, expected: SpiffeId, provider: &CryptoProvider) -> Self {
        Self {
            roots,
            expected,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let presented = SpiffeId::from_svid_der(end_entity).map_err(identity_error)?;
        if presented != self.expected {
            return Err(Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(UnexpectedServerIdentity {
                    expected: self.expected.clone(),
                    presented,
                })),
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A bounded, stable reason code for a failed handshake, for metrics and logs.
pub fn handshake_failure_reason(err: &std::io::Error) -> &'static str {
    match err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
    {
        Some(e) => tls_error_reason(e),
        None => match err.kind() {
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
                "connection_closed"
            }
            _ => "io_error",
        },
    }
}

pub fn tls_error_reason(err: &Error) -> &'static str {
    match err {
        Error::NoCertificatesPresented => "no_client_certificate",
        Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => "unknown_ca",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::Revoked => "revoked",
            CertificateError::BadEncoding => "bad_certificate",
            CertificateError::BadSignature => "bad_signature",
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "wrong_key_usage"
            }
            CertificateError::Other(OtherError(inner)) => {
                if let Some(e) = inner.downcast_ref::<IdentityError>() {
                    e.reason_code()
                } else if inner.is::<UnexpectedServerIdentity>() {
                    "unexpected_server_identity"
                } else if let Some(webpki::Error::CaUsedAsEndEntity) =
                    inner.downcast_ref::<webpki::Error>()
                {
                    "ca_used_as_leaf"
                } else {
                    "invalid_certificate"
                }
            }
            _ => "invalid_certificate",
        },
        Error::AlertReceived(
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateRequired
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied,
        ) => "certificate_refused_by_peer",
        Error::AlertReceived(_) => "alert_received",
        Error::NoApplicationProtocol => "no_application_protocol",
        Error::PeerIncompatible(_) => "peer_incompatible",
        _ => "protocol_error",
    }
}

//! Certificate verifiers that add the SPIFFE rules to webpki's chain validation.
//!
//! Inbound: webpki checks the chain, validity and the clientAuth EKU; then the leaf must be an
//! X509-SVID (exactly one `spiffe://` URI SAN, not a CA) from a trust domain we accept. Failing
//! any of it fails the handshake, so no request from such a peer is ever read.
//!
//! Outbound: a URI-SAN-only SVID has no DNS name, so rustls's default name check cannot apply;
//! the server must instead present exactly the SPIFFE ID the egress table names.

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

/// Parse and check the SVID of a peer's leaf certificate against the accepted trust domains.
fn svid_identity(leaf: &CertificateDer<'_>, accepted: &[TrustDomain]) -> Result<SpiffeId, Error> {
    let id = SpiffeId::from_svid_der(leaf).map_err(identity_error)?;
    if !accepted
        .iter()
        .any(|td| td.as_str() == id.trust_domain_str())
    {
        return Err(identity_error(IdentityError::TrustDomainNotAccepted(
            id.trust_domain(),
        )));
    }
    Ok(id)
}

/// Client-certificate verifier for the inbound listener: webpki + SPIFFE X509-SVID rules.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    accepted: Vec<TrustDomain>,
}

impl SpiffeClientVerifier {
    pub fn new(
        roots: Arc<RootCertStore>,
        accepted: Vec<TrustDomain>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, rustls::server::VerifierBuilderError> {
        let webpki = WebPkiClientVerifier::builder_with_provider(roots, provider).build()?;
        Ok(Self { webpki, accepted })
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
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.webpki
            .verify_client_cert(end_entity, intermediates, now)?;
        svid_identity(end_entity, &self.accepted)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Server-certificate verifier for outbound mTLS: chain to the trust bundle, SVID rules, and the
/// exact SPIFFE ID the egress table expects. The TLS server name is not consulted.
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
        let presented = svid_identity(end_entity, &[self.expected.trust_domain()])?;
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

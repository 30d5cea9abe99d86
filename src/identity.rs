//! Workload identities: SPIFFE IDs and trust domains, parsed once into types.
//!
//! A SPIFFE ID is `spiffe://<trust-domain>/<path>`; in Kubernetes the path is
//! `ns/<namespace>/sa/<service-account>`. Parsing follows the SPIFFE-ID specification: lowercase
//! trust domain of `[a-z0-9._-]`, path segments of `[A-Za-z0-9._-]`, no empty, `.` or `..` segment,
//! no trailing slash, no query, fragment, port or user info, at most 2048 bytes.
//!
//! [`SpiffeId::from_svid_der`] applies the X509-SVID rules to a leaf certificate: exactly one URI
//! SAN, that URI a valid SPIFFE ID, the leaf not a CA and not able to sign certificates.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

const MAX_SPIFFE_ID_LEN: usize = 2048;
const SCHEME: &str = "spiffe://";

/// Why a string or certificate does not carry an acceptable SPIFFE identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("SPIFFE ID must start with \"spiffe://\"")]
    WrongScheme,
    #[error("SPIFFE ID is longer than {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong,
    #[error("trust domain is empty")]
    EmptyTrustDomain,
    #[error("trust domain may hold only lowercase letters, digits, '.', '-' and '_'")]
    InvalidTrustDomainChar,
    #[error("SPIFFE ID path is empty (a workload ID needs a path such as /ns/<ns>/sa/<sa>)")]
    EmptyPath,
    #[error("SPIFFE ID path has an empty, '.' or '..' segment, or a trailing '/'")]
    InvalidPathSegment,
    #[error("SPIFFE ID path may hold only letters, digits, '.', '-', '_' and '/'")]
    InvalidPathChar,
    #[error("certificate could not be parsed as X.509")]
    BadCertificate,
    #[error("certificate has no SPIFFE URI SAN")]
    NoUriSan,
    #[error("certificate has {0} URI SANs; an X509-SVID has exactly one")]
    MultipleUriSans(usize),
    #[error("certificate is a CA certificate and cannot identify a workload")]
    LeafIsCa,
    #[error("trust domain {0} is not accepted here: no trust bundle is configured for it")]
    TrustDomainNotAccepted(TrustDomain),
}

impl IdentityError {
    /// A short, stable code for metrics labels and audit events (bounded set).
    pub fn reason_code(&self) -> &'static str {
        match self {
            Self::WrongScheme
            | Self::TooLong
            | Self::EmptyTrustDomain
            | Self::InvalidTrustDomainChar
            | Self::EmptyPath
            | Self::InvalidPathSegment
            | Self::InvalidPathChar => "invalid_spiffe_id",
            Self::BadCertificate => "bad_certificate",
            Self::NoUriSan => "no_spiffe_id",
            Self::MultipleUriSans(_) => "multiple_uri_sans",
            Self::LeafIsCa => "ca_used_as_leaf",
            Self::TrustDomainNotAccepted(_) => "trust_domain_not_accepted",
        }
    }
}

/// A SPIFFE trust domain such as `cluster.local` or `helse.example`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(Arc<str>);

impl TrustDomain {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TrustDomain {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.strip_prefix(SCHEME).unwrap_or(s);
        validate_trust_domain(s)?;
        Ok(Self(s.into()))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn validate_trust_domain(td: &str) -> Result<(), IdentityError> {
    if td.is_empty() {
        return Err(IdentityError::EmptyTrustDomain);
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(IdentityError::InvalidTrustDomainChar);
    }
    Ok(())
}

/// A parsed, valid SPIFFE ID. Cheap to clone; compared and hashed by its canonical string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: Arc<str>,
    /// Byte offset where the path starts (`/...`).
    path_start: usize,
}

impl SpiffeId {
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The ID's text, to share rather than copy (audit events).
    pub fn shared_str(&self) -> &Arc<str> {
        &self.uri
    }

    pub fn trust_domain_str(&self) -> &str {
        &self.uri[SCHEME.len()..self.path_start]
    }

    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_str().into())
    }

    /// The path, starting with `/`.
    pub fn path(&self) -> &str {
        &self.uri[self.path_start..]
    }

    /// Namespace and service account when the path has the Kubernetes shape `/ns/<ns>/sa/<sa>`.
    pub fn namespace_and_service_account(&self) -> Option<(&str, &str)> {
        let mut segments = self.path()[1..].split('/');
        match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }

    /// Parse the SPIFFE ID of an X509-SVID leaf certificate (DER), applying the SVID rules.
    pub fn from_svid_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|_| IdentityError::BadCertificate)?;
        Self::from_svid(&cert)
    }

    pub(crate) fn from_svid(cert: &X509Certificate<'_>) -> Result<Self, IdentityError> {
        let mut uris = Vec::with_capacity(1);
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::BasicConstraints(bc) if bc.ca => {
                    return Err(IdentityError::LeafIsCa);
                }
                ParsedExtension::KeyUsage(ku) if ku.key_cert_sign() || ku.crl_sign() => {
                    return Err(IdentityError::LeafIsCa);
                }
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        if let GeneralName::URI(uri) = name {
                            uris.push(*uri);
                        }
                    }
                }
                _ => {}
            }
        }
        match uris.as_slice() {
            [] => Err(IdentityError::NoUriSan),
            [one] => one.parse(),
            many => Err(IdentityError::MultipleUriSans(many.len())),
        }
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(IdentityError::TooLong);
        }
        let rest = s.strip_prefix(SCHEME).ok_or(IdentityError::WrongScheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        validate_trust_domain(td)?;
        if path.is_empty() || path == "/" {
            return Err(IdentityError::EmptyPath);
        }
        for segment in path[1..].split('/') {
            if segment.is_empty() || segment == "." || segment == ".." {
                return Err(IdentityError::InvalidPathSegment);
            }
            if !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            {
                return Err(IdentityError::InvalidPathChar);
            }
        }
        Ok(Self {
            uri: s.into(),
            path_start: SCHEME.len() + td.len(),
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.uri)
    }
}

/// The verified identity of the peer on one inbound connection, inserted into every request's
/// extensions by the listener. Nothing downstream re-parses certificates or compares raw strings.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    pub spiffe_id: SpiffeId,
    /// SHA-256 of the peer's leaf certificate (DER), for `x-forwarded-client-cert`.
    pub cert_sha256: [u8; 32],
    /// What the connection's requests derive from the identity, made for the first request that
    /// needs it and shared by every clone (one per request).
    pub derived: Arc<PeerDerived>,
}

/// Per-connection values derived from a [`PeerIdentity`], each made once.
#[derive(Debug, Default)]
pub struct PeerDerived {
    /// The `x-forwarded-client-cert` value, with the local identity it names in `By=`.
    pub xfcc: std::sync::OnceLock<(SpiffeId, http::HeaderValue)>,
    /// The key a per-peer rate limit counts the connection's requests by.
    rate_limit_key: std::sync::OnceLock<Arc<str>>,
    /// The `Forwarded` family for the first host the connection's requests named (nearly
    /// always the only one).
    pub forwarded: std::sync::OnceLock<ForwardedValues>,
}

/// The values vakt sets in `Forwarded`, `X-Forwarded-For`/`X-Real-IP` and `X-Forwarded-Host` for
/// one peer address and one canonical host.
#[derive(Debug, Clone)]
pub struct ForwardedValues {
    pub host: Option<http::HeaderValue>,
    pub forwarded: http::HeaderValue,
    pub ip: http::HeaderValue,
}

impl PeerIdentity {
    pub fn new(spiffe_id: SpiffeId, cert_sha256: [u8; 32]) -> Self {
        Self {
            spiffe_id,
            cert_sha256,
            derived: Arc::default(),
        }
    }

    /// `peer:<SPIFFE ID>`, made for the connection's first rate-limited request.
    pub fn rate_limit_key(&self) -> &Arc<str> {
        self.derived
            .rate_limit_key
            .get_or_init(|| Arc::from(format!("peer:{}", self.spiffe_id)))
    }
}

// Config files name SPIFFE IDs and trust domains as strings, parsed (and refused) on load.
impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        s.parse().map_err(|e| {
            serde::de::Error::custom(format!(
                "\"{s}\" is not a valid SPIFFE ID: {e} (expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)"
            ))
        })
    }
}

impl<'de> serde::Deserialize<'de> for TrustDomain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        s.parse().map_err(|e| {
            serde::de::Error::custom(format!(
                "\"{s}\" is not a valid trust domain: {e} (expected e.g. cluster.local)"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connections_rate_limit_key_is_made_once_and_shared_by_its_requests() {
        let peer = PeerIdentity::new("spiffe://td/ns/a/sa/b".parse().unwrap(), [0; 32]);
        let per_request = peer.clone();
        let key = peer.rate_limit_key().clone();
        assert_eq!(&*key, "peer:spiffe://td/ns/a/sa/b");
        assert!(Arc::ptr_eq(&key, per_request.rate_limit_key()));
        // One shared allocation holds everything derived per connection.
        assert!(Arc::ptr_eq(&peer.derived, &per_request.derived));
    }

    #[test]
    fn parses_valid_ids() {
        let id: SpiffeId = "spiffe://cluster.local/ns/billing/sa/api".parse().unwrap();
        assert_eq!(id.trust_domain_str(), "cluster.local");
        assert_eq!(id.path(), "/ns/billing/sa/api");
        assert_eq!(id.namespace_and_service_account(), Some(("billing", "api")));
        let other: SpiffeId = "spiffe://td/workload-1".parse().unwrap();
        assert_eq!(other.namespace_and_service_account(), None);
    }

    #[test]
    fn rejects_invalid_ids() {
        let long = format!("spiffe://td/{}", "a".repeat(2100));
        let cases: &[(&str, IdentityError)] = &[
            ("http://td/ns/a/sa/b", IdentityError::WrongScheme),
            ("SPIFFE://td/ns/a/sa/b", IdentityError::WrongScheme),
            ("spiffe:///ns/a", IdentityError::EmptyTrustDomain),
            ("spiffe://TD/ns/a", IdentityError::InvalidTrustDomainChar),
            (
                "spiffe://td:443/ns/a",
                IdentityError::InvalidTrustDomainChar,
            ),
            (
                "spiffe://user@td/ns/a",
                IdentityError::InvalidTrustDomainChar,
            ),
            ("spiffe://td", IdentityError::EmptyPath),
            ("spiffe://td/", IdentityError::EmptyPath),
            ("spiffe://td/ns//a", IdentityError::InvalidPathSegment),
            ("spiffe://td/ns/a/", IdentityError::InvalidPathSegment),
            ("spiffe://td/ns/../a", IdentityError::InvalidPathSegment),
            ("spiffe://td/./a", IdentityError::InvalidPathSegment),
            ("spiffe://td/ns/a?x=1", IdentityError::InvalidPathChar),
            ("spiffe://td/ns/a#frag", IdentityError::InvalidPathChar),
            ("spiffe://td/ns/%41", IdentityError::InvalidPathChar),
            ("spiffe://td/ns/å", IdentityError::InvalidPathChar),
            (long.as_str(), IdentityError::TooLong),
        ];
        for (input, expected) in cases {
            assert_eq!(
                input.parse::<SpiffeId>().unwrap_err(),
                *expected,
                "input {input}"
            );
        }
    }

    #[test]
    fn trust_domain_accepts_bare_or_uri_form() {
        assert_eq!(
            "spiffe://cluster.local"
                .parse::<TrustDomain>()
                .unwrap()
                .as_str(),
            "cluster.local"
        );
        assert!("Cluster.Local".parse::<TrustDomain>().is_err());
    }
}

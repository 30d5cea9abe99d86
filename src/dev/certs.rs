//! Development PKI for vakt: a small ECDSA P-256 certificate authority that issues
//! X.509-SVIDs (SPIFFE workload certificates), built on rcgen 0.14.
//!
//! On-disk layout:
//! - CA directory: [`CA_CERT_FILE`] (0644) and [`CA_KEY_FILE`] (0600).
//! - Workload directory: [`CERT_FILE`] (0644), [`KEY_FILE`] (0600) and [`BUNDLE_FILE`]
//!   (the CA certificate, 0644).
//!
//! Every file is written atomically (temporary file in the same directory, then rename), and
//! private keys are created with mode 0600 from the start.
//!
//! This is a development CA: keys are stored unencrypted and there is no revocation.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use time::OffsetDateTime;

/// Default lifetime of a generated CA.
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Default lifetime of a workload certificate: short-lived on purpose.
pub const DEFAULT_SVID_VALIDITY: Duration = Duration::from_secs(24 * 60 * 60);

/// CA certificate file name inside a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// CA private key file name inside a CA directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// Workload certificate file name.
pub const CERT_FILE: &str = "cert.pem";
/// Workload private key file name.
pub const KEY_FILE: &str = "key.pem";
/// Trust bundle (the CA certificate) file name next to a workload certificate.
pub const BUNDLE_FILE: &str = "bundle.pem";

/// Organization put in the subject of generated CAs.
const CA_ORGANIZATION: &str = "vakt development CA";
/// Backdating of `not_before`, to tolerate small clock skew between peers.
const BACKDATE: time::Duration = time::Duration::minutes(1);
/// Mode of public files (certificates, bundles).
const PUBLIC_MODE: u32 = 0o644;
/// Mode of private keys.
const PRIVATE_MODE: u32 = 0o600;
/// Length of random serial numbers in bytes (RFC 5280 allows up to 20).
const SERIAL_LEN: usize = 16;

/// Errors of the development PKI. Every variant that concerns a file names it.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading, writing, renaming or creating `path` failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// rcgen refused to build or sign a certificate.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The CA certificate file is not a usable CA certificate.
    #[error("invalid CA certificate {}: {reason}", path.display())]
    InvalidCa { path: PathBuf, reason: String },
    /// The CA private key file cannot be parsed.
    #[error("invalid CA private key {}: {source}", path.display())]
    InvalidKey {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    /// The CA private key does not belong to the CA certificate.
    #[error(
        "CA private key {} does not match the public key of CA certificate {}",
        key_path.display(),
        cert_path.display()
    )]
    KeyMismatch {
        cert_path: PathBuf,
        key_path: PathBuf,
    },
    /// Refused to replace an existing file.
    #[error("refusing to overwrite existing {} (pass overwrite to replace it)", path.display())]
    AlreadyExists { path: PathBuf },
    /// The trust domain is not a valid SPIFFE trust domain name.
    #[error("invalid SPIFFE trust domain {trust_domain:?}: {reason}")]
    InvalidTrustDomain {
        trust_domain: String,
        reason: &'static str,
    },
    /// The requested validity cannot be represented.
    #[error("invalid validity {validity:?}: {reason}")]
    InvalidValidity {
        validity: Duration,
        reason: &'static str,
    },
    /// An issued certificate is unparseable or was not issued by the given CA.
    #[error("invalid issued certificate: {reason}")]
    InvalidCertificate { reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A certificate authority (ECDSA P-256) that signs workload certificates (X.509-SVIDs).
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: Vec<u8>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The issuer's Debug elides the private key.
        f.debug_struct("CertificateAuthority")
            .field("issuer", &self.issuer)
            .field("cert_der_len", &self.cert_der.len())
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// The trust domain the CA was made for: its `spiffe://<td>` URI SAN.
    pub fn trust_domain(&self) -> Option<String> {
        let (_, cert) = x509_parser::parse_x509_certificate(&self.cert_der).ok()?;
        let san = cert.subject_alternative_name().ok()??;
        san.value.general_names.iter().find_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => uri
                .strip_prefix("spiffe://")
                .map(|td| td.trim_end_matches('/').to_owned()),
            _ => None,
        })
    }

    /// New self-signed CA for `trust_domain` (e.g. `example.org`).
    ///
    /// Subject: CN = "<trust_domain> dev CA <8 random hex>", O = "vakt development CA",
    /// OU = trust domain. The random part keeps two CAs of the same trust domain distinct, so a
    /// certificate from the other one is reported as from an unknown CA, not as a bad signature.
    /// SAN: the URI `spiffe://<trust_domain>`. Basic constraints cA=true, pathLen 0 (it signs
    /// leaves only). Key usages keyCertSign, cRLSign, digitalSignature. Valid from one minute
    /// ago until now + `validity`.
    pub fn generate(trust_domain: &str, validity: Duration) -> Result<Self, PkiError> {
        validate_trust_domain(trust_domain)?;
        if validity.is_zero() {
            return Err(PkiError::InvalidValidity {
                validity,
                reason: "must be greater than zero",
            });
        }
        let now = OffsetDateTime::now_utc();
        let not_after = time::Duration::try_from(validity)
            .ok()
            .and_then(|d| now.checked_add(d))
            .filter(|t| *t <= max_not_after())
            .ok_or(PkiError::InvalidValidity {
                validity,
                reason: "ends after the year 9999",
            })?;

        let mut params = CertificateParams::default();
        params.not_before = now - BACKDATE;
        params.not_after = not_after;
        params.serial_number = Some(random_serial()?);
        let mut dn = DistinguishedName::new();
        let mut tag = [0u8; 4];
        aws_lc_rs::rand::fill(&mut tag).map_err(|_| PkiError::InvalidCertificate {
            reason: "the system random number generator failed".into(),
        })?;
        dn.push(
            DnType::CommonName,
            format!("{trust_domain} dev CA {}", hex::encode(tag)),
        );
        dn.push(DnType::OrganizationName, CA_ORGANIZATION);
        dn.push(DnType::OrganizationalUnitName, trust_domain);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(format!(
            "spiffe://{trust_domain}"
        ))?)];
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Load [`CA_CERT_FILE`] and [`CA_KEY_FILE`] from `dir`.
    ///
    /// The certificate must be a single PEM certificate with basicConstraints cA=true,
    /// keyCertSign (when a key usage extension is present), not expired, and the key must
    /// be its private key.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let invalid = |reason: String| PkiError::InvalidCa {
            path: cert_path.clone(),
            reason,
        };

        let cert_text = fs::read(&cert_path).map_err(io_err(&cert_path))?;
        let mut blocks = Vec::new();
        for block in x509_parser::pem::Pem::iter_from_buffer(&cert_text) {
            blocks.push(block.map_err(|e| invalid(format!("malformed PEM: {e}")))?);
        }
        let block = match blocks.as_slice() {
            [] => return Err(invalid("no PEM block found".into())),
            [one] => one,
            more => {
                return Err(invalid(format!(
                    "expected exactly one certificate, found {} PEM blocks",
                    more.len()
                )));
            }
        };
        if block.label != "CERTIFICATE" {
            return Err(invalid(format!(
                "expected a CERTIFICATE PEM block, found {:?}",
                block.label
            )));
        }
        let cert_der = block.contents.clone();
        let (rest, x509) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| invalid(format!("not a valid X.509 certificate: {e}")))?;
        if !rest.is_empty() {
            return Err(invalid("trailing data after the certificate".into()));
        }
        match x509.basic_constraints() {
            Ok(Some(bc)) if bc.value.ca => {}
            Ok(_) => {
                return Err(invalid(
                    "not a CA certificate (basicConstraints cA is not true)".into(),
                ));
            }
            Err(e) => return Err(invalid(format!("bad basicConstraints extension: {e}"))),
        }
        match x509.key_usage() {
            Ok(Some(ku)) if !ku.value.key_cert_sign() => {
                return Err(invalid("key usage does not include keyCertSign".into()));
            }
            Ok(_) => {}
            Err(e) => return Err(invalid(format!("bad keyUsage extension: {e}"))),
        }
        let not_after = x509.validity().not_after;
        if not_after.timestamp() < OffsetDateTime::now_utc().unix_timestamp() {
            return Err(invalid(format!("certificate expired at {not_after}")));
        }
        let cert_public_key = x509.public_key().subject_public_key.data.to_vec();
        drop(x509);

        let key_text = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let key = KeyPair::from_pem(&key_text).map_err(|source| PkiError::InvalidKey {
            path: key_path.clone(),
            source,
        })?;
        if key.public_key_raw() != cert_public_key.as_slice() {
            return Err(PkiError::KeyMismatch {
                cert_path,
                key_path,
            });
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der.as_slice().into(), key)
            .map_err(|e| invalid(format!("cannot use as issuer: {e}")))?;
        Ok(Self {
            cert_pem: pem_certificate(&cert_der)?,
            cert_der,
            issuer,
        })
    }

    /// Write [`CA_CERT_FILE`] (0644) and [`CA_KEY_FILE`] (0600) into `dir`, creating it
    /// (mode 0700) if missing.
    ///
    /// Without `overwrite`, refuses (with [`PkiError::AlreadyExists`]) when either file
    /// already exists; the key is published with a no-clobber link, so a concurrent writer
    /// cannot be overwritten either.
    pub fn save(&self, dir: &Path, overwrite: bool) -> Result<(), PkiError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if !overwrite {
            for path in [&key_path, &cert_path] {
                if fs::symlink_metadata(path).is_ok() {
                    return Err(PkiError::AlreadyExists { path: path.clone() });
                }
            }
        }
        let key_pem = self.issuer.key().serialize_pem();
        write_file(&key_path, key_pem.as_bytes(), PRIVATE_MODE, overwrite)?;
        if let Err(e) = write_atomically(&cert_path, self.cert_pem.as_bytes(), PUBLIC_MODE) {
            if !overwrite {
                // Do not leave a key without its certificate behind.
                let _ = fs::remove_file(&key_path);
            }
            return Err(e);
        }
        Ok(())
    }

    /// The CA certificate in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate in DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Sign a leaf according to `spec`, with a fresh ECDSA P-256 key and a random serial.
    ///
    /// The spec is applied as given, without SPIFFE checks, so that tests can craft
    /// non-conforming certificates; use [`LeafSpec::svid`] for a correct X.509-SVID.
    pub fn issue(&self, spec: &LeafSpec) -> Result<IssuedCert, PkiError> {
        let mut params = CertificateParams::default();
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.serial_number = Some(random_serial()?);
        let mut dn = DistinguishedName::new();
        if !spec.common_name.is_empty() {
            dn.push(DnType::CommonName, spec.common_name.as_str());
        }
        params.distinguished_name = dn;
        let mut sans = Vec::with_capacity(spec.uris.len() + spec.dns_names.len());
        for uri in &spec.uris {
            sans.push(SanType::URI(Ia5String::try_from(uri.as_str())?));
        }
        for name in &spec.dns_names {
            sans.push(SanType::DnsName(Ia5String::try_from(name.as_str())?));
        }
        params.subject_alt_names = sans;
        if spec.is_ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
            ];
        } else {
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        }
        if spec.server_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if spec.client_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.use_authority_key_identifier_extension = true;

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// What goes into a leaf certificate.
///
/// [`LeafSpec::svid`] gives a correct X.509-SVID. The fields are public so that tests can
/// craft bad certificates on purpose (two URI SANs, none, a DNS SAN, an expired window, a CA
/// used as a leaf, missing EKUs).
#[derive(Clone, Debug)]
pub struct LeafSpec {
    /// Subject CN; omitted from the subject when empty.
    pub common_name: String,
    /// URI SANs (an X.509-SVID has exactly one: its SPIFFE ID).
    pub uris: Vec<String>,
    /// DNS SANs (none in an SVID issued by vakt).
    pub dns_names: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// `true`: basicConstraints cA=true plus keyCertSign. `false`: cA=false (explicit).
    pub is_ca: bool,
    /// Add the serverAuth EKU.
    pub server_auth: bool,
    /// Add the clientAuth EKU. With neither EKU, the extension is omitted.
    pub client_auth: bool,
}

impl LeafSpec {
    /// A correct X.509-SVID for `spiffe_id`: one URI SAN, no DNS SAN, cA=false,
    /// digitalSignature, EKUs serverAuth + clientAuth, valid from one minute ago until
    /// now + `validity` (capped at 9999-12-31T23:59:59Z), CN = the last path segment of the
    /// ID (or the whole ID when it has no path).
    pub fn svid(spiffe_id: &str, validity: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        let not_after = time::Duration::try_from(validity)
            .ok()
            .and_then(|d| now.checked_add(d))
            .map_or_else(max_not_after, |t| t.min(max_not_after()));
        Self {
            common_name: svid_common_name(spiffe_id).to_owned(),
            uris: vec![spiffe_id.to_owned()],
            dns_names: Vec::new(),
            not_before: now - BACKDATE,
            not_after,
            is_ca: false,
            server_auth: true,
            client_auth: true,
        }
    }
}

/// An issued leaf certificate and its private key.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    /// PKCS#8 private key in PEM.
    pub key_pem: String,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl IssuedCert {
    /// Write [`BUNDLE_FILE`] (the CA certificate, 0644), [`KEY_FILE`] (0600) and
    /// [`CERT_FILE`] (0644) into `dir` (created if missing), in that order, each atomically.
    ///
    /// The certificate goes last so that a watcher keyed on `cert.pem` finds the matching
    /// key already in place. Fails with [`PkiError::InvalidCertificate`] if the certificate
    /// was not issued by `ca`.
    pub fn save(&self, dir: &Path, ca: &CertificateAuthority) -> Result<(), PkiError> {
        check_issued_by(&self.cert_der, ca)?;
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(io_err(dir))?;
        write_atomically(&dir.join(BUNDLE_FILE), ca.cert_pem.as_bytes(), PUBLIC_MODE)?;
        write_atomically(&dir.join(KEY_FILE), self.key_pem.as_bytes(), PRIVATE_MODE)?;
        write_atomically(&dir.join(CERT_FILE), self.cert_pem.as_bytes(), PUBLIC_MODE)?;
        Ok(())
    }
}

fn check_issued_by(cert_der: &[u8], ca: &CertificateAuthority) -> Result<(), PkiError> {
    let invalid = |reason: String| PkiError::InvalidCertificate { reason };
    let (_, leaf) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| invalid(format!("cannot parse certificate: {e}")))?;
    let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca.cert_der)
        .map_err(|e| invalid(format!("cannot parse CA certificate: {e}")))?;
    if leaf.issuer().as_raw() != ca_cert.subject().as_raw() {
        return Err(invalid(format!(
            "issuer {} is not the CA subject {}",
            leaf.issuer(),
            ca_cert.subject()
        )));
    }
    Ok(())
}

/// Write `contents` to `path` atomically with unix permissions `mode`.
///
/// The data goes to a temporary file in the same directory, created with `mode` (so a
/// 0600 key is never readable by others, even briefly), flushed to disk, then renamed over
/// `path`. Readers see either the old file or the whole new one. The temporary file is
/// removed on failure.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    write_file(path, contents, mode, true)
}

/// Atomic write; with `replace == false` the file is published with `link(2)`, which fails
/// if `path` exists (no-clobber without a check-then-write race).
fn write_file(path: &Path, contents: &[u8], mode: u32, replace: bool) -> Result<(), PkiError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);

    let file_name = path.file_name().ok_or_else(|| PkiError::Io {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"),
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };

    // Create a fresh temporary file (create_new: never reuse or follow an existing path).
    let (tmp_path, mut file) = loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut name = std::ffi::OsString::from(".");
        name.push(file_name);
        name.push(format!(".tmp-{}-{n}", std::process::id()));
        let candidate = dir.join(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&candidate)
        {
            Ok(file) => break (candidate, file),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(source) => {
                return Err(PkiError::Io {
                    path: candidate,
                    source,
                });
            }
        }
    };
    let guard = TempFile(Some(tmp_path.clone()));

    // The umask may have narrowed the creation mode; set exactly what was asked.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err(&tmp_path))?;
    file.write_all(contents).map_err(io_err(&tmp_path))?;
    file.sync_all().map_err(io_err(&tmp_path))?;
    drop(file);

    if replace {
        fs::rename(&tmp_path, path).map_err(io_err(path))?;
    } else {
        match fs::hard_link(&tmp_path, path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(PkiError::AlreadyExists {
                    path: path.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(PkiError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
    if replace {
        // The temporary name is gone (renamed).
        guard.disarm();
    } else {
        // Remove the temporary name; the data stays reachable through `path`.
        drop(guard);
    }
    // Make the rename durable; best effort (some filesystems refuse to fsync directories).
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Removes a temporary file when dropped, unless disarmed.
struct TempFile(Option<PathBuf>);

impl TempFile {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// The latest time X.509 can express (GeneralizedTime 99991231235959Z).
fn max_not_after() -> OffsetDateTime {
    time::Date::from_calendar_date(9999, time::Month::December, 31).map_or(
        OffsetDateTime::UNIX_EPOCH,
        |d| {
            d.with_hms(23, 59, 59)
                .map_or(OffsetDateTime::UNIX_EPOCH, |dt| dt.assume_utc())
        },
    )
}

/// CN for an SVID: the last non-empty path segment of the SPIFFE ID, or the ID itself.
fn svid_common_name(spiffe_id: &str) -> &str {
    let rest = spiffe_id.strip_prefix("spiffe://").unwrap_or(spiffe_id);
    match rest.split_once('/') {
        Some((_, path)) => path
            .rsplit('/')
            .find(|s| !s.is_empty())
            .unwrap_or(spiffe_id),
        None => spiffe_id,
    }
}

/// SPIFFE trust domain names: 1..=255 characters of `a-z 0-9 . - _`.
fn validate_trust_domain(trust_domain: &str) -> Result<(), PkiError> {
    let reason = if trust_domain.is_empty() {
        Some("must not be empty")
    } else if trust_domain.len() > 255 {
        Some("longer than 255 characters")
    } else if !trust_domain
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        Some("only lowercase letters, digits, '.', '-' and '_' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(PkiError::InvalidTrustDomain {
            trust_domain: trust_domain.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// A random, positive, fixed-length serial number.
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; SERIAL_LEN];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| PkiError::InvalidCertificate {
        reason: "the system random number generator failed".into(),
    })?;
    // Positive (MSB clear) and without a leading zero byte, so the DER encoding keeps
    // exactly SERIAL_LEN bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// PEM text of a DER certificate.
fn pem_certificate(der: &[u8]) -> Result<String, PkiError> {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    Ok(pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der),
        config,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::certificate::X509Certificate;
    use x509_parser::extensions::GeneralName;
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ECDSA_WITH_SHA256,
    };

    const TD: &str = "example.org";
    const ID: &str = "spiffe://example.org/ns/default/sa/web";
    /// Tolerance for "now" comparisons, in seconds.
    const SLACK: i64 = 10;

    fn parse(der: &[u8]) -> X509Certificate<'_> {
        let (rest, cert) = x509_parser::parse_x509_certificate(der).expect("valid DER");
        assert!(rest.is_empty(), "trailing bytes after certificate");
        cert
    }

    fn now() -> i64 {
        OffsetDateTime::now_utc().unix_timestamp()
    }

    fn new_ca() -> CertificateAuthority {
        CertificateAuthority::generate(TD, DEFAULT_CA_VALIDITY).expect("generate CA")
    }

    fn sans<'a>(
        cert: &'a X509Certificate<'_>,
        pick: impl Fn(&GeneralName<'a>) -> Option<&'a str>,
    ) -> Vec<&'a str> {
        cert.subject_alternative_name()
            .expect("SAN parses")
            .map(|san| san.value.general_names.iter().filter_map(&pick).collect())
            .unwrap_or_default()
    }

    fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Vec<&'a str> {
        sans(cert, |n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
    }

    fn dns_sans<'a>(cert: &'a X509Certificate<'_>) -> Vec<&'a str> {
        sans(cert, |n| match n {
            GeneralName::DNSName(d) => Some(*d),
            _ => None,
        })
    }

    fn common_name(cert: &X509Certificate<'_>) -> Option<String> {
        cert.subject()
            .iter_common_name()
            .next()
            .map(|cn| cn.as_str().expect("CN is a string").to_owned())
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
    }

    fn assert_p256(cert: &X509Certificate<'_>) {
        let spki = cert.public_key();
        assert_eq!(spki.algorithm.algorithm, OID_KEY_TYPE_EC_PUBLIC_KEY);
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .expect("curve parameter")
            .as_oid()
            .expect("named curve OID");
        assert_eq!(curve, OID_EC_P256);
        assert_eq!(
            cert.signature_algorithm.algorithm,
            OID_SIG_ECDSA_WITH_SHA256
        );
    }

    /// The key PEM belongs to the certificate.
    fn assert_key_matches(cert: &X509Certificate<'_>, key_pem: &str) {
        let key = KeyPair::from_pem(key_pem).expect("key parses");
        assert_eq!(key.algorithm(), &PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            key.public_key_raw(),
            cert.public_key().subject_public_key.data.as_ref()
        );
    }

    fn bad_spec() -> LeafSpec {
        LeafSpec::svid(ID, DEFAULT_SVID_VALIDITY)
    }

    // ---------------------------------------------------------------- CA

    #[test]
    fn ca_is_a_self_signed_p256_ca() {
        let ca = new_ca();
        let cert = parse(ca.cert_der());

        let bc = cert.basic_constraints().unwrap().expect("basicConstraints");
        assert!(bc.critical);
        assert!(bc.value.ca);
        assert_eq!(bc.value.path_len_constraint, Some(0));
        assert!(cert.is_ca());

        let ku = cert.key_usage().unwrap().expect("keyUsage");
        assert!(ku.critical);
        assert!(ku.value.key_cert_sign());
        assert!(ku.value.crl_sign());
        assert!(ku.value.digital_signature());
        assert!(!ku.value.key_encipherment());

        assert_eq!(cert.subject().as_raw(), cert.issuer().as_raw());
        cert.verify_signature(None).expect("self-signed");
        assert_p256(&cert);
        assert_eq!(cert.version(), x509_parser::x509::X509Version::V3);
    }

    #[test]
    fn ca_subject_names_the_trust_domain() {
        let ca = new_ca();
        let cert = parse(ca.cert_der());
        let cn = common_name(&cert).unwrap();
        assert!(cn.starts_with("example.org dev CA "), "{cn}");
        let other = CertificateAuthority::generate("example.org", DEFAULT_CA_VALIDITY).unwrap();
        assert_ne!(
            common_name(&parse(other.cert_der())).unwrap(),
            cn,
            "two CAs of one trust domain must have distinct subjects"
        );
        let org = cert.subject().iter_organization().next().unwrap();
        assert_eq!(org.as_str().unwrap(), "vakt development CA");
        let ou = cert.subject().iter_organizational_unit().next().unwrap();
        assert_eq!(ou.as_str().unwrap(), TD);
        assert_eq!(uri_sans(&cert), vec!["spiffe://example.org"]);
        assert!(dns_sans(&cert).is_empty());
    }

    #[test]
    fn ca_validity_is_as_requested() {
        let validity = Duration::from_secs(3 * 24 * 3600);
        let before = now();
        let ca = CertificateAuthority::generate(TD, validity).unwrap();
        let after = now();
        let cert = parse(ca.cert_der());
        let v = cert.validity();
        let nb = v.not_before.timestamp();
        let na = v.not_after.timestamp();
        assert!((before - 60 - SLACK..=after - 60 + 1).contains(&nb), "{nb}");
        let secs = i64::try_from(validity.as_secs()).unwrap();
        assert!((before + secs - 1..=after + secs + 1).contains(&na), "{na}");
        assert!(v.is_valid());
    }

    #[test]
    fn ca_default_validity_is_one_year() {
        let cert_der = new_ca().cert_der().to_vec();
        let cert = parse(&cert_der);
        let na = cert.validity().not_after.timestamp();
        let expected = now() + 365 * 24 * 3600;
        assert!((na - expected).abs() <= SLACK, "{na} vs {expected}");
    }

    #[test]
    fn ca_pem_and_der_agree() {
        let ca = new_ca();
        let pem = x509_parser::pem::parse_x509_pem(ca.cert_pem().as_bytes())
            .unwrap()
            .1;
        assert_eq!(pem.label, "CERTIFICATE");
        assert_eq!(pem.contents, ca.cert_der());
        assert_eq!(pem_certificate(ca.cert_der()).unwrap(), ca.cert_pem());
    }

    #[test]
    fn ca_rejects_bad_trust_domains() {
        for td in [
            "",
            "Example.org",
            "spiffe://example.org",
            "example.org/x",
            "ex ample",
            &"a".repeat(256),
        ] {
            let err = CertificateAuthority::generate(td, DEFAULT_CA_VALIDITY).unwrap_err();
            assert!(
                matches!(&err, PkiError::InvalidTrustDomain { trust_domain, .. } if trust_domain == td),
                "{td:?}: {err}"
            );
        }
        CertificateAuthority::generate("a-b_c.d9", DEFAULT_CA_VALIDITY).unwrap();
    }

    #[test]
    fn ca_rejects_unrepresentable_validity() {
        for validity in [
            Duration::ZERO,
            Duration::MAX,
            Duration::from_secs(10_000 * 366 * 86400),
        ] {
            let err = CertificateAuthority::generate(TD, validity).unwrap_err();
            assert!(matches!(err, PkiError::InvalidValidity { .. }), "{err}");
        }
    }

    #[test]
    fn ca_serials_are_random() {
        let a = new_ca();
        let b = new_ca();
        let sa = parse(a.cert_der()).raw_serial().to_vec();
        let sb = parse(b.cert_der()).raw_serial().to_vec();
        assert_ne!(sa, sb);
        assert_eq!(sa.len(), SERIAL_LEN);
        assert!(sa[0] & 0x80 == 0, "serial must be positive");
    }

    #[test]
    fn ca_debug_does_not_leak_the_key() {
        let ca = new_ca();
        let debug = format!("{ca:?}");
        let key_pem = ca.issuer.key().serialize_pem();
        let key_body = key_pem.lines().nth(1).unwrap();
        assert!(!debug.contains(key_body));
        assert!(!debug.contains("PRIVATE KEY"));
    }

    #[test]
    fn ca_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<CertificateAuthority>();
        assert_send_sync::<IssuedCert>();
    }

    // ---------------------------------------------------------------- SVID

    #[test]
    fn svid_is_a_correct_x509_svid() {
        let ca = new_ca();
        let before = now();
        let issued = ca
            .issue(&LeafSpec::svid(ID, DEFAULT_SVID_VALIDITY))
            .unwrap();
        let after = now();
        let cert = parse(&issued.cert_der);
        let ca_cert = parse(ca.cert_der());

        // Exactly one URI SAN, the SPIFFE ID; nothing else in the SAN.
        assert_eq!(uri_sans(&cert), vec![ID]);
        assert!(dns_sans(&cert).is_empty());
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names.len(), 1);

        // Not a CA, and says so explicitly.
        let bc = cert
            .basic_constraints()
            .unwrap()
            .expect("basicConstraints present");
        assert!(!bc.value.ca);
        assert_eq!(bc.value.path_len_constraint, None);
        assert!(!cert.is_ca());

        // Key usage: digitalSignature, never keyCertSign/cRLSign.
        let ku = cert.key_usage().unwrap().expect("keyUsage");
        assert!(ku.value.digital_signature());
        assert!(!ku.value.key_cert_sign());
        assert!(!ku.value.crl_sign());

        // EKUs.
        let eku = cert.extended_key_usage().unwrap().expect("EKU");
        assert!(eku.value.server_auth);
        assert!(eku.value.client_auth);

        // Issued and signed by the CA.
        assert_eq!(cert.issuer().as_raw(), ca_cert.subject().as_raw());
        cert.verify_signature(Some(ca_cert.public_key()))
            .expect("signed by the CA");
        assert!(cert.verify_signature(None).is_err(), "not self-signed");
        let aki = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                    a.key_identifier.clone()
                }
                _ => None,
            })
            .expect("AKI");
        let ski = ca_cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(s) => {
                    Some(s.clone())
                }
                _ => None,
            })
            .expect("CA SKI");
        assert_eq!(aki.0, ski.0);

        // Key and algorithm.
        assert_p256(&cert);
        assert_key_matches(&cert, &issued.key_pem);

        // Validity.
        let nb = cert.validity().not_before.timestamp();
        let na = cert.validity().not_after.timestamp();
        assert!((before - 60 - SLACK..=after - 60 + 1).contains(&nb), "{nb}");
        let secs = i64::try_from(DEFAULT_SVID_VALIDITY.as_secs()).unwrap();
        assert!((before + secs - 1..=after + secs + 1).contains(&na), "{na}");
        assert!(cert.validity().is_valid());

        // Subject.
        assert_eq!(common_name(&cert).as_deref(), Some("web"));

        // PEM and DER agree.
        let pem = x509_parser::pem::parse_x509_pem(issued.cert_pem.as_bytes())
            .unwrap()
            .1;
        assert_eq!(pem.contents, issued.cert_der);
    }

    #[test]
    fn svid_is_rejected_by_another_ca() {
        let ca = new_ca();
        let other = new_ca();
        let issued = ca
            .issue(&LeafSpec::svid(ID, DEFAULT_SVID_VALIDITY))
            .unwrap();
        let cert = parse(&issued.cert_der);
        let other_cert = parse(other.cert_der());
        assert!(
            cert.verify_signature(Some(other_cert.public_key()))
                .is_err()
        );
    }

    #[test]
    fn svid_spec_fields() {
        let spec = LeafSpec::svid(ID, Duration::from_secs(3600));
        assert_eq!(spec.uris, vec![ID.to_owned()]);
        assert!(spec.dns_names.is_empty());
        assert!(!spec.is_ca);
        assert!(spec.server_auth && spec.client_auth);
        assert_eq!(spec.common_name, "web");
        assert_eq!(
            spec.not_after - spec.not_before,
            time::Duration::seconds(3660)
        );
    }

    #[test]
    fn svid_common_name_rules() {
        assert_eq!(svid_common_name("spiffe://td/ns/default/sa/web"), "web");
        assert_eq!(svid_common_name("spiffe://td/web/"), "web");
        assert_eq!(svid_common_name("spiffe://td"), "spiffe://td");
        assert_eq!(svid_common_name("spiffe://td/"), "spiffe://td/");
    }

    #[test]
    fn svid_huge_validity_is_capped() {
        let spec = LeafSpec::svid(ID, Duration::MAX);
        assert_eq!(spec.not_after, max_not_after());
        let cert_der = new_ca().issue(&spec).unwrap().cert_der;
        let cert = parse(&cert_der);
        assert_eq!(
            cert.validity().not_after.timestamp(),
            max_not_after().unix_timestamp()
        );
    }

    #[test]
    fn leaf_serials_are_random_and_keys_fresh() {
        let ca = new_ca();
        let spec = LeafSpec::svid(ID, DEFAULT_SVID_VALIDITY);
        let a = ca.issue(&spec).unwrap();
        let b = ca.issue(&spec).unwrap();
        let ca_ = parse(&a.cert_der);
        let cb = parse(&b.cert_der);
        assert_ne!(ca_.raw_serial(), cb.raw_serial());
        assert_eq!(ca_.raw_serial().len(), SERIAL_LEN);
        assert_ne!(a.key_pem, b.key_pem);
    }

    #[test]
    fn issued_cert_debug_redacts_key() {
        let issued = new_ca().issue(&bad_spec()).unwrap();
        let debug = format!("{issued:?}");
        assert!(!debug.contains("PRIVATE KEY"));
        assert!(debug.contains("[redacted]"));
    }

    // ---------------------------------------------------------------- crafted bad leaves

    #[test]
    fn crafted_two_uri_sans() {
        let ca = new_ca();
        let mut spec = bad_spec();
        spec.uris
            .push("spiffe://example.org/ns/default/sa/other".into());
        let cert_der = ca.issue(&spec).unwrap().cert_der;
        let cert = parse(&cert_der);
        assert_eq!(
            uri_sans(&cert),
            vec![ID, "spiffe://example.org/ns/default/sa/other"]
        );
        cert.verify_signature(Some(parse(ca.cert_der()).public_key()))
            .unwrap();
    }

    #[test]
    fn crafted_no_uri_san() {
        let mut spec = bad_spec();
        spec.uris.clear();
        let cert_der = new_ca().issue(&spec).unwrap().cert_der;
        let cert = parse(&cert_der);
        assert!(cert.subject_alternative_name().unwrap().is_none());
        assert!(uri_sans(&cert).is_empty());
    }

    #[test]
    fn crafted_dns_san() {
        let mut spec = bad_spec();
        spec.dns_names.push("web.default.svc".into());
        let cert_der = new_ca().issue(&spec).unwrap().cert_der;
        let cert = parse(&cert_der);
        assert_eq!(uri_sans(&cert), vec![ID]);
        assert_eq!(dns_sans(&cert), vec!["web.default.svc"]);
    }

    #[test]
    fn crafted_expired_window() {
        let mut spec = bad_spec();
        let now_t = OffsetDateTime::now_utc();
        spec.not_before = now_t - time::Duration::days(2);
        spec.not_after = now_t - time::Duration::days(1);
        let cert_der = new_ca().issue(&spec).unwrap().cert_der;
        let cert = parse(&cert_der);
        assert!(!cert.validity().is_valid());
        assert!(cert.validity().not_after.timestamp() < now());
        assert_eq!(
            cert.validity().not_after.timestamp(),
            spec.not_after.unix_timestamp()
        );
        assert_eq!(
            cert.validity().not_before.timestamp(),
            spec.not_before.unix_timestamp()
        );
    }

    #[test]
    fn crafted_ca_as_leaf() {
        let mut spec = bad_spec();
        spec.is_ca = true;
        let cert_der = new_ca().issue(&spec).unwrap().cert_der;
        let cert = parse(&cert_der);
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(bc.value.ca);
        assert!(cert.key_usage().unwrap().unwrap().value.key_cert_sign());
        assert_eq!(uri_sans(&cert), vec![ID]);
    }

    #[test]
    fn crafted_server_auth_only() {
        let mut spec = bad_spec();
        spec.client_auth = false;
        let cert_der = new_ca().issue(&spec).unwrap().cert_der;
        let cert = parse(&cert_der);
        let eku = cert.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.server_auth);
        assert!(!eku.value.client_auth);
    }

    #[test]
    fn crafted_no_eku() {
        let mut spec = bad_spec();
        spec.client_auth = false;
        spec.server_auth = false;
        let cert_der = new_ca().issue(&spec).unwrap().cert_der;
        let cert = parse(&cert_der);
        assert!(cert.extended_key_usage().unwrap().is_none());
    }

    #[test]
    fn crafted_empty_common_name_gives_empty_subject() {
        let mut spec = bad_spec();
        spec.common_name.clear();
        let cert_der = new_ca().issue(&spec).unwrap().cert_der;
        let cert = parse(&cert_der);
        assert_eq!(cert.subject().iter().count(), 0);
        assert_eq!(uri_sans(&cert), vec![ID]);
    }

    #[test]
    fn non_ascii_uri_is_an_rcgen_error() {
        let mut spec = bad_spec();
        spec.uris = vec!["spiffe://example.org/é".into()];
        let err = new_ca().issue(&spec).unwrap_err();
        assert!(matches!(err, PkiError::Rcgen(_)), "{err}");
    }

    // ---------------------------------------------------------------- save / load

    #[test]
    fn save_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("nested/ca");
        let original = new_ca();
        original.save(&ca_dir, false).unwrap();

        assert_eq!(mode_of(&ca_dir.join(CA_KEY_FILE)), 0o600);
        assert_eq!(mode_of(&ca_dir.join(CA_CERT_FILE)), 0o644);
        assert_eq!(mode_of(&ca_dir), 0o700);
        assert_eq!(
            fs::read_to_string(ca_dir.join(CA_CERT_FILE)).unwrap(),
            original.cert_pem()
        );

        let loaded = CertificateAuthority::load(&ca_dir).unwrap();
        assert_eq!(loaded.cert_der(), original.cert_der());
        assert_eq!(loaded.cert_pem(), original.cert_pem());

        let issued = loaded
            .issue(&LeafSpec::svid(ID, DEFAULT_SVID_VALIDITY))
            .unwrap();
        let leaf = parse(&issued.cert_der);
        let original_cert = parse(original.cert_der());
        leaf.verify_signature(Some(original_cert.public_key()))
            .expect("leaf from loaded CA verifies against the original CA cert");
        assert_eq!(leaf.issuer().as_raw(), original_cert.subject().as_raw());
        assert_key_matches(&leaf, &issued.key_pem);
    }

    #[test]
    fn save_refuses_to_overwrite_key() {
        let dir = tempfile::tempdir().unwrap();
        let first = new_ca();
        first.save(dir.path(), false).unwrap();
        let key_before = fs::read(dir.path().join(CA_KEY_FILE)).unwrap();

        let second = new_ca();
        let err = second.save(dir.path(), false).unwrap_err();
        match &err {
            PkiError::AlreadyExists { path } => assert_eq!(path, &dir.path().join(CA_KEY_FILE)),
            other => panic!("unexpected error: {other}"),
        }
        assert!(err.to_string().contains("ca-key.pem"), "{err}");
        assert_eq!(fs::read(dir.path().join(CA_KEY_FILE)).unwrap(), key_before);
        assert_eq!(
            CertificateAuthority::load(dir.path()).unwrap().cert_der(),
            first.cert_der()
        );

        second.save(dir.path(), true).unwrap();
        assert_eq!(
            CertificateAuthority::load(dir.path()).unwrap().cert_der(),
            second.cert_der()
        );
        assert_eq!(mode_of(&dir.path().join(CA_KEY_FILE)), 0o600);
        assert_no_temp_files(dir.path());
    }

    #[test]
    fn save_refuses_when_only_the_key_exists() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(CA_KEY_FILE), "precious").unwrap();
        let err = new_ca().save(dir.path(), false).unwrap_err();
        assert!(matches!(err, PkiError::AlreadyExists { .. }), "{err}");
        assert_eq!(
            fs::read_to_string(dir.path().join(CA_KEY_FILE)).unwrap(),
            "precious"
        );
        assert!(!dir.path().join(CA_CERT_FILE).exists());
    }

    #[test]
    fn no_clobber_write_is_atomic_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        write_file(&path, b"one", PRIVATE_MODE, false).unwrap();
        let err = write_file(&path, b"two", PRIVATE_MODE, false).unwrap_err();
        assert!(matches!(err, PkiError::AlreadyExists { .. }), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_no_temp_files(dir.path());
    }

    #[test]
    fn load_empty_dir_names_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = CertificateAuthority::load(dir.path()).unwrap_err();
        match &err {
            PkiError::Io { path, source } => {
                assert_eq!(path, &dir.path().join(CA_CERT_FILE));
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("unexpected error: {other}"),
        }
        assert!(err.to_string().contains("ca.pem"), "{err}");
    }

    #[test]
    fn load_missing_key_names_the_key_file() {
        let dir = tempfile::tempdir().unwrap();
        new_ca().save(dir.path(), false).unwrap();
        fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
        let err = CertificateAuthority::load(dir.path()).unwrap_err();
        match &err {
            PkiError::Io { path, source } => {
                assert_eq!(path, &dir.path().join(CA_KEY_FILE));
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("unexpected error: {other}"),
        }
    }

    #[test]
    fn load_garbage_cert_pem() {
        let dir = tempfile::tempdir().unwrap();
        new_ca().save(dir.path(), false).unwrap();
        let cert_path = dir.path().join(CA_CERT_FILE);
        for garbage in [
            "this is not a certificate\n".to_owned(),
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".to_owned(),
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_owned(),
        ] {
            fs::write(&cert_path, &garbage).unwrap();
            let err = CertificateAuthority::load(dir.path()).unwrap_err();
            match &err {
                PkiError::InvalidCa { path, .. } => assert_eq!(path, &cert_path),
                other => panic!("unexpected error for {garbage:?}: {other}"),
            }
            assert!(err.to_string().contains("ca.pem"), "{err}");
        }
    }

    #[test]
    fn load_rejects_wrong_pem_label_and_multiple_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca();
        ca.save(dir.path(), false).unwrap();
        let cert_path = dir.path().join(CA_CERT_FILE);

        fs::write(
            &cert_path,
            pem::encode(&pem::Pem::new("PRIVATE KEY", ca.cert_der())),
        )
        .unwrap();
        let err = CertificateAuthority::load(dir.path()).unwrap_err();
        assert!(
            matches!(&err, PkiError::InvalidCa { reason, .. } if reason.contains("CERTIFICATE")),
            "{err}"
        );

        fs::write(&cert_path, format!("{}{}", ca.cert_pem(), ca.cert_pem())).unwrap();
        let err = CertificateAuthority::load(dir.path()).unwrap_err();
        assert!(
            matches!(&err, PkiError::InvalidCa { reason, .. } if reason.contains("exactly one")),
            "{err}"
        );
    }

    #[test]
    fn load_garbage_key_pem() {
        let dir = tempfile::tempdir().unwrap();
        new_ca().save(dir.path(), false).unwrap();
        let key_path = dir.path().join(CA_KEY_FILE);
        fs::write(
            &key_path,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = CertificateAuthority::load(dir.path()).unwrap_err();
        match &err {
            PkiError::InvalidKey { path, .. } => assert_eq!(path, &key_path),
            other => panic!("unexpected error: {other}"),
        }
        assert!(err.to_string().contains("ca-key.pem"), "{err}");

        fs::write(&key_path, "garbage").unwrap();
        let err = CertificateAuthority::load(dir.path()).unwrap_err();
        assert!(matches!(err, PkiError::InvalidKey { .. }), "{err}");
    }

    #[test]
    fn load_rejects_a_key_from_another_ca() {
        let dir = tempfile::tempdir().unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        new_ca().save(dir.path(), false).unwrap();
        new_ca().save(other_dir.path(), false).unwrap();
        fs::copy(
            other_dir.path().join(CA_KEY_FILE),
            dir.path().join(CA_KEY_FILE),
        )
        .unwrap();
        let err = CertificateAuthority::load(dir.path()).unwrap_err();
        match &err {
            PkiError::KeyMismatch {
                cert_path,
                key_path,
            } => {
                assert_eq!(cert_path, &dir.path().join(CA_CERT_FILE));
                assert_eq!(key_path, &dir.path().join(CA_KEY_FILE));
            }
            other => panic!("unexpected error: {other}"),
        }
    }

    #[test]
    fn load_rejects_a_leaf_as_ca() {
        let dir = tempfile::tempdir().unwrap();
        let issued = new_ca().issue(&bad_spec()).unwrap();
        fs::write(dir.path().join(CA_CERT_FILE), &issued.cert_pem).unwrap();
        fs::write(dir.path().join(CA_KEY_FILE), &issued.key_pem).unwrap();
        let err = CertificateAuthority::load(dir.path()).unwrap_err();
        assert!(
            matches!(&err, PkiError::InvalidCa { reason, .. } if reason.contains("not a CA")),
            "{err}"
        );
    }

    #[test]
    fn load_rejects_an_expired_ca() {
        // Any cA=true certificate whose validity window is over must be refused.
        let dir = tempfile::tempdir().unwrap();
        let mut spec = bad_spec();
        spec.is_ca = true;
        let now_t = OffsetDateTime::now_utc();
        spec.not_before = now_t - time::Duration::days(2);
        spec.not_after = now_t - time::Duration::days(1);
        let issued = new_ca().issue(&spec).unwrap();
        fs::write(dir.path().join(CA_CERT_FILE), &issued.cert_pem).unwrap();
        fs::write(dir.path().join(CA_KEY_FILE), &issued.key_pem).unwrap();
        let err = CertificateAuthority::load(dir.path()).unwrap_err();
        assert!(
            matches!(&err, PkiError::InvalidCa { reason, .. } if reason.contains("expired")),
            "{err}"
        );
    }

    #[test]
    fn issued_cert_save_writes_three_files() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("workload/web");
        let ca = new_ca();
        let issued = ca
            .issue(&LeafSpec::svid(ID, DEFAULT_SVID_VALIDITY))
            .unwrap();
        issued.save(&out, &ca).unwrap();

        assert_eq!(mode_of(&out.join(KEY_FILE)), 0o600);
        assert_eq!(mode_of(&out.join(CERT_FILE)), 0o644);
        assert_eq!(mode_of(&out.join(BUNDLE_FILE)), 0o644);
        assert_eq!(
            fs::read_to_string(out.join(CERT_FILE)).unwrap(),
            issued.cert_pem
        );
        assert_eq!(
            fs::read_to_string(out.join(KEY_FILE)).unwrap(),
            issued.key_pem
        );
        assert_eq!(
            fs::read_to_string(out.join(BUNDLE_FILE)).unwrap(),
            ca.cert_pem()
        );

        // What is on disk is a usable chain.
        let cert_pem = fs::read(out.join(CERT_FILE)).unwrap();
        let leaf = x509_parser::pem::parse_x509_pem(&cert_pem).unwrap().1;
        let bundle_pem = fs::read(out.join(BUNDLE_FILE)).unwrap();
        let root = x509_parser::pem::parse_x509_pem(&bundle_pem).unwrap().1;
        let leaf = leaf.parse_x509().unwrap();
        let root = root.parse_x509().unwrap();
        leaf.verify_signature(Some(root.public_key())).unwrap();
        assert_key_matches(&leaf, &fs::read_to_string(out.join(KEY_FILE)).unwrap());

        // Re-saving (rotation) replaces the files in place.
        let rotated = ca
            .issue(&LeafSpec::svid(ID, DEFAULT_SVID_VALIDITY))
            .unwrap();
        rotated.save(&out, &ca).unwrap();
        assert_eq!(
            fs::read_to_string(out.join(CERT_FILE)).unwrap(),
            rotated.cert_pem
        );
        assert_eq!(
            fs::read_to_string(out.join(KEY_FILE)).unwrap(),
            rotated.key_pem
        );
        assert_eq!(mode_of(&out.join(KEY_FILE)), 0o600);
        assert_no_temp_files(&out);
    }

    #[test]
    fn issued_cert_save_refuses_another_ca() {
        let dir = tempfile::tempdir().unwrap();
        let issued = new_ca().issue(&bad_spec()).unwrap();
        let other = CertificateAuthority::generate("other.org", DEFAULT_CA_VALIDITY).unwrap();
        let err = issued.save(dir.path(), &other).unwrap_err();
        assert!(matches!(err, PkiError::InvalidCertificate { .. }), "{err}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    // ---------------------------------------------------------------- write_atomically

    fn assert_no_temp_files(dir: &Path) {
        let leftovers: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }

    #[test]
    fn write_atomically_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file.pem");
        write_atomically(&path, b"first", 0o644).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"first");
        write_atomically(&path, b"second", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert_eq!(mode_of(&path), 0o600);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("file.pem")]);
    }

    #[test]
    fn write_atomically_sets_exact_mode() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o600, 0o640, 0o644] {
            let path = dir.path().join(format!("f{mode:o}"));
            write_atomically(&path, b"x", mode).unwrap();
            assert_eq!(mode_of(&path), mode);
        }
    }

    #[test]
    fn write_atomically_replaces_a_symlink_not_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, b"target").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_atomically(&link, b"new", 0o644).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"target");
        assert!(
            !fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(&link).unwrap(), b"new");
    }

    #[test]
    fn write_atomically_missing_dir_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/file.pem");
        let err = write_atomically(&path, b"x", 0o644).unwrap_err();
        match &err {
            PkiError::Io { path: p, source } => {
                assert!(p.starts_with(dir.path().join("missing")), "{}", p.display());
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("unexpected error: {other}"),
        }
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn write_atomically_failed_rename_cleans_up() {
        // Renaming a file over a non-empty directory fails; the temp file must go away.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("occupied");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), b"x").unwrap();
        let err = write_atomically(&path, b"x", 0o644).unwrap_err();
        assert!(
            matches!(&err, PkiError::Io { path: p, .. } if p == &path),
            "{err}"
        );
        assert_no_temp_files(dir.path());
    }

    #[test]
    fn write_atomically_rejects_path_without_file_name() {
        let err = write_atomically(Path::new("/"), b"x", 0o644).unwrap_err();
        assert!(
            matches!(&err, PkiError::Io { source, .. } if source.kind() == io::ErrorKind::InvalidInput),
            "{err}"
        );
    }

    // ---------------------------------------------------------------- helpers

    #[test]
    fn error_messages_are_precise() {
        let e = PkiError::InvalidCa {
            path: PathBuf::from("/etc/vakt/ca/ca.pem"),
            reason: "not a CA certificate".into(),
        };
        assert_eq!(
            e.to_string(),
            "invalid CA certificate /etc/vakt/ca/ca.pem: not a CA certificate"
        );
        let e = PkiError::AlreadyExists {
            path: PathBuf::from("/x/ca-key.pem"),
        };
        assert!(e.to_string().contains("/x/ca-key.pem"));
        let e = PkiError::Io {
            path: PathBuf::from("/x/key.pem"),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        assert!(e.to_string().starts_with("I/O error on /x/key.pem: "));
        assert!(std::error::Error::source(&e).is_some());
    }
}

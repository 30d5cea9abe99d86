//! Pseudonyms for personal identifiers (national ids, subjects): keyed HMAC-SHA-256 with a
//! secret key from a file (a Kubernetes Secret) and a key id so the key can rotate. The same
//! person gets the same pseudonym across events and sidecars sharing the key; re-identification
//! needs the key.

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

/// Pseudonym namespace of national identity numbers (the one the policy stage uses for the
/// `x-vakt-national-id-pseudonym` header, so audit and app see the same pseudonym).
pub const KIND_NATIONAL_ID: &str = "national_id";
/// Pseudonym namespace of token subjects (`sub`).
pub const KIND_SUBJECT: &str = "subject";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PseudonymConfig {
    /// File holding the secret key (at least 32 bytes; raw bytes or text).
    pub key_file: std::path::PathBuf,
    /// Identifies the key in every pseudonym, so a rotated key is recognisable.
    pub key_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PseudonymError {
    #[error("cannot read pseudonymisation key {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("pseudonymisation key {path} is shorter than 32 bytes")]
    TooShort { path: std::path::PathBuf },
    #[error("pseudonymisation key_id must be 1-16 letters, digits, '-' or '_'")]
    BadKeyId,
}

pub struct Pseudonymiser {
    key_id: String,
    key: hmac::Key,
}

impl std::fmt::Debug for Pseudonymiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pseudonymiser")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Pseudonymiser {
    pub fn from_config(config: &PseudonymConfig) -> Result<Self, PseudonymError> {
        if config.key_id.is_empty()
            || config.key_id.len() > 16
            || !config
                .key_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(PseudonymError::BadKeyId);
        }
        let secret = std::fs::read(&config.key_file).map_err(|source| PseudonymError::Read {
            path: config.key_file.clone(),
            source,
        })?;
        let secret = secret.trim_ascii();
        if secret.len() < 32 {
            return Err(PseudonymError::TooShort {
                path: config.key_file.clone(),
            });
        }
        Ok(Self::from_secret(&config.key_id, secret))
    }

    pub fn from_secret(key_id: &str, secret: &[u8]) -> Self {
        Self {
            key_id: key_id.to_owned(),
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// A random key for this process only (no key configured): pseudonyms are not stable across
    /// restarts or sidecars, but nothing personal leaves in clear.
    pub fn ephemeral() -> Self {
        let mut secret = [0u8; 32];
        let _ = aws_lc_rs::rand::fill(&mut secret);
        Self::from_secret("ephemeral", &secret)
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// `<key id>:<base64url HMAC-SHA-256(kind || 0 || value)>`; `kind` separates namespaces
    /// (a national id and a subject with equal text get different pseudonyms).
    pub fn pseudonym(&self, kind: &str, value: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(kind.as_bytes());
        ctx.update(&[0]);
        ctx.update(value.as_bytes());
        format!(
            "{}:{}",
            self.key_id,
            URL_SAFE_NO_PAD.encode(ctx.sign().as_ref())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_keyed_and_namespaced() {
        let a = Pseudonymiser::from_secret("k1", &[7; 32]);
        let b = Pseudonymiser::from_secret("k1", &[7; 32]);
        let other = Pseudonymiser::from_secret("k2", &[8; 32]);
        let p = a.pseudonym("national_id", "12345678901");
        assert_eq!(p, b.pseudonym("national_id", "12345678901"));
        assert!(p.starts_with("k1:") && !p.contains("12345678901"));
        assert_ne!(p, a.pseudonym("subject", "12345678901"));
        assert_ne!(p, a.pseudonym("national_id", "12345678902"));
        assert_ne!(p[3..], other.pseudonym("national_id", "12345678901")[3..]);
    }

    #[test]
    fn key_file_checks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "short").unwrap();
        let cfg = PseudonymConfig {
            key_file: path.clone(),
            key_id: "k1".into(),
        };
        assert!(matches!(
            Pseudonymiser::from_config(&cfg),
            Err(PseudonymError::TooShort { .. })
        ));
        std::fs::write(&path, "x".repeat(40)).unwrap();
        assert!(Pseudonymiser::from_config(&cfg).is_ok());
        let bad = PseudonymConfig {
            key_file: path,
            key_id: "k 1".into(),
        };
        assert!(matches!(
            Pseudonymiser::from_config(&bad),
            Err(PseudonymError::BadKeyId)
        ));
    }
}

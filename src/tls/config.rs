//! The `identity` and `tls` sections: this workload's SVID files, the own trust bundle, the
//! bundles of federated trust domains, and the TLS versions offered.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::identity::TrustDomain;
use crate::serde_helpers::de_duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Our own trust domain; peers from it are verified against `trust_bundle`.
    pub trust_domain: TrustDomain,
    /// PEM certificate chain, leaf first (an X509-SVID).
    pub cert: PathBuf,
    /// PEM private key of the leaf (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// PEM file with our own trust domain's CA certificates (several during a CA rotation).
    pub trust_bundle: PathBuf,
    /// Federated trust domains, each with a bundle of its own. A peer's certificate is verified
    /// only against the bundle of the trust domain in its SPIFFE ID.
    #[serde(default)]
    pub federation: Vec<FederatedDomain>,
    /// How often the files are re-read as a safety net besides file-change notifications.
    #[serde(default = "default_reload_interval", deserialize_with = "de_duration")]
    pub reload_interval: Duration,
}

/// One federated trust domain and the PEM file holding its CA certificates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederatedDomain {
    pub trust_domain: TrustDomain,
    pub bundle: PathBuf,
}

impl IdentityConfig {
    /// Every trust domain with a bundle: our own first, then the federated ones in config order.
    pub fn trust_domains(&self) -> Vec<TrustDomain> {
        std::iter::once(&self.trust_domain)
            .chain(self.federation.iter().map(|f| &f.trust_domain))
            .cloned()
            .collect()
    }

    /// The bundle files with the config key naming each: our own, then the federated ones.
    pub fn bundle_files(&self) -> Vec<(String, &TrustDomain, &std::path::Path)> {
        let own = (
            "identity.trust_bundle".to_owned(),
            &self.trust_domain,
            self.trust_bundle.as_path(),
        );
        std::iter::once(own)
            .chain(self.federation.iter().enumerate().map(|(i, f)| {
                (
                    format!("identity.federation[{i}].bundle"),
                    &f.trust_domain,
                    f.bundle.as_path(),
                )
            }))
            .collect()
    }

    /// Checks between the section's keys: `(key, problem)` for the first one wrong.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.trust_bundle.as_os_str().is_empty() {
            return Err((
                "identity.trust_bundle".to_owned(),
                "is empty; name the PEM file with the trust domain's CA certificates".to_owned(),
            ));
        }
        for (i, fed) in self.federation.iter().enumerate() {
            let key = format!("identity.federation[{i}]");
            if fed.trust_domain == self.trust_domain {
                return Err((
                    format!("{key}.trust_domain"),
                    format!(
                        "{} is our own trust domain (identity.trust_domain), whose bundle is identity.trust_bundle",
                        fed.trust_domain
                    ),
                ));
            }
            if let Some(j) = self.federation[..i]
                .iter()
                .position(|f| f.trust_domain == fed.trust_domain)
            {
                return Err((
                    format!("{key}.trust_domain"),
                    format!(
                        "{} is already listed in identity.federation[{j}]",
                        fed.trust_domain
                    ),
                ));
            }
            if fed.bundle.as_os_str().is_empty() {
                return Err((
                    format!("{key}.bundle"),
                    "is empty; name the PEM file with the trust domain's CA certificates"
                        .to_owned(),
                ));
            }
        }
        if self.reload_interval.is_zero() {
            return Err((
                "identity.reload_interval".to_owned(),
                "must be greater than zero".to_owned(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    Tls12,
    #[default]
    #[serde(rename = "1.3")]
    Tls13,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// Lowest TLS version offered and accepted: "1.3" (default) or "1.2".
    #[serde(default)]
    pub min_version: TlsVersion,
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(30)
}

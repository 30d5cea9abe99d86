//! The `identity` and `tls` sections: this workload's SVID files, the trust bundle, the accepted
//! trust domains, and the TLS versions offered.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::identity::TrustDomain;
use crate::serde_helpers::de_duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Our own trust domain; peers from it are accepted.
    pub trust_domain: TrustDomain,
    /// Further trust domains whose peers are accepted (federation). Their CAs must be in the bundle.
    #[serde(default)]
    pub accepted_trust_domains: Vec<TrustDomain>,
    /// PEM certificate chain, leaf first (an X509-SVID).
    pub cert: PathBuf,
    /// PEM private key of the leaf (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// PEM file with one or more CA certificates (several during a CA rotation).
    pub trust_bundle: PathBuf,
    /// How often the files are re-read as a safety net besides file-change notifications.
    #[serde(default = "default_reload_interval", deserialize_with = "de_duration")]
    pub reload_interval: Duration,
}

impl IdentityConfig {
    /// Own trust domain first, then the federated ones.
    pub fn accepted(&self) -> Vec<TrustDomain> {
        let mut all = vec![self.trust_domain.clone()];
        for td in &self.accepted_trust_domains {
            if !all.contains(td) {
                all.push(td.clone());
            }
        }
        all
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

//! The `oidc` section: trusted issuers, accepted algorithms and token types, cache and refresh
//! settings.

use std::time::Duration;

use serde::Deserialize;

use super::alg::Alg;
use super::assurance::Profile;
use super::dpop::{DpopConfig, IssuerDpop};
use crate::serde_helpers::de_duration;

fn default_algorithms() -> Vec<Alg> {
    vec![Alg::RS256, Alg::PS256, Alg::ES256]
}

fn default_token_types() -> Vec<String> {
    vec!["at+jwt".to_owned()]
}

/// One trusted issuer, configured by the platform team; never derived from tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The issuer identifier, compared byte for byte with the token's `iss` and the discovery
    /// document's `issuer`.
    pub issuer: String,
    /// Which provider's claim names and assurance levels to use.
    pub profile: Profile,
    /// Audiences this service accepts (`aud` must contain one).
    pub audiences: Vec<String>,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<Alg>,
    /// Accepted `typ` header values (case-insensitive, `application/` prefix allowed).
    #[serde(default = "default_token_types")]
    pub token_types: Vec<String>,
    #[serde(default = "defaults::leeway", deserialize_with = "de_duration")]
    pub leeway: Duration,
    /// Longest accepted `exp - iat`.
    #[serde(default = "defaults::max_lifetime", deserialize_with = "de_duration")]
    pub max_token_lifetime: Duration,
    /// Discovery document URL (default `<issuer>/.well-known/openid-configuration`).
    #[serde(default)]
    pub discovery_url: Option<String>,
    /// Development only: allow `http://` for an issuer on a loopback address.
    #[serde(default)]
    pub allow_insecure_loopback: bool,
    /// Sender-constrained (DPoP) tokens from this issuer.
    #[serde(default)]
    pub dpop: IssuerDpop,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    pub issuers: Vec<IssuerConfig>,
    /// Bounds for honouring the JWKS `Cache-Control: max-age`.
    #[serde(default = "defaults::refresh_min", deserialize_with = "de_duration")]
    pub jwks_refresh_min: Duration,
    #[serde(default = "defaults::refresh_max", deserialize_with = "de_duration")]
    pub jwks_refresh_max: Duration,
    /// Keep using the last good key set this long while the IdP is unreachable.
    #[serde(default = "defaults::max_staleness", deserialize_with = "de_duration")]
    pub jwks_max_staleness: Duration,
    /// Verified tokens remembered (by hash) so a repeated token costs a lookup.
    #[serde(default = "defaults::token_cache")]
    pub verified_token_cache: usize,
    /// Larger `Authorization` values are refused.
    #[serde(default = "defaults::max_token_bytes")]
    pub max_token_bytes: usize,
    /// How DPoP proofs are checked: the public URL, window, replay cache and nonces.
    #[serde(default)]
    pub dpop: DpopConfig,
    /// An HTTP proxy (`http://host:port`) that discovery and JWKS requests to the providers go
    /// through with CONNECT, for pods whose egress leaves only through a proxy. TLS stays end
    /// to end with the provider; loopback development issuers are asked directly.
    #[serde(default)]
    pub https_proxy: Option<String>,
}

mod defaults {
    use std::time::Duration;
    pub fn leeway() -> Duration {
        Duration::from_secs(10)
    }
    pub fn max_lifetime() -> Duration {
        Duration::from_secs(24 * 3600)
    }
    pub fn refresh_min() -> Duration {
        Duration::from_secs(60)
    }
    pub fn refresh_max() -> Duration {
        Duration::from_secs(24 * 3600)
    }
    pub fn max_staleness() -> Duration {
        Duration::from_secs(24 * 3600)
    }
    pub fn token_cache() -> usize {
        10_000
    }
    pub fn max_token_bytes() -> usize {
        8 * 1024
    }
}

impl OidcConfig {
    /// The proxy as a URI, once [`validate`](Self::validate) accepted it.
    pub fn https_proxy_uri(&self) -> Option<http::Uri> {
        self.https_proxy.as_deref().and_then(|p| p.parse().ok())
    }

    fn validate_proxy(proxy: &str) -> Result<(), (String, String)> {
        let refuse = |why: &str| Err(("oidc.https_proxy".to_owned(), format!("\"{proxy}\" {why}")));
        let Ok(uri) = proxy.parse::<http::Uri>() else {
            return refuse("is not a URL");
        };
        if uri.scheme_str() != Some("http") {
            return refuse(
                "must be an http:// URL (the proxy is asked for a CONNECT tunnel; TLS to the provider goes through it)",
            );
        }
        let Some(authority) = uri.authority() else {
            return refuse("names no host");
        };
        if authority.as_str().contains('@') {
            // Not repeated: the URL holds a password.
            return Err((
                "oidc.https_proxy".to_owned(),
                "must not carry credentials (they would sit in the config in clear)".to_owned(),
            ));
        }
        if authority.port_u16().is_none() {
            return refuse("names no port (e.g. http://proxy.example:3128)");
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return refuse("must be just scheme, host and port");
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), (String, String)> {
        if let Some(proxy) = &self.https_proxy {
            Self::validate_proxy(proxy)?;
        }
        if self.issuers.is_empty() {
            return Err((
                "oidc.issuers".into(),
                "empty; remove the oidc section or add an issuer".into(),
            ));
        }
        for (i, issuer) in self.issuers.iter().enumerate() {
            let at = format!("oidc.issuers[{i}]");
            let url: http::Uri = issuer.issuer.parse().map_err(|_| {
                (
                    format!("{at}.issuer"),
                    format!("\"{}\" is not a URL", issuer.issuer),
                )
            })?;
            let loopback = url.host().is_some_and(|h| {
                h == "localhost"
                    || h.parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            });
            match url.scheme_str() {
                Some("https") => {}
                Some("http") if issuer.allow_insecure_loopback && loopback => {}
                _ => {
                    return Err((
                        format!("{at}.issuer"),
                        format!(
                            "\"{}\" must be https (http only for a loopback development issuer with allow_insecure_loopback: true)",
                            issuer.issuer
                        ),
                    ));
                }
            }
            if issuer.audiences.is_empty() || issuer.audiences.iter().any(String::is_empty) {
                return Err((
                    format!("{at}.audiences"),
                    "name at least one non-empty audience".into(),
                ));
            }
            if issuer.algorithms.is_empty() {
                return Err((
                    format!("{at}.algorithms"),
                    "empty; no token could ever verify".into(),
                ));
            }
            if issuer.token_types.is_empty() {
                return Err((
                    format!("{at}.token_types"),
                    "empty; no token could ever verify".into(),
                ));
            }
            if issuer.leeway > Duration::from_secs(300) {
                return Err((
                    format!("{at}.leeway"),
                    "more than 5m; keep clock leeway small".into(),
                ));
            }
            if self.issuers[..i].iter().any(|o| o.issuer == issuer.issuer) {
                return Err((format!("{at}.issuer"), "listed twice".into()));
            }
            issuer.dpop.validate(&at)?;
            if issuer.dpop.required(issuer.profile)
                && issuer.dpop.public_url.is_empty()
                && self.dpop.public_url.is_empty()
            {
                return Err((
                    format!("{at}.dpop"),
                    "DPoP is required (the default for profile helseid) but no public URL is known to check proofs' htu against; set oidc.dpop.public_url (or this issuer's dpop.public_url), or dpop.required: false".into(),
                ));
            }
        }
        if self.jwks_refresh_min > self.jwks_refresh_max || self.jwks_refresh_min.is_zero() {
            return Err((
                "oidc.jwks_refresh_min".into(),
                "must be > 0 and <= jwks_refresh_max".into(),
            ));
        }
        if self.verified_token_cache == 0 {
            return Err((
                "oidc.verified_token_cache".into(),
                "must be at least 1".into(),
            ));
        }
        self.dpop.validate()?;
        if !(1024..=65536).contains(&self.max_token_bytes) {
            return Err((
                "oidc.max_token_bytes".into(),
                "out of range (1024 to 65536)".into(),
            ));
        }
        Ok(())
    }
}

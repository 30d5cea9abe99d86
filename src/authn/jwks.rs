//! Signing keys per issuer: discovery (exact issuer match), the JWKS from the discovered
//! `jwks_uri` only, refreshed in the background honouring `Cache-Control` within bounds (with
//! jitter). An unknown `kid` triggers one refetch — single-flight, at most once per 10 s per
//! issuer — so a rotation is picked up on first use while a flood of random kids costs at most one
//! fetch per 10 s. Only a kid that a fetch made after it was first seen did not contain is
//! remembered as unknown (answered 401 without a fetch for 30 s); a kid that arrives while the
//! refetch is held back gets a retryable 503, so a bogus kid never delays a real rotation by more
//! than the refetch interval. On failure the last good keys are kept up to a maximum
//! staleness; never an empty set, never a fallback key. Weak or unusable keys are dropped at
//! load and counted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::CoreProviderMetadata;
use serde_json::Value;

use super::error::TokenError;
use super::http_client::{FetchError, IdpClient};
use super::{Alg, IssuerConfig, OidcConfig};
use crate::metrics as m;

/// Least time between two unknown-kid refetches of one issuer.
const UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(UNKNOWN_KEY_RETRY_AFTER_SECS);
/// What a request refused while the refetch is held back is told to wait (`Retry-After`).
pub const UNKNOWN_KEY_RETRY_AFTER_SECS: u64 = 10;
/// How long an unknown kid is remembered (answered without a fetch).
const UNKNOWN_KID_MEMORY: Duration = Duration::from_secs(30);
const MAX_REMEMBERED_KIDS: usize = 1024;
/// Longest wait between two fetches while an issuer has no usable keys (before jitter).
const NOT_READY_RETRY_MAX: Duration = Duration::from_secs(2);
const MAX_KEYS: usize = 64;

/// A usable verification key.
pub struct VerifyKey {
    pub kid: String,
    /// `RSA` or `EC`.
    pub kty: &'static str,
    /// The JWK's own `alg`, if it names one.
    pub alg: Option<Alg>,
    /// `P-256` / `P-384` for EC keys.
    pub crv: Option<String>,
    /// RFC 7638 JWK thumbprint (SHA-256, base64url): identifies the key material itself, so a
    /// kid re-published with other material is seen as another key.
    pub thumbprint: String,
    pub decoding: jsonwebtoken::DecodingKey,
}

/// The RFC 7638 thumbprint of a public RSA or EC JWK: SHA-256 over its required members in
/// lexicographic order, without whitespace. `None` if a required member is missing.
pub fn thumbprint(jwk: &Value) -> Option<String> {
    let member = |k: &str| {
        jwk.get(k)
            .and_then(Value::as_str)
            .map(|v| Value::String(v.to_owned()).to_string())
    };
    let canonical = match jwk.get("kty").and_then(Value::as_str)? {
        "RSA" => format!(
            r#"{{"e":{},"kty":"RSA","n":{}}}"#,
            member("e")?,
            member("n")?
        ),
        "EC" => format!(
            r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#,
            member("crv")?,
            member("x")?,
            member("y")?
        ),
        _ => return None,
    };
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    Some(URL_SAFE_NO_PAD.encode(digest.as_ref()))
}

struct KeySet {
    keys: HashMap<String, Arc<VerifyKey>>,
    /// Kids the issuer published with a key vakt dropped (weak or unusable): refused as unknown
    /// without a refetch, which would find the same key.
    dropped: std::collections::HashSet<String>,
    fetched_at: Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("{0}")]
    Fetch(#[from] FetchError),
    #[error("discovery document of {issuer}: {message}")]
    Discovery { issuer: String, message: String },
    #[error("JWKS of {issuer}: {message}")]
    Jwks { issuer: String, message: String },
}

/// What a key lookup found.
pub enum KeyLookup {
    Found(Arc<VerifyKey>),
    /// The issuer published the kid with a key vakt does not use.
    Dropped,
    Unknown,
    /// No key set at all, or it is older than the allowed staleness.
    Unavailable,
}

pub struct IssuerKeys {
    pub config: Arc<IssuerConfig>,
    client: IdpClient,
    refresh_min: Duration,
    refresh_max: Duration,
    max_staleness: Duration,
    current: ArcSwapOption<KeySet>,
    jwks_uri: Mutex<Option<String>>,
    /// Single flight for unknown-kid refetches, and when the last one ran.
    refetch: tokio::sync::Mutex<Option<Instant>>,
    unknown_kids: Mutex<HashMap<String, Instant>>,
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `max-age` from a Cache-Control header.
fn max_age(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|d| d.trim().strip_prefix("max-age="))
        .find_map(|n| n.trim_matches('"').parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// Least RSA modulus size, in bits.
const MIN_RSA_BITS: usize = 2048;

/// The bit length of a big-endian unsigned integer.
fn modulus_bits(n: &[u8]) -> usize {
    match n.iter().position(|b| *b != 0) {
        Some(i) => (n.len() - i) * 8 - n[i].leading_zeros() as usize,
        None => 0,
    }
}

/// Why a JWK is not used.
fn rejection(jwk: &Value, allowed: &[Alg]) -> Option<&'static str> {
    let get = |k: &str| jwk.get(k);
    let kty = get("kty").and_then(Value::as_str).unwrap_or_default();
    if kty == "oct" {
        return Some("symmetric");
    }
    if ["d", "p", "q", "dp", "dq", "qi", "k", "oth"]
        .iter()
        .any(|k| get(k).is_some())
    {
        return Some("private_key");
    }
    if get("use").is_some_and(|u| u != "sig") {
        return Some("not_for_signing");
    }
    if let Some(ops) = get("key_ops").and_then(Value::as_array)
        && !ops.iter().any(|o| o == "verify")
    {
        return Some("not_for_signing");
    }
    if get("kid").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Some("no_kid");
    }
    if let Some(alg) = get("alg").and_then(Value::as_str) {
        match Alg::parse(alg) {
            Some(a) if allowed.contains(&a) && a.key_type() == kty => {}
            _ => return Some("alg_not_allowed"),
        }
    }
    match kty {
        "RSA" => {
            let bits = get("n")
                .and_then(Value::as_str)
                .and_then(|n| URL_SAFE_NO_PAD.decode(n).ok())
                .map(|n| modulus_bits(&n))
                .unwrap_or(0);
            if bits < MIN_RSA_BITS {
                return Some("weak_rsa");
            }
            // Only 65537: small exponents (3) invite signature forgeries with sloppy padding
            // checks, and no IdP we accept uses another.
            let e = get("e")
                .and_then(Value::as_str)
                .and_then(|e| URL_SAFE_NO_PAD.decode(e).ok());
            if e.as_deref() != Some(&[0x01, 0x00, 0x01]) {
                return Some("rsa_exponent");
            }
        }
        "EC" => match get("crv").and_then(Value::as_str) {
            Some("P-256" | "P-384") => {}
            _ => return Some("unsupported_curve"),
        },
        _ => return Some("unsupported_key_type"),
    }
    None
}

impl IssuerKeys {
    pub fn new(config: Arc<IssuerConfig>, oidc: &OidcConfig, client: IdpClient) -> Self {
        Self {
            config,
            client,
            refresh_min: oidc.jwks_refresh_min,
            refresh_max: oidc.jwks_refresh_max,
            max_staleness: oidc.jwks_max_staleness,
            current: ArcSwapOption::empty(),
            jwks_uri: Mutex::new(None),
            refetch: tokio::sync::Mutex::new(None),
            unknown_kids: Mutex::new(HashMap::new()),
        }
    }

    fn issuer(&self) -> &str {
        &self.config.issuer
    }

    /// Keys usable now (present and not too stale).
    pub fn is_ready(&self) -> bool {
        self.current
            .load()
            .as_ref()
            .is_some_and(|set| set.fetched_at.elapsed() <= self.max_staleness)
    }

    pub fn lookup(&self, kid: &str) -> KeyLookup {
        match self.current.load().as_ref() {
            Some(set) if set.fetched_at.elapsed() <= self.max_staleness => {
                match set.keys.get(kid) {
                    Some(key) => KeyLookup::Found(key.clone()),
                    None if set.dropped.contains(kid) => KeyLookup::Dropped,
                    None => KeyLookup::Unknown,
                }
            }
            _ => KeyLookup::Unavailable,
        }
    }

    /// The key for `kid`, refetching the set once if it is unknown (rate-limited, single-flight).
    pub async fn key(&self, kid: &str) -> Result<Arc<VerifyKey>, TokenError> {
        match self.lookup(kid) {
            KeyLookup::Found(key) => return Ok(key),
            KeyLookup::Dropped => return Err(TokenError::UnknownKey),
            KeyLookup::Unavailable if !self.is_ready() && self.current.load().is_none() => {}
            KeyLookup::Unavailable => return Err(TokenError::KeysUnavailable),
            KeyLookup::Unknown => {}
        }
        if self.remembered_unknown(kid) {
            return Err(TokenError::UnknownKey);
        }
        let mut last = self.refetch.lock().await;
        // Another request may have refetched while we waited.
        if let KeyLookup::Found(key) = self.lookup(kid) {
            return Ok(key);
        }
        let may_fetch = last.is_none_or(|t| t.elapsed() >= UNKNOWN_KID_REFETCH_INTERVAL);
        if !may_fetch {
            return Err(match self.lookup(kid) {
                // No keys at all (the issuer has not answered yet).
                KeyLookup::Unavailable => TokenError::KeysUnavailable,
                // No fetch has looked for this kid: it may be a key published a moment ago.
                _ => TokenError::UnknownKeyPending,
            });
        }
        *last = Some(Instant::now());
        let fetched = self.refresh("unknown_kid").await;
        drop(last);
        if let Err(error) = &fetched {
            tracing::warn!(issuer = self.issuer(), %error, "JWKS refetch for an unknown kid failed");
        }
        match (self.lookup(kid), fetched) {
            (KeyLookup::Found(key), _) => Ok(key),
            (KeyLookup::Dropped, _) => Err(TokenError::UnknownKey),
            (KeyLookup::Unavailable, _) => Err(TokenError::KeysUnavailable),
            // The issuer could not be asked: nothing is known about this kid.
            (KeyLookup::Unknown, Err(_)) => Err(TokenError::KeysUnavailable),
            (KeyLookup::Unknown, Ok(_)) => {
                self.remember_unknown(kid);
                Err(TokenError::UnknownKey)
            }
        }
    }

    fn remembered_unknown(&self, kid: &str) -> bool {
        let mut kids = self.unknown_kids.lock().unwrap_or_else(|p| p.into_inner());
        match kids.get(kid) {
            Some(t) if t.elapsed() < UNKNOWN_KID_MEMORY => true,
            Some(_) => {
                kids.remove(kid);
                false
            }
            None => false,
        }
    }

    fn remember_unknown(&self, kid: &str) {
        let mut kids = self.unknown_kids.lock().unwrap_or_else(|p| p.into_inner());
        if kids.len() >= MAX_REMEMBERED_KIDS {
            kids.retain(|_, t| t.elapsed() < UNKNOWN_KID_MEMORY);
            if kids.len() >= MAX_REMEMBERED_KIDS {
                kids.clear();
            }
        }
        kids.insert(kid.to_owned(), Instant::now());
    }

    async fn discover(&self) -> Result<String, JwksError> {
        if let Some(uri) = self
            .jwks_uri
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(uri);
        }
        let url = self.config.discovery_url.clone().unwrap_or_else(|| {
            format!(
                "{}/.well-known/openid-configuration",
                self.issuer().trim_end_matches('/')
            )
        });
        let doc = self
            .client
            .get(&url, self.config.allow_insecure_loopback)
            .await?;
        let metadata: CoreProviderMetadata =
            serde_json::from_slice(&doc.body).map_err(|e| JwksError::Discovery {
                issuer: self.issuer().to_owned(),
                message: e.to_string(),
            })?;
        if metadata.issuer().as_str() != self.issuer() {
            return Err(JwksError::Discovery {
                issuer: self.issuer().to_owned(),
                message: format!(
                    "the document names issuer {:?}; it must be exactly the configured one",
                    metadata.issuer().as_str()
                ),
            });
        }
        let uri = metadata.jwks_uri().url().to_string();
        *self.jwks_uri.lock().unwrap_or_else(|p| p.into_inner()) = Some(uri.clone());
        Ok(uri)
    }

    /// Fetch the key set now; returns how long until the next scheduled refresh.
    pub async fn refresh(&self, trigger: &'static str) -> Result<Duration, JwksError> {
        let result = self.fetch().await;
        let issuer = self.issuer().to_owned();
        match &result {
            Ok(_) => {
                metrics::counter!(m::JWKS_FETCHES, "issuer" => issuer.clone(), "result" => "success", "trigger" => trigger).increment(1);
                metrics::gauge!(m::JWKS_LAST_SUCCESS, "issuer" => issuer).set(now_unix());
            }
            Err(_) => {
                metrics::counter!(m::JWKS_FETCHES, "issuer" => issuer, "result" => "failure", "trigger" => trigger).increment(1);
            }
        }
        result
    }

    async fn fetch(&self) -> Result<Duration, JwksError> {
        let uri = self.discover().await?;
        let fetched = self
            .client
            .get(&uri, self.config.allow_insecure_loopback)
            .await?;
        let jwks_error = |message: String| JwksError::Jwks {
            issuer: self.issuer().to_owned(),
            message,
        };
        let doc: Value =
            serde_json::from_slice(&fetched.body).map_err(|e| jwks_error(e.to_string()))?;
        let raw_keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| jwks_error("no \"keys\" array".into()))?;
        let mut keys = HashMap::new();
        let mut dropped = std::collections::HashSet::new();
        for raw in raw_keys.iter().take(MAX_KEYS) {
            let raw_kid = raw.get("kid").and_then(Value::as_str);
            if let Some(reason) = rejection(raw, &self.config.algorithms) {
                dropped.extend(raw_kid.map(str::to_owned));
                metrics::counter!(m::JWKS_KEYS_DROPPED, "issuer" => self.issuer().to_owned(), "reason" => reason).increment(1);
                tracing::warn!(
                    issuer = self.issuer(),
                    kid = raw.get("kid").and_then(|k| k.as_str()).unwrap_or("-"),
                    reason,
                    "JWK dropped"
                );
                continue;
            }
            let decoding = serde_json::from_value::<jsonwebtoken::jwk::Jwk>(raw.clone())
                .ok()
                .and_then(|jwk| jsonwebtoken::DecodingKey::from_jwk(&jwk).ok());
            let (Some(decoding), Some(thumbprint)) = (decoding, thumbprint(raw)) else {
                dropped.extend(raw_kid.map(str::to_owned));
                metrics::counter!(m::JWKS_KEYS_DROPPED, "issuer" => self.issuer().to_owned(), "reason" => "unusable").increment(1);
                tracing::warn!(
                    issuer = self.issuer(),
                    kid = raw.get("kid").and_then(|k| k.as_str()).unwrap_or("-"),
                    reason = "unusable",
                    "JWK dropped"
                );
                continue;
            };
            let kid = raw
                .get("kid")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let kty = if raw.get("kty").and_then(Value::as_str) == Some("EC") {
                "EC"
            } else {
                "RSA"
            };
            keys.insert(
                kid.clone(),
                Arc::new(VerifyKey {
                    kid,
                    kty,
                    alg: raw.get("alg").and_then(Value::as_str).and_then(Alg::parse),
                    crv: raw.get("crv").and_then(Value::as_str).map(str::to_owned),
                    thumbprint,
                    decoding,
                }),
            );
        }
        if keys.is_empty() {
            // Never swap in an empty set: keep the last good keys.
            return Err(jwks_error("no usable signing key".into()));
        }
        self.current.store(Some(Arc::new(KeySet {
            keys,
            dropped,
            fetched_at: Instant::now(),
        })));
        let max_age = max_age(&fetched.headers).unwrap_or(self.refresh_min * 5);
        Ok(max_age.clamp(self.refresh_min, self.refresh_max))
    }

    /// Background refresh until shutdown: on schedule with ±10 % jitter; after a failure, retry
    /// with a doubling backoff, bounded by `jwks_refresh_min` while the last good keys still
    /// serve, and by [`NOT_READY_RETRY_MAX`] while there are none (a sidecar that is not ready
    /// gets no traffic that could trigger a fetch, so it must find the issuer back by itself).
    pub fn spawn_refresher(
        self: Arc<Self>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        // This issuer's fetch counters and its watched token refusals at zero: an alert sees
        // the first failed fetch and the first forged token.
        for result in ["success", "failure"] {
            for trigger in ["scheduled", "unknown_kid"] {
                metrics::counter!(m::JWKS_FETCHES, "issuer" => self.issuer().to_owned(), "result" => result, "trigger" => trigger)
                    .increment(0);
            }
        }
        for error in TokenError::WATCHED {
            metrics::counter!(m::AUTHN_FAILURES, "issuer" => self.issuer().to_owned(), "reason" => error.code())
                .increment(0);
        }
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(500);
            loop {
                let wait = match self.refresh("scheduled").await {
                    Ok(next) => {
                        backoff = Duration::from_millis(500);
                        jitter(next)
                    }
                    Err(error) => {
                        tracing::warn!(issuer = self.issuer(), %error, "JWKS refresh failed; keeping the last good keys");
                        let cap = if self.is_ready() {
                            self.refresh_min.max(Duration::from_secs(1))
                        } else {
                            NOT_READY_RETRY_MAX
                        };
                        let wait = jitter(backoff.min(cap));
                        backoff = (backoff * 2).min(cap);
                        wait
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return,
                }
            }
        })
    }
}

fn jitter(d: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let _ = aws_lc_rs::rand::fill(&mut byte);
    // 90 % .. 110 %
    d.mul_f64(0.9 + f64::from(byte[0]) / 255.0 * 0.2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn weak_and_unusable_keys_are_rejected() {
        let allowed = [Alg::RS256, Alg::ES256];
        let n2048 = URL_SAFE_NO_PAD.encode([0xC5u8; 256]);
        let n1024 = URL_SAFE_NO_PAD.encode([0xC5u8; 128]);
        // 2047 bits: 256 bytes, the top bit clear (counting bytes would say 2048).
        let mut short = [0xC5u8; 256];
        short[0] = 0x7F;
        let n2047 = URL_SAFE_NO_PAD.encode(short);
        // 2048 bits behind a leading zero byte.
        let mut padded = vec![0u8];
        padded.extend([0xC5u8; 256]);
        let n2048_zero = URL_SAFE_NO_PAD.encode(padded);
        let cases = [
            (
                json!({"kty": "RSA", "kid": "a", "n": n2047, "e": "AQAB"}),
                Some("weak_rsa"),
            ),
            (
                json!({"kty": "RSA", "kid": "a", "n": n2048_zero, "e": "AQAB"}),
                None,
            ),
            (
                json!({"kty": "RSA", "kid": "a", "n": n2048, "e": "Aw"}),
                Some("rsa_exponent"),
            ),
            (
                json!({"kty": "RSA", "kid": "a", "n": n2048, "e": "AQ"}),
                Some("rsa_exponent"),
            ),
            (
                json!({"kty": "RSA", "kid": "a", "n": n2048, "e": "AAEAAQ"}),
                Some("rsa_exponent"),
            ),
            (
                json!({"kty": "RSA", "kid": "a", "n": n2048, "e": "AQAD"}),
                Some("rsa_exponent"),
            ),
            (
                json!({"kty": "RSA", "kid": "a", "n": n2048, "e": "AQAB="}),
                Some("rsa_exponent"),
            ),
            (
                json!({"kty": "RSA", "kid": "a", "n": n2048}),
                Some("rsa_exponent"),
            ),
            (
                json!({"kty": "RSA", "kid": "a", "n": n2048, "e": 65537}),
                Some("rsa_exponent"),
            ),
            (
                json!({"kty": "RSA", "kid": "a", "n": n2048, "e": "AQAB"}),
                None,
            ),
            (
                json!({"kty": "RSA", "kid": "a", "n": n1024, "e": "AQAB"}),
                Some("weak_rsa"),
            ),
            (
                json!({"kty": "oct", "kid": "a", "k": "c2VjcmV0"}),
                Some("symmetric"),
            ),
            (
                json!({"kty": "RSA", "kid": "a", "n": n2048, "e": "AQAB", "d": "x"}),
                Some("private_key"),
            ),
            (
                json!({"kty": "RSA", "kid": "a", "n": n2048, "e": "AQAB", "use": "enc"}),
                Some("not_for_signing"),
            ),
            (
                json!({"kty": "RSA", "kid": "a", "n": n2048, "e": "AQAB", "key_ops": ["encrypt"]}),
                Some("not_for_signing"),
            ),
            (
                json!({"kty": "RSA", "n": n2048, "e": "AQAB"}),
                Some("no_kid"),
            ),
            (
                json!({"kty": "RSA", "kid": "a", "n": n2048, "e": "AQAB", "alg": "RS512"}),
                Some("alg_not_allowed"),
            ),
            (
                json!({"kty": "RSA", "kid": "a", "n": n2048, "e": "AQAB", "alg": "ES256"}),
                Some("alg_not_allowed"),
            ),
            (
                json!({"kty": "EC", "kid": "a", "crv": "secp256k1", "x": "x", "y": "y"}),
                Some("unsupported_curve"),
            ),
            (
                json!({"kty": "OKP", "kid": "a", "crv": "Ed25519", "x": "x"}),
                Some("unsupported_key_type"),
            ),
        ];
        for (jwk, expected) in cases {
            assert_eq!(rejection(&jwk, &allowed), expected, "{jwk}");
        }
    }

    #[test]
    fn thumbprints_follow_rfc_7638() {
        // RFC 7638 §3.1.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let rfc = json!({"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"});
        assert_eq!(
            thumbprint(&rfc).as_deref(),
            Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
        );
        // Optional members do not count; the key material does.
        let renamed = json!({"kty": "RSA", "n": n, "e": "AQAB", "kid": "other", "use": "sig"});
        assert_eq!(thumbprint(&renamed), thumbprint(&rfc));
        let other = json!({"kty": "RSA", "n": n.replacen('0', "1", 1), "e": "AQAB"});
        assert_ne!(thumbprint(&other), thumbprint(&rfc));
        let ec = json!({"kty": "EC", "crv": "P-256", "x": "ab", "y": "cd"});
        let ec_moved = json!({"kty": "EC", "crv": "P-256", "x": "cd", "y": "ab"});
        assert!(thumbprint(&ec).is_some() && thumbprint(&ec) != thumbprint(&ec_moved));
        assert_eq!(thumbprint(&json!({"kty": "RSA", "n": n})), None);
        assert_eq!(thumbprint(&json!({"kty": "oct", "k": "AA"})), None);
    }

    #[test]
    fn modulus_bits_are_counted_exactly() {
        assert_eq!(modulus_bits(&[]), 0);
        assert_eq!(modulus_bits(&[0, 0]), 0);
        assert_eq!(modulus_bits(&[1]), 1);
        assert_eq!(modulus_bits(&[0, 0x80, 0]), 16);
        assert_eq!(modulus_bits(&[0x7F, 0xFF]), 15);
    }

    #[test]
    fn cache_control_max_age() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::CACHE_CONTROL,
            "public, max-age=3600, must-revalidate".parse().unwrap(),
        );
        assert_eq!(max_age(&h), Some(Duration::from_secs(3600)));
        h.insert(http::header::CACHE_CONTROL, "no-store".parse().unwrap());
        assert_eq!(max_age(&h), None);
    }
}

//! DPoP (RFC 9449): the resource server's checks of the proof that binds an access token to the
//! client's key. Every request's proof is checked (only the token's own verification is cached):
//! one compact JWS in one `DPoP` header, `typ: dpop+jwt`, an asymmetric `alg` the issuer allows, a
//! public `jwk` that verifies the signature, `htm` and `htu` naming this request as the client
//! addressed it, a fresh `iat`, an `ath` hashing the presented token, the token's `cnf.jkt`
//! naming the proof key, optionally a nonce vakt handed out, and a `jti` never seen before.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use aws_lc_rs::{constant_time, digest, hmac, signature};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::Method;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::alg::Alg;
use super::error::TokenError;
use super::jws::{decode_segment, parse_object};
use crate::serde_helpers::de_duration;

/// The proof header's media type (RFC 9449 §4.2), compared exactly.
pub const PROOF_TYPE: &str = "dpop+jwt";
/// Every proof algorithm vakt can check, for challenges that name no issuer.
pub const SUPPORTED_PROOF_ALGS: &str = "ES256 ES384 PS256 PS384 PS512 RS256 RS384 RS512";
/// Header parameters a proof may carry; anything else (`kid`, `jku`, `x5c`, `crit`, ...) is
/// refused: the key is the `jwk`, and nothing else may point at one.
const PROOF_HEADER_ALLOW_LIST: &[&str] = &["typ", "alg", "jwk"];
/// JWK members that belong to a private or symmetric key (RFC 7518 §6.2.2, §6.3.2, §6.4).
const PRIVATE_JWK_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];
/// Longest accepted `jti`, in bytes.
const MAX_JTI_BYTES: usize = 256;
/// Replay-cache shards, so concurrent requests rarely wait on one lock.
const REPLAY_SHARDS: usize = 16;

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// `oidc.dpop`: what every issuer's DPoP proofs are checked against.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpopConfig {
    /// The base URL (or URLs) clients address this service by, e.g. `https://api.example.no`
    /// behind an ingress, or `http://journal.helse.svc` inside the mesh; with a path prefix when
    /// the ingress strips one. A proof's `htu` must be one of them followed by the request path.
    #[serde(default, deserialize_with = "one_or_many")]
    pub public_url: Vec<String>,
    /// How far a proof's `iat` may lie from now, either way (plus the issuer's leeway).
    #[serde(default = "defaults::proof_window", deserialize_with = "de_duration")]
    pub proof_window: Duration,
    /// Most proof ids (`jti`) remembered against replay. When it is full of live entries, DPoP
    /// requests are refused (503) rather than let a replay through.
    #[serde(default = "defaults::replay_cache")]
    pub replay_cache: usize,
    /// The secret nonces are made with (at least 32 bytes). Replicas sharing it accept each
    /// other's nonces; without it each process draws its own.
    #[serde(default)]
    pub nonce_secret_file: Option<PathBuf>,
    /// How long a nonce vakt hands out stays good (it is accepted for up to twice this).
    #[serde(default = "defaults::nonce_lifetime", deserialize_with = "de_duration")]
    pub nonce_lifetime: Duration,
}

impl Default for DpopConfig {
    fn default() -> Self {
        Self {
            public_url: Vec::new(),
            proof_window: defaults::proof_window(),
            replay_cache: defaults::replay_cache(),
            nonce_secret_file: None,
            nonce_lifetime: defaults::nonce_lifetime(),
        }
    }
}

/// An issuer's `dpop:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerDpop {
    /// Refuse this issuer's tokens presented as Bearer. Default: on for the HelseID profile,
    /// off for the others (their DPoP tokens are still verified as DPoP).
    #[serde(default)]
    pub required: Option<bool>,
    /// Algorithms accepted for proofs (never `none` or HMAC).
    #[serde(default = "defaults::proof_algorithms")]
    pub algorithms: Vec<Alg>,
    /// Proofs must carry a nonce vakt handed out (`DPoP-Nonce`).
    #[serde(default)]
    pub require_nonce: bool,
    /// Base URLs for this issuer's proofs, instead of `oidc.dpop.public_url`.
    #[serde(default, deserialize_with = "one_or_many")]
    pub public_url: Vec<String>,
}

impl Default for IssuerDpop {
    fn default() -> Self {
        Self {
            required: None,
            algorithms: defaults::proof_algorithms(),
            require_nonce: false,
            public_url: Vec::new(),
        }
    }
}

mod defaults {
    use super::Alg;
    use std::time::Duration;
    pub fn proof_window() -> Duration {
        Duration::from_secs(60)
    }
    pub fn replay_cache() -> usize {
        100_000
    }
    pub fn nonce_lifetime() -> Duration {
        Duration::from_secs(300)
    }
    pub fn proof_algorithms() -> Vec<Alg> {
        Alg::ALL.to_vec()
    }
}

impl DpopConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (i, url) in self.public_url.iter().enumerate() {
            PublicUrl::parse(url).map_err(|e| (format!("oidc.dpop.public_url[{i}]"), e))?;
        }
        if self.proof_window.is_zero() || self.proof_window > Duration::from_secs(600) {
            return Err((
                "oidc.dpop.proof_window".into(),
                "must be between 1s and 10m".into(),
            ));
        }
        if self.replay_cache < 1000 {
            return Err((
                "oidc.dpop.replay_cache".into(),
                "must be at least 1000".into(),
            ));
        }
        if self.nonce_lifetime < Duration::from_secs(10) {
            return Err((
                "oidc.dpop.nonce_lifetime".into(),
                "must be at least 10s".into(),
            ));
        }
        Ok(())
    }
}

impl IssuerDpop {
    /// Whether Bearer presentation is refused for an issuer of `profile`.
    pub fn required(&self, profile: super::Profile) -> bool {
        self.required.unwrap_or(profile == super::Profile::Helseid)
    }

    pub fn validate(&self, at: &str) -> Result<(), (String, String)> {
        if self.algorithms.is_empty() {
            return Err((
                format!("{at}.dpop.algorithms"),
                "empty; no proof could ever verify".into(),
            ));
        }
        for (i, url) in self.public_url.iter().enumerate() {
            PublicUrl::parse(url).map_err(|e| (format!("{at}.dpop.public_url[{i}]"), e))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The URI the client addressed
// ---------------------------------------------------------------------------------------------

/// A URL in the form proofs are compared in (RFC 3986 §6.2.2 and §6.2.3): scheme and host in
/// lower case, the scheme's default port dropped, percent-encoding normalised, dot segments
/// removed. A base URL keeps its path as a prefix without a trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    origin: String,
    prefix: String,
}

/// `uri` split into its normalised origin (`scheme://authority`) and path, refusing userinfo,
/// queries and fragments.
fn normalised_parts(uri: &str) -> Result<(String, String), String> {
    if uri.contains('#') {
        return Err("has a fragment".into());
    }
    let parsed: http::Uri = uri.parse().map_err(|_| "is not a URL".to_owned())?;
    let scheme = parsed
        .scheme_str()
        .map(str::to_ascii_lowercase)
        .ok_or("has no scheme")?;
    let default_port = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        _ => return Err("must be http or https".into()),
    };
    let authority = parsed.authority().ok_or("has no host")?;
    if authority.as_str().contains('@') {
        return Err("has userinfo".into());
    }
    if parsed.query().is_some() {
        return Err("has a query".into());
    }
    let host = authority.host().to_ascii_lowercase();
    if host.is_empty() {
        return Err("has no host".into());
    }
    let origin = match authority.port_u16() {
        Some(port) if port != default_port => format!("{scheme}://{host}:{port}"),
        _ if authority.as_str().ends_with(':') => return Err("has an empty port".into()),
        _ => format!("{scheme}://{host}"),
    };
    Ok((origin, normalise_path(parsed.path())))
}

impl PublicUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let (origin, path) = normalised_parts(url).map_err(|e| format!("\"{url}\" {e}"))?;
        let prefix = path.trim_end_matches('/').to_owned();
        Ok(Self { origin, prefix })
    }

    /// Does the normalised `htu` name `path` under this base?
    fn matches(&self, htu_origin: &str, htu_path: &str, request_path: &str) -> bool {
        htu_origin == self.origin
            && htu_path.len() == self.prefix.len() + request_path.len()
            && htu_path.starts_with(&self.prefix)
            && htu_path[self.prefix.len()..] == *request_path
    }
}

impl std::fmt::Display for PublicUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.origin, self.prefix)
    }
}

/// RFC 3986 §6.2.2 on a path: percent-escapes of unreserved characters decoded, the others in
/// upper case; dot segments removed (§5.2.4); an empty path is `/`.
pub fn normalise_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            let byte = h << 4 | l;
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                decoded.push(byte as char);
            } else {
                decoded.push('%');
                decoded.push(bytes[i + 1].to_ascii_uppercase() as char);
                decoded.push(bytes[i + 2].to_ascii_uppercase() as char);
            }
            i += 3;
            continue;
        }
        // Byte-wise copy keeps multi-byte characters intact (only ASCII is ever inspected).
        let start = i;
        i += 1;
        while i < bytes.len() && bytes[i] != b'%' {
            i += 1;
        }
        decoded.push_str(&path[start..i]);
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (index, segment) in segments.iter().enumerate().skip(1) {
        match *segment {
            "." | ".." => {
                if *segment == ".." {
                    out.pop();
                }
                // A dot segment at the end leaves a directory: `/a/b/..` is `/a/`.
                if index == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut normal = String::with_capacity(decoded.len().max(1));
    for segment in &out {
        normal.push('/');
        normal.push_str(segment);
    }
    if normal.is_empty() {
        normal.push('/');
    }
    normal
}

// ---------------------------------------------------------------------------------------------
// The proof key
// ---------------------------------------------------------------------------------------------

enum ProofKey {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Ec { p384: bool, point: Vec<u8> },
}

fn jwk_str<'a>(jwk: &'a serde_json::Map<String, Value>, name: &str) -> Result<&'a str, TokenError> {
    jwk.get(name)
        .and_then(Value::as_str)
        .ok_or(TokenError::DpopBadKey)
}

/// RFC 7638 thumbprint: base64url(SHA-256) of the required members in lexicographic order,
/// without whitespace. The members are canonical base64url or fixed names, so no escaping.
pub fn thumbprint(canonical_json: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical_json.as_bytes()))
}

/// The proof's public key and its thumbprint, from the `jwk` header parameter.
fn proof_key(jwk: &Value) -> Result<(ProofKey, String), TokenError> {
    let jwk = jwk.as_object().ok_or(TokenError::DpopBadKey)?;
    if PRIVATE_JWK_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
        return Err(TokenError::DpopPrivateKey);
    }
    let member = |name| -> Result<(&str, Vec<u8>), TokenError> {
        let text = jwk_str(jwk, name)?;
        let bytes = decode_segment(text).map_err(|_| TokenError::DpopBadKey)?;
        Ok((text, bytes))
    };
    match jwk_str(jwk, "kty")? {
        "RSA" => {
            let (n_text, n) = member("n")?;
            let (e_text, e) = member("e")?;
            // A leading zero byte is not the minimal encoding RFC 7518 §6.3.1 asks for.
            if n.first().is_none_or(|b| *b == 0) || e.first().is_none_or(|b| *b == 0) {
                return Err(TokenError::DpopBadKey);
            }
            let thumb = thumbprint(&format!(r#"{{"e":"{e_text}","kty":"RSA","n":"{n_text}"}}"#));
            Ok((ProofKey::Rsa { n, e }, thumb))
        }
        "EC" => {
            let crv = jwk_str(jwk, "crv")?;
            let size = match crv {
                "P-256" => 32,
                "P-384" => 48,
                _ => return Err(TokenError::DpopBadKey),
            };
            let (x_text, x) = member("x")?;
            let (y_text, y) = member("y")?;
            if x.len() != size || y.len() != size {
                return Err(TokenError::DpopBadKey);
            }
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let thumb = thumbprint(&format!(
                r#"{{"crv":"{crv}","kty":"EC","x":"{x_text}","y":"{y_text}"}}"#
            ));
            Ok((
                ProofKey::Ec {
                    p384: size == 48,
                    point,
                },
                thumb,
            ))
        }
        "oct" => Err(TokenError::DpopPrivateKey),
        _ => Err(TokenError::DpopBadKey),
    }
}

impl ProofKey {
    /// Checks the signature of `signing_input` under this key as `alg`.
    fn verify(&self, alg: Alg, signing_input: &[u8], sig: &[u8]) -> Result<(), TokenError> {
        let rsa: &signature::RsaParameters = match alg {
            Alg::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Alg::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Alg::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Alg::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
            Alg::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
            Alg::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
            Alg::ES256 | Alg::ES384 => {
                let (ProofKey::Ec { p384, point }, ec_alg) = (self, alg) else {
                    return Err(TokenError::DpopKeyAlgMismatch);
                };
                let verifier: &dyn signature::VerificationAlgorithm = match (ec_alg, p384) {
                    (Alg::ES256, false) => &signature::ECDSA_P256_SHA256_FIXED,
                    (Alg::ES384, true) => &signature::ECDSA_P384_SHA384_FIXED,
                    _ => return Err(TokenError::DpopKeyAlgMismatch),
                };
                return signature::UnparsedPublicKey::new(verifier, point)
                    .verify(signing_input, sig)
                    .map_err(|_| TokenError::DpopBadSignature);
            }
        };
        let ProofKey::Rsa { n, e } = self else {
            return Err(TokenError::DpopKeyAlgMismatch);
        };
        signature::RsaPublicKeyComponents { n, e }
            .verify(rsa, signing_input, sig)
            .map_err(|_| TokenError::DpopBadSignature)
    }
}

// ---------------------------------------------------------------------------------------------
// Replay cache
// ---------------------------------------------------------------------------------------------

struct ReplayShard {
    seen: HashSet<u64>,
    /// Entries by expiry (unix seconds); expiries pushed never decrease, so the oldest is at the
    /// front.
    order: VecDeque<(u32, u64)>,
}

/// Proof ids seen while their proofs could still be accepted, bounded: full of live entries, it
/// refuses (fail closed) instead of forgetting one. An entry is a 64-bit hash of key thumbprint
/// and `jti` and a 32-bit expiry (`cargo bench --bench memory` counts the bytes); two different
/// proofs share an id with a chance of n/2^64 among n live ones, and the later one is refused.
pub struct ReplayCache {
    shards: Box<[Mutex<ReplayShard>]>,
    per_shard: usize,
}

impl ReplayCache {
    pub fn new(capacity: usize) -> Self {
        let shards = (0..REPLAY_SHARDS)
            .map(|_| {
                Mutex::new(ReplayShard {
                    seen: HashSet::new(),
                    order: VecDeque::new(),
                })
            })
            .collect();
        Self {
            shards,
            per_shard: capacity.div_ceil(REPLAY_SHARDS).max(1),
        }
    }

    /// Remembers `id` until `expires` (unix seconds); refuses one already remembered.
    pub fn insert(&self, id: u64, now: i64, expires: i64) -> Result<(), TokenError> {
        let clamp = |t: i64| u32::try_from(t.max(0)).unwrap_or(u32::MAX);
        let (now, expires) = (clamp(now), clamp(expires));
        let shard = &self.shards[(id % REPLAY_SHARDS as u64) as usize];
        let mut shard = shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(&(at, old)) = shard.order.front()
            && at < now
        {
            shard.order.pop_front();
            shard.seen.remove(&old);
        }
        if shard.seen.contains(&id) {
            return Err(TokenError::DpopReplayed);
        }
        if shard.seen.len() >= self.per_shard {
            return Err(TokenError::DpopReplayCacheFull);
        }
        let expires = shard
            .order
            .back()
            .map_or(expires, |&(at, _)| at.max(expires));
        shard.seen.insert(id);
        shard.order.push_back((expires, id));
        Ok(())
    }

    /// Ids remembered now (including expired ones not yet swept by an insert).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.seen.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.per_shard * REPLAY_SHARDS
    }
}

// ---------------------------------------------------------------------------------------------
// Nonces
// ---------------------------------------------------------------------------------------------

/// Stateless nonces: `base64url(slot (8 bytes, big-endian) || HMAC(secret, slot)[..16])`, the
/// slot being the time divided by the lifetime. Any replica with the same secret makes and
/// accepts the same nonces; the current and the previous slot are accepted.
pub struct Nonces {
    key: hmac::Key,
    lifetime_secs: u64,
}

/// How a proof's nonce stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceState {
    Current,
    /// Still accepted; the response carries the current one.
    Previous,
}

impl Nonces {
    pub fn new(secret: &[u8], lifetime: Duration) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            lifetime_secs: lifetime.as_secs().max(1),
        }
    }

    /// A random secret, for a single process.
    pub fn random(lifetime: Duration) -> Self {
        let mut secret = [0u8; 32];
        aws_lc_rs::rand::fill(&mut secret).expect("the system random source works");
        Self::new(&secret, lifetime)
    }

    fn slot(&self, now: i64) -> u64 {
        u64::try_from(now).unwrap_or(0) / self.lifetime_secs
    }

    fn make(&self, slot: u64) -> String {
        let mut raw = [0u8; 24];
        raw[..8].copy_from_slice(&slot.to_be_bytes());
        let tag = hmac::sign(&self.key, &raw[..8]);
        raw[8..].copy_from_slice(&tag.as_ref()[..16]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    pub fn current(&self, now: i64) -> String {
        self.make(self.slot(now))
    }

    pub fn check(&self, nonce: &str, now: i64) -> Option<NonceState> {
        let raw = URL_SAFE_NO_PAD.decode(nonce).ok()?;
        let slot = u64::from_be_bytes(raw.get(..8)?.try_into().ok()?);
        let state = match self.slot(now).checked_sub(slot)? {
            0 => NonceState::Current,
            1 => NonceState::Previous,
            _ => return None,
        };
        let expected = URL_SAFE_NO_PAD.decode(self.make(slot)).ok()?;
        constant_time::verify_slices_are_equal(&raw, &expected).ok()?;
        Some(state)
    }
}

// ---------------------------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------------------------

/// An issuer's proof rules, resolved from its config and the service's.
pub struct IssuerProofRules {
    pub required: bool,
    pub algorithms: Vec<Alg>,
    pub require_nonce: bool,
    pub public_urls: Vec<PublicUrl>,
    pub leeway_secs: i64,
}

impl IssuerProofRules {
    pub fn new(issuer: &super::IssuerConfig, service: &DpopConfig) -> Self {
        let urls = if issuer.dpop.public_url.is_empty() {
            &service.public_url
        } else {
            &issuer.dpop.public_url
        };
        Self {
            required: issuer.dpop.required(issuer.profile),
            algorithms: issuer.dpop.algorithms.clone(),
            require_nonce: issuer.dpop.require_nonce,
            public_urls: urls
                .iter()
                .filter_map(|u| PublicUrl::parse(u).ok())
                .collect(),
            leeway_secs: issuer.leeway.as_secs() as i64,
        }
    }
}

/// What the request says, for the proof to be compared with.
pub struct ProofContext<'a> {
    pub method: &'a Method,
    /// The request path as received (without the query).
    pub path: &'a str,
    /// The presented access token.
    pub token: &'a str,
    /// The token's `cnf.jkt`.
    pub token_jkt: &'a str,
    pub now: i64,
}

/// A proof that passed: a fresh nonce to hand out when the proof used the previous one.
#[derive(Debug, Default)]
pub struct ProofAccepted {
    pub next_nonce: Option<String>,
}

/// The service's proof checker: window, replay cache and nonces shared by every issuer.
pub struct ProofChecker {
    window_secs: i64,
    replay: ReplayCache,
    nonces: Nonces,
}

impl ProofChecker {
    pub fn new(config: &DpopConfig, nonce_secret: Option<&[u8]>) -> Self {
        Self {
            window_secs: config.proof_window.as_secs() as i64,
            replay: ReplayCache::new(config.replay_cache),
            nonces: match nonce_secret {
                Some(secret) => Nonces::new(secret, config.nonce_lifetime),
                None => Nonces::random(config.nonce_lifetime),
            },
        }
    }

    pub fn current_nonce(&self, now: i64) -> String {
        self.nonces.current(now)
    }

    pub fn replay_entries(&self) -> usize {
        self.replay.len()
    }

    pub fn replay_capacity(&self) -> usize {
        self.replay.capacity()
    }

    /// All of RFC 9449 §4.3 for one proof, in an order that spends no replay-cache entry on a
    /// proof that fails any other check.
    pub fn check(
        &self,
        proof: &str,
        rules: &IssuerProofRules,
        request: &ProofContext<'_>,
    ) -> Result<ProofAccepted, TokenError> {
        let parts: Vec<&str> = proof.split('.').collect();
        let [header_b64, payload_b64, signature_b64] = parts.as_slice() else {
            return Err(TokenError::DpopMalformed);
        };
        let header = decode_segment(header_b64).map_err(|_| TokenError::DpopMalformed)?;
        let payload = decode_segment(payload_b64).map_err(|_| TokenError::DpopMalformed)?;
        let header = parse_object(&header).map_err(|_| TokenError::DpopMalformed)?;
        let claims = parse_object(&payload).map_err(|_| TokenError::DpopMalformed)?;

        if header.get("typ").and_then(Value::as_str) != Some(PROOF_TYPE) {
            return Err(TokenError::DpopWrongType);
        }
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(Alg::parse)
            .filter(|a| rules.algorithms.contains(a))
            .ok_or(TokenError::DpopAlgNotAllowed)?;
        if header
            .keys()
            .any(|k| !PROOF_HEADER_ALLOW_LIST.contains(&k.as_str()))
        {
            return Err(TokenError::DpopHeaderNotAllowed);
        }
        let (key, jkt) = proof_key(header.get("jwk").ok_or(TokenError::DpopBadKey)?)?;
        // Decoded only now: an `alg: none` proof has an empty signature and is refused above
        // for its algorithm.
        let sig = decode_segment(signature_b64).map_err(|_| TokenError::DpopMalformed)?;
        let signing_input = &proof[..header_b64.len() + 1 + payload_b64.len()];
        key.verify(alg, signing_input.as_bytes(), &sig)?;

        let claim = |name: &str| claims.get(name).and_then(Value::as_str);
        let (Some(jti), Some(htm), Some(htu), Some(iat)) = (
            claim("jti"),
            claim("htm"),
            claim("htu"),
            claims.get("iat").and_then(Value::as_i64),
        ) else {
            return Err(TokenError::DpopMissingClaim);
        };
        if jti.is_empty() || jti.len() > MAX_JTI_BYTES {
            return Err(TokenError::DpopMissingClaim);
        }
        if htm != request.method.as_str() {
            return Err(TokenError::DpopWrongMethod);
        }
        if rules.public_urls.is_empty() {
            return Err(TokenError::DpopPublicUrlUnknown);
        }
        let (htu_origin, htu_path) = normalised_parts(htu).map_err(|_| TokenError::DpopWrongUri)?;
        let request_path = normalise_path(request.path);
        if !rules
            .public_urls
            .iter()
            .any(|base| base.matches(&htu_origin, &htu_path, &request_path))
        {
            return Err(TokenError::DpopWrongUri);
        }
        let slack = self.window_secs + rules.leeway_secs;
        if request.now - iat > slack {
            return Err(TokenError::DpopProofExpired);
        }
        if iat - request.now > slack {
            return Err(TokenError::DpopProofInFuture);
        }
        let ath = claim("ath").ok_or(TokenError::DpopMissingClaim)?;
        let expected_ath =
            URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, request.token.as_bytes()));
        if ath != expected_ath {
            return Err(TokenError::DpopWrongAth);
        }
        if jkt != request.token_jkt {
            return Err(TokenError::DpopKeyMismatch);
        }
        let mut accepted = ProofAccepted::default();
        if rules.require_nonce {
            let nonce = claim("nonce").ok_or(TokenError::DpopNonceRequired)?;
            match self.nonces.check(nonce, request.now) {
                Some(NonceState::Current) => {}
                Some(NonceState::Previous) => {
                    accepted.next_nonce = Some(self.nonces.current(request.now));
                }
                None => return Err(TokenError::DpopNonceInvalid),
            }
        }
        // The id is the proof key's and the jti's: another key's jti is another proof.
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(jkt.as_bytes());
        ctx.update(&[0]);
        ctx.update(jti.as_bytes());
        let id = u64::from_be_bytes(
            ctx.finish().as_ref()[..8]
                .try_into()
                .expect("a SHA-256 digest has 8 bytes to spare"),
        );
        // Kept while a proof with this iat could still be accepted.
        self.replay
            .insert(id, request.now, iat.max(request.now) + slack)?;
        Ok(accepted)
    }
}

/// The `WWW-Authenticate` challenge for a refusal of a DPoP request (RFC 9449 §7.1), and
/// whether a fresh nonce goes with it.
pub fn challenge(error: TokenError, algs: &str) -> (String, bool) {
    match error {
        TokenError::DpopNonceRequired | TokenError::DpopNonceInvalid => (
            r#"DPoP error="use_dpop_nonce", error_description="Resource server requires nonce in DPoP proof""#
                .to_owned(),
            true,
        ),
        e if e.is_proof_error() => (
            format!(r#"DPoP error="invalid_dpop_proof", algs="{algs}""#),
            false,
        ),
        _ => (format!(r#"DPoP error="invalid_token", algs="{algs}""#), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise_as_rfc_3986_section_6_2_2_says() {
        for (raw, normal) in [
            ("", "/"),
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/%7Eb", "/a/~b"),
            ("/a/%7eb", "/a/~b"),
            ("/a%2fb", "/a%2Fb"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/", "/a/b/"),
            ("/%41", "/A"),
            ("/æ", "/æ"),
            ("/%", "/%"),
        ] {
            assert_eq!(normalise_path(raw), normal, "{raw}");
        }
    }

    #[test]
    fn public_urls_parse_to_their_normal_form_and_bad_ones_say_why() {
        let u = PublicUrl::parse("HTTPS://API.Example.NO:443/Base/").unwrap();
        assert_eq!(u.to_string(), "https://api.example.no/Base");
        let u = PublicUrl::parse("http://journal.helse.svc:8080").unwrap();
        assert_eq!(u.to_string(), "http://journal.helse.svc:8080");
        for (bad, why) in [
            ("ftp://x", "must be http or https"),
            ("https://x/?a=1", "has a query"),
            ("https://x/#f", "has a fragment"),
            ("https://u@x/", "has userinfo"),
            ("/relative", "has no scheme"),
        ] {
            let err = PublicUrl::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn htu_matches_base_plus_path_only() {
        let base = PublicUrl::parse("https://api.example.no/journal").unwrap();
        let m = |htu: &str, path: &str| {
            normalised_parts(htu).is_ok_and(|(o, p)| base.matches(&o, &p, &normalise_path(path)))
        };
        assert!(m("https://api.example.no/journal/records/1", "/records/1"));
        assert!(m(
            "https://API.example.no:443/journal/records/%31",
            "/records/1"
        ));
        assert!(!m(
            "https://api.example.no/journal/records/1/",
            "/records/1"
        ));
        assert!(!m("https://api.example.no/Journal/records/1", "/records/1"));
        assert!(!m("http://api.example.no/journal/records/1", "/records/1"));
        assert!(!m(
            "https://api.example.no:8443/journal/records/1",
            "/records/1"
        ));
        assert!(!m(
            "https://api.example.no/journal/records/1?x=1",
            "/records/1"
        ));
        assert!(!m(
            "https://api.example.no/journal/records/1#f",
            "/records/1"
        ));
        assert!(!m("https://api.example.no/journalrecords/1", "records/1"));
    }

    #[test]
    fn replay_cache_refuses_a_seen_id_forgets_expired_ones_and_fails_closed_when_full() {
        let cache = ReplayCache::new(REPLAY_SHARDS * 2);
        cache.insert(1, 100, 160).unwrap();
        assert_eq!(cache.insert(1, 120, 180), Err(TokenError::DpopReplayed));
        // Same shard (ids equal modulo the shard count): two fit, the third is refused.
        let step = REPLAY_SHARDS as u64;
        cache.insert(1 + step, 120, 180).unwrap();
        assert_eq!(
            cache.insert(1 + 2 * step, 120, 180),
            Err(TokenError::DpopReplayCacheFull)
        );
        // Once the first has expired, its place is free again and it is forgotten.
        cache.insert(1 + 2 * step, 161, 221).unwrap();
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.capacity(), REPLAY_SHARDS * 2);
        // The capacity asked for is rounded up to whole shards.
        assert_eq!(ReplayCache::new(1000).capacity(), 1008);
    }

    #[test]
    fn nonces_are_accepted_for_their_slot_and_the_next_and_forged_ones_never() {
        let n = Nonces::new(&[7; 32], Duration::from_secs(300));
        let now = 1_800_000_000;
        let nonce = n.current(now);
        assert_eq!(n.check(&nonce, now), Some(NonceState::Current));
        assert_eq!(n.check(&nonce, now + 300), Some(NonceState::Previous));
        assert_eq!(n.check(&nonce, now + 600), None);
        let other = Nonces::new(&[8; 32], Duration::from_secs(300));
        assert_eq!(other.check(&nonce, now), None);
        assert_eq!(n.check("", now), None);
        assert_eq!(n.check("not base64 !", now), None);
        // Another replica with the same secret agrees.
        let replica = Nonces::new(&[7; 32], Duration::from_secs(300));
        assert_eq!(replica.current(now), nonce);
    }

    #[test]
    fn thumbprints_match_rfc_7638_section_3_1() {
        let jwk = serde_json::json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        let (_, thumb) = proof_key(&jwk).unwrap();
        assert_eq!(thumb, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn private_and_symmetric_keys_are_refused_as_such() {
        for jwk in [
            serde_json::json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "d": "AA"}),
            serde_json::json!({"kty": "RSA", "n": "AQAB", "e": "AQAB", "p": "AQ"}),
            serde_json::json!({"kty": "oct", "k": "c2VjcmV0"}),
        ] {
            assert_eq!(proof_key(&jwk).err(), Some(TokenError::DpopPrivateKey));
        }
        assert_eq!(
            proof_key(&serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": "AA"})).err(),
            Some(TokenError::DpopBadKey)
        );
        assert_eq!(
            proof_key(&serde_json::json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}))
                .err(),
            Some(TokenError::DpopBadKey)
        );
    }
}

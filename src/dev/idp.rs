//! Development OpenID Connect issuer: **for tests, `vakt demo` and developers only — NOT for
//! production.** It listens on loopback only, over plain HTTP, keeps its private keys as files in
//! a directory, signs whatever claims it is given and has switches (`set_down`, extra JWKs, kid
//! overrides, arbitrary header parameters) whose only purpose is to craft bad tokens and failing
//! key servers for the verifier's tests.
//!
//! Pieces:
//! - [`KeyStore`]: signing keys in a directory (`<kid>.<alg>.pk8`, PKCS#8 DER, mode 0600, plus a
//!   `current` file naming the active kid per algorithm), so separate processes (`serve` and
//!   `mint` CLI calls) share keys and see each other's rotations. One key per algorithm
//!   (RS256, PS256, ES256) is created on first use; [`KeyStore::rotate`] makes a new key current
//!   while the previous one stays published (BankID-style next/current/previous) until
//!   [`KeyStore::retire`]d.
//! - [`KeyStore::mint`]: compact JWS access tokens signed with aws-lc-rs (RS256 = RSASSA-PKCS1-v1_5
//!   SHA-256, PS256 = RSASSA-PSS SHA-256, ES256 = ECDSA P-256 with fixed-size `r||s`); tokens
//!   verify with `jsonwebtoken` 11 over the published JWKs.
//! - [`claims`]: claim presets with the real claim names of HelseID, BankID, Signicat, ID-porten
//!   (see `docs/OIDC-PROFILES.md` in the shared docs) and a generic profile.
//! - [`DevIdp`]: a hyper server for `<prefix>/.well-known/openid-configuration` and
//!   `<prefix>/jwks`, with test controls (fetch counters, outage, `Cache-Control` max-age, extra
//!   raw JWKs, a JWKS delay).
//! - [`serve_forever`] and [`mint_cli`]: the fronts for the `vakt dev-idp` command.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA256, RSA_PSS_SHA256,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::authn::{Alg, Loa, Profile};

/// Default `Cache-Control: max-age` of the JWKS response, in seconds.
pub const DEFAULT_JWKS_MAX_AGE: u64 = 300;

const CURRENT_FILE: &str = "current";
const LOCK_FILE: &str = ".lock";
const KEY_EXT: &str = "pk8";

/// Errors of the development issuer.
#[derive(Debug, thiserror::Error)]
pub enum DevIdpError {
    /// Reading or writing the key directory failed.
    #[error("dev-idp key store {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Key generation, parsing or signing failed in aws-lc-rs.
    #[error("dev-idp crypto: {0}")]
    Crypto(String),
    /// The `current` file is malformed or names a key that is not there.
    #[error("dev-idp key store: {0}")]
    Store(String),
    /// No key with this kid is published.
    #[error("dev-idp: unknown key id {0:?}")]
    UnknownKid(String),
    /// The current key of an algorithm cannot be retired (rotate first).
    #[error("dev-idp: {0:?} is the current key of its algorithm; rotate before retiring it")]
    RetireCurrent(String),
    /// The claims given to `mint` are not a JSON object.
    #[error("dev-idp: claims must be a JSON object")]
    ClaimsNotObject,
    /// JSON encoding failed.
    #[error("dev-idp json: {0}")]
    Json(#[from] serde_json::Error),
    /// An algorithm, profile or level name was not recognised.
    #[error("dev-idp: unknown {what} {value:?}")]
    Parse {
        /// What was being parsed ("algorithm", "profile", "level").
        what: &'static str,
        /// The input.
        value: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DevIdpError + '_ {
    move |source| DevIdpError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn crypto_err(what: &str) -> impl FnOnce(aws_lc_rs::error::Unspecified) -> DevIdpError + '_ {
    move |_| DevIdpError::Crypto(what.to_string())
}

// ---------------------------------------------------------------------------------------------
// Algorithms, levels, profiles: vakt's own types, and the subset the issuer can sign with
// ---------------------------------------------------------------------------------------------

/// The JWS algorithms the development issuer signs with (RSA-2048 keys for RS256 and PS256).
pub const SIGNING_ALGS: [Alg; 3] = [Alg::RS256, Alg::PS256, Alg::ES256];

fn is_rsa(alg: Alg) -> bool {
    alg.key_type() == "RSA"
}

fn parse_name<T: Copy>(
    what: &'static str,
    value: &str,
    all: &[T],
    name: impl Fn(T) -> &'static str,
) -> Result<T, DevIdpError> {
    all.iter()
        .copied()
        .find(|t| name(*t).eq_ignore_ascii_case(value))
        .ok_or_else(|| DevIdpError::Parse {
            what,
            value: value.to_string(),
        })
}

/// One of [`SIGNING_ALGS`] by its JOSE name, any case.
pub fn parse_alg(s: &str) -> Result<Alg, DevIdpError> {
    parse_name("algorithm", s, &SIGNING_ALGS, Alg::as_str)
}

/// A DPoP proof algorithm by its JOSE name, any case (RS/PS 256–512, ES256, ES384).
pub fn parse_proof_alg(s: &str) -> Result<Alg, DevIdpError> {
    parse_name("algorithm", s, &Alg::ALL, Alg::as_str)
}

/// `low`, `substantial` or `high`.
pub fn parse_level(s: &str) -> Result<Loa, DevIdpError> {
    parse_name(
        "level",
        s,
        &[Loa::Low, Loa::Substantial, Loa::High],
        Loa::as_str,
    )
}

/// A provider profile by its config spelling (`helseid`, `bankid`, ...).
pub fn parse_profile(s: &str) -> Result<Profile, DevIdpError> {
    parse_name("profile", s, &Profile::ALL, Profile::as_str)
}

// ---------------------------------------------------------------------------------------------
// Claim presets
// ---------------------------------------------------------------------------------------------

/// The person (and client) a token is minted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// Subject (`sub`; also BankID's stable `bankid_altsub`).
    pub sub: String,
    /// National identity number (fødselsnummer / D-number), if the token should carry one.
    pub national_id: Option<String>,
    /// Level of assurance.
    pub level: Loa,
    /// Authentication methods (`amr`); omitted when empty.
    pub amr: Vec<String>,
    /// Login time (`auth_time`, seconds since the epoch) for the profiles that carry it.
    pub auth_time: Option<i64>,
    /// The OAuth client (`client_id`, BankID `azp`).
    pub client_id: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// The audience (`aud`).
    pub audience: String,
    /// Organisation number (HelseID `orgnr_parent`).
    pub org_number: Option<String>,
    /// Health personnel number (HelseID `hpr_number`).
    pub hpr_number: Option<String>,
}

impl Default for Person {
    fn default() -> Self {
        Person {
            sub: "dev-user".to_string(),
            national_id: None,
            level: Loa::High,
            amr: vec!["pwd".to_string()],
            auth_time: None,
            client_id: "dev-client".to_string(),
            scopes: Vec::new(),
            audience: "vakt".to_string(),
            org_number: None,
            hpr_number: None,
        }
    }
}

/// Claims as `profile`'s provider names them (see `OIDC-PROFILES.md`). Every profile carries
/// `sub` and `aud`; optional fields of `person` that are `None`/empty are left out. A level a
/// provider has no `acr` for (BankID and ID-porten at `low`) is left out too, which a verifier
/// treats as the lowest level. `iss`, `iat`, `nbf`, `exp` and `jti` are added by
/// [`KeyStore::mint`].
pub fn claims(profile: Profile, person: &Person) -> Value {
    let mut c = Map::new();
    c.insert("sub".into(), json!(person.sub));
    c.insert("aud".into(), json!(person.audience));
    let scope_string = person.scopes.join(" ");
    let amr = || json!(person.amr);
    let has_amr = !person.amr.is_empty();
    match profile {
        Profile::Helseid => {
            c.insert("client_id".into(), json!(person.client_id));
            c.insert("scope".into(), json!(person.scopes));
            let level = match person.level {
                Loa::None => None,
                Loa::Low => Some("2"),
                Loa::Substantial => Some("3"),
                Loa::High => Some("4"),
            };
            if let Some(level) = level {
                c.insert(
                    "helseid://claims/identity/security_level".into(),
                    json!(level),
                );
            }
            if let Some(pid) = &person.national_id {
                c.insert("helseid://claims/identity/pid".into(), json!(pid));
            }
            if let Some(org) = &person.org_number {
                c.insert(
                    "helseid://claims/client/claims/orgnr_parent".into(),
                    json!(org),
                );
            }
            if let Some(hpr) = &person.hpr_number {
                c.insert("helseid://claims/hpr/hpr_number".into(), json!(hpr));
            }
            if has_amr {
                c.insert("amr".into(), amr());
            }
            if let Some(t) = person.auth_time {
                c.insert("auth_time".into(), json!(t));
            }
        }
        Profile::Bankid => {
            // BankID's own `sub` is not stable; `bankid_altsub` is. Both get `person.sub` here.
            c.insert("bankid_altsub".into(), json!(person.sub));
            c.insert("azp".into(), json!(person.client_id));
            c.insert("scope".into(), json!(scope_string));
            match person.level {
                Loa::None | Loa::Low => {}
                Loa::Substantial => {
                    c.insert("acr".into(), json!("urn:bankid:bis;LOA=3"));
                }
                Loa::High => {
                    c.insert("acr".into(), json!("urn:bankid:bid;LOA=4"));
                }
            }
            if let Some(nnin) = &person.national_id {
                c.insert("nnin_altsub".into(), json!(nnin));
            }
            if has_amr {
                c.insert("amr".into(), amr());
            }
            // No auth_time at BankID: verifiers use `iat`.
        }
        Profile::Signicat => {
            c.insert("client_id".into(), json!(person.client_id));
            c.insert("scope".into(), json!(scope_string));
            c.insert("idp".into(), json!("nbid"));
            if person.level != Loa::None {
                c.insert("acr".into(), json!(format!("loa:{}", person.level)));
            }
            if let Some(nin) = &person.national_id {
                c.insert("nin".into(), json!(nin));
                c.insert("nin_type".into(), json!("BIRTH"));
                c.insert("nin_issuing_country".into(), json!("NO"));
            }
            if has_amr {
                c.insert("amr".into(), amr());
            }
            if let Some(t) = person.auth_time {
                c.insert("auth_time".into(), json!(t));
            }
        }
        Profile::Idporten => {
            c.insert("client_id".into(), json!(person.client_id));
            c.insert("scope".into(), json!(scope_string));
            match person.level {
                Loa::None | Loa::Low => {}
                Loa::Substantial => {
                    c.insert("acr".into(), json!("idporten-loa-substantial"));
                }
                Loa::High => {
                    c.insert("acr".into(), json!("idporten-loa-high"));
                }
            }
            if let Some(pid) = &person.national_id {
                c.insert("pid".into(), json!(pid));
            }
            if has_amr {
                c.insert("amr".into(), amr());
            }
        }
        Profile::Generic => {
            c.insert("client_id".into(), json!(person.client_id));
            c.insert("scope".into(), json!(scope_string));
            if person.level != Loa::None {
                c.insert("acr".into(), json!(person.level.as_str()));
            }
            if has_amr {
                c.insert("amr".into(), amr());
            }
            if let Some(t) = person.auth_time {
                c.insert("auth_time".into(), json!(t));
            }
        }
    }
    Value::Object(c)
}

// ---------------------------------------------------------------------------------------------
// Key store
// ---------------------------------------------------------------------------------------------

enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

struct LoadedKey {
    kid: String,
    alg: Alg,
    signer: Signer,
    jwk: Value,
}

impl LoadedKey {
    fn from_pkcs8(kid: &str, alg: Alg, der: &[u8]) -> Result<Self, DevIdpError> {
        let (signer, jwk) = if is_rsa(alg) {
            let kp = RsaKeyPair::from_pkcs8(der)
                .map_err(|e| DevIdpError::Crypto(format!("RSA key {kid}: {e}")))?;
            let public = kp.public_key();
            let jwk = json!({
                "kty": "RSA",
                "kid": kid,
                "use": "sig",
                "alg": alg.as_str(),
                "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
                "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
            });
            (Signer::Rsa(kp), jwk)
        } else {
            let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                .map_err(|e| DevIdpError::Crypto(format!("EC key {kid}: {e}")))?;
            // Uncompressed SEC1 point: 0x04 || x (32) || y (32).
            let point = kp.public_key().as_ref();
            if point.len() != 65 || point[0] != 4 {
                return Err(DevIdpError::Crypto(format!(
                    "EC key {kid}: unexpected public point encoding"
                )));
            }
            let jwk = json!({
                "kty": "EC",
                "kid": kid,
                "use": "sig",
                "alg": alg.as_str(),
                "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            });
            (Signer::Ec(kp), jwk)
        };
        Ok(LoadedKey {
            kid: kid.to_string(),
            alg,
            signer,
            jwk,
        })
    }

    /// Signs `input` as `alg` (which must be of this key's family).
    fn sign(&self, alg: Alg, input: &[u8]) -> Result<Vec<u8>, DevIdpError> {
        let rng = SystemRandom::new();
        match (&self.signer, alg) {
            (Signer::Rsa(kp), Alg::RS256 | Alg::PS256) => {
                let padding = if alg == Alg::RS256 {
                    &RSA_PKCS1_SHA256
                } else {
                    &RSA_PSS_SHA256
                };
                let mut sig = vec![0u8; kp.public_modulus_len()];
                kp.sign(padding, &rng, input, &mut sig)
                    .map_err(crypto_err("RSA signing"))?;
                Ok(sig)
            }
            (Signer::Ec(kp), Alg::ES256) => Ok(kp
                .sign(&rng, input)
                .map_err(crypto_err("ECDSA signing"))?
                .as_ref()
                .to_vec()),
            _ => Err(DevIdpError::Crypto(format!(
                "key {} ({}) cannot sign {alg}",
                self.kid, self.alg
            ))),
        }
    }
}

/// Signing keys kept in a directory, shared by every process that opens the same directory.
///
/// Layout: `<kid>.<ALG>.pk8` (PKCS#8 DER private key, mode 0600; every such file is published)
/// and `current` (JSON object `{"RS256": kid, "PS256": kid, "ES256": kid}`). Writers take an
/// advisory lock on `.lock` and replace files by rename, so readers never see half-written keys.
/// Everything is re-read from the directory on each call; parsed keys are cached by file name
/// (key files are never rewritten: kids are unique).
pub struct KeyStore {
    dir: PathBuf,
    cache: Mutex<HashMap<String, Arc<LoadedKey>>>,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStore").field("dir", &self.dir).finish()
    }
}

/// Options for [`KeyStore::mint`].
#[derive(Debug, Clone)]
pub struct MintOptions {
    /// Signing algorithm; the current key of this algorithm signs unless `kid` names another
    /// stored key of the same family (RSA for RS256/PS256, EC for ES256).
    pub alg: Alg,
    /// Header `typ` (default `at+jwt`); `None` leaves it out.
    pub typ: Option<String>,
    /// Header `kid` override: any string, even an unknown one. If it names a stored key of the
    /// algorithm's family, that key signs (e.g. a previous key after rotation, or an RS256-
    /// published RSA key signing PS256 for a key/algorithm-mismatch test); otherwise the current
    /// key signs and the header simply carries this string.
    pub kid: Option<String>,
    /// Extra header parameters (`jku`, `crit`, `x5u`, ...). Applied last, so they can also
    /// override `alg`, `typ` or `kid` (the signature is still made with `alg`'s key).
    pub extra_header: Map<String, Value>,
    /// `exp` = `iat` + `lifetime` (default 5 minutes).
    pub lifetime: Duration,
    /// `nbf` = now + this many seconds (default: equal to `iat`).
    pub not_before_offset: Option<i64>,
    /// `iat` = now + this many seconds (default 0). A negative offset larger than the lifetime
    /// gives an expired token.
    pub issued_at_offset: Option<i64>,
}

impl Default for MintOptions {
    fn default() -> Self {
        MintOptions {
            alg: Alg::RS256,
            typ: Some("at+jwt".to_string()),
            kid: None,
            extra_header: Map::new(),
            lifetime: Duration::from_secs(300),
            not_before_offset: None,
            issued_at_offset: None,
        }
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn valid_kid_chars(kid: &str) -> bool {
    !kid.is_empty()
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Writes `bytes` to `path` through a temporary file in the same directory (mode 0600) and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DevIdpError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let result = (|| {
        let mut f = opts.open(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

impl KeyStore {
    /// Opens the key directory, creating it (mode 0700) and one key per algorithm if missing.
    pub fn open_or_create(dir: &Path) -> Result<Self, DevIdpError> {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(dir).map_err(io_err(dir))?;
        let store = KeyStore {
            dir: dir.to_path_buf(),
            cache: Mutex::new(HashMap::new()),
        };
        let _lock = store.lock()?;
        let mut current = store.read_current()?;
        let mut changed = false;
        for alg in SIGNING_ALGS {
            let usable = match current.get(alg.as_str()) {
                Some(kid) => store.key_path(kid, alg).is_file(),
                None => false,
            };
            if !usable {
                let kid = store.generate(alg)?;
                current.insert(alg.as_str().to_string(), kid);
                changed = true;
            }
        }
        if changed {
            store.write_current(&current)?;
        }
        Ok(store)
    }

    /// The key directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Generates a new key for `alg`, makes it current and returns its kid. The previous key stays
    /// published until [`retire`](Self::retire)d.
    pub fn rotate(&self, alg: Alg) -> Result<String, DevIdpError> {
        let _lock = self.lock()?;
        let mut current = self.read_current()?;
        let kid = self.generate(alg)?;
        current.insert(alg.as_str().to_string(), kid.clone());
        self.write_current(&current)?;
        Ok(kid)
    }

    /// Removes a key from the published set (deletes its file). The current key of an algorithm
    /// cannot be retired: rotate first.
    pub fn retire(&self, kid: &str) -> Result<(), DevIdpError> {
        let _lock = self.lock()?;
        let current = self.read_current()?;
        if current.values().any(|k| k == kid) {
            return Err(DevIdpError::RetireCurrent(kid.to_string()));
        }
        let mut found = false;
        for (name, k, _) in self.list()? {
            if k == kid {
                let path = self.dir.join(&name);
                match fs::remove_file(&path) {
                    Ok(()) => found = true,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(&path)(e)),
                }
            }
        }
        if found {
            Ok(())
        } else {
            Err(DevIdpError::UnknownKid(kid.to_string()))
        }
    }

    /// The kid of the current key of `alg`.
    pub fn current_kid(&self, alg: Alg) -> Result<String, DevIdpError> {
        self.read_current()?
            .get(alg.as_str())
            .cloned()
            .ok_or_else(|| DevIdpError::Store(format!("no current {alg} key")))
    }

    /// The published keys as `(kid, alg)`, current keys first.
    pub fn published(&self) -> Result<Vec<(String, Alg)>, DevIdpError> {
        let current = self.read_current()?;
        let mut keys: Vec<(String, Alg)> =
            self.list()?.into_iter().map(|(_, k, a)| (k, a)).collect();
        keys.sort_by_key(|(kid, alg)| {
            let is_current = current.get(alg.as_str()) == Some(kid);
            (!is_current, *alg, kid.clone())
        });
        Ok(keys)
    }

    /// The public JWK set (`{"keys": [...]}`) of every published key, re-read from the directory.
    pub fn try_jwks(&self) -> Result<Value, DevIdpError> {
        let mut keys = Vec::new();
        for (kid, alg) in self.published()? {
            match self.load(&kid, alg) {
                Ok(k) => keys.push(k.jwk.clone()),
                // Retired by another process between listing and reading.
                Err(DevIdpError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                }
                Err(e) => return Err(e),
            }
        }
        Ok(json!({ "keys": keys }))
    }

    /// Like [`try_jwks`](Self::try_jwks), but an unreadable directory gives an empty set.
    pub fn jwks(&self) -> Value {
        self.try_jwks()
            .unwrap_or_else(|_| json!({ "keys": Vec::<Value>::new() }))
    }

    /// Mints a compact JWS. `claims` must be an object; `iss` (= `issuer`), `iat`, `nbf`, `exp`
    /// and `jti` are added unless `claims` already has them (a wrong `iss` given in `claims` is
    /// kept). A claim set to `null` in `claims` is removed, so tests can mint tokens without
    /// `exp`, `iss`, ... .
    pub fn mint(
        &self,
        issuer: &str,
        claims: Value,
        opts: &MintOptions,
    ) -> Result<String, DevIdpError> {
        let Value::Object(mut payload) = claims else {
            return Err(DevIdpError::ClaimsNotObject);
        };
        let now = now_secs();
        let iat = now.saturating_add(opts.issued_at_offset.unwrap_or(0));
        let nbf = opts
            .not_before_offset
            .map_or(iat, |off| now.saturating_add(off));
        let lifetime = i64::try_from(opts.lifetime.as_secs()).unwrap_or(i64::MAX);
        let exp = iat.saturating_add(lifetime);
        let defaults = [
            ("iss", json!(issuer)),
            ("iat", json!(iat)),
            ("nbf", json!(nbf)),
            ("exp", json!(exp)),
            ("jti", json!(uuid::Uuid::new_v4().to_string())),
        ];
        for (name, value) in defaults {
            payload.entry(name).or_insert(value);
        }
        payload.retain(|_, v| !v.is_null());

        let key = self.signing_key(opts)?;
        let mut header = Map::new();
        header.insert("alg".into(), json!(opts.alg.as_str()));
        if let Some(typ) = &opts.typ {
            header.insert("typ".into(), json!(typ));
        }
        header.insert(
            "kid".into(),
            json!(opts.kid.clone().unwrap_or_else(|| key.kid.clone())),
        );
        for (k, v) in &opts.extra_header {
            header.insert(k.clone(), v.clone());
        }

        let mut token = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&Value::Object(header))?);
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(&Value::Object(payload))?));
        let sig = key.sign(opts.alg, token.as_bytes())?;
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(sig));
        Ok(token)
    }

    // --- internals -----------------------------------------------------------------------------

    fn signing_key(&self, opts: &MintOptions) -> Result<Arc<LoadedKey>, DevIdpError> {
        if let Some(kid) = opts.kid.as_deref().filter(|k| valid_kid_chars(k)) {
            for alg in SIGNING_ALGS {
                if is_rsa(alg) == is_rsa(opts.alg) && self.key_path(kid, alg).is_file() {
                    return self.load(kid, alg);
                }
            }
        }
        let kid = self.current_kid(opts.alg)?;
        self.load(&kid, opts.alg)
    }

    fn key_path(&self, kid: &str, alg: Alg) -> PathBuf {
        self.dir.join(format!("{kid}.{alg}.{KEY_EXT}"))
    }

    fn lock(&self) -> Result<File, DevIdpError> {
        let path = self.dir.join(LOCK_FILE);
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let f = opts.open(&path).map_err(io_err(&path))?;
        f.lock().map_err(io_err(&path))?;
        Ok(f)
    }

    fn read_current(&self) -> Result<BTreeMap<String, String>, DevIdpError> {
        let path = self.dir.join(CURRENT_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| DevIdpError::Store(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    fn write_current(&self, current: &BTreeMap<String, String>) -> Result<(), DevIdpError> {
        let mut bytes = serde_json::to_vec_pretty(current)?;
        bytes.push(b'\n');
        write_atomic(&self.dir.join(CURRENT_FILE), &bytes)
    }

    /// `(file name, kid, alg)` of every key file.
    fn list(&self) -> Result<Vec<(String, String, Alg)>, DevIdpError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let mut parts = name.rsplitn(3, '.');
            let (Some(ext), Some(alg), Some(kid)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if ext != KEY_EXT || !valid_kid_chars(kid) {
                continue;
            }
            let Ok(alg) = parse_alg(alg) else {
                continue;
            };
            out.push((name.clone(), kid.to_string(), alg));
        }
        Ok(out)
    }

    fn load(&self, kid: &str, alg: Alg) -> Result<Arc<LoadedKey>, DevIdpError> {
        let path = self.key_path(kid, alg);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(k) = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&name)
        {
            return Ok(Arc::clone(k));
        }
        let der = fs::read(&path).map_err(io_err(&path))?;
        let key = Arc::new(LoadedKey::from_pkcs8(kid, alg, &der)?);
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name, Arc::clone(&key));
        Ok(key)
    }

    /// Generates a key for `alg`, writes it and returns its kid (does not change `current`).
    fn generate(&self, alg: Alg) -> Result<String, DevIdpError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let kid = format!("dev-{}-{}", alg.as_str().to_ascii_lowercase(), &id[..12]);
        let der: Vec<u8> = if is_rsa(alg) {
            let kp = RsaKeyPair::generate(KeySize::Rsa2048).map_err(crypto_err("RSA keygen"))?;
            let pkcs8 = kp.as_der().map_err(crypto_err("RSA PKCS#8 encoding"))?;
            pkcs8.as_ref().to_vec()
        } else {
            let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                .map_err(crypto_err("EC keygen"))?;
            let pkcs8 = kp.to_pkcs8v1().map_err(crypto_err("EC PKCS#8 encoding"))?;
            pkcs8.as_ref().to_vec()
        };
        write_atomic(&self.key_path(&kid, alg), &der)?;
        Ok(kid)
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP server
// ---------------------------------------------------------------------------------------------

struct Shared {
    issuer: String,
    prefix: String,
    keys: Arc<KeyStore>,
    jwks_fetches: AtomicUsize,
    discovery_fetches: AtomicUsize,
    down: AtomicBool,
    jwks_max_age: AtomicU64,
    extra_jwks: Mutex<Vec<Value>>,
    jwks_delay: Mutex<Duration>,
}

/// A running development issuer (discovery + JWKS over HTTP on loopback). Dropping it stops the
/// server and its connections.
pub struct DevIdp {
    /// `http://<addr><prefix>`.
    pub issuer: String,
    /// The bound address.
    pub addr: SocketAddr,
    /// The key store it publishes (and mints with).
    pub keys: Arc<KeyStore>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl fmt::Debug for DevIdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevIdp")
            .field("issuer", &self.issuer)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for DevIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn normalise_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else if trimmed.starts_with('/') {
        trimmed.to_string()
    } else {
        format!("/{trimmed}")
    }
}

impl DevIdp {
    /// Binds `listen` (loopback only; port 0 picks a free port) and serves
    /// `<prefix>/.well-known/openid-configuration` and `<prefix>/jwks` from `keys`.
    /// `path_prefix` is e.g. `""` or `"/auth/realms/current"`.
    pub async fn start(
        listen: SocketAddr,
        keys: Arc<KeyStore>,
        path_prefix: &str,
    ) -> io::Result<Self> {
        if !listen.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("dev-idp listens on loopback only, not {listen}"),
            ));
        }
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let prefix = normalise_prefix(path_prefix);
        let issuer = format!("http://{addr}{prefix}");
        let shared = Arc::new(Shared {
            issuer: issuer.clone(),
            prefix,
            keys: Arc::clone(&keys),
            jwks_fetches: AtomicUsize::new(0),
            discovery_fetches: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            jwks_max_age: AtomicU64::new(DEFAULT_JWKS_MAX_AGE),
            extra_jwks: Mutex::new(Vec::new()),
            jwks_delay: Mutex::new(Duration::ZERO),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(DevIdp {
            issuer,
            addr,
            keys,
            shared,
            task,
        })
    }

    /// `<issuer>/jwks`.
    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.issuer)
    }

    /// Requests for the JWKS path so far (counted even while down).
    pub fn jwks_fetches(&self) -> usize {
        self.shared.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Requests for the discovery document so far (counted even while down).
    pub fn discovery_fetches(&self) -> usize {
        self.shared.discovery_fetches.load(Ordering::SeqCst)
    }

    /// While down, every request is answered 503.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// `Cache-Control: max-age` of the JWKS response (default [`DEFAULT_JWKS_MAX_AGE`]).
    pub fn set_jwks_max_age(&self, secs: u64) {
        self.shared.jwks_max_age.store(secs, Ordering::SeqCst);
    }

    /// Raw JWKs appended to the served set as they are (weak, symmetric, private or `use: enc`
    /// keys, for testing that the verifier drops them).
    pub fn set_extra_jwks(&self, jwks: Vec<Value>) {
        *self
            .shared
            .extra_jwks
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = jwks;
    }

    /// Delay before each JWKS response.
    pub fn set_jwks_delay(&self, delay: Duration) {
        *self
            .shared
            .jwks_delay
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = delay;
    }

    /// Mints a token from this issuer (shorthand for `keys.mint(&issuer, ...)`).
    pub fn mint(&self, claims: Value, opts: &MintOptions) -> Result<String, DevIdpError> {
        self.keys.mint(&self.issuer, claims, opts)
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Connection tasks live in the JoinSet: aborting this task drops it and aborts them all.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of file descriptors and the like: back off briefly.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let shared = Arc::clone(&shared);
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        let shared = Arc::clone(&shared);
                        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(CONTENT_TYPE, v);
    }
    resp
}

fn json_response(value: &Value) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(body) => respond(StatusCode::OK, "application/json", body),
        Err(_) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            b"encoding error\n".to_vec(),
        ),
    }
}

/// The discovery document `issuer` publishes: its endpoints under the issuer URL.
pub fn discovery_document(issuer: &str) -> Value {
    json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "PS256", "ES256"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "grant_types_supported": ["authorization_code", "client_credentials"],
    })
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let rest = path.strip_prefix(shared.prefix.as_str());
    let is_discovery = rest == Some("/.well-known/openid-configuration");
    let is_jwks = rest == Some("/jwks");
    if is_discovery {
        shared.discovery_fetches.fetch_add(1, Ordering::SeqCst);
    }
    if is_jwks {
        shared.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    }
    if shared.down.load(Ordering::SeqCst) {
        return respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            b"dev-idp is down\n".to_vec(),
        );
    }
    if !is_discovery && !is_jwks {
        return respond(StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec());
    }
    if req.method() != Method::GET {
        let mut resp = respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            b"GET only\n".to_vec(),
        );
        resp.headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("GET"));
        return resp;
    }
    if is_discovery {
        return json_response(&discovery_document(&shared.issuer));
    }

    let delay = *shared
        .jwks_delay
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut set = match shared.keys.try_jwks() {
        Ok(set) => set,
        Err(e) => {
            return respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("{e}\n").into_bytes(),
            );
        }
    };
    let extra = shared
        .extra_jwks
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    if let Some(Value::Array(keys)) = set.get_mut("keys") {
        keys.extend(extra);
    }
    let mut resp = json_response(&set);
    let max_age = shared.jwks_max_age.load(Ordering::SeqCst);
    if let Ok(v) = HeaderValue::from_str(&format!("max-age={max_age}")) {
        resp.headers_mut().insert(CACHE_CONTROL, v);
    }
    resp
}

// ---------------------------------------------------------------------------------------------
// CLI fronts
// ---------------------------------------------------------------------------------------------

/// `vakt dev-idp serve`: opens (or creates) the key directory, serves discovery and JWKS on
/// `listen` (loopback only), prints `issuer: <url>` on stdout and runs until Ctrl-C.
pub async fn serve_forever(listen: SocketAddr, dir: &Path, prefix: &str) -> io::Result<()> {
    let keys = KeyStore::open_or_create(dir).map_err(io::Error::other)?;
    let idp = DevIdp::start(listen, Arc::new(keys), prefix).await?;
    {
        let mut out = io::stdout().lock();
        writeln!(out, "issuer: {}", idp.issuer)?;
        out.flush()?;
    }
    tokio::signal::ctrl_c().await?;
    drop(idp);
    Ok(())
}

/// What `vakt dev-idp mint` signs with and how many tokens it makes.
#[derive(Debug, Clone)]
pub struct CliMint {
    pub alg: Alg,
    pub lifetime: Duration,
    /// More than one: one token per line, subjects `<sub>-0`, `<sub>-1`, ...
    pub count: usize,
    /// The `cnf` claim binding the tokens to a DPoP key.
    pub cnf: Option<Value>,
}

/// `vakt dev-idp mint`: a token for `person` with `profile`'s claims, signed with the current key
/// of `mint.alg` in `dir` (created if missing), `typ` `at+jwt`. `issuer` must be the served
/// issuer (`serve_forever` prints it).
pub fn mint_cli(
    dir: &Path,
    issuer: &str,
    profile: Profile,
    person: Person,
    mint: &CliMint,
) -> Result<String, DevIdpError> {
    let (alg, lifetime, count) = (mint.alg, mint.lifetime, mint.count);
    let keys = KeyStore::open_or_create(dir)?;
    let claims = |person: &Person| {
        let mut claims = claims(profile, person);
        if let Some(cnf) = &mint.cnf {
            claims["cnf"] = cnf.clone();
        }
        claims
    };
    let opts = MintOptions {
        alg,
        lifetime,
        ..MintOptions::default()
    };
    if count <= 1 {
        return keys.mint(issuer, claims(&person), &opts);
    }
    // Many distinct tokens (load tests): one subject each, `<sub>-<i>`, one token per line.
    let mut lines = Vec::with_capacity(count);
    for i in 0..count {
        let person = Person {
            sub: format!("{}-{i}", person.sub),
            ..person.clone()
        };
        lines.push(keys.mint(issuer, claims(&person), &opts)?);
    }
    Ok(lines.join("\n"))
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use jsonwebtoken::jwk::{Jwk, JwkSet};
    use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
    use std::collections::HashSet;
    use std::time::Instant;

    const LOOPBACK: &str = "127.0.0.1:0";

    fn loopback() -> SocketAddr {
        LOOPBACK.parse().unwrap()
    }

    /// One GET over a fresh HTTP/1.1 connection: (status, headers, body).
    async fn get(url: &str) -> (StatusCode, hyper::HeaderMap, Bytes) {
        let uri: hyper::Uri = url.parse().unwrap();
        let authority = uri.authority().unwrap().clone();
        let stream = tokio::net::TcpStream::connect(authority.as_str())
            .await
            .unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(uri.path())
            .header(hyper::header::HOST, authority.as_str())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, body)
    }

    async fn fetch_jwks(idp: &DevIdp) -> JwkSet {
        let (status, _, body) = get(&idp.jwks_uri()).await;
        assert_eq!(status, StatusCode::OK);
        serde_json::from_slice(&body).unwrap()
    }

    fn jwt_alg(alg: Alg) -> Algorithm {
        alg.jsonwebtoken()
    }

    /// Strict-ish jsonwebtoken validation: alg, iss, aud, exp/nbf with no leeway.
    fn verify(token: &str, set: &JwkSet, alg: Alg, issuer: &str, aud: &str) -> Value {
        let header = decode_header(token).unwrap();
        let kid = header.kid.unwrap();
        let jwk: &Jwk = set.find(&kid).expect("kid published");
        let key = DecodingKey::from_jwk(jwk).unwrap();
        let mut v = Validation::new(jwt_alg(alg));
        v.set_issuer(&[issuer]);
        v.set_audience(&[aud]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "nbf", "iat"]);
        v.validate_nbf = true;
        v.leeway = 0;
        decode::<Value>(token, &key, &v).unwrap().claims
    }

    fn verify_err(token: &str, set: &JwkSet, alg: Alg, kid: &str) -> jsonwebtoken::errors::Error {
        let key = DecodingKey::from_jwk(set.find(kid).unwrap()).unwrap();
        let mut v = Validation::new(jwt_alg(alg));
        v.validate_aud = false;
        decode::<Value>(token, &key, &v).unwrap_err()
    }

    fn segment(token: &str, i: usize) -> Value {
        let part = token.split('.').nth(i).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    async fn started(prefix: &str) -> (tempfile::TempDir, DevIdp) {
        let dir = tempfile::tempdir().unwrap();
        let keys = Arc::new(KeyStore::open_or_create(&dir.path().join("keys")).unwrap());
        let idp = DevIdp::start(loopback(), keys, prefix).await.unwrap();
        (dir, idp)
    }

    #[tokio::test]
    async fn each_alg_mints_tokens_that_jsonwebtoken_verifies_over_served_jwks() {
        let (_dir, idp) = started("").await;
        let set = fetch_jwks(&idp).await;
        assert_eq!(set.keys.len(), 3);
        let person = Person {
            scopes: vec!["journal.read".into(), "journal.write".into()],
            ..Person::default()
        };
        for alg in SIGNING_ALGS {
            let token = idp
                .mint(
                    claims(Profile::Generic, &person),
                    &MintOptions {
                        alg,
                        ..MintOptions::default()
                    },
                )
                .unwrap();
            let header = segment(&token, 0);
            assert_eq!(header["alg"], alg.as_str());
            assert_eq!(header["typ"], "at+jwt");
            assert_eq!(header["kid"], idp.keys.current_kid(alg).unwrap());
            let c = verify(&token, &set, alg, &idp.issuer, "vakt");
            assert_eq!(c["sub"], "dev-user");
            assert_eq!(c["iss"], idp.issuer.as_str());
            assert_eq!(c["aud"], "vakt");
            assert_eq!(c["scope"], "journal.read journal.write");
            assert_eq!(c["acr"], "high");
            let iat = c["iat"].as_i64().unwrap();
            assert_eq!(c["nbf"].as_i64().unwrap(), iat);
            assert_eq!(c["exp"].as_i64().unwrap(), iat + 300);
            assert!(uuid::Uuid::parse_str(c["jti"].as_str().unwrap()).is_ok());
            // Wrong audience and wrong issuer are refused by the same key.
            let key =
                DecodingKey::from_jwk(set.find(header["kid"].as_str().unwrap()).unwrap()).unwrap();
            let mut v = Validation::new(jwt_alg(alg));
            v.set_audience(&["other"]);
            assert!(decode::<Value>(&token, &key, &v).is_err());
            let mut v = Validation::new(jwt_alg(alg));
            v.set_audience(&["vakt"]);
            v.set_issuer(&["https://elsewhere.example"]);
            assert!(decode::<Value>(&token, &key, &v).is_err());
        }
    }

    #[tokio::test]
    async fn published_jwks_shape() {
        let (_dir, idp) = started("").await;
        let (_, _, body) = get(&idp.jwks_uri()).await;
        let v: Value = serde_json::from_slice(&body).unwrap();
        let keys = v["keys"].as_array().unwrap();
        for k in keys {
            assert_eq!(k["use"], "sig");
            assert!(k.get("d").is_none() && k.get("p").is_none());
            let alg: Alg = parse_alg(k["alg"].as_str().unwrap()).unwrap();
            let b64 = |f: &str| URL_SAFE_NO_PAD.decode(k[f].as_str().unwrap()).unwrap();
            if is_rsa(alg) {
                assert_eq!(k["kty"], "RSA");
                assert_eq!(
                    b64("n").len(),
                    256,
                    "RSA-2048 modulus without a leading zero"
                );
                assert_eq!(b64("e"), vec![1, 0, 1]);
            } else {
                assert_eq!(k["kty"], "EC");
                assert_eq!(k["crv"], "P-256");
                assert_eq!(b64("x").len(), 32);
                assert_eq!(b64("y").len(), 32);
            }
            assert!(!k["n"].as_str().unwrap_or("").contains('='));
        }
        let algs: HashSet<_> = keys.iter().map(|k| k["alg"].as_str().unwrap()).collect();
        assert_eq!(algs, HashSet::from(["RS256", "PS256", "ES256"]));
    }

    #[tokio::test]
    async fn rotation_publishes_both_then_retire_removes_old() {
        let (_dir, idp) = started("").await;
        let old = idp.keys.current_kid(Alg::RS256).unwrap();
        let old_token = idp
            .mint(json!({"aud": "vakt"}), &MintOptions::default())
            .unwrap();

        let new = idp.keys.rotate(Alg::RS256).unwrap();
        assert_ne!(old, new);
        assert_eq!(idp.keys.current_kid(Alg::RS256).unwrap(), new);
        let set = fetch_jwks(&idp).await;
        assert!(set.find(&old).is_some() && set.find(&new).is_some());
        assert_eq!(set.keys.len(), 4);

        let new_token = idp
            .mint(json!({"aud": "vakt"}), &MintOptions::default())
            .unwrap();
        assert_eq!(segment(&new_token, 0)["kid"], new.as_str());
        verify(&new_token, &set, Alg::RS256, &idp.issuer, "vakt");
        verify(&old_token, &set, Alg::RS256, &idp.issuer, "vakt");

        // Current keys cannot be retired; unknown ones are reported.
        assert!(matches!(
            idp.keys.retire(&new),
            Err(DevIdpError::RetireCurrent(_))
        ));
        assert!(matches!(
            idp.keys.retire("dev-nope"),
            Err(DevIdpError::UnknownKid(_))
        ));
        idp.keys.retire(&old).unwrap();
        let set = fetch_jwks(&idp).await;
        assert!(set.find(&old).is_none());
        assert!(set.find(&new).is_some());
        assert_eq!(set.keys.len(), 3);
    }

    #[tokio::test]
    async fn another_process_sees_rotation_through_the_directory() {
        let (dir, idp) = started("").await;
        // A second store over the same directory stands in for a `mint` CLI process.
        let other = KeyStore::open_or_create(&dir.path().join("keys")).unwrap();
        assert_eq!(
            other.current_kid(Alg::ES256).unwrap(),
            idp.keys.current_kid(Alg::ES256).unwrap()
        );
        let new = other.rotate(Alg::ES256).unwrap();
        assert_eq!(idp.keys.current_kid(Alg::ES256).unwrap(), new);
        let set = fetch_jwks(&idp).await;
        assert!(set.find(&new).is_some());
        let token = other
            .mint(
                &idp.issuer,
                json!({"aud": "vakt", "sub": "x"}),
                &MintOptions {
                    alg: Alg::ES256,
                    ..MintOptions::default()
                },
            )
            .unwrap();
        assert_eq!(segment(&token, 0)["kid"], new.as_str());
        verify(&token, &set, Alg::ES256, &idp.issuer, "vakt");
    }

    #[tokio::test]
    async fn mint_options_craft_bad_tokens() {
        let (_dir, idp) = started("").await;
        let set = fetch_jwks(&idp).await;

        // Extra header parameters (crit, jku) and no typ.
        let mut extra = Map::new();
        extra.insert("crit".into(), json!(["exp"]));
        extra.insert("jku".into(), json!("https://attacker.example/jwks"));
        let t = idp
            .mint(
                json!({"aud": "vakt"}),
                &MintOptions {
                    typ: None,
                    extra_header: extra,
                    ..MintOptions::default()
                },
            )
            .unwrap();
        let h = segment(&t, 0);
        assert_eq!(h["crit"], json!(["exp"]));
        assert_eq!(h["jku"], "https://attacker.example/jwks");
        assert!(h.get("typ").is_none());
        // Still a valid signature: the refusal must come from the verifier's own checks.
        verify(&t, &set, Alg::RS256, &idp.issuer, "vakt");

        // Unknown kid: header carries it, current key signs.
        let t = idp
            .mint(
                json!({"aud": "vakt"}),
                &MintOptions {
                    kid: Some("no-such-key".into()),
                    ..MintOptions::default()
                },
            )
            .unwrap();
        assert_eq!(segment(&t, 0)["kid"], "no-such-key");
        assert!(set.find("no-such-key").is_none());

        // Key/alg mismatch: the RS256-published key signs PS256.
        let rs_kid = idp.keys.current_kid(Alg::RS256).unwrap();
        let t = idp
            .mint(
                json!({"aud": "vakt"}),
                &MintOptions {
                    alg: Alg::PS256,
                    kid: Some(rs_kid.clone()),
                    ..MintOptions::default()
                },
            )
            .unwrap();
        assert_eq!(segment(&t, 0)["alg"], "PS256");
        assert_eq!(segment(&t, 0)["kid"], rs_kid.as_str());
        let key = DecodingKey::from_jwk(set.find(&rs_kid).unwrap()).unwrap();
        let mut v = Validation::new(Algorithm::PS256);
        v.set_audience(&["vakt"]);
        // jsonwebtoken alone accepts it (the JWK says RS256): the verifier must check key/alg.
        assert!(decode::<Value>(&t, &key, &v).is_ok());

        // Expired, not yet valid, wrong iss kept, claims removed with null.
        let expired = idp
            .mint(
                json!({"aud": "vakt"}),
                &MintOptions {
                    issued_at_offset: Some(-600),
                    ..MintOptions::default()
                },
            )
            .unwrap();
        let c = segment(&expired, 1);
        assert!(c["exp"].as_i64().unwrap() < now_secs() - 200);
        let kid = idp.keys.current_kid(Alg::RS256).unwrap();
        assert_eq!(
            verify_err(&expired, &set, Alg::RS256, &kid).kind(),
            &jsonwebtoken::errors::ErrorKind::ExpiredSignature
        );
        let future = idp
            .mint(
                json!({"aud": "vakt"}),
                &MintOptions {
                    not_before_offset: Some(3600),
                    lifetime: Duration::from_secs(7200),
                    ..MintOptions::default()
                },
            )
            .unwrap();
        let c = segment(&future, 1);
        assert!(c["nbf"].as_i64().unwrap() > c["iat"].as_i64().unwrap() + 3000);
        let wrong = idp
            .mint(
                json!({"aud": "vakt", "iss": "https://evil.example", "exp": null, "jti": "fixed"}),
                &MintOptions::default(),
            )
            .unwrap();
        let c = segment(&wrong, 1);
        assert_eq!(c["iss"], "https://evil.example");
        assert_eq!(c["jti"], "fixed");
        assert!(c.get("exp").is_none());
        assert!(c.get("iat").is_some());

        assert!(matches!(
            idp.mint(json!(["not", "an", "object"]), &MintOptions::default()),
            Err(DevIdpError::ClaimsNotObject)
        ));
    }

    #[test]
    fn presets_use_each_providers_claim_names_and_loa() {
        let person = Person {
            sub: "abc".into(),
            national_id: Some("01017000000".into()),
            level: Loa::High,
            amr: vec!["BankID".into()],
            auth_time: Some(1_700_000_000),
            client_id: "cli".into(),
            scopes: vec!["a".into(), "b".into()],
            audience: "api".into(),
            org_number: Some("999999999".into()),
            hpr_number: Some("1234567".into()),
        };
        let at = |level| Person {
            level,
            ..person.clone()
        };
        for p in Profile::ALL {
            let c = claims(p, &person);
            assert_eq!(c["sub"], "abc", "{p}");
            assert_eq!(c["aud"], "api", "{p}");
            assert_eq!(c["amr"], json!(["BankID"]), "{p}");
        }

        let h = claims(Profile::Helseid, &person);
        assert_eq!(h["helseid://claims/identity/pid"], "01017000000");
        assert_eq!(
            h["helseid://claims/client/claims/orgnr_parent"],
            "999999999"
        );
        assert_eq!(h["helseid://claims/hpr/hpr_number"], "1234567");
        assert_eq!(h["client_id"], "cli");
        assert_eq!(h["scope"], json!(["a", "b"]));
        assert_eq!(h["auth_time"], 1_700_000_000);
        let sl = |l| {
            claims(Profile::Helseid, &at(l))["helseid://claims/identity/security_level"].clone()
        };
        assert_eq!(
            (sl(Loa::Low), sl(Loa::Substantial), sl(Loa::High)),
            (json!("2"), json!("3"), json!("4"))
        );

        let b = claims(Profile::Bankid, &person);
        assert_eq!(b["nnin_altsub"], "01017000000");
        assert_eq!(b["bankid_altsub"], "abc");
        assert_eq!(b["azp"], "cli");
        assert!(b.get("auth_time").is_none());
        assert!(b.get("client_id").is_none());
        let acr = |p, l| claims(p, &at(l)).get("acr").cloned();
        assert_eq!(
            acr(Profile::Bankid, Loa::High),
            Some(json!("urn:bankid:bid;LOA=4"))
        );
        assert_eq!(
            acr(Profile::Bankid, Loa::Substantial),
            Some(json!("urn:bankid:bis;LOA=3"))
        );
        assert_eq!(acr(Profile::Bankid, Loa::Low), None);

        let s = claims(Profile::Signicat, &person);
        assert_eq!(s["nin"], "01017000000");
        assert_eq!(s["nin_type"], "BIRTH");
        assert_eq!(s["nin_issuing_country"], "NO");
        assert_eq!(s["idp"], "nbid");
        assert_eq!(s["auth_time"], 1_700_000_000);
        assert_eq!(acr(Profile::Signicat, Loa::High), Some(json!("loa:high")));
        assert_eq!(
            acr(Profile::Signicat, Loa::Substantial),
            Some(json!("loa:substantial"))
        );
        assert_eq!(acr(Profile::Signicat, Loa::Low), Some(json!("loa:low")));

        let i = claims(Profile::Idporten, &person);
        assert_eq!(i["pid"], "01017000000");
        assert_eq!(i["client_id"], "cli");
        assert_eq!(i["scope"], "a b");
        assert_eq!(
            acr(Profile::Idporten, Loa::High),
            Some(json!("idporten-loa-high"))
        );
        assert_eq!(
            acr(Profile::Idporten, Loa::Substantial),
            Some(json!("idporten-loa-substantial"))
        );
        assert_eq!(acr(Profile::Idporten, Loa::Low), None);

        let g = claims(Profile::Generic, &person);
        assert_eq!(g["scope"], "a b");
        assert_eq!(acr(Profile::Generic, Loa::Low), Some(json!("low")));
        assert_eq!(
            acr(Profile::Generic, Loa::Substantial),
            Some(json!("substantial"))
        );
        assert_eq!(acr(Profile::Generic, Loa::High), Some(json!("high")));

        // No national id, no org, no amr: those claims are absent, not null.
        let bare = Person::default();
        let bare = Person {
            amr: Vec::new(),
            ..bare
        };
        for p in Profile::ALL {
            let c = claims(p, &bare);
            for name in [
                "helseid://claims/identity/pid",
                "nnin_altsub",
                "nin",
                "pid",
                "amr",
                "auth_time",
                "helseid://claims/client/claims/orgnr_parent",
            ] {
                assert!(c.get(name).is_none(), "{p}: {name}");
            }
        }
    }

    #[tokio::test]
    async fn discovery_parses_with_openidconnect_under_a_prefix() {
        let (_dir, idp) = started("/auth/realms/current/").await;
        assert!(idp.issuer.ends_with("/auth/realms/current"));
        let (status, headers, body) =
            get(&format!("{}/.well-known/openid-configuration", idp.issuer)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CONTENT_TYPE], "application/json");
        let meta: openidconnect::core::CoreProviderMetadata =
            serde_json::from_slice(&body).unwrap();
        assert_eq!(meta.issuer().as_str(), idp.issuer);
        assert_eq!(meta.jwks_uri().as_str(), idp.jwks_uri());
        assert_eq!(idp.discovery_fetches(), 1);
        // The JWKS lives under the prefix too; the bare path is not served.
        assert_eq!(get(&idp.jwks_uri()).await.0, StatusCode::OK);
        let bare = format!("http://{}/jwks", idp.addr);
        assert_eq!(get(&bare).await.0, StatusCode::NOT_FOUND);
        assert_eq!(idp.jwks_fetches(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn key_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let keys_dir = dir.path().join("k");
        let store = KeyStore::open_or_create(&keys_dir).unwrap();
        store.rotate(Alg::PS256).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&keys_dir), 0o700);
        let mut n = 0;
        for entry in fs::read_dir(&keys_dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == KEY_EXT) {
                assert_eq!(mode(&p), 0o600, "{}", p.display());
                n += 1;
            }
        }
        assert_eq!(n, 4);
        assert_eq!(mode(&keys_dir.join(CURRENT_FILE)), 0o600);
        // Reopening keeps the same keys.
        let again = KeyStore::open_or_create(&keys_dir).unwrap();
        assert_eq!(
            again.current_kid(Alg::PS256).unwrap(),
            store.current_kid(Alg::PS256).unwrap()
        );
        assert_eq!(again.published().unwrap().len(), 4);
    }

    #[tokio::test]
    async fn test_controls_down_counters_max_age_extra_delay() {
        let (_dir, idp) = started("").await;
        let disc = format!("{}/.well-known/openid-configuration", idp.issuer);

        let (status, headers, _) = get(&idp.jwks_uri()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CACHE_CONTROL], "max-age=300");
        idp.set_jwks_max_age(7);
        assert_eq!(get(&idp.jwks_uri()).await.1[CACHE_CONTROL], "max-age=7");

        idp.set_down(true);
        assert_eq!(
            get(&idp.jwks_uri()).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(get(&disc).await.0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            get(&format!("{}/other", idp.issuer)).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        idp.set_down(false);
        assert_eq!(get(&disc).await.0, StatusCode::OK);
        assert_eq!(idp.jwks_fetches(), 3);
        assert_eq!(idp.discovery_fetches(), 2);

        idp.set_extra_jwks(vec![
            json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}),
            json!({"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"}),
        ]);
        let (_, _, body) = get(&idp.jwks_uri()).await;
        let v: Value = serde_json::from_slice(&body).unwrap();
        let kids: Vec<_> = v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(kids.len(), 5);
        assert_eq!(&kids[3..], ["hmac", "enc"]);

        idp.set_jwks_delay(Duration::from_millis(300));
        let start = Instant::now();
        assert_eq!(get(&idp.jwks_uri()).await.0, StatusCode::OK);
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert_eq!(idp.jwks_fetches(), 5);
    }

    #[tokio::test]
    async fn drop_stops_the_server_and_only_loopback_binds() {
        let (_dir, idp) = started("").await;
        let addr = idp.addr;
        assert_eq!(get(&idp.jwks_uri()).await.0, StatusCode::OK);
        let keys = Arc::clone(&idp.keys);
        drop(idp);
        let mut refused = false;
        for _ in 0..50 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(refused, "listener still accepting after drop");
        let err = DevIdp::start("0.0.0.0:0".parse().unwrap(), keys, "")
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn mint_cli_tokens_verify_against_a_serving_issuer() {
        let (dir, idp) = started("").await;
        let person = Person {
            national_id: Some("01017000000".into()),
            level: Loa::Substantial,
            audience: "journal-api".into(),
            ..Person::default()
        };
        let token = mint_cli(
            &dir.path().join("keys"),
            &idp.issuer,
            Profile::Bankid,
            person,
            &CliMint {
                alg: Alg::ES256,
                lifetime: Duration::from_secs(60),
                count: 1,
                cnf: Some(json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"})),
            },
        )
        .unwrap();
        let set = fetch_jwks(&idp).await;
        let c = verify(&token, &set, Alg::ES256, &idp.issuer, "journal-api");
        assert_eq!(c["acr"], "urn:bankid:bis;LOA=3");
        assert_eq!(c["nnin_altsub"], "01017000000");
        assert_eq!(
            c["cnf"]["jkt"],
            "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
        );
        assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 60);
    }

    #[tokio::test]
    async fn mint_cli_count_gives_distinct_subjects_one_per_line() {
        let (dir, idp) = started("").await;
        let out = mint_cli(
            &dir.path().join("keys"),
            &idp.issuer,
            Profile::Helseid,
            Person::default(),
            &CliMint {
                alg: Alg::RS256,
                lifetime: Duration::from_secs(60),
                count: 3,
                cnf: None,
            },
        )
        .unwrap();
        let set = fetch_jwks(&idp).await;
        let subs: Vec<String> = out
            .lines()
            .map(|t| {
                verify(t, &set, Alg::RS256, &idp.issuer, "vakt")["sub"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(subs, ["dev-user-0", "dev-user-1", "dev-user-2"]);
    }

    #[test]
    fn names_round_trip() {
        for a in SIGNING_ALGS {
            assert_eq!(parse_alg(&a.to_string()).unwrap(), a);
        }
        assert_eq!(parse_alg("es256").unwrap(), Alg::ES256);
        assert!(parse_alg("HS256").is_err());
        assert!(parse_alg("none").is_err());
        for p in Profile::ALL {
            assert_eq!(parse_profile(&p.to_string()).unwrap(), p);
        }
        for l in [Loa::Low, Loa::Substantial, Loa::High] {
            assert_eq!(parse_level(&l.to_string()).unwrap(), l);
        }
        assert!(parse_level("medium").is_err());
    }
}

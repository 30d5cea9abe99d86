//! End-user access tokens from OIDC providers (HelseID, BankID, Signicat, ID-porten, generic):
//! configuration, the verified [`Principal`], and the reasons a token is refused.
//!
//! The only place that talks to identity providers is [`jwks`] (discovery + key sets). Tokens are
//! verified in [`verify`] (strict checks on top of `jsonwebtoken`), mapped to one normalised
//! principal by [`profile`], and put into the request by the [`stage`].

pub mod devidp;
pub mod http_client;
pub mod jwks;
pub mod profile;
pub mod stage;
pub mod verify;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::pseudonym::Pseudonymiser;

pub use profile::{Loa, Profile};

/// Signature algorithms vakt can accept. `none` and HMAC never.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
}

impl Alg {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "RS256" => Self::RS256,
            "RS384" => Self::RS384,
            "RS512" => Self::RS512,
            "PS256" => Self::PS256,
            "PS384" => Self::PS384,
            "PS512" => Self::PS512,
            "ES256" => Self::ES256,
            "ES384" => Self::ES384,
            _ => return None,
        })
    }

    pub fn jsonwebtoken(self) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm as A;
        match self {
            Self::RS256 => A::RS256,
            Self::RS384 => A::RS384,
            Self::RS512 => A::RS512,
            Self::PS256 => A::PS256,
            Self::PS384 => A::PS384,
            Self::PS512 => A::PS512,
            Self::ES256 => A::ES256,
            Self::ES384 => A::ES384,
        }
    }

    /// The JWK key type this algorithm needs.
    pub fn key_type(self) -> &'static str {
        match self {
            Self::ES256 | Self::ES384 => "EC",
            _ => "RSA",
        }
    }
}

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
    #[serde(
        default = "defaults::leeway",
        deserialize_with = "crate::config::de_duration"
    )]
    pub leeway: Duration,
    /// Longest accepted `exp - iat`.
    #[serde(
        default = "defaults::max_lifetime",
        deserialize_with = "crate::config::de_duration"
    )]
    pub max_token_lifetime: Duration,
    /// Discovery document URL (default `<issuer>/.well-known/openid-configuration`).
    #[serde(default)]
    pub discovery_url: Option<String>,
    /// Development only: allow `http://` for an issuer on a loopback address.
    #[serde(default)]
    pub allow_insecure_loopback: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    pub issuers: Vec<IssuerConfig>,
    /// Bounds for honouring the JWKS `Cache-Control: max-age`.
    #[serde(
        default = "defaults::refresh_min",
        deserialize_with = "crate::config::de_duration"
    )]
    pub jwks_refresh_min: Duration,
    #[serde(
        default = "defaults::refresh_max",
        deserialize_with = "crate::config::de_duration"
    )]
    pub jwks_refresh_max: Duration,
    /// Keep using the last good key set this long while the IdP is unreachable.
    #[serde(
        default = "defaults::max_staleness",
        deserialize_with = "crate::config::de_duration"
    )]
    pub jwks_max_staleness: Duration,
    /// Verified tokens remembered (by hash) so a repeated token costs a lookup.
    #[serde(default = "defaults::token_cache")]
    pub verified_token_cache: usize,
    /// Larger `Authorization` values are refused.
    #[serde(default = "defaults::max_token_bytes")]
    pub max_token_bytes: usize,
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
    pub fn validate(&self) -> Result<(), (String, String)> {
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
        if !(1024..=65536).contains(&self.max_token_bytes) {
            return Err((
                "oidc.max_token_bytes".into(),
                "out of range (1024 to 65536)".into(),
            ));
        }
        Ok(())
    }
}

/// The verified end user (or client) behind a request, normalised across providers.
/// `Debug` leaves out the subject, national id and claims (personal data).
#[derive(Clone)]
pub struct Principal {
    pub issuer: Arc<str>,
    pub profile: Profile,
    pub subject: Option<String>,
    /// National identity number. Personal data of the highest sensitivity: never logged; sent
    /// to the app only as a pseudonym unless a route explicitly forwards it.
    pub national_id: Option<String>,
    pub loa: Loa,
    pub amr: Vec<String>,
    pub auth_time: Option<i64>,
    /// Shared with every audit event of this principal.
    pub client_id: Option<Arc<str>>,
    pub scopes: Vec<String>,
    pub org_numbers: Vec<String>,
    pub expires_at: i64,
    /// All claims as sent, for `claims` conditions.
    pub claims: Claims,
    /// Pseudonyms of `subject` and `national_id`, made on first use and kept: the principal is
    /// cached with its token, so a request does not pay an HMAC per pseudonym (the audit event
    /// and the app's identity headers need the same ones). Tagged with the key id made under.
    pseudonyms: std::sync::OnceLock<(String, PrincipalPseudonyms)>,
    /// The identity headers for the app (`policy::stage::IdentityHeaders`), rendered for this
    /// principal's first request and shared by the rest; tagged with the pseudonym key id.
    pub(crate) identity_headers:
        std::sync::OnceLock<(String, Arc<crate::policy::stage::RenderedIdentity>)>,
    /// The per-subject rate-limit key, made for the first rate-limited request and kept (see
    /// [`Principal::rate_limit_key`]).
    rate_limit_key: std::sync::OnceLock<Option<Arc<str>>>,
}

/// A token's claims as sent, for policy `claims` conditions: name-sorted pairs in one boxed
/// slice. One principal is cached per verified token (up to `verified_token_cache` of them), and
/// a `BTreeMap` of the same claims took about twice the memory (fixed-size nodes of eleven
/// slots plus a `String` of spare capacity per name).
#[derive(Clone, Default, PartialEq)]
pub struct Claims(Box<[(Box<str>, serde_json::Value)]>);

impl Claims {
    /// The value of claim `name`, if the token carried it.
    pub fn get(&self, name: &str) -> Option<&serde_json::Value> {
        self.0
            .binary_search_by(|(n, _)| (**n).cmp(name))
            .ok()
            .map(|i| &self.0[i].1)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<BTreeMap<String, serde_json::Value>> for Claims {
    /// A `BTreeMap` iterates in name order, so the slice comes out sorted for `get`.
    fn from(claims: BTreeMap<String, serde_json::Value>) -> Self {
        Self(
            claims
                .into_iter()
                .map(|(name, mut value)| {
                    shrink_arrays(&mut value);
                    (name.into_boxed_str(), value)
                })
                .collect(),
        )
    }
}

/// The parser grows an array as it reads it (capacity 4, then 8, ...), and a cached principal
/// keeps its claims as long as its token is cached: `scope` and `amr` with two entries each held
/// 128 bytes of spare capacity. Nesting is bounded by serde_json's recursion limit.
fn shrink_arrays(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Array(items) => {
            items.iter_mut().for_each(shrink_arrays);
            items.shrink_to_fit();
        }
        serde_json::Value::Object(fields) => fields.values_mut().for_each(shrink_arrays),
        _ => {}
    }
}

/// A principal's identifiers as pseudonyms (`<key id>:<base64url HMAC>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrincipalPseudonyms {
    pub subject: Option<Arc<str>>,
    pub national_id: Option<Arc<str>>,
}

impl Principal {
    /// The key a per-subject rate limit counts this principal by, `sub:<issuer>|<subject>`, or
    /// `None` without a subject. Made once: the principal is cached with its token, so the
    /// requests of one token share the key (and the limiter's map holds that same string).
    pub fn rate_limit_key(&self) -> Option<&Arc<str>> {
        self.rate_limit_key
            .get_or_init(|| {
                self.subject
                    .as_ref()
                    .map(|s| Arc::from(format!("sub:{}|{s}", self.issuer)))
            })
            .as_ref()
    }

    /// The pseudonyms of this principal's subject and national id under `p`.
    pub fn pseudonyms(&self, p: &Pseudonymiser) -> std::borrow::Cow<'_, PrincipalPseudonyms> {
        let make = || PrincipalPseudonyms {
            subject: self
                .subject
                .as_deref()
                .map(|s| p.pseudonym(crate::audit::KIND_SUBJECT, s).into()),
            national_id: self
                .national_id
                .as_deref()
                .map(|n| p.pseudonym(crate::audit::KIND_NATIONAL_ID, n).into()),
        };
        let (key_id, memo) = self
            .pseudonyms
            .get_or_init(|| (p.key_id().to_owned(), make()));
        if key_id == p.key_id() {
            std::borrow::Cow::Borrowed(memo)
        } else {
            // Another key than the first caller's (not the case in a running sidecar).
            std::borrow::Cow::Owned(make())
        }
    }
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal")
            .field("issuer", &self.issuer)
            .field("profile", &self.profile)
            .field("has_subject", &self.subject.is_some())
            .field("has_national_id", &self.national_id.is_some())
            .field("loa", &self.loa)
            .field("amr", &self.amr)
            .field("client_id", &self.client_id)
            .field("scopes", &self.scopes)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Why a presented token was refused. One code per failure; all answer 401 `invalid_token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum TokenError {
    #[error("more than one Authorization header")]
    MultipleAuthorization,
    #[error("Authorization is not a Bearer token")]
    NotBearer,
    #[error("access token in the query string")]
    TokenInQuery,
    #[error("token too large")]
    TooLarge,
    #[error("not a compact JWS")]
    Malformed,
    #[error("duplicate member in token header or claims")]
    DuplicateMember,
    #[error("token header has a parameter that is not allowed (jku, x5u, jwk, x5c, ...)")]
    HeaderNotAllowed,
    #[error("token header has crit")]
    Crit,
    #[error("wrong token type")]
    WrongType,
    #[error("an ID token is not an access token")]
    IdToken,
    #[error("sender-constrained (DPoP) token presented as Bearer")]
    BoundToken,
    #[error("issuer not configured")]
    UnknownIssuer,
    #[error("algorithm not allowed for this issuer")]
    AlgNotAllowed,
    #[error("no key with this kid")]
    UnknownKey,
    #[error("key does not fit the algorithm")]
    KeyAlgMismatch,
    #[error("signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("token lifetime too long")]
    LifetimeTooLong,
    #[error("audience is not this service")]
    WrongAudience,
    #[error("required claim missing")]
    MissingClaim,
    #[error("signing keys unavailable")]
    KeysUnavailable,
}

impl TokenError {
    pub fn code(self) -> &'static str {
        match self {
            Self::MultipleAuthorization => "multiple_authorization",
            Self::NotBearer => "not_bearer",
            Self::TokenInQuery => "token_in_query",
            Self::TooLarge => "token_too_large",
            Self::Malformed => "malformed_token",
            Self::DuplicateMember => "duplicate_member",
            Self::HeaderNotAllowed => "header_not_allowed",
            Self::Crit => "crit_header",
            Self::WrongType => "wrong_token_type",
            Self::IdToken => "id_token",
            Self::BoundToken => "bound_token",
            Self::UnknownIssuer => "unknown_issuer",
            Self::AlgNotAllowed => "alg_not_allowed",
            Self::UnknownKey => "unknown_key",
            Self::KeyAlgMismatch => "key_alg_mismatch",
            Self::BadSignature => "bad_signature",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::IssuedInFuture => "issued_in_future",
            Self::LifetimeTooLong => "lifetime_too_long",
            Self::WrongAudience => "wrong_audience",
            Self::MissingClaim => "missing_claim",
            Self::KeysUnavailable => "keys_unavailable",
        }
    }
}

/// Deserialize a JSON object, refusing duplicate member names (serde_json keeps the last one).
pub(crate) fn object_without_duplicates<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, serde_json::Value>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = BTreeMap<String, serde_json::Value>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                if out.insert(k.clone(), v).is_some() {
                    return Err(serde::de::Error::custom(format!("duplicate member {k:?}")));
                }
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
}

//! The policy file format as written (`deny_unknown_fields`), before it is checked.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use http::Method;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::router::NearMiss;
use crate::authn::Loa;
use crate::identity::{SpiffeId, TrustDomain};
use crate::ratelimit::RateLimitSpec;
use crate::serde_helpers::de_duration;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Mode {
    #[default]
    #[serde(rename = "enforce")]
    Enforce,
    #[serde(rename = "dry-run")]
    DryRun,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::DryRun => "dry-run",
        }
    }
}

/// The policy file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Format version; only 1 exists.
    #[serde(default = "one")]
    pub version: u32,
    /// Mode for routes that do not set one, and for requests that match no route.
    #[serde(default)]
    pub default_mode: Mode,
    /// A token for client X of issuer I is accepted only when it arrives from one of these
    /// SPIFFE IDs (checked on every route, before the rules); a token from I that names no
    /// client is refused.
    #[serde(default)]
    pub client_bindings: ClientBindingsSpec,
    /// A path that misses a more specific literal route only by letter case or a trailing `/`:
    /// `refuse` (default) or `fall_back` to the routes it does match.
    #[serde(default)]
    pub path_near_miss: NearMiss,
    pub routes: Vec<RouteSpec>,
}

/// Whether a route needs an end-user access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenRequirement {
    /// No token: refused with 401 before the rules.
    Required,
    /// Rules with token conditions need one; others do not.
    Optional,
    /// Tokens are ignored on this route.
    None,
}

impl TokenRequirement {
    /// As written in the policy file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Required => "required",
            Self::Optional => "optional",
            Self::None => "none",
        }
    }
}

/// What a route policy is checked against: the sidecar's trust domains and OIDC issuers.
#[derive(Debug, Clone, Default)]
pub struct PolicyContext {
    /// Peer trust domains accepted; empty: not checked.
    pub trust_domains: Vec<TrustDomain>,
    /// Configured issuers: `None` when unknown (standalone `vakt check --policy`), `Some(empty)`
    /// when the sidecar has no OIDC section (token conditions are then errors).
    pub issuers: Option<Vec<String>>,
    /// Whether DPoP proofs can be checked (a public URL is configured for some issuer): `None`
    /// when unknown.
    pub dpop_public_url: Option<bool>,
}

impl PolicyContext {
    pub fn with_trust_domains(trust_domains: &[TrustDomain]) -> Self {
        Self {
            trust_domains: trust_domains.to_vec(),
            issuers: None,
            dpop_public_url: None,
        }
    }

    pub(crate) fn oidc_configured(&self) -> bool {
        self.issuers.as_ref().is_some_and(|i| !i.is_empty())
    }
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Stable name: in audit events, metrics labels and denial bodies.
    pub id: String,
    /// HTTP methods this route covers (at least one).
    #[serde(deserialize_with = "de_methods")]
    pub methods: Vec<Method>,
    /// `/exact`, `/with/{param}/segments`, or a trailing `/prefix/**`.
    pub path: String,
    /// Only requests for this host (`Host` / `:authority`, port ignored).
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Allow every verified peer. Must be said explicitly; no `allow` rules then.
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub allow: Vec<RuleSpec>,
    #[serde(default)]
    pub rate_limit: Option<RateLimitSpec>,
    /// `required` (default when the sidecar has OIDC issuers), `optional` or `none`.
    #[serde(default)]
    pub token: Option<TokenRequirement>,
    /// Only DPoP-bound tokens with a valid proof (RFC 9449); Bearer tokens are refused.
    #[serde(default)]
    pub require_dpop: bool,
    /// Pass the caller's `Authorization` header (and `DPoP` proof) to the app (removed by
    /// default).
    #[serde(default)]
    pub forward_token: bool,
    /// Send the national id to the app in clear (default: only its pseudonym).
    #[serde(default)]
    pub forward_national_id: bool,
    /// Protocol upgrades this route tunnels (`[websocket]`); every other upgrade is refused.
    #[serde(default)]
    pub upgrade: Vec<String>,
}

/// What a path parameter may be bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BindTarget {
    NationalId,
    Subject,
    ClientId,
}

impl BindTarget {
    /// As written in the policy file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NationalId => "national_id",
            Self::Subject => "subject",
            Self::ClientId => "client_id",
        }
    }
}

/// One value or a list of accepted values for a claim.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ClaimMatch {
    OneOf(Vec<serde_json::Value>),
    Equals(serde_json::Value),
}

impl ClaimMatch {
    pub(crate) fn accepts(&self, value: &serde_json::Value) -> bool {
        match self {
            Self::Equals(v) => v == value,
            Self::OneOf(vs) => vs.contains(value),
        }
    }
}

/// A rule: every condition it names must hold.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// SPIFFE IDs, or patterns where a `*` segment matches any one segment
    /// (`spiffe://td/ns/billing/sa/*`).
    #[serde(default)]
    pub peers: Option<Vec<PeerPattern>>,
    /// Token issuers accepted by this rule (configured issuer URLs).
    #[serde(default)]
    pub issuers: Option<Vec<String>>,
    /// Clients accepted (`client_id` / `azp`), each with its issuer: `{issuer: <url>, id: <id>}`,
    /// or the id alone where only one issuer can be meant.
    #[serde(default)]
    pub clients: Option<Vec<ClientRef>>,
    /// Every one of these scopes.
    #[serde(default)]
    pub scopes_all: Option<Vec<String>>,
    /// At least one of these scopes.
    #[serde(default)]
    pub scopes_any: Option<Vec<String>>,
    /// Lowest level of assurance (low, substantial, high); lower asks for step-up.
    #[serde(default)]
    pub min_loa: Option<Loa>,
    /// At least one of these authentication methods.
    #[serde(default)]
    pub amr_any: Option<Vec<String>>,
    /// The login must be at most this old (step-up for sensitive routes), e.g. 10m.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub max_auth_age: Option<std::time::Duration>,
    /// Claims that must equal a value, or be one of a list.
    #[serde(default)]
    pub claims: Option<BTreeMap<String, ClaimMatch>>,
    /// Path parameters bound to the principal (`pid: national_id`).
    #[serde(default)]
    pub bind: Option<BTreeMap<String, BindTarget>>,
}

impl RuleSpec {
    pub(crate) fn has_token_conditions(&self) -> bool {
        self.issuers.is_some()
            || self.clients.is_some()
            || self.scopes_all.is_some()
            || self.scopes_any.is_some()
            || self.min_loa.is_some()
            || self.amr_any.is_some()
            || self.max_auth_age.is_some()
            || self.claims.is_some()
            || self.bind.is_some()
    }
}

/// A client as a policy names it: the id alone (`journal-web`), which is only accepted where
/// one issuer is meant (the rule names exactly one, or the sidecar trusts exactly one), or with
/// its issuer (`{issuer: https://helseid-sts.nhn.no, id: journal-web}`). Two issuers may hand
/// out the same client id to different parties, so an id means nothing without its issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientRef {
    Plain(String),
    Qualified { issuer: String, id: String },
}

impl fmt::Display for ClientRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Plain(id) => f.write_str(id),
            Self::Qualified { issuer, id } => write!(f, "{{issuer: {issuer}, id: {id}}}"),
        }
    }
}

/// The `{issuer, id}` form of [`ClientRef`], with unknown keys refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QualifiedClient {
    issuer: String,
    id: String,
}

impl<'de> Deserialize<'de> for ClientRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ClientVisitor;
        impl<'de> Visitor<'de> for ClientVisitor {
            type Value = ClientRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a client id (a string), or {issuer: <issuer URL>, id: <client id>}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ClientRef, E> {
                Ok(ClientRef::Plain(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ClientRef, A::Error> {
                let q = QualifiedClient::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(ClientRef::Qualified {
                    issuer: q.issuer,
                    id: q.id,
                })
            }
        }
        d.deserialize_any(ClientVisitor)
    }
}

/// One client binding as written: the client and the peers its tokens may arrive from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientBindingSpec {
    pub client: ClientRef,
    pub peers: Vec<PeerPattern>,
}

/// `client_bindings` as written: a map of client ids alone to peers (`journal-web: [...]`), or a
/// list of `{client: <client>, peers: [...]}` whose clients may name their issuer.
#[derive(Debug, Clone, Default)]
pub struct ClientBindingsSpec {
    pub entries: Vec<ClientBindingSpec>,
    /// Written as a map (entries are then located by key rather than by index).
    pub keyed: bool,
}

impl ClientBindingsSpec {
    /// Where entry `index` is in the file, for messages.
    pub(crate) fn location(&self, index: usize) -> String {
        match (&self.entries[index].client, self.keyed) {
            (ClientRef::Plain(id), true) => format!("client_bindings.{id}"),
            _ => format!("client_bindings[{index}]"),
        }
    }
}

impl<'de> Deserialize<'de> for ClientBindingsSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BindingsVisitor;
        impl<'de> Visitor<'de> for BindingsVisitor {
            type Value = ClientBindingsSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a map of client id to SPIFFE IDs, or a list of {client, peers} (client: an id, or {issuer, id})",
                )
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some((id, peers)) = map.next_entry::<String, Vec<PeerPattern>>()? {
                    entries.push(ClientBindingSpec {
                        client: ClientRef::Plain(id),
                        peers,
                    });
                }
                Ok(ClientBindingsSpec {
                    entries,
                    keyed: true,
                })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                let entries = Vec::<ClientBindingSpec>::deserialize(
                    de::value::SeqAccessDeserializer::new(seq),
                )?;
                Ok(ClientBindingsSpec {
                    entries,
                    keyed: false,
                })
            }
        }
        d.deserialize_any(BindingsVisitor)
    }
}

fn de_opt_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<std::time::Duration>, D::Error> {
    de_duration(d).map(Some)
}

fn de_methods<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Method>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    names
        .iter()
        .map(|m| {
            let upper = m.to_ascii_uppercase();
            match upper.as_str() {
                "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" => {
                    Method::from_str(&upper).map_err(de::Error::custom)
                }
                _ => Err(de::Error::custom(format!(
                    "\"{m}\" is not a method a route can allow (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS)"
                ))),
            }
        })
        .collect()
}

/// A peer condition: an exact SPIFFE ID or a pattern with `*` segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPattern {
    raw: String,
    trust_domain: TrustDomain,
    /// `None` for a `*` segment.
    segments: Vec<Option<String>>,
}

impl PeerPattern {
    pub fn matches(&self, id: &SpiffeId) -> bool {
        if id.trust_domain_str() != self.trust_domain.as_str() {
            return false;
        }
        let mut path = id.path()[1..].split('/');
        for want in &self.segments {
            match (path.next(), want) {
                (None, _) => return false,
                (Some(_), None) => {}
                (Some(got), Some(want)) if got == want => {}
                _ => return false,
            }
        }
        path.next().is_none()
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// `spiffe://<td>/ns/*/sa/*`: every workload of the trust domain.
    pub fn admits_every_workload(&self) -> bool {
        matches!(
            self.segments.as_slice(),
            [Some(ns), None, Some(sa), None] if ns == "ns" && sa == "sa"
        ) || self.segments.iter().all(Option::is_none)
    }

    /// Does this pattern match every SPIFFE ID `other` matches?
    pub fn covers(&self, other: &PeerPattern) -> bool {
        self.trust_domain == other.trust_domain
            && self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(mine, theirs)| mine.is_none() || mine == theirs)
    }
}

impl fmt::Display for PeerPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl FromStr for PeerPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        // Validate by replacing each `*` segment with a placeholder and parsing as a SPIFFE ID.
        let placeholder = s
            .split('/')
            .enumerate()
            .map(|(i, seg)| if i >= 3 && seg == "*" { "x" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        let id: SpiffeId = placeholder.parse().map_err(|e| format!("{e}"))?;
        if s.contains('*')
            && s.split('/')
                .skip(3)
                .any(|seg| seg.contains('*') && seg != "*")
        {
            return Err("'*' must be a whole path segment".into());
        }
        let segments = s
            .split('/')
            .skip(3)
            .map(|seg| (seg != "*").then(|| seg.to_owned()))
            .collect();
        Ok(Self {
            raw: s.to_owned(),
            trust_domain: id.trust_domain(),
            segments,
        })
    }
}

impl<'de> Deserialize<'de> for PeerPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|e| {
            de::Error::custom(format!(
                "\"{s}\" is not a SPIFFE ID or pattern: {e} (expected spiffe://<td>/ns/<ns>/sa/<sa>, '*' for a whole segment)"
            ))
        })
    }
}

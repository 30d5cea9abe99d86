//! The verified principal behind a request, normalised across identity providers.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::assurance::{Loa, Profile};
use super::rendered::RenderedIdentity;
use crate::pseudonym::Pseudonymiser;

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
    /// The RFC 7638 thumbprint of the key the token is bound to (`cnf.jkt`); a request with
    /// such a principal passed the DPoP proof check with that key.
    pub dpop_jkt: Option<Arc<str>>,
    /// Pseudonyms of `subject` and `national_id`, made on first use and kept: the principal is
    /// cached with its token, so a request does not pay an HMAC per pseudonym (the audit event
    /// and the app's identity headers need the same ones). Tagged with the key id made under.
    pub(super) pseudonyms: std::sync::OnceLock<(String, PrincipalPseudonyms)>,
    /// The identity headers for the app (`headers::IdentityHeaders`), rendered for this
    /// principal's first request and shared by the rest; tagged with the pseudonym key id.
    pub(crate) identity_headers: std::sync::OnceLock<(String, Arc<RenderedIdentity>)>,
    /// The per-subject rate-limit key, made for the first rate-limited request and kept (see
    /// [`Principal::rate_limit_key`]).
    pub(super) rate_limit_key: std::sync::OnceLock<Option<Arc<str>>>,
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
                .map(|s| p.pseudonym(crate::pseudonym::KIND_SUBJECT, s).into()),
            national_id: self
                .national_id
                .as_deref()
                .map(|n| p.pseudonym(crate::pseudonym::KIND_NATIONAL_ID, n).into()),
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

//! Which client-sent header names reach the app: the `hygiene` config section, the default
//! strip list, and the compiled [`HeaderRules`] the hygiene stage applies to every request's
//! headers and trailers.
//!
//! Names are compared after normalising (lower case, `_` read as `-`), because many app servers
//! (CGI/WSGI environments, Rack, PHP, some Java and Node frameworks) map `X-Vakt-Subject` and
//! `X_Vakt_Subject` to the same variable. `docs/HEADERS.md` is the catalogue.

use http::{HeaderMap, HeaderName};
use serde::Deserialize;

/// What to do with a request header whose name contains `_`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnderscoreHeaders {
    /// Remove the header (what nginx and Envoy can do).
    #[default]
    Drop,
    /// Refuse the request with 400 `invalid_header_name`.
    Reject,
    /// Pass it on, unless it normalises to a protected or stripped name (then it is removed).
    Allow,
}

/// What to do with `Forwarded`, `X-Forwarded-*` and `X-Real-IP`; a client's copy never passes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardedHeaders {
    /// Inbound: set them from what vakt verified (peer address, Host, `https`).
    #[default]
    Set,
    /// Only remove the client's copies.
    Strip,
}

/// The `hygiene` section.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HygieneConfig {
    #[serde(default)]
    pub underscore_headers: UnderscoreHeaders,
    #[serde(default)]
    pub forwarded: ForwardedHeaders,
}

/// One entry of a name table: an exact name, or a family of names (`prefix`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameEntry {
    pub name: &'static str,
    pub prefix: bool,
}

const fn exact(name: &'static str) -> NameEntry {
    NameEntry {
        name,
        prefix: false,
    }
}

const fn family(name: &'static str) -> NameEntry {
    NameEntry { name, prefix: true }
}

/// Headers only vakt sets: never passed from a client in any mode, `keep_headers` cannot opt
/// them back in.
pub const PROTECTED: &[NameEntry] = &[
    // The principal and peer as vakt renders them.
    family("x-vakt-"),
    // The verified peer certificate (Envoy's format).
    exact("x-forwarded-client-cert"),
    // Proxy headers frameworks trust from 127.0.0.1: set by vakt from what it verified.
    exact("forwarded"),
    exact("x-forwarded-for"),
    exact("x-forwarded-host"),
    exact("x-forwarded-proto"),
    exact("x-forwarded-port"),
    exact("x-forwarded-scheme"),
    exact("x-forwarded-ssl"),
    exact("x-real-ip"),
];

/// Headers vakt checks and keeps from the client under their own name (or replaces): a variant
/// spelt with `_` is never passed on beside them.
pub const VALIDATED: &[NameEntry] = &[
    exact("x-request-id"),
    exact("traceparent"),
    exact("tracestate"),
];

/// Identity and proxy headers other gateways, auth proxies, meshes and load balancers set:
/// removed from client requests by default, so an app migrating from them cannot be fooled.
/// `inbound.strip_headers` adds names; `inbound.keep_headers` opts a listed name back in.
pub const DEFAULT_STRIPPED: &[NameEntry] = &[
    // Auth proxies (oauth2-proxy, Pomerium, Authelia, Apache/nginx auth modules): the user.
    exact("x-auth-request-user"),
    exact("x-auth-request-email"),
    exact("x-auth-request-groups"),
    exact("x-auth-request-preferred-username"),
    exact("x-auth-request-access-token"),
    exact("x-forwarded-user"),
    exact("x-forwarded-email"),
    exact("x-forwarded-groups"),
    exact("x-forwarded-preferred-username"),
    exact("x-forwarded-access-token"),
    exact("x-remote-user"),
    exact("remote-user"),
    exact("x-remote-group"),
    exact("x-remote-groups"),
    exact("x-remote-email"),
    exact("x-user"),
    exact("x-email"),
    exact("x-authenticated-user"),
    exact("x-authenticated-userid"),
    exact("x-userinfo"),
    exact("x-id-token"),
    family("x-pomerium-"),
    // Client certificates and TLS verification results passed on by TLS terminators.
    exact("ssl-client-cert"),
    exact("ssl-client-verify"),
    family("ssl-client-"),
    family("x-ssl-client-"),
    exact("x-ssl-cert"),
    exact("x-client-cert"),
    exact("x-client-cert-chain"),
    exact("x-client-verify"),
    exact("x-client-dn"),
    exact("x-client-s-dn"),
    exact("x-client-i-dn"),
    exact("x-arr-clientcert"),
    exact("client-cert"),
    exact("client-cert-chain"),
    // SPIFFE ids passed on by other proxies.
    exact("x-spiffe-id"),
    exact("spiffe-id"),
    exact("x-client-spiffe-id"),
    exact("x-peer-spiffe-id"),
    // Other meshes' identity and internal headers (Envoy/Istio, Linkerd, Consul).
    family("x-envoy-"),
    family("x-istio-"),
    family("l5d-"),
    family("x-consul-"),
    // Cloud load balancers' and access proxies' identity headers (AWS ALB, Google IAP, Azure
    // App Service, Cloudflare Access).
    family("x-amzn-oidc-"),
    family("x-goog-authenticated-user-"),
    family("x-goog-iap-"),
    family("x-ms-client-principal"),
    family("x-ms-token-"),
    family("cf-access-"),
    // URL and method overrides: the app would act on another path or method than vakt checked.
    exact("x-original-url"),
    exact("x-original-uri"),
    exact("x-rewrite-url"),
    exact("x-http-method-override"),
    exact("x-http-method"),
    exact("x-method-override"),
    exact("x-original-method"),
];

fn entry_matches(entry: &NameEntry, name: &[u8]) -> bool {
    if entry.prefix {
        name.starts_with(entry.name.as_bytes())
    } else {
        name == entry.name.as_bytes()
    }
}

/// `name` lower-cased with `_` read as `-`, as many app servers see it.
pub fn normalise(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'_' => '-',
            b => char::from(b.to_ascii_lowercase()),
        })
        .collect()
}

/// A header name the configuration refuses ([`UnderscoreHeaders::Reject`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("header name {0:?} contains an underscore")]
pub struct InvalidHeaderName(pub HeaderName);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Strip,
    Refuse,
}

/// The compiled rules for one direction: which client header names never reach the other side.
#[derive(Debug, Clone)]
pub struct HeaderRules {
    underscore: UnderscoreHeaders,
    /// Names opted back in from [`DEFAULT_STRIPPED`] (`inbound.keep_headers`).
    keep: Vec<HeaderName>,
    /// The listed exact names (protected, `inbound.strip_headers`, default-stripped but not
    /// kept), by length: a header is compared with the few of its own length only.
    exact_by_len: Vec<Vec<Box<[u8]>>>,
    /// Prefix families that always apply ([`PROTECTED`]) and those `keep` can except.
    protected_families: Vec<&'static [u8]>,
    stripped_families: Vec<&'static [u8]>,
    /// Per first byte, bit `n` set when a listed exact name of that first byte has length `n`
    /// (names of 64 bytes or more set bit 63, and are compared whenever it is set): most
    /// headers are passed on this alone.
    exact_lengths: [u64; 256],
    /// Bit [`family_bucket`] of each family's first three bytes (a family shorter than that
    /// sets every bit): a name whose bucket is clear starts no family.
    family_buckets: Box<[u64; FAMILY_BUCKETS / 64]>,
}

/// Size of [`HeaderRules::family_buckets`] in bits.
const FAMILY_BUCKETS: usize = 4096;

/// The bucket of a name's first three bytes.
fn family_bucket(name: &[u8]) -> Option<usize> {
    match name {
        [a, b, c, ..] => {
            let h = (usize::from(*a) * 31 + usize::from(*b)) * 31 + usize::from(*c);
            Some(h % FAMILY_BUCKETS)
        }
        _ => None,
    }
}

fn length_bit(len: usize) -> u64 {
    1 << len.min(63)
}

impl HeaderRules {
    pub fn new(config: &HygieneConfig, extra: Vec<HeaderName>, keep: Vec<HeaderName>) -> Self {
        let kept = |name: &[u8]| keep.iter().any(|n| n.as_str().as_bytes() == name);
        let mut exact: Vec<&[u8]> = extra.iter().map(|n| n.as_str().as_bytes()).collect();
        let mut protected_families = Vec::new();
        let mut stripped_families = Vec::new();
        for entry in PROTECTED {
            match entry.prefix {
                true => protected_families.push(entry.name.as_bytes()),
                false => exact.push(entry.name.as_bytes()),
            }
        }
        for entry in DEFAULT_STRIPPED {
            match entry.prefix {
                true => stripped_families.push(entry.name.as_bytes()),
                false if !kept(entry.name.as_bytes()) => exact.push(entry.name.as_bytes()),
                false => {}
            }
        }
        let mut exact_by_len: Vec<Vec<Box<[u8]>>> = Vec::new();
        let mut exact_lengths = [0u64; 256];
        for name in &exact {
            if let Some(&first) = name.first() {
                exact_lengths[usize::from(first)] |= length_bit(name.len());
            }
        }
        let mut family_buckets = Box::new([0u64; FAMILY_BUCKETS / 64]);
        for family in protected_families.iter().chain(&stripped_families) {
            match family_bucket(family) {
                Some(bucket) => family_buckets[bucket / 64] |= 1 << (bucket % 64),
                None => family_buckets.fill(u64::MAX),
            }
        }
        for name in exact {
            if exact_by_len.len() <= name.len() {
                exact_by_len.resize_with(name.len() + 1, Vec::new);
            }
            exact_by_len[name.len()].push(name.into());
        }
        Self {
            underscore: config.underscore_headers,
            keep,
            exact_by_len,
            protected_families,
            stripped_families,
            exact_lengths,
            family_buckets,
        }
    }

    /// Whether a normalised (lower case, `-` only) name is protected or stripped.
    fn listed(&self, name: &[u8]) -> bool {
        let Some(&first) = name.first() else {
            return false;
        };
        if self.exact_lengths[usize::from(first)] & length_bit(name.len()) != 0
            && self
                .exact_by_len
                .get(name.len())
                .is_some_and(|same_length| same_length.iter().any(|n| **n == *name))
        {
            return true;
        }
        let family = match family_bucket(name) {
            Some(bucket) => self.family_buckets[bucket / 64] & (1 << (bucket % 64)) != 0,
            // Shorter than three bytes: only a family that short could start it.
            None => self.family_buckets.iter().all(|&w| w == u64::MAX),
        };
        if !family {
            return false;
        }
        if self.protected_families.iter().any(|f| name.starts_with(f)) {
            return true;
        }
        self.stripped_families.iter().any(|f| name.starts_with(f))
            && !self.keep.iter().any(|n| n.as_str().as_bytes() == name)
    }

    fn verdict(&self, name: &HeaderName) -> Verdict {
        let name = name.as_str();
        // `HeaderName` is lower case already; only `_` needs reading as `-`.
        if !name.contains('_') {
            return if self.listed(name.as_bytes()) {
                Verdict::Strip
            } else {
                Verdict::Pass
            };
        }
        match self.underscore {
            UnderscoreHeaders::Drop => Verdict::Strip,
            UnderscoreHeaders::Reject => Verdict::Refuse,
            UnderscoreHeaders::Allow => {
                // Rare (underscores allowed and present): normalised on the stack when it fits.
                let mut buf = [0u8; 128];
                let normalised;
                let bytes: &[u8] = if name.len() <= buf.len() {
                    for (out, b) in buf.iter_mut().zip(name.bytes()) {
                        *out = if b == b'_' { b'-' } else { b };
                    }
                    &buf[..name.len()]
                } else {
                    normalised = normalise(name);
                    normalised.as_bytes()
                };
                if self.listed(bytes) || VALIDATED.iter().any(|e| entry_matches(e, bytes)) {
                    Verdict::Strip
                } else {
                    Verdict::Pass
                }
            }
        }
    }

    /// Whether `name` (as a client would send it) would be removed or refused.
    pub fn blocks(&self, name: &HeaderName) -> bool {
        self.verdict(name) != Verdict::Pass
    }

    /// Remove every header the rules strip; `Err` when one must be refused instead.
    pub fn apply(&self, headers: &mut HeaderMap) -> Result<(), InvalidHeaderName> {
        // Most requests carry none: one pass without allocating.
        if headers.keys().all(|n| self.verdict(n) == Verdict::Pass) {
            return Ok(());
        }
        let mut remove = Vec::new();
        for name in headers.keys() {
            match self.verdict(name) {
                Verdict::Pass => {}
                Verdict::Strip => remove.push(name.clone()),
                Verdict::Refuse => return Err(InvalidHeaderName(name.clone())),
            }
        }
        for name in remove {
            headers.remove(&name);
        }
        Ok(())
    }
}

impl HeaderRules {
    /// Like [`HeaderRules::apply`], but a name that would be refused is removed instead (for
    /// trailers, which arrive after the request was forwarded).
    pub fn strip_all(&self, headers: &mut HeaderMap) {
        if headers.keys().all(|n| self.verdict(n) == Verdict::Pass) {
            return;
        }
        let remove: Vec<HeaderName> = headers
            .keys()
            .filter(|n| self.verdict(n) != Verdict::Pass)
            .cloned()
            .collect();
        for name in remove {
            headers.remove(&name);
        }
    }
}

/// Whether `name` is one only vakt sets (normalised), which `keep_headers` cannot name.
pub fn is_protected(name: &HeaderName) -> bool {
    let n = normalise(name.as_str());
    PROTECTED.iter().any(|e| entry_matches(e, n.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(underscore: UnderscoreHeaders) -> HeaderRules {
        HeaderRules::new(
            &HygieneConfig {
                underscore_headers: underscore,
                forwarded: ForwardedHeaders::Set,
            },
            vec![HeaderName::from_static("x-user-id")],
            vec![HeaderName::from_static("x-forwarded-user")],
        )
    }

    #[test]
    #[rustfmt::skip]
    fn normalisation_table() {
        let cases = [
            ("X-Vakt-Subject", "x-vakt-subject"),
            ("x_vakt_subject", "x-vakt-subject"),
            ("X_VAKT-LoA", "x-vakt-loa"),
            ("accept", "accept"),
            ("__", "--"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(normalise(input), want, "{input:?}");
        }
    }

    #[test]
    #[rustfmt::skip]
    fn verdict_table() {
        use UnderscoreHeaders::*;
        use Verdict::*;
        let cases: &[(&str, UnderscoreHeaders, Verdict)] = &[
            ("accept", Drop, Pass),
            ("x-custom-ok", Drop, Pass),
            ("x_custom_ok", Drop, Strip),
            ("x_custom_ok", Reject, Refuse),
            ("x_custom_ok", Allow, Pass),
            ("x-vakt-loa", Allow, Strip),
            ("x_vakt_loa", Allow, Strip),
            ("x_vakt_loa", Drop, Strip),
            ("x_vakt_loa", Reject, Refuse),
            ("x_forwarded_client_cert", Allow, Strip),
            ("x-forwarded-client-cert", Allow, Strip),
            ("x_forwarded_host", Allow, Strip),
            ("x-request-id", Allow, Pass),
            ("x_request_id", Allow, Strip),
            ("traceparent", Drop, Pass),
            ("x-real-ip", Allow, Strip),
            ("x-envoy-peer-metadata", Drop, Strip),
            ("x_envoy_whatever", Allow, Strip),
            ("l5d-client-id", Drop, Strip),
            ("x-amzn-oidc-identity", Drop, Strip),
            ("x-goog-authenticated-user-email", Drop, Strip),
            ("x-ms-client-principal-name", Drop, Strip),
            ("cf-access-jwt-assertion", Drop, Strip),
            ("x-original-url", Drop, Strip),
            ("x-http-method-override", Drop, Strip),
            ("remote-user", Drop, Strip),
            ("remote_user", Allow, Strip),
            ("ssl-client-cert", Drop, Strip),
            // inbound.strip_headers adds, inbound.keep_headers opts back in.
            ("x-user-id", Drop, Strip),
            ("x_user_id", Allow, Strip),
            ("x-forwarded-user", Drop, Pass),
            ("x_forwarded_user", Allow, Pass),
            ("x-forwarded-email", Drop, Strip),
            // Not a family member: the prefix must match whole.
            ("x-envoy", Drop, Pass),
            ("x-vakt", Drop, Pass),
            ("l5d", Drop, Pass),
        ];
        for (name, mode, want) in cases {
            let got = rules(*mode).verdict(&HeaderName::from_bytes(name.as_bytes()).unwrap());
            assert_eq!(got, *want, "{name} in {mode:?}");
        }
    }

    #[test]
    fn every_table_entry_is_a_lower_case_header_name_and_stripped() {
        let r = rules(UnderscoreHeaders::Allow);
        for e in VALIDATED.iter().filter(|e| e.name.contains('-')) {
            let underscored = HeaderName::from_bytes(e.name.replace('-', "_").as_bytes()).unwrap();
            assert!(r.blocks(&underscored), "{underscored}");
            assert!(!r.blocks(&HeaderName::from_static(e.name)), "{}", e.name);
        }
        for e in PROTECTED.iter().chain(DEFAULT_STRIPPED) {
            let name = HeaderName::from_bytes(e.name.as_bytes()).unwrap();
            assert_eq!(name.as_str(), e.name);
            assert!(!e.name.contains('_'), "{}", e.name);
            if e.name != "x-forwarded-user" {
                assert!(r.blocks(&name), "{}", e.name);
            }
            if e.prefix {
                let member = HeaderName::from_bytes(format!("{}x", e.name).as_bytes()).unwrap();
                assert!(r.blocks(&member), "{member}");
            }
        }
    }

    /// `docs/HEADERS.md` lists every entry of both tables, families with a `*`.
    #[test]
    fn the_catalogue_lists_every_entry() {
        let doc = include_str!("../../docs/HEADERS.md");
        for e in PROTECTED.iter().chain(DEFAULT_STRIPPED) {
            let shown = format!("`{}{}`", e.name, if e.prefix { "*" } else { "" });
            assert!(doc.contains(&shown), "{shown} missing in docs/HEADERS.md");
        }
    }

    #[test]
    fn protected_names_cannot_be_kept() {
        for name in ["x-vakt-loa", "x_vakt_loa", "x-forwarded-for", "x-real-ip"] {
            assert!(is_protected(
                &HeaderName::from_bytes(name.as_bytes()).unwrap()
            ));
        }
        assert!(!is_protected(&HeaderName::from_static("x-forwarded-user")));
        // keep_headers naming a protected name changes nothing.
        let r = HeaderRules::new(
            &HygieneConfig::default(),
            vec![],
            vec![HeaderName::from_static("x-vakt-loa")],
        );
        assert!(r.blocks(&HeaderName::from_static("x-vakt-loa")));
    }

    #[test]
    fn apply_removes_every_line_and_reports_a_refusal() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x_vakt_loa", "high"),
            ("x-envoy-original-path", "/admin"),
            ("x-envoy-original-path", "/admin2"),
            ("accept", "*/*"),
        ] {
            h.append(HeaderName::from_static(k), v.parse().unwrap());
        }
        let mut allowed = h.clone();
        rules(UnderscoreHeaders::Allow).apply(&mut allowed).unwrap();
        assert_eq!(allowed.len(), 1);
        assert_eq!(allowed["accept"], "*/*");
        let err = rules(UnderscoreHeaders::Reject).apply(&mut h).unwrap_err();
        assert_eq!(err.0.as_str(), "x_vakt_loa");
    }
}

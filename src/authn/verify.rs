//! Access-token verification, fail closed with one reason per failure (RFC 8725, RFC 9068).
//! `jsonwebtoken` checks the signature and registered claims; the strict checks it does not do
//! (canonical base64url, header allow-list, `crit`, `typ`, duplicate members, ID-token markers,
//! key/alg match, issued-in-future, lifetime) are here. A verified-token cache keyed by the
//! token's SHA-256 makes a repeated token cost a lookup; a hit still needs the same key material
//! published under the same kid.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Uri};
use serde_json::Value;

use super::dpop::{IssuerProofRules, ProofChecker};
use super::jwks::{IssuerKeys, VerifyKey};
use super::jws::{decode_segment, parse_object};
use super::{Alg, OidcConfig, Principal, TokenError};
use crate::metrics as m;

/// Header parameters an access token may carry. Anything else (`jku`, `x5u`, `jwk`, `x5c`, ...)
/// is refused: keys come only from the issuer's discovered JWKS.
const HEADER_ALLOW_LIST: &[&str] = &["alg", "typ", "kid", "x5t", "x5t#S256", "cty"];
/// Claims that mark an ID token (or an OIDC front-channel artefact).
const ID_TOKEN_MARKERS: &[&str] = &["nonce", "at_hash", "c_hash", "s_hash"];

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A parameter name as an application decodes it (form-urlencoded: `+` is a space, `%XX` a
/// byte); an invalid escape stays as written.
fn form_decode(name: &str) -> Vec<u8> {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Whether the query has an `access_token` parameter (RFC 6750 §2.3), with or without a value,
/// however its name is written: percent-encoded, `+` or surrounding whitespace, any case.
/// Parameters are split on `&` and `;`, as some frameworks do.
fn query_has_access_token(query: &str) -> bool {
    query.split(['&', ';']).any(|pair| {
        let name = pair.split('=').next().unwrap_or_default();
        form_decode(name)
            .trim_ascii()
            .eq_ignore_ascii_case(b"access_token")
    })
}

/// How the client presented its access token (RFC 6750 §2.1, RFC 9449 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    /// With a proof in the `DPoP` header.
    Dpop,
}

/// The access token of a request and its scheme: `Ok(None)` when there is none.
pub fn extract_token<'a>(
    headers: &'a HeaderMap,
    uri: &Uri,
    max_bytes: usize,
) -> Result<Option<(Scheme, &'a str)>, TokenError> {
    if uri.query().is_some_and(query_has_access_token) {
        return Err(TokenError::TokenInQuery);
    }
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(TokenError::MultipleAuthorization);
    }
    if value.len() > max_bytes {
        return Err(TokenError::TooLarge);
    }
    let value = value.to_str().map_err(|_| TokenError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(TokenError::NotBearer)?;
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Scheme::Dpop
    } else {
        return Err(TokenError::NotBearer);
    };
    let token = token.trim_start_matches(' ');
    if token.is_empty() || token.contains(' ') {
        return Err(TokenError::Malformed);
    }
    Ok(Some((scheme, token)))
}

fn normalise_typ(t: &str) -> String {
    let t = t.to_ascii_lowercase();
    t.strip_prefix("application/")
        .map(str::to_owned)
        .unwrap_or(t)
}

struct Cached {
    principal: Arc<Principal>,
    issuer: usize,
    kid: String,
    /// RFC 7638 thumbprint of the key that verified the token.
    thumbprint: String,
}

pub struct Verifier {
    issuers: Vec<Arc<IssuerKeys>>,
    /// Each issuer's DPoP rules, by the issuer's index.
    proof_rules: Vec<IssuerProofRules>,
    proofs: ProofChecker,
    /// The proof algorithms of every issuer, space-separated, for `DPoP` challenges.
    proof_algs: String,
    cache: quick_cache::sync::Cache<[u8; 32], Arc<Cached>>,
    pub max_token_bytes: usize,
    /// `vakt_token_cache_lookups_total` for hits and misses, registered once.
    cache_hits: metrics::Counter,
    cache_misses: metrics::Counter,
}

impl Verifier {
    /// Call after [`crate::metrics::install`]: the metric handles are registered here.
    pub fn new(issuers: Vec<Arc<IssuerKeys>>, config: &OidcConfig) -> Self {
        let proof_rules = issuers
            .iter()
            .map(|i| IssuerProofRules::new(&i.config, &config.dpop))
            .collect::<Vec<_>>();
        let mut algs: Vec<Alg> = proof_rules
            .iter()
            .flat_map(|r| r.algorithms.iter().copied())
            .collect();
        algs.sort();
        algs.dedup();
        Self {
            issuers,
            proof_rules,
            proofs: ProofChecker::new(&config.dpop, None),
            proof_algs: algs
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            cache: quick_cache::sync::Cache::new(config.verified_token_cache),
            max_token_bytes: config.max_token_bytes,
            cache_hits: metrics::counter!(m::TOKEN_CACHE, "result" => "hit"),
            cache_misses: metrics::counter!(m::TOKEN_CACHE, "result" => "miss"),
        }
    }

    /// Nonces made with this shared secret, so that replicas accept each other's.
    pub fn with_nonce_secret(mut self, config: &OidcConfig, secret: &[u8]) -> Self {
        self.proofs = ProofChecker::new(&config.dpop, Some(secret));
        self
    }

    pub fn issuers(&self) -> &[Arc<IssuerKeys>] {
        &self.issuers
    }

    /// The DPoP rules of the issuer at `index`.
    pub fn proof_rules(&self, index: usize) -> &IssuerProofRules {
        &self.proof_rules[index]
    }

    pub fn proofs(&self) -> &ProofChecker {
        &self.proofs
    }

    /// Space-separated proof algorithms, for the `algs` of a `DPoP` challenge.
    pub fn proof_algs(&self) -> &str {
        &self.proof_algs
    }

    /// Verify `token` and map its claims to a principal; with the index of its issuer.
    pub async fn verify(
        &self,
        token: &str,
    ) -> Result<(usize, Arc<Principal>), (Option<usize>, TokenError)> {
        let hash: [u8; 32] = {
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
            let mut out = [0u8; 32];
            out.copy_from_slice(d.as_ref());
            out
        };
        if let Some(hit) = self.cache.get(&hash) {
            // Still valid, and the very key that verified it still published under its kid: a
            // retired key ends cached tokens, and so does a kid re-published with other material
            // (the token is then verified again, against the new key).
            if hit.principal.expires_at > now()
                && matches!(
                    self.issuers[hit.issuer].lookup(&hit.kid),
                    super::jwks::KeyLookup::Found(key) if key.thumbprint == hit.thumbprint
                )
            {
                self.cache_hits.increment(1);
                return Ok((hit.issuer, hit.principal.clone()));
            }
            self.cache.remove(&hash);
        }
        self.cache_misses.increment(1);
        let (issuer, key, principal) = self.verify_uncached(token).await?;
        let principal = Arc::new(principal);
        self.cache.insert(
            hash,
            Arc::new(Cached {
                principal: principal.clone(),
                issuer,
                kid: key.kid.clone(),
                thumbprint: key.thumbprint.clone(),
            }),
        );
        Ok((issuer, principal))
    }

    async fn verify_uncached(
        &self,
        token: &str,
    ) -> Result<(usize, Arc<VerifyKey>, Principal), (Option<usize>, TokenError)> {
        let parts: Vec<&str> = token.split('.').collect();
        let [header_b64, payload_b64, signature_b64] = parts.as_slice() else {
            return Err((None, TokenError::Malformed));
        };
        // Every segment is checked for its canonical encoding before anything is parsed as
        // JSON or handed to jsonwebtoken.
        let header = decode_segment(header_b64).map_err(|e| (None, e))?;
        let payload = decode_segment(payload_b64).map_err(|e| (None, e))?;
        decode_segment(signature_b64).map_err(|e| (None, e))?;
        let header = parse_object(&header).map_err(|e| (None, e))?;
        let payload = parse_object(&payload).map_err(|e| (None, e))?;
        if header.contains_key("crit") {
            return Err((None, TokenError::Crit));
        }
        if header
            .keys()
            .any(|k| !HEADER_ALLOW_LIST.contains(&k.as_str()))
        {
            return Err((None, TokenError::HeaderNotAllowed));
        }
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or((None, TokenError::Malformed))?;
        let iss = payload
            .get("iss")
            .and_then(Value::as_str)
            .ok_or((None, TokenError::MissingClaim))?;
        let index = self
            .issuers
            .iter()
            .position(|i| i.config.issuer == iss)
            .ok_or((None, TokenError::UnknownIssuer))?;
        let fail = |e| (Some(index), e);
        let keys = &self.issuers[index];
        let config = &keys.config;
        let alg = Alg::parse(alg)
            .filter(|a| config.algorithms.contains(a))
            .ok_or(fail(TokenError::AlgNotAllowed))?;
        let typ = header.get("typ").and_then(Value::as_str).map(normalise_typ);
        if !typ
            .as_deref()
            .is_some_and(|t| config.token_types.iter().any(|a| normalise_typ(a) == t))
        {
            return Err(fail(TokenError::WrongType));
        }
        if ID_TOKEN_MARKERS.iter().any(|k| payload.contains_key(*k)) {
            return Err(fail(TokenError::IdToken));
        }
        // A key-bound token (RFC 7800 `cnf`) is accepted only bound by DPoP thumbprint; the
        // stage then refuses it as Bearer and demands its proof.
        let dpop_jkt = match payload.get("cnf") {
            None => None,
            Some(cnf) => Some(
                cnf.as_object()
                    .filter(|c| c.len() == 1)
                    .and_then(|c| c.get("jkt"))
                    .and_then(Value::as_str)
                    .filter(|jkt| jkt.len() == 43 && decode_segment(jkt).is_ok())
                    .map(Arc::from)
                    .ok_or(fail(TokenError::BoundToken))?,
            ),
        };
        let kid = header
            .get("kid")
            .and_then(Value::as_str)
            .ok_or(fail(TokenError::UnknownKey))?;
        let key = keys.key(kid).await.map_err(fail)?;
        let curve_ok = match alg {
            Alg::ES256 => key.crv.as_deref() == Some("P-256"),
            Alg::ES384 => key.crv.as_deref() == Some("P-384"),
            _ => true,
        };
        if key.kty != alg.key_type() || key.alg.is_some_and(|a| a != alg) || !curve_ok {
            return Err(fail(TokenError::KeyAlgMismatch));
        }

        let mut validation = jsonwebtoken::Validation::new(alg.jsonwebtoken());
        validation.leeway = config.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[config.issuer.as_str()]);
        validation.set_audience(&config.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        if let Err(e) = jsonwebtoken::decode::<Value>(token, &key.decoding, &validation) {
            use jsonwebtoken::errors::ErrorKind as K;
            return Err(fail(match e.kind() {
                K::InvalidSignature => TokenError::BadSignature,
                K::ExpiredSignature => TokenError::Expired,
                K::ImmatureSignature => TokenError::NotYetValid,
                K::InvalidAudience => TokenError::WrongAudience,
                K::InvalidIssuer => TokenError::UnknownIssuer,
                K::MissingRequiredClaim(_) => TokenError::MissingClaim,
                K::InvalidAlgorithm | K::InvalidAlgorithmName | K::InvalidKeyFormat => {
                    TokenError::KeyAlgMismatch
                }
                _ => TokenError::Malformed,
            }));
        }
        let now = now();
        let leeway = config.leeway.as_secs() as i64;
        let exp = payload
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or(fail(TokenError::MissingClaim))?;
        let iat = match payload.get("iat") {
            None => None,
            Some(v) => Some(v.as_i64().ok_or(fail(TokenError::Malformed))?),
        };
        if iat.is_some_and(|iat| iat > now + leeway) {
            return Err(fail(TokenError::IssuedInFuture));
        }
        if exp - iat.unwrap_or(now) > config.max_token_lifetime.as_secs() as i64 {
            return Err(fail(TokenError::LifetimeTooLong));
        }
        let mut principal = config
            .profile
            .principal(config.issuer.as_str().into(), payload, exp);
        principal.dpop_jkt = dpop_jkt;
        Ok((index, key, principal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use std::collections::BTreeMap;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(http::header::AUTHORIZATION, v.parse().unwrap());
        }
        h
    }

    type Row<'a> = (
        Vec<&'a str>,
        &'a str,
        Result<Option<(Scheme, &'a str)>, TokenError>,
    );

    #[test]
    fn token_extraction_reads_the_scheme_and_refuses_everything_else() {
        let cases: Vec<Row> = vec![
            (vec![], "/p", Ok(None)),
            (
                vec!["Bearer abc.def.ghi"],
                "/p",
                Ok(Some((Scheme::Bearer, "abc.def.ghi"))),
            ),
            (vec!["bearer abc"], "/p", Ok(Some((Scheme::Bearer, "abc")))),
            (vec!["BEARER  abc"], "/p", Ok(Some((Scheme::Bearer, "abc")))),
            (vec!["Basic dXNlcjpwYXNz"], "/p", Err(TokenError::NotBearer)),
            (vec!["DPoP abc"], "/p", Ok(Some((Scheme::Dpop, "abc")))),
            (vec!["dpop abc"], "/p", Ok(Some((Scheme::Dpop, "abc")))),
            (vec!["DPoP"], "/p", Err(TokenError::NotBearer)),
            (vec!["Bearer"], "/p", Err(TokenError::NotBearer)),
            (vec!["Bearer "], "/p", Err(TokenError::Malformed)),
            (vec!["Bearer a b"], "/p", Err(TokenError::Malformed)),
            (
                vec!["Bearer a", "Bearer b"],
                "/p",
                Err(TokenError::MultipleAuthorization),
            ),
            (vec![], "/p?access_token=abc", Err(TokenError::TokenInQuery)),
            (
                vec!["Bearer a"],
                "/p?x=1&ACCESS_TOKEN=abc",
                Err(TokenError::TokenInQuery),
            ),
        ];
        for (values, uri, expected) in cases {
            let h = headers(&values);
            let uri: Uri = uri.parse().unwrap();
            assert_eq!(extract_token(&h, &uri, 100), expected, "{values:?} {uri}");
        }
        let long = format!("Bearer {}", "a".repeat(200));
        assert_eq!(
            extract_token(&headers(&[&long]), &"/".parse().unwrap(), 100),
            Err(TokenError::TooLarge)
        );
    }

    fn decode_part(part: &str) -> Result<BTreeMap<String, Value>, TokenError> {
        parse_object(&decode_segment(part)?)
    }

    #[test]
    fn an_access_token_parameter_is_found_however_its_name_is_written() {
        let refused = [
            "access_token=abc",
            "ACCESS_TOKEN=abc",
            "Access_Token=abc",
            "x=1&access_token=abc",
            "access_token",
            "access_token=",
            "x=1&access_token",
            "access%5Ftoken=abc",
            "access%5ftoken=abc",
            "%61ccess_token=abc",
            "%41%43%43%45%53%53%5F%54%4F%4B%45%4E=abc",
            "access_token+=abc",
            "+access_token=abc",
            "%20access_token%20=abc",
            "access_token%09=abc",
            "x=1;access_token=abc",
            "a=b&&access_token=abc",
            "access_token=abc=def",
        ];
        for query in refused {
            assert!(query_has_access_token(query), "{query}");
            let uri: Uri = format!("/p?{query}").parse().unwrap();
            assert_eq!(
                extract_token(&headers(&[]), &uri, 100),
                Err(TokenError::TokenInQuery),
                "{query}"
            );
        }
        let allowed = [
            "",
            "x=access_token",
            "access_tokens=abc",
            "my_access_token=abc",
            "access+token=abc",
            "access-token=abc",
            "access%255Ftoken=abc",
            "access_token%",
            "access%5Gtoken=abc",
            "token=abc",
        ];
        for query in allowed {
            assert!(!query_has_access_token(query), "{query}");
        }
        assert_eq!(form_decode("a%2"), b"a%2");
        assert_eq!(form_decode("a+%2B%zz"), b"a +%zz");
    }

    #[test]
    fn parts_refuse_duplicates_and_junk() {
        let enc = |s: &str| URL_SAFE_NO_PAD.encode(s);
        assert!(decode_part(&enc(r#"{"a":1,"b":2}"#)).is_ok());
        assert_eq!(
            decode_part(&enc(r#"{"a":1,"a":2}"#)),
            Err(TokenError::DuplicateMember)
        );
        assert_eq!(decode_part(&enc("[1]")), Err(TokenError::Malformed));
        assert_eq!(
            decode_part(&enc(r#"{"a":1} x"#)),
            Err(TokenError::Malformed)
        );
        assert_eq!(decode_part("e30="), Err(TokenError::NonCanonicalEncoding));
        assert_eq!(decode_part(""), Err(TokenError::Malformed));
        assert_eq!(normalise_typ("application/AT+JWT"), "at+jwt");
    }

    #[test]
    fn segments_have_exactly_one_encoding() {
        // 0xFB: canonical "-w"; 0xFB 0xFF: canonical "-_8"; 0xFB 0xFF 0xBF: canonical "-_-_".
        assert_eq!(decode_segment("-w"), Ok(vec![0xFB]));
        assert_eq!(decode_segment("-_8"), Ok(vec![0xFB, 0xFF]));
        assert_eq!(decode_segment("-_-_"), Ok(vec![0xFB, 0xFF, 0xBF]));
        let refused = [
            "-w==",      // padding
            "-_8=",      // padding
            "-w=",       // padding, impossible length
            "+_8",       // standard alphabet
            "-/8",       // standard alphabet
            "+/+/",      // standard alphabet, the same bytes as "-_-_"
            "-_ 8",      // space
            "-_\t8",     // tab
            "-_\n8",     // newline
            "-_8.",      // not in the alphabet
            "-_8%3D",    // percent-encoded padding
            "-x",        // trailing bits set: decodes to 0xFB like "-w"
            "-z",        // trailing bits set
            "-_9",       // trailing bits set: decodes to 0xFB 0xFF like "-_8"
            "-__",       // trailing bits set
            "-_-_-",     // impossible length
            "\u{00e9}w", // not ASCII
        ];
        for segment in refused {
            assert_eq!(
                decode_segment(segment),
                Err(TokenError::NonCanonicalEncoding),
                "{segment:?}"
            );
        }
        assert_eq!(decode_segment(""), Err(TokenError::Malformed));
        // What the canonical encoder makes is accepted, for every length remainder.
        for len in 1..9u8 {
            let bytes: Vec<u8> = (0..len).map(|b| b.wrapping_mul(97) | 0x81).collect();
            assert_eq!(decode_segment(&URL_SAFE_NO_PAD.encode(&bytes)), Ok(bytes));
        }
    }
}

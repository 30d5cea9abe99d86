//! Compact JWS segments read strictly, for access tokens and DPoP proofs alike: each segment
//! in its one canonical base64url form, headers and claims as JSON objects without duplicate
//! members, so that no other JWT library can read them differently.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserializer;
use serde_json::Value;

use super::error::TokenError;

/// The value of one base64url character, `None` outside the URL-safe alphabet.
fn sextet(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

/// Decode one JWS segment, accepting only its canonical form (RFC 7515 §2: URL-safe alphabet,
/// no padding; RFC 4648 §3.5: the unused bits of the last character are zero), so a token has
/// exactly one encoding and no decoder downstream can read it differently.
pub fn decode_segment(part: &str) -> Result<Vec<u8>, TokenError> {
    let bytes = part.as_bytes();
    let Some(&last) = bytes.last() else {
        return Err(TokenError::Malformed);
    };
    if bytes.len() % 4 == 1 || !bytes.iter().all(|b| sextet(*b).is_some()) {
        return Err(TokenError::NonCanonicalEncoding);
    }
    let unused_bits = match bytes.len() % 4 {
        2 => 0b1111,
        3 => 0b0011,
        _ => 0,
    };
    if sextet(last).is_none_or(|v| v & unused_bits != 0) {
        return Err(TokenError::NonCanonicalEncoding);
    }
    let decoded = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::NonCanonicalEncoding)?;
    // The definition itself: re-encoding gives back exactly the segment.
    if URL_SAFE_NO_PAD.encode(&decoded) != part {
        return Err(TokenError::NonCanonicalEncoding);
    }
    Ok(decoded)
}

/// A decoded header or payload as a JSON object without duplicate members.
pub fn parse_object(bytes: &[u8]) -> Result<BTreeMap<String, Value>, TokenError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let map = object_without_duplicates(&mut de).map_err(|e| {
        if e.to_string().contains("duplicate member") {
            TokenError::DuplicateMember
        } else {
            TokenError::Malformed
        }
    })?;
    de.end().map_err(|_| TokenError::Malformed)?;
    Ok(map)
}

/// Deserialize a JSON object, refusing duplicate member names (serde_json keeps the last one).
fn object_without_duplicates<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Value>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = BTreeMap<String, Value>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = map.next_entry::<String, Value>()? {
                if out.insert(k.clone(), v).is_some() {
                    return Err(serde::de::Error::custom(format!("duplicate member {k:?}")));
                }
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
}

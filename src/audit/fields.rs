//! The checked field types of an audit event: bounded strings that cannot hold a token, keyed
//! pseudonyms, the enums, event ids and chain hashes.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::pseudonym::{KIND_NATIONAL_ID, KIND_SUBJECT, Pseudonymiser};

/// A value refused by one of the checked field types. Never holds the value itself (it may be a
/// token or personal data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid {what}: {why}")]
pub struct FieldError {
    pub what: &'static str,
    pub why: &'static str,
}

/// The text of a checked field: a static string (reason codes, methods, levels) or one shared
/// with where it came from (route ids and templates, SPIFFE IDs, issuers, a principal's
/// identifiers and pseudonyms). An event is built on the request path and dropped on the writer
/// thread; sharing spares a dozen string copies per event there and a dozen frees here.
#[derive(Clone)]
enum FieldText {
    Static(&'static str),
    Shared(Arc<str>),
}

impl FieldText {
    fn as_str(&self) -> &str {
        match self {
            Self::Static(s) => s,
            Self::Shared(s) => s,
        }
    }
}

impl fmt::Debug for FieldText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq for FieldText {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for FieldText {}

impl PartialOrd for FieldText {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for FieldText {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::hash::Hash for FieldText {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $what:literal, $check:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(FieldText);

        impl $name {
            /// The value, if it passes the check.
            pub fn new(value: impl Into<String>) -> Result<Self, FieldError> {
                let value = value.into();
                match $check(&value) {
                    Ok(()) => Ok(Self(FieldText::Shared(value.into()))),
                    Err(why) => Err(FieldError { what: $what, why }),
                }
            }

            /// The value if it passes the check, else the placeholder `invalid`: for the
            /// request path, where an event must be emitted whatever the input was. Nothing of a
            /// refused value is kept (not even a prefix).
            pub fn sanitized(value: &str) -> Self {
                match $check(value) {
                    Ok(()) => Self(FieldText::Shared(value.into())),
                    Err(_) => Self::invalid(),
                }
            }

            /// As [`Self::sanitized`], for a static string: nothing is copied.
            pub fn sanitized_static(value: &'static str) -> Self {
                match $check(value) {
                    Ok(()) => Self(FieldText::Static(value)),
                    Err(_) => Self::invalid(),
                }
            }

            /// As [`Self::sanitized`], sharing `value` instead of copying it.
            pub fn sanitized_shared(value: &Arc<str>) -> Self {
                match $check(value) {
                    Ok(()) => Self(FieldText::Shared(value.clone())),
                    Err(_) => Self::invalid(),
                }
            }

            fn invalid() -> Self {
                Self(FieldText::Static("invalid"))
            }

            /// Any static text, unchecked: for tests of how the writer escapes what the checks
            /// would refuse.
            #[cfg(test)]
            #[allow(dead_code, reason = "made for every checked type, used for some")]
            pub(super) fn unchecked(value: &'static str) -> Self {
                Self(FieldText::Static(value))
            }

            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = FieldError;
            fn from_str(s: &str) -> Result<Self, FieldError> {
                Self::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let value = String::deserialize(d)?;
                Self::new(value).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// Longest [`Label`]: an access token never fits.
pub const LABEL_MAX: usize = 128;
/// Longest [`Text`].
pub const TEXT_MAX: usize = 2048;

fn check_label(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > LABEL_MAX {
        return Err("must be 1 to 128 characters");
    }
    if !s.bytes().all(|b| {
        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-' | b'/' | b'@' | b'+')
    }) {
        return Err("only letters, digits and . _ : - / @ + are allowed");
    }
    Ok(())
}

fn check_text(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > TEXT_MAX {
        return Err("must be 1 to 2048 characters");
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("only visible ASCII characters are allowed");
    }
    Ok(())
}

fn check_pseudonym(s: &str) -> Result<(), &'static str> {
    const WHY: &str = "expected <key id>:<43 base64url characters>";
    let Some((key_id, mac)) = s.split_once(':') else {
        return Err(WHY);
    };
    let key_ok = (1..=16).contains(&key_id.len())
        && key_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    let mac_ok = mac.len() == 43
        && mac
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if key_ok && mac_ok { Ok(()) } else { Err(WHY) }
}

checked_string!(
    /// A short code or identifier: 1 to 128 characters of `[A-Za-z0-9._:/@+-]`. Reason codes,
    /// route ids, methods, request/trace ids, client ids, `loa`, `amr` values.
    Label,
    "label",
    check_label
);

checked_string!(
    /// Visible ASCII without spaces, 1 to 2048 characters: SPIFFE IDs, issuer URLs, route
    /// templates, canonical paths (already pseudonymised, see [`pseudonymise_path`]).
    Text,
    "text field",
    check_text
);

checked_string!(
    /// A keyed pseudonym, `<key id>:<base64url HMAC-SHA-256>`, as made by [`Pseudonymiser`].
    /// A raw national id or subject cannot be stored here.
    Pseudonym,
    "pseudonym",
    check_pseudonym
);

impl Pseudonym {
    /// The pseudonym of `value` in namespace `kind`.
    pub fn of(p: &Pseudonymiser, kind: &str, value: &str) -> Self {
        // The pseudonymiser's output always has this form (its key id is checked at load); if a
        // caller built one with an odd key id, keep nothing rather than something unchecked.
        Self::sanitized(&p.pseudonym(kind, value))
    }

    /// Pseudonym of a national identity number ([`KIND_NATIONAL_ID`]).
    pub fn national_id(p: &Pseudonymiser, national_id: &str) -> Self {
        Self::of(p, KIND_NATIONAL_ID, national_id)
    }

    /// Pseudonym of a token subject ([`KIND_SUBJECT`]).
    pub fn subject(p: &Pseudonymiser, subject: &str) -> Self {
        Self::of(p, KIND_SUBJECT, subject)
    }
}

// ----------------------------------------------------------------------------------- the enums

/// Which way the audited exchange went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
    /// A TLS handshake refused before any request.
    Handshake,
    /// The trail about itself: an epoch start, a rotated-out file.
    Audit,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
            Self::Handshake => "handshake",
            Self::Audit => "audit",
        }
    }
}

/// What was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
    /// Dry-run: let through, but the policy would have denied it.
    WouldDeny,
    /// Refused before the policy: malformed request, refused handshake or egress.
    Refused,
    /// Not a decision: a record the trail keeps about itself.
    Recorded,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::WouldDeny => "would_deny",
            Self::Refused => "refused",
            Self::Recorded => "recorded",
        }
    }

    /// Deny or refused: the request did not reach the app.
    pub fn is_denial(self) -> bool {
        matches!(self, Self::Deny | Self::Refused)
    }
}

/// How an exchange ended, whatever was decided about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The response was sent whole.
    Completed,
    /// The client went away (reset the stream, closed the connection, broke off its request
    /// body) before the response was complete.
    ClientAborted,
    /// The app or the remote sidecar failed: vakt answered 502, or the response body broke off
    /// from upstream.
    UpstreamError,
    /// The app or the remote sidecar did not answer in time: vakt answered 504.
    Timeout,
    /// vakt answered a refusal itself (policy denial, refused token, bad request, ...).
    Refused,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::ClientAborted => "client_aborted",
            Self::UpstreamError => "upstream_error",
            Self::Timeout => "timeout",
            Self::Refused => "refused",
        }
    }
}

/// The action class of a request, from its method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Read,
    Create,
    Update,
    Delete,
    Other,
}

impl Action {
    /// GET/HEAD/OPTIONS → read, POST → create, PUT/PATCH → update, DELETE → delete, anything
    /// else → other. Methods are case-sensitive (RFC 9110 §9.1).
    pub fn from_method(method: &str) -> Self {
        match method {
            "GET" | "HEAD" | "OPTIONS" => Self::Read,
            "POST" => Self::Create,
            "PUT" | "PATCH" => Self::Update,
            "DELETE" => Self::Delete,
            _ => Self::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Create => "create",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Other => "other",
        }
    }
}

// ------------------------------------------------------------------------- ids, times, hashes

/// The event id: a random UUID, serialised lowercase hyphenated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventId(pub uuid::Uuid);

impl EventId {
    pub fn new_random() -> Self {
        Self(uuid::Uuid::new_v4())
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(
            self.0
                .hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer()),
        )
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() != 36 {
            return Err(serde::de::Error::custom(
                "event id: expected a hyphenated UUID",
            ));
        }
        uuid::Uuid::parse_str(&s)
            .map(Self)
            .map_err(|_| serde::de::Error::custom("event id: expected a hyphenated UUID"))
    }
}

/// A SHA-256 hash in the chain, serialised as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainHash(pub [u8; 32]);

impl ChainHash {
    /// The `prev` of the first line of a stream.
    pub const ZERO: Self = Self([0; 32]);

    pub fn to_hex(&self) -> String {
        self.hex(&mut [0; 64]).to_owned()
    }

    /// The 64 lowercase hex digits, written into `buf` (every event's `prev` is formatted by
    /// the writer thread: no heap string for it).
    pub fn hex<'b>(&self, buf: &'b mut [u8; 64]) -> &'b str {
        match hex::encode_to_slice(self.0, buf) {
            Ok(()) => std::str::from_utf8(buf).unwrap_or_default(),
            Err(_) => "", // unreachable: 32 bytes are 64 digits
        }
    }

    pub fn parse_hex(s: &str) -> Option<Self> {
        if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }
}

impl fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainHash({})", self.hex(&mut [0; 64]))
    }
}

impl fmt::Display for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hex(&mut [0; 64]))
    }
}

impl Serialize for ChainHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.hex(&mut [0; 64]))
    }
}

impl<'de> Deserialize<'de> for ChainHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse_hex(&s)
            .ok_or_else(|| serde::de::Error::custom("prev: expected 64 lowercase hex digits"))
    }
}

/// How an epoch began without a link to the line before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpochStart {
    /// The last checkpoint names lines, but no audit file holds any line.
    FilesMissing,
    /// The audit files end before the last checkpointed line.
    Truncated,
    /// The line at the checkpointed `seq` is not the one checkpointed, or a line after it does
    /// not verify.
    HeadMismatch,
    /// Audit lines exist but no checkpoint does: nothing to vouch for them against.
    CheckpointMissing,
    /// The files end with a `vakt.audit/1` line (first start after an upgrade): the keyed chain
    /// starts here. Not a break.
    UpgradedFromV1,
}

impl EpochStart {
    pub const ALL: [Self; 5] = [
        Self::FilesMissing,
        Self::Truncated,
        Self::HeadMismatch,
        Self::CheckpointMissing,
        Self::UpgradedFromV1,
    ];

    /// Metric label and JSON value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FilesMissing => "files_missing",
            Self::Truncated => "truncated",
            Self::HeadMismatch => "head_mismatch",
            Self::CheckpointMissing => "checkpoint_missing",
            Self::UpgradedFromV1 => "upgraded_from_v1",
        }
    }

    /// Continuity was lost (counted in `vakt_audit_chain_breaks_total`).
    pub fn is_break(self) -> bool {
        !matches!(self, Self::UpgradedFromV1)
    }
}

/// What the trail records about itself (the `chain` member): an epoch start and the gap it
/// names, or the range of a rotated-out file. Every member optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainNote {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch_start: Option<EpochStart>,
    /// The epoch before this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_epoch: Option<u64>,
    /// The last checkpointed `seq` found at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_seq: Option<u64>,
    /// The last `seq` found in the audit files at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found_seq: Option<u64>,
    /// The first and last `seq` of an audit file that rotation deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_first_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_last_seq: Option<u64>,
}

impl ChainNote {
    /// Append `{...}` as `serde_json` writes it (members in declaration order, absent ones
    /// left out).
    pub fn write_json(&self, out: &mut String) {
        let mut first = true;
        let mut member = |out: &mut String, key: &str, value: &str| {
            out.push_str(if first { "\"" } else { ",\"" });
            first = false;
            out.push_str(key);
            out.push_str("\":");
            out.push_str(value);
        };
        out.push('{');
        if let Some(start) = self.epoch_start {
            member(out, "epoch_start", &format!("\"{}\"", start.as_str()));
        }
        for (key, value) in [
            ("prev_epoch", self.prev_epoch),
            ("checkpoint_seq", self.checkpoint_seq),
            ("found_seq", self.found_seq),
            ("rotated_first_seq", self.rotated_first_seq),
            ("rotated_last_seq", self.rotated_last_seq),
        ] {
            if let Some(v) = value {
                member(out, key, itoa::Buffer::new().format(v));
            }
        }
        out.push('}');
    }
}

//! The audit event: one per request decision, refused handshake or refused egress.
//!
//! The type is built so that it cannot carry a token, a raw national id or a body: there is no
//! free-form map, every text field is a checked newtype with a bounded length and character set
//! (an access token is longer than any [`Label`] and a JWT never fits), and personal identifiers
//! only enter as a [`Pseudonym`], which is either made by the keyed [`Pseudonymiser`] or parsed
//! from the exact `<key id>:<43 base64url chars>` form it produces. Error messages about rejected
//! values never repeat the value.
//!
//! The wire format is documented in `docs/audit-event.schema.json` (JSON Schema 2020-12); a test
//! keeps the two in step.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::pseudonym::Pseudonymiser;

/// The schema tag every event carries (`"schema"`). Bump on any incompatible change.
pub const SCHEMA: &str = "vakt.audit/1";

/// Pseudonym namespace of national identity numbers (the one the policy stage uses for the
/// `x-vakt-national-id-pseudonym` header, so audit and app see the same pseudonym).
pub const KIND_NATIONAL_ID: &str = "national_id";
/// Pseudonym namespace of token subjects (`sub`).
pub const KIND_SUBJECT: &str = "subject";

/// A value refused by one of the checked field types. Never holds the value itself (it may be a
/// token or personal data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid {what}: {why}")]
pub struct FieldError {
    pub what: &'static str,
    pub why: &'static str,
}

// ------------------------------------------------------------------------------ checked strings

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
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
            Self::Handshake => "handshake",
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
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::WouldDeny => "would_deny",
            Self::Refused => "refused",
        }
    }

    /// Deny or refused: the request did not reach the app.
    pub fn is_denial(self) -> bool {
        matches!(self, Self::Deny | Self::Refused)
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

/// The schema tag: serialises as [`SCHEMA`], refuses any other value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SchemaTag;

impl Serialize for SchemaTag {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(SCHEMA)
    }
}

impl<'de> Deserialize<'de> for SchemaTag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == SCHEMA {
            Ok(Self)
        } else {
            Err(serde::de::Error::custom(format_args!(
                "unsupported schema (expected {SCHEMA})"
            )))
        }
    }
}

/// A point in time with millisecond precision, serialised as RFC 3339 UTC with exactly three
/// fractional digits (`2025-01-31T12:00:00.123Z`). Range: 1970-01-01 to 9999-12-31.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// 9999-12-31T23:59:59.999Z in Unix milliseconds.
const MAX_UNIX_MS: i64 = 253_402_300_799_999;

impl Timestamp {
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// Times before 1970 (a broken clock) are clamped to the epoch.
    pub fn from_system_time(t: SystemTime) -> Self {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(MAX_UNIX_MS))
            .unwrap_or(0);
        Self(ms.min(MAX_UNIX_MS))
    }

    pub fn from_unix_millis(ms: i64) -> Option<Self> {
        (0..=MAX_UNIX_MS).contains(&ms).then_some(Self(ms))
    }

    pub fn unix_millis(self) -> i64 {
        self.0
    }

    pub fn to_offset_date_time(self) -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    }

    /// Parse RFC 3339 (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, any offset, converted to UTC and
    /// truncated to milliseconds) or a bare date `YYYY-MM-DD` (midnight UTC), for report windows.
    pub fn parse_rfc3339(s: &str) -> Result<Self, FieldError> {
        parse_rfc3339(s).ok_or(FieldError {
            what: "timestamp",
            why: "expected RFC 3339, e.g. 2025-01-31T12:00:00Z, or a date 2025-01-31",
        })
    }
}

impl From<time::OffsetDateTime> for Timestamp {
    fn from(t: time::OffsetDateTime) -> Self {
        let ms = t.unix_timestamp_nanos().div_euclid(1_000_000);
        Self(i64::try_from(ms).unwrap_or(0).clamp(0, MAX_UNIX_MS))
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        Self::from_system_time(t)
    }
}

impl Timestamp {
    /// `YYYY-MM-DDTHH:MM:SS.mmmZ` written into `buf`: every event carries one, and the writer
    /// thread formats it without `fmt` machinery or 128-bit nanoseconds. Civil date from days
    /// since the epoch by H. Hinnant's `civil_from_days`; the type bounds years to 1970..=9999.
    pub fn rfc3339(self, buf: &mut [u8; 24]) -> &str {
        let ms = self.0.clamp(0, MAX_UNIX_MS);
        let (days, ms_of_day) = (ms / 86_400_000, ms % 86_400_000);
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        let secs = ms_of_day / 1000;
        let mut put = |at: usize, width: usize, mut value: i64| {
            for i in (at..at + width).rev() {
                buf[i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, month);
        put(8, 2, day);
        put(11, 2, secs / 3600);
        put(14, 2, secs / 60 % 60);
        put(17, 2, secs % 60);
        put(20, 3, ms_of_day % 1000);
        for (at, sep) in [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
        ] {
            buf[at] = sep;
        }
        buf[23] = b'Z';
        std::str::from_utf8(buf).unwrap_or("1970-01-01T00:00:00.000Z")
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.rfc3339(&mut [0; 24]))
    }
}

impl FromStr for Timestamp {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, FieldError> {
        Self::parse_rfc3339(s)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.rfc3339(&mut [0; 24]))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

fn digits(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u32, |acc, d| {
        acc.checked_mul(10)?.checked_add(u32::from(d - b'0'))
    })
}

fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = i32::try_from(digits(&b[0..4])?).ok()?;
    let month = time::Month::try_from(u8::try_from(digits(&b[5..7])?).ok()?).ok()?;
    let day = u8::try_from(digits(&b[8..10])?).ok()?;
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    if b.len() == 10 {
        return Some(Timestamp::from(date.midnight().assume_utc()));
    }
    if b.len() < 20 || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let hour = u8::try_from(digits(&b[11..13])?).ok()?;
    let minute = u8::try_from(digits(&b[14..16])?).ok()?;
    let second = u8::try_from(digits(&b[17..19])?).ok()?;
    let mut rest = &b[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        // Keep at most nanoseconds; further digits are dropped (truncation).
        let kept = &frac[..n.min(9)];
        nanos = digits(kept)? * 10u32.pow(9 - u32::try_from(kept.len()).ok()?);
        rest = &frac[n..];
    }
    let offset = match rest {
        [b'Z' | b'z'] => time::UtcOffset::UTC,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = i8::try_from(digits(&[*h1, *h2])?).ok()?;
            let m = i8::try_from(digits(&[*m1, *m2])?).ok()?;
            let (h, m) = if *sign == b'-' { (-h, -m) } else { (h, m) };
            time::UtcOffset::from_hms(h, m, 0).ok()?
        }
        _ => return None,
    };
    let clock = time::Time::from_hms_nano(hour, minute, second, nanos).ok()?;
    let t = time::PrimitiveDateTime::new(date, clock).assume_offset(offset);
    let ms = t.unix_timestamp_nanos().div_euclid(1_000_000);
    Timestamp::from_unix_millis(i64::try_from(ms).ok()?)
}

// ----------------------------------------------------------------------------------- the event

/// One audit record. Built on the request path with [`AuditEvent::new`] and the setters or the
/// public fields; `seq` and `prev` are filled in by the chain writer when the event is written.
///
/// Optional fields are omitted from the JSON when `None` (and `amr` when empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    /// Always [`SCHEMA`].
    pub schema: SchemaTag,
    /// Position in the stream: the first event of a stream is 1, then +1 per event.
    pub seq: u64,
    /// SHA-256 of the previous line of the stream (its bytes without the newline); zeros for
    /// the first line.
    pub prev: ChainHash,
    pub id: EventId,
    pub time: Timestamp,
    pub direction: Direction,
    pub decision: Decision,
    /// Reason code (`rule_matched`, `no_route`, `token_expired`, `unknown_ca`, ...).
    pub reason: Label,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<Label>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<Label>,
    /// Route id from the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Label>,
    /// Index of the rule that held, within the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Label>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// The route's path pattern, e.g. `/patients/{pid}/journal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_template: Option<Text>,
    /// The canonical path with personal-data parameters pseudonymised ([`pseudonymise_path`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<Text>,
    /// The peer's SPIFFE ID (inbound: the caller; outbound: the remote sidecar).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Text>,
    /// Token issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<Text>,
    /// Token client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<Label>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_pseudonym: Option<Pseudonym>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub national_id_pseudonym: Option<Pseudonym>,
    /// Level of assurance (`low`, `substantial`, `high`, `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loa: Option<Label>,
    /// Authentication methods (`amr` claim).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<Label>,
    /// Response status sent to the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

impl AuditEvent {
    /// A new event with a fresh id and the current time; everything optional unset.
    pub fn new(direction: Direction, decision: Decision, reason: Label) -> Self {
        Self {
            schema: SchemaTag,
            seq: 0,
            prev: ChainHash::ZERO,
            id: EventId::new_random(),
            time: Timestamp::now(),
            direction,
            decision,
            reason,
            request_id: None,
            trace_id: None,
            route: None,
            rule: None,
            method: None,
            action: None,
            route_template: None,
            path: None,
            peer: None,
            issuer: None,
            client_id: None,
            subject_pseudonym: None,
            national_id_pseudonym: None,
            loa: None,
            amr: Vec::new(),
            status: None,
            bytes_in: None,
            bytes_out: None,
            duration_ms: None,
        }
    }

    /// Set the method and the action class derived from it.
    pub fn set_method(&mut self, method: &str) {
        self.method = Some(Label::sanitized(method));
        self.action = Some(Action::from_method(method));
    }

    /// As [`Self::set_method`] for a method of the request path: the standard ones are not
    /// copied.
    pub fn set_http_method(&mut self, method: &http::Method) {
        let standard = match method.as_str() {
            "GET" => "GET",
            "HEAD" => "HEAD",
            "POST" => "POST",
            "PUT" => "PUT",
            "DELETE" => "DELETE",
            "PATCH" => "PATCH",
            "OPTIONS" => "OPTIONS",
            "CONNECT" => "CONNECT",
            "TRACE" => "TRACE",
            other => return self.set_method(other),
        };
        self.method = Some(Label::sanitized_static(standard));
        self.action = Some(Action::from_method(standard));
    }

    /// Pseudonymise and set the subject.
    pub fn set_subject(&mut self, p: &Pseudonymiser, subject: &str) {
        self.subject_pseudonym = Some(Pseudonym::subject(p, subject));
    }

    /// Pseudonymise and set the national id.
    pub fn set_national_id(&mut self, p: &Pseudonymiser, national_id: &str) {
        self.national_id_pseudonym = Some(Pseudonym::national_id(p, national_id));
    }
}

// ------------------------------------------------------------------------------ the JSON line

/// `,"name":` — a field's key with its punctuation, as one literal.
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":")
    };
}

impl AuditEvent {
    /// Append this event to `out` as one JSON object without a newline: the bytes of an audit
    /// line, which the chain hashes. The JSON is the same, byte for byte, as `serde_json` makes
    /// from the `Serialize` impl (field order, omitted fields, escapes; a test holds the two
    /// together). It is written directly because the writer thread formats every event, and
    /// serde's per-field machinery and escaping were most of that thread's time.
    pub fn write_json(&self, out: &mut String) {
        // The optional fields' values, when present.
        fn label(l: &Option<Label>) -> Option<&str> {
            l.as_ref().map(Label::as_str)
        }
        fn text(t: &Option<Text>) -> Option<&str> {
            t.as_ref().map(Text::as_str)
        }
        fn pseudonym(p: &Option<Pseudonym>) -> Option<&str> {
            p.as_ref().map(Pseudonym::as_str)
        }

        string(out, "{\"schema\":", SCHEMA);
        number(out, key!("seq"), self.seq);
        string(out, key!("prev"), self.prev.hex(&mut [0; 64]));
        let mut id = uuid::Uuid::encode_buffer();
        string(
            out,
            key!("id"),
            self.id.0.hyphenated().encode_lower(&mut id),
        );
        string(out, key!("time"), self.time.rfc3339(&mut [0; 24]));
        string(out, key!("direction"), self.direction.as_str());
        string(out, key!("decision"), self.decision.as_str());
        string(out, key!("reason"), self.reason.as_str());
        opt_string(out, key!("request_id"), label(&self.request_id));
        opt_string(out, key!("trace_id"), label(&self.trace_id));
        opt_string(out, key!("route"), label(&self.route));
        opt_number(out, key!("rule"), self.rule.map(u64::from));
        opt_string(out, key!("method"), label(&self.method));
        opt_string(out, key!("action"), self.action.map(Action::as_str));
        opt_string(out, key!("route_template"), text(&self.route_template));
        opt_string(out, key!("path"), text(&self.path));
        opt_string(out, key!("peer"), text(&self.peer));
        opt_string(out, key!("issuer"), text(&self.issuer));
        opt_string(out, key!("client_id"), label(&self.client_id));
        let subject = pseudonym(&self.subject_pseudonym);
        opt_string(out, key!("subject_pseudonym"), subject);
        let national_id = pseudonym(&self.national_id_pseudonym);
        opt_string(out, key!("national_id_pseudonym"), national_id);
        opt_string(out, key!("loa"), label(&self.loa));
        if let Some((first, rest)) = self.amr.split_first() {
            out.push_str(key!("amr"));
            out.push('[');
            push_json_string(out, first.as_str());
            for amr in rest {
                out.push(',');
                push_json_string(out, amr.as_str());
            }
            out.push(']');
        }
        opt_number(out, key!("status"), self.status.map(u64::from));
        opt_number(out, key!("bytes_in"), self.bytes_in);
        opt_number(out, key!("bytes_out"), self.bytes_out);
        opt_number(out, key!("duration_ms"), self.duration_ms);
        out.push('}');
    }
}

/// `key` (see [`key!`]) and `value` as a JSON string.
fn string(out: &mut String, key: &str, value: &str) {
    out.push_str(key);
    push_json_string(out, value);
}

/// `key` (see [`key!`]) and `value` as a JSON number.
fn number(out: &mut String, key: &str, value: u64) {
    out.push_str(key);
    out.push_str(itoa::Buffer::new().format(value));
}

/// [`string`], when there is a value (an absent field is left out).
fn opt_string(out: &mut String, key: &str, value: Option<&str>) {
    if let Some(value) = value {
        string(out, key, value);
    }
}

/// [`number`], when there is a value (an absent field is left out).
fn opt_number(out: &mut String, key: &str, value: Option<u64>) {
    if let Some(value) = value {
        number(out, key, value);
    }
}

/// `value` as a JSON string: `"`, `\` and control characters escaped the way `serde_json`
/// does (`\n`, `\u001f`, ...), everything else as it is.
fn push_json_string(out: &mut String, value: &str) {
    out.push('"');
    // Audit values are checked to need no escape, so test that first and copy the value whole;
    // 16 bytes at a time, without a branch per byte.
    let needs_escape = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
    if value
        .as_bytes()
        .chunks(16)
        .all(|chunk| !chunk.iter().fold(false, |any, &b| any | needs_escape(b)))
    {
        out.push_str(value);
        out.push('"');
        return;
    }
    let mut clean = 0;
    for (i, byte) in value.bytes().enumerate() {
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        // Everything before `i` is whole characters: `i` is at an ASCII byte.
        out.push_str(&value[clean..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        } else {
            out.push_str(escape);
        }
        clean = i + 1;
    }
    out.push_str(&value[clean..]);
    out.push('"');
}

// ------------------------------------------------------------------------------------- paths

/// The canonical path with the `{param}` segments named in `params_to_hide` replaced by their
/// pseudonyms (namespace [`KIND_NATIONAL_ID`], so a patient's pseudonym in a path equals their
/// `national_id_pseudonym` elsewhere). See [`pseudonymise_path_with`] for other namespaces.
pub fn pseudonymise_path(
    template: &str,
    canonical: &str,
    params_to_hide: &[&str],
    p: &Pseudonymiser,
) -> String {
    let params: Vec<(&str, &str)> = params_to_hide
        .iter()
        .map(|name| (*name, KIND_NATIONAL_ID))
        .collect();
    pseudonymise_path_with(template, canonical, &params, p)
}

/// Like [`pseudonymise_path`], with a pseudonym namespace per parameter: `(name, kind)`.
///
/// Fails safe: any query string is dropped, and when the path does not have the template's shape
/// (which the router guarantees it has) the template itself is returned, never the raw path.
pub fn pseudonymise_path_with(
    template: &str,
    canonical: &str,
    params: &[(&str, &str)],
    p: &Pseudonymiser,
) -> String {
    let canonical = canonical.split(['?', '#']).next().unwrap_or("");
    let (Some(t_rest), Some(c_rest)) = (template.strip_prefix('/'), canonical.strip_prefix('/'))
    else {
        return template.to_owned();
    };
    let t_segments: Vec<&str> = if t_rest.is_empty() {
        Vec::new()
    } else {
        t_rest.split('/').collect()
    };
    let c_segments: Vec<&str> = if c_rest.is_empty() {
        Vec::new()
    } else {
        c_rest.split('/').collect()
    };
    let mut out: Vec<String> = Vec::with_capacity(c_segments.len());
    for (i, seg) in c_segments.iter().enumerate() {
        match t_segments.get(i) {
            Some(&"**") => {
                // The rest is not named by the template: keep it (it matched the route).
                out.extend(c_segments[i..].iter().map(|s| (*s).to_owned()));
                break;
            }
            Some(t) => {
                if let Some(name) = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                    match params.iter().find(|(n, _)| *n == name) {
                        Some((_, kind)) => out.push(p.pseudonym(kind, seg)),
                        None => out.push((*seg).to_owned()),
                    }
                } else if t == seg {
                    out.push((*seg).to_owned());
                } else {
                    return template.to_owned();
                }
            }
            // A trailing slash: one empty segment more than the template.
            None if i == t_segments.len() && seg.is_empty() && i + 1 == c_segments.len() => {
                out.push(String::new());
            }
            None => return template.to_owned(),
        }
    }
    // Template segments left over: only a trailing `**` may match nothing.
    let consumed = out.len().min(t_segments.len());
    if t_segments[consumed..].iter().any(|t| *t != "**") && out.len() < t_segments.len() {
        return template.to_owned();
    }
    format!("/{}", out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudonymiser() -> Pseudonymiser {
        Pseudonymiser::from_secret("k1", &[7; 32])
    }

    /// An event with every field set.
    pub(crate) fn full_event() -> AuditEvent {
        let p = pseudonymiser();
        let mut e = AuditEvent::new(
            Direction::Inbound,
            Decision::Allow,
            Label::new("rule_matched").unwrap(),
        );
        e.seq = 7;
        e.request_id = Some(Label::new("4f1c2b8e-0d7a-4c55-9a59-0c3d6a1e2b3f").unwrap());
        e.trace_id = Some(Label::new("4bf92f3577b34da6a3ce929d0e0e4736").unwrap());
        e.route = Some(Label::new("journal-read").unwrap());
        e.rule = Some(0);
        e.set_method("GET");
        e.route_template = Some(Text::new("/patients/{pid}/journal").unwrap());
        e.path = Some(
            Text::new(pseudonymise_path(
                "/patients/{pid}/journal",
                "/patients/12345678901/journal",
                &["pid"],
                &p,
            ))
            .unwrap(),
        );
        e.peer = Some(Text::new("spiffe://cluster.local/ns/records/sa/web").unwrap());
        e.issuer = Some(Text::new("https://helseid.example/").unwrap());
        e.client_id = Some(Label::new("a1b2c3d4-records-web").unwrap());
        e.set_subject(&p, "subject-123");
        e.set_national_id(&p, "12345678901");
        e.loa = Some(Label::new("high").unwrap());
        e.amr = vec![Label::new("pwd").unwrap(), Label::new("otp").unwrap()];
        e.status = Some(200);
        e.bytes_in = Some(120);
        e.bytes_out = Some(5400);
        e.duration_ms = Some(12);
        e
    }

    fn schema() -> serde_json::Value {
        serde_json::from_str(include_str!("../../docs/audit-event.schema.json")).unwrap()
    }

    #[test]
    fn schema_and_full_event_have_the_same_keys() {
        let schema = schema();
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(schema["properties"]["schema"]["const"], SCHEMA);
        let props = schema["properties"].as_object().unwrap();
        let event = serde_json::to_value(full_event()).unwrap();
        let event = event.as_object().unwrap();
        let mut in_event: Vec<&String> = event.keys().collect();
        let mut in_schema: Vec<&String> = props.keys().collect();
        in_event.sort();
        in_schema.sort();
        assert_eq!(
            in_event, in_schema,
            "event keys and schema properties differ"
        );
        // Every required property is always present, even in a minimal event.
        let minimal = serde_json::to_value(AuditEvent::new(
            Direction::Handshake,
            Decision::Refused,
            Label::new("unknown_ca").unwrap(),
        ))
        .unwrap();
        let mut required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let mut minimal_keys: Vec<&str> = minimal
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        required.sort_unstable();
        minimal_keys.sort_unstable();
        assert_eq!(required, minimal_keys);
    }

    /// A light check of the full event against the schema's types, enums and bounds (no JSON
    /// Schema validator in the dependency tree).
    #[test]
    fn full_event_matches_schema_types() {
        let schema = schema();
        let event = serde_json::to_value(full_event()).unwrap();
        for (key, value) in event.as_object().unwrap() {
            let prop = &schema["properties"][key];
            let ty = prop["type"].as_str().unwrap();
            match ty {
                "string" => {
                    let s = value
                        .as_str()
                        .unwrap_or_else(|| panic!("{key}: not a string"));
                    if let Some(max) = prop["maxLength"].as_u64() {
                        assert!(s.len() as u64 <= max, "{key}: too long");
                    }
                    if let Some(values) = prop["enum"].as_array() {
                        assert!(values.contains(value), "{key}: {s} not in enum");
                    }
                }
                "integer" => {
                    let n = value
                        .as_u64()
                        .unwrap_or_else(|| panic!("{key}: not an integer"));
                    if let Some(min) = prop["minimum"].as_u64() {
                        assert!(n >= min, "{key}: below minimum");
                    }
                    if let Some(max) = prop["maximum"].as_u64() {
                        assert!(n <= max, "{key}: above maximum");
                    }
                }
                "array" => {
                    assert!(value.is_array(), "{key}: not an array");
                    assert_eq!(prop["items"]["type"], "string");
                }
                other => panic!("{key}: unexpected schema type {other}"),
            }
        }
        // Every enum in the schema matches the Rust enum's names.
        let enum_of = |k: &str| -> Vec<String> {
            schema["properties"][k]["enum"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(enum_of("direction"), ["inbound", "outbound", "handshake"]);
        assert_eq!(
            enum_of("decision"),
            ["allow", "deny", "would_deny", "refused"]
        );
        assert_eq!(
            enum_of("action"),
            ["read", "create", "update", "delete", "other"]
        );
        for d in [
            Direction::Inbound,
            Direction::Outbound,
            Direction::Handshake,
        ] {
            assert_eq!(serde_json::to_value(d).unwrap(), d.as_str());
        }
        for d in [
            Decision::Allow,
            Decision::Deny,
            Decision::WouldDeny,
            Decision::Refused,
        ] {
            assert_eq!(serde_json::to_value(d).unwrap(), d.as_str());
        }
    }

    #[test]
    fn round_trip_and_unknown_fields_refused() {
        let e = full_event();
        let line = serde_json::to_string(&e).unwrap();
        let back: AuditEvent = serde_json::from_str(&line).unwrap();
        assert_eq!(back, e);
        // No free-form fields: an extra key (a token, a body) does not parse.
        let mut v: serde_json::Value = serde_json::from_str(&line).unwrap();
        v["token"] = "eyJhbGciOiJSUzI1NiJ9.e30.sig".into();
        assert!(serde_json::from_value::<AuditEvent>(v).is_err());
        let wrong_schema = line.replace(SCHEMA, "vakt.audit/2");
        assert!(serde_json::from_str::<AuditEvent>(&wrong_schema).is_err());
    }

    #[test]
    fn minimal_event_omits_optional_fields() {
        let e = AuditEvent::new(
            Direction::Handshake,
            Decision::Refused,
            Label::new("unknown_ca").unwrap(),
        );
        let line = serde_json::to_string(&e).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 8, "{line}");
        // Keys in a fixed order, chain fields first.
        let prefix = format!(
            r#"{{"schema":"vakt.audit/1","seq":0,"prev":"{}","id":"#,
            "0".repeat(64)
        );
        assert!(line.starts_with(&prefix), "{line}");
        assert!(
            line.ends_with(
                r#","direction":"handshake","decision":"refused","reason":"unknown_ca"}"#
            ),
            "{line}"
        );
    }

    #[test]
    fn cannot_hold_tokens_or_raw_national_ids() {
        let token = format!(
            "eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCJ9.{}.{}",
            "eyJzdWIiOiIxMjM0NTY3ODkwMSIsImlzcyI6Imh0dHBzOi8vaWRwIn0",
            "a".repeat(86)
        );
        assert!(Label::new(token.as_str()).is_err());
        assert_eq!(Label::sanitized(&token).as_str(), "invalid");
        assert!(Pseudonym::new("12345678901").is_err());
        assert!(Pseudonym::new(token.as_str()).is_err());
        assert!(Text::new("Bearer abc").is_err(), "spaces are refused");
        let err = Label::new(token.as_str()).unwrap_err().to_string();
        assert!(!err.contains("eyJ"), "errors never repeat the value: {err}");
        // A raw national id in the JSON does not parse as a pseudonym.
        let mut v = serde_json::to_value(full_event()).unwrap();
        v["national_id_pseudonym"] = "12345678901".into();
        assert!(serde_json::from_value::<AuditEvent>(v).is_err());
        // The full event, serialised, holds neither the raw national id nor the subject.
        let line = serde_json::to_string(&full_event()).unwrap();
        assert!(!line.contains("12345678901") && !line.contains("subject-123"));
    }

    #[test]
    fn action_from_method() {
        let table = [
            ("GET", Action::Read),
            ("HEAD", Action::Read),
            ("OPTIONS", Action::Read),
            ("POST", Action::Create),
            ("PUT", Action::Update),
            ("PATCH", Action::Update),
            ("DELETE", Action::Delete),
            ("TRACE", Action::Other),
            ("get", Action::Other),
        ];
        for (method, action) in table {
            assert_eq!(Action::from_method(method), action, "{method}");
        }
    }

    #[test]
    fn pseudonymised_paths() {
        let p = pseudonymiser();
        let nid = p.pseudonym(KIND_NATIONAL_ID, "12345678901");
        let table: [(&str, &str, &[&str], String); 8] = [
            (
                "/patients/{pid}/journal",
                "/patients/12345678901/journal",
                &["pid"],
                format!("/patients/{nid}/journal"),
            ),
            // Only the named parameters are hidden.
            (
                "/patients/{pid}/notes/{note}",
                "/patients/12345678901/notes/42",
                &["pid"],
                format!("/patients/{nid}/notes/42"),
            ),
            (
                "/patients/{pid}/journal",
                "/patients/12345678901/journal",
                &[],
                "/patients/12345678901/journal".to_owned(),
            ),
            // `**` keeps the rest; a trailing slash is kept.
            (
                "/patients/{pid}/**",
                "/patients/12345678901/a/b",
                &["pid"],
                format!("/patients/{nid}/a/b"),
            ),
            (
                "/patients/{pid}",
                "/patients/12345678901/",
                &["pid"],
                format!("/patients/{nid}/"),
            ),
            // The query is dropped.
            (
                "/patients/{pid}",
                "/patients/12345678901?nid=12345678901",
                &["pid"],
                format!("/patients/{nid}"),
            ),
            // Shape mismatch: the template, never the raw path.
            (
                "/patients/{pid}/journal",
                "/people/12345678901/journal",
                &["pid"],
                "/patients/{pid}/journal".to_owned(),
            ),
            (
                "/patients/{pid}/journal",
                "/patients/12345678901",
                &["pid"],
                "/patients/{pid}/journal".to_owned(),
            ),
        ];
        for (template, path, hide, want) in table {
            assert_eq!(pseudonymise_path(template, path, hide, &p), want, "{path}");
        }
        assert_eq!(pseudonymise_path("/**", "/", &[], &p), "/");
        assert_eq!(pseudonymise_path("/", "/", &[], &p), "/");
        let sub = p.pseudonym(KIND_SUBJECT, "alice");
        assert_eq!(
            pseudonymise_path_with("/users/{u}", "/users/alice", &[("u", KIND_SUBJECT)], &p),
            format!("/users/{sub}")
        );
        // The pseudonymised path is a valid Text, and matches national_id_pseudonym.
        assert!(Text::new(format!("/patients/{nid}/journal")).is_ok());
        assert_eq!(
            Pseudonym::national_id(&p, "12345678901").as_str(),
            nid.as_str()
        );
    }

    #[test]
    fn shared_and_static_fields_are_checked_like_copied_ones() {
        let shared: Arc<str> = Arc::from("spiffe://cluster.local/ns/a/sa/b");
        let text = Text::sanitized_shared(&shared);
        assert_eq!(text, Text::sanitized(&shared));
        assert_eq!(text.as_str(), &*shared);
        assert_eq!(
            serde_json::to_string(&text).unwrap(),
            serde_json::to_string(&Text::sanitized(&shared)).unwrap()
        );
        // A refused value keeps nothing of itself, however it was handed over.
        let token: Arc<str> = Arc::from(format!("Bearer {}", "e".repeat(300)).as_str());
        for refused in [
            Label::sanitized_shared(&token),
            Label::sanitized_static("has space"),
            Label::sanitized(&token),
        ] {
            assert_eq!(refused.as_str(), "invalid");
        }
        assert_eq!(
            Pseudonym::sanitized_shared(&Arc::from("k1:short")).as_str(),
            "invalid"
        );
        assert_eq!(
            Label::sanitized_static("rule_matched").as_str(),
            "rule_matched"
        );
        // Standard methods are not copied, others are; both record the same as `set_method`.
        for method in ["GET", "DELETE", "PROPFIND", "get"] {
            let m = http::Method::from_bytes(method.as_bytes()).unwrap();
            let mut by_http = full_event();
            by_http.set_http_method(&m);
            let mut by_str = full_event();
            by_str.set_method(method);
            assert_eq!(
                (by_http.method, by_http.action),
                (by_str.method, by_str.action),
                "{method}"
            );
        }
    }

    #[test]
    fn timestamps_format_as_the_calendar_says_across_the_whole_range() {
        let format = |ms: i64| {
            let t = Timestamp::from_unix_millis(ms)
                .unwrap()
                .to_offset_date_time();
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            )
        };
        // Leap days, century and 400-year rules, year and day edges, the last representable ms.
        let mut samples = vec![
            0,
            86_399_999,
            951_782_400_000,   // 2000-02-29
            4_107_456_000_000, // 2100-02-28 (no leap day)
            4_107_542_400_000, // 2100-03-01
            1_709_164_800_000, // 2024-02-29
            1_735_689_599_999, // 2024-12-31T23:59:59.999
            MAX_UNIX_MS,
        ];
        // And a day-spaced walk over 1970..=9999 with a moving time of day.
        samples.extend((0..MAX_UNIX_MS).step_by(86_400_000 * 97 + 3_600_123));
        for ms in samples {
            let t = Timestamp::from_unix_millis(ms).unwrap();
            assert_eq!(t.to_string(), format(ms), "{ms}");
            assert_eq!(
                serde_json::to_string(&t).unwrap(),
                format!("\"{}\"", format(ms))
            );
        }
    }

    #[test]
    fn timestamps() {
        let t = Timestamp::from_unix_millis(1_738_324_800_123).unwrap();
        assert_eq!(t.to_string(), "2025-01-31T12:00:00.123Z");
        assert_eq!(
            Timestamp::parse_rfc3339("2025-01-31T12:00:00.123Z").unwrap(),
            t
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2025-01-31T13:30:00.123456+01:30").unwrap(),
            t
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2025-01-31").unwrap().to_string(),
            "2025-01-31T00:00:00.000Z"
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2025-01-31t12:00:00z")
                .unwrap()
                .to_string(),
            "2025-01-31T12:00:00.000Z"
        );
        for bad in [
            "",
            "2025-13-01",
            "2025-02-30T00:00:00Z",
            "2025-01-31T12:00:00",
            "2025-01-31T25:00:00Z",
            "2025-01-31T12:00:00.Z",
            "2025-01-31T12:00:00+1:00",
            "1969-12-31T23:59:59Z",
        ] {
            assert!(Timestamp::parse_rfc3339(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Timestamp::from_unix_millis(0).unwrap().to_string(),
            "1970-01-01T00:00:00.000Z"
        );
        let now = Timestamp::now().to_string();
        assert_eq!(now.len(), 24);
        assert!(now.ends_with('Z'));
        assert_eq!(Timestamp::parse_rfc3339(&now).unwrap().to_string(), now);
    }

    fn json_line(e: &AuditEvent) -> String {
        let mut line = String::new();
        e.write_json(&mut line);
        line
    }

    /// The line writer and the `Serialize` impl make the same bytes, for every field set, none
    /// set, and each optional field alone; and the line reads back as the same event.
    #[test]
    fn json_line_is_serdes_json_byte_for_byte() {
        let full = full_event();
        let minimal = AuditEvent::new(
            Direction::Handshake,
            Decision::Refused,
            Label::new("unknown_ca").unwrap(),
        );
        let mut events = vec![full.clone(), minimal.clone()];
        // Each optional field alone, by keeping it from the full event.
        let keys: Vec<String> = serde_json::to_value(&full)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(keys.len(), 27);
        for key in &keys {
            let mut v = serde_json::to_value(&minimal).unwrap();
            v[key.as_str()] = serde_json::to_value(&full).unwrap()[key.as_str()].clone();
            events.push(serde_json::from_value(v).unwrap());
        }
        // Extremes of the numbers and every enum value.
        let mut big = full.clone();
        big.seq = u64::MAX;
        big.rule = Some(u32::MAX);
        big.status = Some(u16::MAX);
        big.bytes_in = Some(u64::MAX);
        big.bytes_out = Some(0);
        big.duration_ms = Some(10);
        big.prev = ChainHash([0xa5; 32]);
        big.direction = Direction::Outbound;
        big.decision = Decision::WouldDeny;
        big.action = Some(Action::Other);
        big.amr = vec![Label::new("bankid").unwrap()];
        events.push(big);
        for (direction, decision, action) in [
            (Direction::Inbound, Decision::Deny, Action::Create),
            (Direction::Outbound, Decision::Allow, Action::Update),
            (Direction::Handshake, Decision::Refused, Action::Delete),
            (Direction::Inbound, Decision::Allow, Action::Read),
        ] {
            let mut e = full.clone();
            (e.direction, e.decision, e.action) = (direction, decision, Some(action));
            events.push(e);
        }
        for e in &events {
            let line = json_line(e);
            assert_eq!(line, serde_json::to_string(e).unwrap());
            assert_eq!(
                &serde_json::from_str::<AuditEvent>(&line).unwrap(),
                e,
                "{line}"
            );
        }
    }

    /// Text fields may hold `"` and `\`; and should a value ever get past its type's check,
    /// the line is still valid JSON that says exactly what was stored.
    #[test]
    fn json_line_escapes_every_string_value() {
        let mut e = full_event();
        e.path = Some(Text::new(r#"/a"b\c/"#).unwrap());
        e.issuer = Some(Text::new(r#"https://idp.example/"}"#).unwrap());
        let line = json_line(&e);
        assert_eq!(line, serde_json::to_string(&e).unwrap());
        assert_eq!(serde_json::from_str::<AuditEvent>(&line).unwrap(), e);
        assert!(line.contains(r#""path":"/a\"b\\c/""#), "{line}");

        // Every ASCII byte, control characters included, and some non-ASCII text, written into
        // fields whose checks are bypassed here (only this module can do that).
        let every_ascii: String = (0u8..0x80).map(char::from).collect();
        for raw in [
            every_ascii.as_str(),
            "æøå Ærø — \u{2028}\u{1F512} \u{7f}",
            "\"",
            "\\",
            "",
            "end\n",
        ] {
            let leaked: &'static str = Box::leak(raw.to_owned().into_boxed_str());
            let mut e = full_event();
            e.reason = Label(FieldText::Static(leaked));
            e.path = Some(Text(FieldText::Static(leaked)));
            e.amr = vec![Label(FieldText::Static(leaked)), Label::new("otp").unwrap()];
            let line = json_line(&e);
            assert_eq!(line, serde_json::to_string(&e).unwrap(), "{raw:?}");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["reason"], raw);
            assert_eq!(v["path"], raw);
            assert_eq!(v["amr"][0], raw);
            assert!(!line.contains('\n'), "a line must stay one line: {line:?}");
        }
    }
}

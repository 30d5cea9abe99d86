//! Request/response header hygiene for the proxy: framing checks (request smuggling),
//! hop-by-hop stripping, identity-header stripping, and the headers the proxy sets itself
//! (`x-forwarded-client-cert`, `x-request-id`, `traceparent`).
//!
//! Everything here is a pure function over `http` types so that it can be tested without a
//! server. The proxy calls them in this order on a request coming in:
//!
//! 1. [`check_request_framing`] — refuse with 400 on error (use [`FramingError::reason_code`]
//!    for the metric/audit label).
//! 2. [`is_upgrade_request`], then [`strip_hop_by_hop`] (with `keep_upgrade` = the answer).
//! 3. [`HeaderRules::apply`] (protected and default-stripped names, compared normalised; names
//!    with `_`), then set our own [`X_FORWARDED_CLIENT_CERT`] ([`xfcc_value`]) and, inbound,
//!    the `Forwarded` family ([`set_forwarded`]).
//! 4. [`ensure_request_id`] and [`ensure_traceparent`].
//!
//! And on the response coming back from the app: [`strip_hop_by_hop`] (with `keep_upgrade` for a
//! 101 answering an upgrade that is being proxied).
//!
//! What hyper's HTTP/1 server already does before any of this runs is pinned by
//! the hyper framing tests: it refuses most framing errors itself (400) and, for
//! `Content-Length` + `Transfer-Encoding: chunked`, drops the `Content-Length` header and
//! hands the request on. [`check_request_framing`] is the second, version-aware line of defence
//! (and the only one for what hyper lets through, e.g. `Transfer-Encoding: gzip, chunked`).

pub(crate) mod h1_framing;
pub mod host;
mod layer;
pub mod names;
pub mod path;

pub use layer::{ClientAddr, FramingVerdict, Hygiene, RequestIds};
pub use names::{
    ForwardedHeaders, HeaderRules, HygieneConfig, InvalidHeaderName, UnderscoreHeaders,
};

use http::header::{
    CONNECTION, CONTENT_LENGTH, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Version};

use crate::identity::ForwardedValues;

/// Envoy's client-certificate header, set by the proxy (never trusted from the client).
pub const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
/// Request correlation id.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// W3C Trace Context parent header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C Trace Context vendor state; dropped whenever `traceparent` is replaced.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// RFC 7239 `Forwarded`, set inbound by vakt (never passed from a client).
pub const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// The de-facto proxy headers, set inbound by vakt (never passed from a client).
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// Prefix of the proxy's own headers; client-supplied ones are always removed.
pub const VAKT_HEADER_PREFIX: &str = "x-vakt-";

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Longest `x-request-id` kept as is.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Framing problems that must be refused with 400 before anything reaches the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum FramingError {
    /// Both `Content-Length` and `Transfer-Encoding` (RFC 9112 §6.1: a classic smuggling vector;
    /// a proxy must not forward such a message as is).
    #[error("request has both Content-Length and Transfer-Encoding")]
    ContentLengthAndTransferEncoding,
    /// Several `Content-Length` values that differ (`5` and `6`, or `5, 6`).
    #[error("request has conflicting Content-Length values")]
    ConflictingContentLength,
    /// A `Content-Length` value that is not `1*DIGIT` fitting in a u64 (sign, spaces inside,
    /// hex, empty list element, overflow...).
    #[error("request has an invalid Content-Length value")]
    InvalidContentLength,
    /// HTTP/2 and HTTP/3: more than one `Content-Length` value, even identical ones.
    #[error("request has more than one Content-Length value")]
    MultipleContentLength,
    /// `Transfer-Encoding` whose final coding is not `chunked` (or which lists no coding):
    /// the length of such a request body cannot be determined (RFC 9112 §6.3).
    #[error("request Transfer-Encoding does not end with chunked")]
    TransferEncodingNotChunked,
    /// `Transfer-Encoding` with a coding other than a single, final `chunked`
    /// (`gzip, chunked`, `chunked, chunked`, `chunked;ext=1`): the proxy only decodes
    /// `chunked` and would forward the other codings' bytes unlabelled (RFC 9112 §6.1: 501 is
    /// also allowed; we answer 400 like every other framing error).
    #[error("request uses an unsupported transfer coding")]
    UnsupportedTransferCoding,
    /// `Transfer-Encoding` in an HTTP/1.0 (or 0.9) request (RFC 9112 §6.1).
    #[error("HTTP/1.0 request has Transfer-Encoding")]
    TransferEncodingInHttp10,
    /// `Transfer-Encoding` in an HTTP/2 or HTTP/3 request (RFC 9113 §8.2.2, RFC 9114 §4.2).
    #[error("HTTP/2 or HTTP/3 request has Transfer-Encoding")]
    TransferEncodingInHttp2,
    /// An HTTP/1 request whose raw head the framing scanner could not follow (it gave up at
    /// its limits). Fail closed: such a request is not forwarded.
    #[error("request framing could not be verified")]
    Unverified,
}

impl FramingError {
    /// Every variant, e.g. to pre-register metric labels.
    pub const ALL: [FramingError; 9] = [
        FramingError::ContentLengthAndTransferEncoding,
        FramingError::ConflictingContentLength,
        FramingError::InvalidContentLength,
        FramingError::MultipleContentLength,
        FramingError::TransferEncodingNotChunked,
        FramingError::UnsupportedTransferCoding,
        FramingError::TransferEncodingInHttp10,
        FramingError::TransferEncodingInHttp2,
        FramingError::Unverified,
    ];

    /// Stable snake_case label for metrics and the audit log.
    pub fn reason_code(&self) -> &'static str {
        match self {
            FramingError::ContentLengthAndTransferEncoding => {
                "content_length_and_transfer_encoding"
            }
            FramingError::ConflictingContentLength => "conflicting_content_length",
            FramingError::InvalidContentLength => "invalid_content_length",
            FramingError::MultipleContentLength => "multiple_content_length",
            FramingError::TransferEncodingNotChunked => "transfer_encoding_not_chunked",
            FramingError::UnsupportedTransferCoding => "unsupported_transfer_coding",
            FramingError::TransferEncodingInHttp10 => "transfer_encoding_in_http10",
            FramingError::TransferEncodingInHttp2 => "transfer_encoding_in_http2",
            FramingError::Unverified => "framing_unverified",
        }
    }
}

/// Optional whitespace around list elements (RFC 9110 §5.6.3).
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The comma-separated elements of every field line of `name`, OWS-trimmed, in order
/// (empty elements included; callers decide what they mean).
fn list_elements<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(trim_ows)
}

/// `Content-Length = 1*DIGIT` (RFC 9110 §8.6), as a u64.
pub(crate) fn parse_content_length(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

fn check_content_length(version: Version, headers: &HeaderMap) -> Result<(), FramingError> {
    let mut first: Option<u64> = None;
    let mut count = 0usize;
    let mut conflicting = false;
    for element in list_elements(headers, &CONTENT_LENGTH) {
        let n = parse_content_length(element).ok_or(FramingError::InvalidContentLength)?;
        count += 1;
        match first {
            None => first = Some(n),
            Some(f) if f != n => conflicting = true,
            Some(_) => {}
        }
    }
    if conflicting {
        return Err(FramingError::ConflictingContentLength);
    }
    let multiplexed = version == Version::HTTP_2 || version == Version::HTTP_3;
    if multiplexed && count > 1 {
        return Err(FramingError::MultipleContentLength);
    }
    // HTTP/1.x: identical repeated values are one value (RFC 9110 §8.6 lets a recipient accept
    // them; hyper itself keeps only the first field line).
    Ok(())
}

/// HTTP/1.1 `Transfer-Encoding`: exactly one coding, `chunked`, without parameters.
fn check_transfer_codings(headers: &HeaderMap) -> Result<(), FramingError> {
    // Empty list elements are ignored (RFC 9110 §5.6.1).
    let codings: Vec<&[u8]> = list_elements(headers, &TRANSFER_ENCODING)
        .filter(|e| !e.is_empty())
        .collect();
    let Some((last, earlier)) = codings.split_last() else {
        return Err(FramingError::TransferEncodingNotChunked);
    };
    let last_name = trim_ows(last.split(|&b| b == b';').next().unwrap_or_default());
    if !last_name.eq_ignore_ascii_case(b"chunked") {
        return Err(FramingError::TransferEncodingNotChunked);
    }
    if !earlier.is_empty() || last_name.len() != last.len() {
        // Another coding before chunked, chunked applied twice, or chunked with parameters.
        return Err(FramingError::UnsupportedTransferCoding);
    }
    Ok(())
}

/// Check request framing headers (RFC 9112 §6; RFC 9113 §8.2.2 / RFC 9114 §4.2 for HTTP/2 and 3).
///
/// Checks, in this order (the first failing one is returned):
/// 1. `Transfer-Encoding` in a request that is not HTTP/1.1 → [`FramingError::TransferEncodingInHttp10`]
///    (HTTP/1.0, HTTP/0.9) or [`FramingError::TransferEncodingInHttp2`] (HTTP/2, HTTP/3).
/// 2. `Transfer-Encoding` together with `Content-Length` → [`FramingError::ContentLengthAndTransferEncoding`].
/// 3. Every `Content-Length` element (all field lines, comma lists split) must be `1*DIGIT`
///    → [`FramingError::InvalidContentLength`]; differing values → [`FramingError::ConflictingContentLength`];
///    for HTTP/2 and HTTP/3 more than one value → [`FramingError::MultipleContentLength`]
///    (HTTP/1.x accepts identical repeats).
/// 4. `Transfer-Encoding` must be exactly `chunked` (case-insensitive; empty list elements
///    ignored): final coding not chunked → [`FramingError::TransferEncodingNotChunked`],
///    anything else → [`FramingError::UnsupportedTransferCoding`].
pub fn check_request_framing(version: Version, headers: &HeaderMap) -> Result<(), FramingError> {
    let has_te = headers.contains_key(TRANSFER_ENCODING);
    if has_te {
        if version == Version::HTTP_2 || version == Version::HTTP_3 {
            return Err(FramingError::TransferEncodingInHttp2);
        }
        if version == Version::HTTP_10 || version == Version::HTTP_09 {
            return Err(FramingError::TransferEncodingInHttp10);
        }
        if headers.contains_key(CONTENT_LENGTH) {
            return Err(FramingError::ContentLengthAndTransferEncoding);
        }
    }
    check_content_length(version, headers)?;
    if has_te {
        check_transfer_codings(headers)?;
    }
    Ok(())
}

/// True when some `Connection` field line lists `token` (case-insensitive).
fn connection_has_token(headers: &HeaderMap, token: &str) -> bool {
    list_elements(headers, &CONNECTION).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// Headers a `Connection` option can never remove: routing/framing headers and the headers this
/// proxy sets itself (so `Connection: x-forwarded-client-cert` cannot strip the proxy's own
/// value whatever order the caller runs the steps in — the Apache CVE-2022-31813 pattern).
/// The proxy's own headers are cleaned by [`HeaderRules::apply`] and the `ensure_*`
/// functions instead.
fn protected_from_connection_option(name: &HeaderName) -> bool {
    *name == HOST
        || *name == CONTENT_LENGTH
        || *name == X_FORWARDED_CLIENT_CERT
        || *name == X_REQUEST_ID
        || *name == TRACEPARENT
        || *name == TRACESTATE
        || *name == FORWARDED
        || *name == X_FORWARDED_FOR
        || *name == X_FORWARDED_HOST
        || *name == X_FORWARDED_PROTO
        || *name == X_REAL_IP
        || name.as_str().starts_with(VAKT_HEADER_PREFIX)
}

/// Remove hop-by-hop headers (RFC 9110 §7.6.1) before forwarding, in either direction.
///
/// Removed: `Connection` and every header it names (all field lines, any case and spacing;
/// names that are not valid header names are ignored), `Keep-Alive`, `Proxy-Connection`,
/// `Proxy-Authenticate`, `Proxy-Authorization`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`.
///
/// Kept:
/// - `TE` when every `TE` field line is exactly `trailers` (case-insensitive, OWS-trimmed); it
///   is re-emitted as a single `te: trailers` (what HTTP/2 and gRPC require), even if
///   `Connection` names `TE` (which RFC 9110 §10.1.4 asks senders to do).
/// - With `keep_upgrade` and an `Upgrade` header present: `Upgrade` is kept and `Connection`
///   becomes exactly `upgrade`. Without an `Upgrade` header nothing is kept and no
///   `Connection` is set.
/// - Headers named by `Connection` that are not hop-by-hop for this proxy: `Host`,
///   `Content-Length` and the proxy's own headers (`x-forwarded-client-cert`, `x-request-id`,
///   `traceparent`, `tracestate`, `x-vakt-*`).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of these: one pass over their names instead of a lookup per
    // field below (this runs on every request and response).
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let nominated: Vec<HeaderName> = list_elements(headers, &CONNECTION)
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .collect();
    let keep_te_trailers = {
        let mut values = headers.get_all(TE).iter().peekable();
        values.peek().is_some()
            && values.all(|v| trim_ows(v.as_bytes()).eq_ignore_ascii_case(b"trailers"))
    };
    let keep_upgrade = keep_upgrade && headers.contains_key(UPGRADE);

    for name in nominated {
        if name == TE || name == UPGRADE || protected_from_connection_option(&name) {
            continue; // TE and Upgrade are decided below; the others are end-to-end here.
        }
        headers.remove(&name);
    }
    for name in ALWAYS_REMOVED {
        headers.remove(name);
    }
    if keep_te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
}

/// Hop-by-hop fields [`strip_hop_by_hop`] removes whatever `Connection` says (`TE: trailers`
/// is put back).
const ALWAYS_REMOVED: [HeaderName; 8] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
];

/// The fields [`strip_hop_by_hop`] acts on by name; others are removed only when `Connection`
/// names them, so a message with none of these has nothing to strip.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == UPGRADE || ALWAYS_REMOVED.contains(name)
}

/// True for an HTTP/1.1 request asking for a protocol upgrade: a `Connection` field lists the
/// token `upgrade` (case-insensitive) and a non-empty `Upgrade` header exists.
pub fn is_upgrade_request<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && connection_has_token(req.headers(), "upgrade")
        && req
            .headers()
            .get_all(UPGRADE)
            .iter()
            .any(|v| !trim_ows(v.as_bytes()).is_empty())
}

/// `Forwarded` (RFC 7239), `X-Forwarded-For`, `X-Real-IP`, `X-Forwarded-Proto` and
/// `X-Forwarded-Host` as vakt verified them: the mTLS peer's address, `https`, and the Host the
/// request was matched on. Each is one field line replacing any other, so a client's copy can
/// never be joined to vakt's. `X-Forwarded-Port` is not set (the client's copy is removed).
pub fn set_forwarded(headers: &mut HeaderMap, peer: std::net::IpAddr, host: Option<HeaderValue>) {
    insert_forwarded(headers, &render_forwarded(peer, host));
}

/// The values of [`set_forwarded`], rendered once for a connection's address and host.
pub fn render_forwarded(peer: std::net::IpAddr, host: Option<HeaderValue>) -> ForwardedValues {
    let ip = peer.to_string();
    let mut forwarded = match peer {
        std::net::IpAddr::V4(_) => format!("for={ip}"),
        std::net::IpAddr::V6(_) => format!("for=\"[{ip}]\""),
    };
    if let Some(host) = host.as_ref().and_then(|h| h.to_str().ok()) {
        forwarded.push_str(";host=\"");
        for c in host.chars() {
            if c == '"' || c == '\\' {
                forwarded.push('\\');
            }
            forwarded.push(c);
        }
        forwarded.push('"');
    }
    forwarded.push_str(";proto=https");
    // Only an address, visible ASCII and a quoted host were written: always valid values.
    ForwardedValues {
        forwarded: HeaderValue::from_str(&forwarded)
            .unwrap_or_else(|_| HeaderValue::from_static("proto=https")),
        ip: HeaderValue::from_str(&ip).unwrap_or_else(|_| HeaderValue::from_static("unknown")),
        host,
    }
}

/// Put rendered `Forwarded` values in place of whatever the request carried.
/// How many headers [`insert_forwarded`] sets at most.
pub const FORWARDED_HEADERS: usize = 5;

pub fn insert_forwarded(headers: &mut HeaderMap, values: &ForwardedValues) {
    headers.insert(FORWARDED, values.forwarded.clone());
    headers.insert(X_FORWARDED_FOR, values.ip.clone());
    headers.insert(X_REAL_IP, values.ip.clone());
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    match &values.host {
        Some(host) => headers.insert(X_FORWARDED_HOST, host.clone()),
        None => headers.remove(X_FORWARDED_HOST),
    };
}

/// One XFCC value: bytes that cannot appear in a URI or a header (controls, space, non-ASCII,
/// `\`) are percent-encoded; then, per Envoy, the value is double-quoted if it contains
/// `,` `;` `=` or `"`, with `"` written as `\"`.
fn push_xfcc_value(out: &mut String, raw: &str) {
    let mut clean = String::with_capacity(raw.len());
    for &b in raw.as_bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'\\' {
            clean.push(char::from(b));
        } else {
            clean.push('%');
            clean.push_str(&hex::encode_upper([b]));
        }
    }
    if clean.contains([',', ';', '=', '"']) {
        out.push('"');
        out.push_str(&clean.replace('"', "\\\""));
        out.push('"');
    } else {
        out.push_str(&clean);
    }
}

/// Envoy's `x-forwarded-client-cert` element:
/// `By=<uri of this proxy>;Hash=<lowercase hex sha256 of the peer leaf DER>;URI=<peer uri>`.
///
/// Values are quoted per Envoy's rule only when they contain `,` `;` `=` or `"` (SPIFFE IDs
/// never do). Bytes not allowed in a URI are percent-encoded, so the result is always a valid
/// header value.
pub fn xfcc_value(by: &str, peer_cert_sha256: &[u8; 32], peer_uri: &str) -> HeaderValue {
    let mut s = String::with_capacity(by.len() + peer_uri.len() + 80);
    s.push_str("By=");
    push_xfcc_value(&mut s, by);
    s.push_str(";Hash=");
    s.push_str(&hex::encode(peer_cert_sha256));
    s.push_str(";URI=");
    push_xfcc_value(&mut s, peer_uri);
    // Only visible ASCII was written above, so this cannot fail; never panic on the data path.
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    (1..=MAX_REQUEST_ID_LEN).contains(&b.len())
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'))
        // The id is logged, audited and echoed in refusals: one holding a national id is
        // replaced like any other unusable id.
        && std::str::from_utf8(b).is_ok_and(|s| !crate::nid::contains(s))
}

/// Keep a valid incoming `x-request-id` (1..=128 chars of `[A-Za-z0-9._:-]`, exactly one field
/// line, no national id as [`crate::nid`] finds them) or replace it with a new UUID v4 (lowercase, hyphenated). Returns the value in effect.
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    let mut values = headers.get_all(X_REQUEST_ID).iter();
    if let (Some(v), None) = (values.next(), values.next())
        && valid_request_id(v)
    {
        return v.clone();
    }
    let mut buf = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    // A hyphenated UUID is always a valid header value.
    let value = HeaderValue::from_str(id)
        .unwrap_or_else(|_| HeaderValue::from_static("00000000-0000-4000-8000-000000000000"));
    headers.insert(X_REQUEST_ID, value.clone());
    value
}

fn is_lower_hex(s: &[u8]) -> bool {
    s.iter().all(|&b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Lowercase hex and not all zeros.
fn is_nonzero_id(s: &[u8]) -> bool {
    is_lower_hex(s) && s.iter().any(|&b| b != b'0')
}

/// The trace id of a valid `traceparent` value (W3C Trace Context §3.2), or `None`.
///
/// Version `00`: exactly `00-<32 hex>-<16 hex>-<2 hex>` (lowercase, ids not all zero).
/// Higher versions (not `ff`), §3.2.4: at least 55 characters, the same three fields at the
/// same offsets, and after the flags either the end or a `-` (what follows is not interpreted).
fn traceparent_trace_id(value: &[u8]) -> Option<&str> {
    if value.len() < 55 {
        return None;
    }
    let (version, trace_id, parent_id, flags) =
        (&value[0..2], &value[3..35], &value[36..52], &value[53..55]);
    let dashes = value[2] == b'-' && value[35] == b'-' && value[52] == b'-';
    let ok = dashes
        && is_lower_hex(version)
        && version != b"ff"
        && is_nonzero_id(trace_id)
        && is_nonzero_id(parent_id)
        && is_lower_hex(flags)
        && if version == b"00" {
            value.len() == 55
        } else {
            value.len() == 55 || value[55] == b'-'
        };
    if ok {
        std::str::from_utf8(trace_id).ok()
    } else {
        None
    }
}

/// Keep a valid W3C `traceparent` (exactly one field line; see the version rules above) or
/// replace it with a new one (random trace id and span id, flags `00`), removing `tracestate`
/// when `traceparent` was replaced. Returns the trace id (32 lowercase hex) in effect.
pub fn ensure_traceparent(headers: &mut HeaderMap) -> String {
    {
        let mut values = headers.get_all(TRACEPARENT).iter();
        if let (Some(v), None) = (values.next(), values.next())
            && let Some(trace_id) = traceparent_trace_id(v.as_bytes())
        {
            return trace_id.to_owned();
        }
    }
    // UUID v4 bits are random apart from the version and variant bits, which are never zero,
    // so neither id can be all zeros.
    let trace = uuid::Uuid::new_v4().as_u128();
    let span = uuid::Uuid::new_v4().as_u64_pair().1;
    // `00-<32 hex>-<16 hex>-00`, written on the stack (without `fmt`: this runs per request).
    let mut traceparent = *b"00-################################-################-00";
    let hex_ok = hex::encode_to_slice(trace.to_be_bytes(), &mut traceparent[3..35]).is_ok()
        && hex::encode_to_slice(span.to_be_bytes(), &mut traceparent[36..52]).is_ok();
    let trace_id = String::from_utf8_lossy(&traceparent[3..35]).into_owned();
    headers.remove(TRACESTATE);
    match HeaderValue::from_bytes(&traceparent) {
        Ok(v) if hex_ok => {
            headers.insert(TRACEPARENT, v);
        }
        // Unreachable (the ids fit their slices exactly; hex and dashes are valid field text);
        // never panic on the data path, and never send a half-written id.
        _ => {
            headers.remove(TRACEPARENT);
        }
    }
    trace_id
}

/// Which header values travel as HPACK "never indexed" literals (RFC 7541 §7.1.3) when a hop
/// speaks HTTP/2; `HeaderValue::set_sensitive` is what the HTTP/2 encoder reads.
/// - Credentials: a token must not sit in a connection's compression table, where a
///   compression side channel could probe for it.
/// - Values new on every request (its id, its trace context, set by [`ensure_request_id`] and
///   [`ensure_traceparent`]): indexed, each would be inserted into both ends' tables on every
///   request, only to push out the entries that do repeat (authority, user agent, content
///   type, ...), which then travel as literals again; the receiving end also copies every
///   inserted value once more.
const NEVER_INDEXED: [HeaderName; 6] = [
    http::header::AUTHORIZATION,
    HeaderName::from_static("dpop"),
    PROXY_AUTHORIZATION,
    http::header::COOKIE,
    X_REQUEST_ID,
    TRACEPARENT,
];

/// Marks the [`NEVER_INDEXED`] headers' values sensitive, for the HTTP/2 encoder.
pub fn mark_never_indexed(headers: &mut HeaderMap) {
    for name in NEVER_INDEXED {
        if let http::header::Entry::Occupied(mut entry) = headers.entry(name) {
            for value in entry.iter_mut() {
                value.set_sensitive(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn credentials_and_per_request_ids_are_marked_never_indexed_and_other_headers_are_not() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer a.b.c"),
        );
        h.append(http::header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(http::header::COOKIE, HeaderValue::from_static("b=2"));
        h.insert("dpop", HeaderValue::from_static("e30.e30.sig"));
        h.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
        h.insert(http::header::USER_AGENT, HeaderValue::from_static("app/1"));
        h.insert(TRACESTATE, HeaderValue::from_static("vendor=abc"));
        let request_id = ensure_request_id(&mut h);
        ensure_traceparent(&mut h);
        mark_never_indexed(&mut h);
        assert!(h[http::header::AUTHORIZATION].is_sensitive());
        assert!(h["dpop"].is_sensitive());
        assert!(
            h.get_all(http::header::COOKIE)
                .iter()
                .all(HeaderValue::is_sensitive)
        );
        assert!(h[X_REQUEST_ID].is_sensitive());
        assert!(h[TRACEPARENT].is_sensitive());
        for repeating in [http::header::ACCEPT, http::header::USER_AGENT] {
            assert!(!h[&repeating].is_sensitive(), "{repeating}");
        }
        // Only the flag changes, never a value.
        assert_eq!(h[http::header::AUTHORIZATION], "Bearer a.b.c");
        assert_eq!(h[X_REQUEST_ID], request_id);
        assert_eq!(h[TRACEPARENT].len(), 55);
    }

    /// Header field lines for a table row, in order.
    type Lines = &'static [(&'static str, &'static str)];

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn values(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    // ---------------------------------------------------------------- framing

    #[test]
    #[rustfmt::skip]
    fn framing_table() {
        use FramingError::*;
        const V10: Version = Version::HTTP_10;
        const V11: Version = Version::HTTP_11;
        const V2: Version = Version::HTTP_2;
        let cases: &[(&str, Version, Lines, Result<(), FramingError>)] = &[
            // accepted
            ("no body headers", V11, &[], Ok(())),
            ("cl", V11, &[("content-length", "5")], Ok(())),
            ("cl zero", V11, &[("content-length", "0")], Ok(())),
            ("cl leading zeros", V11, &[("content-length", "007")], Ok(())),
            ("cl u64 max", V11, &[("content-length", "18446744073709551615")], Ok(())),
            ("cl identical lines", V11, &[("content-length", "5"), ("content-length", "5")], Ok(())),
            ("cl identical list", V11, &[("content-length", "5, 5")], Ok(())),
            ("te chunked", V11, &[("transfer-encoding", "chunked")], Ok(())),
            ("te Chunked case", V11, &[("transfer-encoding", "Chunked")], Ok(())),
            ("te empty elements", V11, &[("transfer-encoding", ", chunked ,")], Ok(())),
            ("http10 cl", V10, &[("content-length", "5")], Ok(())),
            ("http2 cl", V2, &[("content-length", "5")], Ok(())),
            ("http2 none", V2, &[], Ok(())),
            // ContentLengthAndTransferEncoding
            ("cl then te", V11, &[("content-length", "5"), ("transfer-encoding", "chunked")], Err(ContentLengthAndTransferEncoding)),
            ("te then cl", V11, &[("transfer-encoding", "chunked"), ("content-length", "5")], Err(ContentLengthAndTransferEncoding)),
            ("te and invalid cl", V11, &[("transfer-encoding", "chunked"), ("content-length", "x")], Err(ContentLengthAndTransferEncoding)),
            // ConflictingContentLength
            ("cl two lines differ", V11, &[("content-length", "5"), ("content-length", "6")], Err(ConflictingContentLength)),
            ("cl list differs", V11, &[("content-length", "5, 6")], Err(ConflictingContentLength)),
            ("http2 cl list differs", V2, &[("content-length", "5,6")], Err(ConflictingContentLength)),
            // InvalidContentLength
            ("cl plus sign", V11, &[("content-length", "+5")], Err(InvalidContentLength)),
            ("cl minus", V11, &[("content-length", "-1")], Err(InvalidContentLength)),
            ("cl hex", V11, &[("content-length", "0x5")], Err(InvalidContentLength)),
            ("cl inner space", V11, &[("content-length", "5 5")], Err(InvalidContentLength)),
            ("cl empty", V11, &[("content-length", "")], Err(InvalidContentLength)),
            ("cl empty element", V11, &[("content-length", "5,")], Err(InvalidContentLength)),
            ("cl overflow", V11, &[("content-length", "18446744073709551616")], Err(InvalidContentLength)),
            ("cl invalid beats conflict", V11, &[("content-length", "5"), ("content-length", "6"), ("content-length", "x")], Err(InvalidContentLength)),
            ("http2 cl invalid", V2, &[("content-length", "abc")], Err(InvalidContentLength)),
            // MultipleContentLength
            ("http2 cl identical lines", V2, &[("content-length", "5"), ("content-length", "5")], Err(MultipleContentLength)),
            ("http2 cl identical list", V2, &[("content-length", "5, 5")], Err(MultipleContentLength)),
            ("http3 cl identical lines", Version::HTTP_3, &[("content-length", "5"), ("content-length", "5")], Err(MultipleContentLength)),
            // TransferEncodingNotChunked
            ("te gzip", V11, &[("transfer-encoding", "gzip")], Err(TransferEncodingNotChunked)),
            ("te chunked then gzip", V11, &[("transfer-encoding", "chunked, gzip")], Err(TransferEncodingNotChunked)),
            ("te lines chunked then gzip", V11, &[("transfer-encoding", "chunked"), ("transfer-encoding", "gzip")], Err(TransferEncodingNotChunked)),
            ("te empty", V11, &[("transfer-encoding", "")], Err(TransferEncodingNotChunked)),
            ("te only commas", V11, &[("transfer-encoding", " , ,")], Err(TransferEncodingNotChunked)),
            ("te chunkedx", V11, &[("transfer-encoding", "chunkedx")], Err(TransferEncodingNotChunked)),
            // UnsupportedTransferCoding
            ("te gzip then chunked", V11, &[("transfer-encoding", "gzip, chunked")], Err(UnsupportedTransferCoding)),
            ("te chunked twice list", V11, &[("transfer-encoding", "chunked, chunked")], Err(UnsupportedTransferCoding)),
            ("te chunked twice lines", V11, &[("transfer-encoding", "chunked"), ("transfer-encoding", "chunked")], Err(UnsupportedTransferCoding)),
            ("te chunked with parameter", V11, &[("transfer-encoding", "chunked;foo=bar")], Err(UnsupportedTransferCoding)),
            // TransferEncodingInHttp10
            ("http10 te", V10, &[("transfer-encoding", "chunked")], Err(TransferEncodingInHttp10)),
            ("http10 te and cl", V10, &[("transfer-encoding", "chunked"), ("content-length", "5")], Err(TransferEncodingInHttp10)),
            ("http09 te", Version::HTTP_09, &[("transfer-encoding", "chunked")], Err(TransferEncodingInHttp10)),
            // TransferEncodingInHttp2
            ("http2 te", V2, &[("transfer-encoding", "chunked")], Err(TransferEncodingInHttp2)),
            ("http2 te and cl", V2, &[("transfer-encoding", "chunked"), ("content-length", "5")], Err(TransferEncodingInHttp2)),
            ("http3 te", Version::HTTP_3, &[("transfer-encoding", "chunked")], Err(TransferEncodingInHttp2)),
        ];
        let mut seen = HashSet::new();
        for (name, version, headers, want) in cases {
            let got = check_request_framing(*version, &map(headers));
            assert_eq!(got, *want, "case {name:?}");
            if let Err(e) = got {
                seen.insert(e);
            }
        }
        // `Unverified` comes from the byte-stream scanner, never from the headers alone.
        for e in FramingError::ALL.into_iter().filter(|e| *e != Unverified) {
            assert!(seen.contains(&e), "no table row produces {e:?}");
        }
    }

    #[test]
    fn reason_codes_are_unique_snake_case() {
        let codes: HashSet<&str> = FramingError::ALL.iter().map(|e| e.reason_code()).collect();
        assert_eq!(codes.len(), FramingError::ALL.len());
        for c in codes {
            assert!(
                c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{c}"
            );
        }
        assert_eq!(
            FramingError::ContentLengthAndTransferEncoding.reason_code(),
            "content_length_and_transfer_encoding"
        );
        assert!(!FramingError::InvalidContentLength.to_string().is_empty());
    }

    // ---------------------------------------------------------------- hop-by-hop

    #[test]
    fn hop_by_hop_table() {
        struct Case {
            name: &'static str,
            keep_upgrade: bool,
            input: Lines,
            want: Lines,
        }
        let cases = [
            Case {
                name: "fixed list removed, end-to-end kept",
                keep_upgrade: false,
                input: &[
                    ("host", "a"),
                    ("connection", "keep-alive"),
                    ("keep-alive", "timeout=5"),
                    ("proxy-connection", "keep-alive"),
                    ("proxy-authenticate", "Basic"),
                    ("proxy-authorization", "Basic Zm9v"),
                    ("te", "gzip"),
                    ("trailer", "x-checksum"),
                    ("transfer-encoding", "chunked"),
                    ("upgrade", "websocket"),
                    ("accept", "*/*"),
                    ("authorization", "Bearer t"),
                ],
                want: &[
                    ("host", "a"),
                    ("accept", "*/*"),
                    ("authorization", "Bearer t"),
                ],
            },
            Case {
                name: "connection-named headers, odd spacing and case, several lines",
                keep_upgrade: false,
                input: &[
                    ("connection", " X-Foo ,\tx-BAR,, close "),
                    ("connection", "X-Baz"),
                    ("x-foo", "1"),
                    ("x-bar", "2"),
                    ("x-bar", "2b"),
                    ("x-baz", "3"),
                    ("x-keep", "4"),
                ],
                want: &[("x-keep", "4")],
            },
            Case {
                name: "invalid names in connection ignored",
                keep_upgrade: false,
                input: &[
                    ("connection", "bad name, x-a, (x)"),
                    ("x-a", "1"),
                    ("x-b", "2"),
                ],
                want: &[("x-b", "2")],
            },
            Case {
                name: "connection cannot remove protected headers",
                keep_upgrade: false,
                input: &[
                    (
                        "connection",
                        "host, content-length, x-forwarded-client-cert, x-request-id, traceparent, tracestate, x-vakt-peer, cookie",
                    ),
                    ("host", "a"),
                    ("content-length", "3"),
                    ("x-forwarded-client-cert", "By=x"),
                    ("x-request-id", "r"),
                    ("traceparent", "t"),
                    ("tracestate", "s"),
                    ("x-vakt-peer", "p"),
                    ("cookie", "c=1"),
                ],
                want: &[
                    ("host", "a"),
                    ("content-length", "3"),
                    ("x-forwarded-client-cert", "By=x"),
                    ("x-request-id", "r"),
                    ("traceparent", "t"),
                    ("tracestate", "s"),
                    ("x-vakt-peer", "p"),
                ],
            },
            Case {
                name: "te trailers kept",
                keep_upgrade: false,
                input: &[("te", "trailers"), ("content-type", "application/grpc")],
                want: &[("te", "trailers"), ("content-type", "application/grpc")],
            },
            Case {
                name: "te trailers kept even when named by connection, normalised",
                keep_upgrade: false,
                input: &[("connection", "TE"), ("te", " Trailers ")],
                want: &[("te", "trailers")],
            },
            Case {
                name: "te gzip removed",
                keep_upgrade: false,
                input: &[("te", "gzip")],
                want: &[],
            },
            Case {
                name: "te trailers with another coding removed",
                keep_upgrade: false,
                input: &[("te", "trailers, deflate;q=0.5")],
                want: &[],
            },
            Case {
                name: "te trailers plus a second te line removed",
                keep_upgrade: false,
                input: &[("te", "trailers"), ("te", "gzip")],
                want: &[],
            },
            Case {
                name: "upgrade removed without keep_upgrade",
                keep_upgrade: false,
                input: &[
                    ("connection", "Upgrade"),
                    ("upgrade", "websocket"),
                    ("sec-websocket-key", "k"),
                ],
                want: &[("sec-websocket-key", "k")],
            },
            Case {
                name: "upgrade kept with keep_upgrade, connection reduced to upgrade",
                keep_upgrade: true,
                input: &[
                    ("connection", "keep-alive, Upgrade, x-hop"),
                    ("upgrade", "websocket"),
                    ("x-hop", "1"),
                    ("keep-alive", "timeout=5"),
                    ("sec-websocket-key", "k"),
                ],
                want: &[
                    ("connection", "upgrade"),
                    ("upgrade", "websocket"),
                    ("sec-websocket-key", "k"),
                ],
            },
            Case {
                name: "keep_upgrade without upgrade header sets nothing",
                keep_upgrade: true,
                input: &[("connection", "upgrade"), ("x-a", "1")],
                want: &[("x-a", "1")],
            },
        ];
        for c in cases {
            let mut h = map(c.input);
            strip_hop_by_hop(&mut h, c.keep_upgrade);
            assert_eq!(h, map(c.want), "case {:?}", c.name);
        }
    }

    /// Each field the early return looks for, alone, is still acted on; a message with none of
    /// them comes out as it went in.
    #[test]
    fn hop_by_hop_fields_alone_are_stripped() {
        for name in ALWAYS_REMOVED.iter().chain([&UPGRADE]) {
            for keep_upgrade in [false, true] {
                let mut h = map(&[(name.as_str(), "gzip"), ("x-a", "1")]);
                strip_hop_by_hop(&mut h, keep_upgrade);
                let want: &[(&str, &str)] = if name == UPGRADE && keep_upgrade {
                    &[("upgrade", "gzip"), ("connection", "upgrade"), ("x-a", "1")]
                } else {
                    &[("x-a", "1")]
                };
                assert_eq!(h, map(want), "{name} alone, keep_upgrade {keep_upgrade}");
            }
        }
        let clean = map(&[("host", "a"), ("authorization", "Bearer x"), ("x-a", "1")]);
        let mut h = clean.clone();
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h, clean);
    }

    #[test]
    fn hop_by_hop_is_idempotent() {
        let mut h = map(&[
            ("connection", "upgrade"),
            ("upgrade", "h2c"),
            ("te", "trailers"),
        ]);
        strip_hop_by_hop(&mut h, true);
        let once = h.clone();
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h, once);
    }

    #[test]
    #[rustfmt::skip]
    fn upgrade_request_detection() {
        let cases: &[(&str, Version, Lines, bool)] = &[
            ("websocket", Version::HTTP_11, &[("connection", "Upgrade"), ("upgrade", "websocket")], true),
            ("token in list, second line", Version::HTTP_11, &[("connection", "keep-alive"), ("connection", "foo, UPGRADE"), ("upgrade", "h2c")], true),
            ("no connection token", Version::HTTP_11, &[("upgrade", "websocket")], false),
            ("no upgrade header", Version::HTTP_11, &[("connection", "upgrade")], false),
            ("empty upgrade header", Version::HTTP_11, &[("connection", "upgrade"), ("upgrade", "")], false),
            ("token is a prefix only", Version::HTTP_11, &[("connection", "upgraded"), ("upgrade", "websocket")], false),
            ("http10", Version::HTTP_10, &[("connection", "upgrade"), ("upgrade", "websocket")], false),
            ("http2", Version::HTTP_2, &[("connection", "upgrade"), ("upgrade", "websocket")], false),
        ];
        for (name, version, headers, want) in cases {
            let mut req = Request::new(());
            *req.version_mut() = *version;
            *req.headers_mut() = map(headers);
            assert_eq!(is_upgrade_request(&req), *want, "case {name:?}");
        }
    }

    // ---------------------------------------------------------------- identity

    #[test]
    fn identity_headers_stripped() {
        let mut h = map(&[
            (
                "X-Forwarded-Client-Cert",
                "By=spiffe://evil;URI=spiffe://evil",
            ),
            ("x-forwarded-client-cert", "second"),
            ("X-Vakt-Peer", "spiffe://evil"),
            ("x-VAKT-subject", "admin"),
            ("x-vakt-", "empty suffix"),
            ("X-Remote-User", "root"),
            ("x-remote-user", "root2"),
            ("x-user-id", "root3"),
            ("x-vakt", "no dash: not ours"),
            ("x-vaktpeer", "not ours"),
            ("accept", "*/*"),
            ("authorization", "Bearer t"),
        ]);
        let rules = HeaderRules::new(
            &HygieneConfig::default(),
            vec![HeaderName::from_static("x-user-id")],
            vec![],
        );
        rules.apply(&mut h).unwrap();
        assert_eq!(
            h,
            map(&[
                ("x-vakt", "no dash: not ours"),
                ("x-vaktpeer", "not ours"),
                ("accept", "*/*"),
                ("authorization", "Bearer t"),
            ])
        );
    }

    #[test]
    fn identity_stripping_without_matches_changes_nothing() {
        let original = map(&[("accept", "*/*"), ("x-custom-ok", "1")]);
        let mut h = original.clone();
        HeaderRules::new(&HygieneConfig::default(), vec![], vec![])
            .apply(&mut h)
            .unwrap();
        assert_eq!(h, original);
    }

    #[test]
    #[rustfmt::skip]
    fn forwarded_headers_are_set_from_the_verified_values() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("10.1.2.3", Some("orders.shop"), "for=10.1.2.3;host=\"orders.shop\";proto=https"),
            ("::1", Some("orders.shop:8443"), "for=\"[::1]\";host=\"orders.shop:8443\";proto=https"),
            ("10.1.2.3", None, "for=10.1.2.3;proto=https"),
        ];
        for (ip, host, want) in cases {
            let mut h = map(&[("x-forwarded-host", "forged"), ("x-forwarded-for", "6.6.6.6")]);
            set_forwarded(&mut h, ip.parse().unwrap(), host.map(HeaderValue::from_static));
            assert_eq!(values(&h, "forwarded"), [*want]);
            assert_eq!(values(&h, "x-forwarded-for"), [*ip]);
            assert_eq!(values(&h, "x-real-ip"), [*ip]);
            assert_eq!(values(&h, "x-forwarded-proto"), ["https"]);
            let want_host: Vec<&str> = host.iter().copied().collect();
            assert_eq!(values(&h, "x-forwarded-host"), want_host);
        }
    }

    // ---------------------------------------------------------------- xfcc

    #[test]
    fn xfcc_exact_string() {
        let mut hash = [0u8; 32];
        for (i, b) in hash.iter_mut().enumerate() {
            *b = u8::try_from(i * 8).unwrap();
        }
        let v = xfcc_value(
            "spiffe://mesh.local/ns/prod/sa/vakt",
            &hash,
            "spiffe://mesh.local/ns/prod/sa/frontend",
        );
        assert_eq!(
            v.to_str().unwrap(),
            "By=spiffe://mesh.local/ns/prod/sa/vakt;\
             Hash=0008101820283038404850586068707880889098a0a8b0b8c0c8d0d8e0e8f0f8;\
             URI=spiffe://mesh.local/ns/prod/sa/frontend"
        );
    }

    #[test]
    #[rustfmt::skip]
    fn xfcc_quoting_and_escaping() {
        let hash = [0xabu8; 32];
        let h = "abababababababababababababababababababababababababababababababab";
        let cases = [
            ("spiffe://a/b", "spiffe://c/d", format!("By=spiffe://a/b;Hash={h};URI=spiffe://c/d")),
            ("spiffe://a/b;x", "spiffe://c/d", format!("By=\"spiffe://a/b;x\";Hash={h};URI=spiffe://c/d")),
            ("spiffe://a/b", "spiffe://c/d?x=1,2", format!("By=spiffe://a/b;Hash={h};URI=\"spiffe://c/d?x=1,2\"")),
            ("spiffe://a/\"q\"", "u", format!("By=\"spiffe://a/\\\"q\\\"\";Hash={h};URI=u")),
            ("spiffe://a b/\r\n\\é", "u", format!("By=spiffe://a%20b/%0D%0A%5C%C3%A9;Hash={h};URI=u")),
            ("", "", format!("By=;Hash={h};URI=")),
        ];
        for (by, uri, want) in cases {
            assert_eq!(xfcc_value(by, &hash, uri).to_str().unwrap(), want, "by={by:?} uri={uri:?}");
        }
    }

    // ---------------------------------------------------------------- request id

    fn is_uuid_v4(s: &str) -> bool {
        uuid::Uuid::parse_str(s).is_ok_and(|u| u.get_version_num() == 4)
            && s.len() == 36
            && s == s.to_ascii_lowercase()
    }

    #[test]
    #[rustfmt::skip]
    fn request_id_table() {
        let max = "a".repeat(MAX_REQUEST_ID_LEN);
        let too_long = "a".repeat(MAX_REQUEST_ID_LEN + 1);
        // (name, incoming field lines, kept?)
        let cases: Vec<(&str, Vec<&str>, bool)> = vec![
            ("uuid", vec!["3f2504e0-4f89-41d3-9a0c-0305e82c3301"], true),
            ("all allowed chars", vec!["Az09._:-"], true),
            ("single char", vec!["x"], true),
            ("max length", vec![max.as_str()], true),
            ("too long", vec![too_long.as_str()], false),
            ("empty", vec![""], false),
            ("space", vec!["a b"], false),
            ("slash", vec!["a/b"], false),
            ("quote", vec!["a\"b"], false),
            ("comma", vec!["a,b"], false),
            ("duplicate", vec!["abc", "def"], false),
            ("duplicate identical", vec!["abc", "abc"], false),
            ("missing", vec![], false),
            ("national id", vec!["req-31129956715"], false),
            ("national id alone", vec!["31129956715"], false),
            ("digits, not a national id", vec!["req-31129956716"], true),
        ];
        for (name, incoming, kept) in cases {
            let mut h = HeaderMap::new();
            for v in &incoming {
                h.append(X_REQUEST_ID, HeaderValue::from_str(v).unwrap());
            }
            let got = ensure_request_id(&mut h);
            assert_eq!(values(&h, "x-request-id"), vec![got.to_str().unwrap().to_owned()], "case {name:?}");
            if kept {
                assert_eq!(got, incoming[0], "case {name:?}");
            } else {
                assert!(is_uuid_v4(got.to_str().unwrap()), "case {name:?}: {got:?}");
            }
        }
    }

    #[test]
    fn request_id_non_ascii_replaced() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_bytes(b"id\xff").unwrap());
        let got = ensure_request_id(&mut h);
        assert!(is_uuid_v4(got.to_str().unwrap()));
    }

    #[test]
    fn generated_request_ids_differ() {
        let a = ensure_request_id(&mut HeaderMap::new());
        let b = ensure_request_id(&mut HeaderMap::new());
        assert_ne!(a, b);
    }

    // ---------------------------------------------------------------- traceparent

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn check_generated(h: &HeaderMap, trace_id: &str) {
        let tp = values(h, "traceparent");
        assert_eq!(tp.len(), 1);
        let tp = &tp[0];
        assert_eq!(tp.len(), 55, "{tp}");
        assert_eq!(traceparent_trace_id(tp.as_bytes()), Some(trace_id), "{tp}");
        assert!(tp.starts_with("00-") && tp.ends_with("-00"), "{tp}");
    }

    #[test]
    #[rustfmt::skip]
    fn traceparent_table() {
        let valid = format!("00-{TRACE}-{SPAN}-01");
        let zeros32 = "0".repeat(32);
        let zeros16 = "0".repeat(16);
        // (name, traceparent field lines, kept?)
        let cases: Vec<(&str, Vec<String>, bool)> = vec![
            ("spec example", vec![valid.clone()], true),
            ("flags 00", vec![format!("00-{TRACE}-{SPAN}-00")], true),
            ("flags other bits", vec![format!("00-{TRACE}-{SPAN}-09")], true),
            ("future version", vec![format!("01-{TRACE}-{SPAN}-01")], true),
            ("future version extra field", vec![format!("cc-{TRACE}-{SPAN}-01-what-ever")], true),
            ("future version trailing dash", vec![format!("fe-{TRACE}-{SPAN}-01-")], true),
            ("all-zero trace id", vec![format!("00-{zeros32}-{SPAN}-01")], false),
            ("all-zero parent id", vec![format!("00-{TRACE}-{zeros16}-01")], false),
            ("uppercase trace id", vec![format!("00-{}-{SPAN}-01", TRACE.to_uppercase())], false),
            ("uppercase parent id", vec![format!("00-{TRACE}-00F067AA0BA902B7-01")], false),
            ("uppercase flags", vec![format!("00-{TRACE}-{SPAN}-0A")], false),
            ("uppercase version", vec![format!("0A-{TRACE}-{SPAN}-01")], false),
            ("short trace id", vec![format!("00-{}-{SPAN}-01", &TRACE[..31])], false),
            ("long trace id", vec![format!("00-{TRACE}0-{SPAN}-01")], false),
            ("short parent id", vec![format!("00-{TRACE}-{}-01", &SPAN[..15])], false),
            ("long parent id", vec![format!("00-{TRACE}-{SPAN}0-01")], false),
            ("short flags", vec![format!("00-{TRACE}-{SPAN}-1")], false),
            ("version 00 with extra field", vec![format!("{valid}-x")], false),
            ("version 00 trailing char", vec![format!("{valid}0")], false),
            ("version ff", vec![format!("ff-{TRACE}-{SPAN}-01")], false),
            ("future version no dash after flags", vec![format!("01-{TRACE}-{SPAN}-01x")], false),
            ("future version short", vec![format!("01-{TRACE}-{SPAN}-1")], false),
            ("non-hex trace id", vec![format!("00-{}g-{SPAN}-01", &TRACE[..31])], false),
            ("wrong separator", vec![format!("00_{TRACE}-{SPAN}-01")], false),
            ("surrounding space", vec![format!(" {valid}")], false),
            ("duplicate", vec![valid.clone(), valid.clone()], false),
            ("empty", vec![String::new()], false),
            ("missing", vec![], false),
        ];
        for (name, incoming, kept) in cases {
            let mut h = HeaderMap::new();
            for v in &incoming {
                h.append(TRACEPARENT, HeaderValue::from_str(v).unwrap());
            }
            h.insert(TRACESTATE, HeaderValue::from_static("vendor=abc"));
            let got = ensure_traceparent(&mut h);
            assert_eq!(got.len(), 32, "case {name:?}");
            if kept {
                assert_eq!(got, TRACE, "case {name:?}");
                assert_eq!(values(&h, "traceparent"), incoming, "case {name:?}: header kept as is");
                assert_eq!(values(&h, "tracestate"), ["vendor=abc"], "case {name:?}");
            } else {
                assert_ne!(got, TRACE, "case {name:?}");
                check_generated(&h, &got);
                assert!(h.get(TRACESTATE).is_none(), "case {name:?}: tracestate dropped");
            }
        }
    }

    #[test]
    fn generated_traceparents_differ() {
        let mut a = HeaderMap::new();
        let mut b = HeaderMap::new();
        let ta = ensure_traceparent(&mut a);
        let tb = ensure_traceparent(&mut b);
        assert_ne!(ta, tb);
        assert_ne!(a.get(TRACEPARENT), b.get(TRACEPARENT));
        // A generated header is itself accepted on the next hop.
        assert_eq!(ensure_traceparent(&mut a), ta);
    }

    #[test]
    fn constants() {
        assert_eq!(X_FORWARDED_CLIENT_CERT.as_str(), "x-forwarded-client-cert");
        assert_eq!(X_REQUEST_ID.as_str(), "x-request-id");
        assert_eq!(TRACEPARENT.as_str(), "traceparent");
    }
}

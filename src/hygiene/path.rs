//! Request-path canonicalisation: the one place where vakt decides what a request path means.
//!
//! The policy engine matches routes on the [`CanonicalPath`] and the application receives exactly
//! that path, so the proxy and the application can never disagree on what a path means (path
//! confusion: the most common authorization-bypass class in proxies). Anything whose meaning
//! differs between common servers and frameworks is refused rather than guessed at.
//!
//! # Input
//!
//! The path part of an origin-form request target, as bytes from the request line: the caller
//! splits off the query at the first `?` and handles `*` (asterisk-form) and absolute-form
//! targets before calling [`canonicalize`] / [`canonicalize_bytes`].
//!
//! # Refusals
//!
//! Each refusal is its own [`PathError`] variant with a stable snake_case
//! [`reason_code`](PathError::reason_code):
//!
//! | code | refused input |
//! | --- | --- |
//! | `too_long` | raw length > [`MAX_PATH_LEN`] bytes (checked first, before anything else) |
//! | `not_absolute` | empty, or the first byte is not `/` (so also `*`, `http://x/`) |
//! | `non_ascii` | a raw byte >= 0x80 (UTF-8 must be percent-encoded) |
//! | `null_byte` | a raw NUL or `%00` |
//! | `control_character` | a raw byte < 0x20 or 0x7F (TAB, CR, LF, ...), or `%01`–`%1F`, `%7F` |
//! | `invalid_percent_encoding` | `%` not followed by two hex digits (`%`, `%4`, `%zz`, `%%41`, `%u002f`) |
//! | `encoded_slash` | `%2F` / `%2f` |
//! | `encoded_backslash` | `%5C` / `%5c` |
//! | `backslash` | a raw `\` |
//! | `double_encoding` | `%25` followed by two hex digits, after step 1 below (`%252F`, `%2541`, `%25%34%31`): an application that decodes twice would see another path |
//! | `path_parameter` | `;` raw or `%3B`: Tomcat/Spring treat `..;/` as `../` and drop `;params` |
//! | `fragment` | a raw `#` |
//! | `query_in_path` | a raw `?` (the caller must have split the query off) |
//! | `invalid_character` | a raw byte that RFC 3986 never allows in a path: space `"` `<` `>` `[` `]` `^` `` ` `` `{` `\|` `}` (their escapes, e.g. `%20`, `%7C`, are fine) |
//! | `invalid_utf8` | a run of consecutive escapes of bytes >= 0x80 that is not well-formed UTF-8: overlong forms (`%C0%AF`, `%C0%AE`, `%E0%80%AF`), surrogates, truncated or stray sequences. Overlong `/` and `.` are the classic IIS / Tomcat (CVE-2008-2938) traversals |
//! | `dot_segment_above_root` | removing dot segments would climb above the root (`/..`, `/a/../..`, `/%2e%2e/x`) |
//!
//! Precedence: `too_long`, then `not_absolute`, then the first lexical error scanning left to
//! right (a UTF-8 run is judged where it ends), then `dot_segment_above_root`.
//!
//! # Transforms
//!
//! In this order:
//! 1. Decode `%XX` only when XX encodes an unreserved character (ALPHA, DIGIT, `-`, `.`, `_`,
//!    `~`); every other escape is kept with upper-case hex digits (`%c3%a5` -> `%C3%A5`,
//!    `%3a` -> `%3A`, `%20` stays `%20`).
//! 2. Merge runs of `/` into one (`//a///b` -> `/a/b`).
//! 3. Remove dot segments (RFC 3986 §5.2.4), including those spelt with `%2e`; a trailing `/.` or
//!    `/..` leaves a trailing slash (`/a/b/..` -> `/a/`, `/a/.` -> `/a/`).
//! 4. Keep a trailing slash if present. Case is preserved; `+` is kept (it is not a space in a
//!    path); raw sub-delimiters other than `;` (`! $ & ' ( ) * + , =`) and `:` `@` are kept as sent.
//!
//! # Guarantees
//!
//! For every accepted input `c = canonicalize(raw)?`:
//! - `canonicalize(c.as_str()) == Ok(c)` (idempotent);
//! - `c` starts with `/`, is ASCII, and never contains `//`, `/./`, `/../`, a trailing `/.` or
//!   `/..`, `%2F`, `%5C`, `\`, `;`, `#`, `?`, a control byte, a lower-case hex escape, or an escape
//!   of an unreserved character;
//! - decoding `c` once gives the same segments (no segment decodes to `.`, `..`, or contains `/`),
//!   and decoding it a second time changes nothing;
//! - `c.len() <= raw.len() <= MAX_PATH_LEN`.
//!
//! Escapes of reserved characters stay distinct from their raw forms (`/a:b` and `/a%3Ab` are two
//! canonical paths, as RFC 3986 says); policy patterns that contain reserved characters must be
//! written in the form clients send.

use std::fmt;

/// Longest raw path accepted, in bytes.
pub const MAX_PATH_LEN: usize = 8192;

/// A request path in canonical form: starts with '/', only unreserved chars decoded, other %XX
/// upper-case, no dot segments, no empty segments (except a trailing slash).
///
/// Only [`canonicalize`] / [`canonicalize_bytes`] build one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CanonicalPath(String);

impl CanonicalPath {
    /// The canonical path, e.g. `/a/b/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The segments between slashes: `/` has none; `/a/b/` yields `a`, `b`, `` (a trailing slash
    /// is kept as an empty last segment). No other segment is empty, `.` or `..`.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        let rest = self.0.get(1..).unwrap_or("");
        let mut parts = rest.split('/');
        if rest.is_empty() {
            // "/" has no segments (split would yield one empty string).
            parts.next();
        }
        parts
    }

    /// The canonical path as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for CanonicalPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for CanonicalPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Why a request path was refused. See the module documentation for the exact rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("request path is empty or does not start with '/'")]
    NotAbsolute,
    #[error("request path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    #[error("request path contains a raw byte >= 0x80 (non-ASCII must be percent-encoded)")]
    NonAscii,
    #[error(
        "request path contains a control character (raw or percent-encoded, 0x01-0x1F or 0x7F)"
    )]
    ControlCharacter,
    #[error("request path contains a NUL byte (raw or %00)")]
    NullByte,
    #[error("request path contains '%' not followed by two hex digits")]
    InvalidPercentEncoding,
    #[error("request path contains an encoded slash (%2F)")]
    EncodedSlash,
    #[error("request path contains an encoded backslash (%5C)")]
    EncodedBackslash,
    #[error("request path contains a backslash")]
    Backslash,
    #[error("request path contains a double-encoded escape (%25 followed by two hex digits)")]
    DoubleEncoding,
    #[error("request path contains a path parameter delimiter (';' or %3B)")]
    PathParameter,
    #[error("request path climbs above the root with '..'")]
    DotSegmentAboveRoot,
    #[error("request path contains a fragment delimiter ('#')")]
    Fragment,
    #[error("request path contains a raw '?' (the query must be split off first)")]
    QueryInPath,
    #[error(
        "request path contains a character not allowed in a URI path (space \" < > [ ] ^ ` {{ | }})"
    )]
    InvalidCharacter,
    #[error("request path contains percent-encoded bytes that are not well-formed UTF-8")]
    InvalidUtf8,
}

impl PathError {
    /// Every variant, in declaration order.
    pub const ALL: [PathError; 16] = [
        PathError::NotAbsolute,
        PathError::TooLong,
        PathError::NonAscii,
        PathError::ControlCharacter,
        PathError::NullByte,
        PathError::InvalidPercentEncoding,
        PathError::EncodedSlash,
        PathError::EncodedBackslash,
        PathError::Backslash,
        PathError::DoubleEncoding,
        PathError::PathParameter,
        PathError::DotSegmentAboveRoot,
        PathError::Fragment,
        PathError::QueryInPath,
        PathError::InvalidCharacter,
        PathError::InvalidUtf8,
    ];

    /// A stable snake_case label (for metrics, logs and audit records).
    pub fn reason_code(&self) -> &'static str {
        match self {
            PathError::NotAbsolute => "not_absolute",
            PathError::TooLong => "too_long",
            PathError::NonAscii => "non_ascii",
            PathError::ControlCharacter => "control_character",
            PathError::NullByte => "null_byte",
            PathError::InvalidPercentEncoding => "invalid_percent_encoding",
            PathError::EncodedSlash => "encoded_slash",
            PathError::EncodedBackslash => "encoded_backslash",
            PathError::Backslash => "backslash",
            PathError::DoubleEncoding => "double_encoding",
            PathError::PathParameter => "path_parameter",
            PathError::DotSegmentAboveRoot => "dot_segment_above_root",
            PathError::Fragment => "fragment",
            PathError::QueryInPath => "query_in_path",
            PathError::InvalidCharacter => "invalid_character",
            PathError::InvalidUtf8 => "invalid_utf8",
        }
    }
}

/// Canonicalise the path part of a request target (no query: the caller splits at '?').
pub fn canonicalize(raw: &str) -> Result<CanonicalPath, PathError> {
    canonicalize_bytes(raw.as_bytes())
}

/// Same, from raw bytes (the request line may carry bytes that are not UTF-8).
pub fn canonicalize_bytes(raw: &[u8]) -> Result<CanonicalPath, PathError> {
    if raw.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if raw.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode(raw)?;
    if is_without_dot_or_empty_segments(&decoded) {
        // Nothing for steps 2-4 to do (the usual request): the decoded path is the result.
        return Ok(CanonicalPath(decoded));
    }
    remove_dot_segments(&decoded).map(CanonicalPath)
}

/// True when [`remove_dot_segments`] would return `decoded` unchanged: no segment is empty
/// (`//`), `.` or `..`, except that the last one may be empty (a trailing `/`, kept).
fn is_without_dot_or_empty_segments(decoded: &str) -> bool {
    let rest = decoded.get(1..).unwrap_or("");
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "." | ".." => return false,
            "" if !last => return false,
            _ => {}
        }
    }
    true
}

const UPPER_HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Step 1 plus every lexical refusal. The result is ASCII, starts with '/', and holds only
/// bytes allowed raw in a canonical path and upper-case escapes.
fn decode(raw: &[u8]) -> Result<String, PathError> {
    let mut out = String::with_capacity(raw.len());
    // Consecutive escapes of bytes >= 0x80, validated as UTF-8 when the run ends.
    let mut run: Vec<u8> = Vec::new();
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        if b == b'%' {
            let hi = raw.get(i + 1).copied().and_then(hex_value);
            let lo = raw.get(i + 2).copied().and_then(hex_value);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(PathError::InvalidPercentEncoding);
            };
            i += 3;
            let v = (hi << 4) | lo;
            if v >= 0x80 {
                run.push(v);
                push_escape(&mut out, v);
                continue;
            }
            end_run(&mut run)?;
            match v {
                0x00 => return Err(PathError::NullByte),
                0x01..=0x1F | 0x7F => return Err(PathError::ControlCharacter),
                b'/' => return Err(PathError::EncodedSlash),
                b'\\' => return Err(PathError::EncodedBackslash),
                b';' => return Err(PathError::PathParameter),
                _ if is_unreserved(v) => push_char(&mut out, v)?,
                _ => push_escape(&mut out, v),
            }
        } else {
            end_run(&mut run)?;
            i += 1;
            match b {
                0x80..=0xFF => return Err(PathError::NonAscii),
                0x00 => return Err(PathError::NullByte),
                0x01..=0x1F | 0x7F => return Err(PathError::ControlCharacter),
                b'\\' => return Err(PathError::Backslash),
                b';' => return Err(PathError::PathParameter),
                b'#' => return Err(PathError::Fragment),
                b'?' => return Err(PathError::QueryInPath),
                b' ' | b'"' | b'<' | b'>' | b'[' | b']' | b'^' | b'`' | b'{' | b'|' | b'}' => {
                    return Err(PathError::InvalidCharacter);
                }
                _ => push_char(&mut out, b)?,
            }
        }
    }
    end_run(&mut run)?;
    Ok(out)
}

fn end_run(run: &mut Vec<u8>) -> Result<(), PathError> {
    if run.is_empty() {
        return Ok(());
    }
    let ok = std::str::from_utf8(run).is_ok();
    run.clear();
    if ok {
        Ok(())
    } else {
        Err(PathError::InvalidUtf8)
    }
}

fn push_escape(out: &mut String, v: u8) {
    out.push('%');
    out.push(char::from(UPPER_HEX[usize::from(v >> 4)]));
    out.push(char::from(UPPER_HEX[usize::from(v & 0x0F)]));
}

/// Push one literal ASCII byte (raw or decoded). A `%` in `out` only ever starts a kept escape,
/// so `%25` followed by two hex digits means the request was double-encoded.
fn push_char(out: &mut String, b: u8) -> Result<(), PathError> {
    out.push(char::from(b));
    let bytes = out.as_bytes();
    let n = bytes.len();
    if n >= 5
        && b.is_ascii_hexdigit()
        && bytes[n - 2].is_ascii_hexdigit()
        && &bytes[n - 5..n - 2] == b"%25"
    {
        return Err(PathError::DoubleEncoding);
    }
    Ok(())
}

/// Steps 2–4 on a decoded path that starts with '/'.
fn remove_dot_segments(decoded: &str) -> Result<String, PathError> {
    let rest = decoded.get(1..).unwrap_or("");
    let mut stack: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    let mut parts = rest.split('/').peekable();
    while let Some(part) = parts.next() {
        let last = parts.peek().is_none();
        match part {
            // Empty segments come from runs of '/' (merged) or a trailing '/' (kept).
            "" | "." => trailing_slash = last,
            ".." => {
                if stack.pop().is_none() {
                    return Err(PathError::DotSegmentAboveRoot);
                }
                trailing_slash = last;
            }
            segment => {
                stack.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in &stack {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashSet};

    fn code(raw: &[u8]) -> Result<String, &'static str> {
        canonicalize_bytes(raw)
            .map(CanonicalPath::into_string)
            .map_err(|e| e.reason_code())
    }

    /// The output properties every accepted path must have.
    fn assert_output_properties(raw: &[u8], c: &CanonicalPath) {
        let s = c.as_str();
        let ctx = || format!("raw {:?} -> {s:?}", String::from_utf8_lossy(raw));
        assert!(s.starts_with('/'), "{}", ctx());
        assert!(s.len() <= raw.len(), "{}", ctx());
        for bad in ["//", "/./", "/../", "\\", ";", "#", "?"] {
            assert!(!s.contains(bad), "contains {bad:?}: {}", ctx());
        }
        assert!(!s.ends_with("/.") && !s.ends_with("/.."), "{}", ctx());
        assert!(s != "." && s != "..", "{}", ctx());
        let b = s.as_bytes();
        for (i, &ch) in b.iter().enumerate() {
            assert!((0x21..0x7F).contains(&ch), "byte {ch:#x}: {}", ctx());
            assert!(
                !matches!(
                    ch,
                    b'"' | b'<' | b'>' | b'[' | b']' | b'^' | b'`' | b'{' | b'|' | b'}'
                ),
                "{}",
                ctx()
            );
            if ch == b'%' {
                let h = &b[i + 1..i + 3];
                assert!(
                    h.iter()
                        .all(|x| x.is_ascii_digit() || (b'A'..=b'F').contains(x)),
                    "lower-case or bad escape: {}",
                    ctx()
                );
                let v = (hex_value(h[0]).unwrap() << 4) | hex_value(h[1]).unwrap();
                assert!(!is_unreserved(v), "escaped unreserved: {}", ctx());
                assert!(v >= 0x20 && v != 0x7F, "escaped control: {}", ctx());
                assert!(!matches!(v, b'/' | b'\\' | b';'), "{}", ctx());
            }
        }
        // Segments rebuild the path, and only the last may be empty.
        let segs: Vec<&str> = c.segments().collect();
        let rebuilt = if segs.is_empty() {
            "/".to_string()
        } else {
            format!("/{}", segs.join("/"))
        };
        assert_eq!(rebuilt, s, "{}", ctx());
        for (i, seg) in segs.iter().enumerate() {
            assert!(!seg.is_empty() || i + 1 == segs.len(), "{}", ctx());
            // An application that decodes once sees the same segment structure.
            let d = lenient_decode(seg.as_bytes());
            assert!(d != b"." && d != b"..", "{}", ctx());
            assert!(
                !d.contains(&b'/') && !d.contains(&b'\\') && !d.contains(&0),
                "{}",
                ctx()
            );
        }
        // Decoding twice is the same as decoding once.
        let once = lenient_decode(b);
        assert!(
            std::str::from_utf8(&once).is_ok(),
            "decodes to invalid UTF-8: {}",
            ctx()
        );
        assert_eq!(
            lenient_decode(&once),
            once,
            "double decode differs: {}",
            ctx()
        );
        // Idempotent.
        assert_eq!(canonicalize(s), Ok(c.clone()), "{}", ctx());
        // The proxy's view and a naive application's view of the raw path agree.
        assert_eq!(app_view(raw), app_view(b), "app view differs: {}", ctx());
        assert_eq!(app_view(b), once, "app would normalise further: {}", ctx());
    }

    /// Percent-decode every valid escape once; keep invalid ones literally (lenient servers).
    fn lenient_decode(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            if s[i] == b'%'
                && i + 2 < s.len()
                && let (Some(h), Some(l)) = (hex_value(s[i + 1]), hex_value(s[i + 2]))
            {
                out.push((h << 4) | l);
                i += 3;
                continue;
            }
            out.push(s[i]);
            i += 1;
        }
        out
    }

    /// What a naive application does: decode once, merge slashes, resolve dots (clamping at root).
    fn app_view(raw: &[u8]) -> Vec<u8> {
        let d = lenient_decode(raw);
        let parts: Vec<&[u8]> = d[1..].split(|&c| c == b'/').collect();
        let mut stack: Vec<&[u8]> = Vec::new();
        let mut trailing = false;
        for (i, p) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            match *p {
                b"" | b"." => trailing = last,
                b".." => {
                    stack.pop();
                    trailing = last;
                }
                seg => {
                    stack.push(seg);
                    trailing = false;
                }
            }
        }
        let mut out = Vec::new();
        for seg in &stack {
            out.push(b'/');
            out.extend_from_slice(seg);
        }
        if out.is_empty() || trailing {
            out.push(b'/');
        }
        out
    }

    #[test]
    fn table_covers_every_rule() {
        use PathError::*;
        let ok = |raw: &str, want: &str| (raw.as_bytes().to_vec(), Ok(want.to_string()));
        let err = |raw: &[u8], e: PathError| (raw.to_vec(), Err(e.reason_code()));
        let rows: Vec<(Vec<u8>, Result<String, &'static str>)> = vec![
            // Refusals, one or more per variant.
            err(b"", NotAbsolute),
            err(b"a/b", NotAbsolute),
            err(b"*", NotAbsolute),
            err(b"http://x/", NotAbsolute),
            err(format!("/{}", "a".repeat(MAX_PATH_LEN)).as_bytes(), TooLong),
            err(b"/caf\xc3\xa9", NonAscii),
            err(b"/a\xff", NonAscii),
            err(b"/a\tb", ControlCharacter),
            err(b"/a\r\nb", ControlCharacter),
            err(b"/a\x7f", ControlCharacter),
            err(b"/a%0a", ControlCharacter),
            err(b"/a%7F", ControlCharacter),
            err(b"/a\x00", NullByte),
            err(b"/a%00b", NullByte),
            err(b"/%", InvalidPercentEncoding),
            err(b"/%4", InvalidPercentEncoding),
            err(b"/%zz", InvalidPercentEncoding),
            err(b"/%%41", InvalidPercentEncoding),
            err(b"/a%2fb", EncodedSlash),
            err(b"/a%2Fb", EncodedSlash),
            err(b"/a%5cb", EncodedBackslash),
            err(b"/a\\b", Backslash),
            err(b"/a%252Fb", DoubleEncoding),
            err(b"/%2541", DoubleEncoding),
            err(b"/%25%34%31", DoubleEncoding),
            err(b"/a;x/b", PathParameter),
            err(b"/..;/admin", PathParameter),
            err(b"/a%3bb", PathParameter),
            err(b"/..", DotSegmentAboveRoot),
            err(b"/a/../..", DotSegmentAboveRoot),
            err(b"/%2e%2e/x", DotSegmentAboveRoot),
            err(b"/a#b", Fragment),
            err(b"/a?b", QueryInPath),
            err(b"/a b", InvalidCharacter),
            err(b"/a|b", InvalidCharacter),
            err(b"/%C0%AF", InvalidUtf8),
            err(b"/%C3", InvalidUtf8),
            err(b"/%C3a", InvalidUtf8),
            // Step 1: decode unreserved, upper-case the rest.
            ok("/%41%7e%2D%2e%5F", "/A~-._"),
            ok("/%c3%a5", "/%C3%A5"),
            ok("/%3a", "/%3A"),
            ok("/%20", "/%20"),
            ok("/%25", "/%25"),
            ok("/%25zz", "/%25zz"),
            // Step 2: merge slashes.
            ok("//a///b", "/a/b"),
            ok("//", "/"),
            // Step 3: dot segments.
            ok("/a/./b/../c", "/a/c"),
            ok("/a/%2e/b/%2E%2e/c", "/a/c"),
            ok("/a/b/..", "/a/"),
            ok("/a/.", "/a/"),
            ok("/.", "/"),
            ok("/a/..", "/"),
            ok("/...", "/..."),
            // Step 4: trailing slash, case, '+'.
            ok("/a/", "/a/"),
            ok("/A/b", "/A/b"),
            ok("/a+b", "/a+b"),
            ok("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,="),
            ok("/", "/"),
            ok(
                &format!("/{}", "a".repeat(MAX_PATH_LEN - 1)),
                &format!("/{}", "a".repeat(MAX_PATH_LEN - 1)),
            ),
        ];
        let mut seen = HashSet::new();
        for (raw, want) in &rows {
            let got = code(raw);
            assert_eq!(&got, want, "raw {:?}", String::from_utf8_lossy(raw));
            if let Err(c) = got {
                seen.insert(c);
            }
        }
        for e in PathError::ALL {
            assert!(seen.contains(e.reason_code()), "no table row for {e:?}");
        }
    }

    #[test]
    fn reason_codes_are_unique_snake_case_with_distinct_messages() {
        let codes: HashSet<&str> = PathError::ALL.iter().map(PathError::reason_code).collect();
        assert_eq!(codes.len(), PathError::ALL.len());
        for c in &codes {
            assert!(
                c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{c}"
            );
        }
        let messages: HashSet<String> = PathError::ALL.iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), PathError::ALL.len());
    }

    #[test]
    fn segments_and_display() {
        let segs = |s: &str| -> Vec<String> {
            canonicalize(s)
                .unwrap()
                .segments()
                .map(str::to_string)
                .collect()
        };
        assert!(segs("/").is_empty());
        assert_eq!(segs("/a"), ["a"]);
        assert_eq!(segs("/a/b/"), ["a", "b", ""]);
        assert_eq!(segs("//a//b//"), ["a", "b", ""]);
        let c = canonicalize("/x/%7e/").unwrap();
        assert_eq!(c.to_string(), "/x/~/");
        assert_eq!(c.as_ref(), "/x/~/");
    }

    // ---- corpus -------------------------------------------------------------------------------

    /// Expand one corpus column: `\xNN` is one byte; `{N*text}` is `text` repeated N times
    /// (`text` may itself use `\xNN`); anything else is literal.
    fn expand(col: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < col.len() {
            if col[i] == b'\\'
                && col.get(i + 1) == Some(&b'x')
                && let (Some(h), Some(l)) = (
                    col.get(i + 2).copied().and_then(hex_value),
                    col.get(i + 3).copied().and_then(hex_value),
                )
            {
                out.push((h << 4) | l);
                i += 4;
                continue;
            }
            if col[i] == b'{'
                && let Some((n, text, len)) = repetition(&col[i..])
            {
                let unit = expand(text);
                for _ in 0..n {
                    out.extend_from_slice(&unit);
                }
                i += len;
                continue;
            }
            out.push(col[i]);
            i += 1;
        }
        out
    }

    /// `{N*text}` at the start of `s`: (N, text, length of the whole construct).
    fn repetition(s: &[u8]) -> Option<(usize, &[u8], usize)> {
        let star = s.iter().position(|&b| b == b'*')?;
        let digits = &s[1..star];
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let close = star + s[star..].iter().position(|&b| b == b'}')?;
        let n: usize = std::str::from_utf8(digits).ok()?.parse().ok()?;
        Some((n, &s[star + 1..close], close + 1))
    }

    #[test]
    fn corpus_expansion_syntax() {
        assert_eq!(expand(b"/{3*ab}c"), b"/abababc");
        assert_eq!(expand(b"/\\x00\\x5C\\xff"), b"/\x00\\\xff");
        assert_eq!(expand(b"/{2*\\x41}"), b"/AA");
        assert_eq!(expand(b"/a{b}\\q\\x4"), b"/a{b}\\q\\x4");
        assert_eq!(expand(b"/{x*a}"), b"/{x*a}");
    }

    #[test]
    fn corpus_vectors() {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/path_vectors.tsv");
        let text = std::fs::read(file).unwrap_or_else(|e| panic!("read {file}: {e}"));
        let mut rows = 0;
        let mut codes: BTreeMap<&str, usize> = BTreeMap::new();
        let known: HashSet<&str> = PathError::ALL.iter().map(PathError::reason_code).collect();
        let mut raws = HashSet::new();
        for (n, line) in text.split(|&b| b == b'\n').enumerate() {
            let line_no = n + 1;
            if line.is_empty() || line[0] == b'#' {
                continue;
            }
            let cols: Vec<&[u8]> = line.split(|&b| b == b'\t').collect();
            assert_eq!(cols.len(), 2, "line {line_no}: want raw<TAB>expected");
            let raw = expand(cols[0]);
            assert!(raws.insert(raw.clone()), "line {line_no}: duplicate raw");
            let want = expand(cols[1]);
            let got = canonicalize_bytes(&raw);
            rows += 1;
            if let Some(want_code) = want.strip_prefix(b"!") {
                let want_code = std::str::from_utf8(want_code).unwrap();
                assert!(
                    known.contains(want_code),
                    "line {line_no}: unknown code {want_code}"
                );
                let got = got.err().map(|e| e.reason_code());
                assert_eq!(got, Some(want_code), "line {line_no}");
                if let Some(got) = got {
                    *codes.entry(got).or_default() += 1;
                }
            } else {
                let want = String::from_utf8(want).unwrap();
                let c = got.unwrap_or_else(|e| panic!("line {line_no}: refused {e:?}"));
                assert_eq!(c.as_str(), want, "line {line_no}");
                assert_output_properties(&raw, &c);
            }
            if let Ok(s) = std::str::from_utf8(&raw) {
                assert_eq!(canonicalize(s), canonicalize_bytes(&raw), "line {line_no}");
            }
        }
        assert!(rows >= 150, "only {rows} corpus rows");
        for c in &known {
            assert!(codes.contains_key(c), "corpus lacks reason code {c}");
        }
    }

    // ---- properties ---------------------------------------------------------------------------

    use crate::xorshift::XorShift;

    const TOKENS: &[&[u8]] = &[
        b"/",
        b"/",
        b"/",
        b"/",
        b".",
        b".",
        b".",
        b"%",
        b"2",
        b"e",
        b"E",
        b"f",
        b"F",
        b"5",
        b"c",
        b"C",
        b";",
        b"\\",
        b"a",
        b"b",
        b"a",
        b"b",
        b"%2e",
        b"%2E",
        b"%2f",
        b"%25",
        b"%5c",
        b"%3b",
        b"..",
        b"../",
        b"/..",
        b"/.",
        b"%c3%a5",
        b"%41",
        b"%7e",
        b"%20",
        b"%C0",
        b"%e2%82%ac",
        b"~",
        b"+",
        b":",
        b"-",
        b"_",
        b"%7C",
        b"%00",
        b"|",
    ];

    fn random_path(rng: &mut XorShift) -> Vec<u8> {
        let mut p = Vec::new();
        if rng.below(20) != 0 {
            p.push(b'/');
        }
        let len = rng.below(24);
        for _ in 0..len {
            if rng.below(12) == 0 {
                p.push((rng.next_u64() & 0xFF) as u8);
            } else {
                p.extend_from_slice(TOKENS[rng.below(TOKENS.len())]);
            }
        }
        p
    }

    #[test]
    fn random_paths_satisfy_properties() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let known: HashSet<&str> = PathError::ALL.iter().map(PathError::reason_code).collect();
        let (mut accepted, mut refused) = (0, 0);
        let mut seen_codes = HashSet::new();
        for _ in 0..50_000 {
            let raw = random_path(&mut rng);
            match canonicalize_bytes(&raw) {
                Ok(c) => {
                    accepted += 1;
                    assert_output_properties(&raw, &c);
                }
                Err(e) => {
                    refused += 1;
                    assert!(known.contains(e.reason_code()));
                    seen_codes.insert(e.reason_code());
                }
            }
            if let Ok(s) = std::str::from_utf8(&raw) {
                assert_eq!(canonicalize(s), canonicalize_bytes(&raw));
            }
        }
        // The generator must exercise both sides meaningfully.
        assert!(accepted >= 2_000, "only {accepted} accepted");
        assert!(refused >= 2_000, "only {refused} refused");
        assert!(seen_codes.len() >= 12, "codes seen: {seen_codes:?}");
    }

    /// Inputs built only from canonical-safe pieces must mostly be accepted, and each accepted
    /// one is idempotent: a generator biased towards acceptance, so dot handling gets exercised.
    #[test]
    fn random_dot_heavy_paths() {
        let mut rng = XorShift(0xD1B5_4A32_D192_ED03);
        let pieces: &[&[u8]] = &[
            b"/", b"/", b".", b"..", b"%2e", b"%2E", b"a", b"B", b"%41", b"%c3%a5", b"~",
            b"%2e%2e", b".%2e", b"+",
        ];
        let mut accepted = 0;
        for _ in 0..20_000 {
            let mut raw = b"/".to_vec();
            for _ in 0..rng.below(16) {
                raw.extend_from_slice(pieces[rng.below(pieces.len())]);
            }
            match canonicalize_bytes(&raw) {
                Ok(c) => {
                    accepted += 1;
                    assert_output_properties(&raw, &c);
                }
                Err(e) => assert!(
                    matches!(e, PathError::DotSegmentAboveRoot | PathError::InvalidUtf8),
                    "{e:?} for {:?}",
                    String::from_utf8_lossy(&raw)
                ),
            }
        }
        assert!(accepted >= 5_000, "only {accepted} accepted");
    }

    /// The shortcut for paths with nothing to remove returns exactly what steps 2-4 would, and
    /// is taken only when they would change nothing: every path of up to five segments drawn
    /// from empty, `.`, `..` and names, with and without a trailing `/`.
    #[test]
    fn shortcut_agrees_with_removing_dot_segments() {
        let segments = ["", ".", "..", "a", "b.c", "..d", ".e"];
        let mut paths = vec!["/".to_owned()];
        let mut frontier = vec![String::new()];
        for _ in 0..5 {
            let mut next = Vec::new();
            for prefix in &frontier {
                for segment in segments {
                    let path = format!("{prefix}/{segment}");
                    paths.push(path.clone());
                    paths.push(format!("{path}/"));
                    next.push(path);
                }
            }
            frontier = next;
        }
        let (mut shortcut, mut slow) = (0, 0);
        for path in &paths {
            let full = remove_dot_segments(path);
            if is_without_dot_or_empty_segments(path) {
                shortcut += 1;
                assert_eq!(full.as_deref(), Ok(path.as_str()), "{path}");
            } else {
                slow += 1;
                assert_ne!(full.as_deref(), Ok(path.as_str()), "{path}");
            }
            assert_eq!(
                canonicalize(path).map(CanonicalPath::into_string),
                full,
                "{path}"
            );
        }
        assert!(shortcut > 1_000 && slow > 10_000, "{shortcut} / {slow}");
    }
}

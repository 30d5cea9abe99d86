//! The request's host: exactly one, in one strict syntax, in one canonical form.
//!
//! Accepted: a DNS name (letters, digits and `-` in dot-separated labels), a dotted-decimal IPv4
//! address, or a bracketed IPv6 address, each with an optional decimal port. Refused: userinfo,
//! percent-encoding, `_` and every other character, IPv6 zone ids, numeric forms that resolvers
//! and URL parsers read differently (`127.1`, `0x7f.0.0.1`, `010.0.0.1`), empty or zero-padded
//! ports. Canonical form: lower case, no trailing dot, IPv6 compressed, the default port dropped.
//! The policy matches the canonical name and the app receives exactly the canonical value.

use std::net::Ipv6Addr;

use http::header::HOST;
use http::{HeaderMap, HeaderValue, Uri};

/// Longest host name (RFC 1035: 253 characters without the trailing dot).
const MAX_NAME: usize = 253;
/// Longest label of a host name.
const MAX_LABEL: usize = 63;

/// Why a request's host was refused (400 `invalid_host`). Messages never repeat the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("the request names no host")]
    Missing,
    #[error("the request has more than one Host header")]
    Multiple,
    #[error("the host is empty")]
    Empty,
    #[error("the host carries userinfo")]
    Userinfo,
    #[error("the host has a character outside letters, digits, '-' and '.'")]
    BadCharacter,
    #[error(
        "a label of the host name is empty, longer than 63 characters or starts or ends with '-'"
    )]
    BadLabel,
    #[error("the host name is longer than 253 characters")]
    TooLong,
    #[error("a numeric host is not a dotted-decimal IPv4 address")]
    BadIpv4,
    #[error("an IPv6 address is malformed or not in brackets")]
    BadIpv6,
    #[error("the IPv6 address carries a zone identifier")]
    Ipv6Zone,
    #[error("the port is not a decimal number from 1 to 65535 without leading zeros")]
    BadPort,
    #[error("the request target's authority and the Host header name different hosts")]
    AuthorityMismatch,
}

/// A host in canonical form: `name` or `name:port`, the port only when not the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalHost {
    /// The canonical `Host` value, sent on to the app as is.
    value: HeaderValue,
    /// Length of the name (without `:port`) at the start of `value`.
    name_len: usize,
}

impl CanonicalHost {
    /// `name[:port]`, as the app receives it in `Host`.
    pub fn as_str(&self) -> &str {
        // Built only from ASCII checked below.
        self.value.to_str().unwrap_or_default()
    }

    /// The host without its port: what a route's `host` is compared with.
    pub fn name(&self) -> &str {
        &self.as_str()[..self.name_len]
    }

    pub fn header_value(&self) -> &HeaderValue {
        &self.value
    }

    /// Parse one host value (`Host` header or a URI authority) into canonical form.
    /// `default_port` is dropped from the result.
    pub fn parse(raw: &[u8], default_port: u16) -> Result<Self, HostError> {
        Ok(ParsedHost::parse(raw, default_port)?.render(None))
    }
}

/// A host value checked against the grammar, still borrowing the bytes it came from.
#[derive(Debug, Clone, Copy)]
struct ParsedHost<'a> {
    name: Name<'a>,
    /// The port, unless absent or the default.
    port: Option<u16>,
    raw: &'a [u8],
    /// `raw` is known to be the canonical spelling already.
    canonical: bool,
}

impl<'a> ParsedHost<'a> {
    fn parse(raw: &'a [u8], default_port: u16) -> Result<Self, HostError> {
        match Self::parse_common(raw, default_port) {
            Some(common) => Ok(common),
            None => Self::parse_any(raw, default_port),
        }
    }

    /// Any host value, by the full grammar.
    fn parse_any(raw: &'a [u8], default_port: u16) -> Result<Self, HostError> {
        if raw.is_empty() {
            return Err(HostError::Empty);
        }
        let (mut at, mut colons, mut first_colon) = (false, 0, None);
        for (i, &b) in raw.iter().enumerate() {
            at |= b == b'@';
            if b == b':' {
                colons += 1;
                first_colon.get_or_insert(i);
            }
        }
        if at {
            return Err(HostError::Userinfo);
        }
        let (name, port) = if raw[0] == b'[' {
            let close = raw
                .iter()
                .position(|&b| b == b']')
                .ok_or(HostError::BadIpv6)?;
            let port = match &raw[close + 1..] {
                [] => None,
                [b':', port @ ..] => Some(port),
                _ => return Err(HostError::BadIpv6),
            };
            (Name::Ipv6(ipv6(&raw[1..close])?), port)
        } else {
            if colons > 1 {
                return Err(HostError::BadIpv6);
            }
            let (name, port) = match first_colon {
                Some(colon) => (&raw[..colon], Some(&raw[colon + 1..])),
                None => (raw, None),
            };
            (registered_name_or_ipv4(name)?, port)
        };
        let port = port.map(parse_port).transpose()?;
        Ok(Self {
            name,
            port: port.filter(|&p| p != default_port),
            raw,
            canonical: false,
        })
    }

    /// The usual host in one pass: a lower-case DNS name whose last label starts with a letter
    /// (so it cannot be read as a number), no trailing dot, an optional valid port. `None` for
    /// anything else, which [`ParsedHost::parse`] then reads in full; both give the same result
    /// for what this accepts.
    fn parse_common(raw: &'a [u8], default_port: u16) -> Option<Self> {
        let colon = memchr::memchr(b':', raw);
        let (name, port) = match colon {
            Some(colon) => (&raw[..colon], Some(parse_port(&raw[colon + 1..]).ok()?)),
            None => (raw, None),
        };
        if name.len() > MAX_NAME {
            return None;
        }
        let label_ok = |label: &[u8]| {
            matches!(label, [first, .., last] if *first != b'-' && *last != b'-')
                || matches!(label, [only] if *only != b'-')
        };
        let mut label_start = 0;
        for (i, &b) in name.iter().enumerate() {
            if b == b'.' {
                let label = &name[label_start..i];
                if label.len() > MAX_LABEL || !label_ok(label) {
                    return None;
                }
                label_start = i + 1;
            } else if !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
                return None;
            }
        }
        let last = &name[label_start..];
        if last.len() > MAX_LABEL || !label_ok(last) || !last[0].is_ascii_lowercase() {
            return None;
        }
        let port = port.filter(|&p| p != default_port);
        Some(Self {
            name: Name::Text(std::str::from_utf8(name).ok()?),
            // A default port that was sent makes `raw` longer than the canonical value.
            canonical: port.is_some() || colon.is_none(),
            port,
            raw,
        })
    }

    /// Whether `raw` already is the canonical spelling: a lower-case name, no trailing dot, and
    /// a port only when it is not the default (nothing else can make `raw` longer).
    fn is_canonical(&self) -> bool {
        let Name::Text(name) = self.name else {
            return false;
        };
        let digits = |p: u16| p.checked_ilog10().map_or(1, |l| l as usize + 1);
        let port_len = self.port.map_or(0, |p| 1 + digits(p));
        !name.bytes().any(|b| b.is_ascii_uppercase()) && self.raw.len() == name.len() + port_len
    }

    /// Do both name the same host in canonical form?
    fn same_host(&self, other: &Self) -> bool {
        let names = match (self.name, other.name) {
            (Name::Text(a), Name::Text(b)) => a.eq_ignore_ascii_case(b),
            (Name::Ipv6(a), Name::Ipv6(b)) => a == b,
            _ => false,
        };
        names && self.port == other.port
    }

    /// The canonical value; `sent` is the header value `raw` came from, reused when it already
    /// is canonical (the common case: no allocation).
    fn render(&self, sent: Option<&HeaderValue>) -> CanonicalHost {
        if let (Some(value), Name::Text(name)) = (sent, self.name)
            && (self.canonical || self.is_canonical())
        {
            return CanonicalHost {
                value: value.clone(),
                name_len: name.len(),
            };
        }
        let mut text = match self.name {
            Name::Text(n) => n.to_ascii_lowercase(),
            Name::Ipv6(ip) => format!("[{ip}]"),
        };
        let name_len = text.len();
        if let Some(port) = self.port {
            text.push(':');
            text.push_str(&port.to_string());
        }
        CanonicalHost {
            // Letters, digits, '-', '.', ':', brackets and hex digits only: always a valid value.
            value: HeaderValue::from_str(&text)
                .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
            name_len,
        }
    }
}

impl std::fmt::Display for CanonicalHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy)]
enum Name<'a> {
    /// A DNS name or IPv4 address, checked, not yet lower-cased, no trailing dot.
    Text(&'a str),
    Ipv6(Ipv6Addr),
}

fn ipv6(inside: &[u8]) -> Result<Ipv6Addr, HostError> {
    if inside.contains(&b'%') {
        return Err(HostError::Ipv6Zone);
    }
    std::str::from_utf8(inside)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(HostError::BadIpv6)
}

fn parse_port(port: &[u8]) -> Result<u16, HostError> {
    let plain = !port.is_empty()
        && port.len() <= 5
        && port[0] != b'0'
        && port.iter().all(u8::is_ascii_digit);
    if !plain {
        return Err(HostError::BadPort);
    }
    std::str::from_utf8(port)
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
        .ok_or(HostError::BadPort)
}

/// A DNS name or a dotted-decimal IPv4 address, with at most one trailing dot removed. One
/// pass over the bytes checks the characters and the labels (a bad character is reported before
/// a bad label, wherever each is).
fn registered_name_or_ipv4(name: &[u8]) -> Result<Name<'_>, HostError> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() {
        return Err(HostError::Empty);
    }
    let mut bad_label = false;
    let mut labels = 0;
    let mut label_start = 0;
    let mut last = name;
    for i in 0..=name.len() {
        match name.get(i) {
            Some(b) if b.is_ascii_alphanumeric() || *b == b'-' => continue,
            Some(b'.') | None => {
                let label = &name[label_start..i];
                last = label;
                bad_label |= label.is_empty()
                    || label.len() > MAX_LABEL
                    || label[0] == b'-'
                    || label[label.len() - 1] == b'-';
                labels += 1;
                label_start = i + 1;
            }
            Some(_) => return Err(HostError::BadCharacter),
        }
    }
    if name.len() > MAX_NAME {
        return Err(HostError::TooLong);
    }
    if bad_label {
        return Err(HostError::BadLabel);
    }
    // URL parsers and resolvers read a name ending in a number as an IPv4 address, in decimal,
    // octal or hex and with fewer than four parts: only the one unambiguous spelling passes.
    if looks_numeric(last) && !(labels == 4 && name.split(|&b| b == b'.').all(is_octet)) {
        return Err(HostError::BadIpv4);
    }
    // Checked above: ASCII only.
    std::str::from_utf8(name)
        .map(Name::Text)
        .map_err(|_| HostError::BadCharacter)
}

/// All digits, or `0x` followed by hex digits: a label an IPv4 parser would take as a number.
fn looks_numeric(label: &[u8]) -> bool {
    let hex = match label {
        [b'0', b'x' | b'X', rest @ ..] => rest.iter().all(u8::is_ascii_hexdigit),
        _ => false,
    };
    hex || label.iter().all(u8::is_ascii_digit)
}

/// A decimal number 0–255 without leading zeros.
fn is_octet(label: &[u8]) -> bool {
    !label.is_empty()
        && label.len() <= 3
        && label.iter().all(u8::is_ascii_digit)
        && !(label.len() > 1 && label[0] == b'0')
        && std::str::from_utf8(label)
            .ok()
            .and_then(|s| s.parse::<u8>().ok())
            .is_some()
}

/// The request's one host: the `Host` header and the request target's authority (HTTP/2
/// `:authority`, HTTP/1 absolute-form) where present, which must then name the same host.
pub fn request_host(
    uri: &Uri,
    headers: &HeaderMap,
    default_port: u16,
) -> Result<CanonicalHost, HostError> {
    let mut values = headers.get_all(HOST).iter();
    let header = values.next();
    if values.next().is_some() {
        return Err(HostError::Multiple);
    }
    let from_header = header
        .map(|h| ParsedHost::parse(h.as_bytes(), default_port))
        .transpose()?;
    // The usual HTTP/2 request from a sidecar carries the same bytes in both: parsed once.
    let from_target = match (uri.authority(), header) {
        (Some(a), Some(h)) if a.as_str().as_bytes() == h.as_bytes() => from_header,
        (a, _) => a
            .map(|a| ParsedHost::parse(a.as_str().as_bytes(), default_port))
            .transpose()?,
    };
    match (from_header, from_target) {
        (Some(h), Some(t)) if !h.same_host(&t) => Err(HostError::AuthorityMismatch),
        (Some(h), _) => Ok(h.render(header)),
        (None, Some(t)) => Ok(t.render(None)),
        (None, None) => Err(HostError::Missing),
    }
}

/// Put the canonical host in `Host` and, when the target has an authority, in the URI too, so
/// that whichever the app reads is the host vakt checked.
pub fn set_canonical_host(
    uri: &mut Uri,
    headers: &mut HeaderMap,
    host: &CanonicalHost,
) -> Result<(), HostError> {
    if headers.get(HOST) != Some(host.header_value()) {
        headers.insert(HOST, host.header_value().clone());
    }
    if let Some(authority) = uri.authority()
        && authority.as_str() != host.as_str()
    {
        let mut parts = std::mem::take(uri).into_parts();
        parts.authority = Some(
            host.as_str()
                .parse()
                .map_err(|_| HostError::AuthorityMismatch)?,
        );
        *uri = Uri::from_parts(parts).map_err(|_| HostError::AuthorityMismatch)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<String, HostError> {
        CanonicalHost::parse(raw.as_bytes(), 443).map(|h| h.to_string())
    }

    #[test]
    fn canonical_forms() {
        let cases = [
            ("orders.shop", "orders.shop"),
            ("Orders.SHOP", "orders.shop"),
            ("orders.shop.", "orders.shop"),
            ("orders.shop:443", "orders.shop"),
            ("orders.shop.:8443", "orders.shop:8443"),
            ("ORDERS.shop:80", "orders.shop:80"),
            ("a", "a"),
            ("x-1.y-2", "x-1.y-2"),
            ("3com.example", "3com.example"),
            ("10.0.0.1", "10.0.0.1"),
            ("10.0.0.1:9", "10.0.0.1:9"),
            ("0.0.0.0", "0.0.0.0"),
            ("255.255.255.255", "255.255.255.255"),
            ("[::1]", "[::1]"),
            ("[0:0:0:0:0:0:0:1]:443", "[::1]"),
            ("[2001:DB8::A]:8080", "[2001:db8::a]:8080"),
            ("[::ffff:10.0.0.1]", "[::ffff:10.0.0.1]"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
            ("h:65535", "h:65535"),
        ];
        for (raw, want) in cases {
            assert_eq!(parse(raw).as_deref(), Ok(want), "{raw}");
        }
        let h = CanonicalHost::parse(b"Orders.Shop:8443", 443).unwrap();
        assert_eq!(h.name(), "orders.shop");
        let h = CanonicalHost::parse(b"[::1]:8443", 443).unwrap();
        assert_eq!(h.name(), "[::1]");
    }

    #[test]
    fn refused_forms() {
        let long_label = format!("{}.example", "a".repeat(64));
        let long_name = vec!["abcdefghi"; 26].join(".");
        let cases: Vec<(&str, HostError)> = vec![
            ("", HostError::Empty),
            (".", HostError::Empty),
            (":443", HostError::Empty),
            ("user@orders.shop", HostError::Userinfo),
            ("user:pw@orders.shop", HostError::Userinfo),
            ("@orders.shop", HostError::Userinfo),
            ("orders.shop@evil", HostError::Userinfo),
            ("orders_shop", HostError::BadCharacter),
            ("orders.shop ", HostError::BadCharacter),
            (" orders.shop", HostError::BadCharacter),
            ("orders\tshop", HostError::BadCharacter),
            ("orders%2eshop", HostError::BadCharacter),
            ("orders.shop/x", HostError::BadCharacter),
            ("orders.shop\\x", HostError::BadCharacter),
            ("orders.shop?x", HostError::BadCharacter),
            ("orders.shop#x", HostError::BadCharacter),
            ("*.shop", HostError::BadCharacter),
            ("orders,evil", HostError::BadCharacter),
            ("ördrs.shop", HostError::BadCharacter),
            ("orders..shop", HostError::BadLabel),
            ("orders.shop..", HostError::BadLabel),
            (".orders.shop", HostError::BadLabel),
            ("-orders.shop", HostError::BadLabel),
            ("orders-.shop", HostError::BadLabel),
            (long_label.as_str(), HostError::BadLabel),
            (long_name.as_str(), HostError::TooLong),
            ("127.1", HostError::BadIpv4),
            ("127.0.1", HostError::BadIpv4),
            ("2130706433", HostError::BadIpv4),
            ("0x7f.0.0.1", HostError::BadIpv4),
            ("1.2.3.0x4", HostError::BadIpv4),
            ("010.0.0.1", HostError::BadIpv4),
            ("10.0.0.01", HostError::BadIpv4),
            ("256.0.0.1", HostError::BadIpv4),
            ("1.2.3.4.5", HostError::BadIpv4),
            ("a.1", HostError::BadIpv4),
            ("[::1", HostError::BadIpv6),
            ("[::1]x", HostError::BadIpv6),
            ("[::g]", HostError::BadIpv6),
            ("[1.2.3.4]", HostError::BadIpv6),
            ("[fe80::1%25eth0]", HostError::Ipv6Zone),
            ("[fe80::1%eth0]", HostError::Ipv6Zone),
            ("::1", HostError::BadIpv6),
            ("orders.shop:", HostError::BadPort),
            ("orders.shop:0", HostError::BadPort),
            ("orders.shop:080", HostError::BadPort),
            ("orders.shop:65536", HostError::BadPort),
            ("orders.shop:+80", HostError::BadPort),
            ("orders.shop:80:80", HostError::BadIpv6),
            ("orders.shop: 80", HostError::BadPort),
            ("[::1]:", HostError::BadPort),
        ];
        for (raw, want) in cases {
            assert_eq!(parse(raw), Err(want), "{raw:?}");
        }
    }

    fn headers(hosts: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for h in hosts {
            map.append(HOST, HeaderValue::from_str(h).unwrap());
        }
        map
    }

    #[test]
    fn one_host_per_request() {
        let origin: Uri = "/x".parse().unwrap();
        let absolute: Uri = "http://Orders.shop:443/x".parse().unwrap();
        let other: Uri = "http://evil.shop/x".parse().unwrap();
        let ok = |uri: &Uri, hosts: &[&str]| {
            request_host(uri, &headers(hosts), 443).map(|h| h.to_string())
        };
        assert_eq!(ok(&origin, &["orders.shop"]).as_deref(), Ok("orders.shop"));
        assert_eq!(ok(&absolute, &[]).as_deref(), Ok("orders.shop"));
        assert_eq!(
            ok(&absolute, &["ORDERS.shop."]).as_deref(),
            Ok("orders.shop")
        );
        assert_eq!(ok(&origin, &[]), Err(HostError::Missing));
        assert_eq!(ok(&origin, &["a", "a"]), Err(HostError::Multiple));
        assert_eq!(
            ok(&other, &["orders.shop"]),
            Err(HostError::AuthorityMismatch)
        );
        assert_eq!(
            ok(&absolute, &["orders.shop:8443"]),
            Err(HostError::AuthorityMismatch)
        );
        assert_eq!(ok(&absolute, &["a_b"]), Err(HostError::BadCharacter));
    }

    #[test]
    fn the_canonical_host_replaces_what_was_sent() {
        let mut uri: Uri = "http://ORDERS.shop:443/x?q=1".parse().unwrap();
        let mut map = headers(&["Orders.Shop."]);
        let host = request_host(&uri, &map, 443).unwrap();
        set_canonical_host(&mut uri, &mut map, &host).unwrap();
        assert_eq!(uri.to_string(), "http://orders.shop/x?q=1");
        assert_eq!(
            map.get_all(HOST).iter().collect::<Vec<_>>(),
            ["orders.shop"]
        );
    }

    /// Random bytes and random recombinations of host fragments: the parser never panics, and
    /// whatever it accepts is canonical (parsing it again gives it back), holds only the
    /// characters of the grammar and never names userinfo or a default port.
    #[test]
    fn parser_fuzz() {
        const PIECES: &[&str] = &[
            "a", "Z", "0", "1", "9", "255", "256", "00", "0x", "ff", "-", ".", "..", ":", "::",
            "[", "]", "@", "%", "%25", "_", " ", "\t", "443", "080", "65535", "65536", "xn--", "é",
            "\u{0}", "/", "\\", "?", "#", "*", ",", ";", "=", "orders", "shop", "1.2.3.4", "::1",
            "fe80::", "ffff:", "[::1]", "127.1",
        ];
        let mut rng = crate::xorshift::XorShift(crate::xorshift::XorShift::SEED);
        let mut next = || rng.next_u64();
        let (mut accepted, mut common_path) = (0, 0);
        for round in 0..200_000 {
            let raw: Vec<u8> = if round % 2 == 0 {
                let n = (next() % 8) as usize;
                (0..n)
                    .flat_map(|_| PIECES[(next() % PIECES.len() as u64) as usize].bytes())
                    .collect()
            } else {
                let n = (next() % 12) as usize;
                (0..n).map(|_| (next() % 256) as u8).collect()
            };
            // The one-pass reading of the usual host agrees with the full grammar.
            if let Some(common) = ParsedHost::parse_common(&raw, 443) {
                let full = ParsedHost::parse_any(&raw, 443).expect("the full grammar accepts it");
                assert_eq!(common.render(None), full.render(None), "{raw:?}");
                assert_eq!(common.canonical, full.is_canonical(), "{raw:?}");
                common_path += 1;
            }
            let Ok(host) = CanonicalHost::parse(&raw, 443) else {
                continue;
            };
            accepted += 1;
            // Reusing the sent value where it is canonical gives the same result.
            if let Ok(sent) = HeaderValue::from_bytes(&raw) {
                let reused = ParsedHost::parse(&raw, 443).unwrap().render(Some(&sent));
                assert_eq!(reused, host, "{raw:?}");
            }
            let text = host.as_str();
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:[]".contains(&b)),
                "{raw:?} -> {text:?}"
            );
            assert!(!text.ends_with(":443") && !text.contains('@'), "{raw:?}");
            let again = CanonicalHost::parse(text.as_bytes(), 443);
            assert_eq!(
                again.as_ref(),
                Ok(&host),
                "{raw:?} -> {text:?} is not stable"
            );
            assert!(text.starts_with(host.name()));
        }
        assert!(accepted > 1_000, "the generator must reach valid hosts too");
        assert!(common_path > 100, "and the usual ones: {common_path}");
    }
}

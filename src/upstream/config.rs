//! The egress table's entries (`outbound.upstreams`), the app's protocol, and the normalised
//! authority both are keyed by.

use std::fmt;

use serde::{Deserialize, Deserializer};

use crate::identity::SpiffeId;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// HTTP/1.1 to the app (HTTP/2 from peers is translated).
    #[default]
    Http1,
    /// HTTP/2 over cleartext (prior knowledge), e.g. for gRPC apps.
    H2c,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `host[:port]` as the app addresses it (port 80 when omitted).
    #[serde(deserialize_with = "de_authority")]
    pub authority: Authority,
    /// `host:port` of that service's vakt inbound listener (mesh destinations).
    #[serde(default)]
    pub address: Option<String>,
    /// The SPIFFE ID the server must present; anything else is refused (mesh destinations).
    #[serde(default)]
    pub spiffe_id: Option<SpiffeId>,
    /// An external service the app reaches over its own TLS (transparent capture only): vakt
    /// checks the SNI against `authority` and relays the bytes without terminating TLS.
    #[serde(default)]
    pub passthrough: Option<Passthrough>,
}

/// How a passthrough destination is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Passthrough {
    /// TLS whose ClientHello names the destination's host (SNI).
    Tls,
}

/// A mesh destination: where its sidecar listens and who must answer there.
#[derive(Debug, Clone, Copy)]
pub struct MeshTarget<'a> {
    pub address: &'a str,
    pub spiffe_id: &'a SpiffeId,
}

impl UpstreamConfig {
    /// The sidecar to dial, for a mesh destination (`None` for a passthrough one).
    pub fn mesh(&self) -> Option<MeshTarget<'_>> {
        match (&self.passthrough, &self.address, &self.spiffe_id) {
            (None, Some(address), Some(spiffe_id)) => Some(MeshTarget { address, spiffe_id }),
            _ => None,
        }
    }
}

/// A normalised `host:port` (lowercase host, explicit port) used as the egress table key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Authority(String);

impl Authority {
    /// Normalise `host[:port]`; `None` when it is not a plain authority.
    pub fn parse(s: &str, default_port: u16) -> Option<Self> {
        Self::parse_plain(s, default_port).or_else(|| Self::parse_general(s, default_port))
    }

    /// The common case on the request path, without a URI parser: a lowercase DNS name or IPv4
    /// address, no trailing dot, and a port (if any) of plain decimal digits. `None` sends
    /// everything else through [`Self::parse_general`], which gives the same answer for these.
    fn parse_plain(s: &str, default_port: u16) -> Option<Self> {
        let (host, port) = match s.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        };
        let host_is_plain = !host.is_empty()
            && !host.ends_with('.')
            && host
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        if !host_is_plain {
            return None;
        }
        match port {
            None => Some(Self(format!("{host}:{default_port}"))),
            Some(p)
                if !p.is_empty()
                    && p.len() <= 5
                    && !(p.len() > 1 && p.starts_with('0'))
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && p.parse::<u16>().is_ok() =>
            {
                Some(Self(s.to_owned()))
            }
            Some(_) => None,
        }
    }

    fn parse_general(s: &str, default_port: u16) -> Option<Self> {
        let auth: http::uri::Authority = s.parse().ok()?;
        if auth.as_str().contains('@') || auth.host().is_empty() {
            return None;
        }
        let port = auth.port_u16().unwrap_or(default_port);
        Some(Self(format!(
            "{}:{port}",
            auth.host().trim_end_matches('.').to_ascii_lowercase()
        )))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The port (always explicit once normalised).
    pub fn port(&self) -> Option<u16> {
        self.0.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
    }

    pub fn host(&self) -> &str {
        self.0.rsplit_once(':').map_or(&self.0, |(h, _)| h)
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) fn de_authority<'de, D: Deserializer<'de>>(d: D) -> Result<Authority, D::Error> {
    let s = String::deserialize(d)?;
    Authority::parse(&s, 80).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "\"{s}\" is not a host[:port] authority (expected e.g. billing.billing.svc:8080)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_is_normalised() {
        assert_eq!(
            Authority::parse("Billing.SVC.", 80).unwrap().as_str(),
            "billing.svc:80"
        );
        assert_eq!(
            Authority::parse("billing:8080", 80).unwrap().as_str(),
            "billing:8080"
        );
        assert_eq!(
            Authority::parse("billing:8080", 80).unwrap().host(),
            "billing"
        );
        assert!(Authority::parse("user@billing", 80).is_none());
        // The plain fast path answers exactly as the general parser wherever it answers.
        for raw in [
            "billing",
            "billing:8080",
            "billing:80",
            "billing.svc.cluster.local:443",
            "10.0.0.1",
            "10.0.0.1:9",
            "a-b.c:65535",
            "b:0",
            "b:00",
            "b:080",
            "b:65536",
            "b:",
            ":80",
            "b.:80",
            "B:80",
            "b_c:80",
            "[::1]:80",
            "b:8a",
            "b::80",
            "",
        ] {
            if let Some(fast) = Authority::parse_plain(raw, 80) {
                assert_eq!(Some(fast), Authority::parse_general(raw, 80), "{raw:?}");
            }
        }
        assert!(Authority::parse_plain("billing:8080", 80).is_some());
        assert!(Authority::parse_plain("billing", 80).is_some());
        assert!(Authority::parse("bill ing", 80).is_none());
    }
}

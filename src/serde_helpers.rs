//! Serde helpers shared by the modules' config types: values that YAML has no type for.

use std::time::Duration;

use http::HeaderName;
use serde::{Deserialize, Deserializer};

/// A duration written as humantime text (`500ms`, `10s`, `5m`).
pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "\"{s}\" is not a duration: {e} (expected e.g. 500ms, 10s, 5m)"
        ))
    })
}

/// A list of HTTP header names, each checked.
pub fn de_header_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<HeaderName>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    names
        .iter()
        .map(|n| {
            HeaderName::from_bytes(n.as_bytes()).map_err(|_| {
                serde::de::Error::custom(format!("\"{n}\" is not a valid HTTP header name"))
            })
        })
        .collect()
}

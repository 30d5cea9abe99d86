//! Which provider profile a token is read with, and the level of assurance (eIDAS) it proves:
//! plain types, shared by the config, the verified principal and the policy.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    Helseid,
    Bankid,
    Signicat,
    Idporten,
    Generic,
}

/// Level of assurance (eIDAS), ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Loa {
    /// Unknown or missing: denied on any route that asks for a level.
    None,
    Low,
    Substantial,
    High,
}

impl Loa {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Low => "low",
            Self::Substantial => "substantial",
            Self::High => "high",
        }
    }
}

impl std::fmt::Display for Loa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Profile {
    /// Every profile.
    pub const ALL: [Profile; 5] = [
        Self::Helseid,
        Self::Bankid,
        Self::Signicat,
        Self::Idporten,
        Self::Generic,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Helseid => "helseid",
            Self::Bankid => "bankid",
            Self::Signicat => "signicat",
            Self::Idporten => "idporten",
            Self::Generic => "generic",
        }
    }
}

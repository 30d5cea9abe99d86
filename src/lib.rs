//! vakt: a zero-trust service-mesh sidecar. See `ARCHITECTURE.md` for the request path and where
//! each concern lives.
#![forbid(unsafe_code)]

pub(crate) mod activity;
pub(crate) mod admin;
pub mod app;
pub mod audit;
pub mod authn;
pub mod body;
pub mod capture;
pub mod config;
#[cfg(feature = "dev")]
pub mod dev;
pub(crate) mod error;
pub mod exchange;
pub(crate) mod forward;
pub mod hygiene;
pub mod identity;
pub(crate) mod limits;
pub(crate) mod listener;
pub mod metrics;
pub mod nid;
pub mod observe;
pub mod policy;
pub mod pseudonym;
pub(crate) mod ratelimit;
pub(crate) mod serde_helpers;
pub mod stack;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod tls;
pub(crate) mod tunnel;
pub(crate) mod upstream;
pub(crate) mod watch;
#[cfg(any(test, feature = "test-support"))]
pub mod xorshift;

/// Which way a request travels through this sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From another workload (mTLS) to the local app.
    Inbound,
    /// From the local app to another workload (mTLS).
    Outbound,
    /// The admin listener.
    Admin,
}

impl Direction {
    /// The metrics label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => metrics::INBOUND,
            Self::Outbound => metrics::OUTBOUND,
            Self::Admin => "admin",
        }
    }
}

//! Helpers for vakt's own integration tests and benches (cargo feature `test-support`, which
//! the crate's dev-dependency on itself turns on): real sidecars on 127.0.0.1 with a real PKI
//! ([`sidecar`]), TLS and HTTP clients that present chosen certificates ([`client`]), the
//! admin port's metrics ([`metrics`]) and a verifier for the development issuer's tokens
//! ([`oidc`]). Nothing on the request path is mocked. Never in the production build.

pub mod client;
pub mod metrics;
pub mod oidc;
pub mod sidecar;

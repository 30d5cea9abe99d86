//! Development tools, never in the production image (cargo feature `dev`, on by default):
//! a development CA issuing X509-SVIDs ([`certs`]), a development OIDC issuer ([`idp`]), a
//! throwaway mesh on loopback ([`mesh`]) and `vakt demo` ([`demo`]). The tests use them too.
//! Nothing outside this module depends on it.

pub mod certs;
pub mod demo;
pub mod dpop;
pub mod idp;
pub mod mesh;

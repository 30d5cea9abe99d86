//! Set-up shared by the criterion benches: the crate's test support (`vakt::testing::oidc`).
#![allow(unused_imports)]

pub use vakt::testing::oidc::{citizen, verifier};

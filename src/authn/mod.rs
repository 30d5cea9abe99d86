//! End-user access tokens from OIDC providers (HelseID, BankID, Signicat, ID-porten, generic):
//! configuration, the verified [`Principal`], and the reasons a token is refused.
//!
//! The only place that talks to identity providers is [`jwks`] (discovery + key sets). Tokens are
//! verified in [`verify`] (strict checks on top of `jsonwebtoken`), mapped to one normalised
//! principal by [`profile`], and put into the request by the [`stage`].

pub mod alg;
pub mod assurance;
pub mod config;
pub mod dpop;
pub mod error;
pub mod headers;
pub mod http_client;
pub mod jwks;
pub mod jws;
pub mod principal;
pub mod profile;
pub mod rendered;
pub mod stage;
pub mod verify;

pub use alg::Alg;
pub use assurance::{Loa, Profile};
pub use config::{IssuerConfig, OidcConfig};
pub use error::TokenError;
pub use principal::{Claims, Principal, PrincipalPseudonyms};

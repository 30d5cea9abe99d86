//! Tokens from the development issuer, verified by the real verifier against its JWKS over HTTP.

use std::sync::Arc;

use crate::authn::Loa;
use crate::authn::http_client::IdpClient;
use crate::authn::jwks::IssuerKeys;
use crate::authn::verify::Verifier;
use crate::authn::{IssuerConfig, OidcConfig};
use crate::dev::idp::{DevIdp, Person};

/// A verifier for `idp`'s tokens (audience `bench`, HelseID claims, RS256/PS256/ES256) with a
/// verified-token cache of `cache` entries, its keys fetched once.
pub fn verifier(rt: &tokio::runtime::Runtime, idp: &DevIdp, cache: usize) -> Verifier {
    let oidc: OidcConfig = serde_saphyr::from_str(&format!(
        "verified_token_cache: {cache}\nissuers:\n  - issuer: {}\n    profile: helseid\n    audiences: [bench]\n    algorithms: [RS256, PS256, ES256]\n    allow_insecure_loopback: true\n    dpop:\n      required: false\n",
        idp.issuer
    ))
    .expect("bench oidc config");
    let issuer: IssuerConfig = oidc.issuers[0].clone();
    let keys = Arc::new(IssuerKeys::new(
        Arc::new(issuer),
        &oidc,
        IdpClient::new(None).expect("client"),
    ));
    rt.block_on(keys.refresh("scheduled"))
        .expect("JWKS fetched");
    Verifier::new(vec![keys], &oidc)
}

/// A citizen at the highest level of assurance with a (test) national id, reading a journal.
pub fn citizen(national_id: &str, audience: &str) -> Person {
    Person {
        sub: "citizen-1".into(),
        national_id: Some(national_id.into()),
        level: Loa::High,
        amr: vec!["BankID".into()],
        client_id: "journal-web".into(),
        scopes: vec!["journal.read".into()],
        audience: audience.into(),
        ..Person::default()
    }
}

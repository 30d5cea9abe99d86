//! Set-up shared by the criterion benches (`mod common;` in each; not every bench uses every
//! item): a verifier loaded from the dev issuer's real JWKS over HTTP, and the citizen whose
//! tokens the benches mint.
#![allow(dead_code)]

use std::sync::Arc;

use vakt::authn::Loa;
use vakt::authn::http_client::IdpClient;
use vakt::authn::jwks::IssuerKeys;
use vakt::authn::verify::Verifier;
use vakt::authn::{IssuerConfig, OidcConfig};
use vakt::dev::idp::{DevIdp, Person};

/// A verifier for `idp`'s tokens (audience `bench`, HelseID claims, RS256/PS256/ES256) with a
/// verified-token cache of `cache` entries, its keys fetched once.
pub fn verifier(rt: &tokio::runtime::Runtime, idp: &DevIdp, cache: usize) -> Verifier {
    let oidc: OidcConfig = serde_saphyr::from_str(&format!(
        "verified_token_cache: {cache}\nissuers:\n  - issuer: {}\n    profile: helseid\n    audiences: [bench]\n    algorithms: [RS256, PS256, ES256]\n    allow_insecure_loopback: true\n",
        idp.issuer
    ))
    .expect("bench oidc config");
    let issuer: IssuerConfig = oidc.issuers[0].clone();
    let keys = Arc::new(IssuerKeys::new(
        Arc::new(issuer),
        &oidc,
        IdpClient::new().expect("client"),
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

//! Provider profiles: each provider's claim names and assurance levels mapped onto one
//! [`Principal`](super::Principal). Levels are compared as numbers, never as raw strings; an
//! unknown or missing level counts as the lowest.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use super::assurance::{Loa, Profile};
use super::principal::Principal;

impl Profile {
    /// The `acr_values` a client should request to reach `level` at this provider (RFC 9470
    /// step-up answers).
    pub fn acr_value(self, level: Loa) -> &'static str {
        match (self, level) {
            (Self::Bankid, Loa::High) => "urn:bankid:bid;LOA=4",
            (Self::Bankid, _) => "urn:bankid:bis;LOA=3",
            (Self::Idporten | Self::Helseid, Loa::High) => "idporten-loa-high",
            (Self::Idporten | Self::Helseid, _) => "idporten-loa-substantial",
            (Self::Signicat, Loa::High) => "loa:high",
            (Self::Signicat, _) => "loa:substantial",
            (Self::Generic, l) => l.as_str(),
        }
    }

    fn loa(self, claims: &BTreeMap<String, Value>) -> Loa {
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        match self {
            Self::Helseid => match text("helseid://claims/identity/security_level") {
                Some("4") => Loa::High,
                Some("3") => Loa::Substantial,
                Some("2") => Loa::Low,
                _ => Loa::None,
            },
            Self::Bankid => match text("acr") {
                Some("urn:bankid:bid;LOA=4") => Loa::High,
                Some("urn:bankid:bis;LOA=3") => Loa::Substantial,
                _ => Loa::None,
            },
            Self::Idporten => match text("acr") {
                Some("idporten-loa-high") => Loa::High,
                Some("idporten-loa-substantial") => Loa::Substantial,
                _ => Loa::None,
            },
            Self::Signicat => match text("acr") {
                Some("loa:high") => Loa::High,
                Some("loa:substantial") => Loa::Substantial,
                Some("loa:low") => Loa::Low,
                _ => Loa::None,
            },
            Self::Generic => match text("acr") {
                Some("high") => Loa::High,
                Some("substantial") => Loa::Substantial,
                Some("low") => Loa::Low,
                _ => Loa::None,
            },
        }
    }

    fn national_id(self, claims: &BTreeMap<String, Value>) -> Option<String> {
        let names: &[&str] = match self {
            Self::Helseid => &["helseid://claims/identity/pid"],
            Self::Bankid => &["nnin_altsub", "nnin"],
            Self::Signicat => &["nin"],
            Self::Idporten => &["pid"],
            Self::Generic => &["pid", "nnin", "nin"],
        };
        names
            .iter()
            .find_map(|n| claims.get(*n).and_then(Value::as_str))
            .map(str::to_owned)
    }

    fn subject(self, claims: &BTreeMap<String, Value>) -> Option<String> {
        let names: &[&str] = match self {
            // BankID's `sub` is not stable; bankid_altsub is.
            Self::Bankid => &["bankid_altsub", "sub"],
            _ => &["sub"],
        };
        names
            .iter()
            .find_map(|n| claims.get(*n).and_then(Value::as_str))
            .map(str::to_owned)
    }

    fn org_numbers(self, claims: &BTreeMap<String, Value>) -> Vec<String> {
        match self {
            Self::Helseid => [
                "helseid://claims/client/claims/orgnr_parent",
                "helseid://claims/client/claims/orgnr_child",
            ]
            .iter()
            .filter_map(|n| claims.get(*n).and_then(Value::as_str))
            .map(str::to_owned)
            .collect(),
            _ => Vec::new(),
        }
    }

    /// Map verified claims onto a principal.
    pub fn principal(
        self,
        issuer: Arc<str>,
        claims: BTreeMap<String, Value>,
        expires_at: i64,
    ) -> Principal {
        // Kept as long as the token is cached: no spare capacity from collecting.
        let strings = |v: Option<&Value>, split: bool| -> Vec<String> {
            let mut list: Vec<String> = match v {
                Some(Value::String(s)) if split => {
                    s.split_whitespace().map(str::to_owned).collect()
                }
                Some(Value::String(s)) => vec![s.clone()],
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
                _ => Vec::new(),
            };
            list.shrink_to_fit();
            list
        };
        let scopes = match claims.get("scope") {
            Some(v) => strings(Some(v), true),
            None => strings(claims.get("scp"), true),
        };
        let auth_time = claims
            .get("auth_time")
            .and_then(Value::as_i64)
            // BankID has no auth_time: the login is the token's issue time.
            .or_else(|| {
                (self == Self::Bankid)
                    .then(|| claims.get("iat").and_then(Value::as_i64))
                    .flatten()
            });
        let client_id = ["client_id", "azp"]
            .iter()
            .find_map(|n| claims.get(*n).and_then(Value::as_str))
            .map(Arc::from);
        Principal {
            issuer,
            profile: self,
            subject: self.subject(&claims),
            national_id: self.national_id(&claims),
            loa: self.loa(&claims),
            amr: strings(claims.get("amr"), false),
            auth_time,
            client_id,
            scopes,
            org_numbers: self.org_numbers(&claims),
            expires_at,
            claims: claims.into(),
            dpop_jkt: None,
            pseudonyms: Default::default(),
            identity_headers: Default::default(),
            rate_limit_key: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn principal(profile: Profile, claims: Value) -> Principal {
        let claims: BTreeMap<String, Value> = serde_json::from_value(claims).unwrap();
        profile.principal("https://idp".into(), claims, 0)
    }

    #[test]
    fn the_rate_limit_key_names_issuer_and_stable_subject_and_is_made_once() {
        let p = principal(
            Profile::Bankid,
            json!({"sub": "unstable", "bankid_altsub": "stable"}),
        );
        let key = p.rate_limit_key().expect("a subject").clone();
        assert_eq!(&*key, "sub:https://idp|stable");
        // Every later request of the (cached) principal shares the same string.
        assert!(Arc::ptr_eq(&key, p.rate_limit_key().unwrap()));
        // Another issuer's same subject is another key; no subject, no key.
        let other = Profile::Bankid.principal(
            "https://other".into(),
            serde_json::from_value(json!({"bankid_altsub": "stable"})).unwrap(),
            0,
        );
        assert_ne!(other.rate_limit_key(), Some(&key));
        assert_eq!(
            principal(Profile::Generic, json!({"scp": "a"})).rate_limit_key(),
            None
        );
    }

    #[test]
    fn a_cached_principal_keeps_no_spare_list_capacity() {
        // Parsed as a token's payload is, so the arrays grow as the parser reads them.
        let claims: BTreeMap<String, Value> = serde_json::from_str(
            r#"{"scope": ["a", "b", "c"], "amr": ["pwd", "otp"],
                "nested": {"list": [1, 2, 3, 4, 5]}, "scp": "x y"}"#,
        )
        .unwrap();
        let grown = claims["scope"].as_array().unwrap();
        assert!(
            grown.capacity() > grown.len(),
            "the parser left spare capacity"
        );
        let p = Profile::Generic.principal("https://idp".into(), claims, 0);
        for list in [&p.scopes, &p.amr] {
            assert_eq!(list.capacity(), list.len());
        }
        assert_eq!(p.scopes, ["a", "b", "c"]);
        for name in ["scope", "amr"] {
            let items = p.claims.get(name).unwrap().as_array().unwrap();
            assert_eq!(items.capacity(), items.len(), "{name}");
        }
        let nested = p.claims.get("nested").unwrap()["list"].as_array().unwrap();
        assert_eq!((nested.len(), nested.capacity()), (5, 5));
    }

    #[test]
    fn pseudonyms_are_made_once_per_key_and_debug_shows_no_personal_data() {
        use crate::pseudonym::Pseudonymiser;
        let p = principal(
            Profile::Helseid,
            json!({"sub": "s1", "helseid://claims/identity/pid": "12345678901"}),
        );
        let key = Pseudonymiser::from_secret("k1", &[7; 32]);
        let other = Pseudonymiser::from_secret("k2", &[8; 32]);
        let first = p.pseudonyms(&key);
        assert!(matches!(first, std::borrow::Cow::Borrowed(_)));
        assert_eq!(
            first.national_id.as_deref(),
            Some(key.pseudonym("national_id", "12345678901").as_str())
        );
        assert_eq!(
            first.subject.as_deref(),
            Some(key.pseudonym("subject", "s1").as_str())
        );
        assert_eq!(p.pseudonyms(&key).into_owned(), first.clone().into_owned());
        // Another key is not answered from the memo.
        let second = p.pseudonyms(&other);
        assert!(matches!(second, std::borrow::Cow::Owned(_)));
        assert_eq!(
            second.national_id.as_deref(),
            Some(other.pseudonym("national_id", "12345678901").as_str())
        );
        let shown = format!("{p:?}");
        assert!(
            !shown.contains("12345678901") && !shown.contains("s1"),
            "{shown}"
        );
    }

    #[test]
    fn each_profile_maps_its_claims() {
        let p = principal(
            Profile::Helseid,
            json!({
                "sub": "s1", "helseid://claims/identity/pid": "12345678901",
                "helseid://claims/identity/security_level": "4", "client_id": "c1",
                "scope": ["journal.read", "journal.write"], "amr": "pwd", "auth_time": 100,
                "helseid://claims/client/claims/orgnr_parent": "999888777"
            }),
        );
        assert_eq!(
            (p.loa, p.national_id.as_deref(), p.client_id.as_deref()),
            (Loa::High, Some("12345678901"), Some("c1"))
        );
        assert_eq!(p.scopes, ["journal.read", "journal.write"]);
        assert_eq!(
            (p.amr.clone(), p.auth_time, p.org_numbers.clone()),
            (
                vec!["pwd".to_owned()],
                Some(100),
                vec!["999888777".to_owned()]
            )
        );

        let p = principal(
            Profile::Bankid,
            json!({
                "sub": "unstable", "bankid_altsub": "stable", "nnin_altsub": "01010112345",
                "acr": "urn:bankid:bis;LOA=3", "azp": "web", "iat": 200, "amr": ["BID", "mfa"]
            }),
        );
        assert_eq!(
            (
                p.subject.as_deref(),
                p.loa,
                p.auth_time,
                p.client_id.as_deref()
            ),
            (Some("stable"), Loa::Substantial, Some(200), Some("web"))
        );
        assert_eq!(p.amr, ["BID", "mfa"]);

        let p = principal(
            Profile::Signicat,
            json!({"sub": "h", "nin": "1", "acr": "loa:high", "scp": ["a"]}),
        );
        assert_eq!(
            (p.loa, p.national_id.as_deref(), p.scopes.clone()),
            (Loa::High, Some("1"), vec!["a".to_owned()])
        );
        let p = principal(
            Profile::Idporten,
            json!({"pid": "2", "acr": "idporten-loa-substantial", "scope": "a b"}),
        );
        assert_eq!(
            (p.loa, p.national_id.as_deref(), p.scopes.clone()),
            (
                Loa::Substantial,
                Some("2"),
                vec!["a".to_owned(), "b".to_owned()]
            )
        );
    }

    #[test]
    fn every_claim_sent_is_kept_for_claims_conditions_and_nothing_else() {
        let sent = json!({
            "sub": "s1", "aud": ["a", "b"], "exp": 10, "zz": null, "": "empty name",
            "helseid://claims/identity/pid": "12345678901", "nested": {"k": [1, 2]},
            "helseid://claims/hpr/hpr_number": "123", "Sub": "case matters", "amr": ["pwd"]
        });
        let p = principal(Profile::Helseid, sent.clone());
        let sent = sent.as_object().unwrap();
        assert_eq!(p.claims.len(), sent.len());
        for (name, value) in sent {
            assert_eq!(p.claims.get(name), Some(value), "{name}");
        }
        for absent in ["s", "subb", "SUB", "helseid://claims/identity", "zzz", " "] {
            assert_eq!(p.claims.get(absent), None, "{absent}");
        }
        assert!(principal(Profile::Generic, json!({})).claims.is_empty());
    }

    #[test]
    fn unknown_or_raw_string_levels_count_as_none() {
        for (profile, claims) in [
            (
                Profile::Helseid,
                json!({"helseid://claims/identity/security_level": 4}),
            ),
            (Profile::Bankid, json!({"acr": "LOA=4"})),
            (Profile::Idporten, json!({"acr": "Level4"})),
            (Profile::Generic, json!({})),
        ] {
            assert_eq!(principal(profile, claims).loa, Loa::None);
        }
        assert!(
            Loa::High > Loa::Substantial && Loa::Substantial > Loa::Low && Loa::Low > Loa::None
        );
    }
}

//! The audit event: one per request decision, refused handshake or refused egress.
//!
//! The type is built so that it cannot carry a token, a raw national id or a body: there is no
//! free-form map, every text field is a checked newtype with a bounded length and character set
//! (an access token is longer than any [`Label`] and a JWT never fits), and personal identifiers
//! only enter as a [`Pseudonym`], which is either made by the keyed [`Pseudonymiser`] or parsed
//! from the exact `<key id>:<43 base64url chars>` form it produces. Error messages about rejected
//! values never repeat the value.
//!
//! The wire format is documented in `docs/audit-event.schema.json` (JSON Schema 2020-12); a test
//! keeps the two in step.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::pseudonym::Pseudonymiser;

/// The schema tag every event carries (`"schema"`). Bump on any incompatible change.
pub const SCHEMA: &str = "vakt.audit/2";
/// The previous schema (plain SHA-256 links, no key): still read by `verify` and `report`.
pub const SCHEMA_V1: &str = "vakt.audit/1";

pub use crate::pseudonym::{KIND_NATIONAL_ID, KIND_SUBJECT};

use super::fields::{
    Action, ChainHash, ChainNote, Decision, Direction, EventId, Label, Outcome, Pseudonym, Text,
};
use super::time::Timestamp;

/// The schema tag: serialises as [`SCHEMA`]; reads [`SCHEMA`] and [`SCHEMA_V1`] (the line's
/// first bytes tell which: `chain::SchemaVersion::of_line`), refuses any other value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SchemaTag;

impl Serialize for SchemaTag {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(SCHEMA)
    }
}

impl<'de> Deserialize<'de> for SchemaTag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == SCHEMA || s == SCHEMA_V1 {
            Ok(Self)
        } else {
            Err(serde::de::Error::custom(format_args!(
                "unsupported schema (expected {SCHEMA})"
            )))
        }
    }
}

/// One audit record. Built on the request path with [`AuditEvent::new`] and the setters or the
/// public fields; `seq` and `prev` are filled in by the chain writer when the event is written.
///
/// Optional fields are omitted from the JSON when `None` (and `amr` when empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    /// Always [`SCHEMA`].
    pub schema: SchemaTag,
    /// Position in the stream: the first event of a stream is 1, then +1 per event.
    pub seq: u64,
    /// The previous line's `mac` (`vakt.audit/1`: its SHA-256); zeros for the first line of an
    /// epoch. This and the next three members are set by the chain writer (`audit::chain`).
    pub prev: ChainHash,
    /// The chain epoch: 1 for a new trail, +1 whenever vakt starts without being able to vouch
    /// for the lines before (absent in `vakt.audit/1`).
    #[serde(default)]
    pub epoch: u64,
    /// Id of the key of this line's `mac`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_key_id: Option<Label>,
    /// On the trail's own events: the gap an epoch start names, or a rotated-out file's range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<ChainNote>,
    pub id: EventId,
    pub time: Timestamp,
    pub direction: Direction,
    pub decision: Decision,
    /// Reason code (`rule_matched`, `no_route`, `token_expired`, `unknown_ca`, ...).
    pub reason: Label,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<Label>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<Label>,
    /// Route id from the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Label>,
    /// Index of the rule that held, within the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Label>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// The route's path pattern, e.g. `/patients/{pid}/journal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_template: Option<Text>,
    /// The canonical path with personal-data parameters pseudonymised ([`pseudonymise_path`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<Text>,
    /// The peer's SPIFFE ID (inbound: the caller; outbound: the remote sidecar).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Text>,
    /// Outbound connections found by transparent capture: where the app was connecting
    /// (`address:port`, or `name:port(address:port)` once the name is known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Text>,
    /// Outbound to a mesh destination: the SPIFFE ID its sidecar had to prove (whether or not
    /// it did: `peer` says who answered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_peer: Option<Text>,
    /// Refused handshakes: the address the connection came from (`ip:port`), the one thing
    /// known about a caller that proved no identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Text>,
    /// Token issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<Text>,
    /// Token client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<Label>,
    /// The RFC 7638 thumbprint of the DPoP proof key the token is bound to (`cnf.jkt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop_jkt: Option<Label>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_pseudonym: Option<Pseudonym>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub national_id_pseudonym: Option<Pseudonym>,
    /// Level of assurance (`low`, `substantial`, `high`, `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loa: Option<Label>,
    /// Authentication methods (`amr` claim).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<Label>,
    /// Response status sent to the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// How the exchange ended (absent in events written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

impl AuditEvent {
    /// A new event with a fresh id and the current time; everything optional unset.
    pub fn new(direction: Direction, decision: Decision, reason: Label) -> Self {
        Self {
            schema: SchemaTag,
            seq: 0,
            prev: ChainHash::ZERO,
            epoch: 0,
            chain_key_id: None,
            chain: None,
            id: EventId::new_random(),
            time: Timestamp::now(),
            direction,
            decision,
            reason,
            request_id: None,
            trace_id: None,
            route: None,
            rule: None,
            method: None,
            action: None,
            route_template: None,
            path: None,
            peer: None,
            destination: None,
            expected_peer: None,
            source: None,
            issuer: None,
            client_id: None,
            dpop_jkt: None,
            subject_pseudonym: None,
            national_id_pseudonym: None,
            loa: None,
            amr: Vec::new(),
            status: None,
            outcome: None,
            bytes_in: None,
            bytes_out: None,
            duration_ms: None,
        }
    }

    /// Set the method and the action class derived from it.
    pub fn set_method(&mut self, method: &str) {
        self.method = Some(Label::sanitized(method));
        self.action = Some(Action::from_method(method));
    }

    /// As [`Self::set_method`] for a method of the request path: the standard ones are not
    /// copied.
    pub fn set_http_method(&mut self, method: &http::Method) {
        let standard = match method.as_str() {
            "GET" => "GET",
            "HEAD" => "HEAD",
            "POST" => "POST",
            "PUT" => "PUT",
            "DELETE" => "DELETE",
            "PATCH" => "PATCH",
            "OPTIONS" => "OPTIONS",
            "CONNECT" => "CONNECT",
            "TRACE" => "TRACE",
            other => return self.set_method(other),
        };
        self.method = Some(Label::sanitized_static(standard));
        self.action = Some(Action::from_method(standard));
    }

    /// Pseudonymise and set the subject.
    pub fn set_subject(&mut self, p: &Pseudonymiser, subject: &str) {
        self.subject_pseudonym = Some(Pseudonym::subject(p, subject));
    }

    /// Pseudonymise and set the national id.
    pub fn set_national_id(&mut self, p: &Pseudonymiser, national_id: &str) {
        self.national_id_pseudonym = Some(Pseudonym::national_id(p, national_id));
    }
}

// ------------------------------------------------------------------------------------- paths

/// The canonical path with the `{param}` segments named in `params_to_hide` replaced by their
/// pseudonyms (namespace [`KIND_NATIONAL_ID`], so a patient's pseudonym in a path equals their
/// `national_id_pseudonym` elsewhere). See [`pseudonymise_path_with`] for other namespaces.
pub fn pseudonymise_path(
    template: &str,
    canonical: &str,
    params_to_hide: &[&str],
    p: &Pseudonymiser,
) -> String {
    let params: Vec<(&str, &str)> = params_to_hide
        .iter()
        .map(|name| (*name, KIND_NATIONAL_ID))
        .collect();
    pseudonymise_path_with(template, canonical, &params, p)
}

/// Like [`pseudonymise_path`], with a pseudonym namespace per parameter: `(name, kind)`.
///
/// Fails safe: any query string is dropped, and when the path does not have the template's shape
/// (which the router guarantees it has) the template itself is returned, never the raw path.
pub fn pseudonymise_path_with(
    template: &str,
    canonical: &str,
    params: &[(&str, &str)],
    p: &Pseudonymiser,
) -> String {
    let canonical = canonical.split(['?', '#']).next().unwrap_or("");
    let (Some(t_rest), Some(c_rest)) = (template.strip_prefix('/'), canonical.strip_prefix('/'))
    else {
        return template.to_owned();
    };
    let t_segments: Vec<&str> = if t_rest.is_empty() {
        Vec::new()
    } else {
        t_rest.split('/').collect()
    };
    let c_segments: Vec<&str> = if c_rest.is_empty() {
        Vec::new()
    } else {
        c_rest.split('/').collect()
    };
    let mut out: Vec<String> = Vec::with_capacity(c_segments.len());
    for (i, seg) in c_segments.iter().enumerate() {
        match t_segments.get(i) {
            Some(&"**") => {
                // The rest is not named by the template: keep it (it matched the route).
                out.extend(c_segments[i..].iter().map(|s| (*s).to_owned()));
                break;
            }
            Some(t) => {
                if let Some(name) = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                    match params.iter().find(|(n, _)| *n == name) {
                        Some((_, kind)) => out.push(p.pseudonym(kind, seg)),
                        None => out.push((*seg).to_owned()),
                    }
                } else if t == seg {
                    out.push((*seg).to_owned());
                } else {
                    return template.to_owned();
                }
            }
            // A trailing slash: one empty segment more than the template.
            None if i == t_segments.len() && seg.is_empty() && i + 1 == c_segments.len() => {
                out.push(String::new());
            }
            None => return template.to_owned(),
        }
    }
    // Template segments left over: only a trailing `**` may match nothing.
    let consumed = out.len().min(t_segments.len());
    if t_segments[consumed..].iter().any(|t| *t != "**") && out.len() < t_segments.len() {
        return template.to_owned();
    }
    format!("/{}", out.join("/"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::audit::time::MAX_UNIX_MS;

    fn pseudonymiser() -> Pseudonymiser {
        Pseudonymiser::from_secret("k1", &[7; 32])
    }

    /// An event with every field set.
    pub(crate) fn full_event() -> AuditEvent {
        let p = pseudonymiser();
        let mut e = AuditEvent::new(
            Direction::Inbound,
            Decision::Allow,
            Label::new("rule_matched").unwrap(),
        );
        e.seq = 7;
        e.epoch = 2;
        e.chain_key_id = Some(Label::new("k1").unwrap());
        e.chain = Some(ChainNote {
            epoch_start: Some(super::super::fields::EpochStart::Truncated),
            prev_epoch: Some(1),
            checkpoint_seq: Some(6),
            found_seq: Some(4),
            rotated_first_seq: Some(1),
            rotated_last_seq: Some(3),
        });
        e.request_id = Some(Label::new("4f1c2b8e-0d7a-4c55-9a59-0c3d6a1e2b3f").unwrap());
        e.trace_id = Some(Label::new("4bf92f3577b34da6a3ce929d0e0e4736").unwrap());
        e.route = Some(Label::new("journal-read").unwrap());
        e.rule = Some(0);
        e.set_method("GET");
        e.route_template = Some(Text::new("/patients/{pid}/journal").unwrap());
        e.path = Some(
            Text::new(pseudonymise_path(
                "/patients/{pid}/journal",
                "/patients/12345678901/journal",
                &["pid"],
                &p,
            ))
            .unwrap(),
        );
        e.peer = Some(Text::new("spiffe://cluster.local/ns/records/sa/web").unwrap());
        e.destination = Some(Text::new("billing.billing.svc:8080(10.0.3.7:8080)").unwrap());
        e.expected_peer = Some(Text::new("spiffe://cluster.local/ns/billing/sa/billing").unwrap());
        e.source = Some(Text::new("10.0.7.12:51234").unwrap());
        e.issuer = Some(Text::new("https://helseid.example/").unwrap());
        e.client_id = Some(Label::new("a1b2c3d4-records-web").unwrap());
        e.dpop_jkt = Some(Label::new("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I").unwrap());
        e.set_subject(&p, "subject-123");
        e.set_national_id(&p, "12345678901");
        e.loa = Some(Label::new("high").unwrap());
        e.amr = vec![Label::new("pwd").unwrap(), Label::new("otp").unwrap()];
        e.status = Some(200);
        e.outcome = Some(Outcome::Completed);
        e.bytes_in = Some(120);
        e.bytes_out = Some(5400);
        e.duration_ms = Some(12);
        e
    }

    fn schema() -> serde_json::Value {
        serde_json::from_str(include_str!("../../docs/audit-event.schema.json")).unwrap()
    }

    /// The security team's guide explains every field of the schema.
    #[test]
    fn the_audit_guide_explains_every_field() {
        let doc = include_str!("../../docs/AUDIT.md");
        let schema = schema();
        for key in schema["properties"].as_object().unwrap().keys() {
            assert!(
                doc.contains(&format!("`{key}`")),
                "docs/AUDIT.md does not explain `{key}`"
            );
        }
    }

    #[test]
    fn schema_and_full_event_have_the_same_keys() {
        let schema = schema();
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(schema["properties"]["schema"]["const"], SCHEMA);
        let props = schema["properties"].as_object().unwrap();
        let event = serde_json::to_value(full_event()).unwrap();
        let event = event.as_object().unwrap();
        // The line also carries `mac`, which the chain writer appends to the event's JSON.
        let mac = "mac".to_owned();
        let mut in_event: Vec<&String> = event.keys().chain([&mac]).collect();
        let mut in_schema: Vec<&String> = props.keys().collect();
        in_event.sort();
        in_schema.sort();
        assert_eq!(
            in_event, in_schema,
            "event keys and schema properties differ"
        );
        // The chain note's members too.
        let note = serde_json::to_value(full_event().chain).unwrap();
        let mut in_note: Vec<&String> = note.as_object().unwrap().keys().collect();
        let mut in_note_schema: Vec<&String> = props["chain"]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        in_note.sort();
        in_note_schema.sort();
        assert_eq!(in_note, in_note_schema);
        // Every required property is always present, even in a minimal event once sealed
        // (the writer adds `chain_key_id` and `mac`).
        let minimal = serde_json::to_value(AuditEvent::new(
            Direction::Handshake,
            Decision::Refused,
            Label::new("unknown_ca").unwrap(),
        ))
        .unwrap();
        let mut required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let mut minimal_keys: Vec<&str> = minimal
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .chain(["chain_key_id", "mac"])
            .collect();
        required.sort_unstable();
        minimal_keys.sort_unstable();
        assert_eq!(required, minimal_keys);
    }

    /// A light check of the full event against the schema's types, enums and bounds (no JSON
    /// Schema validator in the dependency tree).
    #[test]
    fn full_event_matches_schema_types() {
        let schema = schema();
        let event = serde_json::to_value(full_event()).unwrap();
        for (key, value) in event.as_object().unwrap() {
            let prop = &schema["properties"][key];
            let ty = prop["type"].as_str().unwrap();
            match ty {
                "string" => {
                    let s = value
                        .as_str()
                        .unwrap_or_else(|| panic!("{key}: not a string"));
                    if let Some(max) = prop["maxLength"].as_u64() {
                        assert!(s.len() as u64 <= max, "{key}: too long");
                    }
                    if let Some(values) = prop["enum"].as_array() {
                        assert!(values.contains(value), "{key}: {s} not in enum");
                    }
                }
                "integer" => {
                    let n = value
                        .as_u64()
                        .unwrap_or_else(|| panic!("{key}: not an integer"));
                    if let Some(min) = prop["minimum"].as_u64() {
                        assert!(n >= min, "{key}: below minimum");
                    }
                    if let Some(max) = prop["maximum"].as_u64() {
                        assert!(n <= max, "{key}: above maximum");
                    }
                }
                "array" => {
                    assert!(value.is_array(), "{key}: not an array");
                    assert_eq!(prop["items"]["type"], "string");
                }
                "object" => {
                    for (member, v) in value.as_object().unwrap() {
                        let member_prop = &prop["properties"][member];
                        match member_prop["type"].as_str() {
                            Some("integer") => assert!(v.is_u64(), "{key}.{member}"),
                            Some("string") => {
                                let values = member_prop["enum"].as_array().unwrap();
                                assert!(values.contains(v), "{key}.{member}: {v} not in enum");
                            }
                            other => panic!("{key}.{member}: unexpected type {other:?}"),
                        }
                    }
                }
                other => panic!("{key}: unexpected schema type {other}"),
            }
        }
        // Every enum in the schema matches the Rust enum's names.
        let enum_of = |k: &str| -> Vec<String> {
            schema["properties"][k]["enum"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            enum_of("direction"),
            ["inbound", "outbound", "handshake", "audit"]
        );
        assert_eq!(
            enum_of("decision"),
            ["allow", "deny", "would_deny", "refused", "recorded"]
        );
        assert_eq!(
            enum_of("action"),
            ["read", "create", "update", "delete", "other"]
        );
        let outcomes = [
            Outcome::Completed,
            Outcome::ClientAborted,
            Outcome::UpstreamError,
            Outcome::Timeout,
            Outcome::Refused,
        ];
        assert_eq!(enum_of("outcome"), outcomes.map(Outcome::as_str));
        for o in outcomes {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
        for d in [
            Direction::Inbound,
            Direction::Outbound,
            Direction::Handshake,
            Direction::Audit,
        ] {
            assert_eq!(serde_json::to_value(d).unwrap(), d.as_str());
        }
        for d in [
            Decision::Allow,
            Decision::Deny,
            Decision::WouldDeny,
            Decision::Refused,
            Decision::Recorded,
        ] {
            assert_eq!(serde_json::to_value(d).unwrap(), d.as_str());
        }
    }

    #[test]
    fn round_trip_and_unknown_fields_refused() {
        let e = full_event();
        let line = serde_json::to_string(&e).unwrap();
        let back: AuditEvent = serde_json::from_str(&line).unwrap();
        assert_eq!(back, e);
        // No free-form fields: an extra key (a token, a body) does not parse.
        let mut v: serde_json::Value = serde_json::from_str(&line).unwrap();
        v["token"] = "eyJhbGciOiJSUzI1NiJ9.e30.sig".into();
        assert!(serde_json::from_value::<AuditEvent>(v).is_err());
        let wrong_schema = line.replace(SCHEMA, "vakt.audit/3");
        assert!(serde_json::from_str::<AuditEvent>(&wrong_schema).is_err());
    }

    /// Lines written before `outcome` was recorded read back, as events without one.
    #[test]
    fn events_without_an_outcome_still_parse() {
        let mut e = full_event();
        e.outcome = None;
        let line = serde_json::to_string(&e).unwrap();
        assert!(!line.contains("outcome"), "{line}");
        let back: AuditEvent = serde_json::from_str(&line).unwrap();
        assert_eq!(back.outcome, None);
        assert_eq!(back, e);
    }

    #[test]
    fn minimal_event_omits_optional_fields() {
        let e = AuditEvent::new(
            Direction::Handshake,
            Decision::Refused,
            Label::new("unknown_ca").unwrap(),
        );
        let line = serde_json::to_string(&e).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 9, "{line}");
        // Keys in a fixed order, chain fields first.
        let prefix = format!(
            r#"{{"schema":"vakt.audit/2","seq":0,"prev":"{}","epoch":0,"id":"#,
            "0".repeat(64)
        );
        assert!(line.starts_with(&prefix), "{line}");
        assert!(
            line.ends_with(
                r#","direction":"handshake","decision":"refused","reason":"unknown_ca"}"#
            ),
            "{line}"
        );
    }

    #[test]
    fn cannot_hold_tokens_or_raw_national_ids() {
        let token = format!(
            "eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCJ9.{}.{}",
            "eyJzdWIiOiIxMjM0NTY3ODkwMSIsImlzcyI6Imh0dHBzOi8vaWRwIn0",
            "a".repeat(86)
        );
        assert!(Label::new(token.as_str()).is_err());
        assert_eq!(Label::sanitized(&token).as_str(), "invalid");
        assert!(Pseudonym::new("12345678901").is_err());
        assert!(Pseudonym::new(token.as_str()).is_err());
        assert!(Text::new("Bearer abc").is_err(), "spaces are refused");
        let err = Label::new(token.as_str()).unwrap_err().to_string();
        assert!(!err.contains("eyJ"), "errors never repeat the value: {err}");
        // A raw national id in the JSON does not parse as a pseudonym.
        let mut v = serde_json::to_value(full_event()).unwrap();
        v["national_id_pseudonym"] = "12345678901".into();
        assert!(serde_json::from_value::<AuditEvent>(v).is_err());
        // The full event, serialised, holds neither the raw national id nor the subject.
        let line = serde_json::to_string(&full_event()).unwrap();
        assert!(!line.contains("12345678901") && !line.contains("subject-123"));
    }

    #[test]
    fn action_from_method() {
        let table = [
            ("GET", Action::Read),
            ("HEAD", Action::Read),
            ("OPTIONS", Action::Read),
            ("POST", Action::Create),
            ("PUT", Action::Update),
            ("PATCH", Action::Update),
            ("DELETE", Action::Delete),
            ("TRACE", Action::Other),
            ("get", Action::Other),
        ];
        for (method, action) in table {
            assert_eq!(Action::from_method(method), action, "{method}");
        }
    }

    #[test]
    fn pseudonymised_paths() {
        let p = pseudonymiser();
        let nid = p.pseudonym(KIND_NATIONAL_ID, "12345678901");
        let table: [(&str, &str, &[&str], String); 8] = [
            (
                "/patients/{pid}/journal",
                "/patients/12345678901/journal",
                &["pid"],
                format!("/patients/{nid}/journal"),
            ),
            // Only the named parameters are hidden.
            (
                "/patients/{pid}/notes/{note}",
                "/patients/12345678901/notes/42",
                &["pid"],
                format!("/patients/{nid}/notes/42"),
            ),
            (
                "/patients/{pid}/journal",
                "/patients/12345678901/journal",
                &[],
                "/patients/12345678901/journal".to_owned(),
            ),
            // `**` keeps the rest; a trailing slash is kept.
            (
                "/patients/{pid}/**",
                "/patients/12345678901/a/b",
                &["pid"],
                format!("/patients/{nid}/a/b"),
            ),
            (
                "/patients/{pid}",
                "/patients/12345678901/",
                &["pid"],
                format!("/patients/{nid}/"),
            ),
            // The query is dropped.
            (
                "/patients/{pid}",
                "/patients/12345678901?nid=12345678901",
                &["pid"],
                format!("/patients/{nid}"),
            ),
            // Shape mismatch: the template, never the raw path.
            (
                "/patients/{pid}/journal",
                "/people/12345678901/journal",
                &["pid"],
                "/patients/{pid}/journal".to_owned(),
            ),
            (
                "/patients/{pid}/journal",
                "/patients/12345678901",
                &["pid"],
                "/patients/{pid}/journal".to_owned(),
            ),
        ];
        for (template, path, hide, want) in table {
            assert_eq!(pseudonymise_path(template, path, hide, &p), want, "{path}");
        }
        assert_eq!(pseudonymise_path("/**", "/", &[], &p), "/");
        assert_eq!(pseudonymise_path("/", "/", &[], &p), "/");
        let sub = p.pseudonym(KIND_SUBJECT, "alice");
        assert_eq!(
            pseudonymise_path_with("/users/{u}", "/users/alice", &[("u", KIND_SUBJECT)], &p),
            format!("/users/{sub}")
        );
        // The pseudonymised path is a valid Text, and matches national_id_pseudonym.
        assert!(Text::new(format!("/patients/{nid}/journal")).is_ok());
        assert_eq!(
            Pseudonym::national_id(&p, "12345678901").as_str(),
            nid.as_str()
        );
    }

    #[test]
    fn shared_and_static_fields_are_checked_like_copied_ones() {
        let shared: Arc<str> = Arc::from("spiffe://cluster.local/ns/a/sa/b");
        let text = Text::sanitized_shared(&shared);
        assert_eq!(text, Text::sanitized(&shared));
        assert_eq!(text.as_str(), &*shared);
        assert_eq!(
            serde_json::to_string(&text).unwrap(),
            serde_json::to_string(&Text::sanitized(&shared)).unwrap()
        );
        // A refused value keeps nothing of itself, however it was handed over.
        let token: Arc<str> = Arc::from(format!("Bearer {}", "e".repeat(300)).as_str());
        for refused in [
            Label::sanitized_shared(&token),
            Label::sanitized_static("has space"),
            Label::sanitized(&token),
        ] {
            assert_eq!(refused.as_str(), "invalid");
        }
        assert_eq!(
            Pseudonym::sanitized_shared(&Arc::from("k1:short")).as_str(),
            "invalid"
        );
        assert_eq!(
            Label::sanitized_static("rule_matched").as_str(),
            "rule_matched"
        );
        // Standard methods are not copied, others are; both record the same as `set_method`.
        for method in ["GET", "DELETE", "PROPFIND", "get"] {
            let m = http::Method::from_bytes(method.as_bytes()).unwrap();
            let mut by_http = full_event();
            by_http.set_http_method(&m);
            let mut by_str = full_event();
            by_str.set_method(method);
            assert_eq!(
                (by_http.method, by_http.action),
                (by_str.method, by_str.action),
                "{method}"
            );
        }
    }

    #[test]
    fn timestamps_format_as_the_calendar_says_across_the_whole_range() {
        let format = |ms: i64| {
            let t = Timestamp::from_unix_millis(ms)
                .unwrap()
                .to_offset_date_time();
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            )
        };
        // Leap days, century and 400-year rules, year and day edges, the last representable ms.
        let mut samples = vec![
            0,
            86_399_999,
            951_782_400_000,   // 2000-02-29
            4_107_456_000_000, // 2100-02-28 (no leap day)
            4_107_542_400_000, // 2100-03-01
            1_709_164_800_000, // 2024-02-29
            1_735_689_599_999, // 2024-12-31T23:59:59.999
            MAX_UNIX_MS,
        ];
        // And a day-spaced walk over 1970..=9999 with a moving time of day.
        samples.extend((0..MAX_UNIX_MS).step_by(86_400_000 * 97 + 3_600_123));
        for ms in samples {
            let t = Timestamp::from_unix_millis(ms).unwrap();
            assert_eq!(t.to_string(), format(ms), "{ms}");
            assert_eq!(
                serde_json::to_string(&t).unwrap(),
                format!("\"{}\"", format(ms))
            );
        }
    }

    #[test]
    fn timestamps() {
        let t = Timestamp::from_unix_millis(1_738_324_800_123).unwrap();
        assert_eq!(t.to_string(), "2025-01-31T12:00:00.123Z");
        assert_eq!(
            Timestamp::parse_rfc3339("2025-01-31T12:00:00.123Z").unwrap(),
            t
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2025-01-31T13:30:00.123456+01:30").unwrap(),
            t
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2025-01-31").unwrap().to_string(),
            "2025-01-31T00:00:00.000Z"
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2025-01-31t12:00:00z")
                .unwrap()
                .to_string(),
            "2025-01-31T12:00:00.000Z"
        );
        for bad in [
            "",
            "2025-13-01",
            "2025-02-30T00:00:00Z",
            "2025-01-31T12:00:00",
            "2025-01-31T25:00:00Z",
            "2025-01-31T12:00:00.Z",
            "2025-01-31T12:00:00+1:00",
            "1969-12-31T23:59:59Z",
        ] {
            assert!(Timestamp::parse_rfc3339(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Timestamp::from_unix_millis(0).unwrap().to_string(),
            "1970-01-01T00:00:00.000Z"
        );
        let now = Timestamp::now().to_string();
        assert_eq!(now.len(), 24);
        assert!(now.ends_with('Z'));
        assert_eq!(Timestamp::parse_rfc3339(&now).unwrap().to_string(), now);
    }

    fn json_line(e: &AuditEvent) -> String {
        let mut line = String::new();
        e.write_json(&mut line);
        line
    }

    /// The line writer and the `Serialize` impl make the same bytes, for every field set, none
    /// set, and each optional field alone; and the line reads back as the same event.
    #[test]
    fn json_line_is_serdes_json_byte_for_byte() {
        let full = full_event();
        let minimal = AuditEvent::new(
            Direction::Handshake,
            Decision::Refused,
            Label::new("unknown_ca").unwrap(),
        );
        let mut events = vec![full.clone(), minimal.clone()];
        // Each optional field alone, by keeping it from the full event.
        let keys: Vec<String> = serde_json::to_value(&full)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(keys.len(), 35);
        for key in &keys {
            let mut v = serde_json::to_value(&minimal).unwrap();
            v[key.as_str()] = serde_json::to_value(&full).unwrap()[key.as_str()].clone();
            events.push(serde_json::from_value(v).unwrap());
        }
        // Extremes of the numbers and every enum value.
        let mut big = full.clone();
        big.seq = u64::MAX;
        big.rule = Some(u32::MAX);
        big.status = Some(u16::MAX);
        big.bytes_in = Some(u64::MAX);
        big.bytes_out = Some(0);
        big.duration_ms = Some(10);
        big.prev = ChainHash([0xa5; 32]);
        big.direction = Direction::Outbound;
        big.decision = Decision::WouldDeny;
        big.action = Some(Action::Other);
        big.amr = vec![Label::new("bankid").unwrap()];
        events.push(big);
        for (direction, decision, action, outcome) in [
            (
                Direction::Inbound,
                Decision::Deny,
                Action::Create,
                Outcome::Refused,
            ),
            (
                Direction::Outbound,
                Decision::Allow,
                Action::Update,
                Outcome::UpstreamError,
            ),
            (
                Direction::Handshake,
                Decision::Refused,
                Action::Delete,
                Outcome::Timeout,
            ),
            (
                Direction::Inbound,
                Decision::Allow,
                Action::Read,
                Outcome::ClientAborted,
            ),
            (
                Direction::Audit,
                Decision::Recorded,
                Action::Other,
                Outcome::Completed,
            ),
        ] {
            let mut e = full.clone();
            (e.direction, e.decision, e.action) = (direction, decision, Some(action));
            e.outcome = Some(outcome);
            events.push(e);
        }
        for e in &events {
            let line = json_line(e);
            assert_eq!(line, serde_json::to_string(e).unwrap());
            assert_eq!(
                &serde_json::from_str::<AuditEvent>(&line).unwrap(),
                e,
                "{line}"
            );
        }
    }

    /// Text fields may hold `"` and `\`; and should a value ever get past its type's check,
    /// the line is still valid JSON that says exactly what was stored.
    #[test]
    fn json_line_escapes_every_string_value() {
        let mut e = full_event();
        e.path = Some(Text::new(r#"/a"b\c/"#).unwrap());
        e.issuer = Some(Text::new(r#"https://idp.example/"}"#).unwrap());
        let line = json_line(&e);
        assert_eq!(line, serde_json::to_string(&e).unwrap());
        assert_eq!(serde_json::from_str::<AuditEvent>(&line).unwrap(), e);
        assert!(line.contains(r#""path":"/a\"b\\c/""#), "{line}");

        // Every ASCII byte, control characters included, and some non-ASCII text, written into
        // fields whose checks are bypassed here (only this module can do that).
        let every_ascii: String = (0u8..0x80).map(char::from).collect();
        for raw in [
            every_ascii.as_str(),
            "æøå Ærø — \u{2028}\u{1F512} \u{7f}",
            "\"",
            "\\",
            "",
            "end\n",
        ] {
            let leaked: &'static str = Box::leak(raw.to_owned().into_boxed_str());
            let mut e = full_event();
            e.reason = Label::unchecked(leaked);
            e.path = Some(Text::unchecked(leaked));
            e.amr = vec![Label::unchecked(leaked), Label::new("otp").unwrap()];
            let line = json_line(&e);
            assert_eq!(line, serde_json::to_string(&e).unwrap(), "{raw:?}");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["reason"], raw);
            assert_eq!(v["path"], raw);
            assert_eq!(v["amr"][0], raw);
            assert!(!line.contains('\n'), "a line must stay one line: {line:?}");
        }
    }
}

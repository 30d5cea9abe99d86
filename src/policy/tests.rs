//! Table tests for the policy: one row per case, no I/O.

use http::Method;

use super::*;
use crate::hygiene::path::canonicalize;
use crate::identity::SpiffeId;

const TD: &str = "cluster.local";

const POLICY: &str = r#"
default_mode: enforce
routes:
  - id: health
    methods: [GET]
    path: /healthz
    public: true
  - id: journal-read
    methods: [GET, HEAD]
    path: /patients/{pid}/journal
    allow:
      - peers: [spiffe://cluster.local/ns/frontend/sa/web]
      - peers: [spiffe://cluster.local/ns/records/sa/*, spiffe://cluster.local/ns/*/sa/auditor]
  - id: journal-me
    methods: [GET]
    path: /patients/me/journal
    allow:
      - peers: [spiffe://cluster.local/ns/portal/sa/citizen]
  - id: journal-write
    methods: [POST]
    path: /patients/{pid}/journal
    mode: dry-run
    allow:
      - peers: [spiffe://cluster.local/ns/records/sa/writer]
  - id: static
    methods: [GET]
    path: /static/**
    host: web.svc
    allow:
      - peers: [spiffe://cluster.local/ns/frontend/sa/web]
"#;

fn policy(yaml: &str) -> Policy {
    Policy::from_yaml(
        yaml,
        &PolicyContext::with_trust_domains(&[TD.parse().unwrap()]),
    )
    .unwrap()
}

struct Row {
    method: &'static str,
    host: Option<&'static str>,
    path: &'static str,
    peer: Option<&'static str>,
    allowed: bool,
    reason: Reason,
    route: Option<&'static str>,
    rule: Option<usize>,
    would_deny: bool,
}

fn check(policy: &Policy, rows: &[Row]) {
    for row in rows {
        let method: Method = row.method.parse().unwrap();
        let path = canonicalize(row.path).unwrap();
        let peer: Option<SpiffeId> = row.peer.map(|p| p.parse().unwrap());
        let d = evaluate(
            policy,
            &RequestCtx {
                method: &method,
                host: row.host,
                path: &path,
                peer: peer.as_ref(),
                principal: None,
                now: 0,
                upgrade: None,
            },
        );
        let label = format!(
            "{} {} host {:?} peer {:?}",
            row.method, row.path, row.host, row.peer
        );
        assert_eq!(d.allowed, row.allowed, "allowed: {label}");
        assert_eq!(d.reason, row.reason, "reason: {label}");
        assert_eq!(
            d.route.map(|r| &*policy.routes[r].id),
            row.route,
            "route: {label}"
        );
        assert_eq!(d.rule, row.rule, "rule: {label}");
        assert_eq!(
            d.would_deny.is_some(),
            row.would_deny,
            "would_deny: {label}"
        );
    }
}

const WEB: Option<&str> = Some("spiffe://cluster.local/ns/frontend/sa/web");

#[test]
fn evaluate_table() {
    let p = policy(POLICY);
    let row = |method, host, path, peer, allowed, reason, route, rule, would_deny| Row {
        method,
        host,
        path,
        peer,
        allowed,
        reason,
        route,
        rule,
        would_deny,
    };
    use Reason::*;
    check(
        &p,
        &[
            row(
                "GET",
                None,
                "/healthz",
                WEB,
                true,
                Public,
                Some("health"),
                None,
                false,
            ),
            row(
                "GET",
                None,
                "/healthz",
                None,
                true,
                Public,
                Some("health"),
                None,
                false,
            ),
            row(
                "GET",
                None,
                "/patients/1/journal",
                WEB,
                true,
                RuleMatched,
                Some("journal-read"),
                Some(0),
                false,
            ),
            row(
                "HEAD",
                None,
                "/patients/1/journal",
                WEB,
                true,
                RuleMatched,
                Some("journal-read"),
                Some(0),
                false,
            ),
            row(
                "GET",
                None,
                "/patients/1/journal",
                Some("spiffe://cluster.local/ns/records/sa/archiver"),
                true,
                RuleMatched,
                Some("journal-read"),
                Some(1),
                false,
            ),
            row(
                "GET",
                None,
                "/patients/1/journal",
                Some("spiffe://cluster.local/ns/billing/sa/auditor"),
                true,
                RuleMatched,
                Some("journal-read"),
                Some(1),
                false,
            ),
            // '*' is exactly one segment.
            row(
                "GET",
                None,
                "/patients/1/journal",
                Some("spiffe://cluster.local/ns/records/sa/a/b"),
                false,
                PeerNotAllowed,
                Some("journal-read"),
                None,
                false,
            ),
            row(
                "GET",
                None,
                "/patients/1/journal",
                Some("spiffe://cluster.local/ns/billing/sa/api"),
                false,
                PeerNotAllowed,
                Some("journal-read"),
                None,
                false,
            ),
            row(
                "GET",
                None,
                "/patients/1/journal",
                Some("spiffe://other.td/ns/frontend/sa/web"),
                false,
                PeerNotAllowed,
                Some("journal-read"),
                None,
                false,
            ),
            row(
                "GET",
                None,
                "/patients/1/journal",
                None,
                false,
                NoPeerIdentity,
                Some("journal-read"),
                None,
                false,
            ),
            // The literal route is more specific than {pid}, whatever the order.
            row(
                "GET",
                None,
                "/patients/me/journal",
                WEB,
                false,
                PeerNotAllowed,
                Some("journal-me"),
                None,
                false,
            ),
            row(
                "GET",
                None,
                "/patients/me/journal",
                Some("spiffe://cluster.local/ns/portal/sa/citizen"),
                true,
                RuleMatched,
                Some("journal-me"),
                Some(0),
                false,
            ),
            // Dry-run: passes, but the would-deny is recorded.
            row(
                "POST",
                None,
                "/patients/1/journal",
                WEB,
                true,
                PeerNotAllowed,
                Some("journal-write"),
                None,
                true,
            ),
            row(
                "POST",
                None,
                "/patients/1/journal",
                Some("spiffe://cluster.local/ns/records/sa/writer"),
                true,
                RuleMatched,
                Some("journal-write"),
                Some(0),
                false,
            ),
            row(
                "DELETE",
                None,
                "/patients/1/journal",
                WEB,
                false,
                MethodNotAllowed,
                None,
                None,
                false,
            ),
            row(
                "GET",
                None,
                "/patients/1/notes",
                WEB,
                false,
                NoRoute,
                None,
                None,
                false,
            ),
            row(
                "GET",
                None,
                "/patients/1/journal/",
                WEB,
                false,
                PathNearMiss,
                None,
                None,
                false,
            ),
            row("GET", None, "/", WEB, false, NoRoute, None, None, false),
            row(
                "GET",
                Some("web.svc"),
                "/static/app.js",
                WEB,
                true,
                RuleMatched,
                Some("static"),
                Some(0),
                false,
            ),
            row(
                "GET",
                Some("other.svc"),
                "/static/app.js",
                WEB,
                false,
                NoRoute,
                None,
                None,
                false,
            ),
            row(
                "GET",
                None,
                "/static/app.js",
                WEB,
                false,
                NoRoute,
                None,
                None,
                false,
            ),
            // Canonicalisation happened before: the dot segment cannot reach another route.
            row(
                "GET",
                Some("web.svc"),
                "/static/../patients/1/journal",
                WEB,
                true,
                RuleMatched,
                Some("journal-read"),
                Some(0),
                false,
            ),
        ],
    );
}

#[test]
fn dry_run_default_applies_to_requests_without_a_route() {
    let p = policy(&POLICY.replace("default_mode: enforce", "default_mode: dry-run"));
    use Reason::*;
    check(
        &p,
        &[Row {
            method: "GET",
            host: None,
            path: "/nowhere",
            peer: WEB,
            allowed: true,
            reason: NoRoute,
            route: None,
            rule: None,
            would_deny: true,
        }],
    );
    // Routes with their own mode keep it.
    assert_eq!(p.routes[1].mode, Mode::DryRun);
    let enforced = policy(
        &POLICY
            .replace("default_mode: enforce", "default_mode: dry-run")
            .replace(
                "    path: /healthz\n",
                "    path: /healthz\n    mode: enforce\n",
            ),
    );
    assert_eq!(enforced.routes[0].mode, Mode::Enforce);
}

fn problems(yaml: &str) -> String {
    match Policy::from_yaml(
        yaml,
        &PolicyContext::with_trust_domains(&[TD.parse().unwrap()]),
    ) {
        Ok(_) => panic!("expected the policy to be refused:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn lint_refuses_unsafe_or_meaningless_policies() {
    let route =
        |extra: &str| format!("routes:\n  - id: r\n    methods: [GET]\n    path: /a\n{extra}");
    let peers = "    allow:\n      - peers: [spiffe://cluster.local/ns/a/sa/b]\n";
    let cases: Vec<(String, &str)> = vec![
        (route("    allow:\n      - {}\n"), "a rule with no conditions allows everybody; say public: true"),
        (route(""), "no rules, so nobody is allowed"),
        (route("    public: true\n    allow:\n      - peers: [spiffe://cluster.local/ns/a/sa/b]\n"), "public: true allows every peer; remove the allow rules"),
        (route("    allow:\n      - peers: []\n"), "empty list; this rule can never match"),
        (route("    allow:\n      - peers: [spiffe://elsewhere.td/ns/a/sa/b]\n"), "outside the accepted trust domains"),
        (route("    allow:\n      - peers: [spiffe://cluster.local/ns/a/sa/b, spiffe://cluster.local/ns/a/sa/b]\n"), "listed twice"),
        (route("    allow:\n      - peers: [spiffe://cluster.local/ns/a*/sa/b]\n"), "SPIFFE ID path may hold only letters"),
        (route("    allow:\n      - peers: [http://x]\n"), "is not a SPIFFE ID or pattern"),
        (format!("{}  - id: r\n    methods: [GET]\n    path: /b\n{peers}", route(peers)), "duplicate route id"),
        (format!("{}  - id: r2\n    methods: [GET, POST]\n    path: /a\n{peers}", route(peers)), "GET /a duplicates route r"),
        (
            "routes:\n  - id: a\n    methods: [GET]\n    path: /p/{x}\n    allow:\n      - peers: [spiffe://cluster.local/ns/a/sa/b]\n  - id: b\n    methods: [GET]\n    path: /p/{y}\n    allow:\n      - peers: [spiffe://cluster.local/ns/a/sa/b]\n".into(),
            "duplicates route a (same host, method and path shape /p/{})",
        ),
        (route(peers).replace("path: /a", "path: /a/**/b"), "'**' may only be the last segment"),
        (route(peers).replace("path: /a", "path: a"), "must start with '/'"),
        (route(peers).replace("path: /a", "path: /a/%2e%2e"), "mixes literal text"),
        (route(peers).replace("methods: [GET]", "methods: []"), "methods: empty"),
        (route(peers).replace("methods: [GET]", "methods: [HEAD]"), "HEAD is authorised as GET"),
        (format!("{}    upgrade: [h2c]\n", route(peers)), "h2c is never tunnelled"),
        (format!("{}    upgrade: [\"web socket\"]\n", route(peers)), "is not a protocol name"),
        (format!("{}    upgrade: [websocket]\n", route(peers)).replace("methods: [GET]", "methods: [POST]"), "needs GET among the methods"),
        (format!("path_near_miss: ignore\n{}", route(peers)), "unknown variant `ignore`"),
        (route(peers).replace("methods: [GET]", "methods: [CONNECT]"), "is not a method a route can allow"),
        (route(peers).replace("id: r", "id: \"r r\""), "must be letters, digits"),
        (format!("{}    colour: red\n", route(peers)), "unknown field `colour`"),
        (format!("verison: 1\n{}", route(peers)), "unknown field `verison`"),
        ("version: 2\nroutes: []\n".into(), "version: 2 is not supported"),
        ("routes: []\n".into(), "routes: empty"),
        (route(peers).replace("path: /a", "path: /a\n    host: \"*.svc\""), "is not a host name"),
        (format!("{}    rate_limit: {{ per_second: 0 }}\n", route(peers)), "rate_limit"),
    ];
    for (yaml, expected) in cases {
        let msg = problems(&yaml);
        assert!(
            msg.contains(expected),
            "expected {expected:?} in:\n{msg}\nfor:\n{yaml}"
        );
    }
}

#[test]
fn every_problem_is_reported_at_once_with_its_route() {
    let yaml = "routes:\n  - id: a\n    methods: [GET]\n    path: /a\n  - id: b\n    methods: [GET]\n    path: /b\n    allow:\n      - {}\n";
    let msg = problems(yaml);
    assert!(msg.contains("routes[0] (a).allow: no rules"), "{msg}");
    assert!(
        msg.contains("routes[1] (b).allow[0]: a rule with no conditions"),
        "{msg}"
    );
}

#[test]
fn peer_patterns() {
    let cases = [
        ("spiffe://td/ns/a/sa/b", "spiffe://td/ns/a/sa/b", true),
        ("spiffe://td/ns/a/sa/*", "spiffe://td/ns/a/sa/b", true),
        ("spiffe://td/ns/*/sa/b", "spiffe://td/ns/x/sa/b", true),
        ("spiffe://td/ns/a/sa/*", "spiffe://td/ns/a/sa/b/c", false),
        ("spiffe://td/ns/a/sa/*", "spiffe://td/ns/a/sa", false),
        ("spiffe://td/ns/a/sa/*", "spiffe://other/ns/a/sa/b", false),
        ("spiffe://td/ns/a/sa/b", "spiffe://td/ns/a/sa/bb", false),
        ("spiffe://td/*", "spiffe://td/x", true),
    ];
    for (pattern, id, expected) in cases {
        let p: PeerPattern = pattern.parse().unwrap();
        assert_eq!(
            p.matches(&id.parse().unwrap()),
            expected,
            "{pattern} vs {id}"
        );
    }
}

/// Property: the decision on the path the app receives (the canonical path, canonicalised once
/// more as the next hop would) is the decision vakt made on the raw path. Random paths from an
/// alphabet heavy in confusion characters; deterministic seed.
#[test]
fn decision_on_the_forwarded_path_equals_decision_on_the_raw_path() {
    let p = policy(POLICY);
    let alphabet: &[&str] = &[
        "/", "/", "/", ".", "..", "%2e", "%2E", "%2f", "%5c", "%25", ";", "\\", "patients", "1",
        "me", "journal", "static", "healthz", "%41", "%7e", "~", "%00", "a", "//", "?",
    ];
    let mut rng = crate::xorshift::XorShift(crate::xorshift::XorShift::SEED);
    let mut next = || rng.next_u64();
    let peer: SpiffeId = WEB.unwrap().parse().unwrap();
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..20_000 {
        let len = 1 + (next() % 12) as usize;
        let mut raw = String::from("/");
        for _ in 0..len {
            raw.push_str(alphabet[(next() % alphabet.len() as u64) as usize]);
        }
        let Ok(canonical) = canonicalize(&raw) else {
            refused += 1;
            continue;
        };
        accepted += 1;
        let again = canonicalize(canonical.as_str()).expect("canonical paths are accepted");
        assert_eq!(again, canonical, "not idempotent for {raw}");
        for method in [Method::GET, Method::POST] {
            let decide = |path| {
                evaluate(
                    &p,
                    &RequestCtx {
                        method: &method,
                        host: Some("web.svc"),
                        path,
                        peer: Some(&peer),
                        principal: None,
                        now: 0,
                        upgrade: None,
                    },
                )
            };
            assert_eq!(
                decide(&canonical),
                decide(&again),
                "decision differs for {raw}"
            );
        }
    }
    assert!(
        accepted > 1_000 && refused > 1_000,
        "accepted {accepted}, refused {refused}"
    );
}

#[test]
fn upgrades_must_each_be_listed_by_the_route() {
    let listed = ["websocket".to_owned(), "echo".to_owned()];
    for (protocols, allowed) in [
        ("websocket", true),
        ("websocket/13", true),
        ("echo, websocket", true),
        ("websocket, h2c", false),
        ("h2c", false),
        ("", false),
        (",", false),
        ("tls/1.0", false),
    ] {
        assert_eq!(
            decide::upgrade_allowed(&listed, protocols),
            allowed,
            "{protocols:?}"
        );
    }
}

const HELSEID: &str = "https://helseid-sts.nhn.no";
const SIGNICAT: &str = "https://partner.signicat.com/auth/open";

/// A policy checked against a sidecar that trusts `issuers`.
fn policy_with_issuers(yaml: &str, issuers: &[&str]) -> Result<Policy, String> {
    Policy::from_yaml(
        yaml,
        &PolicyContext {
            trust_domains: vec![TD.parse().unwrap()],
            issuers: Some(issuers.iter().map(|i| (*i).to_owned()).collect()),
            dpop_public_url: None,
        },
    )
    .map_err(|e| e.to_string())
}

/// A verified token's principal: issued by `issuer`, naming `client` (if any).
fn principal(issuer: &str, client: Option<&str>) -> crate::authn::Principal {
    let mut claims = std::collections::BTreeMap::new();
    claims.insert("iss".to_owned(), serde_json::json!(issuer));
    claims.insert("sub".to_owned(), serde_json::json!("s1"));
    if let Some(c) = client {
        claims.insert("client_id".to_owned(), serde_json::json!(c));
    }
    crate::authn::Profile::Generic.principal(issuer.into(), claims, i64::MAX)
}

/// The reason `policy` gives a GET of `path` from `peer` with a token of `principal`.
fn token_decision(
    policy: &Policy,
    path: &str,
    peer: &str,
    principal: &crate::authn::Principal,
) -> Reason {
    let path = canonicalize(path).unwrap();
    let peer: SpiffeId = peer.parse().unwrap();
    evaluate(
        policy,
        &RequestCtx {
            method: &Method::GET,
            host: None,
            path: &path,
            peer: Some(&peer),
            principal: Some(principal),
            now: 0,
            upgrade: None,
        },
    )
    .reason
}

const WEB_ID: &str = "spiffe://cluster.local/ns/frontend/sa/web";
const BATCH_ID: &str = "spiffe://cluster.local/ns/records/sa/batch";

#[test]
fn a_client_is_matched_with_its_issuer() {
    // Both written forms: the id alone under the rule's only issuer, and the explicit pair.
    let yaml = format!(
        "routes:
  - id: plain
    methods: [GET]
    path: /plain
    allow:
      - issuers: [{HELSEID}]
        clients: [journal-web]
  - id: pair
    methods: [GET]
    path: /pair
    allow:
      - issuers: [{HELSEID}, {SIGNICAT}]
        clients: [{{issuer: {HELSEID}, id: journal-web}}, {{issuer: {SIGNICAT}, id: partner-app}}]
"
    );
    let p = policy_with_issuers(&yaml, &[HELSEID, SIGNICAT]).unwrap();
    let helseid_web = principal(HELSEID, Some("journal-web"));
    let signicat_web = principal(SIGNICAT, Some("journal-web"));
    let signicat_partner = principal(SIGNICAT, Some("partner-app"));
    let helseid_partner = principal(HELSEID, Some("partner-app"));
    for (path, who, expected) in [
        ("/plain", &helseid_web, Reason::RuleMatched),
        // The same client id from the other issuer is someone else.
        ("/plain", &signicat_web, Reason::IssuerNotAllowed),
        ("/pair", &helseid_web, Reason::RuleMatched),
        ("/pair", &signicat_partner, Reason::RuleMatched),
        ("/pair", &signicat_web, Reason::ClientNotAllowed),
        ("/pair", &helseid_partner, Reason::ClientNotAllowed),
    ] {
        assert_eq!(
            token_decision(&p, path, WEB_ID, who),
            expected,
            "{path} with {} from {}",
            who.client_id.as_deref().unwrap(),
            who.issuer
        );
    }
    assert_eq!(
        p.routes[1].rules[0].clients.as_deref().unwrap()[0].to_string(),
        format!("{{issuer: {HELSEID}, id: journal-web}}")
    );
}

#[test]
fn a_client_id_alone_must_name_one_issuer() {
    // One issuer in the sidecar: an id alone means that issuer's client.
    let single = "routes:\n  - id: r\n    methods: [GET]\n    path: /a\n    allow:\n      - clients: [journal-web]\n";
    let p = policy_with_issuers(single, &[HELSEID]).unwrap();
    assert_eq!(
        token_decision(&p, "/a", WEB_ID, &principal(HELSEID, Some("journal-web"))),
        Reason::RuleMatched
    );
    for (yaml, issuers, expected) in [
        // The rule names two issuers: which one's journal-web?
        (
            format!(
                "routes:\n  - id: r\n    methods: [GET]\n    path: /a\n    allow:\n      - issuers: [{HELSEID}, {SIGNICAT}]\n        clients: [journal-web]\n"
            ),
            &[HELSEID, SIGNICAT][..],
            format!(
                "routes[0] (r).allow[0].clients[0]: \"journal-web\" names no issuer, and the rule names 2 ({HELSEID}, {SIGNICAT}); write {{issuer: <issuer URL>, id: journal-web}}"
            ),
        ),
        // The rule names none and the sidecar trusts two.
        (
            single.to_owned(),
            &[HELSEID, SIGNICAT][..],
            format!(
                "routes[0] (r).allow[0].clients[0]: \"journal-web\" names no issuer, and the sidecar trusts 2 ({HELSEID}, {SIGNICAT})"
            ),
        ),
        // A pair naming an issuer the rule does not accept can never match.
        (
            format!(
                "routes:\n  - id: r\n    methods: [GET]\n    path: /a\n    allow:\n      - issuers: [{HELSEID}]\n        clients: [{{issuer: {SIGNICAT}, id: x}}]\n"
            ),
            &[HELSEID, SIGNICAT][..],
            format!(
                "routes[0] (r).allow[0].clients[0]: issuer {SIGNICAT} is not among the rule's issuers ({HELSEID}); it can never match"
            ),
        ),
        (
            "routes:\n  - id: r\n    methods: [GET]\n    path: /a\n    allow:\n      - clients: [{issuer: https://elsewhere.example, id: x}]\n".to_owned(),
            &[HELSEID][..],
            "routes[0] (r).allow[0].clients[0]: issuer https://elsewhere.example is not a configured issuer".to_owned(),
        ),
        (
            format!(
                "routes:\n  - id: r\n    methods: [GET]\n    path: /a\n    allow:\n      - clients: [{{issuer: {HELSEID}, id: x, tenant: y}}]\n"
            ),
            &[HELSEID][..],
            "unknown field `tenant`".to_owned(),
        ),
    ] {
        let msg = policy_with_issuers(&yaml, issuers).unwrap_err();
        assert!(msg.contains(&expected), "expected {expected:?} in:\n{msg}");
    }
}

#[test]
fn with_two_issuers_every_rule_with_token_conditions_names_its_issuers() {
    let conditions = [
        "scopes_any: [journal.read]",
        "scopes_all: [journal.read]",
        "min_loa: high",
        "max_auth_age: 5m",
        "amr_any: [BankID]",
        "claims: { idp: nbid }",
        "clients: [{issuer: https://helseid-sts.nhn.no, id: journal-web}]",
    ];
    for condition in conditions {
        let yaml = format!(
            "routes:\n  - id: r\n    methods: [GET]\n    path: /a\n    allow:\n      - peers: [{WEB_ID}]\n      - peers: [{WEB_ID}]\n        {condition}\n"
        );
        let msg = policy_with_issuers(&yaml, &[HELSEID, SIGNICAT]).unwrap_err();
        let expected = format!(
            "routes[0] (r).allow[1]: the sidecar trusts 2 issuers ({HELSEID}, {SIGNICAT}); a rule with token conditions must name its issuers"
        );
        assert!(msg.contains(&expected), "{condition}: {msg}");
        assert!(
            !msg.contains("allow[0]"),
            "a peers-only rule needs no issuer: {msg}"
        );
        // With one issuer configured, or the issuers named, the rule is fine.
        policy_with_issuers(&yaml, &[HELSEID]).unwrap();
        let named = yaml.replace(
            &format!("{condition}\n"),
            &format!("{condition}\n        issuers: [{HELSEID}]\n"),
        );
        policy_with_issuers(&named, &[HELSEID, SIGNICAT]).unwrap();
    }
    let bind = "routes:\n  - id: r\n    methods: [GET]\n    path: /p/{pid}\n    allow:\n      - bind: { pid: national_id }\n";
    let msg = policy_with_issuers(bind, &[HELSEID, SIGNICAT]).unwrap_err();
    assert!(
        msg.contains("routes[0] (r).allow[0]: the sidecar trusts 2 issuers"),
        "{msg}"
    );
}

#[test]
fn client_bindings_are_per_issuer_and_fail_closed() {
    let routes = format!(
        "routes:\n  - id: r\n    methods: [GET]\n    path: /a\n    allow:\n      - peers: [{WEB_ID}, {BATCH_ID}]\n"
    );
    let listed = format!(
        "client_bindings:\n  - client: {{issuer: {HELSEID}, id: journal-web}}\n    peers: [{WEB_ID}]\n{routes}"
    );
    let p = policy_with_issuers(&listed, &[HELSEID, SIGNICAT]).unwrap();
    for (peer, who, expected) in [
        (
            WEB_ID,
            principal(HELSEID, Some("journal-web")),
            Reason::RuleMatched,
        ),
        (
            BATCH_ID,
            principal(HELSEID, Some("journal-web")),
            Reason::ClientPeerMismatch,
        ),
        // Another HelseID client is not bound.
        (
            BATCH_ID,
            principal(HELSEID, Some("batch")),
            Reason::RuleMatched,
        ),
        // The same id from the other issuer is another client, and not bound.
        (
            BATCH_ID,
            principal(SIGNICAT, Some("journal-web")),
            Reason::RuleMatched,
        ),
        // HelseID binds clients, so its tokens must name theirs.
        (WEB_ID, principal(HELSEID, None), Reason::ClientIdMissing),
        (BATCH_ID, principal(HELSEID, None), Reason::ClientIdMissing),
        // Signicat binds none: no client id needed.
        (BATCH_ID, principal(SIGNICAT, None), Reason::RuleMatched),
    ] {
        assert_eq!(
            token_decision(&p, "/a", peer, &who),
            expected,
            "{:?} from {} via {peer}",
            who.client_id,
            who.issuer
        );
    }
    // A bound client's token with no peer identity at all is refused (by the bindings alone,
    // and by the route, which refuses the missing peer first).
    let path = canonicalize("/a").unwrap();
    let web = principal(HELSEID, Some("journal-web"));
    assert_eq!(
        p.client_bindings.check(&web, None),
        Err(Reason::ClientPeerMismatch)
    );
    assert_eq!(
        evaluate(
            &p,
            &RequestCtx {
                method: &Method::GET,
                host: None,
                path: &path,
                peer: None,
                principal: Some(&web),
                now: 0,
                upgrade: None,
            },
        )
        .reason,
        // The route names its peers: without a peer identity it is refused before the token.
        Reason::NoPeerIdentity
    );

    // The map form (ids alone) with one issuer means that issuer's clients.
    let keyed = format!("client_bindings:\n  journal-web: [{WEB_ID}]\n{routes}");
    let p = policy_with_issuers(&keyed, &[HELSEID]).unwrap();
    assert_eq!(
        token_decision(&p, "/a", BATCH_ID, &principal(HELSEID, Some("journal-web"))),
        Reason::ClientPeerMismatch
    );
    assert_eq!(
        token_decision(&p, "/a", BATCH_ID, &principal(HELSEID, None)),
        Reason::ClientIdMissing
    );
    // With two issuers an id alone is ambiguous, in either form.
    let msg = policy_with_issuers(&keyed, &[HELSEID, SIGNICAT]).unwrap_err();
    assert!(
        msg.contains(&format!("client_bindings.journal-web: \"journal-web\" names no issuer, and the sidecar trusts 2 ({HELSEID}, {SIGNICAT})")),
        "{msg}"
    );
    let listed_plain =
        format!("client_bindings:\n  - client: journal-web\n    peers: [{WEB_ID}]\n{routes}");
    let msg = policy_with_issuers(&listed_plain, &[HELSEID, SIGNICAT]).unwrap_err();
    assert!(
        msg.contains("client_bindings[0]: \"journal-web\" names no issuer"),
        "{msg}"
    );
    let twice = format!(
        "client_bindings:\n  - client: journal-web\n    peers: [{WEB_ID}]\n  - client: {{issuer: {HELSEID}, id: journal-web}}\n    peers: [{BATCH_ID}]\n{routes}"
    );
    let msg = policy_with_issuers(&twice, &[HELSEID]).unwrap_err();
    assert!(
        msg.contains(&format!(
            "client_bindings[1]: {{issuer: {HELSEID}, id: journal-web}} is bound twice"
        )),
        "{msg}"
    );
}

#[test]
fn explain_shows_clients_and_bindings_as_issuer_and_id() {
    let yaml = format!(
        "client_bindings:
  - client: {{issuer: {HELSEID}, id: journal-web}}
    peers: [{WEB_ID}]
routes:
  - id: r
    methods: [GET]
    path: /a
    allow:
      - peers: [{WEB_ID}]
        issuers: [{HELSEID}, {SIGNICAT}]
        clients: [{{issuer: {HELSEID}, id: journal-web}}]
"
    );
    let p = policy_with_issuers(&yaml, &[HELSEID, SIGNICAT]).unwrap();
    let request = |issuer: &str| explain::RequestSpec {
        method: "GET".into(),
        path: "/a".into(),
        host: None,
        peer: Some(WEB_ID.parse().unwrap()),
        claims: Some(
            [
                ("iss".to_owned(), serde_json::json!(issuer)),
                ("client_id".to_owned(), serde_json::json!("journal-web")),
            ]
            .into(),
        ),
        profile: None,
    };
    let helseid = explain::explain(&p, &request(HELSEID)).unwrap();
    for expected in [
        "client journal-web".to_owned(),
        format!(
            "  binding: client {{issuer: {HELSEID}, id: journal-web}} only from [{WEB_ID}]: held"
        ),
        format!("    held          issuers [{HELSEID}, {SIGNICAT}]: the token is from {HELSEID}"),
        format!(
            "    held          clients [{{issuer: {HELSEID}, id: journal-web}}]: the token's client is {{issuer: {HELSEID}, id: journal-web}}"
        ),
        "decision:  ALLOW (rule_matched)".to_owned(),
    ] {
        assert!(
            helseid.contains(&expected),
            "{expected:?} missing in:\n{helseid}"
        );
    }
    let signicat = explain::explain(&p, &request(SIGNICAT)).unwrap();
    for expected in [
        format!("from {SIGNICAT}, client journal-web"),
        format!(
            "    did not hold  clients [{{issuer: {HELSEID}, id: journal-web}}]: the token's client is {{issuer: {SIGNICAT}, id: journal-web}}"
        ),
        "decision:  DENY (client_not_allowed)".to_owned(),
    ] {
        assert!(
            signicat.contains(&expected),
            "{expected:?} missing in:\n{signicat}"
        );
    }
    assert!(!signicat.contains("binding:"), "{signicat}");
}

#[test]
fn require_dpop_needs_a_token_and_a_public_url_to_check_proofs_against() {
    let yaml = |token: &str| {
        format!(
            "routes:\n  - id: v2\n    methods: [GET]\n    path: /v2\n    require_dpop: true\n    token: {token}\n    allow:\n      - peers: [spiffe://{TD}/ns/a/sa/b]\n"
        )
    };
    let context = |public_url: Option<bool>| PolicyContext {
        trust_domains: vec![TD.parse().unwrap()],
        issuers: Some(vec![HELSEID.to_owned()]),
        dpop_public_url: public_url,
    };
    let err = Policy::from_yaml(&yaml("none"), &context(Some(true)))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("routes[0] (v2).require_dpop: needs a token"),
        "{err}"
    );
    let err = Policy::from_yaml(&yaml("required"), &context(Some(false)))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("routes[0] (v2).require_dpop: no DPoP public URL is configured"),
        "{err}"
    );
    let policy = Policy::from_yaml(&yaml("required"), &context(Some(true))).unwrap();
    assert!(policy.routes[0].require_dpop);
    // Unknown (a policy checked on its own): accepted.
    Policy::from_yaml(&yaml("optional"), &context(None)).unwrap();
}

#[test]
fn a_test_request_with_cnf_jkt_stands_for_a_dpop_request() {
    let yaml = format!(
        "routes:\n  - id: v2\n    methods: [GET]\n    path: /v2\n    require_dpop: true\n    allow:\n      - peers: [{WEB_ID}]\n"
    );
    let p = policy_with_issuers(&yaml, &[HELSEID]).unwrap();
    let request = |claims: serde_json::Value| explain::RequestSpec {
        method: "GET".into(),
        path: "/v2".into(),
        host: None,
        peer: Some(WEB_ID.parse().unwrap()),
        claims: Some(serde_json::from_value(claims).unwrap()),
        profile: None,
    };
    let bound = request(
        serde_json::json!({"iss": HELSEID, "cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}}),
    );
    let bearer = request(serde_json::json!({"iss": HELSEID}));
    let reason = |r: &explain::RequestSpec| match explain::decide(&p, r).unwrap() {
        explain::Verdict::Decided { decision, .. } => decision.reason,
        _ => panic!("the path is canonical"),
    };
    assert_eq!(reason(&bound), Reason::RuleMatched);
    assert_eq!(reason(&bearer), Reason::DpopRequired);
}

#[test]
fn the_peer_is_refused_before_the_token_is_asked_for() {
    let yaml = format!(
        "routes:\n  - id: r\n    methods: [GET]\n    path: /a\n    allow:\n      - peers: [{WEB_ID}]\n        min_loa: high\n  - id: open\n    methods: [GET]\n    path: /open\n    public: true\n    token: required\n"
    );
    let p = policy_with_issuers(&yaml, &[HELSEID]).unwrap();
    let path = canonicalize("/a").unwrap();
    let decide = |peer: Option<&SpiffeId>, path: &crate::hygiene::path::CanonicalPath| {
        evaluate(
            &p,
            &RequestCtx {
                method: &Method::GET,
                host: None,
                path,
                peer,
                principal: None,
                now: 0,
                upgrade: None,
            },
        )
        .reason
    };
    let web: SpiffeId = WEB_ID.parse().unwrap();
    let batch: SpiffeId = BATCH_ID.parse().unwrap();
    // An admitted peer without a token is told it needs one; anyone else is refused as a peer.
    assert_eq!(decide(Some(&web), &path), Reason::TokenRequired);
    assert_eq!(decide(Some(&batch), &path), Reason::PeerNotAllowed);
    assert_eq!(decide(None, &path), Reason::NoPeerIdentity);
    // A public route admits every peer: there the token is what is missing.
    let open = canonicalize("/open").unwrap();
    assert_eq!(decide(Some(&batch), &open), Reason::TokenRequired);
}

/// `vakt explain` lists a rule's conditions from the same walk the sidecar's check makes: a rule
/// holds exactly when every listed condition held, and its first condition that did not hold
/// gives the rule's reason.
#[test]
fn explained_conditions_agree_with_the_rule_check() {
    let yaml = format!(
        "routes:\n  - id: r\n    methods: [GET]\n    path: /p/{{pid}}\n    allow:\n      - peers: [{WEB_ID}]\n        issuers: [{HELSEID}]\n        scopes_all: [a, b]\n        scopes_any: [c]\n        min_loa: substantial\n        max_auth_age: 10m\n        amr_any: [BankID]\n        claims: {{org: ['1', '2']}}\n        bind: {{pid: subject}}\n      - peers: [{BATCH_ID}]\n"
    );
    let p = policy_with_issuers(&yaml, &[HELSEID, SIGNICAT]).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let full = serde_json::json!({
        "iss": HELSEID, "sub": "s1", "scope": "a b c", "acr": "substantial",
        "auth_time": now - 60, "amr": ["BankID"], "org": "2",
    });
    let mut cases = vec![full.clone()];
    for (key, bad) in [
        ("iss", serde_json::json!(SIGNICAT)),
        ("scope", serde_json::json!("a c")),
        ("scope", serde_json::json!("a b")),
        ("acr", serde_json::json!("low")),
        ("auth_time", serde_json::json!(now - 3600)),
        ("amr", serde_json::json!(["pwd"])),
        ("org", serde_json::json!("3")),
        ("sub", serde_json::json!("s2")),
    ] {
        let mut claims = full.clone();
        claims[key] = bad;
        cases.push(claims);
    }
    for peer in [Some(WEB_ID), Some(BATCH_ID), None] {
        for claims in cases.iter().map(Some).chain([None]) {
            let request = explain::RequestSpec {
                method: "GET".into(),
                path: "/p/s1".into(),
                host: None,
                peer: peer.map(|p| p.parse().unwrap()),
                claims: claims.map(|c| serde_json::from_value(c.clone()).unwrap()),
                profile: None,
            };
            let explained = explain::explanation(&p, &request).unwrap();
            for rule in &explained.rules {
                let all_held = rule.conditions.iter().all(|c| c.held);
                assert_eq!(rule.holds, all_held, "{peer:?} {claims:?}: {rule:?}");
            }
            // A rule that holds allows, unless the route itself asks for more (a token at all).
            let any_holds = explained.rules.iter().any(|r| r.holds);
            let allowed = explained.decision.outcome == "allow";
            assert!(!allowed || any_holds, "{peer:?} {claims:?}: {explained:?}");
            assert!(
                allowed || !any_holds || explained.decision.reason == "token_required",
                "{peer:?} {claims:?}: {explained:?}"
            );
        }
    }
}

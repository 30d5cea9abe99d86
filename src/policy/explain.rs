//! For the people who write policy: `vakt explain` (why one request is allowed or denied) and
//! `vakt test` (a file of cases kept next to the policy, checked in the service's CI). Both run
//! the same canonicalisation and [`evaluate`] as the sidecar.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use http::Method;
use serde::Deserialize;

use super::{Decision, Policy, PolicyContext, RequestCtx, TokenRequirement, evaluate};
use crate::authn::{Principal, Profile};
use crate::hygiene::host::CanonicalHost;
use crate::hygiene::path::{CanonicalPath, PathError, canonicalize};
use crate::identity::{SpiffeId, TrustDomain};

/// One request as the policy author describes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    pub method: String,
    /// The path as sent (may be non-canonical: it is canonicalised like in the sidecar).
    pub path: String,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub peer: Option<SpiffeId>,
    /// Claims of a (verified) access token, as the token would carry them. A `cnf: {jkt: ...}`
    /// stands for a DPoP-bound token that came with a valid proof (RFC 9449).
    #[serde(default)]
    pub claims: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    /// How to read the claims (default generic).
    #[serde(default)]
    pub profile: Option<Profile>,
}

impl RequestSpec {
    /// The principal the sidecar would derive from `claims`.
    pub fn principal(&self) -> Option<Principal> {
        let claims = self.claims.clone()?;
        let issuer: std::sync::Arc<str> = claims
            .get("iss")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("https://issuer.invalid")
            .into();
        let exp = claims
            .get("exp")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(i64::MAX);
        let dpop_jkt = claims
            .get("cnf")
            .and_then(|c| c.get("jkt"))
            .and_then(serde_json::Value::as_str)
            .map(std::sync::Arc::from);
        let mut principal = self
            .profile
            .unwrap_or(Profile::Generic)
            .principal(issuer, claims, exp);
        principal.dpop_jkt = dpop_jkt;
        Some(principal)
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What the sidecar would do with a request.
pub enum Verdict {
    /// Refused before the policy: the path is ambiguous.
    InvalidPath(PathError),
    Decided {
        canonical: CanonicalPath,
        decision: Decision,
    },
}

impl Verdict {
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::InvalidPath(_) => "deny",
            Self::Decided { decision, .. } => match (decision.allowed, decision.would_deny) {
                (true, None) => "allow",
                (true, Some(_)) => "would_deny",
                (false, _) => "deny",
            },
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidPath(_) => "invalid_path",
            Self::Decided { decision, .. } => decision.reason.code(),
        }
    }

    pub fn route<'p>(&self, policy: &'p Policy) -> Option<&'p str> {
        match self {
            Self::Decided { decision, .. } => decision.route.map(|r| &*policy.routes[r].id),
            Self::InvalidPath(_) => None,
        }
    }
}

pub fn decide(policy: &Policy, request: &RequestSpec) -> Result<Verdict, String> {
    let method: Method = request
        .method
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| format!("\"{}\" is not an HTTP method", request.method))?;
    let raw_path = request.path.split('?').next().unwrap_or_default();
    let canonical = match canonicalize(raw_path) {
        Ok(c) => c,
        Err(e) => return Ok(Verdict::InvalidPath(e)),
    };
    let host = request
        .host
        .as_deref()
        .map(|h| CanonicalHost::parse(h.as_bytes(), 443).map_err(|e| format!("host \"{h}\": {e}")))
        .transpose()?;
    let principal = request.principal();
    let decision = evaluate(
        policy,
        &RequestCtx {
            method: &method,
            host: host.as_ref().map(CanonicalHost::name),
            path: &canonical,
            peer: request.peer.as_ref(),
            principal: principal.as_ref(),
            now: unix_now(),
            upgrade: None,
        },
    );
    Ok(Verdict::Decided {
        canonical,
        decision,
    })
}

/// A readable account of one decision: canonical path, matched route, every rule and
/// condition, and the outcome.
pub fn explain(policy: &Policy, request: &RequestSpec) -> Result<String, String> {
    let verdict = decide(policy, request)?;
    let mut out = String::new();
    let peer = request
        .peer
        .as_ref()
        .map_or("(none)".to_owned(), ToString::to_string);
    let _ = writeln!(
        out,
        "request:   {} {}  host: {}  peer: {peer}",
        request.method.to_ascii_uppercase(),
        request.path,
        request.host.as_deref().unwrap_or("(any)")
    );
    match &verdict {
        Verdict::InvalidPath(e) => {
            let _ = writeln!(out, "path:      refused before matching: {e}");
        }
        Verdict::Decided {
            canonical,
            decision,
        } => {
            let _ = writeln!(out, "canonical: {canonical}");
            match decision.route {
                None => {
                    let _ = writeln!(
                        out,
                        "route:     none matches (reason {})",
                        decision.reason.code()
                    );
                }
                Some(r) => {
                    let route = &policy.routes[r];
                    let methods: Vec<&str> = route.methods.iter().map(Method::as_str).collect();
                    let _ = writeln!(
                        out,
                        "route:     {} ({} {}{}, mode {})",
                        route.id,
                        methods.join(","),
                        route.pattern,
                        route
                            .host
                            .as_deref()
                            .map_or(String::new(), |h| format!(" host {h}")),
                        route.mode.as_str()
                    );
                    let names = route.pattern.segments.iter().filter_map(|s| match s {
                        super::router::PatternSegment::Param(n) => Some(n.as_str()),
                        _ => None,
                    });
                    for (name, (_, range)) in names.zip(&decision.captures.params) {
                        let _ = writeln!(
                            out,
                            "  param:   {name} = {}",
                            &canonical.as_str()[range.clone()]
                        );
                    }
                    if route.public {
                        let _ = writeln!(out, "  public:  every verified peer is allowed");
                    }
                    let principal = request.principal();
                    let _ = writeln!(
                        out,
                        "  token:   {} (route requires: {:?}){}",
                        if principal.is_some() {
                            "presented"
                        } else {
                            "none"
                        },
                        route.token,
                        principal.as_ref().map_or(String::new(), |p| format!(
                            "; loa {}, client {}, scopes [{}]",
                            p.loa.as_str(),
                            p.client_id.as_deref().map_or("-".to_owned(), |c| format!(
                                "{{issuer: {}, id: {c}}}",
                                p.issuer
                            )),
                            p.scopes.join(" ")
                        ))
                    );
                    if let Some(p) = principal
                        .as_ref()
                        .filter(|_| route.token != TokenRequirement::None)
                        && let Some(bound) = policy.client_bindings.of_issuer(&p.issuer)
                    {
                        let verdict = match policy.client_bindings.check(p, request.peer.as_ref()) {
                            Ok(()) => "passed".to_owned(),
                            Err(reason) => format!("failed ({})", reason.code()),
                        };
                        let binding = match p.client_id.as_deref() {
                            None => format!("{} binds clients and the token names none", p.issuer),
                            Some(c) => match bound.get(c) {
                                None => format!("{{issuer: {}, id: {c}}} is not bound", p.issuer),
                                Some(peers) => format!(
                                    "{{issuer: {}, id: {c}}} only from [{}]",
                                    p.issuer,
                                    peers
                                        .iter()
                                        .map(ToString::to_string)
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                            },
                        };
                        let _ = writeln!(out, "  binding: {binding}: {verdict}");
                    }
                    let ctx = RequestCtx {
                        method: &Method::GET,
                        host: None,
                        path: canonical,
                        peer: request.peer.as_ref(),
                        principal: principal.as_ref(),
                        now: unix_now(),
                        upgrade: None,
                    };
                    for (i, rule) in route.rules.iter().enumerate() {
                        let outcome = rule.check(&ctx, principal.as_ref(), &decision.captures);
                        let _ = writeln!(
                            out,
                            "  rule {i}:  {}",
                            match outcome {
                                Ok(()) => "HOLDS".to_owned(),
                                Err(reason) => format!("does not hold ({})", reason.code()),
                            }
                        );
                        // Each condition a rule names about who is calling: peers, and the
                        // token's issuer and (issuer, client id) pair.
                        let mut conditions: Vec<(&str, Vec<String>, bool)> = Vec::new();
                        if let Some(patterns) = &rule.peers {
                            let listed = patterns.iter().map(ToString::to_string).collect();
                            conditions.push(("peers", listed, rule.peers_hold(&ctx)));
                        }
                        if let Some(issuers) = &rule.spec.issuers {
                            let held = principal
                                .as_ref()
                                .is_some_and(|p| issuers.iter().any(|i| **i == *p.issuer));
                            conditions.push(("issuers", issuers.clone(), held));
                        }
                        if let Some(clients) = &rule.clients {
                            let held = principal.as_ref().is_some_and(|p| {
                                p.client_id
                                    .as_deref()
                                    .is_some_and(|c| clients.iter().any(|k| k.is(&p.issuer, c)))
                            });
                            let listed = clients.iter().map(ToString::to_string).collect();
                            conditions.push(("clients", listed, held));
                        }
                        for (name, listed, held) in conditions {
                            let _ = writeln!(
                                out,
                                "    {name} [{}]: {}",
                                listed.join(", "),
                                if held { "passed" } else { "failed" }
                            );
                        }
                    }
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "decision:  {} ({})",
        verdict.outcome().to_ascii_uppercase(),
        verdict.reason()
    );
    Ok(out)
}

/// A policy test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// The policy under test, relative to the test file.
    pub policy: PathBuf,
    /// Trust domains for the policy's lint (default: none checked).
    #[serde(default)]
    pub trust_domains: Vec<TrustDomain>,
    /// The sidecar's OIDC issuers (token conditions are checked against them; with none listed,
    /// routes default to `token: none`).
    #[serde(default)]
    pub issuers: Vec<String>,
    pub cases: Vec<TestCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub name: String,
    pub request: RequestSpec,
    pub expect: Expectation,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// allow, deny or would_deny.
    pub decision: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub route: Option<String>,
}

/// Run a test file; the report goes to `out`. `Ok(true)` when every case passed.
pub fn run_tests(file: &Path, out: &mut String) -> Result<bool, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let tests: TestFile =
        crate::serde_helpers::from_yaml(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let policy_path = crate::watch::parent_dir(file).join(&tests.policy);
    let context = PolicyContext {
        trust_domains: tests.trust_domains.clone(),
        issuers: Some(tests.issuers.clone()),
        dpop_public_url: None,
    };
    let policy = Policy::from_file(&policy_path, &context).map_err(|e| e.to_string())?;
    let mut failed = 0;
    for case in &tests.cases {
        if !["allow", "deny", "would_deny"].contains(&case.expect.decision.as_str()) {
            return Err(format!(
                "case \"{}\": expect.decision \"{}\" must be allow, deny or would_deny",
                case.name, case.expect.decision
            ));
        }
        let verdict =
            decide(&policy, &case.request).map_err(|e| format!("case \"{}\": {e}", case.name))?;
        let mut mismatches = Vec::new();
        if verdict.outcome() != case.expect.decision {
            mismatches.push(format!(
                "decision {} (expected {})",
                verdict.outcome(),
                case.expect.decision
            ));
        }
        if let Some(reason) = &case.expect.reason
            && verdict.reason() != reason
        {
            mismatches.push(format!("reason {} (expected {reason})", verdict.reason()));
        }
        if let Some(route) = &case.expect.route
            && verdict.route(&policy) != Some(route.as_str())
        {
            mismatches.push(format!(
                "route {} (expected {route})",
                verdict.route(&policy).unwrap_or("none")
            ));
        }
        if mismatches.is_empty() {
            let _ = writeln!(out, "ok    {}", case.name);
        } else {
            failed += 1;
            let _ = writeln!(out, "FAIL  {}: {}", case.name, mismatches.join("; "));
        }
    }
    let _ = writeln!(
        out,
        "\n{} passed, {failed} failed",
        tests.cases.len() - failed
    );
    Ok(failed == 0)
}

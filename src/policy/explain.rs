//! For the people who write policy: `vakt explain` (why one request is allowed or denied) and
//! `vakt test` (a file of cases kept next to the policy, checked in the service's CI). Both run
//! the same canonicalisation and [`evaluate`] as the sidecar.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use http::Method;
use serde::{Deserialize, Serialize};

use super::{Decision, Policy, PolicyContext, Reason, RequestCtx, TokenRequirement, evaluate};
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

/// One decision laid out for a reader: what was asked, how the path and route were found, every
/// condition of every rule with whether it held and why, and the outcome. `vakt explain`
/// prints it as text or JSON.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub request: ExplainedRequest,
    /// The path as the policy sees it; `None` when it was refused before matching.
    pub canonical_path: Option<String>,
    /// Why the path was refused before any route was looked at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_refused: Option<String>,
    pub route: Option<ExplainedRoute>,
    /// What the access token carries, as the sidecar reads it (no national id).
    pub token: Option<ExplainedToken>,
    /// The client binding of the token's issuer, where it binds clients to peers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binding: Option<Held>,
    pub rules: Vec<ExplainedRule>,
    pub decision: ExplainedDecision,
}

#[derive(Debug, Serialize)]
pub struct ExplainedRequest {
    pub method: String,
    pub path: String,
    pub host: Option<String>,
    pub peer: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ExplainedRoute {
    pub id: String,
    pub methods: Vec<String>,
    pub path: String,
    pub host: Option<String>,
    /// enforce or dry_run.
    pub mode: &'static str,
    pub public: bool,
    /// required, optional or none.
    pub token: &'static str,
    pub params: Vec<Param>,
    /// The peer is checked first: does any rule admit it (a public route admits every peer)?
    pub peer_admitted: bool,
}

/// A path parameter and the value the request gave it.
#[derive(Debug, Serialize)]
pub struct Param {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Serialize)]
pub struct ExplainedToken {
    pub issuer: String,
    pub client_id: Option<String>,
    pub loa: &'static str,
    pub scopes: Vec<String>,
    pub amr: Vec<String>,
    pub dpop_bound: bool,
}

/// A condition and whether it held, in words.
#[derive(Debug, Serialize)]
pub struct Held {
    /// What the policy asks (`min_loa high`).
    pub condition: String,
    pub held: bool,
    /// What the request had instead, or why it holds.
    pub why: String,
}

#[derive(Debug, Serialize)]
pub struct ExplainedRule {
    pub index: usize,
    pub holds: bool,
    /// The reason code this rule alone would deny with.
    pub reason: Option<&'static str>,
    pub conditions: Vec<Held>,
}

#[derive(Debug, Serialize)]
pub struct ExplainedDecision {
    /// allow, deny or would_deny (a dry-run route lets it through).
    pub outcome: &'static str,
    pub reason: &'static str,
    /// The HTTP status a denial is answered with (200 when it goes through).
    pub status: u16,
    /// The rule that allowed it.
    pub rule: Option<usize>,
}

fn list(items: &[String]) -> String {
    format!("[{}]", items.join(", "))
}

/// Each condition of `rule` with whether it held and why, for `principal` (the national id is
/// never shown: a binding says only whether the values agree).
fn conditions_of(
    rule: &super::Rule,
    route: &super::Route,
    ctx: &RequestCtx<'_>,
    principal: Option<&Principal>,
    captures: &super::router::Captures,
) -> Vec<Held> {
    use super::Condition;
    let mut out = Vec::new();
    let no_token = "no token".to_owned();
    let param_names: Vec<&str> = route.pattern.param_names().collect();
    rule.each_condition(ctx, principal, captures, |condition, held| {
        let p = principal;
        let (asked, why) = match condition {
            Condition::Peers(patterns) => {
                let listed: Vec<String> = patterns.iter().map(ToString::to_string).collect();
                let why = match ctx.peer {
                    None => "no peer identity (no client certificate)".to_owned(),
                    Some(peer) if held => format!("{peer} is one of them"),
                    Some(peer) => format!("{peer} is not one of them"),
                };
                (format!("peers {}", list(&listed)), why)
            }
            Condition::Issuers(issuers) => (
                format!("issuers {}", list(issuers)),
                p.map_or(no_token.clone(), |p| {
                    format!("the token is from {}", p.issuer)
                }),
            ),
            Condition::Clients(clients) => {
                let listed: Vec<String> = clients.iter().map(ToString::to_string).collect();
                let why = p.map_or(no_token.clone(), |p| match &p.client_id {
                    Some(c) => format!("the token's client is {{issuer: {}, id: {c}}}", p.issuer),
                    None => "the token names no client".to_owned(),
                });
                (format!("clients {}", list(&listed)), why)
            }
            Condition::ScopesAll(scopes) | Condition::ScopesAny(scopes) => {
                let which = if matches!(condition, Condition::ScopesAll(_)) {
                    "scopes_all"
                } else {
                    "scopes_any"
                };
                (
                    format!("{which} {}", list(scopes)),
                    p.map_or(no_token.clone(), |p| {
                        format!("the token's scopes are {}", list(&p.scopes))
                    }),
                )
            }
            Condition::MinLoa(min) => (
                format!("min_loa {}", min.as_str()),
                p.map_or(no_token.clone(), |p| {
                    format!("the login's level is {}", p.loa.as_str())
                }),
            ),
            Condition::MaxAuthAge(max) => (
                format!("max_auth_age {}", humantime::format_duration(max)),
                p.map_or(no_token.clone(), |p| match p.auth_time {
                    Some(t) => format!(
                        "the login was {} ago",
                        humantime::format_duration(std::time::Duration::from_secs(
                            (ctx.now - t).max(0) as u64
                        ))
                    ),
                    None => "the token has no auth_time".to_owned(),
                }),
            ),
            Condition::AmrAny(methods) => (
                format!("amr_any {}", list(methods)),
                p.map_or(no_token.clone(), |p| {
                    format!("the login used {}", list(&p.amr))
                }),
            ),
            Condition::Claim(name, want) => (
                format!(
                    "claim {name} {}",
                    match want {
                        super::ClaimMatch::Equals(v) => format!("= {v}"),
                        super::ClaimMatch::OneOf(vs) => format!(
                            "one of [{}]",
                            vs.iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    }
                ),
                p.map_or(no_token.clone(), |p| match p.claims.get(name) {
                    Some(v) => format!("the token's {name} is {v}"),
                    None => format!("the token has no {name}"),
                }),
            ),
            Condition::Bind(param, target) => {
                let name = param_names.get(param).copied().unwrap_or("?");
                let target = target.as_str();
                let why = match (p, held) {
                    (None, _) => no_token.clone(),
                    (Some(_), true) => format!("the path's {name} is the token's {target}"),
                    (Some(_), false) => {
                        format!("the path's {name} is not the token's {target}")
                    }
                };
                (format!("bind {name} = {target}"), why)
            }
        };
        out.push(Held {
            condition: asked,
            held,
            why,
        });
        std::ops::ControlFlow::Continue(())
    });
    out
}

/// The HTTP status the sidecar answers a policy denial with: a step-up denial (a token too weak
/// or too old, RFC 9470) is 401 with what to log in with; the rest as `DenyReason` says.
pub fn denial_status(reason: Reason, step_up: bool) -> u16 {
    if step_up {
        return 401;
    }
    crate::error::DenyReason::Policy(reason).status().as_u16()
}

/// Lay out how the sidecar decides `request` under `policy`.
pub fn explanation(policy: &Policy, request: &RequestSpec) -> Result<Explanation, String> {
    let verdict = decide(policy, request)?;
    let principal = request.principal();
    let mut explained = Explanation {
        request: ExplainedRequest {
            method: request.method.to_ascii_uppercase(),
            path: request.path.clone(),
            host: request.host.clone(),
            peer: request.peer.as_ref().map(ToString::to_string),
        },
        canonical_path: None,
        path_refused: None,
        route: None,
        token: principal.as_ref().map(|p| ExplainedToken {
            issuer: p.issuer.to_string(),
            client_id: p.client_id.as_deref().map(str::to_owned),
            loa: p.loa.as_str(),
            scopes: p.scopes.clone(),
            amr: p.amr.clone(),
            dpop_bound: p.dpop_jkt.is_some(),
        }),
        binding: None,
        rules: Vec::new(),
        decision: ExplainedDecision {
            outcome: verdict.outcome(),
            reason: verdict.reason(),
            status: 200,
            rule: None,
        },
    };
    let (canonical, decision) = match &verdict {
        Verdict::InvalidPath(e) => {
            explained.path_refused = Some(e.to_string());
            explained.decision.status = 400;
            return Ok(explained);
        }
        Verdict::Decided {
            canonical,
            decision,
        } => (canonical, decision),
    };
    explained.canonical_path = Some(canonical.to_string());
    explained.decision.rule = decision.rule;
    if !decision.allowed {
        explained.decision.status = denial_status(decision.reason, decision.step_up.is_some());
    }
    let Some(r) = decision.route else {
        return Ok(explained);
    };
    let route = &policy.routes[r];
    let ctx = RequestCtx {
        method: &Method::GET,
        host: None,
        path: canonical,
        peer: request.peer.as_ref(),
        principal: principal.as_ref(),
        now: unix_now(),
        upgrade: None,
    };
    let names = route.pattern.param_names().map(str::to_owned);
    explained.route = Some(ExplainedRoute {
        id: route.id.to_string(),
        methods: route
            .methods
            .iter()
            .map(|m| m.as_str().to_owned())
            .collect(),
        path: route.pattern.to_string(),
        host: route.host.as_deref().map(str::to_owned),
        mode: route.mode.as_str(),
        public: route.public,
        token: route.token.as_str(),
        params: names
            .zip(&decision.captures.params)
            .map(|(name, (_, range))| Param {
                name,
                value: canonical.as_str()[range.clone()].to_owned(),
            })
            .collect(),
        peer_admitted: route.peer_refusal(&ctx).is_none(),
    });
    // A route with `token: none` ignores tokens, as the sidecar does.
    let principal = principal
        .as_ref()
        .filter(|_| route.token != TokenRequirement::None);
    if let Some(p) = principal
        && let Some(bound) = policy.client_bindings.of_issuer(&p.issuer)
    {
        let check = policy.client_bindings.check(p, request.peer.as_ref());
        let condition = match p.client_id.as_deref() {
            None => format!("{} binds its clients to peers", p.issuer),
            Some(c) => match bound.get(c) {
                None => format!("client {{issuer: {}, id: {c}}} (not bound)", p.issuer),
                Some(peers) => format!(
                    "client {{issuer: {}, id: {c}}} only from {}",
                    p.issuer,
                    list(&peers.iter().map(ToString::to_string).collect::<Vec<_>>())
                ),
            },
        };
        explained.binding = Some(Held {
            condition,
            held: check.is_ok(),
            why: match check {
                Ok(()) => {
                    "the peer is one the client is bound to, or the client is not bound".into()
                }
                Err(reason) => reason.code().to_owned(),
            },
        });
    }
    for (index, rule) in route.rules.iter().enumerate() {
        let outcome = rule.check(&ctx, principal, &decision.captures);
        explained.rules.push(ExplainedRule {
            index,
            holds: outcome.is_ok(),
            reason: outcome.err().map(Reason::code),
            conditions: conditions_of(rule, route, &ctx, principal, &decision.captures),
        });
    }
    Ok(explained)
}

impl Explanation {
    /// The account as text for a terminal: one line per step and per condition.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let r = &self.request;
        let _ = writeln!(
            out,
            "request:   {} {}  host: {}  peer: {}",
            r.method,
            r.path,
            r.host.as_deref().unwrap_or("(any)"),
            r.peer.as_deref().unwrap_or("(none)")
        );
        if let Some(why) = &self.path_refused {
            let _ = writeln!(out, "path:      refused before matching: {why}");
        }
        if let Some(canonical) = &self.canonical_path {
            let _ = writeln!(out, "canonical: {canonical}");
        }
        match &self.route {
            None if self.path_refused.is_none() => {
                let _ = writeln!(out, "route:     none matches ({})", self.decision.reason);
            }
            None => {}
            Some(route) => {
                let _ = writeln!(
                    out,
                    "route:     {} ({} {}{}, mode {})",
                    route.id,
                    route.methods.join(","),
                    route.path,
                    route
                        .host
                        .as_ref()
                        .map_or(String::new(), |h| format!(" host {h}")),
                    route.mode
                );
                for param in &route.params {
                    let _ = writeln!(out, "  param:   {} = {}", param.name, param.value);
                }
                let peer = match (route.public, route.peer_admitted) {
                    (true, _) => "public route: every verified peer is admitted".to_owned(),
                    (false, true) => "admitted by a rule's peers".to_owned(),
                    (false, false) => format!(
                        "no rule admits it: refused before any token check ({})",
                        if r.peer.is_some() {
                            "peer_not_allowed"
                        } else {
                            "no_peer_identity"
                        }
                    ),
                };
                let _ = writeln!(out, "  peer:    {peer}");
                let token = match &self.token {
                    None => "none presented".to_owned(),
                    Some(t) => format!(
                        "from {}, client {}, level {}, scopes {}, amr {}{}",
                        t.issuer,
                        t.client_id.as_deref().unwrap_or("(none)"),
                        t.loa,
                        list(&t.scopes),
                        list(&t.amr),
                        if t.dpop_bound { ", DPoP-bound" } else { "" }
                    ),
                };
                let _ = writeln!(out, "  token:   {token} (the route: token {})", route.token);
                if let Some(b) = &self.binding {
                    let _ = writeln!(
                        out,
                        "  binding: {}: {} ({})",
                        b.condition,
                        if b.held { "held" } else { "did not hold" },
                        b.why
                    );
                }
                for rule in &self.rules {
                    let _ = writeln!(
                        out,
                        "  rule {}:  {}",
                        rule.index,
                        match rule.reason {
                            None => "HOLDS".to_owned(),
                            Some(reason) => format!("does not hold ({reason})"),
                        }
                    );
                    for c in &rule.conditions {
                        let _ = writeln!(
                            out,
                            "    {:<13} {}: {}",
                            if c.held { "held" } else { "did not hold" },
                            c.condition,
                            c.why
                        );
                    }
                }
            }
        }
        let _ = writeln!(
            out,
            "decision:  {} ({}){}",
            self.decision.outcome.to_ascii_uppercase(),
            self.decision.reason,
            match self.decision.outcome {
                "allow" => String::new(),
                "would_deny" => " — dry-run: it goes through".to_owned(),
                _ => format!(" — answered {}", self.decision.status),
            }
        );
        out
    }
}

/// [`explanation`] as text.
pub fn explain(policy: &Policy, request: &RequestSpec) -> Result<String, String> {
    explanation(policy, request).map(|e| e.text())
}

/// A policy test file (its JSON Schema: `docs/policy-test.schema.json`).
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
    pub cases: Vec<serde_saphyr::Spanned<TestCase>>,
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

/// What is wrong with a test file itself (not a failing case): the file, the policy it names,
/// or an expectation that could never be met (an unknown reason code, `decision: denied`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TestFileError(pub String);

/// The decision, reason and route of one request.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Observed {
    pub decision: String,
    pub reason: Option<String>,
    pub route: Option<String>,
}

/// One case's result.
#[derive(Debug, Serialize)]
pub struct CaseResult {
    pub name: String,
    /// Where the case starts in the test file.
    pub line: u64,
    pub passed: bool,
    pub expected: Observed,
    pub actual: Observed,
    /// For a failed case: what differs, in words.
    pub mismatches: Vec<String>,
    /// For a failed case: the explanation of the decision (route, rules, conditions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// The results of a test file.
#[derive(Debug, Serialize)]
pub struct TestReport {
    pub file: String,
    pub policy: String,
    pub cases: Vec<CaseResult>,
    /// Cases left out by `--run`.
    pub skipped: usize,
    /// Routes of the policy no case reached (by the route the decision matched).
    pub routes_not_covered: Vec<String>,
}

/// Every reason a decision of `vakt test` can give: the policy's, and `invalid_path`.
pub fn reason_codes() -> Vec<&'static str> {
    let mut codes: Vec<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
    codes.push("invalid_path");
    codes
}

/// Run the cases of `file` whose name contains `filter` (all without one).
pub fn run_tests(file: &Path, filter: Option<&str>) -> Result<TestReport, TestFileError> {
    let at = |line: u64| format!("{}:{line}", file.display());
    let text = std::fs::read_to_string(file)
        .map_err(|e| TestFileError(format!("cannot read {}: {e}", file.display())))?;
    let tests: TestFile = crate::serde_helpers::from_yaml(&text)
        .map_err(|e| TestFileError(format!("{}: {e}", file.display())))?;
    let policy_path = crate::watch::parent_dir(file).join(&tests.policy);
    let context = PolicyContext {
        trust_domains: tests.trust_domains.clone(),
        issuers: Some(tests.issuers.clone()),
        dpop_public_url: None,
    };
    let policy = Policy::from_file(&policy_path, &context)
        .map_err(|e| TestFileError(format!("the policy it tests is invalid:\n{}", e)))?;
    let codes = reason_codes();
    // Expectations that can never be met are mistakes in the file, reported before any case.
    for case in &tests.cases {
        let (c, line) = (&case.value, case.referenced.line());
        let e = &c.expect;
        if !["allow", "deny", "would_deny"].contains(&e.decision.as_str()) {
            return Err(TestFileError(format!(
                "{}: case \"{}\": expect.decision \"{}\" is not allow, deny or would_deny",
                at(line),
                c.name,
                e.decision
            )));
        }
        if let Some(reason) = &e.reason
            && !codes.contains(&reason.as_str())
        {
            return Err(TestFileError(format!(
                "{}: case \"{}\": expect.reason \"{reason}\" is not a reason vakt gives (one of: {})",
                at(line),
                c.name,
                codes.join(", ")
            )));
        }
        if let Some(route) = &e.route
            && route != "none"
            && !policy.routes.iter().any(|r| *r.id == **route)
        {
            return Err(TestFileError(format!(
                "{}: case \"{}\": expect.route \"{route}\" is not a route of {}",
                at(line),
                c.name,
                policy_path.display()
            )));
        }
    }
    let mut reached = std::collections::BTreeSet::new();
    let mut results = Vec::new();
    let mut skipped = 0;
    for case in &tests.cases {
        let (c, line) = (&case.value, case.referenced.line());
        if filter.is_some_and(|f| !c.name.contains(f)) {
            skipped += 1;
            continue;
        }
        let verdict = decide(&policy, &c.request)
            .map_err(|e| TestFileError(format!("{}: case \"{}\": {e}", at(line), c.name)))?;
        let route = verdict.route(&policy).map(str::to_owned);
        if let Some(r) = &route {
            reached.insert(r.clone());
        }
        let actual = Observed {
            decision: verdict.outcome().to_owned(),
            reason: Some(verdict.reason().to_owned()),
            route: route.clone(),
        };
        let expected = Observed {
            decision: c.expect.decision.clone(),
            reason: c.expect.reason.clone(),
            route: c.expect.route.clone(),
        };
        let mut mismatches = Vec::new();
        if actual.decision != expected.decision {
            mismatches.push(format!(
                "decision {} (expected {})",
                actual.decision, expected.decision
            ));
        }
        if let Some(want) = &expected.reason
            && actual.reason.as_deref() != Some(want.as_str())
        {
            mismatches.push(format!(
                "reason {} (expected {want})",
                actual.reason.as_deref().unwrap_or("none")
            ));
        }
        if let Some(want) = &expected.route
            && route.as_deref().unwrap_or("none") != want
        {
            mismatches.push(format!(
                "route {} (expected {want})",
                route.as_deref().unwrap_or("none")
            ));
        }
        let passed = mismatches.is_empty();
        let trace = (!passed)
            .then(|| explain(&policy, &c.request).ok())
            .flatten();
        results.push(CaseResult {
            name: c.name.clone(),
            line,
            passed,
            expected,
            actual,
            mismatches,
            trace,
        });
    }
    let routes_not_covered = if filter.is_some() {
        Vec::new()
    } else {
        policy
            .routes
            .iter()
            .map(|r| r.id.to_string())
            .filter(|id| !reached.contains(id))
            .collect()
    };
    Ok(TestReport {
        file: file.display().to_string(),
        policy: policy_path.display().to_string(),
        cases: results,
        skipped,
        routes_not_covered,
    })
}

impl TestReport {
    pub fn failed(&self) -> usize {
        self.cases.iter().filter(|c| !c.passed).count()
    }

    /// For a terminal: a line per case; a failed case with its place in the file, expected and
    /// actual decision and reason, and the decision's explanation.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for case in &self.cases {
            if case.passed {
                let _ = writeln!(out, "ok    {}", case.name);
                continue;
            }
            let _ = writeln!(
                out,
                "FAIL  {} ({}:{}): {}",
                case.name,
                self.file,
                case.line,
                case.mismatches.join("; ")
            );
            // What the case leaves out is "any"; what the decision has not is "none".
            let show = |o: &Observed, unset: &str| {
                format!(
                    "{} ({}), route {}",
                    o.decision,
                    o.reason.as_deref().unwrap_or("any reason"),
                    o.route.as_deref().unwrap_or(unset)
                )
            };
            let _ = writeln!(out, "      expected: {}", show(&case.expected, "any"));
            let _ = writeln!(out, "      actual:   {}", show(&case.actual, "none"));
            if let Some(trace) = &case.trace {
                for line in trace.lines() {
                    let _ = writeln!(out, "      | {line}");
                }
            }
        }
        let _ = writeln!(
            out,
            "\n{} passed, {} failed{}",
            self.cases.len() - self.failed(),
            self.failed(),
            if self.skipped > 0 {
                format!(", {} not run (--run)", self.skipped)
            } else {
                String::new()
            }
        );
        if !self.routes_not_covered.is_empty() {
            let _ = writeln!(
                out,
                "routes no case reached: {}",
                self.routes_not_covered.join(", ")
            );
        }
        out
    }

    /// JUnit XML, as CI systems read test results: one testsuite, a testcase per case, a
    /// failure with the expected and actual decision and the explanation.
    pub fn junit(&self) -> String {
        let esc = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
        };
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            out,
            "<testsuites><testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" skipped=\"{}\">",
            esc(&self.file),
            self.cases.len(),
            self.failed(),
            self.skipped
        );
        for case in &self.cases {
            let _ = write!(
                out,
                "  <testcase classname=\"{}\" name=\"{}\" file=\"{}\" line=\"{}\"",
                esc(&self.policy),
                esc(&case.name),
                esc(&self.file),
                case.line
            );
            if case.passed {
                out.push_str("/>\n");
                continue;
            }
            let _ = writeln!(
                out,
                "><failure message=\"{}\">{}</failure></testcase>",
                esc(&case.mismatches.join("; ")),
                esc(case.trace.as_deref().unwrap_or(""))
            );
        }
        if !self.routes_not_covered.is_empty() {
            let _ = writeln!(
                out,
                "  <system-out>routes no case reached: {}</system-out>",
                esc(&self.routes_not_covered.join(", "))
            );
        }
        out.push_str("</testsuite></testsuites>\n");
        out
    }
}

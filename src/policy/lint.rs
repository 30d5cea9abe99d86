//! Warnings for `vakt check`: a policy that is valid but probably not what its author meant.
//! Each has a stable code (for `--fail-on-warn` in CI and for looking it up in
//! docs/DECISIONS.md); errors are the policy's own (`PolicyError`).

use std::collections::BTreeSet;

use super::compile::Policy;
use super::file::{BindTarget, PolicyContext};
use super::overlap::overlap_warnings;

/// One warning: a stable code and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lint {
    pub code: &'static str,
    pub message: String,
}

/// Path parameter names that usually carry a person's identifier (national ids of the Nordic
/// countries and their usual abbreviations).
const PERSONAL_NAMES: &[&str] = &[
    "pid",
    "nin",
    "nnin",
    "fnr",
    "ssn",
    "personnummer",
    "fodselsnummer",
    "foedselsnummer",
    "national_id",
    "nationalid",
    "hetu",
    "cpr",
    "kennitala",
    "patient_id",
    "patientid",
];

fn looks_personal(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    PERSONAL_NAMES.contains(&lower.as_str())
}

/// Booleans spelt other than `true`/`false` in the policy's text (`True`, `FALSE`): YAML 1.2
/// reads them as booleans, other tools as strings; one spelling leaves no doubt. (`yes`, `on`,
/// `y` are refused when the file is read.)
pub fn text_lints(text: &str) -> Vec<Lint> {
    let mut lints = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split(" #").next().unwrap_or(line);
        let spelled = code
            .split([':', ',', '[', ']', '{', '}', '-'])
            .skip(1)
            .map(str::trim)
            .find(|v| ["True", "TRUE", "False", "FALSE"].contains(v));
        if let Some(value) = spelled {
            lints.push(Lint {
                code: "boolean-spelling",
                message: format!(
                    "line {}: {value}: write {}",
                    n + 1,
                    value.to_ascii_lowercase()
                ),
            });
        }
    }
    lints
}

/// Every warning for `policy`, checked with `context` (empty trust domains: not given).
pub fn lint(policy: &Policy, context: &PolicyContext) -> Vec<Lint> {
    let mut lints = Vec::new();
    for warning in overlap_warnings(policy) {
        lints.push(Lint {
            code: "route-overlap",
            message: warning.to_string(),
        });
    }
    let mut domains = BTreeSet::new();
    for (i, route) in policy.routes.iter().enumerate() {
        let at = format!("routes[{i}] ({})", route.id);
        for (j, rule) in route.rules.iter().enumerate() {
            for pattern in rule.peers.iter().flatten() {
                domains.insert(pattern.trust_domain().to_string());
                if pattern.admits_every_workload() && !route.public {
                    lints.push(Lint {
                        code: "peers-admit-everyone",
                        message: format!(
                            "{at}.allow[{j}]: peers {pattern} admits every workload of {}; name the callers, or say public: true if every workload is meant",
                            pattern.trust_domain()
                        ),
                    });
                }
            }
        }
        for (index, name) in route.pattern.param_names().enumerate() {
            let bound = route.rules.iter().any(|rule| {
                rule.bind.iter().any(|(p, target)| {
                    *p == index && matches!(target, BindTarget::NationalId | BindTarget::Subject)
                })
            });
            // Only where an end user's token is involved: a service acting on any person's
            // record is the service's job; a user reaching another person's is the risk.
            let end_user = route.token != super::file::TokenRequirement::None
                && route.rules.iter().any(|r| r.spec.has_token_conditions());
            if looks_personal(name) && !bound && !route.public && end_user {
                lints.push(Lint {
                    code: "unbound-personal-param",
                    message: format!(
                        "{at}: {{{name}}} looks like a personal identifier but no rule binds it to the user's token (bind: {{{name}: national_id}}): any admitted user may ask for any person's {name}"
                    ),
                });
            }
        }
    }
    if context.trust_domains.is_empty() && !domains.is_empty() {
        lints.push(Lint {
            code: "trust-domains-not-checked",
            message: format!(
                "the peers name trust domains {} that were not checked against the sidecar's; give --trust-domain (or check with --config) to catch a misspelt one",
                domains.into_iter().collect::<Vec<_>>().join(", ")
            ),
        });
    }
    lints
}

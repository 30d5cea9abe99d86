//! Per-route least-privilege policy: the file format, its validation, and the pure decision
//! function [`evaluate`].
//!
//! A policy is a list of routes (methods + path pattern + optional host). A request that matches
//! no route is denied. A route allows the request if any of its `allow` rules holds; a rule holds
//! when all of its conditions hold. A route with `public: true` allows every (mTLS-verified)
//! caller and has no rules. Each route runs in `enforce` or `dry-run` mode; dry-run lets the
//! request through but records that it would have been denied and why.

pub mod compile;
pub mod decide;
pub mod explain;
pub mod file;
pub mod lint;
pub mod overlap;
pub mod reload;
pub(crate) mod router;
pub mod stage;

pub use compile::{ClientBindings, ClientKey, Policy, PolicyError, Route, Rule};
pub use decide::{
    Condition, Decision, DecisionRecord, MatchedRoute, Outcome, Reason, RequestCtx, StepUp,
    evaluate,
};
pub use file::{
    BindTarget, ClaimMatch, ClientBindingSpec, ClientBindingsSpec, ClientRef, Mode, PeerPattern,
    PolicyContext, PolicyFile, RouteSpec, RuleSpec, TokenRequirement,
};
pub use lint::{Lint, lint, text_lints};
pub use overlap::{OverlapWarning, overlap_warnings};
pub use router::NearMiss;

#[cfg(test)]
mod tests;

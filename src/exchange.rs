//! What is known about one exchange, written down by the stages as they learn it (request and
//! trace ids, the path as it may be logged, the policy's decision, the principal) and read by
//! the outermost stage's audit guard. Because it is filled on the way in, an exchange that ends
//! before any response exists (the client reset the stream or closed the connection while the
//! app was working) is still recorded with who asked for what and what was decided.
//!
//! The outermost stage puts one `Arc<Exchange>` into each request's extensions; the body byte
//! counters live here too, so the exchange costs one allocation, as the two counters did.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::audit::fields::{Label, Text};
use crate::audit::target::redact_target;
use crate::authn::principal::Principal;
use crate::hygiene::path::CanonicalPath;
use crate::policy::decide::DecisionRecord;
use crate::stack::Req;

/// The request target as the audit event may hold it.
#[derive(Debug)]
pub enum Target {
    /// The canonical path the policy saw (personal parameters are pseudonymised when the event
    /// is built, from the matched route).
    Canonical(CanonicalPath),
    /// A target that could not be canonicalised, already redacted ([`redact_target`]).
    Redacted(Text),
}

/// What the stages have learnt about the request so far.
#[derive(Debug, Default)]
pub struct Known {
    /// The id a denial body names as `decision_id`: the audit event takes it as its own id.
    pub decision_id: Option<uuid::Uuid>,
    pub request_id: Option<Label>,
    pub trace_id: Option<Label>,
    pub target: Option<Target>,
    /// The last decision about the request (the rate-limit stage's replaces the policy's).
    pub record: Option<DecisionRecord>,
    pub principal: Option<Arc<Principal>>,
    /// Outbound: the egress entry the request was sent to.
    pub destination: Option<OutboundDestination>,
}

/// Where an outbound request was sent: the egress entry's authority (with the address the app
/// dialed, under transparent capture) and the SPIFFE ID its sidecar had to present.
#[derive(Debug, Clone)]
pub struct OutboundDestination {
    pub authority: Arc<str>,
    pub spiffe_id: Arc<str>,
}

/// One exchange, shared by the stages, the body counters and the audit guard.
#[derive(Debug, Default)]
pub struct Exchange {
    /// Request body bytes received from the client.
    pub bytes_in: AtomicU64,
    /// Response body bytes sent to the client.
    pub bytes_out: AtomicU64,
    /// The client's request body broke off (the client went away while sending it).
    request_aborted: AtomicBool,
    known: Mutex<Known>,
}

impl Exchange {
    /// Write down something learnt about the request.
    pub fn learn(&self, f: impl FnOnce(&mut Known)) {
        f(&mut self.known());
    }

    /// What has been learnt so far.
    pub fn known(&self) -> MutexGuard<'_, Known> {
        // Only plain assignments happen under the lock: a panic elsewhere cannot leave it half
        // written, so a poisoned lock is still good to read.
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_request_aborted(&self) {
        self.request_aborted.store(true, Ordering::Relaxed);
    }

    pub fn request_aborted(&self) -> bool {
        self.request_aborted.load(Ordering::Relaxed)
    }
}

/// The exchange `req` belongs to, when the outermost stage made one.
pub fn of(req: &Req) -> Option<&Arc<Exchange>> {
    req.extensions().get::<Arc<Exchange>>()
}

/// For a request vakt is about to refuse: keep its target. The canonical path, when the hygiene
/// stage made one, is moved out of the request (which is dropped with the refusal); otherwise
/// the raw path is redacted.
pub fn keep_target(req: &mut Req) {
    let Some(exchange) = of(req).cloned() else {
        return;
    };
    let target = match req.extensions_mut().remove::<CanonicalPath>() {
        Some(path) => Target::Canonical(path),
        None => Target::Redacted(redact_target(req.uri().path())),
    };
    exchange.learn(|k| k.target = Some(target));
}

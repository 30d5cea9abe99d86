//! Transparent capture: the app reaches the network only through vakt.
//!
//! `vakt net setup` installs nftables rules in the pod's network namespace ([`rules`]) that
//! redirect the app's TCP connections to the outbound listener. For each one, vakt reads where
//! it was going ([`original_destination`]) and finds that address in the egress table
//! ([`egress`]): a mesh destination is served as HTTP and sent on over mTLS, a passthrough one
//! is checked by its SNI and relayed ([`passthrough`]), anything else is refused and audited.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Deserialize;
use tokio::net::TcpStream;

use crate::audit::{AuditEvent, Auditor, Decision, Direction, Label, Outcome, Text};

pub mod egress;
pub mod passthrough;
pub mod rules;

pub use egress::{Captured, EgressEntry, EgressTable, EntryKind};

/// How the app's outbound connections reach vakt (`outbound.capture`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    /// The app sends HTTP to the outbound listener itself (`HTTP_PROXY`).
    #[default]
    Proxy,
    /// Every TCP connection of the app is redirected to the outbound listener in the kernel.
    Transparent,
}

/// The capture counters at zero (`metrics::register_at_zero`): connections by what they were
/// found to be, refusals by reason, failed lookups.
pub fn register_failure_series() {
    use crate::metrics as m;
    for destination in ["mesh", "passthrough", "direct", "refused"] {
        m::register_at_zero(m::CAPTURED_CONNECTIONS, &[("destination", destination)]);
    }
    let refusals = [
        passthrough::Refusal::NotTls,
        passthrough::Refusal::SniMissing,
        passthrough::Refusal::SniMismatch,
        passthrough::Refusal::HelloTimeout,
    ];
    for reason in refusals
        .iter()
        .map(|r| r.as_str())
        .chain([UNKNOWN_DESTINATION])
    {
        m::register_at_zero(
            m::DENIALS,
            &[("direction", m::OUTBOUND), ("reason", reason)],
        );
    }
    m::register_at_zero(m::EGRESS_DNS_FAILURES, &[]);
}

/// Where a redirected connection was going (`SO_ORIGINAL_DST`); `None` when it was not
/// redirected: the app dialed the listener itself, as with `HTTP_PROXY`.
pub fn original_destination(tcp: &TcpStream) -> Option<SocketAddr> {
    let original = socket2::SockRef::from(tcp)
        .original_dst_v4()
        .ok()?
        .as_socket()?;
    let local = tcp.local_addr().ok()?;
    (original != local).then_some(original)
}

/// The reason code of a connection to an address no egress entry has.
const UNKNOWN_DESTINATION: &str = "unknown_destination";

/// The audit event of a captured connection (outbound, no request).
fn egress_event(decision: Decision, reason: &'static str) -> AuditEvent {
    AuditEvent::new(
        Direction::Outbound,
        decision,
        Label::sanitized_static(reason),
    )
}

fn count_refusal(reason: &'static str) {
    metrics::counter!(crate::metrics::DENIALS, "direction" => crate::metrics::OUTBOUND, "reason" => reason)
        .increment(1);
    metrics::counter!(crate::metrics::CAPTURED_CONNECTIONS, "destination" => "refused")
        .increment(1);
}

/// A redirected connection to an address no egress entry has: closed at once, audited with
/// where it was going.
pub fn refuse_unknown(destination: SocketAddr, auditor: &Arc<Auditor>) {
    const REASON: &str = UNKNOWN_DESTINATION;
    count_refusal(REASON);
    tracing::info!(%destination, "connection refused: the destination is not in the egress table");
    let mut event = egress_event(Decision::Refused, REASON);
    event.destination = Some(Text::sanitized(&destination.to_string()));
    event.outcome = Some(Outcome::Refused);
    auditor.record(event);
}

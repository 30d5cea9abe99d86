//! The outermost stage: every request is counted and timed here, whoever answered it (the app,
//! or vakt with a denial). Later the audit record is emitted from the same place.

use std::time::Instant;

use crate::Direction;
use crate::error::DenyReason;
use crate::metrics as m;
use crate::policy::stage::DecisionRecord;
use crate::stack::{Next, Req, Resp, Stage};

pub struct Observe {
    direction: Direction,
}

impl Observe {
    pub fn new(direction: Direction) -> Self {
        Self { direction }
    }
}

impl Stage for Observe {
    async fn handle(&self, req: Req, next: Next) -> Resp {
        let started = Instant::now();
        let method = req.method().clone();
        let response = next.run(req).await;
        let direction = self.direction.as_str();
        let status = response.status();
        metrics::counter!(m::REQUESTS, "direction" => direction, "status_class" => m::status_class(status))
            .increment(1);
        metrics::histogram!(m::REQUEST_DURATION, "direction" => direction)
            .record(started.elapsed().as_secs_f64());
        if let Some(record) = response.extensions().get::<DecisionRecord>() {
            let route = record.route_id.as_deref().unwrap_or("none").to_owned();
            metrics::counter!(m::POLICY_DECISIONS, "route" => route, "decision" => record.outcome.as_str(), "reason" => record.reason)
                .increment(1);
        }
        if let Some(reason) = response.extensions().get::<DenyReason>() {
            metrics::counter!(m::DENIALS, "direction" => direction, "reason" => reason.code())
                .increment(1);
            tracing::info!(
                direction,
                %method,
                status = status.as_u16(),
                reason = reason.code(),
                "request refused by vakt"
            );
        }
        response
    }
}

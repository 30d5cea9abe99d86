//! The innermost services: hand the request to the app (inbound) or to the destination's sidecar
//! over mTLS (outbound). Hop-by-hop headers are removed both ways; protocol upgrades (WebSocket)
//! are tunnelled byte for byte once both sides agreed on `101 Switching Protocols`, and closed
//! when idle for `limits.tunnel_idle_timeout`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::HOST;
use http::{HeaderValue, Method, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_util::task::TaskTracker;

use crate::body;
use crate::capture::Captured;
use crate::error::DenyReason;
use crate::hygiene::{self, RequestIds};
use crate::stack::{Req, Resp};
use crate::tunnel;
use crate::upstream::Authority;
use crate::upstream::{AppClient, MeshClient};

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Resp, Infallible>> + Send>>;

/// What the tunnel of an upgraded connection needs: where it runs, and when it is idle.
#[derive(Clone)]
pub struct Tunnels {
    pub tracker: TaskTracker,
    pub idle_timeout: Duration,
    /// The metrics label of this side's tunnels.
    pub direction: &'static str,
}

/// Strip hop-by-hop headers, send, and wire up an upgrade if the upstream accepted one.
async fn proxy<F, Fut>(mut req: Req, tunnels: Tunnels, send: F) -> Resp
where
    F: FnOnce(Req, bool) -> Fut,
    Fut: Future<Output = Result<Response<Incoming>, DenyReason>>,
{
    // Taken off the request (the client below does not read extensions): only a refusal uses them.
    let ids = req.extensions_mut().remove::<RequestIds>();
    let upgrade = hygiene::is_upgrade_request(&req);
    let client_side = upgrade.then(|| hyper::upgrade::on(&mut req));
    hygiene::strip_hop_by_hop(req.headers_mut(), upgrade);
    hygiene::mark_never_indexed(req.headers_mut());
    let mut response = match send(req, upgrade).await {
        Ok(response) => response,
        Err(reason) => return reason.into_response(ids.as_ref()),
    };
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    match (switching, client_side) {
        (true, Some(client_side)) => {
            let upstream_side = hyper::upgrade::on(&mut response);
            let Tunnels {
                tracker,
                idle_timeout,
                direction,
            } = tunnels;
            tracker.spawn(async move {
                match tokio::try_join!(client_side, upstream_side) {
                    Ok((client, upstream)) => {
                        tunnel::relay(
                            TokioIo::new(client),
                            TokioIo::new(upstream),
                            idle_timeout,
                            direction,
                        )
                        .await;
                    }
                    Err(error) => tracing::debug!(%error, "protocol upgrade failed"),
                }
            });
        }
        // A 101 nobody asked for cannot be relayed.
        (true, None) => return DenyReason::UpstreamUnavailable.into_response(ids.as_ref()),
        (false, _) => {}
    }
    hygiene::strip_hop_by_hop(response.headers_mut(), switching);
    response.map(body::boxed)
}

/// Inbound: to the local app over the pooled plaintext client.
#[derive(Clone)]
pub struct ToApp {
    // Shared, not cloned per request: a pooled client is several reference-counted parts.
    client: Arc<AppClient>,
    tunnels: Tunnels,
}

impl ToApp {
    pub fn new(client: AppClient, tunnels: Tunnels) -> Self {
        Self {
            client: Arc::new(client),
            tunnels,
        }
    }
}

impl tower::Service<Req> for ToApp {
    type Response = Resp;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            // HTTP/2 carries the host in :authority; the app (HTTP/1.1) needs a Host header.
            if !req.headers().contains_key(HOST)
                && let Some(value) = req
                    .uri()
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                req.headers_mut().insert(HOST, value);
            }
            let client = this.client;
            Ok(proxy(req, this.tunnels, move |req, _upgrade| async move {
                client.send(req).await
            })
            .await)
        })
    }
}

/// Outbound: look the destination up in the egress table and send it over mTLS.
#[derive(Clone)]
pub struct ToMesh {
    client: Arc<MeshClient>,
    tunnels: Tunnels,
}

impl ToMesh {
    pub fn new(client: MeshClient, tunnels: Tunnels) -> Self {
        Self {
            client: Arc::new(client),
            tunnels,
        }
    }

    /// The destination the app asked for: absolute-form URI (HTTP proxy), else the Host header;
    /// with the `Host` value to add when the request has none (absolute-form without `Host`).
    fn destination(req: &Req) -> Result<(Authority, Option<HeaderValue>), DenyReason> {
        if req.method() == Method::CONNECT {
            return Err(DenyReason::ConnectNotSupported);
        }
        let default_port = if req.uri().scheme_str() == Some("https") {
            443
        } else {
            80
        };
        let host_header = req.headers().get(HOST);
        let raw = match req.uri().authority() {
            Some(a) => a.as_str(),
            None => host_header
                .and_then(|h| h.to_str().ok())
                .ok_or(DenyReason::MissingDestination)?,
        };
        let authority =
            Authority::parse(raw, default_port).ok_or(DenyReason::MissingDestination)?;
        let missing_host = match host_header {
            Some(_) => None,
            None => Some(HeaderValue::from_str(raw).map_err(|_| DenyReason::MissingDestination)?),
        };
        Ok((authority, missing_host))
    }

    /// The destination of a request on a connection found by transparent capture: the mesh
    /// entry of the address the app dialed. Where several entries share that address, the one
    /// the request's authority (or `Host`) names.
    fn captured_destination(req: &Req, captured: &Captured) -> Result<Authority, DenyReason> {
        if req.method() == Method::CONNECT {
            return Err(DenyReason::ConnectNotSupported);
        }
        let mut candidates = captured.mesh();
        if let (Some(only), None) = (candidates.next(), candidates.next()) {
            return Ok(only.authority.clone());
        }
        let port = captured.destination.port();
        let named = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()))
            .and_then(|raw| Authority::parse(raw, port));
        match named {
            Some(named) if captured.mesh().any(|e| e.authority == named) => Ok(named),
            named => Err(DenyReason::UnknownDestination {
                authority: named
                    .map_or_else(|| captured.destination.to_string(), |n| n.to_string()),
            }),
        }
    }
}

impl tower::Service<Req> for ToMesh {
    type Response = Resp;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let checked = match req.extensions().get::<Captured>() {
                Some(captured) => Self::captured_destination(&req, captured).map(|a| (a, None)),
                None => Self::destination(&req),
            };
            let checked = checked.and_then(|(authority, host)| {
                if this.client.knows(&authority) {
                    Ok((authority, host))
                } else {
                    Err(DenyReason::UnknownDestination {
                        authority: authority.to_string(),
                    })
                }
            });
            let (authority, host) = match checked {
                Ok(found) => found,
                Err(reason) => {
                    return Ok(reason.into_response(req.extensions().get::<RequestIds>()));
                }
            };
            if let Some(exchange) = crate::exchange::of(&req) {
                let label = req
                    .extensions()
                    .get::<Captured>()
                    .map(|c| c.audit_label(&authority));
                let destination = this.client.audited(&authority, label);
                exchange.learn(|k| k.destination = destination);
            }
            if let Some(host) = host {
                req.headers_mut().insert(HOST, host);
            }
            let client = this.client;
            Ok(proxy(req, this.tunnels, move |req, upgrade| async move {
                client.send(&authority, req, upgrade).await
            })
            .await)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::capture::{EgressEntry, EntryKind};

    fn captured(authorities: &[&str]) -> Captured {
        Captured::new(
            "10.0.3.7:8080".parse().unwrap(),
            authorities
                .iter()
                .map(|a| EgressEntry {
                    authority: Authority::parse(a, 80).unwrap(),
                    kind: EntryKind::Mesh,
                })
                .collect::<Arc<[_]>>(),
        )
    }

    fn request(host: Option<&str>) -> Req {
        let mut builder = http::Request::builder().uri("/journal");
        if let Some(host) = host {
            builder = builder.header(HOST, host);
        }
        builder.body(body::empty()).unwrap()
    }

    #[test]
    fn a_captured_connection_goes_to_the_entry_of_the_address_dialed() {
        let one = captured(&["billing.svc:8080"]);
        let two = captured(&["billing.svc:8080", "ledger.svc:8080"]);
        let cases: &[(&Captured, Option<&str>, Result<&str, &str>)] = &[
            // One entry at that address: its entry, whatever Host says (or without one).
            (&one, Some("billing.svc:8080"), Ok("billing.svc:8080")),
            (&one, Some("other.example"), Ok("billing.svc:8080")),
            (&one, Some("10.0.3.7:8080"), Ok("billing.svc:8080")),
            (&one, None, Ok("billing.svc:8080")),
            // Several: Host picks among them (its port defaults to the port dialed)...
            (&two, Some("ledger.svc"), Ok("ledger.svc:8080")),
            (&two, Some("Billing.SVC:8080"), Ok("billing.svc:8080")),
            // ...and names none of them: refused, naming what was asked for.
            (&two, Some("other.example"), Err("other.example:8080")),
            (&two, None, Err("10.0.3.7:8080")),
        ];
        for (captured, host, want) in cases {
            let got = ToMesh::captured_destination(&request(*host), captured);
            match (got, want) {
                (Ok(a), Ok(w)) => assert_eq!(a.as_str(), *w, "{host:?}"),
                (Err(DenyReason::UnknownDestination { authority }), Err(w)) => {
                    assert_eq!(authority, *w, "{host:?}");
                }
                (got, want) => panic!("{host:?}: got {got:?}, want {want:?}"),
            }
        }
        let connect = http::Request::builder()
            .method(Method::CONNECT)
            .uri("billing.svc:8080")
            .body(body::empty())
            .unwrap();
        assert!(matches!(
            ToMesh::captured_destination(&connect, &one),
            Err(DenyReason::ConnectNotSupported)
        ));
    }
}

//! The order of the layers, in one place, with the reason for each position.
//!
//! Every stage is a small struct implementing [`Stage`]: it looks at the request, either answers
//! itself (a denial, as a response carrying its reason in the extensions) or
//! passes it on with [`Next::run`]. [`StageLayer`] makes any stage a `tower::Layer`, so the stacks
//! below are ordinary `tower::ServiceBuilder` chains. Layers never return errors.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service, ServiceBuilder};

use crate::body::ProxyBody;

pub type Req = Request<ProxyBody>;
pub type Resp = Response<ProxyBody>;
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Resp, Infallible>> + Send>>;

/// One step of the request path.
pub trait Stage: Send + Sync + 'static {
    fn handle(&self, req: Req, next: Next) -> impl Future<Output = Resp> + Send;
}

/// The rest of the stack after the current stage.
pub struct Next {
    inner: Arc<dyn Callable>,
}

impl Next {
    pub fn run(self, req: Req) -> impl Future<Output = Resp> + Send + 'static {
        let response = self.inner.call(req);
        async move {
            match response.await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        }
    }
}

/// What a stage can wrap: an always-ready, shareable service whose future is already boxed.
pub trait StageInner:
    Service<Req, Response = Resp, Error = Infallible, Future = ResponseFuture>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> StageInner for S where
    S: Service<Req, Response = Resp, Error = Infallible, Future = ResponseFuture>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// A service called through a shared reference. Every service in vakt's stacks is always
/// ready (they apply no backpressure of their own), so `call` without `poll_ready` is sound.
/// Stages hold the rest of the stack as `Arc<dyn Callable>`: a request costs one reference
/// count and one boxed future per stage, not a clone of every boxed layer below it.
trait Callable: Send + Sync + 'static {
    fn call(&self, req: Req) -> ResponseFuture;
}

struct Shared<S>(S);

impl<S> Callable for Shared<S>
where
    S: StageInner,
{
    fn call(&self, req: Req) -> ResponseFuture {
        self.0.clone().call(req)
    }
}

/// Turns a [`Stage`] into a `tower::Layer`; the layered service is a [`BoxStack`] (so there is
/// one `Service` impl, and the listener holds the outermost stage as it is).
pub struct StageLayer<T>(Arc<T>);

impl<T> StageLayer<T> {
    pub fn new(stage: T) -> Self {
        Self(Arc::new(stage))
    }
}

impl<T, S> Layer<S> for StageLayer<T>
where
    T: Stage,
    S: StageInner,
{
    type Service = BoxStack;
    fn layer(&self, inner: S) -> Self::Service {
        BoxStack(Arc::new(StageService {
            stage: self.0.clone(),
            inner: Arc::new(Shared(inner)),
        }))
    }
}

/// A stage and the rest of the stack below it.
struct StageService<T> {
    stage: Arc<T>,
    inner: Arc<dyn Callable>,
}

impl<T: Stage> Callable for StageService<T> {
    fn call(&self, req: Req) -> ResponseFuture {
        let stage = self.stage.clone();
        let next = Next {
            inner: self.inner.clone(),
        };
        Box::pin(async move { Ok(stage.handle(req, next).await) })
    }
}

/// A whole stack behind one shared pointer, as the listeners hold it: cloning is a reference
/// count, and [`BoxStack::call_shared`] calls it without a clone (stacks are always ready).
#[derive(Clone)]
pub struct BoxStack(Arc<dyn Callable>);

impl BoxStack {
    /// Any always-ready service; its future is boxed.
    pub fn new<S>(service: S) -> Self
    where
        S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        Self(Arc::new(Boxing(service)))
    }

    pub fn call_shared(&self, req: Req) -> ResponseFuture {
        self.0.call(req)
    }
}

impl Service<Req> for BoxStack {
    type Response = Resp;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.0.call(req)
    }
}

struct Boxing<S>(S);

impl<S> Callable for Boxing<S>
where
    S: Service<Req, Response = Resp, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    fn call(&self, req: Req) -> ResponseFuture {
        Box::pin(self.0.clone().call(req))
    }
}

/// Inbound: requests from other workloads (already mTLS-authenticated at the handshake; the
/// peer's `PeerIdentity` is in the extensions) to the local app.
///
/// The composition root (`app.rs`) passes the concrete stages; the in-process benchmark puts an
/// app service in place of `forward`, so the same stack is measured without sockets.
pub fn inbound<O, H, A, P, R, F>(
    observe: O,
    hygiene: H,
    authenticate: A,
    policy: P,
    rate_limit: R,
    forward: F,
) -> BoxStack
where
    O: Stage,
    H: Stage,
    A: Stage,
    P: Stage,
    R: Stage,
    F: StageInner,
{
    let stack = ServiceBuilder::new()
        // Outermost: counts and times every request and decision, whoever answered it, and
        // emits its audit event.
        .layer(StageLayer::new(observe))
        // Before any decision: refuse ambiguous framing and paths, canonicalise the path the
        // policy will see (and the app will get), drop spoofable identity headers, set request
        // id / traceparent / x-forwarded-client-cert from what we verified.
        .layer(StageLayer::new(hygiene))
        // A presented token is verified (or refused with 401) before any decision, so the
        // policy only ever sees a verified principal.
        .layer(StageLayer::new(authenticate))
        // Deny by default: the route table and its rules (dry-run routes pass, recorded).
        .layer(StageLayer::new(policy))
        // Only for requests the policy let through, so denied floods do not eat the budget.
        .layer(StageLayer::new(rate_limit))
        // Innermost: the pooled client to the app.
        .service(forward);
    // The outermost layer already is a `BoxStack`.
    stack
}

/// Outbound: plaintext requests from the local app to other services over mTLS.
pub fn outbound<O, H, F>(observe: O, hygiene: H, forward: F) -> BoxStack
where
    O: Stage,
    H: Stage,
    F: StageInner,
{
    let stack = ServiceBuilder::new()
        // Outermost: counts and times every request, whoever answered it.
        .layer(StageLayer::new(observe))
        // Framing checks and request id before the egress decision.
        .layer(StageLayer::new(hygiene))
        // The egress table lookup and the mTLS client; an unknown destination is refused there.
        .service(forward);
    // The outermost layer already is a `BoxStack`.
    stack
}

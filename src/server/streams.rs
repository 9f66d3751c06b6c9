//! The cap on the streams of the services beside PrintJobService (gRPC health and server
//! reflection), per listener. A health `Watch` or a reflection stream may stay open as long as
//! its client likes, and any stream may send its headers and never its message: without a cap, a
//! client could hold any number of them. Each stream takes a permit when its headers arrive and
//! gives it back when its response ends; beyond the cap, a stream is answered RESOURCE_EXHAUSTED
//! at once. A request message (or the end of a client stream) must also arrive within
//! [`REQUEST_WAIT`].

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};
use tonic::{Status, body::Body, server::NamedService};
use tower::Service;

use crate::metrics::{Listener, Metrics};

/// How many health and reflection streams one listener serves at once. Kubernetes probes and
/// load balancers use a few; grpcurl one at a time.
pub const MAX_SERVICE_STREAMS: usize = 64;
/// How long a health or reflection stream may take to send its request (a message, and for a
/// client stream its end): they are sent with the headers by every real client.
const REQUEST_WAIT: Duration = Duration::from_secs(10);

/// The permits of one listener's service streams. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct StreamCap {
    permits: Arc<Semaphore>,
    metrics: Metrics,
    listener: Listener,
}

/// A service behind a [`StreamCap`].
#[derive(Debug, Clone)]
pub(crate) struct Capped<S> {
    inner: S,
    cap: StreamCap,
}

/// The response of a capped stream: ready at once when refused.
pub(crate) enum CappedFuture<F> {
    Refused(Option<http::Response<Body>>),
    Admitted(F, Option<OwnedSemaphorePermit>),
}

/// A request body that must end by a deadline.
struct DeadlineBody {
    inner: Body,
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

/// A response body that holds its stream's permit until it ends.
struct PermitBody {
    inner: Body,
    _permit: OwnedSemaphorePermit,
}

// === impl StreamCap ===

impl StreamCap {
    /// Room for [`MAX_SERVICE_STREAMS`] streams on `listener`.
    pub(crate) fn new(metrics: Metrics, listener: Listener) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(MAX_SERVICE_STREAMS)),
            metrics,
            listener,
        }
    }

    /// Puts `inner` behind this cap.
    pub(crate) fn wrap<S>(&self, inner: S) -> Capped<S> {
        Capped {
            inner,
            cap: self.clone(),
        }
    }
}

// === impl Capped ===

impl<S: NamedService> NamedService for Capped<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Capped<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = CappedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let Ok(permit) = self.cap.permits.clone().try_acquire_owned() else {
            self.cap.metrics.stream_refused(self.cap.listener);
            let status = Status::resource_exhausted(format!(
                "this listener serves at most {MAX_SERVICE_STREAMS} health and reflection streams at once"
            ));
            return CappedFuture::Refused(Some(status.into_http()));
        };
        let request = request.map(|body| {
            Body::new(DeadlineBody {
                inner: body,
                deadline: Instant::now() + REQUEST_WAIT,
                timer: None,
            })
        });
        CappedFuture::Admitted(self.inner.call(request), Some(permit))
    }
}

// === impl CappedFuture ===

impl<F> Future for CappedFuture<F>
where
    F: Future<Output = Result<http::Response<Body>, Infallible>> + Unpin,
{
    type Output = Result<http::Response<Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut *self {
            Self::Refused(response) => Poll::Ready(Ok(response
                .take()
                .expect("a refused stream's future is not polled after it completed"))),
            Self::Admitted(future, permit) => {
                let Ok(response) = ready!(Pin::new(future).poll(cx));
                let permit = permit
                    .take()
                    .expect("an admitted stream's future is not polled after it completed");
                Poll::Ready(Ok(response.map(|body| {
                    Body::new(PermitBody {
                        inner: body,
                        _permit: permit,
                    })
                })))
            }
        }
    }
}

// === impl DeadlineBody ===

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                let deadline = this.deadline;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Some(Err(Status::deadline_exceeded(format!(
                    "the request did not arrive within {REQUEST_WAIT:?} of its headers"
                )))))
            }
            ready => ready,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === impl PermitBody ===

impl HttpBody for PermitBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

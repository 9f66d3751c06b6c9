//! The caps on the streams of the services beside PrintJobService (gRPC health and server
//! reflection). A health `Watch` or a reflection stream may stay open as long as its client
//! likes, and any stream may send its headers and never its message: without a cap, a client
//! could hold any number of them. So `Watch` streams and reflection streams each have a cap per
//! listener ([`MAX_SERVICE_STREAMS`]) and per connection ([`PER_CONNECTION`]); a unary health
//! `Check`, which probes depend on, has only a cap per connection, so that no other client's
//! streams can take its place. Each stream is counted when its headers arrive until its response
//! ends; beyond a cap, a stream is answered RESOURCE_EXHAUSTED at once. A request message (or the
//! end of a client stream) must also arrive within [`REQUEST_WAIT`].

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};
use tonic::{Status, body::Body, server::NamedService};
use tower::Service;

use super::conn::ConnectionLoad;
use super::{Listener, ServerMetrics};

/// How many health `Watch` streams, and how many reflection streams, one listener serves at
/// once. Clients that watch health hold one per connection; grpcurl uses reflection one stream
/// at a time.
pub const MAX_SERVICE_STREAMS: usize = 64;
/// How many streams of each kind (`Watch`, reflection, `Check`) one connection may have open at
/// once. Bounds what header-only `Check` streams hold: a few per connection.
pub const PER_CONNECTION: usize = 4;
/// How long a health or reflection stream may take to send its request (a message, and for a
/// client stream its end): they are sent with the headers by every real client.
const REQUEST_WAIT: Duration = Duration::from_secs(10);

/// The permits of one listener's service streams. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct StreamCap {
    watches: Arc<Semaphore>,
    reflections: Arc<Semaphore>,
    /// The listener's count of streams refused.
    refused: Counter,
}

/// The kinds of service streams, each capped on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A unary health `Check`.
    Check,
    /// A health `Watch`, which may stay open for ever.
    Watch,
    /// A server reflection stream.
    Reflection,
}

/// A stream counted in its connection's streams of its kind until dropped.
struct ConnectionCount {
    load: Arc<ConnectionLoad>,
    kind: Kind,
}

/// What a service stream holds while it is open.
pub(crate) struct Held {
    _listener: Option<OwnedSemaphorePermit>,
    _connection: Option<ConnectionCount>,
}

/// A service behind a [`StreamCap`].
#[derive(Debug, Clone)]
pub(crate) struct Capped<S> {
    inner: S,
    cap: StreamCap,
}

/// The response of a request that a layer (the stream caps, admission) refused at once, or let
/// through holding `T` (its stream's permits, its call's count) until the response body ends.
pub(crate) enum HoldingResponse<F, T> {
    /// Refused: the answer, ready at once.
    Refused(Option<http::Response<Body>>),
    /// Let through: the inner service's response, whose body holds `T` when there is one.
    Admitted(F, Option<T>),
}

/// A request body that must end by a deadline.
struct DeadlineBody {
    inner: Body,
    deadline: Instant,
    timer: WaitTimer,
}

/// A response body that holds something (its stream's permits, its call's count, its
/// connection's count of open streams) until it ends.
pub(crate) struct HoldingBody<B, T> {
    inner: B,
    _held: T,
}

/// The timer of a request body that must bring its frames by some instant: started only when the
/// body first has to wait, so that a message that arrives with its headers costs no timer; with
/// the instant it was set for.
#[derive(Default)]
pub(crate) struct WaitTimer(Option<(Pin<Box<Sleep>>, Instant)>);

// === impl StreamCap ===

impl StreamCap {
    /// Room for [`MAX_SERVICE_STREAMS`] `Watch` and as many reflection streams on `listener`.
    pub(crate) fn new(metrics: &ServerMetrics, listener: Listener) -> Self {
        Self {
            watches: Arc::new(Semaphore::new(MAX_SERVICE_STREAMS)),
            reflections: Arc::new(Semaphore::new(MAX_SERVICE_STREAMS)),
            refused: metrics.streams_refused(listener),
        }
    }

    /// Counts a stream of `kind` on the listener and on its connection, or says which cap it is
    /// over.
    fn hold(&self, kind: Kind, load: Option<&Arc<ConnectionLoad>>) -> Result<Held, String> {
        let connection = match load {
            Some(load) => {
                let count = ConnectionCount {
                    load: load.clone(),
                    kind,
                };
                if count.counter().fetch_add(1, Ordering::AcqRel) >= PER_CONNECTION {
                    return Err(format!(
                        "a connection may have at most {PER_CONNECTION} {} streams open at once",
                        kind.name()
                    ));
                }
                Some(count)
            }
            None => None,
        };
        let listener = match kind {
            Kind::Check => None,
            Kind::Watch => Some(&self.watches),
            Kind::Reflection => Some(&self.reflections),
        };
        let listener = match listener.map(|permits| permits.clone().try_acquire_owned()) {
            None => None,
            Some(Ok(permit)) => Some(permit),
            Some(Err(_)) => {
                return Err(format!(
                    "this listener serves at most {MAX_SERVICE_STREAMS} {} streams at once",
                    kind.name()
                ));
            }
        };
        Ok(Held {
            _listener: listener,
            _connection: connection,
        })
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
    type Future = HoldingResponse<S::Future, Held>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let kind = Kind::of(request.uri().path());
        let load = request.extensions().get::<Arc<ConnectionLoad>>();
        let held = match self.cap.hold(kind, load) {
            Ok(held) => held,
            Err(message) => {
                self.cap.refused.inc();
                return HoldingResponse::Refused(Some(
                    Status::resource_exhausted(message).into_http(),
                ));
            }
        };
        let request = request.map(|body| {
            Body::new(DeadlineBody {
                inner: body,
                deadline: Instant::now() + REQUEST_WAIT,
                timer: WaitTimer::default(),
            })
        });
        HoldingResponse::Admitted(self.inner.call(request), Some(held))
    }
}

// === impl Kind ===

impl Kind {
    /// The kind of the stream to `path`, on a service this cap is in front of.
    fn of(path: &str) -> Self {
        match path {
            "/grpc.health.v1.Health/Check" => Self::Check,
            "/grpc.health.v1.Health/Watch" => Self::Watch,
            _ => Self::Reflection,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Check => "health Check",
            Self::Watch => "health Watch",
            Self::Reflection => "reflection",
        }
    }
}

// === impl ConnectionCount ===

impl ConnectionCount {
    fn counter(&self) -> &AtomicUsize {
        match self.kind {
            Kind::Check => &self.load.checks,
            Kind::Watch => &self.load.watches,
            Kind::Reflection => &self.load.reflections,
        }
    }
}

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.counter().fetch_sub(1, Ordering::AcqRel);
    }
}

// === impl HoldingResponse ===

impl<F, T> Future for HoldingResponse<F, T>
where
    F: Future<Output = Result<http::Response<Body>, Infallible>> + Unpin,
    T: Send + Unpin + 'static,
{
    type Output = Result<http::Response<Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut *self {
            Self::Refused(response) => Poll::Ready(Ok(response
                .take()
                .expect("a refused request's future is not polled after it completed"))),
            Self::Admitted(future, held) => {
                let Ok(response) = ready!(Pin::new(future).poll(cx));
                Poll::Ready(Ok(match held.take() {
                    Some(held) => HoldingBody::hold(response, held).map(Body::new),
                    None => response,
                }))
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
                ready!(this.timer.poll_until(cx, this.deadline));
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

// === impl HoldingBody ===

impl<B, T> HoldingBody<B, T> {
    /// `response`, its body holding `held` until it ends.
    pub(crate) fn hold(response: http::Response<B>, held: T) -> http::Response<Self> {
        response.map(|inner| Self { inner, _held: held })
    }
}

impl<B: HttpBody + Unpin, T: Unpin> HttpBody for HoldingBody<B, T> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === impl WaitTimer ===

impl WaitTimer {
    /// Ready once `due` has passed; until then, `cx` is woken at `due` (which may move).
    pub(crate) fn poll_until(&mut self, cx: &mut Context<'_>, due: Instant) -> Poll<()> {
        let (timer, set_for) = self
            .0
            .get_or_insert_with(|| (Box::pin(tokio::time::sleep_until(due)), due));
        if *set_for != due {
            timer.as_mut().reset(due);
            *set_for = due;
        }
        timer.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_request_that_does_not_come_ends_deadline_exceeded_at_the_request_wait() {
        let started = Instant::now();
        let silent =
            StreamBody::new(futures_util::stream::pending::<Result<Frame<Bytes>, Status>>());
        let mut body = DeadlineBody {
            inner: Body::new(silent),
            deadline: started + REQUEST_WAIT,
            timer: WaitTimer::default(),
        };
        let ended = body.frame().await.expect("the body ends with an error");
        let status = ended.expect_err("a request that does not come is an error");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
        let waited = started.elapsed();
        assert!(
            (REQUEST_WAIT..REQUEST_WAIT + Duration::from_secs(1)).contains(&waited),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_timer_fires_when_its_due_instant_has_passed_as_it_moves() {
        let started = Instant::now();
        let (sooner, later) = (
            started + Duration::from_secs(1),
            started + Duration::from_secs(5),
        );
        let mut timer = WaitTimer::default();
        let set_for_sooner = std::future::poll_fn(|cx| Poll::Ready(timer.poll_until(cx, sooner)));
        assert!(set_for_sooner.await.is_pending());
        // Moved before it fired: it fires at the later instant, not the first one.
        std::future::poll_fn(|cx| timer.poll_until(cx, later)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        // Moved back to an instant past: ready at once.
        std::future::poll_fn(|cx| timer.poll_until(cx, sooner)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}

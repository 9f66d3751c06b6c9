//! Admission of Cancel calls from their headers, in front of the `PrintJobService` route.
//!
//! tonic calls the handler only once the request message has arrived, so a stream that sends
//! its headers and nothing more would otherwise wait outside every limit. This layer refuses a
//! call without a plausible `authorization` at its headers, without a place; starts the call's
//! deadline and takes its place under `--max-in-flight` when the headers arrive; hands both to
//! the handler through the request's extensions (so the handler takes no second permit); and
//! bounds the request body: a message that has not arrived [`MESSAGE_WAIT`] after the headers
//! ends the call with DEADLINE_EXCEEDED (`MESSAGE_LATE`), a stream that does not end by the
//! deadline ends it with DEADLINE_EXCEEDED, and a message over the size limit ends it with
//! RESOURCE_EXHAUSTED (tonic's own check says OUT_OF_RANGE, which gRPC reserves for other cases).
//!
//! Places are shared fairly between connections. A connection's share is the limit divided by
//! the connections that hold or wait for a place. A call on a connection under its share that
//! finds no place free while another connection holds more than its share waits for a place
//! (until its deadline), and places given back go to waiting calls first; any other call gets a
//! place only if one is free, and none is while calls wait. So one client alone (a sidecar's
//! app, on one connection) may use every place, but when callers on other connections wait, a
//! connection over its share gets no new place until it is back under it. When no connection is
//! over its share, a call beyond the limit is refused at once, as a queue would only grow while
//! Graph is slow.
//!
//! [`MESSAGE_WAIT`]: super::MESSAGE_WAIT

use std::{
    collections::BTreeMap,
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, atomic::Ordering},
    task::{Context, Poll, ready},
    time::Duration,
};

use base64::Engine as _;
use bytes::{Buf, Bytes};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Instant;
use tonic::{Status, body::Body, metadata::MetadataMap, server::NamedService};
use tower::Service;

use super::{
    conn::ConnectionLoad,
    streams::{HoldingBody, HoldingResponse, WaitTimer},
};
use crate::{error::CancelError, service::PrintJobGateway};

/// The length of the prefix of every gRPC message: a compression flag and a 4-byte length.
const GRPC_PREFIX_LEN: usize = 5;

const GRPC_CONTENT_TYPE: http::HeaderValue = http::HeaderValue::from_static("application/grpc");
const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");
const GRPC_STATUS_DETAILS: http::HeaderName =
    http::HeaderName::from_static("grpc-status-details-bin");

/// `PrintJobService` behind admission at its headers. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Admitted<S> {
    inner: S,
    gateway: Arc<PrintJobGateway>,
    max_message_bytes: usize,
    message_wait: Duration,
    shares: Shares,
}

/// How places under `--max-in-flight` are shared between the listener's connections.
#[derive(Debug, Clone)]
struct Shares {
    max_in_flight: usize,
    census: Arc<Mutex<Census>>,
}

/// How many calls each connection with calls holds or waits for.
#[derive(Debug, Default)]
struct Census {
    /// How many connections hold (or wait for) so many calls, by that number.
    by_calls: BTreeMap<usize, usize>,
    /// How many connections hold or wait for a call.
    connections: usize,
}

/// A call counted in its connection's calls until dropped, when the call's response has ended.
pub(crate) struct CallCount {
    load: Arc<ConnectionLoad>,
    census: Arc<Mutex<Census>>,
}

/// A call refused or admitted at once (holding its connection's count, when it has one), or
/// waiting for a place.
pub(crate) enum AdmittedFuture<F> {
    Now(HoldingResponse<F, CallCount>),
    Waiting(Pin<Box<dyn Future<Output = http::Response<Body>> + Send>>),
}

/// The request body of an admitted call: ends with an error when the message is late or too
/// large.
struct BoundedBody {
    inner: Body,
    deadline: Instant,
    /// When the first message must have arrived.
    message_due: Instant,
    timer: WaitTimer,
    framing: Framing,
    max_message_bytes: usize,
    early: EarlyEnd,
}

/// What is needed to answer a call that ends before its handler runs.
struct EarlyEnd {
    gateway: Arc<PrintJobGateway>,
    started: Instant,
    client_request_id: crate::request::ClientRequestId,
}

/// Where the gRPC framing of the request stream is: within a message prefix, or within a
/// message's payload.
#[derive(Debug, Default)]
struct Framing {
    prefix: [u8; GRPC_PREFIX_LEN],
    prefix_filled: usize,
    payload_left: u64,
    /// Whether a whole message has arrived.
    message_arrived: bool,
}

// === impl Admitted ===

impl<S> Admitted<S> {
    /// Puts `inner` behind admission by `gateway`, which allows `max_in_flight` calls at once.
    pub(crate) fn new(
        inner: S,
        gateway: Arc<PrintJobGateway>,
        max_in_flight: usize,
        max_message_bytes: usize,
        message_wait: Duration,
    ) -> Self {
        Self {
            inner,
            gateway,
            max_message_bytes,
            message_wait,
            shares: Shares {
                max_in_flight,
                census: Arc::default(),
            },
        }
    }

    /// The request's body, bounded, and its admission in its extensions.
    fn bounded(
        &self,
        mut parts: http::request::Parts,
        body: Body,
        admission: crate::service::Admission,
    ) -> http::Request<Body> {
        let body = BoundedBody {
            inner: body,
            deadline: admission.deadline(),
            message_due: (admission.started() + self.message_wait).min(admission.deadline()),
            timer: WaitTimer::default(),
            framing: Framing::default(),
            max_message_bytes: self.max_message_bytes,
            early: EarlyEnd {
                gateway: self.gateway.clone(),
                started: admission.started(),
                client_request_id: admission.client_request_id().clone(),
            },
        };
        parts.extensions.insert(admission);
        http::Request::from_parts(parts, Body::new(body))
    }
}

/// The answer to a call refused at its headers: a trailers-only gRPC response with the headers
/// tonic's `Status::into_http` writes (the content type, the status's metadata, `grpc-status`,
/// `grpc-message` percent-encoded as tonic does it, `grpc-status-details-bin`), made without its
/// copies (about 2,000 instructions of a refusal's 70,000): the metadata is moved rather than
/// cloned, the message is encoded into one buffer of about the right size, and the status is not
/// kept in the response's extensions, where nothing after this layer reads it. The details
/// name the call's request ID, so they differ on every call: they are sent never-indexed, as
/// adding them to HTTP/2's header tables (ours and the caller's) would only push out the headers
/// that every answer repeats.
fn refusal(mut status: Status) -> http::Response<Body> {
    let metadata = std::mem::take(status.metadata_mut()).into_headers();
    let mut headers = http::HeaderMap::with_capacity(metadata.len() + 4);
    headers.insert(http::header::CONTENT_TYPE, GRPC_CONTENT_TYPE);
    headers.extend(metadata);
    headers.insert(GRPC_STATUS, http::HeaderValue::from(status.code() as i32));
    let message = status.message();
    if !message.is_empty()
        && let Ok(value) =
            http::HeaderValue::from_maybe_shared(Bytes::from(percent_encoded(message)))
    {
        headers.insert(GRPC_MESSAGE, value);
    }
    if !status.details().is_empty() {
        let details = base64::engine::general_purpose::STANDARD_NO_PAD.encode(status.details());
        if let Ok(mut value) = http::HeaderValue::from_maybe_shared(Bytes::from(details)) {
            value.set_sensitive(true);
            headers.insert(GRPC_STATUS_DETAILS, value);
        }
    }
    let mut response = http::Response::new(Body::empty());
    *response.headers_mut() = headers;
    response
}

/// `grpc-message` as tonic writes it: every byte but printable ASCII (so controls, space, DEL and
/// UTF-8 beyond ASCII) and `"#%<>?`{}` as `%XX`, into one buffer of about the right size.
/// Written out rather than with `percent_encoding`, which the gateway keeps to building Graph's
/// and Entra ID's URLs (an invariant `tests/it/architecture.rs` checks); a unit test compares it
/// with tonic's own encoding.
fn percent_encoded(message: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut encoded = String::with_capacity(message.len() + message.len() / 2);
    for &byte in message.as_bytes() {
        if byte.is_ascii_graphic() && !b"\"#%<>?`{}".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push('%');
            encoded.push(char::from(HEX[usize::from(byte >> 4)]));
            encoded.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
    encoded
}

// === impl Shares ===

impl Shares {
    /// Counts a call on the connection of `load`, and tells whether it may wait for a place:
    /// whether its connection was under its share before it while another is over its own.
    fn count(&self, load: Arc<ConnectionLoad>) -> (CallCount, bool) {
        let mut census = lock(&self.census);
        let held = load.calls.fetch_add(1, Ordering::AcqRel);
        census.moved(held, held + 1);
        let share = self.max_in_flight.div_ceil(census.connections.max(1));
        // This connection holds at most its share now: a connection over it is another.
        let other_over = census
            .by_calls
            .last_key_value()
            .is_some_and(|(&calls, _)| calls > share);
        let count = CallCount {
            load,
            census: self.census.clone(),
        };
        (count, held < share && other_over)
    }
}

// === impl Census ===

impl Census {
    /// A connection that held `from` calls now holds `to`.
    fn moved(&mut self, from: usize, to: usize) {
        if from == 0 {
            self.connections += 1;
        } else if let Some(count) = self.by_calls.get_mut(&from) {
            *count -= 1;
            if *count == 0 {
                self.by_calls.remove(&from);
            }
        }
        if to == 0 {
            self.connections = self.connections.saturating_sub(1);
        } else {
            *self.by_calls.entry(to).or_default() += 1;
        }
    }
}

fn lock(census: &Mutex<Census>) -> std::sync::MutexGuard<'_, Census> {
    // Every change to the census is made whole before anything could panic.
    census
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for CallCount {
    fn drop(&mut self) {
        let mut census = lock(&self.census);
        let held = self.load.calls.fetch_sub(1, Ordering::AcqRel);
        census.moved(held, held.saturating_sub(1));
    }
}

// === impl Admitted ===

impl<S: NamedService> NamedService for Admitted<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Admitted<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Unpin + Send,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = AdmittedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        let counted = parts
            .extensions
            .get::<Arc<ConnectionLoad>>()
            .map(|load| self.shares.count(load.clone()));
        let metadata = MetadataMap::from_headers(std::mem::take(&mut parts.headers));
        let waits = matches!(counted, Some((_, true))) && !self.gateway.place_free();
        if waits && let Some((count, _)) = counted {
            // Under its share and no place free: waits for one.
            let this = self.clone();
            return AdmittedFuture::Waiting(Box::pin(async move {
                let admitted = this.gateway.admit_waiting(&metadata).await;
                parts.headers = metadata.into_headers();
                let response = match admitted {
                    Err(status) => refusal(status),
                    Ok(admission) => {
                        let request = this.bounded(parts, body, admission);
                        let mut inner = this.inner;
                        let Ok(response) = inner.call(request).await;
                        response
                    }
                };
                HoldingBody::hold(response, count).map(Body::new)
            }));
        }
        let admitted = self.gateway.admit(&metadata);
        parts.headers = metadata.into_headers();
        match admitted {
            Ok(admission) => {
                let request = self.bounded(parts, body, admission);
                let count = counted.map(|(count, _)| count);
                AdmittedFuture::Now(HoldingResponse::Admitted(self.inner.call(request), count))
            }
            Err(status) => AdmittedFuture::Now(HoldingResponse::Refused(Some(refusal(status)))),
        }
    }
}

// === impl AdmittedFuture ===

impl<F> Future for AdmittedFuture<F>
where
    F: Future<Output = Result<http::Response<Body>, Infallible>> + Unpin,
{
    type Output = Result<http::Response<Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut *self {
            Self::Now(now) => Pin::new(now).poll(cx),
            Self::Waiting(waiting) => waiting.as_mut().poll(cx).map(Ok),
        }
    }
}

// === impl BoundedBody ===

impl HttpBody for BoundedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && let Some(size) = this.framing.oversized(data, this.max_message_bytes)
                {
                    let error = CancelError::MessageTooLarge {
                        size,
                        limit: this.max_message_bytes,
                    };
                    return Poll::Ready(Some(Err(this.early.end(error))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => Poll::Ready(other),
            Poll::Pending => {
                // Until the message has arrived, it must do so by `message_due`; then the
                // stream must end by the deadline.
                let due = if this.framing.message_arrived {
                    this.deadline
                } else {
                    this.message_due
                };
                ready!(this.timer.poll_until(cx, due));
                let error = if due < this.deadline {
                    CancelError::MessageLate {
                        waited: due.saturating_duration_since(this.early.started),
                    }
                } else {
                    CancelError::DeadlineExceeded {
                        graph_called: false,
                    }
                };
                Poll::Ready(Some(Err(this.early.end(error))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === impl EarlyEnd ===

impl EarlyEnd {
    fn end(&self, error: CancelError) -> Status {
        // The headers (and their trace context) are with tonic by now; the log line and the
        // metrics need only the call's ID.
        self.gateway.answer_early(
            error,
            self.started,
            &self.client_request_id,
            &MetadataMap::new(),
        )
    }
}

// === impl Framing ===

impl Framing {
    /// Follows the gRPC framing through `data`, and returns the declared size of the first
    /// message over `limit`, if any.
    fn oversized(&mut self, data: &Bytes, limit: usize) -> Option<u64> {
        let mut data = data.clone();
        while data.has_remaining() {
            if self.payload_left > 0 {
                let skipped = self.payload_left.min(data.remaining() as u64);
                data.advance(skipped as usize);
                self.payload_left -= skipped;
                if self.payload_left == 0 {
                    self.message_arrived = true;
                }
                continue;
            }
            let wanted = GRPC_PREFIX_LEN - self.prefix_filled;
            let n = wanted.min(data.remaining());
            data.copy_to_slice(&mut self.prefix[self.prefix_filled..self.prefix_filled + n]);
            self.prefix_filled += n;
            if self.prefix_filled == GRPC_PREFIX_LEN {
                self.prefix_filled = 0;
                let size = u64::from(u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]));
                if size > limit as u64 {
                    return Some(size);
                }
                self.payload_left = size;
                if size == 0 {
                    self.message_arrived = true;
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_has_the_headers_tonic_writes_with_its_details_never_indexed() {
        let cases: [fn() -> Status; 4] = [
            || Status::unauthenticated("missing credentials: `authorization: Bearer <token>`"),
            || {
                let mut metadata = MetadataMap::new();
                metadata.insert(
                    "client-request-id",
                    "a5c6e1c2-1d5f-4a9e-9a43-0c2b7d7d5f10".parse().unwrap(),
                );
                Status::with_details_and_metadata(
                    tonic::Code::ResourceExhausted,
                    "100% \"busy\" {#?} \u{e9}t\u{e9}\n\tdone\u{7f}",
                    Bytes::from_static(b"\x08\x10\xff\x00 details of any length"),
                    metadata,
                )
            },
            || Status::new(tonic::Code::Unavailable, ""),
            || Status::with_details(tonic::Code::Internal, "x", Bytes::from_static(b"ab")),
        ];
        for make in cases {
            let expected = make().into_http::<Body>();
            let actual = refusal(make());
            assert_eq!(actual.status(), expected.status());
            assert_eq!(actual.headers(), expected.headers(), "{}", make().message());
            if let Some(details) = actual.headers().get(GRPC_STATUS_DETAILS) {
                assert!(details.is_sensitive(), "{}", make().message());
            }
        }
    }

    fn message(size: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&size.to_be_bytes());
        bytes.resize(GRPC_PREFIX_LEN + size as usize, b'x');
        bytes
    }

    #[test]
    fn a_call_may_wait_only_under_its_share_while_another_connection_is_over_its_own() {
        let shares = Shares {
            max_in_flight: 4,
            census: Arc::default(),
        };
        let hog = Arc::new(ConnectionLoad::default());
        let hog_calls: Vec<_> = (0..4)
            .map(|_| {
                let (count, may_wait) = shares.count(hog.clone());
                assert!(!may_wait, "alone, no connection is over its share");
                count
            })
            .collect();
        let caller = Arc::new(ConnectionLoad::default());
        // Two connections: a share of 2 each, and the hog holds 4.
        let (first, may_wait) = shares.count(caller.clone());
        assert!(may_wait);
        let (second, may_wait) = shares.count(caller.clone());
        assert!(may_wait);
        let (third, may_wait) = shares.count(caller.clone());
        assert!(!may_wait, "at its share, the caller waits no more");
        drop((first, second, third));
        drop(hog_calls);
        assert_eq!(lock(&shares.census).connections, 0);
        assert!(lock(&shares.census).by_calls.is_empty());

        // Nobody over its share: the limit refuses at once.
        let (_one, _) = shares.count(hog.clone());
        let (_two, may_wait) = shares.count(caller.clone());
        assert!(!may_wait);
    }

    #[test]
    fn the_framing_finds_an_oversized_message_however_the_bytes_are_split() {
        let mut stream = message(10);
        stream.extend(message(4096));
        stream.extend(&message(4097)[..GRPC_PREFIX_LEN]);
        for split in [1, 2, 3, 5, 7, 4096, stream.len()] {
            let mut framing = Framing::default();
            let found = stream
                .chunks(split)
                .find_map(|chunk| framing.oversized(&Bytes::copy_from_slice(chunk), 4096));
            assert_eq!(found, Some(4097), "chunks of {split}");
        }
        let mut framing = Framing::default();
        assert_eq!(framing.oversized(&Bytes::from(message(4096)), 4096), None);
    }
}

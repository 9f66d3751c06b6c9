//! Admission of Cancel calls from their headers, in front of the `PrintJobService` route.
//!
//! tonic calls the handler only once the request message has arrived, so a stream that sends
//! its headers and nothing more would otherwise wait outside every limit. This layer starts the
//! call's deadline and takes its place under `--max-in-flight` when the headers arrive, hands
//! both to the handler through the request's extensions (so the handler takes no second permit),
//! and bounds the request body: a message that has not arrived by the deadline ends the call
//! with DEADLINE_EXCEEDED, and a message over the size limit ends it with RESOURCE_EXHAUSTED
//! (tonic's own check says OUT_OF_RANGE, which gRPC reserves for other cases).

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tonic::{Status, body::Body, metadata::MetadataMap, server::NamedService};
use tower::Service;

use crate::{error::CancelError, service::PrintJobGateway};

/// The length of the prefix of every gRPC message: a compression flag and a 4-byte length.
const GRPC_PREFIX_LEN: usize = 5;

/// `PrintJobService` behind admission at its headers. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Admitted<S> {
    inner: S,
    gateway: Arc<PrintJobGateway>,
    max_message_bytes: usize,
}

/// A response ready at once (the call was refused), or the inner service's.
pub(crate) enum AdmittedFuture<F> {
    Refused(Option<http::Response<Body>>),
    Admitted(F),
}

/// The request body of an admitted call: ends with an error when the message is late or too
/// large.
struct BoundedBody {
    inner: Body,
    deadline: Instant,
    /// Started only when the body first has to wait, so a message that arrives with its headers
    /// costs no timer.
    timer: Option<Pin<Box<Sleep>>>,
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
}

// === impl Admitted ===

impl<S> Admitted<S> {
    /// Puts `inner` behind admission by `gateway`.
    pub(crate) fn new(inner: S, gateway: Arc<PrintJobGateway>, max_message_bytes: usize) -> Self {
        Self {
            inner,
            gateway,
            max_message_bytes,
        }
    }
}

impl<S: NamedService> NamedService for Admitted<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Admitted<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = AdmittedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        let metadata = MetadataMap::from_headers(std::mem::take(&mut parts.headers));
        let admitted = self.gateway.admit(&metadata);
        parts.headers = metadata.into_headers();
        let admission = match admitted {
            Ok(admission) => admission,
            Err(status) => return AdmittedFuture::Refused(Some(status.into_http())),
        };
        let body = BoundedBody {
            inner: body,
            deadline: admission.deadline(),
            timer: None,
            framing: Framing::default(),
            max_message_bytes: self.max_message_bytes,
            early: EarlyEnd {
                gateway: self.gateway.clone(),
                started: admission.started(),
                client_request_id: admission.client_request_id().clone(),
            },
        };
        parts.extensions.insert(admission);
        AdmittedFuture::Admitted(
            self.inner
                .call(http::Request::from_parts(parts, Body::new(body))),
        )
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
            Self::Refused(response) => Poll::Ready(Ok(response
                .take()
                .expect("a refused call's future is not polled after it completed"))),
            Self::Admitted(future) => Pin::new(future).poll(cx),
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
                let deadline = this.deadline;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                ready!(timer.as_mut().poll(cx));
                let error = CancelError::DeadlineExceeded {
                    graph_called: false,
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
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(size: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&size.to_be_bytes());
        bytes.resize(GRPC_PREFIX_LEN + size as usize, b'x');
        bytes
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

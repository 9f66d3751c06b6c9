//! A call's hold on a stream, from the grant (at once, or after waiting in the queue) until its
//! response's body ends or is dropped, when the stream goes back to the pool.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use futures_util::{FutureExt, future::Either};
use http::{HeaderValue, Request, Response, Uri, header, uri::PathAndQuery};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::{body::Incoming, client::conn::http1};
use tokio::sync::oneshot;

use super::{
    Body, ReqBody,
    conn::{GrantedSender, Shared},
    state::Grant,
};
use crate::egress::ConnectError;

/// A call's hold on a stream, from the grant until its response ends or is dropped.
pub(super) struct Lease {
    shared: Arc<Shared>,
    pub(super) id: u64,
    /// An HTTP/1.1 connection's sender, given back on release.
    http1: Option<http1::SendRequest<ReqBody>>,
    /// Whether the response ended normally; otherwise the stream was reset.
    pub(super) finished: bool,
}

/// A call waiting in the queue. If it is dropped after a stream was granted but before it took
/// it, the stream goes back.
pub(super) struct Waiter {
    pub(super) shared: Arc<Shared>,
    pub(super) receiver: Option<oneshot::Receiver<Result<Grant<GrantedSender>, ConnectError>>>,
}

// === impl Lease ===

impl Lease {
    pub(super) fn new(shared: &Arc<Shared>, grant: Grant<GrantedSender>) -> (Self, GrantedSender) {
        let lease = Self {
            shared: shared.clone(),
            id: grant.id,
            http1: None,
            finished: false,
        };
        (lease, grant.sender)
    }

    /// Sends `request` on the granted stream.
    ///
    /// Not an `async fn`, which would keep `request` and `sender` in its state beside hyper's
    /// future: over HTTP/2 the future returned is hyper's alone (the request is handed over at
    /// once), and every call waiting on Graph holds it. The HTTP/1.1 exchange, which waits for its
    /// connection first, is boxed.
    // `Failed` carries the unsent request back, as hyper's own error does; it is returned at
    // once, never held, so it is not boxed (see `Failed`).
    #[allow(clippy::result_large_err)]
    pub(super) fn send(
        &mut self,
        sender: GrantedSender,
        request: Request<ReqBody>,
    ) -> impl Future<Output = Result<Response<Incoming>, Failed>> + Send + '_ {
        match sender {
            // The HTTP/2 sender is a clone; it is not needed once the request is handed over.
            GrantedSender::Http2(mut sender) => Either::Left(
                sender
                    .try_send_request(request)
                    .map(|sent| sent.map_err(failed)),
            ),
            GrantedSender::Http1(sender) => {
                Either::Right(Box::pin(self.send_http1(sender, request)))
            }
        }
    }

    async fn send_http1(
        &mut self,
        mut sender: http1::SendRequest<ReqBody>,
        request: Request<ReqBody>,
    ) -> Result<Response<Incoming>, Failed> {
        let request = origin_form(request);
        // An HTTP/1.1 connection takes the next request only once it has finished the previous
        // exchange.
        if let Err(error) = sender.ready().await {
            return Err(Failed::Unsent(request, error));
        }
        let sending = sender.try_send_request(request);
        self.http1 = Some(sender);
        sending.await.map_err(failed)
    }

    /// The connection takes no new call; it closes once its last call ends.
    pub(super) fn conn_failed(&self) {
        self.shared.lock().retire(self.id);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let http1 = self.http1.take().map(GrantedSender::Http1);
        state.release(self.id, http1, self.finished);
        self.shared.dial_as_needed(&mut state);
    }
}

/// How a request failed on its connection. Short-lived, so the request is not boxed.
#[allow(clippy::large_enum_variant)]
pub(super) enum Failed {
    /// It never left the gateway: the connection was closed or going away.
    Unsent(Request<ReqBody>, hyper::Error),
    /// It may have reached Graph.
    Sent(hyper::Error),
}

/// Whether a request that failed on its connection left the gateway.
fn failed(mut error: hyper::client::conn::TrySendError<Request<ReqBody>>) -> Failed {
    match error.take_message() {
        Some(request) => Failed::Unsent(request, error.into_error()),
        None => Failed::Sent(error.into_error()),
    }
}

/// HTTP/1.1 wants the request target in origin form and the host in `Host`; HTTP/2 takes both
/// from the absolute URI.
fn origin_form(mut request: Request<ReqBody>) -> Request<ReqBody> {
    let uri = request.uri();
    if let Some(authority) = uri.authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        request.headers_mut().entry(header::HOST).or_insert(host);
    }
    let path = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *request.uri_mut() = Uri::from(path);
    request
}

// === impl Waiter ===

impl Future for Waiter {
    type Output = Result<Grant<GrantedSender>, ConnectError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(receiver) = self.receiver.as_mut() else {
            return Poll::Pending;
        };
        let outcome = ready!(Pin::new(receiver).poll(cx));
        self.receiver = None;
        // The pool never drops a waiter's sender without an answer while the pool exists, and
        // a waiter holds the pool.
        Poll::Ready(outcome.unwrap_or_else(|_| Err(ConnectError::gone())))
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let Some(mut receiver) = self.receiver.take() else {
            return;
        };
        // Under the lock, so that no stream is granted between closing and looking.
        let mut state = self.shared.lock();
        receiver.close();
        match receiver.try_recv() {
            // Granted but never used: the stream goes to the next call.
            Ok(Ok(grant)) => state.release(grant.id, Some(grant.sender), true),
            Ok(Err(_)) => {}
            Err(_) => state.gave_up(),
        }
        self.shared.metrics.graph_calls_waiting(state.waiters());
    }
}

// === impl Body ===

impl Body {
    pub(super) fn new(inner: Incoming, lease: Lease) -> Self {
        Self {
            inner,
            lease: Some(lease),
        }
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if frame.is_none() || self.inner.is_end_stream() {
            // The stream is over: free it now rather than when the body is dropped.
            if let Some(mut lease) = self.lease.take() {
                lease.finished = true;
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        if let Some(lease) = &mut self.lease {
            lease.finished |= self.inner.is_end_stream();
        }
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body").finish_non_exhaustive()
    }
}

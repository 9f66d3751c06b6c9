//! The accept loop: serves an axum router (the gRPC routes, and on the admin listener plain HTTP
//! too) over HTTP/2 with the gateway's limits, optionally over TLS, and drains connections
//! gracefully on stop.
//!
//! The gateway runs hyper directly instead of `tonic::transport::Server` for one reason: that
//! server wraps every call in its own `grpc-timeout` timer, which ends calls with CANCELLED. The
//! caller's deadline is enforced in the handler instead, where it ends with DEADLINE_EXCEEDED and
//! the details a caller needs.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, atomic::AtomicUsize},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::Body as HttpBody;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};
use tower::Service;

use super::{
    ConnectionClosed, Listener, ServerMetrics,
    handshake::{self, Protocols},
    listen::ApiListener,
    slots::{Admitted, ConnectionSlots, Slot},
    streams::HoldingBody,
    tls::TlsConfig,
};
use crate::telemetry::ErrorChain;

/// The most HTTP/2 header bytes a call may send. Entra access tokens are a few kilobytes; large
/// group claims can double that.
const MAX_HEADER_LIST_BYTES: u32 = 32 * 1024;
/// The most streams one HTTP/2 connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
/// Memory does not depend on it: a Cancel stream holds a place under `--max-in-flight` from its
/// headers and is refused at once beyond it, and health and reflection streams have their own cap.
/// It lets one caller (a sidecar's app, on one connection) have as many calls in flight as the
/// gateway allows; clients queue calls beyond it on their side, or open another connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// How much request data a stream, and a whole connection, may have in flight before the gateway
/// reads it. A request message is at most a few kilobytes, so the RFC's default stream window is
/// plenty.
const STREAM_WINDOW_BYTES: u32 = 64 * 1024;
/// The connection's window also sets h2's budget for small DATA frames not yet read (half the
/// window; each frame under 256 bytes spends 256 less its length), beyond which h2 closes the
/// connection with ENHANCE_YOUR_CALM. Every Cancel sends its message in one small frame, so a
/// caller that fills `MAX_CONCURRENT_STREAMS` while the gateway is busy needs that many frames'
/// budget: the window gives twice that. What the gateway buffers stays bounded by the calls it
/// admits (`--max-in-flight`, each message at most `MAX_REQUEST_BYTES`), not by the window.
const CONNECTION_WINDOW_BYTES: u32 = 1024 * 1024;
/// h2's framing overhead per small DATA frame (`DEFAULT_DATA_FRAME_OVERHEAD_THRESHOLD`).
const SMALL_DATA_FRAME_COST: u32 = 256;
const _: () =
    assert!(CONNECTION_WINDOW_BYTES / 2 >= 2 * MAX_CONCURRENT_STREAMS * SMALL_DATA_FRAME_COST);
/// How often an idle HTTP/2 connection is pinged, and how long the answer may take, so that
/// connections of vanished callers are closed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection told to go (displaced at the cap, or idle too long) may take to read
/// the GOAWAY and close before it is closed anyway. It had no stream open; a client answers
/// within a round trip.
const GOODBYE_WAIT: Duration = Duration::from_secs(1);
/// How long to wait after a failed `accept` (such as running out of file descriptors) before
/// trying again, so that the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// How one listener serves its connections.
#[derive(Debug, Clone)]
pub(crate) struct Serving {
    /// Which listener this is, for the metrics.
    pub listener: Listener,
    /// Which protocols it speaks.
    pub protocols: Protocols,
    /// TLS, when on.
    pub tls: Option<TlsConfig>,
    /// The most connections open at once.
    pub max_connections: usize,
    /// How long TLS and the HTTP/2 preface may take.
    pub handshake_timeout: Duration,
    /// How long a served connection may stay without an open stream before it is closed.
    pub idle_timeout: Duration,
    /// The gateway's metrics.
    pub metrics: ServerMetrics,
}

/// What the streams of one connection hold, for the per-connection caps on health and
/// reflection streams (`streams.rs`) and the fair share of calls in flight (`admission.rs`).
/// Every request carries its connection's in its extensions.
#[derive(Debug, Default)]
pub(crate) struct ConnectionLoad {
    /// Cancel calls holding or waiting for a place under `--max-in-flight`.
    pub calls: AtomicUsize,
    /// Health `Watch` streams.
    pub watches: AtomicUsize,
    /// Server reflection streams.
    pub reflections: AtomicUsize,
    /// Health `Check` calls.
    pub checks: AtomicUsize,
}

/// The router of one served connection: each request carries the connection's
/// [`ConnectionLoad`] and counts as an open stream (the connection is not idle) until its
/// response has ended.
#[derive(Debug, Clone)]
struct PerConnection {
    router: axum::Router,
    slot: Slot,
    load: Arc<ConnectionLoad>,
}

/// When a listener's connections stop.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stops {
    /// Close the listener, and ask every connection to finish (HTTP/2 GOAWAY).
    pub drain: CancellationToken,
    /// Close every connection still open, now.
    pub close: CancellationToken,
}

/// Accepts connections on `listener` and serves `router` on them until `stops.drain` fires;
/// then closes the listener, asks every connection to finish (HTTP/2 GOAWAY), and returns once
/// all have, or at once when `stops.close` fires.
///
/// `_done` is dropped when this returns, or when its task is dropped: whoever holds its token
/// learns that every connection has ended.
pub(crate) async fn serve_connections(
    listener: ApiListener,
    router: axum::Router,
    serving: Serving,
    stops: Stops,
    _done: DropGuard,
) {
    let builder = connection_builder(serving.protocols, serving.handshake_timeout);
    let slots = ConnectionSlots::new(serving.max_connections);
    // Shared by the connections' tasks, which would otherwise clone each of its handles.
    let serving = Arc::new(serving);
    // Every connection's task holds a clone: the channel closes when the last one has ended.
    let (alive, mut all_ended) = mpsc::channel::<()>(1);
    loop {
        let connection = tokio::select! {
            () = stops.drain.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let Admitted::Open(slot) = slots.admit() else {
            serving
                .metrics
                .connection_closed(serving.listener, ConnectionClosed::Limit);
            drop(connection);
            continue;
        };
        let builder = builder.clone();
        let router = router.clone();
        let serving = serving.clone();
        let stops = stops.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            let _alive = alive;
            let _open = serving.metrics.connection_open(serving.listener);
            let handshake = tokio::time::timeout(
                serving.handshake_timeout,
                handshake::complete(
                    connection,
                    serving.tls.as_ref().map(TlsConfig::acceptor),
                    serving.protocols,
                ),
            );
            let closed = |reason| serving.metrics.connection_closed(serving.listener, reason);
            let connection = tokio::select! {
                () = slot.displaced() => return closed(ConnectionClosed::Limit),
                // A connection still in its handshake has no call to finish.
                () = stops.drain.cancelled() => return,
                handshake = handshake => match handshake {
                    Ok(Ok(connection)) => connection,
                    Ok(Err(error)) => {
                        tracing::debug!(error = %ErrorChain(&error), "handshake failed");
                        return closed(ConnectionClosed::HandshakeFailed);
                    }
                    Err(_) => return closed(ConnectionClosed::HandshakeTimeout),
                },
            };
            slot.handshake_done();
            let service = TowerToHyperService::new(PerConnection {
                router,
                slot: slot.clone(),
                load: Arc::default(),
            });
            let connection = builder.serve_connection(TokioIo::new(connection), service);
            tokio::pin!(connection);
            // Once the connection has been asked to go (GOAWAY): whether it must be gone by a
            // given time.
            let mut going = false;
            let mut gone_by = None;
            loop {
                tokio::select! {
                    served = connection.as_mut() => {
                        if let Err(error) = served {
                            tracing::debug!(%error, "connection ended with an error");
                        }
                        break;
                    }
                    () = stops.close.cancelled() => break,
                    () = stops.drain.cancelled(), if !going => {
                        connection.as_mut().graceful_shutdown();
                        going = true;
                    }
                    () = slot.displaced(), if !going => {
                        closed(ConnectionClosed::Limit);
                        connection.as_mut().graceful_shutdown();
                        going = true;
                        gone_by = Some(tokio::time::Instant::now() + GOODBYE_WAIT);
                    }
                    () = slot.idle_for(serving.idle_timeout), if !going => {
                        closed(ConnectionClosed::IdleTimeout);
                        connection.as_mut().graceful_shutdown();
                        going = true;
                        gone_by = Some(tokio::time::Instant::now() + GOODBYE_WAIT);
                    }
                    () = sleep_until_some(gone_by) => break,
                }
            }
        });
    }
    drop(listener);
    drop(alive);
    tokio::select! {
        _ = all_ended.recv() => {}
        () = stops.close.cancelled() => {}
    }
}

/// Sleeps until `when`; for ever when it is `None`.
async fn sleep_until_some(when: Option<tokio::time::Instant>) {
    match when {
        Some(when) => tokio::time::sleep_until(when).await,
        None => std::future::pending().await,
    }
}

fn connection_builder(
    protocols: Protocols,
    handshake_timeout: Duration,
) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if protocols == Protocols::Http2 {
        builder = builder.http2_only();
    }
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST_BYTES)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    builder
}

// === impl PerConnection ===

impl<B> Service<http::Request<B>> for PerConnection
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = http::Response<axum::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<http::Request<B>>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let open = self.slot.stream_opened();
        request.extensions_mut().insert(self.load.clone());
        let response = self.router.call(request);
        Box::pin(async move {
            let Ok(response) = response.await;
            Ok(HoldingBody::hold(response, open).map(axum::body::Body::new))
        })
    }
}

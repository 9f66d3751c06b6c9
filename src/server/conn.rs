//! The accept loop: serves an axum router (the gRPC routes, and on the admin listener plain HTTP
//! too) over HTTP/2 with the gateway's limits, optionally over TLS, and drains connections
//! gracefully on stop.
//!
//! The gateway runs hyper directly instead of `tonic::transport::Server` for one reason: that
//! server wraps every call in its own `grpc-timeout` timer, which ends calls with CANCELLED. The
//! caller's deadline is enforced in the handler instead, where it ends with DEADLINE_EXCEEDED and
//! the details a caller needs.

use std::time::Duration;

use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{
    handshake::{self, Protocols},
    listen::ApiListener,
    slots::{Admitted, ConnectionSlots},
    tls::TlsConfig,
};
use crate::{
    metrics::{ConnectionClosed, Listener, Metrics},
    telemetry::ErrorChain,
};

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
    /// The gateway's metrics.
    pub metrics: Metrics,
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
    let graceful = GracefulShutdown::new();
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
        let service = TowerToHyperService::new(router.clone());
        let watcher = graceful.watcher();
        let serving = serving.clone();
        let stops = stops.clone();
        tokio::spawn(async move {
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
            let connection = builder.serve_connection(TokioIo::new(connection), service);
            tokio::select! {
                served = watcher.watch(connection.into_owned()) => {
                    if let Err(error) = served {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                }
                () = stops.close.cancelled() => {}
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = stops.close.cancelled() => {}
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

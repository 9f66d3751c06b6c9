//! The accept loop: serves an axum router (the gRPC routes, and on the admin listener plain HTTP
//! too) over HTTP/2 with the gateway's limits, and drains connections gracefully on stop.
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
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The most HTTP/2 header bytes a call may send. Entra access tokens are a few kilobytes; large
/// group claims can double that.
const MAX_HEADER_LIST_BYTES: u32 = 32 * 1024;
/// The most calls one HTTP/2 connection may have open at once.
const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// How often an idle HTTP/2 connection is pinged, and how long the answer may take, so that
/// connections of vanished callers are closed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait after a failed `accept` (such as running out of file descriptors) before
/// trying again, so that the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Which protocols a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocols {
    /// HTTP/2 only: the gRPC API.
    Http2,
    /// HTTP/1.1 and HTTP/2: the admin listener, for probes that do not speak gRPC.
    Http1AndHttp2,
}

/// Accepts connections on `listener` and serves `router` on them until `stop` fires; then closes
/// the listener, asks every connection to finish (HTTP/2 GOAWAY), and returns once all have.
pub(crate) async fn serve_connections(
    listener: TcpListener,
    router: axum::Router,
    protocols: Protocols,
    stop: CancellationToken,
) {
    let builder = connection_builder(protocols);
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        // Calls are small request/response pairs: sending them at once matters more than
        // coalescing packets.
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

fn connection_builder(protocols: Protocols) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if protocols == Protocols::Http2 {
        builder = builder.http2_only();
    }
    builder.http1().timer(TokioTimer::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST_BYTES)
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    builder
}

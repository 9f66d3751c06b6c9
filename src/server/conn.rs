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
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::listen::{ApiListener, BoxedConnection};

/// The most HTTP/2 header bytes a call may send. Entra access tokens are a few kilobytes; large
/// group claims can double that.
const MAX_HEADER_LIST_BYTES: u32 = 32 * 1024;
/// The most calls one HTTP/2 connection may have open at once.
const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// How often an idle HTTP/2 connection is pinged, and how long the answer may take, so that
/// connections of vanished callers are closed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TLS handshake may take, so that a connection that never finishes one does not
/// hold a task forever.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
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
    listener: ApiListener,
    router: axum::Router,
    protocols: Protocols,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) {
    let builder = connection_builder(protocols);
    let graceful = GracefulShutdown::new();
    loop {
        let connection = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let builder = builder.clone();
        let service = TowerToHyperService::new(router.clone());
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let connection: BoxedConnection = match tls {
                None => connection,
                Some(tls) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(connection)).await
                    {
                        Ok(Ok(encrypted)) => Box::pin(encrypted),
                        Ok(Err(error)) => return tracing::debug!(%error, "TLS handshake failed"),
                        Err(_) => return tracing::debug!("TLS handshake timed out"),
                    }
                }
            };
            let connection = builder.serve_connection(TokioIo::new(connection), service);
            if let Err(error) = watcher.watch(connection.into_owned()).await {
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

//! The connections to Graph: HTTP/2 connections opened as the load needs them, each carrying
//! at most as many calls as Graph allows on it, and HTTP/1.1 connections (one call each) where
//! TLS does not negotiate HTTP/2. [`Pool::send`] is the one way the rest of `graph/` sends a
//! request.
//!
//! - A call takes a stream on the oldest connection with room, so the load packs onto few
//!   connections and the surplus goes idle and is closed after the idle timeout.
//! - A connection's room is `min(Graph's SETTINGS_MAX_CONCURRENT_STREAMS, the configured
//!   target)`. It takes no call before Graph's SETTINGS have arrived, so a small limit is never
//!   overrun by a burst.
//! - When no connection has room, the call waits in a FIFO queue (within its deadline, which
//!   its caller enforces by dropping the future). A new connection is dialled only while the
//!   waiting calls outnumber the room the handshakes already in progress will bring, so a burst
//!   of N calls opens about N / streams connections, one handshake each, never more than the
//!   configured maximum.
//! - A request Graph provably did not process (above a graceful GOAWAY's last stream id, a
//!   REFUSED_STREAM, or never handed to the connection) is sent again at once, on another
//!   connection when one has room, ahead of the calls waiting; it is not a retry attempt. Anything else that fails may have reached Graph and
//!   is returned as [`SendError::Transport`].
//! - HTTP/2 keepalive PINGs (also while idle) find connections whose peer went silent; hyper
//!   then closes them and the calls on them fail.
//! - A call that is dropped (deadline, cancel) resets its stream. h2 closes a connection that
//!   generated too many resets of its own; a connection is retired (no new calls, closed once its
//!   last call ends) well before that, so calls on it never pay for earlier timeouts.
//!
//! Three parts: `state.rs`, the scheduling as a pure state machine over what a connection sends
//! on (which connection takes a call, when to dial, the queue, which failures are sent again),
//! with its unit tests; `conn.rs`, the connections' tasks (dial, handshake, Graph's SETTINGS,
//! idle close); `lease.rs`, a call's hold on a stream until its response's body ends.

mod conn;
mod lease;
mod metrics;
mod state;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::oneshot;

pub use self::metrics::{PoolMetrics, ResendReason};
use self::{
    conn::{GrantedSender, Shared, unprocessed},
    lease::{Failed, Lease, Waiter},
    state::State,
};
use super::connect::{ConnectError, Connector};

/// The request body: the gateway's requests to Graph have none.
type ReqBody = Empty<Bytes>;

/// How long a new HTTP/2 connection may take to receive Graph's first SETTINGS, after the TLS
/// handshake, before it is given up as a failed connect.
const SETTINGS_WAIT_MIN: Duration = Duration::from_secs(1);
/// How often a new HTTP/2 connection looks whether Graph's SETTINGS have arrived.
const SETTINGS_POLL: Duration = Duration::from_millis(2);
/// A timer that does not fire while the process runs.
const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// A connection that has reset this many of its streams (calls dropped at their deadline or
/// cancelled) takes no new calls and is replaced. Each reset stream can make a late answer from
/// Graph trigger a few resets that h2 counts against `LOCAL_ERROR_RESETS` (when the reset was
/// forgotten), and h2 closes the connection, with every call on it, at that limit.
pub(super) const RESETS_BEFORE_RETIRING: u32 = 256;
/// h2's limit on the resets a connection generates itself (default 1024). Kept well above
/// what a connection retired after `RESETS_BEFORE_RETIRING` reset streams can provoke, and
/// bounded, because it is also the defence against a peer that makes us reset streams on
/// purpose.
const LOCAL_ERROR_RESETS: usize = 8 * RESETS_BEFORE_RETIRING as usize;
/// The most times one call is sent again after Graph did not process it, so that a peer that
/// refuses every stream cannot keep a call looping.
const MAX_RESENDS: u32 = 8;

/// How the pool opens and keeps connections.
#[derive(Debug, Clone)]
pub(crate) struct PoolSettings {
    /// The most connections open at once (draining ones aside).
    pub max_connections: usize,
    /// The most calls on one HTTP/2 connection, below Graph's own limit when that is higher.
    pub streams_per_connection: usize,
    /// How long a connection without calls stays open.
    pub idle_timeout: Duration,
    /// How often an HTTP/2 connection is pinged.
    pub keepalive_interval: Duration,
    /// How long a PING's answer may take before the connection is closed.
    pub keepalive_timeout: Duration,
}

/// The connections to one Graph host. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Pool {
    shared: Arc<Shared>,
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened, or Graph refused the request on every connection tried:
    /// Graph did not process it.
    #[error(transparent)]
    Unreachable(#[from] ConnectError),
    /// Graph did not process the request: it refused the stream or went away before it, again
    /// and again.
    #[error("Graph did not process the request after {MAX_RESENDS} attempts on other connections")]
    Refused(#[source] hyper::Error),
    /// The connection failed after the request may have been sent, or the answer was not HTTP.
    #[error("the connection to Graph failed")]
    Transport(#[source] hyper::Error),
}

/// A response's body. Holds its connection's stream until the body ends or is dropped.
pub struct Body {
    inner: Incoming,
    lease: Option<Lease>,
}

// === impl Pool ===

impl Pool {
    /// A pool that dials with `connector`; no connection is opened until the first call.
    pub(crate) fn new(connector: Connector, settings: PoolSettings, metrics: PoolMetrics) -> Self {
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            // No stream before Graph's SETTINGS say how many it takes: see `Conn::limit`.
            .initial_max_send_streams(0)
            .keep_alive_interval(settings.keepalive_interval)
            .keep_alive_timeout(settings.keepalive_timeout)
            .keep_alive_while_idle(true)
            // Remember every stream a full connection may reset at once, so that late answers
            // to them are dropped quietly instead of each costing a reset.
            .max_concurrent_reset_streams(settings.streams_per_connection)
            .max_local_error_reset_streams(Some(LOCAL_ERROR_RESETS));
        let shared = Shared {
            state: Mutex::new(State::default()),
            connector,
            settings,
            metrics,
            http1: http1::Builder::new(),
            http2,
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Sends the request `make` builds on a stream of its own, waiting for one if every
    /// connection is full, and sends it again on another connection when Graph did not process
    /// it. `make` runs only once a stream is granted, so a waiting call holds no request; it may
    /// run again for a re-send.
    ///
    /// The response's body holds the stream until it ends or is dropped. Dropping the future
    /// resets the stream (HTTP/2) or closes the connection (HTTP/1.1).
    pub(crate) async fn send(
        &self,
        make: impl Fn() -> Request<ReqBody>,
    ) -> Result<Response<Body>, SendError> {
        let mut unsent = None;
        let mut resends = 0;
        let mut avoid = None;
        loop {
            let (mut lease, sender) = self.acquire(avoid).await?;
            let request = unsent.take().map_or_else(&make, |request: Box<_>| *request);
            let (reason, error) = match lease.send(sender, request).await {
                Ok(response) => return Ok(response.map(|inner| Body::new(inner, lease))),
                Err(Failed::Unsent(request, error)) => {
                    // Boxed: held across the wait for another stream by the rare re-sent call,
                    // it would otherwise take room in every call's future.
                    unsent = Some(Box::new(request));
                    (Some(ResendReason::Closed), error)
                }
                Err(Failed::Sent(error)) => (unprocessed(&error), error),
            };
            let Some(reason) = reason else {
                // If the connection itself failed, its driver sees it end and the pool forgets it.
                return Err(SendError::Transport(error));
            };
            // A refused stream says nothing about the connection; anything else means it takes
            // no new streams.
            if reason != ResendReason::Refused {
                lease.conn_failed();
            }
            // The stream was never processed: nothing to reset. The request goes to another
            // connection when one has room.
            lease.finished = true;
            avoid = Some(lease.id);
            drop(lease);
            resends += 1;
            if resends > MAX_RESENDS {
                return Err(SendError::Refused(error));
            }
            tracing::debug!(
                reason = reason.as_str(),
                "Graph did not process the request; sending it again"
            );
            self.shared.metrics.graph_request_resent(reason);
        }
    }

    /// A stream: at once on a connection with room (another than `avoid` if one has room), or
    /// after waiting in the queue.
    async fn acquire(&self, avoid: Option<u64>) -> Result<(Lease, GrantedSender), ConnectError> {
        let receiver = {
            let mut state = self.shared.lock();
            // Calls already waiting go first; a re-send has waited already and takes any room.
            if let Some(grant) = state.grant_now(avoid) {
                return Ok(Lease::new(&self.shared, grant));
            }
            let (sender, receiver) = oneshot::channel();
            state.enqueue(sender, avoid.is_some());
            self.shared.dial_as_needed(&mut state);
            receiver
        };
        let grant = Waiter {
            shared: self.shared.clone(),
            receiver: Some(receiver),
        }
        .await?;
        Ok(Lease::new(&self.shared, grant))
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("Pool")
            .field("connections", &state.connections())
            .field("connecting", &state.connecting())
            .field("waiting", &state.waiters())
            .finish()
    }
}

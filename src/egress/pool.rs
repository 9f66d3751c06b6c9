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

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri, header, uri::PathAndQuery};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::Empty;
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
    rt::{Read, Write},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{sync::oneshot, time::Instant};

use super::connect::{ConnectError, Connected, Connector, Negotiated};
use crate::metrics::{Metrics, ResendReason};

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
const RESETS_BEFORE_RETIRING: u32 = 256;
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

struct Shared {
    state: Mutex<State>,
    connector: Connector,
    settings: PoolSettings,
    metrics: Metrics,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

/// Everything the pool knows, behind one mutex that is never held across an await.
#[derive(Default)]
struct State {
    /// Open connections, oldest first.
    conns: Vec<Conn>,
    /// Dials in progress: TCP, TLS, and (HTTP/2) until Graph's SETTINGS arrive.
    connecting: usize,
    /// Calls waiting for a stream, first come first served. Entries whose call has gone are
    /// skipped when reached and swept when they pile up.
    waiting: VecDeque<oneshot::Sender<Result<Grant, ConnectError>>>,
    /// How many entries of `waiting` still have a call behind them.
    waiters: usize,
    /// Calls one new connection is expected to carry: what the last connection offered.
    expected_room: Option<usize>,
    next_id: u64,
}

struct Conn {
    id: u64,
    sender: Sender,
    /// Calls it may carry now; 0 until an HTTP/2 connection has Graph's SETTINGS.
    limit: usize,
    in_flight: usize,
    /// False once it went away, failed, or was retired: it takes no new call.
    usable: bool,
    /// Whether it is ready for calls: HTTP/2 once Graph's first SETTINGS arrived.
    settled: bool,
    /// When its last call ended.
    idle_since: Instant,
    resets: u32,
}

enum Sender {
    Http2(http2::SendRequest<ReqBody>),
    /// `None` while a call holds it: HTTP/1.1 carries one call at a time.
    Http1(Option<http1::SendRequest<ReqBody>>),
}

/// A stream granted to a call: the connection and what to send on.
struct Grant {
    id: u64,
    sender: GrantedSender,
}

enum GrantedSender {
    Http2(http2::SendRequest<ReqBody>),
    Http1(http1::SendRequest<ReqBody>),
}

/// A call's hold on a stream, from the grant until its response ends or is dropped.
struct Lease {
    shared: Arc<Shared>,
    id: u64,
    /// An HTTP/1.1 connection's sender, given back on release.
    http1: Option<http1::SendRequest<ReqBody>>,
    /// Whether the response ended normally; otherwise the stream was reset.
    finished: bool,
}

/// A call waiting in the queue. If it is dropped after a stream was granted but before it took
/// it, the stream goes back.
struct Waiter {
    shared: Arc<Shared>,
    receiver: Option<oneshot::Receiver<Result<Grant, ConnectError>>>,
}

// === impl Pool ===

impl Pool {
    /// A pool that dials with `connector`; no connection is opened until the first call.
    pub(crate) fn new(connector: Connector, settings: PoolSettings, metrics: Metrics) -> Self {
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
            let request = unsent.take().unwrap_or_else(&make);
            let (reason, error) = match lease.send(sender, request).await {
                Ok(response) => return Ok(response.map(|inner| Body::new(inner, lease))),
                Err(Failed::Unsent(request, error)) => {
                    unsent = Some(request);
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
            if (state.waiters == 0 || avoid.is_some())
                && let Some(grant) = state.grant(avoid)
            {
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
            .field("connections", &state.conns.len())
            .field("connecting", &state.connecting)
            .field("waiting", &state.waiters)
            .finish()
    }
}

/// Why a failed request may be sent again, or `None` when Graph may have processed it.
fn unprocessed(error: &hyper::Error) -> Option<ResendReason> {
    let h2 = std::error::Error::source(error)?.downcast_ref::<h2::Error>()?;
    if !h2.is_remote() {
        return None;
    }
    if h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR) {
        // A graceful GOAWAY fails only the streams above its last stream id, which the server
        // promises it did not process (RFC 9113 §6.8). After a GOAWAY with an error code the
        // connection may die under processed streams with the same error, so those are not
        // re-sent.
        Some(ResendReason::GoAway)
    } else if h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
        Some(ResendReason::Refused)
    } else {
        None
    }
}

// === impl Shared ===

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across every early return; a panic elsewhere must not
        // take the pool down with it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Dials while the waiting calls outnumber the room the dials in progress will bring, within
    /// the bound on connections.
    fn dial_as_needed(self: &Arc<Self>, state: &mut State) {
        // Every change that may need a dial may have changed the queue too.
        self.metrics.graph_calls_waiting(state.waiters);
        let room = state
            .expected_room
            .unwrap_or(self.settings.streams_per_connection)
            .max(1);
        // Connections still waiting for SETTINGS are counted in `connecting`.
        let usable = state
            .conns
            .iter()
            .filter(|conn| conn.usable && conn.settled)
            .count();
        while state.waiters > state.connecting * room
            && usable + state.connecting < self.settings.max_connections
        {
            state.connecting += 1;
            let shared = self.clone();
            tokio::spawn(async move { shared.dial().await });
        }
    }

    /// Opens one connection, hands it to the pool, and drives it until it closes.
    async fn dial(self: Arc<Self>) {
        let (io, negotiated) = match self.connector.connect().await {
            Ok(connected) => connected,
            Err(error) => return self.dial_failed(error),
        };
        match io {
            Connected::Plain(tcp) => self.handshake(TokioIo::new(tcp), negotiated).await,
            Connected::Tls(tls) => self.handshake(TokioIo::new(*tls), negotiated).await,
        }
    }

    async fn handshake<T>(self: Arc<Self>, io: T, negotiated: Negotiated)
    where
        T: Read + Write + Unpin + Send + 'static,
    {
        match negotiated {
            Negotiated::Http2 => match self.http2.handshake(io).await {
                Ok((sender, connection)) => self.drive_http2(sender, connection).await,
                Err(error) => self.dial_failed(ConnectError::handshake(&error)),
            },
            Negotiated::Http1 => match self.http1.handshake(io).await {
                Ok((sender, connection)) => self.drive_http1(sender, connection).await,
                Err(error) => self.dial_failed(ConnectError::handshake(&error)),
            },
        }
    }

    async fn drive_http2<T>(
        self: Arc<Self>,
        sender: http2::SendRequest<ReqBody>,
        connection: http2::Connection<T, ReqBody, TokioExecutor>,
    ) where
        T: Read + Write + Unpin + Send + 'static,
    {
        let id = self.lock().add(Sender::Http2(sender), 0, false);
        self.metrics.graph_connection_opened("h2");
        let mut connection = Box::pin(connection);
        let mut settled = false;
        let mut published = 0;
        // hyper runs the HTTP/2 connection in a task of its own and wakes this future only for
        // requests and the connection's end, so Graph's first SETTINGS are looked for on a short
        // timer, and later changes whenever a request passes.
        let settings_deadline = Instant::now() + self.connector.timeout().max(SETTINGS_WAIT_MIN);
        let mut settings_check = Box::pin(tokio::time::sleep(SETTINGS_POLL));
        let mut idle_check = Box::pin(tokio::time::sleep(self.settings.idle_timeout));
        std::future::poll_fn(|cx| {
            let polled = connection.as_mut().poll(cx);
            let limit = connection.current_max_send_streams();
            if limit != published {
                let first = !settled && limit > 0;
                settled |= first;
                self.set_limit(id, limit, first);
                published = limit;
            }
            if polled.is_ready() {
                return Poll::Ready(());
            }
            if !settled {
                if Instant::now() >= settings_deadline {
                    return Poll::Ready(());
                }
                while settings_check.as_mut().poll(cx).is_ready() {
                    let next = Instant::now() + SETTINGS_POLL;
                    settings_check.as_mut().reset(next);
                }
            }
            while idle_check.as_mut().poll(cx).is_ready() {
                let next = self
                    .close_if_idle(id)
                    // Closed: hyper says goodbye and the connection ends by itself.
                    .unwrap_or_else(|| Instant::now() + NEVER);
                idle_check.as_mut().reset(next);
            }
            Poll::Pending
        })
        .await;
        self.closed(id, !settled);
    }

    async fn drive_http1<T>(
        self: Arc<Self>,
        sender: http1::SendRequest<ReqBody>,
        connection: http1::Connection<T, ReqBody>,
    ) where
        T: Read + Write + Unpin + Send + 'static,
    {
        let id = {
            let mut state = self.lock();
            state.connecting -= 1;
            state.expected_room = Some(1);
            let id = state.add(Sender::Http1(Some(sender)), 1, true);
            state.dispatch();
            self.dial_as_needed(&mut state);
            id
        };
        self.metrics.graph_connection_opened("http1");
        let mut connection = std::pin::pin!(connection);
        let mut idle_check = std::pin::pin!(tokio::time::sleep(self.settings.idle_timeout));
        loop {
            tokio::select! {
                _ = &mut connection => break,
                () = &mut idle_check => match self.close_if_idle(id) {
                    Some(next) => idle_check.as_mut().reset(next),
                    None => break,
                },
            }
        }
        self.closed(id, false);
    }

    /// Records Graph's stream limit for a connection; the first one makes it usable.
    fn set_limit(self: &Arc<Self>, id: u64, server_limit: usize, first: bool) {
        let mut state = self.lock();
        let limit = server_limit.min(self.settings.streams_per_connection);
        if first && server_limit > 0 {
            state.connecting -= 1;
            state.expected_room = Some(limit);
        }
        if let Some(conn) = state.find(id) {
            conn.limit = limit;
            conn.settled |= first;
        }
        state.dispatch();
        self.dial_as_needed(&mut state);
    }

    /// Closes a connection that has been idle for the idle timeout, or says when to look again.
    fn close_if_idle(&self, id: u64) -> Option<Instant> {
        let mut state = self.lock();
        let conn = state.find(id)?;
        let due = conn.idle_since + self.settings.idle_timeout;
        if conn.in_flight > 0 {
            return Some(Instant::now() + self.settings.idle_timeout);
        }
        if Instant::now() < due {
            return Some(due);
        }
        tracing::debug!(connection = id, "closing an idle connection to Graph");
        state.remove(id);
        None
    }

    /// A connection ended: forget it, and dial for the calls that were waiting on it.
    fn closed(self: &Arc<Self>, id: u64, before_settings: bool) {
        let mut state = self.lock();
        if before_settings {
            state.connecting -= 1;
        }
        state.remove(id);
        self.metrics.graph_connection_closed();
        if before_settings && !state.has_room_coming() {
            state.fail_waiters(&ConnectError::no_settings());
        }
        self.dial_as_needed(&mut state);
    }

    fn dial_failed(self: &Arc<Self>, error: ConnectError) {
        tracing::debug!(%error, "a connection to Graph failed to open");
        let mut state = self.lock();
        state.connecting -= 1;
        // Calls wait for a stream while some connection may still give them one; when none can,
        // they fail now with what went wrong, so that the retry policy sees it.
        if !state.has_room_coming() {
            state.fail_waiters(&error);
        }
        self.metrics.graph_calls_waiting(state.waiters);
    }
}

// === impl State ===

impl State {
    /// A stream on the oldest usable connection with room, other than `avoid` when another has
    /// room.
    fn grant(&mut self, avoid: Option<u64>) -> Option<Grant> {
        let has_room =
            |conn: &Conn| conn.usable && conn.in_flight < conn.limit && conn.sender.is_free();
        let index = self
            .conns
            .iter()
            .position(|conn| has_room(conn) && Some(conn.id) != avoid)
            .or_else(|| self.conns.iter().position(has_room))?;
        let conn = &mut self.conns[index];
        let sender = match &mut conn.sender {
            Sender::Http2(sender) => GrantedSender::Http2(sender.clone()),
            Sender::Http1(sender) => GrantedSender::Http1(sender.take()?),
        };
        conn.in_flight += 1;
        Some(Grant {
            id: conn.id,
            sender,
        })
    }

    /// Hands free streams to waiting calls, in order.
    fn dispatch(&mut self) {
        while self.waiters > 0 {
            let Some(grant) = self.grant(None) else {
                return;
            };
            let Some(waiter) = self.pop_waiter() else {
                // Only gone calls were left in the queue.
                self.waiters = 0;
                self.put_back(grant.id, grant.sender.into_http1(), true);
                return;
            };
            if let Err(Ok(grant)) = waiter.send(Ok(grant)) {
                // Cannot happen (calls leave the queue under the lock, and are skipped), but a
                // stream must never be lost.
                self.put_back(grant.id, grant.sender.into_http1(), true);
            }
        }
    }

    /// The first waiter whose call is still there, counted out of `waiters`.
    fn pop_waiter(&mut self) -> Option<oneshot::Sender<Result<Grant, ConnectError>>> {
        while let Some(waiter) = self.waiting.pop_front() {
            if !waiter.is_closed() {
                self.waiters -= 1;
                return Some(waiter);
            }
        }
        None
    }

    /// Queues a waiting call: at the back, or at the front for a re-send.
    fn enqueue(&mut self, waiter: oneshot::Sender<Result<Grant, ConnectError>>, front: bool) {
        // Calls that gave up stay queued until reached; sweep them before they outnumber the
        // live ones, so the queue stays proportional to the calls actually waiting.
        if self.waiting.len() >= 2 * self.waiters + 64 {
            self.waiting.retain(|waiter| !waiter.is_closed());
        }
        if front {
            self.waiting.push_front(waiter);
        } else {
            self.waiting.push_back(waiter);
        }
        self.waiters += 1;
    }

    fn fail_waiters(&mut self, error: &ConnectError) {
        while let Some(waiter) = self.pop_waiter() {
            let _ = waiter.send(Err(error.clone()));
        }
    }

    /// Whether a call that waits can still get a stream: a usable connection exists or one is
    /// being opened.
    fn has_room_coming(&self) -> bool {
        self.connecting > 0 || self.conns.iter().any(|conn| conn.usable && conn.limit > 0)
    }

    fn add(&mut self, sender: Sender, limit: usize, settled: bool) -> u64 {
        self.next_id += 1;
        self.conns.push(Conn {
            id: self.next_id,
            sender,
            limit,
            in_flight: 0,
            usable: true,
            settled,
            idle_since: Instant::now(),
            resets: 0,
        });
        self.next_id
    }

    fn find(&mut self, id: u64) -> Option<&mut Conn> {
        self.conns.iter_mut().find(|conn| conn.id == id)
    }

    fn remove(&mut self, id: u64) -> bool {
        let before = self.conns.len();
        self.conns.retain(|conn| conn.id != id);
        self.conns.len() != before
    }

    /// A call is done with its stream, which goes to the next waiting call.
    fn release(&mut self, id: u64, http1: Option<http1::SendRequest<ReqBody>>, finished: bool) {
        self.put_back(id, http1, finished);
        self.dispatch();
    }

    /// A call is done with its stream.
    fn put_back(&mut self, id: u64, http1: Option<http1::SendRequest<ReqBody>>, finished: bool) {
        let Some(conn) = self.find(id) else { return };
        conn.in_flight -= 1;
        if !finished {
            conn.resets += 1;
            if conn.resets >= RESETS_BEFORE_RETIRING {
                conn.usable = false;
            }
        }
        if let Sender::Http1(slot) = &mut conn.sender {
            match http1 {
                Some(sender) if finished && !sender.is_closed() => *slot = Some(sender),
                // An HTTP/1.1 connection whose response was not read to its end, or that
                // failed, cannot carry another request; hyper closes it.
                _ => conn.usable = false,
            }
        }
        if conn.in_flight == 0 {
            conn.idle_since = Instant::now();
            if !conn.usable {
                // Retired and empty: dropping the sender lets hyper close it.
                self.remove(id);
            }
        }
    }
}

// === impl Sender ===

impl Sender {
    /// Whether it can carry one more call, streams aside: an HTTP/1.1 sender not in use.
    fn is_free(&self) -> bool {
        match self {
            Self::Http2(_) => true,
            Self::Http1(sender) => sender.is_some(),
        }
    }
}

// === impl GrantedSender ===

impl GrantedSender {
    fn into_http1(self) -> Option<http1::SendRequest<ReqBody>> {
        match self {
            Self::Http1(sender) => Some(sender),
            Self::Http2(_) => None,
        }
    }
}

// === impl Lease ===

impl Lease {
    fn new(shared: &Arc<Shared>, grant: Grant) -> (Self, GrantedSender) {
        let lease = Self {
            shared: shared.clone(),
            id: grant.id,
            http1: None,
            finished: false,
        };
        (lease, grant.sender)
    }

    /// Sends `request` on the granted stream.
    async fn send(
        &mut self,
        sender: GrantedSender,
        request: Request<ReqBody>,
    ) -> Result<Response<Incoming>, Failed> {
        let sent = match sender {
            // The HTTP/2 sender is a clone; it is not needed once the request is handed over.
            GrantedSender::Http2(mut sender) => sender.try_send_request(request).await,
            GrantedSender::Http1(mut sender) => {
                let request = origin_form(request);
                // An HTTP/1.1 connection takes the next request only once it has finished the
                // previous exchange.
                if let Err(error) = sender.ready().await {
                    return Err(Failed::Unsent(request, error));
                }
                let sending = sender.try_send_request(request);
                self.http1 = Some(sender);
                sending.await
            }
        };
        sent.map_err(|mut error| match error.take_message() {
            Some(request) => Failed::Unsent(request, error.into_error()),
            None => Failed::Sent(error.into_error()),
        })
    }

    /// The connection takes no new call; it closes once its last call ends.
    fn conn_failed(&self) {
        if let Some(conn) = self.shared.lock().find(self.id) {
            conn.usable = false;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.release(self.id, self.http1.take(), self.finished);
        self.shared.dial_as_needed(&mut state);
    }
}

/// How a request failed on its connection. Short-lived, so the request is not boxed.
#[allow(clippy::large_enum_variant)]
enum Failed {
    /// It never left the gateway: the connection was closed or going away.
    Unsent(Request<ReqBody>, hyper::Error),
    /// It may have reached Graph.
    Sent(hyper::Error),
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
    type Output = Result<Grant, ConnectError>;

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
            Ok(Ok(grant)) => state.release(grant.id, grant.sender.into_http1(), true),
            Ok(Err(_)) => {}
            Err(_) => state.waiters = state.waiters.saturating_sub(1),
        }
        self.shared.metrics.graph_calls_waiting(state.waiters);
    }
}

// === impl Body ===

impl Body {
    fn new(inner: Incoming, lease: Lease) -> Self {
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

//! The pool's connections: dialled as [`State`] asks, handed to it once they can take calls, and
//! driven (SETTINGS, idle close) until they close.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    task::Poll,
};

use hyper::{
    client::conn::{http1, http2},
    rt::{Read, Write},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::time::Instant;

use super::{
    NEVER, PoolMetrics, PoolSettings, ReqBody, ResendReason, SETTINGS_POLL, SETTINGS_WAIT_MIN,
    state::{State, StreamEnd, Streams, resend_reason},
};
use crate::egress::{ConnectError, Connected, Connector, Negotiated};

/// What every call and connection task of one pool shares.
pub(super) struct Shared {
    pub(super) state: Mutex<State<Sender>>,
    pub(super) connector: Connector,
    pub(super) settings: PoolSettings,
    pub(super) metrics: PoolMetrics,
    pub(super) http1: http1::Builder,
    pub(super) http2: http2::Builder<TokioExecutor>,
}

/// What a connection sends on.
pub(super) enum Sender {
    Http2(http2::SendRequest<ReqBody>),
    /// `None` while a call holds it: HTTP/1.1 carries one call at a time.
    Http1(Option<http1::SendRequest<ReqBody>>),
}

/// What a call is granted to send on.
pub(super) enum GrantedSender {
    Http2(http2::SendRequest<ReqBody>),
    Http1(http1::SendRequest<ReqBody>),
}

/// Why a failed request may be sent again, or `None` when Graph may have processed it.
pub(super) fn unprocessed(error: &hyper::Error) -> Option<ResendReason> {
    let h2 = std::error::Error::source(error)?.downcast_ref::<h2::Error>()?;
    if !h2.is_remote() {
        return None;
    }
    let reason = h2.reason()?;
    let end = if h2.is_go_away() {
        StreamEnd::GoAway(reason)
    } else if h2.is_reset() {
        StreamEnd::Reset(reason)
    } else {
        return None;
    };
    resend_reason(end)
}

// === impl Shared ===

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State<Sender>> {
        // The state stays consistent across every early return; a panic elsewhere must not
        // take the pool down with it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Dials while the waiting calls outnumber the room the dials in progress will bring, within
    /// the bound on connections.
    pub(super) fn dial_as_needed(self: &Arc<Self>, state: &mut State<Sender>) {
        // Every change that may need a dial may have changed the queue too.
        self.metrics.graph_calls_waiting(state.waiters());
        let dials = state.dials_needed(
            self.settings.streams_per_connection,
            self.settings.max_connections,
        );
        for _ in 0..dials {
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
            // Kept boxed: hyper spawns a task per request whose size is that of the whole
            // connection's future (an enum), so an inline TLS stream would be in every call's task.
            Connected::Tls(tls) => self.handshake(TokioIo::new(tls), negotiated).await,
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
        let id = self
            .lock()
            .opened_http2(Sender::Http2(sender), Instant::now());
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
            let id = state.opened_http1(Sender::Http1(Some(sender)), Instant::now());
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
        state.set_limit(
            id,
            server_limit,
            first,
            self.settings.streams_per_connection,
        );
        self.dial_as_needed(&mut state);
    }

    /// Closes a connection that has been idle for the idle timeout, or says when to look again.
    fn close_if_idle(&self, id: u64) -> Option<Instant> {
        self.lock()
            .close_if_idle(id, Instant::now(), self.settings.idle_timeout)
    }

    /// A connection ended: forget it, and dial for the calls that were waiting on it.
    fn closed(self: &Arc<Self>, id: u64, before_settings: bool) {
        let mut state = self.lock();
        state.closed(id, before_settings);
        self.metrics.graph_connection_closed();
        self.dial_as_needed(&mut state);
    }

    fn dial_failed(self: &Arc<Self>, error: ConnectError) {
        tracing::debug!(%error, "a connection to Graph failed to open");
        let mut state = self.lock();
        state.dial_failed(&error);
        self.metrics.graph_calls_waiting(state.waiters());
    }
}

// === impl Sender ===

impl Streams for Sender {
    type Granted = GrantedSender;

    fn take(&mut self) -> Option<GrantedSender> {
        match self {
            Self::Http2(sender) => Some(GrantedSender::Http2(sender.clone())),
            Self::Http1(sender) => sender.take().map(GrantedSender::Http1),
        }
    }

    /// Whether it can carry one more call, streams aside: an HTTP/1.1 sender not in use.
    fn is_free(&self) -> bool {
        match self {
            Self::Http2(_) => true,
            Self::Http1(sender) => sender.is_some(),
        }
    }

    fn give_back(&mut self, granted: Option<GrantedSender>, finished: bool) -> bool {
        let Self::Http1(slot) = self else {
            return true;
        };
        match granted {
            Some(GrantedSender::Http1(sender)) if finished && !sender.is_closed() => {
                *slot = Some(sender);
                true
            }
            _ => false,
        }
    }
}

//! The pool's scheduling, apart from sockets, tasks and timers: which connection takes a call,
//! when to open one, the order of the waiting calls, and which failed requests are sent again.
//! It is generic over what a connection sends on ([`Streams`]), so that its unit tests run with
//! no socket and no runtime.

use std::{collections::VecDeque, time::Duration};

use tokio::{sync::oneshot, time::Instant};

use super::RESETS_BEFORE_RETIRING;
use super::ResendReason;
use crate::egress::ConnectError;

/// What the state needs of a connection's sender.
pub(super) trait Streams {
    /// What a call is granted to send its request on.
    type Granted;

    /// A sender for one more call, streams aside, when the connection can carry one now (an
    /// HTTP/1.1 connection carries one call at a time).
    fn take(&mut self) -> Option<Self::Granted>;

    /// Whether [`Streams::take`] would give a sender.
    fn is_free(&self) -> bool;

    /// Takes back what a call was granted (if the call still has it) when the call is done, its
    /// response read to the end (`finished`) or not. Returns whether the connection can carry
    /// another call.
    fn give_back(&mut self, granted: Option<Self::Granted>, finished: bool) -> bool;
}

/// A call's place in the queue: where the stream it waits for is sent.
pub(super) type Waiting<G> = oneshot::Sender<Result<Grant<G>, ConnectError>>;

/// Everything the pool knows, behind one mutex that is never held across an await.
pub(super) struct State<S: Streams> {
    /// Open connections, oldest first.
    conns: Vec<Conn<S>>,
    /// Dials in progress: TCP, TLS, and (HTTP/2) until Graph's SETTINGS arrive.
    connecting: usize,
    /// Calls waiting for a stream, first come first served. Entries whose call has gone are
    /// skipped when reached and swept when they pile up.
    waiting: VecDeque<Waiting<S::Granted>>,
    /// How many entries of `waiting` still have a call behind them.
    waiters: usize,
    /// Calls one new connection is expected to carry: what the last connection offered.
    expected_room: Option<usize>,
    next_id: u64,
}

struct Conn<S> {
    id: u64,
    sender: S,
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

/// A stream granted to a call: the connection and what to send on.
pub(super) struct Grant<G> {
    pub(super) id: u64,
    pub(super) sender: G,
}

/// How a request's stream ended, as far as re-sending it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StreamEnd {
    /// The peer sent GOAWAY with this code, and the stream was above its last stream id.
    GoAway(h2::Reason),
    /// The peer reset the stream with this code.
    Reset(h2::Reason),
}

/// Why a failed request may be sent again, or `None` when Graph may have processed it.
pub(super) fn resend_reason(end: StreamEnd) -> Option<ResendReason> {
    match end {
        // A graceful GOAWAY fails only the streams above its last stream id, which the server
        // promises it did not process (RFC 9113 §6.8). After a GOAWAY with an error code the
        // connection may die under processed streams with the same error, so those are not
        // re-sent.
        StreamEnd::GoAway(h2::Reason::NO_ERROR) => Some(ResendReason::GoAway),
        StreamEnd::Reset(h2::Reason::REFUSED_STREAM) => Some(ResendReason::Refused),
        StreamEnd::GoAway(_) | StreamEnd::Reset(_) => None,
    }
}

// === impl State ===

impl<S: Streams> Default for State<S> {
    fn default() -> Self {
        Self {
            conns: Vec::new(),
            connecting: 0,
            waiting: VecDeque::new(),
            waiters: 0,
            expected_room: None,
            next_id: 0,
        }
    }
}

impl<S: Streams> State<S> {
    /// Open connections (draining ones included).
    pub(super) fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Dials in progress.
    pub(super) fn connecting(&self) -> usize {
        self.connecting
    }

    /// Calls waiting for a stream.
    pub(super) fn waiters(&self) -> usize {
        self.waiters
    }

    /// A stream for a call that has not queued: at once if no call is waiting before it, or if
    /// it is a re-send (which has waited already and takes any room), on another connection
    /// than `avoid` when one has room.
    pub(super) fn grant_now(&mut self, avoid: Option<u64>) -> Option<Grant<S::Granted>> {
        if self.waiters == 0 || avoid.is_some() {
            self.grant(avoid)
        } else {
            None
        }
    }

    /// How many new connections to dial now, counted as in progress: while the waiting calls
    /// outnumber the room the dials in progress will bring, within `max_connections`.
    pub(super) fn dials_needed(
        &mut self,
        streams_per_connection: usize,
        max_connections: usize,
    ) -> usize {
        let room = self.expected_room.unwrap_or(streams_per_connection).max(1);
        // Connections still waiting for SETTINGS are counted in `connecting`.
        let usable = self
            .conns
            .iter()
            .filter(|conn| conn.usable && conn.settled)
            .count();
        let mut dials = 0;
        while self.waiters > self.connecting * room && usable + self.connecting < max_connections {
            self.connecting += 1;
            dials += 1;
        }
        dials
    }

    /// A new HTTP/2 connection, which takes no call before Graph's SETTINGS (see
    /// [`State::set_limit`]); it is still counted as connecting. Returns its id.
    pub(super) fn opened_http2(&mut self, sender: S, now: Instant) -> u64 {
        self.add(sender, 0, false, now)
    }

    /// A new HTTP/1.1 connection, ready for one call at a time; the waiting calls get it.
    pub(super) fn opened_http1(&mut self, sender: S, now: Instant) -> u64 {
        self.connecting -= 1;
        self.expected_room = Some(1);
        let id = self.add(sender, 1, true, now);
        self.dispatch();
        id
    }

    /// Records Graph's stream limit for a connection, at most `streams_per_connection`; the
    /// `first` one makes it usable. Waiting calls get what room it has.
    pub(super) fn set_limit(
        &mut self,
        id: u64,
        server_limit: usize,
        first: bool,
        streams_per_connection: usize,
    ) {
        let limit = server_limit.min(streams_per_connection);
        if first && server_limit > 0 {
            self.connecting -= 1;
            self.expected_room = Some(limit);
        }
        if let Some(conn) = self.find(id) {
            conn.limit = limit;
            conn.settled |= first;
        }
        self.dispatch();
    }

    /// Closes a connection that has been idle for `idle_timeout`, or says when to look again.
    /// `None` when it is closed (or gone).
    pub(super) fn close_if_idle(
        &mut self,
        id: u64,
        now: Instant,
        idle_timeout: Duration,
    ) -> Option<Instant> {
        let conn = self.find(id)?;
        let due = conn.idle_since + idle_timeout;
        if conn.in_flight > 0 {
            return Some(now + idle_timeout);
        }
        if now < due {
            return Some(due);
        }
        tracing::debug!(connection = id, "closing an idle connection to Graph");
        self.remove(id);
        None
    }

    /// A connection ended (`before_settings`: an HTTP/2 connection that never became usable):
    /// it is forgotten, and if no connection can serve the waiting calls any more they fail.
    pub(super) fn closed(&mut self, id: u64, before_settings: bool) {
        if before_settings {
            self.connecting -= 1;
        }
        self.remove(id);
        if before_settings && !self.has_room_coming() {
            self.fail_waiters(&ConnectError::no_settings());
        }
    }

    /// A dial failed. Calls wait for a stream while some connection may still give them one;
    /// when none can, they fail now with what went wrong, so that the retry policy sees it.
    pub(super) fn dial_failed(&mut self, error: &ConnectError) {
        self.connecting -= 1;
        if !self.has_room_coming() {
            self.fail_waiters(error);
        }
    }

    /// The connection takes no new call; it closes once its last call ends.
    pub(super) fn retire(&mut self, id: u64) {
        if let Some(conn) = self.find(id) {
            conn.usable = false;
        }
    }

    /// Queues a waiting call: at the back, or at the front for a re-send.
    pub(super) fn enqueue(&mut self, waiter: Waiting<S::Granted>, front: bool) {
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

    /// A queued call gave up before it was granted a stream.
    pub(super) fn gave_up(&mut self) {
        self.waiters = self.waiters.saturating_sub(1);
    }

    /// A call is done with its stream, which goes to the next waiting call.
    pub(super) fn release(&mut self, id: u64, granted: Option<S::Granted>, finished: bool) {
        self.put_back(id, granted, finished);
        self.dispatch();
    }
}

impl<S: Streams> State<S> {
    /// A stream on the oldest usable connection with room, other than `avoid` when another has
    /// room.
    fn grant(&mut self, avoid: Option<u64>) -> Option<Grant<S::Granted>> {
        let has_room =
            |conn: &Conn<S>| conn.usable && conn.in_flight < conn.limit && conn.sender.is_free();
        let index = self
            .conns
            .iter()
            .position(|conn| has_room(conn) && Some(conn.id) != avoid)
            .or_else(|| self.conns.iter().position(has_room))?;
        let conn = &mut self.conns[index];
        let sender = conn.sender.take()?;
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
                self.put_back(grant.id, Some(grant.sender), true);
                return;
            };
            if let Err(Ok(grant)) = waiter.send(Ok(grant)) {
                // Cannot happen (calls leave the queue under the lock, and are skipped), but a
                // stream must never be lost.
                self.put_back(grant.id, Some(grant.sender), true);
            }
        }
    }

    /// The first waiter whose call is still there, counted out of `waiters`.
    fn pop_waiter(&mut self) -> Option<Waiting<S::Granted>> {
        while let Some(waiter) = self.waiting.pop_front() {
            if !waiter.is_closed() {
                self.waiters -= 1;
                return Some(waiter);
            }
        }
        None
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

    fn add(&mut self, sender: S, limit: usize, settled: bool, now: Instant) -> u64 {
        self.next_id += 1;
        self.conns.push(Conn {
            id: self.next_id,
            sender,
            limit,
            in_flight: 0,
            usable: true,
            settled,
            idle_since: now,
            resets: 0,
        });
        self.next_id
    }

    fn find(&mut self, id: u64) -> Option<&mut Conn<S>> {
        self.conns.iter_mut().find(|conn| conn.id == id)
    }

    fn remove(&mut self, id: u64) -> bool {
        let before = self.conns.len();
        self.conns.retain(|conn| conn.id != id);
        self.conns.len() != before
    }

    /// A call is done with its stream.
    fn put_back(&mut self, id: u64, granted: Option<S::Granted>, finished: bool) {
        let Some(conn) = self.find(id) else { return };
        conn.in_flight -= 1;
        if !finished {
            conn.resets += 1;
            if conn.resets >= RESETS_BEFORE_RETIRING {
                conn.usable = false;
            }
        }
        // An HTTP/1.1 connection whose response was not read to its end, or that failed,
        // cannot carry another request; hyper closes it.
        if !conn.sender.give_back(granted, finished) {
            conn.usable = false;
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

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot::{Receiver, error::TryRecvError};

    use super::*;

    /// The configured most calls on one connection, where a test does not care.
    const STREAMS: usize = 100;

    /// A connection's sender without a socket: HTTP/2 takes any number of calls (its room is the
    /// state's `limit`), HTTP/1.1 one at a time.
    #[derive(Debug)]
    enum Fake {
        H2,
        H1 { free: bool },
    }

    impl Streams for Fake {
        type Granted = ();

        fn take(&mut self) -> Option<()> {
            match self {
                Self::H2 => Some(()),
                Self::H1 { free } => std::mem::replace(free, false).then_some(()),
            }
        }

        fn is_free(&self) -> bool {
            !matches!(self, Self::H1 { free: false })
        }

        fn give_back(&mut self, granted: Option<()>, finished: bool) -> bool {
            match self {
                Self::H2 => true,
                Self::H1 { free } => {
                    *free = granted.is_some() && finished;
                    *free
                }
            }
        }
    }

    type Call = Receiver<Result<Grant<()>, ConnectError>>;

    /// An HTTP/2 connection dialled, opened and given Graph's `server_limit` (`streams` the
    /// configured most).
    fn open_h2(state: &mut State<Fake>, server_limit: usize, streams: usize) -> u64 {
        state.connecting += 1;
        let id = state.opened_http2(Fake::H2, Instant::now());
        state.set_limit(id, server_limit, true, streams);
        id
    }

    /// A call that waits in the queue (`front`: a re-send).
    fn wait(state: &mut State<Fake>, front: bool) -> Call {
        let (sender, receiver) = oneshot::channel();
        state.enqueue(sender, front);
        receiver
    }

    /// The connection a waiting call was granted a stream on, if it was.
    fn granted(call: &mut Call) -> Option<u64> {
        match call.try_recv() {
            Ok(Ok(grant)) => Some(grant.id),
            Ok(Err(error)) => panic!("the call failed: {error}"),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Closed) => panic!("the call's sender was dropped"),
        }
    }

    fn grant_now(state: &mut State<Fake>, avoid: Option<u64>) -> Option<u64> {
        state.grant_now(avoid).map(|grant| grant.id)
    }

    /// The connections that `calls` new calls, one after another, are granted a stream on.
    fn grant_in_turn(state: &mut State<Fake>, calls: usize) -> Vec<Option<u64>> {
        (0..calls).map(|_| grant_now(state, None)).collect()
    }

    #[test]
    fn a_call_takes_the_oldest_connection_with_room_so_the_load_packs_onto_few() {
        let mut state = State::default();
        let a = open_h2(&mut state, 2, STREAMS);
        let b = open_h2(&mut state, 2, STREAMS);
        assert_eq!(grant_in_turn(&mut state, 3), [Some(a), Some(a), Some(b)]);
        state.release(a, Some(()), true);
        assert_eq!(
            grant_in_turn(&mut state, 3),
            [Some(a), Some(b), None],
            "the oldest first again, until every connection is full"
        );
    }

    #[test]
    fn a_connection_takes_no_call_before_graphs_settings_and_then_the_smaller_limit() {
        let mut state = State::default();
        let mut calls: Vec<Call> = (0..3).map(|_| wait(&mut state, false)).collect();
        assert_eq!(state.dials_needed(STREAMS, 16), 1);
        let id = state.opened_http2(Fake::H2, Instant::now());
        assert_eq!(grant_now(&mut state, None), None);
        assert!(calls.iter_mut().all(|call| granted(call).is_none()));
        assert_eq!(state.connecting(), 1, "still connecting until SETTINGS");

        // Graph allows 2; the configured most is 100.
        state.set_limit(id, 2, true, STREAMS);
        assert_eq!(state.connecting(), 0);
        let served: Vec<Option<u64>> = calls.iter_mut().map(granted).collect();
        assert_eq!(served, [Some(id), Some(id), None]);
        assert_eq!(state.waiters(), 1);

        // Graph allows 100; the configured most is 1.
        let mut state = State::default();
        let id = open_h2(&mut state, 100, 1);
        assert_eq!(grant_in_turn(&mut state, 2), [Some(id), None]);
    }

    #[test]
    fn calls_already_waiting_go_first_and_a_resend_goes_ahead_of_them_on_another_connection() {
        let mut state = State::default();
        let a = open_h2(&mut state, 1, STREAMS);
        let b = open_h2(&mut state, 1, STREAMS);
        assert_eq!(grant_now(&mut state, None), Some(a));
        let mut queued = wait(&mut state, false);
        assert_eq!(
            grant_now(&mut state, None),
            None,
            "b's room is the waiting call's"
        );
        // A re-send of what failed on `a` takes the room on `b`, though a call waits.
        assert_eq!(grant_now(&mut state, Some(a)), Some(b));
        // When only the connection it failed on has room, it takes that.
        state.release(b, Some(()), true);
        assert_eq!(granted(&mut queued), Some(b));
        state.release(a, Some(()), true);
        assert_eq!(grant_now(&mut state, Some(a)), Some(a));

        // Every connection full: a re-send waits at the front of the queue.
        let mut first = wait(&mut state, false);
        let mut resend = wait(&mut state, true);
        state.release(b, Some(()), true);
        assert_eq!(granted(&mut resend), Some(b));
        assert_eq!(granted(&mut first), None);
        state.release(a, Some(()), true);
        assert_eq!(granted(&mut first), Some(a));
    }

    #[test]
    fn waiting_calls_are_served_first_come_first_served_and_calls_that_gave_up_are_skipped() {
        let mut state = State::default();
        let id = open_h2(&mut state, 1, STREAMS);
        assert_eq!(grant_now(&mut state, None), Some(id));
        let mut calls: Vec<Call> = (0..4).map(|_| wait(&mut state, false)).collect();
        // The second call gives up (its deadline), as `Waiter`'s drop tells the state.
        drop(calls.remove(1));
        state.gave_up();
        assert_eq!(state.waiters(), 3);
        let mut served = vec![false; calls.len()];
        for turn in 0..calls.len() {
            state.release(id, Some(()), true);
            for (call, served) in calls.iter_mut().zip(&mut served) {
                *served = *served || granted(call).is_some();
            }
            let expected: Vec<bool> = (0..calls.len()).map(|index| index <= turn).collect();
            assert_eq!(
                served, expected,
                "turn {turn}: the first call still waiting"
            );
        }
        assert_eq!(state.waiters(), 0);
    }

    #[test]
    fn a_stream_freed_when_only_calls_that_gave_up_are_queued_is_not_lost() {
        let mut state = State::default();
        let id = open_h2(&mut state, 1, STREAMS);
        assert_eq!(grant_now(&mut state, None), Some(id));
        // The call goes before it could tell the state (a race the state must survive).
        drop(wait(&mut state, false));
        state.release(id, Some(()), true);
        assert_eq!(state.waiters(), 0);
        assert_eq!(
            grant_now(&mut state, None),
            Some(id),
            "the stream is still there"
        );
    }

    #[test]
    fn a_burst_dials_one_connection_per_connections_worth_of_waiting_calls_up_to_the_most() {
        let mut state = State::default();
        let _calls: Vec<Call> = (0..250).map(|_| wait(&mut state, false)).collect();
        // Before any connection said its room, a connection is expected to carry `STREAMS`.
        assert_eq!(state.dials_needed(STREAMS, 16), 3);
        assert_eq!(
            state.dials_needed(STREAMS, 16),
            0,
            "the dials in progress will do"
        );
        let _more: Vec<Call> = (0..100).map(|_| wait(&mut state, false)).collect();
        assert_eq!(state.dials_needed(STREAMS, 16), 1);
        assert_eq!(state.connecting(), 4);

        // Never more than the most connections, however many calls wait.
        let mut state = State::default();
        let _calls: Vec<Call> = (0..10_000).map(|_| wait(&mut state, false)).collect();
        assert_eq!(state.dials_needed(STREAMS, 2), 2);

        // Once a connection offered less room, the next dials expect that much.
        let mut state = State::default();
        let _calls: Vec<Call> = (0..250).map(|_| wait(&mut state, false)).collect();
        assert_eq!(state.dials_needed(STREAMS, 16), 3);
        let id = state.opened_http2(Fake::H2, Instant::now());
        state.set_limit(id, 10, true, STREAMS);
        assert_eq!(state.waiters(), 240);
        assert_eq!(state.dials_needed(STREAMS, 16), 13);
        assert_eq!(state.connections() + state.connecting(), 16);
    }

    #[test]
    fn waiting_calls_fail_with_the_reason_once_no_connection_can_come_and_not_before() {
        let mut state = State::default();
        let mut calls: Vec<Call> = (0..2).map(|_| wait(&mut state, false)).collect();
        assert_eq!(state.dials_needed(1, 16), 2);
        let error = ConnectError::gone();
        state.dial_failed(&error);
        assert!(
            calls.iter_mut().all(|call| granted(call).is_none()),
            "another dial is in progress"
        );
        state.dial_failed(&error);
        for call in &mut calls {
            let failed = call.try_recv().expect("an answer");
            assert_eq!(
                failed.err().map(|error| error.to_string()),
                Some(error.to_string())
            );
        }
        assert_eq!(state.waiters(), 0);

        // A connection that closes before Graph's SETTINGS fails the calls when it was the last.
        let mut state = State::default();
        let mut call = wait(&mut state, false);
        assert_eq!(state.dials_needed(STREAMS, 16), 1);
        let id = state.opened_http2(Fake::H2, Instant::now());
        state.closed(id, true);
        let failed = call.try_recv().expect("an answer");
        assert_eq!(
            failed.err().map(|error| error.to_string()),
            Some(ConnectError::no_settings().to_string())
        );
        assert_eq!((state.connections(), state.connecting()), (0, 0));
    }

    #[test]
    fn a_connection_that_reset_too_many_streams_is_retired_and_closed_once_empty() {
        let mut state = State::default();
        let id = open_h2(&mut state, STREAMS, STREAMS);
        for _ in 1..RESETS_BEFORE_RETIRING {
            assert_eq!(grant_now(&mut state, None), Some(id));
            // The call was dropped at its deadline: its stream was reset.
            state.release(id, Some(()), false);
        }
        assert_eq!(grant_in_turn(&mut state, 2), [Some(id), Some(id)]);
        state.release(id, Some(()), false);
        assert_eq!(grant_now(&mut state, None), None, "retired: no new call");
        assert_eq!(state.connections(), 1, "one call still on it");
        state.release(id, Some(()), true);
        assert_eq!(state.connections(), 0, "closed once empty");
    }

    #[test]
    fn an_http1_connection_carries_one_call_at_a_time_and_none_after_an_unread_answer() {
        let mut state = State::default();
        let mut call = wait(&mut state, false);
        assert_eq!(state.dials_needed(STREAMS, 16), 1);
        let id = state.opened_http1(Fake::H1 { free: true }, Instant::now());
        assert_eq!(
            granted(&mut call),
            Some(id),
            "the waiting call gets it at once"
        );
        assert_eq!(grant_now(&mut state, None), None, "one call at a time");
        state.release(id, Some(()), true);
        assert_eq!(grant_now(&mut state, None), Some(id));
        // The answer was not read to its end: the connection cannot carry another request.
        state.release(id, Some(()), false);
        assert_eq!(state.connections(), 0);

        // A dial after an HTTP/1.1 connection expects room for one call.
        let _calls: Vec<Call> = (0..3).map(|_| wait(&mut state, false)).collect();
        assert_eq!(state.dials_needed(STREAMS, 16), 3);
    }

    #[test]
    fn an_idle_connection_closes_after_the_idle_timeout_and_a_busy_one_stays() {
        let idle = Duration::from_secs(50);
        let mut state = State::default();
        let id = open_h2(&mut state, 1, STREAMS);
        let now = Instant::now();
        let due = state
            .close_if_idle(id, now, idle)
            .expect("not idle long enough");
        assert!(due > now && due <= now + idle, "{due:?}");
        assert_eq!(grant_now(&mut state, None), Some(id));
        let later = now + 3 * idle;
        assert_eq!(state.close_if_idle(id, later, idle), Some(later + idle));
        state.release(id, Some(()), true);
        let released = Instant::now();
        assert!(state.close_if_idle(id, released + idle / 2, idle).is_some());
        assert_eq!(state.connections(), 1);
        assert_eq!(state.close_if_idle(id, released + 2 * idle, idle), None);
        assert_eq!(state.connections(), 0);
    }

    #[test]
    fn only_what_graph_provably_did_not_process_is_sent_again() {
        use h2::Reason;
        let cases = [
            (
                StreamEnd::GoAway(Reason::NO_ERROR),
                Some(ResendReason::GoAway),
            ),
            (
                StreamEnd::Reset(Reason::REFUSED_STREAM),
                Some(ResendReason::Refused),
            ),
            // After a GOAWAY with an error code, processed streams may fail the same way.
            (StreamEnd::GoAway(Reason::PROTOCOL_ERROR), None),
            (StreamEnd::GoAway(Reason::INTERNAL_ERROR), None),
            (StreamEnd::GoAway(Reason::ENHANCE_YOUR_CALM), None),
            (StreamEnd::GoAway(Reason::REFUSED_STREAM), None),
            (StreamEnd::Reset(Reason::NO_ERROR), None),
            (StreamEnd::Reset(Reason::CANCEL), None),
            (StreamEnd::Reset(Reason::INTERNAL_ERROR), None),
        ];
        for (end, expected) in cases {
            assert_eq!(resend_reason(end), expected, "{end:?}");
        }
    }

    #[test]
    fn the_queue_of_calls_that_gave_up_stays_bounded() {
        let mut state = State::default();
        let id = open_h2(&mut state, 1, STREAMS);
        assert_eq!(grant_now(&mut state, None), Some(id));
        let _live: Vec<Call> = (0..10).map(|_| wait(&mut state, false)).collect();
        for _ in 0..100_000 {
            drop(wait(&mut state, false));
            state.gave_up();
        }
        assert_eq!(state.waiters(), 10);
        assert!(
            state.waiting.len() <= 2 * 10 + 64 + 1,
            "{}",
            state.waiting.len()
        );
    }
}

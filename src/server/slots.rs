//! The cap on a listener's open connections (`--max-connections`), and which connections give
//! way to new ones.
//!
//! At the cap, a new connection takes the place of the oldest connection that has not finished
//! its handshake, if there is one: a flood of connections that never speak (a slowloris) then
//! churns among itself instead of locking out callers, who finish their handshake in a round
//! trip. Else it takes the place of the connection that has been idle (no open stream) the
//! longest: connections a client opened and forgot (a leak), or that a hostile client keeps
//! alive by answering PINGs, cannot lock out callers either. A connection with a stream open
//! (a call, a health `Watch`) is never displaced; when every connection has one, the new
//! connection is closed at once. Either way, one connection is closed because of the cap, and
//! counted.
//!
//! Each served connection also learns when it went idle, for `--idle-connection-timeout`.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The open connections of one listener. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionSlots {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    open: usize,
    next_id: u64,
    /// The connections still in their handshake, oldest first, and how to close each.
    handshaking: VecDeque<(u64, CancellationToken)>,
    /// The served connections, by ID.
    served: HashMap<u64, Served>,
    /// The served connections without an open stream, longest idle first: keyed by the order in
    /// which they went idle (`next_idle`), valued by connection ID.
    idle: BTreeMap<u64, u64>,
    next_idle: u64,
}

/// A served connection's streams.
#[derive(Debug)]
struct Served {
    /// How many streams are open.
    streams: usize,
    /// Its key in [`State::idle`] while it has no stream open.
    idle_key: Option<u64>,
    displaced: CancellationToken,
    /// Since when it has had no stream open (`None` while it has one, and in its handshake).
    /// Nothing is told when it changes: [`Slot::idle_for`] reads it when it could matter.
    idle_since: Option<Instant>,
}

/// An open connection's place under the cap, given back when the last clone is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    inner: Arc<SlotInner>,
}

#[derive(Debug)]
struct SlotInner {
    id: u64,
    /// Fires when a newer connection took this one's place.
    displaced: CancellationToken,
    slots: ConnectionSlots,
}

/// An open stream of a served connection: the connection is not idle while it lives.
#[derive(Debug)]
pub(crate) struct OpenStream {
    slot: Slot,
}

/// What happened to a new connection at the cap.
#[derive(Debug)]
pub(crate) enum Admitted {
    /// Room for it (perhaps made by displacing an older connection still in its handshake, or
    /// idle).
    Open(Slot),
    /// No room: close it at once.
    Refused,
}

// === impl ConnectionSlots ===

impl ConnectionSlots {
    /// Room for `max` open connections.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                max,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Makes room for a new connection, which starts in its handshake.
    pub(crate) fn admit(&self) -> Admitted {
        let mut state = self.lock();
        if state.open >= self.inner.max {
            let displaced = match state.handshaking.pop_front() {
                Some((id, displaced)) => {
                    state.served.remove(&id);
                    displaced
                }
                None => {
                    let Some((_, id)) = state.idle.pop_first() else {
                        return Admitted::Refused;
                    };
                    let Some(served) = state.served.remove(&id) else {
                        return Admitted::Refused;
                    };
                    served.displaced
                }
            };
            // Its slot passes to the new connection; its task sees the token and closes it.
            displaced.cancel();
            state.open -= 1;
        }
        state.open += 1;
        let id = state.next_id;
        state.next_id += 1;
        let displaced = CancellationToken::new();
        state.handshaking.push_back((id, displaced.clone()));
        state.served.insert(
            id,
            Served {
                streams: 0,
                idle_key: None,
                displaced: displaced.clone(),
                // Not idle until its handshake is done.
                idle_since: None,
            },
        );
        Admitted::Open(Slot {
            inner: Arc::new(SlotInner {
                id,
                displaced,
                slots: self.clone(),
            }),
        })
    }

    /// How many connections are open now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.lock().open
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: no code here panics while
        // holding it.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

// === impl State ===

impl State {
    /// Marks the served connection `id` idle from now.
    fn went_idle(&mut self, id: u64) {
        let key = self.next_idle;
        let Some(served) = self.served.get_mut(&id) else {
            return;
        };
        self.next_idle += 1;
        served.idle_key = Some(key);
        served.idle_since = Some(Instant::now());
        self.idle.insert(key, id);
    }
}

// === impl Slot ===

impl Slot {
    /// Marks the handshake done: from now on the connection gives way only while idle.
    pub(crate) fn handshake_done(&self) {
        let mut state = self.inner.slots.lock();
        let id = self.inner.id;
        if let Some(index) = state.handshaking.iter().position(|(each, _)| *each == id) {
            state.handshaking.remove(index);
            state.went_idle(id);
        }
    }

    /// Counts a stream open on this connection until the returned value is dropped.
    pub(crate) fn stream_opened(&self) -> OpenStream {
        let mut state = self.inner.slots.lock();
        if let Some(served) = state.served.get_mut(&self.inner.id) {
            served.streams += 1;
            if let Some(key) = served.idle_key.take() {
                served.idle_since = None;
                state.idle.remove(&key);
            }
        }
        OpenStream { slot: self.clone() }
    }

    /// Completes when a newer connection has taken this one's place.
    pub(crate) async fn displaced(&self) {
        self.inner.displaced.cancelled().await;
    }

    /// Completes once the connection has had no stream open for `timeout`.
    ///
    /// It reads the connection's state only when the connection could have been idle that long,
    /// so a stream opening or closing wakes nothing: with a notification per change, every call
    /// on a connection that goes idle between calls woke the connection's task twice.
    pub(crate) async fn idle_for(&self, timeout: Duration) {
        loop {
            let now = Instant::now();
            let wake_at = match self.idle_since() {
                Some(Some(since)) if since + timeout <= now => return,
                Some(Some(since)) => since + timeout,
                // A stream is open: whenever it ends, the connection cannot have been idle for
                // `timeout` before `timeout` from now.
                Some(None) => now + timeout,
                // Displaced (no longer served): `displaced` ends the connection.
                None => return std::future::pending().await,
            };
            tokio::time::sleep_until(wake_at).await;
        }
    }

    /// Since when the connection has had no stream open; `None` if it is no longer served.
    fn idle_since(&self) -> Option<Option<Instant>> {
        let state = self.inner.slots.lock();
        state
            .served
            .get(&self.inner.id)
            .map(|served| served.idle_since)
    }
}

impl Drop for SlotInner {
    fn drop(&mut self) {
        let mut state = self.slots.lock();
        if let Some(served) = state.served.remove(&self.id)
            && let Some(key) = served.idle_key
        {
            state.idle.remove(&key);
        }
        // A displaced connection's slot already belongs to the one that displaced it.
        if self.displaced.is_cancelled() {
            return;
        }
        state.open -= 1;
        if let Some(index) = state.handshaking.iter().position(|(id, _)| *id == self.id) {
            state.handshaking.remove(index);
        }
    }
}

// === impl OpenStream ===

impl Drop for OpenStream {
    fn drop(&mut self) {
        let id = self.slot.inner.id;
        let mut state = self.slot.inner.slots.lock();
        let Some(served) = state.served.get_mut(&id) else {
            return;
        };
        served.streams = served.streams.saturating_sub(1);
        if served.streams == 0 {
            state.went_idle(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(admitted: Admitted) -> Slot {
        match admitted {
            Admitted::Open(slot) => slot,
            Admitted::Refused => panic!("refused"),
        }
    }

    fn displaced(slot: &Slot) -> bool {
        slot.inner.displaced.is_cancelled()
    }

    #[test]
    fn at_the_cap_the_oldest_handshake_makes_room_then_the_longest_idle() {
        let slots = ConnectionSlots::new(2);
        let first = open(slots.admit());
        let second = open(slots.admit());
        second.handshake_done();

        let third = open(slots.admit());
        assert!(displaced(&first), "the oldest handshake gave way");
        assert!(!displaced(&second));
        assert_eq!(slots.open(), 2);
        drop(first);
        assert_eq!(slots.open(), 2, "a displaced slot is not given back twice");

        // Both served now: `second` has been idle longer than `third`.
        third.handshake_done();
        let fourth = open(slots.admit());
        assert!(displaced(&second), "the longest idle gave way");
        assert!(!displaced(&third));
        drop(second);
        assert_eq!(slots.open(), 2);

        // A connection with a stream open never gives way.
        fourth.handshake_done();
        let _third_busy = third.stream_opened();
        let _fourth_busy = fourth.stream_opened();
        assert!(
            matches!(slots.admit(), Admitted::Refused),
            "nothing to displace"
        );
        drop(_third_busy);
        let _fifth = open(slots.admit());
        assert!(displaced(&third), "idle again once its stream ended");
        assert!(!displaced(&fourth));
        drop(third);
        drop(_fourth_busy);
        drop(fourth);
        assert_eq!(slots.open(), 1);
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn streams_opening_and_closing_do_not_wake_the_idle_timer() {
        let slots = ConnectionSlots::new(1);
        let slot = open(slots.admit());
        slot.handshake_done();
        let wakes = Arc::new(Wakes::default());
        let waker = std::task::Waker::from(wakes.clone());
        let idle = slot.idle_for(Duration::from_secs(3600));
        tokio::pin!(idle);
        let mut context = std::task::Context::from_waker(&waker);
        assert!(idle.as_mut().poll(&mut context).is_pending());
        // A connection that goes idle between calls, as most do.
        for _ in 0..100 {
            drop(slot.stream_opened());
        }
        assert_eq!(
            wakes.0.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the connection's task was woken by its own calls"
        );
        assert!(idle.as_mut().poll(&mut context).is_pending());
    }

    #[tokio::test]
    async fn idle_for_counts_from_the_end_of_the_last_stream() {
        let slots = ConnectionSlots::new(2);
        let slot = open(slots.admit());
        slot.handshake_done();
        let stream = slot.stream_opened();
        let timeout = Duration::from_millis(100);
        let idle = slot.idle_for(timeout);
        tokio::pin!(idle);
        // Three timeouts long: a timer counting from the handshake would have fired.
        assert!(
            tokio::time::timeout(3 * timeout, idle.as_mut())
                .await
                .is_err(),
            "not idle while a stream is open"
        );
        drop(stream);
        let ended = Instant::now();
        idle.await;
        assert!(ended.elapsed() >= timeout);
    }
}

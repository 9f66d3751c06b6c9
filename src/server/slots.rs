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

use tokio::{sync::watch, time::Instant};
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
    /// Since when it has had no stream open (`None` while it has one).
    idle_since: watch::Sender<Option<Instant>>,
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
    idle_since: watch::Receiver<Option<Instant>>,
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
        // Not idle until its handshake is done.
        let (idle_tx, idle_since) = watch::channel(None);
        state.served.insert(
            id,
            Served {
                streams: 0,
                idle_key: None,
                displaced: displaced.clone(),
                idle_since: idle_tx,
            },
        );
        Admitted::Open(Slot {
            inner: Arc::new(SlotInner {
                id,
                displaced,
                slots: self.clone(),
                idle_since,
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
        served.idle_since.send_replace(Some(Instant::now()));
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
                served.idle_since.send_replace(None);
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
    pub(crate) async fn idle_for(&self, timeout: Duration) {
        let mut idle_since = self.inner.idle_since.clone();
        loop {
            let since = *idle_since.borrow_and_update();
            let changed = match since {
                Some(since) => tokio::select! {
                    () = tokio::time::sleep_until(since + timeout) => return,
                    changed = idle_since.changed() => changed,
                },
                None => idle_since.changed().await,
            };
            if changed.is_err() {
                // The connection was displaced: `displaced` ends it.
                std::future::pending::<()>().await;
            }
        }
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

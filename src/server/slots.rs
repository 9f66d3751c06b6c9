//! The cap on a listener's open connections (`--max-connections`).
//!
//! At the cap, a new connection takes the place of the oldest connection that has not finished
//! its handshake, if there is one: a flood of connections that never speak (a slowloris) then
//! churns among itself instead of locking out callers, who finish their handshake in a round
//! trip and are never displaced after it. When every open connection has finished its
//! handshake, the new connection is closed at once. Either way, one connection is closed
//! because of the cap, and counted.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

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
}

/// An open connection's place under the cap, given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    id: u64,
    /// Fires when a newer connection took this one's place.
    displaced: CancellationToken,
    slots: ConnectionSlots,
}

/// What happened to a new connection at the cap.
#[derive(Debug)]
pub(crate) enum Admitted {
    /// Room for it (perhaps made by displacing an older connection still in its handshake).
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
            let Some((_, displaced)) = state.handshaking.pop_front() else {
                return Admitted::Refused;
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
        Admitted::Open(Slot {
            id,
            displaced,
            slots: self.clone(),
        })
    }

    /// How many connections are open now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.lock().open
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every change is one statement.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

// === impl Slot ===

impl Slot {
    /// Marks the handshake done: from now on the connection is never displaced.
    pub(crate) fn handshake_done(&self) {
        let mut state = self.slots.lock();
        if let Some(index) = state.handshaking.iter().position(|(id, _)| *id == self.id) {
            state.handshaking.remove(index);
        }
    }

    /// Completes when a newer connection has taken this one's place.
    pub(crate) async fn displaced(&self) {
        self.displaced.cancelled().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // A displaced connection's slot already belongs to the one that displaced it.
        if self.displaced.is_cancelled() {
            return;
        }
        let mut state = self.slots.lock();
        state.open -= 1;
        if let Some(index) = state.handshaking.iter().position(|(id, _)| *id == self.id) {
            state.handshaking.remove(index);
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

    #[test]
    fn at_the_cap_the_oldest_handshake_makes_room_and_served_connections_never_do() {
        let slots = ConnectionSlots::new(2);
        let first = open(slots.admit());
        let second = open(slots.admit());
        second.handshake_done();

        let third = open(slots.admit());
        assert!(
            first.displaced.is_cancelled(),
            "the oldest handshake gave way"
        );
        assert!(!second.displaced.is_cancelled());
        assert_eq!(slots.open(), 2);
        drop(first);
        assert_eq!(slots.open(), 2, "a displaced slot is not given back twice");

        third.handshake_done();
        assert!(
            matches!(slots.admit(), Admitted::Refused),
            "nothing to displace"
        );
        drop(second);
        assert_eq!(slots.open(), 1);
        let _fourth = open(slots.admit());
        assert_eq!(slots.open(), 2);
    }
}

//! The throttle gate: when Graph throttles a tenant and app (429, or 503 with `Retry-After`), the
//! gateway stops sending that key's calls until the window ends, instead of letting each call
//! find out on its own. Graph's limits apply per app and per tenant, and "all requests accrue
//! against your usage limits", so a client that keeps sending while throttled stays throttled
//! longer; the gateway is the one place that sees every caller of the same app.
//!
//! - The key is the tenant (`tid`) and app (`appid`, else `azp`) read from the token sent to
//!   Graph, without verifying it: for grouping only, never for trust. A token that is not a JWT,
//!   or whose claims are not GUIDs, falls under one shared key.
//! - While a key's window is open, its calls wait at the gate within their deadlines; a call
//!   whose deadline ends before the window does is turned away at once with what is left of it.
//! - When the window ends, the first call waiting goes alone (the probe). If Graph accepts it
//!   (or answers anything but a throttle), the other calls go, in the order they arrived; if
//!   Graph throttles it, a new window opens.
//! - Memory stays bounded: only keys with a window open or a probe out are kept, at most
//!   [`MAX_KEYS`] of them, and a key's queue drops calls that gave up as it grows.
//!
//! [`Windows`] is the gate's pure state machine (no clock, no channels of its own); the
//! [`ThrottleGate`] handle around it adds the mutex, the timers, the channels, the metrics and
//! the logs. With no window open anywhere, a call pays one atomic load per attempt.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use base64::{
    Engine,
    alphabet::URL_SAFE,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use http::StatusCode;
use serde::Deserialize;
use tokio::{sync::oneshot, time::Instant};
use uuid::Uuid;

use super::ThrottleMetrics;
use crate::{auth::BearerToken, backoff::backoff};

/// The most keys the gate tracks at once (each with a window open or a probe out). Beyond it a
/// throttled key gets today's per-call behaviour: the gate's memory never depends on how many
/// distinct tokens callers send.
pub const MAX_KEYS: usize = 10_000;

/// The most bytes of a token's payload segment the gate decodes to read the key. Entra ID's
/// tokens are a few kilobytes; a longer one falls under the shared key unread.
const MAX_PAYLOAD: usize = 16 * 1024;

/// A key's queue is swept of calls that gave up when it reaches this length, and then again
/// each time it doubles.
const COMPACT_MIN: usize = 64;

/// base64url as JWTs use it: without padding, but a padded segment is read too.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// What Graph's throttling is counted against: a tenant and an app, as the token sent to Graph
/// names them (unverified). Both `None` is the shared key of tokens that are not JWTs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ThrottleKey {
    tenant: Option<Uuid>,
    app: Option<Uuid>,
}

/// A throttling answer from Graph: what opens a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// 429, or 503 with `Retry-After`.
    pub status: StatusCode,
    /// Graph's `Retry-After`, already bounded by `--retry-after-max`; without one, the window
    /// lasts the retry policy's backoff.
    pub retry_after: Option<Duration>,
}

/// Why a call did not pass the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// The call's deadline ends before its key's window does: it was turned away at once.
    TooLate(Refusal),
    /// The deadline ran out while the call waited (for a probe's answer).
    DeadlineExceeded,
}

/// A call turned away because its deadline ends inside its key's throttle window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// What is left of the window.
    pub wait: Duration,
    /// The HTTP status that opened the window: 429, or 503.
    pub status: StatusCode,
}

/// The throttle gate: one per Graph client, shared by every call. Cheap to clone. With the gate
/// off it holds nothing and every call passes.
#[derive(Debug, Clone)]
pub struct ThrottleGate {
    inner: Option<Arc<Gate>>,
}

/// One call's way through the gate, from its first attempt to its answer: its key (read only
/// when needed), whether it is the probe, and how long it was held.
#[derive(Debug)]
pub struct GateCall<'a> {
    gate: Option<&'a Arc<Gate>>,
    token: &'a BearerToken,
    key: Option<ThrottleKey>,
    probe: Option<ProbeGuard>,
    /// Whether the call was the probe and Graph throttled it: it keeps its place, first in line.
    first_in_line: bool,
    held: Duration,
}

// === impl ThrottleKey ===

impl ThrottleKey {
    /// The key of tokens that are not JWTs, or that name no tenant and no app.
    pub const SHARED: Self = Self {
        tenant: None,
        app: None,
    };

    /// The key of the token sent to Graph.
    pub fn of(token: &BearerToken) -> Self {
        Self::from_token(token.token_bytes())
    }

    /// Reads `tid` and `appid` (else `azp`) from a JWS compact token's payload, without checking
    /// its signature: Graph checks the token; the gate only groups calls the way Graph counts
    /// them. Anything unreadable gives [`Self::SHARED`].
    fn from_token(token: &[u8]) -> Self {
        /// The only claims the gate reads.
        #[derive(Deserialize)]
        struct Claims {
            tid: Option<String>,
            appid: Option<String>,
            azp: Option<String>,
        }
        let mut segments = token.split(|&b| b == b'.');
        let (Some(_header), Some(payload), Some(_signature), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Self::SHARED;
        };
        if payload.len() > MAX_PAYLOAD {
            return Self::SHARED;
        }
        let Ok(json) = BASE64URL.decode(payload) else {
            return Self::SHARED;
        };
        let Ok(claims) = serde_json::from_slice::<Claims>(&json) else {
            return Self::SHARED;
        };
        let guid = |claim: Option<String>| claim.and_then(|value| Uuid::try_parse(&value).ok());
        Self {
            tenant: guid(claims.tid),
            app: guid(claims.appid).or_else(|| guid(claims.azp)),
        }
    }

    /// The tenant, as logs show it: a GUID, or `unknown`.
    pub fn tenant(&self) -> Shown {
        Shown(self.tenant)
    }

    /// The app, as logs show it: a GUID, or `unknown`.
    pub fn app(&self) -> Shown {
        Shown(self.app)
    }
}

/// A tenant or app ID as logs show it. Only a parsed GUID is ever printed, never the token's text.
#[derive(Debug, Clone, Copy)]
pub struct Shown(Option<Uuid>);

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => id.hyphenated().fmt(f),
            None => f.write_str("unknown"),
        }
    }
}

// === impl ThrottleGate ===

impl ThrottleGate {
    /// A gate that holds calls while Graph throttles their key, counting in `metrics`; with
    /// `enabled` false, one that lets every call pass (each call then backs off on its own).
    pub fn new(enabled: bool, metrics: ThrottleMetrics) -> Self {
        Self {
            inner: enabled.then(|| {
                Arc::new(Gate {
                    windows: Mutex::new(Windows::new(MAX_KEYS)),
                    active: AtomicUsize::new(0),
                    metrics,
                })
            }),
        }
    }

    /// A call that will send `token` to Graph.
    pub fn call<'a>(&'a self, token: &'a BearerToken) -> GateCall<'a> {
        GateCall {
            gate: self.inner.as_ref(),
            token,
            key: None,
            probe: None,
            first_in_line: false,
            held: Duration::ZERO,
        }
    }
}

// === impl GateCall ===

impl GateCall<'_> {
    /// Waits until the call may send an attempt: at once when its key has no window open;
    /// otherwise until the window ends and Graph has accepted a probe (or this call is the probe),
    /// within `deadline`.
    pub async fn wait(&mut self, deadline: Instant) -> Result<(), Held> {
        match self.gate {
            // The fast path: no window open anywhere, so the token is not even read.
            Some(gate) if gate.active.load(Ordering::Acquire) > 0 => {}
            _ => return Ok(()),
        }
        // Boxed, so that the state of a wait is not part of every call's future.
        Box::pin(self.wait_at_gate(deadline)).await
    }

    /// Tells the gate how Graph answered the attempt just sent: `Some` for a throttle (429, or
    /// 503 with `Retry-After`), `None` for anything else. Returns whether the key now has a
    /// window open, so that a retry waits at the gate rather than on its own.
    pub fn answered(&mut self, throttle: Option<Throttle>) -> bool {
        let Some(gate) = self.gate else {
            return false;
        };
        let probe = self.probe.take().map(ProbeGuard::disarm);
        match throttle {
            None => {
                if let Some((key, id)) = probe {
                    gate.probe_accepted(key, id);
                }
                false
            }
            Some(throttle) => {
                self.first_in_line = probe.is_some();
                let key = *self.key.get_or_insert_with(|| ThrottleKey::of(self.token));
                gate.throttled(key, throttle)
            }
        }
    }

    /// How long the call waited at the gate, in all.
    pub fn held(&self) -> Duration {
        self.held
    }

    async fn wait_at_gate(&mut self, deadline: Instant) -> Result<(), Held> {
        let Some(gate) = self.gate else {
            return Ok(());
        };
        let key = *self.key.get_or_insert_with(|| ThrottleKey::of(self.token));
        let mut receiver = None;
        let first_in_line = std::mem::take(&mut self.first_in_line);
        let arrival = gate
            .lock()
            .arrive(key, deadline, Instant::now(), first_in_line, || {
                let (sender, waiting) = oneshot::channel();
                receiver = Some(waiting);
                sender
            });
        let receiver = match (arrival, receiver) {
            (Arrival::Pass, _) | (Arrival::Wait, None) => return Ok(()),
            (Arrival::TooLate(refusal), _) => return Err(Held::TooLate(refusal)),
            (Arrival::Wait, Some(receiver)) => receiver,
        };
        let _held = gate.metrics.call_held();
        let started = Instant::now();
        let verdict = tokio::time::timeout_at(deadline, receiver).await;
        self.held += started.elapsed();
        match verdict {
            // A closed channel cannot happen while the gate lives; passing is the safe reading.
            Ok(Ok(Verdict::Go) | Err(_)) => Ok(()),
            Ok(Ok(Verdict::Probe(guard))) => {
                self.probe = Some(guard);
                Ok(())
            }
            Ok(Ok(Verdict::TooLate(refusal))) => Err(Held::TooLate(refusal)),
            Err(_) => Err(Held::DeadlineExceeded),
        }
    }
}

/// The shared state behind [`ThrottleGate`].
#[derive(Debug)]
struct Gate {
    /// A std mutex: it is held for a few map and queue operations, never across an await.
    windows: Mutex<Windows<oneshot::Sender<Verdict>>>,
    /// How many keys have a window open or a probe out: zero is the fast path.
    active: AtomicUsize,
    metrics: ThrottleMetrics,
}

/// What a waiting call is told.
#[derive(Debug)]
enum Verdict {
    /// Send.
    Go,
    /// Send alone, first after the window: the others wait for Graph's answer to this one.
    Probe(ProbeGuard),
    /// A new window ends after the call's deadline.
    TooLate(Refusal),
}

/// The probe's place: if the probe's call ends without an answer (its deadline ran out, its
/// caller went away), dropping this hands the place to the next call waiting.
#[derive(Debug)]
struct ProbeGuard {
    gate: Arc<Gate>,
    key: ThrottleKey,
    id: ProbeId,
    armed: bool,
}

// === impl ProbeGuard ===

impl ProbeGuard {
    /// The probe has an answer: no hand-over on drop.
    fn disarm(mut self) -> (ThrottleKey, ProbeId) {
        self.armed = false;
        (self.key, self.id)
    }
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if self.armed {
            self.gate.probe_abandoned(self.key, self.id);
        }
    }
}

impl Waiter for oneshot::Sender<Verdict> {
    fn is_gone(&self) -> bool {
        self.is_closed()
    }
}

// === impl Gate ===

impl Gate {
    fn lock(&self) -> MutexGuard<'_, Windows<oneshot::Sender<Verdict>>> {
        self.windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens (or extends) `key`'s window after Graph throttled one of its calls; false when the
    /// gate is full and the key gets per-call behaviour.
    fn throttled(self: &Arc<Self>, key: ThrottleKey, throttle: Throttle) -> bool {
        let now = Instant::now();
        let mut windows = self.lock();
        let window_length = |consecutive: u32| {
            throttle.retry_after.unwrap_or_else(|| {
                backoff()
                    .nth(usize::try_from(consecutive).unwrap_or(usize::MAX))
                    .unwrap_or(crate::backoff::BACKOFF_MAX)
            })
        };
        let Some(opened) = windows.throttled(key, throttle.status, now, window_length) else {
            drop(windows);
            tracing::warn!(
                keys = MAX_KEYS,
                "the throttle gate is full: this tenant and app's calls back off one by one"
            );
            return false;
        };
        self.active.store(windows.len(), Ordering::Release);
        drop(windows);
        for (waiter, refusal) in opened.turned_away {
            let _ = waiter.send(Verdict::TooLate(refusal));
        }
        if let Some((id, until)) = opened.timer {
            let gate = Arc::downgrade(self);
            tokio::spawn(async move {
                tokio::time::sleep_until(until).await;
                if let Some(gate) = Weak::upgrade(&gate) {
                    gate.window_ended(key, id);
                }
            });
        }
        if opened.new_window {
            self.metrics.throttle_window_opened();
            let wait = opened.until.saturating_duration_since(now);
            tracing::info!(
                tenant = %key.tenant(),
                app = %key.app(),
                http_status = throttle.status.as_u16(),
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                "Graph is throttling this tenant and app: its calls wait at the gate"
            );
        }
        true
    }

    /// The timer of window `id` fired: close it, and send the first call waiting as the probe.
    fn window_ended(self: &Arc<Self>, key: ThrottleKey, id: WindowId) {
        let mut windows = self.lock();
        let ended = windows.window_ended(key, id);
        if let Some(probe) = ended.probe {
            self.hand_probe(&mut windows, key, probe);
        }
        self.active.store(windows.len(), Ordering::Release);
        drop(windows);
        if let Some(closed) = ended.closed {
            self.metrics.throttle_window_closed(closed.lasted);
            tracing::info!(
                tenant = %key.tenant(),
                app = %key.app(),
                wait_ms = u64::try_from(closed.lasted.as_millis()).unwrap_or(u64::MAX),
                held = closed.waiting,
                "the throttle window ended: one call goes first"
            );
        }
    }

    /// The probe got an answer that is not a throttle: every call waiting goes, in order.
    fn probe_accepted(&self, key: ThrottleKey, id: ProbeId) {
        let mut windows = self.lock();
        let released = windows.probe_answered(key, id);
        self.active.store(windows.len(), Ordering::Release);
        drop(windows);
        for waiter in released {
            let _ = waiter.send(Verdict::Go);
        }
    }

    /// The probe's call ended without an answer: the next call waiting becomes the probe.
    fn probe_abandoned(self: &Arc<Self>, key: ThrottleKey, id: ProbeId) {
        let mut windows = self.lock();
        if let Some(next) = windows.probe_abandoned(key, id) {
            self.hand_probe(&mut windows, key, next);
        }
        self.active.store(windows.len(), Ordering::Release);
    }

    /// Tells the call `probe` names that it goes first; when it has given up already, the next
    /// one, and so on.
    fn hand_probe(
        self: &Arc<Self>,
        windows: &mut Windows<oneshot::Sender<Verdict>>,
        key: ThrottleKey,
        probe: (ProbeId, oneshot::Sender<Verdict>),
    ) {
        let mut next = Some(probe);
        while let Some((id, waiter)) = next {
            let guard = ProbeGuard {
                gate: Arc::clone(self),
                key,
                id,
                armed: true,
            };
            match waiter.send(Verdict::Probe(guard)) {
                Ok(()) => return,
                Err(verdict) => {
                    // Disarmed before it drops: the mutex is held here.
                    if let Verdict::Probe(guard) = verdict {
                        guard.disarm();
                    }
                    next = windows.probe_abandoned(key, id);
                }
            }
        }
    }
}

/// A waiting call as the state machine sees it.
pub(crate) trait Waiter {
    /// Whether the call has given up waiting (its future was dropped).
    fn is_gone(&self) -> bool;
}

/// Which window a timer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WindowId(u64);

/// Which call is a key's probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProbeId(u64);

/// The gate's pure state machine: each key with a window open or a probe out, and the calls
/// waiting for it in arrival order. Keys without either are not kept.
#[derive(Debug)]
pub(crate) struct Windows<W> {
    keys: HashMap<ThrottleKey, Window<W>>,
    max_keys: usize,
    next_id: u64,
}

#[derive(Debug)]
struct Window<W> {
    phase: Phase,
    /// The HTTP status that opened the current window.
    status: StatusCode,
    /// When the current window opened.
    opened: Instant,
    /// Windows in a row without an accepted probe: the backoff step when Graph sends no
    /// `Retry-After`.
    consecutive: u32,
    waiting: VecDeque<Waiting<W>>,
    /// The queue length at which calls that gave up are swept out.
    compact_at: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing is sent until `until`.
    Open { until: Instant, id: WindowId },
    /// The window ended; one call went first and the others wait for its answer.
    Probing { probe: ProbeId },
}

#[derive(Debug)]
struct Waiting<W> {
    deadline: Instant,
    waiter: W,
}

/// What the gate tells a call that arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// No window: send.
    Pass,
    /// Queued: wait for the verdict.
    Wait,
    /// The window ends after the call's deadline.
    TooLate(Refusal),
}

/// What a throttling answer changed.
#[derive(Debug)]
pub(crate) struct Opened<W> {
    /// Whether a new window opened (rather than an open one being made longer).
    new_window: bool,
    /// When the key's window now ends.
    until: Instant,
    /// A timer to start, when the window's end moved.
    timer: Option<(WindowId, Instant)>,
    /// Calls waiting whose deadlines end before the window does.
    turned_away: Vec<(W, Refusal)>,
}

/// What the end of a window changed.
#[derive(Debug)]
pub(crate) struct Ended<W> {
    /// The window that ended, when the timer was still its own.
    closed: Option<Closed>,
    /// The call that goes first.
    probe: Option<(ProbeId, W)>,
}

/// A window that ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed {
    /// How long it was open.
    lasted: Duration,
    /// How many calls were waiting when it ended.
    waiting: usize,
}

// === impl Windows ===

impl<W: Waiter> Windows<W> {
    /// No window open, and room for `max_keys` keys with one.
    pub(crate) fn new(max_keys: usize) -> Self {
        Self {
            keys: HashMap::new(),
            max_keys,
            next_id: 0,
        }
    }

    /// How many keys have a window open or a probe out.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// A call of `key` with `deadline` arrives at `now`: it passes, is turned away, or waits
    /// (queued as the waiter `enqueue` makes: last, or first when `first_in_line`, as a probe
    /// that Graph throttled again keeps the place it had).
    pub(crate) fn arrive(
        &mut self,
        key: ThrottleKey,
        deadline: Instant,
        now: Instant,
        first_in_line: bool,
        enqueue: impl FnOnce() -> W,
    ) -> Arrival {
        let Some(window) = self.keys.get_mut(&key) else {
            return Arrival::Pass;
        };
        if let Phase::Open { until, .. } = window.phase
            && now < until
            && deadline <= until
        {
            return Arrival::TooLate(Refusal {
                wait: until - now,
                status: window.status,
            });
        }
        // An open window (or one whose timer is about to fire), or a probe out: wait in line.
        if window.waiting.len() >= window.compact_at {
            window
                .waiting
                .retain(|waiting| waiting.deadline > now && !waiting.waiter.is_gone());
            window.compact_at = COMPACT_MIN.max(window.waiting.len() * 2);
        }
        let waiting = Waiting {
            deadline,
            waiter: enqueue(),
        };
        if first_in_line {
            window.waiting.push_front(waiting);
        } else {
            window.waiting.push_back(waiting);
        }
        Arrival::Wait
    }

    /// Graph throttled a call of `key` at `now` with `status`; `length` gives the window's
    /// length from the number of windows in a row before it. Opens a window (or makes the open
    /// one longer); `None` when the gate is full.
    pub(crate) fn throttled(
        &mut self,
        key: ThrottleKey,
        status: StatusCode,
        now: Instant,
        length: impl FnOnce(u32) -> Duration,
    ) -> Option<Opened<W>> {
        if !self.keys.contains_key(&key) && self.keys.len() >= self.max_keys {
            return None;
        }
        let id = WindowId(self.fresh_id());
        let window = self.keys.entry(key).or_insert_with(|| Window {
            phase: Phase::Probing { probe: ProbeId(0) },
            status,
            opened: now,
            consecutive: 0,
            waiting: VecDeque::new(),
            compact_at: COMPACT_MIN,
        });
        let (new_window, until, timer) = match window.phase {
            Phase::Open { until, .. } => {
                // A call sent before the window opened came back throttled too: the window
                // lasts until the later of the two ends.
                let later = now + length(window.consecutive.saturating_sub(1));
                if later <= until {
                    (false, until, None)
                } else {
                    window.phase = Phase::Open { until: later, id };
                    window.status = status;
                    (false, later, Some((id, later)))
                }
            }
            Phase::Probing { .. } => {
                let until = now + length(window.consecutive);
                window.consecutive = window.consecutive.saturating_add(1);
                window.phase = Phase::Open { until, id };
                window.status = status;
                window.opened = now;
                (true, until, Some((id, until)))
            }
        };
        let mut turned_away = Vec::new();
        if timer.is_some() {
            let refusal = Refusal {
                wait: until - now,
                status,
            };
            let (late, kept) = std::mem::take(&mut window.waiting)
                .into_iter()
                .partition::<VecDeque<_>, _>(|waiting| waiting.deadline <= until);
            window.waiting = kept;
            turned_away = late
                .into_iter()
                .map(|waiting| (waiting.waiter, refusal))
                .collect();
        }
        Some(Opened {
            new_window,
            until,
            timer,
            turned_away,
        })
    }

    /// The timer of window `id` of `key` fired: the window closes, and the first call waiting
    /// (if any) goes as the probe; with none, the key is forgotten.
    pub(crate) fn window_ended(&mut self, key: ThrottleKey, id: WindowId) -> Ended<W> {
        let Some(window) = self.keys.get_mut(&key) else {
            return Ended {
                closed: None,
                probe: None,
            };
        };
        let Phase::Open { until, id: current } = window.phase else {
            return Ended {
                closed: None,
                probe: None,
            };
        };
        if current != id {
            return Ended {
                closed: None,
                probe: None,
            };
        }
        let closed = Closed {
            lasted: until.saturating_duration_since(window.opened),
            waiting: window.waiting.len(),
        };
        let probe = self.next_probe(key);
        Ended {
            closed: Some(closed),
            probe,
        }
    }

    /// The probe `id` of `key` got an answer that is not a throttle: the key is forgotten and
    /// every call waiting goes, in arrival order. Any other call's answer changes nothing.
    pub(crate) fn probe_answered(&mut self, key: ThrottleKey, id: ProbeId) -> Vec<W> {
        match self.keys.get(&key) {
            Some(window) if window.phase == (Phase::Probing { probe: id }) => {}
            _ => return Vec::new(),
        }
        self.keys
            .remove(&key)
            .map(|window| {
                window
                    .waiting
                    .into_iter()
                    .map(|waiting| waiting.waiter)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The probe `id` of `key` ended without an answer: the next call waiting becomes the
    /// probe; with none, the key is forgotten.
    pub(crate) fn probe_abandoned(
        &mut self,
        key: ThrottleKey,
        id: ProbeId,
    ) -> Option<(ProbeId, W)> {
        match self.keys.get(&key) {
            Some(window) if window.phase == (Phase::Probing { probe: id }) => self.next_probe(key),
            _ => None,
        }
    }

    /// Makes the first call waiting for `key` its probe, or forgets the key when none waits.
    fn next_probe(&mut self, key: ThrottleKey) -> Option<(ProbeId, W)> {
        let id = ProbeId(self.fresh_id());
        let window = self.keys.get_mut(&key)?;
        match window.waiting.pop_front() {
            Some(first) => {
                window.phase = Phase::Probing { probe: id };
                Some((id, first.waiter))
            }
            None => {
                self.keys.remove(&key);
                None
            }
        }
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A waiter in the tests: a number, and whether its call gave up.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Call(u32, bool);

    impl Waiter for Call {
        fn is_gone(&self) -> bool {
            self.1
        }
    }

    fn key(tenant: u128) -> ThrottleKey {
        ThrottleKey {
            tenant: Some(Uuid::from_u128(tenant)),
            app: Some(Uuid::from_u128(7)),
        }
    }

    const A: u128 = 1;
    const B: u128 = 2;

    fn s(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    fn throttle(
        windows: &mut Windows<Call>,
        k: ThrottleKey,
        now: Instant,
        wait: u64,
    ) -> Opened<Call> {
        windows
            .throttled(k, StatusCode::TOO_MANY_REQUESTS, now, |_| s(wait))
            .expect("room for the key")
    }

    fn arrive(
        windows: &mut Windows<Call>,
        k: ThrottleKey,
        id: u32,
        deadline: Instant,
        now: Instant,
    ) -> Arrival {
        windows.arrive(k, deadline, now, false, || Call(id, false))
    }

    fn waiters(calls: Vec<Call>) -> Vec<u32> {
        calls.into_iter().map(|call| call.0).collect()
    }

    #[test]
    fn a_key_without_a_window_passes_and_is_not_kept() {
        let mut windows = Windows::<Call>::new(10);
        let now = Instant::now();
        assert_eq!(
            arrive(&mut windows, key(A), 1, now + s(30), now),
            Arrival::Pass
        );
        assert_eq!(windows.len(), 0);
    }

    #[test]
    fn calls_wait_through_the_window_then_one_probe_goes_then_the_rest_in_order() {
        let mut windows = Windows::<Call>::new(10);
        let t0 = Instant::now();
        let opened = throttle(&mut windows, key(A), t0, 5);
        assert!(opened.new_window);
        let (id, until) = opened.timer.unwrap();
        assert_eq!(until, t0 + s(5));
        for call in 1..=3 {
            assert_eq!(
                arrive(&mut windows, key(A), call, t0 + s(30), t0 + s(1)),
                Arrival::Wait
            );
        }
        // Another tenant is not held.
        assert_eq!(
            arrive(&mut windows, key(B), 9, t0 + s(30), t0 + s(1)),
            Arrival::Pass
        );

        let ended = windows.window_ended(key(A), id);
        assert_eq!(
            ended.closed,
            Some(Closed {
                lasted: s(5),
                waiting: 3
            })
        );
        let (probe, first) = ended.probe.unwrap();
        assert_eq!(first.0, 1, "the first to arrive goes first");
        // A call arriving while the probe is out waits behind the others.
        assert_eq!(
            arrive(&mut windows, key(A), 4, t0 + s(30), t0 + s(6)),
            Arrival::Wait
        );
        assert_eq!(waiters(windows.probe_answered(key(A), probe)), [2, 3, 4]);
        assert_eq!(windows.len(), 0, "the key is forgotten");
        assert_eq!(
            arrive(&mut windows, key(A), 5, t0 + s(30), t0 + s(7)),
            Arrival::Pass
        );
    }

    #[test]
    fn a_call_whose_deadline_ends_inside_the_window_is_turned_away_with_what_is_left() {
        let mut windows = Windows::<Call>::new(10);
        let t0 = Instant::now();
        throttle(&mut windows, key(A), t0, 5);
        assert_eq!(
            arrive(&mut windows, key(A), 1, t0 + s(4), t0 + s(1)),
            Arrival::TooLate(Refusal {
                wait: s(4),
                status: StatusCode::TOO_MANY_REQUESTS
            })
        );
        assert_eq!(
            arrive(&mut windows, key(A), 2, t0 + s(5), t0 + s(1)),
            Arrival::TooLate(Refusal {
                wait: s(4),
                status: StatusCode::TOO_MANY_REQUESTS
            }),
            "a deadline at the window's end is too late for the probe"
        );
    }

    #[test]
    fn a_throttled_probe_opens_a_new_window_and_turns_away_those_it_outlasts() {
        let mut windows = Windows::<Call>::new(10);
        let t0 = Instant::now();
        let (id, _) = throttle(&mut windows, key(A), t0, 5).timer.unwrap();
        arrive(&mut windows, key(A), 1, t0 + s(30), t0 + s(1));
        arrive(&mut windows, key(A), 2, t0 + s(8), t0 + s(1));
        arrive(&mut windows, key(A), 3, t0 + s(30), t0 + s(1));
        let (_, probe) = windows.window_ended(key(A), id).probe.unwrap();
        assert_eq!(probe.0, 1);

        let again = windows
            .throttled(key(A), StatusCode::SERVICE_UNAVAILABLE, t0 + s(5), |_| s(5))
            .unwrap();
        assert!(again.new_window);
        assert_eq!(again.until, t0 + s(10));
        let turned_away: Vec<_> = again
            .turned_away
            .iter()
            .map(|(call, refusal)| (call.0, *refusal))
            .collect();
        assert_eq!(
            turned_away,
            [(
                2,
                Refusal {
                    wait: s(5),
                    status: StatusCode::SERVICE_UNAVAILABLE
                }
            )]
        );
        // The probe, throttled, keeps its place at the head of the line.
        assert_eq!(
            windows.arrive(key(A), t0 + s(30), t0 + s(5), true, || Call(1, false)),
            Arrival::Wait
        );
        let (id, _) = again.timer.unwrap();
        let (_, probe) = windows.window_ended(key(A), id).probe.unwrap();
        assert_eq!(probe.0, 1);
        assert_eq!(windows.keys[&key(A)].waiting.front().unwrap().waiter.0, 3);
    }

    #[test]
    fn windows_in_a_row_take_the_next_backoff_step() {
        let mut windows = Windows::<Call>::new(10);
        let t0 = Instant::now();
        let mut steps = Vec::new();
        let mut now = t0;
        for call in 0..3 {
            let opened = windows
                .throttled(key(A), StatusCode::TOO_MANY_REQUESTS, now, |step| {
                    steps.push(step);
                    s(1)
                })
                .unwrap();
            let (id, until) = opened.timer.unwrap();
            arrive(&mut windows, key(A), call, t0 + s(60), now);
            windows.window_ended(key(A), id).probe.unwrap();
            now = until;
        }
        assert_eq!(steps, [0, 1, 2]);
    }

    #[test]
    fn a_late_answer_of_a_call_sent_before_the_window_only_makes_it_longer() {
        let mut windows = Windows::<Call>::new(10);
        let t0 = Instant::now();
        let (first, _) = throttle(&mut windows, key(A), t0, 5).timer.unwrap();
        let shorter = throttle(&mut windows, key(A), t0 + s(1), 2);
        assert!(!shorter.new_window && shorter.timer.is_none());
        assert_eq!(shorter.until, t0 + s(5));
        let longer = throttle(&mut windows, key(A), t0 + s(1), 6);
        assert!(!longer.new_window);
        let (second, until) = longer.timer.unwrap();
        assert_eq!(until, t0 + s(7));
        assert!(
            windows.window_ended(key(A), first).closed.is_none(),
            "the old timer is stale"
        );
        assert_eq!(
            windows.window_ended(key(A), second).closed.unwrap().lasted,
            s(7)
        );
        assert_eq!(windows.len(), 0, "no one waited: the key is forgotten");
    }

    #[test]
    fn an_abandoned_probe_hands_over_to_the_next_call_and_only_the_probe_counts() {
        let mut windows = Windows::<Call>::new(10);
        let t0 = Instant::now();
        let (id, _) = throttle(&mut windows, key(A), t0, 5).timer.unwrap();
        for call in 1..=3 {
            arrive(&mut windows, key(A), call, t0 + s(30), t0 + s(1));
        }
        let (first, _) = windows.window_ended(key(A), id).probe.unwrap();
        let (second, call) = windows.probe_abandoned(key(A), first).unwrap();
        assert_eq!(call.0, 2);
        assert!(
            windows.probe_abandoned(key(A), first).is_none(),
            "a stale probe changes nothing"
        );
        assert!(
            windows.probe_answered(key(A), first).is_empty(),
            "nor does its answer"
        );
        assert_eq!(waiters(windows.probe_answered(key(A), second)), [3]);
        assert_eq!(windows.len(), 0);

        let (id, _) = throttle(&mut windows, key(A), t0 + s(10), 1).timer.unwrap();
        arrive(&mut windows, key(A), 4, t0 + s(30), t0 + s(10));
        let (only, _) = windows.window_ended(key(A), id).probe.unwrap();
        assert!(windows.probe_abandoned(key(A), only).is_none());
        assert_eq!(
            windows.len(),
            0,
            "no one left to probe: the key is forgotten"
        );
    }

    #[test]
    fn memory_stays_bounded_under_many_keys_and_calls_that_give_up() {
        let mut windows = Windows::<Call>::new(3);
        let t0 = Instant::now();
        for tenant in 0..3 {
            throttle(&mut windows, key(tenant), t0, 5);
        }
        assert!(
            windows
                .throttled(key(99), StatusCode::TOO_MANY_REQUESTS, t0, |_| s(5))
                .is_none(),
            "a full gate takes no new key"
        );
        assert!(
            windows
                .throttled(key(0), StatusCode::TOO_MANY_REQUESTS, t0, |_| s(6))
                .is_some(),
            "a key it holds is still served"
        );

        let k = key(0);
        for call in 0..10_000 {
            windows.arrive(k, t0 + s(30), t0 + s(1), false, || Call(call, true));
        }
        let queued = windows.keys[&k].waiting.len();
        assert!(
            queued <= COMPACT_MIN,
            "{queued} calls that gave up still queued"
        );
    }

    #[test]
    fn the_key_is_the_tenant_and_app_of_a_jwt_and_anything_else_shares_one() {
        let tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47";
        let app = "de8bc8b5-d9f9-48b1-a8ad-b748da725064";
        let jwt = |claims: &str| {
            format!(
                "eyJhbGciOiJSUzI1NiJ9.{}.c2lnbmF0dXJl",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims)
            )
        };
        let guid = |id: &str| Some(Uuid::try_parse(id).unwrap());
        let check = |token: &str, expected: ThrottleKey| {
            assert_eq!(
                ThrottleKey::from_token(token.as_bytes()),
                expected,
                "{token}"
            );
        };
        let both = ThrottleKey {
            tenant: guid(tenant),
            app: guid(app),
        };
        check(
            &jwt(&format!(r#"{{"tid":"{tenant}","appid":"{app}"}}"#)),
            both,
        );
        check(
            &jwt(&format!(r#"{{"tid":"{tenant}","azp":"{app}","x":[1]}}"#)),
            both,
        );
        check(
            &jwt(&format!(r#"{{"tid":"{tenant}","appid":"not-a-guid"}}"#)),
            ThrottleKey {
                tenant: guid(tenant),
                app: None,
            },
        );
        for shared in [
            "demo-token".to_owned(),
            "a.b".to_owned(),
            "a.b.c.d.e".to_owned(),
            "a.!!!.c".to_owned(),
            jwt("not json"),
            jwt(r#"{"tid": 5}"#),
            jwt(r#"{"tid": "<script>"}"#),
            format!("a.{}.c", "A".repeat(MAX_PAYLOAD + 4)),
        ] {
            check(&shared, ThrottleKey::SHARED);
        }
        assert_eq!(both.tenant().to_string(), tenant);
        assert_eq!(ThrottleKey::SHARED.app().to_string(), "unknown");
    }
}

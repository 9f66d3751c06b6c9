//! What the exchange remembers, which makes it rare and keeps it from hammering Entra: the
//! exchanged tokens (one entry per caller's token, keyed by the SHA-256 of that token, never the
//! token itself, fresh until a skew before the exchanged token expires), the refusals that another
//! request would only repeat (an `invalid_grant` for a while, a throttled request until its
//! `Retry-After` ends), and the exchanges in flight, one per key however many calls wait for it.
//! Both caches are bounded in entries.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use moka::{Expiry, future::Cache};
use tokio::sync::watch;

use super::{EntraError, EntraRejection, ExchangeFailure};
use crate::auth::BearerToken;

/// How long before an exchanged token expires it stops being used, as MSAL does: Graph must still
/// accept it when the request arrives, with room for clocks that differ. Tokens that live less
/// than twice this long are used for half their lifetime.
pub const EXPIRY_SKEW: Duration = Duration::from_secs(5 * 60);

/// The most entries held. A sidecar serves one service; this is more users than it sees in a
/// token's lifetime, and bounds the memory to a few tens of MiB at worst.
pub const MAX_ENTRIES: u64 = 10_000;

/// How long a refusal of a caller's token (`invalid_grant`, a claims challenge, missing consent)
/// is remembered, so that a client that repeats the same token does not reach Entra again:
/// another request would get the same answer. The caller needs a new token, which is a new key.
pub const REFUSAL_MEMORY: Duration = Duration::from_secs(30);

/// The outcome of an exchange, shared by every call waiting for it.
pub(crate) type FlightOutcome = Result<BearerToken, Arc<ExchangeFailure>>;

/// The cache key: the SHA-256 of the caller's token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey([u8; 32]);

/// An exchanged token and when it stops being used.
#[derive(Clone)]
pub(crate) struct CachedToken {
    token: BearerToken,
    fresh_until: Instant,
}

/// A refusal remembered until `until`: calls end with it without a request to Entra.
#[derive(Clone)]
pub(crate) struct Remembered {
    rejection: Arc<EntraRejection>,
    until: Instant,
    /// Whether the caller may retry once `until` has passed (throttling); otherwise it needs a
    /// new token.
    retry: bool,
}

/// Whether a lookup found a token or had to exchange one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The token was in the cache, or another call's exchange in flight gave it.
    Hit,
    /// This call exchanged the token.
    Miss,
}

/// A call's place in an exchange: it joined one in flight, or it leads a new one and must run it.
pub(crate) enum Flight {
    /// Another call's exchange is in flight: wait for its outcome.
    Joined(watch::Receiver<Option<FlightOutcome>>),
    /// This call started the exchange: run it, then [`Leader::land`] it.
    Leading(Leader, watch::Receiver<Option<FlightOutcome>>),
}

/// The right and the duty to end an exchange in flight. Dropped without landing (the task
/// panicked), it still takes the exchange out of flight, so that a later call starts another.
pub(crate) struct Leader {
    key: CacheKey,
    flights: Flights,
    outcome: watch::Sender<Option<FlightOutcome>>,
}

type Flights = Arc<Mutex<HashMap<CacheKey, watch::Receiver<Option<FlightOutcome>>>>>;

/// The tokens exchanged so far, the refusals remembered and the exchanges in flight. Cheap to
/// clone.
#[derive(Clone)]
pub(crate) struct TokenCache {
    entries: Cache<CacheKey, CachedToken>,
    refusals: Cache<CacheKey, Remembered>,
    flights: Flights,
}

/// Expires each entry when it stops being fresh or remembered.
struct Until;

/// An entry that [`Until`] expires: a token when it stops being fresh, a refusal when it stops
/// being remembered.
trait Expires {
    /// When the entry expires.
    fn until(&self) -> Instant;
}

// === impl CacheKey ===

impl CacheKey {
    /// The key of a caller's token.
    pub(crate) fn of(caller: &BearerToken) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, caller.token_bytes());
        let mut key = [0; 32];
        key.copy_from_slice(digest.as_ref());
        Self(key)
    }
}

// === impl CachedToken ===

impl CachedToken {
    /// A token Entra issued at `issued_at` (when its answer arrived), valid for `expires_in`.
    /// A lifetime that the clock cannot hold is used for as long as it can (the answer has already
    /// been clamped to a day and more; this only keeps the addition from ever panicking).
    pub(crate) fn new(token: BearerToken, expires_in: Duration, issued_at: Instant) -> Self {
        Self {
            token,
            fresh_until: issued_at
                .checked_add(fresh_for(expires_in))
                .unwrap_or(issued_at),
        }
    }

    /// The token.
    pub(crate) fn token(&self) -> &BearerToken {
        &self.token
    }
}

impl Expires for CachedToken {
    fn until(&self) -> Instant {
        self.fresh_until
    }
}

/// How long a token valid for `expires_in` is used: until [`EXPIRY_SKEW`] before it expires, or
/// half its lifetime when that is shorter.
pub(crate) fn fresh_for(expires_in: Duration) -> Duration {
    expires_in - EXPIRY_SKEW.min(expires_in / 2)
}

// === impl Remembered ===

impl Remembered {
    /// `rejection`, remembered for `memory` from `now`; with `retry`, calls are told how long is
    /// left.
    pub(crate) fn new(
        rejection: &EntraRejection,
        now: Instant,
        memory: Duration,
        retry: bool,
    ) -> Self {
        Self {
            rejection: Arc::new(rejection.clone()),
            until: now.checked_add(memory).unwrap_or(now),
            retry,
        }
    }

    /// Whether it still applies at `now`.
    pub(crate) fn applies(&self, now: Instant) -> bool {
        now < self.until
    }

    /// The failure a call gets from it at `now`: the same rejection, and for throttling the wait
    /// that is left.
    pub(crate) fn failure(&self, now: Instant) -> ExchangeFailure {
        ExchangeFailure {
            error: EntraError::Rejected(Box::new((*self.rejection).clone())),
            retry_delay: self
                .retry
                .then(|| self.until.saturating_duration_since(now)),
        }
    }
}

impl Expires for Remembered {
    fn until(&self) -> Instant {
        self.until
    }
}

// === impl Leader ===

impl Leader {
    /// Ends the exchange: takes it out of flight and gives `outcome` to every waiting call.
    pub(crate) fn land(self, outcome: FlightOutcome) {
        self.outcome.send_replace(Some(outcome));
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

// === impl TokenCache ===

impl TokenCache {
    /// An empty cache of at most `max_entries` tokens and as many refusals.
    pub(crate) fn new(max_entries: u64) -> Self {
        Self {
            entries: expiring(max_entries),
            refusals: expiring(max_entries),
            flights: Arc::default(),
        }
    }

    /// The fresh token for `key`, when there is one.
    pub(crate) async fn fresh(&self, key: &CacheKey) -> Option<BearerToken> {
        self.entries
            .get(key)
            .await
            .filter(|entry| Instant::now() < entry.fresh_until)
            .map(|entry| entry.token)
    }

    /// Keeps a token exchanged for `key`.
    pub(crate) async fn insert(&self, key: CacheKey, token: CachedToken) {
        self.entries.insert(key, token).await;
    }

    /// The refusal remembered for `key`, when one still applies.
    pub(crate) async fn refusal(&self, key: &CacheKey) -> Option<Remembered> {
        let now = Instant::now();
        self.refusals
            .get(key)
            .await
            .filter(|remembered| remembered.applies(now))
    }

    /// Remembers a refusal for `key`.
    pub(crate) async fn remember(&self, key: CacheKey, refusal: Remembered) {
        self.refusals.insert(key, refusal).await;
    }

    /// Joins the exchange in flight for `key`, or, when there is none, starts one: one exchange
    /// in flight per key. An exchange keeps its token before it lands, so a leader that finds
    /// the token fresh need not exchange.
    pub(crate) fn join(&self, key: CacheKey) -> Flight {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(outcome) = flights.get(&key) {
            return Flight::Joined(outcome.clone());
        }
        let (sender, receiver) = watch::channel(None);
        flights.insert(key, receiver.clone());
        Flight::Leading(
            Leader {
                key,
                flights: self.flights.clone(),
                outcome: sender,
            },
            receiver,
        )
    }

    /// Drops the token for `key`, such as one Graph refused.
    pub(crate) async fn forget(&self, key: CacheKey) {
        self.entries.invalidate(&key).await;
    }
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.entries.entry_count())
            .field("refusals", &self.refusals.entry_count())
            .finish_non_exhaustive()
    }
}

// === impl Until ===

impl<V: Expires> Expiry<CacheKey, V> for Until {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &V,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.until().saturating_duration_since(created_at))
    }
}

/// A cache of at most `max_entries` entries, each expired by [`Until`].
fn expiring<V: Expires + Clone + Send + Sync + 'static>(max_entries: u64) -> Cache<CacheKey, V> {
    Cache::builder()
        .max_capacity(max_entries)
        .expire_after(Until)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_used_until_a_skew_before_they_expire_and_never_past() {
        let s = Duration::from_secs;
        for (expires_in, fresh) in [
            (s(3599), s(3299)),
            (s(900), s(600)),
            (s(600), s(300)),
            (s(120), s(60)),
            (s(2), s(1)),
            (s(0), s(0)),
        ] {
            assert_eq!(fresh_for(expires_in), fresh, "expires_in {expires_in:?}");
        }
    }

    #[test]
    fn a_lifetime_past_the_clock_does_not_panic() {
        let token = BearerToken::from_token("t").unwrap();
        let now = Instant::now();
        let cached = CachedToken::new(token, Duration::MAX, now);
        assert_eq!(cached.fresh_until, now);
    }

    #[tokio::test]
    async fn keys_are_digests_and_one_flight_per_key_until_it_lands() {
        let caller = BearerToken::from_token("caller-token").unwrap();
        assert_ne!(CacheKey::of(&caller).0.as_slice(), caller.token_bytes());
        let cache = TokenCache::new(10);
        let key = CacheKey::of(&caller);
        let Flight::Leading(leader, mut first) = cache.join(key) else {
            panic!("the first call leads");
        };
        let Flight::Joined(mut second) = cache.join(key) else {
            panic!("the second call joins");
        };
        let exchanged = BearerToken::from_token("exchanged").unwrap();
        cache
            .insert(
                key,
                CachedToken::new(exchanged.clone(), Duration::from_secs(3600), Instant::now()),
            )
            .await;
        leader.land(Ok(exchanged.clone()));
        for outcome in [&mut first, &mut second] {
            let landed = outcome.wait_for(Option::is_some).await.unwrap().clone();
            assert!(matches!(landed, Some(Ok(ref token)) if *token == exchanged));
        }
        assert_eq!(cache.fresh(&key).await, Some(exchanged));
        assert!(
            matches!(cache.join(key), Flight::Leading(..)),
            "landed: the next call leads"
        );
        cache.forget(key).await;
        assert_eq!(cache.fresh(&key).await, None);
    }
}

//! The cache of exchanged tokens, which makes the exchange rare: one entry per caller's token,
//! keyed by the SHA-256 of that token (never the token itself), fresh until a skew before the
//! exchanged token expires, bounded in entries, and with one exchange in flight per key however
//! many calls ask for it at once (moka's `or_try_insert_with`).

use std::{
    fmt,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use moka::{Expiry, future::Cache};

use crate::auth::BearerToken;

/// How long before an exchanged token expires it stops being used, as MSAL does: Graph must still
/// accept it when the request arrives, with room for clocks that differ. Tokens that live less
/// than twice this long are used for half their lifetime.
pub const EXPIRY_SKEW: Duration = Duration::from_secs(5 * 60);

/// The most entries held. A sidecar serves one service; this is more users than it sees in a
/// token's lifetime, and bounds the memory to a few tens of MiB at worst.
pub const MAX_ENTRIES: u64 = 10_000;

/// The cache key: the SHA-256 of the caller's token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey([u8; 32]);

/// An exchanged token and when it stops being used.
#[derive(Clone)]
pub(crate) struct CachedToken {
    token: BearerToken,
    fresh_until: Instant,
}

/// Whether a lookup found a token or had to exchange one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The token was in the cache, or another call's exchange in flight gave it.
    Hit,
    /// This call exchanged the token.
    Miss,
}

/// The tokens exchanged so far. Cheap to clone.
#[derive(Clone)]
pub(crate) struct TokenCache {
    entries: Cache<CacheKey, CachedToken>,
}

/// Expires each entry when its token stops being fresh.
struct FreshUntil;

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
    pub(crate) fn new(token: BearerToken, expires_in: Duration, issued_at: Instant) -> Self {
        Self {
            token,
            fresh_until: issued_at + fresh_for(expires_in),
        }
    }
}

/// How long a token valid for `expires_in` is used: until [`EXPIRY_SKEW`] before it expires, or
/// half its lifetime when that is shorter.
pub(crate) fn fresh_for(expires_in: Duration) -> Duration {
    expires_in - EXPIRY_SKEW.min(expires_in / 2)
}

// === impl TokenCache ===

impl TokenCache {
    /// An empty cache of at most `max_entries` tokens.
    pub(crate) fn new(max_entries: u64) -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(FreshUntil)
                .build(),
        }
    }

    /// The fresh token for `key`, or the one `exchange` gets. Calls that ask for the same key
    /// while an exchange is in flight wait for it and share its outcome, error included; errors
    /// are not kept. When the call running the exchange is dropped (its deadline ran out), a
    /// waiting call runs its own.
    pub(crate) async fn get_or_exchange<E: Send + Sync + 'static>(
        &self,
        key: CacheKey,
        exchange: impl Future<Output = Result<CachedToken, E>>,
    ) -> Result<(BearerToken, Lookup), Arc<E>> {
        let entry = self.entries.entry(key).or_try_insert_with(exchange).await?;
        let lookup = if entry.is_fresh() {
            Lookup::Miss
        } else {
            Lookup::Hit
        };
        Ok((entry.into_value().token, lookup))
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
            .finish()
    }
}

impl Expiry<CacheKey, CachedToken> for FreshUntil {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &CachedToken,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.fresh_until.saturating_duration_since(created_at))
    }
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

    #[tokio::test]
    async fn keys_are_digests_and_one_exchange_serves_every_waiting_call() {
        let caller = BearerToken::from_token("caller-token").unwrap();
        assert_ne!(CacheKey::of(&caller).0.as_slice(), caller.token_bytes());
        let cache = TokenCache::new(10);
        let exchanged = BearerToken::from_token("exchanged").unwrap();
        let exchange = || async {
            Ok::<_, ()>(CachedToken::new(
                exchanged.clone(),
                Duration::from_secs(3600),
                Instant::now(),
            ))
        };
        let key = CacheKey::of(&caller);
        let (_, first) = cache.get_or_exchange(key, exchange()).await.unwrap();
        let (_, second) = cache.get_or_exchange(key, exchange()).await.unwrap();
        assert_eq!((first, second), (Lookup::Miss, Lookup::Hit));
        cache.forget(key).await;
        let (_, third) = cache.get_or_exchange(key, exchange()).await.unwrap();
        assert_eq!(third, Lookup::Miss);
    }
}

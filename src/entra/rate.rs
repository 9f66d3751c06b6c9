//! The gateway's own limit on token exchanges (`--token-exchange-rate`): a token bucket that
//! holds five seconds' worth of exchanges and refills at the rate. Cached tokens, remembered
//! refusals and calls that join an exchange in flight take nothing from it; so a burst of new
//! users passes, while callers that send new tokens without end cannot spend the app
//! registration's budget at Entra for every other user.

use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// How many seconds' worth of exchanges may go at once.
pub const BURST_SECONDS: u32 = 5;

/// A token bucket of exchanges.
#[derive(Debug)]
pub(crate) struct RateLimit {
    per_second: f64,
    burst: f64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    /// `per_second` exchanges a second on average (at least one).
    pub(crate) fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second.max(1));
        let burst = per_second * f64::from(BURST_SECONDS);
        Self {
            per_second,
            burst,
            state: Mutex::new(Bucket {
                tokens: burst,
                at: Instant::now(),
            }),
        }
    }

    /// Takes one exchange from the bucket, or says how long until one is there.
    pub(crate) fn take(&self) -> Result<(), Duration> {
        self.take_at(Instant::now())
    }

    fn take_at(&self, now: Instant) -> Result<(), Duration> {
        let mut bucket = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_five_seconds_then_the_rate() {
        let limit = RateLimit::new(2);
        let start = Instant::now();
        for _ in 0..10 {
            assert_eq!(limit.take_at(start), Ok(()));
        }
        let wait = limit.take_at(start).unwrap_err();
        assert!(
            wait > Duration::from_millis(490) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        let later = start + Duration::from_millis(500);
        assert_eq!(limit.take_at(later), Ok(()));
        assert!(limit.take_at(later).is_err());
        let much_later = start + Duration::from_secs(3600);
        for _ in 0..10 {
            assert_eq!(limit.take_at(much_later), Ok(()));
        }
        assert!(
            limit.take_at(much_later).is_err(),
            "never more than the burst"
        );
    }
}

//! How long to wait between attempts, for every remote party (Graph and Entra ID): the
//! [`RetryPolicy`] settings and the backoff schedule. A leaf module, so that [`crate::retry`]'s loop
//! over Graph attempts and [`crate::entra`]'s token requests share it without importing each other.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// The first backoff wait; it doubles on each retry.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// The longest backoff wait, before jitter.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How calls to Graph (and token requests to Entra ID) are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The most attempts per call, the first included; 1 turns retries off.
    pub max_attempts: u32,
    /// The longest `Retry-After` honoured; longer ones are cut to it.
    pub retry_after_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            retry_after_max: Duration::from_secs(10),
        }
    }
}

/// The waits between attempts when the other side says nothing: 200 ms doubling to 5 s, plus up
/// to as much again at random. Entra ID's token requests wait the same way.
pub(crate) fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::new()
        .with_min_delay(BACKOFF_MIN)
        .with_max_delay(BACKOFF_MAX)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

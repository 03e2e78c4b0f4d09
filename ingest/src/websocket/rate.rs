//! The rate limits of one connection: client events, and `switchboard:track` batches.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// A connection's frames of one kind: a token bucket of `per_second` tokens refilled
/// continuously (governor's GCRA), so at most `per_second` pass in a burst, even across a
/// second's boundary.
pub(super) struct RateLimit<C: Clock = DefaultClock> {
    /// None when the app allows none at all.
    limiter: Option<RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>>,
}

impl<C: Clock> RateLimit<C> {
    pub(super) fn new(per_second: u32, clock: C) -> Self {
        RateLimit {
            limiter: NonZeroU32::new(per_second)
                .map(|rate| RateLimiter::direct_with_clock(Quota::per_second(rate), clock)),
        }
    }

    /// Takes a token for one frame; false when the bucket is empty.
    pub(super) fn allow(&self) -> bool {
        self.limiter.as_ref().is_some_and(|l| l.check().is_ok())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use governor::clock::FakeRelativeClock;

    fn passed(limit: &RateLimit<FakeRelativeClock>, attempts: usize) -> usize {
        (0..attempts).filter(|_| limit.allow()).count()
    }

    #[test]
    fn client_event_limit_is_a_token_bucket() {
        let clock = FakeRelativeClock::default();
        let limit = RateLimit::new(10, clock.clone());
        // A full bucket: a burst of 10 passes, the 11th does not.
        assert_eq!(passed(&limit, 15), 10);
        // 99 ms later, less than one token has refilled.
        clock.advance(Duration::from_millis(99));
        assert_eq!(passed(&limit, 5), 0);
        // One token every 100 ms.
        clock.advance(Duration::from_millis(1));
        assert_eq!(passed(&limit, 5), 1);
        clock.advance(Duration::from_millis(350));
        assert_eq!(passed(&limit, 5), 3);
        // Idle for long, the bucket holds no more than its size.
        clock.advance(Duration::from_secs(60));
        assert_eq!(passed(&limit, 30), 10);
    }

    #[test]
    fn no_burst_across_a_second_boundary() {
        let clock = FakeRelativeClock::default();
        let limit = RateLimit::new(10, clock.clone());
        clock.advance(Duration::from_millis(990));
        assert_eq!(passed(&limit, 10), 10);
        // 20 ms later, across the boundary a fixed window had: only what refilled meanwhile.
        clock.advance(Duration::from_millis(20));
        assert_eq!(passed(&limit, 10), 0);
        // A second after the burst, the bucket is full again: 10, not 20, in any short span.
        clock.advance(Duration::from_millis(980));
        assert_eq!(passed(&limit, 20), 10);
    }

    #[test]
    fn a_zero_limit_allows_nothing() {
        let limit = RateLimit::new(0, FakeRelativeClock::default());
        assert_eq!(passed(&limit, 3), 0);
    }
}

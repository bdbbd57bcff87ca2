//! The paid routes' pace per client (a GCRA limit, governor's): one for the process, so a client cannot multiply
//! its allowance by the number of serving threads. The HTTP layer's middleware (`http::rate_limit`) asks it.

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::config::RateLimitConfig;

/// Past this many remembered clients, the ones whose allowance has refilled are forgotten.
const FORGET_AFTER: usize = 10_000;

pub struct PaidLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

impl PaidLimiter {
    pub fn new(config: RateLimitConfig) -> Self {
        let per_minute = NonZeroU32::new(config.per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.burst).unwrap_or(NonZeroU32::MIN);
        Self {
            limiter: DefaultKeyedRateLimiter::keyed(
                Quota::per_minute(per_minute).allow_burst(burst),
            ),
            clock: DefaultClock::default(),
        }
    }

    /// `Ok` when the client may go on, else how many whole seconds it must wait.
    pub fn check(&self, client: IpAddr) -> Result<(), u64> {
        if self.limiter.len() > FORGET_AFTER {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&client).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_client_waits_and_others_do_not() {
        let limiter = PaidLimiter::new(RateLimitConfig {
            per_minute: 6,
            burst: 3,
        });
        let one: IpAddr = "127.0.0.1".parse().unwrap();
        let two: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(limiter.check(one), Ok(()));
        }
        let wait = limiter.check(one).unwrap_err();
        assert!((1..=10).contains(&wait), "one request per 10 s: {wait}");
        assert_eq!(limiter.check(two), Ok(()));
    }
}

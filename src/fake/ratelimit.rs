//! Cloudflare's API rate limit, as the fake applies it: a quota of requests per fixed window per
//! user, shared with other consumers of the same token, and a block of every call once a request
//! finds the quota spent (see `shared/cloudflare-api.md`, "Basics" → "Rate limit").
//!
//! The arithmetic is pure: [`Limiter`] takes the time elapsed since the fake started, so tests
//! drive it with any clock; [`RateLimiter`] feeds it real time.
//!
//! - Windows are fixed and start when the fake starts: window `k` covers
//!   `[k·window, (k+1)·window)`.
//! - Every request with the accepted credentials that is not refused uses one unit of the
//!   window's quota; requests refused during a block use none.
//! - Another consumer of the token spends `other_consumer_share × quota` per window, evenly:
//!   `floor(share × quota × e / window)` units at time `e` into the window; units spent through
//!   [`RateLimiter::spend`] come on top. Remaining = quota − ours − theirs, never below 0.
//! - A request that finds nothing remaining trips the block: it and every request for `block`
//!   from then on is refused (HTTP 429), even in a later window. After the block, counting goes
//!   on in the then-current window: if that is still the window that was spent (a block shorter
//!   than the rest of the window), the next request trips a new block.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::server::lock;

/// The rate limit the fake applies ([`super::FakeOptions::rate_limit`]). The default is
/// Cloudflare's: 1,200 requests per 5 minutes, and a 5-minute block.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeRateLimit {
    /// Requests per window (at least 1), shared by us and the other consumer.
    pub quota: u32,
    /// Length of each fixed window (at least 1 s); `Ratelimit-Policy` says it in whole seconds,
    /// rounded up.
    pub window: Duration,
    /// How long every call is refused once a request found the quota spent.
    pub block: Duration,
    /// Send `Ratelimit` and `Ratelimit-Policy` on every response; when false neither is sent
    /// (a 429 still carries `Retry-After`).
    pub headers: bool,
    /// Share of each window's quota (0 to 1) another consumer of the same token spends, evenly
    /// over the window.
    pub other_consumer_share: f64,
}

impl Default for FakeRateLimit {
    fn default() -> Self {
        FakeRateLimit {
            quota: 1200,
            window: Duration::from_secs(300),
            block: Duration::from_secs(300),
            headers: true,
            other_consumer_share: 0.0,
        }
    }
}

impl FakeRateLimit {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.quota == 0 {
            return Err("rate_limit.quota must be at least 1".to_owned());
        }
        if self.window < Duration::from_secs(1) {
            return Err("rate_limit.window must be at least 1 second".to_owned());
        }
        if !(0.0..=1.0).contains(&self.other_consumer_share) {
            return Err(format!(
                "rate_limit.other_consumer_share must be between 0 and 1, got {}",
                self.other_consumer_share
            ));
        }
        Ok(())
    }

    /// `"default";q=Q;w=W`, the `Ratelimit-Policy` value.
    pub(crate) fn policy_header(&self) -> String {
        format!("\"default\";q={};w={}", self.quota, ceil_secs(self.window))
    }
}

/// What the limiter says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Served; `remaining` after it, `reset` until the window ends.
    Served { remaining: u32, reset: Duration },
    /// Refused with 429: blocked for `retry_after` more. `tripped` when this request started
    /// the block.
    Refused {
        retry_after: Duration,
        tripped: bool,
    },
}

impl Admission {
    /// Remaining quota and the time until it can be used: the window's end, or while blocked
    /// 0 and the block's end.
    pub(crate) fn quota(&self) -> (u32, Duration) {
        match *self {
            Admission::Served { remaining, reset } => (remaining, reset),
            Admission::Refused { retry_after, .. } => (0, retry_after),
        }
    }

    /// `"default";r=R;t=T`, the `Ratelimit` value. While blocked: `r=0` and `t` = seconds
    /// until the block ends (when the quota can be used again).
    pub(crate) fn header(&self) -> String {
        let (remaining, reset) = self.quota();
        format!("\"default\";r={remaining};t={}", ceil_secs(reset))
    }
}

/// Whole seconds, rounded up, at least 1.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// The limiter's state on a clock of its own: times are offsets from the fake's start.
#[derive(Debug)]
pub(crate) struct Limiter {
    config: FakeRateLimit,
    /// The window `ours` and `spent` belong to.
    window: u128,
    /// Our requests served in that window.
    ours: u32,
    /// Units the other consumer spent on demand in that window (`spend`).
    spent: u32,
    /// The block ends at this offset.
    blocked_until: Option<Duration>,
    /// 429s sent by the limiter, blocks included.
    pub(crate) rate_limited: u64,
    /// Times the block was tripped.
    pub(crate) blocks: u64,
}

impl Limiter {
    pub(crate) fn new(config: FakeRateLimit) -> Self {
        Limiter {
            config,
            window: 0,
            ours: 0,
            spent: 0,
            blocked_until: None,
            rate_limited: 0,
            blocks: 0,
        }
    }

    fn window_nanos(&self) -> u128 {
        self.config.window.as_nanos().max(1)
    }

    /// Index of the window `at` falls in, and how far into it `at` is.
    fn position(&self, at: Duration) -> (u128, Duration) {
        let window = self.window_nanos();
        let nanos = at.as_nanos();
        let into = nanos % window;
        // `into` < window, which fits a Duration as the window did.
        let into = Duration::new((into / 1_000_000_000) as u64, (into % 1_000_000_000) as u32);
        (nanos / window, into)
    }

    /// Moves the counters to the window of `at` (a new window starts empty).
    fn roll(&mut self, at: Duration) {
        let (window, _) = self.position(at);
        if window != self.window {
            self.window = window;
            self.ours = 0;
            self.spent = 0;
        }
    }

    /// Units the other consumer has spent evenly by `into` the window.
    fn theirs(&self, into: Duration) -> u32 {
        let share = self.config.other_consumer_share;
        let units = (share * f64::from(self.config.quota) * into.as_secs_f64()
            / self.config.window.as_secs_f64())
        .floor();
        // A float-to-int cast saturates; the quota bounds it anyway.
        (units as u32).min(self.config.quota)
    }

    /// Remaining quota and time until the window ends, at `at` (counters rolled).
    fn quota_at(&self, at: Duration) -> (u32, Duration) {
        let (_, into) = self.position(at);
        let used = self
            .ours
            .saturating_add(self.spent)
            .saturating_add(self.theirs(into));
        (
            self.config.quota.saturating_sub(used),
            self.config.window.saturating_sub(into),
        )
    }

    fn blocked_for(&self, at: Duration) -> Option<Duration> {
        self.blocked_until
            .filter(|until| *until > at)
            .map(|until| until - at)
    }

    /// One request with the accepted credentials arrives at `at`.
    pub(crate) fn admit(&mut self, at: Duration) -> Admission {
        if let Some(retry_after) = self.blocked_for(at) {
            self.rate_limited += 1;
            return Admission::Refused {
                retry_after,
                tripped: false,
            };
        }
        self.blocked_until = None;
        self.roll(at);
        let (remaining, reset) = self.quota_at(at);
        if remaining == 0 {
            self.blocked_until = Some(at.saturating_add(self.config.block));
            self.blocks += 1;
            self.rate_limited += 1;
            // Even a zero block refuses the request that tripped it (`Retry-After: 1`).
            return Admission::Refused {
                retry_after: self.config.block,
                tripped: true,
            };
        }
        self.ours += 1;
        Admission::Served {
            remaining: remaining - 1,
            reset,
        }
    }

    /// What a request at `at` would be told, without using any quota (for requests that do not
    /// count, and [`super::FakeHandle::rate_limit_status`]).
    pub(crate) fn peek(&mut self, at: Duration) -> Admission {
        if let Some(retry_after) = self.blocked_for(at) {
            return Admission::Refused {
                retry_after,
                tripped: false,
            };
        }
        self.roll(at);
        let (remaining, reset) = self.quota_at(at);
        Admission::Served { remaining, reset }
    }

    /// Another consumer spends `units` of the window of `at`.
    pub(crate) fn spend(&mut self, at: Duration, units: u32) {
        self.roll(at);
        self.spent = self.spent.saturating_add(units);
    }
}

/// A [`Limiter`] on real time from the fake's start, behind a lock never held across `.await`.
pub(crate) struct RateLimiter {
    pub(crate) config: FakeRateLimit,
    started: Instant,
    limiter: Mutex<Limiter>,
}

impl RateLimiter {
    pub(crate) fn new(config: FakeRateLimit) -> Self {
        RateLimiter {
            limiter: Mutex::new(Limiter::new(config.clone())),
            config,
            started: Instant::now(),
        }
    }

    fn at(&self) -> Duration {
        self.started.elapsed()
    }

    pub(crate) fn admit(&self) -> Admission {
        let at = self.at();
        lock(&self.limiter).admit(at)
    }

    pub(crate) fn peek(&self) -> Admission {
        let at = self.at();
        lock(&self.limiter).peek(at)
    }

    pub(crate) fn spend(&self, units: u32) {
        let at = self.at();
        lock(&self.limiter).spend(at, units);
    }

    /// `(rate_limited, blocks)`.
    pub(crate) fn counters(&self) -> (u64, u64) {
        let limiter = lock(&self.limiter);
        (limiter.rate_limited, limiter.blocks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn limiter(quota: u32, window: f64, block: f64, share: f64) -> Limiter {
        Limiter::new(FakeRateLimit {
            quota,
            window: secs(window),
            block: secs(block),
            headers: true,
            other_consumer_share: share,
        })
    }

    fn remaining(admission: Admission) -> u32 {
        match admission {
            Admission::Served { remaining, .. } => remaining,
            refused => panic!("refused: {refused:?}"),
        }
    }

    #[test]
    fn defaults_are_cloudflares() {
        let d = FakeRateLimit::default();
        assert_eq!(d.quota, 1200);
        assert_eq!(d.window, Duration::from_secs(300));
        assert_eq!(d.block, Duration::from_secs(300));
        assert!(d.headers);
        assert_eq!(d.other_consumer_share, 0.0);
        assert_eq!(d.validate(), Ok(()));
        assert_eq!(d.policy_header(), "\"default\";q=1200;w=300");
    }

    #[test]
    fn bad_limits_are_refused() {
        let ok = FakeRateLimit::default();
        for bad in [
            FakeRateLimit {
                quota: 0,
                ..ok.clone()
            },
            FakeRateLimit {
                window: secs(0.5),
                ..ok.clone()
            },
            FakeRateLimit {
                other_consumer_share: 1.5,
                ..ok.clone()
            },
            FakeRateLimit {
                other_consumer_share: f64::NAN,
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn each_request_uses_one_unit_and_a_new_window_starts_full() {
        let mut l = limiter(3, 2.0, 1.0, 0.0);
        let first = l.admit(secs(0.25));
        assert_eq!(
            first,
            Admission::Served {
                remaining: 2,
                reset: secs(1.75)
            }
        );
        assert_eq!(first.header(), "\"default\";r=2;t=2");
        assert_eq!(remaining(l.admit(secs(0.5))), 1);
        assert_eq!(remaining(l.admit(secs(1.0))), 0);
        // Window 1 starts at 2 s with the whole quota.
        let next = l.admit(secs(2.0));
        assert_eq!(
            next,
            Admission::Served {
                remaining: 2,
                reset: secs(2.0)
            }
        );
        assert_eq!(l.blocks, 0);
        assert_eq!(l.rate_limited, 0);
    }

    #[test]
    fn the_request_finding_no_quota_trips_a_block_that_outlives_the_window() {
        let mut l = limiter(2, 2.0, 1.0, 0.0);
        l.admit(secs(1.0));
        l.admit(secs(1.1));
        let tripped = l.admit(secs(1.5));
        assert_eq!(
            tripped,
            Admission::Refused {
                retry_after: secs(1.0),
                tripped: true
            }
        );
        assert_eq!(tripped.header(), "\"default\";r=0;t=1");
        // Window 1 began at 2 s, the block still refuses until 2.5 s, and uses nothing.
        for at in [1.6, 2.0, 2.2, 2.4999] {
            match l.admit(secs(at)) {
                Admission::Refused {
                    retry_after,
                    tripped: false,
                } => assert_eq!(retry_after, secs(2.5) - secs(at)),
                other => panic!("{at}: {other:?}"),
            }
        }
        assert_eq!((l.rate_limited, l.blocks), (5, 1));
        assert_eq!(remaining(l.admit(secs(2.5))), 1);
        assert_eq!(remaining(l.admit(secs(2.6))), 0);
    }

    #[test]
    fn a_block_ending_in_the_spent_window_is_tripped_again() {
        let mut l = limiter(1, 10.0, 1.0, 0.0);
        l.admit(secs(0.0));
        assert!(matches!(
            l.admit(secs(0.5)),
            Admission::Refused { tripped: true, .. }
        ));
        assert!(matches!(
            l.admit(secs(1.5)),
            Admission::Refused { tripped: true, .. }
        ));
        assert_eq!(l.blocks, 2);
        assert_eq!(remaining(l.admit(secs(10.0))), 0);
    }

    #[test]
    fn the_other_consumer_spends_its_share_evenly() {
        let mut l = limiter(100, 10.0, 10.0, 0.5);
        // At 4 s of 10 it has spent floor(0.5 × 100 × 0.4) = 20.
        assert_eq!(
            l.peek(secs(4.0)),
            Admission::Served {
                remaining: 80,
                reset: secs(6.0)
            }
        );
        assert_eq!(remaining(l.admit(secs(4.0))), 79);
        // Just before the end: 49 of its 50, and our 1.
        assert_eq!(remaining(l.peek(secs(9.99))), 50);
        // Next window: it starts over from 0, and so do we.
        assert_eq!(remaining(l.peek(secs(10.0))), 100);
        let mut all = limiter(10, 1.0, 1.0, 1.0);
        assert_eq!(remaining(all.peek(secs(0.95))), 1);
        assert!(matches!(all.admit(secs(0.99)), Admission::Served { .. }));
    }

    #[test]
    fn spending_on_demand_empties_the_window_and_the_next_request_trips() {
        let mut l = limiter(10, 2.0, 1.0, 0.0);
        l.admit(secs(0.1));
        l.spend(secs(0.2), 100);
        assert_eq!(l.blocks, 0);
        assert_eq!(remaining(l.peek(secs(0.3))), 0);
        assert!(matches!(
            l.admit(secs(0.3)),
            Admission::Refused { tripped: true, .. }
        ));
        // Spent units belong to their window only.
        let mut l = limiter(10, 2.0, 1.0, 0.0);
        l.spend(secs(1.9), 9);
        assert_eq!(remaining(l.peek(secs(1.95))), 1);
        assert_eq!(remaining(l.peek(secs(2.0))), 10);
    }

    #[test]
    fn peeking_uses_nothing_and_shows_the_block() {
        let mut l = limiter(1, 5.0, 3.0, 0.0);
        assert_eq!(remaining(l.peek(secs(0.1))), 1);
        assert_eq!(remaining(l.peek(secs(0.1))), 1);
        l.admit(secs(0.2));
        l.admit(secs(0.5));
        assert_eq!(
            l.peek(secs(1.0)),
            Admission::Refused {
                retry_after: secs(2.5),
                tripped: false
            }
        );
        assert_eq!((l.rate_limited, l.blocks), (1, 1));
    }

    #[test]
    fn seconds_round_up_and_never_say_zero() {
        assert_eq!(ceil_secs(secs(0.001)), 1);
        assert_eq!(ceil_secs(Duration::ZERO), 1);
        assert_eq!(ceil_secs(secs(2.0)), 2);
        assert_eq!(ceil_secs(secs(2.000_001)), 3);
        let policy = FakeRateLimit {
            window: secs(1.5),
            ..FakeRateLimit::default()
        };
        assert_eq!(policy.policy_header(), "\"default\";q=1200;w=2");
    }
}

//! Pacing under Cloudflare's rate limit: 1,200 calls per 5 minutes per user, shared with that
//! user's dashboard sessions and every other tool, and one call over it blocks every API call
//! of that user for five minutes. The janitor must never be the one that trips it.
//!
//! Every answer carries `Ratelimit: "default";r=R;t=T` (R calls left in the window, which
//! ends in T seconds). The janitor spends at most `share` of what the window had left when it
//! first saw it, so that people and other tools keep the rest, and never sends a call that
//! would leave less than that reserve (other consumers spending faster stop it sooner). Until
//! the first answer of a window has told it where it stands, it sends one call at a time. When
//! the answers carry no such header it counts its own calls instead: at most `share` of the
//! documented 1,200 in any 5 minutes. After a 429 it sends nothing until the `Retry-After`
//! has passed.
//!
//! The state outlives a cycle ([`Quota`] is shared by the cycles of one process), so that a
//! cycle that starts soon after another still knows the window. No I/O here: the client
//! sleeps on the [`Decision`]s.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Cloudflare's documented limit, used when the answers carry no `Ratelimit` header.
pub const DOCUMENTED_QUOTA: u32 = 1200;
pub const DOCUMENTED_WINDOW: Duration = Duration::from_secs(300);
/// The longest a `Ratelimit` header's `t` is believed, in seconds.
const MAX_RESET_SECS: u64 = 600;
/// After a 429 without a usable `Retry-After`: Cloudflare's block lasts five minutes.
const BLOCK_WITHOUT_RETRY_AFTER: Duration = Duration::from_secs(300);
/// Slack after a window's announced end before calling again: clock granularity.
const WINDOW_END_SLACK: Duration = Duration::from_millis(50);
/// After a window that reported no call left, wait this long past its announced end: `t` is
/// in whole seconds, and one call early would be the call over the limit.
const SPENT_WINDOW_SLACK: Duration = Duration::from_millis(1_100);
/// How far an announced window end may move before it is taken for a new window.
const SAME_WINDOW_TOLERANCE: Duration = Duration::from_secs(2);

/// What one answer said of the window: calls left after it, and the time until the window
/// resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub remaining: u32,
    pub reset_in: Duration,
}

/// Reads a `Ratelimit` header (`"default";r=50;t=30`, possibly several comma-separated
/// policies): the most constraining policy, the one with the fewest calls left. A header that
/// cannot be read is `None`, and the janitor paces itself as if there were none.
pub fn parse_ratelimit(value: &str) -> Option<Seen> {
    value
        .split(',')
        .filter_map(|item| {
            let (mut r, mut t) = (None, None);
            for param in item.split(';').skip(1) {
                let (key, number) = param.trim().split_once('=')?;
                let number: u64 = number.trim().parse().ok()?;
                match key.trim() {
                    "r" => r = Some(u32::try_from(number).unwrap_or(u32::MAX)),
                    // Cloudflare's window is 5 minutes: a reset announced further out than
                    // twice that is not believed, so no answer can hold the janitor longer.
                    "t" => t = Some(Duration::from_secs(number.min(MAX_RESET_SECS))),
                    _ => {}
                }
            }
            Some(Seen {
                remaining: r?,
                reset_in: t?,
            })
        })
        .min_by_key(|seen| seen.remaining)
}

/// What the client does before a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// Send it now.
    Go,
    /// Send nothing before this instant.
    WaitUntil(Instant),
    /// Wait for an answer already on its way: it says where the new window stands.
    WaitForAnswer,
}

/// Why a call may not go yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Send nothing before this instant.
    Until(Instant),
    /// Wait for an answer already on its way: it says where the new window stands.
    ForAnswer,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    ends: Instant,
    /// Calls left when the janitor first saw this window (its own first call included).
    first: u32,
    /// The fewest calls left that an answer has reported since.
    last: u32,
}

#[derive(Debug, Default)]
struct State {
    window: Option<Window>,
    /// Whether the last answer carried `Ratelimit`; `None` before any answer.
    headers: Option<bool>,
    in_flight: u32,
    /// Send times within the last documented window, for pacing without headers.
    sent: VecDeque<Instant>,
    blocked_until: Option<Instant>,
}

impl State {
    fn decide(&mut self, now: Instant, share: f64) -> Decision {
        if let Some(until) = self.blocked_until {
            if now < until {
                return Decision::WaitUntil(until);
            }
            self.blocked_until = None;
        }
        let decision = match self.headers {
            Some(true) => match self.window {
                Some(w) if now < w.ends => {
                    let left = w.last.saturating_sub(self.in_flight);
                    if left > reserve(w.first, share) {
                        Decision::Go
                    } else {
                        Decision::WaitUntil(w.ends + WINDOW_END_SLACK)
                    }
                }
                // The window said nothing was left: its end may be up to a second later
                // than announced.
                Some(w) if w.last == 0 && now < w.ends + SPENT_WINDOW_SLACK => {
                    Decision::WaitUntil(w.ends + SPENT_WINDOW_SLACK)
                }
                // A window not seen yet: one call first, to learn where it stands.
                _ => self.one_at_a_time(),
            },
            Some(false) => {
                while self
                    .sent
                    .front()
                    .is_some_and(|&at| now.duration_since(at) >= DOCUMENTED_WINDOW)
                {
                    self.sent.pop_front();
                }
                let allowance = allowance(DOCUMENTED_QUOTA, share);
                match self.sent.front() {
                    Some(&oldest) if self.sent.len() >= allowance as usize => {
                        Decision::WaitUntil(oldest + DOCUMENTED_WINDOW)
                    }
                    _ => Decision::Go,
                }
            }
            None => self.one_at_a_time(),
        };
        if decision == Decision::Go {
            self.in_flight += 1;
            self.sent.push_back(now);
        }
        decision
    }

    fn one_at_a_time(&self) -> Decision {
        if self.in_flight == 0 {
            Decision::Go
        } else {
            Decision::WaitForAnswer
        }
    }

    fn observe(&mut self, now: Instant, seen: Option<Seen>, block: Option<Duration>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.headers = Some(seen.is_some());
        if let Some(seen) = seen {
            let ends = now + seen.reset_in;
            match &mut self.window {
                Some(w) if now < w.ends && ends <= w.ends + SAME_WINDOW_TOLERANCE => {
                    w.last = w.last.min(seen.remaining);
                }
                window => {
                    *window = Some(Window {
                        ends,
                        first: seen.remaining.saturating_add(1),
                        last: seen.remaining,
                    });
                }
            }
        }
        if let Some(block) = block {
            self.blocked_until = Some(now + block);
            if let Some(w) = &mut self.window {
                w.last = 0;
            }
        }
    }
}

/// Calls the janitor may spend out of `quota`: `share` of it, at least one.
fn allowance(quota: u32, share: f64) -> u32 {
    ((f64::from(quota) * share).floor() as u32).clamp(1, quota.max(1))
}

/// Calls left to others in a window that had `first` when the janitor first saw it; never
/// less than one, so that even `share = 1` never spends the last call.
fn reserve(first: u32, share: f64) -> u32 {
    first.saturating_sub(allowance(first, share)).max(1)
}

/// The pacing state of one process, shared by its cycles' clients. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Quota {
    state: Arc<Mutex<State>>,
    answered: Arc<Notify>,
}

impl Quota {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding it: plain counters.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a call may go now, and if it may, counts it in flight: settle it with
    /// [`Slot::answered`], or drop the slot if no answer came. Otherwise, what to wait for.
    pub fn decide(&self, now: Instant, share: f64) -> Result<Slot, Wait> {
        match self.lock().decide(now, share) {
            Decision::Go => Ok(Slot {
                quota: self.clone(),
                settled: false,
            }),
            Decision::WaitUntil(until) => Err(Wait::Until(until)),
            Decision::WaitForAnswer => Err(Wait::ForAnswer),
        }
    }

    /// Resolves when an answer came in (or at once if one came since the last call).
    pub async fn answer_came(&self) {
        self.answered.notified().await;
    }

    /// The calls left in the current window as last reported, if an answer reported them.
    pub fn remaining(&self) -> Option<u32> {
        self.lock().window.map(|w| w.last)
    }
}

/// A call the pacer let go. Dropped without an answer (a transport error, a cancelled
/// request), it no longer counts as in flight.
#[derive(Debug)]
pub struct Slot {
    quota: Quota,
    settled: bool,
}

impl Slot {
    /// The answer's `Ratelimit` reading, and, for a 429, how long to send nothing.
    pub fn answered(mut self, seen: Option<Seen>, block: Option<Duration>) {
        self.quota.lock().observe(Instant::now(), seen, block);
        self.settled = true;
        self.quota.answered.notify_waiters();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.settled {
            let mut state = self.quota.lock();
            state.in_flight = state.in_flight.saturating_sub(1);
            drop(state);
            self.quota.answered.notify_waiters();
        }
    }
}

/// How long to send nothing after a 429: its `Retry-After`, else Cloudflare's five minutes.
pub fn block_after_429(retry_after: Option<Duration>) -> Duration {
    retry_after.unwrap_or(BLOCK_WITHOUT_RETRY_AFTER)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(remaining: u32, secs: u64) -> Option<Seen> {
        Some(Seen {
            remaining,
            reset_in: Duration::from_secs(secs),
        })
    }

    #[test]
    fn ratelimit_headers_are_read_leniently_and_the_tightest_policy_wins() {
        let cases: [(&str, Option<(u32, u64)>); 9] = [
            (r#""default";r=50;t=30"#, Some((50, 30))),
            (r#""default";r=0;t=1"#, Some((0, 1))),
            (r#""default"; r=7 ; t=2"#, Some((7, 2))),
            (
                r#""burst";r=90;t=10, "default";r=40;t=200"#,
                Some((40, 200)),
            ),
            (r#""default";t=30;r=5"#, Some((5, 30))),
            (r#""default";r=-1;t=30"#, None),
            (r#""default";r=5"#, None),
            ("garbage", None),
            (r#""default";r=1;t=99999999"#, Some((1, 600))),
        ];
        for (header, expected) in cases {
            let got = parse_ratelimit(header).map(|s| (s.remaining, s.reset_in.as_secs()));
            assert_eq!(got, expected, "{header}");
        }
    }

    #[test]
    fn without_any_answer_one_call_goes_at_a_time() {
        let mut s = State::default();
        let now = Instant::now();
        assert_eq!(s.decide(now, 0.5), Decision::Go);
        assert_eq!(s.decide(now, 0.5), Decision::WaitForAnswer);
        s.observe(now, seen(1199, 300), None);
        assert_eq!(s.decide(now, 0.5), Decision::Go);
    }

    #[test]
    fn a_window_is_spent_up_to_the_share_then_waited_out() {
        let mut s = State::default();
        let t0 = Instant::now();
        let mut sent = 0;
        let mut remaining = 1200;
        // Answers come back one by one, each reporting one call fewer.
        while let Decision::Go = s.decide(t0, 0.5) {
            sent += 1;
            remaining -= 1;
            s.observe(t0, seen(remaining, 300), None);
            assert!(sent <= 600, "never more than the share");
        }
        assert_eq!(sent, 600);
        assert_eq!(
            s.decide(t0, 0.5),
            Decision::WaitUntil(t0 + Duration::from_secs(300) + WINDOW_END_SLACK)
        );
        // The next window: one call first, then the pace resumes.
        let t1 = t0 + Duration::from_secs(302);
        assert_eq!(s.decide(t1, 0.5), Decision::Go);
        assert_eq!(s.decide(t1, 0.5), Decision::WaitForAnswer);
        s.observe(t1, seen(1199, 298), None);
        assert_eq!(s.decide(t1, 0.5), Decision::Go);
    }

    #[test]
    fn calls_in_flight_count_before_their_answers() {
        let mut s = State::default();
        let t0 = Instant::now();
        s.decide(t0, 0.5);
        s.observe(t0, seen(15, 30), None); // first = 16: 8 ours, 8 left to others
        let mut going = 0;
        while s.decide(t0, 0.5) == Decision::Go {
            going += 1;
        }
        assert_eq!(going, 7, "one was spent learning the window");
    }

    #[test]
    fn another_consumer_spending_fast_stops_the_janitor_sooner() {
        let mut s = State::default();
        let t0 = Instant::now();
        s.decide(t0, 0.5);
        s.observe(t0, seen(999, 300), None); // first = 1000, reserve 500
        s.decide(t0, 0.5);
        // Someone else spent 480 meanwhile.
        s.observe(t0, seen(518, 300), None);
        let mut going = 0;
        while s.decide(t0, 0.5) == Decision::Go {
            going += 1;
        }
        assert_eq!(going, 18, "down to the reserve of 500 and no further");
    }

    #[test]
    fn even_a_share_of_one_never_spends_the_last_call() {
        let mut s = State::default();
        let t0 = Instant::now();
        s.decide(t0, 1.0);
        s.observe(t0, seen(3, 30), None);
        assert_eq!(s.decide(t0, 1.0), Decision::Go);
        assert_eq!(s.decide(t0, 1.0), Decision::Go);
        assert!(matches!(s.decide(t0, 1.0), Decision::WaitUntil(_)));
    }

    #[test]
    fn without_headers_the_documented_limit_is_shared_over_any_five_minutes() {
        let mut s = State::default();
        let t0 = Instant::now();
        s.decide(t0, 0.5);
        s.observe(t0, None, None);
        let mut sent = 1;
        let mut now = t0;
        while s.decide(now, 0.5) == Decision::Go {
            sent += 1;
            now += Duration::from_millis(10);
            s.observe(now, None, None);
        }
        assert_eq!(sent, 600);
        assert_eq!(
            s.decide(now, 0.5),
            Decision::WaitUntil(t0 + DOCUMENTED_WINDOW),
            "the oldest call leaves the window first"
        );
        assert_eq!(s.decide(t0 + DOCUMENTED_WINDOW, 0.5), Decision::Go);
    }

    #[test]
    fn a_429_stops_every_call_until_its_retry_after() {
        let mut s = State::default();
        let t0 = Instant::now();
        s.decide(t0, 0.5);
        s.observe(t0, seen(0, 30), Some(Duration::from_secs(300)));
        let until = t0 + Duration::from_secs(300);
        assert_eq!(s.decide(t0, 0.5), Decision::WaitUntil(until));
        assert_eq!(
            s.decide(until - Duration::from_secs(1), 0.5),
            Decision::WaitUntil(until)
        );
        assert_eq!(s.decide(until, 0.5), Decision::Go, "a new window is probed");
    }

    #[test]
    fn a_window_that_reported_nothing_left_is_waited_out_with_a_second_to_spare() {
        let mut s = State::default();
        let t0 = Instant::now();
        s.decide(t0, 1.0);
        s.observe(t0, seen(0, 2), None);
        let ends = t0 + Duration::from_secs(2);
        assert_eq!(
            s.decide(ends, 1.0),
            Decision::WaitUntil(ends + SPENT_WINDOW_SLACK)
        );
        assert_eq!(s.decide(ends + SPENT_WINDOW_SLACK, 1.0), Decision::Go);
    }

    #[test]
    fn a_dropped_slot_is_no_longer_in_flight() {
        let quota = Quota::default();
        let now = Instant::now();
        let slot = quota.decide(now, 0.5).unwrap();
        assert_eq!(quota.decide(now, 0.5).unwrap_err(), Wait::ForAnswer);
        drop(slot);
        assert!(quota.decide(now, 0.5).is_ok());
    }
}

//! The janitor against a fake that limits like Cloudflare (a quota per window, the `Ratelimit`
//! headers, a block after one call too many), at a scaled-down window: it never trips the
//! block, it spreads a cycle bigger than a window over several, it leaves room for another
//! consumer of the same token, it counts its own calls when the headers are absent, and it
//! still honours `Retry-After` when a 429 does come.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{Env, Settings};
use zt_janitor::audit::RunOutcome;
use zt_janitor::fake::{FakeOptions, FakeRateLimit};
use zt_janitor::metrics::Metrics;

/// 40 calls per 2-second window: the janitor's half is 20 a window.
fn limit(other_consumer_share: f64) -> FakeRateLimit {
    FakeRateLimit {
        quota: 40,
        window: Duration::from_secs(2),
        block: Duration::from_secs(2),
        headers: true,
        other_consumer_share,
    }
}

/// 400 registrations listed 10 a page, about 100 of them deleted 10 a call: some 60 calls,
/// three windows' worth at 20 a window.
async fn limited(rate_limit: FakeRateLimit) -> Env {
    Env::start(
        FakeOptions {
            registrations: 400,
            rate_limit: Some(rate_limit),
            ..FakeOptions::default()
        },
        Settings {
            per_page: 10,
            chunk: 10,
            ..Settings::default()
        },
    )
    .await
}

/// The sample `name` of `scrape`, which must be there.
fn metric(scrape: &str, name: &str) -> f64 {
    common::metric(scrape, name).unwrap_or_else(|| panic!("{name} in\n{scrape}"))
}

#[tokio::test]
async fn a_cycle_bigger_than_a_window_spreads_over_windows_without_a_single_429() {
    let env = limited(limit(0.0)).await;
    let expected = env.expected_candidates(Utc::now());
    let metrics = Metrics::new();
    let started = Instant::now();
    let report = env.once_with(&metrics).await;
    let took = started.elapsed();
    assert_eq!(report.outcome, RunOutcome::Applied, "{:?}", report.reason);
    let deleted: BTreeSet<String> = env.fake.deleted_ids().into_iter().collect();
    assert_eq!(deleted, expected);
    assert_eq!(env.fake.rate_limited(), 0, "never the call over the limit");
    assert_eq!(env.fake.blocks(), 0);
    let calls = report.summary.api_requests;
    assert!(
        calls > 45,
        "the fixture needs several windows: {calls} calls"
    );
    // At 20 calls a window, the calls cannot fit in fewer windows than this.
    let windows = calls.div_ceil(20) - 1;
    assert!(
        took >= Duration::from_secs(2 * windows),
        "{calls} calls took {took:?}: faster than half the quota allows"
    );
    let scrape = metrics.render();
    assert!(metric(&scrape, "zt_janitor_cloudflare_quota_wait_seconds_total") > 1.0);
    assert!(metric(&scrape, "zt_janitor_cloudflare_quota_remaining") >= 0.0);
    assert_eq!(
        metric(&scrape, "zt_janitor_cloudflare_rate_limited_total"),
        0.0
    );
}

#[tokio::test]
async fn another_consumer_spending_half_the_quota_still_sees_no_429() {
    let env = limited(limit(0.5)).await;
    let expected = env.expected_candidates(Utc::now());
    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Applied, "{:?}", report.reason);
    let deleted: BTreeSet<String> = env.fake.deleted_ids().into_iter().collect();
    assert_eq!(deleted, expected);
    assert_eq!(env.fake.rate_limited(), 0);
}

#[tokio::test]
async fn a_429_that_comes_anyway_is_waited_out_and_the_cycle_completes() {
    let env = limited(limit(0.0)).await;
    let expected = env.expected_candidates(Utc::now());
    // Someone else empties the window just as the janitor starts: its first call trips the
    // block, which it waits out (Retry-After) before sending anything again.
    env.fake.spend_quota(40);
    let metrics = Metrics::new();
    let report = env.once_with(&metrics).await;
    assert_eq!(report.outcome, RunOutcome::Applied, "{:?}", report.reason);
    let deleted: BTreeSet<String> = env.fake.deleted_ids().into_iter().collect();
    assert_eq!(deleted, expected);
    assert_eq!(
        env.fake.rate_limited(),
        1,
        "nothing was sent during the block"
    );
    assert_eq!(
        metric(
            &metrics.render(),
            "zt_janitor_cloudflare_rate_limited_total"
        ),
        1.0
    );
}

#[tokio::test]
async fn without_the_headers_the_janitor_keeps_to_its_share_of_the_documented_limit() {
    // Cloudflare's own limit, no headers: the janitor counts its calls and stops at 600 in
    // five minutes; with a 3-second deadline the rest of the listing waits for the next cycle.
    let env = Env::start(
        FakeOptions {
            registrations: 7_000,
            rate_limit: Some(FakeRateLimit {
                headers: false,
                ..FakeRateLimit::default()
            }),
            ..FakeOptions::default()
        },
        Settings {
            per_page: 10,
            cloudflare_extra: "cycle_deadline_secs = 3",
            ..Settings::default()
        },
    )
    .await;
    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Aborted, "{:?}", report.reason);
    let reason = report.reason.unwrap_or_default();
    assert!(reason.contains("rate-limit quota"), "{reason}");
    assert_eq!(env.fake.request_counts().list_pages, 600);
    assert_eq!(env.fake.rate_limited(), 0);
    assert!(
        env.fake.mutations().is_empty(),
        "nothing acted on a partial listing"
    );
}

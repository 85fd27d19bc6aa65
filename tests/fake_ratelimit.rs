//! The fake's rate limit behaves like Cloudflare's: a quota per fixed window shared with other
//! consumers of the token, `Ratelimit` and `Ratelimit-Policy` on every answer, and a block of
//! every call (429 with `Retry-After`, nothing changes) once a request finds the quota spent.
//! Real HTTP with reqwest, on windows of a few seconds.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use reqwest::Method;
use serde_json::Value;
use zt_janitor::fake::{
    Endpoint, FakeHandle, FakeOptions, FakeRateLimit, FakeRegistration, FakeServer, Fault,
    FaultRule, MutationKind,
};

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 29, 0, 0, 0).unwrap()
}

struct Api {
    fake: FakeHandle,
    http: reqwest::Client,
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// `(r, t)` of `Ratelimit: "default";r=R;t=T`.
    fn ratelimit(&self) -> (u32, u64) {
        let value = self
            .header("ratelimit")
            .unwrap_or_else(|| panic!("no Ratelimit header ({}): {}", self.status, self.text));
        let rest = value
            .strip_prefix("\"default\";r=")
            .unwrap_or_else(|| panic!("Ratelimit {value:?}"));
        let (r, t) = rest
            .split_once(";t=")
            .unwrap_or_else(|| panic!("Ratelimit {value:?}"));
        (r.parse().unwrap(), t.parse().unwrap())
    }

    fn retry_after(&self) -> u64 {
        self.header("retry-after")
            .unwrap_or_else(|| panic!("no Retry-After ({}): {}", self.status, self.text))
            .parse()
            .unwrap()
    }
}

impl Api {
    async fn start(rate_limit: Option<FakeRateLimit>) -> Api {
        let fake = FakeServer::start(FakeOptions {
            now: now(),
            rate_limit,
            ..FakeOptions::default()
        })
        .await
        .expect("fake starts");
        for n in 0..5 {
            fake.insert(&FakeRegistration::new(
                format!("00000000-0000-4000-8000-00000000000{n}"),
                now() - chrono::Duration::days(200),
            ));
        }
        Api {
            fake,
            http: reqwest::Client::new(),
        }
    }

    async fn limited(quota: u32, window_secs: f64, block_secs: f64) -> Api {
        Api::start(Some(FakeRateLimit {
            quota,
            window: Duration::from_secs_f64(window_secs),
            block: Duration::from_secs_f64(block_secs),
            ..FakeRateLimit::default()
        }))
        .await
    }

    fn url(&self, rest: &str) -> String {
        format!(
            "{}/accounts/{}/devices/{rest}",
            self.fake.base_url(),
            self.fake.account_id()
        )
    }

    async fn send_as(&self, method: Method, rest: &str, token: &str) -> Reply {
        let response = self
            .http
            .request(method, self.url(rest))
            .bearer_auth(token)
            .send()
            .await
            .expect("request reaches the fake");
        Reply {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            text: response.text().await.expect("body arrives"),
        }
    }

    async fn send(&self, method: Method, rest: &str) -> Reply {
        self.send_as(method, rest, &self.fake.token()).await
    }

    async fn list(&self) -> Reply {
        self.send(Method::GET, "registrations").await
    }

    fn remaining(&self) -> u32 {
        self.fake.rate_limit_status().expect("a rate limit").0
    }

    /// Sleeps until `left` (or a little less) remains of a window: this one's or the next's.
    async fn wait_until_window_left(&self, window: Duration, left: Duration) {
        let (_, until_end) = self.fake.rate_limit_status().expect("a rate limit");
        let sleep = if until_end > left {
            until_end - left
        } else {
            until_end + window - left
        };
        tokio::time::sleep(sleep).await;
    }
}

const ID: &str = "00000000-0000-4000-8000-000000000001";

fn assert_refused(reply: &Reply) {
    assert_eq!(reply.status, 429, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["success"], false);
    assert_eq!(body["errors"][0]["code"], 971);
    assert_eq!(
        body["errors"][0]["message"],
        "Please wait and consider throttling your request speed"
    );
}

#[tokio::test]
async fn without_a_rate_limit_nothing_is_limited_or_announced() {
    let api = Api::start(None).await;
    for _ in 0..30 {
        let reply = api.list().await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("ratelimit"), None);
        assert_eq!(reply.header("ratelimit-policy"), None);
    }
    assert_eq!(api.fake.rate_limit_status(), None);
    assert_eq!((api.fake.rate_limited(), api.fake.blocks()), (0, 0));
    api.fake.spend_quota(1000);
    assert_eq!(api.list().await.status, 200);
}

#[tokio::test]
async fn every_answer_carries_the_headers_and_r_counts_down_within_the_window() {
    let api = Api::limited(10, 60.0, 60.0).await;
    let first = api.list().await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("ratelimit-policy"),
        Some("\"default\";q=10;w=60")
    );
    let (r, t) = first.ratelimit();
    assert_eq!(r, 9);
    assert!((59..=60).contains(&t), "t={t}");
    assert_eq!(first.header("retry-after"), None);

    // A 404, an unknown path and a wrong method use the quota too, and say so.
    let missing = api
        .send(Method::GET, "registrations/no-such-registration")
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.ratelimit().0, 8);
    let unknown = api.send(Method::GET, "nothing-here").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.ratelimit().0, 7);
    let wrong = api.send(Method::PUT, "registrations").await;
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.ratelimit().0, 6);
    assert_eq!(
        wrong.header("ratelimit-policy"),
        Some("\"default\";q=10;w=60")
    );

    // Another user's failed authentication is told the state but uses none of it.
    let stranger = api.send_as(Method::GET, "registrations", "wrong").await;
    assert_eq!(stranger.status, 403);
    assert_eq!(stranger.ratelimit().0, 6);
    assert_eq!(api.remaining(), 6);

    let deleted = api
        .send(Method::DELETE, &format!("registrations/{ID}"))
        .await;
    assert_eq!(deleted.status, 200);
    assert_eq!(deleted.ratelimit().0, 5);
    assert!(!api.fake.contains(ID));
    assert_eq!((api.fake.rate_limited(), api.fake.blocks()), (0, 0));
}

#[tokio::test]
async fn a_spent_quota_blocks_every_call_across_the_window_boundary_then_service_resumes() {
    let window = Duration::from_secs(2);
    let api = Api::limited(10, 2.0, 1.5).await;
    // Trip late in a window so that the block outlives it.
    api.wait_until_window_left(window, Duration::from_millis(800))
        .await;
    for expected in (0..10).rev() {
        let reply = api.list().await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.ratelimit().0, expected);
    }
    let (remaining, window_left) = api.fake.rate_limit_status().unwrap();
    assert_eq!(remaining, 0);
    assert_eq!((api.fake.rate_limited(), api.fake.blocks()), (0, 0));

    let tripped_at = Instant::now();
    let tripped = api.list().await;
    assert_refused(&tripped);
    assert_eq!(tripped.retry_after(), 2, "1.5 s, rounded up");
    assert_eq!(tripped.ratelimit(), (0, 2));
    assert_eq!((api.fake.rate_limited(), api.fake.blocks()), (1, 1));

    // A delete during the block arrives, is logged, and changes nothing.
    let delete = api
        .send(Method::DELETE, &format!("registrations/{ID}"))
        .await;
    assert_refused(&delete);
    assert!(api.fake.contains(ID));
    let record = api.fake.mutations().pop().unwrap();
    assert_eq!(record.kind, MutationKind::DeleteOne);
    assert_eq!(record.ids, [ID]);
    assert_eq!(record.status, 429);
    assert!(!record.applied);
    assert!(record.rate_limited);
    assert!(api.fake.deleted_ids().is_empty());

    // The next window has begun; the block still holds.
    tokio::time::sleep_until((tripped_at + window_left + Duration::from_millis(150)).into()).await;
    assert!(
        tripped_at.elapsed() < Duration::from_millis(1400),
        "too slow"
    );
    let still = api.list().await;
    assert_refused(&still);
    assert!((1..=2).contains(&still.retry_after()));
    assert_eq!(api.fake.rate_limit_status().unwrap().0, 0);

    // After the block: the new window's quota, untouched by the refusals.
    tokio::time::sleep_until((tripped_at + Duration::from_millis(1750)).into()).await;
    let back = api.list().await;
    assert_eq!(back.status, 200);
    assert_eq!(back.ratelimit().0, 9);
    let delete = api
        .send(Method::DELETE, &format!("registrations/{ID}"))
        .await;
    assert_eq!(delete.status, 200);
    assert!(!api.fake.contains(ID));
    assert_eq!(api.fake.deleted_ids(), [ID]);

    assert_eq!((api.fake.rate_limited(), api.fake.blocks()), (3, 1));
    let counts = api.fake.request_counts();
    assert_eq!(counts.rate_limited, 3);
    assert_eq!(counts.total, 15);
    assert_eq!(counts.delete_one, 2);
}

#[tokio::test]
async fn without_headers_only_retry_after_is_sent() {
    let api = Api::start(Some(FakeRateLimit {
        quota: 2,
        window: Duration::from_secs(60),
        block: Duration::from_secs(5),
        headers: false,
        other_consumer_share: 0.0,
    }))
    .await;
    for _ in 0..2 {
        let reply = api.list().await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("ratelimit"), None);
        assert_eq!(reply.header("ratelimit-policy"), None);
    }
    let refused = api.list().await;
    assert_refused(&refused);
    assert_eq!(refused.retry_after(), 5);
    assert_eq!(refused.header("ratelimit"), None);
    assert_eq!(refused.header("ratelimit-policy"), None);
    assert_eq!(api.fake.rate_limit_status().unwrap().0, 0);
    assert_eq!(api.fake.blocks(), 1);
}

#[tokio::test]
async fn another_consumer_of_the_token_uses_its_share_of_the_quota() {
    let window = Duration::from_secs(2);
    let api = Api::start(Some(FakeRateLimit {
        quota: 100,
        window,
        block: window,
        headers: true,
        other_consumer_share: 0.5,
    }))
    .await;
    // 0.9 s into the window the other consumer has spent floor(50 × 0.9 / 2) = 22 or more.
    api.wait_until_window_left(window, Duration::from_millis(1100))
        .await;
    let before = api.remaining();
    let reply = api.list().await;
    let after = api.remaining();
    let (r, _) = reply.ratelimit();
    assert!(r < before, "{r} < {before}");
    assert!(after <= r, "{after} <= {r}");
    assert!(r <= 100 - 1 - 22, "r={r}");
    assert!(r >= 100 - 1 - 50, "r={r}");
}

#[tokio::test]
async fn spent_quota_leaves_less_and_the_next_request_trips_the_block() {
    let api = Api::limited(10, 60.0, 60.0).await;
    assert_eq!(api.list().await.ratelimit().0, 9);
    api.fake.spend_quota(4);
    assert_eq!(api.remaining(), 5);
    assert_eq!(api.list().await.ratelimit().0, 4);
    api.fake.spend_quota(100);
    let (remaining, until_end) = api.fake.rate_limit_status().unwrap();
    assert_eq!(remaining, 0);
    assert!(until_end <= Duration::from_secs(60));
    assert_eq!((api.fake.rate_limited(), api.fake.blocks()), (0, 0));
    let refused = api.list().await;
    assert_refused(&refused);
    assert_eq!(refused.retry_after(), 60);
    assert_eq!((api.fake.rate_limited(), api.fake.blocks()), (1, 1));
    let (remaining, until_unblocked) = api.fake.rate_limit_status().unwrap();
    assert_eq!(remaining, 0);
    assert!(until_unblocked > Duration::from_secs(59));
}

#[tokio::test]
async fn injected_429s_are_not_the_limiters() {
    let api = Api::limited(100, 60.0, 60.0).await;
    api.fake.set_faults(vec![FaultRule::first(
        Endpoint::AnyMutation,
        1,
        Fault::Status {
            code: 429,
            retry_after: Some(3),
        },
    )]);
    let faulted = api
        .send(Method::DELETE, &format!("registrations/{ID}"))
        .await;
    assert_refused(&faulted);
    assert_eq!(faulted.retry_after(), 3);
    // The faulted call reached the API: it used a unit.
    assert_eq!(faulted.ratelimit().0, 99);
    assert!(api.fake.contains(ID));
    let record = api.fake.mutations().pop().unwrap();
    assert_eq!(record.status, 429);
    assert!(!record.applied);
    assert!(!record.rate_limited, "a fault, not the limiter");
    assert_eq!((api.fake.rate_limited(), api.fake.blocks()), (0, 0));
    assert_eq!(api.fake.request_counts().rate_limited, 0);

    let deleted = api
        .send(Method::DELETE, &format!("registrations/{ID}"))
        .await;
    assert_eq!(deleted.status, 200);
    assert_eq!(deleted.ratelimit().0, 98);
}

#[tokio::test]
async fn invalid_limits_are_refused_at_start() {
    for limit in [
        FakeRateLimit {
            quota: 0,
            ..FakeRateLimit::default()
        },
        FakeRateLimit {
            window: Duration::from_millis(500),
            ..FakeRateLimit::default()
        },
        FakeRateLimit {
            other_consumer_share: -0.1,
            ..FakeRateLimit::default()
        },
    ] {
        let err = FakeServer::start(FakeOptions {
            rate_limit: Some(limit.clone()),
            ..FakeOptions::default()
        })
        .await
        .expect_err(&format!("{limit:?} is refused"));
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    }
}

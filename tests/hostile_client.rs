//! The Cloudflare client against a hostile server: redirects (never followed, the token never
//! leaves), absurd `Retry-After` values (bounded, no panic), answers without a body or with
//! `"errors": null` (success), partial listings (the run aborts), 404s that are not
//! Cloudflare's "not found", and a stop request during a retry wait (the daemon exits at once
//! and closes its run).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{free_port, Env, Settings};
use sqlx::Row;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use zt_janitor::audit::RunOutcome;
use zt_janitor::cloudflare::{ApiError, Client, MutationOutcome};
use zt_janitor::config::{Action, Config};
use zt_janitor::fake::{Endpoint as Target, FakeHandle, FakeOptions, FakeServer, Fault, FaultRule};
use zt_janitor::metrics::Metrics;
use zt_janitor::resource::{self, Kind, Page, ResourceId, Scope};
use zt_janitor::secret::{ApiToken, Credentials};
use zt_janitor::stop::StopSignal;

fn opts(registrations: usize, seed: u64) -> FakeOptions {
    FakeOptions {
        registrations,
        seed,
        ..FakeOptions::default()
    }
}

/// A client as a cycle builds it, for `base_url`, with the fake's account and `token`.
fn client_for(base_url: &str, token: &str) -> Client {
    let text = format!(
        r#"
[cloudflare]
account_id = "{account}"
base_url = "{base_url}"
max_retries = 2
request_timeout_secs = 5

[[rule]]
name = "r"
resource = "device_registration"
action = "delete"
idle_days = 90
"#,
        account = zt_janitor::fake::DEFAULT_ACCOUNT_ID,
    );
    let config = Config::from_toml_str(&text, Path::new("test.toml")).expect("valid config");
    let token = ApiToken::new(token.to_owned()).expect("valid token");
    Client::new(
        &config.cloudflare,
        Credentials::ApiToken(token),
        Metrics::new(),
    )
    .expect("client builds")
}

/// The first page of the registration listing, as the planner asks for it.
async fn list_first_page(client: &Client) -> Result<Page, ApiError> {
    resource::list_page(Kind::DeviceRegistration, client, &Scope::default(), None).await
}

/// The call the executor sends to carry out `action` on `ids`.
async fn act(
    client: &Client,
    action: Action,
    ids: &[ResourceId],
) -> Result<MutationOutcome, ApiError> {
    let request = resource::mutation_request(
        Kind::DeviceRegistration,
        client.account(),
        &Scope::default(),
        action,
        ids,
    );
    client.mutate(&request).await
}

fn host_of(fake: &FakeHandle) -> String {
    fake.addr().to_string()
}

// ---- item 3: redirects ----------------------------------------------------------------------

#[tokio::test]
async fn redirects_to_another_host_are_never_followed_and_abort_the_run() {
    // The second fake accepts the same token: anything sent there would be a leak.
    let other = FakeServer::start(opts(50, 2)).await.unwrap();
    let env = Env::start(opts(200, 7), Settings::default()).await;
    let before = env.fake.len();
    env.fake.set_faults(vec![FaultRule::always(
        Target::Any,
        Fault::Redirect {
            status: 307,
            location: other.base_url(),
        },
    )]);

    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Aborted, "{:?}", report.reason);
    let reason = report.reason.unwrap_or_default();
    assert!(
        reason.contains(&host_of(&other)) && reason.contains("307"),
        "the reason names the redirect and its host: {reason}"
    );
    assert!(!reason.contains(&env.fake.token()), "no token in: {reason}");
    assert_eq!(
        other.request_counts().total,
        0,
        "no request (so no token) reached the redirect's target"
    );
    assert_eq!(
        env.fake.request_counts().list_pages,
        1,
        "a redirect is not retried"
    );
    assert!(env.fake.mutations().is_empty());
    assert_eq!(env.fake.len(), before);
    assert_eq!(other.len(), 50);
}

#[tokio::test]
async fn a_redirected_delete_is_not_resent_anywhere_and_fails_the_run() {
    let other = FakeServer::start(opts(50, 2)).await.unwrap();
    let env = Env::start(opts(200, 7), Settings::default()).await;
    let before = env.fake.len();
    assert!(!env.expected_candidates(Utc::now()).is_empty());
    // Listing works; every delete is answered 302 (which clients used to re-send as a DELETE)
    // and every other mutation 307, both to the other fake.
    env.fake.set_faults(vec![
        FaultRule::always(
            Target::DeleteOne,
            Fault::Redirect {
                status: 302,
                location: other.base_url(),
            },
        ),
        FaultRule::always(
            Target::BulkDelete,
            Fault::Redirect {
                status: 302,
                location: other.base_url(),
            },
        ),
        FaultRule::always(
            Target::AnyMutation,
            Fault::Redirect {
                status: 307,
                location: other.base_url(),
            },
        ),
    ]);

    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Failed, "{:?}", report.reason);
    let reason = report.reason.unwrap_or_default();
    assert!(
        reason.contains(&host_of(&other)) && reason.contains("302"),
        "{reason}"
    );
    assert_eq!(
        other.request_counts().total,
        0,
        "nothing reached the target"
    );
    let mutations = env.fake.mutations();
    assert_eq!(mutations.len(), 1, "one call, not retried: {mutations:?}");
    assert!(!mutations[0].applied);
    assert_eq!(env.fake.len(), before, "nothing deleted here");
    assert_eq!(other.len(), 50, "nothing deleted there");
    env.assert_every_mutation_audited().await;
}

/// A server that answers every request 307 to itself on another path, with credentials and a
/// query in the `Location`, and records each request's head.
async fn self_redirecting_server() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                log.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let reply = format!(
                    "HTTP/1.1 307 Temporary Redirect\r\n\
                     Location: http://admin:s3cr3t-pw@{addr}/client/v4/elsewhere?leak=q7q7q7\r\n\
                     Content-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = socket.write_all(reply.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (format!("http://{addr}/client/v4"), seen)
}

#[tokio::test]
async fn a_redirect_makes_no_second_hop_and_its_error_names_only_the_host() {
    let (base, seen) = self_redirecting_server().await;
    let host = base
        .trim_start_matches("http://")
        .trim_end_matches("/client/v4")
        .to_owned();
    let token = "tok-very-secret-0123456789";
    let client = client_for(&base, token);

    let listed = list_first_page(&client).await;
    let id = ResourceId::parse("0b9a1c2e-6f0e-4a53-9d0e-5b7a3f1c2d4e").unwrap();
    let deleted = act(&client, Action::Delete, std::slice::from_ref(&id)).await;

    for (call, result) in [
        ("list", listed.map(|_| ()).err()),
        ("delete", deleted.map(|_| ()).err()),
    ] {
        let err = result.unwrap_or_else(|| panic!("{call}: a redirect must be an error"));
        match &err {
            ApiError::Redirect {
                status: 307,
                location_host: Some(h),
                ..
            } => assert_eq!(h, &host),
            other => panic!("{call}: expected a redirect error, got {other:?}"),
        }
        assert!(err.is_run_wide());
        let text = err.to_string();
        for secret in [token, "s3cr3t-pw", "admin", "q7q7q7", "elsewhere"] {
            assert!(!text.contains(secret), "{call}: {secret:?} in {text}");
        }
        assert!(text.contains(&host), "{call}: {text}");
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        2,
        "one request per call, no second hop: {seen:#?}"
    );
    assert!(
        seen[0].starts_with("GET /client/v4/accounts/"),
        "{}",
        seen[0]
    );
    assert!(
        seen[1].starts_with("DELETE /client/v4/accounts/"),
        "{}",
        seen[1]
    );
    assert!(seen.iter().all(|head| !head.contains("elsewhere")));
}

// ---- item 4: huge Retry-After ---------------------------------------------------------------

#[tokio::test]
async fn huge_retry_after_values_end_the_cycle_without_a_panic() {
    let raw = |seconds: Option<&str>, millis: Option<&str>| Fault::RawRetryAfter {
        seconds: seconds.map(str::to_owned),
        millis: millis.map(str::to_owned),
    };
    let cases = [
        ("Retry-After: 1e300", raw(Some("1e300"), None)),
        ("Retry-After: inf", raw(Some("inf"), None)),
        (
            "retry-after-ms: 99999999999999999999999",
            raw(None, Some("99999999999999999999999")),
        ),
    ];
    for (case, fault) in cases {
        let env = Env::start(
            opts(50, 3),
            Settings {
                cloudflare_extra: "cycle_deadline_secs = 20",
                ..Settings::default()
            },
        )
        .await;
        env.fake
            .set_faults(vec![FaultRule::always(Target::ListRegistrations, fault)]);
        let started = Instant::now();
        let report = env.once().await;
        assert_eq!(report.outcome, RunOutcome::Aborted, "{case}");
        let reason = report.reason.unwrap_or_default();
        assert!(
            reason.contains("cycle deadline") && reason.contains("429"),
            "{case}: the reason says why it gave up: {reason}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{case}: the cycle did not sleep into its deadline"
        );
        assert!(env.fake.mutations().is_empty(), "{case}");
        let runs = env.run_outcomes().await;
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].0, "aborted", "{case}: the run is closed");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_survives_a_huge_retry_after_and_closes_its_run() {
    let env = Env::start(opts(50, 3), Settings::default()).await;
    env.fake.set_faults(vec![FaultRule::always(
        Target::ListRegistrations,
        Fault::RawRetryAfter {
            seconds: Some("1e300".to_owned()),
            millis: Some("99999999999999999999999".to_owned()),
        },
    )]);
    // Any wait is bounded by 120 s, and by the time left to the deadline: with 30 s left the
    // client gives up at once instead of sleeping.
    env.write_config(&Settings {
        cloudflare_extra: "cycle_deadline_secs = 30",
        ..Settings::default()
    });
    let out = env.binary(&["once"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(4),
        "aborted (exit 4), not a panic: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let runs = env.run_outcomes().await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].0, "aborted");
}

// ---- item 17: answers without a body, errors null, partial listings -------------------------

#[tokio::test]
async fn a_mutation_answered_204_without_a_body_is_a_success() {
    let env = Env::start(opts(200, 11), Settings::default()).await;
    let expected = env.expected_candidates(Utc::now());
    assert!(!expected.is_empty());
    env.fake.set_faults(vec![FaultRule::always(
        Target::AnyMutation,
        Fault::Empty204,
    )]);
    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Applied, "{:?}", report.reason);
    assert_eq!(report.summary.actions_done, expected.len() as u64);
    assert_eq!(report.summary.actions_failed, 0);
    assert_eq!(env.mutated_ids(), expected);
    assert!(
        env.fake.mutations().iter().all(|m| m.status == 204),
        "each call sent once, answered 204"
    );
    assert!(env.ids_mutated_twice().is_empty());
    env.assert_every_mutation_audited().await;
}

#[tokio::test]
async fn errors_null_is_no_error_on_listings_and_mutations() {
    let env = Env::start(opts(200, 12), Settings::default()).await;
    let expected = env.expected_candidates(Utc::now());
    assert!(!expected.is_empty());
    env.fake.set_faults(vec![
        FaultRule::always(Target::ListRegistrations, Fault::ErrorsNull),
        FaultRule::always(Target::BulkDelete, Fault::ErrorsNull),
    ]);
    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Applied, "{:?}", report.reason);
    assert_eq!(report.summary.actions_done, expected.len() as u64);
    assert_eq!(env.mutated_ids(), expected);
    let calls = env.fake.mutations();
    assert_eq!(
        calls.len(),
        expected.len().div_ceil(100),
        "one call per chunk, none retried"
    );
}

#[tokio::test]
async fn a_partial_listing_aborts_the_run_and_nothing_is_done() {
    let env = Env::start(opts(200, 13), Settings::default()).await;
    let before = env.fake.len();
    env.fake.set_faults(vec![FaultRule::always(
        Target::ListRegistrations,
        Fault::PartialErrors,
    )]);
    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Aborted, "{:?}", report.reason);
    let reason = report.reason.unwrap_or_default();
    assert!(reason.contains("partial"), "{reason}");
    assert!(env.fake.mutations().is_empty());
    assert_eq!(env.fake.len(), before);
}

// ---- items 2, 16, 17: what a 404 means, at the client -------------------------------------------

#[tokio::test]
async fn a_404_after_an_ambiguous_attempt_is_reported_as_such() {
    let fake = FakeServer::start(opts(20, 5)).await.unwrap();
    let id = fake.registration_ids()[0].clone();
    fake.set_faults(vec![FaultRule::first(
        Target::DeleteOne,
        1,
        Fault::ApplyThenStatus(502),
    )]);
    let client = client_for(&fake.base_url(), &fake.token());
    let outcome = act(&client, Action::Delete, &[ResourceId::parse(&id).unwrap()])
        .await
        .expect("the retry is answered 404 with Cloudflare's envelope");
    assert!(
        matches!(
            outcome,
            MutationOutcome::NotFound {
                after_ambiguous_attempt: true,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert!(!fake.contains(&id), "the first attempt did delete it");
    assert_eq!(fake.request_counts().delete_one, 2);

    // Without an earlier ambiguous attempt, a plain Cloudflare 404 is a claim of "not found".
    let outcome = act(&client, Action::Delete, &[ResourceId::parse(&id).unwrap()])
        .await
        .unwrap();
    assert!(
        matches!(
            outcome,
            MutationOutcome::NotFound {
                code: Some(_),
                after_ambiguous_attempt: false
            }
        ),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_404_that_is_not_cloudflare_saying_not_found_is_a_run_wide_error() {
    let fake = FakeServer::start(opts(20, 6)).await.unwrap();
    let ids = fake.registration_ids();
    let client = client_for(&fake.base_url(), &fake.token());
    let cases = [
        (
            "routing 7003",
            Fault::Error {
                status: 404,
                code: 7003,
            },
        ),
        (
            "routing 7000",
            Fault::Error {
                status: 404,
                code: 7000,
            },
        ),
        ("HTML from a proxy", Fault::Html(404)),
    ];
    for (i, (case, fault)) in cases.into_iter().enumerate() {
        fake.set_faults(vec![FaultRule::always(Target::AnyMutation, fault)]);
        let id = ResourceId::parse(&ids[i]).unwrap();
        for (call, result) in [
            (
                "delete",
                act(&client, Action::Delete, std::slice::from_ref(&id)).await,
            ),
            (
                "revoke",
                act(&client, Action::Revoke, std::slice::from_ref(&id)).await,
            ),
        ] {
            match result {
                Err(e) => assert!(e.is_run_wide(), "{case} {call}: {e}"),
                Ok(outcome) => panic!("{case} {call}: taken as {outcome:?}"),
            }
        }
        assert!(fake.contains(&ids[i]), "{case}: nothing changed");
    }
}

// ---- item 20: a stop during a retry wait --------------------------------------------------------

#[tokio::test]
async fn a_stop_cuts_a_retry_wait_short() {
    let fake = FakeServer::start(opts(20, 8)).await.unwrap();
    fake.set_faults(vec!["list:status=429:retry_after=100:first=1"
        .parse::<FaultRule>()
        .unwrap()]);
    let stop = StopSignal::default();
    let client = client_for(&fake.base_url(), &fake.token()).with_stop(stop.clone());
    let stopper = {
        let fake = fake.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            while fake.request_counts().list_pages == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            stop.stop();
        })
    };
    let started = Instant::now();
    let result = list_first_page(&client).await;
    stopper.await.unwrap();
    match result {
        Err(e @ ApiError::Stopped { .. }) => assert!(e.is_run_wide()),
        other => panic!("expected Stopped, got {:?}", other.map(|p| p.items.len())),
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the 100 s wait was cut"
    );
    assert_eq!(fake.request_counts().list_pages, 1, "not sent again");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_retry_wait_stops_the_daemon_at_once_and_closes_the_run() {
    let extra = format!(
        "[schedule]\ncron = \"0 0 0 1 1 *\"\nrun_on_start = true\n\n[metrics]\nlisten = \"127.0.0.1:{}\"\n",
        free_port()
    );
    let env = Env::start(
        opts(400, 21),
        Settings {
            chunk: 50,
            extra: &extra,
            ..Settings::default()
        },
    )
    .await;
    assert!(
        env.expected_candidates(Utc::now()).len() > 50,
        "several calls"
    );
    env.fake
        .set_faults(vec!["bulk_delete:status=429:retry_after=100:first=1"
            .parse::<FaultRule>()
            .unwrap()]);
    let log_path = env.dir.path().join("daemon.log");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_zt-janitor"))
        .args(["run", "--config"])
        .arg(&env.config_path)
        .env_remove("CLOUDFLARE_API_TOKEN")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let until = Instant::now() + Duration::from_secs(30);
    while env.fake.request_counts().bulk_delete == 0 {
        if Instant::now() > until {
            let _ = daemon.kill();
            panic!("no bulk delete was sent:\n{}", log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the client read the 429 and start its 100 s wait.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = Instant::now();
    let ok = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM failed");
    let status = loop {
        if let Some(status) = daemon.try_wait().unwrap() {
            break status;
        }
        if sent.elapsed() > Duration::from_secs(15) {
            let _ = daemon.kill();
            let _ = daemon.wait();
            panic!("the daemon did not exit within 15 s of SIGTERM:\n{}", log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit {status:?}:\n{}", log());

    assert_eq!(
        env.fake.request_counts().bulk_delete,
        1,
        "nothing sent after the stop"
    );
    let runs = env.run_outcomes().await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    let (outcome, reason) = &runs[0];
    assert_eq!(outcome, "aborted", "{runs:?}");
    assert!(
        reason.as_deref().unwrap_or("").contains("shutdown"),
        "the reason names the stop: {runs:?}"
    );
    let pool = env.sql().await;
    let planned: i64 = sqlx::query("SELECT COUNT(*) FROM actions WHERE status = 'planned'")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(planned, 0, "no action is left planned");
    let open: i64 = sqlx::query("SELECT COUNT(*) FROM mutations WHERE outcome IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, 0, "no intent is left without an outcome");
    let first: String = sqlx::query("SELECT outcome FROM mutations ORDER BY id LIMIT 1")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(first, "error", "the call answered 429 and then stopped");
    pool.close().await;
    env.assert_every_mutation_audited().await;
}

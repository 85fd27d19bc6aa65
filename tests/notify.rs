//! Notifications end to end: the real cycle against the fake API, then the real delivery to a
//! webhook receiver written here (axum on a random loopback port), which records what it got
//! and answers as each test needs: 200, 500, or never.

mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::Router;
use chrono::Utc;
use common::{days_ago, free_port, get, metric, signal, wait_for, Env, Settings};
use serde_json::Value;
use sqlx::Row;
use zt_janitor::cycle::CycleReport;
use zt_janitor::fake::{FakeOptions, FakeRegistration};
use zt_janitor::metrics::Metrics;
use zt_janitor::notify::Outbox;

/// The secret part of every webhook URL here: it must never show in logs, errors or the audit.
const SECRET: &str = "T0SECRET/B0SECRET/xoxwebhooktoken";
const HOSTILE: &str = "<!channel> <https://evil.example|click> & co";

#[derive(Clone, Copy)]
enum Answer {
    Ok,
    ServerError,
    Hang,
}

#[derive(Clone)]
struct Receiver {
    bodies: Arc<Mutex<Vec<(String, Value)>>>,
    hits: Arc<Mutex<Vec<Instant>>>,
    port: u16,
}

impl Receiver {
    async fn start(answer: Answer) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let receiver = Receiver {
            bodies: Arc::default(),
            hits: Arc::default(),
            port,
        };
        let r = receiver.clone();
        let app = Router::new().fallback(move |uri: axum::http::Uri, body: Bytes| {
            let r = r.clone();
            async move {
                r.hits.lock().unwrap().push(Instant::now());
                let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                r.bodies
                    .lock()
                    .unwrap()
                    .push((uri.path().to_owned(), value));
                match answer {
                    Answer::Ok => StatusCode::OK,
                    Answer::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
                    Answer::Hang => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        StatusCode::OK
                    }
                }
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        receiver
    }

    /// The URL of target `name`, with the secret in its path.
    fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}/{SECRET}", self.port)
    }

    fn bodies_at(&self, name: &str) -> Vec<Value> {
        let prefix = format!("/{name}/");
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .filter(|(path, _)| path.starts_with(&prefix))
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// A `[[notify]]` table whose URL is in a file of `env`'s directory.
fn target(env: &Env, name: &str, url: &str, extra: &str) -> String {
    let file = env.dir.path().join(format!("{name}.url"));
    std::fs::write(&file, format!("{url}\n")).unwrap();
    common::set_private(&file);
    format!(
        "[[notify]]\nname = \"{name}\"\nurl_file = \"{}\"\n{extra}\n",
        file.display()
    )
}

fn opts(seed: u64) -> FakeOptions {
    FakeOptions {
        registrations: 60,
        seed,
        ..FakeOptions::default()
    }
}

/// One cycle as `once` runs it, then its notifications; how long the cycle took (including
/// starting the deliveries), and the report. Deliveries are waited for, at most `wait`.
async fn run_and_notify(
    env: &Env,
    metrics: &Metrics,
    wait: Duration,
) -> (Duration, CycleReport, bool) {
    let janitor = env.open().await.with_metrics(metrics.clone());
    metrics.preinitialise_notify(&janitor.loaded.config.notify);
    let outbox = Outbox::default();
    let started = Instant::now();
    let report = janitor.cycle().run(Utc::now()).await.unwrap();
    outbox.after_run(&janitor.loaded.config, &janitor.audit, metrics, &report);
    let took = started.elapsed();
    let finished = outbox.wait(wait).await;
    janitor.close().await;
    (took, report, finished)
}

/// (target, attempt, outcome, http_status, error, last) of every recorded attempt.
async fn attempts(env: &Env) -> Vec<(String, i64, String, Option<i64>, Option<String>, bool)> {
    let pool = env.sql().await;
    sqlx::query(
        "SELECT target, attempt, outcome, http_status, error, last FROM notification_attempts
         ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get(0),
            r.get(1),
            r.get(2),
            r.get(3),
            r.get(4),
            r.get::<i64, _>(5) == 1,
        )
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn json_and_slack_payloads_report_the_run_and_escape_hostile_names() {
    let receiver = Receiver::start(Answer::Ok).await;
    let env = Env::start(opts(31), Settings::default()).await;
    let hostile_id = env.fake.insert(&FakeRegistration {
        device_name: HOSTILE.into(),
        ..FakeRegistration::new(
            "dddddddd-0000-4000-8000-000000000001",
            days_ago(Utc::now(), 400),
        )
    });
    let extra = format!(
        "{}{}",
        target(&env, "generic", &receiver.url("generic"), "max_items = 500"),
        target(&env, "slack", &receiver.url("slack"), "format = \"slack\"")
    );
    env.write_config(&Settings {
        extra: &extra,
        ..Settings::default()
    });
    // max_items = 500 is out of range: a located error, fixed below.
    let error = zt_janitor::config::Config::load(&env.config_path).unwrap_err();
    assert!(
        error.to_string().contains("[[notify]] #1 max_items"),
        "{error}"
    );
    let extra = extra.replace("max_items = 500", "max_items = 100");
    env.write_config(&Settings {
        extra: &extra,
        ..Settings::default()
    });

    let metrics = Metrics::new();
    let (_, report, finished) = run_and_notify(&env, &metrics, Duration::from_secs(20)).await;
    assert!(finished);
    let deleted = env.fake.deleted_ids();
    assert!(deleted.contains(&hostile_id));
    assert_eq!(report.summary.actions_done, deleted.len() as u64);

    let json = receiver.bodies_at("generic");
    assert_eq!(json.len(), 1, "one delivery, no retry");
    let j = &json[0];
    let mut keys: Vec<&str> = j.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "aborted",
            "account_id",
            "items",
            "items_by_status",
            "items_omitted",
            "kinds",
            "kinds_omitted",
            "level",
            "run",
            "schema_version",
            "source",
            "summary"
        ]
    );
    assert_eq!(j["schema_version"], 1);
    assert_eq!(j["run"]["id"], report.run_id);
    assert_eq!(j["run"]["outcome"], "applied");
    assert_eq!(j["level"], "actions");
    assert_eq!(j["kinds"][0]["resource"], "device_registration");
    assert_eq!(j["kinds"][0]["done"], deleted.len());
    assert_eq!(j["kinds"][0]["failed"], 0);
    assert_eq!(j["items_by_status"]["done"], deleted.len());
    let listed: std::collections::BTreeSet<String> = j["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        listed,
        deleted.iter().cloned().collect(),
        "every deletion listed (fewer than max_items)"
    );
    assert!(j["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["name"] == HOSTILE));

    let slack = receiver.bodies_at("slack");
    assert_eq!(slack.len(), 1);
    let s = &slack[0];
    let mut keys: Vec<&str> = s.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["blocks", "text"]);
    assert!(s["text"]
        .as_str()
        .unwrap()
        .contains(&format!("{} done", deleted.len())));
    let blocks = s["blocks"].as_array().unwrap();
    assert!(blocks.len() <= 50);
    let all = serde_json::to_string(s).unwrap();
    assert!(!all.contains("<!channel>"), "{all}");
    assert!(!all.contains("<https://evil"), "{all}");
    assert!(
        all.contains("&lt;!channel&gt; &lt;https://evil.example|click&gt; &amp; co"),
        "{all}"
    );
    // Default max_items: 20 listed, the rest counted.
    let lines: usize = blocks
        .iter()
        .filter_map(|b| b["text"]["text"].as_str())
        .map(|t| t.matches("• ").count())
        .sum();
    assert_eq!(lines, deleted.len().min(20));

    let tried = attempts(&env).await;
    assert_eq!(tried.len(), 2);
    assert!(tried
        .iter()
        .all(|a| a.1 == 1 && a.2 == "delivered" && a.3 == Some(200) && a.5));
    assert_eq!(
        metric(
            &metrics.render(),
            "zt_janitor_notifications_total{outcome=\"delivered\",target=\"slack\"}"
        ),
        Some(1.0)
    );
}

/// What the tracing subscriber wrote while the test ran (current-thread runtime: the
/// deliveries' tasks run on this thread, under this subscriber).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn failing_receivers_get_retries_and_change_nothing_the_run_does() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // The same account twice: once without notifications, once with two failing targets.
    let plain = Env::start(opts(32), Settings::default()).await;
    let (_, plain_report, _) = run_and_notify(&plain, &Metrics::new(), Duration::ZERO).await;

    let receiver = Receiver::start(Answer::ServerError).await;
    let env = Env::start(opts(32), Settings::default()).await;
    let closed = format!("http://127.0.0.1:{}/closed/{SECRET}", free_port());
    let extra = format!(
        "{}{}",
        target(
            &env,
            "five-hundred",
            &receiver.url("five-hundred"),
            "deadline_secs = 3"
        ),
        target(&env, "closed", &closed, "deadline_secs = 3")
    );
    env.write_config(&Settings {
        extra: &extra,
        ..Settings::default()
    });
    let metrics = Metrics::new();
    let (_, report, finished) = run_and_notify(&env, &metrics, Duration::from_secs(20)).await;
    assert!(finished, "deliveries end at their deadline");

    assert_eq!(report.outcome, plain_report.outcome);
    assert_eq!(
        report.summary.actions_done,
        plain_report.summary.actions_done
    );
    assert_eq!(report.summary.actions_failed, 0);
    assert_eq!(env.mutated_ids(), plain.mutated_ids());
    assert_eq!(env.run_outcomes().await, plain.run_outcomes().await);
    env.assert_every_mutation_audited().await;

    let tried = attempts(&env).await;
    let of = |name: &str| -> Vec<_> { tried.iter().filter(|a| a.0 == name).cloned().collect() };
    let five = of("five-hundred");
    assert!(five.len() >= 2, "retried: {five:?}");
    assert_eq!(receiver.bodies_at("five-hundred").len(), five.len());
    assert!(five
        .iter()
        .all(|a| a.2 == "server_error" && a.3 == Some(500)));
    assert_eq!(
        five.iter().map(|a| a.1).collect::<Vec<_>>(),
        (1..=five.len() as i64).collect::<Vec<_>>()
    );
    assert!(five.last().unwrap().5 && five.iter().filter(|a| a.5).count() == 1);
    let refused = of("closed");
    assert!(refused.len() >= 2, "retried: {refused:?}");
    assert!(refused
        .iter()
        .all(|a| a.2 == "transport_error" && a.3.is_none()));
    let scrape = metrics.render();
    assert_eq!(
        metric(
            &scrape,
            "zt_janitor_notifications_total{outcome=\"server_error\",target=\"five-hundred\"}"
        ),
        Some(five.len() as f64)
    );
    assert_eq!(
        metric(
            &scrape,
            "zt_janitor_notifications_total{outcome=\"delivered\",target=\"closed\"}"
        ),
        Some(0.0),
        "pre-initialised"
    );

    // The secret is nowhere: not in the logs, not in the audited errors.
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("notification not delivered"), "{text}");
    assert!(text.contains("127.0.0.1"), "the host is logged: {text}");
    assert!(!text.contains("xoxwebhooktoken"), "{text}");
    for a in &tried {
        assert!(
            !a.4.as_deref().unwrap_or("").contains("xoxwebhooktoken"),
            "{a:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_receiver_hits_the_deadline_without_delaying_the_run() {
    let receiver = Receiver::start(Answer::Hang).await;
    let env = Env::start(opts(33), Settings::default()).await;
    let extra = target(
        &env,
        "hang",
        &receiver.url("hang"),
        "timeout_secs = 2\ndeadline_secs = 4",
    );
    env.write_config(&Settings {
        extra: &extra,
        ..Settings::default()
    });
    let metrics = Metrics::new();
    let started = Instant::now();
    let (took, report, finished) = run_and_notify(&env, &metrics, Duration::from_secs(20)).await;
    let waited = started.elapsed();
    assert!(finished);
    assert!(report.summary.actions_done > 0);
    // The cycle and the start of its deliveries took less than one attempt's timeout: nothing
    // waited for the receiver, which never answers.
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(report.seconds < 2.0, "{}", report.seconds);
    assert!(
        waited >= Duration::from_millis(3500),
        "the delivery ran to its deadline: {waited:?}"
    );
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    let tried = attempts(&env).await;
    assert!(
        !tried.is_empty() && tried.iter().all(|a| a.2 == "timeout"),
        "{tried:?}"
    );
    assert!(tried.last().unwrap().5);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_receiver_does_not_delay_the_daemons_next_cycle() {
    let receiver = Receiver::start(Answer::Hang).await;
    let port = free_port();
    let env = Env::start(opts(34), Settings::default()).await;
    let extra = format!(
        "[schedule]\ncron = \"* * * * * *\"\nrun_on_start = true\n\n[metrics]\nlisten = \
         \"127.0.0.1:{port}\"\n\n{}",
        target(
            &env,
            "hang",
            &receiver.url("hang"),
            "send = \"always\"\ndeadline_secs = 8"
        )
    );
    env.write_config(&Settings {
        extra: &extra,
        ..Settings::default()
    });
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_zt-janitor"))
        .args(["run", "--config"])
        .arg(&env.config_path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    // Every cycle's delivery hangs for 8 s; cycles keep coming every second regardless.
    wait_for(
        "three cycles while deliveries hang",
        Duration::from_secs(15),
        async || {
            let scrape = get(&metrics_url).await.1;
            let runs = metric(&scrape, "zt_janitor_runs_total{outcome=\"applied\"}").unwrap_or(0.0);
            runs >= 3.0
        },
    )
    .await;
    assert!(
        receiver.hits.lock().unwrap().len() >= 2,
        "each cycle sent its own notification"
    );
    signal(&daemon, "-TERM");
    let until = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = daemon.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < until, "the daemon did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut log = String::new();
    std::io::Read::read_to_string(daemon.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(status.success(), "{log}");
    assert!(!log.contains("xoxwebhooktoken"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn send_changes_sends_nothing_for_a_quiet_run_and_always_sends_it() {
    let receiver = Receiver::start(Answer::Ok).await;
    let env = Env::start(
        FakeOptions {
            registrations: 20,
            idle_share: 0.0,
            revoked_share: 0.0,
            seed: 35,
            ..FakeOptions::default()
        },
        Settings::default(),
    )
    .await;
    let extra = format!(
        "{}{}",
        target(&env, "changes", &receiver.url("changes"), ""),
        target(&env, "always", &receiver.url("always"), "send = \"always\"")
    );
    env.write_config(&Settings {
        extra: &extra,
        ..Settings::default()
    });
    let (_, report, _) = run_and_notify(&env, &Metrics::new(), Duration::from_secs(20)).await;
    assert_eq!(report.summary.candidates, Some(0));
    assert!(receiver.bodies_at("changes").is_empty());
    let always = receiver.bodies_at("always");
    assert_eq!(always.len(), 1);
    assert_eq!(always[0]["level"], Value::Null);
    let tried = attempts(&env).await;
    assert_eq!(tried.len(), 1);
    assert_eq!(tried[0].0, "always");
}

#[test]
fn a_literal_url_is_a_located_error_that_does_not_echo_it() {
    let text = format!(
        "[cloudflare]\naccount_id = \"0123456789abcdef0123456789abcdef\"\n\n[[rule]]\n\
         name = \"r\"\nresource = \"device_registration\"\naction = \"delete\"\nidle_days = 90\n\n\
         [[notify]]\nname = \"ops\"\nurl = \"https://hooks.slack.com/services/{SECRET}\"\n"
    );
    let error = zt_janitor::config::Config::from_toml_str(&text, std::path::Path::new("zt.toml"))
        .unwrap_err();
    let problems = error.problems();
    assert_eq!(problems.len(), 1, "{error}");
    let p = &problems[0];
    assert_eq!(
        (p.line, p.col, p.key.as_str()),
        (12, 7, "[[notify]] #1 url")
    );
    assert!(p.message.contains("url_file"), "{}", p.message);
    assert!(!error.to_string().contains("xoxwebhooktoken"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn once_waits_for_its_notifications_before_exiting() {
    let receiver = Receiver::start(Answer::Ok).await;
    let env = Env::start(opts(36), Settings::default()).await;
    let extra = target(&env, "once", &receiver.url("once"), "format = \"slack\"");
    env.write_config(&Settings {
        extra: &extra,
        ..Settings::default()
    });
    let out = tokio::task::spawn_blocking({
        let config = env.config_path.clone();
        move || {
            Command::new(env!("CARGO_BIN_EXE_zt-janitor"))
                .args(["once", "--config"])
                .arg(config)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = receiver.bodies_at("once");
    assert_eq!(got.len(), 1, "delivered before the process exited");
    let deleted = env.fake.deleted_ids().len();
    assert!(deleted > 0);
    assert!(got[0]["text"]
        .as_str()
        .unwrap()
        .contains(&format!("{deleted} done")));
    let tried = attempts(&env).await;
    assert_eq!(tried.len(), 1);
    assert_eq!(tried[0].2, "delivered");
}

/// Issue 13: a notification names the marks the run set, each with the day it will be acted
/// on and how to keep the object, and the marks it cleared, with why.
#[tokio::test(flavor = "multi_thread")]
async fn new_and_cleared_marks_are_in_the_notification_with_what_happens_next() {
    let receiver = Receiver::start(Answer::Ok).await;
    let env = Env::start(
        FakeOptions {
            registrations: 0,
            ..FakeOptions::default()
        },
        Settings::default(),
    )
    .await;
    let rules = format!(
        "{}{}",
        target(&env, "generic", &receiver.url("generic"), ""),
        target(&env, "slack", &receiver.url("slack"), "format = \"slack\"")
    );
    let rules = format!(
        "{rules}\n[[rule]]\nname = \"idle-90d\"\nresource = \"device_registration\"\n\
         action = \"delete\"\nidle_days = 90\ngrace_days = 14\n"
    );
    env.write_config(&Settings {
        rules: &rules,
        ..Settings::default()
    });
    let now = Utc::now();
    let laptop = env.fake.insert(&FakeRegistration {
        device_name: HOSTILE.into(),
        ..FakeRegistration::new("dddddddd-0000-4000-8000-000000000002", days_ago(now, 100))
    });
    let metrics = Metrics::new();
    let (_, report, finished) = run_and_notify(&env, &metrics, Duration::from_secs(20)).await;
    assert!(finished);
    assert!(env.fake.mutations().is_empty(), "marked, not deleted");
    assert_eq!(report.resources[0].grace.unwrap().marked, 1);

    let json = receiver.bodies_at("generic");
    assert_eq!(json.len(), 1, "a new mark is a change worth sending");
    let marks = &json[0]["marks"];
    assert_eq!(marks["marked"], 1);
    assert_eq!(marks["waiting"], 1);
    let new = &marks["new"][0];
    assert_eq!(new["id"], laptop.as_str());
    let acts_on = (now + chrono::TimeDelta::days(14))
        .format("%Y-%m-%d")
        .to_string();
    assert_eq!(new["acts_on"], acts_on.as_str());
    let next = new["next"].as_str().unwrap();
    assert!(
        next.contains(&format!("will be deleted on {acts_on}"))
            && next.contains("use it again")
            && next.contains("[[exclude]]"),
        "{next}"
    );
    let slack = receiver.bodies_at("slack");
    let text = slack[0]["blocks"].to_string();
    assert!(
        text.contains("Grace period") && text.contains(&acts_on),
        "{text}"
    );
    assert!(!text.contains("<!channel>"), "names stay escaped: {text}");

    // Seen again: the next run clears the mark and says why.
    env.fake.insert(&FakeRegistration::new(laptop.clone(), now));
    let (_, report, finished) = run_and_notify(&env, &metrics, Duration::from_secs(20)).await;
    assert!(finished);
    assert_eq!(report.resources[0].grace.unwrap().cleared, 1);
    let json = receiver.bodies_at("generic");
    assert_eq!(json.len(), 2);
    let cleared = &json[1]["marks"]["cleared_items"][0];
    assert_eq!(cleared["id"], laptop.as_str());
    assert!(cleared["reason"]
        .as_str()
        .unwrap()
        .contains("no longer a candidate"));
}

//! Readiness and metrics that fit a sidecar (issue 17, part 4): a failed cycle never makes the
//! process unready; a restart restores the last-run gauges from the audit log; the schedule's
//! next fire time is a gauge; `/` links the endpoints; the shipped sidecar manifest probes
//! what the README says.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use common::{free_port, get, metric, signal, wait_for, Env, Settings};
use zt_janitor::fake::FakeOptions;

/// A daily schedule at 03:00 UTC: it does not fire during a test (unless the test runs at
/// 03:00, which the next-run assertion tolerates).
const DAILY: &str = "0 0 3 * * *";

struct Daemon {
    child: Child,
    base: String,
    log: std::path::PathBuf,
}

impl Daemon {
    /// `zt-janitor run` on `env`'s config, whose metrics listen on `port`, once `/healthz`
    /// answers.
    async fn start(env: &Env, port: u16) -> Daemon {
        let log = env.dir.path().join(format!("daemon-{}.log", free_port()));
        let child = Command::new(env!("CARGO_BIN_EXE_zt-janitor"))
            .args(["run", "--config"])
            .arg(&env.config_path)
            .env("RUST_LOG", "info")
            .env_remove("CLOUDFLARE_API_TOKEN")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let daemon = Daemon {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        wait_for("the daemon to serve", Duration::from_secs(30), async || {
            get(&format!("{}/healthz", daemon.base)).await.0 == 200
        })
        .await;
        daemon
    }

    async fn scrape(&self) -> String {
        get(&format!("{}/metrics", self.base)).await.1
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn stop(mut self) {
        signal(&self.child, "-TERM");
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit {status}; log:\n{}", self.log());
                return;
            }
            assert!(Instant::now() < until, "the daemon did not stop");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn schedule(port: u16, run_on_start: bool) -> String {
    format!(
        "[schedule]\ncron = \"{DAILY}\"\nrun_on_start = {run_on_start}\n\n\
         [metrics]\nlisten = \"127.0.0.1:{port}\"\n"
    )
}

/// The next 03:00 UTC after `now`, computed without the code under test.
fn next_three_oclock(now: DateTime<Utc>) -> i64 {
    let today = now.date_naive().and_hms_opt(3, 0, 0).unwrap().and_utc();
    if today > now {
        today.timestamp()
    } else {
        (today + TimeDelta::days(1)).timestamp()
    }
}

/// Item 1: every listing fails, so each cycle aborts; the process stays ready, and says how
/// the last cycle ended. Before the fix /readyz answered 503 here, which in a sidecar takes
/// the application's pod out of its Services.
#[tokio::test(flavor = "multi_thread")]
async fn an_aborted_cycle_leaves_the_daemon_ready() {
    let port = free_port();
    let extra =
        format!("[schedule]\ncron = \"* * * * * *\"\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    let env = Env::start(
        FakeOptions {
            registrations: 10,
            ..FakeOptions::default()
        },
        Settings {
            max_retries: 0,
            extra: &extra,
            ..Settings::default()
        },
    )
    .await;
    env.fake
        .set_faults(vec!["list:status=500:always".parse().unwrap()]);
    let daemon = Daemon::start(&env, port).await;
    wait_for("an aborted cycle", Duration::from_secs(20), async || {
        metric(
            &daemon.scrape().await,
            "zt_janitor_runs_total{outcome=\"aborted\"}",
        )
        .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    let (status, body) = get(&format!("{}/readyz", daemon.base)).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("ready: the last cycle aborted"),
        "/readyz says how the last cycle ended: {body}"
    );
    let scrape = daemon.scrape().await;
    assert_eq!(
        metric(&scrape, "zt_janitor_last_run_outcome{outcome=\"aborted\"}"),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        metric(&scrape, "zt_janitor_last_run_outcome{outcome=\"applied\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(&scrape, "zt_janitor_last_success_timestamp_seconds"),
        Some(0.0)
    );
    assert_eq!(env.fake.mutations().len(), 0);
    daemon.stop().await;
    let outcomes = env.run_outcomes().await;
    assert!(outcomes.iter().all(|(o, _)| o == "aborted"), "{outcomes:?}");
}

/// Items 2 and 3: a cycle, a restart, and a scrape before the next cycle: the last-run
/// gauges hold what the audit log holds, every run outcome reads 0 rather than missing, and
/// the next run time is the schedule's.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_restores_the_last_run_gauges_from_the_audit_log() {
    let port = free_port();
    let first = schedule(port, true);
    let env = Env::start(
        FakeOptions {
            registrations: 30,
            seed: 5,
            ..FakeOptions::default()
        },
        Settings {
            extra: &first,
            ..Settings::default()
        },
    )
    .await;
    let daemon = Daemon::start(&env, port).await;
    wait_for("the start-up cycle", Duration::from_secs(20), async || {
        metric(
            &daemon.scrape().await,
            "zt_janitor_runs_total{outcome=\"applied\"}",
        ) == Some(1.0)
    })
    .await;
    daemon.stop().await;

    let pool = env.sql().await;
    let (finished, runs): (String, i64) = sqlx::query_as(
        "SELECT max(finished_at), count(*) FROM runs WHERE outcome IN ('applied', 'planned')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    assert_eq!(runs, 1);
    let finished = finished.parse::<DateTime<Utc>>().unwrap().timestamp() as f64;

    let second = schedule(port, false);
    env.write_config(&Settings {
        extra: &second,
        ..Settings::default()
    });
    let daemon = Daemon::start(&env, port).await;
    let scrape = daemon.scrape().await;
    let now = Utc::now();
    daemon.stop().await;
    assert_eq!(
        metric(&scrape, "zt_janitor_last_success_timestamp_seconds"),
        Some(finished),
        "{scrape}"
    );
    assert_eq!(
        metric(&scrape, "zt_janitor_last_run_timestamp_seconds"),
        Some(finished)
    );
    assert_eq!(
        metric(&scrape, "zt_janitor_last_run_outcome{outcome=\"applied\"}"),
        Some(1.0)
    );
    for outcome in ["applied", "planned", "refused", "aborted", "failed"] {
        assert_eq!(
            metric(
                &scrape,
                &format!("zt_janitor_runs_total{{outcome=\"{outcome}\"}}")
            ),
            Some(0.0),
            "{outcome}: no cycle ran in this process, and the series exists"
        );
    }
    assert_eq!(
        metric(
            &scrape,
            "zt_janitor_actions_total{action=\"delete\",outcome=\"failed\",resource=\"device_registration\",rule=\"idle-90d\"}"
        ),
        Some(0.0),
        "each rule's action series exists at 0"
    );
    let next = metric(&scrape, "zt_janitor_next_run_timestamp_seconds").unwrap();
    assert_eq!(next as i64, next_three_oclock(now), "{scrape}");
    assert_eq!(
        metric(&scrape, "zt_janitor_schedule_period_seconds"),
        Some(86_400.0)
    );
}

/// Item 3: the next-run gauge moves on at each tick, and follows a reload's schedule.
#[tokio::test(flavor = "multi_thread")]
async fn the_next_run_gauge_follows_the_ticks_and_reloads() {
    let port = free_port();
    let every_second =
        format!("[schedule]\ncron = \"* * * * * *\"\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    let env = Env::start(
        FakeOptions {
            registrations: 5,
            ..FakeOptions::default()
        },
        Settings {
            mode: "plan",
            extra: &every_second,
            ..Settings::default()
        },
    )
    .await;
    let daemon = Daemon::start(&env, port).await;
    let next = async || {
        metric(
            &daemon.scrape().await,
            "zt_janitor_next_run_timestamp_seconds",
        )
        .unwrap() as i64
    };
    let first = next().await;
    wait_for(
        "the gauge to move on",
        Duration::from_secs(10),
        async || next().await > first,
    )
    .await;
    let now = Utc::now().timestamp();
    let moved = next().await;
    assert!(
        (now..=now + 2).contains(&moved),
        "next run {moved}, now {now}"
    );
    assert_eq!(
        metric(&daemon.scrape().await, "zt_janitor_schedule_period_seconds"),
        Some(1.0)
    );

    let daily = schedule(port, false);
    env.write_config(&Settings {
        mode: "plan",
        extra: &daily,
        ..Settings::default()
    });
    signal(&daemon.child, "-HUP");
    wait_for(
        "the reloaded schedule",
        Duration::from_secs(10),
        async || next().await == next_three_oclock(Utc::now()),
    )
    .await;
    assert_eq!(
        metric(&daemon.scrape().await, "zt_janitor_schedule_period_seconds"),
        Some(86_400.0)
    );
    daemon.stop().await;
}

/// Item 5: `/` is a landing page linking the endpoints, as exporters do.
#[tokio::test(flavor = "multi_thread")]
async fn the_root_links_the_endpoints() {
    let port = free_port();
    let extra = schedule(port, false);
    let env = Env::start(
        FakeOptions::default(),
        Settings {
            extra: &extra,
            ..Settings::default()
        },
    )
    .await;
    let daemon = Daemon::start(&env, port).await;
    let response = reqwest::get(format!("{}/", daemon.base)).await.unwrap();
    assert_eq!(response.status(), 200);
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(kind.starts_with("text/html"), "{kind}");
    let page = response.text().await.unwrap();
    for link in ["metrics", "healthz", "readyz"] {
        assert!(page.contains(&format!("href=\"{link}\"")), "{link}: {page}");
        // Each link leads somewhere that answers.
        assert_eq!(get(&format!("{}/{link}", daemon.base)).await.0, 200);
    }
    assert_eq!(get(&format!("{}/nothing", daemon.base)).await.0, 404);
    daemon.stop().await;
}

/// The shipped sidecar manifest: readiness on `/healthz`, so that nothing the janitor does
/// (a failed cycle, a full audit volume) takes the application's pod out of its Services;
/// liveness on `/healthz`; and the README says the same.
#[test]
fn the_sidecar_probes_readiness_on_healthz_as_documented() {
    let manifest = include_str!("../deploy/kubernetes/sidecar.yaml");
    let janitor = manifest
        .split("- name: zt-janitor\n")
        .nth(1)
        .expect("a zt-janitor container");
    // The container's block ends where the next list item at its indentation begins.
    let container = janitor.split("\n      volumes:").next().unwrap();
    let probe_path = |probe: &str| {
        let block = container
            .split(&format!("{probe}:\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("no {probe} in\n{container}"));
        block
            .lines()
            .find_map(|l| l.trim().strip_prefix("path: "))
            .unwrap()
            .to_owned()
    };
    assert_eq!(probe_path("readinessProbe"), "/healthz");
    assert_eq!(probe_path("livenessProbe"), "/healthz");
    assert!(
        !container.contains("path: /readyz"),
        "no probe of the sidecar uses /readyz"
    );
    let readme = include_str!("../README.md");
    assert!(
        readme.contains("readiness probe on `/healthz`"),
        "the README documents the sidecar's readiness probe"
    );
}

/// Item 4: the alert rules are valid and their unit tests (durations derived from the
/// exported schedule) pass. CI installs promtool; without it there is nothing to run.
#[test]
fn the_alert_rules_pass_promtool() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus");
    let run = |args: &[&str]| {
        Command::new("promtool")
            .args(args)
            .current_dir(dir)
            .output()
    };
    let Ok(check) = run(&["check", "rules", "zt-janitor.rules.yml"]) else {
        eprintln!("promtool is not installed: skipped");
        return;
    };
    assert!(check.status.success(), "{check:?}");
    let test = run(&["test", "rules", "zt-janitor.rules.test.yml"]).unwrap();
    assert!(test.status.success(), "{test:?}");
}

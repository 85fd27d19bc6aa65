//! The daemon end to end: the real binary runs on a per-second cron against the fake API, is
//! watched through /metrics, reloads its config on SIGHUP, skips ticks while a cycle runs, and
//! on SIGTERM during a slow deletion lets the call finish, audits it and exits 0.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{days_ago, free_port, get, signal, wait_for, Env, Settings};
use sqlx::Row;
use zt_janitor::fake::{Endpoint, FakeOptions, FakeRegistration, Fault, FaultRule, MutationKind};

/// The value of one sample line (`name{labels} value`), 0 when absent.
fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Sum of every sample of a metric whose labels contain `filter`.
fn sum(scrape: &str, metric: &str, filter: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(metric) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_cycles_reports_metrics_reloads_and_stops_gracefully() {
    let port = free_port();
    let schedule =
        format!("[schedule]\ncron = \"* * * * * *\"\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    let settings = || Settings {
        chunk: 50,
        extra: &schedule,
        ..Settings::default()
    };
    let env = Env::start(
        FakeOptions {
            registrations: 400,
            seed: 21,
            ..FakeOptions::default()
        },
        settings(),
    )
    .await;
    let expected = env.expected_candidates(Utc::now());
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");

    let mut daemon = Command::new(env!("CARGO_BIN_EXE_zt-janitor"))
        .args(["run", "--config"])
        .arg(&env.config_path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // At least two cycles, observed through /metrics.
    wait_for("two applied cycles", Duration::from_secs(20), async || {
        sample(
            &get(&metrics_url).await.1,
            "zt_janitor_runs_total{outcome=\"applied\"}",
        ) >= 2.0
    })
    .await;
    let scrape = get(&metrics_url).await.1;
    let deleted = env.mutated_ids();
    assert_eq!(
        deleted, expected,
        "the daemon deleted exactly the candidates"
    );
    assert_eq!(
        sum(&scrape, "zt_janitor_actions_total", "outcome=\"done\"") as usize,
        deleted.len(),
        "actions_total matches what the fake saw deleted"
    );
    let seen = sample(
        &scrape,
        "zt_janitor_resources_seen{resource=\"device_registration\",status=\"active\"}",
    ) + sample(
        &scrape,
        "zt_janitor_resources_seen{resource=\"device_registration\",status=\"revoked\"}",
    );
    assert_eq!(
        seen as usize,
        env.fake.len(),
        "the last cycle saw what the fake holds"
    );
    assert!(sample(&scrape, "zt_janitor_cloudflare_requests_total{endpoint=\"list_registrations\",status_class=\"2xx\"}") >= 2.0);
    assert!(scrape.contains("zt_janitor_run_duration_seconds_bucket"));
    assert!(sample(&scrape, "zt_janitor_last_success_timestamp_seconds") > 0.0);
    assert_eq!(
        get(&format!("http://127.0.0.1:{port}/healthz")).await.0,
        200
    );
    let (ready, why) = get(&format!("http://127.0.0.1:{port}/readyz")).await;
    assert_eq!(ready, 200, "{why}");

    // A bad config on SIGHUP is rejected and the old one stays in force.
    let good = std::fs::read_to_string(&env.config_path).unwrap();
    std::fs::write(
        &env.config_path,
        good.replace("mode = \"apply\"", "mode = \"aply\""),
    )
    .unwrap();
    signal(&daemon, "-HUP");
    wait_for("a rejected reload", Duration::from_secs(10), async || {
        sample(
            &get(&metrics_url).await.1,
            "zt_janitor_config_reloads_total{result=\"error\"}",
        ) >= 1.0
    })
    .await;
    std::fs::write(&env.config_path, &good).unwrap();
    signal(&daemon, "-HUP");
    wait_for("an accepted reload", Duration::from_secs(10), async || {
        sample(
            &get(&metrics_url).await.1,
            "zt_janitor_config_reloads_total{result=\"ok\"}",
        ) >= 1.0
    })
    .await;

    // New idle registrations, and a Cloudflare that takes 3 s per bulk delete.
    let now = Utc::now();
    let slow: BTreeSet<String> = (0..5)
        .map(|i| {
            env.fake.insert(&FakeRegistration::new(
                format!("ffffffff-0000-4000-8000-00000000000{i}"),
                days_ago(now, 100),
            ))
        })
        .collect();
    env.fake.set_faults(vec![FaultRule::always(
        Endpoint::BulkDelete,
        Fault::Delay(Duration::from_secs(3)),
    )]);
    let bulk_calls_before = env
        .fake
        .mutations()
        .iter()
        .filter(|m| m.kind == MutationKind::BulkDelete)
        .count();
    wait_for(
        "the slow bulk delete to arrive",
        Duration::from_secs(10),
        async || {
            env.fake
                .mutations()
                .iter()
                .filter(|m| m.kind == MutationKind::BulkDelete)
                .count()
                > bulk_calls_before
        },
    )
    .await;
    // Ticks keep coming every second while that cycle waits on Cloudflare.
    wait_for("a skipped tick", Duration::from_secs(5), async || {
        sample(&get(&metrics_url).await.1, "zt_janitor_skipped_ticks_total") >= 1.0
    })
    .await;
    assert!(
        slow.iter().all(|id| env.fake.contains(id)),
        "still in flight"
    );
    signal(&daemon, "-TERM");
    let stopped = Instant::now();
    let status = loop {
        if let Some(status) = daemon.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(30),
            "the daemon did not exit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut log = String::new();
    std::io::Read::read_to_string(daemon.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(status.success(), "exit status {status:?}; log:\n{log}");
    assert!(
        !log.contains(&env.fake.token()),
        "the token must never be logged"
    );

    // The in-flight call finished, Cloudflare applied it, and the audit log has its outcome.
    assert!(
        slow.iter().all(|id| !env.fake.contains(id)),
        "the in-flight delete completed"
    );
    let pool = env.sql().await;
    for id in &slow {
        let row = sqlx::query(
            "SELECT a.status, m.outcome, m.http_status FROM actions a
             JOIN mutations m ON m.id = a.mutation_id
             WHERE a.resource_id = ?1 AND a.status != 'not_attempted'",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(row.get::<String, _>(0), "done");
        assert_eq!(row.get::<String, _>(1), "ok");
        assert_eq!(row.get::<i64, _>(2), 200);
    }
    let open_runs: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE outcome IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(open_runs, 0, "every run was closed before exit");
    env.assert_every_mutation_audited().await;
}

//! The executor against a hostile API (issue 10, items 2, 12, 15, 16, 17): a call's answer is
//! only a claim, confirmed by listing the ids; a 404 is never success by itself; one id that
//! cannot be deleted fails alone, the others are still deleted, and after a few runs it is
//! reported stuck instead of failing every run.

mod common;

use std::collections::BTreeSet;

use chrono::Utc;
use common::{days_ago, Env, Settings};
use sqlx::Row;
use zt_janitor::apply::STUCK_AFTER_RUNS;
use zt_janitor::audit::RunOutcome;
use zt_janitor::cycle::CycleReport;
use zt_janitor::fake::{Endpoint as Target, FakeOptions, FakeRegistration, Fault, FaultRule};
use zt_janitor::metrics::Metrics;

const REVOKE_IDLE: &str = r#"
[[rule]]
name = "idle-revoke"
resource = "device_registration"
action = "revoke"
idle_days = 90
"#;

/// A fake with `n` registrations idle for 200 days (all candidates of either rule set), and
/// nothing else.
async fn env_with_idle(n: usize, settings: Settings<'_>) -> (Env, Vec<String>) {
    let env = Env::start(
        FakeOptions {
            registrations: 0,
            seed: 5,
            ..FakeOptions::default()
        },
        settings,
    )
    .await;
    let now = Utc::now();
    let ids = (0..n)
        .map(|i| {
            env.fake.insert(&FakeRegistration::new(
                format!("aaaaaaaa-0000-4000-8000-{i:012}"),
                days_ago(now, 200),
            ))
        })
        .collect();
    (env, ids)
}

/// (resource_id, status, status_detail) of every action of run `run`.
async fn actions_of_run(env: &Env, run: i64) -> Vec<(String, String, Option<String>)> {
    let pool = env.sql().await;
    let rows = sqlx::query(
        "SELECT resource_id, status, status_detail FROM actions WHERE run_id = ?1 ORDER BY resource_id",
    )
    .bind(run)
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows.iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn with_status<'a>(rows: &'a [(String, String, Option<String>)], status: &str) -> Vec<&'a str> {
    rows.iter()
        .filter(|r| r.1 == status)
        .map(|r| r.0.as_str())
        .collect()
}

fn count(metrics: &Metrics, rule: &str, action: &str, outcome: &str) -> u64 {
    metrics
        .actions
        .with_label_values(&["device_registration", rule, action, outcome])
        .get()
}

/// Nothing is recorded as achieved, the fake still holds every id, and the run is not
/// reported as a success.
async fn assert_nothing_claimed(env: &Env, report: &CycleReport, ids: &[String]) {
    let rows = actions_of_run(env, report.run_id).await;
    assert_eq!(rows.len(), ids.len());
    for (id, status, detail) in &rows {
        assert!(
            status == "failed" || status == "unconfirmed",
            "{id} is {status} ({detail:?}), but Cloudflare did nothing"
        );
    }
    for id in ids {
        assert!(env.fake.contains(id), "{id} was really deleted");
    }
    assert_ne!(report.outcome, RunOutcome::Applied, "{:?}", report.reason);
    assert_eq!(report.summary.actions_done, 0);
    assert_eq!(report.summary.actions_failed, ids.len() as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bulk_delete_that_deletes_only_its_first_id_is_confirmed_for_that_id_only() {
    let (env, ids) = env_with_idle(6, Settings::default()).await;
    env.fake.set_faults(vec![FaultRule::always(
        Target::BulkDelete,
        Fault::PartialApply,
    )]);
    let mut done_ever = BTreeSet::new();
    for run in 1..=2 {
        let metrics = Metrics::new();
        let report = env.once_with(&metrics).await;
        let rows = actions_of_run(&env, report.run_id).await;
        let done = with_status(&rows, "done");
        let unconfirmed = with_status(&rows, "unconfirmed");
        let left = 6 - (run - 1);
        assert_eq!(done.len(), 1, "run {run}: {rows:?}");
        assert_eq!(unconfirmed.len(), left - 1, "run {run}: {rows:?}");
        assert!(!env.fake.contains(done[0]), "what is done is gone");
        for id in &unconfirmed {
            assert!(env.fake.contains(id));
        }
        assert!(
            done_ever.insert(done[0].to_owned()),
            "run {run} records {} done again",
            done[0]
        );
        assert_eq!(report.outcome, RunOutcome::Failed);
        assert!(report.reason.as_deref().unwrap().contains("unconfirmed"));
        assert_eq!(report.summary.actions_done, 1);
        assert_eq!(report.summary.actions_unconfirmed, left as u64 - 1);
        assert_eq!(
            count(&metrics, "idle-90d", "delete", "unconfirmed"),
            left as u64 - 1
        );
        assert_eq!(count(&metrics, "idle-90d", "delete", "done"), 1);
        // The fake deleted exactly the ids recorded done, no more.
        let deleted: BTreeSet<String> = env.fake.deleted_ids().into_iter().collect();
        assert_eq!(deleted, done_ever);
    }
    // One confirmation listing per call: the filtered listing of the ids acted on.
    let pool = env.sql().await;
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM mutations WHERE outcome IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(pending, 0);
    drop(ids);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_202_that_deletes_nothing_is_unconfirmed() {
    let (env, ids) = env_with_idle(5, Settings::default()).await;
    env.fake.set_faults(vec![FaultRule::always(
        Target::AnyMutation,
        Fault::Noop { status: 202 },
    )]);
    let metrics = Metrics::new();
    let report = env.once_with(&metrics).await;
    assert_nothing_claimed(&env, &report, &ids).await;
    let rows = actions_of_run(&env, report.run_id).await;
    assert_eq!(with_status(&rows, "unconfirmed").len(), 5, "{rows:?}");
    assert!(rows[0].2.as_deref().unwrap().contains("still lists"));
    assert_eq!(count(&metrics, "idle-90d", "delete", "unconfirmed"), 5);
    assert_eq!(report.outcome, RunOutcome::Failed);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_success_whose_errors_name_the_ids_deletes_nothing_and_is_not_done() {
    let (env, ids) = env_with_idle(5, Settings::default()).await;
    env.fake.set_faults(vec![FaultRule::always(
        Target::AnyMutation,
        Fault::NoopWithErrors,
    )]);
    let report = env.once().await;
    assert_nothing_claimed(&env, &report, &ids).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoke_answered_200_that_does_not_revoke_is_unconfirmed() {
    let (env, ids) = env_with_idle(
        4,
        Settings {
            rules: REVOKE_IDLE,
            ..Settings::default()
        },
    )
    .await;
    env.fake.set_faults(vec![FaultRule::always(
        Target::Revoke,
        Fault::Noop { status: 200 },
    )]);
    let metrics = Metrics::new();
    let report = env.once_with(&metrics).await;
    let rows = actions_of_run(&env, report.run_id).await;
    assert_eq!(with_status(&rows, "unconfirmed").len(), 4, "{rows:?}");
    for id in &ids {
        assert!(env.fake.get(id).unwrap()["revoked_at"].is_null());
    }
    assert_eq!(count(&metrics, "idle-revoke", "revoke", "unconfirmed"), 4);
    assert_eq!(report.outcome, RunOutcome::Failed);

    // Without the fault the next run revokes them, confirmed.
    env.fake.clear_faults();
    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Applied, "{:?}", report.reason);
    let rows = actions_of_run(&env, report.run_id).await;
    assert_eq!(with_status(&rows, "done").len(), 4, "{rows:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_404_on_every_mutation_is_never_recorded_as_success() {
    let (env, ids) = env_with_idle(
        8,
        Settings {
            chunk: 4,
            ..Settings::default()
        },
    )
    .await;
    env.fake.set_faults(vec![FaultRule::always(
        Target::AnyMutation,
        Fault::Status {
            code: 404,
            retry_after: None,
        },
    )]);
    let report = env.once().await;
    assert_nothing_claimed(&env, &report, &ids).await;
    assert_eq!(report.outcome, RunOutcome::Failed);
    let rows = actions_of_run(&env, report.run_id).await;
    assert!(
        rows.iter().all(|r| r.1 == "failed"
            && r.2.as_deref() == Some("Cloudflare answered 404 but the registration still exists")),
        "{rows:?}"
    );
    let pool = env.sql().await;
    let answered: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT outcome FROM mutations ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        answered,
        ["not_found", "rejected"],
        "bulk 404s split, single 404s claimed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_routing_404_on_delete_stops_the_run_and_claims_nothing() {
    for chunk in [1, 100] {
        let (env, ids) = env_with_idle(
            3,
            Settings {
                chunk,
                ..Settings::default()
            },
        )
        .await;
        env.fake.set_faults(vec![FaultRule::always(
            Target::AnyMutation,
            Fault::Error {
                status: 404,
                code: 7003,
            },
        )]);
        let report = env.once().await;
        assert_eq!(report.outcome, RunOutcome::Failed, "chunk {chunk}");
        assert_eq!(
            env.fake.mutations().len(),
            1,
            "chunk {chunk}: a run-wide failure is not split nor repeated"
        );
        let rows = actions_of_run(&env, report.run_id).await;
        assert!(with_status(&rows, "done").is_empty(), "{rows:?}");
        assert!(with_status(&rows, "already_gone").is_empty(), "{rows:?}");
        for id in &ids {
            assert!(env.fake.contains(id));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoke_answered_404_code_1003_while_the_registration_exists_is_failed() {
    let (env, ids) = env_with_idle(
        3,
        Settings {
            rules: REVOKE_IDLE,
            ..Settings::default()
        },
    )
    .await;
    env.fake.set_faults(vec![FaultRule::always(
        Target::Revoke,
        Fault::Error {
            status: 404,
            code: 1003,
        },
    )]);
    let report = env.once().await;
    assert_nothing_claimed(&env, &report, &ids).await;
    for id in &ids {
        assert!(env.fake.get(id).unwrap()["revoked_at"].is_null());
    }
}

/// One id that Cloudflare refuses (400, code 2001), alone (`chunk` 1) or inside bulk calls.
async fn one_id_that_cannot_be_deleted(chunk: usize) {
    let (env, ids) = env_with_idle(
        10,
        Settings {
            chunk,
            ..Settings::default()
        },
    )
    .await;
    let bad = ids[3].clone();
    env.fake.set_faults(vec![FaultRule::always(
        Target::AnyMutation,
        Fault::Error {
            status: 400,
            code: 2001,
        },
    )
    .for_id(&bad)]);

    let report = env.once().await;
    let others: BTreeSet<String> = ids.iter().filter(|i| **i != bad).cloned().collect();
    let deleted: BTreeSet<String> = env.fake.deleted_ids().into_iter().collect();
    assert_eq!(
        deleted, others,
        "chunk {chunk}: every other id is deleted in run 1"
    );
    assert!(env.fake.contains(&bad));
    let rows = actions_of_run(&env, report.run_id).await;
    assert_eq!(with_status(&rows, "failed"), [bad.as_str()], "{rows:?}");
    assert_eq!(with_status(&rows, "done").len(), 9);
    assert_eq!(report.outcome, RunOutcome::Failed);
    let reason = report.reason.unwrap();
    assert!(
        reason.contains("1 action failed") && reason.contains(&bad),
        "{reason}"
    );

    // It fails the same way in the next runs, until it is stuck.
    for run in 2..=STUCK_AFTER_RUNS {
        let report = env.once().await;
        assert_eq!(report.outcome, RunOutcome::Failed, "run {run}");
        let rows = actions_of_run(&env, report.run_id).await;
        assert_eq!(with_status(&rows, "failed"), [bad.as_str()], "run {run}");
    }
    let requests_naming_bad = || {
        env.fake
            .mutations()
            .iter()
            .filter(|m| m.ids.contains(&bad))
            .count()
    };
    let before = requests_naming_bad();
    for run in STUCK_AFTER_RUNS + 1..=STUCK_AFTER_RUNS + 2 {
        let metrics = Metrics::new();
        let report = env.once_with(&metrics).await;
        assert_eq!(
            report.outcome,
            RunOutcome::Applied,
            "run {run}: a stuck id no longer fails the run: {:?}",
            report.reason
        );
        assert!(report
            .reason
            .as_deref()
            .unwrap()
            .contains("1 registration stuck"));
        assert_eq!(report.summary.actions_stuck, 1);
        assert_eq!(report.summary.actions_failed, 0);
        let rows = actions_of_run(&env, report.run_id).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].1, "stuck");
        assert!(
            rows[0].2.as_deref().unwrap().contains("code 2001"),
            "{rows:?}"
        );
        assert_eq!(
            metrics
                .stuck_resources
                .with_label_values(&["device_registration"])
                .get(),
            1
        );
        assert_eq!(count(&metrics, "idle-90d", "delete", "stuck"), 1);
    }
    assert_eq!(requests_naming_bad(), before, "a stuck id is not attempted");

    // Once it leaves the plan (excluded for one run), it is tried again.
    env.write_config(&Settings {
        chunk,
        rules: &format!(
            "{}\n[[exclude]]\nname = \"one\"\nregistration_id = [\"{bad}\"]\n",
            common::STANDARD_RULES
        ),
        ..Settings::default()
    });
    assert_eq!(env.once().await.outcome, RunOutcome::Applied);
    env.write_config(&Settings {
        chunk,
        ..Settings::default()
    });
    env.fake.clear_faults();
    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Applied, "{:?}", report.reason);
    assert!(!env.fake.contains(&bad));
}

#[tokio::test(flavor = "multi_thread")]
async fn one_id_that_cannot_be_deleted_alone_fails_alone_then_is_stuck() {
    one_id_that_cannot_be_deleted(1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_id_that_cannot_be_deleted_in_bulk_fails_alone_then_is_stuck() {
    one_id_that_cannot_be_deleted(100).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delete_whose_first_attempt_worked_but_answered_502_is_done_not_already_gone() {
    let (env, ids) = env_with_idle(1, Settings::default()).await;
    env.fake.set_faults(vec![FaultRule::first(
        Target::DeleteOne,
        1,
        Fault::ApplyThenStatus(502),
    )]);
    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Applied, "{:?}", report.reason);
    assert!(!env.fake.contains(&ids[0]));
    let rows = actions_of_run(&env, report.run_id).await;
    assert_eq!(rows[0].1, "done", "{rows:?}");
    assert!(
        rows[0].2.as_deref().unwrap().contains("most likely"),
        "{rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_call_is_sent_without_budget_left_to_confirm_it() {
    // One listing page, then per call of 2 ids the call and its confirmation: a budget of 4
    // leaves room for one call only, not for a second one that could not be confirmed.
    let (env, _ids) = env_with_idle(
        6,
        Settings {
            chunk: 2,
            cloudflare_extra: "max_requests_per_cycle = 4",
            ..Settings::default()
        },
    )
    .await;
    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Failed);
    assert!(
        report
            .reason
            .as_deref()
            .unwrap()
            .contains("request budget of 4"),
        "{:?}",
        report.reason
    );
    assert_eq!(env.fake.mutations().len(), 1);
    let rows = actions_of_run(&env, report.run_id).await;
    assert_eq!(with_status(&rows, "done").len(), 2, "{rows:?}");
    assert_eq!(with_status(&rows, "not_attempted").len(), 4, "{rows:?}");
    assert_eq!(env.fake.request_counts().total, 3);
    let pool = env.sql().await;
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM mutations WHERE outcome IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(pending, 0, "the intent of the call not sent is withdrawn");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_a_call_and_its_confirmation_is_reconciled_by_the_next_run() {
    let (env, ids) = env_with_idle(3, Settings::default()).await;
    // Listing 1 is the plan's (one page); listing 2 confirms the bulk call: it hangs, and the
    // process is killed while waiting for it.
    env.fake.set_faults(vec![FaultRule::nth(
        Target::ListRegistrations,
        2,
        Fault::Delay(std::time::Duration::from_secs(60)),
    )]);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_zt-janitor"))
        .args(["once", "--config"])
        .arg(&env.config_path)
        .env_remove("CLOUDFLARE_API_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while env.fake.request_counts().list_pages < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the confirmation never came"
        );
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(env.fake.deleted_ids().len(), 3, "the call took effect");

    let pool = env.sql().await;
    let pending: Vec<Option<String>> = sqlx::query_scalar("SELECT outcome FROM mutations")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        pending,
        [None],
        "no outcome is recorded before it is confirmed"
    );
    let rows = actions_of_run(&env, 1).await;
    assert_eq!(with_status(&rows, "planned").len(), 3, "{rows:?}");

    env.fake.clear_faults();
    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Applied, "{:?}", report.reason);
    let outcome: String = sqlx::query_scalar("SELECT outcome FROM mutations WHERE id = 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(outcome, "reconciled_done");
    let rows = actions_of_run(&env, 1).await;
    assert_eq!(with_status(&rows, "done").len(), 3, "{rows:?}");
    assert!(env.ids_mutated_twice().is_empty());
    for id in &ids {
        assert!(!env.fake.contains(id));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_confirmation_listing_that_fails_leaves_the_ids_unconfirmed_never_done() {
    let (env, ids) = env_with_idle(3, Settings::default()).await;
    // The plan's listing (request 1) is served; the confirmation and its retries are not.
    let broken = |n| {
        FaultRule::nth(
            Target::ListRegistrations,
            n,
            Fault::Status {
                code: 503,
                retry_after: None,
            },
        )
    };
    env.fake.set_faults(vec![broken(2), broken(3), broken(4)]);
    let report = env.once().await;
    assert_eq!(env.fake.deleted_ids().len(), 3, "the call itself worked");
    let rows = actions_of_run(&env, report.run_id).await;
    assert_eq!(with_status(&rows, "unconfirmed").len(), 3, "{rows:?}");
    assert!(
        rows[0]
            .2
            .as_deref()
            .unwrap()
            .contains("the listing that confirms it failed"),
        "{rows:?}"
    );
    assert_eq!(report.outcome, RunOutcome::Failed);
    assert!(
        report.reason.as_deref().unwrap().contains("cannot confirm"),
        "{:?}",
        report.reason
    );
    drop(ids);
}

/// The confirmation of one group of calls runs while the next group's calls are sent, so a
/// remote API's round trip is paid once per group, not twice. Listing 2 (the first
/// confirmation) is held for a long time: the second call still goes out meanwhile, and every
/// action ends confirmed.
#[tokio::test(flavor = "multi_thread")]
async fn the_next_call_goes_out_while_the_previous_one_is_being_confirmed() {
    const HELD: std::time::Duration = std::time::Duration::from_secs(4);
    let (env, ids) = env_with_idle(
        3,
        Settings {
            chunk: 1,
            ..Settings::default()
        },
    )
    .await;
    env.fake.set_faults(vec![FaultRule::nth(
        Target::ListRegistrations,
        2,
        Fault::Delay(HELD),
    )]);
    let cycle = {
        let env = &env;
        async move { env.once().await }
    };
    let watch = async {
        common::wait_for(
            "the first confirmation listing",
            std::time::Duration::from_secs(20),
            async || env.fake.request_counts().list_pages >= 2,
        )
        .await;
        // Well inside the time the listing is held: only an overlapped call gets here.
        common::wait_for(
            "the second call while the first is being confirmed",
            HELD / 2,
            async || env.fake.mutations().len() >= 2,
        )
        .await;
    };
    let (report, ()) = tokio::join!(cycle, watch);
    assert_eq!(report.outcome, RunOutcome::Applied, "{:?}", report.reason);
    let rows = actions_of_run(&env, report.run_id).await;
    assert_eq!(with_status(&rows, "done").len(), ids.len(), "{rows:?}");
    assert!(ids.iter().all(|id| !env.fake.contains(id)));
    env.assert_every_mutation_audited().await;
}

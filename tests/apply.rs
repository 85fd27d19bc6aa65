//! Apply and audit against the fake API: exactly the candidates are deleted, caps and partial
//! listings stop everything, 404 means already gone, interrupted intents are reconciled, bulk
//! delete is used, and the audit log answers "who deleted my laptop's registration?".

mod common;

use std::collections::BTreeSet;

use chrono::Utc;
use common::{days_ago, Env, Settings};
use sqlx::Row;
use zt_janitor::apply::StopSignal;
use zt_janitor::audit::{AuditStore, Intent, JournalEntry, MutationKind, RunOutcome};
use zt_janitor::config::Mode;
use zt_janitor::fake::{
    Endpoint as FaultEndpoint, FakeOptions, FakeRegistration, Fault, FaultRule,
};
use zt_janitor::resource::{Kind, ResourceId};

fn opts(n: usize) -> FakeOptions {
    FakeOptions {
        registrations: n,
        seed: 3,
        ..FakeOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_deletes_exactly_the_candidates_in_bulk_chunks() {
    let now = Utc::now();
    let env = Env::start(
        opts(600),
        Settings {
            chunk: 25,
            per_page: 100,
            ..Settings::default()
        },
    )
    .await;
    let board = env.fake.insert(&FakeRegistration {
        user_email: Some("chair@board.example.com".into()),
        ..FakeRegistration::new("bbbbbbbb-0000-4000-8000-000000000001", days_ago(now, 300))
    });
    let before: BTreeSet<String> = env.fake.registration_ids().into_iter().collect();
    let expected = env.expected_candidates(now);

    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Applied, "{:?}", report.reason);

    let after: BTreeSet<String> = env.fake.registration_ids().into_iter().collect();
    let deleted: BTreeSet<String> = before.difference(&after).cloned().collect();
    assert_eq!(deleted, expected, "the fake lost exactly the candidates");
    assert_eq!(env.mutated_ids(), expected, "no other id was ever touched");
    assert!(after.contains(&board), "the excluded registration stays");

    let m = expected.len() as u64;
    let counts = env.fake.request_counts();
    assert_eq!(
        counts.bulk_delete,
        m.div_ceil(25),
        "one bulk call per chunk of 25"
    );
    assert_eq!(
        counts.delete_one + counts.revoke + counts.deprecated_revoke,
        0
    );
    env.assert_every_mutation_audited().await;

    let pool = env.sql().await;
    let done: i64 = sqlx::query_scalar("SELECT count(*) FROM actions WHERE status = 'done'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(done as u64, m);
    let excluded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM actions WHERE status = 'excluded' AND resource_id = ?1",
    )
    .bind(&board)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        excluded, 1,
        "the protected match is recorded as a decision too"
    );
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM mutations WHERE outcome IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(pending, 0);
    for table in ["actions", "mutations"] {
        let kinds: Vec<String> =
            sqlx::query_scalar(&format!("SELECT DISTINCT resource_kind FROM {table}"))
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(kinds, ["device_registration"], "{table} record the kind");
    }

    // A second run finds nothing more to do.
    let again = env.once().await;
    assert_eq!(again.outcome, RunOutcome::Applied);
    assert_eq!(again.summary.candidates, Some(0));

    // Each run records how its kind went.
    // (run, kind, outcome, seen, candidates, done, failed)
    type KindRow = (i64, String, String, Option<i64>, Option<i64>, i64, i64);
    let run_kinds: Vec<KindRow> = sqlx::query_as(
        "SELECT run_id, kind, outcome, seen, candidates, done, failed FROM run_kinds
             ORDER BY run_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let kind = || "device_registration".to_owned();
    let applied = || "applied".to_owned();
    assert_eq!(
        run_kinds,
        [
            (
                report.run_id,
                kind(),
                applied(),
                report.summary.seen_total.map(|n| n as i64),
                Some(m as i64),
                m as i64,
                0
            ),
            (
                again.run_id,
                kind(),
                applied(),
                again.summary.seen_total.map(|n| n as i64),
                Some(0),
                0,
                0
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_over_the_caps_refuses_the_whole_run() {
    let env = Env::start(
        opts(300),
        Settings {
            max_actions: 10,
            ..Settings::default()
        },
    )
    .await;
    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Refused);
    assert!(report.reason.unwrap().contains("max_actions_per_run = 10"));
    assert!(env.fake.mutations().is_empty(), "nothing may be deleted");

    let env = Env::start(
        opts(300),
        Settings {
            max_fraction: 0.05,
            ..Settings::default()
        },
    )
    .await;
    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Refused);
    assert!(report
        .reason
        .as_deref()
        .unwrap()
        .contains("max_fraction_per_run"));
    assert!(env.fake.mutations().is_empty());
    let outcomes = env.run_outcomes().await;
    assert_eq!(outcomes[0].0, "refused");
    let pool = env.sql().await;
    // A refused run did not act: its decisions are folded into spans when it closes.
    let statuses: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT status FROM decision_spans WHERE excluded_by IS NULL")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(statuses, ["not_attempted"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_listing_page_aborts_the_run_and_nothing_is_deleted() {
    let env = Env::start(
        opts(300),
        Settings {
            per_page: 50,
            max_retries: 1,
            ..Settings::default()
        },
    )
    .await;
    // Page 3 fails on the first try and on its retry.
    env.fake.set_faults(vec![
        FaultRule::nth(
            FaultEndpoint::ListRegistrations,
            3,
            Fault::Status {
                code: 503,
                retry_after: None,
            },
        ),
        FaultRule::nth(
            FaultEndpoint::ListRegistrations,
            4,
            Fault::Status {
                code: 503,
                retry_after: None,
            },
        ),
    ]);
    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Aborted);
    let reason = report.reason.unwrap();
    assert!(
        reason.contains("page 3") && reason.contains("nothing was done"),
        "{reason}"
    );
    assert!(env.fake.mutations().is_empty());
    assert_eq!(env.run_outcomes().await[0].0, "aborted");
    let pool = env.sql().await;
    let actions: i64 = sqlx::query_scalar("SELECT count(*) FROM actions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(actions, 0, "no decision is recorded from a partial listing");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_404_on_delete_is_recorded_as_already_gone() {
    let now = Utc::now();
    let env = Env::start(opts(0), Settings::default()).await;
    let id = env.fake.insert(&FakeRegistration::new(
        "cccccccc-0000-4000-8000-000000000001",
        days_ago(now, 200),
    ));
    // Someone else deletes it between our listing and our delete: our DELETE is held up
    // until theirs (a bulk call, which the fault leaves alone) has gone through.
    env.fake.set_faults(vec![FaultRule::always(
        FaultEndpoint::DeleteOne,
        Fault::Delay(std::time::Duration::from_millis(300)),
    )]);
    let someone_else = {
        let (fake, id) = (env.fake.clone(), id.clone());
        tokio::spawn(async move {
            while fake.mutations().is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            reqwest::Client::new()
                .delete(format!(
                    "{}/accounts/{}/devices/registrations",
                    fake.base_url(),
                    fake.account_id()
                ))
                .query(&[("id", id.as_str())])
                .bearer_auth(fake.token())
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    let report = env.once().await;
    assert!(someone_else.await.unwrap().is_success());
    assert_eq!(report.outcome, RunOutcome::Applied, "{:?}", report.reason);
    let pool = env.sql().await;
    let row = sqlx::query(
        "SELECT a.status, m.outcome, m.http_status, m.kind FROM actions a JOIN mutations m ON m.id = a.mutation_id WHERE a.resource_id = ?1",
    )
    .bind(&id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>(0), "already_gone");
    // The call's own outcome is what Cloudflare answered; the listing confirmed it gone.
    assert_eq!(row.get::<String, _>(1), "not_found");
    assert_eq!(row.get::<i64, _>(2), 404);
    assert_eq!(row.get::<String, _>(3), "delete");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_bulk_call_is_split_down_to_single_deletes() {
    let env = Env::start(
        FakeOptions {
            max_bulk_ids: 10,
            ..opts(400)
        },
        Settings {
            chunk: 40,
            ..Settings::default()
        },
    )
    .await;
    let expected = env.expected_candidates(Utc::now());
    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Applied, "{:?}", report.reason);
    assert_eq!(env.mutated_ids(), expected);
    let refused = env
        .fake
        .mutations()
        .iter()
        .filter(|m| m.status == 400)
        .count();
    assert!(refused > 0, "the fake refused the 40-id calls");
    env.assert_every_mutation_audited().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_intent_left_by_a_crash_is_reconciled_on_the_next_run() {
    let now = Utc::now();
    let env = Env::start(opts(0), Settings::default()).await;
    let gone = env.fake.insert(&FakeRegistration::new(
        "dddddddd-0000-4000-8000-000000000001",
        days_ago(now, 200),
    ));
    let kept = env.fake.insert(&FakeRegistration::new(
        "dddddddd-0000-4000-8000-000000000002",
        days_ago(now, 200),
    ));
    // A plan-mode run records the decisions; then we play the crash: intents recorded, one
    // call reached Cloudflare, and the process died before recording either outcome.
    env.write_config(&Settings {
        mode: "plan",
        ..Settings::default()
    });
    env.once().await;
    let audit = AuditStore::open(&env.db_path).await.unwrap();
    let run = audit.begin_run(Mode::Apply, now).await.unwrap();
    let pool = env.sql().await;
    let writer = sqlx::SqlitePool::connect(&format!("sqlite://{}", env.db_path.display()))
        .await
        .unwrap();
    for id in [&gone, &kept] {
        // The crashed run decided them too: copy the plan run's decisions (folded into spans
        // when it closed) into it.
        sqlx::query(
            "INSERT INTO actions (run_id, decided_at, rule, action, resource_kind, resource_id,
                 user_email, device_name, last_seen_at, reason, status)
             SELECT ?1, first_decided_at, rule, action, resource_kind, resource_id, user_email,
                 device_name, last_seen_at, reason, 'planned'
             FROM decision_spans WHERE resource_id = ?2",
        )
        .bind(run.0)
        .bind(id)
        .execute(&writer)
        .await
        .unwrap();
        let rid = ResourceId::parse(id).unwrap();
        let entry = JournalEntry {
            intents: vec![Intent {
                resource_kind: Kind::DeviceRegistration,
                zone: None,
                kind: MutationKind::Delete,
                method: "DELETE".to_owned(),
                path: "/devices/registrations/x".to_owned(),
                ids: vec![rid],
                at: now,
            }],
            ..JournalEntry::default()
        };
        audit.write_journal(run, &entry).await.unwrap();
    }
    writer.close().await;
    audit.close().await;
    let client = reqwest::Client::new();
    let resp = client
        .delete(format!(
            "{}/accounts/{}/devices/registrations/{gone}",
            env.fake.base_url(),
            env.fake.account_id()
        ))
        .bearer_auth(env.fake.token())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());

    env.write_config(&Settings::default());
    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Applied, "{:?}", report.reason);
    let outcomes: Vec<(String, String)> = sqlx::query(
        "SELECT resource_ids, outcome FROM mutations WHERE outcome LIKE 'reconciled%' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    assert_eq!(outcomes.len(), 2);
    assert!(outcomes[0].0.contains(&gone) && outcomes[0].1 == "reconciled_done");
    assert!(outcomes[1].0.contains(&kept) && outcomes[1].1 == "reconciled_not_done");
    // The crashed run's actions say what became of them, and none is left hanging.
    let statuses: Vec<(String, String)> = sqlx::query(
        "SELECT resource_id, status FROM actions WHERE run_id = ?1 ORDER BY resource_id",
    )
    .bind(run.0)
    .fetch_all(&pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    let mut expected = vec![
        (gone.clone(), "done".to_owned()),
        (kept.clone(), "failed".to_owned()),
    ];
    expected.sort();
    assert_eq!(statuses, expected);
    // The one that did not happen is planned again and deleted by this run.
    assert!(!env.fake.contains(&kept));
    let crashed_run: String = sqlx::query_scalar("SELECT outcome FROM runs WHERE id = ?1")
        .bind(run.0)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        crashed_run, "failed",
        "the interrupted run is closed as failed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_answers_who_deleted_my_laptop() {
    let now = Utc::now();
    let env = Env::start(opts(200), Settings::default()).await;
    let laptop = env.fake.insert(&FakeRegistration {
        user_email: Some("dana@example.com".into()),
        device_name: "dana-thinkpad".into(),
        ..FakeRegistration::new("eeeeeeee-0000-4000-8000-000000000001", days_ago(now, 120))
    });
    let listed = env.fake.get(&laptop).unwrap();
    env.once().await;
    assert!(!env.fake.contains(&laptop));

    let pool = env.sql().await;
    let row = sqlx::query(
        "SELECT a.rule, a.reason, CAST(b.body AS BLOB), m.completed_at, m.kind, m.outcome, r.mode
         FROM actions a
         JOIN snapshots s ON s.action_id = a.id JOIN snapshot_bodies b ON b.id = s.body_id
         JOIN mutations m ON m.id = a.mutation_id
         JOIN runs r ON r.id = a.run_id
         WHERE a.user_email = 'dana@example.com' AND a.device_name = 'dana-thinkpad'
           AND a.action = 'delete' AND a.status = 'done'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>(0), "idle-90d");
    assert!(row.get::<String, _>(1).starts_with("idle 120d >= 90d"));
    let body = zt_janitor::audit::decode_body(row.get(2)).unwrap();
    let snapshot: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        snapshot, listed,
        "the snapshot is the object exactly as listed"
    );
    assert!(row.get::<Option<String>, _>(3).is_some());
    assert_eq!(row.get::<String, _>(5), "ok");
    assert_eq!(row.get::<String, _>(6), "apply");

    // The CLI answers the same question.
    let out = env.binary(&[
        "audit",
        "actions",
        "--user",
        "DANA@example.com",
        "--output",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = &doc["actions"];
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["resource_id"], laptop.as_str());
    assert_eq!(rows[0]["status"], "done");
    // The snapshot is the listed object itself, not a string to parse again.
    assert_eq!(rows[0]["snapshot"]["id"], laptop.as_str());
    assert_eq!(rows[0]["snapshot"]["device"]["name"], "dana-thinkpad");
    let csv = env.binary(&["audit", "actions", "--resource", &laptop, "--output", "csv"]);
    let csv = String::from_utf8(csv.stdout).unwrap();
    assert!(csv.starts_with("id,run_id,decided_at,rule") && csv.contains("dana-thinkpad"));
}

#[tokio::test(flavor = "multi_thread")]
async fn decisions_recorded_before_a_listing_failure_are_never_acted_on() {
    // Enough candidates that the first batches of decisions reach the audit log before the
    // last page fails.
    let env = Env::start(
        FakeOptions {
            idle_share: 0.3,
            ..opts(10_000)
        },
        Settings {
            per_page: 1000,
            max_retries: 1,
            ..Settings::default()
        },
    )
    .await;
    env.fake.set_faults(vec![
        FaultRule::nth(
            FaultEndpoint::ListRegistrations,
            10,
            Fault::Status {
                code: 502,
                retry_after: None,
            },
        ),
        FaultRule::nth(
            FaultEndpoint::ListRegistrations,
            11,
            Fault::Status {
                code: 502,
                retry_after: None,
            },
        ),
    ]);
    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Aborted);
    assert!(env.fake.mutations().is_empty(), "nothing may be deleted");
    let pool = env.sql().await;
    // An aborted run did not act: its decisions are folded into spans when it closes.
    let statuses: Vec<(String, i64)> =
        sqlx::query("SELECT status, count(*) FROM decision_spans GROUP BY status")
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
    // Every decision is settled: not attempted, or excluded as it was decided.
    assert!(
        statuses
            .iter()
            .all(|(s, _)| s == "not_attempted" || s == "excluded"),
        "{statuses:?}"
    );
    let not_attempted = statuses
        .iter()
        .find(|(s, _)| s == "not_attempted")
        .map_or(0, |(_, n)| *n);
    assert!(
        not_attempted >= 2000,
        "a batch was recorded before the failure: {statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_during_apply_withdraws_the_intents_of_calls_not_sent() {
    let now = Utc::now();
    let env = Env::start(
        opts(0),
        Settings {
            chunk: 2,
            ..Settings::default()
        },
    )
    .await;
    for i in 0..10 {
        env.fake.insert(&FakeRegistration::new(
            format!("cccccccc-0000-4000-8000-00000000000{i}"),
            days_ago(now, 120),
        ));
    }
    env.fake.set_faults(vec![FaultRule::always(
        FaultEndpoint::BulkDelete,
        Fault::Delay(std::time::Duration::from_millis(500)),
    )]);
    let stop = StopSignal::default();
    let janitor = env.open().await.with_stop(stop.clone());
    let stopper = {
        let (stop, fake) = (stop.clone(), env.fake.clone());
        tokio::spawn(async move {
            while fake.mutations().is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            stop.stop();
        })
    };
    let report = janitor.cycle().run(Utc::now()).await.unwrap();
    stopper.await.unwrap();
    janitor.close().await;

    assert_eq!(report.outcome, RunOutcome::Aborted, "{:?}", report.reason);
    // The call in flight finished; no other was sent.
    assert_eq!(env.fake.mutations().len(), 1);
    assert_eq!(env.mutated_ids().len(), 2);
    let pool = env.sql().await;
    let mutations: Vec<Option<String>> = sqlx::query_scalar("SELECT outcome FROM mutations")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        mutations,
        [Some("ok".to_owned())],
        "the intents of calls never sent are withdrawn, none is left pending"
    );
    let statuses: Vec<(String, i64)> =
        sqlx::query("SELECT status, count(*) FROM actions GROUP BY status ORDER BY status")
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
    assert_eq!(
        statuses,
        [("done".to_owned(), 2), ("not_attempted".to_owned(), 8)]
    );
    env.assert_every_mutation_audited().await;
}

/// Issue 15: the executor reads planned actions back from the audit log a batch at a time.
/// Across batch boundaries every candidate is acted on exactly once, in whole chunks.
#[tokio::test(flavor = "multi_thread")]
async fn an_apply_bigger_than_one_batch_acts_on_every_candidate_once() {
    let now = Utc::now();
    let env = Env::start(
        FakeOptions {
            idle_share: 0.85,
            ..opts(14_000)
        },
        Settings::default(),
    )
    .await;
    let expected = env.expected_candidates(now);
    assert!(expected.len() > 10_000, "more than two batches of 5000");

    let report = once_in_batches_of_5000(&env).await;
    assert_eq!(report.outcome, RunOutcome::Applied, "{:?}", report.reason);
    assert_eq!(env.mutated_ids(), expected);
    assert!(expected.iter().all(|id| !env.fake.contains(id)));
    // Batches hold whole chunks: no call is split at a batch boundary.
    let m = expected.len() as u64;
    assert_eq!(env.fake.request_counts().bulk_delete, m.div_ceil(100));
    assert_eq!(report.summary.actions_done, m);
    env.assert_every_mutation_audited().await;
    let pool = env.sql().await;
    let statuses: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM actions GROUP BY status ORDER BY status")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        statuses
            .iter()
            .find(|(s, _)| s == "done")
            .map(|(_, n)| *n as u64),
        Some(m),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|(s, _)| s == "done" || s == "excluded"),
        "{statuses:?}"
    );
}

/// Issue 15: a run that must stop in a later batch (here its request budget runs out) leaves
/// no action `planned`: the rest of that batch and every batch not yet read are recorded not
/// attempted, and nothing past the stop is sent.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_in_a_later_batch_leaves_every_unread_action_not_attempted() {
    let now = Utc::now();
    let env = Env::start(
        FakeOptions {
            idle_share: 0.85,
            ..opts(14_000)
        },
        Settings {
            // 14 pages, then the first batch's 50 calls and 50 confirmations, then some of
            // the second batch's.
            cloudflare_extra: "max_requests_per_cycle = 160",
            ..Settings::default()
        },
    )
    .await;
    let expected = env.expected_candidates(now);
    assert!(expected.len() > 10_000);

    let report = once_in_batches_of_5000(&env).await;
    assert_eq!(report.outcome, RunOutcome::Failed, "{:?}", report.reason);
    assert!(
        report
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("request budget"),
        "{:?}",
        report.reason
    );
    let deleted = env.mutated_ids();
    assert!(
        deleted.len() > 5000 && deleted.len() < 10_000,
        "the stop came in the second batch: {} deleted",
        deleted.len()
    );
    env.assert_every_mutation_audited().await;
    let pool = env.sql().await;
    let count = |status: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM actions WHERE status = ?")
                .bind(status)
                .fetch_one(&pool)
                .await
                .unwrap() as usize
        }
    };
    assert_eq!(count("planned").await, 0, "no action is left planned");
    assert_eq!(count("done").await, deleted.len());
    assert_eq!(count("not_attempted").await, expected.len() - deleted.len());
}

/// One cycle whose executor reads planned actions back 5,000 at a time, so that a test of a
/// few thousand candidates crosses batch boundaries.
async fn once_in_batches_of_5000(env: &Env) -> zt_janitor::cycle::CycleReport {
    let janitor = env.open().await;
    let report = janitor
        .cycle()
        .with_apply_batch(5000)
        .run(Utc::now())
        .await
        .expect("the audit store works");
    janitor.close().await;
    report
}

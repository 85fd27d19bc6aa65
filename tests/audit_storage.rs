//! Issue 14, bounded growth: snapshot bodies are stored compressed and once per span, and the
//! decisions of runs that did not act are folded into spans when the run closes. Plan cycles over an unchanged account
//! add nothing; a changed object adds its new body and starts a span; a run that acted keeps
//! its rows; every reader still answers for every run; and a database written before all this
//! is carried forward intact.

mod common;

use std::collections::BTreeSet;

use chrono::{DateTime, TimeDelta, Utc};
use common::{days_ago, Env, Settings};
use serde_json::Value;
use sqlx::SqlitePool;
use zt_janitor::audit::{ActionFilter, AuditStore, RunOutcome};
use zt_janitor::cycle::CycleReport;
use zt_janitor::fake::{FakeOptions, FakeRegistration};
use zt_janitor::metrics::Metrics;

const LAPTOP: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const TABLET: &str = "aaaaaaaa-0000-4000-8000-000000000002";

async fn cycle_at(env: &Env, now: DateTime<Utc>) -> CycleReport {
    let janitor = env.open().await.with_metrics(Metrics::new());
    let report = janitor
        .cycle()
        .run(now)
        .await
        .expect("the audit store works");
    janitor.close().await;
    report
}

fn plan_mode(env: &Env, rules: Option<&str>) {
    env.write_config(&Settings {
        mode: "plan",
        rules: rules.unwrap_or(common::STANDARD_RULES),
        ..Settings::default()
    });
}

async fn count(db: &SqlitePool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.unwrap()
}

/// Pages in the database file (with what the WAL holds).
async fn pages(env: &Env) -> i64 {
    let db = env.sql().await;
    let n = count(&db, "PRAGMA page_count").await;
    db.close().await;
    n
}

/// (actions, snapshot bodies, spans) in the database.
async fn sizes(env: &Env) -> (i64, i64, i64) {
    let db = env.sql().await;
    let sizes = (
        count(&db, "SELECT count(*) FROM actions").await,
        count(&db, "SELECT count(*) FROM snapshot_bodies").await,
        count(&db, "SELECT count(*) FROM decision_spans").await,
    );
    db.close().await;
    sizes
}

/// The spans of one object, as (first run, last run), oldest first.
async fn spans_of(env: &Env, id: &str) -> Vec<(i64, i64)> {
    let db = env.sql().await;
    let spans = sqlx::query_as(
        "SELECT first_run_id, last_run_id FROM decision_spans WHERE resource_id = ?1
         ORDER BY first_run_id",
    )
    .bind(id)
    .fetch_all(&db)
    .await
    .unwrap();
    db.close().await;
    spans
}

/// `audit actions --run N --output json`, through the binary, as an operator reads it.
fn run_actions_json(env: &Env, run: i64) -> Vec<Value> {
    let out = env.binary(&[
        "audit",
        "actions",
        "--run",
        &run.to_string(),
        "--limit",
        "100000",
        "--output",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["actions"].as_array().unwrap().clone()
}

/// The snapshot `audit actions --run N --id ID` shows for one object.
async fn snapshot_in_run(env: &Env, run: i64, id: &str) -> String {
    let store = AuditStore::open_read_only(&env.db_path).await.unwrap();
    let rows = store
        .actions(&ActionFilter {
            run_id: Some(run),
            resource_id: Some(id.to_owned()),
            limit: 10,
            ..ActionFilter::default()
        })
        .await
        .unwrap();
    store.close().await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows[0].snapshot.clone()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// The growth test: after the first plan cycle, more cycles over the same unchanged account
/// add no action row, no body and no span, and the file stops growing.
#[tokio::test(flavor = "multi_thread")]
async fn unchanged_plan_cycles_add_no_rows_and_do_not_grow_the_file() {
    let env = Env::start(
        FakeOptions {
            registrations: 400,
            ..FakeOptions::default()
        },
        Settings::default(),
    )
    .await;
    plan_mode(&env, None);
    let t0 = Utc::now();
    let first = cycle_at(&env, t0).await;
    assert_eq!(first.outcome, RunOutcome::Planned, "{:?}", first.reason);
    let candidates = first.summary.candidates.unwrap() + first.summary.excluded.unwrap();
    assert!(candidates > 50, "{candidates}");
    let after_first = sizes(&env).await;
    assert_eq!(after_first.0, 0, "a plan run's decisions are folded");
    assert_eq!(after_first.2 as u64, candidates, "one span per decision");
    cycle_at(&env, t0 + TimeDelta::hours(6)).await;
    let pages_second = pages(&env).await;
    let mut last = 0;
    for i in 2..8 {
        let report = cycle_at(&env, t0 + TimeDelta::hours(6 * i)).await;
        assert_eq!(report.outcome, RunOutcome::Planned);
        assert_eq!(sizes(&env).await, after_first, "cycle {}", i + 1);
        last = report.run_id;
    }
    let db = env.sql().await;
    let spanning = count(
        &db,
        &format!(
            "SELECT count(*) FROM decision_spans WHERE first_run_id = {} AND last_run_id = {last}",
            first.run_id
        ),
    )
    .await;
    db.close().await;
    assert_eq!(spanning, after_first.2, "every span covers every run");
    // Freed pages are reused: a few pages of slack for B-tree layout.
    let pages_last = pages(&env).await;
    assert!(
        pages_last <= pages_second + 4,
        "{pages_second} pages after the second cycle, {pages_last} after the eighth"
    );
}

/// A changed object adds its new body once and starts a new span; the others' spans go on.
/// Each run reads back the object as it was listed in that run.
#[tokio::test(flavor = "multi_thread")]
async fn a_changed_object_adds_one_body_and_starts_a_new_span() {
    let env = Env::start(
        FakeOptions {
            registrations: 0,
            ..FakeOptions::default()
        },
        Settings::default(),
    )
    .await;
    plan_mode(&env, None);
    let t0 = Utc::now();
    env.fake
        .insert(&FakeRegistration::new(LAPTOP, days_ago(t0, 100)));
    env.fake
        .insert(&FakeRegistration::new(TABLET, days_ago(t0, 200)));
    let laptop_before = env.fake.get(LAPTOP).unwrap();
    let r1 = cycle_at(&env, t0).await.run_id;
    let r2 = cycle_at(&env, t0 + TimeDelta::hours(6)).await.run_id;
    let before = sizes(&env).await;
    assert_eq!(before, (0, 2, 2));

    env.fake
        .insert(&FakeRegistration::new(LAPTOP, days_ago(t0, 150)));
    let laptop_after = env.fake.get(LAPTOP).unwrap();
    assert_ne!(laptop_before, laptop_after);
    let r3 = cycle_at(&env, t0 + TimeDelta::hours(12)).await.run_id;
    assert_eq!(sizes(&env).await, (0, 3, 3), "one body and one span more");
    assert_eq!(spans_of(&env, LAPTOP).await, [(r1, r2), (r3, r3)]);
    assert_eq!(spans_of(&env, TABLET).await, [(r1, r3)]);
    assert_eq!(
        json(&snapshot_in_run(&env, r2, LAPTOP).await),
        laptop_before
    );
    assert_eq!(json(&snapshot_in_run(&env, r3, LAPTOP).await), laptop_after);
}

/// A run that acted keeps its action rows as before, and breaks the spans around it: a span
/// covers consecutive runs that did not act. The acted-on object's snapshot is the body the
/// plan run before it stored, read back as it was listed.
#[tokio::test(flavor = "multi_thread")]
async fn an_apply_run_between_plan_runs_keeps_its_rows_and_breaks_the_spans() {
    let env = Env::start(
        FakeOptions {
            registrations: 0,
            ..FakeOptions::default()
        },
        Settings::default(),
    )
    .await;
    let t0 = Utc::now();
    let mut board = FakeRegistration::new(LAPTOP, days_ago(t0, 100));
    board.user_email = Some("chair@board.example.com".to_owned());
    env.fake.insert(&board);
    env.fake
        .insert(&FakeRegistration::new(TABLET, days_ago(t0, 200)));
    let tablet = env.fake.get(TABLET).unwrap();

    plan_mode(&env, None);
    let r1 = cycle_at(&env, t0).await.run_id;
    env.write_config(&Settings::default());
    let applied = cycle_at(&env, t0 + TimeDelta::hours(6)).await;
    assert_eq!(applied.outcome, RunOutcome::Applied, "{:?}", applied.reason);
    assert_eq!(env.fake.deleted_ids(), [TABLET]);
    let r2 = applied.run_id;
    plan_mode(&env, None);
    let r3 = cycle_at(&env, t0 + TimeDelta::hours(12)).await.run_id;

    let db = env.sql().await;
    let kept: Vec<(String, String)> = sqlx::query_as(
        "SELECT resource_id, status FROM actions WHERE run_id = ?1 ORDER BY resource_id",
    )
    .bind(r2)
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(
        kept,
        [
            (LAPTOP.to_owned(), "excluded".to_owned()),
            (TABLET.to_owned(), "done".to_owned())
        ]
    );
    let bodies = count(&db, "SELECT count(*) FROM snapshot_bodies").await;
    db.close().await;
    assert_eq!(
        bodies, 5,
        "each run that keeps its decisions stores their bodies (2 + 2, then the laptop's new span); \
         only a span's own copies are dropped"
    );
    assert_eq!(spans_of(&env, LAPTOP).await, [(r1, r1), (r3, r3)]);
    assert_eq!(spans_of(&env, TABLET).await, [(r1, r1)]);

    // "What did it look like when it was deleted?": the action's own row, the object as listed.
    let store = AuditStore::open_read_only(&env.db_path).await.unwrap();
    let done = store
        .actions(&ActionFilter {
            resource_id: Some(TABLET.to_owned()),
            limit: 10,
            ..ActionFilter::default()
        })
        .await
        .unwrap();
    store.close().await;
    assert_eq!(
        done.len(),
        2,
        "the plan run's span and the apply run's action"
    );
    assert_eq!((done[0].run_id, done[0].status.as_str()), (r2, "done"));
    assert!(done[0].id.is_some() && done[0].mutation_id.is_some());
    assert_eq!(json(&done[0].snapshot), tablet);
    assert_eq!(done[0].snapshot, done[1].snapshot);
}

/// `audit actions --run N` lists a folded run's decisions: the objects the rules select
/// (computed from the fake, not by the code under test) and the protected ones, each with its
/// rule, action and the object as listed, as a span covering the runs; the same for each run
/// of the span.
#[tokio::test(flavor = "multi_thread")]
async fn audit_actions_lists_a_folded_runs_decisions() {
    let env = Env::start(
        FakeOptions {
            registrations: 150,
            ..FakeOptions::default()
        },
        Settings::default(),
    )
    .await;
    plan_mode(&env, None);
    let t0 = Utc::now();
    let r1 = cycle_at(&env, t0).await.run_id;
    let only_run = run_actions_json(&env, r1);
    let r2 = cycle_at(&env, t0 + TimeDelta::hours(6)).await.run_id;
    let expected = env.expected_candidates(t0);
    assert!(!expected.is_empty());

    let decisions = |rows: &[Value]| -> BTreeSet<(String, String, String, String, String)> {
        rows.iter()
            .map(|r| {
                let id = r["resource_id"].as_str().unwrap().to_owned();
                assert_eq!(
                    r["snapshot"],
                    env.fake.get(&id).unwrap(),
                    "the object as listed"
                );
                assert!(r["id"].is_null(), "{r}");
                (
                    id,
                    r["rule"].as_str().unwrap().to_owned(),
                    r["action"].as_str().unwrap().to_owned(),
                    r["status"].as_str().unwrap().to_owned(),
                    r["snapshot"].to_string(),
                )
            })
            .collect()
    };
    let first = run_actions_json(&env, r1);
    let planned: BTreeSet<String> = first
        .iter()
        .filter(|r| r["status"] == "planned")
        .map(|r| r["resource_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(planned, expected);
    assert!(first.iter().any(|r| r["status"] == "excluded"));
    assert!(first
        .iter()
        .all(|r| r["span_first_run_id"] == r1 && r["span_last_run_id"] == r2));
    assert!(first.iter().all(|r| r["run_id"] == r1));
    assert_eq!(decisions(&first), decisions(&only_run), "as before run 2");
    assert_eq!(decisions(&run_actions_json(&env, r2)), decisions(&first));

    let text = env.binary(&["audit", "actions", "--run", &r1.to_string()]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains(&format!("{r1}..{r2}")), "{text}");
}

/// A mark points at the object as first marked, after its first run's decisions are folded
/// and after the object changed.
#[tokio::test(flavor = "multi_thread")]
async fn a_mark_keeps_its_first_snapshot_across_folding() {
    const GRACE: &str = r#"
[[rule]]
name = "idle-90d"
resource = "device_registration"
action = "delete"
idle_days = 90
grace_days = 7
"#;
    let env = Env::start(
        FakeOptions {
            registrations: 0,
            ..FakeOptions::default()
        },
        Settings::default(),
    )
    .await;
    plan_mode(&env, Some(GRACE));
    let t0 = Utc::now();
    env.fake
        .insert(&FakeRegistration::new(LAPTOP, days_ago(t0, 100)));
    let as_marked = env.fake.get(LAPTOP).unwrap();
    let first = cycle_at(&env, t0).await;
    assert_eq!(first.resources[0].grace.unwrap().marked, 1);
    env.fake
        .insert(&FakeRegistration::new(LAPTOP, days_ago(t0, 150)));
    let second = cycle_at(&env, t0 + TimeDelta::days(1)).await;
    assert_eq!(second.resources[0].grace.unwrap().waiting, 1);
    assert_eq!(sizes(&env).await.0, 0, "both runs folded");

    let store = AuditStore::open_read_only(&env.db_path).await.unwrap();
    let snapshot = store
        .mark_first_snapshot("device_registration", None, LAPTOP)
        .await
        .unwrap()
        .expect("marked");
    store.close().await;
    assert_eq!(json(&snapshot), as_marked);
    let out = env.binary(&["audit", "marks", "--output", "json"]);
    let marks: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(marks["marks"][0]["resource_id"], LAPTOP);
    assert_eq!(marks["marks"][0]["first_run_id"], first.run_id);
}

/// The database today's code wrote (tests/data/audit-before-issue14.db) comes through the
/// migration: every action's snapshot byte for byte, each body hashed, the marks pointing at
/// the object as first marked; and new cycles run on it.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_written_before_issue_14_keeps_every_snapshot_and_takes_new_cycles() {
    let env = Env::start(
        FakeOptions {
            registrations: 120,
            ..FakeOptions::default()
        },
        Settings::default(),
    )
    .await;
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/audit-before-issue14.db");
    std::fs::copy(&fixture, &env.db_path).unwrap();
    let old = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&format!("sqlite://{}?mode=ro", env.db_path.display()))
        .await
        .unwrap();
    let old_snapshots: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT action_id, CAST(body AS BLOB) FROM snapshots ORDER BY action_id")
            .fetch_all(&old)
            .await
            .unwrap();
    let old_marks: Vec<(String, String, String, Vec<u8>)> = sqlx::query_as(
        "SELECT m.resource_kind, m.zone_key, m.resource_id, CAST(s.body AS BLOB)
         FROM marks m JOIN snapshots s ON s.action_id = m.first_action_id ORDER BY m.id_key",
    )
    .fetch_all(&old)
    .await
    .unwrap();
    let old_actions = count(&old, "SELECT count(*) FROM actions").await;
    let old_runs = count(&old, "SELECT count(*) FROM runs").await;
    old.close().await;
    assert!(old_snapshots.len() > 100 && !old_marks.is_empty());
    assert_eq!(old_runs, 6);

    // The writer's open migrates and fills the hashes.
    AuditStore::open(&env.db_path).await.unwrap().close().await;
    let db = env.sql().await;
    let new_snapshots: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT s.action_id, CAST(b.body AS BLOB) FROM snapshots s
         JOIN snapshot_bodies b ON b.id = s.body_id ORDER BY s.action_id",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(new_snapshots, old_snapshots);
    let distinct: BTreeSet<&Vec<u8>> = old_snapshots.iter().map(|(_, b)| b).collect();
    assert_eq!(
        count(&db, "SELECT count(*) FROM snapshot_bodies").await,
        distinct.len() as i64,
        "identical bodies stored once"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM snapshot_bodies WHERE sha256 IS NOT NULL"
        )
        .await,
        0,
        "the hashes of the first de-duplication are cleared"
    );
    db.close().await;

    let store = AuditStore::open_read_only(&env.db_path).await.unwrap();
    let rows = store
        .actions(&ActionFilter {
            limit: 1_000_000,
            ..ActionFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        rows.len() as i64,
        old_actions,
        "no run of the fixture is folded"
    );
    for row in &rows {
        let id = row.id.expect("an action row");
        let old = &old_snapshots
            .iter()
            .find(|(action, _)| *action == id)
            .unwrap()
            .1;
        assert_eq!(row.snapshot.as_bytes(), &old[..], "action {id}");
    }
    for (kind, zone, id, body) in &old_marks {
        let zone = Some(zone.as_str()).filter(|z| !z.is_empty());
        let snapshot = store.mark_first_snapshot(kind, zone, id).await.unwrap();
        assert_eq!(snapshot.as_deref().map(str::as_bytes), Some(&body[..]));
    }
    store.close().await;

    plan_mode(&env, None);
    let t0 = Utc::now();
    let next = cycle_at(&env, t0).await;
    assert_eq!(next.outcome, RunOutcome::Planned, "{:?}", next.reason);
    let after = cycle_at(&env, t0 + TimeDelta::hours(6)).await;
    assert_eq!(after.outcome, RunOutcome::Planned, "{:?}", after.reason);
    let db = env.sql().await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM actions").await,
        old_actions
    );
    let spans = count(
        &db,
        &format!(
            "SELECT count(*) FROM decision_spans WHERE first_run_id = {} AND last_run_id = {}",
            next.run_id, after.run_id
        ),
    )
    .await;
    db.close().await;
    assert_eq!(
        spans as u64,
        after.summary.candidates.unwrap() + after.summary.excluded.unwrap()
    );
}

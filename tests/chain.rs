//! Tamper evidence (issue 14): a real history (plan runs, grace marks, an apply with failed
//! calls, a call interrupted by kill -9 and reconciled by the next run) verifies; each edit,
//! deletion and insertion made with plain SQL is caught by `audit verify`, naming the table
//! and the row; a simulated prune leaves the rest verifiable; the head's hash is exposed.

mod common;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use common::{Env, Settings, STANDARD_RULES};
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::SqlitePool;
use zt_janitor::audit::{AuditStore, PruneLimits, PruneTrigger, Retention};
use zt_janitor::fake::{Endpoint, FakeOptions, Fault, FaultRule};

/// The standard rules, revoked registrations waiting out a grace period (marks).
const GRACE_RULES: &str = r#"
[[rule]]
name = "idle-90d"
resource = "device_registration"
action = "delete"
idle_days = 90

[[rule]]
name = "revoked"
resource = "device_registration"
action = "delete"
revoked = true
grace_days = 3

[[exclude]]
name = "board"
user_email = ["*@board.example.com"]
"#;

/// `audit verify --db DB --output json`: its exit status and document.
fn verify(env: &Env, db: &Path) -> (i32, Value) {
    let out = env.binary(&[
        "audit",
        "verify",
        "--db",
        db.to_str().unwrap(),
        "--output",
        "json",
    ]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let schema = format!(
        "{}/schemas/audit-verify.schema.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(schema).unwrap()).unwrap();
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}\n{doc:#}");
    (out.status.code().unwrap_or(-1), doc)
}

/// A writer on `db`, as someone with the sqlite3 shell: no foreign keys enforced.
async fn writer(db: &Path) -> SqlitePool {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", db.display()))
        .unwrap()
        .foreign_keys(false);
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap()
}

async fn scalar(pool: &SqlitePool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// A copy of the audit database (a consistent snapshot, WAL included).
async fn copy(env: &Env, name: &str) -> PathBuf {
    let to = env.dir.path().join(format!("{name}.db"));
    let pool = env.sql().await;
    sqlx::query(&format!("VACUUM INTO '{}'", to.display()))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    to
}

/// Whether a verify report's `row` ("id N", "ids A..B of run R ...", "seq N") names `id`.
fn names(row: &str, id: i64) -> bool {
    let number = |s: &str| s.parse::<i64>().ok();
    let words: Vec<&str> = row.split_whitespace().collect();
    match words.as_slice() {
        ["id", n, ..] | ["seq", n, ..] => number(n) == Some(id),
        ["ids", range, ..] => range
            .split_once("..")
            .and_then(|(a, b)| Some((number(a)?, number(b)?)))
            .is_some_and(|(a, b)| (a..=b).contains(&id)),
        _ => false,
    }
}

/// Plan without and with a grace period, apply with every bulk call failing, apply killed
/// while a call is in flight, apply again (reconciling it).
async fn history() -> Env {
    let env = Env::start(
        FakeOptions {
            registrations: 300,
            seed: 1414,
            ..FakeOptions::default()
        },
        Settings {
            mode: "plan",
            ..Settings::default()
        },
    )
    .await;
    env.once().await;
    env.write_config(&Settings {
        mode: "plan",
        rules: GRACE_RULES,
        ..Settings::default()
    });
    env.once().await;
    env.write_config(&Settings {
        rules: GRACE_RULES,
        max_retries: 0,
        ..Settings::default()
    });
    env.fake.set_faults(vec![FaultRule::always(
        Endpoint::BulkDelete,
        Fault::Status {
            code: 500,
            retry_after: None,
        },
    )]);
    env.once().await;
    // The real binary, killed once its first call has reached the fake.
    env.fake.set_faults(vec![FaultRule::always(
        Endpoint::BulkDelete,
        Fault::Delay(Duration::from_secs(5)),
    )]);
    let calls_before = env.fake.mutations().len();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_zt-janitor"))
        .args(["once", "--config"])
        .arg(&env.config_path)
        .env_remove("CLOUDFLARE_API_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while env.fake.mutations().len() == calls_before {
        assert!(
            std::time::Instant::now() < deadline,
            "no call reached the fake"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().await.unwrap();
    env.fake.clear_faults();
    let pool = env.sql().await;
    assert_eq!(
        scalar(
            &pool,
            "SELECT count(*) FROM mutations WHERE outcome IS NULL"
        )
        .await,
        1,
        "the kill left one call without outcome"
    );
    pool.close().await;
    env.once().await;
    let pool = env.sql().await;
    for (what, sql) in [
        (
            "reconciled calls",
            "SELECT count(*) FROM mutations WHERE outcome LIKE 'reconciled%'",
        ),
        (
            "failed calls",
            "SELECT count(*) FROM mutations WHERE outcome = 'error'",
        ),
        (
            "deleted",
            "SELECT count(*) FROM actions WHERE status = 'done'",
        ),
        ("marks", "SELECT count(*) FROM marks"),
        ("mark events", "SELECT count(*) FROM mark_events"),
    ] {
        assert!(scalar(&pool, sql).await > 0, "the history has {what}");
    }
    assert_eq!(scalar(&pool, "SELECT count(*) FROM runs").await, 5);
    pool.close().await;
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_passes_a_real_history_and_names_each_tampered_table_and_row() {
    let env = history().await;
    let (code, doc) = verify(&env, &env.db_path);
    assert_eq!(code, 0, "{doc:#}");
    assert_eq!(doc["intact"], true);
    assert!(doc["scopes"].as_u64().unwrap() > 10, "{doc:#}");

    let pool = env.sql().await;
    let done = scalar(
        &pool,
        "SELECT min(id) FROM actions WHERE run_id = 5 AND status = 'done'",
    )
    .await;
    let snapshot = scalar(&pool, "SELECT max(action_id) FROM snapshots s JOIN actions a ON a.id = s.action_id WHERE a.status = 'done'").await;
    // A body is stored once for every decision that saw the object so: its first one is where
    // an edit of it shows first.
    let first_sharing = scalar(
        &pool,
        &format!(
            "SELECT min(action_id) FROM snapshots
             WHERE body_id = (SELECT body_id FROM snapshots WHERE action_id = {snapshot})"
        ),
    )
    .await;
    let last_action = scalar(&pool, "SELECT max(id) FROM actions").await;
    let reconciled = scalar(
        &pool,
        "SELECT id FROM mutations WHERE outcome LIKE 'reconciled%' LIMIT 1",
    )
    .await;
    pool.close().await;

    struct Case {
        name: &'static str,
        sql: String,
        table: &'static str,
        row: i64,
    }
    let cases = [
        Case {
            name: "edit a run",
            sql: "UPDATE runs SET actions_done = actions_done + 1 WHERE id = 3".into(),
            table: "runs",
            row: 3,
        },
        Case {
            name: "edit an action's status",
            sql: format!("UPDATE actions SET status = 'failed' WHERE id = {done}"),
            table: "actions",
            row: done,
        },
        Case {
            name: "edit a snapshot body",
            sql: format!(
                "UPDATE snapshot_bodies SET body = '{{}}'
                 WHERE id = (SELECT body_id FROM snapshots WHERE action_id = {snapshot})"
            ),
            table: "actions",
            row: first_sharing,
        },
        Case {
            name: "delete an action",
            sql: format!(
                "DELETE FROM snapshots WHERE action_id = {last_action};
                 DELETE FROM actions WHERE id = {last_action}"
            ),
            table: "actions",
            row: last_action,
        },
        Case {
            name: "insert an action",
            sql: format!(
                "INSERT INTO actions (id, run_id, decided_at, rule, action, resource_kind,
                     resource_id, reason, status)
                 SELECT {}, run_id, decided_at, rule, action, resource_kind, resource_id, reason,
                     'done'
                 FROM actions WHERE id = {last_action}",
                last_action + 1
            ),
            table: "actions",
            row: last_action + 1,
        },
        Case {
            name: "delete a mutation",
            sql: format!("DELETE FROM mutations WHERE id = {reconciled}"),
            table: "mutations",
            row: reconciled,
        },
        Case {
            name: "insert a run",
            sql: "INSERT INTO runs (id, started_at, finished_at, mode, outcome)
                  VALUES (6, '2026-01-01T00:00:00Z', '2026-01-01T00:01:00Z', 'apply', 'applied')"
                .into(),
            table: "runs",
            row: 6,
        },
        Case {
            name: "edit a chain entry",
            sql: "UPDATE audit_chain SET row_count = row_count + 1 WHERE seq = 5".into(),
            table: "audit_chain",
            row: 5,
        },
        Case {
            name: "delete a chain entry",
            sql: "DELETE FROM audit_chain WHERE seq = 5".into(),
            table: "audit_chain",
            row: 6,
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        let db = copy(&env, &format!("tampered-{i}")).await;
        let w = writer(&db).await;
        sqlx::raw_sql(&case.sql).execute(&w).await.unwrap();
        w.close().await;
        let (code, doc) = verify(&env, &db);
        assert_eq!(code, 5, "{}: {doc:#}", case.name);
        assert_eq!(doc["intact"], false, "{}", case.name);
        let broken = &doc["broken"];
        assert_eq!(broken["table"], case.table, "{}: {doc:#}", case.name);
        let row = broken["row"].as_str().unwrap();
        assert!(
            names(row, case.row),
            "{}: the report names row {}: {doc:#}",
            case.name,
            case.row
        );
        // The text says the same, for a person.
        let text = env.binary(&["audit", "verify", "--db", db.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.contains("BROKEN") && text.contains(case.table),
            "{}: {text}",
            case.name
        );
    }
    // The untouched database still verifies.
    assert_eq!(verify(&env, &env.db_path).0, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pruned_run_leaves_the_rest_verifiable_and_the_head_is_exposed() {
    let env = history().await;
    let (_, before) = verify(&env, &env.db_path);
    let pool = env.sql().await;
    let head: String =
        sqlx::query_scalar("SELECT sha256 FROM audit_chain ORDER BY seq DESC LIMIT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    assert_eq!(
        before["head"]["sha256"],
        head.as_str(),
        "the head is exposed"
    );

    // The real retention: every run that acted on nothing goes (run 1, a plan run no mark
    // points at, among them), and the chain records it in the same transactions.
    let store = AuditStore::open(&env.db_path).await.unwrap();
    let report = store
        .prune(
            Retention {
                days: 0,
                mutations_days: None,
            },
            chrono::Utc::now() + chrono::TimeDelta::days(1),
            PruneTrigger::Command,
            PruneLimits::COMMAND,
        )
        .await
        .unwrap();
    store.close().await;
    assert_eq!(report.error, None);
    assert!(report.runs.contains(&1), "{:?}", report.runs);
    let pool = env.sql().await;
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM audit_chain WHERE run_id = 1").await,
        0
    );
    pool.close().await;
    let (code, doc) = verify(&env, &env.db_path);
    assert_eq!(code, 0, "{doc:#}");
    let anchor = doc["anchor"].as_i64().expect("an anchor");
    assert_ne!(doc["head"], before["head"], "the head moves on");

    // The chain goes on after the anchor, and still verifies.
    env.once().await;
    let (code, after) = verify(&env, &env.db_path);
    assert_eq!(code, 0, "{after:#}");
    assert!(after["head"]["seq"].as_i64().unwrap() > anchor);

    // An entry the anchor kept, deleted, is caught.
    let db = copy(&env, "pruned-then-tampered").await;
    let w = writer(&db).await;
    sqlx::query("DELETE FROM audit_chain WHERE seq = (SELECT min(seq) FROM audit_chain)")
        .execute(&w)
        .await
        .unwrap();
    w.close().await;
    let (code, doc) = verify(&env, &db);
    assert_eq!(code, 5, "{doc:#}");
    assert_eq!(doc["broken"]["table"], "audit_chain");
    assert!(
        names(doc["broken"]["row"].as_str().unwrap(), anchor),
        "{doc:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_head_is_a_metric_label() {
    let env = Env::start(
        FakeOptions {
            registrations: 50,
            ..FakeOptions::default()
        },
        Settings {
            mode: "plan",
            rules: STANDARD_RULES,
            ..Settings::default()
        },
    )
    .await;
    let metrics = zt_janitor::metrics::Metrics::new();
    env.once_with(&metrics).await;
    let pool = env.sql().await;
    let (seq, head): (i64, String) =
        sqlx::query_as("SELECT seq, sha256 FROM audit_chain ORDER BY seq DESC LIMIT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    let scrape = metrics.render();
    assert_eq!(
        common::metric(
            &scrape,
            &format!("zt_janitor_audit_chain_head{{sha256=\"{head}\"}}")
        ),
        Some(seq as f64),
        "{scrape}"
    );
}

/// The other writers keep the chain whole too: a saved plan applied (its file and hash noted
/// on the run, a target gone since recorded as skipped) and an undo of that run.
#[tokio::test(flavor = "multi_thread")]
async fn a_saved_plan_apply_and_its_undo_verify() {
    let env = Env::start(
        FakeOptions {
            registrations: 120,
            seed: 2727,
            ..FakeOptions::default()
        },
        Settings {
            mode: "plan",
            rules: r#"
[[rule]]
name = "idle-90d-revoke"
resource = "device_registration"
action = "revoke"
idle_days = 90
"#,
            ..Settings::default()
        },
    )
    .await;
    let file = env.dir.path().join("plan.json");
    let out = env.binary(&["plan", "--out", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let gone = plan["parts"][0]["targets"][0]["id"]
        .as_str()
        .expect("a target")
        .to_owned();
    assert!(env.fake.remove(&gone));
    let out = env.binary(&["apply", file.to_str().unwrap(), "--yes"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // 3: the skipped target was not revoked, so there is nothing to reverse for it.
    let out = env.binary(&["undo", "--run", "1", "--yes"]);
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pool = env.sql().await;
    for (what, sql) in [
        (
            "a saved plan noted",
            "SELECT count(*) FROM runs WHERE saved_plan_sha256 IS NOT NULL",
        ),
        (
            "a skipped target",
            "SELECT count(*) FROM actions WHERE run_id = 1 AND status = 'not_attempted'",
        ),
        (
            "undo actions",
            "SELECT count(*) FROM actions WHERE undoes_action_id IS NOT NULL",
        ),
    ] {
        assert!(scalar(&pool, sql).await > 0, "the history has {what}");
    }
    pool.close().await;
    let (code, doc) = verify(&env, &env.db_path);
    assert_eq!(code, 0, "{doc:#}");
}

//! Issue 14, bounded growth: runs older than `[audit] retain_days` (acted on nothing) or
//! `retain_mutations` (acted) are pruned at the start of each cycle and by `zt-janitor audit
//! prune`, keeping what is still open, unsettled or named. Runs' ages are set with plain SQL:
//! a cycle records its real finishing time whatever clock it is given.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, TimeDelta, Utc};
use common::{metric, Env, Settings};
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::SqlitePool;
use zt_janitor::audit::{AuditStore, PruneLimits, PruneTrigger, Retention};
use zt_janitor::fake::FakeOptions;
use zt_janitor::metrics::Metrics;

fn options() -> FakeOptions {
    FakeOptions {
        registrations: 60,
        ..FakeOptions::default()
    }
}

/// A writable connection to a database no process has open.
async fn writable(path: &Path) -> SqlitePool {
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(path)
                .foreign_keys(true),
        )
        .await
        .unwrap()
}

async fn set_finished(path: &Path, run: i64, at: DateTime<Utc>) {
    let pool = writable(path).await;
    sqlx::query("UPDATE runs SET finished_at = ?1 WHERE id = ?2")
        .bind(at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .bind(run)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

async fn scalar(pool: &SqlitePool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

async fn run_ids(env: &Env) -> Vec<i64> {
    let pool = env.sql().await;
    let ids = sqlx::query_scalar("SELECT id FROM runs ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    ids
}

/// One cycle at `now` with `retention` lines in `[audit]`, recording into `metrics`.
async fn cycle_at(env: &Env, mode: &str, retention: &str, now: DateTime<Utc>, metrics: &Metrics) {
    env.write_config(&Settings {
        mode,
        extra: retention,
        ..Settings::default()
    });
    let janitor = env.open().await.with_metrics(metrics.clone());
    janitor
        .cycle()
        .run(now)
        .await
        .expect("the audit store works");
    janitor.close().await;
}

/// A run just inside retain_days is kept and one just outside is pruned; a run that acted
/// is kept by default and pruned once retain_mutations has passed; the metrics count it.
#[tokio::test]
async fn runs_are_pruned_at_the_cycle_start_once_their_retention_has_passed() {
    let env = Env::start(options(), Settings::default()).await;
    let quiet = Metrics::new();
    let now = Utc::now();
    cycle_at(&env, "plan", "", now, &quiet).await; // 1: acted on nothing
    cycle_at(&env, "apply", "", now, &quiet).await; // 2: acted
    cycle_at(&env, "plan", "", now, &quiet).await; // 3: acted on nothing
    let day = TimeDelta::days(1);
    let second = TimeDelta::seconds(1);
    set_finished(&env.db_path, 1, now - day * 10 - second).await;
    set_finished(&env.db_path, 2, now - day * 100).await;
    set_finished(&env.db_path, 3, now - day * 10 + second).await;
    let pool = env.sql().await;
    // A plan run's decisions are folded into spans at its close; the apply run between
    // breaks them, so run 1's spans are its own.
    let run1_spans = scalar(
        &pool,
        "SELECT count(*) FROM decision_spans WHERE first_run_id = 1 AND last_run_id = 1",
    )
    .await;
    let run2_mutations = scalar(&pool, "SELECT count(*) FROM mutations WHERE run_id = 2").await;
    pool.close().await;
    assert!(run1_spans > 0 && run2_mutations > 0);

    let metrics = Metrics::new();
    cycle_at(&env, "plan", "retain_days = 10\n", now, &metrics).await; // 4
    assert_eq!(
        run_ids(&env).await,
        [2, 3, 4],
        "1 was just outside, 3 just inside"
    );
    let scrape = metrics.render();
    let pruned = |table: &str| {
        metric(
            &scrape,
            &format!("zt_janitor_audit_pruned_rows_total{{table=\"{table}\"}}"),
        )
    };
    assert_eq!(pruned("runs"), Some(1.0));
    assert_eq!(pruned("decision_spans"), Some(run1_spans as f64));
    assert_eq!(pruned("actions"), Some(0.0));
    assert_eq!(pruned("mutations"), Some(0.0));
    assert_eq!(
        metric(&scrape, "zt_janitor_audit_prune_failures_total"),
        Some(0.0)
    );
    let size = std::fs::metadata(&env.db_path).unwrap().len() as f64;
    let reported = metric(&scrape, "zt_janitor_audit_db_bytes").unwrap();
    assert!(reported >= size, "{reported} < {size}");
    let pool = env.sql().await;
    let record: (String, i64, i64, i64, String) =
        sqlx::query_as("SELECT triggered_by, runs, first_run_id, last_run_id, deleted FROM prunes")
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    assert_eq!(
        (&record.0[..], record.1, record.2, record.3),
        ("cycle", 1, 1, 1)
    );
    let deleted: BTreeMap<String, i64> = serde_json::from_str(&record.4).unwrap();
    assert_eq!(deleted["decision_spans"], run1_spans);

    cycle_at(
        &env,
        "plan",
        "retain_days = 10\nretain_mutations = 101\n",
        now,
        &quiet,
    )
    .await;
    assert_eq!(
        run_ids(&env).await,
        [2, 3, 4, 5],
        "2 acted 100 days ago: kept"
    );
    cycle_at(
        &env,
        "plan",
        "retain_days = 10\nretain_mutations = 99\n",
        now,
        &quiet,
    )
    .await;
    assert_eq!(
        run_ids(&env).await,
        [3, 4, 5, 6],
        "retain_mutations has passed for 2"
    );
    let pool = env.sql().await;
    assert_eq!(scalar(&pool, "SELECT count(*) FROM mutations").await, 0);
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM pragma_foreign_key_check").await,
        0
    );
    pool.close().await;
}

/// A call whose outcome was never recorded keeps its run whatever its age: the next start
/// reconciles it against the listing.
#[tokio::test]
async fn a_run_with_a_call_of_unknown_outcome_is_kept() {
    let env = Env::start(options(), Settings::default()).await;
    let quiet = Metrics::new();
    let now = Utc::now();
    cycle_at(&env, "apply", "", now, &quiet).await;
    cycle_at(&env, "plan", "", now, &quiet).await;
    let pool = writable(&env.db_path).await;
    sqlx::query("UPDATE mutations SET outcome = NULL, completed_at = NULL WHERE id = (SELECT min(id) FROM mutations)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    for run in [1, 2] {
        set_finished(&env.db_path, run, now - TimeDelta::days(400)).await;
    }
    let audit = AuditStore::open(&env.db_path).await.unwrap();
    let retention = Retention {
        days: 1,
        mutations_days: Some(1),
    };
    let report = audit
        .prune(retention, now, PruneTrigger::Command, PruneLimits::COMMAND)
        .await
        .unwrap();
    audit.close().await;
    assert!(report.runs.is_empty(), "{report:?}");
    let held: Vec<(i64, String)> = report
        .held
        .iter()
        .map(|h| (h.run_id, format!("{:?}", h.reason)))
        .collect();
    assert_eq!(
        held,
        [(1, "UnknownOutcome".to_owned()), (2, "Latest".to_owned())]
    );
    assert_eq!(run_ids(&env).await, [1, 2]);
}

fn schema(name: &str) -> jsonschema::Validator {
    let path = format!("{}/schemas/{name}.schema.json", env!("CARGO_MANIFEST_DIR"));
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    jsonschema::draft202012::new(&schema).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn assert_valid(doc: &Value) {
    let validator = schema("audit-prune");
    let errors: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{errors:?}\n{doc:#}");
}

/// Every table's rows, and the bytes of the database file.
async fn fingerprint(env: &Env) -> (Vec<i64>, Vec<u8>) {
    let pool = env.sql().await;
    let mut counts = Vec::new();
    for table in [
        "runs",
        "run_kinds",
        "actions",
        "snapshots",
        "mutations",
        "mark_events",
        "notification_attempts",
        "prunes",
    ] {
        counts.push(scalar(&pool, &format!("SELECT count(*) FROM {table}")).await);
    }
    pool.close().await;
    (counts, std::fs::read(&env.db_path).unwrap())
}

/// `audit prune --dry-run` says what `audit prune` then deletes, and changes nothing; both
/// documents follow the schema. A process holding the database keeps `audit prune` out, and
/// it says so.
#[tokio::test(flavor = "multi_thread")]
async fn the_command_previews_then_prunes_and_says_when_the_database_is_in_use() {
    let env = Env::start(options(), Settings::default()).await;
    let quiet = Metrics::new();
    let now = Utc::now();
    for mode in ["plan", "plan", "apply", "plan"] {
        cycle_at(&env, mode, "retain_days = 5\n", now, &quiet).await;
    }
    for run in 1..=4 {
        set_finished(&env.db_path, run, now - TimeDelta::days(30)).await;
    }
    let before = fingerprint(&env).await;
    let dry = env.binary(&["audit", "prune", "--dry-run", "--output", "json"]);
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let preview: Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_valid(&preview);
    assert_eq!(preview["dry_run"], true);
    assert_eq!(
        preview["runs"],
        serde_json::json!([2, 1]),
        "3 acted, 4 is the latest"
    );
    assert!(
        fingerprint(&env).await == before,
        "a dry run changed the database"
    );
    let text = env.binary(&["audit", "prune", "--dry-run"]);
    let said = String::from_utf8_lossy(&text.stdout);
    assert!(said.contains("Would prune 2 runs (ids 1 to 2)"), "{said}");
    assert!(said.contains("run 4 (the latest run)"), "{said}");
    assert!(fingerprint(&env).await == before);

    let holder = AuditStore::open(&env.db_path).await.unwrap();
    let refused = env.binary(&["audit", "prune"]);
    holder.close().await;
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("audit prune needs the audit database to itself")
            && stderr.contains("is using the audit database"),
        "{stderr}"
    );
    // The holder's own open and close may touch the file; no row changed.
    assert_eq!(fingerprint(&env).await.0, before.0);

    let done = env.binary(&["audit", "prune", "--output", "json"]);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let pruned: Value = serde_json::from_slice(&done.stdout).unwrap();
    assert_valid(&pruned);
    assert_eq!(pruned["dry_run"], false);
    assert_eq!(pruned["runs"], preview["runs"]);
    assert_eq!(
        pruned["deleted"], preview["deleted"],
        "the preview counted right"
    );
    assert_eq!(pruned["triggered_by"], "command");
    assert_eq!(run_ids(&env).await, [3, 4]);
    let pool = env.sql().await;
    assert_eq!(
        scalar(
            &pool,
            "SELECT count(*) FROM prunes WHERE triggered_by = 'command'"
        )
        .await,
        1
    );
    pool.close().await;
}

/// The database today's code wrote (tests/data), migrated and pruned with retain_days = 0:
/// only what is still named or acted stays, and it all still reads.
#[tokio::test(flavor = "multi_thread")]
async fn the_database_of_todays_code_migrates_and_prunes_to_what_is_still_named() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/audit-before-issue14.db"),
        &db,
    )
    .expect("tests/data/audit-before-issue14.db (made by tests/data/make-audit-fixture.sh)");
    // What must stay, in plain SQL on the file as today's code left it: runs that acted
    // (retain_mutations is forever), runs a mark names, the run an undo names, the latest.
    let pool = writable(&db).await;
    let expected: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM runs WHERE id IN (SELECT run_id FROM mutations)
            OR id IN (SELECT first_run_id FROM marks) OR id IN (SELECT last_run_id FROM marks)
            OR id IN (SELECT a.run_id FROM marks m JOIN actions a ON a.id = m.first_action_id)
            OR id IN (SELECT undoes_run FROM runs WHERE undoes_run IS NOT NULL)
            OR id = (SELECT max(id) FROM runs)
         ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let all: i64 = scalar(&pool, "SELECT count(*) FROM runs").await;
    let marks: Vec<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT m.resource_id, CAST(s.body AS BLOB) FROM marks m JOIN snapshots s
             ON s.action_id = m.first_action_id ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    assert!(
        (expected.len() as i64) < all && !marks.is_empty(),
        "the fixture has runs to prune and marks: {expected:?} of {all}"
    );

    let audit = AuditStore::open(&db)
        .await
        .expect("today's database migrates");
    let retention = Retention {
        days: 0,
        mutations_days: None,
    };
    let report = audit
        .prune(
            retention,
            Utc::now(),
            PruneTrigger::Command,
            PruneLimits::COMMAND,
        )
        .await
        .unwrap();
    assert_eq!(report.error, None);
    assert_eq!(report.runs.len() as i64, all - expected.len() as i64);
    let kept: Vec<i64> = audit
        .recent_runs(100)
        .await
        .unwrap()
        .iter()
        .rev()
        .map(|r| r.id)
        .collect();
    assert_eq!(kept, expected);
    audit.close().await;
    let pool = writable(&db).await;
    // A mark keeps the object as first marked: its body is not swept.
    let kept_marks: Vec<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT m.resource_id, CAST(b.body AS BLOB) FROM marks m JOIN snapshot_bodies b
             ON b.id = m.first_body_id ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(kept_marks, marks, "each mark looks as it did");
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM pragma_foreign_key_check").await,
        0
    );
    assert_eq!(
        scalar(
            &pool,
            "SELECT count(*) FROM actions a WHERE NOT EXISTS
                 (SELECT 1 FROM snapshots s WHERE s.action_id = a.id)"
        )
        .await,
        0
    );
    pool.close().await;
    for query in ["runs", "actions"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_zt-janitor"))
            .args(["audit", query, "--db"])
            .arg(&db)
            .args(["--output", "json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            !doc[query].as_array().unwrap().is_empty(),
            "audit {query} reads"
        );
    }
}

/// A prune that fails (here: a row of a table no version writes names a due run, and the
/// enforced foreign key refuses its delete) is counted and logged, and the cycle runs all the
/// same; the due run is left whole.
#[tokio::test]
async fn a_failed_prune_is_counted_and_the_cycle_goes_on() {
    let env = Env::start(options(), Settings::default()).await;
    let quiet = Metrics::new();
    let now = Utc::now();
    cycle_at(&env, "plan", "", now, &quiet).await;
    cycle_at(&env, "plan", "", now, &quiet).await;
    set_finished(&env.db_path, 1, now - TimeDelta::days(30)).await;
    let pool = writable(&env.db_path).await;
    for sql in [
        "CREATE TABLE unknown_ref (run_id INTEGER REFERENCES runs(id))",
        "INSERT INTO unknown_ref VALUES (1)",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    let spans = scalar(
        &pool,
        "SELECT count(*) FROM decision_spans WHERE first_run_id = 1",
    )
    .await;
    assert!(spans > 0);
    pool.close().await;

    let metrics = Metrics::new();
    env.write_config(&Settings {
        mode: "plan",
        extra: "retain_days = 1\n",
        ..Settings::default()
    });
    let janitor = env.open().await.with_metrics(metrics.clone());
    let report = janitor.cycle().run(now).await.expect("the cycle runs");
    janitor.close().await;
    assert_eq!(report.outcome.as_str(), "planned");
    let scrape = metrics.render();
    assert_eq!(
        metric(&scrape, "zt_janitor_audit_prune_failures_total"),
        Some(1.0)
    );
    // A refused delete is rolled back whole: not a failed write of the store.
    assert_eq!(metric(&scrape, "zt_janitor_audit_writable"), Some(1.0));
    assert_eq!(
        metric(&scrape, "zt_janitor_audit_write_errors_total"),
        Some(0.0)
    );
    assert_eq!(run_ids(&env).await, [1, 2, 3]);
    let pool = env.sql().await;
    assert_eq!(
        scalar(
            &pool,
            "SELECT count(*) FROM decision_spans WHERE first_run_id = 1"
        )
        .await,
        spans
    );
    pool.close().await;
}

//! A database written by an earlier zt-janitor is carried forward by the migrations, its
//! decisions and their snapshots intact.

use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use zt_janitor::audit::{ActionFilter, ActionStatus, AuditStore};
use zt_janitor::resource::Kind;

#[tokio::test]
async fn snapshots_written_before_they_had_a_table_of_their_own_survive_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let first_only = dir.path().join("migrations");
    std::fs::create_dir(&first_only).unwrap();
    let first = "20261124000001_audit.sql";
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(first),
        first_only.join(first),
    )
    .unwrap();
    let db = dir.path().join("audit.db");
    let old = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(&db)
                .create_if_missing(true),
        )
        .await
        .unwrap();
    sqlx::migrate::Migrator::new(first_only.as_path())
        .await
        .unwrap()
        .run(&old)
        .await
        .unwrap();
    let snapshot = r#"{"id":"aaaaaaaa-0000-4000-8000-000000000001","extra":[1,2]}"#;
    sqlx::query(
        "INSERT INTO runs (id, started_at, mode, outcome) VALUES (1, 't', 'apply', 'applied')",
    )
    .execute(&old)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO actions (run_id, decided_at, rule, action, resource_type, resource_id,
             user_email, reason, status, snapshot)
         VALUES (1, 't', 'idle-90d', 'delete', 'device_registration',
             'aaaaaaaa-0000-4000-8000-000000000001', 'Dana@Example.com', 'idle', 'done', ?1)",
    )
    .bind(snapshot)
    .execute(&old)
    .await
    .unwrap();
    old.close().await;

    let audit = AuditStore::open(&db).await.unwrap();
    let rows = audit
        .actions(&ActionFilter {
            user_email: Some("dana@example.com".into()),
            limit: 10,
            ..ActionFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].snapshot, snapshot);
    assert_eq!(rows[0].status, "done");
    audit.close().await;
}

/// A database written before answers were confirmed by listing: its actions and mutations are
/// rebuilt with the wider statuses, every row, reference, snapshot and index intact.
#[tokio::test]
async fn a_database_from_before_confirmation_gains_the_new_statuses_with_its_rows_intact() {
    let dir = tempfile::tempdir().unwrap();
    let (db, old) = migrated_up_to(dir.path(), "20261125000001_snapshots_apart.sql").await;
    for statement in [
        "INSERT INTO runs (id, started_at, mode, outcome) VALUES (1, 't', 'apply', 'applied')",
        "INSERT INTO mutations (id, run_id, kind, method, path, resource_ids, intent_at,
             completed_at, outcome, http_status)
         VALUES (7, 1, 'delete', 'DELETE', '/x', '[\"aaaaaaaa-0000-4000-8000-000000000001\"]',
             't', 't', 'already_gone', 404)",
        "INSERT INTO actions (id, run_id, decided_at, rule, action, resource_type, resource_id,
             reason, status, mutation_id)
         VALUES (3, 1, 't', 'idle-90d', 'delete', 'device_registration',
             'aaaaaaaa-0000-4000-8000-000000000001', 'idle', 'already_gone', 7)",
        "INSERT INTO snapshots (action_id, body) VALUES (3, '{\"id\":1}')",
    ] {
        sqlx::query(statement).execute(&old).await.unwrap();
    }
    // The old schema refuses the new status.
    assert!(
        sqlx::query("UPDATE actions SET status = 'unconfirmed' WHERE id = 3")
            .execute(&old)
            .await
            .is_err()
    );
    old.close().await;

    let audit = AuditStore::open(&db).await.unwrap();
    let rows = audit
        .actions(&ActionFilter {
            limit: 10,
            ..ActionFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "already_gone");
    assert_eq!(rows[0].mutation_id, Some(7));
    assert_eq!(rows[0].http_status, Some(404));
    assert_eq!(rows[0].snapshot, r#"{"id":1}"#);
    audit.close().await;

    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(SqliteConnectOptions::new().filename(&db).foreign_keys(true))
        .await
        .unwrap();
    for status in ["unconfirmed", "stuck"] {
        sqlx::query("UPDATE actions SET status = ?1 WHERE id = 3")
            .bind(status)
            .execute(&pool)
            .await
            .unwrap();
    }
    for outcome in ["not_found", "rejected"] {
        sqlx::query("UPDATE mutations SET outcome = ?1 WHERE id = 7")
            .bind(outcome)
            .execute(&pool)
            .await
            .unwrap();
    }
    assert!(
        sqlx::query("UPDATE actions SET status = 'bogus' WHERE id = 3")
            .execute(&pool)
            .await
            .is_err()
    );
    let violations: Vec<(String,)> =
        sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_check")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(violations.is_empty(), "{violations:?}");
    // References point at the rebuilt tables, not at leftovers.
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(tables.iter().all(|t| !t.ends_with("_new")), "{tables:?}");
    let references: Vec<String> =
        sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE name IN ('actions', 'snapshots')")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        references.iter().all(|sql| !sql.contains("_new")),
        "{references:?}"
    );
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for index in [
        "actions_failing",
        "actions_mutation",
        "actions_resource",
        "actions_run",
        "actions_user_folded",
        "mutations_pending",
    ] {
        assert!(
            indexes.contains(&index.to_owned()),
            "{index} in {indexes:?}"
        );
    }
    pool.close().await;
}

/// A database built by the migrations before resource kinds: every action and mutation reads
/// back as a device registration, with its rows, references, snapshots, folded emails and
/// indexes intact, and an interrupted call is still found for reconciliation.
#[tokio::test]
async fn a_database_from_before_resource_kinds_reads_back_as_device_registrations() {
    let dir = tempfile::tempdir().unwrap();
    let (db, old) = migrated_up_to(dir.path(), "20261126000002_user_email_folded.sql").await;
    let id = "aaaaaaaa-0000-4000-8000-000000000001";
    for statement in [
        "INSERT INTO runs (id, started_at, mode, outcome) VALUES (1, 't', 'apply', 'applied')",
        "INSERT INTO runs (id, started_at, mode) VALUES (2, 't2', 'apply')",
        "INSERT INTO mutations (id, run_id, kind, method, path, resource_ids, intent_at,
             completed_at, outcome, http_status)
         VALUES (7, 1, 'bulk_delete', 'DELETE', '/x', '[\"aaaaaaaa-0000-4000-8000-000000000001\"]',
             't', 't', 'ok', 200)",
        "INSERT INTO mutations (id, run_id, kind, method, path, resource_ids, intent_at)
         VALUES (8, 2, 'delete', 'DELETE', '/y', '[\"bbbbbbbb-0000-4000-8000-000000000002\"]', 't2')",
        "INSERT INTO actions (id, run_id, decided_at, rule, action, resource_type, resource_id,
             user_email, user_email_folded, device_name, reason, status, mutation_id)
         VALUES (3, 1, 't', 'idle-90d', 'delete', 'device_registration',
             'aaaaaaaa-0000-4000-8000-000000000001', 'ÉLISE@example.com', 'élise@example.com',
             'laptop', 'idle', 'done', 7)",
        "INSERT INTO actions (id, run_id, decided_at, rule, action, resource_type, resource_id,
             reason, status)
         VALUES (4, 2, 't2', 'idle-90d', 'delete', 'device_registration',
             'bbbbbbbb-0000-4000-8000-000000000002', 'idle', 'planned')",
        "INSERT INTO snapshots (action_id, body) VALUES (3, '{\"id\":1}')",
        "INSERT INTO snapshots (action_id, body) VALUES (4, '{\"id\":2}')",
    ] {
        sqlx::query(statement).execute(&old).await.unwrap();
    }
    old.close().await;

    let audit = AuditStore::open(&db).await.unwrap();
    let rows = audit
        .actions(&ActionFilter {
            user_email: Some("Élise@Example.com".into()),
            limit: 10,
            ..ActionFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "the folded email survives");
    assert_eq!(rows[0].resource_kind, "device_registration");
    assert_eq!(rows[0].resource_id, id);
    assert_eq!(rows[0].device_name.as_deref(), Some("laptop"));
    assert_eq!(rows[0].status, "done");
    assert_eq!(rows[0].mutation_id, Some(7));
    assert_eq!(rows[0].http_status, Some(200));
    assert_eq!(rows[0].snapshot, r#"{"id":1}"#);
    let all = audit
        .actions(&ActionFilter {
            limit: 10,
            ..ActionFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|a| a.resource_kind == "device_registration"));
    let pending = audit.pending_mutations().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id.0, 8);
    assert_eq!(pending[0].resource_kind, Kind::DeviceRegistration);
    assert_eq!(
        pending[0].resource_ids[0].as_str(),
        "bbbbbbbb-0000-4000-8000-000000000002"
    );
    audit.close().await;

    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(SqliteConnectOptions::new().filename(&db).foreign_keys(true))
        .await
        .unwrap();
    let kinds: Vec<String> = sqlx::query_scalar("SELECT resource_kind FROM mutations ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(kinds, ["device_registration", "device_registration"]);
    let violations: Vec<(String,)> =
        sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_check")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(violations.is_empty(), "{violations:?}");
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(tables.iter().all(|t| !t.ends_with("_new")), "{tables:?}");
    assert!(tables.contains(&"run_kinds".to_owned()), "{tables:?}");
    let references: Vec<String> =
        sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE name IN ('actions', 'snapshots')")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        references.iter().all(|sql| !sql.contains("_new")),
        "{references:?}"
    );
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        indexes,
        [
            "actions_failing",
            "actions_mutation",
            "actions_resource",
            "actions_run",
            "actions_undoes",
            "actions_user_folded",
            // Issue 14, tamper evidence: the hash chain's own indexes.
            "audit_chain_run",
            "audit_chain_scope",
            "decision_spans_body",
            "decision_spans_last_run",
            "decision_spans_resource",
            "decision_spans_user_folded",
            "mark_events_run",
            "marks_first_body",
            "mutations_pending",
            "mutations_run",
            "notification_attempts_run",
            "snapshots_body",
        ]
    );
    pool.close().await;
}

/// A database built by the migrations up to resource kinds: actions, snapshots, mutations and
/// run_kinds come through the rebuild that admits `refused_by_api` with every row, reference
/// and index intact; runs and their kinds gain a refused count.
#[tokio::test]
async fn a_database_from_before_refusals_gains_refused_by_api_with_its_rows_intact() {
    let dir = tempfile::tempdir().unwrap();
    let (db, old) = migrated_up_to(dir.path(), "20261127000001_resource_kind.sql").await;
    let id = "aaaaaaaa-0000-4000-8000-000000000001";
    for statement in [
        "INSERT INTO runs (id, started_at, finished_at, mode, outcome, reason, seen_total,
             candidates, excluded, actions_done, actions_failed, api_requests)
         VALUES (1, 't', 't1', 'apply', 'failed', '1 failed', 10, 1, 0, 0, 1, 3)",
        "INSERT INTO mutations (id, run_id, resource_kind, kind, method, path, resource_ids,
             intent_at, completed_at, outcome, http_status, cf_error_code, cf_error_message)
         VALUES (7, 1, 'device_registration', 'delete', 'DELETE', '/x',
             '[\"aaaaaaaa-0000-4000-8000-000000000001\"]', 't', 't', 'rejected', 400, 12139,
             'in use')",
        "INSERT INTO actions (id, run_id, decided_at, rule, action, resource_kind, resource_id,
             user_email, user_email_folded, device_name, last_seen_at, reason, excluded_by,
             status, status_detail, mutation_id)
         VALUES (3, 1, 't', 'idle-90d', 'delete', 'device_registration',
             'aaaaaaaa-0000-4000-8000-000000000001', 'ÉLISE@example.com', 'élise@example.com',
             'laptop', '2026-01-01T00:00:00Z', 'idle', NULL, 'failed', 'HTTP 400', 7)",
        "INSERT INTO snapshots (action_id, body) VALUES (3, '{\"id\":1}')",
        "INSERT INTO run_kinds (run_id, kind, outcome, reason, seen, candidates, excluded,
             done, failed)
         VALUES (1, 'device_registration', 'failed', '1 failed', 10, 1, 0, 0, 1)",
    ] {
        sqlx::query(statement).execute(&old).await.unwrap();
    }
    // The old schema refuses the new status.
    assert!(
        sqlx::query("UPDATE actions SET status = 'refused_by_api' WHERE id = 3")
            .execute(&old)
            .await
            .is_err()
    );
    old.close().await;

    let audit = AuditStore::open(&db).await.unwrap();
    let rows = audit
        .actions(&ActionFilter {
            user_email: Some("Élise@Example.com".into()),
            limit: 10,
            ..ActionFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "the folded email survives");
    let a = &rows[0];
    assert_eq!(
        (
            a.id,
            a.run_id,
            a.decided_at.as_str(),
            a.rule.as_str(),
            a.action.as_str()
        ),
        (Some(3), 1, "t", "idle-90d", "delete")
    );
    assert_eq!(a.resource_kind, "device_registration");
    assert_eq!(a.resource_id, id);
    assert_eq!(a.user_email.as_deref(), Some("ÉLISE@example.com"));
    assert_eq!(a.device_name.as_deref(), Some("laptop"));
    assert_eq!(a.last_seen_at.as_deref(), Some("2026-01-01T00:00:00Z"));
    assert_eq!(a.reason, "idle");
    assert_eq!(a.status, "failed");
    assert_eq!(a.status_detail.as_deref(), Some("HTTP 400"));
    assert_eq!(a.mutation_id, Some(7));
    assert_eq!(a.mutation_completed_at.as_deref(), Some("t"));
    assert_eq!(a.http_status, Some(400));
    assert_eq!(a.snapshot, r#"{"id":1}"#);
    let runs = audit.recent_runs(10).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].actions_failed, Some(1));
    assert_eq!(runs[0].reason.as_deref(), Some("1 failed"));
    assert_eq!(runs[0].actions_refused, None, "not counted before");

    audit
        .set_action_status(&[3], ActionStatus::RefusedByApi, Some("in use"))
        .await
        .unwrap();
    let rows = audit
        .actions(&ActionFilter {
            limit: 10,
            ..ActionFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "refused_by_api");
    assert_eq!(rows[0].status_detail.as_deref(), Some("in use"));
    assert_eq!(rows[0].mutation_id, Some(7), "still points at its call");
    audit.close().await;

    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(SqliteConnectOptions::new().filename(&db).foreign_keys(true))
        .await
        .unwrap();
    let run_kinds: Vec<(i64, String, String, i64, i64, i64)> =
        sqlx::query_as("SELECT run_id, kind, outcome, done, failed, refused FROM run_kinds")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        run_kinds,
        [(1, "device_registration".into(), "failed".into(), 0, 1, 0)]
    );
    let mutation: (String, i64, String) = sqlx::query_as(
        "SELECT outcome, cf_error_code, cf_error_message FROM mutations WHERE id = 7",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(mutation, ("rejected".into(), 12139, "in use".into()));
    assert!(
        sqlx::query("UPDATE actions SET status = 'bogus' WHERE id = 3")
            .execute(&pool)
            .await
            .is_err()
    );
    let violations: Vec<(String,)> =
        sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_check")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(violations.is_empty(), "{violations:?}");
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(tables.iter().all(|t| !t.ends_with("_new")), "{tables:?}");
    let references: Vec<String> =
        sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE name IN ('actions', 'snapshots')")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        references.iter().all(|sql| !sql.contains("_new")),
        "{references:?}"
    );
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        indexes,
        [
            "actions_failing",
            "actions_mutation",
            "actions_resource",
            "actions_run",
            "actions_undoes",
            "actions_user_folded",
            // Issue 14, tamper evidence: the hash chain's own indexes.
            "audit_chain_run",
            "audit_chain_scope",
            "decision_spans_body",
            "decision_spans_last_run",
            "decision_spans_resource",
            "decision_spans_user_folded",
            "mark_events_run",
            "marks_first_body",
            "mutations_pending",
            "mutations_run",
            "notification_attempts_run",
            "snapshots_body",
        ]
    );
    pool.close().await;
}

/// 20261203000001 rebuilds every table (`runs` is the root, and SQLite cannot alter a CHECK):
/// every row comes through with its links, and the rebuilt tables take undo runs, undo actions
/// linked to what they undo, and the two new mutation kinds.
#[tokio::test]
async fn a_database_from_before_undo_keeps_every_row_and_takes_undo_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (db, old) = migrated_up_to(dir.path(), "20261130000001_saved_plans.sql").await;
    for statement in [
        "INSERT INTO runs (id, started_at, finished_at, mode, outcome, reason, seen_total,
             candidates, excluded, actions_done, actions_failed, api_requests, refused,
             saved_plan_path, saved_plan_sha256, max_actions_override)
         VALUES (1, 't', 't1', 'apply', 'applied', NULL, 10, 1, 0, 1, 0, 3, 0, 'p.json',
             'abc', 5)",
        "INSERT INTO mutations (id, run_id, resource_kind, kind, method, path, resource_ids,
             intent_at, completed_at, outcome, http_status, zone_id)
         VALUES (7, 1, 'device_registration', 'revoke', 'POST', '/x',
             '[\"aaaaaaaa-0000-4000-8000-000000000001\"]', 't', 't', 'ok', 200, NULL)",
        "INSERT INTO actions (id, run_id, decided_at, rule, action, resource_kind, resource_id,
             user_email, user_email_folded, device_name, reason, status, mutation_id)
         VALUES (3, 1, 't', 'idle-60d', 'revoke', 'device_registration',
             'aaaaaaaa-0000-4000-8000-000000000001', 'a@example.com', 'a@example.com',
             'laptop', 'idle', 'done', 7)",
        "INSERT INTO snapshots (action_id, body) VALUES (3, '{\"id\":1}')",
        "INSERT INTO run_kinds (run_id, kind, outcome, done, failed, refused)
         VALUES (1, 'device_registration', 'applied', 1, 0, 0)",
    ] {
        sqlx::query(statement).execute(&old).await.unwrap();
    }
    assert!(
        sqlx::query("INSERT INTO runs (started_at, mode) VALUES ('t', 'undo')")
            .execute(&old)
            .await
            .is_err(),
        "the old schema refuses an undo run"
    );
    old.close().await;

    let audit = AuditStore::open(&db).await.unwrap();
    let rows = audit
        .actions(&ActionFilter {
            limit: 10,
            ..ActionFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let a = &rows[0];
    assert_eq!(
        (a.id, a.action.as_str(), a.status.as_str(), a.mutation_id),
        (Some(3), "revoke", "done", Some(7))
    );
    assert_eq!(
        (a.http_status, a.snapshot.as_str(), a.undoes_action_id),
        (Some(200), r#"{"id":1}"#, None)
    );
    let runs = audit.recent_runs(10).await.unwrap();
    assert_eq!(
        (runs[0].mode.as_str(), runs[0].actions_done),
        ("apply", Some(1))
    );
    audit.close().await;

    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(SqliteConnectOptions::new().filename(&db).foreign_keys(true))
        .await
        .unwrap();
    let kept: (String, String, i64) = sqlx::query_as(
        "SELECT saved_plan_path, saved_plan_sha256, max_actions_override FROM runs WHERE id = 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(kept, ("p.json".into(), "abc".into(), 5));
    for statement in [
        "INSERT INTO runs (id, started_at, mode, undoes_run) VALUES (2, 't', 'undo', 1)",
        "INSERT INTO mutations (id, run_id, resource_kind, kind, method, path, resource_ids,
             intent_at) VALUES (8, 2, 'device_registration', 'unrevoke', 'POST', '/x', '[]', 't')",
        "INSERT INTO mutations (id, run_id, resource_kind, kind, method, path, resource_ids,
             intent_at) VALUES (9, 2, 'client_certificate', 'reactivate', 'PATCH', '/x', '[]', 't')",
        "INSERT INTO actions (id, run_id, decided_at, rule, action, resource_kind, resource_id,
             reason, status, mutation_id, undoes_action_id)
         VALUES (4, 2, 't', 'idle-60d', 'unrevoke', 'device_registration',
             'aaaaaaaa-0000-4000-8000-000000000001', 'undo', 'planned', 8, 3)",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    assert!(
        sqlx::query("UPDATE actions SET undoes_action_id = 99 WHERE id = 4")
            .execute(&pool)
            .await
            .is_err(),
        "an undo names an action that exists"
    );
    assert!(
        sqlx::query("UPDATE mutations SET kind = 'bogus' WHERE id = 8")
            .execute(&pool)
            .await
            .is_err()
    );
    let violations: Vec<(String,)> =
        sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_check")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(violations.is_empty(), "{violations:?}");
    let schema: Vec<String> =
        sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(schema.iter().all(|sql| !sql.contains("_new")), "{schema:?}");
    pool.close().await;
}

/// A database in `dir` built by the migrations up to and including `last`, as an earlier
/// zt-janitor left it, and a connection to it.
async fn migrated_up_to(
    dir: &std::path::Path,
    last: &str,
) -> (std::path::PathBuf, sqlx::SqlitePool) {
    let earlier = dir.join("migrations");
    std::fs::create_dir(&earlier).unwrap();
    let all = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for entry in std::fs::read_dir(&all).unwrap() {
        let name = entry.unwrap().file_name();
        if name.to_str().is_some_and(|n| n <= last) {
            std::fs::copy(all.join(&name), earlier.join(&name)).unwrap();
        }
    }
    let db = dir.join("audit.db");
    let old = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(&db)
                .create_if_missing(true)
                .foreign_keys(true),
        )
        .await
        .unwrap();
    sqlx::migrate::Migrator::new(earlier.as_path())
        .await
        .unwrap()
        .run(&old)
        .await
        .unwrap();
    (db, old)
}

/// Issue 14, tamper evidence: a database filled by the zt-janitor before the hash chain
/// (tests/data/audit-before-issue14.db) gets its genesis at the first open for writing: every
/// record it holds is chained, verify finds it intact, and an edit of one of those old rows
/// is caught. A reader (no genesis yet) is told how to start the chain.
#[tokio::test]
async fn a_database_from_before_the_hash_chain_is_chained_at_open_and_verifies() {
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/audit-before-issue14.db");
    assert!(
        fixture.exists(),
        "{} is missing: make it with tests/data/make-audit-fixture.sh",
        fixture.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    std::fs::copy(&fixture, &db).unwrap();

    // Read only, before any writer: nothing to verify against, and it says what to do.
    let reader = AuditStore::open_read_only(&db).await.unwrap();
    let v = reader.verify_chain().await.unwrap();
    reader.close().await;
    let broken = v.broken.expect("no chain yet");
    assert_eq!(broken.table, "audit_chain");
    assert!(
        broken.what.contains("Open it once for writing"),
        "{}",
        broken.what
    );

    let store = AuditStore::open(&db).await.unwrap();
    let (runs, actions, mutations) = store.row_counts().await.unwrap();
    assert_eq!(runs, 6, "the fixture's runs");
    assert!(actions > 0 && mutations > 0);
    let v = store.verify_chain().await.unwrap();
    assert!(v.intact(), "{:?}", v.broken);
    let head = store.chain_head().await.unwrap().expect("a head");
    store.close().await;

    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(SqliteConnectOptions::new().filename(&db))
        .await
        .unwrap();
    let chained: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT scope) FROM audit_chain WHERE record = 'runs' AND event = 'genesis'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(chained, 6, "every run of the fixture is chained");
    let marks: i64 = sqlx::query_scalar("SELECT count(*) FROM marks")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(marks > 0, "the fixture has marks, which are chained too");

    // Opened again: the genesis is not repeated.
    let store = AuditStore::open(&db).await.unwrap();
    assert_eq!(store.chain_head().await.unwrap(), Some(head));
    store.close().await;

    // An old decision edited by hand is caught.
    let action: i64 = sqlx::query_scalar("SELECT min(id) FROM actions WHERE status = 'done'")
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE actions SET reason = 'nothing to see' WHERE id = ?1")
        .bind(action)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let reader = AuditStore::open_read_only(&db).await.unwrap();
    let v = reader.verify_chain().await.unwrap();
    reader.close().await;
    let broken = v.broken.expect("the edit is caught");
    assert_eq!(broken.table, "actions");
    assert!(broken.row.starts_with("ids "), "{broken:?}");
}

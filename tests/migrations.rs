//! A database written by an earlier zt-janitor is carried forward by the migrations, its
//! decisions and their snapshots intact.

use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use zt_janitor::audit::{ActionFilter, AuditStore};

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

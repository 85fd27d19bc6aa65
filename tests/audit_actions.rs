//! `audit actions` by resource kind: `--resource KIND` keeps one kind's rows, `--resource ID`
//! and `--id ID` one object's, and every output format names each row's kind.
//!
//! The second kind (`access_service_token`) is not a `Kind` in this build yet, so its rows are
//! written with plain SQL, as a build that has it would write them.

use std::path::Path;
use std::process::Command;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use zt_janitor::audit::{ActionFilter, AuditStore};
use zt_janitor::resource::Kind;

const LAPTOP: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const PHONE: &str = "aaaaaaaa-0000-4000-8000-000000000002";
const TOKEN: &str = "cccccccc-0000-4000-8000-000000000003";

/// A database holding two registrations' and one service token's actions, in one run.
async fn two_kinds(db: &Path) {
    AuditStore::open(db).await.unwrap().close().await;
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(SqliteConnectOptions::new().filename(db).foreign_keys(true))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO runs (id, started_at, mode, outcome) VALUES (1, 't', 'apply', 'applied')",
    )
    .execute(&pool)
    .await
    .unwrap();
    for (id, kind, resource, name) in [
        (1, "device_registration", LAPTOP, "laptop"),
        (2, "access_service_token", TOKEN, "ci-deploy"),
        (3, "device_registration", PHONE, "phone"),
    ] {
        sqlx::query(
            "INSERT INTO actions (id, run_id, decided_at, rule, action, resource_kind,
                 resource_id, device_name, reason, status)
             VALUES (?1, 1, 't', 'stale', 'delete', ?2, ?3, ?4, 'stale', 'done')",
        )
        .bind(id)
        .bind(kind)
        .bind(resource)
        .bind(name)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("INSERT OR IGNORE INTO snapshot_bodies (id, body) VALUES (1, '{}')")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO snapshots (action_id, body_id) VALUES (?1, 1)")
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
}

fn audit_actions(db: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_zt-janitor"))
        .args(["audit", "actions", "--db"])
        .arg(db)
        .args(args)
        .env_remove("ZT_JANITOR_CONFIG")
        .output()
        .expect("the binary runs");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// (resource_kind, resource_id) of each JSON row, newest first.
fn json_rows(text: &str) -> Vec<(String, String)> {
    let doc: serde_json::Value = serde_json::from_str(text).unwrap();
    doc["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["resource_kind"].as_str().unwrap().to_owned(),
                r["resource_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_store_filters_actions_by_kind() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    two_kinds(&db).await;
    let audit = AuditStore::open_read_only(&db).await.unwrap();
    let rows = audit
        .actions(&ActionFilter {
            resource_kind: Some(Kind::DeviceRegistration),
            limit: 10,
            ..ActionFilter::default()
        })
        .await
        .unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r.resource_id.as_str()).collect();
    assert_eq!(ids, [PHONE, LAPTOP], "the token's row is left out");
    assert!(rows
        .iter()
        .all(|r| r.resource_kind == "device_registration"));
    let all = audit
        .actions(&ActionFilter {
            limit: 10,
            ..ActionFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 3, "no kind filter, every kind");
    audit.close().await;
}

#[tokio::test]
async fn resource_takes_a_kind_or_an_id_and_every_format_names_the_kind() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    two_kinds(&db).await;
    let device = |id: &str| ("device_registration".to_owned(), id.to_owned());
    let token = ("access_service_token".to_owned(), TOKEN.to_owned());

    let by_kind = audit_actions(
        &db,
        &["--resource", "device_registration", "--output", "json"],
    );
    assert_eq!(json_rows(&by_kind), [device(PHONE), device(LAPTOP)]);
    // An id, as before kinds existed, and the explicit --id.
    let by_id = audit_actions(&db, &["--resource", TOKEN, "--output", "json"]);
    assert_eq!(json_rows(&by_id), std::slice::from_ref(&token));
    let by_id = audit_actions(&db, &["--id", TOKEN, "--output", "json"]);
    assert_eq!(json_rows(&by_id), std::slice::from_ref(&token));
    // Kind and id together: the token is not a registration.
    let both = audit_actions(
        &db,
        &[
            "--resource",
            "device_registration",
            "--id",
            TOKEN,
            "--output",
            "json",
        ],
    );
    assert_eq!(json_rows(&both), []);
    let all = audit_actions(&db, &["--output", "json"]);
    assert_eq!(json_rows(&all), [device(PHONE), token, device(LAPTOP)]);

    let csv = audit_actions(&db, &["--output", "csv"]);
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let kind_column = reader
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "resource_kind")
        .unwrap_or_else(|| panic!("no resource_kind column in:\n{csv}"));
    let kinds: Vec<String> = reader
        .records()
        .map(|r| r.unwrap()[kind_column].to_owned())
        .collect();
    assert_eq!(
        kinds,
        [
            "device_registration",
            "access_service_token",
            "device_registration"
        ]
    );

    let text = audit_actions(&db, &[]);
    let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header[3..6], ["ACTION", "RESOURCE", "ID"], "{text}");
    let token_line = text.lines().find(|l| l.contains(TOKEN)).unwrap();
    assert!(token_line.contains("access_service_token"), "{text}");
}

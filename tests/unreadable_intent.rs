//! An intent left without outcome that cannot be read back (its kind, its JSON or an id) is
//! never skipped: the cycle is aborted with a reason that names the row, nothing is mutated,
//! and the row stays pending until someone settles it as the reason says.

mod common;

use chrono::Utc;
use common::{Env, Settings};
use sqlx::sqlite::SqlitePoolOptions;
use zt_janitor::audit::RunOutcome;
use zt_janitor::fake::FakeOptions;

struct Case {
    name: &'static str,
    /// The call's `resource_kind` (the kind of object it names).
    resource_kind: &'static str,
    kind: &'static str,
    /// SQL for the `resource_ids` value; `{id}` is replaced by a real candidate's id.
    resource_ids: &'static str,
    /// What the reason must say did not parse.
    says: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "resource_ids that are not JSON",
        resource_kind: "device_registration",
        kind: "bulk_delete",
        resource_ids: r#"'["{id}"'"#,
        says: "resource_ids is not a JSON array of ids",
    },
    Case {
        name: "resource_ids that are JSON but not a list of ids",
        resource_kind: "device_registration",
        kind: "bulk_delete",
        resource_ids: r#"'{"ids": ["{id}"]}'"#,
        says: "resource_ids is not a JSON array of ids",
    },
    Case {
        name: "one id that is not a registration id",
        resource_kind: "device_registration",
        kind: "bulk_delete",
        resource_ids: r#"'["{id}", "../../zones"]'"#,
        says: r#"resource_ids names "../../zones" is not a registration id"#,
    },
    Case {
        name: "a kind this version does not know",
        resource_kind: "device_registration",
        kind: "purge",
        resource_ids: r#"'["{id}"]'"#,
        says: r#"unknown kind "purge""#,
    },
    Case {
        name: "resource_ids stored as a blob",
        resource_kind: "device_registration",
        kind: "delete",
        resource_ids: r#"CAST('["{id}"]' AS BLOB)"#,
        says: "its resource_ids cannot be read",
    },
    Case {
        name: "a resource kind this version does not know",
        resource_kind: "carrier_pigeon",
        kind: "delete",
        resource_ids: r#"'["{id}"]'"#,
        says: r#"unknown resource kind "carrier_pigeon""#,
    },
];

/// Opens the test's audit database for writing, as someone with the sqlite3 shell would.
async fn write_sql(env: &Env, statements: &[&str]) {
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&format!("sqlite://{}?mode=rw", env.db_path.display()))
        .await
        .unwrap();
    for sql in statements {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    pool.close().await;
}

async fn pending(env: &Env, mutation: i64) -> bool {
    let pool = env.sql().await;
    let outcome: Option<String> = sqlx::query_scalar("SELECT outcome FROM mutations WHERE id = ?1")
        .bind(mutation)
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    outcome.is_none()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_pending_intent_aborts_the_cycle_naming_the_row() {
    unreadable_intent(false).await;
}

/// The same after a crash: the intent's run was left running, and opening the store (which
/// closes interrupted runs) must not trip over the unreadable row either.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_intent_of_a_crashed_run_aborts_the_cycle_naming_the_row() {
    unreadable_intent(true).await;
}

async fn unreadable_intent(crashed: bool) {
    for case in CASES {
        let env = Env::start(
            FakeOptions {
                registrations: 200,
                seed: 1111,
                ..FakeOptions::default()
            },
            Settings {
                mode: "plan",
                ..Settings::default()
            },
        )
        .await;
        // Run 1 plans, so that the database exists and an intent has a run to belong to.
        assert_eq!(
            env.once().await.outcome,
            RunOutcome::Planned,
            "{}",
            case.name
        );
        let expected = env.expected_candidates(Utc::now());
        let victim = expected
            .first()
            .expect("the fixture has candidates")
            .clone();
        let resource_ids = case.resource_ids.replace("{id}", &victim);
        write_sql(
            &env,
            &[
                // Only the unknown kind needs this: the schema's CHECK would refuse it.
                "PRAGMA ignore_check_constraints = ON",
                &format!(
                    "INSERT INTO mutations (id, run_id, resource_kind, kind, method, path,
                         resource_ids, intent_at)
                     VALUES (7, 1, '{}', '{}', 'POST', '/devices/registrations/bulk_delete',
                             {resource_ids}, '2026-11-26T10:00:00Z')",
                    case.resource_kind, case.kind
                ),
                if crashed {
                    "UPDATE runs SET outcome = NULL, finished_at = NULL WHERE id = 1"
                } else {
                    "SELECT 1"
                },
            ],
        )
        .await;
        env.write_config(&Settings::default());
        let registrations = env.fake.len();

        let report = env.once().await;

        assert_eq!(report.outcome, RunOutcome::Aborted, "{}", case.name);
        let reason = report.reason.unwrap_or_default();
        assert!(
            reason.contains("mutation 7 of run 1") && reason.contains(case.says),
            "{}: the reason names the row and what did not parse: {reason}",
            case.name
        );
        assert!(
            env.fake.mutations().is_empty(),
            "{}: nothing is mutated",
            case.name
        );
        assert_eq!(env.fake.len(), registrations, "{}", case.name);
        assert!(
            pending(&env, 7).await,
            "{}: the row is not dropped",
            case.name
        );
        let runs = env.run_outcomes().await;
        if crashed {
            assert_eq!(
                runs.first().map(|r| r.0.as_str()),
                Some("failed"),
                "{}: the crashed run is closed",
                case.name
            );
        }
        assert_eq!(
            runs.last(),
            Some(&("aborted".to_owned(), Some(reason.clone()))),
            "{}: the audit log records the run aborted with that reason",
            case.name
        );

        // Settled by hand as the reason says, the next cycle acts again.
        write_sql(
            &env,
            &["UPDATE mutations SET outcome = 'reconciled_not_done', \
               completed_at = '2026-11-26T11:00:00Z' WHERE id = 7"],
        )
        .await;
        let report = env.once().await;
        assert_eq!(
            report.outcome,
            RunOutcome::Applied,
            "{}: {:?}",
            case.name,
            report.reason
        );
        assert_eq!(env.mutated_ids(), expected, "{}", case.name);
    }
}

//! `zt-janitor undo --run N` end to end, with the real binary against the fake API: a run
//! revokes, the undo reverses exactly what it may (registrations unrevoked, certificates still
//! pending_revocation reactivated), refuses the rest by name, and the fake's state and the
//! audit log agree; an undo interrupted between its intent and its outcome is reconciled by the
//! next run.

mod common;

use std::collections::BTreeSet;
use std::process::{Output, Stdio};
use std::time::Duration;

use chrono::Utc;
use common::{days_ago, Env, Settings, STANDARD_RULES, ZONE_A};
use serde_json::Value;
use sqlx::Row;
use zt_janitor::fake::{
    Endpoint, FakeCertificate, FakeOptions, FakeRegistration, Fault, FaultRule, MutationKind,
};

const REVOKE_RULES: &str = r#"
[[rule]]
name = "idle-60d-revoke"
resource = "device_registration"
action = "revoke"
idle_days = 60
"#;

const CERTIFICATE_RULES: &str = r#"
[[rule]]
name = "certificate-expired"
resource = "client_certificate"
action = "revoke"
expired_days = 7
"#;

fn id(n: usize) -> String {
    format!("d0000000-0000-4000-8000-{n:012}")
}

/// A fake with `idle` registrations idle 100 days, two fresh ones, and one idle one revoked
/// by someone else; the config revokes what is idle 60 days.
async fn revoking_env(idle: usize) -> (Env, Vec<String>, Vec<String>) {
    let env = Env::start(
        FakeOptions::default(),
        Settings {
            rules: REVOKE_RULES,
            ..Settings::default()
        },
    )
    .await;
    let now = Utc::now();
    let idle_ids: Vec<String> = (0..idle)
        .map(|n| {
            env.fake
                .insert(&FakeRegistration::new(id(n), days_ago(now, 100)))
        })
        .collect();
    let mut others = Vec::new();
    for n in 100..102 {
        others.push(
            env.fake
                .insert(&FakeRegistration::new(id(n), days_ago(now, 2))),
        );
    }
    others.push(env.fake.insert(&FakeRegistration {
        revoked_at: Some(days_ago(now, 5)),
        ..FakeRegistration::new(id(200), days_ago(now, 100))
    }));
    (env, idle_ids, others)
}

fn revoked(env: &Env, id: &str) -> bool {
    !env.fake.get(id).unwrap()["revoked_at"].is_null()
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `(undo action's resource_id, status, the resource_id of the action it undoes, its run)`
/// for every action of run `run`.
async fn undo_actions(env: &Env, run: i64) -> Vec<(String, String, String, String, i64)> {
    let pool = env.sql().await;
    let rows = sqlx::query(
        "SELECT u.resource_id, u.action, u.status, o.resource_id, o.run_id
         FROM actions u JOIN actions o ON o.id = u.undoes_action_id
         WHERE u.run_id = ?1 ORDER BY u.resource_id",
    )
    .bind(run)
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows.iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

async fn undo_runs(env: &Env) -> Vec<(i64, i64, Option<String>)> {
    let pool = env.sql().await;
    let rows =
        sqlx::query("SELECT id, undoes_run, outcome FROM runs WHERE mode = 'undo' ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    rows.iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn undo_unrevokes_exactly_what_the_run_revoked_and_the_audit_agrees() {
    let (env, idle, others) = revoking_env(5).await;
    let run = env.once().await.run_id;
    let revoked_by_run: BTreeSet<String> = env.fake.revoked_ids().into_iter().collect();
    assert_eq!(revoked_by_run, idle.iter().cloned().collect());

    let out = env.binary(&["undo", "--run", &run.to_string(), "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("5 reversed, 0 refused, 0 failed"),
        "{}",
        text(&out)
    );

    // The fake: exactly the run's revocations reversed, in one bulk call; nothing else touched.
    let unrevoked: BTreeSet<String> = env.fake.unrevoked_ids().into_iter().collect();
    assert_eq!(unrevoked, revoked_by_run);
    assert!(idle.iter().all(|id| !revoked(&env, id)));
    assert!(
        revoked(&env, &others[2]),
        "revoked by someone else: left so"
    );
    assert_eq!(env.fake.request_counts().unrevoke, 1, "one bulk call");
    let calls: Vec<_> = env
        .fake
        .mutations()
        .into_iter()
        .filter(|m| m.kind == MutationKind::Unrevoke)
        .collect();
    assert_eq!(
        calls[0].ids.iter().cloned().collect::<BTreeSet<_>>(),
        revoked_by_run
    );

    // The audit: a run of its own, each undo action done and linked to the action it undoes,
    // the call's intent and outcome on record.
    let runs = undo_runs(&env).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    let (undo_run, undoes, outcome) = runs[0].clone();
    assert_eq!((undoes, outcome.as_deref()), (run, Some("applied")));
    let actions = undo_actions(&env, undo_run).await;
    assert_eq!(actions.len(), 5);
    for (id, action, status, undone_id, undone_run) in &actions {
        assert_eq!((action.as_str(), status.as_str()), ("unrevoke", "done"));
        assert_eq!((id, *undone_run), (undone_id, run));
    }
    let pool = env.sql().await;
    let m = sqlx::query(
        "SELECT kind, outcome, intent_at <= completed_at, resource_ids FROM mutations
         WHERE run_id = ?1",
    )
    .bind(undo_run)
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].get::<String, _>(0), "unrevoke");
    assert_eq!(m[0].get::<Option<String>, _>(1).as_deref(), Some("ok"));
    assert!(m[0].get::<bool, _>(2), "intent before outcome");
    env.assert_every_mutation_audited().await;

    // Undone once, there is nothing left to undo: refused by name, nothing sent.
    let again = env.binary(&["undo", "--run", &run.to_string(), "--yes"]);
    assert_eq!(again.status.code(), Some(3), "{}", text(&again));
    assert!(
        text(&again).contains("not revoked any more"),
        "{}",
        text(&again)
    );
    assert_eq!(env.fake.request_counts().unrevoke, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn ids_restrict_the_undo_and_an_id_not_in_the_run_is_named() {
    let (env, idle, _) = revoking_env(4).await;
    let run = env.once().await.run_id.to_string();
    let stranger = id(999);
    let out = env.binary(&[
        "undo", "--run", &run, "--id", &idle[0], "--id", &idle[2], "--id", &stranger, "--yes",
        "--output", "json",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let path = format!("{}/schemas/undo.schema.json", env!("CARGO_MANIFEST_DIR"));
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}\n{doc:#}");
    assert_eq!(doc["reversed"], 2, "{doc:#}");
    assert_eq!(doc["not_in_run"], serde_json::json!([stranger]), "{doc:#}");
    assert_eq!(doc["schema_version"], 1);
    let reversed: BTreeSet<&str> = doc["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["result"] == "unrevoked")
        .map(|i| i["resource_id"].as_str().unwrap())
        .collect();
    assert_eq!(reversed, [idle[0].as_str(), idle[2].as_str()].into());
    let unrevoked: BTreeSet<String> = env.fake.unrevoked_ids().into_iter().collect();
    assert_eq!(unrevoked, [idle[0].clone(), idle[2].clone()].into());
    assert!(revoked(&env, &idle[1]) && revoked(&env, &idle[3]));
}

#[tokio::test(flavor = "multi_thread")]
async fn deletions_are_refused_by_name_and_nothing_changes() {
    let env = Env::start(FakeOptions::default(), Settings::default()).await;
    let now = Utc::now();
    let gone: Vec<String> = (0..3)
        .map(|n| {
            env.fake
                .insert(&FakeRegistration::new(id(n), days_ago(now, 200)))
        })
        .collect();
    let run = env.once().await.run_id.to_string();
    assert_eq!(env.fake.deleted_ids().len(), 3);
    let before = env.fake.mutations().len();

    let out = env.binary(&["undo", "--run", &run, "--yes"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let shown = text(&out);
    for id in &gone {
        let line = shown
            .lines()
            .find(|l| l.contains(id.as_str()))
            .unwrap_or_else(|| panic!("{id} not named:\n{shown}"));
        assert!(
            line.contains("deleted: Cloudflare cannot restore it"),
            "{line}"
        );
    }
    assert_eq!(env.fake.mutations().len(), before, "nothing sent");
    assert!(undo_runs(&env).await.is_empty(), "nothing to record");

    // Off a terminal, --yes is required; and an unknown run is an error that says where to look.
    let asked = env.binary(&["undo", "--run", &run]);
    let unknown = env.binary(&["undo", "--run", "999", "--yes"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(text(&unknown).contains("no run 999"), "{}", text(&unknown));
    // With nothing reversible there is nothing to confirm: the refusals are printed.
    assert_eq!(asked.status.code(), Some(3), "{}", text(&asked));
}

#[tokio::test(flavor = "multi_thread")]
async fn off_a_terminal_undo_needs_yes() {
    let (env, idle, _) = revoking_env(2).await;
    let run = env.once().await.run_id.to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zt-janitor"))
        .args(["undo", "--run", &run, "--config"])
        .arg(&env.config_path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("pass --yes"), "{}", text(&out));
    assert!(idle.iter().all(|id| revoked(&env, id)));
    assert_eq!(env.fake.request_counts().unrevoke, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pending_certificate_is_reactivated_and_a_revoked_one_is_refused() {
    let env = Env::start(
        FakeOptions {
            zones: vec![ZONE_A.to_owned()],
            // Revocations stay pending for the whole test unless the test settles one.
            revocation_settles_after: Duration::from_secs(3600),
            ..FakeOptions::default()
        },
        Settings {
            cloudflare_extra: r#"zone_ids = ["a1b2c3d4e5f60718293a4b5c6d7e8f90"]"#,
            rules: CERTIFICATE_RULES,
            ..Settings::default()
        },
    )
    .await;
    let now = Utc::now();
    let expired = |n: usize| {
        FakeCertificate::new(
            format!("c0000000-0000-4000-8000-{n:012}"),
            format!("device-{n}.example.com"),
            days_ago(now, 400),
            days_ago(now, 30),
        )
    };
    let pending = env.fake.insert_certificate(ZONE_A, &expired(1));
    let settled = env.fake.insert_certificate(ZONE_A, &expired(2));
    let run = env.once().await.run_id.to_string();
    assert_eq!(env.fake.revoked_certificate_ids().len(), 2);
    // One revocation has settled since: too late to reactivate.
    let mut object = env.fake.certificate(ZONE_A, &settled).unwrap();
    object["status"] = "revoked".into();
    env.fake.insert_certificate_raw(ZONE_A, object);

    let out = env.binary(&["undo", "--run", &run, "--yes"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let shown = text(&out);
    let refusal = shown.lines().find(|l| l.contains(&settled)).unwrap();
    assert!(refusal.contains("already revoked"), "{shown}");
    let status = |id: &str| env.fake.certificate(ZONE_A, id).unwrap()["status"].clone();
    assert_eq!(status(&pending), "active");
    assert_eq!(status(&settled), "revoked");
    assert_eq!(
        env.fake.reactivated_certificate_ids(),
        std::slice::from_ref(&pending)
    );
    assert_eq!(env.fake.request_counts().reactivate_client_certificate, 1);

    let (undo_run, _, outcome) = undo_runs(&env).await[0].clone();
    assert_eq!(outcome.as_deref(), Some("applied"));
    let actions = undo_actions(&env, undo_run).await;
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert_eq!(
        (
            actions[0].0.as_str(),
            actions[0].1.as_str(),
            actions[0].2.as_str()
        ),
        (pending.as_str(), "reactivate", "done")
    );
    env.assert_every_mutation_audited().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_undo_interrupted_after_its_intent_is_reconciled_by_the_next_run() {
    let (env, idle, _) = revoking_env(3).await;
    let run = env.once().await.run_id.to_string();
    // The unrevoke call hangs at the fake; the process is killed while it waits.
    env.fake.set_faults(vec![FaultRule::always(
        Endpoint::Unrevoke,
        Fault::Delay(Duration::from_secs(5)),
    )]);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_zt-janitor"))
        .args(["undo", "--run", &run, "--yes", "--config"])
        .arg(&env.config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !env
        .fake
        .mutations()
        .iter()
        .any(|m| m.kind == MutationKind::Unrevoke)
    {
        assert!(std::time::Instant::now() < deadline, "no unrevoke call");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    env.fake.clear_faults();
    let pending: i64 = {
        let pool = env.sql().await;
        let n = sqlx::query_scalar(
            "SELECT count(*) FROM mutations WHERE kind = 'unrevoke' AND outcome IS NULL",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        pool.close().await;
        n
    };
    assert_eq!(pending, 1, "the intent was durable before the call");

    // The next run (plan mode: it only reconciles) lists the ids and settles the intent on
    // what Cloudflare shows.
    env.write_config(&Settings {
        mode: "plan",
        rules: REVOKE_RULES,
        ..Settings::default()
    });
    env.once().await;
    let still_revoked = idle.iter().filter(|id| revoked(&env, id)).count();
    let pool = env.sql().await;
    let outcome: String =
        sqlx::query_scalar("SELECT outcome FROM mutations WHERE kind = 'unrevoke'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let statuses: Vec<String> = sqlx::query_scalar(
        "SELECT status || ': ' || status_detail FROM actions WHERE action = 'unrevoke'
         ORDER BY resource_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let undo_outcome: Option<String> =
        sqlx::query_scalar("SELECT outcome FROM runs WHERE mode = 'undo'")
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    // The fake drops a delayed call whose client went away: nothing was unrevoked, and the
    // audit says so.
    assert_eq!(still_revoked, 3);
    assert_eq!(outcome, "reconciled_not_done");
    let failed =
        "failed: reconciled after restart: the undo did not take effect; run the undo again";
    assert_eq!(statuses, [failed, failed, failed]);
    assert_eq!(
        undo_outcome.as_deref(),
        Some("failed"),
        "closed as interrupted"
    );
    env.assert_every_mutation_audited().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_marks_which_rows_can_be_undone() {
    let rules = format!("{REVOKE_RULES}{STANDARD_RULES}");
    let env = Env::start(
        FakeOptions::default(),
        Settings {
            mode: "plan",
            rules: Box::leak(rules.into_boxed_str()),
            ..Settings::default()
        },
    )
    .await;
    let now = Utc::now();
    let idle = env
        .fake
        .insert(&FakeRegistration::new(id(1), days_ago(now, 70)));
    let gone = env.fake.insert(&FakeRegistration {
        revoked_at: Some(days_ago(now, 40)),
        ..FakeRegistration::new(id(2), days_ago(now, 70))
    });
    let out = env.binary(&["plan", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let undoable = |id: &str| {
        doc["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("{id} in {doc:#}"))["undoable"]
            .clone()
    };
    assert_eq!(undoable(&idle), true, "a revocation can be undone");
    assert_eq!(undoable(&gone), false, "a deletion never");
    let table = String::from_utf8(env.binary(&["plan"]).stdout).unwrap();
    let row = |id: &str| table.lines().find(|l| l.contains(id)).unwrap().to_owned();
    assert!(row(&idle).contains("revoke (undoable)"), "{table}");
    assert!(!row(&gone).contains("undoable"), "{table}");
}

//! Issue 17, part 1: apply exactly the plan that was reviewed. `plan --out FILE` saves the
//! targets; `apply FILE` acts on those and no others, re-checks each against a fresh listing,
//! refuses a plan made for other settings, another account or too long ago, asks for
//! confirmation on a terminal, and raises the caps for one apply only when told to.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use chrono::{TimeDelta, Utc};
use common::{days_ago, Env, Settings};
use serde_json::Value;
use zt_janitor::fake::{FakeOptions, FakeRegistration};

fn opts() -> FakeOptions {
    FakeOptions {
        registrations: 300,
        seed: 11,
        ..FakeOptions::default()
    }
}

fn plan_file(env: &Env) -> PathBuf {
    env.config_path.with_file_name("reviewed.plan.json")
}

/// `plan --out` as an operator runs it; returns the saved targets' ids.
fn save_plan(env: &Env) -> BTreeSet<String> {
    let file = plan_file(env);
    let out = env.binary(&["plan", "--out", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("zt-janitor apply"),
        "it says how to apply"
    );
    let doc: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(doc["schema_version"], 1);
    assert_eq!(doc["account_id"], env.fake.account_id());
    doc["parts"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| {
            assert!(
                t["snapshot"].is_object(),
                "each target carries its snapshot"
            );
            t["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn apply(env: &Env, extra: &[&str]) -> std::process::Output {
    let file = plan_file(env);
    let mut args = vec!["apply", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    env.binary(&args)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_acts_on_the_saved_targets_only_and_skips_what_is_no_longer_a_candidate() {
    let now = Utc::now();
    // The config stays in plan mode: `apply FILE` is the explicit act.
    let env = Env::start(
        opts(),
        Settings {
            mode: "plan",
            ..Settings::default()
        },
    )
    .await;
    let targets = save_plan(&env);
    assert_eq!(targets, env.expected_candidates(now));
    assert!(targets.len() > 10);
    let mut it = targets.iter();
    // After the review: one target comes back to life, one is deleted by someone else, and
    // a new idle registration appears that nobody reviewed.
    let back = it.next().unwrap().clone();
    let mut object = env.fake.get(&back).unwrap();
    object["last_seen_at"] = Value::String(now.to_rfc3339());
    object["revoked_at"] = Value::Null;
    env.fake.insert_raw(object);
    let gone = it.next().unwrap().clone();
    assert!(env.fake.remove(&gone));
    let unreviewed = env.fake.insert(&FakeRegistration::new(
        "cccccccc-0000-4000-8000-000000000001",
        days_ago(now, 400),
    ));

    let out = apply(&env, &["--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Skipped 2 targets"), "{stdout}");

    let acted: BTreeSet<String> = targets
        .iter()
        .filter(|id| **id != back && **id != gone)
        .cloned()
        .collect();
    assert_eq!(
        env.mutated_ids(),
        acted,
        "exactly the reviewed targets still candidates"
    );
    assert!(env.fake.contains(&back));
    assert!(
        env.fake.contains(&unreviewed),
        "nothing unreviewed is touched"
    );
    env.assert_every_mutation_audited().await;

    let db = env.sql().await;
    let (path, sha, over): (Option<String>, Option<String>, Option<i64>) =
        sqlx::query_as("SELECT saved_plan_path, saved_plan_sha256, max_actions_override FROM runs")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(path.as_deref(), plan_file(&env).to_str());
    assert_eq!(sha.map(|s| s.len()), Some(64));
    assert_eq!(over, None);
    let detail = |id: &str| {
        let db = db.clone();
        let id = id.to_owned();
        async move {
            sqlx::query_as::<_, (String, Option<String>)>(
                "SELECT status, status_detail FROM actions WHERE resource_id = ?",
            )
            .bind(id)
            .fetch_one(&db)
            .await
            .unwrap()
        }
    };
    let (status, why) = detail(&back).await;
    assert_eq!(status, "not_attempted");
    assert!(why.unwrap().contains("no rule selects it any more"));
    let (status, why) = detail(&gone).await;
    assert_eq!(status, "not_attempted");
    assert!(why.unwrap().contains("no longer listed"));
    let unreviewed_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM actions WHERE resource_id = ?")
            .bind(&unreviewed)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(unreviewed_rows, 0, "not part of this apply");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_for_other_settings_another_account_or_too_old_is_refused() {
    let env = Env::start(opts(), Settings::default()).await;
    save_plan(&env);
    let file = plan_file(&env);
    let original = std::fs::read_to_string(&file).unwrap();

    // Another rule threshold: the reviewed decisions no longer hold.
    std::fs::write(
        &env.config_path,
        std::fs::read_to_string(&env.config_path)
            .unwrap()
            .replace("idle_days = 90", "idle_days = 30"),
    )
    .unwrap();
    let out = apply(&env, &["--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("made with other settings"),
        "{}",
        stderr(&out)
    );
    env.write_config(&Settings::default());

    // Made two days ago.
    let mut doc: Value = serde_json::from_str(&original).unwrap();
    doc["generated_at"] = Value::String((Utc::now() - TimeDelta::days(2)).to_rfc3339());
    std::fs::write(&file, doc.to_string()).unwrap();
    let out = apply(&env, &["--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("more than --max-age-hours 24"),
        "{}",
        stderr(&out)
    );
    // ... which a longer maximum age accepts.
    let out = apply(&env, &["--yes", "--max-age-hours", "72"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!env.mutated_ids().is_empty());
    let acted = env.mutated_ids().len();

    // Made for another account.
    let mut doc: Value = serde_json::from_str(&original).unwrap();
    doc["account_id"] = Value::String("f".repeat(32));
    std::fs::write(&file, doc.to_string()).unwrap();
    let out = apply(&env, &["--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("made for account ffff"),
        "{}",
        stderr(&out)
    );

    // Not a plan at all.
    std::fs::write(&file, "{\"candidates\": []}").unwrap();
    let out = apply(&env, &["--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not a zt-janitor saved plan"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.mutated_ids().len(), acted, "no refused plan acted");
}

#[tokio::test(flavor = "multi_thread")]
async fn max_actions_raises_the_caps_for_one_apply_and_is_recorded() {
    let env = Env::start(
        opts(),
        Settings {
            max_actions: 5,
            max_fraction: 0.05,
            ..Settings::default()
        },
    )
    .await;
    let targets = save_plan(&env);
    let n = targets.len();

    let out = apply(&env, &["--yes"]);
    assert_eq!(out.status.code(), Some(3), "refused by the caps");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("it would pass at ≥ {n})")) && text.contains("--max-actions N"),
        "{text}"
    );
    assert!(env.mutated_ids().is_empty());

    let out = apply(&env, &["--yes", "--max-actions", &n.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(env.mutated_ids(), targets);
    let db = env.sql().await;
    let overrides: Vec<Option<i64>> =
        sqlx::query_scalar("SELECT max_actions_override FROM runs ORDER BY id")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(overrides, vec![None, Some(n as i64)]);
    // The config's own caps are untouched: the next scheduled run is capped again.
    assert_eq!(env.config().safety.max_actions_per_run, 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_asks_on_a_terminal_and_needs_yes_off_one() {
    let env = Env::start(opts(), Settings::default()).await;
    let targets = save_plan(&env);

    // Off a terminal, without --yes: nothing to ask, so nothing is done.
    let out = apply(&env, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("pass --yes"), "{}", stderr(&out));
    assert!(env.mutated_ids().is_empty());

    let at_terminal = |answer: &str| {
        let (mut master, slave) = common::pty();
        let file = plan_file(&env);
        let mut child = Command::new(env!("CARGO_BIN_EXE_zt-janitor"))
            .args(["apply", file.to_str().unwrap(), "--config"])
            .arg(&env.config_path)
            .stdin(slave.try_clone().unwrap())
            .stderr(slave)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut writer = master.try_clone().unwrap();
        let reader = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            // Linux answers EIO once the last writer has closed the terminal.
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
            }
            String::from_utf8_lossy(&seen).into_owned()
        });
        writer.write_all(format!("{answer}\n").as_bytes()).unwrap();
        let status = child.wait().unwrap();
        drop(child);
        (status, reader.join().unwrap())
    };
    let (status, screen) = at_terminal("no");
    assert_eq!(status.code(), Some(1));
    assert!(
        screen.contains(&format!("delete {} registrations", targets.len()))
            && screen.contains("Apply?")
            && screen.contains("Apply cancelled"),
        "{screen}"
    );
    assert!(env.mutated_ids().is_empty());

    let (status, screen) = at_terminal("yes");
    assert!(status.success(), "{screen}");
    assert_eq!(env.mutated_ids(), targets);
}

//! Crash safety (issue 5): the real binary is killed with SIGKILL at seeded random moments
//! while it applies against the fake, round after round. After every round and after a final
//! clean run, the fake's record of mutations must show no registration outside the candidate
//! set touched, none deleted twice, and every request it received audited; the final run must
//! reconcile every intent left without outcome and leave the audit claiming exactly what the
//! fake did.

mod common;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use chrono::Utc;
use common::{days_ago, Env, Settings};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::process::{Child, Command};
use zt_janitor::fake::{Endpoint, FakeOptions, FakeRegistration, Fault, FaultRule};

const SEED: u64 = 0x5eed_c0de;
const ROUNDS: usize = 40;
/// Each bulk delete takes this long at the fake, so a kill often lands while one is in flight.
const CALL_DELAY: Duration = Duration::from_millis(60);

fn spawn_once(env: &Env) -> Child {
    Command::new(env!("CARGO_BIN_EXE_zt-janitor"))
        .arg("once")
        .arg("--config")
        .arg(&env.config_path)
        .env_remove("CLOUDFLARE_API_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts")
}

async fn count(env: &Env, sql: &str) -> i64 {
    let pool = env.sql().await;
    let n = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
    pool.close().await;
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_apply_never_loses_or_repeats_a_mutation() {
    let mut rng = StdRng::seed_from_u64(SEED);
    let env = Env::start(
        FakeOptions {
            registrations: 600,
            seed: 11,
            ..FakeOptions::default()
        },
        Settings {
            per_page: 500,
            chunk: 3,
            ..Settings::default()
        },
    )
    .await;
    env.fake.set_faults(vec![FaultRule::always(
        Endpoint::BulkDelete,
        Fault::Delay(CALL_DELAY),
    )]);
    let now = Utc::now();
    let mut expected: BTreeSet<String> = BTreeSet::new();
    let mut protected = Vec::new();
    let (mut killed, mut exited, mut intents_left) = (0, 0, 0i64);

    for round in 0..ROUNDS {
        // Fresh work every round, and one idle registration an exclusion protects.
        for i in 0..20 {
            env.fake.insert(&FakeRegistration::new(
                format!("c0000000-0000-4000-8000-{round:06}{i:06}"),
                days_ago(now, 200),
            ));
        }
        protected.push(env.fake.insert(&FakeRegistration {
            user_email: Some(format!("member{round}@board.example.com")),
            ..FakeRegistration::new(
                format!("b0000000-0000-4000-8000-{round:012}"),
                days_ago(now, 300),
            )
        }));
        expected.extend(env.expected_candidates(now));

        let before = env.fake.mutations().len();
        let mut child = spawn_once(&env);
        if rng.gen_bool(0.3) {
            // Anywhere: start-up, listing, planning or applying.
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..600))).await;
        } else {
            // After the k-th mutation of this round reached the fake, most often mid-call.
            let k = rng.gen_range(1..=8);
            let wait = tokio::time::Instant::now() + Duration::from_secs(5);
            while env.fake.mutations().len() < before + k
                && child.try_wait().unwrap().is_none()
                && tokio::time::Instant::now() < wait
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..50))).await;
        }
        if child.try_wait().unwrap().is_some() {
            exited += 1;
        } else {
            child.kill().await.expect("SIGKILL delivered");
            killed += 1;
        }
        // Let a call the fake was still delaying finish (or be dropped) before the restart.
        tokio::time::sleep(CALL_DELAY * 2).await;
        intents_left += count(&env, "SELECT count(*) FROM mutations WHERE outcome IS NULL").await;

        let wrong: Vec<_> = env.mutated_ids().difference(&expected).cloned().collect();
        assert!(wrong.is_empty(), "round {round}: wrong deletions {wrong:?}");
        assert!(env.ids_mutated_twice().is_empty(), "round {round}");
        env.assert_every_mutation_audited().await;
    }

    // A clean run reconciles what the kills left and finishes the job.
    env.fake.clear_faults();
    let status = tokio::time::timeout(Duration::from_secs(30), spawn_once(&env).wait())
        .await
        .expect("the final run finishes")
        .unwrap();
    assert!(status.success(), "final run: {status}");

    let mutated = env.mutated_ids();
    let wrong: Vec<_> = mutated.difference(&expected).cloned().collect();
    let twice = env.ids_mutated_twice();
    let missing = env.unaudited_mutations().await;
    let pending = count(&env, "SELECT count(*) FROM mutations WHERE outcome IS NULL").await;
    let open_runs = count(&env, "SELECT count(*) FROM runs WHERE outcome IS NULL").await;
    let dangling = count(
        &env,
        "SELECT count(*) FROM actions WHERE status IN ('planned', 'in_flight')",
    )
    .await;
    let reconciled = count(
        &env,
        "SELECT count(*) FROM mutations WHERE outcome LIKE 'reconciled%'",
    )
    .await;
    let pool = env.sql().await;
    let audited_done: BTreeSet<String> = sqlx::query_scalar(
        "SELECT resource_id FROM actions WHERE status IN ('done', 'already_gone')",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    pool.close().await;
    eprintln!(
        "CRASH seed={SEED:#x} rounds={ROUNDS} killed={killed} exited_before_kill={exited} \
         intents_left_by_kills={intents_left} reconciled={reconciled} mutations={} \
         wrong_deletions={} deleted_twice={} missing_audit_rows={} final_pending={pending}",
        env.fake.mutations().len(),
        wrong.len(),
        twice.len(),
        missing.len(),
    );
    assert!(wrong.is_empty(), "wrong deletions: {wrong:?}");
    assert!(twice.is_empty(), "deleted twice: {twice:?}");
    assert!(missing.is_empty(), "unaudited mutations: {missing:?}");
    assert_eq!(pending, 0, "every intent is reconciled");
    assert_eq!(open_runs, 0, "every interrupted run is closed");
    assert_eq!(dangling, 0, "no action is left planned or in flight");
    assert_eq!(mutated, expected, "every candidate is deleted in the end");
    assert!(
        mutated.is_subset(&audited_done),
        "every deletion the fake made is audited as done"
    );
    assert!(
        audited_done.iter().all(|id| !env.fake.contains(id)),
        "the audit claims done only what is gone"
    );
    for id in &protected {
        assert!(env.fake.contains(id), "protected {id} stays");
    }
    // The test is only worth something if the kills landed mid-apply.
    assert!(killed >= ROUNDS * 2 / 3, "only {killed} rounds were killed");
    assert!(
        intents_left > 0,
        "no kill landed between intent and outcome"
    );
}

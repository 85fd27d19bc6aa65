//! Errors that say what was wrong, where, and what to do (issue 17, part 3): the real binary
//! against a closed port, a wrong account id, a file that is not a database.

mod common;

use common::{free_port, Env, Settings};
use zt_janitor::fake::FakeOptions;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A connection failure names the host, port and path it went to and the operating system's
/// cause; never the token.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_failure_names_the_url_and_the_cause() {
    let env = Env::start(
        FakeOptions::default(),
        Settings {
            max_retries: 0,
            ..Settings::default()
        },
    )
    .await;
    let closed = free_port();
    let config = std::fs::read_to_string(&env.config_path).unwrap().replace(
        &env.fake.base_url(),
        &format!("http://127.0.0.1:{closed}/client/v4"),
    );
    std::fs::write(&env.config_path, config).unwrap();
    let out = env.binary(&["plan"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let at = format!(
        "connection failure talking to Cloudflare at 127.0.0.1:{closed}/client/v4/accounts/{}/devices",
        env.fake.account_id()
    );
    assert!(err.contains(&at), "{at} in {err}");
    assert!(err.contains("Connection refused"), "the cause: {err}");
    assert!(err.contains("[cloudflare] base_url"), "{err}");
    assert!(!err.contains(&env.fake.token()), "never the token");
}

/// An account id Cloudflare cannot route to (404, code 7003) points at `account_id`, in the
/// plan's error and in the aborted run's reason.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_account_id_points_at_account_id() {
    let env = Env::start(FakeOptions::default(), Settings::default()).await;
    let wrong = "ffffffffffffffffffffffffffffffff";
    assert_ne!(env.fake.account_id(), wrong);
    let config = std::fs::read_to_string(&env.config_path)
        .unwrap()
        .replace(env.fake.account_id(), wrong);
    std::fs::write(&env.config_path, config).unwrap();

    let plan = env.binary(&["plan"]);
    let err = stderr(&plan);
    assert_eq!(plan.status.code(), Some(1), "{err}");
    assert!(err.contains("code 7003"), "{err}");
    assert!(err.contains("check that [cloudflare] account_id"), "{err}");

    let once = env.binary(&["once"]);
    assert_eq!(once.status.code(), Some(4), "aborted: {}", stderr(&once));
    let text = String::from_utf8_lossy(&once.stdout);
    assert!(text.contains("[cloudflare] account_id"), "{text}");
    assert_eq!(env.fake.mutations().len(), 0);
}

/// `audit --db` on a file that is not a database says so once, with a hint about --db, not
/// the disk checklist.
#[tokio::test(flavor = "multi_thread")]
async fn audit_on_a_file_that_is_not_a_database_says_so_once() {
    let env = Env::start(FakeOptions::default(), Settings::default()).await;
    let notes = env.dir.path().join("notes.txt");
    std::fs::write(
        &notes,
        "these are not the runs you are looking for\n".repeat(200),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zt-janitor"))
        .args(["audit", "runs", "--db"])
        .arg(&notes)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        [format!(
            "error: {} is not an SQLite database; point --db or [audit] path at the audit \
             database zt-janitor writes, or move this file away so that a new one is created",
            notes.display()
        )]
    );
}

//! The operator's terminal (issue 17, part 5), through the real binary against the fake API:
//! the plan table fits COLUMNS and stays whole when piped, audit queries say what `--limit`
//! left out and take dates and ages, `explain` tells why an object is or is not a candidate,
//! completions and the man page, and the demo runs from any directory.

mod common;

use std::process::{Command, Output};

use chrono::{TimeDelta, Utc};
use common::{Env, Settings, STANDARD_RULES, ZONES, ZONE_A, ZONE_B};
use serde_json::Value;
use zt_janitor::fake::{FakeOptions, FakeRegistration};
use zt_janitor::report::display_width;

const BIN: &str = env!("CARGO_BIN_EXE_zt-janitor");

/// A 49-character service identity, the kind of value that made the table 200 columns wide.
const LONG_EMAIL: &str = "non_identity@zt-janitor-example.cloudflareaccess.com";

const IDLE: &str = "aaaaaaaa-0000-4000-8000-00000000000a";
const BOARD: &str = "bbbbbbbb-0000-4000-8000-00000000000b";
const FRESH: &str = "cccccccc-0000-4000-8000-00000000000c";
const WIDE: &str = "dddddddd-0000-4000-8000-00000000000d";
const SERVICE: &str = "eeeeeeee-0000-4000-8000-00000000000e";
const UNKNOWN: &str = "ffffffff-0000-4000-8000-00000000000f";

/// An account with an idle registration, an idle one of a board member (excluded), a fresh
/// one, an idle one with a wide user and device name, and an idle one enrolled with a service
/// token (excluded, with a long identity); plan mode.
async fn account() -> Env {
    let env = Env::start(
        FakeOptions::default(),
        Settings {
            mode: "plan",
            ..Settings::default()
        },
    )
    .await;
    let now = Utc::now();
    let idle = now - TimeDelta::days(200);
    env.fake.insert(&FakeRegistration::new(IDLE, idle));
    env.fake.insert(&FakeRegistration {
        user_email: Some("chair@board.example.com".into()),
        ..FakeRegistration::new(BOARD, idle)
    });
    env.fake
        .insert(&FakeRegistration::new(FRESH, now - TimeDelta::days(2)));
    env.fake.insert(&FakeRegistration {
        user_email: Some("山田太郎@例え.jp".into()),
        device_name: "山田のノートパソコン（開発用）-build-agent-ephemeral-0042".into(),
        ..FakeRegistration::new(WIDE, idle)
    });
    env.fake.insert(&FakeRegistration {
        user_email: Some(LONG_EMAIL.into()),
        ..FakeRegistration::new(SERVICE, idle)
    });
    env
}

/// The binary with `args` and this environment's config; `COLUMNS` as given (unset: none).
fn run(env: &Env, args: &[&str], columns: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .arg("--config")
        .arg(&env.config_path)
        .env_remove("CLOUDFLARE_API_TOKEN")
        .env_remove("COLUMNS");
    if let Some(columns) = columns {
        cmd.env("COLUMNS", columns);
    }
    cmd.output().expect("the binary runs")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_plan_fits_columns_and_keeps_ids_whole_and_is_whole_when_piped() {
    let env = account().await;
    let piped = stdout(&run(&env, &["plan"], None));
    assert!(piped.contains(LONG_EMAIL), "{piped}");
    assert!(
        piped.contains("山田のノートパソコン（開発用）-build-agent-ephemeral-0042"),
        "piped output keeps every value whole:\n{piped}"
    );
    assert!(!piped.contains('…'), "{piped}");
    for columns in ["80", "120"] {
        let text = stdout(&run(&env, &["plan"], Some(columns)));
        let width: usize = columns.parse().unwrap();
        let table: Vec<&str> = text.lines().take_while(|l| !l.is_empty()).collect();
        let rows = table.iter().filter(|l| !l.starts_with(' ')).count();
        assert_eq!(rows, 5, "header and 4 rows:\n{text}");
        for line in &table {
            assert!(
                display_width(line) <= width,
                "wider than {width}: {line}\n{text}"
            );
        }
        println!("COLUMNS={columns}\n{text}");
        for id in [IDLE, BOARD, WIDE, SERVICE] {
            assert!(text.contains(id), "{id} whole at {width}:\n{text}");
        }
        assert!(text.contains('…'), "{text}");
        assert!(text.contains("Seen: 5 registrations"), "{text}");
        assert!(text.contains("in 1 page\n"), "singular: {text}");
    }
}

/// `script` (util-linux) runs a command on a pseudo-terminal and copies what it drew.
fn script_available() -> bool {
    Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_progress_is_shown_on_a_terminal_and_not_when_piped() {
    let env = Env::start(
        FakeOptions {
            registrations: 300,
            ..FakeOptions::default()
        },
        Settings {
            mode: "plan",
            per_page: 100,
            ..Settings::default()
        },
    )
    .await;
    // Slow pages, so that the spinner draws between them.
    env.fake.set_faults(vec!["list:delay_ms=400"
        .parse::<zt_janitor::fake::FaultRule>()
        .unwrap()]);
    let piped = run(&env, &["plan"], None);
    stdout(&piped);
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(
        !stderr.contains("listing"),
        "nothing drawn when piped: {stderr}"
    );

    if !script_available() {
        eprintln!("no `script` here: the terminal half of this test is skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let plan_out = dir.path().join("plan.out");
    let command = format!(
        "{BIN} plan --config {} > {}",
        env.config_path.display(),
        plan_out.display()
    );
    let tty = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_remove("COLUMNS")
        .output()
        .unwrap();
    let drawn = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{drawn}");
    assert!(
        drawn.contains("listing registrations: 1 page, 100 seen"),
        "progress on the terminal: {drawn}"
    );
    let plan = std::fs::read_to_string(&plan_out).unwrap();
    assert!(plan.contains("Seen: 300 registrations"), "{plan}");
    assert!(
        !plan.contains("listing"),
        "progress stays off stdout: {plan}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_names_the_rule_the_exclusion_and_the_audit() {
    let env = account().await;
    // A plan-mode run records its decisions: explain shows them.
    env.once().await;
    let runs_before = env.run_outcomes().await.len();

    let text = stdout(&run(&env, &["explain", IDLE], None));
    println!("{text}");
    assert!(text.contains("CANDIDATE"), "{text}");
    assert!(
        text.contains("rule \"idle-90d\" selects it (idle 200d >= 90d"),
        "{text}"
    );
    assert!(text.contains("revoked: does not select it"), "{text}");
    assert!(text.contains("none protects it"), "{text}");
    assert!(text.contains("audit log:   1 action:"), "{text}");

    let json: Value = serde_json::from_str(&stdout(&run(
        &env,
        &["explain", IDLE, "--output", "json"],
        None,
    )))
    .unwrap();
    assert_eq!(json["outcome"], "candidate");
    assert_eq!(json["resource"], "device_registration");
    assert_eq!(json["rule"], "idle-90d");
    assert_eq!(json["action"], "delete");
    assert!(json["excluded_by"].is_null());
    let rules: Vec<(&str, bool)> = json["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["rule"].as_str().unwrap(), r["selects"].as_bool().unwrap()))
        .collect();
    assert_eq!(rules, [("idle-90d", true), ("revoked", false)]);
    assert_eq!(json["audit_total"], 1);
    assert_eq!(json["audit"][0]["status"], "planned");
    assert_eq!(json["audit"][0]["resource_id"], IDLE);

    let board: Value = serde_json::from_str(&stdout(&run(
        &env,
        &["explain", BOARD, "--output", "json"],
        None,
    )))
    .unwrap();
    assert_eq!(board["outcome"], "excluded");
    assert_eq!(board["excluded_by"], "board");
    assert_eq!(board["rule"], "idle-90d");
    let text = stdout(&run(&env, &["explain", BOARD], None));
    assert!(text.contains("exclusion \"board\" protects it"), "{text}");

    let fresh: Value = serde_json::from_str(&stdout(&run(
        &env,
        &["explain", &FRESH.to_uppercase(), "--output", "json"],
        None,
    )))
    .unwrap();
    assert_eq!(fresh["outcome"], "kept", "found whatever the id's case");
    assert!(fresh["rule"].is_null());
    assert_eq!(fresh["audit_total"], 0);

    let unknown = run(&env, &["explain", UNKNOWN], None);
    assert!(!unknown.status.success(), "an unknown id fails");
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("no object with id"), "{stderr}");

    // Read-only: nothing mutated, no run recorded.
    assert!(env.fake.mutations().is_empty());
    assert_eq!(env.run_outcomes().await.len(), runs_before);
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_finds_any_kind_in_the_zones_of_the_config() {
    let rules = format!(
        r#"{STANDARD_RULES}
[[rule]]
name = "api-token-any"
resource = "account_api_token"
action = "delete"
unused_days = 1

[[rule]]
name = "certificate-expired"
resource = "client_certificate"
action = "revoke"
expired_days = 7
"#
    );
    let env = Env::start(
        FakeOptions {
            zones: vec![ZONE_A.into(), ZONE_B.into()],
            client_certificates: 4,
            account_tokens: 3,
            ..FakeOptions::default()
        },
        Settings {
            mode: "plan",
            cloudflare_extra: ZONES,
            rules: Box::leak(rules.into_boxed_str()),
            ..Settings::default()
        },
    )
    .await;
    // Certificates of the second zone (the search goes on past the first), one the rule must
    // select (active, expired over 7 days ago: read from the fake, not the code under test) and
    // one it must not.
    let expired = |id: &String| {
        let cert = env.fake.certificate(ZONE_B, id).unwrap();
        let expires: chrono::DateTime<Utc> = cert["expires_on"].as_str().unwrap().parse().unwrap();
        cert["status"] == "active" && Utc::now() - expires >= TimeDelta::days(7)
    };
    let ids = env.fake.certificate_ids(ZONE_B);
    let selected = ids
        .iter()
        .find(|id| expired(id))
        .expect("an expired certificate");
    let kept = ids
        .iter()
        .find(|id| !expired(id))
        .expect("a certificate kept");
    for (id, outcome) in [(selected, "candidate"), (kept, "kept")] {
        let json: Value = serde_json::from_str(&stdout(&run(
            &env,
            &["explain", id, "--output", "json"],
            None,
        )))
        .unwrap();
        assert_eq!(json["resource"], "client_certificate");
        assert_eq!(json["zone"], ZONE_B);
        assert_eq!(json["outcome"], outcome, "{json}");
        assert_eq!(json["rules"][0]["rule"], "certificate-expired");
        assert_eq!(
            json["rules"][0]["selects"],
            outcome == "candidate",
            "{json}"
        );
    }

    // The janitor's own token: whatever a rule says, protected.
    let own = env.fake.own_token_id();
    let json: Value = serde_json::from_str(&stdout(&run(
        &env,
        &["explain", &own, "--output", "json"],
        None,
    )))
    .unwrap();
    assert_eq!(json["resource"], "account_api_token");
    assert_eq!(json["excluded_by"], "own token", "{json}");
    assert_ne!(json["outcome"], "candidate", "{json}");
    assert!(env.fake.mutations().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_queries_say_what_the_limit_left_out_and_take_dates_and_ages() {
    let env = account().await;
    env.once().await;
    let db = env.db_path.to_str().unwrap();
    let audit = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["audit", "actions", "--db", db])
            .args(args)
            .env_remove("COLUMNS")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (stdout(&out), stderr)
    };
    // Four decisions: the idle, the wide and the two excluded.
    let (all, note) = audit(&[]);
    assert_eq!(all.lines().count(), 5, "{all}");
    assert_eq!(note, "", "nothing left out");

    let (two, note) = audit(&["--limit", "2", "--output", "json"]);
    let rows: Value = serde_json::from_str(&two).expect("stdout stays JSON");
    assert_eq!(rows["actions"].as_array().unwrap().len(), 2);
    assert!(
        note.contains("showing the 2 most recent of 4 actions; use --limit 4"),
        "{note}"
    );

    for since in ["2020-01-01", "7d", "12h", "2020-01-01T00:00:00Z"] {
        let (rows, note) = audit(&["--since", since]);
        assert_eq!(rows.lines().count(), 5, "--since {since}: {rows}{note}");
    }
    let (none, hint) = audit(&["--since", "2099-01-01", "--rule", "idle-90d"]);
    assert_eq!(none.lines().count(), 1, "the header only: {none}");
    assert!(
        hint.contains("no actions match the filters given (--rule, --since)"),
        "{hint}"
    );
    let (none, _) = audit(&["--until", "1h"]);
    assert_eq!(none.lines().count(), 1, "{none}");

    let bad = Command::new(BIN)
        .args(["audit", "actions", "--db", db, "--since", "last tuesday"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("7d") && !stderr.contains("premature end of input"),
        "{stderr}"
    );
}

#[test]
fn completions_and_the_man_page_name_every_command() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        let script = stdout(&out);
        for command in ["plan", "explain", "audit", "check-config"] {
            assert!(script.contains(command), "{shell}: {command}");
        }
    }
    let page = stdout(&Command::new(BIN).arg("man").output().unwrap());
    assert!(
        page.starts_with(".ie") || page.contains(".TH zt-janitor"),
        "{page}"
    );
    for command in ["plan", "explain", "audit", "completions"] {
        assert!(
            page.contains(&format!("zt\\-janitor\\-{command}")),
            "{command}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    stdout(&out);
    for page in [
        "zt-janitor.1",
        "zt-janitor-explain.1",
        "zt-janitor-audit-actions.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.contains(".SH OPTIONS"), "{page}");
    }
    let actions = std::fs::read_to_string(dir.path().join("zt-janitor-audit-actions.1")).unwrap();
    assert!(actions.contains("midnight UTC"), "--since has help");
}

#[test]
fn the_demo_runs_from_an_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["demo", "--registrations", "100"])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .current_dir(dir.path())
        .env_remove("COLUMNS")
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(text.contains("== Plan of registrations"), "{text}");
    assert!(text.contains("What the first cycle did"), "{text}");
    assert!(
        !dir.path().join("config").exists(),
        "no config/ was needed or made"
    );
}

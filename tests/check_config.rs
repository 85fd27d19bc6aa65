//! Issue 17, part 3: `check-config` reports every error, warns about what cannot work or is
//! dangerous, and `--online` checks the credentials and each kind's read permission against
//! the fake API without changing anything.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{Env, Settings, STANDARD_RULES, ZONES, ZONE_A, ZONE_B};
use zt_janitor::fake::{Endpoint, FakeOptions, Fault, FaultRule};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The binary's `check-config` on `path`, outside systemd and without a token variable.
fn check_config(path: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zt-janitor"))
        .arg("check-config")
        .args(extra)
        .arg("--config")
        .arg(path)
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("CLOUDFLARE_API_TOKEN")
        .output()
        .expect("the binary runs")
}

fn lines_starting<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

/// The example as shipped names the token by systemd's `%d`: valid, but it cannot work outside
/// systemd, so it is a loud warning (exit 0), and an error with `--strict`.
#[test]
fn the_shipped_example_warns_that_its_token_path_needs_systemd() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/zt-janitor.example.toml");
    let out = check_config(&example, &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let warnings = lines_starting(&stderr, "warning: ");
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("zt-janitor.example.toml:18:18: [cloudflare] api_token_file: \"%d/cloudflare-token\" is in systemd's credentials directory, but CREDENTIALS_DIRECTORY is not set"),
        "{stderr}"
    );
    assert!(
        warnings[0].contains("LoadCredential=cloudflare-token:<file>"),
        "{stderr}"
    );
    let last = stdout.lines().last().unwrap_or("");
    assert!(
        last.ends_with("zt-janitor.example.toml: valid, with 1 warning (on stderr): read them before running it"),
        "{stdout}"
    );
    assert!(!stdout.contains(": OK"), "{stdout}");

    let strict = check_config(&example, &["--strict"]);
    assert_eq!(strict.status.code(), Some(1));
    assert!(
        text(&strict.stderr).contains("zt-janitor.example.toml: 1 warning (--strict)"),
        "{}",
        text(&strict.stderr)
    );
}

/// Apply mode, a 100% cap, `idle_days = 1` and no exclusion: valid, and a warning that names
/// the keys.
#[tokio::test(flavor = "multi_thread")]
async fn a_dangerous_config_is_valid_with_a_warning_naming_its_keys() {
    let env = Env::start(
        FakeOptions::default(),
        Settings {
            mode: "apply",
            max_fraction: 1.0,
            max_actions: 50,
            rules: "\n[[rule]]\nname = \"idle-1d\"\nresource = \"device_registration\"\n\
                    action = \"delete\"\nidle_days = 1\n",
            ..Settings::default()
        },
    )
    .await;
    let out = check_config(&env.config_path, &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let warnings = lines_starting(&stderr, "warning: ");
    assert_eq!(warnings.len(), 1, "{stderr}");
    for part in [
        "config.toml:13:8: [safety] mode: dangerous: mode = \"apply\" with [safety] max_fraction_per_run = 1 (100%)",
        "[[rule]] #1 \"idle-1d\" (line 21) idle_days = 1 and no [[exclude]] protecting registrations",
        "review `zt-janitor plan` first",
    ] {
        assert!(warnings[0].contains(part), "{part:?} in {stderr}");
    }
    assert!(stdout.contains("valid, with 1 warning"), "{stdout}");

    // The same rules with an exclusion are not flagged.
    env.write_config(&Settings {
        mode: "apply",
        max_fraction: 1.0,
        max_actions: 50,
        rules: "\n[[rule]]\nname = \"idle-1d\"\nresource = \"device_registration\"\n\
                action = \"delete\"\nidle_days = 1\n\n[[exclude]]\nuser_email = [\"*@board.example.com\"]\n",
        ..Settings::default()
    });
    let out = check_config(&env.config_path, &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        !text(&out.stderr).contains("warning:"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).ends_with(": OK\n"),
        "{}",
        text(&out.stdout)
    );
}

const THREE_ERRORS: &str = "[cloudflare]\naccount_id = \"0123456789abcdef0123456789abcdef\"\n\
    per_pag = 10\n\n[safety]\nmode = \"aply\"\n\n[[rule]]\nname = \"r\"\n\
    resource = \"device_registration\"\naction = \"delete\"\nidle_days = 0\n";

/// Every error, one per line and located, then the count; exit 1.
#[test]
fn every_error_is_listed_with_its_place_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, THREE_ERRORS).unwrap();
    let out = check_config(&path, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors = lines_starting(&stderr, "error: ");
    assert_eq!(errors.len(), 4, "{stderr}");
    let located: Vec<String> = [
        "3:1: [cloudflare] per_pag: unknown key \"per_pag\"; did you mean \"per_page\"?",
        "6:8: [safety] mode: unknown value \"aply\"",
        "12:13: [[rule]] #1 idle_days: 0 is out of range",
    ]
    .iter()
    .map(|rest| format!("error: {}:{rest}", path.display()))
    .collect();
    for (line, expected) in errors.iter().zip(&located) {
        assert!(
            line.starts_with(expected.as_str()),
            "{line}\nexpected {expected}"
        );
    }
    assert_eq!(
        errors[3],
        format!(
            "error: {}: 3 errors; nothing else was checked",
            path.display()
        )
    );
    assert!(text(&out.stdout).is_empty(), "{}", text(&out.stdout));
}

/// `plan` fails on the config as before, its one error line starting with the first problem
/// and naming the others.
#[test]
fn plan_names_every_error_on_its_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, THREE_ERRORS).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zt-janitor"))
        .args(["plan", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let first = format!("error: {}:3:1: [cloudflare] per_pag: ", path.display());
    assert!(stderr.starts_with(&first), "{stderr}");
    assert!(
        stderr.contains(" | ")
            && stderr.contains(":6:8: [safety] mode")
            && stderr.contains(":12:13: [[rule]] #1 idle_days"),
        "{stderr}"
    );
    assert!(
        stderr.contains("(3 errors; `zt-janitor check-config` lists them one per line)"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// Rules for every kind, so that `--online` reads each.
fn every_kind() -> String {
    format!(
        "{STANDARD_RULES}\n[[rule]]\nname = \"st\"\nresource = \"access_service_token\"\n\
         action = \"delete\"\nexpired_days = 30\n\n[[rule]]\nname = \"at\"\n\
         resource = \"account_api_token\"\naction = \"delete\"\nunused_days = 90\n\n\
         [[rule]]\nname = \"cc\"\nresource = \"client_certificate\"\naction = \"revoke\"\n\
         expired_days = 7\n"
    )
}

async fn online_env() -> Env {
    let rules: &'static str = Box::leak(every_kind().into_boxed_str());
    Env::start(
        FakeOptions {
            registrations: 30,
            zones: vec![ZONE_A.to_owned(), ZONE_B.to_owned()],
            ..FakeOptions::default()
        },
        Settings {
            cloudflare_extra: ZONES,
            rules,
            ..Settings::default()
        },
    )
    .await
}

/// Nothing changed in the account, and no audit database.
fn assert_untouched(env: &Env) {
    assert_eq!(env.fake.mutations(), [], "no mutation");
    assert!(!env.db_path.exists(), "no audit database");
}

#[tokio::test(flavor = "multi_thread")]
async fn online_verifies_the_token_and_reads_one_page_of_each_kind() {
    let env = online_env().await;
    let out = env.binary(&["check-config", "--online"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    for line in [
        "  credentials: OK (read)".to_owned(),
        format!("  token: OK (verified; id {})", env.fake.own_token_id()),
        "  device_registration: OK ('Zero Trust Read'; first page: 30)".to_owned(),
        "  access_service_token: OK ('Access: Service Tokens Read'".to_owned(),
        "  account_api_token: OK ('Account API Tokens Read'".to_owned(),
        format!("  client_certificate in zone {ZONE_A}: OK ('SSL and Certificates Read'"),
        format!("  client_certificate in zone {ZONE_B}: OK ('SSL and Certificates Read'"),
        "  not checked: the write permissions apply mode needs (Zero Trust Write, Access: Service Tokens Write, Account API Tokens Write, SSL and Certificates Write)".to_owned(),
    ] {
        assert!(stdout.lines().any(|l| l.starts_with(&line)), "{line:?} in\n{stdout}");
    }
    assert!(stdout.ends_with(": OK\n"), "{stdout}");
    let counts = env.fake.request_counts();
    assert_eq!(
        (
            counts.list_pages,
            counts.list_service_tokens,
            counts.list_account_tokens,
            counts.list_client_certificates
        ),
        (1, 1, 1, 2),
        "one page of each kind, in each zone: {counts:?}"
    );
    assert_untouched(&env);
}

#[tokio::test(flavor = "multi_thread")]
async fn online_names_the_permission_a_forbidden_kind_needs() {
    let env = online_env().await;
    env.fake.set_faults(vec![FaultRule::always(
        Endpoint::ListAccountTokens,
        Fault::Status {
            code: 403,
            retry_after: None,
        },
    )]);
    let out = env.binary(&["check-config", "--online"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let failed = lines_starting(&stdout, "  account_api_token: FAILED: ");
    assert_eq!(failed.len(), 1, "{stdout}");
    assert!(
        failed[0].contains("HTTP 403")
            && failed[0].contains("'Account API Tokens Read' permission"),
        "{stdout}"
    );
    // The other kinds are still checked, and pass.
    assert!(stdout.contains("  device_registration: OK"), "{stdout}");
    assert!(
        stdout.contains(&format!("  client_certificate in zone {ZONE_B}: OK")),
        "{stdout}"
    );
    assert!(
        stderr.contains("the online check failed (1 failed check); see above"),
        "{stderr}"
    );
    assert!(!stdout.ends_with(": OK\n"), "{stdout}");
    assert_untouched(&env);
}

#[tokio::test(flavor = "multi_thread")]
async fn online_fails_on_a_token_the_api_does_not_accept_and_lists_nothing() {
    let env = online_env().await;
    env.fake.set_token("a-token-the-janitor-does-not-have");
    let out = env.binary(&["check-config", "--online"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let failed = lines_starting(&stdout, "  token: FAILED: ");
    assert_eq!(failed.len(), 1, "{stdout}");
    assert!(failed[0].contains("check the API token"), "{stdout}");
    let counts = env.fake.request_counts();
    assert_eq!(
        counts.list_pages + counts.list_account_tokens,
        0,
        "{counts:?}"
    );
    assert_untouched(&env);
}

#[tokio::test(flavor = "multi_thread")]
async fn online_fails_when_the_credentials_cannot_be_read() {
    let env = online_env().await;
    std::fs::remove_file(env.dir.path().join("token")).unwrap();
    let out = env.binary(&["check-config", "--online"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("  credentials: FAILED: cannot read the API token file"),
        "{stdout}"
    );
    assert_eq!(env.fake.request_counts().total, 0);
}

//! The legacy "API Email + API Key": with `auth = "global_api_key"` every request carries
//! `X-Auth-Email` and `X-Auth-Key` (and no `Authorization`), start-up warns that a scoped token
//! is safer, account API token rules are refused without asking `tokens/verify`, and the key
//! never reaches the logs, even at trace level. A loopback server of its own records each
//! request's headers and answers every listing with an empty page.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, Uri};
use axum::Json;
use chrono::Utc;
use zt_janitor::config::Config;
use zt_janitor::resource::Kind;
use zt_janitor::rules::RuleSet;
use zt_janitor::startup::GLOBAL_KEY_WARNING;

const EMAIL: &str = "janitor-admin@example.com";
const KEY: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a0fedcb";
const ACCOUNT: &str = "0123456789abcdef0123456789abcdef";

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    email: Option<String>,
    key: Option<String>,
    authorization: Option<String>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// Serves on a random loopback port; returns the API root and the record of requests.
async fn recording_api() -> (String, Log) {
    let log = Log::default();
    let record = log.clone();
    let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
        let record = record.clone();
        async move {
            let header = |name: &str| {
                headers
                    .get(name)
                    .map(|v| v.to_str().unwrap_or("<not text>").to_owned())
            };
            record.lock().unwrap().push(Seen {
                path: uri.path().to_owned(),
                email: header("x-auth-email"),
                key: header("x-auth-key"),
                authorization: header("authorization"),
            });
            Json(serde_json::json!({
                "success": true,
                "errors": [],
                "messages": [],
                "result": [],
                "result_info": {"count": 0, "page": 1, "per_page": 50, "total_count": 0},
            }))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/client/v4"), log)
}

/// A config using the global key from files in `dir`, with a device rule and an account API
/// token rule.
fn write_config(dir: &Path, base_url: &str) -> std::path::PathBuf {
    let email = dir.join("email");
    let key = dir.join("key");
    std::fs::write(&email, format!("{EMAIL}\n")).unwrap();
    std::fs::write(&key, format!("{KEY}\n")).unwrap();
    common::set_private(&key);
    let text = format!(
        r#"
[cloudflare]
account_id = "{ACCOUNT}"
auth = "global_api_key"
api_email_file = "{email}"
api_key_file = "{key}"
base_url = "{base_url}"
max_retries = 0

[safety]
mode = "apply"

[audit]
path = "{db}"

[[rule]]
name = "idle"
resource = "device_registration"
action = "delete"
idle_days = 90

[[rule]]
name = "disabled-tokens"
resource = "account_api_token"
action = "delete"
disabled_days = 30
"#,
        email = email.display(),
        key = key.display(),
        db = dir.join("audit.db").display(),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn assert_every_request_used_the_global_key(log: &Log) {
    let seen = log.lock().unwrap().clone();
    assert!(!seen.is_empty(), "no request reached the server");
    for request in &seen {
        assert_eq!(request.email.as_deref(), Some(EMAIL), "{request:?}");
        assert_eq!(request.key.as_deref(), Some(KEY), "{request:?}");
        assert_eq!(request.authorization, None, "{request:?}");
        assert!(
            !request.path.contains("verify"),
            "tokens/verify does not apply to a global key: {request:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_sends_the_email_and_key_and_refuses_account_token_rules() {
    let (base_url, log) = recording_api().await;
    let dir = tempfile::tempdir().unwrap();
    let config = Config::load(&write_config(dir.path(), &base_url)).unwrap();
    let rules = RuleSet::new(&config.rules, &config.exclusions).unwrap();

    let plans = zt_janitor::plan::preview(&config, &rules, Utc::now())
        .await
        .expect("the plan is built");

    assert_every_request_used_the_global_key(&log);
    let blocked = |kind: Kind| {
        plans
            .iter()
            .find(|p| p.kind == kind)
            .unwrap_or_else(|| panic!("no plan for {kind}"))
            .blocked
            .clone()
    };
    assert_eq!(blocked(Kind::DeviceRegistration), None);
    let refused = blocked(Kind::AccountApiToken).expect("account API token rules are refused");
    assert!(refused.contains("global API key"), "{refused}");
    assert!(refused.contains("tokens/verify"), "{refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn once_warns_at_start_up_and_never_logs_the_key_even_at_trace_level() {
    let (base_url, log) = recording_api().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &base_url);

    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_zt-janitor"))
            .args(["once", "--config"])
            .arg(&config)
            .env("RUST_LOG", "trace")
            .env_remove("CLOUDFLARE_API_TOKEN")
            .env_remove("CLOUDFLARE_API_KEY")
            .env_remove("CLOUDFLARE_EMAIL")
            .output()
            .expect("the binary runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);

    assert_every_request_used_the_global_key(&log);
    assert!(
        stderr.contains("WARN") && stderr.contains(GLOBAL_KEY_WARNING),
        "no start-up warning; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("DEBUG") || stderr.contains("TRACE"),
        "the test must see debug output to mean anything; stderr:\n{stderr}"
    );
    for (name, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        assert!(!text.contains(KEY), "the key appears in {name}:\n{text}");
    }
    assert!(
        stdout.contains("tokens/verify"),
        "the run says why account API token rules were refused:\n{stdout}"
    );
}

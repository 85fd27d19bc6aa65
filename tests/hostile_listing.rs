//! Strict where it matters, tolerant elsewhere (issue 16). A schema-valid but odd listing page
//! (negative or garbled counts nobody reads, extra fields) is read; a count that a check rests
//! on, unreadable, makes the listing untrusted; and no error message a listing can produce
//! says the same thing twice.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use zt_janitor::cloudflare::{ApiError, CfErrorDetail, Client, Endpoint};
use zt_janitor::config::Config;
use zt_janitor::fake::{FakeOptions, FakeServer};
use zt_janitor::metrics::Metrics;
use zt_janitor::plan::{preview, PlanError, PreviewError};
use zt_janitor::resource::{self, Kind, PageToken, Scope};
use zt_janitor::rules::RuleSet;
use zt_janitor::secret::{ApiToken, Credentials};

const TOKEN: &str = "hostile-listing-token";

/// A server that answers every request with HTTP 200 and the body `body` holds at the time
/// (a listing page as the test wrote it).
async fn page_server(body: Arc<Mutex<String>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = body.lock().unwrap().clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    format!("http://{addr}/client/v4")
}

fn config(base_url: &str, dir: &Path) -> Config {
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).unwrap();
    common::set_private(&token);
    let text = format!(
        r#"
[cloudflare]
account_id = "{account}"
api_token_file = "{token}"
base_url = "{base_url}"
max_retries = 0
request_timeout_secs = 5

[[rule]]
name = "idle"
resource = "device_registration"
action = "delete"
idle_days = 90
"#,
        account = zt_janitor::fake::DEFAULT_ACCOUNT_ID,
        token = token.display(),
    );
    Config::from_toml_str(&text, Path::new("test.toml")).expect("valid config")
}

fn client(config: &Config) -> Client {
    let token = ApiToken::new(TOKEN.to_owned()).unwrap();
    Client::new(
        &config.cloudflare,
        Credentials::ApiToken(token),
        Metrics::new(),
    )
    .unwrap()
}

/// A listing page: `items` and `result_info`, plus fields the janitor has never heard of.
fn page(items: Vec<Value>, info: Value) -> String {
    json!({
        "success": true,
        "errors": [],
        "messages": [{"code": -7, "message": "ünïcode \u{202e} note"}],
        "result": items,
        "result_info": info,
        "x_unknown": {"nested": [-1, "x", null]},
    })
    .to_string()
}

/// One real registration, as the fake serves it.
async fn a_registration() -> Value {
    let fake = FakeServer::start(FakeOptions {
        registrations: 1,
        ..FakeOptions::default()
    })
    .await
    .unwrap();
    let reg = fake.get(&fake.registration_ids()[0]).unwrap();
    fake.shutdown().await;
    reg
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cursor_listing_with_garbled_counts_nobody_reads_is_planned() {
    let reg = a_registration().await;
    let body = Arc::new(Mutex::new(String::new()));
    let base = page_server(Arc::clone(&body)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(&base, dir.path());
    let rules = RuleSet::new(&config.rules, &config.exclusions).unwrap();
    // The counts Cloudflare's schema allows as integers, made negative, fractional or strings;
    // the cursor listing reads none of them.
    let unused_counts = [
        ("count", json!(-1)),
        ("count", json!("many")),
        ("page", json!(-3)),
        ("per_page", json!(2.5)),
        ("total_pages", json!("1")),
        ("total_pages", json!(-1)),
    ];
    for (field, value) in unused_counts {
        let mut info = json!({"cursor": "", "total_count": 1});
        info[field] = value.clone();
        *body.lock().unwrap() = page(vec![reg.clone()], info);
        let plans = preview(&config, &rules, Utc::now())
            .await
            .unwrap_or_else(|e| panic!("{field} = {value}: {e}"));
        assert_eq!(plans[0].seen.total, 1, "{field} = {value}");
    }
    // What a decision rests on stays strict: the total the listing is checked against, the
    // cursor it follows, the id of each object.
    let strict = [
        (
            "total_count",
            json!({"cursor": "", "total_count": -1}),
            reg.clone(),
            "total_count is -1, not a count",
        ),
        (
            "cursor",
            json!({"cursor": 7}),
            reg.clone(),
            "unreadable response",
        ),
        (
            "id",
            json!({"cursor": ""}),
            json!({"id": 42, "device": reg["device"]}),
            "not a usable",
        ),
    ];
    for (what, info, item, said) in strict {
        *body.lock().unwrap() = page(vec![item], info);
        let e = preview(&config, &rules, Utc::now()).await.unwrap_err();
        let text = format!("{:#}", anyhow::Error::from(e));
        assert!(text.contains(said), "{what}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_numbered_listing_reads_past_unused_counts_and_distrusts_unreadable_used_ones() {
    let body = Arc::new(Mutex::new(String::new()));
    let base = page_server(Arc::clone(&body)).await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&config(&base, dir.path()));
    let token = json!({"id": "3e4c4c6f-1b0e-4b6c-9a4d-1f2e3d4c5b6a", "name": "t"});
    let (scope, first) = (Scope::default(), PageToken::Page(1));
    let list = |info: Value| {
        *body.lock().unwrap() = page(vec![token.clone()], info);
        resource::list_page(Kind::AccessServiceToken, &client, &scope, Some(&first))
    };
    let base_info = json!({"page": 1, "per_page": 50, "total_pages": 1, "total_count": 1});
    let mut info = base_info.clone();
    info["count"] = json!(-1);
    let read = list(info).await.expect("count is read by nothing");
    assert_eq!(
        (read.items.len(), read.next, read.total),
        (1, None, Some(1))
    );
    // Each count a check rests on, unreadable: the listing is not trusted.
    for (field, value) in [
        ("page", json!("1")),
        ("per_page", json!(-50)),
        ("total_pages", json!(1.5)),
        ("total_pages", json!(-1)),
        ("total_count", json!("1")),
    ] {
        let mut info = base_info.clone();
        info[field] = value.clone();
        match list(info).await {
            Err(e @ ApiError::InconsistentListing { .. }) => {
                let text = e.to_string();
                assert!(text.contains(&format!("result_info.{field} is")), "{text}")
            }
            other => panic!("{field} = {value}: {other:?}"),
        }
    }
}

/// Every `ApiError` a listing can end with (the client's own, before any page is read, and
/// those of a page it read).
fn every_listing_error() -> Vec<ApiError> {
    let endpoint = Endpoint::ListRegistrations;
    let detail = |code, message: &str| CfErrorDetail {
        code,
        message: message.to_owned(),
    };
    let simple = [
        ApiError::Api {
            endpoint,
            status: 403,
            errors: vec![detail(10000, "Authentication error")],
            envelope: true,
        },
        ApiError::Api {
            endpoint,
            status: 400,
            errors: vec![detail(1001, "bad"), detail(1002, "worse")],
            envelope: true,
        },
        ApiError::Api {
            endpoint,
            status: 500,
            errors: vec![],
            envelope: true,
        },
        ApiError::Api {
            endpoint,
            status: 404,
            errors: vec![detail(7003, "Could not route")],
            envelope: true,
        },
        ApiError::Api {
            endpoint,
            status: 502,
            errors: vec![],
            envelope: false,
        },
        ApiError::Transport {
            endpoint,
            kind: "timeout",
            at: "api.cloudflare.com/client/v4/accounts/a/devices/registrations".into(),
            cause: "operation timed out".into(),
        },
        ApiError::Decode {
            endpoint,
            status: 200,
            message: "invalid type: integer `7`, expected a string at line 1 column 80".into(),
        },
        ApiError::PartialResult {
            endpoint,
            status: 200,
            errors: vec![detail(1000, "shard unavailable")],
        },
        ApiError::Redirect {
            endpoint,
            status: 307,
            location_host: Some("elsewhere.example".into()),
        },
        ApiError::BudgetExhausted { endpoint, limit: 3 },
        ApiError::DeadlineExceeded { endpoint },
        ApiError::InconsistentListing {
            endpoint,
            message: "page 2: result_info.total_pages is -1, not a count".into(),
        },
        ApiError::Stopped { endpoint },
    ];
    // What gave up on a retry past the deadline: a retryable answer, a transport failure.
    let gave_up = [
        ApiError::Api {
            endpoint,
            status: 429,
            errors: vec![detail(971, "Please wait and consider throttling")],
            envelope: true,
        },
        ApiError::Transport {
            endpoint,
            kind: "connection reset",
            at: "api.cloudflare.com/client/v4/accounts/a/devices/registrations".into(),
            cause: String::new(),
        },
    ];
    simple
        .into_iter()
        .chain(gave_up.map(|last| ApiError::WaitPastDeadline {
            endpoint,
            wait_secs: 30,
            left_secs: 2,
            last: Box::new(last),
        }))
        .collect()
}

/// The clauses of a message: its parts between `:`, `;` and parentheses, each trimmed.
fn repeated_clauses(text: &str) -> Vec<String> {
    let mut seen = BTreeMap::<String, usize>::new();
    for clause in text.split([':', ';', '(', ')']) {
        let clause = clause.trim();
        // Single words (an endpoint label, "HTTP 429") may recur; a sentence may not.
        if clause.split_whitespace().count() >= 3 {
            *seen.entry(clause.to_owned()).or_default() += 1;
        }
    }
    seen.into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(c, _)| c)
        .collect()
}

#[test]
fn no_listing_error_message_repeats_a_clause() {
    for error in every_listing_error() {
        let alone = error.to_string();
        let listing = PlanError::Listing { page: 1, error };
        // As the cycle records it (the run's and the kind's reason) and logs it.
        let reason = format!("{listing}; nothing was done this run");
        let reasons = [
            ("the error", alone),
            ("the cycle's reason", reason.clone()),
            (
                "a kind's reason in a run of several",
                format!("device_registration: {reason}"),
            ),
            // As `plan` prints it: the whole chain of sources, as anyhow's `{:#}` does.
            (
                "the plan command",
                format!("{:#}", anyhow::Error::from(PreviewError::Plan(listing))),
            ),
        ];
        for (how, text) in reasons {
            assert_eq!(
                repeated_clauses(&text),
                Vec::<String>::new(),
                "{how}: {text}"
            );
        }
    }
}

#[test]
fn the_repeat_check_sees_a_repeated_clause() {
    let twice = "listing page 1 failed: list_registrations: timeout talking to Cloudflare: \
                 list_registrations: timeout talking to Cloudflare";
    assert_eq!(repeated_clauses(twice), ["timeout talking to Cloudflare"]);
}

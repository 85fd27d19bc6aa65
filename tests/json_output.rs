//! Output a machine can trust (issue 16): every command that prints JSON, run as the real
//! binary against the fake with all four resource kinds, parsed by a parser that refuses a
//! key given twice in one object (which `serde_json::Value` silently accepts, keeping the last).

mod common;

use std::collections::BTreeSet;
use std::fmt;

use common::{Env, Settings, STANDARD_RULES, ZONES, ZONE_A, ZONE_B};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use zt_janitor::fake::FakeOptions;

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

/// Parses `text` as one or more JSON documents (the plan prints one per kind), refusing a
/// repeated key; returns how many documents there were.
fn strict_documents(text: &str) -> Result<usize, serde_json::Error> {
    let mut n = 0;
    for doc in serde_json::Deserializer::from_str(text).into_iter::<Strict>() {
        doc?;
        n += 1;
    }
    Ok(n)
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

#[tokio::test(flavor = "multi_thread")]
async fn every_json_output_of_every_command_has_each_key_once() {
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
    let db = env.db_path.display().to_string();
    // (command, documents at least)
    let commands: [(&[&str], usize); 6] = [
        (&["plan", "--output", "json"], 4),
        (&["once", "--output", "json"], 1),
        (&["once", "--output", "json"], 1),
        (&["audit", "runs", "--output", "json"], 1),
        (&["audit", "actions", "--output", "json"], 1),
        (&["audit", "actions", "--output", "json", "--db", &db], 1),
    ];
    for (args, at_least) in commands {
        let out = env.binary(args);
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        match strict_documents(&stdout) {
            Ok(n) => assert!(n >= at_least, "{args:?}: {n} documents\n{stdout}"),
            Err(e) => panic!("{args:?}: {e}\n{stdout}"),
        }
    }
}

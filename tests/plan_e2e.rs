//! `zt-janitor plan` end to end: the real binary against the fake API, over several pages,
//! must name exactly the registrations the rules select, and change nothing.

mod common;

use std::collections::BTreeSet;

use chrono::Utc;
use common::{days_ago, Env, Settings};
use zt_janitor::fake::{FakeOptions, FakeRegistration};

#[tokio::test(flavor = "multi_thread")]
async fn plan_names_exactly_the_candidates_across_pages_and_mutates_nothing() {
    let now = Utc::now();
    let env = Env::start(
        FakeOptions {
            registrations: 420,
            seed: 11,
            max_per_page: 1000,
            ..FakeOptions::default()
        },
        Settings {
            per_page: 50,
            mode: "plan",
            ..Settings::default()
        },
    )
    .await;
    // Hand-made edge cases beside the generated ones.
    let board = env.fake.insert(&FakeRegistration {
        user_email: Some("chair@board.example.com".into()),
        ..FakeRegistration::new("aaaaaaaa-0000-4000-8000-000000000001", days_ago(now, 400))
    });
    let boundary = env.fake.insert(&FakeRegistration::new(
        "aaaaaaaa-0000-4000-8000-000000000002",
        days_ago(now, 91),
    ));
    let fresh = env.fake.insert(&FakeRegistration::new(
        "aaaaaaaa-0000-4000-8000-000000000003",
        days_ago(now, 89),
    ));
    let expected = env.expected_candidates(now);
    assert!(
        expected.contains(&boundary) && !expected.contains(&board) && !expected.contains(&fresh)
    );
    assert!(expected.len() > 50, "the data should give many candidates");

    let out = env.binary(&["plan", "--output", "json"]);
    assert!(
        out.status.success(),
        "plan failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let actionable: BTreeSet<String> = plan["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c.get("excluded_by").is_none())
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(actionable, expected);
    assert_eq!(plan["seen"]["total"], 423);
    assert_eq!(plan["pages"], 9, "423 registrations at 50 per page");
    let excluded: Vec<&str> = plan["excluded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert!(excluded.contains(&board.as_str()));
    // The plan and each of its rows name the kind they are about.
    assert_eq!(plan["resource"], "device_registration");
    assert!(plan["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["resource"] == "device_registration"));

    let counts = env.fake.request_counts();
    assert_eq!(counts.list_pages, 9);
    assert!(env.fake.mutations().is_empty(), "plan must never mutate");
    assert!(!env.db_path.exists(), "plan must not write the audit log");

    let text = env.binary(&["plan"]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("RULE") && text.contains(&boundary) && text.contains("Candidates:"));
}

//! Hostile data against the rules (issue 10, items 5, 6, 13, 14 and 17): registrations whose
//! fields cannot be read or cannot be true are untouchable by every rule and counted; idleness
//! is measured from the later of `last_seen_at` and `created_at`; a revoke rule leaves revoked
//! registrations to the rules behind it; exclusions ignore case the way the README promises.
//! Each case runs a real cycle (or the real binary) against the fake API and asserts on what
//! the fake saw deleted or revoked, on the plan and on the metrics.

mod common;

use std::collections::BTreeSet;

use chrono::{DateTime, TimeDelta, Utc};
use common::{days_ago, Env, Settings};
use serde_json::{json, Value};
use zt_janitor::audit::RunOutcome;
use zt_janitor::fake::{FakeOptions, FakeRegistration};
use zt_janitor::metrics::Metrics;

/// The tests of this file run one at a time. A child process that another test spawns (the
/// real binary) holds copies of this process's file descriptors until it execs, the audit
/// database's lock among them, so a test that opens the same database twice in a row could
/// briefly find it still locked.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A hand-made registration last seen at `last_seen`, with `patch`'s fields replacing its own.
fn object(id: &str, last_seen: DateTime<Utc>, patch: Value) -> Value {
    let mut o = FakeRegistration::new(id, last_seen).to_json();
    for (k, v) in patch.as_object().expect("patch is an object") {
        o[k] = v.clone();
    }
    o
}

fn id(n: u32) -> String {
    format!("aaaaaaaa-0000-4000-8000-{n:012}")
}

fn set<I: IntoIterator<Item = String>>(ids: I) -> BTreeSet<String> {
    ids.into_iter().collect()
}

fn anomalies(metrics: &Metrics, kind: &str) -> u64 {
    metrics
        .anomalies
        .with_label_values(&["device_registration", kind])
        .get()
}

/// `revoked_at` of `""`, `false`, `0`, `{}` or garbage: the registration is counted as revoked
/// (the field is present) but no rule may act on it, not even an idle rule, and it is counted
/// as an anomaly in the plan, its text and the metric.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_revoked_at_makes_a_registration_untouchable_by_every_rule() {
    let _serial = SERIAL.lock().await;
    let now = Utc::now();
    let env = Env::start(FakeOptions::default(), Settings::default()).await;
    let unreadable = [
        json!(""),
        json!(false),
        json!(0),
        json!({}),
        json!("garbage"),
        json!("2026-13-45T99:00:00Z"),
    ];
    let mut untouchable = Vec::new();
    for (n, revoked_at) in unreadable.iter().enumerate() {
        untouchable.push(env.fake.insert_raw(object(
            &id(n as u32 + 1),
            days_ago(now, 1),
            json!({ "revoked_at": revoked_at }),
        )));
    }
    // Idle by far too: the idle rule must not take it either.
    untouchable.push(env.fake.insert_raw(object(
        &id(20),
        days_ago(now, 300),
        json!({ "revoked_at": "" }),
    )));
    let control = env.fake.insert(&FakeRegistration {
        revoked_at: Some(days_ago(now, 20)),
        ..FakeRegistration::new(id(30), days_ago(now, 21))
    });

    let out = env.binary(&["plan", "--output", "json"]);
    assert!(
        out.status.success(),
        "plan failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let planned: Vec<&str> = plan["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(planned, [control.as_str()], "{plan:#}");
    assert_eq!(plan["anomalies"]["unparsable_revoked_at"], 7, "{plan:#}");
    assert_eq!(
        plan["seen"]["revoked"], 8,
        "present and non-null counts as revoked"
    );
    let text = String::from_utf8(env.binary(&["plan"]).stdout).unwrap();
    assert!(text.contains("unparsable_revoked_at: 7"), "{text}");

    let metrics = Metrics::new();
    let report = env.once_with(&metrics).await;
    assert_eq!(report.outcome, RunOutcome::Applied, "{:?}", report.reason);
    assert_eq!(env.fake.deleted_ids(), [control]);
    for id in &untouchable {
        assert!(env.fake.contains(id), "{id} must stay");
    }
    assert_eq!(anomalies(&metrics, "unparsable_revoked_at"), 7);
    assert!(metrics
        .render()
        .contains(r#"zt_janitor_anomalies_total{kind="unparsable_revoked_at",resource="device_registration"} 7"#));
    env.assert_every_mutation_audited().await;
}

/// Idleness counts from the later of `last_seen_at` and `created_at`; a `last_seen_at` before
/// `created_at`, a `created_at` or `revoked_at` in the future and an unparsable `created_at`
/// are anomalies that no rule acts on. The reason names the timestamp measured from.
#[tokio::test(flavor = "multi_thread")]
async fn idleness_is_measured_from_the_later_timestamp_and_impossible_times_are_untouchable() {
    let _serial = SERIAL.lock().await;
    let now = Utc::now();
    let env = Env::start(FakeOptions::default(), Settings::default()).await;
    let stamp = |t: DateTime<Utc>| json!(t.to_rfc3339());
    let created_yesterday = json!({ "created_at": stamp(days_ago(now, 1)) });
    let before_created = [
        env.fake
            .insert_raw(object(&id(1), now, created_yesterday.clone())),
        env.fake
            .insert_raw(object(&id(2), now, created_yesterday.clone())),
        env.fake.insert_raw(object(
            &id(3),
            days_ago(now, 200),
            json!({ "created_at": stamp(days_ago(now, 2)) }),
        )),
    ];
    // `object` cannot build a year-1 or 1970 `last_seen_at` through FakeRegistration's
    // `created_at = last_seen_at - 1 day`, so set them here.
    for (id, last_seen) in [
        (&before_created[0], "0001-01-01T00:00:00Z"),
        (&before_created[1], "1970-01-01T00:00:00Z"),
    ] {
        let mut o = env.fake.get(id).unwrap();
        o["last_seen_at"] = json!(last_seen);
        env.fake.insert_raw(o);
    }
    let future_created = env.fake.insert_raw(object(
        &id(4),
        days_ago(now, 200),
        json!({ "created_at": stamp(now + TimeDelta::days(30)) }),
    ));
    let future_revoked = env.fake.insert_raw(object(
        &id(5),
        days_ago(now, 5),
        json!({ "revoked_at": stamp(now + TimeDelta::days(2)) }),
    ));
    let unparsable_created = env.fake.insert_raw(object(
        &id(6),
        days_ago(now, 200),
        json!({ "created_at": "the day before" }),
    ));
    let idle = env.fake.insert_raw(object(
        &id(10),
        days_ago(now, 200),
        json!({ "created_at": stamp(days_ago(now, 300)) }),
    ));
    let never_seen = env.fake.insert_raw(object(
        &id(11),
        now,
        json!({ "last_seen_at": null, "created_at": stamp(days_ago(now, 100)) }),
    ));
    // Seen two minutes before it was created (clock skew within tolerance): idle from creation.
    let created_100d = days_ago(now, 100);
    let skewed = env.fake.insert_raw(object(
        &id(12),
        created_100d - TimeDelta::minutes(2),
        json!({ "created_at": stamp(created_100d) }),
    ));

    let metrics = Metrics::new();
    let report = env.once_with(&metrics).await;
    assert_eq!(report.outcome, RunOutcome::Applied, "{:?}", report.reason);
    assert_eq!(
        set(env.fake.deleted_ids()),
        set([idle.clone(), never_seen.clone(), skewed.clone()])
    );
    for id in before_created
        .iter()
        .chain([&future_created, &future_revoked, &unparsable_created])
    {
        assert!(env.fake.contains(id), "{id} must stay");
    }
    assert_eq!(anomalies(&metrics, "last_seen_before_created"), 3);
    assert_eq!(anomalies(&metrics, "future_created_at"), 1);
    assert_eq!(anomalies(&metrics, "future_revoked_at"), 1);
    assert_eq!(anomalies(&metrics, "unparsable_created_at"), 1);

    // The reasons as the audit log recorded them: what the executor acted on.
    let db = env.sql().await;
    let reasons: std::collections::HashMap<String, String> =
        sqlx::query_as("SELECT resource_id, reason FROM actions WHERE run_id = ?")
            .bind(report.run_id)
            .fetch_all(&db)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let reason = |id: &str| reasons.get(id).cloned().unwrap_or_default();
    assert!(
        reason(&idle).contains("(last_seen_at "),
        "{}",
        reason(&idle)
    );
    assert!(
        reason(&never_seen).contains("never seen; created_at"),
        "{}",
        reason(&never_seen)
    );
    assert!(
        reason(&skewed).contains("(created_at ")
            && reason(&skewed).contains("later than last_seen_at"),
        "{}",
        reason(&skewed)
    );
    env.assert_every_mutation_audited().await;
}

const REVOKE_THEN_DELETE: &str = r#"
[[rule]]
name = "idle-90d-revoke"
resource = "device_registration"
action = "revoke"
idle_days = 90

[[rule]]
name = "revoked"
resource = "device_registration"
action = "delete"
revoked = true
"#;

/// A revoke rule never selects a registration that is already revoked: it falls through to
/// the `revoked = true` delete rule behind it, which frees its virtual IPs, and nothing is
/// revoked twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoke_rule_leaves_revoked_registrations_to_the_delete_rule_behind_it() {
    let _serial = SERIAL.lock().await;
    let now = Utc::now();
    let env = Env::start(
        FakeOptions::default(),
        Settings {
            rules: REVOKE_THEN_DELETE,
            ..Settings::default()
        },
    )
    .await;
    let idle_active = env
        .fake
        .insert(&FakeRegistration::new(id(1), days_ago(now, 200)));
    let idle_revoked = env.fake.insert(&FakeRegistration {
        revoked_at: Some(days_ago(now, 30)),
        ..FakeRegistration::new(id(2), days_ago(now, 200))
    });
    env.fake
        .insert(&FakeRegistration::new(id(3), days_ago(now, 2)));

    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Applied, "{:?}", report.reason);
    assert_eq!(env.fake.revoked_ids(), std::slice::from_ref(&idle_active));
    assert_eq!(env.fake.deleted_ids(), std::slice::from_ref(&idle_revoked));

    // Now revoked, the first one goes to the delete rule; it is not revoked again.
    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Applied, "{:?}", report.reason);
    assert_eq!(env.fake.revoked_ids(), std::slice::from_ref(&idle_active));
    assert_eq!(env.fake.deleted_ids(), [idle_revoked, idle_active]);
    env.assert_every_mutation_audited().await;
}

/// `check-config` warns (on stdout, still exit 0) about a rule every registration of which an
/// earlier rule takes, and says nothing about an order that works.
#[tokio::test(flavor = "multi_thread")]
async fn check_config_warns_about_a_rule_shadowed_by_an_earlier_one() {
    let _serial = SERIAL.lock().await;
    let env = Env::start(
        FakeOptions::default(),
        Settings {
            rules: r#"
[[rule]]
name = "idle-30d"
resource = "device_registration"
action = "delete"
idle_days = 30

[[rule]]
name = "idle-90d"
resource = "device_registration"
action = "delete"
idle_days = 90
"#,
            ..Settings::default()
        },
    )
    .await;
    let out = env.binary(&["check-config"]);
    // Warnings go to stderr, beside the schedule's; stdout is the effective configuration.
    let stdout = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stdout}");
    let warnings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stdout}");
    assert!(
        warnings[0].contains("\"idle-90d\"") && warnings[0].contains("\"idle-30d\""),
        "{stdout}"
    );

    env.write_config(&Settings {
        rules: REVOKE_THEN_DELETE,
        ..Settings::default()
    });
    let out = env.binary(&["check-config"]);
    let stdout = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stdout}");
    assert!(!stdout.contains("warning:"), "{stdout}");
}

const FOLDING_RULES: &str = r#"
[[rule]]
name = "idle-90d"
resource = "device_registration"
action = "delete"
idle_days = 90

[[exclude]]
name = "by-id"
registration_id = ["aaaaaaaa-0000-4000-8000-00000000000A"]

[[exclude]]
name = "doctors"
user_email = ["ärzte@example.com"]

[[exclude]]
name = "service-tokens"
no_user = true
"#;

/// Exclusions compare ids as UUIDs and emails with Unicode case folding, and
/// `audit actions --user` finds a user whatever the case of the letters.
#[tokio::test(flavor = "multi_thread")]
async fn exclusions_and_the_user_filter_ignore_case_as_promised() {
    let _serial = SERIAL.lock().await;
    let now = Utc::now();
    let env = Env::start(
        FakeOptions::default(),
        Settings {
            rules: FOLDING_RULES,
            ..Settings::default()
        },
    )
    .await;
    let idle = |id: &str, email: &str| FakeRegistration {
        user_email: Some(email.to_owned()),
        ..FakeRegistration::new(id, days_ago(now, 200))
    };
    let protected = [
        env.fake.insert(&idle(
            "aaaaaaaa-0000-4000-8000-00000000000a",
            "user@example.com",
        )),
        env.fake.insert(&idle(&id(1), "ÄRZTE@example.com")),
        env.fake
            .insert(&idle(&id(2), "Non_Identity@team.cloudflareaccess.com")),
    ];
    let elise = env.fake.insert(&idle(&id(3), "ÉLISE@example.com"));
    let other = env.fake.insert(&idle(&id(4), "user@example.com"));

    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Applied, "{:?}", report.reason);
    assert_eq!(set(env.fake.deleted_ids()), set([elise.clone(), other]));
    for id in &protected {
        assert!(env.fake.contains(id), "{id} must stay");
    }

    let audit = |user: &str| -> Vec<String> {
        let out = env.binary(&["audit", "actions", "--user", user, "--output", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        doc["actions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["resource_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(audit("élise@example.com"), [elise]);
    assert_eq!(audit("ärzte@EXAMPLE.com"), [protected[1].clone()]);
}

/// A registration with `deleted_at` set is never selected, and is counted.
#[tokio::test(flavor = "multi_thread")]
async fn a_registration_with_deleted_at_is_never_selected() {
    let _serial = SERIAL.lock().await;
    let now = Utc::now();
    let env = Env::start(FakeOptions::default(), Settings::default()).await;
    let deleted = env.fake.insert_raw(object(
        &id(1),
        days_ago(now, 200),
        json!({ "deleted_at": days_ago(now, 3).to_rfc3339() }),
    ));
    let idle = env
        .fake
        .insert(&FakeRegistration::new(id(2), days_ago(now, 200)));

    let metrics = Metrics::new();
    let report = env.once_with(&metrics).await;
    assert_eq!(report.outcome, RunOutcome::Applied, "{:?}", report.reason);
    assert_eq!(env.fake.deleted_ids(), [idle]);
    assert!(env.fake.contains(&deleted));
    assert_eq!(anomalies(&metrics, "deleted_at_set"), 1);
}

/// The same UUID listed in two cases is a duplicate id: the listing is not trusted, nothing is
/// done, and no inflated `seen_total` is recorded.
#[tokio::test(flavor = "multi_thread")]
async fn the_same_uuid_in_two_cases_aborts_the_listing_as_a_duplicate() {
    let _serial = SERIAL.lock().await;
    let now = Utc::now();
    let env = Env::start(FakeOptions::default(), Settings::default()).await;
    let lower = "aaaaaaaa-0000-4000-8000-0000000000ab";
    env.fake
        .insert(&FakeRegistration::new(lower, days_ago(now, 200)));
    env.fake.insert(&FakeRegistration::new(
        lower.to_uppercase(),
        days_ago(now, 200),
    ));
    assert_eq!(env.fake.len(), 2, "the fake lists both spellings");

    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Aborted, "{:?}", report.reason);
    assert!(
        report
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("more than once")),
        "{:?}",
        report.reason
    );
    assert!(env.fake.mutations().is_empty());
    assert_eq!(report.summary.seen_total, None);
}

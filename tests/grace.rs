//! Issue 13: the grace period. A rule's candidates are marked first and acted on only once
//! they have stayed candidates, in every complete listing, for `grace_days`; a mark is cleared
//! when its object stops being a candidate, and the clock starts again from zero. The clock
//! is injected: each cycle runs at a chosen `now`.

mod common;

use chrono::{DateTime, TimeDelta, Utc};
use common::{days_ago, Env, Settings};
use zt_janitor::audit::{ActionFilter, AuditStore, RunOutcome};
use zt_janitor::cycle::CycleReport;
use zt_janitor::fake::{Endpoint, FakeOptions, FakeRegistration, Fault, FaultRule};
use zt_janitor::metrics::Metrics;

const GRACE_RULES: &str = r#"
[[rule]]
name = "idle-90d"
resource = "device_registration"
action = "delete"
idle_days = 90
grace_days = 7
"#;

const LAPTOP: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const TABLET: &str = "aaaaaaaa-0000-4000-8000-000000000002";

async fn env() -> Env {
    Env::start(
        FakeOptions {
            registrations: 0,
            ..FakeOptions::default()
        },
        Settings {
            rules: GRACE_RULES,
            ..Settings::default()
        },
    )
    .await
}

async fn cycle_at(env: &Env, now: DateTime<Utc>) -> CycleReport {
    let janitor = env.open().await.with_metrics(Metrics::new());
    let report = janitor
        .cycle()
        .run(now)
        .await
        .expect("the audit store works");
    janitor.close().await;
    report
}

fn grace(report: &CycleReport) -> (u64, u64, u64, u64) {
    let g = report.resources[0]
        .grace
        .expect("a kind with a grace period");
    (g.marked, g.cleared, g.due, g.waiting)
}

async fn marks(env: &Env) -> Vec<(String, String)> {
    sqlx::query_as("SELECT resource_id, first_marked_at FROM marks ORDER BY resource_id")
        .fetch_all(&env.sql().await)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_candidate_is_marked_then_acted_on_exactly_once_after_its_grace_days() {
    let env = env().await;
    let t0 = Utc::now();
    env.fake
        .insert(&FakeRegistration::new(LAPTOP, days_ago(t0, 100)));

    let first = cycle_at(&env, t0).await;
    assert_eq!(first.outcome, RunOutcome::Applied, "{:?}", first.reason);
    assert_eq!(grace(&first), (1, 0, 0, 1), "marked, not due");
    assert!(env.fake.mutations().is_empty(), "nothing on first sight");
    let marked = marks(&env).await;
    assert_eq!(marked.len(), 1);

    let waiting = cycle_at(&env, t0 + TimeDelta::days(6)).await;
    assert_eq!(grace(&waiting), (0, 0, 0, 1), "still in its grace period");
    assert!(env.fake.mutations().is_empty());
    assert_eq!(marks(&env).await, marked, "the mark keeps its first date");
    // A run that did not act keeps its decisions as spans: read as `audit actions --run` does.
    let store = AuditStore::open_read_only(&env.config().audit.path)
        .await
        .unwrap();
    let rows = store
        .actions(&ActionFilter {
            run_id: Some(waiting.run_id),
            resource_id: Some(LAPTOP.to_owned()),
            limit: 10,
            ..ActionFilter::default()
        })
        .await
        .unwrap();
    store.close().await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let detail = rows[0].status_detail.clone().unwrap_or_default();
    let acts_on = (t0 + TimeDelta::days(7)).format("%Y-%m-%d").to_string();
    assert!(
        detail.contains("in the grace period") && detail.contains(&format!("acts on {acts_on}")),
        "{detail}"
    );

    let due = cycle_at(&env, t0 + TimeDelta::days(7) + TimeDelta::minutes(1)).await;
    assert_eq!(grace(&due), (0, 0, 1, 0));
    assert_eq!(due.summary.actions_done, 1);
    assert_eq!(env.fake.deleted_ids(), vec![LAPTOP.to_owned()]);

    let after = cycle_at(&env, t0 + TimeDelta::days(8)).await;
    assert_eq!(grace(&after), (0, 1, 0, 0), "gone, so its mark is cleared");
    assert_eq!(env.fake.mutations().len(), 1, "acted on exactly once");
    assert!(marks(&env).await.is_empty());
    env.assert_every_mutation_audited().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn seen_again_clears_the_mark_and_the_clock_starts_from_zero() {
    let env = env().await;
    let t0 = Utc::now();
    env.fake
        .insert(&FakeRegistration::new(LAPTOP, days_ago(t0, 100)));
    assert_eq!(grace(&cycle_at(&env, t0).await), (1, 0, 0, 1));

    // Back from a sabbatical: seen again two days later.
    env.fake
        .insert(&FakeRegistration::new(LAPTOP, t0 + TimeDelta::days(2)));
    let back = cycle_at(&env, t0 + TimeDelta::days(3)).await;
    assert_eq!(grace(&back), (0, 1, 0, 0), "no longer a candidate: cleared");
    assert!(marks(&env).await.is_empty());
    let db = env.sql().await;
    let reason: String =
        sqlx::query_scalar("SELECT reason FROM mark_events WHERE event = 'cleared'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert!(reason.contains("no longer a candidate"), "{reason}");

    // Idle again: marked anew on day 9, so day 8 of the old clock means nothing.
    let t9 = t0 + TimeDelta::days(9);
    env.fake
        .insert(&FakeRegistration::new(LAPTOP, days_ago(t9, 100)));
    assert_eq!(grace(&cycle_at(&env, t9).await), (1, 0, 0, 1));
    let early = cycle_at(&env, t9 + TimeDelta::days(6)).await;
    assert_eq!(
        grace(&early),
        (0, 0, 0, 1),
        "7 days from the new mark, not the old one"
    );
    assert!(
        env.fake.mutations().is_empty(),
        "never acted while it came back"
    );
    let due = cycle_at(&env, t9 + TimeDelta::days(7) + TimeDelta::minutes(1)).await;
    assert_eq!(grace(&due), (0, 0, 1, 0));
    assert_eq!(env.fake.deleted_ids(), vec![LAPTOP.to_owned()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incomplete_listing_leaves_every_mark_as_it_was() {
    let env = env().await;
    let t0 = Utc::now();
    env.fake
        .insert(&FakeRegistration::new(LAPTOP, days_ago(t0, 100)));
    env.fake
        .insert(&FakeRegistration::new(TABLET, days_ago(t0, 100)));
    cycle_at(&env, t0).await;
    let before = marks(&env).await;
    assert_eq!(before.len(), 2);

    // The tablet is seen again, but the listing fails: nothing may be concluded from it.
    env.fake
        .insert(&FakeRegistration::new(TABLET, t0 + TimeDelta::days(1)));
    env.fake.set_faults(vec![FaultRule::nth(
        Endpoint::ListRegistrations,
        1,
        Fault::Status {
            code: 400,
            retry_after: None,
        },
    )]);
    let aborted = cycle_at(&env, t0 + TimeDelta::days(8)).await;
    assert_eq!(aborted.outcome, RunOutcome::Aborted, "{:?}", aborted.reason);
    assert!(aborted.resources[0].grace.is_none());
    assert_eq!(marks(&env).await, before, "neither marked nor cleared");
    assert!(env.fake.mutations().is_empty());

    env.fake.clear_faults();
    let next = cycle_at(&env, t0 + TimeDelta::days(8)).await;
    assert_eq!(
        grace(&next),
        (0, 1, 1, 0),
        "the tablet cleared, the laptop due"
    );
    assert_eq!(env.fake.deleted_ids(), vec![LAPTOP.to_owned()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_caps_count_the_actions_due_not_the_marks() {
    let env = Env::start(
        FakeOptions {
            registrations: 0,
            ..FakeOptions::default()
        },
        Settings {
            rules: GRACE_RULES,
            max_actions: 1,
            ..Settings::default()
        },
    )
    .await;
    let t0 = Utc::now();
    env.fake
        .insert(&FakeRegistration::new(LAPTOP, days_ago(t0, 100)));
    let first = cycle_at(&env, t0).await;
    env.fake
        .insert(&FakeRegistration::new(TABLET, days_ago(t0, 100)));
    assert_eq!(first.outcome, RunOutcome::Applied, "{:?}", first.reason);
    // Day 3: two marks, none due: the cap of 1 is not in the way.
    let second = cycle_at(&env, t0 + TimeDelta::days(3)).await;
    assert_eq!(second.outcome, RunOutcome::Applied, "{:?}", second.reason);
    assert_eq!(grace(&second), (1, 0, 0, 2));
    // Day 8: only the laptop is due: one action, within the cap.
    let third = cycle_at(&env, t0 + TimeDelta::days(8)).await;
    assert_eq!(third.outcome, RunOutcome::Applied, "{:?}", third.reason);
    assert_eq!(grace(&third), (0, 0, 1, 1));
    assert_eq!(env.fake.deleted_ids(), vec![LAPTOP.to_owned()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_grace_period_nothing_is_marked_and_old_marks_are_cleared() {
    let env = env().await;
    let t0 = Utc::now();
    env.fake
        .insert(&FakeRegistration::new(LAPTOP, days_ago(t0, 100)));
    cycle_at(&env, t0).await;
    assert_eq!(marks(&env).await.len(), 1);
    // The grace period is switched off: the mark is no longer kept up to date, so it goes
    // (it must not later pass for "a candidate all along"), and the laptop is acted on now.
    env.write_config(&Settings::default());
    let report = cycle_at(&env, t0 + TimeDelta::days(1)).await;
    assert!(report.resources[0].grace.is_none());
    assert!(marks(&env).await.is_empty());
    assert_eq!(env.fake.deleted_ids(), vec![LAPTOP.to_owned()]);
}

/// `audit marks` lists each mark with the day it acts on, as text and as JSON that matches its
/// schema.
#[tokio::test(flavor = "multi_thread")]
async fn audit_marks_lists_what_waits_and_until_when() {
    let env = env().await;
    let t0 = Utc::now();
    env.fake
        .insert(&FakeRegistration::new(LAPTOP, days_ago(t0, 100)));
    cycle_at(&env, t0).await;

    let out = env.binary(&["audit", "marks"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let acts_on = (t0 + TimeDelta::days(7)).format("%Y-%m-%d").to_string();
    assert!(
        text.contains(LAPTOP) && text.contains("idle-90d") && text.contains(&acts_on),
        "{text}"
    );

    let out = env.binary(&["audit", "marks", "--output", "json"]);
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let path = format!(
        "{}/schemas/audit-marks.schema.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}\n{doc}");
    assert_eq!(doc["marks"][0]["resource_id"], LAPTOP);
    assert!(doc["marks"][0]["acts_on"]
        .as_str()
        .unwrap()
        .starts_with(&acts_on));

    let none = env.binary(&["audit", "marks", "--rule", "no-such-rule"]);
    assert!(none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no marks"));
}

/// `plan` reads the marks (read only) and says, per row, when each candidate will be acted
/// on, and what the next cycle would mark, act on and clear.
#[tokio::test(flavor = "multi_thread")]
async fn plan_shows_when_each_candidate_acts() {
    let env = env().await;
    let t0 = Utc::now();
    env.fake
        .insert(&FakeRegistration::new(LAPTOP, days_ago(t0, 100)));
    // Marked eight days ago: due now.
    cycle_at(&env, t0 - TimeDelta::days(8)).await;
    env.fake
        .insert(&FakeRegistration::new(TABLET, days_ago(t0, 100)));

    let out = env.binary(&["plan"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let marked = (t0 - TimeDelta::days(8)).format("%Y-%m-%d").to_string();
    let earliest = (t0 + TimeDelta::days(7)).format("%Y-%m-%d").to_string();
    assert!(
        text.contains(&format!("acts now (marked {marked})")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "not yet marked: acts on {earliest} at the earliest"
        )),
        "{text}"
    );
    assert!(
        text.contains("newly mark 1, act on 1 now, keep 1 waiting, and clear 0 marks"),
        "{text}"
    );
    let json = env.binary(&["plan", "--output", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let graces: Vec<&str> = doc["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["grace"].as_str().unwrap())
        .collect();
    assert_eq!(graces.len(), 2, "{doc}");
    // Nothing was written: plan never changes the audit log.
    assert_eq!(marks(&env).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_marks_are_counted_in_the_metrics() {
    let env = env().await;
    let t0 = Utc::now();
    env.fake
        .insert(&FakeRegistration::new(LAPTOP, days_ago(t0, 100)));
    env.fake
        .insert(&FakeRegistration::new(TABLET, days_ago(t0, 100)));
    let metrics = Metrics::new();
    let janitor = env.open().await.with_metrics(metrics.clone());
    janitor.cycle().run(t0).await.unwrap();
    let scrape = metrics.render();
    let value = |series: &str| common::metric(&scrape, series);
    assert_eq!(
        value(r#"zt_janitor_marked_resources{resource="device_registration",rule="idle-90d"}"#),
        Some(2.0)
    );
    assert_eq!(
        value(r#"zt_janitor_marks_set_total{resource="device_registration"}"#),
        Some(2.0)
    );
    env.fake
        .insert(&FakeRegistration::new(TABLET, t0 + TimeDelta::days(1)));
    janitor.cycle().run(t0 + TimeDelta::days(2)).await.unwrap();
    let scrape = metrics.render();
    let value = |series: &str| common::metric(&scrape, series);
    assert_eq!(
        value(r#"zt_janitor_marked_resources{resource="device_registration",rule="idle-90d"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(r#"zt_janitor_marks_cleared_total{resource="device_registration"}"#),
        Some(1.0)
    );
    janitor.close().await;
}

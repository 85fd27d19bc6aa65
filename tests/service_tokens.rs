//! Access service tokens beside device registrations, end to end: `plan` and then cycles in
//! apply mode against the fake API, with rules of both kinds. Each kind is listed, planned,
//! capped and applied on its own; a token still in use is refused by the API and recorded
//! `refused_by_api`; one kind's listing failure leaves the other kind's part intact.

mod common;

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use common::{days_ago, metric, Env, Settings, STANDARD_RULES};
use serde_json::Value;
use sqlx::Row;
use zt_janitor::audit::RunOutcome;
use zt_janitor::fake::{Endpoint, FakeOptions, FakeServiceToken, Fault, FaultRule};
use zt_janitor::metrics::Metrics;

const TOKEN_RULES: &str = r#"
[[rule]]
name = "token-expired-30d"
resource = "access_service_token"
action = "delete"
expired_days = 30

[[rule]]
name = "token-unused-180d"
resource = "access_service_token"
action = "delete"
unused_days = 180

[[exclude]]
name = "break-glass"
service_token_name = ["break-glass-*"]
"#;

/// The hand-made tokens, by what the rules must make of them.
struct Tokens {
    expired: String,
    unused: String,
    never_used: String,
    in_use: String,
    break_glass: String,
    fresh: String,
    new_never_used: String,
}

impl Tokens {
    fn deletable(&self) -> BTreeSet<String> {
        [&self.expired, &self.unused, &self.never_used]
            .into_iter()
            .cloned()
            .collect()
    }

    fn selected(&self) -> BTreeSet<String> {
        let mut ids = self.deletable();
        ids.insert(self.in_use.clone());
        ids
    }
}

fn token(id: &str, name: &str, now: DateTime<Utc>, created: i64) -> FakeServiceToken {
    FakeServiceToken::new(id, name, days_ago(now, created))
}

/// Seven tokens, each far from every rule's boundary, so the oracle never sits on one.
fn seed_tokens(env: &Env) -> Tokens {
    let now = env.fake.now();
    let insert = |t: FakeServiceToken| env.fake.insert_service_token(&t);
    let expired = insert(FakeServiceToken {
        expires_at: days_ago(now, 60),
        last_seen_at: Some(days_ago(now, 2)),
        ..token(
            "5e000000-0000-4000-8000-000000000001",
            "ci-deploy-old",
            now,
            500,
        )
    });
    let unused = insert(FakeServiceToken {
        last_seen_at: Some(days_ago(now, 250)),
        ..token(
            "5e000000-0000-4000-8000-000000000002",
            "backup-nightly",
            now,
            300,
        )
    });
    let never_used = insert(token(
        "5e000000-0000-4000-8000-000000000003",
        "legacy-sync",
        now,
        300,
    ));
    let in_use = insert(FakeServiceToken {
        expires_at: days_ago(now, 100),
        last_seen_at: Some(days_ago(now, 1)),
        in_use: true,
        ..token(
            "5e000000-0000-4000-8000-000000000004",
            "warp-enroll",
            now,
            600,
        )
    });
    let break_glass = insert(FakeServiceToken {
        expires_at: days_ago(now, 90),
        ..token(
            "5e000000-0000-4000-8000-000000000005",
            "break-glass-1",
            now,
            600,
        )
    });
    let fresh = insert(FakeServiceToken {
        last_seen_at: Some(now - Duration::hours(3)),
        ..token(
            "5e000000-0000-4000-8000-000000000006",
            "monitoring",
            now,
            100,
        )
    });
    let new_never_used = insert(token(
        "5e000000-0000-4000-8000-000000000007",
        "ci-deploy-new",
        now,
        10,
    ));
    Tokens {
        expired,
        unused,
        never_used,
        in_use,
        break_glass,
        fresh,
        new_never_used,
    }
}

async fn both_kinds() -> (Env, Tokens) {
    both_kinds_with(Settings {
        per_page: 100,
        ..Settings::default()
    })
    .await
}

/// 300 registrations and the seven tokens, under the standard rules and `TOKEN_RULES`.
async fn both_kinds_with(settings: Settings<'static>) -> (Env, Tokens) {
    let rules = format!("{STANDARD_RULES}{TOKEN_RULES}");
    let env = Env::start(
        FakeOptions {
            registrations: 300,
            ..FakeOptions::default()
        },
        Settings {
            rules: Box::leak(rules.into_boxed_str()),
            ..settings
        },
    )
    .await;
    let tokens = seed_tokens(&env);
    (env, tokens)
}

/// `(resource_kind, resource_id, status)` of every action of `run`.
async fn actions_of(env: &Env, run: i64) -> BTreeSet<(String, String, String)> {
    let pool = env.sql().await;
    let rows = sqlx::query(
        "SELECT resource_kind, resource_id, status FROM actions WHERE run_id = ?1 ORDER BY id",
    )
    .bind(run)
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows.iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn of_kind(
    rows: &BTreeSet<(String, String, String)>,
    kind: &str,
    status: &str,
) -> BTreeSet<String> {
    rows.iter()
        .filter(|(k, _, s)| k == kind && s == status)
        .map(|(_, id, _)| id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_then_apply_acts_on_both_kinds_and_records_a_refused_token() {
    let (env, tokens) = both_kinds().await;
    let registrations = env.expected_candidates(Utc::now());
    assert!(
        registrations.len() > 20,
        "the fixture has registrations to delete"
    );

    // plan: one JSON document per kind, nothing mutated.
    let out = env.binary(&["plan", "--output", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(docs.len(), 2, "one plan per kind");
    assert_eq!(docs[0]["resource"], "device_registration");
    assert_eq!(docs[1]["resource"], "access_service_token");
    let planned = |doc: &Value, excluded: bool| -> BTreeSet<String> {
        doc[if excluded { "excluded" } else { "candidates" }]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(planned(&docs[0], false), registrations);
    assert_eq!(planned(&docs[1], false), tokens.selected(), "{:#}", docs[1]);
    assert_eq!(
        planned(&docs[1], true),
        BTreeSet::from([tokens.break_glass.clone()])
    );
    let token_doc = &docs[1]["candidates"][0];
    assert_eq!(token_doc["resource"], "access_service_token");
    assert!(token_doc.get("name").is_some() && token_doc.get("device_name").is_none());
    assert_eq!(docs[1]["seen"]["total"], 7);
    assert_eq!(
        docs[1]["candidates_by_rule"],
        serde_json::json!({"token-expired-30d": 2, "token-unused-180d": 2})
    );
    assert!(env.fake.mutations().is_empty(), "plan mutates nothing");

    // Apply: the real cycle, with metrics.
    let metrics = Metrics::new();
    let report = env.once_with(&metrics).await;
    assert_eq!(
        report.outcome,
        RunOutcome::Applied,
        "a refusal does not fail the run: {:?}",
        report.reason
    );
    let kinds: Vec<(String, RunOutcome)> = report
        .resources
        .iter()
        .map(|p| (p.kind.to_string(), p.outcome))
        .collect();
    assert_eq!(
        kinds,
        [
            ("device_registration".to_owned(), RunOutcome::Applied),
            ("access_service_token".to_owned(), RunOutcome::Applied)
        ]
    );
    let reason = report.reason.as_deref().unwrap_or("");
    assert!(
        reason.contains("access_service_token: 1 service token refused by Cloudflare"),
        "{reason}"
    );

    // What the fake saw deleted: exactly the candidates of each kind.
    let deleted: BTreeSet<String> = env.fake.deleted_service_token_ids().into_iter().collect();
    assert_eq!(deleted, tokens.deletable());
    for kept in [
        &tokens.in_use,
        &tokens.break_glass,
        &tokens.fresh,
        &tokens.new_never_used,
    ] {
        assert!(
            env.fake.service_token(kept).is_some(),
            "{kept} must still exist"
        );
    }
    let gone: BTreeSet<String> = env.fake.deleted_ids().into_iter().collect();
    assert_eq!(gone, registrations);

    // The audit rows, per kind.
    let rows = actions_of(&env, report.run_id).await;
    let token = "access_service_token";
    assert_eq!(of_kind(&rows, token, "done"), tokens.deletable());
    assert_eq!(
        of_kind(&rows, token, "refused_by_api"),
        BTreeSet::from([tokens.in_use.clone()])
    );
    assert_eq!(
        of_kind(&rows, token, "excluded"),
        BTreeSet::from([tokens.break_glass.clone()])
    );
    assert_eq!(of_kind(&rows, "device_registration", "done"), registrations);
    let pool = env.sql().await;
    let refusal = sqlx::query(
        "SELECT m.resource_kind, m.outcome, m.http_status, m.cf_error_code, a.status_detail
         FROM actions a JOIN mutations m ON m.id = a.mutation_id
         WHERE a.resource_id = ?1",
    )
    .bind(&tokens.in_use)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(refusal.get::<String, _>(0), token);
    assert_eq!(refusal.get::<String, _>(1), "rejected");
    assert_eq!(refusal.get::<i64, _>(2), 400);
    assert_eq!(refusal.get::<i64, _>(3), 12139);
    let detail: String = refusal.get(4);
    assert!(
        detail.contains("device enrollment policy"),
        "the detail says what to change: {detail}"
    );
    let per_kind = sqlx::query(
        "SELECT kind, outcome, seen, candidates, excluded, done, failed, refused
         FROM run_kinds WHERE run_id = ?1 ORDER BY kind",
    )
    .bind(report.run_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    // kind, outcome, seen, candidates, excluded, done, failed, refused
    type KindRow = (String, String, i64, i64, i64, i64, i64, i64);
    let per_kind: Vec<KindRow> = per_kind
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
                r.get(7),
            )
        })
        .collect();
    assert_eq!(
        &per_kind[0],
        &(token.to_owned(), "applied".to_owned(), 7, 4, 1, 3, 0, 1)
    );
    assert_eq!(per_kind[1].0, "device_registration");
    assert_eq!(per_kind[1].5, registrations.len() as i64);
    pool.close().await;

    // The metrics, per kind.
    let scrape = metrics.render();
    let seen = |kind: &str| {
        metric(
            &scrape,
            &format!("zt_janitor_resources_seen{{resource=\"{kind}\",status=\"active\"}}"),
        )
    };
    assert_eq!(seen(token), Some(7.0));
    assert!(seen("device_registration").unwrap() > 200.0);
    assert_eq!(
        metric(
            &scrape,
            "zt_janitor_candidates{resource=\"access_service_token\",rule=\"token-expired-30d\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &scrape,
            "zt_janitor_excluded{resource=\"access_service_token\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &scrape,
            "zt_janitor_actions_total{action=\"delete\",outcome=\"refused_by_api\",resource=\"access_service_token\",rule=\"token-expired-30d\"}"
        ),
        Some(1.0)
    );
    let done_tokens: f64 = ["token-expired-30d", "token-unused-180d"]
        .iter()
        .filter_map(|rule| {
            metric(
                &scrape,
                &format!("zt_janitor_actions_total{{action=\"delete\",outcome=\"done\",resource=\"access_service_token\",rule=\"{rule}\"}}"),
            )
        })
        .sum();
    assert_eq!(done_tokens, 3.0);

    // The next run, through the binary: only the refused token is tried again, and refused
    // again without failing the run; `once --output json` names each kind's part.
    let out = env.binary(&["once", "--output", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["outcome"], "applied");
    assert_eq!(run["actions_refused"], 1);
    let parts = run["resources"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[1]["resource"], token);
    assert_eq!(parts[1]["actions_refused"], 1);
    assert_eq!(parts[1]["actions_done"], 0);
    let token_deletes = env
        .fake
        .mutations()
        .iter()
        .filter(|m| m.path.contains("/access/service_tokens/"))
        .count();
    assert_eq!(
        token_deletes, 5,
        "4 calls in the first run, 1 in the second"
    );

    // `audit actions --resource KIND` keeps one kind.
    let out = env.binary(&["audit", "actions", "--resource", token, "--output", "json"]);
    assert!(out.status.success());
    let audited: Value = serde_json::from_slice(&out.stdout).unwrap();
    let audited = audited["actions"].as_array().unwrap();
    assert_eq!(
        audited.len(),
        5 + 2,
        "five decisions in run 1; the refused and the excluded token again in run 2"
    );
    assert!(audited.iter().all(|a| a["resource_kind"] == token));
    env.assert_every_mutation_audited().await;
}

#[tokio::test]
async fn a_listing_failure_of_one_kind_leaves_the_other_kinds_run_intact() {
    let (env, tokens) = both_kinds().await;
    let registrations = env.expected_candidates(Utc::now());
    env.fake.set_faults(vec![FaultRule::always(
        Endpoint::ListServiceTokens,
        Fault::Status {
            code: 500,
            retry_after: None,
        },
    )]);
    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Aborted, "{:?}", report.reason);
    let reason = report.reason.as_deref().unwrap_or("");
    assert!(
        reason.starts_with("access_service_token: listing page 1 failed"),
        "{reason}"
    );
    assert!(env.fake.deleted_service_token_ids().is_empty());
    let gone: BTreeSet<String> = env.fake.deleted_ids().into_iter().collect();
    assert_eq!(gone, registrations, "the registrations' part ran in full");
    let pool = env.sql().await;
    let per_kind: Vec<(String, String, Option<i64>, i64)> = sqlx::query(
        "SELECT kind, outcome, seen, done FROM run_kinds WHERE run_id = ?1 ORDER BY kind",
    )
    .bind(report.run_id)
    .fetch_all(&pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect();
    assert_eq!(
        per_kind,
        [
            (
                "access_service_token".to_owned(),
                "aborted".to_owned(),
                None,
                0
            ),
            (
                "device_registration".to_owned(),
                "applied".to_owned(),
                Some(300),
                registrations.len() as i64
            ),
        ]
    );
    let token_actions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM actions WHERE resource_kind = 'access_service_token'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        token_actions, 0,
        "nothing was decided on the unread listing"
    );
    pool.close().await;

    // The other way round: registrations unreadable, tokens still cleaned.
    env.fake.set_faults(vec![FaultRule::always(
        Endpoint::ListRegistrations,
        Fault::Status {
            code: 500,
            retry_after: None,
        },
    )]);
    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Aborted);
    let parts: Vec<(String, RunOutcome)> = report
        .resources
        .iter()
        .map(|p| (p.kind.to_string(), p.outcome))
        .collect();
    assert_eq!(
        parts,
        [
            ("device_registration".to_owned(), RunOutcome::Aborted),
            ("access_service_token".to_owned(), RunOutcome::Applied)
        ]
    );
    let deleted: BTreeSet<String> = env.fake.deleted_service_token_ids().into_iter().collect();
    assert_eq!(deleted, tokens.deletable());
    env.assert_every_mutation_audited().await;
}

#[tokio::test]
async fn the_fraction_cap_of_each_kind_is_over_its_own_population() {
    // 4 of 7 tokens are selected: 57%, over a 50% cap, while the registrations' share is under it.
    let (env, _) = both_kinds_with(Settings {
        max_fraction: 0.5,
        ..Settings::default()
    })
    .await;
    let registrations = env.expected_candidates(Utc::now());
    assert!(
        (registrations.len() as f64) < 0.5 * 300.0,
        "the fixture's registrations are within the cap"
    );
    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Refused, "{:?}", report.reason);
    let reason = report.reason.as_deref().unwrap_or("");
    assert!(
        reason.contains("access_service_token: refused by the blast-radius caps: 4 actions exceed max_fraction_per_run = 0.5 of 7"),
        "{reason}"
    );
    assert!(env.fake.deleted_service_token_ids().is_empty());
    let gone: BTreeSet<String> = env.fake.deleted_ids().into_iter().collect();
    assert_eq!(gone, registrations);
}

#[tokio::test]
async fn a_token_listing_that_cannot_be_trusted_touches_no_token() {
    // Past one page of 50, so that a short or repeating page can be seen.
    for (fault, says) in [
        (Fault::ShortPageWithCursor, "fewer than its size"),
        (Fault::DuplicateIds, "more than once"),
    ] {
        let rules = format!("{STANDARD_RULES}{TOKEN_RULES}");
        let env = Env::start(
            FakeOptions {
                registrations: 100,
                service_tokens: 80,
                ..FakeOptions::default()
            },
            Settings {
                rules: Box::leak(rules.into_boxed_str()),
                ..Settings::default()
            },
        )
        .await;
        env.fake.set_faults(vec![FaultRule::nth(
            Endpoint::ListServiceTokens,
            1,
            fault.clone(),
        )]);
        let report = env.once().await;
        let part = &report.resources[1];
        assert_eq!(part.kind.to_string(), "access_service_token");
        assert_eq!(part.outcome, RunOutcome::Aborted, "{fault:?}");
        let reason = part.reason.as_deref().unwrap_or("");
        assert!(reason.contains(says), "{fault:?}: {reason}");
        assert!(env.fake.deleted_service_token_ids().is_empty(), "{fault:?}");
        assert_eq!(report.resources[0].outcome, RunOutcome::Applied);
    }
}

#[tokio::test]
async fn a_missing_permission_is_named_for_service_tokens() {
    for (target, outcome, permission) in [
        (
            Endpoint::ListServiceTokens,
            RunOutcome::Aborted,
            "'Access: Service Tokens Read' permission",
        ),
        (
            Endpoint::DeleteServiceToken,
            RunOutcome::Failed,
            "'Access: Service Tokens Write' permission",
        ),
    ] {
        let (env, _) = both_kinds().await;
        env.fake.set_faults(vec![FaultRule::always(
            target,
            Fault::Status {
                code: 403,
                retry_after: None,
            },
        )]);
        let report = env.once().await;
        let part = &report.resources[1];
        assert_eq!(part.outcome, outcome, "{target:?}");
        let reason = part.reason.as_deref().unwrap_or("");
        assert!(reason.contains(permission), "{target:?}: {reason}");
        assert!(env.fake.deleted_service_token_ids().is_empty());
        env.assert_every_mutation_audited().await;
    }
}

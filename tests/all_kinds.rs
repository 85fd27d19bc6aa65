//! All four resource kinds in one account, end to end: `plan`, then cycles in apply mode
//! against the fake API. Checks what the fake deleted or revoked, the audit per kind (zones,
//! certificate snapshots without the PEM body, the status after a revocation), the metrics per
//! kind, and the two promises of account tokens and certificates: the janitor's own token is
//! never touched, and a certificate whose revocation is under way or done is never acted on.

mod common;

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use common::{days_ago, metric, Env, Settings, STANDARD_RULES, ZONES, ZONE_A, ZONE_B};
use serde_json::Value;
use sqlx::Row;
use zt_janitor::audit::RunOutcome;
use zt_janitor::fake::{
    AccountTokenStatus, CertificateStatus, FakeAccountToken, FakeCertificate, FakeOptions,
    FakeServiceToken, FaultRule, MutationKind, TokenOwner,
};
use zt_janitor::metrics::Metrics;

const OTHER_RULES: &str = r#"
[[rule]]
name = "service-token-expired"
resource = "access_service_token"
action = "delete"
expired_days = 30

[[rule]]
name = "api-token-expired"
resource = "account_api_token"
action = "delete"
expired_days = 7

[[rule]]
name = "api-token-disabled"
resource = "account_api_token"
action = "delete"
disabled_days = 30

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

[[exclude]]
name = "terraform"
account_api_token_name = ["terraform-*"]

[[exclude]]
name = "door"
common_name = ["door-*"]
"#;

/// A rule that selects every account token: used 0 days ago or more.
const EVERY_TOKEN: &str = r#"
[[rule]]
name = "every-api-token"
resource = "account_api_token"
action = "delete"
unused_days = 1
"#;

/// The hand-made objects, by what the rules must make of them.
struct Seeded {
    service_token_expired: String,
    account_tokens_deleted: BTreeSet<String>,
    terraform: String,
    fresh_token: String,
    /// By zone: the certificates to revoke.
    revoke_a: BTreeSet<String>,
    revoke_b: BTreeSet<String>,
    /// Expired, but already on their way out or gone, or excluded, or valid.
    already_revoked: String,
    pending: String,
    door: String,
    valid: String,
}

fn hex_id(n: u32) -> String {
    format!("{n:032x}")
}

fn cert_id(n: u32) -> String {
    format!("c0000000-0000-4000-8000-{n:012}")
}

fn account_token(n: u32, name: &str, now: DateTime<Utc>, issued: i64) -> FakeAccountToken {
    FakeAccountToken::new(hex_id(n), name, days_ago(now, issued))
}

/// Every object far from every rule's boundary, so the oracle never sits on one.
fn seed(env: &Env) -> Seeded {
    let now = env.fake.now();
    let service_token_expired = env.fake.insert_service_token(&FakeServiceToken {
        expires_at: days_ago(now, 60),
        ..FakeServiceToken::new(
            "5e000000-0000-4000-8000-000000000001",
            "ci-old",
            days_ago(now, 500),
        )
    });
    env.fake.insert_service_token(&FakeServiceToken {
        last_seen_at: Some(days_ago(now, 1)),
        ..FakeServiceToken::new(
            "5e000000-0000-4000-8000-000000000002",
            "ci-new",
            days_ago(now, 20),
        )
    });

    let token = |t: FakeAccountToken| env.fake.insert_account_token(&t);
    let expired = token(FakeAccountToken {
        status: AccountTokenStatus::Expired,
        expires_on: Some(days_ago(now, 15)),
        modified_on: days_ago(now, 15),
        last_used_on: Some(days_ago(now, 16)),
        ..account_token(1, "ci-deploy-2025", now, 300)
    });
    let disabled = token(FakeAccountToken {
        status: AccountTokenStatus::Disabled,
        modified_on: days_ago(now, 100),
        last_used_on: Some(days_ago(now, 5)),
        ..account_token(2, "contractor", now, 300)
    });
    let unused = token(FakeAccountToken {
        last_used_on: Some(days_ago(now, 200)),
        ..account_token(3, "backup", now, 400)
    });
    let never_used = token(account_token(4, "migration", now, 200));
    let terraform = token(FakeAccountToken {
        last_used_on: Some(days_ago(now, 300)),
        ..account_token(5, "terraform-prod", now, 400)
    });
    let fresh_token = token(FakeAccountToken {
        last_used_on: Some(days_ago(now, 2)),
        ..account_token(6, "monitoring", now, 400)
    });

    let cert = |zone: &str, n: u32, cn: &str, expired_days_ago: i64, status| {
        env.fake.insert_certificate(
            zone,
            &FakeCertificate {
                status,
                ..FakeCertificate::new(
                    cert_id(n),
                    cn,
                    days_ago(now, expired_days_ago + 365),
                    days_ago(now, expired_days_ago),
                )
            },
        )
    };
    let active = CertificateStatus::Active;
    let revoke_a = BTreeSet::from([
        cert(ZONE_A, 1, "device-0001", 60, active),
        cert(ZONE_A, 2, "device-0002", 400, active),
    ]);
    let already_revoked = cert(ZONE_A, 3, "device-0003", 200, CertificateStatus::Revoked);
    let pending = cert(
        ZONE_A,
        4,
        "device-0004",
        200,
        CertificateStatus::PendingRevocation,
    );
    let door = cert(ZONE_A, 5, "door-lobby", 90, active);
    let valid = cert(ZONE_A, 6, "device-0006", -100, active);
    let revoke_b = BTreeSet::from([cert(ZONE_B, 7, "device-0007", 30, active)]);
    Seeded {
        service_token_expired,
        account_tokens_deleted: BTreeSet::from([expired, disabled, unused, never_used]),
        terraform,
        fresh_token,
        revoke_a,
        revoke_b,
        already_revoked,
        pending,
        door,
        valid,
    }
}

fn options() -> FakeOptions {
    FakeOptions {
        registrations: 80,
        zones: vec![ZONE_A.to_owned(), ZONE_B.to_owned()],
        ..FakeOptions::default()
    }
}

async fn all_kinds_with(opts: FakeOptions, rules: &str) -> (Env, Seeded) {
    let rules = format!("{STANDARD_RULES}{rules}");
    let env = Env::start(
        opts,
        Settings {
            per_page: 100,
            cloudflare_extra: ZONES,
            rules: Box::leak(rules.into_boxed_str()),
            ..Settings::default()
        },
    )
    .await;
    let seeded = seed(&env);
    (env, seeded)
}

/// `(resource_id, status, excluded_by)` of every action of `kind` in `run`.
async fn actions_of(env: &Env, run: i64, kind: &str) -> Vec<(String, String, Option<String>)> {
    let pool = env.sql().await;
    let rows = sqlx::query(
        "SELECT resource_id, status, excluded_by FROM actions
         WHERE run_id = ?1 AND resource_kind = ?2 ORDER BY resource_id",
    )
    .bind(run)
    .bind(kind)
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows.iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn with_status(rows: &[(String, String, Option<String>)], status: &str) -> BTreeSet<String> {
    rows.iter()
        .filter(|(_, s, _)| s == status)
        .map(|(id, _, _)| id.clone())
        .collect()
}

fn certificate_revokes(env: &Env) -> usize {
    env.fake
        .mutations()
        .iter()
        .filter(|m| m.kind == MutationKind::RevokeClientCertificate)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_then_apply_over_all_four_kinds() {
    let (env, seeded) = all_kinds_with(options(), OTHER_RULES).await;
    let registrations = env.expected_candidates(Utc::now());
    let own = env.fake.own_token_id();

    // plan: one document per kind, and per zone for certificates; nothing mutated.
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
    let parts: Vec<(&str, Option<&str>)> = docs
        .iter()
        .map(|d| (d["resource"].as_str().unwrap(), d["zone"].as_str()))
        .collect();
    assert_eq!(
        parts,
        [
            ("device_registration", None),
            ("access_service_token", None),
            ("account_api_token", None),
            ("client_certificate", Some(ZONE_A)),
            ("client_certificate", Some(ZONE_B)),
        ]
    );
    let planned = |doc: &Value| -> BTreeSet<String> {
        doc["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c.get("excluded_by").is_none())
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(planned(&docs[2]), seeded.account_tokens_deleted);
    assert_eq!(planned(&docs[3]), seeded.revoke_a);
    assert_eq!(planned(&docs[4]), seeded.revoke_b);
    assert!(env.fake.mutations().is_empty(), "plan mutates nothing");

    // Apply.
    let metrics = Metrics::new();
    let report = env.once_with(&metrics).await;
    assert_eq!(report.outcome, RunOutcome::Applied, "{:?}", report.reason);

    // Exactly what the fake saw deleted and revoked.
    let deleted: BTreeSet<String> = env.fake.deleted_ids().into_iter().collect();
    assert_eq!(deleted, registrations);
    assert_eq!(
        env.fake.deleted_service_token_ids(),
        std::slice::from_ref(&seeded.service_token_expired)
    );
    let deleted: BTreeSet<String> = env.fake.deleted_account_token_ids().into_iter().collect();
    assert_eq!(deleted, seeded.account_tokens_deleted);
    for kept in [&seeded.terraform, &seeded.fresh_token, &own] {
        assert!(env.fake.account_token(kept).is_some(), "{kept} is kept");
    }
    let revoked: BTreeSet<String> = env.fake.revoked_certificate_ids().into_iter().collect();
    let expected: BTreeSet<String> = seeded.revoke_a.union(&seeded.revoke_b).cloned().collect();
    assert_eq!(revoked, expected);
    for (id, status) in [
        (&seeded.already_revoked, "revoked"),
        (&seeded.pending, "pending_revocation"),
        (&seeded.door, "active"),
        (&seeded.valid, "active"),
    ] {
        assert_eq!(env.fake.certificate(ZONE_A, id).unwrap()["status"], status);
    }

    // The audit, per kind.
    let tokens = actions_of(&env, report.run_id, "account_api_token").await;
    assert_eq!(with_status(&tokens, "done"), seeded.account_tokens_deleted);
    assert_eq!(
        with_status(&tokens, "excluded"),
        BTreeSet::from([seeded.terraform.clone()])
    );
    let certs = actions_of(&env, report.run_id, "client_certificate").await;
    assert_eq!(with_status(&certs, "done"), expected);
    assert_eq!(
        with_status(&certs, "excluded"),
        BTreeSet::from([seeded.door.clone()])
    );
    let pool = env.sql().await;
    // id, the action's zone, the mutation's zone, status detail, snapshot
    type CertRow = (String, Option<String>, Option<String>, String, String);
    let zones: Vec<CertRow> = sqlx::query(
        "SELECT a.resource_id, a.zone_id, m.zone_id, a.status_detail, CAST(b.body AS BLOB)
         FROM actions a JOIN mutations m ON m.id = a.mutation_id
         JOIN snapshots s ON s.action_id = a.id JOIN snapshot_bodies b ON b.id = s.body_id
         WHERE a.resource_kind = 'client_certificate' ORDER BY a.resource_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .iter()
    .map(|r| {
        let body = zt_janitor::audit::decode_body(r.get(4)).unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3), body)
    })
    .collect();
    assert_eq!(zones.len(), 3);
    for (id, action_zone, mutation_zone, detail, snapshot) in &zones {
        let zone = if seeded.revoke_b.contains(id) {
            ZONE_B
        } else {
            ZONE_A
        };
        assert_eq!(action_zone.as_deref(), Some(zone));
        assert_eq!(mutation_zone.as_deref(), Some(zone));
        assert!(detail.contains("status after: "), "{detail}");
        let snapshot: Value = serde_json::from_str(snapshot).unwrap();
        assert_eq!(snapshot["id"], id.as_str());
        assert_eq!(snapshot["status"], "active", "the status before");
        assert!(snapshot["serial_number"].is_string(), "{snapshot}");
        assert!(snapshot["fingerprint_sha256"].is_string(), "{snapshot}");
        assert!(snapshot["expires_on"].is_string(), "{snapshot}");
        assert!(
            snapshot.get("certificate").is_none() && !snapshot.to_string().contains("BEGIN"),
            "no PEM body in the audit: {snapshot}"
        );
    }
    let per_kind: Vec<(String, String, i64, i64)> = sqlx::query(
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
            ("access_service_token".into(), "applied".into(), 2, 1),
            ("account_api_token".into(), "applied".into(), 7, 4),
            ("client_certificate".into(), "applied".into(), 7, 3),
            (
                "device_registration".into(),
                "applied".into(),
                80,
                registrations.len() as i64
            ),
        ]
    );
    pool.close().await;

    // The metrics, per kind.
    let scrape = metrics.render();
    let done = |kind: &str, action: &str, rule: &str| {
        metric(
            &scrape,
            &format!("zt_janitor_actions_total{{action=\"{action}\",outcome=\"done\",resource=\"{kind}\",rule=\"{rule}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(
        done("account_api_token", "delete", "api-token-expired")
            + done("account_api_token", "delete", "api-token-disabled")
            + done("account_api_token", "delete", "api-token-unused"),
        4.0
    );
    assert_eq!(
        done("client_certificate", "revoke", "certificate-expired"),
        3.0
    );
    assert_eq!(
        metric(
            &scrape,
            "zt_janitor_excluded{resource=\"client_certificate\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &scrape,
            "zt_janitor_resources_seen{resource=\"account_api_token\",status=\"active\"}"
        ),
        Some(7.0)
    );

    // The next run acts on nothing: what was revoked stays revoked and is never revoked again.
    let revokes = certificate_revokes(&env);
    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Applied, "{:?}", report.reason);
    assert_eq!(report.summary.actions_done, 0);
    assert_eq!(certificate_revokes(&env), revokes);
    assert!(env.ids_mutated_twice().is_empty());
    env.assert_every_mutation_audited().await;
}

#[tokio::test]
async fn a_config_that_selects_every_token_leaves_the_janitors_own_token_alone() {
    let (env, seeded) = all_kinds_with(options(), EVERY_TOKEN).await;
    let own = env.fake.own_token_id();
    let now = env.fake.now();
    // The own token, made as stale as any: never used in a year.
    env.fake.insert_account_token(&FakeAccountToken {
        last_used_on: Some(days_ago(now, 400)),
        ..FakeAccountToken::new(own.clone(), "zt-janitor", days_ago(now, 500))
    });
    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Applied, "{:?}", report.reason);

    let deleted: BTreeSet<String> = env.fake.deleted_account_token_ids().into_iter().collect();
    let mut others: BTreeSet<String> = seeded.account_tokens_deleted.clone();
    others.extend([seeded.terraform.clone(), seeded.fresh_token.clone()]);
    assert_eq!(deleted, others, "every token but the own one");
    assert!(env.fake.account_token(&own).is_some());
    assert!(
        !env.fake
            .mutations()
            .iter()
            .any(|m| m.ids.contains(&own) || m.path.contains(&own)),
        "the janitor never even asked to touch its own token"
    );
    let tokens = actions_of(&env, report.run_id, "account_api_token").await;
    let own_row = tokens.iter().find(|(id, _, _)| id == &own).unwrap();
    assert_eq!(own_row.1, "excluded");
    assert_eq!(own_row.2.as_deref(), Some("own token"));
    assert_eq!(env.fake.request_counts().verify_token, 1);
}

#[tokio::test]
async fn a_user_owned_token_is_learned_from_the_user_verify_endpoint() {
    let (env, seeded) = all_kinds_with(
        FakeOptions {
            own_token_owner: TokenOwner::User,
            ..options()
        },
        EVERY_TOKEN,
    )
    .await;
    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Applied, "{:?}", report.reason);
    assert_eq!(
        env.fake.request_counts().verify_token,
        2,
        "account verify, then user verify"
    );
    let deleted: BTreeSet<String> = env.fake.deleted_account_token_ids().into_iter().collect();
    assert!(deleted.is_superset(&seeded.account_tokens_deleted));
    assert!(!deleted.contains(&env.fake.own_token_id()));
}

#[tokio::test]
async fn without_its_own_token_id_the_janitor_refuses_account_token_actions() {
    let (env, seeded) = all_kinds_with(options(), OTHER_RULES).await;
    let registrations = env.expected_candidates(Utc::now());
    env.fake.set_faults(vec!["verify_token:status=500"
        .parse::<FaultRule>()
        .unwrap()]);
    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Refused, "{:?}", report.reason);
    let reason = report.reason.unwrap_or_default();
    assert!(reason.contains("account_api_token"), "{reason}");
    assert!(
        reason.contains("cannot learn the id of the API token the janitor runs with"),
        "{reason}"
    );
    assert!(env.fake.deleted_account_token_ids().is_empty());
    // The other kinds ran in full.
    let deleted: BTreeSet<String> = env.fake.deleted_ids().into_iter().collect();
    assert_eq!(deleted, registrations);
    let revoked: BTreeSet<String> = env.fake.revoked_certificate_ids().into_iter().collect();
    assert_eq!(revoked.len(), seeded.revoke_a.len() + seeded.revoke_b.len());
    let part = report
        .resources
        .iter()
        .find(|p| p.kind.to_string() == "account_api_token")
        .unwrap();
    assert_eq!(part.outcome, RunOutcome::Refused);
    // The decisions are on record, and none of them was attempted.
    let tokens = actions_of(&env, report.run_id, "account_api_token").await;
    assert_eq!(
        with_status(&tokens, "not_attempted"),
        seeded.account_tokens_deleted
    );
    assert!(with_status(&tokens, "done").is_empty());
}

#[tokio::test]
async fn one_zones_listing_failure_aborts_that_zone_only() {
    let (env, seeded) = all_kinds_with(options(), OTHER_RULES).await;
    env.fake.set_faults(vec![format!(
        "list_client_certificates:status=500:id={ZONE_B}"
    )
    .parse::<FaultRule>()
    .unwrap()]);
    let report = env.once().await;
    assert_eq!(report.outcome, RunOutcome::Aborted, "{:?}", report.reason);
    let reason = report.reason.unwrap_or_default();
    assert!(
        reason.contains(ZONE_B),
        "the reason names the zone: {reason}"
    );
    assert!(!reason.contains(ZONE_A), "{reason}");
    let revoked: BTreeSet<String> = env.fake.revoked_certificate_ids().into_iter().collect();
    assert_eq!(revoked, seeded.revoke_a, "zone A was cleaned");
    let zones: Vec<(Option<String>, RunOutcome)> = report
        .resources
        .iter()
        .filter(|p| p.kind.to_string() == "client_certificate")
        .map(|p| (p.zone.as_ref().map(ToString::to_string), p.outcome))
        .collect();
    assert_eq!(
        zones,
        [
            (Some(ZONE_A.to_owned()), RunOutcome::Applied),
            (Some(ZONE_B.to_owned()), RunOutcome::Aborted)
        ]
    );
    let certs = actions_of(&env, report.run_id, "client_certificate").await;
    assert!(
        certs.iter().all(|(id, _, _)| !seeded.revoke_b.contains(id)),
        "nothing decided on zone B's unread listing"
    );
    assert_eq!(
        env.fake.deleted_account_token_ids().len(),
        seeded.account_tokens_deleted.len(),
        "the other kinds ran"
    );
}

#[tokio::test]
async fn a_403_names_the_permission_each_kind_needs() {
    let (env, seeded) = all_kinds_with(options(), OTHER_RULES).await;
    env.fake.set_faults(vec![
        "list_account_tokens:status=403"
            .parse::<FaultRule>()
            .unwrap(),
        "revoke_client_certificate:status=403"
            .parse::<FaultRule>()
            .unwrap(),
    ]);
    let report = env.once().await;
    let reason = report.reason.unwrap_or_default();
    assert!(
        reason.contains("Account API Tokens Read"),
        "listing tokens needs the read permission: {reason}"
    );
    assert!(
        reason.contains("SSL and Certificates Write"),
        "revoking needs the write permission: {reason}"
    );
    assert!(env.fake.deleted_account_token_ids().is_empty());
    assert!(env.fake.revoked_certificate_ids().is_empty());
    assert!(!seeded.revoke_a.is_empty());
    env.assert_every_mutation_audited().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_global_api_key_account_token_rules_are_refused_and_the_rest_runs() {
    const EMAIL: &str = "admin@example.com";
    const KEY: &str = "0123456789abcdef0123456789abcdef01234";
    let (env, seeded) = all_kinds_with(
        FakeOptions {
            global_key: Some((EMAIL.to_owned(), KEY.to_owned())),
            ..options()
        },
        OTHER_RULES,
    )
    .await;
    // No API token at all: the fake must accept the key, and the janitor must send it.
    env.fake.set_token("a-token-nobody-has");
    let email_file = env.dir.path().join("email");
    let key_file = env.dir.path().join("key");
    std::fs::write(&email_file, EMAIL).unwrap();
    std::fs::write(&key_file, KEY).unwrap();
    common::set_private(&key_file);
    let config = std::fs::read_to_string(&env.config_path).unwrap();
    let token_line = config
        .lines()
        .find(|l| l.starts_with("api_token_file"))
        .unwrap()
        .to_owned();
    let config = config.replace(
        &token_line,
        &format!(
            "auth = \"global_api_key\"\napi_email_file = \"{}\"\napi_key_file = \"{}\"",
            email_file.display(),
            key_file.display()
        ),
    );
    std::fs::write(&env.config_path, config).unwrap();

    let registrations = env.expected_candidates(Utc::now());
    let out = env.binary(&["once", "--output", "json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "refused: {stderr}");
    assert!(stderr.contains("global API key"), "the warning: {stderr}");
    assert!(!stderr.contains(KEY) && !String::from_utf8_lossy(&out.stdout).contains(KEY));
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["outcome"], "refused");
    let part = run["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["resource"] == "account_api_token")
        .unwrap();
    assert_eq!(part["outcome"], "refused");
    assert!(
        part["reason"].as_str().unwrap().contains("global API key"),
        "{part}"
    );
    assert_eq!(
        env.fake.request_counts().verify_token,
        0,
        "tokens/verify does not apply to a global key"
    );
    assert!(env.fake.deleted_account_token_ids().is_empty());
    let deleted: BTreeSet<String> = env.fake.deleted_ids().into_iter().collect();
    assert_eq!(deleted, registrations, "the other kinds ran under the key");
    let revoked: BTreeSet<String> = env.fake.revoked_certificate_ids().into_iter().collect();
    let expected: BTreeSet<String> = seeded.revoke_a.union(&seeded.revoke_b).cloned().collect();
    assert_eq!(revoked, expected);
}

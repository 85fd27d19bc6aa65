//! Rules-only throughput: evaluates 1M in-memory registrations against a realistic rule set
//! (two rules, email and device globs, an id list, the no-user exclusion).
//! Target: at least 2M registrations per second.

use chrono::{DateTime, TimeDelta, Utc};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use zt_janitor::cloudflare::{Device, Registration, RegistrationType, Stamp, User};
use zt_janitor::config::{Action, ExclusionSettings, RuleSettings};
use zt_janitor::resource::{Kind, ResourceId};
use zt_janitor::rules::{RuleSet, Verdict};

const N: usize = 1_000_000;

fn registrations(now: DateTime<Utc>) -> Vec<Registration> {
    (0..N)
        .map(|i| {
            // Deterministic mix: 20% idle, 5% revoked, 5% without a user, the rest fresh.
            let bucket = i % 20;
            let last_seen = match bucket {
                0..=3 => now - TimeDelta::days(120 + (i % 500) as i64),
                _ => now - TimeDelta::hours((i % 480) as i64),
            };
            Registration {
                id: ResourceId::parse(&format!("00000000-0000-4000-8000-{i:012}")).unwrap(),
                created_at: Stamp::Valid(last_seen - TimeDelta::days(30)),
                last_seen_at: Stamp::Valid(last_seen),
                revoked_at: (bucket == 4).then(|| Stamp::Valid(now - TimeDelta::days(20))),
                deleted_at: None,
                registration_type: Some(RegistrationType::Warp),
                device: Device {
                    id: format!("dev-{}", i / 2),
                    name: format!("laptop-{:05}", i % 100_000),
                },
                user: (bucket != 5).then(|| User {
                    id: Some(format!("u{}", i % 50_000)),
                    email: Some(format!("user{}@example.com", i % 50_000)),
                    name: None,
                }),
            }
        })
        .collect()
}

fn rule_set() -> RuleSet {
    let rule = |name: &str| RuleSettings::new(name, Kind::DeviceRegistration, Action::Delete);
    RuleSet::new(
        &[
            RuleSettings {
                idle_days: Some(90),
                ..rule("idle-90d")
            },
            RuleSettings {
                revoked: true,
                revoked_min_days: Some(7),
                ..rule("revoked-7d")
            },
        ],
        &[
            ExclusionSettings {
                name: "vips".into(),
                user_emails: vec!["*@board.example.com".into(), "ceo@example.com".into()],
                device_names: vec!["kiosk-*".into(), "build-??".into()],
                registration_ids: vec![ResourceId::parse("abc-1").unwrap()],
                no_user: false,
                ..ExclusionSettings::named("")
            },
            ExclusionSettings {
                name: "service-tokens".into(),
                user_emails: vec![],
                device_names: vec![],
                registration_ids: vec![],
                no_user: true,
                ..ExclusionSettings::named("")
            },
        ],
    )
    .unwrap()
}

fn evaluate_all(c: &mut Criterion) {
    let now: DateTime<Utc> = "2026-06-01T00:00:00Z".parse().unwrap();
    let regs = registrations(now);
    let rules = rule_set();
    let mut group = c.benchmark_group("rules");
    group.throughput(Throughput::Elements(N as u64));
    group.sample_size(10);
    group.bench_function("evaluate_1m_registrations", |b| {
        b.iter(|| {
            let mut act = 0usize;
            for r in &regs {
                if matches!(
                    rules.evaluate(black_box(r), now).verdict,
                    Verdict::Act { .. }
                ) {
                    act += 1;
                }
            }
            black_box(act)
        })
    });
    group.finish();
}

criterion_group!(benches, evaluate_all);
criterion_main!(benches);

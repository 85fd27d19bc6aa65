//! The rules engine: decides, for one registration at one instant, whether a rule selects it and
//! whether an exclusion protects it. Pure: no I/O, no clock (`now` is an argument), so every
//! decision is reproducible in a table test.

use std::collections::HashSet;
use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::cloudflare::{Registration, RegistrationId, RegistrationType, Stamp};
use crate::config::{Action, ExclusionSettings, RuleSettings};

/// Clock skew tolerated before a `last_seen_at` in the future counts as an anomaly.
const FUTURE_TOLERANCE: TimeDelta = TimeDelta::minutes(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub action: Action,
    idle: Option<u32>,
    revoked: bool,
    revoked_min_days: Option<u32>,
    active_only: bool,
    registration_type: Option<RegistrationType>,
}

#[derive(Debug, Clone)]
pub struct Exclusion {
    pub name: String,
    user_emails: GlobSet,
    device_names: GlobSet,
    registration_ids: HashSet<RegistrationId>,
    no_user: bool,
}

/// The compiled rules and exclusions of one config.
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<Rule>,
    exclusions: Vec<Exclusion>,
}

/// Why a rule selected a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    Idle {
        days: i64,
        threshold: u32,
        since: DateTime<Utc>,
        /// `last_seen_at` was null, so `created_at` stood in for it.
        from_created_at: bool,
    },
    Revoked {
        /// Whole days since `revoked_at`, when it is a valid timestamp.
        days: Option<i64>,
    },
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Idle {
                days,
                threshold,
                since,
                from_created_at,
            } => {
                let field = if *from_created_at {
                    "never seen; created_at"
                } else {
                    "last_seen_at"
                };
                write!(
                    f,
                    "idle {days}d >= {threshold}d ({field} {})",
                    since.format("%Y-%m-%d")
                )
            }
            Why::Revoked { days: Some(d) } => write!(f, "revoked {d}d ago"),
            Why::Revoked { days: None } => f.write_str("revoked"),
        }
    }
}

/// Data a registration carried that the rules refused to trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anomaly {
    UnparsableLastSeen,
    FutureLastSeen,
    NoActivityTimestamp,
}

impl Anomaly {
    pub fn label(self) -> &'static str {
        match self {
            Anomaly::UnparsableLastSeen => "unparsable_last_seen_at",
            Anomaly::FutureLastSeen => "future_last_seen_at",
            Anomaly::NoActivityTimestamp => "no_activity_timestamp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// No rule selects it.
    Keep,
    /// The first matching rule (in config order) selects it.
    Act { rule: &'a Rule, why: Why },
    /// A rule selects it, but an exclusion protects it: nothing is done, whatever the rules say.
    Excluded {
        rule: &'a Rule,
        why: Why,
        exclusion: &'a str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation<'a> {
    pub verdict: Verdict<'a>,
    pub anomaly: Option<Anomaly>,
}

#[derive(Debug, thiserror::Error)]
#[error("exclusion {exclusion:?}: invalid glob {pattern:?}: {message}")]
pub struct GlobError {
    pub exclusion: String,
    pub pattern: String,
    pub message: String,
}

impl RuleSet {
    pub fn new(
        rules: &[RuleSettings],
        exclusions: &[ExclusionSettings],
    ) -> Result<Self, GlobError> {
        Ok(RuleSet {
            rules: rules.iter().map(Rule::from_settings).collect(),
            exclusions: exclusions
                .iter()
                .map(Exclusion::from_settings)
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn evaluate(&self, reg: &Registration, now: DateTime<Utc>) -> Evaluation<'_> {
        let (activity, anomaly) = activity(reg, now);
        let selected = self
            .rules
            .iter()
            .find_map(|rule| rule.select(reg, activity, now).map(|why| (rule, why)));
        let verdict = match selected {
            None => Verdict::Keep,
            Some((rule, why)) => match self.exclusion_for(reg) {
                Some(exclusion) => Verdict::Excluded {
                    rule,
                    why,
                    exclusion,
                },
                None => Verdict::Act { rule, why },
            },
        };
        Evaluation { verdict, anomaly }
    }

    /// The name of the first exclusion protecting `reg`, if any.
    pub fn exclusion_for(&self, reg: &Registration) -> Option<&str> {
        self.exclusion_for_parts(&reg.id, reg.user_email(), &reg.device.name)
    }

    /// [`RuleSet::exclusion_for`] from the only fields exclusions look at, so that a planned
    /// candidate can be checked again without keeping the whole registration.
    pub fn exclusion_for_parts(
        &self,
        id: &RegistrationId,
        user_email: Option<&str>,
        device_name: &str,
    ) -> Option<&str> {
        self.exclusions
            .iter()
            .find(|e| e.protects(id, user_email, device_name))
            .map(|e| e.name.as_str())
    }
}

/// When the registration was last active, for idle rules, plus any reason to distrust it.
/// `None` means "unknown": such a registration is never idle.
fn activity(
    reg: &Registration,
    now: DateTime<Utc>,
) -> (Option<(DateTime<Utc>, bool)>, Option<Anomaly>) {
    let (at, from_created) = match (&reg.last_seen_at, &reg.created_at) {
        (Stamp::Valid(t), _) => (*t, false),
        (Stamp::Invalid(_), _) => return (None, Some(Anomaly::UnparsableLastSeen)),
        (Stamp::Missing, Stamp::Valid(t)) => (*t, true),
        (Stamp::Missing, _) => return (None, Some(Anomaly::NoActivityTimestamp)),
    };
    if at > now + FUTURE_TOLERANCE {
        return (None, Some(Anomaly::FutureLastSeen));
    }
    (Some((at, from_created)), None)
}

impl Rule {
    fn from_settings(s: &RuleSettings) -> Self {
        Rule {
            name: s.name.clone(),
            action: s.action,
            idle: s.idle_days,
            revoked: s.revoked,
            revoked_min_days: s.revoked_min_days,
            active_only: s.active_only,
            registration_type: s.registration_type,
        }
    }

    /// All conditions must hold. The reason reported is the selecting condition (idle or
    /// revoked); filters only narrow.
    fn select(
        &self,
        reg: &Registration,
        activity: Option<(DateTime<Utc>, bool)>,
        now: DateTime<Utc>,
    ) -> Option<Why> {
        if let Some(t) = self.registration_type {
            if reg.registration_type != Some(t) {
                return None;
            }
        }
        if self.active_only && reg.is_revoked() {
            return None;
        }
        let mut why = None;
        if self.revoked {
            let revoked_at = reg.revoked_at.as_ref()?;
            let days = revoked_at.valid().map(|t| (now - t).num_days());
            if let Some(min) = self.revoked_min_days {
                // An unparsable or future revocation time cannot prove the age asked for.
                let age = now - revoked_at.valid()?;
                if age < TimeDelta::days(i64::from(min)) {
                    return None;
                }
            }
            why = Some(Why::Revoked { days });
        }
        if let Some(threshold) = self.idle {
            let (since, from_created_at) = activity?;
            let idle_for = now - since;
            if idle_for < TimeDelta::days(i64::from(threshold)) {
                return None;
            }
            why = Some(Why::Idle {
                days: idle_for.num_days(),
                threshold,
                since,
                from_created_at,
            });
        }
        why
    }
}

impl Exclusion {
    fn from_settings(s: &ExclusionSettings) -> Result<Self, GlobError> {
        Ok(Exclusion {
            name: s.name.clone(),
            user_emails: globs(&s.name, &s.user_emails, true)?,
            device_names: globs(&s.name, &s.device_names, false)?,
            registration_ids: s.registration_ids.iter().cloned().collect(),
            no_user: s.no_user,
        })
    }

    fn protects(&self, id: &RegistrationId, user_email: Option<&str>, device_name: &str) -> bool {
        let email = user_email.filter(|e| !e.is_empty());
        (self.no_user && email.is_none_or(is_service_identity))
            || email.is_some_and(|e| self.user_emails.is_match(e))
            || self.device_names.is_match(device_name)
            || self.registration_ids.contains(id)
    }
}

/// Registrations enrolled with a service token show this identity instead of a user.
fn is_service_identity(email: &str) -> bool {
    email.starts_with("non_identity@") && email.ends_with(".cloudflareaccess.com")
}

fn globs(
    exclusion: &str,
    patterns: &[String],
    case_insensitive: bool,
) -> Result<GlobSet, GlobError> {
    let mut set = GlobSetBuilder::new();
    for p in patterns {
        let glob = GlobBuilder::new(p)
            .case_insensitive(case_insensitive)
            .literal_separator(false)
            .build()
            .map_err(|e| GlobError {
                exclusion: exclusion.to_owned(),
                pattern: p.clone(),
                message: e.kind().to_string(),
            })?;
        set.add(glob);
    }
    set.build().map_err(|e| GlobError {
        exclusion: exclusion.to_owned(),
        pattern: patterns.join(", "),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloudflare::{Device, User};
    use crate::config::Resource;

    fn now() -> DateTime<Utc> {
        "2026-06-01T12:00:00Z".parse().unwrap()
    }

    fn days_ago(d: i64) -> Stamp {
        Stamp::Valid(now() - TimeDelta::days(d))
    }

    fn reg() -> Registration {
        Registration {
            id: RegistrationId::parse("11111111-1111-4111-8111-111111111111").unwrap(),
            created_at: days_ago(400),
            last_seen_at: days_ago(1),
            revoked_at: None,
            registration_type: Some(RegistrationType::Warp),
            device: Device {
                id: "dev-1".into(),
                name: "laptop-0001".into(),
            },
            user: Some(User {
                id: Some("u1".into()),
                email: Some("alice@example.com".into()),
                name: Some("Alice".into()),
            }),
        }
    }

    fn rule(name: &str) -> RuleSettings {
        RuleSettings {
            name: name.into(),
            resource: Resource::DeviceRegistration,
            action: Action::Delete,
            idle_days: None,
            revoked: false,
            revoked_min_days: None,
            active_only: false,
            registration_type: None,
        }
    }

    fn idle(days: u32) -> RuleSettings {
        RuleSettings {
            idle_days: Some(days),
            ..rule("idle")
        }
    }

    fn revoked(min_days: Option<u32>) -> RuleSettings {
        RuleSettings {
            revoked: true,
            revoked_min_days: min_days,
            ..rule("revoked")
        }
    }

    fn exclusion() -> ExclusionSettings {
        ExclusionSettings {
            name: "vip".into(),
            user_emails: vec![],
            device_names: vec![],
            registration_ids: vec![],
            no_user: false,
        }
    }

    /// Outcome of one case: the selecting rule, or the exclusion that won, or nothing.
    #[derive(Debug, PartialEq)]
    enum Expect {
        Keep,
        Act(&'static str),
        Excluded(&'static str),
    }

    #[test]
    fn rule_table() {
        use Expect::*;
        let revoked_days_ago = |d| Some(days_ago(d));
        type Case = (
            &'static str,
            Vec<RuleSettings>,
            Vec<ExclusionSettings>,
            Registration,
            Expect,
            Option<Anomaly>,
        );
        let cases: Vec<Case> = vec![
            (
                "fresh registration is kept",
                vec![idle(90)],
                vec![],
                reg(),
                Keep,
                None,
            ),
            (
                "idle exactly N days is selected",
                vec![idle(90)],
                vec![],
                Registration {
                    last_seen_at: days_ago(90),
                    ..reg()
                },
                Act("idle"),
                None,
            ),
            (
                "idle one second short of N days is kept",
                vec![idle(90)],
                vec![],
                Registration {
                    last_seen_at: Stamp::Valid(now() - TimeDelta::days(90) + TimeDelta::seconds(1)),
                    ..reg()
                },
                Keep,
                None,
            ),
            (
                "idle well past N days is selected",
                vec![idle(90)],
                vec![],
                Registration {
                    last_seen_at: days_ago(365),
                    ..reg()
                },
                Act("idle"),
                None,
            ),
            (
                "null last_seen_at falls back to an old created_at",
                vec![idle(90)],
                vec![],
                Registration {
                    last_seen_at: Stamp::Missing,
                    created_at: days_ago(100),
                    ..reg()
                },
                Act("idle"),
                None,
            ),
            (
                "null last_seen_at with a recent created_at is kept",
                vec![idle(90)],
                vec![],
                Registration {
                    last_seen_at: Stamp::Missing,
                    created_at: days_ago(10),
                    ..reg()
                },
                Keep,
                None,
            ),
            (
                "no timestamps at all is never idle",
                vec![idle(90)],
                vec![],
                Registration {
                    last_seen_at: Stamp::Missing,
                    created_at: Stamp::Missing,
                    ..reg()
                },
                Keep,
                Some(Anomaly::NoActivityTimestamp),
            ),
            (
                "unparsable last_seen_at is never idle, even with an old created_at",
                vec![idle(90)],
                vec![],
                Registration {
                    last_seen_at: Stamp::Invalid("soon".into()),
                    created_at: days_ago(900),
                    ..reg()
                },
                Keep,
                Some(Anomaly::UnparsableLastSeen),
            ),
            (
                "future last_seen_at is never idle",
                vec![idle(90)],
                vec![],
                Registration {
                    last_seen_at: days_ago(-30),
                    ..reg()
                },
                Keep,
                Some(Anomaly::FutureLastSeen),
            ),
            (
                "revoked without age is selected",
                vec![revoked(None)],
                vec![],
                Registration {
                    revoked_at: revoked_days_ago(0),
                    ..reg()
                },
                Act("revoked"),
                None,
            ),
            (
                "active registration is not selected by a revoked rule",
                vec![revoked(None)],
                vec![],
                reg(),
                Keep,
                None,
            ),
            (
                "revoked long enough is selected",
                vec![revoked(Some(7))],
                vec![],
                Registration {
                    revoked_at: revoked_days_ago(7),
                    ..reg()
                },
                Act("revoked"),
                None,
            ),
            (
                "revoked too recently is kept",
                vec![revoked(Some(7))],
                vec![],
                Registration {
                    revoked_at: revoked_days_ago(6),
                    ..reg()
                },
                Keep,
                None,
            ),
            (
                "revoked at an unparsable time is selected by a rule without age",
                vec![revoked(None)],
                vec![],
                Registration {
                    revoked_at: Some(Stamp::Invalid("?".into())),
                    ..reg()
                },
                Act("revoked"),
                None,
            ),
            (
                "revoked at an unparsable time cannot prove an age",
                vec![revoked(Some(1))],
                vec![],
                Registration {
                    revoked_at: Some(Stamp::Invalid("?".into())),
                    ..reg()
                },
                Keep,
                None,
            ),
            (
                "active_only skips revoked idle registrations",
                vec![RuleSettings {
                    active_only: true,
                    ..idle(90)
                }],
                vec![],
                Registration {
                    last_seen_at: days_ago(200),
                    revoked_at: revoked_days_ago(1),
                    ..reg()
                },
                Keep,
                None,
            ),
            (
                "registration_type filter skips other types",
                vec![RuleSettings {
                    registration_type: Some(RegistrationType::BrowserExtension),
                    ..idle(90)
                }],
                vec![],
                Registration {
                    last_seen_at: days_ago(200),
                    ..reg()
                },
                Keep,
                None,
            ),
            (
                "registration_type filter keeps unknown types out",
                vec![RuleSettings {
                    registration_type: Some(RegistrationType::Warp),
                    ..idle(90)
                }],
                vec![],
                Registration {
                    last_seen_at: days_ago(200),
                    registration_type: None,
                    ..reg()
                },
                Keep,
                None,
            ),
            (
                "first matching rule wins",
                vec![
                    RuleSettings {
                        name: "first".into(),
                        ..idle(30)
                    },
                    idle(90),
                ],
                vec![],
                Registration {
                    last_seen_at: days_ago(200),
                    ..reg()
                },
                Act("first"),
                None,
            ),
            (
                "exclusion by email glob beats the rule",
                vec![idle(90)],
                vec![ExclusionSettings {
                    user_emails: vec!["*@EXAMPLE.com".into()],
                    ..exclusion()
                }],
                Registration {
                    last_seen_at: days_ago(200),
                    ..reg()
                },
                Excluded("vip"),
                None,
            ),
            (
                "exclusion by device glob beats the rule",
                vec![revoked(None)],
                vec![ExclusionSettings {
                    device_names: vec!["laptop-*".into()],
                    ..exclusion()
                }],
                Registration {
                    revoked_at: revoked_days_ago(3),
                    ..reg()
                },
                Excluded("vip"),
                None,
            ),
            (
                "device glob is case sensitive",
                vec![idle(90)],
                vec![ExclusionSettings {
                    device_names: vec!["LAPTOP-*".into()],
                    ..exclusion()
                }],
                Registration {
                    last_seen_at: days_ago(200),
                    ..reg()
                },
                Act("idle"),
                None,
            ),
            (
                "exclusion by registration id beats the rule",
                vec![idle(90)],
                vec![ExclusionSettings {
                    registration_ids: vec![reg().id],
                    ..exclusion()
                }],
                Registration {
                    last_seen_at: days_ago(200),
                    ..reg()
                },
                Excluded("vip"),
                None,
            ),
            (
                "no_user protects registrations without a user",
                vec![idle(90)],
                vec![ExclusionSettings {
                    no_user: true,
                    ..exclusion()
                }],
                Registration {
                    last_seen_at: days_ago(200),
                    user: None,
                    ..reg()
                },
                Excluded("vip"),
                None,
            ),
            (
                "no_user protects the service-token identity",
                vec![idle(90)],
                vec![ExclusionSettings {
                    no_user: true,
                    ..exclusion()
                }],
                Registration {
                    last_seen_at: days_ago(200),
                    user: Some(User {
                        email: Some("non_identity@acme.cloudflareaccess.com".into()),
                        ..User::default()
                    }),
                    ..reg()
                },
                Excluded("vip"),
                None,
            ),
            (
                "no_user does not protect real users",
                vec![idle(90)],
                vec![ExclusionSettings {
                    no_user: true,
                    ..exclusion()
                }],
                Registration {
                    last_seen_at: days_ago(200),
                    ..reg()
                },
                Act("idle"),
                None,
            ),
            (
                "an exclusion that does not match leaves the rule in force",
                vec![idle(90)],
                vec![ExclusionSettings {
                    user_emails: vec!["bob@*".into()],
                    ..exclusion()
                }],
                Registration {
                    last_seen_at: days_ago(200),
                    ..reg()
                },
                Act("idle"),
                None,
            ),
        ];
        for (name, rules, exclusions, registration, expect, anomaly) in cases {
            let set = RuleSet::new(&rules, &exclusions).unwrap();
            let eval = set.evaluate(&registration, now());
            let got = match eval.verdict {
                Verdict::Keep => Keep,
                Verdict::Act { rule, .. } => Act(if rule.name == "first" {
                    "first"
                } else if rule.revoked {
                    "revoked"
                } else {
                    "idle"
                }),
                Verdict::Excluded { exclusion, .. } => {
                    Excluded(if exclusion == "vip" { "vip" } else { "?" })
                }
            };
            assert_eq!(got, expect, "case: {name}");
            assert_eq!(eval.anomaly, anomaly, "case: {name}");
        }
    }

    #[test]
    fn reasons_read_well() {
        let set = RuleSet::new(&[idle(90)], &[]).unwrap();
        let r = Registration {
            last_seen_at: days_ago(120),
            ..reg()
        };
        let Verdict::Act { why, .. } = set.evaluate(&r, now()).verdict else {
            panic!("expected a selection")
        };
        assert_eq!(
            why.to_string(),
            "idle 120d >= 90d (last_seen_at 2026-02-01)"
        );
        assert_eq!(Why::Revoked { days: Some(3) }.to_string(), "revoked 3d ago");
    }
}

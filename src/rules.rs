//! The rules engine: decides, for one registration at one instant, whether a rule selects it and
//! whether an exclusion protects it. Pure: no I/O, no clock (`now` is an argument), so every
//! decision is reproducible in a table test.
//!
//! Unreadable or implausible data is untouchable. Before any rule is asked, every field a rule
//! reads is checked: `deleted_at`, `revoked_at`, `created_at` and `last_seen_at`. A value that
//! cannot be parsed, a time in the future (beyond [`FUTURE_TOLERANCE`] of clock skew), a
//! `last_seen_at` before `created_at`, no activity timestamp at all, or a `deleted_at` that is
//! set makes the registration an [`Anomaly`]: it is kept, whatever the rules say, and counted.
//! No rule guesses around a field it cannot trust. (An unknown `registration_type` is not an
//! anomaly: it is a type Cloudflare added, read as "no known type", which no rule asking for a
//! type matches.)
//!
//! Idleness is measured from the later of `last_seen_at` and `created_at`, so a registration
//! created yesterday is never idle however old its `last_seen_at` claims to be. A revoke rule
//! never selects a registration that is already revoked: it falls through to later rules.
//!
//! Exclusions ignore case where the README promises it: `registration_id` compares as a UUID,
//! and `user_email` globs match with Unicode case folding (both the pattern and the email are
//! folded, see [`fold_case`]). Device name globs are case-sensitive.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::cloudflare::{
    AccountApiToken, ClientCertificate, Registration, RegistrationType, ServiceToken, Stamp,
};
use crate::config::{Action, ExclusionSettings, RuleSettings};
use crate::resource::{IdKey, Kind, ResourceId};

/// Clock skew tolerated before a timestamp in the future (or a `last_seen_at` before
/// `created_at`) counts as an anomaly.
pub const FUTURE_TOLERANCE: TimeDelta = TimeDelta::minutes(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    /// The kind it selects from; it is never asked about another kind.
    pub resource: Kind,
    pub action: Action,
    idle: Option<u32>,
    revoked: bool,
    revoked_min_days: Option<u32>,
    active_only: bool,
    registration_type: Option<RegistrationType>,
    expired_days: Option<u32>,
    unused_days: Option<u32>,
    disabled_days: Option<u32>,
    names: Option<NameGlobs>,
    common_names: Option<NameGlobs>,
    certificate_authority: Option<String>,
}

/// A rule's `name` filter: compiled globs, compared by their patterns.
#[derive(Debug, Clone)]
struct NameGlobs {
    patterns: Vec<String>,
    set: GlobSet,
}

impl PartialEq for NameGlobs {
    fn eq(&self, other: &Self) -> bool {
        self.patterns == other.patterns
    }
}

impl Eq for NameGlobs {}

#[derive(Debug, Clone)]
pub struct Exclusion {
    pub name: String,
    /// Compiled from case-folded patterns; matched against case-folded emails.
    user_emails: GlobSet,
    device_names: GlobSet,
    registration_ids: HashSet<IdKey>,
    no_user: bool,
    service_token_names: GlobSet,
    service_token_ids: HashSet<IdKey>,
    account_api_token_names: GlobSet,
    account_api_token_ids: HashSet<IdKey>,
    common_names: GlobSet,
    client_certificate_ids: HashSet<IdKey>,
}

/// The compiled rules and exclusions of one config.
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<Rule>,
    exclusions: Vec<Exclusion>,
}

/// Which timestamp an idle age was measured from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleFrom {
    /// `last_seen_at`, the later of the two.
    LastSeenAt,
    /// `created_at`, later than `last_seen_at` (within the clock-skew tolerance).
    CreatedAt,
    /// `created_at`, since `last_seen_at` is null: never seen.
    NeverSeen,
}

/// Why a rule selected an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    Idle {
        days: i64,
        threshold: u32,
        since: DateTime<Utc>,
        from: IdleFrom,
    },
    Revoked {
        /// Whole days since `revoked_at`.
        days: i64,
    },
    /// A token not used for `threshold` days or more; `stamps` names its "last used" and
    /// "created" fields.
    Unused {
        days: i64,
        threshold: u32,
        since: DateTime<Utc>,
        from: IdleFrom,
        stamps: (&'static str, &'static str),
    },
    /// Expired `threshold` days ago or more, by the stamp `field`.
    Expired {
        days: i64,
        threshold: u32,
        at: DateTime<Utc>,
        field: &'static str,
    },
    /// An account API token disabled, and last modified `threshold` days ago or more.
    Disabled {
        days: i64,
        threshold: u32,
        since: DateTime<Utc>,
    },
}

/// The stamps of a service token's activity, and of an account API token's.
const SERVICE_TOKEN_STAMPS: (&str, &str) = ("last_seen_at", "created_at");
const ACCOUNT_TOKEN_STAMPS: (&str, &str) = ("last_used_on", "issued_on");

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Idle {
                days,
                threshold,
                since,
                from,
            } => {
                write!(f, "idle {days}d >= {threshold}d (")?;
                write_since(f, *since, *from, ("last_seen_at", "created_at"))
            }
            Why::Unused {
                days,
                threshold,
                since,
                from,
                stamps,
            } => {
                write!(f, "unused {days}d >= {threshold}d (")?;
                write_since(f, *since, *from, *stamps)
            }
            Why::Disabled {
                days,
                threshold,
                since,
            } => write!(
                f,
                "disabled, modified {days}d ago >= {threshold}d (modified_on {})",
                since.format("%Y-%m-%d")
            ),
            Why::Revoked { days } => write!(f, "revoked {days}d ago"),
            Why::Expired {
                days,
                threshold,
                at,
                field,
            } => write!(
                f,
                "expired {days}d ago >= {threshold}d ({field} {})",
                at.format("%Y-%m-%d")
            ),
        }
    }
}

/// `(seen, created)`: the names of the two stamps activity is read from.
fn write_since(
    f: &mut fmt::Formatter<'_>,
    since: DateTime<Utc>,
    from: IdleFrom,
    (seen, created): (&str, &str),
) -> fmt::Result {
    let date = since.format("%Y-%m-%d");
    match from {
        IdleFrom::LastSeenAt => write!(f, "{seen} {date})"),
        IdleFrom::CreatedAt => write!(f, "{created} {date}, later than {seen})"),
        IdleFrom::NeverSeen => write!(f, "never seen; {created} {date})"),
    }
}

/// Data an object carried that the rules refused to trust. A registration with an
/// anomaly is never selected by any rule; only the first anomaly found (in the order below)
/// is reported for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anomaly {
    /// `deleted_at` is set (to anything): Cloudflare already considers it deleted.
    DeletedAtSet,
    UnparsableRevokedAt,
    FutureRevokedAt,
    UnparsableLastSeen,
    /// Neither `last_seen_at` nor a usable `created_at`.
    NoActivityTimestamp,
    UnparsableCreatedAt,
    FutureCreatedAt,
    FutureLastSeen,
    LastSeenBeforeCreated,
    /// A token's or a certificate's expiry is set but unreadable.
    UnparsableExpiresAt,
    /// An account API token's `modified_on` is set but unreadable.
    UnparsableModifiedOn,
}

impl Anomaly {
    pub const ALL: [Anomaly; 11] = [
        Anomaly::DeletedAtSet,
        Anomaly::UnparsableRevokedAt,
        Anomaly::FutureRevokedAt,
        Anomaly::UnparsableLastSeen,
        Anomaly::NoActivityTimestamp,
        Anomaly::UnparsableCreatedAt,
        Anomaly::FutureCreatedAt,
        Anomaly::FutureLastSeen,
        Anomaly::LastSeenBeforeCreated,
        Anomaly::UnparsableExpiresAt,
        Anomaly::UnparsableModifiedOn,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Anomaly::DeletedAtSet => "deleted_at_set",
            Anomaly::UnparsableRevokedAt => "unparsable_revoked_at",
            Anomaly::FutureRevokedAt => "future_revoked_at",
            Anomaly::UnparsableLastSeen => "unparsable_last_seen_at",
            Anomaly::NoActivityTimestamp => "no_activity_timestamp",
            Anomaly::UnparsableCreatedAt => "unparsable_created_at",
            Anomaly::FutureCreatedAt => "future_created_at",
            Anomaly::FutureLastSeen => "future_last_seen_at",
            Anomaly::LastSeenBeforeCreated => "last_seen_before_created",
            Anomaly::UnparsableExpiresAt => "unparsable_expires_at",
            Anomaly::UnparsableModifiedOn => "unparsable_modified_on",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// No rule selects it (or its data is not trusted: see [`Evaluation::anomaly`]).
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
    /// Set when the registration's data is not trusted; the verdict is then always `Keep`.
    pub anomaly: Option<Anomaly>,
}

impl Evaluation<'_> {
    fn untrusted(anomaly: Anomaly) -> Self {
        Evaluation {
            verdict: Verdict::Keep,
            anomaly: Some(anomaly),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{owner}: invalid glob {pattern:?}: {message}")]
pub struct GlobError {
    /// The exclusion or rule holding the pattern, e.g. `exclusion "vip"`.
    pub owner: String,
    pub pattern: String,
    pub message: String,
}

/// Something about the rules that is allowed but almost certainly not meant; `check-config`
/// prints these as warnings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleWarning {
    /// Every registration `rule` could select is selected first by the earlier rule `by`
    /// (the first matching rule wins), so `rule` never acts. Positions count from 1.
    Shadowed {
        rule: String,
        position: usize,
        by: String,
        by_position: usize,
    },
}

impl fmt::Display for RuleWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleWarning::Shadowed {
                rule,
                position,
                by,
                by_position,
            } => write!(
                f,
                "rule {rule:?} (#{position}) never acts: every registration it could select is \
                 taken first by rule {by:?} (#{by_position}), since the first matching rule \
                 wins; move {rule:?} above {by:?}, narrow {by:?}, or remove {rule:?}"
            ),
        }
    }
}

/// The fields rules read, once checked: only a registration without an anomaly has them.
#[derive(Debug, Clone, Copy)]
struct Facts {
    /// When it was last active (the later of `last_seen_at` and `created_at`) and from which.
    active_since: (DateTime<Utc>, IdleFrom),
    /// `revoked_at`, when revoked.
    revoked_at: Option<DateTime<Utc>>,
}

impl Facts {
    /// Checks every field a rule reads; the first one that cannot be trusted is the anomaly.
    fn read(reg: &Registration, now: DateTime<Utc>) -> Result<Facts, Anomaly> {
        let latest_plausible = now + FUTURE_TOLERANCE;
        if reg.deleted_at.is_some() {
            return Err(Anomaly::DeletedAtSet);
        }
        let revoked_at = match &reg.revoked_at {
            None => None,
            Some(Stamp::Valid(t)) if *t > latest_plausible => return Err(Anomaly::FutureRevokedAt),
            Some(Stamp::Valid(t)) => Some(*t),
            // `Missing` does not occur here (null reads as not revoked); treat it as unreadable.
            Some(Stamp::Invalid(_) | Stamp::Missing) => return Err(Anomaly::UnparsableRevokedAt),
        };
        Ok(Facts {
            active_since: active_since(&reg.last_seen_at, &reg.created_at, now)?,
            revoked_at,
        })
    }
}

/// When an object was last active, from its `last_seen_at` and `created_at`: the later of the
/// two, or `created_at` when it was never seen. Anything unreadable or implausible is the
/// anomaly.
fn active_since(
    last_seen_at: &Stamp,
    created_at: &Stamp,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, IdleFrom), Anomaly> {
    let latest_plausible = now + FUTURE_TOLERANCE;
    let (last_seen, created) = match (last_seen_at, created_at) {
        (Stamp::Invalid(_), _) => return Err(Anomaly::UnparsableLastSeen),
        (Stamp::Missing, Stamp::Missing | Stamp::Invalid(_)) => {
            return Err(Anomaly::NoActivityTimestamp)
        }
        (_, Stamp::Invalid(_)) => return Err(Anomaly::UnparsableCreatedAt),
        (l, c) => (l.valid(), c.valid()),
    };
    if created.is_some_and(|c| c > latest_plausible) {
        return Err(Anomaly::FutureCreatedAt);
    }
    if last_seen.is_some_and(|l| l > latest_plausible) {
        return Err(Anomaly::FutureLastSeen);
    }
    match (last_seen, created) {
        (Some(l), Some(c)) if l + FUTURE_TOLERANCE < c => Err(Anomaly::LastSeenBeforeCreated),
        (Some(l), Some(c)) if c > l => Ok((c, IdleFrom::CreatedAt)),
        (Some(l), _) => Ok((l, IdleFrom::LastSeenAt)),
        (None, Some(c)) => Ok((c, IdleFrom::NeverSeen)),
        (None, None) => Err(Anomaly::NoActivityTimestamp),
    }
}

/// The fields service-token rules read, once checked.
#[derive(Debug, Clone, Copy)]
struct TokenFacts {
    active_since: (DateTime<Utc>, IdleFrom),
    /// `None`: the token never expires.
    expires_at: Option<DateTime<Utc>>,
}

impl TokenFacts {
    fn read(token: &ServiceToken, now: DateTime<Utc>) -> Result<TokenFacts, Anomaly> {
        let expires_at = optional(&token.expires_at, Anomaly::UnparsableExpiresAt)?;
        Ok(TokenFacts {
            active_since: active_since(&token.last_seen_at, &token.created_at, now)?,
            expires_at,
        })
    }
}

/// The fields account-API-token rules read, once checked: `last_used_on` and `issued_on`
/// play `last_seen_at` and `created_at`.
#[derive(Debug, Clone, Copy)]
struct AccountTokenFacts {
    active_since: (DateTime<Utc>, IdleFrom),
    expires_on: Option<DateTime<Utc>>,
    modified_on: Option<DateTime<Utc>>,
}

impl AccountTokenFacts {
    fn read(token: &AccountApiToken, now: DateTime<Utc>) -> Result<Self, Anomaly> {
        let expires_on = optional(&token.expires_on, Anomaly::UnparsableExpiresAt)?;
        let modified_on = optional(&token.modified_on, Anomaly::UnparsableModifiedOn)?;
        Ok(AccountTokenFacts {
            active_since: active_since(&token.last_used_on, &token.issued_on, now)?,
            expires_on,
            modified_on,
        })
    }
}

/// A stamp that may be absent; set but unreadable, it is `anomaly`.
fn optional(stamp: &Stamp, anomaly: Anomaly) -> Result<Option<DateTime<Utc>>, Anomaly> {
    match stamp {
        Stamp::Missing => Ok(None),
        Stamp::Valid(t) => Ok(Some(*t)),
        Stamp::Invalid(_) => Err(anomaly),
    }
}

impl RuleSet {
    pub fn new(
        rules: &[RuleSettings],
        exclusions: &[ExclusionSettings],
    ) -> Result<Self, GlobError> {
        Ok(RuleSet {
            rules: rules
                .iter()
                .map(Rule::from_settings)
                .collect::<Result<_, _>>()?,
            exclusions: exclusions
                .iter()
                .map(Exclusion::from_settings)
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Warnings about the order of the rules; see [`rule_warnings`].
    pub fn warnings(&self) -> Vec<RuleWarning> {
        rule_warnings(&self.rules)
    }

    /// The rules of `kind`, in config order.
    pub fn rules_of(&self, kind: Kind) -> impl Iterator<Item = &Rule> {
        self.rules.iter().filter(move |r| r.resource == kind)
    }

    /// The kinds that at least one rule selects from, in the order of [`Kind::ALL`].
    pub fn kinds(&self) -> Vec<Kind> {
        Kind::ALL
            .into_iter()
            .filter(|k| self.rules_of(*k).next().is_some())
            .collect()
    }

    /// Each rule of `kind` on its own, in config order, without any exclusion: asking each
    /// one about an object names every rule that would select it, not only the first that
    /// wins (what `explain` shows).
    pub fn one_by_one(&self, kind: Kind) -> Vec<(&Rule, RuleSet)> {
        self.rules_of(kind)
            .map(|rule| {
                let alone = RuleSet {
                    rules: vec![rule.clone()],
                    exclusions: Vec::new(),
                };
                (rule, alone)
            })
            .collect()
    }

    pub fn evaluate(&self, reg: &Registration, now: DateTime<Utc>) -> Evaluation<'_> {
        let facts = match Facts::read(reg, now) {
            Ok(facts) => facts,
            Err(anomaly) => return Evaluation::untrusted(anomaly),
        };
        let selected = self
            .rules_of(Kind::DeviceRegistration)
            .find_map(|rule| rule.select(reg, &facts, now).map(|why| (rule, why)));
        self.verdict(selected, || self.exclusion_for(reg))
    }

    /// Asks the service-token rules about `token`: the first that selects it wins, unless an
    /// exclusion protects it.
    pub fn evaluate_service_token(
        &self,
        token: &ServiceToken,
        now: DateTime<Utc>,
    ) -> Evaluation<'_> {
        let facts = match TokenFacts::read(token, now) {
            Ok(facts) => facts,
            Err(anomaly) => return Evaluation::untrusted(anomaly),
        };
        let selected = self
            .rules_of(Kind::AccessServiceToken)
            .find_map(|rule| rule.select_token(token, &facts, now).map(|why| (rule, why)));
        self.verdict(selected, || {
            self.exclusion_for_parts(Kind::AccessServiceToken, &token.id, None, &token.name)
        })
    }

    /// Asks the account-API-token rules about `token`. The token the janitor runs with
    /// (`own`) is never acted on: selected, it is recorded excluded by "own token".
    pub fn evaluate_account_token(
        &self,
        token: &AccountApiToken,
        now: DateTime<Utc>,
        own: Option<&ResourceId>,
    ) -> Evaluation<'_> {
        let facts = match AccountTokenFacts::read(token, now) {
            Ok(facts) => facts,
            Err(anomaly) => return Evaluation::untrusted(anomaly),
        };
        let selected = self.rules_of(Kind::AccountApiToken).find_map(|rule| {
            rule.select_account_token(token, &facts, now)
                .map(|why| (rule, why))
        });
        let name = token.name.as_deref().unwrap_or_default();
        self.verdict(selected, || {
            if own.is_some_and(|own| own.key() == token.id.key()) {
                return Some(OWN_TOKEN);
            }
            self.exclusion_for_parts(Kind::AccountApiToken, &token.id, None, name)
        })
    }

    /// Asks the client-certificate rules about `cert`. Only an active certificate is ever
    /// selected: one whose revocation is under way or done is never acted on again.
    pub fn evaluate_certificate(
        &self,
        cert: &ClientCertificate,
        now: DateTime<Utc>,
    ) -> Evaluation<'_> {
        let expires_on = match optional(&cert.expires_on, Anomaly::UnparsableExpiresAt) {
            Ok(at) => at,
            Err(anomaly) => return Evaluation::untrusted(anomaly),
        };
        let selected = self.rules_of(Kind::ClientCertificate).find_map(|rule| {
            rule.select_certificate(cert, expires_on, now)
                .map(|why| (rule, why))
        });
        let name = cert.common_name.as_deref().unwrap_or_default();
        self.verdict(selected, || {
            self.exclusion_for_parts(Kind::ClientCertificate, &cert.id, None, name)
        })
    }

    fn verdict<'a>(
        &'a self,
        selected: Option<(&'a Rule, Why)>,
        exclusion: impl FnOnce() -> Option<&'a str>,
    ) -> Evaluation<'a> {
        let verdict = match selected {
            None => Verdict::Keep,
            Some((rule, why)) => match exclusion() {
                Some(exclusion) => Verdict::Excluded {
                    rule,
                    why,
                    exclusion,
                },
                None => Verdict::Act { rule, why },
            },
        };
        Evaluation {
            verdict,
            anomaly: None,
        }
    }

    /// The name of the first exclusion protecting `reg`, if any.
    pub fn exclusion_for(&self, reg: &Registration) -> Option<&str> {
        self.exclusion_for_parts(
            Kind::DeviceRegistration,
            &reg.id,
            reg.user_email(),
            &reg.device.name,
        )
    }

    /// The first exclusion protecting an object of `kind`, from the only fields exclusions
    /// look at (its id, its user's email, its name: a device's or a token's), so that a
    /// planned candidate can be checked again without keeping the whole object.
    pub fn exclusion_for_parts(
        &self,
        kind: Kind,
        id: &ResourceId,
        user_email: Option<&str>,
        name: &str,
    ) -> Option<&str> {
        if self.exclusions.is_empty() {
            return None;
        }
        let email = user_email.filter(|e| !e.is_empty()).map(fold_case);
        let subject = Subject {
            kind,
            id: id.key(),
            email: email.as_deref(),
            name,
        };
        self.exclusions
            .iter()
            .find(|e| e.protects(&subject))
            .map(|e| e.name.as_str())
    }
}

/// A filter of `mine` that is unset, or the same as `theirs`, lets through all `theirs` does.
fn same_or_none<T: PartialEq>(mine: &Option<T>, theirs: &Option<T>) -> bool {
    mine.is_none() || mine == theirs
}

/// The exclusion that protects the janitor's own API token, whatever the config says.
pub const OWN_TOKEN: &str = "own token";

/// Warnings about rules that can never act because an earlier rule takes every registration
/// they could select. Only a single earlier rule is considered (not a union of several), so
/// every warning is certain; some shadowed orders may go unwarned.
pub fn rule_warnings(rules: &[Rule]) -> Vec<RuleWarning> {
    let mut warnings = Vec::new();
    for (j, later) in rules.iter().enumerate() {
        if let Some((i, earlier)) = rules[..j]
            .iter()
            .enumerate()
            .find(|(_, earlier)| earlier.covers(later))
        {
            warnings.push(RuleWarning::Shadowed {
                rule: later.name.clone(),
                position: j + 1,
                by: earlier.name.clone(),
                by_position: i + 1,
            });
        }
    }
    warnings
}

/// Which revocation states a rule can select.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum States {
    Any,
    ActiveOnly,
    RevokedOnly,
}

impl Rule {
    fn from_settings(s: &RuleSettings) -> Result<Self, GlobError> {
        let owner = format!("rule {:?}", s.name);
        let names = match &s.names {
            None => None,
            Some(patterns) => Some(NameGlobs {
                set: globs(&owner, patterns, false)?,
                patterns: patterns.clone(),
            }),
        };
        Ok(Rule {
            name: s.name.clone(),
            resource: s.resource,
            action: s.action,
            idle: s.idle_days,
            revoked: s.revoked,
            revoked_min_days: s.revoked_min_days,
            active_only: s.active_only,
            registration_type: s.registration_type,
            expired_days: s.expired_days,
            unused_days: s.unused_days,
            disabled_days: s.disabled_days,
            names,
            common_names: match &s.common_names {
                None => None,
                Some(patterns) => Some(NameGlobs {
                    set: globs(&owner, patterns, false)?,
                    patterns: patterns.clone(),
                }),
            },
            certificate_authority: s.certificate_authority.clone(),
        })
    }

    /// A revoke rule selects only registrations that are not revoked yet: revoking again does
    /// nothing and would keep the registration from the rules behind it.
    fn skips_revoked(&self) -> bool {
        self.active_only || self.action == Action::Revoke
    }

    fn states(&self) -> Option<States> {
        match (self.revoked, self.skips_revoked()) {
            (true, true) => None,
            (true, false) => Some(States::RevokedOnly),
            (false, true) => Some(States::ActiveOnly),
            (false, false) => Some(States::Any),
        }
    }

    /// Whether every registration `other` can select is also selected by `self`. False when
    /// either rule can select nothing at all.
    fn covers(&self, other: &Rule) -> bool {
        if self.resource != other.resource {
            return false;
        }
        if self.resource != Kind::DeviceRegistration {
            return self.covers_token_rule(other);
        }
        let selects_something = |r: &Rule| r.idle.is_some() || r.revoked;
        let (Some(mine), Some(theirs)) = (self.states(), other.states()) else {
            return false;
        };
        if !selects_something(self) || !selects_something(other) {
            return false;
        }
        if self.registration_type.is_some() && self.registration_type != other.registration_type {
            return false;
        }
        if mine != States::Any && mine != theirs {
            return false;
        }
        // Both are revoked rules here (the states matched): an older minimum age covers.
        if self.revoked && self.revoked_min_days.unwrap_or(0) > other.revoked_min_days.unwrap_or(0)
        {
            return false;
        }
        match (self.idle, other.idle) {
            (None, _) => true,
            (Some(mine), Some(theirs)) => mine <= theirs,
            (Some(_), None) => false,
        }
    }

    /// For the rules of tokens and certificates: every condition of `self` is implied by one
    /// of `other`'s (an older threshold of the same condition), and each of `self`'s filters,
    /// if set, is the same as `other`'s.
    fn covers_token_rule(&self, other: &Rule) -> bool {
        let implied = |mine: Option<u32>, theirs: Option<u32>| match (mine, theirs) {
            (None, _) => true,
            (Some(m), Some(t)) => m <= t,
            (Some(_), None) => false,
        };
        let selects = |r: &Rule| {
            r.expired_days.is_some() || r.unused_days.is_some() || r.disabled_days.is_some()
        };
        selects(self)
            && selects(other)
            && implied(self.expired_days, other.expired_days)
            && implied(self.unused_days, other.unused_days)
            && implied(self.disabled_days, other.disabled_days)
            && same_or_none(&self.names, &other.names)
            && same_or_none(&self.common_names, &other.common_names)
            && same_or_none(&self.certificate_authority, &other.certificate_authority)
    }

    /// An account-API-token rule: all conditions must hold; the reason is the expiry, else
    /// the disabling, else the disuse. `expired_days` reads `expires_on`, or, for a token
    /// whose status is `expired` without one, `modified_on`; the reason names which.
    fn select_account_token(
        &self,
        token: &AccountApiToken,
        facts: &AccountTokenFacts,
        now: DateTime<Utc>,
    ) -> Option<Why> {
        if let Some(names) = &self.names {
            if !names
                .set
                .is_match(token.name.as_deref().unwrap_or_default())
            {
                return None;
            }
        }
        let status = token.status.as_deref();
        let at_least = |since: DateTime<Utc>, threshold: u32| {
            let age = now - since;
            (age >= TimeDelta::days(i64::from(threshold))).then(|| age.num_days())
        };
        let mut why = None;
        if let Some(threshold) = self.unused_days {
            let (since, from) = facts.active_since;
            why = Some(Why::Unused {
                days: at_least(since, threshold)?,
                threshold,
                since,
                from,
                stamps: ACCOUNT_TOKEN_STAMPS,
            });
        }
        if let Some(threshold) = self.disabled_days {
            let since = facts.modified_on.filter(|_| status == Some("disabled"))?;
            why = Some(Why::Disabled {
                days: at_least(since, threshold)?,
                threshold,
                since,
            });
        }
        if let Some(threshold) = self.expired_days {
            let (at, field) = match (facts.expires_on, facts.modified_on) {
                (Some(at), _) => (at, "expires_on"),
                (None, Some(at)) if status == Some("expired") => (at, "modified_on"),
                _ => return None,
            };
            why = Some(Why::Expired {
                days: at_least(at, threshold)?,
                threshold,
                at,
                field,
            });
        }
        why
    }

    /// A client-certificate rule: only an active certificate, expired `expired_days` ago,
    /// within the filters.
    fn select_certificate(
        &self,
        cert: &ClientCertificate,
        expires_on: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Option<Why> {
        if cert.status.as_deref() != Some("active") {
            return None;
        }
        if let Some(names) = &self.common_names {
            if !names
                .set
                .is_match(cert.common_name.as_deref().unwrap_or_default())
            {
                return None;
            }
        }
        if let Some(wanted) = &self.certificate_authority {
            let ca = cert.certificate_authority.as_ref()?;
            if ca.id.as_deref() != Some(wanted) && ca.name.as_deref() != Some(wanted) {
                return None;
            }
        }
        let threshold = self.expired_days?;
        let at = expires_on?;
        let age = now - at;
        (age >= TimeDelta::days(i64::from(threshold))).then(|| Why::Expired {
            days: age.num_days(),
            threshold,
            at,
            field: "expires_on",
        })
    }

    /// A service-token rule: all conditions must hold; the reason reported is the expiry
    /// when the rule asks for it, else the disuse. The name filter only narrows.
    fn select_token(
        &self,
        token: &ServiceToken,
        facts: &TokenFacts,
        now: DateTime<Utc>,
    ) -> Option<Why> {
        if let Some(names) = &self.names {
            if !names.set.is_match(&token.name) {
                return None;
            }
        }
        let mut why = None;
        if let Some(threshold) = self.unused_days {
            let (since, from) = facts.active_since;
            let unused_for = now - since;
            if unused_for < TimeDelta::days(i64::from(threshold)) {
                return None;
            }
            why = Some(Why::Unused {
                days: unused_for.num_days(),
                threshold,
                since,
                from,
                stamps: SERVICE_TOKEN_STAMPS,
            });
        }
        if let Some(threshold) = self.expired_days {
            let at = facts.expires_at?;
            let expired_for = now - at;
            if expired_for < TimeDelta::days(i64::from(threshold)) {
                return None;
            }
            why = Some(Why::Expired {
                days: expired_for.num_days(),
                threshold,
                at,
                field: "expires_at",
            });
        }
        why
    }

    /// All conditions must hold. The reason reported is the selecting condition (idle or
    /// revoked); filters only narrow.
    fn select(&self, reg: &Registration, facts: &Facts, now: DateTime<Utc>) -> Option<Why> {
        if let Some(t) = self.registration_type {
            if reg.registration_type != Some(t) {
                return None;
            }
        }
        if self.skips_revoked() && reg.is_revoked() {
            return None;
        }
        let mut why = None;
        if self.revoked {
            let revoked_at = facts.revoked_at?;
            let age = (now - revoked_at).max(TimeDelta::zero());
            if let Some(min) = self.revoked_min_days {
                if age < TimeDelta::days(i64::from(min)) {
                    return None;
                }
            }
            why = Some(Why::Revoked {
                days: age.num_days(),
            });
        }
        if let Some(threshold) = self.idle {
            let (since, from) = facts.active_since;
            let idle_for = now - since;
            if idle_for < TimeDelta::days(i64::from(threshold)) {
                return None;
            }
            why = Some(Why::Idle {
                days: idle_for.num_days(),
                threshold,
                since,
                from,
            });
        }
        why
    }
}

/// What exclusions look at, prepared once per check.
struct Subject<'a> {
    kind: Kind,
    id: IdKey,
    /// Case-folded; `None` when there is no user or an empty email.
    email: Option<&'a str>,
    /// The device's name, the token's name.
    name: &'a str,
}

impl Exclusion {
    fn from_settings(s: &ExclusionSettings) -> Result<Self, GlobError> {
        let owner = format!("exclusion {:?}", s.name);
        Ok(Exclusion {
            name: s.name.clone(),
            user_emails: globs(&owner, &s.user_emails, true)?,
            device_names: globs(&owner, &s.device_names, false)?,
            registration_ids: s.registration_ids.iter().map(ResourceId::key).collect(),
            no_user: s.no_user,
            service_token_names: globs(&owner, &s.service_token_names, false)?,
            service_token_ids: s.service_token_ids.iter().map(ResourceId::key).collect(),
            account_api_token_names: globs(&owner, &s.account_api_token_names, false)?,
            account_api_token_ids: s
                .account_api_token_ids
                .iter()
                .map(ResourceId::key)
                .collect(),
            common_names: globs(&owner, &s.common_names, false)?,
            client_certificate_ids: s
                .client_certificate_ids
                .iter()
                .map(ResourceId::key)
                .collect(),
        })
    }

    /// Each criterion speaks of one kind: a `device_name` never protects a token.
    fn protects(&self, s: &Subject<'_>) -> bool {
        match s.kind {
            Kind::DeviceRegistration => {
                (self.no_user && s.email.is_none_or(is_service_identity))
                    || s.email.is_some_and(|e| self.user_emails.is_match(e))
                    || self.device_names.is_match(s.name)
                    || self.registration_ids.contains(&s.id)
            }
            Kind::AccessServiceToken => {
                self.service_token_names.is_match(s.name) || self.service_token_ids.contains(&s.id)
            }
            Kind::AccountApiToken => {
                self.account_api_token_names.is_match(s.name)
                    || self.account_api_token_ids.contains(&s.id)
            }
            Kind::ClientCertificate => {
                self.common_names.is_match(s.name) || self.client_certificate_ids.contains(&s.id)
            }
        }
    }
}

/// Registrations enrolled with a service token show this identity instead of a user. `email`
/// is case-folded.
fn is_service_identity(email: &str) -> bool {
    email.starts_with("non_identity@") && email.ends_with(".cloudflareaccess.com")
}

/// Unicode default case folding (full folding, CaseFolding.txt statuses C and F), the
/// operation Unicode defines for caseless matching: `ÄRZTE` and `ärzte` fold alike, and so do
/// `STRASSE` and `straße`. `str::to_lowercase` is not a folding: it leaves `ß`, `ſ` and `ϐ`
/// apart from `ss`, `s` and `β`, and its final-sigma rule makes `Σ` depend on its neighbours.
/// Used wherever the README promises that case is ignored: email globs, the service-token
/// identity and `audit actions --user`. ASCII without capitals is returned as is.
pub fn fold_case(s: &str) -> Cow<'_, str> {
    if s.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(caseless::default_case_fold_str(s))
    }
}

/// Compiles `patterns`; with `fold`, each pattern is case-folded first and the set must be
/// matched against case-folded text (glob syntax is ASCII punctuation, which folding keeps).
fn globs(owner: &str, patterns: &[String], fold: bool) -> Result<GlobSet, GlobError> {
    let mut set = GlobSetBuilder::new();
    for p in patterns {
        let pattern = if fold {
            fold_case(p)
        } else {
            Cow::Borrowed(p.as_str())
        };
        let glob = GlobBuilder::new(&pattern)
            .literal_separator(false)
            .build()
            .map_err(|e| GlobError {
                owner: owner.to_owned(),
                pattern: p.clone(),
                message: e.kind().to_string(),
            })?;
        set.add(glob);
    }
    set.build().map_err(|e| GlobError {
        owner: owner.to_owned(),
        pattern: patterns.join(", "),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloudflare::{CertificateAuthority, Device, User};
    use crate::resource::Kind;

    fn now() -> DateTime<Utc> {
        "2026-06-01T12:00:00Z".parse().unwrap()
    }

    fn days_ago(d: i64) -> Stamp {
        Stamp::Valid(now() - TimeDelta::days(d))
    }

    fn reg() -> Registration {
        Registration {
            id: ResourceId::parse("11111111-1111-4111-8111-111111111111").unwrap(),
            created_at: days_ago(400),
            last_seen_at: days_ago(1),
            revoked_at: None,
            deleted_at: None,
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
        RuleSettings::new(name, Kind::DeviceRegistration, Action::Delete)
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
        ExclusionSettings::named("vip")
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
                "revoked at an unparsable time is untouchable by a rule without age",
                vec![revoked(None)],
                vec![],
                Registration {
                    revoked_at: Some(Stamp::Invalid("?".into())),
                    ..reg()
                },
                Keep,
                Some(Anomaly::UnparsableRevokedAt),
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
                Some(Anomaly::UnparsableRevokedAt),
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
            // Item 5: a field a rule reads that cannot be read makes the registration
            // untouchable by every rule, and is counted.
            (
                "revoked_at of an empty string is untouchable",
                vec![revoked(None)],
                vec![],
                Registration {
                    revoked_at: Some(Stamp::Invalid(String::new())),
                    ..reg()
                },
                Keep,
                Some(Anomaly::UnparsableRevokedAt),
            ),
            (
                "revoked_at of false is untouchable",
                vec![revoked(None)],
                vec![],
                Registration {
                    revoked_at: Some(Stamp::Invalid("false".into())),
                    ..reg()
                },
                Keep,
                Some(Anomaly::UnparsableRevokedAt),
            ),
            (
                "revoked_at of an object is untouchable",
                vec![revoked(None)],
                vec![],
                Registration {
                    revoked_at: Some(Stamp::Invalid("{}".into())),
                    ..reg()
                },
                Keep,
                Some(Anomaly::UnparsableRevokedAt),
            ),
            (
                "unparsable revoked_at is untouchable by an idle rule too",
                vec![idle(90)],
                vec![],
                Registration {
                    last_seen_at: days_ago(300),
                    revoked_at: Some(Stamp::Invalid("0".into())),
                    ..reg()
                },
                Keep,
                Some(Anomaly::UnparsableRevokedAt),
            ),
            (
                "unparsable last_seen_at is untouchable by a revoked rule too",
                vec![revoked(None)],
                vec![],
                Registration {
                    last_seen_at: Stamp::Invalid("soon".into()),
                    revoked_at: revoked_days_ago(30),
                    ..reg()
                },
                Keep,
                Some(Anomaly::UnparsableLastSeen),
            ),
            (
                "unparsable created_at is untouchable by an idle rule",
                vec![idle(90)],
                vec![],
                Registration {
                    last_seen_at: days_ago(300),
                    created_at: Stamp::Invalid("the day before".into()),
                    ..reg()
                },
                Keep,
                Some(Anomaly::UnparsableCreatedAt),
            ),
            (
                "unparsable created_at is untouchable by a revoked rule",
                vec![revoked(None)],
                vec![],
                Registration {
                    created_at: Stamp::Invalid("".into()),
                    revoked_at: revoked_days_ago(30),
                    ..reg()
                },
                Keep,
                Some(Anomaly::UnparsableCreatedAt),
            ),
            (
                "no activity timestamp is untouchable by a revoked rule",
                vec![revoked(None)],
                vec![],
                Registration {
                    last_seen_at: Stamp::Missing,
                    created_at: Stamp::Missing,
                    revoked_at: revoked_days_ago(30),
                    ..reg()
                },
                Keep,
                Some(Anomaly::NoActivityTimestamp),
            ),
            // Item 13: idleness from the later of last_seen_at and created_at; impossible
            // times are untouchable.
            (
                "last_seen_at in year 1 with created_at yesterday is untouchable",
                vec![idle(90)],
                vec![],
                Registration {
                    last_seen_at: Stamp::parse("0001-01-01T00:00:00Z"),
                    created_at: days_ago(1),
                    ..reg()
                },
                Keep,
                Some(Anomaly::LastSeenBeforeCreated),
            ),
            (
                "last_seen_at at the epoch with created_at yesterday is untouchable",
                vec![idle(90)],
                vec![],
                Registration {
                    last_seen_at: Stamp::parse("1970-01-01T00:00:00Z"),
                    created_at: days_ago(1),
                    ..reg()
                },
                Keep,
                Some(Anomaly::LastSeenBeforeCreated),
            ),
            (
                "last_seen_at 200 days ago with created_at 2 days ago is untouchable",
                vec![idle(90)],
                vec![],
                Registration {
                    last_seen_at: days_ago(200),
                    created_at: days_ago(2),
                    ..reg()
                },
                Keep,
                Some(Anomaly::LastSeenBeforeCreated),
            ),
            (
                "last_seen_at ten minutes before created_at is untouchable",
                vec![idle(90)],
                vec![],
                Registration {
                    last_seen_at: Stamp::Valid(
                        now() - TimeDelta::days(100) - TimeDelta::minutes(10),
                    ),
                    created_at: days_ago(100),
                    ..reg()
                },
                Keep,
                Some(Anomaly::LastSeenBeforeCreated),
            ),
            (
                "last_seen_at three minutes before created_at is skew: idle from created_at",
                vec![idle(90)],
                vec![],
                Registration {
                    last_seen_at: Stamp::Valid(
                        now() - TimeDelta::days(100) - TimeDelta::minutes(3),
                    ),
                    created_at: days_ago(100),
                    ..reg()
                },
                Act("idle"),
                None,
            ),
            (
                "skew that makes created_at the later one can keep a registration short of N days",
                vec![idle(90)],
                vec![],
                Registration {
                    last_seen_at: Stamp::Valid(now() - TimeDelta::days(90) - TimeDelta::minutes(1)),
                    created_at: Stamp::Valid(now() - TimeDelta::days(90) + TimeDelta::minutes(1)),
                    ..reg()
                },
                Keep,
                None,
            ),
            (
                "created_at 30 days in the future is untouchable",
                vec![idle(90)],
                vec![],
                Registration {
                    last_seen_at: days_ago(200),
                    created_at: days_ago(-30),
                    ..reg()
                },
                Keep,
                Some(Anomaly::FutureCreatedAt),
            ),
            (
                "never seen with created_at in the future is untouchable",
                vec![idle(90)],
                vec![],
                Registration {
                    last_seen_at: Stamp::Missing,
                    created_at: days_ago(-1),
                    ..reg()
                },
                Keep,
                Some(Anomaly::FutureCreatedAt),
            ),
            (
                "created_at in the future is untouchable by a revoked rule",
                vec![revoked(None)],
                vec![],
                Registration {
                    created_at: days_ago(-3),
                    last_seen_at: Stamp::Missing,
                    revoked_at: revoked_days_ago(10),
                    ..reg()
                },
                Keep,
                Some(Anomaly::FutureCreatedAt),
            ),
            (
                "revoked_at in the future is untouchable",
                vec![revoked(None)],
                vec![],
                Registration {
                    revoked_at: revoked_days_ago(-2),
                    ..reg()
                },
                Keep,
                Some(Anomaly::FutureRevokedAt),
            ),
            (
                "revoked_at a minute ahead is clock skew, revoked 0 days ago",
                vec![revoked(None)],
                vec![],
                Registration {
                    revoked_at: Some(Stamp::Valid(now() + TimeDelta::minutes(1))),
                    ..reg()
                },
                Act("revoked"),
                None,
            ),
            (
                "created_at missing: idle from last_seen_at",
                vec![idle(90)],
                vec![],
                Registration {
                    last_seen_at: days_ago(100),
                    created_at: Stamp::Missing,
                    ..reg()
                },
                Act("idle"),
                None,
            ),
            (
                "last_seen_at after created_at: idle from last_seen_at",
                vec![idle(90)],
                vec![],
                Registration {
                    last_seen_at: days_ago(89),
                    created_at: days_ago(100),
                    ..reg()
                },
                Keep,
                None,
            ),
            // Item 14: a revoke rule never selects a revoked registration.
            (
                "revoke rule skips a registration already revoked",
                vec![RuleSettings {
                    action: Action::Revoke,
                    ..idle(90)
                }],
                vec![],
                Registration {
                    last_seen_at: days_ago(200),
                    revoked_at: revoked_days_ago(30),
                    ..reg()
                },
                Keep,
                None,
            ),
            (
                "revoked registration falls through a revoke rule to the delete rule behind it",
                vec![
                    RuleSettings {
                        action: Action::Revoke,
                        ..idle(90)
                    },
                    revoked(None),
                ],
                vec![],
                Registration {
                    last_seen_at: days_ago(200),
                    revoked_at: revoked_days_ago(30),
                    ..reg()
                },
                Act("revoked"),
                None,
            ),
            (
                "revoke rule still selects an active idle registration",
                vec![
                    RuleSettings {
                        action: Action::Revoke,
                        ..idle(90)
                    },
                    revoked(None),
                ],
                vec![],
                Registration {
                    last_seen_at: days_ago(200),
                    ..reg()
                },
                Act("idle"),
                None,
            ),
            // Item 6: exclusions ignore case as the README promises.
            (
                "registration id exclusion in capitals protects the id listed in lowercase",
                vec![idle(90)],
                vec![ExclusionSettings {
                    registration_ids: vec![ResourceId::parse(
                        "11111111-1111-4111-8111-11111111111A",
                    )
                    .unwrap()],
                    ..exclusion()
                }],
                Registration {
                    id: ResourceId::parse("11111111-1111-4111-8111-11111111111a").unwrap(),
                    last_seen_at: days_ago(200),
                    ..reg()
                },
                Excluded("vip"),
                None,
            ),
            (
                "registration id exclusion protects the id listed in capitals",
                vec![idle(90)],
                vec![ExclusionSettings {
                    registration_ids: vec![ResourceId::parse(
                        "aaaaaaaa-1111-4111-8111-11111111111b",
                    )
                    .unwrap()],
                    ..exclusion()
                }],
                Registration {
                    id: ResourceId::parse("AAAAAAAA-1111-4111-8111-11111111111B").unwrap(),
                    last_seen_at: days_ago(200),
                    ..reg()
                },
                Excluded("vip"),
                None,
            ),
            (
                "registration id exclusion without hyphens protects the same UUID",
                vec![idle(90)],
                vec![ExclusionSettings {
                    registration_ids: vec![
                        ResourceId::parse("11111111111141118111111111111111").unwrap()
                    ],
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
                "registration id exclusion does not protect another id",
                vec![idle(90)],
                vec![ExclusionSettings {
                    registration_ids: vec![ResourceId::parse(
                        "11111111-1111-4111-8111-111111111112",
                    )
                    .unwrap()],
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
                "email glob in lowercase umlauts protects the user in capitals",
                vec![idle(90)],
                vec![ExclusionSettings {
                    user_emails: vec!["ärzte@example.com".into()],
                    ..exclusion()
                }],
                Registration {
                    last_seen_at: days_ago(200),
                    user: Some(User {
                        email: Some("ÄRZTE@example.com".into()),
                        ..User::default()
                    }),
                    ..reg()
                },
                Excluded("vip"),
                None,
            ),
            (
                "email glob in capitals protects a non-ASCII domain in lowercase",
                vec![idle(90)],
                vec![ExclusionSettings {
                    user_emails: vec!["*@BÖRSE.EXAMPLE".into()],
                    ..exclusion()
                }],
                Registration {
                    last_seen_at: days_ago(200),
                    user: Some(User {
                        email: Some("élise@börse.example".into()),
                        ..User::default()
                    }),
                    ..reg()
                },
                Excluded("vip"),
                None,
            ),
            (
                "email glob with sharp s protects the same name spelled SS (full case folding)",
                vec![idle(90)],
                vec![ExclusionSettings {
                    user_emails: vec!["straße@example.com".into()],
                    ..exclusion()
                }],
                Registration {
                    last_seen_at: days_ago(200),
                    user: Some(User {
                        email: Some("STRASSE@example.com".into()),
                        ..User::default()
                    }),
                    ..reg()
                },
                Excluded("vip"),
                None,
            ),
            (
                "email glob does not protect a different non-ASCII name",
                vec![idle(90)],
                vec![ExclusionSettings {
                    user_emails: vec!["ärzte@example.com".into()],
                    ..exclusion()
                }],
                Registration {
                    last_seen_at: days_ago(200),
                    user: Some(User {
                        email: Some("ARZTE@example.com".into()),
                        ..User::default()
                    }),
                    ..reg()
                },
                Act("idle"),
                None,
            ),
            (
                "no_user protects the service-token identity in mixed case",
                vec![idle(90)],
                vec![ExclusionSettings {
                    no_user: true,
                    ..exclusion()
                }],
                Registration {
                    last_seen_at: days_ago(200),
                    user: Some(User {
                        email: Some("Non_Identity@team.cloudflareaccess.com".into()),
                        ..User::default()
                    }),
                    ..reg()
                },
                Excluded("vip"),
                None,
            ),
            (
                "no_user protects the service-token identity in capitals",
                vec![idle(90)],
                vec![ExclusionSettings {
                    no_user: true,
                    ..exclusion()
                }],
                Registration {
                    last_seen_at: days_ago(200),
                    user: Some(User {
                        email: Some("NON_IDENTITY@ACME.CLOUDFLAREACCESS.COM".into()),
                        ..User::default()
                    }),
                    ..reg()
                },
                Excluded("vip"),
                None,
            ),
            // Item 17: deleted_at set is never selected.
            (
                "deleted_at set is untouchable",
                vec![idle(90)],
                vec![],
                Registration {
                    last_seen_at: days_ago(200),
                    deleted_at: Some(days_ago(1)),
                    ..reg()
                },
                Keep,
                Some(Anomaly::DeletedAtSet),
            ),
            (
                "deleted_at set to garbage is untouchable",
                vec![revoked(None)],
                vec![],
                Registration {
                    revoked_at: revoked_days_ago(30),
                    deleted_at: Some(Stamp::Invalid("yes".into())),
                    ..reg()
                },
                Keep,
                Some(Anomaly::DeletedAtSet),
            ),
        ];
        for (name, rules, exclusions, registration, expect, anomaly) in cases {
            let set = RuleSet::new(&rules, &exclusions).unwrap();
            let eval = set.evaluate(&registration, now());
            let got = match eval.verdict {
                Verdict::Keep => "keep".to_owned(),
                Verdict::Act { rule, .. } => format!("act {}", rule.name),
                Verdict::Excluded { exclusion, .. } => format!("excluded {exclusion}"),
            };
            let want = match expect {
                Keep => "keep".to_owned(),
                Act(rule) => format!("act {rule}"),
                Excluded(exclusion) => format!("excluded {exclusion}"),
            };
            assert_eq!(got, want, "case: {name}");
            assert_eq!(eval.anomaly, anomaly, "case: {name}");
        }
    }

    fn token() -> ServiceToken {
        ServiceToken {
            id: ResourceId::parse("3f6b0c2e-1111-4a53-9d0e-5b7a3f1c2d4e").unwrap(),
            name: "ci-deploy-01".into(),
            created_at: days_ago(400),
            last_seen_at: days_ago(1),
            expires_at: Stamp::Valid(now() + TimeDelta::days(30)),
        }
    }

    fn token_rule(name: &str, expired: Option<u32>, unused: Option<u32>) -> RuleSettings {
        RuleSettings {
            expired_days: expired,
            unused_days: unused,
            ..RuleSettings::new(name, Kind::AccessServiceToken, Action::Delete)
        }
    }

    fn token_exclusion(names: &[&str], ids: &[&str]) -> ExclusionSettings {
        ExclusionSettings {
            name: "keep".into(),
            service_token_names: names.iter().map(|n| (*n).to_owned()).collect(),
            service_token_ids: ids.iter().map(|i| ResourceId::parse(i).unwrap()).collect(),
            ..exclusion()
        }
    }

    #[test]
    fn service_token_rule_table() {
        use Expect::*;
        let expired = || token_rule("expired", Some(30), None);
        let unused = || token_rule("unused", None, Some(90));
        let at = |d: i64| Stamp::Valid(now() - TimeDelta::days(d));
        let second_short =
            |d: i64| Stamp::Valid(now() - TimeDelta::days(d) + TimeDelta::seconds(1));
        type Case = (
            &'static str,
            Vec<RuleSettings>,
            Vec<ExclusionSettings>,
            ServiceToken,
            Expect,
            Option<Anomaly>,
        );
        let cases: Vec<Case> = vec![
            (
                "a used token that expires later is kept",
                vec![expired(), unused()],
                vec![],
                token(),
                Keep,
                None,
            ),
            (
                "expired exactly N days ago is selected",
                vec![expired()],
                vec![],
                ServiceToken {
                    expires_at: at(30),
                    ..token()
                },
                Act("expired"),
                None,
            ),
            (
                "expired one second short of N days is kept",
                vec![expired()],
                vec![],
                ServiceToken {
                    expires_at: second_short(30),
                    ..token()
                },
                Keep,
                None,
            ),
            (
                "expired_days = 0 takes a token the moment it expires",
                vec![token_rule("now", Some(0), None)],
                vec![],
                ServiceToken {
                    expires_at: at(0),
                    ..token()
                },
                Act("now"),
                None,
            ),
            (
                "a token that never expires is never expired",
                vec![expired()],
                vec![],
                ServiceToken {
                    expires_at: Stamp::Missing,
                    ..token()
                },
                Keep,
                None,
            ),
            (
                "unused exactly N days is selected",
                vec![unused()],
                vec![],
                ServiceToken {
                    last_seen_at: at(90),
                    ..token()
                },
                Act("unused"),
                None,
            ),
            (
                "unused one second short of N days is kept",
                vec![unused()],
                vec![],
                ServiceToken {
                    last_seen_at: second_short(90),
                    ..token()
                },
                Keep,
                None,
            ),
            (
                "never seen counts from an old created_at",
                vec![unused()],
                vec![],
                ServiceToken {
                    last_seen_at: Stamp::Missing,
                    created_at: at(100),
                    ..token()
                },
                Act("unused"),
                None,
            ),
            (
                "never seen and created recently is kept",
                vec![unused()],
                vec![],
                ServiceToken {
                    last_seen_at: Stamp::Missing,
                    created_at: at(10),
                    ..token()
                },
                Keep,
                None,
            ),
            (
                "a token created after its last_seen_at counts from created_at",
                vec![unused()],
                vec![],
                ServiceToken {
                    last_seen_at: at(200),
                    created_at: at(200),
                    ..token()
                },
                Act("unused"),
                None,
            ),
            (
                "neither stamp: never selected, an anomaly",
                vec![unused(), expired()],
                vec![],
                ServiceToken {
                    last_seen_at: Stamp::Missing,
                    created_at: Stamp::Missing,
                    expires_at: at(400),
                    ..token()
                },
                Keep,
                Some(Anomaly::NoActivityTimestamp),
            ),
            (
                "unparsable last_seen_at: an anomaly, even for an expiry rule",
                vec![expired()],
                vec![],
                ServiceToken {
                    last_seen_at: Stamp::Invalid("soon".into()),
                    expires_at: at(400),
                    ..token()
                },
                Keep,
                Some(Anomaly::UnparsableLastSeen),
            ),
            (
                "null last_seen_at and unparsable created_at: an anomaly",
                vec![unused()],
                vec![],
                ServiceToken {
                    last_seen_at: Stamp::Missing,
                    created_at: Stamp::Invalid("x".into()),
                    ..token()
                },
                Keep,
                Some(Anomaly::NoActivityTimestamp),
            ),
            (
                "unparsable expires_at: an anomaly",
                vec![unused()],
                vec![],
                ServiceToken {
                    expires_at: Stamp::Invalid("never".into()),
                    last_seen_at: at(400),
                    ..token()
                },
                Keep,
                Some(Anomaly::UnparsableExpiresAt),
            ),
            (
                "last_seen_at in the future: an anomaly",
                vec![unused()],
                vec![],
                ServiceToken {
                    last_seen_at: Stamp::Valid(now() + TimeDelta::days(2)),
                    ..token()
                },
                Keep,
                Some(Anomaly::FutureLastSeen),
            ),
            (
                "both conditions must hold",
                vec![token_rule("both", Some(30), Some(90))],
                vec![],
                ServiceToken {
                    expires_at: at(60),
                    last_seen_at: at(10),
                    ..token()
                },
                Keep,
                None,
            ),
            (
                "both conditions holding",
                vec![token_rule("both", Some(30), Some(90))],
                vec![],
                ServiceToken {
                    expires_at: at(60),
                    last_seen_at: at(100),
                    ..token()
                },
                Act("both"),
                None,
            ),
            (
                "the name filter narrows",
                vec![RuleSettings {
                    names: Some(vec!["backup-*".into()]),
                    ..expired()
                }],
                vec![],
                ServiceToken {
                    expires_at: at(60),
                    ..token()
                },
                Keep,
                None,
            ),
            (
                "the name filter matches",
                vec![RuleSettings {
                    names: Some(vec!["ci-*".into()]),
                    ..expired()
                }],
                vec![],
                ServiceToken {
                    expires_at: at(60),
                    ..token()
                },
                Act("expired"),
                None,
            ),
            (
                "the name filter is case-sensitive",
                vec![RuleSettings {
                    names: Some(vec!["CI-*".into()]),
                    ..expired()
                }],
                vec![],
                ServiceToken {
                    expires_at: at(60),
                    ..token()
                },
                Keep,
                None,
            ),
            (
                "the first matching rule wins",
                vec![unused(), expired()],
                vec![],
                ServiceToken {
                    expires_at: at(60),
                    last_seen_at: at(100),
                    ..token()
                },
                Act("unused"),
                None,
            ),
            (
                "a registration rule never selects a token",
                vec![idle(1), revoked(None)],
                vec![],
                ServiceToken {
                    expires_at: at(60),
                    last_seen_at: at(100),
                    ..token()
                },
                Keep,
                None,
            ),
            (
                "service_token_name protects",
                vec![expired()],
                vec![token_exclusion(&["ci-deploy-*"], &[])],
                ServiceToken {
                    expires_at: at(60),
                    ..token()
                },
                Excluded("keep"),
                None,
            ),
            (
                "service_token_id protects, whatever the case",
                vec![expired()],
                vec![token_exclusion(
                    &[],
                    &["3F6B0C2E-1111-4A53-9D0E-5B7A3F1C2D4E"],
                )],
                ServiceToken {
                    expires_at: at(60),
                    ..token()
                },
                Excluded("keep"),
                None,
            ),
            (
                "a registration criterion never protects a token",
                vec![expired()],
                vec![ExclusionSettings {
                    device_names: vec!["ci-*".into()],
                    no_user: true,
                    ..exclusion()
                }],
                ServiceToken {
                    expires_at: at(60),
                    ..token()
                },
                Act("expired"),
                None,
            ),
        ];
        for (name, rules, exclusions, token, expect, anomaly) in cases {
            let set = RuleSet::new(&rules, &exclusions).unwrap();
            let eval = set.evaluate_service_token(&token, now());
            let got = match eval.verdict {
                Verdict::Keep => Keep,
                Verdict::Act { rule, .. } => Act(rule.name.clone().leak()),
                Verdict::Excluded { exclusion, .. } => Excluded(exclusion.to_owned().leak()),
            };
            assert_eq!(got, expect, "case: {name}");
            assert_eq!(eval.anomaly, anomaly, "case: {name}");
        }
    }

    fn account_token() -> AccountApiToken {
        AccountApiToken {
            id: ResourceId::parse("0123456789abcdef0123456789abcdef").unwrap(),
            name: Some("ci-deploy".into()),
            status: Some("active".into()),
            issued_on: days_ago(400),
            modified_on: days_ago(400),
            expires_on: Stamp::Missing,
            last_used_on: days_ago(1),
        }
    }

    fn account_rule(
        name: &str,
        expired: Option<u32>,
        disabled: Option<u32>,
        unused: Option<u32>,
    ) -> RuleSettings {
        RuleSettings {
            expired_days: expired,
            disabled_days: disabled,
            unused_days: unused,
            ..RuleSettings::new(name, Kind::AccountApiToken, Action::Delete)
        }
    }

    fn verdict_of(eval: &Evaluation<'_>) -> Expect {
        match &eval.verdict {
            Verdict::Keep => Expect::Keep,
            Verdict::Act { rule, .. } => Expect::Act(rule.name.clone().leak()),
            Verdict::Excluded { exclusion, .. } => Expect::Excluded((*exclusion).to_owned().leak()),
        }
    }

    #[test]
    fn account_token_rule_table() {
        use Expect::*;
        let expired = || account_rule("expired", Some(30), None, None);
        let disabled = || account_rule("disabled", None, Some(60), None);
        let unused = || account_rule("unused", None, None, Some(90));
        let at = |d: i64| Stamp::Valid(now() - TimeDelta::days(d));
        let second_short =
            |d: i64| Stamp::Valid(now() - TimeDelta::days(d) + TimeDelta::seconds(1));
        let own = account_token().id;
        let other_id = ResourceId::parse("fedcba9876543210fedcba9876543210").unwrap();
        let keep_named = ExclusionSettings {
            account_api_token_names: vec!["ci-*".into()],
            ..ExclusionSettings::named("keep ci")
        };
        let keep_id = ExclusionSettings {
            account_api_token_ids: vec![account_token().id],
            ..ExclusionSettings::named("keep id")
        };
        type Case = (
            &'static str,
            Vec<RuleSettings>,
            Vec<ExclusionSettings>,
            AccountApiToken,
            Option<&'static ResourceId>,
            Expect,
            Option<Anomaly>,
        );
        let own: &'static ResourceId = Box::leak(Box::new(own));
        let other: &'static ResourceId = Box::leak(Box::new(other_id));
        let cases: Vec<Case> = vec![
            (
                "a used token without expiry is kept",
                vec![expired(), disabled(), unused()],
                vec![],
                account_token(),
                None,
                Keep,
                None,
            ),
            (
                "expires_on exactly N days ago is selected",
                vec![expired()],
                vec![],
                AccountApiToken {
                    expires_on: at(30),
                    ..account_token()
                },
                None,
                Act("expired"),
                None,
            ),
            (
                "expires_on one second short of N days is kept",
                vec![expired()],
                vec![],
                AccountApiToken {
                    expires_on: second_short(30),
                    ..account_token()
                },
                None,
                Keep,
                None,
            ),
            (
                "expired_days reads expires_on whatever the status says",
                vec![expired()],
                vec![],
                AccountApiToken {
                    status: Some("active".into()),
                    expires_on: at(45),
                    ..account_token()
                },
                None,
                Act("expired"),
                None,
            ),
            (
                "status expired without expires_on ages from modified_on",
                vec![expired()],
                vec![],
                AccountApiToken {
                    status: Some("expired".into()),
                    modified_on: at(30),
                    ..account_token()
                },
                None,
                Act("expired"),
                None,
            ),
            (
                "status expired, modified one second short of N days, is kept",
                vec![expired()],
                vec![],
                AccountApiToken {
                    status: Some("expired".into()),
                    modified_on: second_short(30),
                    ..account_token()
                },
                None,
                Keep,
                None,
            ),
            (
                "an active token modified long ago is not expired",
                vec![expired()],
                vec![],
                AccountApiToken {
                    modified_on: at(300),
                    ..account_token()
                },
                None,
                Keep,
                None,
            ),
            (
                "expires_on in the future keeps even a token whose status says expired",
                vec![expired()],
                vec![],
                AccountApiToken {
                    status: Some("expired".into()),
                    expires_on: Stamp::Valid(now() + TimeDelta::days(3)),
                    ..account_token()
                },
                None,
                Keep,
                None,
            ),
            (
                "disabled exactly N days ago is selected",
                vec![disabled()],
                vec![],
                AccountApiToken {
                    status: Some("disabled".into()),
                    modified_on: at(60),
                    ..account_token()
                },
                None,
                Act("disabled"),
                None,
            ),
            (
                "disabled one second short of N days is kept",
                vec![disabled()],
                vec![],
                AccountApiToken {
                    status: Some("disabled".into()),
                    modified_on: second_short(60),
                    ..account_token()
                },
                None,
                Keep,
                None,
            ),
            (
                "an active token modified long ago is not disabled",
                vec![disabled()],
                vec![],
                AccountApiToken {
                    modified_on: at(600),
                    ..account_token()
                },
                None,
                Keep,
                None,
            ),
            (
                "disabled without modified_on is kept",
                vec![disabled()],
                vec![],
                AccountApiToken {
                    status: Some("disabled".into()),
                    modified_on: Stamp::Missing,
                    ..account_token()
                },
                None,
                Keep,
                None,
            ),
            (
                "unused exactly N days is selected",
                vec![unused()],
                vec![],
                AccountApiToken {
                    last_used_on: at(90),
                    ..account_token()
                },
                None,
                Act("unused"),
                None,
            ),
            (
                "unused one second short of N days is kept",
                vec![unused()],
                vec![],
                AccountApiToken {
                    last_used_on: second_short(90),
                    ..account_token()
                },
                None,
                Keep,
                None,
            ),
            (
                "never used counts from issued_on",
                vec![unused()],
                vec![],
                AccountApiToken {
                    last_used_on: Stamp::Missing,
                    issued_on: at(90),
                    ..account_token()
                },
                None,
                Act("unused"),
                None,
            ),
            (
                "never used, issued one second short of N days, is kept",
                vec![unused()],
                vec![],
                AccountApiToken {
                    last_used_on: Stamp::Missing,
                    issued_on: second_short(90),
                    ..account_token()
                },
                None,
                Keep,
                None,
            ),
            (
                "all conditions of one rule must hold",
                vec![account_rule("both", Some(30), None, Some(90))],
                vec![],
                AccountApiToken {
                    expires_on: at(40),
                    last_used_on: at(10),
                    ..account_token()
                },
                None,
                Keep,
                None,
            ),
            (
                "a name glob narrows",
                vec![RuleSettings {
                    names: Some(vec!["backup-*".into()]),
                    ..unused()
                }],
                vec![],
                AccountApiToken {
                    last_used_on: at(200),
                    ..account_token()
                },
                None,
                Keep,
                None,
            ),
            (
                "a matching name glob selects",
                vec![RuleSettings {
                    names: Some(vec!["ci-*".into()]),
                    ..unused()
                }],
                vec![],
                AccountApiToken {
                    last_used_on: at(200),
                    ..account_token()
                },
                None,
                Act("unused"),
                None,
            ),
            (
                "the janitor's own token is never acted on",
                vec![unused(), expired()],
                vec![],
                AccountApiToken {
                    last_used_on: at(200),
                    expires_on: at(100),
                    ..account_token()
                },
                Some(own),
                Excluded(OWN_TOKEN),
                None,
            ),
            (
                "own-token protection wins over a configured exclusion",
                vec![unused()],
                vec![keep_named.clone()],
                AccountApiToken {
                    last_used_on: at(200),
                    ..account_token()
                },
                Some(own),
                Excluded(OWN_TOKEN),
                None,
            ),
            (
                "another token than the own one is acted on",
                vec![unused()],
                vec![],
                AccountApiToken {
                    last_used_on: at(200),
                    ..account_token()
                },
                Some(other),
                Act("unused"),
                None,
            ),
            (
                "an exclusion by name protects",
                vec![unused()],
                vec![keep_named],
                AccountApiToken {
                    last_used_on: at(200),
                    ..account_token()
                },
                None,
                Excluded("keep ci"),
                None,
            ),
            (
                "an exclusion by id protects",
                vec![unused()],
                vec![keep_id],
                AccountApiToken {
                    last_used_on: at(200),
                    ..account_token()
                },
                None,
                Excluded("keep id"),
                None,
            ),
            (
                "an unreadable last_used_on is untouchable",
                vec![unused()],
                vec![],
                AccountApiToken {
                    last_used_on: Stamp::Invalid("yesterday".into()),
                    ..account_token()
                },
                None,
                Keep,
                Some(Anomaly::UnparsableLastSeen),
            ),
            (
                "an unreadable modified_on is untouchable",
                vec![disabled()],
                vec![],
                AccountApiToken {
                    status: Some("disabled".into()),
                    modified_on: Stamp::Invalid("x".into()),
                    ..account_token()
                },
                None,
                Keep,
                Some(Anomaly::UnparsableModifiedOn),
            ),
            (
                "an unreadable expires_on is untouchable",
                vec![expired()],
                vec![],
                AccountApiToken {
                    expires_on: Stamp::Invalid("x".into()),
                    ..account_token()
                },
                None,
                Keep,
                Some(Anomaly::UnparsableExpiresAt),
            ),
            (
                "device and service-token rules never select an account token",
                vec![idle(1), token_rule("st", Some(0), Some(1))],
                vec![],
                AccountApiToken {
                    last_used_on: at(300),
                    expires_on: at(900),
                    ..account_token()
                },
                None,
                Keep,
                None,
            ),
        ];
        for (name, rules, exclusions, token, own, expect, anomaly) in cases {
            let set = RuleSet::new(&rules, &exclusions).unwrap();
            let eval = set.evaluate_account_token(&token, now(), own);
            assert_eq!(verdict_of(&eval), expect, "case: {name}");
            assert_eq!(eval.anomaly, anomaly, "case: {name}");
        }
    }

    #[test]
    fn account_token_reasons_name_the_stamp_they_read() {
        let set = RuleSet::new(
            &[
                account_rule("expired", Some(30), None, None),
                account_rule("disabled", None, Some(60), None),
                account_rule("unused", None, None, Some(90)),
            ],
            &[],
        )
        .unwrap();
        let why = |t: AccountApiToken| match set.evaluate_account_token(&t, now(), None).verdict {
            Verdict::Act { why, .. } => why.to_string(),
            other => panic!("{other:?}"),
        };
        let expires = why(AccountApiToken {
            expires_on: days_ago(45),
            ..account_token()
        });
        assert!(expires.contains("expires_on"), "{expires}");
        let modified = why(AccountApiToken {
            status: Some("expired".into()),
            modified_on: days_ago(45),
            ..account_token()
        });
        assert!(modified.contains("modified_on"), "{modified}");
        let disabled = why(AccountApiToken {
            status: Some("disabled".into()),
            modified_on: days_ago(70),
            ..account_token()
        });
        assert!(
            disabled.starts_with("disabled, modified 70d ago"),
            "{disabled}"
        );
        let never = why(AccountApiToken {
            last_used_on: Stamp::Missing,
            issued_on: days_ago(120),
            ..account_token()
        });
        assert!(never.contains("issued_on"), "{never}");
    }

    fn certificate() -> ClientCertificate {
        ClientCertificate {
            id: ResourceId::parse("b2f6e2a4-5c1d-4e7a-9a3b-0c9d8e7f6a5b").unwrap(),
            status: Some("active".into()),
            common_name: Some("device-0001.example.com".into()),
            certificate_authority: Some(CertificateAuthority {
                id: Some("8e0c3ad0c8ed4a7e9f1b2c3d4e5f6a7b".into()),
                name: Some("API Shield default CA".into()),
            }),
            expires_on: Stamp::Valid(now() + TimeDelta::days(100)),
            issued_on: days_ago(265),
            serial_number: Some("1a2b".into()),
            fingerprint_sha256: Some("ab".repeat(32)),
        }
    }

    fn cert_rule(name: &str, expired: u32) -> RuleSettings {
        RuleSettings {
            expired_days: Some(expired),
            ..RuleSettings::new(name, Kind::ClientCertificate, Action::Revoke)
        }
    }

    #[test]
    fn client_certificate_rule_table() {
        use Expect::*;
        let expired = || cert_rule("expired", 30);
        let at = |d: i64| Stamp::Valid(now() - TimeDelta::days(d));
        let second_short =
            |d: i64| Stamp::Valid(now() - TimeDelta::days(d) + TimeDelta::seconds(1));
        let gone = || ClientCertificate {
            expires_on: at(400),
            ..certificate()
        };
        let keep_cn = ExclusionSettings {
            common_names: vec!["*.example.com".into()],
            ..ExclusionSettings::named("keep cn")
        };
        let keep_id = ExclusionSettings {
            client_certificate_ids: vec![certificate().id],
            ..ExclusionSettings::named("keep id")
        };
        type Case = (
            &'static str,
            Vec<RuleSettings>,
            Vec<ExclusionSettings>,
            ClientCertificate,
            Expect,
            Option<Anomaly>,
        );
        let status = |s: &str| ClientCertificate {
            status: Some(s.into()),
            ..gone()
        };
        let cases: Vec<Case> = vec![
            (
                "a valid certificate is kept",
                vec![expired()],
                vec![],
                certificate(),
                Keep,
                None,
            ),
            (
                "expired exactly N days ago is selected",
                vec![expired()],
                vec![],
                ClientCertificate {
                    expires_on: at(30),
                    ..certificate()
                },
                Act("expired"),
                None,
            ),
            (
                "expired one second short of N days is kept",
                vec![expired()],
                vec![],
                ClientCertificate {
                    expires_on: second_short(30),
                    ..certificate()
                },
                Keep,
                None,
            ),
            (
                "expired_days = 0 takes a certificate the moment it expires",
                vec![cert_rule("now", 0)],
                vec![],
                ClientCertificate {
                    expires_on: at(0),
                    ..certificate()
                },
                Act("now"),
                None,
            ),
            (
                "without expires_on nothing is selected",
                vec![expired()],
                vec![],
                ClientCertificate {
                    expires_on: Stamp::Missing,
                    ..certificate()
                },
                Keep,
                None,
            ),
            (
                "pending revocation is never acted on again",
                vec![expired()],
                vec![],
                status("pending_revocation"),
                Keep,
                None,
            ),
            (
                "revoked is never acted on again",
                vec![expired()],
                vec![],
                status("revoked"),
                Keep,
                None,
            ),
            (
                "pending reactivation is left alone",
                vec![expired()],
                vec![],
                status("pending_reactivation"),
                Keep,
                None,
            ),
            (
                "an unknown status is left alone",
                vec![expired()],
                vec![],
                status("suspended"),
                Keep,
                None,
            ),
            (
                "no status is left alone",
                vec![expired()],
                vec![],
                ClientCertificate {
                    status: None,
                    ..gone()
                },
                Keep,
                None,
            ),
            (
                "a common-name glob narrows",
                vec![RuleSettings {
                    common_names: Some(vec!["*.corp.example".into()]),
                    ..expired()
                }],
                vec![],
                gone(),
                Keep,
                None,
            ),
            (
                "a matching common-name glob selects",
                vec![RuleSettings {
                    common_names: Some(vec!["device-*".into()]),
                    ..expired()
                }],
                vec![],
                gone(),
                Act("expired"),
                None,
            ),
            (
                "the authority by name selects",
                vec![RuleSettings {
                    certificate_authority: Some("API Shield default CA".into()),
                    ..expired()
                }],
                vec![],
                gone(),
                Act("expired"),
                None,
            ),
            (
                "the authority by id selects",
                vec![RuleSettings {
                    certificate_authority: Some("8e0c3ad0c8ed4a7e9f1b2c3d4e5f6a7b".into()),
                    ..expired()
                }],
                vec![],
                gone(),
                Act("expired"),
                None,
            ),
            (
                "another authority narrows",
                vec![RuleSettings {
                    certificate_authority: Some("Managed CA".into()),
                    ..expired()
                }],
                vec![],
                gone(),
                Keep,
                None,
            ),
            (
                "no authority listed never matches an authority filter",
                vec![RuleSettings {
                    certificate_authority: Some("API Shield default CA".into()),
                    ..expired()
                }],
                vec![],
                ClientCertificate {
                    certificate_authority: None,
                    ..gone()
                },
                Keep,
                None,
            ),
            (
                "an exclusion by common name protects",
                vec![expired()],
                vec![keep_cn],
                gone(),
                Excluded("keep cn"),
                None,
            ),
            (
                "an exclusion by id protects",
                vec![expired()],
                vec![keep_id],
                gone(),
                Excluded("keep id"),
                None,
            ),
            (
                "an unreadable expires_on is untouchable",
                vec![expired()],
                vec![],
                ClientCertificate {
                    expires_on: Stamp::Invalid("soon".into()),
                    ..certificate()
                },
                Keep,
                Some(Anomaly::UnparsableExpiresAt),
            ),
            (
                "token rules never select a certificate",
                vec![
                    token_rule("st", Some(0), None),
                    account_rule("at", Some(0), None, None),
                ],
                vec![],
                gone(),
                Keep,
                None,
            ),
        ];
        for (name, rules, exclusions, cert, expect, anomaly) in cases {
            let set = RuleSet::new(&rules, &exclusions).unwrap();
            let eval = set.evaluate_certificate(&cert, now());
            assert_eq!(verdict_of(&eval), expect, "case: {name}");
            assert_eq!(eval.anomaly, anomaly, "case: {name}");
        }
    }

    #[test]
    fn token_criteria_never_protect_a_registration() {
        let set = RuleSet::new(
            &[idle(90)],
            &[token_exclusion(
                &["*"],
                &["11111111-1111-4111-8111-111111111111"],
            )],
        )
        .unwrap();
        let old = Registration {
            last_seen_at: days_ago(200),
            ..reg()
        };
        assert!(matches!(
            set.evaluate(&old, now()).verdict,
            Verdict::Act { .. }
        ));
    }

    #[test]
    fn token_reasons_read_well() {
        let set = RuleSet::new(
            &[
                token_rule("expired", Some(30), None),
                token_rule("unused", None, Some(90)),
            ],
            &[],
        )
        .unwrap();
        let why = |t: ServiceToken| match set.evaluate_service_token(&t, now()).verdict {
            Verdict::Act { why, .. } => why.to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            why(ServiceToken {
                expires_at: days_ago(45),
                ..token()
            }),
            "expired 45d ago >= 30d (expires_at 2026-04-17)"
        );
        assert_eq!(
            why(ServiceToken {
                last_seen_at: Stamp::Missing,
                created_at: days_ago(120),
                ..token()
            }),
            "unused 120d >= 90d (never seen; created_at 2026-02-01)"
        );
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
        assert_eq!(Why::Revoked { days: 3 }.to_string(), "revoked 3d ago");
        let reason = |last_seen_at, created_at| {
            let r = Registration {
                last_seen_at,
                created_at,
                ..reg()
            };
            match set.evaluate(&r, now()).verdict {
                Verdict::Act { why, .. } => why.to_string(),
                other => panic!("expected a selection, got {other:?}"),
            }
        };
        assert_eq!(
            reason(Stamp::Missing, days_ago(100)),
            "idle 100d >= 90d (never seen; created_at 2026-02-21)"
        );
        assert_eq!(
            reason(
                Stamp::Valid(now() - TimeDelta::days(100) - TimeDelta::minutes(2)),
                days_ago(100)
            ),
            "idle 100d >= 90d (created_at 2026-02-21, later than last_seen_at)"
        );
    }

    #[test]
    fn shadowed_rules_table() {
        let revoke = |r: RuleSettings| RuleSettings {
            action: Action::Revoke,
            ..r
        };
        let named = |name: &str, r: RuleSettings| RuleSettings {
            name: name.into(),
            ..r
        };
        let warp = |r: RuleSettings| RuleSettings {
            registration_type: Some(RegistrationType::Warp),
            ..r
        };
        let both = |days: u32, min: Option<u32>| RuleSettings {
            idle_days: Some(days),
            ..revoked(min)
        };
        /// (case, rules, the (later, earlier) positions of the expected warnings)
        type Case = (&'static str, Vec<RuleSettings>, Vec<(usize, usize)>);
        let cases: Vec<Case> = vec![
            (
                "a wider idle rule first shadows a narrower one",
                vec![idle(30), idle(90)],
                vec![(2, 1)],
            ),
            (
                "a narrower idle rule first shadows nothing",
                vec![idle(90), idle(30)],
                vec![],
            ),
            (
                "equal idle rules: the second is shadowed",
                vec![idle(90), idle(90)],
                vec![(2, 1)],
            ),
            (
                "an idle revoke rule leaves revoked registrations to a later idle delete rule",
                vec![revoke(idle(30)), idle(90)],
                vec![],
            ),
            (
                "an idle delete rule shadows a later idle revoke rule",
                vec![idle(30), revoke(idle(90))],
                vec![(2, 1)],
            ),
            (
                "an idle revoke rule does not shadow the revoked delete rule behind it",
                vec![revoke(idle(30)), revoked(None)],
                vec![],
            ),
            (
                "an idle rule does not shadow a revoked rule",
                vec![idle(90), revoked(None)],
                vec![],
            ),
            (
                "a revoked rule without age shadows one with an age",
                vec![revoked(None), revoked(Some(7))],
                vec![(2, 1)],
            ),
            (
                "a revoked rule with a longer age shadows nothing",
                vec![revoked(Some(7)), revoked(Some(3))],
                vec![],
            ),
            (
                "a revoked rule shadows a later revoked and idle rule",
                vec![revoked(Some(7)), both(90, Some(30))],
                vec![(2, 1)],
            ),
            (
                "an idle rule shadows a later revoked and idle rule",
                vec![idle(30), both(90, None)],
                vec![(2, 1)],
            ),
            (
                "a revoked and idle rule does not shadow a plain revoked rule",
                vec![both(90, None), revoked(None)],
                vec![],
            ),
            (
                "a type-filtered rule does not shadow an unfiltered one",
                vec![warp(idle(30)), idle(90)],
                vec![],
            ),
            (
                "an unfiltered rule shadows a type-filtered one",
                vec![idle(30), warp(idle(90))],
                vec![(2, 1)],
            ),
            (
                "an active_only rule does not shadow an unfiltered one",
                vec![
                    RuleSettings {
                        active_only: true,
                        ..idle(30)
                    },
                    idle(90),
                ],
                vec![],
            ),
            (
                "an unfiltered rule shadows an active_only one",
                vec![
                    idle(30),
                    RuleSettings {
                        active_only: true,
                        ..idle(90)
                    },
                ],
                vec![(2, 1)],
            ),
            (
                "each shadowed rule is named once, by the first rule that shadows it",
                vec![
                    named("a", idle(30)),
                    named("b", idle(60)),
                    named("c", idle(90)),
                ],
                vec![(2, 1), (3, 1)],
            ),
        ];
        for (name, rules, expected) in cases {
            let set = RuleSet::new(&rules, &[]).unwrap();
            let got: Vec<(usize, usize)> = set
                .warnings()
                .into_iter()
                .map(|w| match w {
                    RuleWarning::Shadowed {
                        position,
                        by_position,
                        ..
                    } => (position, by_position),
                })
                .collect();
            assert_eq!(got, expected, "case: {name}");
        }
    }

    #[test]
    fn a_shadow_warning_names_both_rules_and_what_to_do() {
        let rules = [
            RuleSettings {
                name: "idle-30d".into(),
                ..idle(30)
            },
            RuleSettings {
                name: "idle-90d".into(),
                ..idle(90)
            },
        ];
        let warnings = RuleSet::new(&rules, &[]).unwrap().warnings();
        assert_eq!(warnings.len(), 1);
        assert_eq!(
            warnings[0].to_string(),
            "rule \"idle-90d\" (#2) never acts: every registration it could select is taken \
             first by rule \"idle-30d\" (#1), since the first matching rule wins; move \
             \"idle-90d\" above \"idle-30d\", narrow \"idle-30d\", or remove \"idle-90d\""
        );
    }

    #[test]
    fn case_folding_is_full_unicode_folding() {
        assert_eq!(fold_case("ÄRZTE@Example.COM"), "ärzte@example.com");
        assert_eq!(fold_case("STRASSE"), fold_case("straße"));
        assert_eq!(fold_case("ΣΊΣΥΦΟΣ"), fold_case("σίσυφος"));
        assert!(matches!(fold_case("plain@example.com"), Cow::Borrowed(_)));
    }

    #[test]
    fn one_by_one_asks_every_rule_of_the_kind_on_its_own() {
        let idle_400 = RuleSettings {
            idle_days: Some(400),
            ..rule("idle-400")
        };
        let token_rule = RuleSettings {
            expired_days: Some(1),
            ..RuleSettings::new("token", Kind::AccessServiceToken, Action::Delete)
        };
        let set = RuleSet::new(
            &[idle(90), revoked(None), idle_400, token_rule],
            &[ExclusionSettings {
                user_emails: vec!["*@example.com".into()],
                ..exclusion()
            }],
        )
        .unwrap();
        let revoked_idle = Registration {
            last_seen_at: days_ago(200),
            revoked_at: Some(days_ago(20)),
            ..reg()
        };
        let future = Registration {
            last_seen_at: Stamp::Valid(now() + TimeDelta::days(3)),
            ..reg()
        };
        // (case, registration, what each device rule alone says, in config order)
        let cases: [(&str, Registration, [Option<&str>; 3]); 3] = [
            ("fresh: no rule", reg(), [None, None, None]),
            (
                "idle and revoked: two rules, the later one too; the exclusion is not asked",
                revoked_idle,
                [Some("idle 200d >= 90d"), Some("revoked 20d ago"), None],
            ),
            ("untrusted data: no rule", future, [None, None, None]),
        ];
        for (case, registration, expected) in cases {
            let alone = set.one_by_one(Kind::DeviceRegistration);
            let names: Vec<&str> = alone.iter().map(|(r, _)| r.name.as_str()).collect();
            assert_eq!(names, ["idle", "revoked", "idle-400"], "{case}");
            let got: Vec<Option<String>> = alone
                .iter()
                .map(
                    |(_, one)| match one.evaluate(&registration, now()).verdict {
                        Verdict::Act { why, .. } => Some(why.to_string()),
                        Verdict::Keep => None,
                        Verdict::Excluded { .. } => panic!("{case}: no exclusion on its own"),
                    },
                )
                .collect();
            for (got, expected) in got.iter().zip(expected) {
                match expected {
                    None => assert_eq!(got, &None, "{case}"),
                    Some(start) => assert!(
                        got.as_deref().is_some_and(|g| g.starts_with(start)),
                        "{case}: {got:?}"
                    ),
                }
            }
        }
        assert_eq!(set.one_by_one(Kind::ClientCertificate).len(), 0);
    }
}

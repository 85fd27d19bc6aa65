//! The planner: streams every page of the registration listing through the rules and keeps only
//! what a rule selected, so memory grows with the number of candidates, not of registrations.
//! It never mutates anything. A listing it cannot fully trust (a failed page, a cursor that
//! loops, an id seen twice — compared as UUIDs, so whatever the case — an object without
//! identity) yields an error, never a partial plan.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::task::Poll;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::cloudflare::client::ClientBuildError;
use crate::cloudflare::ZoneId;
use crate::cloudflare::{ApiError, Client, Stamp};
use crate::config::{Action, Config, SafetySettings};
use crate::metrics::Metrics;
use crate::resource::{self, Kind, Page, PageToken, ResourceId, Scope};
use crate::rules::{Anomaly, RuleSet, Verdict, Why};
use crate::saved_plan::{Skipped, TargetFilter};
use crate::secret::{Credentials, TokenError};

/// Where pages come from: the Cloudflare client in production, a vector in unit tests.
pub trait PageSource {
    fn page(
        &self,
        kind: Kind,
        scope: &Scope,
        token: Option<&PageToken>,
    ) -> impl std::future::Future<Output = Result<Page, ApiError>> + Send;
}

impl PageSource for Client {
    async fn page(
        &self,
        kind: Kind,
        scope: &Scope,
        token: Option<&PageToken>,
    ) -> Result<Page, ApiError> {
        resource::list_page(kind, self, scope, token).await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The API error is part of the message and not its `source()`: a renderer that walks the
    /// chain (`anyhow`'s `{:#}`) would otherwise print it twice.
    #[error("listing page {page} failed: {error}")]
    Listing { page: u64, error: ApiError },
    #[error("listing page {page} repeats a cursor already followed: the listing would loop; nothing will be done on data that may be incomplete")]
    CursorLoop { page: u64 },
    #[error("the listing named {count} {} id(s) more than once: it is inconsistent; nothing will be done on data that may be wrong", kind.noun().0)]
    DuplicateIds { kind: Kind, count: u64 },
    #[error("listing page {page}, item {index}: not a usable {} ({message}); nothing will be done on data that could not be read", kind.noun().0)]
    Malformed {
        kind: Kind,
        page: u64,
        index: usize,
        message: String,
    },
    #[error("the listing changed while it was read ({message}): objects may have been skipped; nothing will be done on data that may be incomplete")]
    Inconsistent { message: String },
}

/// An object a rule selected for action.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub kind: Kind,
    pub rule: String,
    pub action: Action,
    pub id: ResourceId,
    /// The zone it lives in, for a zoned kind.
    pub zone: Option<ZoneId>,
    pub user_email: Option<String>,
    /// The device's name, the token's name, the certificate's common name.
    pub name: String,
    pub last_seen_at: Stamp,
    /// Why the rule selected it.
    pub why: Why,
    /// Set when an exclusion protects it; such a candidate is never acted on.
    pub excluded_by: Option<String>,
    /// The object exactly as listed, for the audit log; taken once recorded, so that memory
    /// holds only the small fields above.
    pub snapshot: Option<Box<RawValue>>,
    /// When its rule has a grace period, what `plan` knows of it: "acts now", or when it will
    /// be acted on (see [`annotate_grace`]).
    pub grace: Option<String>,
}

impl Candidate {
    /// The key its name is shown under: a device registration's is its device's name.
    pub fn name_key(&self) -> &'static str {
        match self.kind {
            Kind::DeviceRegistration => "device_name",
            _ => "name",
        }
    }
}

impl Serialize for Candidate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("resource", &self.kind)?;
        map.serialize_entry("rule", &self.rule)?;
        map.serialize_entry("action", &self.action)?;
        map.serialize_entry("id", &self.id)?;
        if let Some(zone) = &self.zone {
            map.serialize_entry("zone", zone)?;
        }
        map.serialize_entry("user_email", &self.user_email)?;
        map.serialize_entry(self.name_key(), &self.name)?;
        map.serialize_entry("last_seen_at", &self.last_seen_at)?;
        map.serialize_entry("reason", &self.why.to_string())?;
        if let Some(by) = &self.excluded_by {
            map.serialize_entry("excluded_by", by)?;
        }
        if let Some(grace) = &self.grace {
            map.serialize_entry("grace", grace)?;
        }
        map.end()
    }
}

/// What a plan holds: candidates, whose snapshots may already be taken by the audit log.
pub trait Entry {
    fn candidate(&self) -> &Candidate;
}

impl Entry for Candidate {
    fn candidate(&self) -> &Candidate {
        self
    }
}

/// The listing's decisions counted as they are made, so that a cycle needs none of the
/// candidates in memory once they are recorded: the caps and the metrics read these.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decided {
    /// Candidates no exclusion protects: what the run would act on.
    pub actionable: u64,
    /// Candidates an exclusion protects.
    pub excluded: u64,
    /// Actionable candidates per rule.
    pub by_rule: BTreeMap<String, u64>,
}

impl Decided {
    fn count(&mut self, candidate: &Candidate) {
        if candidate.excluded_by.is_some() {
            self.excluded += 1;
        } else {
            self.actionable += 1;
            *self.by_rule.entry(candidate.rule.clone()).or_default() += 1;
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct SeenCounts {
    pub total: u64,
    pub active: u64,
    pub revoked: u64,
}

/// Registrations whose data no rule trusts, by kind (see [`Anomaly`]): each was kept,
/// whatever the rules say, and counted once, under its first anomaly.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct AnomalyCounts {
    pub deleted_at_set: u64,
    pub unparsable_revoked_at: u64,
    pub future_revoked_at: u64,
    pub unparsable_last_seen_at: u64,
    pub no_activity_timestamp: u64,
    pub unparsable_created_at: u64,
    pub future_created_at: u64,
    pub future_last_seen_at: u64,
    pub last_seen_before_created: u64,
    pub unparsable_expires_at: u64,
    pub unparsable_modified_on: u64,
}

impl AnomalyCounts {
    fn slot(&mut self, a: Anomaly) -> &mut u64 {
        match a {
            Anomaly::DeletedAtSet => &mut self.deleted_at_set,
            Anomaly::UnparsableRevokedAt => &mut self.unparsable_revoked_at,
            Anomaly::FutureRevokedAt => &mut self.future_revoked_at,
            Anomaly::UnparsableLastSeen => &mut self.unparsable_last_seen_at,
            Anomaly::NoActivityTimestamp => &mut self.no_activity_timestamp,
            Anomaly::UnparsableCreatedAt => &mut self.unparsable_created_at,
            Anomaly::FutureCreatedAt => &mut self.future_created_at,
            Anomaly::FutureLastSeen => &mut self.future_last_seen_at,
            Anomaly::LastSeenBeforeCreated => &mut self.last_seen_before_created,
            Anomaly::UnparsableExpiresAt => &mut self.unparsable_expires_at,
            Anomaly::UnparsableModifiedOn => &mut self.unparsable_modified_on,
        }
    }

    fn count(&mut self, a: Anomaly) {
        *self.slot(a) += 1;
    }

    /// Every kind with its label (the metric's `kind`), zero counts included.
    pub fn by_label(&self) -> [(&'static str, u64); Anomaly::ALL.len()] {
        let mut copy = self.clone();
        Anomaly::ALL.map(|a| (a.label(), *copy.slot(a)))
    }
}

/// What the blast-radius caps say about a plan.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CapCheck {
    pub actions: u64,
    pub max_actions_per_run: u64,
    pub max_fraction_per_run: f64,
    /// The most actions the fraction cap allows for the objects of the kind seen.
    pub fraction_limit: u64,
    /// Why the run must not act; empty when within both caps.
    pub violations: Vec<String>,
}

impl CapCheck {
    /// The caps over `actions` on `seen` objects of `kind` (the fraction is of that kind's
    /// own population).
    pub fn new(kind: Kind, actions: u64, seen: u64, safety: &SafetySettings) -> Self {
        let things = kind.noun().1;
        // floor: a 10% cap over 15 registrations allows 1 action, not 2.
        let fraction_limit = (safety.max_fraction_per_run * seen as f64).floor() as u64;
        let mut violations = Vec::new();
        if actions > safety.max_actions_per_run {
            violations.push(format!(
                "{actions} actions exceed max_actions_per_run = {} (it would pass at ≥ {actions})",
                safety.max_actions_per_run
            ));
        }
        if actions > fraction_limit {
            violations.push(format!(
                "{actions} actions exceed max_fraction_per_run = {} of {seen} {things} seen (limit {fraction_limit}; it would pass at ≥ {:.3})",
                safety.max_fraction_per_run,
                fraction_needed(actions, seen)
            ));
        }
        CapCheck {
            actions,
            max_actions_per_run: safety.max_actions_per_run,
            max_fraction_per_run: safety.max_fraction_per_run,
            fraction_limit,
            violations,
        }
    }

    pub fn within(&self) -> bool {
        self.violations.is_empty()
    }
}

#[derive(Debug, Serialize)]
pub struct Plan<E = Candidate> {
    /// The kind listed; a plan covers one kind, and its caps that kind's population.
    #[serde(rename = "resource")]
    pub kind: Kind,
    /// Where it was listed (the zone, for a zoned kind; shown as `zone`).
    #[serde(flatten)]
    pub scope: Scope,
    /// Why this kind must not act this run whatever the caps say (the janitor could not learn
    /// its own token), if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
    pub generated_at: DateTime<Utc>,
    pub pages: u64,
    pub seen: SeenCounts,
    /// Candidates and protected matches, in listing order; empty in a cycle that does not
    /// keep them (their rows are in the audit log), where `decided` still counts them.
    pub candidates: Vec<E>,
    #[serde(skip)]
    pub decided: Decided,
    pub anomalies: AnomalyCounts,
    pub caps: CapCheck,
}

impl<E: Entry> Plan<E> {
    /// Entries that will be acted on (not excluded).
    pub fn actionable(&self) -> impl Iterator<Item = &E> {
        self.candidates
            .iter()
            .filter(|e| e.candidate().excluded_by.is_none())
    }

    pub fn excluded(&self) -> impl Iterator<Item = &E> {
        self.candidates
            .iter()
            .filter(|e| e.candidate().excluded_by.is_some())
    }

    /// Actionable candidates per rule, every rule of the plan's kind listed (zero included).
    pub fn candidates_by_rule(&self, rules: &RuleSet) -> BTreeMap<String, u64> {
        let mut by_rule: BTreeMap<String, u64> = rules
            .rules_of(self.kind)
            .map(|r| (r.name.clone(), 0))
            .collect();
        for (rule, n) in &self.decided.by_rule {
            *by_rule.entry(rule.clone()).or_default() += n;
        }
        by_rule
    }
}

/// Why [`preview`] has no plan to show.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Client(#[from] ClientBuildError),
    #[error("cannot build a plan")]
    Plan(#[from] PlanError),
}

/// How far a listing has got, after each page: for a progress display.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    pub kind: Kind,
    pub zone: Option<&'a ZoneId>,
    pub pages: u64,
    pub seen: u64,
    /// Matched so far, protected ones included.
    pub candidates: u64,
}

/// What `zt-janitor plan` and the demo show: the account listed and evaluated under `config`
/// at `now` with a client of its own, one plan per kind that rules select from. Nothing is
/// recorded and nothing is mutated.
pub async fn preview(
    config: &Config,
    rules: &RuleSet,
    now: DateTime<Utc>,
) -> Result<Vec<Plan>, PreviewError> {
    preview_with(config, rules, now, false, &mut |_| {}).await
}

/// [`preview`], telling `progress` after each page.
pub async fn preview_with_progress(
    config: &Config,
    rules: &RuleSet,
    now: DateTime<Utc>,
    progress: &mut (dyn FnMut(Progress<'_>) + Send),
) -> Result<Vec<Plan>, PreviewError> {
    preview_with(config, rules, now, false, progress).await
}

/// [`preview_with_progress`], keeping each candidate's snapshot if `keep_snapshots` (for a
/// saved plan).
pub async fn preview_with(
    config: &Config,
    rules: &RuleSet,
    now: DateTime<Utc>,
    keep_snapshots: bool,
    progress: &mut (dyn FnMut(Progress<'_>) + Send),
) -> Result<Vec<Plan>, PreviewError> {
    let credentials = Credentials::load(&config.cloudflare)?;
    let client = Client::new(&config.cloudflare, credentials, Metrics::new())?;
    let mut plans = Vec::new();
    for kind in rules.kinds() {
        for (scope, blocked) in scopes(&client, &config.cloudflare.zone_ids, kind).await {
            let mut planner = Planner::new(&client, kind, rules, now).in_scope(scope);
            let mut candidates = Vec::new();
            while let Some(page) = planner.next_page().await? {
                candidates.extend(page.into_iter().map(|c| {
                    Candidate {
                        snapshot: c
                            .snapshot
                            .filter(|_| keep_snapshots && c.excluded_by.is_none()),
                        ..c
                    }
                }));
                progress(Progress {
                    kind,
                    zone: planner.scope.zone.as_ref(),
                    pages: planner.pages,
                    seen: planner.seen.total,
                    candidates: candidates.len() as u64,
                });
            }
            let mut plan = planner.finish(candidates, &config.safety);
            plan.blocked = blocked;
            plans.push(plan);
        }
    }
    Ok(plans)
}

/// What the grace period means for a plan's part, as `plan` shows it: from the marks the
/// cycles have set so far (read from the audit log), what the next cycle would mark, act on,
/// keep waiting, and clear.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraceOutlook {
    pub newly_marked: u64,
    pub due_now: u64,
    pub waiting: u64,
    pub cleared: u64,
}

/// Marks as `plan` reads them: the first time each object (kind, zone, id in lower case) was
/// marked.
pub type MarkDates = std::collections::HashMap<(Kind, Option<String>, String), DateTime<Utc>>;

/// Notes on each actionable candidate of `plan` whose rule has a grace period when it will be
/// acted on, and returns the part's outlook; `None` when no rule of the part's kind has one
/// (then nothing changes). Pure: the marks are read by the caller.
pub fn annotate_grace(
    plan: &mut Plan,
    marks: &MarkDates,
    rules: &[crate::config::RuleSettings],
    now: DateTime<Utc>,
) -> Option<GraceOutlook> {
    let grace_of = |rule: &str| {
        rules
            .iter()
            .find(|r| r.resource == plan.kind && r.name == rule)
            .map_or(0, |r| r.grace_days)
    };
    if !rules
        .iter()
        .any(|r| r.resource == plan.kind && r.grace_days > 0)
    {
        return None;
    }
    let zone = plan.scope.zone.as_ref().map(|z| z.as_str().to_owned());
    let day = |t: DateTime<Utc>| t.format("%Y-%m-%d").to_string();
    let mut outlook = GraceOutlook::default();
    let mut candidates = HashSet::new();
    for c in plan
        .candidates
        .iter_mut()
        .filter(|c| c.excluded_by.is_none())
    {
        let key = c.id.as_str().to_ascii_lowercase();
        let marked = marks.get(&(plan.kind, zone.clone(), key.clone())).copied();
        candidates.insert(key);
        let days = TimeDelta::days(i64::from(grace_of(&c.rule)));
        c.grace = Some(match marked {
            Some(first) if first + days <= now => {
                outlook.due_now += 1;
                format!("acts now (marked {})", day(first))
            }
            Some(first) => {
                outlook.waiting += 1;
                format!("marked {}, acts on {}", day(first), day(first + days))
            }
            None if days.is_zero() => {
                outlook.due_now += 1;
                "acts now (no grace period)".to_owned()
            }
            None => {
                outlook.newly_marked += 1;
                outlook.waiting += 1;
                format!(
                    "not yet marked: acts on {} at the earliest",
                    day(now + days)
                )
            }
        });
    }
    outlook.cleared = marks
        .keys()
        .filter(|(k, z, id)| *k == plan.kind && *z == zone && !candidates.contains(id))
        .count() as u64;
    Some(outlook)
}

/// The parts of a cycle for `kind`: one per zone for a zoned kind, else one; and for account
/// API tokens the janitor's own token, which no rule acts on, or why it is unknown (then
/// that kind must not act this run: it never guesses).
pub async fn scopes(client: &Client, zones: &[ZoneId], kind: Kind) -> Vec<(Scope, Option<String>)> {
    match kind {
        _ if kind.zoned() => zones
            .iter()
            .map(|z| (Scope::zone(z.clone()), None))
            .collect(),
        Kind::AccountApiToken => {
            if !client.credentials_are_api_token() {
                let why = "the janitor authenticates with the global API key, which \
                           tokens/verify cannot name, so it cannot tell its own credential from \
                           the tokens it lists; account API token actions are refused (use a \
                           scoped API token)";
                return vec![(Scope::default(), Some(why.to_owned()))];
            }
            match resource::own_token_id(client).await {
                Ok(own) => vec![(
                    Scope {
                        zone: None,
                        own_token: Some(own),
                    },
                    None,
                )],
                Err(e) => vec![(
                    Scope::default(),
                    Some(format!(
                        "cannot learn the id of the API token the janitor runs with ({e}); \
                         account API token actions are refused this run, since it never \
                         guesses which token is its own"
                    )),
                )],
            }
        }
        _ => vec![(Scope::default(), None)],
    }
}

/// Lists everything from `source` and evaluates it at `now`, for display: snapshots are
/// dropped as pages arrive. The cycle uses [`Planner`] directly to hand them to the audit log.
pub async fn build_plan<S: PageSource + Sync>(
    source: &S,
    kind: Kind,
    rules: &RuleSet,
    safety: &SafetySettings,
    now: DateTime<Utc>,
) -> Result<Plan, PlanError> {
    let mut planner = Planner::new(source, kind, rules, now);
    let mut candidates = Vec::new();
    while let Some(page) = planner.next_page().await? {
        candidates.extend(page.into_iter().map(|c| Candidate {
            snapshot: None,
            ..c
        }));
    }
    Ok(planner.finish(candidates, safety))
}

/// A page's request on its way.
type PageFetch<'a> = Pin<Box<dyn Future<Output = Result<Page, ApiError>> + Send + 'a>>;

/// The next page, asked for before the current one is evaluated.
enum Ahead<'a> {
    Sent(PageFetch<'a>),
    Answered(Result<Page, ApiError>),
}

/// The listing, one page at a time. Each call to [`Planner::next_page`] fetches and evaluates
/// one page; a page that makes the listing untrustworthy ends it with an error.
pub struct Planner<'a, S> {
    source: &'a S,
    kind: Kind,
    scope: Scope,
    rules: &'a RuleSet,
    now: DateTime<Utc>,
    seen: SeenCounts,
    decided: Decided,
    anomalies: AnomalyCounts,
    // Fingerprints of every id listed, checked for repeats once the listing ends (nothing is
    // acted on before that): 8 bytes per registration, a third of a hash set's. A collision
    // (odds ~1e-8 at 1M ids) can only abort a cycle, never cause an action.
    fingerprints: Vec<u64>,
    cursors_seen: HashSet<u64>,
    /// When applying a saved plan: its targets for this part, the only objects acted on.
    filter: Option<TargetFilter<'a>>,
    token: Option<PageToken>,
    pages: u64,
    /// The `total_count` the first page announced, which every later page must repeat and
    /// the whole listing must hold.
    total: Option<u64>,
    done: bool,
    /// The request for the next page, sent as soon as its cursor is known: the API prepares
    /// the page while this one is evaluated. Listing is read-only, so an error or a stop
    /// simply drops it.
    ahead: Option<Ahead<'a>>,
}

impl<'a, S: PageSource + Sync> Planner<'a, S> {
    pub fn new(source: &'a S, kind: Kind, rules: &'a RuleSet, now: DateTime<Utc>) -> Self {
        Planner {
            source,
            kind,
            scope: Scope::default(),
            rules,
            now,
            seen: SeenCounts::default(),
            decided: Decided::default(),
            anomalies: AnomalyCounts::default(),
            fingerprints: Vec::new(),
            cursors_seen: HashSet::new(),
            filter: None,
            token: None,
            pages: 0,
            total: None,
            done: false,
            ahead: None,
        }
    }

    fn fetch(&self, token: Option<PageToken>) -> PageFetch<'a> {
        let (source, kind, scope) = (self.source, self.kind, self.scope.clone());
        Box::pin(async move { source.page(kind, &scope, token.as_ref()).await })
    }

    /// Lists within `scope` (a zone, the janitor's own token).
    pub fn in_scope(self, scope: Scope) -> Self {
        Planner { scope, ..self }
    }

    /// Selects only the targets of a saved plan that the rules still select for the same
    /// action; everything else is left alone, and counts nowhere but in `seen`.
    pub fn only(self, filter: TargetFilter<'a>) -> Self {
        Planner {
            filter: Some(filter),
            ..self
        }
    }

    /// The saved plan's targets not acted on, and why; complete once the listing ended.
    pub fn skipped(&self) -> Vec<Skipped<'a>> {
        self.filter
            .as_ref()
            .map(TargetFilter::skipped)
            .unwrap_or_default()
    }

    /// The candidates of the next page (possibly none), or `None` once the listing ended.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Candidate>>, PlanError> {
        if self.done {
            return Ok(None);
        }
        self.pages += 1;
        let page_no = self.pages;
        let page = match self.ahead.take() {
            Some(Ahead::Answered(page)) => page,
            Some(Ahead::Sent(fetch)) => fetch.await,
            None => self.fetch(self.token.clone()).await,
        }
        .map_err(|error| PlanError::Listing {
            page: page_no,
            error,
        })?;
        match (self.total, page.total) {
            (_, None) => {}
            (None, total) => self.total = total,
            (Some(before), Some(now)) if before != now => {
                return Err(PlanError::Inconsistent {
                    message: format!(
                        "page 1 counted {before} objects in all, page {page_no} {now}"
                    ),
                })
            }
            (Some(_), Some(_)) => {}
        }
        let looped = page
            .next
            .as_ref()
            .is_some_and(|next| !self.cursors_seen.insert(fingerprint(next)));
        if let (Some(next), false) = (&page.next, looped) {
            // One poll hands the request to the connection; it is answered meanwhile.
            let mut fetch = self.fetch(Some(next.clone()));
            let polled = std::future::poll_fn(|cx| Poll::Ready(fetch.as_mut().poll(cx))).await;
            self.ahead = Some(match polled {
                Poll::Ready(page) => Ahead::Answered(page),
                Poll::Pending => Ahead::Sent(fetch),
            });
        }
        let mut candidates = Vec::new();
        for (index, raw) in page.items.into_iter().enumerate() {
            let item = resource::evaluate(self.kind, &raw, self.rules, self.now, &self.scope)
                .map_err(|e| PlanError::Malformed {
                    kind: self.kind,
                    page: page_no,
                    index,
                    message: e.to_string(),
                })?;
            let facts = item.facts;
            // By the id's UUID value, so that the same id in two cases is a repeat.
            self.fingerprints.push(fingerprint(&facts.id.key()));
            self.seen.total += 1;
            if item.revoked {
                self.seen.revoked += 1;
            } else {
                self.seen.active += 1;
            }
            if let Some(a) = item.eval.anomaly {
                self.anomalies.count(a);
            }
            if let Some(filter) = &mut self.filter {
                let selected_for = match &item.eval.verdict {
                    Verdict::Keep => None,
                    Verdict::Act { rule, .. } | Verdict::Excluded { rule, .. } => Some(rule.action),
                };
                if !filter.admits(&facts.id, selected_for) {
                    continue;
                }
            }
            let (rule, why, excluded_by) = match item.eval.verdict {
                Verdict::Keep => continue,
                Verdict::Act { rule, why } => (rule, why, None),
                Verdict::Excluded {
                    rule,
                    why,
                    exclusion,
                } => (rule, why, Some(exclusion.to_owned())),
            };
            let candidate = Candidate {
                kind: self.kind,
                rule: rule.name.clone(),
                action: rule.action,
                id: facts.id,
                zone: self.scope.zone.clone(),
                user_email: facts.subject,
                name: facts.display_name,
                last_seen_at: facts.last_active,
                why,
                excluded_by,
                snapshot: Some(item.snapshot.unwrap_or(raw)),
                grace: None,
            };
            self.decided.count(&candidate);
            candidates.push(candidate);
        }
        match page.next {
            None => {
                self.done = true;
                let repeats = repeated(&mut self.fingerprints);
                self.fingerprints = Vec::new();
                if repeats > 0 {
                    return Err(PlanError::DuplicateIds {
                        kind: self.kind,
                        count: repeats,
                    });
                }
                if let Some(total) = self.total.filter(|t| *t != self.seen.total) {
                    return Err(PlanError::Inconsistent {
                        message: format!(
                            "the listing counted {total} objects in all but held {}",
                            self.seen.total
                        ),
                    });
                }
            }
            Some(_) if looped => return Err(PlanError::CursorLoop { page: page_no }),
            Some(next) => self.token = Some(next),
        }
        Ok(Some(candidates))
    }

    /// The plan over a complete listing: `candidates` are the pages' candidates, in order.
    pub fn finish<E: Entry>(self, candidates: Vec<E>, safety: &SafetySettings) -> Plan<E> {
        let mut decided = Decided::default();
        for e in &candidates {
            decided.count(e.candidate());
        }
        self.finish_with(candidates, decided, safety)
    }

    /// The plan over a complete listing whose candidates are kept elsewhere (the audit log):
    /// the caps and the counts come from every decision the pages made.
    pub fn finish_recorded<E: Entry>(self, safety: &SafetySettings) -> Plan<E> {
        let decided = self.decided.clone();
        self.finish_with(Vec::new(), decided, safety)
    }

    fn finish_with<E: Entry>(
        self,
        candidates: Vec<E>,
        decided: Decided,
        safety: &SafetySettings,
    ) -> Plan<E> {
        Plan {
            kind: self.kind,
            scope: self.scope,
            blocked: None,
            generated_at: self.now,
            pages: self.pages,
            seen: self.seen,
            caps: CapCheck::new(self.kind, decided.actionable, self.seen.total, safety),
            candidates,
            decided,
            anomalies: self.anomalies,
        }
    }
}

/// The smallest `max_fraction_per_run`, in thousandths, that allows `actions` over `seen`.
fn fraction_needed(actions: u64, seen: u64) -> f64 {
    let allows =
        |thousandths: u64| (thousandths as f64 / 1000.0 * seen as f64).floor() >= actions as f64;
    let guess = (actions.saturating_mul(1000)).div_ceil(seen.max(1));
    // The guess is right but for floating-point rounding, which can cost one thousandth.
    let thousandths = (guess..=1000).find(|t| allows(*t)).unwrap_or(1000);
    thousandths as f64 / 1000.0
}

/// How many entries repeat an earlier one (sorts in place).
fn repeated(fingerprints: &mut [u64]) -> u64 {
    fingerprints.sort_unstable();
    fingerprints.windows(2).filter(|w| w[0] == w[1]).count() as u64
}

fn fingerprint<T: Hash + ?Sized>(v: &T) -> u64 {
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Mode, RuleSettings};
    use crate::resource::Kind;
    use std::sync::Mutex;

    #[test]
    fn a_cap_refusal_names_the_values_that_would_pass() {
        let safety = SafetySettings {
            mode: Mode::Apply,
            max_actions_per_run: 50,
            max_fraction_per_run: 0.1,
        };
        let caps = CapCheck::new(Kind::DeviceRegistration, 243, 1000, &safety);
        assert_eq!(caps.violations.len(), 2);
        assert!(
            caps.violations[0].ends_with("(it would pass at ≥ 243)"),
            "{:?}",
            caps.violations
        );
        assert!(
            caps.violations[1].ends_with("it would pass at ≥ 0.243)"),
            "{:?}",
            caps.violations
        );
        // The values named do pass.
        let raised = SafetySettings {
            max_actions_per_run: 243,
            max_fraction_per_run: 0.243,
            ..safety
        };
        assert!(CapCheck::new(Kind::DeviceRegistration, 243, 1000, &raised).within());
        for (actions, seen) in [
            (1, 3),
            (2, 3),
            (7, 9),
            (1, 1),
            (999, 1000),
            (250, 1_000_000),
        ] {
            let f = fraction_needed(actions, seen);
            let at = SafetySettings {
                max_actions_per_run: actions,
                max_fraction_per_run: f,
                ..safety.clone()
            };
            assert!(
                CapCheck::new(Kind::DeviceRegistration, actions, seen, &at).within(),
                "{actions}/{seen} at {f}"
            );
            let below = SafetySettings {
                max_fraction_per_run: f - 0.001,
                ..at
            };
            assert!(
                f <= 0.001
                    || !CapCheck::new(Kind::DeviceRegistration, actions, seen, &below).within(),
                "{actions}/{seen} below {f}"
            );
        }
    }

    /// Serves fixed pages; page `i` answers cursor `"c{i}"` and points at the next one.
    struct Pages {
        pages: Vec<Vec<String>>,
        cursors: Vec<Option<String>>,
        /// The `total_count` each page announces.
        totals: Vec<Option<u64>>,
        asked: Mutex<Vec<Option<String>>>,
    }

    impl Pages {
        fn new(pages: Vec<Vec<String>>) -> Self {
            let n = pages.len();
            let cursors = (0..n)
                .map(|i| (i + 1 < n).then(|| format!("c{}", i + 1)))
                .collect();
            Pages {
                pages,
                cursors,
                totals: vec![None; n],
                asked: Mutex::new(Vec::new()),
            }
        }
    }

    impl PageSource for Pages {
        async fn page(
            &self,
            _: Kind,
            _: &Scope,
            token: Option<&PageToken>,
        ) -> Result<Page, ApiError> {
            let cursor = token.map(|t| match t {
                PageToken::Cursor(c) => c.clone(),
                PageToken::Page(n) => panic!("page {n} asked of a cursor listing"),
            });
            self.asked.lock().unwrap().push(cursor.clone());
            let i = match cursor {
                None => 0,
                Some(c) => c[1..].parse::<usize>().unwrap(),
            };
            Ok(Page {
                total: self.totals[i],
                items: self.pages[i]
                    .iter()
                    .map(|s| RawValue::from_string(s.clone()).unwrap())
                    .collect(),
                next: self.cursors[i].clone().map(PageToken::Cursor),
            })
        }
    }

    fn now() -> DateTime<Utc> {
        "2026-06-01T00:00:00Z".parse().unwrap()
    }

    fn item(id: &str, last_seen: &str) -> String {
        format!(
            r#"{{"id":"{id}","created_at":"2025-01-01T00:00:00Z","updated_at":"2025-01-01T00:00:00Z","last_seen_at":"{last_seen}","key":"k","registration_type":"warp","device":{{"id":"d-{id}","name":"laptop-{id}"}},"user":{{"email":"{id}@example.com"}}}}"#
        )
    }

    fn rules() -> RuleSet {
        RuleSet::new(
            &[RuleSettings {
                idle_days: Some(90),
                ..RuleSettings::new("idle-90d", Kind::DeviceRegistration, Action::Delete)
            }],
            &[],
        )
        .unwrap()
    }

    fn safety(max_actions: u64, fraction: f64) -> SafetySettings {
        SafetySettings {
            mode: Mode::Plan,
            max_actions_per_run: max_actions,
            max_fraction_per_run: fraction,
        }
    }

    const OLD: &str = "2025-06-01T00:00:00Z";
    const NEW: &str = "2026-05-30T00:00:00Z";

    /// Each candidate's note from its mark and its rule's grace days, and the part's outlook.
    #[tokio::test]
    async fn the_grace_outlook_follows_each_candidates_mark() {
        let source = Pages::new(vec![vec![
            item("due", OLD),
            item("waiting", OLD),
            item("new", OLD),
            item("fresh", NEW),
        ]]);
        let day = |d: &str| -> DateTime<Utc> { format!("{d}T00:00:00Z").parse().unwrap() };
        let key = |id: &str| (Kind::DeviceRegistration, None, id.to_owned());
        let marks: MarkDates = [
            (key("due"), day("2026-05-20")),
            (key("waiting"), day("2026-05-28")),
            // Seen recently again: its mark would be cleared.
            (key("fresh"), day("2026-05-01")),
            // Another kind's mark is not this part's business.
            (
                (Kind::AccessServiceToken, None, "t".to_owned()),
                day("2026-05-01"),
            ),
        ]
        .into_iter()
        .collect();
        let settings = |grace_days| {
            vec![RuleSettings {
                idle_days: Some(90),
                grace_days,
                ..RuleSettings::new("idle-90d", Kind::DeviceRegistration, Action::Delete)
            }]
        };
        let mut plan = build_plan(
            &source,
            Kind::DeviceRegistration,
            &rules(),
            &safety(10, 1.0),
            now(),
        )
        .await
        .unwrap();
        assert_eq!(annotate_grace(&mut plan, &marks, &settings(0), now()), None);
        assert!(plan.candidates.iter().all(|c| c.grace.is_none()));
        let outlook = annotate_grace(&mut plan, &marks, &settings(7), now()).unwrap();
        assert_eq!(
            outlook,
            GraceOutlook {
                newly_marked: 1,
                due_now: 1,
                waiting: 2,
                cleared: 1
            }
        );
        let notes: Vec<(&str, &str)> = plan
            .candidates
            .iter()
            .map(|c| (c.id.as_str(), c.grace.as_deref().unwrap()))
            .collect();
        assert_eq!(
            notes,
            [
                ("due", "acts now (marked 2026-05-20)"),
                ("waiting", "marked 2026-05-28, acts on 2026-06-04"),
                ("new", "not yet marked: acts on 2026-06-08 at the earliest"),
            ]
        );
    }

    #[tokio::test]
    async fn follows_the_cursor_to_the_end_including_short_and_empty_pages() {
        let source = Pages::new(vec![
            vec![item("a", OLD), item("b", NEW), item("c", NEW)],
            vec![item("d", OLD)],
            vec![],
            vec![item("e", OLD), item("f", NEW)],
        ]);
        let plan = build_plan(
            &source,
            Kind::DeviceRegistration,
            &rules(),
            &safety(10, 1.0),
            now(),
        )
        .await
        .unwrap();
        assert_eq!(plan.pages, 4);
        assert_eq!(plan.seen.total, 6);
        let ids: Vec<_> = plan.candidates.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a", "d", "e"]);
        assert_eq!(
            *source.asked.lock().unwrap(),
            [
                None,
                Some("c1".into()),
                Some("c2".into()),
                Some("c3".into())
            ]
        );
        assert!(plan.caps.within());
    }

    #[tokio::test]
    async fn a_repeated_cursor_aborts() {
        let mut source = Pages::new(vec![vec![item("a", OLD)], vec![item("b", OLD)]]);
        source.cursors[1] = Some("c1".into());
        let err = build_plan(
            &source,
            Kind::DeviceRegistration,
            &rules(),
            &safety(10, 1.0),
            now(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, PlanError::CursorLoop { page: 2 }), "{err}");
    }

    /// The next page is asked for once a page is read, before its candidates are returned;
    /// nothing is asked after the last page, nor for a cursor seen before.
    #[tokio::test]
    async fn the_next_page_is_asked_for_while_this_one_is_evaluated() {
        let source = Pages::new(vec![vec![item("a", OLD)], vec![item("b", OLD)], vec![]]);
        let asked = || source.asked.lock().unwrap().len();
        let rules = rules();
        let mut planner = Planner::new(&source, Kind::DeviceRegistration, &rules, now());
        assert_eq!(planner.next_page().await.unwrap().unwrap().len(), 1);
        assert_eq!(
            asked(),
            2,
            "page 2 is on its way when page 1's candidates return"
        );
        assert_eq!(planner.next_page().await.unwrap().unwrap().len(), 1);
        assert_eq!(asked(), 3);
        assert_eq!(planner.next_page().await.unwrap().unwrap().len(), 0);
        assert!(planner.next_page().await.unwrap().is_none());
        assert_eq!(asked(), 3, "nothing after the last page");

        let mut looping = Pages::new(vec![vec![item("a", OLD)], vec![item("b", OLD)]]);
        looping.cursors[1] = Some("c1".into());
        let mut planner = Planner::new(&looping, Kind::DeviceRegistration, &rules, now());
        planner.next_page().await.unwrap();
        let err = planner.next_page().await.unwrap_err();
        assert!(matches!(err, PlanError::CursorLoop { page: 2 }), "{err}");
        assert_eq!(
            looping.asked.lock().unwrap().len(),
            2,
            "a repeated cursor is not followed"
        );
    }

    #[tokio::test]
    async fn a_total_count_that_changes_or_is_not_met_aborts() {
        let plan = |totals: [Option<u64>; 2]| {
            let mut source = Pages::new(vec![vec![item("a", OLD)], vec![item("b", OLD)]]);
            source.totals = totals.to_vec();
            async move {
                build_plan(
                    &source,
                    Kind::DeviceRegistration,
                    &rules(),
                    &safety(10, 1.0),
                    now(),
                )
                .await
            }
        };
        assert!(plan([Some(2), Some(2)]).await.is_ok());
        assert!(plan([None, None]).await.is_ok());
        // An object came or went between the pages: one may have been skipped.
        let err = plan([Some(2), Some(1)]).await.unwrap_err();
        assert!(matches!(err, PlanError::Inconsistent { .. }), "{err}");
        // The listing announced more than it held.
        let err = plan([Some(3), Some(3)]).await.unwrap_err();
        assert!(matches!(err, PlanError::Inconsistent { .. }), "{err}");
        assert!(err
            .to_string()
            .contains("counted 3 objects in all but held 2"));
    }

    #[tokio::test]
    async fn a_duplicated_id_aborts() {
        let source = Pages::new(vec![vec![item("a", OLD)], vec![item("a", OLD)]]);
        let err = build_plan(
            &source,
            Kind::DeviceRegistration,
            &rules(),
            &safety(10, 1.0),
            now(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, PlanError::DuplicateIds { count: 1, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_same_uuid_in_two_cases_is_a_duplicate() {
        let id = "0b9a1c2e-6f0e-4a53-9d0e-5b7a3f1c2d4e";
        let source = Pages::new(vec![
            vec![item(id, NEW)],
            vec![item(&id.to_uppercase(), NEW)],
        ]);
        let err = build_plan(
            &source,
            Kind::DeviceRegistration,
            &rules(),
            &safety(10, 1.0),
            now(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, PlanError::DuplicateIds { count: 1, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn anomalies_are_counted_by_kind_and_never_planned() {
        let deleted =
            item("a", OLD).replace(r#""key":"k""#, r#""deleted_at":"2026-01-01T00:00:00Z""#);
        let revoked = item("b", OLD).replace(r#""key":"k""#, r#""revoked_at":false"#);
        let source = Pages::new(vec![vec![deleted, revoked, item("c", OLD)]]);
        let plan = build_plan(
            &source,
            Kind::DeviceRegistration,
            &rules(),
            &safety(10, 1.0),
            now(),
        )
        .await
        .unwrap();
        let ids: Vec<_> = plan.candidates.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["c"]);
        assert_eq!(plan.anomalies.deleted_at_set, 1);
        assert_eq!(plan.anomalies.unparsable_revoked_at, 1);
        assert_eq!(plan.seen.revoked, 1);
        let labels: Vec<_> = plan.anomalies.by_label().iter().map(|(l, _)| *l).collect();
        assert_eq!(labels.len(), Anomaly::ALL.len());
        assert!(plan
            .anomalies
            .by_label()
            .contains(&("unparsable_revoked_at", 1)));
    }

    #[tokio::test]
    async fn an_object_without_identity_aborts() {
        let source = Pages::new(vec![vec![item("a", OLD), r#"{"last_seen_at":"x"}"#.into()]]);
        let err = build_plan(
            &source,
            Kind::DeviceRegistration,
            &rules(),
            &safety(10, 1.0),
            now(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                PlanError::Malformed {
                    page: 1,
                    index: 1,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn caps_table() {
        // (actions, seen, max_actions, max_fraction, within)
        let cases = [
            (0, 0, 10, 0.1, true),
            (10, 100, 10, 0.1, true),
            (11, 1000, 10, 0.1, false),
            (11, 100, 50, 0.1, false),
            (1, 15, 50, 0.1, true),
            (2, 15, 50, 0.1, false),
            (1, 5, 50, 0.1, false),
        ];
        for (actions, seen, max, fraction, within) in cases {
            let check = CapCheck::new(
                Kind::DeviceRegistration,
                actions,
                seen,
                &safety(max, fraction),
            );
            assert_eq!(
                check.within(),
                within,
                "{actions} of {seen}, cap {max}/{fraction}: {check:?}"
            );
        }
    }
}

//! Notifications: after a run is finished and its run row closed, tell each `[[notify]]`
//! webhook what it did, as a bounded digest (generic JSON or Slack-compatible).
//!
//! This module owns the digest, its two payloads, and delivery: on a task of its own, with
//! retries (exponential backoff with jitter on 5xx, 429 and transport errors, `Retry-After`
//! honoured) until the target's deadline. A delivery never fails the run, never delays an
//! action or the next cycle, and each attempt is recorded in the audit log and counted in
//! `zt_janitor_notifications_total`. The webhook URL is a secret: it is read at each
//! delivery ([`WebhookUrl`]), never logged or stored (only its host is logged), and errors are
//! rendered without it.

use std::collections::BTreeMap;
use std::error::Error as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::audit::{
    AuditStore, MarkEvent, MarkTally, NotificationAttempt, RunId, RunItem, RunOutcome, RunSummary,
};
use crate::config::{Config, Mode, NotifyFormat, NotifyLevel, NotifySend, NotifySettings};
use crate::cycle::CycleReport;
use crate::metrics::Metrics;
use crate::resource::Kind;
use crate::secret::WebhookUrl;

/// The `schema_version` of the generic JSON payload.
pub const SCHEMA_VERSION: u32 = 1;

/// The `outcome` values of `zt_janitor_notifications_total` and of the audit's
/// `notification_attempts.outcome`.
pub const ATTEMPT_OUTCOMES: [&str; 7] = [
    "delivered",
    "rejected",
    "server_error",
    "rate_limited",
    "timeout",
    "transport_error",
    "url_unavailable",
];

/// Most parts (kinds, and zones of a zoned kind) listed one by one; the rest are counted.
const MAX_PARTS: usize = 50;
/// Longest text taken from Cloudflare or the audit log (names, reasons), in characters.
const MAX_TEXT: usize = 300;
/// Slack refuses a section text longer than 3000 characters.
const SLACK_SECTION: usize = 2900;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One kind's part of a finished run (for a zoned kind, one zone's), owned.
#[derive(Debug, Clone)]
pub struct PartFacts {
    pub kind: Kind,
    pub zone: Option<String>,
    pub outcome: RunOutcome,
    pub reason: Option<String>,
    pub summary: RunSummary,
    /// The grace period's marks of the part, for a kind that has one.
    pub grace: Option<MarkTally>,
}

/// What a finished run was, taken from its [`CycleReport`] so that it can travel to the
/// delivery task.
#[derive(Debug, Clone)]
pub struct RunFacts {
    pub run_id: i64,
    pub mode: Mode,
    pub outcome: RunOutcome,
    pub reason: Option<String>,
    pub seconds: f64,
    pub summary: RunSummary,
    pub parts: Vec<PartFacts>,
}

impl RunFacts {
    pub fn of(report: &CycleReport) -> Self {
        RunFacts {
            run_id: report.run_id,
            mode: report.mode,
            outcome: report.outcome,
            reason: report.reason.clone(),
            seconds: report.seconds,
            summary: report.summary.clone(),
            parts: report
                .resources
                .iter()
                .map(|p| PartFacts {
                    kind: p.kind,
                    zone: p.zone.as_ref().map(|z| z.as_str().to_owned()),
                    outcome: p.outcome,
                    reason: p.reason.clone(),
                    summary: p.summary.clone(),
                    grace: p.grace,
                })
                .collect(),
        }
    }
}

/// How much a run matters, or `None` for a quiet run: `errors` when it failed or a listing
/// aborted; `warnings` when a part was refused (caps) or actions failed, were refused by the
/// API or are stuck; `actions` when something was done, or the candidates changed since the
/// previous finished run of the same mode (`previous`; none counts as 0).
pub fn level(run: &RunFacts, previous: Option<u64>) -> Option<NotifyLevel> {
    let parts = |o: RunOutcome| run.parts.iter().any(|p| p.outcome == o);
    let s = &run.summary;
    if matches!(run.outcome, RunOutcome::Failed | RunOutcome::Aborted)
        || parts(RunOutcome::Failed)
        || parts(RunOutcome::Aborted)
    {
        Some(NotifyLevel::Errors)
    } else if run.outcome == RunOutcome::Refused
        || parts(RunOutcome::Refused)
        || s.actions_failed > 0
        || s.actions_refused > 0
        || s.actions_stuck > 0
    {
        Some(NotifyLevel::Warnings)
    } else if s.actions_done > 0
        || s.candidates.unwrap_or(0) != previous.unwrap_or(0)
        || run
            .parts
            .iter()
            .filter_map(|p| p.grace)
            .any(|g| g.marked > 0 || g.cleared > 0)
    {
        Some(NotifyLevel::Actions)
    } else {
        None
    }
}

/// Whether `target` is sent a run of `level`.
pub fn wants(target: &NotifySettings, level: Option<NotifyLevel>) -> bool {
    match target.send {
        NotifySend::Always => true,
        NotifySend::Changes => level.is_some_and(|l| l >= target.min_level),
    }
}

/// The bounded digest of a run, shaped as the generic JSON payload.
#[derive(Debug, Clone, Serialize)]
pub struct Digest {
    pub schema_version: u32,
    pub source: &'static str,
    pub account_id: String,
    pub run: RunDigest,
    /// `null` for a quiet run (sent only to `send = "always"` targets).
    pub level: Option<NotifyLevel>,
    /// One line, as the Slack `text`.
    pub summary: String,
    pub kinds: Vec<KindDigest>,
    /// Parts beyond the first 50, not listed.
    pub kinds_omitted: usize,
    /// Listings that did not complete, with why.
    pub aborted: Vec<Aborted>,
    /// The first objects: failures first, then done, then not attempted or planned.
    pub items: Vec<Item>,
    /// How many objects of each status the run has in all, listed or not.
    pub items_by_status: BTreeMap<String, u64>,
    /// Objects not listed.
    pub items_omitted: u64,
    /// The grace period's marks this run set and cleared; absent when no kind has a grace
    /// period.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub marks: Option<MarksDigest>,
}

/// What the grace period did this run: the first marks set (each with the day it will be
/// acted on and how to keep the object) and cleared, and how many in all.
#[derive(Debug, Clone, Serialize)]
pub struct MarksDigest {
    pub marked: u64,
    pub cleared: u64,
    pub due: u64,
    pub waiting: u64,
    pub new: Vec<MarkItem>,
    pub cleared_items: Vec<MarkItem>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MarkItem {
    pub resource: String,
    pub zone: Option<String>,
    pub id: String,
    pub name: Option<String>,
    pub user_email: Option<String>,
    pub rule: String,
    pub first_marked_at: String,
    /// New marks: the day it will be acted on if it stays a candidate.
    pub acts_on: Option<String>,
    /// New marks: what happens next, and how to keep the object.
    pub next: Option<String>,
    /// Cleared marks: why.
    pub reason: Option<String>,
}

impl MarksDigest {
    /// From the run's mark events and each rule's grace days (`grace`: kind, rule, days).
    pub fn build(
        run: &RunFacts,
        events: &[MarkEvent],
        grace: &[(Kind, String, u32)],
        max_items: usize,
    ) -> Option<MarksDigest> {
        let tallies: Vec<MarkTally> = run.parts.iter().filter_map(|p| p.grace).collect();
        if tallies.is_empty() {
            return None;
        }
        let sum = |f: fn(&MarkTally) -> u64| tallies.iter().map(f).sum::<u64>();
        let item = |e: &MarkEvent| {
            let days = grace
                .iter()
                .find(|(k, r, _)| k.as_str() == e.resource_kind && *r == e.rule)
                .map(|(_, _, d)| *d);
            let acts_on = (e.event == "marked")
                .then(|| {
                    let first = chrono::DateTime::parse_from_rfc3339(&e.first_marked_at).ok()?;
                    let at = first + chrono::TimeDelta::days(i64::from(days?));
                    Some(at.format("%Y-%m-%d").to_string())
                })
                .flatten();
            let next = acts_on.as_ref().map(|day| {
                format!(
                    "will be {} on {day} if it is still a candidate then; to keep it, use it again before that, or add an [[exclude]] that covers it",
                    match e.action.as_deref() {
                        Some("revoke") => "revoked",
                        _ => "deleted",
                    }
                )
            });
            MarkItem {
                resource: bounded(&e.resource_kind),
                zone: bounded_opt(&e.zone_id),
                id: bounded(&e.resource_id),
                name: bounded_opt(&e.name),
                user_email: bounded_opt(&e.user_email),
                rule: bounded(&e.rule),
                first_marked_at: bounded(&e.first_marked_at),
                acts_on,
                next,
                reason: bounded_opt(&e.reason),
            }
        };
        let of = |event: &str| -> Vec<MarkItem> {
            events
                .iter()
                .filter(|e| e.event == event)
                .take(max_items)
                .map(item)
                .collect()
        };
        Some(MarksDigest {
            marked: sum(|t| t.marked),
            cleared: sum(|t| t.cleared),
            due: sum(|t| t.due),
            waiting: sum(|t| t.waiting),
            new: of("marked"),
            cleared_items: of("cleared"),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunDigest {
    pub id: i64,
    pub mode: Mode,
    pub outcome: RunOutcome,
    pub reason: Option<String>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct KindDigest {
    pub resource: Kind,
    pub zone: Option<String>,
    pub outcome: RunOutcome,
    /// Why the part was refused (caps), aborted or failed.
    pub reason: Option<String>,
    pub seen: Option<u64>,
    pub candidates: Option<u64>,
    pub excluded: Option<u64>,
    pub done: u64,
    pub failed: u64,
    pub stuck: u64,
    pub refused_by_api: u64,
    /// The part was refused by the safety caps (or blocked): nothing was done in it.
    pub refused: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Aborted {
    pub resource: Kind,
    pub zone: Option<String>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub resource: String,
    pub zone: Option<String>,
    pub id: String,
    pub name: Option<String>,
    pub user_email: Option<String>,
    pub rule: String,
    pub action: String,
    pub status: String,
    pub detail: Option<String>,
}

/// At most [`MAX_TEXT`] characters, with `…` when cut.
fn bounded(text: &str) -> String {
    match text.char_indices().nth(MAX_TEXT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

fn bounded_opt(text: &Option<String>) -> Option<String> {
    text.as_deref().map(bounded)
}

impl Digest {
    /// The digest of `run`; `items` are the first objects and `totals` the count of each
    /// status (from [`AuditStore::run_items`]), `max_items` the most listed.
    pub fn build(
        run: &RunFacts,
        account_id: &str,
        level: Option<NotifyLevel>,
        items: &[RunItem],
        totals: &[(String, u64)],
        max_items: usize,
        marks: Option<MarksDigest>,
    ) -> Digest {
        let kinds: Vec<KindDigest> = run
            .parts
            .iter()
            .take(MAX_PARTS)
            .map(|p| KindDigest {
                resource: p.kind,
                zone: p.zone.clone(),
                outcome: p.outcome,
                reason: bounded_opt(&p.reason),
                seen: p.summary.seen_total,
                candidates: p.summary.candidates,
                excluded: p.summary.excluded,
                done: p.summary.actions_done,
                failed: p.summary.actions_failed,
                stuck: p.summary.actions_stuck,
                refused_by_api: p.summary.actions_refused,
                refused: p.outcome == RunOutcome::Refused,
            })
            .collect();
        let aborted = run
            .parts
            .iter()
            .filter(|p| p.outcome == RunOutcome::Aborted)
            .take(MAX_PARTS)
            .map(|p| Aborted {
                resource: p.kind,
                zone: p.zone.clone(),
                reason: bounded_opt(&p.reason),
            })
            .collect();
        let listed: Vec<Item> = items
            .iter()
            .take(max_items)
            .map(|i| Item {
                resource: bounded(&i.kind),
                zone: bounded_opt(&i.zone),
                id: bounded(&i.id),
                name: bounded_opt(&i.name),
                user_email: bounded_opt(&i.user_email),
                rule: bounded(&i.rule),
                action: bounded(&i.action),
                status: bounded(&i.status),
                detail: bounded_opt(&i.detail),
            })
            .collect();
        let items_by_status: BTreeMap<String, u64> = totals.iter().cloned().collect();
        let total: u64 = items_by_status.values().sum();
        let s = &run.summary;
        let summary = format!(
            "zt-janitor run {} ({}): {}; {} candidates, {} done, {} failed, {} refused by the \
             API{}",
            run.run_id,
            run.mode,
            run.outcome.as_str(),
            s.candidates
                .map_or_else(|| "?".to_owned(), |n| n.to_string()),
            s.actions_done,
            s.actions_failed,
            s.actions_refused,
            run.reason
                .as_deref()
                .map(|r| format!(" ({})", bounded(r)))
                .unwrap_or_default(),
        );
        Digest {
            schema_version: SCHEMA_VERSION,
            source: "zt-janitor",
            account_id: account_id.to_owned(),
            run: RunDigest {
                id: run.run_id,
                mode: run.mode,
                outcome: run.outcome,
                reason: bounded_opt(&run.reason),
                seconds: run.seconds,
            },
            level,
            summary,
            kinds_omitted: run.parts.len().saturating_sub(MAX_PARTS),
            kinds,
            aborted,
            items_omitted: total.saturating_sub(listed.len() as u64),
            items: listed,
            items_by_status,
            marks,
        }
    }

    /// The body sent to a target of `format`, listing at most `max_items` objects.
    pub fn payload(&self, format: NotifyFormat, max_items: usize) -> Value {
        let mut digest = self.clone();
        if digest.items.len() > max_items {
            digest.items_omitted += (digest.items.len() - max_items) as u64;
            digest.items.truncate(max_items);
        }
        if let Some(marks) = &mut digest.marks {
            marks.new.truncate(max_items);
            marks.cleared_items.truncate(max_items);
        }
        match format {
            NotifyFormat::Json => serde_json::to_value(&digest).unwrap_or(Value::Null),
            NotifyFormat::Slack => digest.slack(),
        }
    }

    /// `text` (the one-line summary) and `blocks`: a section for the run, one per kind, the
    /// objects in sections of at most [`SLACK_SECTION`] characters, and a context line
    /// counting what is not listed. Every text from outside is escaped ([`slack_escape`]).
    fn slack(&self) -> Value {
        let section =
            |text: String| json!({"type": "section", "text": {"type": "mrkdwn", "text": text}});
        let mut blocks = vec![section(format!("*{}*", slack_escape(&self.summary)))];
        for k in &self.kinds {
            let place = match &k.zone {
                Some(zone) => format!(" in zone {}", slack_escape(zone)),
                None => String::new(),
            };
            let mut text = format!(
                "*{}*{place}: {}; seen {}, candidates {}, done {}, failed {}, refused by the API {}",
                k.resource,
                k.outcome.as_str(),
                count(k.seen),
                count(k.candidates),
                k.done,
                k.failed,
                k.refused_by_api,
            );
            if let Some(reason) = &k.reason {
                text.push_str(&format!("\n{}", slack_escape(reason)));
            }
            blocks.push(section(text));
        }
        let mut chunk = String::new();
        for item in &self.items {
            let line = format!(
                "• {} {} {} {}{} (rule {}){}\n",
                slack_escape(&item.status),
                slack_escape(&item.action),
                slack_escape(&item.resource),
                slack_escape(item.name.as_deref().unwrap_or("")),
                item.user_email
                    .as_deref()
                    .map(|e| format!(" of {}", slack_escape(e)))
                    .unwrap_or_default(),
                slack_escape(&item.rule),
                item.detail
                    .as_deref()
                    .map(|d| format!(": {}", slack_escape(d)))
                    .unwrap_or_default(),
            );
            if chunk.len() + line.len() > SLACK_SECTION && !chunk.is_empty() {
                blocks.push(section(std::mem::take(&mut chunk)));
            }
            chunk.push_str(&line);
        }
        if !chunk.is_empty() {
            blocks.push(section(chunk));
        }
        if let Some(marks) = &self.marks {
            let mut text = format!(
                "*Grace period*: {} newly marked, {} cleared, {} due now, {} still waiting",
                marks.marked, marks.cleared, marks.due, marks.waiting
            );
            for m in &marks.new {
                let line = format!(
                    "\n• {} {}{} (rule {}) {}",
                    slack_escape(&m.resource),
                    slack_escape(m.name.as_deref().unwrap_or(&m.id)),
                    m.user_email
                        .as_deref()
                        .map(|e| format!(" of {}", slack_escape(e)))
                        .unwrap_or_default(),
                    slack_escape(&m.rule),
                    slack_escape(m.next.as_deref().unwrap_or("")),
                );
                if text.len() + line.len() > SLACK_SECTION {
                    blocks.push(section(std::mem::take(&mut text)));
                }
                text.push_str(&line);
            }
            for m in &marks.cleared_items {
                let line = format!(
                    "\n• cleared: {} {} ({})",
                    slack_escape(&m.resource),
                    slack_escape(&m.id),
                    slack_escape(m.reason.as_deref().unwrap_or("")),
                );
                if text.len() + line.len() > SLACK_SECTION {
                    blocks.push(section(std::mem::take(&mut text)));
                }
                text.push_str(&line);
            }
            if !text.is_empty() {
                blocks.push(section(text));
            }
        }
        if self.items_omitted > 0 || self.kinds_omitted > 0 {
            let totals: Vec<String> = self
                .items_by_status
                .iter()
                .map(|(status, n)| format!("{n} {}", slack_escape(status)))
                .collect();
            blocks.push(
                json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!(
                    "{} more objects and {} more parts not listed; in all: {}",
                    self.items_omitted,
                    self.kinds_omitted,
                    totals.join(", ")
                )}]}),
            );
        }
        json!({"text": slack_escape(&self.summary), "blocks": blocks})
    }
}

fn count(n: Option<u64>) -> String {
    n.map_or_else(|| "?".to_owned(), |n| n.to_string())
}

/// Text from outside made inert for Slack: control characters escaped (as everywhere), and
/// `&`, `<`, `>` as Slack asks, so that a device named `<!channel>` is not a mention and
/// `<https://…|x>` not a link.
pub fn slack_escape(text: &str) -> String {
    crate::report::escape(text)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The deliveries in flight. The daemon keeps one across cycles; `once` waits on its own
/// before exiting.
#[derive(Default)]
pub struct Outbox {
    tasks: Mutex<JoinSet<()>>,
}

impl Outbox {
    /// Starts delivering the finished run of `report` to the targets of `config` that want
    /// it, on a task of its own, and returns at once.
    pub fn after_run(
        &self,
        config: &Config,
        audit: &AuditStore,
        metrics: &Metrics,
        report: &CycleReport,
    ) {
        if config.notify.is_empty() {
            return;
        }
        let run = RunFacts::of(report);
        let targets = config.notify.clone();
        let grace: Vec<(Kind, String, u32)> = config
            .rules
            .iter()
            .map(|r| (r.resource, r.name.clone(), r.grace_days))
            .collect();
        let account = config.cloudflare.account_id.to_string();
        let (audit, metrics) = (audit.clone(), metrics.clone());
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        // Finished deliveries are reaped here, so that a daemon's set does not grow.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move { notify_run(run, targets, grace, account, audit, metrics).await });
    }

    /// Waits for the deliveries in flight, at most `limit`; whether all finished. Those
    /// still running after `limit` are abandoned.
    pub async fn wait(&self, limit: Duration) -> bool {
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        tokio::time::timeout(limit, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_ok()
    }
}

/// How long `once` waits for the deliveries of `config`'s targets: the longest deadline,
/// and a little for the audit writes.
pub fn longest_deadline(config: &Config) -> Duration {
    config
        .notify
        .iter()
        .map(NotifySettings::deadline)
        .max()
        .unwrap_or_default()
        + Duration::from_secs(5)
}

async fn notify_run(
    run: RunFacts,
    targets: Vec<NotifySettings>,
    grace: Vec<(Kind, String, u32)>,
    account: String,
    audit: AuditStore,
    metrics: Metrics,
) {
    let id = RunId(run.run_id);
    let previous = audit
        .previous_candidates(id, run.mode)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the previous run's candidates; taking 0");
            None
        });
    let level = level(&run, previous);
    let wanted: Vec<NotifySettings> = targets.into_iter().filter(|t| wants(t, level)).collect();
    if wanted.is_empty() {
        tracing::debug!(run = run.run_id, "quiet run: no notification wanted");
        return;
    }
    let max_items = wanted.iter().map(|t| t.max_items).max().unwrap_or(0);
    let (items, totals) = audit.run_items(id, max_items).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read the run's objects for its notification; sending counts only");
        (Vec::new(), Vec::new())
    });
    let marks = if run.parts.iter().any(|p| p.grace.is_some()) {
        match audit.run_mark_events(id, max_items).await {
            Ok((events, _, _)) => MarksDigest::build(&run, &events, &grace, max_items),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the run's marks for its notification; sending counts only");
                MarksDigest::build(&run, &[], &grace, max_items)
            }
        }
    } else {
        None
    };
    let digest = Digest::build(&run, &account, level, &items, &totals, max_items, marks);
    let mut deliveries = JoinSet::new();
    for target in wanted {
        let body = serde_json::to_vec(&digest.payload(target.format, target.max_items))
            .unwrap_or_default();
        let (audit, metrics) = (audit.clone(), metrics.clone());
        deliveries.spawn(async move { deliver(&target, body, id, &audit, &metrics).await });
    }
    while deliveries.join_next().await.is_some() {}
}

/// How one attempt ended.
struct Attempted {
    outcome: &'static str,
    status: Option<u16>,
    error: Option<String>,
    retryable: bool,
    retry_after: Option<Duration>,
}

/// Sends `body` to `target` until it is delivered, refused for good, or its deadline comes.
async fn deliver(
    target: &NotifySettings,
    body: Vec<u8>,
    run: RunId,
    audit: &AuditStore,
    metrics: &Metrics,
) {
    let deadline = Instant::now() + target.deadline();
    let record = |attempt: u32, started_at, a: &Attempted, last: bool| {
        metrics
            .notifications
            .with_label_values(&[target.name.as_str(), a.outcome])
            .inc();
        NotificationAttempt {
            run,
            target: target.name.clone(),
            attempt,
            started_at,
            finished_at: Utc::now(),
            outcome: a.outcome.to_owned(),
            http_status: a.status,
            error: a.error.clone(),
            last,
        }
    };
    let url = match WebhookUrl::load(&target.url, |name| std::env::var_os(name)) {
        Ok(url) => url,
        Err(e) => {
            tracing::warn!(target = %target.name, error = %e, "notification not sent: its webhook URL cannot be read");
            let a = Attempted {
                outcome: "url_unavailable",
                status: None,
                error: Some(e.to_string()),
                retryable: false,
                retry_after: None,
            };
            save(audit, record(1, Utc::now(), &a, true)).await;
            return;
        }
    };
    let host = url.host();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(target.timeout())
        .connect_timeout(target.timeout())
        .build();
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            let a = Attempted {
                outcome: "transport_error",
                status: None,
                error: Some(redacted(e, &url)),
                retryable: false,
                retry_after: None,
            };
            tracing::warn!(target = %target.name, %host, error = ?a.error, "notification not sent: no HTTP client");
            save(audit, record(1, Utc::now(), &a, true)).await;
            return;
        }
    };
    for attempt in 1u32.. {
        let per = target
            .timeout()
            .min(deadline.saturating_duration_since(Instant::now()));
        let started_at = Utc::now();
        let sent = tokio::time::timeout(
            per,
            client
                .post(url.expose())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .timeout(per.max(Duration::from_millis(1)))
                .body(body.clone())
                .send(),
        )
        .await;
        let a = classify(sent, &url);
        // Never sooner than the server asked, nor than the backoff: a `Retry-After: 0` must
        // not turn into a flood.
        let wait = a.retry_after.unwrap_or_default().max(backoff(attempt));
        let remaining = deadline.saturating_duration_since(Instant::now());
        let last = !a.retryable || wait >= remaining;
        save(audit, record(attempt, started_at, &a, last)).await;
        match (a.outcome, last) {
            ("delivered", _) => {
                tracing::info!(target = %target.name, %host, attempt, run = run.0, "notification delivered");
                return;
            }
            (_, true) => {
                tracing::warn!(target = %target.name, %host, attempt, run = run.0, outcome = a.outcome, status = ?a.status, error = ?a.error, "notification not delivered; given up (the run is not affected)");
                return;
            }
            (_, false) => {
                tracing::info!(target = %target.name, %host, attempt, outcome = a.outcome, status = ?a.status, error = ?a.error, retry_in_ms = wait.as_millis() as u64, "notification attempt failed; will retry");
            }
        }
        tokio::time::sleep(wait).await;
    }
}

/// Writes one attempt; a failed write marks the store untrusted, as any audit write does.
async fn save(audit: &AuditStore, attempt: NotificationAttempt) {
    if let Err(e) = audit.record_notification_attempt(&attempt).await {
        audit.mark_failed(&e);
        tracing::error!(error = %e, target = %attempt.target, "a notification attempt could not be audited");
    }
}

fn classify(
    sent: Result<Result<reqwest::Response, reqwest::Error>, tokio::time::error::Elapsed>,
    url: &WebhookUrl,
) -> Attempted {
    let failed = |outcome, error: String| Attempted {
        outcome,
        status: None,
        error: Some(error),
        retryable: true,
        retry_after: None,
    };
    let response = match sent {
        Err(_) => return failed("timeout", "no answer within the attempt's timeout".into()),
        Ok(Err(e)) if e.is_timeout() => return failed("timeout", redacted(e, url)),
        Ok(Err(e)) => return failed("transport_error", redacted(e, url)),
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let (outcome, retryable) = if status.is_success() {
        ("delivered", false)
    } else if status.as_u16() == 429 {
        ("rate_limited", true)
    } else if status.is_server_error() {
        ("server_error", true)
    } else {
        // A redirect (not followed: it would take the payload elsewhere) or a 4xx: retrying
        // the same request cannot help.
        ("rejected", false)
    };
    Attempted {
        outcome,
        status: Some(status.as_u16()),
        error: (!status.is_success()).then(|| format!("HTTP {}", status.as_u16())),
        retryable,
        retry_after: retry_after.filter(|_| retryable),
    }
}

/// The error and its causes, without the URL (reqwest puts it in its message).
fn redacted(error: reqwest::Error, url: &WebhookUrl) -> String {
    let mut causes = Vec::new();
    let mut source = error.source();
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    let mut text = error.without_url().to_string();
    for cause in causes {
        text.push_str(": ");
        text.push_str(&cause);
    }
    // Belt and braces: no cause may carry the URL either.
    bounded(&text.replace(url.expose(), "[redacted]"))
}

/// The wait before attempt `attempt + 1`: 0.5 s doubled each time, at most 30 s, times a
/// random factor from 0.5 to 1 so that many janitors do not retry in step.
fn backoff(attempt: u32) -> Duration {
    let base = FIRST_BACKOFF
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    base.mul_f64(rand::Rng::gen_range(&mut rand::thread_rng(), 0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(outcome: RunOutcome, done: u64, failed: u64, candidates: Option<u64>) -> RunFacts {
        let summary = RunSummary {
            candidates,
            actions_done: done,
            actions_failed: failed,
            ..RunSummary::default()
        };
        RunFacts {
            run_id: 7,
            mode: Mode::Apply,
            outcome,
            reason: None,
            seconds: 1.0,
            summary: summary.clone(),
            parts: vec![PartFacts {
                kind: Kind::DeviceRegistration,
                zone: None,
                outcome,
                reason: None,
                summary,
                grace: None,
            }],
        }
    }

    #[test]
    fn a_run_is_quiet_unless_it_did_failed_or_its_candidates_changed() {
        use NotifyLevel::*;
        use RunOutcome::*;
        // (case, run, previous candidates, level)
        let cases = [
            ("nothing to do", run(Applied, 0, 0, Some(0)), None, None),
            (
                "same candidates as before",
                run(Planned, 0, 0, Some(4)),
                Some(4),
                None,
            ),
            (
                "new candidates",
                run(Planned, 0, 0, Some(5)),
                Some(4),
                Some(Actions),
            ),
            (
                "first run with candidates",
                run(Planned, 0, 0, Some(5)),
                None,
                Some(Actions),
            ),
            (
                "actions done",
                run(Applied, 3, 0, Some(3)),
                Some(3),
                Some(Actions),
            ),
            (
                "actions failed",
                run(Applied, 2, 1, Some(3)),
                Some(3),
                Some(Warnings),
            ),
            (
                "refused by the caps",
                run(Refused, 0, 0, Some(90)),
                Some(90),
                Some(Warnings),
            ),
            (
                "listing aborted",
                run(Aborted, 0, 0, None),
                Some(3),
                Some(Errors),
            ),
            ("run failed", run(Failed, 0, 0, None), None, Some(Errors)),
        ];
        for (case, facts, previous, expected) in cases {
            assert_eq!(level(&facts, previous), expected, "{case}");
        }
    }

    #[test]
    fn min_level_filters_changes_and_always_sends_everything() {
        let mut t = NotifySettings {
            name: "t".into(),
            format: NotifyFormat::Json,
            url: crate::config::UrlSource::Env("X".into()),
            send: NotifySend::Changes,
            min_level: NotifyLevel::Warnings,
            max_items: 20,
            timeout_secs: 10,
            deadline_secs: 60,
        };
        assert!(!wants(&t, None));
        assert!(!wants(&t, Some(NotifyLevel::Actions)));
        assert!(wants(&t, Some(NotifyLevel::Warnings)));
        assert!(wants(&t, Some(NotifyLevel::Errors)));
        t.send = NotifySend::Always;
        assert!(wants(&t, None));
    }

    #[test]
    fn slack_text_cannot_mention_link_or_break_lines() {
        assert_eq!(
            slack_escape("<!channel> <@U1> <https://x|y> a&b\n"),
            "&lt;!channel&gt; &lt;@U1&gt; &lt;https://x|y&gt; a&amp;b\\u{a}"
        );
    }

    #[test]
    fn the_payload_is_bounded() {
        let item = |i: usize| RunItem {
            kind: "device_registration".into(),
            zone: None,
            id: format!("id-{i}"),
            name: Some("x".repeat(10_000)),
            user_email: None,
            rule: "r".into(),
            action: "delete".into(),
            status: "done".into(),
            detail: None,
        };
        let items: Vec<RunItem> = (0..100).map(item).collect();
        let facts = run(RunOutcome::Applied, 500, 0, Some(500));
        let digest = Digest::build(
            &facts,
            "acct",
            Some(NotifyLevel::Actions),
            &items,
            &[("done".into(), 500)],
            100,
            None,
        );
        let json = digest.payload(NotifyFormat::Json, 3);
        assert_eq!(json["items"].as_array().unwrap().len(), 3);
        assert_eq!(json["items_omitted"], 497);
        assert!(json["items"][0]["name"].as_str().unwrap().chars().count() <= MAX_TEXT + 1);
        let slack = digest.payload(NotifyFormat::Slack, 100);
        let blocks = slack["blocks"].as_array().unwrap();
        assert!(blocks.len() <= 50, "{}", blocks.len());
        for b in blocks {
            if let Some(text) = b["text"]["text"].as_str() {
                assert!(text.chars().count() <= 3000, "{}", text.len());
            }
        }
        assert!(serde_json::to_vec(&slack).unwrap().len() < 100_000);
    }

    #[test]
    fn answers_are_classified_and_only_transient_ones_retried() {
        let url = WebhookUrl::load(&crate::config::UrlSource::Env("U".into()), |_| {
            Some("https://hooks.example.com/secret".into())
        })
        .unwrap();
        let answer = |status: u16, retry_after: Option<&str>| {
            let mut r = axum::http::Response::builder().status(status);
            if let Some(v) = retry_after {
                r = r.header("retry-after", v);
            }
            classify(Ok(Ok(reqwest::Response::from(r.body("").unwrap()))), &url)
        };
        // (status, Retry-After, outcome, retried, wait asked)
        let cases = [
            (200, None, "delivered", false, None),
            (204, None, "delivered", false, None),
            (429, Some("7"), "rate_limited", true, Some(7)),
            (503, Some("soon"), "server_error", true, None),
            (500, None, "server_error", true, None),
            (302, None, "rejected", false, None),
            (404, Some("5"), "rejected", false, None),
        ];
        for (status, retry_after, outcome, retried, wait) in cases {
            let a = answer(status, retry_after);
            assert_eq!(a.outcome, outcome, "{status}");
            assert_eq!(a.retryable, retried, "{status}");
            assert_eq!(a.retry_after, wait.map(Duration::from_secs), "{status}");
            assert_eq!(a.status, Some(status));
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        for attempt in 1..40 {
            let b = backoff(attempt);
            let base = FIRST_BACKOFF
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(MAX_BACKOFF);
            assert!(b >= base / 2 && b <= base, "{attempt}: {b:?}");
        }
    }
}

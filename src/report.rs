//! Rendering for people and machines: the plan table and summary, cycle reports and audit
//! listings as text, JSON or CSV. Pure formatting: no I/O beyond the writer it is given.
//!
//! Most of what is printed comes from the API (emails, device names, Cloudflare's error
//! messages) and is hostile until proven otherwise. Text output passes every such value through
//! [`escape`], so a value can neither forge rows nor drive the terminal; CSV output passes every
//! cell through [`neutralise_formula`], so a spreadsheet does not run it; JSON stays exact.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{self, Write};

use std::collections::BTreeMap;

use serde::Serialize;
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

use chrono::{DateTime, Utc};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::audit::{ActionRow, MarkRow, RunRow};
use crate::cloudflare::{AccountId, Stamp};
use crate::config::{Config, Mode};
use crate::cycle::CycleReport;
use crate::plan::{AnomalyCounts, Candidate, CapCheck, Entry, Plan, SeenCounts};
use crate::resource::{Kind, Scope};
use crate::rules::RuleSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Csv,
}

/// `n` and the noun that goes with it: "1 page", "2 pages", "0 pages".
pub fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The plan as a table of candidates followed by a summary, every value whole.
pub fn plan_text<E: Entry>(out: &mut dyn Write, plan: &Plan<E>, rules: &RuleSet) -> io::Result<()> {
    plan_text_fit(out, plan, rules, None)
}

/// [`plan_text`] with the table fitted to `width` terminal columns, if given: free text (user,
/// name, why) is cut with `…`, LAST SEEN left out before that text is cut short (WHY names the
/// date a rule read), and ids are never cut. The summary lines are not cut.
pub fn plan_text_fit<E: Entry>(
    out: &mut dyn Write,
    plan: &Plan<E>,
    rules: &RuleSet,
    width: Option<usize>,
) -> io::Result<()> {
    let why = |c: &Candidate| match (&c.excluded_by, &c.grace) {
        (None, None) => c.why.to_string(),
        (None, Some(grace)) => format!("{}; {grace}", c.why),
        (Some(by), _) => format!("{}; protected by {by}", c.why),
    };
    let action = |c: &Candidate| match &c.excluded_by {
        None if crate::resource::undoable(c.kind, c.action) => format!("{} (undoable)", c.action),
        None => c.action.to_string(),
        Some(_) => "(excluded)".to_owned(),
    };
    let candidates = plan.candidates.iter().map(Entry::candidate);
    let (one, many) = plan.kind.noun();
    if plan.candidates.is_empty() {
        writeln!(out, "No {one} matches a rule.")?;
    } else {
        match plan.kind {
            Kind::DeviceRegistration => {
                let rows: Vec<[String; 7]> = candidates
                    .map(|c| {
                        [
                            c.rule.clone(),
                            action(c),
                            c.id.to_string(),
                            c.user_email.clone().unwrap_or_else(|| "-".to_owned()),
                            c.name.clone(),
                            c.last_seen_at.to_string(),
                            why(c),
                        ]
                    })
                    .collect();
                let header = [
                    ("RULE", Fit::Name),
                    ("ACTION", Fit::Whole),
                    ("REGISTRATION", Fit::Whole),
                    ("USER", Fit::Cut),
                    ("DEVICE", Fit::Cut),
                    ("LAST SEEN", Fit::Optional),
                    ("WHY", Fit::Cut),
                ];
                table(out, &header, &rows, width)?;
            }
            Kind::AccessServiceToken | Kind::AccountApiToken | Kind::ClientCertificate => {
                let rows: Vec<[String; 6]> = candidates
                    .map(|c| {
                        [
                            c.rule.clone(),
                            action(c),
                            c.id.to_string(),
                            c.name.clone(),
                            c.last_seen_at.to_string(),
                            why(c),
                        ]
                    })
                    .collect();
                let (what, name, seen) = match plan.kind {
                    Kind::ClientCertificate => ("CLIENT CERTIFICATE", "COMMON NAME", "ISSUED"),
                    Kind::AccountApiToken => ("ACCOUNT API TOKEN", "NAME", "LAST USED"),
                    _ => ("SERVICE TOKEN", "NAME", "LAST SEEN"),
                };
                let header = [
                    ("RULE", Fit::Name),
                    ("ACTION", Fit::Whole),
                    (what, Fit::Whole),
                    (name, Fit::Cut),
                    (seen, Fit::Optional),
                    ("WHY", Fit::Cut),
                ];
                table(out, &header, &rows, width)?;
            }
        }
    }
    writeln!(out)?;
    let seen = plural(plan.seen.total, one, many);
    let pages = plural(plan.pages, "page", "pages");
    match plan.kind {
        Kind::DeviceRegistration => writeln!(
            out,
            "Seen: {seen} ({} active, {} revoked) in {pages}",
            plan.seen.active, plan.seen.revoked
        )?,
        Kind::ClientCertificate => writeln!(
            out,
            "Seen: {seen} ({} active, {} pending revocation or revoked) in zone {} in {pages}",
            plan.seen.active,
            plan.seen.revoked,
            plan.scope
                .zone
                .as_ref()
                .map_or("-".to_owned(), ToString::to_string),
        )?,
        _ => writeln!(out, "Seen: {seen} in {pages}")?,
    }
    let by_rule = plan.candidates_by_rule(rules);
    let listed: Vec<String> = by_rule
        .iter()
        .map(|(r, n)| format!("{}: {n}", escape(r)))
        .collect();
    writeln!(
        out,
        "Candidates: {} ({})",
        plan.caps.actions,
        listed.join(", ")
    )?;
    writeln!(out, "Excluded: {}", plan.excluded().count())?;
    let anomalies: Vec<String> = plan
        .anomalies
        .by_label()
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k}: {n}"))
        .collect();
    if !anomalies.is_empty() {
        writeln!(
            out,
            "Untrusted data (no rule acts on these): {}",
            anomalies.join(", ")
        )?;
    }
    if let Some(blocked) = &plan.blocked {
        writeln!(
            out,
            "Refused: an apply run would not act on these: {}",
            escape(blocked)
        )?;
    }
    let caps = &plan.caps;
    if caps.within() {
        writeln!(
            out,
            "Safety caps: within limits ({} of max {}, fraction limit {})",
            caps.actions,
            plural(caps.max_actions_per_run, "action", "actions"),
            caps.fraction_limit
        )?;
    } else {
        writeln!(
            out,
            "Safety caps: an apply run would REFUSE to act: {}",
            escape(&caps.violations.join("; "))
        )?;
    }
    if plan.kind == Kind::AccessServiceToken && plan.actionable().next().is_some() {
        writeln!(
            out,
            "Note: Cloudflare refuses to delete a service token that is still in use (attached \
             to the device enrollment policy, or named by an Access policy, group or an app's \
             SCIM configuration); such a token is recorded refused_by_api and left alone. \
             Remove it from those first, or exclude it with service_token_id."
        )?;
    }
    Ok(())
}

/// The heading of one kind's part when a plan or a run covers several; `index` counts from 0.
pub fn kind_heading(out: &mut dyn Write, kind: Kind, index: usize) -> io::Result<()> {
    if index > 0 {
        writeln!(out)?;
    }
    let (_, many) = kind.noun();
    writeln!(out, "== {kind} ({many}) ==")
}

/// One CSV row of the plan: the fields of a candidate in the JSON plan, each always present
/// (CSV needs the same columns in every row).
#[derive(Serialize)]
struct PlanCsvRow<'a> {
    rule: &'a str,
    action: String,
    id: String,
    user_email: Option<&'a str>,
    /// Registrations only; `name` holds every kind's name.
    device_name: Option<&'a str>,
    last_seen_at: &'a Stamp,
    reason: String,
    excluded_by: Option<&'a str>,
    resource: Kind,
    name: &'a str,
}

/// The plans as CSV, one row per candidate of every kind (protected ones included, with
/// `excluded_by`), under one header.
pub fn plan_csv(out: &mut dyn Write, plans: &[Plan]) -> io::Result<()> {
    let rows: Vec<PlanCsvRow<'_>> = plans
        .iter()
        .flat_map(|p| &p.candidates)
        .map(|c| PlanCsvRow {
            rule: &c.rule,
            action: c.action.to_string(),
            id: c.id.to_string(),
            user_email: c.user_email.as_deref(),
            device_name: (c.kind == Kind::DeviceRegistration).then_some(c.name.as_str()),
            last_seen_at: &c.last_seen_at,
            reason: c.why.to_string(),
            excluded_by: c.excluded_by.as_deref(),
            resource: c.kind,
            name: &c.name,
        })
        .collect();
    csv_rows(out, &rows)
}

/// The shape of every JSON document this program prints (the `schema_version` field, and
/// the schemas in `schemas/`): raised when a field is removed or changes meaning, not when
/// one is added.
pub const SCHEMA_VERSION: u32 = 1;

/// What every JSON document starts with: its shape's version, the account and mode of the
/// config it was made with (`None` when the command read no config, as `audit --db`), and
/// when it was made.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Header<'a> {
    schema_version: u32,
    account_id: Option<&'a AccountId>,
    mode: Option<Mode>,
    #[serde(serialize_with = "rfc3339")]
    generated_at: DateTime<Utc>,
}

/// RFC 3339 in UTC to the microsecond, as the audit log writes its times.
fn rfc3339<S: serde::Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

impl<'a> Header<'a> {
    pub fn new(config: Option<&'a Config>, generated_at: DateTime<Utc>) -> Self {
        Header {
            schema_version: SCHEMA_VERSION,
            account_id: config.map(|c| &c.cloudflare.account_id),
            mode: config.map(|c| c.safety.mode),
            generated_at,
        }
    }
}

/// One part of the machine-readable plan (schemas/plan-part.schema.json). `candidates` holds
/// only what an apply run would act on, so that counting its actions gives the summary's
/// count; the matches an exclusion protects are apart, in `excluded`.
#[derive(Serialize)]
struct PlanJson<'a> {
    #[serde(flatten)]
    header: Header<'a>,
    resource: Kind,
    #[serde(flatten)]
    scope: &'a Scope,
    #[serde(skip_serializing_if = "Option::is_none")]
    blocked: Option<&'a str>,
    pages: u64,
    seen: SeenCounts,
    /// The length of `candidates`: the plan's actions, which the caps count.
    candidates_count: u64,
    candidates_by_rule: BTreeMap<String, u64>,
    excluded_count: u64,
    candidates: Vec<CandidateJson<'a>>,
    excluded: Vec<ExcludedJson<'a>>,
    anomalies: &'a AnomalyCounts,
    caps: &'a CapCheck,
}

/// A candidate, and whether `zt-janitor undo` could reverse its action afterwards.
#[derive(Serialize)]
struct CandidateJson<'a> {
    #[serde(flatten)]
    candidate: &'a Candidate,
    undoable: bool,
}

impl<'a> CandidateJson<'a> {
    fn new(candidate: &'a Candidate) -> Self {
        CandidateJson {
            candidate,
            undoable: crate::resource::undoable(candidate.kind, candidate.action),
        }
    }
}

/// A match an exclusion protects: the candidate's fields, with `action` "skip" (so that no
/// filter on the action can count it) and the rule's own action in `rule_action`.
struct ExcludedJson<'a>(&'a Candidate);

impl Serialize for ExcludedJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let c = self.0;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("resource", &c.kind)?;
        map.serialize_entry("rule", &c.rule)?;
        map.serialize_entry("action", "skip")?;
        map.serialize_entry("rule_action", &c.action)?;
        map.serialize_entry("id", &c.id)?;
        if let Some(zone) = &c.zone {
            map.serialize_entry("zone", zone)?;
        }
        map.serialize_entry("user_email", &c.user_email)?;
        map.serialize_entry(c.name_key(), &c.name)?;
        map.serialize_entry("last_seen_at", &c.last_seen_at)?;
        map.serialize_entry("reason", &c.why.to_string())?;
        map.serialize_entry("excluded_by", &c.excluded_by)?;
        map.end()
    }
}

/// One part of the plan as one JSON document; a plan of several parts prints one after the
/// other (a stream, which `jq` reads as such; `jq -s` makes it an array).
pub fn plan_json(
    out: &mut dyn Write,
    header: &Header<'_>,
    plan: &Plan,
    rules: &RuleSet,
) -> io::Result<()> {
    let candidates: Vec<CandidateJson<'_>> = plan.actionable().map(CandidateJson::new).collect();
    let excluded: Vec<ExcludedJson<'_>> = plan.excluded().map(ExcludedJson).collect();
    let doc = PlanJson {
        header: *header,
        resource: plan.kind,
        scope: &plan.scope,
        blocked: plan.blocked.as_deref(),
        pages: plan.pages,
        seen: plan.seen,
        candidates_count: candidates.len() as u64,
        candidates_by_rule: plan.candidates_by_rule(rules),
        excluded_count: excluded.len() as u64,
        candidates,
        excluded,
        anomalies: &plan.anomalies,
        caps: &plan.caps,
    };
    serde_json::to_writer_pretty(&mut *out, &doc)?;
    writeln!(out)
}

/// The report of one cycle (schemas/cycle-report.schema.json); its `mode` is the cycle's.
#[derive(Serialize)]
struct CycleJson<'a> {
    schema_version: u32,
    account_id: &'a AccountId,
    #[serde(serialize_with = "rfc3339")]
    generated_at: DateTime<Utc>,
    #[serde(flatten)]
    report: &'a CycleReport,
}

pub fn cycle_json(
    out: &mut dyn Write,
    account_id: &AccountId,
    generated_at: DateTime<Utc>,
    report: &CycleReport,
) -> io::Result<()> {
    let doc = CycleJson {
        schema_version: SCHEMA_VERSION,
        account_id,
        generated_at,
        report,
    };
    serde_json::to_writer_pretty(&mut *out, &doc)?;
    writeln!(out)
}

pub fn cycle_text(out: &mut dyn Write, r: &CycleReport) -> io::Result<()> {
    let s = &r.summary;
    writeln!(
        out,
        "Run {} ({} mode): {}{}",
        r.run_id,
        r.mode,
        r.outcome,
        r.reason
            .as_deref()
            .map(|why| format!(" — {}", escape(why)))
            .unwrap_or_default()
    )?;
    let refused = match s.actions_refused {
        0 => String::new(),
        n => format!(", refused by the API {n}"),
    };
    writeln!(
        out,
        "  seen {}, candidates {}, excluded {}, done {}, failed {}{refused}, API requests {}, {:.2}s",
        s.seen_total.unwrap_or(0),
        s.candidates.unwrap_or(0),
        s.excluded.unwrap_or(0),
        s.actions_done,
        s.actions_failed,
        s.api_requests,
        r.seconds
    )?;
    if r.resources.len() > 1 {
        for part in &r.resources {
            let p = &part.summary;
            writeln!(
                out,
                "  {}: {}{}; seen {}, candidates {}, done {}, failed {}, refused {}",
                part.kind,
                part.outcome,
                part.reason
                    .as_deref()
                    .map(|why| format!(" — {}", escape(why)))
                    .unwrap_or_default(),
                p.seen_total.map_or("-".to_owned(), |n| n.to_string()),
                p.candidates.map_or("-".to_owned(), |n| n.to_string()),
                p.actions_done,
                p.actions_failed,
                p.actions_refused
            )?;
        }
    }
    for part in &r.resources {
        if let Some(g) = &part.grace {
            let zone = part
                .zone
                .as_ref()
                .map(|z| format!(" in zone {z}"))
                .unwrap_or_default();
            writeln!(
                out,
                "  grace period, {}{zone}: newly marked {}, cleared {}, due now {}, still waiting {} (zt-janitor audit marks)",
                part.kind, g.marked, g.cleared, g.due, g.waiting
            )?;
        }
    }
    Ok(())
}

/// Runs as a table, CSV, or one JSON document (schemas/audit-runs.schema.json) that starts
/// with `header`.
pub fn runs(
    out: &mut dyn Write,
    runs: &[RunRow],
    format: Format,
    header: &Header<'_>,
) -> io::Result<()> {
    runs_fit(out, runs, format, header, None)
}

/// [`runs`] with the text table fitted to `width` terminal columns, if given: the reason is
/// cut with `…`.
pub fn runs_fit(
    out: &mut dyn Write,
    runs: &[RunRow],
    format: Format,
    header: &Header<'_>,
    width: Option<usize>,
) -> io::Result<()> {
    match format {
        Format::Json => json_document(out, &RunsJson { header, runs }),
        Format::Csv => csv_rows(out, runs),
        Format::Text => {
            let rows: Vec<[String; 9]> = runs
                .iter()
                .map(|r| {
                    [
                        r.id.to_string(),
                        r.started_at.clone(),
                        r.mode.clone(),
                        r.outcome.clone().unwrap_or_else(|| "running".to_owned()),
                        opt(r.seen_total),
                        opt(r.candidates),
                        format!("{}/{}", opt(r.actions_done), opt(r.actions_failed)),
                        // Refused by the API (object in use): neither done nor failed.
                        opt(r.actions_refused),
                        r.reason.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            table(
                out,
                &[
                    ("RUN", Fit::Whole),
                    ("STARTED", Fit::Whole),
                    ("MODE", Fit::Whole),
                    ("OUTCOME", Fit::Whole),
                    ("SEEN", Fit::Whole),
                    ("CANDIDATES", Fit::Whole),
                    ("DONE/FAILED", Fit::Whole),
                    ("REFUSED", Fit::Whole),
                    ("REASON", Fit::Cut),
                ],
                &rows,
                width,
            )
        }
    }
}

/// Actions as a table, CSV (the snapshot as the stored text), or one JSON document
/// (schemas/audit-actions.schema.json) that starts with `header`, each snapshot an object.
pub fn actions(
    out: &mut dyn Write,
    actions: &[ActionRow],
    format: Format,
    header: &Header<'_>,
) -> io::Result<()> {
    actions_fit(out, actions, format, header, None)
}

/// [`actions`] with the text table fitted to `width` terminal columns, if given: user, name,
/// status and rule are cut with `…` (widest first), RESOURCE (the id tells) and COMPLETED
/// left out before they are cut short; the run, the time and the id are never cut.
pub fn actions_fit(
    out: &mut dyn Write,
    actions: &[ActionRow],
    format: Format,
    header: &Header<'_>,
    width: Option<usize>,
) -> io::Result<()> {
    match format {
        Format::Json => json_document(
            out,
            &ActionsJson {
                header,
                actions: actions.iter().map(ActionJson::new).collect(),
            },
        ),
        Format::Csv => csv_rows(out, actions),
        Format::Text => {
            let rows: Vec<[String; 10]> = actions
                .iter()
                .map(|a| {
                    [
                        // A span's row covers runs a..b.
                        match (a.span_first_run_id, a.span_last_run_id) {
                            (Some(first), Some(last)) if first != last => {
                                format!("{first}..{last}")
                            }
                            _ => a.run_id.to_string(),
                        },
                        a.decided_at.clone(),
                        a.rule.clone(),
                        a.action.clone(),
                        a.resource_kind.clone(),
                        a.resource_id.clone(),
                        a.user_email.clone().unwrap_or_else(|| "-".to_owned()),
                        a.device_name.clone().unwrap_or_default(),
                        match &a.status_detail {
                            Some(d) => format!("{} ({d})", a.status),
                            None => a.status.clone(),
                        },
                        a.mutation_completed_at.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            table(
                out,
                &[
                    ("RUN", Fit::Whole),
                    ("DECIDED", Fit::Whole),
                    ("RULE", Fit::Name),
                    ("ACTION", Fit::Whole),
                    ("RESOURCE", Fit::Optional),
                    ("ID", Fit::Whole),
                    ("USER", Fit::Cut),
                    ("NAME", Fit::Cut),
                    ("STATUS", Fit::Cut),
                    ("COMPLETED", Fit::Optional),
                ],
                &rows,
                width,
            )
        }
    }
}

fn opt(v: Option<i64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".to_owned())
}

fn json_document<T: Serialize>(out: &mut dyn Write, doc: &T) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, doc)?;
    writeln!(out)
}

#[derive(Serialize)]
struct RunsJson<'a> {
    #[serde(flatten)]
    header: &'a Header<'a>,
    runs: &'a [RunRow],
}

/// One current mark, with the time it will be acted on under the config's rules (if it
/// stays a candidate; `None` when no config was read or its rule is gone).
#[derive(Debug, Serialize)]
pub struct MarkView {
    pub resource_kind: String,
    pub zone_id: Option<String>,
    pub resource_id: String,
    pub name: Option<String>,
    pub user_email: Option<String>,
    pub rule: String,
    pub action: String,
    pub first_marked_at: String,
    pub acts_on: Option<String>,
    pub first_run_id: i64,
    pub last_run_id: i64,
}

impl MarkView {
    pub fn new(m: MarkRow, acts_on: Option<String>) -> Self {
        MarkView {
            resource_kind: m.resource_kind,
            zone_id: m.zone_id,
            resource_id: m.resource_id,
            name: m.name,
            user_email: m.user_email,
            rule: m.rule,
            action: m.action,
            first_marked_at: m.first_marked_at,
            acts_on,
            first_run_id: m.first_run_id,
            last_run_id: m.last_run_id,
        }
    }
}

#[derive(Serialize)]
struct MarksJson<'a> {
    #[serde(flatten)]
    header: &'a Header<'a>,
    marks: &'a [MarkView],
}

/// The current marks as a table, CSV, or one JSON document
/// (schemas/audit-marks.schema.json) that starts with `header`.
pub fn marks(
    out: &mut dyn Write,
    marks: &[MarkView],
    format: Format,
    header: &Header<'_>,
) -> io::Result<()> {
    match format {
        Format::Json => json_document(out, &MarksJson { header, marks }),
        Format::Csv => csv_rows(out, marks),
        Format::Text => {
            let rows: Vec<[String; 7]> = marks
                .iter()
                .map(|m| {
                    [
                        m.resource_kind.clone(),
                        m.resource_id.clone(),
                        m.name.clone().unwrap_or_default(),
                        m.rule.clone(),
                        m.action.clone(),
                        m.first_marked_at.clone(),
                        m.acts_on.clone().unwrap_or_else(|| "-".to_owned()),
                    ]
                })
                .collect();
            let header = [
                ("RESOURCE", Fit::Name),
                ("ID", Fit::Whole),
                ("NAME", Fit::Cut),
                ("RULE", Fit::Name),
                ("ACTION", Fit::Whole),
                ("MARKED SINCE", Fit::Whole),
                ("ACTS ON (IF STILL A CANDIDATE)", Fit::Whole),
            ];
            table(out, &header, &rows, None)
        }
    }
}

#[derive(Serialize)]
struct ActionsJson<'a> {
    #[serde(flatten)]
    header: &'a Header<'a>,
    actions: Vec<ActionJson<'a>>,
}

/// An [`ActionRow`] in JSON: its fields in the same order, the snapshot as the JSON object
/// it was listed as, exactly. A snapshot that is not one (a damaged or hand-edited
/// database) is `null`, and `snapshot_error` says why; the row is still printed.
#[derive(Serialize)]
struct ActionJson<'a> {
    /// `None` for a span (see `span`).
    id: Option<i64>,
    run_id: i64,
    decided_at: &'a str,
    rule: &'a str,
    action: &'a str,
    resource_kind: &'a str,
    resource_id: &'a str,
    user_email: Option<&'a str>,
    device_name: Option<&'a str>,
    last_seen_at: Option<&'a str>,
    reason: &'a str,
    excluded_by: Option<&'a str>,
    status: &'a str,
    status_detail: Option<&'a str>,
    mutation_id: Option<i64>,
    mutation_completed_at: Option<&'a str>,
    http_status: Option<i64>,
    undoes_action_id: Option<i64>,
    /// For decisions of runs that did not act, folded: the span and the runs it covers.
    span_id: Option<i64>,
    span_first_run_id: Option<i64>,
    span_last_run_id: Option<i64>,
    snapshot: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot_error: Option<String>,
}

impl<'a> ActionJson<'a> {
    fn new(a: &'a ActionRow) -> Self {
        let (snapshot, snapshot_error) = match snapshot_object(&a.snapshot) {
            Ok(raw) => (Some(raw), None),
            Err(why) => (None, Some(why)),
        };
        ActionJson {
            id: a.id,
            run_id: a.run_id,
            decided_at: &a.decided_at,
            rule: &a.rule,
            action: &a.action,
            resource_kind: &a.resource_kind,
            resource_id: &a.resource_id,
            user_email: a.user_email.as_deref(),
            device_name: a.device_name.as_deref(),
            last_seen_at: a.last_seen_at.as_deref(),
            reason: &a.reason,
            excluded_by: a.excluded_by.as_deref(),
            status: &a.status,
            status_detail: a.status_detail.as_deref(),
            mutation_id: a.mutation_id,
            mutation_completed_at: a.mutation_completed_at.as_deref(),
            http_status: a.http_status,
            undoes_action_id: a.undoes_action_id,
            span_id: a.span_id,
            span_first_run_id: a.span_first_run_id,
            span_last_run_id: a.span_last_run_id,
            snapshot,
            snapshot_error,
        }
    }
}

/// What `zt-janitor undo` did, one row per action of the run undone (and per `--id` it has
/// none for), then a summary line.
pub fn undo_text(out: &mut dyn Write, report: &crate::undo::UndoReport) -> io::Result<()> {
    let mut rows: Vec<[String; 6]> = report
        .items
        .iter()
        .map(|i| {
            [
                i.action.clone(),
                i.resource_kind.clone(),
                i.resource_id.clone(),
                i.name.clone().unwrap_or_else(|| "-".to_owned()),
                i.result.to_owned(),
                i.detail.clone().unwrap_or_default(),
            ]
        })
        .collect();
    rows.extend(report.not_in_run.iter().map(|id| {
        [
            "-".to_owned(),
            "-".to_owned(),
            id.clone(),
            "-".to_owned(),
            "refused".to_owned(),
            format!("not in run {}", report.run),
        ]
    }));
    if rows.is_empty() {
        writeln!(out, "Run {} has no action to undo.", report.run)?;
    } else {
        let header = [
            ("ACTION", Fit::Whole),
            ("KIND", Fit::Name),
            ("ID", Fit::Whole),
            ("NAME", Fit::Cut),
            ("RESULT", Fit::Whole),
            ("WHY", Fit::Cut),
        ];
        table(out, &header, &rows, None)?;
    }
    writeln!(out)?;
    let recorded = match report.undo_run {
        Some(run) => format!("; recorded as run {run}: zt-janitor audit actions --run {run}"),
        None => "; nothing was changed".to_owned(),
    };
    writeln!(
        out,
        "Undo of run {}: {} reversed, {} refused, {} failed{recorded}",
        report.run, report.reversed, report.refused, report.failed
    )
}

/// What `zt-janitor undo` did, as one JSON document starting with `header`.
pub fn undo_json(
    out: &mut dyn Write,
    header: &Header<'_>,
    report: &crate::undo::UndoReport,
) -> io::Result<()> {
    #[derive(Serialize)]
    struct UndoJson<'a> {
        #[serde(flatten)]
        header: &'a Header<'a>,
        #[serde(flatten)]
        report: &'a crate::undo::UndoReport,
    }
    serde_json::to_writer_pretty(&mut *out, &UndoJson { header, report })?;
    writeln!(out)
}

/// The stored snapshot as a JSON object, its text unchanged, or why it cannot be printed
/// as one: not JSON, not an object, or an object that repeats a key (which readers resolve
/// differently; the exact text stays available with `--output csv`).
pub(crate) fn snapshot_object(text: &str) -> Result<&RawValue, String> {
    let raw: &RawValue =
        serde_json::from_str(text).map_err(|e| format!("the stored snapshot is not JSON: {e}"))?;
    if !raw.get().starts_with('{') {
        return Err("the stored snapshot is not a JSON object".to_owned());
    }
    serde_json::from_str::<UniqueKeys>(raw.get())
        .map_err(|e| format!("the stored snapshot is not usable JSON: {e}"))?;
    Ok(raw)
}

/// Any JSON value, read only to learn that no object in it repeats a key.
struct UniqueKeys;

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeys)
    }
}

impl<'de> Visitor<'de> for UniqueKeys {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value without repeated keys")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(UniqueKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(UniqueKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(UniqueKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(UniqueKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(UniqueKeys)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(UniqueKeys)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        let mut keys = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !keys.insert(key) {
                return Err(de::Error::custom("an object repeats a key"));
            }
            map.next_value::<UniqueKeys>()?;
        }
        Ok(UniqueKeys)
    }
}

/// Rows as CSV with a header row named after the fields, every cell through
/// [`neutralise_formula`]. The rows are serialized once to learn their cells in field order,
/// then written again neutralised.
fn csv_rows<T: Serialize>(out: &mut dyn Write, rows: &[T]) -> io::Result<()> {
    let mut exact = csv::Writer::from_writer(Vec::new());
    for r in rows {
        exact.serialize(r).map_err(io::Error::other)?;
    }
    let exact = exact
        .into_inner()
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(exact.as_slice());
    let mut w = csv::Writer::from_writer(out);
    for record in reader.records() {
        let record = record.map_err(io::Error::other)?;
        w.write_record(
            record
                .iter()
                .map(|cell| neutralise_formula(cell).into_owned()),
        )
        .map_err(io::Error::other)?;
    }
    w.flush()
}

/// A CSV cell a spreadsheet would read as a formula (starting with `=`, `+`, `-`, `@`, tab or
/// carriage return) gets a leading `'`, which makes it text (OWASP's CSV injection advice).
/// Only text cells are touched: no number this program writes is negative.
pub fn neutralise_formula(cell: &str) -> Cow<'_, str> {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{cell}"))
    } else {
        Cow::Borrowed(cell)
    }
}

/// `text` with every character that could drive a terminal or break a line written as a
/// visible Rust-style escape (`\u{1b}`): the C0 controls (tab, CR and LF included), DEL, the C1
/// controls, the Unicode line and paragraph separators, and the bidirectional marks,
/// embeddings, overrides and isolates, which reorder what is shown. Everything else, backslash
/// included, is kept as is; JSON output gives the exact value.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            let _ = write!(escaped, "\\u{{{:x}}}", u32::from(c));
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' // line and paragraph separators
            | '\u{200e}' | '\u{200f}' | '\u{061c}' // bidi marks
            | '\u{202a}'..='\u{202e}' // bidi embeddings and overrides
            | '\u{2066}'..='\u{2069}' // bidi isolates
        )
}

/// How a column gives way when a table is wider than the terminal (see [`fit_widths`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fit {
    /// Never cut: ids an operator copies, times, counts, short fixed words.
    Whole,
    /// Free text, cut with `…` (widest first).
    Cut,
    /// A short name from the config (a rule, a kind): cut too, but never below [`SOFT_MIN`],
    /// so that `idle-90d` and `idle-30d` stay apart.
    Name,
    /// Left out before free text is cut short, because what it says is repeated elsewhere
    /// (LAST SEEN's date is in WHY).
    Optional,
}

/// A free-text column is cut down to this width before an optional column is left out…
const SOFT_MIN: usize = 12;
/// …and then down to this, never further (3 characters and `…`).
const HARD_MIN: usize = 4;

/// The width of `text` in terminal columns (CJK and most emoji take two).
pub fn display_width(text: &str) -> usize {
    UnicodeWidthStr::width(text)
}

/// `text` cut to at most `width` columns, ending in `…` when cut.
fn cut(text: &str, width: usize) -> Cow<'_, str> {
    if display_width(text) <= width {
        return Cow::Borrowed(text);
    }
    let mut kept = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = UnicodeWidthChar::width(c).unwrap_or(0);
        if used + w + 1 > width {
            break;
        }
        kept.push(c);
        used += w;
    }
    kept.push('…');
    Cow::Owned(kept)
}

/// Column widths that fit `width`, from the columns' `natural` widths; `None` leaves a column
/// out. Free text is cut widest first down to [`SOFT_MIN`]; if that is not enough, the optional
/// columns are left out and free text is cut again; then names down to [`SOFT_MIN`], then free
/// text down to [`HARD_MIN`]. Columns that are never cut may still make a line wider than
/// `width`.
fn fit_widths(natural: &[usize], fits: &[Fit], width: usize) -> Vec<Option<usize>> {
    let total = |w: &[Option<usize>]| {
        let shown: Vec<usize> = w.iter().flatten().copied().collect();
        shown.iter().sum::<usize>() + 2 * shown.len().saturating_sub(1)
    };
    let shrink = |w: &mut Vec<Option<usize>>, fit: Fit, min: usize| {
        while total(w) > width {
            let widest = (0..w.len())
                .filter(|&i| fits[i] == fit && w[i].is_some_and(|n| n > min))
                .max_by_key(|&i| (w[i], std::cmp::Reverse(i)));
            match widest {
                Some(i) => w[i] = w[i].map(|n| n - 1),
                None => break,
            }
        }
    };
    let mut widths: Vec<Option<usize>> = natural.iter().map(|&n| Some(n)).collect();
    shrink(&mut widths, Fit::Cut, SOFT_MIN);
    if total(&widths) > width && fits.contains(&Fit::Optional) {
        widths = natural
            .iter()
            .zip(fits)
            .map(|(&n, &fit)| (fit != Fit::Optional).then_some(n))
            .collect();
        shrink(&mut widths, Fit::Cut, SOFT_MIN);
    }
    shrink(&mut widths, Fit::Name, SOFT_MIN);
    shrink(&mut widths, Fit::Cut, HARD_MIN);
    widths
}

/// Left-aligned columns, two spaces apart; the last column is not padded. Every cell goes
/// through [`escape`], so one row stays one line. With a `width`, the table is fitted to it
/// (see [`fit_widths`]); widths are counted in terminal columns, after escaping. When that
/// would cut free text short (below [`SOFT_MIN`]), each row's free text goes instead on a line
/// of its own under it, indented, cells apart by ` · `, cut to the width as a whole.
fn table<const N: usize>(
    out: &mut dyn Write,
    header: &[(&str, Fit); N],
    rows: &[[String; N]],
    width: Option<usize>,
) -> io::Result<()> {
    let rows: Vec<[Cow<'_, str>; N]> = rows
        .iter()
        .map(|row| std::array::from_fn(|i| escape(&row[i])))
        .collect();
    let mut natural = header.map(|(h, _)| display_width(h));
    for row in &rows {
        for (w, cell) in natural.iter_mut().zip(row) {
            *w = (*w).max(display_width(cell));
        }
    }
    let fits = header.map(|(_, fit)| fit);
    let mut widths = match width {
        None => natural.map(Some).to_vec(),
        Some(width) => fit_widths(&natural, &fits, width),
    };
    let cut_short = (0..N)
        .any(|i| fits[i] == Fit::Cut && widths[i].is_some_and(|w| w < natural[i].min(SOFT_MIN)));
    // Narrow: the free text under each row, the rest fitted without it.
    let detail: Vec<usize> = match width {
        Some(width) if cut_short => {
            let main = fits.map(|fit| match fit {
                Fit::Cut | Fit::Optional => Fit::Optional,
                other => other,
            });
            let mut main_natural = natural;
            for (w, fit) in main_natural.iter_mut().zip(fits) {
                if fit == Fit::Cut {
                    *w = 0;
                }
            }
            widths = fit_widths(&main_natural, &main, width)
                .into_iter()
                .zip(main)
                .map(|(w, fit)| w.filter(|_| fit != Fit::Optional))
                .collect();
            (0..N).filter(|&i| fits[i] == Fit::Cut).collect()
        }
        _ => Vec::new(),
    };
    let last = widths.iter().rposition(Option::is_some);
    let line = |out: &mut dyn Write, cells: [&str; N]| -> io::Result<()> {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let Some(w) = widths[i] else { continue };
            let cell = cut(cell, w);
            text.push_str(&cell);
            if Some(i) != last {
                let pad = w.saturating_sub(display_width(&cell)) + 2;
                text.extend(std::iter::repeat_n(' ', pad));
            }
        }
        writeln!(out, "{}", text.trim_end())?;
        if !detail.is_empty() {
            let text: Vec<&str> = detail.iter().map(|&i| cells[i]).collect();
            let text = format!("  {}", text.join(" · "));
            writeln!(
                out,
                "{}",
                cut(&text, width.unwrap_or(usize::MAX)).trim_end()
            )?;
        }
        Ok(())
    };
    line(out, header.map(|(h, _)| h))?;
    for row in &rows {
        line(out, std::array::from_fn(|i| row[i].as_ref()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{RunOutcome, RunSummary};
    use crate::config::Mode;

    /// Every character a terminal could act on, other than the line end.
    fn raw_controls(text: &str) -> Vec<char> {
        text.chars()
            .filter(|&c| {
                (c.is_control() && c != '\n')
                    || ('\u{202a}'..='\u{202e}').contains(&c)
                    || ('\u{2066}'..='\u{2069}').contains(&c)
            })
            .collect()
    }

    fn test_header() -> Header<'static> {
        Header::new(None, "2026-11-24T20:00:00Z".parse().unwrap())
    }

    fn run_row(id: i64, reason: Option<&str>) -> RunRow {
        RunRow {
            id,
            started_at: "2026-11-24T19:58:21Z".into(),
            finished_at: None,
            mode: "apply".into(),
            outcome: Some("failed".into()),
            reason: reason.map(Into::into),
            seen_total: Some(10),
            candidates: Some(1),
            excluded: Some(0),
            actions_done: Some(0),
            actions_failed: Some(1),
            actions_refused: Some(0),
            api_requests: Some(2),
        }
    }

    fn action_row(device: &str, email: &str, detail: Option<&str>) -> ActionRow {
        ActionRow {
            id: Some(1),
            run_id: 1,
            decided_at: "2026-11-24T19:58:21Z".into(),
            rule: "idle-90d".into(),
            action: "delete".into(),
            resource_kind: "device_registration".into(),
            resource_id: "00b3324e-cfe5-4df6-b4ab-faba846cc16b".into(),
            user_email: Some(email.into()),
            device_name: Some(device.into()),
            last_seen_at: None,
            reason: "idle 100d >= 90d".into(),
            excluded_by: None,
            status: "failed".into(),
            status_detail: detail.map(Into::into),
            mutation_id: Some(3),
            mutation_completed_at: None,
            http_status: Some(400),
            snapshot: "{\"id\":\"00b3324e-cfe5-4df6-b4ab-faba846cc16b\"}".into(),
            undoes_action_id: None,
            span_id: None,
            span_first_run_id: None,
            span_last_run_id: None,
        }
    }

    /// A planner that is never asked for a page: only its `finish` is used.
    struct NoPages;

    impl crate::plan::PageSource for NoPages {
        async fn page(
            &self,
            _: Kind,
            _: &crate::resource::Scope,
            _: Option<&crate::resource::PageToken>,
        ) -> Result<crate::resource::Page, crate::cloudflare::ApiError> {
            unreachable!("no listing in report tests")
        }
    }

    fn idle_rules() -> RuleSet {
        use crate::config::{Action, RuleSettings};
        RuleSet::new(
            &[RuleSettings {
                idle_days: Some(90),
                ..RuleSettings::new("idle-90d", Kind::DeviceRegistration, Action::Delete)
            }],
            &[],
        )
        .unwrap()
    }

    fn registration(id: &str, email: &str, device: &str, excluded: Option<&str>) -> Candidate {
        use chrono::{DateTime, Utc};
        let since: DateTime<Utc> = "2026-08-01T00:00:00Z".parse().unwrap();
        Candidate {
            kind: Kind::DeviceRegistration,
            rule: "idle-90d".into(),
            action: crate::config::Action::Delete,
            id: crate::resource::ResourceId::parse(id).unwrap(),
            zone: None,
            user_email: Some(email.into()),
            name: device.into(),
            last_seen_at: Stamp::Valid(since),
            why: crate::rules::Why::Idle {
                days: 118,
                threshold: 90,
                since,
                from: crate::rules::IdleFrom::LastSeenAt,
            },
            excluded_by: excluded.map(Into::into),
            snapshot: None,
            grace: None,
        }
    }

    const IDS: [&str; 3] = [
        "00b3324e-cfe5-4df6-b4ab-faba846cc16b",
        "5f2a1c9e-0d4b-4e8f-9a3c-7b6d5e4f3a21",
        "c0ffee00-1234-4abc-8def-0123456789ab",
    ];

    /// A plan like the one in issue 17: a 49-character service identity, long device names
    /// (one CJK, one with emoji) and an excluded row.
    fn wide_plan() -> Plan {
        let rules = idle_rules();
        let candidates = vec![
            registration(
                IDS[0],
                "non_identity@zt-janitor-example.cloudflareaccess.com",
                "build-agent-ephemeral-runner-0042.ci.internal",
                Some("service-tokens"),
            ),
            registration(
                IDS[1],
                "東京太郎@例え.jp",
                "山田のノートパソコン（開発用）",
                None,
            ),
            registration(
                IDS[2],
                "ana@example.com",
                "ana's 💻 MacBook Pro 16-inch",
                None,
            ),
        ];
        let safety = crate::config::SafetySettings {
            mode: crate::config::Mode::Plan,
            max_actions_per_run: 50,
            max_fraction_per_run: 1.0,
        };
        crate::plan::Planner::new(
            &NoPages,
            Kind::DeviceRegistration,
            &rules,
            chrono::Utc::now(),
        )
        .finish(candidates, &safety)
    }

    fn widest_line(text: &str) -> usize {
        text.lines().map(display_width).max().unwrap_or(0)
    }

    #[test]
    fn a_plan_fits_the_terminal_with_every_id_whole() {
        let plan = wide_plan();
        let mut whole = Vec::new();
        plan_text(&mut whole, &plan, &idle_rules()).unwrap();
        let whole = String::from_utf8(whole).unwrap();
        assert!(widest_line(&whole) > 120, "the test plan is wide:\n{whole}");
        assert!(whole.contains("non_identity@zt-janitor-example.cloudflareaccess.com"));
        for width in [80, 100, 120, 200] {
            let mut out = Vec::new();
            plan_text_fit(&mut out, &plan, &idle_rules(), Some(width)).unwrap();
            let text = String::from_utf8(out).unwrap();
            let table: Vec<&str> = text.lines().take_while(|l| !l.is_empty()).collect();
            let rows = table.iter().filter(|l| !l.starts_with(' ')).count();
            assert_eq!(rows, 4, "header and 3 rows at {width}:\n{text}");
            for line in &table {
                assert!(
                    display_width(line) <= width,
                    "{} > {width} columns: {line}\n{text}",
                    display_width(line)
                );
            }
            for id in IDS {
                assert!(text.contains(id), "{id} whole at {width}:\n{text}");
            }
            assert!(text.contains("(excluded)"), "{text}");
            if width < 200 {
                assert!(text.contains('…'), "cut at {width}:\n{text}");
            }
            assert!(text.contains("idle-90d"), "rule names stay whole: {text}");
            // The summary is never cut.
            assert!(text.contains("Candidates: 2 (idle-90d: 2)"), "{text}");
        }
    }

    #[test]
    fn a_narrow_terminal_puts_free_text_on_a_line_of_its_own() {
        let plan = wide_plan();
        let mut out = Vec::new();
        plan_text_fit(&mut out, &plan, &idle_rules(), Some(80)).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().take_while(|l| !l.is_empty()).collect();
        assert_eq!(lines[0], "RULE      ACTION      REGISTRATION", "{text}");
        assert_eq!(lines[1], "  USER · DEVICE · WHY", "{text}");
        assert_eq!(
            lines[6], "idle-90d  delete      c0ffee00-1234-4abc-8def-0123456789ab",
            "{text}"
        );
        assert!(
            lines[7].starts_with("  ana@example.com · ana's 💻 MacBook Pro 16-inch · idle 118d"),
            "{text}"
        );
        for line in &lines {
            assert!(display_width(line) <= 80, "{line}\n{text}");
        }
        // At 120 the free text keeps its columns.
        let mut out = Vec::new();
        plan_text_fit(&mut out, &plan, &idle_rules(), Some(120)).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.lines()
                .next()
                .unwrap()
                .ends_with("USER                DEVICE               WHY"),
            "{text}"
        );
        assert!(!text.contains(" · "), "{text}");
    }

    #[test]
    fn a_wide_terminal_keeps_every_value_whole() {
        let plan = wide_plan();
        let mut whole = Vec::new();
        plan_text(&mut whole, &plan, &idle_rules()).unwrap();
        let mut fitted = Vec::new();
        plan_text_fit(&mut fitted, &plan, &idle_rules(), Some(1000)).unwrap();
        assert_eq!(whole, fitted);
    }

    #[test]
    fn wide_characters_are_aligned_by_their_display_width() {
        let rows = [
            ["山田のノートパソコン".to_owned(), "x".to_owned()],
            ["laptop".to_owned(), "y".to_owned()],
            ["ana's 💻".to_owned(), "z".to_owned()],
        ];
        let header = [("NAME", Fit::Cut), ("LAST", Fit::Whole)];
        for (width, column) in [(None, 22), (Some(18), 14)] {
            let mut out = Vec::new();
            table(&mut out, &header, &rows, width).unwrap();
            let text = String::from_utf8(out).unwrap();
            let columns: Vec<usize> = text
                .lines()
                .map(|l| {
                    let at = l.rfind(['x', 'y', 'z', 'L']).unwrap();
                    display_width(&l[..at])
                })
                .collect();
            assert_eq!(columns, [column; 4], "{width:?}:\n{text}");
        }
    }

    #[test]
    fn cut_ends_in_an_ellipsis_within_the_width() {
        // (case, text, width, expected)
        let cases = [
            ("fits", "laptop", 6, "laptop"),
            ("cut", "laptop-0001", 8, "laptop-…"),
            ("wide characters", "山田のノート", 7, "山田の…"),
            (
                "a wide character does not straddle",
                "山田のノート",
                6,
                "山田…",
            ),
            ("escaped text", r"a\u{1b}b", 5, r"a\u{…"),
        ];
        for (case, text, width, expected) in cases {
            let got = cut(text, width);
            assert_eq!(got, expected, "{case}");
            assert!(display_width(&got) <= width, "{case}");
        }
    }

    #[test]
    fn fitting_cuts_free_text_then_drops_optional_columns() {
        use Fit::{Cut, Name, Optional, Whole};
        // (case, natural widths, fits, width, expected)
        type Case = (
            &'static str,
            Vec<usize>,
            Vec<Fit>,
            usize,
            Vec<Option<usize>>,
        );
        let cases: [Case; 6] = [
            (
                "names are cut to the soft minimum only",
                vec![20, 36, 30],
                vec![Name, Whole, Cut],
                50,
                vec![Some(SOFT_MIN), Some(36), Some(HARD_MIN)],
            ),
            (
                "fits as it is",
                vec![10, 36, 20],
                vec![Cut, Whole, Cut],
                70,
                vec![Some(10), Some(36), Some(20)],
            ),
            (
                "the widest text first",
                vec![30, 36, 20],
                vec![Cut, Whole, Cut],
                80,
                vec![Some(20), Some(36), Some(20)],
            ),
            (
                "optional kept while text keeps its soft minimum",
                vec![30, 36, 20, 30],
                vec![Cut, Whole, Optional, Cut],
                90,
                vec![Some(14), Some(36), Some(20), Some(14)],
            ),
            (
                "optional left out before text is cut short",
                vec![30, 36, 20, 30],
                vec![Cut, Whole, Optional, Cut],
                70,
                vec![Some(15), Some(36), None, Some(15)],
            ),
            (
                "whole columns are never cut",
                vec![30, 36, 40],
                vec![Cut, Whole, Whole],
                50,
                vec![Some(HARD_MIN), Some(36), Some(40)],
            ),
        ];
        for (case, natural, fits, width, expected) in cases {
            assert_eq!(fit_widths(&natural, &fits, width), expected, "{case}");
        }
    }

    #[test]
    fn plural_agrees_with_its_number() {
        assert_eq!(plural(0, "page", "pages"), "0 pages");
        assert_eq!(plural(1, "page", "pages"), "1 page");
        assert_eq!(plural(2, "day", "days"), "2 days");
    }

    #[test]
    fn the_status_column_of_audit_actions_is_cut_to_the_width() {
        let detail = "HTTP 400: code 2001: ".to_owned() + &"the object is in use; ".repeat(12);
        let row = action_row("laptop-0001", "someone@example.com", Some(&detail));
        let mut out = Vec::new();
        let header = Header::new(None, chrono::Utc::now());
        actions_fit(
            &mut out,
            std::slice::from_ref(&row),
            Format::Text,
            &header,
            Some(200),
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(widest_line(&text) <= 200, "{text}");
        assert!(text.contains('…'), "{text}");
        assert!(text.contains(&row.resource_id), "{text}");
        assert!(text.contains("failed (HTTP 400"), "{text}");
        let mut out = Vec::new();
        actions(&mut out, &[row], Format::Text, &header).unwrap();
        assert!(String::from_utf8(out).unwrap().contains(detail.trim_end()));
    }

    #[test]
    fn escape_makes_every_terminal_control_visible() {
        // (case, input, expected)
        let cases = [
            ("plain ASCII", "laptop-0001", "laptop-0001"),
            ("non-ASCII letters", "Ärzte 日本 ñ", "Ärzte 日本 ñ"),
            ("backslash kept", r"CORP\laptop", r"CORP\laptop"),
            ("OSC title", "a\x1b]0;pwned\x07b", r"a\u{1b}]0;pwned\u{7}b"),
            ("screen clear", "\x1b[2J", r"\u{1b}[2J"),
            ("CR LF", "row\r\nforged", r"row\u{d}\u{a}forged"),
            ("tab", "a\tb", r"a\u{9}b"),
            ("NUL and DEL", "\0\x7f", r"\u{0}\u{7f}"),
            ("C1 CSI and NEL", "\u{9b}31m\u{85}", r"\u{9b}31m\u{85}"),
            ("bidi override", "\u{202e}gpj.exe", r"\u{202e}gpj.exe"),
            (
                "bidi embeddings",
                "\u{202a}\u{202b}\u{202c}\u{202d}",
                r"\u{202a}\u{202b}\u{202c}\u{202d}",
            ),
            (
                "bidi isolates",
                "\u{2066}\u{2067}\u{2068}\u{2069}",
                r"\u{2066}\u{2067}\u{2068}\u{2069}",
            ),
            (
                "bidi marks",
                "\u{200e}\u{200f}\u{61c}",
                r"\u{200e}\u{200f}\u{61c}",
            ),
            (
                "line separators",
                "a\u{2028}b\u{2029}",
                r"a\u{2028}b\u{2029}",
            ),
        ];
        for (case, input, expected) in cases {
            assert_eq!(escape(input), expected, "{case}");
        }
        assert!(matches!(escape("laptop-0001"), Cow::Borrowed(_)));
    }

    #[test]
    fn csv_cells_that_a_spreadsheet_would_evaluate_get_a_leading_quote() {
        // (input, expected)
        let cases = [
            (
                "=HYPERLINK(\"http://evil\",\"x\")",
                "'=HYPERLINK(\"http://evil\",\"x\")",
            ),
            ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
            ("-1+1", "'-1+1"),
            ("@SUM(1+1)", "'@SUM(1+1)"),
            ("\t=1", "'\t=1"),
            ("\r=1", "'\r=1"),
            ("", ""),
            ("laptop-0001", "laptop-0001"),
            ("a=b", "a=b"),
            ("1-2", "1-2"),
            ("'=already text", "'=already text"),
        ];
        for (input, expected) in cases {
            assert_eq!(neutralise_formula(input), expected, "{input:?}");
        }
    }

    #[test]
    fn runs_table_keeps_one_line_per_run_whatever_the_reason() {
        let hostile = "Cloudflare said: x\x1b]0;pwned\x07\r\n99   2026  apply  applied\u{202e}";
        let mut out = Vec::new();
        runs(
            &mut out,
            &[run_row(2, Some(hostile)), run_row(1, None)],
            Format::Text,
            &test_header(),
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(raw_controls(&text), Vec::<char>::new(), "{text}");
        assert_eq!(text.lines().count(), 3, "header and two runs:\n{text}");
        assert!(text.contains(r"x\u{1b}]0;pwned\u{7}\u{d}\u{a}99"), "{text}");
    }

    #[test]
    fn runs_show_how_many_actions_the_api_refused() {
        let refused = RunRow {
            actions_refused: Some(2),
            ..run_row(2, None)
        };
        let before = RunRow {
            actions_refused: None,
            ..run_row(1, None)
        };
        let mut out = Vec::new();
        runs(
            &mut out,
            &[refused.clone(), before.clone()],
            Format::Text,
            &test_header(),
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let cells: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(cells[0][6..8], ["DONE/FAILED", "REFUSED"], "{text}");
        assert_eq!(cells[1][6..8], ["0/1", "2"], "{text}");
        assert_eq!(cells[2][6..8], ["0/1", "-"], "not counted before: {text}");

        let mut out = Vec::new();
        runs(
            &mut out,
            &[refused.clone(), before.clone()],
            Format::Json,
            &test_header(),
        )
        .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(json["runs"][0]["actions_refused"], 2);
        assert!(json["runs"][1]["actions_refused"].is_null());

        let mut out = Vec::new();
        runs(&mut out, &[refused, before], Format::Csv, &test_header()).unwrap();
        let mut reader = csv::Reader::from_reader(out.as_slice());
        let column = reader
            .headers()
            .unwrap()
            .iter()
            .position(|h| h == "actions_refused")
            .unwrap();
        let values: Vec<String> = reader
            .records()
            .map(|r| r.unwrap()[column].to_owned())
            .collect();
        assert_eq!(values, ["2", ""]);
    }

    #[test]
    fn actions_table_escapes_every_cell() {
        let row = action_row(
            "kiosk\x1b[2J\r\nforged",
            "a\tb@example.com",
            Some("HTTP 400: code 2001 \x1b]8;;http://evil\x07click\x1b]8;;\x07"),
        );
        let mut out = Vec::new();
        actions(&mut out, &[row], Format::Text, &test_header()).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(raw_controls(&text), Vec::<char>::new(), "{text}");
        assert_eq!(text.lines().count(), 2, "{text}");
        for visible in [
            r"kiosk\u{1b}[2J\u{d}\u{a}forged",
            r"a\u{9}b@example.com",
            r"\u{1b}]8;;http://evil\u{7}click",
        ] {
            assert!(text.contains(visible), "{visible} in {text}");
        }
    }

    #[test]
    fn table_columns_are_aligned_on_the_escaped_text() {
        let mut out = Vec::new();
        let rows = [
            ["a\t\tb".to_owned(), "x".to_owned()],
            ["abcdefghij".to_owned(), "y".to_owned()],
        ];
        table(
            &mut out,
            &[("H", Fit::Cut), ("LAST", Fit::Cut)],
            &rows,
            None,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let columns: Vec<usize> = text
            .lines()
            .map(|l| l.rfind(['x', 'y', 'L']).unwrap())
            .collect();
        // `a\u{9}\u{9}b` is 12 characters wide, then two spaces.
        assert_eq!(columns, [14, 14, 14], "{text}");
    }

    #[test]
    fn cycle_summary_escapes_the_reason() {
        let report = CycleReport {
            run_id: 7,
            mode: Mode::Apply,
            outcome: RunOutcome::Aborted,
            reason: Some("listing failed: \x1b]0;pwned\x07\nRun 8 (apply mode): applied".into()),
            seconds: 0.5,
            summary: RunSummary::default(),
            resources: Vec::new(),
        };
        let mut out = Vec::new();
        cycle_text(&mut out, &report).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(raw_controls(&text), Vec::<char>::new(), "{text}");
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains(r"\u{1b}]0;pwned\u{7}\u{a}Run 8"), "{text}");
    }

    #[test]
    fn undo_text_names_each_refusal_and_escapes_what_the_api_sent() {
        let item = |id: &str, name: &str, result, detail: &str| crate::undo::ItemReport {
            action_id: 1,
            action: "delete".into(),
            resource_kind: "device_registration".into(),
            resource_id: id.into(),
            zone: None,
            name: Some(name.into()),
            result,
            detail: Some(detail.into()),
            undo_action_id: None,
        };
        let report = crate::undo::UndoReport {
            run: 4,
            undo_run: None,
            reversed: 0,
            refused: 2,
            failed: 0,
            items: vec![item(
                "a-1",
                "evil\u{1b}]0;pwned\u{7}",
                "refused",
                "deleted: Cloudflare cannot restore it",
            )],
            not_in_run: vec!["b-2".into()],
        };
        let mut out = Vec::new();
        undo_text(&mut out, &report).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(raw_controls(&text), Vec::<char>::new(), "{text}");
        let line = |id: &str| text.lines().find(|l| l.contains(id)).unwrap().to_owned();
        assert!(
            line("a-1").contains("deleted: Cloudflare cannot restore it"),
            "{text}"
        );
        assert!(line("b-2").contains("not in run 4"), "{text}");
        assert!(
            text.contains("Undo of run 4: 0 reversed, 2 refused, 0 failed; nothing was changed"),
            "{text}"
        );
    }

    #[test]
    fn csv_keeps_columns_and_exact_values_but_neutralises_formulas() {
        let mut out = Vec::new();
        actions(
            &mut out,
            &[action_row(
                "=cmd|' /C calc'!A0",
                "@x.example",
                Some("a,\"b\"\nc"),
            )],
            Format::Csv,
            &test_header(),
        )
        .unwrap();
        let mut reader = csv::Reader::from_reader(out.as_slice());
        let header: Vec<String> = reader.headers().unwrap().iter().map(Into::into).collect();
        assert_eq!(header[..4], ["id", "run_id", "decided_at", "rule"]);
        assert_eq!(header.last().map(String::as_str), Some("snapshot"));
        let record = reader.records().next().unwrap().unwrap();
        let cell = |name: &str| record.get(header.iter().position(|h| h == name).unwrap());
        assert_eq!(cell("device_name"), Some("'=cmd|' /C calc'!A0"));
        assert_eq!(cell("user_email"), Some("'@x.example"));
        assert_eq!(
            cell("status_detail"),
            Some("a,\"b\"\nc"),
            "CSV quoting, not escaping"
        );
        assert_eq!(
            cell("snapshot"),
            Some("{\"id\":\"00b3324e-cfe5-4df6-b4ab-faba846cc16b\"}")
        );
        assert_eq!(cell("http_status"), Some("400"));
        assert_eq!(cell("last_seen_at"), Some(""));

        let mut out = Vec::new();
        runs(
            &mut out,
            &[run_row(1, Some("-5 ids: =x"))],
            Format::Csv,
            &test_header(),
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(",'-5 ids: =x,"), "{text}");
    }

    #[test]
    fn actions_json_gives_the_snapshot_as_an_object_or_says_why_not() {
        let stored = |snapshot: &str| ActionRow {
            snapshot: snapshot.into(),
            ..action_row("laptop", "a@example.com", None)
        };
        let exact = r#"{"id":"x","n":12345678901234567890123,"nested":{"a":[1,{"b":null}]}}"#;
        // (case, stored text, snapshot printed, error expected)
        let cases = [
            ("an object, exactly", exact, Some(exact), false),
            (
                "whitespace around it",
                " {\"a\":1}\n",
                Some("{\"a\":1}"),
                false,
            ),
            ("empty", "", None, true),
            ("truncated", "{\"id\":\"x\"", None, true),
            ("not an object", "[1,2]", None, true),
            ("a string", "\"{}\"", None, true),
            ("a repeated key", r#"{"id":"a","id":"b"}"#, None, true),
            (
                "a repeated nested key",
                r#"{"x":[{"k":1,"k":2}]}"#,
                None,
                true,
            ),
            ("nested too deep", &"[".repeat(10_000), None, true),
        ];
        for (case, text, printed, error) in cases {
            let mut out = Vec::new();
            actions(&mut out, &[stored(text)], Format::Json, &test_header()).unwrap();
            let out = String::from_utf8(out).unwrap();
            let doc: serde_json::Value = serde_json::from_str(&out).expect(case);
            let row = &doc["actions"][0];
            assert_eq!(row["resource_id"], "00b3324e-cfe5-4df6-b4ab-faba846cc16b");
            match printed {
                Some(printed) => {
                    assert!(out.contains(printed), "{case}: exact text kept:\n{out}");
                    assert!(row["snapshot"].is_object(), "{case}");
                }
                None => assert!(row["snapshot"].is_null(), "{case}: {row}"),
            }
            assert_eq!(row.get("snapshot_error").is_some(), error, "{case}: {row}");
        }
    }

    #[test]
    fn actions_json_has_every_field_of_the_row_in_its_order() {
        // CSV writes a header of the field names in order: the JSON row mirrors the audit row.
        fn header<T: Serialize>(row: T) -> String {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.serialize(row).unwrap();
            let bytes = w.into_inner().unwrap();
            String::from_utf8(bytes)
                .unwrap()
                .lines()
                .next()
                .unwrap()
                .to_owned()
        }
        let row = action_row("laptop", "a@example.com", Some("HTTP 400"));
        assert_eq!(header(ActionJson::new(&row)), header(&row));
    }

    #[test]
    fn every_json_document_starts_with_its_header() {
        let mut out = Vec::new();
        runs(&mut out, &[run_row(1, None)], Format::Json, &test_header()).unwrap();
        let text = String::from_utf8(out).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["schema_version"], SCHEMA_VERSION);
        assert!(
            doc["account_id"].is_null() && doc["mode"].is_null(),
            "{doc}"
        );
        assert_eq!(doc["generated_at"], "2026-11-24T20:00:00.000000Z");
        assert!(
            text.trim_start().starts_with("{\n  \"schema_version\": 1,"),
            "{text}"
        );
    }
}

//! Rendering for people and machines: the plan table and summary, cycle reports and audit
//! listings as text, JSON or CSV. Pure formatting: no I/O beyond the writer it is given.

use std::io::{self, Write};

use serde::Serialize;

use crate::audit::{ActionRow, RunRow};
use crate::cycle::CycleReport;
use crate::plan::Plan;
use crate::rules::RuleSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Csv,
}

/// The plan as a table of candidates followed by a summary.
pub fn plan_text(out: &mut dyn Write, plan: &Plan, rules: &RuleSet) -> io::Result<()> {
    let rows: Vec<[String; 7]> = plan
        .candidates
        .iter()
        .map(|c| {
            [
                c.rule.clone(),
                match &c.excluded_by {
                    None => c.action.to_string(),
                    Some(_) => "(excluded)".to_owned(),
                },
                c.id.to_string(),
                c.user_email.clone().unwrap_or_else(|| "-".to_owned()),
                c.device_name.clone(),
                c.last_seen_at.to_string(),
                match &c.excluded_by {
                    None => c.why.to_string(),
                    Some(by) => format!("{}; protected by {by}", c.why),
                },
            ]
        })
        .collect();
    if rows.is_empty() {
        writeln!(out, "No registration matches a rule.")?;
    } else {
        table(
            out,
            &[
                "RULE",
                "ACTION",
                "REGISTRATION",
                "USER",
                "DEVICE",
                "LAST SEEN",
                "WHY",
            ],
            &rows,
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "Seen: {} registrations ({} active, {} revoked) in {} pages",
        plan.seen.total, plan.seen.active, plan.seen.revoked, plan.pages
    )?;
    let by_rule = plan.candidates_by_rule(rules);
    let listed: Vec<String> = by_rule.iter().map(|(r, n)| format!("{r}: {n}")).collect();
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
    let caps = &plan.caps;
    if caps.within() {
        writeln!(
            out,
            "Safety caps: within limits ({} of max {} actions, fraction limit {})",
            caps.actions, caps.max_actions_per_run, caps.fraction_limit
        )?;
    } else {
        writeln!(
            out,
            "Safety caps: an apply run would REFUSE to act: {}",
            caps.violations.join("; ")
        )?;
    }
    Ok(())
}

/// The machine-readable plan.
#[derive(Serialize)]
struct PlanJson<'a> {
    #[serde(flatten)]
    plan: &'a Plan,
    candidates_by_rule: std::collections::BTreeMap<String, u64>,
    excluded: usize,
}

pub fn plan_json(out: &mut dyn Write, plan: &Plan, rules: &RuleSet) -> io::Result<()> {
    let doc = PlanJson {
        plan,
        candidates_by_rule: plan.candidates_by_rule(rules),
        excluded: plan.excluded().count(),
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
            .map(|why| format!(" — {why}"))
            .unwrap_or_default()
    )?;
    writeln!(
        out,
        "  seen {}, candidates {}, excluded {}, done {}, failed {}, API requests {}, {:.2}s",
        s.seen_total.unwrap_or(0),
        s.candidates.unwrap_or(0),
        s.excluded.unwrap_or(0),
        s.actions_done,
        s.actions_failed,
        r.api_requests,
        r.seconds
    )
}

pub fn runs(out: &mut dyn Write, runs: &[RunRow], format: Format) -> io::Result<()> {
    match format {
        Format::Json => json_lines(out, runs),
        Format::Csv => csv_rows(out, runs),
        Format::Text => {
            let rows: Vec<[String; 8]> = runs
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
                        r.reason.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            table(
                out,
                &[
                    "RUN",
                    "STARTED",
                    "MODE",
                    "OUTCOME",
                    "SEEN",
                    "CANDIDATES",
                    "DONE/FAILED",
                    "REASON",
                ],
                &rows,
            )
        }
    }
}

pub fn actions(out: &mut dyn Write, actions: &[ActionRow], format: Format) -> io::Result<()> {
    match format {
        Format::Json => json_lines(out, actions),
        Format::Csv => csv_rows(out, actions),
        Format::Text => {
            let rows: Vec<[String; 9]> = actions
                .iter()
                .map(|a| {
                    [
                        a.run_id.to_string(),
                        a.decided_at.clone(),
                        a.rule.clone(),
                        a.action.clone(),
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
                    "RUN",
                    "DECIDED",
                    "RULE",
                    "ACTION",
                    "REGISTRATION",
                    "USER",
                    "DEVICE",
                    "STATUS",
                    "COMPLETED",
                ],
                &rows,
            )
        }
    }
}

fn opt(v: Option<i64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".to_owned())
}

fn json_lines<T: Serialize>(out: &mut dyn Write, rows: &[T]) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, rows)?;
    writeln!(out)
}

fn csv_rows<T: Serialize>(out: &mut dyn Write, rows: &[T]) -> io::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    for r in rows {
        w.serialize(r).map_err(io::Error::other)?;
    }
    w.flush()
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
fn table<const N: usize>(
    out: &mut dyn Write,
    header: &[&str; N],
    rows: &[[String; N]],
) -> io::Result<()> {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: Vec<&str>| -> io::Result<()> {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == N {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(out, header.to_vec())?;
    for row in rows {
        line(out, row.iter().map(String::as_str).collect())?;
    }
    Ok(())
}

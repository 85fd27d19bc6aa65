//! The command line: parses arguments, loads the config, sets up logging and calls into the
//! library. The binary's `main` only calls [`main`]. Errors get their context here and are
//! printed as one line with a hint.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};

use crate::apply::StopSignal;
use crate::audit::{ActionFilter, AuditStore, RunOutcome};
use crate::config::{Config, LogFormat, Mode};
use crate::report::{self, Format};
use crate::resource::Kind;
use crate::startup::Loaded;

#[derive(Parser)]
#[command(
    name = "zt-janitor",
    version,
    about = "Keeps a Cloudflare Zero Trust account free of stale device registrations."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct ConfigArg {
    /// The TOML config file.
    #[arg(
        long,
        short,
        env = "ZT_JANITOR_CONFIG",
        default_value = "/etc/zt-janitor/config.toml"
    )]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// List, evaluate the rules and print what would be done. Never mutates, never writes the audit log.
    Plan {
        #[command(flatten)]
        config: ConfigArg,
        /// Text (a table fitted to the terminal, see COLUMNS), JSON (one document per resource
        /// kind, every value whole) or CSV (one row per candidate).
        #[arg(long, value_enum, default_value = "text")]
        output: Format,
    },
    /// Run one cycle now: plan, record it in the audit log and, in apply mode, act.
    /// Exit status: 0 applied/planned, 2 aborted/failed, 3 refused by the safety caps.
    Once {
        #[command(flatten)]
        config: ConfigArg,
        /// The cycle report as text or JSON; for a CSV of the run's actions, use
        /// `audit actions --run N --output csv`.
        #[arg(long, value_enum, default_value = "text")]
        output: CycleFormat,
    },
    /// Run as a daemon: cycles on the [schedule] cron, metrics on [metrics] listen.
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Validate the config file and print the effective settings and rules.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Why one object (any kind, by id) is or is not a candidate under the config.
    ///
    /// Lists the account read-only, like plan, until it finds the id, then prints the verdict,
    /// what each rule of its kind says, the exclusion that protects it and its audited actions.
    /// Exit status 1 when no listed object has the id.
    Explain {
        /// The object's id, as `plan` or `audit actions` shows it.
        id: String,
        #[command(flatten)]
        config: ConfigArg,
        /// Text, or JSON (one document, every value whole).
        #[arg(long, value_enum, default_value = "text")]
        output: CycleFormat,
    },
    /// Read the audit log.
    Audit {
        #[command(subcommand)]
        query: AuditQuery,
    },
    /// Print a shell completion script.
    ///
    /// For bash: `zt-janitor completions bash > /etc/bash_completion.d/zt-janitor`.
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page, as roff.
    ///
    /// `zt-janitor man > zt-janitor.1; man ./zt-janitor.1`, or `--dir` for one page per command.
    Man {
        /// Write zt-janitor.1 and one page per command (zt-janitor-plan.1, …) into this
        /// directory instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Serve the built-in fake Cloudflare API on loopback (for tests, benchmarks and trials).
    FakeApi(crate::fake::FakeApiArgs),
    /// Run a demo: a fake API with seeded data, two apply cycles of the daemon, and what they did.
    Demo(crate::demo::DemoArgs),
    /// Benchmark a full cycle over N registrations against the fake API.
    Bench(crate::bench::BenchArgs),
}

#[derive(Args)]
struct AuditArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Read this audit database instead of the one the config names.
    #[arg(long)]
    db: Option<PathBuf>,
    /// Text (a table fitted to the terminal, see COLUMNS), JSON (an array, every value whole)
    /// or CSV.
    #[arg(long, value_enum, default_value = "text")]
    output: Format,
    /// At most this many rows, newest first (1 to 1000000); a line on stderr says when it
    /// left rows out.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=MAX_AUDIT_ROWS))]
    limit: i64,
}

/// The largest `--limit` of the audit commands: enough for any real query, and a typo such as
/// `--limit=-1` or an extra zero fails instead of dumping the whole log.
const MAX_AUDIT_ROWS: i64 = 1_000_000;

/// `once` reports one cycle: a plan table and a summary, or one JSON document. There is no
/// CSV of that shape, so clap refuses `--output csv` here rather than printing text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CycleFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum AuditQuery {
    /// Recent runs.
    Runs {
        #[command(flatten)]
        common: AuditArgs,
    },
    /// Planned and performed actions, with the object as it was listed.
    Actions {
        #[command(flatten)]
        common: AuditArgs,
        /// Only the actions of this run (its number in `audit runs`).
        #[arg(long, value_name = "RUN")]
        run: Option<i64>,
        /// Only the actions decided under this rule (its `name` in the config).
        #[arg(long, value_name = "NAME")]
        rule: Option<String>,
        /// Only the actions on this user's objects: an email, case-insensitive.
        #[arg(long, value_name = "EMAIL")]
        user: Option<String>,
        /// A resource kind as `[[rule]] resource` names it (e.g. device_registration), or else
        /// an object id (as --id).
        #[arg(long, value_name = "KIND|ID")]
        resource: Option<String>,
        /// Only the actions on this object: an id, of any kind.
        #[arg(long, value_name = "ID")]
        id: Option<String>,
        /// Actions decided at or after this time: RFC 3339 (2026-11-26T08:00:00Z), a date
        /// (2026-11-26, midnight UTC) or an age (7d, 12h, 30m: that long ago).
        #[arg(long, value_name = "TIME", value_parser = parse_time_now)]
        since: Option<DateTime<Utc>>,
        /// Actions decided before this time; the same forms as --since.
        #[arg(long, value_name = "TIME", value_parser = parse_time_now)]
        until: Option<DateTime<Utc>>,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            // Errors can carry API data (Cloudflare's messages), so they are escaped like output.
            eprintln!("error: {}", report::escape(&error_chain(&e)));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each cause once: many messages already say their
/// cause (`cannot open …: disk full; …`), and repeating it after them helps nobody.
fn error_chain(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

async fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Plan { config, output } => {
            let config = load(&config.config, None)?;
            plan(config, output).await
        }
        Command::Once { config, output } => {
            let config = load(&config.config, None)?;
            once(config, output).await
        }
        Command::Run { config } => {
            let cfg = load(&config.config, None)?;
            crate::schedule::run_daemon(config.config.clone(), cfg, StopSignal::default(), |_| {})
                .await
                .context("the daemon stopped with an error")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { config } => {
            let Loaded { config: cfg, rules } = Loaded::new(Config::load(&config.config)?)?;
            print!("{}", cfg.describe());
            if let Some(warning) = crate::startup::credentials_warning(&cfg.cloudflare) {
                eprintln!("warning: {warning}");
            }
            for warning in rules.warnings() {
                eprintln!("warning: {warning}");
            }
            let now = Utc::now();
            println!("next fire times (UTC):");
            for at in crate::schedule::next_fires(&cfg.schedule.cron, now, 3) {
                println!(
                    "  {}",
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                );
            }
            if let Some(warning) = crate::schedule::schedule_warning(&cfg.schedule.cron, now) {
                eprintln!("warning: {warning}");
            }
            println!("{}: OK", config.config.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { query } => audit(query).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cli = Cli::command();
            clap_complete::generate(shell, &mut cli, "zt-janitor", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => {
            use clap::CommandFactory;
            // No `help` pages: `help` is not a command an operator looks up.
            let cli = Cli::command().disable_help_subcommand(true);
            match dir {
                None => clap_mangen::Man::new(cli).render(&mut std::io::stdout())?,
                Some(dir) => clap_mangen::generate_to(cli, &dir).with_context(|| {
                    format!("cannot write the manual pages into {}", dir.display())
                })?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain { id, config, output } => {
            let config = load(&config.config, None)?;
            explain(config, &id, output).await
        }
        Command::FakeApi(args) => {
            crate::logging::init(LogFormat::Text, "info");
            crate::fake::serve_from_args(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            crate::logging::init(LogFormat::Text, "warn");
            crate::demo::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            crate::logging::init(LogFormat::Text, "warn");
            crate::bench::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Loads the config and starts logging as it asks.
fn load(path: &Path, level_override: Option<&str>) -> Result<Config> {
    let config = Config::load(path)?;
    crate::logging::init(
        config.logging.format,
        level_override.unwrap_or(&config.logging.level),
    );
    Ok(config)
}

async fn plan(config: Config, output: Format) -> Result<ExitCode> {
    let Loaded { config, rules } = Loaded::new(config)?;
    if let Some(warning) = crate::startup::credentials_warning(&config.cloudflare) {
        tracing::warn!("{warning}");
    }
    let spinner = crate::progress::Spinner::start("listing…");
    let plans = crate::plan::preview_with_progress(&config, &rules, Utc::now(), &mut |p| {
        if let Some(spinner) = &spinner {
            spinner.set(listing_progress(&p));
        }
    })
    .await;
    drop(spinner);
    let plans = plans?;
    let mut out = std::io::stdout().lock();
    match output {
        // One JSON document per kind, each naming its resource.
        Format::Json => {
            for plan in &plans {
                report::plan_json(&mut out, plan, &rules)?;
            }
        }
        Format::Csv => report::plan_csv(&mut out, &plans)?,
        Format::Text => {
            let width = output_width();
            for (i, plan) in plans.iter().enumerate() {
                if plans.len() > 1 {
                    report::kind_heading(&mut out, plan.kind, i)?;
                }
                report::plan_text_fit(&mut out, plan, &rules, width)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One line of listing progress: "listing registrations: 12 pages, 12000 seen, 340 matched".
fn listing_progress(p: &crate::plan::Progress<'_>) -> String {
    let zone = p.zone.map(|z| format!(" in zone {z}")).unwrap_or_default();
    format!(
        "listing {}{zone}: {}, {} seen, {} matched",
        p.kind.noun().1,
        report::plural(p.pages, "page", "pages"),
        p.seen,
        p.candidates,
    )
}

async fn once(config: Config, output: CycleFormat) -> Result<ExitCode> {
    let janitor = crate::startup::open(config).await?;
    let owned = janitor.clone();
    // On a task of its own, so that a panic closes the run as failed instead of leaving it.
    let report = crate::cycle::run_isolated(&janitor.audit, &janitor.metrics, async move {
        owned.cycle().run(Utc::now()).await
    })
    .await;
    let report = match report {
        Ok(report) => report,
        Err(e @ crate::cycle::CycleError::Panicked(_)) => {
            // The run is recorded as failed, and exits as a failed run does.
            eprintln!("error: {e}");
            janitor.close().await;
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    };
    let mut out = std::io::stdout().lock();
    match output {
        CycleFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &report)?;
            writeln!(out)?;
        }
        CycleFormat::Text => {
            let several = report.resources.len() > 1;
            let width = output_width();
            for (i, part) in report.resources.iter().enumerate() {
                if several {
                    report::kind_heading(&mut out, part.kind, i)?;
                }
                if let Some(plan) = &part.plan {
                    report::plan_text_fit(&mut out, plan, &janitor.loaded.rules, width)?;
                    writeln!(out)?;
                }
            }
            report::cycle_text(&mut out, &report)?;
            writeln!(out, "Audit log: {}", janitor.audit.path().display())?;
        }
    }
    janitor.close().await;
    if janitor.loaded.config.safety.mode == Mode::Plan {
        tracing::debug!("plan mode: nothing was changed");
    }
    Ok(match report.outcome {
        RunOutcome::Applied | RunOutcome::Planned => ExitCode::SUCCESS,
        RunOutcome::Refused => ExitCode::from(3),
        RunOutcome::Aborted | RunOutcome::Failed => ExitCode::from(2),
    })
}

async fn explain(config: Config, id: &str, output: CycleFormat) -> Result<ExitCode> {
    let id = crate::resource::ResourceId::parse(id.trim()).map_err(|_| {
        anyhow::anyhow!(
            "{id:?} is not an object id: give the id as plan or audit actions shows it (a UUID, \
             or 32 hexadecimal characters for an account API token)"
        )
    })?;
    let Loaded { config, rules } = Loaded::new(config)?;
    let spinner = crate::progress::Spinner::start(&format!("listing the account for {id}…"));
    let explanation = crate::explain::explain(&config, &rules, &id, Utc::now()).await;
    drop(spinner);
    let explanation = explanation?;
    let mut out = std::io::stdout().lock();
    match output {
        CycleFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &explanation)?;
            writeln!(out)?;
        }
        CycleFormat::Text => crate::explain::text(&mut out, &explanation, output_width())?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `--resource` names a kind when it is one, and otherwise an id, as it did before kinds
/// existed (no id is spelled like a kind: kinds have underscores, ids do not).
fn resource_filter(
    resource: Option<String>,
    id: Option<String>,
) -> Result<(Option<Kind>, Option<String>)> {
    let Some(resource) = resource else {
        return Ok((None, id));
    };
    match (Kind::parse(&resource), id) {
        (Some(kind), id) => Ok((Some(kind), id)),
        (None, None) => Ok((None, Some(resource))),
        (None, Some(id)) => anyhow::bail!(
            "--resource {resource:?} is not a resource kind ({}), and --id {id:?} already names the id; \
             pass the id once, with --id",
            Kind::ALL.map(Kind::as_str).join(", ")
        ),
    }
}

/// A time given to `--since` or `--until`, read at `now`: RFC 3339, a plain date (midnight
/// UTC) or an age such as `7d`, `12h` or `30m` (that long before `now`).
fn parse_time(raw: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let raw = raw.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(raw) {
        return Ok(at.with_timezone(&Utc));
    }
    if let Ok(day) = chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        return Ok(day.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    match humantime::parse_duration(raw) {
        Ok(age) => chrono::TimeDelta::from_std(age)
            .ok()
            .and_then(|age| now.checked_sub_signed(age))
            .ok_or_else(|| format!("{raw:?} reaches back before any date this can show")),
        Err(_) => Err(format!(
            "{raw:?} is not a time: give RFC 3339 (2026-11-26T08:00:00Z), a date (2026-11-26, \
             midnight UTC) or an age (7d, 12h, 30m)"
        )),
    }
}

fn parse_time_now(raw: &str) -> Result<DateTime<Utc>, String> {
    parse_time(raw, Utc::now())
}

/// The width text tables are fitted to: `COLUMNS` when set to a number (an explicit request,
/// piped or not), else the terminal's width when stdout is a terminal, else none: piped
/// output keeps every value whole, for grep and scripts.
fn fit_width(columns: Option<&str>, terminal: Option<usize>) -> Option<usize> {
    columns
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|&c| c > 0)
        .or(terminal)
}

pub(crate) fn output_width() -> Option<usize> {
    use std::io::IsTerminal;
    let terminal = std::io::stdout()
        .is_terminal()
        .then(terminal_size::terminal_size)
        .flatten()
        .map(|(w, _)| usize::from(w.0));
    fit_width(std::env::var("COLUMNS").ok().as_deref(), terminal)
}

/// What stderr says after an audit query: nothing when it showed everything that matched,
/// how many `--limit` left out, or a hint when nothing matched (`filters` names the filters
/// given, as `--rule`).
fn audit_notice(what: &str, shown: usize, total: i64, filters: &[&str]) -> Option<String> {
    if total == 0 {
        return Some(if filters.is_empty() {
            format!("no {what} recorded in this audit log yet")
        } else {
            format!(
                "no {what} match the filters given ({}); try a wider --since, or fewer filters",
                filters.join(", ")
            )
        });
    }
    (total > shown as i64).then(|| {
        format!(
            "showing the {shown} most recent of {total} {what}; use --limit {} to see more",
            total.min(MAX_AUDIT_ROWS)
        )
    })
}

/// The filters of an `audit actions` query that were given, as their flags.
fn filters_given(f: &ActionFilter) -> Vec<&'static str> {
    [
        ("--run", f.run_id.is_some()),
        ("--rule", f.rule.is_some()),
        ("--user", f.user_email.is_some()),
        ("--resource", f.resource_kind.is_some()),
        ("--id", f.resource_id.is_some()),
        ("--since", f.since.is_some()),
        ("--until", f.until.is_some()),
    ]
    .into_iter()
    .filter_map(|(flag, given)| given.then_some(flag))
    .collect()
}

async fn audit(query: AuditQuery) -> Result<ExitCode> {
    let (common, filter) = match query {
        AuditQuery::Runs { common } => (common, None),
        AuditQuery::Actions {
            common,
            run,
            rule,
            user,
            resource,
            id,
            since,
            until,
        } => {
            let (resource_kind, resource_id) = resource_filter(resource, id)?;
            let filter = ActionFilter {
                run_id: run,
                rule,
                user_email: user,
                resource_kind,
                resource_id,
                since,
                until,
                limit: common.limit,
            };
            (common, Some(filter))
        }
    };
    let path = match common.db {
        Some(db) => db,
        None => load(&common.config.config, Some("warn"))?.audit.path,
    };
    if !path.exists() {
        anyhow::bail!(
            "no audit database at {}: nothing has run with this config yet (or pass --db PATH)",
            path.display()
        );
    }
    let store = AuditStore::open_read_only(&path).await?;
    let width = output_width();
    let mut out = std::io::stdout().lock();
    let notice = match filter {
        None => {
            let rows = store.recent_runs(common.limit).await?;
            report::runs_fit(&mut out, &rows, common.output, width)?;
            let total = if rows.len() as i64 == common.limit {
                store.count_runs().await?
            } else {
                rows.len() as i64
            };
            audit_notice("runs", rows.len(), total, &[])
        }
        Some(f) => {
            let rows = store.actions(&f).await?;
            report::actions_fit(&mut out, &rows, common.output, width)?;
            let total = if rows.len() as i64 == common.limit {
                store.count_actions(&f).await?
            } else {
                rows.len() as i64
            };
            audit_notice("actions", rows.len(), total, &filters_given(&f))
        }
    };
    store.close().await;
    // On stderr, so that JSON and CSV on stdout stay whole.
    if let Some(notice) = notice {
        eprintln!("{notice}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_line_names_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot open the audit database x.db: {0}; check the disk")]
        struct Open(#[source] std::io::Error);
        let disk = std::io::Error::other("disk full");
        let e = anyhow::Error::new(Open(disk)).context("cannot start");
        assert_eq!(
            error_chain(&e),
            "cannot start: cannot open the audit database x.db: disk full; check the disk"
        );
        let plain = anyhow::anyhow!("no config").context("check-config failed");
        assert_eq!(error_chain(&plain), "check-config failed: no config");
    }

    #[test]
    fn since_and_until_read_rfc3339_dates_and_ages() {
        let now: DateTime<Utc> = "2026-11-27T12:00:00Z".parse().unwrap();
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        // (case, input, expected)
        let cases = [
            (
                "RFC 3339",
                "2026-11-26T08:00:00Z",
                at("2026-11-26T08:00:00Z"),
            ),
            (
                "RFC 3339 with offset",
                "2026-11-26T09:00:00+01:00",
                at("2026-11-26T08:00:00Z"),
            ),
            (
                "plain date: midnight UTC",
                "2026-11-26",
                at("2026-11-26T00:00:00Z"),
            ),
            ("days", "7d", at("2026-11-20T12:00:00Z")),
            ("hours", "12h", at("2026-11-27T00:00:00Z")),
            ("minutes", "30m", at("2026-11-27T11:30:00Z")),
            ("combined", "1d 6h", at("2026-11-26T06:00:00Z")),
            ("spaces around", " 2026-11-26 ", at("2026-11-26T00:00:00Z")),
        ];
        for (case, input, expected) in cases {
            assert_eq!(parse_time(input, now), Ok(expected), "{case}");
        }
        for bad in ["yesterday", "2026-13-01", "7", "", "2026-11-26T08:00"] {
            let e = parse_time(bad, now).unwrap_err();
            assert!(e.contains("RFC 3339") && e.contains("7d"), "{bad:?}: {e}");
        }
        assert!(parse_time("9999999999d", now).is_err());
    }

    #[test]
    fn since_fails_with_a_hint_not_premature_end_of_input() {
        let e = Cli::try_parse_from(["zt-janitor", "audit", "actions", "--since", "last week"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("2026-11-26") && e.contains("7d"), "{e}");
        let ok = Cli::try_parse_from(["zt-janitor", "audit", "actions", "--since", "2026-11-26"]);
        assert!(ok.is_ok());
    }

    #[test]
    fn tables_fit_columns_or_the_terminal_and_stay_whole_when_piped() {
        // (case, COLUMNS, terminal width (None: not a terminal), expected)
        let cases = [
            ("piped", None, None, None),
            ("a terminal", None, Some(132), Some(132)),
            ("COLUMNS wins", Some("100"), Some(132), Some(100)),
            ("COLUMNS when piped", Some("100"), None, Some(100)),
            ("COLUMNS not a number", Some("wide"), Some(132), Some(132)),
            ("COLUMNS zero", Some("0"), None, None),
        ];
        for (case, columns, terminal, expected) in cases {
            assert_eq!(fit_width(columns, terminal), expected, "{case}");
        }
    }

    #[test]
    fn audit_says_what_the_limit_left_out_and_hints_when_nothing_matched() {
        assert_eq!(audit_notice("actions", 3, 3, &[]), None);
        assert_eq!(
            audit_notice("actions", 50, 243, &[]).as_deref(),
            Some("showing the 50 most recent of 243 actions; use --limit 243 to see more")
        );
        let none = audit_notice("actions", 0, 0, &["--rule", "--since"]).unwrap();
        assert!(
            none.contains("--rule, --since") && none.contains("wider --since"),
            "{none}"
        );
        let empty = audit_notice("runs", 0, 0, &[]).unwrap();
        assert!(empty.contains("no runs"), "{empty}");
    }

    #[test]
    fn listing_progress_reads_as_a_sentence() {
        let zone = crate::cloudflare::ZoneId::parse(&"a".repeat(32)).unwrap();
        // (kind, zone, pages, seen, candidates, expected)
        let cases = [
            (
                Kind::DeviceRegistration,
                None,
                12,
                12000,
                340,
                "listing registrations: 12 pages, 12000 seen, 340 matched",
            ),
            (
                Kind::ClientCertificate,
                Some(&zone),
                1,
                30,
                0,
                "listing client certificates in zone aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa: 1 page, 30 seen, 0 matched",
            ),
        ];
        for (kind, zone, pages, seen, candidates, expected) in cases {
            let p = crate::plan::Progress {
                kind,
                zone,
                pages,
                seen,
                candidates,
            };
            assert_eq!(listing_progress(&p), expected);
        }
    }

    #[test]
    fn every_argument_has_help() {
        use clap::CommandFactory;
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" && arg.get_help().is_none() {
                    missing.push(format!("{path} --{id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {}", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "zt-janitor", &mut missing);
        assert!(missing.is_empty(), "without help: {missing:?}");
    }

    #[test]
    fn resource_names_a_kind_or_else_an_id() {
        let id = "0b9a1c2e-6f0e-4a53-9d0e-5b7a3f1c2d4e";
        let s = |v: &str| Some(v.to_owned());
        // (case, --resource, --id, kind filter, id filter)
        let cases = [
            ("neither", None, None, None, None),
            ("an id, as before kinds", s(id), None, None, s(id)),
            ("--id alone", None, s(id), None, s(id)),
            (
                "a kind",
                s("device_registration"),
                None,
                Some(Kind::DeviceRegistration),
                None,
            ),
            (
                "a kind and an id",
                s("device_registration"),
                s(id),
                Some(Kind::DeviceRegistration),
                s(id),
            ),
        ];
        for (case, resource, id, kind, resource_id) in cases {
            let got = resource_filter(resource, id).unwrap();
            assert_eq!(got, (kind, resource_id), "{case}");
        }
        let twice = resource_filter(s(id), s(id)).unwrap_err().to_string();
        assert!(
            twice.contains("device_registration") && twice.contains("--id"),
            "{twice}"
        );
    }
}

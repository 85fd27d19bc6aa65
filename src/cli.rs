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

/// The exit status of every outcome, in one place; `--help` prints [`EXIT_STATUS_HELP`] and
/// the README has the same table. 2 is clap's own code for a usage error, so a run's outcomes
/// start at 3 (until 0.1 an aborted or failed run also exited 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done as asked; for `once`, the run applied or planned.
    Ok = 0,
    /// An error outside a run: config, start-up, the audit database, the API before a run.
    Error = 1,
    /// The command line is wrong (clap).
    Usage = 2,
    /// `once`: the safety caps refused the run, or something blocked it; nothing was done.
    Refused = 3,
    /// `once`: the run aborted (a listing could not be trusted, or a stop was requested).
    Aborted = 4,
    /// `once`: actions failed, the run could not be audited, or the cycle panicked;
    /// `audit verify`: the hash chain is broken.
    Failed = 5,
}

impl Exit {
    /// The exit status of a run that ended as `outcome`.
    pub fn of(outcome: RunOutcome) -> Exit {
        match outcome {
            RunOutcome::Applied | RunOutcome::Planned => Exit::Ok,
            RunOutcome::Refused => Exit::Refused,
            RunOutcome::Aborted => Exit::Aborted,
            RunOutcome::Failed => Exit::Failed,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

/// The table of [`Exit`], as `--help` shows it.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  ok; `once`: the run applied or planned
  1  error: config, start-up, audit database, API outside a run
  2  usage error (the command line)
  3  `once`: refused by the safety caps or blocked; nothing was done
  4  `once`: aborted: a listing could not be trusted, or a stop was requested
  5  `once`: failed: actions failed, or the run could not be audited;
     `audit verify`: the audit log's hash chain is broken";

#[derive(Parser)]
#[command(
    name = "zt-janitor",
    version,
    about = "Keeps a Cloudflare Zero Trust account free of stale device registrations.",
    after_help = EXIT_STATUS_HELP
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
        /// Also save the plan to FILE (with each target as listed), to review and then apply
        /// exactly that with `zt-janitor apply FILE`.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Apply a plan saved by `plan --out FILE`: act on its targets and no others, each checked
    /// against a fresh listing first (one no longer a candidate is skipped, and recorded). A
    /// plan made for another account, with other settings, or too long ago is refused. Asks
    /// for confirmation on a terminal. Exit status as for `once`.
    Apply(ApplyArgs),
    /// Run one cycle now: plan, record it in the audit log and, in apply mode, act.
    /// Exit status: 0 applied/planned, 3 refused, 4 aborted, 5 failed (see below).
    #[command(after_help = EXIT_STATUS_HELP)]
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
    /// Validate the config file: print every error, or the effective settings and rules and
    /// the warnings (credentials this environment lacks, dangerous caps). Exit status: 0 valid
    /// (warnings or not), 1 invalid or an online check failed.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
        /// Also check against the API: load the credentials, verify the token and read the
        /// first page of each kind the rules select. Changes nothing, writes no audit log.
        #[arg(long)]
        online: bool,
        /// Fail (exit 1) on warnings too, e.g. in CI.
        #[arg(long)]
        strict: bool,
    },
    /// Reverse what run N did where Cloudflare allows it: registrations it revoked are
    /// unrevoked, client certificates it revoked are reactivated while still
    /// pending_revocation. Deletions are never reversible; every action that cannot be
    /// reversed is named, with why. Recorded in the audit log as a run of its own. Asks for
    /// confirmation on a terminal. Exit status: 0 every action asked about reversed (or none),
    /// 3 some could not be reversed (the others were), 5 a reversal failed, 1 error.
    Undo(UndoArgs),
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
struct ApplyArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The plan `zt-janitor plan --out FILE` saved.
    file: PathBuf,
    /// Apply without asking (for scripts; needed when not run on a terminal).
    #[arg(long)]
    yes: bool,
    /// Raise the caps for this one apply: at most N actions, whatever max_fraction_per_run
    /// says. Recorded with the run in the audit log.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_actions: Option<u64>,
    /// Refuse a plan made more than this many hours ago.
    #[arg(long, value_name = "HOURS", default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..=720))]
    max_age_hours: u64,
    /// The cycle report as text or JSON.
    #[arg(long, value_enum, default_value = "text")]
    output: CycleFormat,
}

#[derive(Args)]
struct UndoArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The run to undo (see `zt-janitor audit runs`).
    #[arg(long, value_name = "N")]
    run: i64,
    /// Only these ids (repeatable); an id the run has no action on is reported.
    #[arg(long = "id", value_name = "ID")]
    ids: Vec<String>,
    /// Undo without asking (for scripts; needed when not run on a terminal).
    #[arg(long)]
    yes: bool,
    /// Text, or one JSON document (schemas/undo.schema.json).
    #[arg(long, value_enum, default_value = "text")]
    output: CycleFormat,
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
    /// Delete the runs older than the config's retention ([audit] retain_days and
    /// retain_mutations) with everything that hangs off them, and give the space back. Takes
    /// the audit database's writer lock: stop the daemon first (it prunes by itself at the
    /// start of each cycle).
    Prune {
        #[command(flatten)]
        config: ConfigArg,
        /// Say what would be deleted and delete nothing (reads only, so it may run beside a
        /// daemon).
        #[arg(long)]
        dry_run: bool,
        /// Also convert a database created before incremental vacuum, once: a full VACUUM,
        /// refused unless twice the database's size is free beside it. From then on pruning
        /// gives the space back by itself.
        #[arg(long, conflicts_with = "dry_run")]
        vacuum: bool,
        /// Text, or one JSON document (schemas/audit-prune.schema.json).
        #[arg(long, value_enum, default_value = "text")]
        output: CycleFormat,
    },
    /// Recent runs.
    Runs {
        #[command(flatten)]
        common: AuditArgs,
    },
    /// Walk the audit log's hash chain and report the first broken link (table, row, what
    /// differs). Exit status: 0 intact, 5 broken, 1 the database cannot be read.
    #[command(after_help = EXIT_STATUS_HELP)]
    Verify {
        #[command(flatten)]
        config: ConfigArg,
        /// Verify this audit database instead of the one the config names.
        #[arg(long)]
        db: Option<PathBuf>,
        /// Text, or one JSON document (schemas/audit-verify.schema.json).
        #[arg(long, value_enum, default_value = "text")]
        output: CycleFormat,
    },
    /// The grace period's current marks: what each object waits for, since when, and when it
    /// will be acted on if it stays a candidate.
    Marks {
        #[command(flatten)]
        common: AuditArgs,
        /// A resource kind as `[[rule]] resource` names it (e.g. device_registration).
        #[arg(long, value_name = "KIND")]
        resource: Option<String>,
        /// The rule that first selected the object.
        #[arg(long)]
        rule: Option<String>,
        /// An object id.
        #[arg(long)]
        id: Option<String>,
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
    /// Export runs, their actions (with the object's snapshot) and their mutations for a SIEM,
    /// streamed: JSON Lines (schemas/audit-export.schema.json), or CSV of one record type.
    Export(ExportArgs),
}

#[derive(Args)]
struct ExportArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Read this audit database instead of the one the config names (the lines' account_id
    /// is then null).
    #[arg(long)]
    db: Option<PathBuf>,
    /// Runs started at or after this time: RFC 3339 (2026-11-26T08:00:00Z), a date
    /// (2026-11-26, midnight UTC) or an age (7d, 12h, 30m: that long ago).
    #[arg(long, value_name = "TIME", value_parser = parse_time_now)]
    since: DateTime<Utc>,
    /// Runs started before this time; the same forms as --since.
    #[arg(long, value_name = "TIME", value_parser = parse_time_now)]
    until: Option<DateTime<Utc>>,
    /// JSON Lines (runs, each followed by its actions and mutations, one record per line) or
    /// CSV (one record type, see --records).
    #[arg(long, value_enum)]
    format: crate::export::ExportFormat,
    /// The record type of a CSV export (default actions); JSON Lines holds all three.
    #[arg(long, value_enum, value_name = "TYPE")]
    records: Option<crate::export::Records>,
    /// Write to FILE (replaced whole when done, readable by its owner only) instead of stdout.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
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
            return Exit::Error.into();
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            // Errors can carry API data (Cloudflare's messages), so they are escaped like output.
            eprintln!("error: {}", report::escape(&error_chain(&e)));
            Exit::Error.into()
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
        Command::Plan {
            config,
            output,
            out,
        } => {
            let config = load(&config.config, None)?;
            plan(config, output, out.as_deref()).await
        }
        Command::Apply(args) => {
            let config = load(&args.config.config, None)?;
            apply(config, args).await
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
        Command::CheckConfig {
            config,
            online,
            strict,
        } => {
            let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
            crate::check::check_config(&config.config, online, strict, &mut out, &mut err).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Undo(args) => {
            let config = load(&args.config.config, None)?;
            undo(config, args).await
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

async fn plan(config: Config, output: Format, out: Option<&Path>) -> Result<ExitCode> {
    let Loaded { config, rules } = Loaded::new(config)?;
    if let Some(warning) = crate::startup::credentials_warning(&config.cloudflare) {
        tracing::warn!("{warning}");
    }
    let now = Utc::now();
    let spinner = crate::progress::Spinner::start("listing…");
    let plans = crate::plan::preview_with(&config, &rules, now, out.is_some(), &mut |p| {
        if let Some(spinner) = &spinner {
            spinner.set(listing_progress(&p));
        }
    })
    .await;
    drop(spinner);
    let mut plans = plans?;
    let outlooks = grace_outlooks(&config, &mut plans, now).await?;
    if let Some(path) = out {
        crate::saved_plan::write(path, &config, now, &plans)?;
        let targets: usize = plans.iter().map(|p| p.actionable().count()).sum();
        eprintln!(
            "Saved the plan ({targets} targets) to {}. Review it, then: zt-janitor apply {}",
            path.display(),
            path.display()
        );
    }
    let mut out = std::io::stdout().lock();
    match output {
        // One JSON document per part, each naming its resource (and zone): a stream, so that
        // each part stands alone and one schema fits every document.
        Format::Json => {
            for plan in &plans {
                let header = report::Header::new(Some(&config), plan.generated_at);
                report::plan_json(&mut out, &header, plan, &rules)?;
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
                if let Some(Some(g)) = outlooks.get(i) {
                    writeln!(
                        out,
                        "Grace period (from the marks in the audit log): the next cycle would \
                         newly mark {}, act on {} now, keep {} waiting, and clear {} marks.",
                        g.newly_marked, g.due_now, g.waiting, g.cleared
                    )?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// For the parts whose kind has a grace period, notes on each candidate when it will be acted
/// on, from the marks the cycles set (the audit log, read only; none if it does not exist
/// yet). One entry per plan.
async fn grace_outlooks(
    config: &Config,
    plans: &mut [crate::plan::Plan],
    now: DateTime<Utc>,
) -> Result<Vec<Option<crate::plan::GraceOutlook>>> {
    if !config.rules.iter().any(|r| r.grace_days > 0) {
        return Ok(vec![None; plans.len()]);
    }
    let mut marks = crate::plan::MarkDates::new();
    if config.audit.path.exists() {
        let store = AuditStore::open_read_only(&config.audit.path).await?;
        let rows = store
            .marks(&crate::audit::MarkFilter {
                limit: i64::MAX,
                ..Default::default()
            })
            .await?;
        store.close().await;
        for m in rows {
            let (Some(kind), Ok(first)) = (
                Kind::parse(&m.resource_kind),
                DateTime::parse_from_rfc3339(&m.first_marked_at),
            ) else {
                continue;
            };
            marks.insert(
                (kind, m.zone_id, m.resource_id.to_ascii_lowercase()),
                first.with_timezone(&Utc),
            );
        }
    }
    Ok(plans
        .iter_mut()
        .map(|p| crate::plan::annotate_grace(p, &marks, &config.rules, now))
        .collect())
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
    let exit = run_one_cycle(&janitor, output, None).await?;
    if janitor.loaded.config.safety.mode == Mode::Plan {
        tracing::debug!("plan mode: nothing was changed");
    }
    Ok(exit)
}

/// One cycle of `janitor` now, restricted to a saved plan's targets if `saved` (with the cap
/// raised for it): on a task of its own, so that a panic closes its run as failed instead
/// of leaving it; then its report is printed and notified, the audit store closed, and the
/// run's exit status returned.
async fn run_one_cycle(
    janitor: &crate::startup::Janitor,
    output: CycleFormat,
    saved: Option<(crate::saved_plan::SavedPlan, Option<u64>)>,
) -> Result<ExitCode> {
    let owned = janitor.clone();
    // The table shows every candidate; JSON shows counts only, so needs none kept.
    let keep_rows = matches!(output, CycleFormat::Text);
    let report = crate::cycle::run_isolated(&janitor.audit, &janitor.metrics, async move {
        let cycle = owned.cycle().keeping_rows(keep_rows);
        let cycle = match &saved {
            Some((plan, max_actions)) => cycle.applying(plan, *max_actions),
            None => cycle,
        };
        cycle.run(Utc::now()).await
    })
    .await;
    let report = match report {
        Ok(report) => report,
        Err(e @ crate::cycle::CycleError::Panicked(_)) => {
            // The run is recorded as failed, and exits as a failed run does.
            eprintln!("error: {e}");
            janitor.close().await;
            return Ok(Exit::Failed.into());
        }
        Err(e) => return Err(e.into()),
    };
    report_and_notify(janitor, &report, output).await?;
    janitor.close().await;
    Ok(Exit::of(report.outcome).into())
}

/// Prints a finished run's report while its notifications go out, then waits for them (each
/// bounded by its deadline), so that a one-shot run still notifies and its attempts are
/// audited before the store closes.
async fn report_and_notify(
    janitor: &crate::startup::Janitor,
    report: &crate::cycle::CycleReport,
    output: CycleFormat,
) -> Result<()> {
    let outbox = crate::notify::Outbox::default();
    let config = &janitor.loaded.config;
    outbox.after_run(config, &janitor.audit, &janitor.metrics, report);
    let printed = report_cycle(janitor, report, output);
    if !outbox.wait(crate::notify::longest_deadline(config)).await {
        tracing::warn!("notifications still being delivered at their deadline were abandoned");
    }
    printed
}

/// Prints a cycle's report: each part's table (when kept) and the summary, or one JSON
/// document.
fn report_cycle(
    janitor: &crate::startup::Janitor,
    report: &crate::cycle::CycleReport,
    output: CycleFormat,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match output {
        CycleFormat::Json => report::cycle_json(
            &mut out,
            &janitor.loaded.config.cloudflare.account_id,
            Utc::now(),
            report,
        )?,
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
            report::cycle_text(&mut out, report)?;
            let skipped: u64 = report.resources.iter().map(|p| p.skipped_targets).sum();
            if skipped > 0 {
                writeln!(
                    out,
                    "Skipped {skipped} targets of the saved plan that are no longer candidates; \
                     why: zt-janitor audit actions --run {}",
                    report.run_id
                )?;
            }
            writeln!(out, "Audit log: {}", janitor.audit.path().display())?;
        }
    }
    Ok(())
}

/// `zt-janitor apply FILE`: the saved plan's targets, confirmed, then one apply cycle
/// restricted to them.
async fn apply(mut config: Config, args: ApplyArgs) -> Result<ExitCode> {
    let saved =
        crate::saved_plan::SavedPlan::load(&args.file, &config, Utc::now(), args.max_age_hours)?;
    if !args.yes && !confirm_apply(&saved, args.max_actions)? {
        eprintln!("Apply cancelled; nothing was done.");
        return Ok(Exit::Error.into());
    }
    config.safety.mode = Mode::Apply;
    if let Some(n) = args.max_actions {
        config.safety.max_actions_per_run = n;
        config.safety.max_fraction_per_run = 1.0;
    }
    let janitor = crate::startup::open(config).await?;
    run_one_cycle(&janitor, args.output, Some((saved, args.max_actions))).await
}

/// Shows what applying `saved` will do and asks for `yes`, as `terraform apply` does. Off a
/// terminal there is nobody to ask: `--yes` must say so.
fn confirm_apply(saved: &crate::saved_plan::SavedPlan, max_actions: Option<u64>) -> Result<bool> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        anyhow::bail!(
            "apply asks for confirmation, but is not run on a terminal; pass --yes to apply without asking"
        );
    }
    let age = Utc::now() - saved.generated_at;
    let mut err = std::io::stderr().lock();
    writeln!(
        err,
        "Saved plan {} (made {}, {}h{:02}m ago):",
        saved.path.display(),
        saved
            .generated_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        age.num_hours(),
        age.num_minutes() % 60
    )?;
    if saved.is_empty() {
        writeln!(err, "  no targets: nothing will be done")?;
    }
    for (kind, action, n) in saved.counts() {
        let (one, many) = kind.noun();
        writeln!(err, "  {action} {n} {}", if n == 1 { one } else { many })?;
    }
    if let Some(n) = max_actions {
        writeln!(
            err,
            "  caps raised for this apply: at most {n} actions (recorded in the audit log)"
        )?;
    }
    writeln!(
        err,
        "Each target is checked against a fresh listing first; one no longer a candidate is skipped.\n\
         Deletion cannot be undone. Only 'yes' will be accepted to approve.\n"
    )?;
    write!(err, "Apply? ")?;
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(answer.trim() == "yes")
}

/// `zt-janitor undo --run N`: what can be reversed, confirmed, then reversed and audited.
async fn undo(config: Config, args: UndoArgs) -> Result<ExitCode> {
    use crate::undo;
    let janitor = crate::startup::open(config).await?;
    let result = async {
        let settings = &janitor.loaded.config.cloudflare;
        let credentials = crate::secret::Credentials::load(settings)?;
        let client =
            crate::cloudflare::Client::new(settings, credentials, janitor.metrics.clone())?
                .with_quota(janitor.quota.clone());
        // An interrupted call is settled first, so that the undo decides on what is known.
        let reconciled = crate::apply::reconcile_pending(&client, &janitor.audit).await?;
        if reconciled > 0 {
            tracing::info!(mutations = reconciled, "reconciled interrupted mutations");
        }
        let run = crate::audit::RunId(args.run);
        let plan = undo::prepare(&janitor.audit, &client, run, &args.ids).await?;
        let acting = plan.reversible().next().is_some();
        if acting && !args.yes && !confirm_undo(&plan)? {
            eprintln!("Undo cancelled; nothing was done.");
            return Ok(None);
        }
        let chunk = settings.bulk_chunk_size;
        Ok::<_, anyhow::Error>(Some(
            undo::execute(&janitor.audit, &client, &plan, chunk).await?,
        ))
    }
    .await;
    janitor.close().await;
    let Some(report) = result? else {
        return Ok(Exit::Error.into());
    };
    let mut out = std::io::stdout().lock();
    match args.output {
        CycleFormat::Json => {
            let header = report::Header::new(Some(&janitor.loaded.config), Utc::now());
            report::undo_json(&mut out, &header, &report)?;
        }
        CycleFormat::Text => report::undo_text(&mut out, &report)?,
    }
    Ok(ExitCode::from(report.exit_code()))
}

/// Shows what the undo will reverse and refuse, and asks for `yes`, as `apply` does. Off a
/// terminal there is nobody to ask: `--yes` must say so.
fn confirm_undo(plan: &crate::undo::UndoPlan) -> Result<bool> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        anyhow::bail!(
            "undo asks for confirmation, but is not run on a terminal; pass --yes to undo without asking"
        );
    }
    let mut err = std::io::stderr().lock();
    writeln!(err, "Undo of run {}:", plan.run.0)?;
    for item in &plan.items {
        let a = &item.action;
        let what = match &item.verdict {
            crate::undo::Verdict::Reverse(m) => m.as_str().to_owned(),
            crate::undo::Verdict::Refuse(why) => format!("cannot undo: {why}"),
        };
        writeln!(
            err,
            "  {} {} {} ({}): {}",
            report::escape(&a.action),
            report::escape(&a.resource_kind),
            report::escape(&a.resource_id),
            report::escape(a.name.as_deref().unwrap_or("-")),
            report::escape(&what)
        )?;
    }
    for id in &plan.not_in_run {
        writeln!(
            err,
            "  {}: cannot undo: not in run {}",
            report::escape(id),
            plan.run.0
        )?;
    }
    writeln!(
        err,
        "Each reversal is recorded in the audit log as a run of its own. Only 'yes' will be accepted to approve.\n"
    )?;
    write!(err, "Undo? ")?;
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(answer.trim() == "yes")
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
        AuditQuery::Export(args) => return audit_export(args).await,
        AuditQuery::Prune {
            config,
            dry_run,
            vacuum,
            output,
        } => return audit_prune(&config, dry_run, vacuum, output).await,
        AuditQuery::Runs { common } => (common, None),
        AuditQuery::Verify { config, db, output } => {
            let common = AuditArgs {
                config,
                db,
                output: Format::Text,
                limit: 1,
            };
            return audit_verify(common, output).await;
        }
        AuditQuery::Marks {
            common,
            resource,
            rule,
            id,
        } => {
            let resource_kind = resource
                .map(|r| {
                    Kind::parse(&r).ok_or_else(|| {
                        anyhow::anyhow!(
                            "--resource {r:?} is not a resource kind; use one of {}",
                            Kind::ALL.map(Kind::as_str).join(", ")
                        )
                    })
                })
                .transpose()?;
            let filter = crate::audit::MarkFilter {
                resource_kind,
                rule,
                resource_id: id,
                limit: common.limit,
            };
            return audit_marks(common, filter).await;
        }
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
    let (store, config) = open_audit(&common).await?;
    let header = report::Header::new(config.as_ref(), Utc::now());
    let width = output_width();
    let mut out = std::io::stdout().lock();
    let notice = match filter {
        None => {
            let rows = store.recent_runs(common.limit).await?;
            report::runs_fit(&mut out, &rows, common.output, &header, width)?;
            let total = if rows.len() as i64 == common.limit {
                store.count_runs().await?
            } else {
                rows.len() as i64
            };
            audit_notice("runs", rows.len(), total, &[])
        }
        Some(f) => {
            let rows = store.actions(&f).await?;
            report::actions_fit(&mut out, &rows, common.output, &header, width)?;
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

/// `audit verify`: the chain's verdict on stdout, the exit status 5 when it is broken.
async fn audit_verify(common: AuditArgs, output: CycleFormat) -> Result<ExitCode> {
    let (store, _) = open_audit(&common).await?;
    let verdict = store.verify_chain().await;
    store.close().await;
    let verdict = verdict.with_context(|| {
        format!(
            "cannot verify the audit database {}",
            store.path().display()
        )
    })?;
    let mut out = std::io::stdout().lock();
    match output {
        CycleFormat::Json => {
            let doc = serde_json::json!({
                "schema_version": 1,
                "generated_at": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "database": store.path().display().to_string(),
                "intact": verdict.intact(),
                "entries": verdict.entries,
                "scopes": verdict.scopes,
                "anchor": verdict.anchor,
                "head": verdict.head,
                "broken": verdict.broken,
            });
            serde_json::to_writer_pretty(&mut out, &doc)?;
            writeln!(out)?;
        }
        CycleFormat::Text => {
            let head = verdict.head.as_ref().map_or_else(
                || "no entries".to_owned(),
                |h| format!("head {} sha256 {}", h.seq, h.sha256),
            );
            match &verdict.broken {
                None => writeln!(
                    out,
                    "audit chain intact: {} entries, {} scopes checked, {head}",
                    verdict.entries, verdict.scopes
                )?,
                Some(b) => writeln!(
                    out,
                    "audit chain BROKEN: table {}, {}{}: {}\n({} entries, {head})",
                    report::escape(&b.table),
                    report::escape(&b.row),
                    b.seq
                        .map(|s| format!(", chain entry {s}"))
                        .unwrap_or_default(),
                    report::escape(&b.what),
                    verdict.entries
                )?,
            }
        }
    }
    Ok(if verdict.intact() {
        ExitCode::SUCCESS
    } else {
        Exit::Failed.into()
    })
}

/// The audit database an `audit` query reads (read only): `--db`, else the config's, with
/// the config if one was read (with --db none is, so the JSON names no account or mode).
async fn open_audit(common: &AuditArgs) -> Result<(AuditStore, Option<Config>)> {
    open_audit_at(&common.config, common.db.as_deref()).await
}

async fn open_audit_at(
    config: &ConfigArg,
    db: Option<&Path>,
) -> Result<(AuditStore, Option<Config>)> {
    let (path, config) = match db {
        Some(db) => (db.to_owned(), None),
        None => {
            let config = load(&config.config, Some("warn"))?;
            (config.audit.path.clone(), Some(config))
        }
    };
    if !path.exists() {
        anyhow::bail!(
            "no audit database at {}: nothing has run with this config yet (or pass --db PATH)",
            path.display()
        );
    }
    Ok((AuditStore::open_read_only(&path).await?, config))
}

/// `audit export`: to stdout, or to a file that appears only once whole. A reader that goes
/// away (`| head`) ends the export quietly, with success.
async fn audit_export(args: ExportArgs) -> Result<ExitCode> {
    use crate::export::{self, AtomicFile, ExportFormat, ExportOptions, Records};
    if args.format == ExportFormat::Jsonl && args.records.is_some() {
        anyhow::bail!(
            "--records chooses the one record type of a CSV export; JSON Lines holds runs, \
             actions and mutations together (each line's `record` names its type): drop \
             --records, or use --format csv"
        );
    }
    if let Some(until) = args.until.filter(|until| *until <= args.since) {
        anyhow::bail!(
            "--until {} is not after --since {}, so no run can be in between; swap them, or \
             give a later --until",
            until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            args.since
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    let (store, config) = open_audit_at(&args.config, args.db.as_deref()).await?;
    let options = ExportOptions {
        since: args.since,
        until: args.until,
        format: args.format,
        records: args.records.unwrap_or(Records::Actions),
        account_id: config.as_ref().map(|c| &c.cloudflare.account_id),
    };
    let written = match &args.output {
        Some(path) => {
            let context = || {
                format!(
                    "cannot write the export to {}; check that its directory exists and is \
                     writable, and that the disk is not full",
                    path.display()
                )
            };
            let mut file = AtomicFile::create(path).with_context(context)?;
            let counts = export::export(&store, &options, file.writer()).await;
            let counts = match counts {
                Err(export::ExportError::Write(e)) => Err(e).with_context(context)?,
                other => other?,
            };
            file.commit().with_context(context)?;
            Some(counts)
        }
        None => {
            let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
            match export::export(&store, &options, &mut out).await {
                Ok(counts) => Some(counts),
                Err(e) if e.is_broken_pipe() => None,
                Err(e) => return Err(e.into()),
            }
        }
    };
    store.close().await;
    if let Some(counts) = written {
        // On stderr, so that stdout stays the export alone.
        let runs = report::plural(counts.runs, "run", "runs");
        let actions = report::plural(counts.actions, "action", "actions");
        let mutations = report::plural(counts.mutations, "mutation", "mutations");
        match (counts.runs, options.format, options.records) {
            (0, _, _) => eprintln!(
                "no runs started in the range given, so nothing was exported; try an earlier \
                 --since"
            ),
            (_, ExportFormat::Jsonl, _) => eprintln!("exported {runs}, {actions} and {mutations}"),
            (_, ExportFormat::Csv, Records::Runs) => eprintln!("exported {runs}"),
            (_, ExportFormat::Csv, Records::Actions) => eprintln!("exported {actions} of {runs}"),
            (_, ExportFormat::Csv, Records::Mutations) => {
                eprintln!("exported {mutations} of {runs}")
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `audit prune`: the config's retention applied now, or (dry) what it would delete.
async fn audit_prune(
    config: &ConfigArg,
    dry_run: bool,
    vacuum: bool,
    output: CycleFormat,
) -> Result<ExitCode> {
    use crate::audit::{PruneLimits, PruneTrigger, Retention};
    let config = load(&config.config, Some("warn"))?;
    let path = &config.audit.path;
    if !path.exists() {
        anyhow::bail!(
            "no audit database at {}: nothing has run with this config yet, so nothing to prune",
            path.display()
        );
    }
    let retention = Retention::of(&config.audit);
    let now = Utc::now();
    let (report, converted) = if dry_run {
        let store = AuditStore::open_read_only(path).await?;
        let report = store.prune_preview(retention, now).await;
        store.close().await;
        (report?, None)
    } else {
        let store = AuditStore::open(path).await.map_err(|e| {
            let locked = matches!(e, crate::audit::AuditError::Locked { .. });
            let error = anyhow::Error::new(e);
            if locked {
                error.context(
                    "audit prune needs the audit database to itself (a running daemon prunes \
                     it at the start of each cycle; --dry-run reads beside it)",
                )
            } else {
                error
            }
        })?;
        let report = store
            .prune(retention, now, PruneTrigger::Command, PruneLimits::COMMAND)
            .await;
        // After pruning, so that the rewrite leaves the pruned pages out.
        let converted = match (&report, vacuum) {
            (Ok(_), true) => Some(store.convert_to_incremental_vacuum().await),
            _ => None,
        };
        let mut report = report?;
        if converted.is_some() {
            report.bytes_after = store.disk_bytes();
            report.incremental_vacuum = true;
        }
        store.close().await;
        (report, converted.transpose()?)
    };
    let mut out = std::io::stdout().lock();
    match output {
        CycleFormat::Json => {
            #[derive(serde::Serialize)]
            struct PruneJson<'a> {
                #[serde(flatten)]
                header: report::Header<'a>,
                database: String,
                #[serde(flatten)]
                report: &'a crate::audit::PruneReport,
                /// `--vacuum`: whether the database was converted (false: it already had it).
                vacuum_converted: Option<bool>,
            }
            let doc = PruneJson {
                header: report::Header::new(Some(&config), now),
                database: path.display().to_string(),
                report: &report,
                vacuum_converted: converted,
            };
            serde_json::to_writer_pretty(&mut out, &doc)?;
            writeln!(out)?;
        }
        CycleFormat::Text => prune_text(&mut out, path, &report, converted)?,
    }
    if let Some(error) = &report.error {
        anyhow::bail!(
            "pruning stopped part-way: {error}; what was deleted before it is recorded, and the \
             next prune goes on"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `audit prune`'s text: what went (or would), what was kept although old enough, and the
/// size on disk.
fn prune_text(
    out: &mut dyn Write,
    path: &Path,
    r: &crate::audit::PruneReport,
    converted: Option<bool>,
) -> std::io::Result<()> {
    let verb = if r.dry_run { "Would prune" } else { "Pruned" };
    let db = report::escape(&path.to_string_lossy()).into_owned();
    let kept = match r.retain_mutations {
        Some(days) => format!(
            "{} after they finished",
            report::plural(u64::from(days), "day", "days")
        ),
        None => "forever".to_owned(),
    };
    writeln!(
        out,
        "Retention: runs that acted on nothing {} after they finished, runs that acted {kept}.",
        report::plural(u64::from(r.retain_days), "day", "days")
    )?;
    match (r.runs.iter().min(), r.runs.iter().max()) {
        (Some(first), Some(last)) => {
            let tables: Vec<String> = r
                .deleted
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(table, n)| format!("{table} {n}"))
                .collect();
            writeln!(
                out,
                "{verb} {} (ids {first} to {last}) from {db}: {} ({}).",
                report::plural(r.runs.len() as u64, "run", "runs"),
                report::plural(r.rows(), "row", "rows"),
                tables.join(", ")
            )?;
        }
        _ if r.rows() > 0 => writeln!(
            out,
            "{verb} {} of runs not yet gone from {db}.",
            report::plural(r.rows(), "row", "rows")
        )?,
        _ => writeln!(out, "Nothing to prune in {db}.")?,
    }
    if !r.complete && r.error.is_none() {
        writeln!(out, "Stopped at its row budget; the next prune goes on.")?;
    }
    if !r.held.is_empty() {
        let held: Vec<String> = r
            .held
            .iter()
            .map(|h| format!("run {} ({})", h.run_id, h.reason.describe()))
            .collect();
        writeln!(out, "Kept although old enough: {}.", held.join(", "))?;
    }
    match converted {
        Some(true) => writeln!(
            out,
            "Converted to incremental vacuum: pruning gives space back from now on."
        )?,
        Some(false) => writeln!(out, "Incremental vacuum was already on.")?,
        None if !r.incremental_vacuum => writeln!(
            out,
            "This database predates incremental vacuum: pruned space is reused, but the file \
             does not shrink until `zt-janitor audit prune --vacuum` converts it once."
        )?,
        None => {}
    }
    if !r.dry_run {
        writeln!(
            out,
            "Size on disk: {} bytes, was {} bytes.",
            r.bytes_after, r.bytes_before
        )?;
    }
    Ok(())
}

/// `audit marks`: the current marks, each with the day it acts on under the config's rules
/// (unknown with `--db`, which reads no config).
async fn audit_marks(common: AuditArgs, filter: crate::audit::MarkFilter) -> Result<ExitCode> {
    let (store, config) = open_audit(&common).await?;
    let header = report::Header::new(config.as_ref(), Utc::now());
    let rows = store.marks(&filter).await?;
    store.close().await;
    let grace = |kind: &str, rule: &str| {
        config.as_ref().and_then(|c| {
            c.rules
                .iter()
                .find(|r| r.resource.as_str() == kind && r.name == rule)
                .map(|r| r.grace_days)
        })
    };
    let marks: Vec<report::MarkView> = rows
        .into_iter()
        .map(|m| {
            let acts_on = grace(&m.resource_kind, &m.rule).and_then(|days| {
                let first = DateTime::parse_from_rfc3339(&m.first_marked_at).ok()?;
                let at = first.with_timezone(&Utc) + chrono::TimeDelta::days(i64::from(days));
                Some(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            });
            report::MarkView::new(m, acts_on)
        })
        .collect();
    let mut out = std::io::stdout().lock();
    report::marks(&mut out, &marks, common.output, &header)?;
    if marks.is_empty() && common.output == Format::Text {
        eprintln!("no marks: no rule has a grace period (grace_days), or nothing waits in one");
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
    fn each_outcome_has_its_own_exit_status_and_the_help_lists_them() {
        use clap::CommandFactory;
        let Err(usage) = Cli::try_parse_from(["zt-janitor", "--no-such-flag"]) else {
            panic!("an unknown flag is a usage error");
        };
        assert_eq!(usage.exit_code(), Exit::Usage as i32, "clap's usage code");
        let codes: Vec<Exit> = RunOutcome::ALL.into_iter().map(Exit::of).collect();
        assert_eq!(
            codes,
            [
                Exit::Ok,
                Exit::Ok,
                Exit::Refused,
                Exit::Aborted,
                Exit::Failed
            ]
        );
        let all = [
            Exit::Ok,
            Exit::Error,
            Exit::Usage,
            Exit::Refused,
            Exit::Aborted,
            Exit::Failed,
        ];
        for exit in all {
            let line = format!("\n  {}  ", exit as u8);
            assert!(EXIT_STATUS_HELP.contains(&line), "{exit:?} is documented");
        }
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("4  `once`: aborted"), "{help}");
        let mut cli = Cli::command();
        let once = cli.find_subcommand_mut("once").unwrap();
        assert!(once
            .render_long_help()
            .to_string()
            .contains("5  `once`: failed"));
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

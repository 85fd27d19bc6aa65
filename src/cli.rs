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
    /// `once`: actions failed, the run could not be audited, or the cycle panicked.
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
  5  `once`: failed: actions failed, or the run could not be audited";

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
    /// Read the audit log.
    Audit {
        #[command(subcommand)]
        query: AuditQuery,
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
struct AuditArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Read this audit database instead of the one the config names.
    #[arg(long)]
    db: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "text")]
    output: Format,
    /// At most this many rows, newest first (1 to 1000000).
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
        #[arg(long)]
        run: Option<i64>,
        #[arg(long)]
        rule: Option<String>,
        /// User email, case-insensitive.
        #[arg(long)]
        user: Option<String>,
        /// A resource kind as `[[rule]] resource` names it (e.g. device_registration), or else
        /// an object id (as --id).
        #[arg(long, value_name = "KIND|ID")]
        resource: Option<String>,
        /// An object id, of any kind.
        #[arg(long)]
        id: Option<String>,
        /// RFC 3339 time; actions decided at or after it.
        #[arg(long)]
        since: Option<DateTime<Utc>>,
        /// RFC 3339 time; actions decided before it.
        #[arg(long)]
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
        Command::Audit { query } => audit(query).await,
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
    let plans = crate::plan::preview_with(&config, &rules, now, out.is_some()).await?;
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
            for (i, plan) in plans.iter().enumerate() {
                if plans.len() > 1 {
                    report::kind_heading(&mut out, plan.kind, i)?;
                }
                report::plan_text(&mut out, plan, &rules)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn once(config: Config, output: CycleFormat) -> Result<ExitCode> {
    let janitor = crate::startup::open(config).await?;
    let owned = janitor.clone();
    // The table shows every candidate; JSON shows counts only, so needs none kept.
    let keep_rows = matches!(output, CycleFormat::Text);
    // On a task of its own, so that a panic closes the run as failed instead of leaving it.
    let report = crate::cycle::run_isolated(&janitor.audit, &janitor.metrics, async move {
        owned.cycle().keeping_rows(keep_rows).run(Utc::now()).await
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
    report_and_notify(&janitor, &report, output).await?;
    janitor.close().await;
    if janitor.loaded.config.safety.mode == Mode::Plan {
        tracing::debug!("plan mode: nothing was changed");
    }
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
            for (i, part) in report.resources.iter().enumerate() {
                if several {
                    report::kind_heading(&mut out, part.kind, i)?;
                }
                if let Some(plan) = &part.plan {
                    report::plan_text(&mut out, plan, &janitor.loaded.rules)?;
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
    let owned = janitor.clone();
    let keep_rows = matches!(args.output, CycleFormat::Text);
    let max_actions = args.max_actions;
    let report = crate::cycle::run_isolated(&janitor.audit, &janitor.metrics, async move {
        owned
            .cycle()
            .keeping_rows(keep_rows)
            .applying(&saved, max_actions)
            .run(Utc::now())
            .await
    })
    .await;
    let report = match report {
        Ok(report) => report,
        Err(e @ crate::cycle::CycleError::Panicked(_)) => {
            eprintln!("error: {e}");
            janitor.close().await;
            return Ok(Exit::Failed.into());
        }
        Err(e) => return Err(e.into()),
    };
    report_and_notify(&janitor, &report, args.output).await?;
    janitor.close().await;
    Ok(Exit::of(report.outcome).into())
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
    // With --db no config is read, so the JSON names no account or mode.
    let (path, config) = match common.db {
        Some(db) => (db, None),
        None => {
            let config = load(&common.config.config, Some("warn"))?;
            (config.audit.path.clone(), Some(config))
        }
    };
    let header = report::Header::new(config.as_ref(), Utc::now());
    if !path.exists() {
        anyhow::bail!(
            "no audit database at {}: nothing has run with this config yet (or pass --db PATH)",
            path.display()
        );
    }
    let store = AuditStore::open_read_only(&path).await?;
    let mut out = std::io::stdout().lock();
    match filter {
        None => report::runs(
            &mut out,
            &store.recent_runs(common.limit).await?,
            common.output,
            &header,
        )?,
        Some(f) => report::actions(&mut out, &store.actions(&f).await?, common.output, &header)?,
    }
    store.close().await;
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

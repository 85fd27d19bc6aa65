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
    let plans = crate::plan::preview(&config, &rules, Utc::now()).await?;
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
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    };
    let mut out = std::io::stdout().lock();
    match output {
        CycleFormat::Json => report::cycle_json(
            &mut out,
            &janitor.loaded.config.cloudflare.account_id,
            Utc::now(),
            &report,
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

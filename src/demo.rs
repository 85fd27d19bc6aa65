//! `zt-janitor demo`: the whole product on one machine without a Cloudflare account. Starts the
//! built-in fake API with seeded data, prints the plan, runs the real daemon in apply mode for
//! two cycles, then shows what the audit log and the metrics say.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::Utc;
use clap::Args;

use crate::apply::StopSignal;
use crate::audit::{ActionFilter, AuditStore};
use crate::config::Config;
use crate::fake::{FakeHandle, FakeOptions, FakeRateLimit, FakeServer};
use crate::report::{self, Format};
use crate::resource::Kind;
use crate::startup::Loaded;
use crate::stop::ShutdownSignals;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// A demo config of your own (apply mode) instead of the built-in copy of
    /// config/demo.toml; its base_url, token and audit path are replaced.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Registrations the fake API starts with.
    #[arg(long, default_value_t = 2000)]
    registrations: usize,
    /// Access service tokens the fake API starts with (some expired, some never used, some
    /// in use and so refused by the API).
    #[arg(long, default_value_t = 60)]
    service_tokens: usize,
    /// Account API tokens the fake API starts with (some expired, disabled or unused), besides
    /// the token the demo runs with, which no rule may touch.
    #[arg(long, default_value_t = 40)]
    account_tokens: usize,
    /// Client certificates the fake API starts with in each zone of the config's `zone_ids`
    /// (some expired, some already revoked).
    #[arg(long, default_value_t = 30)]
    client_certificates: usize,
    /// Where to keep the audit database (default: a new directory under the system temp dir).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// After the two cycles, keep the daemon and the fake running until Ctrl-C or SIGTERM, so that
    /// /metrics can be scraped by hand.
    #[arg(long)]
    keep_running: bool,
}

const PLAN_ROWS_SHOWN: usize = 12;

/// config/demo.toml, built in, so that an installed binary runs the demo from any directory.
const DEMO_CONFIG: &str = include_str!("../config/demo.toml");

pub async fn run(args: DemoArgs) -> Result<()> {
    let mut shutdown = ShutdownSignals::new().context("cannot listen for SIGTERM and Ctrl-C")?;
    let state_dir = match args.state_dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("zt-janitor-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    // The built-in config is written out, so that the daemon has a file to reload on SIGHUP.
    let config_path = match args.config {
        Some(path) => path,
        None => {
            let path = state_dir.join("demo.toml");
            std::fs::write(&path, DEMO_CONFIG)
                .with_context(|| format!("cannot write {}", path.display()))?;
            path
        }
    };
    let mut config = Config::load(&config_path).context("cannot load the demo config")?;

    let fake = FakeServer::start(FakeOptions {
        account_id: config.cloudflare.account_id.to_string(),
        registrations: args.registrations,
        service_tokens: args.service_tokens,
        account_tokens: args.account_tokens,
        zones: config
            .cloudflare
            .zone_ids
            .iter()
            .map(ToString::to_string)
            .collect(),
        client_certificates: args.client_certificates,
        // Cloudflare's own limit and headers, so that the pacing is what it would be.
        rate_limit: Some(FakeRateLimit::default()),
        ..FakeOptions::default()
    })
    .await
    .context("cannot start the fake Cloudflare API")?;
    let token_file = state_dir.join("cloudflare-token");
    write_private(&token_file, &fake.token())?;
    config.cloudflare.base_url = fake.base_url();
    config.cloudflare.api_token_file = Some(token_file);
    config.audit.path = state_dir.join("audit.db");
    config.metrics.listen = "127.0.0.1:0".parse().expect("valid address");
    config.schedule.cron = "*/3 * * * * *".to_owned();
    config.schedule.run_on_start = true;

    println!(
        "== Fake Cloudflare API: {} ({}, seeded)",
        fake.base_url(),
        holdings(&fake)
    );
    let Loaded { rules, .. } = Loaded::new(config.clone())?;
    for plan in crate::plan::preview(&config, &rules, Utc::now()).await? {
        let rows = plan.candidates.len();
        let zone = plan
            .scope
            .zone
            .as_ref()
            .map(|z| format!(" in zone {z}"))
            .unwrap_or_default();
        println!(
            "\n== Plan of {}{zone} ({} of {})",
            plan.kind.noun().1,
            if rows > PLAN_ROWS_SHOWN {
                format!("first {PLAN_ROWS_SHOWN}")
            } else {
                "all".to_owned()
            },
            report::plural(rows as u64, "row", "rows")
        );
        let mut text = Vec::new();
        report::plan_text_fit(&mut text, &plan, &rules, crate::cli::output_width())?;
        let text = String::from_utf8(text)?;
        // The header and the first rows; on a narrow terminal each has an indented second line.
        let mut lines = text.lines().peekable();
        let mut rows = 0;
        while let Some(line) = lines.next_if(|l| !l.is_empty()) {
            if !line.starts_with(' ') {
                rows += 1;
            }
            if rows > PLAN_ROWS_SHOWN + 1 {
                break;
            }
            println!("{line}");
        }
        let summary: Vec<&str> = lines.skip_while(|l| !l.is_empty()).collect();
        println!("...{}", summary.join("\n"));
    }

    println!(
        "\n== Running the daemon in apply mode (cron {:?}) for two cycles",
        config.schedule.cron
    );
    let stop = StopSignal::default();
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let daemon = tokio::spawn(crate::schedule::run_daemon(
        config_path.clone(),
        config.clone(),
        stop.clone(),
        move |started| {
            let _ = addr_tx.send(started.metrics_addr);
        },
    ));
    let metrics_addr = addr_rx.await.context("the daemon did not start")?;
    let audit = AuditStore::open_read_only(&config.audit.path).await?;
    // SIGTERM or Ctrl-C at any point from here stops the daemon cleanly (it hears the same
    // signals) and ends the demo with exit status 0.
    let shown = tokio::select! {
        shown = show(&config, &audit, &fake, metrics_addr, args.keep_running) => shown,
        () = shutdown.recv() => Ok(()),
    };
    stop.stop();
    daemon.await??;
    audit.close().await;
    fake.shutdown().await;
    shown
}

/// Waits for the daemon's two cycles and shows what they did; with `keep_running`, then
/// waits for ever (the caller ends it on a signal).
async fn show(
    config: &Config,
    audit: &AuditStore,
    fake: &FakeHandle,
    metrics_addr: std::net::SocketAddr,
    keep_running: bool,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while finished_runs(audit).await? < 2 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the daemon did not finish two cycles within a minute"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    println!();
    let width = crate::cli::output_width();
    report::runs_fit(
        &mut std::io::stdout(),
        &audit.recent_runs(2).await?,
        Format::Text,
        &report::Header::new(None, Utc::now()),
        width,
    )?;
    println!(
        "\nThe fake API now holds {}; it saw {} mutation calls.",
        holdings(fake),
        fake.mutations().len()
    );
    let first_run = audit.recent_runs(2).await?.last().map(|r| r.id);
    println!("\n== What the first cycle did (5 of its audited actions)");
    let done = audit
        .actions(&ActionFilter {
            run_id: first_run,
            limit: 5,
            ..ActionFilter::default()
        })
        .await?;
    report::actions_fit(
        &mut std::io::stdout(),
        &done,
        Format::Text,
        &report::Header::new(None, Utc::now()),
        width,
    )?;
    let with_user = audit
        .actions(&ActionFilter {
            run_id: first_run,
            resource_kind: Some(Kind::DeviceRegistration),
            limit: 20,
            ..ActionFilter::default()
        })
        .await?;
    let example_user = with_user
        .iter()
        .find_map(|a| a.user_email.clone())
        .unwrap_or_else(|| "someone@example.com".to_owned());

    let metrics_url = format!("http://{metrics_addr}/metrics");
    let scrape = reqwest::get(&metrics_url).await?.text().await?;
    println!("\n== Metrics ({metrics_url}), a few lines (series at 0 left out)");
    for line in scrape.lines().filter(|l| {
        // The counters exist from the start at 0 for every label set; what moved is the story.
        let moved = |l: &str| !(l.ends_with(" 0") && l.contains("_total{"));
        l.starts_with("zt_janitor_runs_total") && moved(l)
            || l.starts_with("zt_janitor_actions_total") && moved(l)
            || l.starts_with("zt_janitor_resources_seen")
            || l.starts_with("zt_janitor_cloudflare_quota_remaining")
            || l.starts_with("zt_janitor_cloudflare_rate_limited_total")
    }) {
        println!("{line}");
    }
    println!("\nAudit database: {}", config.audit.path.display());
    println!(
        "  zt-janitor audit runs --db {}",
        config.audit.path.display()
    );
    println!(
        "  zt-janitor audit actions --db {} --user {example_user}",
        config.audit.path.display()
    );
    if keep_running {
        println!(
            "\nThe daemon keeps running; metrics at {metrics_url}. Ctrl-C or SIGTERM to stop."
        );
        std::future::pending::<()>().await;
    }
    Ok(())
}

/// What the fake holds, kind by kind; certificates count the active ones, since a revoked
/// certificate stays listed.
fn holdings(fake: &FakeHandle) -> String {
    let zones = fake.zones();
    let certificates: usize = zones
        .iter()
        .flat_map(|zone| {
            fake.certificate_ids(zone)
                .into_iter()
                .filter_map(move |id| fake.certificate(zone, &id))
        })
        .filter(|cert| cert["status"] == "active")
        .count();
    let count = |n: usize, kind: Kind| {
        let (one, many) = kind.noun();
        report::plural(n as u64, one, many)
    };
    format!(
        "{}, {}, {}, {certificates} active client certificates in {}",
        count(fake.len(), Kind::DeviceRegistration),
        count(fake.service_token_ids().len(), Kind::AccessServiceToken),
        count(fake.account_token_ids().len(), Kind::AccountApiToken),
        report::plural(zones.len() as u64, "zone", "zones")
    )
}

async fn finished_runs(audit: &AuditStore) -> Result<usize> {
    Ok(audit
        .recent_runs(10)
        .await?
        .iter()
        .filter(|r| r.outcome.is_some())
        .count())
}

fn write_private(path: &std::path::Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

//! `zt-janitor bench`: one plan-only cycle and one apply cycle over N registrations served by
//! the fake API in a child process (so that this process's peak RSS is the janitor's alone),
//! each into a fresh audit database, with the figures the performance targets are stated in;
//! or (`--plan-cycles K`) K plan cycles over the same unchanged account into one database, 6
//! hours apart on an injected clock, with the database's size after each.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use chrono::Utc;
use clap::Args;

use crate::cloudflare::Endpoint;
use crate::config::{Config, Mode};
use crate::stop::ShutdownSignals;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Registrations the fake API serves.
    #[arg(long, default_value_t = 100_000)]
    registrations: usize,
    /// Page size asked of the API (the fake caps it at --max-per-page).
    #[arg(long, default_value_t = 1000)]
    per_page: u32,
    /// The fake API's page-size cap, as a real server has one.
    #[arg(long, default_value_t = 1000)]
    max_per_page: usize,
    /// Ids per bulk delete call.
    #[arg(long, default_value_t = 100)]
    chunk: usize,
    /// Share of the registrations last seen 120-720 days ago (0 to 1).
    #[arg(long, default_value_t = 0.20)]
    idle_share: f64,
    /// Share of the registrations already revoked (0 to 1).
    #[arg(long, default_value_t = 0.05)]
    revoked_share: f64,
    /// Seed of the fake's data, so that runs compare.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Latency the fake API adds to every request, to see the cycle as it runs against a real,
    /// remote API (0: loopback speed, where the janitor's own costs dominate).
    #[arg(long, default_value_t = 0)]
    api_latency_ms: u64,
    /// Which cycles to run. Freed memory stays with the process, so for a clean peak-RSS figure
    /// of the apply cycle run it alone (`--phase apply`).
    #[arg(long, value_enum, default_value = "both")]
    phase: Phase,
    /// Let the fake limit like Cloudflare: this many calls per --rate-window-secs, then a block.
    /// Without it the fake announces a quota no cycle can spend, so the janitor reads the
    /// headers but never waits.
    #[arg(long)]
    rate_limit: Option<u32>,
    /// The fake's rate-limit window, in seconds (Cloudflare's: 300).
    #[arg(long, default_value_t = 300)]
    rate_window_secs: u64,
    /// Share of each window another consumer of the token spends, evenly (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    other_consumer_share: f64,
    /// The janitor's `[cloudflare] rate_share`.
    #[arg(long, default_value_t = 0.5)]
    rate_share: f64,
    /// Instead of the two cycles: this many plan cycles over the same unchanged account, into
    /// one audit database, 6 hours apart (an injected clock), printing the database's size
    /// (main file and WAL, after a checkpoint) after each and the growth in all.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    plan_cycles: Option<u32>,
    /// Keep the scratch directory with the audit databases the cycles wrote (its path is
    /// printed), to inspect them with `sqlite3` or `zt-janitor audit`.
    #[arg(long)]
    keep_databases: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Phase {
    Plan,
    Apply,
    Both,
}

const TOKEN: &str = "bench-token";
const ACCOUNT: &str = "0123456789abcdef0123456789abcdef";

struct Figures {
    wall: f64,
    listing_requests: u64,
    mutation_requests: u64,
    other_requests: u64,
    evaluated: u64,
    candidates: u64,
    audit_rows: i64,
    audit_seconds: f64,
    audit_waited_seconds: f64,
    peak_rss_kib: u64,
    api_requests: u64,
    rate_limited: u64,
    quota_wait_seconds: f64,
}

pub async fn run(args: BenchArgs) -> Result<()> {
    let mut shutdown = ShutdownSignals::new().context("cannot listen for SIGTERM and Ctrl-C")?;
    let dir = std::env::temp_dir().join(format!("zt-janitor-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let token_file = dir.join("token");
    std::fs::write(&token_file, TOKEN)?;
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let mut fake = FakeChild::spawn(&args)?;
    println!(
        "fake API: {} registrations ({:.0}% idle, {:.0}% revoked), page cap {}, latency {} ms, at {}",
        args.registrations,
        args.idle_share * 100.0,
        args.revoked_share * 100.0,
        args.max_per_page,
        args.api_latency_ms,
        fake.base_url
    );

    if let Some(cycles) = args.plan_cycles {
        let db = dir.join("cycles.db");
        let finished = tokio::select! {
            finished = plan_cycles(&args, &fake.base_url, &token_file, &db, cycles) => Some(finished),
            () = shutdown.recv() => None,
        };
        fake.stop();
        remove_scratch(&args, &dir);
        return finished
            .unwrap_or_else(|| bail!("interrupted by a signal before the figures were complete"));
    }
    let phase =
        |mode: Mode, db: &str| cycle(&args, &fake.base_url, &token_file, dir.join(db), mode);
    let phases = async {
        let plan = match args.phase {
            Phase::Apply => None,
            _ => Some(phase(Mode::Plan, "plan.db").await?),
        };
        let apply = match args.phase {
            Phase::Plan => None,
            _ => {
                reset_peak_rss();
                Some(phase(Mode::Apply, "apply.db").await?)
            }
        };
        anyhow::Ok((plan, apply))
    };
    // On SIGTERM or Ctrl-C the fake child is stopped (by its drop) and the scratch directory
    // removed; a benchmark cut short has no figures to print.
    let finished = tokio::select! {
        finished = phases => Some(finished),
        () = shutdown.recv() => None,
    };
    let Some(finished) = finished else {
        fake.stop();
        remove_scratch(&args, &dir);
        bail!("interrupted by a signal before the figures were complete");
    };
    let (plan, apply) = finished?;
    fake.stop();

    let n = args.registrations as u64;
    let pages = n
        .div_ceil(u64::from(args.per_page.min(args.max_per_page as u32)))
        .max(1);
    println!();
    println!("| figure | plan-only cycle | apply cycle |");
    println!("|---|---|---|");
    let row = |name: &str, f: &dyn Fn(&Figures) -> String| {
        let cell = |x: &Option<Figures>| x.as_ref().map_or("-".to_owned(), f);
        println!("| {name} | {} | {} |", cell(&plan), cell(&apply));
    };
    row("wall time", &|x| format!("{:.2} s", x.wall));
    row("API calls: list pages", &|x| x.listing_requests.to_string());
    row("API calls: bulk delete / revoke / delete", &|x| {
        x.mutation_requests.to_string()
    });
    row(
        "API calls: filtered listings (confirmation, reconciliation)",
        &|x| x.other_requests.to_string(),
    );
    // Every call is confirmed by a filtered listing of its ids (at most 100 per listing; the
    // calls of one group share them), so at most one listing per call.
    row("API calls: target (pages + 2 x chunks + 1)", &|x| {
        let chunks = if x.mutation_requests > 0 {
            x.candidates.div_ceil(args.chunk as u64)
        } else {
            0
        };
        (pages + 2 * chunks + 1).to_string()
    });
    row("registrations evaluated", &|x| x.evaluated.to_string());
    row("evaluated per second", &|x| {
        format!("{:.0}", x.evaluated as f64 / x.wall)
    });
    row("candidates", &|x| x.candidates.to_string());
    row("audit rows written", &|x| x.audit_rows.to_string());
    row("audit write time", &|x| {
        format!(
            "{:.3} s ({:.1}%)",
            x.audit_seconds,
            100.0 * x.audit_seconds / x.wall
        )
    });
    row("cycle waiting on audit writes", &|x| {
        format!(
            "{:.3} s ({:.1}%)",
            x.audit_waited_seconds,
            100.0 * x.audit_waited_seconds / x.wall
        )
    });
    row("peak RSS (VmHWM)", &|x| {
        format!("{:.1} MiB", x.peak_rss_kib as f64 / 1024.0)
    });
    row("rate-limited answers (429)", &|x| {
        x.rate_limited.to_string()
    });
    row("waiting for rate-limit quota", &|x| {
        format!("{:.1} s", x.quota_wait_seconds)
    });
    if let Some(limit) = args.rate_limit {
        // The fastest a cycle may go at its share: all its calls at limit x share per window.
        row(
            "floor at the limit (calls / (limit x share) x window)",
            &|x| {
                let per_window = f64::from(limit) * args.rate_share;
                let floor = x.api_requests as f64 / per_window * args.rate_window_secs as f64;
                format!(
                    "{floor:.1} s (wall {:+.1}%)",
                    100.0 * (x.wall - floor) / floor
                )
            },
        );
    }
    remove_scratch(&args, &dir);
    Ok(())
}

fn remove_scratch(args: &BenchArgs, dir: &std::path::Path) {
    if args.keep_databases {
        println!("audit databases kept in {}", dir.display());
    } else {
        std::fs::remove_dir_all(dir).ok();
    }
}

/// The bench's config: two rules and an exclusion over device registrations.
fn config(
    args: &BenchArgs,
    base_url: &str,
    token_file: &Path,
    db: &Path,
    mode: Mode,
) -> Result<Config> {
    let text = format!(
        r#"
[cloudflare]
account_id = "{ACCOUNT}"
api_token_file = "{token}"
base_url = "{base_url}"
per_page = {per_page}
bulk_chunk_size = {chunk}
max_requests_per_cycle = 1000000
cycle_deadline_secs = 604800
rate_share = {rate_share}

[safety]
mode = "{mode}"
max_actions_per_run = 10000000
max_fraction_per_run = 1.0

[audit]
path = "{db}"

[[rule]]
name = "idle-90d"
resource = "device_registration"
action = "delete"
idle_days = 90

[[rule]]
name = "revoked"
resource = "device_registration"
action = "delete"
revoked = true

[[exclude]]
name = "board"
user_email = ["*@board.example.com"]
"#,
        token = token_file.display(),
        per_page = args.per_page,
        chunk = args.chunk,
        rate_share = args.rate_share,
        db = db.display(),
    );
    Ok(Config::from_toml_str(&text, Path::new("bench.toml"))?)
}

/// `--plan-cycles K`: K plan cycles into one database, the clock 6 hours on each time.
async fn plan_cycles(
    args: &BenchArgs,
    base_url: &str,
    token_file: &Path,
    db: &Path,
    cycles: u32,
) -> Result<()> {
    let config = config(args, base_url, token_file, db, Mode::Plan)?;
    let janitor = crate::startup::open(config).await?;
    let empty = janitor.audit.storage_figures().await?;
    let mb = |bytes: u64| bytes as f64 / 1e6;
    println!();
    println!("| cycle | wall | candidates | audit write time | main file | WAL before checkpoint | actions | bodies | spans | growth since cycle 1 |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let start = Utc::now();
    let mut first = None;
    let mut last = empty;
    let mut wal_peak = 0;
    let mut walls = Vec::new();
    for i in 0..cycles {
        let now = start + chrono::TimeDelta::hours(6 * i64::from(i));
        let written = janitor.audit.write_time();
        let started = Instant::now();
        let report = janitor.cycle().run(now).await?;
        let wall = started.elapsed().as_secs_f64();
        if report.reason.is_some() {
            bail!(
                "plan cycle {} ended {}: {}",
                i + 1,
                report.outcome,
                report.reason.unwrap_or_default()
            );
        }
        let audit_time = (janitor.audit.write_time() - written).as_secs_f64();
        let figures = janitor.audit.storage_figures().await?;
        wal_peak = wal_peak.max(figures.wal_bytes_before);
        let size = figures.main_bytes + figures.wal_bytes;
        let base = *first.get_or_insert(size);
        walls.push(wall);
        println!(
            "| {} | {wall:.2} s | {} | {audit_time:.2} s | {:.2} MB | {:.2} MB | {} | {} | {} | {:+.3} MB |",
            i + 1,
            report.summary.candidates.unwrap_or(0),
            mb(figures.main_bytes),
            mb(figures.wal_bytes_before),
            figures.actions,
            figures.bodies,
            figures.spans,
            (size as f64 - base as f64) / 1e6,
        );
        last = figures;
    }
    let size = last.main_bytes + last.wal_bytes;
    let from_empty = size.saturating_sub(empty.main_bytes + empty.wal_bytes);
    walls.sort_by(f64::total_cmp);
    println!();
    println!(
        "{cycles} plan cycles: database {:.2} MB (main file and WAL after a truncating checkpoint), \
         {:.2} MB more than the empty database, {:+.3} MB since the first cycle ({:.1} KB a cycle \
         after the first); WAL at most {:.2} MB between checkpoints; median cycle {:.2} s",
        mb(size),
        mb(from_empty),
        (size as f64 - first.unwrap_or(size) as f64) / 1e6,
        (size as f64 - first.unwrap_or(size) as f64) / 1e3 / f64::from(cycles.max(2) - 1),
        mb(wal_peak),
        walls[walls.len() / 2],
    );
    janitor.audit.close().await;
    Ok(())
}

async fn cycle(
    args: &BenchArgs,
    base_url: &str,
    token_file: &Path,
    db: PathBuf,
    mode: Mode,
) -> Result<Figures> {
    let config = config(args, base_url, token_file, &db, mode)?;
    let janitor = crate::startup::open(config).await?;
    let started = Instant::now();
    let report = janitor.cycle().run(Utc::now()).await?;
    let wall = started.elapsed().as_secs_f64();
    if report.reason.is_some() {
        bail!(
            "the {mode} cycle ended {}: {}",
            report.outcome,
            report.reason.unwrap_or_default()
        );
    }
    let (audit, metrics) = (&janitor.audit, &janitor.metrics);
    let requests = |e: Endpoint| -> u64 {
        ["2xx", "3xx", "4xx", "5xx", "error"]
            .iter()
            .map(|class| {
                metrics
                    .api_requests
                    .with_label_values(&[e.label(), class])
                    .get()
            })
            .sum()
    };
    let (runs, actions, mutations) = audit.row_counts().await?;
    let figures = Figures {
        wall,
        listing_requests: requests(Endpoint::ListRegistrations),
        mutation_requests: requests(Endpoint::BulkDeleteRegistrations)
            + requests(Endpoint::RevokeRegistrations)
            + requests(Endpoint::DeleteRegistration),
        other_requests: requests(Endpoint::FindRegistrations),
        evaluated: report.summary.seen_total.unwrap_or(0),
        candidates: report.summary.candidates.unwrap_or(0),
        audit_rows: runs + actions + mutations,
        audit_seconds: audit.write_time().as_secs_f64(),
        audit_waited_seconds: audit
            .write_time()
            .saturating_sub(audit.overlapped_time())
            .as_secs_f64(),
        peak_rss_kib: peak_rss_kib()?,
        api_requests: report.summary.api_requests,
        rate_limited: metrics.rate_limited.get(),
        quota_wait_seconds: metrics.quota_wait_seconds.get(),
    };
    audit.close().await;
    Ok(figures)
}

/// VmHWM of this process, in KiB.
fn peak_rss_kib() -> Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/self/status")
}

/// Resets VmHWM to the current RSS (Linux `clear_refs` value 5), so that each phase reports
/// its own peak.
fn reset_peak_rss() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!(
            "warning: cannot reset the peak RSS ({e}); the apply figure includes the plan cycle"
        );
    }
}

struct FakeChild {
    child: Child,
    base_url: String,
}

impl FakeChild {
    fn spawn(args: &BenchArgs) -> Result<Self> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args([
                "fake-api",
                "--listen",
                "127.0.0.1:0",
                "--token",
                TOKEN,
                "--account-id",
                ACCOUNT,
            ])
            .args(match args.rate_limit {
                Some(limit) => vec![
                    "--rate-limit".to_owned(),
                    limit.to_string(),
                    "--rate-window-secs".to_owned(),
                    args.rate_window_secs.to_string(),
                    "--other-consumer-share".to_owned(),
                    args.other_consumer_share.to_string(),
                ],
                // Headers that never bind: the pacing's own cost, without its waits.
                None => vec!["--rate-limit".to_owned(), u32::MAX.to_string()],
            })
            .args(["--registrations", &args.registrations.to_string()])
            .args(["--seed", &args.seed.to_string()])
            .args(["--idle-share", &args.idle_share.to_string()])
            .args(["--revoked-share", &args.revoked_share.to_string()])
            .args(["--max-per-page", &args.max_per_page.to_string()])
            .args(["--max-bulk-ids", &args.chunk.max(100).to_string()])
            .args(
                (args.api_latency_ms > 0)
                    .then(|| {
                        [
                            "--fault".to_owned(),
                            format!("any:delay_ms={}", args.api_latency_ms),
                        ]
                    })
                    .into_iter()
                    .flatten(),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start the fake API")?;
        let stdout = child.stdout.take().context("no stdout from the fake API")?;
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        reader.read_line(&mut line)?;
        // Whatever else the fake prints is read and dropped: a closed pipe would make its
        // next line fail.
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        let base_url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .map(str::to_owned)
            .with_context(|| format!("the fake API did not say where it listens: {line:?}"))?;
        Ok(FakeChild { child, base_url })
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FakeChild {
    fn drop(&mut self) {
        self.stop();
    }
}

//! One helper every integration test uses: a fresh fake Cloudflare API on a random loopback
//! port, a fresh state directory (token file, config, audit database), and ways to run the
//! real code against them and to read what happened.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::{Row, SqlitePool};
use tempfile::TempDir;
use zt_janitor::config::Config;
use zt_janitor::cycle::CycleReport;
use zt_janitor::fake::{FakeHandle, FakeOptions, FakeServer};
use zt_janitor::metrics::Metrics;
use zt_janitor::startup::{self, Janitor};

/// The rules most tests use: idle 90 days, and revoked, both deleted; board members and
/// service-token registrations are protected.
pub const STANDARD_RULES: &str = r#"
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

[[exclude]]
name = "service-tokens"
no_user = true
"#;

/// Two zones for client certificates: the fake serves them when told, and `ZONES` is the
/// `[cloudflare]` line that names them.
pub const ZONE_A: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90";
pub const ZONE_B: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
pub const ZONES: &str =
    r#"zone_ids = ["a1b2c3d4e5f60718293a4b5c6d7e8f90", "0f1e2d3c4b5a69788796a5b4c3d2e1f0"]"#;

pub struct Env {
    pub fake: FakeHandle,
    pub dir: TempDir,
    pub config_path: PathBuf,
    pub db_path: PathBuf,
}

pub struct Settings<'a> {
    pub mode: &'a str,
    pub per_page: u32,
    pub chunk: usize,
    pub max_actions: u64,
    pub max_fraction: f64,
    pub max_retries: u32,
    pub request_timeout_secs: u64,
    /// Extra lines of the `[cloudflare]` table (e.g. `max_requests_per_cycle = 3`).
    pub cloudflare_extra: &'a str,
    pub rules: &'a str,
    /// Extra top-level tables (e.g. `[schedule]`, `[metrics]`).
    pub extra: &'a str,
}

impl Default for Settings<'_> {
    fn default() -> Self {
        Settings {
            mode: "apply",
            per_page: 1000,
            chunk: 100,
            max_actions: 100_000,
            max_fraction: 1.0,
            max_retries: 2,
            request_timeout_secs: 5,
            cloudflare_extra: "",
            rules: STANDARD_RULES,
            extra: "",
        }
    }
}

impl Env {
    pub async fn start(opts: FakeOptions, settings: Settings<'_>) -> Env {
        let fake = FakeServer::start(opts).await.expect("fake API starts");
        let dir = tempfile::tempdir().expect("temp dir");
        let token_path = dir.path().join("token");
        std::fs::write(&token_path, fake.token()).unwrap();
        set_private(&token_path);
        let db_path = dir.path().join("audit.db");
        let config_path = dir.path().join("config.toml");
        let env = Env {
            fake,
            dir,
            config_path,
            db_path,
        };
        env.write_config(&settings);
        env
    }

    pub fn write_config(&self, s: &Settings<'_>) {
        let text = format!(
            r#"
[cloudflare]
account_id = "{account}"
api_token_file = "{token}"
base_url = "{base}"
per_page = {per_page}
bulk_chunk_size = {chunk}
max_retries = {retries}
request_timeout_secs = {timeout}
{cloudflare_extra}

[safety]
mode = "{mode}"
max_actions_per_run = {max_actions}
max_fraction_per_run = {max_fraction}

[audit]
path = "{db}"
{extra}
{rules}
"#,
            account = self.fake.account_id(),
            token = self.dir.path().join("token").display(),
            base = self.fake.base_url(),
            per_page = s.per_page,
            chunk = s.chunk,
            retries = s.max_retries,
            timeout = s.request_timeout_secs,
            cloudflare_extra = s.cloudflare_extra,
            mode = s.mode,
            max_actions = s.max_actions,
            max_fraction = s.max_fraction,
            db = self.db_path.display(),
            extra = s.extra,
            rules = s.rules,
        );
        std::fs::write(&self.config_path, text).unwrap();
    }

    pub fn config(&self) -> Config {
        Config::load(&self.config_path).expect("test config is valid")
    }

    /// Runs one cycle in this process, as `zt-janitor once` does.
    pub async fn once(&self) -> CycleReport {
        self.once_with(&Metrics::new()).await
    }

    /// [`Env::once`], recording into `metrics` so the test can read them.
    pub async fn once_with(&self, metrics: &Metrics) -> CycleReport {
        let janitor = self.open().await.with_metrics(metrics.clone());
        let report = janitor
            .cycle()
            .run(Utc::now())
            .await
            .expect("the audit store works");
        janitor.close().await;
        report
    }

    /// Opens this environment's config as every process that runs cycles does.
    pub async fn open(&self) -> Janitor {
        startup::open(self.config())
            .await
            .expect("the test config opens")
    }

    /// Runs the real binary with `args` (the config is appended).
    pub fn binary(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_zt-janitor"))
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .env_remove("CLOUDFLARE_API_TOKEN")
            .output()
            .expect("the binary runs")
    }

    /// A read-only view of the audit database, for plain SQL assertions.
    pub async fn sql(&self) -> SqlitePool {
        SqlitePoolOptions::new()
            .max_connections(1)
            .connect(&format!("sqlite://{}?mode=ro", self.db_path.display()))
            .await
            .expect("audit database opens")
    }

    /// Ids the standard rules must select, computed from the fake's own objects (not with the
    /// code under test): idle 90+ days or revoked, and not protected by an exclusion.
    pub fn expected_candidates(&self, now: DateTime<Utc>) -> BTreeSet<String> {
        self.fake
            .registration_ids()
            .into_iter()
            .filter(|id| {
                let r = self.fake.get(id).unwrap();
                let email = r["user"]["email"].as_str().unwrap_or("");
                let protected = email.ends_with("@board.example.com")
                    || email.is_empty()
                    || email.starts_with("non_identity@");
                let revoked = !r["revoked_at"].is_null();
                let idle = r["last_seen_at"]
                    .as_str()
                    .and_then(|s| s.parse::<DateTime<Utc>>().ok())
                    .is_some_and(|t| now - t >= TimeDelta::days(90));
                (idle || revoked) && !protected
            })
            .collect()
    }

    /// Every id the fake saw deleted or revoked, by any request.
    pub fn mutated_ids(&self) -> BTreeSet<String> {
        self.fake
            .mutations()
            .into_iter()
            .flat_map(|m| m.affected)
            .collect()
    }

    /// The ids named by each mutation the audit log holds.
    pub async fn audited_mutations(&self) -> Vec<(String, Vec<String>, Option<String>)> {
        let pool = self.sql().await;
        let rows = sqlx::query("SELECT kind, resource_ids, outcome FROM mutations ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        rows.iter()
            .map(|r| {
                let ids: Vec<String> = serde_json::from_str(r.get::<&str, _>(1)).unwrap();
                (r.get(0), ids, r.get(2))
            })
            .collect()
    }

    /// Mutation requests the fake received that no audit row names (same ids), as
    /// `#seq kind (n ids)` lines.
    pub async fn unaudited_mutations(&self) -> Vec<String> {
        let audited: Vec<Vec<String>> = self
            .audited_mutations()
            .await
            .into_iter()
            .map(|(_, mut ids, _)| {
                ids.sort();
                ids
            })
            .collect();
        self.fake
            .mutations()
            .into_iter()
            .filter(|m| {
                let mut ids = m.ids.clone();
                ids.sort();
                !audited.contains(&ids)
            })
            .map(|m| format!("#{} {:?} ({} ids)", m.seq, m.kind, m.ids.len()))
            .collect()
    }

    /// Asserts that every mutation request the fake received has an audit row naming the
    /// same ids.
    pub async fn assert_every_mutation_audited(&self) {
        let missing = self.unaudited_mutations().await;
        assert!(
            missing.is_empty(),
            "mutations without audit row: {missing:?}"
        );
    }

    /// Ids the fake saw deleted or revoked more than once.
    pub fn ids_mutated_twice(&self) -> Vec<String> {
        let mut seen = BTreeSet::new();
        self.fake
            .mutations()
            .into_iter()
            .flat_map(|m| m.affected)
            .filter(|id| !seen.insert(id.clone()))
            .collect()
    }

    pub async fn run_outcomes(&self) -> Vec<(String, Option<String>)> {
        let pool = self.sql().await;
        let rows = sqlx::query("SELECT outcome, reason FROM runs ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    }
}

/// The value of the sample `name_and_labels`, written exactly as a scrape renders it.
pub fn metric(scrape: &str, name_and_labels: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

pub fn set_private(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

pub fn days_ago(now: DateTime<Utc>, d: i64) -> DateTime<Utc> {
    now - TimeDelta::days(d)
}

/// A free loopback port for a daemon's metrics endpoint.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `url`: its status and body, or `(0, "")` when nothing answers within 3 s.
pub async fn get(url: &str) -> (u16, String) {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .build()
        .unwrap();
    match client.get(url).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// Polls `check` every 100 ms until it holds; fails the test after `timeout`.
pub async fn wait_for(
    what: &str,
    timeout: std::time::Duration,
    mut check: impl AsyncFnMut() -> bool,
) {
    let until = std::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            std::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Sends `sig` (e.g. `-HUP`) to a child process.
pub fn signal(child: &std::process::Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

/// A pseudo-terminal: the master end (to read) and the slave end (to give the child).
pub fn pty() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two new descriptors, which are owned by the Files made from them.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are not owned by anything else.
    unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    }
}

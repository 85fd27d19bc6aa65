//! The configuration file: its TOML shape, its defaults, and its validation.
//!
//! This module owns turning one TOML file into typed, validated settings, and explaining a bad
//! file precisely (`file:line:col: key: what is wrong and how to fix it`). It does not read the
//! API token (that is [`crate::secret`]) and does not act on any setting.
//!
//! Parsing is two steps: serde fills private `Raw*` structs that reject unknown keys and keep
//! the span of every value, then `Validator` checks them and builds the public types. Numbers
//! are read as `i64` and range-checked here, so that `idle_days = -5` is explained in terms of
//! days rather than of `u32`.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_spanned::Spanned;

use crate::cloudflare::model::{AccountId, RegistrationType};
use crate::resource::{Kind, ResourceId};

const DEFAULT_API_TOKEN_ENV: &str = "CLOUDFLARE_API_TOKEN";
const DEFAULT_BASE_URL: &str = "https://api.cloudflare.com/client/v4";
const DEFAULT_PER_PAGE: u32 = 1000;
const DEFAULT_BULK_CHUNK_SIZE: usize = 100;
const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 30;
const DEFAULT_MAX_RETRIES: u32 = 5;
const DEFAULT_MAX_REQUESTS_PER_CYCLE: u32 = 1000;
const DEFAULT_CYCLE_DEADLINE_SECS: u64 = 1800;
/// Longest cycle deadline accepted: a week. Far larger values overflow the clock.
pub const MAX_CYCLE_DEADLINE_SECS: u64 = 7 * 24 * 3600;
/// Longest per-request timeout accepted: an hour.
pub const MAX_REQUEST_TIMEOUT_SECS: u64 = 3600;
const DEFAULT_MAX_ACTIONS_PER_RUN: u64 = 50;
const DEFAULT_MAX_FRACTION_PER_RUN: f64 = 0.10;
const DEFAULT_AUDIT_PATH: &str = "/var/lib/zt-janitor/audit.db";
const DEFAULT_CRON: &str = "0 0 */6 * * *";
const DEFAULT_LISTEN: ([u8; 4], u16) = ([127, 0, 0, 1], 9847);
const DEFAULT_LOG_LEVEL: &str = "info";

/// Upper bound for day counts: a century is more than any real policy, and it keeps
/// `now - days` far from chrono's date range limits.
const MAX_DAYS: i64 = 36_500;

/// The whole configuration file, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this was loaded from (for messages and `check-config`).
    pub path: PathBuf,
    /// `[cloudflare]`: account and API client settings. Required (for `account_id`).
    pub cloudflare: CloudflareSettings,
    /// `[safety]`: plan or apply, and per-run limits.
    pub safety: SafetySettings,
    /// `[audit]`: where the audit database lives.
    pub audit: AuditSettings,
    /// `[schedule]`: when cleanup cycles run.
    pub schedule: ScheduleSettings,
    /// `[metrics]`: the Prometheus endpoint.
    pub metrics: MetricsSettings,
    /// `[logging]`: log format and level.
    pub logging: LoggingSettings,
    /// `[[rule]]` tables, in file order. At least one.
    pub rules: Vec<RuleSettings>,
    /// `[[exclude]]` tables, in file order. Possibly none.
    pub exclusions: Vec<ExclusionSettings>,
}

/// `[cloudflare]`
#[derive(Debug, Clone, PartialEq)]
pub struct CloudflareSettings {
    /// `account_id`: 32 lowercase hex characters. Required.
    pub account_id: AccountId,
    /// `api_token_file`: file holding the API token. Default: none (use `api_token_env`).
    /// A path starting with `%d/` or `$CREDENTIALS_DIRECTORY/` is in systemd's credentials
    /// directory (`LoadCredential=`); a relative path is relative to the current directory.
    pub api_token_file: Option<PathBuf>,
    /// `api_token_env`: environment variable holding the token when `api_token_file` is not set.
    /// Default: `CLOUDFLARE_API_TOKEN`.
    pub api_token_env: String,
    /// `base_url`: API root, without trailing `/`. Default: `https://api.cloudflare.com/client/v4`.
    pub base_url: String,
    /// `per_page`: registrations asked for per list page, 1..=10000. Default: 1000.
    pub per_page: u32,
    /// `bulk_chunk_size`: registration ids per bulk delete/revoke call, 1..=1000. Default: 100.
    pub bulk_chunk_size: usize,
    /// `request_timeout_secs`: timeout of one HTTP request, 1..=3600. Default: 30.
    pub request_timeout_secs: u64,
    /// `max_retries`: retries of a failed request (429, 5xx, network), 0..=20. Default: 5.
    pub max_retries: u32,
    /// `max_requests_per_cycle`: client-side request budget of one cycle, at least 1.
    /// Default: 1000 (Cloudflare allows 1200 requests per 5 minutes per token).
    pub max_requests_per_cycle: u32,
    /// `cycle_deadline_secs`: a cycle still running after this long is abandoned, 1..=604800.
    /// Default: 1800.
    pub cycle_deadline_secs: u64,
}

impl CloudflareSettings {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    pub fn cycle_deadline(&self) -> Duration {
        Duration::from_secs(self.cycle_deadline_secs)
    }
}

/// Whether a run only reports (`plan`) or also deletes/revokes (`apply`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Plan,
    Apply,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Plan => "plan",
            Mode::Apply => "apply",
        })
    }
}

/// `[safety]`
#[derive(Debug, Clone, PartialEq)]
pub struct SafetySettings {
    /// `mode`: `"plan"` or `"apply"`. Default: `"plan"`.
    pub mode: Mode,
    /// `max_actions_per_run`: most deletions/revocations in one run, at least 1. Default: 50.
    pub max_actions_per_run: u64,
    /// `max_fraction_per_run`: most actions in one run as a fraction of the registrations listed,
    /// greater than 0 and at most 1. Default: 0.10.
    pub max_fraction_per_run: f64,
}

/// `[audit]`
#[derive(Debug, Clone, PartialEq)]
pub struct AuditSettings {
    /// `path`: the SQLite audit database. Default: `$STATE_DIRECTORY/audit.db` when systemd's
    /// `StateDirectory=` sets `STATE_DIRECTORY`, else `/var/lib/zt-janitor/audit.db`. A relative
    /// path is relative to the current directory.
    pub path: PathBuf,
}

/// `[schedule]`
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleSettings {
    /// `cron`: when cycles run, as six fields with seconds first, in UTC, checked with the
    /// scheduler's own parser. Default: `"0 0 */6 * * *"` (every 6 hours).
    pub cron: String,
    /// `run_on_start`: also run one cycle right after start-up. Default: false.
    pub run_on_start: bool,
}

/// `[metrics]`
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSettings {
    /// `listen`: address of the metrics HTTP server. Default: `127.0.0.1:9847`.
    pub listen: SocketAddr,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LogFormat {
    Text,
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// `[logging]`
#[derive(Debug, Clone, PartialEq)]
pub struct LoggingSettings {
    /// `format`: `"text"` or `"json"`. Default: `"text"`.
    pub format: LogFormat,
    /// `level`: a level (`trace`, `debug`, `info`, `warn`, `error`, `off`) or `tracing` filter
    /// directives such as `"info,zt_janitor=debug"`. Default: `"info"`. `RUST_LOG` overrides it.
    pub level: String,
}

/// What a rule does to what it selects.
#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Delete,
    Revoke,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Delete => "delete",
            Action::Revoke => "revoke",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[rule]]`. A registration matches when every condition that is set holds; validation
/// guarantees at least one selecting condition (`idle_days` or `revoked = true`).
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSettings {
    /// `name`: unique, non-empty; recorded in the audit log. Required.
    pub name: String,
    /// `resource`: `"device_registration"` (the only one so far). Required.
    pub resource: Kind,
    /// `action`: `"delete"` or `"revoke"`. Required.
    pub action: Action,
    /// `idle_days`: select registrations last seen at least this many days ago, 1..=36500.
    /// Default: none.
    pub idle_days: Option<u32>,
    /// `revoked`: select revoked registrations. Default: false.
    pub revoked: bool,
    /// `revoked_min_days`: with `revoked = true`, only those revoked at least this many days ago,
    /// 0..=36500. Default: none (any revoked registration).
    pub revoked_min_days: Option<u32>,
    /// `active_only`: filter, only registrations that are not revoked. Default: false.
    pub active_only: bool,
    /// `registration_type`: filter, `"warp"` or `"browser_extension"`. Default: none (any type).
    pub registration_type: Option<RegistrationType>,
}

/// One `[[exclude]]`: registrations it matches are never touched. It matches when ANY of its
/// criteria matches.
#[derive(Debug, Clone, PartialEq)]
pub struct ExclusionSettings {
    /// `name`: shown in plans and the audit log. Default: `"exclude #N"` (N counts from 1).
    pub name: String,
    /// `user_email`: globs (`*`, `?`, `[...]`, `{a,b}`) matched case-insensitively against the
    /// user's email. Default: none.
    pub user_emails: Vec<String>,
    /// `device_name`: globs matched case-sensitively against the device name. Default: none.
    pub device_names: Vec<String>,
    /// `registration_id`: exact registration ids. Default: none.
    pub registration_ids: Vec<ResourceId>,
    /// `no_user`: registrations with no user, or the service-token identity
    /// `non_identity@*.cloudflareaccess.com`. Default: false.
    pub no_user: bool,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The I/O error is the `source()`, not repeated in the message: print the error chain
    /// (`{:#}` with anyhow).
    #[error("cannot read the config file {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `line` and `col` are 1-based; `col` counts characters.
    #[error("{}:{line}:{col}: {key}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        col: usize,
        key: String,
        message: String,
    },
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text, path)
    }

    /// Validates `text`; `path` is only used in messages and recorded in [`Config::path`].
    /// The default audit path depends on the `STATE_DIRECTORY` environment variable.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let v = Validator { path, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| v.toml_error(&e))?;
        v.config(raw, std::env::var_os("STATE_DIRECTORY"))
    }

    /// A human summary of the effective settings, one rule per line, for `check-config`.
    pub fn describe(&self) -> String {
        let cf = &self.cloudflare;
        let mut lines = vec![
            format!("configuration: {}", self.path.display()),
            match self.safety.mode {
                Mode::Plan => "mode: plan (report what would be done, change nothing)".to_owned(),
                Mode::Apply => {
                    "mode: apply (delete and revoke for real, within the limits)".to_owned()
                }
            },
            format!("account: {}", cf.account_id),
            match &cf.api_token_file {
                Some(file) => format!("api token: read from file {}", file.display()),
                None => format!(
                    "api token: read from environment variable {}",
                    cf.api_token_env
                ),
            },
            format!(
                "api: {} ({} per page, {} ids per bulk call, {}s timeout, {} retries, \
                 at most {} requests and {}s per cycle)",
                cf.base_url,
                cf.per_page,
                cf.bulk_chunk_size,
                cf.request_timeout_secs,
                cf.max_retries,
                cf.max_requests_per_cycle,
                cf.cycle_deadline_secs,
            ),
            format!(
                "limits: at most {} actions and {} of the registrations listed per run",
                self.safety.max_actions_per_run,
                percent(self.safety.max_fraction_per_run),
            ),
            format!("audit: {}", self.audit.path.display()),
            format!(
                "schedule: {:?}{}",
                self.schedule.cron,
                if self.schedule.run_on_start {
                    ", and once at start"
                } else {
                    ""
                },
            ),
            format!("metrics: listening on {}", self.metrics.listen),
            format!(
                "logging: {}, level {:?}",
                self.logging.format, self.logging.level
            ),
            format!("rules ({}):", self.rules.len()),
        ];
        lines.extend(
            self.rules
                .iter()
                .map(|rule| format!("  {}", describe_rule(rule))),
        );
        lines.push(format!("exclusions ({}):", self.exclusions.len()));
        lines.extend(
            self.exclusions
                .iter()
                .map(|e| format!("  {}", describe_exclusion(e))),
        );
        lines.join("\n") + "\n"
    }
}

fn describe_rule(rule: &RuleSettings) -> String {
    let mut conditions = Vec::new();
    if let Some(days) = rule.idle_days {
        conditions.push(format!("idle for at least {days} days"));
    }
    if rule.revoked {
        conditions.push(match rule.revoked_min_days {
            Some(days) => format!("revoked at least {days} days ago"),
            None => "revoked".to_owned(),
        });
    }
    if rule.active_only {
        conditions.push("not revoked".to_owned());
    }
    if let Some(kind) = rule.registration_type {
        conditions.push(format!("of type {kind}"));
    }
    format!(
        "{}: {} {} {}",
        rule.name,
        rule.action,
        rule.resource,
        conditions.join(", ")
    )
}

fn describe_exclusion(exclusion: &ExclusionSettings) -> String {
    let mut criteria = Vec::new();
    if !exclusion.user_emails.is_empty() {
        criteria.push(format!(
            "user_email matches {}",
            exclusion.user_emails.join(" | ")
        ));
    }
    if !exclusion.device_names.is_empty() {
        criteria.push(format!(
            "device_name matches {}",
            exclusion.device_names.join(" | ")
        ));
    }
    if !exclusion.registration_ids.is_empty() {
        let ids: Vec<&str> = exclusion
            .registration_ids
            .iter()
            .map(ResourceId::as_str)
            .collect();
        criteria.push(format!("registration_id is {}", ids.join(" | ")));
    }
    if exclusion.no_user {
        criteria.push("no user (or a service token)".to_owned());
    }
    format!("{}: {}", exclusion.name, criteria.join(", or "))
}

/// `0.1` → `"10%"`, `0.125` → `"12.5%"`.
fn percent(fraction: f64) -> String {
    format!("{}%", (fraction * 10_000.0).round() / 100.0)
}

/// `$STATE_DIRECTORY/audit.db`, or the fixed default outside systemd. systemd joins several
/// `StateDirectory=` entries with `:`; the first is ours.
fn default_audit_path(state_directory: Option<OsString>) -> PathBuf {
    state_directory
        .and_then(|dirs| std::env::split_paths(&dirs).find(|d| !d.as_os_str().is_empty()))
        .map(|dir| dir.join("audit.db"))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_AUDIT_PATH))
}

// ---- The file as written: every value keeps its span. ----

type Sp<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cloudflare: Option<Sp<RawCloudflare>>,
    #[serde(default)]
    safety: RawSafety,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    schedule: RawSchedule,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    logging: RawLogging,
    #[serde(default)]
    rule: Vec<Sp<RawRule>>,
    #[serde(default)]
    exclude: Vec<Sp<RawExclude>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCloudflare {
    account_id: Option<Sp<String>>,
    api_token_file: Option<Sp<String>>,
    api_token_env: Option<Sp<String>>,
    base_url: Option<Sp<String>>,
    per_page: Option<Sp<i64>>,
    bulk_chunk_size: Option<Sp<i64>>,
    request_timeout_secs: Option<Sp<i64>>,
    max_retries: Option<Sp<i64>>,
    max_requests_per_cycle: Option<Sp<i64>>,
    cycle_deadline_secs: Option<Sp<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSafety {
    mode: Option<Sp<String>>,
    max_actions_per_run: Option<Sp<i64>>,
    max_fraction_per_run: Option<Sp<f64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    path: Option<Sp<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    cron: Option<Sp<String>>,
    run_on_start: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<Sp<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLogging {
    format: Option<Sp<String>>,
    level: Option<Sp<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<Sp<String>>,
    resource: Option<Sp<String>>,
    action: Option<Sp<String>>,
    idle_days: Option<Sp<i64>>,
    revoked: Option<Sp<bool>>,
    revoked_min_days: Option<Sp<i64>>,
    active_only: Option<Sp<bool>>,
    registration_type: Option<Sp<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExclude {
    name: Option<Sp<String>>,
    user_email: Option<Vec<Sp<String>>>,
    device_name: Option<Vec<Sp<String>>>,
    registration_id: Option<Vec<Sp<String>>>,
    no_user: Option<bool>,
}

// ---- Validation: raw values to public settings, or the first problem found. ----

struct Validator<'a> {
    path: &'a Path,
    text: &'a str,
}

/// Where something missing is reported when there is no better place: the top of the file.
const TOP: Range<usize> = 0..0;

fn table_key(table: &str, field: &str) -> String {
    format!("[{table}] {field}")
}

fn entry_key(array: &str, index: usize, field: &str) -> String {
    format!("[[{array}]] #{} {field}", index + 1)
}

impl Validator<'_> {
    fn error(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, col) = line_col(self.text, span.start);
        ConfigError::Invalid {
            path: self.path.to_owned(),
            line,
            col,
            key: key.into(),
            message: message.into(),
        }
    }

    fn config(
        &self,
        raw: RawConfig,
        state_directory: Option<OsString>,
    ) -> Result<Config, ConfigError> {
        let cloudflare = self.cloudflare(raw.cloudflare)?;
        let safety = self.safety(raw.safety)?;
        let audit = AuditSettings {
            path: match raw.audit.path {
                Some(p) => PathBuf::from(self.non_empty(
                    &p,
                    &table_key("audit", "path"),
                    "a file path such as \"/var/lib/zt-janitor/audit.db\"",
                )?),
                None => default_audit_path(state_directory),
            },
        };
        let schedule = self.schedule(raw.schedule)?;
        let metrics = self.metrics(raw.metrics)?;
        let logging = self.logging(raw.logging)?;
        if raw.rule.is_empty() {
            return Err(self.error(
                TOP,
                "[[rule]]",
                "no rules, so there is nothing to do; add at least one [[rule]] table, e.g. \
                 [[rule]] name = \"idle-90d\" resource = \"device_registration\" \
                 action = \"delete\" idle_days = 90",
            ));
        }
        let mut rules: Vec<RuleSettings> = Vec::with_capacity(raw.rule.len());
        for (index, raw_rule) in raw.rule.into_iter().enumerate() {
            // Names identify rules in plans and the audit log, so they must be unique.
            if let Some(name) = &raw_rule.get_ref().name {
                if let Some(first) = rules.iter().position(|r| &r.name == name.get_ref()) {
                    return Err(self.error(
                        name.span(),
                        entry_key("rule", index, "name"),
                        format!(
                            "rule #{} is already named {:?}; give every rule a unique name",
                            first + 1,
                            name.get_ref()
                        ),
                    ));
                }
            }
            rules.push(self.rule(index, raw_rule)?);
        }
        let exclusions = raw
            .exclude
            .into_iter()
            .enumerate()
            .map(|(index, e)| self.exclusion(index, e))
            .collect::<Result<_, _>>()?;
        Ok(Config {
            path: self.path.to_owned(),
            cloudflare,
            safety,
            audit,
            schedule,
            metrics,
            logging,
            rules,
            exclusions,
        })
    }

    fn cloudflare(
        &self,
        raw: Option<Sp<RawCloudflare>>,
    ) -> Result<CloudflareSettings, ConfigError> {
        let key = |field: &str| table_key("cloudflare", field);
        let (span, raw) = match raw {
            Some(raw) => (raw.span(), raw.into_inner()),
            None => {
                return Err(self.error(
                    TOP,
                    key("account_id"),
                    "missing: add a [cloudflare] table with account_id = \"<32 lowercase hex \
                     characters>\" (the id in the dashboard URL)",
                ))
            }
        };
        let account_id =
            match &raw.account_id {
                Some(id) => AccountId::parse(id.get_ref())
                    .map_err(|m| self.error(id.span(), key("account_id"), m))?,
                None => return Err(self.error(
                    span,
                    key("account_id"),
                    "missing: add account_id = \"<32 lowercase hex characters>\" (the id in the \
                     dashboard URL) to [cloudflare]",
                )),
            };
        if let (Some(file), Some(env)) = (&raw.api_token_file, &raw.api_token_env) {
            let (later, name) = if env.span().start > file.span().start {
                (env.span(), "api_token_env")
            } else {
                (file.span(), "api_token_file")
            };
            return Err(self.error(
                later,
                key(name),
                "both api_token_file and api_token_env are set, so where the token comes from is \
                 ambiguous; keep only one of them",
            ));
        }
        let api_token_file = match &raw.api_token_file {
            Some(file) => Some(PathBuf::from(self.non_empty(
                file,
                &key("api_token_file"),
                "the path of a file holding the token, e.g. \"%d/cloudflare-token\" with systemd's \
                 LoadCredential=",
            )?)),
            None => None,
        };
        let api_token_env = match &raw.api_token_env {
            Some(name) => self.env_var_name(name, &key("api_token_env"))?,
            None => DEFAULT_API_TOKEN_ENV.to_owned(),
        };
        let base_url = match &raw.base_url {
            Some(url) => self.base_url(url, &key("base_url"))?,
            None => DEFAULT_BASE_URL.to_owned(),
        };
        Ok(CloudflareSettings {
            account_id,
            api_token_file,
            api_token_env,
            base_url,
            per_page: self.number_or(
                &raw.per_page,
                &key("per_page"),
                1..=10_000,
                DEFAULT_PER_PAGE,
                "",
            )?,
            bulk_chunk_size: self.number_or(
                &raw.bulk_chunk_size,
                &key("bulk_chunk_size"),
                1..=1000,
                DEFAULT_BULK_CHUNK_SIZE,
                " (100 is safe; Cloudflare documents no maximum)",
            )?,
            request_timeout_secs: self.number_or(
                &raw.request_timeout_secs,
                &key("request_timeout_secs"),
                1..=MAX_REQUEST_TIMEOUT_SECS as i64,
                DEFAULT_REQUEST_TIMEOUT_SECS,
                "",
            )?,
            max_retries: self.number_or(
                &raw.max_retries,
                &key("max_retries"),
                0..=20,
                DEFAULT_MAX_RETRIES,
                "",
            )?,
            max_requests_per_cycle: self.number_or(
                &raw.max_requests_per_cycle,
                &key("max_requests_per_cycle"),
                1..=i64::from(u32::MAX),
                DEFAULT_MAX_REQUESTS_PER_CYCLE,
                " (Cloudflare allows 1200 requests per 5 minutes)",
            )?,
            cycle_deadline_secs: self.number_or(
                &raw.cycle_deadline_secs,
                &key("cycle_deadline_secs"),
                1..=MAX_CYCLE_DEADLINE_SECS as i64,
                DEFAULT_CYCLE_DEADLINE_SECS,
                "",
            )?,
        })
    }

    fn safety(&self, raw: RawSafety) -> Result<SafetySettings, ConfigError> {
        let key = |field: &str| table_key("safety", field);
        let mode = match &raw.mode {
            Some(mode) => self.one_of(
                mode,
                &key("mode"),
                &[("plan", Mode::Plan), ("apply", Mode::Apply)],
            )?,
            None => Mode::Plan,
        };
        let max_fraction_per_run = match &raw.max_fraction_per_run {
            Some(f) if !(*f.get_ref() > 0.0 && *f.get_ref() <= 1.0) => {
                return Err(self.error(
                    f.span(),
                    key("max_fraction_per_run"),
                    format!(
                        "{} is out of range; use a fraction greater than 0 and at most 1 \
                         (0.10 allows acting on at most 10% of the registrations listed)",
                        f.get_ref()
                    ),
                ))
            }
            Some(f) => *f.get_ref(),
            None => DEFAULT_MAX_FRACTION_PER_RUN,
        };
        Ok(SafetySettings {
            mode,
            max_actions_per_run: self.number_or(
                &raw.max_actions_per_run,
                &key("max_actions_per_run"),
                1..=i64::MAX,
                DEFAULT_MAX_ACTIONS_PER_RUN,
                " (to change nothing, set mode = \"plan\" instead)",
            )?,
            max_fraction_per_run,
        })
    }

    fn schedule(&self, raw: RawSchedule) -> Result<ScheduleSettings, ConfigError> {
        let cron = match &raw.cron {
            Some(cron) => {
                let fields: Vec<&str> = cron.get_ref().split_whitespace().collect();
                if fields.len() != 6 {
                    let message = if fields.len() == 5 {
                        // The common mistake: a crontab line, which has no seconds field.
                        format!(
                            "{:?} has 5 fields, like a crontab line, but this schedule starts \
                             with seconds: write \"0 {}\"",
                            cron.get_ref(),
                            fields.join(" ")
                        )
                    } else {
                        format!(
                            "{:?} has {} fields; expected 6 (sec min hour day-of-month month \
                             day-of-week), e.g. \"0 0 */6 * * *\" for every six hours",
                            cron.get_ref(),
                            fields.len()
                        )
                    };
                    return Err(self.error(cron.span(), table_key("schedule", "cron"), message));
                }
                let cron_text = fields.join(" ");
                // The scheduler's own parser, so that what passes here also runs.
                if let Err(e) = crate::schedule::parse_cron(&cron_text) {
                    return Err(self.error(
                        cron.span(),
                        table_key("schedule", "cron"),
                        format!(
                            "{:?} is not a schedule the scheduler accepts: {e}; fields are sec \
                             (0-59) min (0-59) hour (0-23) day-of-month (1-31) month (1-12 or \
                             Jan-Dec) day-of-week (0-7 or Sun-Sat), e.g. \"0 30 2 * * *\"",
                            cron.get_ref()
                        ),
                    ));
                }
                cron_text
            }
            None => DEFAULT_CRON.to_owned(),
        };
        Ok(ScheduleSettings {
            cron,
            run_on_start: raw.run_on_start.unwrap_or(false),
        })
    }

    fn metrics(&self, raw: RawMetrics) -> Result<MetricsSettings, ConfigError> {
        let listen = match &raw.listen {
            Some(listen) => listen.get_ref().parse().map_err(|_| {
                self.error(
                    listen.span(),
                    table_key("metrics", "listen"),
                    format!(
                        "{:?} is not an IP address and port; write e.g. \"127.0.0.1:9847\", \
                         \"0.0.0.0:9847\" or \"[::1]:9847\" (host names are not resolved)",
                        listen.get_ref()
                    ),
                )
            })?,
            None => SocketAddr::from(DEFAULT_LISTEN),
        };
        Ok(MetricsSettings { listen })
    }

    fn logging(&self, raw: RawLogging) -> Result<LoggingSettings, ConfigError> {
        let format = match &raw.format {
            Some(f) => self.one_of(
                f,
                &table_key("logging", "format"),
                &[("text", LogFormat::Text), ("json", LogFormat::Json)],
            )?,
            None => LogFormat::Text,
        };
        let level = match &raw.level {
            Some(level) => {
                let text = level.get_ref().trim();
                // A bare word must be a level; anything with `=` or `,` is filter directives,
                // which the logging set-up parses (and a bare word there would be a target).
                let is_directives = text.contains(['=', ',']);
                if !is_directives && text.parse::<tracing::level_filters::LevelFilter>().is_err() {
                    return Err(self.error(
                        level.span(),
                        table_key("logging", "level"),
                        format!(
                            "unknown level {:?}; expected one of \"trace\", \"debug\", \"info\", \
                             \"warn\", \"error\", \"off\", or directives like \
                             \"info,zt_janitor=debug\"",
                            level.get_ref()
                        ),
                    ));
                }
                text.to_owned()
            }
            None => DEFAULT_LOG_LEVEL.to_owned(),
        };
        Ok(LoggingSettings { format, level })
    }

    fn rule(&self, index: usize, raw: Sp<RawRule>) -> Result<RuleSettings, ConfigError> {
        let key = |field: &str| entry_key("rule", index, field);
        let span = raw.span();
        let raw = raw.into_inner();
        let required = |field: &str, example: &str| {
            self.error(
                span.clone(),
                key(field),
                format!("missing: every rule needs {field} = {example}"),
            )
        };

        let name = raw
            .name
            .as_ref()
            .ok_or_else(|| required("name", "\"<unique name>\""))?;
        self.non_empty(name, &key("name"), "a unique name such as \"idle-90d\"")?;
        let resource = raw
            .resource
            .as_ref()
            .ok_or_else(|| required("resource", "\"device_registration\""))?;
        let resource = self.one_of_with(
            resource,
            &key("resource"),
            &Kind::ALL.map(|k| (k.as_str(), k)),
            " (service tokens, API tokens and client certificates are not supported yet)",
        )?;
        let action = raw
            .action
            .as_ref()
            .ok_or_else(|| required("action", "\"delete\" or \"revoke\""))?;
        let action_span = action.span();
        let action = self.one_of(
            action,
            &key("action"),
            &[("delete", Action::Delete), ("revoke", Action::Revoke)],
        )?;
        let registration_type = match &raw.registration_type {
            Some(t) => Some(self.one_of(
                t,
                &key("registration_type"),
                &[
                    ("warp", RegistrationType::Warp),
                    ("browser_extension", RegistrationType::BrowserExtension),
                ],
            )?),
            None => None,
        };
        let idle_days = match &raw.idle_days {
            Some(days) => Some(self.number(
                days,
                &key("idle_days"),
                1..=MAX_DAYS,
                " (0 would select every registration)",
            )?),
            None => None,
        };
        let revoked_min_days = match &raw.revoked_min_days {
            Some(days) => Some(self.number(days, &key("revoked_min_days"), 0..=MAX_DAYS, "")?),
            None => None,
        };
        let revoked = raw.revoked.as_ref().is_some_and(|r| *r.get_ref());
        let active_only = raw.active_only.as_ref().is_some_and(|a| *a.get_ref());

        if idle_days.is_none() && !revoked {
            return Err(self.error(
                span,
                format!("[[rule]] #{}", index + 1),
                "this rule selects nothing: set idle_days = <days> and/or revoked = true \
                 (active_only and registration_type only narrow a selection)",
            ));
        }
        if let (Some(days), false) = (&raw.revoked_min_days, revoked) {
            return Err(self.error(
                days.span(),
                key("revoked_min_days"),
                "only applies to revoked registrations; add revoked = true or remove it",
            ));
        }
        if let (Some(a), true) = (&raw.active_only, revoked && active_only) {
            return Err(self.error(
                a.span(),
                key("active_only"),
                "contradicts revoked = true (a registration cannot be both); remove one of them",
            ));
        }
        if revoked && action == Action::Revoke {
            return Err(self.error(
                action_span,
                key("action"),
                "revoking registrations that are already revoked does nothing; use \
                 action = \"delete\" to remove them",
            ));
        }
        Ok(RuleSettings {
            name: name.get_ref().clone(),
            resource,
            action,
            idle_days,
            revoked,
            revoked_min_days,
            active_only,
            registration_type,
        })
    }

    fn exclusion(
        &self,
        index: usize,
        raw: Sp<RawExclude>,
    ) -> Result<ExclusionSettings, ConfigError> {
        let key = |field: &str| entry_key("exclude", index, field);
        let span = raw.span();
        let raw = raw.into_inner();
        let name = match &raw.name {
            Some(name) => self
                .non_empty(name, &key("name"), "a name, or leave name out")?
                .to_owned(),
            None => format!("exclude #{}", index + 1),
        };
        let globs = |patterns: Option<Vec<Sp<String>>>, field: &str| {
            patterns
                .unwrap_or_default()
                .into_iter()
                .map(|p| self.glob(p, &key(field)))
                .collect::<Result<Vec<_>, _>>()
        };
        let user_emails = globs(raw.user_email, "user_email")?;
        let device_names = globs(raw.device_name, "device_name")?;
        let registration_ids = raw
            .registration_id
            .unwrap_or_default()
            .into_iter()
            .map(|id| {
                ResourceId::parse(id.get_ref())
                    .map_err(|m| self.error(id.span(), key("registration_id"), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let no_user = raw.no_user.unwrap_or(false);
        if user_emails.is_empty()
            && device_names.is_empty()
            && registration_ids.is_empty()
            && !no_user
        {
            return Err(self.error(
                span,
                format!("[[exclude]] #{}", index + 1),
                "this exclusion matches nothing; give at least one of user_email = [...], \
                 device_name = [...], registration_id = [...] or no_user = true",
            ));
        }
        Ok(ExclusionSettings {
            name,
            user_emails,
            device_names,
            registration_ids,
            no_user,
        })
    }

    /// A pattern that compiles; the rules module compiles it again, with its matching options.
    fn glob(&self, pattern: Sp<String>, key: &str) -> Result<String, ConfigError> {
        if pattern.get_ref().is_empty() {
            return Err(self.error(
                pattern.span(),
                key,
                "empty pattern; remove it or write e.g. \"*@example.com\"",
            ));
        }
        globset::Glob::new(pattern.get_ref()).map_err(|e| {
            self.error(
                pattern.span(),
                key,
                format!(
                    "invalid glob {:?}: {}; use * for any text, ? for one character, \
                         [abc] for a set, {{a,b}} for alternatives",
                    pattern.get_ref(),
                    e.kind()
                ),
            )
        })?;
        Ok(pattern.into_inner())
    }

    /// [`Validator::number`], or `default` when the key is absent.
    fn number_or<T: TryFrom<i64>>(
        &self,
        value: &Option<Sp<i64>>,
        key: &str,
        range: RangeInclusive<i64>,
        default: T,
        why: &str,
    ) -> Result<T, ConfigError> {
        match value {
            Some(value) => self.number(value, key, range, why),
            None => Ok(default),
        }
    }

    /// A whole number in `range`; `why` is appended to the out-of-range message.
    fn number<T: TryFrom<i64>>(
        &self,
        value: &Sp<i64>,
        key: &str,
        range: RangeInclusive<i64>,
        why: &str,
    ) -> Result<T, ConfigError> {
        let n = *value.get_ref();
        if range.contains(&n) {
            if let Ok(n) = T::try_from(n) {
                return Ok(n);
            }
        }
        let allowed = if *range.end() == i64::MAX {
            format!("a whole number of at least {}", range.start())
        } else {
            format!("a whole number from {} to {}", range.start(), range.end())
        };
        Err(self.error(
            value.span(),
            key,
            format!("{n} is out of range; use {allowed}{why}"),
        ))
    }

    fn one_of<T: Copy>(
        &self,
        value: &Sp<String>,
        key: &str,
        choices: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        self.one_of_with(value, key, choices, "")
    }

    fn one_of_with<T: Copy>(
        &self,
        value: &Sp<String>,
        key: &str,
        choices: &[(&str, T)],
        note: &str,
    ) -> Result<T, ConfigError> {
        if let Some((_, choice)) = choices.iter().find(|(name, _)| name == value.get_ref()) {
            return Ok(*choice);
        }
        let names: Vec<String> = choices
            .iter()
            .map(|(name, _)| format!("{name:?}"))
            .collect();
        let expected = match names.split_last() {
            Some((last, init)) if !init.is_empty() => format!("{} or {last}", init.join(", ")),
            _ => names.concat(),
        };
        Err(self.error(
            value.span(),
            key,
            format!(
                "unknown value {:?}; expected {expected}{note}",
                value.get_ref()
            ),
        ))
    }

    fn non_empty<'v>(
        &self,
        value: &'v Sp<String>,
        key: &str,
        expected: &str,
    ) -> Result<&'v str, ConfigError> {
        if value.get_ref().trim().is_empty() {
            Err(self.error(value.span(), key, format!("is empty; write {expected}")))
        } else {
            Ok(value.get_ref())
        }
    }

    fn env_var_name(&self, name: &Sp<String>, key: &str) -> Result<String, ConfigError> {
        let text = name.get_ref();
        let valid = text
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if valid {
            Ok(text.clone())
        } else {
            // The value is not echoed: a confused user may have pasted the token itself here.
            Err(self.error(
                name.span(),
                key,
                "must be the NAME of an environment variable (letters, digits and _), such as \
                 \"CLOUDFLARE_API_TOKEN\"; the token itself goes in that variable, never in this file",
            ))
        }
    }

    /// An `https://` URL, or `http://` to a loopback host (the fake API), with no credentials,
    /// query or fragment; returned normalised, without a trailing `/`. Messages never echo the
    /// value: it may hold a password.
    fn base_url(&self, url: &Sp<String>, key: &str) -> Result<String, ConfigError> {
        let fail = |message: String| Err(self.error(url.span(), key, message));
        let text = url.get_ref();
        // The URL parser silently drops these, so what is checked would not be what was written.
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return fail("contains whitespace or control characters; remove them".into());
        }
        let parsed = match reqwest::Url::parse(text) {
            Ok(parsed) => parsed,
            Err(e) => {
                return fail(format!(
                    "is not a URL ({e}); write an https:// URL such as the default, \
                     {DEFAULT_BASE_URL:?}"
                ))
            }
        };
        if !matches!(parsed.scheme(), "https" | "http") {
            return fail(format!(
                "is not an http:// or https:// URL (scheme {:?}); the default is \
                 {DEFAULT_BASE_URL:?}",
                parsed.scheme()
            ));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return fail(
                "must not contain a user name or password (user:password@host): the API is \
                 authenticated with the token alone, and HTTP clients would send these instead; \
                 remove them"
                    .into(),
            );
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return fail(
                "must not have a query (?...) or fragment (#...): request paths and parameters \
                 are appended to it; remove everything from the ? or #"
                    .into(),
            );
        }
        if parsed.scheme() == "http" && !parsed.host_str().is_some_and(is_loopback_host) {
            return fail(
                "plain http:// is allowed only to a loopback host (127.0.0.0/8, ::1, localhost), \
                 such as the fake API: anywhere else the token would cross the network \
                 unencrypted; use https://"
                    .into(),
            );
        }
        Ok(parsed.as_str().trim_end_matches('/').to_owned())
    }

    /// Turns an error of the `toml` crate (syntax, wrong type, unknown key) into `Invalid`,
    /// naming the key it is about.
    fn toml_error(&self, error: &toml::de::Error) -> ConfigError {
        let span = error.span().unwrap_or(TOP);
        let message = error.message().trim();
        if let Some(rest) = message.strip_prefix("unknown field ") {
            let names = backticked(rest);
            let (unknown, expected) = names.split_first().map_or(("", &[][..]), |(u, e)| (*u, e));
            let mut segments = key_segments(self.text, span.start).unwrap_or_default();
            segments.push(unknown.to_owned());
            return self.error(
                span,
                render_key(&segments),
                unknown_key_message(unknown, expected),
            );
        }
        if let Some(rest) = message.strip_prefix("invalid type: ") {
            let key = key_segments(self.text, span.start)
                .filter(|segments| !segments.is_empty())
                .map_or_else(
                    || line_key(self.text, span.start),
                    |segments| render_key(&segments),
                );
            return self.error(span, key, wrong_type_message(rest));
        }
        // Syntax errors: the document has no key tree, so name the key from the line itself.
        let key = line_key(self.text, span.start);
        let mut message = message.replace('\n', "; ");
        if message.starts_with("duplicate key") {
            message += "; remove one of them";
        }
        self.error(span, key, message)
    }
}

/// `localhost` or a loopback address, as the URL parser writes hosts (lowercase, IPv6 in
/// brackets). A name that merely resolves to loopback does not count: it could change.
fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn unknown_key_message(unknown: &str, expected: &[&str]) -> String {
    if matches!(unknown, "api_token" | "token" | "api_key" | "apitoken") {
        return "tokens never go in the config file; put the token in a file and set \
                api_token_file = \"<path>\" (with systemd: LoadCredential= and \"%d/<name>\"), \
                or export it in the environment variable named by api_token_env \
                (default CLOUDFLARE_API_TOKEN)"
            .to_owned();
    }
    let mut message = format!("unknown key {unknown:?}");
    if let Some(suggestion) = closest(unknown, expected) {
        message += &format!("; did you mean {suggestion:?}?");
    }
    if expected.is_empty() {
        message += "; remove it";
    } else {
        message += &format!(" (valid keys here: {})", expected.join(", "));
    }
    message
}

/// The expected name a typo most likely meant: within two edits, or one the typo begins.
fn closest<'a>(typo: &str, expected: &[&'a str]) -> Option<&'a str> {
    expected
        .iter()
        .map(|name| (edit_distance(typo, name), *name))
        .filter(|(distance, name)| *distance <= 2 || (typo.len() >= 4 && name.starts_with(typo)))
        .min()
        .map(|(_, name)| name)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// `string "5", expected i64` → a sentence about TOML types, with a fix when it is obvious.
fn wrong_type_message(detail: &str) -> String {
    let (found, expected) = detail.split_once(", expected ").unwrap_or((detail, "?"));
    let expected = match expected {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number",
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        "a string" => "a string in quotes",
        "a sequence" => "an array such as [\"a\", \"b\"]",
        other if other.starts_with("struct ") || other == "a map" => "a table",
        other => other,
    };
    let found = found
        .replacen("floating point", "number", 1)
        .replacen("sequence", "array", 1)
        .replacen("map", "table", 1);
    let hint = match found.strip_prefix("string ") {
        Some(text) if expected.starts_with("an array") => format!("; put it in brackets: [{text}]"),
        Some(_) if !expected.starts_with("a string") && expected != "a table" => {
            "; remove the quotes".to_owned()
        }
        _ => String::new(),
    };
    format!("wrong type: found {found}, expected {expected}{hint}")
}

/// The names between backticks in a serde message, in order.
fn backticked(message: &str) -> Vec<&str> {
    message.split('`').skip(1).step_by(2).collect()
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// For a syntax error: the key written at the start of the error's line, else a generic label.
fn line_key(text: &str, offset: usize) -> String {
    let start = text[..offset.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    match line.split_once('=') {
        Some((key, _)) if !key.trim().is_empty() && !key.trim().starts_with('[') => {
            key.trim().to_owned()
        }
        _ => "TOML syntax".to_owned(),
    }
}

// ---- Naming the key a `toml` error points at. ----
//
// The `toml` crate reports a span but not the key path of a type or unknown-key error. The
// document is parsed a second time into this key tree (which accepts any value) and the span
// is looked up in it.

/// Any TOML value, reduced to its structure and spans.
enum Node {
    Table(Vec<(String, Sp<Node>)>),
    Array(Vec<Sp<Node>>),
    Leaf,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_str<E>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            // A date-time arrives as a one-entry map with a private key and an unspanned
            // value; it is a leaf to us.
            if key.starts_with("$__toml_private") {
                map.next_value::<IgnoredAny>()?;
                return Ok(Node::Leaf);
            }
            entries.push((key, map.next_value()?));
        }
        Ok(Node::Table(entries))
    }
}

/// The path of keys down to the innermost value that contains `offset`, array elements as
/// `#N`; `None` if the document does not parse.
fn key_segments(text: &str, offset: usize) -> Option<Vec<String>> {
    let root = toml::from_str::<Sp<Node>>(text).ok()?;
    let mut segments = Vec::new();
    let mut node = root.get_ref();
    loop {
        let next = match node {
            Node::Table(entries) => entries
                .iter()
                .find(|(_, value)| encloses(text, value.span(), offset))
                .map(|(key, value)| (key.clone(), value)),
            Node::Array(items) => items
                .iter()
                .enumerate()
                .find(|(_, item)| encloses(text, item.span(), offset))
                .map(|(index, item)| (format!("#{}", index + 1), item)),
            Node::Leaf => None,
        };
        let Some((segment, child)) = next else { break };
        segments.push(segment);
        node = child.get_ref();
    }
    Some(segments)
}

/// Whether `offset` is inside the value at `span` but not on the name in that value's own
/// `[table]` header: an unknown-key error points at that name, and the key is the parent's.
fn encloses(text: &str, span: Range<usize>, offset: usize) -> bool {
    let inside = span.contains(&offset) || span.start == offset;
    let on_own_header = text.get(span.start..offset).is_some_and(|between| {
        between.starts_with('[') && between.trim_start_matches(['[', ' ', '\t']).is_empty()
    });
    inside && !on_own_header
}

/// `["rule", "#2", "idle_days"]` → `[[rule]] #2 idle_days`, `["cloudflare", "per_page"]` →
/// `[cloudflare] per_page`; indexes into value arrays are dropped (`user_email`).
fn render_key(segments: &[String]) -> String {
    let Some((first, rest)) = segments.split_first() else {
        return String::new();
    };
    let (head, rest) = match rest.split_first() {
        Some((index, rest)) if index.starts_with('#') => (format!("[[{first}]] {index}"), rest),
        Some(_) => (format!("[{first}]"), rest),
        None => return first.clone(),
    };
    let tail: Vec<&str> = rest
        .iter()
        .filter(|s| !s.starts_with('#'))
        .map(String::as_str)
        .collect();
    if tail.is_empty() {
        head
    } else {
        format!("{head} {}", tail.join("."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CF: &str = "[cloudflare]\naccount_id = \"0123456789abcdef0123456789abcdef\"\n";
    /// `CF` plus one rule: 8 lines, so anything appended starts on line 9.
    const MINIMAL: &str = "[cloudflare]\naccount_id = \"0123456789abcdef0123456789abcdef\"\n\n\
        [[rule]]\nname = \"idle-90d\"\nresource = \"device_registration\"\naction = \"delete\"\n\
        idle_days = 90\n";
    /// A rule header and name, to follow `CF`: lines 3 to 5.
    const RULE: &str = "\n[[rule]]\nname = \"r\"\n";

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new("zt.toml"))
    }

    fn repo_file(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
    }

    #[test]
    fn time_limits_are_bounded_so_no_clock_arithmetic_overflows() {
        let cases = [
            (
                "cycle_deadline_secs = 9223372036854775807",
                23,
                "cycle_deadline_secs",
                "from 1 to 604800",
            ),
            (
                "cycle_deadline_secs = 604801",
                23,
                "cycle_deadline_secs",
                "from 1 to 604800",
            ),
            (
                "request_timeout_secs = 9223372036854775807",
                24,
                "request_timeout_secs",
                "from 1 to 3600",
            ),
        ];
        // Otherwise valid, so the bound is the only thing refused.
        let rest = "resource = \"device_registration\"\naction = \"delete\"\nidle_days = 9\n";
        for (line, col, key, fragment) in cases {
            let message = load(&format!("{CF}{line}\n{RULE}{rest}"))
                .expect_err(line)
                .to_string();
            let place = format!("zt.toml:3:{col}: [cloudflare] {key}: ");
            assert!(
                message.starts_with(&place) && message.contains(fragment),
                "{line}: got {message}"
            );
        }
        let max =
            format!("{CF}cycle_deadline_secs = 604800\nrequest_timeout_secs = 3600\n{RULE}{rest}");
        let config = load(&max).expect("the largest values are accepted");
        assert_eq!(
            config.cloudflare.cycle_deadline(),
            Duration::from_secs(604_800)
        );
    }

    #[test]
    fn bad_configs_are_reported_at_the_right_place_with_a_fix() {
        // (case, file, line, col, key, part of the message)
        let cases: Vec<(&str, String, usize, usize, &str, &str)> = vec![
            ("unknown top-level table", format!("{MINIMAL}[rules]\nx = 1\n"),
                9, 2, "rules", "did you mean \"rule\"?"),
            ("unknown key in [cloudflare]", format!("{CF}per_pag = 10\n{RULE}"),
                3, 1, "[cloudflare] per_pag", "did you mean \"per_page\"?"),
            ("unknown key in a rule", format!("{MINIMAL}idle = 3\n"),
                9, 1, "[[rule]] #1 idle", "did you mean \"idle_days\"?"),
            ("unknown key in an exclusion", format!("{MINIMAL}[[exclude]]\nuser_emails = [\"a@b.c\"]\n"),
                10, 1, "[[exclude]] #1 user_emails", "did you mean \"user_email\"?"),
            ("unknown key in [safety]", format!("{MINIMAL}[safety]\nmax_actions = 5\n"),
                10, 1, "[safety] max_actions", "did you mean \"max_actions_per_run\"?"),
            ("unknown key in [schedule]", format!("{MINIMAL}[schedule]\ncorn = \"x\"\n"),
                10, 1, "[schedule] corn", "did you mean \"cron\"?"),
            ("unknown key in [audit]", format!("{MINIMAL}[audit]\nfile = \"a.db\"\n"),
                10, 1, "[audit] file", "valid keys here: path"),
            ("inline api_token", format!("{CF}api_token = \"sekrit-token-value\"\n{RULE}"),
                3, 1, "[cloudflare] api_token", "tokens never go in the config file"),
            ("inline token", format!("{CF}token = \"sekrit-token-value\"\n{RULE}"),
                3, 1, "[cloudflare] token", "api_token_file"),
            ("string for a number", format!("{CF}per_page = \"1000\"\n{RULE}"),
                3, 12, "[cloudflare] per_page", "expected a whole number; remove the quotes"),
            ("a table name inside a rule", format!("{MINIMAL}safety = 5\n"),
                9, 1, "[[rule]] #1 safety", "unknown key"),
            ("top-level value for a table", format!("safety = 5\n{MINIMAL}"),
                1, 10, "safety", "expected a table"),
            ("mode typo", format!("{MINIMAL}[safety]\nmode = \"aply\"\n"),
                10, 8, "[safety] mode", "unknown value \"aply\"; expected \"plan\" or \"apply\""),
            ("malformed account id", "[cloudflare]\naccount_id = \"0123\"\n".to_owned() + RULE,
                2, 14, "[cloudflare] account_id", "32 lowercase hex characters"),
            ("missing account id", format!("# zt-janitor\n[cloudflare]\nper_page = 10\n{RULE}"),
                2, 1, "[cloudflare] account_id", "missing: add account_id"),
            ("missing [cloudflare]", "[[rule]]\nname = \"r\"\n".to_owned(),
                1, 1, "[cloudflare] account_id", "add a [cloudflare] table"),
            ("duplicate key", format!("{CF}account_id = \"0123456789abcdef0123456789abcdef\"\n"),
                3, 1, "account_id", "duplicate key"),
            ("syntax error", format!("{MINIMAL}[safety\n"),
                9, 8, "TOML syntax", "invalid table header"),
            ("number too large", format!("{CF}per_page = 99999999999999999999\n"),
                3, 12, "per_page", "too large"),
            ("api_token_file and api_token_env", format!("{CF}api_token_file = \"/t\"\napi_token_env = \"T\"\n{RULE}"),
                4, 17, "[cloudflare] api_token_env", "keep only one"),
            ("api_token_env holding a token", format!("{CF}api_token_env = \"abc def\"\n{RULE}"),
                3, 17, "[cloudflare] api_token_env", "NAME of an environment variable"),
            ("base_url not http", format!("{CF}base_url = \"ftp://example.com\"\n{RULE}"),
                3, 12, "[cloudflare] base_url", "not an http:// or https:// URL"),
            ("per_page zero", format!("{CF}per_page = 0\n{RULE}"),
                3, 12, "[cloudflare] per_page", "0 is out of range; use a whole number from 1 to 10000"),
            ("per_page too big", format!("{CF}per_page = 20000\n{RULE}"),
                3, 12, "[cloudflare] per_page", "from 1 to 10000"),
            ("bulk_chunk_size too big", format!("{CF}bulk_chunk_size = 5000\n{RULE}"),
                3, 19, "[cloudflare] bulk_chunk_size", "from 1 to 1000"),
            ("request_timeout_secs zero", format!("{CF}request_timeout_secs = 0\n{RULE}"),
                3, 24, "[cloudflare] request_timeout_secs", "from 1 to 3600"),
            ("max_retries too many", format!("{CF}max_retries = 21\n{RULE}"),
                3, 15, "[cloudflare] max_retries", "from 0 to 20"),
            ("max_actions_per_run zero", format!("{MINIMAL}[safety]\nmax_actions_per_run = 0\n"),
                10, 23, "[safety] max_actions_per_run", "set mode = \"plan\" instead"),
            ("max_fraction_per_run zero", format!("{MINIMAL}[safety]\nmax_fraction_per_run = 0.0\n"),
                10, 24, "[safety] max_fraction_per_run", "greater than 0 and at most 1"),
            ("max_fraction_per_run above one", format!("{MINIMAL}[safety]\nmax_fraction_per_run = 1.5\n"),
                10, 24, "[safety] max_fraction_per_run", "1.5 is out of range"),
            ("negative idle_days", format!("{CF}{RULE}resource = \"device_registration\"\naction = \"delete\"\nidle_days = -5\n"),
                8, 13, "[[rule]] #1 idle_days", "-5 is out of range; use a whole number from 1 to 36500"),
            ("idle_days zero", format!("{CF}{RULE}resource = \"device_registration\"\naction = \"delete\"\nidle_days = 0\n"),
                8, 13, "[[rule]] #1 idle_days", "0 would select every registration"),
            ("fractional idle_days", format!("{CF}{RULE}resource = \"device_registration\"\naction = \"delete\"\nidle_days = 1.5\n"),
                8, 13, "[[rule]] #1 idle_days", "found number `1.5`, expected a whole number"),
            ("rule selecting nothing", format!("{CF}{RULE}resource = \"device_registration\"\naction = \"delete\"\nactive_only = true\n"),
                4, 1, "[[rule]] #1", "set idle_days = <days> and/or revoked = true"),
            ("revoked_min_days without revoked", format!("{CF}{RULE}resource = \"device_registration\"\naction = \"delete\"\nidle_days = 5\nrevoked_min_days = 3\n"),
                9, 20, "[[rule]] #1 revoked_min_days", "add revoked = true"),
            ("revoked and active_only", format!("{CF}{RULE}resource = \"device_registration\"\naction = \"delete\"\nrevoked = true\nactive_only = true\n"),
                9, 15, "[[rule]] #1 active_only", "contradicts revoked = true"),
            ("revoking revoked registrations", format!("{CF}{RULE}resource = \"device_registration\"\naction = \"revoke\"\nrevoked = true\n"),
                7, 10, "[[rule]] #1 action", "use action = \"delete\""),
            ("duplicate rule name", format!("{MINIMAL}\n[[rule]]\nname = \"idle-90d\"\nresource = \"device_registration\"\naction = \"delete\"\nidle_days = 9\n"),
                11, 8, "[[rule]] #2 name", "rule #1 is already named \"idle-90d\""),
            ("empty rule name", format!("{CF}\n[[rule]]\nname = \"\"\nresource = \"device_registration\"\naction = \"delete\"\nidle_days = 9\n"),
                5, 8, "[[rule]] #1 name", "is empty"),
            ("rule without action", format!("{CF}{RULE}resource = \"device_registration\"\nidle_days = 9\n"),
                4, 1, "[[rule]] #1 action", "every rule needs action = \"delete\" or \"revoke\""),
            ("unknown resource", format!("{CF}{RULE}resource = \"service_token\"\naction = \"delete\"\nidle_days = 9\n"),
                6, 12, "[[rule]] #1 resource", "expected \"device_registration\" (service tokens"),
            ("unknown action", format!("{CF}{RULE}resource = \"device_registration\"\naction = \"remove\"\nidle_days = 9\n"),
                7, 10, "[[rule]] #1 action", "expected \"delete\" or \"revoke\""),
            ("unknown registration_type", format!("{CF}{RULE}resource = \"device_registration\"\naction = \"delete\"\nidle_days = 9\nregistration_type = \"mobile\"\n"),
                9, 21, "[[rule]] #1 registration_type", "expected \"warp\" or \"browser_extension\""),
            ("second rule, wrong type", format!("{MINIMAL}\n[[rule]]\nname = 7\n"),
                11, 8, "[[rule]] #2 name", "expected a string in quotes"),
            ("exclusion without criteria", format!("{MINIMAL}[[exclude]]\nname = \"nothing\"\nuser_email = []\n"),
                9, 1, "[[exclude]] #1", "matches nothing"),
            ("bad glob", format!("{MINIMAL}[[exclude]]\nuser_email = [\"ok@example.com\", \"[a-\"]\n"),
                10, 33, "[[exclude]] #1 user_email", "invalid glob \"[a-\""),
            ("glob list given as a string", format!("{MINIMAL}[[exclude]]\ndevice_name = \"kiosk-*\"\n"),
                10, 15, "[[exclude]] #1 device_name", "put it in brackets: [\"kiosk-*\"]"),
            ("bad registration id", format!("{MINIMAL}[[exclude]]\nregistration_id = [\"../etc\"]\n"),
                10, 20, "[[exclude]] #1 registration_id", "is not a registration id"),
            ("listen without an IP", format!("{MINIMAL}[metrics]\nlisten = \"localhost:9847\"\n"),
                10, 10, "[metrics] listen", "host names are not resolved"),
            ("five-field cron", format!("{MINIMAL}[schedule]\ncron = \"0 */6 * * *\"\n"),
                10, 8, "[schedule] cron", "starts with seconds: write \"0 0 */6 * * *\""),
            ("cron with too few fields", format!("{MINIMAL}[schedule]\ncron = \"@daily\"\n"),
                10, 8, "[schedule] cron", "expected 6 (sec min hour"),
            ("cron with a year field", format!("{MINIMAL}[schedule]\ncron = \"0 30 2 * * Mon 2030\"\n"),
                10, 8, "[schedule] cron", "expected 6 (sec min hour"),
            ("cron of words", format!("{MINIMAL}[schedule]\ncron = \"a b c d e f\"\n"),
                10, 8, "[schedule] cron", "is not a schedule the scheduler accepts"),
            ("cron out of range", format!("{MINIMAL}[schedule]\ncron = \"99 99 99 * * *\"\n"),
                10, 8, "[schedule] cron", "is not a schedule the scheduler accepts"),
            ("unknown log format", format!("{MINIMAL}[logging]\nformat = \"yaml\"\n"),
                10, 10, "[logging] format", "expected \"text\" or \"json\""),
            ("unknown log level", format!("{MINIMAL}[logging]\nlevel = \"inof\"\n"),
                10, 9, "[logging] level", "unknown level \"inof\""),
            ("no rules", format!("{CF}[safety]\nmode = \"plan\"\n"),
                1, 1, "[[rule]]", "add at least one [[rule]]"),
        ];
        let mut failures = Vec::new();
        for (case, text, line, col, key, fragment) in &cases {
            let message = match load(text) {
                Ok(_) => {
                    failures.push(format!("{case}: accepted"));
                    continue;
                }
                Err(e) => e.to_string(),
            };
            let place = format!("zt.toml:{line}:{col}: {key}: ");
            if !message.starts_with(&place) || !message.contains(fragment) {
                failures.push(format!(
                    "{case}:\n  got      {message}\n  expected {place}...{fragment}..."
                ));
            }
            assert!(
                !message.contains("sekrit-token-value"),
                "{case}: token echoed: {message}"
            );
        }
        assert!(
            failures.is_empty(),
            "{} of {} cases failed:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn mode_typo_message_is_exact() {
        let e = load(&format!("{MINIMAL}[safety]\nmode = \"aply\"\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "zt.toml:10:8: [safety] mode: unknown value \"aply\"; expected \"plan\" or \"apply\""
        );
        let ConfigError::Invalid { line, col, key, .. } = e else {
            panic!("{e:?}")
        };
        assert_eq!((line, col, key.as_str()), (10, 8, "[safety] mode"));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let e = load(&format!(
            "{MINIMAL}[[exclude]]\ndevice_name = [\"café-*\", \"[\"]\n"
        ))
        .unwrap_err();
        assert!(e.to_string().starts_with("zt.toml:10:26: "), "{e}");
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let e = Config::load(Path::new("/nonexistent/zt-janitor.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "cannot read the config file /nonexistent/zt-janitor.toml"
        );
        let cause = std::error::Error::source(&e).map(ToString::to_string);
        assert!(cause.is_some_and(|c| c.contains("No such file")), "{e:?}");
    }

    #[test]
    fn minimal_config_gets_every_default() {
        let config = load(MINIMAL).unwrap();
        assert_eq!(config.path, Path::new("zt.toml"));
        assert_eq!(
            config.cloudflare,
            CloudflareSettings {
                account_id: AccountId::parse("0123456789abcdef0123456789abcdef").unwrap(),
                api_token_file: None,
                api_token_env: "CLOUDFLARE_API_TOKEN".into(),
                base_url: "https://api.cloudflare.com/client/v4".into(),
                per_page: 1000,
                bulk_chunk_size: 100,
                request_timeout_secs: 30,
                max_retries: 5,
                max_requests_per_cycle: 1000,
                cycle_deadline_secs: 1800,
            }
        );
        assert_eq!(config.cloudflare.request_timeout(), Duration::from_secs(30));
        assert_eq!(
            config.cloudflare.cycle_deadline(),
            Duration::from_secs(1800)
        );
        assert_eq!(
            config.safety,
            SafetySettings {
                mode: Mode::Plan,
                max_actions_per_run: 50,
                max_fraction_per_run: 0.10
            }
        );
        assert_eq!(
            config.audit.path,
            default_audit_path(std::env::var_os("STATE_DIRECTORY"))
        );
        assert_eq!(
            config.schedule,
            ScheduleSettings {
                cron: "0 0 */6 * * *".into(),
                run_on_start: false
            }
        );
        assert_eq!(config.metrics.listen, "127.0.0.1:9847".parse().unwrap());
        assert_eq!(
            config.logging,
            LoggingSettings {
                format: LogFormat::Text,
                level: "info".into()
            }
        );
        assert_eq!(
            config.rules,
            vec![RuleSettings {
                name: "idle-90d".into(),
                resource: Kind::DeviceRegistration,
                action: Action::Delete,
                idle_days: Some(90),
                revoked: false,
                revoked_min_days: None,
                active_only: false,
                registration_type: None,
            }]
        );
        assert!(config.exclusions.is_empty());
    }

    #[test]
    fn audit_path_defaults_to_the_systemd_state_directory() {
        let path = |dir: Option<&str>| default_audit_path(dir.map(OsString::from));
        assert_eq!(path(None), Path::new("/var/lib/zt-janitor/audit.db"));
        assert_eq!(path(Some("")), Path::new("/var/lib/zt-janitor/audit.db"));
        assert_eq!(
            path(Some("/var/lib/zt-janitor")),
            Path::new("/var/lib/zt-janitor/audit.db")
        );
        assert_eq!(
            path(Some("/var/lib/a:/var/lib/b")),
            Path::new("/var/lib/a/audit.db")
        );
    }

    #[test]
    fn base_url_is_https_or_loopback_http_without_credentials_query_or_fragment() {
        // (case, base_url, what is accepted, or part of the error message)
        let cases: &[(&str, &str, Result<&str, &str>)] = &[
            (
                "the default",
                "https://api.cloudflare.com/client/v4",
                Ok("https://api.cloudflare.com/client/v4"),
            ),
            (
                "trailing slash",
                "https://api.cloudflare.com/client/v4/",
                Ok("https://api.cloudflare.com/client/v4"),
            ),
            (
                "normalised case and default port",
                "HTTPS://API.Cloudflare.com:443/client/v4",
                Ok("https://api.cloudflare.com/client/v4"),
            ),
            (
                "https proxy with a port",
                "https://cf-proxy.example.com:8443/cf/client/v4",
                Ok("https://cf-proxy.example.com:8443/cf/client/v4"),
            ),
            (
                "http to 127.0.0.1",
                "http://127.0.0.1:8787/client/v4",
                Ok("http://127.0.0.1:8787/client/v4"),
            ),
            (
                "http to 127.0.0.0/8",
                "http://127.8.9.10/client/v4",
                Ok("http://127.8.9.10/client/v4"),
            ),
            (
                "http to ::1",
                "http://[::1]:8787/client/v4",
                Ok("http://[::1]:8787/client/v4"),
            ),
            (
                "http to localhost",
                "http://LocalHost:8787/client/v4",
                Ok("http://localhost:8787/client/v4"),
            ),
            (
                "user and password",
                "https://admin:secret@api.example.com/client/v4",
                Err("must not contain a user name or password"),
            ),
            (
                "user only",
                "https://admin@api.example.com/client/v4",
                Err("must not contain a user name or password"),
            ),
            (
                "password only",
                "https://:secret@api.example.com/client/v4",
                Err("must not contain a user name or password"),
            ),
            (
                "query",
                "https://api.example.com/client/v4?x=1",
                Err("must not have a query"),
            ),
            (
                "empty query",
                "https://api.example.com/client/v4?",
                Err("must not have a query"),
            ),
            (
                "fragment",
                "https://api.example.com/client/v4#f",
                Err("or fragment"),
            ),
            (
                "query and fragment",
                "http://127.0.0.1/client/v4?x=1#f",
                Err("must not have a query"),
            ),
            (
                "ftp",
                "ftp://example.com",
                Err("not an http:// or https:// URL (scheme \"ftp\")"),
            ),
            (
                "file",
                "file:///etc/passwd",
                Err("not an http:// or https:// URL"),
            ),
            (
                "no scheme",
                "api.cloudflare.com/client/v4",
                Err("is not a URL"),
            ),
            ("no host", "https://", Err("is not a URL")),
            ("empty", "", Err("is not a URL")),
            (
                "inner space",
                "https://api.example.com/client v4",
                Err("whitespace or control"),
            ),
            (
                "inner tab",
                "https://api.exa\tmple.com/client/v4",
                Err("whitespace or control"),
            ),
            (
                "plain http to a remote host",
                "http://api.cloudflare.com/client/v4",
                Err("plain http:// is allowed only to a loopback host"),
            ),
            (
                "plain http to a private address",
                "http://10.0.0.1:8787/client/v4",
                Err("use https://"),
            ),
            (
                "plain http to a localhost look-alike",
                "http://localhost.example.com/client/v4",
                Err("loopback host"),
            ),
            (
                "plain http to a mapped address",
                "http://[::ffff:127.0.0.1]/client/v4",
                Err("loopback host"),
            ),
        ];
        for (case, url, expected) in cases {
            let text = format!("{CF}base_url = \"{url}\"\n{RULE}resource = \"device_registration\"\naction = \"delete\"\nidle_days = 9\n");
            match (load(&text), expected) {
                (Ok(config), Ok(normalised)) => {
                    assert_eq!(&config.cloudflare.base_url, normalised, "{case}");
                }
                (Err(e), Err(part)) => {
                    let message = e.to_string();
                    assert!(
                        message.starts_with("zt.toml:3:12: [cloudflare] base_url: "),
                        "{case}: {message}"
                    );
                    assert!(message.contains(part), "{case}: {message}");
                    for secret in ["secret", "admin"] {
                        assert!(!message.contains(secret), "{case}: {message}");
                    }
                }
                (got, expected) => panic!("{case}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn the_shape_from_the_brief_parses_into_typed_settings() {
        let text = format!(
            "{CF}api_token_file = \"/run/credentials/zt-janitor.service/cloudflare-token\"\n\
             base_url = \"http://127.0.0.1:8787/client/v4/\"\n\
             [safety]\nmode = \"apply\"\nmax_fraction_per_run = 1\n\
             [audit]\npath = \"audit.db\"\n\
             [schedule]\ncron = \"0  30 2 * * Mon\"\nrun_on_start = true\n\
             [metrics]\nlisten = \"[::1]:9000\"\n\
             [logging]\nformat = \"json\"\nlevel = \"info,zt_janitor=debug\"\n\
             [[rule]]\nname = \"idle\"\nresource = \"device_registration\"\naction = \"revoke\"\n\
             idle_days = 30\nregistration_type = \"browser_extension\"\nactive_only = true\n\
             [[rule]]\nname = \"revoked\"\nresource = \"device_registration\"\naction = \"delete\"\n\
             revoked = true\nrevoked_min_days = 0\n\
             [[exclude]]\nuser_email = [\"*@Board.example.com\"]\n\
             [[exclude]]\nname = \"ids\"\nregistration_id = [\"0b9a1c2e-6f0e-4a53-9d0e-5b7a3f1c2d4e\"]\n\
             no_user = true\n"
        );
        let config = load(&text).unwrap();
        let cf = &config.cloudflare;
        assert_eq!(
            cf.api_token_file.as_deref(),
            Some(Path::new(
                "/run/credentials/zt-janitor.service/cloudflare-token"
            ))
        );
        assert_eq!(cf.base_url, "http://127.0.0.1:8787/client/v4");
        assert_eq!(config.safety.mode, Mode::Apply);
        assert_eq!(config.safety.max_fraction_per_run, 1.0);
        assert_eq!(config.audit.path, Path::new("audit.db"));
        assert_eq!(
            config.schedule,
            ScheduleSettings {
                cron: "0 30 2 * * Mon".into(),
                run_on_start: true
            }
        );
        assert_eq!(config.metrics.listen, "[::1]:9000".parse().unwrap());
        assert_eq!(
            config.logging,
            LoggingSettings {
                format: LogFormat::Json,
                level: "info,zt_janitor=debug".into()
            }
        );
        assert_eq!(config.rules[0].action, Action::Revoke);
        assert_eq!(
            config.rules[0].registration_type,
            Some(RegistrationType::BrowserExtension)
        );
        assert!(config.rules[0].active_only);
        assert_eq!(
            (config.rules[1].revoked, config.rules[1].revoked_min_days),
            (true, Some(0))
        );
        assert_eq!(config.exclusions[0].name, "exclude #1");
        assert_eq!(config.exclusions[0].user_emails, ["*@Board.example.com"]);
        assert_eq!(config.exclusions[1].name, "ids");
        assert_eq!(
            config.exclusions[1].registration_ids[0].as_str(),
            "0b9a1c2e-6f0e-4a53-9d0e-5b7a3f1c2d4e"
        );
        assert!(config.exclusions[1].no_user);
    }

    #[test]
    fn example_file_loads_and_shows_the_defaults() {
        let path = repo_file("config/zt-janitor.example.toml");
        let example = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let defaults = load(MINIMAL).unwrap();
        // The one key the example sets away from its default, on purpose.
        assert_eq!(
            example.cloudflare.api_token_file.as_deref(),
            Some(Path::new("%d/cloudflare-token"))
        );
        let cloudflare = CloudflareSettings {
            api_token_file: None,
            ..example.cloudflare.clone()
        };
        assert_eq!(
            cloudflare, defaults.cloudflare,
            "example and defaults differ"
        );
        assert_eq!(example.safety, defaults.safety);
        assert_eq!(example.audit, defaults.audit);
        assert_eq!(example.schedule, defaults.schedule);
        assert_eq!(example.metrics, defaults.metrics);
        assert_eq!(example.logging, defaults.logging);
        assert_eq!(example.rules.len(), 2);
        assert_eq!(example.exclusions.len(), 1);
    }

    #[test]
    fn demo_file_loads_in_apply_mode() {
        let demo = Config::load(&repo_file("config/demo.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            demo.safety,
            SafetySettings {
                mode: Mode::Apply,
                max_actions_per_run: 100_000,
                max_fraction_per_run: 0.5
            }
        );
        assert_eq!(demo.cloudflare.base_url, "http://127.0.0.1:8787/client/v4");
        assert_eq!(demo.audit.path, Path::new("zt-janitor-demo.db"));
        let rules: Vec<_> = demo
            .rules
            .iter()
            .map(|r| (r.idle_days, r.revoked, r.revoked_min_days, r.action))
            .collect();
        assert_eq!(
            rules,
            [
                (Some(90), false, None, Action::Delete),
                (None, true, Some(0), Action::Delete)
            ]
        );
        assert_eq!(demo.exclusions[0].user_emails, ["*@board.example.com"]);
        assert!(demo.exclusions[1].no_user);
    }

    #[test]
    fn describe_lists_every_rule_on_its_own_line() {
        let example = Config::load(&repo_file("config/zt-janitor.example.toml")).unwrap();
        let text = example.describe();
        let lines: Vec<&str> = text.lines().collect();
        for expected in [
            "  idle-90d: delete device_registration idle for at least 90 days, of type warp",
            "  revoked: delete device_registration revoked at least 7 days ago",
            "mode: plan (report what would be done, change nothing)",
            "limits: at most 50 actions and 10% of the registrations listed per run",
            "api token: read from file %d/cloudflare-token",
        ] {
            assert!(lines.contains(&expected), "missing {expected:?} in\n{text}");
        }
        assert!(
            text.contains("executives: user_email matches *@board.example.com | ceo@example.com"),
            "{text}"
        );
    }

    #[test]
    fn percent_is_rounded_for_people() {
        assert_eq!(percent(0.10), "10%");
        assert_eq!(percent(0.125), "12.5%");
        assert_eq!(percent(0.07), "7%");
        assert_eq!(percent(1.0), "100%");
    }
}

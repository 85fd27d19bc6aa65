//! The public settings types, one per table of the file, each documented field by field with
//! its default, and the default values themselves. Only data: validation is in `validate`.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::cloudflare::model::{AccountId, RegistrationType, ZoneId};
use crate::resource::{Kind, ResourceId};

pub(super) const DEFAULT_API_TOKEN_ENV: &str = "CLOUDFLARE_API_TOKEN";
pub(super) const DEFAULT_API_EMAIL_ENV: &str = "CLOUDFLARE_EMAIL";
pub(super) const DEFAULT_API_KEY_ENV: &str = "CLOUDFLARE_API_KEY";
pub(super) const DEFAULT_BASE_URL: &str = "https://api.cloudflare.com/client/v4";
pub(super) const DEFAULT_PER_PAGE: u32 = 1000;
pub(super) const DEFAULT_BULK_CHUNK_SIZE: usize = 100;
pub(super) const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 30;
pub(super) const DEFAULT_MAX_RETRIES: u32 = 5;
pub(super) const DEFAULT_MAX_REQUESTS_PER_CYCLE: u32 = 2500;
pub(super) const DEFAULT_RATE_SHARE: f64 = 0.5;
pub(super) const DEFAULT_CYCLE_DEADLINE_SECS: u64 = 1800;
/// Longest cycle deadline accepted: a week. Far larger values overflow the clock.
pub const MAX_CYCLE_DEADLINE_SECS: u64 = 7 * 24 * 3600;
/// Longest per-request timeout accepted: an hour.
pub const MAX_REQUEST_TIMEOUT_SECS: u64 = 3600;
pub(super) const DEFAULT_MAX_ACTIONS_PER_RUN: u64 = 50;
pub(super) const DEFAULT_MAX_FRACTION_PER_RUN: f64 = 0.10;
const DEFAULT_AUDIT_PATH: &str = "/var/lib/zt-janitor/audit.db";
pub(super) const DEFAULT_RETAIN_DAYS: u32 = 90;
/// Longest retention accepted, in days: a hundred years, as for the rules' day counts.
pub(super) const MAX_RETAIN_DAYS: u32 = 36_500;
pub(super) const DEFAULT_CRON: &str = "0 0 */6 * * *";
pub(super) const DEFAULT_LISTEN: ([u8; 4], u16) = ([127, 0, 0, 1], 9847);
pub(super) const DEFAULT_LOG_LEVEL: &str = "info";

/// `[cloudflare]`
#[derive(Debug, Clone, PartialEq)]
pub struct CloudflareSettings {
    /// `account_id`: 32 lowercase hex characters. Required.
    pub account_id: AccountId,
    /// `auth`: how requests are authenticated, `"api_token"` or `"global_api_key"`.
    /// Default: `"api_token"`. Only the keys of the chosen method may be set.
    pub auth: Auth,
    /// `api_token_file`: file holding the API token. Default: none (use `api_token_env`).
    /// A path starting with `%d/` or `$CREDENTIALS_DIRECTORY/` is in systemd's credentials
    /// directory (`LoadCredential=`); a relative path is relative to the current directory.
    /// The same holds for `api_email_file` and `api_key_file`.
    pub api_token_file: Option<PathBuf>,
    /// `api_token_env`: environment variable holding the token when `api_token_file` is not set.
    /// Default: `CLOUDFLARE_API_TOKEN`.
    pub api_token_env: String,
    /// `api_email_file` (global API key): file holding the Cloudflare user's email.
    /// Default: none (use `api_email_env`).
    pub api_email_file: Option<PathBuf>,
    /// `api_email_env` (global API key): environment variable holding the email when
    /// `api_email_file` is not set. Default: `CLOUDFLARE_EMAIL`.
    pub api_email_env: String,
    /// `api_key_file` (global API key): file holding the global API key. Default: none (use
    /// `api_key_env`).
    pub api_key_file: Option<PathBuf>,
    /// `api_key_env` (global API key): environment variable holding the key when
    /// `api_key_file` is not set. Default: `CLOUDFLARE_API_KEY`.
    pub api_key_env: String,
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
    /// Default: 2500 (at the default pace, 2 calls a second, about 21 minutes: inside the
    /// default deadline; enough to list 2M registrations and act on the default caps).
    pub max_requests_per_cycle: u32,
    /// `cycle_deadline_secs`: a cycle still running after this long is abandoned, 1..=604800.
    /// Default: 1800.
    pub cycle_deadline_secs: u64,
    /// `rate_share`: the share of Cloudflare's rate-limit quota (1200 calls per 5 minutes per
    /// user, shared with the dashboard and other tools) the janitor may spend, greater than 0
    /// and at most 1. Default: 0.5.
    pub rate_share: f64,
    /// `zone_ids`: the zones whose API Shield client certificates rules look at, each 32
    /// lowercase hex characters. Default: none (required by `client_certificate` rules).
    pub zone_ids: Vec<ZoneId>,
}

impl CloudflareSettings {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    pub fn cycle_deadline(&self) -> Duration {
        Duration::from_secs(self.cycle_deadline_secs)
    }
}

/// How the janitor authenticates to the API.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Auth {
    /// `Authorization: Bearer <API token>`: scoped to what the token grants. The default.
    ApiToken,
    /// The legacy `X-Auth-Email` + `X-Auth-Key`: everything the user can do, in every account.
    GlobalApiKey,
}

impl Auth {
    pub fn as_str(self) -> &'static str {
        match self {
            Auth::ApiToken => "api_token",
            Auth::GlobalApiKey => "global_api_key",
        }
    }
}

impl fmt::Display for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
    /// `retain_days`: runs that acted on nothing (no API mutation: plan runs, refused or
    /// aborted runs) are pruned this many days after they finished, 0 to 36500. Default: 90.
    pub retain_days: u32,
    /// `retain_mutations`: runs that acted (their actions and mutations) are pruned this many
    /// days after they finished, 1 to 36500, or `"forever"` (`None`). Default: forever.
    pub retain_mutations: Option<u32>,
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
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "delete" => Some(Action::Delete),
            "revoke" => Some(Action::Revoke),
            _ => None,
        }
    }

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

/// One `[[rule]]`. An object of its `resource` matches when every condition that is set
/// holds. Validation guarantees at least one selecting condition, and that only the keys of
/// its resource are set: `idle_days` or `revoked = true` for device registrations,
/// `expired_days` or `unused_days` for service tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSettings {
    /// `name`: unique, non-empty; recorded in the audit log. Required.
    pub name: String,
    /// `resource`: `"device_registration"`, `"access_service_token"`, `"account_api_token"` or
    /// `"client_certificate"`. Required.
    pub resource: Kind,
    /// `action`: `"delete"` or `"revoke"` (tokens: `"delete"` only; client certificates:
    /// `"revoke"` only). Required.
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
    /// `expired_days` (tokens and certificates): select those whose expiry (`expires_at`,
    /// `expires_on`; for an account token with status `expired` and no `expires_on`, its
    /// `modified_on`) is at least this many days ago, 0..=36500. Default: none.
    pub expired_days: Option<u32>,
    /// `unused_days` (service and account API tokens): select tokens not used for at least this
    /// many days (since `created_at`/`issued_on` when never used), 1..=36500. Default: none.
    pub unused_days: Option<u32>,
    /// `service_token_name` (service tokens) or `account_api_token_name` (account API
    /// tokens): filter, globs matched case-sensitively against the token's name. Default: none
    /// (any name).
    pub names: Option<Vec<String>>,
    /// `disabled_days` (account API tokens): select tokens disabled (`status = "disabled"`)
    /// whose `modified_on` is at least this many days ago, 0..=36500. Default: none.
    pub disabled_days: Option<u32>,
    /// `common_name` (client certificates): filter, globs matched case-sensitively against the
    /// certificate's common name. Default: none (any).
    pub common_names: Option<Vec<String>>,
    /// `certificate_authority` (client certificates): filter, the id or the name of the
    /// certificate's authority. Default: none (any).
    pub certificate_authority: Option<String>,
    /// `grace_days`: act on an object only once this rule (or any rule) has selected it, in
    /// every complete listing, for this many days since it was first marked, 0..=3650.
    /// Default: `[safety] grace_days`, whose default is 0 (act on first sight).
    pub grace_days: u32,
}

impl RuleSettings {
    /// A rule of `resource` named `name` doing `action`, with no condition set yet.
    pub fn new(name: &str, resource: Kind, action: Action) -> Self {
        RuleSettings {
            name: name.to_owned(),
            resource,
            action,
            idle_days: None,
            revoked: false,
            revoked_min_days: None,
            active_only: false,
            registration_type: None,
            expired_days: None,
            unused_days: None,
            names: None,
            disabled_days: None,
            common_names: None,
            certificate_authority: None,
            grace_days: 0,
        }
    }
}

/// One `[[exclude]]`: objects it matches are never touched. It matches when ANY of its
/// criteria matches; each criterion speaks of one kind (`service_token_*` of service tokens,
/// the others of device registrations).
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
    /// `service_token_name`: globs matched case-sensitively against a service token's name.
    /// Default: none.
    pub service_token_names: Vec<String>,
    /// `service_token_id`: exact service token ids. Default: none.
    pub service_token_ids: Vec<ResourceId>,
    /// `account_api_token_name`: globs matched case-sensitively against an account API
    /// token's name. Default: none.
    pub account_api_token_names: Vec<String>,
    /// `account_api_token_id`: exact account API token ids. Default: none.
    pub account_api_token_ids: Vec<ResourceId>,
    /// `common_name`: globs matched case-sensitively against a client certificate's common
    /// name. Default: none.
    pub common_names: Vec<String>,
    /// `client_certificate_id`: exact client certificate ids. Default: none.
    pub client_certificate_ids: Vec<ResourceId>,
}

impl ExclusionSettings {
    /// An exclusion named `name` with no criterion yet.
    pub fn named(name: &str) -> Self {
        ExclusionSettings {
            name: name.to_owned(),
            user_emails: Vec::new(),
            device_names: Vec::new(),
            registration_ids: Vec::new(),
            no_user: false,
            service_token_names: Vec::new(),
            service_token_ids: Vec::new(),
            account_api_token_names: Vec::new(),
            account_api_token_ids: Vec::new(),
            common_names: Vec::new(),
            client_certificate_ids: Vec::new(),
        }
    }
}

pub(super) const DEFAULT_NOTIFY_MAX_ITEMS: usize = 20;
/// Most objects one notification may list: Slack refuses messages of more than 50 blocks
/// and sections of more than 3000 characters.
pub const MAX_NOTIFY_ITEMS: usize = 100;
pub(super) const DEFAULT_NOTIFY_TIMEOUT_SECS: u64 = 10;
pub(super) const DEFAULT_NOTIFY_DEADLINE_SECS: u64 = 60;
/// Longest delivery deadline accepted: an hour. `once` waits for its deliveries that long.
pub const MAX_NOTIFY_DEADLINE_SECS: u64 = 3600;

/// The payload a `[[notify]]` target is sent.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NotifyFormat {
    /// Generic JSON with a `schema_version` (documented in the README).
    Json,
    /// Slack-compatible: `text` (one line) plus `blocks`.
    Slack,
}

impl NotifyFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyFormat::Json => "json",
            NotifyFormat::Slack => "slack",
        }
    }
}

/// When a `[[notify]]` target is sent a run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NotifySend {
    /// Only a run whose level reaches the target's `min_level`.
    Changes,
    /// Every finished run, whatever its level.
    Always,
}

/// How much a run matters to its recipients, least first. A run with none of these is quiet.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyLevel {
    /// Something was done, failed or refused, or the candidates changed since the previous
    /// run of the same mode.
    Actions,
    /// Part of the run was refused (caps) or aborted, or actions failed or were refused by
    /// the API.
    Warnings,
    /// The run failed, or a listing aborted.
    Errors,
}

impl NotifyLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyLevel::Actions => "actions",
            NotifyLevel::Warnings => "warnings",
            NotifyLevel::Errors => "errors",
        }
    }
}

/// Where a webhook URL is read from: never the config file, since it is a secret.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum UrlSource {
    /// `url_file`: a file holding the URL (`%d/` is systemd's credentials directory).
    File(PathBuf),
    /// `url_env`: an environment variable holding the URL.
    Env(String),
}

/// One `[[notify]]`: a webhook told about each finished run.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifySettings {
    /// `name`: unique, non-empty; the audit log and the metric's `target` label. Required.
    pub name: String,
    /// `format`: `"json"` or `"slack"`. Default: `"json"`.
    pub format: NotifyFormat,
    /// `url_file` or `url_env` (exactly one): where the webhook URL is read, at each delivery.
    /// A literal `url` is refused. The URL is `https://`, or `http://` to a loopback host.
    pub url: UrlSource,
    /// `send`: `"changes"` or `"always"`. Default: `"changes"`.
    pub send: NotifySend,
    /// `min_level`: with `send = "changes"`, the least level of run sent: `"actions"`,
    /// `"warnings"` or `"errors"`. Default: `"actions"`.
    pub min_level: NotifyLevel,
    /// `max_items`: most objects listed in one notification, 1..=100; the rest are counted.
    /// Default: 20.
    pub max_items: usize,
    /// `timeout_secs`: timeout of one attempt, 1..=300. Default: 10.
    pub timeout_secs: u64,
    /// `deadline_secs`: all attempts of one delivery end within this, 1..=3600. Default: 60.
    pub deadline_secs: u64,
}

impl NotifySettings {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    pub fn deadline(&self) -> Duration {
        Duration::from_secs(self.deadline_secs)
    }
}

/// `$STATE_DIRECTORY/audit.db`, or the fixed default outside systemd. systemd joins several
/// `StateDirectory=` entries with `:`; the first is ours.
pub(super) fn default_audit_path(state_directory: Option<OsString>) -> PathBuf {
    state_directory
        .and_then(|dirs| std::env::split_paths(&dirs).find(|d| !d.as_os_str().is_empty()))
        .map(|dir| dir.join("audit.db"))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_AUDIT_PATH))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

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
}

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
//!
//! One file per concern: `settings` (the public types and their defaults), `raw` (the file as
//! written), `validate` (raw to settings; `validate::rule` for what each kind's rules may say),
//! `diagnostics` (explaining a bad file) and `describe` (the summary for `check-config`).

mod describe;
mod diagnostics;
mod raw;
mod settings;
mod validate;

use std::path::{Path, PathBuf};

pub use settings::{
    Action, AuditSettings, Auth, CloudflareSettings, ExclusionSettings, LogFormat, LoggingSettings,
    MetricsSettings, Mode, NotifyFormat, NotifyLevel, NotifySend, NotifySettings, RuleSettings,
    SafetySettings, ScheduleSettings, UrlSource, MAX_CYCLE_DEADLINE_SECS, MAX_NOTIFY_DEADLINE_SECS,
    MAX_NOTIFY_ITEMS, MAX_REQUEST_TIMEOUT_SECS,
};
pub(crate) use validate::is_loopback_host;
use validate::Validator;

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
    /// `[[notify]]` tables, in file order. Possibly none.
    pub notify: Vec<NotifySettings>,
    /// What loads but will probably fail or is dangerous, in file order: credentials the
    /// environment did not provide when the file was loaded, caps that no longer protect
    /// against aggressive rules. `check-config` prints them; the daemon logs them at start.
    pub warnings: Vec<Diagnostic>,
}

/// One finding about the file, at its place: an error that stops it loading, or a warning
/// about a setting that loads but is unlikely to work or is dangerous. `line` and `col` are
/// 1-based; `col` counts characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub path: PathBuf,
    pub line: usize,
    pub col: usize,
    /// The key it is about, as `[table] key` or `[[rule]] #2 key`.
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.path.display(),
            self.line,
            self.col,
            self.key,
            self.message
        )
    }
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
    /// Every independent problem found; at least one. Displayed on one line
    /// (log lines and the one-line error of the binary), the first problem first;
    /// `check-config` prints them one per line.
    #[error("{}", one_line(problems))]
    Invalid { problems: Vec<Diagnostic> },
}

impl ConfigError {
    /// The problems found in the file; none when it could not be read.
    pub fn problems(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems } => problems,
        }
    }
}

/// `p1 | p2 | p3 (3 errors; ...)`, or the one problem alone.
fn one_line(problems: &[Diagnostic]) -> String {
    let texts: Vec<String> = problems.iter().map(ToString::to_string).collect();
    match texts.len() {
        0 | 1 => texts.concat(),
        n => format!(
            "{} ({n} errors; `zt-janitor check-config` lists them one per line)",
            texts.join(" | ")
        ),
    }
}

/// "1 error", "3 warnings".
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
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
        Self::from_toml_str_with(text, path, &|name| std::env::var_os(name))
    }

    /// [`Config::from_toml_str`] with the environment passed in (`STATE_DIRECTORY`, the
    /// credentials' variables and `CREDENTIALS_DIRECTORY`, which the warnings look at).
    pub fn from_toml_str_with(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Config, ConfigError> {
        Validator::new(path, text).load(env)
    }
}

#[cfg(test)]
mod fixtures {
    use std::path::{Path, PathBuf};

    use super::{Config, ConfigError};

    pub(super) const CF: &str = "[cloudflare]\naccount_id = \"0123456789abcdef0123456789abcdef\"\n";
    /// `CF` plus one rule: 8 lines, so anything appended starts on line 9.
    pub(super) const MINIMAL: &str =
        "[cloudflare]\naccount_id = \"0123456789abcdef0123456789abcdef\"\n\n\
        [[rule]]\nname = \"idle-90d\"\nresource = \"device_registration\"\naction = \"delete\"\n\
        idle_days = 90\n";
    /// A rule header and name, to follow `CF`: lines 3 to 5.
    pub(super) const RULE: &str = "\n[[rule]]\nname = \"r\"\n";

    pub(super) fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new("zt.toml"))
    }

    pub(super) fn repo_file(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::fixtures::{load, repo_file, CF, MINIMAL, RULE};
    use super::settings::default_audit_path;
    use super::*;
    use crate::cloudflare::model::{AccountId, RegistrationType};
    use crate::resource::Kind;

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
            ("inline api_key", format!("{CF}auth = \"global_api_key\"\napi_key = \"sekrit-token-value\"\n{RULE}"),
                4, 1, "[cloudflare] api_key", "API keys never go in the config file; with auth = \"global_api_key\", put the key in a file and set api_key_file"),
            ("inline api_email", format!("{CF}auth = \"global_api_key\"\napi_email = \"sekrit-token-value\"\n{RULE}"),
                4, 1, "[cloudflare] api_email", "set api_email_file = \"<path>\", or export it in the environment variable named by api_email_env"),
            ("inline auth_key", format!("{CF}auth_key = \"sekrit-token-value\"\n{RULE}"),
                3, 1, "[cloudflare] auth_key", "api_key_env (default CLOUDFLARE_API_KEY)"),
            ("unknown auth", format!("{CF}auth = \"api_key\"\n{RULE}"),
                3, 8, "[cloudflare] auth", "unknown value \"api_key\"; expected \"api_token\" or \"global_api_key\""),
            ("key file with auth = api_token", format!("{CF}api_key_file = \"/k\"\n{RULE}"),
                3, 16, "[cloudflare] api_key_file", "does not apply with auth = \"api_token\", which reads api_token_file or api_token_env; remove it, or set auth = \"global_api_key\""),
            ("email env with auth = api_token", format!("{CF}auth = \"api_token\"\napi_email_env = \"E\"\n{RULE}"),
                4, 17, "[cloudflare] api_email_env", "does not apply with auth = \"api_token\""),
            ("token file with the global key", format!("{CF}auth = \"global_api_key\"\napi_token_file = \"/t\"\n{RULE}"),
                4, 18, "[cloudflare] api_token_file", "which reads api_email_file or api_email_env, and api_key_file or api_key_env; remove it, or remove auth"),
            ("the first misplaced key is named", format!("{CF}auth = \"global_api_key\"\napi_token_env = \"T\"\napi_token_file = \"/t\"\n{RULE}"),
                4, 17, "[cloudflare] api_token_env", "does not apply"),
            ("api_key_file and api_key_env", format!("{CF}auth = \"global_api_key\"\napi_key_env = \"K\"\napi_key_file = \"/k\"\n{RULE}"),
                5, 16, "[cloudflare] api_key_file", "both api_key_file and api_key_env are set, so where the key comes from is ambiguous"),
            ("empty api_email_file", format!("{CF}auth = \"global_api_key\"\napi_email_file = \"\"\n{RULE}"),
                4, 18, "[cloudflare] api_email_file", "is empty; write the path of a file holding the email, e.g. \"%d/cloudflare-email\""),
            ("api_key_env holding a key", format!("{CF}auth = \"global_api_key\"\napi_key_env = \"sekrit-token-value\"\n{RULE}"),
                4, 15, "[cloudflare] api_key_env", "NAME of an environment variable (letters, digits and _), such as \"CLOUDFLARE_API_KEY\"; the key itself"),
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
                6, 12, "[[rule]] #1 resource", "expected \"device_registration\", \"access_service_token\", \"account_api_token\" or \"client_certificate\""),
            ("token key on a registration rule", format!("{CF}{RULE}resource = \"device_registration\"\naction = \"delete\"\nidle_days = 9\nexpired_days = 3\n"),
                9, 16, "[[rule]] #1 expired_days", "does not apply to resource = \"device_registration\"; its rules take name, resource, action, idle_days, revoked, revoked_min_days, active_only, registration_type"),
            ("registration key on a token rule", format!("{CF}{RULE}resource = \"access_service_token\"\naction = \"delete\"\nidle_days = 9\n"),
                8, 13, "[[rule]] #1 idle_days", "does not apply to resource = \"access_service_token\"; its rules take name, resource, action, expired_days, unused_days, service_token_name"),
            ("revoking a token", format!("{CF}{RULE}resource = \"access_service_token\"\naction = \"revoke\"\nexpired_days = 9\n"),
                7, 10, "[[rule]] #1 action", "service tokens can only be deleted"),
            ("token rule selecting nothing", format!("{CF}{RULE}resource = \"access_service_token\"\naction = \"delete\"\nservice_token_name = [\"ci-*\"]\n"),
                4, 1, "[[rule]] #1", "set expired_days = <days> and/or unused_days"),
            ("unused_days zero", format!("{CF}{RULE}resource = \"access_service_token\"\naction = \"delete\"\nunused_days = 0\n"),
                8, 15, "[[rule]] #1 unused_days", "(0 would select every one of the service tokens)"),
            ("empty token name filter", format!("{CF}{RULE}resource = \"access_service_token\"\naction = \"delete\"\nunused_days = 9\nservice_token_name = []\n"),
                9, 22, "[[rule]] #1 service_token_name", "an empty list matches none of the service tokens"),
            ("disabled_days on a service token rule", format!("{CF}{RULE}resource = \"access_service_token\"\naction = \"delete\"\ndisabled_days = 9\n"),
                8, 17, "[[rule]] #1 disabled_days", "its rules take name, resource, action, expired_days, unused_days, service_token_name"),
            ("service token name on an account token rule", format!("{CF}{RULE}resource = \"account_api_token\"\naction = \"delete\"\nservice_token_name = [\"x\"]\n"),
                8, 22, "[[rule]] #1 service_token_name", "its rules take name, resource, action, expired_days, unused_days, disabled_days, account_api_token_name"),
            ("deleting a certificate", format!("[cloudflare]\naccount_id = \"0123456789abcdef0123456789abcdef\"\nzone_ids = [\"fedcba9876543210fedcba9876543210\"]\n{RULE}resource = \"client_certificate\"\naction = \"delete\"\nexpired_days = 9\n"),
                8, 10, "[[rule]] #1 action", "client certificates can only be revoked"),
            ("certificates without zones", format!("{CF}{RULE}resource = \"client_certificate\"\naction = \"revoke\"\nexpired_days = 9\n"),
                6, 12, "[[rule]] #1 resource", "add zone_ids = ["),
            ("a bad zone id", "[cloudflare]\naccount_id = \"0123456789abcdef0123456789abcdef\"\nzone_ids = [\"example.com\"]\n".to_string(),
                3, 13, "[cloudflare] zone_ids", "\"example.com\" is not a Cloudflare zone id"),
            ("a zone listed twice", "[cloudflare]\naccount_id = \"0123456789abcdef0123456789abcdef\"\nzone_ids = [\"fedcba9876543210fedcba9876543210\", \"fedcba9876543210fedcba9876543210\"]\n".to_string(),
                3, 49, "[cloudflare] zone_ids", "is listed twice"),
            ("certificate rule selecting nothing", format!("[cloudflare]\naccount_id = \"0123456789abcdef0123456789abcdef\"\nzone_ids = [\"fedcba9876543210fedcba9876543210\"]\n{RULE}resource = \"client_certificate\"\naction = \"revoke\"\ncommon_name = [\"*\"]\n"),
                5, 1, "[[rule]] #1", "set expired_days = <days>"),
            ("bad service token id", format!("{MINIMAL}[[exclude]]\nservice_token_id = [\"a/b\"]\n"),
                10, 21, "[[exclude]] #1 service_token_id", "\"a/b\" is not a service token id"),
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
            ("negative retain_days", format!("{MINIMAL}[audit]\nretain_days = -1\n"),
                10, 15, "[audit] retain_days", "-1 is out of range; use a whole number from 0 to 36500"),
            ("retain_days as text", format!("{MINIMAL}[audit]\nretain_days = \"90d\"\n"),
                10, 15, "[audit] retain_days", "a whole number"),
            ("retain_mutations of 0 days", format!("{MINIMAL}[audit]\nretain_mutations = 0\n"),
                10, 20, "[audit] retain_mutations", "use a whole number from 1 to 36500 (days a run that acted is kept after it finished), or \"forever\""),
            ("retain_mutations misspelt", format!("{MINIMAL}[audit]\nretain_mutations = \"forevr\"\n"),
                10, 20, "[audit] retain_mutations", "unknown value \"forevr\"; use a whole number of days from 1 to 36500, or \"forever\""),
            ("retain_mutations as a boolean", format!("{MINIMAL}[audit]\nretain_mutations = false\n"),
                10, 20, "[audit] retain_mutations", "is a boolean; use a whole number of days"),
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
    fn retention_reads_days_or_forever() {
        let retention = |lines: &str| {
            let config = load(&format!("{MINIMAL}[audit]\n{lines}")).unwrap();
            (config.audit.retain_days, config.audit.retain_mutations)
        };
        assert_eq!(retention("retain_days = 0\n"), (0, None));
        assert_eq!(
            retention("retain_days = 30\nretain_mutations = 365\n"),
            (30, Some(365))
        );
        assert_eq!(retention("retain_mutations = \"forever\"\n"), (90, None));
        assert_eq!(retention("retain_days = 36500\n"), (36500, None));
    }

    #[test]
    fn mode_typo_message_is_exact() {
        let e = load(&format!("{MINIMAL}[safety]\nmode = \"aply\"\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "zt.toml:10:8: [safety] mode: unknown value \"aply\"; expected \"plan\" or \"apply\""
        );
        let [Diagnostic { line, col, key, .. }] = e.problems() else {
            panic!("{e:?}")
        };
        assert_eq!((*line, *col, key.as_str()), (10, 8, "[safety] mode"));
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
                auth: Auth::ApiToken,
                api_token_file: None,
                api_token_env: "CLOUDFLARE_API_TOKEN".into(),
                api_email_file: None,
                api_email_env: "CLOUDFLARE_EMAIL".into(),
                api_key_file: None,
                api_key_env: "CLOUDFLARE_API_KEY".into(),
                base_url: "https://api.cloudflare.com/client/v4".into(),
                per_page: 1000,
                bulk_chunk_size: 100,
                request_timeout_secs: 30,
                max_retries: 5,
                max_requests_per_cycle: 2500,
                cycle_deadline_secs: 1800,
                rate_share: 0.5,
                zone_ids: Vec::new(),
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
                expired_days: None,
                unused_days: None,
                names: None,
                disabled_days: None,
                common_names: None,
                certificate_authority: None,
                grace_days: 0,
            }]
        );
        assert!(config.exclusions.is_empty());
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
            (config.audit.retain_days, config.audit.retain_mutations),
            (90, None),
            "defaults: 90 days, and runs that acted forever"
        );
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
    fn the_global_key_reads_its_email_and_key_from_files_or_the_environment() {
        let text = format!(
            "{CF}auth = \"global_api_key\"\napi_email_file = \"%d/cloudflare-email\"\n\
             api_key_env = \"ZT_KEY\"\n{RULE}resource = \"device_registration\"\n\
             action = \"delete\"\nidle_days = 9\n"
        );
        let cf = load(&text).unwrap().cloudflare;
        assert_eq!(cf.auth, Auth::GlobalApiKey);
        assert_eq!(
            cf.api_email_file.as_deref(),
            Some(Path::new("%d/cloudflare-email"))
        );
        assert_eq!(cf.api_email_env, "CLOUDFLARE_EMAIL");
        assert_eq!(cf.api_key_file, None);
        assert_eq!(cf.api_key_env, "ZT_KEY");
        assert_eq!(cf.api_token_file, None);
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
            .filter(|r| r.resource == Kind::DeviceRegistration)
            .map(|r| (r.idle_days, r.revoked, r.revoked_min_days, r.action))
            .collect();
        assert_eq!(
            rules,
            [
                (Some(90), false, None, Action::Delete),
                (None, true, Some(0), Action::Delete)
            ]
        );
        let token_rules: Vec<_> = demo
            .rules
            .iter()
            .filter(|r| r.resource == Kind::AccessServiceToken)
            .map(|r| (r.expired_days, r.unused_days, r.action))
            .collect();
        assert_eq!(
            token_rules,
            [
                (Some(30), None, Action::Delete),
                (None, Some(180), Action::Delete)
            ]
        );
        assert_eq!(demo.exclusions[0].user_emails, ["*@board.example.com"]);
        assert!(demo.exclusions[1].no_user);
    }
}

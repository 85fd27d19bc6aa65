//! Raw values to public settings, or every independent problem found, each located at its
//! span. Numbers are read as `i64` and range-checked here, so that `idle_days = -5` is
//! explained in terms of days rather than of `u32`. What a `[[rule]]` or `[[exclude]]` may say
//! is in `rule`; what loads but deserves a warning is in `warn`.
//!
//! A bad value is recorded with [`Validator::note`] and replaced by its default, so that
//! checking goes on and the next bad value is reported too; checks that depend on a value
//! (a rule's kind, say) are skipped when it was bad.

mod notify;
mod rule;
mod warn;

use std::cell::RefCell;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};

use crate::cloudflare::model::{AccountId, ZoneId};

use super::diagnostics::{follows_from, line_col};
use super::raw::{RawCloudflare, RawConfig, RawLogging, RawMetrics, RawSafety, RawSchedule, Sp};
use super::settings::{
    default_audit_path, AuditSettings, Auth, CloudflareSettings, LogFormat, LoggingSettings,
    MetricsSettings, Mode, SafetySettings, ScheduleSettings, DEFAULT_API_EMAIL_ENV,
    DEFAULT_API_KEY_ENV, DEFAULT_API_TOKEN_ENV, DEFAULT_BASE_URL, DEFAULT_BULK_CHUNK_SIZE,
    DEFAULT_CRON, DEFAULT_CYCLE_DEADLINE_SECS, DEFAULT_LISTEN, DEFAULT_LOG_LEVEL,
    DEFAULT_MAX_ACTIONS_PER_RUN, DEFAULT_MAX_FRACTION_PER_RUN, DEFAULT_MAX_REQUESTS_PER_CYCLE,
    DEFAULT_MAX_RETRIES, DEFAULT_PER_PAGE, DEFAULT_RATE_SHARE, DEFAULT_REQUEST_TIMEOUT_SECS,
    DEFAULT_RETAIN_DAYS, MAX_CYCLE_DEADLINE_SECS, MAX_REQUEST_TIMEOUT_SECS, MAX_RETAIN_DAYS,
};
use super::{Config, ConfigError, Diagnostic, RuleSettings};
use rule::MAX_GRACE_DAYS;

/// The environment, as a function from a variable's name to its value (tests pass their own).
pub(super) type Env<'e> = &'e dyn Fn(&str) -> Option<OsString>;

pub(super) struct Validator<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
    /// Every problem found so far, in the order found.
    errors: RefCell<Vec<Diagnostic>>,
    warnings: RefCell<Vec<Diagnostic>>,
}

/// Where something missing is reported when there is no better place: the top of the file.
pub(super) const TOP: Range<usize> = 0..0;

fn table_key(table: &str, field: &str) -> String {
    format!("[{table}] {field}")
}

fn entry_key(array: &str, index: usize, field: &str) -> String {
    format!("[[{array}]] #{} {field}", index + 1)
}

impl<'a> Validator<'a> {
    pub(super) fn new(path: &'a Path, text: &'a str) -> Self {
        Validator {
            path,
            text,
            errors: RefCell::default(),
            warnings: RefCell::default(),
        }
    }

    /// Parses and validates the text: the config, or every problem found.
    pub(super) fn load(&self, env: Env<'_>) -> Result<Config, ConfigError> {
        let parsed = self.parse();
        let shape_errors = self.errors.borrow().len();
        let config = parsed.and_then(|raw| self.config(raw, env));
        let mut errors = self.errors.take();
        // A key with the wrong type or an unknown name was left out to go on checking; what
        // the checks then say about its table (a rule "selects nothing" without its
        // idle_days) is a consequence, not a second problem.
        let shape_keys: Vec<String> = errors[..shape_errors]
            .iter()
            .map(|e| e.key.clone())
            .collect();
        let mut index = 0;
        errors.retain(|e| {
            index += 1;
            index <= shape_errors || !shape_keys.iter().any(|s| follows_from(s, &e.key))
        });
        match config {
            Some(mut config) if errors.is_empty() => {
                config.warnings = self.warnings.take();
                Ok(config)
            }
            // In the order checked (unknown keys and types first, then table by table), so
            // that the first is the one a single-error load used to report.
            _ => Err(ConfigError::Invalid { problems: errors }),
        }
    }

    pub(super) fn error(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Diagnostic {
        let (line, col) = line_col(self.text, span.start);
        Diagnostic {
            path: self.path.to_owned(),
            line,
            col,
            key: key.into(),
            message: message.into(),
        }
    }

    /// Records a problem; checking goes on.
    pub(super) fn report(&self, problem: Diagnostic) {
        self.errors.borrow_mut().push(problem);
    }

    /// The value, or `None` with its problem recorded.
    pub(super) fn note<T>(&self, result: Result<T, Diagnostic>) -> Option<T> {
        result.map_err(|e| self.report(e)).ok()
    }

    /// How many problems have been recorded: a check that depends on earlier values runs
    /// only when none was added since they were read.
    pub(super) fn error_count(&self) -> usize {
        self.errors.borrow().len()
    }

    /// Records a warning at `span`.
    pub(super) fn warn(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        let warning = self.error(span, key, message);
        self.warnings.borrow_mut().push(warning);
    }

    fn config(&self, raw: RawConfig, env: Env<'_>) -> Option<Config> {
        let cloudflare_span = raw.cloudflare.as_ref().map(Sp::span);
        let raw_cloudflare = raw.cloudflare.as_ref().map(|c| c.get_ref());
        let cloudflare = self.cloudflare(raw_cloudflare, cloudflare_span.clone());
        let safety = self.safety(&raw.safety);
        let audit = AuditSettings {
            path: match &raw.audit.path {
                Some(p) => self
                    .note(self.non_empty(
                        p,
                        &table_key("audit", "path"),
                        "a file path such as \"/var/lib/zt-janitor/audit.db\"",
                    ))
                    .map_or_else(|| PathBuf::from("?"), PathBuf::from),
                None => default_audit_path(env("STATE_DIRECTORY")),
            },
            retain_days: self.number_or(
                &raw.audit.retain_days,
                &table_key("audit", "retain_days"),
                0..=i64::from(MAX_RETAIN_DAYS),
                DEFAULT_RETAIN_DAYS,
                " (days a run that acted on nothing is kept after it finished)",
            ),
            retain_mutations: raw
                .audit
                .retain_mutations
                .as_ref()
                .and_then(|value| self.note(self.retain_mutations(value)).flatten()),
        };
        let schedule =
            self.note(self.schedule(&raw.schedule))
                .unwrap_or_else(|| ScheduleSettings {
                    cron: DEFAULT_CRON.to_owned(),
                    run_on_start: false,
                });
        let metrics = self
            .note(self.metrics(&raw.metrics))
            .unwrap_or(MetricsSettings {
                listen: SocketAddr::from(DEFAULT_LISTEN),
            });
        let logging = self.logging(&raw.logging);
        if raw.rule.is_empty() {
            self.report(self.error(
                TOP,
                "[[rule]]",
                "no rules, so there is nothing to do; add at least one [[rule]] table, e.g. \
                 [[rule]] name = \"idle-90d\" resource = \"device_registration\" \
                 action = \"delete\" idle_days = 90",
            ));
        }
        let zones = cloudflare
            .as_ref()
            .map(|c| c.zone_ids.clone())
            .unwrap_or_default();
        let grace_days: u32 = self.number_or(
            &raw.safety.grace_days,
            &table_key("safety", "grace_days"),
            0..=MAX_GRACE_DAYS,
            0,
            " (0 acts on first sight)",
        );
        let mut rules: Vec<RuleSettings> = Vec::with_capacity(raw.rule.len());
        let mut names: Vec<&str> = Vec::with_capacity(raw.rule.len());
        for (index, raw_rule) in raw.rule.iter().enumerate() {
            // Names identify rules in plans and the audit log, so they must be unique.
            if let Some(name) = &raw_rule.get_ref().name {
                if let Some(first) = names.iter().position(|n| n == name.get_ref()) {
                    self.report(self.error(
                        name.span(),
                        entry_key("rule", index, "name"),
                        format!(
                            "rule #{} is already named {:?}; give every rule a unique name",
                            first + 1,
                            name.get_ref()
                        ),
                    ));
                }
                names.push(name.get_ref());
            } else {
                names.push("");
            }
            if let Some(rule) = self.rule(index, raw_rule, &zones, grace_days) {
                rules.push(rule);
            }
        }
        let exclusions = raw
            .exclude
            .iter()
            .enumerate()
            .filter_map(|(index, e)| self.exclusion(index, e))
            .collect();
        let notify = self.notify_targets(&raw.notify);
        let config = Config {
            path: self.path.to_owned(),
            cloudflare: cloudflare?,
            safety,
            audit,
            schedule,
            metrics,
            logging,
            rules,
            exclusions,
            notify,
            warnings: Vec::new(),
        };
        if self.error_count() == 0 {
            let cloudflare_span = cloudflare_span.unwrap_or(TOP);
            self.warnings(&config, &raw, cloudflare_span, env);
        }
        Some(config)
    }

    /// `[cloudflare]`; `None` when there is no account id to build it with (the problems are
    /// recorded).
    fn cloudflare(
        &self,
        raw: Option<&RawCloudflare>,
        span: Option<Range<usize>>,
    ) -> Option<CloudflareSettings> {
        let key = |field: &str| table_key("cloudflare", field);
        let (Some(raw), Some(span)) = (raw, span) else {
            self.report(self.error(
                TOP,
                key("account_id"),
                "missing: add a [cloudflare] table with account_id = \"<32 lowercase hex \
                 characters>\" (the id in the dashboard URL)",
            ));
            return None;
        };
        let account_id = match &raw.account_id {
            Some(id) => self.note(
                AccountId::parse(id.get_ref())
                    .map_err(|m| self.error(id.span(), key("account_id"), m)),
            ),
            None => {
                self.report(self.error(
                    span,
                    key("account_id"),
                    "missing: add account_id = \"<32 lowercase hex characters>\" (the id in the \
                     dashboard URL) to [cloudflare]",
                ));
                None
            }
        };
        let auth = match &raw.auth {
            Some(auth) => self.note(self.one_of_with(
                auth,
                &key("auth"),
                &[
                    ("api_token", Auth::ApiToken),
                    ("global_api_key", Auth::GlobalApiKey),
                ],
                " (\"api_token\", the default, is a scoped API token; \"global_api_key\" is the \
                 legacy API Email + API Key)",
            )),
            None => Some(Auth::ApiToken),
        };
        // Which keys are misplaced depends on auth: unknown when auth is bad.
        if let Some(auth) = auth {
            self.misplaced_credentials(raw, auth);
        }
        let auth = auth.unwrap_or(Auth::ApiToken);
        let (api_token_file, api_token_env) = self.credential_source(raw, &TOKEN);
        let (api_email_file, api_email_env) = self.credential_source(raw, &EMAIL);
        let (api_key_file, api_key_env) = self.credential_source(raw, &KEY);
        let base_url = match &raw.base_url {
            Some(url) => self
                .note(self.base_url(url, &key("base_url")))
                .unwrap_or_default(),
            None => DEFAULT_BASE_URL.to_owned(),
        };
        let mut zone_ids: Vec<ZoneId> = Vec::new();
        for zone in raw.zone_ids.iter().flatten() {
            let Some(id) = self.note(
                ZoneId::parse(zone.get_ref())
                    .map_err(|m| self.error(zone.span(), key("zone_ids"), m)),
            ) else {
                continue;
            };
            if zone_ids.contains(&id) {
                self.report(self.error(
                    zone.span(),
                    key("zone_ids"),
                    format!("zone {id} is listed twice; list each zone once"),
                ));
                continue;
            }
            zone_ids.push(id);
        }
        let per_page = self.number_or(
            &raw.per_page,
            &key("per_page"),
            1..=10_000,
            DEFAULT_PER_PAGE,
            "",
        );
        let bulk_chunk_size = self.number_or(
            &raw.bulk_chunk_size,
            &key("bulk_chunk_size"),
            1..=1000,
            DEFAULT_BULK_CHUNK_SIZE,
            " (100 is safe; Cloudflare documents no maximum)",
        );
        let request_timeout_secs = self.number_or(
            &raw.request_timeout_secs,
            &key("request_timeout_secs"),
            1..=MAX_REQUEST_TIMEOUT_SECS as i64,
            DEFAULT_REQUEST_TIMEOUT_SECS,
            "",
        );
        let max_retries = self.number_or(
            &raw.max_retries,
            &key("max_retries"),
            0..=20,
            DEFAULT_MAX_RETRIES,
            "",
        );
        let max_requests_per_cycle = self.number_or(
            &raw.max_requests_per_cycle,
            &key("max_requests_per_cycle"),
            1..=i64::from(u32::MAX),
            DEFAULT_MAX_REQUESTS_PER_CYCLE,
            " (Cloudflare allows 1200 requests per 5 minutes)",
        );
        let cycle_deadline_secs = self.number_or(
            &raw.cycle_deadline_secs,
            &key("cycle_deadline_secs"),
            1..=MAX_CYCLE_DEADLINE_SECS as i64,
            DEFAULT_CYCLE_DEADLINE_SECS,
            "",
        );
        let rate_share = self.fraction_or(
            &raw.rate_share,
            &key("rate_share"),
            DEFAULT_RATE_SHARE,
            "0.5 leaves half of Cloudflare's quota to people and other tools",
        );
        Some(CloudflareSettings {
            zone_ids,
            account_id: account_id?,
            auth,
            api_token_file,
            api_token_env,
            api_email_file,
            api_email_env,
            api_key_file,
            api_key_env,
            base_url,
            per_page,
            bulk_chunk_size,
            request_timeout_secs,
            max_retries,
            max_requests_per_cycle,
            cycle_deadline_secs,
            rate_share,
        })
    }

    /// Each credential key that `auth` does not read is an error.
    fn misplaced_credentials(&self, raw: &RawCloudflare, auth: Auth) {
        let (used, unused): (&[&Credential], &[&Credential]) = match auth {
            Auth::ApiToken => (&[&TOKEN], &[&EMAIL, &KEY]),
            Auth::GlobalApiKey => (&[&EMAIL, &KEY], &[&TOKEN]),
        };
        let wanted: Vec<String> = used
            .iter()
            .map(|c| format!("{} or {}", c.file, c.env))
            .collect();
        let fix = match auth {
            Auth::ApiToken => "or set auth = \"global_api_key\" to use the global API key",
            Auth::GlobalApiKey => "or remove auth to use an API token",
        };
        let mut misplaced: Vec<(&str, Range<usize>)> = unused
            .iter()
            .flat_map(|c| {
                let [file, env] = (c.fields)(raw);
                [(c.file, file), (c.env, env)]
            })
            .filter_map(|(name, value)| value.as_ref().map(|v| (name, v.span())))
            .collect();
        misplaced.sort_by_key(|(_, span)| span.start);
        for (name, span) in misplaced {
            self.report(self.error(
                span,
                table_key("cloudflare", name),
                format!(
                    "does not apply with auth = \"{auth}\", which reads {}; remove it, {fix}",
                    wanted.join(", and ")
                ),
            ));
        }
    }

    fn safety(&self, raw: &RawSafety) -> SafetySettings {
        let key = |field: &str| table_key("safety", field);
        let mode = match &raw.mode {
            Some(mode) => self
                .note(self.one_of(
                    mode,
                    &key("mode"),
                    &[("plan", Mode::Plan), ("apply", Mode::Apply)],
                ))
                .unwrap_or(Mode::Plan),
            None => Mode::Plan,
        };
        let max_fraction_per_run = self.fraction_or(
            &raw.max_fraction_per_run,
            &key("max_fraction_per_run"),
            DEFAULT_MAX_FRACTION_PER_RUN,
            "0.10 allows acting on at most 10% of the registrations listed",
        );
        SafetySettings {
            mode,
            max_actions_per_run: self.number_or(
                &raw.max_actions_per_run,
                &key("max_actions_per_run"),
                1..=i64::MAX,
                DEFAULT_MAX_ACTIONS_PER_RUN,
                " (to change nothing, set mode = \"plan\" instead)",
            ),
            max_fraction_per_run,
        }
    }

    fn schedule(&self, raw: &RawSchedule) -> Result<ScheduleSettings, Diagnostic> {
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

    fn metrics(&self, raw: &RawMetrics) -> Result<MetricsSettings, Diagnostic> {
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

    fn logging(&self, raw: &RawLogging) -> LoggingSettings {
        let format = match &raw.format {
            Some(f) => self
                .note(self.one_of(
                    f,
                    &table_key("logging", "format"),
                    &[("text", LogFormat::Text), ("json", LogFormat::Json)],
                ))
                .unwrap_or(LogFormat::Text),
            None => LogFormat::Text,
        };
        let level = match &raw.level {
            Some(level) => {
                let text = level.get_ref().trim();
                // A bare word must be a level; anything with `=` or `,` is filter directives,
                // which the logging set-up parses (and a bare word there would be a target).
                let is_directives = text.contains(['=', ',']);
                if !is_directives && text.parse::<tracing::level_filters::LevelFilter>().is_err() {
                    self.report(self.error(
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
        LoggingSettings { format, level }
    }

    /// A pattern that compiles; the rules module compiles it again, with its matching options.
    fn glob(&self, pattern: &Sp<String>, key: &str) -> Result<String, Diagnostic> {
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
        Ok(pattern.get_ref().clone())
    }

    /// A fraction greater than 0 and at most 1, or `default` when absent or bad (recorded).
    fn fraction_or(&self, value: &Option<Sp<f64>>, key: &str, default: f64, example: &str) -> f64 {
        match value {
            Some(f) if !(*f.get_ref() > 0.0 && *f.get_ref() <= 1.0) => {
                self.report(self.error(
                    f.span(),
                    key.to_owned(),
                    format!(
                        "{} is out of range; use a fraction greater than 0 and at most 1 \
                         ({example})",
                        f.get_ref()
                    ),
                ));
                default
            }
            Some(f) => *f.get_ref(),
            None => default,
        }
    }

    /// [`Validator::number`], or `default` when the key is absent or bad (recorded).
    fn number_or<T: TryFrom<i64>>(
        &self,
        value: &Option<Sp<i64>>,
        key: &str,
        range: RangeInclusive<i64>,
        default: T,
        why: &str,
    ) -> T {
        match value {
            Some(value) => self
                .note(self.number(value, key, range, why))
                .unwrap_or(default),
            None => default,
        }
    }

    /// `[audit] retain_mutations`: days, or `"forever"` (`None`).
    fn retain_mutations(&self, value: &Sp<toml::Value>) -> Result<Option<u32>, Diagnostic> {
        let key = table_key("audit", "retain_mutations");
        let expected = format!(
            "use a whole number of days from 1 to {MAX_RETAIN_DAYS}, or \"forever\" (the \
             default: runs that acted are never pruned)"
        );
        match value.get_ref() {
            toml::Value::String(word) if word == "forever" => Ok(None),
            toml::Value::Integer(days) => {
                let days = Sp::new(value.span(), *days);
                self.number(
                    &days,
                    &key,
                    1..=i64::from(MAX_RETAIN_DAYS),
                    " (days a run that acted is kept after it finished), or \"forever\"",
                )
                .map(Some)
            }
            toml::Value::String(word) => Err(self.error(
                value.span(),
                key,
                format!("unknown value {word:?}; {expected}"),
            )),
            other => Err(self.error(
                value.span(),
                key,
                format!(
                    "is {} {}; {expected}",
                    article(other.type_str()),
                    other.type_str()
                ),
            )),
        }
    }

    /// A whole number in `range`; `why` is appended to the out-of-range message.
    fn number<T: TryFrom<i64>>(
        &self,
        value: &Sp<i64>,
        key: &str,
        range: RangeInclusive<i64>,
        why: &str,
    ) -> Result<T, Diagnostic> {
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
    ) -> Result<T, Diagnostic> {
        self.one_of_with(value, key, choices, "")
    }

    fn one_of_with<T: Copy>(
        &self,
        value: &Sp<String>,
        key: &str,
        choices: &[(&str, T)],
        note: &str,
    ) -> Result<T, Diagnostic> {
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
    ) -> Result<&'v str, Diagnostic> {
        if value.get_ref().trim().is_empty() {
            Err(self.error(value.span(), key, format!("is empty; write {expected}")))
        } else {
            Ok(value.get_ref())
        }
    }

    /// Where one credential comes from: its file when set, else its environment variable
    /// (named, or the default). Setting both is ambiguous. Problems are recorded.
    fn credential_source(
        &self,
        raw: &RawCloudflare,
        credential: &Credential,
    ) -> (Option<PathBuf>, String) {
        let key = |field: &str| table_key("cloudflare", field);
        let [file, env] = (credential.fields)(raw);
        if let (Some(file), Some(env)) = (file, env) {
            let (later, name) = if env.span().start > file.span().start {
                (env.span(), credential.env)
            } else {
                (file.span(), credential.file)
            };
            self.report(self.error(
                later,
                key(name),
                format!(
                    "both {} and {} are set, so where the {} comes from is ambiguous; keep only \
                     one of them",
                    credential.file, credential.env, credential.what
                ),
            ));
        }
        let file = file.as_ref().and_then(|file| {
            self.note(self.non_empty(
                file,
                &key(credential.file),
                &format!(
                    "the path of a file holding the {}, e.g. \"%d/{}\" with systemd's \
                     LoadCredential=",
                    credential.what, credential.systemd_name
                ),
            ))
            .map(PathBuf::from)
        });
        let env = env
            .as_ref()
            .and_then(|name| self.note(self.env_var_name(name, &key(credential.env), credential)))
            .unwrap_or_else(|| credential.default_env.to_owned());
        (file, env)
    }

    fn env_var_name(
        &self,
        name: &Sp<String>,
        key: &str,
        credential: &Credential,
    ) -> Result<String, Diagnostic> {
        let text = name.get_ref();
        let valid = text
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if valid {
            Ok(text.clone())
        } else {
            // The value is not echoed: a confused user may have pasted the secret itself here.
            Err(self.error(
                name.span(),
                key,
                format!(
                    "must be the NAME of an environment variable (letters, digits and _), such \
                     as {:?}; the {} itself goes in that variable, never in this file",
                    credential.default_env, credential.what
                ),
            ))
        }
    }

    /// An `https://` URL, or `http://` to a loopback host (the fake API), with no credentials,
    /// query or fragment; returned normalised, without a trailing `/`. Messages never echo the
    /// value: it may hold a password.
    fn base_url(&self, url: &Sp<String>, key: &str) -> Result<String, Diagnostic> {
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
}

/// The `[cloudflare]` keys that say where one credential comes from.
struct Credential {
    file: &'static str,
    env: &'static str,
    default_env: &'static str,
    /// What it is, in messages: "token", "email", "key".
    what: &'static str,
    /// The name the examples give its systemd credential.
    systemd_name: &'static str,
    /// Its `*_file` and `*_env` values as written.
    fields: fn(&RawCloudflare) -> [&Option<Sp<String>>; 2],
}

const TOKEN: Credential = Credential {
    file: "api_token_file",
    env: "api_token_env",
    default_env: DEFAULT_API_TOKEN_ENV,
    what: "token",
    systemd_name: "cloudflare-token",
    fields: |raw| [&raw.api_token_file, &raw.api_token_env],
};

const EMAIL: Credential = Credential {
    file: "api_email_file",
    env: "api_email_env",
    default_env: DEFAULT_API_EMAIL_ENV,
    what: "email",
    systemd_name: "cloudflare-email",
    fields: |raw| [&raw.api_email_file, &raw.api_email_env],
};

const KEY: Credential = Credential {
    file: "api_key_file",
    env: "api_key_env",
    default_env: DEFAULT_API_KEY_ENV,
    what: "key",
    systemd_name: "cloudflare-api-key",
    fields: |raw| [&raw.api_key_file, &raw.api_key_env],
};

/// `localhost` or a loopback address, as the URL parser writes hosts (lowercase, IPv6 in
/// brackets). A name that merely resolves to loopback does not count: it could change.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// "a" or "an" before a TOML type name.
fn article(type_name: &str) -> &'static str {
    if type_name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::fixtures::{load, CF, RULE};

    /// Every independent problem is reported, each at its place; what follows from another
    /// problem is not.
    #[test]
    fn every_independent_problem_is_reported_each_located() {
        let text = "[cloudflare]\n\
            account_id = \"0123\"\n\
            per_pag = 10\n\
            max_retries = \"3\"\n\
            rate_share = 2.0\n\
            [safety]\n\
            mode = \"aply\"\n\
            max_actions_per_run = 0\n\
            [schedule]\n\
            cron = \"0 */6 * * *\"\n\
            [[rule]]\n\
            name = \"idle\"\n\
            resource = \"device_registration\"\n\
            action = \"delete\"\n\
            idle_days = \"9\"\n\
            [[rule]]\n\
            name = \"idle\"\n\
            resource = \"access_service_token\"\n\
            action = \"revoke\"\n\
            idle_days = 5\n\
            unused_days = 0\n\
            [[exclude]]\n\
            user_email = [\"[a-\"]\n\
            registration_id = [\"a/b\"]\n";
        let e = load(text).unwrap_err();
        let got: Vec<(usize, usize, &str)> = e
            .problems()
            .iter()
            .map(|p| (p.line, p.col, p.key.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (3, 1, "[cloudflare] per_pag"),
                (4, 15, "[cloudflare] max_retries"),
                (15, 13, "[[rule]] #1 idle_days"),
                (2, 14, "[cloudflare] account_id"),
                (5, 14, "[cloudflare] rate_share"),
                (7, 8, "[safety] mode"),
                (8, 23, "[safety] max_actions_per_run"),
                (10, 8, "[schedule] cron"),
                (17, 8, "[[rule]] #2 name"),
                (20, 13, "[[rule]] #2 idle_days"),
                (19, 10, "[[rule]] #2 action"),
                (21, 15, "[[rule]] #2 unused_days"),
                (23, 15, "[[exclude]] #1 user_email"),
                (24, 20, "[[exclude]] #1 registration_id"),
            ],
            "{e}"
        );
        // Each keeps its own message; the one-line form lists them all and counts them.
        let line = e.to_string();
        assert!(
            line.starts_with("zt.toml:3:1: [cloudflare] per_pag: unknown key \"per_pag\"; did you mean \"per_page\"?"),
            "{line}"
        );
        assert!(
            line.contains(" | zt.toml:7:8: [safety] mode: unknown value \"aply\""),
            "{line}"
        );
        assert!(
            line.ends_with("(14 errors; `zt-janitor check-config` lists them one per line)"),
            "{line}"
        );
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn a_syntax_error_stops_the_search() {
        let e = load(&format!("{CF}per_pag = 1\n[safety\n{RULE}")).unwrap_err();
        assert_eq!(e.problems().len(), 1, "{e}");
        assert!(e.to_string().contains("invalid table header"), "{e}");
    }

    #[test]
    fn unknown_tables_and_keys_in_inline_tables_are_reported_then_the_search_stops() {
        // Neither can be left out cleanly: the first is reported, and nothing made up after.
        for text in [
            format!("{CF}[rules]\nx = 1\n[safety]\nmode = \"aply\"\n"),
            format!("{CF}{RULE}resource = \"device_registration\"\naction = \"delete\"\nidle_days = 9\n[metrics]\nlisten = {{ a = 1 }}\n"),
        ] {
            let e = load(&text).unwrap_err();
            assert_eq!(e.problems().len(), 1, "{e}");
        }
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
}

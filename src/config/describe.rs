//! `check-config`'s human summary of the effective settings: one line per setting group, one
//! per rule and one per exclusion.

use crate::report::plural;
use crate::resource::{Kind, ResourceId};

use super::{
    Auth, CloudflareSettings, Config, ExclusionSettings, Mode, NotifySend, NotifySettings,
    RuleSettings, UrlSource,
};

impl Config {
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
        ];
        lines.extend(credentials(cf));
        lines.extend([
            format!(
                "api: {} ({} per page, {} per bulk call, {}s timeout, {}, \
                 at most {} and {}s per cycle, at most {}% of Cloudflare's rate-limit \
                 quota)",
                cf.base_url,
                cf.per_page,
                plural(cf.bulk_chunk_size as u64, "id", "ids"),
                cf.request_timeout_secs,
                plural(u64::from(cf.max_retries), "retry", "retries"),
                plural(u64::from(cf.max_requests_per_cycle), "request", "requests"),
                cf.cycle_deadline_secs,
                cf.rate_share * 100.0,
            ),
            self.limits(),
            format!("audit: {}", self.audit.path.display()),
            self.retention(),
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
        ]);
        if !cf.zone_ids.is_empty() {
            let zones: Vec<&str> = cf.zone_ids.iter().map(|z| z.as_str()).collect();
            lines.push(format!("zones: {}", zones.join(", ")));
        }
        lines.push(format!(
            "rules ({}), each resource kind listed, planned and capped on its own:",
            self.rules.len()
        ));
        for kind in Kind::ALL {
            let rules: Vec<&RuleSettings> =
                self.rules.iter().filter(|r| r.resource == kind).collect();
            if rules.is_empty() {
                continue;
            }
            let plural = |n: usize, noun: &str| match n {
                1 => format!("1 {noun}"),
                n => format!("{n} {noun}s"),
            };
            let zones = if kind.zoned() {
                format!(", in each of {}", plural(cf.zone_ids.len(), "zone"))
            } else {
                String::new()
            };
            lines.push(format!(
                " {kind} ({}{zones}; the first that matches applies):",
                plural(rules.len(), "rule")
            ));
            lines.extend(
                rules
                    .iter()
                    .map(|rule| format!("  {}", describe_rule(rule))),
            );
        }
        lines.push(format!("exclusions ({}):", self.exclusions.len()));
        lines.extend(
            self.exclusions
                .iter()
                .map(|e| format!("  {}", describe_exclusion(e))),
        );
        if !self.notify.is_empty() {
            lines.push(format!("notify ({}):", self.notify.len()));
            lines.extend(
                self.notify
                    .iter()
                    .map(|n| format!("  {}", describe_notify(n))),
            );
        }
        lines.join("\n") + "\n"
    }
}

impl Config {
    /// The caps, which apply to each kind on its own.
    fn retention(&self) -> String {
        let acted = match self.audit.retain_mutations {
            Some(days) => format!(
                "{} after they finished",
                plural(u64::from(days), "day", "days")
            ),
            None => "forever".to_owned(),
        };
        format!(
            "audit retention: runs that acted on nothing kept {} after they finished, runs \
             that acted {acted}; pruned at the start of each cycle",
            plural(u64::from(self.audit.retain_days), "day", "days"),
        )
    }

    fn limits(&self) -> String {
        let mut kinds: Vec<Kind> = self.rules.iter().map(|r| r.resource).collect();
        kinds.dedup();
        let (actions, fraction) = (
            self.safety.max_actions_per_run,
            percent(self.safety.max_fraction_per_run),
        );
        let actions = plural(actions, "action", "actions");
        match kinds.as_slice() {
            [one] => format!(
                "limits: at most {actions} and {fraction} of the {} listed per run",
                one.noun().1
            ),
            _ => format!(
                "limits, for each resource kind on its own: at most {actions} and \
                 {fraction} of that kind's objects listed per run"
            ),
        }
    }
}

/// How requests are authenticated, and where each credential is read from (never its value).
fn credentials(cf: &CloudflareSettings) -> Vec<String> {
    let source = |what: &str, file: &Option<std::path::PathBuf>, env: &str| match file {
        Some(file) => format!("{what}: read from file {}", file.display()),
        None => format!("{what}: read from environment variable {env}"),
    };
    match cf.auth {
        Auth::ApiToken => vec![
            "auth: api_token (Authorization: Bearer)".to_owned(),
            source("api token", &cf.api_token_file, &cf.api_token_env),
        ],
        Auth::GlobalApiKey => vec![
            "auth: global_api_key (X-Auth-Email + X-Auth-Key; a scoped API token is safer, and \
             account_api_token rules are refused)"
                .to_owned(),
            source("api email", &cf.api_email_file, &cf.api_email_env),
            source("api key", &cf.api_key_file, &cf.api_key_env),
        ],
    }
}

impl RuleSettings {
    /// The rule on one line, as `check-config` shows it: name, action, kind and conditions.
    pub fn describe(&self) -> String {
        describe_rule(self)
    }
}

fn describe_rule(rule: &RuleSettings) -> String {
    let mut conditions = Vec::new();
    if let Some(days) = rule.expired_days {
        conditions.push(format!("expired at least {} ago", days_text(days)));
    }
    if let Some(days) = rule.unused_days {
        conditions.push(format!("unused for at least {}", days_text(days)));
    }
    if let Some(days) = rule.disabled_days {
        conditions.push(format!(
            "disabled and modified at least {} ago",
            days_text(days)
        ));
    }
    if let Some(names) = &rule.names {
        conditions.push(format!("named {}", names.join(" | ")));
    }
    if let Some(names) = &rule.common_names {
        conditions.push(format!("with common name {}", names.join(" | ")));
    }
    if let Some(ca) = &rule.certificate_authority {
        conditions.push(format!("issued by {ca}"));
    }
    if let Some(days) = rule.idle_days {
        conditions.push(format!("idle for at least {}", days_text(days)));
    }
    if rule.revoked {
        conditions.push(match rule.revoked_min_days {
            Some(days) => format!("revoked at least {} ago", days_text(days)),
            None => "revoked".to_owned(),
        });
    }
    if rule.active_only {
        conditions.push("not revoked".to_owned());
    }
    if let Some(kind) = rule.registration_type {
        conditions.push(format!("of type {kind}"));
    }
    let grace = match rule.grace_days {
        0 => String::new(),
        1 => "; after 1 day of grace".to_owned(),
        days => format!("; after {days} days of grace"),
    };
    format!(
        "{}: {} {} {}{grace}",
        rule.name,
        rule.action,
        rule.resource,
        conditions.join(", ")
    )
}

/// "1 day", "7 days".
fn days_text(days: u32) -> String {
    plural(u64::from(days), "day", "days")
}

/// One target: where its URL is read (never the URL), what and when it is sent.
fn describe_notify(n: &NotifySettings) -> String {
    let url = match &n.url {
        UrlSource::File(path) => format!("URL read from file {}", path.display()),
        UrlSource::Env(name) => format!("URL read from ${name}"),
    };
    let when = match n.send {
        NotifySend::Always => "every run".to_owned(),
        NotifySend::Changes => format!("runs at level {} or above", n.min_level.as_str()),
    };
    format!(
        "{}: {} webhook, {url}; {when}; at most {} objects listed; {}s per attempt, {}s in all",
        n.name,
        n.format.as_str(),
        n.max_items,
        n.timeout_secs,
        n.deadline_secs
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
    if !exclusion.service_token_names.is_empty() {
        criteria.push(format!(
            "service_token_name matches {}",
            exclusion.service_token_names.join(" | ")
        ));
    }
    if !exclusion.service_token_ids.is_empty() {
        let ids: Vec<&str> = exclusion
            .service_token_ids
            .iter()
            .map(ResourceId::as_str)
            .collect();
        criteria.push(format!("service_token_id is {}", ids.join(" | ")));
    }
    let globs = |key: &str, globs: &[String]| format!("{key} matches {}", globs.join(" | "));
    let ids = |key: &str, ids: &[ResourceId]| {
        let ids: Vec<&str> = ids.iter().map(ResourceId::as_str).collect();
        format!("{key} is {}", ids.join(" | "))
    };
    if !exclusion.account_api_token_names.is_empty() {
        criteria.push(globs(
            "account_api_token_name",
            &exclusion.account_api_token_names,
        ));
    }
    if !exclusion.account_api_token_ids.is_empty() {
        criteria.push(ids(
            "account_api_token_id",
            &exclusion.account_api_token_ids,
        ));
    }
    if !exclusion.common_names.is_empty() {
        criteria.push(globs("common_name", &exclusion.common_names));
    }
    if !exclusion.client_certificate_ids.is_empty() {
        criteria.push(ids(
            "client_certificate_id",
            &exclusion.client_certificate_ids,
        ));
    }
    format!("{}: {}", exclusion.name, criteria.join(", or "))
}

/// `0.1` → `"10%"`, `0.125` → `"12.5%"`.
fn percent(fraction: f64) -> String {
    format!("{}%", (fraction * 10_000.0).round() / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixtures::repo_file;

    #[test]
    fn describe_lists_every_rule_on_its_own_line() {
        let example = Config::load(&repo_file("config/zt-janitor.example.toml")).unwrap();
        let text = example.describe();
        let lines: Vec<&str> = text.lines().collect();
        for expected in [
            "  idle-60d-revoke: revoke device_registration idle for at least 60 days, of type warp",
            "  revoked-30d-delete: delete device_registration revoked at least 30 days ago",
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
    fn describe_says_how_long_the_audit_log_keeps_runs() {
        let describe = |audit: &str| {
            let text = format!(
                "[cloudflare]\naccount_id = \"0123456789abcdef0123456789abcdef\"\n\
                 [audit]\n{audit}\n\
                 [[rule]]\nname = \"r\"\nresource = \"device_registration\"\n\
                 action = \"delete\"\nidle_days = 90\n"
            );
            Config::from_toml_str(&text, std::path::Path::new("zt.toml"))
                .unwrap()
                .describe()
        };
        assert!(describe("").contains(
            "audit retention: runs that acted on nothing kept 90 days after they finished, runs \
             that acted forever; pruned at the start of each cycle"
        ));
        assert!(
            describe("retain_days = 1\nretain_mutations = 365").contains(
                "runs that acted on nothing kept 1 day after they finished, runs that acted 365 \
             days after they finished;"
            )
        );
    }

    #[test]
    fn one_day_is_singular() {
        // (settings, expected line)
        let rule = |extra: &str| {
            let text = format!(
                "[cloudflare]\naccount_id = \"0123456789abcdef0123456789abcdef\"\n\
                 [[rule]]\nname = \"r\"\nresource = \"device_registration\"\n\
                 action = \"delete\"\n{extra}\n"
            );
            let config = Config::from_toml_str(&text, std::path::Path::new("zt.toml")).unwrap();
            config.rules[0].describe()
        };
        let cases = [
            (
                "idle_days = 1",
                "r: delete device_registration idle for at least 1 day",
            ),
            (
                "idle_days = 2",
                "r: delete device_registration idle for at least 2 days",
            ),
            (
                "revoked = true\nrevoked_min_days = 1",
                "r: delete device_registration revoked at least 1 day ago",
            ),
        ];
        for (extra, expected) in cases {
            assert_eq!(rule(extra), expected, "{extra}");
        }
    }

    #[test]
    fn describe_shows_service_token_rules_and_exclusions() {
        let demo = Config::load(&repo_file("config/demo.toml")).unwrap();
        let text = demo.describe();
        for expected in [
            "  token-expired-30d: delete access_service_token expired at least 30 days ago",
            "  token-unused-180d: delete access_service_token unused for at least 180 days",
            "  break-glass: service_token_name matches break-glass-*",
            "limits, for each resource kind on its own: at most 100000 actions and 50% of that kind's objects listed per run",
        ] {
            assert!(text.lines().any(|l| l == expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn describe_names_the_auth_method_and_where_each_credential_comes_from() {
        let text = Config::from_toml_str(
            "[cloudflare]\naccount_id = \"0123456789abcdef0123456789abcdef\"\n\
             auth = \"global_api_key\"\napi_key_file = \"%d/cloudflare-api-key\"\n\
             [[rule]]\nname = \"r\"\nresource = \"device_registration\"\naction = \"delete\"\n\
             idle_days = 9\n",
            std::path::Path::new("zt.toml"),
        )
        .unwrap()
        .describe();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[3].starts_with("auth: global_api_key (X-Auth-Email + X-Auth-Key;"),
            "{text}"
        );
        assert_eq!(
            lines[4],
            "api email: read from environment variable CLOUDFLARE_EMAIL"
        );
        assert_eq!(lines[5], "api key: read from file %d/cloudflare-api-key");
        assert!(!text.contains("api token"), "{text}");

        let example = Config::load(&repo_file("config/zt-janitor.example.toml")).unwrap();
        let text = example.describe();
        assert!(
            text.lines()
                .any(|l| l == "auth: api_token (Authorization: Bearer)"),
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

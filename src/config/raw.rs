//! The file as written: serde fills these structs, which reject unknown keys and keep the span
//! of every value so that `validate` and `diagnostics` can point at it.

use serde::Deserialize;
use serde_spanned::Spanned;

pub(super) type Sp<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) cloudflare: Option<Sp<RawCloudflare>>,
    #[serde(default)]
    pub(super) safety: RawSafety,
    #[serde(default)]
    pub(super) audit: RawAudit,
    #[serde(default)]
    pub(super) schedule: RawSchedule,
    #[serde(default)]
    pub(super) metrics: RawMetrics,
    #[serde(default)]
    pub(super) logging: RawLogging,
    #[serde(default)]
    pub(super) rule: Vec<Sp<RawRule>>,
    #[serde(default)]
    pub(super) exclude: Vec<Sp<RawExclude>>,
    #[serde(default)]
    pub(super) notify: Vec<Sp<RawNotify>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCloudflare {
    pub(super) account_id: Option<Sp<String>>,
    pub(super) auth: Option<Sp<String>>,
    pub(super) api_token_file: Option<Sp<String>>,
    pub(super) api_token_env: Option<Sp<String>>,
    pub(super) api_email_file: Option<Sp<String>>,
    pub(super) api_email_env: Option<Sp<String>>,
    pub(super) api_key_file: Option<Sp<String>>,
    pub(super) api_key_env: Option<Sp<String>>,
    pub(super) base_url: Option<Sp<String>>,
    pub(super) per_page: Option<Sp<i64>>,
    pub(super) bulk_chunk_size: Option<Sp<i64>>,
    pub(super) request_timeout_secs: Option<Sp<i64>>,
    pub(super) max_retries: Option<Sp<i64>>,
    pub(super) max_requests_per_cycle: Option<Sp<i64>>,
    pub(super) cycle_deadline_secs: Option<Sp<i64>>,
    pub(super) rate_share: Option<Sp<f64>>,
    pub(super) zone_ids: Option<Vec<Sp<String>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSafety {
    pub(super) mode: Option<Sp<String>>,
    pub(super) max_actions_per_run: Option<Sp<i64>>,
    pub(super) max_fraction_per_run: Option<Sp<f64>>,
    pub(super) grace_days: Option<Sp<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    pub(super) path: Option<Sp<String>>,
    pub(super) retain_days: Option<Sp<i64>>,
    /// A number of days or "forever": read as any value, judged in `validate`.
    pub(super) retain_mutations: Option<Sp<toml::Value>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSchedule {
    pub(super) cron: Option<Sp<String>>,
    pub(super) run_on_start: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) listen: Option<Sp<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLogging {
    pub(super) format: Option<Sp<String>>,
    pub(super) level: Option<Sp<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub(super) name: Option<Sp<String>>,
    pub(super) resource: Option<Sp<String>>,
    pub(super) action: Option<Sp<String>>,
    pub(super) idle_days: Option<Sp<i64>>,
    pub(super) revoked: Option<Sp<bool>>,
    pub(super) revoked_min_days: Option<Sp<i64>>,
    pub(super) active_only: Option<Sp<bool>>,
    pub(super) registration_type: Option<Sp<String>>,
    pub(super) expired_days: Option<Sp<i64>>,
    pub(super) unused_days: Option<Sp<i64>>,
    pub(super) service_token_name: Option<Sp<Vec<Sp<String>>>>,
    pub(super) disabled_days: Option<Sp<i64>>,
    pub(super) account_api_token_name: Option<Sp<Vec<Sp<String>>>>,
    pub(super) common_name: Option<Sp<Vec<Sp<String>>>>,
    pub(super) certificate_authority: Option<Sp<String>>,
    pub(super) grace_days: Option<Sp<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExclude {
    pub(super) name: Option<Sp<String>>,
    pub(super) user_email: Option<Vec<Sp<String>>>,
    pub(super) device_name: Option<Vec<Sp<String>>>,
    pub(super) registration_id: Option<Vec<Sp<String>>>,
    pub(super) no_user: Option<bool>,
    pub(super) service_token_name: Option<Vec<Sp<String>>>,
    pub(super) service_token_id: Option<Vec<Sp<String>>>,
    pub(super) account_api_token_name: Option<Vec<Sp<String>>>,
    pub(super) account_api_token_id: Option<Vec<Sp<String>>>,
    pub(super) common_name: Option<Vec<Sp<String>>>,
    pub(super) client_certificate_id: Option<Vec<Sp<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    pub(super) name: Option<Sp<String>>,
    pub(super) format: Option<Sp<String>>,
    /// Read only to say, at its place, that it may not be there: any value is accepted and
    /// dropped unread, so that no message can echo the secret.
    pub(super) url: Option<Sp<serde::de::IgnoredAny>>,
    pub(super) url_file: Option<Sp<String>>,
    pub(super) url_env: Option<Sp<String>>,
    pub(super) send: Option<Sp<String>>,
    pub(super) min_level: Option<Sp<String>>,
    pub(super) max_items: Option<Sp<i64>>,
    pub(super) timeout_secs: Option<Sp<i64>>,
    pub(super) deadline_secs: Option<Sp<i64>>,
}

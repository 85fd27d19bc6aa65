//! Prometheus metrics: one registry per process, with typed handles for every metric the
//! daemon exports. Owns metric names and labels; rendering over HTTP lives in `http`.

use chrono::{DateTime, Utc};
use prometheus::{
    Counter, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::audit::{ActionStatus, LastRuns, RunOutcome};
use crate::rules::RuleSet;

/// The `outcome` values of `zt_janitor_actions_total`.
const ACTION_OUTCOMES: [ActionStatus; 6] = [
    ActionStatus::Done,
    ActionStatus::AlreadyGone,
    ActionStatus::Failed,
    ActionStatus::Unconfirmed,
    ActionStatus::Stuck,
    ActionStatus::RefusedByApi,
];

/// Fire times read to find the schedule's period: enough to see a week of a daily cron.
const SCHEDULE_SAMPLE: usize = 16;

/// Cheap to clone: every handle is an `Arc` inside.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub resources_seen: IntGaugeVec,
    pub candidates: IntGaugeVec,
    pub excluded: IntGaugeVec,
    pub anomalies: IntCounterVec,
    pub actions: IntCounterVec,
    pub runs: IntCounterVec,
    pub run_duration: Histogram,
    pub last_run_timestamp: IntGauge,
    pub last_success_timestamp: IntGauge,
    pub last_run_outcome: IntGaugeVec,
    pub next_run_timestamp: IntGauge,
    pub schedule_period: IntGauge,
    pub api_requests: IntCounterVec,
    pub api_latency: HistogramVec,
    pub api_retries: IntCounterVec,
    pub rate_limited: IntCounter,
    pub quota_wait_seconds: Counter,
    pub quota_remaining: IntGauge,
    pub skipped_ticks: IntCounter,
    pub notifications: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub stuck_resources: IntGaugeVec,
    pub audit_writable: IntGauge,
    pub audit_write_errors: IntCounter,
    pub cycles_not_started: IntCounterVec,
    pub marked: IntGaugeVec,
    pub marks_set: IntCounterVec,
    pub marks_cleared: IntCounterVec,
    pub audit_db_bytes: IntGauge,
    pub audit_pruned_rows: IntCounterVec,
    pub audit_prune_failures: IntCounter,
    pub audit_chain_head: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let m = Metrics {
            resources_seen: IntGaugeVec::new(
                Opts::new(
                    "zt_janitor_resources_seen",
                    "Objects listed in the last complete cycle, by resource kind and status.",
                ),
                &["resource", "status"],
            )
            .expect("valid metric"),
            candidates: IntGaugeVec::new(
                Opts::new(
                    "zt_janitor_candidates",
                    "Objects selected for action in the last complete cycle, by resource kind \
                     and rule.",
                ),
                &["resource", "rule"],
            )
            .expect("valid metric"),
            excluded: IntGaugeVec::new(
                Opts::new(
                    "zt_janitor_excluded",
                    "Objects a rule selected but an exclusion protected, last complete cycle, by \
                     resource kind.",
                ),
                &["resource"],
            )
            .expect("valid metric"),
            anomalies: IntCounterVec::new(
                Opts::new(
                    "zt_janitor_anomalies_total",
                    "Objects with data zt-janitor refused to trust (no rule acts on them), by \
                     resource kind and kind of anomaly.",
                ),
                &["resource", "kind"],
            )
            .expect("valid metric"),
            actions: IntCounterVec::new(
                Opts::new(
                    "zt_janitor_actions_total",
                    "Actions attempted, by resource kind, rule, action and outcome.",
                ),
                &["resource", "rule", "action", "outcome"],
            )
            .expect("valid metric"),
            runs: IntCounterVec::new(
                Opts::new("zt_janitor_runs_total", "Cycles run, by outcome."),
                &["outcome"],
            )
            .expect("valid metric"),
            run_duration: Histogram::with_opts(
                HistogramOpts::new("zt_janitor_run_duration_seconds", "Wall time of one cycle.")
                    .buckets(vec![
                        0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
                    ]),
            )
            .expect("valid metric"),
            last_run_timestamp: IntGauge::new(
                "zt_janitor_last_run_timestamp_seconds",
                "Unix time the last cycle finished, whatever its outcome.",
            )
            .expect("valid metric"),
            last_success_timestamp: IntGauge::new(
                "zt_janitor_last_success_timestamp_seconds",
                "Unix time the last cycle finished as applied or planned.",
            )
            .expect("valid metric"),
            last_run_outcome: IntGaugeVec::new(
                Opts::new(
                    "zt_janitor_last_run_outcome",
                    "1 for the outcome of the last finished run, 0 for the others; all 0 \
                     before any run (restored from the audit log at start).",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            next_run_timestamp: IntGauge::new(
                "zt_janitor_next_run_timestamp_seconds",
                "Unix time the schedule fires next; 0 when it never fires. Set when the \
                 schedule is loaded and at each tick, so a value in the past means the \
                 scheduler stopped firing.",
            )
            .expect("valid metric"),
            schedule_period: IntGauge::new(
                "zt_janitor_schedule_period_seconds",
                "The longest gap between two of the schedule's next fire times: what the \
                 alerts measure staleness in; 0 when it fires less than twice.",
            )
            .expect("valid metric"),
            api_requests: IntCounterVec::new(
                Opts::new(
                    "zt_janitor_cloudflare_requests_total",
                    "Requests sent to the Cloudflare API, by endpoint and status class.",
                ),
                &["endpoint", "status_class"],
            )
            .expect("valid metric"),
            api_latency: HistogramVec::new(
                HistogramOpts::new(
                    "zt_janitor_cloudflare_request_duration_seconds",
                    "Latency of Cloudflare API requests, by endpoint.",
                )
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
                &["endpoint"],
            )
            .expect("valid metric"),
            api_retries: IntCounterVec::new(
                Opts::new(
                    "zt_janitor_cloudflare_retries_total",
                    "Cloudflare API requests retried after a 429, 5xx or network error.",
                ),
                &["endpoint"],
            )
            .expect("valid metric"),
            rate_limited: IntCounter::new(
                "zt_janitor_cloudflare_rate_limited_total",
                "Cloudflare API answers 429 (rate limited): the pacing should keep this at 0.",
            )
            .expect("valid metric"),
            quota_wait_seconds: Counter::new(
                "zt_janitor_cloudflare_quota_wait_seconds_total",
                "Time spent waiting for Cloudflare's rate-limit quota before sending calls.",
            )
            .expect("valid metric"),
            quota_remaining: IntGauge::new(
                "zt_janitor_cloudflare_quota_remaining",
                "Calls left in Cloudflare's rate-limit window, as the last answer reported it \
                 (-1 before any answer reported it).",
            )
            .expect("valid metric"),
            skipped_ticks: IntCounter::new(
                "zt_janitor_skipped_ticks_total",
                "Schedule ticks skipped because a cycle was still running.",
            )
            .expect("valid metric"),
            notifications: IntCounterVec::new(
                Opts::new(
                    "zt_janitor_notifications_total",
                    "Notification delivery attempts, by [[notify]] target and outcome \
                     (delivered, rejected, server_error, rate_limited, timeout, \
                     transport_error, url_unavailable).",
                ),
                &["target", "outcome"],
            )
            .expect("valid metric"),
            config_reloads: IntCounterVec::new(
                Opts::new(
                    "zt_janitor_config_reloads_total",
                    "Config reloads, by result.",
                ),
                &["result"],
            )
            .expect("valid metric"),
            stuck_resources: IntGaugeVec::new(
                Opts::new(
                    "zt_janitor_stuck_resources",
                    "Objects left out of the last apply run because their call failed for them \
                     alone, the same way, in each of the runs before (action status `stuck`), by \
                     resource kind.",
                ),
                &["resource"],
            )
            .expect("valid metric"),
            audit_writable: IntGauge::new(
                "zt_janitor_audit_writable",
                "1 when audit writes are trusted to reach the disk; 0 after a write failed or the \
                 database file was replaced, until a probe write succeeds (no cycle starts meanwhile).",
            )
            .expect("valid metric"),
            audit_write_errors: IntCounter::new(
                "zt_janitor_audit_write_errors_total",
                "Audit database writes that failed.",
            )
            .expect("valid metric"),
            cycles_not_started: IntCounterVec::new(
                Opts::new(
                    "zt_janitor_cycles_not_started_total",
                    "Scheduled cycles that did not start because the audit store could not be \
                     trusted, by reason (audit_unwritable, audit_file_replaced).",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            marked: IntGaugeVec::new(
                Opts::new(
                    "zt_janitor_marked_resources",
                    "Objects marked and waiting out their grace period (or due), by resource kind \
                     and the rule that first selected them.",
                ),
                &["resource", "rule"],
            )
            .expect("valid metric"),
            marks_set: IntCounterVec::new(
                Opts::new(
                    "zt_janitor_marks_set_total",
                    "Objects marked for the first time (a grace period started), by resource kind.",
                ),
                &["resource"],
            )
            .expect("valid metric"),
            marks_cleared: IntCounterVec::new(
                Opts::new(
                    "zt_janitor_marks_cleared_total",
                    "Marks cleared because their objects were no longer candidates, by resource kind.",
                ),
                &["resource"],
            )
            .expect("valid metric"),
            audit_db_bytes: IntGauge::new(
                "zt_janitor_audit_db_bytes",
                "Size of the audit database on disk (file and write-ahead log), set at each \
                 cycle and after each prune.",
            )
            .expect("valid metric"),
            audit_pruned_rows: IntCounterVec::new(
                Opts::new(
                    "zt_janitor_audit_pruned_rows_total",
                    "Audit log rows deleted by retention pruning, by table.",
                ),
                &["table"],
            )
            .expect("valid metric"),
            audit_prune_failures: IntCounter::new(
                "zt_janitor_audit_prune_failures_total",
                "Prunes of the audit log at a cycle's start that failed or stopped on an error \
                 (the cycle went on).",
            )
            .expect("valid metric"),
            audit_chain_head: IntGaugeVec::new(
                Opts::new(
                    "zt_janitor_audit_chain_head",
                    "The audit log's hash chain head after the last run: its sequence number, \
                     labelled with its SHA-256. Ship it elsewhere: a rewrite of the whole \
                     database file changes it (see `zt-janitor audit verify`).",
                ),
                &["sha256"],
            )
            .expect("valid metric"),
            registry,
        };
        let build_info = IntGaugeVec::new(
            Opts::new(
                "zt_janitor_build_info",
                "Build information; the value is always 1.",
            ),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m.quota_remaining.set(-1);
        m.register_all(build_info);
        m.preinitialise();
        m
    }

    /// Creates every label set known in advance at 0, so that a scrape shows 0 rather than no
    /// series: `increase()` cannot see a series' first sample, and absent is not zero.
    fn preinitialise(&self) {
        for outcome in RunOutcome::ALL {
            self.runs.with_label_values(&[outcome.as_str()]);
            self.last_run_outcome.with_label_values(&[outcome.as_str()]);
        }
        for reason in ["audit_unwritable", "audit_file_replaced"] {
            self.cycles_not_started.with_label_values(&[reason]);
        }
        for result in ["ok", "error"] {
            self.config_reloads.with_label_values(&[result]);
        }
        for table in crate::audit::pruned_tables() {
            self.audit_pruned_rows.with_label_values(&[table]);
        }
    }

    /// Creates `zt_janitor_actions_total` at 0 for each rule of `rules` and each outcome an
    /// action can have; called with the rules in force at start and after each reload.
    pub fn preinitialise_rules(&self, rules: &RuleSet) {
        for rule in rules.rules() {
            for outcome in ACTION_OUTCOMES {
                self.actions.with_label_values(&[
                    rule.resource.as_str(),
                    &rule.name,
                    rule.action.as_str(),
                    outcome.as_str(),
                ]);
            }
        }
    }

    /// Creates `zt_janitor_notifications_total` at 0 for each target and each outcome an
    /// attempt can have; called with the targets in force at start and after each reload.
    pub fn preinitialise_notify(&self, targets: &[crate::config::NotifySettings]) {
        for target in targets {
            for outcome in crate::notify::ATTEMPT_OUTCOMES {
                self.notifications
                    .with_label_values(&[target.name.as_str(), outcome]);
            }
        }
    }

    /// Records how the last run ended: its outcome's series 1, the others 0.
    pub fn set_last_outcome(&self, last: RunOutcome) {
        for outcome in RunOutcome::ALL {
            self.last_run_outcome
                .with_label_values(&[outcome.as_str()])
                .set(i64::from(outcome == last));
        }
    }

    /// Shows the chain head `sha256` at `seq`, as the one series of its gauge.
    pub fn set_chain_head(&self, seq: i64, sha256: &str) {
        self.audit_chain_head.reset();
        self.audit_chain_head.with_label_values(&[sha256]).set(seq);
    }

    /// Sets the last-run gauges from what the audit log remembers, so that a restart does not
    /// read as "never succeeded".
    pub fn restore(&self, last: &LastRuns) {
        if let Some(t) = last.finished {
            self.last_run_timestamp.set(t.timestamp());
        }
        if let Some(t) = last.succeeded {
            self.last_success_timestamp.set(t.timestamp());
        }
        if let Some(outcome) = last.outcome {
            self.set_last_outcome(outcome);
        }
    }

    /// Sets the schedule gauges for `cron` as of `now`: the next fire time, and the longest gap
    /// between its next fire times (a cron such as "weekdays at 3" has uneven gaps).
    pub fn set_schedule(&self, cron: &str, now: DateTime<Utc>) {
        let fires = crate::schedule::next_fires(cron, now, SCHEDULE_SAMPLE);
        self.next_run_timestamp
            .set(fires.first().map_or(0, DateTime::timestamp));
        let period = fires
            .windows(2)
            .map(|w| (w[1] - w[0]).num_seconds())
            .max()
            .unwrap_or(0);
        self.schedule_period.set(period);
    }

    fn register_all(&self, build_info: IntGaugeVec) {
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.resources_seen.clone()),
            Box::new(self.candidates.clone()),
            Box::new(self.excluded.clone()),
            Box::new(self.anomalies.clone()),
            Box::new(self.actions.clone()),
            Box::new(self.runs.clone()),
            Box::new(self.run_duration.clone()),
            Box::new(self.last_run_timestamp.clone()),
            Box::new(self.last_success_timestamp.clone()),
            Box::new(self.last_run_outcome.clone()),
            Box::new(self.next_run_timestamp.clone()),
            Box::new(self.schedule_period.clone()),
            Box::new(self.api_requests.clone()),
            Box::new(self.api_latency.clone()),
            Box::new(self.api_retries.clone()),
            Box::new(self.rate_limited.clone()),
            Box::new(self.quota_wait_seconds.clone()),
            Box::new(self.quota_remaining.clone()),
            Box::new(self.skipped_ticks.clone()),
            Box::new(self.notifications.clone()),
            Box::new(self.config_reloads.clone()),
            Box::new(self.stuck_resources.clone()),
            Box::new(self.audit_writable.clone()),
            Box::new(self.audit_write_errors.clone()),
            Box::new(self.cycles_not_started.clone()),
            Box::new(self.marked.clone()),
            Box::new(self.marks_set.clone()),
            Box::new(self.marks_cleared.clone()),
            Box::new(self.audit_db_bytes.clone()),
            Box::new(self.audit_pruned_rows.clone()),
            Box::new(self.audit_prune_failures.clone()),
            Box::new(self.audit_chain_head.clone()),
            Box::new(build_info),
        ];
        for c in collectors {
            self.registry.register(c).expect("metric names are unique");
        }
        // The standard `process_*` series (resident memory, CPU seconds, open and max file
        // descriptors, start time), read from /proc at each scrape.
        #[cfg(target_os = "linux")]
        self.registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("metric names are unique");
    }

    /// The Prometheus text exposition of every metric.
    /// Drops every `zt_janitor_candidates` series of `kind`, so that a rule renamed or
    /// removed by a reload leaves no count behind; other kinds' series stay.
    pub fn forget_candidates_of(&self, kind: crate::resource::Kind) {
        use prometheus::core::Collector;
        let stale: Vec<String> = self
            .candidates
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .filter(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == "resource" && l.value() == kind.as_str())
            })
            .filter_map(|m| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == "rule")
                    .map(|l| l.value().to_owned())
            })
            .collect();
        for rule in stale {
            let _ = self.candidates.remove_label_values(&[kind.as_str(), &rule]);
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_metrics_with_build_info() {
        let m = Metrics::new();
        m.runs.with_label_values(&["applied"]).inc();
        let text = m.render();
        assert!(text.contains("zt_janitor_runs_total{outcome=\"applied\"} 1"));
        assert!(text.contains("zt_janitor_build_info{version=\""));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                line.starts_with("zt_janitor_") || line.starts_with("process_"),
                "unprefixed metric: {line}"
            );
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_scrape_has_the_standard_process_series() {
        let text = Metrics::new().render();
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        };
        assert!(value("process_resident_memory_bytes") > 0.0);
        assert!(value("process_virtual_memory_bytes") > 0.0);
        assert!(value("process_cpu_seconds_total") >= 0.0);
        assert!(value("process_open_fds") > 0.0);
        assert!(value("process_max_fds") > 0.0);
        let started = value("process_start_time_seconds");
        let now = chrono::Utc::now().timestamp() as f64;
        assert!(
            started > now - 86_400.0 && started <= now + 1.0,
            "{started}"
        );
    }
}

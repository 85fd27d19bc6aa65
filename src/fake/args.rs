//! The standalone fake (`zt-janitor fake-api`): its command-line arguments and the serve loop.

use std::net::SocketAddr;

use chrono::{DateTime, Utc};

use super::{FakeOptions, FakeRateLimit, FakeServer, FaultRule, DEFAULT_ACCOUNT_ID, DEFAULT_TOKEN};

/// Arguments of the fake Cloudflare API.
#[derive(Debug, Clone, clap::Args)]
pub struct FakeApiArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: SocketAddr,

    /// Number of registrations to generate.
    #[arg(long, default_value_t = 1000)]
    pub registrations: usize,

    /// Number of Access service tokens to generate: a mix of expired, never used, idle and
    /// fresh ones, every sixth attached to the device enrollment policy (its delete is refused).
    #[arg(long, default_value_t = 0)]
    pub service_tokens: usize,

    /// Number of account-owned API tokens to generate: a mix of recently and long expired,
    /// disabled, never used, idle and fresh ones. The fake's own token (the one --token names)
    /// is listed among them on top.
    #[arg(long, default_value_t = 0)]
    pub account_tokens: usize,

    /// Zone ids served under /client/v4/zones/{id} (32 lowercase hex characters), comma
    /// separated; --zone adds one.
    #[arg(long, value_delimiter = ',', value_name = "ZONE,ZONE")]
    pub zones: Vec<String>,

    /// One more zone id served (repeatable).
    #[arg(long = "zone", value_name = "ZONE")]
    pub zone: Vec<String>,

    /// Number of API Shield client certificates to generate in each zone: expired, valid,
    /// pending_revocation and revoked ones, from two CAs.
    #[arg(long, default_value_t = 0)]
    pub client_certificates: usize,

    /// Seconds a revoked certificate stays pending_revocation in listings before it shows
    /// revoked.
    #[arg(long, default_value_t = 0)]
    pub revocation_settles_after_secs: u64,

    /// Also accept the legacy global key: X-Auth-Email with this email (needs --global-key).
    #[arg(long, requires = "global_key")]
    pub global_key_email: Option<String>,

    /// Also accept the legacy global key: X-Auth-Key with this key (needs --global-key-email).
    #[arg(long, requires = "global_key_email")]
    pub global_key: Option<String>,

    /// Seed of the data generator (same seed, same data).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// API token the fake accepts as `Authorization: Bearer <token>`.
    #[arg(long, default_value = DEFAULT_TOKEN)]
    pub token: String,

    /// Account id served under /client/v4/accounts/{id}.
    #[arg(long, default_value = DEFAULT_ACCOUNT_ID)]
    pub account_id: String,

    /// Share of registrations last seen 120-720 days ago.
    #[arg(long, default_value_t = 0.2)]
    pub idle_share: f64,

    /// Share of registrations revoked 10-80 days ago.
    #[arg(long, default_value_t = 0.05)]
    pub revoked_share: f64,

    /// Share of registrations without a user (none, or a service token's identity).
    #[arg(long, default_value_t = 0.05)]
    pub no_user_share: f64,

    /// The generator's "now" (RFC 3339); default: the current time.
    #[arg(long)]
    pub now: Option<DateTime<Utc>>,

    /// Largest page served.
    #[arg(long, default_value_t = 1000)]
    pub max_per_page: usize,

    /// Most ids accepted by one bulk delete/revoke.
    #[arg(long, default_value_t = 100)]
    pub max_bulk_ids: usize,

    /// Inject a fault, TARGET:FAULT[:WHEN] (repeatable), e.g. `bulk_delete:status=503:first=2`,
    /// `list:status=429:retry_after=3:nth=2`, `delete_one:delay_ms=3000`,
    /// `list:repeat_cursor:nth=2`, `any_mutation:reset:p=0.1:seed=7`.
    /// `list_client_certificates:status=500:id=<zone>`.
    /// TARGET: list, get, delete_one, bulk_delete, revoke, list_service_tokens,
    /// delete_service_token, list_account_tokens, delete_account_token, verify_token (both
    /// tokens/verify endpoints), list_client_certificates, revoke_client_certificate,
    /// unrevoke, reactivate_client_certificate, any_mutation, any.
    /// FAULT: status=CODE [retry_after=SECS | code=N], delay_ms=MS, reset, malformed_json,
    /// success_false, wrong_auth, for list only repeat_cursor, and for list,
    /// list_service_tokens, list_account_tokens and list_client_certificates short_page,
    /// duplicate_ids, partial_errors. Hostile answers: retry_after_raw=TEXT,
    /// retry_after_ms_raw=TEXT, html=CODE, errors_null, partial_apply, noop[=200|202|204],
    /// noop_with_errors, empty_204, apply_then_status=CODE, redirect=URL / redirect302=URL
    /// (last part).
    /// WHEN: always (default), nth=N, first=N, p=PROB [seed=N]; id=ID limits it to calls naming
    /// ID (in the path, or as the zone of a /zones/{zone}/... call).
    #[arg(long = "fault", value_name = "RULE")]
    pub faults: Vec<FaultRule>,

    /// Rate limit: requests per window for the token (Cloudflare: 1200 per 5 minutes). Every
    /// answer carries `Ratelimit` and `Ratelimit-Policy`; the request that finds the quota spent
    /// starts a block in which every call gets 429 with `Retry-After`.
    #[arg(long, default_value_t = 1200, value_name = "N")]
    pub rate_limit: u32,

    /// Length of the rate limit's fixed windows, from the fake's start.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub rate_window_secs: u64,

    /// How long every call is refused once the quota is spent (default: the window's length).
    #[arg(long, value_name = "SECS")]
    pub rate_block_secs: Option<u64>,

    /// Send the `Ratelimit` and `Ratelimit-Policy` headers (false: the client must pace itself
    /// without them).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub rate_headers: bool,

    /// Share of each window's quota (0 to 1) another consumer of the token spends, evenly.
    #[arg(long, default_value_t = 0.0, value_name = "SHARE")]
    pub other_consumer_share: f64,

    /// No rate limit and no rate limit headers.
    #[arg(
        long,
        conflicts_with_all = [
            "rate_limit",
            "rate_window_secs",
            "rate_block_secs",
            "rate_headers",
            "other_consumer_share",
        ]
    )]
    pub no_rate_limit: bool,
}

impl FakeApiArgs {
    fn options(&self) -> FakeOptions {
        FakeOptions {
            account_id: self.account_id.clone(),
            token: self.token.clone(),
            seed: self.seed,
            registrations: self.registrations,
            idle_share: self.idle_share,
            revoked_share: self.revoked_share,
            no_user_share: self.no_user_share,
            now: self.now.unwrap_or_else(Utc::now),
            max_per_page: self.max_per_page,
            max_bulk_ids: self.max_bulk_ids,
            service_tokens: self.service_tokens,
            account_tokens: self.account_tokens,
            zones: self.zones.iter().chain(&self.zone).cloned().collect(),
            client_certificates: self.client_certificates,
            revocation_settles_after: std::time::Duration::from_secs(
                self.revocation_settles_after_secs,
            ),
            global_key: self.global_key_email.clone().zip(self.global_key.clone()),
            rate_limit: self.rate_limit(),
            ..FakeOptions::default()
        }
    }

    fn rate_limit(&self) -> Option<FakeRateLimit> {
        if self.no_rate_limit {
            return None;
        }
        let window = std::time::Duration::from_secs(self.rate_window_secs);
        Some(FakeRateLimit {
            quota: self.rate_limit,
            window,
            block: self
                .rate_block_secs
                .map_or(window, std::time::Duration::from_secs),
            headers: self.rate_headers,
            other_consumer_share: self.other_consumer_share,
        })
    }
}

/// The startup line's account of the rate limit.
fn describe_rate_limit(limit: Option<&FakeRateLimit>) -> String {
    let Some(limit) = limit else {
        return "rate limit: off".to_owned();
    };
    let mut text = format!(
        "rate limit: {} requests per {} s per token, then blocked for {} s",
        limit.quota,
        limit.window.as_secs(),
        limit.block.as_secs()
    );
    if limit.other_consumer_share > 0.0 {
        text += &format!(
            ", {} of it spent by another consumer",
            limit.other_consumer_share
        );
    }
    text += if limit.headers {
        ", Ratelimit headers on"
    } else {
        ", no Ratelimit headers"
    };
    text
}

/// Starts the fake, prints one line saying where it listens, and serves until SIGTERM or Ctrl-C.
pub async fn serve_from_args(args: FakeApiArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;

    // Before the start-up line, so that whoever reads it can stop the fake with either signal.
    let mut shutdown =
        crate::stop::ShutdownSignals::new().context("could not listen for SIGTERM and Ctrl-C")?;
    let options = args.options();
    let rate_limit = match options.rate_limit.as_ref() {
        Some(limit) => format!(
            "{} (--no-rate-limit turns it off)",
            describe_rate_limit(Some(limit))
        ),
        None => describe_rate_limit(None),
    };
    let fake = FakeServer::start_on(args.listen, options)
        .await
        .with_context(|| format!("could not start the fake API on {}", args.listen))?;
    fake.set_faults(args.faults.clone());
    let zones = fake.zones();
    let certificates: usize = zones.iter().map(|z| fake.certificate_ids(z).len()).sum();
    announce(&format!(
        "fake Cloudflare API listening on {} (account {}, {} registrations, {} service tokens, \
         {} account API tokens, {} zones with {} client certificates, token from --token)",
        fake.base_url(),
        fake.account_id(),
        fake.len(),
        fake.service_token_ids().len(),
        fake.account_token_ids().len(),
        zones.len(),
        certificates
    ));
    // On a line of its own: scripts read the URL from the first one.
    announce(&rate_limit);
    shutdown.recv().await;
    fake.shutdown().await;
    Ok(())
}

/// Prints a line of the start-up announcement. A reader that went away (a closed pipe) must
/// not stop the fake, which serves on regardless.
fn announce(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: FakeApiArgs,
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let cli = Cli::try_parse_from(["fake"]).unwrap();
        let opts = cli.args.options();
        let defaults = FakeOptions::default();
        assert_eq!(cli.args.listen, "127.0.0.1:8787".parse().unwrap());
        assert_eq!(opts.token, defaults.token);
        assert_eq!(opts.account_id, defaults.account_id);
        assert_eq!(opts.idle_share, defaults.idle_share);
        assert_eq!(opts.revoked_share, defaults.revoked_share);
        assert_eq!(opts.no_user_share, defaults.no_user_share);
        assert_eq!(opts.max_per_page, defaults.max_per_page);
        assert_eq!(opts.max_bulk_ids, defaults.max_bulk_ids);
        assert_eq!(opts.service_tokens, defaults.service_tokens);
        assert_eq!(opts.service_tokens, 0, "nothing changes for existing users");
        let cli = Cli::try_parse_from(["fake", "--service-tokens", "40"]).unwrap();
        assert_eq!(cli.args.options().service_tokens, 40);
        assert_eq!(opts.account_tokens, 0);
        assert!(opts.zones.is_empty());
        assert_eq!(opts.client_certificates, 0);
        assert_eq!(
            opts.revocation_settles_after,
            defaults.revocation_settles_after
        );
        assert_eq!(opts.global_key, None);
        assert_eq!(opts.own_token_owner, defaults.own_token_owner);
        assert_eq!(
            opts.rate_limit,
            Some(FakeRateLimit::default()),
            "the standalone fake limits like Cloudflare by default"
        );
    }

    #[test]
    fn the_rate_limit_is_read_and_can_be_turned_off() {
        let cli = Cli::try_parse_from([
            "fake",
            "--rate-limit",
            "10",
            "--rate-window-secs",
            "2",
            "--rate-headers",
            "false",
            "--other-consumer-share",
            "0.25",
        ])
        .unwrap();
        let limit = cli.args.options().rate_limit.unwrap();
        assert_eq!(limit.quota, 10);
        assert_eq!(limit.window.as_secs(), 2);
        assert_eq!(limit.block.as_secs(), 2, "the block defaults to the window");
        assert!(!limit.headers);
        assert_eq!(limit.other_consumer_share, 0.25);
        assert_eq!(
            describe_rate_limit(Some(&limit)),
            "rate limit: 10 requests per 2 s per token, then blocked for 2 s, 0.25 of it spent \
             by another consumer, no Ratelimit headers"
        );
        let cli = Cli::try_parse_from(["fake", "--rate-block-secs", "7"]).unwrap();
        assert_eq!(cli.args.options().rate_limit.unwrap().block.as_secs(), 7);
        let cli = Cli::try_parse_from(["fake", "--no-rate-limit"]).unwrap();
        assert_eq!(cli.args.options().rate_limit, None);
        assert_eq!(describe_rate_limit(None), "rate limit: off");
        assert!(Cli::try_parse_from(["fake", "--no-rate-limit", "--rate-limit", "5"]).is_err());
        assert!(Cli::try_parse_from(["fake", "--rate-headers", "maybe"]).is_err());
    }

    #[test]
    fn kinds_zones_and_the_global_key_are_read() {
        let a = "0".repeat(32);
        let b = "1".repeat(32);
        let c = "2".repeat(32);
        let cli = Cli::try_parse_from([
            "fake",
            "--account-tokens",
            "30",
            "--zones",
            &format!("{a},{b}"),
            "--zone",
            &c,
            "--client-certificates",
            "12",
            "--revocation-settles-after-secs",
            "90",
            "--global-key-email",
            "admin@example.com",
            "--global-key",
            "k3y",
        ])
        .unwrap();
        let opts = cli.args.options();
        assert_eq!(opts.account_tokens, 30);
        assert_eq!(opts.zones, [a, b, c]);
        assert_eq!(opts.client_certificates, 12);
        assert_eq!(opts.revocation_settles_after.as_secs(), 90);
        assert_eq!(
            opts.global_key,
            Some(("admin@example.com".to_owned(), "k3y".to_owned()))
        );
        assert!(Cli::try_parse_from(["fake", "--global-key", "k3y"]).is_err());
    }

    #[test]
    fn faults_are_repeatable_and_bad_ones_are_refused() {
        let cli = Cli::try_parse_from([
            "fake",
            "--fault",
            "bulk_delete:status=503:first=2",
            "--fault",
            "list:repeat_cursor:nth=2",
            "--now",
            "2026-01-29T00:00:00Z",
        ])
        .unwrap();
        assert_eq!(cli.args.faults.len(), 2);
        assert_eq!(
            cli.args.now.unwrap().to_rfc3339(),
            "2026-01-29T00:00:00+00:00"
        );
        let err = Cli::try_parse_from(["fake", "--fault", "list:explode"])
            .err()
            .unwrap();
        assert!(err.to_string().contains("unknown part"), "{err}");
    }
}

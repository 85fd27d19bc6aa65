//! `check-config`: every problem of a config file, each located; the effective settings; the
//! warnings; and, with `--online`, whether the credentials work and reach every kind the
//! rules list. Nothing here mutates the account or opens the audit database: the online
//! check sends only `tokens/verify` and the first page of each listing.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use chrono::Utc;

use crate::cloudflare::Client;
use crate::config::{count, Config, ConfigError, Mode};
use crate::metrics::Metrics;
use crate::report::escape;
use crate::resource::{self, Kind, Scope};
use crate::secret::Credentials;
use crate::startup::Loaded;

/// What `check-config` found, when the file loaded.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Checked {
    pub warnings: usize,
    /// Online checks that failed (none offline).
    pub failed: usize,
}

/// Loads `path` and prints what `check-config` says about it: the effective settings and the
/// next fire times on `out`, `error:` and `warning:` lines on `err`. An invalid file prints
/// every problem and is an `Err` that counts them.
pub fn offline(path: &Path, out: &mut dyn Write, err: &mut dyn Write) -> Result<(Loaded, usize)> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e @ ConfigError::Invalid { .. }) => {
            for problem in e.problems() {
                writeln!(err, "error: {}", escape(&problem.to_string()))?;
            }
            anyhow::bail!(
                "{}: {}; nothing else was checked",
                path.display(),
                count(e.problems().len(), "error")
            );
        }
        Err(e) => return Err(e.into()),
    };
    let loaded = Loaded::new(config)?;
    let (config, rules) = (&loaded.config, &loaded.rules);
    write!(out, "{}", config.describe())?;
    let now = Utc::now();
    writeln!(out, "next fire times (UTC):")?;
    for at in crate::schedule::next_fires(&config.schedule.cron, now, 3) {
        writeln!(
            out,
            "  {}",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )?;
    }
    let mut warnings: Vec<String> = config.warnings.iter().map(ToString::to_string).collect();
    warnings.extend(crate::startup::credentials_warning(&config.cloudflare).map(String::from));
    warnings.extend(rules.warnings().iter().map(ToString::to_string));
    warnings.extend(crate::schedule::schedule_warning(
        &config.schedule.cron,
        now,
    ));
    for warning in &warnings {
        writeln!(err, "warning: {}", escape(warning))?;
    }
    Ok((loaded, warnings.len()))
}

/// Checks the credentials and every listing the rules need against the API, one line per
/// check on `out`; returns how many failed. Sends `tokens/verify` (with an API token) and the
/// first page of each kind the rules select, in each configured zone for client
/// certificates; nothing else.
pub async fn online(config: &Config, out: &mut dyn Write) -> Result<usize> {
    let line = |out: &mut dyn Write, what: &str, result: Result<String, String>| {
        let text = match result {
            Ok(detail) => format!("  {what}: OK{detail}"),
            Err(e) => format!("  {what}: FAILED: {e}"),
        };
        writeln!(out, "{}", escape(&text))
    };
    writeln!(out, "online check against {}:", config.cloudflare.base_url)?;
    let credentials = match Credentials::load(&config.cloudflare) {
        Ok(credentials) => credentials,
        Err(e) => {
            line(out, "credentials", Err(e.to_string()))?;
            return Ok(1);
        }
    };
    let is_token = credentials.is_api_token();
    let client = Client::new(&config.cloudflare, credentials, Metrics::new())
        .context("cannot build the HTTP client")?;
    line(out, "credentials", Ok(" (read)".to_owned()))?;
    if is_token {
        // A token that does not verify fails every listing too: stop here.
        match resource::own_token_id(&client).await {
            Ok(id) => line(out, "token", Ok(format!(" (verified; id {})", id.as_str())))?,
            Err(e) => {
                line(out, "token", Err(e.to_string()))?;
                return Ok(1);
            }
        }
    }
    let mut failed = 0;
    for kind in Kind::ALL {
        if !config.rules.iter().any(|r| r.resource == kind) {
            continue;
        }
        let scopes: Vec<Scope> = if kind.zoned() {
            config
                .cloudflare
                .zone_ids
                .iter()
                .cloned()
                .map(Scope::zone)
                .collect()
        } else {
            vec![Scope::default()]
        };
        for scope in scopes {
            let what = match &scope.zone {
                Some(zone) => format!("{kind} in zone {zone}"),
                None => kind.to_string(),
            };
            let result = resource::list_page(kind, &client, &scope, None)
                .await
                .map(|page| {
                    let total = page.total.map(|t| format!(" of {t}")).unwrap_or_default();
                    format!(
                        " ('{}'; first page: {}{total})",
                        kind.read_permission(),
                        page.items.len()
                    )
                })
                .map_err(|e| e.to_string());
            failed += usize::from(result.is_err());
            line(out, &what, result)?;
        }
    }
    if config.safety.mode == Mode::Apply {
        writeln!(
            out,
            "  not checked: the write permissions apply mode needs ({}), which cannot be \
             checked without acting",
            write_permissions(config).join(", ")
        )?;
    }
    Ok(failed)
}

/// The write permissions of the kinds the rules select, each once.
fn write_permissions(config: &Config) -> Vec<&'static str> {
    let mut permissions: Vec<&'static str> = Vec::new();
    for kind in Kind::ALL {
        let permission = kind.write_permission();
        if config.rules.iter().any(|r| r.resource == kind) && !permissions.contains(&permission) {
            permissions.push(permission);
        }
    }
    permissions
}

/// The whole command: prints as [`offline`] and [`online`] do, and ends with one line saying
/// whether the config is usable. `Err` (a non-zero exit) when the file is invalid, an online
/// check failed, or with `strict`, when there is any warning.
pub async fn check_config(
    path: &Path,
    online_check: bool,
    strict: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Checked> {
    let (loaded, warnings) = offline(path, out, err)?;
    let failed = if online_check {
        online(&loaded.config, out).await?
    } else {
        0
    };
    let checked = Checked { warnings, failed };
    if failed > 0 {
        anyhow::bail!(
            "{}: the online check failed ({}); see above",
            path.display(),
            count(failed, "failed check")
        );
    }
    if strict && warnings > 0 {
        anyhow::bail!(
            "{}: {} (--strict)",
            path.display(),
            count(warnings, "warning")
        );
    }
    match warnings {
        0 => writeln!(out, "{}: OK", path.display())?,
        n => writeln!(
            out,
            "{}: valid, with {} (on stderr): read them before running it",
            path.display(),
            count(n, "warning")
        )?,
    }
    Ok(checked)
}

//! What loads but deserves a warning: credentials this environment does not provide (as it
//! was when the file was loaded), and settings that together leave nothing between a rule
//! that selects too much and an account emptied in one run. Each warning is located at the
//! key it is about and says what to do. Nothing here reads a credential: files are opened,
//! never read.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::Path;

use crate::resource::Kind;
use crate::secret::{CREDENTIALS_DIRECTORY, CREDENTIALS_PREFIXES};

use super::super::diagnostics::line_col;
use super::super::raw::{RawConfig, Sp};
use super::super::{Auth, CloudflareSettings, Config, ExclusionSettings, Mode};
use super::{table_key, Credential, Env, Validator, EMAIL, KEY, TOKEN};

/// A rule that acts on what has been idle or unused for at most this many days takes devices
/// and tokens that are merely on holiday.
pub(super) const AGGRESSIVE_DAYS: u32 = 7;

/// From this many actions per run, `max_actions_per_run` no longer limits a mistake.
pub(super) const HIGH_MAX_ACTIONS: u64 = 1000;

/// Above this share, other users of the same Cloudflare user's quota (the dashboard,
/// Terraform) are left too little of it while a cycle runs.
const HIGH_RATE_SHARE: f64 = 0.8;

impl Validator<'_> {
    /// Records the warnings `config` deserves; `raw` locates them.
    pub(super) fn warnings(
        &self,
        config: &Config,
        raw: &RawConfig,
        cloudflare_span: Range<usize>,
        env: Env<'_>,
    ) {
        if let Some(cloudflare) = raw.cloudflare.as_ref().map(Sp::get_ref) {
            let credentials: &[&Credential] = match config.cloudflare.auth {
                Auth::ApiToken => &[&TOKEN],
                Auth::GlobalApiKey => &[&EMAIL, &KEY],
            };
            for credential in credentials {
                let [file, named_env] = (credential.fields)(cloudflare);
                match file {
                    Some(file) => self.credential_file(credential, file, env),
                    None => self.credential_env(
                        credential,
                        env_name(credential, &config.cloudflare),
                        named_env.as_ref().map_or(cloudflare_span.clone(), Sp::span),
                        env,
                    ),
                }
            }
            if let Some(share) = &cloudflare.rate_share {
                if *share.get_ref() > HIGH_RATE_SHARE {
                    self.warn(
                        share.span(),
                        table_key("cloudflare", "rate_share"),
                        format!(
                            "{} lets zt-janitor spend {}% of the Cloudflare user's rate-limit \
                             quota, which the dashboard, Terraform and every other tool of \
                             that user share: while a cycle runs they get 429 answers, and one \
                             call too many blocks the user for 5 minutes; keep it at 0.5 (the \
                             default) or lower",
                            share.get_ref(),
                            (share.get_ref() * 100.0).round()
                        ),
                    );
                }
            }
        }
        self.dangerous_caps(config, raw);
    }

    /// A credential file: outside systemd, a `%d/` path cannot resolve; otherwise the file
    /// should exist and be readable by this user.
    fn credential_file(&self, credential: &Credential, file: &Sp<String>, env: Env<'_>) {
        let key = table_key("cloudflare", credential.file);
        let path = file.get_ref();
        let in_credentials_dir = CREDENTIALS_PREFIXES
            .iter()
            .find_map(|prefix| path.strip_prefix(prefix));
        let resolved = match in_credentials_dir {
            Some(rest) => match env(CREDENTIALS_DIRECTORY).filter(|d| !d.is_empty()) {
                Some(dir) => Path::new(&dir).join(rest),
                None => {
                    self.warn(
                        file.span(),
                        key,
                        format!(
                            "{path:?} is in systemd's credentials directory, but \
                             {CREDENTIALS_DIRECTORY} is not set, so outside a systemd service \
                             the {} cannot be read and every cycle fails. Under systemd, give \
                             the unit LoadCredential={}:<file> (as systemd/zt-janitor.service does); run by hand, set \
                             {CREDENTIALS_DIRECTORY}=<the directory holding {}>, or write the \
                             file's full path here",
                            credential.what, credential.systemd_name, credential.systemd_name
                        ),
                    );
                    return;
                }
            },
            None => Path::new(path).to_owned(),
        };
        let problem = match File::open(&resolved) {
            Ok(opened) => match opened.metadata() {
                Ok(meta) if meta.is_dir() => Some("is a directory".to_owned()),
                Ok(_) => None,
                Err(e) => Some(format!("cannot be read ({e})")),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Some("does not exist".to_owned()),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                Some("cannot be read by the user running this check (permission denied)".into())
            }
            Err(e) => Some(format!("cannot be opened ({e})")),
        };
        if let Some(problem) = problem {
            self.warn(
                file.span(),
                key,
                format!(
                    "the {} file {} {problem}, so every cycle would fail to authenticate: \
                     write the {} alone into it, readable only by the user zt-janitor runs as \
                     (mode 0600 or 0400), or point {} at the right file",
                    credential.what,
                    resolved.display(),
                    credential.what,
                    credential.file
                ),
            );
        }
    }

    /// A credential variable should be set, and not empty, where zt-janitor runs.
    fn credential_env(
        &self,
        credential: &Credential,
        name: &str,
        span: Range<usize>,
        env: Env<'_>,
    ) {
        let state = match env(name) {
            None => "is not set",
            Some(value) if value.is_empty() => "is empty",
            Some(_) => return,
        };
        self.warn(
            span,
            table_key("cloudflare", credential.env),
            format!(
                "the environment variable {name} {state} here, so every cycle would fail to \
                 authenticate: export the {} in it where zt-janitor runs, or set {} = \
                 \"<path>\" to a file holding it (under systemd: LoadCredential= and \
                 \"%d/{}\")",
                credential.what, credential.file, credential.systemd_name
            ),
        );
    }

    /// Apply mode, caps that no longer limit a run, a rule that takes what is idle or unused
    /// for days, and no exclusion for that kind: one run can empty the account of that kind.
    fn dangerous_caps(&self, config: &Config, raw: &RawConfig) {
        let safety = &config.safety;
        let Some(mode) = raw.safety.mode.as_ref() else {
            return;
        };
        let fraction_off = safety.max_fraction_per_run >= 1.0;
        let actions_high = safety.max_actions_per_run >= HIGH_MAX_ACTIONS;
        if safety.mode != Mode::Apply || !(fraction_off || actions_high) {
            return;
        }
        let mut caps = Vec::new();
        if fraction_off {
            caps.push(format!(
                "[safety] max_fraction_per_run = {} (100%)",
                safety.max_fraction_per_run
            ));
        }
        if actions_high {
            caps.push(format!(
                "[safety] max_actions_per_run = {}",
                safety.max_actions_per_run
            ));
        }
        for kind in Kind::ALL {
            if config.exclusions.iter().any(|e| protects(e, kind)) {
                continue;
            }
            let aggressive: Vec<String> = config
                .rules
                .iter()
                .enumerate()
                .filter(|(_, rule)| rule.resource == kind)
                .filter_map(|(index, rule)| {
                    let (field, days) = match (rule.idle_days, rule.unused_days) {
                        (Some(days), _) => ("idle_days", days),
                        (None, Some(days)) => ("unused_days", days),
                        _ => return None,
                    };
                    (days <= AGGRESSIVE_DAYS).then(|| {
                        let line = raw
                            .rule
                            .get(index)
                            .map_or(0, |r| line_col(self.text, r.span().start).0);
                        format!(
                            "[[rule]] #{} {:?} (line {line}) {field} = {days}",
                            index + 1,
                            rule.name
                        )
                    })
                })
                .collect();
            if aggressive.is_empty() {
                continue;
            }
            let things = kind.noun().1;
            self.warn(
                mode.span(),
                table_key("safety", "mode"),
                format!(
                    "dangerous: mode = \"apply\" with {}, {} and no [[exclude]] protecting \
                     {things}: one run may {} every one of the {things} idle or unused for a \
                     few days (a team back from holiday). Keep max_fraction_per_run (default 0.10) \
                     and max_actions_per_run (default 50) low, use a longer \
                     threshold, add an [[exclude]] for the {things} that must stay, and review \
                     `zt-janitor plan` first",
                    caps.join(" and "),
                    aggressive.join(", "),
                    match kind {
                        Kind::ClientCertificate => "revoke",
                        _ => "delete",
                    }
                ),
            );
        }
    }
}

/// The variable a credential is read from, as validated (the default when not named).
fn env_name<'c>(credential: &Credential, settings: &'c CloudflareSettings) -> &'c str {
    match credential.what {
        "email" => &settings.api_email_env,
        "key" => &settings.api_key_env,
        _ => &settings.api_token_env,
    }
}

/// Whether any criterion of `exclusion` can protect an object of `kind`.
fn protects(exclusion: &ExclusionSettings, kind: Kind) -> bool {
    match kind {
        Kind::DeviceRegistration => {
            !exclusion.user_emails.is_empty()
                || !exclusion.device_names.is_empty()
                || !exclusion.registration_ids.is_empty()
                || exclusion.no_user
        }
        Kind::AccessServiceToken => {
            !exclusion.service_token_names.is_empty() || !exclusion.service_token_ids.is_empty()
        }
        Kind::AccountApiToken => {
            !exclusion.account_api_token_names.is_empty()
                || !exclusion.account_api_token_ids.is_empty()
        }
        Kind::ClientCertificate => {
            !exclusion.common_names.is_empty() || !exclusion.client_certificate_ids.is_empty()
        }
    }
}

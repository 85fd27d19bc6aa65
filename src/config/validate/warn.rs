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
                              the unit LoadCredential={}:<file> (as systemd/zt-janitor.service \
                             does); run by hand, set {CREDENTIALS_DIRECTORY}=<the directory \
                             holding {}>, or write the file's full path here",
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
                     few days (a team back from holiday). Keep max_fraction_per_run (default \
                     0.10) and max_actions_per_run (default 50) low, use a longer threshold, \
                     add an [[exclude]] for the {things} that must stay, and review \
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

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::path::Path;

    use crate::config::{Config, Diagnostic};

    const ACCOUNT: &str = "[cloudflare]\naccount_id = \"0123456789abcdef0123456789abcdef\"\n";
    const IDLE_1D: &str = "\n[[rule]]\nname = \"idle-1d\"\nresource = \"device_registration\"\n\
        action = \"delete\"\nidle_days = 1\n";

    /// The warnings of `text` loaded in an environment holding only `vars`.
    fn warnings(text: &str, vars: &[(&str, &str)]) -> Vec<Diagnostic> {
        let env = |name: &str| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| OsString::from(v))
        };
        Config::from_toml_str_with(text, Path::new("zt.toml"), &env)
            .unwrap_or_else(|e| panic!("{e}"))
            .warnings
    }

    fn one(warnings: &[Diagnostic]) -> String {
        assert_eq!(warnings.len(), 1, "{warnings:#?}");
        warnings[0].to_string()
    }

    const TOKEN_SET: (&str, &str) = ("CLOUDFLARE_API_TOKEN", "t");

    #[test]
    fn a_credentials_directory_path_outside_systemd_says_how_to_run_it() {
        let text = format!("{ACCOUNT}api_token_file = \"%d/cloudflare-token\"\n{IDLE_1D}");
        let warning = one(&warnings(&text, &[]));
        assert!(
            warning.starts_with("zt.toml:3:18: [cloudflare] api_token_file: \"%d/cloudflare-token\" is in systemd's credentials directory, but CREDENTIALS_DIRECTORY is not set"),
            "{warning}"
        );
        assert!(
            warning.contains("LoadCredential=cloudflare-token:<file>"),
            "{warning}"
        );

        // Under systemd, the file is looked for in the directory.
        let dir = tempfile::tempdir().unwrap();
        let credentials = dir.path().to_str().unwrap();
        let missing = one(&warnings(&text, &[("CREDENTIALS_DIRECTORY", credentials)]));
        assert!(
            missing.contains("cloudflare-token does not exist"),
            "{missing}"
        );
        std::fs::write(dir.path().join("cloudflare-token"), "t").unwrap();
        assert_eq!(
            warnings(&text, &[("CREDENTIALS_DIRECTORY", credentials)]),
            []
        );
    }

    #[test]
    fn a_token_file_that_cannot_be_opened_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let text = format!(
            "{ACCOUNT}api_token_file = \"{}\"\n{IDLE_1D}",
            path.display()
        );
        let warning = one(&warnings(&text, &[TOKEN_SET]));
        assert!(
            warning.starts_with("zt.toml:3:18: [cloudflare] api_token_file: the token file ")
                && warning.contains("token does not exist, so every cycle would fail"),
            "{warning}"
        );
        std::fs::create_dir(&path).unwrap();
        assert!(one(&warnings(&text, &[])).contains("is a directory"));
        std::fs::remove_dir(&path).unwrap();
        std::fs::write(&path, "t").unwrap();
        assert_eq!(warnings(&text, &[]), []);
    }

    #[test]
    fn a_token_variable_that_is_not_set_or_empty_is_named_with_the_fix() {
        let text = format!("{ACCOUNT}{IDLE_1D}");
        let warning = one(&warnings(&text, &[]));
        assert!(
            warning.starts_with("zt.toml:1:1: [cloudflare] api_token_env: the environment variable CLOUDFLARE_API_TOKEN is not set here, so every cycle would fail to authenticate: export the token in it"),
            "{warning}"
        );
        let empty = one(&warnings(&text, &[("CLOUDFLARE_API_TOKEN", "")]));
        assert!(empty.contains("CLOUDFLARE_API_TOKEN is empty"), "{empty}");
        assert_eq!(warnings(&text, &[TOKEN_SET]), []);

        // A named variable is located at its key.
        let named = format!("{ACCOUNT}api_token_env = \"JANITOR_TOKEN\"\n{IDLE_1D}");
        let warning = one(&warnings(&named, &[TOKEN_SET]));
        assert!(
            warning.starts_with("zt.toml:3:17: [cloudflare] api_token_env: the environment variable JANITOR_TOKEN is not set"),
            "{warning}"
        );
    }

    #[test]
    fn the_global_key_warns_about_each_missing_credential() {
        let text =
            format!("{ACCOUNT}auth = \"global_api_key\"\napi_email_env = \"MAIL\"\n{IDLE_1D}");
        let all = warnings(&text, &[]);
        let keys: Vec<&str> = all.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(
            keys,
            ["[cloudflare] api_email_env", "[cloudflare] api_key_env"],
            "{all:#?}"
        );
        assert!(all[1].message.contains("CLOUDFLARE_API_KEY is not set"));
        assert_eq!(
            warnings(&text, &[("MAIL", "a@b.c"), ("CLOUDFLARE_API_KEY", "k")]),
            []
        );
    }

    #[test]
    fn apply_with_open_caps_aggressive_rules_and_no_exclusion_is_dangerous() {
        let safety = |mode: &str, fraction: f64, actions: u64| {
            format!(
                "[safety]\nmode = \"{mode}\"\nmax_fraction_per_run = {fraction:?}\n\
                 max_actions_per_run = {actions}\n"
            )
        };
        let rule = |resource: &str, key: &str, days: u32| {
            format!(
                "\n[[rule]]\nname = \"r\"\nresource = \"{resource}\"\naction = \"delete\"\n\
                 {key} = {days}\n"
            )
        };
        let registrations = "\n[[exclude]]\nuser_email = [\"*@board.example.com\"]\n";
        let tokens = "\n[[exclude]]\nservice_token_name = [\"break-glass-*\"]\n";
        let device = |days| rule("device_registration", "idle_days", days);
        // (case, safety, rules, exclusions, dangerous)
        let cases = [
            (
                "the issue's example",
                safety("apply", 1.0, 50),
                device(1),
                "",
                true,
            ),
            (
                "many actions",
                safety("apply", 0.1, 5000),
                device(7),
                "",
                true,
            ),
            (
                "both caps open",
                safety("apply", 1.0, 100_000),
                device(3),
                "",
                true,
            ),
            (
                "plan mode",
                safety("plan", 1.0, 100_000),
                device(1),
                "",
                false,
            ),
            (
                "caps that hold",
                safety("apply", 0.5, 999),
                device(1),
                "",
                false,
            ),
            (
                "a longer threshold",
                safety("apply", 1.0, 50),
                device(8),
                "",
                false,
            ),
            (
                "an exclusion",
                safety("apply", 1.0, 50),
                device(1),
                registrations,
                false,
            ),
            (
                "another kind's exclusion",
                safety("apply", 1.0, 50),
                device(1),
                tokens,
                true,
            ),
            (
                "unused service tokens",
                safety("apply", 1.0, 50),
                rule("access_service_token", "unused_days", 2),
                registrations,
                true,
            ),
            (
                "expired service tokens",
                safety("apply", 1.0, 50),
                rule("access_service_token", "expired_days", 0),
                "",
                false,
            ),
        ];
        for (case, safety, rules, exclusions, dangerous) in cases {
            let text = format!("{ACCOUNT}{safety}{rules}{exclusions}");
            let found = warnings(&text, &[TOKEN_SET]);
            if !dangerous {
                assert_eq!(found, [], "{case}");
                continue;
            }
            let warning = one(&found);
            assert!(
                warning.starts_with(
                    "zt.toml:4:8: [safety] mode: dangerous: mode = \"apply\" with [safety] max_"
                ),
                "{case}: {warning}"
            );
            assert!(
                warning.contains("[[rule]] #1 \"r\" (line 8)"),
                "{case}: {warning}"
            );
            assert!(
                warning.contains("and no [[exclude]] protecting"),
                "{case}: {warning}"
            );
        }
        let both = one(&warnings(
            &format!("{ACCOUNT}{}{}", safety("apply", 1.0, 100_000), device(1)),
            &[TOKEN_SET],
        ));
        assert!(
            both.contains("with [safety] max_fraction_per_run = 1 (100%) and [safety] max_actions_per_run = 100000, [[rule]] #1 \"r\" (line 8) idle_days = 1 and no [[exclude]] protecting registrations: one run may delete every one"),
            "{both}"
        );
    }

    #[test]
    fn a_rate_share_near_the_whole_quota_is_a_warning() {
        let text = |share: f64| format!("{ACCOUNT}rate_share = {share:?}\n{IDLE_1D}");
        let warning = one(&warnings(&text(0.9), &[TOKEN_SET]));
        assert!(
            warning.starts_with(
                "zt.toml:3:14: [cloudflare] rate_share: 0.9 lets zt-janitor spend 90%"
            ),
            "{warning}"
        );
        assert_eq!(warnings(&text(0.8), &[TOKEN_SET]), []);
    }

    #[test]
    fn a_config_with_errors_has_no_warnings_only_errors() {
        let text = format!("{ACCOUNT}rate_share = 0.9\nper_page = 0\n{IDLE_1D}");
        let env = |_: &str| None;
        let e = Config::from_toml_str_with(&text, Path::new("zt.toml"), &env).unwrap_err();
        assert_eq!(e.problems().len(), 1, "{e}");
    }
}

//! `[[notify]]` tables: a webhook each, whose URL is a secret read from a file or an
//! environment variable, never written in the config file.

use std::path::PathBuf;

use super::super::raw::{RawNotify, Sp};
use super::super::settings::{
    NotifyFormat, NotifyLevel, NotifySend, NotifySettings, UrlSource, DEFAULT_NOTIFY_DEADLINE_SECS,
    DEFAULT_NOTIFY_MAX_ITEMS, DEFAULT_NOTIFY_TIMEOUT_SECS, MAX_NOTIFY_DEADLINE_SECS,
    MAX_NOTIFY_ITEMS,
};
use super::{entry_key, Validator};

impl Validator<'_> {
    /// Every `[[notify]]`, with unique names; the problems are recorded.
    pub(super) fn notify_targets(&self, raw: &[Sp<RawNotify>]) -> Vec<NotifySettings> {
        let mut names: Vec<String> = Vec::with_capacity(raw.len());
        let mut targets = Vec::with_capacity(raw.len());
        for (index, entry) in raw.iter().enumerate() {
            if let Some(name) = &entry.get_ref().name {
                if let Some(first) = names.iter().position(|n| n == name.get_ref()) {
                    self.report(self.error(
                        name.span(),
                        entry_key("notify", index, "name"),
                        format!(
                            "notify target #{} is already named {:?}; give every target a \
                             unique name",
                            first + 1,
                            name.get_ref()
                        ),
                    ));
                }
                names.push(name.get_ref().clone());
            } else {
                names.push(String::new());
            }
            if let Some(target) = self.notify(index, entry) {
                targets.push(target);
            }
        }
        targets
    }

    /// One `[[notify]]`; `None` when it has problems (recorded).
    fn notify(&self, index: usize, raw: &Sp<RawNotify>) -> Option<NotifySettings> {
        let errors_before = self.error_count();
        let key = |field: &str| entry_key("notify", index, field);
        let span = raw.span();
        let raw = raw.get_ref();
        let name = match &raw.name {
            Some(name) => self.note(self.target_name(name, &key("name"))),
            None => {
                self.report(self.error(
                    span.clone(),
                    key("name"),
                    "missing: every notify target needs name = \"<unique name>\", such as \
                     \"ops-slack\" (the audit log and the metrics name it)",
                ));
                None
            }
        };
        if let Some(url) = &raw.url {
            // The value is neither read nor echoed: it is the secret itself.
            self.report(self.error(
                url.span(),
                key("url"),
                "a webhook URL is a secret (a Slack webhook URL carries its token), so it may \
                 not be written in the config file; remove it, put the URL in a file readable \
                 only by zt-janitor and set url_file = \"<path>\" (with systemd, \
                 LoadCredential=webhook-url:<file> and url_file = \"%d/webhook-url\"), or \
                 export it and set url_env = \"<VARIABLE>\"",
            ));
        }
        let url = match (&raw.url_file, &raw.url_env) {
            (Some(file), Some(env)) => {
                let later = if env.span().start > file.span().start {
                    (env.span(), "url_env")
                } else {
                    (file.span(), "url_file")
                };
                self.report(self.error(
                    later.0,
                    key(later.1),
                    "both url_file and url_env are set, so where the URL comes from is \
                     ambiguous; keep only one of them",
                ));
                None
            }
            (Some(file), None) => self
                .note(self.non_empty(
                    file,
                    &key("url_file"),
                    "the path of a file holding the webhook URL, e.g. \"%d/webhook-url\" \
                     with systemd's LoadCredential=",
                ))
                .map(|p| UrlSource::File(PathBuf::from(p))),
            (None, Some(env)) => self
                .note(self.url_env(env, &key("url_env")))
                .map(UrlSource::Env),
            (None, None) => {
                if raw.url.is_none() {
                    self.report(self.error(
                        span.clone(),
                        key("url_file"),
                        "missing: say where the webhook URL is read, with url_file = \
                         \"<path>\" or url_env = \"<VARIABLE>\"",
                    ));
                }
                None
            }
        };
        let format = match &raw.format {
            Some(format) => self.note(self.one_of(
                format,
                &key("format"),
                &[("json", NotifyFormat::Json), ("slack", NotifyFormat::Slack)],
            )),
            None => Some(NotifyFormat::Json),
        };
        let send = match &raw.send {
            Some(send) => self.note(self.one_of(
                send,
                &key("send"),
                &[
                    ("changes", NotifySend::Changes),
                    ("always", NotifySend::Always),
                ],
            )),
            None => Some(NotifySend::Changes),
        };
        let min_level = match &raw.min_level {
            Some(level) => self.note(self.one_of(
                level,
                &key("min_level"),
                &[
                    ("actions", NotifyLevel::Actions),
                    ("warnings", NotifyLevel::Warnings),
                    ("errors", NotifyLevel::Errors),
                ],
            )),
            None => Some(NotifyLevel::Actions),
        };
        let max_items = self.number_or(
            &raw.max_items,
            &key("max_items"),
            1..=MAX_NOTIFY_ITEMS as i64,
            DEFAULT_NOTIFY_MAX_ITEMS,
            " (the rest are counted, not listed)",
        );
        let timeout_secs = self.number_or(
            &raw.timeout_secs,
            &key("timeout_secs"),
            1..=300,
            DEFAULT_NOTIFY_TIMEOUT_SECS,
            "",
        );
        let deadline_secs = self.number_or(
            &raw.deadline_secs,
            &key("deadline_secs"),
            1..=MAX_NOTIFY_DEADLINE_SECS as i64,
            DEFAULT_NOTIFY_DEADLINE_SECS,
            " (`once` waits for its deliveries up to this long)",
        );
        if self.error_count() != errors_before {
            return None;
        }
        Some(NotifySettings {
            name: name?,
            format: format?,
            url: url?,
            send: send?,
            min_level: min_level?,
            max_items,
            timeout_secs,
            deadline_secs,
        })
    }

    /// A name for logs, the audit log and a metric label: printable, at most 64 characters.
    fn target_name(&self, name: &Sp<String>, key: &str) -> Result<String, super::Diagnostic> {
        let text = self.non_empty(name, key, "a unique name such as \"ops-slack\"")?;
        if text.chars().count() > 64 || text.chars().any(char::is_control) {
            return Err(self.error(
                name.span(),
                key,
                "must be at most 64 characters, without control characters; use a short \
                 name such as \"ops-slack\"",
            ));
        }
        Ok(text.to_owned())
    }

    fn url_env(&self, name: &Sp<String>, key: &str) -> Result<String, super::Diagnostic> {
        let text = name.get_ref();
        let valid = text
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if valid {
            Ok(text.clone())
        } else {
            // Not echoed: a confused user may have pasted the URL itself here.
            Err(self.error(
                name.span(),
                key,
                "must be the NAME of an environment variable (letters, digits and _), such as \
                 \"ZT_JANITOR_SLACK_URL\"; the webhook URL itself goes in that variable, never \
                 in this file",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::fixtures::{load, MINIMAL};
    use crate::config::{NotifyFormat, NotifyLevel, NotifySend, UrlSource};

    #[test]
    fn notify_targets_are_read_with_their_defaults() {
        let config = load(&format!(
            "{MINIMAL}[[notify]]\nname = \"ops\"\nurl_env = \"OPS_HOOK\"\n\n[[notify]]\n\
             name = \"slack\"\nformat = \"slack\"\nurl_file = \"%d/webhook-url\"\n\
             send = \"always\"\nmin_level = \"errors\"\nmax_items = 5\ntimeout_secs = 3\n\
             deadline_secs = 30\n"
        ))
        .unwrap();
        let [ops, slack] = &config.notify[..] else {
            panic!("{:?}", config.notify)
        };
        assert_eq!(ops.url, UrlSource::Env("OPS_HOOK".into()));
        assert_eq!(
            (ops.format, ops.send, ops.min_level, ops.max_items),
            (
                NotifyFormat::Json,
                NotifySend::Changes,
                NotifyLevel::Actions,
                20
            )
        );
        assert_eq!((ops.timeout_secs, ops.deadline_secs), (10, 60));
        assert_eq!(slack.url, UrlSource::File("%d/webhook-url".into()));
        assert_eq!(
            (slack.format, slack.send, slack.min_level, slack.max_items),
            (
                NotifyFormat::Slack,
                NotifySend::Always,
                NotifyLevel::Errors,
                5
            )
        );
        assert!(config
            .describe()
            .contains("slack: slack webhook, URL read from file"));
    }

    #[test]
    fn bad_notify_tables_are_located() {
        // (case, table, line, col, key, part of the message)
        let cases = [
            ("no URL source", "[[notify]]\nname = \"a\"\n", 9, 1, "[[notify]] #1 url_file", "missing"),
            (
                "both sources",
                "[[notify]]\nname = \"a\"\nurl_env = \"A\"\nurl_file = \"f\"\n",
                12,
                12,
                "[[notify]] #1 url_file",
                "ambiguous",
            ),
            ("no name", "[[notify]]\nurl_env = \"A\"\n", 9, 1, "[[notify]] #1 name", "missing"),
            (
                "a URL in url_env",
                "[[notify]]\nname = \"a\"\nurl_env = \"https://x/y\"\n",
                11,
                11,
                "[[notify]] #1 url_env",
                "NAME of an environment variable",
            ),
            (
                "bad level",
                "[[notify]]\nname = \"a\"\nurl_env = \"A\"\nmin_level = \"info\"\n",
                12,
                13,
                "[[notify]] #1 min_level",
                "\"actions\", \"warnings\" or \"errors\"",
            ),
            (
                "duplicate name",
                "[[notify]]\nname = \"a\"\nurl_env = \"A\"\n[[notify]]\nname = \"a\"\nurl_env = \"B\"\n",
                13,
                8,
                "[[notify]] #2 name",
                "unique",
            ),
        ];
        for (case, table, line, col, key, message) in cases {
            let error = load(&format!("{MINIMAL}{table}")).unwrap_err();
            let p = &error.problems()[0];
            assert_eq!(
                (p.line, p.col, p.key.as_str()),
                (line, col, key),
                "{case}: {error}"
            );
            assert!(p.message.contains(message), "{case}: {}", p.message);
            assert!(
                !error.to_string().contains("https://x/y"),
                "{case}: {error}"
            );
        }
    }
}

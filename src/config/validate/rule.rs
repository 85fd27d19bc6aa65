//! `[[rule]]` and `[[exclude]]` tables: the keys common to every rule (`name`, `resource`,
//! `action`), then what each resource kind's rules and exclusions may say. A new kind's keys are
//! checked here.

use crate::cloudflare::model::RegistrationType;
use crate::resource::{Kind, ResourceId};

use super::super::raw::{RawExclude, RawRule, Sp};
use super::super::{Action, ConfigError, ExclusionSettings, RuleSettings};
use super::{entry_key, Validator};

/// Upper bound for day counts: a century is more than any real policy, and it keeps
/// `now - days` far from chrono's date range limits.
const MAX_DAYS: i64 = 36_500;

impl Validator<'_> {
    pub(super) fn rule(&self, index: usize, raw: Sp<RawRule>) -> Result<RuleSettings, ConfigError> {
        let key = |field: &str| entry_key("rule", index, field);
        let span = raw.span();
        let raw = raw.into_inner();
        let required = |field: &str, example: &str| {
            self.error(
                span.clone(),
                key(field),
                format!("missing: every rule needs {field} = {example}"),
            )
        };

        let name = raw
            .name
            .as_ref()
            .ok_or_else(|| required("name", "\"<unique name>\""))?;
        self.non_empty(name, &key("name"), "a unique name such as \"idle-90d\"")?;
        let resource = raw
            .resource
            .as_ref()
            .ok_or_else(|| required("resource", "\"device_registration\""))?;
        let resource = self.one_of_with(
            resource,
            &key("resource"),
            &Kind::ALL.map(|k| (k.as_str(), k)),
            " (service tokens, API tokens and client certificates are not supported yet)",
        )?;
        let action = raw
            .action
            .as_ref()
            .ok_or_else(|| required("action", "\"delete\" or \"revoke\""))?;
        let action_span = action.span();
        let action = self.one_of(
            action,
            &key("action"),
            &[("delete", Action::Delete), ("revoke", Action::Revoke)],
        )?;
        let registration_type = match &raw.registration_type {
            Some(t) => Some(self.one_of(
                t,
                &key("registration_type"),
                &[
                    ("warp", RegistrationType::Warp),
                    ("browser_extension", RegistrationType::BrowserExtension),
                ],
            )?),
            None => None,
        };
        let idle_days = match &raw.idle_days {
            Some(days) => Some(self.number(
                days,
                &key("idle_days"),
                1..=MAX_DAYS,
                " (0 would select every registration)",
            )?),
            None => None,
        };
        let revoked_min_days = match &raw.revoked_min_days {
            Some(days) => Some(self.number(days, &key("revoked_min_days"), 0..=MAX_DAYS, "")?),
            None => None,
        };
        let revoked = raw.revoked.as_ref().is_some_and(|r| *r.get_ref());
        let active_only = raw.active_only.as_ref().is_some_and(|a| *a.get_ref());

        if idle_days.is_none() && !revoked {
            return Err(self.error(
                span,
                format!("[[rule]] #{}", index + 1),
                "this rule selects nothing: set idle_days = <days> and/or revoked = true \
                 (active_only and registration_type only narrow a selection)",
            ));
        }
        if let (Some(days), false) = (&raw.revoked_min_days, revoked) {
            return Err(self.error(
                days.span(),
                key("revoked_min_days"),
                "only applies to revoked registrations; add revoked = true or remove it",
            ));
        }
        if let (Some(a), true) = (&raw.active_only, revoked && active_only) {
            return Err(self.error(
                a.span(),
                key("active_only"),
                "contradicts revoked = true (a registration cannot be both); remove one of them",
            ));
        }
        if revoked && action == Action::Revoke {
            return Err(self.error(
                action_span,
                key("action"),
                "revoking registrations that are already revoked does nothing; use \
                 action = \"delete\" to remove them",
            ));
        }
        Ok(RuleSettings {
            name: name.get_ref().clone(),
            resource,
            action,
            idle_days,
            revoked,
            revoked_min_days,
            active_only,
            registration_type,
        })
    }

    pub(super) fn exclusion(
        &self,
        index: usize,
        raw: Sp<RawExclude>,
    ) -> Result<ExclusionSettings, ConfigError> {
        let key = |field: &str| entry_key("exclude", index, field);
        let span = raw.span();
        let raw = raw.into_inner();
        let name = match &raw.name {
            Some(name) => self
                .non_empty(name, &key("name"), "a name, or leave name out")?
                .to_owned(),
            None => format!("exclude #{}", index + 1),
        };
        let globs = |patterns: Option<Vec<Sp<String>>>, field: &str| {
            patterns
                .unwrap_or_default()
                .into_iter()
                .map(|p| self.glob(p, &key(field)))
                .collect::<Result<Vec<_>, _>>()
        };
        let user_emails = globs(raw.user_email, "user_email")?;
        let device_names = globs(raw.device_name, "device_name")?;
        let registration_ids = raw
            .registration_id
            .unwrap_or_default()
            .into_iter()
            .map(|id| {
                ResourceId::parse(id.get_ref())
                    .map_err(|m| self.error(id.span(), key("registration_id"), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let no_user = raw.no_user.unwrap_or(false);
        if user_emails.is_empty()
            && device_names.is_empty()
            && registration_ids.is_empty()
            && !no_user
        {
            return Err(self.error(
                span,
                format!("[[exclude]] #{}", index + 1),
                "this exclusion matches nothing; give at least one of user_email = [...], \
                 device_name = [...], registration_id = [...] or no_user = true",
            ));
        }
        Ok(ExclusionSettings {
            name,
            user_emails,
            device_names,
            registration_ids,
            no_user,
        })
    }
}

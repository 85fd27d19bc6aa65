//! `[[rule]]` and `[[exclude]]` tables: the keys common to every rule (`name`, `resource`,
//! `action`), then what each resource kind's rules and exclusions may say. A new kind's keys are
//! checked here: listed in `keys_fit`, read in a function of its own.

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
            " (account API tokens and client certificates are not supported yet)",
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
        self.keys_fit(index, &raw, resource)?;
        let mut rule = RuleSettings::new(name.get_ref(), resource, action);
        match resource {
            Kind::DeviceRegistration => self.registration_rule(index, span, &raw, &mut rule)?,
            Kind::AccessServiceToken => {
                if action != Action::Delete {
                    return Err(self.error(
                        action_span,
                        key("action"),
                        "service tokens can only be deleted: use action = \"delete\"",
                    ));
                }
                self.service_token_rule(index, span, raw, &mut rule)?;
            }
        }
        if rule.resource == Kind::DeviceRegistration && rule.revoked && action == Action::Revoke {
            return Err(self.error(
                action_span,
                key("action"),
                "revoking registrations that are already revoked does nothing; use \
                 action = \"delete\" to remove them",
            ));
        }
        Ok(rule)
    }

    /// A key that belongs to another kind's rules is an error that names the keys that fit.
    fn keys_fit(&self, index: usize, raw: &RawRule, resource: Kind) -> Result<(), ConfigError> {
        let registration = [
            ("idle_days", raw.idle_days.as_ref().map(Sp::span)),
            ("revoked", raw.revoked.as_ref().map(Sp::span)),
            (
                "revoked_min_days",
                raw.revoked_min_days.as_ref().map(Sp::span),
            ),
            ("active_only", raw.active_only.as_ref().map(Sp::span)),
            (
                "registration_type",
                raw.registration_type.as_ref().map(Sp::span),
            ),
        ];
        let service_token = [
            ("expired_days", raw.expired_days.as_ref().map(Sp::span)),
            ("unused_days", raw.unused_days.as_ref().map(Sp::span)),
            (
                "service_token_name",
                raw.service_token_name.as_ref().map(Sp::span),
            ),
        ];
        let (fit, misfit) = match resource {
            Kind::DeviceRegistration => (&registration[..], &service_token[..]),
            Kind::AccessServiceToken => (&service_token[..], &registration[..]),
        };
        if let Some((field, Some(span))) = misfit.iter().find(|(_, span)| span.is_some()) {
            let fitting: Vec<&str> = fit.iter().map(|(k, _)| *k).collect();
            return Err(self.error(
                span.clone(),
                entry_key("rule", index, field),
                format!(
                    "does not apply to resource = \"{resource}\"; its rules take name, \
                     resource, action, {}",
                    fitting.join(", ")
                ),
            ));
        }
        Ok(())
    }

    fn registration_rule(
        &self,
        index: usize,
        span: std::ops::Range<usize>,
        raw: &RawRule,
        rule: &mut RuleSettings,
    ) -> Result<(), ConfigError> {
        let key = |field: &str| entry_key("rule", index, field);
        rule.registration_type = match &raw.registration_type {
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
        rule.idle_days = match &raw.idle_days {
            Some(days) => Some(self.number(
                days,
                &key("idle_days"),
                1..=MAX_DAYS,
                " (0 would select every registration)",
            )?),
            None => None,
        };
        rule.revoked_min_days = match &raw.revoked_min_days {
            Some(days) => Some(self.number(days, &key("revoked_min_days"), 0..=MAX_DAYS, "")?),
            None => None,
        };
        rule.revoked = raw.revoked.as_ref().is_some_and(|r| *r.get_ref());
        rule.active_only = raw.active_only.as_ref().is_some_and(|a| *a.get_ref());

        if rule.idle_days.is_none() && !rule.revoked {
            return Err(self.error(
                span,
                format!("[[rule]] #{}", index + 1),
                "this rule selects nothing: set idle_days = <days> and/or revoked = true \
                 (active_only and registration_type only narrow a selection)",
            ));
        }
        if let (Some(days), false) = (&raw.revoked_min_days, rule.revoked) {
            return Err(self.error(
                days.span(),
                key("revoked_min_days"),
                "only applies to revoked registrations; add revoked = true or remove it",
            ));
        }
        if let (Some(a), true) = (&raw.active_only, rule.revoked && rule.active_only) {
            return Err(self.error(
                a.span(),
                key("active_only"),
                "contradicts revoked = true (a registration cannot be both); remove one of them",
            ));
        }
        Ok(())
    }

    fn service_token_rule(
        &self,
        index: usize,
        span: std::ops::Range<usize>,
        raw: RawRule,
        rule: &mut RuleSettings,
    ) -> Result<(), ConfigError> {
        let key = |field: &str| entry_key("rule", index, field);
        rule.expired_days = match &raw.expired_days {
            Some(days) => Some(self.number(days, &key("expired_days"), 0..=MAX_DAYS, "")?),
            None => None,
        };
        rule.unused_days = match &raw.unused_days {
            Some(days) => Some(self.number(
                days,
                &key("unused_days"),
                1..=MAX_DAYS,
                " (0 would select every token)",
            )?),
            None => None,
        };
        if let Some(names) = raw.service_token_name {
            let names_span = names.span();
            let names = names
                .into_inner()
                .into_iter()
                .map(|p| self.glob(p, &key("service_token_name")))
                .collect::<Result<Vec<_>, _>>()?;
            if names.is_empty() {
                return Err(self.error(
                    names_span,
                    key("service_token_name"),
                    "an empty list matches no token, so the rule would select nothing; \
                     give patterns such as [\"ci-*\"] or remove the key",
                ));
            }
            rule.names = Some(names);
        }
        if rule.expired_days.is_none() && rule.unused_days.is_none() {
            return Err(self.error(
                span,
                format!("[[rule]] #{}", index + 1),
                "this rule selects nothing: set expired_days = <days> and/or unused_days = \
                 <days> (service_token_name only narrows a selection)",
            ));
        }
        Ok(())
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
        let registration_ids = self.ids(
            raw.registration_id,
            &key("registration_id"),
            Kind::DeviceRegistration,
        )?;
        let no_user = raw.no_user.unwrap_or(false);
        let service_token_names = globs(raw.service_token_name, "service_token_name")?;
        let service_token_ids = self.ids(
            raw.service_token_id,
            &key("service_token_id"),
            Kind::AccessServiceToken,
        )?;
        if user_emails.is_empty()
            && device_names.is_empty()
            && registration_ids.is_empty()
            && !no_user
            && service_token_names.is_empty()
            && service_token_ids.is_empty()
        {
            return Err(self.error(
                span,
                format!("[[exclude]] #{}", index + 1),
                "this exclusion matches nothing; give at least one of user_email = [...], \
                 device_name = [...], registration_id = [...], no_user = true (device \
                 registrations), service_token_name = [...] or service_token_id = [...] \
                 (service tokens)",
            ));
        }
        Ok(ExclusionSettings {
            name,
            user_emails,
            device_names,
            registration_ids,
            no_user,
            service_token_names,
            service_token_ids,
        })
    }

    /// Ids of objects of `kind`.
    fn ids(
        &self,
        raw: Option<Vec<Sp<String>>>,
        key: &str,
        kind: Kind,
    ) -> Result<Vec<ResourceId>, ConfigError> {
        raw.unwrap_or_default()
            .into_iter()
            .map(|id| {
                ResourceId::parse(id.get_ref()).map_err(|_| {
                    self.error(
                        id.span(),
                        key,
                        format!(
                            "{:?} is not a {} id: expected a UUID such as \
                             \"0b9a1c2e-6f0e-4a53-9d0e-5b7a3f1c2d4e\"",
                            id.get_ref(),
                            kind.noun().0
                        ),
                    )
                })
            })
            .collect()
    }
}

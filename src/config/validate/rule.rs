//! `[[rule]]` and `[[exclude]]` tables: the keys common to every rule (`name`, `resource`,
//! `action`), then what each resource kind's rules and exclusions may say. A new kind's keys are
//! checked here: listed in `keys_fit`, read in a function of its own.

use crate::cloudflare::model::{RegistrationType, ZoneId};
use crate::resource::{Kind, ResourceId};

use super::super::raw::{RawExclude, RawRule, Sp};
use super::super::{Action, ConfigError, ExclusionSettings, RuleSettings};
use super::{entry_key, Validator};

/// A rule key, where it is set, and the kinds whose rules take it.
type KeyUse = (
    &'static str,
    Option<std::ops::Range<usize>>,
    &'static [Kind],
);

/// Upper bound for day counts: a century is more than any real policy, and it keeps
/// `now - days` far from chrono's date range limits.
const MAX_DAYS: i64 = 36_500;

impl Validator<'_> {
    pub(super) fn rule(
        &self,
        index: usize,
        raw: Sp<RawRule>,
        zones: &[ZoneId],
    ) -> Result<RuleSettings, ConfigError> {
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
        let resource_span = resource.span();
        let resource = self.one_of(
            resource,
            &key("resource"),
            &Kind::ALL.map(|k| (k.as_str(), k)),
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
        // What each kind's API can do: tokens are deleted, certificates revoked.
        let only = match resource {
            Kind::AccessServiceToken => {
                Some((Action::Delete, "service tokens can only be deleted"))
            }
            Kind::AccountApiToken => {
                Some((Action::Delete, "account API tokens can only be deleted"))
            }
            Kind::ClientCertificate => Some((
                Action::Revoke,
                "client certificates can only be revoked (the API's DELETE revokes them)",
            )),
            Kind::DeviceRegistration => None,
        };
        if let Some((only, why)) = only.filter(|(only, _)| *only != action) {
            return Err(self.error(
                action_span,
                key("action"),
                format!("{why}: use action = \"{only}\""),
            ));
        }
        if resource.zoned() && zones.is_empty() {
            return Err(self.error(
                resource_span,
                key("resource"),
                "client certificates live in zones: add zone_ids = [\"<32 lowercase hex \
                 characters>\", ...] to [cloudflare] (each zone's overview page shows its id)",
            ));
        }
        let mut rule = RuleSettings::new(name.get_ref(), resource, action);
        match resource {
            Kind::DeviceRegistration => self.registration_rule(index, span, &raw, &mut rule)?,
            Kind::AccessServiceToken | Kind::AccountApiToken | Kind::ClientCertificate => {
                self.token_or_certificate_rule(index, span, raw, &mut rule)?
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
        use Kind::*;
        // (key, where it is set, the kinds it fits), in the order the error lists them.
        let keys: [KeyUse; 12] = [
            (
                "idle_days",
                raw.idle_days.as_ref().map(Sp::span),
                &[DeviceRegistration],
            ),
            (
                "revoked",
                raw.revoked.as_ref().map(Sp::span),
                &[DeviceRegistration],
            ),
            (
                "revoked_min_days",
                raw.revoked_min_days.as_ref().map(Sp::span),
                &[DeviceRegistration],
            ),
            (
                "active_only",
                raw.active_only.as_ref().map(Sp::span),
                &[DeviceRegistration],
            ),
            (
                "registration_type",
                raw.registration_type.as_ref().map(Sp::span),
                &[DeviceRegistration],
            ),
            (
                "expired_days",
                raw.expired_days.as_ref().map(Sp::span),
                &[AccessServiceToken, AccountApiToken, ClientCertificate],
            ),
            (
                "unused_days",
                raw.unused_days.as_ref().map(Sp::span),
                &[AccessServiceToken, AccountApiToken],
            ),
            (
                "disabled_days",
                raw.disabled_days.as_ref().map(Sp::span),
                &[AccountApiToken],
            ),
            (
                "service_token_name",
                raw.service_token_name.as_ref().map(Sp::span),
                &[AccessServiceToken],
            ),
            (
                "account_api_token_name",
                raw.account_api_token_name.as_ref().map(Sp::span),
                &[AccountApiToken],
            ),
            (
                "common_name",
                raw.common_name.as_ref().map(Sp::span),
                &[ClientCertificate],
            ),
            (
                "certificate_authority",
                raw.certificate_authority.as_ref().map(Sp::span),
                &[ClientCertificate],
            ),
        ];
        let misfit = keys
            .iter()
            .find(|(_, set, fits)| set.is_some() && !fits.contains(&resource));
        if let Some((field, Some(span), _)) = misfit {
            let fitting: Vec<&str> = keys
                .iter()
                .filter(|(_, _, fits)| fits.contains(&resource))
                .map(|(k, _, _)| *k)
                .collect();
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

    /// The rules of service tokens, account API tokens and client certificates: day counts on
    /// their stamps, and name filters (`keys_fit` has already refused another kind's keys).
    fn token_or_certificate_rule(
        &self,
        index: usize,
        span: std::ops::Range<usize>,
        raw: RawRule,
        rule: &mut RuleSettings,
    ) -> Result<(), ConfigError> {
        let key = |field: &str| entry_key("rule", index, field);
        let (_, things) = rule.resource.noun();
        let days =
            |value: &Option<Sp<i64>>, field: &str, min: i64| -> Result<Option<u32>, ConfigError> {
                match value {
                    Some(days) => {
                        let why = if min > 0 {
                            format!(" (0 would select every one of the {things})")
                        } else {
                            String::new()
                        };
                        Ok(Some(self.number(
                            days,
                            &key(field),
                            min..=MAX_DAYS,
                            &why,
                        )?))
                    }
                    None => Ok(None),
                }
            };
        rule.expired_days = days(&raw.expired_days, "expired_days", 0)?;
        rule.unused_days = days(&raw.unused_days, "unused_days", 1)?;
        rule.disabled_days = days(&raw.disabled_days, "disabled_days", 0)?;
        let names = |globs: Option<Sp<Vec<Sp<String>>>>, field: &str| {
            let Some(globs) = globs else {
                return Ok(None);
            };
            let globs_span = globs.span();
            let globs = globs
                .into_inner()
                .into_iter()
                .map(|p| self.glob(p, &key(field)))
                .collect::<Result<Vec<_>, _>>()?;
            if globs.is_empty() {
                return Err(self.error(
                    globs_span,
                    key(field),
                    format!(
                        "an empty list matches none of the {things}, so the rule would select \
                         nothing; give patterns such as [\"ci-*\"] or remove the key"
                    ),
                ));
            }
            Ok(Some(globs))
        };
        rule.names = match rule.resource {
            Kind::AccountApiToken => names(raw.account_api_token_name, "account_api_token_name")?,
            _ => names(raw.service_token_name, "service_token_name")?,
        };
        rule.common_names = names(raw.common_name, "common_name")?;
        rule.certificate_authority = match &raw.certificate_authority {
            Some(ca) => Some(
                self.non_empty(
                    ca,
                    &key("certificate_authority"),
                    "the id or the name of a certificate authority",
                )?
                .to_owned(),
            ),
            None => None,
        };
        if rule.expired_days.is_none() && rule.unused_days.is_none() && rule.disabled_days.is_none()
        {
            let selecting = match rule.resource {
                Kind::AccessServiceToken => {
                    "set expired_days = <days> and/or unused_days = <days> (service_token_name \
                     only narrows a selection)"
                }
                Kind::AccountApiToken => {
                    "set expired_days, disabled_days and/or unused_days = <days> \
                     (account_api_token_name only narrows a selection)"
                }
                _ => {
                    "set expired_days = <days> (common_name and certificate_authority only \
                     narrow a selection)"
                }
            };
            return Err(self.error(
                span,
                format!("[[rule]] #{}", index + 1),
                format!("this rule selects nothing: {selecting}"),
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
        let account_api_token_names = globs(raw.account_api_token_name, "account_api_token_name")?;
        let account_api_token_ids = self.ids(
            raw.account_api_token_id,
            &key("account_api_token_id"),
            Kind::AccountApiToken,
        )?;
        let common_names = globs(raw.common_name, "common_name")?;
        let client_certificate_ids = self.ids(
            raw.client_certificate_id,
            &key("client_certificate_id"),
            Kind::ClientCertificate,
        )?;
        if user_emails.is_empty()
            && device_names.is_empty()
            && registration_ids.is_empty()
            && !no_user
            && service_token_names.is_empty()
            && service_token_ids.is_empty()
            && account_api_token_names.is_empty()
            && account_api_token_ids.is_empty()
            && common_names.is_empty()
            && client_certificate_ids.is_empty()
        {
            return Err(self.error(
                span,
                format!("[[exclude]] #{}", index + 1),
                "this exclusion matches nothing; give at least one of user_email = [...], \
                 device_name = [...], registration_id = [...], no_user = true (device \
                 registrations), service_token_name = [...] or service_token_id = [...] \
                 (service tokens), account_api_token_name = [...] or account_api_token_id = \
                 [...] (account API tokens), common_name = [...] or client_certificate_id = \
                 [...] (client certificates)",
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
            account_api_token_names,
            account_api_token_ids,
            common_names,
            client_certificate_ids,
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

//! `[[rule]]` and `[[exclude]]` tables: the keys common to every rule (`name`, `resource`,
//! `action`), then what each resource kind's rules and exclusions may say. A new kind's keys are
//! checked here: listed in `keys_fit`, read in a function of its own.

use crate::cloudflare::model::{RegistrationType, ZoneId};
use crate::resource::{Kind, ResourceId};

use super::super::raw::{RawExclude, RawRule, Sp};
use super::super::{Action, ExclusionSettings, RuleSettings};
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

/// The longest grace period: ten years is already "never" for a janitor.
pub(super) const MAX_GRACE_DAYS: i64 = 3650;

impl Validator<'_> {
    /// One `[[rule]]`; `None` when it has problems (recorded). The keys every rule has are
    /// checked each on its own; the rest depends on the rule's kind, and is checked only when
    /// the kind is known.
    pub(super) fn rule(
        &self,
        index: usize,
        raw: &Sp<RawRule>,
        zones: &[ZoneId],
        grace_days: u32,
    ) -> Option<RuleSettings> {
        let errors_before = self.error_count();
        let key = |field: &str| entry_key("rule", index, field);
        let span = raw.span();
        let raw = raw.get_ref();
        let required = |field: &str, example: &str| {
            self.report(self.error(
                span.clone(),
                key(field),
                format!("missing: every rule needs {field} = {example}"),
            ))
        };

        let name = match &raw.name {
            Some(name) => self
                .note(self.non_empty(name, &key("name"), "a unique name such as \"idle-90d\""))
                .map(str::to_owned),
            None => {
                required("name", "\"<unique name>\"");
                None
            }
        };
        let resource = match &raw.resource {
            Some(resource) => self
                .note(self.one_of(
                    resource,
                    &key("resource"),
                    &Kind::ALL.map(|k| (k.as_str(), k)),
                ))
                .map(|kind| (kind, resource.span())),
            None => {
                required("resource", "\"device_registration\"");
                None
            }
        };
        let action = match &raw.action {
            Some(action) => self
                .note(self.one_of(
                    action,
                    &key("action"),
                    &[("delete", Action::Delete), ("revoke", Action::Revoke)],
                ))
                .map(|a| (a, action.span())),
            None => {
                required("action", "\"delete\" or \"revoke\"");
                None
            }
        };
        // Everything below depends on the kind.
        let (resource, resource_span) = resource?;
        // A key of another kind's rules was probably meant to select: whether the rule
        // selects anything cannot be told then.
        let errors_before_kind = self.error_count();
        self.keys_fit(index, raw, resource);
        if let Some((action, action_span)) = &action {
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
            if let Some((only, why)) = only.filter(|(only, _)| only != action) {
                self.report(self.error(
                    action_span.clone(),
                    key("action"),
                    format!("{why}: use action = \"{only}\""),
                ));
            }
        }
        if resource.zoned() && zones.is_empty() {
            self.report(self.error(
                resource_span,
                key("resource"),
                "client certificates live in zones: add zone_ids = [\"<32 lowercase hex \
                 characters>\", ...] to [cloudflare] (each zone's overview page shows its id)",
            ));
        }
        let mut rule = RuleSettings::new(
            name.as_deref().unwrap_or(""),
            resource,
            action.as_ref().map_or(Action::Delete, |(a, _)| *a),
        );
        rule.grace_days = match &raw.grace_days {
            Some(days) => self
                .note(self.number(
                    days,
                    &entry_key("rule", index, "grace_days"),
                    0..=MAX_GRACE_DAYS,
                    " (0 acts on first sight)",
                ))
                .unwrap_or(grace_days),
            None => grace_days,
        };
        match resource {
            Kind::DeviceRegistration => {
                self.registration_rule(index, span, raw, &mut rule, errors_before_kind)
            }
            Kind::AccessServiceToken | Kind::AccountApiToken | Kind::ClientCertificate => {
                self.token_or_certificate_rule(index, span, raw, &mut rule, errors_before_kind)
            }
        }
        if let Some((Action::Revoke, action_span)) = &action {
            if rule.resource == Kind::DeviceRegistration && rule.revoked {
                self.report(self.error(
                    action_span.clone(),
                    key("action"),
                    "revoking registrations that are already revoked does nothing; use \
                     action = \"delete\" to remove them",
                ));
            }
        }
        (self.error_count() == errors_before).then_some(rule)
    }

    /// Each key that belongs to another kind's rules is an error that names the keys that fit.
    fn keys_fit(&self, index: usize, raw: &RawRule, resource: Kind) {
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
        let fitting: Vec<&str> = keys
            .iter()
            .filter(|(_, _, fits)| fits.contains(&resource))
            .map(|(k, _, _)| *k)
            .collect();
        for (field, span, fits) in &keys {
            if let (Some(span), false) = (span, fits.contains(&resource)) {
                self.report(self.error(
                    span.clone(),
                    entry_key("rule", index, field),
                    format!(
                        "does not apply to resource = \"{resource}\"; its rules take name, \
                         resource, action, {}",
                        fitting.join(", ")
                    ),
                ));
            }
        }
    }

    fn registration_rule(
        &self,
        index: usize,
        span: std::ops::Range<usize>,
        raw: &RawRule,
        rule: &mut RuleSettings,
        errors_before: usize,
    ) {
        let key = |field: &str| entry_key("rule", index, field);
        rule.registration_type = raw.registration_type.as_ref().and_then(|t| {
            self.note(self.one_of(
                t,
                &key("registration_type"),
                &[
                    ("warp", RegistrationType::Warp),
                    ("browser_extension", RegistrationType::BrowserExtension),
                ],
            ))
        });
        rule.idle_days = raw.idle_days.as_ref().and_then(|days| {
            self.note(self.number(
                days,
                &key("idle_days"),
                1..=MAX_DAYS,
                " (0 would select every registration)",
            ))
        });
        rule.revoked_min_days = raw.revoked_min_days.as_ref().and_then(|days| {
            self.note(self.number(days, &key("revoked_min_days"), 0..=MAX_DAYS, ""))
        });
        rule.revoked = raw.revoked.as_ref().is_some_and(|r| *r.get_ref());
        rule.active_only = raw.active_only.as_ref().is_some_and(|a| *a.get_ref());
        if self.error_count() != errors_before {
            // What the rule selects is unknown, so nothing can be said about it.
            return;
        }

        if rule.idle_days.is_none() && !rule.revoked {
            self.report(self.error(
                span,
                format!("[[rule]] #{}", index + 1),
                "this rule selects nothing: set idle_days = <days> and/or revoked = true \
                 (active_only and registration_type only narrow a selection)",
            ));
        }
        if let (Some(days), false) = (&raw.revoked_min_days, rule.revoked) {
            self.report(self.error(
                days.span(),
                key("revoked_min_days"),
                "only applies to revoked registrations; add revoked = true or remove it",
            ));
        }
        if let (Some(a), true) = (&raw.active_only, rule.revoked && rule.active_only) {
            self.report(self.error(
                a.span(),
                key("active_only"),
                "contradicts revoked = true (a registration cannot be both); remove one of them",
            ));
        }
    }

    /// The rules of service tokens, account API tokens and client certificates: day counts on
    /// their stamps, and name filters (`keys_fit` has already refused another kind's keys).
    fn token_or_certificate_rule(
        &self,
        index: usize,
        span: std::ops::Range<usize>,
        raw: &RawRule,
        rule: &mut RuleSettings,
        errors_before: usize,
    ) {
        let key = |field: &str| entry_key("rule", index, field);
        let (_, things) = rule.resource.noun();
        let days = |value: &Option<Sp<i64>>, field: &str, min: i64| -> Option<u32> {
            let days = value.as_ref()?;
            let why = if min > 0 {
                format!(" (0 would select every one of the {things})")
            } else {
                String::new()
            };
            self.note(self.number(days, &key(field), min..=MAX_DAYS, &why))
        };
        rule.expired_days = days(&raw.expired_days, "expired_days", 0);
        rule.unused_days = days(&raw.unused_days, "unused_days", 1);
        rule.disabled_days = days(&raw.disabled_days, "disabled_days", 0);
        let names = |globs: &Option<Sp<Vec<Sp<String>>>>, field: &str| {
            let globs = globs.as_ref()?;
            let patterns: Vec<String> = globs
                .get_ref()
                .iter()
                .filter_map(|p| self.note(self.glob(p, &key(field))))
                .collect();
            if globs.get_ref().is_empty() {
                self.report(self.error(
                    globs.span(),
                    key(field),
                    format!(
                        "an empty list matches none of the {things}, so the rule would select \
                         nothing; give patterns such as [\"ci-*\"] or remove the key"
                    ),
                ));
            }
            Some(patterns)
        };
        rule.names = match rule.resource {
            Kind::AccountApiToken => names(&raw.account_api_token_name, "account_api_token_name"),
            _ => names(&raw.service_token_name, "service_token_name"),
        };
        rule.common_names = names(&raw.common_name, "common_name");
        rule.certificate_authority = raw.certificate_authority.as_ref().and_then(|ca| {
            self.note(self.non_empty(
                ca,
                &key("certificate_authority"),
                "the id or the name of a certificate authority",
            ))
            .map(str::to_owned)
        });
        if self.error_count() != errors_before {
            // What the rule selects is unknown, so nothing can be said about it.
            return;
        }
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
            self.report(self.error(
                span,
                format!("[[rule]] #{}", index + 1),
                format!("this rule selects nothing: {selecting}"),
            ));
        }
    }

    /// One `[[exclude]]`; `None` when it has problems (recorded).
    pub(super) fn exclusion(
        &self,
        index: usize,
        raw: &Sp<RawExclude>,
    ) -> Option<ExclusionSettings> {
        let errors_before = self.error_count();
        let key = |field: &str| entry_key("exclude", index, field);
        let span = raw.span();
        let raw = raw.get_ref();
        let name = match &raw.name {
            Some(name) => self
                .note(self.non_empty(name, &key("name"), "a name, or leave name out"))
                .unwrap_or_default()
                .to_owned(),
            None => format!("exclude #{}", index + 1),
        };
        let globs = |patterns: &Option<Vec<Sp<String>>>, field: &str| -> Vec<String> {
            patterns
                .iter()
                .flatten()
                .filter_map(|p| self.note(self.glob(p, &key(field))))
                .collect()
        };
        let user_emails = globs(&raw.user_email, "user_email");
        let device_names = globs(&raw.device_name, "device_name");
        let registration_ids = self.ids(
            &raw.registration_id,
            &key("registration_id"),
            Kind::DeviceRegistration,
        );
        let no_user = raw.no_user.unwrap_or(false);
        let service_token_names = globs(&raw.service_token_name, "service_token_name");
        let service_token_ids = self.ids(
            &raw.service_token_id,
            &key("service_token_id"),
            Kind::AccessServiceToken,
        );
        let account_api_token_names = globs(&raw.account_api_token_name, "account_api_token_name");
        let account_api_token_ids = self.ids(
            &raw.account_api_token_id,
            &key("account_api_token_id"),
            Kind::AccountApiToken,
        );
        let common_names = globs(&raw.common_name, "common_name");
        let client_certificate_ids = self.ids(
            &raw.client_certificate_id,
            &key("client_certificate_id"),
            Kind::ClientCertificate,
        );
        if self.error_count() != errors_before {
            return None;
        }
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
            self.report(self.error(
                span,
                format!("[[exclude]] #{}", index + 1),
                "this exclusion matches nothing; give at least one of user_email = [...], \
                 device_name = [...], registration_id = [...], no_user = true (device \
                 registrations), service_token_name = [...] or service_token_id = [...] \
                 (service tokens), account_api_token_name = [...] or account_api_token_id = \
                 [...] (account API tokens), common_name = [...] or client_certificate_id = \
                 [...] (client certificates)",
            ));
            return None;
        }
        Some(ExclusionSettings {
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

    /// Ids of objects of `kind`; the bad ones are recorded and left out.
    fn ids(&self, raw: &Option<Vec<Sp<String>>>, key: &str, kind: Kind) -> Vec<ResourceId> {
        raw.iter()
            .flatten()
            .filter_map(|id| {
                self.note(ResourceId::parse(id.get_ref()).map_err(|_| {
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
                }))
            })
            .collect()
    }
}

//! Saved plans: `zt-janitor plan --out FILE` writes what a run would act on, and
//! `zt-janitor apply FILE` acts on those targets and no others (terraform's contract: apply
//! what was reviewed). A saved plan names the account, a fingerprint of the settings its
//! decisions rest on, and when it was made; `apply` refuses one made for another account or
//! with other settings, or older than its maximum age. Each target is still checked against a
//! fresh listing: one that is no longer a candidate is skipped, and the skip is audited.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::cloudflare::ZoneId;
use crate::config::{Action, Config};
use crate::plan::{CapCheck, Plan, SeenCounts};
use crate::resource::{IdKey, Kind, ResourceId};

/// The version of the file's shape; a file of another version is refused, not guessed at.
pub const SCHEMA_VERSION: u32 = 1;
/// What the file says it is, so that another JSON document is not taken for a plan.
const DOCUMENT: &str = "zt-janitor saved plan";
/// A plan claiming to be made later than this in the future is refused (clock skew allowed).
const FUTURE_SKEW: TimeDelta = TimeDelta::minutes(5);

#[derive(Debug, thiserror::Error)]
pub enum SavedPlanError {
    #[error("cannot read the saved plan {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the saved plan {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a zt-janitor saved plan ({message}); make one with `zt-janitor plan --out FILE`")]
    NotAPlan { path: PathBuf, message: String },
    #[error("{path} is a saved plan of version {found}, this zt-janitor reads version {SCHEMA_VERSION}; make a new plan with this version")]
    Version { path: PathBuf, found: u32 },
    #[error("{path} was made for account {planned}, but the config names account {configured}; apply it with the config it was made with")]
    Account {
        path: PathBuf,
        planned: String,
        configured: String,
    },
    #[error("{path} was made with other settings (rules, exclusions, caps, zones or zt-janitor version) than the config has now; make a new plan and review it")]
    Config { path: PathBuf },
    #[error("{path} was made at {generated_at}, {age} ago, more than --max-age-hours {max_hours} allows; make a new plan and review it")]
    TooOld {
        path: PathBuf,
        generated_at: DateTime<Utc>,
        age: String,
        max_hours: u64,
    },
    #[error("{path} claims to be made at {generated_at}, in the future; check this machine's clock, or make a new plan")]
    FromTheFuture {
        path: PathBuf,
        generated_at: DateTime<Utc>,
    },
}

/// What the decisions of a plan rest on, hashed: the account, the zones, the caps, the rules
/// and exclusions, and the janitor's version (whose rules may read the same settings
/// differently). Not the mode, the schedule or where things are logged.
pub fn config_fingerprint(config: &Config) -> String {
    let material = format!(
        "{}\n{:?}\n{:?}\n{}\n{}\n{:?}\n{:?}",
        env!("CARGO_PKG_VERSION"),
        config.cloudflare.account_id,
        config.cloudflare.zone_ids,
        config.safety.max_actions_per_run,
        config.safety.max_fraction_per_run,
        config.rules,
        config.exclusions,
    );
    hex(&Sha256::digest(material.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The file `plan --out` writes.
#[derive(Serialize)]
struct SavedPlanOut<'a> {
    schema_version: u32,
    document: &'static str,
    janitor_version: &'static str,
    account_id: &'a str,
    config_sha256: String,
    generated_at: DateTime<Utc>,
    parts: Vec<PartOut<'a>>,
}

#[derive(Serialize)]
struct PartOut<'a> {
    resource: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    zone: Option<&'a ZoneId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    blocked: Option<&'a str>,
    seen: SeenCounts,
    caps: &'a CapCheck,
    targets: Vec<TargetOut<'a>>,
}

#[derive(Serialize)]
struct TargetOut<'a> {
    id: &'a ResourceId,
    rule: &'a str,
    action: Action,
    name: &'a str,
    user_email: Option<&'a str>,
    reason: String,
    /// The object as it was listed when the plan was made.
    snapshot: Option<&'a RawValue>,
}

/// Writes `plans` (made by [`crate::plan::preview`] with snapshots kept) to `path` as a saved
/// plan: the actionable candidates only; excluded ones are never acted on anyway. Written to
/// a temporary file and renamed, so a reader never sees half a plan.
pub fn write(
    path: &Path,
    config: &Config,
    generated_at: DateTime<Utc>,
    plans: &[Plan],
) -> Result<(), SavedPlanError> {
    let doc = SavedPlanOut {
        schema_version: SCHEMA_VERSION,
        document: DOCUMENT,
        janitor_version: env!("CARGO_PKG_VERSION"),
        account_id: config.cloudflare.account_id.as_str(),
        config_sha256: config_fingerprint(config),
        generated_at,
        parts: plans
            .iter()
            .map(|p| PartOut {
                resource: p.kind,
                zone: p.scope.zone.as_ref(),
                blocked: p.blocked.as_deref(),
                seen: p.seen,
                caps: &p.caps,
                targets: p
                    .actionable()
                    .map(|c| TargetOut {
                        id: &c.id,
                        rule: &c.rule,
                        action: c.action,
                        name: &c.name,
                        user_email: c.user_email.as_deref(),
                        reason: c.why.to_string(),
                        snapshot: c.snapshot.as_deref(),
                    })
                    .collect(),
            })
            .collect(),
    };
    let error = |source| SavedPlanError::Write {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let file = std::fs::File::create(&tmp).map_err(error)?;
    let mut out = std::io::BufWriter::new(file);
    serde_json::to_writer_pretty(&mut out, &doc).map_err(|e| error(e.into()))?;
    use std::io::Write as _;
    out.write_all(b"\n").map_err(error)?;
    let file = out.into_inner().map_err(|e| error(e.into_error()))?;
    file.sync_all().map_err(error)?;
    std::fs::rename(&tmp, path).map_err(error)
}

/// The file as `apply` reads it: snapshots are skipped unread, so that memory holds the
/// targets' few fields only.
#[derive(Deserialize)]
struct SavedPlanIn {
    schema_version: u32,
    document: String,
    account_id: String,
    config_sha256: String,
    generated_at: DateTime<Utc>,
    parts: Vec<PartIn>,
}

#[derive(Deserialize)]
struct PartIn {
    resource: String,
    zone: Option<String>,
    targets: Vec<TargetIn>,
}

/// Ids, kinds and actions are read as text and parsed as strictly as a listing's.
#[derive(Deserialize)]
struct TargetIn {
    id: String,
    rule: String,
    action: String,
    name: String,
    user_email: Option<String>,
    reason: String,
}

/// One object the reviewed plan acts on.
#[derive(Debug, Clone)]
pub struct Target {
    pub id: ResourceId,
    pub rule: String,
    pub action: Action,
    pub name: String,
    pub user_email: Option<String>,
    /// Why the plan selected it, as the reviewer read it.
    pub reason: String,
}

impl TargetIn {
    fn parse(self) -> Result<Target, String> {
        Ok(Target {
            id: ResourceId::parse(&self.id)?,
            action: Action::parse(&self.action)
                .ok_or_else(|| format!("unknown action {:?}", self.action))?,
            rule: self.rule,
            name: self.name,
            user_email: self.user_email,
            reason: self.reason,
        })
    }
}

/// A saved plan that passed every check, ready to restrict a run to its targets.
#[derive(Debug)]
pub struct SavedPlan {
    pub path: PathBuf,
    /// The file's SHA-256, recorded with the run that applies it.
    pub sha256: String,
    pub generated_at: DateTime<Utc>,
    parts: HashMap<(Kind, Option<ZoneId>), HashMap<IdKey, Target>>,
    /// The targets of a part the plan does not have: none.
    none: HashMap<IdKey, Target>,
}

impl SavedPlan {
    /// Reads `path` and checks it against `config` at `now`: the same account, the same
    /// settings, made at most `max_age_hours` ago.
    pub fn load(
        path: &Path,
        config: &Config,
        now: DateTime<Utc>,
        max_age_hours: u64,
    ) -> Result<SavedPlan, SavedPlanError> {
        let bytes = std::fs::read(path).map_err(|source| SavedPlanError::Read {
            path: path.to_owned(),
            source,
        })?;
        let not_a_plan = |message: String| SavedPlanError::NotAPlan {
            path: path.to_owned(),
            message,
        };
        // The version first, so that a later version's other shape is named as such.
        #[derive(Deserialize)]
        struct Head {
            schema_version: Option<u32>,
            document: Option<String>,
        }
        let head: Head = serde_json::from_slice(&bytes).map_err(|e| not_a_plan(e.to_string()))?;
        if head.document.as_deref() != Some(DOCUMENT) {
            return Err(not_a_plan(format!("its \"document\" is not {DOCUMENT:?}")));
        }
        match head.schema_version {
            Some(SCHEMA_VERSION) => {}
            Some(found) => {
                return Err(SavedPlanError::Version {
                    path: path.to_owned(),
                    found,
                })
            }
            None => return Err(not_a_plan("it has no \"schema_version\"".to_owned())),
        }
        let doc: SavedPlanIn =
            serde_json::from_slice(&bytes).map_err(|e| not_a_plan(e.to_string()))?;
        debug_assert_eq!(doc.document, DOCUMENT);
        debug_assert_eq!(doc.schema_version, SCHEMA_VERSION);
        let configured = config.cloudflare.account_id.as_str();
        if doc.account_id != configured {
            return Err(SavedPlanError::Account {
                path: path.to_owned(),
                planned: doc.account_id,
                configured: configured.to_owned(),
            });
        }
        if doc.config_sha256 != config_fingerprint(config) {
            return Err(SavedPlanError::Config {
                path: path.to_owned(),
            });
        }
        let age = now - doc.generated_at;
        if age < -FUTURE_SKEW {
            return Err(SavedPlanError::FromTheFuture {
                path: path.to_owned(),
                generated_at: doc.generated_at,
            });
        }
        let max_age = TimeDelta::hours(i64::try_from(max_age_hours).unwrap_or(i64::MAX / 4000));
        if age > max_age {
            return Err(SavedPlanError::TooOld {
                path: path.to_owned(),
                generated_at: doc.generated_at,
                age: format!("{}h{:02}m", age.num_hours(), age.num_minutes() % 60),
                max_hours: max_age_hours,
            });
        }
        let mut parts: HashMap<(Kind, Option<ZoneId>), HashMap<IdKey, Target>> = HashMap::new();
        for part in doc.parts {
            let kind = Kind::parse(&part.resource)
                .ok_or_else(|| not_a_plan(format!("unknown resource {:?}", part.resource)))?;
            let zone = part
                .zone
                .map(|z| ZoneId::parse(&z))
                .transpose()
                .map_err(not_a_plan)?;
            if kind.zoned() != zone.is_some() {
                return Err(not_a_plan(format!("a {kind} part with a wrong zone")));
            }
            let targets = parts.entry((kind, zone)).or_default();
            for target in part.targets {
                let target = target.parse().map_err(&not_a_plan)?;
                if targets.insert(target.id.key(), target).is_some() {
                    return Err(not_a_plan("it names a target twice".to_owned()));
                }
            }
        }
        Ok(SavedPlan {
            path: path.to_owned(),
            sha256: hex(&Sha256::digest(&bytes)),
            generated_at: doc.generated_at,
            parts,
            none: HashMap::new(),
        })
    }

    /// The targets of one part (a kind, in a zone for a zoned kind), ready to filter its
    /// listing.
    pub fn filter(&self, kind: Kind, zone: Option<&ZoneId>) -> TargetFilter<'_> {
        TargetFilter::new(self.parts.get(&(kind, zone.cloned())).unwrap_or(&self.none))
    }

    /// Targets per kind and action, for the confirmation prompt.
    pub fn counts(&self) -> Vec<(Kind, Action, usize)> {
        let mut counts: Vec<(Kind, Action, usize)> = Vec::new();
        for kind in Kind::ALL {
            for action in [Action::Delete, Action::Revoke] {
                let n = self
                    .parts
                    .iter()
                    .filter(|((k, _), _)| *k == kind)
                    .flat_map(|(_, targets)| targets.values())
                    .filter(|t| t.action == action)
                    .count();
                if n > 0 {
                    counts.push((kind, action, n));
                }
            }
        }
        counts
    }

    pub fn len(&self) -> usize {
        self.parts.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What became of one target when the fresh listing was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Still a candidate for the same action: acted on.
    Selected,
    /// Listed, but no rule selects it now (it was used, seen, renewed...).
    NotSelected,
    /// Listed and selected, but for another action than the one reviewed.
    OtherAction(Action),
}

/// One part's targets while its fresh listing is read: which are still candidates.
pub struct TargetFilter<'a> {
    targets: &'a HashMap<IdKey, Target>,
    seen: HashMap<IdKey, Seen>,
}

/// A target that was not acted on, and why.
#[derive(Debug, Clone)]
pub struct Skipped<'a> {
    pub target: &'a Target,
    pub why: String,
}

impl<'a> TargetFilter<'a> {
    pub fn new(targets: &'a HashMap<IdKey, Target>) -> Self {
        TargetFilter {
            targets,
            seen: HashMap::new(),
        }
    }

    /// Whether the run may act on `id`, which the rules now select for `action` (`None`: no
    /// rule selects it): only a target of the plan, still selected for the same action.
    pub fn admits(&mut self, id: &ResourceId, action: Option<Action>) -> bool {
        let key = id.key();
        let Some(target) = self.targets.get(&key) else {
            return false;
        };
        let seen = match action {
            None => Seen::NotSelected,
            Some(a) if a == target.action => Seen::Selected,
            Some(a) => Seen::OtherAction(a),
        };
        self.seen.insert(key, seen);
        seen == Seen::Selected
    }

    /// The targets not acted on, with why, once the listing is complete.
    pub fn skipped(&self) -> Vec<Skipped<'a>> {
        let mut skipped: Vec<Skipped<'a>> = self
            .targets
            .iter()
            .filter_map(|(key, target)| {
                let why = match self.seen.get(key) {
                    Some(Seen::Selected) => return None,
                    None => "in the saved plan, but no longer listed (already gone)".to_owned(),
                    Some(Seen::NotSelected) => {
                        "in the saved plan, but no rule selects it any more (it was used or \
                         seen again since the plan was made)"
                            .to_owned()
                    }
                    Some(Seen::OtherAction(a)) => format!(
                        "in the saved plan for {}, but a rule now selects it for {a}; make a new \
                         plan and review it",
                        target.action
                    ),
                };
                Some(Skipped { target, why })
            })
            .collect();
        skipped.sort_by(|a, b| a.target.id.as_str().cmp(b.target.id.as_str()));
        skipped
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(extra: &str, idle_days: u32) -> Config {
        let text = format!(
            r#"
[cloudflare]
account_id = "0123456789abcdef0123456789abcdef"
{extra}

[[rule]]
name = "idle"
resource = "device_registration"
action = "delete"
idle_days = {idle_days}
"#
        );
        Config::from_toml_str(&text, Path::new("t.toml")).unwrap()
    }

    /// The fingerprint covers what decisions rest on, and nothing an operator changes to
    /// run the same plan differently.
    #[test]
    fn the_fingerprint_follows_the_decisions_settings_only() {
        let base = config_fingerprint(&config("", 90));
        assert_eq!(base.len(), 64);
        let same = [
            "[safety]\nmode = \"apply\"",
            "[schedule]\ncron = \"0 0 3 * * *\"",
            "[logging]\nlevel = \"debug\"",
        ];
        for extra in same {
            assert_eq!(config_fingerprint(&config(extra, 90)), base, "{extra}");
        }
        let other = [
            "[safety]\nmax_actions_per_run = 51",
            "[safety]\nmax_fraction_per_run = 0.2",
            "[[exclude]]\nuser_email = [\"a@b.c\"]",
        ];
        for extra in other {
            assert_ne!(config_fingerprint(&config(extra, 90)), base, "{extra}");
        }
        assert_ne!(config_fingerprint(&config("", 91)), base);
    }

    #[test]
    fn a_filter_admits_targets_still_selected_for_the_same_action_only() {
        let id =
            |n: u8| ResourceId::parse(&format!("{n:08x}-0000-4000-8000-000000000000")).unwrap();
        let target = |n: u8, action: Action| Target {
            id: id(n),
            rule: "idle".into(),
            action,
            name: format!("device {n}"),
            user_email: None,
            reason: "idle".into(),
        };
        let targets: HashMap<IdKey, Target> = [
            target(1, Action::Delete),
            target(2, Action::Delete),
            target(3, Action::Delete),
            target(4, Action::Revoke),
        ]
        .into_iter()
        .map(|t| (t.id.key(), t))
        .collect();
        let mut filter = TargetFilter::new(&targets);
        assert!(filter.admits(&id(1), Some(Action::Delete)));
        // The same id in capitals is the same target.
        let upper = ResourceId::parse(&id(2).as_str().to_uppercase()).unwrap();
        assert!(!filter.admits(&upper, None), "no longer selected");
        assert!(
            !filter.admits(&id(4), Some(Action::Delete)),
            "another action"
        );
        assert!(!filter.admits(&id(9), Some(Action::Delete)), "not reviewed");
        let skipped: Vec<(String, String)> = filter
            .skipped()
            .into_iter()
            .map(|s| (s.target.name.clone(), s.why))
            .collect();
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(skipped[0].0 == "device 2" && skipped[0].1.contains("no rule selects it"));
        assert!(skipped[1].0 == "device 3" && skipped[1].1.contains("no longer listed"));
        assert!(skipped[2].0 == "device 4" && skipped[2].1.contains("now selects it for delete"));
    }
}

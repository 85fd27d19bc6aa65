//! `zt-janitor audit export`: the audit log's runs, actions and mutations as JSON Lines or CSV
//! for a SIEM, streamed from [`crate::audit::ExportReader`] through the writer it is given, one
//! record at a time: memory does not grow with the log.
//!
//! JSON Lines: one object per line (schemas/audit-export.schema.json), no header line. Each
//! line names its `record` (`run`, `action`, `mutation`), the `schema_version` and the
//! `account_id`, so a line read alone (as a SIEM ingests it) is whole. Runs come in start
//! order, each followed by its actions, then its mutations. CSV: one record type per file, with
//! a header row, every cell through [`report::neutralise_formula`].

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::TryStreamExt;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::audit::{AuditError, AuditStore, ExportAction, ExportMutation, ExportRun};
use crate::cloudflare::AccountId;
use crate::report;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Csv,
}

/// The record type a CSV export holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Records {
    Runs,
    Actions,
    Mutations,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("cannot write the export: {0}")]
    Write(#[from] io::Error),
}

impl ExportError {
    /// The reader went away (`export | head`): not a failure of the export.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, ExportError::Write(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// What to export.
#[derive(Debug, Clone, Copy)]
pub struct ExportOptions<'a> {
    /// Runs started at or after this time…
    pub since: DateTime<Utc>,
    /// …and before this one.
    pub until: Option<DateTime<Utc>>,
    pub format: ExportFormat,
    /// For CSV: the one record type the file holds.
    pub records: Records,
    /// The config's account, on every JSON line; `None` with `--db`.
    pub account_id: Option<&'a AccountId>,
}

/// How many runs the range holds, and how many actions and mutations were written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportCounts {
    pub runs: u64,
    pub actions: u64,
    pub mutations: u64,
}

/// Writes the export to `out` (flushed at the end). Runs are read a page at a time, and each
/// run's actions and mutations row by row.
pub async fn export(
    store: &AuditStore,
    options: &ExportOptions<'_>,
    out: &mut dyn Write,
) -> Result<ExportCounts, ExportError> {
    let mut reader = store.export_reader(options.since, options.until).await?;
    let mut sink = match options.format {
        ExportFormat::Jsonl => Sink::Jsonl(out),
        ExportFormat::Csv => {
            let mut csv = csv::Writer::from_writer(out);
            let names = match options.records {
                Records::Runs => names::<ExportRun>(),
                Records::Actions => names::<ExportAction>(),
                Records::Mutations => names::<ExportMutation>(),
            };
            csv.write_record(names).map_err(csv_error)?;
            Sink::Csv(Box::new(csv), options.records)
        }
    };
    let account = options.account_id;
    let mut counts = ExportCounts::default();
    let mut after = 0;
    loop {
        let runs = reader.runs_after(after).await?;
        let Some(last) = runs.last() else { break };
        after = last.id;
        for run in &runs {
            counts.runs += 1;
            if sink.wants(Records::Runs) {
                sink.write(account, run)?;
            }
            if sink.wants(Records::Actions) {
                let mut actions = std::pin::pin!(reader.actions(run.id));
                while let Some(action) = actions.try_next().await? {
                    sink.write(account, &action)?;
                    counts.actions += 1;
                }
            }
            if sink.wants(Records::Mutations) {
                let mut mutations = std::pin::pin!(reader.mutations(run.id));
                while let Some(mutation) = mutations.try_next().await? {
                    sink.write(account, &mutation)?;
                    counts.mutations += 1;
                }
            }
        }
    }
    reader.finish().await?;
    sink.flush()?;
    Ok(counts)
}

enum Sink<'a> {
    Jsonl(&'a mut dyn Write),
    Csv(Box<csv::Writer<&'a mut dyn Write>>, Records),
}

impl Sink<'_> {
    fn wants(&self, records: Records) -> bool {
        match self {
            Sink::Jsonl(_) => true,
            Sink::Csv(_, only) => *only == records,
        }
    }

    fn write<R: Record>(&mut self, account: Option<&AccountId>, record: &R) -> io::Result<()> {
        match self {
            Sink::Jsonl(out) => {
                serde_json::to_writer(&mut **out, &JsonLine { account, record })?;
                out.write_all(b"\n")
            }
            Sink::Csv(csv, _) => {
                for (_, cell) in record.fields() {
                    csv.write_field(cell.csv().as_bytes()).map_err(csv_error)?;
                }
                // An empty record after the fields ends the row.
                csv.write_record(None::<&[u8]>).map_err(csv_error)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Jsonl(out) => out.flush(),
            Sink::Csv(csv, _) => csv.flush(),
        }
    }
}

fn csv_error(e: csv::Error) -> io::Error {
    match e.into_kind() {
        csv::ErrorKind::Io(e) => e,
        other => io::Error::other(format!("{other:?}")),
    }
}

/// One value of a record, as both formats write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cell<'a> {
    Null,
    Int(i64),
    Text(&'a str),
    /// A time as stored: written as RFC 3339 in UTC, or as null (empty in CSV) when the
    /// stored text is not one (a listing's `(missing)` last-seen, a damaged row).
    Time(&'a str),
    /// The stored snapshot: a JSON object in JSON Lines, its exact text in CSV.
    Snapshot(Option<&'a str>),
    /// A stored JSON array of ids: an array in JSON Lines, its text in CSV.
    Ids(&'a str),
}

impl Cell<'_> {
    fn csv(&self) -> Cow<'_, str> {
        match *self {
            Cell::Null | Cell::Snapshot(None) => Cow::Borrowed(""),
            Cell::Int(n) => Cow::Owned(n.to_string()),
            Cell::Time(t) => Cow::Owned(rfc3339(t).unwrap_or_default()),
            Cell::Text(t) | Cell::Snapshot(Some(t)) | Cell::Ids(t) => report::neutralise_formula(t),
        }
    }
}

fn rfc3339(stored: &str) -> Option<String> {
    DateTime::parse_from_rfc3339(stored).ok().map(|t| {
        t.with_timezone(&Utc)
            .to_rfc3339_opts(SecondsFormat::Micros, true)
    })
}

fn opt_text(v: &Option<String>) -> Cell<'_> {
    v.as_deref().map_or(Cell::Null, Cell::Text)
}

fn opt_time(v: &Option<String>) -> Cell<'_> {
    v.as_deref().map_or(Cell::Null, Cell::Time)
}

fn opt_int(v: Option<i64>) -> Cell<'static> {
    v.map_or(Cell::Null, Cell::Int)
}

/// A record type of the export: its `record` name and its fields in order (the CSV's columns,
/// the JSON line's keys after the common ones).
trait Record: Default {
    const NAME: &'static str;
    fn fields(&self) -> Vec<(&'static str, Cell<'_>)>;
}

/// The CSV header of `R`.
fn names<R: Record>() -> Vec<&'static str> {
    R::default().fields().into_iter().map(|(n, _)| n).collect()
}

impl Record for ExportRun {
    const NAME: &'static str = "run";
    fn fields(&self) -> Vec<(&'static str, Cell<'_>)> {
        vec![
            ("id", Cell::Int(self.id)),
            ("started_at", Cell::Time(&self.started_at)),
            ("finished_at", opt_time(&self.finished_at)),
            ("mode", Cell::Text(&self.mode)),
            ("outcome", opt_text(&self.outcome)),
            ("reason", opt_text(&self.reason)),
            ("pages", opt_int(self.pages)),
            ("seen_total", opt_int(self.seen_total)),
            ("seen_active", opt_int(self.seen_active)),
            ("seen_revoked", opt_int(self.seen_revoked)),
            ("candidates", opt_int(self.candidates)),
            ("excluded", opt_int(self.excluded)),
            ("actions_done", opt_int(self.actions_done)),
            ("actions_failed", opt_int(self.actions_failed)),
            ("actions_unconfirmed", opt_int(self.actions_unconfirmed)),
            ("actions_stuck", opt_int(self.actions_stuck)),
            ("actions_refused", opt_int(self.actions_refused)),
            ("api_requests", opt_int(self.api_requests)),
            ("saved_plan_path", opt_text(&self.saved_plan_path)),
            ("saved_plan_sha256", opt_text(&self.saved_plan_sha256)),
            ("max_actions_override", opt_int(self.max_actions_override)),
            ("undoes_run", opt_int(self.undoes_run)),
        ]
    }
}

impl Record for ExportAction {
    const NAME: &'static str = "action";
    fn fields(&self) -> Vec<(&'static str, Cell<'_>)> {
        vec![
            ("id", Cell::Int(self.id)),
            ("run_id", Cell::Int(self.run_id)),
            ("decided_at", Cell::Time(&self.decided_at)),
            ("rule", Cell::Text(&self.rule)),
            ("action", Cell::Text(&self.action)),
            ("resource_kind", Cell::Text(&self.resource_kind)),
            ("resource_id", Cell::Text(&self.resource_id)),
            ("zone_id", opt_text(&self.zone_id)),
            ("user_email", opt_text(&self.user_email)),
            ("device_name", opt_text(&self.device_name)),
            ("last_seen_at", opt_time(&self.last_seen_at)),
            ("reason", Cell::Text(&self.reason)),
            ("excluded_by", opt_text(&self.excluded_by)),
            ("status", Cell::Text(&self.status)),
            ("status_detail", opt_text(&self.status_detail)),
            ("mutation_id", opt_int(self.mutation_id)),
            ("undoes_action_id", opt_int(self.undoes_action_id)),
            // Last, so that the CSV's widest column ends each row.
            ("snapshot", Cell::Snapshot(self.snapshot.as_deref())),
        ]
    }
}

impl Record for ExportMutation {
    const NAME: &'static str = "mutation";
    fn fields(&self) -> Vec<(&'static str, Cell<'_>)> {
        vec![
            ("id", Cell::Int(self.id)),
            ("run_id", Cell::Int(self.run_id)),
            ("resource_kind", Cell::Text(&self.resource_kind)),
            ("zone_id", opt_text(&self.zone_id)),
            ("kind", Cell::Text(&self.kind)),
            ("method", Cell::Text(&self.method)),
            ("path", Cell::Text(&self.path)),
            ("resource_ids", Cell::Ids(&self.resource_ids)),
            ("intent_at", Cell::Time(&self.intent_at)),
            ("completed_at", opt_time(&self.completed_at)),
            ("outcome", opt_text(&self.outcome)),
            ("http_status", opt_int(self.http_status)),
            ("cf_error_code", opt_int(self.cf_error_code)),
            ("cf_error_message", opt_text(&self.cf_error_message)),
        ]
    }
}

/// One JSON line: `record`, `schema_version`, `account_id`, then the record's fields. A
/// snapshot or id list that cannot be given as JSON (a damaged database) is null, and
/// `snapshot_error` / `resource_ids_error` says why.
struct JsonLine<'a, R> {
    account: Option<&'a AccountId>,
    record: &'a R,
}

impl<R: Record> Serialize for JsonLine<'_, R> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("record", R::NAME)?;
        map.serialize_entry("schema_version", &report::SCHEMA_VERSION)?;
        map.serialize_entry("account_id", &self.account)?;
        for (name, cell) in self.record.fields() {
            match cell {
                Cell::Null | Cell::Snapshot(None) => map.serialize_entry(name, &())?,
                Cell::Int(n) => map.serialize_entry(name, &n)?,
                Cell::Text(t) => map.serialize_entry(name, t)?,
                Cell::Time(t) => map.serialize_entry(name, &rfc3339(t))?,
                // An undo's action has no snapshot of its own: the action it undoes has it.
                Cell::Snapshot(Some(t)) if t.trim() == "null" => map.serialize_entry(name, &())?,
                Cell::Snapshot(Some(t)) => match report::snapshot_object(t) {
                    Ok(raw) => map.serialize_entry(name, raw)?,
                    Err(why) => {
                        map.serialize_entry(name, &())?;
                        map.serialize_entry("snapshot_error", &why)?;
                    }
                },
                Cell::Ids(t) => match serde_json::from_str::<Vec<&str>>(t) {
                    Ok(ids) => map.serialize_entry(name, &ids)?,
                    Err(e) => {
                        map.serialize_entry(name, &())?;
                        map.serialize_entry(
                            "resource_ids_error",
                            &format!("the stored ids are not a JSON array of strings: {e}"),
                        )?;
                    }
                },
            }
        }
        map.end()
    }
}

/// A file written in full or not at all: created beside `path` as a temporary file readable by
/// its owner only (the export holds users' emails), renamed over `path` by [`AtomicFile::commit`],
/// removed if dropped before.
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    renamed: bool,
}

impl AtomicFile {
    pub fn create(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        Ok(AtomicFile {
            path: path.to_owned(),
            tmp,
            out: Some(BufWriter::with_capacity(1 << 16, file)),
            renamed: false,
        })
    }

    pub fn writer(&mut self) -> &mut dyn Write {
        self.out.as_mut().expect("present until commit")
    }

    /// Flushes, syncs and renames the file into place.
    pub fn commit(mut self) -> io::Result<()> {
        let out = self.out.take().expect("present until commit");
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&self.tmp, &self.path)?;
        self.renamed = true;
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action() -> ExportAction {
        ExportAction {
            id: 7,
            run_id: 2,
            decided_at: "2026-11-01T06:00:00+01:00".to_owned(),
            rule: "idle-90d".to_owned(),
            action: "delete".to_owned(),
            resource_kind: "device_registration".to_owned(),
            resource_id: "r-1".to_owned(),
            last_seen_at: Some("(missing)".to_owned()),
            reason: "idle".to_owned(),
            status: "done".to_owned(),
            snapshot: Some(r#"{"id":"r-1","n":1}"#.to_owned()),
            ..ExportAction::default()
        }
    }

    fn json(record: &impl Record) -> serde_json::Value {
        serde_json::to_value(JsonLine {
            account: None,
            record,
        })
        .unwrap()
    }

    fn csv_of(record: &impl Record) -> Vec<String> {
        record
            .fields()
            .iter()
            .map(|(_, c)| c.csv().into_owned())
            .collect()
    }

    /// A CSV column for every JSON key but the three every line starts with (both come from
    /// one field list, in its order): the two formats cannot drift apart.
    #[test]
    fn csv_columns_are_the_json_keys() {
        fn keys(v: &serde_json::Value) -> Vec<String> {
            v.as_object().unwrap().keys().cloned().collect()
        }
        let line = |record: &dyn Fn() -> serde_json::Value| {
            let mut keys = keys(&record());
            keys.retain(|k| !["record", "schema_version", "account_id"].contains(&k.as_str()));
            keys.sort();
            keys
        };
        let sorted = |names: Vec<&str>| {
            let mut names: Vec<String> = names.into_iter().map(str::to_owned).collect();
            names.sort();
            names
        };
        assert_eq!(
            line(&|| json(&ExportRun::default())),
            sorted(names::<ExportRun>())
        );
        assert_eq!(line(&|| json(&action())), sorted(names::<ExportAction>()));
        let mutation = ExportMutation {
            resource_ids: "[]".to_owned(),
            ..ExportMutation::default()
        };
        assert_eq!(line(&|| json(&mutation)), sorted(names::<ExportMutation>()));
        assert_eq!(names::<ExportAction>().last(), Some(&"snapshot"));
    }

    #[test]
    fn times_are_rfc3339_utc_or_null_and_the_snapshot_an_object() {
        let a = json(&action());
        assert_eq!(a["record"], "action");
        assert_eq!(a["decided_at"], "2026-11-01T05:00:00.000000Z");
        assert_eq!(a["last_seen_at"], serde_json::Value::Null, "(missing)");
        assert_eq!(a["snapshot"], serde_json::json!({"id": "r-1", "n": 1}));
        assert!(a.get("snapshot_error").is_none());
        let cells = csv_of(&action());
        assert_eq!(cells[2], "2026-11-01T05:00:00.000000Z");
        assert_eq!(cells[10], "", "no time, no cell");
        assert_eq!(
            cells.last().unwrap(),
            r#"{"id":"r-1","n":1}"#,
            "the stored text"
        );
    }

    /// A damaged database: the line is still written, and says what could not be read.
    #[test]
    fn an_unreadable_snapshot_or_id_list_is_null_with_why() {
        for (stored, error) in [
            ("not json", true),
            ("[1]", true),
            (r#"{"a":1,"a":2}"#, true),
            ("null", false),
        ] {
            let a = json(&ExportAction {
                snapshot: Some(stored.to_owned()),
                ..action()
            });
            assert_eq!(a["snapshot"], serde_json::Value::Null, "{stored}");
            assert_eq!(a.get("snapshot_error").is_some(), error, "{stored}: {a}");
        }
        let m = json(&ExportMutation {
            resource_ids: "[1,".to_owned(),
            ..ExportMutation::default()
        });
        assert_eq!(m["resource_ids"], serde_json::Value::Null);
        assert!(m["resource_ids_error"]
            .as_str()
            .unwrap()
            .contains("not a JSON array"));
        let m = json(&ExportMutation {
            resource_ids: r#"["a","b"]"#.to_owned(),
            ..ExportMutation::default()
        });
        assert_eq!(m["resource_ids"], serde_json::json!(["a", "b"]));
    }

    #[test]
    fn csv_text_cells_are_neutralised_and_numbers_are_not() {
        let cells = csv_of(&ExportAction {
            device_name: Some("=cmd()".to_owned()),
            user_email: Some("@x".to_owned()),
            mutation_id: Some(3),
            ..action()
        });
        assert_eq!(cells[8], "'@x");
        assert_eq!(cells[9], "'=cmd()");
        assert_eq!(cells[15], "3");
    }

    #[test]
    fn an_atomic_file_appears_only_when_committed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.csv");
        let mut dropped = AtomicFile::create(&path).unwrap();
        dropped.writer().write_all(b"half").unwrap();
        drop(dropped);
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "nothing left"
        );
        let mut file = AtomicFile::create(&path).unwrap();
        file.writer().write_all(b"whole\n").unwrap();
        assert!(!path.exists());
        file.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "whole\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

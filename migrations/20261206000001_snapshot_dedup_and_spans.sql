-- Bounded growth (issue 14). A plan cycle over an unchanged account used to store every
-- decision and the full listed object again, run after run.
--
-- 1. Snapshot bodies are stored once: `snapshot_bodies` holds each distinct text with its
--    SHA-256, and `snapshots` maps an action to its body. Bodies written before this
--    migration are de-duplicated by their text here; SQL cannot hash, so their `sha256` is
--    NULL until the next writer's open fills it (in Rust, in bounded batches).
-- 2. Marks point at the body of the object as first marked (`first_body_id`), no longer at an
--    action row, which folding (3) deletes.
-- 3. The decisions of a run that did not act are folded, when it closes, into
--    `decision_spans`: one row per run of consecutive runs that decided the same about the
--    same object as it was listed the same.
--
-- `snapshots` and `marks` are rebuilt as in 20261127000001_resource_kind.sql (a column that a
-- foreign key names cannot be dropped): new tables beside the old, the old dropped, renamed.

CREATE TABLE snapshot_bodies (
    id              INTEGER PRIMARY KEY,
    -- SHA-256 of the body's UTF-8 bytes; NULL only for a body migrated here whose hash the
    -- next open has not filled in yet.
    sha256          BLOB    UNIQUE,
    -- The object exactly as Cloudflare listed it ('null' for actions without an object).
    body            TEXT    NOT NULL
);
INSERT INTO snapshot_bodies (body) SELECT DISTINCT body FROM snapshots;
-- A mark whose first action has no snapshot (a damaged database) points at 'null'.
INSERT INTO snapshot_bodies (body)
    SELECT 'null' WHERE NOT EXISTS (SELECT 1 FROM snapshot_bodies WHERE body = 'null')
        AND EXISTS (SELECT 1 FROM marks m WHERE NOT EXISTS (
                        SELECT 1 FROM snapshots s WHERE s.action_id = m.first_action_id));
-- For the joins by text below only.
CREATE INDEX snapshot_bodies_text ON snapshot_bodies (body);

CREATE TABLE snapshots_new (
    action_id       INTEGER PRIMARY KEY REFERENCES actions(id),
    body_id         INTEGER NOT NULL REFERENCES snapshot_bodies(id)
);
INSERT INTO snapshots_new (action_id, body_id)
    SELECT s.action_id, b.id FROM snapshots s JOIN snapshot_bodies b ON b.body = s.body;

CREATE TABLE marks_new (
    resource_kind   TEXT    NOT NULL,
    -- '' for an account-scoped kind: a primary key column cannot usefully be NULL.
    zone_key        TEXT    NOT NULL,
    id_key          TEXT    NOT NULL,
    resource_id     TEXT    NOT NULL,
    name            TEXT,
    user_email      TEXT,
    rule            TEXT    NOT NULL,
    action          TEXT    NOT NULL CHECK (action IN ('delete', 'revoke')),
    first_marked_at TEXT    NOT NULL,
    first_run_id    INTEGER NOT NULL REFERENCES runs(id),
    -- The object as first marked (by run first_run_id).
    first_body_id   INTEGER NOT NULL REFERENCES snapshot_bodies(id),
    -- The last run whose complete listing still selected it.
    last_run_id     INTEGER NOT NULL REFERENCES runs(id),
    PRIMARY KEY (resource_kind, zone_key, id_key)
);
INSERT INTO marks_new (resource_kind, zone_key, id_key, resource_id, name, user_email, rule,
        action, first_marked_at, first_run_id, first_body_id, last_run_id)
    SELECT m.resource_kind, m.zone_key, m.id_key, m.resource_id, m.name, m.user_email, m.rule,
        m.action, m.first_marked_at, m.first_run_id,
        coalesce((SELECT s.body_id FROM snapshots_new s WHERE s.action_id = m.first_action_id),
                 (SELECT b.id FROM snapshot_bodies b WHERE b.body = 'null')),
        m.last_run_id
    FROM marks m;

DROP INDEX snapshot_bodies_text;
DROP TABLE marks;
DROP TABLE snapshots;
ALTER TABLE marks_new RENAME TO marks;
ALTER TABLE snapshots_new RENAME TO snapshots;

CREATE TABLE decision_spans (
    id              INTEGER PRIMARY KEY,
    -- The key: a decision of the run right after last_run_id that equals all of these
    -- extends the span; any other starts a new one.
    resource_kind   TEXT    NOT NULL,
    zone_id         TEXT,
    resource_id     TEXT    NOT NULL,
    rule            TEXT    NOT NULL,
    action          TEXT    NOT NULL,
    excluded_by     TEXT,
    status          TEXT    NOT NULL,
    -- The object as listed, the same in every run of the span.
    body_id         INTEGER NOT NULL REFERENCES snapshot_bodies(id),
    -- Read from the object, so the same in every run of the span.
    user_email      TEXT,
    user_email_folded TEXT,
    device_name     TEXT,
    last_seen_at    TEXT,
    first_run_id    INTEGER NOT NULL REFERENCES runs(id),
    last_run_id     INTEGER NOT NULL REFERENCES runs(id),
    first_decided_at TEXT   NOT NULL,
    last_decided_at TEXT    NOT NULL,
    -- Texts that change from run to run ("idle 200d", counts): as in the first run and as in
    -- the last.
    reason          TEXT    NOT NULL,
    status_detail   TEXT,
    last_reason     TEXT    NOT NULL,
    last_status_detail TEXT
);
-- Folding looks up the spans the previous run ended by object; `--run N` reads the spans
-- ending at or after N.
CREATE INDEX decision_spans_last_run ON decision_spans (last_run_id, resource_id);
CREATE INDEX decision_spans_resource ON decision_spans (resource_id);
CREATE INDEX decision_spans_user_folded ON decision_spans (user_email_folded);

-- Whether a run acted is whether it has mutation rows.
CREATE INDEX mutations_run ON mutations (run_id);
-- Deleting folded actions checks that no undo action names them; without an index on the
-- child column that check scans the whole table per row deleted.
CREATE INDEX actions_undoes ON actions (undoes_action_id) WHERE undoes_action_id IS NOT NULL;

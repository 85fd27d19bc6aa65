-- Resource kinds: the audit log names the kind of every object it records. `actions.resource_type`
-- becomes `resource_kind`, `mutations` gains `resource_kind`, and each run records, per kind,
-- how that kind's part of the run went (`run_kinds`). Every row written before this migration
-- is about a device registration.
--
-- Rebuilt as in 20261126000001_confirmed_outcomes.sql (SQLite cannot add a NOT NULL column
-- without a default, and a default would let a writer forget the kind): new tables beside the
-- old ones, the old ones dropped children first, the new ones renamed.

CREATE TABLE mutations_new (
    id              INTEGER PRIMARY KEY,
    run_id          INTEGER NOT NULL REFERENCES runs(id),
    -- The kind of the objects the call names (resource::Kind::as_str).
    resource_kind   TEXT    NOT NULL,
    kind            TEXT    NOT NULL CHECK (kind IN ('bulk_delete', 'delete', 'revoke')),
    method          TEXT    NOT NULL,
    path            TEXT    NOT NULL,
    -- JSON array of the resource ids the call names.
    resource_ids    TEXT    NOT NULL,
    intent_at       TEXT    NOT NULL,
    completed_at    TEXT,
    -- NULL = intent recorded, outcome unknown (crash or in flight). What Cloudflare answered;
    -- whether it took effect is the actions' status, confirmed by listing.
    outcome         TEXT    CHECK (outcome IN ('ok', 'not_found', 'rejected', 'error', 'already_gone', 'reconciled_done', 'reconciled_not_done')),
    http_status     INTEGER,
    cf_error_code   INTEGER,
    cf_error_message TEXT
);
INSERT INTO mutations_new (id, run_id, resource_kind, kind, method, path, resource_ids, intent_at,
        completed_at, outcome, http_status, cf_error_code, cf_error_message)
    SELECT id, run_id, 'device_registration', kind, method, path, resource_ids, intent_at,
        completed_at, outcome, http_status, cf_error_code, cf_error_message
    FROM mutations;

CREATE TABLE actions_new (
    id              INTEGER PRIMARY KEY,
    run_id          INTEGER NOT NULL REFERENCES runs(id),
    decided_at      TEXT    NOT NULL,
    rule            TEXT    NOT NULL,
    action          TEXT    NOT NULL CHECK (action IN ('delete', 'revoke')),
    -- The kind of the object (resource::Kind::as_str).
    resource_kind   TEXT    NOT NULL,
    resource_id     TEXT    NOT NULL,
    user_email      TEXT,
    device_name     TEXT,
    last_seen_at    TEXT,
    reason          TEXT    NOT NULL,
    excluded_by     TEXT,
    -- planned -> done | already_gone | failed | unconfirmed (once the listing has been asked);
    -- or excluded / not_attempted / stuck. in_flight only in databases of version 0.1.
    status          TEXT    NOT NULL CHECK (status IN ('planned', 'excluded', 'not_attempted', 'in_flight', 'done', 'already_gone', 'failed', 'unconfirmed', 'stuck')),
    status_detail   TEXT,
    -- The mutation that settled it; for `stuck`, the failed call that made it stuck.
    mutation_id     INTEGER REFERENCES mutations_new(id),
    -- Unicode case-folded user_email, for `audit actions --user` (20261126000002).
    user_email_folded TEXT
);
INSERT INTO actions_new (id, run_id, decided_at, rule, action, resource_kind, resource_id,
        user_email, device_name, last_seen_at, reason, excluded_by, status, status_detail,
        mutation_id, user_email_folded)
    SELECT id, run_id, decided_at, rule, action, 'device_registration', resource_id,
        user_email, device_name, last_seen_at, reason, excluded_by, status, status_detail,
        mutation_id, user_email_folded
    FROM actions;

CREATE TABLE snapshots_new (
    action_id       INTEGER PRIMARY KEY REFERENCES actions_new(id),
    -- The object exactly as Cloudflare listed it.
    body            TEXT    NOT NULL
);
INSERT INTO snapshots_new (action_id, body) SELECT action_id, body FROM snapshots;

DROP TABLE snapshots;
DROP TABLE actions;
DROP TABLE mutations;
ALTER TABLE mutations_new RENAME TO mutations;
ALTER TABLE actions_new RENAME TO actions;
ALTER TABLE snapshots_new RENAME TO snapshots;

-- Every index the earlier migrations created (actions_user_lower was dropped by 20261126000002).
CREATE INDEX mutations_pending ON mutations (id) WHERE outcome IS NULL;
CREATE INDEX actions_run ON actions (run_id);
CREATE INDEX actions_resource ON actions (resource_id);
CREATE INDEX actions_mutation ON actions (mutation_id) WHERE mutation_id IS NOT NULL;
CREATE INDEX actions_failing ON actions (resource_id) WHERE status IN ('failed', 'stuck');
CREATE INDEX actions_user_folded ON actions (user_email_folded);

-- How each kind's part of a run went: a listing failure of one kind aborts that kind only.
CREATE TABLE run_kinds (
    run_id          INTEGER NOT NULL REFERENCES runs(id),
    kind            TEXT    NOT NULL,
    outcome         TEXT    NOT NULL CHECK (outcome IN ('applied', 'planned', 'refused', 'aborted', 'failed')),
    reason          TEXT,
    seen            INTEGER,
    candidates      INTEGER,
    excluded        INTEGER,
    done            INTEGER NOT NULL,
    failed          INTEGER NOT NULL,
    PRIMARY KEY (run_id, kind)
);

-- `zt-janitor undo --run N` reverses what run N did where Cloudflare allows it: a revoked
-- registration is unrevoked, a client certificate still `pending_revocation` is reactivated.
-- An undo is a run of its own (mode `undo`, `undoes_run` = N), whose actions (`unrevoke`,
-- `reactivate`) each name the action they reverse (`undoes_action_id`), and whose calls are
-- journaled and reconciled like any other (mutation kinds `unrevoke` and `reactivate`).
--
-- Rebuilt as in 20261127000001_resource_kind.sql (SQLite cannot alter a CHECK): new tables
-- beside the old ones (each referencing its new parent), the old ones dropped children first,
-- the new ones renamed (which rewrites the references). `runs` is the root, so every table is.

CREATE TABLE runs_new (
    id              INTEGER PRIMARY KEY,
    started_at      TEXT    NOT NULL,
    finished_at     TEXT,
    mode            TEXT    NOT NULL CHECK (mode IN ('plan', 'apply', 'undo')),
    -- NULL while running; a crash leaves it NULL and the next start marks it 'failed'.
    outcome         TEXT    CHECK (outcome IN ('applied', 'planned', 'refused', 'aborted', 'failed')),
    reason          TEXT,
    pages           INTEGER,
    seen_total      INTEGER,
    seen_active     INTEGER,
    seen_revoked    INTEGER,
    candidates      INTEGER,
    excluded        INTEGER,
    actions_done    INTEGER,
    actions_failed  INTEGER,
    api_requests    INTEGER,
    actions_unconfirmed INTEGER,
    actions_stuck   INTEGER,
    refused         INTEGER,
    saved_plan_path TEXT,
    saved_plan_sha256 TEXT,
    max_actions_override INTEGER,
    -- For mode `undo`: the run whose actions it reverses.
    undoes_run      INTEGER REFERENCES runs_new(id)
);
INSERT INTO runs_new (id, started_at, finished_at, mode, outcome, reason, pages, seen_total,
        seen_active, seen_revoked, candidates, excluded, actions_done, actions_failed,
        api_requests, actions_unconfirmed, actions_stuck, refused, saved_plan_path,
        saved_plan_sha256, max_actions_override)
    SELECT id, started_at, finished_at, mode, outcome, reason, pages, seen_total,
        seen_active, seen_revoked, candidates, excluded, actions_done, actions_failed,
        api_requests, actions_unconfirmed, actions_stuck, refused, saved_plan_path,
        saved_plan_sha256, max_actions_override
    FROM runs;

CREATE TABLE mutations_new (
    id              INTEGER PRIMARY KEY,
    run_id          INTEGER NOT NULL REFERENCES runs_new(id),
    -- The kind of the objects the call names (resource::Kind::as_str).
    resource_kind   TEXT    NOT NULL,
    kind            TEXT    NOT NULL CHECK (kind IN ('bulk_delete', 'delete', 'revoke', 'unrevoke', 'reactivate')),
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
    cf_error_message TEXT,
    zone_id         TEXT
);
INSERT INTO mutations_new (id, run_id, resource_kind, kind, method, path, resource_ids, intent_at,
        completed_at, outcome, http_status, cf_error_code, cf_error_message, zone_id)
    SELECT id, run_id, resource_kind, kind, method, path, resource_ids, intent_at,
        completed_at, outcome, http_status, cf_error_code, cf_error_message, zone_id
    FROM mutations;

CREATE TABLE actions_new (
    id              INTEGER PRIMARY KEY,
    run_id          INTEGER NOT NULL REFERENCES runs_new(id),
    decided_at      TEXT    NOT NULL,
    rule            TEXT    NOT NULL,
    -- `unrevoke` and `reactivate` only in undo runs.
    action          TEXT    NOT NULL CHECK (action IN ('delete', 'revoke', 'unrevoke', 'reactivate')),
    -- The kind of the object (resource::Kind::as_str).
    resource_kind   TEXT    NOT NULL,
    resource_id     TEXT    NOT NULL,
    user_email      TEXT,
    device_name     TEXT,
    last_seen_at    TEXT,
    reason          TEXT    NOT NULL,
    excluded_by     TEXT,
    -- planned -> done | already_gone | failed | unconfirmed | refused_by_api (once the listing
    -- has been asked); or excluded / not_attempted / stuck. in_flight only in databases of
    -- version 0.1.
    status          TEXT    NOT NULL CHECK (status IN ('planned', 'excluded', 'not_attempted', 'in_flight', 'done', 'already_gone', 'failed', 'unconfirmed', 'stuck', 'refused_by_api')),
    status_detail   TEXT,
    -- The mutation that settled it; for `stuck`, the failed call that made it stuck.
    mutation_id     INTEGER REFERENCES mutations_new(id),
    -- Unicode case-folded user_email, for `audit actions --user` (20261126000002).
    user_email_folded TEXT,
    zone_id         TEXT,
    -- In an undo run: the action (of the run undone) that this one reverses.
    undoes_action_id INTEGER REFERENCES actions_new(id)
);
INSERT INTO actions_new (id, run_id, decided_at, rule, action, resource_kind, resource_id,
        user_email, device_name, last_seen_at, reason, excluded_by, status, status_detail,
        mutation_id, user_email_folded, zone_id)
    SELECT id, run_id, decided_at, rule, action, resource_kind, resource_id,
        user_email, device_name, last_seen_at, reason, excluded_by, status, status_detail,
        mutation_id, user_email_folded, zone_id
    FROM actions;

CREATE TABLE snapshots_new (
    action_id       INTEGER PRIMARY KEY REFERENCES actions_new(id),
    -- The object exactly as Cloudflare listed it.
    body            TEXT    NOT NULL
);
INSERT INTO snapshots_new (action_id, body) SELECT action_id, body FROM snapshots;

CREATE TABLE run_kinds_new (
    run_id          INTEGER NOT NULL REFERENCES runs_new(id),
    kind            TEXT    NOT NULL,
    outcome         TEXT    NOT NULL CHECK (outcome IN ('applied', 'planned', 'refused', 'aborted', 'failed')),
    reason          TEXT,
    seen            INTEGER,
    candidates      INTEGER,
    excluded        INTEGER,
    done            INTEGER NOT NULL,
    failed          INTEGER NOT NULL,
    refused         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, kind)
);
INSERT INTO run_kinds_new (run_id, kind, outcome, reason, seen, candidates, excluded, done,
        failed, refused)
    SELECT run_id, kind, outcome, reason, seen, candidates, excluded, done, failed, refused
    FROM run_kinds;

DROP TABLE snapshots;
DROP TABLE actions;
DROP TABLE mutations;
DROP TABLE run_kinds;
DROP TABLE runs;
ALTER TABLE runs_new RENAME TO runs;
ALTER TABLE run_kinds_new RENAME TO run_kinds;
ALTER TABLE mutations_new RENAME TO mutations;
ALTER TABLE actions_new RENAME TO actions;
ALTER TABLE snapshots_new RENAME TO snapshots;

-- Every index on the rebuilt tables (dropped with them).
CREATE INDEX mutations_pending ON mutations (id) WHERE outcome IS NULL;
CREATE INDEX actions_run ON actions (run_id);
CREATE INDEX actions_resource ON actions (resource_id);
CREATE INDEX actions_mutation ON actions (mutation_id) WHERE mutation_id IS NOT NULL;
CREATE INDEX actions_failing ON actions (resource_id) WHERE status IN ('failed', 'stuck');
CREATE INDEX actions_user_folded ON actions (user_email_folded);

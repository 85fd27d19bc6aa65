-- Success is confirmed by listing, and one registration that cannot be deleted no longer blocks
-- the others: actions gain the statuses `unconfirmed` (Cloudflare claimed success, the listing
-- disagrees or could not be read) and `stuck` (the same per-id failure N runs in a row; not
-- attempted again while it lasts); mutations gain the outcomes `not_found` (a 404 naming the id,
-- only a claim until the listing confirms it) and `rejected` (an error about the ids named only).
--
-- SQLite cannot alter a CHECK, so the tables are rebuilt. sqlx runs this in a transaction, where
-- PRAGMA foreign_keys cannot be turned off; the order below never leaves a row pointing at a
-- dropped table: new tables are built beside the old ones (each referencing its new parent),
-- the old ones dropped children first, then the new ones renamed (which rewrites the references).

CREATE TABLE mutations_new (
    id              INTEGER PRIMARY KEY,
    run_id          INTEGER NOT NULL REFERENCES runs(id),
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
INSERT INTO mutations_new (id, run_id, kind, method, path, resource_ids, intent_at, completed_at,
        outcome, http_status, cf_error_code, cf_error_message)
    SELECT id, run_id, kind, method, path, resource_ids, intent_at, completed_at,
        outcome, http_status, cf_error_code, cf_error_message
    FROM mutations;

CREATE TABLE actions_new (
    id              INTEGER PRIMARY KEY,
    run_id          INTEGER NOT NULL REFERENCES runs(id),
    decided_at      TEXT    NOT NULL,
    rule            TEXT    NOT NULL,
    action          TEXT    NOT NULL CHECK (action IN ('delete', 'revoke')),
    resource_type   TEXT    NOT NULL,
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
    mutation_id     INTEGER REFERENCES mutations_new(id)
);
INSERT INTO actions_new (id, run_id, decided_at, rule, action, resource_type, resource_id,
        user_email, device_name, last_seen_at, reason, excluded_by, status, status_detail, mutation_id)
    SELECT id, run_id, decided_at, rule, action, resource_type, resource_id,
        user_email, device_name, last_seen_at, reason, excluded_by, status, status_detail, mutation_id
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

-- Every index the earlier migrations created.
CREATE INDEX mutations_pending ON mutations (id) WHERE outcome IS NULL;
CREATE INDEX actions_run ON actions (run_id);
CREATE INDEX actions_resource ON actions (resource_id);
CREATE INDEX actions_user_lower ON actions (lower(user_email));
CREATE INDEX actions_mutation ON actions (mutation_id) WHERE mutation_id IS NOT NULL;
-- Registrations that failed before: each run asks whether its candidates are stuck, and this
-- keeps that question to a probe of a small index per candidate.
CREATE INDEX actions_failing ON actions (resource_id) WHERE status IN ('failed', 'stuck');

ALTER TABLE runs ADD COLUMN actions_unconfirmed INTEGER;
ALTER TABLE runs ADD COLUMN actions_stuck INTEGER;

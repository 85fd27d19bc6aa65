-- The audit log: one row per cycle, one per decision, one per API mutation.
-- Timestamps are RFC 3339 UTC text so that they sort and read well in plain sqlite3.

CREATE TABLE runs (
    id              INTEGER PRIMARY KEY,
    started_at      TEXT    NOT NULL,
    finished_at     TEXT,
    mode            TEXT    NOT NULL CHECK (mode IN ('plan', 'apply')),
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
    api_requests    INTEGER
);

CREATE TABLE mutations (
    id              INTEGER PRIMARY KEY,
    run_id          INTEGER NOT NULL REFERENCES runs(id),
    kind            TEXT    NOT NULL CHECK (kind IN ('bulk_delete', 'delete', 'revoke')),
    method          TEXT    NOT NULL,
    path            TEXT    NOT NULL,
    -- JSON array of the resource ids the call names.
    resource_ids    TEXT    NOT NULL,
    intent_at       TEXT    NOT NULL,
    completed_at    TEXT,
    -- NULL = intent recorded, outcome unknown (crash or in flight).
    outcome         TEXT    CHECK (outcome IN ('ok', 'already_gone', 'error', 'reconciled_done', 'reconciled_not_done')),
    http_status     INTEGER,
    cf_error_code   INTEGER,
    cf_error_message TEXT
);
CREATE INDEX mutations_pending ON mutations (id) WHERE outcome IS NULL;

CREATE TABLE actions (
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
    -- planned -> in_flight -> done | already_gone | failed; or excluded / not_attempted.
    status          TEXT    NOT NULL CHECK (status IN ('planned', 'excluded', 'not_attempted', 'in_flight', 'done', 'already_gone', 'failed')),
    status_detail   TEXT,
    mutation_id     INTEGER REFERENCES mutations(id),
    -- The object exactly as Cloudflare listed it.
    snapshot        TEXT    NOT NULL
);
CREATE INDEX actions_run ON actions (run_id);
CREATE INDEX actions_resource ON actions (resource_id);
CREATE INDEX actions_user ON actions (user_email);
CREATE INDEX actions_mutation ON actions (mutation_id);

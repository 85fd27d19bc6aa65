-- Some objects cannot be deleted while something still uses them (an Access service token
-- named by a policy or attached to a device enrollment policy): Cloudflare refuses the call.
-- Such an action gets the status `refused_by_api` (its call's mutation row keeps the outcome
-- `rejected`, with Cloudflare's error code and message). It is not a failure: it does not fail
-- the run and is not retried within it. Runs and their kinds count them (`refused`).
--
-- Rebuilt as in 20261127000001_resource_kind.sql (SQLite cannot alter a CHECK): new tables
-- beside the old ones, the old ones dropped children first, the new ones renamed. `mutations`
-- keeps its CHECKs and is left as it is; `actions` and `snapshots` (which references it) are
-- rebuilt.

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
    -- planned -> done | already_gone | failed | unconfirmed | refused_by_api (once the listing
    -- has been asked); or excluded / not_attempted / stuck. in_flight only in databases of
    -- version 0.1.
    status          TEXT    NOT NULL CHECK (status IN ('planned', 'excluded', 'not_attempted', 'in_flight', 'done', 'already_gone', 'failed', 'unconfirmed', 'stuck', 'refused_by_api')),
    status_detail   TEXT,
    -- The mutation that settled it; for `stuck`, the failed call that made it stuck.
    mutation_id     INTEGER REFERENCES mutations(id),
    -- Unicode case-folded user_email, for `audit actions --user` (20261126000002).
    user_email_folded TEXT
);
INSERT INTO actions_new (id, run_id, decided_at, rule, action, resource_kind, resource_id,
        user_email, device_name, last_seen_at, reason, excluded_by, status, status_detail,
        mutation_id, user_email_folded)
    SELECT id, run_id, decided_at, rule, action, resource_kind, resource_id,
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
ALTER TABLE actions_new RENAME TO actions;
ALTER TABLE snapshots_new RENAME TO snapshots;

-- Every index on actions (dropped with the table).
CREATE INDEX actions_run ON actions (run_id);
CREATE INDEX actions_resource ON actions (resource_id);
CREATE INDEX actions_mutation ON actions (mutation_id) WHERE mutation_id IS NOT NULL;
CREATE INDEX actions_failing ON actions (resource_id) WHERE status IN ('failed', 'stuck');
CREATE INDEX actions_user_folded ON actions (user_email_folded);

-- Actions refused by the API: NULL for runs written before this migration, as
-- actions_unconfirmed is for runs before 20261126000001.
ALTER TABLE runs ADD COLUMN refused INTEGER;
ALTER TABLE run_kinds ADD COLUMN refused INTEGER NOT NULL DEFAULT 0;

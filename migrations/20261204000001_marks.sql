-- Grace period (issue 13): an object a rule selects is marked, and acted on only once it has
-- stayed a candidate, in every complete listing of its kind, for the rule's grace_days since it
-- was first marked. A mark is keyed by the object (kind, zone, id compared in lower case: ids
-- are UUIDs, compared by value) and remembers when and by which rule it was first selected, and
-- the decision (action row) whose snapshot shows the object as it was then.
CREATE TABLE marks (
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
    -- The action row of the first selection; its snapshot is the object as first marked.
    first_action_id INTEGER NOT NULL REFERENCES actions(id),
    -- The last run whose complete listing still selected it.
    last_run_id     INTEGER NOT NULL REFERENCES runs(id),
    PRIMARY KEY (resource_kind, zone_key, id_key)
);

-- Every mark set or cleared.
CREATE TABLE mark_events (
    id              INTEGER PRIMARY KEY,
    run_id          INTEGER NOT NULL REFERENCES runs(id),
    at              TEXT    NOT NULL,
    event           TEXT    NOT NULL CHECK (event IN ('marked', 'cleared')),
    resource_kind   TEXT    NOT NULL,
    zone_id         TEXT,
    resource_id     TEXT    NOT NULL,
    rule            TEXT    NOT NULL,
    first_marked_at TEXT    NOT NULL,
    reason          TEXT
);
CREATE INDEX mark_events_run ON mark_events (run_id);

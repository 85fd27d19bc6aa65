-- Tamper evidence (issue 14): an append-only hash chain over the audit records that matter.
-- Rows are updated after they are written (a run is closed, a mutation gets its outcome, an
-- action settles, marks move every cycle), so the chain links events, not rows: whenever a
-- covered record is written or changed, an entry is appended with the SHA-256 of the record's
-- scope as it is after the change (`content_sha256`), the previous entry's hash, and its own
-- hash over both and its other fields. zt-janitor computes every hash (SQLite has no SHA-256);
-- `zt-janitor audit verify` recomputes them. src/audit/chain.rs documents the encoding.
CREATE TABLE audit_chain (
    seq             INTEGER PRIMARY KEY,
    at              TEXT    NOT NULL,
    -- runs | mutations | actions | action_status | mark_events | marks | chain
    record          TEXT    NOT NULL,
    -- The scope within the record: a run or mutation id, an id range, a run's chunk of ids...
    scope           TEXT    NOT NULL,
    event           TEXT    NOT NULL,
    -- The run the scope belongs to (what pruning a run removes); NULL for marks and the chain.
    run_id          INTEGER,
    -- The ids of the rows a range scope covers.
    first_id        INTEGER,
    last_id         INTEGER,
    row_count       INTEGER NOT NULL,
    content_sha256  TEXT    NOT NULL,
    prev_sha256     TEXT    NOT NULL,
    sha256          TEXT    NOT NULL
);
CREATE INDEX audit_chain_scope ON audit_chain (record, scope, seq);
CREATE INDEX audit_chain_run ON audit_chain (run_id, record) WHERE run_id IS NOT NULL;

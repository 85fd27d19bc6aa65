-- Retention (issue 14): runs older than their retention are pruned, with everything that hangs
-- off them, and each prune leaves a record of its own: when, what started it, the cutoffs it
-- used, which runs went and how many rows of each table. Pruned runs are gone, so the run ids
-- here are plain numbers, not references.
CREATE TABLE prunes (
    id               INTEGER PRIMARY KEY,
    started_at       TEXT    NOT NULL,
    finished_at      TEXT    NOT NULL,
    triggered_by     TEXT    NOT NULL CHECK (triggered_by IN ('cycle', 'command')),
    retain_days      INTEGER NOT NULL,
    -- NULL: runs that acted are kept forever.
    retain_mutations INTEGER,
    -- Runs that acted on nothing and finished before `cutoff` were due; runs that acted, before
    -- `mutations_cutoff` (NULL: never).
    cutoff           TEXT    NOT NULL,
    mutations_cutoff TEXT,
    runs             INTEGER NOT NULL,
    first_run_id     INTEGER,
    last_run_id      INTEGER,
    -- JSON object: rows deleted per table, e.g. {"actions":25000,"runs":1,"snapshots":25000}.
    deleted          TEXT    NOT NULL,
    -- 0 when it stopped before every due run was gone: its row budget ran out, or `error`.
    complete         INTEGER NOT NULL,
    error            TEXT
);

-- Deleting an action makes SQLite check that no action names it in undoes_action_id (a foreign
-- key): without an index, that is a scan of every action for each action deleted (pruning a
-- run of 50,000 decisions did not finish in 10 minutes). 20261206000001 made that index
-- (actions_undoes) for folding decisions, which deletes actions too.
-- No index on mutations (run_id) for pruning: the table holds calls, not decisions, and stays
-- small enough to scan.

-- Pruning deletes the snapshot bodies nothing names any more (issue 14). Finding them, and the
-- foreign-key check of each deletion, look a body up in every table that names it: without
-- these indexes each lookup reads the whole table.
CREATE INDEX snapshots_body ON snapshots (body_id);
CREATE INDEX decision_spans_body ON decision_spans (body_id);
CREATE INDEX marks_first_body ON marks (first_body_id);

-- The last id handed out per table, so that an id is never handed out twice: folding and
-- pruning delete the newest rows too, and max(id) + 1 would then name a second action (or
-- call, or body) with an id the audit log, its hash chain and an operator's notes already use.
CREATE TABLE id_high_water (
    name TEXT PRIMARY KEY,
    last INTEGER NOT NULL
);
INSERT INTO id_high_water (name, last)
    SELECT 'actions', coalesce(max(id), 0) FROM actions
    UNION ALL SELECT 'mutations', coalesce(max(id), 0) FROM mutations
    UNION ALL SELECT 'snapshot_bodies', coalesce(max(id), 0) FROM snapshot_bodies;

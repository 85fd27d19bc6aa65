-- Pruning deletes the snapshot bodies nothing names any more (issue 14). Finding them, and the
-- foreign-key check of each deletion, look a body up in every table that names it: without
-- these indexes each lookup reads the whole table.
CREATE INDEX snapshots_body ON snapshots (body_id);
CREATE INDEX decision_spans_body ON decision_spans (body_id);
CREATE INDEX marks_first_body ON marks (first_body_id);

-- Snapshot bodies are no longer de-duplicated by their hash as they are written (issue 14, the
-- apply path's speed): the unique index over random hashes had most of its pages rewritten by
-- every commit. A decision that extends a span drops its copy of the body when its run is
-- folded (src/audit/storage.rs), and bodies are stored compressed (src/audit/body.rs).
-- `sha256` cannot be dropped (a UNIQUE column), so new bodies leave it NULL; the old hashes
-- are cleared, so that its index stays small.
UPDATE snapshot_bodies SET sha256 = NULL WHERE sha256 IS NOT NULL;

-- Snapshots move to a write-once table of their own. An action row is updated several times
-- (in flight, then done); without its ~1 KiB snapshot it is small, so those updates rewrite a
-- few pages instead of one page per action.
CREATE TABLE snapshots (
    action_id       INTEGER PRIMARY KEY REFERENCES actions(id),
    -- The object exactly as Cloudflare listed it.
    body            TEXT    NOT NULL
);
INSERT INTO snapshots (action_id, body) SELECT id, snapshot FROM actions;
ALTER TABLE actions DROP COLUMN snapshot;

-- `audit actions --user` matches case-insensitively; an index on the raw column never served it.
DROP INDEX actions_user;
CREATE INDEX actions_user_lower ON actions (lower(user_email));

-- Rows get a mutation only when acted on: leave the many NULLs out of the index.
DROP INDEX actions_mutation;
CREATE INDEX actions_mutation ON actions (mutation_id) WHERE mutation_id IS NOT NULL;

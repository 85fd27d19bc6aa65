-- `zt-janitor apply FILE` acts on a saved plan's targets only. The run records which plan
-- (its file and SHA-256) and the cap the operator raised for that one apply, if any.
ALTER TABLE runs ADD COLUMN saved_plan_path TEXT;
ALTER TABLE runs ADD COLUMN saved_plan_sha256 TEXT;
ALTER TABLE runs ADD COLUMN max_actions_override INTEGER;

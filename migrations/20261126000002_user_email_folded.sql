-- `audit actions --user` ignores case the Unicode way (`élise` finds `ÉLISE@…`), which SQLite's
-- ASCII-only lower() cannot do: zt-janitor writes the case-folded email beside the email.
-- Rows written before this migration get lower(user_email), which folds ASCII letters only.
ALTER TABLE actions ADD COLUMN user_email_folded TEXT;
UPDATE actions SET user_email_folded = lower(user_email) WHERE user_email IS NOT NULL;
CREATE INDEX actions_user_folded ON actions (user_email_folded);
-- The filter no longer uses lower(user_email).
DROP INDEX IF EXISTS actions_user_lower;

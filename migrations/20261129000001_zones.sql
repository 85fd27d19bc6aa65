-- Zone-scoped kinds (API Shield client certificates): the zone of every decision and of every
-- call, so that an interrupted call is reconciled in its zone. NULL for account-scoped kinds
-- and for every row written before this migration.
ALTER TABLE actions ADD COLUMN zone_id TEXT;
ALTER TABLE mutations ADD COLUMN zone_id TEXT;

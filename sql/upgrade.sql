-- Upgrades: a database that installed 0.1 updates to the current version
-- in place, its pending events kept.
CREATE EXTENSION eventpipe VERSION '0.1';
SELECT eventpipe.publish('order-events', 'order-1', '{"n": 1}') IS NOT NULL AS published;

ALTER EXTENSION eventpipe UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'eventpipe';
SELECT topic, key, payload FROM eventpipe.outbox;

-- the upgraded extension publishes as before
SELECT eventpipe.publish('order-events', 'order-2', '{"n": 2}') IS NOT NULL AS published;
SELECT count(*) AS pending FROM eventpipe.outbox;

DROP EXTENSION eventpipe;

-- a fresh install goes to the default version
CREATE EXTENSION eventpipe;
SELECT extversion = default_version AS at_default_version
  FROM pg_extension, pg_available_extensions WHERE extname = 'eventpipe' AND name = extname;
DROP EXTENSION eventpipe;

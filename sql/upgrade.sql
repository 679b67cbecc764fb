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

-- a database that installed 0.2 keeps its subscriptions, rules and offsets
CREATE EXTENSION eventpipe VERSION '0.2';
CREATE TABLE upgrade_metrics (product text PRIMARY KEY, likes bigint NOT NULL DEFAULT 0);
SELECT eventpipe.subscribe('upgrade-sub', ARRAY['catalog-events']);
SELECT eventpipe.add_metric('upgrade-sub', 'LikeChanged', 'upgrade_metrics', 'product', 'likes') > 0 AS rule_added;
INSERT INTO eventpipe.consumer_offsets (subscription, topic, partition, next_offset)
VALUES ('upgrade-sub', 'catalog-events', 0, 42);
ALTER EXTENSION eventpipe UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'eventpipe';
SELECT name, topics FROM eventpipe.subscriptions;
SELECT subscription, event_type, target, key_field, column_name FROM eventpipe.metric_rules;
SELECT subscription, topic, partition, next_offset FROM eventpipe.consumer_offsets;
DROP EXTENSION eventpipe;
DROP TABLE upgrade_metrics;

-- a fresh install goes to the default version
CREATE EXTENSION eventpipe;
SELECT extversion = default_version AS at_default_version
  FROM pg_extension, pg_available_extensions WHERE extname = 'eventpipe' AND name = extname;
DROP EXTENSION eventpipe;

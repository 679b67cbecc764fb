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
-- its dedup ledger: a canonical UUID, other spellings of it, other ids, an
-- old row, and a row left by a subscription that is gone
INSERT INTO eventpipe.event_handled (subscription, event_id, handled_at)
VALUES ('upgrade-sub', '5f0c2a9e-8b1d-4c3e-a7f6-0d9e8c7b6a51', now()),
       ('upgrade-sub', '5F0C2A9E-8B1D-4C3E-A7F6-0D9E8C7B6A51', now()),
       ('upgrade-sub', '5f0c2a9e8b1d4c3ea7f60d9e8c7b6a51', now()),
       ('upgrade-sub', 'order-7', now()),
       ('upgrade-sub', 'catalog-events/0/41', now() - interval '8 days'),
       ('gone-sub', 'order-7', now());
ALTER EXTENSION eventpipe UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'eventpipe';
SELECT name, topics FROM eventpipe.subscriptions;
SELECT subscription, event_type, target, key_field, column_name FROM eventpipe.metric_rules;
-- owners written before 0.4 are not trusted: the subscription goes to the
-- extension's owner, the rule waits for a superuser to confirm its owner
SELECT name, owner, confirmed FROM eventpipe.subscriptions;
SELECT owner, confirmed, eventpipe.owner_is_tracked(owner) AS tracked FROM eventpipe.metric_rules;
SELECT eventpipe.confirm_owner('postgres') AS confirmed_rows;
SELECT owner, confirmed FROM eventpipe.metric_rules;
SELECT subscription, topic, partition, next_offset FROM eventpipe.consumer_offsets;
-- the ledger rows keep their meaning: the canonical UUID as a uuid, every
-- other id as text, the ages kept; the gone subscription's row dropped
SELECT s.name, h.event_uuid, h.event_text, h.handled_at < now() - interval '7 days' AS old
  FROM eventpipe.event_handled AS h JOIN eventpipe.subscriptions AS s ON s.id = h.subscription_id
 ORDER BY h.event_uuid, h.event_text COLLATE "C";
SELECT count(*) AS ledger_rows FROM eventpipe.event_handled;
-- and they still deduplicate: the consumer's ledger insert of those ids
-- again inserts nothing, a new id is inserted
SELECT id AS upgrade_sub_id FROM eventpipe.subscriptions WHERE name = 'upgrade-sub' \gset
INSERT INTO eventpipe.event_handled AS h (subscription_id, event_uuid, event_text)
SELECT :upgrade_sub_id, u.id, u.text
  FROM unnest(ARRAY['5f0c2a9e-8b1d-4c3e-a7f6-0d9e8c7b6a51', NULL, NULL, NULL, NULL]::uuid[],
              ARRAY[NULL, '5F0C2A9E-8B1D-4C3E-A7F6-0D9E8C7B6A51', '5f0c2a9e8b1d4c3ea7f60d9e8c7b6a51',
                    'order-7', 'order-8']::text[]) AS u(id, text)
ON CONFLICT DO NOTHING RETURNING h.event_uuid, h.event_text;
-- pruning by age goes by the new columns (the worker's statement)
DELETE FROM eventpipe.event_handled WHERE ctid = ANY (ARRAY(
  SELECT h.ctid FROM eventpipe.event_handled AS h
   WHERE h.subscription_id = (SELECT s.id FROM eventpipe.subscriptions AS s WHERE s.name = 'upgrade-sub')
     AND h.handled_at < now() - make_interval(secs => 7 * 86400)
   LIMIT 100))
RETURNING event_text;
-- a subscription gets a ledger number, and unsubscribe() takes its rows along
SELECT eventpipe.subscribe('upgrade-sub-2', ARRAY['catalog-events']);
SELECT id > :upgrade_sub_id AS numbered FROM eventpipe.subscriptions WHERE name = 'upgrade-sub-2';
SELECT eventpipe.unsubscribe('upgrade-sub');
SELECT count(*) AS ledger_rows FROM eventpipe.event_handled;
DROP EXTENSION eventpipe;
DROP TABLE upgrade_metrics;

-- a fresh install goes to the default version
CREATE EXTENSION eventpipe;
SELECT extversion = default_version AS at_default_version
  FROM pg_extension, pg_available_extensions WHERE extname = 'eventpipe' AND name = extname;
DROP EXTENSION eventpipe;

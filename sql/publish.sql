-- publish(): events land in the outbox of the caller's transaction, and bad
-- input is refused with a clear error.
CREATE EXTENSION eventpipe;

-- a plain event: its id comes back, its row carries what was given
SELECT eventpipe.publish('order-events', 'order-1', '{"type": "PaymentCompleted", "amount": 12.5}')
       IS NOT NULL AS published;
SELECT topic, key, payload, headers, event_type, event_id IS NOT NULL AS has_id
  FROM eventpipe.outbox ORDER BY id;

-- the returned id is the row's event id
SELECT eventpipe.publish('order-events', 'order-2', '{}') AS event_id \gset
SELECT count(*) AS matching FROM eventpipe.outbox WHERE event_id = :'event_id';

-- event ids are version 7 UUIDs: variant 10, and their first 48 bits are
-- the time of the call in Unix milliseconds, so later ids sort later
SELECT substr(:'event_id', 15, 1) AS version,
       substr(:'event_id', 20, 1) IN ('8', '9', 'a', 'b') AS variant_10,
       abs(('x' || substr(replace(:'event_id', '-', ''), 1, 12))::bit(48)::bigint
           - (extract(epoch FROM clock_timestamp()) * 1000)::bigint) < 60000 AS unix_ms_now;
BEGIN;
SELECT count(DISTINCT event_id) = 200 AND bool_and(event_id > :'event_id') AS later_ids_sort_later
  FROM (SELECT pg_sleep(0.002), eventpipe.publish('order-events', 'order-3', '{}') AS event_id
          FROM generate_series(1, 200)) AS p;
ROLLBACK;

-- event_type: explicit, else the payload's "type", else the default
SELECT eventpipe.publish('catalog-events', 'p1', '{"type": "LikeChanged"}', NULL, 'LikeAdded') IS NOT NULL;
SELECT eventpipe.publish('catalog-events', 'p1', '{"type": 42}') IS NOT NULL;
SELECT eventpipe.publish('catalog-events', NULL, '[1, 2]', '{"trace": "abc", "tenant": "t1"}') IS NOT NULL;
SELECT key, payload, headers, event_type FROM eventpipe.outbox
 WHERE topic = 'catalog-events' ORDER BY id;

-- TRUNCATE would drop committed events nobody sent: refused while any is
-- pending (DELETE, which names what it discards, is the way)
TRUNCATE eventpipe.outbox;
DELETE FROM eventpipe.outbox;
TRUNCATE eventpipe.outbox;

-- a rolled-back transaction leaves nothing; a rolled-back savepoint only its part
BEGIN;
SELECT eventpipe.publish('order-events', 'gone', '{}') IS NOT NULL;
ROLLBACK;
BEGIN;
SELECT eventpipe.publish('order-events', 'kept', '{}') IS NOT NULL;
SAVEPOINT s;
SELECT eventpipe.publish('order-events', 'undone', '{}') IS NOT NULL;
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT key FROM eventpipe.outbox ORDER BY id;

-- topics Kafka would reject
SELECT eventpipe.publish(NULL, 'k', '{}');
SELECT eventpipe.publish('', 'k', '{}');
SELECT eventpipe.publish('order events', 'k', '{}');
SELECT eventpipe.publish('orders/eu', 'k', '{}');
SELECT eventpipe.publish('commandes-été', 'k', '{}');
SELECT eventpipe.publish('.', 'k', '{}');
SELECT eventpipe.publish('..', 'k', '{}');
SELECT eventpipe.publish(repeat('t', 250), 'k', '{}');
-- 249 characters is the longest legal name
SELECT eventpipe.publish(repeat('t', 249), 'k', '{}') IS NOT NULL AS longest_topic_ok;

-- payload and event type
SELECT eventpipe.publish('order-events', 'k', NULL);
SELECT eventpipe.publish('order-events', 'k', '{}', NULL, '');

-- headers must be a JSON object of strings, without reserved names
SELECT eventpipe.publish('order-events', 'k', '{}', '["a"]');
SELECT eventpipe.publish('order-events', 'k', '{}', '"a"');
SELECT eventpipe.publish('order-events', 'k', '{}', '{"n": 1}');
SELECT eventpipe.publish('order-events', 'k', '{}', '{"n": null}');
SELECT eventpipe.publish('order-events', 'k', '{}', '{"n": {"nested": "x"}}');
SELECT eventpipe.publish('order-events', 'k', '{}', '{"": "x"}');
SELECT eventpipe.publish('order-events', 'k', '{}', '{"ce_id": "x"}');
SELECT eventpipe.publish('order-events', 'k', '{}', '{"CE_TYPE": "x"}');
SELECT eventpipe.publish('order-events', 'k', '{}', '{"Content-Type": "text/plain"}');

-- none of the refused calls left a row: only 'kept' and the 249-character topic
SELECT key, length(topic) FROM eventpipe.outbox ORDER BY id;

-- privileges: publishing is granted, the outbox itself never is
CREATE ROLE ep_app LOGIN;
GRANT USAGE ON SCHEMA eventpipe TO ep_app;
SET ROLE ep_app;
SELECT eventpipe.publish('order-events', 'k', '{}');
RESET ROLE;
GRANT EXECUTE ON FUNCTION eventpipe.publish(text, text, jsonb, jsonb, text) TO ep_app;
SET ROLE ep_app;
SELECT eventpipe.publish('order-events', 'from-app', '{}') IS NOT NULL AS app_published;
SELECT count(*) FROM eventpipe.outbox;
INSERT INTO eventpipe.outbox (event_id, topic, payload, event_type)
  VALUES (gen_random_uuid(), 't', '{}', 'x');
RESET ROLE;
SELECT count(*) AS app_rows FROM eventpipe.outbox WHERE key = 'from-app';

-- configuration: secrets are hidden, bad options refused (the reserved
-- prefix: reserved_prefix.sql)
SHOW eventpipe.relay_batch_size;
SET ROLE ep_app;
-- (SQLSTATE only: the wording of this refusal changed in PostgreSQL 16)
\set VERBOSITY sqlstate
SHOW eventpipe.kafka_options;
\set VERBOSITY default
SELECT count(*) AS visible FROM pg_settings WHERE name = 'eventpipe.kafka_options';
RESET ROLE;
ALTER SYSTEM SET eventpipe.kafka_options = 'no-equals-sign';
ALTER SYSTEM SET eventpipe.kafka_options = 'no.such.property=1';
-- a refused value is not echoed: it may hold a secret
ALTER SYSTEM SET eventpipe.kafka_options = 'sasl.password=hunter2,acks=sometimes';
ALTER SYSTEM SET eventpipe.kafka_options = 'sasl.password=hunter2,oops';
-- a password with a comma: its tail is named by position, never quoted
ALTER SYSTEM SET eventpipe.kafka_options = 'sasl.password=Part1,Part2Secret=x';
ALTER SYSTEM SET eventpipe.relay_batch_size = 0;
ALTER SYSTEM SET eventpipe.relay_workers = 33;

REVOKE ALL ON SCHEMA eventpipe FROM ep_app;
REVOKE ALL ON FUNCTION eventpipe.publish(text, text, jsonb, jsonb, text) FROM ep_app;
DROP ROLE ep_app;

-- The consumer's SQL interface: subscribe / unsubscribe, add_metric and
-- add_handler with the checks they make when declared, who may call them,
-- and consumer_stats().  No Kafka here: this instance's workers serve
-- another database, so nothing below is consumed.
CREATE EXTENSION eventpipe;
SET client_min_messages = warning;

-- subscribe: defaults, and the row it writes
SELECT eventpipe.subscribe('shop-metrics', ARRAY['order-events', 'catalog-events']);
SELECT eventpipe.subscribe('late', ARRAY['order-events'], group_id => 'bo', start_from => 'latest',
                           batch_size => 500, dedup_field => 'event_id');
SELECT name, topics, group_id, start_from, batch_size, dedup_field, workers, created_at <= now() AS created
  FROM eventpipe.subscriptions ORDER BY name;

-- subscribe: what it refuses
SELECT eventpipe.subscribe('shop-metrics', ARRAY['x']);
SELECT eventpipe.subscribe('bad name', ARRAY['x']);
SELECT eventpipe.subscribe(repeat('n', 64), ARRAY['x']);
SELECT eventpipe.subscribe('s', ARRAY[]::text[]);
SELECT eventpipe.subscribe('s', ARRAY['ok', NULL]);
SELECT eventpipe.subscribe('s', ARRAY['no spaces']);
SELECT eventpipe.subscribe('s', ARRAY['..']);
SELECT eventpipe.subscribe('s', ARRAY['t'], start_from => 'middle');
SELECT eventpipe.subscribe('s', ARRAY['t'], batch_size => 0);
SELECT eventpipe.subscribe('s', ARRAY['t'], group_id => '');
SELECT eventpipe.subscribe('s', ARRAY['t'], workers => 0);
SELECT eventpipe.subscribe('s', ARRAY['t'], workers => 33);
SELECT eventpipe.subscribe('s', ARRAY['t'], workers => NULL);
-- the table itself checks topic names too (a superuser may still UPDATE it)
UPDATE eventpipe.subscriptions SET topics = ARRAY['bad topic'] WHERE name = 'late';
UPDATE eventpipe.subscriptions SET topics = ARRAY['order-events', 'payment-events'] WHERE name = 'late';
-- and the workers: a superuser's UPDATE changes them without a restart
UPDATE eventpipe.subscriptions SET workers = 0 WHERE name = 'late';
UPDATE eventpipe.subscriptions SET workers = 33 WHERE name = 'late';
UPDATE eventpipe.subscriptions SET workers = 3 WHERE name = 'late';
SELECT eventpipe.subscribe('many', ARRAY['order-events'], workers => 32);
SELECT name, workers FROM eventpipe.subscriptions WHERE name IN ('late', 'many') ORDER BY name;
SELECT eventpipe.unsubscribe('many');

-- metric targets
CREATE TABLE product_stats (product_id bigint PRIMARY KEY, views bigint, likes integer NOT NULL DEFAULT 0,
                            revenue numeric(12,2), label text NOT NULL DEFAULT '');
CREATE TABLE customer_totals (customer text PRIMARY KEY, spent double precision);
CREATE VIEW product_view AS SELECT * FROM product_stats;
CREATE TABLE no_pk (id bigint, n bigint);
CREATE TABLE two_col_pk (a int, b int, n bigint, PRIMARY KEY (a, b));
CREATE TABLE strict_stats (id int PRIMARY KEY, n bigint, region text NOT NULL);
CREATE TEMP TABLE temp_stats (id int PRIMARY KEY, n bigint);

SELECT eventpipe.add_metric('shop-metrics', 'ProductViewed', 'product_stats', 'product_id', 'views') > 0 AS rule;
SELECT eventpipe.add_metric('shop-metrics', 'LikeChanged', 'product_stats', 'product_id', 'likes', 'delta') > 0 AS rule;
SELECT eventpipe.add_metric('shop-metrics', 'PaymentCompleted', 'product_stats', 'product_id', 'revenue', 'amount') > 0 AS rule;
SELECT eventpipe.add_metric('shop-metrics', 'PaymentCompleted', 'customer_totals', 'customer', 'spent', 'amount') > 0 AS rule;
SELECT subscription, event_type, target, key_field, column_name, value_field, owner
  FROM eventpipe.metric_rules ORDER BY id;

-- add_metric: what it refuses
SELECT eventpipe.add_metric('nope', 'T', 'product_stats', 'product_id', 'views');
SELECT eventpipe.add_metric('shop-metrics', 'T', 'product_view', 'product_id', 'views');
SELECT eventpipe.add_metric('shop-metrics', 'T', 'temp_stats', 'id', 'n');
SELECT eventpipe.add_metric('shop-metrics', 'T', 'no_pk', 'id', 'n');
SELECT eventpipe.add_metric('shop-metrics', 'T', 'two_col_pk', 'a', 'n');
SELECT eventpipe.add_metric('shop-metrics', 'T', 'product_stats', 'product_id', 'nope');
SELECT eventpipe.add_metric('shop-metrics', 'T', 'product_stats', 'product_id', 'product_id');
SELECT eventpipe.add_metric('shop-metrics', 'T', 'product_stats', 'product_id', 'label');
SELECT eventpipe.add_metric('shop-metrics', 'T', 'strict_stats', 'id', 'n');
SELECT eventpipe.add_metric('shop-metrics', NULL, 'product_stats', 'product_id', 'views');
SELECT eventpipe.add_metric('shop-metrics', 'T', 'product_stats', '', 'views');
SELECT eventpipe.add_metric('shop-metrics', 'T', 'missing_table', 'id', 'n');

-- handlers
CREATE FUNCTION on_payment(payload jsonb, metadata jsonb) RETURNS void LANGUAGE sql AS 'SELECT';
CREATE FUNCTION wrong_args(payload jsonb) RETURNS void LANGUAGE sql AS 'SELECT';
CREATE FUNCTION wrong_types(payload json, metadata json) RETURNS void LANGUAGE sql AS 'SELECT';
CREATE FUNCTION returns_set(payload jsonb, metadata jsonb) RETURNS SETOF int LANGUAGE sql AS 'SELECT 1';
CREATE PROCEDURE a_procedure(payload jsonb, metadata jsonb) LANGUAGE sql AS 'SELECT';
SELECT eventpipe.add_handler('shop-metrics', 'PaymentCompleted', 'on_payment(jsonb, jsonb)') > 0 AS handler;
SELECT subscription, event_type, handler, owner FROM eventpipe.handlers;
SELECT eventpipe.add_handler('nope', 'PaymentCompleted', 'on_payment(jsonb, jsonb)');
SELECT eventpipe.add_handler('shop-metrics', 'PaymentCompleted', 'wrong_args(jsonb)');
SELECT eventpipe.add_handler('shop-metrics', 'PaymentCompleted', 'wrong_types(json, json)');
SELECT eventpipe.add_handler('shop-metrics', 'PaymentCompleted', 'returns_set(jsonb, jsonb)');
SELECT eventpipe.add_handler('shop-metrics', 'PaymentCompleted', 'a_procedure(jsonb, jsonb)');
SELECT eventpipe.add_handler('shop-metrics', '', 'on_payment(jsonb, jsonb)');

-- privileges: nothing here is PUBLIC
SELECT p.proname, has_function_privilege('public', p.oid, 'EXECUTE') AS public_may_execute
  FROM pg_proc AS p
 WHERE p.pronamespace = 'eventpipe'::regnamespace
   AND p.proname IN ('subscribe', 'unsubscribe', 'add_metric', 'add_handler', 'consumer_stats',
                     'remove_metric', 'remove_handler', 'subscribe_as', 'add_metric_as',
                     'add_handler_as', 'may_change', 'check_may_change')
 ORDER BY 1;
CREATE ROLE ep_consumer_plain;
GRANT USAGE ON SCHEMA eventpipe TO ep_consumer_plain;
SET ROLE ep_consumer_plain;
SELECT eventpipe.subscribe('mine', ARRAY['t']);
SELECT eventpipe.unsubscribe('shop-metrics');
SELECT * FROM eventpipe.consumer_stats();
RESET ROLE;

-- a role allowed to declare rules still needs SELECT, INSERT and UPDATE on the
-- target; no right on eventpipe's tables is needed (nor given by them)
CREATE ROLE ep_backoffice;
GRANT USAGE ON SCHEMA eventpipe TO ep_backoffice;
GRANT EXECUTE ON FUNCTION eventpipe.subscribe(text, text[], text, text, integer, text, integer),
                          eventpipe.add_metric(text, text, regclass, text, text, text),
                          eventpipe.add_handler(text, text, regprocedure),
                          eventpipe.remove_metric(bigint), eventpipe.unsubscribe(text) TO ep_backoffice;
GRANT INSERT, UPDATE ON product_stats TO ep_backoffice;
SET ROLE ep_backoffice;
SELECT eventpipe.subscribe('bo-metrics', ARRAY['order-events']);
SELECT eventpipe.add_metric('bo-metrics', 'T', 'product_stats', 'product_id', 'views');
RESET ROLE;
GRANT SELECT ON product_stats TO ep_backoffice;
SET ROLE ep_backoffice;
SELECT eventpipe.add_metric('bo-metrics', 'Other', 'product_stats', 'product_id', 'views') > 0 AS rule;
-- the tables are closed: no forged owner, no rule behind the functions' back
INSERT INTO eventpipe.metric_rules (subscription, event_type, target, key_field, column_name, owner)
VALUES ('bo-metrics', 'T', 'product_stats', 'product_id', 'views', 'postgres');
INSERT INTO eventpipe.handlers (subscription, event_type, handler, owner)
VALUES ('bo-metrics', 'T', 'on_payment(jsonb, jsonb)', 'postgres');
UPDATE eventpipe.metric_rules SET owner = 'postgres';
DELETE FROM eventpipe.subscriptions;
-- another role's subscription is not its to change
SELECT eventpipe.add_metric('shop-metrics', 'Other', 'product_stats', 'product_id', 'views');
SELECT eventpipe.remove_metric(1);  -- shop-metrics' first rule
SELECT eventpipe.unsubscribe('shop-metrics');
-- nor its consumer group, which would split the partitions between the two
SELECT eventpipe.subscribe('bo-steal', ARRAY['order-events'], group_id => 'bo');
RESET ROLE;
SELECT name, group_id, owner FROM eventpipe.subscriptions ORDER BY name;
SELECT event_type, owner FROM eventpipe.metric_rules WHERE subscription = 'bo-metrics';
-- the owner (here a superuser, who may change both) may share a group, by naming it
SELECT eventpipe.subscribe('late-twin', ARRAY['order-events'], group_id => 'bo');
SELECT eventpipe.subscribe('bo-metrics-2', ARRAY['order-events'], group_id => 'bo-metrics');
SELECT eventpipe.unsubscribe('late-twin');
-- an owner is a dependency: DROP ROLE refuses, REASSIGN OWNED hands over
DROP ROLE ep_backoffice;
CREATE ROLE ep_backoffice_heir;
REASSIGN OWNED BY ep_backoffice TO ep_backoffice_heir;
SELECT name, owner FROM eventpipe.subscriptions WHERE name = 'bo-metrics';
SELECT event_type, owner FROM eventpipe.metric_rules WHERE subscription = 'bo-metrics';
-- DROP OWNED takes its subscriptions, rules and handlers away
DROP OWNED BY ep_backoffice_heir;
SELECT count(*) AS left_behind FROM eventpipe.subscriptions WHERE name = 'bo-metrics';
DROP ROLE ep_backoffice_heir;

-- declaration checks: a target that is no table, field paths with an empty part
SELECT eventpipe.add_metric('shop-metrics', 'T', 0, 'product_id', 'views');
SELECT eventpipe.add_metric('shop-metrics', 'T', 'product_stats', '.', 'views');
SELECT eventpipe.add_metric('shop-metrics', 'T', 'product_stats', 'a..b', 'views');
SELECT eventpipe.add_metric('shop-metrics', 'T', 'product_stats', 'product_id', 'views', 'amount.');
SELECT eventpipe.subscribe('s', ARRAY['t'], dedup_field => '.id');

-- consumer_stats: the columns, readable by pg_monitor
SELECT unnest(proargnames) AS column_name, unnest(proallargtypes::regtype[]) AS type
  FROM pg_proc WHERE oid = 'eventpipe.consumer_stats'::regproc;
CREATE ROLE ep_consumer_watcher IN ROLE pg_monitor;
SET ROLE ep_consumer_watcher;
SELECT count(*) >= 0 AS readable FROM eventpipe.consumer_stats();
RESET ROLE;

-- unsubscribe takes rules, handlers, ledger and offsets along; dead letters stay
-- (the ledger's partitions are the workers' to make; none run here), from
-- a session whose TimeZone and DateStyle differ: the bounds are UTC midnights
SET TimeZone = 'Asia/Kolkata';
SET DateStyle = 'SQL, DMY';
SELECT eventpipe.ledger_upkeep(7 * 86400) > now() AS ledger_ready;
SET TimeZone = 'UTC';
SET DateStyle = 'ISO';
SELECT count(*) AS partitions,
       count(*) FILTER (WHERE pg_get_expr(c.relpartbound, c.oid)
                              ~ '^FOR VALUES FROM \(''[0-9-]{10} 00:00:00\+00''\) TO \(''[0-9-]{10} 00:00:00\+00''\)$')
         AS at_utc_midnight
  FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
 WHERE i.inhparent IN ('eventpipe.event_handled'::regclass, 'eventpipe.event_handled_runs'::regclass);
RESET TimeZone;
RESET DateStyle;
-- a table of a partition's name that is not that partition is named, not skipped
SELECT to_char((now() AT TIME ZONE 'UTC')::date + 3, 'YYYYMMDD') AS day3 \gset
CREATE TABLE eventpipe.event_handled_:day3 (x integer);
DO $$
BEGIN
    PERFORM eventpipe.ledger_make_partitions(d, d) FROM (SELECT (now() AT TIME ZONE 'UTC')::date + 3) AS x(d);
EXCEPTION WHEN duplicate_table THEN
    RAISE WARNING '%', regexp_replace(SQLERRM, '[0-9]{8}', 'YYYYMMDD');
END;
$$;
DROP TABLE eventpipe.event_handled_:day3;
INSERT INTO eventpipe.event_handled (subscription_id, event_text)
SELECT id, 'e1' FROM eventpipe.subscriptions WHERE name = 'shop-metrics';
SELECT id AS shop_metrics_id FROM eventpipe.subscriptions WHERE name = 'shop-metrics' \gset
INSERT INTO eventpipe.consumer_offsets VALUES ('shop-metrics', 'order-events', 0, 42);
INSERT INTO eventpipe.consumer_dead_letters (subscription, topic, partition, "offset", value, error)
VALUES ('shop-metrics', 'order-events', 0, 7, '\x00ff', 'value contains a NUL byte');
SELECT eventpipe.unsubscribe('shop-metrics');
SELECT (SELECT count(*) FROM eventpipe.subscriptions WHERE name = 'shop-metrics') AS subscriptions,
       (SELECT count(*) FROM eventpipe.metric_rules WHERE subscription = 'shop-metrics') AS rules,
       (SELECT count(*) FROM eventpipe.handlers WHERE subscription = 'shop-metrics') AS handlers,
       (SELECT count(*) FROM eventpipe.event_handled WHERE subscription_id = :shop_metrics_id) AS ledger,
       (SELECT count(*) FROM eventpipe.consumer_offsets WHERE subscription = 'shop-metrics') AS offsets,
       (SELECT count(*) FROM eventpipe.consumer_dead_letters WHERE subscription = 'shop-metrics') AS dead_letters;
SELECT eventpipe.unsubscribe('shop-metrics');

-- the consumer's tables are carried by pg_dump
SELECT c.relname
  FROM pg_extension AS e, unnest(e.extconfig) AS t(oid) JOIN pg_class AS c ON c.oid = t.oid
 WHERE e.extname = 'eventpipe' ORDER BY 1;

DROP EXTENSION eventpipe;
DROP TABLE product_stats, customer_totals, no_pk, two_col_pk, strict_stats CASCADE;
DROP FUNCTION on_payment, wrong_args, wrong_types, returns_set;
DROP PROCEDURE a_procedure;
DROP OWNED BY ep_backoffice, ep_consumer_plain;
DROP ROLE ep_consumer_plain, ep_backoffice, ep_consumer_watcher;

-- Consumer operations: pg_stat_consumer, pause()/resume(), replay(),
-- retry_consumer_dead().  No Kafka and no worker in this database (the
-- workers serve eventpipe.database, "postgres"): what is checked here is the
-- SQL side, the shapes, the privileges and the errors; t/402 runs them
-- against a real broker.
CREATE EXTENSION eventpipe;

-- pg_stat_consumer: its columns
SELECT attname AS column_name, atttypid::regtype AS type
  FROM pg_attribute
 WHERE attrelid = 'eventpipe.pg_stat_consumer'::regclass AND attnum > 0
 ORDER BY attnum;

-- a new subscription shows up at once, with no partition yet
SELECT eventpipe.subscribe('ops', ARRAY['order-events', 'catalog-events']);
SELECT subscription, pid, state, topic, partition, committed_offset, high_watermark, lag,
       events_applied, duplicates, unmatched, events_dead, last_error
  FROM eventpipe.pg_stat_consumer;

-- a stored offset is a partition row (no worker: no watermark, so no lag)
INSERT INTO eventpipe.consumer_offsets VALUES ('ops', 'order-events', 1, 40), ('ops', 'order-events', 0, 12);
SELECT subscription, state, topic, partition, committed_offset, high_watermark, lag, events_applied
  FROM eventpipe.pg_stat_consumer ORDER BY topic, partition;

-- pause and resume: persistent, in the subscription's row
SELECT eventpipe.pause('ops') AS paused_now;
SELECT eventpipe.pause('ops') AS paused_now;
SELECT name, paused FROM eventpipe.subscriptions;
SELECT DISTINCT state FROM eventpipe.pg_stat_consumer WHERE subscription = 'ops';
SELECT eventpipe.resume('ops') AS resumed_now;
SELECT eventpipe.resume('ops') AS resumed_now;
SELECT name, paused FROM eventpipe.subscriptions;
SELECT eventpipe.pause('nope');
SELECT eventpipe.resume('nope');
SELECT eventpipe.pause(NULL);

-- replay: asks the worker to store the offset and rejoin its group there
-- (no worker here: the requests wait, the stored offsets stay)
SELECT eventpipe.replay('ops', 'order-events', 1, 5) AS stored_offset;
SELECT eventpipe.replay('ops', 'catalog-events', 2, 0) AS stored_offset;
SELECT topic, partition, committed_offset FROM eventpipe.pg_stat_consumer ORDER BY topic, partition;
SELECT subscription, topic, partition, from_offset FROM eventpipe.consumer_replays ORDER BY topic, partition;
-- asked again before the worker carried it out: the last one wins
SELECT eventpipe.replay('ops', 'order-events', 1, 7) AS stored_offset;
SELECT topic, partition, from_offset FROM eventpipe.consumer_replays ORDER BY topic, partition;
SELECT eventpipe.replay('nope', 'order-events', 0, 0);
SELECT eventpipe.replay('ops', 'other-events', 0, 0);
SELECT eventpipe.replay('ops', NULL, 0, 0);
SELECT eventpipe.replay('ops', 'order-events', -1, 0);
SELECT eventpipe.replay('ops', 'order-events', 0, -5);
SELECT eventpipe.replay('ops', 'order-events', 0, NULL);

-- retry_consumer_dead: marks dead letters for the worker
INSERT INTO eventpipe.consumer_dead_letters (subscription, topic, partition, "offset", value, error)
VALUES ('ops', 'order-events', 0, 3, 'not json', 'value is not valid JSON'),
       ('ops', 'order-events', 0, 4, 'not json', 'value is not valid JSON'),
       ('gone', 'order-events', 0, 5, 'not json', 'value is not valid JSON');
SELECT eventpipe.retry_consumer_dead(topic => 'catalog-events') AS queued_of_another_topic;
SELECT eventpipe.retry_consumer_dead(ARRAY[(SELECT min(id) FROM eventpipe.consumer_dead_letters)]) AS queued;
SELECT "offset", retry_requested_at IS NOT NULL AS queued FROM eventpipe.consumer_dead_letters ORDER BY id;
SELECT eventpipe.retry_consumer_dead(subscription => 'ops', topic => 'order-events') AS queued;
-- the dead letters of a subscription that is gone have no worker to retry them
SELECT eventpipe.retry_consumer_dead() AS queued;
SELECT subscription, "offset", retry_requested_at IS NOT NULL AS queued FROM eventpipe.consumer_dead_letters ORDER BY id;
SELECT eventpipe.retry_consumer_dead(ARRAY[-1]::bigint[]) AS queued;
SELECT eventpipe.retry_consumer_dead(NULL, 'nope');

-- stat_reset() still returns its time, and pg_stat_consumer shows counters
-- of zero for partitions no worker has counted yet
SELECT eventpipe.stat_reset() BETWEEN now() AND clock_timestamp() AS reset;
SELECT sum(events_applied + duplicates + unmatched + events_dead) AS counted FROM eventpipe.pg_stat_consumer;

-- privileges: the operations are not PUBLIC; the view is for pg_monitor
SELECT p.oid::regprocedure AS function, has_function_privilege('public', p.oid, 'EXECUTE') AS public_may_execute,
       has_function_privilege('pg_monitor', p.oid, 'EXECUTE') AS pg_monitor_may_execute
  FROM pg_proc AS p
 WHERE p.pronamespace = 'eventpipe'::regnamespace
   AND p.proname IN ('pause', 'resume', 'replay', 'retry_consumer_dead', 'set_paused',
                     'consumer_partition_stats', 'consumer_stats', 'stat_reset')
 ORDER BY p.oid::regprocedure::text;
SELECT has_table_privilege('public', 'eventpipe.pg_stat_consumer', 'SELECT') AS public_may_read,
       has_table_privilege('pg_monitor', 'eventpipe.pg_stat_consumer', 'SELECT') AS pg_monitor_may_read;

CREATE ROLE regress_ops_watcher IN ROLE pg_monitor;
SET ROLE regress_ops_watcher;
SELECT subscription, topic, partition, committed_offset FROM eventpipe.pg_stat_consumer ORDER BY topic, partition;
SELECT eventpipe.pause('ops');
RESET ROLE;

CREATE ROLE regress_ops_plain;
GRANT USAGE ON SCHEMA eventpipe TO regress_ops_plain;
SET ROLE regress_ops_plain;
SELECT * FROM eventpipe.pg_stat_consumer;
SELECT * FROM eventpipe.consumer_partition_stats();
SELECT eventpipe.pause('ops');
SELECT eventpipe.resume('ops');
SELECT eventpipe.replay('ops', 'order-events', 0, 0);
SELECT eventpipe.retry_consumer_dead();
RESET ROLE;

-- EXECUTE operates the caller's own subscriptions; another role's needs
-- membership in eventpipe_admin (no rights on the tables either way)
CREATE ROLE regress_ops_operator;
GRANT USAGE ON SCHEMA eventpipe TO regress_ops_operator;
GRANT EXECUTE ON FUNCTION eventpipe.pause(text), eventpipe.resume(text),
                          eventpipe.replay(text, text, integer, bigint),
                          eventpipe.retry_consumer_dead(bigint[], text, text) TO regress_ops_operator;
SET ROLE regress_ops_operator;
SELECT eventpipe.pause('ops');
SELECT eventpipe.replay('ops', 'order-events', 0, 1);
SELECT eventpipe.retry_consumer_dead() AS queued_of_others;
RESET ROLE;
GRANT eventpipe_admin TO regress_ops_operator;
SET ROLE regress_ops_operator;
SELECT eventpipe.pause('ops') AS paused_now;
SELECT eventpipe.replay('ops', 'order-events', 0, 1) AS stored_offset;
SELECT eventpipe.retry_consumer_dead(subscription => 'ops') AS queued;
SELECT eventpipe.resume('ops') AS resumed_now;
SELECT * FROM eventpipe.subscriptions;
RESET ROLE;

-- unsubscribe takes the pending replays along
SELECT eventpipe.unsubscribe('ops');
SELECT count(*) AS replays FROM eventpipe.consumer_replays;
SELECT count(*) AS rows FROM eventpipe.pg_stat_consumer;

DROP EXTENSION eventpipe;
DROP OWNED BY regress_ops_watcher, regress_ops_plain, regress_ops_operator;
DROP ROLE regress_ops_watcher, regress_ops_plain, regress_ops_operator;

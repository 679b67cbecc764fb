-- pg_stat_relay: one row per relay worker, readable by pg_monitor only.
-- This database is not served in this instance (eventpipe.database names
-- "postgres"), so the row says so.

-- wait (up to 30 s) for the launcher to have looked at this database
DO $$
BEGIN
  FOR i IN 1..300 LOOP
    EXIT WHEN (SELECT state FROM eventpipe.pg_stat_relay WHERE worker = 0) <> 'stopped';
    PERFORM pg_sleep(0.1);
  END LOOP;
END $$;

SELECT worker, pid IS NOT NULL AS running, state, database, events_sent, events_failed,
       events_retried, events_dead,
       batches, bytes_sent, last_latency, last_error, last_error_time, stats_reset <= now() AS reset_in_past
  FROM eventpipe.pg_stat_relay;

-- the backlog counts this database's pending events
DELETE FROM eventpipe.outbox;
SELECT eventpipe.publish('order-events', 'k' || g, '{}') IS NOT NULL FROM generate_series(1, 3) g;
SELECT backlog, oldest_pending_age >= '0'::interval AS has_age FROM eventpipe.pg_stat_relay;

-- the columns, in order
SELECT attname, format_type(atttypid, atttypmod)
  FROM pg_attribute WHERE attrelid = 'eventpipe.pg_stat_relay'::regclass AND attnum > 0
 ORDER BY attnum;

-- a plain role cannot read it; a member of pg_monitor can
CREATE ROLE ep_plain;
CREATE ROLE ep_watcher IN ROLE pg_monitor;
SET ROLE ep_plain;
SELECT count(*) FROM eventpipe.pg_stat_relay;
SET ROLE ep_watcher;
SELECT count(*) AS rows_seen, sum(backlog) AS backlog_seen FROM eventpipe.pg_stat_relay;
-- every database's workers: for pg_monitor (this database, not served,
-- has no worker there), not for a role that may only use the schema
SELECT count(*) AS relay_rows_here FROM eventpipe.relay_stats_all() WHERE database = current_database();
SELECT count(*) AS consumer_rows_here FROM eventpipe.consumer_stats_all() WHERE database = current_database();
RESET ROLE;
GRANT USAGE ON SCHEMA eventpipe TO ep_plain;
SET ROLE ep_plain;
SELECT count(*) FROM eventpipe.relay_stats_all();
SELECT count(*) FROM eventpipe.consumer_stats_all();
RESET ROLE;
REVOKE USAGE ON SCHEMA eventpipe FROM ep_plain;
SET ROLE ep_watcher;
SELECT count(*) FROM eventpipe.outbox;
-- kafka_options: pg_monitor (through pg_read_all_settings) sees the
-- property names only, a plain role nothing, a superuser everything;
-- pg_settings shows it to nobody (its reset_val column is not masked)
SHOW eventpipe.kafka_options;
SELECT current_setting('eventpipe.kafka_options');
SELECT count(*) AS rows_in_pg_settings FROM pg_settings WHERE name = 'eventpipe.kafka_options';
SET ROLE ep_plain;
-- (SQLSTATE only: the wording of this refusal changed in PostgreSQL 16)
\set VERBOSITY sqlstate
SHOW eventpipe.kafka_options;
\set VERBOSITY default
RESET ROLE;
SHOW eventpipe.kafka_options;

-- stat_reset(): counters to zero, stats_reset stamped; not for PUBLIC,
-- nor for pg_monitor
SELECT stats_reset AS before_reset FROM eventpipe.pg_stat_relay WHERE worker = 0 \gset
SELECT eventpipe.stat_reset() > :'before_reset'::timestamptz AS reset_is_later;
SELECT worker, events_sent, events_failed, batches, bytes_sent, last_error,
       stats_reset > :'before_reset'::timestamptz AS stamped
  FROM eventpipe.pg_stat_relay;
SET ROLE ep_plain;
SELECT eventpipe.stat_reset();
SET ROLE ep_watcher;
SELECT eventpipe.stat_reset();
RESET ROLE;

-- pause_relay() / resume_relay(): a row in eventpipe.relay_pause while
-- paused; pausing twice keeps the first time; not for PUBLIC nor
-- pg_monitor, which may look at the table; not in a prepared transaction
SELECT eventpipe.pause_relay() <= now() AS paused_since;
SELECT eventpipe.pause_relay() = paused_at AS pausing_again_keeps_the_time FROM eventpipe.relay_pause;
SELECT count(*) AS pause_rows FROM eventpipe.relay_pause;
SET ROLE ep_watcher;
SELECT paused, paused_by FROM eventpipe.relay_pause;
SELECT eventpipe.resume_relay();
SET ROLE ep_plain;
SELECT eventpipe.pause_relay();
SELECT count(*) FROM eventpipe.relay_pause;
RESET ROLE;
BEGIN;
SELECT eventpipe.resume_relay() AS was_paused;
PREPARE TRANSACTION 'resume';
SELECT eventpipe.resume_relay() AS was_paused;
SELECT eventpipe.resume_relay() AS was_paused;
INSERT INTO eventpipe.relay_pause (paused, paused_at) VALUES (false, '2026-01-01 00:00+00');

-- kafka_statistics(): no Kafka client runs here (no bootstrap servers), so
-- no rows; pg_monitor may call it, a plain role may not
SELECT * FROM eventpipe.kafka_statistics();
SET ROLE ep_watcher;
SELECT count(*) FROM eventpipe.kafka_statistics();
SET ROLE ep_plain;
SELECT count(*) FROM eventpipe.kafka_statistics();
RESET ROLE;
DROP ROLE ep_plain;
DROP ROLE ep_watcher;

DROP EXTENSION eventpipe;

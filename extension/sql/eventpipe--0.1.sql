-- eventpipe 0.1: the outbox, publish(), and the relay's statistics view.
-- Installed by CREATE EXTENSION eventpipe VERSION '0.1' (the start of the
-- update chain); a plain CREATE EXTENSION installs the current version.

\echo Use "CREATE EXTENSION eventpipe" to load this file. \quit

-- Pending events, written in the publisher's transaction and deleted by the
-- relay worker once Kafka has acknowledged them.  Nobody but the extension's
-- owner reads or writes it directly: publish() is SECURITY DEFINER.
--
-- Rows come and go all the time: autovacuum is told to clean up after every
-- few thousand deleted rows, whatever the table's size, and without the cost
-- delay, so the table stays small under sustained load.
CREATE TABLE eventpipe.outbox (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        uuid        NOT NULL,
    topic           text        NOT NULL,
    key             text,
    payload         jsonb       NOT NULL,
    headers         jsonb,
    event_type      text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    last_error      text
) WITH (autovacuum_vacuum_scale_factor = 0,
        autovacuum_vacuum_threshold = 5000,
        autovacuum_vacuum_insert_scale_factor = 0,
        autovacuum_vacuum_insert_threshold = 20000,
        autovacuum_vacuum_cost_delay = 0);
COMMENT ON TABLE eventpipe.outbox IS
    'Events committed but not yet acknowledged by Kafka; the relay worker deletes each row once delivered';
COMMENT ON COLUMN eventpipe.outbox.attempts IS 'Failed delivery attempts so far';
COMMENT ON COLUMN eventpipe.outbox.next_attempt_at IS 'Not retried before this time (NULL: due now)';

-- Events waiting for a retry hold back the later events of their topic and
-- key; this finds them without scanning the whole outbox.
CREATE INDEX outbox_retrying ON eventpipe.outbox (topic, key, id)
    WHERE next_attempt_at IS NOT NULL;

-- Events the relay gave up on, with the reason: too large for the broker, a
-- topic it refuses, or eventpipe.relay_max_attempts failures.
-- retry_dead() puts them back in the outbox.
CREATE TABLE eventpipe.dead_letters (
    id          bigint      PRIMARY KEY,
    event_id    uuid        NOT NULL,
    topic       text        NOT NULL,
    key         text,
    payload     jsonb       NOT NULL,
    headers     jsonb,
    event_type  text        NOT NULL,
    created_at  timestamptz NOT NULL,
    attempts    integer     NOT NULL,
    failed_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    reason      text        NOT NULL
);
COMMENT ON TABLE eventpipe.dead_letters IS
    'Events Kafka would not take, with the reason; eventpipe.retry_dead() sends them again';

-- Pending events are data: pg_dump must carry them (and the id sequence) along.
SELECT pg_catalog.pg_extension_config_dump('eventpipe.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('eventpipe.outbox_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('eventpipe.dead_letters', '');

-- The relay worker that owns an outbox row: a stable hash of the key, so all
-- events of one key go through one worker, in order.  Events without a key
-- are spread by id.
CREATE FUNCTION eventpipe.relay_shard(key text, id bigint, workers integer)
RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (pg_catalog.hashtext(COALESCE(key, id::text)) & 2147483647) % workers;

CREATE FUNCTION eventpipe.publish(
    topic      text,
    key        text,
    payload    jsonb,
    headers    jsonb DEFAULT NULL,
    event_type text  DEFAULT NULL)
RETURNS uuid
AS 'MODULE_PATHNAME', 'eventpipe_publish'
LANGUAGE C VOLATILE PARALLEL UNSAFE SECURITY DEFINER;
COMMENT ON FUNCTION eventpipe.publish(text, text, jsonb, jsonb, text) IS
    'Enqueue one event for Kafka in the current transaction; returns its event id (the ce_id header)';

-- Publishing writes to Kafka topics on the database's behalf: a right to grant.
REVOKE ALL ON FUNCTION eventpipe.publish(text, text, jsonb, jsonb, text) FROM PUBLIC;

-- Put dead events back in line: those with the given ids, or of the given
-- topic, or all of them.  They go to the end of the outbox with their
-- attempts reset and their event id unchanged (consumers deduplicate by it).
CREATE FUNCTION eventpipe.retry_dead(ids bigint[] DEFAULT NULL, topic text DEFAULT NULL)
RETURNS bigint
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    WITH moved AS (
        DELETE FROM eventpipe.dead_letters AS d
         WHERE (retry_dead.ids IS NULL OR d.id = ANY (retry_dead.ids))
           AND (retry_dead.topic IS NULL OR d.topic = retry_dead.topic)
        RETURNING d.*
    ), requeued AS (
        INSERT INTO eventpipe.outbox (event_id, topic, key, payload, headers, event_type, created_at)
        SELECT m.event_id, m.topic, m.key, m.payload, m.headers, m.event_type, m.created_at
          FROM moved AS m
         ORDER BY m.id
        RETURNING 1
    )
    SELECT pg_catalog.count(*) FROM requeued;
END;
COMMENT ON FUNCTION eventpipe.retry_dead(bigint[], text) IS
    'Move dead letters (by id, by topic, or all) back to the outbox; returns how many';
REVOKE ALL ON FUNCTION eventpipe.retry_dead(bigint[], text) FROM PUBLIC;

CREATE FUNCTION eventpipe.relay_stats(
    OUT worker          integer,
    OUT pid             integer,
    OUT state           text,
    OUT database        name,
    OUT events_sent     bigint,
    OUT events_failed   bigint,
    OUT events_retried  bigint,
    OUT events_dead     bigint,
    OUT batches         bigint,
    OUT bytes_sent      bigint,
    OUT last_latency    interval,
    OUT last_error      text,
    OUT last_error_time timestamptz,
    OUT stats_reset     timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'eventpipe_relay_stats'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;

-- One row per relay worker: its counters from shared memory, and the backlog
-- of the outbox rows it owns in this database.
CREATE VIEW eventpipe.pg_stat_relay AS
SELECT s.worker,
       s.pid,
       s.state,
       s.database,
       s.events_sent,
       s.events_failed,
       s.events_retried,
       s.events_dead,
       s.batches,
       s.bytes_sent,
       b.backlog,
       b.oldest_pending_age,
       s.last_latency,
       s.last_error,
       s.last_error_time,
       s.stats_reset
FROM eventpipe.relay_stats() AS s
LEFT JOIN LATERAL (
    SELECT pg_catalog.count(*) AS backlog,
           pg_catalog.now() - pg_catalog.min(o.created_at) AS oldest_pending_age
    FROM eventpipe.outbox AS o
    WHERE eventpipe.relay_shard(o.key, o.id,
              pg_catalog.current_setting('eventpipe.relay_workers')::integer) = s.worker
) AS b ON true;

REVOKE ALL ON FUNCTION eventpipe.relay_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eventpipe.relay_stats() TO pg_monitor;
GRANT SELECT ON eventpipe.pg_stat_relay TO pg_monitor;
GRANT USAGE ON SCHEMA eventpipe TO pg_monitor;

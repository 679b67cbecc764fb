-- eventpipe 0.1: the outbox, publish(), and the relay's statistics view.
-- Installed by CREATE EXTENSION eventpipe into the schema eventpipe (see eventpipe.control).

\echo Use "CREATE EXTENSION eventpipe" to load this file. \quit

-- Pending events, written in the publisher's transaction and deleted by the
-- relay worker once Kafka has acknowledged them.  Nobody but the extension's
-- owner reads or writes it directly: publish() is SECURITY DEFINER.
CREATE TABLE eventpipe.outbox (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    uuid        NOT NULL,
    topic       text        NOT NULL,
    key         text,
    payload     jsonb       NOT NULL,
    headers     jsonb,
    event_type  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);
COMMENT ON TABLE eventpipe.outbox IS
    'Events committed but not yet acknowledged by Kafka; the relay worker deletes each row once delivered';

-- Pending events are data: pg_dump must carry them (and the id sequence) along.
SELECT pg_catalog.pg_extension_config_dump('eventpipe.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('eventpipe.outbox_id_seq', '');

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

CREATE FUNCTION eventpipe.relay_stats(
    OUT worker          integer,
    OUT pid             integer,
    OUT state           text,
    OUT database        name,
    OUT events_sent     bigint,
    OUT events_failed   bigint,
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

-- eventpipe 0.2 -> 0.3: operations (pg_stat_consumer, replay(), pause and
-- resume, consumer dead letters retried), the consumer's ledger, and the
-- relay's Kafka statistics.
--
-- Like 0.2, there is no separate install script: CREATE EXTENSION eventpipe
-- runs eventpipe--0.1.sql, then the 0.1--0.2 and 0.2--0.3 scripts.

\echo Use "ALTER EXTENSION eventpipe UPDATE TO '0.3'" to load this file. \quit

------------------------------------------------------------------------------
-- Consumer operations: pg_stat_consumer, replay(), pause()/resume(),
-- retry_dead for consumer dead letters
------------------------------------------------------------------------------

------------------------------------------------------------------------------
-- Consumer ledger
------------------------------------------------------------------------------

------------------------------------------------------------------------------
-- Kafka client statistics
------------------------------------------------------------------------------

-- librdkafka's own statistics of each worker's Kafka client (brokers and
-- their round-trip times, queues, per-partition offsets and consumer lag),
-- as it last emitted them: every statistics.interval.ms, 10 s unless
-- eventpipe.kafka_options says otherwise (0 turns them off).
CREATE FUNCTION eventpipe.kafka_statistics(
    OUT client_id    text,
    OUT collected_at timestamptz,
    OUT statistics   jsonb)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'eventpipe_kafka_statistics'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;
COMMENT ON FUNCTION eventpipe.kafka_statistics() IS
    'librdkafka statistics (JSON) of each worker''s Kafka client, as last emitted (every statistics.interval.ms)';
REVOKE ALL ON FUNCTION eventpipe.kafka_statistics() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eventpipe.kafka_statistics() TO pg_monitor;

------------------------------------------------------------------------------
-- Relay pause: pause_relay(), resume_relay()
------------------------------------------------------------------------------

-- The relay is paused while this table holds its one row.  A table rather
-- than shared memory, so that a pause outlives a restart of the server.
-- Events published meanwhile wait in the outbox.
CREATE TABLE eventpipe.relay_pause (
    paused    boolean     PRIMARY KEY DEFAULT true CHECK (paused),
    paused_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    paused_by name        NOT NULL DEFAULT CURRENT_USER
);
COMMENT ON TABLE eventpipe.relay_pause IS
    'One row while the relay is paused (eventpipe.pause_relay()); eventpipe.resume_relay() deletes it';
GRANT SELECT ON eventpipe.relay_pause TO pg_monitor;

-- Tells the relay workers, at commit, to read the table again.
CREATE FUNCTION eventpipe.relay_pause_changed()
RETURNS trigger
AS 'MODULE_PATHNAME', 'eventpipe_relay_pause_changed'
LANGUAGE C;
REVOKE ALL ON FUNCTION eventpipe.relay_pause_changed() FROM PUBLIC;
CREATE TRIGGER relay_pause_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON eventpipe.relay_pause
    FOR EACH STATEMENT EXECUTE FUNCTION eventpipe.relay_pause_changed();

CREATE FUNCTION eventpipe.pause_relay()
RETURNS timestamptz
LANGUAGE sql
BEGIN ATOMIC
    INSERT INTO eventpipe.relay_pause DEFAULT VALUES ON CONFLICT (paused) DO NOTHING;
    SELECT paused_at FROM eventpipe.relay_pause;
END;
COMMENT ON FUNCTION eventpipe.pause_relay() IS
    'Stop sending the outbox to Kafka until resume_relay(): batches in flight finish, then pg_stat_relay.state says paused; returns since when it is paused';
REVOKE ALL ON FUNCTION eventpipe.pause_relay() FROM PUBLIC;

CREATE FUNCTION eventpipe.resume_relay()
RETURNS boolean
LANGUAGE sql
BEGIN ATOMIC
    WITH resumed AS (DELETE FROM eventpipe.relay_pause RETURNING 1)
    SELECT pg_catalog.count(*) > 0 FROM resumed;
END;
COMMENT ON FUNCTION eventpipe.resume_relay() IS
    'Send the outbox to Kafka again after pause_relay(); returns whether the relay was paused';
REVOKE ALL ON FUNCTION eventpipe.resume_relay() FROM PUBLIC;

-- eventpipe 0.2 -> 0.3: operations (pg_stat_consumer, replay(), pause and
-- resume of subscriptions and of the relay, consumer dead letters retried),
-- a smaller dedup ledger, and the Kafka clients' own statistics.
--
-- For updates only, as every upgrade script: CREATE EXTENSION installs the
-- current version with its own script.

\echo Use "ALTER EXTENSION eventpipe UPDATE TO '0.3'" to load this file. \quit

------------------------------------------------------------------------------
-- Consumer operations: pg_stat_consumer, replay(), pause()/resume(),
-- retry_dead for consumer dead letters
------------------------------------------------------------------------------

-- A paused subscription's worker applies nothing and leaves its consumer
-- group until resume(); it rereads this before every batch.
ALTER TABLE eventpipe.subscriptions ADD COLUMN paused boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN eventpipe.subscriptions.paused IS
    'Set by eventpipe.pause(), cleared by eventpipe.resume(): the worker applies nothing meanwhile';

-- Dead letters to apply again: the subscription's worker takes them before
-- its next batch and clears the mark (or deletes the row, once applied).
ALTER TABLE eventpipe.consumer_dead_letters ADD COLUMN retry_requested_at timestamptz;
COMMENT ON COLUMN eventpipe.consumer_dead_letters.retry_requested_at IS
    'Set by eventpipe.retry_consumer_dead(): the worker applies the message again';
CREATE INDEX consumer_dead_letters_retry ON eventpipe.consumer_dead_letters (subscription, id)
    WHERE retry_requested_at IS NOT NULL;

-- Replays asked for and not yet carried out by the subscription's worker:
-- before its next batch, it stores the offset (within what Kafka retains)
-- and deletes the request in one transaction, then rejoins its group, whose
-- assignment starts there.  replay() does not move the offset itself: a
-- worker that rejoined for another reason would start there too, and apply
-- the range twice (harmless for the metrics, not for the counters).
CREATE TABLE eventpipe.consumer_replays (
    subscription text        NOT NULL REFERENCES eventpipe.subscriptions ON DELETE CASCADE,
    topic        text        NOT NULL,
    partition    integer     NOT NULL CHECK (partition >= 0),
    from_offset  bigint      NOT NULL CHECK (from_offset >= 0),
    requested_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    PRIMARY KEY (subscription, topic, partition)
);
COMMENT ON TABLE eventpipe.consumer_replays IS
    'Replays asked for with eventpipe.replay() that the subscription''s worker has not carried out yet';

-- pause(), resume(), replay() and retry_consumer_dead() run as the
-- extension's owner: EXECUTE on them is the whole right to operate the
-- consumer (no rights on eventpipe's tables needed).  Not for PUBLIC.

-- Pause or resume; returns whether that changed anything.
CREATE FUNCTION eventpipe.set_paused(subscription text, paused boolean)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    was_paused boolean;
BEGIN
    SELECT s.paused INTO was_paused FROM eventpipe.subscriptions AS s
     WHERE s.name = set_paused.subscription FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        PERFORM eventpipe.check_subscription(subscription);
    END IF;
    UPDATE eventpipe.subscriptions AS s SET paused = set_paused.paused
     WHERE s.name = set_paused.subscription;
    RETURN was_paused IS DISTINCT FROM paused;
END;
$$;
COMMENT ON FUNCTION eventpipe.set_paused(text, boolean) IS
    'Pause or resume a subscription; returns whether it changed (pause() and resume() call it)';
REVOKE ALL ON FUNCTION eventpipe.set_paused(text, boolean) FROM PUBLIC;

CREATE FUNCTION eventpipe.pause(subscription text)
RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
RETURN eventpipe.set_paused(subscription, true);
COMMENT ON FUNCTION eventpipe.pause(text) IS
    'Stop applying a subscription''s messages until resume() (it stays paused across restarts); returns false if it was paused already';
REVOKE ALL ON FUNCTION eventpipe.pause(text) FROM PUBLIC;

CREATE FUNCTION eventpipe.resume(subscription text)
RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
RETURN eventpipe.set_paused(subscription, false);
COMMENT ON FUNCTION eventpipe.resume(text) IS
    'Apply a paused subscription''s messages again, from the offsets stored in the database; returns false if it was not paused';
REVOKE ALL ON FUNCTION eventpipe.resume(text) FROM PUBLIC;

CREATE FUNCTION eventpipe.replay(
    subscription text,
    topic        text,
    partition    integer,
    from_offset  bigint)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    topics   text[];
    previous bigint;
BEGIN
    SELECT s.topics INTO topics FROM eventpipe.subscriptions AS s WHERE s.name = replay.subscription;
    IF NOT FOUND THEN
        PERFORM eventpipe.check_subscription(subscription);
    END IF;
    IF topic IS NULL OR NOT topic = ANY (topics) THEN
        RAISE EXCEPTION 'topic "%" is not a topic of subscription "%"', topic, subscription
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('Its topics: %s.', array_to_string(topics, ', '));
    END IF;
    IF partition IS NULL OR partition < 0 THEN
        RAISE EXCEPTION 'invalid partition %', coalesce(partition::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Kafka numbers partitions from 0.';
    END IF;
    IF from_offset IS NULL OR from_offset < 0 THEN
        RAISE EXCEPTION 'invalid offset %', coalesce(from_offset::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Offsets start at 0; an offset below the earliest one Kafka retains replays from there.';
    END IF;
    SELECT o.next_offset INTO previous FROM eventpipe.consumer_offsets AS o
     WHERE o.subscription = replay.subscription AND o.topic = replay.topic
       AND o.partition = replay.partition;
    INSERT INTO eventpipe.consumer_replays AS r (subscription, topic, partition, from_offset)
    VALUES (subscription, topic, partition, from_offset)
    ON CONFLICT ON CONSTRAINT consumer_replays_pkey
    DO UPDATE SET from_offset = EXCLUDED.from_offset, requested_at = EXCLUDED.requested_at;
    RETURN previous;
END;
$$;
COMMENT ON FUNCTION eventpipe.replay(text, text, integer, bigint) IS
    'Have the subscription''s worker apply a partition''s messages again from an offset, before its next batch (the dedup ledger still skips events it holds); returns the offset stored now, NULL if none';
REVOKE ALL ON FUNCTION eventpipe.replay(text, text, integer, bigint) FROM PUBLIC;

CREATE FUNCTION eventpipe.retry_consumer_dead(ids bigint[] DEFAULT NULL, subscription text DEFAULT NULL,
                                               topic text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    queued bigint;
BEGIN
    IF subscription IS NOT NULL THEN
        PERFORM eventpipe.check_subscription(subscription);
    END IF;
    -- dead letters of a subscription that is gone have no worker to apply them
    UPDATE eventpipe.consumer_dead_letters AS d SET retry_requested_at = clock_timestamp()
     WHERE (retry_consumer_dead.ids IS NULL OR d.id = ANY (retry_consumer_dead.ids))
       AND (retry_consumer_dead.subscription IS NULL OR d.subscription = retry_consumer_dead.subscription)
       AND (retry_consumer_dead.topic IS NULL OR d.topic = retry_consumer_dead.topic)
       AND EXISTS (SELECT FROM eventpipe.subscriptions AS s WHERE s.name = d.subscription);
    GET DIAGNOSTICS queued = ROW_COUNT;
    RETURN queued;
END;
$$;
COMMENT ON FUNCTION eventpipe.retry_consumer_dead(bigint[], text, text) IS
    'Have consumer dead letters (by id, subscription, topic, or all) applied again by their subscription''s worker; returns how many were queued';
REVOKE ALL ON FUNCTION eventpipe.retry_consumer_dead(bigint[], text, text) FROM PUBLIC;

-- The per-partition counters and high watermarks in shared memory.
CREATE FUNCTION eventpipe.consumer_partition_stats(
    OUT subscription   text,
    OUT topic          text,
    OUT partition      integer,
    OUT events_applied bigint,
    OUT duplicates     bigint,
    OUT unmatched      bigint,
    OUT events_dead    bigint,
    OUT high_watermark bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'eventpipe_consumer_partition_stats'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION eventpipe.consumer_partition_stats() IS
    'Per subscription, topic and partition of this database: counters and the high watermark from shared memory';
REVOKE ALL ON FUNCTION eventpipe.consumer_partition_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eventpipe.consumer_partition_stats() TO pg_monitor;

-- One row per subscription, topic and partition (the partitions the
-- database stores an offset for, and those a worker was assigned since the
-- server started); one row with NULL topic and partition for a subscription
-- that has none yet.
CREATE VIEW eventpipe.pg_stat_consumer AS
WITH partitions AS (
    SELECT subscription, topic, partition, o.next_offset, m.events_applied, m.duplicates,
           m.unmatched, m.events_dead, m.high_watermark
      FROM eventpipe.consumer_offsets AS o
      FULL JOIN eventpipe.consumer_partition_stats() AS m USING (subscription, topic, partition)
)
SELECT s.name AS subscription,
       w.pid,
       CASE WHEN w.pid IS NOT NULL THEN w.state
            WHEN s.paused THEN 'paused'
            ELSE 'stopped' END AS state,
       p.topic,
       p.partition,
       p.next_offset AS committed_offset,
       p.high_watermark,
       p.high_watermark - p.next_offset AS lag,
       coalesce(p.events_applied, 0) AS events_applied,
       coalesce(p.duplicates, 0) AS duplicates,
       coalesce(p.unmatched, 0) AS unmatched,
       coalesce(p.events_dead, 0) AS events_dead,
       w.last_error,
       w.last_error_time,
       w.stats_reset
  FROM eventpipe.subscriptions AS s
  LEFT JOIN eventpipe.consumer_stats() AS w ON w.subscription = s.name
  LEFT JOIN partitions AS p ON p.subscription = s.name;
COMMENT ON VIEW eventpipe.pg_stat_consumer IS
    'Per subscription, topic and partition: worker, committed offset, high watermark, lag and counters (per partition; they survive worker restarts, reset at server restart or stat_reset())';
REVOKE ALL ON eventpipe.pg_stat_consumer FROM PUBLIC;
GRANT SELECT ON eventpipe.pg_stat_consumer TO pg_monitor;

------------------------------------------------------------------------------
-- Consumer ledger
------------------------------------------------------------------------------

-- A small number per subscription, for the ledger's key: repeating the
-- name in every ledger row and index entry made every comparison a text
-- comparison.  A subscription created again under the same name gets a new
-- number, so ledger rows left from the old one can never match.
ALTER TABLE eventpipe.subscriptions
    ADD COLUMN id integer GENERATED ALWAYS AS IDENTITY UNIQUE;
COMMENT ON COLUMN eventpipe.subscriptions.id IS
    'Number of the subscription in the dedup ledger (eventpipe.event_handled.subscription_id)';
SELECT pg_catalog.pg_extension_config_dump('eventpipe.subscriptions_id_seq', '');

-- The ledger keyed by (subscription_id, event id).  An id in the canonical
-- text form of a UUID (lower-case hex, 8-4-4-4-12, as eventpipe's own ce_id
-- headers) is kept as a uuid, 16 bytes; any other id as text.  The two
-- forms never meet: only a text that is exactly a uuid's output goes to
-- event_uuid, so two distinct ids are always two distinct keys (no hash, no
-- false duplicate).  Each form has its own partial unique index; the
-- worker's INSERT ... ON CONFLICT DO NOTHING checks both.
-- The table is altered in place (it keeps its pg_dump registration), its
-- rows converted: those of subscriptions that no longer exist are dropped
-- (unsubscribe() deletes them; none can match a subscription created later).
ALTER TABLE eventpipe.event_handled
    DROP CONSTRAINT event_handled_pkey,
    ADD COLUMN subscription_id integer,
    ADD COLUMN event_uuid uuid;
ALTER TABLE eventpipe.event_handled RENAME COLUMN event_id TO event_text;
ALTER TABLE eventpipe.event_handled ALTER COLUMN event_text DROP NOT NULL;
DELETE FROM eventpipe.event_handled AS h
 WHERE NOT EXISTS (SELECT FROM eventpipe.subscriptions AS s WHERE s.name = h.subscription);
UPDATE eventpipe.event_handled AS h
   SET subscription_id = s.id,
       event_uuid = CASE WHEN h.event_text ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                         THEN h.event_text::uuid END,
       event_text = CASE WHEN h.event_text ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                         THEN NULL ELSE h.event_text END
  FROM eventpipe.subscriptions AS s
 WHERE s.name = h.subscription;
ALTER TABLE eventpipe.event_handled DROP COLUMN subscription;
ALTER TABLE eventpipe.event_handled
    ALTER COLUMN subscription_id SET NOT NULL,
    ADD CONSTRAINT event_handled_one_id CHECK ((event_uuid IS NULL) <> (event_text IS NULL));
CREATE UNIQUE INDEX event_handled_uuid
    ON eventpipe.event_handled (subscription_id, event_uuid) WHERE event_uuid IS NOT NULL;
CREATE UNIQUE INDEX event_handled_text
    ON eventpipe.event_handled (subscription_id, event_text) WHERE event_text IS NOT NULL;
COMMENT ON TABLE eventpipe.event_handled IS
    'Dedup ledger: ids of the events applied (a canonical UUID in event_uuid, any other id in event_text), kept for eventpipe.dedup_retention';
COMMENT ON COLUMN eventpipe.event_handled.subscription_id IS
    'eventpipe.subscriptions.id';

-- The ledger rows go by the subscription's number now.
CREATE OR REPLACE FUNCTION eventpipe.unsubscribe(name text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    gone integer;
BEGIN
    -- rules, handlers and offsets go with it (ON DELETE CASCADE); a batch in
    -- flight that stored its offsets first has committed once this returns
    DELETE FROM eventpipe.subscriptions AS s WHERE s.name = unsubscribe.name
    RETURNING s.id INTO gone;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subscription "%" does not exist', name
            USING ERRCODE = 'undefined_object';
    END IF;
    DELETE FROM eventpipe.event_handled AS h WHERE h.subscription_id = gone;
END;
$$;

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

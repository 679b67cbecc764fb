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

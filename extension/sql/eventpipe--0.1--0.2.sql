-- eventpipe 0.1 -> 0.2: table capture, the consumer worker, stat_reset().
--
-- For updates only: CREATE EXTENSION installs the current version with its
-- own script (eventpipe--0.4.sql); sql/upgrade.sql checks that an
-- installation updated from 0.1 ends identical to it.

\echo Use "ALTER EXTENSION eventpipe UPDATE TO '0.2'" to load this file. \quit

------------------------------------------------------------------------------
-- Table capture: capture(), uncapture(), eventpipe.captures
------------------------------------------------------------------------------

-- The triggers capture() installs on a table.  Their arguments hold the
-- capture's settings; they are the only state a capture has.  Not
-- executable by PUBLIC: whoever could attach them to a table would publish
-- to any topic (capture() creates them as the extension's owner).
CREATE FUNCTION eventpipe.capture_trigger()
RETURNS trigger
AS 'MODULE_PATHNAME', 'eventpipe_capture_trigger'
LANGUAGE C;
COMMENT ON FUNCTION eventpipe.capture_trigger() IS
    'Row trigger of a captured table: one outbox event per inserted, updated or deleted row';
REVOKE ALL ON FUNCTION eventpipe.capture_trigger() FROM PUBLIC;

CREATE FUNCTION eventpipe.capture_truncate_guard()
RETURNS trigger
AS 'MODULE_PATHNAME', 'eventpipe_capture_truncate_guard'
LANGUAGE C;
COMMENT ON FUNCTION eventpipe.capture_truncate_guard() IS
    'Statement trigger of a captured table: refuses TRUNCATE, which would emit no row events';
REVOKE ALL ON FUNCTION eventpipe.capture_truncate_guard() FROM PUBLIC;

CREATE FUNCTION eventpipe.capture(
    rel            regclass,
    topic          text,
    key_columns    text[]  DEFAULT NULL,
    event_type     text    DEFAULT NULL,
    skip_unchanged boolean DEFAULT false)
RETURNS void
AS 'MODULE_PATHNAME', 'eventpipe_capture'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION eventpipe.capture(regclass, text, text[], text, boolean) IS
    'Emit an event to topic for every row inserted, updated or deleted in rel (its owner only); capturing again replaces the settings';
-- Capturing publishes the table's rows to Kafka: a right to grant, on top
-- of owning the table.
REVOKE ALL ON FUNCTION eventpipe.capture(regclass, text, text[], text, boolean) FROM PUBLIC;

CREATE FUNCTION eventpipe.uncapture(rel regclass)
RETURNS boolean
AS 'MODULE_PATHNAME', 'eventpipe_uncapture'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION eventpipe.uncapture(regclass) IS
    'Stop capturing rel (its owner only); returns whether it was captured';
REVOKE ALL ON FUNCTION eventpipe.uncapture(regclass) FROM PUBLIC;

CREATE FUNCTION eventpipe.trigger_arguments(tgargs bytea)
RETURNS text[]
AS 'MODULE_PATHNAME', 'eventpipe_trigger_arguments'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION eventpipe.trigger_arguments(bytea) IS
    'pg_trigger.tgargs as a text array';

-- The captured tables of this database and their settings, read from the
-- triggers themselves (as public as pg_trigger, which holds the same).
CREATE VIEW eventpipe.captures AS
SELECT t.tgrelid::pg_catalog.regclass AS rel,
       a.args[1] AS topic,
       a.args[4:] AS key_columns,
       NULLIF(a.args[2], '') AS event_type,
       a.args[3]::boolean AS skip_unchanged,
       t.tgenabled <> 'D' AS enabled
  FROM pg_catalog.pg_trigger AS t,
       LATERAL (SELECT eventpipe.trigger_arguments(t.tgargs) AS args) AS a
 WHERE t.tgfoid = 'eventpipe.capture_trigger()'::pg_catalog.regprocedure;
COMMENT ON VIEW eventpipe.captures IS
    'Captured tables: topic, key columns, event type (NULL: <table>.<op>), whether unchanged UPDATEs are skipped';
GRANT SELECT ON eventpipe.captures TO PUBLIC;


------------------------------------------------------------------------------
-- Consumer: subscriptions, rules, handlers, dedup ledger, offsets, dead letters
------------------------------------------------------------------------------



-- A subscription: topics read by one consumer worker with one consumer
-- group.  The worker rereads its row before every batch, so an UPDATE takes
-- effect without a restart; a trigger validates the row and wakes the
-- consumer manager at commit.
CREATE TABLE eventpipe.subscriptions (
    name        text        PRIMARY KEY
                CHECK (name ~ '^[A-Za-z0-9._-]{1,63}$'),
    topics      text[]      NOT NULL
                CHECK (pg_catalog.cardinality(topics) > 0),
    group_id    text        NOT NULL CHECK (group_id <> ''),
    start_from  text        NOT NULL DEFAULT 'earliest'
                CHECK (start_from IN ('earliest', 'latest')),
    batch_size  integer     CHECK (batch_size BETWEEN 1 AND 1000000),
    dedup_field text,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE eventpipe.subscriptions IS
    'Kafka topics consumed into this database, one consumer worker each';
COMMENT ON COLUMN eventpipe.subscriptions.start_from IS
    'Where a partition starts when the database holds no offset for it: earliest or latest';
COMMENT ON COLUMN eventpipe.subscriptions.batch_size IS
    'Most messages per transaction; NULL: eventpipe.consumer_batch_size';
COMMENT ON COLUMN eventpipe.subscriptions.dedup_field IS
    'Payload field holding the event id of messages without a ce_id header';

-- Declarative counters: for every new event of event_type, add the payload's
-- value_field (or 1) to target.column_name of the row keyed by key_field.
-- owner: the role that declared it; the worker writes with its rights.
CREATE TABLE eventpipe.metric_rules (
    id           bigint   GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription text     NOT NULL REFERENCES eventpipe.subscriptions ON DELETE CASCADE,
    event_type   text     NOT NULL,
    target       regclass NOT NULL,
    key_field    text     NOT NULL,
    column_name  text     NOT NULL,
    value_field  text,
    owner        regrole  NOT NULL DEFAULT pg_catalog.current_user()::regrole
);
CREATE INDEX metric_rules_subscription ON eventpipe.metric_rules (subscription);
COMMENT ON TABLE eventpipe.metric_rules IS
    'Per event type: add the payload''s value_field (or 1) to target.column_name of the row keyed by key_field';

-- User functions called with (payload jsonb, metadata jsonb) for every new
-- event of event_type, as the role that declared them.
CREATE TABLE eventpipe.handlers (
    id           bigint       GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription text         NOT NULL REFERENCES eventpipe.subscriptions ON DELETE CASCADE,
    event_type   text         NOT NULL,
    handler      regprocedure NOT NULL,
    owner        regrole      NOT NULL DEFAULT pg_catalog.current_user()::regrole
);
CREATE INDEX handlers_subscription ON eventpipe.handlers (subscription);
COMMENT ON TABLE eventpipe.handlers IS
    'Per event type: a function (payload jsonb, metadata jsonb) called once per new event';

-- The dedup ledger: an event id is in it once its effects are committed.
-- Pruned past eventpipe.dedup_retention.  No foreign key: a check per row
-- would cost every batch thousands of lookups; unsubscribe() deletes the
-- rows, and a batch of a subscription being deleted cannot commit rows
-- after it (its offsets' foreign key fails, and the batch with it).
-- The ids are only ever compared for equality: collation "C" makes every
-- comparison in its index a memcmp instead of a locale's strcoll.
CREATE TABLE eventpipe.event_handled (
    subscription text        COLLATE "C" NOT NULL,
    event_id     text        COLLATE "C" NOT NULL,
    handled_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (subscription, event_id)
) WITH (autovacuum_vacuum_scale_factor = 0,
        autovacuum_vacuum_threshold = 20000,
        autovacuum_vacuum_insert_scale_factor = 0,
        autovacuum_vacuum_insert_threshold = 100000);
-- Rows arrive in handled_at order: a BRIN index finds the old ones for
-- pruning at almost no cost to the inserts.
CREATE INDEX event_handled_age ON eventpipe.event_handled USING brin (handled_at);
COMMENT ON TABLE eventpipe.event_handled IS
    'Dedup ledger: ids of the events applied, kept for eventpipe.dedup_retention';

-- Where each partition resumes: written in the transaction that applies the
-- messages before it, so effects and position never disagree.
CREATE TABLE eventpipe.consumer_offsets (
    subscription text    NOT NULL REFERENCES eventpipe.subscriptions ON DELETE CASCADE,
    topic        text    NOT NULL,
    partition    integer NOT NULL,
    next_offset  bigint  NOT NULL,
    PRIMARY KEY (subscription, topic, partition)
);
COMMENT ON TABLE eventpipe.consumer_offsets IS
    'Next Kafka offset to apply per subscription, topic and partition';

-- Messages that could not be applied, raw, with the reason.  Kept when the
-- subscription goes.
CREATE TABLE eventpipe.consumer_dead_letters (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription text        NOT NULL,
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    "offset"     bigint      NOT NULL,
    key          bytea,
    value        bytea,
    headers      jsonb,
    error        text        NOT NULL,
    failed_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- a message redelivered before its offset was stored is recorded once
    UNIQUE (subscription, topic, partition, "offset")
);
COMMENT ON TABLE eventpipe.consumer_dead_letters IS
    'Kafka messages the consumer could not apply: raw key, value and headers, and the error';

SELECT pg_catalog.pg_extension_config_dump('eventpipe.subscriptions', '');
SELECT pg_catalog.pg_extension_config_dump('eventpipe.metric_rules', '');
SELECT pg_catalog.pg_extension_config_dump('eventpipe.handlers', '');
SELECT pg_catalog.pg_extension_config_dump('eventpipe.event_handled', '');
SELECT pg_catalog.pg_extension_config_dump('eventpipe.consumer_offsets', '');
SELECT pg_catalog.pg_extension_config_dump('eventpipe.consumer_dead_letters', '');
SELECT pg_catalog.pg_extension_config_dump('eventpipe.metric_rules_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('eventpipe.handlers_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('eventpipe.consumer_dead_letters_id_seq', '');

-- Validates a subscription row (topic names as Kafka accepts them) and wakes
-- the consumer manager when the transaction commits.
CREATE FUNCTION eventpipe.subscriptions_changed()
RETURNS trigger
AS 'MODULE_PATHNAME', 'eventpipe_subscriptions_changed'
LANGUAGE C;
CREATE TRIGGER subscriptions_changed
    BEFORE INSERT OR UPDATE OR DELETE ON eventpipe.subscriptions
    FOR EACH ROW EXECUTE FUNCTION eventpipe.subscriptions_changed();

CREATE FUNCTION eventpipe.subscribe(
    name        text,
    topics      text[],
    group_id    text    DEFAULT NULL,
    start_from  text    DEFAULT 'earliest',
    batch_size  integer DEFAULT NULL,
    dedup_field text    DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF name IS NULL OR name !~ '^[A-Za-z0-9._-]{1,63}$' THEN
        RAISE EXCEPTION 'invalid subscription name "%"', name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A subscription name has 1 to 63 characters among A-Z a-z 0-9 . _ -.';
    END IF;
    IF topics IS NULL OR cardinality(topics) = 0 OR array_position(topics, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'a subscription needs at least one topic, and no NULL topic'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF start_from IS NULL OR start_from NOT IN ('earliest', 'latest') THEN
        RAISE EXCEPTION 'invalid start_from "%"', start_from
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use ''earliest'' or ''latest''.';
    END IF;
    IF batch_size IS NOT NULL AND batch_size NOT BETWEEN 1 AND 1000000 THEN
        RAISE EXCEPTION 'batch_size must be between 1 and 1000000'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF group_id = '' OR dedup_field = '' THEN
        RAISE EXCEPTION 'group_id and dedup_field may be NULL but not empty'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT FROM eventpipe.subscriptions AS s WHERE s.name = subscribe.name) THEN
        RAISE EXCEPTION 'subscription "%" already exists', name
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Call eventpipe.unsubscribe() first, or UPDATE eventpipe.subscriptions: the worker picks up changed rows by itself.';
    END IF;
    INSERT INTO eventpipe.subscriptions (name, topics, group_id, start_from, batch_size, dedup_field)
    VALUES (name, topics, coalesce(group_id, name), start_from, batch_size, dedup_field);
END;
$$;
COMMENT ON FUNCTION eventpipe.subscribe(text, text[], text, text, integer, text) IS
    'Consume topics with a consumer worker of its own, started within seconds';
REVOKE ALL ON FUNCTION eventpipe.subscribe(text, text[], text, text, integer, text) FROM PUBLIC;

CREATE FUNCTION eventpipe.unsubscribe(name text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- rules, handlers and offsets go with it (ON DELETE CASCADE); a batch in
    -- flight that stored its offsets first has committed once this returns
    DELETE FROM eventpipe.subscriptions AS s WHERE s.name = unsubscribe.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subscription "%" does not exist', name
            USING ERRCODE = 'undefined_object';
    END IF;
    DELETE FROM eventpipe.event_handled AS h WHERE h.subscription = unsubscribe.name;
END;
$$;
COMMENT ON FUNCTION eventpipe.unsubscribe(text) IS
    'Stop a subscription''s worker and forget its rules, handlers, ledger and offsets (dead letters stay)';
REVOKE ALL ON FUNCTION eventpipe.unsubscribe(text) FROM PUBLIC;

-- Raise the error for an unknown subscription; shared by add_metric and
-- add_handler, whose callers must be able to run it (it changes nothing).
CREATE FUNCTION eventpipe.check_subscription(subscription text)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM eventpipe.subscriptions AS s WHERE s.name = check_subscription.subscription) THEN
        RAISE EXCEPTION 'subscription "%" does not exist', subscription
            USING ERRCODE = 'undefined_object',
                  HINT = 'Create it with eventpipe.subscribe().';
    END IF;
END;
$$;

CREATE FUNCTION eventpipe.add_metric(
    subscription text,
    event_type   text,
    target       regclass,
    key_field    text,
    column_name  text,
    value_field  text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel        pg_class;
    key_column name;
    col        pg_attribute;
    missing    text;
    rule_id    bigint;
BEGIN
    PERFORM eventpipe.check_subscription(subscription);
    IF event_type IS NULL OR event_type = '' OR key_field IS NULL OR key_field = ''
       OR column_name IS NULL OR target IS NULL OR value_field = '' THEN
        RAISE EXCEPTION 'event_type, target, key_field and column_name are required, value_field may not be empty'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO rel FROM pg_class WHERE oid = target;
    IF rel.relkind NOT IN ('r', 'p') OR rel.relpersistence = 't' THEN
        RAISE EXCEPTION '"%" is not a table', target::text
            USING ERRCODE = 'wrong_object_type',
                  DETAIL = 'A metric target must be an ordinary or partitioned table, not temporary.';
    END IF;
    SELECT a.attname INTO key_column
      FROM pg_index AS i
      JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
     WHERE i.indrelid = target AND i.indisprimary AND i.indnatts = 1;
    IF key_column IS NULL THEN
        RAISE EXCEPTION 'table "%" has no single-column primary key', target::text
            USING ERRCODE = 'invalid_table_definition',
                  HINT = 'The rows of a metric table are keyed by one column, its primary key.';
    END IF;
    SELECT * INTO col FROM pg_attribute AS a
     WHERE a.attrelid = target AND a.attname = add_metric.column_name
       AND a.attnum > 0 AND NOT a.attisdropped;
    IF col.attname IS NULL THEN
        RAISE EXCEPTION 'column "%" of table "%" does not exist', column_name, target::text
            USING ERRCODE = 'undefined_column';
    END IF;
    IF col.attname = key_column THEN
        RAISE EXCEPTION 'column "%" is the primary key of "%"', column_name, target::text
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'key_field selects the row; column_name is the counter it adds to.';
    END IF;
    IF col.atttypid NOT IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype,
                            'numeric'::regtype, 'float4'::regtype, 'float8'::regtype)
       OR col.attgenerated <> '' THEN
        RAISE EXCEPTION 'column "%" of table "%" is not a numeric column', column_name, target::text
            USING ERRCODE = 'datatype_mismatch',
                  DETAIL = format('Its type is %s%s.', format_type(col.atttypid, col.atttypmod),
                                  CASE WHEN col.attgenerated <> '' THEN ', generated' ELSE '' END),
                  HINT = 'A counter column is smallint, integer, bigint, numeric, real or double precision.';
    END IF;
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO missing
      FROM pg_attribute AS a
     WHERE a.attrelid = target AND a.attnum > 0 AND NOT a.attisdropped
       AND a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = ''
       AND a.attname NOT IN (key_column, col.attname);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'table "%" has NOT NULL columns without a default: %', target::text, missing
            USING ERRCODE = 'invalid_table_definition',
                  HINT = 'The worker creates missing rows with only the key and the counter: give the other columns defaults.';
    END IF;
    IF NOT (has_table_privilege(target, 'INSERT') AND has_table_privilege(target, 'UPDATE')) THEN
        RAISE EXCEPTION 'permission denied to update table "%"', target::text
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'A metric rule needs INSERT and UPDATE on its target.';
    END IF;
    INSERT INTO eventpipe.metric_rules (subscription, event_type, target, key_field, column_name, value_field)
    VALUES (subscription, event_type, target, key_field, column_name, value_field)
    RETURNING id INTO rule_id;
    RETURN rule_id;
END;
$$;
COMMENT ON FUNCTION eventpipe.add_metric(text, text, regclass, text, text, text) IS
    'For every new event of a type, add its value_field (or 1) to target.column_name of the row keyed by key_field; returns the rule id';
REVOKE ALL ON FUNCTION eventpipe.add_metric(text, text, regclass, text, text, text) FROM PUBLIC;

CREATE FUNCTION eventpipe.add_handler(
    subscription text,
    event_type   text,
    handler      regprocedure)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    fn         pg_proc;
    handler_id bigint;
BEGIN
    PERFORM eventpipe.check_subscription(subscription);
    IF event_type IS NULL OR event_type = '' OR handler IS NULL THEN
        RAISE EXCEPTION 'event_type and handler are required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO fn FROM pg_proc WHERE oid = handler;
    IF fn.prokind <> 'f' OR fn.proretset OR fn.pronargs <> 2
       OR fn.proargtypes[0] <> 'jsonb'::regtype OR fn.proargtypes[1] <> 'jsonb'::regtype THEN
        RAISE EXCEPTION 'function % cannot be an event handler', handler::text
            USING ERRCODE = 'invalid_function_definition',
                  HINT = 'A handler is a function (payload jsonb, metadata jsonb) returning one value of any type (ignored).';
    END IF;
    IF NOT has_function_privilege(handler, 'EXECUTE') THEN
        RAISE EXCEPTION 'permission denied for function %', handler::text
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO eventpipe.handlers (subscription, event_type, handler)
    VALUES (subscription, event_type, handler)
    RETURNING id INTO handler_id;
    RETURN handler_id;
END;
$$;
COMMENT ON FUNCTION eventpipe.add_handler(text, text, regprocedure) IS
    'Call handler(payload jsonb, metadata jsonb) for every new event of a type, in the batch''s transaction; returns the handler id';
REVOKE ALL ON FUNCTION eventpipe.add_handler(text, text, regprocedure) FROM PUBLIC;

CREATE FUNCTION eventpipe.consumer_stats(
    OUT subscription    text,
    OUT pid             integer,
    OUT state           text,
    OUT events_applied  bigint,
    OUT duplicates      bigint,
    OUT unmatched       bigint,
    OUT events_dead     bigint,
    OUT batches         bigint,
    OUT last_error      text,
    OUT last_error_time timestamptz,
    OUT stats_reset     timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'eventpipe_consumer_stats'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION eventpipe.consumer_stats() IS
    'Per consumer worker: state and counters from shared memory (they survive worker restarts)';
REVOKE ALL ON FUNCTION eventpipe.consumer_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eventpipe.consumer_stats() TO pg_monitor;

------------------------------------------------------------------------------
-- Operations
------------------------------------------------------------------------------

-- Counters of pg_stat_relay and consumer_stats() back to zero, last errors
-- cleared, stats_reset stamped; returns that time.  Not for PUBLIC: the
-- counters are the DBA's.
CREATE FUNCTION eventpipe.stat_reset()
RETURNS timestamptz
AS 'MODULE_PATHNAME', 'eventpipe_stat_reset'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION eventpipe.stat_reset() IS
    'Reset the relay and consumer counters and last errors (pg_stat_relay, consumer_stats()); returns the reset time';
REVOKE ALL ON FUNCTION eventpipe.stat_reset() FROM PUBLIC;

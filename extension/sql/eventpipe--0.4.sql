-- eventpipe 0.4: the install script.  CREATE EXTENSION eventpipe runs this
-- file alone, into the schema eventpipe (see eventpipe.control), and builds
-- the current shape directly.  The scripts beside it, eventpipe--0.1.sql and
-- one upgrade script per later version, serve ALTER EXTENSION eventpipe
-- UPDATE (and CREATE EXTENSION ... VERSION of an older version).  A fresh
-- install and one updated from 0.1 must end identical: the pg_regress suite
-- sql/upgrade.sql compares their catalogs.  A change to this file is a new
-- version: it goes into a new upgrade script too.
--
-- Who declared a subscription, rule or handler is recorded by the system,
-- never taken from a column default or an argument: the declaring functions
-- are a C gate (eventpipe_as_caller) that runs with the caller's identity,
-- takes the calling role and calls the function's implementation,
-- eventpipe.<name>_as(caller, ...).  The implementations are SECURITY
-- DEFINER, executable by nobody else, and check the caller's rights
-- explicitly.  The consumer's tables are closed to direct writes.
--
-- Ownership: a subscription, rule or handler belongs to the role that
-- declared it.  Only a role with that owner's privileges, a superuser or a
-- member of eventpipe_admin may change it (and a subscription's rules,
-- handlers, offsets and dead letters).  Owners are real dependencies: each
-- owner holds the REFERENCES privilege on eventpipe.subscriptions(owner),
-- which pg_shdepend records, so DROP ROLE refuses to drop an owner;
-- DROP OWNED BY and REASSIGN OWNED BY deal with its eventpipe objects as
-- with any other (see extension/owned_objects.c).

\echo Use "CREATE EXTENSION eventpipe" to load this file. \quit

------------------------------------------------------------------------------
-- The admin role
------------------------------------------------------------------------------

-- Roles are cluster-wide: a second database's CREATE EXTENSION finds it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles AS r WHERE r.rolname OPERATOR(pg_catalog.=) 'eventpipe_admin') THEN
        CREATE ROLE eventpipe_admin NOLOGIN;
    END IF;
END;
$$;
COMMENT ON ROLE eventpipe_admin IS
    'Members may change every eventpipe subscription, rule and handler, whoever declared it';

------------------------------------------------------------------------------
-- Outbox and relay: publish(), dead letters, pg_stat_relay
------------------------------------------------------------------------------

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
-- key; this finds them without scanning the whole outbox.  It holds the
-- key's hash, not the key: a key too long for an index entry could not wait
-- for a retry, and the relay's record of its whole batch would fail.
CREATE INDEX outbox_retrying ON eventpipe.outbox (topic, pg_catalog.hashtext(key), id)
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

-- TRUNCATE of the outbox or the dead-letter table would drop committed
-- events nobody sent, without a trace: refused while either holds any.
CREATE FUNCTION eventpipe.undelivered_truncate_guard()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    holds_events boolean;
BEGIN
    EXECUTE pg_catalog.format('SELECT EXISTS (SELECT FROM %I.%I)', TG_TABLE_SCHEMA, TG_TABLE_NAME)
       INTO holds_events;
    IF holds_events THEN
        RAISE EXCEPTION 'cannot truncate %.%: it holds committed events not delivered to Kafka',
                        TG_TABLE_SCHEMA, TG_TABLE_NAME
            USING ERRCODE = 'object_in_use',
                  HINT = CASE TG_TABLE_NAME
                         WHEN 'outbox' THEN 'Let the relay send them (eventpipe.pg_stat_relay shows the backlog), or DELETE the events you mean to discard.'
                         ELSE 'Send them again with eventpipe.retry_dead(), or DELETE the dead letters you mean to discard.' END;
    END IF;
    RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION eventpipe.undelivered_truncate_guard() FROM PUBLIC;
CREATE TRIGGER undelivered_truncate_guard BEFORE TRUNCATE ON eventpipe.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION eventpipe.undelivered_truncate_guard();
CREATE TRIGGER undelivered_truncate_guard BEFORE TRUNCATE ON eventpipe.dead_letters
    FOR EACH STATEMENT EXECUTE FUNCTION eventpipe.undelivered_truncate_guard();

-- The relay worker that owns an outbox row: a stable hash of the key, so all
-- events of one key go through one worker, in order.  Events without a key
-- are spread by id.
CREATE FUNCTION eventpipe.relay_shard(key text, id bigint, workers integer)
RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (pg_catalog.hashtext(COALESCE(key, id::text)) & 2147483647) % workers;
COMMENT ON FUNCTION eventpipe.relay_shard(text, bigint, integer) IS
    'The relay worker (0 to workers - 1) that sends an outbox row: a hash of its key, or of its id when it has none';

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
-- SECURITY DEFINER: EXECUTE is the whole grant, where rights on the tables
-- would also let a role write any row of the outbox past publish()'s checks.
CREATE FUNCTION eventpipe.retry_dead(ids bigint[] DEFAULT NULL, topic text DEFAULT NULL)
RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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
COMMENT ON FUNCTION eventpipe.relay_stats() IS
    'Per relay worker of this database: state and counters from shared memory (they survive worker restarts); pg_stat_relay adds the backlog';

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
COMMENT ON VIEW eventpipe.pg_stat_relay IS
    'Per relay worker: state, counters, and the backlog of the outbox rows it sends in this database with the age of the oldest';

REVOKE ALL ON FUNCTION eventpipe.relay_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eventpipe.relay_stats() TO pg_monitor;
GRANT SELECT ON eventpipe.pg_stat_relay TO pg_monitor;
GRANT USAGE ON SCHEMA eventpipe TO pg_monitor;

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
    skip_unchanged boolean DEFAULT false,
    snapshot       boolean DEFAULT false)
RETURNS void
AS 'MODULE_PATHNAME', 'eventpipe_capture'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION eventpipe.capture(regclass, text, text[], text, boolean, boolean) IS
    'Emit an event to topic for every row inserted, updated or deleted in rel (its owner only), and with snapshot every row already there; capturing again replaces the settings';

-- Capturing publishes the table's rows to Kafka: a right to grant, on top
-- of owning the table.
REVOKE ALL ON FUNCTION eventpipe.capture(regclass, text, text[], text, boolean, boolean) FROM PUBLIC;

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
-- Snapshots of captured tables: snapshot(), cancel_snapshot(),
-- eventpipe.snapshots
------------------------------------------------------------------------------

-- One row per snapshot: written by snapshot() and cancel_snapshot() (as the
-- extension's owner) and by the snapshot worker, which stores its progress
-- in the transaction of each chunk it emits.  condition_expr is the checked
-- condition as PostgreSQL's node tree (the worker evaluates it as is, never
-- parses it again): closed to everyone, since a changed tree would run
-- anything as requested_by.
CREATE TABLE eventpipe.table_snapshots (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rel            regclass    NOT NULL,
    condition      text,
    condition_expr text,
    requested_by   regrole     NOT NULL,
    state          text        NOT NULL DEFAULT 'running'
                   CHECK (state IN ('running', 'done', 'cancelled', 'failed')),
    error          text,
    last_key       text[],
    rows_emitted   bigint      NOT NULL DEFAULT 0,
    rows_estimated bigint,
    started_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    finished_at    timestamptz
);
COMMENT ON TABLE eventpipe.table_snapshots IS
    'Snapshots of captured tables and their progress (see the eventpipe.snapshots view)';
COMMENT ON COLUMN eventpipe.table_snapshots.condition_expr IS
    'The checked condition as a node tree, evaluated by the snapshot worker on each row';
COMMENT ON COLUMN eventpipe.table_snapshots.requested_by IS
    'The role that asked for the snapshot: the worker reads the table, and evaluates the condition, as that role';
COMMENT ON COLUMN eventpipe.table_snapshots.last_key IS
    'The primary key of the last row of the last emitted chunk (its columns'' texts): the snapshot resumes after it';
CREATE INDEX table_snapshots_running ON eventpipe.table_snapshots (id)
    WHERE state OPERATOR(pg_catalog.=) 'running';
REVOKE ALL ON eventpipe.table_snapshots FROM PUBLIC;

CREATE FUNCTION eventpipe.snapshot(rel regclass, condition text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'eventpipe_snapshot'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION eventpipe.snapshot(regclass, text) IS
    'Emit every row of the captured table rel, or those matching condition, as read events (its owner only); returns the snapshot''s id';
REVOKE ALL ON FUNCTION eventpipe.snapshot(regclass, text) FROM PUBLIC;

CREATE FUNCTION eventpipe.cancel_snapshot(id bigint)
RETURNS boolean
AS 'MODULE_PATHNAME', 'eventpipe_cancel_snapshot'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION eventpipe.cancel_snapshot(bigint) IS
    'Stop a running snapshot after its current chunk (the table''s owner only); returns whether it was running';
REVOKE ALL ON FUNCTION eventpipe.cancel_snapshot(bigint) FROM PUBLIC;

-- What each snapshot does and did (as public as eventpipe.captures: the
-- tables and conditions, not the rows).
CREATE VIEW eventpipe.snapshots AS
SELECT s.id, s.rel, s.condition, s.state, s.error, s.rows_emitted, s.rows_estimated,
       s.started_at, s.finished_at, s.requested_by
  FROM eventpipe.table_snapshots AS s;
COMMENT ON VIEW eventpipe.snapshots IS
    'Snapshots of captured tables: table, condition, state (running, done, cancelled, failed with its error), rows emitted and estimated, times';
GRANT SELECT ON eventpipe.snapshots TO PUBLIC;

------------------------------------------------------------------------------
-- Consumer tables: subscriptions, rules, handlers, dedup ledger, offsets,
-- dead letters, replays
------------------------------------------------------------------------------

-- eventpipe's tables and sequences are written by its functions and workers
-- only: no right but SELECT is granted on them (a TRIGGER right would let a
-- role attach code that the workers run as superuser).

-- A subscription: topics read by its consumer workers with one consumer
-- group.  The workers reread their row before every batch, so an UPDATE
-- takes effect without a restart; a trigger validates the row and wakes the
-- consumer manager at commit.
--
-- paused: a paused subscription's worker applies nothing and leaves its
-- consumer group until resume(); it rereads this before every batch.
--
-- id: a small number per subscription, for the ledger's key: repeating the
-- name in every ledger row and index entry would make every comparison a
-- text comparison.  A subscription created again under the same name gets
-- a new number, so ledger rows left from the old one can never match.
--
-- owner: the role that declared it; confirmed: is the owner known to have
-- declared the row?  Rows of a role whose OID was untracked and is tracked
-- again (a dropped role's OID reused), and rows from before 0.4 in an
-- updated installation, are not: they run no more until confirm_owner().
-- Both come from the declaring functions, never from a default.
--
-- workers: how many consumer workers share the subscription's partitions
-- (members of its consumer group, with one ledger and one set of offsets);
-- the manager starts or stops workers when it changes.
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
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    paused      boolean     NOT NULL DEFAULT false,
    id          integer     GENERATED ALWAYS AS IDENTITY UNIQUE,
    owner       regrole     NOT NULL,
    confirmed   boolean     NOT NULL,
    workers     integer     NOT NULL DEFAULT 1 CHECK (workers BETWEEN 1 AND 32)
);
COMMENT ON TABLE eventpipe.subscriptions IS
    'Kafka topics consumed into this database, by workers consumer workers each';
COMMENT ON COLUMN eventpipe.subscriptions.start_from IS
    'Where a partition starts when the database holds no offset for it: earliest or latest';
COMMENT ON COLUMN eventpipe.subscriptions.batch_size IS
    'Most messages per transaction; NULL: eventpipe.consumer_batch_size';
COMMENT ON COLUMN eventpipe.subscriptions.dedup_field IS
    'Payload field holding the event id of messages without a ce_id header';
COMMENT ON COLUMN eventpipe.subscriptions.paused IS
    'Set by eventpipe.pause(), cleared by eventpipe.resume(): the worker applies nothing meanwhile';
COMMENT ON COLUMN eventpipe.subscriptions.id IS
    'Number of the subscription in the dedup ledger (eventpipe.event_handled.subscription_id)';
COMMENT ON COLUMN eventpipe.subscriptions.owner IS
    'The role that declared the subscription: it, a superuser or an eventpipe_admin member may change it';
COMMENT ON COLUMN eventpipe.subscriptions.confirmed IS
    'false: its owner''s OID was reused by another role; only a superuser or an eventpipe_admin member may change it';
COMMENT ON COLUMN eventpipe.subscriptions.workers IS
    'How many consumer workers share the partitions (1 to 32), with one ledger and one set of offsets';

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
    owner        regrole  NOT NULL,
    confirmed    boolean  NOT NULL
);
CREATE INDEX metric_rules_subscription ON eventpipe.metric_rules (subscription);
COMMENT ON TABLE eventpipe.metric_rules IS
    'Per event type: add the payload''s value_field (or 1) to target.column_name of the row keyed by key_field';
COMMENT ON COLUMN eventpipe.metric_rules.owner IS
    'The role that declared the rule: the worker writes to the target with its rights, checked at every batch';
COMMENT ON COLUMN eventpipe.metric_rules.confirmed IS
    'false: the owner is not known to have declared it (from before 0.4, or a reused role OID); not applied until eventpipe.confirm_owner()';

-- User functions called with (payload jsonb, metadata jsonb) for every new
-- event of event_type, as the role that declared them.
CREATE TABLE eventpipe.handlers (
    id           bigint       GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription text         NOT NULL REFERENCES eventpipe.subscriptions ON DELETE CASCADE,
    event_type   text         NOT NULL,
    handler      regprocedure NOT NULL,
    owner        regrole      NOT NULL,
    confirmed    boolean      NOT NULL
);
CREATE INDEX handlers_subscription ON eventpipe.handlers (subscription);
COMMENT ON TABLE eventpipe.handlers IS
    'Per event type: a function (payload jsonb, metadata jsonb) called once per new event';
COMMENT ON COLUMN eventpipe.handlers.owner IS
    'The role that declared the handler: the worker calls it as that role, checking EXECUTE at every batch';
COMMENT ON COLUMN eventpipe.handlers.confirmed IS
    'false: the owner is not known to have declared it (from before 0.4, or a reused role OID); not called until eventpipe.confirm_owner()';

-- Mirrors: every row-change event of source (the captured table's name as
-- the events carry it, e.g. public.products) applied to target, whose rows
-- it keeps equal to the source's: an upsert per insert, update or read, a
-- delete per delete or tombstone.  format: the events' shape, eventpipe's
-- capture() payload or Debezium's change-event envelope.  owner: the role
-- that declared it; the worker writes with its rights.
CREATE TABLE eventpipe.mirrors (
    id           bigint   GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription text     NOT NULL REFERENCES eventpipe.subscriptions ON DELETE CASCADE,
    source       text     NOT NULL CHECK (source <> ''),
    target       regclass NOT NULL,
    format       text     NOT NULL CHECK (format IN ('eventpipe', 'debezium')),
    owner        regrole  NOT NULL,
    confirmed    boolean  NOT NULL,
    UNIQUE (subscription, source, target)
);
COMMENT ON TABLE eventpipe.mirrors IS
    'Per captured table: its row changes applied to target, by primary key (upsert, or delete), in per-key order';
COMMENT ON COLUMN eventpipe.mirrors.source IS
    'The table''s name as its events carry it: eventpipe''s "table", Debezium''s source schema and table (public.products)';
COMMENT ON COLUMN eventpipe.mirrors.format IS
    'eventpipe: capture()''s payload; debezium: Debezium''s envelope, with or without the JSON converter''s schema/payload wrapper';
COMMENT ON COLUMN eventpipe.mirrors.owner IS
    'The role that declared the mirror: the worker writes to the target with its rights, checked at every batch';
COMMENT ON COLUMN eventpipe.mirrors.confirmed IS
    'false: the owner is not known to have declared it (a reused role OID); not applied until eventpipe.confirm_owner()';
SELECT pg_catalog.pg_extension_config_dump('eventpipe.mirrors', '');
SELECT pg_catalog.pg_extension_config_dump('eventpipe.mirrors_id_seq', '');

-- The dedup ledger: an event id is in it once its effects are committed,
-- in the batch's transaction.  Keyed by (subscription_id, event id).  No
-- foreign key: a check per row would cost every batch thousands of lookups;
-- unsubscribe() deletes the rows, and a batch of a subscription being
-- deleted cannot commit rows after it (its offsets' foreign key fails, and
-- the batch with it).
--
-- Two tables, both partitioned by handled_at, a partition per UTC day
-- named <table>_YYYYMMDD.  The consumer workers make the partitions ahead
-- and drop those whose day ended eventpipe.dedup_retention ago
-- (eventpipe.ledger_upkeep()): forgetting is a DROP TABLE, never a DELETE
-- per row and its vacuum.  The partitions are not members of the
-- extension, so pg_dump carries them and their rows as tables of their own.
--
-- event_handled_runs holds version 7 UUIDs (eventpipe's own ce_id): up to
-- 120 ids of one 100-ms bucket (the UUID's millisecond time / 100), sorted,
-- 16 bytes each, in one bytea; the worker reads a batch's buckets and
-- searches them.  120 ids keep a row under the TOAST threshold.
--
-- event_handled holds every other id, a row each: an id in the canonical
-- text form of a UUID (lower-case hex, 8-4-4-4-12) as a uuid, any other id
-- as text.  Only a text that is exactly a uuid's output goes to event_uuid,
-- so two distinct ids are always two distinct keys (no hash, no false
-- duplicate).  The text ids are only ever compared for equality: collation
-- "C" makes every comparison in its index a memcmp.  Its columns are in the
-- order an installation created before 0.3 has them.
--
-- The indexes are the partitions' own, made with them: an index on a
-- parent that is a member of the extension would be made again on each
-- partition that pg_dump's output attaches, and the partition's own index
-- in that output would then collide with it.  A unique index could not
-- span the partitions anyway, so the worker makes one
-- subscription's lookups and inserts exclusive with a transaction-level
-- advisory lock, pg_advisory_xact_lock(subscription_id, -1), held until
-- its batch commits.
CREATE TABLE eventpipe.event_handled (
    event_text      text        COLLATE "C",
    handled_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    subscription_id integer     NOT NULL,
    event_uuid      uuid,
    CONSTRAINT event_handled_one_id CHECK ((event_uuid IS NULL) <> (event_text IS NULL))
) PARTITION BY RANGE (handled_at);
COMMENT ON TABLE eventpipe.event_handled IS
    'Dedup ledger: ids of the events applied that are not version 7 UUIDs (a canonical UUID in event_uuid, any other id in event_text); a partition per day';
COMMENT ON COLUMN eventpipe.event_handled.subscription_id IS
    'eventpipe.subscriptions.id';

CREATE TABLE eventpipe.event_handled_runs (
    subscription_id integer     NOT NULL,
    bucket          bigint      NOT NULL,
    handled_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    ids             bytea       NOT NULL
) PARTITION BY RANGE (handled_at);
COMMENT ON TABLE eventpipe.event_handled_runs IS
    'Dedup ledger: the version 7 UUIDs of the events applied, up to 120 of one 100-ms bucket per row; a partition per day';
COMMENT ON COLUMN eventpipe.event_handled_runs.subscription_id IS
    'eventpipe.subscriptions.id';
COMMENT ON COLUMN eventpipe.event_handled_runs.bucket IS
    'The ids'' millisecond time (their first 48 bits) divided by 100';
COMMENT ON COLUMN eventpipe.event_handled_runs.ids IS
    'The ids, 16 bytes each, in ascending order';

-- Make the ledger's partitions of the days from first_day to last_day
-- (UTC) that are missing: each made as a table of its own with its
-- indexes, then attached, which takes SHARE UPDATE EXCLUSIVE on the parent
-- where CREATE TABLE ... PARTITION OF would take ACCESS EXCLUSIVE and stop
-- every batch.  event_handled's partitions have an index for each form of
-- id (subscription_id, event_uuid) and (subscription_id, event_text);
-- event_handled_runs' one on (subscription_id, bucket).  The bounds are
-- written in UTC whatever the session's TimeZone and DateStyle; the tables
-- go where the parents are, whatever the session's defaults.  A table of a
-- partition's name that is not that partition is an error, not skipped: a
-- batch would find no partition for its rows.
CREATE FUNCTION eventpipe.ledger_make_partitions(first_day date, last_day date)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET default_tablespace = ''
SET default_table_access_method = 'heap'
AS $$
DECLARE
    day    date := first_day;
    bounds text;
    parent text;
    child  text;
BEGIN
    WHILE day OPERATOR(pg_catalog.<=) last_day LOOP
        bounds := pg_catalog.format('FROM (%L) TO (%L)',
                                    pg_catalog.to_char(day, 'YYYY-MM-DD') OPERATOR(pg_catalog.||) ' 00:00:00+00',
                                    pg_catalog.to_char(day OPERATOR(pg_catalog.+) 1, 'YYYY-MM-DD')
                                        OPERATOR(pg_catalog.||) ' 00:00:00+00');
        FOREACH parent IN ARRAY ARRAY['event_handled', 'event_handled_runs'] LOOP
            child := parent OPERATOR(pg_catalog.||) '_' OPERATOR(pg_catalog.||) pg_catalog.to_char(day, 'YYYYMMDD');
            IF pg_catalog.to_regclass(pg_catalog.format('eventpipe.%I', child)) IS NOT NULL THEN
                IF NOT EXISTS (SELECT FROM pg_catalog.pg_inherits AS i
                                WHERE i.inhrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(pg_catalog.format('eventpipe.%I', child))
                                  AND i.inhparent OPERATOR(pg_catalog.=) pg_catalog.to_regclass(pg_catalog.format('eventpipe.%I', parent)))
                THEN
                    RAISE EXCEPTION 'table eventpipe.% is in the way of a partition of the dedup ledger', child
                        USING ERRCODE = 'duplicate_table',
                              HINT = pg_catalog.format('It is not a partition of eventpipe.%I: attach it (ALTER TABLE eventpipe.%I ATTACH PARTITION eventpipe.%I FOR VALUES %s), or rename or drop it.',
                                                       parent, parent, child, bounds);
                END IF;
                CONTINUE;
            END IF;
            EXECUTE pg_catalog.format(
                'CREATE TABLE eventpipe.%I (LIKE eventpipe.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                child, parent);
            IF parent OPERATOR(pg_catalog.=) 'event_handled' THEN
                EXECUTE pg_catalog.format(
                    'CREATE INDEX %I ON eventpipe.%I (subscription_id, event_uuid) WHERE event_uuid IS NOT NULL',
                    child OPERATOR(pg_catalog.||) '_uuid', child);
                EXECUTE pg_catalog.format(
                    'CREATE INDEX %I ON eventpipe.%I (subscription_id, event_text) WHERE event_text IS NOT NULL',
                    child OPERATOR(pg_catalog.||) '_text', child);
            ELSE
                EXECUTE pg_catalog.format('CREATE INDEX %I ON eventpipe.%I (subscription_id, bucket)',
                                          child OPERATOR(pg_catalog.||) '_bucket', child);
            END IF;
            EXECUTE pg_catalog.format('ALTER TABLE eventpipe.%I ATTACH PARTITION eventpipe.%I FOR VALUES %s',
                                      parent, child, bounds);
        END LOOP;
        day := day OPERATOR(pg_catalog.+) 1;
    END LOOP;
END;
$$;
REVOKE ALL ON FUNCTION eventpipe.ledger_make_partitions(date, date) FROM PUBLIC;

-- The ledger's upkeep, run by the consumer workers every few seconds: make
-- the partitions of today and the next two days (UTC) and, with
-- drop_expired, drop the partitions whose upper bound is retention seconds
-- ago.  Returns the end of the days the ledger has attached partitions for,
-- from today on without a gap: a worker applies no batch unless that is
-- more than a day ahead.  One upkeep at a time (a lock on the ledger's
-- table of runs, which batches' inserts do not conflict with, and which
-- only a role with rights on it can take; one that waits longer than
-- lock_timeout for it, as behind a vacuum of a partition, only reads how
-- far the partitions go).  A DROP waits for every batch using the ledger, and while it waits
-- new batches queue behind it: it gives up after 50 ms, leaving that
-- partition and the rest for a later upkeep.  TimeZone and DateStyle are
-- fixed so that the bounds read back are UTC in ISO form.
CREATE FUNCTION eventpipe.ledger_upkeep(retention integer, drop_expired boolean DEFAULT true)
RETURNS timestamptz
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '1s'
SET TimeZone = 'UTC'
SET DateStyle = 'ISO, YMD'
AS $$
DECLARE
    today   date := (pg_catalog.now() AT TIME ZONE 'UTC')::date;
    day     date;
    expired record;
    alone   boolean;
BEGIN
    BEGIN
        LOCK TABLE eventpipe.event_handled_runs IN SHARE UPDATE EXCLUSIVE MODE;
        alone := true;
    EXCEPTION WHEN lock_not_available THEN
        alone := false;
    END;
    IF alone THEN
        PERFORM eventpipe.ledger_make_partitions(today, today OPERATOR(pg_catalog.+) 2);
    END IF;
    IF alone AND drop_expired THEN
        PERFORM pg_catalog.set_config('lock_timeout', '50ms', true);
        FOR expired IN
            SELECT p.child
              FROM (SELECT i.inhrelid::pg_catalog.regclass AS child,
                           pg_catalog.substring(pg_catalog.pg_get_expr(c.relpartbound, c.oid),
                                                'TO \(''([^'']*)''\)') AS upper_bound
                      FROM pg_catalog.pg_inherits AS i
                      JOIN pg_catalog.pg_class AS c ON c.oid OPERATOR(pg_catalog.=) i.inhrelid
                     WHERE i.inhparent OPERATOR(pg_catalog.=) ANY (ARRAY['eventpipe.event_handled'::pg_catalog.regclass,
                                                                         'eventpipe.event_handled_runs'::pg_catalog.regclass])) AS p
             WHERE p.upper_bound::pg_catalog.timestamptz
                   OPERATOR(pg_catalog.<=) (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => retention))
        LOOP
            BEGIN
                EXECUTE pg_catalog.format('DROP TABLE %s', expired.child);
            EXCEPTION WHEN lock_not_available THEN
                EXIT;
            END;
        END LOOP;
    END IF;
    day := today;
    WHILE (SELECT pg_catalog.count(*)
             FROM pg_catalog.pg_inherits AS i
            WHERE i.inhrelid OPERATOR(pg_catalog.=) ANY (ARRAY[
                      pg_catalog.to_regclass('eventpipe.event_handled_' OPERATOR(pg_catalog.||) pg_catalog.to_char(day, 'YYYYMMDD')),
                      pg_catalog.to_regclass('eventpipe.event_handled_runs_' OPERATOR(pg_catalog.||) pg_catalog.to_char(day, 'YYYYMMDD'))])
              AND i.inhparent OPERATOR(pg_catalog.=) ANY (ARRAY['eventpipe.event_handled'::pg_catalog.regclass,
                                                                'eventpipe.event_handled_runs'::pg_catalog.regclass]))
          OPERATOR(pg_catalog.=) 2
    LOOP
        day := day OPERATOR(pg_catalog.+) 1;
    END LOOP;
    RETURN (pg_catalog.to_char(day, 'YYYY-MM-DD') OPERATOR(pg_catalog.||) ' 00:00:00+00')::pg_catalog.timestamptz;
END;
$$;
REVOKE ALL ON FUNCTION eventpipe.ledger_upkeep(integer, boolean) FROM PUBLIC;

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
-- subscription goes.  retry_requested_at: dead letters to apply again; the
-- subscription's worker takes them before its next batch and clears the
-- mark (or deletes the row, once applied).
CREATE TABLE eventpipe.consumer_dead_letters (
    id                 bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription       text        NOT NULL,
    topic              text        NOT NULL,
    partition          integer     NOT NULL,
    "offset"           bigint      NOT NULL,
    key                bytea,
    value              bytea,
    headers            jsonb,
    error              text        NOT NULL,
    failed_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    retry_requested_at timestamptz,
    -- a message redelivered before its offset was stored is recorded once
    UNIQUE (subscription, topic, partition, "offset")
);
COMMENT ON TABLE eventpipe.consumer_dead_letters IS
    'Kafka messages the consumer could not apply: raw key, value and headers, and the error';
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

-- What a database holds is data: pg_dump must carry the rows (and the id
-- sequences) along; the ledger's rows are in partitions that are not
-- members, which pg_dump carries anyway.  Replays asked for are not data:
-- they wait for a worker of this server.
SELECT pg_catalog.pg_extension_config_dump('eventpipe.subscriptions', '');
SELECT pg_catalog.pg_extension_config_dump('eventpipe.metric_rules', '');
SELECT pg_catalog.pg_extension_config_dump('eventpipe.handlers', '');
SELECT pg_catalog.pg_extension_config_dump('eventpipe.consumer_offsets', '');
SELECT pg_catalog.pg_extension_config_dump('eventpipe.consumer_dead_letters', '');
SELECT pg_catalog.pg_extension_config_dump('eventpipe.metric_rules_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('eventpipe.handlers_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('eventpipe.consumer_dead_letters_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('eventpipe.subscriptions_id_seq', '');

-- Validates a subscription row (topic names as Kafka accepts them) and wakes
-- the consumer manager when the transaction commits.
CREATE FUNCTION eventpipe.subscriptions_changed()
RETURNS trigger
AS 'MODULE_PATHNAME', 'eventpipe_subscriptions_changed'
LANGUAGE C;
CREATE TRIGGER subscriptions_changed
    BEFORE INSERT OR UPDATE OR DELETE ON eventpipe.subscriptions
    FOR EACH ROW EXECUTE FUNCTION eventpipe.subscriptions_changed();

-- A trigger function: not for PUBLIC.  Two pure functions stay executable
-- by PUBLIC: the views that call them (eventpipe.captures,
-- eventpipe.pg_stat_relay) run them with their reader's rights.
REVOKE ALL ON FUNCTION eventpipe.subscriptions_changed() FROM PUBLIC;

------------------------------------------------------------------------------
-- Ownership
------------------------------------------------------------------------------

-- Is caller a superuser or a member of eventpipe_admin?
CREATE FUNCTION eventpipe.is_admin(caller regrole)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
RETURN EXISTS (SELECT FROM pg_catalog.pg_roles AS r
                WHERE r.oid OPERATOR(pg_catalog.=) caller::pg_catalog.oid AND r.rolsuper)
    OR EXISTS (SELECT FROM pg_catalog.pg_roles AS a
                WHERE a.rolname OPERATOR(pg_catalog.=) 'eventpipe_admin'
                  AND pg_catalog.pg_has_role(caller::pg_catalog.oid, a.oid, 'USAGE'));
REVOKE ALL ON FUNCTION eventpipe.is_admin(regrole) FROM PUBLIC;

-- Is role still recorded as an owner?  The workers run nothing of a role
-- that is not: its grant was revoked, or it was dropped and its OID is
-- perhaps another role's now.
CREATE FUNCTION eventpipe.owner_is_tracked(role regrole)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
RETURN EXISTS (SELECT FROM pg_catalog.pg_attribute AS a, pg_catalog.aclexplode(a.attacl) AS x
                WHERE a.attrelid OPERATOR(pg_catalog.=) 'eventpipe.subscriptions'::pg_catalog.regclass
                  AND a.attname OPERATOR(pg_catalog.=) 'owner'
                  AND x.grantee OPERATOR(pg_catalog.=) role::pg_catalog.oid
                  AND x.privilege_type OPERATOR(pg_catalog.=) 'REFERENCES')
    -- the extension's owner owns the table: it holds every right anyway
    OR role::pg_catalog.oid OPERATOR(pg_catalog.=)
       (SELECT c.relowner FROM pg_catalog.pg_class AS c
         WHERE c.oid OPERATOR(pg_catalog.=) 'eventpipe.subscriptions'::pg_catalog.regclass);
REVOKE ALL ON FUNCTION eventpipe.owner_is_tracked(regrole) FROM PUBLIC;

-- May caller change what owner declared?  With owner's privileges (owner
-- itself or a member that inherits them) when the owner is confirmed and
-- tracked; as a superuser or an eventpipe_admin member in any case.
CREATE FUNCTION eventpipe.may_change(caller regrole, owner regrole, confirmed boolean)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
RETURN (confirmed AND eventpipe.owner_is_tracked(owner)
        AND pg_catalog.pg_has_role(caller::pg_catalog.oid, owner::pg_catalog.oid, 'USAGE'))
    OR eventpipe.is_admin(caller);
REVOKE ALL ON FUNCTION eventpipe.may_change(regrole, regrole, boolean) FROM PUBLIC;

-- The subscription's owner, after checking that it exists and that caller
-- may change it.
CREATE FUNCTION eventpipe.check_may_change(caller regrole, subscription text)
RETURNS regrole
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    owner     regrole;
    confirmed boolean;
BEGIN
    SELECT s.owner, s.confirmed INTO owner, confirmed FROM eventpipe.subscriptions AS s
     WHERE s.name OPERATOR(pg_catalog.=) check_may_change.subscription;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subscription "%" does not exist', subscription
            USING ERRCODE = 'undefined_object',
                  HINT = 'Create it with eventpipe.subscribe().';
    END IF;
    IF NOT eventpipe.may_change(caller, owner, confirmed) THEN
        RAISE EXCEPTION 'permission denied for subscription "%"', subscription
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = pg_catalog.format('It belongs to role %s.', owner),
                  HINT = 'Only its owner, a superuser or a member of eventpipe_admin may change a subscription, its rules and handlers.';
    END IF;
    RETURN owner;
END;
$$;
REVOKE ALL ON FUNCTION eventpipe.check_may_change(regrole, text) FROM PUBLIC;

-- Record role as an owner of eventpipe objects in pg_shdepend: the grant
-- below is what DROP ROLE finds ("privileges for column owner of table
-- eventpipe.subscriptions").  The workers also read it: a rule whose owner
-- lost it (revoked by hand, the role dropped) runs no more.  Rows that carry
-- the role's OID while it was not tracked are not its own (a dropped role's
-- OID reused, or rows from before 0.4): they become unconfirmed.  A role
-- already tracked is left alone, so that declarations do not queue on the
-- column's catalog row.
CREATE FUNCTION eventpipe.track_owner(role regrole)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF eventpipe.owner_is_tracked(role) THEN
        RETURN;
    END IF;
    UPDATE eventpipe.subscriptions AS s SET confirmed = false WHERE s.owner OPERATOR(pg_catalog.=) role;
    UPDATE eventpipe.metric_rules AS r SET confirmed = false WHERE r.owner OPERATOR(pg_catalog.=) role;
    UPDATE eventpipe.handlers AS h SET confirmed = false WHERE h.owner OPERATOR(pg_catalog.=) role;
    UPDATE eventpipe.mirrors AS m SET confirmed = false WHERE m.owner OPERATOR(pg_catalog.=) role;
    EXECUTE pg_catalog.format('GRANT REFERENCES (owner) ON eventpipe.subscriptions TO %I',
                              pg_catalog.pg_get_userbyid(role::pg_catalog.oid));
END;
$$;
REVOKE ALL ON FUNCTION eventpipe.track_owner(regrole) FROM PUBLIC;

-- Forget role as an owner once it owns no subscription, rule, handler or
-- mirror.
CREATE FUNCTION eventpipe.untrack_owner_if_unused(role regrole)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM eventpipe.subscriptions AS s WHERE s.owner OPERATOR(pg_catalog.=) role)
       AND NOT EXISTS (SELECT FROM eventpipe.metric_rules AS r WHERE r.owner OPERATOR(pg_catalog.=) role)
       AND NOT EXISTS (SELECT FROM eventpipe.handlers AS h WHERE h.owner OPERATOR(pg_catalog.=) role)
       AND NOT EXISTS (SELECT FROM eventpipe.mirrors AS m WHERE m.owner OPERATOR(pg_catalog.=) role)
       AND EXISTS (SELECT FROM pg_catalog.pg_roles AS r WHERE r.oid OPERATOR(pg_catalog.=) role::pg_catalog.oid) THEN
        EXECUTE pg_catalog.format('REVOKE REFERENCES (owner) ON eventpipe.subscriptions FROM %I',
                                  pg_catalog.pg_get_userbyid(role::pg_catalog.oid));
    END IF;
END;
$$;
REVOKE ALL ON FUNCTION eventpipe.untrack_owner_if_unused(regrole) FROM PUBLIC;

-- A superuser confirms that role really declared the unconfirmed rules,
-- handlers, mirrors and subscriptions that carry its name; returns how many.
CREATE FUNCTION eventpipe.confirm_owner(role regrole)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    confirmed_rows bigint := 0;
    n              bigint;
BEGIN
    PERFORM eventpipe.track_owner(role);
    UPDATE eventpipe.subscriptions AS s SET confirmed = true
     WHERE s.owner OPERATOR(pg_catalog.=) role AND NOT s.confirmed;
    GET DIAGNOSTICS n = ROW_COUNT;
    confirmed_rows := confirmed_rows OPERATOR(pg_catalog.+) n;
    UPDATE eventpipe.metric_rules AS r SET confirmed = true
     WHERE r.owner OPERATOR(pg_catalog.=) role AND NOT r.confirmed;
    GET DIAGNOSTICS n = ROW_COUNT;
    confirmed_rows := confirmed_rows OPERATOR(pg_catalog.+) n;
    UPDATE eventpipe.handlers AS h SET confirmed = true
     WHERE h.owner OPERATOR(pg_catalog.=) role AND NOT h.confirmed;
    GET DIAGNOSTICS n = ROW_COUNT;
    confirmed_rows := confirmed_rows OPERATOR(pg_catalog.+) n;
    UPDATE eventpipe.mirrors AS m SET confirmed = true
     WHERE m.owner OPERATOR(pg_catalog.=) role AND NOT m.confirmed;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN confirmed_rows OPERATOR(pg_catalog.+) n;
END;
$$;
COMMENT ON FUNCTION eventpipe.confirm_owner(regrole) IS
    'For a superuser, after checking them: the unconfirmed rules, handlers, mirrors and subscriptions of role were really declared by it; they run again';
REVOKE ALL ON FUNCTION eventpipe.confirm_owner(regrole) FROM PUBLIC;

-- DROP OWNED BY and REASSIGN OWNED BY, for this database's eventpipe
-- objects: called by the library's utility hook after the command itself.
-- Delete a subscription with its rules, handlers, offsets (ON DELETE
-- CASCADE) and ledger rows; the roles that owned any of them and own
-- nothing else any more stop being tracked.  A batch in flight that stored
-- its offsets first has committed once this returns.
CREATE FUNCTION eventpipe.delete_subscription(name text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    gone   integer;
    owners regrole[];
    role   regrole;
BEGIN
    owners := ARRAY(SELECT s.owner FROM eventpipe.subscriptions AS s
                     WHERE s.name OPERATOR(pg_catalog.=) delete_subscription.name
                    UNION SELECT r.owner FROM eventpipe.metric_rules AS r
                     WHERE r.subscription OPERATOR(pg_catalog.=) delete_subscription.name
                    UNION SELECT h.owner FROM eventpipe.handlers AS h
                     WHERE h.subscription OPERATOR(pg_catalog.=) delete_subscription.name
                    UNION SELECT m.owner FROM eventpipe.mirrors AS m
                     WHERE m.subscription OPERATOR(pg_catalog.=) delete_subscription.name);
    DELETE FROM eventpipe.subscriptions AS s WHERE s.name OPERATOR(pg_catalog.=) delete_subscription.name
    RETURNING s.id INTO gone;
    DELETE FROM eventpipe.event_handled AS h WHERE h.subscription_id OPERATOR(pg_catalog.=) gone;
    DELETE FROM eventpipe.event_handled_runs AS r WHERE r.subscription_id OPERATOR(pg_catalog.=) gone;
    FOREACH role IN ARRAY owners LOOP
        PERFORM eventpipe.untrack_owner_if_unused(role);
    END LOOP;
END;
$$;
REVOKE ALL ON FUNCTION eventpipe.delete_subscription(text) FROM PUBLIC;

CREATE FUNCTION eventpipe.drop_owned(roles regrole[])
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- a subscription goes with every rule, handler and mirror on it, whoever owns them
    PERFORM eventpipe.delete_subscription(s.name) FROM eventpipe.subscriptions AS s
      WHERE s.owner OPERATOR(pg_catalog.=) ANY (drop_owned.roles);
    DELETE FROM eventpipe.metric_rules AS r WHERE r.owner OPERATOR(pg_catalog.=) ANY (drop_owned.roles);
    DELETE FROM eventpipe.handlers AS h WHERE h.owner OPERATOR(pg_catalog.=) ANY (drop_owned.roles);
    DELETE FROM eventpipe.mirrors AS m WHERE m.owner OPERATOR(pg_catalog.=) ANY (drop_owned.roles);
END;
$$;
REVOKE ALL ON FUNCTION eventpipe.drop_owned(regrole[]) FROM PUBLIC;

CREATE FUNCTION eventpipe.reassign_owned(roles regrole[], new_owner regrole)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    role regrole;
BEGIN
    PERFORM eventpipe.track_owner(new_owner);
    UPDATE eventpipe.subscriptions AS s SET owner = new_owner
     WHERE s.owner OPERATOR(pg_catalog.=) ANY (reassign_owned.roles);
    UPDATE eventpipe.metric_rules AS r SET owner = new_owner
     WHERE r.owner OPERATOR(pg_catalog.=) ANY (reassign_owned.roles);
    UPDATE eventpipe.handlers AS h SET owner = new_owner
     WHERE h.owner OPERATOR(pg_catalog.=) ANY (reassign_owned.roles);
    UPDATE eventpipe.mirrors AS m SET owner = new_owner
     WHERE m.owner OPERATOR(pg_catalog.=) ANY (reassign_owned.roles);
    FOREACH role IN ARRAY pg_catalog.array_append(roles, new_owner) LOOP
        PERFORM eventpipe.untrack_owner_if_unused(role);
    END LOOP;
END;
$$;
REVOKE ALL ON FUNCTION eventpipe.reassign_owned(regrole[], regrole) FROM PUBLIC;

------------------------------------------------------------------------------
-- The declaring functions: a gate that records the caller, and the
-- implementations, SECURITY DEFINER, for nobody but the gate
------------------------------------------------------------------------------

-- A payload field name: one or more non-empty parts separated by dots.
CREATE FUNCTION eventpipe.check_field_name(what text, field text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF field IS NOT NULL AND field OPERATOR(pg_catalog.!~) '^[^.]+(\.[^.]+)*$' THEN
        RAISE EXCEPTION 'invalid % "%"', what, field
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A field is a payload member''s name, or a path of names separated by dots ("after.product_id"); no part may be empty.';
    END IF;
END;
$$;
REVOKE ALL ON FUNCTION eventpipe.check_field_name(text, text) FROM PUBLIC;

CREATE FUNCTION eventpipe.subscribe_as(
    caller      regrole,
    name        text,
    topics      text[],
    group_id    text,
    start_from  text,
    batch_size  integer,
    dedup_field text,
    workers     integer)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    sharing eventpipe.subscriptions;
BEGIN
    IF name IS NULL OR name OPERATOR(pg_catalog.!~) '^[A-Za-z0-9._-]{1,63}$' THEN
        RAISE EXCEPTION 'invalid subscription name "%"', name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A subscription name has 1 to 63 characters among A-Z a-z 0-9 . _ -.';
    END IF;
    IF topics IS NULL OR pg_catalog.cardinality(topics) OPERATOR(pg_catalog.=) 0
       OR pg_catalog.array_position(topics, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'a subscription needs at least one topic, and no NULL topic'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF start_from IS NULL OR start_from OPERATOR(pg_catalog.<>) ALL (ARRAY['earliest', 'latest']) THEN
        RAISE EXCEPTION 'invalid start_from "%"', start_from
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use ''earliest'' or ''latest''.';
    END IF;
    IF batch_size OPERATOR(pg_catalog.<) 1 OR batch_size OPERATOR(pg_catalog.>) 1000000 THEN
        RAISE EXCEPTION 'batch_size must be between 1 and 1000000'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF group_id OPERATOR(pg_catalog.=) '' OR dedup_field OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION 'group_id and dedup_field may be NULL but not empty'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF workers IS NULL OR workers OPERATOR(pg_catalog.<) 1 OR workers OPERATOR(pg_catalog.>) 32 THEN
        RAISE EXCEPTION 'workers must be between 1 and 32'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'More workers than the topics'' partitions only sit idle; each takes one of max_worker_processes.';
    END IF;
    PERFORM eventpipe.check_field_name('dedup_field', dedup_field);
    IF EXISTS (SELECT FROM eventpipe.subscriptions AS s WHERE s.name OPERATOR(pg_catalog.=) subscribe_as.name) THEN
        RAISE EXCEPTION 'subscription "%" already exists', name
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Call eventpipe.unsubscribe() first.';
    END IF;
    -- Two subscriptions in one consumer group split its partitions between
    -- them: only who may change every subscription of the group may ask
    -- for it, by naming the group.  The lock makes two such calls wait for
    -- each other.
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('eventpipe.subscriptions.group_id'),
                                             pg_catalog.hashtext(coalesce(group_id, name)));
    SELECT * INTO sharing FROM eventpipe.subscriptions AS s
     WHERE s.group_id OPERATOR(pg_catalog.=) coalesce(subscribe_as.group_id, subscribe_as.name)
       AND (subscribe_as.group_id IS NULL OR NOT eventpipe.may_change(caller, s.owner, s.confirmed))
     ORDER BY s.name LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'consumer group "%" is used by subscription "%"', sharing.group_id, sharing.name
            USING ERRCODE = 'duplicate_object',
                  DETAIL = 'Subscriptions in one consumer group split the topics'' partitions between them.',
                  HINT = 'Choose another group_id; only who may change the other subscription may share its group, by naming it as group_id.';
    END IF;
    PERFORM eventpipe.track_owner(caller);
    INSERT INTO eventpipe.subscriptions (name, topics, group_id, start_from, batch_size, dedup_field, owner,
                                         confirmed, workers)
    VALUES (name, topics, coalesce(group_id, name), start_from, batch_size, dedup_field, caller, true,
            workers);
END;
$$;
REVOKE ALL ON FUNCTION eventpipe.subscribe_as(regrole, text, text[], text, text, integer, text, integer) FROM PUBLIC;

CREATE FUNCTION eventpipe.subscribe(
    name        text,
    topics      text[],
    group_id    text    DEFAULT NULL,
    start_from  text    DEFAULT 'earliest',
    batch_size  integer DEFAULT NULL,
    dedup_field text    DEFAULT NULL,
    workers     integer DEFAULT 1)
RETURNS void
AS 'MODULE_PATHNAME', 'eventpipe_as_caller'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION eventpipe.subscribe(text, text[], text, text, integer, text, integer) IS
    'Consume topics with consumer workers of its own (workers of them, sharing the partitions), started within seconds';
REVOKE ALL ON FUNCTION eventpipe.subscribe(text, text[], text, text, integer, text, integer) FROM PUBLIC;

CREATE FUNCTION eventpipe.unsubscribe_as(caller regrole, name text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM eventpipe.check_may_change(caller, name);
    PERFORM eventpipe.delete_subscription(name);
END;
$$;
REVOKE ALL ON FUNCTION eventpipe.unsubscribe_as(regrole, text) FROM PUBLIC;

CREATE FUNCTION eventpipe.unsubscribe(name text)
RETURNS void
AS 'MODULE_PATHNAME', 'eventpipe_as_caller'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION eventpipe.unsubscribe(text) IS
    'Stop a subscription''s worker and forget its rules, handlers, ledger and offsets (dead letters stay)';
REVOKE ALL ON FUNCTION eventpipe.unsubscribe(text) FROM PUBLIC;

-- A rule's or mirror's target: an existing ordinary or partitioned table,
-- not temporary; kind names the declaration in the error's detail.
CREATE FUNCTION eventpipe.check_target_table(target regclass, kind text)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel pg_catalog.pg_class;
BEGIN
    SELECT * INTO rel FROM pg_catalog.pg_class AS c WHERE c.oid OPERATOR(pg_catalog.=) target::pg_catalog.oid;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table with OID % does not exist', target::pg_catalog.oid
            USING ERRCODE = 'undefined_table';
    END IF;
    IF rel.relkind OPERATOR(pg_catalog.<>) ALL (ARRAY['r', 'p']::"char"[])
       OR rel.relpersistence OPERATOR(pg_catalog.=) 't' THEN
        RAISE EXCEPTION '"%" is not a table', target::pg_catalog.text
            USING ERRCODE = 'wrong_object_type',
                  DETAIL = pg_catalog.format('A %s target must be an ordinary or partitioned table, not temporary.', kind);
    END IF;
END;
$$;
REVOKE ALL ON FUNCTION eventpipe.check_target_table(regclass, text) FROM PUBLIC;

CREATE FUNCTION eventpipe.add_metric_as(
    caller       regrole,
    subscription text,
    event_type   text,
    target       regclass,
    key_field    text,
    column_name  text,
    value_field  text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    key_column name;
    col        pg_catalog.pg_attribute;
    missing    text;
    rule_id    bigint;
BEGIN
    PERFORM eventpipe.check_may_change(caller, subscription);
    IF event_type IS NULL OR event_type OPERATOR(pg_catalog.=) '' OR key_field IS NULL
       OR key_field OPERATOR(pg_catalog.=) '' OR column_name IS NULL OR target IS NULL
       OR value_field OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION 'event_type, target, key_field and column_name are required, value_field may not be empty'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM eventpipe.check_field_name('key_field', key_field);
    PERFORM eventpipe.check_field_name('value_field', value_field);
    PERFORM eventpipe.check_target_table(target, 'metric');
    SELECT a.attname INTO key_column
      FROM pg_catalog.pg_index AS i
      JOIN pg_catalog.pg_attribute AS a
        ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid AND a.attnum OPERATOR(pg_catalog.=) i.indkey[0]
     WHERE i.indrelid OPERATOR(pg_catalog.=) target::pg_catalog.oid AND i.indisprimary
       AND i.indnatts OPERATOR(pg_catalog.=) 1;
    IF key_column IS NULL THEN
        RAISE EXCEPTION 'table "%" has no single-column primary key', target::pg_catalog.text
            USING ERRCODE = 'invalid_table_definition',
                  HINT = 'The rows of a metric table are keyed by one column, its primary key.';
    END IF;
    SELECT * INTO col FROM pg_catalog.pg_attribute AS a
     WHERE a.attrelid OPERATOR(pg_catalog.=) target::pg_catalog.oid
       AND a.attname OPERATOR(pg_catalog.=) add_metric_as.column_name
       AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" of table "%" does not exist', column_name, target::pg_catalog.text
            USING ERRCODE = 'undefined_column';
    END IF;
    IF col.attname OPERATOR(pg_catalog.=) key_column THEN
        RAISE EXCEPTION 'column "%" is the primary key of "%"', column_name, target::pg_catalog.text
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'key_field selects the row; column_name is the counter it adds to.';
    END IF;
    IF col.atttypid OPERATOR(pg_catalog.<>) ALL (ARRAY['pg_catalog.int2', 'pg_catalog.int4', 'pg_catalog.int8',
                            'pg_catalog.numeric', 'pg_catalog.float4', 'pg_catalog.float8']::pg_catalog.regtype[])
       OR col.attgenerated OPERATOR(pg_catalog.<>) '' THEN
        RAISE EXCEPTION 'column "%" of table "%" is not a numeric column', column_name, target::pg_catalog.text
            USING ERRCODE = 'datatype_mismatch',
                  DETAIL = pg_catalog.format('Its type is %s%s.', pg_catalog.format_type(col.atttypid, col.atttypmod),
                                  CASE WHEN col.attgenerated OPERATOR(pg_catalog.<>) '' THEN ', generated' ELSE '' END),
                  HINT = 'A counter column is smallint, integer, bigint, numeric, real or double precision.';
    END IF;
    SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO missing
      FROM pg_catalog.pg_attribute AS a
     WHERE a.attrelid OPERATOR(pg_catalog.=) target::pg_catalog.oid AND a.attnum OPERATOR(pg_catalog.>) 0
       AND NOT a.attisdropped AND a.attnotnull AND NOT a.atthasdef
       AND a.attidentity OPERATOR(pg_catalog.=) '' AND a.attgenerated OPERATOR(pg_catalog.=) ''
       AND a.attname OPERATOR(pg_catalog.<>) ALL (ARRAY[key_column, col.attname]);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'table "%" has NOT NULL columns without a default: %', target::pg_catalog.text, missing
            USING ERRCODE = 'invalid_table_definition',
                  HINT = 'The worker creates missing rows with only the key and the counter: give the other columns defaults.';
    END IF;
    -- the upsert reads the counter it adds to: SELECT too
    IF NOT (pg_catalog.has_table_privilege(caller::pg_catalog.oid, target::pg_catalog.oid, 'SELECT')
               AND pg_catalog.has_table_privilege(caller::pg_catalog.oid, target::pg_catalog.oid, 'INSERT')
               AND pg_catalog.has_table_privilege(caller::pg_catalog.oid, target::pg_catalog.oid, 'UPDATE')) THEN
        RAISE EXCEPTION 'permission denied to update table "%"', target::pg_catalog.text
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'A metric rule needs SELECT, INSERT and UPDATE on its target.';
    END IF;
    PERFORM eventpipe.track_owner(caller);
    INSERT INTO eventpipe.metric_rules (subscription, event_type, target, key_field, column_name, value_field,
                                        owner, confirmed)
    VALUES (subscription, event_type, target, key_field, column_name, value_field, caller, true)
    RETURNING id INTO rule_id;
    RETURN rule_id;
END;
$$;
REVOKE ALL ON FUNCTION eventpipe.add_metric_as(regrole, text, text, regclass, text, text, text) FROM PUBLIC;

CREATE FUNCTION eventpipe.add_metric(
    subscription text,
    event_type   text,
    target       regclass,
    key_field    text,
    column_name  text,
    value_field  text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'eventpipe_as_caller'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION eventpipe.add_metric(text, text, regclass, text, text, text) IS
    'For every new event of a type, add its value_field (or 1) to target.column_name of the row keyed by key_field; returns the rule id';
REVOKE ALL ON FUNCTION eventpipe.add_metric(text, text, regclass, text, text, text) FROM PUBLIC;

CREATE FUNCTION eventpipe.add_handler_as(
    caller       regrole,
    subscription text,
    event_type   text,
    handler      regprocedure)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    fn         pg_catalog.pg_proc;
    handler_id bigint;
BEGIN
    PERFORM eventpipe.check_may_change(caller, subscription);
    IF event_type IS NULL OR event_type OPERATOR(pg_catalog.=) '' OR handler IS NULL THEN
        RAISE EXCEPTION 'event_type and handler are required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO fn FROM pg_catalog.pg_proc AS p WHERE p.oid OPERATOR(pg_catalog.=) handler::pg_catalog.oid;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'function with OID % does not exist', handler::pg_catalog.oid
            USING ERRCODE = 'undefined_function';
    END IF;
    IF fn.prokind OPERATOR(pg_catalog.<>) 'f' OR fn.proretset OR fn.pronargs OPERATOR(pg_catalog.<>) 2
       OR fn.proargtypes[0] OPERATOR(pg_catalog.<>) 'pg_catalog.jsonb'::pg_catalog.regtype
       OR fn.proargtypes[1] OPERATOR(pg_catalog.<>) 'pg_catalog.jsonb'::pg_catalog.regtype THEN
        RAISE EXCEPTION 'function % cannot be an event handler', handler::pg_catalog.text
            USING ERRCODE = 'invalid_function_definition',
                  HINT = 'A handler is a function (payload jsonb, metadata jsonb) returning one value of any type (ignored).';
    END IF;
    IF NOT pg_catalog.has_function_privilege(caller::pg_catalog.oid, handler::pg_catalog.oid, 'EXECUTE') THEN
        RAISE EXCEPTION 'permission denied for function %', handler::pg_catalog.text
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    PERFORM eventpipe.track_owner(caller);
    INSERT INTO eventpipe.handlers (subscription, event_type, handler, owner, confirmed)
    VALUES (subscription, event_type, handler, caller, true)
    RETURNING id INTO handler_id;
    RETURN handler_id;
END;
$$;
REVOKE ALL ON FUNCTION eventpipe.add_handler_as(regrole, text, text, regprocedure) FROM PUBLIC;

CREATE FUNCTION eventpipe.add_handler(
    subscription text,
    event_type   text,
    handler      regprocedure)
RETURNS bigint
AS 'MODULE_PATHNAME', 'eventpipe_as_caller'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION eventpipe.add_handler(text, text, regprocedure) IS
    'Call handler(payload jsonb, metadata jsonb) for every new event of a type, in the batch''s transaction; returns the handler id';
REVOKE ALL ON FUNCTION eventpipe.add_handler(text, text, regprocedure) FROM PUBLIC;

-- The tables are closed to direct writes: rules and handlers are removed
-- through these functions.  One body for both: the row of declarations
-- (metric_rules or handlers) with that id, if caller may change its
-- subscription.
CREATE FUNCTION eventpipe.remove_declared(caller regrole, declarations regclass, id bigint)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    subscription text;
    owner        regrole;
BEGIN
    EXECUTE pg_catalog.format('SELECT d.subscription, d.owner FROM %s AS d WHERE d.id OPERATOR(pg_catalog.=) $1',
                              declarations)
       INTO subscription, owner USING id;
    IF subscription IS NULL THEN
        RETURN false;
    END IF;
    PERFORM eventpipe.check_may_change(caller, subscription);
    EXECUTE pg_catalog.format('DELETE FROM %s AS d WHERE d.id OPERATOR(pg_catalog.=) $1', declarations) USING id;
    PERFORM eventpipe.untrack_owner_if_unused(owner);
    RETURN true;
END;
$$;
REVOKE ALL ON FUNCTION eventpipe.remove_declared(regrole, regclass, bigint) FROM PUBLIC;

CREATE FUNCTION eventpipe.remove_metric_as(caller regrole, id bigint)
RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
RETURN eventpipe.remove_declared(caller, 'eventpipe.metric_rules', id);
REVOKE ALL ON FUNCTION eventpipe.remove_metric_as(regrole, bigint) FROM PUBLIC;

CREATE FUNCTION eventpipe.remove_metric(id bigint)
RETURNS boolean
AS 'MODULE_PATHNAME', 'eventpipe_as_caller'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION eventpipe.remove_metric(bigint) IS
    'Remove a metric rule (by the id add_metric returned); returns false if there is none';
REVOKE ALL ON FUNCTION eventpipe.remove_metric(bigint) FROM PUBLIC;

CREATE FUNCTION eventpipe.remove_handler_as(caller regrole, id bigint)
RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
RETURN eventpipe.remove_declared(caller, 'eventpipe.handlers', id);
REVOKE ALL ON FUNCTION eventpipe.remove_handler_as(regrole, bigint) FROM PUBLIC;

CREATE FUNCTION eventpipe.remove_handler(id bigint)
RETURNS boolean
AS 'MODULE_PATHNAME', 'eventpipe_as_caller'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION eventpipe.remove_handler(bigint) IS
    'Remove a handler (by the id add_handler returned); returns false if there is none';
REVOKE ALL ON FUNCTION eventpipe.remove_handler(bigint) FROM PUBLIC;

CREATE FUNCTION eventpipe.add_mirror_as(
    caller       regrole,
    subscription text,
    source       text,
    target       regclass,
    format       text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    mirror_id bigint;
BEGIN
    PERFORM eventpipe.check_may_change(caller, subscription);
    IF source IS NULL OR source OPERATOR(pg_catalog.=) '' OR target IS NULL THEN
        RAISE EXCEPTION 'source and target are required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF format IS NULL OR format OPERATOR(pg_catalog.<>) ALL (ARRAY['eventpipe', 'debezium']) THEN
        RAISE EXCEPTION 'unknown mirror format "%"', format
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The format is ''eventpipe'' (capture()''s events) or ''debezium'' (Debezium''s change events).';
    END IF;
    PERFORM eventpipe.check_target_table(target, 'mirror');
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_index AS i
                    WHERE i.indrelid OPERATOR(pg_catalog.=) target::pg_catalog.oid AND i.indisprimary) THEN
        RAISE EXCEPTION 'table "%" has no primary key', target::pg_catalog.text
            USING ERRCODE = 'invalid_table_definition',
                  HINT = 'A mirror applies each change to the row of its key: give the target the primary key of the source table.';
    END IF;
    IF NOT (pg_catalog.has_table_privilege(caller::pg_catalog.oid, target::pg_catalog.oid, 'SELECT')
               AND pg_catalog.has_table_privilege(caller::pg_catalog.oid, target::pg_catalog.oid, 'INSERT')
               AND pg_catalog.has_table_privilege(caller::pg_catalog.oid, target::pg_catalog.oid, 'UPDATE')
               AND pg_catalog.has_table_privilege(caller::pg_catalog.oid, target::pg_catalog.oid, 'DELETE')) THEN
        RAISE EXCEPTION 'permission denied to mirror into table "%"', target::pg_catalog.text
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'A mirror needs SELECT, INSERT, UPDATE and DELETE on its target.';
    END IF;
    IF EXISTS (SELECT FROM eventpipe.mirrors AS m
                WHERE m.subscription OPERATOR(pg_catalog.=) add_mirror_as.subscription
                  AND m.source OPERATOR(pg_catalog.=) add_mirror_as.source
                  AND m.target OPERATOR(pg_catalog.=) add_mirror_as.target) THEN
        RAISE EXCEPTION 'subscription "%" already mirrors % into "%"', subscription, source, target::pg_catalog.text
            USING ERRCODE = 'duplicate_object';
    END IF;
    PERFORM eventpipe.track_owner(caller);
    INSERT INTO eventpipe.mirrors (subscription, source, target, format, owner, confirmed)
    VALUES (subscription, source, target, format, caller, true)
    RETURNING id INTO mirror_id;
    RETURN mirror_id;
END;
$$;
REVOKE ALL ON FUNCTION eventpipe.add_mirror_as(regrole, text, text, regclass, text) FROM PUBLIC;

CREATE FUNCTION eventpipe.add_mirror(
    subscription text,
    source       text,
    target       regclass,
    format       text DEFAULT 'eventpipe')
RETURNS bigint
AS 'MODULE_PATHNAME', 'eventpipe_as_caller'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION eventpipe.add_mirror(text, text, regclass, text) IS
    'Keep target equal to the captured table source from its row-change events (format eventpipe or debezium); returns the mirror id';
REVOKE ALL ON FUNCTION eventpipe.add_mirror(text, text, regclass, text) FROM PUBLIC;

CREATE FUNCTION eventpipe.remove_mirror_as(caller regrole, id bigint)
RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
RETURN eventpipe.remove_declared(caller, 'eventpipe.mirrors', id);
REVOKE ALL ON FUNCTION eventpipe.remove_mirror_as(regrole, bigint) FROM PUBLIC;

CREATE FUNCTION eventpipe.remove_mirror(id bigint)
RETURNS boolean
AS 'MODULE_PATHNAME', 'eventpipe_as_caller'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION eventpipe.remove_mirror(bigint) IS
    'Remove a mirror (by the id add_mirror returned); the target keeps its rows; returns false if there is none';
REVOKE ALL ON FUNCTION eventpipe.remove_mirror(bigint) FROM PUBLIC;

------------------------------------------------------------------------------
-- Consumer operations: pause(), resume(), replay(), retry_consumer_dead()
------------------------------------------------------------------------------

-- Only who may change a subscription may pause, replay or retry it: the
-- gates record the caller as for the declaring functions, and EXECUTE on
-- them is granted to nobody by default.

-- Pause or resume; returns whether that changed anything.  Its callers
-- have checked that the subscription exists.
CREATE FUNCTION eventpipe.set_paused(subscription text, paused boolean)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    was_paused boolean;
BEGIN
    SELECT s.paused INTO was_paused FROM eventpipe.subscriptions AS s
     WHERE s.name OPERATOR(pg_catalog.=) set_paused.subscription FOR NO KEY UPDATE;
    UPDATE eventpipe.subscriptions AS s SET paused = set_paused.paused
     WHERE s.name OPERATOR(pg_catalog.=) set_paused.subscription;
    RETURN was_paused IS DISTINCT FROM paused;
END;
$$;
COMMENT ON FUNCTION eventpipe.set_paused(text, boolean) IS
    'Pause or resume a subscription; returns whether it changed (pause() and resume() call it)';
REVOKE ALL ON FUNCTION eventpipe.set_paused(text, boolean) FROM PUBLIC;

CREATE FUNCTION eventpipe.pause_as(caller regrole, subscription text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM eventpipe.check_may_change(caller, subscription);
    RETURN eventpipe.set_paused(subscription, true);
END;
$$;
REVOKE ALL ON FUNCTION eventpipe.pause_as(regrole, text) FROM PUBLIC;

CREATE FUNCTION eventpipe.resume_as(caller regrole, subscription text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM eventpipe.check_may_change(caller, subscription);
    RETURN eventpipe.set_paused(subscription, false);
END;
$$;
REVOKE ALL ON FUNCTION eventpipe.resume_as(regrole, text) FROM PUBLIC;

CREATE FUNCTION eventpipe.pause(subscription text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'eventpipe_as_caller'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION eventpipe.pause(text) IS
    'Stop applying a subscription''s messages until resume() (it stays paused across restarts); returns false if it was paused already';
REVOKE ALL ON FUNCTION eventpipe.pause(text) FROM PUBLIC;

CREATE FUNCTION eventpipe.resume(subscription text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'eventpipe_as_caller'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION eventpipe.resume(text) IS
    'Apply a paused subscription''s messages again, from the offsets stored in the database; returns false if it was not paused';
REVOKE ALL ON FUNCTION eventpipe.resume(text) FROM PUBLIC;

CREATE FUNCTION eventpipe.replay_as(
    caller       regrole,
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
    PERFORM eventpipe.check_may_change(caller, subscription);
    SELECT s.topics INTO topics FROM eventpipe.subscriptions AS s
     WHERE s.name OPERATOR(pg_catalog.=) replay_as.subscription;
    IF topic IS NULL OR NOT topic OPERATOR(pg_catalog.=) ANY (topics) THEN
        RAISE EXCEPTION 'topic "%" is not a topic of subscription "%"', topic, subscription
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('Its topics: %s.', pg_catalog.array_to_string(topics, ', '));
    END IF;
    IF partition IS NULL OR partition OPERATOR(pg_catalog.<) 0 THEN
        RAISE EXCEPTION 'invalid partition %', coalesce(partition::pg_catalog.text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Kafka numbers partitions from 0.';
    END IF;
    IF from_offset IS NULL OR from_offset OPERATOR(pg_catalog.<) 0 THEN
        RAISE EXCEPTION 'invalid offset %', coalesce(from_offset::pg_catalog.text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Offsets start at 0; an offset below the earliest one Kafka retains replays from there.';
    END IF;
    SELECT o.next_offset INTO previous FROM eventpipe.consumer_offsets AS o
     WHERE o.subscription OPERATOR(pg_catalog.=) replay_as.subscription
       AND o.topic OPERATOR(pg_catalog.=) replay_as.topic
       AND o.partition OPERATOR(pg_catalog.=) replay_as.partition;
    INSERT INTO eventpipe.consumer_replays AS r (subscription, topic, partition, from_offset)
    VALUES (subscription, topic, partition, from_offset)
    ON CONFLICT ON CONSTRAINT consumer_replays_pkey
    DO UPDATE SET from_offset = EXCLUDED.from_offset, requested_at = EXCLUDED.requested_at;
    RETURN previous;
END;
$$;
REVOKE ALL ON FUNCTION eventpipe.replay_as(regrole, text, text, integer, bigint) FROM PUBLIC;

CREATE FUNCTION eventpipe.replay(
    subscription text,
    topic        text,
    partition    integer,
    from_offset  bigint)
RETURNS bigint
AS 'MODULE_PATHNAME', 'eventpipe_as_caller'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION eventpipe.replay(text, text, integer, bigint) IS
    'Have the subscription''s worker apply a partition''s messages again from an offset, before its next batch (the dedup ledger still skips events it holds); returns the offset stored now, NULL if none';
REVOKE ALL ON FUNCTION eventpipe.replay(text, text, integer, bigint) FROM PUBLIC;

CREATE FUNCTION eventpipe.retry_consumer_dead_as(caller regrole, ids bigint[], subscription text,
                                                  topic text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    queued bigint;
BEGIN
    IF subscription IS NOT NULL THEN
        PERFORM eventpipe.check_may_change(caller, subscription);
    END IF;
    -- dead letters of a subscription that is gone have no worker to apply
    -- them; those of subscriptions the caller may not change stay as they are
    UPDATE eventpipe.consumer_dead_letters AS d SET retry_requested_at = pg_catalog.clock_timestamp()
     WHERE (retry_consumer_dead_as.ids IS NULL OR d.id OPERATOR(pg_catalog.=) ANY (retry_consumer_dead_as.ids))
       AND (retry_consumer_dead_as.subscription IS NULL
            OR d.subscription OPERATOR(pg_catalog.=) retry_consumer_dead_as.subscription)
       AND (retry_consumer_dead_as.topic IS NULL OR d.topic OPERATOR(pg_catalog.=) retry_consumer_dead_as.topic)
       AND EXISTS (SELECT FROM eventpipe.subscriptions AS s
                    WHERE s.name OPERATOR(pg_catalog.=) d.subscription
                      AND eventpipe.may_change(caller, s.owner, s.confirmed));
    GET DIAGNOSTICS queued = ROW_COUNT;
    RETURN queued;
END;
$$;
REVOKE ALL ON FUNCTION eventpipe.retry_consumer_dead_as(regrole, bigint[], text, text) FROM PUBLIC;

CREATE FUNCTION eventpipe.retry_consumer_dead(ids bigint[] DEFAULT NULL, subscription text DEFAULT NULL,
                                                          topic text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'eventpipe_as_caller'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION eventpipe.retry_consumer_dead(bigint[], text, text) IS
    'Have consumer dead letters (by id, subscription, topic, or all) applied again by their subscription''s worker; returns how many were queued';
REVOKE ALL ON FUNCTION eventpipe.retry_consumer_dead(bigint[], text, text) FROM PUBLIC;

------------------------------------------------------------------------------
-- Statistics: consumer_stats(), pg_stat_consumer, stat_reset(), kafka_statistics()
------------------------------------------------------------------------------

-- consumer_stats() lists every worker of a subscription that has run since
-- the server started, and those the manager could not start (no slot
-- left), with the reason in last_error.  A subscription's totals are the
-- sums of its workers' rows.
CREATE FUNCTION eventpipe.consumer_stats(
    OUT subscription    text,
    OUT worker          integer,
    OUT pid             integer,
    OUT state           text,
    OUT partitions      integer,
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
    'Per consumer worker of this database: state, partitions held and counters from shared memory (they survive worker restarts)';
REVOKE ALL ON FUNCTION eventpipe.consumer_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eventpipe.consumer_stats() TO pg_monitor;

-- The per-partition counters and high watermarks in shared memory, and the
-- worker assigned each partition now.
CREATE FUNCTION eventpipe.consumer_partition_stats(
    OUT subscription   text,
    OUT topic          text,
    OUT partition      integer,
    OUT events_applied bigint,
    OUT duplicates     bigint,
    OUT unmatched      bigint,
    OUT events_dead    bigint,
    OUT high_watermark bigint,
    OUT worker         integer)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'eventpipe_consumer_partition_stats'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION eventpipe.consumer_partition_stats() IS
    'Per subscription, topic and partition of this database: counters, the high watermark and the worker assigned it, from shared memory';
REVOKE ALL ON FUNCTION eventpipe.consumer_partition_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eventpipe.consumer_partition_stats() TO pg_monitor;

-- One row per subscription, topic and partition (the partitions the
-- database stores an offset for, and those a worker was assigned since the
-- server started); one row with NULL topic and partition for a subscription
-- that has none yet.  worker: the one assigned the partition now; pid,
-- state and last error are that worker's, or, when none is assigned it
-- (between assignments, paused, waiting for a worker), those of the
-- subscription's first worker.
CREATE VIEW eventpipe.pg_stat_consumer AS
WITH partitions AS (
    SELECT subscription, topic, partition, o.next_offset, m.events_applied, m.duplicates,
           m.unmatched, m.events_dead, m.high_watermark, m.worker
      FROM eventpipe.consumer_offsets AS o
      FULL JOIN eventpipe.consumer_partition_stats() AS m USING (subscription, topic, partition)
), workers AS (
    SELECT * FROM eventpipe.consumer_stats()
)
SELECT s.name AS subscription,
       p.worker,
       w.pid,
       CASE WHEN w.pid IS NOT NULL OR w.state = 'waiting for a worker slot' THEN w.state
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
       w.stats_reset,
       pg_catalog.current_database() AS database
  FROM eventpipe.subscriptions AS s
  LEFT JOIN partitions AS p ON p.subscription = s.name
  LEFT JOIN LATERAL (SELECT * FROM workers
                      WHERE workers.subscription = s.name
                      ORDER BY workers.worker IS NOT DISTINCT FROM p.worker DESC, workers.worker
                      LIMIT 1) AS w ON true;
COMMENT ON VIEW eventpipe.pg_stat_consumer IS
    'Per subscription, topic and partition of this database: the worker assigned it, committed offset, high watermark, lag and counters (per partition; they survive worker restarts, reset at server restart or stat_reset())';
REVOKE ALL ON eventpipe.pg_stat_consumer FROM PUBLIC;
GRANT SELECT ON eventpipe.pg_stat_consumer TO pg_monitor;

-- Every database's workers, for superusers and pg_monitor members (the
-- views above show the current database's only): relay_stats_all() has
-- relay_stats()'s columns, consumer_stats_all() consumer_stats()'s after
-- the database's name.
CREATE FUNCTION eventpipe.relay_stats_all(
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
AS 'MODULE_PATHNAME', 'eventpipe_relay_stats_all'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION eventpipe.relay_stats_all() IS
    'Per relay worker of every database eventpipe serves or that waits for a slot: state and counters from shared memory';
REVOKE ALL ON FUNCTION eventpipe.relay_stats_all() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eventpipe.relay_stats_all() TO pg_monitor;

CREATE FUNCTION eventpipe.consumer_stats_all(
    OUT database        name,
    OUT subscription    text,
    OUT worker          integer,
    OUT pid             integer,
    OUT state           text,
    OUT partitions      integer,
    OUT events_applied  bigint,
    OUT duplicates      bigint,
    OUT unmatched       bigint,
    OUT events_dead     bigint,
    OUT batches         bigint,
    OUT last_error      text,
    OUT last_error_time timestamptz,
    OUT stats_reset     timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'eventpipe_consumer_stats_all'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION eventpipe.consumer_stats_all() IS
    'Per consumer worker of every database: state, partitions held and counters from shared memory';
REVOKE ALL ON FUNCTION eventpipe.consumer_stats_all() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eventpipe.consumer_stats_all() TO pg_monitor;

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

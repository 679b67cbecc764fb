-- eventpipe 0.1 -> 0.2: table capture and the consumer worker.
--
-- There is no separate install script for 0.2: CREATE EXTENSION eventpipe
-- runs eventpipe--0.1.sql and then this file, so a fresh install and an
-- upgraded one are the same by construction.  Every later version adds one
-- upgrade script the same way.

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




-- Table capture: capture() installs a C trigger that writes one outbox event
-- per row change in the writing transaction; uncapture() removes it.
-- Reached through the upgrade path: 0.1 installed, then updated to the current version.
CREATE EXTENSION eventpipe VERSION '0.1';
ALTER EXTENSION eventpipe UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'eventpipe';

-- The events so far, without the transaction id (checked on its own below).
CREATE VIEW events AS
SELECT id, topic, key, event_type, payload - 'txid' AS payload
  FROM eventpipe.outbox ORDER BY id;

------------------------------------------------------------------------------
-- Payload, key, event type
------------------------------------------------------------------------------
CREATE TABLE likes (
    user_id    integer,
    product_id text,
    liked_at   timestamptz NOT NULL DEFAULT '2026-11-27 08:00:00+00',
    weight     numeric(6, 2),
    PRIMARY KEY (user_id, product_id));
SELECT eventpipe.capture('likes', 'catalog-events');
SELECT * FROM eventpipe.captures;

INSERT INTO likes (user_id, product_id, weight) VALUES (1, 'p-1', 1.50);
UPDATE likes SET weight = 2 WHERE user_id = 1;
DELETE FROM likes WHERE user_id = 1;
SELECT topic, key, event_type, payload FROM events;

-- txid is the writing transaction's (64-bit, as txid_current())
DELETE FROM eventpipe.outbox;
BEGIN;
INSERT INTO likes (user_id, product_id) VALUES (2, 'p-2');
SELECT (payload->>'txid')::bigint = txid_current() AS same_txid FROM eventpipe.outbox;
COMMIT;

-- composite key: a JSON array of the columns' texts, in key order;
-- a key change on UPDATE: the event is keyed by the new key, "before" holds the old
DELETE FROM eventpipe.outbox;
INSERT INTO likes (user_id, product_id) VALUES (3, 'say "hi", é\');
UPDATE likes SET user_id = 4, product_id = 'p-4' WHERE user_id = 3;
SELECT key, key::jsonb->>1 AS second_part, payload->'before'->>'user_id' AS old_user,
       payload->'after'->>'user_id' AS new_user
  FROM events;

-- events follow the transaction: a rolled-back savepoint takes its events along
DELETE FROM eventpipe.outbox;
BEGIN;
INSERT INTO likes (user_id, product_id) VALUES (5, 'kept');
SAVEPOINT s;
INSERT INTO likes (user_id, product_id) VALUES (6, 'undone');
ROLLBACK TO SAVEPOINT s;
COMMIT;
BEGIN;
INSERT INTO likes (user_id, product_id) VALUES (7, 'rolled back');
ROLLBACK;
SELECT key FROM events;

-- capturing again replaces the settings (one key column, an explicit event
-- type, unchanged UPDATEs skipped): still one event per change
DELETE FROM eventpipe.outbox;
SELECT eventpipe.capture('likes', 'catalog-likes', key_columns => '{product_id}',
                         event_type => 'LikeChanged', skip_unchanged => true);
SELECT * FROM eventpipe.captures;
SELECT count(*) AS capture_triggers FROM pg_trigger WHERE tgrelid = 'likes'::regclass;
UPDATE likes SET weight = weight WHERE user_id = 5;                -- unchanged: skipped
UPDATE likes SET liked_at = liked_at, weight = 3 WHERE user_id = 5; -- changed
UPDATE likes SET weight = NULL WHERE user_id = 5;                 -- changed to NULL
UPDATE likes SET weight = NULL WHERE user_id = 5;                 -- unchanged NULL: skipped
SELECT topic, key, event_type, payload->'before'->'weight' AS before_weight,
       payload->'after'->'weight' AS after_weight FROM events;

-- without skip_unchanged, an UPDATE that changes nothing is an event
DELETE FROM eventpipe.outbox;
SELECT eventpipe.capture('likes', 'catalog-likes', '{product_id}');
UPDATE likes SET weight = weight WHERE user_id = 5;
SELECT key, event_type, payload->'before' = payload->'after' AS same_images FROM events;

-- a NULL in a key column: a null key for one column, a null element for several
CREATE TABLE visits (page text, visitor text, n integer);
SELECT eventpipe.capture('visits', 'visits', '{page}');
INSERT INTO visits VALUES (NULL, 'v1', 1);
SELECT eventpipe.capture('visits', 'visits', '{page, visitor}');
INSERT INTO visits VALUES (NULL, 'v1', 2);
SELECT key, key IS NULL AS null_key FROM events WHERE topic = 'visits';

------------------------------------------------------------------------------
-- Every data type family renders as row_to_json() renders it, and reads back
-- into the same row
------------------------------------------------------------------------------
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE address AS (street text, zip integer);
CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
CREATE TABLE all_types (
    id          integer PRIMARY KEY,
    i2 smallint, i8 bigint, num numeric, num_scaled numeric(12, 4),
    f4 real, f8 double precision,
    flag boolean,
    txt text, vc varchar(10), ch char(5), "Quoted Col" text,
    raw bytea,
    d date, t time, ttz timetz, ts timestamp, tstz timestamptz, iv interval,
    u uuid, js json, jb jsonb,
    ints integer[], texts text[], grid integer[][], nums numeric[],
    m mood, addr address, pos positive, ip inet, r int4range,
    big text);
SELECT eventpipe.capture('all_types', 'types');

INSERT INTO all_types VALUES
  (1, 32767, 9223372036854775807, 123456789012345678901234567890.123456789, 1.5000,
   1.25, 0.1, true,
   'line1
line2	"quoted" \ back é ☃', 'short', 'ab', 'q',
   '\x00ff10',
   '2026-11-27', '23:59:59.999999', '10:00:00+02', '2026-11-27 10:00:00.5', '2026-11-27 10:00:00+00', '1 year 2 mons 3 days 04:05:06.5',
   'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"b": 1, "a": [true, null]}', '{"b": 1, "a": [true, null]}',
   '{1,2,3}', '{"a b",NULL,"c\"d"}', '{{1,2},{3,4}}', '{1.10,NaN}',
   'happy', ROW('Main "St"', 12345), 7, '192.168.0.1/24', '[1,10)',
   'small'),
  (2, NULL, NULL, 'NaN', NULL,
   'Infinity', '-1e-300', false,
   '', NULL, NULL, NULL,
   '\x',
   'infinity', NULL, NULL, '-infinity', 'infinity', NULL,
   NULL, 'null', '[]',
   '{}', '{NULL}', NULL, NULL,
   NULL, ROW(NULL, NULL), NULL, NULL, 'empty',
   NULL),
  (3, NULL, NULL, -0.000001, NULL,
   '-Infinity', 'NaN', NULL,
   NULL, NULL, NULL, NULL,
   NULL,
   NULL, NULL, NULL, NULL, NULL, NULL,
   NULL, NULL, NULL,
   NULL, NULL, NULL, NULL,
   NULL, NULL, NULL, NULL, NULL,
   NULL);

-- the image of each row is row_to_json()'s
SELECT a.id, o.payload->'after' = row_to_json(a)::jsonb AS as_row_to_json
  FROM all_types a JOIN eventpipe.outbox o ON o.topic = 'types' AND o.key = a.id::text
 ORDER BY a.id;
-- and it reads back into the same values, column by column, but for the
-- json column: the payload is jsonb, which orders an object's keys
SELECT a.id, array_agg(c.attname ORDER BY c.attnum) AS columns_not_read_back
  FROM all_types a
  JOIN eventpipe.outbox o ON o.topic = 'types' AND o.key = a.id::text
 CROSS JOIN LATERAL jsonb_populate_record(NULL::all_types, o.payload->'after') AS back
  JOIN pg_attribute c ON c.attrelid = 'all_types'::regclass AND c.attnum > 0
 WHERE row_to_json(a)->>c.attname IS DISTINCT FROM row_to_json(back)->>c.attname
 GROUP BY a.id ORDER BY a.id;
SELECT a.id, (SELECT count(*) FROM pg_attribute c
               WHERE c.attrelid = 'all_types'::regclass AND c.attnum > 0
                 AND row_to_json(a)->>c.attname IS NOT DISTINCT FROM row_to_json(back)->>c.attname)
             AS columns_read_back
  FROM all_types a
  JOIN eventpipe.outbox o ON o.topic = 'types' AND o.key = a.id::text
 CROSS JOIN LATERAL jsonb_populate_record(NULL::all_types, o.payload->'after') AS back
 ORDER BY a.id;
SELECT jsonb_pretty(payload->'after') FROM eventpipe.outbox WHERE topic = 'types' AND key = '1';

-- TOAST: a large value, compressed or stored out of line, is in both
-- images in full, also when the UPDATE left it unchanged
ALTER TABLE all_types ALTER COLUMN big SET STORAGE EXTERNAL;
DELETE FROM eventpipe.outbox;
UPDATE all_types SET big = repeat('0123456789', 20000), txt = repeat('z', 100000) WHERE id = 1;
UPDATE all_types SET flag = false WHERE id = 1;
SELECT pg_relation_size(reltoastrelid) > 0 AS big_is_out_of_line FROM pg_class
 WHERE oid = 'all_types'::regclass;
SELECT pg_column_size(txt) < 10000 AS txt_is_compressed FROM all_types WHERE id = 1;
SELECT length(payload->'before'->>'big') AS before_big,
       length(payload->'after'->>'big') AS after_big,
       length(payload->'after'->>'txt') AS after_txt,
       payload->'after'->'flag' AS after_flag
  FROM eventpipe.outbox WHERE topic = 'types' ORDER BY id;
SELECT o.payload->'after' = row_to_json(a)::jsonb AS as_row_to_json
  FROM eventpipe.outbox o, all_types a
 WHERE a.id = 1 AND o.id = (SELECT max(id) FROM eventpipe.outbox);
DELETE FROM all_types WHERE id = 1;
SELECT length(payload->'before'->>'big') AS deleted_big, payload->'after' AS after
  FROM eventpipe.outbox WHERE topic = 'types' ORDER BY id DESC LIMIT 1;

-- dropped and added columns: the images show the table as it is now
DELETE FROM eventpipe.outbox;
ALTER TABLE likes DROP COLUMN liked_at;
ALTER TABLE likes ADD COLUMN source text DEFAULT 'web';
INSERT INTO likes (user_id, product_id) VALUES (8, 'p-8');
SELECT key, payload->'after' AS after FROM events;

------------------------------------------------------------------------------
-- TRUNCATE is refused while the table is captured
------------------------------------------------------------------------------
TRUNCATE likes;
TRUNCATE visits, likes;
SELECT count(*) AS likes_left FROM likes;

------------------------------------------------------------------------------
-- uncapture()
------------------------------------------------------------------------------
DELETE FROM eventpipe.outbox;
SELECT eventpipe.uncapture('likes');
SELECT eventpipe.uncapture('likes');
INSERT INTO likes (user_id, product_id) VALUES (9, 'p-9');
SELECT count(*) AS events_after_uncapture FROM eventpipe.outbox;
SELECT rel FROM eventpipe.captures ORDER BY rel::text;
SELECT count(*) AS triggers_left FROM pg_trigger WHERE tgrelid = 'likes'::regclass;
TRUNCATE likes;

------------------------------------------------------------------------------
-- DROP TABLE and DROP COLUMN leave nothing behind
------------------------------------------------------------------------------
SELECT eventpipe.capture('likes', 'catalog-events');
-- a key column cannot be dropped while captured; CASCADE ends the capture
ALTER TABLE likes DROP COLUMN product_id;
ALTER TABLE likes DROP COLUMN source;  -- not a key column: fine
ALTER TABLE likes DROP COLUMN product_id CASCADE;
SELECT rel FROM eventpipe.captures ORDER BY rel::text;
SELECT count(*) AS triggers_left FROM pg_trigger WHERE tgrelid = 'likes'::regclass;
TRUNCATE likes;
-- DROP TABLE takes the capture with it
DROP TABLE visits;
SELECT rel FROM eventpipe.captures ORDER BY rel::text;
SELECT count(*) AS dependencies_left FROM pg_depend
 WHERE classid = 'pg_trigger'::regclass
   AND objid NOT IN (SELECT oid FROM pg_trigger);

-- renaming a key column: writes say what to do until the table is captured again
CREATE TABLE renamed (id integer PRIMARY KEY);
SELECT eventpipe.capture('renamed', 'renamed');
ALTER TABLE renamed RENAME COLUMN id TO ident;
INSERT INTO renamed VALUES (1);
SELECT eventpipe.capture('renamed', 'renamed');
INSERT INTO renamed VALUES (1);
SELECT key, payload->'after' AS after FROM events WHERE topic = 'renamed';
DROP TABLE renamed;

-- a partition is an ordinary table: it can be captured
CREATE TABLE measurements (at date, v integer, PRIMARY KEY (at)) PARTITION BY RANGE (at);
CREATE TABLE measurements_2026 PARTITION OF measurements
    FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
SELECT eventpipe.capture('measurements_2026', 'measurements');
INSERT INTO measurements VALUES ('2026-11-27', 1);
SELECT key, event_type, payload->>'table' AS "table" FROM events WHERE topic = 'measurements';

------------------------------------------------------------------------------
-- Bad input: clear errors, nothing installed
------------------------------------------------------------------------------
CREATE TABLE no_pk (a integer, b text);
SELECT eventpipe.capture('no_pk', 'topic');
SELECT eventpipe.capture('no_pk', 'topic', '{c}');
SELECT eventpipe.capture('no_pk', 'topic', '{a, a}');
SELECT eventpipe.capture('no_pk', 'topic', '{}');
SELECT eventpipe.capture('no_pk', 'topic', '{a, NULL}');
SELECT eventpipe.capture('no_pk', 'topic', '{ctid}');
SELECT eventpipe.capture('no_pk', 'topic', '{A}');
SELECT eventpipe.capture('no_pk', NULL, '{a}');
SELECT eventpipe.capture('no_pk', '', '{a}');
SELECT eventpipe.capture('no_pk', 'bad topic', '{a}');
SELECT eventpipe.capture('no_pk', 'orders/eu', '{a}');
SELECT eventpipe.capture('no_pk', '..', '{a}');
SELECT eventpipe.capture('no_pk', repeat('t', 250), '{a}');
SELECT eventpipe.capture('no_pk', 'topic', '{a}', '');
SELECT eventpipe.capture('no_pk', 'topic', '{a}', NULL, NULL);
SELECT eventpipe.capture(NULL, 'topic');
SELECT eventpipe.capture('no_such_table', 'topic');
CREATE VIEW a_view AS SELECT 1 AS a;
SELECT eventpipe.capture('a_view', 'topic', '{a}');
CREATE MATERIALIZED VIEW a_matview AS SELECT 1 AS a;
SELECT eventpipe.capture('a_matview', 'topic', '{a}');
CREATE FOREIGN DATA WRAPPER dummy_fdw;
CREATE SERVER dummy_server FOREIGN DATA WRAPPER dummy_fdw;
CREATE FOREIGN TABLE a_foreign_table (a integer) SERVER dummy_server;
SELECT eventpipe.capture('a_foreign_table', 'topic', '{a}');
SELECT eventpipe.capture('measurements', 'topic');
CREATE TEMP TABLE a_temp_table (a integer PRIMARY KEY);
SELECT eventpipe.capture('a_temp_table', 'topic');
CREATE SEQUENCE a_sequence;
SELECT eventpipe.capture('a_sequence', 'topic', '{last_value}');
SELECT eventpipe.capture('address', 'topic', '{zip}');
SELECT eventpipe.capture('all_types_pkey', 'topic');
SELECT eventpipe.capture('eventpipe.outbox', 'topic');
SELECT eventpipe.capture('pg_class', 'topic', '{oid}');
-- a trigger of the user's with the same name is not overwritten
CREATE FUNCTION do_nothing() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$;
CREATE TRIGGER eventpipe_capture AFTER INSERT ON no_pk FOR EACH ROW EXECUTE FUNCTION do_nothing();
SELECT eventpipe.capture('no_pk', 'topic', '{a}');
SELECT eventpipe.uncapture('no_pk');
DROP TRIGGER eventpipe_capture ON no_pk;
-- the trigger functions refuse to run outside their place
SELECT eventpipe.capture_trigger();
CREATE TRIGGER wrong_timing BEFORE INSERT ON no_pk FOR EACH ROW
    EXECUTE FUNCTION eventpipe.capture_trigger('topic', '', 'false', 'a');
INSERT INTO no_pk VALUES (1, 'x');
DROP TRIGGER wrong_timing ON no_pk;
CREATE TRIGGER no_key AFTER INSERT ON no_pk FOR EACH ROW
    EXECUTE FUNCTION eventpipe.capture_trigger('topic', '', 'false');
INSERT INTO no_pk VALUES (1, 'x');
DROP TRIGGER no_key ON no_pk;
-- none of that installed anything
SELECT rel FROM eventpipe.captures ORDER BY rel::text;
SELECT tgrelid::regclass, tgname FROM pg_trigger WHERE tgname LIKE 'eventpipe%' ORDER BY 1, 2;

------------------------------------------------------------------------------
-- Privileges
------------------------------------------------------------------------------
CREATE ROLE ep_owner;
CREATE ROLE ep_writer;
CREATE ROLE ep_other;
GRANT USAGE ON SCHEMA eventpipe TO ep_owner, ep_writer, ep_other;
CREATE TABLE payments (id integer PRIMARY KEY, amount numeric, card text);
ALTER TABLE payments OWNER TO ep_owner;
GRANT SELECT, INSERT, UPDATE, DELETE ON payments TO ep_writer;
GRANT CREATE ON SCHEMA public TO ep_writer;

-- capturing is a right granted, on top of owning the table
SET ROLE ep_owner;
SELECT eventpipe.capture('payments', 'payments');
RESET ROLE;
GRANT EXECUTE ON FUNCTION eventpipe.capture(regclass, text, text[], text, boolean, boolean),
                          eventpipe.uncapture(regclass) TO ep_owner, ep_other;
SET ROLE ep_other;
SELECT eventpipe.capture('payments', 'payments');
RESET ROLE;
SET ROLE ep_owner;
SELECT eventpipe.capture('payments', 'payments');
SELECT eventpipe.capture('likes', 'payments');
RESET ROLE;
SET ROLE ep_other;
SELECT eventpipe.uncapture('payments');
RESET ROLE;

-- a writer with no rights on the outbox: its changes are captured all the same,
-- and it can read neither the outbox nor the dead letters
DELETE FROM eventpipe.outbox;
SET ROLE ep_writer;
INSERT INTO payments VALUES (1, 99.90, '4111-1111');
UPDATE payments SET amount = 100 WHERE id = 1;
SELECT * FROM eventpipe.outbox;
SELECT * FROM eventpipe.dead_letters;
SELECT eventpipe.publish('payments', '1', '{}');
SELECT rel, topic FROM eventpipe.captures ORDER BY rel::text;
-- nor attach the capture trigger to a table of its own to publish what it likes
CREATE TABLE public.writer_table (id integer PRIMARY KEY);
CREATE TRIGGER sneaky AFTER INSERT ON public.writer_table FOR EACH ROW
    EXECUTE FUNCTION eventpipe.capture_trigger('payments', '', 'false', 'id');
SELECT eventpipe.capture('writer_table', 'payments');
RESET ROLE;
SELECT key, event_type, payload->'after' AS after FROM events;

-- the owner stops capturing its table
SET ROLE ep_owner;
SELECT eventpipe.uncapture('payments');
RESET ROLE;

------------------------------------------------------------------------------
-- The extension cannot be dropped from under captured tables
------------------------------------------------------------------------------
REVOKE ALL ON SCHEMA eventpipe FROM ep_owner, ep_writer, ep_other;
DROP EXTENSION eventpipe;
DROP EXTENSION eventpipe CASCADE;
SELECT count(*) AS triggers_left FROM pg_trigger WHERE tgname LIKE 'eventpipe%';

DROP TABLE payments, writer_table, likes, all_types, no_pk, measurements;
DROP VIEW a_view;
DROP MATERIALIZED VIEW a_matview;
DROP FOREIGN TABLE a_foreign_table;
DROP SEQUENCE a_sequence;
DROP SERVER dummy_server;
DROP FOREIGN DATA WRAPPER dummy_fdw;
DROP TYPE address, mood;
DROP DOMAIN positive;
DROP FUNCTION do_nothing();
REVOKE ALL ON SCHEMA public FROM ep_owner, ep_writer, ep_other;
DROP ROLE ep_owner, ep_writer, ep_other;

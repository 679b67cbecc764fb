-- Snapshots of captured tables: snapshot() checks and records a request
-- (the snapshot worker, which does the reading, runs in the TAP tests);
-- cancel_snapshot() stops one; eventpipe.snapshots shows them.
CREATE EXTENSION eventpipe;

CREATE TABLE items (id integer PRIMARY KEY, name text, price numeric(8, 2));
INSERT INTO items VALUES (1, 'pen', 2.50), (2, 'book', 12.00), (3, 'lamp', 30.00);
CREATE TABLE others (id integer PRIMARY KEY, price numeric);
CREATE TABLE keyless (name text);

------------------------------------------------------------------------------
-- What is refused
------------------------------------------------------------------------------
-- a table that is not captured
SELECT eventpipe.snapshot('items');
SELECT eventpipe.capture('items', 'item-events');
-- a captured table without a primary key
SELECT eventpipe.capture('keyless', 'item-events', key_columns => ARRAY['name']);
SELECT eventpipe.snapshot('keyless');
SELECT eventpipe.snapshot(NULL);

-- conditions: one boolean expression over the table's own columns, and
-- nothing else
SELECT eventpipe.snapshot('items', 'true); DROP TABLE items; --');
SELECT eventpipe.snapshot('items', 'price > 10; DROP TABLE items');
SELECT eventpipe.snapshot('items', 'price > 10 FROM others');
SELECT eventpipe.snapshot('items', 'price > 10 AS cheap');
SELECT eventpipe.snapshot('items', 'price > 10 ORDER BY 1');
SELECT eventpipe.snapshot('items', 'price > 10 UNION SELECT true');
SELECT eventpipe.snapshot('items', 'id IN (SELECT o.id FROM others AS o)');
SELECT eventpipe.snapshot('items', 'EXISTS (SELECT FROM others)');
SELECT eventpipe.snapshot('items', 'others.price > 10');
SELECT eventpipe.snapshot('items', 'nosuchcolumn > 10');
SELECT eventpipe.snapshot('items', 'count(*) > 1');
SELECT eventpipe.snapshot('items', 'generate_series(1, 2) > 1');
SELECT eventpipe.snapshot('items', 'random() < 0.5');
SELECT eventpipe.snapshot('items', 'ctid = ''(0,1)''');
SELECT eventpipe.snapshot('items', '$1 > 1');
SELECT eventpipe.snapshot('items', 'price');
SELECT eventpipe.snapshot('items', '');
-- the table is still there, untouched
SELECT count(*) FROM items;
-- nothing was recorded by the refusals
SELECT count(*) FROM eventpipe.snapshots;

------------------------------------------------------------------------------
-- Requests
------------------------------------------------------------------------------
SELECT eventpipe.snapshot('items') AS all_rows \gset
SELECT eventpipe.snapshot('items', 'price > 10 AND name <> ''lamp''') AS filtered \gset
SELECT id = :all_rows AS first, rel, condition, state, error, rows_emitted,
       rows_estimated IS NOT NULL AS estimated, started_at IS NOT NULL AS started,
       finished_at, requested_by
  FROM eventpipe.snapshots ORDER BY id;
-- the condition is kept as the checked expression, not as text to paste
SELECT condition_expr IS NULL AS every_row, condition_expr LIKE '{BOOLEXPR %' AS node_tree
  FROM eventpipe.table_snapshots ORDER BY id;
-- no event is written by the request itself: the worker emits them
SELECT count(*) FROM eventpipe.outbox;

-- cancel_snapshot(): once
SELECT eventpipe.cancel_snapshot(:all_rows);
SELECT eventpipe.cancel_snapshot(:all_rows);
SELECT state, finished_at IS NOT NULL AS finished FROM eventpipe.snapshots WHERE id = :all_rows;
SELECT eventpipe.cancel_snapshot(-1);
SELECT eventpipe.cancel_snapshot(NULL);

-- capture(..., snapshot => true) asks for a snapshot of every row, in the
-- same transaction
BEGIN;
SELECT eventpipe.capture('others', 'other-events', snapshot => true);
SELECT rel, condition, state FROM eventpipe.snapshots WHERE rel = 'others'::regclass;
ROLLBACK;
SELECT count(*) FROM eventpipe.snapshots WHERE rel = 'others'::regclass;
SELECT count(*) FROM eventpipe.captures WHERE rel = 'others'::regclass;
SELECT eventpipe.capture('others', 'other-events', snapshot => NULL);

------------------------------------------------------------------------------
-- Privileges: as capture(), the table's owner with EXECUTE granted; the
-- request is recorded as the caller's
------------------------------------------------------------------------------
CREATE ROLE ep_snap_owner;
CREATE ROLE ep_snap_other;
GRANT USAGE ON SCHEMA eventpipe TO ep_snap_owner, ep_snap_other;
CREATE TABLE owned (id integer PRIMARY KEY, note text);
ALTER TABLE owned OWNER TO ep_snap_owner;
SELECT eventpipe.capture('owned', 'owned-events');

SET ROLE ep_snap_owner;
SELECT eventpipe.snapshot('owned');               -- no EXECUTE yet
RESET ROLE;
GRANT EXECUTE ON FUNCTION eventpipe.snapshot(regclass, text),
                          eventpipe.cancel_snapshot(bigint) TO ep_snap_owner, ep_snap_other;
SET ROLE ep_snap_other;
SELECT eventpipe.snapshot('owned');               -- not the owner
SELECT eventpipe.snapshot('items');
RESET ROLE;
SET ROLE ep_snap_owner;
SELECT eventpipe.snapshot('owned', 'note IS NOT NULL') AS owned_snapshot \gset
-- the closed table: neither read nor written directly
SELECT count(*) FROM eventpipe.table_snapshots;
UPDATE eventpipe.table_snapshots SET condition_expr = NULL;
RESET ROLE;
SELECT rel, condition, requested_by FROM eventpipe.snapshots WHERE id = :owned_snapshot;
-- another role may see the view, not cancel the snapshot
SET ROLE ep_snap_other;
SELECT rel, state FROM eventpipe.snapshots WHERE id = :owned_snapshot;
SELECT eventpipe.cancel_snapshot(:owned_snapshot);
RESET ROLE;
SET ROLE ep_snap_owner;
SELECT eventpipe.cancel_snapshot(:owned_snapshot);
RESET ROLE;

DROP EXTENSION eventpipe CASCADE;
DROP TABLE items, others, keyless, owned;
DROP SCHEMA eventpipe;
DROP ROLE ep_snap_owner, ep_snap_other;

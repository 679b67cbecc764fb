-- Mirrors: add_mirror and remove_mirror, the checks add_mirror makes when
-- declared, who may call them, and what follows a mirror's owner and
-- subscription.  No Kafka here: applying events is the TAP suites' part
-- (t/320_mirror.pl, t/321_mirror_debezium.pl).
CREATE EXTENSION eventpipe;
SET client_min_messages = warning;

SELECT eventpipe.subscribe('catalog-copy', ARRAY['catalog-events']);
CREATE TABLE products_copy (id bigint PRIMARY KEY, name text, price numeric(10,2), tags text[],
                            synced_at timestamptz DEFAULT now());
CREATE TABLE two_key_copy (shop int, sku text, qty int, PRIMARY KEY (sku, shop));
CREATE TABLE partitioned_copy (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
CREATE TABLE no_pk_copy (id bigint, name text);
CREATE UNIQUE INDEX no_pk_copy_id ON no_pk_copy (id);
CREATE VIEW products_view AS SELECT * FROM products_copy;
CREATE MATERIALIZED VIEW products_matview AS SELECT * FROM products_copy;
CREATE TEMP TABLE temp_copy (id int PRIMARY KEY);

-- add_mirror: the formats, the default one, the rows it writes
SELECT eventpipe.add_mirror('catalog-copy', 'public.products', 'products_copy') > 0 AS mirror;
SELECT eventpipe.add_mirror('catalog-copy', 'public.stock', 'two_key_copy', 'debezium') > 0 AS mirror;
SELECT eventpipe.add_mirror('catalog-copy', 'public.parts', 'partitioned_copy', format => 'eventpipe') > 0 AS mirror;
SELECT subscription, source, target, format, owner, confirmed FROM eventpipe.mirrors ORDER BY id;
SELECT min(id) AS first_mirror FROM eventpipe.mirrors \gset

-- add_mirror: what it refuses, and why
SELECT eventpipe.add_mirror('nope', 'public.products', 'products_copy');
SELECT eventpipe.add_mirror('catalog-copy', 'public.products', 'products_copy');
SELECT eventpipe.add_mirror('catalog-copy', 'public.x', 'no_pk_copy');
SELECT eventpipe.add_mirror('catalog-copy', 'public.x', 'products_view');
SELECT eventpipe.add_mirror('catalog-copy', 'public.x', 'products_matview');
SELECT eventpipe.add_mirror('catalog-copy', 'public.x', 'temp_copy');
SELECT eventpipe.add_mirror('catalog-copy', 'public.x', 0);
SELECT eventpipe.add_mirror('catalog-copy', 'public.x', 'products_copy', 'maxwell');
SELECT eventpipe.add_mirror('catalog-copy', 'public.x', 'products_copy', NULL);
SELECT eventpipe.add_mirror('catalog-copy', '', 'products_copy');
SELECT eventpipe.add_mirror('catalog-copy', NULL, 'products_copy');
SELECT eventpipe.add_mirror('catalog-copy', 'public.x', NULL);

-- privileges: nothing here is PUBLIC
SELECT p.proname, has_function_privilege('public', p.oid, 'EXECUTE') AS public_may_execute
  FROM pg_proc AS p
 WHERE p.pronamespace = 'eventpipe'::regnamespace
   AND p.proname IN ('add_mirror', 'add_mirror_as', 'remove_mirror', 'remove_mirror_as')
 ORDER BY 1;

-- a role allowed to declare mirrors needs SELECT, INSERT, UPDATE and DELETE
-- on the target, each of them
CREATE ROLE ep_mirror_owner;
GRANT USAGE ON SCHEMA eventpipe TO ep_mirror_owner;
GRANT EXECUTE ON FUNCTION eventpipe.subscribe(text, text[], text, text, integer, text, integer),
                          eventpipe.add_mirror(text, text, regclass, text),
                          eventpipe.remove_mirror(bigint) TO ep_mirror_owner;
CREATE TABLE orders_copy (id int PRIMARY KEY, total numeric);
GRANT INSERT, UPDATE, DELETE ON orders_copy TO ep_mirror_owner;
SET ROLE ep_mirror_owner;
SELECT eventpipe.subscribe('orders-copy', ARRAY['order-events']);
SELECT eventpipe.add_mirror('orders-copy', 'public.orders', 'orders_copy');
RESET ROLE;
REVOKE DELETE ON orders_copy FROM ep_mirror_owner;
GRANT SELECT ON orders_copy TO ep_mirror_owner;
SET ROLE ep_mirror_owner;
SELECT eventpipe.add_mirror('orders-copy', 'public.orders', 'orders_copy');
RESET ROLE;
REVOKE UPDATE ON orders_copy FROM ep_mirror_owner;
GRANT DELETE ON orders_copy TO ep_mirror_owner;
SET ROLE ep_mirror_owner;
SELECT eventpipe.add_mirror('orders-copy', 'public.orders', 'orders_copy');
RESET ROLE;
GRANT UPDATE ON orders_copy TO ep_mirror_owner;
SET ROLE ep_mirror_owner;
SELECT eventpipe.add_mirror('orders-copy', 'public.orders', 'orders_copy') > 0 AS mirror;
-- the table is closed: no forged owner, no mirror behind the functions' back
INSERT INTO eventpipe.mirrors (subscription, source, target, format, owner, confirmed)
VALUES ('orders-copy', 'public.x', 'orders_copy', 'eventpipe', 'postgres', true);
UPDATE eventpipe.mirrors SET owner = 'postgres';
-- another role's subscription and mirrors are not its to change
SELECT eventpipe.add_mirror('catalog-copy', 'public.orders', 'orders_copy');
SELECT eventpipe.remove_mirror(:first_mirror);
RESET ROLE;
SELECT subscription, source, target, owner FROM eventpipe.mirrors ORDER BY id;

-- an owner is a dependency: DROP ROLE refuses, REASSIGN OWNED hands over,
-- DROP OWNED takes the mirrors away
DROP ROLE ep_mirror_owner;
CREATE ROLE ep_mirror_heir;
REASSIGN OWNED BY ep_mirror_owner TO ep_mirror_heir;
SELECT subscription, owner FROM eventpipe.mirrors WHERE subscription = 'orders-copy';
DROP OWNED BY ep_mirror_heir;
SELECT count(*) AS left_behind FROM eventpipe.mirrors WHERE subscription = 'orders-copy';
DROP ROLE ep_mirror_heir;
DROP OWNED BY ep_mirror_owner;
DROP ROLE ep_mirror_owner;

-- a mirror of another role on a superuser's subscription goes with its owner
-- too, and the owner stops being tracked once it owns nothing
CREATE ROLE ep_mirror_guest;
GRANT USAGE ON SCHEMA eventpipe TO ep_mirror_guest;
GRANT ALL ON orders_copy TO ep_mirror_guest;
GRANT EXECUTE ON FUNCTION eventpipe.add_mirror(text, text, regclass, text) TO ep_mirror_guest;
GRANT eventpipe_admin TO ep_mirror_guest;
SET ROLE ep_mirror_guest;
SELECT eventpipe.add_mirror('catalog-copy', 'public.orders', 'orders_copy') AS guest_mirror \gset
RESET ROLE;
SELECT owner, eventpipe.owner_is_tracked(owner) AS tracked FROM eventpipe.mirrors WHERE id = :guest_mirror;
-- remove_mirror: true once, then false
SELECT eventpipe.remove_mirror(:guest_mirror) AS removed;
SELECT eventpipe.remove_mirror(:guest_mirror) AS removed_again;
SELECT eventpipe.owner_is_tracked('ep_mirror_guest') AS still_tracked;
DROP OWNED BY ep_mirror_guest;
DROP ROLE ep_mirror_guest;

-- unsubscribe takes the mirrors along; the targets keep their rows
INSERT INTO products_copy (id, name) VALUES (1, 'kept');
SELECT eventpipe.unsubscribe('catalog-copy');
SELECT count(*) AS mirrors_left FROM eventpipe.mirrors;
SELECT id, name FROM products_copy;

-- the mirrors are carried by pg_dump
SELECT c.relname
  FROM pg_extension AS e, unnest(e.extconfig) AS t(oid) JOIN pg_class AS c ON c.oid = t.oid
 WHERE e.extname = 'eventpipe' AND c.relname LIKE 'mirrors%' ORDER BY 1;

DROP EXTENSION eventpipe;
DROP TABLE products_copy, two_key_copy, partitioned_copy, no_pk_copy, orders_copy CASCADE;

-- Upgrades: a database that installed 0.1 updates to the current version
-- in place, its pending events kept.
CREATE EXTENSION eventpipe VERSION '0.1';
SELECT eventpipe.publish('order-events', 'order-1', '{"n": 1}') IS NOT NULL AS published;

ALTER EXTENSION eventpipe UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'eventpipe';
SELECT topic, key, payload FROM eventpipe.outbox;

-- the upgraded extension publishes as before
SELECT eventpipe.publish('order-events', 'order-2', '{"n": 2}') IS NOT NULL AS published;
SELECT count(*) AS pending FROM eventpipe.outbox;

DROP EXTENSION eventpipe;

-- a database that installed 0.2 keeps its subscriptions, rules and offsets
CREATE EXTENSION eventpipe VERSION '0.2';
CREATE TABLE upgrade_metrics (product text PRIMARY KEY, likes bigint NOT NULL DEFAULT 0);
SELECT eventpipe.subscribe('upgrade-sub', ARRAY['catalog-events']);
SELECT eventpipe.add_metric('upgrade-sub', 'LikeChanged', 'upgrade_metrics', 'product', 'likes') > 0 AS rule_added;
INSERT INTO eventpipe.consumer_offsets (subscription, topic, partition, next_offset)
VALUES ('upgrade-sub', 'catalog-events', 0, 42);
-- its dedup ledger: a canonical UUID, other spellings of it, other ids, an
-- old row, and a row left by a subscription that is gone
INSERT INTO eventpipe.event_handled (subscription, event_id, handled_at)
VALUES ('upgrade-sub', '5f0c2a9e-8b1d-4c3e-a7f6-0d9e8c7b6a51', now()),
       ('upgrade-sub', '5F0C2A9E-8B1D-4C3E-A7F6-0D9E8C7B6A51', now()),
       ('upgrade-sub', '5f0c2a9e8b1d4c3ea7f60d9e8c7b6a51', now()),
       ('upgrade-sub', 'order-7', now()),
       ('upgrade-sub', 'catalog-events/0/41', now() - interval '8 days'),
       ('gone-sub', 'order-7', now()),
       -- version 7 UUIDs: two of one 100-ms bucket, one of the next, one old
       ('upgrade-sub', '0193a5f2-6c01-7a00-8000-000000000002', now()),
       ('upgrade-sub', '0193a5f2-6c01-7a00-8000-000000000001', now() - interval '1 hour'),
       ('upgrade-sub', '0193a5f2-6c65-7a00-b000-000000000003', now()),
       ('upgrade-sub', '0193a5f2-7000-7a00-9000-000000000004', now() - interval '8 days');
ALTER EXTENSION eventpipe UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'eventpipe';
SELECT name, topics FROM eventpipe.subscriptions;
SELECT subscription, event_type, target, key_field, column_name FROM eventpipe.metric_rules;
-- owners written before 0.4 are not trusted: the subscription goes to the
-- extension's owner, the rule waits for a superuser to confirm its owner
SELECT name, owner, confirmed FROM eventpipe.subscriptions;
SELECT owner, confirmed, eventpipe.owner_is_tracked(owner) AS tracked FROM eventpipe.metric_rules;
SELECT eventpipe.confirm_owner('postgres') AS confirmed_rows;
SELECT owner, confirmed FROM eventpipe.metric_rules;
SELECT subscription, topic, partition, next_offset FROM eventpipe.consumer_offsets;
-- the ledger rows keep their meaning: the canonical UUIDs that are not
-- version 7 as uuids, every other id but version 7 UUIDs as text, the ages
-- kept; the gone subscription's row dropped
SELECT s.name, h.event_uuid, h.event_text, h.handled_at < now() - interval '7 days' AS old
  FROM eventpipe.event_handled AS h JOIN eventpipe.subscriptions AS s ON s.id = h.subscription_id
 ORDER BY h.event_uuid, h.event_text COLLATE "C";
SELECT count(*) AS ledger_rows FROM eventpipe.event_handled;
-- version 7 UUIDs are packed in runs, sorted, one per (subscription,
-- 100-ms bucket), each run as old as its newest id
SELECT s.name, r.bucket, r.handled_at < now() - interval '7 days' AS old,
       ARRAY(SELECT pg_catalog.encode(pg_catalog.substr(r.ids, 16 * i + 1, 16), 'hex')::uuid
               FROM generate_series(0, length(r.ids) / 16 - 1) AS i ORDER BY i) AS ids
  FROM eventpipe.event_handled_runs AS r JOIN eventpipe.subscriptions AS s ON s.id = r.subscription_id
 ORDER BY r.bucket;
-- the partitions of the days the rows hold are made, none a member of the
-- extension, so that pg_dump carries them as tables
SELECT count(*) > 0 AS partitioned,
       count(*) FILTER (WHERE d.objid IS NOT NULL) AS members
  FROM pg_inherits AS i
  LEFT JOIN pg_depend AS d ON d.classid = 'pg_class'::regclass AND d.objid = i.inhrelid AND d.deptype = 'e'
 WHERE i.inhparent IN ('eventpipe.event_handled'::regclass, 'eventpipe.event_handled_runs'::regclass);
-- and they still deduplicate: the worker's lookups of the other ids (its
-- statements) find them all, but not a new one
SELECT id AS upgrade_sub_id FROM eventpipe.subscriptions WHERE name = 'upgrade-sub' \gset
SELECT h.event_uuid FROM eventpipe.event_handled AS h
 WHERE h.subscription_id = :upgrade_sub_id AND h.event_uuid IS NOT NULL
   AND h.event_uuid = ANY (ARRAY['5f0c2a9e-8b1d-4c3e-a7f6-0d9e8c7b6a51', '5f0c2a9e-8b1d-4c3e-a7f6-0d9e8c7b6a52']::uuid[]);
SELECT h.event_text FROM eventpipe.event_handled AS h
 WHERE h.subscription_id = :upgrade_sub_id AND h.event_text IS NOT NULL
   AND h.event_text = ANY (ARRAY['5F0C2A9E-8B1D-4C3E-A7F6-0D9E8C7B6A51', '5f0c2a9e8b1d4c3ea7f60d9e8c7b6a51',
                                 'order-7', 'order-8']::text[] COLLATE "C")
 ORDER BY 1;
-- the upkeep makes today's and the next two days' partitions and drops the
-- days past the retention, with their rows: no DELETE
SELECT eventpipe.ledger_upkeep(7 * 86400) >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '3 days'
       AS three_days_ahead;
SELECT h.event_text FROM eventpipe.event_handled AS h WHERE h.handled_at < now() - interval '7 days';
SELECT r.bucket FROM eventpipe.event_handled_runs AS r WHERE r.handled_at < now() - interval '7 days';
SELECT count(*) AS ledger_rows FROM eventpipe.event_handled;
SELECT count(*) AS ledger_runs FROM eventpipe.event_handled_runs;
-- a subscription gets a ledger number, and unsubscribe() takes its rows along
SELECT eventpipe.subscribe('upgrade-sub-2', ARRAY['catalog-events']);
SELECT id > :upgrade_sub_id AS numbered FROM eventpipe.subscriptions WHERE name = 'upgrade-sub-2';
SELECT eventpipe.unsubscribe('upgrade-sub');
SELECT count(*) AS ledger_rows FROM eventpipe.event_handled;
SELECT count(*) AS ledger_runs FROM eventpipe.event_handled_runs;
DROP EXTENSION eventpipe;
DROP TABLE upgrade_metrics;

------------------------------------------------------------------------------
-- A fresh install (eventpipe--<default_version>.sql alone) and an installation
-- updated from 0.1 through every upgrade script end identical.
------------------------------------------------------------------------------

-- Each installation is described by catalog rows (kind, object, detail),
-- written without OIDs; the two descriptions are compared row for row.
-- What is compared: the extension's members; tables, views, sequences and
-- their options and owners; columns (type, NOT NULL, default, identity,
-- collation, storage) by name and by their place among the live columns;
-- constraints; indexes; sequences' parameters and owning columns;
-- triggers; view definitions; functions in full (pg_get_functiondef:
-- arguments and defaults, result, language, volatility, strictness,
-- parallel safety, SECURITY DEFINER, cost, SET options, body); privileges
-- on the schema, tables, columns and functions, effective (NULL read as
-- the default it stands for) and initial (pg_init_privs, which pg_dump
-- compares with); comments on the members and their columns; the tables
-- pg_dump carries (pg_extension_config_dump); the admin role.
-- Not compared, because an update cannot match a fresh CREATE TABLE there
-- and no statement sees it: attnum itself (a column dropped by an update
-- leaves a hole: the ledger's subscription column, 0.3), and attmissingval,
-- the value that rows older than an ADD COLUMN ... DEFAULT read (paused,
-- confirmed).
CREATE FUNCTION pg_temp.acl_text(acl aclitem[]) RETURNS text
LANGUAGE sql STABLE
RETURN (SELECT string_agg(CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(x.grantee) END
                          || '=' || x.privilege_type || CASE WHEN x.is_grantable THEN '*' ELSE '' END
                          || ' by ' || pg_get_userbyid(x.grantor), ', ' ORDER BY 1)
          FROM aclexplode(acl) AS x);

CREATE TEMP VIEW eventpipe_catalog (kind, object, detail) AS
WITH ext AS (
    SELECT e.* FROM pg_extension AS e WHERE e.extname = 'eventpipe'
), ns AS (
    -- by name: a regnamespace constant would make this view depend on the schema
    SELECT n.* FROM pg_namespace AS n WHERE n.nspname = 'eventpipe'
), members AS (
    -- PostgreSQL 18 also lists the row types of the extension's tables and
    -- views, and their array types: they come with the relations, compared
    -- below, so they are left out for one description on every version
    SELECT d.classid, d.objid FROM pg_depend AS d, ext
     WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
       AND NOT EXISTS (SELECT FROM pg_type AS t LEFT JOIN pg_type AS elem ON elem.oid = t.typelem
                        WHERE d.classid = 'pg_type'::regclass AND t.oid = d.objid
                          AND (t.typrelid <> 0 OR elem.typrelid <> 0))
), rels AS (
    SELECT c.* FROM pg_class AS c, ns WHERE c.relnamespace = ns.oid
), procs AS (
    SELECT p.* FROM pg_proc AS p, ns WHERE p.pronamespace = ns.oid
)
SELECT 'extension', ext.extname::text,
       concat_ws(' | ', ext.extversion, ext.extrelocatable, ext.extnamespace::regnamespace,
                 pg_get_userbyid(ext.extowner))
  FROM ext
UNION ALL
SELECT 'member', pg_describe_object(m.classid, m.objid, 0), '' FROM members AS m
UNION ALL
SELECT 'schema', n.nspname::text,
       concat_ws(' | ', pg_get_userbyid(n.nspowner),
                 pg_temp.acl_text(coalesce(n.nspacl, acldefault('n', n.nspowner))))
  FROM ns AS n
UNION ALL
SELECT 'relation', c.oid::regclass::text,
       concat_ws(' | ', c.relkind, c.relpersistence, pg_get_userbyid(c.relowner), c.relreplident,
                 c.relrowsecurity, array_to_string(ARRAY(SELECT unnest(c.reloptions) ORDER BY 1), ', '),
                 pg_temp.acl_text(coalesce(c.relacl, acldefault(CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::"char",
                                                                c.relowner))))
  FROM rels AS c WHERE c.relkind <> 'i'
UNION ALL
SELECT 'column', c.oid::regclass || '.' || a.attname,
       concat_ws(' | ', row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum),
                 format_type(a.atttypid, a.atttypmod), CASE WHEN a.attnotnull THEN 'not null' END,
                 'default ' || pg_get_expr(ad.adbin, ad.adrelid), 'identity ' || nullif(a.attidentity::text, ''),
                 'generated ' || nullif(a.attgenerated::text, ''),
                 'collate ' || (SELECT co.collname FROM pg_collation AS co WHERE co.oid = a.attcollation),
                 'storage ' || a.attstorage::text, 'privileges ' || pg_temp.acl_text(a.attacl))
  FROM rels AS c
  JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_attrdef AS ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
 WHERE c.relkind IN ('r', 'p', 'v')
UNION ALL
SELECT 'constraint', co.conrelid::regclass || ' ' || co.conname, pg_get_constraintdef(co.oid)
  FROM pg_constraint AS co, ns WHERE co.connamespace = ns.oid
   -- NOT NULL is compared with the columns; PostgreSQL 18 also makes it a
   -- constraint row, left out for one description on every version
   AND co.contype <> 'n'
UNION ALL
SELECT 'index', i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
  FROM pg_index AS i JOIN rels AS c ON c.oid = i.indrelid
UNION ALL
SELECT 'sequence', s.seqrelid::regclass::text,
       concat_ws(' | ', format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmax, s.seqmin,
                 s.seqcache, s.seqcycle,
                 (SELECT string_agg(pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid)
                                    || ' ' || d.deptype::text, ', ' ORDER BY 1)
                    FROM pg_depend AS d
                   WHERE d.classid = 'pg_class'::regclass AND d.objid = s.seqrelid
                     AND d.refclassid = 'pg_class'::regclass))
  FROM pg_sequence AS s JOIN rels AS c ON c.oid = s.seqrelid
UNION ALL
SELECT 'view', c.oid::regclass::text, pg_get_viewdef(c.oid, true) FROM rels AS c WHERE c.relkind = 'v'
UNION ALL
SELECT 'trigger', t.tgrelid::regclass || ' ' || t.tgname, pg_get_triggerdef(t.oid, true) || ' ' || t.tgenabled::text
  FROM pg_trigger AS t JOIN rels AS c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal
UNION ALL
SELECT 'function', p.oid::regprocedure::text,
       concat_ws(' | ', pg_get_userbyid(p.proowner),
                 pg_temp.acl_text(coalesce(p.proacl, acldefault('f', p.proowner))),
                 pg_get_functiondef(p.oid))
  FROM procs AS p
UNION ALL
SELECT 'initial privileges', pg_describe_object(i.classoid, i.objoid, i.objsubid),
       i.privtype::text || ' ' || coalesce(pg_temp.acl_text(i.initprivs), '')
  FROM pg_init_privs AS i
 WHERE (i.classoid, i.objoid) IN (SELECT m.classid, m.objid FROM members AS m)
    OR (i.classoid, i.objoid) IN (SELECT 'pg_namespace'::regclass, ns.oid FROM ns)
UNION ALL
SELECT 'comment', pg_describe_object(d.classoid, d.objoid, d.objsubid), d.description
  FROM pg_description AS d
 WHERE (d.classoid, d.objoid) IN (SELECT m.classid, m.objid FROM members AS m)
UNION ALL
SELECT 'dumped table', c.rel::regclass::text, c.condition
  FROM ext, unnest(ext.extconfig, ext.extcondition) AS c(rel, condition)
UNION ALL
SELECT 'role', r.rolname::text,
       concat_ws(' | ', r.rolcanlogin, r.rolinherit, shobj_description(r.oid, 'pg_authid'))
  FROM pg_roles AS r WHERE r.rolname = 'eventpipe_admin';

-- Both start from nothing: no schema eventpipe left by the suites before
-- (DROP EXTENSION leaves the schema that CREATE EXTENSION made).
DROP SCHEMA eventpipe;
CREATE EXTENSION eventpipe;
SELECT extversion = default_version AS at_default_version
  FROM pg_extension, pg_available_extensions WHERE extname = 'eventpipe' AND name = extname;
CREATE TEMP TABLE fresh AS SELECT * FROM eventpipe_catalog;
DROP EXTENSION eventpipe;
DROP SCHEMA eventpipe;

-- (updated with an event pending, as a database would be)
CREATE EXTENSION eventpipe VERSION '0.1';
SELECT eventpipe.publish('order-events', 'order-3', '{"n": 3}') IS NOT NULL AS published;
ALTER EXTENSION eventpipe UPDATE;
SELECT topic, key, payload FROM eventpipe.outbox WHERE key = 'order-3';
CREATE TEMP TABLE updated AS SELECT * FROM eventpipe_catalog;

-- what each describes (so that an empty difference is not an empty
-- description) ...
SELECT kind, count(*) FROM fresh GROUP BY kind ORDER BY kind;
-- ... and the differences: none
(SELECT 'fresh only' AS side, * FROM fresh EXCEPT SELECT 'fresh only', * FROM updated)
UNION ALL
(SELECT 'updated only', * FROM updated EXCEPT SELECT 'updated only', * FROM fresh)
ORDER BY object, kind, side;

DROP EXTENSION eventpipe;
DROP SCHEMA eventpipe;

-- A trigger that a role attached to its own table, with a trigger function
-- of the extension's own table that 0.3 let PUBLIC execute, outlives the
-- update and its REVOKE: the function now refuses to fire on any table but
-- its own, where it used to read that table's second column as text[].
CREATE EXTENSION eventpipe VERSION '0.3';
CREATE ROLE regress_upgrade_intruder;
GRANT USAGE ON SCHEMA eventpipe TO regress_upgrade_intruder;
CREATE SCHEMA upgrade_intruder AUTHORIZATION regress_upgrade_intruder;
SET ROLE regress_upgrade_intruder;
CREATE TABLE upgrade_intruder.t (a integer, b bigint);
CREATE TRIGGER planted BEFORE INSERT ON upgrade_intruder.t
    FOR EACH ROW EXECUTE FUNCTION eventpipe.subscriptions_changed();
RESET ROLE;
ALTER EXTENSION eventpipe UPDATE;
SET ROLE regress_upgrade_intruder;
INSERT INTO upgrade_intruder.t VALUES (1, 12345);
RESET ROLE;
DROP SCHEMA upgrade_intruder CASCADE;
DROP EXTENSION eventpipe;
DROP SCHEMA eventpipe;
DROP ROLE regress_upgrade_intruder;

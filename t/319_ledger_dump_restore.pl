# pg_dump carries the dedup ledger: its daily partitions are not members of
# the extension, so the dump holds them as tables of their own (CREATE
# TABLE, ATTACH PARTITION, their rows and their indexes).  A database
# dumped with ledger rows in two days' partitions is restored into another
# one with ON_ERROR_STOP (no statement of the dump may fail), and the
# restored ledger is the same: partitions, rows, runs and indexes; the
# upkeep carries on there, and DROP EXTENSION takes the partitions along.
# No Kafka: no subscription's worker needs to run for this.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use EventpipeTest;

my $node = new_node('dump');
$node->safe_psql('postgres', 'CREATE DATABASE source');
$node->safe_psql('postgres', 'CREATE DATABASE restored');

$node->safe_psql('source', q{
CREATE EXTENSION eventpipe;
CREATE TABLE shop_metrics (product text PRIMARY KEY, views bigint);
SELECT eventpipe.subscribe('shop', ARRAY['shop-events']);
SELECT eventpipe.add_metric('shop', 'ProductViewed', 'shop_metrics', 'product', 'views');
-- today's partitions and three days ago's
SELECT eventpipe.ledger_upkeep(7 * 86400);
SELECT eventpipe.ledger_make_partitions(d, d) FROM (SELECT (now() AT TIME ZONE 'UTC')::date - 3) AS x(d);
INSERT INTO eventpipe.event_handled (subscription_id, event_text, handled_at)
SELECT s.id, 'order-' || g, now() - (g % 2) * interval '3 days'
  FROM eventpipe.subscriptions AS s, generate_series(1, 10) AS g;
INSERT INTO eventpipe.event_handled (subscription_id, event_uuid)
SELECT s.id, '5f0c2a9e-8b1d-4c3e-a7f6-0d9e8c7b6a51' FROM eventpipe.subscriptions AS s;
INSERT INTO eventpipe.event_handled_runs (subscription_id, bucket, ids, handled_at)
SELECT s.id, 17336559482, '\x0193a5f26c017a0080000000000000010193a5f26c017a008000000000000002',
       now() - interval '3 days'
  FROM eventpipe.subscriptions AS s;
});

# the ledger as one text: partitions with their bounds, indexes, rows, runs
my $ledger_sql = q{
SELECT string_agg(line, E'\n' ORDER BY line) FROM (
  SELECT 'partition ' || c.relname || ' ' || pg_get_expr(c.relpartbound, c.oid) AS line
    FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
   WHERE i.inhparent IN ('eventpipe.event_handled'::regclass, 'eventpipe.event_handled_runs'::regclass)
  UNION ALL
  SELECT 'index ' || pg_get_indexdef(x.indexrelid)
    FROM pg_index AS x JOIN pg_class AS c ON c.oid = x.indrelid
   WHERE c.relname LIKE 'event_handled%' AND c.relnamespace = 'eventpipe'::regnamespace
  UNION ALL
  SELECT 'row ' || concat_ws(' ', h.tableoid::regclass, s.name, h.event_text, h.event_uuid)
    FROM eventpipe.event_handled AS h JOIN eventpipe.subscriptions AS s ON s.id = h.subscription_id
  UNION ALL
  SELECT 'run ' || concat_ws(' ', r.tableoid::regclass, s.name, r.bucket, encode(r.ids, 'hex'))
    FROM eventpipe.event_handled_runs AS r JOIN eventpipe.subscriptions AS s ON s.id = r.subscription_id
) AS ledger};
my $before = $node->safe_psql('source', $ledger_sql);
like($before, qr/_uuid.*WHERE \(event_uuid IS NOT NULL\)/, 'the source ledger has its partitions\' indexes');
is(scalar(() = $before =~ /^row /mg), 11, 'the source ledger holds 11 rows');
is(scalar(() = $before =~ /^run /mg), 1, 'and a run');

my $dump = $node->basedir . '/source.sql';
$node->command_ok([ 'pg_dump', '--no-owner', '-d', $node->connstr('source'), '-f', $dump ], 'pg_dump of the source');
$node->command_ok(
	[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('restored'), '-f', $dump ],
	'the dump restores with ON_ERROR_STOP, no statement failing');

is($node->safe_psql('restored', $ledger_sql), $before,
	'the restored ledger has the same partitions, indexes, rows and runs');
is($node->safe_psql('restored', q{
	SELECT count(*) FROM pg_inherits AS i
	  JOIN pg_depend AS d ON d.classid = 'pg_class'::regclass AND d.objid = i.inhrelid AND d.deptype = 'e'
	 WHERE i.inhparent IN ('eventpipe.event_handled'::regclass, 'eventpipe.event_handled_runs'::regclass)}),
	0, 'no restored partition is a member of the extension');
is($node->safe_psql('restored', q{SELECT name FROM eventpipe.subscriptions}), 'shop',
	'the subscription came along');
ok($node->safe_psql('restored',
		q{SELECT eventpipe.ledger_upkeep(7 * 86400) >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '3 days'}) eq 't',
	'the upkeep carries on in the restored database');

$node->safe_psql('restored', 'DROP EXTENSION eventpipe CASCADE');
is($node->safe_psql('restored', q{SELECT count(*) FROM pg_class WHERE relname LIKE 'event_handled%'}), 0,
	'DROP EXTENSION takes the ledger partitions along');

$node->stop;
done_testing();

# t/203_snapshot_worker.pl: what the snapshot worker does with a request,
# read from the outbox (no Kafka: the relay keeps every event there).
#  - a condition selects the rows emitted, evaluated by the worker;
#  - a composite primary key (text, integer) read in chunks of 7 resumes
#    after each chunk's last key: every row once; so is a table with a
#    column named t (the alias of the chunk's statement);
#  - the worker reads as the role that asked: a function that role may not
#    execute fails the snapshot, with the error; so does a condition that
#    raises one at run time, the chunk it raised in rolled back and the
#    chunks before it kept;
#  - a snapshot waiting for the relay (snapshot_max_backlog) can be
#    cancelled; one whose table is no longer captured fails;
#  - the worker leaves when no snapshot runs.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use EventpipeTest;
use FaultTest;

my $node = new_node('main', conf => 'eventpipe.snapshot_chunk_rows = 7');
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION eventpipe;
CREATE ROLE snap_owner LOGIN;
GRANT USAGE ON SCHEMA eventpipe TO snap_owner;
GRANT EXECUTE ON FUNCTION eventpipe.capture(regclass, text, text[], text, boolean, boolean),
                          eventpipe.uncapture(regclass),
                          eventpipe.snapshot(regclass, text),
                          eventpipe.cancel_snapshot(bigint) TO snap_owner;
CREATE TABLE things (id integer PRIMARY KEY, kind text NOT NULL, n integer NOT NULL);
INSERT INTO things SELECT g, CASE WHEN g % 3 = 0 THEN 'b' ELSE 'a' END, g % 40 FROM generate_series(1, 300) g;
ALTER TABLE things OWNER TO snap_owner;
CREATE TABLE pairs (a text, b integer, note text, PRIMARY KEY (a, b));
INSERT INTO pairs SELECT 'k ' || (g % 9) || ' "x"', g, 'n' || g FROM generate_series(1, 100) g;
ALTER TABLE pairs OWNER TO snap_owner;
-- a function snap_owner may not execute
CREATE FUNCTION private_check(integer) RETURNS boolean IMMUTABLE LANGUAGE sql AS 'SELECT $1 > 0';
REVOKE EXECUTE ON FUNCTION private_check(integer) FROM PUBLIC;
});

sub as_owner
{
	return $node->safe_psql('postgres', $_[0], extra_params => [ '-U', 'snap_owner' ]);
}

sub wait_ended
{
	my ($id) = @_;
	wait_until(
		sub {
			$node->safe_psql('postgres', "SELECT state FROM eventpipe.snapshots WHERE id = $id") ne
			  'running';
		},
		60);
	return split /\|/,
	  $node->safe_psql('postgres',
		"SELECT state, rows_emitted, coalesce(error, ''), requested_by FROM eventpipe.snapshots WHERE id = $id");
}

my $log_start = log_position($node);

# ---- a condition ---------------------------------------------------------

as_owner("SELECT eventpipe.capture('things', 'things-topic')");
my $id = as_owner("SELECT eventpipe.snapshot('things', 'kind = ''b'' AND n > 10')");
my ($state, $emitted, $error, $who) = wait_ended($id);
my $matching = $node->safe_psql('postgres', "SELECT count(*) FROM things WHERE kind = 'b' AND n > 10");
is($state, 'done', 'the snapshot with a condition is done') or diag $error;
is($emitted, $matching, "it emitted the $matching matching rows");
is($who, 'snap_owner', 'as asked for by snap_owner');
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FROM eventpipe.outbox AS o JOIN things AS t ON o.key = t.id::text
 WHERE o.event_type = 'things.read' AND o.topic = 'things-topic'
   AND o.payload->>'op' = 'read' AND o.payload->'before' = 'null'
   AND o.payload->'after' = to_jsonb(t) AND t.kind = 'b' AND t.n > 10}),
	$matching,
	'each matching row has its read event: key, type, topic, images');
is($node->safe_psql('postgres', "SELECT count(*) FROM eventpipe.outbox WHERE event_type = 'things.read'"),
	$matching, 'and no other row has one');

# ---- a composite key, 7 rows a chunk ------------------------------------

as_owner("SELECT eventpipe.capture('pairs', 'pairs-topic')");
$id = as_owner("SELECT eventpipe.snapshot('pairs')");
($state, $emitted) = wait_ended($id);
is($state, 'done', 'the snapshot of a table with a composite key is done');
is($emitted, 100, 'with its 100 rows');
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FROM (SELECT key FROM eventpipe.outbox WHERE event_type = 'pairs.read'
                      GROUP BY key HAVING count(*) = 1) AS once
  JOIN pairs AS p ON once.key::jsonb = jsonb_build_array(p.a, p.b::text)}),
	100,
	'every row read once across the chunks (resumed after each chunk\'s last key)');

# ---- a column named t ----------------------------------------------------
# The chunk's statement reads each whole row of the table through the alias
# t: a column of that name must not be taken for the row (its value read as
# a row crashed the worker, and the server with it, at every restart).

$node->safe_psql('postgres', q{
CREATE TABLE named_t (id integer PRIMARY KEY, t bytea NOT NULL);
INSERT INTO named_t SELECT g, convert_to('row ' || g, 'UTF8') FROM generate_series(1, 10) g;
ALTER TABLE named_t OWNER TO snap_owner;
});
as_owner("SELECT eventpipe.capture('named_t', 'named-t-topic')");
$id = as_owner("SELECT eventpipe.snapshot('named_t')");
($state, $emitted, $error) = wait_ended($id);
is("$state $emitted", 'done 10', 'a table with a column named t is read whole, in chunks') or diag $error;
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FROM eventpipe.outbox AS o JOIN named_t AS n ON o.key = n.id::text
 WHERE o.event_type = 'named_t.read' AND o.payload->'after' = to_jsonb(n)}),
	10, 'each of its rows has its read event, with its image');

# ---- the rights of the role that asked ----------------------------------

$id = as_owner("SELECT eventpipe.snapshot('things', 'private_check(n)')");
($state, $emitted, $error) = wait_ended($id);
is($state, 'failed', 'a condition calling a function its role may not execute fails');
like($error, qr/permission denied for function private_check/, 'with the error') or diag $error;

$id = as_owner("SELECT eventpipe.snapshot('things', 'n / (n - n) > 0')");
($state, $emitted, $error) = wait_ended($id);
is($state, 'failed', 'a condition that raises an error fails the snapshot');
like($error, qr/division by zero/, 'with the error');
is($emitted, 0, 'having emitted nothing (the error came on its first row)');

# An error in the second chunk (ids 8 to 14; 8 and 9 pass the condition
# before id 10 divides by zero): the first chunk stays emitted, nothing of
# the second does.
my $things_read = "SELECT count(*) FROM eventpipe.outbox WHERE event_type = 'things.read'";
my $read_before = $node->safe_psql('postgres', $things_read);
$id = as_owner("SELECT eventpipe.snapshot('things', '1 / (id - 10) >= -1')");
($state, $emitted, $error) = wait_ended($id);
is($state, 'failed', 'a condition that raises an error in the second chunk fails the snapshot');
like($error, qr/division by zero/, 'with the error');
is($emitted, 7, 'having emitted its first chunk of 7 rows');
is($node->safe_psql('postgres', $things_read) - $read_before, 7,
	'the outbox holds those 7 and nothing of the chunk the error rolled back');

# ---- waiting for the relay: cancelled, or the table uncaptured ----------

my $backlog = $node->safe_psql('postgres',
	'SELECT max(id) - min(id) FROM eventpipe.outbox');
$node->safe_psql('postgres',
	"ALTER SYSTEM SET eventpipe.snapshot_max_backlog = 10; SELECT pg_reload_conf()");
my $waiting = as_owner("SELECT eventpipe.snapshot('things')");
my $doomed  = as_owner("SELECT eventpipe.snapshot('pairs')");
sleep 2;
is( $node->safe_psql('postgres',
		"SELECT state || ' ' || rows_emitted FROM eventpipe.snapshots WHERE id = $waiting"),
	'running 0',
	"with $backlog ids in the outbox (limit 10), the snapshot waits for the relay");
is(as_owner("SELECT eventpipe.cancel_snapshot($waiting)"), 't', 'cancel_snapshot() stops it');
as_owner("SELECT eventpipe.uncapture('pairs')");
$node->safe_psql('postgres',
	"ALTER SYSTEM RESET eventpipe.snapshot_max_backlog; SELECT pg_reload_conf()");
($state, $emitted, $error) = wait_ended($doomed);
is($state, 'failed', 'the snapshot of a table no longer captured fails');
like($error, qr/no longer captured/, 'saying so');
is( $node->safe_psql('postgres',
		"SELECT state || ' ' || rows_emitted FROM eventpipe.snapshots WHERE id = $waiting"),
	'cancelled 0', 'the cancelled one emitted nothing');

ok( wait_until(
		sub {
			scalar log_matches($node, $log_start,
				qr/eventpipe snapshot worker stopping: no snapshot is running/);
		},
		30),
	'the worker leaves once no snapshot runs');

done_testing();

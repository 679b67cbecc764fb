# t/006_database_settings.pl: the database's own settings, which its owner
# may change with ALTER DATABASE ... SET, do not reach what the workers'
# work assumes.  With default_transaction_isolation = serializable,
# default_transaction_read_only = on and lock_timeout = 1ms set on the
# database, and the server restarted so that every worker connects under
# them:
#  - the relay sends every event published, and the outbox empties;
#  - a subscription applies every message, exactly;
#  - a snapshot of a captured table, 300 rows read in chunks of 10 while a
#    writer updates some of them, is done, 300 rows emitted;
#  - a snapshot that resumes in a worker connected under another DateStyle
#    reads its last key back as it was written.
# Only default_transaction_read_only makes the workers fail for good (the
# subscription and the snapshot never finish without the workers' own
# settings).  Under the other two, a snapshot's chunk that meets a row a
# writer changed, or waits for one, fails and is tried again after a
# back-off: slower, not stopped, which this test does not measure.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use EventpipeTest;
use ConsumerTest;

my $kafka     = start_kafka();
my $bootstrap = $kafka->{bootstrap};
my $node      = new_node('main', bootstrap => $bootstrap, conf => 'eventpipe.snapshot_chunk_rows = 10');
my $db        = 'postgres';
my $topic     = 't006.events';
my $consumed  = 't006.consumed';
ensure_topic($bootstrap, $consumed);

# The test's own sessions set the defaults back for themselves.
my $own = q{SET default_transaction_isolation = 'read committed'; SET default_transaction_read_only = off;
SET lock_timeout = 0;};
sub q1 { return $node->safe_psql($db, $own . $_[0]) }

q1(q{
CREATE EXTENSION eventpipe;
CREATE TABLE hits (k text PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
CREATE TABLE items (id integer PRIMARY KEY, n integer NOT NULL);
INSERT INTO items SELECT g, 0 FROM generate_series(1, 300) g;
SELECT eventpipe.capture('items', 't006.items');
ALTER DATABASE postgres SET default_transaction_isolation = 'serializable';
ALTER DATABASE postgres SET default_transaction_read_only = on;
ALTER DATABASE postgres SET lock_timeout = '1ms';
});
$node->restart;
like($node->safe_psql($db, 'SHOW default_transaction_read_only; SHOW default_transaction_isolation; SHOW lock_timeout'),
	qr/^on\nserializable\n1ms$/, 'a new session of the database gets its settings');

# ---- the relay ---------------------------------------------------------------

my @ids = split /\n/, q1(qq{SELECT eventpipe.publish('$topic', 'k' || g % 7, jsonb_build_object('g', g)) FROM generate_series(1, 200) g});
is(scalar @ids, 200, '200 events published');
ok(ids_on_topic($bootstrap, $topic, \@ids, 60), 'the relay sent every one');
ok(wait_until(sub { outbox_count($node) == 0 }, 60), 'and the outbox emptied');

# ---- a subscription ------------------------------------------------------------

q1(qq{SELECT eventpipe.subscribe('t006', ARRAY['$consumed'], dedup_field => 'event_id');
      SELECT eventpipe.add_metric('t006', 'Hit', 'hits', 'k', 'n');});
produce_messages($bootstrap, $consumed,
	[ map { { key => "m$_", value => qq({"type":"Hit","event_id":"m$_","k":"k@{[ $_ % 3 ]}"}) } } 1 .. 150 ]);
ok(wait_caught_up($node, $db, 't006', $bootstrap, [$consumed], 90), 'the subscription consumed its topic');
is(q1(q{SELECT string_agg(k || ':' || n, ',' ORDER BY k) FROM hits}), 'k0:50,k1:50,k2:50',
	'every message applied once');
is(q1("SELECT count(*) FROM eventpipe.consumer_dead_letters"), '0', 'none dead-lettered');

# ---- a snapshot under a writer -------------------------------------------------------

my $writer = $node->background_psql($db);
$writer->query_safe($own);
my $id = q1(q{SELECT eventpipe.snapshot('items')});
for my $round (1 .. 20)
{
	$writer->query_safe("UPDATE items SET n = n + 1 WHERE id % 20 = $round % 20");
}
ok(wait_until(sub { q1("SELECT state FROM eventpipe.snapshots WHERE id = $id") ne 'running' }, 90),
	'the snapshot ended');
is(q1("SELECT state || ' ' || rows_emitted || ' ' || coalesce(error, '') FROM eventpipe.snapshots WHERE id = $id"),
	'done 300 ', 'it is done, its 300 rows read');
$writer->quit;

# The keys of a snapshot's read events on its table's topic.
sub read_keys
{
	my ($table) = @_;
	my $msgs = read_topic($bootstrap, "t006.$table", timeout => 30);
	my %keys = map { ($_->{headers}{ce_type} // '') eq "$table.read" ? ($_->{key} => 1) : () } @$msgs;
	return scalar keys %keys;
}
ok(wait_until(sub { read_keys('items') == 300 }, 60), 'each of the 300 rows has its read event on the topic');

# ---- a snapshot's resume point, DateStyle changed between its chunks ---------------
# The first chunk of 40 dates runs in a worker that connected under
# DateStyle 'SQL, DMY', and the snapshot then waits for the paused relay;
# the next chunks run in one that connected under 'ISO, MDY'.  A last key
# kept as 10/01/2026 (the tenth of January) would be read back as the first
# of October, and the 30 rows after it skipped.
ok(wait_until(sub { outbox_count($node) == 0 }, 60), 'the outbox is empty');
q1(q{
CREATE TABLE days (d date PRIMARY KEY);
INSERT INTO days SELECT DATE '2026-01-01' + g FROM generate_series(0, 39) g;
SELECT eventpipe.capture('days', 't006.days');
SELECT eventpipe.pause_relay();
ALTER DATABASE postgres SET DateStyle = 'SQL, DMY';
ALTER SYSTEM SET eventpipe.snapshot_max_backlog = 5;
});
$node->restart;
my $days = q1(q{SELECT eventpipe.snapshot('days')});
ok(wait_until(sub { q1("SELECT rows_emitted FROM eventpipe.snapshots WHERE id = $days") eq '10' }, 60),
	'the first chunk of the dates is emitted');
is(q1("SELECT last_key FROM eventpipe.table_snapshots WHERE id = $days"), '{2026-01-10}',
	'its last key is kept in ISO form');
q1(q{ALTER DATABASE postgres SET DateStyle = 'ISO, MDY'; ALTER SYSTEM RESET eventpipe.snapshot_max_backlog;});
$node->restart;
q1(q{SELECT eventpipe.resume_relay()});
ok(wait_until(sub { q1("SELECT state FROM eventpipe.snapshots WHERE id = $days") ne 'running' }, 90),
	'the snapshot of the dates ended');
is(q1("SELECT state || ' ' || rows_emitted || ' ' || coalesce(error, '') FROM eventpipe.snapshots WHERE id = $days"),
	'done 40 ', 'it is done, its 40 rows read once each');
ok(wait_until(sub { read_keys('days') == 40 }, 60), 'each of the 40 dates has its read event on the topic');

$node->stop;
ok(stop_kafka($kafka), 'Kafka stopped');
done_testing();

# t/107_async_commit_durability.pl: an event whose transaction committed
# asynchronously (synchronous_commit = off) leaves for Kafka only once that
# commit is on disk, so a crash cannot erase a transaction whose event Kafka
# already has.
#
# The WAL writer is made slow (wal_writer_delay = 10 s, and no flush for
# the amount written: at wal_writer_flush_after = 0 it would flush each
# asynchronous commit at once): an asynchronous commit then stays unflushed
# for seconds unless the relay flushes it, which the test checks first,
# with the relay paused.  Each round commits an order and its event that
# way, stops the server in immediate mode as soon as Kafka has the event,
# and starts it again.  At the end, every event on the topic must have its
# order in the database, and every order its event on the topic.  Without
# the relay's flush the rounds lose their order; with it, none may.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use EventpipeTest;

my $rounds = 4;
my $topic  = 't107.orders';

my $kafka = start_kafka();
my $node  = new_node('main',
	bootstrap => $kafka->{bootstrap},
	conf      => join("\n",
		'wal_writer_delay = 10s',
		'wal_writer_flush_after = 1GB',
		'autovacuum = off',
		'checkpoint_timeout = 1h'));
$node->safe_psql('postgres', 'CREATE EXTENSION eventpipe');
$node->safe_psql('postgres', 'CREATE TABLE t107_orders (id int PRIMARY KEY)');
ok(wait_for_relay_state($node, 'idle'), 'relay worker is idle');

# The premise: with nobody to flush it, an asynchronous commit stays
# unflushed (a WAL writer's turn or the background writer's snapshot record
# landing in between would flush it: both come every 10 to 15 s).
$node->safe_psql('postgres', 'SELECT eventpipe.pause_relay()');
ok(wait_for_relay_state($node, 'paused'), 'relay paused');
is( $node->safe_psql('postgres', q{
SET synchronous_commit = off;
INSERT INTO t107_orders VALUES (0);
SELECT pg_current_wal_flush_lsn() < pg_current_wal_insert_lsn();}),
	't', 'an asynchronous commit is left unflushed');
$node->safe_psql('postgres', 'SELECT eventpipe.resume_relay()');

for my $round (1 .. $rounds)
{
	# the previous round's delete may have been lost with the stop: its
	# event is sent again first, and must not pass for this round's
	ok(wait_until(sub { outbox_count($node) == 0 }, 60), "round $round: the outbox is empty");
	my $sent = relay_stat($node, 'events_sent') // 0;
	$node->safe_psql('postgres', qq{
SET synchronous_commit = off;
BEGIN;
INSERT INTO t107_orders VALUES ($round);
SELECT eventpipe.publish('$topic', 'orders', jsonb_build_object('order', $round));
COMMIT;});
	ok(wait_until(sub { (relay_stat($node, 'events_sent') // 0) > $sent }, 60),
		"round $round: Kafka acknowledged the event");
	$node->stop('immediate');
	$node->start;
	is($node->safe_psql('postgres', "SELECT count(*) FROM t107_orders WHERE id = $round"),
		1, "round $round: its order survived the immediate stop");
}

my $msgs = consume_all($kafka->{bootstrap}, $topic, $rounds, 60);
my %on_kafka = map { ($_->{value}{order} // '?') => 1 } @$msgs;
my %in_db = map { $_ => 1 } split /\n/,
  $node->safe_psql('postgres', 'SELECT id FROM t107_orders WHERE id > 0 ORDER BY id');
is_deeply([ sort keys %on_kafka ], [ sort keys %in_db ],
	'every event on Kafka has its order in the database, and every order its event');

done_testing();

# t/602_many_databases_faults.pl: the faults of t/101 and t/102 with two
# databases served at once.  shop and billing each publish a stream to a
# topic of their own, and each consumes the other's topic into a metrics
# table (views per key), while:
#  (a) the broker is killed with SIGKILL, stays down for a while, and
#      starts again;
#  (b) PostgreSQL is stopped in immediate mode mid-stream, with a backlog
#      being relayed, and started again.
# Then, for each database: every committed event is on its topic, each
# key's events in publish order (duplicates allowed: the relay runs without
# exactly once); the other database counted each event exactly once; and
# each database's workers run again, its own and only its own.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

use EventpipeTest;
use FaultTest;
use ConsumerTest;

my $kafka     = start_kafka();
my $bootstrap = $kafka->{bootstrap};
# small batches, as in t/102: the stop must land while a backlog is relayed
my $node = new_node('main', bootstrap => $bootstrap, conf => 'eventpipe.relay_batch_size = 20');
my %reads     = (shop => 'billing', billing => 'shop');    # database => whose topic it consumes

sub topic_of { return "t602.$_[0]" }

for my $db (sort keys %reads)
{
	ensure_topic($bootstrap, topic_of($db));
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, 'CREATE EXTENSION eventpipe');
	ft_prepare($node, $db, type => 'ProductViewed');
	$node->safe_psql($db, metrics_sql());
}
for my $db (sort keys %reads)
{
	# ft_publish_round()'s payload: {"type": "ProductViewed", "key": k, "seq": n}
	$node->safe_psql($db, sprintf(q{
BEGIN;
SELECT eventpipe.subscribe('views', ARRAY[%s], group_id => 't602-%s');
SELECT eventpipe.add_metric('views', 'ProductViewed', 'product_metrics', 'key', 'views');
COMMIT;}, sql_quote(topic_of($reads{$db})), $db));
	ok(wait_consumer_pid($node, $db, 'views', timeout => 30), "$db: its consumer worker runs");
	ok(wait_for_relay_state($node, 'idle', db => $db, timeout => 30), "$db: its relay is idle");
}

sub start_streams
{
	my ($round) = @_;
	return [
		map {
			start_publishers($node,
				db       => $_,
				name     => "$_$round",
				topic    => topic_of($_),
				sessions => 2,
				keys     => 3,
				per_txn  => 3,
				sleep_ms => 10)
		} sort keys %reads
	];
}

sub sent_by { return relay_stat($node, 'events_sent', db => $_[0]) // 0 }

# Wait until each database's relay has sent $more events beyond %$from.
sub each_relay_sends
{
	my ($from, $more, $timeout) = @_;
	return wait_until(sub { !grep { sent_by($_) < $from->{$_} + $more } keys %$from }, $timeout);
}

# ---- (a) the broker killed -------------------------------------------------

my $streams = start_streams(1);
my %sent = map { $_ => 0 } keys %reads;
ok(each_relay_sends(\%sent, 200, 60), '(a) both relays deliver their streams');
ok(kill_kafka_node($kafka, 1), '(a) Kafka killed (SIGKILL) mid-stream');
my $t_kill = time();
my %waiting;
while (time() - $t_kill < 8)
{
	for my $db (keys %reads)
	{
		$waiting{$db} = 1 if relay_stat($node, 'state', db => $db) eq 'waiting for broker';
	}
	usleep(250_000);
}
is_deeply([ sort keys %waiting ], [ sort keys %reads ],
	'(a) both relays said "waiting for broker" during the outage');
ok(start_kafka_node($kafka, 1), '(a) Kafka node 1 started again');
%sent = map { $_ => sent_by($_) } keys %reads;
ok(each_relay_sends(\%sent, 200, 90), '(a) both relays deliver again');
is(scalar(grep { stop_publishers($_) == 2 } @$streams), 2, '(a) the publishing sessions ended normally');

# ---- (b) PostgreSQL stopped in immediate mode --------------------------------

$streams = start_streams(2);
%sent = map { $_ => sent_by($_) } keys %reads;
ok(each_relay_sends(\%sent, 200, 60), '(b) both relays deliver their streams');
# a backlog on top, so that the stop lands on batches in flight: committed
# while the relays are paused, so that neither clears its own before the
# other's is in
for my $db (sort keys %reads)
{
	$node->safe_psql($db, 'SELECT eventpipe.pause_relay()');
	ok(wait_for_relay_state($node, 'paused', db => $db, timeout => 30), "(b) $db: relay paused");
	bulk_publish($node, topic_of($db), [ map { "$db-bulk-k$_" } 0 .. 9 ], 1000, $db);
}
%sent = map { $_ => sent_by($_) } keys %reads;
$node->safe_psql($_, 'SELECT eventpipe.resume_relay()') for sort keys %reads;
ok(each_relay_sends(\%sent, 500, 60), '(b) both relays are into a backlog of 10,000');
# Resumed relays start unevenly under load (each builds its producer anew):
# one may clear its backlog before the other has sent 500.  Then every
# relay short of a few thousand rows gets another backlog, committed while
# it runs, until both are inside one (the streams alone keep a few rows in
# each outbox: those do not count).
my $backlog_floor = 1000;
sub backlogs { return map { $_ => relay_stat($node, 'backlog', db => $_) } keys %reads }
my %backlog = backlogs();
for my $top_up (1 .. 5)
{
	last unless grep { $backlog{$_} < $backlog_floor } keys %backlog;
	my @low = grep { $backlog{$_} < 5 * $backlog_floor } sort keys %reads;
	note "(b) topping up the backlog of @low";
	%sent = map { $_ => sent_by($_) } @low;
	for my $db (@low)
	{
		bulk_publish($node, topic_of($db), [ map { "$db-bulk-k$_" } 0 .. 9 ], 1000, $db);
	}
	last unless each_relay_sends(\%sent, 200, 60);
	%backlog = backlogs();
}
note '(b) stopping with backlogs ' . join(', ', map { "$_ $backlog{$_}" } sort keys %backlog);
is(scalar(grep { $_ >= $backlog_floor } values %backlog), 2, '(b) both relays had a backlog when the server stopped');
$node->stop('immediate');
reap_publishers($_, 30) for @$streams;
$node->start;
for my $db (sort keys %reads)
{
	ok(wait_for_relay_state($node, 'idle', db => $db, timeout => 60),
		"(b) $db: a relay worker runs again and gets through the backlog");
	ok(wait_consumer_pid($node, $db, 'views', timeout => 60), "(b) $db: a consumer worker runs again");
}
# a little more after the restart, then stop
$streams = start_streams(3);
%sent = map { $_ => sent_by($_) } keys %reads;
ok(each_relay_sends(\%sent, 100, 60), '(b) both relays deliver after the restart');
is(scalar(grep { stop_publishers($_) == 2 } @$streams), 2, '(b) the last publishing sessions ended normally');

# ---- what arrived ---------------------------------------------------------------

for my $db (sort keys %reads)
{
	ok(wait_until(sub { outbox_count($node, $db) == 0 }, 120), "$db: the outbox drained");
	my $ledger = ledger($node, topic_of($db), $db);
	note "$db: " . scalar(@$ledger) . ' events committed';
	check_topic($bootstrap, topic_of($db), $ledger, "$db");
	my $msgs = read_topic($bootstrap, topic_of($db), fast => 1) // [];
	my $foreign = grep { ($_->{headers}{ce_source} // '') ne "/eventpipe/$db" } @$msgs;
	ok(@$msgs > 0 && $foreign == 0, "$db: every message on its topic names it in ce_source")
	  or diag "$foreign of " . scalar(@$msgs) . ' messages name another source';
}
for my $db (sort keys %reads)
{
	my $from = $reads{$db};
	ok(wait_caught_up($node, $db, 'views', $bootstrap, [ topic_of($from) ]),
		"$db: the consumer caught up with $from\'s topic");
	my $committed = $node->safe_psql($from,
		'SELECT string_agg(key || \'=\' || n, \' \' ORDER BY key) FROM'
		  . ' (SELECT key, count(*) AS n FROM ft_ledger GROUP BY key) AS c');
	my $counted = $node->safe_psql($db,
		'SELECT string_agg(product_id || \'=\' || views, \' \' ORDER BY product_id) FROM product_metrics');
	is($counted, $committed, "$db: each of $from\'s committed events counted exactly once");
}
is( $node->safe_psql('shop',
		"SELECT string_agg(database || ':' || coalesce(subscription, 'relay'), ',' ORDER BY database, subscription)"
		  . ' FROM (SELECT database, NULL AS subscription FROM eventpipe.relay_stats_all() WHERE pid IS NOT NULL'
		  . '       UNION ALL SELECT database, subscription FROM eventpipe.consumer_stats_all() WHERE pid IS NOT NULL) AS w'),
	'billing:views,billing:relay,shop:views,shop:relay',
	"each database's relay and consumer run again, once each");
my @crashes = crash_lines($node, 0);
is(scalar @crashes, 0, 'no backend crashed') or diag join("\n", @crashes);

done_testing();

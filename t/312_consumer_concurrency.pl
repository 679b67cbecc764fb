# t/312_consumer_concurrency.pl: three consumer workers update the same
# rows of one metrics table at the same time — two subscriptions with their
# own consumer groups on one topic, a third on another topic — in small
# batches that each touch most of the six products, in varying order (a
# handler sleeping 1 ms per LikeChanged event makes each batch last).
# Nothing may be lost (every worker's effect is there, exactly), no batch
# may deadlock ("deadlock detected" nowhere in the server log), nothing is
# dead-lettered and no worker dies.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use EventpipeTest;
use ConsumerTest;

my $kafka     = start_kafka();
my $bootstrap = $kafka->{bootstrap};
my $node      = new_node('main', bootstrap => $bootstrap,
	conf => 'log_lock_waits = on');
my $db     = 'postgres';
my $shared = 't312.shared';
my $other  = 't312.other';

$node->safe_psql($db, 'CREATE EXTENSION eventpipe');
# A handler that makes each batch last (1 ms per LikeChanged event, about
# 30 ms per batch of 100), so that the workers' transactions overlap.
$node->safe_psql($db, metrics_sql() . q{
CREATE FUNCTION slow_like(payload jsonb, metadata jsonb) RETURNS void
LANGUAGE sql AS $$ SELECT pg_sleep(0.001) $$;
});
ensure_topic($bootstrap, $_) for $shared, $other;

# Everything is on the topics before the workers start, so that they all
# consume at full speed at the same time.
my $ev_shared = make_events(prefix => 's', count => 9000, headered => 150, products => 6,
	customers => 4, seed => 3121);
my $ev_other = make_events(prefix => 'o', count => 6000, headered => 0, products => 6,
	customers => 4, seed => 3122);
produce_events($bootstrap, $shared, $ev_shared);
produce_events($bootstrap, $other,  $ev_other);

my $log_start = log_position($node);
# The three subscriptions and their rules in one transaction: the workers
# start together, and find their rules from the first batch on.
my %topics = (alpha => $shared, beta => $shared, gamma => $other);
my $sql = '';
for my $sub (sort keys %topics)
{
	my $one = subscribe_sql($sub, [ $topics{$sub} ],
		subscribe => "group_id => 't312-$sub', batch_size => 100, dedup_field => 'event_id'",
		customers => 1,
		handlers  => [ [ 'LikeChanged', 'slow_like(jsonb, jsonb)' ] ]);
	$one =~ s/^BEGIN;\n|COMMIT;\n$//g;
	$sql .= $one;
}
$node->safe_psql($db, "BEGIN;\n$sql\nCOMMIT;\n");

my %pids;
for my $sub (sort keys %topics)
{
	$pids{$sub} = wait_consumer_pid($node, $db, $sub, timeout => 30);
	ok($pids{$sub}, "subscription $sub: a worker runs (pid $pids{$sub})");
}
# All three are consuming at once at some moment: the tables grow while
# none of them has caught up yet.
my $overlap = wait_until(
	sub {
		my $busy = 0;
		my $stats = consumer_stats($node, $db);
		for my $sub (sort keys %topics)
		{
			my $applied = ($stats->{$sub} // {})->{events_applied} // 0;
			my $total = $topics{$sub} eq $shared ? @$ev_shared : @$ev_other;
			$busy++ if $applied > 0 && $applied < $total;
		}
		return $busy == 3;
	},
	60);
ok($overlap, 'the three workers were applying events at the same time');

for my $sub (sort keys %topics)
{
	ok(wait_caught_up($node, $db, $sub, $bootstrap, [ $topics{$sub} ], 180),
		"subscription $sub caught up with $topics{$sub}");
}

my $expected = expected_metrics([ $ev_shared, 2 ], [ $ev_other, 1 ]);
check_product_metrics($node, $db, $expected,
	'product_metrics = twice the shared topic + the other topic, exactly');
check_customer_metrics($node, $db, $expected,
	'customer_metrics = twice the shared topic + the other topic, exactly');

my $stats = consumer_stats($node, $db);
for my $sub (sort keys %topics)
{
	my $events = $topics{$sub} eq $shared ? $ev_shared : $ev_other;
	is($stats->{$sub}{events_applied}, scalar @$events,
		"subscription $sub: events_applied = " . scalar @$events);
	is($stats->{$sub}{pid}, $pids{$sub}, "subscription $sub: the same worker throughout");
	cmp_ok($stats->{$sub}{batches}, '>=', @$events / 100,
		"subscription $sub: at most 100 events per batch ($stats->{$sub}{batches} batches)");
}
is($node->safe_psql($db, 'SELECT count(*) FROM eventpipe.consumer_dead_letters'), 0,
	'nothing was dead-lettered');
my @deadlocks = log_matches_re(qr/deadlock detected/);
is(scalar @deadlocks, 0, 'no deadlock in the server log') or diag join("\n", @deadlocks);
my @crashes = crash_lines($node, $log_start, exits => 1);
is(scalar @crashes, 0, 'no worker crashed or exited') or diag join("\n", @crashes);
note 'lock waits logged: ' . scalar(log_matches_re(qr/still waiting for/));

sub log_matches_re
{
	my ($re) = @_;
	return grep { /$re/ } split /\n/, log_since($node, $log_start);
}

stop_node($node);
ok(stop_kafka($kafka), 'Kafka stopped');
done_testing();

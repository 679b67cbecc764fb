# t/311_consumer_crashes.pl: the consumer worker and PostgreSQL die in the
# middle of consuming, for real; the metrics stay exact (nothing lost,
# nothing counted twice) and the worker comes back by itself.
#  (a) the consumer worker killed with SIGKILL (the postmaster then
#      restarts every backend: crash recovery);
#  (b) PostgreSQL stopped in immediate mode, then started again, while the
#      worker consumes new events and a second copy of the old ones;
#  (c) the worker ended with pg_terminate_backend().
# A handler on ProductViewed sleeps 1 ms per event, so that consuming takes
# seconds and each fault lands in the middle of it, and records each view
# under its id (primary key: a second call for one event would fail and be
# dead-lettered, so it cannot go unnoticed).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use EventpipeTest;
use FaultTest qw(wait_server_up log_matches);
use ConsumerTest;

my $kafka     = start_kafka();
my $bootstrap = $kafka->{bootstrap};
my $node      = new_node('main', bootstrap => $bootstrap);
my $db        = 'postgres';
my $topic     = 't311.crash';
my $sub       = 'crash';

$node->safe_psql($db, 'CREATE EXTENSION eventpipe');
$node->safe_psql($db, metrics_sql() . q{
CREATE TABLE views_seen (event_id text PRIMARY KEY, product_id text NOT NULL);
CREATE FUNCTION record_view(payload jsonb, metadata jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(0.001);
    INSERT INTO public.views_seen VALUES (metadata ->> 'id', payload ->> 'product_id');
END
$$;
});
ensure_topic($bootstrap, $topic);
my $log_start = log_position($node);
my $pid = start_subscription($node, $db, $sub, [$topic],
	subscribe => "batch_size => 200, dedup_field => 'event_id'",
	customers => 1,
	handlers  => [ [ 'ProductViewed', 'record_view(jsonb, jsonb)' ] ]);

sub views_seen { return $node->safe_psql($db, 'SELECT count(*) FROM views_seen') }

# Views recorded so far, 0 while the server does not answer.
sub progress
{
	my ($ret, $out) = $node->psql($db, 'SELECT count(*) FROM views_seen');
	return $ret == 0 ? $out : 0;
}

# Produce @$events, then wait until the worker has recorded $from more
# views (but not all of them): the moment to strike.
sub produce_and_get_into
{
	my ($label, $events, $views_total) = @_;
	my $before = progress();
	produce_events($bootstrap, $topic, $events, parallel => 4);
	my $into = wait_until(sub { progress() >= $before + 300 }, 60);
	my $now = progress();
	ok($into && $now < $views_total,
		"$label: the worker is in the middle of consuming ($now of $views_total views recorded)");
	return;
}

# After a fault: the worker back, caught up, the tables exact.
sub check_after
{
	my ($label, $expected, $views_total, $old_pid) = @_;
	my $new = wait_consumer_pid($node, $db, $sub, not => $old_pid, timeout => 60);
	ok($new, "$label: a new consumer worker runs (pid $new), without any help");
	ok(wait_caught_up($node, $db, $sub, $bootstrap, [$topic], 180),
		"$label: the worker caught up with the topic");
	check_product_metrics($node, $db, $expected, "$label: product_metrics exact");
	check_customer_metrics($node, $db, $expected, "$label: customer_metrics exact");
	is(views_seen(), $views_total, "$label: the handler recorded each view once");
	is($node->safe_psql($db, 'SELECT count(*) FROM eventpipe.consumer_dead_letters'), 0,
		"$label: nothing was dead-lettered");
	return $new;
}

# ---- (a) SIGKILL of the consumer worker ----------------------------------

my $ev_a = make_events(prefix => 'a', count => 12000, headered => 200, products => 8, seed => 3111);
my $views_a = sum_events($ev_a, 'ProductViewed');
produce_and_get_into('(a) SIGKILL', $ev_a, $views_a);
my $log_a = log_position($node);
is(kill('KILL', $pid), 1, "(a) consumer worker $pid killed with SIGKILL");
# the postmaster may not have noticed the kill yet: the server still answers
ok(wait_until(sub { scalar(log_matches($node, $log_a, qr/terminated by signal 9/)) }, 60),
	'(a) the server log shows the crash-restart');
ok(wait_server_up($node, 60), '(a) the server is back after its crash-restart');
$pid = check_after('(a) SIGKILL', expected_metrics($ev_a), $views_a, $pid);

# ---- (b) immediate stop, with new events and a second copy of old ones ----

my $ev_b = make_events(prefix => 'b', count => 8000, headered => 100, products => 8, seed => 3112);
my $views_ab = $views_a + sum_events($ev_b, 'ProductViewed');
produce_and_get_into('(b) immediate stop', [ @$ev_b, @$ev_a ], $views_ab);
$node->stop('immediate');
$node->start;
$pid = check_after('(b) immediate stop', expected_metrics([ $ev_a, 1 ], [ $ev_b, 1 ]), $views_ab, $pid);

# ---- (c) pg_terminate_backend ------------------------------------------------

my $ev_c = make_events(prefix => 'c', count => 6000, headered => 0, products => 8, seed => 3113);
my $views_abc = $views_ab + sum_events($ev_c, 'ProductViewed');
produce_and_get_into('(c) pg_terminate_backend', $ev_c, $views_abc);
is($node->safe_psql($db, "SELECT pg_terminate_backend($pid)"), 't', "(c) worker $pid terminated");
$pid = check_after('(c) pg_terminate_backend',
	expected_metrics([ $ev_a, 1 ], [ $ev_b, 1 ], [ $ev_c, 1 ]), $views_abc, $pid);

my @unexpected = grep { !/was terminated by signal 9: Killed/ } crash_lines($node, $log_start);
is(scalar @unexpected, 0, 'no crash other than the SIGKILL of (a)') or diag join("\n", @unexpected);

stop_node($node);
ok(stop_kafka($kafka), 'Kafka stopped');
done_testing();

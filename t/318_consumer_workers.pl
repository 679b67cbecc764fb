# t/318_consumer_workers.pl: several workers of one subscription share a
# 12-partition topic, one dedup ledger and one set of offsets, and apply
# every event exactly once while they are killed, added and removed.
#  - 3 workers; EP_T318_EVENTS events (100,000 by default) are each sent
#    twice, the second copy under another Kafka key, so that an event and
#    its duplicate sit on two partitions, consumed at the same time by two
#    workers;
#  - while they are applied: a worker holding partitions killed with
#    SIGKILL (the postmaster restarts every backend), another ended with
#    pg_terminate_backend(), UPDATE subscriptions SET workers = 5 (added
#    without a restart), PostgreSQL stopped in immediate mode and started
#    again, then workers = 2 (two leave by themselves);
#  - then: the metrics equal the sums of the unique events exactly, each
#    payment was seen by its handler once, the ledger holds each event
#    once, nothing was dead-lettered, no deadlock and no crash but the one
#    caused is in the server log;
#  - pg_stat_consumer names the worker of each partition, consumer_stats()
#    has a row per worker whose partitions add up to 12;
#  - asking for more workers than max_worker_processes leaves room for:
#    the one that cannot start shows "waiting for a worker slot" and why.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use EventpipeTest;
use FaultTest qw(topic_admin create_topic wait_server_up log_matches);
use ConsumerTest;

my $count      = $ENV{EP_T318_EVENTS} // 100_000;
my $partitions = 12;
my $kafka      = start_kafka();
my $bootstrap  = $kafka->{bootstrap};
# 1 launcher + 1 relay + 1 manager + 5 consumer workers: a 6th waits
my $node = new_node('main', bootstrap => $bootstrap,
	conf => "max_worker_processes = 8\nmax_parallel_workers = 0\nmax_logical_replication_workers = 0\n"
	  # the workers must run at READ COMMITTED whatever the server's default
	  . "default_transaction_isolation = 'repeatable read'");
my $db    = 'postgres';
my $topic = 't318.workers';
my $sub   = 'shared';

my $admin = topic_admin($kafka);
ok(create_topic($admin, $topic, $partitions, 1), "topic $topic with $partitions partitions");
ensure_topic($bootstrap, $topic, partitions => $partitions);

$node->safe_psql($db, 'CREATE EXTENSION eventpipe');
# Each payment's handler call records its id under a primary key: a second
# call for one event would fail and be dead-lettered.
$node->safe_psql($db, metrics_sql() . q{
CREATE TABLE payments_seen (event_id text PRIMARY KEY);
CREATE FUNCTION record_payment(payload jsonb, metadata jsonb) RETURNS void
LANGUAGE sql AS $$ INSERT INTO public.payments_seen VALUES (metadata ->> 'id') $$;
});
my $log_start = log_position($node);

my $started = time();
my @events = @{ make_events(prefix => 'w', count => $count, headered => 60, products => 40, customers => 25, seed => 318,
	ids => 'uuid7') };
my $expected = expected_metrics(\@events);
my $payments = grep { $_->{type} eq 'PaymentCompleted' } @events;

start_subscription($node, $db, $sub, [$topic],
	subscribe => "dedup_field => 'event_id', workers => 3",
	customers => 1,
	handlers  => [ [ 'PaymentCompleted', 'record_payment(jsonb, jsonb)' ] ]);

# The workers of $sub that run: {worker => pid}.
sub running_workers
{
	my ($ret, $out) = $node->psql($db,
		"SELECT worker, pid FROM eventpipe.consumer_stats() WHERE subscription = '$sub' AND pid IS NOT NULL");
	return {} unless $ret == 0;
	return { map { split /\|/ } split /\n/, $out };
}

# Events applied so far (ledger rows), 0 while the server does not answer.
sub applied
{
	my ($ret, $out) = $node->psql($db, ledger_ids_sql());
	return $ret == 0 ? $out : 0;
}

ok(wait_until(sub { keys %{ running_workers() } == 3 }, 60), 'three workers run');

# The messages: each event, then its twin under another key (another
# partition, mostly), produced in four slices with a fault after each.
my (@plain, @headered);
for my $ev (@events)
{
	my $m = event_message($ev);
	my $twin = { %$m, key => "$m->{key}~twin" };
	push @{ $ev->{headered} ? \@headered : \@plain }, $m, $twin;
}
my $sent = produce_with_headers($bootstrap, $topic, \@headered, parallel => 8);
my $slice = int(@plain / 4) + 1;
my @slices;
push @slices, [ splice(@plain, 0, $slice) ] while @plain;

# Produce a slice, then wait until the workers are into it.
sub produce_slice
{
	my ($label, $messages) = @_;
	my $before = applied();
	$sent += produce_messages($bootstrap, $topic, $messages);
	ok(wait_until(sub { applied() > $before + 1000 }, 120), "$label: the workers are applying it");
}

# (1) SIGKILL of a worker that holds partitions
produce_slice('(1) slice 1', $slices[0]);
my $victim = $node->safe_psql($db,
	"SELECT pid FROM eventpipe.consumer_stats() WHERE subscription = '$sub' AND partitions > 0 ORDER BY worker LIMIT 1");
ok($victim, "(1) a worker holds partitions (pid $victim)");
kill 'KILL', $victim;
wait_server_up($node, 60);
ok(wait_until(sub { my $w = running_workers(); keys %$w == 3 && !grep { $_ == $victim } values %$w }, 90),
	'(1) after the crash-restart three workers run again');

# (2) pg_terminate_backend() of a worker, and two workers added
produce_slice('(2) slice 2', $slices[1]);
my $terminated;
ok(wait_until(sub { $terminated = running_workers()->{1} }, 60), '(2) worker 1 runs');
is($node->safe_psql($db, "SELECT pg_terminate_backend($terminated)"), 't',
	"(2) pg_terminate_backend() of worker 1 (pid $terminated)");
$node->safe_psql($db, "UPDATE eventpipe.subscriptions SET workers = 5 WHERE name = '$sub'");
ok(wait_until(sub { keys %{ running_workers() } == 5 }, 60),
	'(2) five workers run after UPDATE ... SET workers = 5, without a restart');

# (3) PostgreSQL stopped in immediate mode, then started
produce_slice('(3) slice 3', $slices[2]);
$node->stop('immediate');
$node->start;
ok(wait_until(sub { keys %{ running_workers() } == 5 }, 90), '(3) after an immediate stop and a start five workers run');

# (4) back to two workers: the others leave by themselves
produce_slice('(4) slice 4', $slices[3]);
$node->safe_psql($db, "UPDATE eventpipe.subscriptions SET workers = 2 WHERE name = '$sub'");
ok(wait_until(sub { my $w = running_workers(); keys %$w == 2 && exists $w->{0} && exists $w->{1} }, 60),
	'(4) workers 2 to 4 leave after UPDATE ... SET workers = 2');
is($sent, 2 * $count, "every event sent twice: $sent messages");

ok(wait_caught_up($node, $db, $sub, $bootstrap, [$topic], 600),
	'the workers caught up with all 12 partitions');
note sprintf('%d messages applied in %.0f s since the events were made', $sent, time() - $started);

check_product_metrics($node, $db, $expected, 'product_metrics equal the sums of the unique events');
check_customer_metrics($node, $db, $expected, 'customer_metrics equal the sums of the unique events');
is($node->safe_psql($db, 'SELECT count(*) FROM payments_seen'), $payments,
	"each of the $payments payments seen by its handler once");
is($node->safe_psql($db, ledger_ids_sql()), $count,
	"the ledger holds each of the $count events once");
is($node->safe_psql($db, 'SELECT count(*) FROM eventpipe.consumer_dead_letters'), 0, 'nothing dead-lettered');
is(scalar(() = log_matches($node, $log_start, qr/deadlock detected/)), 0, 'no deadlock in the server log');
my @crashes = grep { !/terminated by signal 9/ } crash_lines($node, $log_start);
is(scalar @crashes, 0, 'no crash but the SIGKILL caused') or diag join("\n", @crashes);

# pg_stat_consumer and consumer_stats() per worker, once the group has
# given the leavers' partitions to the two left
my $held_sql = "SELECT count(*) FILTER (WHERE worker IN (0, 1) AND pid IS NOT NULL), count(*) FROM eventpipe.pg_stat_consumer WHERE subscription = '$sub'";
ok(wait_until(sub { $node->safe_psql($db, $held_sql) eq '12|12' }, 60),
	'pg_stat_consumer: each of the 12 partitions names worker 0 or 1 and its pid')
  or diag $node->safe_psql($db, "SELECT * FROM eventpipe.pg_stat_consumer");
my $rows = consumer_workers($node, $db, $sub);
my %by = map { $_->{worker} => $_ } @$rows;
ok($by{0}{pid} && $by{1}{pid} && $by{0}{partitions} + $by{1}{partitions} == 12
	  && $by{0}{partitions} > 0 && $by{1}{partitions} > 0,
	"consumer_stats(): workers 0 and 1 share the 12 partitions ($by{0}{partitions} + $by{1}{partitions})");
ok(!grep({ $_->{worker} >= 2 && ($_->{pid} || $_->{partitions}) } @$rows),
	'consumer_stats(): workers 2 to 4 hold no process and no partition');

# more workers than the server can start
$node->safe_psql($db, "UPDATE eventpipe.subscriptions SET workers = 6 WHERE name = '$sub'");
ok( wait_until(
		sub {
			$node->safe_psql($db,
				"SELECT count(*) FROM eventpipe.consumer_stats() WHERE subscription = '$sub' AND pid IS NOT NULL")
			  == 5
			  && $node->safe_psql($db,
				"SELECT count(*) FROM eventpipe.consumer_stats() WHERE subscription = '$sub' AND state = 'waiting for a worker slot' AND last_error LIKE 'max_worker_processes (8) is exhausted%'"
			  ) == 1;
		},
		60),
	'workers = 6: five run, the sixth waits for a worker slot, last_error naming max_worker_processes');
ok(scalar(() = log_matches($node, $log_start, qr/subscription "$sub" waits for a worker slot \(worker 5\)/)),
	'the server log says which worker waits');

stop_node($node);
done_testing();

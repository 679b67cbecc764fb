# t/317_consumer_slot_shortage.pl: more subscriptions than worker slots.
# max_worker_processes = 6 leaves room for 3 consumer workers besides the
# launcher, the relay worker and the database manager (no parallel query
# workers, no logical replication launcher to take one); 65 subscriptions
# are one more than eventpipe's 64 consumer slots (EVENTPIPE_MAX_CONSUMERS),
# so both causes of waiting occur: the 65th by name has no eventpipe slot,
# those from the 4th to the 64th find max_worker_processes exhausted.
#  (a) over ~12 seconds the server log holds one WARNING per waiting
#      subscription, not one a second; consumer_stats() and
#      pg_stat_consumer show each waiting subscription once, pid NULL, state
#      "waiting for a worker slot", last_error naming the limit;
#  (b) after two running subscriptions are unsubscribed, two waiting ones
#      get a worker (a pid) within seconds, each with one LOG line saying
#      so, and the others still wait without a new WARNING;
#  (c) waiting subscriptions that are unsubscribed leave consumer_stats()
#      without a LOG line.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);

use EventpipeTest;
use FaultTest qw(log_matches);
use ConsumerTest;

my $kafka     = start_kafka();
my $bootstrap = $kafka->{bootstrap};
my $max_workers = 6;
my $node = new_node(
	'main',
	bootstrap => $bootstrap,
	conf      => join("\n",
		"max_worker_processes = $max_workers",
		'max_parallel_workers = 0',
		'max_parallel_workers_per_gather = 0',
		'max_logical_replication_workers = 0',
		'eventpipe.relay_workers = 1'));
my $db    = 'postgres';
my $topic = 't317.slots';
my $count = 65;
my @subs  = map { sprintf('s%02d', $_) } 1 .. $count;
my $waiting_state = 'waiting for a worker slot';
ensure_topic($bootstrap, $topic);
$node->safe_psql($db, 'CREATE EXTENSION eventpipe');

# The warning of a subscription that starts waiting, and the line of one
# that gets its worker.
my $warning_re = qr/WARNING:\s+eventpipe database manager: subscription "([^"]+)" waits for a worker slot/;
my $got_re     = qr/LOG:\s+eventpipe database manager: subscription "([^"]+)" got its worker after waiting/;

# {subscription => number of lines} of the lines matching $re since $offset.
sub lines_per_subscription
{
	my ($offset, $re) = @_;
	my %n;
	for (log_matches($node, $offset, $re))
	{
		$n{$1}++ if /$re/;
	}
	return \%n;
}

# Subscriptions with a worker and waiting ones, as consumer_stats() has them.
sub running_and_waiting
{
	my $stats = consumer_stats($node, $db);
	my @running = sort grep { defined $stats->{$_}{pid} } keys %$stats;
	my @waiting = sort grep { !defined $stats->{$_}{pid} && $stats->{$_}{state} eq $waiting_state } keys %$stats;
	return (\@running, \@waiting, $stats);
}

# The background workers that are not consumer workers (their slots are
# taken from max_worker_processes too), once the database manager has
# started the relay.
wait_until(sub { relay_stat($node, 'pid', db => $db) ne '' }, 30);
my $others = $node->safe_psql($db, q{
SELECT count(*) FROM pg_stat_activity
 WHERE (backend_type LIKE 'eventpipe%' AND backend_type <> 'eventpipe consumer')
    OR backend_type = 'logical replication launcher'});

# ---- (a) one warning per waiting subscription ---------------------------------

my $log_a = log_position($node);
my $subscribed_at = time();
$node->safe_psql($db,
	"SELECT eventpipe.subscribe(name, ARRAY['$topic']) FROM unnest(ARRAY['"
	  . join("', '", @subs) . "']) AS name");

my ($running, $waiting, $stats);
ok( wait_until(
		sub {
			($running, $waiting, $stats) = running_and_waiting();
			return @$running >= 1 && @$running + @$waiting == $count;
		},
		60),
	'(a) every subscription has a worker or waits for one')
  or diag sprintf('%d running, %d waiting, consumer_stats: %s', scalar @$running, scalar @$waiting,
	join(', ', map { "$_=" . ($stats->{$_}{state} // '?') } sort keys %$stats));
my $capacity = scalar @$running;
is($capacity, $max_workers - $others,
	"(a) $capacity consumer workers run: max_worker_processes minus the $others other background workers");
ok(scalar @$waiting >= 2, '(a) ' . scalar(@$waiting) . ' subscriptions wait');

# the manager tries again every second: give it a dozen tries
my $left = 12 - (time() - $subscribed_at);
sleep($left) if $left > 0;
($running, $waiting, $stats) = running_and_waiting();
my $warnings = lines_per_subscription($log_a, $warning_re);
my @repeated = grep { $warnings->{$_} > 1 } sort keys %$warnings;
is(scalar @repeated, 0, '(a) no subscription was warned about more than once in ~12 s')
  or diag join(', ', map { "$_: $warnings->{$_} warnings" } @repeated);
is_deeply([ sort keys %$warnings ], $waiting, '(a) each waiting subscription was warned about, and only those');
my $all_warnings = () = log_matches($node, $log_a, qr/WARNING:/);
ok($all_warnings <= $count, "(a) $all_warnings WARNING lines in all, at most one per subscription");
my @worker_refused = log_matches($node, $log_a, qr/consumer slots are taken/);
is(scalar @worker_refused, 0, '(a) no worker was started only to find no eventpipe slot')
  or diag join("\n", @worker_refused[ 0 .. ($#worker_refused < 4 ? $#worker_refused : 4) ]);

# consumer_stats(): the waiting ones, with the reason
my $last = $subs[-1];
my @bad = grep {
	my $row = $stats->{$_};
	my $re = $_ eq $last
	  ? qr/^all 64 consumer slots of eventpipe are taken/
	  : qr/^max_worker_processes \($max_workers\) is exhausted.*raise it/;
	!(defined $row->{last_error} && $row->{last_error} =~ $re && defined $row->{last_error_time})
} @$waiting;
is(scalar @bad, 0, '(a) consumer_stats: each waiting subscription says which limit, since when')
  or diag join("\n", map { "$_: " . ($stats->{$_}{last_error} // 'NULL') } @bad[ 0 .. ($#bad < 4 ? $#bad : 4) ]);
ok(grep({ $_ eq $last } @$waiting), "(a) $last, beyond the 64 eventpipe slots, waits");
is($node->safe_psql($db, q{
SELECT count(*) FROM eventpipe.consumer_stats()
 GROUP BY subscription HAVING count(*) > 1}), '', '(a) consumer_stats: one row per subscription');

# pg_stat_consumer: a waiting subscription has no partition yet, so one row
is( $node->safe_psql($db, qq{
SELECT count(*), count(DISTINCT subscription), count(pid)
  FROM eventpipe.pg_stat_consumer WHERE state = '$waiting_state'}),
	scalar(@$waiting) . '|' . scalar(@$waiting) . '|0',
	'(a) pg_stat_consumer shows each waiting subscription once, without a pid');

# ---- (b) slots free up ------------------------------------------------------------

my @leaving = @$running[ 0 .. 1 ];
my %was_waiting = map { $_ => 1 } @$waiting;
my $log_b = log_position($node);
$node->safe_psql($db, "SELECT eventpipe.unsubscribe('$_')") for @leaving;

my @started;
ok( wait_until(
		sub {
			($running, $waiting, $stats) = running_and_waiting();
			@started = grep { $was_waiting{$_} } @$running;
			return @started == 2 && @$running == $capacity;
		},
		30),
	"(b) after unsubscribing @leaving, two waiting subscriptions got a worker within seconds")
  or diag sprintf('%d running (%s), of which had waited: %s', scalar @$running, join(' ', @$running),
	join(' ', @started));
ok(!grep({ exists $stats->{$_} } @leaving), '(b) the unsubscribed ones left consumer_stats()');
is(scalar(grep { !$was_waiting{$_} } @$waiting), 0, '(b) nobody started to wait');

my $got = {};
wait_until(sub { $got = lines_per_subscription($log_b, $got_re); keys %$got >= 2 }, 10);
is_deeply([ sort keys %$got ], [ sort @started ], '(b) one LOG line for each subscription that got its worker')
  or diag 'got lines for: ' . join(' ', sort keys %$got);
ok(!grep({ $got->{$_} > 1 } keys %$got), '(b) and only one');

# let the manager try a few more times for those still waiting
sleep(4);
$warnings = lines_per_subscription($log_b, $warning_re);
# the last one now has a handle of the manager: it may wait for
# max_worker_processes instead of an eventpipe slot, a new reason worth
# one warning
my @again = grep { $_ ne $last || $warnings->{$_} > 1 } sort keys %$warnings;
is(scalar @again, 0, '(b) the subscriptions still waiting were not warned about again')
  or diag join(', ', map { "$_: $warnings->{$_}" } @again);
($running, $waiting, $stats) = running_and_waiting();
is(scalar(@$running) + scalar(@$waiting), $count - 2, '(b) the others still wait');

# ---- (c) waiting subscriptions unsubscribed ------------------------------------

my $log_c = log_position($node);
my %still_running = map { $_ => 1 } @$running;
$node->safe_psql($db,
	"SELECT eventpipe.unsubscribe(name) FROM unnest(ARRAY['" . join("', '", @$waiting) . "']) AS name");
ok( wait_until(
		sub {
			$node->safe_psql($db,
				"SELECT count(*) FROM eventpipe.consumer_stats() WHERE state = '$waiting_state'") == 0;
		},
		10),
	'(c) unsubscribed, the waiting subscriptions left consumer_stats()');
my @running_now = sort grep { defined consumer_stats($node, $db)->{$_}{pid} } keys %still_running;
is(scalar @running_now, scalar keys %still_running, '(c) the running workers still run');
$got = lines_per_subscription($log_c, $got_re);
is(scalar keys %$got, 0, '(c) no "got its worker" line for an unsubscribed subscription')
  or diag join(' ', sort keys %$got);
my @crashes = crash_lines($node, $log_a);
is(scalar @crashes, 0, 'nothing crashed') or diag join("\n", @crashes);

stop_node($node);
ok(stop_kafka($kafka), 'Kafka stopped');
done_testing();

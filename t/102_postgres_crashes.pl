# t/102_postgres_crashes.pl: PostgreSQL side faults in the middle of
# relaying a large backlog while sessions keep publishing:
#  (a) the server stopped in immediate mode (twice), then started again;
#  (b) the relay worker ended with pg_terminate_backend() (three times, then
#      five times in quick succession): the launcher starts a new one;
#  (c) the relay worker killed with SIGKILL: the postmaster restarts every
#      backend (crash recovery), the relay comes back.
# Every committed event (the ledger says which, exactly) must reach Kafka,
# each key's events in publish order; duplicates are allowed and reported.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

use EventpipeTest;
use FaultTest;

my $kafka = start_kafka();
# Small batches: the faults must land while a backlog is being relayed, and
# at full speed (batches of the default size, three in flight) the relay clears
# these backlogs in a fraction of a second; small batches also put many
# batch boundaries in flight when the faults land.
my $node = new_node('main',
	bootstrap => $kafka->{bootstrap},
	conf      => 'eventpipe.relay_batch_size = 20');
$node->safe_psql('postgres', 'CREATE EXTENSION eventpipe');
ft_prepare($node);
ok(wait_for_relay_state($node, 'idle'), 'relay worker is idle');

# Start publishers $name on $topic, wait until the relay delivers, commit a
# backlog of 20,000 events on 20 more keys and wait until the relay is well
# into it.  Returns the publishers.
sub stream_with_backlog
{
	my ($label, $topic, $name) = @_;
	my $pubs = start_publishers($node,
		name     => $name,
		topic    => $topic,
		sessions => 2,
		keys     => 4,
		per_txn  => 3,
		sleep_ms => 10);
	my $sent = relay_stat($node, 'events_sent');
	ok(wait_until(sub { relay_stat($node, 'events_sent') >= $sent + 100 }, 60),
		"$label: the relay delivers the stream");
	my @keys = map { "$name-bulk-k$_" } 0 .. 19;
	bulk_publish($node, $topic, \@keys, 1000);
	$sent = relay_stat($node, 'events_sent');
	ok(wait_until(sub { relay_stat($node, 'events_sent') >= $sent + 500 }, 60),
		"$label: the relay is into the backlog");
	return $pubs;
}

sub relay_pid { return relay_pids($node)->{0} }

# Wait until the outbox is empty, then check the topic.
sub drain_and_check
{
	my ($label, $topic) = @_;
	ok(wait_until(sub { outbox_count($node) == 0 }, 180), "$label: the outbox drained")
	  or diag 'outbox: ' . outbox_count($node);
	my $ledger = ledger($node, $topic);
	note "$label: " . scalar(@$ledger) . ' events committed';
	check_topic($kafka->{bootstrap}, $topic, $ledger, $label);
}

# ---- (a) immediate stop -------------------------------------------------

my $topic_a = 't102.immediate';
for my $round (1 .. 2)
{
	my $label = "(a) immediate stop $round";
	my $pubs  = stream_with_backlog($label, $topic_a, 'imm');
	my $stat  = relay_stats($node)->[0];
	note "$label: stopping with $stat->{backlog} events in the outbox, relay $stat->{state}";
	cmp_ok($stat->{backlog}, '>', 0, "$label: the relay had a backlog when the server stopped");
	$node->stop('immediate');
	reap_publishers($pubs, 30);
	$node->start;
	ok(wait_until(sub { (relay_pid() // 0) > 0 }, 30), "$label: a relay worker runs after the restart");
}
# publish a little more after the last restart, then stop
my $pubs = start_publishers($node, name => 'imm', topic => $topic_a, sessions => 2, keys => 4,
	per_txn => 3, sleep_ms => 10);
my $n = ledger_count($node, $topic_a);
wait_until(sub { ledger_count($node, $topic_a) >= $n + 200 }, 30);
is(stop_publishers($pubs), 2, '(a) the last publishing sessions ended normally');
drain_and_check('(a) immediate stop', $topic_a);

# ---- (b) pg_terminate_backend ------------------------------------------

my $topic_b = 't102.terminate';
my $log_b = log_position($node);
$pubs = stream_with_backlog('(b)', $topic_b, 'term');
for my $round (1 .. 3)
{
	my $label = "(b) pg_terminate_backend $round";
	wait_until(sub { relay_stat($node, 'state') eq 'relaying' }, 10);
	my $pid = relay_pid();
	my $stat = relay_stats($node)->[0];
	note "$label: relay pid $pid, $stat->{state}, backlog $stat->{backlog}";
	cmp_ok($stat->{backlog}, '>', 0, "$label: the relay has a backlog");
	my $sent_before = relay_stat($node, 'events_sent');
	is($node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)"), 't', "$label: relay terminated");
	ok(wait_until(sub { my $p = relay_pid() // 0; $p > 0 && $p != $pid }, 30),
		"$label: the launcher started a new relay worker");
	cmp_ok(relay_stat($node, 'events_sent'), '>=', $sent_before,
		"$label: pg_stat_relay.events_sent survives the worker's restart");
	if ($round < 3)
	{
		# more backlog (enough to last a few seconds at full speed), and let
		# the new worker get into it
		bulk_publish($node, $topic_b, [ map { "term-bulk-k$_" } 0 .. 19 ], 5000);
		my $sent = relay_stat($node, 'events_sent');
		wait_until(sub { relay_stat($node, 'events_sent') >= $sent + 300 }, 60);
	}
}
# In quick succession: terminated as soon as each new worker has sent something.
bulk_publish($node, $topic_b, [ map { "term-bulk-k$_" } 0 .. 19 ], 1000);
my $quick = 0;
for my $round (1 .. 5)
{
	my $pid = relay_pid();
	my $sent = relay_stat($node, 'events_sent');
	last unless wait_until(sub { relay_stat($node, 'events_sent') > $sent }, 30);
	$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
	$quick++ if wait_until(sub { my $p = relay_pid() // 0; $p > 0 && $p != $pid }, 30);
}
is($quick, 5, '(b) five more terminations in quick succession, each followed by a new worker');
is(stop_publishers($pubs), 2, '(b) the publishing sessions ended normally');
drain_and_check('(b) pg_terminate_backend', $topic_b);
my @terminated = log_matches($node, $log_b, qr/terminating background worker "eventpipe relay/);
note '(b) log: ' . join("\n", @terminated);

# ---- (c) SIGKILL of the relay worker -------------------------------------

my $topic_c = 't102.kill9';
my $log_c = log_position($node);
$pubs = stream_with_backlog('(c)', $topic_c, 'k9');
my $pid = relay_pid();
my $stat = relay_stats($node)->[0];
note "(c) relay pid $pid, $stat->{state}, backlog $stat->{backlog}";
is(kill('KILL', $pid), 1, '(c) relay worker killed with SIGKILL');
reap_publishers($pubs, 60);
ok(wait_server_up($node, 60), '(c) the server is back after its crash-restart');
ok(wait_until(sub { my $p = relay_pid() // 0; $p > 0 && $p != $pid }, 30),
	'(c) a new relay worker runs');
ok(scalar(log_matches($node, $log_c, qr/eventpipe relay.*was terminated by signal 9/)),
	'(c) the server log shows the crash-restart');
$pubs = start_publishers($node, name => 'k9', topic => $topic_c, sessions => 2, keys => 4,
	per_txn => 3, sleep_ms => 10);
$n = ledger_count($node, $topic_c);
wait_until(sub { ledger_count($node, $topic_c) >= $n + 200 }, 30);
is(stop_publishers($pubs), 2, '(c) the publishing sessions after the crash ended normally');
drain_and_check('(c) relay SIGKILL', $topic_c);

is($node->safe_psql('postgres', 'SELECT count(*) FROM eventpipe.dead_letters'), 0,
	'no event was dead-lettered');

$node->stop;
ok(stop_kafka($kafka), 'Kafka stopped');
done_testing();

# t/101_kafka_sigkill.pl: the only Kafka broker is killed with SIGKILL in
# the middle of a stream of events (three sessions publishing in a loop, and
# a backlog of 20,000 events being relayed), stays down for more than 10 s
# while the sessions keep publishing, then comes back.  Every committed event
# must reach Kafka (the ledger says exactly which committed), each key's
# events in publish order; duplicates are allowed and reported.
# Then, with the broker down again and the relay waiting for it: a reload
# that changes kafka_options, pg_terminate_backend() of the relay and a fast
# shutdown of the server must all work, and nothing be lost.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

use EventpipeTest;
use FaultTest;

my $kafka = start_kafka();
# batches of 1,000, not the default 5,000: more batch boundaries, and
# batches in flight, where the faults land
my $node  = new_node('main',
	bootstrap => $kafka->{bootstrap},
	conf      => 'eventpipe.relay_batch_size = 1000');
$node->safe_psql('postgres', 'CREATE EXTENSION eventpipe');
ft_prepare($node);
ok(wait_for_relay_state($node, 'idle'), 'relay worker is idle');

my $topic = 't101.sigkill';
my $log_start = log_position($node);

my $pubs = start_publishers($node,
	name     => 'live',
	topic    => $topic,
	sessions => 3,
	keys     => 4,
	per_txn  => 3,
	sleep_ms => 10);
ok(wait_until(sub { relay_stat($node, 'events_sent') >= 300 }, 60),
	'the relay delivers the stream');

# A backlog on top of the stream, so that the kill hits big batches in flight.
my @bulk_keys = map { "bulk-k$_" } 0 .. 19;
is(bulk_publish($node, $topic, \@bulk_keys, 1000), 20000, 'a backlog of 20,000 events committed');
my $sent0 = relay_stat($node, 'events_sent');
ok(wait_until(sub { relay_stat($node, 'events_sent') >= $sent0 + 1000 }, 30),
	'the relay is sending the backlog');
my $outbox_at_kill = outbox_count($node);
my $ledger_at_kill = ledger_count($node, $topic);
my $t_kill = time();
ok(kill_kafka_node($kafka, 1), 'Kafka killed (SIGKILL) mid-stream');
note "outbox at the kill: $outbox_at_kill events";

# Down for at least 12 s; the sessions keep publishing.
my (%states, $max_outbox, $max_sent, $sent_at_kill);
$sent_at_kill = relay_stat($node, 'events_sent');
$max_outbox = 0;
$max_sent = $sent_at_kill;
while (time() - $t_kill < 12)
{
	my $s = relay_stats($node)->[0];
	$states{ $s->{state} }++;
	$max_outbox = $s->{backlog} if $s->{backlog} > $max_outbox;
	$max_sent = $s->{events_sent} if $s->{events_sent} > $max_sent;
	usleep(250_000);
}
my $published_during = ledger_count($node, $topic) - $ledger_at_kill;
cmp_ok($published_during, '>', 100, "publishing went on during the outage ($published_during events)");
ok($states{'waiting for broker'}, 'pg_stat_relay said "waiting for broker" during the outage')
  or diag 'states seen: ' . join(', ', sort keys %states);
cmp_ok($max_outbox, '>', 0, "events waited in the outbox (up to $max_outbox)");
note 'relay last_error during the outage: ' . relay_stat($node, 'last_error');
note sprintf('events_sent grew by %d during the outage (acks of what was already sent)',
	$max_sent - $sent_at_kill);

ok(start_kafka_node($kafka, 1), 'Kafka node 1 started again');
note sprintf('outage lasted %.1f s', time() - $t_kill);
my $sent_restart = relay_stat($node, 'events_sent');
ok(wait_until(sub { relay_stat($node, 'events_sent') > $sent_restart + 200 }, 90),
	'the relay delivers again');

finish_stream(
	node              => $node,
	label             => 'broker SIGKILL',
	publishers        => $pubs,
	sessions          => 3,
	bootstrap         => $kafka->{bootstrap},
	topic             => $topic,
	log_start         => $log_start,
	relay_log_pattern => qr/eventpipe relay worker \d+: /);
ok(wait_for_relay_state($node, 'idle'), 'relay worker is idle again');

# ---- while the relay waits for the broker: reload, terminate, shut down ----

my $topic2 = 't101.waiting';
ok(kill_kafka_node($kafka, 1), '(2) Kafka killed again');
$pubs = start_publishers($node, name => 'wait', topic => $topic2, sessions => 2, keys => 4,
	per_txn => 3, sleep_ms => 10);
ok(wait_for_relay_state($node, 'waiting for broker', timeout => 30),
	'(2) the relay waits for the broker');

# A reload that changes kafka_options abandons the waiting batch.
my $pos = log_position($node);
$node->safe_psql('postgres',
	q{ALTER SYSTEM SET eventpipe.kafka_options = 'linger.ms=5'; SELECT pg_reload_conf()});
ok( wait_until(
		sub { scalar log_matches($node, $pos, qr/Kafka settings changed, sending the rest of the batch/) },
		15),
	'(2) a reload changing kafka_options abandons the waiting batch');
ok(wait_for_relay_state($node, 'waiting for broker', timeout => 30),
	'(2) and the relay waits again with the new producer');

# pg_terminate_backend() of a relay that waits for the broker.
my $pid = relay_pids($node)->{0};
my $t0 = time();
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok( wait_until(
		sub { !kill(0, $pid) },
		15),
	'(2) the waiting relay worker exits on pg_terminate_backend');
note sprintf('(2) it took %.1f s to exit', time() - $t0);
ok(wait_until(sub { my $p = relay_pids($node)->{0} // 0; $p > 0 && $p != $pid }, 15),
	'(2) the launcher starts a new one');
is(stop_publishers($pubs), 2, '(2) the publishing sessions ended normally');

# A fast shutdown while the relay waits for the broker.
ok(wait_for_relay_state($node, 'waiting for broker', timeout => 30),
	'(2) the relay waits for the broker again');
$t0 = time();
my $stopped;
{
	local $ENV{PGCTLTIMEOUT} = 30;
	$stopped = $node->stop('fast', fail_ok => 1);
}
my $took = time() - $t0;
ok($stopped, sprintf('(2) a fast shutdown completes while the relay waits for the broker (%.1f s)', $took));
cmp_ok($took, '<', 15, '(2) within 15 s');
$node->stop('immediate') unless $stopped;

# The server starts while the broker is still down: the relay waits.
$node->start;
ok(wait_for_relay_state($node, 'waiting for broker', timeout => 30),
	'(2) after the restart the relay waits for the broker');
ok(start_kafka_node($kafka, 1), '(2) Kafka node 1 started again');
ok(wait_until(sub { outbox_count($node) == 0 }, 120), '(2) the outbox drained')
  or diag 'outbox: ' . outbox_count($node);
check_topic($kafka->{bootstrap}, $topic2, ledger($node, $topic2), '(2) waiting relay');

$node->stop;
ok(stop_kafka($kafka), 'Kafka stopped');
done_testing();

# t/103_leader_failover.pl: a 3-node Kafka cluster, a topic of 3 partitions
# replicated 3 times.  While sessions publish and a backlog is relayed, the
# node leading the busiest partition is killed with SIGKILL (twice, the
# second time whichever node leads it then); leadership moves, the relay must go on
# delivering to the new leader while the node is away (2 in-sync replicas
# are left, min.insync.replicas=2), and once the node is back every
# committed event must be on the topic, in order per key.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

use EventpipeTest;
use FaultTest;

my $kafka = start_kafka(nodes => 3, timeout => 120);
my $bootstrap = $kafka->{bootstrap};
my $topic = 't103.failover';
my $admin = topic_admin($kafka);
ok(create_topic($admin, $topic, 3, 3), "topic $topic created: 3 partitions, RF 3");

# batches of 1,000, not the default 5,000: more batch boundaries, and
# batches in flight, where the faults land
my $node = new_node('main',
	bootstrap => $bootstrap,
	conf      => 'eventpipe.relay_batch_size = 1000');
$node->safe_psql('postgres', 'CREATE EXTENSION eventpipe');
ft_prepare($node);
ok(wait_for_relay_state($node, 'idle'), 'relay worker is idle');
my $log_start = log_position($node);

my $pubs = start_publishers($node,
	name     => 'fo',
	topic    => $topic,
	sessions => 3,
	keys     => 6,
	per_txn  => 3,
	sleep_ms => 10);
ok(wait_until(sub { relay_stat($node, 'events_sent') >= 500 }, 60),
	'the relay delivers the stream');

for my $round (1 .. 2)
{
	my $r = "round $round";
	# A backlog on top of the stream: batches are in flight at the kill.
	bulk_publish($node, $topic, [ map { "fo-bulk-k$_" } 0 .. 9 ], 1000);
	my $sent = relay_stat($node, 'events_sent');
	ok(wait_until(sub { relay_stat($node, 'events_sent') >= $sent + 1000 }, 60),
		"$r: the relay is sending the backlog");

	# The busiest partition so far and its leader.
	my %count = %{ end_offsets($bootstrap, $topic, 3) };
	my ($busy) = sort { $count{$b} <=> $count{$a} || $a <=> $b } keys %count;
	my $leaders = partition_leaders($bootstrap, $topic);
	my $victim  = $leaders->{$busy};
	note "$r: messages per partition: " . join(', ', map { "p$_=$count{$_}" } sort keys %count);
	note "$r: leaders: " . join(', ', map { "p$_ -> node $leaders->{$_}" } sort keys %$leaders);
	ok(defined $victim && $victim >= 1 && $victim <= 3, "$r: partition $busy is led by node $victim")
	  or last;
	note "$r: outbox at the kill: " . outbox_count($node);

	my $t_kill = time();
	ok(kill_kafka_node($kafka, $victim), "$r: node $victim (leader of partition $busy) killed");
	my $sent_at_kill = relay_stat($node, 'events_sent');
	ok( wait_until(
			sub {
				my $l = partition_leaders($bootstrap, $topic)->{$busy} // -1;
				return $l >= 1 && $l != $victim;
			},
			60),
		"$r: partition $busy has a new leader");
	note sprintf('%s: new leader of partition %d: node %s, %.1f s after the kill',
		$r, $busy, partition_leaders($bootstrap, $topic)->{$busy}, time() - $t_kill);

	# The relay must keep delivering while the node is down (to the new leaders).
	my $sent_later = relay_stat($node, 'events_sent');
	ok(wait_until(sub { relay_stat($node, 'events_sent') >= $sent_later + 500 }, 60),
		"$r: the relay delivers while the node is down");
	note sprintf('%s: %.1f s after the kill the relay had sent %d more events',
		$r, time() - $t_kill, relay_stat($node, 'events_sent') - $sent_at_kill);
	# at least 10 s with the node down
	wait_until(sub { time() - $t_kill >= 10 }, 15);

	ok(start_kafka_node($kafka, $victim), "$r: node $victim started again");
	note sprintf('%s: node %d was down for %.1f s', $r, $victim, time() - $t_kill);
	my $sent_back = relay_stat($node, 'events_sent');
	ok(wait_until(sub { relay_stat($node, 'events_sent') >= $sent_back + 300 }, 60),
		"$r: the relay delivers with the node back");
}

finish_stream(
	node              => $node,
	label             => 'leader failover',
	publishers        => $pubs,
	sessions          => 3,
	bootstrap         => $bootstrap,
	topic             => $topic,
	log_start         => $log_start,
	relay_log_pattern => qr/eventpipe relay worker \d+: |librdkafka: .*(FAIL|ERROR|fatal)/i);

$node->stop;
ok(stop_kafka($kafka), 'Kafka stopped');
done_testing();

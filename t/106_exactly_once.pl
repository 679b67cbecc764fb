# t/106_exactly_once.pl: eventpipe.relay_exactly_once against a 3-node
# Kafka cluster.  200,000 events in 500 keys are published in transactions
# of 5,000 (and some transactions that roll back) while two relay workers
# send them; meanwhile each relay worker is killed with SIGKILL, PostgreSQL
# is stopped in immediate mode once, the leader of the transaction
# coordinator of relay worker 0 is killed, and relay worker 0 is killed
# once more.  kcat, reading with isolation.level=read_committed, must then
# find every committed event exactly once, each key's in publish order,
# and nothing else (no rolled-back event, nothing of an aborted Kafka
# transaction).
# The same scenario runs with the setting off, on a topic of its own: there
# the duplicates the setting prevents are counted and reported (how many
# depends on where the kills land; none are required).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

use EventpipeTest;
use FaultTest;

my $CHUNKS     = 40;      # transactions of publishing
my $KEYS       = 500;
my $ROUNDS     = 10;      # events per key and transaction: 5,000 a chunk
my $TXN_PARTITIONS = 10;  # scripts/kafka's transaction.state.log.num.partitions

my $kafka = start_kafka(nodes => 3, timeout => 120);
my $bootstrap = $kafka->{bootstrap};
my $admin = topic_admin($kafka);

# Java's String.hashCode, as Kafka maps a transactional.id to its
# coordinator's partition of __transaction_state.
sub coordinator_partition
{
	my ($transactional_id) = @_;
	my $h = 0;
	$h = ($h * 31 + $_) % 4294967296 for unpack('C*', $transactional_id);
	$h -= 4294967296 if $h >= 2147483648;
	return ($h == -2147483648 ? 0 : abs($h)) % $TXN_PARTITIONS;
}

# The relay is paused while the four chunks up to a fault are published,
# so that the fault finds a backlog of about 20,000 events: resume it and
# wait until part of the backlog has left (whether the fault then lands in
# the middle of a batch is up to the timing; nothing checked depends on it).
my %FAULTS = map { $_ => 1 } (5, 10, 15, 20, 32);
sub mid_stream
{
	my ($node, $label) = @_;
	# counted while paused: a fast relay may empty it before a count after the resume
	my $at = outbox_count($node);
	$node->safe_psql('postgres', 'SELECT eventpipe.resume_relay()');
	ok(wait_until(sub { outbox_count($node) <= $at - 1000 }, 180),
		"$label: the relay is sending a backlog of $at");
	return;
}

sub kill_relay
{
	my ($node, $worker, $label) = @_;
	my $pid = relay_pids($node)->{$worker} // 0;
	ok($pid > 0 && kill('KILL', $pid), "$label: relay worker $worker (pid $pid) killed with SIGKILL");
	ok(wait_until(sub { !kill(0, $pid) }, 30), "$label: it is gone");
	ok(wait_server_up($node, 120), "$label: the server is back after the crash restart");
	return;
}

# One scenario; returns what check_topic() found.
sub scenario
{
	my ($mode) = @_;
	my $topic = "t106.$mode";
	my $label = "exactly once $mode";
	ok(create_topic($admin, $topic, 3, 3), "$label: topic $topic created: 3 partitions, RF 3");

	my $node = new_node("eos_$mode",
		bootstrap => $bootstrap,
		# batches (Kafka transactions) of 1,000, not the default 5,000:
		# more of them open and in flight where the faults land
		conf      => "eventpipe.relay_exactly_once = $mode\neventpipe.relay_workers = 2\n"
		  . 'eventpipe.relay_batch_size = 1000');
	$node->safe_psql('postgres', 'CREATE EXTENSION eventpipe');
	ft_prepare($node);
	ok(wait_for_relay_state($node, 'idle', timeout => 120), "$label: relay worker 0 is idle");
	ok(wait_for_relay_state($node, 'idle', worker => 1, timeout => 120),
		"$label: relay worker 1 is idle");
	my $sysid = $node->safe_psql('postgres', 'SELECT system_identifier FROM pg_control_system()');
	my $log_start = log_position($node);

	my @keys = map { "k$_" } 0 .. $KEYS - 1;
	my $published = 0;
	my $rolled_back = 0;
	my $coordinator;
	for my $chunk (1 .. $CHUNKS)
	{
		$node->safe_psql('postgres', 'SELECT eventpipe.pause_relay()') if $FAULTS{ $chunk + 3 };
		$published += bulk_publish($node, $topic, \@keys, $ROUNDS);
		if ($chunk % 10 == 0)
		{
			# published and rolled back: must never reach the topic
			my ($ret) = $node->psql('postgres',
				"BEGIN; SELECT ft_publish_round('$topic', ARRAY['rb-a','rb-b']::text[], 50); ROLLBACK;");
			$rolled_back += 100 if $ret == 0;
		}
		if ($chunk == 5 || $chunk == 10 || $chunk == 32)
		{
			my $worker = $chunk == 10 ? 1 : 0;
			mid_stream($node, "$label, chunk $chunk");
			kill_relay($node, $worker, "$label, chunk $chunk");
		}
		elsif ($chunk == 15)
		{
			mid_stream($node, "$label, chunk $chunk");
			$node->stop('immediate');
			$node->start;
			ok(wait_server_up($node, 120), "$label, chunk $chunk: PostgreSQL stopped in immediate mode and started");
		}
		elsif ($chunk == 20)
		{
			my $id = "eventpipe-relay-$sysid-postgres-0";
			my $p = coordinator_partition($id);
			ok(wait_until(sub { ($coordinator = partition_leaders($bootstrap, '__transaction_state')->{$p} // -1) >= 1 }, 60),
				"$label: the coordinator of $id (partition $p of __transaction_state) is node "
				  . ($coordinator // '?'));
			mid_stream($node, "$label, chunk $chunk");
			ok(kill_kafka_node($kafka, $coordinator), "$label, chunk $chunk: node $coordinator, the coordinator's leader, killed");
		}
		elsif ($chunk == 26 && defined $coordinator)
		{
			ok(start_kafka_node($kafka, $coordinator), "$label, chunk $chunk: node $coordinator started again");
		}
	}
	is($published, $CHUNKS * $KEYS * $ROUNDS, "$label: $published events committed");
	note "$label: $rolled_back events published in transactions that rolled back";

	ok(wait_until(sub { outbox_count($node) == 0 }, 600), "$label: the outbox drained")
	  or diag 'outbox: ' . outbox_count($node) . ', relay: '
	  . join('; ', map { "$_->{worker}: $_->{state} $_->{last_error}" } @{ relay_stats($node) });
	is($node->safe_psql('postgres', 'SELECT count(*) FROM eventpipe.dead_letters'), 0,
		"$label: nothing was dead-lettered");

	my $found = check_topic($bootstrap, $topic, ledger($node, $topic), "$label (kcat, read_committed)",
		timeout      => 300,
		kcat_options => [ '-X', 'isolation.level=read_committed' ]);
	my $all = read_topic($bootstrap, $topic, fast => 1,
		kcat_options => [ '-X', 'isolation.level=read_uncommitted' ], timeout => 300);
	my $aborted = defined $all ? scalar(@$all) - scalar(@{ $found->{msgs} }) : -1;
	note "$label: $aborted messages of aborted transactions are in the log, unseen by read_committed";
	note "$label: relay log:\n"
	  . join("\n", log_matches($node, $log_start, qr/eventpipe relay/));
	$node->stop;
	return $found;
}

my $on = scenario('on');
is($on->{duplicates}, 0, 'exactly once on: no event is on the topic twice for a read_committed reader');

my $off = scenario('off');
note "exactly once off: $off->{duplicates} duplicate copies on the topic after the same faults; on: $on->{duplicates}";
diag "duplicates prevented: the same faults left $off->{duplicates} duplicate copies with "
  . "eventpipe.relay_exactly_once off, $on->{duplicates} with it on";

ok(stop_kafka($kafka), 'Kafka stopped');
done_testing();

# t/112_progress_partitions.pl: the exactly-once relay's progress topic,
# eventpipe-relay-progress, made beforehand with several partitions (as an
# administrator may, since eventpipe makes it only if it is missing).
#  (a) the relay writes its records to partition 0 whatever the
#      partitioner: with fnv1a and a partition count chosen so that fnv1a
#      puts the relay's key elsewhere, every record is in partition 0;
#  (b) a record of that relay in another partition is outranked at
#      recovery by the one in partition 0.  A real one would be older and
#      name rows already deleted (its harm: a batch Kafka committed sent
#      again); the one written here with kcat names a row the relay has not
#      sent, so that the order of the reads shows directly: the row is sent,
#      not taken for committed and deleted.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use EventpipeTest;
use FaultTest;

my $PROGRESS = 'eventpipe-relay-progress';
my $topic    = 't112.events';

# The partition librdkafka's fnv1a partitioner gives a key: 32-bit FNV-1a,
# taken as a signed integer and made positive (rd_fnv1a), modulo the count.
sub fnv1a_partition
{
	my ($key, $partitions) = @_;
	my $h = 0x811C9DC5;
	$h = (($h ^ $_) * 0x01000193) & 0xFFFFFFFF for unpack('C*', $key);
	$h = 4294967296 - $h if $h > 2147483648;
	return $h % $partitions;
}

my $kafka = start_kafka();
my $admin = topic_admin($kafka);
my $node = new_node('main',
	bootstrap => $kafka->{bootstrap},
	conf      => "eventpipe.relay_exactly_once = on\n"
	  . "eventpipe.kafka_options = 'partitioner=fnv1a'");

# The relay's records are keyed by server, database and shard.
my $key = $node->safe_psql('postgres', 'SELECT system_identifier FROM pg_control_system()')
  . '/postgres/0';
my ($partitions) = grep { fnv1a_partition($key, $_) != 0 } 2 .. 16;
ok(create_topic($admin, $PROGRESS, $partitions, 1),
	"$PROGRESS made with $partitions partitions (fnv1a puts the relay's key in partition "
	  . fnv1a_partition($key, $partitions) . ')');
$node->safe_psql('postgres', 'CREATE EXTENSION eventpipe');
ok(wait_for_relay_state($node, 'idle'), 'the relay is idle, exactly once');

# ---- (a) records go to partition 0 -----------------------------------------

my @sent = map {
	$node->safe_psql('postgres', "SELECT eventpipe.publish('$topic', 'k$_', '{\"n\": $_}')")
} 1 .. 3;
ok(wait_until(sub { outbox_count($node) == 0 }, 60), '(a) the relay sent 3 events');
ok(ids_on_topic($kafka->{bootstrap}, $topic, \@sent, 60), '(a) all 3 are in the topic');

my $records = read_topic($kafka->{bootstrap}, $PROGRESS) // [];
my @ours = grep { ($_->{key} // '') eq $key } @$records;
ok(@ours > 0, '(a) the relay wrote progress records (' . scalar(@ours) . ')');
is(scalar(grep { $_->{partition} != 0 } @ours), 0, '(a) every one of them in partition 0');

# ---- (b) an older record elsewhere does not outrank it ---------------------

$node->safe_psql('postgres', 'SELECT eventpipe.pause_relay()');
ok(wait_for_relay_state($node, 'paused'), '(b) relay paused');
my $waiting = $node->safe_psql('postgres', "SELECT eventpipe.publish('$topic', 'late', '{}')");
my $row = $node->safe_psql('postgres', 'SELECT id || \' \' || event_id FROM eventpipe.outbox');
like($row, qr/^\d+ \S+$/, "(b) one row waits: $row");

my $stale = "$key|eventpipe-relay-progress 1\n$row\n";
my $elsewhere = $partitions - 1;
my ($ok, $out, $err) = run_kcat(
	[ '-P', '-b', $kafka->{bootstrap}, '-t', $PROGRESS, '-p', $elsewhere, '-K', '|', '-D', '#' ],
	stdin => \"$stale#");
ok($ok, "(b) a record naming that row written to partition $elsewhere") or diag $err;

my $log_at = log_position($node);
$node->safe_psql('postgres', 'SELECT eventpipe.resume_relay()');
ok(wait_until(sub { outbox_count($node) == 0 }, 60), '(b) after the recovery, the outbox is empty');
ok(ids_on_topic($kafka->{bootstrap}, $topic, [$waiting], 60),
	'(b) the waiting event was sent, not taken for committed');
unlike(log_since($node, $log_at), qr/Kafka had committed were deleted/,
	'(b) no row was deleted as committed');

$node->stop;
done_testing();

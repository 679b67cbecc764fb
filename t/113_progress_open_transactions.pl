# t/113_progress_open_transactions.pl: the exactly-once relay's recovery
# reads every record committed before it began, even below another relay's
# transaction still open in the progress topic (which every relay of every
# database and server shares).  With relay_workers = 2:
#  - shard 1 opens a transaction that stays open (its event is for a topic
#    that does not exist, on a broker that does not create topics);
#  - shard 0 then commits a batch in Kafka, but cannot delete its rows (a
#    session holds a lock on the outbox), a stand-in for a crash between
#    the two;
#  - PostgreSQL stops in immediate mode and starts with relay_workers = 1,
#    so that nothing ends shard 1's transaction but Kafka's timeout.
# A read_committed read of the progress topic ends at its last stable
# offset, below shard 1's open transaction and so below shard 0's record:
# the recovery must wait past it, find the record, and delete the rows
# instead of sending them again.  Checked with a read_committed kcat: each
# event once.
# Then, with message.max.bytes lowered to 100,000, 3,000 events in one
# commit are sent in batches whose records each fit a message.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use EventpipeTest;
use FaultTest;

my $PROGRESS = 'eventpipe-relay-progress';
my $topic    = 't113.events';
my $kafka    = start_kafka(broker_properties => ['auto.create.topics.enable=false']);
my $admin    = topic_admin($kafka);
ok(create_topic($admin, $topic, 1, 1), "topic $topic created");

# Kafka aborts the open transaction after 15 s rather than a minute.
my $node = new_node('main',
	bootstrap => $kafka->{bootstrap},
	conf      => "eventpipe.relay_exactly_once = on\neventpipe.relay_workers = 2\n"
	  . "eventpipe.kafka_options = 'transaction.timeout.ms=15000'");
$node->safe_psql('postgres', 'CREATE EXTENSION eventpipe');
ok(wait_for_relay_state($node, 'idle', worker => 0), 'shard 0 is idle');
ok(wait_for_relay_state($node, 'idle', worker => 1), 'shard 1 is idle');

sub keys_of_shard
{
	my ($shard, $prefix) = @_;
	return grep { $node->safe_psql('postgres', "SELECT eventpipe.relay_shard('$_', 0, 2)") eq $shard }
	  map { "$prefix$_" } 1 .. 40;
}
my @keys0 = (keys_of_shard(0, 'k'))[ 0 .. 4 ];
my ($key1) = keys_of_shard(1, 'x');

# Shard 1's transaction, open while librdkafka waits for the topic.
$node->safe_psql('postgres', "SELECT eventpipe.publish('t113.nowhere', '$key1', '{}')");
ok( wait_until(
		sub {
			my $all = read_topic($kafka->{bootstrap}, $PROGRESS, quiet => 1,
				kcat_options => [ '-X', 'isolation.level=read_uncommitted' ]) // [];
			my $committed = read_topic($kafka->{bootstrap}, $PROGRESS, quiet => 1) // [];
			return @$all > @$committed;
		},
		20),
	'shard 1 has a transaction open in the progress topic');

# Shard 0 commits its batch in Kafka; the lock keeps its rows in the outbox.
$node->safe_psql('postgres', 'SELECT eventpipe.pause_relay()');
ok(wait_for_relay_state($node, 'paused', worker => 0), 'shard 0 is paused');
my @ids = map { $node->safe_psql('postgres', "SELECT eventpipe.publish('$topic', '$_', '{}')") } @keys0;
my ($out, $err) = ('', '');
my $locker = IPC::Run::start(
	[ 'psql', '-X', '-q', '-d', $node->connstr('postgres'), '-c',
		'BEGIN; LOCK TABLE eventpipe.outbox IN SHARE MODE; SELECT pg_sleep(600);' ],
	'<', \undef, '>', \$out, '2>', \$err);
ok( wait_until(
		sub {
			$node->safe_psql('postgres',
				"SELECT count(*) FROM pg_locks WHERE relation = 'eventpipe.outbox'::regclass AND mode = 'ShareLock' AND granted"
			) eq '1';
		},
		20),
	'a session holds the outbox locked');
$node->safe_psql('postgres', 'SELECT eventpipe.resume_relay()');
ok(wait_until(sub { my $m = read_topic($kafka->{bootstrap}, $topic, quiet => 1) // []; @$m >= 5 }, 30),
	'shard 0 committed its batch in Kafka');
is($node->safe_psql('postgres', "SELECT count(*) FROM eventpipe.outbox WHERE topic = '$topic'"), '5',
	'and its rows are still in the outbox');

my $log = log_position($node);
$node->stop('immediate');
eval { $locker->kill_kill; };
$node->append_conf('postgresql.conf', "eventpipe.relay_workers = 1\n");
$node->start;
ok( wait_until(
		sub { $node->safe_psql('postgres', "SELECT count(*) FROM eventpipe.outbox WHERE topic = '$topic'") eq '0' },
		90),
	"the rows of $topic left the outbox");
like(log_since($node, $log), qr/5 events that Kafka had committed were deleted from the outbox/,
	'the recovery found them committed');
my $msgs = read_topic($kafka->{bootstrap}, $topic, timeout => 10) // [];
my %copies;
$copies{ $_->{headers}{ce_id} }++ for @$msgs;
is(join(' ', map { $copies{$_} // 0 } @ids), '1 1 1 1 1', 'each event is on the topic once (read_committed)');

# ---- a record that must fit a lowered message.max.bytes ------------------------
# 3,000 events in one commit: their record would take about 170 kB, and
# librdkafka refuses a message over message.max.bytes on the spot.  Batches
# are cut so that each record fits.
my $big = 't113.many';
ok(create_topic($admin, $big, 1, 1), "topic $big created");
$node->safe_psql('postgres',
	"ALTER SYSTEM SET eventpipe.kafka_options = 'transaction.timeout.ms=15000,message.max.bytes=100000';"
	  . ' SELECT pg_reload_conf();');
sleep 2;
$node->safe_psql('postgres', "SELECT eventpipe.publish('$big', 'k' || g % 50, '{}') FROM generate_series(1, 3000) g");
ok( wait_until(
		sub { $node->safe_psql('postgres', "SELECT count(*) FROM eventpipe.outbox WHERE topic = '$big'") eq '0' },
		60),
	'with message.max.bytes = 100000, the 3,000 events left the outbox')
  or diag $node->safe_psql('postgres', 'SELECT state, last_error FROM eventpipe.pg_stat_relay');
my $many = read_topic($kafka->{bootstrap}, $big, timeout => 10) // [];
my %seen;
$seen{ $_->{headers}{ce_id} }++ for @$many;
is(scalar(keys %seen) . ' ' . scalar(@$many), '3000 3000', 'each is on the topic once');

$node->stop;
ok(stop_kafka($kafka), 'Kafka stopped');
done_testing();

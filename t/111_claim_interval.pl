# t/111_claim_interval.pl: eventpipe.relay_claim_interval
# (worker/relay/relay_pipeline.c).  Under a steady stream of commits, a run
# of batches begins no sooner than the interval after the last one began,
# so the commits of an interval go out in one batch; at 0 the relay claims
# again as soon as its batch is recorded.  Batches are counted from the
# relay's DEBUG1 line for each batch it records.
#
#  (a) the setting: its default, its unit, its bounds;
#  (b) 80 commits 50 ms apart, the interval at 1 s: about one batch per
#      second of the stream, and every event delivered once;
#  (c) the same stream at 0: about one batch per commit;
#  (d) a run's last batch does not linger: with linger.ms at 2 s, a lone
#      event's batch is acknowledged well within it;
#  (e) a backlog does not wait: exactly once, where each run sends one
#      batch, 100 events in batches of 10 leave within seconds, not one
#      interval per batch.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

use EventpipeTest;

my $kafka = start_kafka();
my $bootstrap = $kafka->{bootstrap};
my $node = new_node('main',
	bootstrap     => $bootstrap,
	poll_interval => '20s',
	conf          => 'log_min_messages = debug1');
$node->safe_psql('postgres', 'CREATE EXTENSION eventpipe');
ok(wait_for_relay_state($node, 'idle'), 'relay worker is idle');

sub q1 { return $node->safe_psql('postgres', $_[0]) }

# ---- (a) the setting -------------------------------------------------------

is(q1('SHOW eventpipe.relay_claim_interval'), '3ms', '(a) 3 ms by default');
my ($rc, $out, $err) = $node->psql('postgres',
	'ALTER SYSTEM SET eventpipe.relay_claim_interval = 1001');
isnt($rc, 0, '(a) more than 1 s is refused');
like($err, qr/outside the valid range/, '(a) with the range in the error');
($rc, $out, $err) = $node->psql('postgres',
	'ALTER SYSTEM SET eventpipe.relay_claim_interval = -1');
isnt($rc, 0, '(a) a negative interval is refused');

sub set_interval
{
	my ($interval) = @_;
	q1("ALTER SYSTEM SET eventpipe.relay_claim_interval = '$interval'");
	q1('SELECT pg_reload_conf()');
	# the reload sets the relay's latch; it reads the file at that turn
	usleep(500_000);
}

# The sizes of the batches the relay recorded since $position.
sub batches_since
{
	my ($position) = @_;
	return [ log_since($node, $position) =~ /relay worker 0: batch of (\d+):/g ];
}

# One event to $topic, relayed: Kafka creates the topic before a stream.
sub warm_up
{
	my ($topic) = @_;
	my $position = log_position($node);
	q1("SELECT eventpipe.publish('$topic', 'warm-up', '{}')");
	ok(wait_until(sub { @{ batches_since($position) } > 0 }, 60),
		"$topic: a first event relayed");
}

# Commit $count events of $topic, $gap_ms apart, one per transaction.
# Returns the batches the relay recorded meanwhile, the events in them, and
# the seconds the stream lasted.
sub stream
{
	my ($topic, $count, $gap_ms) = @_;
	my $position = log_position($node);
	my $started = time();
	q1( "DO \$\$ BEGIN FOR i IN 1..$count LOOP "
		  . "PERFORM eventpipe.publish('$topic', 'k' || i, jsonb_build_object('n', i)); "
		  . "COMMIT; PERFORM pg_sleep($gap_ms / 1000.0); END LOOP; END \$\$");
	my $seconds = time() - $started;
	my ($batches, $events);
	wait_until(
		sub {
			my $sizes = batches_since($position);
			$batches = scalar @$sizes;
			$events  = 0;
			$events += $_ for @$sizes;
			return $events >= $count;
		},
		30);
	return ($batches, $events, $seconds);
}

# The events of $topic's stream on the topic: 80, each once.
sub check_topic
{
	my ($topic, $label) = @_;
	my $msgs = consume_all($bootstrap, $topic, 81, 60);
	my @streamed = grep { defined $_->{value}{n} } @$msgs;
	is(scalar @streamed, 80, "$label 80 events on the topic");
	is(scalar(keys %{ { map { $_->{value}{n} => 1 } @streamed } }),
		80, "$label each once");
}

# ---- (b) one batch per interval --------------------------------------------

set_interval('1s');
warm_up('t111.gathered');
my ($batches, $events, $seconds) = stream('t111.gathered', 80, 50);
is($events, 80, '(b) the relay recorded 80 events');
cmp_ok($batches, '<=', int($seconds) + 2,
	sprintf('(b) at most one batch per second of the %.1f s stream (%d)', $seconds, $batches));
cmp_ok($batches, '>=', 2, '(b) and more than one batch');
check_topic('t111.gathered', '(b)');

# ---- (c) 0: a batch per commit ---------------------------------------------

set_interval('0');
warm_up('t111.at_once');
($batches, $events, $seconds) = stream('t111.at_once', 80, 50);
is($events, 80, '(c) the relay recorded 80 events');
cmp_ok($batches, '>=', 30, "(c) about one batch per commit ($batches)");
check_topic('t111.at_once', '(c)');

# ---- (d) a run's last batch does not linger --------------------------------

q1("ALTER SYSTEM SET eventpipe.kafka_options = 'linger.ms=2000'");
set_interval('0');
warm_up('t111.alone');
my $position = log_position($node);
q1("SELECT eventpipe.publish('t111.alone', 'k', '{}')");
ok(wait_until(sub { @{ batches_since($position) } > 0 }, 30), '(d) a lone event relayed');
my ($await_ms) = log_since($node, $position) =~ /batch of 1: .*await ([\d.]+) ms/;
ok(defined $await_ms, '(d) its batch of 1 logged its wait for acknowledgement');
cmp_ok($await_ms // 1e9, '<', 1000, '(d) acknowledged in ' . ($await_ms // '?') . ' ms, not after linger.ms (2 s)');
q1('ALTER SYSTEM RESET eventpipe.kafka_options');

# ---- (e) a backlog does not wait -------------------------------------------

$node->append_conf('postgresql.conf',
	"eventpipe.relay_exactly_once = on\neventpipe.relay_batch_size = 10\n");
set_interval('1s');
$node->restart;
ok(wait_for_relay_state($node, 'idle'), '(e) relay worker is idle, exactly once');
warm_up('t111.backlog');
$position = log_position($node);
q1( "SELECT eventpipe.publish('t111.backlog', 'k' || i, jsonb_build_object('n', i)) "
	  . "FROM generate_series(1, 100) i");
ok(wait_until(sub { @{ batches_since($position) } >= 10 }, 60), '(e) 100 events relayed');
my @stamps = log_since($node, $position) =~
  /^\S+ (\d\d):(\d\d):(\d\d\.\d+) [^\n]*relay worker 0: batch of 10:/mg;
is(scalar @stamps, 30, '(e) in ten batches of 10');
my @at = map { $stamps[ 3 * $_ ] * 3600 + $stamps[ 3 * $_ + 1 ] * 60 + $stamps[ 3 * $_ + 2 ] }
  0 .. @stamps / 3 - 1;
my $span = $at[-1] - $at[0];
$span += 86400 if $span < 0;
cmp_ok($span, '<', 6,
	sprintf('(e) recorded within 6 s (%.1f): no interval of 1 s between full batches', $span));

$node->stop;
stop_kafka($kafka);
done_testing();

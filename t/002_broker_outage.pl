# t/002_broker_outage.pl: the relay survives Kafka outages without losing an
# event.  Kafka is stopped (scripts/kafka stop, SIGTERM) for a ~12 s outage,
# then SIGKILLed in the middle of a 10,000-event transaction's delivery.
# Messages never time out in the relay's producer (message.timeout.ms=0), so
# the batch waits for the broker: events published meanwhile stay in the
# outbox, pg_stat_relay reports the trouble (last_error, state "waiting for
# broker") without counting failures, and once the broker is back every
# event arrives (duplicates are allowed, and reported), in order per key,
# and the outbox empties.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

use EventpipeTest;

my $kafka = start_kafka();
my $node  = new_node('main', bootstrap => $kafka->{bootstrap});
$node->safe_psql('postgres', 'CREATE EXTENSION eventpipe');
ok(wait_for_relay_state($node, 'idle'), 'relay worker is idle');

my $topic = 't002.outage';
my %next_seq;    # per key, the number of its next event

# Publish $count events over $keys keys, $per_txn (default 10) per
# transaction; returns them (with their ids).
sub publish_round
{
	my ($label, $count, $keys, $per_txn) = @_;
	$per_txn //= 10;
	my (@events, $sql);
	$sql = '';
	for my $i (0 .. $count - 1)
	{
		my $key = sprintf('account-%02d', $i % $keys);
		my $seq = ++$next_seq{$key};
		$sql .= "BEGIN;\n" if $i % $per_txn == 0;
		my $ev = {
			topic   => $topic,
			key     => $key,
			payload => { round => $label, key => $key, seq => $seq }
		};
		$sql .= publish_sql($ev);
		$sql .= "COMMIT;\n" if $i % $per_txn == $per_txn - 1 || $i == $count - 1;
		push @events, $ev;
	}
	run_publish_script($node, 'postgres', $sql, \@events);
	return @events;
}

# Wait for every event of @$events on Kafka: exactly their ce_ids, right
# keys and values, duplicates allowed (and reported), per-key order of first
# arrivals; then the outbox must be empty and the relay idle.
sub check_arrival
{
	my ($label, $events) = @_;
	check_delivered($kafka->{bootstrap}, $topic, $events, $label,
		only             => 0,
		allow_duplicates => 1,
		seq              => sub { $_[0]{value}{seq} });
	ok(wait_until(sub { outbox_count($node) == 0 }, 60),
		"$label: the outbox is empty");
	ok(wait_for_relay_state($node, 'idle'), "$label: relay worker is idle");
}

# Server time as seconds since the epoch (same clock as ours, but compare
# like with like).
sub server_now
{
	return $node->safe_psql('postgres', 'SELECT extract(epoch FROM clock_timestamp())');
}

sub last_error_since
{
	my ($since) = @_;
	return $node->safe_psql('postgres',
		"SELECT last_error IS NOT NULL AND last_error_time >= to_timestamp($since)"
		  . ' FROM eventpipe.pg_stat_relay WHERE worker = 0') eq 't';
}

# ---- with the broker up -------------------------------------------------

my @before = publish_round('before', 50, 10);
check_arrival('before any outage', \@before);

# ---- outage 1: scripts/kafka stop, about 12 s ----------------------------

my $t_stop = server_now();
my $wall_stop = time();
ok(stop_kafka($kafka), 'Kafka stopped (SIGTERM)');
ok(wait_until(sub { last_error_since($t_stop) }, 30),
	'pg_stat_relay reports the broker error while the relay is idle');
note 'last_error: ' . relay_stat($node, 'last_error');

my @during_stop = publish_round('stopped', 200, 10);
my $n = scalar @during_stop;
is(outbox_count($node), $n, "the $n events published during the outage are in the outbox");
ok( wait_until(
		sub {
			relay_stat($node, 'state') =~ /^(relaying|waiting for broker)$/;
		},
		10),
	'pg_stat_relay shows the relay busy with them, not idle');
is(relay_stat($node, 'backlog'), $n, "pg_stat_relay.backlog is $n");

# Keep the broker down for at least 12 s; nothing may leave the outbox.
my $min_outbox = $n;
while (time() - $wall_stop < 12)
{
	my $c = outbox_count($node);
	$min_outbox = $c if $c < $min_outbox;
	usleep(500_000);
}
is($min_outbox, $n, 'no event left the outbox while the broker was down');
like(relay_stat($node, 'state'), qr/^(relaying|waiting for broker)$/,
	'relay still relaying or waiting at the end of the outage');
note sprintf('outage 1 lasted %.1f s', time() - $wall_stop);

ok(restart_kafka($kafka), 'Kafka started again');
check_arrival('after the SIGTERM outage', \@during_stop);

# ---- outage 2: SIGKILL in mid-batch, 12 s or more ----

# A big transaction is on its way when the broker dies: once Kafka has
# acknowledged a first batch of it (events_sent grew), the next one is in
# flight.
my $failed_before = relay_stat($node, 'events_failed');
my $sent_before   = relay_stat($node, 'events_sent');
my $big           = 10000;
my $kafka_pid     = kafka_node_pid($kafka, 1);
my $t_kill        = server_now();
my @in_flight     = publish_round('in flight', $big, 10, $big);
my $deadline      = time() + 60;
my $sent_seen;
usleep(2_000)
  while ($sent_seen = relay_stat($node, 'events_sent')) == $sent_before && time() < $deadline;
# SIGKILL at once (scripts/kafka would take a moment), then let the script
# see that the node is gone.
ok(kill('KILL', $kafka_pid), 'Kafka node 1 killed (SIGKILL) while relaying');
isnt($sent_seen, $sent_before, '... once Kafka had acknowledged a first batch of them');
my $wall_kill = time();
ok(kill_kafka_node($kafka, 1), 'scripts/kafka kill 1 agrees');
my @during_kill = publish_round('killed', 200, 10);

# Acknowledged rows may still be being deleted for a moment; after that
# only the rows of events Kafka acknowledged before it died may leave the
# outbox (once the batch's last delivery report is in), so outbox rows +
# events_sent stays constant until the broker is back.
usleep(1_000_000);
my $left      = outbox_count($node);
my $sent_left = relay_stat($node, 'events_sent');
note "outage 2: $left events in the outbox, "
  . ($big - ($left - @during_kill))
  . ' of the big transaction were acknowledged before the kill';
cmp_ok($left, '>=', scalar @during_kill,
	'the events published after the kill are in the outbox');

# The batch in flight waits for the broker: the relay says so, records the
# broker's error, counts no failure and keeps every unacknowledged row.
ok(wait_for_relay_state($node, 'waiting for broker', timeout => 30),
	'pg_stat_relay.state is "waiting for broker"');
ok(last_error_since($t_kill), 'pg_stat_relay.last_error is set since the kill');
note 'last_error: ' . relay_stat($node, 'last_error');
usleep(100_000) while time() - $wall_kill < 12;
is(relay_stat($node, 'events_failed'), $failed_before,
	'no delivery counted as failed: the batch waits, it does not time out');
my $acked_late = relay_stat($node, 'events_sent') - $sent_left;
note "outage 2: $acked_late events of the stuck batch had been acknowledged";
my $expect_left = $left - $acked_late;
ok(wait_until(sub { outbox_count($node) == $expect_left }, 10),
	"the unacknowledged events are still in the outbox ($expect_left)")
  or diag 'outbox has ' . outbox_count($node);
is(relay_stat($node, 'backlog'), $expect_left, "pg_stat_relay.backlog is $expect_left");
cmp_ok($expect_left, '>=', scalar @during_kill, 'no event published after the kill left');
like(relay_stat($node, 'state'), qr/^(relaying|waiting for broker)$/,
	'relay relaying or waiting for the broker, not idle');
note sprintf('outage 2 lasted %.1f s', time() - $wall_kill);

ok(start_kafka_node($kafka, 1), 'Kafka node 1 started again');
check_arrival('after the SIGKILL outage', [ @in_flight, @during_kill ]);

# Everything, once more: all events of the test are on the topic.
my @all = (@before, @during_stop, @in_flight, @during_kill);
my $msgs = consume_ids($kafka->{bootstrap}, $topic, [ map { $_->{id} } @all ], 60);
my $by   = by_ce_id($msgs);
is(scalar(grep { $by->{ $_->{id} } } @all), scalar @all,
	'all events of the test are on Kafka');
is(scalar(keys %$by), scalar @all, 'and nothing else');
cmp_ok(relay_stat($node, 'events_sent'), '>=', scalar @all,
	'pg_stat_relay.events_sent counts them all');

unlike(log_since($node, 0), qr/terminated by signal|PANIC|exited with exit code/,
	'the relay worker never crashed');

ok(stop_kafka($kafka), 'Kafka stopped');
$node->stop;
done_testing();

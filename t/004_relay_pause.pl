# t/004_relay_pause.pl: pause_relay() stops the relay from its next batch on
# and resume_relay() starts it again, with nothing lost or doubled:
#  (a) events published before the pause arrive; after it, pg_stat_relay
#      says "paused" and events published meanwhile stay in the outbox
#      (none reaches the topic), however many commits wake the relay;
#  (b) the pause outlives a restart of PostgreSQL;
#  (c) resume_relay() sends every held event, once each, in per-key order,
#      without waiting for the poll interval (set to an hour here);
#  (d) a pause taken while a backlog of 200,000 events is being relayed
#      stops it part way, and the rest arrives after the resume: each event
#      once, in per-key order.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use EventpipeTest;

my $kafka = start_kafka();
my $node  = new_node(
	'pause',
	bootstrap => $kafka->{bootstrap},
	conf      => "eventpipe.relay_batch_size = 100\n"
	  # statistics every 0.5 s, so that a client's row shows soon after it is made
	  . "eventpipe.kafka_options = 'statistics.interval.ms=500'");
$node->safe_psql('postgres', 'CREATE EXTENSION eventpipe');
ok(wait_for_relay_state($node, 'idle'), 'relay worker is idle');

# The relay takes a turn at least every $interval: commits do not wake a
# paused relay, so this is what puts a paused relay to the test.
sub set_poll_interval
{
	my ($interval) = @_;
	$node->safe_psql('postgres', "ALTER SYSTEM SET eventpipe.relay_poll_interval = '$interval'");
	$node->reload;
}
set_poll_interval('100ms');

my $topic = 't004.orders';

# publish N events of 10 keys, payload {"key", "seq"}; returns their ids
sub publish_events
{
	my ($count, $from) = @_;
	my $ids = $node->safe_psql(
		'postgres', qq{
		SELECT eventpipe.publish('$topic', 'k' || (g % 10),
		                         jsonb_build_object('key', 'k' || (g % 10), 'seq', g / 10))
		  FROM generate_series($from, $from + $count - 1) g ORDER BY g});
	return [ split /\n/, $ids ];
}

# ---- (a) -------------------------------------------------------------------
my @before = @{ publish_events(20, 1) };
ok(wait_until(sub { outbox_count($node) == 0 }, 60), '(a) events before the pause leave');
my $relay_client_rows =
  "SELECT count(*) FROM eventpipe.kafka_statistics() WHERE client_id = 'eventpipe-relay-postgres-0'";
ok(wait_until(sub { $node->safe_psql('postgres', $relay_client_rows) == 1 }, 30),
	'(a) while it relays, the relay holds a Kafka client (its statistics)');
ok($node->safe_psql('postgres', 'SELECT eventpipe.pause_relay() IS NOT NULL') eq 't',
	'(a) pause_relay() returns its time');
ok(wait_for_relay_state($node, 'paused'), '(a) pg_stat_relay says paused');

my @held;
for my $i (0 .. 9)    # ten commits
{
	push @held, @{ publish_events(10, 21 + 10 * $i) };
}
sleep 3;
is(outbox_count($node), 100, '(a) the 100 events published while paused wait in the outbox');
is($node->safe_psql('postgres', $relay_client_rows),
	0, '(a) a paused relay holds no Kafka client (no statistics)');
is(relay_stat($node, 'state'), 'paused', '(a) still paused after 3 s of turns every 100 ms');
my $msgs = consume_all($kafka->{bootstrap}, $topic, 20, 30);
my %on_topic = map { $_->{ce_id} => 1 } @$msgs;
is(scalar(grep { $on_topic{$_} } @held), 0, '(a) none of them reached the topic');
is(scalar(@$msgs), 20, '(a) the topic holds only the 20 events from before');

# ---- (b) -------------------------------------------------------------------
$node->restart;
ok(wait_for_relay_state($node, 'paused'), '(b) still paused after a restart');
sleep 2;
is(outbox_count($node), 100, '(b) the events still wait');
# two rows a superuser inserts, with times before 2000 and before 1970
# (negative in PostgreSQL's and in Unix's count of microseconds)
$node->safe_psql('postgres',
	q{INSERT INTO eventpipe.outbox (event_id, topic, key, payload, event_type, created_at)
	  VALUES (gen_random_uuid(), 't004.old', 'y2k', '{}', 'eventpipe.event', '1999-12-31 23:59:59.000001+00'),
	         (gen_random_uuid(), 't004.old', 'moon', '{}', 'eventpipe.event', '1969-07-20 20:17:40.5+00')});
# each message's ce_time is its row's created_at to the microsecond
my %ce_time_of = split /[|\n]/, $node->safe_psql('postgres',
	q{SELECT event_id || '|' || to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
	    FROM eventpipe.outbox});

# ---- (c) -------------------------------------------------------------------
# only the resume may wake the relay now
set_poll_interval('1h');
is($node->safe_psql('postgres', 'SELECT eventpipe.resume_relay()'), 't',
	'(c) resume_relay() says the relay was paused');
ok(wait_until(sub { outbox_count($node) == 0 }, 30),
	'(c) the held events leave at once (the poll interval is an hour)');
push @held, @{ publish_events(1, 121) };
ok(wait_until(sub { outbox_count($node) == 0 }, 30),
	'(c) an event published right after the resume wakes the relay too');
my @all = (@before, @held);
$msgs = consume_ids($kafka->{bootstrap}, $topic, \@all, 60);
my %copies;
$copies{ $_->{ce_id} }++ for @$msgs;
is(scalar(grep { $copies{$_} } @all), 121, '(c) all 121 events are on the topic');
is(scalar(@$msgs), 121, '(c) each once, and nothing else');
my $seq_of = sub { $_[0]{value} ? $_[0]{value}{seq} : undef };
is(scalar(check_key_order($msgs, $seq_of)), 0, '(c) in per-key order');
my $old = consume_all($kafka->{bootstrap}, 't004.old', 2, 30);
is(scalar(grep { $ce_time_of{ $_->{ce_id} // '' } } @$old), 2, '(c) the two rows of 1999 and 1969 were sent');
is(scalar(grep { $ce_time_of{ $_->{ce_id} // '' } } @$msgs), 100, '(c) the 100 held events\' rows were read');
my @wrong_time = map { "$_->{ce_id}: $_->{headers}{ce_time}, created at $ce_time_of{$_->{ce_id}}" }
  grep { $ce_time_of{ $_->{ce_id} // '' } && ($_->{headers}{ce_time} // '') ne $ce_time_of{ $_->{ce_id} } }
  (@$msgs, @$old);
is(scalar(@wrong_time), 0, '(c) each ce_time is its event\'s created_at, to the microsecond')
  or diag join("\n", @wrong_time[ 0 .. ($#wrong_time < 4 ? $#wrong_time : 4) ]);
is($node->safe_psql('postgres', 'SELECT eventpipe.resume_relay()'), 'f',
	'(c) a second resume_relay() says it was not paused');

# ---- (d) -------------------------------------------------------------------
set_poll_interval('100ms');
my $topic_d = 't004.backlog';
$node->safe_psql('postgres', 'SELECT eventpipe.pause_relay()');
ok(wait_for_relay_state($node, 'paused'), '(d) paused');
$node->safe_psql(
	'postgres', qq{
	SELECT eventpipe.publish('$topic_d', 'k' || (g % 10), jsonb_build_object('key', 'k' || (g % 10), 'seq', g / 10))
	  FROM generate_series(1, 200000) g ORDER BY g});
$node->safe_psql('postgres', 'SELECT eventpipe.resume_relay()');
ok(wait_until(sub { outbox_count($node) < 200000 }, 60), '(d) the backlog starts to leave');
$node->safe_psql('postgres', 'SELECT eventpipe.pause_relay()');
ok(wait_for_relay_state($node, 'paused'), '(d) paused part way');
my $left = outbox_count($node);
ok($left > 0, '(d) the pause came before the end of the backlog');
sleep 2;
is(outbox_count($node), $left, "(d) nothing leaves while paused ($left of 200000 left)");
$node->safe_psql('postgres', 'SELECT eventpipe.resume_relay()');
ok(wait_until(sub { outbox_count($node) == 0 }, 180), '(d) the rest leaves after the resume');
# 200,000 messages: read with the fast reader, numbers taken from the
# payload text rather than decoded JSON
my $backlog = read_topic($kafka->{bootstrap}, $topic_d, fast => 1, timeout => 180)
  // die "kcat could not read $topic_d";
my $backlog_seq = sub { ($_[0]{payload} // '') =~ /"seq": (\d+)/ ? $1 : undef };
my %seen;
$seen{ $_->{ce_id} // '' }++ for @$backlog;
my @unnumbered =
  grep { !defined $backlog_seq->($_) || ($_->{ce_id} // '') !~ /^[0-9a-f-]{36}$/ } @$backlog;
is(scalar(@unnumbered), 0, '(d) every message has its ce_id and its number');
is(scalar(keys %seen), 200000, '(d) all 200,000 events are on the topic');
is(scalar(grep { $_ > 1 } values %seen), 0, '(d) none twice');
my @disorder = check_key_order($backlog, $backlog_seq);
is(scalar(@disorder), 0, '(d) in per-key order')
  or diag join("\n", @disorder[ 0 .. ($#disorder < 9 ? $#disorder : 9) ]);

$node->stop;
ok(stop_kafka($kafka), 'Kafka stopped');
done_testing();

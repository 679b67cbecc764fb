# t/109_batch_bytes.pl: a relay batch stops once its events hold 32 MB of
# the relay's memory, whatever eventpipe.relay_batch_size allows, and a
# batch stopped there counts as full: the relay claims the next one at once
# instead of waiting for a commit or its poll interval (an hour here).
#  (a) 40 events of 900 kB in one commit (36 MB of text): they leave in
#      more than one batch, all at once, each once;
#  (b) the same while another key's event waits for a retry, so that the
#      SQL claim (not the one from C) reads the outbox.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use EventpipeTest;

my $kafka = start_kafka();
my $node  = new_node('main',
	bootstrap     => $kafka->{bootstrap},
	poll_interval => '1h',
	conf          => "log_min_messages = debug1");
$node->safe_psql('postgres', 'CREATE EXTENSION eventpipe');
ok(wait_for_relay_state($node, 'idle'), 'relay worker is idle');

my $events = 40;
my $blob   = 900_000;

# Publish $events events of $blob bytes to $topic in one commit; wait for
# the outbox to hold only $left rows; the batch sizes the relay logged.
sub relay_big_events
{
	my ($topic, $left, $what) = @_;
	my $log = log_position($node);
	$node->safe_psql('postgres',
		"SELECT count(eventpipe.publish('$topic', 'k' || g, jsonb_build_object('n', g, 'blob', repeat('x', $blob))))
		   FROM generate_series(1, $events) g");
	ok(wait_until(sub { outbox_count($node) == $left }, 60),
		"$what all $events events leave without waiting for the poll interval");
	my @sizes = log_since($node, $log) =~ /batch of (\d+): claim/g;
	return \@sizes;
}

sub check_topic_holds
{
	my ($topic, $what) = @_;
	my $msgs = read_topic($kafka->{bootstrap}, $topic, fast => 1, timeout => 120) // [];
	my %n;
	$n{$_}++ for map { ($_->{payload} // '') =~ /"n": (\d+)/ ? $1 : () } @$msgs;
	is(scalar(@$msgs), $events, "$what $events messages on the topic");
	is(scalar(grep { ($n{$_} // 0) == 1 } 1 .. $events), $events, "$what each event once");
}

# What the batches of these events must look like: each event holds at
# least its payload's text in the relay's memory, and less than twice it
# (the text's buffer is sized from the jsonb), so a batch that the 32 MB
# bound stopped holds between $least and $most of them.
my $cap  = 32 * 1024 * 1024;
my $text = $node->safe_psql('postgres',
	"SELECT length(jsonb_build_object('n', 10, 'blob', repeat('x', $blob))::text)");
my $most  = int($cap / $text) + 1;
my $least = int($cap / (2 * $text)) + 1;

sub check_batches
{
	my ($sizes, $what) = @_;
	my $total = 0;
	$total += $_ for @$sizes;
	is($total, $events, "$what the logged batches hold the $events events");
	cmp_ok(scalar(@$sizes), '>=', 2, "$what in more than one batch (@$sizes)");
	is(scalar(grep { $_ < $least || $_ > $most } @$sizes[ 0 .. $#$sizes - 1 ]),
		0, "$what each batch but the last stopped at 32 MB ($least to $most events)");
}

# ---- (a) -------------------------------------------------------------------
my $sizes = relay_big_events('t109.big', 0, '(a)');
check_batches($sizes, '(a)');
check_topic_holds('t109.big', '(a)');

# ---- (b) -------------------------------------------------------------------
# another key's event with a retry scheduled an hour away
$node->safe_psql('postgres', 'SELECT eventpipe.pause_relay()');
ok(wait_for_relay_state($node, 'paused'), '(b) paused while the retry is set up');
$node->safe_psql('postgres',
	q{SELECT eventpipe.publish('t109.waiting', 'other', '{}');
	  UPDATE eventpipe.outbox SET attempts = 1, next_attempt_at = now() + interval '1 hour'});
$node->safe_psql('postgres', 'SELECT eventpipe.resume_relay()');
ok(wait_for_relay_state($node, 'idle'), '(b) idle again');
is($node->safe_psql('postgres', 'SELECT count(*) FROM eventpipe.outbox WHERE next_attempt_at IS NOT NULL'),
	1, '(b) one event waits for its retry');
$sizes = relay_big_events('t109.big2', 1, '(b)');
check_batches($sizes, '(b) the SQL claim:');
check_topic_holds('t109.big2', '(b)');

done_testing();

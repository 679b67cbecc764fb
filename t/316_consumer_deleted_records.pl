# t/316_consumer_deleted_records.pl: records deleted from Kafka (retention,
# or kafka-delete-records) while a subscription is away, so that the offset
# stored in the database lies before the partition's first record.
#  - Both start_from 'earliest' and 'latest' subscriptions resume at the
#    first record still there: nothing that remains on the topic is skipped
#    (start_from decides where a partition starts once, at its first
#    assignment; an offset out of range is never a reason to jump to the
#    end).  The records deleted before they were read are, of course, gone.
#  - replay() from offset 0 starts at the first record still there, and
#    every event it brings again is a duplicate.
#  - Records deleted while nothing new follows them: on its return the
#    subscription stores the partition's first offset at once (it has
#    caught up, its lag is 0), it does not wait for a message to store.
#  - A stored offset past the partition's end (the topic made again):
#    the partition resumes at its first record, applied once, and that is
#    stored, so a later assignment does not read the partition again.
#  - The topic deleted and made again while a subscription reads it: its
#    new records, from offset 0, are applied, and the offset stored is the
#    new topic's, so a later assignment skips none of them.
#  Each out-of-range offset is reported with a WARNING.
# Records are deleted with Kafka's own AdminClient (deleteRecords).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use EventpipeTest;
use FaultTest qw(topic_admin create_topic delete_topic delete_records end_offsets);
use ConsumerTest;

my $kafka     = start_kafka();
my $bootstrap = $kafka->{bootstrap};
my $node      = new_node('deleted', bootstrap => $bootstrap);
my $db        = 'postgres';
my $topic     = 't316.deleted';
my $admin     = topic_admin($kafka);
ensure_topic($bootstrap, $topic);

my @subs = qw(early late);
$node->safe_psql($db, q{
CREATE EXTENSION eventpipe;
CREATE TABLE hits_early (k text PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
CREATE TABLE hits_late (k text PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
});
$node->safe_psql($db, qq{
BEGIN;
SELECT eventpipe.subscribe('early', ARRAY['$topic'], start_from => 'earliest');
SELECT eventpipe.subscribe('late', ARRAY['$topic'], start_from => 'latest');
SELECT eventpipe.add_metric('early', 'Hit', 'hits_early', 'k', 'n');
SELECT eventpipe.add_metric('late', 'Hit', 'hits_late', 'k', 'n');
COMMIT;
});
# 'latest' stores where each partition starts at its first assignment
ok( wait_until(
		sub {
			$node->safe_psql($db,
				"SELECT count(*) FROM eventpipe.consumer_offsets WHERE subscription = 'late'") == 3;
		},
		60),
	"the 'latest' subscription stored its three partitions' start");

my $sent = 0;

sub produce_hits
{
	my ($count) = @_;
	my @messages = map {
		my $i = $sent + $_;
		{ key => "m-$i", value => qq({"type": "Hit", "k": "all", "i": $i}) }
	} 1 .. $count;
	$sent += $count;
	produce_messages($bootstrap, $topic, \@messages);
}

sub hits
{
	my ($sub) = @_;
	return $node->safe_psql($db, "SELECT coalesce(sum(n), 0) FROM hits_$sub");
}

sub set_paused
{
	my ($pause) = @_;
	my $function = $pause ? 'pause' : 'resume';
	$node->safe_psql($db, "SELECT eventpipe.$function('$_')") for @subs;
	return wait_until(
		sub {
			my $states = $node->safe_psql($db,
				"SELECT string_agg(DISTINCT state, ',') FROM eventpipe.pg_stat_consumer WHERE subscription IN ('early', 'late')"
			);
			return $pause ? $states eq 'paused' : ($states ne '' && $states !~ /paused/);
		},
		60);
}

# A: read by both
produce_hits(30);
ok(wait_caught_up($node, $db, $_, $bootstrap, [$topic]), "$_: caught up with the first 30 events") for @subs;
is(hits($_), 30, "$_: 30 events applied") for @subs;

# B: produced while both are paused, then deleted before they could read it
ok(set_paused(1), 'both subscriptions paused');
produce_hits(30);
my $end_b = end_offsets($bootstrap, $topic, 3);
is(scalar keys %$end_b, 3, 'end offsets of the three partitions known');
ok(delete_records($admin, $topic, $_, $end_b->{$_}), "partition $_: records before $end_b->{$_} deleted")
  for sort keys %$end_b;

# C: produced after the deletion, still on the topic when they come back
produce_hits(30);
my $stored = db_offsets($node, $db, 'late', $topic);
ok((grep { $stored->{$_} < $end_b->{$_} } keys %$end_b) > 0,
	"'late' has a stored offset before its partition's first record now");

ok(set_paused(0), 'both subscriptions resumed');
for my $sub (@subs)
{
	ok(wait_caught_up($node, $db, $sub, $bootstrap, [$topic]), "$sub: caught up with the topic's end again");
	is(hits($sub), 60, "$sub: the 30 events still on the topic applied; the 30 deleted unread are gone");
}

# replay from 0 starts at the first record there, and brings only duplicates
my $duplicates_before = consumer_stats($node, $db)->{early}{duplicates};
$node->safe_psql($db, "SELECT eventpipe.replay('early', '$topic', $_, 0)") for 0 .. 2;
ok( wait_until(sub { consumer_stats($node, $db)->{early}{duplicates} - $duplicates_before == 30 }, 60),
	'replay from offset 0: the 30 events still on the topic came again, each a duplicate');
ok(wait_caught_up($node, $db, 'early', $bootstrap, [$topic]), 'early: caught up after the replay');
is(hits('early'), 60, 'early: the replay changed no metric');


# D: deleted while both are paused, and nothing after it
my $log_at = log_position($node);
ok(set_paused(1), '(d) both subscriptions paused again');
produce_hits(12);
my $end_d = end_offsets($bootstrap, $topic, 3);
ok(delete_records($admin, $topic, $_, $end_d->{$_}), "(d) partition $_: records before $end_d->{$_} deleted")
  for sort keys %$end_d;
ok(set_paused(0), '(d) both subscriptions resumed');
for my $sub (@subs)
{
	ok(wait_caught_up($node, $db, $sub, $bootstrap, [$topic], 60),
		"(d) $sub: stored the partitions' first offsets with no message to read");
	my $lags = "SELECT count(*) FILTER (WHERE lag <> 0) || '/' || count(*) FROM eventpipe.pg_stat_consumer WHERE subscription = '$sub'";
	ok(wait_until(sub { $node->safe_psql($db, $lags) eq '0/3' }, 30),
		"(d) $sub: pg_stat_consumer shows no lag on its three partitions")
	  or diag $node->safe_psql($db,
		"SELECT partition, committed_offset, high_watermark, lag FROM eventpipe.pg_stat_consumer WHERE subscription = '$sub' ORDER BY 1");
	is(hits($sub), 60, "(d) $sub: nothing applied (the 12 events were deleted unread)");
}
like(log_since($node, $log_at), qr/the stored offset \d+ of partition \d of topic "t316\.deleted" is outside what Kafka holds/,
	'(d) the out-of-range offsets were reported');

# E: stored offsets past the partitions' ends, as after the topic was made again
$log_at = log_position($node);
ok(set_paused(1), '(e) both subscriptions paused again');
produce_hits(15);
$node->safe_psql($db,
	"UPDATE eventpipe.consumer_offsets SET next_offset = next_offset + 1000 WHERE topic = '$topic'");
ok(set_paused(0), '(e) both subscriptions resumed');
for my $sub (@subs)
{
	ok(wait_caught_up($node, $db, $sub, $bootstrap, [$topic], 60),
		"(e) $sub: its stored offsets are the partitions' ends again, not past them");
	is(hits($sub), 75, "(e) $sub: the 15 events applied once");
}
like(log_since($node, $log_at), qr/is outside what Kafka holds \(first \d+, end \d+\)/,
	'(e) the offsets past the end were reported');
sub seen
{
	my ($sub) = @_;
	my $stats = consumer_stats($node, $db)->{$sub};
	return "$stats->{events_applied} applied, $stats->{duplicates} duplicates";
}
my %seen = map { $_ => seen($_) } @subs;
ok(set_paused(1) && set_paused(0), '(e) paused and resumed once more: a new assignment');
ok(wait_caught_up($node, $db, $_, $bootstrap, [$topic], 60), "(e) $_: caught up after the new assignment") for @subs;
sleep 2;
is(seen($_), $seen{$_}, "(e) $_: the new assignment read nothing again") for @subs;
is(hits($_), 75, "(e) $_: metrics unchanged") for @subs;

# F: the topic deleted and made again while a subscription reads it.  The
# new topic's records start over at offset 0, below the 40 stored for the
# old one: whether librdkafka goes back to them by itself or a new
# assignment finds 40 past the end, the stored offset must become the new
# topic's, or the next assignment would resume at 40 and skip records.
my $remade = 't316.remade';
ok(create_topic($admin, $remade, 1, 1), '(f) a topic of one partition');
ensure_topic($bootstrap, $remade, partitions => 1);
$node->safe_psql($db, qq{
CREATE TABLE hits_remade (k text PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
SELECT eventpipe.subscribe('remade', ARRAY['$remade'], dedup_field => 'event_id');
SELECT eventpipe.add_metric('remade', 'Hit', 'hits_remade', 'k', 'n');
});

sub produce_remade
{
	my ($from, $count) = @_;
	produce_messages($bootstrap, $remade,
		[ map { { key => "r-$_", value => qq({"type": "Hit", "k": "all", "event_id": "r-$_"}) } } $from .. $from + $count - 1 ]);
}
sub remade_hits { return $node->safe_psql($db, 'SELECT coalesce(sum(n), 0) FROM hits_remade') }

produce_remade(1, 40);
ok(wait_until(sub { remade_hits() == 40 }, 60), '(f) 40 events of the first topic applied');
$log_at = log_position($node);
ok(delete_topic($admin, $remade), '(f) the topic deleted');
ok(wait_until(sub { create_topic($admin, $remade, 1, 1) }, 60), '(f) and made again');
ensure_topic($bootstrap, $remade, partitions => 1);
produce_remade(41, 25);
ok(wait_until(sub { remade_hits() == 65 }, 90), '(f) the 25 events of the new topic applied');
ok(wait_until(sub { (db_offsets($node, $db, 'remade', $remade)->{0} // -1) == 25 }, 30),
	'(f) the stored offset is the new topic\'s end, 25, not the old topic\'s 40')
  or diag 'stored: ' . (db_offsets($node, $db, 'remade', $remade)->{0} // 'none');
like(log_since($node, $log_at),
	qr/partition 0 of topic "t316\.remade" (went back from offset 40 to 0|is outside what Kafka holds)/,
	'(f) the offset going back was reported');
$node->safe_psql($db, "SELECT eventpipe.pause('remade')");
ok(wait_until(sub {
	$node->safe_psql($db, "SELECT string_agg(DISTINCT state, ',') FROM eventpipe.pg_stat_consumer WHERE subscription = 'remade'") eq 'paused' }, 60),
	'(f) paused');
produce_remade(66, 30);
$node->safe_psql($db, "SELECT eventpipe.resume('remade')");
ok(wait_until(sub { remade_hits() == 95 }, 90),
	'(f) resumed, a new assignment: the 30 events after it applied, none skipped')
  or diag 'applied: ' . remade_hits();

$node->stop('fast');
done_testing();

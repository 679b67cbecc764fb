# t/402_consumer_operations.pl: operating the consumer from SQL, against a
# real broker, counting exactly at every step.
#
# One subscription reads two topics of 3 partitions: t402.ops (product
# events, all matched by rules) and t402.fragile (events whose handler
# raises until a flag row exists).  In turn:
#   - pg_stat_consumer: per partition, events_applied, committed_offset and
#     high_watermark equal what kcat finds in the topic, and lag drops to 0;
#   - pause(): state 'paused', events produced meanwhile are not applied,
#     the lag of each partition grows to exactly the messages produced; a
#     worker started meanwhile is paused too;
#   - resume(): the metrics are exact again, the lag back to 0;
#   - the worker killed: the per-partition counters survive its restart;
#   - replay() of partition 0 from offset 0: metrics unchanged, that
#     partition's duplicates grow by exactly its number of messages; a
#     replay from past the end of a partition starts at its end;
#   - poison messages dead-lettered (with CloudEvents headers only, so a
#     retry must read the stored headers); a retry before the fix fails
#     again and keeps its row with the new error; after the fix a retry
#     applies each event once and removes the row, and a second copy of an
#     applied event, retried, counts as a duplicate; a rule whose target
#     column changes type and back dead-letters its message, then applies
#     it when retried, in the same worker;
#   - stat_reset(): every per-partition counter back to zero, then counting
#     again exactly.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use EventpipeTest;
use ConsumerTest;
use FaultTest qw(end_offsets);

my $kafka     = start_kafka();
my $bootstrap = $kafka->{bootstrap};
my $node      = new_node('main', bootstrap => $bootstrap);
my $db        = 'postgres';
my $topic     = 't402.ops';
my $fragile   = 't402.fragile';
my $sub       = 'ops';
my $json      = JSON::PP->new->utf8;
my $new_pid;

$node->safe_psql($db, 'CREATE EXTENSION eventpipe');
$node->safe_psql($db, metrics_sql() . q{
CREATE TABLE fragile_ready (ready boolean);
CREATE TABLE fragile_applied (event_id text NOT NULL, product_id text NOT NULL);
CREATE FUNCTION apply_fragile(payload jsonb, metadata jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM public.fragile_ready) THEN
        RAISE EXCEPTION 'fragile event % refused: not ready', metadata ->> 'id';
    END IF;
    INSERT INTO public.fragile_applied VALUES (metadata ->> 'id', payload ->> 'product_id');
END
$$;
});
ensure_topic($bootstrap, $_) for $topic, $fragile;

my $log_start = log_position($node);
my $pid = start_subscription($node, $db, $sub, [ $topic, $fragile ],
	subscribe => "batch_size => 200, dedup_field => 'event_id'",
	handlers  => [ [ 'Fragile', 'apply_fragile(jsonb, jsonb)' ] ]);

# ---- helpers ----------------------------------------------------------------

# pg_stat_consumer's rows of $sub for $t: {partition => row}.
sub partition_rows
{
	my ($t) = @_;
	my $out = $node->safe_psql($db,
		q{SELECT coalesce(json_agg(s), '[]') FROM eventpipe.pg_stat_consumer AS s WHERE subscription = }
		  . sql_quote($sub) . ' AND topic = ' . sql_quote($t));
	return { map { $_->{partition} => $_ } @{ $json->decode($out) } };
}

# "p:value" for each partition of $t, of one column; for messages.
sub column_of
{
	my ($rows, $column) = @_;
	return join(' ', map { "$_:" . ($rows->{$_}{$column} // 'NULL') } sort keys %$rows);
}

sub ends
{
	my ($t) = @_;
	my $end = end_offsets($bootstrap, $t, 3);
	die "no end offsets for $t" unless keys %$end == 3;
	return $end;
}

# "p:n" for each partition: the expected value of a column.
sub expect_of
{
	my ($by_partition) = @_;
	return join(' ', map { "$_:$by_partition->{$_}" } sort keys %$by_partition);
}

sub diff_of
{
	my ($after, $before) = @_;
	return { map { $_ => $after->{$_} - ($before->{$_} // 0) } keys %$after };
}

# Wait until pg_stat_consumer shows, for every partition of $t, $column
# equal to the expected value; then one test comparing them.
sub wait_column
{
	my ($t, $column, $want, $label, $timeout) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $expected = expect_of($want);
	my $got = '';
	wait_until(sub { $got = column_of(partition_rows($t), $column); $got eq $expected }, $timeout // 60);
	return is($got, $expected, $label);
}

# retry_consumer_dead($args) queues $n dead letters (one test), and the
# worker applies them: the rows $where selects are gone (one test).
sub retry_until_gone
{
	my ($args, $n, $where, $what) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	is($node->safe_psql($db, "SELECT eventpipe.retry_consumer_dead($args)"), $n,
		"retry_consumer_dead() of $what queues $n dead letter(s)");
	ok(wait_until(sub {
			$node->safe_psql($db, "SELECT count(*) FROM eventpipe.consumer_dead_letters WHERE $where") eq '0'
		}, 60), "$what: applied, the dead letter row(s) deleted");
	return;
}

# What the fragile handler applied: "id:product" in id order.
sub fragile_applied
{
	return $node->safe_psql($db,
		q{SELECT string_agg(event_id || ':' || product_id, ',' ORDER BY event_id) FROM fragile_applied});
}

sub stats_total
{
	my ($column) = @_;
	return consumer_stat($node, $db, $sub, $column);
}

# ---- counters and lag as events flow ----------------------------------------

my $first = make_events(prefix => 'a', count => 600, products => 12, seed => 402);
produce_events($bootstrap, $topic, $first);
ok(wait_caught_up($node, $db, $sub, $bootstrap, [ $topic, $fragile ], 180),
	'the worker consumed the first 600 events');
my $end1 = ends($topic);
is(scalar(grep { $end1->{$_} > 0 } keys %$end1), 3, 'the events are spread over the 3 partitions');
check_product_metrics($node, $db, expected_metrics($first), 'product_metrics holds exactly the first events');

my $rows = partition_rows($topic);
is(scalar keys %$rows, 3, "pg_stat_consumer: one row per partition of $topic");
is(column_of($rows, 'events_applied'), expect_of($end1),
	'events_applied per partition = the messages kcat finds in it');
is(column_of($rows, 'committed_offset'), expect_of($end1), 'committed_offset per partition = its end offset');
is(column_of($rows, 'duplicates') . ' / ' . column_of($rows, 'events_dead') . ' / ' . column_of($rows, 'unmatched'),
	'0:0 1:0 2:0 / 0:0 1:0 2:0 / 0:0 1:0 2:0', 'no duplicate, dead letter nor unmatched event counted');
wait_column($topic, 'high_watermark', $end1, 'high_watermark per partition = its end offset');
wait_column($topic, 'lag', { 0 => 0, 1 => 0, 2 => 0 }, 'lag 0 on every partition once caught up');
is(stats_total('events_applied'), 600, 'consumer_stats() counts the same 600 events in all');
is(scalar keys %{ partition_rows($fragile) }, 3, "pg_stat_consumer: the 3 partitions of $fragile, assigned but empty, have rows too");

# ---- pause ------------------------------------------------------------------

is($node->safe_psql($db, "SELECT eventpipe.pause('$sub')"), 't', 'pause() pauses the subscription');
ok(wait_until(sub {
		$node->safe_psql($db, "SELECT string_agg(DISTINCT state, ',') FROM eventpipe.pg_stat_consumer WHERE subscription = '$sub'") eq 'paused'
	}, 60), "pg_stat_consumer: state 'paused' on every row");
my $second = make_events(prefix => 'b', count => 300, products => 12, seed => 4021);
produce_events($bootstrap, $topic, $second);
my $end2 = ends($topic);
wait_column($topic, 'lag', diff_of($end2, $end1),
	'paused: the lag of each partition grew to exactly the messages produced since', 60);
$rows = partition_rows($topic);
is(column_of($rows, 'high_watermark'), expect_of($end2), 'paused: the high watermarks follow the topic');
is(column_of($rows, 'committed_offset'), expect_of($end1), 'paused: the committed offsets did not move');
is(column_of($rows, 'events_applied'), expect_of($end1), 'paused: nothing more was applied');
check_product_metrics($node, $db, expected_metrics($first), 'paused: product_metrics still holds the first events only');

# paused is the subscription's, not the worker's: a new worker starts paused
$pid = consumer_pid($node, $db, $sub);
$node->safe_psql($db, "SELECT pg_terminate_backend($pid)");
$new_pid = wait_consumer_pid($node, $db, $sub, not => $pid, timeout => 60);
ok($new_pid, "paused: a new worker ($new_pid) replaced the terminated one ($pid)");
ok(wait_until(sub {
		$node->safe_psql($db, "SELECT string_agg(DISTINCT state || ' ' || pid, ',') FROM eventpipe.pg_stat_consumer WHERE subscription = '$sub'") eq "paused $new_pid"
	}, 60), 'paused: the new worker is paused too');
wait_column($topic, 'lag', diff_of($end2, $end1), 'paused: the new worker shows the same lag', 60);
is(column_of(partition_rows($topic), 'committed_offset'), expect_of($end1),
	'paused: the new worker applied nothing either');
$pid = $new_pid;

# ---- resume -----------------------------------------------------------------

is($node->safe_psql($db, "SELECT eventpipe.resume('$sub')"), 't', 'resume() resumes the subscription');
ok(wait_caught_up($node, $db, $sub, $bootstrap, [$topic], 180), 'resumed: the worker caught up');
check_product_metrics($node, $db, expected_metrics([ $first, 1 ], [ $second, 1 ]),
	'resumed: product_metrics holds exactly every event, once');
$rows = partition_rows($topic);
is(column_of($rows, 'events_applied'), expect_of($end2), 'resumed: events_applied per partition = its messages');
is(column_of($rows, 'duplicates'), '0:0 1:0 2:0', 'resumed: nothing applied twice, nothing seen twice');
wait_column($topic, 'lag', { 0 => 0, 1 => 0, 2 => 0 }, 'resumed: lag back to 0');
my $states = $node->safe_psql($db,
	"SELECT string_agg(DISTINCT state, ',') FROM eventpipe.pg_stat_consumer WHERE subscription = '$sub'");
ok($states ne '' && $states !~ /paused/, "resumed: no worker's state is paused ($states)");

# ---- counters survive a worker restart -------------------------------------

$pid = consumer_pid($node, $db, $sub);
$node->safe_psql($db, "SELECT pg_terminate_backend($pid)");
$new_pid = wait_consumer_pid($node, $db, $sub, not => $pid, timeout => 60);
ok($new_pid, "a new worker ($new_pid) replaced the terminated one ($pid)");
is(column_of(partition_rows($topic), 'events_applied'), expect_of($end2),
	'the per-partition counters survived the worker restart');
$pid = $new_pid;

# ---- replay -----------------------------------------------------------------

is($node->safe_psql($db, "SELECT eventpipe.replay('$sub', '$topic', 0, 0)"), $end2->{0},
	'replay() of partition 0 from 0 returns the offset stored before');
wait_column($topic, 'duplicates', { 0 => $end2->{0}, 1 => 0, 2 => 0 },
	"replayed: partition 0's duplicates grew by its $end2->{0} messages, the others' did not", 120);
ok(wait_caught_up($node, $db, $sub, $bootstrap, [$topic], 120), 'replayed: caught up again');
check_product_metrics($node, $db, expected_metrics([ $first, 1 ], [ $second, 1 ]),
	'replayed: product_metrics unchanged (the ledger knew every event)');
$rows = partition_rows($topic);
is(column_of($rows, 'events_applied'), expect_of($end2), 'replayed: events_applied unchanged');
is(column_of($rows, 'committed_offset'), expect_of($end2), 'replayed: committed offsets back at the end');
is(stats_total('duplicates'), $end2->{0}, 'consumer_stats() counts the same duplicates');
is($node->safe_psql($db, 'SELECT count(*) FROM eventpipe.consumer_replays'), 0, 'the replay request is done');

# an offset past the end of what Kafka has: the worker replays from the end
# (librdkafka's auto.offset.reset would otherwise start over from the
# beginning, start_from being earliest)
is($node->safe_psql($db, "SELECT eventpipe.replay('$sub', '$topic', 1, 1000000000)"), $end2->{1},
	'replay() of partition 1 from an offset past its end');
ok(wait_until(sub { $node->safe_psql($db, 'SELECT count(*) FROM eventpipe.consumer_replays') eq '0' }, 60),
	'the worker carried it out');
ok(wait_caught_up($node, $db, $sub, $bootstrap, [$topic], 120), 'caught up');
$rows = partition_rows($topic);
is(column_of($rows, 'committed_offset'), expect_of($end2),
	'the offset stored for partition 1 is its end, not the one asked for');
is(column_of($rows, 'duplicates') . ' / ' . column_of($rows, 'events_applied'),
	expect_of({ 0 => $end2->{0}, 1 => 0, 2 => 0 }) . ' / ' . expect_of($end2),
	'nothing was read again');

# ---- poison messages, fixed and retried -------------------------------------

my @fragile_msgs = map {
	{
		key     => $_->[1],
		value   => qq({"product_id":"$_->[1]","note":"fragile"}),
		headers => [ [ 'ce_id', $_->[0] ], [ 'ce_type', 'Fragile' ] ]
	}
} ([ 'f-1', 'p1' ], [ 'f-2', 'p2' ]);
# f-1 and f-2, then (once they are dead letters, so that it comes in a
# batch of its own) a second copy of f-1: within one batch, the copy of a
# message that fails would be skipped as its duplicate
my $dead_count = sub {
	$node->safe_psql($db, "SELECT count(*) FROM eventpipe.consumer_dead_letters WHERE subscription = '$sub'");
};
produce_with_headers($bootstrap, $fragile, \@fragile_msgs, parallel => 1);
ok(wait_until(sub { $dead_count->() == 2 }, 60), 'f-1 and f-2 were dead-lettered');
produce_with_headers($bootstrap, $fragile, [ $fragile_msgs[0] ], parallel => 1);    # f-1 again
ok(wait_caught_up($node, $db, $sub, $bootstrap, [$fragile], 120), "the worker consumed $fragile");
my $dead = $node->safe_psql($db, qq{
SELECT string_agg(headers ->> 'ce_id' || '#' || partition || '/' || "offset", ' ' ORDER BY id)
  FROM eventpipe.consumer_dead_letters WHERE subscription = '$sub' AND error LIKE '%refused: not ready%'});
my @dead = split / /, $dead;
is(scalar @dead, 3, "the 3 fragile messages were dead-lettered ($dead)");
my $fend = ends($fragile);
wait_column($fragile, 'events_dead', $fend, 'events_dead per partition = the fragile messages in it', 30);
my %dead_id = map { (split /#/)[0] => 1 } @dead;
is(join(',', sort keys %dead_id), 'f-1,f-2', 'the dead letters are f-1 (twice) and f-2');

my ($f1_first, $f2, $f1_copy) = map {
	$node->safe_psql($db, "SELECT id FROM eventpipe.consumer_dead_letters WHERE headers ->> 'ce_id' = '$_->[0]' ORDER BY id OFFSET $_->[1] LIMIT 1")
} ([ 'f-1', 0 ], [ 'f-2', 0 ], [ 'f-1', 1 ]);
my %partition_of = map {
	$_ => $node->safe_psql($db, "SELECT partition FROM eventpipe.consumer_dead_letters WHERE id = $_")
} $f1_first, $f2, $f1_copy;

# retried before the fix: fails again, keeps its row with the new error and time
my $failed_at = $node->safe_psql($db, "SELECT failed_at FROM eventpipe.consumer_dead_letters WHERE id = $f2");
is($node->safe_psql($db, "SELECT eventpipe.retry_consumer_dead(ARRAY[$f2]::bigint[])"), 1,
	'retry_consumer_dead() of f-2 queues 1 dead letter');
ok(wait_until(sub {
		$node->safe_psql($db, "SELECT retry_requested_at IS NULL AND failed_at > '$failed_at' FROM eventpipe.consumer_dead_letters WHERE id = $f2") eq 't'
	}, 60), 'not fixed yet: the retried dead letter failed again, with a new time');
is($node->safe_psql($db, "SELECT count(*), count(*) FILTER (WHERE error LIKE '%f-2 refused: not ready%') FROM eventpipe.consumer_dead_letters WHERE subscription = '$sub'"),
	'3|1', 'the 3 dead letters are still there, f-2 with the error of its retry');
is($node->safe_psql($db, 'SELECT count(*) FROM fragile_applied'), 0, 'nothing fragile was applied');
is(stats_total('events_dead'), 3, 'a dead letter failing again is not counted dead twice');

# fixed: the first copy of f-1 retried alone
$node->safe_psql($db, 'INSERT INTO fragile_ready VALUES (true)');
my $applied_before = partition_rows($fragile);
retry_until_gone("ARRAY[$f1_first]::bigint[], '$sub'", 1, "id = $f1_first", 'the first copy of f-1');
is(fragile_applied(), 'f-1:p1', 'f-1 applied once, its type and id read from the stored headers');
my $after = partition_rows($fragile);
my $p = $partition_of{$f1_first};
is($after->{$p}{events_applied} - $applied_before->{$p}{events_applied}, 1,
	"events_applied of partition $p grew by 1");

# the rest: f-2 is applied, the second copy of f-1 is a duplicate
retry_until_gone("subscription => '$sub'", 2, "subscription = '$sub'", 'the 2 others');
is(fragile_applied(), 'f-1:p1,f-2:p2', 'f-2 applied once; the second copy of f-1 was not applied again');
my $final = partition_rows($fragile);
my %want_dup = (0 => 0, 1 => 0, 2 => 0);
my %want_applied = (0 => 0, 1 => 0, 2 => 0);
$want_applied{ $partition_of{$f1_first} }++;
$want_applied{ $partition_of{$f2} }++;
$want_dup{ $partition_of{$f1_copy} }++;
is(column_of($final, 'events_applied'), expect_of(\%want_applied),
	'events_applied per partition: f-1 and f-2 once each, where they were');
is(column_of($final, 'duplicates'), expect_of(\%want_dup),
	"duplicates per partition: the retried copy of f-1, in partition $partition_of{$f1_copy}");
is(stats_total('duplicates'), $end2->{0} + 1, 'consumer_stats() counts the retried copy as a duplicate');
check_product_metrics($node, $db, expected_metrics([ $first, 1 ], [ $second, 1 ]),
	'product_metrics untouched by the retries');

# a dead letter whose value holds a NUL byte is retried with all its bytes:
# it fails again for that reason, not another
my $nul_value = qq({"product_id":"p3"}\0tail);
produce_file($bootstrap, $fragile, 'nul', $nul_value, headers => [ [ 'ce_id', 'f-nul' ], [ 'ce_type', 'Fragile' ] ]);
ok(wait_until(sub { $dead_count->() == 1 }, 60), 'the message with a NUL byte was dead-lettered');
my $nul_id = $node->safe_psql($db, "SELECT id FROM eventpipe.consumer_dead_letters WHERE subscription = '$sub'");
my $nul_dead = stats_total('events_dead');
is($node->safe_psql($db, "SELECT eventpipe.retry_consumer_dead(ARRAY[$nul_id]::bigint[])"), 1, 'it is queued for a retry');
ok(wait_until(sub {
		$node->safe_psql($db, "SELECT retry_requested_at IS NULL FROM eventpipe.consumer_dead_letters WHERE id = $nul_id") eq 't'
	}, 60), 'the worker retried it');
is($node->safe_psql($db, "SELECT error, length(value), value = '\\x" . unpack('H*', $nul_value) . "'::bytea FROM eventpipe.consumer_dead_letters WHERE id = $nul_id"),
	'value contains a NUL byte|' . length($nul_value) . '|t', 'it failed again because of its NUL byte, its bytes intact');
is(stats_total('events_dead'), $nul_dead, 'and was not counted dead twice');

# a rule whose target's counter column changed type: its upsert fails to
# prepare and its message is dead-lettered; changed back, the retried
# message and a new one are applied by the same worker (a statement that
# failed to prepare was kept as a plan of nothing, failing ever after)
$node->safe_psql($db, 'CREATE TABLE tally (k text PRIMARY KEY, n bigint NOT NULL DEFAULT 0)');
$node->safe_psql($db, "SELECT eventpipe.add_metric('$sub', 'Tally', 'tally', 'product_id', 'n')");
$node->safe_psql($db, 'ALTER TABLE tally ALTER n TYPE text');
my $tally_pid = consumer_pid($node, $db, $sub);
my $tally = sub {
	my ($id) = @_;
	return { key => $id, value => qq({"product_id":"$id"}), headers => [ [ 'ce_id', $id ], [ 'ce_type', 'Tally' ] ] };
};
my $tally_dead_sql = "SELECT id FROM eventpipe.consumer_dead_letters WHERE headers ->> 'ce_id' = 'tally-1'";
produce_with_headers($bootstrap, $fragile, [ $tally->('tally-1') ], parallel => 1);
ok(wait_until(sub { $node->safe_psql($db, $tally_dead_sql) ne '' }, 60),
	'a Tally message is dead-lettered while its counter column is text');
my $tally_dead = $node->safe_psql($db, $tally_dead_sql);
$node->safe_psql($db, 'ALTER TABLE tally ALTER n TYPE bigint USING n::bigint');
retry_until_gone("ARRAY[$tally_dead]::bigint[]", 1, "id = $tally_dead", 'the Tally message, its column bigint again');
produce_with_headers($bootstrap, $fragile, [ $tally->('tally-2') ], parallel => 1);
ok(wait_until(sub { $node->safe_psql($db, "SELECT count(*) FROM tally WHERE k = 'tally-2'") eq '1' }, 60),
	'a new Tally message is applied');
is($node->safe_psql($db, q{SELECT string_agg(k || ':' || n, ',' ORDER BY k) FROM tally}), 'tally-1:1,tally-2:1',
	'each Tally message counted once');
is(consumer_pid($node, $db, $sub), $tally_pid, '... by the same worker, never restarted');

# ---- stat_reset -------------------------------------------------------------

my $reset_at = $node->safe_psql($db, 'SELECT eventpipe.stat_reset()');
is($node->safe_psql($db, qq{
SELECT count(*), sum(events_applied + duplicates + unmatched + events_dead),
       count(*) FILTER (WHERE stats_reset = '$reset_at')
  FROM eventpipe.pg_stat_consumer WHERE subscription = '$sub'}),
	'6|0|6', 'stat_reset(): every per-partition counter of the 6 rows is 0, stats_reset its time');
is($node->safe_psql($db, "SELECT events_applied + duplicates + unmatched + events_dead FROM eventpipe.consumer_stats() WHERE subscription = '$sub'"),
	0, 'stat_reset(): the subscription totals too');
my $third = make_events(prefix => 'c', count => 90, products => 12, seed => 4022);
produce_events($bootstrap, $topic, $third);
ok(wait_caught_up($node, $db, $sub, $bootstrap, [$topic], 120), 'after the reset: caught up');
my $end3 = ends($topic);
$rows = partition_rows($topic);
is(column_of($rows, 'events_applied'), expect_of(diff_of($end3, $end2)),
	'after the reset: events_applied per partition counts only the new messages');
is(column_of($rows, 'duplicates'), '0:0 1:0 2:0', 'after the reset: no duplicate');
check_product_metrics($node, $db, expected_metrics([ $first, 1 ], [ $second, 1 ], [ $third, 1 ]),
	'product_metrics holds exactly every event');

is(consumer_pid($node, $db, $sub), $pid, 'no worker restart but the one caused');
my @crashes = crash_lines($node, $log_start);
is(scalar @crashes, 0, 'no crash in the server log') or diag join("\n", @crashes);

stop_node($node);
ok(stop_kafka($kafka), 'Kafka stopped');
done_testing();

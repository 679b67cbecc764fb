# t/313_consumer_poison.pl: garbage mixed into a stream of good events.
#
# Every message that cannot be applied must land in
# eventpipe.consumer_dead_letters once, with its topic, partition, offset,
# key, raw value and an error — invalid JSON (with and without headers),
# invalid UTF-8, an empty value, a ~900 kB value, a JSON value that is not
# an object, a missing or null key field, a key field missing for one of
# four rules only, a value field that is not a number, a sum that overflows
# its bigint column, a key that is not a bigint for a bigint key column (the
# last two fail only in the batch's upsert), a handler raising an error
# (once before and once after writing a row that must not survive), an
# event id too long for the dedup ledger (from ce_id and from dedup_field).
# Everything else is applied exactly (a valid ~900 kB event included), the
# handler's rows are exactly those of the good refunds, and the worker never
# dies: the same pid throughout, no crash in the server log.  Then the
# ledger loses today's partitions for a while: its failures are the batch's,
# not the messages', and nothing is dead-lettered for them.
use strict;
use warnings;

use Digest::MD5 qw(md5_hex);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use EventpipeTest;
use ConsumerTest;

my $kafka     = start_kafka();
my $bootstrap = $kafka->{bootstrap};
my $node      = new_node('main', bootstrap => $bootstrap);
my $db        = 'postgres';
my $topic     = 't313.mixed';
my $sub       = 'poison';

$node->safe_psql($db, 'CREATE EXTENSION eventpipe');
$node->safe_psql($db, metrics_sql() . q{
CREATE TABLE refunds (event_id text PRIMARY KEY, product_id text NOT NULL, amount numeric NOT NULL);
CREATE FUNCTION apply_refund(payload jsonb, metadata jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF payload ->> 'fail' = 'early' THEN
        RAISE EXCEPTION 'refund % refused by the handler', metadata ->> 'id';
    END IF;
    INSERT INTO public.refunds VALUES (metadata ->> 'id', payload ->> 'product_id',
                                (payload ->> 'amount')::numeric);
    IF payload ->> 'fail' = 'late' THEN
        RAISE EXCEPTION 'refund % refused by the handler after its insert', metadata ->> 'id';
    END IF;
END
$$;
});
ensure_topic($bootstrap, $topic);
my $log_start = log_position($node);
my $pid = start_subscription($node, $db, $sub, [$topic],
	subscribe => "batch_size => 100, dedup_field => 'event_id'",
	customers => 1,
	handlers  => [ [ 'RefundIssued', 'apply_refund(jsonb, jsonb)' ] ]);

# ---- what is produced -------------------------------------------------------

my $good = make_events(prefix => 'g', count => 2400, headered => 120, products => 10,
	customers => 5, seed => 313);
my @refunds = map {
	{ id => "refund-$_", product => 'p' . ($_ % 10), cents => 100 + 37 * $_ }
} 0 .. 39;

sub h { my ($id, $type) = @_; return [ [ 'ce_id', $id ], [ 'ce_type', $type ] ] }
sub random_hex { my ($n) = @_; return join('', map { sprintf('%x', int(rand(16))) } 1 .. $n) }

# The garbage: key => {value (bytes), headers}.  Keys are unique, so that
# each one's partition and offset can be read back with kcat.
my %garbage = (
	'bad-json-h' => { value => '{"product_id":"p1","amount":', headers => h('bad-json-h', 'PaymentCompleted') },
	'bad-json' => { value => 'not json {' },
	'bad-utf8-h' => {
		value   => qq({"product_id":"p\xff\xfe","amount":1.5,"customer_id":1000}),
		headers => h('bad-utf8-h', 'PaymentCompleted')
	},
	'bad-utf8' => { value => qq({"type":"ProductViewed","event_id":"bad-utf8","product_id":"p\xc3\x28"}) },
	'empty-h'  => { value => '', headers => h('empty-h', 'ProductViewed') },
	'not-object-h' => { value => '[1,2,3]', headers => h('not-object-h', 'ProductViewed') },
	'no-key' => { value => '{"type":"PaymentCompleted","event_id":"no-key","amount":5.00,"customer_id":1001}' },
	'null-key' => { value => '{"type":"LikeChanged","event_id":"null-key","product_id":null,"delta":1}' },
	'no-customer' =>
	  { value => '{"type":"PaymentCompleted","event_id":"no-customer","product_id":"p4","amount":3.25}' },
	'not-number' => {
		value => '{"type":"PaymentCompleted","event_id":"not-number","product_id":"p2","amount":"lots","customer_id":1001}'
	},
	'object-value' =>
	  { value => '{"type":"LikeChanged","event_id":"object-value","product_id":"p2","delta":{"n":1}}' },
	# errors that only the upsert meets: its batch must be applied again
	# without them
	'overflow' =>
	  { value => '{"type":"LikeChanged","event_id":"overflow","product_id":"p7","delta":99999999999999999999}' },
	'bad-key-type' => {
		value => '{"type":"PaymentCompleted","event_id":"bad-key-type","product_id":"p8","amount":2.5,"customer_id":"abc"}'
	},
	'raise-early' => {
		value => '{"type":"RefundIssued","event_id":"raise-early","product_id":"p3","amount":4.5,"fail":"early"}'
	},
	'raise-late' => {
		value => '{"type":"RefundIssued","event_id":"raise-late","product_id":"p3","amount":7,"fail":"late"}'
	},
	'raise-early-h' => {
		value   => '{"product_id":"p6","amount":1,"fail":"early"}',
		headers => h('raise-early-h', 'RefundIssued')
	},
	# ids too long for the dedup ledger's index (random, so that the index
	# cannot compress them), from ce_id and from dedup_field: before, they
	# failed every batch that held them, for ever
	'long-id-h' => {
		value   => '{"product_id":"p1","amount":1,"customer_id":1000}',
		headers => h('long-id-h' . random_hex(6000), 'PaymentCompleted')
	},
	'long-id' => {
		value => '{"type":"LikeChanged","event_id":"long-id' . random_hex(6000) . '","product_id":"p2","delta":1}'
	},
	'huge-h' => {
		value   => '{"product_id":"p1","amount":1,"junk":"' . ('y' x 900_000),
		headers => h('huge-h', 'PaymentCompleted'),
		file    => 1
	},
);

# A valid event of ~900 kB: applied like any other.
my $huge_good = {
	id => 'huge-good', type => 'PaymentCompleted', product => 'p5', key => 'huge-good',
	headered => 1, amount_cents => 123456, customer => 1002
};

# Plain messages: good events with garbage and refunds slipped in between.
my @refund_msgs = map {
	{
		key   => $_->{product},
		value => sprintf('{"type":"RefundIssued","event_id":"%s","product_id":"%s","amount":%.2f}',
			$_->{id}, $_->{product}, $_->{cents} / 100)
	}
} @refunds;
my @plain_garbage = grep { !$garbage{$_}{headers} } sort keys %garbage;
my @plain;
my $i = 0;
for my $ev (grep { !$_->{headered} } @$good)
{
	push @plain, event_message($ev);
	next unless ++$i % 97 == 0;
	push @plain, { key => $_, value => $garbage{$_}{value} } for splice(@plain_garbage, 0, 2);
	push @plain, shift @refund_msgs if @refund_msgs;
}
push @plain, { key => $_, value => $garbage{$_}{value} } for @plain_garbage;
push @plain, @refund_msgs;

# Headered messages: good ones and garbage, mixed.
my @with = map { event_message($_) } grep { $_->{headered} } @$good;
my @with_garbage = grep { $garbage{$_}{headers} && !$garbage{$_}{file} } sort keys %garbage;
splice(@with, 10 * $_, 0,
	{ key => $with_garbage[$_], value => $garbage{ $with_garbage[$_] }{value},
	  headers => $garbage{ $with_garbage[$_] }{headers} })
  for 0 .. $#with_garbage;

# First half of the plain ones, the headered ones, the huge ones, the rest.
my $half = int(@plain / 2);
produce_messages($bootstrap, $topic, [ @plain[ 0 .. $half - 1 ] ]);
produce_with_headers($bootstrap, $topic, \@with);
for my $key (grep { $garbage{$_}{file} } sort keys %garbage)
{
	produce_file($bootstrap, $topic, $key, $garbage{$key}{value}, headers => $garbage{$key}{headers});
}
my $huge_msg = event_message($huge_good, pad => 900_000);
produce_file($bootstrap, $topic, $huge_msg->{key}, $huge_msg->{value}, headers => $huge_msg->{headers});
produce_messages($bootstrap, $topic, [ @plain[ $half .. $#plain ] ]);
note scalar(keys %garbage) . ' garbage messages, ' . scalar(@refunds) . ' refunds, '
  . scalar(@$good) . ' good events and one valid event of ' . length($huge_msg->{value}) . ' bytes';

# ---- what must have happened ------------------------------------------------

ok(wait_caught_up($node, $db, $sub, $bootstrap, [$topic], 180),
	'the worker consumed the whole topic, garbage included');

my $expected = expected_metrics([ [ @$good, $huge_good ], 1 ]);
check_product_metrics($node, $db, $expected, 'product_metrics: every good event exactly, no garbage');
check_customer_metrics($node, $db, $expected, 'customer_metrics: every good payment exactly, no garbage');

my $cents = 0;
$cents += $_->{cents} for @refunds;
is($node->safe_psql($db,
		q{SELECT count(*), coalesce(sum(amount), 0), count(*) FILTER (WHERE event_id LIKE 'raise-%') FROM refunds}),
	sprintf('%d|%.2f|0', scalar @refunds, $cents / 100),
	'refunds: the handler applied each good refund once; the rows of raising calls were rolled back');

my $positions = topic_positions($bootstrap, $topic);
my $rows = $node->safe_psql($db, q{
SELECT subscription, topic, partition, "offset", convert_from(key, 'UTF8'),
       md5(coalesce(value, '')), length(coalesce(value, '')),
       coalesce(headers::text, ''), replace(coalesce(error, ''), E'\n', ' ')
  FROM eventpipe.consumer_dead_letters ORDER BY id});
my %dead;
my @problems;
for my $line (split /\n/, $rows)
{
	my ($s, $t, $p, $o, $key, $md5, $len, $headers, $error) = split /\|/, $line, 9;
	push @{ $dead{$key} }, 1;
	my $g = $garbage{$key};
	if (!$g) { push @problems, "$key ($t $p/$o): dead-lettered, but it is a good message ($error)"; next }
	my $pos = $positions->{$key}[0];
	push @problems, "$key: subscription $s, topic $t" unless $s eq $sub && $t eq $topic;
	push @problems, "$key: at $p/$o, kcat found it at $pos->[0]/$pos->[1]"
	  unless $pos && $pos->[0] == $p && $pos->[1] == $o;
	push @problems, "$key: value of $len bytes, md5 $md5: not the bytes produced (" . length($g->{value}) . ')'
	  unless $md5 eq md5_hex($g->{value});
	push @problems, "$key: no error recorded" if $error eq '';
	# the raw value is kept in its own column: an error that quotes all of
	# it would put ~900 kB into the row and a line of the server log
	push @problems, "$key: an error of " . length($error) . ' characters' if length($error) > 8192;
	push @problems, "$key: headers $headers do not hold its ce_id"
	  if $g->{headers} && index($headers, $key) < 0;
	push @problems, "$key: the handler's error is not recorded ($error)"
	  if $key =~ /^raise/ && $error !~ /refused by the handler/;
	push @problems, "$key: the id's length is not the error ($error)"
	  if $key =~ /^long-id/ && $error !~ /^event id \(ce_id or dedup_field\) of 60\d\d bytes is longer than the 1024 bytes/;
	note "dead letter $key at $p/$o: " . (length($error) > 200 ? substr($error, 0, 200) . "... (" . length($error) . " characters)" : $error);
}
push @problems, "$_: not dead-lettered" for grep { !$dead{$_} } sort keys %garbage;
push @problems, "$_: dead-lettered " . scalar(@{ $dead{$_} }) . ' times' for grep { @{ $dead{$_} } > 1 } sort keys %dead;
is(scalar @problems, 0,
	'each of the ' . scalar(keys %garbage) . ' garbage messages is in consumer_dead_letters once, '
	  . 'with its topic, partition, offset, raw value and an error (of at most 8 kB)')
  or diag join("\n", @problems);

my $stats = consumer_stats($node, $db)->{$sub} // {};
is($stats->{events_dead}, scalar(keys %garbage), 'consumer_stats.events_dead counts the garbage');
is($stats->{events_applied}, sum_events($good, PRODUCT_TYPES) + 1 + @refunds,
	'consumer_stats.events_applied counts the good events');
is(consumer_pid($node, $db, $sub), $pid, 'the same worker consumed everything: it never restarted');
# ---- large messages: a batch holds at most 32 MB of them --------------------

# 100 events of ~900 kB (90 MB) waiting for a subscription whose batch_size
# would take them all at once: it applies them in batches of at most 32 MB,
# so at least three, and each event once.
my $large_topic = 't313.large';
ensure_topic($bootstrap, $large_topic);
$node->safe_psql($db, q{CREATE TABLE large_hits (k text PRIMARY KEY, n bigint NOT NULL DEFAULT 0)});
produce_messages($bootstrap, $large_topic, [ map {
	{ key => "large-$_", value => qq({"type":"Big","event_id":"large-$_","k":"all","pad":") . ('z' x 900_000) . '"}' }
} 1 .. 100 ]);
$node->safe_psql($db, qq{
BEGIN;
SELECT eventpipe.subscribe('large', ARRAY['$large_topic'], batch_size => 1000, dedup_field => 'event_id');
SELECT eventpipe.add_metric('large', 'Big', 'large_hits', 'k', 'n');
COMMIT;});
ok(wait_caught_up($node, $db, 'large', $bootstrap, [$large_topic], 120), 'the 90 MB of large events consumed');
is($node->safe_psql($db, 'SELECT n FROM large_hits'), 100, 'each of the 100 large events applied once');
cmp_ok(consumer_stat($node, $db, 'large', 'batches'), '>=', 3,
	'in at least three batches: a batch stops at 32 MB of messages');

# ---- the ledger without today's partition: the batch's fault, no message's --

# Today's ledger partitions detached: recording the ids of new events fails
# for every message alike.  The batches are tried again after a back-off,
# never dead-lettered; the upkeep names the table in the way and the
# statement that would fix it.  Attached again, the events are applied once.
my $dead_before = $node->safe_psql($db, 'SELECT count(*) FROM eventpipe.consumer_dead_letters');
my $day = $node->safe_psql($db, q{SELECT to_char((now() AT TIME ZONE 'UTC')::date, 'YYYYMMDD')});
my $bounds = $node->safe_psql($db, q{
	SELECT format('FROM (%L) TO (%L)', d || ' 00:00:00+00', d + 1 || ' 00:00:00+00')
	  FROM (SELECT (now() AT TIME ZONE 'UTC')::date AS d) AS x});
$node->safe_psql($db, qq{
	ALTER TABLE eventpipe.event_handled DETACH PARTITION eventpipe.event_handled_$day;
	ALTER TABLE eventpipe.event_handled_runs DETACH PARTITION eventpipe.event_handled_runs_$day;});
my $late = make_events(prefix => 'late', count => 600, products => 8, customers => 10, seed => 3132,
	ids => 'uuid7');
produce_events($bootstrap, $topic, $late);
ok( $node->poll_query_until($db, qq{
		SELECT last_error ~ 'event_handled(_runs)?_$day is in the way of a partition of the dedup ledger|no partition'
		  FROM eventpipe.consumer_stats() WHERE subscription = '$sub'}),
	'without its partitions the worker says why in last_error');
is($node->safe_psql($db, 'SELECT count(*) FROM eventpipe.consumer_dead_letters'), $dead_before,
	'and dead-letters nothing meanwhile');
$node->safe_psql($db, qq{
	ALTER TABLE eventpipe.event_handled ATTACH PARTITION eventpipe.event_handled_$day FOR VALUES $bounds;
	ALTER TABLE eventpipe.event_handled_runs ATTACH PARTITION eventpipe.event_handled_runs_$day FOR VALUES $bounds;});
ok(wait_caught_up($node, $db, $sub, $bootstrap, [$topic], 180), 'attached again, the worker catches up');
$expected = expected_metrics([ [ @$good, $huge_good ], 1 ], [ $late, 1 ]);
check_product_metrics($node, $db, $expected, 'product_metrics: the late events once each');
is($node->safe_psql($db, 'SELECT count(*) FROM eventpipe.consumer_dead_letters'), $dead_before,
	'no late event was dead-lettered');

my @crashes = crash_lines($node, $log_start, exits => 1);
is(scalar @crashes, 0, 'no worker crashed or exited') or diag join("\n", @crashes);

stop_node($node);
ok(stop_kafka($kafka), 'Kafka stopped');
done_testing();

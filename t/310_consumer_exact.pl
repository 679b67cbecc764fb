# t/310_consumer_exact.pl: the consumer applies every event exactly once.
#
# Thousands of LikeChanged / ProductViewed / PaymentCompleted events on
# several products are produced with kcat — some with CloudEvents headers
# (ce_id, ce_type; a quarter of them with a misleading payload "type" the
# header must win over), the others with "type" and "event_id" in the
# payload — plus events of a type no rule matches.  Rules add them up into
# product_metrics and customer_metrics (a text key and a bigint key, counts,
# deltas, decimal amounts; four rules on PaymentCompleted) and a handler
# records each payment with its metadata (handlers name their tables with
# their schema: they run with the worker's search_path, not a session's).  Then the very same events are
# produced a second and a third time (same ids): nothing may change, and
# consumer_stats() must count the duplicates.  Last, new events mixed with
# old ones and with second copies of themselves: each new one counts once.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use EventpipeTest;
use ConsumerTest;

my $kafka = start_kafka();
my $bootstrap = $kafka->{bootstrap};
my $node  = new_node('main', bootstrap => $bootstrap);
my $db    = 'postgres';
my $topic = 't310.shop';
my $sub   = 'shop';

$node->safe_psql($db, 'CREATE EXTENSION eventpipe');
$node->safe_psql($db, metrics_sql() . q{
CREATE TABLE payments_seen (
    event_id    text PRIMARY KEY,
    topic       text NOT NULL,
    partition   integer NOT NULL,
    "offset"    bigint NOT NULL,
    amount      numeric NOT NULL,
    UNIQUE (topic, partition, "offset"));
CREATE FUNCTION record_payment(payload jsonb, metadata jsonb) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO public.payments_seen
    VALUES (metadata ->> 'id', metadata ->> 'topic', (metadata ->> 'partition')::integer,
            (metadata ->> 'offset')::bigint, (payload ->> 'amount')::numeric)
$$;
});
ensure_topic($bootstrap, $topic);

my $log_start = log_position($node);
my $pid = start_subscription($node, $db, $sub, [$topic],
	subscribe => "batch_size => 500, dedup_field => 'event_id'",
	customers => 1,
	handlers  => [ [ 'PaymentCompleted', 'record_payment(jsonb, jsonb)' ] ]);

my $events = make_events(prefix => 'shop', count => 3000, headered => 600, products => 12,
	customers => 10, unmatched => 60, seed => 310);
my $matched = sum_events($events, PRODUCT_TYPES);
my $unmatched = @$events - $matched;
my @payments = grep { $_->{type} eq 'PaymentCompleted' } @$events;
note sprintf('%d events: %d matched (%d PaymentCompleted, %d with headers), %d unmatched',
	scalar @$events, $matched, scalar @payments, scalar(grep { $_->{headered} } @$events),
	$unmatched);
my $expected = expected_metrics($events);

my ($prev_dups, $prev_unmatched) = (0, 0);
for my $round (1 .. 3)
{
	my $label = "round $round";
	my $n = produce_events($bootstrap, $topic, $events);
	note "$label: produced $n messages";
	my $caught_up = ok(wait_caught_up($node, $db, $sub, $bootstrap, [$topic], 180),
		"$label: the offsets stored in the database reached the end of the topic");

	check_product_metrics($node, $db, $expected, "$label: product_metrics holds exactly the sums of the events");
	check_customer_metrics($node, $db, $expected, "$label: customer_metrics holds exactly the sums of the payments");

	# the handler ran once per payment, in the first copy's transaction
	my $seen = $node->safe_psql($db,
		'SELECT count(*), count(DISTINCT event_id), coalesce(sum(amount), 0) FROM payments_seen');
	my $cents = 0;
	$cents += $_->{amount_cents} for @payments;
	is($seen, sprintf('%d|%d|%.2f', scalar @payments, scalar @payments, $cents / 100),
		"$label: the handler recorded each payment once, with its amount");

	my $stats = consumer_stats($node, $db)->{$sub} // {};
	is($stats->{events_applied}, $matched, "$label: consumer_stats.events_applied = $matched");
	is($stats->{events_dead}, 0, "$label: consumer_stats.events_dead = 0");
	if ($round == 1)
	{
		is($stats->{duplicates}, 0, "$label: no duplicates counted");
		is($stats->{unmatched}, $unmatched, "$label: $unmatched unmatched events counted");
	}
	else
	{
		cmp_ok($stats->{duplicates} - $prev_dups, '>=', $matched,
			"$label: every matched event was counted as a duplicate");
		is(($stats->{duplicates} + $stats->{unmatched}) - ($prev_dups + $prev_unmatched),
			$matched + $unmatched,
			"$label: every message was counted as a duplicate or as unmatched");
	}
	($prev_dups, $prev_unmatched) = ($stats->{duplicates} // 0, $stats->{unmatched} // 0);
	is(consumer_pid($node, $db, $sub), $pid, "$label: the same worker consumed everything");
	# another round would wait as long for nothing
	last unless $caught_up;
}

# Round 4: new events among old ones.  First a run of new events only, more
# than a batch per partition, then each event of a second new set twice, an
# old one between the copies.  Each new event counts once, the rest are
# duplicates.  The new ones have version 7 UUIDs, kept in the ledger's runs,
# the old ones text ids, kept in its rows: a mixed batch looks both up.
my $fresh = make_events(prefix => 'fresh', count => 2400, products => 12, customers => 10, seed => 3101,
	ids => 'uuid7');
my $twice = make_events(prefix => 'twice', count => 600, products => 12, customers => 10, seed => 3102,
	ids => 'uuid7');
my @old = grep { !$_->{headered} } @$events;
my @old_copies = map { $old[ $_ * 4 % @old ] } 0 .. $#$twice;
my @mixed = map { ($twice->[$_], $old_copies[$_], $twice->[$_]) } 0 .. $#$twice;
note sprintf('round 4: produced %d messages',
	produce_events($bootstrap, $topic, [ @$fresh, @mixed ]));
ok(wait_caught_up($node, $db, $sub, $bootstrap, [$topic], 180),
	'round 4: the offsets stored in the database reached the end of the topic');
my $all = expected_metrics([ $events, 1 ], [ $fresh, 1 ], [ $twice, 1 ]);
check_product_metrics($node, $db, $all, 'round 4: product_metrics counts each new event once, no old one again');
check_customer_metrics($node, $db, $all, 'round 4: customer_metrics counts each new payment once');
my $new_matched = sum_events($fresh, PRODUCT_TYPES) + sum_events($twice, PRODUCT_TYPES);
my $stats = consumer_stats($node, $db)->{$sub} // {};
is($stats->{last_error} // '', '', 'round 4: no batch failed (so no other rollback grew the count below)');
is($stats->{events_applied}, $matched + $new_matched,
	"round 4: consumer_stats.events_applied grew by the $new_matched new events");
is($stats->{duplicates} - $prev_dups,
	sum_events(\@old_copies, PRODUCT_TYPES) + sum_events($twice, PRODUCT_TYPES),
	'round 4: the old copies and the second copies were counted as duplicates');
is($node->safe_psql($db, ledger_ids_sql($sub)), $matched + $new_matched,
	'round 4: the ledger holds each applied id once, in its rows and its runs');
my $new_payments = grep { $_->{type} eq 'PaymentCompleted' } @$fresh, @$twice;
is($node->safe_psql($db, 'SELECT count(*), count(DISTINCT event_id) FROM payments_seen'),
	sprintf('%d|%d', @payments + $new_payments, @payments + $new_payments),
	'round 4: the handler recorded each new payment once');

# The handler's metadata: each payment was handled at its first copy's
# partition and offset, under its own id (ce_id, else the payload's
# event_id).
my $ids = topic_event_ids($bootstrap, $topic);
my %first;
for my $pos (sort { my @x = split m{/}, $a; my @y = split m{/}, $b; $x[0] <=> $y[0] || $x[1] <=> $y[1] } keys %$ids)
{
	my $id = $ids->{$pos} // next;
	$first{$id} //= $pos;
}
my @wrong;
for my $line (split /\n/, $node->safe_psql($db,
	'SELECT event_id, topic, partition, "offset" FROM payments_seen ORDER BY event_id'))
{
	my ($id, $t, $p, $o) = split /\|/, $line;
	push @wrong, "$id handled at $t $p/$o, first copy at " . ($first{$id} // 'none')
	  unless $t eq $topic && defined $first{$id} && $first{$id} eq "$p/$o";
}
is(scalar @wrong, 0, "the handler's metadata names each payment's id, topic, partition and offset")
  or diag join("\n", @wrong[ 0 .. ($#wrong < 9 ? $#wrong : 9) ]);

is($node->safe_psql($db, 'SELECT count(*) FROM eventpipe.consumer_dead_letters'), 0,
	'nothing was dead-lettered');
cmp_ok($node->safe_psql($db, ledger_ids_sql($sub)), '>=', $matched,
	'the dedup ledger holds every applied event');
my @crashes = crash_lines($node, $log_start, exits => 1);
is(scalar @crashes, 0, 'no worker crashed or exited') or diag join("\n", @crashes);

stop_node($node);
ok(stop_kafka($kafka), 'Kafka stopped');
done_testing();

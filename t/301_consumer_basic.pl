# t/301_consumer_basic.pl: events produced with kcat (an independent
# client) are applied to metrics tables exactly: counters and sums equal
# those computed from the produced messages, the handler runs once per
# event; the same events produced again change nothing and are counted as
# duplicates; ledger rows past eventpipe.dedup_retention are pruned, and a
# copy arriving after that is applied again (the documented duplicate
# window); unsubscribe stops the worker.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use EventpipeTest;
use ConsumerTest qw(ledger_ids_sql);

my $kafka = start_kafka();
my $node  = new_node('consumer', bootstrap => $kafka->{bootstrap});
my $topic = 't301.shop';

# ---- the events ------------------------------------------------------------

srand(301);
my (@lines, %views, %likes, %revenue, %spent, %payments);
my ($matched, $unmatched) = (0, 0);
for my $i (1 .. 3000)
{
	my $product = 1 + int(rand(25));
	my $kind    = int(rand(10));
	my $json;
	if ($kind < 4)
	{
		$json = qq({"type": "ProductViewed", "event_id": "v-$i", "product_id": $product});
		$views{$product}++;
		$matched++;
	}
	elsif ($kind < 7)
	{
		my $delta = rand() < 0.7 ? 1 : -1;
		$json = qq({"type": "LikeChanged", "event_id": "l-$i", "product_id": $product, "delta": $delta});
		$likes{$product} += $delta;
		$matched++;
	}
	elsif ($kind < 9)
	{
		my $cents    = 100 + int(rand(50000));
		my $amount   = sprintf('%d.%02d', int($cents / 100), $cents % 100);
		my $customer = 'customer-' . int(rand(12));
		$json =
		  qq({"type": "PaymentCompleted", "event_id": "p-$i", "product_id": $product, "customer": "$customer", "amount": $amount});
		$revenue{$product} += $cents;
		$spent{$customer}  += $cents;
		$payments{"p-$i"} = 1;
		$matched++;
	}
	else
	{
		$json = qq({"type": "CartAbandoned", "event_id": "c-$i", "product_id": $product});
		$unmatched++;
	}
	push @lines, "product-$product|$json";
}
my $file = PostgreSQL::Test::Utils::tempdir() . '/events.txt';
open my $fh, '>', $file or die "cannot write $file: $!";
print $fh "$_\n" for @lines;
close $fh;

# CloudEvents headers instead of payload fields: ce_id and ce_type.  The
# ledger keeps an id in the canonical form of a UUID (as eventpipe's own
# ce_id) as a uuid and any other as text: the other spellings of that same
# UUID (upper case, no hyphens) are other ids, each applied once too.
my @header_ids = (
	'hdr-1', '0e3a7b1c-5d2f-4a6b-9c8d-1f2e3a4b5c6d',
	'0E3A7B1C-5D2F-4A6B-9C8D-1F2E3A4B5C6D', '0e3a7b1c5d2f4a6b9c8d1f2e3a4b5c6d');
my @with_headers = map {
	{
		id     => $header_ids[ $_ - 1 ],
		amount => sprintf('%d.50', $_),
		cents  => $_ * 100 + 50,
		product => 100 + $_
	}
} 1 .. 4;
for my $e (@with_headers)
{
	$revenue{ $e->{product} } += $e->{cents};
	$spent{'customer-h'} += $e->{cents};
	$payments{ $e->{id} } = 1;
	$matched++;
}

sub produce_all
{
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'kcat', '-P', '-b', $kafka->{bootstrap}, '-t', $topic, '-K', '|', '-l', $file ],
		'<', \undef, '>', \$out, '2>', \$err, IPC::Run::timeout(120))
	  or die "kcat failed: $err";
	for my $e (@with_headers)
	{
		my $value = qq({"product_id": $e->{product}, "customer": "customer-h", "amount": $e->{amount}});
		IPC::Run::run(
			[
				'kcat', '-P', '-b', $kafka->{bootstrap}, '-t', $topic,
				'-H', "ce_id=$e->{id}", '-H', 'ce_type=PaymentCompleted',
				'-H', 'ce_specversion=1.0', '-k', "product-$e->{product}"
			],
			'<', \$value, '>', \$out, '2>', \$err, IPC::Run::timeout(60))
		  or die "kcat failed: $err";
	}
	return scalar(@lines) + scalar(@with_headers);
}

# ---- the subscription --------------------------------------------------------

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION eventpipe;
CREATE TABLE product_stats (product_id integer PRIMARY KEY, views bigint, likes integer NOT NULL DEFAULT 0,
                            revenue numeric(14,2), note text NOT NULL DEFAULT 'created by the consumer');
CREATE TABLE customer_totals (customer text PRIMARY KEY, spent numeric);
CREATE TABLE payment_log (event_id text, topic text, partition int, "offset" bigint, type text,
                          amount numeric, called_by name);
CREATE FUNCTION log_payment(payload jsonb, metadata jsonb) RETURNS void LANGUAGE sql
  SET search_path = public, pg_catalog
  AS $$ INSERT INTO payment_log VALUES (metadata->>'id', metadata->>'topic', (metadata->>'partition')::int,
                                         (metadata->>'offset')::bigint, metadata->>'type',
                                         (payload->>'amount')::numeric, current_user) $$;
});

my $produced = produce_all();
is($produced, 3004, 'the events are on the topic');

$node->safe_psql(
	'postgres', qq{
BEGIN;
SELECT eventpipe.subscribe('shop', ARRAY['$topic'], dedup_field => 'event_id', batch_size => 500);
SELECT eventpipe.add_metric('shop', 'ProductViewed', 'product_stats', 'product_id', 'views');
SELECT eventpipe.add_metric('shop', 'LikeChanged', 'product_stats', 'product_id', 'likes', 'delta');
SELECT eventpipe.add_metric('shop', 'PaymentCompleted', 'product_stats', 'product_id', 'revenue', 'amount');
SELECT eventpipe.add_metric('shop', 'PaymentCompleted', 'customer_totals', 'customer', 'spent', 'amount');
SELECT eventpipe.add_handler('shop', 'PaymentCompleted', 'log_payment(jsonb, jsonb)');
COMMIT;
});

# Every message is behind the stored offsets once all are applied.
sub wait_for_offsets
{
	my ($want) = @_;
	return wait_until(
		sub {
			$node->safe_psql('postgres',
				q{SELECT coalesce(sum(next_offset), 0) FROM eventpipe.consumer_offsets WHERE subscription = 'shop'})
			  == $want;
		},
		180);
}

sub stats
{
	my $row = $node->safe_psql('postgres',
		q{SELECT events_applied, duplicates, unmatched, events_dead FROM eventpipe.consumer_stats() WHERE subscription = 'shop'});
	my %s;
	@s{qw(applied duplicates unmatched dead)} = split /\|/, $row;
	return \%s;
}

sub check_metrics
{
	my ($label) = @_;
	my %got_views = map { split /\|/ } split /\n/,
	  $node->safe_psql('postgres', 'SELECT product_id, views FROM product_stats WHERE views IS NOT NULL');
	is_deeply(\%got_views, \%views, "$label: views per product are the counts produced");
	my %got_likes = map { split /\|/ } split /\n/,
	  $node->safe_psql('postgres', 'SELECT product_id, likes FROM product_stats WHERE likes <> 0');
	my %want_likes = map { $_ => $likes{$_} } grep { $likes{$_} != 0 } keys %likes;
	is_deeply(\%got_likes, \%want_likes, "$label: likes per product are the sums of the deltas");
	my %got_revenue = map { split /\|/ } split /\n/,
	  $node->safe_psql('postgres', q{SELECT product_id, (revenue * 100)::bigint FROM product_stats WHERE revenue IS NOT NULL});
	is_deeply(\%got_revenue, \%revenue, "$label: revenue per product is the sum of the amounts");
	my %got_spent = map { split /\|/ } split /\n/,
	  $node->safe_psql('postgres', q{SELECT customer, (spent * 100)::bigint FROM customer_totals});
	is_deeply(\%got_spent, \%spent, "$label: spent per customer is the sum of the amounts");
	my %logged = map { split /\|/ } split /\n/,
	  $node->safe_psql('postgres', 'SELECT event_id, count(*) FROM payment_log GROUP BY 1');
	is_deeply(\%logged, { map { $_ => 1 } keys %payments }, "$label: the handler ran once per payment");
}

ok(wait_for_offsets($produced), 'the consumer stored the offset past every message');
check_metrics('first delivery');
is($node->safe_psql('postgres', ledger_ids_sql('shop')), $matched, 'the ledger holds each applied event once');
is($node->safe_psql('postgres', q{SELECT event_uuid FROM eventpipe.event_handled WHERE event_uuid IS NOT NULL}),
	'0e3a7b1c-5d2f-4a6b-9c8d-1f2e3a4b5c6d', 'only the canonical UUID id is kept as a uuid');
is($node->safe_psql('postgres',
	q{SELECT count(*) FROM payment_log WHERE topic <> 't301.shop' OR type <> 'PaymentCompleted' OR called_by <> 'postgres' OR "offset" IS NULL}),
	0, 'the handler got the metadata: topic, type, offset; it ran as the role that declared it');
is($node->safe_psql('postgres', q{SELECT note FROM product_stats WHERE product_id = 101}),
	'created by the consumer', 'rows created by the upsert take the defaults');
is_deeply(stats(), { applied => $matched, duplicates => 0, unmatched => $unmatched, dead => 0 },
	'consumer_stats counts the applied and unmatched events');
is($node->safe_psql('postgres', 'SELECT count(*) FROM eventpipe.consumer_dead_letters'), 0,
	'nothing was dead-lettered');

# ---- the same events again, twice: no effect ----------------------------------

produce_all();
produce_all();
ok(wait_for_offsets(3 * $produced), 'the consumer read the copies');
check_metrics('after two redeliveries');
is_deeply(stats(), { applied => $matched, duplicates => 2 * $matched, unmatched => 3 * $unmatched, dead => 0 },
	'the copies are counted as duplicates, none applied');

# ---- past dedup_retention, a copy counts again ------------------------------------

# The ledger rows of the views move to a partition of 8 days ago (retention:
# 7 days): the worker's upkeep drops it, and the views, produced once more,
# are applied again; everything else is still a duplicate.
my $views_total = 0;
$views_total += $_ for values %views;
$node->safe_psql('postgres', q{
	SELECT eventpipe.ledger_make_partitions(day, day) FROM (SELECT (now() AT TIME ZONE 'UTC')::date - 8) AS d(day);
	UPDATE eventpipe.event_handled SET handled_at = now() - interval '8 days' WHERE event_text LIKE 'v-%'});
ok( wait_until(
		sub {
			$node->safe_psql('postgres', q{SELECT count(*) FROM eventpipe.event_handled WHERE event_text LIKE 'v-%'}) == 0;
		},
		60),
	'the worker dropped the ledger partition older than eventpipe.dedup_retention');
is($node->safe_psql('postgres', ledger_ids_sql()), $matched - $views_total, 'and only those ids went');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM pg_inherits
	 WHERE inhparent IN ('eventpipe.event_handled'::regclass, 'eventpipe.event_handled_runs'::regclass)
	   AND inhrelid::regclass::text ~ ('_' || to_char((now() AT TIME ZONE 'UTC')::date - 8, 'YYYYMMDD') || '$')}), 0,
	'both tables\' partitions of that day are gone');
produce_all();
ok(wait_for_offsets(4 * $produced), 'the consumer read the fourth copy');
$views{$_} *= 2 for keys %views;
check_metrics('a copy after the retention');
is_deeply(stats(),
	{ applied => $matched + $views_total, duplicates => 3 * $matched - $views_total, unmatched => 4 * $unmatched, dead => 0 },
	'the views are applied again, the rest are duplicates');

# ---- unsubscribe stops the worker --------------------------------------------------

my $pid = $node->safe_psql('postgres', q{SELECT pid FROM eventpipe.consumer_stats() WHERE subscription = 'shop'});
ok($pid > 0, 'the worker runs');
$node->safe_psql('postgres', q{SELECT eventpipe.unsubscribe('shop')});
ok( wait_until(
		sub {
			$node->safe_psql('postgres', qq{SELECT count(*) FROM pg_stat_activity WHERE pid = $pid}) == 0;
		},
		30),
	'unsubscribe stops the worker');
is($node->safe_psql('postgres', ledger_ids_sql()), 0, 'its ledger went with it');

$node->stop;
done_testing();

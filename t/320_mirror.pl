# t/320_mirror.pl: a captured table mirrored through Kafka into a table of
# another PostgreSQL cluster, exactly.
#
# The source cluster (eventpipe.database = shop) captures products: 100,000
# rows inserted, then 20,000 random changes in 10 transactions: updates,
# primary-key changes, deletes, inserts of new keys and of keys deleted or
# moved away earlier.  The target cluster (eventpipe.database = copy)
# subscribes to the topic and mirrors it, as a role of its own, into a
# products table that lacks a column of the source's (an image member
# without a column: ignored) and has one of its own (never in an image:
# keeps its default); metric rules on the same subscription count the
# events per op in the same transactions.
#
# While the target applies the backlog, its consumer worker is killed with
# SIGKILL.  Then the topic is delivered twice: a copy of every message,
# produced again with kcat in one run (kcat cannot give each message headers
# of its own, so these copies have no ce_id: the ledger sees new events, and
# the whole history is applied again, in order), then a copy of the first
# 1,000 messages with their own ce_id and ce_type (one kcat each), which the
# ledger must skip: applied again after everything else, they would put
# rows back as they were first inserted, and count their inserts twice.
#
# At the end the mirror equals the source row for row, column for column,
# and the counters hold the number of events of each op, once.
#
# The topic has one partition: a key change is published under the new key
# (docs/consumer.md, "Mirrors"), so the delete of the old row is in order
# with that key's earlier changes only within one partition.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use EventpipeTest;
use FaultTest qw(wait_server_up log_matches topic_admin create_topic);
use ConsumerTest;

my $kafka     = start_kafka();
my $bootstrap = $kafka->{bootstrap};
my $topic     = 't320.products';
my $sub       = 'products-copy';
ok(create_topic(topic_admin($kafka), $topic, 1, 1), "topic $topic created, one partition");
ensure_topic($bootstrap, $topic, partitions => 1);

# ---- the source: a captured table under random changes --------------------

# The columns both sides have; the source has one more (internal_cost), the
# mirror one of its own (mirrored_note).
my $product_columns = q{id bigint PRIMARY KEY, sku text NOT NULL, name text, price numeric(10,2),
    stock integer, tags text[], attrs jsonb, updated_at timestamptz};

my $source = new_node('source', bootstrap => $bootstrap, conf => "eventpipe.database = 'shop'");
$source->safe_psql('postgres', 'CREATE DATABASE shop');
$source->safe_psql('shop', qq{
CREATE EXTENSION eventpipe;
CREATE TABLE products ($product_columns, internal_cost numeric);
SELECT eventpipe.capture('products', '$topic');
CREATE SEQUENCE new_ids START 1000001;

-- A random existing key: mostly among the first 100,000, else among the new ones.
CREATE FUNCTION some_product() RETURNS bigint LANGUAGE sql AS \$\$
    SELECT p.id FROM products AS p
     WHERE p.id >= CASE WHEN random() < 0.85 THEN (random() * 100000)::bigint
                        ELSE 1000000 + (random() * (SELECT last_value - 1000000 FROM new_ids))::bigint END
     ORDER BY p.id LIMIT 1
\$\$;

CREATE FUNCTION churn(n integer) RETURNS void LANGUAGE plpgsql AS \$\$
DECLARE
    pick   float8;
    victim bigint;
BEGIN
    FOR i IN 1 .. n LOOP
        pick := random();
        victim := coalesce(some_product(), (SELECT min(id) FROM products));
        IF pick < 0.45 THEN
            UPDATE products SET price = round((random() * 1000)::numeric, 2), stock = stock - 1,
                                name = name || '+', attrs = attrs || jsonb_build_object('v', i),
                                updated_at = clock_timestamp()
             WHERE id = victim;
        ELSIF pick < 0.55 THEN
            UPDATE products SET id = nextval('new_ids'), name = 'moved from ' || victim WHERE id = victim;
        ELSIF pick < 0.70 THEN
            DELETE FROM products WHERE id = victim;
        ELSIF pick < 0.85 THEN
            INSERT INTO products
            VALUES (nextval('new_ids'), 'new-' || i, 'new ' || i, round((random() * 100)::numeric, 2), i,
                    ARRAY['new', 'batch ' || n], jsonb_build_object('i', i), clock_timestamp(), 1.5);
        ELSE
            -- a key deleted or moved away earlier, used again
            INSERT INTO products
            VALUES (1 + (random() * 99999)::bigint, 'again-' || i, NULL, 9.99, NULL, NULL, NULL, NULL, NULL)
            ON CONFLICT (id) DO UPDATE SET stock = coalesce(products.stock, 0) + 100, tags = '{}';
        END IF;
    END LOOP;
END
\$\$;
});
$source->safe_psql('shop', 'SELECT setseed(0.32)');
for my $part (0 .. 9)
{
	my ($from, $to) = ($part * 10000 + 1, $part * 10000 + 10000);
	$source->safe_psql('shop', qq{
INSERT INTO products
SELECT g, 'sku-' || g, 'product ' || g, (g % 1000) + 0.25, g % 50,
       CASE WHEN g % 3 = 0 THEN ARRAY['a', 'b "quoted"'] WHEN g % 3 = 1 THEN '{}' END,
       jsonb_build_object('color', 'c' || (g % 7), 'n', g),
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second', g * 0.001
  FROM generate_series($from, $to) AS g});
}
$source->safe_psql('shop', "SELECT setseed($_ / 20.0); SELECT churn(2000)") for 1 .. 10;
ok(wait_until(sub { outbox_count($source, 'shop') == 0 }, 300), 'the source relayed every change');
my $originals = total_end_offset($bootstrap, $topic);
cmp_ok($originals, '>', 115000, "$originals change events on the topic");

# ---- the target: a mirror on another cluster ---------------------------------

my $target = new_node('target', bootstrap => $bootstrap, conf => "eventpipe.database = 'copy'");
$target->safe_psql('postgres', 'CREATE DATABASE copy');
$target->safe_psql('copy', qq{
CREATE EXTENSION eventpipe;
CREATE ROLE replicator;
GRANT USAGE ON SCHEMA eventpipe TO replicator;
GRANT EXECUTE ON FUNCTION eventpipe.subscribe(text, text[], text, text, integer, text, integer),
                          eventpipe.add_mirror(text, text, regclass, text),
                          eventpipe.add_metric(text, text, regclass, text, text, text) TO replicator;
CREATE TABLE products ($product_columns, mirrored_note text NOT NULL DEFAULT 'mirrored');
CREATE TABLE op_counts (op text PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
GRANT SELECT, INSERT, UPDATE, DELETE ON products TO replicator;
GRANT SELECT, INSERT, UPDATE ON op_counts TO replicator;
-- Each statement on the mirror waits a little, so that the worker is surely
-- in the middle of the backlog when it is killed; dropped afterwards.
CREATE FUNCTION slow_down() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
    PERFORM pg_sleep(0.02);
    RETURN NULL;
END
\$\$;
CREATE TRIGGER slow_down AFTER INSERT OR DELETE ON products
    FOR EACH STATEMENT EXECUTE FUNCTION slow_down();
});
$target->safe_psql('copy', qq{
SET ROLE replicator;
BEGIN;
SELECT eventpipe.subscribe('$sub', ARRAY['$topic'], batch_size => 500);
SELECT eventpipe.add_mirror('$sub', 'public.products', 'products');
SELECT eventpipe.add_metric('$sub', 'products.' || op, 'op_counts', 'op', 'n')
  FROM unnest(ARRAY['insert', 'update', 'delete']) AS op;
COMMIT;
});
my $pid = wait_consumer_pid($target, 'copy', $sub, timeout => 60);
ok($pid, "the target's consumer worker runs (pid $pid)");
is($target->safe_psql('copy', 'SELECT owner FROM eventpipe.mirrors'), 'replicator',
	'the mirror is the role\'s, and runs as it');

# ---- SIGKILL in the middle of the backlog ------------------------------------

sub mirrored_rows
{
	my ($ret, $out) = $target->psql('copy', 'SELECT count(*) FROM products');
	return $ret == 0 ? $out : 0;
}
ok(wait_until(sub { mirrored_rows() >= 20000 }, 180), 'the mirror is being filled');
my $log_kill = log_position($target);
is(kill('KILL', $pid), 1, "consumer worker $pid killed with SIGKILL");
ok(wait_until(sub { scalar(log_matches($target, $log_kill, qr/terminated by signal 9/)) }, 60),
	'the target crash-restarted');
ok(wait_server_up($target, 60), 'the target is back');
my $stored = db_offsets($target, 'copy', $sub, $topic) // {};
ok(defined $stored->{0} && $stored->{0} > 0 && $stored->{0} < $originals,
	'killed in the middle: offset ' . ($stored->{0} // 'none') . " of $originals stored");
$pid = wait_consumer_pid($target, 'copy', $sub, not => $pid, timeout => 60);
ok($pid, "a new consumer worker runs (pid $pid)");
$target->safe_psql('copy', 'DROP TRIGGER slow_down ON products');

# ---- the topic delivered twice ---------------------------------------------------

my $msgs = read_topic($bootstrap, $topic, fast => 1, timeout => 300);
is(scalar @$msgs, $originals, 'every message read back');
produce_messages($bootstrap, $topic, [ map { { key => $_->{key}, value => $_->{payload} } } @$msgs ]);
produce_with_headers(
	$bootstrap, $topic,
	[
		map {
			{
				key     => $_->{key},
				value   => $_->{payload},
				headers => [ [ 'ce_id', $_->{headers}{ce_id} ], [ 'ce_type', $_->{headers}{ce_type} ] ]
			}
		} @$msgs[ 0 .. 999 ]
	],
	parallel => 4);
ok(wait_caught_up($target, 'copy', $sub, $bootstrap, [$topic], 600), 'the target caught up with both copies');

# ---- the mirror equals the source ------------------------------------------------

my $columns = q{id, sku, name, price, stock, tags, attrs, updated_at AT TIME ZONE 'UTC'};
my $want = $source->safe_psql('shop', "SELECT $columns FROM products ORDER BY id");
my $got = $target->safe_psql('copy', "SELECT $columns FROM products ORDER BY id");
my @want = split /\n/, $want;
my @got = split /\n/, $got;
ok($got eq $want, 'the mirror equals the source: ' . scalar(@want) . ' rows, every column')
  or do
  {
	  my ($i) = grep { ($want[$_] // '') ne ($got[$_] // '') } 0 .. ($#want > $#got ? $#want : $#got);
	  diag "rows: source " . scalar(@want) . ", mirror " . scalar(@got) . "; first difference at line $i:\n"
		. "source: " . ($want[$i] // '(none)') . "\nmirror: " . ($got[$i] // '(none)');
  };
is($target->safe_psql('copy', q{SELECT count(*) FROM products WHERE mirrored_note <> 'mirrored'}), 0,
	'the column no image carries kept its default');
is($target->safe_psql('copy', 'SELECT count(*) FROM eventpipe.consumer_dead_letters'), 0, 'nothing dead-lettered');

my %ops;
$ops{$_}++ for map { $_->{payload} =~ /^\{"op": "(\w+)"/ ? $1 : 'none' } @$msgs;
is($target->safe_psql('copy', 'SELECT op, n FROM op_counts ORDER BY op'),
	join("\n", map { "$_|$ops{$_}" } sort keys %ops),
	'the metric rules counted each event once, in the mirror\'s transactions: '
	  . join(', ', map { "$ops{$_} ${_}s" } sort keys %ops));
cmp_ok($target->safe_psql('copy', "SELECT sum(duplicates) FROM eventpipe.pg_stat_consumer WHERE subscription = '$sub'"),
	'>=', 1000, 'the ledger skipped the copies with a ce_id');

my @unexpected = grep { !/was terminated by signal 9: Killed/ } crash_lines($target, 0);
is(scalar @unexpected, 0, 'no crash on the target but the SIGKILL') or diag join("\n", @unexpected);

$source->stop;
$target->stop;
ok(stop_kafka($kafka), 'Kafka stopped');
done_testing();

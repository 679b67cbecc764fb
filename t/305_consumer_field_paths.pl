# t/305_consumer_field_paths.pl: add_metric's key_field and value_field, and
# subscribe's dedup_field, may name nested members with a dotted path
# ("after.product_id", as in captured events). Events produced with kcat:
# paths one and two levels deep find their members; a name that is itself a
# top-level member ("a.b") takes that member before any path; a path
# through null, an array, a non-object, or ending on an object or a
# non-number value dead-letters its message with the field named; a dotted
# dedup_field recognises a resent event.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use EventpipeTest;
use ConsumerTest;

my $kafka = start_kafka();
my $node  = new_node('paths', bootstrap => $kafka->{bootstrap});
my $topic = 't305.paths';
ensure_topic($kafka->{bootstrap}, $topic);

$node->safe_psql('postgres', q{
CREATE EXTENSION eventpipe;
CREATE TABLE path_metrics (
    k text PRIMARY KEY,
    n bigint NOT NULL DEFAULT 0,
    s numeric NOT NULL DEFAULT 0);
});

# Every message: [key, value]; no headers, so the type comes from the
# payload and the id from meta.id (dedup_field) or the message's place.
my @messages = (
	# one level: key and value inside "after"; a numeric key as written
	[ 'ok-1', '{"type": "Nested", "after": {"product_id": "p1", "amount": 2.5}}' ],
	[ 'ok-2', '{"type": "Nested", "after": {"product_id": 7, "amount": 1}, "before": null}' ],
	# two levels
	[ 'ok-3', '{"type": "Deep", "a": {"b": {"c": "p2"}}, "v": {"w": {"x": 3}}}' ],
	# a top-level member named "a.b" wins over the path a -> b
	[ 'ok-4', '{"type": "Dotted", "a.b": "p3", "a": {"b": "not-this-one"}}' ],
	# no such top-level member: the path a -> b
	[ 'ok-5', '{"type": "Dotted", "a": {"b": "p4"}}' ],
	# the same event twice, recognised by the dotted dedup_field meta.id
	[ 'dup-1', '{"type": "Deep", "meta": {"id": "e-1"}, "a": {"b": {"c": "p5"}}, "v": {"w": {"x": 1}}}' ],
	[ 'dup-2', '{"type": "Deep", "meta": {"id": "e-1"}, "a": {"b": {"c": "p5"}}, "v": {"w": {"x": 1}}}' ],
	# dead letters
	[ 'bad-1', '{"type": "Nested", "after": null}' ],
	[ 'bad-2', '{"type": "Nested", "after": [{"product_id": "p1", "amount": 1}]}' ],
	[ 'bad-3', '{"type": "Nested", "after": {"product_id": {"id": "p1"}, "amount": 1}}' ],
	[ 'bad-4', '{"type": "Nested", "after": {"product_id": "p1", "amount": "2"}}' ],
	[ 'bad-5', '{"type": "Deep", "a": {"b": "p2"}, "v": {"w": {"x": 1}}}' ],
	[ 'bad-6', '{"type": "Deep", "a": {"b": {"c": "p2"}}, "v": {"w": 5}}' ],
);
produce_messages($kafka->{bootstrap}, $topic, [ map { { key => $_->[0], value => $_->[1] } } @messages ]);

$node->safe_psql('postgres', qq{
BEGIN;
SELECT eventpipe.subscribe('paths', ARRAY['$topic'], dedup_field => 'meta.id');
SELECT eventpipe.add_metric('paths', 'Nested', 'path_metrics', 'after.product_id', 's', 'after.amount');
SELECT eventpipe.add_metric('paths', 'Deep', 'path_metrics', 'a.b.c', 's', 'v.w.x');
SELECT eventpipe.add_metric('paths', 'Dotted', 'path_metrics', 'a.b', 'n');
COMMIT;
});
ok(wait_caught_up($node, 'postgres', 'paths', $kafka->{bootstrap}, [$topic]),
	'the subscription applied the whole topic');

is($node->safe_psql('postgres', 'SELECT k, n, s FROM path_metrics ORDER BY k'),
	join("\n", '7|0|1', 'p1|0|2.5', 'p2|0|3', 'p3|1|0', 'p4|1|0', 'p5|0|1'),
	'dotted key and value paths found their nested members; a top-level "a.b" took precedence');

my $stats = consumer_stats($node, 'postgres')->{paths};
is($stats->{events_applied}, 6, 'six events applied');
is($stats->{duplicates},     1, 'the resent event was recognised by its dotted dedup_field');

is( $node->safe_psql(
		'postgres',
		q{SELECT convert_from(key, 'UTF8') || ': ' || error FROM eventpipe.consumer_dead_letters ORDER BY 1}),
	join("\n",
		'bad-1: key field "after.product_id" is missing or not a string or number',
		'bad-2: key field "after.product_id" is missing or not a string or number',
		'bad-3: key field "after.product_id" is missing or not a string or number',
		'bad-4: value field "after.amount" is missing or not a number',
		'bad-5: key field "a.b.c" is missing or not a string or number',
		'bad-6: value field "v.w.x" is missing or not a number'),
	'paths through null, an array or a string, or ending on an object or a non-number, dead-letter with the field named'
);

$node->stop('fast');
done_testing();

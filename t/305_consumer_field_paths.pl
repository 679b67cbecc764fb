# t/305_consumer_field_paths.pl: add_metric's key_field and value_field, and
# subscribe's dedup_field, may name nested members with a dotted path
# ("after.product_id", as in captured events). Events produced with kcat:
# paths one and two levels deep find their members; a name that is itself a
# top-level member ("a.b") takes that member before any path; a path
# through null, an array, a non-object, or ending on an object or a
# non-number value dead-letters its message with the field named; a dotted
# dedup_field recognises a resent event.  The fields are read from the JSON
# text in one pass, not through jsonb, and must find what jsonb would: the
# last of repeated members, numbers as numeric writes them; a number out of
# numeric's range dead-letters its message when a rule reads it, and does
# not matter in a member no rule reads.  Escapes are read wherever they are,
# and JSON's own errors are worded as json_in words them.  A char(4) primary
# key keeps its codes apart, and a code too long for it is dead-lettered,
# also through a domain.
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
CREATE TABLE code_metrics (
    code char(4) PRIMARY KEY,
    n    bigint NOT NULL DEFAULT 0);
CREATE DOMAIN short_code AS char(4);
CREATE TABLE tag_metrics (
    tag short_code PRIMARY KEY,
    n   bigint NOT NULL DEFAULT 0);
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
	# a repeated member: the last one counts, at the top and on a path
	[ 'ok-6', '{"type": "Nested", "after": {"product_id": "p6", "amount": 1}, "after": {"product_id": "p7", "amount": 4}}' ],
	[ 'ok-7', '{"type": "Dotted", "a": {"b": "p8"}, "a": {"b": "p9"}}' ],
	[ 'ok-8', '{"type": "Dotted", "a.b": "p10", "a.b": "p11"}' ],
	# a number key and value as numeric writes them
	[ 'ok-9', '{"type": "Nested", "after": {"product_id": 1e2, "amount": 0.50}}' ],
	# an out-of-range number no rule reads
	[ 'ok-10', '{"type": "Dotted", "a.b": "p12", "junk": 1e999999}' ],
	# escapes in a member's name and in strings: "Dotted", a -> b, "p13"
	[ 'ok-11', '{"type": "Dott\\u0065d", "a": {"\\u0062": "p\\u00313"}, "note": "tab\\there"}' ],
	# a char(4) key: each code its own row (a cast to "character" would be char(1))
	[ 'ok-12', '{"type": "Coded", "code": "AB01"}' ],
	[ 'ok-13', '{"type": "Coded", "code": "AC02"}' ],
	[ 'ok-14', '{"type": "Coded", "code": "AB01"}' ],
	# the same through a domain over char(4)
	[ 'ok-15', '{"type": "Tagged", "tag": "AB01"}' ],
	# dead letters
	[ 'bad-1', '{"type": "Nested", "after": null}' ],
	[ 'bad-2', '{"type": "Nested", "after": [{"product_id": "p1", "amount": 1}]}' ],
	[ 'bad-3', '{"type": "Nested", "after": {"product_id": {"id": "p1"}, "amount": 1}}' ],
	[ 'bad-4', '{"type": "Nested", "after": {"product_id": "p1", "amount": "2"}}' ],
	[ 'bad-5', '{"type": "Deep", "a": {"b": "p2"}, "v": {"w": {"x": 1}}}' ],
	[ 'bad-6', '{"type": "Deep", "a": {"b": {"c": "p2"}}, "v": {"w": 5}}' ],
	[ 'bad-7', '{"type": "Nested", "after": {"product_id": "p1", "amount": 1}, "after": {"amount": 1}}' ],
	[ 'bad-8', '{"type": "Nested", "after": {"product_id": "p1", "amount": 1e999999}}' ],
	# JSON's own errors, worded as json_in words them
	[ 'bad-9', qq({"type": "Dotted", "a.b": "p\x0114"}) ],
	[ 'bad-x1', '{"type": "Dotted", "a.b": "p15", "x": tru}' ],
	[ 'bad-x2', '{"type": "Dotted", "a.b": "p16", "n": 01}' ],
	# a key too long for char(4): not cut to fit
	[ 'bad-x3', '{"type": "Coded", "code": "AB012"}' ],
	[ 'bad-x4', '{"type": "Tagged", "tag": "AB012"}' ],
);
produce_messages($kafka->{bootstrap}, $topic, [ map { { key => $_->[0], value => $_->[1] } } @messages ]);

$node->safe_psql('postgres', qq{
BEGIN;
SELECT eventpipe.subscribe('paths', ARRAY['$topic'], dedup_field => 'meta.id');
SELECT eventpipe.add_metric('paths', 'Nested', 'path_metrics', 'after.product_id', 's', 'after.amount');
SELECT eventpipe.add_metric('paths', 'Deep', 'path_metrics', 'a.b.c', 's', 'v.w.x');
SELECT eventpipe.add_metric('paths', 'Dotted', 'path_metrics', 'a.b', 'n');
SELECT eventpipe.add_metric('paths', 'Coded', 'code_metrics', 'code', 'n');
SELECT eventpipe.add_metric('paths', 'Tagged', 'tag_metrics', 'tag', 'n');
COMMIT;
});
ok(wait_caught_up($node, 'postgres', 'paths', $kafka->{bootstrap}, [$topic]),
	'the subscription applied the whole topic');

is($node->safe_psql('postgres', 'SELECT k, n, s FROM path_metrics ORDER BY k'),
	join("\n",
		'100|0|0.50', '7|0|1', 'p1|0|2.5', 'p11|1|0', 'p12|1|0', 'p13|1|0', 'p2|0|3', 'p3|1|0',
		'p4|1|0', 'p5|0|1', 'p7|0|4', 'p9|1|0'),
	'dotted key and value paths found their nested members; a top-level "a.b" took precedence; '
	  . 'the last of repeated members counted; numbers were read as numeric writes them; escapes were read');

is($node->safe_psql('postgres', 'SELECT code, n FROM code_metrics ORDER BY code'),
	"AB01|2\nAC02|1", 'a char(4) key kept each code in its own row');
is($node->safe_psql('postgres', 'SELECT tag, n FROM tag_metrics ORDER BY tag'),
	'AB01|1', 'a key of a domain over char(4) took its code, and not the one too long for it');

my $stats = consumer_stats($node, 'postgres')->{paths};
is($stats->{events_applied}, 16, 'sixteen events applied');
is($stats->{duplicates},     1, 'the resent event was recognised by its dotted dedup_field');
like($stats->{last_error},
	qr/^(?:a message was dead-lettered: |[2-9]\d* messages were dead-lettered, the first: |\d{2,} messages were dead-lettered, the first: )\S/,
	"last_error counts the batch's dead letters in words that agree with their number: $stats->{last_error}");

is( $node->safe_psql(
		'postgres',
		q{SELECT convert_from(key, 'UTF8') || ': ' || error FROM eventpipe.consumer_dead_letters ORDER BY 1}),
	join("\n",
		'bad-1: key field "after.product_id" is missing or not a string or number',
		'bad-2: key field "after.product_id" is missing or not a string or number',
		'bad-3: key field "after.product_id" is missing or not a string or number',
		'bad-4: value field "after.amount" is missing or not a number',
		'bad-5: key field "a.b.c" is missing or not a string or number',
		'bad-6: value field "v.w.x" is missing or not a number',
		'bad-7: key field "after.product_id" is missing or not a string or number',
		'bad-8: value is not valid JSON: value overflows numeric format',
		'bad-9: value is not valid JSON: invalid input syntax for type json: Character with value 0x01 must be escaped.',
		'bad-x1: value is not valid JSON: invalid input syntax for type json: Token "tru" is invalid.',
		'bad-x2: value is not valid JSON: invalid input syntax for type json: Token "01" is invalid.',
		'bad-x3: value too long for type character(4)',
		'bad-x4: value too long for type character(4)'),
	'paths through null, an array or a string, or ending on an object or a non-number, dead-letter with the field named'
);

$node->stop('fast');
done_testing();

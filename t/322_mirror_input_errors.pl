# t/322_mirror_input_errors.pl: messages whose values fail in a way that is
# not a data error are the messages' fault, and are dead-lettered; the
# subscription goes on.
#  (a) A mirror whose target has tsvector, regclass and jsonpath columns:
#      values their input functions refuse with a syntax error (42601) or an
#      unknown relation (42P01), among good rows.  The first attempt at the
#      batch fails; the attempt that isolates failures interprets each
#      message in a subtransaction of its own and dead-letters the bad ones.
#  (b) A LATIN1 database: a message with a header LATIN1 cannot hold ("€")
#      is dead-lettered (its bad JSON), its header kept as \x hex; a
#      tombstone whose key LATIN1 cannot hold is dead-lettered by a mirror.
# In each, the good messages after the bad ones are applied.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use EventpipeTest;
use ConsumerTest;

my $kafka     = start_kafka();
my $bootstrap = $kafka->{bootstrap};
# Two databases' managers, relays and four subscriptions' workers.
my $node      = new_node('main', bootstrap => $bootstrap, conf => 'max_worker_processes = 16');
my $docs      = 't322.docs';
my $things    = 't322.things';
my $latin_src = 't322.public.src';    # a tombstone's mirrors are those its topic names
ensure_topic($bootstrap, $_) for $docs, $things, $latin_src;

# The dead letters' keys (LATIN1 lacks some: as hex) and errors, by key.
sub dead_letters
{
	my ($db, $sub) = @_;
	return $node->safe_psql($db,
		"SELECT string_agg(encode(key, 'hex') || ': ' || error, E'\\n' ORDER BY key)"
		  . " FROM eventpipe.consumer_dead_letters WHERE subscription = '$sub'");
}

# ---- (a) input functions that raise errors of other classes --------------------

$node->safe_psql('postgres', q{
CREATE EXTENSION eventpipe;
CREATE TABLE docs (id integer PRIMARY KEY, tsv tsvector, rel regclass, path jsonpath);
SELECT eventpipe.subscribe('docs', ARRAY['t322.docs']);
SELECT eventpipe.add_mirror('docs', 'public.docs', 'docs');
});
sub doc
{
	my ($id, $member, $value) = @_;
	my %after = (id => $id, tsv => q('a' 'b'), rel => 'pg_class', path => '$.a');
	$after{$member} = $value if defined $member;
	my $json = join(',', map { my $v = $after{$_}; $_ eq 'id' ? qq("id":$v) : qq("$_":") . ($v =~ s/(["\\])/\\$1/gr) . '"' }
		  sort keys %after);
	return { key => "$id", value => qq({"op":"insert","table":"public.docs","after":{$json}}) };
}
produce_messages($bootstrap, $docs,
	[ doc(1), doc(2, 'tsv', q('unterminated)), doc(3, 'rel', 'no_such_table'), doc(4, 'path', '$$$'), doc(5) ]);
ok(wait_caught_up($node, 'postgres', 'docs', $bootstrap, [$docs], 90), '(a) the subscription consumed its topic');
is($node->safe_psql('postgres', 'SELECT string_agg(id::text, \',\' ORDER BY id) FROM docs'), '1,5',
	'(a) the good rows are mirrored');
like(dead_letters('postgres', 'docs'),
	qr/\A32: .*tsvector.*\n33: .*no_such_table.*\n34: .*jsonpath[^\n]*\z/s,
	'(a) the three bad ones are dead-lettered, each with its error');

# ---- (b) a LATIN1 database ----------------------------------------------------

$node->safe_psql('postgres',
	q{CREATE DATABASE latin ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0});
$node->safe_psql('latin', q{
CREATE EXTENSION eventpipe;
CREATE TABLE counts (k text PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
CREATE TABLE copy (id text PRIMARY KEY, v text);
SELECT eventpipe.subscribe('things', ARRAY['t322.things']);
SELECT eventpipe.add_metric('things', 'thing', 'public.counts', 'k', 'n');
SELECT eventpipe.subscribe('latin', ARRAY['t322.public.src']);
SELECT eventpipe.add_mirror('latin', 'public.src', 'public.copy');
});
my $euro = "\xe2\x82\xac";
produce_with_headers($bootstrap, $things,
	[ { key => 'x', value => 'not json', headers => [ [ 'h', "price $euro" ] ] } ]);
produce_messages($bootstrap, $things, [ { key => 'y', value => '{"type":"thing","k":"after"}' } ]);
produce_messages($bootstrap, $latin_src, [ { key => $euro, value => undef } ], tombstones => 1);
produce_messages($bootstrap, $latin_src,
	[ { key => 'ok', value => '{"op":"insert","table":"public.src","after":{"id":"ok","v":"1"}}' } ]);
ok(wait_caught_up($node, 'latin', 'things', $bootstrap, [$things], 90), '(b) the metric subscription consumed its topic');
is($node->safe_psql('latin', q{SELECT string_agg(k || '=' || n, ',') FROM counts}), 'after=1',
	'(b) the message after the one with a header LATIN1 lacks is applied');
is( $node->safe_psql('latin',
		q{SELECT headers ->> 'h' FROM eventpipe.consumer_dead_letters WHERE subscription = 'things'}),
	'\x707269636520e282ac',
	'(b) that one is dead-lettered, its header kept as hex');
ok(wait_caught_up($node, 'latin', 'latin', $bootstrap, [$latin_src], 90), '(b) the mirror consumed its topic');
is($node->safe_psql('latin', 'SELECT string_agg(id, \',\') FROM copy'), 'ok', '(b) the row after the tombstone is mirrored');
like(dead_letters('latin', 'latin'), qr/\Ae282ac: .*LATIN1[^\n]*\z/, '(b) the tombstone whose key LATIN1 lacks is dead-lettered');

my @crashes = crash_lines($node, 0);
is(scalar @crashes, 0, 'no worker crashed') or diag join("\n", @crashes);
$node->stop;
ok(stop_kafka($kafka), 'Kafka stopped');
done_testing();

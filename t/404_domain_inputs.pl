# t/404_domain_inputs.pl: a domain's CHECK is code of whoever made the
# domain, and a worker that reads a value of it through an input function
# runs that code.  mallory, with only the documented grants, makes a domain
# whose CHECK calls her function watch(), which logs who called it and, if
# that was a superuser, makes her one.  She must never become a superuser,
# and watch() must only ever run as her:
#  (a) a mirror into her table with a column of an array of that domain:
#      its input would run the CHECK inside the worker's own step, so the
#      message is dead-lettered, naming the column, and watch() never runs;
#      a mirror into a column of the domain itself is applied, the CHECK
#      running in the upsert, as her (a positive control that it runs);
#  (b) a snapshot of her captured table whose primary key is of the
#      domain, read in chunks of one row: each chunk after the first reads
#      the last key back through the domain's input, as her.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use EventpipeTest;
use ConsumerTest;

my $kafka     = start_kafka();
my $bootstrap = $kafka->{bootstrap};
my $topic     = 't404.mirror';
my $sub       = 't404-mirror';
ensure_topic($bootstrap, $topic);

my $node = new_node('main', bootstrap => $bootstrap, conf => 'eventpipe.snapshot_chunk_rows = 1');
my $db   = 'postgres';
$node->safe_psql($db, q{
CREATE EXTENSION eventpipe;
CREATE ROLE mallory LOGIN;
GRANT USAGE ON SCHEMA eventpipe TO mallory;
GRANT EXECUTE ON FUNCTION
    eventpipe.subscribe(text, text[], text, text, integer, text, integer),
    eventpipe.add_mirror(text, text, regclass, text),
    eventpipe.capture(regclass, text, text[], text, boolean, boolean),
    eventpipe.snapshot(regclass, text)
  TO mallory;
CREATE SCHEMA mallory AUTHORIZATION mallory;
});

sub as_mallory
{
	return $node->safe_psql($db, $_[0], extra_params => [ '-U', 'mallory' ]);
}

as_mallory(q{
CREATE TABLE mallory.calls (who name NOT NULL, value text);
GRANT INSERT ON mallory.calls TO PUBLIC;
GRANT USAGE ON SCHEMA mallory TO PUBLIC;
CREATE FUNCTION mallory.watch(v text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO mallory.calls VALUES (current_user, v);
    IF EXISTS (SELECT FROM pg_catalog.pg_roles AS r
                WHERE r.rolname OPERATOR(pg_catalog.=) current_user AND r.rolsuper) THEN
        EXECUTE 'ALTER ROLE mallory SUPERUSER';
    END IF;
    RETURN true;
END
$$;
CREATE DOMAIN mallory.watched AS text CHECK (mallory.watch(VALUE));
CREATE TABLE mallory.tagged (id integer PRIMARY KEY, tags mallory.watched[]);
CREATE TABLE mallory.named (id integer PRIMARY KEY, name mallory.watched);
CREATE TABLE mallory.keyed (k mallory.watched PRIMARY KEY, n integer NOT NULL);
INSERT INTO mallory.keyed SELECT 'k' || g, g FROM generate_series(1, 4) g;
});
$node->safe_psql($db, 'TRUNCATE mallory.calls');

sub callers
{
	return $node->safe_psql($db,
		"SELECT coalesce(string_agg(DISTINCT who, ','), '') FROM mallory.calls");
}

sub mallory_is_superuser
{
	return $node->safe_psql($db, "SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'") eq 't';
}

# ---- (a) mirrors ----------------------------------------------------------------

as_mallory(qq{
SELECT eventpipe.subscribe('$sub', ARRAY['$topic']);
SELECT eventpipe.add_mirror('$sub', 'public.tagged_source', 'mallory.tagged');
SELECT eventpipe.add_mirror('$sub', 'public.named_source', 'mallory.named');
});
produce_messages($bootstrap, $topic, [
	{ key => '1', value => '{"op":"insert","table":"public.tagged_source","after":{"id":1,"tags":["x","y"]}}' },
	{ key => '2', value => '{"op":"insert","table":"public.named_source","after":{"id":2,"name":"plain"}}' },
]);
ok(wait_caught_up($node, $db, $sub, $bootstrap, [$topic], 120), '(a) the mirror messages are consumed');

like($node->safe_psql($db, "SELECT string_agg(error, ' / ') FROM eventpipe.consumer_dead_letters WHERE subscription = '$sub'"),
	qr/mallory\.tagged has a column of a type with a domain inside an array, composite or range, "tags": a mirror cannot read its values/,
	'(a) the message for the array-of-domain column is dead-lettered, naming the column');
is($node->safe_psql($db, 'SELECT count(*) FROM mallory.tagged'), '0', '(a) ... and nothing was written to its target');
is($node->safe_psql($db, 'SELECT name FROM mallory.named WHERE id = 2'), 'plain',
	'(a) the message for the domain column itself is applied');
is($node->safe_psql($db, "SELECT string_agg(who || ':' || value, ',' ORDER BY value) FROM mallory.calls"),
	'mallory:plain', '(a) watch() ran once, in the upsert, as mallory, and never for the array');
ok(!mallory_is_superuser(), '(a) mallory is not a superuser');

# ---- (b) a snapshot resumed through the key's domain ------------------------------

$node->safe_psql($db, 'TRUNCATE mallory.calls');
as_mallory("SELECT eventpipe.capture('mallory.keyed', 't404.keyed')");
my $id = as_mallory("SELECT eventpipe.snapshot('mallory.keyed')");
ok(wait_until(sub {
	$node->safe_psql($db, "SELECT state FROM eventpipe.snapshots WHERE id = $id") ne 'running' }, 60),
	'(b) the snapshot ended');
is($node->safe_psql($db, "SELECT state || ':' || rows_emitted || ':' || coalesce(error, '') FROM eventpipe.snapshots WHERE id = $id"),
	'done:4:', '(b) the snapshot is done, its four rows emitted one chunk at a time');
cmp_ok($node->safe_psql($db, 'SELECT count(*) FROM mallory.calls'), '>=', 3,
	'(b) each later chunk read its last key back through the domain (watch() called)');
is(callers(), 'mallory', '(b) ... as mallory only');
ok(!mallory_is_superuser(), '(b) mallory is not a superuser');

done_testing();

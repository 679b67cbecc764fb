# t/202_capture_snapshot.pl: capture(..., snapshot => true) of a 200,000-row
# table while 8 writers update, insert and delete random rows, with
# PostgreSQL stopped in immediate mode once in the middle of the snapshot.
# The topic, read with kcat (independently of eventpipe) and replayed per key
# into a fresh table (last image wins, a delete removes, copies of one ce_id
# count once, as eventpipe's consumer counts them), must give exactly the
# source table; every row that existed at the capture and was never deleted
# must have exactly one read event; and per key nothing is out of order.
#
# Per-key order is checked with a version the writers give each change of a
# key: every writing transaction first increments the key's counter in
# key_versions (a row lock that serialises all the writers of that key, in
# commit order) and stores it in the row's ver.  So per key, in topic order,
# the changes' versions must rise (an insert's or update's is its new ver, a
# delete's is the deleted ver + 0.5), and a read must carry the version of
# the last change before it: a stale read after a newer change, or a read of
# a deleted row, goes down.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use IPC::Run;
use Test::More;

use EventpipeTest;
use FaultTest;

my $rows  = 200_000;
my $topic = 't202.items';

my $kafka = start_kafka();
my $node  = new_node(
	'main',
	bootstrap => $kafka->{bootstrap},
	conf      => "eventpipe.snapshot_chunk_rows = 500\nmax_connections = 40");
$node->safe_psql('postgres', 'CREATE EXTENSION eventpipe');
ok(wait_for_relay_state($node, 'idle'), 'relay worker is idle');
ok(create_topic(topic_admin($kafka), $topic, 3, 1), "topic $topic created");

$node->safe_psql(
	'postgres', qq{
CREATE TABLE items (
    id  integer PRIMARY KEY,
    ver integer NOT NULL DEFAULT 0,
    val text    NOT NULL,
    pad text);
INSERT INTO items (id, val, pad)
SELECT g, md5(g::text), repeat('x', g % 50) FROM generate_series(1, $rows) g;
CREATE TABLE key_versions (id integer PRIMARY KEY, v integer NOT NULL);
INSERT INTO key_versions SELECT g, 0 FROM generate_series(1, $rows) g;
VACUUM ANALYZE items, key_versions;
});

my $dir = PostgreSQL::Test::Utils::tempdir();
my $max_id = $rows + $rows / 4;
PostgreSQL::Test::Utils::append_to_file("$dir/writer.sql", qq{
\\set id random(1, $max_id)
\\set kind random(1, 10)
BEGIN;
INSERT INTO key_versions AS k VALUES (:id, 1)
  ON CONFLICT (id) DO UPDATE SET v = k.v + 1 RETURNING v \\gset
\\if :kind <= 6
UPDATE items SET ver = :v, val = md5(random()::text) WHERE id = :id;
\\elif :kind <= 8
INSERT INTO items (id, ver, val) VALUES (:id, :v, 'inserted by ' || :client_id)
  ON CONFLICT (id) DO UPDATE SET ver = EXCLUDED.ver, val = EXCLUDED.val;
\\else
DELETE FROM items WHERE id = :id;
\\endif
COMMIT;
});

# 8 writers until killed (or until the server goes away under them).
sub start_writers
{
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[
			'pgbench', '-n', '-c', '8', '-j', '2', '-T', '600', '-f', "$dir/writer.sql",
			'-h', $node->host, '-p', $node->port, 'postgres'
		],
		'<', \undef, '>', \$out, '2>', \$err);
	return { h => $h, out => \$out, err => \$err };
}

sub stop_writers
{
	my ($w) = @_;
	$w->{h}->signal('INT') if $w->{h}->pumpable;
	eval { $w->{h}->finish; };
	return ${ $w->{out} } . ${ $w->{err} };
}

sub snapshot_row
{
	my $r = $node->safe_psql('postgres',
		"SELECT state, rows_emitted, coalesce(error, '') FROM eventpipe.snapshots");
	return split /\|/, $r;
}

my $log_start = log_position($node);

# ---- capture with snapshot, writers running ---------------------------

$node->safe_psql('postgres',
	"SELECT eventpipe.capture('items', '$topic', snapshot => true)");
my $writers = start_writers();

# Stop the server in the middle of the snapshot.
my $emitted_before;
ok( wait_until(
		sub {
			my ($state, $emitted) = snapshot_row();
			$emitted_before = $emitted;
			return $state ne 'running' || $emitted >= $rows / 5;
		},
		180),
	'the snapshot got a fifth of the way');
my ($state_before) = snapshot_row();
is($state_before, 'running', "the snapshot was still running at $emitted_before rows");
$node->stop('immediate');
note 'writers before the stop: ' . stop_writers($writers);
$node->start;

# ---- after the restart: more writers until the snapshot is done ------

$writers = start_writers();
ok(wait_until(sub { (snapshot_row())[0] ne 'running' }, 300),
	'the snapshot finished after the restart');
sleep 2;    # writers go on after the snapshot's last chunk too
my $writers_out = stop_writers($writers);
note "writers after the restart: $writers_out";
my ($state, $emitted, $error) = snapshot_row();
is($state, 'done', 'the snapshot is done') or diag "error: $error";
ok($emitted > $emitted_before, "it resumed: $emitted rows emitted in all");
my @starts = log_matches($node, $log_start, qr/eventpipe snapshot worker started/);
ok(@starts >= 2, scalar(@starts) . ' snapshot workers started (one after the restart)');

ok(wait_until(sub { outbox_count($node) == 0 }, 300), 'the outbox drained');
is(relay_stat($node, 'events_dead'), 0, 'nothing was dead-lettered');

# ---- the topic, read with kcat, replayed in SQL -----------------------

my $msgs = read_topic($kafka->{bootstrap}, $topic, fast => 1, timeout => 300);
ok(defined $msgs && @$msgs > $rows, scalar(@{ $msgs // [] }) . ' messages in the topic');

# COPY text format: escape backslash, tab, newline, carriage return.
my $escape = sub {
	my ($s) = @_;
	return '\N' unless defined $s;
	$s =~ s/\\/\\\\/g;
	$s =~ s/\t/\\t/g;
	$s =~ s/\n/\\n/g;
	$s =~ s/\r/\\r/g;
	return $s;
};
open(my $fh, '>', "$dir/topic.copy") or die $!;
print $fh join("\t", $_->{partition}, $_->{offset}, $escape->($_->{key}),
	$escape->($_->{ce_id}), $escape->($_->{payload})), "\n"
  for @$msgs;
close $fh;

$node->safe_psql(
	'postgres', qq{
CREATE TABLE topic_dump (part integer, off bigint, key text, ce_id text, payload jsonb);
COPY topic_dump FROM '$dir/topic.copy';
-- one copy per ce_id, the first in its partition
CREATE TABLE msgs AS
SELECT DISTINCT ON (ce_id) part, off, key, ce_id, payload->>'op' AS op, payload
  FROM topic_dump ORDER BY ce_id, part, off;
CREATE TABLE replayed (LIKE items);
INSERT INTO replayed
SELECT (jsonb_populate_record(NULL::items, m.payload->'after')).*
  FROM (SELECT DISTINCT ON (key) * FROM msgs ORDER BY key, off DESC) AS m
 WHERE m.op <> 'delete';
CREATE INDEX ON msgs (key, off);
ANALYZE msgs;
});

my $changes = $node->safe_psql('postgres',
	"SELECT count(*) FROM msgs WHERE op IN ('insert', 'update', 'delete')");
ok($changes > 2000, "the writers committed $changes captured changes");
my $reads = $node->safe_psql('postgres', "SELECT count(*) FROM msgs WHERE op = 'read'");
is($reads, $emitted, "the topic holds the $emitted read events the snapshot counted, once each");

is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FROM ((TABLE items EXCEPT ALL TABLE replayed)
                      UNION ALL (TABLE replayed EXCEPT ALL TABLE items)) AS d}),
	0,
	'replaying the topic per key gives exactly the table');
is($node->safe_psql('postgres', 'SELECT count(*) FROM replayed'),
	$node->safe_psql('postgres', 'SELECT count(*) FROM items'),
	'as many rows replayed as in the table');

is( $node->safe_psql(
		'postgres', qq{
SELECT count(*) FROM generate_series(1, $rows) AS g(id)
  LEFT JOIN (SELECT key, count(*) FILTER (WHERE op = 'read') AS reads,
                    count(*) FILTER (WHERE op = 'delete') AS deletes
               FROM msgs GROUP BY key) AS m ON m.key = g.id::text
 WHERE coalesce(m.deletes, 0) = 0 AND coalesce(m.reads, 0) <> 1}),
	0,
	'every row there at the capture and never deleted has exactly one read event');

is($node->safe_psql('postgres', 'SELECT count(*) FROM (SELECT key FROM msgs GROUP BY key HAVING count(DISTINCT part) > 1) AS k'),
	0, 'each key is in one partition');

my $disorder = $node->safe_psql(
	'postgres', q{
WITH versions AS (
    SELECT key, off, op,
           CASE op WHEN 'delete' THEN (payload->'before'->>'ver')::numeric + 0.5
                   ELSE (payload->'after'->>'ver')::numeric END AS v
      FROM msgs),
steps AS (
    SELECT *, lag(v) OVER (PARTITION BY key ORDER BY off) AS prev,
              lag(op) OVER (PARTITION BY key ORDER BY off) AS prev_op
      FROM versions)
SELECT count(*) || ' ' || coalesce(string_agg(key || ': ' || prev_op || ' ' || prev || ' then ' || op || ' ' || v, ', ')
                                   FILTER (WHERE rn <= 10), '')
  FROM (SELECT *, row_number() OVER () AS rn FROM steps
         WHERE prev IS NOT NULL AND (v < prev OR (v = prev AND op <> 'read'))) AS bad});
like($disorder, qr/^0 /, 'per key, no change and no read arrived out of order')
  or diag $disorder;

# The seam was crossed both ways: keys changed before their read (the read
# carries the change) and after it.
my ($before_read, $after_read) = split /\|/, $node->safe_psql(
	'postgres', q{
SELECT count(*) FILTER (WHERE c.off < r.off), count(*) FILTER (WHERE c.off > r.off)
  FROM msgs AS r JOIN msgs AS c ON c.key = r.key AND c.op <> 'read'
 WHERE r.op = 'read'});
ok($before_read > 50 && $after_read > 50,
	"changes came before ($before_read) and after ($after_read) the read of their key");

my @crashes = log_matches($node, $log_start,
	qr/terminated by signal|PANIC|server process .* was terminated/);
is(scalar @crashes, 0, 'no backend crashed') or diag join("\n", @crashes);

done_testing();

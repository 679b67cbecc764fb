# t/201_capture_to_kafka.pl: a captured table under concurrent writers
# (pgbench, several clients) delivers every committed row change to Kafka
# exactly once per ce_id, in commit order per key, with the row images of
# the committed rows; rolled-back changes never arrive; the relay is woken
# at commit for captured changes (its poll interval is far longer than the
# test waits).
#
# Each row carries a counter `seq` that every UPDATE increments under the
# row lock, so the changes of one key are numbered 0 (insert), 1, 2, ...
# (updates) and last+1 (delete) in commit order: the messages of a key must
# be exactly that sequence, once each.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use IPC::Run;
use JSON::PP;
use Test::More;

use EventpipeTest;
use FaultTest;

my $kafka = start_kafka();
my $node  = new_node(
	'main',
	bootstrap => $kafka->{bootstrap},
	conf      => 'eventpipe.relay_batch_size = 100');
$node->safe_psql('postgres', 'CREATE EXTENSION eventpipe');
ok(wait_for_relay_state($node, 'idle'), 'relay worker is idle');
# From now on only commits wake the relay within the test's waits.
$node->safe_psql('postgres',
	"ALTER SYSTEM SET eventpipe.relay_poll_interval = '10min'; SELECT pg_reload_conf()");

my $topic = 't201.accounts';
my $keys  = 40;
# Created beforehand: the first message must not wait for auto-creation.
ok(create_topic(topic_admin($kafka), $topic, 3, 1), "topic $topic created");

$node->safe_psql(
	'postgres', qq{
CREATE TABLE accounts (
    id      integer PRIMARY KEY,
    seq     integer NOT NULL DEFAULT 0,
    balance numeric(12, 2) NOT NULL DEFAULT 0,
    note    text);
SELECT eventpipe.capture('accounts', '$topic');
-- the writers have no rights on the outbox
CREATE ROLE writer LOGIN;
GRANT SELECT, INSERT, UPDATE, DELETE ON accounts TO writer;
});

# ---- the relay is woken at commit --------------------------------------

# The first change, alone: with a 10-minute poll, only the commit wake-up
# can bring it to Kafka within the minute.
$node->safe_psql('postgres',
	"INSERT INTO accounts (id, note) VALUES (1, 'first')",
	extra_params => [ '-U', 'writer' ]);
my $first = consume_all($kafka->{bootstrap}, $topic, 1, 60);
is(scalar @$first, 1, 'the first captured change reached Kafka without a poll');

# ---- concurrent writers -------------------------------------------------

$node->safe_psql('postgres',
	"INSERT INTO accounts (id, note) SELECT g, 'row ' || g FROM generate_series(2, $keys) g",
	extra_params => [ '-U', 'writer' ]);

my $dir = PostgreSQL::Test::Utils::tempdir();
PostgreSQL::Test::Utils::append_to_file("$dir/update.sql", qq{
\\set id random(1, $keys)
UPDATE accounts SET seq = seq + 1, balance = balance + 1.25, note = 'by ' || :client_id WHERE id = :id;
});
PostgreSQL::Test::Utils::append_to_file("$dir/two_rows.sql", qq{
\\set id random(1, $keys)
BEGIN;
UPDATE accounts SET seq = seq + 1, balance = balance - 1 WHERE id = :id;
UPDATE accounts SET seq = seq + 1, balance = balance + 1 WHERE id = :id;
COMMIT;
});
PostgreSQL::Test::Utils::append_to_file("$dir/rolled_back.sql", qq{
\\set id random(1, $keys)
BEGIN;
UPDATE accounts SET seq = seq + 1, note = 'rolled back' WHERE id = :id;
ROLLBACK;
});

my ($out, $err) = ('', '');
my $ok = IPC::Run::run(
	[
		'pgbench', '-n', '-c', '6', '-j', '3', '-t', '150',
		'-f', "$dir/update.sql\@6", '-f', "$dir/two_rows.sql\@2",
		'-f', "$dir/rolled_back.sql\@2",
		'-h', $node->host, '-p', $node->port, '-U', 'writer', 'postgres'
	],
	'<', \undef, '>', \$out, '2>', \$err);
ok($ok, 'pgbench ran 900 transactions in 6 concurrent sessions') or diag $err;
note $out;

# Some rows go away at the end: one delete event each, numbered after
# their last update.
$node->safe_psql('postgres', "DELETE FROM accounts WHERE id > $keys - 10",
	extra_params => [ '-U', 'writer' ]);

# What committed: per key, the insert, seq updates and maybe a delete.
my $updates = $node->safe_psql('postgres',
	"SELECT sum(seq) FROM accounts") + 0;
# Inserts and deletes, plus the updates: those of the deleted rows are known
# from their delete events' images, once they are in.
my $expected = $keys + 10;

my $msgs = consume_until(
	$kafka->{bootstrap},
	$topic,
	sub {
		my ($m) = @_;
		my $deletes = grep { ($_->{value}{op} // '') eq 'delete' } @$m;
		return 0 unless $deletes == 10;
		my $deleted_updates = 0;
		$deleted_updates += $_->{value}{before}{seq}
		  for grep { $_->{value}{op} eq 'delete' } @$m;
		return @$m >= $expected + $updates + $deleted_updates;
	},
	120);

my @deletes = grep { ($_->{value}{op} // '') eq 'delete' } @$msgs;
my $deleted_updates = 0;
$deleted_updates += $_->{value}{before}{seq} for @deletes;
my $total = $expected + $updates + $deleted_updates;
ok($updates + $deleted_updates > 500, "pgbench committed "
	  . ($updates + $deleted_updates) . ' updates');
is(scalar @$msgs, $total,
	"the topic holds one message per committed change ($total)");

my %ce;
$ce{ $_->{ce_id} // '' }++ for @$msgs;
is(scalar(grep { $ce{$_} > 1 } keys %ce), 0, 'no ce_id arrived twice');
is(scalar(grep { !/^[0-9a-f-]{36}$/ } keys %ce), 0, 'every message has a ce_id');

# Per key: seq 0 (insert), 1..n (updates), n+1 (delete), each once, in order.
my $seq_of = sub {
	my ($m) = @_;
	my $v = $m->{value};
	return undef unless ref $v eq 'HASH';
	return $v->{op} eq 'delete' ? $v->{before}{seq} + 1 : $v->{after}{seq};
};
my @order = check_key_order($msgs, $seq_of);
is(scalar @order, 0, 'each key\'s changes arrived once each, in commit order')
  or diag join("\n", @order[ 0 .. ($#order < 9 ? $#order : 9) ]);

# Every message is well formed: key = the id's text, type, op, images.
my @bad;
for my $m (@$msgs)
{
	my $v  = $m->{value};
	my $op = $v->{op} // '(none)';
	my $id = ($op eq 'delete' ? $v->{before} : $v->{after})->{id} // '(none)';
	push @bad, "offset $m->{offset}: key " . ($m->{key} // 'null') . " for id $id"
	  if ($m->{key} // '') ne $id;
	push @bad, "offset $m->{offset}: ce_type $m->{headers}{ce_type} for $op"
	  if ($m->{headers}{ce_type} // '') ne "accounts.$op";
	push @bad, "offset $m->{offset}: table $v->{table}"
	  if ($v->{table} // '') ne 'public.accounts';
	push @bad, "offset $m->{offset}: $op with images "
	  . (defined $v->{before} ? 'before ' : '') . (defined $v->{after} ? 'after' : '')
	  if ($op eq 'insert' && (defined $v->{before} || !defined $v->{after}))
	  || ($op eq 'update' && (!defined $v->{before} || !defined $v->{after}))
	  || ($op eq 'delete' && (!defined $v->{before} || defined $v->{after}));
	push @bad, "offset $m->{offset}: a rolled-back change"
	  if ($v->{after}{note} // '') eq 'rolled back';
	push @bad, "offset $m->{offset}: update that does not add 1 to seq"
	  if $op eq 'update' && $v->{after}{seq} != $v->{before}{seq} + 1;
	push @bad, "offset $m->{offset}: txid " . ($v->{txid} // 'null')
	  unless ($v->{txid} // '') =~ /^\d+$/;
}
is(scalar @bad, 0, 'every message has its key, type, table and images')
  or diag join("\n", @bad[ 0 .. ($#bad < 9 ? $#bad : 9) ]);

# The last image of each remaining row is the row as committed.
my %last;
$last{ $_->{key} } = $_->{value}{after} for grep { $_->{value}{op} ne 'delete' } @$msgs;
my $rows = $node->safe_psql('postgres',
	"SELECT id, row_to_json(a)::jsonb::text FROM accounts a ORDER BY id");
my @differ;
for my $line (split /\n/, $rows)
{
	my ($id, $json) = split /\|/, $line, 2;
	push @differ, $id
	  if json_text($last{$id}) ne json_text(JSON::PP->new->decode($json));
}
is(scalar @differ, 0, 'the last image of each row is the committed row')
  or diag "rows that differ: @differ";

# The transactions of two updates: both events carry the same txid.
my %by_txid;
push @{ $by_txid{ $_->{value}{txid} } }, $_ for @$msgs;
my @pairs = grep { @$_ == 2 } values %by_txid;
ok(@pairs > 0, scalar(@pairs) . ' transactions of two updates share their txid');

is(outbox_count($node), 0, 'the outbox is empty');
is(relay_stat($node, 'events_dead'), 0, 'nothing was dead-lettered');

done_testing();

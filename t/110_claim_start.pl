# t/110_claim_start.pl: where the relay's claims from the start begin
# (worker/relay/claim_start.c), read from its DEBUG1 line for each such
# claim.  The poll interval is 20 s here, and what must leave at once is
# waited for 10 s: a claim from the first entry, made once a poll interval
# has passed since the last one, cannot stand in for the start.
#
#  (a) once delivered rows are deleted, claims from the start begin past
#      their ids instead of at the primary key's first entry;
#  (b) not past a transaction that drew its id earlier and is still open:
#      its event leaves at its commit;
#  (c) a TRUNCATE ... RESTART IDENTITY of the outbox gives it new storage:
#      the next claim begins at the first entry, and finds a row with id 1
#      that reported nothing;
#  (d) an identity sequence set back with setval(): publish()'s commit
#      report of an id below the start sends the claims back to the first
#      entry at once; a row inserted below the start OVERRIDING SYSTEM
#      VALUE, which reports nothing, leaves with a claim from the first
#      entry;
#  (e) an identity sequence that caches several ids, or counts down: claims
#      begin at the first entry.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use List::Util qw(max);

use EventpipeTest;
use FaultTest;

my $kafka = start_kafka();
my $bootstrap = $kafka->{bootstrap};
my $node = new_node('main',
	bootstrap     => $bootstrap,
	poll_interval => '20s',
	conf          => 'log_min_messages = debug1');
$node->safe_psql('postgres', 'CREATE EXTENSION eventpipe');
ft_prepare($node);
ok(wait_for_relay_state($node, 'idle'), 'relay worker is idle');

sub q1 { return $node->safe_psql('postgres', $_[0]) }

# The ids that the claims from the start logged since $position began past.
sub starts_since
{
	my ($position) = @_;
	return [ log_since($node, $position) =~ /a claim from the start began past id (\d+);/g ];
}

# Publish $count events of $topic one commit at a time, each relayed before
# the next: every commit starts a run with a claim from the start.
sub publish_one_by_one
{
	my ($topic, $count) = @_;
	for my $i (1 .. $count)
	{
		bulk_publish($node, $topic, ['one'], 1);
		wait_until(sub { outbox_count($node) == 0 }, 10)
		  or return 0;
	}
	return 1;
}

# ---- (a) the start moves past delivered rows ------------------------------

my $topic = 't110.steady';
bulk_publish($node, $topic, [ map { "k$_" } 1 .. 10 ], 300);
ok(wait_until(sub { outbox_count($node) == 0 }, 60), '(a) 3,000 events relayed');
my $last_bulk_id = q1('SELECT last_value FROM eventpipe.outbox_id_seq');
my $position = log_position($node);
ok(publish_one_by_one($topic, 6), '(a) six more events relayed one by one');
my $starts = starts_since($position);
cmp_ok(scalar @$starts, '>=', 6, '(a) each began with a claim from the start')
  or diag log_since($node, $position);
cmp_ok(max(@$starts), '>=', $last_bulk_id,
	"(a) claims from the start began past the 3,000 deleted rows (id $last_bulk_id)");

# ---- (b) not past an open transaction's id --------------------------------

my $late_topic = 't110.late';
my $t1 = $node->background_psql('postgres');
$t1->query_safe('BEGIN');
$t1->query_safe(qq{SELECT ft_publish_round('$late_topic', ARRAY['L'], 1)});
my $late_id = $t1->query_safe('SELECT max(id) FROM eventpipe.outbox');
$position = log_position($node);
bulk_publish($node, $topic, [ map { "k$_" } 1 .. 10 ], 100);
ok(wait_until(sub { outbox_count($node) == 0 }, 60),
	'(b) 1,000 later events relayed while the first transaction is open');
ok(publish_one_by_one($topic, 6), '(b) six more one by one');
$starts = starts_since($position);
cmp_ok(scalar @$starts, '>=', 6, '(b) claims from the start were made');
cmp_ok(max(@$starts), '<', $late_id,
	"(b) none began past the open transaction's id $late_id");
$t1->query_safe('COMMIT');
$t1->quit;
ok(wait_until(sub { outbox_count($node) == 0 }, 10),
	'(b) the late commit was relayed at once (the poll interval is 20 s)');
check_topic($bootstrap, $late_topic, ledger($node, $late_topic), '(b) late commit');
$position = log_position($node);
ok(publish_one_by_one($topic, 6), '(b) six more one by one after its commit');
cmp_ok(max(@{ starts_since($position) }), '>=', $late_id,
	'(b) then claims from the start began past its id');

# ---- (c) TRUNCATE ... RESTART IDENTITY ------------------------------------

# In the transaction after it: a row inserted directly, which reports
# nothing, takes id 1; then publish() takes an id above the old start, so
# that its commit report wakes the relay without telling of id 1.
my $restart_topic = 't110.restart';
my $above = q1('SELECT last_value FROM eventpipe.outbox_id_seq') + 1000;
q1('TRUNCATE eventpipe.outbox RESTART IDENTITY');
$position = log_position($node);
q1(qq{
BEGIN;
WITH direct AS (
    INSERT INTO eventpipe.outbox (event_id, topic, key, payload, event_type)
    VALUES (gen_random_uuid(), '$restart_topic', 'R', '{"key": "R", "seq": 1}', 'test')
    RETURNING id, event_id)
INSERT INTO ft_ledger SELECT '$restart_topic', 'R', 1, event_id FROM direct;
SELECT setval('eventpipe.outbox_id_seq', $above);
SELECT ft_publish_round('$restart_topic', ARRAY['S'], 1);
COMMIT;
});
ok(wait_until(sub { outbox_count($node) == 0 }, 10),
	'(c) after TRUNCATE ... RESTART IDENTITY, a row with id 1 was relayed at once');
is(starts_since($position)->[0], 0, '(c) the first claim after it began at the first entry');
check_topic($bootstrap, $restart_topic, ledger($node, $restart_topic), '(c) after TRUNCATE');

# ---- (d) ids set back ----------------------------------------------------

$position = log_position($node);
ok(publish_one_by_one($topic, 6), '(d) six events one by one');
my $start_before = max(@{ starts_since($position) });
cmp_ok($start_before, '>', 2, "(d) claims began past id $start_before");
q1(q{SELECT setval('eventpipe.outbox_id_seq', 1)});
$position = log_position($node);
my $back_topic = 't110.setback';
bulk_publish($node, $back_topic, ['B'], 1);
is(q1('SELECT last_value FROM eventpipe.outbox_id_seq'), '2', '(d) the next event has id 2');
ok(wait_until(sub { outbox_count($node) == 0 }, 10),
	'(d) publish() reported it at commit, and it was relayed at once');
is(starts_since($position)->[0], 0, '(d) the first claim after it began at the first entry');
check_topic($bootstrap, $back_topic, ledger($node, $back_topic), '(d) after setval');

$position = log_position($node);
ok(publish_one_by_one($topic, 6), '(d) six more events one by one');
$start_before = max(@{ starts_since($position) });
cmp_ok($start_before, '>', 4, "(d) claims began past id $start_before again");
my $override_topic = 't110.override';
my $override_id = q1(qq{
INSERT INTO eventpipe.outbox (id, event_id, topic, key, payload, event_type)
OVERRIDING SYSTEM VALUE
VALUES (3, gen_random_uuid(), '$override_topic', 'O', '{"key": "O", "seq": 1}', 'test')
RETURNING event_id});
q1(qq{INSERT INTO ft_ledger VALUES ('$override_topic', 'O', 1, '$override_id')});
my $since = time();
ok(wait_until(sub { outbox_count($node) == 0 }, 45),
	'(d) a row inserted below the start, reporting nothing, was relayed');
note sprintf('(d) after %.1f s (poll interval 20 s)', time() - $since);
check_topic($bootstrap, $override_topic, ledger($node, $override_topic),
	'(d) OVERRIDING SYSTEM VALUE');

# ---- (e) ids out of order ---------------------------------------------

for my $case ([ 'CACHE 10', 'caching ten ids' ], [ 'CACHE 1 INCREMENT BY -1', 'counting down' ])
{
	my ($setting, $label) = @$case;
	q1("ALTER SEQUENCE eventpipe.outbox_id_seq $setting");
	$position = log_position($node);
	ok(publish_one_by_one($topic, 4), "(e) four events one by one, the sequence $label");
	$starts = starts_since($position);
	cmp_ok(scalar @$starts, '>=', 4, "(e) $label: claims from the start were made");
	is(max(@$starts), 0, "(e) $label: each began at the first entry");
}
q1('ALTER SEQUENCE eventpipe.outbox_id_seq INCREMENT BY 1');

check_topic($bootstrap, $topic, ledger($node, $topic), 'every event of the steady topic');

$node->stop;
stop_kafka($kafka);
done_testing();

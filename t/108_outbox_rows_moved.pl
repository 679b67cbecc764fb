# t/108_outbox_rows_moved.pl: the relay deletes a delivered event's row
# where its claim found it (the row's ctid) only while that is still the
# event's row.
#
# VACUUM FULL rewrites the outbox while a batch waits for the broker
# (stopped with SIGSTOP): the rows in flight move, and other pending rows
# come to sit where they were.  When the broker resumes, every event must
# arrive and leave the outbox once: a pending row at a claimed address is
# not deleted (it would be lost), and a moved row is deleted by id (else it
# would be sent again).  Then a DELETE trigger on the outbox must fire for
# every delivered row.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

use EventpipeTest;
use FaultTest;

my $kafka = start_kafka();
my $node  = new_node('main',
	bootstrap => $kafka->{bootstrap},
	# dead rows stay where they are until the VACUUM FULL
	conf => "autovacuum = off\nlog_min_messages = debug1");
$node->safe_psql('postgres', 'CREATE EXTENSION eventpipe');
ft_prepare($node);
ok(wait_for_relay_state($node, 'idle'), 'relay worker is idle');

sub q1 { return $node->safe_psql('postgres', $_[0]) }

# Delivered rows first: their dead versions fill the outbox's first pages,
# which the VACUUM FULL gives to the rows that come after.
my $delivered_topic = 't108.before';
bulk_publish($node, $delivered_topic, [ map { "d$_" } 1 .. 10 ], 300);
ok(wait_until(sub { outbox_count($node) == 0 }, 60), '3,000 events relayed first');
check_topic($kafka->{bootstrap}, $delivered_topic, ledger($node, $delivered_topic),
	'before the rewrite');

# A batch in flight: claimed and handed to librdkafka, its acknowledgements
# held back by the stopped broker; more pending rows behind it.
my $topic = 't108.moved';
my $broker = kafka_node_pid($kafka, 1);
ok(kill('STOP', $broker), 'broker stopped (SIGSTOP)');
my $log = log_position($node);
bulk_publish($node, $topic, [ map { "k$_" } 1 .. 10 ], 100);
usleep(2_000_000);
bulk_publish($node, $topic, [ map { "k$_" } 1 .. 10 ], 300);
usleep(1_000_000);
is(relay_stat($node, 'events_sent') + 0, 3000, 'nothing of the 4,000 new events acknowledged yet');

q1('CREATE TABLE t108_where (id bigint, at tid)');
q1('INSERT INTO t108_where SELECT id, ctid FROM eventpipe.outbox');
q1('VACUUM FULL eventpipe.outbox');
my $reused = q1(
	'SELECT count(*) FROM eventpipe.outbox AS o JOIN t108_where AS w ON o.ctid = w.at AND o.id <> w.id');
my $moved = q1(
	'SELECT count(*) FROM eventpipe.outbox AS o JOIN t108_where AS w ON o.id = w.id AND o.ctid <> w.at');
cmp_ok($moved, '>', 0, "the rewrite moved rows ($moved)");
cmp_ok($reused, '>', 0, "other rows now sit where some of them were ($reused)");

ok(kill('CONT', $broker), 'broker resumed (SIGCONT)');
ok(wait_until(sub { outbox_count($node) == 0 }, 120), 'the outbox drained');
ok(log_matches($node, $log, qr/delivered rows were no longer where they were claimed/),
	'the relay found rows moved since their claim and deleted them by id');
my $seen = check_topic($kafka->{bootstrap}, $topic, ledger($node, $topic), 'across the rewrite');
is($seen->{duplicates}, 0, 'no event was sent twice');
is(relay_stat($node, 'events_sent') + 0, 7000, 'pg_stat_relay counts every event once');

# A DELETE trigger someone put on the outbox (a foreign key referencing it
# makes one too) fires for every delivered row: with one, the relay
# deletes by SQL.
q1(q{CREATE TABLE t108_gone (id bigint);
     CREATE FUNCTION t108_note_gone() RETURNS trigger LANGUAGE plpgsql AS
       $$BEGIN INSERT INTO public.t108_gone VALUES (OLD.id); RETURN OLD; END$$;
     CREATE TRIGGER t108_gone AFTER DELETE ON eventpipe.outbox
       FOR EACH ROW EXECUTE FUNCTION t108_note_gone()});
my $triggered = 't108.triggered';
bulk_publish($node, $triggered, [ map { "t$_" } 1 .. 10 ], 20);
ok(wait_until(sub { outbox_count($node) == 0 }, 60), '200 events relayed with a DELETE trigger on the outbox');
is(q1('SELECT count(DISTINCT id) FROM t108_gone'), 200, 'the trigger fired for each of them');
check_topic($kafka->{bootstrap}, $triggered, ledger($node, $triggered), 'with a trigger');

ok(stop_kafka($kafka), 'Kafka stopped');
$node->stop;
done_testing();

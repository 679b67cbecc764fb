# t/105_overlap_and_shards.pl:
#  (a) transactions that commit out of id order: T1 publishes first and
#      commits last, after T2 and after many later events were relayed; a
#      prepared transaction committed later; nothing may be skipped;
#  (a2) a transaction committed late while the relay works through a
#      backlog (claiming past its batches in flight) goes out with the next
#      batches, not after the backlog;
#  (b) eventpipe.relay_workers = 4 and 200 keys x 20 events from 4 sessions:
#      every event arrives, in order per key, and each worker relayed its
#      share of the keys (pg_stat_relay);
#  (c) the four workers through a broker SIGKILL, one of them terminated
#      while it waits: nothing lost, order per key kept.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

use EventpipeTest;
use FaultTest;

my $kafka = start_kafka();
my $bootstrap = $kafka->{bootstrap};
# batches of 1,000: (a)'s 3,000 later events then take several batches,
# each claimed past the open transaction's rows
my $node = new_node('main',
	bootstrap => $bootstrap,
	conf      => "max_prepared_transactions = 5\neventpipe.relay_batch_size = 1000");
$node->safe_psql('postgres', 'CREATE EXTENSION eventpipe');
ft_prepare($node);
ok(wait_for_relay_state($node, 'idle'), 'relay worker is idle');

sub q1 { return $node->safe_psql('postgres', $_[0]) }

# ---- (a) out-of-order commits ------------------------------------------

my $topic = 't105.overlap';
my $t1 = $node->background_psql('postgres');
my $t2 = $node->background_psql('postgres');

# T1 takes the first ids and stays open.
$t1->query_safe('BEGIN');
$t1->query_safe(qq{SELECT ft_publish_round('$topic', ARRAY['t1'], 3)});
my $t1_max = $t1->query_safe('SELECT max(id) FROM eventpipe.outbox');
# T2 publishes after it, with higher ids, and commits first.
$t2->query_safe('BEGIN');
$t2->query_safe(qq{SELECT ft_publish_round('$topic', ARRAY['t2'], 3)});
# T1's rows are not committed: T2 sees only its own rows of the topic
my $t2_min = $t2->query_safe("SELECT min(id) FROM eventpipe.outbox WHERE topic = '$topic'");
cmp_ok($t2_min, '>', $t1_max, "(a) T2's ids ($t2_min..) follow T1's (..$t1_max)");
$t2->query_safe('COMMIT');

# A prepared transaction in between, committed even later.
$t2->query_safe('BEGIN');
$t2->query_safe(qq{SELECT ft_publish_round('$topic', ARRAY['prepared'], 2)});
$t2->query_safe(q{PREPARE TRANSACTION 'ft105'});

# Many later events go through (several batches) while T1 is open.
my $sent = relay_stat($node, 'events_sent');
bulk_publish($node, $topic, [ map { "after-k$_" } 0 .. 9 ], 300);
ok(wait_until(sub { outbox_count($node) == 0 }, 60),
	'(a) T2 and 3,000 later events were relayed while T1 is open');
cmp_ok(relay_stat($node, 'batches'), '>=', 3, '(a) in several batches');
my $t2_ids = [ map { $_->{event_id} } @{ ledger($node, $topic) } ];

$t1->query_safe('COMMIT');
q1(q{COMMIT PREPARED 'ft105'});
$t1->quit;
$t2->quit;
ok(wait_until(sub { outbox_count($node) == 0 }, 30),
	'(a) the late commits were relayed too');
my $ledger = ledger($node, $topic);
is(scalar @$ledger, 3 + 3 + 2 + 3000, '(a) 3,008 events committed');
check_topic($bootstrap, $topic, $ledger, '(a) out-of-order commits');

# The same key from two overlapping transactions: both arrive.  (Their
# order in Kafka is commit order, not publish order: the README says
# publish order is commit order only when the transactions lock a business
# row first, which these do not.)
my $topic_same = 't105.samekey';
$t1 = $node->background_psql('postgres');
$t1->query_safe('BEGIN');
my $id1 = $t1->query_safe(qq{SELECT eventpipe.publish('$topic_same', 'S', '{"key": "S", "seq": 1}')});
my $id2 = q1(qq{SELECT eventpipe.publish('$topic_same', 'S', '{"key": "S", "seq": 2}')});
ok(wait_until(sub { outbox_count($node) == 0 }, 30), '(a) the second event of key S was relayed');
$t1->query_safe('COMMIT');
$t1->quit;
my $msgs;
ok( wait_until(
		sub {
			$msgs = read_topic($bootstrap, $topic_same) // [];
			my %seen = map { ($_->{ce_id} // '') => 1 } @$msgs;
			return $seen{$id1} && $seen{$id2};
		},
		30),
	'(a) both events of key S arrived');
note '(a) key S arrived in the order: '
  . join(', ', map { ($_->{ce_id} // '') eq $id1 ? 'T1 (published first, committed last)' : 'T2' } @$msgs);

# ---- (a2) a late commit while the relay works through a backlog ----------
# With batches in flight the relay claims the next ones past them (where
# prepared transactions are disabled); rows committed late below them must
# still go out with the next batches, long before the backlog is gone, and
# before the events of their keys published after their commit.  T1 writes
# more events than a batch holds, so the claim from the start that finds
# them cannot take them all at once.
q1('ALTER SYSTEM SET max_prepared_transactions = 0');
$node->restart;
ok(wait_for_relay_state($node, 'idle'), '(a2) relay worker is idle, prepared transactions disabled');
my $topic_late = 't105.late';
my @late_keys = map { "L$_" } 0 .. 9;
$t1 = $node->background_psql('postgres');
$t1->query_safe('BEGIN');
$t1->query_safe(sprintf(q{SELECT ft_publish_round('%s', ARRAY[%s], 150)},
	$topic_late, join(',', map { "'$_'" } @late_keys)));
my $t1_last = $t1->query_safe('SELECT max(id) FROM eventpipe.outbox');
$sent = relay_stat($node, 'events_sent');
q1(q{INSERT INTO eventpipe.outbox (event_id, topic, key, payload, event_type)
     SELECT gen_random_uuid(), 't105.backlog', 'b' || (i % 100), '{"pad": "0123456789"}', 'Backlog'
       FROM generate_series(1, 200000) AS i});
ok(wait_until(sub { relay_stat($node, 'events_sent') >= $sent + 5000 }, 60),
	'(a2) the relay works through a backlog of 200,000 events');
$t1->query_safe('COMMIT');
$t1->quit;
# the next event of each key, published right after that commit (they go
# out after the backlog: their ids come after it)
bulk_publish($node, $topic_late, \@late_keys, 1);
my ($late_left, $backlog_left) = (1, 0);
wait_until(
	sub {
		($late_left, $backlog_left) = split /\|/, q1(
			qq{SELECT count(*) FILTER (WHERE id <= $t1_last), count(*) FILTER (WHERE topic <> '$topic_late')
			     FROM eventpipe.outbox});
		return $late_left == 0 || $backlog_left == 0;
	},
	120);
is($late_left, 0, '(a2) the 1,500 events committed late left the outbox');
cmp_ok($backlog_left, '>', 0,
	"(a2) ... while the backlog was still being relayed ($backlog_left events left)");
check_topic($bootstrap, $topic_late, ledger($node, $topic_late), '(a2) late commit');
ok(wait_until(sub { outbox_count($node) == 0 }, 120), '(a2) the backlog drained');

# ---- (b) four relay workers ----------------------------------------------

q1('ALTER SYSTEM SET eventpipe.relay_workers = 4');
$node->restart;
ok( wait_until(
		sub {
			my $s = relay_stats($node);
			return @$s == 4 && !grep { $_->{state} ne 'idle' } @$s;
		},
		60),
	'(b) four relay workers are idle')
  or diag explain relay_stats($node);

my $topic_b = 't105.shards';
my $pubs = start_publishers($node,
	name     => 'sh',
	topic    => $topic_b,
	sessions => 4,
	keys     => 50,
	per_txn  => 10,
	max_txns => 100,
	sleep_ms => 5);
is(reap_publishers($pubs, 180), 4, '(b) 4 sessions published 50 keys x 20 events each');
is(ledger_count($node, $topic_b), 4000, '(b) 4,000 events committed');
ok(wait_until(sub { outbox_count($node) == 0 }, 120), '(b) the outbox drained');
check_topic($bootstrap, $topic_b, ledger($node, $topic_b), '(b) four workers');

my $stats = relay_stats($node);
my %share = map { split /\|/ } split /\n/,
  q1("SELECT eventpipe.relay_shard(key, 0, 4), count(*) FROM ft_ledger WHERE topic = '$topic_b' GROUP BY 1");
for my $w (@$stats)
{
	cmp_ok($w->{events_sent}, '>', 0, "(b) worker $w->{worker} sent events ($w->{events_sent})");
	cmp_ok($w->{events_sent}, '>=', $share{ $w->{worker} } // 0,
		"(b) worker $w->{worker} sent at least its share of the keys' events (" . ($share{ $w->{worker} } // 0) . ')');
}

# (b2) Each worker sends exactly the rows eventpipe.relay_shard() gives it,
# keyed (a hash of the key) and keyless (a hash of the id): the relay
# computes the shard itself when it claims without SQL.  Counted while
# paused, from the outbox, then against what each worker sent.
q1('SELECT eventpipe.pause_relay()');
ok(wait_until(sub { !grep { $_->{state} ne 'paused' } @{ relay_stats($node) } }, 30),
	'(b2) the four workers are paused');
is(q1('SELECT count(*) FROM eventpipe.outbox WHERE next_attempt_at IS NOT NULL'), 0,
	'(b2) no retry is scheduled: the workers claim without SQL');
q1(q{SELECT eventpipe.publish('t105.shard_split', CASE WHEN g % 2 = 0 THEN 'split-' || g % 97 END,
                              jsonb_build_object('n', g))
       FROM generate_series(1, 800) AS g});
my %expected = map { split /\|/ } split /\n/,
  q1('SELECT eventpipe.relay_shard(key, id, 4), count(*) FROM eventpipe.outbox GROUP BY 1');
my %sent_before = map { $_->{worker} => $_->{events_sent} } @{ relay_stats($node) };
q1('SELECT eventpipe.resume_relay()');
ok(wait_until(sub { outbox_count($node) == 0 }, 60), '(b2) 800 events, half without a key, relayed');
is_deeply(
	{ map { $_->{worker} => $_->{events_sent} - $sent_before{ $_->{worker} } } @{ relay_stats($node) } },
	{ map { $_ => $expected{$_} // 0 } 0 .. 3 },
	'(b2) each worker sent exactly the rows relay_shard() gives it');

# ---- (c) four relay workers through a broker outage ------------------------

my $topic_c = 't105.shards_outage';
$pubs = start_publishers($node,
	name     => 'so',
	topic    => $topic_c,
	sessions => 4,
	keys     => 25,
	per_txn  => 5,
	sleep_ms => 10);
my $sent0 = 0;
$sent0 += $_->{events_sent} for @{ relay_stats($node) };
ok( wait_until(
		sub { my $t = 0; $t += $_->{events_sent} for @{ relay_stats($node) }; $t >= $sent0 + 500 },
		60),
	'(c) the four workers deliver the stream');
ok(kill_kafka_node($kafka, 1), '(c) Kafka killed (SIGKILL)');
my $t_kill = time();
ok( wait_until(
		sub { !grep { $_->{state} ne 'waiting for broker' } @{ relay_stats($node) } }, 30),
	'(c) all four workers wait for the broker')
  or diag explain relay_stats($node);
# one of them is terminated while it waits
my $pid = relay_pids($node)->{2};
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok(wait_until(sub { my $p = relay_pids($node)->{2} // 0; $p > 0 && $p != $pid }, 30),
	'(c) worker 2, terminated while waiting, is started again');
wait_until(sub { time() - $t_kill >= 10 }, 15);
ok(start_kafka_node($kafka, 1), '(c) Kafka node 1 started again');
is(stop_publishers($pubs), 4, '(c) the publishing sessions ended normally');
ok(wait_until(sub { outbox_count($node) == 0 }, 120), '(c) the outbox drained');
check_topic($bootstrap, $topic_c, ledger($node, $topic_c), '(c) four workers, broker outage');

$node->stop;
ok(stop_kafka($kafka), 'Kafka stopped');
done_testing();

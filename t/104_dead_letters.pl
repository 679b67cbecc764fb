# t/104_dead_letters.pl: events Kafka refuses, among normal events of the
# same keys, on a broker that does not create topics by itself
# (auto.create.topics.enable=false), with eventpipe.relay_max_attempts = 3.
#  (a) permanent failures: a payload over 1 MB (librdkafka refuses it) and
#      an event for the internal topic __consumer_offsets (the broker
#      refuses it: TOPIC_EXCEPTION, or with EP_TEST_RELAY_EXACTLY_ONCE=on
#      TOPIC_AUTHORIZATION_FAILED, as it refuses to add the topic to a
#      transaction) go to dead_letters at once, with the reason; the other
#      events arrive, in order per key; retry_dead() puts them back in the
#      outbox, all or by id or by topic, and they fail into dead_letters
#      again;
#  (b) a transient failure: events for a topic that does not exist yet are
#      retried with back-off (attempts, next_attempt_at, last_error grow),
#      the later events of their topic and key wait behind them while other
#      keys flow, and once the topic is created everything arrives, in order;
#      an event whose 32 kB key is too long for an index entry waits for
#      its retries like the others, without failing its batch's record;
#  (c) attempts run out: the first event of a missing topic's key goes to
#      dead_letters after 3 attempts, and the events held behind it go on;
#  (d) a payload whose JSON text would pass 1 GB goes to dead_letters as too
#      large, without failing the claims of its shard.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

use EventpipeTest;
use FaultTest;

my $kafka = start_kafka(broker_properties => ['auto.create.topics.enable=false']);
my $bootstrap = $kafka->{bootstrap};
my $admin = topic_admin($kafka);
my $main = 't104.main';
ok(create_topic($admin, $main, 3, 1), "topic $main created");
ok(ensure_consumer_offsets($bootstrap, $main), '__consumer_offsets exists');

my $node = new_node('main',
	bootstrap => $bootstrap,
	conf      => "eventpipe.relay_max_attempts = 3\n"
	  . "eventpipe.kafka_options = 'topic.metadata.propagation.max.ms=500'");
$node->safe_psql('postgres', 'CREATE EXTENSION eventpipe');
ft_prepare($node);
ok(wait_for_relay_state($node, 'idle'), 'relay worker is idle');

sub q1 { return $node->safe_psql('postgres', $_[0]) }

# Rows of a query as hashes (columns separated by |).
sub rows
{
	my ($sql, @cols) = @_;
	my @rows;
	for my $line (split /\n/, q1($sql))
	{
		my @v = split /\|/, $line, scalar @cols;
		push @rows, { map { $cols[$_] => $v[$_] } 0 .. $#cols };
	}
	return @rows;
}

sub dead_letters
{
	return rows('SELECT id, event_id, topic, key, attempts, reason FROM eventpipe.dead_letters ORDER BY id',
		qw(id event_id topic key attempts reason));
}

sub ledger_id
{
	my ($topic, $key, $seq) = @_;
	return q1("SELECT event_id FROM ft_ledger WHERE topic = '$topic' AND key = '$key' AND seq = $seq");
}

# ---- (a) permanent failures -----------------------------------------------

q1(qq{
BEGIN;
SELECT ft_publish_round('$main', ARRAY['A', 'B'], 2);
INSERT INTO ft_ledger (topic, key, seq, event_id)
VALUES ('$main', 'A', 3,
        eventpipe.publish('$main', 'A',
            jsonb_build_object('key', 'A', 'seq', 3, 'pad', repeat('x', 1100000))));
INSERT INTO ft_ledger (topic, key, seq, event_id)
VALUES ('__consumer_offsets', 'B', 1,
        eventpipe.publish('__consumer_offsets', 'B', jsonb_build_object('key', 'B', 'seq', 1)));
SELECT ft_publish_round('$main', ARRAY['A', 'B'], 3);
COMMIT;
});
my $big_id       = ledger_id($main, 'A', 3);
my $forbidden_id = ledger_id('__consumer_offsets', 'B', 1);
my $forbidden_error =
  ($ENV{EP_TEST_RELAY_EXACTLY_ONCE} // '') eq 'on'
  ? qr/topic "__consumer_offsets" refused in a Kafka transaction: .*TOPIC_AUTHORIZATION_FAILED/
  : qr/TOPIC_EXCEPTION/;

ok(wait_until(sub { outbox_count($node) == 0 }, 60), '(a) the outbox drained')
  or diag q1('SELECT id, topic, key, attempts, last_error FROM eventpipe.outbox');
my @dead = dead_letters();
is(scalar @dead, 2, '(a) two events in dead_letters');
my ($big)       = grep { $_->{event_id} eq $big_id } @dead;
my ($forbidden) = grep { $_->{event_id} eq $forbidden_id } @dead;
ok($big, '(a) the oversize event is a dead letter')
  and like($big->{reason}, qr/MSG_SIZE_TOO_LARGE/, "(a) its reason names the error: $big->{reason}")
  and is($big->{attempts}, 1, '(a) after 1 attempt');
ok($forbidden, '(a) the __consumer_offsets event is a dead letter')
  and like($forbidden->{reason}, $forbidden_error, "(a) its reason names the error: $forbidden->{reason}")
  and is($forbidden->{attempts}, 1, '(a) after 1 attempt');

my $expected_main = [ grep { $_->{seq} != 3 || $_->{key} ne 'A' } @{ ledger($node, $main) } ];
is(scalar @$expected_main, 10, '(a) 10 events of keys A and B (all but the oversize one) are deliverable');
check_topic($bootstrap, $main, $expected_main, '(a) the rest of keys A and B');

# retry_dead(): all, then by id, then by topic.
my %old_id = map { $_->{event_id} => $_->{id} } @dead;
my $max_old = (sort { $b <=> $a } values %old_id)[0];
my @moved = split /\n/, q1(qq{
BEGIN;
SELECT eventpipe.retry_dead();
SELECT format('%s events, attempts %s, due %s, new ids %s, dead letters left %s',
              count(*), max(attempts), bool_and(next_attempt_at IS NULL),
              bool_and(id > $max_old), (SELECT count(*) FROM eventpipe.dead_letters))
  FROM eventpipe.outbox WHERE event_id IN ('$big_id', '$forbidden_id');
COMMIT;
});
is($moved[0], 2, '(a) retry_dead() moves both back');
is($moved[1], '2 events, attempts 0, due t, new ids t, dead letters left 0',
	'(a) in the same transaction they are in the outbox, at the end, attempts reset, due now');
my $dead_retried = sub {
	my @d = dead_letters();
	return @d == 2 && outbox_count($node) == 0 && !grep { $old_id{ $_->{event_id} } == $_->{id} } @d;
};
ok(wait_until($dead_retried, 30), '(a) ... and both fail again into dead_letters')
  or diag explain [ dead_letters() ];
@dead = dead_letters();
for my $d (@dead)
{
	my $what = $d->{event_id} eq $big_id ? 'oversize' : 'forbidden';
	is($d->{attempts}, 1, "(a) the $what event failed once more (attempts reset)");
	like($d->{reason}, $what eq 'oversize' ? qr/MSG_SIZE_TOO_LARGE/ : $forbidden_error,
		"(a) the $what event has the same reason");
}
%old_id = map { $_->{event_id} => $_->{id} } @dead;
is(q1("SELECT eventpipe.retry_dead(ARRAY[$old_id{$big_id}])"), 1,
	'(a) retry_dead(ids) moves only the oversize event');
is(q1("SELECT count(*) FROM eventpipe.dead_letters WHERE id = $old_id{$forbidden_id}"), 1,
	'(a) the other one stays');
ok( wait_until(
		sub {
			my @d = dead_letters();
			return @d == 2 && outbox_count($node) == 0
			  && grep { $_->{event_id} eq $big_id && $_->{id} != $old_id{$big_id} } @d;
		},
		30),
	'(a) the oversize event failed again into dead_letters');
is(q1("SELECT id FROM eventpipe.dead_letters WHERE event_id = '$forbidden_id'"),
	$old_id{$forbidden_id}, '(a) the other dead letter was not touched');
is(q1(q{SELECT eventpipe.retry_dead(topic => '__consumer_offsets')}), 1,
	'(a) retry_dead(topic) moves the __consumer_offsets event');
ok( wait_until(
		sub {
			outbox_count($node) == 0
			  && q1("SELECT count(*) FROM eventpipe.dead_letters WHERE event_id = '$forbidden_id'") == 1;
		},
		30),
	'(a) it failed again into dead_letters');
is(q1('SELECT eventpipe.retry_dead(ARRAY[-1]::bigint[])'), 0, '(a) retry_dead of an unknown id moves nothing');
is(relay_stat($node, 'events_dead'), 6, '(a) pg_stat_relay.events_dead counts the 6 dead-letterings');
my $main_now = read_topic($bootstrap, $main);
ok(defined $main_now, "(a) $main can be read");
is(scalar(grep { ($_->{ce_id} // '') eq $big_id } @{ $main_now // [] }), 0, '(a) the oversize event never reached Kafka');

# ---- (b) a missing topic, created before the attempts run out ---------------

my $late = 't104.late';
# In the same transaction, so in K's first batch: an event of another
# missing topic whose key (32 kB of hex digits, which do not compress) is
# too long for an index entry.  Its wait for a retry must not fail the
# record of that batch.
my $long = 't104.long';
q1(qq{BEGIN;
SELECT ft_publish_round('$late', ARRAY['K'], 1);
SELECT eventpipe.publish('$long', (SELECT string_agg(md5(g::text || random()::text), '')
                                     FROM generate_series(1, 1000) AS g), '{}');
COMMIT;});
my $k1 = ledger_id($late, 'K', 1);

sub outbox_row
{
	my ($event_id) = @_;
	my ($r) = rows(
		"SELECT attempts, next_attempt_at > now(), extract(epoch FROM next_attempt_at), last_error"
		  . " FROM eventpipe.outbox WHERE event_id = '$event_id'",
		qw(attempts waiting next last_error));
	return $r;
}

my $r;
ok(wait_until(sub { $r = outbox_row($k1); $r && $r->{attempts} >= 1 }, 30),
	'(b) the event for the missing topic failed once');
is($r->{attempts}, 1, '(b) attempts = 1');
like($r->{last_error}, qr/unknown topic|UNKNOWN_TOPIC/i, "(b) last_error says why: $r->{last_error}");
ok(wait_until(sub { q1("SELECT attempts >= 1 FROM eventpipe.outbox WHERE topic = '$long'") eq 't' }, 30),
	'(b) the event with a 32 kB key waits for a retry too');
my $next1 = $r->{next};

# More of K on the missing topic, and K and others on the existing one.
q1(qq{
BEGIN;
SELECT ft_publish_round('$late', ARRAY['K'], 3);
SELECT ft_publish_round('$main', ARRAY['K', 'C', 'D'], 5);
COMMIT;
});
ok( wait_until(
		sub { q1("SELECT count(*) FROM eventpipe.outbox WHERE topic = '$main'") == 0 }, 30),
	'(b) the events of the existing topic flow meanwhile (key K too)');
my $held = q1("SELECT count(*) FROM eventpipe.outbox WHERE topic = '$late'");
is($held, 4, '(b) the 4 events of the missing topic are all still in the outbox');
note '(b) outbox: ' . q1('SELECT id, key, attempts, next_attempt_at, last_error FROM eventpipe.outbox ORDER BY id');

ok(wait_until(sub { $r = outbox_row($k1); $r && $r->{attempts} >= 2 }, 30),
	'(b) the event failed a second time');
my $t_second = time();
is($r->{attempts}, 2, '(b) attempts = 2');
cmp_ok($r->{next}, '>', $next1, '(b) next_attempt_at moved on');
is($r->{waiting}, 't', '(b) and is in the future');
ok(create_topic($admin, $late, 3, 1), "(b) topic $late created");
note sprintf('(b) created %.2f s after the second failure was seen', time() - $t_second);

ok(wait_until(sub { q1("SELECT count(*) FROM eventpipe.outbox WHERE topic = '$late'") == 0 }, 60),
	'(b) the events of the new topic left the outbox');
is(q1("SELECT count(*) FROM eventpipe.dead_letters WHERE topic = '$late'"), 0,
	'(b) none of them was dead-lettered')
  or diag q1("SELECT id, key, attempts, reason FROM eventpipe.dead_letters WHERE topic = '$late'");
check_topic($bootstrap, $late, ledger($node, $late), '(b) the late topic');
ok( wait_until(
		sub {
			q1("SELECT count(*) FROM eventpipe.dead_letters"
				  . " WHERE topic = '$long' AND attempts = 3 AND octet_length(key) = 32000") == 1
		},
		60),
	'(b) the event with a 32 kB key is dead-lettered once its 3 attempts ran out');
check_topic($bootstrap, $main, [ grep { $_->{seq} != 3 || $_->{key} ne 'A' } @{ ledger($node, $main) } ],
	'(b) the existing topic');

# ---- (c) attempts run out ------------------------------------------------

my $never = 't104.never';
q1("SELECT ft_publish_round('$never', ARRAY['Z'], 1)");
my $z1 = ledger_id($never, 'Z', 1);
ok(wait_until(sub { $r = outbox_row($z1); $r && $r->{attempts} >= 1 }, 30),
	'(c) the first event of key Z failed once');
q1("SELECT ft_publish_round('$never', ARRAY['Z'], 2)");
my @zd;
ok(wait_until(sub { @zd = grep { $_->{event_id} eq $z1 } dead_letters(); @zd == 1 }, 60),
	'(c) it is dead-lettered once its attempts ran out');
my $t_dead = time();
my $behind = q1("SELECT string_agg(format('id %s attempts %s next %s', id, attempts, next_attempt_at), '; ' ORDER BY id)"
	  . " FROM eventpipe.outbox WHERE topic = '$never'");
ok(create_topic($admin, $never, 3, 1), "(c) topic $never created");
note sprintf('(c) created %.2f s after the dead letter was seen; the events behind it then: %s',
	time() - $t_dead, $behind);
is($zd[0]{attempts}, 3, '(c) after 3 attempts');
like($zd[0]{reason}, qr/gave up after 3 attempts: .*(unknown topic|UNKNOWN_TOPIC)/i,
	"(c) the reason says so: $zd[0]{reason}");
ok(wait_until(sub { q1("SELECT count(*) FROM eventpipe.outbox WHERE topic = '$never'") == 0 }, 60),
	'(c) the events held behind it left the outbox');
is(q1("SELECT count(*) FROM eventpipe.dead_letters WHERE topic = '$never'"), 1,
	'(c) only the first one is a dead letter')
  or diag q1("SELECT id, key, attempts, reason FROM eventpipe.dead_letters WHERE topic = '$never'");
check_topic($bootstrap, $never, [ grep { $_->{seq} != 1 } @{ ledger($node, $never) } ],
	'(c) the events behind the dead letter');

# ---- (d) a payload whose JSON text would pass 1 GB --------------------------

# 180 million control characters: a 180 MB jsonb string (2 MB stored,
# compressed) whose text, each written \u0001, would take 1.08 GB, more than
# one allocation may; and 9,000 numbers 1e131071, a few bytes each in the
# jsonb, 131,072 digits each in its text (1.18 GB).  Both are dead-lettered
# as too large, and the event of the same key after them goes on.
my @huge_ids = map { q1(qq{SELECT eventpipe.publish('$main', 'H', $_)}) }
  q{jsonb_build_object('key', 'H', 'seq', 1, 'pad', repeat(chr(1), 180000000))},
  q{jsonb_build_object('key', 'H', 'seq', 1, 'pad', (SELECT jsonb_agg('1e131071'::numeric) FROM generate_series(1, 9000)))};
q1(qq{INSERT INTO ft_ledger (topic, key, seq, event_id)
      VALUES ('$main', 'H', 2, eventpipe.publish('$main', 'H', jsonb_build_object('key', 'H', 'seq', 2)))});
my %huge = map { $_ => 1 } @huge_ids;
my @hd;
ok(wait_until(sub { @hd = grep { $huge{ $_->{event_id} } } dead_letters(); @hd == 2 }, 120),
	'(d) the two events whose text would pass 1 GB are dead-lettered');
is(scalar(grep { ($_->{reason} // '') =~ /MSG_SIZE_TOO_LARGE/ } @hd), 2,
	'(d) both as too large for a message: ' . join('; ', map { $_->{reason} // '' } @hd));
my $h2 = ledger_id($main, 'H', 2);
ok(ids_on_topic($bootstrap, $main, [$h2], 60), '(d) the next event of its key is on the topic');
ok(wait_until(sub { outbox_count($node) == 0 }, 30), '(d) the outbox drained');
unlike(log_since($node, 0), qr/terminated by signal|Cannot enlarge string buffer/,
	'(d) the relay never failed a claim on it, nor crashed');

$node->stop;
ok(stop_kafka($kafka), 'Kafka stopped');
done_testing();

# t/001_publish_to_kafka.pl: events published in committed transactions
# reach Kafka exactly once each, with the right key, value and CloudEvents
# and user headers, and in publish order per key; events of rolled-back
# transactions, rolled-back savepoints and failed transactions never do; the
# outbox empties and pg_stat_relay says so.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Encode qw(encode);
use JSON::PP;
use Test::More;
use Time::HiRes qw(time);
use Time::Local qw(timegm);

use EventpipeTest;

my $kafka = start_kafka();
# Small batches: the events below need many of them, and per-key order
# must hold across batch boundaries.
my $node = new_node(
	'main',
	bootstrap => $kafka->{bootstrap},
	conf      => "eventpipe.relay_batch_size = 50\nmax_prepared_transactions = 5");
$node->safe_psql('postgres', 'CREATE EXTENSION eventpipe');
ok(wait_for_relay_state($node, 'idle'), 'relay worker is idle');

my $topic = 't001.orders';

# ---- the events ---------------------------------------------------------

srand(20240601);    # the same mix every run

# Numbered events of 20 keys, 20 each: payload {"key", "seq", ...}.
my @numbered;
for my $seq (1 .. 20)
{
	for my $k (0 .. 19)
	{
		my $key = sprintf('customer-%02d', $k);
		my %ev  = (
			topic   => $topic,
			key     => $key,
			payload => { key => $key, seq => $seq, amount => $k * 100 + $seq },
			seq     => $seq);
		my $i = @numbered;
		$ev{headers} = { 'trace-id' => "trace-$i", tenant => "t\x{e9}nant-$k" }
		  if $i % 7 == 0;
		$ev{event_type} = 'order.updated' if $i % 5 == 0;
		$ev{payload}{type} = 'order.created' if $i % 11 == 0;
		push @numbered, \%ev;
	}
}

# A JSON value of one of five kinds, by n: a number (integral or not),
# a string, a nested array with an object, true, or null.
sub mixed_value
{
	my ($n) = @_;
	return ($n * 1.5) if $n % 5 == 0;
	return "\"v$n\"" if $n % 5 == 1;
	return "[$n, {\"n\": \"$n\"}]" if $n % 5 == 2;
	return 'true' if $n % 5 == 3;
	return 'null';
}

# Special cases, each once.
my @special = (
	{ key => undef,         payload => { what => 'keyless 1' } },
	{ key => undef,         payload => { what => 'keyless 2' }, event_type => 'no.key' },
	{ key => '',            payload => { what => 'empty key' } },
	{ key => "cl\x{e9}-\x{fc}-\x{20ac}", payload => { what => "unicode \x{2603} \x{e9}", quote => "it's \"quoted\"\n" } },
	{ key => 'big',         payload => { what => 'big', blob => ('x' x 100_000) } },
	{ key => 'type-wins',   payload => { type => 'from.payload' }, event_type => 'from.argument', expect_type => 'from.argument' },
	{ key => 'type-payload', payload => { type => 'from.payload', n => 1 }, expect_type => 'from.payload' },
	{ key => 'type-number', payload_json => '{"type": 42}', expect_type => 'eventpipe.event' },
	{ key => 'type-empty',  payload_json => '{"type": ""}', expect_type => 'eventpipe.event' },
	{ key => 'type-null',   payload_json => '{"type": null}', expect_type => 'eventpipe.event' },
	{ key => 'type-nested', payload => { data => { type => 'nested.type' } }, expect_type => 'eventpipe.event' },
	{ key => 'array',       payload_json => '[1, "two", {"type": "in.array"}]', expect_type => 'eventpipe.event' },
	{ key => 'string',      payload_json => '"just a string"', expect_type => 'eventpipe.event' },
	{ key => 'number',      payload_json => '12.50', expect_type => 'eventpipe.event' },
	{ key => 'json-null',   payload_json => 'null', expect_type => 'eventpipe.event' },
	{ key => 'empty-object', payload => {}, expect_type => 'eventpipe.event' },
	{ key => 'headers-only', payload => { a => 1 }, headers => { 'x-one' => '1', 'x-two' => "deux \x{e9}", 'x-empty' => '' } },
	{ key => 'spaces',      payload_json => '{"b": [1, 2,   3],   "a": {"z": null, "y": true}}' },
	# what the relay's own JSON writer must write as jsonb's output does
	{ key => 'escapes',     payload_json => '{"ctl": "a\u0001b\u001fc\bd\fe\nf\rg\th\u007f", "q": "\"\\\/", "k\"\\\u00e9y": "\u2603"}' },
	{ key => 'long-escapes', payload_json => '{"s": "0123456789abcdef\"0123456\n789abcdef\\\\01234567\t89\u0002\u00e9\u20ac\u2603 0123456789\""}' },
	{ key => 'numbers',     payload_json => '[0, -0, 1e3, 1.50, -12.345e-10, 123456789012345678901234567890.123456789, 1E+2, 0.000]' },
	{ key => 'empties',     payload_json => '{"a": [], "b": {}, "c": [[], [{}], {"d": []}], "e": [null, true, false, ""]}' },
	{ key => 'empty-array', payload_json => '[]' },
	{ key => 'json-true',   payload_json => 'true' },
	{ key => 'raw-escaped', payload_json => '"tab\there \"quoted\" \\\\ back"' },
	# more than 32 entries in a container: jsonb then stores offsets
	# between the lengths, and the relay's writer must follow both
	{ key => 'many-members', payload_json => '{' . join(', ', map { "\"k$_\": " . mixed_value($_) } 1 .. 70) . '}' },
	{ key => 'long-array',  payload_json => '[' . join(', ', map { mixed_value($_) } 1 .. 100) . ']' },
	# nested deeper than the writer's first stack of containers
	{ key => 'deep',        payload_json => ('[{"a": ' x 60) . '"bottom"' . ('}]' x 60) },
);
$_->{topic} = $topic for @special;

# Expected ce_type, as the relay must compute it: the event_type argument,
# else the payload's "type" string, else eventpipe.event.
sub expected_type
{
	my ($ev) = @_;
	return $ev->{expect_type} if defined $ev->{expect_type};
	return $ev->{event_type}  if defined $ev->{event_type};
	my $p = $ev->{payload};
	return $p->{type} if ref $p eq 'HASH' && defined $p->{type};
	return 'eventpipe.event';
}

# ---- publish them in transactions, with rollbacks in between ------------

my @committed;    # events that must arrive
my @statement_events;    # one per publish statement, in script order
my @rolled_back;         # events that must not arrive
my $sql = '';
my $rb  = 0;

sub rolled_back_event
{
	$rb++;
	return {
		topic   => $topic,
		key     => "rolledback-$rb",
		payload => { rolled_back => $rb }
	};
}

my @queue = (@numbered);
# Spread the special events through the numbered ones (order per numbered
# key is unchanged).
for my $s (@special)
{
	splice(@queue, int(rand(@queue + 1)), 0, $s);
}

my $txn = 0;
while (@queue)
{
	$txn++;
	my $size = 1 + int(rand(15));
	my @batch = splice(@queue, 0, $size);
	$sql .= "BEGIN;\n";
	for my $ev (@batch)
	{
		$sql .= publish_sql($ev);
		push @statement_events, $ev;
		push @committed,        $ev;
	}
	if ($txn % 4 == 0)
	{
		# a savepoint rolled back in a committed transaction
		my $r = rolled_back_event();
		$sql .= "SAVEPOINT sp;\n" . publish_sql($r) . "ROLLBACK TO SAVEPOINT sp;\n";
		push @statement_events, $r;
		push @rolled_back,      $r;
	}
	if ($txn % 6 == 0 && @queue)
	{
		# a released savepoint: its events commit with the transaction
		my $ev = shift @queue;
		$sql .= "SAVEPOINT sp2;\n" . publish_sql($ev) . "RELEASE SAVEPOINT sp2;\n";
		push @statement_events, $ev;
		push @committed,        $ev;
	}
	$sql .= "COMMIT;\n";
	if ($txn % 5 == 0)
	{
		# a whole transaction rolled back
		my @r = (rolled_back_event(), rolled_back_event());
		$sql .= "BEGIN;\n" . join('', map { publish_sql($_) } @r) . "ROLLBACK;\n";
		push @statement_events, @r;
		push @rolled_back,      @r;
	}
}

my $t_start = time();
run_publish_script($node, 'postgres', $sql, \@statement_events);

# A transaction that fails: its COMMIT turns into a rollback.
my $failed = rolled_back_event();
my ($ret, $out, $err) = $node->psql('postgres',
	"BEGIN;\n" . publish_sql($failed) . "SELECT 1/0;\nCOMMIT;\n");
like($err, qr/division by zero/, 'the failing transaction failed');
($failed->{id}) = $out =~ /^([0-9a-f-]{36})\|/m;
ok(defined $failed->{id}, 'the failing transaction published before it failed');
push @rolled_back, $failed;

# A transaction killed by a bad publish() call after a good one.
my $refused = rolled_back_event();
($ret, $out, $err) = $node->psql('postgres',
	"BEGIN;\n"
	  . publish_sql($refused)
	  . "SELECT eventpipe.publish('bad topic!', 'k', '{}');\nCOMMIT;\n");
like($err, qr/illegal character/, 'publish() refuses a bad topic name');
($refused->{id}) = $out =~ /^([0-9a-f-]{36})\|/m;
ok(defined $refused->{id}, 'the refused transaction published before the refusal');
push @rolled_back, $refused;

# Two-phase commit: the committed prepared transaction's event arrives, the
# rolled-back one's does not.
my $prepared_ok = { topic => $topic, key => 'prepared', payload => { prepared => 'commit' } };
my $prepared_rb = rolled_back_event();
run_publish_script($node, 'postgres',
	"BEGIN;\n"
	  . publish_sql($prepared_ok)
	  . "PREPARE TRANSACTION 'ep_commit';\nBEGIN;\n"
	  . publish_sql($prepared_rb)
	  . "PREPARE TRANSACTION 'ep_rollback';\n"
	  . "COMMIT PREPARED 'ep_commit';\nROLLBACK PREPARED 'ep_rollback';\n",
	[ $prepared_ok, $prepared_rb ]);
push @committed,   $prepared_ok;
push @rolled_back, $prepared_rb;

# A transaction that takes its outbox id early and commits late: a later
# event does not wait for it, and it is not skipped once it commits.
my $late      = { topic => $topic, key => 'late',      payload => { late      => 1 } };
my $overtaker = { topic => $topic, key => 'overtaker', payload => { overtaker => 1 } };
my $bg = $node->background_psql('postgres');
my $bg_out = $bg->query_safe("BEGIN;\n" . publish_sql($late));
($late->{id}, $late->{value_text}) = $bg_out =~ /([0-9a-f-]{36})\|(.*)/;
ok(defined $late->{id}, 'the late transaction published its event');
run_publish_script($node, 'postgres', publish_sql($overtaker), [$overtaker]);
my $seen = consume_ids($kafka->{bootstrap}, $topic, [ $overtaker->{id} ], 60);
ok(grep({ ($_->{ce_id} // '') eq $overtaker->{id} } @$seen),
	'an event committed while an earlier one is still open is relayed');
ok(!grep({ ($_->{ce_id} // '') eq $late->{id} } @$seen),
	'the open transaction\'s event is not relayed before its commit');
$bg->query_safe('COMMIT');
$bg->quit;
push @committed, $late, $overtaker;

# The marker: committed after every rollback above.
my $marker = { topic => $topic, key => 'marker', payload => { marker => 1 } };
run_publish_script($node, 'postgres', publish_sql($marker), [$marker]);
push @committed, $marker;
my $t_end = time();

my $n_committed = scalar @committed;
note "published $n_committed committed and "
  . scalar(@rolled_back)
  . " rolled-back events in $txn transactions";

# ---- what arrived -------------------------------------------------------

my @ids = map { $_->{id} } @committed;
my %committed_by_id = map { $_->{id} => $_ } @committed;
is(scalar(keys %committed_by_id), $n_committed, 'publish() returned distinct ids');

my $msgs = consume_ids($kafka->{bootstrap}, $topic, \@ids, 120);
my $by_id = by_ce_id($msgs);

my @missing = grep { !$by_id->{$_} } @ids;
is(scalar @missing, 0, 'every committed event arrived')
  or diag "missing: @missing[0 .. ($#missing < 9 ? $#missing : 9)]";
my @dups = grep { @{ $by_id->{$_} } > 1 } keys %$by_id;
is(scalar @dups, 0, 'no event arrived twice') or diag "duplicated: @dups";
is(scalar @$msgs, $n_committed, 'exactly as many messages as committed events');
is_deeply([ sort keys %$by_id ], [ sort @ids ],
	'the ce_ids on Kafka are exactly the ids publish() returned');

my %rolled_back_keys = map { $_->{key} => 1 } @rolled_back;
my @leaked = grep { defined $_->{key} && $rolled_back_keys{ $_->{key} } } @$msgs;
is(scalar @leaked, 0, 'no event of a rolled-back transaction or savepoint arrived')
  or diag 'leaked: ' . join(', ', map { $_->{key} } @leaked);
my %rolled_back_ids = map { ($_->{id} // 'none') => 1 } @rolled_back;
ok(!grep({ $rolled_back_ids{ $_->{ce_id} // '' } } @$msgs),
	'no rolled-back event id arrived');

# Contents: key, value, headers, message by message.
my (@bad_key, @bad_value, @bad_text, @bad_headers, @bad_time, @bad_topic);
my $time_re = qr/^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{6})Z$/;
for my $m (@$msgs)
{
	my $ev = $committed_by_id{ $m->{ce_id} // '' } or next;
	my $what = "event $ev->{id} (key " . ($ev->{key} // 'NULL') . ')';

	push @bad_topic, $what if $m->{topic} ne $topic;
	push @bad_key, "$what: key " . ($m->{key} // 'null')
	  if (defined $ev->{key} xor defined $m->{key})
	  || (defined $ev->{key} && $ev->{key} ne $m->{key});

	# the value is the payload's jsonb text, byte for byte
	push @bad_text, "$what: " . substr($m->{payload} // '(null)', 0, 200)
	  if !defined $m->{payload} || $m->{payload} ne $ev->{value_text};
	my $want_value =
	  defined $ev->{payload_json}
	  ? JSON::PP->new->allow_nonref->decode($ev->{payload_json})
	  : $ev->{payload};
	push @bad_value, $what
	  unless Test::More::eq_array([ $m->{value} ], [$want_value]);

	my %want = (
		ce_specversion => '1.0',
		ce_id          => $ev->{id},
		ce_type        => expected_type($ev),
		ce_source      => '/eventpipe/postgres',
		'content-type' => 'application/json',
		%{ $ev->{headers} // {} });
	my %got = %{ $m->{headers} };
	my $ce_time = delete $got{ce_time};
	push @bad_headers,
	  "$what: got " . JSON::PP->new->canonical->encode($m->{header_list})
	  unless Test::More::eq_hash(\%got, \%want)
	  && @{ $m->{header_list} } == keys(%want) + 1;

	if (defined $ce_time && $ce_time =~ $time_re)
	{
		my $t = timegm($6, $5, $4, $3, $2 - 1, $1) + $7 / 1e6;
		push @bad_time, "$what: ce_time $ce_time out of the publish window"
		  if $t < $t_start - 2 || $t > $t_end + 2;
	}
	else
	{
		push @bad_time, "$what: ce_time " . ($ce_time // 'missing');
	}
}

sub no_problems
{
	my ($list, $name) = @_;
	is(scalar @$list, 0, $name)
	  or diag join("\n", @$list[ 0 .. ($#$list < 4 ? $#$list : 4) ]);
}
no_problems(\@bad_topic,   'every message is on the topic it was published to');
no_problems(\@bad_key,     'every message has its event key (null and empty kept apart)');
no_problems(\@bad_text,    'every value is the payload\'s jsonb text');
no_problems(\@bad_value,   'every value decodes to the published payload');
no_problems(\@bad_headers, 'every message has exactly the CloudEvents and user headers');
no_problems(\@bad_time,    'every ce_time is RFC 3339 UTC within the publish window');

# Per-key order: in each partition, the numbered events of one key come in
# publish order, 1 to 20, and one key stays in one partition.
my @order_problems = check_key_order($msgs,
	sub { my $m = shift; defined $m->{key} && $m->{key} =~ /^customer-/ ? $m->{value}{seq} : undef });
no_problems(\@order_problems, 'per-key order on Kafka is publish order');
my %count_per_key;
$count_per_key{ $_->{key} }++ for grep { defined $_->{key} && $_->{key} =~ /^customer-/ } @$msgs;
is_deeply([ sort { $a <=> $b } values %count_per_key ], [ (20) x 20 ],
	'20 numbered events arrived for each of the 20 keys');

# ---- the database side --------------------------------------------------

ok(wait_until(sub { outbox_count($node) == 0 }, 30), 'the outbox is empty');
ok(wait_for_relay_state($node, 'idle'), 'relay worker is idle again');
my $stats = relay_stats($node)->[0];
cmp_ok($stats->{events_sent}, '>=', $n_committed,
	"pg_stat_relay.events_sent ($stats->{events_sent}) counts every event");
is($stats->{backlog},        0,          'pg_stat_relay.backlog is 0');
is($stats->{events_failed},  0,          'pg_stat_relay.events_failed is 0');
is($stats->{database},       'postgres', 'pg_stat_relay.database');
ok($stats->{batches} >= int(($n_committed + 49) / 50) && $stats->{batches} <= $stats->{events_sent},
	"pg_stat_relay.batches ($stats->{batches}) fits batches of at most 50");
my $payload_bytes = 0;
$payload_bytes += length(encode('UTF-8', $_->{value_text})) for @committed;
cmp_ok($stats->{bytes_sent}, '>=', $payload_bytes,
	"pg_stat_relay.bytes_sent ($stats->{bytes_sent}) covers the payloads");
ok(defined $stats->{last_latency}, 'pg_stat_relay.last_latency is set');
is($stats->{pid},
	$node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'eventpipe relay'"),
	'pg_stat_relay.pid is the relay worker');

# A row a superuser writes into the outbox may hold headers publish()
# refuses: values that are not strings go as their JSON text, a null as a
# null value, reserved names not at all (the relay's own ce_id stays the
# only one).  Before, the relay read every value as a string and crashed.
my $odd_topic = 't001.odd_headers';
my $odd_id = $node->safe_psql('postgres', qq{
INSERT INTO eventpipe.outbox (event_id, topic, key, payload, headers, event_type)
VALUES (gen_random_uuid(), '$odd_topic', 'odd', '{}',
        '{"n": 12345, "b": true, "z": null, "o": {"a": [1, "x"]}, "s": "str", "ce_id": "forged"}', 'odd')
RETURNING event_id});
my ($odd) = @{ consume_all($kafka->{bootstrap}, $odd_topic, 1, 60) };
ok(defined $odd, 'a row with headers of every JSON type reaches Kafka');
my %odd_headers = map { @$_ } @{ $odd ? $odd->{header_list} : [] };
is_deeply([ map { $odd_headers{$_} } qw(n b o s) ], [ '12345', 'true', '{"a": [1, "x"]}', 'str' ],
	'... non-string header values as their JSON text');
ok(exists $odd_headers{z} && !defined $odd_headers{z}, '... a null header value as a null value');
is(scalar(grep { $_->[0] eq 'ce_id' } @{ $odd ? $odd->{header_list} : [] }), 1,
	'... and a reserved header name not sent: one ce_id');
is($odd_headers{ce_id}, $odd_id, '... the relay\'s own');

# The relay did not crash along the way.
unlike(log_since($node, 0), qr/terminated by signal|PANIC|exited with exit code/,
	'no worker crashed');

ok(stop_kafka($kafka), 'Kafka stopped');
$node->stop;
done_testing();

# t/601_many_databases.pl: one cluster, many databases.  Three databases
# (shop, billing, accounts) each publish to a topic they share, capture a
# table to a topic of their own and consume a topic of their own, all at
# once, with a subscription of the same name in each; accounts is dropped
# in the middle of it (busy relaying and consuming) and crm created:
#  - every database gets its workers within seconds of CREATE EXTENSION;
#  - the DROP DATABASE is not blocked, and accounts' workers are gone;
#  - every committed event of shop, billing and crm reaches Kafka once,
#    with ce_source naming its database, and their metrics (the consumed
#    tables and pg_stat_relay's counters) are exact;
#  - relay_stats_all() and consumer_stats_all() list every served
#    database's workers, pg_stat_relay and pg_stat_consumer only the
#    current one's;
#  - ALTER DATABASE ... ALLOW_CONNECTIONS false and eventpipe.database
#    send a database's workers away, and back; DROP DATABASE ... WITH
#    (FORCE), by an owner who is no superuser, does not wait for them
#    either.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use EventpipeTest;
use ConsumerTest;

my $kafka     = start_kafka();
my $bootstrap = $kafka->{bootstrap};
# per database: a manager, a relay, a consumer worker, a snapshot worker at
# most; four databases at a time and the launcher
my $node = new_node('main', bootstrap => $bootstrap,
	conf => "max_worker_processes = 24\neventpipe.max_databases = 6");
my $log_start = log_position($node);
my $shared    = 't601.shared';

my (%published, %captured, %consumed);

sub backends_in
{
	my ($db) = @_;
	return $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE datname = '$db' AND backend_type LIKE 'eventpipe%'");
}

# Create $db with the extension, a captured table, metrics tables and a
# subscription "metrics" to its own input topic (its own consumer group);
# true when its relay is idle within 10 s of CREATE EXTENSION.
sub setup_database
{
	my ($db) = @_;
	my $in = "t601.in.$db";
	ensure_topic($bootstrap, $in);
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	my $t0 = time();
	$node->safe_psql($db, 'CREATE EXTENSION eventpipe');
	my $ok = wait_for_relay_state($node, 'idle', db => $db, timeout => 10);
	note sprintf('%s: relay idle %.2f s after CREATE EXTENSION', $db, time() - $t0);
	$node->safe_psql($db, metrics_sql()
		  . "CREATE TABLE likes (user_id bigint, product_id bigint, PRIMARY KEY (user_id, product_id));\n"
		  . "SELECT eventpipe.capture('public.likes', 't601.capture.$db');\n"
		  . subscribe_sql('metrics', [$in], subscribe => "group_id => 't601-$db'"));
	$published{$db} = [];
	$captured{$db}  = 0;
	$consumed{$db}  = [];
	return $ok;
}

# $n events published in $db to the shared topic, 10 per transaction.
sub publish_in
{
	my ($db, $n) = @_;
	my (@events, $sql);
	my $first = scalar @{ $published{$db} };
	for my $i ($first .. $first + $n - 1)
	{
		my $ev = { topic => $shared, key => "$db-" . ($i % 7), payload => { db => $db, i => $i } };
		$sql .= "BEGIN;\n" if $i % 10 == 0;
		$sql .= publish_sql($ev);
		$sql .= "COMMIT;\n" if $i % 10 == 9 || $i == $first + $n - 1;
		push @events, $ev;
	}
	run_publish_script($node, $db, $sql, \@events);
	push @{ $published{$db} }, @events;
}

# $n rows inserted into $db's captured table, in one transaction.
sub capture_in
{
	my ($db, $n) = @_;
	my $first = $captured{$db};
	$node->safe_psql($db,
		"INSERT INTO likes SELECT g, g % 5 FROM generate_series($first, $first + $n - 1) AS g");
	$captured{$db} += $n;
}

# $n events on $db's input topic.
sub consume_in
{
	my ($db, $n, $seed) = @_;
	my $events = make_events(prefix => "$db-$seed", count => $n, seed => $seed);
	produce_events($bootstrap, "t601.in.$db", $events);
	push @{ $consumed{$db} }, @$events;
}

# ---- three databases at work ----------------------------------------------

for my $db (qw(shop billing accounts))
{
	ok(setup_database($db), "$db: its relay is idle within 10 s of CREATE EXTENSION");
}
my $seed = 1;
for my $db (qw(shop billing accounts))
{
	consume_in($db, 300, $seed++);
	publish_in($db, 100);
	capture_in($db, 40);
}

# ---- accounts dropped while busy, crm created --------------------------------

# a backlog for accounts' relay, and messages for its consumer
publish_in('accounts', 2000);
consume_in('accounts', 300, $seed++);
publish_in($_, 100) for qw(shop billing);
my @accounts_pids = split /\n/, $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE datname = 'accounts' AND backend_type LIKE 'eventpipe%'");
cmp_ok(scalar @accounts_pids, '>', 0, 'eventpipe processes serve accounts before the drop');
my $t0 = time();
my ($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE accounts');
my $drop_time = time() - $t0;
is($ret, 0, 'DROP DATABASE accounts succeeds while its workers are busy') or diag $err;
note sprintf('DROP DATABASE accounts took %.2f s', $drop_time);
cmp_ok($drop_time, '<', 4, 'DROP DATABASE accounts did not wait for its workers');
ok(wait_until(sub { !grep { kill 0, $_ } @accounts_pids }, 10),
	'the eventpipe processes that served accounts are gone');
ok( wait_until(
		sub {
			$node->safe_psql('shop',
				'SELECT count(*) FROM eventpipe.relay_stats_all() WHERE database IS NULL') == 0;
		},
		10),
	'the slot of accounts is freed within seconds');

ok(setup_database('crm'), 'crm: its relay is idle within 10 s of CREATE EXTENSION');
for my $db (qw(shop billing crm))
{
	consume_in($db, 300, $seed++);
	publish_in($db, 100);
	capture_in($db, 40);
}

# ---- every event of the surviving databases, once ----------------------------

for my $db (qw(shop billing crm))
{
	my $msgs = check_delivered($bootstrap, $shared, $published{$db}, "$db on the shared topic",
		only => 0);
	my %ids = map { $_->{id} => 1 } @{ $published{$db} };
	my @sources = grep { $ids{ $_->{ce_id} // '' } && $_->{headers}{ce_source} ne "/eventpipe/$db" } @$msgs;
	is(scalar @sources, 0, "$db: ce_source is /eventpipe/$db");

	my $capture = "t601.capture.$db";
	# a query of the end offsets can fail for a moment under load (kcat -Q
	# then answers for no partition): ask again until the deadline
	ok( wait_until(
			sub { (eval { total_end_offset($bootstrap, $capture) } // 0) >= $captured{$db} }, 60),
		"$db: its captured rows reached $capture");
	my $rows = read_topic($bootstrap, $capture) // [];
	my %distinct = map { ($_->{ce_id} // '') => 1 } @$rows;
	is(scalar @$rows, $captured{$db}, "$db: each captured row once on $capture");
	is(scalar keys %distinct, $captured{$db}, "$db: with distinct ce_ids");

	ok(wait_caught_up($node, $db, 'metrics', $bootstrap, ["t601.in.$db"]),
		"$db: its subscription caught up");
	check_product_metrics($node, $db, expected_metrics($consumed{$db}), "$db: metrics exact");
	is( $node->safe_psql($db,
			'SELECT sum(events_applied) || \'/\' || sum(duplicates) FROM eventpipe.consumer_stats()'),
		scalar(@{ $consumed{$db} }) . '/0',
		"$db: consumer_stats() counts its events, no duplicate");
	ok(wait_until(sub { outbox_count($node, $db) == 0 }, 60), "$db: outbox empty");
	is( $node->safe_psql($db, 'SELECT sum(events_sent) FROM eventpipe.pg_stat_relay'),
		@{ $published{$db} } + $captured{$db},
		"$db: pg_stat_relay counts its own events exactly");
	is( $node->safe_psql($db, 'SELECT string_agg(DISTINCT database, \',\') FROM eventpipe.pg_stat_consumer'),
		$db, "$db: pg_stat_consumer shows its own database");
}

# ---- every database's workers, from one ---------------------------------------

is( $node->safe_psql('shop',
		"SELECT string_agg(DISTINCT database, ',' ORDER BY database) FROM eventpipe.relay_stats_all() WHERE pid IS NOT NULL"),
	'billing,crm,shop',
	'relay_stats_all() lists the relays of every served database');
is( $node->safe_psql('shop',
		"SELECT string_agg(coalesce(database, '?') || ':' || subscription, ',' ORDER BY database) FROM eventpipe.consumer_stats_all()"),
	'billing:metrics,crm:metrics,shop:metrics',
	'consumer_stats_all() lists the consumers of every database, not those of accounts');
is($node->safe_psql('shop', 'SELECT count(*) FROM eventpipe.pg_stat_relay WHERE database <> current_database()'),
	0, 'pg_stat_relay shows the current database only');

# ---- one consumer group, one database -------------------------------------------

# "twin" in shop and in billing, both with the default group "twin": one
# group would split the partitions between the two databases
my $twin = 't601.twin';
ensure_topic($bootstrap, $twin, partitions => 3);
my $twin_log = log_position($node);
$node->safe_psql('shop', "SELECT eventpipe.subscribe('twin', ARRAY['$twin'])");
ok(wait_consumer_pid($node, 'shop', 'twin', timeout => 30), 'shop: "twin" has a worker');
$node->safe_psql('billing', "SELECT eventpipe.subscribe('twin', ARRAY['$twin'])");
ok( wait_until(
		sub { (consumer_stat($node, 'billing', 'twin', 'state') // '') eq 'waiting for its consumer group' },
		30),
	'billing: "twin" waits for its consumer group, held by shop');
like(consumer_stat($node, 'billing', 'twin', 'last_error'),
	qr/consumer group "twin" is taken by subscription "twin" of database "shop"/,
	'... and last_error names the holder');
like(log_since($node, $twin_log), qr/WARNING: .*waits: consumer group "twin" is taken/,
	'... with a WARNING');
my $twins = make_events(prefix => 'twin', count => 60, seed => $seed++);
produce_events($bootstrap, $twin, $twins);
sub twin_seen
{
	my ($db) = @_;
	return $node->safe_psql($db,
		"SELECT coalesce(sum(events_applied + unmatched), 0) FROM eventpipe.consumer_stats() WHERE subscription = 'twin'");
}
ok(wait_until(sub { twin_seen('shop') == 60 }, 30), 'shop: "twin" reads all 60 messages of the 3 partitions');
is(twin_seen('billing'), 0, 'billing: "twin" read none meanwhile');
$node->safe_psql('shop', "SELECT eventpipe.unsubscribe('twin')");
ok(wait_until(sub { twin_seen('billing') == 60 }, 40),
	'shop\'s "twin" gone: billing\'s joins the group and reads all 60');
$node->safe_psql('billing', "SELECT eventpipe.unsubscribe('twin')");

# ---- connections disallowed, then a database no longer named -------------------

$node->safe_psql('postgres', 'ALTER DATABASE billing ALLOW_CONNECTIONS false');
ok(wait_until(sub { backends_in('billing') == 0 }, 10),
	'ALLOW_CONNECTIONS false: billing\'s workers leave within seconds');
$node->safe_psql('postgres', 'ALTER DATABASE billing ALLOW_CONNECTIONS true');
ok(wait_for_relay_state($node, 'idle', db => 'billing', timeout => 10),
	'ALLOW_CONNECTIONS true: billing\'s relay is back');

$node->safe_psql('postgres',
	"ALTER SYSTEM SET eventpipe.database = 'shop, crm'; SELECT pg_reload_conf();");
ok(wait_for_relay_state($node, 'not served', db => 'billing', timeout => 10),
	'eventpipe.database without billing: its relay says "not served"');
ok(wait_until(sub { backends_in('billing') == 0 }, 10), '... and its workers are gone');
is(relay_stat($node, 'state', db => 'shop'), 'idle', '... while shop is still served');
$node->safe_psql('postgres', 'ALTER SYSTEM RESET eventpipe.database; SELECT pg_reload_conf();');
ok(wait_for_relay_state($node, 'idle', db => 'billing', timeout => 10),
	'eventpipe.database reset: billing is served again');
publish_in('billing', 20);
check_delivered($bootstrap, $shared, $published{billing}, 'billing after coming back', only => 0);

# ---- DROP DATABASE ... WITH (FORCE) ---------------------------------------------

# by crm's owner, who is no superuser: FORCE could not signal the workers
# (they run as the bootstrap superuser); they must be gone first, even a
# consumer in the middle of a long batch (a handler that takes 50 ms an
# event), which the DROP's hook terminates
publish_in('crm', 500);
my $slow = 't601.slow';
ensure_topic($bootstrap, $slow);
$node->safe_psql('crm', <<SQL);
CREATE FUNCTION slow_handler(payload jsonb, metadata jsonb) RETURNS void
LANGUAGE sql AS \$\$ SELECT pg_sleep(0.05) \$\$;
SELECT eventpipe.subscribe('slow', ARRAY['$slow']);
SELECT eventpipe.add_handler('slow', t, 'slow_handler(jsonb, jsonb)')
  FROM unnest(ARRAY['ProductViewed', 'LikeChanged', 'PaymentCompleted']) AS t;
SQL
produce_events($bootstrap, $slow, make_events(prefix => 'slow', count => 400, seed => $seed++));
ok( wait_until(sub { (consumer_stat($node, 'crm', 'slow', 'state') // '') eq 'applying' }, 30),
	'crm: "slow" is applying a long batch');
$node->safe_psql('postgres', 'CREATE ROLE t601_owner LOGIN; ALTER DATABASE crm OWNER TO t601_owner');
$t0 = time();
($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE crm WITH (FORCE)',
	extra_params => [ '-U', 't601_owner' ]);
is($ret, 0, 'DROP DATABASE crm WITH (FORCE) by its owner, no superuser, succeeds') or diag $err;
cmp_ok(time() - $t0, '<', 8, '... within the DROP\'s own patience, the slow batch terminated');
ok( wait_until(
		sub {
			$node->safe_psql('shop',
				"SELECT count(*) FROM eventpipe.relay_stats_all() WHERE database = 'crm' OR database IS NULL") == 0;
		},
		10),
	'crm has no slot any more');

is(join("\n", crash_lines($node, $log_start)), '', 'no crash in the server log');
stop_node($node);
done_testing();

# t/314_consumer_lifecycle.pl: subscriptions and the consumer workers
# through their life, in a database of their own (eventpipe.database =
# 'shop'):
#  (a) subscribe starts a worker; a second subscribe of the name and an
#      unsubscribe of an unknown name are errors; unsubscribe stops the
#      worker within seconds and takes its rules, offsets and ledger with it;
#      events produced afterwards are not applied (a witness subscription on
#      the same topic shows when they would have been); the witness,
#      unsubscribed and subscribed again under its name in one transaction
#      while its worker runs, reads its topic again from the beginning;
#  (b) DROP EXTENSION while a worker consumes: it succeeds, nothing crashes,
#      and after CREATE EXTENSION a new subscription consumes exactly;
#  (c) DROP DATABASE of the workers' database while a worker consumes: it
#      is not blocked, nothing crashes, and in the database created again
#      a new subscription consumes exactly.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use EventpipeTest;
use FaultTest qw(server_is_up);
use ConsumerTest;

my $kafka     = start_kafka();
my $bootstrap = $kafka->{bootstrap};
my $node      = new_node('main', bootstrap => $bootstrap, conf => "eventpipe.database = 'shop'");
my $db        = 'shop';
my $t_life    = 't314.life';
my $t_busy    = 't314.busy';
ensure_topic($bootstrap, $_) for $t_life, $t_busy;

# The extension and the user's tables in a fresh 'shop' database.
sub prepare_shop
{
	$node->safe_psql('postgres', 'CREATE DATABASE shop');
	$node->safe_psql($db, 'CREATE EXTENSION eventpipe');
	$node->safe_psql($db, metrics_sql() . q{
CREATE TABLE witness_metrics (LIKE product_metrics INCLUDING ALL);
CREATE TABLE witness_again_metrics (LIKE product_metrics INCLUDING ALL);
CREATE TABLE views_seen (event_id text PRIMARY KEY);
CREATE FUNCTION record_view(payload jsonb, metadata jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(0.001);
    INSERT INTO public.views_seen VALUES (metadata ->> 'id');
END
$$;
});
	return;
}

sub backend_exists
{
	my ($pid) = @_;
	return $node->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE pid = $pid") > 0;
}

sub views_seen
{
	my ($ret, $out) = $node->psql($db, 'SELECT count(*) FROM views_seen');
	return $ret == 0 ? $out : 0;
}

my @slow_handler = (handlers => [ [ 'ProductViewed', 'record_view(jsonb, jsonb)' ] ]);

prepare_shop();
my $log_start = log_position($node);

# ---- (a) subscribe, unsubscribe ----------------------------------------------

my $pid = start_subscription($node, $db, 'life', [$t_life], subscribe => "dedup_field => 'event_id'");
my $e1 = make_events(prefix => 'l1', count => 1500, headered => 50, products => 6, seed => 3141);
produce_events($bootstrap, $t_life, $e1);
ok(wait_caught_up($node, $db, 'life', $bootstrap, [$t_life], 120), '(a) the worker caught up');
check_product_metrics($node, $db, expected_metrics($e1), '(a) product_metrics exact');

my ($ret, $out, $err) = $node->psql($db, "SELECT eventpipe.subscribe('life', ARRAY['$t_life'])");
isnt($ret, 0, '(a) a second subscribe() of the name is an error');
note "(a) second subscribe: $err";
($ret, $out, $err) = $node->psql($db, "SELECT eventpipe.unsubscribe('no_such_subscription')");
isnt($ret, 0, '(a) unsubscribe() of an unknown name is an error');
note "(a) unknown unsubscribe: $err";

$node->safe_psql($db, "SELECT eventpipe.unsubscribe('life')");
ok(wait_until(sub { !backend_exists($pid) }, 15), "(a) unsubscribe stopped worker $pid within seconds");
ok(wait_until(sub { consumer_pid($node, $db, 'life') == 0 }, 15),
	'(a) consumer_stats shows no worker for it any more');
is($node->safe_psql($db, q{
SELECT (SELECT count(*) FROM eventpipe.subscriptions WHERE name = 'life')
     + (SELECT count(*) FROM eventpipe.metric_rules WHERE subscription = 'life')
     + (SELECT count(*) FROM eventpipe.consumer_offsets WHERE subscription = 'life')
     + (SELECT count(*) FROM eventpipe.event_handled AS h
         WHERE NOT EXISTS (SELECT FROM eventpipe.subscriptions AS s WHERE s.id = h.subscription_id))
     + (SELECT count(*) FROM eventpipe.event_handled_runs AS r
         WHERE NOT EXISTS (SELECT FROM eventpipe.subscriptions AS s WHERE s.id = r.subscription_id))}),
	0, '(a) its subscription row, rules, offsets and ledger rows are gone');

# The witness consumes the same topic into another table, from the
# beginning: once it has all of E1 and E2, 'life' would have had E2 too.
$node->safe_psql($db,
	subscribe_sql('witness', [$t_life], subscribe => "dedup_field => 'event_id'", table => 'witness_metrics'));
my $e2 = make_events(prefix => 'l2', count => 1000, headered => 0, products => 6, seed => 3142);
produce_events($bootstrap, $t_life, $e2);
ok(wait_caught_up($node, $db, 'witness', $bootstrap, [$t_life], 120), '(a) the witness caught up');
check_product_metrics($node, $db, expected_metrics([ $e1, 1 ], [ $e2, 1 ]),
	'(a) the witness applied everything', table => 'witness_metrics');
check_product_metrics($node, $db, expected_metrics($e1),
	'(a) product_metrics did not change after the unsubscribe');

# The witness made again under its name, in one transaction, while its
# worker runs: the new subscription has no offsets and reads the topic
# from its beginning, not from where the old one's worker was.
my $again = subscribe_sql('witness', [$t_life], subscribe => "dedup_field => 'event_id'",
	table => 'witness_again_metrics') =~ s/^BEGIN;\n//r;
$node->safe_psql($db, "BEGIN;\nSELECT eventpipe.unsubscribe('witness');\n$again");
ok(wait_caught_up($node, $db, 'witness', $bootstrap, [$t_life], 120), '(a) the witness made again caught up');
check_product_metrics($node, $db, expected_metrics([ $e1, 1 ], [ $e2, 1 ]),
	'(a) it applied everything from the beginning', table => 'witness_again_metrics');
my @crashes = crash_lines($node, $log_start);
is(scalar @crashes, 0, '(a) no worker crashed') or diag join("\n", @crashes);

# ---- (b) DROP EXTENSION while consuming --------------------------------------

# Start a slow subscription, wait until it is in the middle of its topic.
sub start_busy
{
	my ($label, $sub, $events) = @_;
	my $views = sum_events($events, 'ProductViewed');
	my $p = start_subscription($node, $db, $sub, [$t_busy],
		subscribe => "batch_size => 100, dedup_field => 'event_id'", @slow_handler);
	my $into = wait_until(sub { views_seen() >= 200 }, 60);
	my $now = views_seen();
	ok($into && $now < $views, "$label: the worker is in the middle of its topic ($now of $views views)");
	return $p;
}

my $busy = make_events(prefix => 'busy', count => 10000, headered => 0, products => 6, seed => 3143);
produce_events($bootstrap, $t_busy, $busy);
$node->safe_psql($db, 'SELECT eventpipe.unsubscribe(\'witness\')');
$pid = start_busy('(b)', 'busy', $busy);

my $log_b = log_position($node);
($ret, $out, $err) = $node->psql($db, "SET statement_timeout = '60s'; DROP EXTENSION eventpipe");
is($ret, 0, '(b) DROP EXTENSION while the worker consumes succeeds') or diag $err;
ok(server_is_up($node), '(b) the server is up');
ok(wait_until(sub { !backend_exists($pid) }, 30), "(b) worker $pid left")
  or note 'worker still there: ' . $node->safe_psql('postgres',
	"SELECT backend_type, state, wait_event FROM pg_stat_activity WHERE pid = $pid");

# the extension again, from scratch: a new subscription reads the topic again
$node->safe_psql($db, 'CREATE EXTENSION eventpipe');
$node->safe_psql($db, 'TRUNCATE product_metrics, customer_metrics, views_seen');
$node->safe_psql($db,
	subscribe_sql('again', [$t_busy], subscribe => "dedup_field => 'event_id'",
		@slow_handler));
ok(wait_caught_up($node, $db, 'again', $bootstrap, [$t_busy], 120),
	'(b) after CREATE EXTENSION a new subscription consumed the topic');
check_product_metrics($node, $db, expected_metrics($busy), '(b) and its product_metrics are exact');
is(views_seen(), sum_events($busy, 'ProductViewed'), '(b) its handler ran once per view');
@crashes = crash_lines($node, $log_b);
is(scalar @crashes, 0, '(b) nothing crashed (no PANIC, no signal)') or diag join("\n", @crashes);
note '(b) workers that exited with an error: ' . join("\n", grep { /exited with exit code/ } crash_lines($node, $log_b, exits => 1));

# ---- (c) DROP DATABASE while consuming ----------------------------------------

$node->safe_psql($db, "SELECT eventpipe.unsubscribe('again')");
$node->safe_psql($db, 'TRUNCATE views_seen');
$pid = start_busy('(c)', 'busy2', $busy);
my $log_c = log_position($node);
($ret, $out, $err) = $node->psql('postgres', "SET statement_timeout = '60s'; DROP DATABASE shop");
is($ret, 0, '(c) DROP DATABASE of the workers\' database while one consumes is not blocked') or diag $err;
ok(server_is_up($node), '(c) the server is up');
ok(wait_until(sub { !backend_exists($pid) }, 30), "(c) worker $pid is gone");
@crashes = crash_lines($node, $log_c);
is(scalar @crashes, 0, '(c) nothing crashed (no PANIC, no signal)') or diag join("\n", @crashes);

# the database again: workers come back to it
SKIP:
{
	skip '(c) shop was not dropped', 2 unless $ret == 0;
	prepare_shop();
	$node->safe_psql($db, subscribe_sql('reborn', [$t_life], subscribe => "dedup_field => 'event_id'"));
	ok(wait_caught_up($node, $db, 'reborn', $bootstrap, [$t_life], 120),
		'(c) in the database created again, a new subscription consumed its topic');
	check_product_metrics($node, $db, expected_metrics([ $e1, 1 ], [ $e2, 1 ]), '(c) exactly');
}

stop_node($node);
ok(stop_kafka($kafka), 'Kafka stopped');
done_testing();

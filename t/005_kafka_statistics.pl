# t/005_kafka_statistics.pl: eventpipe.kafka_statistics() shows librdkafka's
# own statistics of each worker's Kafka client:
#  (a) the relay's producer: a row with its client id, recent, of type
#      "producer", whose topic counters saw the events it sent;
#  (b) a subscription's consumer: a row of type "consumer" that saw them
#      arrive and knows the group and the partitions' offsets;
#  (c) pg_monitor may call it, a plain role may not;
#  (d) a client's row goes with it (unsubscribe); a crash's leftovers are
#      cleared at start; statistics.interval.ms = 0 in kafka_options turns
#      them off.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use ConsumerTest;
use EventpipeTest;

my $kafka = start_kafka();
my $node  = new_node(
	'stats',
	bootstrap => $kafka->{bootstrap},
	conf      => "eventpipe.kafka_options = 'statistics.interval.ms=500'");
$node->safe_psql('postgres', 'CREATE EXTENSION eventpipe');
my $topic = 't005.views';
ensure_topic($kafka->{bootstrap}, $topic);

$node->safe_psql(
	'postgres', qq{
	CREATE TABLE views (product_id text PRIMARY KEY, views bigint NOT NULL DEFAULT 0);
	BEGIN;
	SELECT eventpipe.subscribe('stats-sub', ARRAY['$topic']);
	SELECT eventpipe.add_metric('stats-sub', 'ProductViewed', 'views', 'product_id', 'views');
	COMMIT;
	SELECT eventpipe.publish('$topic', 'p' || g % 5,
	                         jsonb_build_object('type', 'ProductViewed', 'product_id', 'p' || g % 5))
	  FROM generate_series(1, 50) g;});
ok(wait_until(sub { $node->safe_psql('postgres', 'SELECT coalesce(sum(views), 0) FROM views') == 50 }, 90),
	'the 50 events went through the relay and the consumer');

# a JSON path of the statistics of one client
sub stat_of
{
	my ($client, $path) = @_;
	return $node->safe_psql('postgres',
		"SELECT statistics #>> '$path' FROM eventpipe.kafka_statistics() WHERE client_id = '$client'");
}

# ---- (a) the relay's producer ---------------------------------------------
my $relay = 'eventpipe-relay-postgres-0';
my $sent_sql = qq{
	SELECT coalesce(sum((p.value ->> 'txmsgs')::bigint), 0)
	  FROM eventpipe.kafka_statistics() s,
	       jsonb_each(s.statistics #> '{topics,$topic,partitions}') p
	 WHERE s.client_id = '$relay' AND p.key <> '-1'};
ok(wait_until(sub { $node->safe_psql('postgres', $sent_sql) == 50 }, 30),
	'(a) the producer\'s statistics count the 50 messages sent to the topic\'s partitions')
  or diag stat_of($relay, '{topics}');
is(stat_of($relay, '{type}'),      'producer', '(a) of type producer');
is(stat_of($relay, '{client_id}'), $relay,     '(a) with the relay\'s client id');
ok(stat_of($relay, '{brokers}') =~ /"state": "UP"/, '(a) it lists a broker that is up');
is( $node->safe_psql('postgres',
		"SELECT collected_at > now() - interval '1 minute' FROM eventpipe.kafka_statistics() WHERE client_id = '$relay'"),
	't', '(a) collected within the last minute');

# ---- (b) the consumer --------------------------------------------------------
my $consumer = 'eventpipe-consumer-postgres-stats-sub';
ok(wait_until(sub { (stat_of($consumer, '{rxmsgs}') || 0) >= 50 }, 30),
	'(b) the consumer\'s statistics count at least the 50 messages received');
is(stat_of($consumer, '{type}'),              'consumer',  '(b) of type consumer');
is(stat_of($consumer, '{cgrp,state}'),        'up',        '(b) its consumer group is up');
my $next = $node->safe_psql('postgres',
	"SELECT sum(next_offset) FROM eventpipe.consumer_offsets WHERE subscription = 'stats-sub'");
ok( wait_until(
		sub {
			my $sum = 0;
			for my $p (0 .. 2)
			{
				my $o = stat_of($consumer, "{topics,$topic,partitions,$p,hi_offset}");
				$sum += $o if defined $o && $o ne '' && $o >= 0;
			}
			return $sum == $next;
		},
		30),
	"(b) its partitions' high watermarks add up to the stored offsets ($next)");

# ---- (c) privileges ------------------------------------------------------------
$node->safe_psql('postgres', 'CREATE ROLE ep_watcher LOGIN IN ROLE pg_monitor; CREATE ROLE ep_plain LOGIN');
is($node->safe_psql('postgres', 'SELECT count(*) >= 2 FROM eventpipe.kafka_statistics()',
		extra_params => [ '-U', 'ep_watcher' ]),
	't', '(c) a member of pg_monitor reads them');
my ($ret, $out, $err) = $node->psql('postgres', 'SELECT count(*) FROM eventpipe.kafka_statistics()',
	extra_params => [ '-U', 'ep_plain' ]);
like($err, qr/permission denied/, '(c) a plain role may not');

# ---- (d) rows go with their clients; interval 0 turns them off -------------------
$node->safe_psql('postgres', "SELECT eventpipe.unsubscribe('stats-sub')");
ok(wait_until(sub { stat_of($consumer, '{type}') eq '' }, 30),
	'(d) the consumer\'s row goes with its subscription');
$node->safe_psql('postgres', "ALTER SYSTEM SET eventpipe.kafka_options = 'statistics.interval.ms=0'");
ok(-e $node->data_dir . "/pg_stat_tmp/$relay.json", '(d) the relay\'s statistics file is there');
# a crash leaves the file behind; the launcher clears it when it starts
$node->stop('immediate');
ok(-e $node->data_dir . "/pg_stat_tmp/$relay.json", '(d) an immediate stop leaves it behind');
$node->start;
$node->safe_psql('postgres', "SELECT eventpipe.publish('$topic', 'p1', '{\"type\": \"x\"}')");
ok(wait_until(sub { outbox_count($node) == 0 }, 60), '(d) the relay works on');
sleep 2;
is($node->safe_psql('postgres', 'SELECT count(*) FROM eventpipe.kafka_statistics()'),
	0, '(d) with statistics.interval.ms = 0 there are none (and none left from before the restart)');

$node->stop;
ok(stop_kafka($kafka), 'Kafka stopped');
done_testing();

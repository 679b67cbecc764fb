# t/401_kafka_sasl_secrets.pl: the relay through a broker's SASL_PLAINTEXT
# listener (mechanism PLAIN), its password in eventpipe.kafka_options, and
# that password kept from other roles and from what eventpipe writes:
#  (a) with the right credentials, published events reach Kafka through the
#      SASL listener only (the relay knows no other address);
#  (b) a role in pg_monitor reads pg_stat_relay but never the password:
#      not in SHOW, current_setting(), pg_settings or the relay's last_error;
#  (c) with a wrong password the relay says "authentication" in
#      pg_stat_relay, without the password, loses nothing, and delivers once
#      the password is right again (restarts, not reloads: PostgreSQL's own
#      "parameter changed" log line would show the value, a known gap that
#      the README states);
#  (d) no line of the server log holds any of the passwords;
#  (e) stat_reset() zeroes the counters the events moved and clears the
#      authentication failure;
#  (f) the password in eventpipe.kafka_options_file instead, changed by
#      reloads (whose log lines name the changed settings and their values):
#      a file other users may read is refused with a clear error, a wrong
#      password in it fails authentication, and rewriting the file with the
#      right one delivers the waiting events without any reload;
#  (g) a password with a comma in kafka_options (sasl.password=Part1,
#      Part2Secret=x) is refused by ALTER SYSTEM and at reload, the old value
#      kept, with errors that name the item by position and quote neither
#      piece; a line of the file that is a piece of a value likewise;
#  (h) a property eventpipe's guarantees rest on (acks, idempotence,
#      delivery reports, message timeouts and retries, a partitioner that
#      does not follow the key, more than 5 requests in flight, LIFO
#      queuing, cooperative rebalancing, transactional.id, isolation.level, group.id,
#      auto.offset.reset, enable.partition.eof), in any spelling, is refused
#      by ALTER SYSTEM and, in the file, makes the relay wait, naming it and
#      why, with nothing lost; so are librdkafka's test properties (a mock
#      cluster) and internal.termination.signal; a server started with such
#      an item warns and keeps the setting's default.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use EventpipeTest;

my $password = 'Pw-4401.sasl~secret';
my $wrong    = 'Wrong-4401.pw';
my $wrong_in_file = 'Wrong-4401.in-file';
my $kafka    = start_kafka(sasl_users => ["shop:$password"]);

sub sasl_options
{
	my ($pw) = @_;
	return "security.protocol=SASL_PLAINTEXT,sasl.mechanism=PLAIN,"
	  . "sasl.username=shop,sasl.password=$pw";
}

sub set_kafka_options
{
	my ($node, $pw) = @_;
	$node->adjust_conf('postgresql.conf', 'eventpipe.kafka_options',
		"'" . sasl_options($pw) . "'");
	$node->restart;
}

my $node = new_node('main',
	bootstrap => $kafka->{sasl_bootstrap},
	conf      => "eventpipe.kafka_options = '" . sasl_options($password) . "'");
$node->safe_psql('postgres', 'CREATE EXTENSION eventpipe');

# ---- (a) delivery through the SASL listener -----------------------------

my $topic = 't401.sasl';

# publish_events($tag, $n): the ids of $n events published to $topic, keys $tag1 ...
sub publish_events
{
	my ($tag, $n) = @_;
	return map {
		$node->safe_psql('postgres',
			"SELECT eventpipe.publish('$topic', '$tag$_', '{\"$tag\": $_}')")
	} 1 .. $n;
}
my @ids = publish_events('k', 5);
ok(wait_until(sub { outbox_count($node) == 0 }, 60),
	'(a) the relay delivered 5 events through SASL_PLAINTEXT');
ok(ids_on_topic($kafka->{bootstrap}, $topic, \@ids, 60), '(a) all 5 are in the topic');
is(relay_stat($node, 'events_failed'), 0, '(a) no failed attempt');

# ---- (b) the password stays with superusers -------------------------------

$node->safe_psql('postgres', 'CREATE ROLE ep_watcher LOGIN IN ROLE pg_monitor');
my $as_watcher = sub {
	my ($sql) = @_;
	return $node->safe_psql('postgres', $sql, extra_params => [ '-U', 'ep_watcher' ]);
};
my $shown = $as_watcher->('SHOW eventpipe.kafka_options');
unlike($shown, qr/\Q$password\E/, "(b) SHOW hides the password from pg_monitor ($shown)");
like($shown, qr/sasl\.password/, '(b) ... and still names the property');
unlike($as_watcher->(q{SELECT current_setting('eventpipe.kafka_options')}),
	qr/\Q$password\E/, '(b) current_setting() hides it');
is($as_watcher->(q{SELECT count(*) FROM pg_settings WHERE name = 'eventpipe.kafka_options'}),
	0, '(b) pg_settings does not list it');
my $stats = $as_watcher->('SELECT state, events_sent FROM eventpipe.pg_stat_relay');
like($stats, qr/\|5$/, "(b) pg_monitor reads pg_stat_relay ($stats)");
like($node->safe_psql('postgres', 'SHOW eventpipe.kafka_options'),
	qr/\Q$password\E/, '(b) a superuser sees the value');

# ---- (c) a wrong password ---------------------------------------------------

set_kafka_options($node, $wrong);
my @held = publish_events('held', 3);
my $error = '';
ok( wait_until(
		sub {
			$error = $as_watcher->('SELECT coalesce(last_error, \'\') FROM eventpipe.pg_stat_relay');
			return $error =~ /authenticat/i;
		},
		60),
	"(c) pg_stat_relay reports the authentication failure ($error)");
unlike($error, qr/\Q$wrong\E|\Q$password\E/, '(c) ... without the password');
is(outbox_count($node), 3, '(c) the 3 events wait in the outbox');

set_kafka_options($node, $password);
ok(wait_until(sub { outbox_count($node) == 0 }, 60),
	'(c) with the right password again, the waiting events leave');
ok(ids_on_topic($kafka->{bootstrap}, $topic, [ @ids, @held ], 60),
	'(c) all 8 events are in the topic');

# ---- (e) stat_reset() ------------------------------------------------------
# The counters moved with the events, the authentication failure is the
# last error; stat_reset() zeroes both, and the counters move on from there.
# (counters live in shared memory: the restart in (c) began them anew)
is(relay_stat($node, 'events_sent'), 3, '(e) events_sent counted the 3 events sent since that restart');
my $reset_at = $node->safe_psql('postgres', 'SELECT eventpipe.stat_reset()');
is( $node->safe_psql('postgres',
		"SELECT events_sent || '|' || events_failed || '|' || coalesce(last_error, 'none') || '|' || (stats_reset = '$reset_at')
		   FROM eventpipe.pg_stat_relay"),
	'0|0|none|true',
	'(e) after stat_reset(): counters zero, last error cleared, stats_reset stamped');
my $one = $node->safe_psql('postgres', "SELECT eventpipe.publish('$topic', 'after-reset', '{}')");
ok(wait_until(sub { relay_stat($node, 'events_sent') == 1 }, 60),
	'(e) events_sent counts on from zero');

# ---- (f) the password in a file ----------------------------------------------

my $secrets = $node->data_dir . '/kafka-secrets.conf';
# write_secrets($password, $mode, $more_lines)
sub write_secrets
{
	my ($pw, $mode, $more) = @_;
	open(my $fh, '>', "$secrets.new") or die "cannot write $secrets.new: $!";
	print $fh "# SASL credentials of the shop\n\nsasl.username = shop\nsasl.password=$pw\n"
	  . ($more // '');
	close($fh);
	chmod($mode, "$secrets.new") or die "chmod: $!";
	rename("$secrets.new", $secrets) or die "rename: $!";
}

# relay_error_matches(qr/.../): whether pg_stat_relay's last_error, as a
# pg_monitor member reads it, comes to match within 60 s; $error keeps it.
sub relay_error_matches
{
	my ($pattern) = @_;
	return wait_until(
		sub {
			$error = $as_watcher->("SELECT coalesce(last_error, '') FROM eventpipe.pg_stat_relay");
			return $error =~ $pattern;
		},
		60);
}

write_secrets($wrong_in_file, 0644);
my $log_at = log_position($node);
$node->safe_psql('postgres',
	"ALTER SYSTEM SET eventpipe.kafka_options = 'security.protocol=SASL_PLAINTEXT,sasl.mechanism=PLAIN'");
$node->safe_psql('postgres', "ALTER SYSTEM SET eventpipe.kafka_options_file = '$secrets'");
$node->reload;
my @filed = publish_events('filed', 4);
$error = '';
ok(relay_error_matches(qr/open to other users/),
	"(f) a file other users can read is refused ($error)");
like(log_since($node, $log_at), qr/parameter "eventpipe.kafka_options" changed/,
	'(f) the reload logged the changed settings');
is(outbox_count($node), 4, '(f) the 4 events wait in the outbox');

write_secrets($wrong_in_file, 0600);
ok(relay_error_matches(qr/authenticat/i),
	"(f) with the file private, its wrong password fails authentication ($error)");
is(outbox_count($node), 4, '(f) the 4 events still wait');

write_secrets($password, 0600);
ok(wait_until(sub { outbox_count($node) == 0 }, 60),
	'(f) rewriting the file with the right password delivers them, without a reload');
ok(ids_on_topic($kafka->{bootstrap}, $topic, \@filed, 60), '(f) all 4 are in the topic');

# ---- (g) a value with a comma ------------------------------------------------
# Commas separate the items of kafka_options, so this password is cut in
# two and "Part2Secret" read as a property name: the errors must say "item
# 2", never quote it (nor "Part1").  PostgreSQL itself logs the text of
# statements (log_statement = all in these tests) and of a failing one, a
# gap the README states: the session turns both off, and the rest of the log
# must hold neither piece, as (d) checks.

my $comma_value = 'sasl.password=Part1,Part2Secret=x';
my $pieces = qr/Part1|Part2Secret/;
my $auto_conf = $node->data_dir . '/postgresql.auto.conf';
my $auto_before = slurp_file($auto_conf);
my $options_before = $node->safe_psql('postgres', 'SHOW eventpipe.kafka_options');

my ($ret, $out, $err) = $node->psql('postgres',
	"SET log_statement = none;\nSET log_min_error_statement = panic;\n"
	  . "ALTER SYSTEM SET eventpipe.kafka_options = '$comma_value';");
isnt($ret, 0, '(g) ALTER SYSTEM refuses a password with a comma in kafka_options');
like($err, qr/item 2 of eventpipe\.kafka_options is not a property librdkafka knows/,
	"(g) ... naming the item by position ($err)");
like($err, qr/HINT:.*eventpipe\.kafka_options_file/,
	'(g) ... and pointing to kafka_options_file');
unlike($err, $pieces, '(g) ... quoting neither piece of the password');
unlike(slurp_file($auto_conf), $pieces, '(g) postgresql.auto.conf did not take the value');

# The same value reaching a reload from the file: refused, the old one kept.
$log_at = log_position($node);
$node->append_conf('postgresql.auto.conf', "eventpipe.kafka_options = '$comma_value'");
$node->reload;
my $reload_log = '';
ok( wait_until(
		sub {
			$reload_log = log_since($node, $log_at);
			return $reload_log =~ /contains errors/;
		},
		60),
	'(g) the reload reports the configuration file has errors');
like($reload_log,
	qr/invalid value for parameter "eventpipe\.kafka_options"\n.*DETAIL:  item 2 of eventpipe\.kafka_options is not a property librdkafka knows/,
	'(g) ... the refused item named by position');
unlike($reload_log, $pieces, '(g) ... quoting neither piece of the password')
  or diag $reload_log;
is($node->safe_psql('postgres', 'SHOW eventpipe.kafka_options'),
	$options_before, '(g) the old kafka_options stays');
my $kept = $node->safe_psql('postgres', "SELECT eventpipe.publish('$topic', 'kept', '{}')");
ok(wait_until(sub { outbox_count($node) == 0 }, 60),
	'(g) the relay delivers with the old options');

open(my $auto_fh, '>', $auto_conf) or die "cannot write $auto_conf: $!";
print $auto_fh $auto_before;
close($auto_fh);
$node->reload;

# A line of the file that is a piece of a value (as a PEM's lines would be).
write_secrets('Part1', 0600, "Part2Secret=x\n");
my @pieced = publish_events('pieced', 2);
ok(relay_error_matches(qr/line 5 of eventpipe\.kafka_options_file is not a property librdkafka knows/),
	"(g) a line of the file that is no property is named by its number ($error)");
unlike($error, $pieces, '(g) ... quoting neither piece');
is(outbox_count($node), 2, '(g) the 2 events wait in the outbox');

write_secrets($password, 0600);
ok(wait_until(sub { outbox_count($node) == 0 }, 60),
	'(g) with the file right again, the waiting events leave');
ok(ids_on_topic($kafka->{bootstrap}, $topic, [ $kept, @pieced ], 60),
	'(g) the 3 events of (g) are in the topic');

# ---- (h) the properties eventpipe's guarantees rest on ------------------------
# Whatever the spelling (an alias, "topic.", 1 for true), a value that would
# let the relay delete an event before every in-sync replica has it or
# without its delivery report, break a key's order, or have a worker read
# aborted records, share a group or skip records, is refused with the
# property and the reason; spellings of the workers' own values pass.

my %breaking = (
	'acks=1'                          => qr/"acks" \(item 1 of eventpipe\.kafka_options\) is refused: .*acks=all/,
	'linger.ms=5,topic.acks=0'        => qr/"topic\.acks" \(item 2 of eventpipe\.kafka_options\) is refused/,
	'request.required.acks=1'         => qr/"request\.required\.acks" \(item 1 .*\) is refused/,
	'enable.idempotence=false'        => qr/"enable\.idempotence" \(item 1 .*\) is refused: without the idempotent producer/,
	'enable.idempotence=0'            => qr/"enable\.idempotence" \(item 1 .*\) is refused/,
	'delivery.report.only.error=true' => qr/"delivery\.report\.only\.error" \(item 1 .*\) is refused: .*delivery report/,
	'message.timeout.ms=30000'        => qr/"message\.timeout\.ms" \(item 1 .*\) is refused: .*never time out/,
	'delivery.timeout.ms=0'           => qr/"delivery\.timeout\.ms" \(item 1 .*\) is refused/,
	'retries=5'                       => qr/"retries" \(item 1 .*\) is refused: .*without end/,
	'partitioner=random'              => qr/"partitioner" \(item 1 .*\) is refused: .*one key/,
	'topic.partitioner=consistent_random' => qr/"topic\.partitioner" \(item 1 .*\) is refused/,
	'transactional.id=mine'           => qr/"transactional\.id" \(item 1 .*\) is refused: .*relay_exactly_once/,
	'isolation.level=read_uncommitted' => qr/"isolation\.level" \(item 1 .*\) is refused: .*aborted/,
	'group.id=shared'                 => qr/"group\.id" \(item 1 .*\) is refused: .*group_id/,
	'auto.offset.reset=latest'        => qr/"auto\.offset\.reset" \(item 1 .*\) is refused/,
	'enable.partition.eof=true'       => qr/"enable\.partition\.eof" \(item 1 .*\) is refused/,
	'group.instance.id=w1'            => qr/"group\.instance\.id" \(item 1 .*\) is refused: .*fence/,
	'internal.termination.signal=15'  => qr/"internal\.termination\.signal" \(item 1 .*\) is refused: .*signal/,
	'max.in.flight=6'                 => qr/"max\.in\.flight" \(item 1 .*\) is refused: .*at most 5 requests/,
	'max.in.flight.requests.per.connection=1000000' => qr/"max\.in\.flight\.requests\.per\.connection" \(item 1 .*\) is refused/,
	'topic.queuing.strategy=lifo'     => qr/"topic\.queuing\.strategy" \(item 1 .*\) is refused: .*later events/,
	'partition.assignment.strategy=cooperative-sticky' => qr/"partition\.assignment\.strategy" \(item 1 .*\) is refused: .*eagerly/,
	'enable_sasl_queue=true'          => qr/"enable_sasl_queue" \(item 1 .*\) is refused: .*SASL/,
	'test.mock.num.brokers=1'         => qr/"test\.mock\.num\.brokers" \(item 1 .*\) is refused: .*mock cluster/,
	'ut_handle_ProduceResponse=x'     => qr/"ut_handle_ProduceResponse" \(item 1 .*\) is refused/);
for my $options (sort keys %breaking)
{
	my ($ret, $out, $err) = $node->psql('postgres',
		"ALTER SYSTEM SET eventpipe.kafka_options = '$options'");
	isnt($ret, 0, "(h) ALTER SYSTEM refuses kafka_options '$options'");
	like($err, $breaking{$options}, "(h) ... naming the property and why ($err)");
}
for my $options ('acks=-1', 'acks=all,enable.idempotence=1', 'topic.partitioner=murmur2',
	'partitioner=fnv1a_random', 'isolation.level=read_committed',
	'delivery.report.only.error=false', 'linger.ms=5', 'max.in.flight=5',
	'queuing.strategy=fifo', 'partition.assignment.strategy=roundrobin')
{
	my ($ret, $out, $err) = $node->psql('postgres',
		"ALTER SYSTEM SET eventpipe.kafka_options = '$options'");
	is($ret, 0, "(h) ALTER SYSTEM accepts kafka_options '$options'") or diag $err;
}
$node->safe_psql('postgres',
	"ALTER SYSTEM SET eventpipe.kafka_options = 'security.protocol=SASL_PLAINTEXT,sasl.mechanism=PLAIN'");

# The same in the file (a value librdkafka itself takes): the relay waits,
# names the line, and loses nothing.
write_secrets($password, 0600, "partitioner = random\n");
my @scattered = publish_events('random', 3);
ok(relay_error_matches(qr/property "partitioner" \(line 5 of eventpipe\.kafka_options_file\) is refused/),
	"(h) partitioner=random in the file is refused, naming its line ($error)");
ok(wait_until(sub { relay_stat($node, 'state') eq 'not configured' }, 30),
	'(h) ... the relay waits, not configured');
is(outbox_count($node), 3, '(h) the 3 events wait in the outbox');

write_secrets($password, 0600);
ok(wait_until(sub { outbox_count($node) == 0 }, 60),
	'(h) with the line gone, the waiting events leave');
ok(ids_on_topic($kafka->{bootstrap}, $topic, \@scattered, 60), '(h) the 3 events are in the topic');

# A list (only the file can hold commas in a value) is refused when any of
# its items is.
write_secrets($password, 0600, "partition.assignment.strategy = range, cooperative-sticky\n");
my @listed = publish_events('listed', 1);
ok(relay_error_matches(qr/property "partition\.assignment\.strategy" \(line 5 of eventpipe\.kafka_options_file\) is refused: the consumers rebalance eagerly/),
	"(h) a strategy list holding cooperative-sticky in the file is refused ($error)");
write_secrets($password, 0600, "partition.assignment.strategy = range, roundrobin\n");
ok(ids_on_topic($kafka->{bootstrap}, $topic, \@listed, 60), '(h) a list of eager strategies is taken');
write_secrets($password, 0600);

# A configuration file that already holds such an item (as one written
# before this check may): the server starts, warns, and keeps the
# setting's default, every item of it.
$log_at = log_position($node);
$node->append_conf('postgresql.auto.conf',
	"eventpipe.kafka_options = 'security.protocol=SASL_PLAINTEXT,sasl.mechanism=PLAIN,acks=1'");
$node->restart;
like(log_since($node, $log_at),
	qr/WARNING:  invalid value for parameter "eventpipe\.kafka_options"\n.*DETAIL:  property "acks" \(item 3 of eventpipe\.kafka_options\) is refused/,
	'(h) a server started with acks=1 in its configuration warns, naming the item');
is($node->safe_psql('postgres', 'SHOW eventpipe.kafka_options'), '',
	'(h) ... and keeps the default, no item of it applied');
$node->safe_psql('postgres',
	"ALTER SYSTEM SET eventpipe.kafka_options = 'security.protocol=SASL_PLAINTEXT,sasl.mechanism=PLAIN'");
$node->reload;
my @after_restart = publish_events('restarted', 2);
ok(wait_until(sub { outbox_count($node) == 0 }, 60),
	'(h) with the item gone, the relay delivers again');
ok(ids_on_topic($kafka->{bootstrap}, $topic, \@after_restart, 60), '(h) the 2 events are in the topic');

# ---- (d) the logs ---------------------------------------------------------

my @leaks = grep { /\Q$password\E|\Q$wrong\E|\Q$wrong_in_file\E/ } split /\n/, log_since($node, 0);
is(scalar @leaks, 0, '(d) no server log line holds a password')
  or diag join("\n", @leaks);
my @piece_leaks = grep { /$pieces/ } split /\n/, log_since($node, 0);
is(scalar @piece_leaks, 0, '(d) no server log line holds a piece of the password with a comma')
  or diag join("\n", @piece_leaks);

$node->stop;
ok(stop_kafka($kafka), 'Kafka stopped');
done_testing();

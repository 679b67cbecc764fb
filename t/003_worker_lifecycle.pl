# t/003_worker_lifecycle.pl: the launcher and relay workers through their
# life: (a) no bootstrap servers, then set on reload; (b) DROP EXTENSION and
# CREATE EXTENSION under a running relay; (c) pg_terminate_backend() of the
# relay; (d) a postmaster crash-restart in the middle of a batch; (e) the
# relay's database switched on reload, dropped (DROP DATABASE must not be
# blocked, also while the relay waits for an unreachable broker) and created
# again; (f) two relay workers sharing the outbox by key.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use EventpipeTest;

my $kafka     = start_kafka();
my $bootstrap = $kafka->{bootstrap};

# No eventpipe.bootstrap_servers at first.
my $node = new_node('main');
$node->safe_psql('postgres', 'CREATE EXTENSION eventpipe');

# Publish $n events to $topic in database $db, $per_txn per transaction,
# keys key-0..key-($keys-1) (undef: no key) with payload {seq} numbering
# each key's events.
my %seq;

sub publish_events
{
	my (%o) = @_;
	my $db      = $o{db}      // 'postgres';
	my $per_txn = $o{per_txn} // 10;
	my $keys    = $o{keys}    // 5;
	my (@events, $sql);
	$sql = '';
	for my $i (0 .. $o{n} - 1)
	{
		my $key = defined $keys ? "$o{topic}-key-" . ($i % $keys) : undef;
		my $ev = {
			topic   => $o{topic},
			key     => $key,
			payload => {
				seq => defined $key ? ++$seq{ $o{topic} . $key } : undef,
				i   => $i,
				db  => $db
			}
		};
		$sql .= "BEGIN;\n" if $i % $per_txn == 0;
		$sql .= publish_sql($ev);
		$sql .= "COMMIT;\n" if $i % $per_txn == $per_txn - 1 || $i == $o{n} - 1;
		push @events, $ev;
	}
	run_publish_script($node, $db, $sql, \@events);
	return @events;
}

sub seq_of { return $_[0]{value}{seq} }

sub relay_pid
{
	my ($db, $worker) = @_;
	return relay_stat($node, 'pid', db => $db // 'postgres', worker => $worker // 0);
}

# True once a relay worker other than $old_pid runs (within 30 s).
sub new_relay_since
{
	my ($old_pid) = @_;
	return wait_until(
		sub {
			my $p = relay_pid();
			$p ne '' && $p != $old_pid;
		},
		30);
}

my $crash_re = qr/terminated by signal|PANIC|exited with exit code|server process .* was terminated/;

# ---- (a) not configured, then configured on reload ----------------------

ok(wait_for_relay_state($node, 'not configured'),
	'(a) without bootstrap servers the relay says "not configured"');
is(relay_stat($node, 'last_error'), '', '(a) and records no error');
my @a1 = publish_events(topic => 't003.a', n => 5);
is(outbox_count($node), 5, '(a) events wait in the outbox');
is(relay_stat($node, 'backlog'), 5, '(a) pg_stat_relay.backlog is 5');
is(relay_stat($node, 'state'), 'not configured', '(a) still not configured');

$node->safe_psql('postgres',
	"ALTER SYSTEM SET eventpipe.bootstrap_servers = '$bootstrap'; SELECT pg_reload_conf();");
my @a2 = publish_events(topic => 't003.a', n => 5);
check_delivered($bootstrap, 't003.a', [ @a1, @a2 ], '(a) after reload',
	seq => \&seq_of);
ok(wait_until(sub { outbox_count($node) == 0 }, 30), '(a) outbox is empty');
ok(wait_for_relay_state($node, 'idle'), '(a) relay is idle');

# ---- (b) DROP EXTENSION / CREATE EXTENSION under the running relay ------

my $pid_b  = relay_pid();
my $log_b  = log_position($node);
# A big batch is on its way when the extension (and its outbox) goes away.
publish_events(topic => 't003.b-dropped', n => 3000, per_txn => 3000, keys => 50);
$node->safe_psql('postgres', 'DROP EXTENSION eventpipe');
# Without the extension the database has no worker: the relay and the
# database manager leave, and come back with CREATE EXTENSION.
ok( wait_until(
		sub {
			$node->safe_psql('postgres',
				"SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('eventpipe relay', 'eventpipe database manager')"
			) == 0;
		},
		30),
	'(b) the relay and the database manager leave with the extension');
$node->safe_psql('postgres', 'CREATE EXTENSION eventpipe');
ok(wait_for_relay_state($node, 'idle', timeout => 10),
	'(b) CREATE EXTENSION has a relay idle within seconds');
my @b1 = publish_events(topic => 't003.b', n => 20);
check_delivered($bootstrap, 't003.b', \@b1, '(b) after DROP and CREATE EXTENSION',
	seq => \&seq_of);

# publish(), DROP, CREATE and publish() again in one session: the session's
# cached statements must follow the new outbox.
my @b2 = (
	{ topic => 't003.b2', key => 'b2', payload => { seq => 1, what => 'dropped' } },
	{ topic => 't003.b2', key => 'b2', payload => { seq => 2, what => 'kept' } });
run_publish_script($node, 'postgres',
	publish_sql($b2[0])
	  . "DROP EXTENSION eventpipe;\nCREATE EXTENSION eventpipe;\n"
	  . publish_sql($b2[1]),
	\@b2);
my $b_msgs = check_delivered($bootstrap, 't003.b2', [ $b2[1] ],
	'(b) publish() in the session that re-created the extension', only => 0);
note '(b) the event dropped with its outbox '
  . (grep({ ($_->{ce_id} // '') eq $b2[0]{id} } @$b_msgs) ? 'had' : 'had not')
  . ' left before the DROP';
ok(wait_until(sub { outbox_count($node) == 0 }, 30), '(b) outbox is empty');
ok(wait_for_relay_state($node, 'idle'), '(b) relay is idle');
isnt(relay_pid(), $pid_b, '(b) a new relay process serves the new extension');
unlike(log_since($node, $log_b), $crash_re, '(b) no process crashed');

# ---- (c) pg_terminate_backend() of the relay ----------------------------

my $pid_c = relay_pid();
is($node->safe_psql('postgres', "SELECT pg_terminate_backend($pid_c)"), 't',
	'(c) relay worker terminated');
my @c1 = publish_events(topic => 't003.c', n => 10);
ok(new_relay_since($pid_c), '(c) the launcher started a new relay worker');
my @c2 = publish_events(topic => 't003.c', n => 10);
check_delivered($bootstrap, 't003.c', [ @c1, @c2 ], '(c) after the restart',
	seq => \&seq_of);
ok(wait_until(sub { outbox_count($node) == 0 }, 30), '(c) outbox is empty');

# ---- (d) crash-restart of the whole server ------------------------------

my $pid_d = relay_pid();
my $log_d = log_position($node);
# counted before the publish: the relay may send all of it before publish_events() returns
my $sent_before = relay_stat($node, 'events_sent');
my @d1 = publish_events(topic => 't003.d', n => 5000, per_txn => 5000, keys => 20);
# SIGKILL the relay in the middle of that work: once Kafka has acknowledged
# its first batch (events_sent grew), it is deleting that batch or sending
# the next one.
my $deadline = time() + 60;
my $sent_seen;
while (($sent_seen = relay_stat($node, 'events_sent')) == $sent_before && time() < $deadline)
{
	Time::HiRes::usleep(5_000);
}
ok(kill('KILL', $pid_d), "(d) relay worker $pid_d killed with SIGKILL");
isnt($sent_seen, $sent_before, '(d) ... once Kafka had acknowledged a first batch of them');
ok( wait_until(
		sub {
			log_since($node, $log_d) =~
			  /all server processes terminated; reinitializing.*database system is ready to accept connections/s;
		},
		180),
	'(d) the server restarted after the crash');
ok($node->poll_query_until('postgres', 'SELECT true'), '(d) the server accepts connections');
note '(d) outbox after the restart: ' . outbox_count($node) . ' events';
ok(new_relay_since($pid_d), '(d) a new relay worker runs');
my @d2 = publish_events(topic => 't003.d', n => 20, keys => 20);
check_delivered($bootstrap, 't003.d', [ @d1, @d2 ], '(d) after the crash',
	allow_duplicates => 1, seq => \&seq_of);
ok(wait_until(sub { outbox_count($node) == 0 }, 30), '(d) outbox is empty');
ok(wait_for_relay_state($node, 'idle'), '(d) relay is idle');

# ---- (e) the relay's database: switched, dropped, created again ---------

$node->safe_psql('postgres', 'CREATE DATABASE shop');
$node->safe_psql('shop',     'CREATE EXTENSION eventpipe');
my $pid_e = relay_pid();
$node->safe_psql('postgres',
	"ALTER SYSTEM SET eventpipe.database = 'shop'; SELECT pg_reload_conf();");
ok( $node->poll_query_until('shop',
		"SELECT database = 'shop' AND state = 'idle' AND pid <> $pid_e FROM eventpipe.pg_stat_relay WHERE worker = 0"
	),
	'(e) the relay moved to database shop');
my @e_postgres = publish_events(topic => 't003.e-postgres', n => 3);
my @e1 = publish_events(db => 'shop', topic => 't003.e', n => 10);
my $e_msgs = check_delivered($bootstrap, 't003.e', \@e1, '(e) shop events');
is_deeply([ sort keys %{ { map { $_->{headers}{ce_source} => 1 } @$e_msgs } } ],
	['/eventpipe/shop'], '(e) ce_source names database shop');
ok(wait_until(sub { outbox_count($node, 'shop') == 0 }, 30), '(e) shop outbox is empty');
is(outbox_count($node, 'postgres'), 3,
	'(e) events of database postgres are not relayed meanwhile');

# DROP DATABASE of the relay's database, while the relay is idle.
my $pid_shop = relay_pid('shop');
my $t0       = time();
my ($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE shop');
my $drop_time = time() - $t0;
is($ret, 0, '(e) DROP DATABASE shop succeeded while the relay was connected')
  or diag $err;
note sprintf('(e) DROP DATABASE took %.2f s', $drop_time);
cmp_ok($drop_time, '<', 4, '(e) DROP DATABASE did not wait for the relay to time out');
ok(wait_for_relay_state($node, 'not served'),
	'(e) pg_stat_relay of database postgres says "not served"');
is(relay_stat($node, 'pid'), '', '(e) no relay worker runs');

$node->safe_psql('postgres', 'CREATE DATABASE shop');
$node->safe_psql('shop',     'CREATE EXTENSION eventpipe');
ok(wait_for_relay_state($node, 'idle', db => 'shop'), '(e) relay back in the new shop');
my @e2 = publish_events(db => 'shop', topic => 't003.e', n => 10);
check_delivered($bootstrap, 't003.e', [ @e1, @e2 ], '(e) after CREATE DATABASE shop');

# A DROP DATABASE that fails (another session is connected) must not keep
# the relay away once it has failed: it leaves for the drop, then comes back
# as soon as the drop gave up (not after some grace period).
my $blocker = $node->background_psql('shop');
$blocker->query_safe('SELECT 1');
($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE shop');
my $failed_at = time();
isnt($ret, 0, '(e) DROP DATABASE shop fails while another session is connected');
like($err, qr/There is 1 other session using the database/,
	'(e) ... because of that one session: the relay had left');
ok(wait_for_relay_state($node, 'idle', db => 'shop'), '(e) relay back after the failed drop');
my $back_after = time() - $failed_at;
note sprintf('(e) relay back %.2f s after the failed DROP', $back_after);
cmp_ok($back_after, '<', 4, '(e) relay back at once, not after a grace period');
$blocker->quit;
my @e2b = publish_events(db => 'shop', topic => 't003.e', n => 3);
check_delivered($bootstrap, 't003.e', [ @e1, @e2, @e2b ], '(e) after the failed DROP');

# DROP DATABASE again, this time while the relay waits for a broker that
# does not answer, with a batch in flight.
my $dead_port = PostgreSQL::Test::Cluster::get_free_port();
$node->safe_psql('postgres',
	"ALTER SYSTEM SET eventpipe.bootstrap_servers = '127.0.0.1:$dead_port'; SELECT pg_reload_conf();"
);
ok( $node->poll_query_until('shop',
		"SELECT setting = '127.0.0.1:$dead_port' FROM pg_settings WHERE name = 'eventpipe.bootstrap_servers'"
	),
	'(e) bootstrap servers now point at a dead port');
my @e3 = publish_events(db => 'shop', topic => 't003.e-stuck', n => 5);
ok(wait_for_relay_state($node, 'relaying', db => 'shop'),
	'(e) relay is stuck relaying to the dead broker');
$t0 = time();
($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE shop');
$drop_time = time() - $t0;
is($ret, 0, '(e) DROP DATABASE shop succeeded while the relay waited for the broker')
  or diag $err;
note sprintf('(e) DROP DATABASE took %.2f s', $drop_time);
ok(wait_for_relay_state($node, 'not served'),
	'(e) pg_stat_relay of database postgres says "not served" again');

# Back to database postgres and the real broker: its pending events leave.
$node->safe_psql('postgres',
	"ALTER SYSTEM SET eventpipe.bootstrap_servers = '$bootstrap';"
	  . ' ALTER SYSTEM RESET eventpipe.database; SELECT pg_reload_conf();');
check_delivered($bootstrap, 't003.e-postgres', \@e_postgres,
	'(e) back in database postgres');
ok(wait_for_relay_state($node, 'idle'), '(e) relay idle in database postgres');

# ---- (f) two relay workers ----------------------------------------------

$node->safe_psql('postgres', 'ALTER SYSTEM SET eventpipe.relay_workers = 2');
$node->restart;
ok(wait_for_relay_state($node, 'idle', worker => 0), '(f) relay worker 0 is idle');
ok(wait_for_relay_state($node, 'idle', worker => 1), '(f) relay worker 1 is idle');
my $pids = $node->safe_psql('postgres',
	'SELECT count(DISTINCT pid) FROM eventpipe.pg_stat_relay WHERE pid IS NOT NULL');
is($pids, 2, '(f) two distinct relay processes');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'eventpipe relay'"),
	2,
	'(f) two eventpipe relay backends in pg_stat_activity');

my @f = publish_events(topic => 't003.f', n => 600, keys => 40, per_txn => 7);
my @f_keyless = publish_events(topic => 't003.f', n => 20, keys => undef, per_txn => 4);
check_delivered($bootstrap, 't003.f', [ @f, @f_keyless ], '(f) two workers',
	seq => sub { defined $_[0]{key} ? $_[0]{value}{seq} : undef });
ok(wait_until(sub { outbox_count($node) == 0 }, 30), '(f) outbox is empty');
my $stats = relay_stats($node);
is(scalar @$stats, 2, '(f) pg_stat_relay has two rows');
ok($stats->[0]{events_sent} > 0 && $stats->[1]{events_sent} > 0,
	"(f) both workers sent events ($stats->[0]{events_sent} + $stats->[1]{events_sent})");
cmp_ok($stats->[0]{events_sent} + $stats->[1]{events_sent}, '>=', @f + @f_keyless,
	'(f) together they sent every event');
is_deeply([ map { $_->{backlog} } @$stats ], [ 0, 0 ], '(f) no backlog on either');

# ---- (g) the launcher dies, its relay workers do not ---------------------
# A restarted launcher must adopt the running relays, not start a second
# worker on each shard (two workers on a shard would break per-key order).

my $relay_pids = $node->safe_psql('postgres',
	'SELECT string_agg(pid::text, \',\' ORDER BY worker) FROM eventpipe.pg_stat_relay');
my $launcher = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'eventpipe launcher'");
ok($launcher, "(g) the launcher runs (pid $launcher)");
$node->safe_psql('postgres', "SELECT pg_terminate_backend($launcher)");
ok( $node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'eventpipe launcher'"
		  . " AND pid <> $launcher"),
	'(g) a new launcher started');
# give the new launcher a few turns of its loop to start workers it should not
Time::HiRes::usleep(3_000_000);
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'eventpipe relay'"),
	2,
	'(g) still exactly two relay workers');
is( $node->safe_psql('postgres',
		'SELECT string_agg(pid::text, \',\' ORDER BY worker) FROM eventpipe.pg_stat_relay'),
	$relay_pids,
	'(g) the same two, still holding their shards');
my @g = publish_events(topic => 't003.g', n => 200, keys => 20, per_txn => 5);
check_delivered($bootstrap, 't003.g', \@g, '(g) after the launcher restart');

ok(stop_kafka($kafka), 'Kafka stopped');
$node->stop;
done_testing();

# t/FaultTest.pm: helpers of the fault-injection TAP suites (t/1*.pl).
#
# The suites publish numbered events per key while something breaks, then
# check with kcat that every committed event reached Kafka, in order per
# key.  What committed is known exactly because every publish() is recorded
# in the same transaction in a ledger table, ft_ledger (topic, key, seq,
# event_id): a transaction cut short by a crash leaves neither its events
# nor its ledger rows, one that committed leaves both.
#
#   ft_prepare($node)            ledger, control table, ft_publish_round()
#   start_publishers($node, ...) background psql sessions publishing in a loop
#   stop_publishers($pubs)       ask them to stop and wait for them
#   reap_publishers($pubs)       wait for sessions a crash has ended
#   bulk_publish($node, ...)     one transaction of many events (a backlog)
#   ledger($node, $topic)        what committed: [{key, seq, event_id}]
#   check_topic(...)             no loss, right keys/seqs, nothing foreign,
#                                per-key order; duplicates are only noted
#                                (verify_messages: the same on messages read)
#   topic_admin / create_topic / delete_records   topics created, records
#                                deleted, with Kafka's Java AdminClient
#                                (t/java/KafkaAdmin.java)
#   partition_leaders            partition => leader node, from kcat -L
#   end_offsets                  partition => end offset, from kcat -Q
#
# Builds on EventpipeTest (Kafka clusters, nodes, wait_until, read_topic,
# check_key_order, ...).
package FaultTest;

use strict;
use warnings;

use Carp;
use Cwd qw(abs_path);
use Exporter qw(import);
use File::Basename qw(dirname);
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

use EventpipeTest;

our @EXPORT = qw(
  ft_prepare
  start_publishers stop_publishers reap_publishers
  bulk_publish ledger ledger_count
  check_topic verify_messages
  wait_server_up server_is_up relay_pids
  topic_admin create_topic delete_topic delete_records partition_leaders end_offsets ensure_consumer_offsets
  log_matches finish_stream
);

my $repo_root = abs_path(dirname(abs_path(__FILE__)) . '/..');

# Background processes (publishers, topic admins) to end at exit.
my @children;

END
{
	my $exit_code = $?;
	for my $h (@children)
	{
		eval { $h->kill_kill if $h->pumpable; 1 };
	}
	$? = $exit_code;
}

# ------------------------------------------------------ end of a fault ----

# After a fault: stop the publishers ($sessions of them), wait for the outbox
# to drain, check the topic against the ledger (no loss, per-key order,
# duplicates reported), and check that nothing was dead-lettered and no
# backend crashed since $log_start.  $relay_log_pattern picks the log lines
# to show with note().
sub finish_stream
{
	my (%a) = @_;
	my ($node, $label) = ($a{node}, $a{label});
	is(stop_publishers($a{publishers}), $a{sessions},
		"$label: the publishing sessions ended normally");
	ok(wait_until(sub { outbox_count($node) == 0 }, 120), "$label: the outbox drained")
	  or diag 'outbox: ' . outbox_count($node);
	my $ledger = ledger($node, $a{topic});
	note scalar(@$ledger) . " events committed ($label)";
	check_topic($a{bootstrap}, $a{topic}, $ledger, $label);
	is($node->safe_psql('postgres', 'SELECT count(*) FROM eventpipe.dead_letters'), 0,
		"$label: no event was dead-lettered");
	my @crashes = log_matches($node, $a{log_start},
		qr/terminated by signal|PANIC|exited with exit code|server process .* was terminated/);
	is(scalar @crashes, 0, "$label: no backend crashed") or diag join("\n", @crashes);
	my @wal_errors = log_matches($node, $a{log_start}, qr/flush request .* is not satisfied/);
	is(scalar @wal_errors, 0, "$label: the relay's WAL flushes all succeeded")
	  or diag join("\n", @wal_errors);
	note "$label: relay log: "
	  . join("\n", log_matches($node, $a{log_start}, $a{relay_log_pattern}));
	return;
}

# ------------------------------------------------------------- ledger ----

# The test's tables and function in $db (default postgres).
# ft_publish_round(topic, keys, rounds) publishes, for each round, one event
# per key in array order, each numbered one past the key's last number in
# the ledger, with payload {"key": k, "seq": n}; returns how many.  With
# type => T the payload also says {"type": T}, the event type a
# subscription's rules match.
sub ft_prepare
{
	my ($node, $db, %o) = @_;
	my $type = defined $o{type} ? ', ' . sql_quote('type') . ', ' . sql_quote($o{type}) : '';
	$node->safe_psql($db // 'postgres', q{
CREATE TABLE ft_ledger (
    topic    text,
    key      text,
    seq      integer,
    event_id uuid NOT NULL,
    PRIMARY KEY (topic, key, seq));
CREATE TABLE ft_control (name text PRIMARY KEY, stop boolean NOT NULL DEFAULT false);
CREATE FUNCTION ft_publish_round(p_topic text, p_keys text[], p_rounds integer)
RETURNS integer LANGUAGE plpgsql AS $f$
DECLARE
    last jsonb;     -- key => its last number so far
    k text;
    s integer;
    n integer := 0;
BEGIN
    SELECT jsonb_object_agg(u.key, (SELECT coalesce(max(l.seq), 0) FROM ft_ledger AS l
                                     WHERE l.topic = p_topic AND l.key = u.key))
      INTO last
      FROM (SELECT DISTINCT key FROM unnest(p_keys) AS key) AS u;
    FOR r IN 1 .. p_rounds LOOP
        FOREACH k IN ARRAY p_keys LOOP
            s := (last ->> k)::integer + 1;
            last := jsonb_set(last, ARRAY[k], to_jsonb(s));
            INSERT INTO ft_ledger (topic, key, seq, event_id)
            VALUES (p_topic, k, s,
                    eventpipe.publish(p_topic, k, jsonb_build_object('key', k, 'seq', s TYPE)));
            n := n + 1;
        END LOOP;
    END LOOP;
    RETURN n;
END
$f$;
} =~ s/ TYPE/$type/r);
	return;
}

sub _sql_array
{
	my (@items) = @_;
	return 'ARRAY[' . join(', ', map { sql_quote($_) } @items) . ']::text[]';
}

# start_publishers($node, name => 'a', topic => T, sessions => 3, keys => 4,
#   per_txn => 3, sleep_ms => 10, max_txns => 100000, db => 'postgres'):
# `sessions` psql sessions, each running a DO block that loops: publish
# per_txn events (cycling over its own keys NAME-sS-kJ, so each key has one
# publisher and publish order is commit order), COMMIT, sleep; until
# stop_publishers() or max_txns transactions.  Sessions started again under
# the same name continue the keys' numbering from the ledger.
sub start_publishers
{
	my ($node, %o) = @_;
	my $name     = $o{name}     // 'pub';
	my $db       = $o{db}       // 'postgres';
	my $sessions = $o{sessions} // 3;
	my $nkeys    = $o{keys}     // 4;
	my $per_txn  = $o{per_txn}  // 3;
	my $sleep    = ($o{sleep_ms} // 10) / 1000;
	my $max_txns = $o{max_txns} // 100000;
	my $topic    = $o{topic} or croak 'start_publishers needs a topic';

	$node->safe_psql($db,
		'INSERT INTO ft_control (name) VALUES (' . sql_quote($name) . ')'
		  . ' ON CONFLICT (name) DO UPDATE SET stop = false');
	my @procs;
	for my $s (1 .. $sessions)
	{
		my @keys = map { "$name-s$s-k$_" } 0 .. $nkeys - 1;
		my $sql  = sprintf(q{
DO $pub$
DECLARE
    ks text[] := %s;
    n integer := %d;
    per integer := %d;
    txns integer := 0;
BEGIN
    WHILE txns < %d LOOP
        EXIT WHEN (SELECT stop FROM ft_control WHERE name = %s);
        PERFORM ft_publish_round(%s,
                   (SELECT array_agg(ks[(txns * per + g) %% n + 1] ORDER BY g)
                      FROM generate_series(0, per - 1) AS g), 1);
        COMMIT;
        txns := txns + 1;
        PERFORM pg_sleep(%s);
    END LOOP;
END
$pub$;
}, _sql_array(@keys), $nkeys, $per_txn, $max_txns, sql_quote($name),
			sql_quote($topic), $sleep);
		my ($out, $err) = ('', '');
		my $h = IPC::Run::start(
			[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr($db), '-c', $sql ],
			'<', \undef, '>', \$out, '2>', \$err);
		push @children, $h;
		push @procs, { h => $h, out => \$out, err => \$err, label => "$name-s$s", keys => \@keys };
	}
	note "started $sessions publisher sessions '$name' on $topic";
	return { node => $node, db => $db, name => $name, topic => $topic, procs => \@procs };
}

# Wait (at most $timeout s) for the sessions to end; returns how many ended
# with exit status 0.  Those still running then are killed.
sub reap_publishers
{
	my ($pubs, $timeout) = @_;
	my $deadline = time() + ($timeout // 30);
	my $clean = 0;
	for my $p (@{ $pubs->{procs} })
	{
		my $h = $p->{h};
		while ($h->pumpable && time() < $deadline)
		{
			eval { $h->pump_nb; 1 };
			usleep(50_000);
		}
		if ($h->pumpable)
		{
			diag "publisher $p->{label} still running: killed";
			$h->kill_kill;
		}
		eval { $h->finish; 1 };
		my $status = eval { $h->full_result(0) } // -1;
		my $rc = $status == -1 ? 'unknown status' : $status & 127 ? 'signal ' . ($status & 127) : $status >> 8;
		$clean++ if $status == 0;
		my $err = ${ $p->{err} };
		$err =~ s/\s+$//;
		note "publisher $p->{label} exited with $rc" . ($err ne '' ? ": $err" : '');
	}
	return $clean;
}

# Ask the sessions to stop after their current transaction, and wait.
sub stop_publishers
{
	my ($pubs, $timeout) = @_;
	$pubs->{node}->safe_psql($pubs->{db},
		'UPDATE ft_control SET stop = true WHERE name = ' . sql_quote($pubs->{name}));
	return reap_publishers($pubs, $timeout);
}

# One transaction publishing $rounds events for each key of @$keys (round
# after round), numbered on from the ledger.  Returns how many.
sub bulk_publish
{
	my ($node, $topic, $keys, $rounds, $db) = @_;
	return $node->safe_psql($db // 'postgres',
		sprintf('SELECT ft_publish_round(%s, %s, %d)',
			sql_quote($topic), _sql_array(@$keys), $rounds));
}

# What committed for $topic: [{key, seq, event_id}], by key and seq.
sub ledger
{
	my ($node, $topic, $db) = @_;
	my $out = $node->safe_psql($db // 'postgres',
		'SELECT key, seq, event_id FROM ft_ledger WHERE topic = '
		  . sql_quote($topic) . ' ORDER BY key, seq');
	my @rows;
	for my $line (split /\n/, $out)
	{
		my ($key, $seq, $id) = split /\|/, $line;
		push @rows, { key => $key, seq => $seq, event_id => $id };
	}
	return \@rows;
}

sub ledger_count
{
	my ($node, $topic, $db) = @_;
	return $node->safe_psql($db // 'postgres',
		'SELECT count(*) FROM ft_ledger'
		  . (defined $topic ? ' WHERE topic = ' . sql_quote($topic) : ''));
}

# ---------------------------------------------------------- PostgreSQL ----

# The query goes with -c, not on psql's standard input as $node->psql()
# sends it: while the server restarts, psql may be refused and exit before
# IPC::Run writes to its input, and that write then dies of EPIPE.
sub server_is_up
{
	my ($node) = @_;
	my ($out, $err);
	return IPC::Run::run(
		[ 'psql', '-X', '-q', '-d', $node->connstr('postgres'), '-c', 'SELECT 1' ],
		'<', \undef, '>', \$out, '2>', \$err);
}

# Wait until the server accepts queries again (after a crash-restart).
sub wait_server_up
{
	my ($node, $timeout) = @_;
	return wait_until(sub { server_is_up($node) }, $timeout // 60);
}

# { worker => pid } of the running relay workers (pid 0 or NULL: none).
sub relay_pids
{
	my ($node, $db) = @_;
	my $out = $node->safe_psql($db // 'postgres',
		'SELECT worker, coalesce(pid, 0) FROM eventpipe.pg_stat_relay ORDER BY worker');
	my %pids;
	for my $line (split /\n/, $out)
	{
		my ($w, $pid) = split /\|/, $line;
		$pids{$w} = $pid;
	}
	return \%pids;
}

# Lines of the server log since $offset that match $re.
sub log_matches
{
	my ($node, $offset, $re) = @_;
	return grep { /$re/ } split /\n/, log_since($node, $offset // 0);
}

# ---------------------------------------------------------------- kcat ----

# check_topic($bootstrap, $topic, \@expected, $label, timeout => 120,
#   others_ok => \@event_ids): read the topic until every expected event
# (ledger rows: key, seq, event_id) is there or the timeout passes, then
# test that
#  - every expected event arrived (no loss),
#  - with its key, and its payload's key and seq,
#  - nothing else is on the topic (except others_ok),
#  - each key stayed in one partition and the first occurrences of its
#    events, in offset order, come in increasing seq order;
# duplicates (same ce_id more than once) are allowed and noted.
# kcat_options => [...] are read_topic()'s.  Returns { msgs, duplicates }.
sub check_topic
{
	my ($bootstrap, $topic, $expected, $label, %o) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my %want = map { $_->{event_id} => $_ } @$expected;
	my $deadline = time() + ($o{timeout} // 120);
	my ($msgs, %seen);
	while (1)
	{
		my $read = read_topic($bootstrap, $topic, fast => 1, kcat_options => $o{kcat_options});
		if (defined $read)
		{
			$msgs = $read;
			%seen = ();
			$seen{ $_->{ce_id} // '' }++ for @$msgs;
			last unless grep { !$seen{$_} } keys %want;
		}
		last if time() > $deadline;
		usleep(500_000);
	}
	return verify_messages($msgs // [], $expected, $label, %o, topic => $topic);
}

# The tests of check_topic() on messages already read (see there): messages
# as read_topic() returns them, ledger rows as ledger() does.
sub verify_messages
{
	my ($msgs, $expected, $label, %o) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $topic = $o{topic} // 'the topic';
	my %want = map { $_->{event_id} => $_ } @$expected;
	my %other = map { $_ => 1 } @{ $o{others_ok} // [] };
	# an empty ledger would pass every check below
	cmp_ok(scalar @$expected, '>', 0, "$label: the ledger holds committed events to look for");
	my %seen;
	$seen{ $_->{ce_id} // '' }++ for @$msgs;

	my @missing = sort { $a->{key} cmp $b->{key} || $a->{seq} <=> $b->{seq} }
	  grep { !$seen{ $_->{event_id} } } @$expected;
	is(scalar @missing, 0,
		"$label: all " . scalar(@$expected) . " committed events are on $topic")
	  or diag(scalar(@missing) . ' missing, e.g. '
		  . join(', ', map { "$_->{key}#$_->{seq} ($_->{event_id})" } @missing[ 0 .. ($#missing < 9 ? $#missing : 9) ]));

	my (@wrong, @foreign);
	for my $m (@$msgs)
	{
		my $ce_id = $m->{ce_id} // '';
		my $key   = $m->{key}   // '(null)';
		my $e = $want{$ce_id};
		if (!$e)
		{
			push @foreign, "p$m->{partition}\@$m->{offset} ce_id=$ce_id key=$key"
			  unless $other{$ce_id};
			next;
		}
		# the payload of ft_publish_round(): {"key": k, "seq": n}
		my ($seq)  = ($m->{payload} // '') =~ /"seq":\s*(\d+)/;
		my ($pkey) = ($m->{payload} // '') =~ /"key":\s*"([^"]*)"/;
		push @wrong, "p$m->{partition}\@$m->{offset}: key $key payload "
		  . ($pkey // '?') . '#' . ($seq // '?')
		  . ", ledger says $e->{key}#$e->{seq}"
		  if $key ne $e->{key}
		  || ($pkey // '') ne $e->{key}
		  || ($seq // -1) != $e->{seq};
	}
	is(scalar @wrong, 0, "$label: keys and payloads are those published")
	  or diag join("\n", @wrong[ 0 .. ($#wrong < 9 ? $#wrong : 9) ]);
	is(scalar @foreign, 0, "$label: nothing uncommitted or foreign is on $topic")
	  or diag(scalar(@foreign) . " foreign messages, e.g.\n"
		  . join("\n", @foreign[ 0 .. ($#foreign < 9 ? $#foreign : 9) ]));

	# per key of the ledger, in the ledger's numbering: first occurrences in
	# increasing order (numbers missing are counted above)
	my $ledger_row = sub { $want{ $_[0]{ce_id} // '' } };
	my @order = check_key_order($msgs,
		sub { my $e = $ledger_row->($_[0]); $e ? $e->{seq} : undef },
		key_of           => sub { $ledger_row->($_[0])->{key} },
		gaps             => 1,
		allow_duplicates => 1);
	is(scalar @order, 0, "$label: each key's events first arrived in publish order")
	  or diag(scalar(@order) . " order violations, e.g.\n"
		  . join("\n", @order[ 0 .. ($#order < 9 ? $#order : 9) ]));

	my $dups = 0;
	my $dup_events = 0;
	for my $id (keys %want)
	{
		next unless ($seen{$id} // 0) > 1;
		$dups += $seen{$id} - 1;
		$dup_events++;
	}
	note "$label: "
	  . scalar(@$msgs)
	  . " messages on $topic, $dups duplicate copies ($dup_events events arrived more than once)";
	return { msgs => $msgs, duplicates => $dups };
}

# ------------------------------------------------------------ topics ----

# Kafka's own Java AdminClient, run from t/java/KafkaAdmin.java (see
# there): one long-lived process per cluster answering "create" and
# "delete-records" commands.

# topic_admin($kafka): start the admin process; returns a handle for
# create_topic().
sub topic_admin
{
	my ($kafka) = @_;
	my $java_dir = "$repo_root/t/java";
	my ($in, $out) = ('', '');
	my $log = "$PostgreSQL::Test::Utils::log_path/topic_admin.log";
	my $h = IPC::Run::start(
		[
			'java', '-Xshare:auto', '-XX:TieredStopAtLevel=1', '-Xmx128m',
			"-Dlog4j.configuration=file:$java_dir/log4j.properties",
			"-Dlog4j2.configurationFile=$java_dir/log4j2.properties",
			'-cp', "$repo_root/.cache/kafka-libs/$kafka->{version}/*",
			"$java_dir/KafkaAdmin.java",
			$kafka->{bootstrap}
		],
		'<', \$in, '>', \$out, '2>>', $log);
	push @children, $h;
	my $admin = { h => $h, in => \$in, out => \$out, log => $log };
	(_admin_answer($admin, 90) // '') eq 'ready'
	  or BAIL_OUT("the topic admin process did not start (see $log)");
	return $admin;
}

# The admin's next line of output (undef on timeout).
sub _admin_answer
{
	my ($admin, $timeout) = @_;
	my $deadline = time() + $timeout;
	while (time() < $deadline)
	{
		if (${ $admin->{out} } =~ s/^([^\n]*)\n//)
		{
			return $1;
		}
		last unless $admin->{h}->pumpable;
		eval { $admin->{h}->pump_nb; 1 };
		usleep(20_000);
	}
	return undef;
}

# Send the admin one command line; true when it answers "ok".  The answer
# is noted after $what.
sub _admin_command
{
	my ($admin, $command, $what) = @_;
	${ $admin->{in} } .= "$command\n";
	my $answer = _admin_answer($admin, 60) // 'error: no answer';
	note "$what: $answer";
	return $answer eq 'ok';
}

# create_topic($admin, $topic, $partitions, $rf): true on success; the
# answer is noted.
sub create_topic
{
	my ($admin, $topic, $partitions, $rf) = @_;
	return _admin_command($admin, "create $topic $partitions $rf",
		"create topic $topic ($partitions partitions, RF $rf)");
}

# delete_topic($admin, $topic): true once the topic is deleted; the answer
# is noted.
sub delete_topic
{
	my ($admin, $topic) = @_;
	return _admin_command($admin, "delete $topic", "delete topic $topic");
}

# delete_records($admin, $topic, $partition, $offset): delete the
# partition's records before $offset (its log start becomes $offset), as
# retention does; true on success, the answer is noted.
sub delete_records
{
	my ($admin, $topic, $partition, $offset) = @_;
	return _admin_command($admin, "delete-records $topic $partition $offset",
		"delete records of $topic [$partition] before offset $offset");
}

# { partition => leader node id (-1: none) } from kcat -L.
sub partition_leaders
{
	my ($bootstrap, $topic) = @_;
	my (undef, $out) = run_kcat([ '-L', '-b', $bootstrap, '-t', $topic, '-m', '5' ], timeout => 30);
	my %leaders;
	$leaders{$1} = $2 while $out =~ /partition (\d+), leader (-?\d+)/g;
	return \%leaders;
}

# { partition => end offset } of partitions 0..$partitions-1 (kcat -Q):
# how many messages each holds, without reading them.
sub end_offsets
{
	my ($bootstrap, $topic, $partitions) = @_;
	my (undef, $out) = run_kcat([ '-Q', '-b', $bootstrap, map { ('-t', "$topic:$_:-1") } 0 .. $partitions - 1 ],
		timeout => 30);
	my %end;
	$end{$1} = $2 while $out =~ /\[(\d+)\] offset (-?\d+)/g;
	return \%end;
}

# Kafka creates __consumer_offsets on the first consumer-group request, not
# on a metadata request: make it exist (a group consumer reads $topic).
sub ensure_consumer_offsets
{
	my ($bootstrap, $topic) = @_;
	my $has = sub {
		my (undef, $out) = run_kcat([ '-L', '-b', $bootstrap, '-t', '__consumer_offsets', '-m', '5' ],
			timeout => 30);
		return $out =~ /topic "__consumer_offsets" with [1-9]\d* partitions/;
	};
	return 1 if $has->();
	run_kcat([ '-b', $bootstrap, '-G', 'faulttest-probe', '-e', '-q', $topic ], timeout => 30);
	return wait_until($has, 30);
}

1;

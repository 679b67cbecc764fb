# t/EventpipeTest.pm: shared helpers of eventpipe's TAP tests.
#
# Covers what every test file needs around PostgreSQL::Test::Cluster: a
# throwaway Kafka cluster run by scripts/kafka (stopped at exit, also when the
# test dies), PostgreSQL nodes that preload eventpipe, publishing events and
# reading back what publish() returned, reading a topic with kcat (the one
# topic reader of the test library) until the expected messages are there,
# checking per-key order (the one order checker), and looking at
# eventpipe.pg_stat_relay.
package EventpipeTest;

use strict;
use warnings;

use Carp;
use Cwd qw(abs_path);
use Encode qw(decode encode);
use Exporter qw(import);
use File::Basename qw(dirname basename);
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

our @EXPORT = qw(
  start_kafka stop_kafka restart_kafka kill_kafka_node start_kafka_node
  kafka_node_pid
  new_node
  run_kcat read_topic consume_all consume_until consume_ids ids_on_topic
  wait_for_relay_state wait_until relay_stats relay_stat
  publish_sql run_publish_script outbox_count
  sql_quote json_text
  by_ce_id check_key_order check_delivered log_position log_since
);

# Every Kafka cluster this process started and has not stopped yet, by dir.
my %running_kafka;

my $repo_root  = abs_path(dirname(abs_path(__FILE__)) . '/..');
my $kafka_tool = "$repo_root/scripts/kafka";

# JSON codecs: kcat prints UTF-8 JSON lines; payloads inside them are already
# character strings once the line is decoded.
my $json_utf8  = JSON::PP->new->utf8;
my $json_chars = JSON::PP->new;
# What tests send: ASCII only (non-ASCII as \u escapes), keys sorted.
my $json_out = JSON::PP->new->ascii->canonical;

# ---------------------------------------------------------------- Kafka ----

# Run scripts/kafka with the given arguments; returns (exit ok, stdout, stderr).
# Its progress (stderr) goes to the test's log.
sub _kafka_cmd
{
	my (@args) = @_;
	my ($out, $err) = ('', '');
	my $ok = eval {
		IPC::Run::run([ $kafka_tool, @args ],
			'<', \undef, '>', \$out, '2>', \$err,
			IPC::Run::timeout(180));
	};
	my $why = $@;
	print "# scripts/kafka @args\n$err";
	print "# scripts/kafka failed: $why\n" if $why;
	return ($ok ? 1 : 0, $out, $err);
}

sub _port_is_free
{
	my ($port) = @_;
	return PostgreSQL::Test::Cluster::can_bind('127.0.0.1', $port);
}

# A base port for an N-node cluster: BASE..BASE+N-1 (brokers),
# BASE+100..BASE+100+N-1 (controllers) and BASE+200..BASE+200+N-1 (SASL
# listeners, when there are) must all be free.  BASE comes from
# get_free_port(), which also reserves it against concurrent test runs; the
# other ports are checked and, where the test library allows it, reserved.
sub _pick_kafka_port
{
	my ($nodes, $sasl) = @_;
	# get_free_port() counts up to 32767 and wraps around: enough tries to
	# wrap when it starts near the top
	for my $try (1 .. 1000)
	{
		my $base = PostgreSQL::Test::Cluster::get_free_port();
		next if $base + ($sasl ? 200 : 100) + $nodes > 32767;
		my @others = (
			(map { $base + $_ } 1 .. $nodes - 1),
			(map { $base + 100 + $_ } 0 .. $nodes - 1),
			($sasl ? (map { $base + 200 + $_ } 0 .. $nodes - 1) : ()));
		next if grep { !_port_is_free($_) } @others;
		if (PostgreSQL::Test::Cluster->can('_reserve_port'))
		{
			next
			  if grep { !PostgreSQL::Test::Cluster::_reserve_port($_) }
			  @others;
		}
		return $base;
	}
	croak "found no free ports for a $nodes-node Kafka cluster";
}

# Leave through END blocks (which stop Kafka) when the test is interrupted.
sub _install_signal_handlers
{
	for my $sig (qw(INT TERM HUP))
	{
		next if defined $SIG{$sig} && ref $SIG{$sig};
		$SIG{$sig} = sub {
			print STDERR "# caught SIG$sig, cleaning up\n";
			exit 1;
		};
	}
}

# start_kafka(nodes => 1, timeout => 90, sasl_users => ['name:password'],
#             broker_properties => ['key=value', ...]):
# a new cluster in its own directory under tmp_check, on free ports, with a
# SASL_PLAINTEXT listener (PLAIN) for sasl_users if given, and the extra
# broker settings if given (scripts/kafka start --broker-property), of the
# Kafka version scripts/kafka picks ($EP_KAFKA_VERSION, else its default).
# Returns a hash: dir, bootstrap, sasl_bootstrap (with sasl_users), port,
# nodes, version (the Kafka version, which names its jars' folder in
# .cache/kafka-libs).  Killed at exit if the test does not stop it.
sub start_kafka
{
	my (%opts) = @_;
	my $nodes   = $opts{nodes}   // 1;
	my $timeout = $opts{timeout} // 90;
	my @sasl_users = @{ $opts{sasl_users}        // [] };
	my @props      = @{ $opts{broker_properties} // [] };
	my $name    = basename($0);
	$name =~ s/\.[^.]+$//;
	my $dir = PostgreSQL::Test::Utils::tempdir("kafka_$name");

	_install_signal_handlers();
	my $port = _pick_kafka_port($nodes, scalar @sasl_users);
	$running_kafka{$dir} = 1;
	my ($ok, $out) = _kafka_cmd(
		'start',     '--dir',   $dir,  '--nodes', $nodes,
		'--port',    $port,     '--timeout', $timeout,
		(map { ('--sasl-user', $_) } @sasl_users),
		(map { ('--broker-property', $_) } @props));
	BAIL_OUT("could not start Kafka in $dir") unless $ok;
	my @lines     = split /\n/, $out;
	my $bootstrap = $lines[-1];
	BAIL_OUT("scripts/kafka start printed no bootstrap servers")
	  unless defined $bootstrap && $bootstrap =~ /^127\.0\.0\.1:\d+/;
	my ($version) =
	  PostgreSQL::Test::Utils::slurp_file("$dir/cluster.env") =~
	  /^EP_KAFKA_VERSION=(\S+)$/m;
	BAIL_OUT("no EP_KAFKA_VERSION in $dir/cluster.env") unless defined $version;
	note "Kafka $version ($nodes node(s)) at $bootstrap in $dir"
	  . (@props ? ', with ' . join(' ', @props) : '');
	my $sasl_bootstrap;
	if (@sasl_users)
	{
		(my $sasl_ok, $sasl_bootstrap) = _kafka_cmd('bootstrap', '--dir', $dir, '--sasl');
		chomp $sasl_bootstrap;
		BAIL_OUT("scripts/kafka bootstrap --sasl printed no SASL listener")
		  unless $sasl_ok && $sasl_bootstrap =~ /^127\.0\.0\.1:\d+/;
		note "SASL_PLAINTEXT listener at $sasl_bootstrap";
	}
	return {
		dir            => $dir,
		bootstrap      => $bootstrap,
		sasl_bootstrap => $sasl_bootstrap,
		port           => $port,
		nodes          => $nodes,
		version        => $version
	};
}

# Stop every node (SIGTERM, data kept).  Returns true on success.
sub stop_kafka
{
	my ($kafka) = @_;
	my ($ok) = _kafka_cmd('stop', '--dir', $kafka->{dir});
	return $ok;
}

# Start the stopped nodes of an existing cluster again, with their data.
sub restart_kafka
{
	my ($kafka, %opts) = @_;
	my ($ok) = _kafka_cmd('start', '--dir', $kafka->{dir}, '--timeout',
		$opts{timeout} // 90);
	return $ok;
}

# SIGKILL node N.
sub kill_kafka_node
{
	my ($kafka, $n) = @_;
	my ($ok) = _kafka_cmd('kill', $n, '--dir', $kafka->{dir});
	return $ok;
}

# The pid of Kafka node N, or undef when it does not run: for a test that
# must signal it without the delay of scripts/kafka.
sub kafka_node_pid
{
	my ($kafka, $n) = @_;
	my $file = "$kafka->{dir}/node-$n/pid";
	return undef unless -f $file;
	my $pid = PostgreSQL::Test::Utils::slurp_file($file);
	chomp $pid;
	return undef unless $pid =~ /^\d+$/ && kill(0, $pid);
	return $pid;
}

# Start node N again (after kill or stop) and wait until it serves.
sub start_kafka_node
{
	my ($kafka, $n, %opts) = @_;
	my ($ok) = _kafka_cmd('start-node', $n, '--dir', $kafka->{dir},
		'--timeout', $opts{timeout} // 90);
	return $ok;
}

END
{
	my $exit_code = $?;
	for my $dir (sort keys %running_kafka)
	{
		# No data worth a graceful shutdown: kill whatever still runs.
		if (-f "$dir/cluster.env")
		{
			my $env = PostgreSQL::Test::Utils::slurp_file("$dir/cluster.env");
			my ($n) = $env =~ /^EP_KAFKA_NODES=(\d+)/m;
			_kafka_cmd('kill', $_, '--dir', $dir) for 1 .. ($n // 1);
		}
		_kafka_cmd('stop', '--dir', $dir);
	}
	$? = $exit_code;
}

# ----------------------------------------------------------- PostgreSQL ----

# new_node($name, bootstrap => B, conf => "more lines", start => 1,
#          poll_interval => '200ms'): a node that preloads eventpipe, UTF8,
# restart_after_crash on, relay pointed at B (left unset when B is undef).
# With EP_TEST_RELAY_EXACTLY_ONCE=on in the environment its relay is
# transactional (eventpipe.relay_exactly_once), unless conf says otherwise:
# the relay tests then run against that mode too.
sub new_node
{
	my ($name, %opts) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(extra => [ '--encoding=UTF8', '--locale=C' ]);
	my $conf = "shared_preload_libraries = 'eventpipe'\n"
	  . "restart_after_crash = on\n"
	  . "log_min_messages = info\n"
	  . "eventpipe.relay_poll_interval = '"
	  . ($opts{poll_interval} // '200ms') . "'\n";
	$conf .= "eventpipe.bootstrap_servers = '$opts{bootstrap}'\n"
	  if defined $opts{bootstrap};
	$conf .= "eventpipe.relay_exactly_once = on\n"
	  if ($ENV{EP_TEST_RELAY_EXACTLY_ONCE} // '') eq 'on';
	$conf .= "$opts{conf}\n" if defined $opts{conf};
	$node->append_conf('postgresql.conf', $conf);
	$node->start unless defined $opts{start} && !$opts{start};
	return $node;
}

# Byte offset of the end of the node's server log, for log_since().
sub log_position
{
	my ($node) = @_;
	return -s $node->logfile // 0;
}

sub log_since
{
	my ($node, $offset) = @_;
	return PostgreSQL::Test::Utils::slurp_file($node->logfile, $offset);
}

# Poll $check->() every 100 ms until it returns true or $timeout seconds
# pass; returns its last result.
sub wait_until
{
	my ($check, $timeout) = @_;
	$timeout //= 60;
	my $deadline = time() + $timeout;
	while (1)
	{
		my $r = $check->();
		return $r if $r;
		return $r if time() > $deadline;
		usleep(100_000);
	}
}

# Rows of eventpipe.pg_stat_relay as hashes, in worker order.
sub relay_stats
{
	my ($node, $db) = @_;
	my $out = $node->safe_psql($db // 'postgres',
		"SELECT coalesce(json_agg(r ORDER BY worker), '[]') FROM eventpipe.pg_stat_relay r"
	);
	return $json_utf8->decode($out);
}

# One column of one worker's row.
sub relay_stat
{
	my ($node, $column, %opts) = @_;
	my $worker = $opts{worker} // 0;
	return $node->safe_psql($opts{db} // 'postgres',
		"SELECT $column FROM eventpipe.pg_stat_relay WHERE worker = $worker");
}

# Wait until pg_stat_relay shows $state for the worker (default 0); true if
# it did within the timeout (default 60 s).
sub wait_for_relay_state
{
	my ($node, $state, %opts) = @_;
	my $db      = $opts{db}      // 'postgres';
	my $worker  = $opts{worker}  // 0;
	my $timeout = $opts{timeout} // 60;
	my $last    = '';
	my $ok      = wait_until(
		sub {
			my ($ret, $out, $err) = $node->psql($db,
				"SELECT state FROM eventpipe.pg_stat_relay WHERE worker = $worker"
			);
			$last = $ret == 0 ? $out : "(error: $err)";
			return $ret == 0 && $out eq $state;
		},
		$timeout);
	diag "relay worker $worker: state is \"$last\", not \"$state\""
	  unless $ok;
	return $ok;
}

# Number of rows in the outbox of $db.
sub outbox_count
{
	my ($node, $db) = @_;
	return $node->safe_psql($db // 'postgres',
		'SELECT count(*) FROM eventpipe.outbox');
}

# ------------------------------------------------------------ publishing ----

sub sql_quote
{
	my ($s) = @_;
	return 'NULL' unless defined $s;
	$s =~ s/'/''/g;
	return "'$s'";
}

# A Perl structure as JSON text (ASCII, \u escapes, sorted keys).
sub json_text
{
	my ($v) = @_;
	return $json_out->encode($v);
}

# The statement publishing one event.  $ev: topic, key (undef: none),
# payload (Perl structure, or raw JSON text in payload_json), headers (hash,
# optional), event_type (optional).  The statement prints the event id and
# the payload's jsonb text, which run_publish_script() reads back.
sub publish_sql
{
	my ($ev) = @_;
	my $payload =
	  defined $ev->{payload_json} ? $ev->{payload_json} : json_text($ev->{payload});
	my $headers =
	  defined $ev->{headers} ? sql_quote(json_text($ev->{headers})) . '::jsonb' : 'NULL';
	return sprintf(
		"SELECT eventpipe.publish(%s, %s, %s::jsonb, %s, %s), %s::jsonb::text;\n",
		sql_quote($ev->{topic}), sql_quote($ev->{key}),
		sql_quote($payload),     $headers,
		sql_quote($ev->{event_type}), sql_quote($payload));
}

# Run a script whose publish statements (from publish_sql) were made for
# @$events, in that order; sets each event's id and value_text (the jsonb
# text of its payload, as the relay must send it).
sub run_publish_script
{
	my ($node, $db, $sql, $events) = @_;
	my $out = decode('UTF-8',
		$node->safe_psql($db,
			encode('UTF-8', "SET client_encoding = 'UTF8';\n" . $sql)));
	my @lines = grep { $_ ne '' } split /\n/, $out;
	croak sprintf("publish script printed %d lines for %d events",
		scalar @lines, scalar @$events)
	  unless @lines == @$events;
	for my $i (0 .. $#lines)
	{
		my ($id, $text) = $lines[$i] =~ /^([0-9a-f-]{36})\|(.*)$/s
		  or croak "unexpected publish output: $lines[$i]";
		$events->[$i]{id}         = $id;
		$events->[$i]{value_text} = $text;
	}
	return $events;
}

# ---------------------------------------------------------------- kcat ----

# run_kcat([arguments], stdin => \$text, timeout => 60): run kcat; returns
# (exit ok, stdout, stderr).
sub run_kcat
{
	my ($args, %o) = @_;
	my ($out, $err) = ('', '');
	my $ok = eval {
		IPC::Run::run([ 'kcat', @$args ],
			'<', $o{stdin} // \undef, '>', \$out, '2>', \$err,
			IPC::Run::timeout($o{timeout} // 60));
	};
	$err .= $@ if $@;
	return ($ok ? 1 : 0, $out, $err);
}

# read_topic($bootstrap, $topic, fast => 0, timeout => 60): everything now
# in the topic, from the beginning, as hashes: topic, partition, offset, key
# (undef for a null key), payload (the value as text, undef for null),
# header_list ([name, value] pairs in order), headers (name => value; a
# repeated name keeps the last), ce_id (undef without one), value (payload
# decoded as JSON, undef if it is not JSON).  Each partition's messages come
# in offset order.  Returns undef when kcat fails, e.g. when there is no
# such topic yet (noting why, unless quiet => 1).
#
# The default reads kcat's JSON (-J): exact, also for headers, and about
# 0.15 ms a message.  fast => 1 is for topics of tens of thousands: key and
# payload are exact (read by their lengths) but left as bytes and the payload
# is not decoded (value is undef); headers are parsed from kcat's
# "name=value,..." list, so a header value must hold no ',' nor newline.
# kcat_options => [...] adds kcat arguments, e.g. ['-X',
# 'isolation.level=read_uncommitted'] to see the messages of aborted
# transactions too (librdkafka's default, so kcat's, is read_committed).
sub read_topic
{
	my ($bootstrap, $topic, %o) = @_;
	my @format =
	  $o{fast}
	  ? ('-f', "%p %o %K %S\n%k%s%h\n")
	  : ('-J');
	my ($ok, $out, $err) = run_kcat(
		[ '-C', '-b', $bootstrap, '-t', $topic, @format, '-e', '-o', 'beginning', '-q', '-m', '10',
			@{ $o{kcat_options} // [] } ],
		timeout => $o{timeout} // 60);
	unless ($ok)
	{
		note "kcat could not read $topic: $err" unless $o{quiet};
		return undef;
	}
	my $msgs = $o{fast} ? _parse_kcat_lengths($out, $topic) : _parse_kcat_json($out);
	for my $m (@$msgs)
	{
		$m->{headers} = { map { $_->[0] => $_->[1] } @{ $m->{header_list} } };
		$m->{ce_id} = $m->{headers}{ce_id};
	}
	return $msgs;
}

sub _parse_kcat_json
{
	my ($out) = @_;
	my @msgs;
	for my $line (split /\n/, $out)
	{
		next if $line eq '';
		my $m = $json_utf8->decode($line);
		my @h = @{ $m->{headers} // [] };
		my @pairs;
		push @pairs, [ splice(@h, 0, 2) ] while @h;
		$m->{header_list} = \@pairs;
		$m->{value} =
		  defined $m->{payload}
		  ? eval { $json_chars->allow_nonref->decode($m->{payload}) }
		  : undef;
		push @msgs, $m;
	}
	return \@msgs;
}

# Output of -f "%p %o %K %S\n%k%s%h\n": a line of partition, offset, key
# length and payload length (-1: null), then that many bytes of key and
# payload, then the headers up to the end of the line.
sub _parse_kcat_lengths
{
	my ($out, $topic) = @_;
	my @msgs;
	my $pos = 0;
	while ($pos < length $out)
	{
		my $eol = index($out, "\n", $pos);
		my ($p, $off, $klen, $vlen) =
		  $eol >= 0 ? substr($out, $pos, $eol - $pos) =~ /^(\d+) (\d+) (-?\d+) (-?\d+)$/ : ();
		croak "unexpected kcat output for $topic at byte $pos" unless defined $vlen;
		$pos = $eol + 1;
		my $key = $klen >= 0 ? substr($out, $pos, $klen) : undef;
		$pos += $klen if $klen > 0;
		my $payload = $vlen >= 0 ? substr($out, $pos, $vlen) : undef;
		$pos += $vlen if $vlen > 0;
		$eol = index($out, "\n", $pos);
		croak "unexpected kcat output for $topic at byte $pos" if $eol < 0;
		my $headers = substr($out, $pos, $eol - $pos);
		$pos = $eol + 1;
		push @msgs, {
			topic       => $topic,
			partition   => $p,
			offset      => $off,
			key         => $key,
			payload     => $payload,
			header_list => [ map { [ split /=/, $_, 2 ] } split /,/, $headers ],
			value       => undef
		};
	}
	return \@msgs;
}

# consume_until($bootstrap, $topic, sub { my ($msgs) = @_; ... }, $timeout):
# read the topic again and again until the callback is true on all its
# messages or the timeout (default 90 s) passes.  Returns the messages of
# the last read (an empty list if the topic could not be read).
sub consume_until
{
	my ($bootstrap, $topic, $done, $timeout) = @_;
	$timeout //= 90;
	my $deadline = time() + $timeout;
	my $msgs     = [];
	while (1)
	{
		my $read = read_topic($bootstrap, $topic, quiet => 1);
		$msgs = $read if defined $read;
		return $msgs if defined $read && $done->($msgs);
		if (time() > $deadline)
		{
			diag "gave up reading topic $topic after ${timeout}s: "
			  . scalar(@$msgs)
			  . " messages";
			return $msgs;
		}
		usleep(250_000);
	}
}

# Read until at least $expected messages are in the topic.
sub consume_all
{
	my ($bootstrap, $topic, $expected, $timeout) = @_;
	return consume_until($bootstrap, $topic, sub { @{ $_[0] } >= $expected },
		$timeout);
}

# Read until a message with each of these ce_ids is in the topic.
sub consume_ids
{
	my ($bootstrap, $topic, $ids, $timeout) = @_;
	return consume_until(
		$bootstrap, $topic,
		sub {
			my %seen = map { ($_->{ce_id} // '') => 1 } @{ $_[0] };
			return !grep { !$seen{$_} } @$ids;
		},
		$timeout);
}

# ids_on_topic($bootstrap, $topic, \@ids, $timeout): true once a message
# with each of these ce_ids is on the topic, false if one is still missing
# at the timeout (consume_ids returns the messages, true either way).
sub ids_on_topic
{
	my ($bootstrap, $topic, $ids, $timeout) = @_;
	my $by = by_ce_id(consume_ids($bootstrap, $topic, $ids, $timeout));
	return !grep { !$by->{$_} } @$ids;
}

# Messages grouped by ce_id: { id => [messages...] }.
sub by_ce_id
{
	my ($msgs) = @_;
	my %by;
	push @{ $by{ $_->{ce_id} // '(none)' } }, $_ for @$msgs;
	return \%by;
}

# check_delivered($bootstrap, $topic, \@events, $label, %opts): wait until
# every event (from run_publish_script) is on the topic, then test that
#  - each arrived (by ce_id), with its key and its value byte for byte;
#  - it arrived once (with allow_duplicates, extra copies are only noted);
#  - with only => 1 (the default), the topic holds nothing else;
#  - with seq => sub { $msg -> number within its key }, per-key order holds.
# Returns the messages read.
sub check_delivered
{
	my ($bootstrap, $topic, $events, $label, %opts) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my @ids  = map { $_->{id} } @$events;
	my %ev   = map { $_->{id} => $_ } @$events;
	my $msgs = consume_ids($bootstrap, $topic, \@ids, $opts{timeout} // 120);
	my $by   = by_ce_id($msgs);

	my @missing = grep { !$by->{$_} } @ids;
	is(scalar @missing, 0, "$label: all " . scalar(@ids) . ' events arrived')
	  or diag scalar(@missing) . " missing, e.g. $missing[0]";

	my @copies = grep { @{ $by->{$_} } > 1 } grep { $by->{$_} } @ids;
	my $extra = 0;
	$extra += @{ $by->{$_} } - 1 for @copies;
	if ($opts{allow_duplicates})
	{
		note "$label: $extra duplicate messages ("
		  . scalar(@copies)
		  . ' events arrived more than once)';
	}
	else
	{
		is(scalar @copies, 0, "$label: no event arrived twice")
		  or diag "$extra duplicate messages";
	}

	if ($opts{only} // 1)
	{
		my @foreign = grep { !$ev{$_} } keys %$by;
		is(scalar @foreign, 0, "$label: no other event is on $topic")
		  or diag "unexpected ce_ids: @foreign";
	}

	my @wrong;
	for my $m (@$msgs)
	{
		my $e = $ev{ $m->{ce_id} // '' } or next;
		push @wrong, "$e->{id}: key " . ($m->{key} // 'null')
		  if (defined $e->{key} xor defined $m->{key})
		  || (defined $e->{key} && $e->{key} ne $m->{key});
		push @wrong, "$e->{id}: value " . ($m->{payload} // 'null')
		  if ($m->{payload} // '') ne $e->{value_text};
	}
	is(scalar @wrong, 0, "$label: keys and values are the published ones")
	  or diag join("\n", @wrong[ 0 .. ($#wrong < 4 ? $#wrong : 4) ]);

	if ($opts{seq})
	{
		my @mine = grep { $ev{ $_->{ce_id} // '' } } @$msgs;
		my @order = check_key_order(\@mine, $opts{seq},
			allow_duplicates => $opts{allow_duplicates});
		is(scalar @order, 0, "$label: each key's events arrived in publish order")
		  or diag join("\n", @order[ 0 .. ($#order < 4 ? $#order : 4) ]);
	}
	return $msgs;
}

# Per-key order: check_key_order(\@msgs, $seq_of, allow_duplicates => 0,
# gaps => 0, key_of => sub { $_[0]{key} }).  $seq_of->($msg) gives the
# message's number within its key (or undef to ignore the message).  Walks
# the messages in partition/offset order and returns a list of problems:
#  - a key seen in two partitions;
#  - a number that is not the next one expected: without gaps, the numbers
#    of a key are consecutive from the smallest among @$msgs; with gaps
#    (where missing messages are checked by the caller), they only increase;
#  - without allow_duplicates, a number seen again; with it, a number
#    already seen is skipped (a re-sent run), but first occurrences must
#    still come in order.
# key_of gives the key to group by (default: the message's key, null keys
# together).
sub check_key_order
{
	my ($msgs, $seq_of, %opts) = @_;
	my $key_of = $opts{key_of} // sub { $_[0]{key} // '(null)' };
	my (%partition, %next, %seen, @problems);
	my @numbered;
	for my $m (@$msgs)
	{
		my $seq = $seq_of->($m);
		next unless defined $seq;
		my $key = $key_of->($m);
		push @numbered, [ $m, $key, $seq ];
		$next{$key} = $seq
		  if !$opts{gaps} && (!defined $next{$key} || $seq < $next{$key});
	}
	for my $n (sort { $a->[0]{partition} <=> $b->[0]{partition} || $a->[0]{offset} <=> $b->[0]{offset} }
		@numbered)
	{
		my ($m, $key, $seq) = @$n;
		$partition{$key} //= $m->{partition};
		push @problems,
		  "key $key in partitions $partition{$key} and $m->{partition}"
		  if $partition{$key} != $m->{partition};
		next if $opts{allow_duplicates} && $seen{$key}{$seq}++;
		my $want = $next{$key};
		if (!defined $want || ($opts{gaps} ? $seq >= $want : $seq == $want))
		{
			$next{$key} = $seq + 1;
		}
		else
		{
			push @problems,
			  "key $key: event $seq at partition $m->{partition} offset $m->{offset}, expected "
			  . ($opts{gaps} ? "$want or later" : $want);
			$next{$key} = $seq + 1 if $seq > $want;
		}
	}
	return @problems;
}

1;

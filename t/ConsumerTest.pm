# t/ConsumerTest.pm: helpers of the consumer's TAP suites (t/31x).
#
# The suites produce events to Kafka with kcat (the independent client),
# let eventpipe's consumer worker apply them to metrics tables, and count
# afterwards: the tables must hold exactly the sums computed here, in Perl,
# from the events produced.
#
#   ensure_topic($bootstrap, $topic)      the topic exists (auto-created, or
#                                         made with partitions => N)
#   make_events(prefix => .., count => ..)
#                                         deterministic LikeChanged /
#                                         ProductViewed / PaymentCompleted
#                                         events (some to be sent with
#                                         CloudEvents headers, some with the
#                                         type and id in the payload only)
#   event_message($ev)                    its Kafka message {key, value, headers}
#   produce_events / produce_messages / produce_with_headers / produce_file
#                                         kcat -P, checked by end offsets
#   topic_positions($bootstrap, $topic)   key => [[partition, offset], ...]
#   metrics_sql / subscribe_sql / start_subscription
#                                         the target tables; a subscription,
#                                         its rules and handlers in one
#                                         transaction; its worker started
#   expected_metrics(\@events, ...)       what the tables must hold
#   check_product_metrics / check_customer_metrics
#                                         exact comparison (amounts in cents)
#   consumer_stats / consumer_stat / consumer_pid
#                                         worker 0 of each subscription
#   consumer_workers($node, $db, $sub)    every worker's row
#   db_offsets / wait_caught_up           the offsets stored in the database
#                                         reach the topics' end offsets
#   crash_lines($node, $offset)           crashes in the server log since
#   stop_node($node)                      a fast shutdown must work (one test)
package ConsumerTest;

use strict;
use warnings;

use Carp;
use Exporter qw(import);
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

use EventpipeTest;
use FaultTest qw(end_offsets log_matches partition_leaders);

our @EXPORT = qw(
  ensure_topic
  make_events event_message sum_events
  produce_events produce_messages produce_with_headers produce_file
  topic_positions topic_event_ids total_end_offset
  metrics_sql product_rules_sql subscribe_sql start_subscription
  expected_metrics check_product_metrics check_customer_metrics
  consumer_stats consumer_stat consumer_pid wait_consumer_pid consumer_workers
  db_offsets caught_up wait_caught_up
  crash_lines stop_node PRODUCT_TYPES ledger_ids_sql
);

use constant PRODUCT_TYPES => qw(ProductViewed LikeChanged PaymentCompleted);

my $json = JSON::PP->new->utf8;

# Partitions of a topic: the brokers of scripts/kafka auto-create topics
# with num.partitions=3; ensure_topic() notes the topics made with more.
my $partitions = 3;
my %topic_partitions;

sub _partitions_of
{
	my ($topic) = @_;
	return $topic_partitions{$topic} // $partitions;
}

# -------------------------------------------------------------- topics ----

# Make $topic exist (a metadata request auto-creates it) and wait until its
# partitions (partitions => N: that many, default 3) have leaders, so that a
# consumer subscribing to it finds it.
sub ensure_topic
{
	my ($bootstrap, $topic, %o) = @_;
	$topic_partitions{$topic} = $o{partitions} if $o{partitions};
	my $ok = wait_until(
		sub {
			my $leaders = partition_leaders($bootstrap, $topic);
			return keys %$leaders == _partitions_of($topic) && !grep { $_ == -1 } values %$leaders;
		},
		60);
	croak "topic $topic was not created" unless $ok;
	return 1;
}

# Sum of the end offsets of $topic's partitions: how many messages it holds.
sub total_end_offset
{
	my ($bootstrap, $topic) = @_;
	my $end = end_offsets($bootstrap, $topic, _partitions_of($topic));
	croak "kcat -Q gave no end offsets for $topic" unless keys %$end == _partitions_of($topic);
	my $sum = 0;
	$sum += $_ for values %$end;
	return $sum;
}

# ------------------------------------------------------------- events ----

# A version 7 UUID, as eventpipe's own ce_id: seven events per millisecond
# of a fixed time, so that hundreds share a 100-ms bucket of the ledger's
# runs; the seed keeps the ids of two calls apart.
sub uuid7
{
	my ($seed, $i) = @_;
	my $ms = 1733655948000 + int($i / 7);
	return sprintf('%08x-%04x-7%03x-%x%03x-%012x',
		$ms >> 16, $ms & 0xffff, $i & 0xfff, 8 + $i % 4, ($i >> 12) & 0xfff, $seed * 1_000_000 + $i);
}

# SQL: how many event ids the dedup ledger holds, in rows and in runs; of
# one subscription when named.
sub ledger_ids_sql
{
	my ($sub) = @_;
	my $where = defined $sub
	  ? "WHERE subscription_id = (SELECT id FROM eventpipe.subscriptions WHERE name = '$sub')"
	  : '';
	return "SELECT (SELECT count(*) FROM eventpipe.event_handled $where)"
	  . " + (SELECT coalesce(sum(length(ids) / 16), 0) FROM eventpipe.event_handled_runs $where)";
}

# make_events(prefix => 'a', count => 3000, headered => 600, products => 12,
#             customers => 10, unmatched => 0, seed => 1):
# $count events, deterministic for a given seed: 40 % ProductViewed, 30 %
# LikeChanged (delta +1, one in five -1), 30 % PaymentCompleted (an amount
# with 0 to 2 decimals, a customer id).  The first $headered of them (spread
# evenly) are to be sent with ce_id/ce_type headers and carry neither type
# nor id in the payload (one in four carries a misleading payload "type",
# which the header must override); the others carry "type" and "event_id" in
# the payload and no headers.  Then $unmatched events of type CartAbandoned
# (no rule matches them), without headers.  ids => 'uuid7' gives the events
# without headers version 7 UUIDs (uuid7()) instead of "<prefix>-<n>".
# Each event: {id, type, product, key, headered, amount_cents, customer,
# delta, decoy}.
sub make_events
{
	my (%o) = @_;
	my $prefix    = $o{prefix}    // 'ev';
	my $count     = $o{count}     // 1000;
	my $headered  = $o{headered}  // 0;
	my $products  = $o{products}  // 12;
	my $customers = $o{customers} // 10;
	my $ids       = $o{ids}       // 'text';
	srand($o{seed} // 1);
	my @events;
	my $every = $headered ? $count / $headered : 0;
	my $next_headered = 0;
	for my $i (0 .. $count - 1)
	{
		my $r = rand();
		my $type =
		    $r < 0.4 ? 'ProductViewed'
		  : $r < 0.7 ? 'LikeChanged'
		  :            'PaymentCompleted';
		my $product = 'p' . int(rand($products));
		my $ev = {
			id      => $ids eq 'uuid7' ? uuid7($o{seed} // 1, $i) : "$prefix-$i",
			type    => $type,
			product => $product,
			key     => $product,
			headered => 0,
		};
		if ($headered && $i >= $next_headered && $next_headered < $count)
		{
			$ev->{headered} = 1;
			$ev->{id}       = "$prefix-h-$i";
			$ev->{decoy}    = ($i % 4 == 0);
			$next_headered += $every;
		}
		if ($type eq 'LikeChanged')
		{
			$ev->{delta} = rand() < 0.2 ? -1 : 1;
		}
		elsif ($type eq 'PaymentCompleted')
		{
			my $cents = 1 + int(rand(99999));
			my $shape = int(rand(3));    # 0: 2 decimals, 1: 1 decimal, 2: integer
			$cents = int($cents / 10) * 10 + 10 if $shape == 1;
			$cents = int($cents / 100) * 100 + 100 if $shape == 2;
			$ev->{amount_cents} = $cents;
			$ev->{customer}     = 1000 + int(rand($customers));
		}
		push @events, $ev;
	}
	for my $j (0 .. ($o{unmatched} // 0) - 1)
	{
		push @events, {
			id       => "$prefix-u-$j",
			type     => 'CartAbandoned',
			product  => 'p' . ($j % $products),
			key      => 'p' . ($j % $products),
			headered => 0,
		};
	}
	return \@events;
}

# Cents as a JSON number: 1234 -> 12.34, 1230 -> 12.3, 1200 -> 12.
sub _amount_json
{
	my ($cents) = @_;
	return sprintf('%d', $cents / 100) if $cents % 100 == 0;
	return sprintf('%d.%d', int($cents / 100), ($cents % 100) / 10) if $cents % 10 == 0;
	return sprintf('%d.%02d', int($cents / 100), $cents % 100);
}

# The Kafka message of an event: {key, value (bytes), headers ([[name,
# value], ...], empty for an event without headers)}.  $pad adds a "pad"
# field of that many characters.
sub event_message
{
	my ($ev, %o) = @_;
	my @fields;
	if ($ev->{headered})
	{
		push @fields, '"type":"Misleading"' if $ev->{decoy};
	}
	else
	{
		push @fields, qq{"type":"$ev->{type}"}, qq{"event_id":"$ev->{id}"};
	}
	push @fields, qq{"product_id":"$ev->{product}"};
	push @fields, qq{"delta":$ev->{delta}} if defined $ev->{delta};
	if (defined $ev->{amount_cents})
	{
		push @fields, '"amount":' . _amount_json($ev->{amount_cents});
		push @fields, qq{"customer_id":$ev->{customer}};
		push @fields, '"currency":"EUR"';
	}
	push @fields, '"pad":"' . ('x' x $o{pad}) . '"' if $o{pad};
	my $value = '{' . join(',', @fields) . '}';
	my @headers =
	  $ev->{headered}
	  ? ([ 'ce_specversion', '1.0' ], [ 'ce_id', $ev->{id} ], [ 'ce_type', $ev->{type} ],
		[ 'content-type', 'application/json' ])
	  : ();
	return { key => $ev->{key}, value => $value, headers => \@headers };
}

# Events of @$events whose type is one of @types (all when none given).
sub sum_events
{
	my ($events, @types) = @_;
	my %t = map { $_ => 1 } @types;
	return scalar grep { !@types || $t{ $_->{type} } } @$events;
}

# ----------------------------------------------------------- producing ----

my $produce_dir;

sub _tmpfile
{
	my ($name) = @_;
	$produce_dir //= PostgreSQL::Test::Utils::tempdir('produce');
	return "$produce_dir/$name";
}

sub _kcat_common
{
	my ($bootstrap, $topic) = @_;
	return (
		'-P', '-b', $bootstrap, '-t', $topic, '-q',
		'-X', 'enable.idempotence=true', '-X', 'linger.ms=0');
}

# Run kcat; croak with its stderr when it fails.
sub _run_kcat
{
	my ($args) = @_;
	my ($ok, undef, $err) = run_kcat($args, timeout => 120);
	croak "kcat failed (@$args): $err" unless $ok;
	return;
}

# Messages without headers ({key, value}; no tab or newline in them),
# produced by one kcat from a file.  With tombstones => 1, a message whose
# value is undef is a tombstone (a null value; kcat -Z: no other value may
# then be empty).  Checks that the topic grew by exactly their number.
sub produce_messages
{
	my ($bootstrap, $topic, $msgs, %o) = @_;
	return 0 unless @$msgs;
	my $before = total_end_offset($bootstrap, $topic);
	my $file = _tmpfile("plain-$topic-" . time() . '.txt');
	open my $fh, '>:raw', $file or croak "cannot write $file: $!";
	for my $m (@$msgs)
	{
		my $value = $m->{value} // '';
		croak "message of key $m->{key} holds a tab or newline"
		  if "$m->{key}$value" =~ /[\t\n]/;
		croak "message of key $m->{key}: a null value needs tombstones => 1"
		  if !defined $m->{value} && !$o{tombstones};
		croak "message of key $m->{key}: an empty value would be sent as a tombstone"
		  if defined $m->{value} && $value eq '' && $o{tombstones};
		print $fh "$m->{key}\t$value\n";
	}
	close $fh or croak $!;
	_run_kcat([ _kcat_common($bootstrap, $topic), '-K', '\t', ($o{tombstones} ? '-Z' : ()), '-l', $file ]);
	_check_grown($bootstrap, $topic, $before, scalar @$msgs);
	return scalar @$msgs;
}

# Messages with headers ({key, value, headers => [[name, value], ...]}):
# kcat sets the same headers on every message of a run, so each message is
# one kcat run (-H per header), $parallel of them at a time.
sub produce_with_headers
{
	my ($bootstrap, $topic, $msgs, %o) = @_;
	return 0 unless @$msgs;
	my $parallel = $o{parallel} // 4;
	my $before = total_end_offset($bootstrap, $topic);
	my @running;
	my $reap = sub {
		my $r = shift @running;
		my $ok = eval { $r->{h}->finish };
		croak "kcat failed for key $r->{key}: " . ($@ || ${ $r->{err} }) unless $ok;
	};
	for my $m (@$msgs)
	{
		croak "message of key $m->{key} holds a tab or newline"
		  if "$m->{key}$m->{value}" =~ /[\t\n]/;
		$reap->() while @running >= $parallel;
		my $in = "$m->{key}\t$m->{value}\n";
		my ($out, $err) = ('', '');
		my $h = IPC::Run::start(
			[
				'kcat', _kcat_common($bootstrap, $topic), '-K', '\t',
				map { ('-H', "$_->[0]=$_->[1]") } @{ $m->{headers} }
			],
			'<', \$in, '>', \$out, '2>', \$err, IPC::Run::timeout(120));
		push @running, { h => $h, err => \$err, key => $m->{key} };
	}
	$reap->() while @running;
	_check_grown($bootstrap, $topic, $before, scalar @$msgs);
	return scalar @$msgs;
}

# One message whose value is the bytes $value (any size, any bytes: kcat
# sends a whole file as one message), key $key, headers as above.
sub produce_file
{
	my ($bootstrap, $topic, $key, $value, %o) = @_;
	my $before = total_end_offset($bootstrap, $topic);
	my $file = _tmpfile("value-$topic-$key.bin");
	open my $fh, '>:raw', $file or croak "cannot write $file: $!";
	print $fh $value;
	close $fh or croak $!;
	_run_kcat(
		[
			_kcat_common($bootstrap, $topic), '-k', $key,
			(map { ('-H', "$_->[0]=$_->[1]") } @{ $o{headers} // [] }), $file
		]);
	_check_grown($bootstrap, $topic, $before, 1);
	return 1;
}

sub _check_grown
{
	my ($bootstrap, $topic, $before, $n) = @_;
	my $after = total_end_offset($bootstrap, $topic);
	croak "kcat produced " . ($after - $before) . " messages to $topic, not $n"
	  unless $after - $before == $n;
	return;
}

# Events, in their order within each kind: first those with headers, one
# kcat each (slow: a few milliseconds apiece), then those without headers,
# all at once from a file — so that a test can strike while the consumer is
# busy with the bulk that arrived last.  Returns how many.
sub produce_events
{
	my ($bootstrap, $topic, $events, %o) = @_;
	my @with  = map { event_message($_) } grep { $_->{headered} } @$events;
	my @plain = map { event_message($_) } grep { !$_->{headered} } @$events;
	my $n = produce_with_headers($bootstrap, $topic, \@with, %o);
	$n += produce_messages($bootstrap, $topic, \@plain);
	return $n;
}

# The whole of $topic (read_topic, fast); croaks when kcat cannot read it.
sub _read_all
{
	my ($bootstrap, $topic) = @_;
	return read_topic($bootstrap, $topic, fast => 1, timeout => 120)
	  // croak "kcat could not read $topic";
}

# Where each key's messages are: key => [[partition, offset], ...] in
# partition/offset order (a null key counts as '').
sub topic_positions
{
	my ($bootstrap, $topic) = @_;
	my %pos;
	for my $m (sort { $a->{partition} <=> $b->{partition} || $a->{offset} <=> $b->{offset} }
		@{ _read_all($bootstrap, $topic) })
	{
		push @{ $pos{ $m->{key} // '' } }, [ $m->{partition}, $m->{offset} ];
	}
	return \%pos;
}

# Which event each message of $topic is: "partition/offset" => its ce_id
# header, else its payload's "event_id" (undef for neither).
sub topic_event_ids
{
	my ($bootstrap, $topic) = @_;
	my %ids;
	for my $m (@{ _read_all($bootstrap, $topic) })
	{
		my $id = $m->{ce_id};
		($id) = ($m->{payload} // '') =~ /"event_id":"([^"]*)"/ unless defined $id;
		$ids{"$m->{partition}/$m->{offset}"} = $id;
	}
	return \%ids;
}

# ------------------------------------------------------------- targets ----

# The target tables (and the payments ledger a handler fills), in a schema
# that the rules address by name.
sub metrics_sql
{
	return q{
CREATE TABLE product_metrics (
    product_id   text PRIMARY KEY,
    sales_count  bigint NOT NULL DEFAULT 0,
    sales_amount numeric NOT NULL DEFAULT 0,
    likes        bigint NOT NULL DEFAULT 0,
    views        bigint NOT NULL DEFAULT 0);
CREATE TABLE customer_metrics (
    customer_id bigint PRIMARY KEY,
    payments    integer NOT NULL DEFAULT 0,
    spent       numeric(14,2) NOT NULL DEFAULT 0);
};
}

# The statements adding the rules of the product metrics (and, with
# customers => 1, the customer metrics) to subscription $sub; the target
# table is $o{table} (default product_metrics).  Put them in the
# transaction of subscribe() when events are waiting already: a worker
# could otherwise consume some before the rules exist.
sub product_rules_sql
{
	my ($sub, %o) = @_;
	my $table = $o{table} // 'product_metrics';
	my $s = sql_quote($sub);
	my $sql = qq{
SELECT eventpipe.add_metric($s, 'PaymentCompleted', '$table', 'product_id', 'sales_count');
SELECT eventpipe.add_metric($s, 'PaymentCompleted', '$table', 'product_id', 'sales_amount', 'amount');
SELECT eventpipe.add_metric($s, 'LikeChanged', '$table', 'product_id', 'likes', 'delta');
SELECT eventpipe.add_metric($s, 'ProductViewed', '$table', 'product_id', 'views');
};
	$sql .= qq{
SELECT eventpipe.add_metric($s, 'PaymentCompleted', 'customer_metrics', 'customer_id', 'payments');
SELECT eventpipe.add_metric($s, 'PaymentCompleted', 'customer_metrics', 'customer_id', 'spent', 'amount');
} if $o{customers};
	return $sql;
}

# subscribe_sql($sub, [topics], subscribe => "more named arguments",
#   customers => 1, table => ..., handlers => [[type, 'f(jsonb, jsonb)'],
#   ...]): one transaction creating the subscription, its product rules and
# its handlers.
sub subscribe_sql
{
	my ($sub, $topics, %o) = @_;
	my $args = join(', ',
		sql_quote($sub),
		'ARRAY[' . join(', ', map { sql_quote($_) } @$topics) . ']::text[]',
		$o{subscribe} // ());
	my $handlers = join('',
		map { sprintf("SELECT eventpipe.add_handler(%s, %s, %s);\n", sql_quote($sub), sql_quote($_->[0]), sql_quote($_->[1])) }
		  @{ $o{handlers} // [] });
	return "BEGIN;\nSELECT eventpipe.subscribe($args);\n" . product_rules_sql($sub, %o) . $handlers . "COMMIT;\n";
}

# subscribe_sql() run in $db, then wait (30 s at most) for the worker: one
# test; returns its pid (0 if none came).
sub start_subscription
{
	my ($node, $db, $sub, $topics, %o) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	$node->safe_psql($db, subscribe_sql($sub, $topics, %o));
	my $pid = wait_consumer_pid($node, $db, $sub, timeout => 30);
	ok($pid, "subscription $sub: a consumer worker runs (pid $pid) without a restart");
	return $pid;
}

# expected_metrics(\@events, times => 1): {products => {p => {sales_count,
# sales_amount (cents), likes, views}}, customers => {c => {payments,
# spent (cents)}}}, each event counted $times times.  Several lists may be
# added up: expected_metrics([\@a, 2], [\@b, 1]) when the first argument is
# an array of pairs.
sub expected_metrics
{
	my (@lists) = @_;
	@lists = ([ $lists[0], 1 ]) if @lists == 1 && ref $lists[0] eq 'ARRAY' && ref $lists[0][0] eq 'HASH';
	my (%p, %c);
	for my $pair (@lists)
	{
		my ($events, $times) = @$pair;
		for my $ev (@$events)
		{
			my $t = $ev->{type};
			next unless grep { $_ eq $t } PRODUCT_TYPES;
			my $row = $p{ $ev->{product} } //=
			  { sales_count => 0, sales_amount => 0, likes => 0, views => 0 };
			if ($t eq 'ProductViewed') { $row->{views} += $times }
			elsif ($t eq 'LikeChanged') { $row->{likes} += $ev->{delta} * $times }
			else
			{
				$row->{sales_count}  += $times;
				$row->{sales_amount} += $ev->{amount_cents} * $times;
				my $crow = $c{ $ev->{customer} } //= { payments => 0, spent => 0 };
				$crow->{payments} += $times;
				$crow->{spent}    += $ev->{amount_cents} * $times;
			}
		}
	}
	return { products => \%p, customers => \%c };
}

# A numeric's text as exact cents, or undef if it is not a whole number of
# cents (e.g. 12.3400000001 from a sum in floating point).
sub _cents
{
	my ($text) = @_;
	return undef unless defined $text && $text =~ /^(-?)(\d+)(?:\.(\d*))?$/;
	my ($sign, $int, $frac) = ($1, $2, $3 // '');
	return undef if length($frac) > 2 && substr($frac, 2) =~ /[1-9]/;
	$frac = substr($frac . '00', 0, 2);
	return ($sign ? -1 : 1) * ($int * 100 + $frac);
}

# Compare rows (key => {column => value}) with the expected ones; columns in
# @$cents_cols are compared as exact cents.  One test; differences shown.
sub _check_rows
{
	my ($got, $want, $cols, $cents_cols, $label) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 2;
	my %is_cents = map { $_ => 1 } @$cents_cols;
	my @diff;
	for my $k (sort keys %$want)
	{
		my $g = $got->{$k};
		if (!$g) { push @diff, "$k: missing, expected " . $json->canonical->encode($want->{$k}); next }
		for my $c (@$cols)
		{
			my $gv = $is_cents{$c} ? _cents($g->{$c}) : $g->{$c};
			push @diff, "$k.$c = " . ($g->{$c} // 'NULL') . ", expected "
			  . ($is_cents{$c} ? sprintf('%.2f', $want->{$k}{$c} / 100) : $want->{$k}{$c})
			  unless defined $gv && $gv == $want->{$k}{$c};
		}
	}
	push @diff, "$_: unexpected row" for grep { !$want->{$_} } sort keys %$got;
	is(scalar @diff, 0, $label)
	  or diag(scalar(@diff) . " differences:\n" . join("\n", @diff[ 0 .. ($#diff < 14 ? $#diff : 14) ]));
	return !@diff;
}

sub _fetch_rows
{
	my ($node, $db, $sql, @cols) = @_;
	my $out = $node->safe_psql($db, $sql);
	my %rows;
	for my $line (split /\n/, $out)
	{
		my ($k, @v) = split /\|/, $line, -1;
		$rows{$k} = { map { $cols[$_] => ($v[$_] eq '' ? undef : $v[$_]) } 0 .. $#cols };
	}
	return \%rows;
}

# check_product_metrics($node, $db, $expected, $label, table => ...):
# the table equals $expected->{products} exactly.
sub check_product_metrics
{
	my ($node, $db, $expected, $label, %o) = @_;
	my $table = $o{table} // 'product_metrics';
	my @cols = qw(sales_count sales_amount likes views);
	my $got = _fetch_rows($node, $db,
		"SELECT product_id, sales_count, sales_amount, likes, views FROM $table", @cols);
	return _check_rows($got, $expected->{products}, \@cols, ['sales_amount'], $label);
}

sub check_customer_metrics
{
	my ($node, $db, $expected, $label) = @_;
	my @cols = qw(payments spent);
	my $got = _fetch_rows($node, $db,
		'SELECT customer_id, payments, spent FROM customer_metrics', @cols);
	return _check_rows($got, $expected->{customers}, \@cols, ['spent'], $label);
}

# ------------------------------------------------------------ consumer ----

# eventpipe.consumer_stats() as {subscription => the row of its worker 0}.
sub consumer_stats
{
	my ($node, $db) = @_;
	my $out = $node->safe_psql($db // 'postgres',
		q{SELECT coalesce(json_agg(s), '[]') FROM eventpipe.consumer_stats() AS s WHERE s.worker = 0});
	return { map { $_->{subscription} => $_ } @{ $json->decode($out) } };
}

# The rows of consumer_stats() of $sub's workers, by worker number.
sub consumer_workers
{
	my ($node, $db, $sub) = @_;
	my $out = $node->safe_psql($db,
		q{SELECT coalesce(json_agg(s ORDER BY s.worker), '[]') FROM eventpipe.consumer_stats() AS s
		   WHERE s.subscription = } . sql_quote($sub));
	return $json->decode($out);
}

sub consumer_stat
{
	my ($node, $db, $sub, $column) = @_;
	my $row = consumer_stats($node, $db)->{$sub};
	return $row ? $row->{$column} : undef;
}

# The pid of $sub's worker (0), 0 when none runs (or the query fails:
# during a crash-restart).
sub consumer_pid
{
	my ($node, $db, $sub) = @_;
	my ($ret, $out) = $node->psql($db,
		'SELECT coalesce(pid, 0) FROM eventpipe.consumer_stats() WHERE worker = 0 AND subscription = '
		  . sql_quote($sub));
	return $ret == 0 && $out =~ /^(\d+)$/ ? $1 : 0;
}

# Wait until a worker other than $not_pid runs for $sub; its pid, or 0.
sub wait_consumer_pid
{
	my ($node, $db, $sub, %o) = @_;
	my $pid = 0;
	wait_until(
		sub {
			$pid = consumer_pid($node, $db, $sub);
			return $pid > 0 && $pid != ($o{not} // 0);
		},
		$o{timeout} // 60);
	return $pid > 0 && $pid != ($o{not} // 0) ? $pid : 0;
}

# {partition => next_offset} stored in the database for $sub and $topic.
sub db_offsets
{
	my ($node, $db, $sub, $topic) = @_;
	my ($ret, $out) = $node->psql($db,
		'SELECT partition, next_offset FROM eventpipe.consumer_offsets WHERE subscription = '
		  . sql_quote($sub) . ' AND topic = ' . sql_quote($topic));
	return undef unless $ret == 0;
	return { map { split /\|/ } split /\n/, $out };
}

# True when, for each topic, the offsets stored for $sub have reached the
# topic's end offsets (a partition with no message needs no row).
sub caught_up
{
	my ($node, $db, $sub, $bootstrap, $topics) = @_;
	for my $topic (@$topics)
	{
		my $stored = db_offsets($node, $db, $sub, $topic) or return 0;
		my $end = end_offsets($bootstrap, $topic, _partitions_of($topic));
		return 0 unless keys %$end == _partitions_of($topic);
		for my $p (keys %$end)
		{
			return 0 unless ($stored->{$p} // 0) == $end->{$p};
		}
	}
	return 1;
}

# Wait (at most $timeout s, default 120) until $sub has caught up with its
# topics; on failure, say where it stands.
sub wait_caught_up
{
	my ($node, $db, $sub, $bootstrap, $topics, $timeout) = @_;
	my $ok = wait_until(sub { caught_up($node, $db, $sub, $bootstrap, $topics) }, $timeout // 120);
	unless ($ok)
	{
		for my $topic (@$topics)
		{
			my $stored = db_offsets($node, $db, $sub, $topic) // {};
			my $end = end_offsets($bootstrap, $topic, _partitions_of($topic));
			diag "$sub on $topic: stored offsets "
			  . join(' ', map { "$_:" . ($stored->{$_} // '-') } sort keys %$end)
			  . ', end offsets ' . join(' ', map { "$_:$end->{$_}" } sort keys %$end);
		}
		my $row = eval { consumer_stats($node, $db)->{$sub} };
		diag "consumer_stats: " . ($row ? $json->canonical->encode($row) : 'no row');
	}
	return $ok;
}

# Server log lines since $offset that show a crash (PANIC, a process ended
# by a signal, a crash-restart).  With exits => 1, also the background
# workers that exited with an error: where no worker was stopped on
# purpose, a worker that exits is one that failed (a crash loop in the
# making); a worker stopped with SIGTERM exits with code 1 too.
sub crash_lines
{
	my ($node, $offset, %o) = @_;
	my $re = qr/PANIC|terminated by signal|segmentation fault|server process .* was terminated|was terminated by exception/;
	$re = qr/$re|exited with exit code/ if $o{exits};
	return log_matches($node, $offset, $re);
}

# Stop the node in fast mode: one test, since a worker that cannot exit
# holds a fast shutdown up for ever; then in immediate mode if it did not
# stop (instead of the BAIL_OUT of a failed stop, which ends every test
# file of the run).
sub stop_node
{
	my ($node) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $ok = ok($node->stop('fast', fail_ok => 1), 'the server stops in fast mode');
	$node->stop('immediate') unless $ok;
	return $ok;
}

1;

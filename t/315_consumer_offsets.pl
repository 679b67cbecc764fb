# t/315_consumer_offsets.pl: where a consumer worker starts, and the offsets
# it tells Kafka.
#  (a) start_from 'latest': a partition starts at its end as of the first
#      assignment, and that start is stored then.  Events produced while the
#      worker is gone (killed before it applied anything) are applied when
#      it comes back — not skipped by seeking to the end once more — and
#      the events on the topic before the subscription never are.
#  (b) The offsets committed to Kafka for the consumer group are those
#      stored in the database: kcat, joining the group once the worker has
#      left it, reads exactly the messages from the database's offsets on.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use EventpipeTest;
use FaultTest qw(end_offsets);
use ConsumerTest;

my $kafka     = start_kafka();
my $bootstrap = $kafka->{bootstrap};
my $node      = new_node('main', bootstrap => $bootstrap);
my $db        = 'postgres';
my $t_late    = 't315.late';
my $t_tally   = 't315.tally';
ensure_topic($bootstrap, $_) for $t_late, $t_tally;
$node->safe_psql($db, 'CREATE EXTENSION eventpipe');
$node->safe_psql($db, metrics_sql() . 'CREATE TABLE tally_metrics (LIKE product_metrics INCLUDING ALL);');
my $log_start = log_position($node);

# ---- (a) start_from 'latest' ---------------------------------------------------

my $before = make_events(prefix => 'before', count => 300, products => 5, seed => 11);
produce_events($bootstrap, $t_late, $before);
my $pid = start_subscription($node, $db, 'late', [$t_late],
	subscribe => "start_from => 'latest', dedup_field => 'event_id'");
my $starts;
ok( wait_until(
		sub {
			$starts = db_offsets($node, $db, 'late', $t_late);
			return $starts && keys %$starts == 3;
		},
		60),
	'(a) each partition got a stored start at its first assignment, before any message');
is_deeply($starts, end_offsets($bootstrap, $t_late, 3), "(a) the starts are the partitions' ends");

# The worker dies before it applied anything; events arrive while it is gone
# (its successor joins the group only after the dead member's session
# timeout, seconds later).
kill 'KILL', $pid;
my $after = make_events(prefix => 'after', count => 600, products => 5, seed => 12);
produce_events($bootstrap, $t_late, $after);
ok(wait_consumer_pid($node, $db, 'late', not => $pid, timeout => 90), '(a) a worker runs again');
ok(wait_caught_up($node, $db, 'late', $bootstrap, [$t_late], 180), '(a) it caught up');
check_product_metrics($node, $db, expected_metrics($after),
	'(a) exactly the events produced while the worker was gone; none of those before the subscription');

# ---- (b) the offsets committed to Kafka ----------------------------------------

start_subscription($node, $db, 'tally', [$t_tally], table => 'tally_metrics');
my $tally = make_events(prefix => 'tally', count => 900, products => 7, seed => 13);
produce_events($bootstrap, $t_tally, $tally);
ok(wait_caught_up($node, $db, 'tally', $bootstrap, [$t_tally], 180), '(b) the worker caught up');
my $stored = db_offsets($node, $db, 'tally', $t_tally);

# The subscription goes (its stored offsets with it, kept above): the
# worker leaves consumer group "tally", which then has no member.  Events
# produced after that are past the offsets the database held.
$node->safe_psql($db, q{SELECT eventpipe.unsubscribe('tally')});
ok(wait_until(sub { consumer_pid($node, $db, 'tally') == 0 }, 30), '(b) the worker stopped');
my $later = make_events(prefix => 'later', count => 60, products => 7, seed => 14);
produce_events($bootstrap, $t_tally, $later);
my $end = end_offsets($bootstrap, $t_tally, 3);

# kcat joins group "tally": it starts where the group's committed offsets
# say (from the beginning if there were none), and must read exactly the
# messages past the offsets the database held.
my ($out, $err) = ('', '');
IPC::Run::run(
	[
		'kcat', '-b', $bootstrap, '-G', 'tally', '-e', '-q', '-f', "%p %o\n",
		'-X', 'auto.offset.reset=earliest', '-X', 'enable.auto.commit=false', $t_tally
	],
	'<', \undef, '>', \$out, '2>', \$err, IPC::Run::timeout(120))
  or die "kcat -G failed: $err";
my @read = sort { $a->[0] <=> $b->[0] || $a->[1] <=> $b->[1] } map { [ split / / ] } split /\n/, $out;
my @expected;
for my $p (sort keys %$end)
{
	push @expected, [ $p, $_ ] for ($stored->{$p} // 0) .. $end->{$p} - 1;
}
is(scalar @expected, 60, '(b) the events produced after the worker left are past the offsets stored');
is_deeply(\@read, \@expected,
	"(b) the group's committed offsets in Kafka are the database's: kcat in that group reads exactly the messages after them")
  or diag "stored: " . join(' ', map { "$_:$stored->{$_}" } sort keys %$stored) . "; kcat read $out";

my @crashes = crash_lines($node, $log_start);
my @unexpected = grep { !/signal 9/ } @crashes;
is(scalar @unexpected, 0, 'no crash but the kill') or diag join("\n", @unexpected);

$node->stop;
done_testing();

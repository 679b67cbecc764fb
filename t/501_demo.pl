# t/501_demo.pl: the README's first command, scripts/demo, runs in the test
# suite against the extension scripts/test installed (--no-build): the
# commerce stream with the broker killed and restarted, duplicates and
# malformed messages, the catalogue mirrored into a second cluster. It must
# exit 0 with every check of its report ok (the replica's products equal to
# the shop's among them) and its equality line: product_metrics equal,
# exactly and for every product, to the totals computed from the source
# tables. Then nothing it started may still run.
use strict;
use warnings;

use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Spec;
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;

my $repo = abs_path(dirname(abs_path(__FILE__)) . '/..');

# The pg_config of the PostgreSQL under test: $PG_CONFIG, else the first on
# PATH (scripts/test puts the server's bindir first).
my $pg_config = $ENV{PG_CONFIG};
unless (defined $pg_config)
{
	($pg_config) = grep { -x $_ } map { File::Spec->catfile($_, 'pg_config') } File::Spec->path;
}
BAIL_OUT('no pg_config: set PG_CONFIG or put the server bindir on PATH') unless $pg_config;

my $dir = PostgreSQL::Test::Utils::tempdir('demo');
my $out = '';
my $started = time;
my $ran = eval {
	IPC::Run::run([ "$repo/scripts/demo", '--no-build', '--dir', $dir ],
		'<', \undef, '>&', \$out, IPC::Run::timeout(900));
	1;
};
my $status = $ran ? $? >> 8 : "not finished: $@";
note "scripts/demo took " . (time - $started) . " s; its output:\n$out";

is($status, 0, 'scripts/demo exits 0');
like(
	$out,
	qr/^product_metrics check: PASS - equal to the totals computed from payments, product_likes and product_views, exactly, for (\d+) of \1 products$/m,
	'its report says product_metrics equals the source tables\' totals, for every product');
my @ok     = $out =~ /^  \[ok\] /mg;
my @failed = $out =~ /^  \[FAILED\] (.*)$/mg;
is(scalar @ok, 10,
	'its ten checks are ok (outbox, payments, views, likes, applied, duplicates, dead letters, unmatched, the mirrored catalogue, snapshots)')
  or diag "failed: @failed";
like($out, qr/^  re-sent [1-9]\d* events: /m, 'it re-sent delivered events as duplicates');
like($out, qr/^  kafka: killed node\(s\) 1 /m, 'it killed the broker');
like($out, qr/^  dead-lettered +4$/m, 'the consumer dead-lettered the four malformed messages');
like($out, qr/^  serving again at /m, 'the broker came back');

# Cleaned up: no PostgreSQL, no Kafka node left running.
ok(!-e "$dir/pgdata/postmaster.pid", 'PostgreSQL was stopped');
ok(!-e "$dir/replica-pgdata/postmaster.pid", 'the catalogue replica was stopped');
my $kafka_status = '';
IPC::Run::run([ "$repo/scripts/kafka", 'status', '--dir', "$dir/kafka" ],
	'<', \undef, '>', \$kafka_status, '2>', \my $ignored);
like($kafka_status, qr/state=stopped/, 'Kafka was stopped') or diag $kafka_status;
unlike($kafka_status, qr/state=running/, '... every node of it') or diag $kafka_status;

done_testing();

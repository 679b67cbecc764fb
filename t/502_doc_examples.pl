# t/502_doc_examples.pl: the SQL examples of the documentation run.
#
# A fenced ```sql block of README.md or docs/*.md whose previous line is
# exactly "<!-- runnable -->" is a runnable example.  For each file that has
# any, in order: a fresh node (new_node(): eventpipe preloaded, no Kafka),
# and one psql session as a superuser, with ON_ERROR_STOP, in database
# postgres, running the file's blocks in the order they appear.  If none of
# the file's blocks creates the extension, the session creates it first.
# Each block is followed by an \echo marker, so the test knows how many
# blocks really ran; it fails if psql fails, if a marker is missing, or if
# fewer blocks than the documentation holds today were found (so that it
# cannot pass by finding none).
use strict;
use warnings;

use Cwd qw(abs_path);
use File::Basename qw(dirname);
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use EventpipeTest;

# Runnable blocks in README.md and docs/*.md when this test was written:
# lower it only when examples are deliberately removed.
my $min_blocks = 37;

my $root = abs_path(dirname(abs_path(__FILE__)) . '/..');
my @files = ("$root/README.md", sort glob("$root/docs/*.md"));

# The runnable blocks of one file, in order.
sub runnable_blocks
{
	my ($path) = @_;
	my @lines = split /\n/, slurp_file($path), -1;
	my (@blocks, $current, $in_fence, $marked);
	for my $line (@lines)
	{
		if ($in_fence)
		{
			if ($line =~ /^```\s*$/)
			{
				push @blocks, $current if defined $current;
				undef $current;
				$in_fence = 0;
			}
			elsif (defined $current)
			{
				$current .= "$line\n";
			}
			next;
		}
		if ($line =~ /^```/)
		{
			$in_fence = 1;
			if ($marked)
			{
				die "$path: a runnable mark before a block that is not ```sql: $line\n"
				  unless $line =~ /^```sql\s*$/;
				$current = '';
			}
		}
		$marked = ($line =~ /^<!--\s*runnable\s*-->\s*$/);
	}
	die "$path: unterminated block\n" if $in_fence;
	return @blocks;
}

my $total = 0;
my $n     = 0;
for my $path (@files)
{
	my @blocks = runnable_blocks($path);
	next unless @blocks;
	(my $name = $path) =~ s{^\Q$root\E/}{};
	$n++;

	my $script = "\\set ON_ERROR_STOP on\n\\set VERBOSITY verbose\n";
	$script .= "CREATE EXTENSION eventpipe;\n"
	  unless grep { /CREATE\s+EXTENSION\s+(IF\s+NOT\s+EXISTS\s+)?eventpipe/i } @blocks;
	for my $i (0 .. $#blocks)
	{
		$script .= "\\echo '-- $name: block " . ($i + 1) . "'\n";
		$script .= $blocks[$i];
		$script .= "\\echo 'doc-example-done " . ($i + 1) . "'\n";
	}

	my $node = new_node("docs$n");
	my ($out, $err) = ('', '');
	my $ok = IPC::Run::run(
		[
			'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1',
			'-d', $node->connstr('postgres'),
			'-f', '-'
		],
		'<', \$script, '>', \$out, '2>', \$err);
	my @done = ($out =~ /^doc-example-done (\d+)$/mg);
	ok($ok, "$name: psql ran its " . scalar(@blocks) . " runnable blocks without error")
	  or diag("stderr:\n$err\nstdout:\n$out");
	is(scalar(@done), scalar(@blocks), "$name: every block ran")
	  or diag("the block after " . scalar(@done) . " failed:\n$err");
	$total += scalar(@done);
	$node->stop('fast');
}

cmp_ok($total, '>=', $min_blocks,
	"at least $min_blocks runnable blocks of the documentation ran ($total)");

done_testing();

# t/321_mirror_debezium.pl: add_mirror(..., 'debezium') applies topics in
# Debezium's change-event format, written here as Debezium's JSON converter
# writes them (docs/consumer.md, "Mirrors"): one table's envelopes bare
# (schemas.enable=false), another's inside the {"schema", "payload"}
# wrapper, keys likewise; ops c, r, u and d, each delete followed by a
# tombstone, and tombstones alone.  Two workers share the topics'
# partitions.  The mirrors must equal what a model of the same changes,
# kept here in Perl, says: rows upserted and deleted, columns that no image
# carries kept at their default on insert and left alone on update, image
# members without a column ignored; three messages that cannot be applied
# are dead-lettered with the reason (a value that does not convert, its
# column named; an op a mirror does not apply; a key that names another
# row), the others applied all the same.  Last, a role's mirror: its rows
# are written as that role, and while a right on the target is revoked its
# messages are dead-lettered, then applied once retried.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use EventpipeTest;
use ConsumerTest;

my $kafka     = start_kafka();
my $bootstrap = $kafka->{bootstrap};
my $node      = new_node('main', bootstrap => $bootstrap);
my $db        = 'postgres';
my $items     = 'dbz.public.items';
my $stock     = 'dbz.public.stock';
my $json      = JSON::PP->new->canonical;

$node->safe_psql($db, q{
CREATE EXTENSION eventpipe;
CREATE TABLE items_copy (id int PRIMARY KEY, name text, price numeric(10,2), tags text[],
                         note text NOT NULL DEFAULT 'untouched', qty int);
CREATE TABLE stock_copy (shop int, sku text, qty int NOT NULL, PRIMARY KEY (shop, sku));
});
ensure_topic($bootstrap, $_) for $items, $stock;
$node->safe_psql($db, qq{
SELECT eventpipe.subscribe('dbz-copy', ARRAY['$items', '$stock'], workers => 2, batch_size => 200);
SELECT eventpipe.add_mirror('dbz-copy', 'public.items', 'items_copy', 'debezium');
SELECT eventpipe.add_mirror('dbz-copy', 'public.stock', 'stock_copy', 'debezium');
});

# ---- the messages, and the model ------------------------------------------

my $seed = 321;
sub rnd { $seed = ($seed * 1103515245 + 12345) % 2147483648; return $seed % $_[0]; }

my %source = (version => '2.7.3.Final', connector => 'postgresql', name => 'dbz', db => 'shop');
my $ts = 1_733_655_948_000;

sub envelope
{
	my ($table, $op, $before, $after) = @_;
	return {
		before => $before,
		after  => $after,
		source => { %source, schema => 'public', table => $table, ts_ms => $ts },
		op     => $op,
		ts_ms  => $ts++
	};
}

# The JSON converter's wrapper (schemas.enable=true), with a schema that
# the mirror does not read.
sub wrapped
{
	my ($name, $payload) = @_;
	return { schema => { type => 'struct', optional => JSON::PP::false, name => $name, fields => [] },
		payload => $payload };
}

my (%items, %stock, @item_msgs, @stock_msgs, %locally_noted);

sub price_text { my ($cents) = @_; return sprintf('%d.%02d', int($cents / 100), $cents % 100); }

sub item_row
{
	my ($id) = @_;
	return {
		id    => $id,
		name  => "item $id v" . rnd(1000),
		price => price_text(100 + rnd(100000)),
		tags  => [ map { "t" . rnd(9) } 1 .. rnd(3) ],
		qty   => rnd(5) ? rnd(500) : undef,
	};
}

# An image as Debezium sends it: numeric as a string (decimal.handling.mode
# = string), arrays as JSON arrays, and a member the target has no column
# for.
sub item_image { my ($row) = @_; return { %$row, warehouse_only => 'ignored' }; }

sub item_message
{
	my ($op, $id) = @_;
	my $key = $json->encode({ id => $id });
	if ($op eq 'tombstone')
	{
		delete $items{$id};
		return { key => $key, value => undef };
	}
	if ($op eq 'd')
	{
		delete $items{$id};
		return { key => $key,
			value => $json->encode(envelope('items', 'd', { id => $id, name => undef, price => undef }, undef)) };
	}
	my $old = $items{$id};
	my $row = item_row($id);
	# a row created again loses the note set on the mirror; an update keeps it
	delete $locally_noted{$id} if $op eq 'c';
	$items{$id} = $row;
	my $before = $op eq 'u' && rnd(2) ? item_image($old) : undef;
	return { key => $key, value => $json->encode(envelope('items', $op, $before, item_image($row))) };
}

sub stock_message
{
	my ($op, $shop, $sku) = @_;
	my $key = $json->encode(wrapped('dbz.public.stock.Key', { shop => $shop, sku => $sku }));
	if ($op eq 'tombstone')
	{
		delete $stock{"$shop|$sku"};
		return { key => $key, value => undef };
	}
	my $after = $op eq 'd' ? undef : { shop => $shop, sku => $sku, qty => rnd(1000) };
	my $before = $op eq 'd' ? { shop => $shop, sku => $sku, qty => undef } : undef;
	if ($after) { $stock{"$shop|$sku"} = $after } else { delete $stock{"$shop|$sku"} }
	return { key => $key,
		value => $json->encode(wrapped('dbz.public.stock.Envelope', envelope('stock', $op, $before, $after))) };
}

# Phase 1: a snapshot (op r) of 300 items and 60 stock rows.
push @item_msgs, item_message('r', $_) for 1 .. 300;
for my $shop (1 .. 3)
{
	push @stock_msgs, stock_message('r', $shop, "sku-$_") for 1 .. 20;
}
produce_messages($bootstrap, $items, \@item_msgs);
produce_messages($bootstrap, $stock, \@stock_msgs);
ok(wait_caught_up($node, $db, 'dbz-copy', $bootstrap, [ $items, $stock ], 120), 'phase 1: caught up');

# Columns no image carries are left alone by updates: a note set on the
# mirror stays, unless the row is deleted and created again.
$node->safe_psql($db, "UPDATE items_copy SET note = 'noted here' WHERE id % 10 = 0");
$locally_noted{$_} = 1 for grep { $_ % 10 == 0 } keys %items;

# Phase 2: changes of every kind, in random order.
my (@items2, @stock2);
my $next_id = 301;
for (1 .. 1500)
{
	my @ids = sort { $a <=> $b } keys %items;
	my $pick = rnd(100);
	my $id = $ids[ rnd(scalar @ids) ];
	if ($pick < 45) { push @items2, item_message('u', $id) }
	elsif ($pick < 55) { push @items2, item_message('d', $id), item_message('tombstone', $id) }
	elsif ($pick < 60) { push @items2, item_message('tombstone', $id) }    # compacted away: the delete is gone
	elsif ($pick < 65) { push @items2, item_message('r', $id) }
	elsif ($pick < 85) { push @items2, item_message('c', $next_id++) }
	else
	{
		# a key deleted earlier created again
		my $old = 1 + rnd($next_id - 1);
		push @items2, item_message(exists $items{$old} ? 'u' : 'c', $old);
	}
	my ($shop, $sku) = (1 + rnd(3), 'sku-' . (1 + rnd(25)));
	my $s = rnd(10);
	push @stock2,
	    $s < 6 ? stock_message(exists $stock{"$shop|$sku"} ? 'u' : 'c', $shop, $sku)
	  : $s < 9 ? (stock_message('d', $shop, $sku), stock_message('tombstone', $shop, $sku))
	  :          stock_message('tombstone', $shop, $sku);
}

# Three messages that cannot be applied, among the others: the model does
# not change for them.
my $victim = (sort { $a <=> $b } keys %items)[0];
splice @items2, 100, 0,
  { key => $json->encode({ id => $victim }),
	value => $json->encode(envelope('items', 'u', undef, { %{ $items{$victim} }, price => 'twelve' })) },
  { key => $json->encode({ id => $victim }),
	value => $json->encode(envelope('items', 't', undef, undef)) },
  { key => $json->encode({ id => $victim + 1 }),
	value => $json->encode(envelope('items', 'u', undef, { %{ $items{$victim} }, name => 'wrong key' })) };

produce_messages($bootstrap, $items, \@items2, tombstones => 1);
produce_messages($bootstrap, $stock, \@stock2, tombstones => 1);
ok(wait_caught_up($node, $db, 'dbz-copy', $bootstrap, [ $items, $stock ], 180), 'phase 2: caught up');

# ---- the mirrors against the model -----------------------------------------

sub item_line
{
	my ($row) = @_;
	return join('|', $row->{id}, $row->{name}, $row->{price}, join(',', @{ $row->{tags} }),
		$locally_noted{ $row->{id} } ? 'noted here' : 'untouched', $row->{qty} // '');
}
my $expected_items = join("\n", map { item_line($items{$_}) } sort { $a <=> $b } keys %items);
my $got_items = $node->safe_psql($db,
	"SELECT id, name, price, array_to_string(tags, ','), note, qty FROM items_copy ORDER BY id");
is($got_items, $expected_items, 'items_copy equals the model (' . scalar(keys %items) . ' rows)');

my $expected_stock = join("\n",
	map { "$_->{shop}|$_->{sku}|$_->{qty}" }
	  sort { $a->{shop} <=> $b->{shop} || $a->{sku} cmp $b->{sku} } values %stock);
my $got_stock = $node->safe_psql($db, 'SELECT shop, sku, qty FROM stock_copy ORDER BY shop, sku COLLATE "C"');
is($got_stock, $expected_stock, 'stock_copy equals the model (' . scalar(keys %stock) . ' rows)');
cmp_ok($node->safe_psql($db, "SELECT count(*) FROM items_copy WHERE note = 'noted here'"), '>', 0,
	'some rows kept a note no image carries');

my $dead = $node->safe_psql($db,
	"SELECT error FROM eventpipe.consumer_dead_letters WHERE subscription = 'dbz-copy' ORDER BY topic, partition, \"offset\"");
my @dead = split /\n/, $dead;
is(scalar @dead, 3, 'three messages dead-lettered') or diag $dead;
like($dead, qr/column "price" of public\.items_copy: invalid input syntax for type numeric: "twelve"/,
	'a value that does not convert: its column named');
like($dead, qr/op "t" is not a row change a mirror applies/, 'an op a mirror does not apply');
my $other = $victim + 1;
like($dead, qr/the message key \["$other"\] names another row of public\.items_copy than its image's primary key \["$victim"\]/,
	'a key that names another row than its image');

# ---- a mirror runs as the role that declared it, while it may -------------

# A role's own subscription and mirror: the row is written as that role
# (a trigger records current_user); once a right on the target is revoked,
# the mirror's messages are dead-lettered with the reason, and applied when
# the right is back and they are retried.
my $notes = 'dbz.public.notes';
ensure_topic($bootstrap, $notes);
$node->safe_psql($db, q{
CREATE ROLE copier;
GRANT USAGE ON SCHEMA eventpipe TO copier;
GRANT EXECUTE ON FUNCTION eventpipe.subscribe(text, text[], text, text, integer, text, integer),
                          eventpipe.add_mirror(text, text, regclass, text),
                          eventpipe.retry_consumer_dead(bigint[], text, text) TO copier;
CREATE TABLE notes_copy (id int PRIMARY KEY, body text, written_by name);
GRANT SELECT, INSERT, UPDATE, DELETE ON notes_copy TO copier;
CREATE FUNCTION record_writer() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.written_by := current_user;
    RETURN NEW;
END
$$;
CREATE TRIGGER record_writer BEFORE INSERT OR UPDATE ON notes_copy
    FOR EACH ROW EXECUTE FUNCTION record_writer();
});
my $mirror_id = $node->safe_psql($db, qq{
SET ROLE copier;
SELECT eventpipe.subscribe('notes-copy', ARRAY['$notes']);
SELECT eventpipe.add_mirror('notes-copy', 'public.notes', 'notes_copy', 'debezium');
});
$mirror_id = (split /\n/, $mirror_id)[-1];

sub note_message
{
	my ($id, $body) = @_;
	return { key => $json->encode({ id => $id }),
		value => $json->encode(envelope('notes', 'c', undef, { id => $id, body => $body })) };
}
produce_messages($bootstrap, $notes, [ note_message(1, 'first') ]);
ok(wait_caught_up($node, $db, 'notes-copy', $bootstrap, [$notes], 120), "the role's mirror caught up");
is($node->safe_psql($db, 'SELECT id, body, written_by FROM notes_copy'), '1|first|copier',
	'the row was written as the role that declared the mirror');

$node->safe_psql($db, 'REVOKE DELETE ON notes_copy FROM copier');
produce_messages($bootstrap, $notes, [ note_message(2, 'second') ]);
ok(wait_caught_up($node, $db, 'notes-copy', $bootstrap, [$notes], 120), 'caught up with the right revoked');
is($node->safe_psql($db, "SELECT error FROM eventpipe.consumer_dead_letters WHERE subscription = 'notes-copy'"),
	"mirror $mirror_id cannot be applied: its owner copier may no longer select, insert into, update and delete from public.notes_copy",
	'without DELETE on its target, the mirror dead-letters its messages, with the reason');
is($node->safe_psql($db, 'SELECT count(*) FROM notes_copy'), 1, 'and writes nothing');

$node->safe_psql($db, 'GRANT DELETE ON notes_copy TO copier');
$node->safe_psql($db, "SET ROLE copier; SELECT eventpipe.retry_consumer_dead(subscription => 'notes-copy')");
ok(wait_until(sub { $node->safe_psql($db, 'SELECT count(*) FROM notes_copy') == 2 }, 120),
	'the right back, the dead letter retried is applied');
is($node->safe_psql($db, 'SELECT id, body, written_by FROM notes_copy ORDER BY id'), "1|first|copier\n2|second|copier",
	'as the role, again');

ok(stop_kafka($kafka), 'Kafka stopped');
done_testing();

# t/403_privileges.pl: the consumer's privilege model (0.4) against a
# hostile role, with a real broker.
#
# mallory is an ordinary role with exactly the documented grants (USAGE on
# schema eventpipe, EXECUTE on the declaring and operating functions) and a
# schema of her own.  She tries, and must fail, to:
#   - forge an owner: write eventpipe's tables directly (a handler or rule
#     owned by the superuser, an UPDATE of owner), or call the SECURITY
#     DEFINER implementations (add_handler_as, ...) with another caller;
#   - leak settings out of user code: her handler and the BEFORE trigger on
#     her own target run set_config(..., false) on search_path,
#     application_name and a marker, while look-alikes of built-ins
#     (mallory.quote_ident, now, unnest, sum, the operators = and +) wait
#     in her schema to be called as a superuser (they would ALTER ROLE
#     mallory SUPERUSER, and log every call with current_user): the next
#     call of user code and the worker's own statements must never see her
#     settings, the look-alikes fire only as mallory (a positive control
#     shows they do fire when her own code asks for them), she never
#     becomes a superuser, and her rules' metrics stay exact;
#   - act as another role from user code: SET ROLE, SET SESSION
#     AUTHORIZATION, set_config('role', ...), CREATE TEMP TABLE, writing a
#     table she has no right on, from a handler or from a trigger: each such
#     message is dead-lettered with the error, the rest applied exactly;
#   - change another role's subscription: add rules or handlers to it,
#     remove its rules, unsubscribe, pause, resume, replay or retry it,
#     share or steal its consumer group, write its offsets or replays;
#     declare a rule on a table she may not write, or a handler she may not
#     execute (a superuser's SECURITY DEFINER function).
# Rights are checked at every batch: the target of one rule dropped, the
# column of another dropped, EXECUTE on a handler and INSERT on a target
# revoked: exactly the messages needing them are dead-lettered, with the
# reason, and every other event type keeps being applied exactly; once the
# rights are back, retry_consumer_dead() run by mallory applies them.
# An owner no longer recorded (its REFERENCES grant revoked by hand), then
# dropped: its rule runs no more, each message dead-lettered with the
# reason.
# Owners are dependencies: DROP ROLE mallory is refused, REASSIGN OWNED
# hands her subscriptions to heir (who they then run as, exactly), DROP
# OWNED BY heir removes them and their workers.
# The ledger's upkeep goes on while an ordinary role holds the advisory
# lock it once took.
# A member of eventpipe_admin may pause and resume another's subscription,
# and a properly granted role (backoffice: INSERT, UPDATE on its targets,
# EXECUTE on its handler) has its events applied exactly.
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
my $node      = new_node('main', bootstrap => $bootstrap, conf => 'max_worker_processes = 24');
my $db        = 'postgres';
my $json      = JSON::PP->new->canonical;
my $su        = $node->safe_psql($db, 'SELECT current_user');
my $log_start = log_position($node);

my %topic = map { $_ => "t403.$_" } qw(mallory trigger rules rights victim shop ghost);
ensure_topic($bootstrap, $_) for values %topic;

# ---- helpers ----------------------------------------------------------------

# SQL with __SU__ standing for the superuser's name.
sub su_sql { my ($sql) = @_; $sql =~ s/__SU__/$su/g; return $sql }

# Run SQL as a role logged in as itself (no SET ROLE: a session of its own).
sub as_role
{
	my ($role, $sql) = @_;
	return $node->safe_psql($db, su_sql($sql), extra_params => [ '-U', $role ]);
}

# The statement must fail for $role with an error matching $re.
sub refused
{
	my ($role, $sql, $re, $label) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my ($ret, $out, $err) = $node->psql($db, su_sql($sql), extra_params => [ '-U', $role ]);
	isnt($ret, 0, "$label: refused") or diag "it returned: $out";
	like($err, $re, "$label: the error says why");
	return;
}

# A plain message: its payload carries type and event_id.
sub ev
{
	my ($type, $id, %f) = @_;
	return { key => $f{k} // $id, value => $json->encode({ type => $type, event_id => $id, %f }) };
}

# Rows of a query, first column => the rest joined by '|'.
sub rows_of
{
	my ($sql) = @_;
	my %rows;
	for my $line (split /\n/, $node->safe_psql($db, $sql))
	{
		my ($k, $rest) = split /\|/, $line, 2;
		$rows{$k} = $rest;
	}
	return \%rows;
}

# Dead letters of a subscription: event_id => error.
sub dead_letters
{
	my ($sub) = @_;
	return rows_of(qq{
SELECT convert_from(value, 'UTF8')::jsonb ->> 'event_id', replace(error, E'\\n', ' ')
  FROM eventpipe.consumer_dead_letters WHERE subscription = '$sub' ORDER BY id});
}

sub caught_up_ok
{
	my ($sub, $topic) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	ok(wait_caught_up($node, $db, $sub, $bootstrap, [$topic], 120), "$sub consumed all of $topic");
	return;
}

# Compare dead letters with the expected ones: event_id => error regex.
sub check_dead
{
	my ($sub, $want, $label) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $got = dead_letters($sub);
	my @problems;
	for my $id (sort keys %$want)
	{
		if (!defined $got->{$id}) { push @problems, "$id: not dead-lettered"; next }
		push @problems, "$id: error \"$got->{$id}\" does not match $want->{$id}"
		  unless $got->{$id} =~ $want->{$id};
	}
	push @problems, "$_: dead-lettered but should have been applied ($got->{$_})"
	  for grep { !$want->{$_} } sort keys %$got;
	is(scalar @problems, 0, $label)
	  or diag join("\n", @problems[ 0 .. ($#problems < 14 ? $#problems : 14) ]);
	my %errors = map { $_ => 1 } values %$got;
	note "$sub dead letter: $_" for sort keys %errors;
	return;
}

# ---- roles, schemas, tables, functions ------------------------------------------

my $declaring = join(",\n    ",
	'eventpipe.subscribe(text, text[], text, text, integer, text, integer)',
	'eventpipe.unsubscribe(text)',
	'eventpipe.add_metric(text, text, regclass, text, text, text)',
	'eventpipe.add_handler(text, text, regprocedure)',
	'eventpipe.remove_metric(bigint)', 'eventpipe.remove_handler(bigint)',
	'eventpipe.pause(text)', 'eventpipe.resume(text)',
	'eventpipe.replay(text, text, integer, bigint)',
	'eventpipe.retry_consumer_dead(bigint[], text, text)');

$node->safe_psql($db, 'CREATE EXTENSION eventpipe');
$node->safe_psql($db, metrics_sql() . qq{
CREATE ROLE mallory LOGIN;
CREATE ROLE victim LOGIN;
CREATE ROLE backoffice LOGIN;
CREATE ROLE heir LOGIN;
CREATE ROLE ghost LOGIN;
CREATE ROLE oncall LOGIN IN ROLE eventpipe_admin;
GRANT USAGE ON SCHEMA eventpipe TO mallory, victim, backoffice, oncall, ghost;
GRANT EXECUTE ON FUNCTION
    $declaring
  TO mallory, victim, backoffice, oncall, ghost;
CREATE SCHEMA mallory AUTHORIZATION mallory;
CREATE SCHEMA victim AUTHORIZATION victim;
} . q{
-- backoffice: its metric targets (metrics_sql) and its handler, owned by
-- the superuser, granted as documented
GRANT SELECT, INSERT, UPDATE ON product_metrics, customer_metrics TO backoffice;
CREATE TABLE payment_log (event_id text PRIMARY KEY, product_id text NOT NULL, amount numeric NOT NULL,
                          called_by name NOT NULL);
GRANT INSERT ON payment_log TO backoffice;
CREATE FUNCTION log_payment(payload jsonb, metadata jsonb) RETURNS void
LANGUAGE sql AS $$
INSERT INTO public.payment_log VALUES (metadata ->> 'id', payload ->> 'product_id',
                                       (payload ->> 'amount')::numeric, current_user)
$$;
REVOKE EXECUTE ON FUNCTION log_payment(jsonb, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION log_payment(jsonb, jsonb) TO backoffice;

-- mallory's rights on the superuser's objects, to be revoked mid-stream
CREATE TABLE audit_log (event_id text PRIMARY KEY, called_by name NOT NULL);
GRANT INSERT ON audit_log TO mallory;
CREATE FUNCTION audit_event(payload jsonb, metadata jsonb) RETURNS void
LANGUAGE sql AS $$ INSERT INTO public.audit_log VALUES (payload ->> 'event_id', current_user) $$;
REVOKE EXECUTE ON FUNCTION audit_event(jsonb, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_event(jsonb, jsonb) TO mallory;
CREATE TABLE shared_metrics (k text PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
-- the documented grants of a metric target: SELECT, INSERT, UPDATE (the
-- upsert reads the counter it adds to)
GRANT SELECT, INSERT, UPDATE ON shared_metrics TO mallory;

-- ghost: a role that will stop being recorded as an owner, then be dropped
CREATE TABLE ghost_metrics (k text PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
GRANT SELECT, INSERT, UPDATE ON ghost_metrics TO ghost;

-- a superuser's SECURITY DEFINER function nobody else may execute
CREATE FUNCTION sd_handler(payload jsonb, metadata jsonb) RETURNS void
LANGUAGE sql SECURITY DEFINER AS $$ SELECT 1 $$;
REVOKE EXECUTE ON FUNCTION sd_handler(jsonb, jsonb) FROM PUBLIC;
});

# mallory's own objects, created by her.
as_role('mallory', q{
-- every call of a look-alike, with who made it and the settings it saw
CREATE TABLE mallory.calls (fn text NOT NULL, who name NOT NULL, search_path text, app text);
GRANT USAGE ON SCHEMA mallory TO PUBLIC;
GRANT INSERT ON mallory.calls TO PUBLIC;
CREATE FUNCTION mallory.trap(fn text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO mallory.calls VALUES (fn, current_user, pg_catalog.current_setting('search_path'),
                                      pg_catalog.current_setting('application_name'));
    IF EXISTS (SELECT FROM pg_catalog.pg_roles AS r
                WHERE r.rolname OPERATOR(pg_catalog.=) current_user AND r.rolsuper) THEN
        EXECUTE 'ALTER ROLE mallory SUPERUSER';
    END IF;
END
$$;
CREATE FUNCTION mallory.quote_ident(t text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM mallory.trap('quote_ident'); RETURN pg_catalog.quote_ident(t); END $$;
CREATE FUNCTION mallory.now() RETURNS timestamptz LANGUAGE plpgsql AS $$
BEGIN PERFORM mallory.trap('now'); RETURN pg_catalog.now(); END $$;
CREATE FUNCTION mallory.unnest(a anyarray) RETURNS SETOF anyelement LANGUAGE plpgsql AS $$
BEGIN PERFORM mallory.trap('unnest'); RETURN QUERY SELECT pg_catalog.unnest(a); END $$;
CREATE FUNCTION mallory.text_eq(a text, b text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM mallory.trap('=(text,text)'); RETURN a OPERATOR(pg_catalog.=) b; END $$;
CREATE OPERATOR mallory.= (LEFTARG = text, RIGHTARG = text, FUNCTION = mallory.text_eq);
CREATE FUNCTION mallory.int4_eq(a integer, b integer) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM mallory.trap('=(integer,integer)'); RETURN a OPERATOR(pg_catalog.=) b; END $$;
CREATE OPERATOR mallory.= (LEFTARG = integer, RIGHTARG = integer, FUNCTION = mallory.int4_eq);
CREATE FUNCTION mallory.int8_add(a bigint, b bigint) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN PERFORM mallory.trap('+(bigint,bigint)'); RETURN a OPERATOR(pg_catalog.+) b; END $$;
CREATE OPERATOR mallory.+ (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = mallory.int8_add);
CREATE FUNCTION mallory.numeric_add(a numeric, b numeric) RETURNS numeric LANGUAGE plpgsql AS $$
BEGIN PERFORM mallory.trap('+(numeric,numeric)'); RETURN a OPERATOR(pg_catalog.+) b; END $$;
CREATE OPERATOR mallory.+ (LEFTARG = numeric, RIGHTARG = numeric, FUNCTION = mallory.numeric_add);
CREATE AGGREGATE mallory.sum(numeric) (SFUNC = mallory.numeric_add, STYPE = numeric);

-- mallory_main: two rules, a handler that changes settings, a handler that
-- tries to become someone else
CREATE TABLE mallory.products (product_id text PRIMARY KEY, likes bigint NOT NULL DEFAULT 0,
                               views bigint NOT NULL DEFAULT 0);
CREATE TABLE mallory.handled (event_id text PRIMARY KEY, who name NOT NULL, search_path text, app text,
                              marker text, local_marker text);
CREATE FUNCTION mallory.hijack(payload jsonb, metadata jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    -- what this call starts with: nothing a previous call set
    INSERT INTO mallory.handled VALUES (payload ->> 'event_id', current_user,
        pg_catalog.current_setting('search_path'), pg_catalog.current_setting('application_name'),
        pg_catalog.current_setting('mallory.marker', true),
        pg_catalog.current_setting('mallory.local_marker', true));
    PERFORM pg_catalog.set_config('search_path', 'mallory, pg_catalog', false);
    PERFORM pg_catalog.set_config('application_name', 'pwned', false);
    PERFORM pg_catalog.set_config('mallory.marker', 'leaked', false);
    PERFORM pg_catalog.set_config('mallory.local_marker', 'leaked', true);
    -- the look-alikes are hers now: they fire, as mallory (positive control)
    PERFORM quote_ident('x');
    IF 'a'::text = 'b'::text THEN
        RAISE EXCEPTION 'unreachable';
    END IF;
END
$$;
} . su_sql(q{
CREATE FUNCTION mallory.become(payload jsonb, metadata jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO mallory.handled (event_id, who) VALUES (payload ->> 'event_id', current_user);
    CASE payload ->> 'how'
    WHEN 'role' THEN SET ROLE __SU__;
    WHEN 'session' THEN SET SESSION AUTHORIZATION __SU__;
    WHEN 'config' THEN PERFORM pg_catalog.set_config('role', '__SU__', false);
    WHEN 'temp' THEN CREATE TEMP TABLE mallory_temp (x integer);
    WHEN 'vandal' THEN UPDATE public.product_metrics SET views = 0;
    END CASE;
    INSERT INTO mallory.calls VALUES ('become survived', current_user, NULL, NULL);
END
$$;

-- mallory_trig: BEFORE triggers on her own targets
CREATE TABLE mallory.trig_ok (k text PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
CREATE TABLE mallory.trig_bad (k text PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
CREATE TABLE mallory.trig_seen (who name NOT NULL);
CREATE TABLE mallory.probes (event_id text PRIMARY KEY, who name NOT NULL, search_path text, app text,
                             marker text);
CREATE FUNCTION mallory.trig_sets() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO mallory.trig_seen VALUES (current_user);
    PERFORM pg_catalog.set_config('search_path', 'mallory, pg_catalog', false);
    PERFORM pg_catalog.set_config('application_name', 'pwned', false);
    PERFORM pg_catalog.set_config('mallory.marker', 'leaked', false);
    RETURN NEW;
END
$$;
CREATE FUNCTION mallory.trig_set_role() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'mallory, pg_catalog', false);
    PERFORM pg_catalog.set_config('mallory.marker', 'leaked', false);
    SET ROLE __SU__;
    INSERT INTO mallory.trig_seen VALUES (current_user);
    RETURN NEW;
END
$$;
CREATE TRIGGER sets BEFORE INSERT OR UPDATE ON mallory.trig_ok
    FOR EACH ROW EXECUTE FUNCTION mallory.trig_sets();
CREATE TRIGGER set_role BEFORE INSERT OR UPDATE ON mallory.trig_bad
    FOR EACH ROW EXECUTE FUNCTION mallory.trig_set_role();
CREATE FUNCTION mallory.probe(payload jsonb, metadata jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO mallory.probes VALUES (payload ->> 'event_id', current_user,
        pg_catalog.current_setting('search_path'), pg_catalog.current_setting('application_name'),
        pg_catalog.current_setting('mallory.marker', true));
END
$$;

-- mallory_rules: rules on two tables, a handler; one target and one column
-- will be dropped
CREATE TABLE mallory.a_metrics (k text PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
CREATE TABLE mallory.b_metrics (k text PRIMARY KEY, n bigint NOT NULL DEFAULT 0,
                                d bigint NOT NULL DEFAULT 0);
CREATE TABLE mallory.c_log (event_id text PRIMARY KEY, who name NOT NULL);
CREATE FUNCTION mallory.c_handler(payload jsonb, metadata jsonb) RETURNS void LANGUAGE sql AS $$
INSERT INTO mallory.c_log VALUES (payload ->> 'event_id', current_user) $$;

-- mallory_rights: a rule on her own table besides the superuser's objects
CREATE TABLE mallory.other (k text PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
}));

as_role('victim', q{
CREATE TABLE victim.counts (k text PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
});

# ---- the subscriptions ------------------------------------------------------------

as_role('mallory', qq{
BEGIN;
SELECT eventpipe.subscribe('mallory_main', ARRAY['$topic{mallory}'], batch_size => 25, dedup_field => 'event_id');
SELECT eventpipe.add_metric('mallory_main', 'LikeChanged', 'mallory.products', 'product_id', 'likes', 'delta');
SELECT eventpipe.add_metric('mallory_main', 'ProductViewed', 'mallory.products', 'product_id', 'views');
SELECT eventpipe.add_handler('mallory_main', 'Hijack', 'mallory.hijack(jsonb, jsonb)');
SELECT eventpipe.add_handler('mallory_main', 'Become', 'mallory.become(jsonb, jsonb)');
COMMIT;
BEGIN;
SELECT eventpipe.subscribe('mallory_trig', ARRAY['$topic{trigger}'], batch_size => 10);
SELECT eventpipe.add_metric('mallory_trig', 'TrigOk', 'mallory.trig_ok', 'k', 'n');
SELECT eventpipe.add_metric('mallory_trig', 'TrigBad', 'mallory.trig_bad', 'k', 'n');
SELECT eventpipe.add_handler('mallory_trig', 'Probe', 'mallory.probe(jsonb, jsonb)');
COMMIT;
BEGIN;
SELECT eventpipe.subscribe('mallory_rules', ARRAY['$topic{rules}'], batch_size => 20);
SELECT eventpipe.add_metric('mallory_rules', 'A', 'mallory.a_metrics', 'k', 'n', 'v');
SELECT eventpipe.add_metric('mallory_rules', 'B', 'mallory.b_metrics', 'k', 'n', 'v');
SELECT eventpipe.add_metric('mallory_rules', 'D', 'mallory.b_metrics', 'k', 'd');
SELECT eventpipe.add_handler('mallory_rules', 'C', 'mallory.c_handler(jsonb, jsonb)');
COMMIT;
BEGIN;
SELECT eventpipe.subscribe('mallory_rights', ARRAY['$topic{rights}'], batch_size => 20);
SELECT eventpipe.add_handler('mallory_rights', 'Audit', 'public.audit_event(jsonb, jsonb)');
SELECT eventpipe.add_metric('mallory_rights', 'Shared', 'public.shared_metrics', 'k', 'n');
SELECT eventpipe.add_metric('mallory_rights', 'Other', 'mallory.other', 'k', 'n');
COMMIT;
});
as_role('victim', qq{
BEGIN;
SELECT eventpipe.subscribe('victim_sub', ARRAY['$topic{victim}'], group_id => 'victim-group', batch_size => 20);
SELECT eventpipe.add_metric('victim_sub', 'VictimEvent', 'victim.counts', 'k', 'n');
COMMIT;
});
as_role('ghost', qq{
BEGIN;
SELECT eventpipe.subscribe('ghost_sub', ARRAY['$topic{ghost}'], batch_size => 20);
SELECT eventpipe.add_metric('ghost_sub', 'GhostEvent', 'public.ghost_metrics', 'k', 'n');
COMMIT;
});
as_role('backoffice',
	subscribe_sql('bo_sub', [ $topic{shop} ],
		subscribe => "batch_size => 200, dedup_field => 'event_id'",
		customers => 1,
		handlers  => [ [ 'PaymentCompleted', 'public.log_payment(jsonb, jsonb)' ] ]));

is($node->safe_psql($db,
		q{SELECT string_agg(DISTINCT s.owner::text || ':' || r.owner::text, ',')
            FROM eventpipe.subscriptions s JOIN eventpipe.metric_rules r ON r.subscription = s.name
           WHERE s.name LIKE 'mallory%'}),
	'mallory:mallory', "mallory's subscriptions and rules are recorded as hers");

my %rule = %{ rows_of(q{SELECT subscription || '/' || event_type, id FROM eventpipe.metric_rules}) };
my %handler = %{ rows_of(q{SELECT subscription || '/' || event_type, id FROM eventpipe.handlers}) };
my ($rule_a, $rule_d, $rule_shared, $handler_audit, $rule_ghost) = (
	$rule{'mallory_rules/A'}, $rule{'mallory_rules/D'},
	$rule{'mallory_rights/Shared'}, $handler{'mallory_rights/Audit'}, $rule{'ghost_sub/GhostEvent'});

my %pid;
for my $sub (qw(mallory_main mallory_trig mallory_rules mallory_rights victim_sub bo_sub ghost_sub))
{
	$pid{$sub} = wait_consumer_pid($node, $db, $sub, timeout => 60);
	ok($pid{$sub}, "subscription $sub has a worker");
}

# ---- 1. forged owners -------------------------------------------------------------

refused('mallory', q{INSERT INTO eventpipe.handlers (subscription, event_type, handler, owner)
VALUES ('mallory_main', 'Forged', 'mallory.hijack(jsonb, jsonb)', '__SU__')},
	qr/permission denied for table handlers/, 'mallory inserts a handler owned by the superuser');
refused('mallory', q{INSERT INTO eventpipe.metric_rules (subscription, event_type, target, key_field, column_name, owner)
VALUES ('mallory_main', 'Forged', 'public.product_metrics', 'product_id', 'views', '__SU__')},
	qr/permission denied for table metric_rules/, 'mallory inserts a rule owned by the superuser');
refused('mallory', q{UPDATE eventpipe.metric_rules SET owner = '__SU__' WHERE subscription = 'mallory_main'},
	qr/permission denied for table metric_rules/, 'mallory makes her rules the superuser\'s');
refused('mallory', q{UPDATE eventpipe.handlers SET owner = '__SU__'},
	qr/permission denied for table handlers/, 'mallory makes her handlers the superuser\'s');
refused('mallory', q{UPDATE eventpipe.subscriptions SET owner = '__SU__'},
	qr/permission denied for table subscriptions/, 'mallory makes her subscriptions the superuser\'s');
refused('mallory',
	q{SELECT eventpipe.add_handler_as('__SU__'::regrole, 'mallory_main', 'Forged', 'mallory.hijack(jsonb, jsonb)')},
	qr/permission denied for function add_handler_as/,
	'mallory calls the implementation of add_handler with the superuser as caller');
refused('mallory',
	q{SELECT eventpipe.add_metric_as('__SU__'::regrole, 'mallory_main', 'Forged', 'public.product_metrics', 'product_id', 'views', NULL)},
	qr/permission denied for function add_metric_as/,
	'mallory calls the implementation of add_metric with the superuser as caller');
refused('mallory', q{SET ROLE __SU__}, qr/permission denied to set role/,
	'mallory cannot become the superuser in her own session');
is($node->safe_psql($db,
		q{SELECT (SELECT count(*) FROM eventpipe.metric_rules WHERE event_type = 'Forged')
               + (SELECT count(*) FROM eventpipe.handlers WHERE event_type = 'Forged'),
                 (SELECT string_agg(DISTINCT owner::text, ',') FROM eventpipe.handlers WHERE subscription LIKE 'mallory%')}),
	'0|mallory', 'no forged rule or handler exists; her handlers are still hers');

# ---- 5. another role's subscription ----------------------------------------------------

my $denied_victim = qr/permission denied for subscription "victim_sub"/;
refused('mallory', q{SELECT eventpipe.add_handler('victim_sub', 'VictimEvent', 'mallory.hijack(jsonb, jsonb)')},
	$denied_victim, "mallory adds a handler to victim's subscription");
refused('mallory', q{SELECT eventpipe.add_metric('victim_sub', 'VictimEvent', 'mallory.other', 'k', 'n')},
	$denied_victim, "mallory adds a rule to victim's subscription");
refused('mallory', "SELECT eventpipe.remove_metric($rule{'victim_sub/VictimEvent'})",
	$denied_victim, "mallory removes victim's rule");
refused('mallory', q{SELECT eventpipe.unsubscribe('victim_sub')}, $denied_victim,
	"mallory unsubscribes victim's subscription");
refused('mallory', q{SELECT eventpipe.pause('victim_sub')}, $denied_victim,
	"mallory pauses victim's subscription");
refused('mallory', q{SELECT eventpipe.resume('victim_sub')}, $denied_victim,
	"mallory resumes victim's subscription");
refused('mallory', "SELECT eventpipe.replay('victim_sub', '$topic{victim}', 0, 0)", $denied_victim,
	"mallory replays victim's subscription");
refused('mallory', q{SELECT eventpipe.retry_consumer_dead(subscription => 'victim_sub')}, $denied_victim,
	"mallory retries victim's dead letters");
refused('mallory',
	"SELECT eventpipe.subscribe('steal', ARRAY['$topic{victim}'], group_id => 'victim-group')",
	qr/consumer group "victim-group" is used by subscription "victim_sub"/,
	"mallory joins victim's consumer group by naming it");
refused('mallory', "SELECT eventpipe.subscribe('victim-group', ARRAY['$topic{victim}'])",
	qr/consumer group "victim-group" is used by subscription "victim_sub"/,
	"mallory takes victim's consumer group as a subscription name");
refused('mallory', "SELECT eventpipe.subscribe('victim_sub', ARRAY['$topic{victim}'])",
	qr/subscription "victim_sub" already exists/, "mallory declares victim's subscription again");
refused('mallory', q{UPDATE eventpipe.subscriptions SET paused = true WHERE name = 'victim_sub'},
	qr/permission denied for table subscriptions/, "mallory pauses victim's subscription by hand");
refused('mallory', q{DELETE FROM eventpipe.consumer_offsets WHERE subscription = 'victim_sub'},
	qr/permission denied for table consumer_offsets/, "mallory deletes victim's offsets");
refused('mallory',
	"INSERT INTO eventpipe.consumer_replays (subscription, topic, partition, from_offset) VALUES ('victim_sub', '$topic{victim}', 0, 0)",
	qr/permission denied for table consumer_replays/, "mallory asks a replay of victim's subscription by hand");
refused('mallory', q{SELECT eventpipe.pause_as('victim'::regrole, 'victim_sub')},
	qr/permission denied for function pause_as/, 'mallory calls pause_as as victim');
refused('mallory',
	q{SELECT eventpipe.add_metric('mallory_main', 'ProductViewed', 'public.product_metrics', 'product_id', 'views')},
	qr/permission denied to update table "(?:public\.)?product_metrics"/,
	"mallory declares a rule on backoffice's table, which she may not write");
refused('mallory', q{SELECT eventpipe.add_handler('mallory_main', 'Hijack', 'public.sd_handler(jsonb, jsonb)')},
	qr/permission denied for function/,
	"mallory declares a superuser's SECURITY DEFINER function she may not execute as her handler");
is($node->safe_psql($db,
		q{SELECT string_agg(name || ':' || group_id || ':' || owner::text || ':' || paused, ',' ORDER BY name)
            FROM eventpipe.subscriptions WHERE name LIKE 'victim%' OR group_id LIKE 'victim%' OR name = 'steal'}),
	'victim_sub:victim-group:victim:false', "victim's subscription is as victim declared it, alone in its group");
is($node->safe_psql($db, q{SELECT count(*) FROM eventpipe.metric_rules WHERE subscription = 'victim_sub'})
	  . '|' . $node->safe_psql($db, q{SELECT count(*) FROM eventpipe.handlers WHERE subscription = 'victim_sub'}),
	'1|0', "victim's subscription has its one rule and no handler");

# ---- wave 1 ----------------------------------------------------------------------

srand(403);
my (%likes, %views, @hijack, %main_dead);
my @main_msgs;
my @how = qw(role session config temp vandal);
my %how_error = (
	role    => qr/cannot set parameter "role" within security-(?:restricted operation|definer function)/,
	session => qr/cannot set parameter "session_authorization" within security-(?:restricted operation|definer function)/,
	config  => qr/cannot set parameter "role" within security-(?:restricted operation|definer function)/,
	temp    => qr/cannot create temporary table within security-restricted operation/,
	vandal  => qr/permission denied for table product_metrics/);

# main events: likes, views and Hijack calls; $n of them, with prefix $p
sub main_events
{
	my ($p, $n, %o) = @_;
	my @msgs;
	for my $i (1 .. $n)
	{
		my $r = rand();
		my $k = 'p' . int(rand(8));
		if ($r < 0.35)
		{
			my $d = rand() < 0.25 ? -1 : 1;
			push @msgs, ev('LikeChanged', "$p-l$i", product_id => $k, delta => $d, k => $k);
			$likes{$k} += $d;
			$views{$k} += 0;
		}
		elsif ($r < 0.7 || !$o{hijack})
		{
			push @msgs, ev('ProductViewed', "$p-v$i", product_id => $k, k => $k);
			$views{$k}++;
			$likes{$k} += 0;
		}
		else
		{
			push @msgs, ev('Hijack', "$p-h$i", k => $k);
			push @hijack, "$p-h$i";
		}
	}
	return @msgs;
}

@main_msgs = main_events('w1', 400, hijack => 1);
# the attempts at becoming someone else, two of each, spread out
for my $j (0 .. 9)
{
	my $how = $how[ $j % @how ];
	my $id  = "become-$how-$j";
	splice(@main_msgs, 35 * $j + 7, 0, ev('Become', $id, how => $how));
	$main_dead{$id} = $how_error{$how};
}
produce_messages($bootstrap, $topic{mallory}, \@main_msgs);
note scalar(@main_msgs) . ' messages for mallory_main, ' . scalar(@hijack) . ' Hijack calls';

# mallory_trig: TrigOk counted, TrigBad refused by its trigger, Probe handled
my (%trig_ok, %trig_dead, @probes, @trig_msgs);
for my $i (1 .. 72)
{
	my $k = 'k' . ($i % 5);
	if ($i % 6 == 0)
	{
		push @trig_msgs, ev('TrigBad', "tb$i", k => $k);
		$trig_dead{"tb$i"} = $how_error{role};
	}
	elsif ($i % 6 == 3)
	{
		push @trig_msgs, ev('Probe', "pr$i", k => $k);
		push @probes, "pr$i";
	}
	else
	{
		push @trig_msgs, ev('TrigOk', "to$i", k => $k);
		$trig_ok{$k}++;
	}
}
produce_messages($bootstrap, $topic{trigger}, \@trig_msgs);

# mallory_rules, phase 1: A, B, C, D all applied
my (%a_sum, %b_sum, %d_count, @c_ids);
sub rules_events
{
	my ($p, $n, %o) = @_;
	my @msgs;
	for my $i (1 .. $n)
	{
		my $k = 'r' . ($i % 5);
		my $v = 1 + ($i * 7) % 13;
		my $t = (qw(A B C D A B))[ $i % 6 ];
		push @msgs, ev($t, "$p-$t$i", k => $k, v => $v);
		if    ($t eq 'A') { $a_sum{$k} += $v unless $o{a_dead} }
		elsif ($t eq 'B') { $b_sum{$k} += $v }
		elsif ($t eq 'C') { push @c_ids, "$p-$t$i" }
		else              { $d_count{$k}++ unless $o{d_dead} }
	}
	return @msgs;
}
produce_messages($bootstrap, $topic{rules}, [ rules_events('r1', 120) ]);

# mallory_rights, phase 1: Audit handled, Shared and Other counted
my (%shared, %other, @audit);
sub rights_events
{
	my ($p, $n) = @_;
	my @msgs;
	for my $i (1 .. $n)
	{
		my $k = 's' . ($i % 4);
		my $t = (qw(Audit Shared Other))[ $i % 3 ];
		push @msgs, ev($t, "$p-$t$i", k => $k);
		if    ($t eq 'Audit')  { push @audit, "$p-$t$i" }
		elsif ($t eq 'Shared') { $shared{$k}++ }
		else                   { $other{$k}++ }
	}
	return @msgs;
}
produce_messages($bootstrap, $topic{rights}, [ rights_events('g1', 60) ]);

# victim: its events and one message that is not JSON
my %victim;
my @victim_msgs = map { my $k = 'v' . ($_ % 3); $victim{$k}++; ev('VictimEvent', "ve$_", k => $k) } 1 .. 50;
push @victim_msgs, { key => 'garbage', value => 'not json {' };
produce_messages($bootstrap, $topic{victim}, \@victim_msgs);

# backoffice: the usual product and customer events
my $shop = make_events(prefix => 'bo', count => 1200, headered => 20, products => 10, customers => 6,
	seed => 403);
produce_events($bootstrap, $topic{shop}, $shop);

caught_up_ok('mallory_main',   $topic{mallory});
caught_up_ok('mallory_trig',   $topic{trigger});
caught_up_ok('mallory_rules',  $topic{rules});
caught_up_ok('mallory_rights', $topic{rights});
caught_up_ok('victim_sub',     $topic{victim});
caught_up_ok('bo_sub',         $topic{shop});

# ---- 2. settings and look-alikes ------------------------------------------------------

sub expected_products
{
	return { map { $_ => "$likes{$_}|$views{$_}" } keys %likes };
}
is_deeply(rows_of('SELECT product_id, likes, views FROM mallory.products'), expected_products(),
	"mallory's rules: likes and views exact, around " . scalar(@hijack) . ' settings-changing handler calls');

my $handled = rows_of(q{SELECT event_id, who || '|' || search_path || '|' || app || '|'
                               || coalesce(marker, '') || '|' || coalesce(local_marker, '')
                          FROM mallory.handled});
my $app0 = $handled->{ $hijack[0] } // '';
$app0 = (split /\|/, $app0)[2] // '';
is(scalar(keys %$handled), scalar(@hijack), 'the Hijack handler ran once per Hijack event, nothing else left a row');
my @leaks = grep { ($handled->{$_} // '') ne qq{mallory|"\$user", public|$app0||} } @hijack;
is(scalar @leaks, 0,
	'every handler call started as mallory, with search_path "$user", public, the worker\'s application_name '
	  . "(\"$app0\") and no marker: nothing a previous call set survived it")
  or diag join("\n", map { "$_: " . ($handled->{$_} // 'missing') } @leaks[ 0 .. ($#leaks < 9 ? $#leaks : 9) ]);
is($node->safe_psql($db,
		"SELECT count(*) FROM pg_stat_activity WHERE pid = $pid{mallory_main} AND application_name = "
		  . sql_quote($app0)),
	1, "the worker runs on, its application_name still its own (\"$app0\")");

is($node->safe_psql($db,
		q{SELECT fn || ':' || count(*) FROM mallory.calls WHERE who = 'mallory' GROUP BY fn ORDER BY fn}),
	"=(text,text):" . scalar(@hijack) . "\nquote_ident:" . scalar(@hijack),
	'positive control: the look-alikes fired for mallory\'s own code once she put her schema first, as mallory');
is($node->safe_psql($db, q{SELECT count(*) FROM mallory.calls WHERE who <> 'mallory'}), '0',
	'no look-alike was ever called by another role');
is($node->safe_psql($db,
		q{SELECT count(*) FROM mallory.calls c JOIN pg_roles r ON r.rolname = c.who WHERE r.rolsuper}),
	'0', 'no look-alike was ever called by a superuser');
is($node->safe_psql($db, q{SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'}), 'f',
	'mallory is not a superuser');

check_dead('mallory_main', \%main_dead,
	'each attempt at SET ROLE, SET SESSION AUTHORIZATION, set_config(role), CREATE TEMP TABLE and writing '
	  . "another's table is dead-lettered with its error, and nothing else");
is($node->safe_psql($db, q{SELECT count(*) FROM mallory.handled WHERE event_id LIKE 'become-%'}), '0',
	'what those handlers wrote before failing was rolled back');

# triggers
is_deeply(rows_of('SELECT k, n FROM mallory.trig_ok'), \%trig_ok,
	'the rule whose target has a settings-changing trigger is applied exactly');
is($node->safe_psql($db, 'SELECT count(*) FROM mallory.trig_bad'), '0',
	'nothing reached the table whose trigger tries SET ROLE');
check_dead('mallory_trig', \%trig_dead,
	'each message for the table whose trigger tries SET ROLE is dead-lettered with the error, and only those');
is($node->safe_psql($db, q{SELECT string_agg(DISTINCT who, ',') FROM mallory.trig_seen}), 'mallory',
	'the triggers ran as mallory');
my $probes = rows_of(q{SELECT event_id, who || '|' || search_path || '|' || app || '|' || coalesce(marker, '')
                         FROM mallory.probes});
is(scalar(keys %$probes), scalar(@probes), 'the probe handler ran once per Probe event');
my @probe_leaks = grep { ($probes->{$_} // '') ne qq{mallory|"\$user", public|$app0|} } @probes;
is(scalar @probe_leaks, 0, 'no probe saw a setting the triggers of earlier batches changed')
  or diag join("\n", map { "$_: " . ($probes->{$_} // 'missing') } @probe_leaks);

# ---- 3. one broken rule, phase 1 ------------------------------------------------------

sub check_rules_metrics
{
	my ($label, %o) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	is_deeply(rows_of('SELECT k, n FROM mallory.a_metrics'), \%a_sum, "$label: rule A exact")
	  unless $o{a_gone};
	is_deeply(rows_of('SELECT k, n FROM mallory.b_metrics WHERE n <> 0'), \%b_sum, "$label: rule B exact");
	is_deeply(rows_of('SELECT k, d FROM mallory.b_metrics WHERE d <> 0'), \%d_count, "$label: rule D exact")
	  unless $o{d_gone};
	is_deeply([ split /\n/, $node->safe_psql($db, 'SELECT event_id FROM mallory.c_log ORDER BY 1') ],
		[ sort @c_ids ], "$label: handler C ran once per C event");
	return;
}
check_rules_metrics('mallory_rules before anything breaks');
check_dead('mallory_rules', {}, 'mallory_rules: no dead letter yet');

# ---- 4. rights, phase 1 -------------------------------------------------------------

sub check_rights_metrics
{
	my ($label) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	is_deeply(rows_of('SELECT k, n FROM public.shared_metrics'), \%shared, "$label: rule Shared exact");
	is_deeply(rows_of('SELECT k, n FROM mallory.other'), \%other, "$label: rule Other exact");
	is($node->safe_psql($db, q{SELECT count(*) || ':' || string_agg(DISTINCT called_by, ',') FROM public.audit_log}),
		scalar(@audit) . ':mallory', "$label: handler Audit ran once per Audit event, as mallory");
	return;
}
check_rights_metrics('mallory_rights with every right');
check_dead('mallory_rights', {}, 'mallory_rights: no dead letter yet');

# ---- victim and backoffice, wave 1 ----------------------------------------------------

is_deeply(rows_of('SELECT k, n FROM victim.counts'), \%victim, "victim's events applied exactly");
is($node->safe_psql($db,
		q{SELECT count(*) || ':' || count(retry_requested_at) FROM eventpipe.consumer_dead_letters WHERE subscription = 'victim_sub'}),
	'1:0', "victim's garbage is dead-lettered");
is(as_role('mallory', "SELECT eventpipe.retry_consumer_dead(topic => '$topic{victim}')"), '0',
	"retry_consumer_dead(topic => victim's topic) by mallory queues none of victim's dead letters");
my $victim_dead_id = $node->safe_psql($db,
	q{SELECT id FROM eventpipe.consumer_dead_letters WHERE subscription = 'victim_sub'});
is(as_role('mallory', "SELECT eventpipe.retry_consumer_dead(ids => ARRAY[$victim_dead_id]::bigint[])"), '0',
	"... nor does naming its id");
is($node->safe_psql($db,
		q{SELECT count(retry_requested_at) FROM eventpipe.consumer_dead_letters WHERE subscription = 'victim_sub'}),
	'0', "victim's dead letter is not queued");

# eventpipe_admin members may operate any subscription
is(as_role('oncall', q{SELECT eventpipe.pause('victim_sub')}), 't', "an eventpipe_admin member pauses victim's subscription");
is(as_role('oncall', q{SELECT eventpipe.resume('victim_sub')}), 't', '... and resumes it');

my $bo_expected = expected_metrics($shop);
check_product_metrics($node, $db, $bo_expected, 'backoffice: product_metrics exact');
check_customer_metrics($node, $db, $bo_expected, 'backoffice: customer_metrics exact');
my $payments = sum_events($shop, 'PaymentCompleted');
is($node->safe_psql($db, q{SELECT count(*) || ':' || coalesce(string_agg(DISTINCT called_by, ','), '') FROM payment_log}),
	"$payments:backoffice", 'backoffice: its handler ran once per payment, as backoffice');
my $bo_dead = $node->safe_psql($db,
	q{SELECT count(*) || coalesce(': ' || min(error), '') FROM eventpipe.consumer_dead_letters WHERE subscription = 'bo_sub'});
is($bo_dead, '0', 'backoffice: no dead letter');

# ---- 3. one broken rule, phase 2 ------------------------------------------------------

as_role('mallory', 'DROP TABLE mallory.a_metrics; ALTER TABLE mallory.b_metrics DROP COLUMN d');
my @r2 = rules_events('r2', 90, a_dead => 1, d_dead => 1);
my %rules_dead;
for my $m (@r2)
{
	my $e = decode_json($m->{value});
	$rules_dead{ $e->{event_id} } = qr/^metric rule $rule_a cannot be applied: its target table \(OID \d+\) was dropped$/
	  if $e->{type} eq 'A';
	$rules_dead{ $e->{event_id} } = qr/^metric rule $rule_d cannot be applied: its column of mallory\.b_metrics was dropped or renamed$/
	  if $e->{type} eq 'D';
}
produce_messages($bootstrap, $topic{rules}, \@r2);
caught_up_ok('mallory_rules', $topic{rules});
check_rules_metrics('mallory_rules after its A target and D column were dropped', a_gone => 1, d_gone => 1);
check_dead('mallory_rules', \%rules_dead,
	'each A message is dead-lettered for its dropped target, each D message for its dropped column; no B or C message');

# ---- 4. rights revoked mid-stream -----------------------------------------------------------

$node->safe_psql($db, q{
REVOKE EXECUTE ON FUNCTION public.audit_event(jsonb, jsonb) FROM mallory;
REVOKE INSERT ON public.shared_metrics FROM mallory;
});
my (%rights_dead, @audit_before);
@audit_before = @audit;
my %shared_before = %shared;
my @g2 = rights_events('g2', 45);
for my $m (@g2)
{
	my $e = decode_json($m->{value});
	$rights_dead{ $e->{event_id} } =
	  qr/^handler $handler_audit cannot be called: its owner mallory may no longer execute (?:public\.)?audit_event\(jsonb,\s*jsonb\)$/
	  if $e->{type} eq 'Audit';
	$rights_dead{ $e->{event_id} } =
	  qr/^metric rule $rule_shared cannot be applied: its owner mallory may no longer select, insert into and update public\.shared_metrics$/
	  if $e->{type} eq 'Shared';
}
produce_messages($bootstrap, $topic{rights}, \@g2);
caught_up_ok('mallory_rights', $topic{rights});
check_dead('mallory_rights', \%rights_dead,
	'with EXECUTE and INSERT revoked, exactly the Audit and Shared messages are dead-lettered, with the reason');
is_deeply(rows_of('SELECT k, n FROM mallory.other'), \%other, 'the Other rule still applied exactly');
is_deeply(rows_of('SELECT k, n FROM public.shared_metrics'), \%shared_before,
	'shared_metrics unchanged since INSERT was revoked');
is($node->safe_psql($db, 'SELECT count(*) FROM public.audit_log'), scalar(@audit_before),
	'audit_log unchanged since EXECUTE was revoked');

# rights back, retried by mallory herself
$node->safe_psql($db, q{
GRANT EXECUTE ON FUNCTION public.audit_event(jsonb, jsonb) TO mallory;
GRANT INSERT ON public.shared_metrics TO mallory;
});
is(as_role('mallory', q{SELECT eventpipe.retry_consumer_dead(subscription => 'mallory_rights')}),
	scalar(keys %rights_dead), 'mallory queues her dead letters again');
ok(wait_until(sub {
			$node->safe_psql($db, q{SELECT count(*) FROM eventpipe.consumer_dead_letters WHERE subscription = 'mallory_rights'}) eq '0'
		}, 60),
	'the retried dead letters are applied and gone');
check_rights_metrics('mallory_rights after the rights came back and the retry');

# ---- the worker after all that: wave 2 of mallory_main ---------------------------------------

my $hijacks_w1 = scalar @hijack;
my @w2 = main_events('w2', 300);
produce_messages($bootstrap, $topic{mallory}, \@w2);
caught_up_ok('mallory_main', $topic{mallory});
is_deeply(rows_of('SELECT product_id, likes, views FROM mallory.products'), expected_products(),
	"mallory_main's worker applies later batches exactly");
is($node->safe_psql($db, q{SELECT count(*) FROM mallory.calls c JOIN pg_roles r ON r.rolname = c.who WHERE r.rolsuper}),
	'0', 'still no look-alike called by a superuser');
is(consumer_pid($node, $db, 'mallory_main'), $pid{mallory_main}, 'the same worker throughout');
check_dead('mallory_main', \%main_dead, 'mallory_main: still only the Become messages dead-lettered');

# victim once more, after the pause and resume
my @victim2 = map { my $k = 'v' . ($_ % 3); $victim{$k}++; ev('VictimEvent', "ve2-$_", k => $k) } 1 .. 30;
produce_messages($bootstrap, $topic{victim}, \@victim2);
caught_up_ok('victim_sub', $topic{victim});
is_deeply(rows_of('SELECT k, n FROM victim.counts'), \%victim, "victim's later events applied exactly too");

# ---- owners no longer recorded, owners dropped -----------------------------------------

my %ghost;
my %ghost_dead;
sub ghost_events
{
	my ($p, $n, $dead) = @_;
	my @msgs;
	for my $i (1 .. $n)
	{
		my $k = 'g' . ($i % 3);
		push @msgs, ev('GhostEvent', "$p-$i", k => $k);
		if ($dead) { $ghost_dead{"$p-$i"} = $dead } else { $ghost{$k}++ }
	}
	return @msgs;
}
produce_messages($bootstrap, $topic{ghost}, [ ghost_events('gh1', 12) ]);
caught_up_ok('ghost_sub', $topic{ghost});
is_deeply(rows_of('SELECT k, n FROM public.ghost_metrics'), \%ghost, "ghost's rule applied exactly");

# a superuser revokes the grant that records ghost as an owner, by hand
$node->safe_psql($db, 'REVOKE REFERENCES (owner) ON eventpipe.subscriptions FROM ghost');
produce_messages($bootstrap, $topic{ghost},
	[ ghost_events('gh2', 9,
		qr/^metric rule $rule_ghost cannot be applied: its owner ghost is no longer recorded as an eventpipe owner/) ]);
caught_up_ok('ghost_sub', $topic{ghost});
check_dead('ghost_sub', \%ghost_dead, 'an owner no longer recorded: its rule runs no more, each message dead-lettered');

# then takes its other rights away and drops it: nothing holds it back now
$node->safe_psql($db, qq{
REVOKE ALL ON public.ghost_metrics FROM ghost;
REVOKE EXECUTE ON FUNCTION
    $declaring
  FROM ghost;
REVOKE USAGE ON SCHEMA eventpipe FROM ghost;
DROP ROLE ghost;
});
produce_messages($bootstrap, $topic{ghost},
	[ ghost_events('gh3', 9, qr/^metric rule $rule_ghost cannot be applied: its owner \(role OID \d+\) was dropped$/) ]);
caught_up_ok('ghost_sub', $topic{ghost});
check_dead('ghost_sub', \%ghost_dead, 'a dropped owner: each message of its rule dead-lettered, saying so');
is_deeply(rows_of('SELECT k, n FROM public.ghost_metrics'), \%ghost, 'ghost_metrics unchanged since');
$node->safe_psql($db, q{SELECT eventpipe.unsubscribe('ghost_sub')});
is($node->safe_psql($db, q{SELECT count(*) FROM eventpipe.subscriptions WHERE name = 'ghost_sub'}), '0',
	"a superuser removes the dropped owner's subscription");

# ---- 6. dangling owners ---------------------------------------------------------------

my ($ret, $out, $err) = $node->psql($db, 'DROP ROLE mallory');
isnt($ret, 0, 'DROP ROLE mallory is refused while she owns subscriptions');
like($err, qr/privileges for column owner of table eventpipe\.subscriptions/,
	'... and the reason names her ownership of eventpipe objects');

$node->safe_psql($db, 'REASSIGN OWNED BY mallory TO heir; DROP OWNED BY mallory; DROP ROLE mallory');
is($node->safe_psql($db,
		q{SELECT string_agg(DISTINCT o, ',') FROM (
            SELECT owner::text AS o FROM eventpipe.subscriptions WHERE name LIKE 'mallory%'
            UNION ALL SELECT owner::text FROM eventpipe.metric_rules WHERE subscription LIKE 'mallory%'
            UNION ALL SELECT owner::text FROM eventpipe.handlers WHERE subscription LIKE 'mallory%') AS x}),
	'heir', "after REASSIGN OWNED, mallory's subscriptions, rules and handlers are heir's; mallory is gone");

my $hijacks_before = scalar @hijack;
my @w3 = main_events('w3', 150, hijack => 1);
produce_messages($bootstrap, $topic{mallory}, \@w3);
caught_up_ok('mallory_main', $topic{mallory});
is_deeply(rows_of('SELECT product_id, likes, views FROM mallory.products'), expected_products(),
	'the rules keep running, as heir, exactly');
is($node->safe_psql($db,
		'SELECT count(*) FROM mallory.handled WHERE who = \'heir\' AND event_id IN ('
		  . join(',', map { "'$_'" } @hijack[ $hijacks_before .. $#hijack ]) . ')'),
	scalar(@hijack) - $hijacks_before, 'the handler now runs as heir, once per new Hijack event');
is($node->safe_psql($db, q{SELECT count(*) FROM mallory.calls c JOIN pg_roles r ON r.rolname = c.who WHERE r.rolsuper}),
	'0', 'no look-alike called by a superuser, to the end');
check_dead('mallory_main', \%main_dead, 'mallory_main: no new dead letter as heir');

$node->safe_psql($db, 'DROP OWNED BY heir');
is($node->safe_psql($db,
		q{SELECT (SELECT count(*) FROM eventpipe.subscriptions WHERE name LIKE 'mallory%')
               + (SELECT count(*) FROM eventpipe.metric_rules WHERE subscription LIKE 'mallory%')
               + (SELECT count(*) FROM eventpipe.handlers WHERE subscription LIKE 'mallory%')}),
	'0', "DROP OWNED BY heir removed the subscriptions, rules and handlers it had inherited");
ok(wait_until(sub { !grep { consumer_pid($node, $db, $_) } qw(mallory_main mallory_trig mallory_rules mallory_rights) }, 60),
	'their workers stopped');
($ret, $out, $err) = $node->psql($db, 'DROP ROLE heir');
is($ret, 0, 'heir, owning nothing any more, can be dropped') or diag $err;
ok(consumer_pid($node, $db, 'victim_sub'), "victim's worker still runs");

# The ledger's upkeep (making tomorrow's partitions) takes a lock no role
# without rights on the ledger can hold: victim (mallory is gone by now),
# holding the advisory lock the upkeep once took, no longer keeps it from
# making them.
my $holder = $node->background_psql($db, extra_params => [ '-U', 'victim' ]);
$holder->query_safe('SELECT pg_advisory_lock(7306041658170553393)');
my $last_day = $node->safe_psql($db, q{SELECT to_char((now() AT TIME ZONE 'UTC')::date + 2, 'YYYYMMDD')});
$node->safe_psql($db, "DROP TABLE eventpipe.event_handled_$last_day, eventpipe.event_handled_runs_$last_day");
is($node->safe_psql($db,
		q{SELECT eventpipe.ledger_upkeep(7 * 86400) >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '3 days'}),
	't', 'the ledger upkeep makes its partitions while victim holds its old advisory lock');
is($node->safe_psql($db, "SELECT count(*) FROM pg_class WHERE relname IN ('event_handled_$last_day', 'event_handled_runs_$last_day')"),
	'2', '... the partitions of the day after tomorrow are back');
$holder->quit;

my @crashes = crash_lines($node, $log_start);
is(scalar @crashes, 0, 'no crash in the server log') or diag join("\n", @crashes);

stop_node($node);
ok(stop_kafka($kafka), 'Kafka stopped');
done_testing();

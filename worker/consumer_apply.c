/*
 * consumer_apply.c
 *		The consumer's statements: read its subscription and rules, apply a
 *		batch of Kafka messages in one transaction, read stored offsets on a
 *		rebalance, prune the dedup ledger.
 *
 * A batch's transaction holds, all or nothing: the dedup ledger rows of its
 * new events (INSERT ... ON CONFLICT DO NOTHING: a duplicate is no error),
 * the handlers' work, the metric upserts (deltas summed per target row, one
 * statement per target column), its dead letters and its partitions' next
 * offsets.  Metric rows are guarded by transaction-level advisory locks on
 * (target, hash bucket of the key), all of a batch's taken in one statement
 * in sorted order before any upsert, so two workers touching the same rows
 * wait for each other instead of deadlocking.
 *
 * A handler runs in a subtransaction of its own: its error dead-letters
 * that message only.  Any other error fails the whole batch; the worker then
 * applies it again isolating failures (apply_in_halves), so the messages at
 * fault are dead-lettered and the rest applied.  The worker's own
 * statements run with search_path pg_catalog, pg_temp; the user's part (see
 * become_user) as the role that declared it.  Every name is quoted.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "../extension/eventpipe.h"
#include "consumer.h"
#include "worker_loop.h"

static SPIPlanPtr subscription_plan = NULL;
static SPIPlanPtr metrics_plan = NULL;
static SPIPlanPtr handlers_plan = NULL;
static SPIPlanPtr ledger_plan = NULL;
static SPIPlanPtr forget_plan = NULL;
static SPIPlanPtr dead_plan = NULL;
static SPIPlanPtr offsets_plan = NULL;
static SPIPlanPtr read_offset_plan = NULL;
static SPIPlanPtr prune_plan = NULL;
static SPIPlanPtr lock_plan = NULL;

static SPIPlanPtr
prepare_once(SPIPlanPtr *plan, const char *sql, int nargs, Oid *types)
{
	if (*plan == NULL)
		*plan = worker_prepare_kept(sql, nargs, types, 0);
	return *plan;
}

static void
execute_plan(SPIPlanPtr plan, Datum *values, int expected)
{
	int			rc = SPI_execute_plan(plan, values, NULL, false, 0);

	if (rc != expected)
		elog(ERROR, "eventpipe consumer: statement failed: %s", SPI_result_code_string(rc));
}

/*
 * Is the extension there, and not being dropped?  DROP EXTENSION holds an
 * exclusive lock on its tables until it commits: the worker backs off
 * instead of queueing behind it.
 */
static bool
extension_ready(void)
{
	Oid			schema;
	Oid			subscriptions;

	if (!OidIsValid(get_extension_oid("eventpipe", true)))
		return false;
	schema = get_namespace_oid("eventpipe", true);
	subscriptions = OidIsValid(schema) ? get_relname_relid("subscriptions", schema) : InvalidOid;
	return OidIsValid(subscriptions) &&
		ConditionalLockRelationOid(subscriptions, AccessShareLock);
}

static char *
text_column(HeapTuple tuple, TupleDesc desc, int column)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tuple, desc, column, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

static bool
load_subscription(const char *name, Subscription *subscription)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(name)};
	SPIPlanPtr	plan = prepare_once(&subscription_plan,
									"SELECT topics, group_id, start_from, batch_size, dedup_field"
									" FROM eventpipe.subscriptions WHERE name = $1",
									1, types);
	HeapTuple	tuple;
	TupleDesc	desc;
	bool		isnull;
	Datum		topics;
	Datum	   *elements;
	int			count;
	int			i;

	execute_plan(plan, values, SPI_OK_SELECT);
	if (SPI_processed == 0)
		return false;
	tuple = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	subscription->name = pstrdup(name);
	topics = SPI_getbinval(tuple, desc, 1, &isnull);
	deconstruct_array(DatumGetArrayTypeP(topics), TEXTOID, -1, false, TYPALIGN_INT,
					  &elements, NULL, &count);
	subscription->topics = NIL;
	for (i = 0; i < count; i++)
		subscription->topics = lappend(subscription->topics, TextDatumGetCString(elements[i]));
	subscription->group_id = text_column(tuple, desc, 2);
	subscription->start_latest = strcmp(text_column(tuple, desc, 3), "latest") == 0;
	subscription->batch_size = DatumGetInt32(SPI_getbinval(tuple, desc, 4, &isnull));
	if (isnull)
		subscription->batch_size = eventpipe_consumer_batch_size;
	subscription->dedup_field = text_column(tuple, desc, 5);
	return true;
}

static void
load_rules(const char *name, ConsumerRules *rules)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(name)};
	SPIPlanPtr	plan;
	uint64		i;

	plan = prepare_once(&metrics_plan,
						"SELECT r.event_type, r.target::oid, r.target::text,"
						" quote_ident(k.attname), format_type(k.atttypid, NULL),"
						" quote_ident(r.column_name), r.key_field, r.value_field, r.owner::oid"
						" FROM eventpipe.metric_rules AS r"
						" LEFT JOIN pg_index AS i"
						"   ON i.indrelid = r.target AND i.indisprimary AND i.indnatts = 1"
						" LEFT JOIN pg_attribute AS k"
						"   ON k.attrelid = i.indrelid AND k.attnum = i.indkey[0]"
						" WHERE r.subscription = $1 ORDER BY r.id",
						1, types);
	execute_plan(plan, values, SPI_OK_SELECT);
	rules->nmetrics = (int) SPI_processed;
	rules->metrics = palloc0(sizeof(MetricRule) * (SPI_processed + 1));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		MetricRule *rule = &rules->metrics[i];
		bool		isnull;

		rule->event_type = text_column(tuple, desc, 1);
		rule->target = DatumGetObjectId(SPI_getbinval(tuple, desc, 2, &isnull));
		rule->target_name = text_column(tuple, desc, 3);
		rule->key_column = text_column(tuple, desc, 4);
		rule->key_type = text_column(tuple, desc, 5);
		rule->column = text_column(tuple, desc, 6);
		rule->key_field = text_column(tuple, desc, 7);
		rule->value_field = text_column(tuple, desc, 8);
		rule->owner = DatumGetObjectId(SPI_getbinval(tuple, desc, 9, &isnull));
	}

	plan = prepare_once(&handlers_plan,
						"SELECT event_type, handler::oid, owner::oid FROM eventpipe.handlers"
						" WHERE subscription = $1 ORDER BY id",
						1, types);
	execute_plan(plan, values, SPI_OK_SELECT);
	rules->nhandlers = (int) SPI_processed;
	rules->handlers = palloc0(sizeof(EventHandler) * (SPI_processed + 1));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		rules->handlers[i].event_type = text_column(tuple, desc, 1);
		rules->handlers[i].handler = DatumGetObjectId(SPI_getbinval(tuple, desc, 2, &isnull));
		rules->handlers[i].owner = DatumGetObjectId(SPI_getbinval(tuple, desc, 3, &isnull));
	}
}

static Datum
make_array(Datum *elements, bool *nulls, int count, Oid element_type)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			dims[1] = {count};
	int			lbs[1] = {1};

	get_typlenbyvalalign(element_type, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_md_array(elements, nulls, 1, dims, lbs, element_type,
											  typlen, typbyval, typalign));
}

/*
 * Run fn in a subtransaction; returns its error text (in the caller's
 * memory context), or NULL.  Cancel and termination are not the message's
 * fault: they go on up.
 */
static char *
run_in_subtransaction(void (*fn) (void *), void *arg)
{
	MemoryContext context = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	char	   *volatile error = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(context);
	PG_TRY();
	{
		fn(arg);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(context);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(context);
		CurrentResourceOwner = owner;
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
			edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
			ReThrowError(edata);
		error = edata->message;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(context);
	CurrentResourceOwner = owner;
	return error;
}

/*
 * Record the ledger rows of the messages to apply; those already there
 * become duplicates.  Within the batch, the first of several messages with
 * one id is the one applied.
 */
static void
claim_event_ids(ConsumedMessage *messages, int count, const char *name)
{
	Oid			types[2] = {TEXTOID, TEXTARRAYOID};
	Datum		values[2];
	Datum	   *ids = palloc(sizeof(Datum) * count);
	int		   *ordinal_of = palloc(sizeof(int) * count);
	bool	   *is_new = palloc0(sizeof(bool) * count);
	int			n = 0;
	int			i;
	uint64		row;
	SPIPlanPtr	plan;

	for (i = 0; i < count; i++)
		if (messages[i].fate == MESSAGE_APPLIED)
		{
			ordinal_of[n] = i;
			ids[n++] = CStringGetTextDatum(messages[i].event_id);
		}
	if (n == 0)
		return;
	plan = prepare_once(&ledger_plan,
						"WITH u AS ("
						"  SELECT u.id, min(u.n) AS n"
						"  FROM unnest($2::text[]) WITH ORDINALITY AS u(id, n) GROUP BY u.id),"
						" ins AS ("
						"  INSERT INTO eventpipe.event_handled AS h (subscription, event_id)"
						"  SELECT $1, u.id FROM u ORDER BY u.id COLLATE \"C\""
						"  ON CONFLICT DO NOTHING RETURNING h.event_id)"
						" SELECT u.n FROM u JOIN ins ON ins.event_id = u.id",
						2, types);
	values[0] = CStringGetTextDatum(name);
	values[1] = make_array(ids, NULL, n, TEXTOID);
	execute_plan(plan, values, SPI_OK_SELECT);
	for (row = 0; row < SPI_processed; row++)
	{
		bool		isnull;
		int64		ordinal = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[row],
														   SPI_tuptable->tupdesc, 1, &isnull));

		is_new[ordinal_of[ordinal - 1]] = true;
	}
	for (i = 0; i < count; i++)
		if (messages[i].fate == MESSAGE_APPLIED && !is_new[i])
			messages[i].fate = MESSAGE_DUPLICATE;
}

/* A dead-lettered message's id leaves the ledger: it was not applied. */
static void
forget_event_id(const ConsumedMessage *message, const char *name)
{
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2] = {CStringGetTextDatum(name), CStringGetTextDatum(message->event_id)};
	SPIPlanPtr	plan = prepare_once(&forget_plan,
									"DELETE FROM eventpipe.event_handled"
									" WHERE subscription = $1 AND event_id = $2",
									2, types);

	execute_plan(plan, values, SPI_OK_DELETE);
}

/*
 * The user's part of a batch (handlers, upserts into their tables, the
 * triggers these fire) runs as the role that declared the rule or handler,
 * with the search_path of an ordinary session ("$user", public; pg_catalog
 * still first), not the worker's superuser rights and path.
 */
typedef struct UserContext
{
	Oid			save_userid;
	int			save_sec_context;
	int			nestlevel;
} UserContext;

static void
become_user(Oid role, UserContext *context)
{
	GetUserIdAndSecContext(&context->save_userid, &context->save_sec_context);
	SetUserIdAndSecContext(role, context->save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	context->nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "\"$user\", public", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
}

static void
stop_being_user(UserContext *context)
{
	AtEOXact_GUC(true, context->nestlevel);
	SetUserIdAndSecContext(context->save_userid, context->save_sec_context);
}

typedef struct HandlerCall
{
	const ConsumedMessage *message;
} HandlerCall;

/* Call the message's handlers, each as the role that declared it. */
static void
call_handlers(void *arg)
{
	const ConsumedMessage *message = ((HandlerCall *) arg)->message;
	Datum		metadata = JsonbPGetDatum(consumer_message_metadata(message));
	ListCell   *lc;

	foreach(lc, message->handlers)
	{
		EventHandler *handler = (EventHandler *) lfirst(lc);
		FmgrInfo	flinfo;
		UserContext user;

		LOCAL_FCINFO(fcinfo, 2);

		become_user(handler->owner, &user);
		fmgr_info(handler->handler, &flinfo);
		InitFunctionCallInfoData(*fcinfo, &flinfo, 2, InvalidOid, NULL, NULL);
		fcinfo->args[0].value = JsonbPGetDatum(message->payload);
		fcinfo->args[0].isnull = false;
		fcinfo->args[1].value = metadata;
		fcinfo->args[1].isnull = false;
		(void) FunctionCallInvoke(fcinfo);	/* its result, even NULL, is ignored */
		stop_being_user(&user);
		CommandCounterIncrement();
	}
}

static void
run_handlers(ConsumedMessage *messages, int count, const char *name)
{
	int			i;

	for (i = 0; i < count; i++)
	{
		ConsumedMessage *message = &messages[i];
		HandlerCall call = {message};

		if (message->fate != MESSAGE_APPLIED || message->handlers == NIL)
			continue;
		message->error = run_in_subtransaction(call_handlers, &call);
		if (message->error != NULL)
		{
			message->fate = MESSAGE_DEAD;
			forget_event_id(message, name);
		}
	}
}

/* Are two rules one upsert: same target column, same role? */
static bool
same_group(const MetricRule *a, const MetricRule *b)
{
	return a->target == b->target && a->owner == b->owner && strcmp(a->column, b->column) == 0;
}

/*
 * The effects of the messages still to apply, as arrays: the target of
 * each, its key and its value.  Only the rules of leader's group when
 * leader >= 0.  Returns how many.
 */
static int
collect_effects(ConsumedMessage *messages, int count, const ConsumerRules *rules, int leader,
				Datum *targets, Datum *keys, Datum *values)
{
	int			n = 0;
	int			i;

	for (i = 0; i < count; i++)
	{
		ListCell   *lc;

		if (messages[i].fate != MESSAGE_APPLIED)
			continue;
		foreach(lc, messages[i].effects)
		{
			MetricEffect *effect = (MetricEffect *) lfirst(lc);
			const MetricRule *rule = &rules->metrics[effect->rule];

			if (leader >= 0 && !same_group(rule, &rules->metrics[leader]))
				continue;
			targets[n] = ObjectIdGetDatum(rule->target);
			keys[n] = effect->key;
			values[n++] = effect->value;
		}
	}
	return n;
}

/* How many effects the messages have at most. */
static int
count_effects(ConsumedMessage *messages, int count)
{
	int			n = 0;
	int			i;

	for (i = 0; i < count; i++)
		n += list_length(messages[i].effects);
	return n;
}

/*
 * Transaction-level advisory locks on the metric rows the messages touch,
 * taken in one statement in sorted order, before any upsert: two workers
 * that touch the same rows wait for each other, and, all locks coming in one
 * global order, never deadlock.  A lock covers (target, a bucket of keys by
 * hash), so a batch takes at most LOCK_BUCKETS locks per target whatever
 * its number of keys, and never fills the server's lock table.
 */
#define LOCK_BUCKETS 256

static void
lock_metric_rows(ConsumedMessage *messages, int count, const ConsumerRules *rules)
{
	int			most = count_effects(messages, count);
	Datum	   *targets = palloc(sizeof(Datum) * (most + 1));
	Datum	   *keys = palloc(sizeof(Datum) * (most + 1));
	Datum	   *deltas = palloc(sizeof(Datum) * (most + 1));
	int			n = collect_effects(messages, count, rules, -1, targets, keys, deltas);
	Datum		values[3];

	if (n == 0)
		return;
	values[0] = make_array(targets, NULL, n, OIDOID);
	values[1] = make_array(keys, NULL, n, TEXTOID);
	values[2] = Int32GetDatum(LOCK_BUCKETS);
	execute_plan(prepare_once(&lock_plan,
							  "SELECT count(pg_advisory_xact_lock(s.target, s.bucket))"
							  " FROM (SELECT DISTINCT (u.t::int8 & 2147483647)::int4 AS target,"
							  "              (hashtext(u.k) & 2147483647) % $3 AS bucket"
							  "       FROM unnest($1::oid[], $2::text[]) AS u(t, k)"
							  "       ORDER BY 1, 2) AS s",
							  3, (Oid[]) {OIDARRAYOID, TEXTARRAYOID, INT4OID}),
				 values, SPI_OK_SELECT);
}

/*
 * The upserts' plans, kept for the worker's life and found by their text:
 * parsing and planning each upsert again for every batch cost a few
 * percent of the worker's time.  Rules seldom change; when the distinct
 * statements seen pass UPSERT_PLANS_KEPT, all are dropped and made again.
 */
#define UPSERT_PLANS_KEPT 64

typedef struct KeptUpsert
{
	char	   *sql;
	SPIPlanPtr	plan;
} KeptUpsert;

static List *upsert_plans = NIL;

static SPIPlanPtr
upsert_plan(const char *sql)
{
	ListCell   *lc;
	KeptUpsert *kept;
	MemoryContext caller_context;

	foreach(lc, upsert_plans)
	{
		kept = (KeptUpsert *) lfirst(lc);
		if (strcmp(kept->sql, sql) == 0)
			return kept->plan;
	}
	if (list_length(upsert_plans) >= UPSERT_PLANS_KEPT)
	{
		foreach(lc, upsert_plans)
		{
			kept = (KeptUpsert *) lfirst(lc);
			SPI_freeplan(kept->plan);
			pfree(kept->sql);
		}
		list_free_deep(upsert_plans);
		upsert_plans = NIL;
	}
	caller_context = MemoryContextSwitchTo(TopMemoryContext);
	kept = palloc(sizeof(KeptUpsert));
	kept->sql = pstrdup(sql);
	kept->plan = NULL;
	upsert_plans = lappend(upsert_plans, kept);
	MemoryContextSwitchTo(caller_context);
	return prepare_once(&kept->plan, sql, 2, (Oid[]) {TEXTARRAYOID, TEXTARRAYOID});
}

/* One upsert for every rule of the group of rule leader. */
static void
upsert_group(ConsumedMessage *messages, int count, const ConsumerRules *rules, int leader)
{
	const MetricRule *rule = &rules->metrics[leader];
	int			most = count_effects(messages, count);
	Datum	   *targets = palloc(sizeof(Datum) * (most + 1));
	Datum	   *keys = palloc(sizeof(Datum) * (most + 1));
	Datum	   *deltas = palloc(sizeof(Datum) * (most + 1));
	int			n = collect_effects(messages, count, rules, leader, targets, keys, deltas);
	Datum		values[2];
	char	   *sql;
	UserContext user;

	if (n == 0)
		return;
	if (rule->key_column == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TABLE_DEFINITION),
				 errmsg("metric target \"%s\" has no single-column primary key any more",
						rule->target_name)));

	values[0] = make_array(keys, NULL, n, TEXTOID);
	values[1] = make_array(deltas, NULL, n, TEXTOID);
	sql = psprintf("INSERT INTO %s AS t (%s, %s)"
				   " SELECT u.k::%s, pg_catalog.sum(u.v::pg_catalog.numeric)"
				   " FROM unnest($1::pg_catalog.text[], $2::pg_catalog.text[]) AS u(k, v)"
				   " GROUP BY 1 ORDER BY 1"
				   " ON CONFLICT (%s) DO UPDATE SET %s = COALESCE(t.%s, 0) + EXCLUDED.%s",
				   rule->target_name, rule->key_column, rule->column, rule->key_type,
				   rule->key_column, rule->column, rule->column, rule->column);

	/* planned as the user too: a plan made under another search_path is made again */
	become_user(rule->owner, &user);
	if (SPI_execute_plan(upsert_plan(sql), values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "eventpipe consumer: the upsert into %s failed", rule->target_name);
	stop_being_user(&user);
}

static void
upsert_metrics(ConsumedMessage *messages, int count, const ConsumerRules *rules)
{
	int			leader;

	lock_metric_rows(messages, count, rules);
	for (leader = 0; leader < rules->nmetrics; leader++)
	{
		int			earlier;
		bool		seen = false;

		for (earlier = 0; earlier < leader && !seen; earlier++)
			seen = same_group(&rules->metrics[earlier], &rules->metrics[leader]);
		if (!seen)
			upsert_group(messages, count, rules, leader);
	}
}

typedef struct EffectsStep
{
	ConsumedMessage *messages;
	int			count;
	const char *name;
	const ConsumerRules *rules;
} EffectsStep;

/* Ledger, handlers and metrics of some of the batch's messages. */
static void
apply_effects(void *arg)
{
	EffectsStep *step = (EffectsStep *) arg;

	claim_event_ids(step->messages, step->count, step->name);
	run_handlers(step->messages, step->count, step->name);
	upsert_metrics(step->messages, step->count, step->rules);
}

static Datum
bytes_datum(const void *bytes, size_t len, bool *isnull)
{
	bytea	   *value;

	*isnull = (bytes == NULL);
	if (bytes == NULL)
		return (Datum) 0;
	value = palloc(VARHDRSZ + len);
	SET_VARSIZE(value, VARHDRSZ + len);
	memcpy(VARDATA(value), bytes, len);
	return PointerGetDatum(value);
}

/* Longest error text stored with a dead letter, in bytes. */
#define DEAD_LETTER_ERROR_MAX 1024

/*
 * An error cut to DEAD_LETTER_ERROR_MAX bytes (on a character boundary):
 * a JSON error quotes the offending token, which may be the whole value.
 */
static const char *
clipped(const char *error)
{
	int			len = strlen(error);

	if (len <= DEAD_LETTER_ERROR_MAX)
		return error;
	return psprintf("%.*s...", pg_mbcliplen(error, len, DEAD_LETTER_ERROR_MAX), error);
}

static void
store_dead_letters(ConsumerBatch *batch, const char *name)
{
	Oid			types[8] = {TEXTOID, TEXTARRAYOID, INT4ARRAYOID, INT8ARRAYOID,
	BYTEAARRAYOID, BYTEAARRAYOID, JSONBARRAYOID, TEXTARRAYOID};
	Datum		values[8];
	Datum	   *columns[7];
	bool	   *nulls[7];
	int			n = 0;
	int			i;
	int			c;
	SPIPlanPtr	plan;

	for (c = 0; c < 7; c++)
	{
		columns[c] = palloc(sizeof(Datum) * batch->count);
		nulls[c] = palloc0(sizeof(bool) * batch->count);
	}
	for (i = 0; i < batch->count; i++)
	{
		ConsumedMessage *message = &batch->messages[i];
		rd_kafka_message_t *raw = message->raw;
		Jsonb	   *headers;

		if (message->fate != MESSAGE_DEAD)
			continue;
		columns[0][n] = CStringGetTextDatum(message->topic);
		columns[1][n] = Int32GetDatum(raw->partition);
		columns[2][n] = Int64GetDatum(raw->offset);
		columns[3][n] = bytes_datum(raw->key, raw->key_len, &nulls[3][n]);
		columns[4][n] = bytes_datum(raw->payload, raw->len, &nulls[4][n]);
		headers = consumer_message_headers(raw);
		columns[5][n] = PointerGetDatum(headers);
		nulls[5][n] = (headers == NULL);
		columns[6][n] = CStringGetTextDatum(clipped(message->error));
		n++;
	}
	if (n == 0)
		return;
	plan = prepare_once(&dead_plan,
						"INSERT INTO eventpipe.consumer_dead_letters"
						" (subscription, topic, partition, \"offset\", key, value, headers, error)"
						" SELECT $1, u.* FROM unnest($2::text[], $3::int4[], $4::int8[],"
						"   $5::bytea[], $6::bytea[], $7::jsonb[], $8::text[]) AS u"
						" ON CONFLICT DO NOTHING",
						8, types);
	values[0] = CStringGetTextDatum(name);
	values[1] = make_array(columns[0], NULL, n, TEXTOID);
	values[2] = make_array(columns[1], NULL, n, INT4OID);
	values[3] = make_array(columns[2], NULL, n, INT8OID);
	values[4] = make_array(columns[3], nulls[3], n, BYTEAOID);
	values[5] = make_array(columns[4], nulls[4], n, BYTEAOID);
	values[6] = make_array(columns[5], nulls[5], n, JSONBOID);
	values[7] = make_array(columns[6], NULL, n, TEXTOID);
	execute_plan(plan, values, SPI_OK_INSERT);
}

/* Every partition of the batch resumes after its last message. */
static void
store_offsets(ConsumerBatch *batch, const char *name)
{
	Oid			types[4] = {TEXTOID, TEXTARRAYOID, INT4ARRAYOID, INT8ARRAYOID};
	Datum		values[4];
	Datum	   *topics = palloc(sizeof(Datum) * batch->count);
	Datum	   *partitions = palloc(sizeof(Datum) * batch->count);
	Datum	   *offsets = palloc(sizeof(Datum) * batch->count);
	int			i;
	SPIPlanPtr	plan;

	for (i = 0; i < batch->count; i++)
	{
		topics[i] = CStringGetTextDatum(batch->messages[i].topic);
		partitions[i] = Int32GetDatum(batch->messages[i].raw->partition);
		offsets[i] = Int64GetDatum(batch->messages[i].raw->offset);
	}
	plan = prepare_once(&offsets_plan,
						"INSERT INTO eventpipe.consumer_offsets AS o"
						" (subscription, topic, partition, next_offset)"
						" SELECT $1, u.t, u.p, max(u.o) + 1"
						" FROM unnest($2::text[], $3::int4[], $4::int8[]) AS u(t, p, o)"
						" GROUP BY u.t, u.p ORDER BY u.t, u.p"
						" ON CONFLICT (subscription, topic, partition) DO UPDATE"
						" SET next_offset = GREATEST(o.next_offset, EXCLUDED.next_offset)",
						4, types);
	values[0] = CStringGetTextDatum(name);
	values[1] = make_array(topics, NULL, batch->count, TEXTOID);
	values[2] = make_array(partitions, NULL, batch->count, INT4OID);
	values[3] = make_array(offsets, NULL, batch->count, INT8OID);
	execute_plan(plan, values, SPI_OK_INSERT);
}

/*
 * The subscription's row, in a transaction of its own.  APPLY_DONE when
 * found.
 */
ApplyResult
consumer_read_subscription(const char *name, Subscription *subscription)
{
	MemoryContext caller_context = worker_begin_transaction("eventpipe: reading the subscription");
	ApplyResult result = APPLY_NO_EXTENSION;

	if (extension_ready())
	{
		SPI_connect();
		result = APPLY_NO_SUBSCRIPTION;
		if (load_subscription(name, subscription))
		{
			MemoryContext spi_context = MemoryContextSwitchTo(caller_context);
			Subscription copy = *subscription;
			ListCell   *lc;

			copy.name = pstrdup(subscription->name);
			copy.group_id = pstrdup(subscription->group_id);
			copy.dedup_field = subscription->dedup_field ? pstrdup(subscription->dedup_field) : NULL;
			copy.topics = NIL;
			foreach(lc, subscription->topics)
				copy.topics = lappend(copy.topics, pstrdup((char *) lfirst(lc)));
			*subscription = copy;
			MemoryContextSwitchTo(spi_context);
			result = APPLY_DONE;
		}
		SPI_finish();
	}
	worker_end_transaction(caller_context);
	return result;
}

/*
 * Apply the messages in a subtransaction; if that fails, apply each half
 * the same way, down to single messages, which are then dead-lettered with
 * the error.  One bad message among n costs about 2 log2(n)
 * subtransactions, not n (every message in its own subtransaction made a
 * batch about 13 times slower).
 */
static void
apply_in_halves(ConsumedMessage *messages, int count, const char *name,
				const ConsumerRules *rules)
{
	EffectsStep step = {messages, count, name, rules};
	bool	   *to_apply = palloc(sizeof(bool) * count);
	bool		any = false;
	char	   *error;
	int			i;

	for (i = 0; i < count; i++)
	{
		to_apply[i] = messages[i].fate == MESSAGE_APPLIED;
		any |= to_apply[i];
	}
	if (!any)
		return;
	error = run_in_subtransaction(apply_effects, &step);
	if (error == NULL)
		return;
	/* all rolled back: the fates the attempt changed are void */
	for (i = 0; i < count; i++)
		if (to_apply[i])
		{
			messages[i].fate = MESSAGE_APPLIED;
			messages[i].error = NULL;
		}
	if (count == 1)
	{
		messages[0].fate = MESSAGE_DEAD;
		messages[0].error = error;
		return;
	}
	apply_in_halves(messages, count / 2, name, rules);
	apply_in_halves(messages + count / 2, count - count / 2, name, rules);
}

/*
 * What the caller may read once the transaction is over: the fates, and
 * the errors copied out of SPI's memory (freed by SPI_finish; a batch with
 * large messages gives it blocks that go back to the system, and reading
 * them then crashed the worker).  Pointers into that memory are cleared.
 */
static void
keep_outcome(ConsumerBatch *batch, MemoryContext caller_context)
{
	int			i;

	for (i = 0; i < batch->count; i++)
	{
		ConsumedMessage *message = &batch->messages[i];

		message->error = message->error ? MemoryContextStrdup(caller_context, message->error) : NULL;
		message->payload = NULL;
		message->event_type = NULL;
		message->event_id = NULL;
		message->effects = NIL;
		message->handlers = NIL;
	}
}

/*
 * Apply a batch in one transaction: interpret each message against the
 * subscription's current rules, apply the new ones (all at once, or, after
 * the batch failed, isolate_failures: see apply_in_halves), dead-letter what
 * cannot be applied, and store the next offsets.  Each message's fate says
 * what became of it.
 */
ApplyResult
consumer_apply_batch(ConsumerBatch *batch, const char *name, bool isolate_failures)
{
	MemoryContext caller_context;
	Subscription subscription;
	ConsumerRules rules;
	int			i;

	caller_context = worker_begin_transaction(isolate_failures
											  ? "eventpipe: applying a batch, isolating failures"
											  : "eventpipe: applying a batch");
	if (!extension_ready())
	{
		worker_end_transaction(caller_context);
		return APPLY_NO_EXTENSION;
	}
	SPI_connect();
	if (!load_subscription(name, &subscription))
	{
		SPI_finish();
		worker_end_transaction(caller_context);
		return APPLY_NO_SUBSCRIPTION;
	}
	load_rules(name, &rules);
	for (i = 0; i < batch->count; i++)
		consumer_message_interpret(&batch->messages[i], &subscription, &rules);

	if (!isolate_failures)
	{
		EffectsStep step = {batch->messages, batch->count, name, &rules};

		apply_effects(&step);
	}
	else
		apply_in_halves(batch->messages, batch->count, name, &rules);

	store_dead_letters(batch, name);
	store_offsets(batch, name);
	keep_outcome(batch, caller_context);
	SPI_finish();
	worker_end_transaction(caller_context);
	return APPLY_DONE;
}

/*
 * Set each partition's offset to the one stored in the database, else the
 * beginning or the end; in a transaction of its own.
 */
void
consumer_read_offsets(const char *name, rd_kafka_topic_partition_list_t *partitions,
					  bool start_latest)
{
	MemoryContext caller_context = worker_begin_transaction("eventpipe: reading the stored offsets");
	Oid			types[3] = {TEXTOID, TEXTOID, INT4OID};
	SPIPlanPtr	plan;
	int			i;

	SPI_connect();
	plan = prepare_once(&read_offset_plan,
						"SELECT next_offset FROM eventpipe.consumer_offsets"
						" WHERE subscription = $1 AND topic = $2 AND partition = $3",
						3, types);
	for (i = 0; i < partitions->cnt; i++)
	{
		rd_kafka_topic_partition_t *partition = &partitions->elems[i];
		Datum		values[3] = {CStringGetTextDatum(name),
			CStringGetTextDatum(partition->topic),
		Int32GetDatum(partition->partition)};
		bool		isnull;

		execute_plan(plan, values, SPI_OK_SELECT);
		if (SPI_processed > 0)
			partition->offset = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
															SPI_tuptable->tupdesc, 1, &isnull));
		else
			partition->offset = start_latest ? RD_KAFKA_OFFSET_END : RD_KAFKA_OFFSET_BEGINNING;
	}
	SPI_finish();
	worker_end_transaction(caller_context);
}

/*
 * Delete up to limit ledger rows of the subscription older than retention
 * seconds; returns how many.  In a transaction of its own.
 */
int64
consumer_prune_ledger(const char *name, int retention_s, int limit)
{
	MemoryContext caller_context = worker_begin_transaction("eventpipe: pruning the dedup ledger");
	Oid			types[3] = {TEXTOID, INT4OID, INT4OID};
	Datum		values[3] = {CStringGetTextDatum(name), Int32GetDatum(retention_s),
	Int32GetDatum(limit)};
	int64		pruned = 0;

	if (extension_ready())
	{
		SPI_connect();
		execute_plan(prepare_once(&prune_plan,
								  "DELETE FROM eventpipe.event_handled WHERE ctid = ANY (ARRAY("
								  "  SELECT ctid FROM eventpipe.event_handled"
								  "  WHERE subscription = $1"
								  "    AND handled_at < now() - make_interval(secs => $2)"
								  "  LIMIT $3))",
								  3, types),
					 values, SPI_OK_DELETE);
		pruned = (int64) SPI_processed;
		SPI_finish();
	}
	worker_end_transaction(caller_context);
	return pruned;
}

/*
 * The names of all subscriptions, in a transaction of its own; NIL when the
 * extension is not installed (or being dropped).
 */
List *
consumer_list_subscriptions(void)
{
	MemoryContext caller_context = worker_begin_transaction("eventpipe: reading the subscriptions");
	List	   *names = NIL;
	uint64		i;

	if (extension_ready())
	{
		SPI_connect();
		if (SPI_execute("SELECT name FROM eventpipe.subscriptions ORDER BY name", true, 0) != SPI_OK_SELECT)
			elog(ERROR, "eventpipe consumer manager: could not read eventpipe.subscriptions");
		for (i = 0; i < SPI_processed; i++)
		{
			char	   *name = text_column(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
			MemoryContext spi_context = MemoryContextSwitchTo(caller_context);

			names = lappend(names, pstrdup(name));
			MemoryContextSwitchTo(spi_context);
		}
		SPI_finish();
	}
	worker_end_transaction(caller_context);
	return names;
}

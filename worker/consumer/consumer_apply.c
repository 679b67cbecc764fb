/*
 * consumer_apply.c
 *		The consumer's statements: read its subscription and rules, apply a
 *		batch of Kafka messages in one transaction, read stored offsets on a
 *		rebalance, prune the dedup ledger.
 *
 * A batch's transaction holds, all or nothing: the dedup ledger rows of its
 * new events (a plain INSERT while the ids are all new, else INSERT ... ON
 * CONFLICT DO NOTHING: see claim_event_ids), the handlers' work, the metric
 * upserts (deltas summed per target row and column, one statement per
 * target and set of columns), its dead letters and its partitions' next
 * offsets.  Metric rows are guarded by transaction-level advisory locks on
 * (target, hash bucket of the key), all of a batch's taken in sorted order
 * before any upsert, so two workers touching the same rows
 * wait for each other instead of deadlocking.
 *
 * A handler runs in a subtransaction of its own: its error dead-letters
 * that message only.  Any other error fails the whole batch; the worker then
 * applies it again isolating failures (apply_in_halves), so the messages at
 * fault are dead-lettered and the rest applied.  The worker's own
 * statements run with search_path pg_catalog, pg_temp, and name every
 * function, operator and type with its schema all the same; the user's part
 * runs as the role that declared it (user_code.c), and a rule or handler
 * that cannot run any more dead-letters only the messages that need it.
 * Every name is quoted.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "nodes/bitmapset.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/resowner.h"
#include "utils/uuid.h"

#include "extension/eventpipe.h"
#include "consumer.h"
#include "user_code.h"
#include "worker/worker_loop.h"

static SPIPlanPtr subscription_plan = NULL;
static SPIPlanPtr metrics_plan = NULL;
static SPIPlanPtr handlers_plan = NULL;
static SPIPlanPtr ledger_plan = NULL;
static SPIPlanPtr ledger_new_plan = NULL;
static SPIPlanPtr forget_plan = NULL;
static SPIPlanPtr dead_plan = NULL;
static SPIPlanPtr offsets_plan = NULL;
static SPIPlanPtr read_offset_plan = NULL;
static SPIPlanPtr retained_offset_plan = NULL;
static SPIPlanPtr prune_plan = NULL;
static SPIPlanPtr start_offset_plan = NULL;

/* How long to wait for the broker to say where a partition ends. */
#define START_OFFSET_QUERY_MS 10000

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
									"SELECT topics, group_id, start_from, batch_size, dedup_field, id"
									" FROM eventpipe.subscriptions WHERE name OPERATOR(pg_catalog.=) $1",
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
	subscription->id = DatumGetInt32(SPI_getbinval(tuple, desc, 6, &isnull));
	return true;
}

/*
 * The type a key's text is cast to: the key column's type, or a domain's
 * base type, named without a typmod ("bpchar", not "character", which is
 * char(1) in a cast): an explicit cast to a length cuts the text to fit
 * and would fold distinct keys into one, where the assignment to the
 * column checks the length (and a domain's constraints) and refuses.
 */
static char *
key_cast_type(Oid type)
{
	return format_type_extended(getBaseType(type), -1,
								FORMAT_TYPE_TYPEMOD_GIVEN | FORMAT_TYPE_FORCE_QUALIFY);
}

/* A name column quoted as an identifier; NULL stays NULL. */
static char *
identifier_column(HeapTuple tuple, TupleDesc desc, int column)
{
	char	   *name = text_column(tuple, desc, column);

	return name ? pstrdup(quote_identifier(name)) : NULL;
}

static bool
bool_column(HeapTuple tuple, TupleDesc desc, int column)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tuple, desc, column, &isnull);

	return !isnull && DatumGetBool(d);
}

/*
 * The subscription's rules and handlers, each with what it needs from the
 * catalogs now, and the reason it cannot run (see user_code.c), if any.
 */
static void
load_rules(const char *name, ConsumerRules *rules)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(name)};
	SPIPlanPtr	plan;
	uint64		i;

	plan = prepare_once(&metrics_plan,
						"SELECT r.event_type, r.target::pg_catalog.oid, n.nspname::pg_catalog.text,"
						" c.relname::pg_catalog.text, k.attname::pg_catalog.text, k.atttypid,"
						" r.column_name, r.key_field, r.value_field, r.owner::pg_catalog.oid, r.id,"
						" col.attnum IS NOT NULL, eventpipe.owner_is_tracked(r.owner), r.confirmed"
						" FROM eventpipe.metric_rules AS r"
						" LEFT JOIN pg_catalog.pg_class AS c"
						"   ON c.oid OPERATOR(pg_catalog.=) r.target::pg_catalog.oid"
						" LEFT JOIN pg_catalog.pg_namespace AS n"
						"   ON n.oid OPERATOR(pg_catalog.=) c.relnamespace"
						" LEFT JOIN pg_catalog.pg_index AS i"
						"   ON i.indrelid OPERATOR(pg_catalog.=) c.oid AND i.indisprimary"
						"  AND i.indnatts OPERATOR(pg_catalog.=) 1"
						" LEFT JOIN pg_catalog.pg_attribute AS k"
						"   ON k.attrelid OPERATOR(pg_catalog.=) i.indrelid"
						"  AND k.attnum OPERATOR(pg_catalog.=) i.indkey[0]"
						" LEFT JOIN pg_catalog.pg_attribute AS col"
						"   ON col.attrelid OPERATOR(pg_catalog.=) c.oid"
						"  AND col.attname OPERATOR(pg_catalog.=) r.column_name"
						"  AND col.attnum OPERATOR(pg_catalog.>) 0 AND NOT col.attisdropped"
						" WHERE r.subscription OPERATOR(pg_catalog.=) $1 ORDER BY r.id",
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
		Oid			key_type;
		char	   *schema = text_column(tuple, desc, 3);

		rule->event_type = text_column(tuple, desc, 1);
		rule->target = DatumGetObjectId(SPI_getbinval(tuple, desc, 2, &isnull));
		rule->target_name = schema ? quote_qualified_identifier(schema, text_column(tuple, desc, 4))
			: psprintf("table %u", rule->target);
		rule->key_column = identifier_column(tuple, desc, 5);
		key_type = DatumGetObjectId(SPI_getbinval(tuple, desc, 6, &isnull));
		rule->key_type = isnull ? NULL : key_cast_type(key_type);
		rule->column = identifier_column(tuple, desc, 7);
		rule->key_field = text_column(tuple, desc, 8);
		rule->value_field = text_column(tuple, desc, 9);
		rule->owner = DatumGetObjectId(SPI_getbinval(tuple, desc, 10, &isnull));
		rule->fault = user_code_metric_fault(DatumGetInt64(SPI_getbinval(tuple, desc, 11, &isnull)),
											 rule->owner, bool_column(tuple, desc, 13),
											 bool_column(tuple, desc, 14),
											 rule->target, rule->target_name,
											 rule->key_column != NULL, bool_column(tuple, desc, 12));
	}

	plan = prepare_once(&handlers_plan,
						"SELECT h.event_type, h.handler::pg_catalog.oid, h.owner::pg_catalog.oid, h.id,"
						" eventpipe.owner_is_tracked(h.owner), h.confirmed"
						" FROM eventpipe.handlers AS h"
						" WHERE h.subscription OPERATOR(pg_catalog.=) $1 ORDER BY h.id",
						1, types);
	execute_plan(plan, values, SPI_OK_SELECT);
	rules->nhandlers = (int) SPI_processed;
	rules->handlers = palloc0(sizeof(EventHandler) * (SPI_processed + 1));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		EventHandler *handler = &rules->handlers[i];
		bool		isnull;

		handler->event_type = text_column(tuple, desc, 1);
		handler->handler = DatumGetObjectId(SPI_getbinval(tuple, desc, 2, &isnull));
		handler->owner = DatumGetObjectId(SPI_getbinval(tuple, desc, 3, &isnull));
		handler->fault = user_code_handler_fault(DatumGetInt64(SPI_getbinval(tuple, desc, 4, &isnull)),
												 handler->owner, bool_column(tuple, desc, 5),
												 bool_column(tuple, desc, 6),
												 handler->handler);
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

/* Is an error a message's fault?  Cancel and termination are not. */
static bool
is_message_fault(int sqlerrcode)
{
	return sqlerrcode != ERRCODE_QUERY_CANCELED && sqlerrcode != ERRCODE_ADMIN_SHUTDOWN;
}

/*
 * Run fn in a subtransaction; returns the error text (in the caller's
 * memory context) of an error that is_caught accepts, or NULL.  Any other
 * error goes on up once the subtransaction is rolled back.
 */
static char *
run_in_subtransaction(void (*fn) (void *), void *arg, bool (*is_caught) (int sqlerrcode))
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
		if (!is_caught(edata->sqlerrcode))
			ReThrowError(edata);
		error = edata->message;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(context);
	CurrentResourceOwner = owner;
	return error;
}

/*
 * A message's key in the dedup ledger: its id as a uuid when the id is
 * exactly the canonical text of one (lower-case hex, 8-4-4-4-12: what
 * uuid_out prints, so the text and the uuid stand for each other one to
 * one), else as text.  Two distinct ids are always two distinct keys.
 */
typedef struct LedgerKey
{
	bool		is_uuid;
	pg_uuid_t	uuid;
	const char *text;			/* when !is_uuid */
	int			first;			/* the batch's first message with this id */
	bool		is_new;			/* its ledger row was inserted */
} LedgerKey;

static int
hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static void
ledger_key_of(const char *id, LedgerKey *key)
{
	int			byte = 0;
	int			i;

	key->is_uuid = false;
	key->text = id;
	key->is_new = false;
	if (strlen(id) != 2 * UUID_LEN + 4)
		return;
	for (i = 0; id[i] != '\0'; i++)
	{
		int			high;
		int			low;

		if (i == 8 || i == 13 || i == 18 || i == 23)
		{
			if (id[i] != '-')
				return;
			continue;
		}
		high = hex_digit(id[i]);
		low = hex_digit(id[++i]);
		if (high < 0 || low < 0)
			return;
		key->uuid.data[byte++] = (unsigned char) (high << 4 | low);
	}
	key->is_uuid = true;
}

/* uuids first, then texts; each in byte order (the indexes' order too) */
static int
compare_ledger_keys(const void *a, const void *b)
{
	const LedgerKey *x = (const LedgerKey *) a;
	const LedgerKey *y = (const LedgerKey *) b;

	if (x->is_uuid != y->is_uuid)
		return x->is_uuid ? -1 : 1;
	return x->is_uuid ? memcmp(x->uuid.data, y->uuid.data, UUID_LEN) : strcmp(x->text, y->text);
}

static int
compare_ledger_keys_then_first(const void *a, const void *b)
{
	int			order = compare_ledger_keys(a, b);

	if (order != 0)
		return order;
	return ((const LedgerKey *) a)->first - ((const LedgerKey *) b)->first;
}

/*
 * Did the last batch's ledger rows meet ids already there?  Then the next
 * batch's go straight to INSERT ... ON CONFLICT DO NOTHING.
 */
static bool ledger_met_duplicates = false;

static bool
is_unique_violation(int sqlerrcode)
{
	return sqlerrcode == ERRCODE_UNIQUE_VIOLATION;
}

/* Insert the ledger rows of values (see claim_event_ids), all new. */
static void
insert_new_ledger_rows(void *values)
{
	execute_plan(prepare_once(&ledger_new_plan,
							  "INSERT INTO eventpipe.event_handled (subscription_id, event_uuid, event_text)"
							  " SELECT $1, u.id, u.text"
							  " FROM ROWS FROM (pg_catalog.unnest($2::pg_catalog.uuid[]),"
							  "                 pg_catalog.unnest($3::pg_catalog.text[])) AS u(id, text)",
							  3, (Oid[]) {INT4OID, UUIDARRAYOID, TEXTARRAYOID}),
				 (Datum *) values, SPI_OK_INSERT);
}

/*
 * Insert the ledger rows of values, those not there yet; the keys of the
 * ones inserted turn is_new.
 */
static void
insert_ledger_rows_not_there(Datum *values, LedgerKey *keys, int distinct)
{
	uint64		row;

	execute_plan(prepare_once(&ledger_plan,
							  "INSERT INTO eventpipe.event_handled AS h"
							  " (subscription_id, event_uuid, event_text)"
							  " SELECT $1, u.id, u.text"
							  " FROM ROWS FROM (pg_catalog.unnest($2::pg_catalog.uuid[]),"
							  "                 pg_catalog.unnest($3::pg_catalog.text[])) AS u(id, text)"
							  " ON CONFLICT DO NOTHING RETURNING h.event_uuid, h.event_text",
							  3, (Oid[]) {INT4OID, UUIDARRAYOID, TEXTARRAYOID}),
				 values, SPI_OK_INSERT_RETURNING);
	for (row = 0; row < SPI_processed; row++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[row];
		bool		isnull;
		Datum		uuid = SPI_getbinval(tuple, SPI_tuptable->tupdesc, 1, &isnull);
		LedgerKey	inserted;
		LedgerKey  *found;

		inserted.is_uuid = !isnull;
		if (inserted.is_uuid)
			inserted.uuid = *DatumGetUUIDP(uuid);
		else
			inserted.text = text_column(tuple, SPI_tuptable->tupdesc, 2);
		found = bsearch(&inserted, keys, distinct, sizeof(LedgerKey), compare_ledger_keys);
		if (found == NULL)
			elog(ERROR, "eventpipe consumer: the ledger returned an id the batch does not hold");
		found->is_new = true;
	}
	ledger_met_duplicates = SPI_processed < (uint64) distinct;
}

/*
 * A message to apply becomes a duplicate unless its ledger row is new and
 * it is the first message of the batch with that id.
 */
static void
mark_duplicates(ConsumedMessage *messages, int count, LedgerKey *keys, int distinct)
{
	int			i;

	for (i = 0; i < count; i++)
	{
		LedgerKey	key;
		LedgerKey  *found;

		if (messages[i].fate != MESSAGE_APPLIED)
			continue;
		ledger_key_of(messages[i].event_id, &key);
		found = bsearch(&key, keys, distinct, sizeof(LedgerKey), compare_ledger_keys);
		Assert(found != NULL);
		if (!found->is_new || found->first != i)
			messages[i].fate = MESSAGE_DUPLICATE;
	}
}

/*
 * Record the ledger rows of the messages to apply; those already there
 * become duplicates.  Within the batch, the first of several messages with
 * one id is the one applied.  The keys go to the server sorted and without
 * repeats, in one statement.
 *
 * Most batches hold only new ids: their rows go in with a plain INSERT in
 * a subtransaction (the speculative insertion of INSERT ... ON CONFLICT
 * cost 2 of its 5 microseconds per row).  An id already there stops it
 * with a unique violation, one per batch, never one per duplicate; the
 * subtransaction is rolled back and the rows go in with INSERT ... ON
 * CONFLICT DO NOTHING.  So do the batches after one that met a duplicate,
 * until one meets none.
 */
static void
claim_event_ids(ConsumedMessage *messages, int count, int32 ledger_id)
{
	LedgerKey  *keys = palloc(sizeof(LedgerKey) * (count + 1));
	Datum	   *uuids = palloc(sizeof(Datum) * (count + 1));
	bool	   *uuid_nulls = palloc(sizeof(bool) * (count + 1));
	Datum	   *texts = palloc(sizeof(Datum) * (count + 1));
	bool	   *text_nulls = palloc(sizeof(bool) * (count + 1));
	Datum		values[3];
	int			n = 0;
	int			distinct = 0;
	int			i;

	for (i = 0; i < count; i++)
		if (messages[i].fate == MESSAGE_APPLIED)
		{
			ledger_key_of(messages[i].event_id, &keys[n]);
			keys[n++].first = i;
		}
	if (n == 0)
		return;
	qsort(keys, n, sizeof(LedgerKey), compare_ledger_keys_then_first);
	for (i = 0; i < n; i++)
	{
		if (distinct > 0 && compare_ledger_keys(&keys[distinct - 1], &keys[i]) == 0)
			continue;
		keys[distinct] = keys[i];
		uuid_nulls[distinct] = !keys[i].is_uuid;
		uuids[distinct] = keys[i].is_uuid ? UUIDPGetDatum(&keys[distinct].uuid) : (Datum) 0;
		text_nulls[distinct] = keys[i].is_uuid;
		texts[distinct] = keys[i].is_uuid ? (Datum) 0 : CStringGetTextDatum(keys[i].text);
		distinct++;
	}

	values[0] = Int32GetDatum(ledger_id);
	values[1] = make_array(uuids, uuid_nulls, distinct, UUIDOID);
	values[2] = make_array(texts, text_nulls, distinct, TEXTOID);
	if (!ledger_met_duplicates &&
		run_in_subtransaction(insert_new_ledger_rows, values, is_unique_violation) == NULL)
	{
		for (i = 0; i < distinct; i++)
			keys[i].is_new = true;
	}
	else
		insert_ledger_rows_not_there(values, keys, distinct);
	mark_duplicates(messages, count, keys, distinct);
}

/* A dead-lettered message's id leaves the ledger: it was not applied. */
static void
forget_event_id(const ConsumedMessage *message, int32 ledger_id)
{
	LedgerKey	key;
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};

	ledger_key_of(message->event_id, &key);
	values[0] = Int32GetDatum(ledger_id);
	values[1] = key.is_uuid ? UUIDPGetDatum(&key.uuid) : (Datum) 0;
	values[2] = key.is_uuid ? (Datum) 0 : CStringGetTextDatum(key.text);
	nulls[key.is_uuid ? 2 : 1] = 'n';
	if (SPI_execute_plan(prepare_once(&forget_plan,
									  "DELETE FROM eventpipe.event_handled"
									  " WHERE subscription_id OPERATOR(pg_catalog.=) $1"
									  " AND (event_uuid OPERATOR(pg_catalog.=) $2"
									  "      OR event_text OPERATOR(pg_catalog.=) $3)",
									  3, (Oid[]) {INT4OID, UUIDOID, TEXTOID}),
						 values, nulls, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "eventpipe consumer: could not remove a dead letter's ledger row");
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
		UserCodeContext user;

		LOCAL_FCINFO(fcinfo, 2);

		user_code_enter(handler->owner, &user);
		fmgr_info(handler->handler, &flinfo);
		InitFunctionCallInfoData(*fcinfo, &flinfo, 2, InvalidOid, NULL, NULL);
		fcinfo->args[0].value = JsonbPGetDatum(message->payload);
		fcinfo->args[0].isnull = false;
		fcinfo->args[1].value = metadata;
		fcinfo->args[1].isnull = false;
		(void) FunctionCallInvoke(fcinfo);	/* its result, even NULL, is ignored */
		user_code_leave(&user);
		CommandCounterIncrement();
	}
}

static void
run_handlers(ConsumedMessage *messages, int count, int32 ledger_id)
{
	int			i;

	for (i = 0; i < count; i++)
	{
		ConsumedMessage *message = &messages[i];
		HandlerCall call = {message};

		if (message->fate != MESSAGE_APPLIED || message->handlers == NIL)
			continue;
		message->error = run_in_subtransaction(call_handlers, &call, is_message_fault);
		if (message->error != NULL)
		{
			message->fate = MESSAGE_DEAD;
			forget_event_id(message, ledger_id);
		}
	}
}

/* Do two rules write to one table as one role (so into one upsert)? */
static bool
same_target(const MetricRule *a, const MetricRule *b)
{
	return a->target == b->target && a->owner == b->owner;
}

/*
 * The effects of the messages still to apply, as arrays: the target of
 * each and its key.  Returns how many.
 */
static int
collect_effects(ConsumedMessage *messages, int count, const ConsumerRules *rules,
				Datum *targets, Datum *keys)
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

			targets[n] = ObjectIdGetDatum(rules->metrics[effect->rule].target);
			keys[n++] = effect->key;
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
 * taken in sorted order before any upsert: two workers that touch the same
 * rows wait for each other, and, all locks coming in one global order,
 * never deadlock.  A lock covers (target, a bucket of keys by hash), so a
 * batch takes at most LOCK_BUCKETS locks per target whatever its number of
 * keys, and never fills the server's lock table.  The lock is
 * pg_advisory_xact_lock(target, bucket), with bucket the key's hashtext()
 * modulo LOCK_BUCKETS, so a DBA can see and take the same locks from SQL.
 */
#define LOCK_BUCKETS 256

typedef struct RowLock
{
	int32		target;
	int32		bucket;
} RowLock;

static int
compare_row_locks(const void *a, const void *b)
{
	const RowLock *x = (const RowLock *) a;
	const RowLock *y = (const RowLock *) b;

	if (x->target != y->target)
		return x->target < y->target ? -1 : 1;
	return x->bucket - y->bucket;
}

static void
lock_metric_rows(ConsumedMessage *messages, int count, const ConsumerRules *rules)
{
	int			most = count_effects(messages, count);
	Datum	   *targets = palloc(sizeof(Datum) * (most + 1));
	Datum	   *keys = palloc(sizeof(Datum) * (most + 1));
	RowLock    *locks = palloc(sizeof(RowLock) * (most + 1));
	int			n = collect_effects(messages, count, rules, targets, keys);
	int			i;

	for (i = 0; i < n; i++)
	{
		text	   *key = DatumGetTextPP(keys[i]);
		uint32		hash = DatumGetUInt32(hash_any((unsigned char *) VARDATA_ANY(key),
												   VARSIZE_ANY_EXHDR(key)));

		locks[i].target = (int32) (DatumGetObjectId(targets[i]) & 0x7FFFFFFF);
		locks[i].bucket = (int32) ((hash & 0x7FFFFFFF) % LOCK_BUCKETS);
	}
	qsort(locks, n, sizeof(RowLock), compare_row_locks);
	for (i = 0; i < n; i++)
		if (i == 0 || compare_row_locks(&locks[i - 1], &locks[i]) != 0)
			DirectFunctionCall2(pg_advisory_xact_lock_int4,
								Int32GetDatum(locks[i].target), Int32GetDatum(locks[i].bucket));
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
upsert_plan(const char *sql, int nargs, Oid *types)
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
	return prepare_once(&kept->plan, sql, nargs, types);
}

/* One effect on a target: add value to column (an index in the target's columns) of key's row. */
typedef struct TargetDelta
{
	Datum		key;			/* text */
	int			column;
	Datum		value;			/* numeric; (Datum) 0 for one */
} TargetDelta;

/* A target row's change: the columns the batch changes in it, and by how much. */
typedef struct RowChange
{
	Datum		key;			/* text */
	Bitmapset  *set;			/* its columns */
	Datum	   *sums;			/* numeric, by column; (Datum) 0 for one not in set */
} RowChange;

static int
compare_keys(const void *a, const void *b)
{
	text	   *x = DatumGetTextPP(((const TargetDelta *) a)->key);
	text	   *y = DatumGetTextPP(((const TargetDelta *) b)->key);
	int			x_len = VARSIZE_ANY_EXHDR(x);
	int			y_len = VARSIZE_ANY_EXHDR(y);
	int			order = memcmp(VARDATA_ANY(x), VARDATA_ANY(y), Min(x_len, y_len));

	return order != 0 ? order : x_len - y_len;
}

static int
compare_keys_then_columns(const void *a, const void *b)
{
	int			order = compare_keys(a, b);

	if (order != 0)
		return order;
	return ((const TargetDelta *) a)->column - ((const TargetDelta *) b)->column;
}

static Datum
add_numerics(Datum sum, Datum value)
{
	return sum == (Datum) 0 ? value : DirectFunctionCall2(numeric_add, sum, value);
}

/* The sum of n deltas, as a numeric. */
static Datum
sum_of(const TargetDelta *deltas, int n)
{
	Datum		sum = (Datum) 0;
	int64		ones = 0;
	int			i;

	for (i = 0; i < n; i++)
	{
		if (deltas[i].value == (Datum) 0)
			ones++;
		else
			sum = add_numerics(sum, deltas[i].value);
	}
	if (ones > 0)
		sum = add_numerics(sum, NumericGetDatum(int64_to_numeric(ones)));
	return sum;
}

/*
 * One upsert of rows that change one set of columns: their keys and, per
 * column, the sums.  The keys of a text primary key are the rows as they
 * are, one per key; the keys of another type are grouped again after the
 * cast, which can make two spellings one key (7 and 07 for a bigint).
 */
static void
upsert_columns(const MetricRule *rule, char **columns, Bitmapset *set,
			   RowChange *rows, int nrows)
{
	int			ncolumns = bms_num_members(set);
	bool		text_key = strcmp(rule->key_type, "pg_catalog.text") == 0;
	Datum	   *values = palloc(sizeof(Datum) * (ncolumns + 1));
	Datum	   *column_values = palloc(sizeof(Datum) * (nrows + 1));
	Oid		   *types = palloc(sizeof(Oid) * (ncolumns + 1));
	StringInfoData names,
				selected,
				arrays,
				aliases,
				sets;
	int			column = -1;
	int			nth = 0;
	int			i;
	UserCodeContext user;

	initStringInfo(&names);
	initStringInfo(&selected);
	initStringInfo(&arrays);
	initStringInfo(&aliases);
	initStringInfo(&sets);
	for (i = 0; i < nrows; i++)
		column_values[i] = rows[i].key;
	values[0] = make_array(column_values, NULL, nrows, TEXTOID);
	types[0] = TEXTARRAYOID;
	while ((column = bms_next_member(set, column)) >= 0)
	{
		const char *name = columns[column];

		nth++;
		for (i = 0; i < nrows; i++)
			column_values[i] = rows[i].sums[column];
		values[nth] = make_array(column_values, NULL, nrows, NUMERICOID);
		types[nth] = NUMERICARRAYOID;
		appendStringInfo(&names, ", %s", name);
		appendStringInfo(&selected, text_key ? ", u.v%d" : ", pg_catalog.sum(u.v%d)", nth);
		appendStringInfo(&arrays, ", pg_catalog.unnest($%d::pg_catalog.numeric[])", nth + 1);
		appendStringInfo(&aliases, ", v%d", nth);
		appendStringInfo(&sets, "%s%s = COALESCE(t.%s, 0) OPERATOR(pg_catalog.+) EXCLUDED.%s",
						 nth > 1 ? ", " : "", name, name, name);
	}
	/* planned as the user too: a plan made under another search_path is made again */
	user_code_enter(rule->owner, &user);
	if (SPI_execute_plan(upsert_plan(psprintf("INSERT INTO %s AS t (%s%s)"
											  " SELECT u.k%s%s%s"
											  " FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[])%s) AS u(k%s)"
											  "%s"
											  " ON CONFLICT (%s) DO UPDATE SET %s",
											  rule->target_name, rule->key_column, names.data,
											  text_key ? "" : "::", text_key ? "" : rule->key_type,
											  selected.data, arrays.data, aliases.data,
											  text_key ? "" : " GROUP BY 1 ORDER BY 1",
											  rule->key_column, sets.data),
									 ncolumns + 1, types),
						 values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "eventpipe consumer: the upsert into %s failed", rule->target_name);
	user_code_leave(&user);
}

/*
 * The upserts into the target of rule leader, for all the rules that write
 * to it as its role.  The deltas are summed here, per row and column.  A
 * row gets one upsert of all the columns the batch changes in it (an event
 * counted and summed into two columns of one row is one row version, not
 * two): the rows are grouped by that set of columns, one statement per set.
 */
static void
upsert_target(ConsumedMessage *messages, int count, const ConsumerRules *rules, int leader)
{
	const MetricRule *rule = &rules->metrics[leader];
	int			most = count_effects(messages, count);
	TargetDelta *deltas = palloc(sizeof(TargetDelta) * (most + 1));
	RowChange  *rows = palloc(sizeof(RowChange) * (most + 1));
	int		   *column_of = palloc(sizeof(int) * rules->nmetrics);
	char	  **columns = palloc(sizeof(char *) * rules->nmetrics);
	List	   *sets = NIL;
	ListCell   *lc;
	int			ncolumns = 0;
	int			n = 0;
	int			nrows = 0;
	int			r;
	int			i;

	for (r = 0; r < rules->nmetrics; r++)
	{
		column_of[r] = -1;
		if (!same_target(&rules->metrics[r], rule))
			continue;
		for (i = 0; i < ncolumns && strcmp(columns[i], rules->metrics[r].column) != 0; i++)
			;
		if (i == ncolumns)
			columns[ncolumns++] = rules->metrics[r].column;
		column_of[r] = i;
	}
	for (i = 0; i < count; i++)
	{
		if (messages[i].fate != MESSAGE_APPLIED)
			continue;
		foreach(lc, messages[i].effects)
		{
			MetricEffect *effect = (MetricEffect *) lfirst(lc);

			if (column_of[effect->rule] < 0)
				continue;
			deltas[n].key = effect->key;
			deltas[n].column = column_of[effect->rule];
			deltas[n++].value = effect->value;
		}
	}
	if (n == 0)
		return;

	/* each key's row: its set of columns and their sums */
	qsort(deltas, n, sizeof(TargetDelta), compare_keys_then_columns);
	for (i = 0; i < n;)
	{
		RowChange  *row = &rows[nrows++];
		int			first = i;

		row->key = deltas[i].key;
		row->set = NULL;
		row->sums = palloc0(sizeof(Datum) * ncolumns);
		while (i < n && compare_keys(&deltas[first], &deltas[i]) == 0)
		{
			int			end = i;

			while (end < n && compare_keys_then_columns(&deltas[i], &deltas[end]) == 0)
				end++;
			row->set = bms_add_member(row->set, deltas[i].column);
			row->sums[deltas[i].column] = sum_of(&deltas[i], end - i);
			i = end;
		}
		foreach(lc, sets)
			if (bms_equal(row->set, (Bitmapset *) lfirst(lc)))
				break;
		if (lc == NULL)
			sets = lappend(sets, row->set);
	}
	/* the rows of each set together */
	foreach(lc, sets)
	{
		Bitmapset  *set = (Bitmapset *) lfirst(lc);
		RowChange  *chosen = palloc(sizeof(RowChange) * nrows);
		int			nchosen = 0;

		for (i = 0; i < nrows; i++)
			if (bms_equal(rows[i].set, set))
				chosen[nchosen++] = rows[i];
		upsert_columns(rule, columns, set, chosen, nchosen);
	}
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
			seen = same_target(&rules->metrics[earlier], &rules->metrics[leader]);
		if (!seen)
			upsert_target(messages, count, rules, leader);
	}
}

typedef struct EffectsStep
{
	ConsumedMessage *messages;
	int			count;
	int32		ledger_id;		/* the subscription's id */
	const ConsumerRules *rules;
} EffectsStep;

/* Ledger, handlers and metrics of some of the batch's messages. */
static void
apply_effects(void *arg)
{
	EffectsStep *step = (EffectsStep *) arg;

	claim_event_ids(step->messages, step->count, step->ledger_id);
	run_handlers(step->messages, step->count, step->ledger_id);
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
		headers = consumer_message_headers(message);
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
						" SELECT $1, u.* FROM ROWS FROM (pg_catalog.unnest($2::pg_catalog.text[]),"
						"   pg_catalog.unnest($3::pg_catalog.int4[]), pg_catalog.unnest($4::pg_catalog.int8[]),"
						"   pg_catalog.unnest($5::pg_catalog.bytea[]), pg_catalog.unnest($6::pg_catalog.bytea[]),"
						"   pg_catalog.unnest($7::pg_catalog.jsonb[]), pg_catalog.unnest($8::pg_catalog.text[])) AS u"
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

/*
 * Every partition of the batch resumes after its last message.  The
 * partitions' highest offsets are found here (a batch holds few partitions),
 * so the statement gets one row per partition, not one per message.
 */
static void
store_offsets(ConsumerBatch *batch, const char *name)
{
	Oid			types[4] = {TEXTOID, TEXTARRAYOID, INT4ARRAYOID, INT8ARRAYOID};
	Datum		values[4];
	const char **topics = palloc(sizeof(char *) * batch->count);
	Datum	   *topic_datums = palloc(sizeof(Datum) * batch->count);
	Datum	   *partitions = palloc(sizeof(Datum) * batch->count);
	Datum	   *next_offsets = palloc(sizeof(Datum) * batch->count);
	int			n = 0;
	int			i;
	int			p;
	SPIPlanPtr	plan;

	for (i = 0; i < batch->count; i++)
	{
		const char *topic = batch->messages[i].topic;
		int32		partition = batch->messages[i].raw->partition;
		int64		next = batch->messages[i].raw->offset + 1;

		/* a topic's messages share its name's memory: compare pointers first */
		for (p = 0; p < n; p++)
			if (DatumGetInt32(partitions[p]) == partition &&
				(topics[p] == topic || strcmp(topics[p], topic) == 0))
				break;
		if (p == n)
		{
			topics[n] = topic;
			topic_datums[n] = CStringGetTextDatum(topic);
			partitions[n] = Int32GetDatum(partition);
			next_offsets[n++] = Int64GetDatum(next);
		}
		else if (next > DatumGetInt64(next_offsets[p]))
			next_offsets[p] = Int64GetDatum(next);
	}
	if (n == 0)
		return;
	plan = prepare_once(&offsets_plan,
						"INSERT INTO eventpipe.consumer_offsets AS o"
						" (subscription, topic, partition, next_offset)"
						" SELECT $1, u.t, u.p, u.o"
						" FROM ROWS FROM (pg_catalog.unnest($2::pg_catalog.text[]),"
						"   pg_catalog.unnest($3::pg_catalog.int4[]), pg_catalog.unnest($4::pg_catalog.int8[]))"
						"   AS u(t, p, o)"
						" ORDER BY u.t, u.p"
						" ON CONFLICT (subscription, topic, partition) DO UPDATE"
						" SET next_offset = GREATEST(o.next_offset, EXCLUDED.next_offset)",
						4, types);
	values[0] = CStringGetTextDatum(name);
	values[1] = make_array(topic_datums, NULL, n, TEXTOID);
	values[2] = make_array(partitions, NULL, n, INT4OID);
	values[3] = make_array(next_offsets, NULL, n, INT8OID);
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
apply_in_halves(ConsumedMessage *messages, int count, int32 ledger_id,
				const ConsumerRules *rules)
{
	EffectsStep step = {messages, count, ledger_id, rules};
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
	error = run_in_subtransaction(apply_effects, &step, is_message_fault);
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
	apply_in_halves(messages, count / 2, ledger_id, rules);
	apply_in_halves(messages + count / 2, count - count / 2, ledger_id, rules);
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
	consumer_message_fields(&rules, &subscription);
	for (i = 0; i < batch->count; i++)
		consumer_message_interpret(&batch->messages[i], &rules);

	if (!isolate_failures)
	{
		EffectsStep step = {batch->messages, batch->count, subscription.id, &rules};

		apply_effects(&step);
	}
	else
		apply_in_halves(batch->messages, batch->count, subscription.id, &rules);

	if (batch->retry)
		consumer_settle_retries(batch);
	else
	{
		store_dead_letters(batch, name);
		store_offsets(batch, name);
	}
	keep_outcome(batch, caller_context);
	SPI_finish();
	worker_end_transaction(caller_context);
	return APPLY_DONE;
}

/* The parameters of a statement on a partition's row of consumer_offsets. */
static void
partition_offset_values(Datum *values, const char *name,
						const rd_kafka_topic_partition_t *partition, int64 offset)
{
	values[0] = CStringGetTextDatum(name);
	values[1] = CStringGetTextDatum(partition->topic);
	values[2] = Int32GetDatum(partition->partition);
	values[3] = Int64GetDatum(offset);
}

/*
 * Where a partition without a stored offset starts under start_from
 * 'latest': its end now, stored at once, in a commit that waits for the WAL
 * flush.  Seeking such a partition to "the end" at every assignment instead
 * skipped what was produced to it while it was unassigned (a rebalance, a
 * restart, a crash before its first batch committed).
 */
static int64
store_start_at_end(rd_kafka_t *rk, const char *name, const rd_kafka_topic_partition_t *partition)
{
	int64_t		low;
	int64_t		high;
	rd_kafka_resp_err_t err;
	Datum		values[4];
	bool		isnull;

	err = rd_kafka_query_watermark_offsets(rk, partition->topic, partition->partition,
										   &low, &high, START_OFFSET_QUERY_MS);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		ereport(ERROR,
				(errmsg("eventpipe consumer: could not find the end of partition %d of topic \"%s\": %s",
						(int) partition->partition, partition->topic, rd_kafka_err2str(err))));
	partition_offset_values(values, name, partition, high);
	execute_plan(prepare_once(&start_offset_plan,
							  "INSERT INTO eventpipe.consumer_offsets AS o"
							  " (subscription, topic, partition, next_offset) VALUES ($1, $2, $3, $4)"
							  " ON CONFLICT (subscription, topic, partition) DO UPDATE"
							  " SET next_offset = o.next_offset RETURNING o.next_offset",
							  4, (Oid[]) {TEXTOID, TEXTOID, INT4OID, INT8OID}),
				 values, SPI_OK_INSERT_RETURNING);
	if (set_config_option("synchronous_commit", "on", PGC_SUSET, PGC_S_OVERRIDE,
						  GUC_ACTION_LOCAL, true, 0, false) <= 0)
		elog(ERROR, "eventpipe consumer: could not make the commit wait for the WAL flush");
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/* How long to wait for a broker to say which offsets a partition holds. */
#define RETAINED_QUERY_MS 2000

/*
 * Which offsets Kafka holds of a partition: its first record (*low) and its
 * end (*high).  False when the broker cannot say; when it does not answer
 * at all (within RETAINED_QUERY_MS, or no connection) *broker_answers
 * turns false and, for the rest of the assignment, it is not asked again.
 */
static bool
retained_offsets(rd_kafka_t *rk, const rd_kafka_topic_partition_t *partition,
				 int64_t *low, int64_t *high, bool *broker_answers)
{
	rd_kafka_resp_err_t err;

	if (!*broker_answers)
		return false;
	err = rd_kafka_query_watermark_offsets(rk, partition->topic, partition->partition,
										   low, high, RETAINED_QUERY_MS);
	if (err == RD_KAFKA_RESP_ERR_NO_ERROR && *low >= 0 && *low <= *high)
		return true;
	/*
	 * A broker that does not answer is not asked again; an error it answers
	 * (the topic's leader not known yet, say), or odd offsets, count for
	 * this partition only.
	 */
	if (err == RD_KAFKA_RESP_ERR__TIMED_OUT || err == RD_KAFKA_RESP_ERR__TRANSPORT ||
		err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
		*broker_answers = false;
	ereport(LOG,
			(errmsg("eventpipe consumer: could not learn which offsets Kafka holds of partition %d of topic \"%s\" (%s); resuming at the stored offset, else at the beginning",
					(int) partition->partition, partition->topic,
					err != RD_KAFKA_RESP_ERR_NO_ERROR ? rd_kafka_err2str(err) : "no valid offsets")));
	return false;
}

/*
 * A stored offset brought within the records Kafka holds.  Below the
 * partition's first record (records deleted by retention while the
 * subscription was away) or past its end (the topic deleted and made
 * again, or records lost by the broker), the partition resumes at its
 * first record, and that is stored at once: left to librdkafka's reset, an
 * offset past the end was read from the first record at every assignment
 * while the stored one stayed past the end, and one below the start kept a
 * lag that never cleared.  When the broker does not answer, the offset is
 * used as stored.
 */
static int64
within_retained(rd_kafka_t *rk, const char *name, const rd_kafka_topic_partition_t *partition,
				int64 stored, bool *broker_answers)
{
	int64_t		low;
	int64_t		high;
	Datum		values[4];

	if (!retained_offsets(rk, partition, &low, &high, broker_answers))
		return stored;
	if (stored >= low && stored <= high)
		return stored;
	ereport(WARNING,
			(errmsg("eventpipe consumer: subscription \"%s\": the stored offset " INT64_FORMAT " of partition %d of topic \"%s\" is outside what Kafka holds (first " INT64_FORMAT ", end " INT64_FORMAT "); resuming at " INT64_FORMAT,
					name, stored, (int) partition->partition, partition->topic,
					(int64) low, (int64) high, (int64) low),
			 stored < low
			 ? errdetail("Records were deleted before this subscription applied them.")
			 : errdetail("The topic was made again, or the broker lost records.")));
	partition_offset_values(values, name, partition, low);
	execute_plan(prepare_once(&retained_offset_plan,
							  "UPDATE eventpipe.consumer_offsets SET next_offset = $4"
							  " WHERE subscription OPERATOR(pg_catalog.=) $1 AND topic OPERATOR(pg_catalog.=) $2"
							  " AND partition OPERATOR(pg_catalog.=) $3",
							  4, (Oid[]) {TEXTOID, TEXTOID, INT4OID, INT8OID}),
				 values, SPI_OK_UPDATE);
	return low;
}

/*
 * Where a partition without a stored offset starts under start_from
 * 'earliest': its first record, as an offset.  Left as the logical
 * "beginning", librdkafka looked it up only after a fixed half-second wait
 * when the partition's leader was not yet known to it, as on a consumer's
 * first assignment; "beginning" remains when the broker does not answer.
 */
static int64
first_retained(rd_kafka_t *rk, const rd_kafka_topic_partition_t *partition, bool *broker_answers)
{
	int64_t		low;
	int64_t		high;

	if (!retained_offsets(rk, partition, &low, &high, broker_answers))
		return RD_KAFKA_OFFSET_BEGINNING;
	return low;
}

/*
 * Set each partition's offset to the one stored in the database, within
 * what Kafka holds; a partition without one starts at its first record,
 * or (start_latest) at its end as of now, then stored.  In a transaction of
 * its own.
 */
void
consumer_read_offsets(rd_kafka_t *rk, const char *name,
					  rd_kafka_topic_partition_list_t *partitions, bool start_latest)
{
	MemoryContext caller_context = worker_begin_transaction("eventpipe: reading the stored offsets");
	Oid			types[3] = {TEXTOID, TEXTOID, INT4OID};
	SPIPlanPtr	plan;
	bool		broker_answers = true;
	int			i;

	SPI_connect();
	plan = prepare_once(&read_offset_plan,
						"SELECT next_offset FROM eventpipe.consumer_offsets"
						" WHERE subscription OPERATOR(pg_catalog.=) $1 AND topic OPERATOR(pg_catalog.=) $2"
						" AND partition OPERATOR(pg_catalog.=) $3",
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
			partition->offset = within_retained(rk, name, partition,
												DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
																			SPI_tuptable->tupdesc,
																			1, &isnull)),
												&broker_answers);
		else if (start_latest)
			partition->offset = store_start_at_end(rk, name, partition);
		else
			partition->offset = first_retained(rk, partition, &broker_answers);
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
								  "DELETE FROM eventpipe.event_handled"
								  " WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY("
								  "  SELECT h.ctid FROM eventpipe.event_handled AS h"
								  "  WHERE h.subscription_id OPERATOR(pg_catalog.=)"
								  "      (SELECT s.id FROM eventpipe.subscriptions AS s"
								  "        WHERE s.name OPERATOR(pg_catalog.=) $1)"
								  "    AND h.handled_at OPERATOR(pg_catalog.<)"
								  "        (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => $2))"
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

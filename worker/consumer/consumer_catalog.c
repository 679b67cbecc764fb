/*
 * consumer_catalog.c
 *		What the consumer reads of its configuration before applying a
 *		batch: its subscription's row, its metric rules, its handlers and
 *		its mirrors, each with what it needs from the system catalogs now
 *		(a mirror's target: mirror_target.c) and the reason it cannot run
 *		(see user_code.c), if any.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "extension/guc.h"
#include "consumer.h"
#include "consumer_sql.h"
#include "user_code.h"
#include "worker/worker_loop.h"

typedef enum CatalogStatement
{
	READ_SUBSCRIPTION,
	LOCK_SUBSCRIPTION,
	READ_METRIC_RULES,
	READ_HANDLERS,
	READ_MIRRORS,
	CATALOG_STATEMENTS
} CatalogStatement;

static WorkerStatement statements[CATALOG_STATEMENTS] = {
	[READ_SUBSCRIPTION] = {
		"read the subscription",
		"SELECT topics, group_id, start_from, batch_size, dedup_field, id, paused, workers"
		" FROM eventpipe.subscriptions WHERE name OPERATOR(pg_catalog.=) $1",
		false, 1, {TEXTOID}
	},
	[LOCK_SUBSCRIPTION] = {
		"lock the batch's subscription against its drop",
		"SELECT FROM eventpipe.subscriptions AS s WHERE s.id OPERATOR(pg_catalog.=) $1"
		" FOR KEY SHARE OF s",
		false, 1, {INT4OID}
	},
	[READ_METRIC_RULES] = {
		"read the metric rules",
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
		false, 1, {TEXTOID}
	},
	[READ_HANDLERS] = {
		"read the handlers",
		"SELECT h.event_type, h.handler::pg_catalog.oid, h.owner::pg_catalog.oid, h.id,"
		" eventpipe.owner_is_tracked(h.owner), h.confirmed"
		" FROM eventpipe.handlers AS h"
		" WHERE h.subscription OPERATOR(pg_catalog.=) $1 ORDER BY h.id",
		false, 1, {TEXTOID}
	},
	[READ_MIRRORS] = {
		"read the mirrors",
		"SELECT m.id, m.source, m.target::pg_catalog.oid, m.format, m.owner::pg_catalog.oid,"
		" eventpipe.owner_is_tracked(m.owner), m.confirmed"
		" FROM eventpipe.mirrors AS m"
		" WHERE m.subscription OPERATOR(pg_catalog.=) $1 ORDER BY m.id",
		false, 1, {TEXTOID}
	},
};

/* The subscription's row (SPI connected); false when there is none. */
bool
consumer_load_subscription(const char *name, Subscription *subscription)
{
	Datum		values[1] = {CStringGetTextDatum(name)};
	HeapTuple	tuple;
	TupleDesc	desc;
	bool		isnull;
	Datum		topics;
	Datum	   *elements;
	int			count;
	int			i;

	worker_run_statement(&statements[READ_SUBSCRIPTION], values, NULL, SPI_OK_SELECT);
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
	subscription->group_id = worker_text_column(tuple, desc, 2);
	subscription->start_latest = strcmp(worker_text_column(tuple, desc, 3), "latest") == 0;
	subscription->batch_size = DatumGetInt32(SPI_getbinval(tuple, desc, 4, &isnull));
	if (isnull)
		subscription->batch_size = eventpipe_consumer_batch_size;
	subscription->dedup_field = worker_text_column(tuple, desc, 5);
	subscription->id = DatumGetInt32(SPI_getbinval(tuple, desc, 6, &isnull));
	subscription->paused = DatumGetBool(SPI_getbinval(tuple, desc, 7, &isnull));
	subscription->workers = DatumGetInt32(SPI_getbinval(tuple, desc, 8, &isnull));
	return true;
}

/*
 * Keep the subscription of that id from being dropped until the
 * transaction ends; false if it is gone.  What a batch stores (offsets,
 * dead letters) names its subscription by name, which a subscription made
 * again under it would take over.
 */
bool
consumer_lock_subscription(int32 id)
{
	Datum		values[1] = {Int32GetDatum(id)};

	worker_run_statement(&statements[LOCK_SUBSCRIPTION], values, NULL, SPI_OK_SELECT);
	return SPI_processed > 0;
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
	char	   *name = worker_text_column(tuple, desc, column);

	return name ? pstrdup(quote_identifier(name)) : NULL;
}

static bool
bool_column(HeapTuple tuple, TupleDesc desc, int column)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tuple, desc, column, &isnull);

	return !isnull && DatumGetBool(d);
}

/* The subscription's mirrors, each with its target as it is now (SPI connected). */
static void
load_mirrors(const char *name, ConsumerRules *rules)
{
	Datum		values[1] = {CStringGetTextDatum(name)};
	SPITupleTable *table;
	uint64		count;
	uint64		i;

	worker_run_statement(&statements[READ_MIRRORS], values, NULL, SPI_OK_SELECT);
	table = SPI_tuptable;
	count = SPI_processed;
	rules->nmirrors = (int) count;
	rules->mirrors = palloc0(sizeof(MirrorRule) * (count + 1));
	for (i = 0; i < count; i++)
	{
		HeapTuple	tuple = table->vals[i];
		TupleDesc	desc = table->tupdesc;
		MirrorRule *mirror = &rules->mirrors[i];
		bool		isnull;
		char	   *target_fault;

		mirror->id = DatumGetInt64(SPI_getbinval(tuple, desc, 1, &isnull));
		mirror->source = worker_text_column(tuple, desc, 2);
		mirror->target = DatumGetObjectId(SPI_getbinval(tuple, desc, 3, &isnull));
		mirror->debezium = strcmp(worker_text_column(tuple, desc, 4), "debezium") == 0;
		mirror->owner = DatumGetObjectId(SPI_getbinval(tuple, desc, 5, &isnull));
		target_fault = mirror_target_describe(mirror);
		mirror->fault = user_code_mirror_fault(mirror->id, mirror->owner,
											   bool_column(tuple, desc, 6),
											   bool_column(tuple, desc, 7),
											   mirror->target, mirror->target_name, target_fault);
	}
}

/*
 * The subscription's rules, handlers and mirrors, each with what it needs
 * from the catalogs now, and the reason it cannot run (see user_code.c), if
 * any.  SPI connected.
 */
void
consumer_load_rules(const char *name, ConsumerRules *rules)
{
	Datum		values[1] = {CStringGetTextDatum(name)};
	uint64		i;

	worker_run_statement(&statements[READ_METRIC_RULES], values, NULL, SPI_OK_SELECT);
	rules->nmetrics = (int) SPI_processed;
	rules->metrics = palloc0(sizeof(MetricRule) * (SPI_processed + 1));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		MetricRule *rule = &rules->metrics[i];
		bool		isnull;
		Oid			key_type;
		char	   *schema = worker_text_column(tuple, desc, 3);

		rule->event_type = worker_text_column(tuple, desc, 1);
		rule->target = DatumGetObjectId(SPI_getbinval(tuple, desc, 2, &isnull));
		rule->target_name = schema ? quote_qualified_identifier(schema, worker_text_column(tuple, desc, 4))
			: psprintf("table %u", rule->target);
		rule->key_column = identifier_column(tuple, desc, 5);
		key_type = DatumGetObjectId(SPI_getbinval(tuple, desc, 6, &isnull));
		rule->key_type = isnull ? NULL : key_cast_type(key_type);
		rule->column = identifier_column(tuple, desc, 7);
		rule->key_field = worker_text_column(tuple, desc, 8);
		rule->value_field = worker_text_column(tuple, desc, 9);
		rule->owner = DatumGetObjectId(SPI_getbinval(tuple, desc, 10, &isnull));
		rule->fault = user_code_metric_fault(DatumGetInt64(SPI_getbinval(tuple, desc, 11, &isnull)),
											 rule->owner, bool_column(tuple, desc, 13),
											 bool_column(tuple, desc, 14),
											 rule->target, rule->target_name,
											 rule->key_column != NULL, bool_column(tuple, desc, 12));
	}

	worker_run_statement(&statements[READ_HANDLERS], values, NULL, SPI_OK_SELECT);
	rules->nhandlers = (int) SPI_processed;
	rules->handlers = palloc0(sizeof(EventHandler) * (SPI_processed + 1));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		EventHandler *handler = &rules->handlers[i];
		bool		isnull;

		handler->event_type = worker_text_column(tuple, desc, 1);
		handler->handler = DatumGetObjectId(SPI_getbinval(tuple, desc, 2, &isnull));
		handler->owner = DatumGetObjectId(SPI_getbinval(tuple, desc, 3, &isnull));
		handler->fault = user_code_handler_fault(DatumGetInt64(SPI_getbinval(tuple, desc, 4, &isnull)),
												 handler->owner, bool_column(tuple, desc, 5),
												 bool_column(tuple, desc, 6),
												 handler->handler);
	}
	load_mirrors(name, rules);
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

	if (consumer_extension_ready())
	{
		worker_spi_connect();
		result = APPLY_NO_SUBSCRIPTION;
		if (consumer_load_subscription(name, subscription))
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

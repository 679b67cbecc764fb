/*
 * subscriptions_trigger.c
 *		The trigger on eventpipe.subscriptions: checks the topic names of a
 *		new or changed row as Kafka would, and its number of workers, and
 *		wakes the consumer manager at commit so it starts, restarts or stops
 *		the subscription's workers within moments rather than at its next
 *		poll.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/rel.h"

#include "eventpipe.h"
#include "shmem.h"

PG_FUNCTION_INFO_V1(eventpipe_subscriptions_changed);

static void
check_topics(HeapTuple tuple, TupleDesc desc)
{
	bool		isnull;
	Datum		topics = heap_getattr(tuple, 2, desc, &isnull);
	Datum	   *elements;
	bool	   *nulls;
	int			count;
	int			i;

	if (isnull)
		return;					/* the NOT NULL constraint says so */
	deconstruct_array(DatumGetArrayTypeP(topics), TEXTOID, -1, false, TYPALIGN_INT,
					  &elements, &nulls, &count);
	for (i = 0; i < count; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("a subscription's topics may not be NULL")));
		eventpipe_check_topic_name(TextDatumGetCString(elements[i]));
	}
}

/*
 * The CHECK constraint says the same; this says it with the limit and what
 * bounds it, before the constraint is reached.
 */
static void
check_workers(HeapTuple tuple, TupleDesc desc)
{
	int			column = SPI_fnumber(desc, "workers");
	bool		isnull;
	int32		workers;

	if (column <= 0)
		return;					/* a script of an older version is running */
	workers = DatumGetInt32(heap_getattr(tuple, column, desc, &isnull));
	if (!isnull && (workers < 1 || workers > EVENTPIPE_MAX_SUBSCRIPTION_WORKERS))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a subscription's workers must be between 1 and %d, not %d",
						EVENTPIPE_MAX_SUBSCRIPTION_WORKERS, workers),
				 errhint("More workers than the topics' partitions only sit idle; each takes one of max_worker_processes.")));
}

Datum
eventpipe_subscriptions_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigger = (TriggerData *) fcinfo->context;
	HeapTuple	result;

	eventpipe_require_own_table(fcinfo, "subscriptions_changed", "subscriptions");
	if (!TRIGGER_FIRED_FOR_ROW(trigger->tg_event))
		elog(ERROR, "eventpipe_subscriptions_changed: not called as a row trigger");

	if (TRIGGER_FIRED_BY_DELETE(trigger->tg_event))
		result = trigger->tg_trigtuple;
	else
	{
		result = TRIGGER_FIRED_BY_UPDATE(trigger->tg_event) ? trigger->tg_newtuple
			: trigger->tg_trigtuple;
		check_topics(result, RelationGetDescr(trigger->tg_relation));
		check_workers(result, RelationGetDescr(trigger->tg_relation));
	}
	eventpipe_wake_consumer_manager_at_commit();
	return PointerGetDatum(result);
}

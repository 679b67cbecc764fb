/*
 * subscriptions_trigger.c
 *		The trigger on eventpipe.subscriptions: checks the topic names of a
 *		new or changed row as Kafka would, and wakes the consumer manager at
 *		commit so it starts, restarts or stops the subscription's worker
 *		within moments rather than at its next poll.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/rel.h"

#include "eventpipe.h"

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

Datum
eventpipe_subscriptions_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigger = (TriggerData *) fcinfo->context;
	HeapTuple	result;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_FOR_ROW(trigger->tg_event))
		elog(ERROR, "eventpipe_subscriptions_changed: not called as a row trigger");

	if (TRIGGER_FIRED_BY_DELETE(trigger->tg_event))
		result = trigger->tg_trigtuple;
	else
	{
		result = TRIGGER_FIRED_BY_UPDATE(trigger->tg_event) ? trigger->tg_newtuple
			: trigger->tg_trigtuple;
		check_topics(result, RelationGetDescr(trigger->tg_relation));
	}
	eventpipe_wake_consumer_manager_at_commit();
	return PointerGetDatum(result);
}

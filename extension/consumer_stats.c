/*
 * consumer_stats.c
 *		eventpipe.consumer_stats(): one row per consumer worker slot in
 *		shared memory (a subscription that has had a worker since the server
 *		started), with its state and counters.
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "eventpipe.h"

PG_FUNCTION_INFO_V1(eventpipe_consumer_stats);

#define CONSUMER_STATS_COLS 11

Datum
eventpipe_consumer_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			i;

	InitMaterializedSRF(fcinfo, 0);

	for (i = 0; i < EVENTPIPE_MAX_CONSUMERS; i++)
	{
		ConsumerSlot *slot = &eventpipe_shared->consumer[i];
		Datum		values[CONSUMER_STATS_COLS];
		bool		nulls[CONSUMER_STATS_COLS];
		char		subscription[EVENTPIPE_SUBSCRIPTION_LEN];
		pid_t		pid;
		ConsumerState state;
		char		last_error[EVENTPIPE_ERROR_LEN];
		TimestampTz last_error_time;
		TimestampTz stats_reset;

		LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
		strlcpy(subscription, slot->subscription, sizeof(subscription));
		pid = slot->pid;
		state = slot->state;
		strlcpy(last_error, slot->last_error, sizeof(last_error));
		last_error_time = slot->last_error_time;
		stats_reset = eventpipe_shared->stats_reset;
		LWLockRelease(eventpipe_shared->lock);

		if (subscription[0] == '\0')
			continue;

		memset(nulls, 0, sizeof(nulls));
		values[0] = CStringGetTextDatum(subscription);
		values[1] = Int32GetDatum(pid);
		nulls[1] = (pid == 0);
		values[2] = CStringGetTextDatum(eventpipe_consumer_state_name(state));
		values[3] = Int64GetDatum(pg_atomic_read_u64(&slot->events_applied));
		values[4] = Int64GetDatum(pg_atomic_read_u64(&slot->duplicates));
		values[5] = Int64GetDatum(pg_atomic_read_u64(&slot->unmatched));
		values[6] = Int64GetDatum(pg_atomic_read_u64(&slot->events_dead));
		values[7] = Int64GetDatum(pg_atomic_read_u64(&slot->batches));
		values[8] = CStringGetTextDatum(last_error);
		nulls[8] = (last_error[0] == '\0');
		values[9] = TimestampTzGetDatum(last_error_time);
		nulls[9] = (last_error_time == 0);
		values[10] = TimestampTzGetDatum(stats_reset);

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

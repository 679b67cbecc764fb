/*
 * consumer_stats.c
 *		eventpipe.consumer_stats(): one row per consumer worker slot in
 *		shared memory (a subscription that has had a worker since the server
 *		started), with its state and counters, and one per subscription
 *		that waits for a worker (no pid, state "waiting for a worker slot",
 *		the reason and its remedy in last_error, since when in
 *		last_error_time).
 *
 * A waiting subscription that had a worker before keeps its one row: the
 * waiting shows in its state and last_error (its worker's last error is
 * back once a worker runs again), so pg_stat_consumer, which joins on the
 * subscription, still has one row per subscription and partition.
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "shmem.h"

PG_FUNCTION_INFO_V1(eventpipe_consumer_stats);

#define CONSUMER_STATS_COLS 11

/* The state of a subscription without a worker because none could start. */
#define WAITING_STATE "waiting for a worker slot"

typedef struct WaitingList
{
	ConsumerWaiting entries[EVENTPIPE_MAX_WAITING_CONSUMERS];
	bool		shown[EVENTPIPE_MAX_WAITING_CONSUMERS];
	int			listed;
	int			count;			/* listed or not */
} WaitingList;

/* Why it waits and what to raise, for last_error. */
static char *
waiting_reason(const WaitingList *list, ConsumerWaitCause cause)
{
	if (cause == CONSUMER_WAIT_EVENTPIPE_SLOT)
		return psprintf("all %d consumer slots of eventpipe are taken (%d subscriptions wait): "
						"unsubscribe another subscription, or build eventpipe with a larger EVENTPIPE_MAX_CONSUMERS",
						EVENTPIPE_MAX_CONSUMERS, list->count);
	return psprintf("max_worker_processes (%d) is exhausted (%d subscriptions wait): "
					"raise it; eventpipe needs 2 + eventpipe.relay_workers + one per subscription",
					max_worker_processes, list->count);
}

static ConsumerWaiting *
waiting_entry(WaitingList *list, const char *subscription)
{
	int			i;

	for (i = 0; i < list->listed; i++)
		if (strcmp(list->entries[i].subscription, subscription) == 0)
		{
			list->shown[i] = true;
			return &list->entries[i];
		}
	return NULL;
}

static void
put_waiting_row(ReturnSetInfo *rsinfo, const WaitingList *list, const ConsumerWaiting *entry,
				TimestampTz stats_reset)
{
	Datum		values[CONSUMER_STATS_COLS];
	bool		nulls[CONSUMER_STATS_COLS];
	int			i;

	memset(nulls, 0, sizeof(nulls));
	values[0] = CStringGetTextDatum(entry->subscription);
	nulls[1] = true;
	values[2] = CStringGetTextDatum(WAITING_STATE);
	for (i = 3; i <= 7; i++)
		values[i] = Int64GetDatum(0);
	values[8] = CStringGetTextDatum(waiting_reason(list, entry->cause));
	values[9] = TimestampTzGetDatum(entry->since);
	values[10] = TimestampTzGetDatum(stats_reset);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

Datum
eventpipe_consumer_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	WaitingList *waiting = palloc0(sizeof(WaitingList));
	TimestampTz stats_reset;
	int			i;

	InitMaterializedSRF(fcinfo, 0);

	LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
	waiting->listed = eventpipe_shared->consumer_waiting_listed;
	waiting->count = eventpipe_shared->consumer_waiting_count;
	memcpy(waiting->entries, eventpipe_shared->consumer_waiting,
		   sizeof(ConsumerWaiting) * waiting->listed);
	LWLockRelease(eventpipe_shared->lock);

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
		ConsumerWaiting *waits;

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
		/* a live worker wins over a list up to a second old */
		waits = waiting_entry(waiting, subscription);

		memset(nulls, 0, sizeof(nulls));
		values[0] = CStringGetTextDatum(subscription);
		values[1] = Int32GetDatum(pid);
		nulls[1] = (pid == 0);
		values[2] = CStringGetTextDatum(waits != NULL && pid == 0 ? WAITING_STATE :
										eventpipe_consumer_state_name(state));
		values[3] = Int64GetDatum(pg_atomic_read_u64(&slot->events_applied));
		values[4] = Int64GetDatum(pg_atomic_read_u64(&slot->duplicates));
		values[5] = Int64GetDatum(pg_atomic_read_u64(&slot->unmatched));
		values[6] = Int64GetDatum(pg_atomic_read_u64(&slot->events_dead));
		values[7] = Int64GetDatum(pg_atomic_read_u64(&slot->batches));
		if (waits != NULL && pid == 0)
		{
			values[8] = CStringGetTextDatum(waiting_reason(waiting, waits->cause));
			values[9] = TimestampTzGetDatum(waits->since);
		}
		else
		{
			values[8] = CStringGetTextDatum(last_error);
			nulls[8] = (last_error[0] == '\0');
			values[9] = TimestampTzGetDatum(last_error_time);
			nulls[9] = (last_error_time == 0);
		}
		values[10] = TimestampTzGetDatum(stats_reset);

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}

	if (waiting->listed > 0)
	{
		LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
		stats_reset = eventpipe_shared->stats_reset;
		LWLockRelease(eventpipe_shared->lock);
		for (i = 0; i < waiting->listed; i++)
			if (!waiting->shown[i])
				put_waiting_row(rsinfo, waiting, &waiting->entries[i], stats_reset);
	}
	return (Datum) 0;
}

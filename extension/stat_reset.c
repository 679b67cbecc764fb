/*
 * stat_reset.c
 *		eventpipe.stat_reset(): sets the relay and consumer counters of
 *		pg_stat_relay, pg_stat_consumer and consumer_stats() back to zero
 *		(per subscription and per partition), clears their last errors and
 *		stamps stats_reset, as pg_stat_statements_reset() does.  High
 *		watermarks are not counters: they stay.
 *
 * The error fields are cleared under EventpipeShared->lock; the counters
 * are atomics a worker may be adding to at that moment, so an increment
 * racing the reset may survive it (or be lost), never corrupt it.
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/timestamp.h"

#include "shmem.h"

PG_FUNCTION_INFO_V1(eventpipe_stat_reset);

static void
reset_relay_slot(RelaySlot *slot)
{
	pg_atomic_write_u64(&slot->events_sent, 0);
	pg_atomic_write_u64(&slot->events_failed, 0);
	pg_atomic_write_u64(&slot->events_retried, 0);
	pg_atomic_write_u64(&slot->events_dead, 0);
	pg_atomic_write_u64(&slot->batches, 0);
	pg_atomic_write_u64(&slot->bytes_sent, 0);
	pg_atomic_write_u64(&slot->last_latency_us, 0);
	slot->last_error[0] = '\0';
	slot->last_error_time = 0;
}

static void
reset_consumer_counters(ConsumerSlot *slot)
{
	pg_atomic_write_u64(&slot->events_applied, 0);
	pg_atomic_write_u64(&slot->duplicates, 0);
	pg_atomic_write_u64(&slot->unmatched, 0);
	pg_atomic_write_u64(&slot->events_dead, 0);
	pg_atomic_write_u64(&slot->batches, 0);
	slot->last_error[0] = '\0';
	slot->last_error_time = 0;
}

Datum
eventpipe_stat_reset(PG_FUNCTION_ARGS)
{
	TimestampTz now = GetCurrentTimestamp();
	int			i;

	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < EVENTPIPE_MAX_RELAY_WORKERS; i++)
		reset_relay_slot(&eventpipe_shared->relay[i]);
	for (i = 0; i < EVENTPIPE_MAX_CONSUMERS; i++)
		reset_consumer_counters(&eventpipe_shared->consumer[i]);
	eventpipe_reset_consumer_partition_counters();
	eventpipe_shared->stats_reset = now;
	LWLockRelease(eventpipe_shared->lock);
	PG_RETURN_TIMESTAMPTZ(now);
}

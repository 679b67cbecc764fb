/*
 * consumer_partitions.c
 *		The per-partition counters of the consumer workers in shared memory,
 *		and eventpipe.consumer_partition_stats(), which shows them (with the
 *		high watermark librdkafka last reported) behind the view
 *		eventpipe.pg_stat_consumer.
 *
 * A bounded table of EVENTPIPE_MAX_CONSUMER_PARTITIONS slots, each found by
 * (subscription, topic, partition): a worker that restarts finds its
 * counters again, as pg_stat_statements' entries outlive the sessions that
 * made them.  A subscription's slots are freed with its consumer slot (see
 * shmem.c).  When the table is full a partition has no slot: its counts
 * still reach the subscription's totals (consumer_stats()).
 *
 * Locking: the names and database of a slot are written under
 * EventpipeShared->lock (exclusive to take or free a slot, shared to look
 * one up); the counters and the watermark are atomics written by the
 * subscription's worker only and read without a lock.
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"

#include "shmem.h"

PG_FUNCTION_INFO_V1(eventpipe_consumer_partition_stats);

static void
clear_counters(ConsumerPartitionSlot *slot)
{
	pg_atomic_write_u64(&slot->events_applied, 0);
	pg_atomic_write_u64(&slot->duplicates, 0);
	pg_atomic_write_u64(&slot->unmatched, 0);
	pg_atomic_write_u64(&slot->events_dead, 0);
}

/* At server start (shmem.c), under AddinShmemInitLock: every slot free. */
void
eventpipe_init_consumer_partitions(void)
{
	int			i;

	for (i = 0; i < EVENTPIPE_MAX_CONSUMER_PARTITIONS; i++)
	{
		ConsumerPartitionSlot *slot = &eventpipe_shared->consumer_partition[i];

		slot->subscription[0] = '\0';
		pg_atomic_init_u64(&slot->events_applied, 0);
		pg_atomic_init_u64(&slot->duplicates, 0);
		pg_atomic_init_u64(&slot->unmatched, 0);
		pg_atomic_init_u64(&slot->events_dead, 0);
		pg_atomic_init_u64(&slot->high_watermark, EVENTPIPE_UNKNOWN_WATERMARK);
	}
}

static ConsumerPartitionSlot *
find(const char *subscription, const char *topic, int32 partition, ConsumerPartitionSlot **free_slot)
{
	int			i;

	for (i = 0; i < EVENTPIPE_MAX_CONSUMER_PARTITIONS; i++)
	{
		ConsumerPartitionSlot *slot = &eventpipe_shared->consumer_partition[i];

		if (slot->subscription[0] == '\0')
		{
			if (free_slot != NULL && *free_slot == NULL)
				*free_slot = slot;
		}
		else if (slot->partition == partition && strcmp(slot->subscription, subscription) == 0 &&
				 strcmp(slot->topic, topic) == 0)
			return slot;
	}
	return NULL;
}

/*
 * The slot of this partition of the subscription, taken (counters at zero)
 * if it has none; NULL when the table is full.  For the subscription's
 * worker: the database recorded is the caller's.
 */
ConsumerPartitionSlot *
eventpipe_consumer_partition_slot(const char *subscription, const char *topic, int32 partition)
{
	ConsumerPartitionSlot *slot;
	ConsumerPartitionSlot *free_slot = NULL;

	LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
	slot = find(subscription, topic, partition, NULL);
	LWLockRelease(eventpipe_shared->lock);
	if (slot != NULL)
		return slot;

	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
	slot = find(subscription, topic, partition, &free_slot);
	if (slot == NULL && free_slot != NULL)
	{
		slot = free_slot;
		strlcpy(slot->subscription, subscription, sizeof(slot->subscription));
		strlcpy(slot->topic, topic, sizeof(slot->topic));
		slot->partition = partition;
		slot->database = MyDatabaseId;
		clear_counters(slot);
		pg_atomic_write_u64(&slot->high_watermark, EVENTPIPE_UNKNOWN_WATERMARK);
	}
	LWLockRelease(eventpipe_shared->lock);
	return slot;
}

/* Free the slots of a subscription that is gone.  Caller holds the lock exclusively. */
void
eventpipe_forget_consumer_partitions(const char *subscription)
{
	int			i;

	for (i = 0; i < EVENTPIPE_MAX_CONSUMER_PARTITIONS; i++)
	{
		ConsumerPartitionSlot *slot = &eventpipe_shared->consumer_partition[i];

		if (strcmp(slot->subscription, subscription) == 0)
			slot->subscription[0] = '\0';
	}
}

/* For stat_reset(): every partition's counters back to zero (watermarks stay). */
void
eventpipe_reset_consumer_partition_counters(void)
{
	int			i;

	for (i = 0; i < EVENTPIPE_MAX_CONSUMER_PARTITIONS; i++)
		clear_counters(&eventpipe_shared->consumer_partition[i]);
}

#define PARTITION_STATS_COLS 8

/*
 * The partitions of this database's subscriptions: subscription, topic,
 * partition, events_applied, duplicates, unmatched, events_dead,
 * high_watermark (NULL when unknown).
 */
Datum
eventpipe_consumer_partition_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			i;

	InitMaterializedSRF(fcinfo, 0);

	for (i = 0; i < EVENTPIPE_MAX_CONSUMER_PARTITIONS; i++)
	{
		ConsumerPartitionSlot *slot = &eventpipe_shared->consumer_partition[i];
		Datum		values[PARTITION_STATS_COLS];
		bool		nulls[PARTITION_STATS_COLS];
		char		subscription[EVENTPIPE_SUBSCRIPTION_LEN];
		char		topic[EVENTPIPE_TOPIC_LEN];
		int32		partition;
		Oid			database;
		uint64		watermark;

		LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
		strlcpy(subscription, slot->subscription, sizeof(subscription));
		strlcpy(topic, slot->topic, sizeof(topic));
		partition = slot->partition;
		database = slot->database;
		LWLockRelease(eventpipe_shared->lock);

		if (subscription[0] == '\0' || database != MyDatabaseId)
			continue;

		memset(nulls, 0, sizeof(nulls));
		values[0] = CStringGetTextDatum(subscription);
		values[1] = CStringGetTextDatum(topic);
		values[2] = Int32GetDatum(partition);
		values[3] = Int64GetDatum(pg_atomic_read_u64(&slot->events_applied));
		values[4] = Int64GetDatum(pg_atomic_read_u64(&slot->duplicates));
		values[5] = Int64GetDatum(pg_atomic_read_u64(&slot->unmatched));
		values[6] = Int64GetDatum(pg_atomic_read_u64(&slot->events_dead));
		watermark = pg_atomic_read_u64(&slot->high_watermark);
		values[7] = Int64GetDatum((int64) watermark);
		nulls[7] = (watermark == EVENTPIPE_UNKNOWN_WATERMARK);

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * consumer_partitions.c
 *		The per-partition counters of the consumer workers in shared memory
 *		(shown by eventpipe.consumer_partition_stats(), in stats.c, with the
 *		high watermark librdkafka last reported).
 *
 * A bounded table of EVENTPIPE_MAX_CONSUMER_PARTITIONS slots shared by every
 * database, each found by (database, subscription, topic, partition): a worker that restarts finds its
 * counters again, as pg_stat_statements' entries outlive the sessions that
 * made them, and so does the worker that takes a partition over from
 * another worker of the subscription.  Each slot names the worker assigned
 * the partition now (its holder).  A subscription's slots are freed with its
 * last consumer slot (see shmem.c).  When the table is full a partition has
 * no slot: its counts still reach the workers' totals (consumer_stats()).
 *
 * Locking: the names, database and holder of a slot are written under
 * EventpipeShared->lock (exclusive to take or free a slot or change its
 * holder, shared to look one up); the counters and the watermark are
 * atomics written by the subscription's workers and read without a lock.
 */
#include "postgres.h"

#include "miscadmin.h"

#include "shmem.h"

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
		slot->holder = -1;
		pg_atomic_init_u64(&slot->events_applied, 0);
		pg_atomic_init_u64(&slot->duplicates, 0);
		pg_atomic_init_u64(&slot->unmatched, 0);
		pg_atomic_init_u64(&slot->events_dead, 0);
		pg_atomic_init_u64(&slot->high_watermark, EVENTPIPE_UNKNOWN_WATERMARK);
	}
}

/* Is slot this partition of the subscription of the caller's database? */
static bool
is_partition_of(const ConsumerPartitionSlot *slot, const char *subscription)
{
	return slot->database == MyDatabaseId && strcmp(slot->subscription, subscription) == 0;
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
		else if (slot->partition == partition && is_partition_of(slot, subscription) &&
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
		slot->holder = -1;
		slot->database = MyDatabaseId;
		clear_counters(slot);
		pg_atomic_write_u64(&slot->high_watermark, EVENTPIPE_UNKNOWN_WATERMARK);
	}
	LWLockRelease(eventpipe_shared->lock);
	return slot;
}

/*
 * Worker of the subscription was assigned the partition (held) or gave it
 * up.  Giving up a partition another worker took meanwhile changes nothing.
 */
void
eventpipe_set_consumer_partition_holder(const char *subscription, const char *topic,
										int32 partition, int worker, bool held)
{
	ConsumerPartitionSlot *slot = eventpipe_consumer_partition_slot(subscription, topic, partition);

	if (slot == NULL)
		return;
	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
	if (held)
		slot->holder = worker;
	else if (slot->holder == worker)
		slot->holder = -1;
	LWLockRelease(eventpipe_shared->lock);
}

/*
 * Worker of the subscription (of the caller's database) holds no partition
 * any more (it left, or lost them all).
 */
void
eventpipe_release_consumer_partitions(const char *subscription, int worker)
{
	int			i;

	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < EVENTPIPE_MAX_CONSUMER_PARTITIONS; i++)
	{
		ConsumerPartitionSlot *slot = &eventpipe_shared->consumer_partition[i];

		if (slot->holder == worker && is_partition_of(slot, subscription))
			slot->holder = -1;
	}
	LWLockRelease(eventpipe_shared->lock);
}

/*
 * Free the slots of a subscription of database that is gone.  Caller holds
 * the lock exclusively.
 */
void
eventpipe_forget_consumer_partitions(Oid database, const char *subscription)
{
	int			i;

	for (i = 0; i < EVENTPIPE_MAX_CONSUMER_PARTITIONS; i++)
	{
		ConsumerPartitionSlot *slot = &eventpipe_shared->consumer_partition[i];

		if (slot->database == database && strcmp(slot->subscription, subscription) == 0)
			slot->subscription[0] = '\0';
	}
}

/* For stat_reset(): database's partitions' counters back to zero (watermarks stay). */
void
eventpipe_reset_consumer_partition_counters(Oid database)
{
	int			i;

	for (i = 0; i < EVENTPIPE_MAX_CONSUMER_PARTITIONS; i++)
		if (eventpipe_shared->consumer_partition[i].database == database)
			clear_counters(&eventpipe_shared->consumer_partition[i]);
}

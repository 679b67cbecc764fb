/*
 * consumer_shmem.h
 *		The consumers' part of the shared state (shmem.h includes it): one
 *		slot per subscription, the subscriptions waiting for a worker, and
 *		the per-partition counters.
 */
#ifndef EVENTPIPE_CONSUMER_SHMEM_H
#define EVENTPIPE_CONSUMER_SHMEM_H

#ifndef EVENTPIPE_SHMEM_H
#error "include extension/shmem.h, which includes this file"
#endif

/* Most consumer workers (subscriptions) with a statistics slot at a time. */
#define EVENTPIPE_MAX_CONSUMERS 64

/* Longest subscription name, terminator included (names have 1..63 chars). */
#define EVENTPIPE_SUBSCRIPTION_LEN 64

/*
 * Most subscriptions waiting for a worker that consumer_stats() names; more
 * are only counted (ConsumerWaiting).
 */
#define EVENTPIPE_MAX_WAITING_CONSUMERS 256

/* Most (subscription, topic, partition) rows with counters in shared memory. */
#define EVENTPIPE_MAX_CONSUMER_PARTITIONS 1024

/* Longest Kafka topic name, terminator included (names have 1..249 chars). */
#define EVENTPIPE_TOPIC_LEN 250

/* A high watermark not known (yet) in ConsumerPartitionSlot. */
#define EVENTPIPE_UNKNOWN_WATERMARK PG_UINT64_MAX

/* What a consumer worker is doing, as shown by consumer_stats().state. */
typedef enum ConsumerState
{
	CONSUMER_STOPPED = 0,		/* no process in this slot */
	CONSUMER_NOT_CONFIGURED,	/* eventpipe.bootstrap_servers is empty */
	CONSUMER_STARTING,			/* joining the consumer group */
	CONSUMER_IDLE,				/* caught up, waiting for messages */
	CONSUMER_APPLYING,			/* a batch is being applied */
	CONSUMER_WAITING_FOR_BROKER,	/* the broker reports errors */
	CONSUMER_BACKING_OFF,		/* the last batch failed; retrying */
	CONSUMER_PAUSED				/* eventpipe.pause(): applies nothing */
} ConsumerState;

/*
 * One subscription's slot, found by name, so its counters survive worker
 * restarts.  subscription, database, pid, procno, state and the error fields
 * are written under EventpipeShared->lock; the counters are atomics that
 * only the slot's worker increments.
 */
typedef struct ConsumerSlot
{
	char		subscription[EVENTPIPE_SUBSCRIPTION_LEN];	/* "" = free */
	Oid			database;
	pid_t		pid;
	int			procno;
	ConsumerState state;
	pg_atomic_uint64 events_applied;
	pg_atomic_uint64 duplicates;
	pg_atomic_uint64 unmatched;
	pg_atomic_uint64 events_dead;
	pg_atomic_uint64 batches;
	char		last_error[EVENTPIPE_ERROR_LEN];
	TimestampTz last_error_time;
} ConsumerSlot;

/* Why a subscription has no consumer worker (ConsumerWaiting.cause). */
typedef enum ConsumerWaitCause
{
	CONSUMER_WAIT_EVENTPIPE_SLOT,	/* all EVENTPIPE_MAX_CONSUMERS slots taken */
	CONSUMER_WAIT_WORKER_PROCESS	/* max_worker_processes is exhausted */
} ConsumerWaitCause;

/*
 * A subscription the consumer manager could not start a worker for, and
 * since when (it tries again every second).  The manager alone writes the
 * list, under EventpipeShared->lock; consumer_stats() shows it.
 */
typedef struct ConsumerWaiting
{
	char		subscription[EVENTPIPE_SUBSCRIPTION_LEN];
	ConsumerWaitCause cause;
	TimestampTz since;
} ConsumerWaiting;

/*
 * One partition of a subscription, found by (subscription, topic,
 * partition), so its counters survive worker restarts; freed with its
 * subscription's slot.  The names and database are written under
 * EventpipeShared->lock; the counters and high_watermark (the last one
 * librdkafka reported, EVENTPIPE_UNKNOWN_WATERMARK if none) are atomics that
 * only the subscription's worker writes.
 */
typedef struct ConsumerPartitionSlot
{
	char		subscription[EVENTPIPE_SUBSCRIPTION_LEN];	/* "" = free */
	Oid			database;
	char		topic[EVENTPIPE_TOPIC_LEN];
	int32		partition;
	pg_atomic_uint64 events_applied;
	pg_atomic_uint64 duplicates;
	pg_atomic_uint64 unmatched;
	pg_atomic_uint64 events_dead;
	pg_atomic_uint64 high_watermark;
} ConsumerPartitionSlot;

/* shmem.c */
extern ConsumerSlot *eventpipe_claim_consumer_slot(const char *subscription, pid_t *holder);
extern void eventpipe_release_consumer_slot(ConsumerSlot *slot, bool forget);
extern pid_t eventpipe_consumer_slot_holder(const char *subscription);
extern bool eventpipe_consumer_slot_available(const char *subscription);
extern void eventpipe_set_waiting_consumers(const ConsumerWaiting *waiting, int count);
extern void eventpipe_set_consumer_state(ConsumerSlot *slot, ConsumerState state);
extern void eventpipe_set_consumer_error(ConsumerSlot *slot, const char *message);
extern const char *eventpipe_consumer_state_name(ConsumerState state);

/* consumer_partitions.c: the per-partition counters of pg_stat_consumer */
extern void eventpipe_init_consumer_partitions(void);
extern ConsumerPartitionSlot *eventpipe_consumer_partition_slot(const char *subscription,
																const char *topic,
																int32 partition);
extern void eventpipe_forget_consumer_partitions(const char *subscription);
extern void eventpipe_reset_consumer_partition_counters(void);

#endif							/* EVENTPIPE_CONSUMER_SHMEM_H */

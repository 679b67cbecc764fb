/*
 * consumer_shmem.h
 *		The consumers' part of the shared state (shmem.h includes it): one
 *		slot per worker of a subscription, the workers waiting to be started,
 *		and the per-partition counters.
 */
#ifndef EVENTPIPE_CONSUMER_SHMEM_H
#define EVENTPIPE_CONSUMER_SHMEM_H

#ifndef EVENTPIPE_SHMEM_H
#error "include extension/shmem.h, which includes this file"
#endif

/* Most consumer workers (of all subscriptions) with a statistics slot at a time. */
#define EVENTPIPE_MAX_CONSUMERS 64

/*
 * Most workers of one subscription (subscriptions.workers' CHECK says the
 * same): beyond a topic's partition count more workers only sit idle.
 */
#define EVENTPIPE_MAX_SUBSCRIPTION_WORKERS 32

/* Longest subscription name, terminator included (names have 1..63 chars). */
#define EVENTPIPE_SUBSCRIPTION_LEN 64

/*
 * Most workers waiting to be started that consumer_stats() names; more are
 * only counted (ConsumerWaiting).
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
	CONSUMER_PAUSED,			/* eventpipe.pause(): applies nothing */
	CONSUMER_GROUP_TAKEN		/* another database's worker is in its group */
} ConsumerState;

/*
 * One worker's slot, found by (database, subscription, worker number), so
 * its counters survive worker restarts.  subscription, worker, database, pid,
 * procno, group, state and the error fields are written under
 * EventpipeShared->lock; the counters are atomics that only the slot's
 * worker increments.  group is the 64-bit hash of the consumer group the
 * slot's process joined (0: none yet), which keeps two databases out of
 * one group (eventpipe_join_consumer_group()).
 */
typedef struct ConsumerSlot
{
	char		subscription[EVENTPIPE_SUBSCRIPTION_LEN];	/* "" = free */
	int			worker;			/* 0 to subscriptions.workers - 1 */
	Oid			database;		/* the subscription's */
	pid_t		pid;
	int			procno;
	uint64		group;
	ConsumerState state;
	pg_atomic_uint64 events_applied;
	pg_atomic_uint64 duplicates;
	pg_atomic_uint64 unmatched;
	pg_atomic_uint64 events_dead;
	pg_atomic_uint64 batches;
	char		last_error[EVENTPIPE_ERROR_LEN];
	TimestampTz last_error_time;
} ConsumerSlot;

/* Why a worker of a subscription is not running (ConsumerWaiting.cause). */
typedef enum ConsumerWaitCause
{
	CONSUMER_WAIT_EVENTPIPE_SLOT,	/* all EVENTPIPE_MAX_CONSUMERS slots taken */
	CONSUMER_WAIT_WORKER_PROCESS	/* max_worker_processes is exhausted */
} ConsumerWaitCause;

/*
 * A worker of a subscription the consumer manager could not start, and
 * since when (it tries again every second).  The manager alone writes the
 * list of its database (DatabaseSlot), under EventpipeShared->lock;
 * consumer_stats() shows it.
 */
typedef struct ConsumerWaiting
{
	char		subscription[EVENTPIPE_SUBSCRIPTION_LEN];
	int			worker;
	ConsumerWaitCause cause;
	TimestampTz since;
} ConsumerWaiting;

/*
 * One partition of a subscription, found by (database, subscription, topic,
 * partition), so its counters survive worker restarts and moves between the
 * subscription's workers; freed with the subscription's last slot.  The
 * names, database and holder are written under EventpipeShared->lock; the
 * counters and high_watermark (the last one librdkafka reported,
 * EVENTPIPE_UNKNOWN_WATERMARK if none) are atomics that the subscription's
 * workers write.
 */
typedef struct ConsumerPartitionSlot
{
	char		subscription[EVENTPIPE_SUBSCRIPTION_LEN];	/* "" = free */
	Oid			database;
	char		topic[EVENTPIPE_TOPIC_LEN];
	int32		partition;
	int			holder;			/* the worker assigned it now; -1: none */
	pg_atomic_uint64 events_applied;
	pg_atomic_uint64 duplicates;
	pg_atomic_uint64 unmatched;
	pg_atomic_uint64 events_dead;
	pg_atomic_uint64 high_watermark;
} ConsumerPartitionSlot;

/* shmem.c */
extern ConsumerSlot *eventpipe_claim_consumer_slot(const char *subscription, int worker,
												   pid_t *holder);
extern void eventpipe_release_consumer_slot(ConsumerSlot *slot, bool forget);
extern void eventpipe_forget_database_consumers(Oid database);
extern bool eventpipe_join_consumer_group(ConsumerSlot *slot, const char *group_id,
										  Oid *holder_database, char *holder_subscription);
extern pid_t eventpipe_consumer_slot_holder(const char *subscription, int worker);
extern bool eventpipe_consumer_slot_available(void);
extern void eventpipe_set_consumer_state(ConsumerSlot *slot, ConsumerState state);
extern void eventpipe_set_consumer_error(ConsumerSlot *slot, const char *message);
extern const char *eventpipe_consumer_state_name(ConsumerState state);

/* consumer_partitions.c: the per-partition counters of pg_stat_consumer */
extern void eventpipe_init_consumer_partitions(void);
extern ConsumerPartitionSlot *eventpipe_consumer_partition_slot(const char *subscription,
																const char *topic,
																int32 partition);
extern void eventpipe_set_consumer_partition_holder(const char *subscription, const char *topic,
												   int32 partition, int worker, bool held);
extern void eventpipe_release_consumer_partitions(const char *subscription, int worker);
extern void eventpipe_forget_consumer_partitions(Oid database, const char *subscription);
extern void eventpipe_reset_consumer_partition_counters(Oid database);

#endif							/* EVENTPIPE_CONSUMER_SHMEM_H */

/*
 * eventpipe.h
 *		Declarations shared by the extension's backend code and its workers:
 *		configuration variables, the shared-memory state, and the entry
 *		points each file exports.
 */
#ifndef EVENTPIPE_H
#define EVENTPIPE_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "port/atomics.h"
#include "storage/lwlock.h"
#include "utils/jsonb.h"

/* Upper bound of eventpipe.relay_workers, and so of the relay slots in shared memory. */
#define EVENTPIPE_MAX_RELAY_WORKERS 32

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

/* Longest error text kept in shared memory for the stat views. */
#define EVENTPIPE_ERROR_LEN 256

/* guc.c: configuration, all under the reserved prefix "eventpipe." */
extern char *eventpipe_database;
extern char *eventpipe_bootstrap_servers;
extern char *eventpipe_kafka_options;
extern char *eventpipe_kafka_options_file;
extern int	eventpipe_relay_batch_size;
extern int	eventpipe_relay_poll_interval;
extern int	eventpipe_relay_max_attempts;
extern int	eventpipe_relay_workers;
extern int	eventpipe_consumer_batch_size;
extern int	eventpipe_dedup_retention;

extern void eventpipe_define_gucs(void);

/* What a relay worker is doing, as shown by pg_stat_relay.state. */
typedef enum RelayState
{
	RELAY_STOPPED = 0,			/* no process in this slot */
	RELAY_NOT_CONFIGURED,		/* eventpipe.bootstrap_servers is empty */
	RELAY_NO_DATABASE,			/* eventpipe.database does not exist */
	RELAY_NO_EXTENSION,			/* the extension is not installed there */
	RELAY_IDLE,					/* outbox empty, waiting for a commit */
	RELAY_RELAYING,				/* a batch is on its way to Kafka */
	RELAY_WAITING_FOR_BROKER,	/* the last batch failed; retrying */
	RELAY_PAUSED				/* eventpipe.pause_relay() */
} RelayState;

#define EVENTPIPE_NO_COMMITTED_ID PG_UINT64_MAX

/*
 * One relay worker's slot.  pid, procno, database, state and the error fields
 * are written under EventpipeShared->lock; the counters are atomics that only
 * the slot's worker increments.
 */
typedef struct RelaySlot
{
	pid_t		pid;
	int			procno;			/* PGPROC number, to set its latch */
	Oid			database;
	RelayState	state;
	pg_atomic_uint64 events_sent;
	pg_atomic_uint64 events_failed;
	pg_atomic_uint64 events_retried;
	pg_atomic_uint64 events_dead;
	pg_atomic_uint64 batches;
	pg_atomic_uint64 bytes_sent;
	pg_atomic_uint64 last_latency_us;
	/*
	 * The lowest outbox id committed since the worker last looked
	 * (EVENTPIPE_NO_COMMITTED_ID: none): lowered by every committing
	 * publisher (commit_wakeup.c), taken and reset by the worker.
	 */
	pg_atomic_uint64 lowest_committed_id;
	char		last_error[EVENTPIPE_ERROR_LEN];
	TimestampTz last_error_time;
} RelaySlot;

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

typedef struct EventpipeShared
{
	LWLock	   *lock;
	pid_t		launcher_pid;
	int			launcher_procno;
	/* DROP DATABASE of the relay's database is under way: stay out of it */
	Oid			dropping_database;
	TimestampTz stats_reset;
	/*
	 * Publishing transactions between their pre-commit and the report of
	 * their lowest id (commit_wakeup.c): their commit may be visible before
	 * the report is.
	 */
	pg_atomic_uint32 publishers_committing;
	/* bumped by every commit that changed eventpipe.relay_pause */
	pg_atomic_uint32 relay_pause_generation;
	RelaySlot	relay[EVENTPIPE_MAX_RELAY_WORKERS];
	/* the consumer manager: starts one consumer worker per subscription */
	pid_t		consumer_manager_pid;
	int			consumer_manager_procno;
	Oid			consumer_manager_database;
	ConsumerSlot consumer[EVENTPIPE_MAX_CONSUMERS];
	/*
	 * The subscriptions waiting for a worker: the first
	 * consumer_waiting_listed of consumer_waiting_count by name.
	 */
	int			consumer_waiting_count;
	int			consumer_waiting_listed;
	ConsumerWaiting consumer_waiting[EVENTPIPE_MAX_WAITING_CONSUMERS];
	ConsumerPartitionSlot consumer_partition[EVENTPIPE_MAX_CONSUMER_PARTITIONS];
} EventpipeShared;

/* shmem.c */
extern EventpipeShared *eventpipe_shared;
extern void eventpipe_install_shmem_hooks(void);
extern void eventpipe_set_relay_state(RelaySlot *slot, RelayState state);
extern void eventpipe_set_relay_error(RelaySlot *slot, const char *message);
extern const char *eventpipe_relay_state_name(RelayState state);
extern void eventpipe_set_latch_of(int procno);
extern pid_t eventpipe_relay_slot_holder(RelaySlot *slot);
extern bool eventpipe_database_is_being_dropped(Oid database);
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

/* outbox_insert.c */
struct pg_uuid_t;
extern struct pg_uuid_t *eventpipe_enqueue_event(text *topic, text *key, Jsonb *payload,
												 Jsonb *headers, text *event_type);

/* commit_wakeup.c */
extern void eventpipe_wake_relay_at_commit(int64 outbox_id);
extern void eventpipe_wake_consumer_manager_at_commit(void);
extern void eventpipe_relay_pause_changed_at_commit(void);

/* database_drop.c */
extern void eventpipe_install_drop_database_hook(void);

/* owned_objects.c */
extern void eventpipe_install_owned_objects_hook(void);

/* topic_name.c */
extern void eventpipe_check_topic_name(const char *topic);

/* event_headers.c */
typedef void (*EventHeaderCallback) (const char *name, int name_len,
									 const char *value, int value_len,
									 void *arg);
extern void eventpipe_check_user_headers(Jsonb *headers);
extern void eventpipe_foreach_header(Jsonb *headers, EventHeaderCallback callback, void *arg);

/* worker/launcher.c */
extern void eventpipe_register_launcher(void);

#endif							/* EVENTPIPE_H */

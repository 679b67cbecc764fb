/*
 * shmem.h
 *		The shared state of the backends and the workers (shmem.c): the
 *		launcher's, the consumer manager's and the snapshot worker's
 *		processes, the relay slots
 *		(relay_shmem.h) and the consumer slots (consumer_shmem.h), under one
 *		LWLock; counters are atomics that only a slot's worker increments.
 */
#ifndef EVENTPIPE_SHMEM_H
#define EVENTPIPE_SHMEM_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "port/atomics.h"
#include "storage/lwlock.h"

/* Longest error text kept in shared memory for the stat views. */
#define EVENTPIPE_ERROR_LEN 256

#include "extension/relay_shmem.h"
#include "extension/consumer_shmem.h"

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
	/* the snapshot worker, started by the consumer manager while needed */
	pid_t		snapshot_worker_pid;
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
extern void eventpipe_set_latch_of(int procno);
extern bool eventpipe_database_is_being_dropped(Oid database);

#endif							/* EVENTPIPE_SHMEM_H */

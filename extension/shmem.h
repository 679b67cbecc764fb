/*
 * shmem.h
 *		The shared state of the backends and the workers (shmem.c): the
 *		launcher's process, one slot per database served (database_shmem.h:
 *		its manager, snapshot worker and relay slots, relay_shmem.h) and the
 *		consumer slots of every database (consumer_shmem.h), under one
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
#include "extension/database_shmem.h"

typedef struct EventpipeShared
{
	LWLock	   *lock;
	pid_t		launcher_pid;
	int			launcher_procno;
	TimestampTz stats_reset;
	/*
	 * Publishing transactions between their pre-commit and the report of
	 * their lowest id (commit_wakeup.c): their commit may be visible before
	 * the report is.
	 */
	pg_atomic_uint32 publishers_committing;
	/* bumped by every commit that changed eventpipe.relay_pause */
	pg_atomic_uint32 relay_pause_generation;
	/* bumped by every commit that created an extension (object_access.c) */
	pg_atomic_uint32 extension_generation;
	ConsumerSlot consumer[EVENTPIPE_MAX_CONSUMERS];
	ConsumerPartitionSlot consumer_partition[EVENTPIPE_MAX_CONSUMER_PARTITIONS];
	/*
	 * The databases the launcher found no free slot for: the first
	 * databases_waiting_listed of databases_waiting_count.
	 */
	int			databases_waiting_count;
	int			databases_waiting_listed;
	Oid			databases_waiting[EVENTPIPE_MAX_WAITING_DATABASES];
	int			max_databases;	/* eventpipe.max_databases at server start */
	DatabaseSlot database[FLEXIBLE_ARRAY_MEMBER];
} EventpipeShared;

/* shmem.c */
extern EventpipeShared *eventpipe_shared;
extern void eventpipe_install_shmem_hooks(void);
extern void eventpipe_set_latch_of(int procno);

#endif							/* EVENTPIPE_SHMEM_H */

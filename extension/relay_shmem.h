/*
 * relay_shmem.h
 *		The relay workers' part of the shared state (shmem.h includes it):
 *		one slot per relay worker of a database (in its DatabaseSlot), its
 *		state and counters.
 */
#ifndef EVENTPIPE_RELAY_SHMEM_H
#define EVENTPIPE_RELAY_SHMEM_H

#ifndef EVENTPIPE_SHMEM_H
#error "include extension/shmem.h, which includes this file"
#endif

/* Upper bound of eventpipe.relay_workers, and so of the relay slots in shared memory. */
#define EVENTPIPE_MAX_RELAY_WORKERS 32

/* What a relay worker is doing, as shown by pg_stat_relay.state. */
typedef enum RelayState
{
	RELAY_STOPPED = 0,			/* no process in this slot */
	RELAY_NOT_CONFIGURED,		/* eventpipe.bootstrap_servers is empty */
	RELAY_NOT_SERVED,			/* eventpipe.database does not name this database */
	RELAY_WAITING_FOR_DATABASE_SLOT,	/* all eventpipe.max_databases slots taken */
	RELAY_WAITING_FOR_WORKER_SLOT,	/* max_worker_processes is exhausted */
	RELAY_NO_EXTENSION,			/* the extension is not installed there */
	RELAY_IDLE,					/* outbox empty, waiting for a commit */
	RELAY_RELAYING,				/* a batch is on its way to Kafka */
	RELAY_WAITING_FOR_BROKER,	/* the last batch failed; retrying */
	RELAY_PAUSED,				/* eventpipe.pause_relay() */
	/* eventpipe.relay_exactly_once only: */
	RELAY_RECOVERING,			/* asking Kafka what committed before a crash */
	RELAY_FENCED,				/* another producer took our transactional.id */
	RELAY_WAITING_FOR_COORDINATOR,	/* no transaction coordinator answers */
	RELAY_TRANSACTION_TIMED_OUT /* a transaction outlived its timeout */
} RelayState;

#define EVENTPIPE_NO_COMMITTED_ID PG_UINT64_MAX

/*
 * One relay worker's slot.  pid, procno, state and the error fields
 * are written under EventpipeShared->lock; the counters are atomics that only
 * the slot's worker increments.
 */
typedef struct RelaySlot
{
	pid_t		pid;
	int			procno;			/* PGPROC number, to set its latch */
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

/* shmem.c */
extern void eventpipe_set_relay_state(RelaySlot *slot, RelayState state);
extern void eventpipe_set_relay_error(RelaySlot *slot, const char *message);
extern const char *eventpipe_relay_state_name(RelayState state);
extern pid_t eventpipe_relay_slot_holder(RelaySlot *slot);
extern void eventpipe_init_relay_slot(RelaySlot *slot);

#endif							/* EVENTPIPE_RELAY_SHMEM_H */

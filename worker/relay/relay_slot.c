/*
 * relay_slot.c
 *		A relay worker's process state, for its loop (relay_worker.c) and
 *		its runs of batches (relay_pipeline.c) alike: its slot in shared
 *		memory (state, counters, last error), the commits publishers report
 *		to it, whether the relay is paused, whether to keep waiting for the
 *		broker.
 *
 * The slot (one of its database's DatabaseSlot) has its pid, procno, state and error fields written
 * under EventpipeShared->lock; its counters are atomics only this process
 * increments.
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/namespace.h"
#include "miscadmin.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/pmsignal.h"
#include "storage/procsignal.h"
#include "storage/proc.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/ps_status.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "extension/guc.h"
#include "extension/shmem.h"
#include "relay.h"
#include "worker/kafka/kafka_client.h"
#include "worker/worker_loop.h"
#include "extension/compat.h"

/* No batch recorded for this long shows as "waiting for broker". */
#define BROKER_PATIENCE_MS 1000

static int	shard;
static char *database_name;
static RelaySlot *slot;
static TimestampTz last_progress_at;	/* last run started or batch recorded */

/*
 * What the last read of eventpipe.relay_pause found, and the generation of
 * eventpipe_shared->relay_pause_generation it was read at.
 */
static bool paused = false;
static bool pause_known = false;
static uint32 pause_generation_read;

static void
relay_exit(int code, Datum arg)
{
	kafka_producer_destroy();
	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
	if (slot->pid == MyProcPid)
	{
		slot->pid = 0;
		slot->procno = -1;
		slot->state = RELAY_STOPPED;
	}
	LWLockRelease(eventpipe_shared->lock);
}


/*
 * The name of this worker's Kafka client: eventpipe-relay-<database>-<shard>
 * (kafka_client_id_sanitize()d).
 */
void
relay_client_id(char *buf, size_t size)
{
	snprintf(buf, size, "eventpipe-relay-%s-%d", database_name, shard);
	kafka_client_id_sanitize(buf);
}


/*
 * Must the worker leave (SIGTERM, its database dropped or no longer served,
 * no postmaster)?
 */
bool
relay_must_leave(void)
{
	return ProcDiePending || eventpipe_database_must_leave(MyDatabaseId) || !PostmasterIsAlive();
}


/*
 * While a batch waits with interrupts held, still answer what other
 * processes wait for: DROP DATABASE and tablespace commands need every
 * process to accept a barrier, and pg_log_backend_memory_contexts() asks.
 */
static void
serve_waiting_requests(void)
{
	if (ProcSignalBarrierPending)
		ProcessProcSignalBarrier();
	if (LogMemoryContextPending)
		ProcessLogMemoryContextInterrupt();
}


/*
 * Called while a batch waits for the broker: handles reloads, reports a
 * broker that keeps us waiting, and says whether to go on waiting: not when
 * the worker must leave, nor when a reload changed the Kafka settings.  The
 * caller then records what was acknowledged so far before leaving or
 * starting over, so a stop re-sends only what Kafka had not yet confirmed.
 */
bool
relay_keep_waiting(void)
{
	char		id[RELAY_CLIENT_ID_LEN];
	char		error[512];

	serve_waiting_requests();
	if (relay_must_leave())
		return false;
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
	if (kafka_log_take_broker_error(error, sizeof(error)))
		eventpipe_set_relay_error(slot, error);
	if (TimestampDifferenceExceeds(last_progress_at, GetCurrentTimestamp(), BROKER_PATIENCE_MS))
		relay_show_activity(RELAY_WAITING_FOR_BROKER, "waiting for the broker");
	relay_client_id(id, sizeof(id));
	return kafka_producer_built_from(eventpipe_bootstrap_servers, id);
}


/* Whether eventpipe.relay_pause holds a row (false if it does not exist). */
static void
read_relay_pause(bool *found)
{
	MemoryContext caller_context = worker_begin_transaction("reading eventpipe.relay_pause");
	Oid			namespace = get_namespace_oid("eventpipe", true);
	Oid			table = OidIsValid(namespace) ? get_relname_relid("relay_pause", namespace)
		: InvalidOid;

	*found = false;
	if (OidIsValid(table))
	{
		Relation	rel = table_open(table, AccessShareLock);
		TableScanDesc scan = table_beginscan(rel, GetActiveSnapshot(), 0, NULL);

		*found = heap_getnext(scan, ForwardScanDirection) != NULL;
		table_endscan(scan);
		table_close(rel, AccessShareLock);
	}
	worker_end_transaction(caller_context);
}


/* Has a commit paused or resumed the relay since we last looked? */
bool
relay_pause_changed(void)
{
	return pg_atomic_read_u32(&eventpipe_shared->relay_pause_generation) != pause_generation_read;
}


/*
 * Is the relay paused?  A running relay reads the table again only after a
 * commit changed it (its trigger bumps the generation), so it pays one
 * atomic read per turn; a paused one reads it at every turn, so a pause
 * cannot outlive its row however the row went (DROP EXTENSION, say).
 */
bool
relay_paused(void)
{
	uint32		generation = pg_atomic_read_u32(&eventpipe_shared->relay_pause_generation);
	bool		found;
	bool		ok;

	if (pause_known && !paused && generation == pause_generation_read)
		return false;
	WORKER_GUARD(ok, read_relay_pause(&found));
	if (!ok)
		return paused || !pause_known;	/* unknown: do not risk sending */
	paused = found;
	pause_known = true;
	pause_generation_read = generation;
	return paused;
}


void
relay_show_activity(RelayState state, const char *activity)
{
	eventpipe_set_relay_state(slot, state);
	set_ps_display(activity);
}



/* Update the counters and the last error from the batch's outcome. */
void
relay_account_batch(OutboxBatch *batch, BatchOutcome *outcome)
{
	TimestampTz now = GetCurrentTimestamp();
	uint64		bytes = 0;
	int			i;
	OutboxEvent *last_delivered = NULL;
	OutboxEvent *first_failed = NULL;

	last_progress_at = now;
	for (i = 0; i < batch->count; i++)
	{
		OutboxEvent *event = &batch->events[i];

		if (OutboxEventDelivered(event))
		{
			bytes += event->payload_len;
			last_delivered = event;
		}
		else if (event->reported && first_failed == NULL)
			first_failed = event;
	}
	pg_atomic_fetch_add_u64(&slot->events_sent, outcome->delivered);
	pg_atomic_fetch_add_u64(&slot->events_failed, outcome->rescheduled + outcome->dead);
	pg_atomic_fetch_add_u64(&slot->events_retried, outcome->retried);
	pg_atomic_fetch_add_u64(&slot->events_dead, outcome->dead);
	pg_atomic_fetch_add_u64(&slot->batches, 1);
	pg_atomic_fetch_add_u64(&slot->bytes_sent, bytes);
	if (last_delivered != NULL && now > last_delivered->created_at)
		pg_atomic_write_u64(&slot->last_latency_us, now - last_delivered->created_at);
	if (first_failed != NULL)
	{
		char		message[EVENTPIPE_ERROR_LEN];

		snprintf(message, sizeof(message),
				 "%d events to retry, %d dead-lettered; first to topic \"%s\": %s",
				 outcome->rescheduled, outcome->dead, first_failed->topic,
				 rd_kafka_err2str(first_failed->error));
		eventpipe_set_relay_error(slot, message);
		ereport(LOG, (errmsg("eventpipe relay worker %d: %s", shard, message)));
	}
}


/*
 * Events found committed in Kafka by the exactly-once recovery and deleted:
 * sent, by an earlier life of this worker that could not count them.
 */
void
relay_account_recovered(uint64 events)
{
	pg_atomic_fetch_add_u64(&slot->events_sent, events);
	last_progress_at = GetCurrentTimestamp();
}


/*
 * The lowest outbox id a publisher may have committed since the last call:
 * EVENTPIPE_NO_COMMITTED_ID if none, 0 if a publisher is committing right
 * now (see commit_wakeup.c).  The count is read first: a commit that ends
 * after that read has reported its id by the time it stops counting.  Each
 * id taken also goes to claim_start.c, which forgets a start it lies at or
 * below.
 */
uint64
relay_take_lowest_committed_id(void)
{
	uint32		committing;
	uint64		lowest;

	pg_memory_barrier();
	committing = pg_atomic_read_u32(&eventpipe_shared->publishers_committing);
	lowest = pg_atomic_exchange_u64(&slot->lowest_committed_id, EVENTPIPE_NO_COMMITTED_ID);
	claim_start_heard_commit(lowest);
	return committing > 0 ? 0 : lowest;
}


/*
 * Has a publisher committed (or is one committing) since the last
 * relay_take_lowest_committed_id()?  Looks without taking.
 */
bool
relay_commit_reported(void)
{
	pg_memory_barrier();
	return pg_atomic_read_u32(&eventpipe_shared->publishers_committing) > 0 ||
		pg_atomic_read_u64(&slot->lowest_committed_id) != EVENTPIPE_NO_COMMITTED_ID;
}


/*
 * Take the shard's slot of the database (database_name), or leave if the
 * database has no slot or another process serves the shard; the slot is
 * given back when the process exits.
 */
void
relay_attach_slot(int shard_number, const char *database)
{
	DatabaseSlot *database_slot = eventpipe_database_slot(MyDatabaseId);
	pid_t		holder;

	shard = shard_number;
	database_name = MemoryContextStrdup(TopMemoryContext, database);
	if (database_slot == NULL)
		worker_leave("eventpipe does not serve its database");
	slot = &database_slot->relay[shard];
	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
	if (database_slot->database != MyDatabaseId)
	{
		/* freed and given to another database since it was found */
		LWLockRelease(eventpipe_shared->lock);
		worker_leave("eventpipe does not serve its database");
	}
	holder = eventpipe_relay_slot_holder(slot);
	if (holder != 0)
	{
		/* two workers on one shard would break per-key order */
		LWLockRelease(eventpipe_shared->lock);
		ereport(LOG,
				(errmsg("eventpipe relay worker %d not started: process %d already serves this shard",
						shard, (int) holder)));
		proc_exit(0);
	}
	slot->pid = MyProcPid;
	slot->procno = GetNumberFromPGProc(MyProc);
	LWLockRelease(eventpipe_shared->lock);
	before_shmem_exit(relay_exit, (Datum) 0);
}

/* Whether the last relay_paused() could read eventpipe.relay_pause. */
bool
relay_pause_known(void)
{
	return pause_known;
}

/* The state the slot shows. */
RelayState
relay_shown_state(void)
{
	return slot->state;
}

/* The last error, for pg_stat_relay (and WORKER_GUARD). */
void
relay_set_error(const char *message)
{
	eventpipe_set_relay_error(slot, message);
}

/* A run starts: the broker is not keeping us waiting yet. */
void
relay_note_progress(void)
{
	last_progress_at = GetCurrentTimestamp();
}

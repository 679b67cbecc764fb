/*
 * relay_worker.c
 *		The relay worker process: its main loop waits for a commit (or the
 *		poll interval), then has relay_pipeline.c send its shard of the
 *		outbox to Kafka; it says what it is doing in pg_stat_relay and its
 *		process title, counts the batches, and recovers from errors.
 *
 * Started by the launcher, one per shard, connected to eventpipe.database.
 * An error in one step is logged and recorded, its transaction aborted, and
 * the loop goes on after a back-off; only SIGTERM, postmaster death or the
 * drop of its database make it leave.
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/pmsignal.h"
#include "storage/procsignal.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/ps_status.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "extension/guc.h"
#include "extension/shmem.h"
#include "relay.h"
#include "worker/worker_loop.h"

/* Back-off after a failed batch: doubles from the first to the last. */
#define RELAY_BACKOFF_FIRST_MS 100
#define RELAY_BACKOFF_LAST_MS 30000

static int	shard;
static RelaySlot *slot;
static char *ce_source;
static int	failures_in_a_row = 0;
static TimestampTz last_progress_at;	/* last run started or batch recorded */

/* No batch recorded for this long shows as "waiting for broker". */
#define BROKER_PATIENCE_MS 1000

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
		slot->database = InvalidOid;
		slot->state = RELAY_STOPPED;
	}
	LWLockRelease(eventpipe_shared->lock);
}

static bool
my_database_is_being_dropped(void)
{
	return eventpipe_database_is_being_dropped(MyDatabaseId);
}

static void
client_id(char *buf, size_t size)
{
	snprintf(buf, size, "eventpipe-relay-%d", shard);
}

/* Must the worker leave (SIGTERM, its database dropped, no postmaster)? */
bool
relay_must_leave(void)
{
	return ProcDiePending || my_database_is_being_dropped() || !PostmasterIsAlive();
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
	char		id[64];
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
	client_id(id, sizeof(id));
	return kafka_producer_built_from(eventpipe_bootstrap_servers, id);
}

/* Whether eventpipe.relay_pause holds a row (false if it does not exist). */
static void
read_relay_pause(void *found)
{
	MemoryContext caller_context = worker_begin_transaction("reading eventpipe.relay_pause");
	Oid			namespace = get_namespace_oid("eventpipe", true);
	Oid			table = OidIsValid(namespace) ? get_relname_relid("relay_pause", namespace)
		: InvalidOid;

	*(bool *) found = false;
	if (OidIsValid(table))
	{
		Relation	rel = table_open(table, AccessShareLock);
		TableScanDesc scan = table_beginscan(rel, GetActiveSnapshot(), 0, NULL);

		*(bool *) found = heap_getnext(scan, ForwardScanDirection) != NULL;
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
static bool
relay_paused(void)
{
	uint32		generation = pg_atomic_read_u32(&eventpipe_shared->relay_pause_generation);
	bool		found;

	if (pause_known && !paused && generation == pause_generation_read)
		return false;
	if (!relay_run_guarded(read_relay_pause, &found))
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

static long
backoff_ms(void)
{
	long		ms = RELAY_BACKOFF_FIRST_MS;
	int			i;

	for (i = 1; i < failures_in_a_row && ms < RELAY_BACKOFF_LAST_MS; i++)
		ms *= 2;
	return Min(ms, RELAY_BACKOFF_LAST_MS);
}

static void
record_relay_error(const char *message)
{
	eventpipe_set_relay_error(slot, message);
}

/*
 * Run step; on ERROR log it, record it for pg_stat_relay, abort the
 * transaction and return false.  Works with interrupts held, too.
 */
bool
relay_run_guarded(void (*step) (void *), void *arg)
{
	char		who[64];

	snprintf(who, sizeof(who), "eventpipe relay worker %d", shard);
	return worker_run_guarded(step, arg, who, record_relay_error);
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
 * The lowest outbox id a publisher may have committed since the last call:
 * EVENTPIPE_NO_COMMITTED_ID if none, 0 if a publisher is committing right
 * now (see commit_wakeup.c).  The count is read first: a commit that ends
 * after that read has reported its id by the time it stops counting.
 */
uint64
relay_take_lowest_committed_id(void)
{
	uint32		committing;
	uint64		lowest;

	pg_memory_barrier();
	committing = pg_atomic_read_u32(&eventpipe_shared->publishers_committing);
	lowest = pg_atomic_exchange_u64(&slot->lowest_committed_id, EVENTPIPE_NO_COMMITTED_ID);
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
 * After a fatal error the idempotent producer has lost its guarantees: drop
 * it (the next turn builds a new one) and say why.  Returns whether it did.
 */
static bool
drop_producer_after_fatal_error(void)
{
	char		reason[512];

	if (!kafka_producer_failed_fatally(reason, sizeof(reason)))
		return false;
	ereport(LOG,
			(errmsg("eventpipe relay worker %d: rebuilding the Kafka producer after a fatal error: %s",
					shard, reason)));
	eventpipe_set_relay_error(slot, reason);
	return true;
}

/* One turn of the loop; returns how long to sleep before the next (0: none). */
static long
relay_step(void)
{
	char		errbuf[512];
	char		id[64];
	RelayRun	run;

	if (eventpipe_bootstrap_servers[0] == '\0')
	{
		kafka_producer_destroy();
		relay_show_activity(RELAY_NOT_CONFIGURED, "waiting: eventpipe.bootstrap_servers is not set");
		return eventpipe_relay_poll_interval;
	}
	if (relay_paused())
	{
		/*
		 * Nothing is in flight between runs: the producer goes, so that no
		 * queue of librdkafka's (logs, statistics) grows unserved for as
		 * long as the pause lasts, and no broker connection stays open.
		 */
		kafka_producer_destroy();
		relay_show_activity(RELAY_PAUSED, "paused: eventpipe.resume_relay() resumes");
		return pause_known ? eventpipe_relay_poll_interval : backoff_ms();
	}

	client_id(id, sizeof(id));
	if (!kafka_producer_ensure(eventpipe_bootstrap_servers, id, errbuf, sizeof(errbuf)))
	{
		/* looked at again each poll: a reload or a chmod of the file fixes it */
		eventpipe_set_relay_error(slot, errbuf);
		relay_show_activity(RELAY_NOT_CONFIGURED, "waiting: the Kafka configuration is refused");
		return eventpipe_relay_poll_interval;
	}
	kafka_producer_poll();
	if (kafka_log_take_broker_error(errbuf, sizeof(errbuf)))
		eventpipe_set_relay_error(slot, errbuf);

	/*
	 * Commits do not wake a relay shown as paused or not configured
	 * (commit_wakeup.c): say it is not, before the run's first claim takes
	 * its snapshot, so a commit that snapshot misses wakes it.
	 */
	if (slot->state == RELAY_PAUSED || slot->state == RELAY_NOT_CONFIGURED)
		relay_show_activity(RELAY_IDLE, "idle");

	last_progress_at = GetCurrentTimestamp();
	run = relay_pipeline_run(shard, ce_source);
	switch (run.end)
	{
		case RELAY_RUN_CLAIM_FAILED:
			failures_in_a_row++;
			return backoff_ms();
		case RELAY_RUN_NO_EXTENSION:
			relay_show_activity(RELAY_NO_EXTENSION, "waiting: extension eventpipe is not installed");
			return eventpipe_relay_poll_interval;
		case RELAY_RUN_IDLE:
			relay_show_activity(RELAY_IDLE, "idle");
			return eventpipe_relay_poll_interval;
		case RELAY_RUN_SENT:
			break;
	}

	if (run.gave_up)
	{
		worker_check_interrupts();
		if (!PostmasterIsAlive())
			proc_exit(1);
		if (!drop_producer_after_fatal_error())
			ereport(LOG,
					(errmsg("eventpipe relay worker %d: Kafka settings changed, sending the rest of the batch with the new ones",
							shard)));
		kafka_producer_destroy();
	}
	if (run.record_failed)
	{
		failures_in_a_row++;
		return backoff_ms();
	}
	drop_producer_after_fatal_error();
	failures_in_a_row = 0;
	if (run.more_due)
		return 0;

	/*
	 * The run's last claim saw every row committed by a publisher: the
	 * latch, set by every commit since this turn began, wakes us for the
	 * next.  Another claim from the start now (as each run begins with)
	 * would cost a transaction and an index scan per event when commits
	 * come one by one.  Rows written without publish() or capture are
	 * found by the poll, as when idle.
	 */
	relay_show_activity(RELAY_IDLE, "idle");
	return eventpipe_relay_poll_interval;
}

static void
attach_to_slot(void)
{
	pid_t		holder;

	slot = &eventpipe_shared->relay[shard];
	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
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
	slot->procno = MyProc->pgprocno;
	slot->database = MyDatabaseId;
	LWLockRelease(eventpipe_shared->lock);
	before_shmem_exit(relay_exit, (Datum) 0);
}

static void
set_ce_source(void)
{
	StartTransactionCommand();
	ce_source = MemoryContextStrdup(TopMemoryContext,
									psprintf("/eventpipe/%s", get_database_name(MyDatabaseId)));
	CommitTransactionCommand();
}

void
eventpipe_relay_main(Datum main_arg)
{
	shard = DatumGetInt32(main_arg);
	worker_connect(psprintf("eventpipe relay worker %d", shard));
	attach_to_slot();
	set_ce_source();

	/*
	 * A lost delete only re-sends events Kafka already has (duplicates carry
	 * the same ce_id); it can never lose one, so the deletes need not wait
	 * for the WAL flush.
	 */
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * Its claims read the outbox in id order up to a limit, planned anew
	 * for each set of ids in flight: along the primary key, always, never
	 * by sorting a scan of the whole table (which a plan made for given
	 * constants can prefer when many rows belong to other shards).
	 */
	SetConfigOption("enable_seqscan", "off", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("enable_bitmapscan", "off", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("max_parallel_workers_per_gather", "0", PGC_SUSET, PGC_S_OVERRIDE);

	worker_main_loop(relay_step);
}

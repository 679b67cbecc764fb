/*
 * relay_worker.c
 *		The relay worker process: its main loop waits for a commit (or the
 *		poll interval), then has relay_pipeline.c send its shard of the
 *		outbox to Kafka, and backs off after errors.  What it is doing, its
 *		counters and its errors go to its slot (relay_slot.c).
 *
 * Started by its database's manager (relay_starter.c), one per shard.  An
 * error in one step is logged and recorded, its transaction aborted, and
 * the loop goes on after a back-off; only SIGTERM, postmaster death, the
 * extension's absence, or the launcher or a DROP DATABASE telling the
 * database's processes to leave make it leave.
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/pmsignal.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "extension/guc.h"
#include "extension/shmem.h"
#include "relay.h"
#include "relay_transaction.h"
#include "worker/worker_loop.h"

/* Back-off after a failed batch: doubles from the first to the last. */
#define RELAY_BACKOFF_FIRST_MS 100
#define RELAY_BACKOFF_LAST_MS 30000

static int	shard;
static char *ce_source;
static int	failures_in_a_row = 0;

static long
backoff_ms(void)
{
	return worker_backoff_ms(failures_in_a_row, RELAY_BACKOFF_FIRST_MS, RELAY_BACKOFF_LAST_MS);
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
	relay_set_error(reason);
	return true;
}

/*
 * Get ready to send: Kafka configured, the relay not paused, the producer
 * built and served.  false, with how long to wait, when not.
 */
static bool
get_ready(long *wait_ms)
{
	char		errbuf[512];
	char		id[RELAY_CLIENT_ID_LEN];

	if (eventpipe_bootstrap_servers[0] == '\0')
	{
		kafka_producer_destroy();
		relay_show_activity(RELAY_NOT_CONFIGURED, "waiting: eventpipe.bootstrap_servers is not set");
		*wait_ms = eventpipe_relay_poll_interval;
		return false;
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
		*wait_ms = relay_pause_known() ? eventpipe_relay_poll_interval : backoff_ms();
		return false;
	}

	relay_client_id(id, sizeof(id));
	if (!kafka_producer_ensure(eventpipe_bootstrap_servers, id, errbuf, sizeof(errbuf)))
	{
		/* looked at again each poll: a reload or a chmod of the file fixes it */
		relay_set_error(errbuf);
		relay_show_activity(RELAY_NOT_CONFIGURED, "waiting: the Kafka configuration is refused");
		*wait_ms = eventpipe_relay_poll_interval;
		return false;
	}
	kafka_producer_poll();
	if (kafka_log_take_broker_error(errbuf, sizeof(errbuf)))
		relay_set_error(errbuf);
	if (eventpipe_relay_exactly_once && !relay_txn_get_ready())
	{
		/* shown and logged by relay_transaction.c */
		if (relay_txn_must_rebuild())
			kafka_producer_destroy();
		failures_in_a_row++;
		*wait_ms = backoff_ms();
		return false;
	}

	/*
	 * Commits do not wake a relay shown as paused or not configured
	 * (commit_wakeup.c): say it is not, before the run's first claim takes
	 * its snapshot, so a commit that snapshot misses wakes it.
	 */
	if (relay_shown_state() == RELAY_PAUSED || relay_shown_state() == RELAY_NOT_CONFIGURED)
		relay_show_activity(RELAY_IDLE, "idle");
	return true;
}

/* What a run's end means for the loop: how long to wait before the next turn. */
static long
after_run(const RelayRun *run)
{
	if (run->transaction_failed)
	{
		/* shown and logged by relay_transaction.c */
		if (relay_txn_must_rebuild() || run->gave_up)
			kafka_producer_destroy();
		failures_in_a_row++;
		return backoff_ms();
	}
	switch (run->end)
	{
		case RELAY_RUN_CLAIM_FAILED:
			failures_in_a_row++;
			return backoff_ms();
		case RELAY_RUN_NO_EXTENSION:
			/* its manager starts another once the extension is back */
			relay_show_activity(RELAY_NO_EXTENSION, "leaving: extension eventpipe is not installed");
			worker_leave("extension eventpipe is not installed or is being dropped");
		case RELAY_RUN_IDLE:
			relay_show_activity(RELAY_IDLE, "idle");
			return eventpipe_relay_poll_interval;
		case RELAY_RUN_SENT:
			break;
	}

	if (run->gave_up)
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
	if (run->record_failed)
	{
		failures_in_a_row++;
		return backoff_ms();
	}
	drop_producer_after_fatal_error();
	failures_in_a_row = 0;
	if (run->more_due)
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

/*
 * One turn of the loop; returns how long to sleep before the next (0: none):
 * get ready, then a run of batches (relay_pipeline.c: claim, produce, await,
 * record, the batches overlapping), then what its end calls for.
 */
static long
relay_step(void)
{
	long		wait_ms;
	RelayRun	run;

	if (!get_ready(&wait_ms))
		return wait_ms;
	relay_note_progress();
	run = relay_pipeline_run(shard, ce_source);
	return after_run(&run);
}

/*
 * Take the shard's slot, and what names this worker's events (ce_source)
 * and, exactly once, its transactions.
 */
static void
attach_and_name(void)
{
	char	   *database;

	StartTransactionCommand();
	database = get_database_name(MyDatabaseId);
	relay_attach_slot(shard, database);
	ce_source = MemoryContextStrdup(TopMemoryContext, psprintf("/eventpipe/%s", database));
	if (eventpipe_relay_exactly_once)
		relay_txn_setup(shard, database);
	CommitTransactionCommand();
}

void
eventpipe_relay_main(Datum main_arg)
{
	shard = DatumGetInt32(main_arg);
	worker_connect(psprintf("eventpipe relay worker %d", shard), relay_set_error);
	attach_and_name();

	/*
	 * A lost delete only re-sends events Kafka already has (duplicates carry
	 * the same ce_id); it can never lose one, so the deletes need not wait
	 * for the WAL flush.  Exactly once, a delete must be on disk before the
	 * next transaction's record replaces the one that names its rows: the
	 * claim of that transaction's batch flushes the WAL first.
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

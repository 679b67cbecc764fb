/*
 * consumer_manager.c
 *		The database manager's part in consuming (database_manager.c runs
 *		it at each of its turns): keeps subscriptions.workers consumer
 *		workers running per row of eventpipe.subscriptions of its database,
 *		numbered 0 to workers - 1.
 *
 * The launcher connects to no database and cannot read tables; the
 * database manager can.  It reads the subscriptions when woken (a commit
 * that changed them sets its latch, see commit_wakeup.c; so does a consumer
 * worker's death, as bgw_notify_pid) and every second otherwise, and starts
 * each worker that does not run (at most once a second per worker).  A
 * worker started by an earlier manager is adopted, not doubled.  Workers
 * stop by themselves (exit code 0, no signal): when their subscription or
 * the extension is gone, or the subscription asks for fewer workers than
 * their number (they reread their row before every batch), when their
 * database is being dropped or no longer served.
 *
 * A worker it cannot start (all eventpipe consumer slots taken, or
 * max_worker_processes exhausted) waits and is tried again every second.
 * It is reported once when it starts waiting (WARNING) and once when it
 * starts (LOG), not at every try: a shortage lasts until someone acts, and
 * one line a second per worker buries the rest of the log.  Meanwhile
 * consumer_stats() shows it, from the list of waiting workers the manager
 * keeps in its database's slot.
 */
#include "postgres.h"

#include "commands/dbcommands.h"
#include "access/xact.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/ps_status.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "extension/guc.h"
#include "extension/shmem.h"
#include "consumer.h"
#include "consumer_sql.h"
#include "worker/worker_loop.h"
#include "extension/compat.h"

#define RESTART_DELAY_MS 1000

typedef struct ConsumerHandle
{
	char		subscription[EVENTPIPE_SUBSCRIPTION_LEN];	/* "" = unused */
	int			worker;
	BackgroundWorkerHandle *handle;
	TimestampTz started_at;
} ConsumerHandle;

static ConsumerHandle consumers[EVENTPIPE_MAX_CONSUMERS];

/* A subscription and how many workers it asks for. */
typedef struct WantedWorkers
{
	char	   *name;
	int			workers;
} WantedWorkers;

/* The workers that waited to be started after the last reconcile. */
static ConsumerWaiting *waiting = NULL;
static int	n_waiting = 0;

static bool
is_running(ConsumerHandle *consumer)
{
	return worker_handle_is_running(&consumer->handle);
}

static ConsumerHandle *
handle_of(const char *subscription, int worker)
{
	ConsumerHandle *unused = NULL;
	int			i;

	for (i = 0; i < EVENTPIPE_MAX_CONSUMERS; i++)
	{
		if (consumers[i].worker == worker && strcmp(consumers[i].subscription, subscription) == 0)
			return &consumers[i];
		if (unused == NULL && consumers[i].subscription[0] == '\0')
			unused = &consumers[i];
	}
	if (unused != NULL)
	{
		strlcpy(unused->subscription, subscription, sizeof(unused->subscription));
		unused->worker = worker;
		unused->started_at = 0;
	}
	return unused;
}

/* Register a worker of the subscription; false when no background worker slot is free. */
static bool
start_consumer(ConsumerHandle *consumer)
{
	char		name[BGW_MAXLEN];
	char		extra[EVENTPIPE_SUBSCRIPTION_LEN + sizeof(int)];

	if (consumer->worker == 0)
		snprintf(name, BGW_MAXLEN, "eventpipe consumer %s", consumer->subscription);
	else
		snprintf(name, BGW_MAXLEN, "eventpipe consumer %s #%d", consumer->subscription,
				 consumer->worker);
	StaticAssertStmt(sizeof(Oid) + EVENTPIPE_SUBSCRIPTION_LEN + sizeof(int) <= BGW_EXTRALEN,
					 "bgw_extra holds the database, the subscription and the worker number");
	memset(extra, 0, sizeof(extra));
	strlcpy(extra, consumer->subscription, EVENTPIPE_SUBSCRIPTION_LEN);
	memcpy(extra + EVENTPIPE_SUBSCRIPTION_LEN, &consumer->worker, sizeof(int));

	consumer->started_at = GetCurrentTimestamp();
	return worker_start_dynamic(MyDatabaseId, "eventpipe_consumer_main", name,
								"eventpipe consumer", (Datum) 0, extra, sizeof(extra),
								&consumer->handle);
}

/* Does a subscription of the list ask for this worker? */
static bool
is_wanted(List *wanted, const char *name, int worker)
{
	ListCell   *lc;

	foreach(lc, wanted)
	{
		WantedWorkers *subscription = (WantedWorkers *) lfirst(lc);

		if (strcmp(subscription->name, name) == 0)
			return worker < subscription->workers;
	}
	return false;
}

/* The manager's one statement. */
static WorkerStatement list_statement = {
	"list the subscriptions",
	"SELECT name, workers FROM eventpipe.subscriptions ORDER BY name",
	true, 0, {InvalidOid}
};

/*
 * Every subscription and its workers, in a transaction of its own; NIL when
 * the extension is not installed (or being dropped).
 */
static List *
list_subscriptions(void)
{
	MemoryContext caller_context = worker_begin_transaction("eventpipe: reading the subscriptions");
	List	   *wanted = NIL;
	uint64		i;

	if (consumer_extension_ready())
	{
		worker_spi_connect();
		worker_run_statement(&list_statement, NULL, NULL, SPI_OK_SELECT);
		for (i = 0; i < SPI_processed; i++)
		{
			HeapTuple	tuple = SPI_tuptable->vals[i];
			char	   *name = worker_text_column(tuple, SPI_tuptable->tupdesc, 1);
			bool		isnull;
			int			workers = DatumGetInt32(SPI_getbinval(tuple, SPI_tuptable->tupdesc, 2, &isnull));
			MemoryContext spi_context = MemoryContextSwitchTo(caller_context);
			WantedWorkers *subscription = palloc(sizeof(WantedWorkers));

			subscription->name = pstrdup(name);
			subscription->workers = workers;
			wanted = lappend(wanted, subscription);
			MemoryContextSwitchTo(spi_context);
		}
		SPI_finish();
	}
	worker_end_transaction(caller_context);
	return wanted;
}

static List *subscriptions;

static ConsumerWaiting *
find_waiting(ConsumerWaiting *list, int count, const char *name, int worker)
{
	int			i;

	for (i = 0; i < count; i++)
		if (list[i].worker == worker && strcmp(list[i].subscription, name) == 0)
			return &list[i];
	return NULL;
}

/* The background workers eventpipe needs in this database: see docs/installation.md. */
static int
workers_needed(void)
{
	int			needed = 1 + eventpipe_relay_workers;
	ListCell   *lc;

	foreach(lc, subscriptions)
		needed += ((WantedWorkers *) lfirst(lc))->workers;
	return needed;
}

/* The WARNING of a worker that starts waiting to be started. */
static void
report_waiting(const char *name, int worker, ConsumerWaitCause cause)
{
	if (cause == CONSUMER_WAIT_EVENTPIPE_SLOT)
		ereport(WARNING,
				(errmsg("eventpipe database manager: subscription \"%s\" waits for a worker slot (worker %d)",
						name, worker),
				 errdetail("All %d consumer slots of eventpipe are taken.", EVENTPIPE_MAX_CONSUMERS),
				 errhint("Unsubscribe another subscription, lower the workers of one, or build eventpipe with a larger EVENTPIPE_MAX_CONSUMERS. "
						 "The worker starts once a slot is free; eventpipe.consumer_stats() shows who waits.")));
	else
		ereport(WARNING,
				(errmsg("eventpipe database manager: subscription \"%s\" waits for a worker slot (worker %d)",
						name, worker),
				 errdetail("No background worker slot is free (max_worker_processes = %d).", max_worker_processes),
				 errhint("Raise max_worker_processes (a restart is needed): each database eventpipe serves needs 1 + eventpipe.relay_workers + the workers of its subscriptions, here %d, and the launcher one. "
						 "The worker starts once a slot is free; eventpipe.consumer_stats() shows who waits.",
						 workers_needed())));
}

/*
 * Note that worker of subscription name waits to be started, for cause:
 * reported when it starts waiting or waits for another reason now.
 */
static void
note_waiting(ConsumerWaiting *now_waiting, int *count, const char *name, int worker,
			 ConsumerWaitCause cause, TimestampTz now)
{
	ConsumerWaiting *entry = &now_waiting[(*count)++];
	ConsumerWaiting *before = find_waiting(waiting, n_waiting, name, worker);

	strlcpy(entry->subscription, name, sizeof(entry->subscription));
	entry->worker = worker;
	entry->cause = cause;
	if (before != NULL && before->cause == cause)
		entry->since = before->since;
	else
	{
		entry->since = now;
		report_waiting(name, worker, cause);
	}
}

/*
 * The workers that waited and do not any more get their LOG line (those no
 * longer asked for none); the new list replaces the old, here and in shared
 * memory.
 */
static void
update_waiting(DatabaseSlot *database, ConsumerWaiting *now_waiting, int count, TimestampTz now)
{
	int			i;

	for (i = 0; i < n_waiting; i++)
	{
		const char *name = waiting[i].subscription;
		int			worker = waiting[i].worker;
		long		secs;
		int			usecs;

		if (find_waiting(now_waiting, count, name, worker) != NULL ||
			!is_wanted(subscriptions, name, worker))
			continue;
		TimestampDifference(waiting[i].since, now, &secs, &usecs);
		ereport(LOG,
				(errmsg("eventpipe database manager: subscription \"%s\" got its worker after waiting %ld s for a slot (worker %d)",
						name, secs, worker)));
	}
	if (count == 0 && n_waiting == 0)
		return;
	if (waiting != NULL)
		pfree(waiting);
	waiting = NULL;
	if (count > 0)
	{
		waiting = MemoryContextAlloc(TopMemoryContext, sizeof(ConsumerWaiting) * count);
		memcpy(waiting, now_waiting, sizeof(ConsumerWaiting) * count);
	}
	n_waiting = count;
	eventpipe_set_waiting_consumers(database, waiting, n_waiting);
}

/*
 * Start worker of subscription name unless it runs, noting in now_waiting
 * (count entries) when it cannot be.
 */
static void
ensure_worker(const char *name, int worker, ConsumerWaiting *now_waiting, int *count,
			  TimestampTz now)
{
	ConsumerHandle *consumer = handle_of(name, worker);
	ConsumerWaiting *before;

	if (consumer == NULL)
	{
		note_waiting(now_waiting, count, name, worker, CONSUMER_WAIT_EVENTPIPE_SLOT, now);
		return;
	}
	if (is_running(consumer) || eventpipe_consumer_slot_holder(name, worker) != 0)
		return;
	if (!TimestampDifferenceExceeds(consumer->started_at, now, RESTART_DELAY_MS))
	{
		/* not tried this time: it waits as it did */
		if ((before = find_waiting(waiting, n_waiting, name, worker)) != NULL)
			now_waiting[(*count)++] = *before;
		return;
	}
	if (!eventpipe_consumer_slot_available())
	{
		consumer->started_at = now;
		note_waiting(now_waiting, count, name, worker, CONSUMER_WAIT_EVENTPIPE_SLOT, now);
	}
	else if (!start_consumer(consumer))
		note_waiting(now_waiting, count, name, worker, CONSUMER_WAIT_WORKER_PROCESS, now);
}

/*
 * Bring the running consumer workers of the database in line with
 * eventpipe.subscriptions (nothing changes when they cannot be read).
 */
void
consumer_manager_reconcile(DatabaseSlot *database)
{
	TimestampTz now = GetCurrentTimestamp();
	ConsumerWaiting *now_waiting;
	int			count = 0;
	ListCell   *lc;
	int			i;
	bool		ok;

	subscriptions = NIL;
	WORKER_GUARD(ok, subscriptions = list_subscriptions());
	if (!ok)
		return;

	for (i = 0; i < EVENTPIPE_MAX_CONSUMERS; i++)
	{
		ConsumerHandle *consumer = &consumers[i];

		/* a worker no longer asked for leaves by itself */
		if (consumer->subscription[0] != '\0' && !is_running(consumer) &&
			!is_wanted(subscriptions, consumer->subscription, consumer->worker))
			consumer->subscription[0] = '\0';
	}

	now_waiting = palloc(sizeof(ConsumerWaiting) * Max(workers_needed(), 1));
	foreach(lc, subscriptions)
	{
		WantedWorkers *subscription = (WantedWorkers *) lfirst(lc);

		for (i = 0; i < subscription->workers; i++)
			ensure_worker(subscription->name, i, now_waiting, &count, now);
	}
	update_waiting(database, now_waiting, count, now);

	if (subscriptions == NIL)
		set_ps_display("serving, no subscription");
	else if (count > 0)
	{
		char		activity[64];

		snprintf(activity, sizeof(activity), "serving, %d workers waiting for a slot", count);
		set_ps_display(activity);
	}
	else
		set_ps_display("serving");
}

/*
 * launcher.c
 *		The eventpipe launcher: a background worker registered at preload
 *		that connects to no database and keeps one relay worker per shard,
 *		and the consumer manager, running in eventpipe.database.
 *
 * It looks the database up in the shared catalog, starts the relay workers
 * and the consumer manager (which starts the consumer workers: it can read
 * eventpipe.subscriptions, the launcher cannot) as dynamic background
 * workers when it exists, stops them when it goes
 * away or eventpipe.database changes, restarts them if they die (at most
 * once a second each), and keeps away from a database being dropped for as
 * long as the DROP DATABASE holds the database's lock.
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/ps_status.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "extension/eventpipe.h"
#include "extension/guc.h"
#include "extension/shmem.h"
#include "worker/kafka/kafka_statistics.h"
#include "worker/relay/relay.h"
#include "worker/worker_loop.h"
#include "extension/compat.h"

PGDLLEXPORT void eventpipe_launcher_main(Datum main_arg);

#define RESTART_DELAY_MS 1000
#define LAUNCHER_NAP_MS 1000

typedef struct RelayHandle
{
	BackgroundWorkerHandle *handle;
	Oid			database;
	TimestampTz started_at;
} RelayHandle;

static RelayHandle relays[EVENTPIPE_MAX_RELAY_WORKERS];
static RelayHandle consumer_manager;

void
eventpipe_register_launcher(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	strlcpy(worker.bgw_library_name, "eventpipe", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "eventpipe_launcher_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "eventpipe launcher", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "eventpipe launcher", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}

static void
launcher_exit(int code, Datum arg)
{
	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
	eventpipe_shared->launcher_pid = 0;
	eventpipe_shared->launcher_procno = -1;
	LWLockRelease(eventpipe_shared->lock);
}

/*
 * The OID of the database called name, or InvalidOid.  A heap scan, as the
 * autovacuum launcher does: without a database of its own this process
 * cannot open pg_database's indexes.  Call in a transaction.
 */
static Oid
lookup_database(const char *name)
{
	Oid			database = InvalidOid;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tuple;

	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tuple);

		if (strcmp(NameStr(db->datname), name) == 0)
		{
			database = db->oid;
			break;
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	return database;
}

/*
 * DROP DATABASE holds the database's lock from before it calls the hook
 * until it commits or fails.  Call in a transaction.
 */
static bool
drop_still_running(Oid database)
{
	LOCKTAG		tag;

	SET_LOCKTAG_OBJECT(tag, InvalidOid, DatabaseRelationId, database, 0);
	if (LockAcquire(&tag, AccessShareLock, false, true) == LOCKACQUIRE_NOT_AVAIL)
		return true;
	LockRelease(&tag, AccessShareLock, false);
	return false;
}

/*
 * The database to serve, or InvalidOid when it does not exist or is being
 * dropped.  Forgets a drop announcement once the drop is over, whether the
 * database went away or the DROP failed.
 */
static Oid
database_to_serve(void)
{
	Oid			database;
	Oid			dropping;

	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	database = lookup_database(eventpipe_database);

	LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
	dropping = eventpipe_shared->dropping_database;
	LWLockRelease(eventpipe_shared->lock);

	if (OidIsValid(dropping) && !(dropping == database && drop_still_running(dropping)))
	{
		LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
		if (eventpipe_shared->dropping_database == dropping)
			eventpipe_shared->dropping_database = InvalidOid;
		LWLockRelease(eventpipe_shared->lock);
		dropping = InvalidOid;
	}
	CommitTransactionCommand();
	return OidIsValid(dropping) ? InvalidOid : database;
}

static bool
relay_is_running(RelayHandle *relay)
{
	return worker_handle_is_running(&relay->handle);
}

/* Start a dynamic worker in database that tells the launcher when it ends. */
static void
start_worker(RelayHandle *relay, const char *function, const char *name, const char *type,
			 Datum main_arg, Oid database)
{
	relay->started_at = GetCurrentTimestamp();
	relay->database = database;
	if (!worker_start_dynamic(database, function, name, type, main_arg, NULL, 0, &relay->handle))
		ereport(WARNING,
				(errmsg("eventpipe could not start the %s", name),
				 errhint("Raise max_worker_processes: eventpipe needs 2 + eventpipe.relay_workers + one per subscription.")));
}

static void
start_relay(int shard, Oid database)
{
	char		name[BGW_MAXLEN];

	snprintf(name, sizeof(name), "eventpipe relay %d", shard);
	start_worker(&relays[shard], "eventpipe_relay_main", name, "eventpipe relay",
				 Int32GetDatum(shard), database);
}

/*
 * A relay started by an earlier incarnation of the launcher (it died, the
 * relay did not) keeps its shard; it is stopped if it serves another
 * database.  Returns whether such a relay runs.
 */
static bool
adopt_running_relay(int shard, Oid database)
{
	RelaySlot  *slot = &eventpipe_shared->relay[shard];
	pid_t		holder;
	Oid			served;

	LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
	holder = eventpipe_relay_slot_holder(slot);
	served = slot->database;
	LWLockRelease(eventpipe_shared->lock);
	if (holder == 0)
		return false;
	if (served != database)
		kill(holder, SIGTERM);
	return true;
}

/*
 * The same for the consumer manager: one, in the database served, adopted
 * if an earlier launcher started it.
 */
static void
reconcile_consumer_manager(Oid database, TimestampTz now)
{
	pid_t		holder;
	Oid			served;

	if (relay_is_running(&consumer_manager))
	{
		if (consumer_manager.database != database)
			TerminateBackgroundWorker(consumer_manager.handle);
		return;
	}
	LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
	holder = eventpipe_shared->consumer_manager_pid;
	if (holder != 0 && BackendPidGetProc(holder) == NULL)
		holder = 0;
	served = eventpipe_shared->consumer_manager_database;
	LWLockRelease(eventpipe_shared->lock);
	if (holder != 0)
	{
		if (served != database)
			kill(holder, SIGTERM);
		return;
	}
	if (OidIsValid(database) &&
		TimestampDifferenceExceeds(consumer_manager.started_at, now, RESTART_DELAY_MS))
		start_worker(&consumer_manager, "eventpipe_consumer_manager_main",
					 "eventpipe consumer manager", "eventpipe consumer manager",
					 (Datum) 0, database);
}

/* Bring the running relay workers and consumer manager in line with the configuration. */
static void
reconcile(void)
{
	Oid			database = database_to_serve();
	TimestampTz now = GetCurrentTimestamp();
	int			shard;

	for (shard = 0; shard < eventpipe_relay_workers; shard++)
	{
		RelayHandle *relay = &relays[shard];

		if (relay_is_running(relay))
		{
			if (relay->database != database)
				TerminateBackgroundWorker(relay->handle);
			continue;
		}
		if (adopt_running_relay(shard, database))
			continue;
		if (!OidIsValid(database))
		{
			eventpipe_set_relay_state(&eventpipe_shared->relay[shard], RELAY_NO_DATABASE);
			continue;
		}
		if (TimestampDifferenceExceeds(relay->started_at, now, RESTART_DELAY_MS))
			start_relay(shard, database);
	}
	reconcile_consumer_manager(database, now);
	set_ps_display(OidIsValid(database) ? "serving" : "waiting: eventpipe.database does not exist");
}

void
eventpipe_launcher_main(Datum main_arg)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/* no database: the launcher only reads the shared catalog pg_database */
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
	eventpipe_shared->launcher_pid = MyProcPid;
	eventpipe_shared->launcher_procno = GetNumberFromPGProc(MyProc);
	LWLockRelease(eventpipe_shared->lock);
	before_shmem_exit(launcher_exit, (Datum) 0);

	/* statistics of clients that went down with a crash would stay forever */
	kafka_statistics_remove_all();

	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		reconcile();
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 LAUNCHER_NAP_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

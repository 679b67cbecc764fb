/*
 * launcher.c
 *		The eventpipe launcher: a background worker registered at preload
 *		that connects to no database and gives every database eventpipe
 *		serves a slot in shared memory and a database manager
 *		(database_manager.c), which starts the database's relay, consumer
 *		and snapshot workers.
 *
 * Each turn (every second, and when woken: a CREATE EXTENSION commits, a
 * DROP DATABASE begins, a manager ends) it reads pg_database and serves
 * every database that accepts connections, is no template and is named by
 * eventpipe.database ("*": all):
 *   - a database without a manager gets one (one that died is restarted at
 *     most once a second); a manager that finds no extension leaves, and
 *     the database is looked at again only after a CREATE EXTENSION
 *     committed somewhere;
 *   - with every slot (eventpipe.max_databases) taken, a database waits:
 *     a WARNING once it has waited WAIT_WARNING_MS (at start, databases
 *     without eventpipe hold slots for the moment their manager takes to
 *     find that out), and pg_stat_relay says so;
 *   - a database with a slot that is no longer to be served (gone, being
 *     dropped, closed to connections, no longer named) is told to leave
 *     (database_slots.c), and its slot freed once its processes are gone.
 * It starts nothing in a database a DROP DATABASE holds the lock of, and
 * forgets the drop once the lock is free (a DROP that failed lets the
 * database back at once).  Managers outlive a launcher that dies: the next
 * one finds them through their slots.
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
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/ps_status.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "extension/eventpipe.h"
#include "extension/guc.h"
#include "extension/shmem.h"
#include "worker/kafka/kafka_statistics.h"
#include "worker/worker_loop.h"
#include "extension/compat.h"

PGDLLEXPORT void eventpipe_launcher_main(Datum main_arg);

#define RESTART_DELAY_MS 1000
#define WAIT_WARNING_MS 10000
#define LAUNCHER_NAP_MS 1000

/* What the launcher remembers of a database it started a manager in. */
typedef struct ServedDatabase
{
	Oid			database;		/* hash key */
	NameData	name;			/* as pg_database had it at the last turn, for logs */
	BackgroundWorkerHandle *manager;
	TimestampTz started_at;
	uint32		probed_at;		/* extension_generation at the manager's start */
	bool		no_extension;	/* its manager found no extension */
	TimestampTz waiting_since;	/* for a slot; 0: not waiting */
	bool		waiting_reported;
	bool		start_failed;	/* no background worker for its manager: reported */
} ServedDatabase;

static HTAB *served;

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
 * Does someone (DROP DATABASE, from before its hook until it commits or
 * fails) hold the database's lock?  Call in a transaction.
 */
static bool
database_locked(Oid database)
{
	LOCKTAG		tag;

	SET_LOCKTAG_OBJECT(tag, InvalidOid, DatabaseRelationId, database, 0);
	if (LockAcquire(&tag, AccessShareLock, false, true) == LOCKACQUIRE_NOT_AVAIL)
		return true;
	LockRelease(&tag, AccessShareLock, false);
	return false;
}

/* The launcher's entry for a database, blank the first time. */
static ServedDatabase *
served_entry(Oid database)
{
	bool		found;
	ServedDatabase *entry = hash_search(served, &database, HASH_ENTER, &found);

	if (!found)
	{
		entry->manager = NULL;
		entry->started_at = 0;
		entry->probed_at = 0;
		entry->no_extension = false;
		entry->waiting_since = 0;
		entry->waiting_reported = false;
		entry->start_failed = false;
	}
	return entry;
}

/*
 * The OIDs of the databases to serve now, each with an entry that has its
 * name.  A heap scan, as the autovacuum
 * launcher does: without a database of its own this process cannot open
 * pg_database's indexes.  Call in a transaction.
 */
static List *
databases_to_serve(void)
{
	List	   *wanted = NIL;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tuple;

	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tuple);

		if (db->datallowconn && !db->datistemplate &&
			db->datconnlimit != DATCONNLIMIT_INVALID_DB &&
			eventpipe_database_is_served(NameStr(db->datname)))
		{
			wanted = lappend_oid(wanted, db->oid);
			namestrcpy(&served_entry(db->oid)->name, NameStr(db->datname));
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	return wanted;
}

/*
 * Forget the drop of a slot's database once the drop is over (it went
 * away, or the DROP failed); true while it is still under way.  Call in a
 * transaction.
 */
static bool
drop_under_way(DatabaseSlot *slot)
{
	bool		dropping;

	LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
	dropping = slot->dropping;
	LWLockRelease(eventpipe_shared->lock);
	if (!dropping || database_locked(slot->database))
		return dropping;
	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
	slot->dropping = false;
	LWLockRelease(eventpipe_shared->lock);
	return false;
}

static bool
manager_runs(ServedDatabase *entry, DatabaseSlot *slot)
{
	pid_t		pid;

	if (entry != NULL && worker_handle_is_running(&entry->manager))
		return true;
	LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
	pid = slot->manager_pid;
	LWLockRelease(eventpipe_shared->lock);
	return pid != 0 && BackendPidGetProc(pid) != NULL;
}

/*
 * A slot whose database is not to be served: tell its processes to leave,
 * and free it once they are gone.  One still served gets back processes
 * that had to leave (a DROP that failed, connections allowed again); one
 * whose manager found no extension is freed when its processes are gone.
 */
static void
tend_slot(DatabaseSlot *slot, List *wanted)
{
	Oid			database = slot->database;
	bool		leave;
	bool		no_extension;
	ServedDatabase *entry;

	if (!OidIsValid(database))
		return;
	entry = hash_search(served, &database, HASH_FIND, NULL);
	if (!list_member_oid(wanted, database) || drop_under_way(slot))
	{
		eventpipe_tell_database_to_leave(database, false);
		eventpipe_free_database_slot(slot);
		return;
	}
	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
	leave = slot->leave;
	slot->leave = false;
	no_extension = slot->no_extension;
	LWLockRelease(eventpipe_shared->lock);
	if (leave)
		ereport(LOG, (errmsg("eventpipe launcher: serving database \"%s\" again", NameStr(entry->name))));
	if (no_extension && !manager_runs(entry, slot))
	{
		if (entry != NULL)
			entry->no_extension = true;
		eventpipe_free_database_slot(slot);
	}
}

/* Start the database manager of a database with a slot. */
static void
start_manager(ServedDatabase *entry, DatabaseSlot *slot, uint32 generation, TimestampTz now)
{
	entry->started_at = now;
	entry->probed_at = generation;
	entry->no_extension = false;
	if (worker_start_dynamic(entry->database, "eventpipe_database_manager_main",
							 "eventpipe database manager", "eventpipe database manager",
							 (Datum) 0, NULL, 0, &entry->manager))
	{
		entry->start_failed = false;
		return;
	}
	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
	slot->manager_waiting = true;
	LWLockRelease(eventpipe_shared->lock);
	if (!entry->start_failed)
		ereport(WARNING,
				(errmsg("eventpipe launcher: database \"%s\" waits for a background worker slot for its manager",
						NameStr(entry->name)),
				 errhint("Raise max_worker_processes (a restart is needed): each database eventpipe serves needs 1 + eventpipe.relay_workers + the workers of its subscriptions, and the launcher one.")));
	entry->start_failed = true;
}

/*
 * Give a database to serve a manager if it has none, and a slot first if
 * it has none; returns false when it waits for a slot.
 */
static bool
serve(Oid database, uint32 generation, TimestampTz now)
{
	ServedDatabase *entry = served_entry(database);
	DatabaseSlot *slot = eventpipe_database_slot(database);

	if (slot != NULL && manager_runs(entry, slot))
		return true;
	if ((slot == NULL && entry->no_extension && entry->probed_at == generation) ||
		!TimestampDifferenceExceeds(entry->started_at, now, RESTART_DELAY_MS) ||
		database_locked(database))
		return true;
	if (slot == NULL && (slot = eventpipe_claim_database_slot(database)) == NULL)
	{
		if (entry->waiting_since == 0)
			entry->waiting_since = now;
		if (!entry->waiting_reported &&
			TimestampDifferenceExceeds(entry->waiting_since, now, WAIT_WARNING_MS))
		{
			entry->waiting_reported = true;
			ereport(WARNING,
					(errmsg("eventpipe launcher: database \"%s\" waits for a database slot",
							NameStr(entry->name)),
					 errdetail("All %d slots of eventpipe.max_databases are taken.",
							   eventpipe_shared->max_databases),
					 errhint("Raise eventpipe.max_databases (a restart is needed), or take eventpipe out of a database that does not need it.")));
		}
		return false;
	}
	if (entry->waiting_reported)
		ereport(LOG, (errmsg("eventpipe launcher: database \"%s\" got a database slot",
							 NameStr(entry->name))));
	entry->waiting_since = 0;
	entry->waiting_reported = false;
	start_manager(entry, slot, generation, now);
	return true;
}

/* Forget the databases no longer served that have no slot any more. */
static void
forget_gone(List *wanted)
{
	HASH_SEQ_STATUS status;
	ServedDatabase *entry;

	hash_seq_init(&status, served);
	while ((entry = hash_seq_search(&status)) != NULL)
	{
		if (list_member_oid(wanted, entry->database) ||
			eventpipe_database_slot(entry->database) != NULL)
			continue;
		if (entry->manager != NULL)
			pfree(entry->manager);
		hash_search(served, &entry->database, HASH_REMOVE, NULL);
	}
}

/* Bring the slots and the managers in line with the catalog and the configuration. */
static void
reconcile(void)
{
	uint32		generation = pg_atomic_read_u32(&eventpipe_shared->extension_generation);
	TimestampTz now = GetCurrentTimestamp();
	MemoryContext caller = CurrentMemoryContext;
	List	   *wanted;
	Oid		   *waiting;
	int			n_waiting = 0;
	int			n_served = 0;
	ListCell   *lc;
	int			i;
	char		activity[64];

	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	MemoryContextSwitchTo(caller);
	wanted = databases_to_serve();
	for (i = 0; i < eventpipe_shared->max_databases; i++)
		tend_slot(&eventpipe_shared->database[i], wanted);

	waiting = palloc(sizeof(Oid) * Max(list_length(wanted), 1));
	foreach(lc, wanted)
	{
		if (!serve(lfirst_oid(lc), generation, now))
			waiting[n_waiting++] = lfirst_oid(lc);
	}
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller);
	forget_gone(wanted);
	eventpipe_set_waiting_databases(waiting, n_waiting);

	for (i = 0; i < eventpipe_shared->max_databases; i++)
		n_served += OidIsValid(eventpipe_shared->database[i].database);
	snprintf(activity, sizeof(activity), "%d databases with a slot, %d waiting", n_served, n_waiting);
	set_ps_display(activity);
}

void
eventpipe_launcher_main(Datum main_arg)
{
	HASHCTL		ctl;
	MemoryContext loop_context;

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

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(ServedDatabase);
	served = hash_create("eventpipe served databases", 64, &ctl, HASH_ELEM | HASH_BLOBS);
	loop_context = AllocSetContextCreate(TopMemoryContext, "eventpipe launcher loop",
										 ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		MemoryContextSwitchTo(loop_context);
		reconcile();
		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(loop_context);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 LAUNCHER_NAP_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

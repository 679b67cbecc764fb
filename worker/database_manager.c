/*
 * database_manager.c
 *		The database manager: a dynamic background worker the launcher
 *		starts in each database it serves.  It checks that the extension is
 *		installed, then at each turn (every second, and when a commit that
 *		changed the subscriptions or a worker's death wakes it) keeps the
 *		database's relay workers (relay_starter.c), consumer workers
 *		(consumer_manager.c) and, while a snapshot runs, snapshot worker
 *		(snapshot_starter.c) running.
 *
 * Without the extension it notes so in its database's slot and leaves: the
 * launcher then frees the slot, and starts a manager again only after a
 * CREATE EXTENSION commits somewhere.  It leaves too, as every process of
 * the database does, when its slot tells them to (the database is being
 * dropped, accepts no connections, or is no longer served), and on SIGTERM.
 * One manager per database: a second one started while the first runs
 * leaves at once.
 */
#include "postgres.h"

#include "commands/extension.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "storage/procarray.h"

#include "extension/shmem.h"
#include "worker/consumer/consumer.h"
#include "worker/relay/relay.h"
#include "worker/snapshot/snapshot_worker.h"
#include "worker/worker_loop.h"
#include "extension/compat.h"

PGDLLEXPORT void eventpipe_database_manager_main(Datum main_arg);

/* The workers are checked on at least this often. */
#define MANAGER_POLL_MS 1000

static DatabaseSlot *database_slot;

static void
manager_exit(int code, Datum arg)
{
	/* the next manager finds out again who waits */
	eventpipe_set_waiting_consumers(database_slot, NULL, 0);
	eventpipe_leave_database_place(database_slot, DATABASE_MANAGER_PLACE);
}

static void
attach(void)
{
	database_slot = worker_take_database_place(DATABASE_MANAGER_PLACE, "manages its database",
											   manager_exit);
	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
	database_slot->manager_waiting = false;
	LWLockRelease(eventpipe_shared->lock);
}

/* Is the extension installed in this database (committed, as seen now)? */
static bool
extension_installed(void)
{
	MemoryContext caller_context = worker_begin_transaction("eventpipe: looking for the extension");
	bool		installed = OidIsValid(get_extension_oid("eventpipe", true));

	worker_end_transaction(caller_context);
	return installed;
}

/* Without the extension: say so in the slot, for the launcher, and leave. */
static void
leave_without_extension(void)
{
	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
	database_slot->no_extension = true;
	LWLockRelease(eventpipe_shared->lock);
	worker_leave("extension eventpipe is not installed");
}

/* One turn: the extension still there, then each kind of worker. */
static long
manage(void)
{
	bool		ok;
	volatile bool installed = true;

	WORKER_GUARD(ok, installed = extension_installed());
	if (ok && !installed)
		leave_without_extension();
	relay_starter_reconcile(database_slot);
	consumer_manager_reconcile(database_slot);
	snapshot_starter_reconcile(database_slot);
	return MANAGER_POLL_MS;
}

void
eventpipe_database_manager_main(Datum main_arg)
{
	worker_connect("eventpipe database manager", NULL);
	attach();
	worker_main_loop(manage);
}

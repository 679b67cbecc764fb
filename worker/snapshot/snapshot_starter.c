/*
 * snapshot_starter.c
 *		The database manager's part in snapshots: at each of its turns (at
 *		least every second, and when a commit asked for a snapshot), it
 *		starts the snapshot worker if a snapshot is running in
 *		eventpipe.table_snapshots and no snapshot worker runs.  The worker
 *		leaves by itself when none is left, so it takes a background worker
 *		slot only while there is work.
 *
 * A worker started by an earlier manager is seen through the pid it keeps
 * in its database's slot, and not doubled.  A start that fails (no background
 * worker slot free) is tried again a second later, with a WARNING the
 * first time.
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "extension/shmem.h"
#include "snapshot_worker.h"
#include "worker/worker_loop.h"
#include "extension/compat.h"

#define RESTART_DELAY_MS 1000

static BackgroundWorkerHandle *handle = NULL;
static TimestampTz started_at = 0;
static bool start_failed = false;

static WorkerStatement running_statement = {
	"look for a running snapshot",
	"SELECT FROM eventpipe.table_snapshots AS s"
	" WHERE s.state OPERATOR(pg_catalog.=) 'running' LIMIT 1",
	true, 0, {InvalidOid}
};

static bool
snapshot_is_running(void)
{
	MemoryContext caller_context = worker_begin_transaction("eventpipe: looking for snapshots");
	volatile bool running = false;

	if (worker_extension_table_ready("table_snapshots"))
	{
		worker_spi_connect();
		worker_run_statement(&running_statement, NULL, NULL, SPI_OK_SELECT);
		running = SPI_processed > 0;
		SPI_finish();
	}
	worker_end_transaction(caller_context);
	return running;
}

static bool
worker_runs(DatabaseSlot *database)
{
	pid_t		pid;

	if (worker_handle_is_running(&handle))
		return true;
	LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
	pid = database->snapshot_worker_pid;
	LWLockRelease(eventpipe_shared->lock);
	return pid != 0 && BackendPidGetProc(pid) != NULL;
}

static void
start_worker(void)
{
	started_at = GetCurrentTimestamp();
	if (!worker_start_dynamic(MyDatabaseId, "eventpipe_snapshot_main",
							  "eventpipe snapshot worker", "eventpipe snapshot worker",
							  (Datum) 0, NULL, 0, &handle))
	{
		if (!start_failed)
			ereport(WARNING,
					(errmsg("eventpipe database manager: the snapshot worker waits for a background worker slot"),
					 errhint("Raise max_worker_processes: a running snapshot takes one more worker.")));
		start_failed = true;
	}
	else
		start_failed = false;
}

void
snapshot_starter_reconcile(DatabaseSlot *database)
{
	bool		ok;
	volatile bool running = false;

	if (worker_runs(database) ||
		!TimestampDifferenceExceeds(started_at, GetCurrentTimestamp(), RESTART_DELAY_MS))
		return;
	WORKER_GUARD(ok, running = snapshot_is_running());
	if (ok && running)
		start_worker();
}

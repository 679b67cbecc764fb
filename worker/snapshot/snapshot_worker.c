/*
 * snapshot_worker.c
 *		The snapshot worker: a dynamic background worker, started by the
 *		consumer manager while a snapshot is running in its database, that
 *		emits the running snapshots chunk by chunk (snapshot_chunk.c), the
 *		oldest first, and leaves when none is left.
 *
 * One worker per database: its pid is in shared memory, and a second one
 * leaves at once (two would still be correct, each chunk locking its
 * snapshot's row, only slower).  Between chunks it waits while the relay's
 * backlog is above eventpipe.snapshot_max_backlog, so the outbox does not
 * balloon.  An error of a chunk rolls the chunk back: one that a retry can
 * cure (a deadlock, a serialization failure, a lock not available, a
 * cancelled statement) is retried after a back-off; any other is the
 * snapshot's own (its condition divides by zero, its role lost a right)
 * and ends it, failed, with that error.  A crash or a restart loses only
 * the chunk in flight: the next worker resumes after the last committed
 * one.
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/memutils.h"

#include "extension/shmem.h"
#include "snapshot_worker.h"
#include "worker/worker_loop.h"
#include "extension/compat.h"

/* Wait this long when the relay is behind or no snapshot could be read */
#define BACKLOG_WAIT_MS 100
#define RETRY_FIRST_MS 100
#define RETRY_LAST_MS 10000

static int	retries_in_a_row = 0;

/* Can a retry of the chunk succeed, the snapshot unchanged? */
static bool
is_transient(int sqlerrcode)
{
	return ERRCODE_TO_CATEGORY(sqlerrcode) == ERRCODE_TRANSACTION_ROLLBACK ||
		sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE ||
		sqlerrcode == ERRCODE_QUERY_CANCELED ||
		sqlerrcode == ERRCODE_OUT_OF_MEMORY;
}

/* The chunk failed with edata: retry it, or end its snapshot */
static long
after_error(int64 snapshot_id, ErrorData *edata)
{
	bool		ok;

	ereport(LOG,
			(errmsg("eventpipe snapshot worker: snapshot " INT64_FORMAT ": %s",
					snapshot_id, edata->message)));
	if (snapshot_id == 0 || is_transient(edata->sqlerrcode))
		return worker_backoff_ms(++retries_in_a_row, RETRY_FIRST_MS, RETRY_LAST_MS);
	WORKER_GUARD(ok, snapshot_mark_failed(snapshot_id, edata->message));
	return ok ? 0 : worker_backoff_ms(++retries_in_a_row, RETRY_FIRST_MS, RETRY_LAST_MS);
}

static long
emit_next_chunk(void)
{
	MemoryContext context = CurrentMemoryContext;
	int64		snapshot_id = 0;
	volatile SnapshotChunkResult result = SNAPSHOT_CHUNK_EMITTED;
	ErrorData  *volatile edata = NULL;

	PG_TRY();
	{
		result = snapshot_emit_chunk(&snapshot_id);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(context);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		MemoryContextSwitchTo(context);
		pgstat_report_activity(STATE_IDLE, NULL);
	}
	PG_END_TRY();

	if (edata != NULL)
		return after_error(snapshot_id, edata);
	retries_in_a_row = 0;
	switch (result)
	{
		case SNAPSHOT_NONE_RUNNING:
			worker_leave("no snapshot is running");
			break;
		case SNAPSHOT_BACKLOG_FULL:
			return BACKLOG_WAIT_MS;
		case SNAPSHOT_CHUNK_EMITTED:
			break;
	}
	return 0;
}

static DatabaseSlot *database_slot;

static void
detach(int code, Datum arg)
{
	eventpipe_leave_database_place(database_slot, SNAPSHOT_WORKER_PLACE);
}

void
eventpipe_snapshot_main(Datum main_arg)
{
	worker_connect("eventpipe snapshot worker", NULL);
	database_slot = worker_take_database_place(SNAPSHOT_WORKER_PLACE, "runs the snapshots", detach);
	worker_main_loop(emit_next_chunk);
}

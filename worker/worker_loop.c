/*
 * worker_loop.c
 *		Pieces of the workers' main loops: the transaction around one unit of
 *		work, and error recovery (a step that raises an ERROR is logged,
 *		recorded and rolled back, and the loop goes on).
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "worker_loop.h"

/*
 * Run step; on ERROR log it (prefixed with who), pass its message to
 * record_error (unless NULL), abort the transaction and return false.  Works with
 * interrupts held, too.
 */
bool
worker_run_guarded(void (*step) (void *), void *arg, const char *who,
				   void (*record_error) (const char *message))
{
	MemoryContext context = CurrentMemoryContext;
	uint32		holdoff = InterruptHoldoffCount;
	volatile bool ok = true;

	PG_TRY();
	{
		step(arg);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		/* errfinish() zeroed the holdoff count: put back the caller's */
		InterruptHoldoffCount = holdoff;
		MemoryContextSwitchTo(context);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		MemoryContextSwitchTo(context);
		ereport(LOG,
				(errmsg("%s: %s", who, edata->message),
				 edata->detail ? errdetail_internal("%s", edata->detail) : 0));
		if (record_error != NULL)
			record_error(edata->message);
		pgstat_report_activity(STATE_IDLE, NULL);
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

/*
 * Start a transaction with a snapshot; returns the caller's memory context,
 * which worker_end_transaction() makes current again (committing leaves
 * TopMemoryContext current, where a worker's per-batch allocations would
 * pile up forever).
 */
MemoryContext
worker_begin_transaction(const char *activity)
{
	MemoryContext caller_context = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
	return caller_context;
}

void
worker_end_transaction(MemoryContext caller_context)
{
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller_context);
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * worker_loop.c
 *		Pieces of the workers' main loops: starting in a database, the loop
 *		itself (interrupts, reloads, leaving a database that is dropped or no
 *		longer served), starting the dynamic workers a worker
 *		supervises, the transaction around one unit of work, whether the
 *		extension's tables can be used, and error recovery (a step that
 *		raises an ERROR is logged, recorded and rolled back, and the loop
 *		goes on).
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/wait_event.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "extension/guc.h"
#include "extension/shmem.h"
#include "worker_loop.h"

static const char *worker_name;
static void (*worker_record_error) (const char *message);

/*
 * WORKER_GUARD's PG_CATCH: log the error (prefixed with the worker's name),
 * pass its message to the worker's record_error (see worker_connect), and
 * abort the transaction; back in the guarded step's memory context and
 * interrupt holdoff count.
 */
void
worker_recover(MemoryContext context, uint32 holdoff)
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
			(errmsg("%s: %s", worker_name, edata->message),
			 edata->detail ? errdetail_internal("%s", edata->detail) : 0));
	if (worker_record_error != NULL)
		worker_record_error(edata->message);
	pgstat_report_activity(STATE_IDLE, NULL);
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

/* An SPI plan kept for the worker's lifetime; an ERROR if it cannot be made. */
SPIPlanPtr
worker_prepare_kept(const char *sql, int nargs, Oid *types, int cursor_options)
{
	SPIPlanPtr	plan = SPI_prepare_cursor(sql, nargs, types, cursor_options);

	if (plan == NULL)
		elog(ERROR, "could not prepare \"%s\": %s", sql, SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

/* SPI_connect(), an ERROR if it fails. */
void
worker_spi_connect(void)
{
	int			rc = SPI_connect();

	if (rc != SPI_OK_CONNECT)
		elog(ERROR, "eventpipe: SPI_connect failed: %s", SPI_result_code_string(rc));
}

/*
 * Run a statement (SPI connected), preparing and keeping its plan the first
 * time; an ERROR naming it unless SPI answers expected.  nulls as
 * SPI_execute_plan() takes them (NULL: none).
 */
void
worker_run_statement(WorkerStatement *statement, Datum *values, const char *nulls, int expected)
{
	worker_run_statement_limited(statement, values, nulls, 0, expected);
}

/* The same, returning at most count rows (0: all). */
void
worker_run_statement_limited(WorkerStatement *statement, Datum *values, const char *nulls,
							 long count, int expected)
{
	int			rc;

	if (statement->plan == NULL)
		statement->plan = worker_prepare_kept(statement->sql, statement->nargs,
											  statement->types, statement->cursor_options);
	rc = SPI_execute_plan(statement->plan, values, nulls, statement->read_only, count);
	if (rc != expected)
		elog(ERROR, "eventpipe: statement \"%s\" failed: %s", statement->name,
			 SPI_result_code_string(rc));
}

/*
 * Is the extension there, with its table eventpipe.<table>, and not being
 * dropped?  DROP EXTENSION holds an exclusive lock on its tables until it
 * commits: the worker backs off instead of queueing behind it.  Call in a
 * transaction; the lock is kept until its end.
 */
bool
worker_extension_table_ready(const char *table)
{
	Oid			schema;
	Oid			relid;

	if (!OidIsValid(get_extension_oid("eventpipe", true)))
		return false;
	schema = get_namespace_oid("eventpipe", true);
	relid = OidIsValid(schema) ? get_relname_relid(table, schema) : InvalidOid;
	return OidIsValid(relid) && ConditionalLockRelationOid(relid, AccessShareLock);
}

/* A text column of an SPI result row as a C string; NULL stays NULL. */
char *
worker_text_column(HeapTuple tuple, TupleDesc desc, int column)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tuple, desc, column, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
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

/*
 * Start a dynamic worker whose bgw_extra begins with its database's OID:
 * signals, the connection, and the settings every worker's work assumes,
 * whatever the database's own (ALTER DATABASE ... SET, which its owner may
 * run) or postgresql.conf say: the search_path of a superuser's worker
 * (nothing a database user creates may stand in for built-ins); READ
 * COMMITTED, each statement with a new snapshot (the ledger's lookup must
 * see what the batch that held its lock before committed; a snapshot's
 * chunk must lock the newest version of a row a writer just changed, where
 * REPEATABLE READ would fail the chunk); transactions that may write; and
 * no lock_timeout, since waiting for another worker's or a writer's locks
 * is part of the work, not a reason to fail.  who names the worker in its
 * log lines; record_error (unless NULL) keeps the message of an error
 * WORKER_GUARD caught, for the stat views.
 */
void
worker_connect(const char *who, void (*record_error) (const char *message))
{
	Oid			database;

	worker_name = who;
	worker_record_error = record_error;
	memcpy(&database, MyBgworkerEntry->bgw_extra, sizeof(Oid));
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(database, InvalidOid, 0);
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("default_transaction_isolation", "read committed", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("default_transaction_read_only", "off", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("lock_timeout", "0", PGC_SUSET, PGC_S_OVERRIDE);
}

void
worker_leave(const char *why)
{
	ereport(LOG, (errmsg("%s stopping: %s", worker_name, why)));
	proc_exit(0);
}

/*
 * Take a place (DatabasePlace) of the caller's database's slot that one
 * process holds at a time, with give_back to run at exit, or leave:
 * eventpipe does not serve the database, or a live process holds the place
 * (holder_does says what it does, for the log).
 */
DatabaseSlot *
worker_take_database_place(DatabasePlace place, const char *holder_does,
						   pg_on_exit_callback give_back)
{
	pid_t		holder;
	DatabaseSlot *slot = eventpipe_take_database_place(place, &holder);

	if (holder != 0)
		worker_leave(psprintf("process %d already %s", (int) holder, holder_does));
	if (slot == NULL)
		worker_leave("eventpipe does not serve its database");
	before_shmem_exit(give_back, (Datum) 0);
	return slot;
}

/*
 * Leave on SIGTERM, or when the launcher or a DROP DATABASE tells the
 * processes of our database to (see database_shmem.h).
 */
void
worker_check_interrupts(void)
{
	CHECK_FOR_INTERRUPTS();
	if (eventpipe_database_must_leave(MyDatabaseId))
		worker_leave(eventpipe_database_is_being_dropped(MyDatabaseId)
					 ? "its database is being dropped"
					 : "eventpipe no longer serves its database");
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
}

/* A back-off that doubles from first_ms, after each failure in a row, to last_ms. */
long
worker_backoff_ms(int failures_in_a_row, long first_ms, long last_ms)
{
	long		ms = first_ms;
	int			i;

	for (i = 1; i < failures_in_a_row && ms < last_ms; i++)
		ms *= 2;
	return Min(ms, last_ms);
}

/*
 * Register a dynamic background worker of eventpipe in database that
 * notifies this process when it ends: bgw_extra holds the database's OID
 * (what worker_connect() reads), then extra_len bytes of extra.  Sets
 * *handle (allocated for the process's life), NULL when no background
 * worker slot is free; returns whether one was.
 */
bool
worker_start_dynamic(Oid database, const char *function, const char *name, const char *type,
					 Datum main_arg, const void *extra, size_t extra_len,
					 BackgroundWorkerHandle **handle)
{
	BackgroundWorker worker;
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

	Assert(sizeof(Oid) + extra_len <= BGW_EXTRALEN);
	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(worker.bgw_library_name, "eventpipe", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, function, BGW_MAXLEN);
	strlcpy(worker.bgw_name, name, BGW_MAXLEN);
	strlcpy(worker.bgw_type, type, BGW_MAXLEN);
	worker.bgw_main_arg = main_arg;
	memcpy(worker.bgw_extra, &database, sizeof(Oid));
	if (extra_len > 0)
		memcpy(worker.bgw_extra + sizeof(Oid), extra, extra_len);
	worker.bgw_notify_pid = MyProcPid;
	if (!RegisterDynamicBackgroundWorker(&worker, handle))
		*handle = NULL;
	MemoryContextSwitchTo(old);
	return *handle != NULL;
}

/*
 * Is the dynamic worker of *handle started or starting?  When it is not,
 * the handle is freed and set to NULL.
 */
bool
worker_handle_is_running(BackgroundWorkerHandle **handle)
{
	pid_t		pid;
	BgwHandleStatus status;

	if (*handle == NULL)
		return false;
	status = GetBackgroundWorkerPid(*handle, &pid);
	if (status == BGWH_STARTED || status == BGWH_NOT_YET_STARTED)
		return true;
	pfree(*handle);
	*handle = NULL;
	return false;
}

/*
 * The main loop: step() in a memory context reset after every turn, then
 * sleep as long as it says (0: go on at once) or until the latch is set.
 */
void
worker_main_loop(long (*step) (void))
{
	MemoryContext loop_context = AllocSetContextCreate(TopMemoryContext, "eventpipe worker loop",
													   ALLOCSET_DEFAULT_SIZES);

	ereport(LOG, (errmsg("%s started", worker_name)));
	for (;;)
	{
		long		sleep_ms;

		worker_check_interrupts();
		MemoryContextSwitchTo(loop_context);
		sleep_ms = step();
		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(loop_context);

		if (sleep_ms > 0)
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 sleep_ms, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		}
	}
}

/*
 * worker_loop.h
 *		Pieces of a background worker's main loop shared by the relay and
 *		consumer workers.
 */
#ifndef EVENTPIPE_WORKER_LOOP_H
#define EVENTPIPE_WORKER_LOOP_H

#include "postgres.h"

#include "miscadmin.h"
#include "access/htup.h"
#include "access/tupdesc.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"

#include "extension/compat.h"
#include "extension/shmem.h"

extern void worker_connect(const char *who, void (*record_error) (const char *message));

/*
 * Run statement, one step of a worker's loop, and set ok to whether it
 * went through.  On an ERROR the step's transaction is aborted, the error
 * logged and recorded (worker_recover), and ok is false: whatever the
 * statement was to set is then not to be read.  Works with interrupts
 * held, too.
 */
#define WORKER_GUARD(ok, statement) \
	do { \
		MemoryContext volatile worker_guard_context_ = CurrentMemoryContext; \
		uint32 volatile worker_guard_holdoff_ = InterruptHoldoffCount; \
		\
		PG_TRY(); \
		{ \
			statement; \
			(ok) = true; \
		} \
		PG_CATCH(); \
		{ \
			worker_recover(worker_guard_context_, worker_guard_holdoff_); \
			(ok) = false; \
		} \
		PG_END_TRY(); \
	} while (0)
extern void worker_recover(MemoryContext context, uint32 holdoff);
pg_noreturn extern void worker_leave(const char *why);
extern DatabaseSlot *worker_take_database_place(DatabasePlace place, const char *holder_does,
												 pg_on_exit_callback give_back);
extern void worker_check_interrupts(void);
pg_noreturn extern void worker_main_loop(long (*step) (void));
extern long worker_backoff_ms(int failures_in_a_row, long first_ms, long last_ms);
extern bool worker_start_dynamic(Oid database, const char *function, const char *name,
								 const char *type, Datum main_arg, const void *extra,
								 size_t extra_len, BackgroundWorkerHandle **handle);
extern bool worker_handle_is_running(BackgroundWorkerHandle **handle);
extern MemoryContext worker_begin_transaction(const char *activity);
extern struct _SPI_plan *worker_prepare_kept(const char *sql, int nargs, Oid *types,
											 int cursor_options);
extern void worker_end_transaction(MemoryContext caller_context);

/*
 * One statement a worker runs, prepared the first time and kept for the
 * worker's life (plan).  Each file holds its statements in one table
 * indexed by an enum, and runs them with worker_run_statement().
 */
typedef struct WorkerStatement
{
	const char *name;			/* names the statement in errors */
	const char *sql;
	bool		read_only;		/* SPI_execute_plan()'s read_only */
	int			nargs;
	Oid			types[8];
	int			cursor_options; /* SPI_prepare_cursor()'s: 0, or a plan choice */
	struct _SPI_plan *plan;		/* NULL until first run */
} WorkerStatement;

extern void worker_spi_connect(void);
extern void worker_run_statement(WorkerStatement *statement, Datum *values, const char *nulls,
								 int expected);
extern void worker_run_statement_limited(WorkerStatement *statement, Datum *values,
										 const char *nulls, long count, int expected);
extern bool worker_extension_table_ready(const char *table);
extern char *worker_text_column(HeapTuple tuple, TupleDesc desc, int column);

#endif							/* EVENTPIPE_WORKER_LOOP_H */

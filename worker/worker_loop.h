/*
 * worker_loop.h
 *		Pieces of a background worker's main loop shared by the relay and
 *		consumer workers.
 */
#ifndef EVENTPIPE_WORKER_LOOP_H
#define EVENTPIPE_WORKER_LOOP_H

#include "postgres.h"

extern bool worker_run_guarded(void (*step) (void *), void *arg, const char *who,
							   void (*record_error) (const char *message));

extern void worker_connect(const char *who);
extern void worker_leave(const char *why) pg_attribute_noreturn();
extern void worker_check_interrupts(void);
extern void worker_main_loop(long (*step) (void)) pg_attribute_noreturn();
extern MemoryContext worker_begin_transaction(const char *activity);
extern struct _SPI_plan *worker_prepare_kept(const char *sql, int nargs, Oid *types,
											 int cursor_options);
extern void worker_end_transaction(MemoryContext caller_context);

#endif							/* EVENTPIPE_WORKER_LOOP_H */

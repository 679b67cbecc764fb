/*
 * consumer_sql.h
 *		What the consumer's statement files share (consumer_sql.c): whether
 *		the extension is there to be used, arrays of Datums for the
 *		statements' parameters, and the subtransaction that catches a
 *		message's fault.
 */
#ifndef EVENTPIPE_CONSUMER_SQL_H
#define EVENTPIPE_CONSUMER_SQL_H

#include "postgres.h"

extern bool consumer_extension_ready(void);
extern Datum consumer_make_array(Datum *elements, bool *nulls, int count, Oid element_type);
extern bool consumer_is_message_fault(int sqlerrcode);
extern char *consumer_run_in_subtransaction(void (*fn) (void *), void *arg,
											bool (*is_caught) (int sqlerrcode));

#endif							/* EVENTPIPE_CONSUMER_SQL_H */

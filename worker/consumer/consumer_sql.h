/*
 * consumer_sql.h
 *		What the consumer's statement files share (consumer_sql.c): whether
 *		the extension is there to be used, arrays of Datums for the
 *		statements' parameters, the kept plans of the statements made per
 *		target, the order of keys, which errors are the data's fault, and
 *		the subtransaction that catches a message's fault.
 */
#ifndef EVENTPIPE_CONSUMER_SQL_H
#define EVENTPIPE_CONSUMER_SQL_H

#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "utils/resowner.h"

extern bool consumer_extension_ready(void);
extern Datum consumer_make_array(Datum *elements, bool *nulls, int count, Oid element_type);
extern SPIPlanPtr consumer_kept_plan(const char *sql, int nargs, Oid *types);
extern int	consumer_compare_texts(Datum a, Datum b);
extern bool consumer_is_data_error(int sqlerrcode);
extern ErrorData *consumer_caught_data_error(MemoryContext context);
extern void consumer_blame_batch(void);
extern void consumer_clear_blame(void);
extern bool consumer_is_message_fault(int sqlerrcode);
extern char *consumer_subtransaction_failed(MemoryContext context, ResourceOwner owner,
											bool (*is_caught) (int sqlerrcode));

/*
 * Run statement in a subtransaction; set error to the text (in the caller's
 * memory context) of an error that is_caught accepts, or to NULL.  Any
 * other error goes on up once the subtransaction is rolled back.
 */
#define CONSUMER_IN_SUBTRANSACTION(error, is_caught, statement) \
	do { \
		MemoryContext volatile consumer_sub_context_ = CurrentMemoryContext; \
		ResourceOwner volatile consumer_sub_owner_ = CurrentResourceOwner; \
		\
		BeginInternalSubTransaction(NULL); \
		MemoryContextSwitchTo(consumer_sub_context_); \
		PG_TRY(); \
		{ \
			statement; \
			ReleaseCurrentSubTransaction(); \
			(error) = NULL; \
		} \
		PG_CATCH(); \
		{ \
			(error) = consumer_subtransaction_failed(consumer_sub_context_, \
													 consumer_sub_owner_, (is_caught)); \
		} \
		PG_END_TRY(); \
		MemoryContextSwitchTo(consumer_sub_context_); \
		CurrentResourceOwner = consumer_sub_owner_; \
	} while (0)

#endif							/* EVENTPIPE_CONSUMER_SQL_H */

/*
 * consumer_sql.c
 *		Helpers the consumer's statement files share: is the extension ready
 *		to be used, one-dimensional arrays for the statements' parameters,
 *		and running a piece of a batch in a subtransaction of its own.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "commands/extension.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "consumer_sql.h"
#include "worker/worker_loop.h"

/* Is the extension there, and not being dropped?  See worker_extension_table_ready(). */
bool
consumer_extension_ready(void)
{
	return worker_extension_table_ready("subscriptions");
}

Datum
consumer_make_array(Datum *elements, bool *nulls, int count, Oid element_type)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			dims[1] = {count};
	int			lbs[1] = {1};

	get_typlenbyvalalign(element_type, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_md_array(elements, nulls, 1, dims, lbs, element_type,
											  typlen, typbyval, typalign));
}

/* Set while an error of the worker's own bookkeeping goes up: see consumer_blame_batch(). */
static bool batch_at_fault = false;

/*
 * The error being thrown is the batch's, not any message's: a statement of
 * the worker's own (the dedup ledger's) failed, and would fail for every
 * message, so isolating the messages would only dead-letter them all.
 * Cleared by consumer_clear_blame() when the next batch starts.
 */
void
consumer_blame_batch(void)
{
	batch_at_fault = true;
}

void
consumer_clear_blame(void)
{
	batch_at_fault = false;
}

/*
 * Is an error a message's fault?  Not when the batch is to blame, nor a
 * cancel or termination, nor a deadlock, serialization failure or lock
 * timeout met with another transaction (another worker's, say): the batch
 * is tried again as a whole, never dead-lettered for it.
 */
bool
consumer_is_message_fault(int sqlerrcode)
{
	return !batch_at_fault &&
		sqlerrcode != ERRCODE_QUERY_CANCELED && sqlerrcode != ERRCODE_ADMIN_SHUTDOWN &&
		sqlerrcode != ERRCODE_T_R_DEADLOCK_DETECTED &&
		sqlerrcode != ERRCODE_T_R_SERIALIZATION_FAILURE &&
		sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE;
}

/*
 * CONSUMER_IN_SUBTRANSACTION's PG_CATCH: roll the subtransaction back, back
 * in the caller's memory context and resource owner; returns the error's
 * text (in context) if is_caught accepts it, else throws it on up.
 */
char *
consumer_subtransaction_failed(MemoryContext context, ResourceOwner owner,
							   bool (*is_caught) (int sqlerrcode))
{
	ErrorData  *edata;

	MemoryContextSwitchTo(context);
	edata = CopyErrorData();
	FlushErrorState();
	RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(context);
	CurrentResourceOwner = owner;
	if (!is_caught(edata->sqlerrcode))
		ReThrowError(edata);
	return edata->message;
}

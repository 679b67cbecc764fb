/*
 * consumer_sql.c
 *		Helpers the consumer's statement files share: is the extension ready
 *		to be used, one-dimensional arrays for the statements' parameters,
 *		the plans of the statements made per target (metric upserts, mirror
 *		upserts and deletes), kept and found by their text, and running a
 *		piece of a batch in a subtransaction of its own.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "commands/extension.h"
#include "executor/spi.h"
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

/* Byte order of two texts: how the batch's keys are grouped and sorted. */
int
consumer_compare_texts(Datum a, Datum b)
{
	text	   *x = DatumGetTextPP(a);
	text	   *y = DatumGetTextPP(b);
	int			x_len = VARSIZE_ANY_EXHDR(x);
	int			y_len = VARSIZE_ANY_EXHDR(y);
	int			order = memcmp(VARDATA_ANY(x), VARDATA_ANY(y), Min(x_len, y_len));

	return order != 0 ? order : x_len - y_len;
}

/* Is this error the data's fault (a value that does not parse or fit), not the server's? */
bool
consumer_is_data_error(int sqlerrcode)
{
	return ERRCODE_TO_CATEGORY(sqlerrcode) == ERRCODE_DATA_EXCEPTION ||
		ERRCODE_TO_CATEGORY(sqlerrcode) == ERRCODE_PROGRAM_LIMIT_EXCEEDED;
}

/*
 * In a PG_CATCH block: the error, copied into context and flushed, when it
 * is the data's fault (consumer_is_data_error); any other error goes on up.
 * For code that catches without a subtransaction: only what allocates
 * memory and takes no lock (parsers, types' input functions) may run in
 * its PG_TRY.
 */
ErrorData *
consumer_caught_data_error(MemoryContext context)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(context);
	edata = CopyErrorData();
	if (!consumer_is_data_error(edata->sqlerrcode))
		PG_RE_THROW();
	FlushErrorState();
	return edata;
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

/*
 * The plans of the statements made per target, kept for the worker's life
 * and found by their text, so that no batch parses and plans them again.
 * Rules seldom change; when the distinct statements seen pass PLANS_KEPT,
 * all are dropped and made again.  The caller makes a plan as the role that
 * runs it: a plan made under another search_path is made again.
 */
#define PLANS_KEPT 64

typedef struct KeptPlan
{
	char	   *sql;
	SPIPlanPtr	plan;
} KeptPlan;

static List *kept_plans = NIL;

SPIPlanPtr
consumer_kept_plan(const char *sql, int nargs, Oid *types)
{
	ListCell   *lc;
	KeptPlan   *kept;
	SPIPlanPtr	plan;
	MemoryContext caller_context;

	foreach(lc, kept_plans)
	{
		kept = (KeptPlan *) lfirst(lc);
		if (strcmp(kept->sql, sql) == 0)
			return kept->plan;
	}
	if (list_length(kept_plans) >= PLANS_KEPT)
	{
		foreach(lc, kept_plans)
		{
			kept = (KeptPlan *) lfirst(lc);
			SPI_freeplan(kept->plan);
			pfree(kept->sql);
		}
		list_free_deep(kept_plans);
		kept_plans = NIL;
	}
	/* prepared first: a statement that fails to prepare is not kept */
	plan = worker_prepare_kept(sql, nargs, types, 0);
	caller_context = MemoryContextSwitchTo(TopMemoryContext);
	kept = palloc(sizeof(KeptPlan));
	kept->sql = pstrdup(sql);
	kept->plan = plan;
	kept_plans = lappend(kept_plans, kept);
	MemoryContextSwitchTo(caller_context);
	return plan;
}

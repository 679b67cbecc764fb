/*
 * consumer_apply.c
 *		Applying a batch of Kafka messages (or of dead letters retried) in
 *		one transaction: read the subscription and its rules, interpret each
 *		message, then the ledger, the handlers, the metric upserts and the
 *		mirrors' changes, the dead letters and the next offsets.  When a batch fails, it is applied
 *		again isolating the messages at fault (apply_in_halves).
 *
 * A batch's transaction holds, all or nothing: the dedup ledger rows of its
 * new events (consumer_ledger.c), the handlers' work (consumer_handlers.c),
 * the row locks (consumer_row_locks.c), the metric upserts
 * (consumer_metrics.c), the mirrors' upserts and deletes
 * (consumer_mirrors.c), its dead letters and its partitions' next offsets
 * (consumer_store.c).
 *
 * A handler runs in a subtransaction of its own: its error dead-letters
 * that message only.  Any other error fails the whole batch; the worker then
 * applies it again isolating failures (apply_in_halves), so the messages at
 * fault are dead-lettered and the rest applied.  The worker's own
 * statements run with search_path pg_catalog, pg_temp, and name every
 * function, operator and type with its schema all the same; the user's part
 * runs as the role that declared it (user_code.c), and a rule, handler or
 * mirror that cannot run any more dead-letters only the messages that need
 * it.
 * Every name is quoted.
 */
#include "postgres.h"

#include "executor/spi.h"
#include "utils/memutils.h"

#include "consumer.h"
#include "consumer_sql.h"
#include "worker/worker_loop.h"

/*
 * Ledger, handlers, metrics and mirrors of some of the batch's messages:
 * the duplicates found first, the rows the rules and mirrors write locked
 * before any of them is written, the ids of the messages applied recorded
 * last.
 */
static void
apply_effects(ConsumedMessage *messages, int count, int32 ledger_id,
			  const ConsumerRules *rules)
{
	consumer_find_duplicates(messages, count, ledger_id);
	consumer_run_handlers(messages, count);
	consumer_lock_rows(messages, count, rules);
	consumer_upsert_metrics(messages, count, rules);
	consumer_apply_mirrors(messages, count, rules);
	consumer_record_event_ids(messages, count, ledger_id);
}

/*
 * Apply the messages in a subtransaction; if that fails, apply each half
 * the same way, down to single messages, which are then dead-lettered with
 * the error.  One bad message among n costs about 2 log2(n)
 * subtransactions, not n (a subtransaction per message would slow every
 * batch that has to isolate a failure).
 */
static void
apply_in_halves(ConsumedMessage *messages, int count, int32 ledger_id,
				const ConsumerRules *rules)
{
	bool	   *to_apply = palloc(sizeof(bool) * count);
	bool		any = false;
	char	   *error;
	int			i;

	for (i = 0; i < count; i++)
	{
		to_apply[i] = messages[i].fate == MESSAGE_APPLIED;
		any |= to_apply[i];
	}
	if (!any)
		return;
	CONSUMER_IN_SUBTRANSACTION(error, consumer_is_message_fault,
							   apply_effects(messages, count, ledger_id, rules));
	if (error == NULL)
		return;
	/* all rolled back: the fates the attempt changed are void */
	for (i = 0; i < count; i++)
		if (to_apply[i])
		{
			messages[i].fate = MESSAGE_APPLIED;
			messages[i].error = NULL;
		}
	if (count == 1)
	{
		messages[0].fate = MESSAGE_DEAD;
		messages[0].error = error;
		return;
	}
	apply_in_halves(messages, count / 2, ledger_id, rules);
	apply_in_halves(messages + count / 2, count - count / 2, ledger_id, rules);
}

/* Clear what a message's interpretation points to in a transaction's memory. */
static void
forget_interpretation(ConsumedMessage *message)
{
	message->payload = NULL;
	message->event_type = NULL;
	message->event_id = NULL;
	message->effects = NIL;
	message->handlers = NIL;
	message->mirror_changes = NIL;
}

/* Interpret the messages from *next on, *next following the one at hand. */
static void
interpret_from(ConsumerBatch *batch, const ConsumerRules *rules, volatile int *next)
{
	for (; *next < batch->count; (*next)++)
		consumer_message_interpret(&batch->messages[*next], rules);
}

/*
 * Interpret the messages when isolating failures.  A value that a column
 * type's input function refuses with an error that is not a data error (a
 * tsvector's syntax error, a regclass naming no table) goes up from the
 * interpretation, which the first attempt runs without subtransactions,
 * and is the message's alone.  Here the messages are interpreted in one
 * subtransaction; one whose interpretation fails is dead-lettered, and the
 * rest interpreted in another: a subtransaction per failing message, not
 * per message.  What an interpretation keeps is in the caller's memory,
 * which a subtransaction's rollback leaves alone.
 */
static void
interpret_isolating(ConsumerBatch *batch, const ConsumerRules *rules)
{
	volatile int next = 0;

	while (next < batch->count)
	{
		ConsumedMessage *failed;
		char	   *error;

		CONSUMER_IN_SUBTRANSACTION(error, consumer_is_message_fault,
								   interpret_from(batch, rules, &next));
		if (error == NULL)
			return;
		failed = &batch->messages[next++];
		/* what the first attempt left points into its transaction's memory */
		forget_interpretation(failed);
		failed->fate = MESSAGE_DEAD;
		failed->error = error;
	}
}

/*
 * What the caller may read once the transaction is over: the fates, and
 * the errors copied out of SPI's memory (freed by SPI_finish, and for a
 * batch of large messages given back to the system, so never to be read
 * after it).  Pointers into that memory are cleared.
 */
static void
keep_outcome(ConsumerBatch *batch, MemoryContext caller_context)
{
	int			i;

	for (i = 0; i < batch->count; i++)
	{
		ConsumedMessage *message = &batch->messages[i];

		message->error = message->error ? MemoryContextStrdup(caller_context, message->error) : NULL;
		forget_interpretation(message);
	}
}

/*
 * Apply a batch in one transaction: interpret each message against the
 * subscription's current rules, apply the new ones (all at once, or, after
 * the batch failed, isolate_failures: see apply_in_halves), dead-letter what
 * cannot be applied, and store the next offsets.  Each message's fate says
 * what became of it.
 */
ApplyResult
consumer_apply_batch(ConsumerBatch *batch, const char *name, bool isolate_failures)
{
	MemoryContext caller_context;
	Subscription subscription;
	ConsumerRules rules;
	int			i;

	caller_context = worker_begin_transaction(isolate_failures
											  ? "eventpipe: applying a batch, isolating failures"
											  : "eventpipe: applying a batch");
	consumer_clear_blame();
	if (!consumer_extension_ready())
	{
		worker_end_transaction(caller_context);
		return APPLY_NO_EXTENSION;
	}
	worker_spi_connect();

	/*
	 * Gone, or dropped and made again under its name since the batch was
	 * read: the new one's rules, ledger and offsets are not this batch's.
	 * Locked, it stays the batch's one until the commit.
	 */
	if (!consumer_load_subscription(name, &subscription) ||
		subscription.id != batch->subscription_id ||
		!consumer_lock_subscription(subscription.id))
	{
		SPI_finish();
		worker_end_transaction(caller_context);
		return APPLY_NO_SUBSCRIPTION;
	}
	consumer_load_rules(name, &rules);
	consumer_message_fields(&rules, &subscription);
	if (isolate_failures)
		interpret_isolating(batch, &rules);
	else
		for (i = 0; i < batch->count; i++)
			consumer_message_interpret(&batch->messages[i], &rules);

	if (!isolate_failures)
		apply_effects(batch->messages, batch->count, subscription.id, &rules);
	else
		apply_in_halves(batch->messages, batch->count, subscription.id, &rules);

	if (batch->retry)
		consumer_settle_retries(batch);
	else
	{
		consumer_store_dead_letters(batch, name);
		consumer_store_offsets(batch, name);
	}
	keep_outcome(batch, caller_context);
	SPI_finish();
	worker_end_transaction(caller_context);
	return APPLY_DONE;
}

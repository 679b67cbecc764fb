/*
 * consumer_handlers.c
 *		Calling the handlers of a batch's messages: each message's handlers
 *		in a subtransaction of their own, each as the role that declared it,
 *		so that a handler's error dead-letters that message only.
 */
#include "postgres.h"

#include "access/xact.h"
#include "fmgr.h"
#include "utils/jsonb.h"

#include "consumer.h"
#include "consumer_sql.h"
#include "user_code.h"

/* Call the message's handlers, each as the role that declared it. */
static void
call_handlers(const ConsumedMessage *message)
{
	Datum		metadata = JsonbPGetDatum(consumer_message_metadata(message));
	ListCell   *lc;

	foreach(lc, message->handlers)
	{
		EventHandler *handler = (EventHandler *) lfirst(lc);
		FmgrInfo	flinfo;
		UserCodeContext user;

		LOCAL_FCINFO(fcinfo, 2);

		user_code_enter(handler->owner, &user);
		fmgr_info(handler->handler, &flinfo);
		InitFunctionCallInfoData(*fcinfo, &flinfo, 2, InvalidOid, NULL, NULL);
		fcinfo->args[0].value = JsonbPGetDatum(message->payload);
		fcinfo->args[0].isnull = false;
		fcinfo->args[1].value = metadata;
		fcinfo->args[1].isnull = false;
		(void) FunctionCallInvoke(fcinfo);	/* its result, even NULL, is ignored */
		user_code_leave(&user);
		CommandCounterIncrement();
	}
}

/*
 * Call the handlers of the messages to apply; a message whose handler fails
 * is dead, and its id stays out of the ledger.
 */
void
consumer_run_handlers(ConsumedMessage *messages, int count)
{
	int			i;

	for (i = 0; i < count; i++)
	{
		ConsumedMessage *message = &messages[i];

		if (message->fate != MESSAGE_APPLIED || message->handlers == NIL)
			continue;
		CONSUMER_IN_SUBTRANSACTION(message->error, consumer_is_message_fault,
								   call_handlers(message));
		if (message->error != NULL)
			message->fate = MESSAGE_DEAD;
	}
}

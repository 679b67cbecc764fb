/*
 * commit_wakeup.c
 *		Wakes the relay workers when a transaction that wrote to the outbox
 *		commits, so events leave in milliseconds instead of at the next poll;
 *		and the consumer manager when one changed eventpipe.subscriptions.
 *
 * publish() (or the subscriptions trigger) marks the transaction; a
 * transaction callback sets the workers' latches at commit.  Latches are found through the PGPROC numbers
 * the workers publish in shared memory; reading a stale number only causes a
 * spurious wake-up, so no lock is taken on this hot path.  Transactions
 * committed with COMMIT PREPARED in another session are found by the relay's
 * poll instead.
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"

#include "eventpipe.h"

static bool wake_at_commit = false;
static bool wake_manager_at_commit = false;
static bool callback_registered = false;

static void
wake_relay_workers(void)
{
	int			i;

	for (i = 0; i < EVENTPIPE_MAX_RELAY_WORKERS; i++)
	{
		volatile RelaySlot *slot = &eventpipe_shared->relay[i];

		if (slot->database == MyDatabaseId)
			eventpipe_set_latch_of(slot->procno);
	}
}

static void
commit_wakeup_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (wake_at_commit)
				wake_relay_workers();
			if (wake_manager_at_commit)
				eventpipe_set_latch_of(eventpipe_shared->consumer_manager_procno);
			wake_at_commit = false;
			wake_manager_at_commit = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			wake_at_commit = false;
			wake_manager_at_commit = false;
			break;
		default:
			break;
	}
}

static void
register_callback(void)
{
	if (!callback_registered)
	{
		RegisterXactCallback(commit_wakeup_callback, NULL);
		callback_registered = true;
	}
}

void
eventpipe_wake_relay_at_commit(void)
{
	register_callback();
	wake_at_commit = true;
}

void
eventpipe_wake_consumer_manager_at_commit(void)
{
	register_callback();
	wake_manager_at_commit = true;
}

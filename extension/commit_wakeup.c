/*
 * commit_wakeup.c
 *		Wakes the relay workers when a transaction that wrote to the outbox
 *		commits, so events leave in milliseconds instead of at the next poll,
 *		and tells them the lowest outbox id it committed; wakes the database
 *		manager when a transaction changed eventpipe.subscriptions, and the
 *		launcher when one created an extension.
 *
 * publish() (and the capture trigger) mark the transaction with the ids they
 * wrote, the subscriptions trigger marks it too; a transaction callback sets
 * the workers' latches at commit.  Latches are found through the PGPROC
 * numbers the workers publish in shared memory; reading a stale number only
 * causes a spurious wake-up, so no lock is taken on this hot path.
 *
 * The lowest id goes to every relay slot of the database (an atomic minimum) once the
 * commit is visible; from before it is visible (pre-commit) until then the
 * transaction counts in publishers_committing.  Why a relay needs both:
 * docs/design.md, "Waking at commit".
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"

#include "eventpipe.h"
#include "shmem.h"

static bool wake_at_commit = false;
static uint64 lowest_id_written;
static bool counted_as_committing = false;
static bool wake_manager_at_commit = false;
static bool relay_pause_changed = false;
static bool extension_created = false;
static bool callback_registered = false;

/* *target = Min(*target, value), atomically. */
static void
atomic_lower_to(pg_atomic_uint64 *target, uint64 value)
{
	uint64		current = pg_atomic_read_u64(target);

	while (value < current &&
		   !pg_atomic_compare_exchange_u64(target, &current, value))
		;
}

/*
 * Would new events make this relay do anything?  Not while it is paused
 * (resume_relay() wakes it) or has no brokers to send to (a reload that
 * sets them wakes it): waking it at every commit would only cost the
 * committing session a signal and the machine a process switch.  The
 * state is read without the lock: a stale value costs one needless
 * wake-up, or delays events by at most a poll interval, never loses them.
 */
static bool
relay_waits_for_events(RelaySlot *slot)
{
	RelayState	state = slot->state;

	return state != RELAY_PAUSED && state != RELAY_NOT_CONFIGURED;
}

/*
 * Every relay slot of the database hears of the commit, whether a worker
 * holds it or not: a worker just starting must not miss it.  A database
 * without a slot has no relay yet; the first run of one claims from the
 * start of the outbox.  After a pause or a resume they are woken whatever
 * they do.
 */
static void
wake_relay_workers(DatabaseSlot *database, bool events_written, bool pause_changed)
{
	int			i;

	for (i = 0; i < EVENTPIPE_MAX_RELAY_WORKERS; i++)
	{
		RelaySlot  *slot = &database->relay[i];

		if (events_written)
			atomic_lower_to(&slot->lowest_committed_id, lowest_id_written);
		if (pause_changed || relay_waits_for_events(slot))
			eventpipe_set_latch_of(slot->procno);
	}
}

/* The relays and the manager of this database hear of the commit. */
static void
wake_database_workers(void)
{
	DatabaseSlot *database;

	if (!wake_at_commit && !relay_pause_changed && !wake_manager_at_commit)
		return;
	database = eventpipe_find_database_slot(MyDatabaseId);
	if (database == NULL)
		return;
	if (wake_at_commit || relay_pause_changed)
		wake_relay_workers(database, wake_at_commit, relay_pause_changed);
	if (wake_manager_at_commit)
		eventpipe_set_latch_of(database->manager_procno);
}

static void
stop_counting_as_committing(void)
{
	if (counted_as_committing)
		pg_atomic_fetch_sub_u32(&eventpipe_shared->publishers_committing, 1);
	counted_as_committing = false;
}

static void
commit_wakeup_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			if (wake_at_commit && !counted_as_committing)
			{
				pg_atomic_fetch_add_u32(&eventpipe_shared->publishers_committing, 1);
				counted_as_committing = true;
			}
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (relay_pause_changed)
				pg_atomic_fetch_add_u32(&eventpipe_shared->relay_pause_generation, 1);
			wake_database_workers();
			stop_counting_as_committing();
			if (extension_created)
			{
				pg_atomic_fetch_add_u32(&eventpipe_shared->extension_generation, 1);
				eventpipe_set_latch_of(eventpipe_shared->launcher_procno);
			}
			wake_at_commit = false;
			wake_manager_at_commit = false;
			relay_pause_changed = false;
			extension_created = false;
			break;
		case XACT_EVENT_PRE_PREPARE:
			/* COMMIT PREPARED runs no callback: the relay would never hear of it */
			if (relay_pause_changed)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that paused or resumed the eventpipe relay")));
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			stop_counting_as_committing();
			wake_at_commit = false;
			wake_manager_at_commit = false;
			relay_pause_changed = false;
			extension_created = false;
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

/* The current transaction wrote outbox row outbox_id. */
void
eventpipe_wake_relay_at_commit(int64 outbox_id)
{
	register_callback();
	if (!wake_at_commit || (uint64) outbox_id < lowest_id_written)
		lowest_id_written = (uint64) outbox_id;
	wake_at_commit = true;
}

void
eventpipe_wake_consumer_manager_at_commit(void)
{
	register_callback();
	wake_manager_at_commit = true;
}

/*
 * The current transaction paused or resumed the relay: at commit, tell the
 * relay workers to read eventpipe.relay_pause again, and wake them.
 */
void
eventpipe_relay_pause_changed_at_commit(void)
{
	register_callback();
	relay_pause_changed = true;
}

/*
 * The current transaction created an extension: at commit, the launcher
 * looks again at the databases where it found no eventpipe.
 */
void
eventpipe_wake_launcher_at_commit(void)
{
	register_callback();
	extension_created = true;
}

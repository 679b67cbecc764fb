/*
 * relay_starter.c
 *		The database manager's part in relaying: at each of its turns it
 *		keeps one relay worker per shard (eventpipe.relay_workers) running
 *		in its database, restarting one that died at most once a second.
 *
 * A relay started by an earlier manager is seen through the pid its slot
 * keeps, and adopted, not doubled (two workers on one shard would break
 * per-key order; the relay itself also refuses a held slot).  A start that
 * fails (no background worker slot free) is tried again a second later,
 * with a WARNING the first time; the relay's row in pg_stat_relay then
 * says "waiting for a worker slot".
 */
#include "postgres.h"

#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "utils/timestamp.h"

#include "extension/guc.h"
#include "extension/shmem.h"
#include "relay.h"
#include "worker/worker_loop.h"

#define RESTART_DELAY_MS 1000

typedef struct RelayHandle
{
	BackgroundWorkerHandle *handle;
	TimestampTz started_at;
	bool		start_failed;
} RelayHandle;

static RelayHandle relays[EVENTPIPE_MAX_RELAY_WORKERS];

static bool
adopted(DatabaseSlot *database, int shard)
{
	pid_t		holder;

	LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
	holder = eventpipe_relay_slot_holder(&database->relay[shard]);
	LWLockRelease(eventpipe_shared->lock);
	return holder != 0;
}

static void
start_relay(DatabaseSlot *database, int shard, TimestampTz now)
{
	RelayHandle *relay = &relays[shard];
	char		name[BGW_MAXLEN];

	snprintf(name, sizeof(name), "eventpipe relay %d", shard);
	relay->started_at = now;
	if (worker_start_dynamic(MyDatabaseId, "eventpipe_relay_main", name, "eventpipe relay",
							 Int32GetDatum(shard), NULL, 0, &relay->handle))
	{
		relay->start_failed = false;
		return;
	}
	eventpipe_set_relay_state(&database->relay[shard], RELAY_WAITING_FOR_WORKER_SLOT);
	if (!relay->start_failed)
		ereport(WARNING,
				(errmsg("eventpipe database manager: relay worker %d waits for a background worker slot", shard),
				 errhint("Raise max_worker_processes (a restart is needed): each database eventpipe serves needs 1 + eventpipe.relay_workers + the workers of its subscriptions.")));
	relay->start_failed = true;
}

/* Start every relay worker of the database that does not run. */
void
relay_starter_reconcile(DatabaseSlot *database)
{
	TimestampTz now = GetCurrentTimestamp();
	int			shard;

	for (shard = 0; shard < eventpipe_relay_workers; shard++)
	{
		RelayHandle *relay = &relays[shard];

		if (worker_handle_is_running(&relay->handle) || adopted(database, shard))
			continue;
		if (TimestampDifferenceExceeds(relay->started_at, now, RESTART_DELAY_MS))
			start_relay(database, shard, now);
	}
}

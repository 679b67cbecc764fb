/*
 * shmem.c
 *		eventpipe's shared memory: the launcher's and relay workers' slots
 *		with their statistics.
 *
 * Locking: EventpipeShared->lock protects pid, procno, database, state and
 * the last-error fields of every slot, and the launcher and drop-database
 * fields.  Counters are pg_atomic_uint64 written only by the slot's own
 * worker; readers take no lock for them.  Nothing here points into
 * process-local memory.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

#include "eventpipe.h"

EventpipeShared *eventpipe_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
eventpipe_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(EventpipeShared)));
	RequestNamedLWLockTranche("eventpipe", 1);
}

static void
eventpipe_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	eventpipe_shared = ShmemInitStruct("eventpipe", sizeof(EventpipeShared), &found);
	if (!found)
	{
		int			i;

		memset(eventpipe_shared, 0, sizeof(EventpipeShared));
		eventpipe_shared->lock = &(GetNamedLWLockTranche("eventpipe"))->lock;
		eventpipe_shared->launcher_procno = -1;
		eventpipe_shared->stats_reset = GetCurrentTimestamp();
		pg_atomic_init_u32(&eventpipe_shared->publishers_committing, 0);
		for (i = 0; i < EVENTPIPE_MAX_RELAY_WORKERS; i++)
		{
			RelaySlot  *slot = &eventpipe_shared->relay[i];

			slot->procno = -1;
			slot->state = RELAY_STOPPED;
			pg_atomic_init_u64(&slot->events_sent, 0);
			pg_atomic_init_u64(&slot->events_failed, 0);
			pg_atomic_init_u64(&slot->events_retried, 0);
			pg_atomic_init_u64(&slot->events_dead, 0);
			pg_atomic_init_u64(&slot->batches, 0);
			pg_atomic_init_u64(&slot->bytes_sent, 0);
			pg_atomic_init_u64(&slot->last_latency_us, 0);
			pg_atomic_init_u64(&slot->lowest_committed_id, EVENTPIPE_NO_COMMITTED_ID);
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

void
eventpipe_install_shmem_hooks(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = eventpipe_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = eventpipe_shmem_startup;
}

void
eventpipe_set_relay_state(RelaySlot *slot, RelayState state)
{
	if (slot->state == state)
		return;
	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
	slot->state = state;
	LWLockRelease(eventpipe_shared->lock);
}

void
eventpipe_set_relay_error(RelaySlot *slot, const char *message)
{
	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
	strlcpy(slot->last_error, message, sizeof(slot->last_error));
	slot->last_error_time = GetCurrentTimestamp();
	LWLockRelease(eventpipe_shared->lock);
}

const char *
eventpipe_relay_state_name(RelayState state)
{
	switch (state)
	{
		case RELAY_STOPPED:
			return "stopped";
		case RELAY_NOT_CONFIGURED:
			return "not configured";
		case RELAY_NO_DATABASE:
			return "database missing";
		case RELAY_NO_EXTENSION:
			return "extension missing";
		case RELAY_IDLE:
			return "idle";
		case RELAY_RELAYING:
			return "relaying";
		case RELAY_WAITING_FOR_BROKER:
			return "waiting for broker";
	}
	return "unknown";
}

/*
 * The pid of the live relay worker that holds this slot, or 0.  A relay
 * survives a restart of the launcher that started it, so the launcher asks
 * here before starting another.  Caller holds eventpipe_shared->lock.
 */
pid_t
eventpipe_relay_slot_holder(RelaySlot *slot)
{
	if (slot->pid != 0 && BackendPidGetProc(slot->pid) != NULL)
		return slot->pid;
	return 0;
}

/* Wake the process with this PGPROC number; -1 (no process) is ignored. */
void
eventpipe_set_latch_of(int procno)
{
	if (procno >= 0)
		SetLatch(&ProcGlobal->allProcs[procno].procLatch);
}

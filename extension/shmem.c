/*
 * shmem.c
 *		eventpipe's shared memory: the launcher's, relay workers' and
 *		consumer workers' slots with their statistics.
 *
 * Locking: EventpipeShared->lock protects pid, procno, database, state and
 * the last-error fields of every slot, a consumer slot's subscription name
 * and worker number, the launcher, consumer manager and drop-database
 * fields, and the list of workers waiting to be started (and the names and
 * holders of the consumer partition slots, see consumer_partitions.c).
 * Counters are pg_atomic_uint64 written only by the slot's own
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

#include "shmem.h"
#include "compat.h"

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

/* Does another slot than this one belong to the subscription?  Caller holds the lock. */
static bool
other_slot_of(const ConsumerSlot *slot, const char *subscription)
{
	int			i;

	for (i = 0; i < EVENTPIPE_MAX_CONSUMERS; i++)
		if (&eventpipe_shared->consumer[i] != slot &&
			strcmp(eventpipe_shared->consumer[i].subscription, subscription) == 0)
			return true;
	return false;
}

/*
 * Empty a consumer slot and give it to worker of subscription, counters at
 * zero (the partitions of the subscription that held it too, when this was
 * its last slot).  Caller holds the lock.
 */
static void
reset_consumer_slot(ConsumerSlot *slot, const char *subscription, int worker)
{
	if (slot->subscription[0] != '\0' && strcmp(slot->subscription, subscription) != 0 &&
		!other_slot_of(slot, slot->subscription))
		eventpipe_forget_consumer_partitions(slot->subscription);
	strlcpy(slot->subscription, subscription, sizeof(slot->subscription));
	slot->worker = worker;
	slot->database = InvalidOid;
	slot->pid = 0;
	slot->procno = -1;
	slot->state = CONSUMER_STOPPED;
	pg_atomic_init_u64(&slot->events_applied, 0);
	pg_atomic_init_u64(&slot->duplicates, 0);
	pg_atomic_init_u64(&slot->unmatched, 0);
	pg_atomic_init_u64(&slot->events_dead, 0);
	pg_atomic_init_u64(&slot->batches, 0);
	slot->last_error[0] = '\0';
	slot->last_error_time = 0;
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
		pg_atomic_init_u32(&eventpipe_shared->relay_pause_generation, 0);
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
		eventpipe_shared->consumer_manager_procno = -1;
		for (i = 0; i < EVENTPIPE_MAX_CONSUMERS; i++)
			reset_consumer_slot(&eventpipe_shared->consumer[i], "", 0);
		eventpipe_init_consumer_partitions();
	}
	LWLockRelease(AddinShmemInitLock);
}

void
eventpipe_install_shmem_hooks(void)
{
	prev_shmem_request_hook = compat_install_shmem_request_hook(eventpipe_shmem_request);
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

/* A slot's last error (EVENTPIPE_ERROR_LEN bytes) and its time. */
static void
set_error(char *last_error, TimestampTz *last_error_time, const char *message)
{
	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
	strlcpy(last_error, message, EVENTPIPE_ERROR_LEN);
	*last_error_time = GetCurrentTimestamp();
	LWLockRelease(eventpipe_shared->lock);
}

void
eventpipe_set_relay_error(RelaySlot *slot, const char *message)
{
	set_error(slot->last_error, &slot->last_error_time, message);
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
		case RELAY_PAUSED:
			return "paused";
		case RELAY_RECOVERING:
			return "recovering";
		case RELAY_FENCED:
			return "fenced";
		case RELAY_WAITING_FOR_COORDINATOR:
			return "waiting for transaction coordinator";
		case RELAY_TRANSACTION_TIMED_OUT:
			return "transaction timed out";
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

/* Is DROP DATABASE of this database under way (a worker in it must leave)? */
bool
eventpipe_database_is_being_dropped(Oid database)
{
	bool		dropping;

	LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
	dropping = eventpipe_shared->dropping_database == database;
	LWLockRelease(eventpipe_shared->lock);
	return dropping;
}

static pid_t
consumer_holder(ConsumerSlot *slot)
{
	if (slot->pid != 0 && BackendPidGetProc(slot->pid) != NULL)
		return slot->pid;
	return 0;
}

static bool
is_slot_of(const ConsumerSlot *slot, const char *subscription, int worker)
{
	return slot->worker == worker && strcmp(slot->subscription, subscription) == 0;
}

/*
 * The live process that is this worker of this subscription, or 0.  The
 * consumer manager asks before starting a worker: one started by an earlier
 * manager may still run.
 */
pid_t
eventpipe_consumer_slot_holder(const char *subscription, int worker)
{
	pid_t		holder = 0;
	int			i;

	LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
	for (i = 0; i < EVENTPIPE_MAX_CONSUMERS; i++)
	{
		ConsumerSlot *slot = &eventpipe_shared->consumer[i];

		if (is_slot_of(slot, subscription, worker))
			holder = consumer_holder(slot);
	}
	LWLockRelease(eventpipe_shared->lock);
	return holder;
}

/*
 * Would eventpipe_claim_consumer_slot() find a slot for a worker (one no
 * live process holds)?  The consumer manager asks
 * before starting a worker: a worker that finds none could only leave, and
 * be started again a second later.
 */
bool
eventpipe_consumer_slot_available(void)
{
	bool		available = false;
	int			i;

	LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
	for (i = 0; i < EVENTPIPE_MAX_CONSUMERS && !available; i++)
	{
		ConsumerSlot *slot = &eventpipe_shared->consumer[i];

		available = slot->subscription[0] == '\0' || consumer_holder(slot) == 0;
	}
	LWLockRelease(eventpipe_shared->lock);
	return available;
}

/*
 * Publish the workers waiting to be started (count of them, the first
 * EVENTPIPE_MAX_WAITING_CONSUMERS by subscription and worker), replacing the
 * previous list.
 */
void
eventpipe_set_waiting_consumers(const ConsumerWaiting *waiting, int count)
{
	int			listed = Min(count, EVENTPIPE_MAX_WAITING_CONSUMERS);

	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
	if (listed > 0)
		memcpy(eventpipe_shared->consumer_waiting, waiting, sizeof(ConsumerWaiting) * listed);
	eventpipe_shared->consumer_waiting_listed = listed;
	eventpipe_shared->consumer_waiting_count = count;
	LWLockRelease(eventpipe_shared->lock);
}

/*
 * Take the slot of this worker of the subscription for the calling process:
 * the one with its name and number (counters kept), else a free one, else
 * one no process holds.  Returns NULL when none is left, or when a live
 * process holds the worker's slot (its pid then in *holder).
 */
ConsumerSlot *
eventpipe_claim_consumer_slot(const char *subscription, int worker, pid_t *holder)
{
	ConsumerSlot *found = NULL;
	ConsumerSlot *free_slot = NULL;
	ConsumerSlot *idle_slot = NULL;
	int			i;

	*holder = 0;
	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < EVENTPIPE_MAX_CONSUMERS; i++)
	{
		ConsumerSlot *slot = &eventpipe_shared->consumer[i];

		if (is_slot_of(slot, subscription, worker))
			found = slot;
		else if (slot->subscription[0] == '\0' && free_slot == NULL)
			free_slot = slot;
		else if (consumer_holder(slot) == 0 && idle_slot == NULL)
			idle_slot = slot;
	}
	if (found != NULL && (*holder = consumer_holder(found)) != 0)
		found = NULL;
	else if (found == NULL && (found = free_slot ? free_slot : idle_slot) != NULL)
		reset_consumer_slot(found, subscription, worker);
	if (found != NULL)
	{
		found->pid = MyProcPid;
		found->procno = GetNumberFromPGProc(MyProc);
		found->database = MyDatabaseId;
		found->state = CONSUMER_STARTING;
	}
	LWLockRelease(eventpipe_shared->lock);
	return found;
}

/*
 * The calling process leaves its slot and the partitions it held; with
 * forget (its subscription is gone), its slot and those of the
 * subscription's other workers that no process holds (workers it no longer
 * asked for) are freed for other subscriptions, counters and all.
 */
void
eventpipe_release_consumer_slot(ConsumerSlot *slot, bool forget)
{
	int			i;

	eventpipe_release_consumer_partitions(slot->subscription, slot->worker);
	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
	if (slot->pid == MyProcPid)
	{
		if (forget)
		{
			for (i = 0; i < EVENTPIPE_MAX_CONSUMERS; i++)
			{
				ConsumerSlot *other = &eventpipe_shared->consumer[i];

				if (other != slot && strcmp(other->subscription, slot->subscription) == 0 &&
					consumer_holder(other) == 0)
					reset_consumer_slot(other, "", 0);
			}
			reset_consumer_slot(slot, "", 0);
		}
		slot->pid = 0;
		slot->procno = -1;
		slot->database = InvalidOid;
		slot->state = CONSUMER_STOPPED;
	}
	LWLockRelease(eventpipe_shared->lock);
}

void
eventpipe_set_consumer_state(ConsumerSlot *slot, ConsumerState state)
{
	if (slot->state == state)
		return;
	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
	slot->state = state;
	LWLockRelease(eventpipe_shared->lock);
}

void
eventpipe_set_consumer_error(ConsumerSlot *slot, const char *message)
{
	set_error(slot->last_error, &slot->last_error_time, message);
}

const char *
eventpipe_consumer_state_name(ConsumerState state)
{
	switch (state)
	{
		case CONSUMER_STOPPED:
			return "stopped";
		case CONSUMER_NOT_CONFIGURED:
			return "not configured";
		case CONSUMER_STARTING:
			return "starting";
		case CONSUMER_IDLE:
			return "idle";
		case CONSUMER_APPLYING:
			return "applying";
		case CONSUMER_WAITING_FOR_BROKER:
			return "waiting for broker";
		case CONSUMER_BACKING_OFF:
			return "backing off";
		case CONSUMER_PAUSED:
			return "paused";
	}
	return "unknown";
}

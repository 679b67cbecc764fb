/*
 * shmem.c
 *		eventpipe's shared memory: the launcher's, relay workers' and
 *		consumer workers' slots with their statistics (the databases' slots
 *		are database_slots.c's).
 *
 * Locking: EventpipeShared->lock protects pid, procno, database, state and
 * the last-error fields of every slot, a consumer slot's subscription name
 * and worker number, the launcher's fields, the database slots (see
 * database_shmem.h) and the lists of workers waiting to be started (and
 * the names and holders of the consumer partition slots, see
 * consumer_partitions.c).
 * Counters are pg_atomic_uint64 written only by the slot's own
 * worker; readers take no lock for them.  Nothing here points into
 * process-local memory.
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

#include "guc.h"
#include "shmem.h"
#include "compat.h"

EventpipeShared *eventpipe_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* The shared state with eventpipe.max_databases database slots. */
static Size
shared_size(void)
{
	return add_size(offsetof(EventpipeShared, database),
					mul_size(eventpipe_max_databases, sizeof(DatabaseSlot)));
}

static void
eventpipe_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(shared_size()));
	RequestNamedLWLockTranche("eventpipe", 1);
}

/* Does the slot belong to the subscription of database? */
static bool
belongs_to(const ConsumerSlot *slot, Oid database, const char *subscription)
{
	return slot->database == database && strcmp(slot->subscription, subscription) == 0;
}

/* Does another slot than this one belong to its subscription?  Caller holds the lock. */
static bool
other_slot_of(const ConsumerSlot *slot)
{
	int			i;

	for (i = 0; i < EVENTPIPE_MAX_CONSUMERS; i++)
		if (&eventpipe_shared->consumer[i] != slot &&
			belongs_to(&eventpipe_shared->consumer[i], slot->database, slot->subscription))
			return true;
	return false;
}

/*
 * Empty a consumer slot and give it to worker of subscription of database,
 * counters at zero (the partitions of the subscription that held it too,
 * when this was its last slot).  Caller holds the lock.
 */
static void
reset_consumer_slot(ConsumerSlot *slot, Oid database, const char *subscription, int worker)
{
	if (slot->subscription[0] != '\0' && !belongs_to(slot, database, subscription) &&
		!other_slot_of(slot))
		eventpipe_forget_consumer_partitions(slot->database, slot->subscription);
	strlcpy(slot->subscription, subscription, sizeof(slot->subscription));
	slot->worker = worker;
	slot->database = database;
	slot->pid = 0;
	slot->procno = -1;
	slot->group = 0;
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
	eventpipe_shared = ShmemInitStruct("eventpipe", shared_size(), &found);
	if (!found)
	{
		int			i;

		memset(eventpipe_shared, 0, shared_size());
		eventpipe_shared->lock = &(GetNamedLWLockTranche("eventpipe"))->lock;
		eventpipe_shared->launcher_procno = -1;
		eventpipe_shared->stats_reset = GetCurrentTimestamp();
		pg_atomic_init_u32(&eventpipe_shared->publishers_committing, 0);
		pg_atomic_init_u32(&eventpipe_shared->relay_pause_generation, 0);
		pg_atomic_init_u32(&eventpipe_shared->extension_generation, 0);
		eventpipe_shared->max_databases = eventpipe_max_databases;
		for (i = 0; i < eventpipe_max_databases; i++)
			eventpipe_init_database_slot(&eventpipe_shared->database[i]);
		for (i = 0; i < EVENTPIPE_MAX_CONSUMERS; i++)
			reset_consumer_slot(&eventpipe_shared->consumer[i], InvalidOid, "", 0);
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

/* A relay slot with no process, counters at zero. */
void
eventpipe_init_relay_slot(RelaySlot *slot)
{
	slot->pid = 0;
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
	slot->last_error[0] = '\0';
	slot->last_error_time = 0;
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
		case RELAY_NOT_SERVED:
			return "not served";
		case RELAY_WAITING_FOR_DATABASE_SLOT:
			return "waiting for a database slot";
		case RELAY_WAITING_FOR_WORKER_SLOT:
			return "waiting for a worker slot";
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

static pid_t
consumer_holder(ConsumerSlot *slot)
{
	if (slot->pid != 0 && BackendPidGetProc(slot->pid) != NULL)
		return slot->pid;
	return 0;
}

/* Is slot that of worker of subscription, of the caller's database? */
static bool
is_slot_of(const ConsumerSlot *slot, const char *subscription, int worker)
{
	return slot->worker == worker && belongs_to(slot, MyDatabaseId, subscription);
}

/*
 * The live process that is this worker of this subscription (of the
 * caller's database), or 0.  The
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
 * Publish the workers of the database's slot waiting to be started (count
 * of them, the first EVENTPIPE_MAX_WAITING_CONSUMERS by subscription and
 * worker), replacing the previous list.
 */
void
eventpipe_set_waiting_consumers(DatabaseSlot *database, const ConsumerWaiting *waiting, int count)
{
	int			listed = Min(count, EVENTPIPE_MAX_WAITING_CONSUMERS);

	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
	if (listed > 0)
		memcpy(database->consumer_waiting, waiting, sizeof(ConsumerWaiting) * listed);
	database->consumer_waiting_listed = listed;
	database->consumer_waiting_count = count;
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
		reset_consumer_slot(found, MyDatabaseId, subscription, worker);
	if (found != NULL)
	{
		found->pid = MyProcPid;
		found->procno = GetNumberFromPGProc(MyProc);
		found->group = 0;
		found->state = CONSUMER_STARTING;
	}
	LWLockRelease(eventpipe_shared->lock);
	return found;
}

/* The 64-bit hash of a consumer group's id, never 0 (0 is "no group"). */
static uint64
group_hash(const char *group_id)
{
	uint64		hash = hash_bytes_extended((const unsigned char *) group_id, strlen(group_id), 0);

	return hash == 0 ? 1 : hash;
}

/*
 * Let the calling worker, in slot, join consumer group group_id, unless a
 * live worker of another database is in it: subscriptions of two databases
 * in one group would split the topics' partitions between them, each
 * database missing the other's share.  The group goes to whichever comes
 * first.  false when taken, with the holder's database and subscription
 * (EVENTPIPE_SUBSCRIPTION_LEN bytes).  Only the slot's process writes its
 * group, so reading it needs no lock; the lock makes the look and the join
 * one step, so that two databases' workers never both join.
 */
bool
eventpipe_join_consumer_group(ConsumerSlot *slot, const char *group_id,
							  Oid *holder_database, char *holder_subscription)
{
	uint64		group = group_hash(group_id);
	bool		joined = true;
	int			i;

	if (slot->group == group)
		return true;
	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < EVENTPIPE_MAX_CONSUMERS && joined; i++)
	{
		ConsumerSlot *other = &eventpipe_shared->consumer[i];

		if (other->group == group && other->database != slot->database &&
			consumer_holder(other) != 0)
		{
			joined = false;
			*holder_database = other->database;
			strlcpy(holder_subscription, other->subscription, EVENTPIPE_SUBSCRIPTION_LEN);
		}
	}
	if (joined)
		slot->group = group;
	LWLockRelease(eventpipe_shared->lock);
	return joined;
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

				if (other != slot && belongs_to(other, slot->database, slot->subscription) &&
					consumer_holder(other) == 0)
					reset_consumer_slot(other, InvalidOid, "", 0);
			}
			reset_consumer_slot(slot, InvalidOid, "", 0);
		}
		slot->pid = 0;
		slot->procno = -1;
		slot->state = CONSUMER_STOPPED;
	}
	LWLockRelease(eventpipe_shared->lock);
}

/*
 * A database is no longer served (its slot is being freed): its consumer
 * slots that no process holds are freed, with their partitions' counters,
 * so that they neither linger in consumer_stats_all() nor take slots from
 * other databases.  Caller holds the lock exclusively.
 */
void
eventpipe_forget_database_consumers(Oid database)
{
	int			i;

	for (i = 0; i < EVENTPIPE_MAX_CONSUMERS; i++)
	{
		ConsumerSlot *slot = &eventpipe_shared->consumer[i];

		if (slot->subscription[0] != '\0' && slot->database == database &&
			consumer_holder(slot) == 0)
			reset_consumer_slot(slot, InvalidOid, "", 0);
	}
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
		case CONSUMER_GROUP_TAKEN:
			return "waiting for its consumer group";
	}
	return "unknown";
}

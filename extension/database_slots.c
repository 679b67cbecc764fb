/*
 * database_slots.c
 *		The databases' slots in shared memory (database_shmem.h): given out
 *		and freed by the launcher, found by the processes of a database,
 *		which leave when their slot says so; and the list of databases
 *		waiting for one.
 *
 * Locking: every field but the relay counters is read and written under
 * EventpipeShared->lock.  A slot is freed only when no process holds a
 * part of it (its manager, snapshot worker, relay slots, or a consumer slot
 * of its database), so a process that found its slot keeps it until it
 * exits; a process that starts after its slot was freed finds none, and
 * leaves.
 */
#include "postgres.h"

#include <signal.h>

#include "miscadmin.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/timestamp.h"

#include "shmem.h"
#include "compat.h"

/* A free slot (at server start, and when the launcher frees one). */
void
eventpipe_init_database_slot(DatabaseSlot *slot)
{
	int			i;

	slot->database = InvalidOid;
	slot->leave = false;
	slot->dropping = false;
	slot->no_extension = false;
	slot->manager_waiting = false;
	slot->manager_pid = 0;
	slot->manager_procno = -1;
	slot->snapshot_worker_pid = 0;
	slot->snapshot_worker_procno = -1;
	slot->consumer_waiting_count = 0;
	slot->consumer_waiting_listed = 0;
	for (i = 0; i < EVENTPIPE_MAX_RELAY_WORKERS; i++)
		eventpipe_init_relay_slot(&slot->relay[i]);
}

/*
 * The slot of database, or NULL.  Caller holds the lock, or accepts a slot
 * that may be given to another database meanwhile (commit_wakeup.c: a
 * stale slot costs a needless wake-up).
 */
DatabaseSlot *
eventpipe_find_database_slot(Oid database)
{
	int			i;

	for (i = 0; i < eventpipe_shared->max_databases; i++)
		if (eventpipe_shared->database[i].database == database)
			return &eventpipe_shared->database[i];
	return NULL;
}

/* The slot of database, or NULL when it has none. */
DatabaseSlot *
eventpipe_database_slot(Oid database)
{
	DatabaseSlot *slot;

	if (!OidIsValid(database))
		return NULL;
	LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
	slot = eventpipe_find_database_slot(database);
	LWLockRelease(eventpipe_shared->lock);
	return slot;
}

/* For the launcher: a free slot given to database, or NULL when none is free. */
DatabaseSlot *
eventpipe_claim_database_slot(Oid database)
{
	DatabaseSlot *slot;

	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
	slot = eventpipe_find_database_slot(InvalidOid);
	if (slot != NULL)
	{
		eventpipe_init_database_slot(slot);
		slot->database = database;
		slot->stats_reset = GetCurrentTimestamp();
	}
	LWLockRelease(eventpipe_shared->lock);
	return slot;
}

static bool
is_alive(pid_t pid)
{
	return pid != 0 && BackendPidGetProc(pid) != NULL;
}

/* Most processes a database's slot has: manager, snapshot worker, relays, consumers. */
#define DATABASE_MAX_PROCESSES (2 + EVENTPIPE_MAX_RELAY_WORKERS + EVENTPIPE_MAX_CONSUMERS)

static void
note_if_alive(pid_t pid, pid_t *pids, int *count)
{
	if (!is_alive(pid))
		return;
	if (pids != NULL)
		pids[*count] = pid;
	(*count)++;
}

/*
 * The live processes that hold a part of the slot: how many, and their
 * pids in pids (DATABASE_MAX_PROCESSES of room) unless it is NULL.  Caller
 * holds the lock.
 */
static int
live_processes(DatabaseSlot *slot, pid_t *pids)
{
	int			count = 0;
	int			i;

	note_if_alive(slot->manager_pid, pids, &count);
	note_if_alive(slot->snapshot_worker_pid, pids, &count);
	for (i = 0; i < EVENTPIPE_MAX_RELAY_WORKERS; i++)
		note_if_alive(slot->relay[i].pid, pids, &count);
	for (i = 0; i < EVENTPIPE_MAX_CONSUMERS; i++)
		if (eventpipe_shared->consumer[i].database == slot->database)
			note_if_alive(eventpipe_shared->consumer[i].pid, pids, &count);
	return count;
}

/* Does a live process hold a part of the slot?  Caller holds the lock. */
static bool
slot_in_use(DatabaseSlot *slot)
{
	return live_processes(slot, NULL) > 0;
}

/*
 * SIGTERM every process of database that is still there, for DROP
 * DATABASE's hook once they had time to leave on their own: one in a long
 * batch (a slow handler) checks only between steps.  A signal from this
 * process needs no role check: they run as the same OS user, while the
 * server would refuse a database owner who is no superuser to terminate
 * them (WITH (FORCE)).
 */
void
eventpipe_terminate_database_processes(Oid database)
{
	pid_t		pids[DATABASE_MAX_PROCESSES];
	DatabaseSlot *slot;
	int			count = 0;
	int			i;

	LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
	slot = eventpipe_find_database_slot(database);
	if (slot != NULL)
		count = live_processes(slot, pids);
	LWLockRelease(eventpipe_shared->lock);
	for (i = 0; i < count; i++)
		(void) kill(pids[i], SIGTERM);
}

bool
eventpipe_database_slot_in_use(DatabaseSlot *slot)
{
	bool		in_use;

	LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
	in_use = slot_in_use(slot);
	LWLockRelease(eventpipe_shared->lock);
	return in_use;
}

/*
 * For the launcher: free the slot, and the consumer slots of its database,
 * unless a process still holds a part of it (it is told to leave first).
 */
void
eventpipe_free_database_slot(DatabaseSlot *slot)
{
	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
	if (!slot_in_use(slot))
	{
		eventpipe_forget_database_consumers(slot->database);
		eventpipe_init_database_slot(slot);
	}
	LWLockRelease(eventpipe_shared->lock);
}

/* The pid and procno fields of a place of the slot. */
static void
place_fields(DatabaseSlot *slot, DatabasePlace place, pid_t **pid, int **procno)
{
	if (place == DATABASE_MANAGER_PLACE)
	{
		*pid = &slot->manager_pid;
		*procno = &slot->manager_procno;
	}
	else
	{
		*pid = &slot->snapshot_worker_pid;
		*procno = &slot->snapshot_worker_procno;
	}
}

/*
 * Take, for the calling process, a place of its database's slot that one
 * process has at a time (its manager's, its snapshot worker's).  Returns
 * the slot; NULL when the database has none, or when a live process holds
 * the place (its pid then in *holder).  The slot is found under the lock
 * the launcher frees slots under, so that it cannot go to another database
 * between finding and taking.
 */
DatabaseSlot *
eventpipe_take_database_place(DatabasePlace place, pid_t *holder)
{
	DatabaseSlot *slot;
	pid_t	   *pid;
	int		   *procno;

	*holder = 0;
	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
	slot = eventpipe_find_database_slot(MyDatabaseId);
	if (slot != NULL)
	{
		place_fields(slot, place, &pid, &procno);
		if (is_alive(*pid))
		{
			*holder = *pid;
			slot = NULL;
		}
		else
		{
			*pid = MyProcPid;
			*procno = GetNumberFromPGProc(MyProc);
		}
	}
	LWLockRelease(eventpipe_shared->lock);
	return slot;
}

/* Give such a place back, if the calling process holds it. */
void
eventpipe_leave_database_place(DatabaseSlot *slot, DatabasePlace place)
{
	pid_t	   *pid;
	int		   *procno;

	place_fields(slot, place, &pid, &procno);
	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
	if (*pid == MyProcPid)
	{
		*pid = 0;
		*procno = -1;
	}
	LWLockRelease(eventpipe_shared->lock);
}

/* Set the latch of every process of the slot's database. */
void
eventpipe_wake_database(DatabaseSlot *slot)
{
	int			i;

	LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
	eventpipe_set_latch_of(slot->manager_procno);
	eventpipe_set_latch_of(slot->snapshot_worker_procno);
	for (i = 0; i < EVENTPIPE_MAX_RELAY_WORKERS; i++)
		eventpipe_set_latch_of(slot->relay[i].procno);
	for (i = 0; i < EVENTPIPE_MAX_CONSUMERS; i++)
		if (eventpipe_shared->consumer[i].database == slot->database)
			eventpipe_set_latch_of(eventpipe_shared->consumer[i].procno);
	LWLockRelease(eventpipe_shared->lock);
}

/*
 * Tell the processes of database to leave, and wake them; dropping: DROP
 * DATABASE is under way.  Returns whether the database has a slot.
 */
bool
eventpipe_tell_database_to_leave(Oid database, bool dropping)
{
	DatabaseSlot *slot;

	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
	slot = eventpipe_find_database_slot(database);
	if (slot != NULL)
	{
		slot->leave = true;
		slot->dropping |= dropping;
	}
	LWLockRelease(eventpipe_shared->lock);
	if (slot != NULL)
		eventpipe_wake_database(slot);
	return slot != NULL;
}

/* Has every process of database left (or has it no slot)? */
bool
eventpipe_database_processes_gone(Oid database)
{
	DatabaseSlot *slot;
	bool		gone;

	LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
	slot = eventpipe_find_database_slot(database);
	gone = slot == NULL || !slot_in_use(slot);
	LWLockRelease(eventpipe_shared->lock);
	return gone;
}

/*
 * Must a process of database leave: its slot is gone, or says so (the
 * database is being dropped, accepts no connections, or is no longer
 * served)?
 */
bool
eventpipe_database_must_leave(Oid database)
{
	DatabaseSlot *slot;
	bool		leave;

	LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
	slot = eventpipe_find_database_slot(database);
	leave = slot == NULL || slot->leave;
	LWLockRelease(eventpipe_shared->lock);
	return leave;
}

/* Is DROP DATABASE of this database under way? */
bool
eventpipe_database_is_being_dropped(Oid database)
{
	DatabaseSlot *slot;
	bool		dropping;

	LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
	slot = eventpipe_find_database_slot(database);
	dropping = slot != NULL && slot->dropping;
	LWLockRelease(eventpipe_shared->lock);
	return dropping;
}

/* Does database wait for a slot (all of them taken when the launcher looked)? */
bool
eventpipe_database_is_waiting(Oid database)
{
	bool		waiting = false;
	int			i;

	LWLockAcquire(eventpipe_shared->lock, LW_SHARED);
	for (i = 0; i < eventpipe_shared->databases_waiting_listed; i++)
		waiting |= eventpipe_shared->databases_waiting[i] == database;
	LWLockRelease(eventpipe_shared->lock);
	return waiting;
}

/* For the launcher: the databases waiting for a slot now (count of them). */
void
eventpipe_set_waiting_databases(const Oid *databases, int count)
{
	int			listed = Min(count, EVENTPIPE_MAX_WAITING_DATABASES);

	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
	if (listed > 0)
		memcpy(eventpipe_shared->databases_waiting, databases, sizeof(Oid) * listed);
	eventpipe_shared->databases_waiting_listed = listed;
	eventpipe_shared->databases_waiting_count = count;
	LWLockRelease(eventpipe_shared->lock);
}

/*
 * database_shmem.h
 *		The per-database part of the shared state (shmem.h includes it): one
 *		slot per database the launcher looks after (eventpipe.max_databases
 *		of them), with its database manager's and snapshot worker's
 *		processes, its relay slots and its consumer workers waiting to be
 *		started; and the databases waiting for a slot.
 */
#ifndef EVENTPIPE_DATABASE_SHMEM_H
#define EVENTPIPE_DATABASE_SHMEM_H

#ifndef EVENTPIPE_SHMEM_H
#error "include extension/shmem.h, which includes this file"
#endif

/* Most databases listed as waiting for a slot (more are only counted). */
#define EVENTPIPE_MAX_WAITING_DATABASES 64

/*
 * One database's slot.  The launcher alone gives it out and frees it
 * (database), once no process of the database holds a part of it; every
 * field but the relay counters is written under EventpipeShared->lock.
 * Its processes find it by their database's OID when they start, and leave
 * when leave is set: the database is being dropped (dropping, set by the
 * DROP DATABASE hook), accepts no connections any more, or is no longer
 * named by eventpipe.database.
 */
typedef struct DatabaseSlot
{
	Oid			database;		/* InvalidOid: free */
	bool		leave;
	bool		dropping;
	/* the manager found no extension eventpipe here and left */
	bool		no_extension;
	/* no background worker was free for the manager */
	bool		manager_waiting;
	/* since when its counters count: when it got the slot, or stat_reset() */
	TimestampTz stats_reset;
	pid_t		manager_pid;
	int			manager_procno;
	/* the snapshot worker, started by the manager while a snapshot runs */
	pid_t		snapshot_worker_pid;
	int			snapshot_worker_procno;
	/*
	 * The subscriptions waiting for a worker: the first
	 * consumer_waiting_listed of consumer_waiting_count by name.
	 */
	int			consumer_waiting_count;
	int			consumer_waiting_listed;
	ConsumerWaiting consumer_waiting[EVENTPIPE_MAX_WAITING_CONSUMERS];
	RelaySlot	relay[EVENTPIPE_MAX_RELAY_WORKERS];
} DatabaseSlot;

/* The places of a database's slot that one process holds at a time. */
typedef enum DatabasePlace
{
	DATABASE_MANAGER_PLACE,
	SNAPSHOT_WORKER_PLACE
} DatabasePlace;

/* database_slots.c */
extern void eventpipe_init_database_slot(DatabaseSlot *slot);
extern DatabaseSlot *eventpipe_database_slot(Oid database);
extern DatabaseSlot *eventpipe_find_database_slot(Oid database);
extern DatabaseSlot *eventpipe_claim_database_slot(Oid database);
extern bool eventpipe_database_slot_in_use(DatabaseSlot *slot);
extern void eventpipe_free_database_slot(DatabaseSlot *slot);
extern void eventpipe_wake_database(DatabaseSlot *slot);
extern DatabaseSlot *eventpipe_take_database_place(DatabasePlace place, pid_t *holder);
extern void eventpipe_leave_database_place(DatabaseSlot *slot, DatabasePlace place);
extern bool eventpipe_tell_database_to_leave(Oid database, bool dropping);
extern bool eventpipe_database_must_leave(Oid database);
extern bool eventpipe_database_processes_gone(Oid database);
extern void eventpipe_terminate_database_processes(Oid database);
extern bool eventpipe_database_is_being_dropped(Oid database);
extern bool eventpipe_database_is_waiting(Oid database);
extern void eventpipe_set_waiting_databases(const Oid *databases, int count);

/* shmem.c */
extern void eventpipe_set_waiting_consumers(DatabaseSlot *database, const ConsumerWaiting *waiting,
										   int count);

#endif							/* EVENTPIPE_DATABASE_SHMEM_H */

/*
 * database_drop.c
 *		Keeps the workers from blocking DROP DATABASE of the database they
 *		serve.
 *
 * DROP DATABASE runs the object-access hook before it waits (at most five
 * seconds) for other sessions to leave the database.  The hook records the
 * database in shared memory and wakes the workers: a relay worker, consumer
 * worker or consumer manager connected to it exits at once, and the
 * launcher starts no new one while the drop is pending (as long as the DROP
 * holds the database's lock: a DROP that fails lets them back at once).
 */
#include "postgres.h"

#include "catalog/objectaccess.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"

#include "eventpipe.h"
#include "guc.h"
#include "shmem.h"

static object_access_hook_type prev_object_access_hook = NULL;

static void
announce_database_drop(Oid database)
{
	char	   *name = get_database_name(database);
	bool		served;
	int			i;

	/* the configured database, or one a relay still runs in */
	served = name != NULL && strcmp(name, eventpipe_database) == 0;
	LWLockAcquire(eventpipe_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < EVENTPIPE_MAX_RELAY_WORKERS; i++)
		served |= (eventpipe_shared->relay[i].database == database);
	for (i = 0; i < EVENTPIPE_MAX_CONSUMERS; i++)
		served |= (eventpipe_shared->consumer[i].database == database);
	served |= (eventpipe_shared->consumer_manager_database == database);
	if (served)
		eventpipe_shared->dropping_database = database;
	LWLockRelease(eventpipe_shared->lock);

	if (!served)
		return;
	for (i = 0; i < EVENTPIPE_MAX_RELAY_WORKERS; i++)
		eventpipe_set_latch_of(eventpipe_shared->relay[i].procno);
	for (i = 0; i < EVENTPIPE_MAX_CONSUMERS; i++)
		eventpipe_set_latch_of(eventpipe_shared->consumer[i].procno);
	eventpipe_set_latch_of(eventpipe_shared->consumer_manager_procno);
	eventpipe_set_latch_of(eventpipe_shared->launcher_procno);
}

static void
eventpipe_object_access(ObjectAccessType access, Oid classId, Oid objectId,
						int subId, void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);

	if (access == OAT_DROP && classId == DatabaseRelationId && eventpipe_shared != NULL)
		announce_database_drop(objectId);
}

void
eventpipe_install_drop_database_hook(void)
{
	prev_object_access_hook = object_access_hook;
	object_access_hook = eventpipe_object_access;
}

/*
 * object_access.c
 *		Hears, through the object-access hook, of the two catalog changes
 *		the launcher must not wait a poll for: DROP DATABASE of a database
 *		eventpipe serves, and CREATE EXTENSION.
 *
 * DROP DATABASE runs the hook before it waits (at most five seconds) for
 * other sessions to leave the database, and before WITH (FORCE) signals
 * them.  The hook marks the database's slot as being dropped and wakes its
 * workers and the launcher: every worker connected to it exits at once,
 * and the launcher starts none there while the drop is pending (as long as
 * the DROP holds the database's lock: a DROP that fails lets them back at
 * once).  The hook then waits for them to be gone (as long as DROP itself
 * would): WITH (FORCE) run by a database owner who is no superuser could
 * not signal them, since they run as the bootstrap superuser.
 *
 * CREATE EXTENSION (of any extension: at post-create the new row cannot be
 * read back yet) wakes the launcher when it commits, which then looks
 * again at the databases where it found no eventpipe.
 */
#include "postgres.h"

#include "catalog/objectaccess.h"
#include "catalog/pg_database.h"
#include "catalog/pg_extension.h"
#include "miscadmin.h"

#include "eventpipe.h"
#include "shmem.h"

static object_access_hook_type prev_object_access_hook = NULL;

/* How long the hook waits for the workers, as DROP DATABASE waits for sessions. */
#define DROP_PATIENCE_MS 5000
#define DROP_POLL_MS 10

static void
announce_database_drop(Oid database)
{
	int			waited;

	if (!eventpipe_tell_database_to_leave(database, true))
		return;
	eventpipe_set_latch_of(eventpipe_shared->launcher_procno);
	for (waited = 0; waited < DROP_PATIENCE_MS && !eventpipe_database_processes_gone(database);
		 waited += DROP_POLL_MS)
	{
		CHECK_FOR_INTERRUPTS();
		pg_usleep(DROP_POLL_MS * 1000L);
	}
}

static void
eventpipe_object_access(ObjectAccessType access, Oid classId, Oid objectId,
						int subId, void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);

	if (eventpipe_shared == NULL)
		return;
	if (access == OAT_DROP && classId == DatabaseRelationId)
		announce_database_drop(objectId);
	else if (access == OAT_POST_CREATE && classId == ExtensionRelationId)
		eventpipe_wake_launcher_at_commit();
}

void
eventpipe_install_object_access_hook(void)
{
	prev_object_access_hook = object_access_hook;
	object_access_hook = eventpipe_object_access;
}

/*
 * object_access.c
 *		Hears, through the object-access hook, of the two catalog changes
 *		the launcher must not wait a poll for: DROP DATABASE of a database
 *		eventpipe serves, and CREATE EXTENSION.
 *
 * DROP DATABASE runs the hook before it waits (at most five seconds) for
 * other sessions to leave the database, and before WITH (FORCE) signals
 * them.  The hook marks the database's slot as being dropped and wakes its
 * workers and the launcher: every worker connected to it exits between two
 * steps, and the launcher starts none there while the drop is pending (as
 * long as the DROP holds the database's lock: a DROP that fails lets them
 * back at once).  The hook then waits for them to be gone (as long as DROP
 * itself would), and after a second terminates those still there (a batch
 * in a slow handler): WITH (FORCE) run by a database owner who is no
 * superuser could not, since they run as the bootstrap superuser.  A DROP
 * of the current database, which is refused after the hook, is ignored.
 *
 * CREATE EXTENSION eventpipe wakes the launcher when it commits, which then
 * looks again at the databases where it found no eventpipe.  It is
 * recognised by the first object its script creates (at the extension's
 * own post-create its row cannot be read back yet): other extensions wake
 * nothing, so no role that may create one can make the launcher probe
 * every database over and over.
 */
#include "postgres.h"

#include "catalog/objectaccess.h"
#include "catalog/pg_database.h"
#include "commands/extension.h"
#include "miscadmin.h"

#include "eventpipe.h"
#include "shmem.h"

static object_access_hook_type prev_object_access_hook = NULL;

/*
 * How long the hook waits for the workers, as DROP DATABASE waits for
 * sessions; those still there after the grace are terminated.
 */
#define DROP_PATIENCE_MS 5000
#define DROP_GRACE_MS 1000
#define DROP_POLL_MS 10

/* Wait up to ms for the database's processes to be gone; true if they are. */
static bool
wait_until_gone(Oid database, int ms)
{
	int			waited;

	for (waited = 0; waited < ms; waited += DROP_POLL_MS)
	{
		if (eventpipe_database_processes_gone(database))
			return true;
		CHECK_FOR_INTERRUPTS();
		pg_usleep(DROP_POLL_MS * 1000L);
	}
	return eventpipe_database_processes_gone(database);
}

static void
announce_database_drop(Oid database)
{
	if (database == MyDatabaseId || !eventpipe_tell_database_to_leave(database, true))
		return;
	eventpipe_set_latch_of(eventpipe_shared->launcher_procno);
	if (wait_until_gone(database, DROP_GRACE_MS))
		return;
	eventpipe_terminate_database_processes(database);
	(void) wait_until_gone(database, DROP_PATIENCE_MS - DROP_GRACE_MS);
}

/*
 * An object was made by the script of extension: if that is eventpipe,
 * wake the launcher at commit.  Looked up once per extension (the last one
 * seen), not for each of its objects.
 */
static void
note_extension_script(Oid extension)
{
	static Oid	last_seen = InvalidOid;

	if (!OidIsValid(extension) || extension == last_seen)
		return;
	last_seen = extension;
	if (extension == get_extension_oid("eventpipe", true))
		eventpipe_wake_launcher_at_commit();
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
	else if (access == OAT_POST_CREATE && creating_extension)
		note_extension_script(CurrentExtensionObject);
}

void
eventpipe_install_object_access_hook(void)
{
	prev_object_access_hook = object_access_hook;
	object_access_hook = eventpipe_object_access;
}

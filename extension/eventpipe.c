/*
 * eventpipe.c
 *		Module entry point: checks how the library was loaded, then defines
 *		the configuration, reserves shared memory, installs the hooks and
 *		registers the launcher worker.
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"

#include "eventpipe.h"
#include "guc.h"
#include "shmem.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	if (IsBinaryUpgrade)
		return;

	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("eventpipe must be loaded via shared_preload_libraries"),
				 errhint("Add eventpipe to shared_preload_libraries in postgresql.conf and restart the server.")));

	eventpipe_define_gucs();
	eventpipe_install_shmem_hooks();
	eventpipe_install_object_access_hook();
	eventpipe_install_owned_objects_hook();
	eventpipe_register_launcher();
}

/*
 * relay_pause_trigger.c
 *		The statement trigger on eventpipe.relay_pause, the table that
 *		pause_relay() and resume_relay() write: at commit the relay workers
 *		are told to read it again and woken, so a pause or a resume takes
 *		effect within the relay's current run rather than at its next poll.
 */
#include "postgres.h"

#include "fmgr.h"

#include "eventpipe.h"

PG_FUNCTION_INFO_V1(eventpipe_relay_pause_changed);

Datum
eventpipe_relay_pause_changed(PG_FUNCTION_ARGS)
{
	eventpipe_require_own_table(fcinfo, "relay_pause_changed", "relay_pause");
	eventpipe_relay_pause_changed_at_commit();
	return PointerGetDatum(NULL);
}

/*
 * capture.h
 *		What capture.c (capture(), uncapture(), the captures view) and
 *		capture_trigger.c (the triggers themselves) agree on: the triggers'
 *		names and the layout of the row trigger's arguments, which hold a
 *		capture's settings; and how the snapshot worker finds a capture's
 *		settings and emits its "read" events the way the trigger emits the
 *		others.
 */
#ifndef EVENTPIPE_CAPTURE_H
#define EVENTPIPE_CAPTURE_H

#include "postgres.h"

#include "access/htup.h"
#include "commands/trigger.h"
#include "utils/relcache.h"

/* The row-level AFTER INSERT OR UPDATE OR DELETE trigger of a captured table */
#define CAPTURE_ROW_TRIGGER "eventpipe_capture"
/* Its BEFORE TRUNCATE statement trigger, which refuses the TRUNCATE */
#define CAPTURE_TRUNCATE_TRIGGER "eventpipe_capture_truncate"

/*
 * Arguments of the row trigger, in order: the topic, the event type (empty
 * for the default "<table>.<op>"), skip_unchanged ("true" or "false"), then
 * the names of the key columns (one or more).
 */
#define CAPTURE_ARG_TOPIC			0
#define CAPTURE_ARG_EVENT_TYPE		1
#define CAPTURE_ARG_SKIP_UNCHANGED	2
#define CAPTURE_ARG_FIRST_KEY		3

/* capture_trigger.c: the capture's row trigger, and the snapshot's events */
extern Trigger *capture_row_trigger(Relation rel);
extern void capture_emit_read_event(Relation rel, Trigger *trigger, HeapTuple row);

/* Oid of a function's owner: the extension's owner for our functions */
extern Oid	eventpipe_function_owner(Oid funcid);

#endif							/* EVENTPIPE_CAPTURE_H */

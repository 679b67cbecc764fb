/*
 * outbox_delete.c
 *		Deletes the delivered events' rows where the claim found them, by
 *		their row address (ctid), without planning or running a DELETE.
 *
 * A DELETE ... WHERE id = ANY(...) descends the primary key once per row
 * and runs the executor around each deletion: most of the cost of
 * recording a full batch.  The claim already knows where each row is, so
 * this fetches the row there, checks that it is still the row of that
 * event (its id and event id) and deletes it with the table access method.
 *
 * A row is not where the claim saw it when VACUUM FULL or CLUSTER moved it
 * meanwhile, or when someone else deleted or updated it; the address may
 * then hold another row, or nothing.  Such events are handed back to the
 * caller, which deletes them by id: the identity check is what makes an
 * address safe to trust, never the address alone.
 *
 * The access method does what the executor's DELETE would, except firing
 * triggers: the extension creates no DELETE trigger on eventpipe.outbox,
 * but when someone else has (a foreign key referencing it makes one too),
 * every delivered event is handed back, to be deleted by SQL.
 */
#include "postgres.h"

#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "executor/tuptable.h"
#include "storage/bufmgr.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "relay.h"

/* Where the columns that identify an event are in the outbox's rows. */
typedef struct Identity
{
	AttrNumber	id;
	AttrNumber	event_id;
} Identity;

/*
 * Whether the row at event's address is visible and is event's row.  The
 * address may be past the table's end (of blocks blocks, since a VACUUM
 * truncated it): nothing can be read there.
 */
static bool
still_there(Relation outbox, BlockNumber blocks, TupleTableSlot *slot, Identity *identity,
			OutboxEvent *event, Snapshot snapshot)
{
	bool		id_isnull;
	bool		event_id_isnull;
	Datum		id;
	Datum		event_id;

	if (!ItemPointerIsValid(&event->ctid) ||
		ItemPointerGetBlockNumber(&event->ctid) >= blocks ||
		!table_tuple_fetch_row_version(outbox, &event->ctid, snapshot, slot))
		return false;
	id = slot_getattr(slot, identity->id, &id_isnull);
	event_id = slot_getattr(slot, identity->event_id, &event_id_isnull);
	return !id_isnull && DatumGetInt64(id) == event->id &&
		!event_id_isnull &&
		memcmp(DatumGetUUIDP(event_id), &event->event_uuid, sizeof(pg_uuid_t)) == 0;
}

/* Whether a DELETE of the outbox would fire a trigger. */
static bool
has_delete_triggers(Relation outbox)
{
	TriggerDesc *triggers = outbox->trigdesc;

	return triggers != NULL &&
		(triggers->trig_delete_before_row || triggers->trig_delete_after_row ||
		 triggers->trig_delete_instead_row || triggers->trig_delete_before_statement ||
		 triggers->trig_delete_after_statement);
}

/*
 * In the caller's transaction, delete the rows of the count events of
 * events that are still where they were claimed; return the others, which
 * the caller deletes by id, in *left (allocated in the current memory
 * context) and their number.
 */
int
outbox_delete_in_place(OutboxEvent **events, int count, OutboxEvent ***left)
{
	Oid			outbox_oid = get_relname_relid("outbox", get_namespace_oid("eventpipe", false));
	Relation	outbox;
	Identity	identity;
	BlockNumber blocks;
	TupleTableSlot *slot;
	Snapshot	snapshot = GetActiveSnapshot();
	CommandId	command = GetCurrentCommandId(true);
	int			left_count = 0;
	int			i;

	*left = palloc(sizeof(OutboxEvent *) * Max(count, 1));
	if (!OidIsValid(outbox_oid))
		elog(ERROR, "eventpipe: relation eventpipe.outbox does not exist");
	outbox = table_open(outbox_oid, RowExclusiveLock);
	if (has_delete_triggers(outbox))
	{
		table_close(outbox, NoLock);
		memcpy(*left, events, sizeof(OutboxEvent *) * count);
		return count;
	}
	identity.id = get_attnum(outbox_oid, outbox_column_names[COL_ID]);
	identity.event_id = get_attnum(outbox_oid, outbox_column_names[COL_EVENT_ID]);
	if (identity.id == InvalidAttrNumber || identity.event_id == InvalidAttrNumber)
		elog(ERROR, "eventpipe: eventpipe.outbox has no id or no event_id column");
	/* our lock keeps VACUUM from truncating the table until we commit */
	blocks = RelationGetNumberOfBlocks(outbox);
	slot = table_slot_create(outbox, NULL);
	for (i = 0; i < count; i++)
	{
		OutboxEvent *event = events[i];
		TM_FailureData failure;

		if (still_there(outbox, blocks, slot, &identity, event, snapshot) &&
			table_tuple_delete(outbox, &event->ctid, command, snapshot, InvalidSnapshot,
							   true, &failure, false) == TM_Ok)
			continue;
		(*left)[left_count++] = event;
	}
	ExecDropSingleTupleTableSlot(slot);
	table_close(outbox, NoLock);
	if (left_count > 0)
		elog(DEBUG1, "eventpipe relay: %d of %d delivered rows were no longer where they "
			 "were claimed; deleting them by id", left_count, count);
	return left_count;
}

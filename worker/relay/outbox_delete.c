/*
 * outbox_delete.c
 *		Deletes the delivered events' rows where the claim found them, by
 *		their row address (ctid), without planning or running a DELETE.
 *
 * A DELETE ... WHERE id = ANY(...) descends the primary key once per row
 * and runs the executor around each deletion: most of the cost of
 * recording a full batch.  The claim already knows where each row is, so
 * this fetches the row there, checks that it is still the row of that id
 * and deletes it with the table access method, as the executor would.
 *
 * A row is not where the claim saw it when VACUUM FULL or CLUSTER moved it
 * meanwhile, or when someone else deleted or updated it; the address may
 * then hold another row, or nothing.  Such events are handed back to the
 * caller, which deletes them by id: the id check is what makes an address
 * safe to trust, never the address alone.
 *
 * eventpipe.outbox has no row triggers, rules or foreign keys (the
 * extension creates only a BEFORE TRUNCATE trigger on it), so the executor
 * would do nothing here that the access method does not: heap_delete()
 * writes the WAL record and counts the deletion in the table's statistics.
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

/*
 * Whether the row at event's address is visible and is event's row.  The
 * address may be past the table's end (blocks, of which there are
 * nblocks, since a VACUUM truncated it): nothing can be read there.
 */
static bool
still_there(Relation outbox, BlockNumber blocks, TupleTableSlot *slot, OutboxEvent *event,
			Snapshot snapshot)
{
	bool		isnull;
	Datum		id;

	if (!ItemPointerIsValid(&event->ctid) ||
		ItemPointerGetBlockNumber(&event->ctid) >= blocks ||
		!table_tuple_fetch_row_version(outbox, &event->ctid, snapshot, slot))
		return false;
	id = slot_getattr(slot, 1, &isnull);
	return !isnull && DatumGetInt64(id) == event->id;
}

/*
 * In the caller's transaction, delete the rows of the count events of
 * events that are still where they were claimed; return the others, which
 * the caller deletes by id, in *moved (allocated in the current memory
 * context) and their number.
 */
int
outbox_delete_in_place(OutboxEvent **events, int count, OutboxEvent ***moved)
{
	Oid			outbox_oid = get_relname_relid("outbox", get_namespace_oid("eventpipe", false));
	Relation	outbox;
	BlockNumber blocks;
	TupleTableSlot *slot;
	Snapshot	snapshot = GetActiveSnapshot();
	CommandId	command = GetCurrentCommandId(true);
	int			moved_count = 0;
	int			i;

	*moved = palloc(sizeof(OutboxEvent *) * Max(count, 1));
	if (!OidIsValid(outbox_oid))
		elog(ERROR, "eventpipe: relation eventpipe.outbox does not exist");
	outbox = table_open(outbox_oid, RowExclusiveLock);
	/* our lock keeps VACUUM from truncating the table until we commit */
	blocks = RelationGetNumberOfBlocks(outbox);
	slot = table_slot_create(outbox, NULL);
	for (i = 0; i < count; i++)
	{
		OutboxEvent *event = events[i];
		TM_FailureData failure;

		if (still_there(outbox, blocks, slot, event, snapshot) &&
			table_tuple_delete(outbox, &event->ctid, command, snapshot, InvalidSnapshot,
							   true, &failure, false) == TM_Ok)
			continue;
		(*moved)[moved_count++] = event;
	}
	ExecDropSingleTupleTableSlot(slot);
	table_close(outbox, NoLock);
	return moved_count;
}

/*
 * outbox_scan.c
 *		The claim of a batch when no event waits for a retry, without SPI
 *		or the executor: the outbox's primary key read in order past
 *		after_id, each visible row tested for the worker's shard and the
 *		batches in flight in C, and its columns copied straight out of the
 *		heap tuple.
 *
 * While no row has a retry scheduled, every committed row is due and none
 * is held back by an earlier event of its key: the SQL claim's conditions
 * reduce to the id, the shard and the ids in flight.  Whether such a row
 * exists is read from the partial index outbox_retrying (rows with
 * next_attempt_at set), under the same snapshot as the scan, so the two
 * agree.  When one does, outbox.c runs the SQL claim, which knows how to
 * hold back the later events of its key.
 *
 * The shard is the SQL function eventpipe.relay_shard(key, id, workers),
 * computed here the same way: hashtext() of the key (of the id's text when
 * there is no key), its sign bit cleared, modulo the number of workers.
 * pg_stat_relay's backlog calls the SQL function, and t/105 (b2) checks
 * that each of four workers sends exactly the rows it gives that worker.
 *
 * Columns are found by name at each claim: an outbox that went through
 * upgrades may not have them where a fresh one has.  The primary key and
 * outbox_retrying are used only while valid, as the planner would.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/relscan.h"
#include "access/skey.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/namespace.h"
#include "catalog/pg_collation.h"
#include "executor/tuptable.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "extension/compat.h"
#include "relay.h"

/* The attribute numbers of the columns a claim reads, looked up by name. */
static void
find_columns(Relation outbox, AttrNumber *columns)
{
	int			c;

	for (c = 0; c < OUTBOX_COLUMNS; c++)
	{
		columns[c] = get_attnum(RelationGetRelid(outbox), outbox_column_names[c]);
		if (columns[c] == InvalidAttrNumber)
			elog(ERROR, "eventpipe.outbox has no column \"%s\"", outbox_column_names[c]);
	}
}

/*
 * The outbox's index index_oid, opened, if it is one a query may use (the
 * planner passes over the others: a CREATE INDEX CONCURRENTLY that failed,
 * or the old index of a REINDEX CONCURRENTLY); NULL if not.
 */
static Relation
open_usable_index(Relation outbox, Oid index_oid)
{
	Relation	index;

	if (!OidIsValid(index_oid))
		return NULL;
	index = index_open(index_oid, AccessShareLock);
	if (index->rd_index->indrelid != RelationGetRelid(outbox) ||
		!index->rd_index->indisvalid || !index->rd_index->indisready)
	{
		index_close(index, AccessShareLock);
		return NULL;
	}
	return index;
}

/* Whether the partial index of rows with a retry scheduled has a visible entry. */
static bool
any_retry_scheduled(Relation outbox, Relation retrying, Snapshot snapshot)
{
	TupleTableSlot *slot = table_slot_create(outbox, NULL);
	IndexScanDesc scan = index_beginscan(outbox, retrying, snapshot, NULL, 0, 0);
	bool		found;

	index_rescan(scan, NULL, 0, NULL, 0);
	found = index_getnext_slot(scan, ForwardScanDirection, slot);
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	return found;
}

/* eventpipe.relay_shard(key, id, shards), as the SQL function computes it. */
static int
shard_of(Datum key, bool key_isnull, int64 id, int shards)
{
	char		id_text[MAXINT8LEN + 1];
	text	   *hashed;
	int32		hash;

	if (!key_isnull)
		hash = DatumGetInt32(DirectFunctionCall1Coll(hashtext, DEFAULT_COLLATION_OID, key));
	else
	{
		pg_lltoa(id, id_text);
		hashed = cstring_to_text(id_text);
		hash = DatumGetInt32(DirectFunctionCall1Coll(hashtext, DEFAULT_COLLATION_OID,
													 PointerGetDatum(hashed)));
		pfree(hashed);
	}
	return (hash & 0x7fffffff) % shards;
}

static int
compare_ids(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return (x > y) - (x < y);
}

/*
 * In the caller's transaction, under its active snapshot: read up to limit
 * rows (and RELAY_BATCH_MAX_BYTES of events) of shard number shard (of
 * shards) with ids above after_id into batch, allocated in batch_context,
 * passing over the in_flight_count ids of in_flight (which this sorts).
 * Returns false, reading nothing, when some row has a retry scheduled, or
 * an index it reads is missing or unusable: the SQL claim must run.
 * Otherwise batch->seen has the lowest and highest ids of the rows read.
 */
bool
outbox_scan_claim(OutboxBatch *batch, MemoryContext batch_context, int limit, int shard,
				  int shards, int64 after_id, int64 *in_flight, int in_flight_count)
{
	Oid			outbox_oid = get_relname_relid("outbox", get_namespace_oid("eventpipe", false));
	Snapshot	snapshot = GetActiveSnapshot();
	Relation	outbox;
	Relation	pkey;
	Relation	retrying;
	AttrNumber	columns[OUTBOX_COLUMNS];
	TupleTableSlot *slot;
	IndexScanDesc scan;
	ScanKeyData past;
	MemoryContext scan_context;
	int			capacity;
	Size		bytes = 0;

	batch->count = 0;
	batch->events = NULL;
	batch->full = false;
	if (!OidIsValid(outbox_oid))
		return false;
	outbox = table_open(outbox_oid, AccessShareLock);
	pkey = open_usable_index(outbox, RelationGetPrimaryKeyIndex(outbox, false));
	retrying = open_usable_index(outbox,
								 get_relname_relid("outbox_retrying",
												   RelationGetNamespace(outbox)));
	if (pkey == NULL || retrying == NULL || any_retry_scheduled(outbox, retrying, snapshot))
	{
		if (pkey != NULL)
			index_close(pkey, NoLock);
		if (retrying != NULL)
			index_close(retrying, NoLock);
		table_close(outbox, NoLock);
		return false;
	}
	index_close(retrying, NoLock);
	find_columns(outbox, columns);
	if (in_flight_count > 1)
		qsort(in_flight, in_flight_count, sizeof(int64), compare_ids);

	capacity = Min(limit, 64);
	batch->events = MemoryContextAlloc(batch_context, sizeof(OutboxEvent) * capacity);
	slot = table_slot_create(outbox, NULL);
	ScanKeyInit(&past, 1, BTGreaterStrategyNumber, F_INT8GT, Int64GetDatum(after_id));
	scan = index_beginscan(outbox, pkey, snapshot, NULL, 1, 0);
	index_rescan(scan, &past, 1, NULL, 0);
	scan_context = MemoryContextSwitchTo(batch_context);
	while (!batch->full && index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		int64		id;

		CHECK_FOR_INTERRUPTS();
		slot_getallattrs(slot);
		id = DatumGetInt64(slot->tts_values[columns[COL_ID] - 1]);
		if (batch->seen.lowest_id == 0)
			batch->seen.lowest_id = id;
		batch->seen.highest_id = id;
		if (in_flight_count > 0 &&
			bsearch(&id, in_flight, in_flight_count, sizeof(int64), compare_ids) != NULL)
			continue;
		if (shards > 1 &&
			shard_of(slot->tts_values[columns[COL_KEY] - 1],
					 slot->tts_isnull[columns[COL_KEY] - 1], id, shards) != shard)
			continue;
		if (batch->count == capacity)
		{
			capacity = Min(limit, capacity * 2);
			batch->events = repalloc(batch->events, sizeof(OutboxEvent) * capacity);
		}
		bytes += outbox_copy_event(&batch->events[batch->count++], slot->tts_values,
								   slot->tts_isnull, columns, &slot->tts_tid);
		batch->full = batch->count >= limit || bytes >= RELAY_BATCH_MAX_BYTES;
	}
	MemoryContextSwitchTo(scan_context);
	batch->seen.rows_read = true;
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(pkey, NoLock);
	table_close(outbox, NoLock);
	return true;
}

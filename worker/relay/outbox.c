/*
 * outbox.c
 *		The relay's statements against eventpipe.outbox: read the next batch
 *		of due events of this worker's shard, then record what became of
 *		them (delete the delivered, reschedule or dead-letter the failed).
 *		Each runs in a short transaction of its own, so no transaction stays
 *		open while waiting for the broker.
 *
 * A claim reads the rows committed, due and still there, in id order,
 * passing over those of the batches in flight, either from the start or past
 * the batches in flight when relay_pipeline.c knows that no row can have
 * become due below them.  While no row has a retry scheduled, outbox_scan.c
 * reads the batch without SPI; the SQL claim below serves the other
 * claims.  A claim keeps each row's address (ctid), where
 * outbox_delete.c deletes the delivered rows, and its payload's JSON text
 * (payload_text.c).
 *
 * With eventpipe.relay_exactly_once, the recovery deletes the rows that
 * Kafka's last committed transactions carried (relay_transaction.c): by
 * id and event id, both.
 *
 * Order per key: an event with a retry scheduled holds back every later
 * event of its topic and key, until it is delivered or dead-lettered.
 *
 * Every function, operator and type in these statements is named with its
 * schema (pg_catalog.now(), OPERATOR(pg_catalog.=), ::pg_catalog.uuid), so
 * that no object another user creates can stand in for one, whatever the
 * search_path.  unnest() of two arrays is
 * written ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)), what
 * the parser makes of unnest($1, $2), which it accepts only unqualified.
 */
#include "postgres.h"

#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "catalog/pg_sequence.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "pgstat.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "nodes/makefuncs.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "extension/eventpipe.h"
#include "relay.h"
#include "relay_transaction.h"
#include "worker/worker_loop.h"

/*
 * Up to this many ids in flight are passed over by a plan made once
 * (compared one by one); more, by a plan made for the claim's ids.
 */
#define FEW_IDS_IN_FLIGHT 32

/*
 * A claim: %s is nothing, or the test that passes over the ids in flight.
 * An earlier event of the key with a retry scheduled, due or not, holds
 * this one back: a due retry is claimed first, and the events after it in
 * the following batches.  Most claims find no retry scheduled at all: the
 * first NOT EXISTS, uncorrelated, runs once per claim (an InitPlan) and
 * spares each row the lookup of the second (no anti-join is planned for a
 * NOT EXISTS under OR), which finds the key by its hash in outbox_retrying.
 */
#define CLAIM_SQL(passing_over) \
	"SELECT o.id, o.event_id, o.topic, o.key, o.payload, o.headers," \
	"       o.event_type, o.created_at, o.attempts, o.ctid" \
	"  FROM eventpipe.outbox AS o" \
	" WHERE o.id OPERATOR(pg_catalog.>) $4 " passing_over \
	"   AND (o.next_attempt_at IS NULL" \
	"        OR o.next_attempt_at OPERATOR(pg_catalog.<=) pg_catalog.now())" \
	"   AND ($2 OPERATOR(pg_catalog.=) 1" \
	"        OR eventpipe.relay_shard(o.key, o.id, $2) OPERATOR(pg_catalog.=) $3)" \
	"   AND (NOT EXISTS (SELECT FROM eventpipe.outbox AS r" \
	"                     WHERE r.next_attempt_at IS NOT NULL)" \
	"        OR NOT EXISTS (SELECT FROM eventpipe.outbox AS w" \
	"                        WHERE w.next_attempt_at IS NOT NULL" \
	"                          AND w.topic OPERATOR(pg_catalog.=) o.topic" \
	"                          AND pg_catalog.hashtext(w.key)" \
	"                              OPERATOR(pg_catalog.=) pg_catalog.hashtext(o.key)" \
	"                          AND w.key OPERATOR(pg_catalog.=) o.key" \
	"                          AND w.id OPERATOR(pg_catalog.<) o.id))" \
	" ORDER BY o.id" \
	" LIMIT $1"
#define PASSING_OVER "AND (o.id OPERATOR(pg_catalog.=) ANY ($5)) IS NOT TRUE"

typedef enum OutboxStatement
{
	CLAIM,
	CLAIM_PASSING_OVER_FEW,
	CLAIM_PASSING_OVER,
	DELETE_DELIVERED,
	RESCHEDULE,
	BURY,
	FORGET_COMMITTED,
	OUTBOX_STATEMENTS
} OutboxStatement;

/*
 * The plan that passes over many ids in flight is made for each claim's
 * ids, as constants (a custom plan): the planner then looks them up in a
 * hash table.  PostgreSQL 14 hashes = ANY but not <> ALL, and the planner
 * turns NOT (= ANY) into <> ALL: (= ANY) IS NOT TRUE, the same for ids
 * (never null), keeps the hashed = ANY.  Planning costs more than the
 * rest of a claim of a few rows, when commits come one by one and a
 * publisher is often committing as the relay claims (so that it claims
 * from the start passing over one or two ids): a few ids are passed over
 * by a generic plan made once.
 */
static WorkerStatement statements[OUTBOX_STATEMENTS] = {
	[CLAIM] = {
		"claim a batch of the outbox", CLAIM_SQL(""),
		true, 4, {INT4OID, INT4OID, INT4OID, INT8OID}, CURSOR_OPT_GENERIC_PLAN
	},
	[CLAIM_PASSING_OVER_FEW] = {
		"claim a batch of the outbox, passing over a few ids", CLAIM_SQL(PASSING_OVER),
		true, 5, {INT4OID, INT4OID, INT4OID, INT8OID, INT8ARRAYOID}, CURSOR_OPT_GENERIC_PLAN
	},
	[CLAIM_PASSING_OVER] = {
		"claim a batch of the outbox, passing over ids", CLAIM_SQL(PASSING_OVER),
		true, 5, {INT4OID, INT4OID, INT4OID, INT8OID, INT8ARRAYOID}, CURSOR_OPT_CUSTOM_PLAN
	},
	[DELETE_DELIVERED] = {
		"delete the delivered events",
		"DELETE FROM eventpipe.outbox WHERE id OPERATOR(pg_catalog.=) ANY ($1)",
		false, 1, {INT8ARRAYOID}
	},
	[RESCHEDULE] = {
		"reschedule the failed events",
		"UPDATE eventpipe.outbox AS o"
		"   SET attempts = o.attempts OPERATOR(pg_catalog.+) 1,"
		"       next_attempt_at = pg_catalog.now() OPERATOR(pg_catalog.+)"
		"           least(interval '1 second' OPERATOR(pg_catalog.*)"
		"                     pg_catalog.power(2, o.attempts),"
		"                 interval '5 minutes'),"
		"       last_error = f.reason"
		"  FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS f(id, reason)"
		" WHERE o.id OPERATOR(pg_catalog.=) f.id",
		false, 2, {INT8ARRAYOID, TEXTARRAYOID}
	},
	[BURY] = {
		"move the events failed for good to dead_letters",
		"WITH f AS (SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2))"
		"                          AS f(id, reason)),"
		"     d AS (DELETE FROM eventpipe.outbox AS o USING f"
		"           WHERE o.id OPERATOR(pg_catalog.=) f.id"
		"           RETURNING o.*, f.reason)"
		" INSERT INTO eventpipe.dead_letters"
		"   (id, event_id, topic, key, payload, headers, event_type, created_at,"
		"    attempts, reason)"
		" SELECT id, event_id, topic, key, payload, headers, event_type, created_at,"
		"        attempts OPERATOR(pg_catalog.+) 1, reason FROM d",
		false, 2, {INT8ARRAYOID, TEXTARRAYOID}
	},
	[FORGET_COMMITTED] = {
		"delete the events Kafka committed",
		"DELETE FROM eventpipe.outbox AS o"
		"  USING ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS f(id, event_id)"
		" WHERE o.id OPERATOR(pg_catalog.=) f.id"
		"   AND o.event_id OPERATOR(pg_catalog.=) f.event_id::pg_catalog.uuid",
		false, 2, {INT8ARRAYOID, TEXTARRAYOID}
	},
};

/*
 * The SQL claim's row as an event: its columns come in OutboxColumn order,
 * then the row's ctid.
 */
static Size
copy_event(OutboxEvent *event, HeapTuple tuple, TupleDesc desc)
{
	static const AttrNumber in_order[OUTBOX_COLUMNS] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
	Datum		values[OUTBOX_COLUMNS + 1];
	bool		nulls[OUTBOX_COLUMNS + 1];

	heap_deform_tuple(tuple, desc, values, nulls);
	return outbox_copy_event(event, values, nulls, in_order,
							 (ItemPointer) DatumGetPointer(values[OUTBOX_COLUMNS]));
}

/*
 * The end of the WAL inserted so far, as XLogFlush() accepts it.
 * GetXLogInsertRecPtr() points past the page header when the insert
 * position is at a page boundary, and XLogFlush() then refuses it as
 * "past end of generated WAL": step back to the boundary.
 */
static XLogRecPtr
end_of_inserted_wal(void)
{
	XLogRecPtr	insert = GetXLogInsertRecPtr();
	uint32		offset = insert % XLOG_BLCKSZ;

	if (offset == SizeOfXLogShortPHD || offset == SizeOfXLogLongPHD)
		insert -= offset;
	return insert;
}

/*
 * A transaction committed with synchronous_commit = off is visible before
 * its commit record is on disk: make sure it is before the batch's events
 * leave, or a crash could erase a transaction whose events Kafka already
 * has.  Usually there is nothing left to flush.
 */
static void
flush_what_was_read(OutboxBatch *batch)
{
	if (batch->count > 0)
		XLogFlush(end_of_inserted_wal());
}

/* The ids of the int8[] in_flight, in the current memory context; their number in *count. */
static int64 *
ids_of(ArrayType *in_flight, int *count)
{
	Datum	   *datums;
	int64	   *ids;
	int			i;

	deconstruct_array(in_flight, INT8OID, sizeof(int64), true, TYPALIGN_DOUBLE,
					  &datums, NULL, count);
	ids = palloc(sizeof(int64) * Max(*count, 1));
	for (i = 0; i < *count; i++)
		ids[i] = DatumGetInt64(datums[i]);
	pfree(datums);
	return ids;
}

/*
 * The outbox's storage, and whether its ids are drawn in order (its
 * identity sequence caches one value at a time, counts up and does not
 * cycle), into seen; in the caller's transaction, which keeps the outbox
 * locked.  The sequence's settings are read from the catalog cache at each
 * call: a sequence dropped since is not found, and ids are then taken as
 * out of order, the safe side.
 */
static void
see_outbox_identity(OutboxSeen *seen)
{
	Relation	outbox = table_openrv(makeRangeVar("eventpipe", "outbox", -1), AccessShareLock);
	AttrNumber	id = get_attnum(RelationGetRelid(outbox), "id");
	Oid			sequence = InvalidOid;
	HeapTuple	tuple;

	if (id != InvalidAttrNumber)
		sequence = eventpipe_outbox_id_sequence(outbox, id, true);
	seen->storage = outbox->rd_rel->relfilenode;
	seen->ids_in_order = false;
	tuple = OidIsValid(sequence) ?
		SearchSysCache1(SEQRELID, ObjectIdGetDatum(sequence)) : NULL;
	if (HeapTupleIsValid(tuple))
	{
		Form_pg_sequence form = (Form_pg_sequence) GETSTRUCT(tuple);

		seen->ids_in_order = form->seqcache == 1 && !form->seqcycle &&
			form->seqincrement > 0;
		ReleaseSysCache(tuple);
	}
	table_close(outbox, NoLock);
}

/* After a claim from the start: tell claim_start.c what it saw, and log where it began. */
static void
end_claim_from_start(int shard, const OutboxSeen *seen)
{
	int64		next = claim_start_end(seen);

	elog(DEBUG1, "eventpipe relay worker %d: a claim from the start began past id " INT64_FORMAT
		 "; the next begins past id " INT64_FORMAT " at most",
		 shard, seen->after_id, next);
}

/*
 * Read up to limit pending events (and RELAY_BATCH_MAX_BYTES of events;
 * batch->full says whether a limit stopped it) of shard number shard (of
 * shards) with ids above after_id into batch, allocated in the caller's
 * memory context, passing over the events whose ids are in in_flight (an
 * int8[], maybe empty).  after_id 0 claims from the start, which begins
 * where claim_start.c says.  With nowait, returns OUTBOX_BUSY rather than
 * wait for a lock on the outbox (TRUNCATE, VACUUM FULL, ALTER TABLE, LOCK
 * TABLE).
 */
OutboxAvailability
outbox_claim_batch(OutboxBatch *batch, int limit, int shard, int shards,
				   int64 after_id, ArrayType *in_flight, bool nowait)
{
	MemoryContext batch_context;
	Datum		args[5];
	int			passed_over;
	int64	   *ids;
	OutboxStatement claim;
	uint64		i;
	bool		from_start = after_id == 0;
	Oid			start_storage = InvalidOid;

	batch->count = 0;
	batch->events = NULL;
	batch->full = false;
	memset(&batch->seen, 0, sizeof(batch->seen));
	if (from_start)
		after_id = claim_start_begin(&start_storage);

	batch_context = worker_begin_transaction("eventpipe: reading the outbox");
	if (!OidIsValid(get_extension_oid("eventpipe", true)))
	{
		worker_end_transaction(batch_context);
		return OUTBOX_NO_EXTENSION;
	}
	if (nowait &&
		!OidIsValid(RangeVarGetRelidExtended(makeRangeVar("eventpipe", "outbox", -1),
											 AccessShareLock, RVR_SKIP_LOCKED,
											 NULL, NULL)))
	{
		worker_end_transaction(batch_context);
		return OUTBOX_BUSY;
	}

	if (from_start)
	{
		see_outbox_identity(&batch->seen);
		if (batch->seen.storage != start_storage || !batch->seen.ids_in_order)
			after_id = 0;
	}

	batch->seen.after_id = after_id;
	ids = ids_of(in_flight, &passed_over);
	if (outbox_scan_claim(batch, batch_context, limit, shard, shards, after_id,
						  ids, passed_over))
	{
		worker_end_transaction(batch_context);
		flush_what_was_read(batch);
		if (from_start)
			end_claim_from_start(shard, &batch->seen);
		return OUTBOX_READY;
	}

	worker_spi_connect();
	args[0] = Int32GetDatum(limit);
	args[1] = Int32GetDatum(shards);
	args[2] = Int32GetDatum(shard);
	args[3] = Int64GetDatum(after_id);
	args[4] = PointerGetDatum(in_flight);
	if (passed_over == 0)
		claim = CLAIM;
	else if (passed_over <= FEW_IDS_IN_FLIGHT)
		claim = CLAIM_PASSING_OVER_FEW;
	else
		claim = CLAIM_PASSING_OVER;
	worker_run_statement_limited(&statements[claim], args, NULL, limit, SPI_OK_SELECT);

	if (SPI_processed > 0)
	{
		MemoryContext spi_context = MemoryContextSwitchTo(batch_context);
		Size		bytes = 0;

		batch->events = palloc(sizeof(OutboxEvent) * SPI_processed);
		for (i = 0; i < SPI_processed && bytes < RELAY_BATCH_MAX_BYTES; i++)
			bytes += copy_event(&batch->events[i], SPI_tuptable->vals[i], SPI_tuptable->tupdesc);
		batch->count = (int) i;
		batch->full = SPI_processed >= (uint64) limit || bytes >= RELAY_BATCH_MAX_BYTES;
		MemoryContextSwitchTo(spi_context);
	}
	SPI_finish();
	worker_end_transaction(batch_context);
	flush_what_was_read(batch);
	if (from_start)
		end_claim_from_start(shard, &batch->seen);
	return OUTBOX_READY;
}

/* Collects ids (and, for failures, reasons) as SQL array arguments. */
typedef struct IdList
{
	int			count;
	Datum	   *ids;
	Datum	   *reasons;
} IdList;

static void
id_list_init(IdList *list, int capacity)
{
	list->count = 0;
	list->ids = palloc(sizeof(Datum) * Max(capacity, 1));
	list->reasons = palloc(sizeof(Datum) * Max(capacity, 1));
}

static void
id_list_add(IdList *list, int64 id, const char *reason)
{
	list->ids[list->count] = Int64GetDatum(id);
	list->reasons[list->count] = reason ? CStringGetTextDatum(reason) : (Datum) 0;
	list->count++;
}

/* Run which with the ids, and the reasons if it takes them; nothing when there are none. */
static void
execute_with_ids(OutboxStatement which, IdList *list, int expected)
{
	Datum		args[2];
	bool		with_reasons = statements[which].nargs == 2;

	if (list->count == 0)
		return;
	args[0] = PointerGetDatum(construct_array(list->ids, list->count, INT8OID,
											  sizeof(int64), true, TYPALIGN_DOUBLE));
	if (with_reasons)
		args[1] = PointerGetDatum(construct_array(list->reasons, list->count, TEXTOID,
												  -1, false, TYPALIGN_INT));
	worker_run_statement(&statements[which], args, NULL, expected);
}

static char *
failure_reason(OutboxEvent *event, bool last_attempt)
{
	const char *what = rd_kafka_err2str(event->error);
	const char *name = rd_kafka_err2name(event->error);

	if (event->refused_in_transaction)
		return psprintf("topic \"%s\" refused in a Kafka transaction: %s (%s)",
						event->topic, what, name);
	if (kafka_error_is_permanent(event))
		return psprintf("%s (%s)", what, name);
	if (last_attempt)
		return psprintf("gave up after %d attempts: %s (%s)", event->attempts + 1, what, name);
	return psprintf("%s (%s)", what, name);
}

/*
 * In one transaction: delete the delivered events (where the claim found
 * them, outbox_delete.c, or else by id), move those that failed for good
 * (or for the max_attempts-th time) to eventpipe.dead_letters, and give the
 * others a later attempt, with a delay doubling from 1 s to 5 min.  Held
 * events are left as they are.
 */
void
outbox_record_outcome(OutboxBatch *batch, int max_attempts, BatchOutcome *outcome)
{
	OutboxEvent **delivered;
	OutboxEvent **left = NULL;
	int			left_count;
	IdList		deleted_by_id;
	IdList		rescheduled;
	IdList		dead;
	int			i;
	MemoryContext caller_context;

	memset(outcome, 0, sizeof(BatchOutcome));
	delivered = palloc(sizeof(OutboxEvent *) * Max(batch->count, 1));
	id_list_init(&rescheduled, batch->count);
	id_list_init(&dead, batch->count);
	for (i = 0; i < batch->count; i++)
	{
		OutboxEvent *event = &batch->events[i];
		bool		last_attempt = event->attempts + 1 >= max_attempts;

		if (event->held || !event->reported)
			outcome->held++;
		else if (OutboxEventDelivered(event))
			delivered[outcome->delivered++] = event;
		else if (kafka_error_is_permanent(event) || last_attempt)
			id_list_add(&dead, event->id, failure_reason(event, last_attempt));
		else
			id_list_add(&rescheduled, event->id, failure_reason(event, false));
		if (event->attempts > 0 && event->reported)
			outcome->retried++;
	}
	outcome->rescheduled = rescheduled.count;
	outcome->dead = dead.count;
	if (outcome->delivered + rescheduled.count + dead.count == 0)
		return;

	caller_context = worker_begin_transaction("eventpipe: recording deliveries");
	left_count = outcome->delivered == 0 ? 0 :
		outbox_delete_in_place(delivered, outcome->delivered, &left);
	id_list_init(&deleted_by_id, left_count);
	for (i = 0; i < left_count; i++)
		id_list_add(&deleted_by_id, left[i]->id, NULL);
	worker_spi_connect();
	execute_with_ids(DELETE_DELIVERED, &deleted_by_id, SPI_OK_DELETE);
	execute_with_ids(RESCHEDULE, &rescheduled, SPI_OK_UPDATE);
	execute_with_ids(BURY, &dead, SPI_OK_INSERT);
	SPI_finish();
	worker_end_transaction(caller_context);
}


/*
 * In one transaction: delete the rows the records (RelayProgress, from the
 * progress topic) name, where both ids match.  Returns how many went; 0
 * when the extension is not installed.
 */
uint64
outbox_forget_committed(List *records)
{
	MemoryContext caller_context;
	IdList		committed;
	ListCell   *lc;
	int			total = 0;
	int			i;
	uint64		forgotten = 0;

	foreach(lc, records)
		total += ((RelayProgress *) lfirst(lc))->count;
	if (total == 0)
		return 0;
	id_list_init(&committed, total);
	foreach(lc, records)
	{
		RelayProgress *progress = lfirst(lc);

		for (i = 0; i < progress->count; i++)
			id_list_add(&committed, progress->ids[i], progress->event_ids[i]);
	}

	caller_context = worker_begin_transaction("eventpipe: deleting what Kafka committed");
	if (OidIsValid(get_extension_oid("eventpipe", true)))
	{
		worker_spi_connect();
		execute_with_ids(FORGET_COMMITTED, &committed, SPI_OK_DELETE);
		forgotten = SPI_processed;
		SPI_finish();
	}
	worker_end_transaction(caller_context);
	return forgotten;
}

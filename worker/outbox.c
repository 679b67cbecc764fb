/*
 * outbox.c
 *		The relay's two statements against eventpipe.outbox: read the next
 *		batch of committed events of this worker's shard, and delete the
 *		ones Kafka acknowledged.  Each runs in a short transaction of its
 *		own, so no transaction stays open while waiting for the broker.
 *
 * Nothing is skipped: the relay keeps no high-water mark, it reads whatever
 * rows are committed and still there, in id order, so a transaction that
 * took its ids early but committed late is picked up by the next batch.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "pgstat.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "relay.h"

static SPIPlanPtr claim_plan = NULL;
static SPIPlanPtr delete_plan = NULL;

static SPIPlanPtr
prepare_kept(const char *sql, int nargs, Oid *types)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, types);

	if (plan == NULL)
		elog(ERROR, "could not prepare \"%s\": %s", sql,
			 SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

static void
begin_transaction(const char *activity)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
}

static void
end_transaction(void)
{
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

static char *
copy_text(HeapTuple tuple, TupleDesc desc, int column, int *len)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tuple, desc, column, &isnull);
	text	   *t;

	if (isnull)
		return NULL;
	t = DatumGetTextPP(d);
	if (len)
		*len = VARSIZE_ANY_EXHDR(t);
	return text_to_cstring(t);
}

static void
copy_event(OutboxEvent *event, HeapTuple tuple, TupleDesc desc)
{
	bool		isnull;
	Datum		headers;
	char	   *event_id;

	memset(event, 0, sizeof(OutboxEvent));
	event->id = DatumGetInt64(SPI_getbinval(tuple, desc, 1, &isnull));
	event_id = copy_text(tuple, desc, 2, NULL);
	strlcpy(event->event_id, event_id, sizeof(event->event_id));
	event->topic = copy_text(tuple, desc, 3, NULL);
	event->key = copy_text(tuple, desc, 4, &event->key_len);
	event->payload = copy_text(tuple, desc, 5, &event->payload_len);
	headers = SPI_getbinval(tuple, desc, 6, &isnull);
	event->headers = isnull ? NULL : DatumGetJsonbPCopy(headers);
	event->event_type = copy_text(tuple, desc, 7, NULL);
	event->created_at = DatumGetTimestampTz(SPI_getbinval(tuple, desc, 8, &isnull));
}

/*
 * Read up to limit pending events of shard number shard (of shards) into
 * batch, allocated in the caller's memory context.
 */
OutboxAvailability
outbox_claim_batch(OutboxBatch *batch, int limit, int shard, int shards)
{
	MemoryContext batch_context = CurrentMemoryContext;
	Datum		args[3];
	int			rc;
	uint64		i;

	batch->count = 0;
	batch->events = NULL;

	begin_transaction("eventpipe: reading the outbox");
	if (!OidIsValid(get_extension_oid("eventpipe", true)))
	{
		end_transaction();
		return OUTBOX_NO_EXTENSION;
	}

	SPI_connect();
	if (claim_plan == NULL)
	{
		Oid			types[3] = {INT4OID, INT4OID, INT4OID};

		claim_plan = prepare_kept(
			"SELECT id, event_id::text, topic, key, payload::text, headers,"
			"       event_type, created_at"
			"  FROM eventpipe.outbox"
			" WHERE $2 = 1 OR eventpipe.relay_shard(key, id, $2) = $3"
			" ORDER BY id"
			" LIMIT $1",
			3, types);
	}
	args[0] = Int32GetDatum(limit);
	args[1] = Int32GetDatum(shards);
	args[2] = Int32GetDatum(shard);
	rc = SPI_execute_plan(claim_plan, args, NULL, true, limit);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading the outbox failed: %s", SPI_result_code_string(rc));

	if (SPI_processed > 0)
	{
		MemoryContext spi_context = MemoryContextSwitchTo(batch_context);

		batch->count = (int) SPI_processed;
		batch->events = palloc(sizeof(OutboxEvent) * batch->count);
		for (i = 0; i < SPI_processed; i++)
			copy_event(&batch->events[i], SPI_tuptable->vals[i], SPI_tuptable->tupdesc);
		MemoryContextSwitchTo(spi_context);
	}
	SPI_finish();
	end_transaction();
	return OUTBOX_READY;
}

/* Delete the rows of the events Kafka acknowledged, in one transaction. */
void
outbox_delete_delivered(OutboxBatch *batch)
{
	Datum	   *ids = palloc(sizeof(Datum) * Max(batch->count, 1));
	int			n = 0;
	int			i;
	Datum		args[1];
	Oid			types[1] = {INT8ARRAYOID};
	int			rc;

	for (i = 0; i < batch->count; i++)
	{
		OutboxEvent *event = &batch->events[i];

		if (event->reported && event->error == RD_KAFKA_RESP_ERR_NO_ERROR)
			ids[n++] = Int64GetDatum(event->id);
	}
	if (n == 0)
		return;
	args[0] = PointerGetDatum(construct_array(ids, n, INT8OID, sizeof(int64), true, TYPALIGN_DOUBLE));

	begin_transaction("eventpipe: deleting delivered events");
	SPI_connect();
	if (delete_plan == NULL)
		delete_plan = prepare_kept("DELETE FROM eventpipe.outbox WHERE id = ANY ($1)",
								   1, types);
	rc = SPI_execute_plan(delete_plan, args, NULL, false, 0);
	if (rc != SPI_OK_DELETE)
		elog(ERROR, "deleting delivered events failed: %s", SPI_result_code_string(rc));
	SPI_finish();
	end_transaction();
}

/*
 * consumer_control.c
 *		The operations asked of a consumer worker from SQL, read before every
 *		batch (a pause, eventpipe.pause(), is read with the subscription's
 *		row in consumer_catalog.c): the replays asked for (eventpipe.replay(), rows of consumer_replays), and
 *		the dead letters to apply again (eventpipe.retry_consumer_dead(),
 *		rows of consumer_dead_letters with retry_requested_at set).
 *
 * Replays: replay() only asks; the worker stores the partition's offset
 * and deletes the request in one transaction, then rejoins its group, whose
 * assignment starts every partition at the database's offsets.  A batch
 * applied between replay() and then moved the offset on, and is applied
 * again.
 *
 * Dead letters to retry are turned into a batch of messages that
 * consumer_apply_batch() applies like Kafka's — same interpretation, same
 * ledger, in one transaction — and settled in that transaction
 * (consumer_settle_retries): the rows of messages applied, found to be
 * duplicates or unmatched are deleted; the others keep their row, with the
 * new error and time, and wait for the next retry_consumer_dead().
 *
 * Unlike the batch's first check (consumer_extension_ready()), these statements
 * lock eventpipe's tables unconditionally: they run right after it, and if
 * a DROP EXTENSION comes in between they wait for it, then fail and the
 * worker backs off (a wait that does not hold the DROP up).
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "consumer.h"
#include "worker/worker_loop.h"

/* Longest error text kept with a dead letter that failed again, in characters. */
#define RETRY_ERROR_MAX 1024

/*
 * The worker's statements here, prepared once and kept.  Every function,
 * operator and type in them is named with its schema, so that no object
 * another user creates can stand in for one whatever the search_path;
 * unnest() of two arrays is written ROWS FROM (unnest(),
 * unnest()), what the parser makes of it, which it does only unqualified.
 */
typedef enum ControlStatement
{
	READ_CONTROL,
	READ_REPLAYS,
	STORE_REPLAY,
	READ_RETRIES,
	DELETE_SETTLED,
	RECORD_FAILED,
	CONTROL_STATEMENTS
} ControlStatement;

static WorkerStatement statements[CONTROL_STATEMENTS] = {
	[READ_CONTROL] = {
		"read the controls",
		"SELECT EXISTS (SELECT FROM eventpipe.consumer_dead_letters AS d"
		"   WHERE d.subscription OPERATOR(pg_catalog.=) $1"
		"     AND d.retry_requested_at IS NOT NULL)",
		true, 1, {TEXTOID}
	},
	[READ_REPLAYS] = {
		"read the replays",
		"SELECT topic, partition, from_offset, requested_at FROM eventpipe.consumer_replays"
		" WHERE subscription OPERATOR(pg_catalog.=) $1 ORDER BY topic, partition",
		true, 1, {TEXTOID}
	},
	/* the offset is stored only if the request is still the one read */
	[STORE_REPLAY] = {
		"store a replay's offset",
		"WITH done AS ("
		"  DELETE FROM eventpipe.consumer_replays"
		"  WHERE subscription OPERATOR(pg_catalog.=) $1 AND topic OPERATOR(pg_catalog.=) $2"
		"    AND partition OPERATOR(pg_catalog.=) $3 AND requested_at OPERATOR(pg_catalog.=) $5"
		"  RETURNING 1)"
		" INSERT INTO eventpipe.consumer_offsets AS o (subscription, topic, partition, next_offset)"
		" SELECT $1, $2, $3, $4 FROM done"
		" ON CONFLICT (subscription, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
		false, 5, {TEXTOID, TEXTOID, INT4OID, INT8OID, TIMESTAMPTZOID}
	},
	[READ_RETRIES] = {
		"read the dead letters to retry",
		"SELECT id, topic, partition, \"offset\", key, value, headers"
		" FROM eventpipe.consumer_dead_letters"
		" WHERE subscription OPERATOR(pg_catalog.=) $1 AND retry_requested_at IS NOT NULL"
		" ORDER BY id LIMIT $2",
		true, 2, {TEXTOID, INT4OID}
	},
	[DELETE_SETTLED] = {
		"delete the settled dead letters",
		"DELETE FROM eventpipe.consumer_dead_letters WHERE id OPERATOR(pg_catalog.=) ANY ($1)",
		false, 1, {INT8ARRAYOID}
	},
	[RECORD_FAILED] = {
		"record the retries that failed",
		"UPDATE eventpipe.consumer_dead_letters AS d"
		" SET error = CASE WHEN pg_catalog.length(u.e) OPERATOR(pg_catalog.>) "
		CppAsString2(RETRY_ERROR_MAX)
		"                  THEN pg_catalog.left(u.e, " CppAsString2(RETRY_ERROR_MAX) ")"
		"                       OPERATOR(pg_catalog.||) '...'"
		"                  ELSE u.e END,"
		"     failed_at = pg_catalog.now(), retry_requested_at = NULL"
		" FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]),"
		"                 pg_catalog.unnest($2::pg_catalog.text[])) AS u(id, e)"
		" WHERE d.id OPERATOR(pg_catalog.=) u.id",
		false, 2, {INT8ARRAYOID, TEXTARRAYOID}
	},
};

static Datum
column(int row, int column, bool *isnull)
{
	return SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, column, isnull);
}

/*
 * Whether the subscription has dead letters to retry, and the replays asked
 * for (in the caller's memory), in a transaction of its own.  A
 * subscription gone meanwhile has nothing to do: the next batch finds it
 * gone.
 */
void
consumer_read_control(const char *name, ConsumerControl *control)
{
	MemoryContext caller_context = worker_begin_transaction("eventpipe: reading the operations asked for");
	Datum		values[1] = {CStringGetTextDatum(name)};
	bool		isnull;
	uint64		i;

	memset(control, 0, sizeof(*control));
	worker_spi_connect();
	worker_run_statement(&statements[READ_CONTROL], values, NULL, SPI_OK_SELECT);
	control->retries_pending = DatumGetBool(column(0, 1, &isnull));

	worker_run_statement(&statements[READ_REPLAYS], values, NULL, SPI_OK_SELECT);
	for (i = 0; i < SPI_processed; i++)
	{
		MemoryContext spi_context = MemoryContextSwitchTo(caller_context);
		ReplayRequest *replay = palloc(sizeof(ReplayRequest));

		replay->topic = TextDatumGetCString(column(i, 1, &isnull));
		replay->partition = DatumGetInt32(column(i, 2, &isnull));
		replay->from_offset = DatumGetInt64(column(i, 3, &isnull));
		replay->requested_at = DatumGetTimestampTz(column(i, 4, &isnull));
		control->replays = lappend(control->replays, replay);
		MemoryContextSwitchTo(spi_context);
	}
	SPI_finish();
	worker_end_transaction(caller_context);
}

/*
 * Store each replay's offset (from_offset, clamped by the caller to what
 * Kafka retains) and delete its request, unless a newer one replaced it;
 * in a transaction of its own.
 */
void
consumer_carry_out_replays(const char *name, List *replays)
{
	MemoryContext caller_context = worker_begin_transaction("eventpipe: carrying out replays");
	ListCell   *lc;

	worker_spi_connect();
	foreach(lc, replays)
	{
		ReplayRequest *replay = (ReplayRequest *) lfirst(lc);
		Datum		values[5] = {CStringGetTextDatum(name), CStringGetTextDatum(replay->topic),
			Int32GetDatum(replay->partition), Int64GetDatum(replay->from_offset),
		TimestampTzGetDatum(replay->requested_at)};

		worker_run_statement(&statements[STORE_REPLAY], values, NULL, SPI_OK_INSERT);
	}
	SPI_finish();
	worker_end_transaction(caller_context);
}

/* Is this a valid hex text of the bytes of a header (its bytes in *bytes)? */
static bool
hex_bytes(const char *text, int len, char **bytes, int *bytes_len)
{
	int			i;

	if (len < 2 || len % 2 != 0 || text[0] != '\\' || text[1] != 'x')
		return false;
	for (i = 2; i < len; i++)
		if (!isxdigit((unsigned char) text[i]))
			return false;
	*bytes = palloc((len - 2) / 2 + 1);
	*bytes_len = (int) hex_decode(text + 2, len - 2, *bytes);
	return true;
}

/*
 * A header name or value as stored back to its bytes, as Kafka gave them:
 * consumer_message_headers() writes bytes it could not keep as text
 * (consumer_header_as_text) as "\x" and hex, and text in the database's
 * encoding.  A text that only looks like hex, and whose bytes it would
 * have kept as text, is taken as written.
 */
static void
stored_bytes(const JsonbValue *value, const char **bytes, int *len)
{
	char	   *decoded;
	int			decoded_len;

	*bytes = value->val.string.val;
	*len = value->val.string.len;
	if (hex_bytes(*bytes, *len, &decoded, &decoded_len) &&
		consumer_header_as_text(decoded, decoded_len) == NULL)
	{
		*bytes = decoded;
		*len = decoded_len;
		return;
	}
	*bytes = pg_server_to_any(pnstrdup(*bytes, *len), *len, PG_UTF8);
	*len = strlen(*bytes);
}

/* A dead letter's stored headers (a JSON object) as librdkafka headers. */
static rd_kafka_headers_t *
headers_from_json(Jsonb *stored)
{
	rd_kafka_headers_t *headers = rd_kafka_headers_new(8);
	JsonbIterator *it = JsonbIteratorInit(&stored->root);
	JsonbValue	value;
	JsonbIteratorToken token;
	const char *name = NULL;
	int			name_len = 0;

	while ((token = JsonbIteratorNext(&it, &value, true)) != WJB_DONE)
	{
		const char *bytes;
		int			len;

		if (token == WJB_KEY)
			stored_bytes(&value, &name, &name_len);
		else if (token == WJB_VALUE && value.type == jbvString)
		{
			stored_bytes(&value, &bytes, &len);
			rd_kafka_header_add(headers, name, name_len, bytes, len);
		}
		else if (token == WJB_VALUE)	/* null: a header without a value */
			rd_kafka_header_add(headers, name, name_len, NULL, 0);
	}
	return headers;
}

/* A bytea column of the current row as bytes (any bytes, NUL included); NULL for NULL. */
static void *
bytes_column(int row, int column_number, size_t *len)
{
	bool		isnull;
	Datum		datum = column(row, column_number, &isnull);
	bytea	   *value;
	void	   *bytes;

	*len = 0;
	if (isnull)
		return NULL;
	value = DatumGetByteaPP(datum);
	*len = VARSIZE_ANY_EXHDR(value);
	bytes = palloc(*len + 1);
	memcpy(bytes, VARDATA_ANY(value), *len);
	return bytes;
}

/*
 * Up to limit of the subscription's dead letters marked for a retry, oldest
 * first, as a batch (in the caller's memory; count 0 when none), in a
 * transaction of its own.  consumer_release_retries() frees their headers.
 */
void
consumer_load_retries(const char *name, int limit, ConsumerBatch *batch)
{
	MemoryContext caller_context = worker_begin_transaction("eventpipe: reading dead letters to retry");
	Datum		values[2] = {CStringGetTextDatum(name), Int32GetDatum(limit)};
	uint64		i;

	worker_spi_connect();
	worker_run_statement(&statements[READ_RETRIES], values, NULL, SPI_OK_SELECT);
	MemoryContextSwitchTo(caller_context);
	batch->retry = true;
	batch->count = (int) SPI_processed;
	batch->messages = palloc0(sizeof(ConsumedMessage) * (SPI_processed + 1));
	for (i = 0; i < SPI_processed; i++)
	{
		ConsumedMessage *message = &batch->messages[i];
		bool		isnull;
		Datum		headers;

		message->dead_letter_id = DatumGetInt64(column(i, 1, &isnull));
		message->topic = TextDatumGetCString(column(i, 2, &isnull));
		message->partition = DatumGetInt32(column(i, 3, &isnull));
		message->offset = DatumGetInt64(column(i, 4, &isnull));
		message->key = bytes_column(i, 5, &message->key_len);
		message->value = bytes_column(i, 6, &message->value_len);
		headers = column(i, 7, &isnull);
		message->headers = isnull ? NULL : headers_from_json(DatumGetJsonbP(headers));
		message->timestamp_ms = -1; /* a dead letter does not keep it */
	}
	SPI_finish();
	worker_end_transaction(caller_context);
}

/*
 * In the transaction that applied the retried dead letters (SPI
 * connected): delete the rows of those that need no retry any more, record
 * the new error of the others.  Their retry mark goes either way.
 */
void
consumer_settle_retries(ConsumerBatch *batch)
{
	Datum	   *settled = palloc(sizeof(Datum) * (batch->count + 1));
	Datum	   *failed = palloc(sizeof(Datum) * (batch->count + 1));
	Datum	   *errors = palloc(sizeof(Datum) * (batch->count + 1));
	int			nsettled = 0;
	int			nfailed = 0;
	int			i;
	Datum		values[2];

	for (i = 0; i < batch->count; i++)
	{
		ConsumedMessage *message = &batch->messages[i];

		if (message->fate != MESSAGE_DEAD)
			settled[nsettled++] = Int64GetDatum(message->dead_letter_id);
		else
		{
			failed[nfailed] = Int64GetDatum(message->dead_letter_id);
			errors[nfailed++] = CStringGetTextDatum(message->error);
		}
	}
	values[0] = PointerGetDatum(construct_array(settled, nsettled, INT8OID, 8, FLOAT8PASSBYVAL,
												TYPALIGN_DOUBLE));
	worker_run_statement(&statements[DELETE_SETTLED], values, NULL, SPI_OK_DELETE);

	values[0] = PointerGetDatum(construct_array(failed, nfailed, INT8OID, 8, FLOAT8PASSBYVAL,
												TYPALIGN_DOUBLE));
	values[1] = PointerGetDatum(construct_array(errors, nfailed, TEXTOID, -1, false, TYPALIGN_INT));
	worker_run_statement(&statements[RECORD_FAILED], values, NULL, SPI_OK_UPDATE);
}

/* Free what librdkafka allocated for the retried messages' headers. */
void
consumer_release_retries(ConsumerBatch *batch)
{
	int			i;

	for (i = 0; i < batch->count; i++)
		if (batch->messages[i].headers != NULL)
		{
			rd_kafka_headers_destroy(batch->messages[i].headers);
			batch->messages[i].headers = NULL;
		}
}
